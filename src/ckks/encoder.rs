//! The canonical embedding: slot vectors <-> real polynomial coefficients.
//!
//! Slot j of a polynomial m is m(zeta^(5^j)) with zeta = exp(i pi / N), so the Galois element
//! 5^k rotates the slots left by k. The transforms are the "special FFT" of Cheon-Han-Kim-Kim-Song
//! (HEAAN) over N/2 slots; a power-of-two batch of s < N/2 slots is packed sparsely (every
//! (N/2)/s-th coefficient pair), which makes the full slot vector s-periodic.

use super::complex::Complex;
use crate::math::ntt::bit_reverse;

#[derive(Clone, Debug)]
pub struct Encoder {
    n: usize,
    /// 5^j mod 2N for j < N/2.
    rot_group: Vec<usize>,
    /// exp(2 pi i k / 2N) for k <= 2N.
    roots: Vec<Complex>,
}

impl Encoder {
    pub fn new(n: usize) -> Self {
        let m = 2 * n;
        let mut rot_group = Vec::with_capacity(n / 2);
        let mut g = 1usize;
        for _ in 0..n / 2 {
            rot_group.push(g);
            g = g * 5 % m;
        }
        let roots = (0..=m)
            .map(|k| {
                let angle = 2.0 * std::f64::consts::PI * k as f64 / m as f64;
                Complex::new(angle.cos(), angle.sin())
            })
            .collect();
        Encoder { n, rot_group, roots }
    }

    /// Coefficients (unscaled, length N) of the polynomial whose slots are `values` repeated;
    /// `values.len()` must be a power of two at most N/2.
    pub fn embed(&self, values: &[Complex]) -> Vec<f64> {
        let slots = values.len();
        debug_assert!(slots.is_power_of_two() && slots <= self.n / 2);
        let mut v = values.to_vec();
        self.special_ifft(&mut v);
        let gap = self.n / 2 / slots;
        let mut coeffs = vec![0f64; self.n];
        for (i, z) in v.iter().enumerate() {
            coeffs[i * gap] = z.re;
            coeffs[i * gap + self.n / 2] = z.im;
        }
        coeffs
    }

    /// The first `slots` slot values of the polynomial with real coefficients `coeffs`.
    pub fn project(&self, coeffs: &[f64], slots: usize) -> Vec<Complex> {
        let gap = self.n / 2 / slots;
        let mut v: Vec<Complex> =
            (0..slots).map(|i| Complex::new(coeffs[i * gap], coeffs[i * gap + self.n / 2])).collect();
        self.special_fft(&mut v);
        v
    }

    fn bit_reverse_permute(v: &mut [Complex]) {
        let bits = v.len().trailing_zeros();
        for i in 0..v.len() {
            let j = bit_reverse(i, bits);
            if i < j {
                v.swap(i, j);
            }
        }
    }

    fn special_fft(&self, v: &mut [Complex]) {
        let size = v.len();
        let m = 2 * self.n;
        Self::bit_reverse_permute(v);
        let mut len = 2;
        while len <= size {
            let (half, quarter_m) = (len / 2, len * 4);
            let gap = m / quarter_m;
            for i in (0..size).step_by(len) {
                for j in 0..half {
                    let w = self.roots[(self.rot_group[j] % quarter_m) * gap];
                    let u = v[i + j];
                    let t = v[i + j + half] * w;
                    v[i + j] = u + t;
                    v[i + j + half] = u - t;
                }
            }
            len <<= 1;
        }
    }

    fn special_ifft(&self, v: &mut [Complex]) {
        let size = v.len();
        let m = 2 * self.n;
        let mut len = size;
        while len >= 2 {
            let (half, quarter_m) = (len / 2, len * 4);
            let gap = m / quarter_m;
            for i in (0..size).step_by(len) {
                for j in 0..half {
                    let w = self.roots[(quarter_m - self.rot_group[j] % quarter_m) * gap];
                    let u = v[i + j] + v[i + j + half];
                    let t = (v[i + j] - v[i + j + half]) * w;
                    v[i + j] = u;
                    v[i + j + half] = t;
                }
            }
            len >>= 1;
        }
        Self::bit_reverse_permute(v);
        for z in v.iter_mut() {
            *z = *z / size as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_then_project_is_identity() {
        for log_n in [4u32, 8, 12] {
            let n = 1usize << log_n;
            let enc = Encoder::new(n);
            for slots in [1usize, 2, n / 8, n / 2] {
                let slots = slots.max(1);
                let v: Vec<Complex> = (0..slots)
                    .map(|i| Complex::new((i as f64 * 0.37).sin(), (i as f64).cos() / 3.0))
                    .collect();
                let back = enc.project(&enc.embed(&v), slots);
                for (a, b) in v.iter().zip(&back) {
                    assert!((*a - *b).abs() < 1e-9, "n={n} slots={slots}");
                }
            }
        }
    }

    #[test]
    fn slots_are_evaluations_at_powers_of_five() {
        // Known answer: slot j equals m(zeta^(5^j)) for zeta = exp(i pi / N).
        let n = 16;
        let enc = Encoder::new(n);
        let v: Vec<Complex> = (0..n / 2).map(|i| Complex::new(i as f64, -(i as f64) / 2.0)).collect();
        let coeffs = enc.embed(&v);
        for (j, expected) in v.iter().enumerate() {
            let e = enc.rot_group[j];
            let mut acc = Complex::default();
            for (k, &c) in coeffs.iter().enumerate() {
                let angle = std::f64::consts::PI * (e * k) as f64 / n as f64;
                acc = acc + Complex::new(c * angle.cos(), c * angle.sin());
            }
            assert!((acc - *expected).abs() < 1e-9, "slot {j}");
        }
    }
}
