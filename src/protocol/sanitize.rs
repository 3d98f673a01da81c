//! Sanitisation of everything the provider returns to an owner.
//!
//! One pass per ciphertext, one level:
//! 1. **Sample permutation and payload-only slots.** Output sample p is input sample
//!    `order[p]` (same group). Each distinct move (q - p) * tokens is one hoisted rotation,
//!    multiplied by the 0/1 mask of the slots it fills; the masks cover only the payload, so
//!    every other slot (padding, the garbage attention leaves past the last sample) is zero.
//! 2. **Fresh randomness.** A public-key encryption of zero is added, so the returned
//!    ciphertext is distributed like a fresh one, whatever key switches produced it.
//! 3. **Noise flooding.** A polynomial with integer coefficients uniform in
//!    [-2^flood_bits, 2^flood_bits) is added to c0, drowning the last rescaling's rounding
//!    (about 2^6 per coefficient at N = 2^15) but not the noise the whole evaluation
//!    accumulated (2^15-2^20 at a 2^30 scale), which also depends on the weights: a
//!    heuristic, not a statistical guarantee. Flooding spends precision: at a 30-bit scale
//!    the default 8 bits leave about 12 bits, the approximations' own accuracy. See
//!    docs/security.md for what it does and does not guarantee.

use std::collections::BTreeMap;

use rand_core::RngCore;
use rayon::prelude::*;

use crate::ckks::evaluator::{add, adjust_level, drop_level, mul_plain, rescale, rotate_hoisted};
use crate::ckks::{Ciphertext, Complex, EvaluationKeys, Plaintext};
use crate::error::{Error, Result};
use crate::he::packed::PackedBatch;
use crate::he::refresh::integer_poly;
use crate::math::sampling::os_rng;
use crate::parallel;

/// Largest flooding magnitude accepted (keeps coefficients far inside every modulus).
pub const MAX_FLOOD_BITS: u32 = 40;

/// The slot moves a permutation of `batch` samples needs, per group: step -> output samples
/// (local indices) it fills. Refuses anything that is not a permutation within groups.
pub fn moves(batch: &PackedBatch, order: &[usize]) -> Result<Vec<BTreeMap<i64, Vec<usize>>>> {
    let n = batch.batch;
    if order.len() != n {
        return Err(Error::Shape(format!(
            "a permutation of {n} samples needs {n} entries, got {}",
            order.len()
        )));
    }
    let mut seen = vec![false; n];
    for &q in order {
        if q >= n || std::mem::replace(&mut seen[q], true) {
            return Err(Error::Shape(format!("the order is not a permutation of 0..{n} (entry {q})")));
        }
    }
    let per = batch.layout.samples_per_group();
    let tokens = batch.layout.tokens as i64;
    (0..batch.groups.len())
        .map(|g| {
            let mut out: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
            for p in 0..batch.layout.samples_in_group(n, g) {
                let q = order[g * per + p];
                if q / per != g {
                    return Err(Error::Shape(format!(
                        "sample {q} would move from group {} to group {g}; permutations stay within a \
                         group of {per} samples",
                        q / per
                    )));
                }
                out.entry((q as i64 - (g * per) as i64 - p as i64) * tokens).or_default().push(p);
            }
            Ok(out)
        })
        .collect()
}

/// The rotation steps a permutation of samples within windows of `window` needs (for key
/// generation before any permutation is drawn).
pub fn rotation_steps(tokens: usize, window: usize) -> Vec<i64> {
    (1..window as i64).flat_map(|k| [k * tokens as i64, -k * tokens as i64]).collect()
}

/// Permutes the samples of `batch` (output sample p is input sample `order[p]`), zeroes every
/// slot outside the payload, re-randomises with the owner's public key and floods with
/// 2^flood_bits. Costs one level; needs Galois keys for the moves and the public key.
pub fn permute_and_sanitize(
    batch: &PackedBatch,
    order: &[usize],
    keys: &EvaluationKeys,
    flood_bits: u32,
) -> Result<PackedBatch> {
    if flood_bits > MAX_FLOOD_BITS {
        return Err(Error::OutOfRange(format!(
            "flood_bits must be at most {MAX_FLOOD_BITS}, got {flood_bits}"
        )));
    }
    let ctx = batch.context();
    if keys.context() != ctx {
        return Err(Error::ParameterMismatch);
    }
    let public = keys
        .public
        .as_deref()
        .ok_or_else(|| Error::MissingKey("sanitising needs the owner's public key".into()))?;
    let level = batch.level();
    if level == 0 {
        return Err(Error::OutOfLevels("sanitising needs one level; the batch is at level 0".into()));
    }
    let moves = moves(batch, order)?;
    let needs_rotation = moves.iter().any(|m| m.keys().any(|&s| s != 0));
    let galois = match (&keys.galois, needs_rotation) {
        (Some(g), _) => Some(g.as_ref()),
        (None, false) => None,
        (None, true) => return Err(Error::MissingKey("permuting samples needs rotation keys".into())),
    };
    let tokens = batch.layout.tokens;
    let slots = batch.layout.slots;
    // Masks are encoded so that mask x ciphertext lands on the next level's canonical scale
    // after the rescale, whatever scale the batch carries (a fresh complex-packed one is at
    // half the canonical scale).
    let input_scale = batch.groups[0][0].scale();
    let mask_scale = ctx.scale_at(level - 1) * ctx.params.q[level] as f64 / input_scale;
    let groups = batch
        .groups
        .iter()
        .zip(&moves)
        .map(|(cts, moves)| {
            let masks = parallel::install(|| {
                moves
                    .par_iter()
                    .map(|(&step, targets)| {
                        let mut m = vec![Complex::default(); slots];
                        for &p in targets {
                            m[p * tokens..(p + 1) * tokens].fill(Complex::new(1.0, 0.0));
                        }
                        Ok((step, Plaintext::encode(ctx, &m, Some(level), Some(mask_scale))?))
                    })
                    .collect::<Result<Vec<_>>>()
            })?;
            let steps: Vec<i64> = masks.iter().map(|(s, _)| *s).filter(|&s| s != 0).collect();
            cts.iter()
                .map(|ct| {
                    let ct = if ct.scale() == input_scale {
                        drop_level(ct, level)?
                    } else {
                        adjust_level(ct, level)?
                    };
                    if ct.scale() != input_scale {
                        return Err(Error::Malformed(
                            "the batch's ciphertexts carry different scales".into(),
                        ));
                    }
                    let rotated = match galois {
                        Some(g) if !steps.is_empty() => rotate_hoisted(&ct, &steps, g)?,
                        _ => Vec::new(),
                    };
                    let mut rotated = rotated.into_iter();
                    let mut acc: Option<Ciphertext> = None;
                    for (step, mask) in &masks {
                        let source =
                            if *step == 0 { ct.clone() } else { rotated.next().expect("one per step") };
                        let term = mul_plain(&source, mask)?;
                        acc = Some(match acc {
                            None => term,
                            Some(a) => add(&a, &term)?,
                        });
                    }
                    let out = rescale(&acc.expect("a group holds at least one sample"))?;
                    refresh_randomness(&out, public, flood_bits)
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PackedBatch { layout: batch.layout, batch: batch.batch, complex: batch.complex, groups })
}

/// ct + Enc_pk(0) + flooding noise on c0.
fn refresh_randomness(
    ct: &Ciphertext,
    public: &crate::ckks::PublicKey,
    flood_bits: u32,
) -> Result<Ciphertext> {
    let ctx = ct.context();
    let zero = Plaintext::encode(ctx, &[Complex::default()], Some(ct.level()), Some(ct.scale()))?;
    let mut out = add(ct, &public.encrypt(&zero)?)?;
    if flood_bits > 0 {
        let mut rng = os_rng();
        let span = 1u64 << (flood_bits + 1);
        // Rejection-free: span is a power of two, so masking the CSPRNG's output is uniform.
        let coeffs: Vec<i128> = (0..ctx.degree())
            .map(|_| (rng.next_u64() & (span - 1)) as i128 - (1i128 << flood_bits))
            .collect();
        let level = out.level();
        let flood = integer_poly(ctx, &coeffs, level);
        parallel::install(|| out.polys[0].add_assign(&flood, ctx.q_moduli(level)));
    }
    out.seed = None;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ckks::{Context, ParameterSpec, Parameters, SecretKey};

    fn setup() -> (Context, SecretKey, PackedBatch, Vec<f64>) {
        let mut spec = ParameterSpec::new(10, 3, 30);
        spec.insecure = true;
        let ctx = Context::from_parameters(Parameters::new(&spec).unwrap()).unwrap();
        let sk = SecretKey::generate(&ctx);
        // 3 tokens x 3 features, 200 samples: two groups of 170 and 30.
        let (tokens, features, batch) = (3, 3, 200);
        let x: Vec<f64> =
            (0..batch * tokens * features).map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0).collect();
        let packed = PackedBatch::encrypt(&sk, tokens, features, &x, batch, true).unwrap();
        (ctx, sk, packed, x)
    }

    fn keys(sk: &SecretKey, steps: &[i64]) -> EvaluationKeys {
        let ctx = sk.context();
        EvaluationKeys::new(
            ctx,
            Some(Arc::new(sk.public_key())),
            None,
            Some(Arc::new(sk.galois_keys(steps, false).unwrap())),
        )
        .unwrap()
    }

    #[test]
    fn permutes_within_windows_zeroes_the_rest_and_stays_accurate() {
        let (_, sk, packed, x) = setup();
        let window = 4;
        let keys = keys(&sk, &rotation_steps(3, window));
        // Reverse every window of 4 (the last window of group 0 is cut at 170).
        let per = packed.layout.samples_per_group();
        let order: Vec<usize> = (0..200)
            .map(|p| {
                let (g, local) = (p / per, p % per);
                let n = packed.layout.samples_in_group(200, g);
                let start = local / window * window;
                let end = (start + window).min(n);
                g * per + end - 1 - (local - start)
            })
            .collect();
        let out = permute_and_sanitize(&packed, &order, &keys, 8).unwrap();
        assert_eq!(out.level(), packed.level() - 1);
        let got = out.decrypt(&sk).unwrap();
        let sample = 9;
        let mut worst = 0f64;
        for (p, &q) in order.iter().enumerate() {
            for j in 0..sample {
                worst = worst.max((got[p * sample + j] - x[q * sample + j]).abs());
            }
        }
        assert!(worst < 1e-3, "max error {worst}");
        // Slots past the payload decrypt to (flooded) zero.
        for ct in out.groups.iter().flatten() {
            let slots = sk.decrypt(ct).unwrap().decode();
            let tail = &slots[per * 3..];
            assert!(tail.iter().all(|z| z.re.abs() < 1e-3 && z.im.abs() < 1e-3));
        }
        let last = &out.groups[1][0];
        let slots = sk.decrypt(last).unwrap().decode();
        assert!(slots[30 * 3..].iter().all(|z| z.re.abs() < 1e-3));
    }

    #[test]
    fn refuses_bad_orders_and_missing_keys() {
        let (_, sk, packed, _) = setup();
        let keys_ok = keys(&sk, &rotation_steps(3, 2));
        let identity: Vec<usize> = (0..200).collect();
        let mut swapped = identity.clone();
        swapped.swap(0, 1);
        let mut repeated = identity.clone();
        repeated[1] = 0;
        assert!(permute_and_sanitize(&packed, &repeated, &keys_ok, 8).is_err());
        assert!(permute_and_sanitize(&packed, &identity[..10], &keys_ok, 8).is_err());
        let mut across = identity.clone();
        across.swap(0, 199);
        let err = permute_and_sanitize(&packed, &across, &keys_ok, 8).unwrap_err();
        assert!(err.to_string().contains("group"), "{err}");
        assert!(permute_and_sanitize(&packed, &swapped, &keys_ok, 41).is_err());
        let no_rotations =
            EvaluationKeys::new(sk.context(), Some(Arc::new(sk.public_key())), None, None).unwrap();
        assert!(matches!(
            permute_and_sanitize(&packed, &swapped, &no_rotations, 8),
            Err(Error::MissingKey(_))
        ));
        permute_and_sanitize(&packed, &identity, &no_rotations, 8).unwrap();
        let no_public = EvaluationKeys::new(sk.context(), None, None, keys_ok.galois.clone()).unwrap();
        assert!(matches!(permute_and_sanitize(&packed, &identity, &no_public, 8), Err(Error::MissingKey(_))));
        let bottom = packed.at_level(0).unwrap();
        assert!(matches!(permute_and_sanitize(&bottom, &identity, &keys_ok, 8), Err(Error::OutOfLevels(_))));
    }
}
