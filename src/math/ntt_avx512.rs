//! AVX-512 kernels for the negacyclic NTT of [`super::ntt::NttTable`].
//!
//! The same transform from the same twiddle tables as the scalar code, with the same results
//! after full reduction, eight butterflies per instruction. Two modular multipliers, chosen
//! per prime:
//!
//! * q < 2^50: AVX512-IFMA. Lazy values stay below 4q < 2^52, so the 52-bit multiply-adds
//!   compute Shoup's product with the constant floor(w 2^52 / q), which is the table's 64-bit
//!   constant shifted right by 12 (no extra tables).
//! * larger q (below 2^61): the high half of the 64-bit Shoup product is built from 32-bit
//!   partial products, skipping the low one. That underestimates the quotient by up to 2, so
//!   products are below 4q instead of 2q; the forward butterflies keep values below 8q
//!   (< 2^64) and the inverse ones below 4q rather than spend a subtraction per product.
//!
//! Order of work: transforms longer than `BLOCK_LEN` first run pairs of stages over the whole
//! array (two stages per pass through L2); each block of at most `BLOCK_LEN` values then runs
//! its remaining stages while it sits in L1 (the inverse mirrors this). Butterfly spans of 8
//! and more use one broadcast twiddle per vector pair. The three stages with spans 4, 2 and 1
//! run together on blocks of 16 values held in two registers: a perfect shuffle of the 16
//! lanes before each stage pairs up the right values and also makes each stage's twiddles a
//! plain (broadcast) load from the compact table.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::modulus::Modulus;

/// Largest prime size for the IFMA multiplier: lazy values below 4q must fit in 52 bits.
const IFMA_MAX_MODULUS_BITS: u32 = 50;

/// Smallest ring degree the kernels handle: the last three stages work on blocks of 16.
const MIN_DEGREE: usize = 16;

/// Vector kernels for one prime and degree.
///
/// Only [`Avx512Ntt::new`] builds one, after checking the CPU, so holding one is what makes
/// calling the `#[target_feature]` kernels sound.
#[derive(Clone, Copy, Debug)]
pub(super) struct Avx512Ntt {
    q: u64,
    /// IFMA multiplier (q < 2^50) rather than the emulated 64-bit one.
    ifma: bool,
    n_inv: u64,
    n_inv_shoup: u64,
    /// psi^-brv(1) * n^-1 and its Shoup constant: the last inverse stage also scales by n^-1.
    scaled_root: u64,
    scaled_root_shoup: u64,
}

/// A twiddle table in `NttTable`'s order with its 64-bit Shoup constants.
#[derive(Clone, Copy)]
pub(super) struct Twiddles<'a> {
    pub(super) roots: &'a [u64],
    pub(super) shoup: &'a [u64],
}

/// Whether this CPU has the instruction sets the kernels use.
pub(super) fn cpu_supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512ifma")
}

impl Avx512Ntt {
    /// Returns the kernels if this CPU supports them and `n` is large enough. `inv_root` is
    /// psi^-brv(1), the twiddle of the last inverse stage.
    pub(super) fn new(modulus: &Modulus, n: usize, inv_root: u64, n_inv: u64) -> Option<Self> {
        if n < MIN_DEGREE || !cpu_supported() {
            return None;
        }
        let q = modulus.value();
        let scaled_root = modulus.mul(inv_root, n_inv);
        Some(Avx512Ntt {
            q,
            ifma: q < 1 << IFMA_MAX_MODULUS_BITS,
            n_inv,
            n_inv_shoup: modulus.shoup(n_inv),
            scaled_root,
            scaled_root_shoup: modulus.shoup(scaled_root),
        })
    }

    /// Forward transform of `a` (values < 4q); output in [0, q) if `reduce`, else [0, 4q).
    pub(super) fn forward(&self, a: &mut [u64], tw: Twiddles, reduce: bool) {
        assert!(a.len() >= MIN_DEGREE && tw.roots.len() == a.len() && tw.shoup.len() == a.len());
        // SAFETY: `self` exists only if `new` detected every feature the kernels enable.
        unsafe {
            match (self.ifma, reduce) {
                (true, true) => forward::<true, true>(a, self.q, tw),
                (true, false) => forward::<true, false>(a, self.q, tw),
                (false, true) => forward::<false, true>(a, self.q, tw),
                (false, false) => forward::<false, false>(a, self.q, tw),
            }
        }
    }

    /// Inverse transform of `a` (values < 2q), scaled by n^-1; output in [0, q).
    pub(super) fn inverse(&self, a: &mut [u64], tw: Twiddles) {
        assert!(a.len() >= MIN_DEGREE && tw.roots.len() == a.len() && tw.shoup.len() == a.len());
        // SAFETY: as in `forward`.
        unsafe {
            if self.ifma {
                inverse::<true>(a, tw, self)
            } else {
                inverse::<false>(a, tw, self)
            }
        }
    }
}

/// Broadcast constants of the modulus.
#[derive(Clone, Copy)]
struct Consts {
    q: __m512i,
    two_q: __m512i,
    /// Bound on a lazy product: 2q with IFMA, 4q emulated. Butterflies keep values below
    /// twice this (forward) or below it (inverse).
    lazy: __m512i,
    /// 2^52 - q: adding a multiple of it subtracts that multiple of q modulo 2^52 (used,
    /// and meaningful, only with IFMA, where q < 2^50).
    neg_q52: __m512i,
    mask52: __m512i,
}

/// One twiddle per lane and its Shoup quotient at the multiplier's width.
#[derive(Clone, Copy)]
struct Root {
    w: __m512i,
    quot: __m512i,
}

#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn consts<const IFMA: bool>(q: u64) -> Consts {
    Consts {
        q: _mm512_set1_epi64(q as i64),
        two_q: _mm512_set1_epi64(2 * q as i64),
        lazy: _mm512_set1_epi64(if IFMA { 2 * q } else { 4 * q } as i64),
        neg_q52: _mm512_set1_epi64((1u64 << 52).wrapping_sub(q) as i64),
        mask52: _mm512_set1_epi64(((1u64 << 52) - 1) as i64),
    }
}

/// Builds a `Root` from twiddles and their 64-bit Shoup constants floor(w 2^64 / q).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn root<const IFMA: bool>(w: __m512i, shoup64: __m512i) -> Root {
    // floor(floor(w 2^64 / q) / 2^12) = floor(w 2^52 / q).
    let quot = if IFMA { _mm512_srli_epi64::<12>(shoup64) } else { shoup64 };
    Root { w, quot }
}

/// The same twiddle in every lane.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn splat_root<const IFMA: bool>(w: u64, shoup64: u64) -> Root {
    root::<IFMA>(_mm512_set1_epi64(w as i64), _mm512_set1_epi64(shoup64 as i64))
}

#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn load(v: &[u64; 8]) -> __m512i {
    // SAFETY: `v` is 64 readable bytes; the load has no alignment requirement.
    unsafe { _mm512_loadu_si512(v.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn store(v: &mut [u64; 8], x: __m512i) {
    // SAFETY: `v` is 64 writable bytes; the store has no alignment requirement.
    unsafe { _mm512_storeu_si512(v.as_mut_ptr().cast(), x) }
}

/// [v0 v1 v0 v1 v0 v1 v0 v1].
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn broadcast2(v: &[u64; 2]) -> __m512i {
    // SAFETY: `v` is 16 readable bytes; the load has no alignment requirement.
    _mm512_broadcast_i64x2(unsafe { _mm_loadu_si128(v.as_ptr().cast()) })
}

/// [v0 v1 v2 v3 v0 v1 v2 v3].
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn broadcast4(v: &[u64; 4]) -> __m512i {
    // SAFETY: `v` is 32 readable bytes; the load has no alignment requirement.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(v.as_ptr().cast()) })
}

/// Maps [0, 2 bound) to [0, bound): if x < bound the wrapped difference is larger, so `min`
/// keeps x.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn reduce_below(x: __m512i, bound: __m512i) -> __m512i {
    _mm512_min_epu64(x, _mm512_sub_epi64(x, bound))
}

/// a * w mod q, lazily: in [0, 2q) for a < 2^52 (IFMA), in [0, 4q) for any a (emulated).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn mul_lazy<const IFMA: bool>(a: __m512i, r: Root, c: Consts) -> __m512i {
    if IFMA {
        mul_lazy_ifma(a, r, c)
    } else {
        mul_lazy_emulated(a, r, c)
    }
}

/// Shoup multiplication with 52-bit limbs: a, w and floor(w 2^52 / q) are all below 2^52.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn mul_lazy_ifma(a: __m512i, r: Root, c: Consts) -> __m512i {
    let zero = _mm512_setzero_si512();
    let quotient = _mm512_madd52hi_epu64(zero, a, r.quot);
    let product = _mm512_madd52lo_epu64(zero, a, r.w);
    // a w - quotient q is in [0, 2q), so computing it modulo 2^52 loses nothing.
    let rem = _mm512_madd52lo_epu64(product, quotient, c.neg_q52);
    _mm512_and_si512(rem, c.mask52)
}

/// Shoup multiplication with 64-bit words and an approximate quotient.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn mul_lazy_emulated(a: __m512i, r: Root, c: Consts) -> __m512i {
    // The quotient is short by at most 2, so the result is below 4q (rather than Shoup's 2q);
    // the butterflies allow for that instead of spending a subtraction here.
    let quotient = mulhi_approx(a, r.quot);
    _mm512_sub_epi64(_mm512_mullo_epi64(a, r.w), _mm512_mullo_epi64(quotient, c.q))
}

/// Maps a lazy product, in [0, lazy), to [0, q).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn reduce_product<const IFMA: bool>(t: __m512i, c: Consts) -> __m512i {
    let t = if IFMA { t } else { reduce_below(t, c.two_q) };
    reduce_below(t, c.q)
}

/// floor(a b / 2^64) minus 0, 1 or 2.
///
/// Of the four 32x32-bit partial products the low one is skipped and the middle ones enter
/// only through their high halves; each omission loses less than one unit.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn mulhi_approx(a: __m512i, b: __m512i) -> __m512i {
    let a_hi = _mm512_srli_epi64::<32>(a);
    let b_hi = _mm512_srli_epi64::<32>(b);
    // `_mm512_mul_epu32` multiplies the low 32 bits of each lane.
    let hh = _mm512_mul_epu32(a_hi, b_hi);
    let lh = _mm512_mul_epu32(a, b_hi);
    let hl = _mm512_mul_epu32(a_hi, b);
    let mid = _mm512_add_epi64(_mm512_srli_epi64::<32>(lh), _mm512_srli_epi64::<32>(hl));
    _mm512_add_epi64(hh, mid)
}

/// Cooley-Tukey butterfly: (x, y) in [0, 2 lazy) to (x + w y, x - w y) in [0, 2 lazy).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn ct_butterfly<const IFMA: bool>(x: __m512i, y: __m512i, r: Root, c: Consts) -> (__m512i, __m512i) {
    let x = reduce_below(x, c.lazy);
    let t = mul_lazy::<IFMA>(y, r, c);
    (_mm512_add_epi64(x, t), _mm512_sub_epi64(_mm512_add_epi64(x, c.lazy), t))
}

/// Maps a forward output, in [0, 2 lazy), to [0, q) if REDUCE, else to [0, 4q): the ranges
/// `forward` and `forward_lazy` promise.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward_output<const IFMA: bool, const REDUCE: bool>(x: __m512i, c: Consts) -> __m512i {
    let x = if IFMA { x } else { reduce_below(x, c.lazy) };
    if REDUCE {
        reduce_below(reduce_below(x, c.two_q), c.q)
    } else {
        x
    }
}

/// Gentleman-Sande butterfly: (x, y) in [0, lazy) to (x + y, (x - y) w) in [0, lazy).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn gs_butterfly<const IFMA: bool>(x: __m512i, y: __m512i, r: Root, c: Consts) -> (__m512i, __m512i) {
    let sum = reduce_below(_mm512_add_epi64(x, y), c.lazy);
    let diff = _mm512_sub_epi64(_mm512_add_epi64(x, c.lazy), y);
    (sum, mul_lazy::<IFMA>(diff, r, c))
}

/// The last Gentleman-Sande butterfly with the scaling by n^-1 folded in: outputs in [0, q).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn gs_butterfly_scaled<const IFMA: bool>(
    x: __m512i,
    y: __m512i,
    n_inv: Root,
    scaled_root: Root,
    c: Consts,
) -> (__m512i, __m512i) {
    let sum = mul_lazy::<IFMA>(_mm512_add_epi64(x, y), n_inv, c);
    let diff = _mm512_sub_epi64(_mm512_add_epi64(x, c.lazy), y);
    let diff = mul_lazy::<IFMA>(diff, scaled_root, c);
    (reduce_product::<IFMA>(sum, c), reduce_product::<IFMA>(diff, c))
}

/// Perfect shuffle of 16 lanes: ([a0 b0 a1 b1 a2 b2 a3 b3], [a4 b4 a5 b5 a6 b6 a7 b7]).
///
/// Applied to 16 consecutive values it pairs the values 4 apart (lane j of the first result
/// with lane j of the second); each further application halves that distance, and the fourth
/// restores the original order.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn interleave(a: __m512i, b: __m512i) -> (__m512i, __m512i) {
    let lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    let hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    (_mm512_permutex2var_epi64(a, lo, b), _mm512_permutex2var_epi64(a, hi, b))
}

/// `interleave` of each of K register pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn interleave_all<const K: usize>(x: &mut [__m512i; K], y: &mut [__m512i; K]) {
    for (a, b) in x.iter_mut().zip(y) {
        (*a, *b) = interleave(*a, *b);
    }
}

/// Inverse of [`interleave`]: (even lanes of a:b, odd lanes of a:b).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn deinterleave(a: __m512i, b: __m512i) -> (__m512i, __m512i) {
    let even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    let odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    (_mm512_permutex2var_epi64(a, even, b), _mm512_permutex2var_epi64(a, odd, b))
}

/// `deinterleave` of each of K register pairs.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn deinterleave_all<const K: usize>(x: &mut [__m512i; K], y: &mut [__m512i; K]) {
    for (a, b) in x.iter_mut().zip(y) {
        (*a, *b) = deinterleave(*a, *b);
    }
}

/// Largest block (in values) that runs all its remaining stages in one go: it stays in the
/// 32 KiB L1 data cache, with room for its twiddles.
const BLOCK_LEN: usize = 2048;

/// Length of the blocks that run their remaining stages in cache. Longer transforms first run
/// pairs of stages over the whole array (each pass through L2 does two stages) until the
/// butterfly groups are no longer than `BLOCK_LEN`.
fn block_len(n: usize) -> usize {
    let mut len = n;
    while len > BLOCK_LEN {
        len /= 4;
    }
    len
}

impl<'a> Twiddles<'a> {
    /// The twiddles of the stage with butterfly span `span`, from the group that starts at
    /// value `start` on: that stage's twiddles are stored from index n / (2 span).
    fn stage(self, n: usize, start: usize, span: usize) -> Twiddles<'a> {
        let first = (n + start) / (2 * span);
        Twiddles { roots: &self.roots[first..], shoup: &self.shoup[first..] }
    }
}

/// The four quarters of a butterfly group, as vectors.
type Quarters<'a> = [&'a mut [[u64; 8]]; 4];

fn quarters(group: &mut [u64]) -> Quarters<'_> {
    let (front, back) = group.split_at_mut(group.len() / 2);
    let (q0, q1) = front.split_at_mut(front.len() / 2);
    let (q2, q3) = back.split_at_mut(back.len() / 2);
    [q0.as_chunks_mut().0, q1.as_chunks_mut().0, q2.as_chunks_mut().0, q3.as_chunks_mut().0]
}

#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward<const IFMA: bool, const REDUCE: bool>(a: &mut [u64], q: u64, tw: Twiddles) {
    let c = consts::<IFMA>(q);
    let n = a.len();
    let block_len = block_len(n);
    let mut span = n / 2;
    while 2 * span > block_len {
        ct_stage_pair::<IFMA>(a, span, tw.stage(n, 0, span), tw.stage(n, 0, span / 2), c);
        span /= 4;
    }
    for (b, block) in a.chunks_exact_mut(block_len).enumerate() {
        forward_block::<IFMA, REDUCE>(block, b * block_len, tw, c);
    }
}

/// All forward stages within one block (spans `block.len() / 2` down to 1).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward_block<const IFMA: bool, const REDUCE: bool>(
    block: &mut [u64],
    start: usize,
    tw: Twiddles,
    c: Consts,
) {
    let n = tw.roots.len(); // the tables have one twiddle per value
    let mut span = block.len() / 2;
    // Spans down to 8 go in pairs, after a single stage if their number is odd.
    let wide_stages = block.len().ilog2() - 3;
    if wide_stages % 2 == 1 {
        ct_stage::<IFMA>(block, span, tw.stage(n, start, span), c);
        span /= 2;
    }
    while span >= 16 {
        let (outer, inner) = (tw.stage(n, start, span), tw.stage(n, start, span / 2));
        ct_stage_pair::<IFMA>(block, span, outer, inner, c);
        span /= 4;
    }
    let last = [4, 2, 1].map(|span| tw.stage(n, start, span));
    forward_last_three::<IFMA, REDUCE>(block, last, c);
}

/// One forward stage with butterfly span `span` >= 8.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn ct_stage<const IFMA: bool>(block: &mut [u64], span: usize, tw: Twiddles, c: Consts) {
    for (i, group) in block.chunks_exact_mut(2 * span).enumerate() {
        let r = splat_root::<IFMA>(tw.roots[i], tw.shoup[i]);
        let (lo, hi) = group.split_at_mut(span);
        for (x, y) in lo.as_chunks_mut().0.iter_mut().zip(hi.as_chunks_mut().0) {
            let (vx, vy) = ct_butterfly::<IFMA>(load(x), load(y), r, c);
            store(x, vx);
            store(y, vy);
        }
    }
}

/// Two forward stages, spans `span` >= 16 and `span / 2`, in one pass over the data.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn ct_stage_pair<const IFMA: bool>(
    block: &mut [u64],
    span: usize,
    outer: Twiddles,
    inner: Twiddles,
    c: Consts,
) {
    for (i, group) in block.chunks_exact_mut(2 * span).enumerate() {
        let r = splat_root::<IFMA>(outer.roots[i], outer.shoup[i]);
        let r0 = splat_root::<IFMA>(inner.roots[2 * i], inner.shoup[2 * i]);
        let r1 = splat_root::<IFMA>(inner.roots[2 * i + 1], inner.shoup[2 * i + 1]);
        let [q0, q1, q2, q3] = quarters(group);
        for (((x0, x1), x2), x3) in q0.iter_mut().zip(q1).zip(q2).zip(q3) {
            let (v0, v2) = ct_butterfly::<IFMA>(load(x0), load(x2), r, c);
            let (v1, v3) = ct_butterfly::<IFMA>(load(x1), load(x3), r, c);
            let (v0, v1) = ct_butterfly::<IFMA>(v0, v1, r0, c);
            let (v2, v3) = ct_butterfly::<IFMA>(v2, v3, r1, c);
            store(x0, v0);
            store(x1, v1);
            store(x2, v2);
            store(x3, v3);
        }
    }
}

/// How many 16-value blocks the span 4/2/1 kernels work on at once, interleaved stage by
/// stage: one block is a single chain of dependent permutes and multiplies, which would leave
/// the vector units idle for most of their latencies.
const INTERLEAVED_BLOCKS: usize = 4;

/// The forward stages with spans 4, 2 and 1 (twiddles `tw`, in that order), on blocks of 16.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward_last_three<const IFMA: bool, const REDUCE: bool>(block: &mut [u64], tw: [Twiddles; 3], c: Consts) {
    if block.len() >= 16 * INTERLEAVED_BLOCKS {
        forward_last_three_by::<IFMA, REDUCE, INTERLEAVED_BLOCKS>(block, tw, c);
    } else {
        forward_last_three_by::<IFMA, REDUCE, 1>(block, tw, c);
    }
}

/// `forward_last_three`, K blocks at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward_last_three_by<const IFMA: bool, const REDUCE: bool, const K: usize>(
    block: &mut [u64],
    tw: [Twiddles; 3],
    c: Consts,
) {
    let (w4, s4) = (tw[0].roots.as_chunks().0, tw[0].shoup.as_chunks().0);
    let (w2, s2) = (tw[1].roots.as_chunks().0, tw[1].shoup.as_chunks().0);
    let (w1, s1) = (tw[2].roots.as_chunks().0, tw[2].shoup.as_chunks().0);
    for (k, vectors) in block.as_chunks_mut::<8>().0.chunks_exact_mut(2 * K).enumerate() {
        let mut x = [_mm512_setzero_si512(); K];
        let mut y = x;
        for j in 0..K {
            (x[j], y[j]) = (load(&vectors[2 * j]), load(&vectors[2 * j + 1]));
        }
        interleave_all(&mut x, &mut y);
        // Block b = K k + j holds [v0 v8 v1 v9 v2 v10 v3 v11], [v4 v12 ...]: its groups 2b
        // and 2b + 1 alternate.
        for j in 0..K {
            let b = K * k + j;
            let r = root::<IFMA>(broadcast2(&w4[b]), broadcast2(&s4[b]));
            (x[j], y[j]) = ct_butterfly::<IFMA>(x[j], y[j], r, c);
        }
        interleave_all(&mut x, &mut y);
        // [v0 v4 v8 v12 v1 v5 v9 v13], [v2 v6 ...]: groups 4b .. 4b + 3, repeated.
        for j in 0..K {
            let b = K * k + j;
            let r = root::<IFMA>(broadcast4(&w2[b]), broadcast4(&s2[b]));
            (x[j], y[j]) = ct_butterfly::<IFMA>(x[j], y[j], r, c);
        }
        interleave_all(&mut x, &mut y);
        // [v0 v2 v4 ... v14], [v1 v3 ... v15]: groups 8b .. 8b + 7.
        for j in 0..K {
            let b = K * k + j;
            let r = root::<IFMA>(load(&w1[b]), load(&s1[b]));
            (x[j], y[j]) = ct_butterfly::<IFMA>(x[j], y[j], r, c);
        }
        interleave_all(&mut x, &mut y);
        for j in 0..K {
            store(&mut vectors[2 * j], forward_output::<IFMA, REDUCE>(x[j], c));
            store(&mut vectors[2 * j + 1], forward_output::<IFMA, REDUCE>(y[j], c));
        }
    }
}

/// The constants of the last inverse stage, which also multiplies by n^-1.
#[derive(Clone, Copy)]
struct Scaling {
    n_inv: Root,
    /// psi^-brv(1) n^-1, the last stage's twiddle times n^-1.
    root: Root,
}

#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn inverse<const IFMA: bool>(a: &mut [u64], tw: Twiddles, kernels: &Avx512Ntt) {
    let c = consts::<IFMA>(kernels.q);
    let s = Scaling {
        n_inv: splat_root::<IFMA>(kernels.n_inv, kernels.n_inv_shoup),
        root: splat_root::<IFMA>(kernels.scaled_root, kernels.scaled_root_shoup),
    };
    let n = a.len();
    let block_len = block_len(n);
    for (b, block) in a.chunks_exact_mut(block_len).enumerate() {
        inverse_block::<IFMA>(block, b * block_len, tw, s, c);
    }
    // The stage pairs over the whole array, mirroring `forward`.
    let mut span = block_len;
    while span < n {
        let (inner, outer) = (tw.stage(n, 0, span), tw.stage(n, 0, 2 * span));
        if 4 * span == n {
            gs_stage_pair::<IFMA, true>(a, span, inner, outer, s, c);
        } else {
            gs_stage_pair::<IFMA, false>(a, span, inner, outer, s, c);
        }
        span *= 4;
    }
}

/// All inverse stages within one block (spans 1 up to `block.len() / 2`); if the block is the
/// whole array its last stage also scales by n^-1.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn inverse_block<const IFMA: bool>(block: &mut [u64], start: usize, tw: Twiddles, s: Scaling, c: Consts) {
    let n = tw.roots.len(); // the tables have one twiddle per value
    let first = [1, 2, 4].map(|span| tw.stage(n, start, span));
    inverse_first_three::<IFMA>(block, first, c);
    let top = block.len() / 2;
    let mut span = 8;
    while 2 * span <= top {
        let (inner, outer) = (tw.stage(n, start, span), tw.stage(n, start, 2 * span));
        if 2 * span == n / 2 {
            gs_stage_pair::<IFMA, true>(block, span, inner, outer, s, c);
        } else {
            gs_stage_pair::<IFMA, false>(block, span, inner, outer, s, c);
        }
        span *= 4;
    }
    // An odd number of stages with spans from 8 leaves the top one single.
    if span == top {
        if span == n / 2 {
            gs_stage::<IFMA, true>(block, span, tw.stage(n, start, span), s, c);
        } else {
            gs_stage::<IFMA, false>(block, span, tw.stage(n, start, span), s, c);
        }
    }
}

/// The inverse stages with spans 1, 2 and 4 (twiddles `tw`, in that order), on blocks of 16;
/// the lane order mirrors `forward_last_three`.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn inverse_first_three<const IFMA: bool>(block: &mut [u64], tw: [Twiddles; 3], c: Consts) {
    if block.len() >= 16 * INTERLEAVED_BLOCKS {
        inverse_first_three_by::<IFMA, INTERLEAVED_BLOCKS>(block, tw, c);
    } else {
        inverse_first_three_by::<IFMA, 1>(block, tw, c);
    }
}

/// `inverse_first_three`, K blocks at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn inverse_first_three_by<const IFMA: bool, const K: usize>(block: &mut [u64], tw: [Twiddles; 3], c: Consts) {
    let (w1, s1) = (tw[0].roots.as_chunks().0, tw[0].shoup.as_chunks().0);
    let (w2, s2) = (tw[1].roots.as_chunks().0, tw[1].shoup.as_chunks().0);
    let (w4, s4) = (tw[2].roots.as_chunks().0, tw[2].shoup.as_chunks().0);
    for (k, vectors) in block.as_chunks_mut::<8>().0.chunks_exact_mut(2 * K).enumerate() {
        let mut x = [_mm512_setzero_si512(); K];
        let mut y = x;
        for j in 0..K {
            (x[j], y[j]) = (load(&vectors[2 * j]), load(&vectors[2 * j + 1]));
        }
        deinterleave_all(&mut x, &mut y);
        for j in 0..K {
            let b = K * k + j;
            let r = root::<IFMA>(load(&w1[b]), load(&s1[b]));
            (x[j], y[j]) = gs_butterfly::<IFMA>(x[j], y[j], r, c);
        }
        deinterleave_all(&mut x, &mut y);
        for j in 0..K {
            let b = K * k + j;
            let r = root::<IFMA>(broadcast4(&w2[b]), broadcast4(&s2[b]));
            (x[j], y[j]) = gs_butterfly::<IFMA>(x[j], y[j], r, c);
        }
        deinterleave_all(&mut x, &mut y);
        for j in 0..K {
            let b = K * k + j;
            let r = root::<IFMA>(broadcast2(&w4[b]), broadcast2(&s4[b]));
            (x[j], y[j]) = gs_butterfly::<IFMA>(x[j], y[j], r, c);
        }
        deinterleave_all(&mut x, &mut y);
        for j in 0..K {
            store(&mut vectors[2 * j], x[j]);
            store(&mut vectors[2 * j + 1], y[j]);
        }
    }
}

/// The butterfly of an inverse stage; with SCALED, of the last stage, scaling by n^-1 (its
/// twiddle `r` is then part of `s`).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn gs_stage_butterfly<const IFMA: bool, const SCALED: bool>(
    x: __m512i,
    y: __m512i,
    r: Root,
    s: Scaling,
    c: Consts,
) -> (__m512i, __m512i) {
    if SCALED {
        gs_butterfly_scaled::<IFMA>(x, y, s.n_inv, s.root, c)
    } else {
        gs_butterfly::<IFMA>(x, y, r, c)
    }
}

/// One inverse stage with butterfly span `span` >= 8 (see `gs_stage_butterfly` for SCALED).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn gs_stage<const IFMA: bool, const SCALED: bool>(
    block: &mut [u64],
    span: usize,
    tw: Twiddles,
    s: Scaling,
    c: Consts,
) {
    for (i, group) in block.chunks_exact_mut(2 * span).enumerate() {
        let r = splat_root::<IFMA>(tw.roots[i], tw.shoup[i]);
        let (lo, hi) = group.split_at_mut(span);
        for (x, y) in lo.as_chunks_mut().0.iter_mut().zip(hi.as_chunks_mut().0) {
            let (vx, vy) = gs_stage_butterfly::<IFMA, SCALED>(load(x), load(y), r, s, c);
            store(x, vx);
            store(y, vy);
        }
    }
}

/// Two inverse stages, spans `span` >= 8 and `2 span`, in one pass over the data (see
/// `gs_stage_butterfly` for SCALED, which applies to the second).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn gs_stage_pair<const IFMA: bool, const SCALED: bool>(
    block: &mut [u64],
    span: usize,
    inner: Twiddles,
    outer: Twiddles,
    s: Scaling,
    c: Consts,
) {
    for (i, group) in block.chunks_exact_mut(4 * span).enumerate() {
        let r0 = splat_root::<IFMA>(inner.roots[2 * i], inner.shoup[2 * i]);
        let r1 = splat_root::<IFMA>(inner.roots[2 * i + 1], inner.shoup[2 * i + 1]);
        let r = splat_root::<IFMA>(outer.roots[i], outer.shoup[i]);
        let [q0, q1, q2, q3] = quarters(group);
        for (((x0, x1), x2), x3) in q0.iter_mut().zip(q1).zip(q2).zip(q3) {
            let (v0, v1) = gs_butterfly::<IFMA>(load(x0), load(x1), r0, c);
            let (v2, v3) = gs_butterfly::<IFMA>(load(x2), load(x3), r1, c);
            let (v0, v2) = gs_stage_butterfly::<IFMA, SCALED>(v0, v2, r, s, c);
            let (v1, v3) = gs_stage_butterfly::<IFMA, SCALED>(v1, v3, r, s, c);
            store(x0, v0);
            store(x1, v1);
            store(x2, v2);
            store(x3, v3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::primes::{ntt_primes, Side};

    /// `mul_lazy` on eight (a, w) pairs; returns the lanes.
    #[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
    fn mul_lazy_lanes<const IFMA: bool>(q: u64, a: [u64; 8], w: [u64; 8]) -> [u64; 8] {
        let modulus = Modulus::new(q);
        let shoup = w.map(|w| modulus.shoup(w));
        let r = root::<IFMA>(load(&w), load(&shoup));
        let mut out = [0u64; 8];
        store(&mut out, mul_lazy::<IFMA>(load(&a), r, consts::<IFMA>(q)));
        out
    }

    /// Checks `mul_lazy` against exact arithmetic on the largest inputs the butterflies give
    /// it (below 2 lazy) and twiddles near q, where the quotient estimates are furthest off.
    fn check_mul_lazy<const IFMA: bool>(bits: u32) {
        let q = ntt_primes(bits, 1, 16, Side::Below, &[])[0];
        let lazy = if IFMA { 2 * q } else { 4 * q };
        for offset in 0..64u64 {
            let a: [u64; 8] = std::array::from_fn(|j| 2 * lazy - 1 - offset * 8 - j as u64);
            let w: [u64; 8] = std::array::from_fn(|j| q - 1 - offset * (j as u64 + 1));
            // SAFETY: callers run this only after `cpu_supported`.
            let out = unsafe { mul_lazy_lanes::<IFMA>(q, a, w) };
            for j in 0..8 {
                let exact = (a[j] as u128 * w[j] as u128 % q as u128) as u64;
                assert!(out[j] < lazy, "{bits}-bit: {} not below the lazy bound", out[j]);
                assert_eq!(out[j] % q, exact, "{bits}-bit: {} * {}", a[j], w[j]);
            }
        }
    }

    #[test]
    fn multipliers_are_exact_at_the_range_limits() {
        if !cpu_supported() {
            return;
        }
        for bits in [30, 40, 49, 50] {
            check_mul_lazy::<true>(bits);
        }
        for bits in [30, 50, 55, 60, 61] {
            check_mul_lazy::<false>(bits);
        }
    }

    #[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
    fn shuffle_lanes(a: [u64; 8], b: [u64; 8]) -> ([u64; 8], [u64; 8], [u64; 8], [u64; 8]) {
        let (lo, hi) = interleave(load(&a), load(&b));
        let (even, odd) = deinterleave(lo, hi);
        let mut out = [[0u64; 8]; 4];
        for (dst, v) in out.iter_mut().zip([lo, hi, even, odd]) {
            store(dst, v);
        }
        let [lo, hi, even, odd] = out;
        (lo, hi, even, odd)
    }

    #[test]
    fn deinterleave_inverts_interleave() {
        if !cpu_supported() {
            return;
        }
        let a = [0, 1, 2, 3, 4, 5, 6, 7];
        let b = [8, 9, 10, 11, 12, 13, 14, 15];
        // SAFETY: the CPU check above.
        let (lo, hi, even, odd) = unsafe { shuffle_lanes(a, b) };
        assert_eq!(lo, [0, 8, 1, 9, 2, 10, 3, 11]);
        assert_eq!(hi, [4, 12, 5, 13, 6, 14, 7, 15]);
        assert_eq!((even, odd), (a, b));
    }
}
