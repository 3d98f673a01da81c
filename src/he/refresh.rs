//! Masked refresh: new levels for a ciphertext without revealing its value to anyone.
//!
//! The LSP drops the ciphertext to a low level l (modulus Q_l < 2^125) and adds to c_0 a
//! polynomial R with integer coefficients uniform in [-2^k, 2^k), k = log2(Q_l) - 3. The owner
//! decrypts m + e + R: every coefficient is within 2^-(k - log2|m + e|) in statistical
//! distance of uniform, so the owner learns nothing about m (nor about the noise e, which
//! depends on the model). It re-encrypts that integer polynomial at the top level, and the
//! LSP subtracts R. The decrypted value is never decoded to slots, so no precision is lost.
//!
//! Security margin: with a 30-bit scale and values below 2^20, |m + e| < 2^52 and k >= 87,
//! so each coefficient is 2^-35 or closer to uniform; larger Q_l gives more.

use rand_core::RngCore;

use crate::ckks::evaluator::{adjust_to, drop_level};
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
    scale: f64,
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

/// Drops `ct` to the refresh level and adds a fresh uniform mask to it.
pub fn mask(ct: &Ciphertext) -> Result<(Ciphertext, Mask)> {
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
    let scale = masked.scale();
    Ok((masked, Mask { coeffs, scale }))
}

/// Removes the mask from the owner's re-encryption; the result is at the level below the top,
/// at that level's canonical scale.
pub fn unmask(fresh: &Ciphertext, mask: &Mask) -> Result<Ciphertext> {
    let ctx = fresh.context();
    unmask_at(fresh, mask, ctx.scale_at(ctx.max_level() - 1))
}

/// [`unmask`] landing on `scale` instead of the canonical one.
pub fn unmask_at(fresh: &Ciphertext, mask: &Mask, scale: f64) -> Result<Ciphertext> {
    let ctx = fresh.context();
    if fresh.size() != 2 || fresh.level() != ctx.max_level() || fresh.scale() != mask.scale {
        return Err(Error::InvalidInput(
            "the refreshed ciphertext does not match its mask (level, scale or size)".into(),
        ));
    }
    let mut out = fresh.clone();
    let r = integer_poly(ctx, &mask.coeffs, ctx.max_level());
    parallel::install(|| out.polys[0].sub_assign(&r, ctx.q_moduli(ctx.max_level())));
    out.seed = None;
    adjust_to(&out, ctx.max_level() - 1, scale)
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
                let lifted =
                    Plaintext::from_poly(&ctx, integer_poly(&ctx, &coeffs, top), top, ct.scale(), ct.slots());
                self.encrypt_symmetric(&lifted)
            })
            .collect()
    }
}

/// LSP side of a whole round trip with an in-process owner (tests, benchmarks, `simulate`-free
/// single-machine runs): mask, let `owner` re-encrypt, unmask.
pub fn refresh_all(values: Vec<Ciphertext>, owner: &dyn Refresher) -> Result<Vec<Ciphertext>> {
    let scale = values.first().map(|v| v.context().scale_at(v.context().max_level() - 1));
    refresh_all_at(values, owner, scale.unwrap_or(1.0))
}

/// [`refresh_all`] landing on `scale` (the level below the top).
pub fn refresh_all_at(values: Vec<Ciphertext>, owner: &dyn Refresher, scale: f64) -> Result<Vec<Ciphertext>> {
    let (masked, masks): (Vec<_>, Vec<_>) =
        values.iter().map(mask).collect::<Result<Vec<_>>>()?.into_iter().unzip();
    let fresh = owner.refresh(masked)?;
    if fresh.len() != masks.len() {
        return Err(Error::InvalidInput(format!(
            "the owner returned {} ciphertexts for {} refresh requests",
            fresh.len(),
            masks.len()
        )));
    }
    fresh.iter().zip(&masks).map(|(f, m)| unmask_at(f, m, scale)).collect()
}
