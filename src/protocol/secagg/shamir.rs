//! Byte-wise t-of-n Shamir secret sharing over GF(2^8).
//!
//! Each byte of the secret is the constant term of its own random polynomial of degree t-1;
//! a share is the polynomial values at one non-zero x-coordinate (1..=255, so at most 255
//! holders). Any t shares determine the secret by Lagrange interpolation at 0; t-1 shares
//! are independent of it. The x-coordinates are public (an owner's position in the roster),
//! the values are secret and are only combined with constant-time field operations.

use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::gf256;
use crate::error::{Error, Result};

/// One holder's share: its x-coordinate and one field element per byte of the secret.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Share {
    pub x: u8,
    pub y: Vec<u8>,
}

/// Shares `secret` among the holders at `xs` (distinct, non-zero) so that any `threshold` of
/// them reconstruct it.
pub fn split<R: RngCore + CryptoRng>(
    secret: &[u8],
    threshold: usize,
    xs: &[u8],
    rng: &mut R,
) -> Result<Vec<Share>> {
    check_xs(xs)?;
    if threshold < 1 || threshold > xs.len() {
        return Err(Error::SecAgg(format!(
            "a {threshold}-of-{} sharing is impossible: need 1 <= threshold <= holders",
            xs.len()
        )));
    }
    // coeffs[j * (t-1) + i]: coefficient of x^(i+1) of the polynomial for byte j.
    let degree = threshold - 1;
    let mut coeffs = vec![0u8; secret.len() * degree];
    rng.fill_bytes(&mut coeffs);
    let shares = xs
        .iter()
        .map(|&x| {
            let y = secret
                .iter()
                .enumerate()
                .map(|(j, &s)| {
                    // Horner from the highest coefficient down to the secret.
                    let c = &coeffs[j * degree..(j + 1) * degree];
                    let high = c.iter().rev().fold(0u8, |acc, &ci| gf256::add(gf256::mul(acc, x), ci));
                    gf256::add(gf256::mul(high, x), s)
                })
                .collect();
            Share { x, y }
        })
        .collect();
    coeffs.zeroize();
    Ok(shares)
}

/// The secret whose polynomial passes through `shares` (all of the same length, distinct
/// non-zero x). With fewer shares than the threshold the result is a random-looking value,
/// not the secret: the caller must count shares.
pub fn reconstruct(shares: &[&Share]) -> Result<Vec<u8>> {
    let first = shares.first().ok_or_else(|| Error::SecAgg("no shares to reconstruct from".into()))?;
    let xs: Vec<u8> = shares.iter().map(|s| s.x).collect();
    check_xs(&xs)?;
    let len = first.y.len();
    if let Some(bad) = shares.iter().find(|s| s.y.len() != len) {
        return Err(Error::SecAgg(format!(
            "shares of different lengths ({len} and {} bytes, x = {})",
            bad.y.len(),
            bad.x
        )));
    }
    // Lagrange basis at 0: l_i = prod_{j != i} x_j / (x_j - x_i); subtraction is xor.
    let lagrange: Vec<u8> = xs
        .iter()
        .enumerate()
        .map(|(i, &xi)| {
            xs.iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .fold(1u8, |acc, (_, &xj)| gf256::mul(acc, gf256::div(xj, gf256::add(xj, xi))))
        })
        .collect();
    let mut secret = vec![0u8; len];
    for (share, &l) in shares.iter().zip(&lagrange) {
        for (s, &y) in secret.iter_mut().zip(&share.y) {
            *s = gf256::add(*s, gf256::mul(l, y));
        }
    }
    Ok(secret)
}

fn check_xs(xs: &[u8]) -> Result<()> {
    let mut seen = [false; 256];
    for &x in xs {
        if x == 0 {
            return Err(Error::SecAgg("a share at x = 0 would be the secret itself".into()));
        }
        if std::mem::replace(&mut seen[x as usize], true) {
            return Err(Error::SecAgg(format!("two shares at x = {x}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn any_t_subset_reconstructs_and_t_minus_one_does_not() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
        let xs: Vec<u8> = vec![3, 9, 17, 100, 200, 255];
        for t in 1..=xs.len() {
            let shares = split(&secret, t, &xs, &mut rng).unwrap();
            // Every subset of size t (6 holders: at most 64 subsets).
            for mask in 0u32..(1 << xs.len()) {
                let subset: Vec<&Share> =
                    shares.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, s)| s).collect();
                if subset.len() == t {
                    assert_eq!(reconstruct(&subset).unwrap(), secret, "t = {t}, subset {mask:b}");
                } else if subset.len() == t - 1 && t > 1 {
                    assert_ne!(reconstruct(&subset).unwrap(), secret, "t - 1 shares must not suffice");
                }
            }
        }
    }

    #[test]
    fn t_minus_one_shares_are_uniform() {
        // For t = 2, one share's byte is s + c*x with c uniform: over many sharings of a
        // fixed secret its byte values spread over the whole field.
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut counts = [0u32; 256];
        for _ in 0..25_600 {
            let s = split(&[0x42], 2, &[5, 6], &mut rng).unwrap();
            counts[s[0].y[0] as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (50..=160).contains(&c)), "{counts:?}");
    }

    #[test]
    fn bad_coordinates_and_thresholds_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        assert!(split(b"k", 2, &[0, 1], &mut rng).is_err());
        assert!(split(b"k", 2, &[4, 4], &mut rng).is_err());
        assert!(split(b"k", 3, &[1, 2], &mut rng).is_err());
        assert!(split(b"k", 0, &[1, 2], &mut rng).is_err());
        let s = split(b"ab", 2, &[1, 2], &mut rng).unwrap();
        assert!(reconstruct(&[&s[0], &s[0]]).is_err());
        assert!(reconstruct(&[]).is_err());
        let short = Share { x: 3, y: vec![1] };
        assert!(reconstruct(&[&s[0], &short]).is_err());
    }
}
