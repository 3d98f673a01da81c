//! Ciphertext-ciphertext products for attention in the token layout.
//!
//! With tokens in slots, the score matrix of one head is kept as its 2T - 1 diagonals:
//! S_r[t] = sum_f Q_f[t] K_f[t + r] for r in [-(T-1), T-1] (slot t is a query token). Row sums
//! of the softmax are then slot-wise additions, and A V is sum_r A_r * rot_r(V_f).
//!
//! Baby-step giant-step with r = s_j + i, s_j = -(T-1) + g j, i < g: diagonals are computed and
//! kept in a frame rotated by -s_j, D_ji = sum_f rot_{-s_j}(Q_f) * rot_i(K_f), which needs only
//! g baby rotations of each K_f and V_f (hoisted) and one giant step per j. Element-wise work
//! (the exponential) does not care about the frame; sums over diagonals come back with a
//! Horner scheme in rotations by g. Keys: 1..g-1, +-g and +-(T-1), whatever T is.
//!
//! Pairs (t, t + r) that cross a sample boundary are not attention pairs; [`DiagonalPlan::masks`]
//! zeroes them (callers fold the masks into the exponential's last products).
//!
//! Features travel two to a value as complex pairs, since the slots are complex anyway and a
//! rotation moves both halves for one key switch. Scores: with q = Q_a + i Q_b and
//! k = K_a - i K_b, the real part of q * k is Q_a K_a + Q_b K_b, so half the features are rotated
//! and multiplied, and one conjugation per diagonal (z + conj z) drops the imaginary part; the
//! plan pairs them when the rotations saved outnumber those conjugations
//! ([`DiagonalPlan::pairs_scores`]). A V: the diagonals are real, so A_r * rot_r(V_a + i V_b)
//! carries both features' outputs, separated at the end by one conjugation per pair. Both
//! return twice the real part, so queries and values come in at [`OPERAND_SCALE`].

use std::ops::Range;

use crate::error::{Error, Result};

use super::backend::Backend;
use super::layout::TokenLayout;

/// Features whose products one fused accumulation adds at once: their rotations are alive
/// together (memory), and every running sum is read once per pass (time).
pub const FEATURES_PER_PASS: usize = 4;

/// Features asked of the caller at once (several passes' worth): a caller that makes them
/// with a linear layer reads all that layer's inputs once per call, so calls should be few,
/// and their outputs small beside the score sums.
pub const FEATURES_PER_CALL: usize = 16;

// Pairs never straddle two calls.
const _: () = assert!(FEATURES_PER_CALL.is_multiple_of(2));

/// The scale at which [`DiagonalPlan::scores`] takes queries and [`DiagonalPlan::mix`] takes
/// values: both return twice the real part of complex sums (z + conj z), so halved operands
/// come back exact. Callers fold it into the weights that make them.
pub const OPERAND_SCALE: f64 = 0.5;

/// Values two to one, a + i b, or a - i b with `conjugate` (an odd last one alone): free.
fn complex_pairs<B: Backend>(b: &B, values: &[B::Value], conjugate: bool) -> Result<Vec<B::Value>> {
    values
        .chunks(2)
        .map(|pair| match pair {
            [re, im] if conjugate => b.sub(re, &b.mul_i(im)),
            [re, im] => b.add(re, &b.mul_i(im)),
            [re] => Ok(re.clone()),
            _ => unreachable!("chunks of at most two"),
        })
        .collect()
}

/// 2 Re z: one conjugation if `z` may be complex, free if it is real.
fn twice_real<B: Backend>(b: &B, z: &B::Value, complex: bool) -> Result<B::Value> {
    if complex {
        b.add(z, &b.conjugate(z)?)
    } else {
        Ok(b.mul_integer(z, 2))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiagonalPlan {
    pub tokens: usize,
    pub samples: usize,
    pub slots: usize,
    /// Baby steps g.
    pub baby: usize,
}

impl DiagonalPlan {
    /// `baby` defaults to about sqrt(3 T), which balances baby rotations against giant steps.
    pub fn new(layout: &TokenLayout, samples: usize, baby: Option<usize>) -> Result<Self> {
        let t = layout.tokens;
        if samples == 0 || samples > layout.samples_per_group() {
            return Err(Error::OutOfRange(format!(
                "a group holds 1 to {} samples, got {samples}",
                layout.samples_per_group()
            )));
        }
        let baby = baby.unwrap_or_else(|| ((3 * t) as f64).sqrt().round() as usize).clamp(1, 2 * t - 1);
        Ok(DiagonalPlan { tokens: t, samples, slots: layout.slots, baby })
    }

    pub fn diagonals(&self) -> usize {
        2 * self.tokens - 1
    }

    pub fn giants(&self) -> usize {
        self.diagonals().div_ceil(self.baby)
    }

    fn shift(&self, j: usize) -> i64 {
        -(self.tokens as i64 - 1) + (self.baby * j) as i64
    }

    /// (j, i) of every diagonal, in the order the routines return them.
    pub fn indices(&self) -> Vec<(usize, usize)> {
        (0..self.giants()).flat_map(|j| (0..self.baby).map(move |i| (j, i))).take(self.diagonals()).collect()
    }

    /// For each diagonal (in [`DiagonalPlan::indices`] order) 1 where the rotated slot pairs a
    /// query token with a key token of the same sample, 0 elsewhere.
    pub fn masks(&self) -> Vec<Vec<f64>> {
        let t = self.tokens as i64;
        let used = (self.samples * self.tokens) as i64;
        let n = self.slots as i64;
        self.indices()
            .into_iter()
            .map(|(j, i)| {
                let s = self.shift(j);
                let r = s + i as i64;
                (0..n)
                    .map(|u| {
                        let q = (u - s).rem_euclid(n);
                        let key = (q % t) + r;
                        if q < used && (0..t).contains(&key) {
                            1.0
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Whether [`DiagonalPlan::scores`] pairs `features` query and key features: the rotations
    /// of the features a pair saves, against one conjugation per diagonal.
    pub fn pairs_scores(&self, features: usize) -> bool {
        (features / 2) * (self.baby - 1 + self.giants()) > self.diagonals()
    }

    /// The left-rotation steps the routines use: the Galois keys to generate (and the
    /// conjugation key, for the complex pairs).
    pub fn rotation_steps(&self) -> Vec<i64> {
        let t = self.tokens as i64;
        let g = self.baby as i64;
        let mut steps: Vec<i64> = (1..g).collect();
        steps.extend([g, -g, t - 1, -(t - 1)]);
        steps.sort_unstable();
        steps.dedup();
        steps.retain(|&s| s.rem_euclid(self.slots as i64) != 0);
        steps
    }

    /// The score diagonals D_ji = sum_f rot_{-s_j}(Q_f) * rot_i(K_f): one level. `features`
    /// query and key features come from `make`, [`FEATURES_PER_CALL`] at a time (its argument
    /// is the range of features wanted), so only those are ever alive; queries at
    /// [`OPERAND_SCALE`]. They go as complex pairs if [`DiagonalPlan::pairs_scores`], in passes
    /// of [`FEATURES_PER_PASS`] values: a pass rotates its values (baby steps of K hoisted,
    /// giant steps of Q) and adds all their products to every diagonal at once, so each running
    /// sum is read once per pass. The products accumulate un-relinearised, one key switch per
    /// diagonal at the end (and one conjugation if paired).
    pub fn scores<B: Backend>(
        &self,
        b: &B,
        features: usize,
        mut make: impl FnMut(Range<usize>) -> Result<(Vec<B::Value>, Vec<B::Value>)>,
    ) -> Result<Vec<B::Value>> {
        if features == 0 {
            return Err(Error::Shape("attention needs at least one query and key feature".into()));
        }
        let babies: Vec<i64> = (0..self.baby as i64).collect();
        let paired = self.pairs_scores(features);
        let mut sums: Vec<B::Acc> = (0..self.diagonals()).map(|_| b.accumulator()).collect();
        for start in (0..features).step_by(FEATURES_PER_CALL) {
            let range = start..(start + FEATURES_PER_CALL).min(features);
            let (q, k) = make(range.clone())?;
            if q.len() != range.len() || k.len() != range.len() {
                return Err(Error::Shape(format!(
                    "features {range:?} need {} query and key features, got {} and {}",
                    range.len(),
                    q.len(),
                    k.len()
                )));
            }
            let (q, k) =
                if paired { (complex_pairs(b, &q, false)?, complex_pairs(b, &k, true)?) } else { (q, k) };
            for (qs, ks) in q.chunks(FEATURES_PER_PASS).zip(k.chunks(FEATURES_PER_PASS)) {
                let k_rot = ks.iter().map(|kf| b.rotate_many(kf, &babies)).collect::<Result<Vec<_>>>()?;
                // Giant step by giant step: only the pass's current rotation of Q is alive, and
                // it meets that giant step's diagonals, each running sum still read once.
                let mut q_j = qs.iter().map(|qf| b.rotate(qf, -self.shift(0))).collect::<Result<Vec<_>>>()?;
                for j in 0..self.giants() {
                    if j > 0 {
                        q_j =
                            q_j.iter().map(|qf| b.rotate(qf, -(self.baby as i64))).collect::<Result<_>>()?;
                    }
                    let first = j * self.baby;
                    let last = (first + self.baby).min(self.diagonals());
                    let pairs: Vec<Vec<(&B::Value, &B::Value)>> = (0..last - first)
                        .map(|i| q_j.iter().zip(&k_rot).map(|(qj, ki)| (qj, &ki[i])).collect())
                        .collect();
                    b.accumulate_pairs(&mut sums[first..last], &pairs)?;
                }
            }
        }
        sums.into_iter().map(|acc| twice_real(b, &b.finish(acc)?, paired)).collect()
    }

    /// sum_j rot_{s_j}(per_giant[j]) by Horner in rotations by g.
    fn gather<B: Backend>(&self, b: &B, per_giant: Vec<B::Value>) -> Result<B::Value> {
        let mut iter = per_giant.into_iter().rev();
        let mut acc = iter.next().ok_or_else(|| Error::InvalidInput("no diagonals".into()))?;
        for x in iter {
            acc = b.add(&x, &b.rotate(&acc, self.baby as i64)?)?;
        }
        b.rotate(&acc, self.shift(0))
    }

    fn check_diagonals<V>(&self, d: &[V]) -> Result<()> {
        if d.len() != self.diagonals() {
            return Err(Error::Shape(format!("expected {} diagonals, got {}", self.diagonals(), d.len())));
        }
        Ok(())
    }

    /// Row sums of a matrix given by its diagonals (in the rotated frame): no level.
    pub fn row_sums<B: Backend>(&self, b: &B, diagonals: &[B::Value]) -> Result<B::Value> {
        self.check_diagonals(diagonals)?;
        let per_giant = diagonals
            .chunks(self.baby)
            .map(|chunk| {
                let mut it = chunk.iter();
                let first = it.next().expect("chunks are non-empty").clone();
                it.try_fold(first, |acc, x| b.add(&acc, x))
            })
            .collect::<Result<Vec<_>>>()?;
        self.gather(b, per_giant)
    }

    /// out_f = sum_r A_r * rot_r(V_f) for a real matrix A given by its diagonals: one level.
    /// `features` value features come from `make`, [`FEATURES_PER_CALL`] at a time and at
    /// [`OPERAND_SCALE`], two to a value, and go in passes as in [`DiagonalPlan::scores`]: one
    /// fused accumulation reads each diagonal once per pass. Each pair's output is separated
    /// by one conjugation.
    pub fn mix<B: Backend>(
        &self,
        b: &B,
        diagonals: &[B::Value],
        features: usize,
        mut make: impl FnMut(Range<usize>) -> Result<Vec<B::Value>>,
    ) -> Result<Vec<B::Value>> {
        self.check_diagonals(diagonals)?;
        if features == 0 {
            return Err(Error::Shape("attention needs at least one value feature".into()));
        }
        let babies: Vec<i64> = (0..self.baby as i64).collect();
        let level = b.lowest_level(&diagonals.iter().collect::<Vec<_>>());
        let mut out = Vec::with_capacity(features);
        for start in (0..features).step_by(FEATURES_PER_CALL) {
            let range = start..(start + FEATURES_PER_CALL).min(features);
            let v = make(range.clone())?;
            if v.len() != range.len() {
                return Err(Error::Shape(format!(
                    "features {range:?} need {} value features, got {}",
                    range.len(),
                    v.len()
                )));
            }
            // V usually sits above the diagonals: bring each feature down once, before
            // rotating (rotations are cheaper there, and no product has to adjust it again).
            let v = v
                .into_iter()
                .map(|vf| if b.level(&vf) > level { b.drop_to(&vf, level) } else { Ok(vf) })
                .collect::<Result<Vec<_>>>()?;
            let v = complex_pairs(b, &v, false)?;
            // Value p of this call holds features 2p and 2p + 1 of the range, or 2p alone.
            let mut pair_sizes = range.clone().step_by(2).map(|f| (range.end - f).min(2));
            for vs in v.chunks(FEATURES_PER_PASS) {
                let v_rot = vs.iter().map(|vf| b.rotate_many(vf, &babies)).collect::<Result<Vec<_>>>()?;
                // One sum per (feature, giant step) over that giant step's diagonals.
                let pairs: Vec<Vec<(&B::Value, &B::Value)>> = v_rot
                    .iter()
                    .flat_map(|rot| {
                        diagonals.chunks(self.baby).map(move |chunk| chunk.iter().zip(rot).collect())
                    })
                    .collect();
                let mut sums: Vec<B::Acc> = pairs.iter().map(|_| b.accumulator()).collect();
                b.accumulate_pairs(&mut sums, &pairs)?;
                drop(pairs);
                drop(v_rot);
                let mut sums = sums.into_iter();
                for _ in vs {
                    let per_giant = sums
                        .by_ref()
                        .take(self.giants())
                        .map(|acc| b.finish(acc))
                        .collect::<Result<Vec<_>>>()?;
                    let z = self.gather(b, per_giant)?;
                    if pair_sizes.next() == Some(2) {
                        // z + conj z = 2 Re z and i (conj z - z) = 2 Im z.
                        let zc = b.conjugate(&z)?;
                        out.push(b.add(&z, &zc)?);
                        out.push(b.mul_i(&b.sub(&zc, &z)?));
                    } else {
                        out.push(b.mul_integer(&z, 2));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::he::mirror::Mirror;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
    }

    /// Scores, masked row sums and A V against dense per-sample matrices.
    #[test]
    fn matches_dense_attention_products() {
        // 21 features: two calls for features, the second one's last pass partial.
        let cases = [(5, 3, 16, None, 2), (7, 2, 32, Some(3), 21), (4, 4, 16, Some(1), 3)];
        for (tokens, samples, slots, baby, feats) in cases {
            let layout = TokenLayout::new(tokens, 2, slots).unwrap();
            let plan = DiagonalPlan::new(&layout, samples, baby).unwrap();
            let b = Mirror::new(slots, 5);
            let mut seed = 7;
            let q: Vec<Vec<f64>> = (0..feats).map(|_| (0..slots).map(|_| lcg(&mut seed)).collect()).collect();
            let k: Vec<Vec<f64>> = (0..feats).map(|_| (0..slots).map(|_| lcg(&mut seed)).collect()).collect();
            let v: Vec<Vec<f64>> = (0..feats).map(|_| (0..slots).map(|_| lcg(&mut seed)).collect()).collect();
            let enc = |x: &Vec<Vec<f64>>, scale: f64| {
                x.iter().map(|c| b.value(c.iter().map(|u| u * scale).collect()).unwrap()).collect::<Vec<_>>()
            };
            let (qe, ke, ve) = (enc(&q, OPERAND_SCALE), enc(&k, 1.0), enc(&v, OPERAND_SCALE));
            let d = plan.scores(&b, feats, |r| Ok((qe[r.clone()].to_vec(), ke[r].to_vec()))).unwrap();
            let masks = plan.masks();
            let masked: Vec<_> = d.iter().zip(&masks).map(|(x, m)| b.mul_plain(x, m).unwrap()).collect();
            let sums = plan.row_sums(&b, &masked).unwrap();
            let mixed = plan.mix(&b, &masked, feats, |r| Ok(ve[r].to_vec())).unwrap();
            for s in 0..samples {
                for t in 0..tokens {
                    let slot = s * tokens + t;
                    let score = |u: usize| (0..feats).map(|f| q[f][slot] * k[f][s * tokens + u]).sum::<f64>();
                    let row: f64 = (0..tokens).map(score).sum();
                    assert!((sums.data[slot] - row).abs() < 1e-12, "row sum at {slot}");
                    for f in 0..feats {
                        let want: f64 = (0..tokens).map(|u| score(u) * v[f][s * tokens + u]).sum();
                        assert!((mixed[f].data[slot] - want).abs() < 1e-12, "A V at {slot}");
                    }
                }
            }
            // The tracer sees exactly the rotations the plan lists.
            let tracer = Mirror::tracer(slots, 5);
            let tv = |n: usize| (0..n).map(|_| tracer.value(vec![]).unwrap()).collect::<Vec<_>>();
            let (tq, tk) = (tv(feats), tv(feats));
            let td = plan.scores(&tracer, feats, |r| Ok((tq[r.clone()].to_vec(), tk[r].to_vec()))).unwrap();
            plan.row_sums(&tracer, &td).unwrap();
            plan.mix(&tracer, &td, feats, |r| Ok(tq[r].to_vec())).unwrap();
            let used: Vec<i64> = tracer.cost().rotation_steps.into_iter().collect();
            let mut listed: Vec<i64> =
                plan.rotation_steps().iter().map(|s| s.rem_euclid(slots as i64)).collect();
            listed.sort_unstable();
            listed.dedup();
            assert!(used.iter().all(|s| listed.contains(s)), "{used:?} not within {listed:?}");
            let pairs = feats.div_ceil(2);
            assert_eq!(tracer.cost().relinearizations as usize, plan.diagonals() + pairs * plan.giants());
            let score_conjugations = if plan.pairs_scores(feats) { plan.diagonals() } else { 0 };
            assert_eq!(tracer.cost().conjugations as usize, score_conjugations + feats / 2);
            assert!(d.iter().chain(&mixed).all(|x| x.imag.iter().all(|&u| u.abs() < 1e-12)));
        }
    }

    /// Pairing pays for itself in key switches wherever the plan chooses it.
    #[test]
    fn pairs_scores_when_it_saves_key_switches() {
        let layout = TokenLayout::new(197, 2, 8192).unwrap();
        let plan = DiagonalPlan::new(&layout, 41, None).unwrap();
        let count = |features: usize| {
            let tracer = Mirror::tracer(8192, 5);
            let tv = |n: usize| (0..n).map(|_| tracer.value(vec![]).unwrap()).collect::<Vec<_>>();
            let (q, k) = (tv(features), tv(features));
            plan.scores(&tracer, features, |r| Ok((q[r.clone()].to_vec(), k[r].to_vec()))).unwrap();
            tracer.cost().key_switches()
        };
        assert!(plan.pairs_scores(64) && !plan.pairs_scores(2));
        // Unpaired, 64 features would cost 64 (g - 1 + G) + D; paired, half the rotations.
        let unpaired = 64 * (plan.baby - 1 + plan.giants()) + plan.diagonals();
        assert_eq!(count(64) as usize, unpaired - 32 * (plan.baby - 1 + plan.giants()) + plan.diagonals());
        assert!((count(64) as usize) < unpaired);
    }

    #[test]
    fn rejects_bad_inputs() {
        let layout = TokenLayout::new(5, 2, 16).unwrap();
        assert!(DiagonalPlan::new(&layout, 4, None).is_err());
        let plan = DiagonalPlan::new(&layout, 3, None).unwrap();
        let b = Mirror::new(16, 3);
        let x = b.value(vec![0.0; 16]).unwrap();
        assert!(plan.scores(&b, 0, |_| Ok((vec![], vec![]))).is_err());
        assert!(plan.scores(&b, 1, |_| Ok((vec![x.clone()], vec![]))).is_err());
        assert!(plan.mix(&b, &vec![x.clone(); plan.diagonals()], 2, |_| Ok(vec![x.clone()])).is_err());
        assert!(plan.row_sums(&b, std::slice::from_ref(&x)).is_err());
    }
}
