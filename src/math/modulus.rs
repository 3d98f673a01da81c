//! A word-sized prime modulus with precomputed constants for Barrett and Shoup reduction.
//!
//! Every modulus used by the library is below 2^62, so lazy values up to 4q fit in a `u64`
//! (Harvey's NTT butterflies rely on this).

/// Largest supported modulus bit size: lazy NTT values live in [0, 4q) and must fit in 64 bits.
pub const MAX_MODULUS_BITS: u32 = 61;

/// A prime modulus q < 2^61 with its reduction constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modulus {
    value: u64,
    /// floor(2^128 / q), high and low words, for Barrett reduction of 128-bit products.
    ratio_hi: u64,
    ratio_lo: u64,
    bits: u32,
}

impl Modulus {
    /// Builds the constants for `q`. Panics in debug builds if q is out of range: callers
    /// (parameter validation and decoders) check the range first.
    pub fn new(q: u64) -> Self {
        debug_assert!((2..(1u64 << MAX_MODULUS_BITS)).contains(&q));
        let ratio = u128::MAX / q as u128; // floor((2^128 - 1) / q) == floor(2^128 / q) for q not a power of 2
        Modulus {
            value: q,
            ratio_hi: (ratio >> 64) as u64,
            ratio_lo: ratio as u64,
            bits: 64 - q.leading_zeros(),
        }
    }

    #[inline(always)]
    pub fn value(&self) -> u64 {
        self.value
    }

    #[inline(always)]
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Reduces a 128-bit value to [0, q) (Barrett with a two-word ratio).
    #[inline(always)]
    pub fn reduce_u128(&self, x: u128) -> u64 {
        let x_lo = x as u64;
        let x_hi = (x >> 64) as u64;
        // Upper 64 bits of the 256-bit product x * ratio give the quotient estimate.
        let lo_lo_hi = ((x_lo as u128 * self.ratio_lo as u128) >> 64) as u64;
        let lo_hi = x_lo as u128 * self.ratio_hi as u128;
        let hi_lo = x_hi as u128 * self.ratio_lo as u128;
        let mid = (lo_hi & 0xFFFF_FFFF_FFFF_FFFF) + (hi_lo & 0xFFFF_FFFF_FFFF_FFFF) + lo_lo_hi as u128;
        let quotient = x_hi
            .wrapping_mul(self.ratio_hi)
            .wrapping_add((lo_hi >> 64) as u64)
            .wrapping_add((hi_lo >> 64) as u64)
            .wrapping_add((mid >> 64) as u64);
        let r = x_lo.wrapping_sub(quotient.wrapping_mul(self.value));
        self.reduce_once(r)
    }

    /// Reduces a 64-bit value to [0, q).
    #[inline(always)]
    pub fn reduce(&self, x: u64) -> u64 {
        // floor(x * ratio / 2^128) with x < 2^64 needs only the high ratio word plus a carry.
        let quotient =
            ((x as u128 * self.ratio_hi as u128) + ((x as u128 * self.ratio_lo as u128) >> 64)) >> 64;
        let r = x.wrapping_sub((quotient as u64).wrapping_mul(self.value));
        self.reduce_once(r)
    }

    /// The largest multiple of q not above 2^63, for deferred reduction: a running sum below
    /// 2^64 folded with `s.min(s.wrapping_sub(cap))` (branch-free, it vectorises) lands below
    /// 2^63 + q. The linear-layer, tensor-product and key-switch kernels fold with it.
    #[inline]
    pub fn lazy_cap(&self) -> u64 {
        ((1u64 << 63) / self.value) * self.value
    }

    /// Maps a value in [0, 2q) to [0, q) without a data-dependent branch.
    #[inline(always)]
    pub fn reduce_once(&self, x: u64) -> u64 {
        // If x < q the wrapped difference exceeds x, so `min` keeps x: a cmov, no branch.
        x.min(x.wrapping_sub(self.value))
    }

    /// Reduces a signed value to [0, q).
    #[inline(always)]
    pub fn reduce_i64(&self, x: i64) -> u64 {
        let r = self.reduce(x.unsigned_abs());
        if x < 0 {
            self.neg(r)
        } else {
            r
        }
    }

    /// Reduces a signed 128-bit value to [0, q).
    #[inline]
    pub fn reduce_i128(&self, x: i128) -> u64 {
        let r = self.reduce_u128(x.unsigned_abs());
        if x < 0 {
            self.neg(r)
        } else {
            r
        }
    }

    #[inline(always)]
    pub fn add(&self, a: u64, b: u64) -> u64 {
        self.reduce_once(a + b)
    }

    #[inline(always)]
    pub fn sub(&self, a: u64, b: u64) -> u64 {
        self.reduce_once(a + self.value - b)
    }

    #[inline(always)]
    pub fn neg(&self, a: u64) -> u64 {
        // (q - a) mod q, branch-free: a == 0 maps to 0.
        (self.value - a) & ((a != 0) as u64).wrapping_neg()
    }

    #[inline(always)]
    pub fn mul(&self, a: u64, b: u64) -> u64 {
        self.reduce_u128(a as u128 * b as u128)
    }

    /// Precomputes floor(w * 2^64 / q) for repeated multiplication by the constant w < q.
    /// Two products instead of a 128-bit division: the Barrett ratio floor(2^128 / q) gives the
    /// quotient to within one, and the remainder w 2^64 - e q (below 2q, so exact in 64 bits)
    /// says which.
    #[inline]
    pub fn shoup(&self, w: u64) -> u64 {
        debug_assert!(w < self.value);
        let e =
            w.wrapping_mul(self.ratio_hi).wrapping_add(((w as u128 * self.ratio_lo as u128) >> 64) as u64);
        let remainder = 0u64.wrapping_sub(e.wrapping_mul(self.value));
        e + (remainder >= self.value) as u64
    }

    /// a * w mod q in [0, 2q) given w' = shoup(w); a may be any 64-bit value.
    #[inline(always)]
    pub fn mul_shoup_lazy(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        let quotient = ((a as u128 * w_shoup as u128) >> 64) as u64;
        a.wrapping_mul(w).wrapping_sub(quotient.wrapping_mul(self.value))
    }

    /// a * w mod q in [0, q) given w' = shoup(w).
    #[inline(always)]
    pub fn mul_shoup(&self, a: u64, w: u64, w_shoup: u64) -> u64 {
        self.reduce_once(self.mul_shoup_lazy(a, w, w_shoup))
    }

    pub fn pow(&self, mut base: u64, mut exp: u64) -> u64 {
        let mut acc = 1 % self.value;
        base %= self.value;
        while exp > 0 {
            if exp & 1 == 1 {
                acc = self.mul(acc, base);
            }
            base = self.mul(base, base);
            exp >>= 1;
        }
        acc
    }

    /// Inverse modulo a prime q (Fermat). Returns None for 0.
    pub fn inv(&self, a: u64) -> Option<u64> {
        let a = a % self.value;
        (a != 0).then(|| self.pow(a, self.value - 2))
    }

    /// Centres a residue in [0, q) to (-q/2, q/2].
    #[inline(always)]
    pub fn center(&self, a: u64) -> i64 {
        if a > self.value >> 1 {
            a as i64 - self.value as i64
        } else {
            a as i64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Primes of the sizes the library uses (61, 60, 40 bits) and a small one.
    const PRIMES: [u64; 4] = [(1 << 61) - 1, (1 << 59) - 55, 1_099_511_922_689, 65537];

    proptest! {
        #[test]
        fn barrett_matches_u128_remainder(a in any::<u64>(), b in any::<u64>(), i in 0usize..4) {
            let m = Modulus::new(PRIMES[i]);
            let q = PRIMES[i];
            prop_assert_eq!(m.reduce(a), a % q);
            let (a, b) = (a % q, b % q);
            prop_assert_eq!(m.mul(a, b), ((a as u128 * b as u128) % q as u128) as u64);
            let x = (a as u128) << 64 | b as u128;
            prop_assert_eq!(m.reduce_u128(x), (x % q as u128) as u64);
        }

        #[test]
        fn shoup_matches(a in any::<u64>(), w in any::<u64>(), i in 0usize..4) {
            let m = Modulus::new(PRIMES[i]);
            let q = PRIMES[i];
            let w = w % q;
            for w in [w, 0, 1, q - 1] {
                prop_assert_eq!(m.shoup(w), (((w as u128) << 64) / q as u128) as u64);
            }
            let lazy = m.mul_shoup_lazy(a, w, m.shoup(w));
            prop_assert!(lazy < 2 * q);
            prop_assert_eq!(lazy % q, ((a as u128 * w as u128) % q as u128) as u64);
        }

        #[test]
        fn signed_reduction(x in any::<i64>(), i in 0usize..4) {
            let m = Modulus::new(PRIMES[i]);
            let q = PRIMES[i] as i128;
            prop_assert_eq!(m.reduce_i64(x) as i128, (x as i128).rem_euclid(q));
            prop_assert_eq!(m.reduce_i128(x as i128 * 977) as i128, (x as i128 * 977).rem_euclid(q));
        }

        #[test]
        fn add_sub_neg_inv(a in any::<u64>(), b in any::<u64>(), i in 0usize..4) {
            let m = Modulus::new(PRIMES[i]);
            let q = PRIMES[i];
            let (a, b) = (a % q, b % q);
            prop_assert_eq!(m.add(a, b), ((a as u128 + b as u128) % q as u128) as u64);
            prop_assert_eq!(m.add(m.sub(a, b), b), a);
            prop_assert_eq!(m.add(m.neg(a), a), 0);
            if a != 0 && crate::math::primes::is_prime(q) {
                prop_assert_eq!(m.mul(a, m.inv(a).unwrap()), 1);
            }
        }
    }
}
