//! The plaintext mirror: f64 vectors that follow the level rules of ciphertexts.
//!
//! Built with [`Mirror::new`] it computes the values; built with [`Mirror::tracer`] it only
//! tracks levels and counts, which predicts an encrypted run's cost in microseconds.

use std::borrow::Cow;
use std::sync::Mutex;

use crate::error::{Error, Result};

use super::backend::{canonical_step, Backend};
use super::cost::Cost;
use super::refresh::{check_target, wire_pairs, Sent};

#[derive(Clone, Debug, PartialEq)]
pub struct MirrorValue {
    /// The slots' real parts; empty in a tracer.
    pub data: Vec<f64>,
    /// The slots' imaginary parts; empty when they are all zero (every value but the complex
    /// pairs attention forms) and in a tracer.
    pub imag: Vec<f64>,
    pub level: usize,
}

impl MirrorValue {
    fn real(data: Vec<f64>, level: usize) -> Self {
        MirrorValue { data, imag: Vec::new(), level }
    }

    fn is_complex(&self) -> bool {
        !self.imag.is_empty()
    }

    /// Forgets imaginary parts that are all zero (z + conj z has exactly none).
    fn settled(mut self) -> Self {
        if self.imag.iter().all(|&x| x == 0.0) {
            self.imag = Vec::new();
        }
        self
    }

    /// The imaginary parts, zeros when the value is real.
    fn imag_or_zero(&self) -> Cow<'_, [f64]> {
        if self.is_complex() {
            Cow::Borrowed(&self.imag)
        } else {
            Cow::Owned(vec![0.0; self.data.len()])
        }
    }
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
        Ok(MirrorValue::real(if self.compute { data } else { Vec::new() }, level))
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

    /// `a` times a real factor per slot (`factor(s)`), real and imaginary parts alike.
    fn scaled(&self, a: &MirrorValue, level: usize, factor: impl Fn(usize) -> f64) -> MirrorValue {
        let scale = |v: &[f64]| v.iter().enumerate().map(|(s, &x)| x * factor(s)).collect();
        MirrorValue { data: scale(&a.data), imag: scale(&a.imag), level }
    }

    /// a + sign * b, slot by slot.
    fn combine(&self, a: &MirrorValue, b: &MirrorValue, level: usize, sign: f64) -> MirrorValue {
        let sum = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(&x, &y)| x + sign * y).collect();
        let imag = if a.is_complex() || b.is_complex() {
            sum(&a.imag_or_zero(), &b.imag_or_zero())
        } else {
            Vec::new()
        };
        MirrorValue { data: sum(&a.data, &b.data), imag, level }.settled()
    }

    /// a * b, slot by slot, as complex numbers.
    fn product(&self, a: &MirrorValue, b: &MirrorValue, level: usize) -> MirrorValue {
        let re = a.data.iter().zip(&b.data).map(|(&x, &y)| x * y);
        if !a.is_complex() && !b.is_complex() {
            return MirrorValue::real(re.collect(), level);
        }
        let (ai, bi) = (a.imag_or_zero(), b.imag_or_zero());
        let data = re.zip(ai.iter().zip(bi.iter())).map(|(r, (&x, &y))| r - x * y).collect();
        let imag = a
            .data
            .iter()
            .zip(bi.iter())
            .zip(ai.iter().zip(&b.data))
            .map(|((&p, &q), (&r, &t))| p * q + r * t);
        MirrorValue { data, imag: imag.collect(), level }.settled()
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
        Ok(MirrorValue { level, ..v.clone() })
    }

    fn add(&self, a: &MirrorValue, b: &MirrorValue) -> Result<MirrorValue> {
        Ok(self.combine(a, b, a.level.min(b.level), 1.0))
    }

    fn sub(&self, a: &MirrorValue, b: &MirrorValue) -> Result<MirrorValue> {
        Ok(self.combine(a, b, a.level.min(b.level), -1.0))
    }

    fn add_scalar(&self, a: &MirrorValue, c: f64) -> Result<MirrorValue> {
        Ok(MirrorValue {
            data: a.data.iter().map(|&x| x + c).collect(),
            imag: a.imag.clone(),
            level: a.level,
        })
    }

    fn add_plain(&self, a: &MirrorValue, p: &[f64]) -> Result<MirrorValue> {
        self.check_plain(p)?;
        let data = a.data.iter().zip(p).map(|(&x, &y)| x + y).collect();
        Ok(MirrorValue { data, imag: a.imag.clone(), level: a.level })
    }

    fn mul_integer(&self, a: &MirrorValue, k: i64) -> MirrorValue {
        self.scaled(a, a.level, |_| k as f64)
    }

    fn mul_scalar(&self, a: &MirrorValue, c: f64) -> Result<MirrorValue> {
        let level = self.after_product(a.level)?;
        self.count(|cost| cost.plain_products += 1);
        Ok(self.scaled(a, level, |_| c))
    }

    fn mul_plain(&self, a: &MirrorValue, p: &[f64]) -> Result<MirrorValue> {
        self.check_plain(p)?;
        let level = self.after_product(a.level)?;
        self.count(|cost| cost.plain_products += 1);
        Ok(self.scaled(a, level, |s| p[s]))
    }

    fn mul(&self, a: &MirrorValue, b: &MirrorValue) -> Result<MirrorValue> {
        let level = self.after_product(a.level.min(b.level))?;
        self.count(|c| c.relinearizations += 1);
        Ok(self.product(a, b, level))
    }

    fn accumulator(&self) -> Option<MirrorValue> {
        None
    }

    fn accumulate(&self, acc: &mut Option<MirrorValue>, a: &MirrorValue, b: &MirrorValue) -> Result<()> {
        let level = accumulate_level(a.level, b.level, acc.as_ref().map(|v| v.level))?;
        self.count(|c| c.tensor_products += 1);
        let product = self.product(a, b, level);
        *acc = Some(match acc.take() {
            None => product,
            Some(sum) => self.combine(&sum, &product, level, 1.0),
        });
        Ok(())
    }

    fn finish(&self, acc: Option<MirrorValue>) -> Result<MirrorValue> {
        let sum = acc.ok_or_else(|| Error::InvalidInput("a sum of no products".into()))?;
        let level = self.after_product(sum.level)?;
        self.count(|c| c.relinearizations += 1);
        Ok(MirrorValue { level, ..sum })
    }

    fn linear(&self, inputs: &[&MirrorValue], weights: &[f64], outputs: usize) -> Result<Vec<MirrorValue>> {
        check_linear(inputs.len(), weights.len(), outputs)?;
        let level = self.after_product(inputs.iter().map(|v| v.level).min().unwrap_or(0))?;
        self.count(|c| c.linear_terms += (inputs.len() * outputs) as u64);
        let n = inputs.len();
        Ok((0..outputs)
            .map(|j| {
                let complex = inputs.iter().any(|x| x.is_complex());
                let mut data = vec![0.0; if self.compute { self.slots } else { 0 }];
                let mut imag = if complex { data.clone() } else { Vec::new() };
                for (x, &w) in inputs.iter().zip(&weights[j * n..(j + 1) * n]) {
                    if w != 0.0 {
                        data.iter_mut().zip(&x.data).for_each(|(d, &u)| *d += w * u);
                        imag.iter_mut().zip(&x.imag).for_each(|(d, &u)| *d += w * u);
                    }
                }
                MirrorValue { data, imag, level }
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
        let mut out = a.clone();
        if self.compute {
            out.data.rotate_left(step as usize);
            out.imag.rotate_left(if a.is_complex() { step as usize } else { 0 });
        }
        Ok(out)
    }

    fn conjugate(&self, a: &MirrorValue) -> Result<MirrorValue> {
        self.count(|c| c.conjugations += 1);
        Ok(MirrorValue { data: a.data.clone(), imag: a.imag.iter().map(|&x| -x).collect(), level: a.level })
    }

    fn mul_i(&self, a: &MirrorValue) -> MirrorValue {
        if !self.compute {
            return a.clone();
        }
        let data = a.imag_or_zero().iter().map(|&x| -x).collect();
        MirrorValue { data, imag: a.data.clone(), level: a.level }.settled()
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
        if values.iter().any(MirrorValue::is_complex) {
            // The owner's reply packs two real values in one (a + i b): complex values would mix.
            return Err(Error::InvalidInput("a masked refresh carries real values only".into()));
        }
        let levels: Vec<usize> = values.iter().map(|v| v.level).collect();
        let pairs = wire_pairs(&levels);
        let conjugations = pairs.iter().filter(|(_, paired)| *paired).count() as u64;
        self.count(|c| c.refreshed(Sent { ciphertexts: pairs.len() as u64, conjugations }, level));
        Ok(values.into_iter().map(|v| MirrorValue { level, ..v }).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Complex slots follow complex arithmetic, and go back to real where the parts cancel.
    #[test]
    fn complex_values_multiply_conjugate_and_settle() {
        let b = Mirror::new(2, 3);
        let (x, y) = (b.value(vec![1.0, 2.0]).unwrap(), b.value(vec![3.0, -1.0]).unwrap());
        let z = b.add(&x, &b.mul_i(&y)).unwrap(); // (1 + 3i, 2 - i)
        let w = b.mul(&z, &b.conjugate(&z).unwrap()).unwrap(); // |z|^2
        assert_eq!((w.data.clone(), w.imag.is_empty(), w.level), (vec![10.0, 5.0], true, 2));
        let zz = b.mul(&z, &z).unwrap(); // (-8 + 6i, 3 - 4i)
        assert_eq!((zz.data.clone(), zz.imag.clone()), (vec![-8.0, 3.0], vec![6.0, -4.0]));
        let rot = b.rotate(&zz, 1).unwrap();
        assert_eq!((rot.data, rot.imag), (vec![3.0, -8.0], vec![-4.0, 6.0]));
        let re = b.add(&z, &b.conjugate(&z).unwrap()).unwrap();
        assert!(re.imag.is_empty() && re.data == vec![2.0, 4.0]);
        assert_eq!(b.cost().conjugations, 2);
        // A refresh packs two real values in one: a complex one would mix with its partner.
        assert!(b.refresh(vec![z], 3).is_err());
    }
}
