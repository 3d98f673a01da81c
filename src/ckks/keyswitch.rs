//! Hybrid key switching (Han-Ki): decompose into digits, raise each to the extended basis
//! Q_l P (ModUp), take the inner product with the key, divide by P (ModDown).
//!
//! The decomposition does not depend on the key, so rotations of one ciphertext share it
//! (hoisting, Halevi-Shoup): the automorphism is applied to the raised digits in NTT form,
//! where it is an index permutation, and folded into the inner product. A single key switch
//! (a relinearisation, one rotation) raises each row only when the inner product reaches it,
//! so the dnum x (l + 1 + alpha) raised rows never exist at once (9 MB per key switch at
//! N = 2^14 and 10 levels, written and read back from memory).
//!
//! Digits are as wide as the special modulus P allows ([`Parameters::digits`]): on the block's
//! chain (a 60-bit q_0, 30-bit primes, one 60-bit P) pairs of primes, 6 digits instead of 11,
//! which nearly halves the raising and the inner product and the keys' size. A pair's digit
//! is raised through its exact 60-bit integer (no floating-point correction).
//!
//! [`Parameters::digits`]: super::params::Parameters::digits

use rayon::prelude::*;

use crate::math::modulus::Modulus;
use crate::math::poly::RnsPoly;
use crate::math::rns::{BaseConverter, ExactRows};
use crate::math::vectorised;

use super::context::Context;
use super::keys::{KeyRow, KeySwitchKey, NARROW_PRIME_LIMIT};

/// The digits of one polynomial, ready to be raised to the extended basis Q_l P, at some level.
pub(crate) struct Decomposition<'a> {
    ctx: &'a Context,
    level: usize,
    /// The polynomial itself (NTT form): a digit's own rows are its rows.
    source: &'a RnsPoly,
    /// Each digit present at this level: its prime range (cut at the level), its converter,
    /// its prepared coefficients and overflow estimates.
    active: Vec<Digit<'a>>,
    /// The raised digits (rows q_0..q_level then p_0..p_{alpha-1}, NTT form), when several
    /// key switches share them; None when each row is raised as the inner product reaches
    /// it, so the raised digits (dnum x (l + 1 + alpha) rows) never exist all at once.
    raised: Option<Vec<RnsPoly>>,
}

struct Digit<'a> {
    range: std::ops::Range<usize>,
    converter: &'a BaseConverter,
    rows: ExactRows,
}

impl Decomposition<'_> {
    /// Row `r` (prime `key_row` of the context) of digit `g` (NTT form), raised into `scratch` if it
    /// has not been raised yet.
    fn row<'s>(&'s self, g: usize, r: usize, key_row: usize, scratch: &'s mut [u64]) -> &'s [u64] {
        if let Some(raised) = &self.raised {
            return raised[g].limb(r);
        }
        self.raise_row(g, r, key_row, scratch);
        scratch
    }

    fn raise_row(&self, g: usize, r: usize, key_row: usize, out: &mut [u64]) {
        let digit = &self.active[g];
        if digit.range.contains(&key_row) {
            out.copy_from_slice(self.source.limb(r));
        } else {
            digit.converter.convert_row_exact(&digit.rows, key_row, out);
            self.ctx.ntt[key_row].forward(out);
        }
    }
}

/// The digits of `d` (NTT form, level + 1 rows), raised now when `hoisted` (several key
/// switches will share them), else row by row inside the one key switch that uses them.
pub(crate) fn decompose<'a>(
    ctx: &'a Context,
    d: &'a RnsPoly,
    level: usize,
    hoisted: bool,
) -> Decomposition<'a> {
    let n = ctx.degree();
    let mut coeff = d.clone();
    coeff.intt(&ctx.q_ntt(level));
    let active: Vec<Digit<'a>> = ctx
        .digits
        .iter()
        .filter(|g| g.start <= level)
        .map(|g| {
            let range = g.start..g.end.min(level + 1);
            let converter = ctx.mod_up_converter(range.start, range.end);
            // Raising the centred representative of each digit (|d_i| <= Q_i / 2) halves the
            // key-switching noise sum_i d_i e_i / P compared with [0, Q_i).
            let rows = converter.prepare_exact(&coeff.as_flat()[range.start * n..range.end * n], n);
            Digit { range, converter, rows }
        })
        .collect();
    let mut dec = Decomposition { ctx, level, source: d, active, raised: None };
    if hoisted {
        let rows = ctx.extended_indices(level);
        let mut digits: Vec<RnsPoly> = dec.active.iter().map(|_| RnsPoly::zero(n, rows.len())).collect();
        // One task per (digit, row).
        let mut tasks: Vec<(usize, usize, &mut [u64])> = Vec::new();
        for (g, poly) in digits.iter_mut().enumerate() {
            for (r, row) in poly.rows_mut().enumerate() {
                tasks.push((g, r, row));
            }
        }
        tasks.into_par_iter().for_each(|(g, r, row)| dec.raise_row(g, r, rows[r], row));
        dec.raised = Some(digits);
    }
    dec
}

/// Inner product of the (optionally permuted) digits with a key, then ModDown:
/// returns (c_0, c_1) at `dec.level` such that c_0 + c_1 s ~ d' s_from, where d' is the
/// decomposed polynomial with X -> X^g applied when `perm` is given.
pub(crate) fn key_switch(
    ctx: &Context,
    dec: &Decomposition<'_>,
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
    dec: &Decomposition<'_>,
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

/// Sum over digits of digit x key, over the extended basis Q_l P (NTT form, lazy
/// accumulation with one reduction per coefficient). Rows are independent tasks; a task
/// raises its digits' rows itself when the decomposition was not raised in advance.
fn inner_product(
    ctx: &Context,
    dec: &Decomposition<'_>,
    key: &KeySwitchKey,
    perm: Option<&[usize]>,
) -> (RnsPoly, RnsPoly) {
    let n = ctx.degree();
    let rows = ctx.extended_indices(dec.level);
    let mut acc0 = RnsPoly::zero(n, rows.len());
    let mut acc1 = RnsPoly::zero(n, rows.len());
    acc0.as_flat_mut().par_chunks_mut(n).zip(acc1.as_flat_mut().par_chunks_mut(n)).enumerate().for_each(
        |(r, (out0, out1))| {
            let k = rows[r];
            let m = ctx.key_moduli[k];
            debug_assert!(dec.active.len() <= 64, "128-bit sums hold 64 products of 61-bit primes");
            let mut sums = RowSums::new(&m, n);
            let mut scratch = vec![0u64; if dec.raised.is_some() { 0 } else { n }];
            for g in 0..dec.active.len() {
                let digit = dec.row(g, r, k, &mut scratch);
                sums.add(digit, key.b[g].row(k), key.a[g].row(k), perm);
            }
            sums.write(out0, out1, &m);
        },
    );
    (acc0, acc1)
}

/// Coefficients per chunk of a gathered (permuted) digit row.
const CHUNK: usize = 256;

/// A row's two running sums of digit x key products. Narrow primes (below 2^31, keys in 32
/// bits) have products in 62 bits and the sums stay lazily in 64 bits (a branch-free `min`
/// keeps them below 2^63, which vectorises); wider primes sum in 128 bits (at most 2^6
/// digits of 2^122).
enum RowSums {
    Narrow { s0: Vec<u64>, s1: Vec<u64>, cap: u64 },
    Wide { s0: Vec<u128>, s1: Vec<u128> },
}

impl RowSums {
    fn new(m: &Modulus, n: usize) -> Self {
        if m.value() < NARROW_PRIME_LIMIT {
            RowSums::Narrow { s0: vec![0; n], s1: vec![0; n], cap: m.lazy_cap() }
        } else {
            RowSums::Wide { s0: vec![0; n], s1: vec![0; n] }
        }
    }

    /// `s0 += digit(perm) * b`, `s1 += digit(perm) * a`.
    fn add(&mut self, digit: &[u64], b: &KeyRow, a: &KeyRow, perm: Option<&[usize]>) {
        let n = digit.len();
        let mut gathered = [0u64; CHUNK];
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let v: &[u64] = match perm {
                None => &digit[start..end],
                Some(p) => {
                    gathered.iter_mut().zip(&p[start..end]).for_each(|(g, &i)| *g = digit[i]);
                    &gathered[..end - start]
                }
            };
            match (&mut *self, b, a) {
                (RowSums::Narrow { s0, s1, cap }, KeyRow::Narrow(b), KeyRow::Narrow(a)) => lazy_products(
                    &mut s0[start..end],
                    &mut s1[start..end],
                    v,
                    &b[start..end],
                    &a[start..end],
                    *cap,
                ),
                (RowSums::Wide { s0, s1 }, KeyRow::Wide(b), KeyRow::Wide(a)) => {
                    let (b, a) = (&b[start..end], &a[start..end]);
                    for (((x0, x1), (&b, &a)), &v) in
                        s0[start..end].iter_mut().zip(&mut s1[start..end]).zip(b.iter().zip(a)).zip(v)
                    {
                        *x0 += v as u128 * b as u128;
                        *x1 += v as u128 * a as u128;
                    }
                }
                _ => unreachable!("key rows are narrow exactly when their prime is"),
            }
        }
    }

    fn write(self, out0: &mut [u64], out1: &mut [u64], m: &Modulus) {
        match self {
            RowSums::Narrow { s0, s1, .. } => {
                out0.iter_mut().zip(&s0).for_each(|(o, &x)| *o = m.reduce(x));
                out1.iter_mut().zip(&s1).for_each(|(o, &x)| *o = m.reduce(x));
            }
            RowSums::Wide { s0, s1 } => {
                out0.iter_mut().zip(&s0).for_each(|(o, &x)| *o = m.reduce_u128(x));
                out1.iter_mut().zip(&s1).for_each(|(o, &x)| *o = m.reduce_u128(x));
            }
        }
    }
}

vectorised! {
    /// `s0 += v b`, `s1 += v a` lazily (all factors below 2^31, sums below 2^63 + q).
    fn lazy_products(s0: &mut [u64], s1: &mut [u64], v: &[u64], b: &[u32], a: &[u32], cap: u64) {
        for ((((x0, x1), &v), &b), &a) in s0.iter_mut().zip(s1.iter_mut()).zip(v).zip(b).zip(a) {
            let v = v as u32 as u64;
            let t0 = *x0 + v * b as u64;
            *x0 = t0.min(t0.wrapping_sub(cap));
            let t1 = *x1 + v * a as u64;
            *x1 = t1.min(t1.wrapping_sub(cap));
        }
    }
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
    // Exact, centred conversion: the division rounds, and the error is independent of alpha.
    let rows = converter.prepare_exact(dropped.as_flat(), n);
    let mut out = ext.slice_limbs(0, if drop_q_last { level } else { level + 1 });
    out.for_each_row(|j, row| {
        let m = ctx.key_moduli[j];
        let mut tmp = vec![0u64; n];
        converter.convert_row_exact(&rows, j, &mut tmp);
        ctx.ntt[j].forward(&mut tmp);
        let w = inverse[j];
        let ws = m.shoup(w);
        for (x, &t) in row.iter_mut().zip(&tmp) {
            *x = m.mul_shoup(m.sub(*x, t), w, ws);
        }
    });
    out
}
