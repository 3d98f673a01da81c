//! What a routine costs: key switches, levels, refreshes and the rotation keys it needs.
//!
//! Every backend counts the same way, so a dry run on the tracer predicts exactly what the
//! encrypted run will do before any key exists.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Ciphertext-ciphertext products (each ends in one relinearisation).
    pub relinearizations: u64,
    /// Rotations, hoisted or not; each is one key switch.
    pub rotations: u64,
    /// Of `rotations`, those that shared a decomposition with another (cheaper).
    pub hoisted_rotations: u64,
    /// Tensor products summed before a relinearisation (`dot`); no key switch each.
    pub tensor_products: u64,
    /// Plaintext or scalar products, each costing a level but no key switch.
    pub plain_products: u64,
    /// Ciphertext-times-scalar terms inside linear layers.
    pub linear_terms: u64,
    /// Conjugations (one key switch each): separating the pairs a refresh packed together and
    /// the complex pairs of attention features.
    pub conjugations: u64,
    /// Ciphertexts sent through a masked refresh each way (one round trip per call).
    pub refreshed_ciphertexts: u64,
    /// The same by the level the owner re-encrypts them at: what its replies weigh.
    pub refreshed_by_level: BTreeMap<usize, u64>,
    /// Masked-refresh round trips.
    pub refresh_rounds: u64,
    /// Rotation steps used (left rotations by these many slots): the Galois keys to generate.
    pub rotation_steps: BTreeSet<i64>,
    /// Lowest level any value reached.
    pub lowest_level: Option<usize>,
    /// Wall time by kind of operation, in nanoseconds: measured by the encrypted backend
    /// (empty elsewhere), so a benchmark reports where the time went rather than estimating.
    pub nanos: BTreeMap<&'static str, u64>,
}

impl Cost {
    pub fn key_switches(&self) -> u64 {
        self.relinearizations + self.rotations + self.conjugations
    }

    /// Counts one refresh round trip of `sent` ciphertexts re-encrypted at `level`.
    pub(crate) fn refreshed(&mut self, sent: super::refresh::Sent, level: usize) {
        self.refresh_rounds += 1;
        self.refreshed_ciphertexts += sent.ciphertexts;
        self.conjugations += sent.conjugations;
        *self.refreshed_by_level.entry(level).or_default() += sent.ciphertexts;
    }

    pub(crate) fn reached(&mut self, level: usize) {
        self.lowest_level = Some(self.lowest_level.map_or(level, |l| l.min(level)));
    }

    /// Adds `other`'s counts to these.
    pub fn absorb(&mut self, other: &Cost) {
        self.relinearizations += other.relinearizations;
        self.rotations += other.rotations;
        self.hoisted_rotations += other.hoisted_rotations;
        self.tensor_products += other.tensor_products;
        self.plain_products += other.plain_products;
        self.linear_terms += other.linear_terms;
        self.conjugations += other.conjugations;
        self.refreshed_ciphertexts += other.refreshed_ciphertexts;
        for (&level, &count) in &other.refreshed_by_level {
            *self.refreshed_by_level.entry(level).or_default() += count;
        }
        self.refresh_rounds += other.refresh_rounds;
        self.rotation_steps.extend(other.rotation_steps.iter().copied());
        if let Some(l) = other.lowest_level {
            self.reached(l);
        }
        for (kind, nanos) in &other.nanos {
            *self.nanos.entry(kind).or_default() += nanos;
        }
    }
}
