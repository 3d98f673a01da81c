//! The parameters of one aggregation round, checked once: who takes part, the threshold,
//! the vector length, the fixed-point encoding and the neighbour graph.
//!
//! The checks that matter for correctness: the threshold is at least 2 and at most the
//! degree + 1 (shares go to the neighbours and to the owner itself), and n * ceil(bound * 2^f) < 2^(k-1), so the sum of
//! all inputs can never wrap modulo 2^k. The context (run id and round number) is mixed into
//! every key derivation, every AEAD's associated data and the round tag every message
//! carries, so nothing replays across rounds.

use sha3::{Digest, Sha3_256};

use super::fixed_point::FixedPoint;
use super::graph::Graph;
use super::wire;
use crate::error::{Error, Result};

/// Values per owner: at most 2^28 (2 GiB of 64-bit masks).
pub const MAX_LENGTH: usize = 1 << 28;
/// Bytes of round context.
pub const MAX_CONTEXT: usize = 1 << 16;

/// What the caller chooses; [`Params::new`] checks it.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Node ids of the owners invited to the round (distinct, 2..=255 of them).
    pub owners: Vec<u64>,
    /// Shares needed to reconstruct an owner's secrets (t).
    pub threshold: usize,
    /// Values per owner.
    pub length: usize,
    /// The largest magnitude of a value.
    pub bound: f64,
    /// Fractional bits of the fixed-point encoding (f).
    pub frac_bits: u32,
    /// The masks and sums live in Z_{2^k}, 16 <= k <= 64.
    pub ring_bits: u32,
    /// Degree of the neighbour graph; `None`: complete (n-1).
    pub neighbours: Option<usize>,
    /// Run id and round number.
    pub context: Vec<u8>,
}

impl ParamSpec {
    /// Defaults: 20 fractional bits, Z_{2^64}, complete graph, empty context.
    pub fn new(owners: Vec<u64>, threshold: usize, length: usize, bound: f64) -> Self {
        ParamSpec {
            owners,
            threshold,
            length,
            bound,
            frac_bits: 20,
            ring_bits: 64,
            neighbours: None,
            context: vec![],
        }
    }
}

/// Checked parameters, with the graph and the round tag derived from them.
#[derive(Clone, Debug)]
pub struct Params {
    /// Owners in ascending order; an owner's Shamir x-coordinate is its index + 1.
    owners: Vec<u64>,
    threshold: usize,
    length: usize,
    degree: usize,
    context: Vec<u8>,
    fixed: FixedPoint,
    graph: Graph,
    tag: [u8; 16],
}

fn invalid(msg: String) -> Error {
    Error::SecAgg(format!("invalid parameters: {msg}"))
}

impl Params {
    pub fn new(spec: ParamSpec) -> Result<Self> {
        let mut owners = spec.owners;
        owners.sort_unstable();
        let n = owners.len();
        if !(2..=255).contains(&n) {
            return Err(invalid(format!("{n} owners; between 2 and 255 can take part")));
        }
        if let Some(w) = owners.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(format!("owner {} is listed twice", w[0])));
        }
        if spec.length == 0 || spec.length > MAX_LENGTH {
            return Err(invalid(format!("length {} is outside 1..={MAX_LENGTH}", spec.length)));
        }
        if spec.context.len() > MAX_CONTEXT {
            return Err(invalid(format!("{} bytes of context; at most {MAX_CONTEXT}", spec.context.len())));
        }
        let k = spec.ring_bits;
        if !(16..=64).contains(&k) {
            return Err(invalid(format!("ring_bits {k} is outside 16..=64")));
        }
        if spec.frac_bits > 62 {
            return Err(invalid(format!("frac_bits {} is above 62", spec.frac_bits)));
        }
        let degree = spec.neighbours.unwrap_or(n - 1);
        if degree == 0 || degree > n - 1 {
            return Err(invalid(format!("neighbours {degree} is outside 1..={} for {n} owners", n - 1)));
        }
        if degree < n - 1 && degree % 2 == 1 {
            return Err(invalid(format!(
                "neighbours {degree} is odd; below n-1 = {} the graph needs an even degree",
                n - 1
            )));
        }
        let t = spec.threshold;
        if t < 2 || t > degree + 1 {
            return Err(invalid(format!(
                "threshold {t} must be at least 2 and at most neighbours + 1 = {} (shares go to the neighbours and the owner itself)",
                degree + 1
            )));
        }
        if !(spec.bound.is_finite() && spec.bound > 0.0) {
            return Err(invalid(format!("bound {} must be positive and finite", spec.bound)));
        }
        let fixed = FixedPoint { frac_bits: spec.frac_bits, ring_bits: k, bound: spec.bound };
        let max = fixed.max_encoded();
        let fits = max < 2f64.powi(62) && (n as u128) * (max as u128) < 1u128 << (k - 1);
        if !fits {
            return Err(invalid(format!(
                "{n} owners * bound {} * 2^{} = {:e} does not stay below 2^{} = {:e}: the sum could wrap; \
                 lower the bound or frac_bits, or raise ring_bits",
                spec.bound,
                spec.frac_bits,
                n as f64 * max,
                k - 1,
                2f64.powi(k as i32 - 1)
            )));
        }
        let graph = Graph::new(&owners, degree, &spec.context);
        let mut params = Params {
            owners,
            threshold: t,
            length: spec.length,
            degree,
            context: spec.context,
            fixed,
            graph,
            tag: [0; 16],
        };
        let digest =
            Sha3_256::new_with_prefix(b"blindfed/secagg/v1/round").chain_update(params.to_bytes()).finalize();
        params.tag.copy_from_slice(&digest[..16]);
        Ok(params)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode_params(&self.spec())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Params::new(wire::decode_params(bytes)?)
    }

    /// The spec these parameters were built from (the degree resolved, owners ascending).
    pub fn spec(&self) -> ParamSpec {
        ParamSpec {
            owners: self.owners.clone(),
            threshold: self.threshold,
            length: self.length,
            bound: self.fixed.bound,
            frac_bits: self.fixed.frac_bits,
            ring_bits: self.fixed.ring_bits,
            neighbours: Some(self.degree),
            context: self.context.clone(),
        }
    }

    pub fn owners(&self) -> &[u64] {
        &self.owners
    }
    pub fn threshold(&self) -> usize {
        self.threshold
    }
    pub fn length(&self) -> usize {
        self.length
    }
    pub fn neighbours(&self) -> usize {
        self.degree
    }
    pub fn context(&self) -> &[u8] {
        &self.context
    }
    pub fn fixed_point(&self) -> FixedPoint {
        self.fixed
    }
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    /// 16 bytes of SHA3-256 over the encoded parameters: every message carries it, so a
    /// message of another round or parameter set is refused.
    pub fn round_tag(&self) -> &[u8; 16] {
        &self.tag
    }

    pub fn is_owner(&self, id: u64) -> bool {
        self.owners.binary_search(&id).is_ok()
    }

    /// The Shamir x-coordinate of an owner (its index + 1, in 1..=255).
    pub fn x_of(&self, id: u64) -> Option<u8> {
        self.owners.binary_search(&id).ok().map(|i| (i + 1) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ParamSpec {
        ParamSpec::new(vec![30, 10, 20, 40, 50], 3, 8, 1.0)
    }

    #[test]
    fn parameters_round_trip_and_bad_ones_name_the_numbers() {
        let p = Params::new(ParamSpec { neighbours: Some(4), context: b"r1".to_vec(), ..spec() }).unwrap();
        assert_eq!(p.owners(), &[10, 20, 30, 40, 50]);
        assert_eq!(p.x_of(30), Some(3));
        let q = Params::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(q.spec(), p.spec());
        assert_eq!(q.round_tag(), p.round_tag());
        let other = Params::new(ParamSpec { context: b"r2".to_vec(), ..spec() }).unwrap();
        assert_ne!(other.round_tag(), p.round_tag());

        let err = |s: ParamSpec| Params::new(s).unwrap_err().to_string();
        assert!(err(ParamSpec { threshold: 1, ..spec() }).contains("threshold 1"));
        assert!(err(ParamSpec { threshold: 4, neighbours: Some(2), ..spec() })
            .contains("at most neighbours + 1 = 3"));
        assert!(err(ParamSpec { neighbours: Some(3), ..spec() }).contains("odd"));
        assert!(err(ParamSpec { owners: vec![1, 2, 2], ..spec() }).contains("owner 2 is listed twice"));
        assert!(err(ParamSpec { owners: vec![1], ..spec() }).contains("1 owners"));
        assert!(err(ParamSpec { ring_bits: 8, ..spec() }).contains("ring_bits 8"));
        assert!(err(ParamSpec { bound: f64::NAN, ..spec() }).contains("bound"));
        // 5 * 2^10 * 2^20 = 5 * 2^30 >= 2^31.
        let wrap = err(ParamSpec { bound: 1024.0, ring_bits: 32, ..spec() });
        assert!(wrap.contains("5 owners") && wrap.contains("2^31"), "{wrap}");
        assert!(Params::new(ParamSpec { bound: 400.0, ring_bits: 32, ..spec() }).is_ok());
    }
}
