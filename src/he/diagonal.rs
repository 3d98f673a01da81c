//! Ciphertext times plaintext matrix in the row-packed layout, by generalised diagonals with
//! baby-step giant-step rotations: one level, about `2 sqrt(d_in + d_out)` rotations.
//!
//! # Layout
//!
//! A value holds `slots / block` samples. Sample `s` occupies the block of `block` slots
//! starting at `s * block` (`block` a power of two, at least `d_in` and `d_out`, dividing
//! `slots`): its vector sits at the start of the block and the rest of the block is padding.
//! Inputs and outputs use the same layout, so products with one `block` chain without any
//! repacking; [`DiagonalMatrix::pack`] and [`DiagonalMatrix::unpack`] do the index arithmetic.
//!
//! # Method
//!
//! For every offset `k` in `(-d_out, d_in)` the diagonal `diag_k[p] = W[p][p + k]` (zero where
//! `p + k` leaves `[0, d_in)` or `p >= d_out`) is repeated in every block, and
//! `y = sum_k diag_k (.) rot_k(x)`. Offsets run negative as well as positive (the diagonals of
//! the matrix itself, not of its cyclic extension), so no output slot ever reads a slot
//! outside its own block's first `d_in`: rotations need not wrap within a block, and padding
//! may hold anything (an activation applied to zeros, say) without changing the result.
//! Output padding is exactly zero.
//!
//! The alternative, cyclic diagonals of an `n x n` extension with the input stored twice in a
//! block of `2n`, needs only `n` diagonals for a square matrix but halves the samples per
//! value, wastes the second half of every output block (which must then be copied back with
//! a rotation before the next product), and still needs all `n` diagonals for a wide matrix.
//! Counting rotations per sample, the layout here is cheaper for square (64x64: 21
//! rotations per 64 slots against 14 per 128) and wide (256 -> 64: 34 per 256 against 30
//! per 512) matrices and about even for tall ones (64 -> 256: 34 per 256 against 14 per 512
//! plus 3 to spread the input period-wise over the block), with no mask and no extra level.
//!
//! Baby-step giant-step: writing `k = g j + b` with `b` in `[c, c + g)`,
//! `y = sum_j rot_{g j}( sum_b rot_{-g j}(diag_{g j + b}) (.) rot_b(x) )`. The baby rotations
//! `rot_b(x)` share one decomposition (`rotate_many`), the diagonals are pre-rotated in the
//! clear, and each giant step costs one rotation of an inner sum, taken after its rescale.
//! All-zero diagonals are skipped, and `g` and `c` are chosen to minimise the rotations.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};

use super::backend::{canonical_step, Backend};

/// A `d_out x d_in` matrix (and optional bias) prepared for [`DiagonalMatrix::apply`].
#[derive(Clone, Debug)]
pub struct DiagonalMatrix {
    d_out: usize,
    d_in: usize,
    block: usize,
    slots: usize,
    baby_step: usize,
    /// Nonzero baby rotations (canonical left steps); `apply` rotates `x` by all of them at once.
    babies: Vec<i64>,
    giants: Vec<Giant>,
    /// One block's worth of bias, padding zero.
    bias: Option<Vec<f64>>,
}

#[derive(Clone, Debug)]
struct Giant {
    /// Canonical left step applied to the inner sum (0: none).
    step: i64,
    terms: Vec<Term>,
}

#[derive(Clone, Debug)]
struct Term {
    /// Index into the baby rotations of `x`; 0 is `x` itself, `i` is `babies[i - 1]`.
    baby: usize,
    /// The diagonal's entries go to block positions `start, start + 1, ...` (mod `block`):
    /// its first row, moved right by the giant step. Only the entries are kept, so the
    /// prepared matrix is no larger than the weights.
    start: usize,
    entries: Vec<f64>,
}

impl DiagonalMatrix {
    /// `weights` row-major `d_out x d_in`, `bias` of length `d_out`; the block is the smallest
    /// power of two holding both the input and the output.
    pub fn new(
        weights: &[f64],
        d_out: usize,
        d_in: usize,
        bias: Option<&[f64]>,
        slots: usize,
    ) -> Result<Self> {
        let block = d_out.max(d_in).max(1).next_power_of_two();
        Self::with_block(weights, d_out, d_in, bias, block, slots)
    }

    /// As [`DiagonalMatrix::new`] with a given block, so that products of different shapes
    /// share one layout and chain without repacking.
    pub fn with_block(
        weights: &[f64],
        d_out: usize,
        d_in: usize,
        bias: Option<&[f64]>,
        block: usize,
        slots: usize,
    ) -> Result<Self> {
        if d_out == 0 || d_in == 0 {
            return Err(Error::InvalidInput(format!("a {d_out} x {d_in} matrix has no entries")));
        }
        if weights.len() != d_out * d_in {
            return Err(Error::InvalidInput(format!(
                "a {d_out} x {d_in} matrix needs {} weights, got {}",
                d_out * d_in,
                weights.len()
            )));
        }
        if let Some(bias) = bias {
            if bias.len() != d_out {
                return Err(Error::InvalidInput(format!(
                    "the bias of a {d_out} x {d_in} matrix needs {d_out} values, got {}",
                    bias.len()
                )));
            }
        }
        if weights.iter().chain(bias.unwrap_or(&[])).any(|w| !w.is_finite()) {
            return Err(Error::InvalidInput("weights and bias must be finite".into()));
        }
        if !block.is_power_of_two() || block < d_out.max(d_in) {
            return Err(Error::InvalidInput(format!(
                "the block must be a power of two of at least {} (d_out {d_out}, d_in {d_in}), got {block}",
                d_out.max(d_in)
            )));
        }
        if slots < block || !slots.is_multiple_of(block) {
            return Err(Error::InvalidInput(format!(
                "a block of {block} slots does not tile {slots} slots evenly"
            )));
        }

        // Nonzero diagonals by offset k = column - row, ascending.
        let offsets = -(d_out as i64 - 1)..=(d_in as i64 - 1);
        let diagonals: Vec<(i64, usize, Vec<f64>)> = offsets
            .map(|k| {
                // Rows p with column p + k inside the matrix.
                let rows = (-k).max(0) as usize..d_out.min((d_in as i64 - k) as usize);
                let entries: Vec<f64> =
                    rows.clone().map(|p| weights[p * d_in + (p as i64 + k) as usize]).collect();
                (k, rows.start, entries)
            })
            .filter(|(_, _, entries)| entries.iter().any(|&w| w != 0.0))
            .collect();
        let ks: Vec<i64> = diagonals.iter().map(|(k, _, _)| *k).collect();
        let (g, c) = split(&ks);

        // Key by canonical step: two offsets that differ by a multiple of `slots` share a rotation.
        let mut by_giant: BTreeMap<i64, Vec<(i64, usize, Vec<f64>)>> = BTreeMap::new();
        for (k, row, entries) in diagonals {
            let j = (k - c).div_euclid(g);
            let giant = canonical_step(g * j, slots);
            let baby = canonical_step(k - g * j, slots);
            // rot_{-gj} of a vector repeating every `block` slots is its block rotated right.
            let start = (row as i64 + giant).rem_euclid(block as i64) as usize;
            by_giant.entry(giant).or_default().push((baby, start, entries));
        }
        let babies: Vec<i64> = by_giant
            .values()
            .flatten()
            .map(|(b, _, _)| *b)
            .filter(|&b| b != 0)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let giants = by_giant
            .into_iter()
            .map(|(step, terms)| Giant {
                step,
                terms: terms
                    .into_iter()
                    .map(|(b, start, entries)| Term {
                        baby: if b == 0 { 0 } else { 1 + babies.binary_search(&b).unwrap_or(0) },
                        start,
                        entries,
                    })
                    .collect(),
            })
            .collect();
        let bias = bias.map(|b| {
            let mut v = b.to_vec();
            v.resize(block, 0.0);
            v
        });
        Ok(DiagonalMatrix { d_out, d_in, block, slots, baby_step: g as usize, babies, giants, bias })
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    /// Slots per sample.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Samples one value holds.
    pub fn samples_per_value(&self) -> usize {
        self.slots / self.block
    }

    /// The baby step `g`: giant steps are multiples of it.
    pub fn baby_step(&self) -> usize {
        self.baby_step
    }

    /// Left-rotation steps (canonical, sorted) this product needs: the Galois keys to generate.
    pub fn rotation_steps(&self) -> Vec<i64> {
        let giants = self.giants.iter().map(|g| g.step).filter(|&s| s != 0);
        self.babies.iter().copied().chain(giants).collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// Rotations one [`DiagonalMatrix::apply`] makes: the hoisted baby steps plus one per
    /// nonzero giant step.
    pub fn rotations(&self) -> usize {
        self.babies.len() + self.giants.iter().filter(|g| g.step != 0).count()
    }

    /// `W x + bias` for every sample of `x` (packed with [`DiagonalMatrix::pack`]): one level.
    pub fn apply<B: Backend>(&self, b: &B, x: &B::Value) -> Result<B::Value> {
        if b.slots() != self.slots {
            return Err(Error::InvalidInput(format!(
                "matrix prepared for {} slots, backend has {}",
                self.slots,
                b.slots()
            )));
        }
        let mut pattern = vec![0.0; self.block];
        let mut plain = vec![0.0; self.slots];
        let rotated = if self.babies.is_empty() { Vec::new() } else { b.rotate_many(x, &self.babies)? };
        let baby = |i: usize| if i == 0 { x } else { &rotated[i - 1] };

        let mut total: Option<B::Value> = None;
        for giant in &self.giants {
            let mut inner: Option<B::Value> = None;
            for term in &giant.terms {
                pattern.fill(0.0);
                let (tail, head) = term.entries.split_at(term.entries.len().min(self.block - term.start));
                pattern[term.start..term.start + tail.len()].copy_from_slice(tail);
                pattern[..head.len()].copy_from_slice(head);
                self.tile(&pattern, &mut plain);
                let product = b.mul_plain(baby(term.baby), &plain)?;
                inner = Some(match inner {
                    Some(acc) => b.add(&acc, &product)?,
                    None => product,
                });
            }
            let Some(inner) = inner else { continue };
            let inner = if giant.step == 0 { inner } else { b.rotate(&inner, giant.step)? };
            total = Some(match total {
                Some(acc) => b.add(&acc, &inner)?,
                None => inner,
            });
        }
        // An all-zero matrix still yields a value one level down, like any other.
        let y = match total {
            Some(y) => y,
            None => b.mul_plain(x, &vec![0.0; self.slots])?,
        };
        match &self.bias {
            Some(bias) => {
                self.tile(bias, &mut plain);
                b.add_plain(&y, &plain)
            }
            None => Ok(y),
        }
    }

    /// The input slot vector for `samples` (each of `d_in` values), padding zero.
    pub fn pack(&self, samples: &[&[f64]]) -> Result<Vec<f64>> {
        self.check_count(samples.len())?;
        let mut out = vec![0.0; self.slots];
        for (i, (sample, block)) in samples.iter().zip(out.chunks_mut(self.block)).enumerate() {
            if sample.len() != self.d_in {
                return Err(Error::InvalidInput(format!(
                    "sample {i} has {} values, the matrix takes {}",
                    sample.len(),
                    self.d_in
                )));
            }
            block[..self.d_in].copy_from_slice(sample);
        }
        Ok(out)
    }

    /// The first `samples` outputs (each of `d_out` values) from a decrypted slot vector.
    pub fn unpack(&self, slots: &[f64], samples: usize) -> Result<Vec<Vec<f64>>> {
        self.check_count(samples)?;
        if slots.len() != self.slots {
            return Err(Error::InvalidInput(format!("expected {} slots, got {}", self.slots, slots.len())));
        }
        Ok(slots.chunks(self.block).take(samples).map(|block| block[..self.d_out].to_vec()).collect())
    }

    fn check_count(&self, samples: usize) -> Result<()> {
        if samples > self.samples_per_value() {
            return Err(Error::InvalidInput(format!(
                "{samples} samples do not fit: {} slots in blocks of {} hold {}",
                self.slots,
                self.block,
                self.samples_per_value()
            )));
        }
        Ok(())
    }

    /// Repeats one block's values over all slots.
    fn tile(&self, block: &[f64], out: &mut [f64]) {
        out.chunks_mut(self.block).for_each(|chunk| chunk.copy_from_slice(block));
    }
}

/// The baby step `g` and baby offset start `c` in `(-g, 0]` for the sorted offsets `ks`:
/// fewest rotations, then fewest giant steps (baby steps are hoisted, hence cheaper).
///
/// Offset `k` splits as `g j + b` with `b` in `[c, c + g)`; `c <= 0 < c + g` makes `k = 0`
/// cost nothing on either side. The number of distinct baby offsets is the number of residues
/// of `ks` modulo `g`, whatever `c`, and bounds the total from below: a `g` whose baby steps
/// alone cost as much as the best split so far is not searched further.
fn split(ks: &[i64]) -> (i64, i64) {
    let (Some(&first), Some(&last)) = (ks.first(), ks.last()) else { return (1, 0) };
    // (rotations, giant steps, g, c)
    let mut best = (usize::MAX, usize::MAX, 1, 0);
    for g in 1..=last - first + 1 {
        let mut residues = vec![false; g as usize];
        let mut distinct = 0;
        for k in ks {
            let r = &mut residues[k.rem_euclid(g) as usize];
            distinct += usize::from(!*r);
            *r = true;
            // One more than the best total is past saving even if residue 0 is among them.
            if distinct > best.0.saturating_add(1) {
                break;
            }
        }
        let babies = distinct - usize::from(residues[0]);
        if (babies, 0) >= (best.0, best.1) {
            continue;
        }
        for c in (1 - g)..=0 {
            let mut giants = 0;
            let mut previous = None;
            for k in ks {
                let j = (k - c).div_euclid(g);
                if previous != Some(j) && j != 0 {
                    giants += 1;
                }
                previous = Some(j);
                if babies + giants > best.0 {
                    break;
                }
            }
            if (babies + giants, giants) < (best.0, best.1) {
                best = (babies + giants, giants, g, c);
            }
        }
    }
    (best.2, best.3)
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha20Rng;
    use rand_core::{RngCore, SeedableRng};

    use super::*;
    use crate::he::Mirror;

    fn random(rng: &mut ChaCha20Rng, n: usize) -> Vec<f64> {
        (0..n).map(|_| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0).collect()
    }

    fn matvec(w: &[f64], d_out: usize, d_in: usize, bias: Option<&[f64]>, x: &[f64]) -> Vec<f64> {
        (0..d_out)
            .map(|r| {
                let dot: f64 = w[r * d_in..(r + 1) * d_in].iter().zip(x).map(|(a, b)| a * b).sum();
                dot + bias.map_or(0.0, |b| b[r])
            })
            .collect()
    }

    /// Checks one shape against the naive product; returns the rotations counted.
    fn check(d_out: usize, d_in: usize, slots: usize, samples: usize, seed: u64) -> u64 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let w = random(&mut rng, d_out * d_in);
        let bias = random(&mut rng, d_out);
        let m = DiagonalMatrix::new(&w, d_out, d_in, Some(&bias), slots).unwrap();
        let xs: Vec<Vec<f64>> = (0..samples).map(|_| random(&mut rng, d_in)).collect();
        let refs: Vec<&[f64]> = xs.iter().map(|x| x.as_slice()).collect();

        let mirror = Mirror::new(slots, 3);
        let x = mirror.value(m.pack(&refs).unwrap()).unwrap();
        let y = m.apply(&mirror, &x).unwrap();
        assert_eq!(mirror.level(&y), 2, "exactly one level");
        let outputs = m.unpack(&y.data, samples).unwrap();
        for (x, out) in xs.iter().zip(&outputs) {
            let expected = matvec(&w, d_out, d_in, Some(&bias), x);
            for (a, e) in out.iter().zip(&expected) {
                assert!((a - e).abs() < 1e-9, "{d_out}x{d_in}: {a} vs {e}");
            }
        }
        // Output padding is zero in every block, filled or not.
        for (s, block) in y.data.chunks(m.block()).enumerate() {
            assert!(block[d_out..].iter().all(|&v| v == 0.0), "padding of block {s}");
        }

        let cost = mirror.cost();
        assert_eq!(cost.rotation_steps, m.rotation_steps().into_iter().collect());
        assert_eq!(cost.rotations, m.rotations() as u64);
        assert_eq!(cost.hoisted_rotations, m.babies.len() as u64);
        assert_eq!(cost.plain_products, (d_out + d_in - 1) as u64, "every diagonal of a dense matrix");

        // The tracer predicts the same cost without any data.
        let tracer = Mirror::tracer(slots, 3);
        let t = m.apply(&tracer, &tracer.value(Vec::new()).unwrap()).unwrap();
        assert_eq!(tracer.level(&t), 2);
        assert_eq!(tracer.cost(), cost);
        cost.rotations
    }

    #[test]
    fn square_matches_naive_product() {
        let rotations = check(64, 64, 1024, 16, 1);
        // 127 diagonals, g = 13: 12 baby rotations and 9 nonzero giant steps.
        assert_eq!(rotations, 21);
    }

    #[test]
    fn tall_matches_naive_product() {
        let rotations = check(256, 64, 2048, 5, 2);
        // 319 diagonals: 34 rotations, about 2 sqrt(319).
        assert_eq!(rotations, 34);
    }

    #[test]
    fn wide_matches_naive_product() {
        let rotations = check(64, 256, 2048, 8, 3);
        assert_eq!(rotations, 34);
    }

    #[test]
    fn one_sample_per_value() {
        // Giant steps may then reach past `slots` and wrap onto each other or onto baby steps.
        for (d_out, d_in) in [(32usize, 32usize), (64, 16), (16, 64), (5, 7)] {
            let slots = d_out.max(d_in).next_power_of_two();
            check(d_out, d_in, slots, 1, 4);
        }
    }

    #[test]
    fn split_counts_baby_and_giant_steps() {
        for (d_out, d_in, slots) in [(64, 64, 1024), (256, 64, 2048), (64, 256, 2048)] {
            let w = vec![1.0; d_out * d_in];
            let m = DiagonalMatrix::new(&w, d_out, d_in, None, slots).unwrap();
            let g = m.baby_step();
            let giants = m.giants.iter().filter(|g| g.step != 0).count();
            // Dense: every baby offset but zero is rotated, and giants cover all diagonals.
            assert_eq!(m.babies.len(), g - 1);
            assert!((giants + 1) * g >= d_out + d_in - 1);
            assert_eq!(m.rotations(), g - 1 + giants);
            assert_eq!(m.rotation_steps().len(), m.rotations());
        }
        assert_eq!(DiagonalMatrix::new(&vec![1.0; 64 * 64], 64, 64, None, 1024).unwrap().baby_step(), 13);
    }

    #[test]
    fn split_is_optimal() {
        // Against every (g, c) for dense runs and for sparse sets of offsets.
        let total = |ks: &[i64], g: i64, c: i64| {
            let js: Vec<i64> = ks.iter().map(|k| (k - c).div_euclid(g)).collect();
            let babies: BTreeSet<i64> =
                ks.iter().zip(&js).map(|(k, j)| k - g * j).filter(|&b| b != 0).collect();
            babies.len() + js.iter().filter(|&&j| j != 0).collect::<BTreeSet<_>>().len()
        };
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut sets: Vec<Vec<i64>> =
            vec![(-63..=63).collect(), (-255..=63).collect(), vec![-90, -45, 0, 45, 90]];
        sets.extend((0..40).map(|_| (-100..=100).filter(|_| rng.next_u64() % 6 == 0).collect()));
        for ks in sets.iter().filter(|ks| !ks.is_empty()) {
            let (g, c) = split(ks);
            let span = ks[ks.len() - 1] - ks[0] + 1;
            let best =
                (1..=span).flat_map(|g| (1 - g..=0).map(move |c| (g, c))).map(|(g, c)| total(ks, g, c));
            assert_eq!(total(ks, g, c), best.min().unwrap(), "{ks:?}");
        }
    }

    #[test]
    fn zero_diagonals_are_skipped() {
        // A diagonal matrix needs no rotation, a band of width 3 two, an empty matrix none.
        let d = 32;
        let mut w = vec![0.0; d * d];
        (0..d).for_each(|i| w[i * d + i] = i as f64);
        let m = DiagonalMatrix::new(&w, d, d, None, 256).unwrap();
        assert_eq!((m.rotations(), m.giants.len()), (0, 1));

        (0..d - 1).for_each(|i| {
            w[i * d + i + 1] = 1.0;
            w[(i + 1) * d + i] = -1.0;
        });
        let m = DiagonalMatrix::new(&w, d, d, None, 256).unwrap();
        assert_eq!(m.rotation_steps(), vec![1, 255]);

        let x: Vec<f64> = (0..d).map(|i| i as f64 * 0.5).collect();
        let mirror = Mirror::new(256, 1);
        let y = m.apply(&mirror, &mirror.value(m.pack(&[&x]).unwrap()).unwrap()).unwrap();
        assert_eq!(m.unpack(&y.data, 1).unwrap()[0], matvec(&w, d, d, None, &x));

        let zero = DiagonalMatrix::new(&[0.0; 12], 3, 4, Some(&[1.0, 2.0, 3.0]), 16).unwrap();
        let y = zero.apply(&mirror, &mirror.value(vec![1.0; 256]).unwrap());
        assert!(y.is_err(), "prepared for 16 slots, not 256");
        let mirror = Mirror::new(16, 1);
        let y = zero.apply(&mirror, &mirror.value(vec![1.0; 16]).unwrap()).unwrap();
        assert_eq!((zero.rotations(), y.level), (0, 0));
        assert_eq!(zero.unpack(&y.data, 4).unwrap(), vec![vec![1.0, 2.0, 3.0]; 4]);
    }

    #[test]
    fn padding_is_ignored_and_blocks_chain() {
        // Garbage in the padding (an activation of zeros, say) does not reach the outputs, and
        // a d -> 4d -> d pair shares one block.
        let (d, slots) = (16, 256);
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (w1, w2) = (random(&mut rng, 4 * d * d), random(&mut rng, 4 * d * d));
        let up = DiagonalMatrix::new(&w1, 4 * d, d, None, slots).unwrap();
        let down = DiagonalMatrix::with_block(&w2, d, 4 * d, None, up.block(), slots).unwrap();
        let xs: Vec<Vec<f64>> = (0..4).map(|_| random(&mut rng, d)).collect();
        let refs: Vec<&[f64]> = xs.iter().map(|x| x.as_slice()).collect();
        let mut packed = up.pack(&refs).unwrap();
        for block in packed.chunks_mut(up.block()) {
            block[d..].iter_mut().for_each(|v| *v = 1e6);
        }

        let mirror = Mirror::new(slots, 2);
        let h = up.apply(&mirror, &mirror.value(packed).unwrap()).unwrap();
        let y = down.apply(&mirror, &h).unwrap();
        assert_eq!(y.level, 0);
        for (x, out) in xs.iter().zip(down.unpack(&y.data, 4).unwrap()) {
            let expected = matvec(&w2, d, 4 * d, None, &matvec(&w1, 4 * d, d, None, x));
            out.iter().zip(&expected).for_each(|(a, e)| assert!((a - e).abs() < 1e-9));
        }
        assert!(down.apply(&mirror, &y).is_err(), "no level left");
    }

    #[test]
    fn bad_shapes_are_refused() {
        let w = vec![1.0; 12];
        let ok = |r: Result<DiagonalMatrix>| r.is_ok();
        let invalid = |r: Result<DiagonalMatrix>| matches!(r, Err(Error::InvalidInput(_)));
        assert!(ok(DiagonalMatrix::new(&w, 3, 4, Some(&[0.0; 3]), 4)));
        assert!(invalid(DiagonalMatrix::new(&w, 4, 4, None, 64)), "weights length");
        assert!(invalid(DiagonalMatrix::new(&w, 0, 4, None, 64)), "empty");
        assert!(invalid(DiagonalMatrix::new(&w, 3, 4, Some(&[0.0; 4]), 64)), "bias length");
        assert!(invalid(DiagonalMatrix::new(&[f64::NAN; 12], 3, 4, None, 64)), "not finite");
        assert!(invalid(DiagonalMatrix::new(&w, 3, 4, None, 2)), "block beyond slots");
        assert!(invalid(DiagonalMatrix::new(&w, 3, 4, None, 6)), "block does not tile");
        assert!(invalid(DiagonalMatrix::with_block(&w, 3, 4, None, 2, 64)), "block too small");
        assert!(invalid(DiagonalMatrix::with_block(&w, 3, 4, None, 6, 60)), "block not a power of two");

        let m = DiagonalMatrix::new(&w, 3, 4, None, 16).unwrap();
        assert_eq!(m.samples_per_value(), 4);
        assert!(m.pack(&[&[1.0; 4] as &[f64]; 5]).is_err(), "too many samples");
        assert!(m.pack(&[&[1.0; 3]]).is_err(), "sample length");
        assert!(m.unpack(&[0.0; 16], 5).is_err(), "too many samples");
        assert!(m.unpack(&[0.0; 8], 1).is_err(), "slot count");
        assert_eq!(m.pack(&[&[1.0, 2.0, 3.0, 4.0]]).unwrap()[..5], [1.0, 2.0, 3.0, 4.0, 0.0]);
    }
}
