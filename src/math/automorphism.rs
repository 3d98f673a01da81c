//! Galois automorphisms X -> X^g of Z[X]/(X^N + 1), g odd.

use super::ntt::bit_reverse;

/// Index map for applying X -> X^g to a polynomial in NTT form: `out[i] = in[perm[i]]`.
///
/// NTT index i holds the evaluation at psi^(2 brv(i) + 1); the automorphism moves the
/// evaluation at psi^(k g) to psi^k.
pub fn ntt_permutation(n: usize, galois: u64) -> Vec<usize> {
    let log_n = n.trailing_zeros();
    let two_n = 2 * n as u64;
    (0..n)
        .map(|i| {
            let k = 2 * bit_reverse(i, log_n) as u64 + 1;
            let kg = (k * galois) % two_n;
            bit_reverse(((kg - 1) / 2) as usize, log_n)
        })
        .collect()
}

/// Applies X -> X^g to coefficients (natural order) modulo q.
pub fn apply_coefficients(coeffs: &[u64], galois: u64, q: u64) -> Vec<u64> {
    let n = coeffs.len();
    let two_n = 2 * n as u64;
    let mut out = vec![0u64; n];
    for (j, &c) in coeffs.iter().enumerate() {
        let e = (j as u64 * galois) % two_n;
        if e < n as u64 {
            out[e as usize] = c;
        } else {
            out[(e - n as u64) as usize] = if c == 0 { 0 } else { q - c };
        }
    }
    out
}

/// Galois element for a left rotation of the N/2 slots by `step` (negative: right).
pub fn rotation_element(n: usize, step: i64) -> u64 {
    let slots = (n / 2) as i64;
    let k = step.rem_euclid(slots) as u64;
    let two_n = 2 * n as u64;
    let mut g = 1u64;
    let mut base = 5u64;
    let mut e = k;
    while e > 0 {
        if e & 1 == 1 {
            g = g * base % two_n;
        }
        base = base * base % two_n;
        e >>= 1;
    }
    g
}

/// Galois element of complex conjugation of the slots.
pub fn conjugation_element(n: usize) -> u64 {
    2 * n as u64 - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::modulus::Modulus;
    use crate::math::ntt::NttTable;
    use crate::math::primes::{ntt_primes, Side};

    #[test]
    fn ntt_permutation_matches_coefficient_automorphism() {
        for log_n in [3u32, 6, 10] {
            let n = 1usize << log_n;
            let q = ntt_primes(40, 1, n, Side::Below, &[])[0];
            let table = NttTable::new(Modulus::new(q), n).unwrap();
            let a: Vec<u64> = (0..n as u64).map(|i| (i * 7919 + 11) % q).collect();
            for g in [
                rotation_element(n, 1),
                rotation_element(n, -3),
                conjugation_element(n),
                5u64.pow(3) % (2 * n as u64),
            ] {
                let mut expected = apply_coefficients(&a, g, q);
                table.forward(&mut expected);
                let mut fa = a.clone();
                table.forward(&mut fa);
                let perm = ntt_permutation(n, g);
                let got: Vec<u64> = perm.iter().map(|&j| fa[j]).collect();
                assert_eq!(got, expected, "n={n} g={g}");
            }
        }
    }
}
