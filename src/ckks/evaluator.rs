//! Homomorphic operations with level and scale bookkeeping.
//!
//! Binary operations need operands at one level and one scale; they refuse anything else with
//! a clear error instead of guessing. [`adjust_level`] brings a ciphertext down to a lower level
//! at that level's canonical scale, so mixed-depth operands can be combined.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::math::automorphism::{conjugation_element, rotation_element};
use crate::math::poly::RnsPoly;
use crate::math::tensor;
use crate::parallel;

use super::ciphertext::Ciphertext;
use super::context::Context;
use super::keys::{GaloisKeys, RelinKey};
use super::keyswitch::{decompose, key_switch, key_switch_rescale};
use super::plaintext::Plaintext;

/// Relative difference below which two scales count as equal. A mismatch of r changes the
/// decrypted value by a relative r, far below CKKS precision at 2^-32.
pub const SCALE_TOLERANCE: f64 = 1.0 / (1u64 << 32) as f64;

pub(crate) fn same_scale(a: f64, b: f64) -> bool {
    ((a - b) / a.max(b)).abs() <= SCALE_TOLERANCE
}

fn check_pair(
    ctx_a: &Context,
    ctx_b: &Context,
    level_a: usize,
    level_b: usize,
    scale_a: f64,
    scale_b: f64,
) -> Result<()> {
    if ctx_a != ctx_b {
        return Err(Error::ParameterMismatch);
    }
    if level_a != level_b {
        return Err(Error::LevelMismatch(level_a, level_b));
    }
    if !same_scale(scale_a, scale_b) {
        return Err(Error::ScaleMismatch(scale_a.log2(), scale_b.log2()));
    }
    Ok(())
}

/// Element-wise `f(modulus, a, b)` over the rows both polynomials have, into a new
/// polynomial; one pass per row with the row's modulus hoisted out of the loop.
fn zip_map(
    ctx: &Context,
    a: &RnsPoly,
    b: &RnsPoly,
    f: impl Fn(&crate::math::modulus::Modulus, u64, u64) -> u64 + Sync + Send,
) -> RnsPoly {
    let n = a.degree();
    let mut out = RnsPoly::zero(n, a.limbs().min(b.limbs()));
    out.for_each_row(|i, row| {
        let m = ctx.key_moduli[i];
        for ((o, &x), &y) in row.iter_mut().zip(a.limb(i)).zip(b.limb(i)) {
            *o = f(&m, x, y);
        }
    });
    out
}

fn derived(ct: &Ciphertext, polys: Vec<RnsPoly>, level: usize, scale: f64) -> Ciphertext {
    Ciphertext { ctx: ct.ctx.clone(), polys, level, scale, slots: ct.slots, seed: None }
}

fn add_like(a: &Ciphertext, b: &Ciphertext, subtract: bool) -> Result<Ciphertext> {
    check_pair(&a.ctx, &b.ctx, a.level, b.level, a.scale, b.scale)?;
    let ctx = &a.ctx;
    let (long, short) = if a.size() >= b.size() { (a, b) } else { (b, a) };
    let polys = parallel::install(|| {
        (0..long.size())
            .map(|i| match (i < short.size(), subtract) {
                (true, false) => zip_map(ctx, &a.polys[i], &b.polys[i], |m, x, y| m.add(x, y)),
                (true, true) => zip_map(ctx, &a.polys[i], &b.polys[i], |m, x, y| m.sub(x, y)),
                // Only one operand has this polynomial: it passes through (negated if it is b's).
                (false, true) if long.size() == b.size() => {
                    let mut p = b.polys[i].clone();
                    p.neg_assign(ctx.q_moduli(a.level));
                    p
                }
                (false, _) => long.polys[i].clone(),
            })
            .collect()
    });
    let mut out = derived(a, polys, a.level, a.scale);
    out.slots = a.slots.max(b.slots);
    Ok(out)
}

pub fn add(a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
    add_like(a, b, false)
}

pub fn sub(a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
    add_like(a, b, true)
}

pub fn negate(a: &Ciphertext) -> Ciphertext {
    let polys = parallel::install(|| {
        a.polys
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.neg_assign(a.ctx.q_moduli(a.level));
                p
            })
            .collect()
    });
    derived(a, polys, a.level, a.scale)
}

fn plain_like(ct: &Ciphertext, pt: &Plaintext, subtract: bool) -> Result<Ciphertext> {
    check_pair(&ct.ctx, &pt.ctx, ct.level, pt.level, ct.scale, pt.scale)?;
    let mut polys = ct.polys.clone();
    parallel::install(|| {
        let moduli = ct.ctx.q_moduli(ct.level);
        if subtract {
            polys[0].sub_assign(&pt.poly, moduli)
        } else {
            polys[0].add_assign(&pt.poly, moduli)
        }
    });
    let mut out = derived(ct, polys, ct.level, ct.scale);
    out.slots = ct.slots.max(pt.slots);
    Ok(out)
}

pub fn add_plain(ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
    plain_like(ct, pt, false)
}

pub fn sub_plain(ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
    plain_like(ct, pt, true)
}

/// ct * pt; the scales multiply (rescale afterwards to return to the level's scale).
pub fn mul_plain(ct: &Ciphertext, pt: &Plaintext) -> Result<Ciphertext> {
    if ct.ctx != pt.ctx {
        return Err(Error::ParameterMismatch);
    }
    if ct.level != pt.level {
        return Err(Error::LevelMismatch(ct.level, pt.level));
    }
    let polys = parallel::install(|| {
        let shoup = pt.shoup_form();
        ct.polys
            .iter()
            .map(|c| {
                let mut out = c.clone();
                out.mul_shoup_assign(&pt.poly, shoup, ct.ctx.q_moduli(ct.level));
                out
            })
            .collect()
    });
    let mut out = derived(ct, polys, ct.level, ct.scale * pt.scale);
    out.slots = ct.slots.max(pt.slots);
    Ok(out)
}

/// Adds the real constant c to every slot.
pub fn add_scalar(ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
    let v = scaled_integer(c, ct.scale)?;
    let mut polys = ct.polys.clone();
    // A constant polynomial has the same value at every NTT point.
    polys[0].for_each_row(|i, row| {
        let m = ct.ctx.key_moduli[i];
        let r = m.reduce_i128(v);
        row.iter_mut().for_each(|x| *x = m.add(*x, r));
    });
    Ok(derived(ct, polys, ct.level, ct.scale))
}

/// Multiplies every slot by the real constant c, encoded at the level's canonical scale (so a
/// rescale afterwards lands on the next level's canonical scale).
pub fn mul_scalar(ct: &Ciphertext, c: f64) -> Result<Ciphertext> {
    let factor = ct.ctx.scale_at(ct.level);
    let v = scaled_integer(c, factor)?;
    Ok(mul_integer_unchecked(ct, v, ct.scale * factor))
}

/// Multiplies every slot by the integer k; the scale is unchanged.
pub fn mul_integer(ct: &Ciphertext, k: i64) -> Ciphertext {
    mul_integer_unchecked(ct, k as i128, ct.scale)
}

fn mul_integer_unchecked(ct: &Ciphertext, k: i128, scale: f64) -> Ciphertext {
    let moduli = ct.ctx.q_moduli(ct.level);
    let residues: Vec<u64> = moduli.iter().map(|m| m.reduce_i128(k)).collect();
    let mut polys = ct.polys.clone();
    parallel::install(|| polys.iter_mut().for_each(|p| p.mul_scalar_per_row(&residues, moduli)));
    derived(ct, polys, ct.level, scale)
}

fn scaled_integer(c: f64, scale: f64) -> Result<i128> {
    let v = (c * scale).round();
    if !v.is_finite() || v.abs() >= 2f64.powi(120) {
        return Err(Error::OutOfRange(format!(
            "constant {c} times scale 2^{:.1} is out of range",
            scale.log2()
        )));
    }
    Ok(v as i128)
}

/// Tensor product: a size-3 ciphertext under (1, s, s^2) with the product of the scales.
pub fn multiply(a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
    if a.ctx != b.ctx {
        return Err(Error::ParameterMismatch);
    }
    if a.level != b.level {
        return Err(Error::LevelMismatch(a.level, b.level));
    }
    let mut out = zero_product(&a.ctx, a.level, a.scale * b.scale, a.slots.max(b.slots));
    multiply_accumulate(&mut out, a, b)?;
    Ok(out)
}

/// acc += a * b (tensor product), in place: acc is a size-3 ciphertext at the operands' level
/// with the product of their scales, as [`multiply`] returns. Sums of many products (attention
/// scores, dot products) then cost one pass over memory per product and no allocation.
pub fn multiply_accumulate(acc: &mut Ciphertext, a: &Ciphertext, b: &Ciphertext) -> Result<()> {
    multiply_accumulate_pairs(&mut [acc], &[vec![(a, b)]])
}

/// `sums[o] += sum over pairs[o] of a * b` for every o in one pass: each sum is read and
/// written once, and an operand that several sums share is read once per cache-sized chunk
/// of coefficients ([`crate::math::tensor`]). Every sum is a size-3 ciphertext at one common
/// level with the product of its operands' scales; operands are size 2 at that level.
pub fn multiply_accumulate_pairs(
    sums: &mut [&mut Ciphertext],
    pairs: &[Vec<(&Ciphertext, &Ciphertext)>],
) -> Result<()> {
    if sums.len() != pairs.len() {
        return Err(Error::Shape(format!("{} sums for {} lists of products", sums.len(), pairs.len())));
    }
    let Some(first) = sums.first() else { return Ok(()) };
    let first: &Ciphertext = first;
    let (ctx, level) = (first.ctx.clone(), first.level);
    for (acc, products) in sums.iter().zip(pairs) {
        if acc.ctx != ctx {
            return Err(Error::ParameterMismatch);
        }
        if acc.level != level {
            return Err(Error::LevelMismatch(acc.level, level));
        }
        if acc.size() != 3 {
            return Err(Error::Unrelinearised("a sum of products has 3 polynomials".into()));
        }
        for (a, b) in products {
            if a.ctx != ctx || b.ctx != ctx {
                return Err(Error::ParameterMismatch);
            }
            if a.level != level || b.level != level {
                return Err(Error::LevelMismatch(a.level.max(b.level), level));
            }
            if a.size() != 2 || b.size() != 2 {
                return Err(Error::Unrelinearised(
                    "relinearise before multiplying again (operand has 3 polynomials)".into(),
                ));
            }
            if !same_scale(acc.scale, a.scale * b.scale) {
                return Err(Error::ScaleMismatch(acc.scale.log2(), (a.scale * b.scale).log2()));
            }
        }
    }
    let moduli = ctx.q_moduli(level);
    // One task per prime: it owns that row of every sum.
    let mut rows: Vec<Vec<[&mut [u64]; 3]>> = (0..=level).map(|_| Vec::with_capacity(sums.len())).collect();
    for acc in sums.iter_mut() {
        acc.seed = None;
        let [d0, d1, d2] = &mut acc.polys[..] else { unreachable!("size checked above") };
        for (l, ((r0, r1), r2)) in d0.rows_mut().zip(d1.rows_mut()).zip(d2.rows_mut()).enumerate() {
            rows[l].push([r0, r1, r2]);
        }
    }
    parallel::install(|| {
        rows.into_par_iter().enumerate().for_each(|(l, mut out)| {
            let terms: Vec<Vec<_>> = pairs
                .iter()
                .map(|products| {
                    products
                        .iter()
                        .map(|(a, b)| {
                            (
                                [a.polys[0].limb(l), a.polys[1].limb(l)],
                                [b.polys[0].limb(l), b.polys[1].limb(l)],
                            )
                        })
                        .collect()
                })
                .collect();
            tensor::accumulate(&mut out, &terms, &moduli[l]);
        })
    });
    Ok(())
}

/// An empty sum of products at `level` with scale `scale` (what [`multiply_accumulate_pairs`]
/// adds to).
pub fn zero_product(ctx: &Context, level: usize, scale: f64, slots: usize) -> Ciphertext {
    let polys = (0..3).map(|_| RnsPoly::zero(ctx.degree(), level + 1)).collect();
    Ciphertext { ctx: ctx.clone(), polys, level, scale, slots, seed: None }
}

/// multiply + relinearize + rescale in one pass: the key switch and the rescale share one
/// basis conversion (fewer NTTs). Same result as the three steps, up to rounding.
pub fn multiply_relin_rescale(a: &Ciphertext, b: &Ciphertext, key: &RelinKey) -> Result<Ciphertext> {
    if a.ctx != key.0.ctx {
        return Err(Error::ParameterMismatch);
    }
    if a.level == 0 {
        return Err(Error::OutOfLevels("cannot rescale a product at level 0".into()));
    }
    relinearize_rescale(&multiply(a, b)?, key)
}

/// Relinearises a size-3 ciphertext and rescales it, fused: one basis conversion for both.
pub fn relinearize_rescale(product: &Ciphertext, key: &RelinKey) -> Result<Ciphertext> {
    if product.ctx != key.0.ctx {
        return Err(Error::ParameterMismatch);
    }
    if product.level == 0 {
        return Err(Error::OutOfLevels("cannot rescale a product at level 0".into()));
    }
    if product.size() != 3 {
        return rescale(product);
    }
    let ctx = &product.ctx;
    let polys = parallel::install(|| {
        let dec = decompose(ctx, &product.polys[2], product.level, false);
        let (c0, c1) = key_switch_rescale(ctx, &dec, &key.0, [&product.polys[0], &product.polys[1]]);
        vec![c0, c1]
    });
    let mut out =
        derived(product, polys, product.level - 1, product.scale / ctx.params.q[product.level] as f64);
    out.slots = product.slots;
    Ok(out)
}

/// Brings a size-3 ciphertext back to size 2 with the relinearisation key.
pub fn relinearize(ct: &Ciphertext, key: &RelinKey) -> Result<Ciphertext> {
    if ct.ctx != key.0.ctx {
        return Err(Error::ParameterMismatch);
    }
    if ct.size() != 3 {
        return Ok(ct.clone());
    }
    let polys = parallel::install(|| {
        let dec = decompose(&ct.ctx, &ct.polys[2], ct.level, false);
        let (mut k0, mut k1) = key_switch(&ct.ctx, &dec, &key.0, None);
        let moduli = ct.ctx.q_moduli(ct.level);
        k0.add_assign(&ct.polys[0], moduli);
        k1.add_assign(&ct.polys[1], moduli);
        vec![k0, k1]
    });
    Ok(derived(ct, polys, ct.level, ct.scale))
}

/// Divides by the last prime q_l and drops it: the level falls by one, the scale by q_l.
pub fn rescale(ct: &Ciphertext) -> Result<Ciphertext> {
    if ct.level == 0 {
        return Err(Error::OutOfLevels("cannot rescale a ciphertext at level 0".into()));
    }
    let ctx = &ct.ctx;
    let l = ct.level;
    let n = ctx.degree();
    let polys = parallel::install(|| {
        ct.polys
            .iter()
            .map(|p| {
                let mut last = p.limb(l).to_vec();
                ctx.ntt[l].inverse(&mut last);
                let ql = ctx.key_moduli[l];
                let half = ql.value() >> 1;
                let mut out = p.slice_limbs(0, l);
                out.for_each_row(|j, row| {
                    let m = ctx.key_moduli[j];
                    // Centred representative of the last row, so the division rounds: v > q_l/2
                    // stands for v - q_l, masked in without a branch (its sign is random).
                    let shift = m.value() - m.reduce(ql.value());
                    let mut tmp: Vec<u64> = last
                        .iter()
                        .map(|&v| {
                            let above = 0u64.wrapping_sub((v > half) as u64);
                            m.reduce_once(m.reduce(v) + (shift & above))
                        })
                        .collect();
                    ctx.ntt[j].forward(&mut tmp);
                    let w = ctx.rescale_inv[l][j];
                    let ws = m.shoup(w);
                    for (x, &t) in row.iter_mut().zip(&tmp) {
                        *x = m.mul_shoup(m.sub(*x, t), w, ws);
                    }
                });
                debug_assert_eq!(out.degree(), n);
                out
            })
            .collect()
    });
    Ok(derived(ct, polys, l - 1, ct.scale / ctx.params.q[l] as f64))
}

/// Drops primes down to `level` without dividing: the scale is unchanged.
pub fn drop_level(ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
    if level > ct.level {
        return Err(Error::OutOfRange(format!(
            "cannot raise a ciphertext from level {} to {level}",
            ct.level
        )));
    }
    // Copies only the rows that stay.
    let polys = ct.polys.iter().map(|p| p.slice_limbs(0, level + 1)).collect();
    Ok(derived(ct, polys, level, ct.scale))
}

/// The one rule for combining values of different depths: every value comes down to the
/// lowest level among them, at the scale of the first value already there (one rescale for a
/// value whose scale must change, a drop of primes otherwise). Values already at that level
/// are borrowed, not copied. Scales that still differ at that level are the operation's to
/// refuse.
pub fn align<'a>(values: &[&'a Ciphertext]) -> Result<Vec<Cow<'a, Ciphertext>>> {
    let Some(lowest) = values.iter().min_by_key(|v| v.level) else { return Ok(Vec::new()) };
    let (level, scale) = (lowest.level, lowest.scale);
    values
        .iter()
        .map(
            |&v| {
                if v.level == level {
                    Ok(Cow::Borrowed(v))
                } else {
                    adjust_to(v, level, scale).map(Cow::Owned)
                }
            },
        )
        .collect()
}

/// Brings `ct` to `level` at that level's canonical scale. Costs one rescale when the scale
/// must change (the ciphertext needs a level above the target), nothing otherwise.
pub fn adjust_level(ct: &Ciphertext, level: usize) -> Result<Ciphertext> {
    adjust_to(ct, level, ct.ctx.scale_at(level))
}

/// [`adjust_level`], borrowing `ct` when it is already at `level` (whatever its scale).
pub fn at_level(ct: &Ciphertext, level: usize) -> Result<Cow<'_, Ciphertext>> {
    if ct.level == level {
        Ok(Cow::Borrowed(ct))
    } else {
        adjust_level(ct, level).map(Cow::Owned)
    }
}

/// Brings `ct` to `level` at `target_scale` (one rescale when the scale must change).
pub fn adjust_to(ct: &Ciphertext, level: usize, target_scale: f64) -> Result<Ciphertext> {
    let ctx = &ct.ctx;
    if level > ct.level {
        return Err(Error::OutOfRange(format!(
            "cannot raise a ciphertext from level {} to {level}",
            ct.level
        )));
    }
    if same_scale(ct.scale, target_scale) {
        return drop_level(ct, level);
    }
    if level == ct.level {
        return Err(Error::OutOfLevels(format!(
            "changing the scale at level {level} needs one more level; adjust from a higher level"
        )));
    }
    let high = drop_level(ct, level + 1)?;
    let factor = target_scale * ctx.params.q[level + 1] as f64 / ct.scale;
    if !(2f64.powi(16)..2f64.powi(62)).contains(&factor) {
        return Err(Error::OutOfRange(format!(
            "cannot move scale 2^{:.1} to 2^{:.1}",
            ct.scale.log2(),
            target_scale.log2()
        )));
    }
    let k = factor.round();
    let mut out = rescale(&mul_integer_unchecked(&high, k as i128, high.scale * k))?;
    // The result's true scale is within 0.5 / k (k >= 2^16 is required, so 2^-17 at worst and
    // 2^-31 at 30-bit scales) of the canonical one; labelling it canonical lets it meet every
    // other value of its level, at a relative error far below a rescale's noise.
    out.scale = target_scale;
    Ok(out)
}

fn rotate_with(ct: &Ciphertext, elements: &[u64], keys: &GaloisKeys) -> Result<Vec<Ciphertext>> {
    if ct.ctx != keys.ctx {
        return Err(Error::ParameterMismatch);
    }
    if ct.size() != 2 {
        return Err(Error::Unrelinearised("relinearise before rotating".into()));
    }
    let mut ksks = Vec::with_capacity(elements.len());
    for &g in elements {
        ksks.push(keys.get(g).ok_or_else(|| Error::MissingKey(format!("no Galois key for element {g}")))?);
    }
    Ok(parallel::install(|| {
        let ctx = &ct.ctx;
        let dec = decompose(ctx, &ct.polys[1], ct.level, elements.len() > 1);
        // Rotations of one decomposition are independent: parallel across output ciphertexts
        // (and, nested, across limbs inside each).
        elements
            .par_iter()
            .zip(ksks)
            .map(|(&g, ksk)| {
                let perm = ctx.galois_permutation(g);
                let (mut k0, k1) = key_switch(ctx, &dec, ksk, Some(&perm));
                k0.add_assign(&ct.polys[0].permute_ntt(&perm), ctx.q_moduli(ct.level));
                derived(ct, vec![k0, k1], ct.level, ct.scale)
            })
            .collect()
    }))
}

fn element_for_step(ct: &Ciphertext, step: i64) -> Option<u64> {
    let slots = (ct.ctx.degree() / 2) as i64;
    (step.rem_euclid(slots) != 0).then(|| rotation_element(ct.ctx.degree(), step))
}

/// Rotates the slots left by `step` (right if negative).
pub fn rotate(ct: &Ciphertext, step: i64, keys: &GaloisKeys) -> Result<Ciphertext> {
    match element_for_step(ct, step) {
        None => Ok(derived(ct, ct.polys.clone(), ct.level, ct.scale)),
        Some(g) => rotate_with(ct, &[g], keys).map(|mut v| v.remove(0)).map_err(|e| match e {
            Error::MissingKey(_) => Error::MissingKey(format!("no Galois key for rotation by {step}")),
            other => other,
        }),
    }
}

/// Several rotations of one ciphertext sharing a single decomposition (hoisting).
pub fn rotate_hoisted(ct: &Ciphertext, steps: &[i64], keys: &GaloisKeys) -> Result<Vec<Ciphertext>> {
    let needed: Vec<u64> = steps.iter().filter_map(|&s| element_for_step(ct, s)).collect();
    let mut rotated = rotate_with(ct, &needed, keys)?.into_iter();
    Ok(steps
        .iter()
        .map(|&s| match element_for_step(ct, s) {
            None => derived(ct, ct.polys.clone(), ct.level, ct.scale),
            Some(_) => rotated.next().expect("one result per needed rotation"),
        })
        .collect())
}

/// Multiplies every slot by the imaginary unit: the polynomial times X^(N/2), which every
/// slot's root of unity zeta^(5^j) maps to i^(5^j) = i. Exact: no level, no noise.
pub fn mul_by_i(ct: &Ciphertext) -> Ciphertext {
    let ctx = &ct.ctx;
    let n = ctx.degree();
    let moduli = ctx.q_moduli(ct.level);
    let polys = parallel::install(|| {
        let mut monomial = RnsPoly::zero(n, ct.level + 1);
        monomial.for_each_row(|_, row| row[n / 2] = 1);
        monomial.ntt(&ctx.q_ntt(ct.level));
        ct.polys
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p.mul_assign(&monomial, moduli);
                p
            })
            .collect()
    });
    derived(ct, polys, ct.level, ct.scale)
}

/// Complex conjugation of every slot.
pub fn conjugate(ct: &Ciphertext, keys: &GaloisKeys) -> Result<Ciphertext> {
    rotate_with(ct, &[conjugation_element(ct.ctx.degree())], keys).map(|mut v| v.remove(0)).map_err(|e| {
        match e {
            Error::MissingKey(_) => Error::MissingKey("no Galois key for conjugation".into()),
            other => other,
        }
    })
}
