//! NTT-friendly primes: q = 1 (mod 2N), generated deterministically, and primitive roots.

use super::modulus::{Modulus, MAX_MODULUS_BITS};

/// Deterministic Miller-Rabin for 64-bit integers (these bases are exact below 2^64).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    for &p in &BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let d_shift = (n - 1).trailing_zeros();
    let d = (n - 1) >> d_shift;
    let mulmod = |a: u64, b: u64| ((a as u128 * b as u128) % n as u128) as u64;
    let powmod = |mut b: u64, mut e: u64| {
        let mut acc = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                acc = mulmod(acc, b);
            }
            b = mulmod(b, b);
            e >>= 1;
        }
        acc
    };
    'witness: for &a in &BASES {
        let mut x = powmod(a, d);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..d_shift {
            x = mulmod(x, x);
            if x == n - 1 {
                continue 'witness;
            }
        }
        return false;
    }
    true
}

/// Direction in which [`PrimeSearch`] walks away from 2^bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Only primes below 2^bits (so a prime never exceeds its nominal size).
    Below,
    /// Alternately just above and just below 2^bits, which keeps a product of primes, and so
    /// the CKKS scale after each rescale, close to a power of two.
    Alternating,
}

/// Finds `count` primes q = 1 (mod 2n) of about `bits` bits, none of which is in `exclude`.
/// Deterministic: the same request always gives the same primes.
pub fn ntt_primes(bits: u32, count: usize, n: usize, side: Side, exclude: &[u64]) -> Vec<u64> {
    assert!((2..=MAX_MODULUS_BITS).contains(&bits), "prime size out of range");
    let step = 2 * n as u64;
    let center = 1u64 << bits;
    let mut found = Vec::with_capacity(count);
    // Candidates 2^bits + 1 +/- k*2n are all = 1 (mod 2n).
    let mut up = center + 1;
    let mut down = center + 1 - step;
    let max = (1u64 << MAX_MODULUS_BITS) - 1;
    let mut take_up = side == Side::Alternating;
    while found.len() < count {
        let candidate = if take_up {
            let c = up;
            up += step;
            c
        } else {
            let c = down;
            down = down.checked_sub(step).expect("ran out of NTT-friendly primes");
            c
        };
        if side == Side::Alternating {
            take_up = !take_up;
        }
        if candidate <= max
            && is_prime(candidate)
            && !exclude.contains(&candidate)
            && !found.contains(&candidate)
        {
            found.push(candidate);
        }
    }
    found
}

/// The prime q = 1 (mod 2n) nearest to `target` that is not in `exclude` (ties go down).
/// Deterministic; None only if the search leaves the 2..2^MAX_MODULUS_BITS range.
pub fn nearest_ntt_prime(target: f64, n: usize, exclude: &[u64]) -> Option<u64> {
    let step = 2 * n as u64;
    let max = (1u64 << MAX_MODULUS_BITS) - 1;
    if !(target.is_finite() && target >= step as f64 && target <= max as f64) {
        return None;
    }
    // The candidate = 1 (mod 2n) just below the target, then outwards in both directions.
    let base = ((target as u64 - 1) / step) * step + 1;
    let ok = |c: u64| c <= max && is_prime(c) && !exclude.contains(&c);
    let (mut below, mut above) = (Some(base), base.checked_add(step));
    loop {
        let pick = match (below, above) {
            (None, None) => return None,
            (Some(b), Some(a)) => {
                if target - b as f64 <= a as f64 - target {
                    below = b.checked_sub(step).filter(|&c| c > 1);
                    b
                } else {
                    above = a.checked_add(step).filter(|&c| c <= max);
                    a
                }
            }
            (Some(b), None) => {
                below = b.checked_sub(step).filter(|&c| c > 1);
                b
            }
            (None, Some(a)) => {
                above = a.checked_add(step).filter(|&c| c <= max);
                a
            }
        };
        if ok(pick) {
            return Some(pick);
        }
    }
}

/// The smallest primitive 2n-th root of unity modulo the prime q (q = 1 mod 2n), so the choice
/// is deterministic. Returns None if q is not of that form.
pub fn primitive_root(q: u64, n: usize) -> Option<u64> {
    let m = Modulus::new(q);
    let order = 2 * n as u64;
    if !(q - 1).is_multiple_of(order) {
        return None;
    }
    let cofactor = (q - 1) / order;
    // g^cofactor has order dividing 2n; it has order exactly 2n iff its n-th power is -1.
    let mut best: Option<u64> = None;
    for x in 2..q.min(1 << 20) {
        let g = m.pow(x, cofactor);
        if m.pow(g, n as u64) == q - 1 {
            // Among the primitive roots g^(odd), take the smallest for determinism.
            let g2 = m.mul(g, g);
            let mut r = g;
            for _ in 0..n {
                best = Some(best.map_or(r, |b: u64| b.min(r)));
                r = m.mul(r, g2);
            }
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miller_rabin_agrees_with_trial_division() {
        let trial = |n: u64| n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d));
        for n in 0..20_000u64 {
            assert_eq!(is_prime(n), trial(n), "{n}");
        }
        assert!(is_prime((1 << 61) - 1));
        assert!(!is_prime(((1u64 << 31) - 1) * ((1 << 31) - 1)));
    }

    #[test]
    fn primes_are_ntt_friendly_and_distinct() {
        let n = 1 << 12;
        let qs = ntt_primes(40, 10, n, Side::Alternating, &[]);
        assert_eq!(qs.len(), 10);
        for (i, &q) in qs.iter().enumerate() {
            assert!(is_prime(q));
            assert_eq!(q % (2 * n as u64), 1);
            assert!((q as f64).log2() > 39.99 && (q as f64).log2() < 40.01);
            assert!(!qs[..i].contains(&q));
        }
        let ps = ntt_primes(60, 3, n, Side::Below, &qs);
        assert!(ps.iter().all(|&p| p < 1 << 60 && p % (2 * n as u64) == 1));
    }

    #[test]
    fn primitive_root_has_order_2n() {
        let n = 1 << 10;
        let q = ntt_primes(50, 1, n, Side::Below, &[])[0];
        let m = Modulus::new(q);
        let psi = primitive_root(q, n).unwrap();
        assert_eq!(m.pow(psi, 2 * n as u64), 1);
        assert_eq!(m.pow(psi, n as u64), q - 1);
    }

    #[test]
    fn nearest_prime_is_nearest() {
        let n = 1 << 10;
        let target = (1u64 << 30) as f64 * 1.0001;
        let q = nearest_ntt_prime(target, n, &[]).unwrap();
        assert!(is_prime(q) && q % (2 * n as u64) == 1);
        // No prime = 1 mod 2n lies strictly closer to the target.
        let gap = (q as f64 - target).abs();
        let mut c = q.min(target as u64) / (2 * n as u64) * (2 * n as u64) + 1;
        while (c as f64) < target + gap {
            if (c as f64 - target).abs() < gap {
                assert!(!is_prime(c), "{c} is closer than {q}");
            }
            c += 2 * n as u64;
        }
        assert_ne!(nearest_ntt_prime(target, n, &[q]).unwrap(), q);
        assert_eq!(nearest_ntt_prime(f64::NAN, n, &[]), None);
    }
}
