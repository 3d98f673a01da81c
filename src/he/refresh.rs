//! Masked refresh: new levels for a ciphertext without revealing its value to anyone.
//!
//! The provider drops the ciphertext to a low level l (modulus Q_l < 2^125) and adds to c_0 a
//! polynomial R with integer coefficients uniform in [-2^k, 2^k), k = log2(Q_l) - 3. The owner
//! decrypts m + e + R: every coefficient is within 2^-(k - log2|m + e|) in statistical
//! distance of uniform, so the owner learns nothing about m (nor about the noise e, which
//! depends on the model). It re-encrypts that integer polynomial at the level the request
//! names (the levels the value still needs, not more: fewer primes, fewer bytes), scaled by
//! f = (that level's scale) / (the request's scale) and rounded, and the provider subtracts
//! round(f R): the value comes back at the named level and its canonical scale, so a refresh
//! costs no level at all. The provider chooses f through the scale it writes in the request (the
//! target scale of the result, over the refresh level's); the rounding adds at most one unit
//! to a coefficient. The decrypted value is never decoded to slots, so no precision is lost.
//!
//! Two real values at one level and scale travel as one complex ciphertext a + i b (multiplying
//! by i is multiplying by X^(N/2): free), at half the target scale; the provider separates them
//! after the round trip with one conjugation (a = (z + conj z) / 2, b = i (conj z - z) / 2),
//! which halves the refresh's bytes each way for one key switch per pair.
//!
//! Security margin: with a 30-bit scale and values below 2^20, |m + e| < 2^52 and k >= 87,
//! so each coefficient is 2^-35 or closer to uniform; larger Q_l gives more.

use std::borrow::Cow;

use rand_core::RngCore;

use crate::ckks::evaluator::{drop_level, same_scale};
use crate::ckks::{Ciphertext, Context, GaloisKeys, Plaintext, SecretKey};
use crate::error::{Error, Result};
use crate::math::crt::CrtComposer;
use crate::math::poly::RnsPoly;
use crate::math::sampling::os_rng;
use crate::parallel;

use super::packed::{join_complex, split_complex};

/// The owner's half of a refresh: decrypt each masked ciphertext and re-encrypt the same
/// integer polynomial at `level`.
pub trait Refresher: Send + Sync {
    fn refresh(&self, masked: Vec<Ciphertext>, level: usize) -> Result<Vec<Ciphertext>>;
}

/// The provider's secret for one masked ciphertext.
pub struct Mask {
    coeffs: Vec<i128>,
    /// The factor the owner lifts by (what the request's scale tells it).
    factor: f64,
    /// The level and scale the refreshed value lands on.
    level: usize,
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

/// A refresh lands at most at the top level `top`.
pub(crate) fn check_target(level: usize, top: usize) -> Result<()> {
    if level > top {
        return Err(Error::OutOfRange(format!(
            "a refresh cannot land above the top level {top}, {level} was asked"
        )));
    }
    Ok(())
}

fn mask_bits(ctx: &Context, level: usize) -> u32 {
    let bits: f64 = ctx.params.q[..=level].iter().map(|&q| (q as f64).log2()).sum();
    bits.floor() as u32 - 3
}

/// Drops `ct` to the refresh level and adds a fresh uniform mask to it; the refreshed value
/// will land on the top level's canonical scale.
pub fn mask(ct: &Ciphertext) -> Result<(Ciphertext, Mask)> {
    let ctx = ct.context();
    mask_for(ct, ctx.max_level(), ctx.scale_at(ctx.max_level()))
}

/// [`mask`] for a refreshed value at `level` and scale `target`.
pub fn mask_for(ct: &Ciphertext, level: usize, target: f64) -> Result<(Ciphertext, Mask)> {
    let ctx = ct.context();
    let floor = refresh_level(ctx);
    if ct.level() < floor {
        return Err(Error::OutOfLevels(format!(
            "a masked refresh needs the ciphertext at level {floor} or above, it is at {}",
            ct.level()
        )));
    }
    check_target(level, ctx.max_level())?;
    if ct.size() != 2 {
        return Err(Error::Unrelinearised("relinearise before refreshing".into()));
    }
    let k = mask_bits(ctx, floor);
    let mut rng = os_rng();
    let coeffs: Vec<i128> = (0..ctx.degree())
        .map(|_| {
            let r = ((rng.next_u64() as u128) << 64 | rng.next_u64() as u128) & ((1u128 << (k + 1)) - 1);
            r as i128 - (1i128 << k)
        })
        .collect();
    let mut masked = drop_level(ct, floor)?;
    let r = integer_poly(ctx, &coeffs, floor);
    parallel::install(|| masked.polys[0].add_assign(&r, ctx.q_moduli(floor)));
    masked.seed = None;
    let factor = target / masked.scale();
    // The request carries the scale that makes the owner lift by `factor`.
    masked.scale = ctx.scale_at(level) / factor;
    Ok((masked, Mask { coeffs, factor, level, target }))
}

/// Removes the mask from the owner's re-encryption: the value at the mask's level, on the
/// scale the mask was made for.
pub fn unmask(fresh: &Ciphertext, mask: &Mask) -> Result<Ciphertext> {
    let ctx = fresh.context();
    let level = mask.level;
    if fresh.size() != 2 || fresh.level() != level || fresh.scale() != ctx.scale_at(level) {
        return Err(Error::Malformed(
            "the refreshed ciphertext does not match its mask (level, scale or size)".into(),
        ));
    }
    let lifted = mask.coeffs.iter().map(|&c| scale_round(c, mask.factor)).collect::<Result<Vec<_>>>()?;
    let mut out = fresh.clone();
    let r = integer_poly(ctx, &lifted, level);
    parallel::install(|| out.polys[0].sub_assign(&r, ctx.q_moduli(level)));
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
    fn refresh(&self, masked: Vec<Ciphertext>, level: usize) -> Result<Vec<Ciphertext>> {
        let ctx = self.context().clone();
        check_target(level, ctx.max_level())?;
        masked
            .iter()
            .map(|ct| {
                if ct.context() != &ctx {
                    return Err(Error::ParameterMismatch);
                }
                let composer = CrtComposer::new(ctx.q_moduli(ct.level()));
                if !composer.fits_i128() || ct.size() != 2 {
                    return Err(Error::OutOfRange(format!(
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
                // Lift to the level's canonical scale by the factor the request asks for.
                let factor = ctx.scale_at(level) / ct.scale();
                let coeffs = coeffs.iter().map(|&c| scale_round(c, factor)).collect::<Result<Vec<_>>>()?;
                let lifted = Plaintext::from_poly(
                    &ctx,
                    integer_poly(&ctx, &coeffs, level),
                    level,
                    ctx.scale_at(level),
                    ct.slots(),
                );
                self.encrypt_symmetric(&lifted)
            })
            .collect()
    }
}

/// The provider's side of a whole round trip with an in-process owner (tests, benchmarks, `simulate`-free
/// single-machine runs): mask, let `owner` re-encrypt, unmask. The values come back at
/// `level` and its canonical scale.
pub fn refresh_all(values: Vec<Ciphertext>, owner: &dyn Refresher, level: usize) -> Result<Vec<Ciphertext>> {
    let scale = values.first().map(|v| v.context().scale_at(level));
    refresh_all_at(values, owner, level, scale.unwrap_or(1.0))
}

/// [`refresh_all`] landing on `scale` at `level`, one ciphertext each.
pub fn refresh_all_at(
    values: Vec<Ciphertext>,
    owner: &dyn Refresher,
    level: usize,
    scale: f64,
) -> Result<Vec<Ciphertext>> {
    round_trip(values.iter().map(|v| (v, scale)), owner, level)
}

/// Masks each value for its target scale at `level`, has `owner` re-encrypt them all in one
/// request, and unmasks its reply.
fn round_trip<'a>(
    values: impl Iterator<Item = (&'a Ciphertext, f64)>,
    owner: &dyn Refresher,
    level: usize,
) -> Result<Vec<Ciphertext>> {
    let (masked, masks): (Vec<_>, Vec<_>) =
        values.map(|(v, scale)| mask_for(v, level, scale)).collect::<Result<Vec<_>>>()?.into_iter().unzip();
    let fresh = owner.refresh(masked, level)?;
    if fresh.len() != masks.len() {
        return Err(Error::Malformed(format!(
            "the owner returned {} ciphertexts for {} refresh requests",
            fresh.len(),
            masks.len()
        )));
    }
    fresh.iter().zip(&masks).map(|(f, m)| unmask(f, m)).collect()
}

/// How values travel through a refresh, the one rule every backend counts by: consecutive
/// values at one level share a complex ciphertext. One entry per ciphertext sent: the index of
/// its first value and whether the next value rides in its imaginary part.
pub fn wire_pairs(levels: &[usize]) -> Vec<(usize, bool)> {
    let mut sent = Vec::with_capacity(levels.len().div_ceil(2));
    let mut i = 0;
    while i < levels.len() {
        let paired = i + 1 < levels.len() && levels[i] == levels[i + 1];
        sent.push((i, paired));
        i += 1 + paired as usize;
    }
    sent
}

/// What a paired refresh sent: ciphertexts each way and the conjugations that separated pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub ciphertexts: u64,
    pub conjugations: u64,
}

/// [`refresh_all`] with the values paired as [`wire_pairs`] says (a pair whose scales differ
/// travels as two ciphertexts): half the bytes each way, one conjugation per pair (`keys`
/// must hold the conjugation key when any pair forms).
pub fn refresh_paired(
    values: Vec<Ciphertext>,
    owner: &dyn Refresher,
    level: usize,
    keys: Option<&GaloisKeys>,
) -> Result<(Vec<Ciphertext>, Sent)> {
    let Some(ctx) = values.first().map(|v| v.context().clone()) else {
        return Ok((Vec::new(), Sent::default()));
    };
    let floor = refresh_level(&ctx);
    let levels: Vec<usize> = values.iter().map(|v| v.level()).collect();
    // Each sent ciphertext: the values it carries (1 or 2) and its target scale.
    let mut carried = Vec::new();
    let mut sent = Vec::new();
    let scale = ctx.scale_at(level);
    for (i, paired) in wire_pairs(&levels) {
        if paired && same_scale(values[i].scale(), values[i + 1].scale()) && values[i].level() >= floor {
            let (a, b) = (drop_level(&values[i], floor)?, drop_level(&values[i + 1], floor)?);
            sent.push((Cow::Owned(join_complex(&a, &b)?), scale / 2.0));
            carried.push(2);
        } else {
            for v in &values[i..i + 1 + paired as usize] {
                sent.push((Cow::Borrowed(v), scale));
                carried.push(1);
            }
        }
    }
    let fresh = round_trip(sent.iter().map(|(v, s)| (v.as_ref(), *s)), owner, level)?;
    drop(sent);
    drop(values);
    let mut out = Vec::with_capacity(carried.iter().sum());
    let mut conjugations = 0;
    for (z, &count) in fresh.into_iter().zip(&carried) {
        if count == 1 {
            out.push(z);
            continue;
        }
        let keys = keys.ok_or_else(|| {
            Error::MissingKey("a paired refresh needs the conjugation key (conjugate=True)".into())
        })?;
        let (re, im) = split_complex(&z, keys)?;
        out.extend([re, im]);
        conjugations += 1;
    }
    Ok((out, Sent { ciphertexts: carried.len() as u64, conjugations }))
}
