//! Polynomial approximations of the block's non-polynomial functions: one spec per
//! approximation, the single source of its coefficients, range and depth.
//!
//! [`Approximation::eval`] runs the same steps in f64 as [`Approximation::evaluate`] runs on a
//! backend, so the plaintext mirror, the encrypted evaluator and the torch student (which reads
//! [`Approximation`]s through the bindings) all compute one function.

use crate::error::{Error, Result};
use crate::he::backend::Backend;
use crate::he::polynomial::{self, mul_aligned, Basis, Polynomial};
use crate::math::dual::{Dual, Real};

#[derive(Clone, Debug, PartialEq)]
pub enum Approximation {
    /// Any polynomial on a range (GELU).
    Polynomial { name: String, poly: Polynomial, range: (f64, f64) },
    /// exp(x) ~ p(x)^(2^squarings), p a Chebyshev fit of exp(x / 2^squarings) on the range:
    /// the squarings shrink the interval the polynomial must cover.
    ExpChebyshev { poly: Polynomial, squarings: u32, range: (f64, f64) },
    /// exp(x) ~ (1 + x / 2^r)^(2^r): one affine level and r squarings.
    ExpSquaring { r: u32, range: (f64, f64) },
    /// exp(x) ~ its Taylor polynomial of `degree` at 0.
    ExpTaylor { degree: usize, range: (f64, f64) },
    /// 1/x on [lo, hi]: e = 1 - x / hi, 1/x ~ prod_{i < n} (1 + e^(2^i)) / hi.
    Goldschmidt { iterations: u32, range: (f64, f64) },
    /// 1/sqrt(x) on [lo, hi]: a Chebyshev guess, then Newton steps y <- 1.5 y - 0.5 x y^3.
    InvSqrt { guess: Polynomial, newton_steps: u32, range: (f64, f64) },
    /// (x + shift)^p, p even: a softmax numerator that replaces exp instead of approximating
    /// it (MPCFormer's 2Quad is p = 2; "power softmax" any even p). `shift` is learned in
    /// distillation; `range` is what calibration saw, for the out-of-range detector only.
    Power { p: u32, shift: f64, range: (f64, f64) },
}

fn check_range(range: (f64, f64), positive: bool) -> Result<()> {
    let (lo, hi) = range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) || (positive && lo <= 0.0) {
        return Err(Error::OutOfRange(format!(
            "range ({lo}, {hi}) must be finite and increasing{}",
            if positive { ", with lo > 0" } else { "" }
        )));
    }
    Ok(())
}

/// The paper's GELU stand-in, Quad(x) = 0.125 x^2 + 0.25 x + 0.5 (far from GELU away from 0:
/// it is what the student is trained with, not an approximation of GELU's values).
pub fn gelu_quad() -> Approximation {
    Approximation::Polynomial {
        name: "gelu_quad".into(),
        poly: Polynomial::power(vec![0.5, 0.25, 0.125]),
        range: (-4.0, 4.0),
    }
}

/// GELU by Chebyshev interpolation on a calibrated range.
pub fn gelu_chebyshev(lo: f64, hi: f64, degree: usize) -> Result<Approximation> {
    check_range((lo, hi), false)?;
    if !(1..=63).contains(&degree) {
        return Err(Error::OutOfRange(format!("degree must be 1..=63, got {degree}")));
    }
    Ok(Approximation::Polynomial {
        name: "gelu_chebyshev".into(),
        poly: Polynomial::fit_chebyshev(gelu, lo, hi, degree)?,
        range: (lo, hi),
    })
}

/// exp by a Chebyshev fit of `degree` and as many squarings as keep the fitted interval at
/// most 6 wide (exp(x) = exp(x / 2^s)^(2^s)). On [-8, 4] with degree 15: 6 levels, relative
/// error about 1e-7, where (1 + x/64)^64 costs 7 levels for errors of tens of percent.
pub fn exp_chebyshev(lo: f64, hi: f64, degree: usize) -> Result<Approximation> {
    check_range((lo, hi), false)?;
    if !(1..=63).contains(&degree) {
        return Err(Error::OutOfRange(format!("degree must be 1..=63, got {degree}")));
    }
    let squarings = ((hi - lo) / 6.0).log2().ceil().clamp(0.0, 12.0) as u32;
    let shrink = 2f64.powi(squarings as i32);
    let poly = Polynomial::fit_chebyshev(|x| (x / shrink).exp(), lo, hi, degree)?;
    Ok(Approximation::ExpChebyshev { poly, squarings, range: (lo, hi) })
}

pub fn exp_squaring(r: u32, range: (f64, f64)) -> Result<Approximation> {
    check_range(range, false)?;
    if !(1..=12).contains(&r) {
        return Err(Error::OutOfRange(format!("r must be 1..=12, got {r}")));
    }
    Ok(Approximation::ExpSquaring { r, range })
}

pub fn exp_taylor(degree: usize, range: (f64, f64)) -> Result<Approximation> {
    check_range(range, false)?;
    if !(1..=31).contains(&degree) {
        return Err(Error::OutOfRange(format!("degree must be 1..=31, got {degree}")));
    }
    Ok(Approximation::ExpTaylor { degree, range })
}

/// Largest exponent [`power`] accepts.
pub const MAX_POWER: u32 = 16;

/// (x + shift)^p for an even `p` in 2..=16: one level per doubling of p.
pub fn power(p: u32, shift: f64, range: (f64, f64)) -> Result<Approximation> {
    check_range(range, false)?;
    if !(2..=MAX_POWER).contains(&p) || !p.is_multiple_of(2) {
        return Err(Error::OutOfRange(format!("power must be even and in 2..={MAX_POWER}, got {p}")));
    }
    if !shift.is_finite() {
        return Err(Error::OutOfRange(format!("power shift must be finite, got {shift}")));
    }
    Ok(Approximation::Power { p, shift, range })
}

pub fn goldschmidt(iterations: u32, range: (f64, f64)) -> Result<Approximation> {
    check_range(range, true)?;
    if !(1..=24).contains(&iterations) {
        return Err(Error::OutOfRange(format!("iterations must be 1..=24, got {iterations}")));
    }
    Ok(Approximation::Goldschmidt { iterations, range })
}

/// Iterations that bring Goldschmidt's relative error below `tol` on `range`.
pub fn goldschmidt_iterations(range: (f64, f64), tol: f64) -> u32 {
    let e = 1.0 - range.0 / range.1;
    if e <= 0.0 {
        return 1;
    }
    // Relative error after n iterations is e^(2^n).
    let needed = (tol.ln() / e.ln()).max(1.0).log2().ceil() as u32;
    needed.clamp(1, 24)
}

pub fn inv_sqrt(lo: f64, hi: f64, guess_degree: usize, newton_steps: u32) -> Result<Approximation> {
    check_range((lo, hi), true)?;
    if !(1..=31).contains(&guess_degree) || newton_steps > 8 {
        return Err(Error::OutOfRange(format!(
            "guess degree must be 1..=31 and Newton steps at most 8, got {guess_degree} and {newton_steps}"
        )));
    }
    let guess = Polynomial::fit_chebyshev(|x| 1.0 / x.sqrt(), lo, hi, guess_degree)?;
    Ok(Approximation::InvSqrt { guess, newton_steps, range: (lo, hi) })
}

/// [min, max] of `xs` widened by `margin` times its width on each side (never empty).
pub fn calibrated_range(xs: &[f64], margin: f64) -> Result<(f64, f64)> {
    if !(margin.is_finite() && margin >= 0.0) {
        return Err(Error::OutOfRange(format!("margin must be finite and >= 0, got {margin}")));
    }
    let finite: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if finite.len() != xs.len() || finite.is_empty() {
        return Err(Error::Calibration("calibration data must be non-empty and finite".into()));
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let width = (hi - lo).max(1e-6 * lo.abs().max(hi.abs()).max(1.0));
    Ok((lo - margin * width, hi + margin * width))
}

/// exp's Taylor polynomial of `degree` at 0.
pub fn taylor_exp(degree: usize) -> Polynomial {
    let mut coeffs = vec![1.0];
    for k in 1..=degree {
        coeffs.push(coeffs[k - 1] / k as f64);
    }
    Polynomial::power(coeffs)
}

/// GELU(x) = x Phi(x) with Phi from erf (1e-14 accurate).
pub fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn erf(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 2.5 {
        // Maclaurin series: terms peak near n = a^2 and stay far below 2^53 in magnitude.
        let (mut term, mut sum, x2) = (a, a, a * a);
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else if a > 6.0 {
        1.0
    } else {
        // erfc by its continued fraction (modified Lentz).
        let tiny = 1e-300;
        let mut f = a;
        let (mut c, mut d) = (a, 0.0);
        for n in 1..300 {
            let an = n as f64 / 2.0;
            d = a + an * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = a + an / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
    };
    v.copysign(x)
}

/// One step of an approximation, as other evaluators (the torch student's native path) run
/// it: the state is the input `x` and a running value `y`, initially `x`.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `y <- p(y)`.
    Polynomial(Polynomial),
    /// `y <- y^(2^times)`.
    Square(u32),
    /// `y <- (y + shift)^p`, by squarings and a balanced product tree.
    Power { p: u32, shift: f64 },
    /// `y <- 1/y` by Goldschmidt's iterations for inputs up to `hi`.
    Goldschmidt { hi: f64, iterations: u32 },
    /// `y <- 1/sqrt(x)`: `guess(x)`, then Newton's steps.
    Newton { guess: Polynomial, steps: u32 },
}

/// `y^p` at depth `ceil(log2 p)`: `y^(2^k)` by squarings, then the factors of p's set bits
/// multiplied pairwise in a balanced tree. `mul` is the product (of values or of reals), so
/// the f64 reference and every backend take exactly the same steps.
fn power_tree<V: Clone, E>(
    y: V,
    p: u32,
    mul: &mut impl FnMut(V, V) -> std::result::Result<V, E>,
) -> std::result::Result<V, E> {
    let mut factors = Vec::new();
    let mut square = y;
    let mut bits = p;
    loop {
        if bits & 1 == 1 {
            factors.push(square.clone());
        }
        bits >>= 1;
        if bits == 0 {
            break;
        }
        square = mul(square.clone(), square)?;
    }
    while factors.len() > 1 {
        let mut next = Vec::with_capacity(factors.len().div_ceil(2));
        let mut it = factors.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => mul(a, b)?,
                None => a,
            });
        }
        factors = next;
    }
    Ok(factors.pop().expect("p >= 1 has a set bit"))
}

/// `ceil(log2(n))` for `n >= 1`.
fn ceil_log2(n: u32) -> usize {
    (u32::BITS - n.saturating_sub(1).leading_zeros()) as usize
}

impl Approximation {
    /// The function approximated: "exp", "reciprocal", "inv_sqrt", "gelu", or "power" (a
    /// softmax numerator that is its own exact function).
    pub fn function(&self) -> &'static str {
        match self {
            Approximation::Power { .. } => "power",
            Approximation::Polynomial { .. } => "gelu",
            Approximation::ExpChebyshev { .. }
            | Approximation::ExpSquaring { .. }
            | Approximation::ExpTaylor { .. } => "exp",
            Approximation::Goldschmidt { .. } => "reciprocal",
            Approximation::InvSqrt { .. } => "inv_sqrt",
        }
    }

    pub fn name(&self) -> String {
        match self {
            Approximation::Polynomial { name, .. } => name.clone(),
            Approximation::ExpChebyshev { poly, squarings, .. } => {
                format!("exp_chebyshev(degree={}, squarings={squarings})", poly.degree())
            }
            Approximation::ExpSquaring { r, .. } => format!("exp_squaring(r={r})"),
            Approximation::ExpTaylor { degree, .. } => format!("exp_taylor(degree={degree})"),
            Approximation::Goldschmidt { iterations, .. } => format!("goldschmidt(iterations={iterations})"),
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                format!("inv_sqrt(guess_degree={}, newton_steps={newton_steps})", guess.degree())
            }
            Approximation::Power { p, shift, .. } => format!("power(p={p}, shift={shift})"),
        }
    }

    pub fn range(&self) -> (f64, f64) {
        match self {
            Approximation::Polynomial { range, .. }
            | Approximation::ExpChebyshev { range, .. }
            | Approximation::ExpSquaring { range, .. }
            | Approximation::ExpTaylor { range, .. }
            | Approximation::Goldschmidt { range, .. }
            | Approximation::InvSqrt { range, .. }
            | Approximation::Power { range, .. } => *range,
        }
    }

    /// The function approximated.
    pub fn exact(&self, x: f64) -> f64 {
        match self {
            Approximation::Polynomial { name, poly, .. } => {
                if name.starts_with("gelu") {
                    gelu(x)
                } else {
                    poly.eval(x)
                }
            }
            Approximation::ExpChebyshev { .. }
            | Approximation::ExpSquaring { .. }
            | Approximation::ExpTaylor { .. } => x.exp(),
            Approximation::Goldschmidt { .. } => 1.0 / x,
            Approximation::InvSqrt { .. } => 1.0 / x.sqrt(),
            Approximation::Power { .. } => self.eval(x),
        }
    }

    /// The evaluation as [`Step`]s with their coefficients: what another evaluator needs to
    /// compute exactly this function.
    pub fn steps(&self) -> Vec<Step> {
        match self {
            Approximation::Polynomial { poly, .. } => vec![Step::Polynomial(poly.clone())],
            Approximation::ExpChebyshev { poly, squarings, .. } => {
                vec![Step::Polynomial(poly.clone()), Step::Square(*squarings)]
            }
            Approximation::ExpSquaring { r, .. } => vec![
                Step::Polynomial(Polynomial::power(vec![1.0, 1.0 / 2f64.powi(*r as i32)])),
                Step::Square(*r),
            ],
            Approximation::ExpTaylor { degree, .. } => vec![Step::Polynomial(taylor_exp(*degree))],
            Approximation::Goldschmidt { iterations, range } => {
                vec![Step::Goldschmidt { hi: range.1, iterations: *iterations }]
            }
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                vec![Step::Newton { guess: guess.clone(), steps: *newton_steps }]
            }
            Approximation::Power { p, shift, .. } => vec![Step::Power { p: *p, shift: *shift }],
        }
    }

    /// Levels [`Approximation::evaluate`] consumes.
    pub fn depth(&self) -> usize {
        match self {
            Approximation::Polynomial { poly, .. } => poly.depth(),
            Approximation::ExpChebyshev { poly, squarings, .. } => poly.depth() + *squarings as usize,
            Approximation::ExpSquaring { r, .. } => 1 + *r as usize,
            Approximation::ExpTaylor { degree, .. } => taylor_exp(*degree).depth(),
            Approximation::Goldschmidt { iterations, .. } => {
                if *iterations == 1 {
                    1
                } else {
                    *iterations as usize + 1
                }
            }
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                guess.depth().max(1) + 2 * *newton_steps as usize
            }
            Approximation::Power { p, .. } => ceil_log2(*p),
        }
    }

    /// Levels [`Approximation::evaluate_masked`] consumes (0/1 masks fold in for free where
    /// the last or first step allows).
    pub fn depth_masked(&self) -> usize {
        match self {
            Approximation::Polynomial { .. }
            | Approximation::ExpChebyshev { .. }
            | Approximation::ExpSquaring { .. }
            | Approximation::ExpTaylor { .. } => self.depth(),
            _ => self.depth() + 1,
        }
    }

    /// The approximation in f64, step for step what `evaluate` does.
    pub fn eval(&self, x: f64) -> f64 {
        self.eval_real(x)
    }

    /// (f(x), f'(x)) of the approximation (not of the exact function): the gradient the torch
    /// student trains with, by forward-mode differentiation of the same steps.
    pub fn eval_with_derivative(&self, x: f64) -> (f64, f64) {
        let d = self.eval_real(Dual::variable(x));
        (d.value, d.derivative)
    }

    /// [`Approximation::eval_with_derivative`] of every element, in parallel.
    pub fn eval_many_with_derivative(&self, xs: &[f64]) -> (Vec<f64>, Vec<f64>) {
        use rayon::prelude::*;
        xs.par_iter().with_min_len(4096).map(|&x| self.eval_with_derivative(x)).unzip()
    }

    /// [`Approximation::eval`] on any [`Real`].
    pub fn eval_real<R: Real>(&self, x: R) -> R {
        let square_times = |mut y: R, times: u32| {
            for _ in 0..times {
                y = y * y;
            }
            y
        };
        match self {
            Approximation::Polynomial { poly, .. } => poly.eval_real(x),
            Approximation::ExpChebyshev { poly, squarings, .. } => {
                square_times(poly.eval_real(x), *squarings)
            }
            Approximation::ExpSquaring { r, .. } => {
                square_times(x.scale(1.0 / 2f64.powi(*r as i32)).offset(1.0), *r)
            }
            Approximation::ExpTaylor { degree, .. } => taylor_exp(*degree).eval_real(x),
            Approximation::Goldschmidt { iterations, range } => {
                let hi = range.1;
                let mut e = x.scale(-1.0 / hi).offset(1.0);
                let mut y = x.scale(-1.0 / (hi * hi)).offset(2.0 / hi);
                for _ in 1..*iterations {
                    e = e * e;
                    y = y * e.offset(1.0);
                }
                y
            }
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                let h = x.scale(-0.5);
                let mut y = guess.eval_real(x);
                for _ in 0..*newton_steps {
                    y = y.scale(1.5) + (y * y) * (h * y);
                }
                y
            }
            Approximation::Power { p, shift, .. } => {
                let Ok(y) = power_tree(x.offset(*shift), *p, &mut |a: R, b: R| {
                    Ok::<R, std::convert::Infallible>(a * b)
                });
                y
            }
        }
    }

    /// f(x) on a backend.
    pub fn evaluate<B: Backend>(&self, b: &B, x: &B::Value) -> Result<B::Value> {
        self.check_levels(b, x, self.depth())?;
        match self {
            Approximation::Polynomial { poly, .. } => polynomial::evaluate(b, x, poly),
            Approximation::ExpChebyshev { poly, squarings, .. } => {
                self.square_times(b, polynomial::evaluate(b, x, poly)?, *squarings)
            }
            Approximation::ExpTaylor { degree, .. } => polynomial::evaluate(b, x, &taylor_exp(*degree)),
            Approximation::ExpSquaring { r, .. } => {
                let y = b.add_scalar(&b.mul_scalar(x, 1.0 / 2f64.powi(*r as i32))?, 1.0)?;
                self.square_times(b, y, *r)
            }
            Approximation::Goldschmidt { iterations, range } => {
                let hi = range.1;
                let mut e = b.add_scalar(&b.mul_scalar(x, -1.0 / hi)?, 1.0)?;
                let mut y = b.add_scalar(&b.mul_scalar(x, -1.0 / (hi * hi))?, 2.0 / hi)?;
                for _ in 1..*iterations {
                    e = b.square(&e)?;
                    y = b.mul(&y, &b.add_scalar(&e, 1.0)?)?;
                }
                Ok(y)
            }
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                let h = b.mul_scalar(x, -0.5)?;
                let mut y = polynomial::evaluate(b, x, guess)?;
                if guess.depth() == 0 {
                    // A constant guess: bring it to the level a real guess would have.
                    y = b.drop_to(&y, b.level(x) - 1)?;
                }
                for _ in 0..*newton_steps {
                    let y2 = b.square(&y)?;
                    let hy = b.mul(&h, &y)?;
                    let cube = b.mul(&y2, &hy)?;
                    y = b.add(&b.mul_scalar(&y, 1.5)?, &cube)?;
                }
                Ok(y)
            }
            Approximation::Power { p, shift, .. } => {
                let y = b.add_scalar(x, *shift)?;
                power_tree(y, *p, &mut |u: B::Value, v: B::Value| mul_aligned(b, &u, &v))
            }
        }
    }

    /// The deepest step of [`Approximation::evaluate_narrow`]: the levels a ring must
    /// leave above the refresh level for this approximation to run on a narrow value.
    pub fn narrow_step_depth(&self) -> usize {
        match self {
            Approximation::Goldschmidt { .. } => 2,
            Approximation::InvSqrt { guess, .. } => guess.depth().max(2),
            _ => self.depth(),
        }
    }

    /// What [`Approximation::evaluate_narrow`] multiplies its result by: Goldschmidt returns
    /// `hi / x` (values from 1 to `hi / lo`, where a fixed-point scale keeps its relative
    /// precision; `1 / x` itself can be 10^-4 small), the others `f(x)` itself.
    pub fn narrow_scale(&self) -> f64 {
        match self {
            Approximation::Goldschmidt { range, .. } => range.1,
            _ => 1.0,
        }
    }

    /// `f(x) * narrow_scale()` for a narrow value (one ciphertext per group), refreshing the
    /// iteration's state before any step that would take it below the refresh level: a deep
    /// chain then costs round trips of a few ciphertexts, not levels. The caller folds
    /// `1 / narrow_scale()` into what the result multiplies next.
    pub fn evaluate_narrow<B: Backend>(&self, b: &B, x: &B::Value) -> Result<B::Value> {
        let floor = b.refresh_level();
        let fit = |values: Vec<B::Value>, need: usize| -> Result<Vec<B::Value>> {
            let refs: Vec<&B::Value> = values.iter().collect();
            if b.lowest_level(&refs) >= need + floor {
                Ok(values)
            } else {
                // The top level: a narrow chain is one or two ciphertexts, so round trips
                // cost more than their bytes.
                b.refresh(values, b.max_level())
            }
        };
        let pair = |mut v: Vec<B::Value>| {
            let second = v.pop().expect("two values");
            (v.pop().expect("two values"), second)
        };
        match self {
            Approximation::Goldschmidt { iterations, range } => {
                let hi = range.1;
                let x = fit(vec![x.clone()], 1)?.remove(0);
                let mut e = b.add_scalar(&b.mul_scalar(&x, -1.0 / hi)?, 1.0)?;
                // hi times Goldschmidt's first estimate 2 / hi - x / hi^2: 1 + e.
                let mut y = b.add_scalar(&e, 1.0)?;
                for _ in 1..*iterations {
                    // e^2 costs a level, y (1 + e^2) one more below the lower of the two.
                    (e, y) = pair(fit(vec![e, y], 2)?);
                    e = b.square(&e)?;
                    y = b.mul(&y, &b.add_scalar(&e, 1.0)?)?;
                }
                Ok(y)
            }
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                let x = fit(vec![x.clone()], guess.depth().max(1))?.remove(0);
                let mut h = b.mul_scalar(&x, -0.5)?;
                let mut y = polynomial::evaluate(b, &x, guess)?;
                if guess.depth() == 0 {
                    y = b.drop_to(&y, b.level(&x) - 1)?;
                }
                for _ in 0..*newton_steps {
                    // y^2 and h y cost a level each, their product one more.
                    (y, h) = pair(fit(vec![y, h], 2)?);
                    let y2 = b.square(&y)?;
                    let hy = b.mul(&h, &y)?;
                    let cube = b.mul(&y2, &hy)?;
                    y = b.add(&b.mul_scalar(&y, 1.5)?, &cube)?;
                }
                Ok(y)
            }
            _ => {
                let x = fit(vec![x.clone()], self.depth())?.remove(0);
                self.evaluate(b, &x)
            }
        }
    }

    /// [f(x) * m for m in masks], masks of 0s and 1s.
    pub fn evaluate_masked<B: Backend>(
        &self,
        b: &B,
        x: &B::Value,
        masks: &[&[f64]],
    ) -> Result<Vec<B::Value>> {
        self.check_levels(b, x, self.depth_masked())?;
        match self {
            Approximation::Polynomial { poly, .. } => polynomial::evaluate_masked(b, x, poly, masks),
            // A 0/1 mask survives squaring: (m p)^(2^s) = m p^(2^s).
            Approximation::ExpChebyshev { poly, squarings, .. } => {
                polynomial::evaluate_masked(b, x, poly, masks)?
                    .into_iter()
                    .map(|y| self.square_times(b, y, *squarings))
                    .collect()
            }
            Approximation::ExpTaylor { degree, .. } => {
                polynomial::evaluate_masked(b, x, &taylor_exp(*degree), masks)
            }
            Approximation::ExpSquaring { r, .. } => masks
                .iter()
                .map(|m| {
                    // (m (1 + x / 2^r))^(2^r) = m f(x) for m in {0, 1}: the mask rides on the
                    // affine step's plaintext product.
                    let scaled: Vec<f64> = m.iter().map(|v| v / 2f64.powi(*r as i32)).collect();
                    let y = b.add_plain(&b.mul_plain(x, &scaled)?, m)?;
                    self.square_times(b, y, *r)
                })
                .collect(),
            _ => {
                let y = self.evaluate(b, x)?;
                masks.iter().map(|m| b.mul_plain(&y, m)).collect()
            }
        }
    }

    fn square_times<B: Backend>(&self, b: &B, mut y: B::Value, r: u32) -> Result<B::Value> {
        for _ in 0..r {
            y = b.square(&y)?;
        }
        Ok(y)
    }

    fn check_levels<B: Backend>(&self, b: &B, x: &B::Value, need: usize) -> Result<()> {
        if b.level(x) < need {
            return Err(Error::OutOfLevels(format!(
                "{} needs {need} levels, the input is at level {}",
                self.name(),
                b.level(x)
            )));
        }
        Ok(())
    }

    /// (max |approx - exact|, max relative error) over `samples` evenly spaced points.
    pub fn max_error(&self, samples: usize) -> (f64, f64) {
        let (lo, hi) = self.range();
        let n = samples.max(2);
        (0..n).fold((0.0, 0.0), |(abs, rel), i| {
            let x = lo + (hi - lo) * i as f64 / (n - 1) as f64;
            let (want, got) = (self.exact(x), self.eval(x));
            let e = (got - want).abs();
            (f64::max(abs, e), f64::max(rel, e / want.abs().max(f64::MIN_POSITIVE)))
        })
    }

    /// Inputs outside the range (where the approximation is not trusted).
    pub fn out_of_range(&self, xs: &[f64]) -> usize {
        let (lo, hi) = self.range();
        xs.iter().filter(|&&x| !(lo..=hi).contains(&x)).count()
    }

    /// The same kind and degree on exactly `range` (Goldschmidt keeps its iterations): what a
    /// saved text says, as opposed to [`Approximation::with_range`]'s recalibration.
    pub fn with_range_exact(&self, range: (f64, f64)) -> Result<Approximation> {
        match self {
            Approximation::Goldschmidt { iterations, .. } => goldschmidt(*iterations, range),
            _ => self.with_range(range),
        }
    }

    /// The same kind of approximation on another range: polynomial fits are refitted, and
    /// Goldschmidt gets the iterations the new ratio needs.
    pub fn with_range(&self, range: (f64, f64)) -> Result<Approximation> {
        match self {
            Approximation::Polynomial { name, poly, .. } => match poly.basis {
                Basis::Chebyshev { .. } if name == "gelu_chebyshev" => {
                    gelu_chebyshev(range.0, range.1, poly.degree())
                }
                _ => {
                    check_range(range, false)?;
                    Ok(Approximation::Polynomial { name: name.clone(), poly: poly.clone(), range })
                }
            },
            Approximation::ExpChebyshev { poly, .. } => exp_chebyshev(range.0, range.1, poly.degree()),
            Approximation::ExpSquaring { r, .. } => exp_squaring(*r, range),
            Approximation::ExpTaylor { degree, .. } => exp_taylor(*degree, range),
            Approximation::Goldschmidt { iterations, .. } => {
                check_range(range, true)?;
                goldschmidt((*iterations).max(goldschmidt_iterations(range, 1e-4)), range)
            }
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                inv_sqrt(range.0, range.1, guess.degree(), *newton_steps)
            }
            Approximation::Power { p, shift, .. } => power(*p, *shift, range),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::he::mirror::Mirror;

    fn all() -> Vec<Approximation> {
        vec![
            gelu_quad(),
            gelu_chebyshev(-6.0, 6.0, 15).unwrap(),
            exp_squaring(6, (-8.0, 4.0)).unwrap(),
            exp_squaring(8, (-8.0, 4.0)).unwrap(),
            exp_chebyshev(-8.0, 4.0, 15).unwrap(),
            exp_chebyshev(-12.0, 14.0, 15).unwrap(),
            exp_taylor(6, (-2.0, 2.0)).unwrap(),
            goldschmidt(goldschmidt_iterations((1.0, 200.0), 1e-4), (1.0, 200.0)).unwrap(),
            inv_sqrt(0.05, 5.0, 3, 2).unwrap(),
            inv_sqrt(0.05, 5.0, 7, 3).unwrap(),
            inv_sqrt(0.01, 10.0, 15, 3).unwrap(),
            inv_sqrt(0.05, 5.0, 31, 2).unwrap(),
            inv_sqrt(0.001, 1.7, 31, 2).unwrap(),
            power(2, 1.5, (-3.0, 5.0)).unwrap(),
            power(4, -0.5, (-2.0, 2.0)).unwrap(),
            power(6, 0.3, (-1.5, 1.5)).unwrap(),
        ]
    }

    #[test]
    fn derivative_matches_central_differences() {
        for a in all() {
            let (lo, hi) = a.range();
            for k in 0..=40 {
                let x = lo + (hi - lo) * k as f64 / 40.0;
                let (y, dy) = a.eval_with_derivative(x);
                assert_eq!(y, a.eval(x), "{}", a.name());
                let h = 1e-6 * (hi - lo);
                let numeric = (a.eval(x + h) - a.eval(x - h)) / (2.0 * h);
                let tol = 1e-5 * (1.0 + numeric.abs());
                assert!((dy - numeric).abs() < tol, "{} at {x}: {dy} vs {numeric}", a.name());
            }
        }
    }

    #[test]
    fn accuracy_on_the_range() {
        // (abs, rel) bounds per approximation; printed for the record.
        let bounds = [
            (f64::INFINITY, f64::INFINITY), // Quad is the paper's stand-in, not a GELU fit
            (1e-2, f64::INFINITY),
            (6.5, 0.5),
            (1.7, 0.13),
            (1e-5, 1e-5),
            (1e-3, 1e-6),
            (0.04, 0.2),
            (1e-4, 1e-4),
            (0.6, 0.12),
            (1e-3, 5e-5),
            (1e-1, 5e-3),
            (1e-10, 1e-11),
            (0.2, 6e-3),
            // Powers are their own exact function.
            (0.0, 0.0),
            (0.0, 0.0),
            (0.0, 0.0),
        ];
        for (a, (abs_bound, rel_bound)) in all().iter().zip(bounds) {
            let (abs, rel) = a.max_error(20001);
            eprintln!(
                "{:<45} range {:?} depth {:>2}: max abs {abs:.2e}, max rel {rel:.2e}",
                a.name(),
                a.range(),
                a.depth()
            );
            assert!(abs <= abs_bound && rel <= rel_bound, "{}: {abs} {rel}", a.name());
        }
    }

    #[test]
    fn evaluate_matches_eval_and_depth() {
        for a in all() {
            let (lo, hi) = a.range();
            let slots = 64;
            let xs: Vec<f64> = (0..slots).map(|i| lo + (hi - lo) * i as f64 / (slots - 1) as f64).collect();
            let b = Mirror::new(slots, 40);
            let x = b.value(xs.clone()).unwrap();
            let y = a.evaluate(&b, &x).unwrap();
            assert_eq!(40 - y.level, a.depth(), "{}", a.name());
            for (&xi, &yi) in xs.iter().zip(&y.data) {
                let want = a.eval(xi);
                assert!((yi - want).abs() <= 1e-9 * want.abs().max(1.0), "{}: {yi} vs {want}", a.name());
            }
            let mask: Vec<f64> = (0..slots).map(|i| (i % 3 == 0) as u8 as f64).collect();
            let m = a.evaluate_masked(&b, &x, &[&mask]).unwrap().remove(0);
            assert_eq!(40 - m.level, a.depth_masked(), "{}", a.name());
            for ((yi, mi), want) in m.data.iter().zip(&mask).zip(&y.data) {
                assert!((yi - mi * want).abs() <= 1e-9 * want.abs().max(1.0), "{} masked", a.name());
            }
            // Too few levels is an error, not a panic.
            let shallow = b.value_at(xs.clone(), a.depth().saturating_sub(1)).unwrap();
            assert!(a.depth() == 0 || matches!(a.evaluate(&b, &shallow), Err(Error::OutOfLevels(_))));
        }
    }

    #[test]
    fn powers_match_their_formula_and_depth() {
        for (p, shift) in [(2, 1.5), (4, -0.5), (6, 0.3), (16, 0.1)] {
            let a = power(p, shift, (-1.0, 1.0)).unwrap();
            assert_eq!(a.depth(), (p as f64).log2().ceil() as usize);
            for x in [-1.0, -0.3, 0.0, 0.7] {
                let want = (x + shift).powi(p as i32);
                assert!((a.eval(x) - want).abs() <= 1e-12 * want.abs().max(1.0), "p={p} at {x}");
            }
        }
    }

    /// A narrow chain on too few levels refreshes its state between steps and still computes
    /// `eval` (times its narrow scale); with enough levels it refreshes nothing.
    #[test]
    fn narrow_evaluation_splits_deep_chains() {
        for a in [goldschmidt(12, (1.0, 4000.0)).unwrap(), inv_sqrt(0.01, 10.0, 7, 4).unwrap()] {
            let (lo, hi) = a.range();
            let xs: Vec<f64> = (0..16).map(|i| lo + (hi - lo) * i as f64 / 15.0).collect();
            for (levels, refreshes) in [(40, false), (a.narrow_step_depth() + 2, true)] {
                let b = Mirror::new(16, levels).with_refresh_level(2);
                let y = a.evaluate_narrow(&b, &b.value(xs.clone()).unwrap()).unwrap();
                for (&x, &v) in xs.iter().zip(&y.data) {
                    let want = a.eval(x) * a.narrow_scale();
                    assert!((v - want).abs() <= 1e-12 * want.abs().max(1.0), "{}", a.name());
                }
                assert!(y.level >= 2, "{}: ended below the refresh level", a.name());
                assert_eq!(b.cost().refresh_rounds > 0, refreshes, "{} on {levels} levels", a.name());
            }
        }
    }

    #[test]
    fn parameters_are_checked() {
        assert!(power(3, 0.0, (-1.0, 1.0)).is_err());
        assert!(power(18, 0.0, (-1.0, 1.0)).is_err());
        assert!(power(2, f64::NAN, (-1.0, 1.0)).is_err());
        assert!(exp_squaring(0, (-1.0, 1.0)).is_err());
        assert!(exp_squaring(6, (1.0, -1.0)).is_err());
        assert!(goldschmidt(5, (0.0, 1.0)).is_err());
        assert!(inv_sqrt(-1.0, 1.0, 3, 2).is_err());
        assert!(gelu_chebyshev(-1.0, f64::NAN, 7).is_err());
        assert!(calibrated_range(&[], 0.1).is_err());
        assert!(calibrated_range(&[1.0, f64::NAN], 0.1).is_err());
        assert_eq!(calibrated_range(&[0.0, 1.0], 0.5).unwrap(), (-0.5, 1.5));
        assert_eq!(gelu_quad().out_of_range(&[-5.0, 0.0, 4.0, 4.1]), 2);
        assert!((gelu(1.0) - 0.8413447460685429).abs() < 1e-14);
        assert!((gelu(-3.0) - -0.004049694094890).abs() < 1e-14);
    }
}
