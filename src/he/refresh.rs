//! Masked refresh: new levels for a ciphertext without revealing its value to anyone.
//!
//! The LSP drops the ciphertext to a low level l (modulus Q_l < 2^125) and adds to c_0 a
//! polynomial R with integer coefficients uniform in [-2^k, 2^k), k = log2(Q_l) - 3. The owner
//! decrypts m + e + R: every coefficient is within 2^-(k - log2|m + e|) in statistical
//! distance of uniform, so the owner learns nothing about m (nor about the noise e, which
//! depends on the model). It re-encrypts that integer polynomial at the top level, scaled by
//! f = (top scale) / (the request's scale) and rounded, and the LSP subtracts round(f R): the
//! value comes back at the top level and the top level's canonical scale, so a refresh costs
//! no level at all. The LSP chooses f through the scale it writes in the request (the target
//! scale of the result, over the refresh level's); the rounding adds at most one unit to a
//! coefficient. The decrypted value is never decoded to slots, so no precision is lost.
//!
//! Security margin: with a 30-bit scale and values below 2^20, |m + e| < 2^52 and k >= 87,
//! so each coefficient is 2^-35 or closer to uniform; larger Q_l gives more.

use rand_core::RngCore;

use crate::ckks::evaluator::drop_level;
use crate::ckks::{Ciphertext, Context, Plaintext, SecretKey};
use crate::error::{Error, Result};
use crate::math::crt::CrtComposer;
use crate::math::poly::RnsPoly;
use crate::math::sampling::os_rng;
use crate::parallel;

/// The owner's half of a refresh: decrypt each masked ciphertext and re-encrypt the same
/// integer polynomial at the top level.
pub trait Refresher: Send + Sync {
    fn refresh(&self, masked: Vec<Ciphertext>) -> Result<Vec<Ciphertext>>;
}

/// The LSP's secret for one masked ciphertext.
pub struct Mask {
    coeffs: Vec<i128>,
    /// The factor the owner lifts by (what the request's scale tells it).
    factor: f64,
    /// The scale the refreshed value lands on.
    target: f64,
}

/// Lift factors an owner accepts: enough for any target scale of the top level (canonical or
/// half of it for complex packing), and small enough that a lifted coefficient fits in i128.
const FACTOR_RANGE: (f64, f64) = (1.0 / 16.0, 4.0);

/// round(v * factor), exact for the binary fraction `factor` is (no f64 rounding of `v`):
/// `v` below 2^125 in magnitude, `factor` in [`FACTOR_RANGE`].
fn scale_round(v: i128, factor: f64) -> Result<i128> {
    if !(FACTOR_RANGE.0..=FACTOR_RANGE.1).contains(&factor) {
        return Err(Error::Malformed(format!("a refresh lift factor {factor} is out of range")));
    }
    // factor = mantissa * 2^-shift with a 53-bit mantissa (factor is a normal number here).
    let bits = factor.to_bits();
    let mantissa = ((bits & ((1u64 << 52) - 1)) | (1u64 << 52)) as u128;
    let shift = 1075 - ((bits >> 52) & 0x7ff) as u32;
    let a = v.unsigned_abs();
    let (high, low) = (a >> 64, a & u64::MAX as u128);
    // a * mantissa = top * 2^64 + bottom, then + 2^(shift - 1) to round half up.
    let low_product = low * mantissa;
    let top = high * mantissa + (low_product >> 64);
    let bottom = (low_product & u64::MAX as u128) + (1u128 << (shift - 1));
    let top = top + (bottom >> 64);
    let bottom = bottom & u64::MAX as u128;
    let magnitude = top
        .checked_shl(64 - shift)
        .filter(|t| t >> (64 - shift) == top)
        .map(|t| t | (bottom >> shift))
        .filter(|&m| m < 1u128 << 126)
        .ok_or_else(|| Error::Malformed("a refreshed coefficient overflows".into()))?;
    Ok(if v < 0 { -(magnitude as i128) } else { magnitude as i128 })
}

/// The highest level whose modulus is below 2^125 (so it lifts exactly to 128-bit integers).
pub fn refresh_level(ctx: &Context) -> usize {
    let mut bits = 0.0;
    let mut level = 0;
    for (l, &q) in ctx.params.q.iter().enumerate() {
        bits += (q as f64).log2();
        if bits >= 125.0 {
            break;
        }
        level = l;
    }
    level
}

fn mask_bits(ctx: &Context, level: usize) -> u32 {
    let bits: f64 = ctx.params.q[..=level].iter().map(|&q| (q as f64).log2()).sum();
    bits.floor() as u32 - 3
}

/// Drops `ct` to the refresh level and adds a fresh uniform mask to it; the refreshed value
/// will land on the top level's canonical scale.
pub fn mask(ct: &Ciphertext) -> Result<(Ciphertext, Mask)> {
    let ctx = ct.context();
    mask_for(ct, ctx.scale_at(ctx.max_level()))
}

/// [`mask`] for a refreshed value at the top level and scale `target`.
pub fn mask_for(ct: &Ciphertext, target: f64) -> Result<(Ciphertext, Mask)> {
    let ctx = ct.context();
    let level = refresh_level(ctx);
    if ct.level() < level {
        return Err(Error::OutOfLevels(format!(
            "a masked refresh needs the ciphertext at level {level} or above, it is at {}",
            ct.level()
        )));
    }
    if ct.size() != 2 {
        return Err(Error::InvalidInput("relinearise before refreshing".into()));
    }
    let k = mask_bits(ctx, level);
    let mut rng = os_rng();
    let coeffs: Vec<i128> = (0..ctx.degree())
        .map(|_| {
            let r = ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128) & ((1u128 << (k + 1)) - 1);
            r as i128 - (1i128 << k)
        })
        .collect();
    let mut masked = drop_level(ct, level)?;
    let r = integer_poly(ctx, &coeffs, level);
    parallel::install(|| masked.polys[0].add_assign(&r, ctx.q_moduli(level)));
    masked.seed = None;
    let factor = target / masked.scale();
    // The request carries the scale that makes the owner lift by `factor`.
    masked.scale = ctx.scale_at(ctx.max_level()) / factor;
    Ok((masked, Mask { coeffs, factor, target }))
}

/// Removes the mask from the owner's re-encryption: the value at the top level, on the scale
/// the mask was made for.
pub fn unmask(fresh: &Ciphertext, mask: &Mask) -> Result<Ciphertext> {
    let ctx = fresh.context();
    let top = ctx.max_level();
    if fresh.size() != 2 || fresh.level() != top || fresh.scale() != ctx.scale_at(top) {
        return Err(Error::InvalidInput(
            "the refreshed ciphertext does not match its mask (level, scale or size)".into(),
        ));
    }
    let lifted = mask.coeffs.iter().map(|&c| scale_round(c, mask.factor)).collect::<Result<Vec<_>>>()?;
    let mut out = fresh.clone();
    let r = integer_poly(ctx, &lifted, top);
    parallel::install(|| out.polys[0].sub_assign(&r, ctx.q_moduli(top)));
    out.seed = None;
    out.scale = mask.target;
    Ok(out)
}

/// The polynomial with these integer coefficients, in NTT form at `level`.
pub(crate) fn integer_poly(ctx: &Context, coeffs: &[i128], level: usize) -> RnsPoly {
    let moduli = ctx.q_moduli(level);
    let mut poly = RnsPoly::zero(ctx.degree(), level + 1);
    parallel::install(|| {
        poly.for_each_row(|i, row| {
            let m = moduli[i];
            row.iter_mut().zip(coeffs).for_each(|(x, &c)| *x = m.reduce_i128(c));
        });
        poly.ntt(&ctx.q_ntt(level));
    });
    poly
}

impl Refresher for SecretKey {
    fn refresh(&self, masked: Vec<Ciphertext>) -> Result<Vec<Ciphertext>> {
        let ctx = self.context().clone();
        masked
            .iter()
            .map(|ct| {
                if ct.context() != &ctx {
                    return Err(Error::ParameterMismatch);
                }
                let composer = CrtComposer::new(ctx.q_moduli(ct.level()));
                if !composer.fits_i128() || ct.size() != 2 {
                    return Err(Error::InvalidInput(format!(
                        "a refresh request must be a 2-polynomial ciphertext at a level below 2^125, \
                         got level {}",
                        ct.level()
                    )));
                }
                let pt = self.decrypt(ct)?;
                let mut poly = pt.poly.clone();
                parallel::install(|| poly.intt(&ctx.q_ntt(ct.level())));
                let mut residues = vec![0u64; ct.level() + 1];
                let coeffs: Vec<i128> = (0..ctx.degree())
                    .map(|j| {
                        for (r, row) in residues.iter_mut().zip(poly.rows()) {
                            *r = row[j];
                        }
                        composer.compose_i128(&residues)
                    })
                    .collect();
                let top = ctx.max_level();
                // Lift to the top level's canonical scale by the factor the request asks for.
                let factor = ctx.scale_at(top) / ct.scale();
                let coeffs = coeffs.iter().map(|&c| scale_round(c, factor)).collect::<Result<Vec<_>>>()?;
                let lifted = Plaintext::from_poly(
                    &ctx,
                    integer_poly(&ctx, &coeffs, top),
                    top,
                    ctx.scale_at(top),
                    ct.slots(),
                );
                self.encrypt_symmetric(&lifted)
            })
            .collect()
    }
}

/// LSP side of a whole round trip with an in-process owner (tests, benchmarks, `simulate`-free
/// single-machine runs): mask, let `owner` re-encrypt, unmask. The values come back at the top
/// level and its canonical scale.
pub fn refresh_all(values: Vec<Ciphertext>, owner: &dyn Refresher) -> Result<Vec<Ciphertext>> {
    let scale = values.first().map(|v| v.context().scale_at(v.context().max_level()));
    refresh_all_at(values, owner, scale.unwrap_or(1.0))
}

/// [`refresh_all`] landing on `scale` at the top level.
pub fn refresh_all_at(values: Vec<Ciphertext>, owner: &dyn Refresher, scale: f64) -> Result<Vec<Ciphertext>> {
    let (masked, masks): (Vec<_>, Vec<_>) =
        values.iter().map(|v| mask_for(v, scale)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
    let fresh = owner.refresh(masked)?;
    if fresh.len() != masks.len() {
        return Err(Error::InvalidInput(format!(
            "the owner returned {} ciphertexts for {} refresh requests",
            fresh.len(),
            masks.len()
        )));
    }
    fresh.iter().zip(&masks).map(|(f, m)| unmask(f, m)).collect()
}
