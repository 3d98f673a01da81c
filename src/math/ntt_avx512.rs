//! AVX-512 kernels for the negacyclic NTT of [`super::ntt::NttTable`].
//!
//! Same transform, same twiddle tables and the same results after full reduction as the
//! scalar code; eight butterflies per instruction. Two modular multipliers, chosen per prime:
//!
//! * q < 2^50: AVX512-IFMA. Lazy values stay below 4q < 2^52, so the 52-bit multiply-add
//!   computes Shoup's product with the quotient constant floor(w 2^52 / q), which is the
//!   table's 64-bit constant shifted right by 12 (no extra tables).
//! * larger q (up to 2^61): the high half of the 64-bit Shoup product is built from 32-bit
//!   partial products; the low partial product is skipped, which underestimates the quotient
//!   by at most 2 and costs one extra conditional subtraction.
//!
//! Butterfly spans of 8 and more use one broadcast twiddle per vector pair. The three stages
//! with spans 4, 2 and 1 run together on blocks of 16 values held in two registers: a perfect
//! shuffle of the 16 lanes before each stage pairs up the right values and also makes each
//! stage's twiddles a plain (broadcast) load from the compact table.

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

impl Avx512Ntt {
    /// Returns the kernels if this CPU has AVX-512 F, DQ and IFMA and `n` is large enough.
    /// `inv_root` is psi^-brv(1), the twiddle of the last inverse stage.
    pub(super) fn new(modulus: &Modulus, n: usize, inv_root: u64, n_inv: u64) -> Option<Self> {
        let supported = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512ifma");
        let q = modulus.value();
        let scaled_root = modulus.mul(inv_root, n_inv);
        (supported && n >= MIN_DEGREE).then(|| Avx512Ntt {
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
    /// 2^52 - q: adding a multiple of it subtracts that multiple of q modulo 2^52.
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
fn consts(q: u64) -> Consts {
    Consts {
        q: _mm512_set1_epi64(q as i64),
        two_q: _mm512_set1_epi64(2 * q as i64),
        neg_q52: _mm512_set1_epi64(((1u64 << 52) - q) as i64),
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

/// a * w mod q in [0, 2q), for a < 2^52 (IFMA) or any a < 2^63 (emulated).
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
    let quotient = mulhi_approx(a, r.quot);
    let rem = _mm512_sub_epi64(_mm512_mullo_epi64(a, r.w), _mm512_mullo_epi64(quotient, c.q));
    // The quotient is short by at most 2, so rem < 4q.
    reduce_below(rem, c.two_q)
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

/// Cooley-Tukey butterfly: (x, y) in [0, 4q) to (x + w y, x - w y) in [0, 4q).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn ct_butterfly<const IFMA: bool>(x: __m512i, y: __m512i, r: Root, c: Consts) -> (__m512i, __m512i) {
    let x = reduce_below(x, c.two_q);
    let t = mul_lazy::<IFMA>(y, r, c);
    (_mm512_add_epi64(x, t), _mm512_sub_epi64(_mm512_add_epi64(x, c.two_q), t))
}

/// Gentleman-Sande butterfly: (x, y) in [0, 2q) to (x + y, (x - y) w) in [0, 2q).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn gs_butterfly<const IFMA: bool>(x: __m512i, y: __m512i, r: Root, c: Consts) -> (__m512i, __m512i) {
    let sum = reduce_below(_mm512_add_epi64(x, y), c.two_q);
    let diff = _mm512_sub_epi64(_mm512_add_epi64(x, c.two_q), y);
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
    let diff = _mm512_sub_epi64(_mm512_add_epi64(x, c.two_q), y);
    let diff = mul_lazy::<IFMA>(diff, scaled_root, c);
    (reduce_below(sum, c.q), reduce_below(diff, c.q))
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

/// Inverse of [`interleave`]: (even lanes of a:b, odd lanes of a:b).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn deinterleave(a: __m512i, b: __m512i) -> (__m512i, __m512i) {
    let even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    let odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    (_mm512_permutex2var_epi64(a, even, b), _mm512_permutex2var_epi64(a, odd, b))
}

#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward<const IFMA: bool, const REDUCE: bool>(a: &mut [u64], q: u64, tw: Twiddles) {
    let c = consts(q);
    let n = a.len();
    let mut groups = 1;
    while n / groups >= 2 * MIN_DEGREE {
        forward_stage::<IFMA>(a, groups, tw, c);
        groups *= 2;
    }
    forward_last_three::<IFMA, REDUCE>(a, tw, c);
}

/// One forward stage with butterfly span n / (2 groups) >= 8.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward_stage<const IFMA: bool>(a: &mut [u64], groups: usize, tw: Twiddles, c: Consts) {
    let span = a.len() / (2 * groups);
    for (i, group) in a.chunks_exact_mut(2 * span).enumerate() {
        let r = splat_root::<IFMA>(tw.roots[groups + i], tw.shoup[groups + i]);
        let (lo, hi) = group.split_at_mut(span);
        for (x, y) in lo.as_chunks_mut().0.iter_mut().zip(hi.as_chunks_mut().0) {
            let (vx, vy) = ct_butterfly::<IFMA>(load(x), load(y), r, c);
            store(x, vx);
            store(y, vy);
        }
    }
}

/// The forward stages with spans 4, 2 and 1, on blocks of 16 values.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn forward_last_three<const IFMA: bool, const REDUCE: bool>(a: &mut [u64], tw: Twiddles, c: Consts) {
    let n = a.len();
    // Stage with span s uses roots[n / 2s ..]; block k covers its groups (16 / 2s) k onwards.
    let (w4, s4) = (tw.roots[n / 8..].as_chunks().0, tw.shoup[n / 8..].as_chunks().0);
    let (w2, s2) = (tw.roots[n / 4..].as_chunks().0, tw.shoup[n / 4..].as_chunks().0);
    let (w1, s1) = (tw.roots[n / 2..].as_chunks().0, tw.shoup[n / 2..].as_chunks().0);
    for (k, block) in a.as_chunks_mut::<8>().0.chunks_exact_mut(2).enumerate() {
        // Lanes hold [v0 v8 v1 v9 v2 v10 v3 v11], [v4 v12 ...]: groups alternate 2k, 2k + 1.
        let (x, y) = interleave(load(&block[0]), load(&block[1]));
        let r = root::<IFMA>(broadcast2(&w4[k]), broadcast2(&s4[k]));
        let (x, y) = ct_butterfly::<IFMA>(x, y, r, c);
        // [v0 v4 v8 v12 v1 v5 v9 v13], [v2 v6 ...]: groups 4k .. 4k + 3, repeated.
        let (x, y) = interleave(x, y);
        let r = root::<IFMA>(broadcast4(&w2[k]), broadcast4(&s2[k]));
        let (x, y) = ct_butterfly::<IFMA>(x, y, r, c);
        // [v0 v2 v4 ... v14], [v1 v3 ... v15]: groups 8k .. 8k + 7.
        let (x, y) = interleave(x, y);
        let r = root::<IFMA>(load(&w1[k]), load(&s1[k]));
        let (x, y) = ct_butterfly::<IFMA>(x, y, r, c);
        let (mut lo, mut hi) = interleave(x, y);
        if REDUCE {
            lo = reduce_below(reduce_below(lo, c.two_q), c.q);
            hi = reduce_below(reduce_below(hi, c.two_q), c.q);
        }
        store(&mut block[0], lo);
        store(&mut block[1], hi);
    }
}

#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn inverse<const IFMA: bool>(a: &mut [u64], tw: Twiddles, kernels: &Avx512Ntt) {
    let c = consts(kernels.q);
    let n = a.len();
    inverse_first_three::<IFMA>(a, tw, c);
    let mut groups = n / MIN_DEGREE;
    while groups > 1 {
        inverse_stage::<IFMA>(a, groups, tw, c);
        groups /= 2;
    }
    let n_inv = splat_root::<IFMA>(kernels.n_inv, kernels.n_inv_shoup);
    let scaled_root = splat_root::<IFMA>(kernels.scaled_root, kernels.scaled_root_shoup);
    let (lo, hi) = a.split_at_mut(n / 2);
    for (x, y) in lo.as_chunks_mut().0.iter_mut().zip(hi.as_chunks_mut().0) {
        let (vx, vy) = gs_butterfly_scaled::<IFMA>(load(x), load(y), n_inv, scaled_root, c);
        store(x, vx);
        store(y, vy);
    }
}

/// The inverse stages with spans 1, 2 and 4, on blocks of 16 values (see `forward_last_three`).
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn inverse_first_three<const IFMA: bool>(a: &mut [u64], tw: Twiddles, c: Consts) {
    let n = a.len();
    let (w4, s4) = (tw.roots[n / 8..].as_chunks().0, tw.shoup[n / 8..].as_chunks().0);
    let (w2, s2) = (tw.roots[n / 4..].as_chunks().0, tw.shoup[n / 4..].as_chunks().0);
    let (w1, s1) = (tw.roots[n / 2..].as_chunks().0, tw.shoup[n / 2..].as_chunks().0);
    for (k, block) in a.as_chunks_mut::<8>().0.chunks_exact_mut(2).enumerate() {
        let (x, y) = deinterleave(load(&block[0]), load(&block[1]));
        let r = root::<IFMA>(load(&w1[k]), load(&s1[k]));
        let (x, y) = gs_butterfly::<IFMA>(x, y, r, c);
        let (x, y) = deinterleave(x, y);
        let r = root::<IFMA>(broadcast4(&w2[k]), broadcast4(&s2[k]));
        let (x, y) = gs_butterfly::<IFMA>(x, y, r, c);
        let (x, y) = deinterleave(x, y);
        let r = root::<IFMA>(broadcast2(&w4[k]), broadcast2(&s4[k]));
        let (x, y) = gs_butterfly::<IFMA>(x, y, r, c);
        let (lo, hi) = deinterleave(x, y);
        store(&mut block[0], lo);
        store(&mut block[1], hi);
    }
}

/// One inverse stage with butterfly span n / (2 groups) >= 8, groups >= 2.
#[inline]
#[target_feature(enable = "avx512f,avx512dq,avx512ifma")]
fn inverse_stage<const IFMA: bool>(a: &mut [u64], groups: usize, tw: Twiddles, c: Consts) {
    let span = a.len() / (2 * groups);
    for (i, group) in a.chunks_exact_mut(2 * span).enumerate() {
        let r = splat_root::<IFMA>(tw.roots[groups + i], tw.shoup[groups + i]);
        let (lo, hi) = group.split_at_mut(span);
        for (x, y) in lo.as_chunks_mut().0.iter_mut().zip(hi.as_chunks_mut().0) {
            let (vx, vy) = gs_butterfly::<IFMA>(load(x), load(y), r, c);
            store(x, vx);
            store(y, vy);
        }
    }
}
