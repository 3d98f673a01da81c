//! Negacyclic number-theoretic transform over Z_q[X]/(X^N + 1).
//!
//! Cooley-Tukey forward / Gentleman-Sande inverse with Harvey's lazy butterflies and Shoup
//! constants (Longa-Naehrig ordering): the forward transform maps coefficients in natural order
//! to evaluations at psi^(2 brv(i) + 1) in index i, where brv reverses log2(N) bits.

use super::modulus::Modulus;
use super::primes::primitive_root;

/// Precomputed twiddles for one prime and one ring degree.
#[derive(Clone, Debug)]
pub struct NttTable {
    modulus: Modulus,
    n: usize,
    /// psi^brv(k), k < n, and their Shoup constants.
    roots: Vec<u64>,
    roots_shoup: Vec<u64>,
    /// psi^-brv(k), k < n, and their Shoup constants.
    inv_roots: Vec<u64>,
    inv_roots_shoup: Vec<u64>,
    n_inv: u64,
    n_inv_shoup: u64,
}

/// Reverses the lowest `bits` bits of `x`.
#[inline]
pub fn bit_reverse(x: usize, bits: u32) -> usize {
    if bits == 0 {
        0
    } else {
        x.reverse_bits() >> (usize::BITS - bits)
    }
}

impl NttTable {
    /// Returns None if q is not = 1 (mod 2n) or n is not a power of two.
    pub fn new(modulus: Modulus, n: usize) -> Option<Self> {
        if !n.is_power_of_two() || n < 2 {
            return None;
        }
        let q = modulus.value();
        let psi = primitive_root(q, n)?;
        let psi_inv = modulus.inv(psi)?;
        let log_n = n.trailing_zeros();
        let mut roots = vec![0u64; n];
        let mut inv_roots = vec![0u64; n];
        let (mut p, mut pi) = (1u64, 1u64);
        for k in 0..n {
            let r = bit_reverse(k, log_n);
            roots[r] = p;
            inv_roots[r] = pi;
            p = modulus.mul(p, psi);
            pi = modulus.mul(pi, psi_inv);
        }
        let roots_shoup = roots.iter().map(|&w| modulus.shoup(w)).collect();
        let inv_roots_shoup = inv_roots.iter().map(|&w| modulus.shoup(w)).collect();
        let n_inv = modulus.inv(n as u64)?;
        Some(NttTable {
            modulus,
            n,
            roots,
            roots_shoup,
            inv_roots,
            inv_roots_shoup,
            n_inv,
            n_inv_shoup: modulus.shoup(n_inv),
        })
    }

    pub fn modulus(&self) -> &Modulus {
        &self.modulus
    }

    pub fn degree(&self) -> usize {
        self.n
    }

    /// In-place forward transform; input in [0, q) (or any value < 4q), output in [0, q).
    pub fn forward(&self, a: &mut [u64]) {
        self.forward_lazy(a);
        let q = self.modulus.value();
        let two_q = 2 * q;
        for x in a.iter_mut() {
            let v = (*x).min(x.wrapping_sub(two_q));
            *x = v.min(v.wrapping_sub(q));
        }
    }

    /// Forward transform leaving values in [0, 4q).
    pub fn forward_lazy(&self, a: &mut [u64]) {
        assert_eq!(a.len(), self.n, "NTT input length must equal the ring degree");
        let q = self.modulus.value();
        let two_q = 2 * q;
        let n = self.n;
        let mut t = n;
        let mut m = 1;
        while m < n {
            t >>= 1;
            for i in 0..m {
                let w = self.roots[m + i];
                let ws = self.roots_shoup[m + i];
                let (lo, hi) = a[2 * i * t..2 * i * t + 2 * t].split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    // Branch-free conditional subtraction (see Modulus::reduce_once).
                    let u = (*x).min(x.wrapping_sub(two_q));
                    let v = self.modulus.mul_shoup_lazy(*y, w, ws);
                    *x = u + v;
                    *y = u + two_q - v;
                }
            }
            m <<= 1;
        }
    }

    /// In-place inverse transform; input < 2q, output in [0, q).
    pub fn inverse(&self, a: &mut [u64]) {
        assert_eq!(a.len(), self.n, "NTT input length must equal the ring degree");
        let q = self.modulus.value();
        let two_q = 2 * q;
        let n = self.n;
        let mut t = 1;
        let mut m = n >> 1;
        while m >= 1 {
            for i in 0..m {
                let w = self.inv_roots[m + i];
                let ws = self.inv_roots_shoup[m + i];
                let (lo, hi) = a[2 * i * t..2 * i * t + 2 * t].split_at_mut(t);
                for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                    let u = *x;
                    let v = *y;
                    let s = u + v;
                    *x = s.min(s.wrapping_sub(two_q));
                    *y = self.modulus.mul_shoup_lazy(u + two_q - v, w, ws);
                }
            }
            t <<= 1;
            m >>= 1;
        }
        for x in a.iter_mut() {
            *x = self.modulus.mul_shoup(*x, self.n_inv, self.n_inv_shoup);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::{ntt_primes, Side};
    use proptest::prelude::*;

    fn negacyclic_schoolbook(a: &[u64], b: &[u64], m: &Modulus) -> Vec<u64> {
        let n = a.len();
        let mut c = vec![0u64; n];
        for i in 0..n {
            for j in 0..n {
                let p = m.mul(a[i], b[j]);
                let k = i + j;
                if k < n {
                    c[k] = m.add(c[k], p);
                } else {
                    c[k - n] = m.sub(c[k - n], p);
                }
            }
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn ntt_product_equals_negacyclic_convolution(
            log_n in 1u32..8, bits in prop::sample::select(vec![20u32, 40, 50, 60, 61]),
            seed in any::<u64>()
        ) {
            let n = 1usize << log_n;
            let q = ntt_primes(bits, 1, n, Side::Below, &[])[0];
            let m = Modulus::new(q);
            let table = NttTable::new(m, n).unwrap();
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state % q };
            let a: Vec<u64> = (0..n).map(|_| next()).collect();
            let b: Vec<u64> = (0..n).map(|_| next()).collect();
            let expected = negacyclic_schoolbook(&a, &b, &m);
            let (mut fa, mut fb) = (a.clone(), b.clone());
            table.forward(&mut fa);
            table.forward(&mut fb);
            let mut prod: Vec<u64> = fa.iter().zip(&fb).map(|(&x, &y)| m.mul(x, y)).collect();
            table.inverse(&mut prod);
            prop_assert_eq!(prod, expected);
            table.inverse(&mut fa);
            prop_assert_eq!(fa, a);
        }
    }

    #[test]
    fn forward_evaluates_at_odd_powers_in_bit_reversed_order() {
        // Known-answer check of the ordering the automorphisms rely on.
        let n = 16;
        let q = ntt_primes(30, 1, n, Side::Below, &[])[0];
        let m = Modulus::new(q);
        let table = NttTable::new(m, n).unwrap();
        let psi = primitive_root(q, n).unwrap();
        let a: Vec<u64> = (0..n as u64).map(|i| (i * i + 3) % q).collect();
        let mut fa = a.clone();
        table.forward(&mut fa);
        for (i, &value) in fa.iter().enumerate() {
            let x = m.pow(psi, 2 * bit_reverse(i, 4) as u64 + 1);
            let eval = a.iter().rev().fold(0, |acc, &c| m.add(m.mul(acc, x), c));
            assert_eq!(value, eval);
        }
    }
}
