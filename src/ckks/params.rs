//! CKKS parameter sets: ring degree, the modulus chain and the key-switching primes.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::math::modulus::MAX_MODULUS_BITS;
use crate::math::primes::{is_prime, nearest_ntt_prime, ntt_primes, Side};

use super::security::max_log_qp_128;

/// Distribution of the secret key's coefficients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretDistribution {
    /// Uniform over {-1, 0, 1} (the HE Standard's assumption).
    Ternary,
    /// Exactly `h` non-zero coefficients in {-1, 1}: less noise, but a sparse secret is outside
    /// the HE Standard's tables, so h < N/2 is refused unless the set is marked insecure.
    HammingWeight(usize),
}

/// What a caller asks for; [`Parameters::new`] turns it into concrete primes.
#[derive(Clone, Debug)]
pub struct ParameterSpec {
    /// log2 of the ring degree N.
    pub log_n: u32,
    /// Number of rescalings available: the chain has levels + 1 ciphertext primes.
    pub levels: usize,
    /// Bits of the default scale and of each rescaling prime.
    pub scale_bits: u32,
    /// Bits of the first (lowest) prime, which holds the final message.
    pub first_bits: u32,
    /// Bits of each key-switching (special) prime.
    pub special_bits: u32,
    /// Number of special primes alpha (their product P bounds the key-switching digits, see
    /// [`Parameters::digits`]). None: the largest count that fits the security bound, at most
    /// levels + 1.
    pub special_count: Option<usize>,
    pub secret: SecretDistribution,
    /// Allows sets over the 128-bit bound. For tests only.
    pub insecure: bool,
}

impl ParameterSpec {
    pub fn new(log_n: u32, levels: usize, scale_bits: u32) -> Self {
        ParameterSpec {
            log_n,
            levels,
            scale_bits,
            first_bits: 60,
            special_bits: 60,
            special_count: None,
            secret: SecretDistribution::Ternary,
            insecure: false,
        }
    }
}

/// A validated parameter set with its primes.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters {
    pub log_n: u32,
    pub scale_bits: u32,
    /// Ciphertext primes q_0 (first) .. q_L.
    pub q: Vec<u64>,
    /// Special primes p_0 .. p_{alpha-1}.
    pub p: Vec<u64>,
    pub secret: SecretDistribution,
    pub insecure: bool,
}

/// q_1..q_L chosen from the top down so that every level's canonical scale stays within a
/// prime spacing (2N / 2^scale_bits, relative) of 2^scale_bits. The canonical scale of level
/// l - 1 is s_l^2 / q_l: with fixed primes near 2^bits its deviation would double at every
/// level (and collapse after twenty or so); picking q_l nearest to s_l^2 / 2^bits resets it.
fn scale_primes(bits: u32, levels: usize, n: usize, exclude: &[u64]) -> Result<Vec<u64>> {
    let target = 2f64.powi(bits as i32);
    let mut used = exclude.to_vec();
    let mut chain = vec![0u64; levels];
    let mut scale = target;
    for l in (0..levels).rev() {
        let q = nearest_ntt_prime(scale * scale / target, n, &used).ok_or_else(|| {
            Error::InvalidParameters(format!("no {bits}-bit prime = 1 mod 2N left for level {}", l + 1))
        })?;
        used.push(q);
        chain[l] = q;
        scale = scale * scale / q as f64;
    }
    Ok(chain)
}

/// How far (in bits) a key-switching digit may exceed the special modulus: the digit's share of
/// the key-switching noise at most doubles, and a pair of primes just above 2^30 still shares
/// a digit under a 60-bit special prime.
pub const DIGIT_SLACK_BITS: f64 = 1.0;

/// Most primes (ciphertext and special together) a parameter set may hold. The 128-bit bound at
/// N = 2^16 (1,772 bits) fits at most 59 primes of 30 bits; and since a set's context (its NTT
/// tables) grows with N times its primes, a decoded set is held to this before anything is
/// built, insecure test sets included (a 4 KB blob could otherwise name 510 primes at 2^17).
pub const MAX_PRIMES: usize = 64;

fn log2_sum(primes: &[u64]) -> f64 {
    primes.iter().map(|&q| (q as f64).log2()).sum()
}

impl Parameters {
    pub fn new(spec: &ParameterSpec) -> Result<Self> {
        if !(3..=17).contains(&spec.log_n) {
            return Err(Error::InvalidParameters(format!(
                "log_n must be between 3 and 17, got {}",
                spec.log_n
            )));
        }
        for (name, bits) in [
            ("scale_bits", spec.scale_bits),
            ("first_bits", spec.first_bits),
            ("special_bits", spec.special_bits),
        ] {
            if !(20..=MAX_MODULUS_BITS).contains(&bits) {
                return Err(Error::InvalidParameters(format!(
                    "{name} must be between 20 and {MAX_MODULUS_BITS}, got {bits}"
                )));
            }
        }
        if spec.first_bits < spec.scale_bits {
            return Err(Error::InvalidParameters(format!(
                "first_bits ({}) must be at least scale_bits ({}) to hold a message",
                spec.first_bits, spec.scale_bits
            )));
        }
        if spec.levels > 60 {
            return Err(Error::InvalidParameters(format!("at most 60 levels, got {}", spec.levels)));
        }
        let n = 1usize << spec.log_n;
        let first = ntt_primes(spec.first_bits, 1, n, Side::Below, &[]);
        let mut q = first.clone();
        q.extend(scale_primes(spec.scale_bits, spec.levels, n, &first)?);
        let log_q = log2_sum(&q);
        let alpha = match spec.special_count {
            Some(a) if a == 0 || a > q.len() => {
                return Err(Error::InvalidParameters(format!(
                    "special_count must be between 1 and levels + 1 = {}, got {a}",
                    q.len()
                )))
            }
            Some(a) => a,
            None => {
                let budget = max_log_qp_128(spec.log_n).unwrap_or(0.0) - log_q;
                ((budget / spec.special_bits as f64).floor() as usize).clamp(1, q.len())
            }
        };
        let p = ntt_primes(spec.special_bits, alpha, n, Side::Below, &q);
        let params = Parameters {
            log_n: spec.log_n,
            scale_bits: spec.scale_bits,
            q,
            p,
            secret: spec.secret,
            insecure: spec.insecure,
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks everything a decoded or hand-built set must satisfy, including the security bound.
    pub fn validate(&self) -> Result<()> {
        if !(3..=17).contains(&self.log_n) {
            return Err(Error::InvalidParameters(format!("log_n {} out of range", self.log_n)));
        }
        let n = self.degree() as u64;
        if self.q.is_empty() || self.p.is_empty() {
            return Err(Error::InvalidParameters(
                "need at least one ciphertext and one special prime".into(),
            ));
        }
        if self.p.len() > self.q.len() {
            return Err(Error::InvalidParameters("more special primes than ciphertext primes".into()));
        }
        if self.q.len() + self.p.len() > MAX_PRIMES {
            return Err(Error::InvalidParameters(format!(
                "{} primes, at most {MAX_PRIMES}",
                self.q.len() + self.p.len()
            )));
        }
        if !(20..=MAX_MODULUS_BITS).contains(&self.scale_bits) {
            return Err(Error::InvalidParameters(format!("scale_bits {} out of range", self.scale_bits)));
        }
        let all: Vec<u64> = self.q.iter().chain(&self.p).copied().collect();
        for (i, &m) in all.iter().enumerate() {
            if m >= 1 << MAX_MODULUS_BITS || !is_prime(m) || m % (2 * n) != 1 {
                return Err(Error::InvalidParameters(format!(
                    "modulus {m} is not a prime = 1 mod 2N below 2^{MAX_MODULUS_BITS}"
                )));
            }
            if all[..i].contains(&m) {
                return Err(Error::InvalidParameters(format!("modulus {m} appears twice")));
            }
        }
        if let SecretDistribution::HammingWeight(h) = self.secret {
            if h == 0 || h > self.degree() {
                return Err(Error::InvalidParameters(format!("Hamming weight {h} out of range")));
            }
            if !self.insecure && h < self.degree() / 2 {
                return Err(Error::Insecure(format!(
                    "a sparse secret (h = {h} < N/2) is outside the HE Standard's ternary bounds"
                )));
            }
        }
        if !self.insecure {
            let bound = max_log_qp_128(self.log_n).ok_or_else(|| {
                Error::Insecure(format!("N = 2^{} has no 128-bit bound in the HE Standard", self.log_n))
            })?;
            let log_qp = self.log_qp();
            if log_qp > bound {
                return Err(Error::Insecure(format!(
                    "log2(QP) = {log_qp:.1} bits exceeds the 128-bit bound of {bound} bits for N = 2^{}",
                    self.log_n
                )));
            }
        }
        Ok(())
    }

    pub fn degree(&self) -> usize {
        1 << self.log_n
    }

    pub fn slots(&self) -> usize {
        self.degree() / 2
    }

    /// Highest level (number of rescalings a fresh ciphertext allows).
    pub fn max_level(&self) -> usize {
        self.q.len() - 1
    }

    /// Number of special primes.
    pub fn alpha(&self) -> usize {
        self.p.len()
    }

    /// Key-switching digits: ranges of consecutive ciphertext primes from q_0 up, each as wide
    /// as the special modulus P allows. Key switching adds sum_i d_i e_i / P with |d_i| below
    /// a digit's modulus D_i, so its noise grows with D_i / P while its cost (one raise and one
    /// inner-product term per digit) and the keys' size fall with the count: a digit may exceed
    /// P by [`DIGIT_SLACK_BITS`] (two 30-bit primes against one 60-bit special prime), never
    /// more, and always holds at least one prime.
    pub fn digits(&self) -> Vec<Range<usize>> {
        let budget = log2_sum(&self.p) + DIGIT_SLACK_BITS;
        let mut digits: Vec<Range<usize>> = Vec::new();
        let mut bits = 0.0;
        for (i, &q) in self.q.iter().enumerate() {
            let b = (q as f64).log2();
            match digits.last_mut() {
                Some(last) if bits + b <= budget => {
                    last.end = i + 1;
                    bits += b;
                }
                _ => {
                    digits.push(i..i + 1);
                    bits = b;
                }
            }
        }
        digits
    }

    /// Number of key-switching digits (dnum).
    pub fn dnum(&self) -> usize {
        self.digits().len()
    }

    pub fn log_q(&self) -> f64 {
        log2_sum(&self.q)
    }

    pub fn log_qp(&self) -> f64 {
        log2_sum(&self.q) + log2_sum(&self.p)
    }

    /// Whether the set is within the HE Standard's 128-bit bound for its secret distribution.
    pub fn is_128_bit_secure(&self) -> bool {
        max_log_qp_128(self.log_n).is_some_and(|b| self.log_qp() <= b)
            && match self.secret {
                SecretDistribution::Ternary => true,
                SecretDistribution::HammingWeight(h) => h >= self.degree() / 2,
            }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn benchmark_sets_are_secure_and_shaped_as_asked() {
        for (log_n, levels, alpha) in [(14u32, 7usize, 1usize), (15, 18, 1), (16, 18, 16)] {
            let p = Parameters::new(&ParameterSpec::new(log_n, levels, 40)).unwrap();
            assert_eq!(p.q.len(), levels + 1);
            assert_eq!(p.alpha(), alpha, "log_n {log_n}");
            assert!(p.is_128_bit_secure());
            assert!(p.log_qp() <= max_log_qp_128(log_n).unwrap());
        }
    }

    #[test]
    fn digits_cover_the_chain_in_order_and_fit_the_special_modulus() {
        // The block's set: q_0 alone (60 bits), then pairs of 30-bit primes under one 60-bit P.
        let p = Parameters::new(&ParameterSpec::new(14, 10, 30)).unwrap();
        assert_eq!(p.alpha(), 1);
        let digits = p.digits();
        assert_eq!(digits, vec![0..1, 1..3, 3..5, 5..7, 7..9, 9..11]);
        // 40-bit primes do not pair under 60 bits; two special primes hold three.
        assert_eq!(Parameters::new(&ParameterSpec::new(14, 7, 40)).unwrap().dnum(), 8);
        let mut spec = ParameterSpec::new(11, 4, 40);
        spec.special_count = Some(2);
        spec.insecure = true;
        let p = Parameters::new(&spec).unwrap();
        assert_eq!(p.digits(), vec![0..2, 2..5]);
        for p in [p, Parameters::new(&ParameterSpec::new(15, 18, 40)).unwrap()] {
            let digits = p.digits();
            assert_eq!(digits.first().unwrap().start, 0);
            assert_eq!(digits.last().unwrap().end, p.q.len());
            for (d, next) in digits.iter().zip(&digits[1..]) {
                assert_eq!(d.end, next.start);
                assert!(log2_sum(&p.q[d.clone()]) <= log2_sum(&p.p) + DIGIT_SLACK_BITS || d.len() == 1);
            }
        }
    }

    #[test]
    fn sets_over_the_bound_are_refused_unless_insecure() {
        let mut spec = ParameterSpec::new(13, 7, 40);
        match Parameters::new(&spec) {
            Err(Error::Insecure(msg)) => assert!(msg.contains("218"), "{msg}"),
            other => panic!("expected refusal, got {other:?}"),
        }
        spec.insecure = true;
        assert!(Parameters::new(&spec).is_ok());
        let mut spec = ParameterSpec::new(12, 1, 30);
        spec.first_bits = 30;
        spec.special_bits = 30;
        assert!(Parameters::new(&spec).is_ok(), "2^12 with 90 bits fits 109");
    }

    #[test]
    fn bad_requests_are_clear_errors() {
        assert!(matches!(Parameters::new(&ParameterSpec::new(2, 1, 40)), Err(Error::InvalidParameters(_))));
        assert!(matches!(Parameters::new(&ParameterSpec::new(14, 1, 70)), Err(Error::InvalidParameters(_))));
        let mut spec = ParameterSpec::new(14, 2, 40);
        spec.special_count = Some(9);
        assert!(matches!(Parameters::new(&spec), Err(Error::InvalidParameters(_))));
    }
}
