//! The plaintext mirror: f64 vectors that follow the level rules of ciphertexts.
//!
//! Built with [`Mirror::new`] it computes the values; built with [`Mirror::tracer`] it only
//! tracks levels and counts, which predicts an encrypted run's cost in microseconds.

use std::sync::Mutex;

use crate::error::{Error, Result};

use super::backend::{canonical_step, Backend};
use super::cost::Cost;
use super::refresh::{check_target, wire_pairs, Sent};

#[derive(Clone, Debug, PartialEq)]
pub struct MirrorValue {
    /// Empty in a tracer.
    pub data: Vec<f64>,
    pub level: usize,
}

pub struct Mirror {
    slots: usize,
    max_level: usize,
    compute: bool,
    refresh_level: usize,
    cost: Mutex<Cost>,
}

impl Mirror {
    pub fn new(slots: usize, max_level: usize) -> Self {
        Mirror { slots, max_level, compute: true, refresh_level: 0, cost: Mutex::new(Cost::default()) }
    }

    /// The same slots, levels and refresh level as a CKKS parameter set.
    pub fn like(ctx: &crate::ckks::Context) -> Self {
        Mirror::new(ctx.params.slots(), ctx.max_level())
            .with_refresh_level(super::refresh::refresh_level(ctx))
    }

    pub fn with_refresh_level(mut self, level: usize) -> Self {
        self.refresh_level = level;
        self
    }

    /// Levels and counts only; values carry no data.
    pub fn tracer(slots: usize, max_level: usize) -> Self {
        Mirror { compute: false, ..Mirror::new(slots, max_level) }
    }

    /// A fresh value (level `max_level`).
    pub fn value(&self, data: Vec<f64>) -> Result<MirrorValue> {
        self.value_at(data, self.max_level)
    }

    pub fn value_at(&self, data: Vec<f64>, level: usize) -> Result<MirrorValue> {
        if self.compute && data.len() != self.slots {
            return Err(Error::Shape(format!("expected {} values, got {}", self.slots, data.len())));
        }
        Ok(MirrorValue { data: if self.compute { data } else { Vec::new() }, level })
    }

    fn count(&self, f: impl FnOnce(&mut Cost)) {
        f(&mut self.cost.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn after_product(&self, level: usize) -> Result<usize> {
        if level == 0 {
            return Err(Error::OutOfLevels("a product at level 0 cannot be rescaled".into()));
        }
        self.count(|c| c.reached(level - 1));
        Ok(level - 1)
    }

    fn map(&self, a: &MirrorValue, level: usize, f: impl Fn(f64) -> f64) -> MirrorValue {
        MirrorValue { data: a.data.iter().map(|&x| f(x)).collect(), level }
    }

    fn zip(
        &self,
        a: &MirrorValue,
        b: &MirrorValue,
        level: usize,
        f: impl Fn(f64, f64) -> f64,
    ) -> MirrorValue {
        MirrorValue { data: a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect(), level }
    }

    fn check_plain(&self, p: &[f64]) -> Result<()> {
        if p.len() != self.slots {
            return Err(Error::Shape(format!("plaintext has {} values, expected {}", p.len(), self.slots)));
        }
        Ok(())
    }
}

impl Backend for Mirror {
    type Value = MirrorValue;
    type Acc = Option<MirrorValue>;

    fn slots(&self) -> usize {
        self.slots
    }

    fn max_level(&self) -> usize {
        self.max_level
    }

    fn level(&self, v: &MirrorValue) -> usize {
        v.level
    }

    fn drop_to(&self, v: &MirrorValue, level: usize) -> Result<MirrorValue> {
        if level > v.level {
            return Err(Error::OutOfRange(format!("cannot raise a value from level {} to {level}", v.level)));
        }
        Ok(MirrorValue { data: v.data.clone(), level })
    }

    fn add(&self, a: &MirrorValue, b: &MirrorValue) -> Result<MirrorValue> {
        Ok(self.zip(a, b, a.level.min(b.level), |x, y| x + y))
    }

    fn sub(&self, a: &MirrorValue, b: &MirrorValue) -> Result<MirrorValue> {
        Ok(self.zip(a, b, a.level.min(b.level), |x, y| x - y))
    }

    fn add_scalar(&self, a: &MirrorValue, c: f64) -> Result<MirrorValue> {
        Ok(self.map(a, a.level, |x| x + c))
    }

    fn add_plain(&self, a: &MirrorValue, p: &[f64]) -> Result<MirrorValue> {
        self.check_plain(p)?;
        Ok(MirrorValue { data: a.data.iter().zip(p).map(|(&x, &y)| x + y).collect(), level: a.level })
    }

    fn mul_integer(&self, a: &MirrorValue, k: i64) -> MirrorValue {
        self.map(a, a.level, |x| x * k as f64)
    }

    fn mul_scalar(&self, a: &MirrorValue, c: f64) -> Result<MirrorValue> {
        let level = self.after_product(a.level)?;
        self.count(|cost| cost.plain_products += 1);
        Ok(self.map(a, level, |x| x * c))
    }

    fn mul_plain(&self, a: &MirrorValue, p: &[f64]) -> Result<MirrorValue> {
        self.check_plain(p)?;
        let level = self.after_product(a.level)?;
        self.count(|cost| cost.plain_products += 1);
        Ok(MirrorValue { data: a.data.iter().zip(p).map(|(&x, &y)| x * y).collect(), level })
    }

    fn mul(&self, a: &MirrorValue, b: &MirrorValue) -> Result<MirrorValue> {
        let level = self.after_product(a.level.min(b.level))?;
        self.count(|c| c.relinearizations += 1);
        Ok(self.zip(a, b, level, |x, y| x * y))
    }

    fn accumulator(&self) -> Option<MirrorValue> {
        None
    }

    fn accumulate(&self, acc: &mut Option<MirrorValue>, a: &MirrorValue, b: &MirrorValue) -> Result<()> {
        let level = accumulate_level(a.level, b.level, acc.as_ref().map(|v| v.level))?;
        self.count(|c| c.tensor_products += 1);
        let product = self.zip(a, b, level, |x, y| x * y);
        *acc = Some(match acc.take() {
            None => product,
            Some(sum) => self.zip(&sum, &product, level, |x, y| x + y),
        });
        Ok(())
    }

    fn finish(&self, acc: Option<MirrorValue>) -> Result<MirrorValue> {
        let sum = acc.ok_or_else(|| Error::InvalidInput("a sum of no products".into()))?;
        let level = self.after_product(sum.level)?;
        self.count(|c| c.relinearizations += 1);
        Ok(MirrorValue { data: sum.data, level })
    }

    fn linear(&self, inputs: &[&MirrorValue], weights: &[f64], outputs: usize) -> Result<Vec<MirrorValue>> {
        check_linear(inputs.len(), weights.len(), outputs)?;
        let level = self.after_product(inputs.iter().map(|v| v.level).min().unwrap_or(0))?;
        self.count(|c| c.linear_terms += (inputs.len() * outputs) as u64);
        let n = inputs.len();
        Ok((0..outputs)
            .map(|j| {
                let mut data = vec![0.0; if self.compute { self.slots } else { 0 }];
                for (x, &w) in inputs.iter().zip(&weights[j * n..(j + 1) * n]) {
                    if w != 0.0 {
                        data.iter_mut().zip(&x.data).for_each(|(d, &u)| *d += w * u);
                    }
                }
                MirrorValue { data, level }
            })
            .collect())
    }

    fn rotate(&self, a: &MirrorValue, step: i64) -> Result<MirrorValue> {
        let step = canonical_step(step, self.slots);
        if step != 0 {
            self.count(|c| {
                c.rotations += 1;
                c.rotation_steps.insert(step);
            });
        }
        let mut data = a.data.clone();
        data.rotate_left(if self.compute { step as usize } else { 0 });
        Ok(MirrorValue { data, level: a.level })
    }

    fn rotate_many(&self, a: &MirrorValue, steps: &[i64]) -> Result<Vec<MirrorValue>> {
        let nonzero = steps.iter().filter(|&&s| canonical_step(s, self.slots) != 0).count() as u64;
        let out = steps.iter().map(|&s| self.rotate(a, s)).collect::<Result<Vec<_>>>()?;
        if nonzero > 1 {
            self.count(|c| c.hoisted_rotations += nonzero);
        }
        Ok(out)
    }

    fn refresh_level(&self) -> usize {
        self.refresh_level
    }

    fn refresh(&self, values: Vec<MirrorValue>, level: usize) -> Result<Vec<MirrorValue>> {
        if self.max_level == 0 {
            return Err(Error::OutOfLevels("a refresh needs at least one level".into()));
        }
        check_target(level, self.max_level)?;
        if let Some(v) = values.iter().find(|v| v.level < self.refresh_level) {
            return Err(Error::OutOfLevels(format!(
                "a masked refresh needs level {} or above, the value is at {}",
                self.refresh_level, v.level
            )));
        }
        let levels: Vec<usize> = values.iter().map(|v| v.level).collect();
        let pairs = wire_pairs(&levels);
        let conjugations = pairs.iter().filter(|(_, paired)| *paired).count() as u64;
        self.count(|c| c.refreshed(Sent { ciphertexts: pairs.len() as u64, conjugations }, level));
        Ok(values.into_iter().map(|v| MirrorValue { data: v.data, level }).collect())
    }

    fn cost(&self) -> Cost {
        self.cost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub(crate) fn check_linear(inputs: usize, weights: usize, outputs: usize) -> Result<()> {
    if inputs == 0 || outputs == 0 || weights != inputs * outputs {
        return Err(Error::Shape(format!(
            "a linear map from {inputs} to {outputs} values needs {} weights, got {weights}",
            inputs * outputs
        )));
    }
    Ok(())
}

/// The level a product joins a running sum at: the operands' lower level, which must not be
/// below the sum's (a sum of products cannot be moved to another level before it is finished).
pub(crate) fn accumulate_level(a: usize, b: usize, sum: Option<usize>) -> Result<usize> {
    let level = a.min(b);
    match sum {
        Some(s) if s > level => Err(Error::InvalidInput(format!(
            "a product at level {level} cannot join a sum of products at level {s}"
        ))),
        Some(s) => Ok(s),
        None => Ok(level),
    }
}
