//! Samplers for secrets, errors and uniform ring elements.
//!
//! Secrets and errors come from ChaCha20 seeded by the operating system; public uniform
//! polynomials can instead be expanded from a 32-byte seed with SHAKE256, so that whoever holds
//! the seed regenerates them (seeded ciphertexts and keys travel at about half size).

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha3::digest::{ExtendableOutput, Update, XofReader};
use sha3::Shake256;

use super::modulus::Modulus;
use super::poly::RnsPoly;

/// Standard deviation of the error distribution (HE Standard).
pub const ERROR_STD_DEV: f64 = 3.2;
/// Centred binomial parameter: variance k/2 = 10.5, standard deviation 3.24 ~ 3.2.
const CBD_K: u32 = 21;

/// A source of random bytes: the CSPRNG for secrets, a SHAKE256 stream for public seeds.
pub trait ByteSource {
    fn fill(&mut self, buf: &mut [u8]);

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// A ChaCha20 generator freshly seeded from the operating system.
pub fn os_rng() -> ChaCha20Rng {
    ChaCha20Rng::from_os_rng()
}

/// 32 fresh bytes from the operating system's CSPRNG, for public seeds.
pub fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    os_rng().fill_bytes(&mut seed);
    seed
}

impl ByteSource for ChaCha20Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        self.fill_bytes(buf);
    }

    fn next_u64(&mut self) -> u64 {
        RngCore::next_u64(self)
    }
}

/// A SHAKE256 stream keyed by a seed and a domain tag.
pub struct SeedStream(<Shake256 as ExtendableOutput>::Reader);

impl SeedStream {
    pub fn new(seed: &[u8; 32], tag: u64) -> Self {
        let mut h = Shake256::default();
        h.update(b"blindfed/uniform/v1");
        h.update(seed);
        h.update(&tag.to_le_bytes());
        SeedStream(h.finalize_xof())
    }
}

impl ByteSource for SeedStream {
    fn fill(&mut self, buf: &mut [u8]) {
        self.0.read(buf);
    }
}

/// Uniform ternary coefficients in {-1, 0, 1}.
pub fn ternary(rng: &mut impl ByteSource, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    let mut buf = [0u8; 256];
    while out.len() < n {
        rng.fill(&mut buf);
        // 255 = 3 * 85: bytes below it are uniform modulo 3.
        for &b in buf.iter().filter(|&&b| b < 255) {
            if out.len() == n {
                break;
            }
            out.push((b % 3) as i64 - 1);
        }
    }
    out
}

/// Ternary coefficients with exactly `h` non-zero entries at uniform positions.
pub fn ternary_hamming(rng: &mut impl ByteSource, n: usize, h: usize) -> Vec<i64> {
    assert!(h <= n);
    let mut positions: Vec<usize> = (0..n).collect();
    let mut out = vec![0i64; n];
    // Partial Fisher-Yates: the first h positions become the support.
    for i in 0..h {
        let j = i + uniform_below(rng, (n - i) as u64) as usize;
        positions.swap(i, j);
        out[positions[i]] = if rng.next_u64() & 1 == 1 { 1 } else { -1 };
    }
    out
}

/// Uniform integer in [0, bound) by rejection.
pub fn uniform_below(rng: &mut impl ByteSource, bound: u64) -> u64 {
    let mask = u64::MAX >> (bound.max(2) - 1).leading_zeros();
    loop {
        let x = rng.next_u64() & mask;
        if x < bound {
            return x;
        }
    }
}

/// Error coefficients from the centred binomial distribution (variance 10.5, constant time).
pub fn error(rng: &mut impl ByteSource, n: usize) -> Vec<i64> {
    let mask = (1u64 << CBD_K) - 1;
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            (r & mask).count_ones() as i64 - ((r >> CBD_K) & mask).count_ones() as i64
        })
        .collect()
}

/// A uniformly random polynomial modulo each prime (the values are uniform in any domain, so
/// they are taken to be the NTT form directly).
pub fn uniform_poly(rng: &mut impl ByteSource, moduli: &[Modulus], n: usize) -> RnsPoly {
    let mut p = RnsPoly::zero(n, moduli.len());
    let mut buf = vec![0u8; 8 * n];
    for (row, m) in p.rows_mut().zip(moduli) {
        let q = m.value();
        let mask = u64::MAX >> q.leading_zeros();
        let mut filled = 0;
        while filled < n {
            let want = n - filled;
            rng.fill(&mut buf[..8 * want]);
            for chunk in buf[..8 * want].chunks_exact(8) {
                let x = u64::from_le_bytes(chunk.try_into().unwrap()) & mask;
                if x < q {
                    row[filled] = x;
                    filled += 1;
                }
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_has_the_promised_spread() {
        let e = error(&mut os_rng(), 1 << 16);
        let mean = e.iter().sum::<i64>() as f64 / e.len() as f64;
        let var = e.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / e.len() as f64;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!((var.sqrt() - ERROR_STD_DEV).abs() < 0.15, "std {}", var.sqrt());
        assert!(e.iter().all(|x| x.abs() <= CBD_K as i64));
    }

    #[test]
    fn ternary_is_balanced_and_hamming_exact() {
        let t = ternary(&mut os_rng(), 30_000);
        for v in [-1, 0, 1] {
            let c = t.iter().filter(|&&x| x == v).count();
            assert!((9_000..11_000).contains(&c), "{v}: {c}");
        }
        let h = ternary_hamming(&mut os_rng(), 4096, 192);
        assert_eq!(h.iter().filter(|&&x| x != 0).count(), 192);
    }

    #[test]
    fn seed_streams_are_deterministic_and_domain_separated() {
        let m = [Modulus::new(
            crate::math::primes::ntt_primes(40, 1, 16, crate::math::primes::Side::Below, &[])[0],
        )];
        let seed = [7u8; 32];
        let a = uniform_poly(&mut SeedStream::new(&seed, 1), &m, 64);
        let b = uniform_poly(&mut SeedStream::new(&seed, 1), &m, 64);
        let c = uniform_poly(&mut SeedStream::new(&seed, 2), &m, 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.as_flat().iter().all(|&x| x < m[0].value()));
    }
}
