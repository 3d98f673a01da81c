//! Negacyclic number-theoretic transform over Z_q[X]/(X^N + 1).
//!
//! Cooley-Tukey forward / Gentleman-Sande inverse with Harvey's lazy butterflies and Shoup
//! constants (Longa-Naehrig ordering): the forward transform maps coefficients in natural order
//! to evaluations at psi^(2 brv(i) + 1) in index i, where brv reverses log2(N) bits.
//!
//! On x86-64 CPUs with AVX-512 (F, DQ, IFMA) the transforms run the vector kernels of
//! `ntt_avx512`, which give the same results after full reduction; elsewhere, and for
//! degrees below 16, they run the scalar code here.

use super::modulus::Modulus;
#[cfg(target_arch = "x86_64")]
use super::ntt_avx512::{Avx512Ntt, Twiddles};
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
    /// The vector kernels, if this CPU has them (detected once, here).
    #[cfg(target_arch = "x86_64")]
    avx512: Option<Avx512Ntt>,
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
        #[cfg(target_arch = "x86_64")]
        let avx512 = Avx512Ntt::new(&modulus, n, inv_roots[1], n_inv);
        Some(NttTable {
            modulus,
            n,
            roots,
            roots_shoup,
            inv_roots,
            inv_roots_shoup,
            n_inv,
            n_inv_shoup: modulus.shoup(n_inv),
            #[cfg(target_arch = "x86_64")]
            avx512,
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
        assert_eq!(a.len(), self.n, "NTT input length must equal the ring degree");
        #[cfg(target_arch = "x86_64")]
        if let Some(kernels) = &self.avx512 {
            return kernels.forward(a, self.forward_twiddles(), true);
        }
        self.forward_scalar(a);
    }

    /// Forward transform leaving values in [0, 4q).
    pub fn forward_lazy(&self, a: &mut [u64]) {
        assert_eq!(a.len(), self.n, "NTT input length must equal the ring degree");
        #[cfg(target_arch = "x86_64")]
        if let Some(kernels) = &self.avx512 {
            return kernels.forward(a, self.forward_twiddles(), false);
        }
        self.forward_lazy_scalar(a);
    }

    /// In-place inverse transform; input < 2q, output in [0, q).
    pub fn inverse(&self, a: &mut [u64]) {
        assert_eq!(a.len(), self.n, "NTT input length must equal the ring degree");
        #[cfg(target_arch = "x86_64")]
        if let Some(kernels) = &self.avx512 {
            return kernels.inverse(a, self.inverse_twiddles());
        }
        self.inverse_scalar(a);
    }

    /// [`forward`](Self::forward) on the portable scalar path whatever the CPU (the reference
    /// for tests and benchmarks).
    pub fn forward_scalar(&self, a: &mut [u64]) {
        self.forward_lazy_scalar(a);
        let q = self.modulus.value();
        let two_q = 2 * q;
        for x in a.iter_mut() {
            let v = (*x).min(x.wrapping_sub(two_q));
            *x = v.min(v.wrapping_sub(q));
        }
    }

    fn forward_lazy_scalar(&self, a: &mut [u64]) {
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

    /// [`inverse`](Self::inverse) on the portable scalar path whatever the CPU.
    pub fn inverse_scalar(&self, a: &mut [u64]) {
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

    #[cfg(target_arch = "x86_64")]
    fn forward_twiddles(&self) -> Twiddles<'_> {
        Twiddles { roots: &self.roots, shoup: &self.roots_shoup }
    }

    #[cfg(target_arch = "x86_64")]
    fn inverse_twiddles(&self) -> Twiddles<'_> {
        Twiddles { roots: &self.inv_roots, shoup: &self.inv_roots_shoup }
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
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                let p = m.mul(x, y);
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

    /// `n` xorshift values below `bound`, the last one `bound - 1` (the extreme lazy input).
    fn random_below(n: usize, bound: u64, seed: u64) -> Vec<u64> {
        let mut state = seed | 1;
        let mut v: Vec<u64> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % bound
            })
            .collect();
        v[n - 1] = bound - 1;
        v
    }

    #[test]
    fn dispatched_transforms_match_the_scalar_path() {
        // On CPUs with AVX-512 this compares the vector kernels (both multipliers: IFMA up to
        // 50-bit primes, emulated 64-bit above) with the scalar reference. The degrees cover
        // every split into whole-array stage pairs, L1 blocks, an odd stage and 16-blocks.
        for log_n in [4u32, 5, 6, 7, 10, 11, 12, 14, 15] {
            let n = 1usize << log_n;
            for bits in [30u32, 40, 49, 50, 55, 60, 61] {
                let q = ntt_primes(bits, 1, n, Side::Below, &[])[0];
                let table = NttTable::new(Modulus::new(q), n).unwrap();
                let seed = u64::from(log_n) << 8 | u64::from(bits);

                let input = random_below(n, 4 * q, seed);
                let mut expected = input.clone();
                table.forward_scalar(&mut expected);
                let mut out = input.clone();
                table.forward(&mut out);
                assert_eq!(out, expected, "forward, n = {n}, {bits}-bit");
                let mut lazy = input;
                table.forward_lazy(&mut lazy);
                assert!(lazy.iter().all(|&x| x < 4 * q), "forward_lazy range, n = {n}, {bits}-bit");
                let reduced: Vec<u64> = lazy.iter().map(|&x| x % q).collect();
                assert_eq!(reduced, expected, "forward_lazy, n = {n}, {bits}-bit");

                let input = random_below(n, 2 * q, !seed);
                let mut expected = input.clone();
                table.inverse_scalar(&mut expected);
                let mut out = input;
                table.inverse(&mut out);
                assert_eq!(out, expected, "inverse, n = {n}, {bits}-bit");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_kernels_are_used_when_the_cpu_has_them() {
        let cpu = crate::math::ntt_avx512::cpu_supported();
        for (n, bits) in [(8usize, 40u32), (16, 40), (16, 60), (1024, 61)] {
            let q = ntt_primes(bits, 1, n, Side::Below, &[])[0];
            let table = NttTable::new(Modulus::new(q), n).unwrap();
            assert_eq!(table.avx512.is_some(), cpu && n >= 16, "n = {n}, {bits}-bit");
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
