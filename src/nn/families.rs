//! The block's approximation families: what replaces the softmax's exp, what the softmax
//! divides by, how the two normalisations are computed, and GELU's stand-in.
//!
//! Each family trades accuracy for levels and key switches; distillation decides whether the
//! trade holds. What each costs on the wide path (every feature of every token):
//! - numerator: exp by a polynomial (5-7 levels, several products per score) or
//!   `(x + c)^p` (`log2 p` levels, one product per score for 2Quad);
//! - denominator: the row sum inverted on a narrow chain (one ciphertext per group and head,
//!   one level on the wide path), or a learned constant per head folded into `W_o` (nothing);
//! - normalisation: LayerNorm (1/sqrt on a narrow chain, one level on the wide path), or a
//!   per-feature affine map with calibrated statistics folded into the next weights (nothing).

use crate::error::{Error, Result};

use super::approx::Approximation;

/// What the softmax divides its numerators by.
#[derive(Clone, Debug, PartialEq)]
pub enum Denominator {
    /// The row sum, inverted by an approximation of 1/x.
    RowSum(Approximation),
    /// One constant per head (learned in distillation, as in Powerformer's BRPmax): no
    /// reciprocal at all, `1 / c` folds into the output projection.
    Constant(Vec<f64>),
}

/// Per-feature statistics of a normalisation's input: `x_hat = (x - mean) * inv_std`.
#[derive(Clone, Debug, PartialEq)]
pub struct AffineStats {
    pub mean: Vec<f64>,
    pub inv_std: Vec<f64>,
}

impl AffineStats {
    /// The identity (mean 0, inverse deviation 1): a placeholder until calibration.
    pub fn identity(width: usize) -> Self {
        AffineStats { mean: vec![0.0; width], inv_std: vec![1.0; width] }
    }

    /// Mean and `1 / sqrt(var + eps)` of each feature over `rows` (row-major, `width` wide).
    pub fn from_rows(rows: &[f64], width: usize, eps: f64) -> Result<Self> {
        if width == 0 || rows.is_empty() || !rows.len().is_multiple_of(width) {
            return Err(Error::Shape(format!(
                "affine statistics need whole rows of {width} features, got {} values",
                rows.len()
            )));
        }
        let n = (rows.len() / width) as f64;
        let mut mean = vec![0.0; width];
        for row in rows.chunks(width) {
            mean.iter_mut().zip(row).for_each(|(m, x)| *m += x / n);
        }
        let mut var = vec![0.0; width];
        for row in rows.chunks(width) {
            var.iter_mut().zip(row).zip(&mean).for_each(|((v, x), m)| *v += (x - m).powi(2) / n);
        }
        let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let stats = AffineStats { mean, inv_std };
        stats.check(width, "calibrated")?;
        Ok(stats)
    }

    fn check(&self, width: usize, which: &str) -> Result<()> {
        if self.mean.len() != width || self.inv_std.len() != width {
            return Err(Error::Shape(format!(
                "{which} affine statistics need {width} means and inverse deviations, got {} and {}",
                self.mean.len(),
                self.inv_std.len()
            )));
        }
        if self.mean.iter().chain(&self.inv_std).any(|v| !v.is_finite())
            || self.inv_std.iter().any(|&v| v <= 0.0)
        {
            return Err(Error::NotFinite(format!(
                "{which} affine statistics must be finite, with positive inverse deviations"
            )));
        }
        Ok(())
    }
}

/// How the block's two normalisations (before attention, before the MLP) are computed.
#[derive(Clone, Debug, PartialEq)]
pub enum Norm {
    /// LayerNorm per token, `1 / sqrt(var + eps)` approximated (shared by both norms).
    LayerNorm(Approximation),
    /// A fixed per-feature affine map each (BatchNorm-like), distilled in place of LayerNorm.
    Affine { norm1: AffineStats, norm2: AffineStats },
}

/// The approximations one block uses.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockApprox {
    /// The softmax's numerator: an exp approximation or a power.
    pub numerator: Approximation,
    pub denominator: Denominator,
    pub norm: Norm,
    /// GELU's stand-in.
    pub gelu: Approximation,
    /// LayerNorm's epsilon (also what the owner adds when it normalises).
    pub eps: f64,
}

impl BlockApprox {
    /// Checks every family against the block's width and heads.
    pub fn check(&self, width: usize, heads: usize) -> Result<()> {
        let function = |a: &Approximation, want: &[&str], slot: &str| {
            if want.contains(&a.function()) {
                Ok(())
            } else {
                Err(Error::Spec(format!(
                    "the {slot} must approximate {}, got {}",
                    want.join(" or "),
                    a.name()
                )))
            }
        };
        function(&self.numerator, &["exp", "power"], "softmax numerator")?;
        function(&self.gelu, &["gelu"], "activation")?;
        match &self.denominator {
            Denominator::RowSum(r) => function(r, &["reciprocal"], "softmax denominator")?,
            Denominator::Constant(c) => {
                if c.len() != heads || c.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
                    return Err(Error::OutOfRange(format!(
                        "a constant denominator needs one finite positive value per head ({heads}), got {c:?}"
                    )));
                }
            }
        }
        match &self.norm {
            Norm::LayerNorm(r) => function(r, &["inv_sqrt"], "LayerNorm")?,
            Norm::Affine { norm1, norm2 } => {
                norm1.check(width, "norm1")?;
                norm2.check(width, "norm2")?;
            }
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(Error::OutOfRange(format!("eps must be finite and >= 0, got {}", self.eps)));
        }
        Ok(())
    }

    /// Every scalar approximation with its slot name (for reports and calibration).
    pub fn approximations(&self) -> Vec<(&'static str, &Approximation)> {
        let mut out = vec![("numerator", &self.numerator)];
        if let Denominator::RowSum(r) = &self.denominator {
            out.push(("reciprocal", r));
        }
        if let Norm::LayerNorm(r) = &self.norm {
            out.push(("inv_sqrt", r));
        }
        out.push(("gelu", &self.gelu));
        out
    }
}
