//! Linear combinations of residue rows with fixed weights: out = sum_i w_i x_i (mod q).
//!
//! This is the inner loop of every encrypted linear layer (weights are scalars per input and
//! output), so it is written for throughput: reductions are deferred. For primes below 2^31 a
//! product fits in 62 bits and the running sum is kept below 2^63 by subtracting a fixed
//! multiple of q with a branch-free `min`, which vectorises; wider primes accumulate reduced
//! products in 128 bits.

use super::modulus::Modulus;

/// Rows at most this long are accumulated in one go; a block of inputs then stays in cache.
pub const CHUNK: usize = 256;

/// `out[k] = sum_i weights[i] * inputs[i][k] mod q`, with `weights` already reduced mod q.
pub fn combine(out: &mut [u64], inputs: &[&[u64]], weights: &[u64], m: &Modulus) {
    debug_assert_eq!(inputs.len(), weights.len());
    for (start, dst) in (0..out.len()).step_by(CHUNK).zip(out.chunks_mut(CHUNK)) {
        let end = start + dst.len();
        if m.value() < 1 << 31 {
            combine_narrow(dst, inputs, weights, start, end, m);
        } else {
            combine_wide(dst, inputs, weights, start, end, m);
        }
    }
}

fn combine_narrow(
    dst: &mut [u64],
    inputs: &[&[u64]],
    weights: &[u64],
    start: usize,
    end: usize,
    m: &Modulus,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { combine_narrow_avx512(dst, inputs, weights, start, end, m) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { combine_narrow_avx2(dst, inputs, weights, start, end, m) };
        }
    }
    combine_narrow_generic(dst, inputs, weights, start, end, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn combine_narrow_avx512(
    dst: &mut [u64],
    inputs: &[&[u64]],
    weights: &[u64],
    start: usize,
    end: usize,
    m: &Modulus,
) {
    combine_narrow_generic(dst, inputs, weights, start, end, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn combine_narrow_avx2(
    dst: &mut [u64],
    inputs: &[&[u64]],
    weights: &[u64],
    start: usize,
    end: usize,
    m: &Modulus,
) {
    combine_narrow_generic(dst, inputs, weights, start, end, m)
}

/// Inlined into the feature-specific copies above, where the compiler vectorises it.
#[inline(always)]
fn combine_narrow_generic(
    dst: &mut [u64],
    inputs: &[&[u64]],
    weights: &[u64],
    start: usize,
    end: usize,
    m: &Modulus,
) {
    // The largest multiple of q not above 2^63: subtracting it keeps the sum below 2^63.
    let cap = ((1u64 << 63) / m.value()) * m.value();
    let mut acc = [0u64; CHUNK];
    let acc = &mut acc[..end - start];
    for (x, &w) in inputs.iter().zip(weights) {
        if w == 0 {
            continue;
        }
        let w = w as u32 as u64;
        for (a, &v) in acc.iter_mut().zip(&x[start..end]) {
            // Both factors are below 2^31: a 32x32-bit product, exact in 62 bits.
            let s = *a + (v as u32 as u64) * w;
            *a = s.min(s.wrapping_sub(cap));
        }
    }
    for (d, &a) in dst.iter_mut().zip(acc.iter()) {
        *d = m.reduce(a);
    }
}

fn combine_wide(dst: &mut [u64], inputs: &[&[u64]], weights: &[u64], start: usize, end: usize, m: &Modulus) {
    let mut acc = [0u128; CHUNK];
    let acc = &mut acc[..end - start];
    for (x, &w) in inputs.iter().zip(weights) {
        if w == 0 {
            continue;
        }
        let ws = m.shoup(w);
        // Each term is below 2^61, so 2^60 of them fit in 128 bits.
        for (a, &v) in acc.iter_mut().zip(&x[start..end]) {
            *a += m.mul_shoup(v, w, ws) as u128;
        }
    }
    for (d, &a) in dst.iter_mut().zip(acc.iter()) {
        *d = m.reduce_u128(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::{ntt_primes, Side};
    use proptest::prelude::*;

    fn reference(inputs: &[Vec<u64>], weights: &[u64], m: &Modulus) -> Vec<u64> {
        (0..inputs[0].len())
            .map(|k| inputs.iter().zip(weights).fold(0u64, |acc, (x, &w)| m.add(acc, m.mul(x[k], w))))
            .collect()
    }

    proptest! {
        #[test]
        fn matches_reference(bits in prop::sample::select(vec![20u32, 30, 31, 40, 60]),
                             count in 1usize..40, len in 1usize..600, seed in any::<u64>()) {
            let q = ntt_primes(bits, 1, 16, Side::Below, &[])[0];
            let m = Modulus::new(q);
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state % q };
            let inputs: Vec<Vec<u64>> = (0..count).map(|_| (0..len).map(|_| next()).collect()).collect();
            let weights: Vec<u64> = (0..count).map(|i| if i % 7 == 3 { 0 } else { next() }).collect();
            let refs: Vec<&[u64]> = inputs.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![0u64; len];
            combine(&mut out, &refs, &weights, &m);
            prop_assert_eq!(out, reference(&inputs, &weights, &m));
        }
    }

    #[test]
    fn many_maximal_terms_do_not_overflow() {
        let q = ntt_primes(31, 1, 16, Side::Below, &[])[0];
        let m = Modulus::new(q);
        let inputs = vec![vec![q - 1; 8]; 3000];
        let refs: Vec<&[u64]> = inputs.iter().map(|v| v.as_slice()).collect();
        let weights = vec![q - 1; 3000];
        let mut out = vec![0u64; 8];
        combine(&mut out, &refs, &weights, &m);
        assert_eq!(out, reference(&inputs, &weights, &m));
    }
}
