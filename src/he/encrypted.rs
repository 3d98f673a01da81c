//! The CKKS backend: values are ciphertexts, products relinearise and rescale at once.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;

use crate::ckks::evaluator as ev;
use crate::ckks::{Ciphertext, Complex, Context, EvaluationKeys, GaloisKeys, Plaintext, RelinKey};
use crate::error::{Error, Result};
use crate::math::lincomb;
use crate::math::poly::RnsPoly;
use crate::parallel;

use super::backend::{canonical_step, Backend, Progress};
use super::cost::Cost;
use super::mirror::{accumulate_level, check_linear};
use super::refresh::{refresh_paired, Refresher};

pub struct Encrypted {
    ctx: Context,
    relin: Arc<RelinKey>,
    galois: Option<Arc<GaloisKeys>>,
    refresher: Option<Arc<dyn Refresher>>,
    progress: Option<Progress>,
    cost: Mutex<Cost>,
}

impl Encrypted {
    /// `keys` must hold a relinearisation key; rotations need Galois keys for their steps, and
    /// refreshes need an owner (`with_refresher`).
    pub fn new(keys: &EvaluationKeys) -> Result<Self> {
        let relin = keys
            .relin
            .clone()
            .ok_or_else(|| Error::MissingKey("evaluating a block needs a relinearisation key".into()))?;
        Ok(Encrypted {
            ctx: keys.context().clone(),
            relin,
            galois: keys.galois.clone(),
            refresher: None,
            progress: None,
            cost: Mutex::new(Cost::default()),
        })
    }

    pub fn with_refresher(mut self, owner: Arc<dyn Refresher>) -> Self {
        self.refresher = Some(owner);
        self
    }

    /// Reports each stage of the evaluation to `progress`.
    pub fn with_progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    fn count(&self, f: impl FnOnce(&mut Cost)) {
        f(&mut self.cost.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn check(&self, v: &Ciphertext) -> Result<()> {
        if v.context() != &self.ctx {
            return Err(Error::ParameterMismatch);
        }
        if v.slots() != self.slots() {
            return Err(Error::Shape(format!(
                "ciphertext packs {} slots, the evaluator expects {}",
                v.slots(),
                self.slots()
            )));
        }
        Ok(())
    }

    /// [`ev::align`] after checking that every value belongs to this evaluator.
    fn align<'a>(&self, values: &[&'a Ciphertext]) -> Result<Vec<Cow<'a, Ciphertext>>> {
        values.iter().try_for_each(|v| self.check(v))?;
        ev::align(values)
    }

    fn encode(&self, p: &[f64], level: usize, scale: f64) -> Result<Plaintext> {
        if p.len() != self.slots() {
            return Err(Error::Shape(format!("plaintext has {} values, expected {}", p.len(), self.slots())));
        }
        let values: Vec<Complex> = p.iter().map(|&x| Complex::new(x, 0.0)).collect();
        Plaintext::encode(&self.ctx, &values, Some(level), Some(scale))
    }

    /// acc += a * b at the lowest level involved (untimed: [`Backend::accumulate`] times it).
    fn accumulate_one(&self, acc: &mut Option<Ciphertext>, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        let level = accumulate_level(a.level(), b.level(), acc.as_ref().map(|s| s.level()))?;
        self.check(a)?;
        self.check(b)?;
        let (x, y) = (ev::at_level(a, level)?, ev::at_level(b, level)?);
        match acc.as_mut() {
            None => *acc = Some(ev::multiply(&x, &y)?),
            Some(sum) => ev::multiply_accumulate(sum, &x, &y)?,
        }
        self.count(|c| c.tensor_products += 1);
        Ok(())
    }

    /// Runs `f`, adding its wall time to the cost under `kind`.
    fn timed<T>(&self, kind: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let out = f();
        let nanos = start.elapsed().as_nanos() as u64;
        self.count(|c| *c.nanos.entry(kind).or_default() += nanos);
        out
    }

    fn product_done(&self, out: &Ciphertext) {
        self.count(|c| c.reached(out.level()));
    }

    fn galois(&self) -> Result<&GaloisKeys> {
        self.galois.as_deref().ok_or_else(|| Error::MissingKey("rotations need Galois keys".into()))
    }
}

impl Backend for Encrypted {
    type Value = Ciphertext;
    type Acc = Option<Ciphertext>;

    fn slots(&self) -> usize {
        self.ctx.params.slots()
    }

    fn max_level(&self) -> usize {
        self.ctx.max_level()
    }

    fn level(&self, v: &Ciphertext) -> usize {
        v.level()
    }

    fn drop_to(&self, v: &Ciphertext, level: usize) -> Result<Ciphertext> {
        ev::adjust_level(v, level)
    }

    fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let v = self.align(&[a, b])?;
        ev::add(&v[0], &v[1])
    }

    fn sub(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        let v = self.align(&[a, b])?;
        ev::sub(&v[0], &v[1])
    }

    fn add_scalar(&self, a: &Ciphertext, c: f64) -> Result<Ciphertext> {
        ev::add_scalar(a, c)
    }

    fn add_plain(&self, a: &Ciphertext, p: &[f64]) -> Result<Ciphertext> {
        ev::add_plain(a, &self.encode(p, a.level(), a.scale())?)
    }

    fn mul_integer(&self, a: &Ciphertext, k: i64) -> Ciphertext {
        ev::mul_integer(a, k)
    }

    fn mul_scalar(&self, a: &Ciphertext, c: f64) -> Result<Ciphertext> {
        let out = ev::rescale(&ev::mul_scalar(a, c)?)?;
        self.count(|cost| cost.plain_products += 1);
        self.product_done(&out);
        Ok(out)
    }

    fn mul_plain(&self, a: &Ciphertext, p: &[f64]) -> Result<Ciphertext> {
        self.timed("plain_products", || {
            if a.level() == 0 {
                return Err(Error::OutOfLevels("a product at level 0 cannot be rescaled".into()));
            }
            let pt = self.encode(p, a.level(), self.ctx.scale_at(a.level()))?;
            let out = ev::rescale(&ev::mul_plain(a, &pt)?)?;
            self.count(|cost| cost.plain_products += 1);
            self.product_done(&out);
            Ok(out)
        })
    }

    fn mul(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
        self.timed("relinearizations", || {
            let v = self.align(&[a, b])?;
            let out = ev::multiply_relin_rescale(&v[0], &v[1], &self.relin)?;
            self.count(|c| c.relinearizations += 1);
            self.product_done(&out);
            Ok(out)
        })
    }

    fn accumulator(&self) -> Option<Ciphertext> {
        None
    }

    fn accumulate(&self, acc: &mut Option<Ciphertext>, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
        self.timed("tensor_products", || self.accumulate_one(acc, a, b))
    }

    fn accumulate_pairs(
        &self,
        sums: &mut [Option<Ciphertext>],
        pairs: &[Vec<(&Ciphertext, &Ciphertext)>],
    ) -> Result<()> {
        self.timed("tensor_products", || {
            if sums.len() != pairs.len() {
                return Err(Error::Shape(format!(
                    "{} sums for {} lists of products",
                    sums.len(),
                    pairs.len()
                )));
            }
            // Each sum's level: its own, or its lowest operand's. One fused pass needs them equal;
            // anything else (rare) goes product by product.
            let mut levels = Vec::with_capacity(sums.len());
            for (acc, products) in sums.iter().zip(pairs) {
                for (a, b) in products {
                    levels.push(accumulate_level(a.level(), b.level(), acc.as_ref().map(|s| s.level()))?);
                }
            }
            let Some(&level) = levels.iter().min() else { return Ok(()) };
            if levels.iter().any(|&l| l != level) {
                for (acc, products) in sums.iter_mut().zip(pairs) {
                    for (a, b) in products {
                        self.accumulate_one(acc, a, b)?;
                    }
                }
                return Ok(());
            }
            let mut aligned: Vec<Vec<(Cow<'_, Ciphertext>, Cow<'_, Ciphertext>)>> =
                Vec::with_capacity(pairs.len());
            for products in pairs {
                let mut row = Vec::with_capacity(products.len());
                for (a, b) in products {
                    self.check(a)?;
                    self.check(b)?;
                    row.push((ev::at_level(a, level)?, ev::at_level(b, level)?));
                }
                aligned.push(row);
            }
            let mut targets: Vec<&mut Ciphertext> = Vec::with_capacity(sums.len());
            let mut terms: Vec<Vec<(&Ciphertext, &Ciphertext)>> = Vec::with_capacity(sums.len());
            for (acc, products) in sums.iter_mut().zip(&aligned) {
                let Some((a, b)) = products.first() else { continue };
                let sum = acc.get_or_insert_with(|| {
                    ev::zero_product(&self.ctx, level, a.scale() * b.scale(), a.slots().max(b.slots()))
                });
                targets.push(sum);
                terms.push(products.iter().map(|(a, b)| (a.as_ref(), b.as_ref())).collect());
            }
            ev::multiply_accumulate_pairs(&mut targets, &terms)?;
            self.count(|c| c.tensor_products += levels.len() as u64);
            Ok(())
        })
    }

    fn finish(&self, acc: Option<Ciphertext>) -> Result<Ciphertext> {
        self.timed("relinearizations", || {
            let sum = acc.ok_or_else(|| Error::InvalidInput("a sum of no products".into()))?;
            if sum.level() == 0 {
                return Err(Error::OutOfLevels("a product at level 0 cannot be rescaled".into()));
            }
            let out = ev::relinearize_rescale(&sum, &self.relin)?;
            self.count(|c| c.relinearizations += 1);
            self.product_done(&out);
            Ok(out)
        })
    }

    fn linear(&self, inputs: &[&Ciphertext], weights: &[f64], outputs: usize) -> Result<Vec<Ciphertext>> {
        self.timed("linear_layers", || {
            check_linear(inputs.len(), weights.len(), outputs)?;
            let xs = self.align(inputs)?;
            let level = xs[0].level();
            if level == 0 {
                return Err(Error::OutOfLevels("a linear layer at level 0 cannot be rescaled".into()));
            }
            let xs: Vec<&Ciphertext> = xs.iter().map(|x| x.as_ref()).collect();
            let out = parallel::install(|| linear_combination(&self.ctx, &xs, weights, outputs))?;
            let out = out.iter().map(ev::rescale).collect::<Result<Vec<_>>>()?;
            self.count(|c| c.linear_terms += (inputs.len() * outputs) as u64);
            self.product_done(&out[0]);
            Ok(out)
        })
    }

    fn rotate(&self, a: &Ciphertext, step: i64) -> Result<Ciphertext> {
        self.timed("rotations", || {
            let step = canonical_step(step, self.slots());
            if step == 0 {
                return Ok(a.clone());
            }
            let out = ev::rotate(a, step, self.galois()?)?;
            self.count(|c| {
                c.rotations += 1;
                c.rotation_steps.insert(step);
            });
            Ok(out)
        })
    }

    fn rotate_many(&self, a: &Ciphertext, steps: &[i64]) -> Result<Vec<Ciphertext>> {
        self.timed("rotations", || {
            let steps: Vec<i64> = steps.iter().map(|&s| canonical_step(s, self.slots())).collect();
            let nonzero = steps.iter().filter(|&&s| s != 0).count() as u64;
            if nonzero == 0 {
                return Ok(vec![a.clone(); steps.len()]);
            }
            let out = ev::rotate_hoisted(a, &steps, self.galois()?)?;
            self.count(|c| {
                c.rotations += nonzero;
                if nonzero > 1 {
                    c.hoisted_rotations += nonzero;
                }
                c.rotation_steps.extend(steps.iter().filter(|&&s| s != 0));
            });
            Ok(out)
        })
    }

    fn conjugate(&self, a: &Ciphertext) -> Result<Ciphertext> {
        self.timed("conjugations", || {
            self.check(a)?;
            let out = ev::conjugate(a, self.galois()?)?;
            self.count(|c| c.conjugations += 1);
            Ok(out)
        })
    }

    fn mul_i(&self, a: &Ciphertext) -> Ciphertext {
        ev::mul_by_i(a)
    }

    fn refresh_level(&self) -> usize {
        super::refresh::refresh_level(&self.ctx)
    }

    fn stage(&self, name: &str) -> Result<()> {
        self.progress.as_ref().map_or(Ok(()), |report| report(name))
    }

    fn refresh(&self, values: Vec<Ciphertext>, level: usize) -> Result<Vec<Ciphertext>> {
        self.timed("refreshes", || {
            let owner = self.refresher.as_deref().ok_or_else(|| {
                Error::MissingKey("this evaluation needs a masked refresh but has no owner".into())
            })?;
            values.iter().try_for_each(|v| self.check(v))?;
            let (out, sent) = refresh_paired(values, owner, level, self.galois.as_deref())?;
            self.count(|c| c.refreshed(sent, level));
            Ok(out)
        })
    }

    fn cost(&self) -> Cost {
        self.cost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// out_j = sum_i w_ji x_i with each weight encoded at the level's canonical scale (so the
/// rescale that follows lands on the next level's scale), before that rescale.
fn linear_combination(
    ctx: &Context,
    xs: &[&Ciphertext],
    weights: &[f64],
    outputs: usize,
) -> Result<Vec<Ciphertext>> {
    let level = xs[0].level();
    let factor = ctx.scale_at(level);
    let moduli = ctx.q_moduli(level);
    let mut integers = Vec::with_capacity(weights.len());
    for &w in weights {
        let v = (w * factor).round();
        if !v.is_finite() || v.abs() >= 2f64.powi(120) {
            return Err(Error::NotFinite(format!("weight {w} is not a finite number in range")));
        }
        integers.push(v as i128);
    }
    let n = ctx.degree();
    let mut polys: Vec<[RnsPoly; 2]> =
        (0..outputs).map(|_| [RnsPoly::zero(n, level + 1), RnsPoly::zero(n, level + 1)]).collect();
    // One task per (polynomial, prime): it owns that row of every output.
    let mut rows: Vec<Vec<&mut [u64]>> = (0..2 * (level + 1)).map(|_| Vec::with_capacity(outputs)).collect();
    for out in polys.iter_mut() {
        for (p, poly) in out.iter_mut().enumerate() {
            for (l, row) in poly.rows_mut().enumerate() {
                rows[p * (level + 1) + l].push(row);
            }
        }
    }
    rows.into_par_iter().enumerate().for_each(|(task, mut out_rows)| {
        let (p, l) = (task / (level + 1), task % (level + 1));
        let inputs: Vec<&[u64]> = xs.iter().map(|x| x.polys[p].limb(l)).collect();
        lincomb::combine(&mut out_rows, &inputs, &integers, &moduli[l]);
    });
    Ok(polys
        .into_iter()
        .map(|[c0, c1]| Ciphertext {
            ctx: ctx.clone(),
            polys: vec![c0, c1],
            level,
            scale: xs[0].scale() * factor,
            slots: xs[0].slots(),
            seed: None,
        })
        .collect())
}
