//! Linear combinations of residue rows with fixed weights: out_j = sum_i w_ji x_i (mod q).
//!
//! This is the inner loop of every encrypted linear layer (weights are scalars per input and
//! output), so it is written for throughput. It is a matrix product (outputs x inputs times
//! inputs x coefficients), blocked like one: coefficients go in chunks that stay in cache and
//! outputs in groups of [`OUTPUTS_PER_PASS`], so each input chunk is loaded once per group
//! instead of once per output. Reductions are deferred: below 2^31 a product fits in 62 bits
//! and running sums are folded below 2^63 + q with a branch-free `min` (after several terms
//! when q < 2^30), which vectorises; wider primes take small signed weights as they are
//! (|w| < 2^40: a product below 2^101, no reduction per term) and sum in 128 bits.

use super::modulus::Modulus;

/// Coefficients per chunk: a chunk of every input stays in L2.
pub const CHUNK: usize = 128;

/// Outputs computed together from one load of each input chunk.
pub const OUTPUTS_PER_PASS: usize = 4;

/// Signed weights below this magnitude take the wide path's multiply-only loop.
const SMALL_WEIGHT: i128 = 1 << 40;

/// `outs[j][k] = sum_i weights[j * inputs.len() + i] * inputs[i][k] mod q`: weights row-major
/// (outputs x inputs) as signed integers below 2^120 in magnitude, inputs reduced.
pub fn combine(outs: &mut [&mut [u64]], inputs: &[&[u64]], weights: &[i128], m: &Modulus) {
    let n_in = inputs.len();
    debug_assert_eq!(weights.len(), outs.len() * n_in);
    let n = outs.first().map_or(0, |o| o.len());
    if m.value() < 1 << 31 {
        let residues: Vec<u64> = weights.iter().map(|&w| m.reduce_i128(w)).collect();
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            for (group, w) in outs.chunks_mut(OUTPUTS_PER_PASS).zip(residues.chunks(OUTPUTS_PER_PASS * n_in))
            {
                combine_narrow(group, inputs, w, start, end, m);
            }
        }
    } else if weights.iter().all(|w| w.abs() < SMALL_WEIGHT) {
        let small: Vec<i64> = weights.iter().map(|&w| w as i64).collect();
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            for (out, w) in outs.iter_mut().zip(small.chunks(n_in)) {
                combine_wide_small(out, inputs, w, start, end, m);
            }
        }
    } else {
        let residues: Vec<u64> = weights.iter().map(|&w| m.reduce_i128(w)).collect();
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            for (out, w) in outs.iter_mut().zip(residues.chunks(n_in)) {
                combine_wide(out, inputs, w, start, end, m);
            }
        }
    }
}

vectorised! {
    /// Up to [`OUTPUTS_PER_PASS`] outputs over one chunk.
    fn combine_narrow(
        outs: &mut [&mut [u64]],
        inputs: &[&[u64]],
        weights: &[u64],
        start: usize,
        end: usize,
        m: &Modulus,
    ) {
        let q = m.value();
        let n_in = inputs.len();
        // Terms that fit between folds (see `lazy_cap`): products are at most (q - 1)^2.
        let cap = m.lazy_cap();
        let batch = (((1u64 << 63) - q) / ((q - 1) * (q - 1)).max(1)).max(1) as usize;
        let len = end - start;
        let mut acc = [[0u64; CHUNK]; OUTPUTS_PER_PASS];
        for first in (0..n_in).step_by(batch) {
            for i in first..(first + batch).min(n_in) {
                let x = &inputs[i][start..end];
                // Missing outputs of a short group multiply by zero.
                let w: [u64; OUTPUTS_PER_PASS] =
                    std::array::from_fn(|o| {
                        if o < outs.len() {
                            weights[o * n_in + i] as u32 as u64
                        } else {
                            0
                        }
                    });
                let [a0, a1, a2, a3] = &mut acc;
                for k in 0..len {
                    // Both factors below 2^31: 32x32-bit products, exact in 62 bits.
                    let v = x[k] as u32 as u64;
                    a0[k] += v * w[0];
                    a1[k] += v * w[1];
                    a2[k] += v * w[2];
                    a3[k] += v * w[3];
                }
            }
            for a in acc.iter_mut() {
                a[..len].iter_mut().for_each(|s| *s = (*s).min(s.wrapping_sub(cap)));
            }
        }
        for (out, a) in outs.iter_mut().zip(&acc) {
            out[start..end].iter_mut().zip(&a[..len]).for_each(|(d, &s)| *d = m.reduce(s));
        }
    }
}

/// One output over one chunk, wide prime, weights |w| < 2^40: x |w| < 2^101 needs no
/// reduction per term (a negative weight multiplies q - x).
fn combine_wide_small(
    out: &mut [u64],
    inputs: &[&[u64]],
    weights: &[i64],
    start: usize,
    end: usize,
    m: &Modulus,
) {
    let q = m.value();
    let len = end - start;
    let mut acc = [0u128; CHUNK];
    for (x, &w) in inputs.iter().zip(weights) {
        if w == 0 {
            continue;
        }
        let (negate, w) = (w < 0, w.unsigned_abs() as u128);
        for (a, &v) in acc[..len].iter_mut().zip(&x[start..end]) {
            let v = if negate { q - v } else { v };
            *a += v as u128 * w;
        }
    }
    for (d, &a) in out[start..end].iter_mut().zip(&acc[..len]) {
        *d = m.reduce_u128(a);
    }
}

/// One output over one chunk, wide prime, any weights (as residues).
fn combine_wide(out: &mut [u64], inputs: &[&[u64]], weights: &[u64], start: usize, end: usize, m: &Modulus) {
    let len = end - start;
    let mut acc = [0u128; CHUNK];
    for (x, &w) in inputs.iter().zip(weights) {
        if w == 0 {
            continue;
        }
        let ws = m.shoup(w);
        // Each term is below 2^61, so 2^60 of them fit in 128 bits.
        for (a, &v) in acc[..len].iter_mut().zip(&x[start..end]) {
            *a += m.mul_shoup(v, w, ws) as u128;
        }
    }
    for (d, &a) in out[start..end].iter_mut().zip(&acc[..len]) {
        *d = m.reduce_u128(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::{ntt_primes, Side};
    use proptest::prelude::*;

    fn reference(inputs: &[Vec<u64>], weights: &[i128], outputs: usize, m: &Modulus) -> Vec<Vec<u64>> {
        let n_in = inputs.len();
        (0..outputs)
            .map(|j| {
                (0..inputs[0].len())
                    .map(|k| {
                        inputs.iter().enumerate().fold(0u64, |acc, (i, x)| {
                            m.add(acc, m.mul(x[k], m.reduce_i128(weights[j * n_in + i])))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    fn run(inputs: &[Vec<u64>], weights: &[i128], outputs: usize, m: &Modulus) -> Vec<Vec<u64>> {
        let refs: Vec<&[u64]> = inputs.iter().map(|v| v.as_slice()).collect();
        let mut outs = vec![vec![0u64; inputs[0].len()]; outputs];
        let mut targets: Vec<&mut [u64]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        combine(&mut targets, &refs, weights, m);
        outs
    }

    proptest! {
        #[test]
        fn matches_reference(bits in prop::sample::select(vec![20u32, 30, 31, 40, 60]),
                             count in 1usize..40, outputs in 1usize..7, len in 1usize..300,
                             large in any::<bool>(), seed in any::<u64>()) {
            let q = ntt_primes(bits, 1, 16, Side::Below, &[])[0];
            let m = Modulus::new(q);
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let inputs: Vec<Vec<u64>> = (0..count).map(|_| (0..len).map(|_| next() % q).collect()).collect();
            // Small signed weights (a layer's) or huge ones; some zero.
            let bound: i128 = if large { 1 << 100 } else { 1 << 31 };
            let weights: Vec<i128> = (0..count * outputs)
                .map(|i| if i % 7 == 3 { 0 } else { ((next() >> 1) as i128 * (next() >> 2) as i128) % bound })
                .collect();
            prop_assert_eq!(run(&inputs, &weights, outputs, &m), reference(&inputs, &weights, outputs, &m));
        }
    }

    #[test]
    fn many_maximal_terms_do_not_overflow() {
        for bits in [30u32, 31, 60] {
            let q = ntt_primes(bits, 1, 16, Side::Below, &[])[0];
            let m = Modulus::new(q);
            let inputs = vec![vec![q - 1; 8]; 3000];
            for w in [-1i128, q as i128 - 1, -(1 << 39) + 1] {
                let weights = vec![w; 3000 * 5];
                assert_eq!(
                    run(&inputs, &weights, 5, &m),
                    reference(&inputs, &weights, 5, &m),
                    "{bits} bits, {w}"
                );
            }
        }
    }
}
