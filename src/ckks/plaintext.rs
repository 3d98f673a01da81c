//! Encoded messages: slot values scaled, rounded and reduced into the RNS basis (NTT form).

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::math::crt::CrtComposer;
use crate::math::poly::RnsPoly;

use super::complex::Complex;
use super::context::Context;

#[derive(Clone, Debug)]
pub struct Plaintext {
    pub(crate) ctx: Context,
    pub(crate) poly: RnsPoly,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    pub(crate) slots: usize,
    /// floor(w 2^64 / q) of every residue w, made when the plaintext is encoded (or at its
    /// first product): a product then costs two word products per residue instead of a
    /// 128-bit Barrett reduction.
    shoup: OnceLock<RnsPoly>,
}

impl Plaintext {
    pub fn level(&self) -> usize {
        self.level
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Encodes up to N/2 values at `level` (default: the top) and `scale` (default: the level's
    /// canonical scale). Fewer values than a power of two are padded with zeros.
    pub fn encode(
        ctx: &Context,
        values: &[Complex],
        level: Option<usize>,
        scale: Option<f64>,
    ) -> Result<Self> {
        let level = check_level(ctx, level)?;
        let scale = scale.unwrap_or_else(|| ctx.scale_at(level));
        if !(scale.is_finite() && scale >= 1.0) {
            return Err(Error::OutOfRange(format!("scale must be a finite number >= 1, got {scale}")));
        }
        let slots = padded_slots(ctx, values.len())?;
        if let Some(bad) = values.iter().position(|z| !z.is_finite()) {
            return Err(Error::NotFinite(format!("value at index {bad} is not finite")));
        }
        let mut padded = values.to_vec();
        padded.resize(slots, Complex::default());
        let coeffs = ctx.encoder.embed(&padded);
        let largest = coeffs.iter().fold(0f64, |m, c| m.max(c.abs()));
        let max = largest * scale;
        // The scaled message must stay well inside (-Q/2, Q/2) and inside i128.
        let log_q: f64 = ctx.params.q[..=level].iter().map(|&q| (q as f64).log2()).sum();
        if max >= 2f64.powf((log_q - 2.0).min(126.0)) {
            return Err(Error::OutOfRange(format!(
                "values too large: coefficients up to {largest:.4e} at scale 2^{:.1} reach 2^{:.1}, \
                 beyond level {level} (2^{log_q:.1}) or 2^126",
                scale.log2(),
                max.log2()
            )));
        }
        let moduli = ctx.q_moduli(level);
        let n = ctx.degree();
        let mut poly = RnsPoly::zero(n, level + 1);
        let small = max < 9.0e18;
        poly.for_each_row(|i, row| {
            let m = moduli[i];
            for (x, &c) in row.iter_mut().zip(&coeffs) {
                let v = (c * scale).round();
                *x = if small { m.reduce_i64(v as i64) } else { m.reduce_i128(v as i128) };
            }
        });
        poly.ntt(&ctx.q_ntt(level));
        let pt = Plaintext::from_poly(ctx, poly, level, scale, slots);
        // An encoded plaintext is there to be multiplied: its Shoup form now, beside the NTT
        // that dominates encoding, so even its first product is the cheap one.
        pt.shoup_form();
        Ok(pt)
    }

    /// A plaintext whose polynomial is given in NTT form (decryption output).
    pub(crate) fn from_poly(ctx: &Context, poly: RnsPoly, level: usize, scale: f64, slots: usize) -> Self {
        Plaintext { ctx: ctx.clone(), poly, level, scale, slots, shoup: OnceLock::new() }
    }

    /// The Shoup companion of [`Plaintext::poly`] (see the field).
    pub(crate) fn shoup_form(&self) -> &RnsPoly {
        self.shoup.get_or_init(|| self.poly.shoup_form(self.ctx.q_moduli(self.level)))
    }

    /// The slot values (first `slots()` of them).
    pub fn decode(&self) -> Vec<Complex> {
        let ctx = &self.ctx;
        let mut coeff = self.poly.clone();
        crate::parallel::install(|| coeff.intt(&ctx.q_ntt(self.level)));
        let n = ctx.degree();
        let composer = CrtComposer::new(ctx.q_moduli(self.level));
        let gap = n / 2 / self.slots;
        // Only the coefficients the sparse packing uses are composed.
        let used: Vec<usize> = (0..n / 2).step_by(gap).chain((n / 2..n).step_by(gap)).collect();
        let composed: Vec<f64> = crate::parallel::install(|| {
            used.par_iter()
                .map_init(
                    || vec![0u64; self.level + 1],
                    |residues, &i| {
                        for (r, row) in residues.iter_mut().zip(coeff.rows()) {
                            *r = row[i];
                        }
                        composer.compose(residues) / self.scale
                    },
                )
                .collect()
        });
        let mut values = vec![0f64; n];
        for (&i, v) in used.iter().zip(composed) {
            values[i] = v;
        }
        ctx.encoder.project(&values, self.slots)
    }
}

pub(crate) fn check_level(ctx: &Context, level: Option<usize>) -> Result<usize> {
    let level = level.unwrap_or(ctx.max_level());
    if level > ctx.max_level() {
        return Err(Error::OutOfRange(format!("level {level} exceeds the maximum {}", ctx.max_level())));
    }
    Ok(level)
}

fn padded_slots(ctx: &Context, count: usize) -> Result<usize> {
    let max = ctx.params.slots();
    if count == 0 || count > max {
        return Err(Error::Shape(format!("expected between 1 and {max} values, got {count}")));
    }
    Ok(count.next_power_of_two())
}
