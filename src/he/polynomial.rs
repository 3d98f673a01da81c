//! Polynomials on any [`Backend`], at the minimal depth for their degree and with O(sqrt d)
//! ciphertext products.
//!
//! The evaluation is a baby-step giant-step scheme. Baby steps are the basis terms
//! `P_1 .. P_{k-1}` (`k = 2^l`, chosen per call by a dry run on the tracer), giant steps are
//! `P_{2^m}`; `P_i` is `x^i` or `T_i(t)`. A polynomial of degree `n` is split as
//! `p = q + P_{2^m} r` with `2^m <= n`, the lower part `q` split again until it fits the baby
//! steps, so `p = leaf + sum_m P_{2^m} r_m`; all those products are summed before a single
//! relinearisation (`dot`), and each `r_m` is evaluated the same way with one level less.
//! Leaves are one `linear` map over the baby steps, which is where the scalar coefficients
//! are applied; a plaintext product is only ever applied to a term with a level to spare.
//!
//! Depth. A product costs a level and so does applying a coefficient, so the deepest path is
//! the one through the leading coefficient: each `r_m` must be evaluated at the minimal depth
//! for its own degree. The split above does that (a leaf is used on that path only when the
//! linear map still fits the budget), while every other leaf has a level to spare.

use crate::error::{Error, Result};
use crate::math::dual::Real;

use super::backend::Backend;
use super::mirror::Mirror;

/// Largest degree [`Polynomial::fit_chebyshev`] accepts (the fit is quadratic in the degree).
pub const MAX_FIT_DEGREE: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub enum Basis {
    /// `coeffs[k]` multiplies `x^k`.
    Power,
    /// `coeffs[k]` multiplies `T_k(t)`, `t = (2x - lo - hi) / (hi - lo)`.
    Chebyshev { lo: f64, hi: f64 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Polynomial {
    pub basis: Basis,
    pub coeffs: Vec<f64>,
}

impl Polynomial {
    pub fn power(coeffs: Vec<f64>) -> Self {
        Polynomial { basis: Basis::Power, coeffs }
    }

    pub fn chebyshev(lo: f64, hi: f64, coeffs: Vec<f64>) -> Result<Self> {
        let p = Polynomial { basis: Basis::Chebyshev { lo, hi }, coeffs };
        p.validate()?;
        Ok(p)
    }

    /// Interpolates f at the degree+1 Chebyshev nodes of [lo, hi].
    pub fn fit_chebyshev(f: impl Fn(f64) -> f64, lo: f64, hi: f64, degree: usize) -> Result<Self> {
        check_interval(lo, hi)?;
        if degree > MAX_FIT_DEGREE {
            return Err(Error::OutOfRange(format!("degree {degree} exceeds {MAX_FIT_DEGREE}")));
        }
        let n = degree + 1;
        let (mid, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
        let angles: Vec<f64> = (0..n).map(|j| std::f64::consts::PI * (j as f64 + 0.5) / n as f64).collect();
        let values = angles
            .iter()
            .map(|&a| {
                let x = (mid + half * a.cos()).clamp(lo, hi);
                let y = f(x);
                if y.is_finite() {
                    Ok(y)
                } else {
                    Err(Error::NotFinite(format!("the function is not finite at {x}")))
                }
            })
            .collect::<Result<Vec<f64>>>()?;
        // T_k(cos a) = cos(k a): the discrete orthogonality of cosines gives the coefficients.
        let coeffs = (0..n)
            .map(|k| {
                let s: f64 = values.iter().zip(&angles).map(|(&y, &a)| y * (k as f64 * a).cos()).sum();
                s * if k == 0 { 1.0 } else { 2.0 } / n as f64
            })
            .collect();
        Polynomial::chebyshev(lo, hi, coeffs)
    }

    /// Degree, ignoring trailing zero coefficients (0 for the zero polynomial).
    pub fn degree(&self) -> usize {
        degree_of(&self.coeffs)
    }

    /// Levels [`evaluate`] consumes, exactly (the result is always `level(x) - depth()`):
    /// - degree 0: 0; degree 1: 1 (in the Chebyshev basis the affine map is folded into the
    ///   coefficient);
    /// - degree `d >= 2`: `ceil(log2(d + 1))`, plus 1 in the Chebyshev basis when
    ///   `2 / (hi - lo)` is not an integer (the affine map `t = a x + b` then costs a product;
    ///   an integer `a`, as for [-1, 1] or [0, 1], is applied for free).
    pub fn depth(&self) -> usize {
        match self.degree() {
            0 => 0,
            1 => 1,
            d => ceil_log2(d + 1) + usize::from(matches!(self.affine(), Affine::Scalar(..))),
        }
    }

    /// Reference value in f64 (Horner, or Clenshaw on `t = a x + b` as [`evaluate`] forms it).
    pub fn eval(&self, x: f64) -> f64 {
        self.eval_real(x)
    }

    /// [`Polynomial::eval`] on any [`Real`] (a [`crate::math::dual::Dual`] gives p'(x) too).
    pub fn eval_real<R: Real>(&self, x: R) -> R {
        let c = &self.coeffs[..(self.degree() + 1).min(self.coeffs.len())];
        match self.basis {
            Basis::Power => c.iter().rev().fold(R::constant(0.0), |acc, &ck| (acc * x).offset(ck)),
            Basis::Chebyshev { lo, hi } => {
                let (a, b) = affine_coefficients(lo, hi);
                let t = x.scale(a).offset(b);
                let (mut b1, mut b2) = (R::constant(0.0), R::constant(0.0));
                for &ck in c.iter().skip(1).rev() {
                    (b1, b2) = (((t * b1).scale(2.0) - b2).offset(ck), b1);
                }
                (t * b1 - b2).offset(c.first().copied().unwrap_or(0.0))
            }
        }
    }

    /// Finite coefficients and, in the Chebyshev basis, a finite non-empty interval.
    pub fn validate(&self) -> Result<()> {
        if let Basis::Chebyshev { lo, hi } = self.basis {
            check_interval(lo, hi)?;
        }
        if let Some(c) = self.coeffs.iter().find(|c| !c.is_finite()) {
            return Err(Error::NotFinite(format!("polynomial coefficient {c} is not finite")));
        }
        Ok(())
    }

    fn affine(&self) -> Affine {
        match self.basis {
            Basis::Power => Affine::Identity,
            Basis::Chebyshev { lo, hi } => {
                let (a, b) = affine_coefficients(lo, hi);
                if a.fract() == 0.0 && a.abs() <= (1 << 20) as f64 {
                    Affine::Integer(a as i64, b)
                } else {
                    Affine::Scalar(a, b)
                }
            }
        }
    }

    /// The coefficients and basis [`evaluate`] works on; degree <= 1 becomes `c0 + c1 x`.
    fn prepared(&self) -> (Vec<f64>, bool) {
        let d = self.degree();
        let c = |k: usize| self.coeffs.get(k).copied().unwrap_or(0.0);
        match (d, &self.basis) {
            (0, _) => (vec![c(0)], false),
            (1, Basis::Chebyshev { lo, hi }) => {
                let (a, b) = affine_coefficients(*lo, *hi);
                (vec![c(0) + c(1) * b, c(1) * a], false)
            }
            (_, basis) => (self.coeffs[..=d].to_vec(), matches!(basis, Basis::Chebyshev { .. })),
        }
    }
}

/// `p(x)`, consuming exactly `p.depth()` levels.
pub fn evaluate<B: Backend>(b: &B, x: &B::Value, p: &Polynomial) -> Result<B::Value> {
    let mut out = run(b, x, p, &[None])?;
    out.pop().ok_or_else(|| Error::InvalidInput("no result".into()))
}

/// `[p(x) * masks[k] for each k]` (slot-wise), at the same depth as [`evaluate`].
///
/// The masks enter where the coefficients do, as plaintext vectors (leaves and constant
/// terms), so they cost no level; the basis terms are shared, the giant-step products are
/// repeated per mask.
pub fn evaluate_masked<B: Backend>(
    b: &B,
    x: &B::Value,
    p: &Polynomial,
    masks: &[&[f64]],
) -> Result<Vec<B::Value>> {
    if let Some(m) = masks.iter().find(|m| m.len() != b.slots()) {
        return Err(Error::Shape(format!("mask has {} values, expected {}", m.len(), b.slots())));
    }
    let masks: Vec<Option<&[f64]>> = masks.iter().map(|&m| Some(m)).collect();
    run(b, x, p, &masks)
}

fn run<B: Backend>(b: &B, x: &B::Value, p: &Polynomial, masks: &[Option<&[f64]>]) -> Result<Vec<B::Value>> {
    p.validate()?;
    let (depth, level) = (p.depth(), b.level(x));
    if level < depth {
        return Err(Error::OutOfLevels(format!(
            "a degree-{} polynomial needs {depth} levels, the input is at level {level}",
            p.degree()
        )));
    }
    if masks.is_empty() {
        return Ok(Vec::new());
    }
    let (coeffs, chebyshev) = p.prepared();
    let t = if !chebyshev {
        x.clone()
    } else {
        match p.affine() {
            Affine::Identity => x.clone(),
            Affine::Integer(a, c) => {
                let ax = if a == 1 { x.clone() } else { b.mul_integer(x, a) };
                if c == 0.0 {
                    ax
                } else {
                    b.add_scalar(&ax, c)?
                }
            }
            Affine::Scalar(a, c) => {
                let ax = b.mul_scalar(x, a)?;
                if c == 0.0 {
                    ax
                } else {
                    b.add_scalar(&ax, c)?
                }
            }
        }
    };
    let budget = ceil_log2(coeffs.len());
    let baby = plan(&coeffs, chebyshev, budget, masks.len())?;
    let mut ev = Evaluator::new(b, t, chebyshev, baby, coeffs.len());
    let target = level - depth;
    masks
        .iter()
        .map(|&mask| {
            let term = ev.node(&coeffs, budget, mask)?;
            let v = match term.value {
                Some(v) if term.constant == 0.0 => v,
                Some(v) => add_const(b, &v, term.constant, mask)?,
                // A constant polynomial still needs a value: x - x is an exact zero.
                None => add_const(b, &b.sub(x, x)?, term.constant, mask)?,
            };
            if b.level(&v) > target {
                b.drop_to(&v, target)
            } else {
                Ok(v)
            }
        })
        .collect()
}

/// Baby-step count `2^l` with the fewest relinearisations, found by dry runs on the tracer
/// (basis terms are shared between masks, giant-step products are not).
fn plan(coeffs: &[f64], chebyshev: bool, budget: usize, masks: usize) -> Result<usize> {
    let mut best = (u64::MAX, 2);
    for l in 1..=budget.max(1) {
        let tracer = Mirror::tracer(1, budget);
        let t = tracer.value_at(Vec::new(), budget)?;
        let mut ev = Evaluator::new(&tracer, t, chebyshev, 1 << l, coeffs.len());
        ev.node(coeffs, budget, None)?;
        let total = tracer.cost().relinearizations;
        let score = ev.products + (total - ev.products) * masks as u64;
        if score < best.0 {
            best = (score, 1 << l);
        }
    }
    Ok(best.1)
}

#[derive(Clone, Copy, Debug)]
enum Affine {
    Identity,
    /// `t = a x + b` with an integer `a`: no level.
    Integer(i64, f64),
    /// `t = a x + b`: one level.
    Scalar(f64, f64),
}

/// (a, b) with a x + b mapping [lo, hi] onto [-1, 1], where the Chebyshev basis lives.
pub fn affine_coefficients(lo: f64, hi: f64) -> (f64, f64) {
    let w = hi - lo;
    (2.0 / w, -(lo + hi) / w)
}

fn check_interval(lo: f64, hi: f64) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && lo < hi && (hi - lo).is_finite()) {
        return Err(Error::OutOfRange(format!("[{lo}, {hi}] is not a finite non-empty interval")));
    }
    Ok(())
}

fn degree_of(c: &[f64]) -> usize {
    c.iter().rposition(|&v| v != 0.0).unwrap_or(0)
}

/// `ceil(log2(n))` for `n >= 1`.
fn ceil_log2(n: usize) -> usize {
    (usize::BITS - n.saturating_sub(1).leading_zeros()) as usize
}

fn floor_log2(n: usize) -> usize {
    (usize::BITS - 1 - n.leading_zeros()) as usize
}

/// A partial result: `value + constant` (either may be absent/zero), already times the mask.
struct Term<V> {
    value: Option<V>,
    constant: f64,
}

fn add_const<B: Backend>(b: &B, v: &B::Value, c: f64, mask: Option<&[f64]>) -> Result<B::Value> {
    match mask {
        None => b.add_scalar(v, c),
        Some(m) => b.add_plain(v, &m.iter().map(|&w| c * w).collect::<Vec<_>>()),
    }
}

fn mul_const<B: Backend>(b: &B, v: &B::Value, c: f64, mask: Option<&[f64]>) -> Result<B::Value> {
    match mask {
        None => b.mul_scalar(v, c),
        Some(m) => b.mul_plain(v, &m.iter().map(|&w| c * w).collect::<Vec<_>>()),
    }
}

fn add_values<B: Backend>(b: &B, acc: Option<B::Value>, v: B::Value) -> Result<Option<B::Value>> {
    Ok(Some(match acc {
        None => v,
        Some(a) => b.add(&a, &v)?,
    }))
}

/// `a * b` with the operands brought to one level first.
pub(crate) fn mul_aligned<B: Backend>(b: &B, x: &B::Value, y: &B::Value) -> Result<B::Value> {
    let ops = aligned(b, &[x, y])?;
    b.mul(&ops[0], &ops[1])
}

/// Operands brought to one level first, whether or not the backend aligns products itself.
fn aligned<B: Backend>(b: &B, vs: &[&B::Value]) -> Result<Vec<B::Value>> {
    let low = b.lowest_level(vs);
    vs.iter().map(|&v| if b.level(v) == low { Ok(v.clone()) } else { b.drop_to(v, low) }).collect()
}

struct Evaluator<'a, B: Backend> {
    b: &'a B,
    chebyshev: bool,
    baby: usize,
    /// `terms[k]` is `x^k` or `T_k(t)`, computed on demand; `terms[0]` stays empty.
    terms: Vec<Option<B::Value>>,
    /// Ciphertext products spent on basis terms (shared by all masks).
    products: u64,
}

impl<'a, B: Backend> Evaluator<'a, B> {
    fn new(b: &'a B, t: B::Value, chebyshev: bool, baby: usize, len: usize) -> Self {
        let mut terms = vec![None; len.max(2)];
        terms[1] = Some(t);
        Evaluator { b, chebyshev, baby, terms, products: 0 }
    }

    fn term(&self, k: usize) -> Result<&B::Value> {
        self.terms[k].as_ref().ok_or_else(|| Error::InvalidInput(format!("basis term {k} missing")))
    }

    /// Computes `P_k` at depth `ceil(log2 k)` from `P_j P_{k-j}`, `j` the largest power of two
    /// below `k` (or `k/2`); Chebyshev uses `T_{j+i} = 2 T_j T_i - T_{j-i}`.
    fn ensure(&mut self, k: usize) -> Result<()> {
        if self.terms[k].is_some() {
            return Ok(());
        }
        let j = if k.is_power_of_two() { k / 2 } else { 1 << floor_log2(k) };
        let i = k - j;
        self.ensure(j)?;
        self.ensure(i)?;
        if self.chebyshev && i < j {
            self.ensure(j - i)?;
        }
        let b = self.b;
        let prod =
            if i == j { b.square(self.term(j)?)? } else { mul_aligned(b, self.term(j)?, self.term(i)?)? };
        self.products += 1;
        let v = if !self.chebyshev {
            prod
        } else if i == j {
            b.add_scalar(&b.mul_integer(&prod, 2), -1.0)?
        } else {
            b.sub(&b.mul_integer(&prod, 2), self.term(j - i)?)?
        };
        self.terms[k] = Some(v);
        Ok(())
    }

    /// `sum_k c_k P_k * mask` within `budget` levels of `P_1` (`budget >= ceil(log2(deg + 1))`).
    fn node(&mut self, c: &[f64], budget: usize, mask: Option<&[f64]>) -> Result<Term<B::Value>> {
        let n = degree_of(c);
        if n == 0 {
            return Ok(Term { value: None, constant: c.first().copied().unwrap_or(0.0) });
        }
        let mut q = c[..=n].to_vec();
        let mut parts = Vec::new();
        loop {
            let nq = degree_of(&q);
            if nq < self.baby && (nq <= 1 || ceil_log2(nq) < budget) {
                break;
            }
            let s = 1 << floor_log2(nq);
            let mut r = q.split_off(s);
            r.truncate(nq + 1 - s);
            if self.chebyshev {
                // T_{s+j} = 2 T_s T_j - T_{s-j}.
                for j in 1..r.len() {
                    q[s - j] -= r[j];
                    r[j] *= 2.0;
                }
            }
            parts.push((s, r));
        }
        let mut out = self.leaf(&q, mask)?;
        let b = self.b;
        let (mut giants, mut rests) = (Vec::new(), Vec::new());
        for (s, r) in parts {
            let t = self.node(&r, budget.saturating_sub(1), mask)?;
            self.ensure(s)?;
            match t.value {
                Some(v) => {
                    let v = if t.constant != 0.0 { add_const(b, &v, t.constant, mask)? } else { v };
                    giants.push(s);
                    rests.push(v);
                }
                None if t.constant != 0.0 => {
                    let v = mul_const(b, self.term(s)?, t.constant, mask)?;
                    out.value = add_values(b, out.value, v)?;
                }
                None => {}
            }
        }
        if !giants.is_empty() {
            let mut refs: Vec<&B::Value> = giants.iter().map(|&s| self.term(s)).collect::<Result<_>>()?;
            refs.extend(rests.iter());
            let ops = aligned(b, &refs)?;
            let (gs, rs) = ops.split_at(giants.len());
            let v = if gs.len() == 1 {
                b.mul(&gs[0], &rs[0])?
            } else {
                b.dot(&gs.iter().collect::<Vec<_>>(), &rs.iter().collect::<Vec<_>>())?
            };
            out.value = add_values(b, out.value, v)?;
        }
        Ok(out)
    }

    /// `sum_k c_k P_k * mask` over baby steps: one level past the deepest term used.
    fn leaf(&mut self, c: &[f64], mask: Option<&[f64]>) -> Result<Term<B::Value>> {
        let used: Vec<usize> = (1..c.len()).filter(|&k| c[k] != 0.0).collect();
        for &k in &used {
            self.ensure(k)?;
        }
        let b = self.b;
        let value = if used.is_empty() {
            None
        } else {
            let inputs: Vec<&B::Value> = used.iter().map(|&k| self.term(k)).collect::<Result<_>>()?;
            match mask {
                None => {
                    let weights: Vec<f64> = used.iter().map(|&k| c[k]).collect();
                    b.linear(&inputs, &weights, 1)?.pop()
                }
                Some(_) => {
                    let mut acc = None;
                    for (&k, v) in used.iter().zip(inputs) {
                        acc = add_values(b, acc, mul_const(b, v, c[k], mask)?)?;
                    }
                    acc
                }
            }
        };
        Ok(Term { value, constant: c[0] })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: deterministic test data without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64
        }

        fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.next()
        }
    }

    fn random_poly(rng: &mut Rng, degree: usize, chebyshev: bool) -> Polynomial {
        let mut c: Vec<f64> = (0..=degree).map(|_| rng.uniform(-1.0, 1.0)).collect();
        if c[degree].abs() < 0.1 {
            c[degree] = 0.5;
        }
        if chebyshev {
            Polynomial::chebyshev(-3.0, 5.0, c).unwrap()
        } else {
            Polynomial::power(c)
        }
    }

    /// Sum of |c_k P_k(x)|: the scale rounding errors are relative to.
    fn magnitude(p: &Polynomial, x: f64) -> f64 {
        match p.basis {
            Basis::Power => p.coeffs.iter().enumerate().map(|(k, c)| (c * x.powi(k as i32)).abs()).sum(),
            Basis::Chebyshev { .. } => p.coeffs.iter().map(|c| c.abs()).sum(),
        }
    }

    fn levels_used(p: &Polynomial) -> usize {
        let tracer = Mirror::tracer(8, 40);
        let x = tracer.value_at(Vec::new(), 40).unwrap();
        40 - evaluate(&tracer, &x, p).unwrap().level
    }

    fn relins(p: &Polynomial, masks: usize) -> u64 {
        let tracer = Mirror::tracer(4, 40);
        let x = tracer.value_at(Vec::new(), 40).unwrap();
        let m = [1.0; 4];
        let ms = vec![&m[..]; masks];
        if masks == 0 {
            evaluate(&tracer, &x, p).unwrap();
        } else {
            evaluate_masked(&tracer, &x, p, &ms).unwrap();
        }
        tracer.cost().relinearizations
    }

    #[test]
    fn matches_reference_in_both_bases() {
        let mut rng = Rng(7);
        let slots = 64;
        for chebyshev in [false, true] {
            for degree in 0..=31 {
                let p = random_poly(&mut rng, degree, chebyshev);
                let xs: Vec<f64> = (0..slots)
                    .map(|_| if chebyshev { rng.uniform(-3.0, 5.0) } else { rng.uniform(-1.3, 1.3) })
                    .collect();
                let mirror = Mirror::new(slots, p.depth() + 2);
                let x = mirror.value(xs.clone()).unwrap();
                let y = evaluate(&mirror, &x, &p).unwrap();
                assert_eq!(y.level, 2);
                for (&xi, &yi) in xs.iter().zip(&y.data) {
                    let want = p.eval(xi);
                    let tol = 1e-9 * want.abs().max(magnitude(&p, xi));
                    assert!(
                        (yi - want).abs() <= tol,
                        "degree {degree} cheb {chebyshev} x {xi}: {yi} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn masked_matches_reference_without_extra_level() {
        let mut rng = Rng(11);
        let slots = 16;
        for chebyshev in [false, true] {
            for degree in [0, 1, 2, 5, 12, 31] {
                let p = random_poly(&mut rng, degree, chebyshev);
                let xs: Vec<f64> = (0..slots).map(|_| rng.uniform(-1.0, 1.0)).collect();
                let masks: Vec<Vec<f64>> =
                    (0..3).map(|_| (0..slots).map(|_| rng.uniform(-2.0, 2.0)).collect()).collect();
                let refs: Vec<&[f64]> = masks.iter().map(|m| &m[..]).collect();
                let mirror = Mirror::new(slots, p.depth());
                let x = mirror.value(xs.clone()).unwrap();
                let ys = evaluate_masked(&mirror, &x, &p, &refs).unwrap();
                assert_eq!(ys.len(), 3);
                for (y, m) in ys.iter().zip(&masks) {
                    assert_eq!(y.level, 0);
                    for ((&xi, &yi), &mi) in xs.iter().zip(&y.data).zip(m) {
                        let want = p.eval(xi) * mi;
                        let tol = 1e-9 * want.abs().max(magnitude(&p, xi) * mi.abs()).max(1e-300);
                        assert!((yi - want).abs() <= tol, "degree {degree}: {yi} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn depth_is_exact_on_the_tracer() {
        let mut rng = Rng(3);
        for degree in 0..=64 {
            for p in [
                random_poly(&mut rng, degree, false),
                random_poly(&mut rng, degree, true),
                Polynomial::chebyshev(-1.0, 1.0, random_poly(&mut rng, degree, false).coeffs).unwrap(),
                Polynomial::chebyshev(0.0, 1.0, random_poly(&mut rng, degree, false).coeffs).unwrap(),
            ] {
                assert_eq!(levels_used(&p), p.depth(), "{p:?}");
                let minimal = if degree == 0 { 0 } else { ceil_log2(degree + 1) };
                let affine = matches!(p.basis, Basis::Chebyshev { lo, .. } if lo == -3.0) && degree >= 2;
                assert_eq!(p.depth(), minimal + usize::from(affine));
            }
        }
        // Sparse polynomials (monomials, odd ones) still land at exactly `depth()`.
        for degree in 0..=31 {
            let mut c = vec![0.0; degree + 1];
            c[degree] = 1.0;
            assert_eq!(levels_used(&Polynomial::power(c.clone())), Polynomial::power(c).depth());
            let odd: Vec<f64> = (0..=2 * degree + 1).map(|k| (k % 2) as f64 / (k + 1) as f64).collect();
            let p = Polynomial::chebyshev(-2.0, 2.0, odd).unwrap();
            assert_eq!(levels_used(&p), p.depth());
        }
    }

    #[test]
    fn relinearisations_are_sublinear() {
        let mut rng = Rng(5);
        let mut table = Vec::new();
        for degree in [1, 2, 3, 7, 15, 31, 63, 127, 255] {
            let counts: Vec<u64> =
                [false, true].iter().map(|&ch| relins(&random_poly(&mut rng, degree, ch), 0)).collect();
            table.push((degree, counts[0], counts[1]));
        }
        eprintln!("relinearisations (degree, power, chebyshev): {table:?}");
        for &(degree, power, cheb) in &table {
            // 2 sqrt(d + 1) + log2(d + 1) bounds the scheme; the exact figures are pinned below.
            let bound = 2.0 * ((degree + 1) as f64).sqrt() + ((degree + 1) as f64).log2();
            assert!((power.max(cheb) as f64) <= bound, "degree {degree}: {power} {cheb} > {bound}");
        }
        let at = |d: usize| table.iter().find(|t| t.0 == d).map(|t| (t.1, t.2)).unwrap();
        assert_eq!((at(7), at(15), at(31)), ((4, 4), (7, 7), (10, 10)));
        assert_eq!((at(63), at(127), at(255)), ((15, 15), (20, 20), (29, 29)));
        // Masks share the basis terms.
        let p = random_poly(&mut rng, 31, true);
        assert!(relins(&p, 4) < 4 * relins(&p, 0));
    }

    #[test]
    fn too_few_levels_is_an_error() {
        let mut rng = Rng(9);
        for chebyshev in [false, true] {
            for degree in [1, 2, 7, 31] {
                let p = random_poly(&mut rng, degree, chebyshev);
                let mirror = Mirror::new(4, p.depth() - 1);
                let x = mirror.value(vec![0.5; 4]).unwrap();
                assert!(matches!(evaluate(&mirror, &x, &p), Err(Error::OutOfLevels(_))));
                let m = [1.0; 4];
                assert!(matches!(evaluate_masked(&mirror, &x, &p, &[&m]), Err(Error::OutOfLevels(_))));
            }
        }
    }

    #[test]
    fn invalid_inputs_are_errors() {
        assert!(Polynomial::chebyshev(1.0, 1.0, vec![1.0]).is_err());
        assert!(Polynomial::chebyshev(f64::NAN, 1.0, vec![1.0]).is_err());
        assert!(Polynomial::chebyshev(0.0, f64::INFINITY, vec![1.0]).is_err());
        assert!(Polynomial::chebyshev(0.0, 1.0, vec![f64::NAN]).is_err());
        assert!(Polynomial::fit_chebyshev(|x| 1.0 / x, -1.0, 1.0, 1).is_ok());
        assert!(Polynomial::fit_chebyshev(f64::sqrt, -1.0, 1.0, 4).is_err());
        assert!(Polynomial::fit_chebyshev(f64::exp, 0.0, 1.0, MAX_FIT_DEGREE + 1).is_err());
        let mirror = Mirror::new(4, 5);
        let x = mirror.value(vec![0.5; 4]).unwrap();
        let bad = Polynomial { basis: Basis::Chebyshev { lo: 2.0, hi: 1.0 }, coeffs: vec![1.0, 2.0] };
        assert!(matches!(evaluate(&mirror, &x, &bad), Err(Error::OutOfRange(_))));
        let short = [1.0; 3];
        assert!(evaluate_masked(&mirror, &x, &Polynomial::power(vec![1.0, 1.0]), &[&short]).is_err());
    }

    #[test]
    fn small_degrees_and_fits() {
        let mirror = Mirror::new(3, 3);
        let x = mirror.value(vec![-0.5, 0.0, 2.0]).unwrap();
        let constant = evaluate(&mirror, &x, &Polynomial::power(vec![3.0, 0.0])).unwrap();
        assert_eq!((constant.data.clone(), constant.level), (vec![3.0; 3], 3));
        let zero = evaluate(&mirror, &x, &Polynomial::power(vec![])).unwrap();
        assert_eq!(zero.data, vec![0.0; 3]);
        let line = evaluate(&mirror, &x, &Polynomial::chebyshev(-4.0, 4.0, vec![1.0, 2.0]).unwrap()).unwrap();
        assert_eq!((line.data.clone(), line.level), (vec![0.75, 1.0, 2.0], 2));

        let p = Polynomial::fit_chebyshev(f64::exp, -1.0, 1.0, 15).unwrap();
        assert_eq!(p.degree(), 15);
        for k in 0..=100 {
            let x = -1.0 + k as f64 / 50.0;
            assert!((p.eval(x) - x.exp()).abs() < 1e-14, "{x}");
        }
        // Exact for polynomials of at most the fitted degree.
        let q = Polynomial::fit_chebyshev(|x| x * x * x - x, 0.0, 3.0, 3).unwrap();
        assert!((q.eval(2.0) - 6.0).abs() < 1e-12);
    }
}
