//! The FHE-friendly pre-LayerNorm transformer block (ViT / BERT encoder layer).
//!
//! y = x1 + W2 gelu(W1 LN2(x1) + b1) + b2,  x1 = x + Wo Attn(LN1(x)) + bo, with softmax's exp
//! and 1/sum, LayerNorm's 1/sqrt and GELU all replaced by the [`Approximation`]s in
//! [`BlockApprox`]. [`Block::forward`] is the reference in f64 for one sample;
//! [`Block::evaluate`] runs the same function on any [`Backend`] in the token layout: on
//! ciphertexts (the LSP), on the f64 mirror, or on the tracer for the cost.
//!
//! Levels are spent only where the wide activations need them. Each layer norm's variance and
//! each softmax denominator is one ciphertext per group: their deep scalar functions run on a
//! masked refresh when the levels are short, so 1/sqrt and 1/x cost round trips of a few
//! ciphertexts instead of levels of the whole block. If a stage (attention, MLP) still does
//! not fit, its input is refreshed the same way; nothing is ever decrypted in the clear.

use crate::error::{Error, Result};
use crate::he::attention::DiagonalPlan;
use crate::he::backend::Backend;
use crate::he::layout::TokenLayout;
use crate::he::polynomial::Basis;

use super::approx::{self, calibrated_range, Approximation};

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
            return Err(Error::InvalidInput(format!(
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

/// The approximations a block uses; `eps` is LayerNorm's epsilon.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockApprox {
    pub exp: Approximation,
    pub reciprocal: Approximation,
    pub inv_sqrt: Approximation,
    pub gelu: Approximation,
    pub eps: f64,
}

/// Inputs seen by each approximation, for calibration and range checks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observations {
    pub exp: Vec<f64>,
    pub reciprocal: Vec<f64>,
    pub inv_sqrt: Vec<f64>,
    pub gelu: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub shape: BlockShape,
    pub weights: BlockWeights,
    pub approx: BlockApprox,
}

/// Levels each part of the block consumes, from the approximations' specs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockDepth {
    /// From the block input at the top level to x1 (LN1, QKV, scores, exp, A V, 1/sum, output
    /// projection).
    pub attention: usize,
    /// From x1 to the output (LN2, FC1, GELU, FC2), x1 being below the top.
    pub mlp: usize,
    /// Narrow chains run on refreshed values: LN's 1/sqrt (with its input scaling) and 1/sum.
    pub inv_sqrt: usize,
    pub reciprocal: usize,
}

impl Block {
    pub fn new(shape: BlockShape, weights: BlockWeights, approx: BlockApprox) -> Result<Self> {
        for (name, v, len) in weights.tensors(&shape) {
            if v.len() != len {
                return Err(Error::InvalidInput(format!(
                    "{name} has {} values, a block of width {} and mlp {} needs {len}",
                    v.len(),
                    shape.width,
                    shape.mlp
                )));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(Error::InvalidInput(format!("{name} contains a non-finite value")));
            }
        }
        if !(approx.eps.is_finite() && approx.eps >= 0.0) {
            return Err(Error::InvalidInput(format!("eps must be finite and >= 0, got {}", approx.eps)));
        }
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
        let gelu = if self.quadratic_gelu().is_some() { 1 } else { self.approx.gelu.depth() };
        BlockDepth {
            // LN's 1/sqrt comes back from its refresh one level below the top, so a stage that
            // starts at the top spends two levels on the normalisation.
            attention: 2 + 1 + 1 + self.approx.exp.depth_masked() + 1 + 1 + 1,
            mlp: 1 + 1 + gelu + 1,
            inv_sqrt: 1 + self.approx.inv_sqrt.depth(),
            reciprocal: self.approx.reciprocal.depth(),
        }
    }

    // ---- the reference, one sample at a time --------------------------------------------

    /// One sample (tokens x width, row-major) through the block in f64.
    pub fn forward(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.forward_observed(x, &mut None, false)
    }

    /// The block with the exact functions (softmax, 1/sqrt, GELU) instead of the approximations:
    /// the teacher's arithmetic on the student's weights.
    pub fn forward_exact(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.forward_observed(x, &mut None, true)
    }

    /// Records the input of every approximation while running [`Block::forward`].
    pub fn observe(&self, x: &[f64]) -> Result<Observations> {
        self.observe_with(x, false)
    }

    fn observe_with(&self, x: &[f64], exact: bool) -> Result<Observations> {
        let mut obs = Some(Observations::default());
        self.forward_observed(x, &mut obs, exact)?;
        Ok(obs.unwrap_or_default())
    }

    fn forward_observed(&self, x: &[f64], obs: &mut Option<Observations>, exact: bool) -> Result<Vec<f64>> {
        let BlockShape { tokens: t, width: d, heads, mlp } = self.shape;
        if x.len() != t * d {
            return Err(Error::InvalidInput(format!(
                "a sample has {t} x {d} = {} values, got {}",
                t * d,
                x.len()
            )));
        }
        let w = &self.weights;
        let a = &self.approx;
        let f = |g: &Approximation, v: f64| if exact { g.exact(v) } else { g.eval(v) };
        let dh = self.shape.head_dim();
        let ln1 = self.layer_norm_ref(x, &w.ln1_gamma, &w.ln1_beta, obs, exact);
        let q = dense(&ln1, t, d, &w.wq, &w.bq, d);
        let k = dense(&ln1, t, d, &w.wk, &w.bk, d);
        let v = dense(&ln1, t, d, &w.wv, &w.bv, d);
        let mut o = vec![0.0; t * d];
        let scale = 1.0 / (dh as f64).sqrt();
        for h in 0..heads {
            for i in 0..t {
                let scores: Vec<f64> = (0..t)
                    .map(|j| {
                        (0..dh).map(|f| q[i * d + h * dh + f] * k[j * d + h * dh + f]).sum::<f64>() * scale
                    })
                    .collect();
                let e: Vec<f64> = scores.iter().map(|&s| f(&a.exp, s)).collect();
                let den: f64 = e.iter().sum();
                let inv = f(&a.reciprocal, den);
                if let Some(o) = obs {
                    o.exp.extend(&scores);
                    o.reciprocal.push(den);
                }
                for f in 0..dh {
                    let mixed: f64 = (0..t).map(|j| e[j] * v[j * d + h * dh + f]).sum();
                    o[i * d + h * dh + f] = mixed * inv;
                }
            }
        }
        let attn = dense(&o, t, d, &w.wo, &w.bo, d);
        let x1: Vec<f64> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
        let ln2 = self.layer_norm_ref(&x1, &w.ln2_gamma, &w.ln2_beta, obs, exact);
        let z = dense(&ln2, t, d, &w.w1, &w.b1, mlp);
        if let Some(o) = obs {
            o.gelu.extend(&z);
        }
        let g: Vec<f64> = z.iter().map(|&z| f(&a.gelu, z)).collect();
        let y = dense(&g, t, mlp, &w.w2, &w.b2, d);
        Ok(x1.iter().zip(&y).map(|(a, b)| a + b).collect())
    }

    fn layer_norm_ref(
        &self,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
        obs: &mut Option<Observations>,
        exact: bool,
    ) -> Vec<f64> {
        let d = self.shape.width;
        let mut out = vec![0.0; x.len()];
        for (row, dst) in x.chunks(d).zip(out.chunks_mut(d)) {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64 + self.approx.eps;
            if let Some(o) = obs {
                o.inv_sqrt.push(var);
            }
            let r = if exact { self.approx.inv_sqrt.exact(var) } else { self.approx.inv_sqrt.eval(var) };
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
        let s = self.shape;
        if layout.tokens != s.tokens || layout.features != s.width || layout.slots != b.slots() {
            return Err(Error::InvalidInput(format!(
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
        if x.len() != s.width {
            return Err(Error::InvalidInput(format!("expected {} input values, got {}", s.width, x.len())));
        }
        let valid = layout.valid(samples);
        let depth = self.depth();
        let x = self.fit_stage(b, x, depth.attention, "attention")?;
        let x1 = self.attention(b, layout, samples, &valid, &x)?;
        drop(x);
        let x1 = self.fit_stage(b, x1, depth.mlp, "MLP")?;
        self.mlp(b, &valid, &x1)
    }

    /// Refreshes a stage's input if the levels left cannot carry it to the refresh floor.
    fn fit_stage<B: Backend>(
        &self,
        b: &B,
        x: Vec<B::Value>,
        need: usize,
        stage: &str,
    ) -> Result<Vec<B::Value>> {
        let floor = b.refresh_level();
        if b.max_level() < need + floor + 1 {
            return Err(Error::OutOfLevels(format!(
                "the {stage} stage needs {need} levels above the refresh level {floor}, the \
                 parameters have {} in all; use a larger ring or cheaper approximations",
                b.max_level()
            )));
        }
        let refs: Vec<&B::Value> = x.iter().collect();
        if b.lowest_level(&refs) >= need + floor {
            Ok(x)
        } else {
            b.refresh(x)
        }
    }

    /// d (x - mean) / sqrt(var + eps): the layer norm without its affine part, which the next
    /// linear layer absorbs (its weights are scaled by gamma / d).
    fn normalise<B: Backend>(&self, b: &B, valid: &[f64], x: &[B::Value]) -> Result<Vec<B::Value>> {
        let d = self.shape.width as i64;
        let mut iter = x.iter();
        let first = iter.next().expect("width >= 1").clone();
        let sum = iter.try_fold(first, |acc, v| b.add(&acc, v))?;
        let centred = x.iter().map(|v| b.sub(&b.mul_integer(v, d), &sum)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&B::Value> = centred.iter().collect();
        // sum_f (d x_f - sum)^2 = d^3 var.
        let v = b.dot(&refs, &refs)?;
        let var = b.add_scalar(&b.mul_scalar(&v, 1.0 / (d as f64).powi(3))?, self.approx.eps)?;
        let (lo, hi) = self.approx.inv_sqrt.range();
        // Empty slots (no sample) would be far outside the range: give them a harmless value.
        let pad: Vec<f64> = valid.iter().map(|&m| (1.0 - m) * 0.5 * (lo + hi)).collect();
        let var = b.add_plain(&var, &pad)?;
        let r = self.narrow(b, var, &self.approx.inv_sqrt, b.level(&centred[0]))?;
        centred.iter().map(|c| b.mul(c, &r)).collect()
    }

    /// f(value) for a one-ciphertext-per-group value, refreshing before and after f as needed
    /// so the result never sits below `partner_level` (the wide values it multiplies next):
    /// the narrow chain's depth then costs the wide path nothing. Refreshing one ciphertext
    /// per group is cheap; a level of the wide path is not.
    fn narrow<B: Backend>(
        &self,
        b: &B,
        value: B::Value,
        f: &Approximation,
        partner_level: usize,
    ) -> Result<B::Value> {
        let floor = b.refresh_level();
        let target = partner_level.min(b.max_level() - 1);
        let mut value = value;
        if b.level(&value) < f.depth() + floor || b.level(&value) - f.depth() < target {
            value = b.refresh(vec![value])?.remove(0);
        }
        let mut out = f.evaluate(b, &value)?;
        if b.level(&out) < target {
            out = b.refresh(vec![out])?.remove(0);
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
    ) -> Result<Vec<B::Value>> {
        let BlockShape { width: d, heads, .. } = self.shape;
        let dh = self.shape.head_dim();
        let w = &self.weights;
        let xhat = self.normalise(b, valid, x)?;
        let xr: Vec<&B::Value> = xhat.iter().collect();
        let plan = DiagonalPlan::new(layout, samples, None)?;
        let masks = plan.masks();
        let (lo, hi) = self.approx.reciprocal.range();
        let pad: Vec<f64> = valid.iter().map(|&m| (1.0 - m) * 0.5 * (lo + hi)).collect();
        let inv_sqrt_dh = 1.0 / (dh as f64).sqrt();
        let mut heads_out = Vec::with_capacity(d);
        for h in 0..heads {
            let rows = h * dh..(h + 1) * dh;
            let q =
                self.projection(b, &xr, &w.wq, &w.bq, &w.ln1_gamma, &w.ln1_beta, rows.clone(), inv_sqrt_dh)?;
            let k = self.projection(b, &xr, &w.wk, &w.bk, &w.ln1_gamma, &w.ln1_beta, rows.clone(), 1.0)?;
            let scores = plan.scores(b, &q.iter().collect::<Vec<_>>(), &k.iter().collect::<Vec<_>>())?;
            drop((q, k));
            // Each score is freed as soon as its exponential exists: 2T - 1 ciphertexts per head
            // are the block's largest live set.
            let e = scores
                .into_iter()
                .zip(&masks)
                .map(|(s, m)| Ok(self.approx.exp.evaluate_masked(b, &s, &[m])?.remove(0)))
                .collect::<Result<Vec<_>>>()?;
            let den = b.add_plain(&plan.row_sums(b, &e)?, &pad)?;
            // V is made only now, so it is not alive alongside the scores.
            let v = self.projection(b, &xr, &w.wv, &w.bv, &w.ln1_gamma, &w.ln1_beta, rows, 1.0)?;
            let mixed = plan.mix(b, &e, &v.iter().collect::<Vec<_>>())?;
            drop(e);
            let inv = self.narrow(b, den, &self.approx.reciprocal, b.level(&mixed[0]))?;
            for m in mixed {
                heads_out.push(b.mul(&m, &inv)?);
            }
        }
        let refs: Vec<&B::Value> = heads_out.iter().collect();
        let attn = b.linear(&refs, &w.wo, d)?;
        x.iter().zip(attn).zip(&w.bo).map(|((xi, a), &c)| b.add(xi, &b.add_scalar(&a, c)?)).collect()
    }

    /// Rows `rows` of W (LN_gamma x_hat / d + LN_beta) + bias, times `scale`, as one linear layer.
    #[allow(clippy::too_many_arguments)]
    fn projection<B: Backend>(
        &self,
        b: &B,
        xhat: &[&B::Value],
        weight: &[f64],
        bias: &[f64],
        gamma: &[f64],
        beta: &[f64],
        rows: std::ops::Range<usize>,
        scale: f64,
    ) -> Result<Vec<B::Value>> {
        let d = self.shape.width;
        let (folded, folded_bias) = fold_layer_norm(weight, bias, gamma, beta, d, rows, scale);
        let out = b.linear(xhat, &folded, folded_bias.len())?;
        out.iter().zip(&folded_bias).map(|(o, &c)| b.add_scalar(o, c)).collect()
    }

    fn mlp<B: Backend>(&self, b: &B, valid: &[f64], x1: &[B::Value]) -> Result<Vec<B::Value>> {
        let BlockShape { width: d, mlp: m, .. } = self.shape;
        let w = &self.weights;
        let xhat = self.normalise(b, valid, x1)?;
        let xr: Vec<&B::Value> = xhat.iter().collect();
        let z = self.projection(b, &xr, &w.w1, &w.b1, &w.ln2_gamma, &w.ln2_beta, 0..m, 1.0)?;
        drop(xhat);
        let y = match self.quadratic_gelu() {
            Some([c0, c1, c2]) => {
                let z2 = z.iter().map(|v| b.square(v)).collect::<Result<Vec<_>>>()?;
                let inputs: Vec<&B::Value> = z2.iter().chain(&z).collect();
                let mut weights = Vec::with_capacity(2 * m * d);
                for row in w.w2.chunks(m) {
                    weights.extend(row.iter().map(|x| c2 * x));
                    weights.extend(row.iter().map(|x| c1 * x));
                }
                let y = b.linear(&inputs, &weights, d)?;
                let consts: Vec<f64> =
                    w.w2.chunks(m)
                        .zip(&w.b2)
                        .map(|(row, bias)| bias + c0 * row.iter().sum::<f64>())
                        .collect();
                y.iter().zip(consts).map(|(v, c)| b.add_scalar(v, c)).collect::<Result<Vec<_>>>()?
            }
            None => {
                let g = z.iter().map(|v| self.approx.gelu.evaluate(b, v)).collect::<Result<Vec<_>>>()?;
                let y = b.linear(&g.iter().collect::<Vec<_>>(), &w.w2, d)?;
                y.iter().zip(&w.b2).map(|(v, &c)| b.add_scalar(v, c)).collect::<Result<Vec<_>>>()?
            }
        };
        x1.iter().zip(&y).map(|(a, c)| b.add(a, c)).collect()
    }
}

/// W' = scale * W diag(gamma) / d and b' = scale * (W beta + b), rows `rows` only: the layer
/// norm's affine part and the normaliser's factor d folded into the next linear layer.
fn fold_layer_norm(
    weight: &[f64],
    bias: &[f64],
    gamma: &[f64],
    beta: &[f64],
    d: usize,
    rows: std::ops::Range<usize>,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut w = Vec::with_capacity(rows.len() * d);
    let mut c = Vec::with_capacity(rows.len());
    for r in rows {
        let row = &weight[r * d..(r + 1) * d];
        w.extend(row.iter().zip(gamma).map(|(x, g)| scale * x * g / d as f64));
        c.push(scale * (bias[r] + row.iter().zip(beta).map(|(x, b)| x * b).sum::<f64>()));
    }
    (w, c)
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

/// The default approximations, before calibration: the paper's GELU (Quad), exp by a
/// degree-15 Chebyshev fit (5 levels), Goldschmidt 1/x, Chebyshev-plus-Newton 1/sqrt. Ranges are placeholders until
/// [`Block::calibrated`] sets them from data.
pub fn default_approx() -> BlockApprox {
    BlockApprox {
        exp: approx::exp_chebyshev(-8.0, 4.0, 15).expect("valid constants"),
        reciprocal: approx::goldschmidt(9, (1.0, 256.0)).expect("valid constants"),
        inv_sqrt: approx::inv_sqrt(0.05, 5.0, 31, 2).expect("valid constants"),
        gelu: approx::gelu_quad(),
        eps: 1e-6,
    }
}

/// The paper's choices: exp by Taylor degree 6, 1/x by 7 Goldschmidt iterations, Quad GELU
/// (its 1/sqrt is unspecified; ours). Ranges are placeholders until calibration.
pub fn paper_approx() -> BlockApprox {
    BlockApprox {
        exp: approx::exp_taylor(6, (-2.0, 2.0)).expect("valid constants"),
        reciprocal: approx::goldschmidt(7, (1.0, 256.0)).expect("valid constants"),
        ..default_approx()
    }
}

impl Block {
    /// A copy whose approximation ranges cover what `x` (samples of tokens x width, row-major)
    /// feeds them, widened by `margin` of each range's width. Later approximations see inputs
    /// that depend on earlier ones, so this repeats until every input is inside its range.
    pub fn calibrated(&self, x: &[f64], margin: f64) -> Result<Block> {
        let per = self.shape.tokens * self.shape.width;
        if x.is_empty() || !x.len().is_multiple_of(per) {
            return Err(Error::InvalidInput(format!(
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
                let o = block.observe_with(s, pass == 0)?;
                obs.exp.extend(o.exp);
                obs.reciprocal.extend(o.reciprocal);
                obs.inv_sqrt.extend(o.inv_sqrt);
                obs.gelu.extend(o.gelu);
            }
            let a = &block.approx;
            let inside = a.exp.out_of_range(&obs.exp) == 0
                && a.reciprocal.out_of_range(&obs.reciprocal) == 0
                && a.inv_sqrt.out_of_range(&obs.inv_sqrt) == 0
                && a.gelu.out_of_range(&obs.gelu) == 0;
            if inside && pass > 0 {
                return Ok(block);
            }
            let widen = |f: &Approximation, xs: &[f64]| -> Result<Approximation> {
                let (lo, hi) = match f {
                    // Positive domains: widen multiplicatively so the range stays positive.
                    Approximation::Goldschmidt { .. } | Approximation::InvSqrt { .. } => {
                        let (lo, hi) = calibrated_range(xs, 0.0)?;
                        if lo <= 0.0 {
                            return Err(Error::InvalidInput(format!(
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
            block.approx = BlockApprox {
                exp: widen(&a.exp, &obs.exp)?,
                reciprocal: widen(&a.reciprocal, &obs.reciprocal)?,
                inv_sqrt: widen(&a.inv_sqrt, &obs.inv_sqrt)?,
                gelu: widen(&a.gelu, &obs.gelu)?,
                eps: a.eps,
            };
        }
        Err(Error::InvalidInput("calibration did not settle: the approximations diverge on this data".into()))
    }
}
