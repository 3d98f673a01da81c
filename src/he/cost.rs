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
    /// Ciphertexts sent through a masked refresh (one round trip per call).
    pub refreshed_ciphertexts: u64,
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
        self.relinearizations + self.rotations
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
        self.refreshed_ciphertexts += other.refreshed_ciphertexts;
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
