//! The operations encrypted linear algebra is written against.
//!
//! A value is a vector of `slots()` numbers at a level: real, except where attention packs
//! two features in one value as a + i b (the slots are complex in CKKS). Routines in `he` and
//! `nn` are generic over [`Backend`], so one piece of code runs three ways:
//! - [`crate::he::encrypted::Encrypted`]: CKKS ciphertexts (the provider's real computation);
//! - [`crate::he::mirror::Mirror`]: the same arithmetic on f64 vectors (the plaintext mirror);
//! - [`crate::he::mirror::Mirror::tracer`]: levels and counts only (cost prediction).
//!
//! Level rules, identical in every backend: products (`mul*`, `dot`, `linear`) consume one
//! level; additions bring both operands to the lower level; rotations, conjugations and
//! integer products (and products by i) are free; a refresh returns values at the level it is
//! asked for.

use std::sync::Arc;

use crate::error::Result;

use super::cost::Cost;

pub trait Backend: Sync {
    type Value: Clone + Send + Sync;
    /// A running sum of products not yet relinearised.
    type Acc: Send;

    /// Real values per ciphertext.
    fn slots(&self) -> usize;
    /// Level of fresh values.
    fn max_level(&self) -> usize;
    fn level(&self, v: &Self::Value) -> usize;

    /// `v` at `level` (at most its own), at that level's canonical scale.
    fn drop_to(&self, v: &Self::Value, level: usize) -> Result<Self::Value>;
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    fn sub(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    fn add_scalar(&self, a: &Self::Value, c: f64) -> Result<Self::Value>;
    /// Adds a plaintext vector of `slots()` values.
    fn add_plain(&self, a: &Self::Value, p: &[f64]) -> Result<Self::Value>;
    /// Times an integer: exact, no level.
    fn mul_integer(&self, a: &Self::Value, k: i64) -> Self::Value;
    /// Times a real constant: one level.
    fn mul_scalar(&self, a: &Self::Value, c: f64) -> Result<Self::Value>;
    /// Slot-wise times a plaintext vector: one level.
    fn mul_plain(&self, a: &Self::Value, p: &[f64]) -> Result<Self::Value>;
    /// Slot-wise product of two values: one level, one relinearisation.
    fn mul(&self, a: &Self::Value, b: &Self::Value) -> Result<Self::Value>;
    /// An empty sum of products.
    fn accumulator(&self) -> Self::Acc;
    /// acc += a * b, without a key switch (operands at the lowest level involved).
    fn accumulate(&self, acc: &mut Self::Acc, a: &Self::Value, b: &Self::Value) -> Result<()>;
    /// `sums[o] += a * b` for every pair of `pairs[o]`: [`Backend::accumulate`] for many sums
    /// at once, which a backend may fuse (the CKKS one reads each sum once and shared operands
    /// once per cache-sized chunk).
    fn accumulate_pairs(
        &self,
        sums: &mut [Self::Acc],
        pairs: &[Vec<(&Self::Value, &Self::Value)>],
    ) -> Result<()> {
        if sums.len() != pairs.len() {
            return Err(crate::error::Error::Shape(format!(
                "{} sums for {} lists of products",
                sums.len(),
                pairs.len()
            )));
        }
        for (acc, products) in sums.iter_mut().zip(pairs) {
            for (a, b) in products {
                self.accumulate(acc, a, b)?;
            }
        }
        Ok(())
    }
    /// The sum, relinearised once and rescaled: one level.
    fn finish(&self, acc: Self::Acc) -> Result<Self::Value>;
    /// out_j = sum_i weights[j * inputs.len() + i] * inputs[i]: one level, no key switch.
    fn linear(&self, inputs: &[&Self::Value], weights: &[f64], outputs: usize) -> Result<Vec<Self::Value>>;
    /// Rotates left by `step` slots (right if negative).
    fn rotate(&self, a: &Self::Value, step: i64) -> Result<Self::Value>;
    /// Several rotations of one value sharing one decomposition.
    fn rotate_many(&self, a: &Self::Value, steps: &[i64]) -> Result<Vec<Self::Value>>;
    /// Complex conjugation of every slot: one key switch (the conjugation key), no level.
    fn conjugate(&self, a: &Self::Value) -> Result<Self::Value>;
    /// Every slot times the imaginary unit: exact, no level, no key switch.
    fn mul_i(&self, a: &Self::Value) -> Self::Value;
    /// Lowest level a value may be at and still be refreshed.
    fn refresh_level(&self) -> usize;
    /// Masked refresh round trip: the values come back at `level` (at most `max_level()`;
    /// the levels they still need, since the owner's reply weighs one prime per level).
    /// Consecutive values at one level travel in pairs (`refresh::wire_pairs`), each pair
    /// separated after by one conjugation.
    fn refresh(&self, values: Vec<Self::Value>, level: usize) -> Result<Vec<Self::Value>>;
    /// Operations counted so far.
    fn cost(&self) -> Cost;

    /// sum_i a_i * b_i with a single relinearisation: one level.
    fn dot(&self, a: &[&Self::Value], b: &[&Self::Value]) -> Result<Self::Value> {
        if a.len() != b.len() || a.is_empty() {
            return Err(crate::error::Error::Shape(format!("dot of {} and {} values", a.len(), b.len())));
        }
        let mut acc = [self.accumulator()];
        self.accumulate_pairs(&mut acc, &[a.iter().copied().zip(b.iter().copied()).collect()])?;
        let [acc] = acc;
        self.finish(acc)
    }

    fn square(&self, a: &Self::Value) -> Result<Self::Value> {
        self.mul(a, a)
    }

    fn lowest_level(&self, values: &[&Self::Value]) -> usize {
        values.iter().map(|v| self.level(v)).min().unwrap_or(self.max_level())
    }

    /// The evaluation enters stage `name` (progress for whoever waits on it; an error stops
    /// the evaluation there). Nothing by default.
    fn stage(&self, name: &str) -> Result<()> {
        let _ = name;
        Ok(())
    }
}

/// Where an evaluation reports its stages ([`Backend::stage`]): a group, a head, a part of
/// the MLP. Its error ends the evaluation.
pub type Progress = Arc<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// Normalised rotation step: the Galois element of `step` and `step + slots` is the same.
pub(crate) fn canonical_step(step: i64, slots: usize) -> i64 {
    step.rem_euclid(slots as i64)
}
