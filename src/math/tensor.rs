//! Sums of tensor products on one prime's rows: for every output o,
//! `(d0, d1, d2) += sum over o's pairs of (x0 y0, x0 y1 + x1 y0, x1 y1)` mod q.
//!
//! This is attention's inner loop (scores and A V are sums of ciphertext products), so it is
//! written for memory traffic first: coefficients are processed in chunks that stay in cache,
//! with every output inside a chunk, so an operand shared by several outputs (a rotated key
//! feature by all diagonals of a giant step, say) is read from memory once per chunk; each
//! accumulator is read and written once per call, however many pairs it takes. Reductions
//! are deferred as in [`super::lincomb`]: below 2^31 a product fits in 62 bits and the running
//! sum stays below 2^63 with a branch-free `min`, which vectorises; wider primes sum reduced
//! products in 128 bits.

use super::modulus::Modulus;

/// Coefficients per chunk: a chunk of every operand of a call should fit in L2.
pub const CHUNK: usize = 128;

/// One factor of a product: (c0, c1) rows of a ciphertext on this prime.
pub type Operand<'a> = [&'a [u64]; 2];

/// `out[o][p] += sum over pairs[o] of the p-th tensor component`, mod q. `out` rows and
/// operand rows are reduced and of equal length.
pub fn accumulate(out: &mut [[&mut [u64]; 3]], pairs: &[Vec<(Operand<'_>, Operand<'_>)>], m: &Modulus) {
    debug_assert_eq!(out.len(), pairs.len());
    let n = out.first().map_or(0, |o| o[0].len());
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        for (dst, terms) in out.iter_mut().zip(pairs) {
            if m.value() < 1 << 31 {
                accumulate_narrow(dst, terms, start, end, m);
            } else {
                accumulate_wide(dst, terms, start, end, m);
            }
        }
    }
}

vectorised! {
    fn accumulate_narrow(
        dst: &mut [&mut [u64]; 3],
        terms: &[(Operand<'_>, Operand<'_>)],
        start: usize,
        end: usize,
        m: &Modulus,
    ) {
        let q = m.value();
        let cap = m.lazy_cap();
        let fold = |s: u64| s.min(s.wrapping_sub(cap));
        // Terms whose products can join a folded sum (see `lazy_cap`) before the next fold
        // without overflowing: the middle component takes two products of at most (q - 1)^2
        // per term.
        let batch = ((1u64 << 63) - q) / (2 * (q - 1) * (q - 1)).max(1);
        let len = end - start;
        let mut s0 = [0u64; CHUNK];
        let mut s1 = [0u64; CHUNK];
        let mut s2 = [0u64; CHUNK];
        let (s0, s1, s2) = (&mut s0[..len], &mut s1[..len], &mut s2[..len]);
        s0.copy_from_slice(&dst[0][start..end]);
        s1.copy_from_slice(&dst[1][start..end]);
        s2.copy_from_slice(&dst[2][start..end]);
        // Residues below 2^31: 32x32-bit products, exact in 62 bits.
        let narrow = |v: u64| v as u32 as u64;
        if batch >= 2 {
            // Below 2^30 (the common case): several terms per fold, a third of the operations.
            for group in terms.chunks(batch as usize) {
                for ([a0, a1], [b0, b1]) in group {
                    let (a0, a1) = (&a0[start..end], &a1[start..end]);
                    let (b0, b1) = (&b0[start..end], &b1[start..end]);
                    for k in 0..len {
                        let (x0, x1, y0, y1) = (narrow(a0[k]), narrow(a1[k]), narrow(b0[k]), narrow(b1[k]));
                        s0[k] += x0 * y0;
                        s1[k] += x0 * y1 + x1 * y0;
                        s2[k] += x1 * y1;
                    }
                }
                for k in 0..len {
                    s0[k] = fold(s0[k]);
                    s1[k] = fold(s1[k]);
                    s2[k] = fold(s2[k]);
                }
            }
        } else {
            // Up to 2^31: fold after every product.
            for ([a0, a1], [b0, b1]) in terms {
                let (a0, a1, b0, b1) = (&a0[start..end], &a1[start..end], &b0[start..end], &b1[start..end]);
                for k in 0..len {
                    let (x0, x1, y0, y1) = (narrow(a0[k]), narrow(a1[k]), narrow(b0[k]), narrow(b1[k]));
                    s0[k] = fold(s0[k] + x0 * y0);
                    s1[k] = fold(fold(s1[k] + x0 * y1) + x1 * y0);
                    s2[k] = fold(s2[k] + x1 * y1);
                }
            }
        }
        for (row, sums) in dst.iter_mut().zip([&*s0, &*s1, &*s2]) {
            for (d, &s) in row[start..end].iter_mut().zip(sums) {
                *d = m.reduce(s);
            }
        }
    }
}

fn accumulate_wide(
    dst: &mut [&mut [u64]; 3],
    terms: &[(Operand<'_>, Operand<'_>)],
    start: usize,
    end: usize,
    m: &Modulus,
) {
    // Products below 2^122, two per term in the middle component: eight terms and a reduced
    // start stay below 2^127; reduce after every batch.
    const BATCH: usize = 8;
    let len = end - start;
    let mut s = [[0u128; CHUNK]; 3];
    for (p, sums) in s.iter_mut().enumerate() {
        sums[..len].iter_mut().zip(&dst[p][start..end]).for_each(|(s, &d)| *s = d as u128);
    }
    for batch in terms.chunks(BATCH) {
        for ([a0, a1], [b0, b1]) in batch {
            let (a0, a1, b0, b1) = (&a0[start..end], &a1[start..end], &b0[start..end], &b1[start..end]);
            let [s0, s1, s2] = &mut s;
            for (k, ((s0, s1), s2)) in
                s0[..len].iter_mut().zip(&mut s1[..len]).zip(&mut s2[..len]).enumerate()
            {
                let (x0, x1, y0, y1) = (a0[k] as u128, a1[k] as u128, b0[k] as u128, b1[k] as u128);
                *s0 += x0 * y0;
                *s1 += x0 * y1 + x1 * y0;
                *s2 += x1 * y1;
            }
        }
        for sums in s.iter_mut() {
            sums[..len].iter_mut().for_each(|v| *v = m.reduce_u128(*v) as u128);
        }
    }
    for (row, sums) in dst.iter_mut().zip(&s) {
        row[start..end].iter_mut().zip(&sums[..len]).for_each(|(d, &v)| *d = v as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::{ntt_primes, Side};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_reference(bits in prop::sample::select(vec![30u32, 31, 40, 60]),
                             outputs in 1usize..4, pairs in 0usize..40, len in 1usize..300,
                             seed in any::<u64>()) {
            let q = ntt_primes(bits, 1, 16, Side::Below, &[])[0];
            let m = Modulus::new(q);
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state % q };
            let mut row = |_| (0..len).map(|_| next()).collect::<Vec<u64>>();
            // Operands shared between outputs, as attention shares them.
            let operands: Vec<[Vec<u64>; 2]> = (0..6).map(|i| [row(i), row(i)]).collect();
            let mut sums: Vec<[Vec<u64>; 3]> = (0..outputs).map(|i| [row(i), row(i), row(i)]).collect();
            let picks: Vec<Vec<(usize, usize)>> = (0..outputs)
                .map(|o| (0..pairs).map(|p| ((o + p) % 6, (o * 7 + p * 3) % 6)).collect())
                .collect();
            let mut want = sums.clone();
            for (w, pick) in want.iter_mut().zip(&picks) {
                for &(a, b) in pick {
                    let ([x0, x1], [y0, y1]) = (&operands[a], &operands[b]);
                    for k in 0..len {
                        w[0][k] = m.add(w[0][k], m.mul(x0[k], y0[k]));
                        w[1][k] = m.add(w[1][k], m.add(m.mul(x0[k], y1[k]), m.mul(x1[k], y0[k])));
                        w[2][k] = m.add(w[2][k], m.mul(x1[k], y1[k]));
                    }
                }
            }
            let terms: Vec<Vec<(Operand<'_>, Operand<'_>)>> = picks
                .iter()
                .map(|pick| pick.iter().map(|&(a, b)| {
                    let (x, y) = (&operands[a], &operands[b]);
                    ([&x[0][..], &x[1][..]], [&y[0][..], &y[1][..]])
                }).collect())
                .collect();
            let mut out: Vec<[&mut [u64]; 3]> = sums
                .iter_mut()
                .map(|[a, b, c]| [&mut a[..], &mut b[..], &mut c[..]])
                .collect();
            accumulate(&mut out, &terms, &m);
            prop_assert_eq!(sums, want);
        }
    }

    #[test]
    fn many_maximal_terms_do_not_overflow() {
        for bits in [30u32, 31, 60] {
            let q = ntt_primes(bits, 1, 16, Side::Below, &[])[0];
            let m = Modulus::new(q);
            let x = [q - 1; 4];
            let mut sums = [vec![q - 1; 4], vec![q - 1; 4], vec![q - 1; 4]];
            let terms = vec![vec![([&x[..], &x[..]], [&x[..], &x[..]]); 1000]];
            let [a, b, c] = &mut sums;
            accumulate(&mut [[&mut a[..], &mut b[..], &mut c[..]]], &terms, &m);
            // (q-1)^2 = 1 mod q: each product adds 1 (2 in the middle component) to q - 1.
            assert_eq!(sums, [vec![999; 4], vec![1999 % q; 4], vec![999; 4]]);
        }
    }
}
