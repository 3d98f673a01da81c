//! Hybrid key switching (Han-Ki): decompose into digits, raise each to the extended basis
//! Q_l P (ModUp), take the inner product with the key, divide by P (ModDown).
//!
//! The decomposition does not depend on the key, so rotations of one ciphertext share it
//! (hoisting, Halevi-Shoup): the automorphism is applied to the raised digits in NTT form,
//! where it is an index permutation, and folded into the inner product.

use rayon::prelude::*;

use crate::math::poly::RnsPoly;
use crate::math::rns::BaseConverter;

use super::context::Context;
use super::keys::KeySwitchKey;

/// The digits of one polynomial raised to the extended basis (NTT form), at some level.
pub(crate) struct Decomposition {
    level: usize,
    /// One polynomial per digit, rows q_0..q_level then p_0..p_{alpha-1}.
    digits: Vec<RnsPoly>,
}

/// Raises the digits of `d` (NTT form, level + 1 rows) to the extended basis.
pub(crate) fn decompose(ctx: &Context, d: &RnsPoly, level: usize) -> Decomposition {
    let n = ctx.degree();
    let mut coeff = d.clone();
    coeff.intt(&ctx.q_ntt(level));
    let rows = ctx.extended_indices(level);
    // Each digit present at this level: its prime range (cut at the level) and its converter.
    let active: Vec<(usize, usize, &BaseConverter)> = ctx
        .digits
        .iter()
        .filter(|g| g.start <= level)
        .map(|g| {
            let end = g.end.min(level + 1);
            (g.start, end, ctx.mod_up_converter(g.start, end))
        })
        .collect();
    let mut digits: Vec<RnsPoly> = active.iter().map(|_| RnsPoly::zero(n, rows.len())).collect();
    let prepared: Vec<Vec<u64>> =
        active.iter().map(|&(s, e, conv)| conv.prepare(&coeff.as_flat()[s * n..e * n], n)).collect();
    // Raising the centred representative of each digit (|d_i| <= Q_i / 2) halves the
    // key-switching noise sum_i d_i e_i / P compared with [0, Q_i).
    let overflow: Vec<Vec<u64>> =
        active.iter().zip(&prepared).map(|(&(_, _, conv), p)| conv.overflow_estimates(p, n)).collect();
    // One task per (digit, row): copy the digit's own rows, convert and transform the others.
    let mut tasks: Vec<(usize, usize, &mut [u64])> = Vec::new();
    for (g, poly) in digits.iter_mut().enumerate() {
        for (r, row) in poly.rows_mut().enumerate() {
            tasks.push((g, r, row));
        }
    }
    tasks.into_par_iter().for_each(|(g, r, row)| {
        let (start, end, conv) = active[g];
        let key_row = rows[r];
        if (start..end).contains(&key_row) {
            row.copy_from_slice(d.limb(r));
        } else {
            conv.convert_row_exact(&prepared[g], &overflow[g], n, key_row, row);
            ctx.ntt[key_row].forward(row);
        }
    });
    Decomposition { level, digits }
}

/// Inner product of the (optionally permuted) digits with a key, then ModDown:
/// returns (c_0, c_1) at `dec.level` such that c_0 + c_1 s ~ d' s_from, where d' is the
/// decomposed polynomial with X -> X^g applied when `perm` is given.
pub(crate) fn key_switch(
    ctx: &Context,
    dec: &Decomposition,
    key: &KeySwitchKey,
    perm: Option<&[usize]>,
) -> (RnsPoly, RnsPoly) {
    let (acc0, acc1) = inner_product(ctx, dec, key, perm);
    (divide_and_drop(ctx, &acc0, dec.level, false), divide_and_drop(ctx, &acc1, dec.level, false))
}

/// Key switching fused with a rescale: returns round((P add_i + <dec, key>_i) / (P q_l)) at
/// level l - 1, i.e. add_i plus the switched term, divided by q_l. One basis conversion from
/// {P, q_l} replaces ModDown followed by a separate rescale, saving l + 1 NTTs per polynomial.
pub(crate) fn key_switch_rescale(
    ctx: &Context,
    dec: &Decomposition,
    key: &KeySwitchKey,
    add: [&RnsPoly; 2],
) -> (RnsPoly, RnsPoly) {
    let level = dec.level;
    let (mut acc0, mut acc1) = inner_product(ctx, dec, key, None);
    for (acc, addend) in [(&mut acc0, add[0]), (&mut acc1, add[1])] {
        // Lift the addend to Q_l P: multiplying by P zeroes its special rows.
        acc.for_each_row(|j, row| {
            if j <= level {
                let m = ctx.key_moduli[j];
                let (w, ws) = (ctx.p_mod_q[j], m.shoup(ctx.p_mod_q[j]));
                for (x, &y) in row.iter_mut().zip(addend.limb(j)) {
                    *x = m.add(*x, m.mul_shoup(y, w, ws));
                }
            }
        });
    }
    (divide_and_drop(ctx, &acc0, level, true), divide_and_drop(ctx, &acc1, level, true))
}

/// Sum over digits of digit x key, over the extended basis Q_l P (NTT form, lazy 128-bit
/// accumulation with one reduction per coefficient).
fn inner_product(
    ctx: &Context,
    dec: &Decomposition,
    key: &KeySwitchKey,
    perm: Option<&[usize]>,
) -> (RnsPoly, RnsPoly) {
    let n = ctx.degree();
    let level = dec.level;
    let rows = ctx.extended_indices(level);
    let mut acc0 = RnsPoly::zero(n, rows.len());
    let mut acc1 = RnsPoly::zero(n, rows.len());
    const CHUNK: usize = 256;
    acc0.as_flat_mut().par_chunks_mut(n).zip(acc1.as_flat_mut().par_chunks_mut(n)).enumerate().for_each(
        |(r, (out0, out1))| {
            let k = rows[r];
            let m = ctx.key_moduli[k];
            for start in (0..n).step_by(CHUNK) {
                let end = (start + CHUNK).min(n);
                let mut s0 = [0u128; CHUNK];
                let mut s1 = [0u128; CHUNK];
                for (g, digit) in dec.digits.iter().enumerate() {
                    let src = digit.limb(r);
                    let (kb, ka) = (&key.b[g].limb(k)[start..end], &key.a[g].limb(k)[start..end]);
                    match perm {
                        Some(p) => {
                            for (j, ((x0, x1), (&b, &a))) in
                                s0.iter_mut().zip(s1.iter_mut()).zip(kb.iter().zip(ka)).enumerate()
                            {
                                let v = src[p[start + j]] as u128;
                                *x0 += v * b as u128;
                                *x1 += v * a as u128;
                            }
                        }
                        None => {
                            for (((x0, x1), (&b, &a)), &v) in
                                s0.iter_mut().zip(s1.iter_mut()).zip(kb.iter().zip(ka)).zip(&src[start..end])
                            {
                                *x0 += v as u128 * b as u128;
                                *x1 += v as u128 * a as u128;
                            }
                        }
                    }
                }
                for j in start..end {
                    out0[j] = m.reduce_u128(s0[j - start]);
                    out1[j] = m.reduce_u128(s1[j - start]);
                }
            }
        },
    );
    (acc0, acc1)
}

/// Divides a polynomial over Q_l P by P (and by q_l too when `drop_q_last`), rounding to the
/// nearest integer. Returns the kept rows in NTT form: q_0..q_l, or q_0..q_{l-1}.
pub(crate) fn divide_and_drop(ctx: &Context, ext: &RnsPoly, level: usize, drop_q_last: bool) -> RnsPoly {
    let n = ctx.degree();
    let alpha = ctx.params.alpha();
    let special = ctx.special_start();
    // Dropped rows in the converter's source order: p_0..p_{alpha-1}, then q_l if dropped.
    let mut dropped = ext.slice_limbs(level + 1, level + 1 + alpha);
    let mut tables: Vec<_> = ctx.ntt[special..special + alpha].iter().collect();
    if drop_q_last {
        dropped.push_limb(ext.limb(level));
        tables.push(&ctx.ntt[level]);
    }
    dropped.intt(&tables);
    let (converter, inverse) = if drop_q_last {
        let d = ctx.rescale_down[level].as_ref().expect("rescaling needs level >= 1");
        (&d.converter, &d.inverse)
    } else {
        (&ctx.mod_down, &ctx.p_inv_mod_q)
    };
    let prepared = converter.prepare(dropped.as_flat(), n);
    // Exact, centred conversion: the division rounds, and the error is independent of alpha.
    let overflow = converter.overflow_estimates(&prepared, n);
    let mut out = ext.slice_limbs(0, if drop_q_last { level } else { level + 1 });
    out.for_each_row(|j, row| {
        let m = ctx.key_moduli[j];
        let mut tmp = vec![0u64; n];
        converter.convert_row_exact(&prepared, &overflow, n, j, &mut tmp);
        ctx.ntt[j].forward(&mut tmp);
        let w = inverse[j];
        let ws = m.shoup(w);
        for (x, &t) in row.iter_mut().zip(&tmp) {
            *x = m.mul_shoup(m.sub(*x, t), w, ws);
        }
    });
    out
}
