//! CRT composition of RNS residues into centred values, for decoding.
//!
//! Garner's mixed-radix algorithm with balanced digits: x = a_0 + a_1 q_0 + a_2 q_0 q_1 + ...
//! with every a_i in (-q_i/2, q_i/2]. It needs only word-sized modular arithmetic, and the
//! result (evaluated by Horner in f64) is the representative of x in about (-Q/2, Q/2], exact
//! whenever |x| < 2^53 and otherwise correct to f64 precision.

use super::modulus::Modulus;

#[derive(Clone, Debug)]
pub struct CrtComposer {
    moduli: Vec<Modulus>,
    /// inverses[i][j] = q_j^-1 mod q_i (j < i) with its Shoup constant.
    inverses: Vec<Vec<(u64, u64)>>,
}

impl CrtComposer {
    pub fn new(moduli: &[Modulus]) -> Self {
        let inverses = moduli
            .iter()
            .enumerate()
            .map(|(i, qi)| {
                moduli[..i]
                    .iter()
                    .map(|qj| {
                        let inv = qi.inv(qi.reduce(qj.value())).expect("distinct primes");
                        (inv, qi.shoup(inv))
                    })
                    .collect()
            })
            .collect();
        CrtComposer { moduli: moduli.to_vec(), inverses }
    }

    /// The exact centred value of one coefficient, when the product of the primes is below
    /// 2^126 (callers check [`CrtComposer::fits_i128`]).
    pub fn compose_i128(&self, residues: &[u64]) -> i128 {
        let digits = self.digits(residues);
        let mut value = 0i128;
        for i in (0..self.moduli.len()).rev() {
            value = value * self.moduli[i].value() as i128 + digits[i] as i128;
        }
        value
    }

    /// Whether [`CrtComposer::compose_i128`] is exact for these primes.
    pub fn fits_i128(&self) -> bool {
        self.moduli.iter().map(|q| (q.value() as f64).log2()).sum::<f64>() < 126.0
    }

    fn digits(&self, residues: &[u64]) -> [i64; 64] {
        let mut digits = [0i64; 64];
        for i in 0..self.moduli.len() {
            let qi = self.moduli[i];
            let mut t = residues[i];
            for (j, &(inv, inv_shoup)) in self.inverses[i].iter().enumerate() {
                t = qi.mul_shoup(qi.sub(t, qi.reduce_i64(digits[j])), inv, inv_shoup);
            }
            digits[i] = qi.center(t);
        }
        digits
    }

    /// The centred value of one coefficient given its residue in each prime.
    pub fn compose(&self, residues: &[u64]) -> f64 {
        // At most 61 primes: the digits live on the stack.
        let digits = self.digits(residues);
        let k = self.moduli.len();
        let mut value = 0f64;
        for i in (0..k).rev() {
            value = value * self.moduli[i].value() as f64 + digits[i] as f64;
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::{ntt_primes, Side};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn composes_centred_values(x in any::<i64>(), k in 1usize..5) {
            let primes = ntt_primes(40, k, 8, Side::Alternating, &[]);
            let moduli: Vec<Modulus> = primes.iter().map(|&q| Modulus::new(q)).collect();
            // Values within the 2^53 range f64 holds exactly, and below Q/2.
            let x = x >> if k == 1 { 25 } else { 11 };
            let residues: Vec<u64> = moduli.iter().map(|m| m.reduce_i64(x)).collect();
            prop_assert_eq!(CrtComposer::new(&moduli).compose(&residues), x as f64);
        }

        #[test]
        fn large_values_are_accurate_to_f64(hi in any::<i64>(), lo in any::<u64>()) {
            let primes = ntt_primes(50, 4, 8, Side::Below, &[]);
            let moduli: Vec<Modulus> = primes.iter().map(|&q| Modulus::new(q)).collect();
            let x = ((hi as i128) << 40) + (lo >> 24) as i128; // |x| ~ 2^103 < Q/2 ~ 2^199
            let residues: Vec<u64> = moduli.iter().map(|m| m.reduce_i128(x)).collect();
            let got = CrtComposer::new(&moduli).compose(&residues);
            prop_assert!((got - x as f64).abs() <= (x as f64).abs() * 1e-15 + 1.0);
        }
    }
}
