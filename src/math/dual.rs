//! Real scalars for code that is written once and run both on plain `f64` and on dual numbers
//! (forward-mode differentiation): the torch student needs f'(x) of exactly the steps that
//! the encrypted evaluator runs, and differentiating those steps beats deriving each formula.

use std::ops::{Add, Mul, Sub};

/// What a scalar approximation step needs: ring operations and constants.
pub trait Real: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> {
    fn constant(c: f64) -> Self;

    fn scale(self, c: f64) -> Self {
        self * Self::constant(c)
    }

    fn offset(self, c: f64) -> Self {
        self + Self::constant(c)
    }
}

impl Real for f64 {
    fn constant(c: f64) -> Self {
        c
    }

    fn scale(self, c: f64) -> Self {
        self * c
    }

    fn offset(self, c: f64) -> Self {
        self + c
    }
}

/// `value + derivative * eps` with `eps^2 = 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dual {
    pub value: f64,
    pub derivative: f64,
}

impl Dual {
    /// The variable itself: d x / d x = 1.
    pub fn variable(x: f64) -> Self {
        Dual { value: x, derivative: 1.0 }
    }
}

impl Add for Dual {
    type Output = Dual;
    fn add(self, o: Dual) -> Dual {
        Dual { value: self.value + o.value, derivative: self.derivative + o.derivative }
    }
}

impl Sub for Dual {
    type Output = Dual;
    fn sub(self, o: Dual) -> Dual {
        Dual { value: self.value - o.value, derivative: self.derivative - o.derivative }
    }
}

impl Mul for Dual {
    type Output = Dual;
    fn mul(self, o: Dual) -> Dual {
        Dual {
            value: self.value * o.value,
            derivative: self.derivative * o.value + self.value * o.derivative,
        }
    }
}

impl Real for Dual {
    fn constant(c: f64) -> Self {
        Dual { value: c, derivative: 0.0 }
    }

    fn scale(self, c: f64) -> Self {
        Dual { value: self.value * c, derivative: self.derivative * c }
    }

    fn offset(self, c: f64) -> Self {
        Dual { value: self.value + c, derivative: self.derivative }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cube_plus<R: Real>(x: R) -> R {
        (x * x * x).scale(2.0) - x.offset(1.0)
    }

    #[test]
    fn dual_differentiates_polynomials() {
        for x in [-2.0, -0.5, 0.0, 1.5, 3.0] {
            let d = cube_plus(Dual::variable(x));
            assert_eq!(d.value, cube_plus(x));
            assert!((d.derivative - (6.0 * x * x - 1.0)).abs() < 1e-12);
        }
    }
}
