//! Exact CRT composition of RNS residues into centred values, for decoding.

use super::modulus::Modulus;

/// Composes residues modulo q_0..q_{k-1} into the centred integer in (-Q/2, Q/2], as f64.
#[derive(Clone, Debug)]
pub struct CrtComposer {
    moduli: Vec<Modulus>,
    /// Q as little-endian 64-bit words.
    q: Vec<u64>,
    /// floor(Q / 2).
    half_q: Vec<u64>,
    /// Q / q_i as words.
    punctured: Vec<Vec<u64>>,
    /// (Q / q_i)^-1 mod q_i with its Shoup constant.
    inv_punctured: Vec<(u64, u64)>,
}

fn mul_word(a: &[u64], w: u64, out: &mut [u64]) {
    let mut carry = 0u128;
    for (o, &x) in out.iter_mut().zip(a.iter().chain(std::iter::repeat(&0))) {
        let t = x as u128 * w as u128 + carry;
        *o = t as u64;
        carry = t >> 64;
    }
}

fn add_assign(acc: &mut [u64], b: &[u64]) {
    let mut carry = 0u64;
    for (a, &x) in acc.iter_mut().zip(b.iter().chain(std::iter::repeat(&0))) {
        let (s1, c1) = a.overflowing_add(x);
        let (s2, c2) = s1.overflowing_add(carry);
        *a = s2;
        carry = (c1 as u64) + (c2 as u64);
    }
}

/// acc -= b; returns true on borrow (acc was smaller).
fn sub_assign(acc: &mut [u64], b: &[u64]) -> bool {
    let mut borrow = 0u64;
    for (a, &x) in acc.iter_mut().zip(b.iter().chain(std::iter::repeat(&0))) {
        let (d1, b1) = a.overflowing_sub(x);
        let (d2, b2) = d1.overflowing_sub(borrow);
        *a = d2;
        borrow = (b1 as u64) + (b2 as u64);
    }
    borrow != 0
}

fn greater_or_equal(a: &[u64], b: &[u64]) -> bool {
    for i in (0..a.len().max(b.len())).rev() {
        let (x, y) = (a.get(i).copied().unwrap_or(0), b.get(i).copied().unwrap_or(0));
        if x != y {
            return x > y;
        }
    }
    true
}

fn to_f64(words: &[u64]) -> f64 {
    words.iter().rev().fold(0.0, |acc, &w| acc * 18446744073709551616.0 + w as f64)
}

impl CrtComposer {
    pub fn new(moduli: &[Modulus]) -> Self {
        let words = moduli.len() + 2;
        let product = |skip: Option<usize>| {
            let mut acc = vec![0u64; words];
            acc[0] = 1;
            for (i, m) in moduli.iter().enumerate() {
                if Some(i) != skip {
                    let mut next = vec![0u64; words];
                    mul_word(&acc, m.value(), &mut next);
                    acc = next;
                }
            }
            acc
        };
        let q = product(None);
        let mut half_q = q.clone();
        let mut carry = 0;
        for w in half_q.iter_mut().rev() {
            let next = *w & 1;
            *w = (*w >> 1) | (carry << 63);
            carry = next;
        }
        let punctured: Vec<Vec<u64>> = (0..moduli.len()).map(|i| product(Some(i))).collect();
        let inv_punctured = moduli
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let r = moduli
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .fold(1u64, |acc, (_, mj)| m.mul(acc, m.reduce(mj.value())));
                let inv = m.inv(r).expect("distinct primes");
                (inv, m.shoup(inv))
            })
            .collect();
        CrtComposer { moduli: moduli.to_vec(), q, half_q, punctured, inv_punctured }
    }

    /// The centred value of one coefficient given its residue in each prime.
    pub fn compose(&self, residues: &[u64]) -> f64 {
        if self.moduli.len() == 1 {
            return self.moduli[0].center(residues[0]) as f64;
        }
        let words = self.q.len();
        let mut acc = vec![0u64; words];
        let mut term = vec![0u64; words];
        let mut quotient_estimate = 0f64;
        for (i, (m, &x)) in self.moduli.iter().zip(residues).enumerate() {
            let (w, ws) = self.inv_punctured[i];
            let y = m.mul_shoup(x, w, ws);
            quotient_estimate += y as f64 / m.value() as f64;
            mul_word(&self.punctured[i], y, &mut term);
            add_assign(&mut acc, &term);
        }
        // acc = x + k Q with k = floor(sum y_i / q_i) up to floating-point error; fix up after.
        mul_word(&self.q, quotient_estimate.floor() as u64, &mut term);
        if sub_assign(&mut acc, &term) {
            add_assign(&mut acc, &self.q);
        }
        while greater_or_equal(&acc, &self.q) {
            sub_assign(&mut acc, &self.q);
        }
        if greater_or_equal(&self.half_q, &acc) {
            to_f64(&acc)
        } else {
            let mut neg = self.q.clone();
            sub_assign(&mut neg, &acc);
            -to_f64(&neg)
        }
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
            let x = if k == 1 { x >> 25 } else { x };
            let residues: Vec<u64> = moduli.iter().map(|m| m.reduce_i64(x)).collect();
            prop_assert_eq!(CrtComposer::new(&moduli).compose(&residues), x as f64);
        }
    }
}
