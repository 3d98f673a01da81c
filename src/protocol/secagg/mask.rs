//! Masks: a 32-byte seed expanded by ChaCha20 into a vector over Z_{2^k}.
//!
//! An owner adds its self mask PRG(b) and, for each neighbour, +PRG(s_uv) or -PRG(s_uv) (the
//! pair agrees on the sign by id order), so pairwise masks cancel in the sum; the server
//! removes the rest after reconstructing the seeds. Element i is the i-th 64-bit output of
//! the stream reduced modulo 2^k, so any chunk of the vector can be produced on its own
//! (the stream is seekable) and chunks are filled in parallel.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use zeroize::Zeroizing;

use super::fixed_point::ring_mask;

/// Whether a mask is added to or subtracted from the vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    Plus,
    Minus,
}

/// Elements per parallel chunk (128 KiB of u64).
const CHUNK: usize = 1 << 14;

/// `acc[i] = acc[i] ± PRG(seed)[i] mod 2^k` for every (seed, sign).
pub fn apply(acc: &mut [u64], seeds: &[(Zeroizing<[u8; 32]>, Sign)], ring_bits: u32) {
    let mask = ring_mask(ring_bits);
    crate::parallel::install(|| {
        acc.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
            for (seed, sign) in seeds {
                let mut rng = ChaCha20Rng::from_seed(**seed);
                // Two 32-bit words per element.
                rng.set_word_pos(2 * (c * CHUNK) as u128);
                for a in chunk.iter_mut() {
                    let r = rng.next_u64();
                    *a = match sign {
                        Sign::Plus => a.wrapping_add(r),
                        Sign::Minus => a.wrapping_sub(r),
                    } & mask;
                }
            }
        })
    });
}

/// PRG(seed) as a vector of `len` elements of Z_{2^k}.
pub fn expand(seed: &[u8; 32], len: usize, ring_bits: u32) -> Vec<u64> {
    let mut out = vec![0u64; len];
    apply(&mut out, &[(Zeroizing::new(*seed), Sign::Plus)], ring_bits);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_continue_one_stream_and_opposite_signs_cancel() {
        let seed = [9u8; 32];
        let len = 3 * CHUNK + 17;
        let v = expand(&seed, len, 64);
        let mut rng = ChaCha20Rng::from_seed(seed);
        let serial: Vec<u64> = (0..len).map(|_| rng.next_u64()).collect();
        assert_eq!(v, serial);
        let short = expand(&seed, len, 20);
        assert!(short.iter().zip(&v).all(|(s, w)| *s == w & ((1 << 20) - 1)));
        let mut acc = vec![5u64; len];
        let s = || Zeroizing::new(seed);
        apply(&mut acc, &[(s(), Sign::Plus), (Zeroizing::new([1; 32]), Sign::Plus), (s(), Sign::Minus)], 40);
        let other = expand(&[1; 32], len, 40);
        assert!(acc.iter().zip(&other).all(|(a, o)| *a == (o + 5) & ((1 << 40) - 1)));
    }
}
