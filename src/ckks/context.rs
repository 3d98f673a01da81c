//! Everything precomputed from a parameter set and shared by all objects built on it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use sha3::digest::{ExtendableOutput, Update, XofReader};
use sha3::Shake256;

use crate::error::Result;
use crate::math::automorphism::ntt_permutation;
use crate::math::modulus::Modulus;
use crate::math::ntt::NttTable;
use crate::math::rns::BaseConverter;

use super::encoder::Encoder;
use super::params::{ParameterSpec, Parameters};

/// A basis conversion from dropped primes to kept ones, with the inverse of the dropped
/// product modulo each kept prime.
#[derive(Debug)]
pub struct DropConverter {
    pub converter: BaseConverter,
    pub inverse: Vec<u64>,
}

/// Shared handle to a parameter set and its precomputations. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context(Arc<ContextData>);

#[derive(Debug)]
pub struct ContextData {
    pub params: Parameters,
    /// Ciphertext moduli q_0..q_L followed by special moduli p_0..p_{alpha-1}.
    pub key_moduli: Vec<Modulus>,
    pub ntt: Vec<NttTable>,
    /// Key-switching digits as ranges of ciphertext-prime indices.
    pub digits: Vec<Range<usize>>,
    /// Converters from the primes of (a prefix of) a digit to every key modulus, by range.
    mod_up: HashMap<(usize, usize), BaseConverter>,
    /// Converter from the special primes to the ciphertext primes.
    pub mod_down: BaseConverter,
    /// P^-1 mod q_j and P mod q_j.
    pub p_inv_mod_q: Vec<u64>,
    pub p_mod_q: Vec<u64>,
    /// Per level l >= 1: conversion from {p_0.., q_l} to q_0..q_{l-1} and (P q_l)^-1 mod q_j,
    /// for key switching fused with a rescale.
    pub rescale_down: Vec<Option<DropConverter>>,
    /// rescale_inv[l][j] = q_l^-1 mod q_j for j < l.
    pub rescale_inv: Vec<Vec<u64>>,
    /// Canonical scale of each level: scale[L] = 2^scale_bits, scale[l-1] = scale[l]^2 / q_l,
    /// so that multiplying two canonical operands and rescaling lands exactly on the next one.
    pub scales: Vec<f64>,
    pub encoder: Encoder,
    pub fingerprint: [u8; 32],
    galois_permutations: Mutex<HashMap<u64, Arc<Vec<usize>>>>,
}

impl std::ops::Deref for Context {
    type Target = ContextData;
    fn deref(&self) -> &ContextData {
        &self.0
    }
}

impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.fingerprint == other.fingerprint
    }
}

impl Context {
    pub fn new(spec: &ParameterSpec) -> Result<Self> {
        Self::from_parameters(Parameters::new(spec)?)
    }

    pub fn from_parameters(params: Parameters) -> Result<Self> {
        params.validate()?;
        let n = params.degree();
        let key_moduli: Vec<Modulus> = params.q.iter().chain(&params.p).map(|&m| Modulus::new(m)).collect();
        let ntt = key_moduli
            .iter()
            .map(|&m| NttTable::new(m, n).expect("validated primes are NTT-friendly"))
            .collect();
        let num_q = params.q.len();
        let digits = params.digits();
        let mut mod_up = HashMap::new();
        for digit in &digits {
            for end in digit.start + 1..=digit.end {
                mod_up.insert(
                    (digit.start, end),
                    BaseConverter::new(&key_moduli[digit.start..end], &key_moduli),
                );
            }
        }
        let (q_moduli, p_moduli) = key_moduli.split_at(num_q);
        let mod_down = BaseConverter::new(p_moduli, q_moduli);
        let p_mod_q: Vec<u64> = q_moduli
            .iter()
            .map(|qj| p_moduli.iter().fold(1u64, |acc, p| qj.mul(acc, qj.reduce(p.value()))))
            .collect();
        let p_inv_mod_q = q_moduli.iter().zip(&p_mod_q).map(|(qj, &pm)| qj.inv(pm).unwrap()).collect();
        let rescale_inv = (0..num_q)
            .map(|l| (0..l).map(|j| q_moduli[j].inv(q_moduli[j].reduce(params.q[l])).unwrap()).collect())
            .collect();
        let rescale_down = (0..num_q)
            .map(|l| {
                (l >= 1).then(|| {
                    let mut dropped = p_moduli.to_vec();
                    dropped.push(q_moduli[l]);
                    let converter = BaseConverter::new(&dropped, &q_moduli[..l]);
                    let inverse = (0..l)
                        .map(|j| {
                            let qj = q_moduli[j];
                            qj.inv(qj.mul(p_mod_q[j], qj.reduce(params.q[l]))).unwrap()
                        })
                        .collect();
                    DropConverter { converter, inverse }
                })
            })
            .collect();
        let mut scales = vec![0f64; num_q];
        scales[num_q - 1] = 2f64.powi(params.scale_bits as i32);
        for l in (1..num_q).rev() {
            scales[l - 1] = scales[l] * scales[l] / params.q[l] as f64;
        }
        let fingerprint = fingerprint(&params);
        Ok(Context(Arc::new(ContextData {
            encoder: Encoder::new(n),
            params,
            key_moduli,
            ntt,
            digits,
            mod_up,
            mod_down,
            p_inv_mod_q,
            p_mod_q,
            rescale_down,
            rescale_inv,
            scales,
            fingerprint,
            galois_permutations: Mutex::new(HashMap::new()),
        })))
    }

    pub fn degree(&self) -> usize {
        self.params.degree()
    }

    pub fn max_level(&self) -> usize {
        self.params.max_level()
    }

    /// Moduli of a ciphertext at `level`: q_0..q_level.
    pub fn q_moduli(&self, level: usize) -> &[Modulus] {
        &self.key_moduli[..=level]
    }

    pub fn q_ntt(&self, level: usize) -> Vec<&NttTable> {
        self.ntt[..=level].iter().collect()
    }

    /// Index of the first special prime among the key moduli.
    pub fn special_start(&self) -> usize {
        self.params.q.len()
    }

    /// Key-modulus indices of the extended basis at `level`: q_0..q_level, then p_0..p_{alpha-1}.
    pub fn extended_indices(&self, level: usize) -> Vec<usize> {
        (0..=level).chain(self.special_start()..self.key_moduli.len()).collect()
    }

    pub fn mod_up_converter(&self, start: usize, end: usize) -> &BaseConverter {
        &self.mod_up[&(start, end)]
    }

    /// The canonical scale for fresh ciphertexts and plaintexts at `level`.
    pub fn scale_at(&self, level: usize) -> f64 {
        self.scales[level]
    }

    /// NTT-domain index map of X -> X^g, cached per Galois element.
    pub fn galois_permutation(&self, galois: u64) -> Arc<Vec<usize>> {
        let mut cache = self.galois_permutations.lock().unwrap_or_else(|e| e.into_inner());
        cache.entry(galois).or_insert_with(|| Arc::new(ntt_permutation(self.degree(), galois))).clone()
    }
}

/// SHAKE256 digest of the parameter set, carried by every serialised object so that objects of
/// different sets are never mixed.
fn fingerprint(params: &Parameters) -> [u8; 32] {
    let mut h = Shake256::default();
    h.update(b"blindfed/params/v1");
    h.update(&[params.log_n as u8, params.scale_bits as u8, params.insecure as u8]);
    match params.secret {
        super::params::SecretDistribution::Ternary => h.update(&[0]),
        super::params::SecretDistribution::HammingWeight(w) => {
            h.update(&[1]);
            h.update(&(w as u64).to_le_bytes());
        }
    }
    for list in [&params.q, &params.p] {
        h.update(&(list.len() as u64).to_le_bytes());
        for m in list {
            h.update(&m.to_le_bytes());
        }
    }
    let mut out = [0u8; 32];
    h.finalize_xof().read(&mut out);
    out
}
