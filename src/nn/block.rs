//! The FHE-friendly pre-norm transformer block (ViT / BERT encoder layer).
//!
//! y = x1 + W2 gelu(W1 N2(x1) + b1) + b2,  x1 = x + Wo Attn(N1(x)) + bo, where the softmax,
//! the normalisations N1, N2 and GELU are the families of [`BlockApprox`] (polynomials,
//! learned constants, folded statistics). [`Block::forward`] is the reference in f64 for one
//! sample; [`Block::evaluate`] runs the same function on any [`Backend`] in the token
//! layout: on ciphertexts (the provider), on the f64 mirror, or on the tracer for the cost.
//!
//! Levels are spent only where the wide activations need them. Each layer norm's variance and
//! each softmax denominator is one ciphertext per group: their deep scalar functions run on
//! masked refreshes (as many as the chain needs), so 1/sqrt and 1/x cost round trips of a few
//! ciphertexts instead of levels of the whole block. If a stage (attention, MLP) still does
//! not fit, its input is refreshed the same way; nothing is ever decrypted in the clear.
//!
//! The owner may hand the first block of a request its input normalised in the clear
//! ([`Block::evaluate_normalised`]): that block's N1 is then the exact LayerNorm and costs
//! nothing.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::he::attention::{DiagonalPlan, OPERAND_SCALE};
use crate::he::backend::Backend;
use crate::he::layout::TokenLayout;
use crate::he::polynomial::Basis;

use super::approx::{calibrated_range, Approximation};
use super::families::{AffineStats, BlockApprox, Denominator, Norm};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockShape {
    pub tokens: usize,
    pub width: usize,
    pub heads: usize,
    pub mlp: usize,
}

impl BlockShape {
    pub fn new(tokens: usize, width: usize, heads: usize, mlp: usize) -> Result<Self> {
        if tokens == 0 || width == 0 || heads == 0 || mlp == 0 || !width.is_multiple_of(heads) {
            return Err(Error::Shape(format!(
                "a block needs tokens, width, heads and mlp >= 1 with width divisible by heads, \
                 got tokens={tokens} width={width} heads={heads} mlp={mlp}"
            )));
        }
        Ok(BlockShape { tokens, width, heads, mlp })
    }

    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

/// Weights in f64, matrices row-major (out, in) like torch's `nn.Linear.weight`.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    pub ln1_gamma: Vec<f64>,
    pub ln1_beta: Vec<f64>,
    pub wq: Vec<f64>,
    pub bq: Vec<f64>,
    pub wk: Vec<f64>,
    pub bk: Vec<f64>,
    pub wv: Vec<f64>,
    pub bv: Vec<f64>,
    pub wo: Vec<f64>,
    pub bo: Vec<f64>,
    pub ln2_gamma: Vec<f64>,
    pub ln2_beta: Vec<f64>,
    pub w1: Vec<f64>,
    pub b1: Vec<f64>,
    pub w2: Vec<f64>,
    pub b2: Vec<f64>,
}

impl BlockWeights {
    /// (name, value, expected length) of every tensor, for validation and bindings.
    pub fn tensors(&self, s: &BlockShape) -> Vec<(&'static str, &Vec<f64>, usize)> {
        let (d, m) = (s.width, s.mlp);
        vec![
            ("ln1_gamma", &self.ln1_gamma, d),
            ("ln1_beta", &self.ln1_beta, d),
            ("wq", &self.wq, d * d),
            ("bq", &self.bq, d),
            ("wk", &self.wk, d * d),
            ("bk", &self.bk, d),
            ("wv", &self.wv, d * d),
            ("bv", &self.bv, d),
            ("wo", &self.wo, d * d),
            ("bo", &self.bo, d),
            ("ln2_gamma", &self.ln2_gamma, d),
            ("ln2_beta", &self.ln2_beta, d),
            ("w1", &self.w1, m * d),
            ("b1", &self.b1, m),
            ("w2", &self.w2, d * m),
            ("b2", &self.b2, d),
        ]
    }
}

/// Inputs seen by each approximation and statistic, for calibration and range checks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    /// Attention scores (the softmax numerator's inputs).
    pub numerator: Vec<f64>,
    /// Row sums of the numerators, per head (what 1/x inverts, or a constant replaces).
    pub row_sums: Vec<Vec<f64>>,
    /// LayerNorm variances plus eps (1/sqrt's inputs).
    pub inv_sqrt: Vec<f64>,
    pub gelu: Vec<f64>,
    /// Rows entering N1 and N2 (tokens x width, row-major): affine statistics.
    pub norm_inputs: [Vec<f64>; 2],
}

/// `[lo, hi]` of the finite inputs, and how many were not finite (an approximation upstream
/// that left its range blows up what follows it).
fn describe_inputs(seen: &[f64]) -> String {
    let finite = seen.iter().copied().filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let bad = seen.iter().filter(|v| !v.is_finite()).count();
    match (lo <= hi, bad) {
        (true, 0) => format!("[{lo:.4}, {hi:.4}]"),
        (true, _) => format!("[{lo:.4}, {hi:.4}] and {bad} non-finite values"),
        (false, _) => format!("its {bad} inputs, none finite"),
    }
}

impl Observations {
    /// Appends `other`'s observations to these.
    pub fn extend(&mut self, other: Observations) {
        self.numerator.extend(other.numerator);
        if self.row_sums.len() < other.row_sums.len() {
            self.row_sums.resize(other.row_sums.len(), Vec::new());
        }
        for (mine, theirs) in self.row_sums.iter_mut().zip(other.row_sums) {
            mine.extend(theirs);
        }
        self.inv_sqrt.extend(other.inv_sqrt);
        self.gelu.extend(other.gelu);
        for (mine, theirs) in self.norm_inputs.iter_mut().zip(other.norm_inputs) {
            mine.extend(theirs);
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub shape: BlockShape,
    pub weights: BlockWeights,
    pub approx: BlockApprox,
}

/// Levels each part of the block consumes, from the families' specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDepth {
    /// From the block input at the top level to x1 (N1, QKV, scores, numerator, A V, the
    /// division, output projection).
    pub attention: usize,
    /// Of those, N1's on the wide path (none when the owner normalised the input).
    pub norm: usize,
    /// From x1 to the output (N2, FC1, GELU, FC2).
    pub mlp: usize,
    /// Narrow chains run on refreshed values (0 when the family has none): LayerNorm's
    /// 1/sqrt with its input scaling, and 1/sum.
    pub inv_sqrt: usize,
    pub reciprocal: usize,
    /// The deepest step a narrow chain cannot be split at (refreshes go between steps).
    pub narrow_step: usize,
}

/// How a normalised input relates to the raw one, per feature: `x_hat = scale * z + offset`
/// where `z` is what the backend computed. The next linear layer absorbs it with the norm's
/// own gain and bias.
struct Normalised<V> {
    values: Vec<V>,
    scale: Vec<f64>,
    offset: Vec<f64>,
}

/// What LayerNorm multiplies `sum_f (d x_f - sum)^2` by to get the variance: 1 / d^3.
fn variance_factor(width: usize) -> f64 {
    1.0 / (width as f64).powi(3)
}

/// Scalar products a constant is split into so that each factor is at least 2^-10: encoded at
/// a level's scale, a factor then keeps all but 10 of the scale's bits. One product with
/// 1 / 768^3 at a 30-bit scale would round to 2 units, a 16 % error in ViT-B's variance.
fn constant_steps(c: f64) -> usize {
    (-c.abs().log2() / 10.0).ceil().max(1.0) as usize
}

/// `v * c` for a narrow value (one ciphertext per group), in [`constant_steps`] products of
/// equal factors, refreshing between them when a step would leave `v` below the refresh
/// level: cheap levels, since a narrow value is refreshed anyway.
fn scale_narrow<B: Backend>(b: &B, mut v: B::Value, c: f64) -> Result<B::Value> {
    let steps = constant_steps(c);
    let factor = c.abs().powf(1.0 / steps as f64);
    for step in 0..steps {
        if b.level(&v) <= b.refresh_level() {
            v = b.refresh(vec![v], b.max_level())?.remove(0);
        }
        v = b.mul_scalar(&v, if step == 0 { factor.copysign(c) } else { factor })?;
    }
    Ok(v)
}

impl Block {
    pub fn new(shape: BlockShape, weights: BlockWeights, approx: BlockApprox) -> Result<Self> {
        for (name, v, len) in weights.tensors(&shape) {
            if v.len() != len {
                return Err(Error::Shape(format!(
                    "{name} has {} values, a block of width {} and mlp {} needs {len}",
                    v.len(),
                    shape.width,
                    shape.mlp
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::NotFinite(format!("{name} contains a non-finite value")));
            }
        }
        approx.check(shape.width, shape.heads)?;
        Ok(Block { shape, weights, approx })
    }

    /// GELU as c0 + c1 z + c2 z^2 when it is that simple: its coefficients then fold into FC2
    /// and it costs a single level.
    fn quadratic_gelu(&self) -> Option<[f64; 3]> {
        match &self.approx.gelu {
            Approximation::Polynomial { poly, .. }
                if poly.basis == Basis::Power && poly.coeffs.len() <= 3 && poly.degree() == 2 =>
            {
                let c = &poly.coeffs;
                Some([c[0], c[1], c[2]])
            }
            _ => None,
        }
    }

    pub fn depth(&self) -> BlockDepth {
        let a = &self.approx;
        let gelu = if self.quadratic_gelu().is_some() { 1 } else { a.gelu.depth() };
        // LayerNorm multiplies the centred input by the refreshed 1/sqrt: one wide level.
        let (norm, inv_sqrt, inv_sqrt_step) = match &a.norm {
            Norm::LayerNorm(f) => {
                let scaling = constant_steps(variance_factor(self.shape.width));
                (1, 1 + scaling + f.depth(), 2.max(f.narrow_step_depth()))
            }
            Norm::Affine { .. } => (0, 0, 0),
        };
        let (division, reciprocal, reciprocal_step) = match &a.denominator {
            Denominator::RowSum(f) => (1, f.depth(), f.narrow_step_depth()),
            Denominator::Constant(_) => (0, 0, 0),
        };
        BlockDepth {
            attention: norm + 1 + 1 + a.numerator.depth_masked() + 1 + division + 1,
            norm,
            mlp: norm + 1 + gelu + 1,
            inv_sqrt,
            reciprocal,
            narrow_step: inv_sqrt_step.max(reciprocal_step),
        }
    }

    // ---- the reference, one sample at a time --------------------------------------------

    /// One sample (tokens x width, row-major) through the block in f64.
    pub fn forward(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.forward_observed(x, &mut None, false, false)
    }

    /// [`Block::forward`] with N1 the exact LayerNorm: what the block computes when the owner
    /// normalised its input.
    pub fn forward_normalised(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.forward_observed(x, &mut None, false, true)
    }

    /// The block with the exact functions (softmax, LayerNorm, GELU) instead of the families:
    /// the teacher's arithmetic on the student's weights.
    pub fn forward_exact(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.forward_observed(x, &mut None, true, true)
    }

    /// Records the input of every approximation while running [`Block::forward`].
    pub fn observe(&self, x: &[f64]) -> Result<Observations> {
        self.observe_with(x, false)
    }

    fn observe_with(&self, x: &[f64], exact: bool) -> Result<Observations> {
        let mut obs = Some(Observations::default());
        self.forward_observed(x, &mut obs, exact, exact)?;
        Ok(obs.unwrap_or_default())
    }

    fn forward_observed(
        &self,
        x: &[f64],
        obs: &mut Option<Observations>,
        exact: bool,
        owner_norm1: bool,
    ) -> Result<Vec<f64>> {
        let BlockShape { tokens: t, width: d, heads, mlp } = self.shape;
        if x.len() != t * d {
            return Err(Error::Shape(format!("a sample has {t} x {d} = {} values, got {}", t * d, x.len())));
        }
        let w = &self.weights;
        let a = &self.approx;
        let f = |g: &Approximation, v: f64| if exact { g.exact(v) } else { g.eval(v) };
        let dh = self.shape.head_dim();
        let ln1 = self.norm_ref(0, x, &w.ln1_gamma, &w.ln1_beta, obs, exact || owner_norm1);
        let q = dense(&ln1, t, d, &w.wq, &w.bq, d);
        let k = dense(&ln1, t, d, &w.wk, &w.bk, d);
        let v = dense(&ln1, t, d, &w.wv, &w.bv, d);
        let mut o = vec![0.0; t * d];
        let scale = 1.0 / (dh as f64).sqrt();
        if let Some(o) = obs {
            o.row_sums.resize(heads, Vec::new());
        }
        for h in 0..heads {
            for i in 0..t {
                let scores: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..dh).map(|f| q[i * d + h * dh + f] * k[j * d + h * dh + f]).sum::<f64>() * scale
                    })
                    .collect();
                // The teacher's softmax in exact mode, whatever replaces it in the student.
                let e: Vec<f64> =
                    scores.iter().map(|&s| if exact { s.exp() } else { a.numerator.eval(s) }).collect();
                let den: f64 = e.iter().sum();
                let inv = match (&a.denominator, exact) {
                    (_, true) => 1.0 / den,
                    (Denominator::RowSum(r), false) => r.eval(den),
                    (Denominator::Constant(c), false) => 1.0 / c[h],
                };
                if let Some(o) = obs {
                    o.numerator.extend(&scores);
                    // What the student's denominator sees on these scores (in exact mode, on
                    // the teacher's: a power's sums are of another scale than exp's).
                    let sum = if exact { scores.iter().map(|&s| a.numerator.eval(s)).sum() } else { den };
                    o.row_sums[h].push(sum);
                }
                for f in 0..dh {
                    let mixed: f64 = (0..t).map(|j| e[j] * v[j * d + h * dh + f]).sum();
                    o[i * d + h * dh + f] = mixed * inv;
                }
            }
        }
        let attn = dense(&o, t, d, &w.wo, &w.bo, d);
        let x1: Vec<f64> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
        let ln2 = self.norm_ref(1, &x1, &w.ln2_gamma, &w.ln2_beta, obs, exact);
        let z = dense(&ln2, t, d, &w.w1, &w.b1, mlp);
        if let Some(o) = obs {
            o.gelu.extend(&z);
        }
        let g: Vec<f64> = z.iter().map(|&z| f(&a.gelu, z)).collect();
        let y = dense(&g, t, mlp, &w.w2, &w.b2, d);
        Ok(x1.iter().zip(&y).map(|(a, b)| a + b).collect())
    }

    /// Normalisation `which` (0: N1, 1: N2) of the rows of `x`, then gamma and beta; `exact`
    /// is the exact LayerNorm whatever the family (the teacher's, or the owner's).
    fn norm_ref(
        &self,
        which: usize,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        obs: &mut Option<Observations>,
        exact: bool,
    ) -> Vec<f64> {
        let d = self.shape.width;
        if let Some(o) = obs {
            o.norm_inputs[which].extend_from_slice(x);
        }
        let mut out = vec![0.0; x.len()];
        for (row, dst) in x.chunks(d).zip(out.chunks_mut(d)) {
            if let (Norm::Affine { norm1, norm2 }, false) = (&self.approx.norm, exact) {
                let s = if which == 0 { norm1 } else { norm2 };
                for (f, (o, v)) in dst.iter_mut().zip(row).enumerate() {
                    *o = (v - s.mean[f]) * s.inv_std[f] * gamma[f] + beta[f];
                }
                continue;
            }
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64 + self.approx.eps;
            let r = match &self.approx.norm {
                Norm::LayerNorm(f) => {
                    if let Some(o) = obs {
                        o.inv_sqrt.push(var);
                    }
                    if exact {
                        f.exact(var)
                    } else {
                        f.eval(var)
                    }
                }
                Norm::Affine { .. } => 1.0 / var.sqrt(),
            };
            for (f, (o, v)) in dst.iter_mut().zip(row).enumerate() {
                *o = (v - mean) * r * gamma[f] + beta[f];
            }
        }
        out
    }

    // ---- the same function on a backend ---------------------------------------------------

    /// The block on one group of `samples` samples packed by `layout` (one value per feature).
    /// Returns one value per output feature.
    pub fn evaluate<B: Backend>(
        &self,
        b: &B,
        layout: &TokenLayout,
        samples: usize,
        x: Vec<B::Value>,
    ) -> Result<Vec<B::Value>> {
        self.run(b, layout, samples, Cow::Owned(x), None)
    }

    /// [`Block::evaluate`] with N1 replaced by `x_hat`, the input normalised by its owner
    /// (`(x - mean) / sqrt(var + eps)` per token, no affine part).
    pub fn evaluate_normalised<B: Backend>(
        &self,
        b: &B,
        layout: &TokenLayout,
        samples: usize,
        x: Vec<B::Value>,
        x_hat: Vec<B::Value>,
    ) -> Result<Vec<B::Value>> {
        self.run(b, layout, samples, Cow::Owned(x), Some(Cow::Owned(x_hat)))
    }

    /// [`Block::evaluate`], or [`Block::evaluate_normalised`] when the owner sent `x_hat`.
    /// Inputs may be borrowed (a batch the caller keeps): the block copies only what it
    /// changes.
    pub(super) fn run<B: Backend>(
        &self,
        b: &B,
        layout: &TokenLayout,
        samples: usize,
        x: Cow<'_, [B::Value]>,
        x_hat: Option<Cow<'_, [B::Value]>>,
    ) -> Result<Vec<B::Value>> {
        let s = self.shape;
        if layout.tokens != s.tokens || layout.features != s.width || layout.slots != b.slots() {
            return Err(Error::Shape(format!(
                "the layout ({} tokens x {} features in {} slots) does not match the block \
                 ({} tokens x {} features) on {} slots",
                layout.tokens,
                layout.features,
                layout.slots,
                s.tokens,
                s.width,
                b.slots()
            )));
        }
        for v in std::iter::once(&x).chain(x_hat.as_ref()) {
            if v.len() != s.width {
                return Err(Error::Shape(format!("expected {} input values, got {}", s.width, v.len())));
            }
        }
        let valid = layout.valid(samples);
        let depth = self.depth();
        self.check_narrow_fits(b, &depth)?;
        b.stage("normalisation")?;
        let x = self.fit_stage(b, x, depth.attention, "attention")?;
        let (norm1, norm_levels) = match x_hat {
            Some(v) => {
                let v = self.fit_stage(b, v, depth.attention, "attention")?.into_owned();
                (Normalised { values: v, scale: vec![1.0; s.width], offset: vec![0.0; s.width] }, 0)
            }
            None => (self.normalise(b, 0, &valid, &x)?, depth.norm),
        };
        // Past N1 the input only feeds the residual, at attention's output level: keep it
        // there (a fraction of its primes) rather than at the top for the whole attention.
        let attention_levels = depth.attention - depth.norm + norm_levels;
        let residual_level = b.lowest_level(&x.iter().collect::<Vec<_>>()).saturating_sub(attention_levels);
        let residual = x.iter().map(|v| b.drop_to(v, residual_level)).collect::<Result<Vec<_>>>()?;
        drop(x);
        let x1 = self.attention(b, layout, samples, &valid, &residual, norm1)?;
        drop(residual);
        let x1 = self.fit_stage(b, Cow::Owned(x1), depth.mlp, "MLP")?.into_owned();
        self.mlp(b, &valid, &x1)
    }

    /// Refuses parameters whose levels cannot carry a narrow chain's deepest step.
    fn check_narrow_fits<B: Backend>(&self, b: &B, depth: &BlockDepth) -> Result<()> {
        let room = b.max_level().saturating_sub(b.refresh_level());
        if depth.narrow_step > room {
            return Err(Error::OutOfLevels(format!(
                "a narrow chain has a step of {} levels, the parameters leave {room} above the \
                 refresh level; use a larger ring or cheaper approximations",
                depth.narrow_step
            )));
        }
        Ok(())
    }

    /// Refreshes a stage's input if the levels left cannot carry it to the refresh floor, then
    /// drops it to the lowest level that carries the stage: every operation of the stage then
    /// works on as few primes as it can (a refresh returns at that level).
    fn fit_stage<'a, B: Backend>(
        &self,
        b: &B,
        x: Cow<'a, [B::Value]>,
        need: usize,
        stage: &str,
    ) -> Result<Cow<'a, [B::Value]>> {
        let floor = b.refresh_level();
        if b.max_level() < need + floor {
            return Err(Error::OutOfLevels(format!(
                "the {stage} stage needs {need} levels above the refresh level {floor}, the \
                 parameters have {} in all; use a larger ring or cheaper approximations",
                b.max_level()
            )));
        }
        let target = need + floor;
        let refs: Vec<&B::Value> = x.iter().collect();
        if b.lowest_level(&refs) < target {
            // The owner re-encrypts at the stage's level: no byte for a level it would drop.
            return Ok(Cow::Owned(b.refresh(x.into_owned(), target)?));
        }
        if refs.iter().all(|v| b.level(v) == target) {
            return Ok(x);
        }
        Ok(Cow::Owned(x.iter().map(|v| b.drop_to(v, target)).collect::<Result<_>>()?))
    }

    /// Normalisation `which` (0: N1, 1: N2) of the wide values `x`, with the per-feature map
    /// that relates it to the exact normalised input. LayerNorm gives `d (x - mean) /
    /// sqrt(var + eps)` (scale 1/d); the affine family gives `x` itself with its statistics.
    fn normalise<B: Backend>(
        &self,
        b: &B,
        which: usize,
        valid: &[f64],
        x: &[B::Value],
    ) -> Result<Normalised<B::Value>> {
        let width = self.shape.width;
        let inv_sqrt = match &self.approx.norm {
            Norm::Affine { norm1, norm2 } => {
                let AffineStats { mean, inv_std } = if which == 0 { norm1 } else { norm2 };
                return Ok(Normalised {
                    values: x.to_vec(),
                    scale: inv_std.clone(),
                    offset: mean.iter().zip(inv_std).map(|(m, i)| -m * i).collect(),
                });
            }
            Norm::LayerNorm(f) => f,
        };
        let d = width as i64;
        let mut iter = x.iter();
        let first = iter.next().expect("width >= 1").clone();
        let sum = iter.try_fold(first, |acc, v| b.add(&acc, v))?;
        let centred = x.iter().map(|v| b.sub(&b.mul_integer(v, d), &sum)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&B::Value> = centred.iter().collect();
        // sum_f (d x_f - sum)^2 = d^3 var.
        let v = b.dot(&refs, &refs)?;
        let var = b.add_scalar(&scale_narrow(b, v, variance_factor(width))?, self.approx.eps)?;
        let (lo, hi) = inv_sqrt.range();
        // Empty slots (no sample) would be far outside the range: give them a harmless value.
        let pad: Vec<f64> = valid.iter().map(|&m| (1.0 - m) * 0.5 * (lo + hi)).collect();
        let var = b.add_plain(&var, &pad)?;
        let r = self.narrow(b, var, inv_sqrt, b.level(&centred[0]))?;
        Ok(Normalised {
            values: centred.iter().map(|c| b.mul(c, &r)).collect::<Result<Vec<_>>>()?,
            scale: vec![1.0 / width as f64; width],
            offset: vec![0.0; width],
        })
    }

    /// f(value) times `f.narrow_scale()` for a one-ciphertext-per-group value, refreshing
    /// before, between and after f's steps as needed so the result never sits below
    /// `partner_level` (the wide values it multiplies next): the narrow chain's depth then
    /// costs the wide path nothing. Refreshing one ciphertext per group is cheap; a level of
    /// the wide path is not.
    fn narrow<B: Backend>(
        &self,
        b: &B,
        value: B::Value,
        f: &Approximation,
        partner_level: usize,
    ) -> Result<B::Value> {
        let target = partner_level.min(b.max_level());
        let mut value = value;
        if b.level(&value) < f.depth() + b.refresh_level() || b.level(&value) - f.depth() < target {
            value = b.refresh(vec![value], b.max_level())?.remove(0);
        }
        let mut out = f.evaluate_narrow(b, &value)?;
        if b.level(&out) < target {
            out = b.refresh(vec![out], target)?.remove(0);
        }
        Ok(out)
    }

    fn attention<B: Backend>(
        &self,
        b: &B,
        layout: &TokenLayout,
        samples: usize,
        valid: &[f64],
        x: &[B::Value],
        xhat: Normalised<B::Value>,
    ) -> Result<Vec<B::Value>> {
        let BlockShape { width: d, heads, .. } = self.shape;
        let dh = self.shape.head_dim();
        let w = &self.weights;
        let xr: Vec<&B::Value> = xhat.values.iter().collect();
        let plan = DiagonalPlan::new(layout, samples, None)?;
        let masks = plan.masks();
        let inv_sqrt_dh = 1.0 / (dh as f64).sqrt();
        let fold = |weight: &[f64], bias: &[f64], rows: std::ops::Range<usize>, scale: f64| {
            fold_norm(weight, bias, &w.ln1_gamma, &w.ln1_beta, &xhat.scale, &xhat.offset, rows, scale)
        };
        let mut heads_out = Vec::with_capacity(d);
        for h in 0..heads {
            b.stage(&format!("attention head {}/{heads}", h + 1))?;
            // Q, K and V are made a pass of features at a time, inside the products that use
            // them: never a whole head's worth alive.
            let head = |r: std::ops::Range<usize>| h * dh + r.start..h * dh + r.end;
            let scores = plan.scores(b, dh, |r| {
                // Q and K in one layer: its inputs are read once for both.
                let mut qk = fold(&w.wq, &w.bq, head(r.clone()), inv_sqrt_dh * OPERAND_SCALE);
                let k = fold(&w.wk, &w.bk, head(r), 1.0);
                qk.weights.extend(k.weights);
                qk.bias.extend(k.bias);
                let mut q = linear(b, &xr, qk)?;
                let k = q.split_off(q.len() / 2);
                Ok((q, k))
            })?;
            // Each score is freed as soon as its numerator exists: 2T - 1 ciphertexts per head
            // are the block's largest live set.
            let e = scores
                .into_iter()
                .zip(&masks)
                .map(|(s, m)| Ok(self.approx.numerator.evaluate_masked(b, &s, &[m])?.remove(0)))
                .collect::<Result<Vec<_>>>()?;
            let den = match &self.approx.denominator {
                Denominator::RowSum(f) => {
                    let (lo, hi) = f.range();
                    let pad: Vec<f64> = valid.iter().map(|&m| (1.0 - m) * 0.5 * (lo + hi)).collect();
                    Some((b.add_plain(&plan.row_sums(b, &e)?, &pad)?, f))
                }
                Denominator::Constant(_) => None,
            };
            let mixed =
                plan.mix(b, &e, dh, |r| linear(b, &xr, fold(&w.wv, &w.bv, head(r), OPERAND_SCALE)))?;
            drop(e);
            match den {
                Some((den, f)) => {
                    let inv = self.narrow(b, den, f, b.level(&mixed[0]))?;
                    for m in mixed {
                        heads_out.push(b.mul(&m, &inv)?);
                    }
                }
                None => heads_out.extend(mixed),
            }
        }
        let refs: Vec<&B::Value> = heads_out.iter().collect();
        let attn = b.linear(&refs, &self.output_projection(), d)?;
        x.iter().zip(attn).zip(&w.bo).map(|((xi, a), &c)| b.add(xi, &b.add_scalar(&a, c)?)).collect()
    }

    /// W_o, with each head's columns divided by a constant denominator, or by the narrow
    /// scale of the row sum's reciprocal.
    fn output_projection(&self) -> Vec<f64> {
        let heads = self.shape.heads;
        let divisors = match &self.approx.denominator {
            Denominator::RowSum(f) => vec![f.narrow_scale(); heads],
            Denominator::Constant(c) => c.clone(),
        };
        let dh = self.shape.head_dim();
        self.weights
            .wo
            .chunks(self.shape.width)
            .flat_map(|row| row.iter().enumerate().map(|(f, x)| x / divisors[f / dh]).collect::<Vec<_>>())
            .collect()
    }

    /// N2, FC1, GELU, FC2 and the residual. The hidden layer streams in chunks of `width`
    /// units, each taken through FC2 and added to the output before the next is made: never
    /// more hidden values alive than the block's own width (four times fewer for a ViT).
    fn mlp<B: Backend>(&self, b: &B, valid: &[f64], x1: &[B::Value]) -> Result<Vec<B::Value>> {
        let BlockShape { width: d, mlp: m, .. } = self.shape;
        let w = &self.weights;
        let xhat = self.normalise(b, 1, valid, x1)?;
        let xr: Vec<&B::Value> = xhat.values.iter().collect();
        let quadratic = self.quadratic_gelu();
        let mut y: Option<Vec<B::Value>> = None;
        let parts = m.div_ceil(d);
        for start in (0..m).step_by(d) {
            b.stage(&format!("MLP part {}/{parts}", start / d + 1))?;
            let hidden = start..(start + d).min(m);
            let z = linear(
                b,
                &xr,
                fold_norm(
                    &w.w1,
                    &w.b1,
                    &w.ln2_gamma,
                    &w.ln2_beta,
                    &xhat.scale,
                    &xhat.offset,
                    hidden.clone(),
                    1.0,
                ),
            )?;
            // FC2's columns for this chunk.
            let w2 = |scale: f64| -> Vec<f64> {
                w.w2.chunks(m).flat_map(|row| row[hidden.clone()].iter().map(move |x| scale * x)).collect()
            };
            let part = match quadratic {
                Some([_, c1, c2]) => {
                    let z2 = z.iter().map(|v| b.square(v)).collect::<Result<Vec<_>>>()?;
                    let inputs: Vec<&B::Value> = z2.iter().chain(&z).collect();
                    let (a2, a1) = (w2(c2), w2(c1));
                    let weights: Vec<f64> = a2
                        .chunks(hidden.len())
                        .zip(a1.chunks(hidden.len()))
                        .flat_map(|(r2, r1)| r2.iter().chain(r1).copied())
                        .collect();
                    b.linear(&inputs, &weights, d)?
                }
                None => {
                    let g = z.iter().map(|v| self.approx.gelu.evaluate(b, v)).collect::<Result<Vec<_>>>()?;
                    b.linear(&g.iter().collect::<Vec<_>>(), &w2(1.0), d)?
                }
            };
            y = Some(match y {
                None => part,
                Some(y) => y.iter().zip(&part).map(|(a, p)| b.add(a, p)).collect::<Result<Vec<_>>>()?,
            });
        }
        let y = y.expect("the MLP has at least one hidden unit");
        // FC2's bias, plus GELU's constant term through FC2 when it folded.
        let c0 = quadratic.map_or(0.0, |[c0, _, _]| c0);
        let consts = w.w2.chunks(m).zip(&w.b2).map(|(row, bias)| bias + c0 * row.iter().sum::<f64>());
        x1.iter().zip(y.iter().zip(consts)).map(|(a, (v, c))| b.add(a, &b.add_scalar(v, c)?)).collect()
    }
}

/// A folded linear layer: `weights` row-major (out, in) and one bias per output.
struct Folded {
    weights: Vec<f64>,
    bias: Vec<f64>,
}

fn linear<B: Backend>(b: &B, x: &[&B::Value], layer: Folded) -> Result<Vec<B::Value>> {
    let out = b.linear(x, &layer.weights, layer.bias.len())?;
    out.iter().zip(&layer.bias).map(|(o, &c)| b.add_scalar(o, c)).collect()
}

/// Rows `rows` of `scale * (W (gamma * x_hat + beta) + b)` as a layer on `z`, where
/// `x_hat = norm_scale * z + norm_offset` per feature: the normalisation's affine part, its
/// statistics (or LayerNorm's factor d) and the attention scale folded into the weights.
#[allow(clippy::too_many_arguments)]
fn fold_norm(
    weight: &[f64],
    bias: &[f64],
    gamma: &[f64],
    beta: &[f64],
    norm_scale: &[f64],
    norm_offset: &[f64],
    rows: std::ops::Range<usize>,
    scale: f64,
) -> Folded {
    let d = gamma.len();
    let mut w = Vec::with_capacity(rows.len() * d);
    let mut c = Vec::with_capacity(rows.len());
    for r in rows {
        let row = &weight[r * d..(r + 1) * d];
        w.extend(row.iter().zip(gamma).zip(norm_scale).map(|((x, g), s)| scale * x * g * s));
        let shift: f64 = row
            .iter()
            .zip(gamma.iter().zip(norm_offset).zip(beta))
            .map(|(x, ((g, o), b))| x * (g * o + b))
            .sum();
        c.push(scale * (bias[r] + shift));
    }
    Folded { weights: w, bias: c }
}

/// `(x - mean) / sqrt(var + eps)` of every row of `width` values: what an owner sends when
/// it normalises a block's input in the clear (the block's N1 is then exact).
pub fn owner_normalise(rows: &[f64], width: usize, eps: f64) -> Result<Vec<f64>> {
    if width == 0 || !rows.len().is_multiple_of(width) || !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::Shape(format!(
            "normalising needs whole rows of {width} values and eps >= 0, got {} values, eps {eps}",
            rows.len()
        )));
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.chunks(width) {
        let mean = row.iter().sum::<f64>() / width as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
        let r = 1.0 / (var + eps).sqrt();
        out.extend(row.iter().map(|v| (v - mean) * r));
    }
    Ok(out)
}

/// x (rows x n_in) W^T + b, W row-major (n_out, n_in).
fn dense(x: &[f64], rows: usize, n_in: usize, w: &[f64], b: &[f64], n_out: usize) -> Vec<f64> {
    let mut out = vec![0.0; rows * n_out];
    for r in 0..rows {
        let xr = &x[r * n_in..(r + 1) * n_in];
        for o in 0..n_out {
            out[r * n_out + o] =
                b[o] + w[o * n_in..(o + 1) * n_in].iter().zip(xr).map(|(a, b)| a * b).sum::<f64>();
        }
    }
    out
}

impl Block {
    /// A copy whose approximation ranges, constants and statistics come from what `x`
    /// (samples of tokens x width, row-major) feeds them, ranges widened by `margin` of their
    /// width on each side. Later approximations see inputs that depend on earlier ones, so
    /// this repeats until every input is inside its range.
    pub fn calibrated(&self, x: &[f64], margin: f64) -> Result<Block> {
        let per = self.shape.tokens * self.shape.width;
        if x.is_empty() || !x.len().is_multiple_of(per) {
            return Err(Error::Shape(format!(
                "calibration data must be whole samples of {per} values, got {}",
                x.len()
            )));
        }
        let mut block = self.clone();
        for pass in 0..8 {
            let mut obs = Observations::default();
            for s in x.chunks(per) {
                // The first pass sees what the exact functions feed each other, so ranges that
                // start far off cannot blow the later passes up.
                obs.extend(block.observe_with(s, pass == 0)?);
            }
            let inside =
                block.approx.approximations().iter().all(|(slot, f)| f.out_of_range(&obs.inputs(slot)) == 0);
            // Learned constants and statistics need a pass that sees the student's own values.
            if inside && pass > 1 {
                return Ok(block);
            }
            block.approx = block.recalibrated(&obs, margin, pass)?;
        }
        Err(Error::Calibration("calibration did not settle: the approximations diverge on this data".into()))
    }

    fn recalibrated(&self, obs: &Observations, margin: f64, pass: usize) -> Result<BlockApprox> {
        let widen = |f: &Approximation, xs: &[f64]| -> Result<Approximation> {
            let (lo, hi) = match f {
                // Positive domains: widen multiplicatively so the range stays positive.
                Approximation::Goldschmidt { .. } | Approximation::InvSqrt { .. } => {
                    let (lo, hi) = calibrated_range(xs, 0.0)?;
                    if lo <= 0.0 {
                        return Err(Error::Calibration(format!(
                            "{} sees a non-positive input {lo} on the calibration data",
                            f.name()
                        )));
                    }
                    (lo / (1.0 + margin), hi * (1.0 + margin))
                }
                _ => calibrated_range(xs, margin)?,
            };
            let (old_lo, old_hi) = f.range();
            // Only ever widen after the first pass, so the iteration settles.
            let range = if pass == 0 { (lo, hi) } else { (lo.min(old_lo), hi.max(old_hi)) };
            f.with_range(range)
        };
        let a = &self.approx;
        let width = self.shape.width;
        Ok(BlockApprox {
            numerator: widen(&a.numerator, &obs.numerator)?,
            denominator: match &a.denominator {
                Denominator::RowSum(f) => Denominator::RowSum(widen(f, &obs.inputs("reciprocal"))?),
                // The mean row sum per head (the exact softmax's sums on the first pass).
                Denominator::Constant(_) => Denominator::Constant(
                    obs.row_sums.iter().map(|s| s.iter().sum::<f64>() / s.len().max(1) as f64).collect(),
                ),
            },
            norm: match &a.norm {
                Norm::LayerNorm(f) => Norm::LayerNorm(widen(f, &obs.inv_sqrt)?),
                Norm::Affine { .. } => Norm::Affine {
                    norm1: AffineStats::from_rows(&obs.norm_inputs[0], width, a.eps)?,
                    norm2: AffineStats::from_rows(&obs.norm_inputs[1], width, a.eps)?,
                },
            },
            gelu: widen(&a.gelu, &obs.gelu)?,
            eps: a.eps,
        })
    }
}

impl Block {
    /// Refuses ranges that do not contain what `x` (whole samples) feeds the approximations:
    /// outside its range an approximation computes garbage, silently.
    pub fn check_ranges(&self, x: &[f64]) -> Result<()> {
        let obs = self.observe_batch(x)?;
        let mut outside = Vec::new();
        for (slot, f) in self.approx.approximations() {
            let seen = obs.inputs(slot);
            if f.out_of_range(&seen) > 0 {
                let (a, b) = f.range();
                outside.push(format!(
                    "the {slot}'s range [{a:.4}, {b:.4}] does not contain {}",
                    describe_inputs(&seen)
                ));
            }
        }
        if outside.is_empty() {
            Ok(())
        } else {
            Err(Error::Calibration(format!(
                "{} of this data; calibrate the block on it (Block.calibrated)",
                outside.join(", and ")
            )))
        }
    }
}

impl Observations {
    /// What the approximation in `slot` saw.
    pub fn inputs(&self, slot: &str) -> std::borrow::Cow<'_, [f64]> {
        match slot {
            "numerator" => (&self.numerator[..]).into(),
            "reciprocal" => self.row_sums.concat().into(),
            "inv_sqrt" => (&self.inv_sqrt[..]).into(),
            "gelu" => (&self.gelu[..]).into(),
            _ => (&[][..]).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ckks::{Complex, Context, EvaluationKeys, ParameterSpec, Parameters, Plaintext, SecretKey};
    use crate::he::encrypted::Encrypted;

    /// ViT-B's variance factor 1 / 768^3 rounds to 2 units in one product at a 30-bit scale
    /// (a 16 % error); in steps it keeps the variance to 1e-5.
    #[test]
    fn a_tiny_constant_keeps_its_precision_in_steps() {
        let mut spec = ParameterSpec::new(11, 6, 30);
        spec.insecure = true;
        let ctx = Context::from_parameters(Parameters::new(&spec).unwrap()).unwrap();
        let sk = Arc::new(SecretKey::generate(&ctx));
        let keys = EvaluationKeys::new(&ctx, None, Some(Arc::new(sk.relin_key())), None).unwrap();
        let b = Encrypted::new(&keys).unwrap().with_refresher(sk.clone());
        let c = variance_factor(768);
        assert_eq!(constant_steps(c), 3);
        let var = 1.3;
        let slots = vec![Complex::new(var / c, 0.0); ctx.params.slots()];
        let ct = sk.encrypt_symmetric(&Plaintext::encode(&ctx, &slots, None, None).unwrap()).unwrap();
        let stepped = sk.decrypt(&scale_narrow(&b, ct.clone(), c).unwrap()).unwrap().decode()[0].re;
        assert!((stepped - var).abs() < 1e-5 * var, "in steps: {stepped}");
        let once = sk.decrypt(&b.mul_scalar(&ct, c).unwrap()).unwrap().decode()[0].re;
        assert!((once - var).abs() > 1e-2 * var, "one product was expected to lose precision: {once}");
    }
}
