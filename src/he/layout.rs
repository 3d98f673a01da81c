//! Token packing of activations shaped (batch, tokens, features).
//!
//! Ciphertext f of a group holds feature f of every token of `samples_per_group` samples:
//! slot `s * tokens + t` is token t of sample s. Linear layers then need no rotation at all
//! (each output ciphertext is a weighted sum of input ciphertexts), layer norms need none,
//! and only attention mixes slots. A batch larger than a group is split across groups.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLayout {
    pub tokens: usize,
    pub features: usize,
    pub slots: usize,
}

impl TokenLayout {
    pub fn new(tokens: usize, features: usize, slots: usize) -> Result<Self> {
        if tokens == 0 || features == 0 {
            return Err(Error::Shape(format!(
                "a layout needs at least one token and one feature, got {tokens} x {features}"
            )));
        }
        if tokens > slots {
            return Err(Error::OutOfRange(format!(
                "{tokens} tokens do not fit in {slots} slots; use a larger ring"
            )));
        }
        Ok(TokenLayout { tokens, features, slots })
    }

    pub fn samples_per_group(&self) -> usize {
        self.slots / self.tokens
    }

    pub fn groups(&self, batch: usize) -> usize {
        batch.div_ceil(self.samples_per_group())
    }

    /// Samples in group `g` of a batch.
    pub fn samples_in_group(&self, batch: usize, g: usize) -> usize {
        let per = self.samples_per_group();
        batch.saturating_sub(g * per).min(per)
    }

    /// 1 where a slot holds a token of one of `samples` samples, 0 elsewhere.
    pub fn valid(&self, samples: usize) -> Vec<f64> {
        (0..self.slots).map(|s| if s < samples * self.tokens { 1.0 } else { 0.0 }).collect()
    }

    /// (batch, tokens, features) row-major values -> per group, per feature, a slot vector.
    pub fn pack(&self, values: &[f64], batch: usize) -> Result<Vec<Vec<Vec<f64>>>> {
        let expected = batch * self.tokens * self.features;
        if values.len() != expected || batch == 0 {
            return Err(Error::Shape(format!(
                "expected {batch} x {} x {} = {expected} values (batch >= 1), got {}",
                self.tokens,
                self.features,
                values.len()
            )));
        }
        let per = self.samples_per_group();
        Ok((0..self.groups(batch))
            .map(|g| {
                let mut cts = vec![vec![0.0; self.slots]; self.features];
                for s in 0..self.samples_in_group(batch, g) {
                    let sample = &values[(g * per + s) * self.tokens * self.features..];
                    for t in 0..self.tokens {
                        for (f, ct) in cts.iter_mut().enumerate() {
                            ct[s * self.tokens + t] = sample[t * self.features + f];
                        }
                    }
                }
                cts
            })
            .collect())
    }

    /// The inverse of [`TokenLayout::pack`].
    pub fn unpack(&self, groups: &[Vec<Vec<f64>>], batch: usize) -> Result<Vec<f64>> {
        if groups.len() != self.groups(batch)
            || groups.iter().any(|g| g.len() != self.features || g.iter().any(|c| c.len() < self.slots))
        {
            return Err(Error::Shape(format!(
                "expected {} groups of {} slot vectors of length {}",
                self.groups(batch),
                self.features,
                self.slots
            )));
        }
        let per = self.samples_per_group();
        let mut out = vec![0.0; batch * self.tokens * self.features];
        for (g, cts) in groups.iter().enumerate() {
            for s in 0..self.samples_in_group(batch, g) {
                let sample = &mut out[(g * per + s) * self.tokens * self.features..];
                for t in 0..self.tokens {
                    for (f, ct) in cts.iter().enumerate() {
                        sample[t * self.features + f] = ct[s * self.tokens + t];
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip_across_groups() {
        let layout = TokenLayout::new(5, 3, 16).unwrap();
        assert_eq!(layout.samples_per_group(), 3);
        let batch = 7;
        let values: Vec<f64> = (0..batch * 15).map(|i| i as f64).collect();
        let groups = layout.pack(&values, batch).unwrap();
        assert_eq!(groups.len(), 3);
        // Token 2 of sample 1, feature 0 sits at slot 1 * 5 + 2 of ciphertext 0.
        assert_eq!(groups[0][0][7], values[15 + 2 * 3]);
        assert_eq!(layout.unpack(&groups, batch).unwrap(), values);
        assert_eq!(layout.valid(layout.samples_in_group(batch, 2)).iter().sum::<f64>(), 5.0);
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(TokenLayout::new(17, 3, 16).is_err());
        assert!(TokenLayout::new(0, 3, 16).is_err());
        let layout = TokenLayout::new(5, 3, 16).unwrap();
        assert!(layout.pack(&[0.0; 14], 1).is_err());
        assert!(layout.pack(&[], 0).is_err());
    }
}
