//! The encrypted transformer block against its plaintext mirror and the f64 reference.

use std::sync::Arc;

use blindfed::ckks::{Context, EvaluationKeys, ParameterSpec, SecretKey};
use blindfed::he::encrypted::Encrypted;
use blindfed::he::layout::TokenLayout;
use blindfed::he::mirror::Mirror;
use blindfed::he::packed::PackedBatch;
use blindfed::he::refresh::{mask, refresh_all, refresh_level, refresh_paired, unmask, Refresher, Sent};
use blindfed::he::{attention::DiagonalPlan, Backend};
use blindfed::nn::approx;
use blindfed::nn::block::{Block, BlockShape, BlockWeights};
use blindfed::nn::families::{BlockApprox, Denominator};
use blindfed::nn::plan::plan_block;
use blindfed::nn::spec::StudentSpec;
use blindfed::Error;

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f64, offset: f64) -> Vec<f64> {
        (0..n).map(|_| offset + scale * self.uniform()).collect()
    }
}

fn random_block(shape: BlockShape, seed: u64) -> BlockWeights {
    let mut r = Rng(seed | 1);
    let (d, m) = (shape.width, shape.mlp);
    let s = 1.0 / (d as f64).sqrt();
    BlockWeights {
        ln1_gamma: r.vec(d, 0.1, 1.0),
        ln1_beta: r.vec(d, 0.1, 0.0),
        wq: r.vec(d * d, s, 0.0),
        bq: r.vec(d, 0.1, 0.0),
        wk: r.vec(d * d, s, 0.0),
        bk: r.vec(d, 0.1, 0.0),
        wv: r.vec(d * d, s, 0.0),
        bv: r.vec(d, 0.1, 0.0),
        wo: r.vec(d * d, s, 0.0),
        bo: r.vec(d, 0.1, 0.0),
        ln2_gamma: r.vec(d, 0.1, 1.0),
        ln2_beta: r.vec(d, 0.1, 0.0),
        w1: r.vec(m * d, s, 0.0),
        b1: r.vec(m, 0.1, 0.0),
        w2: r.vec(d * m, 1.0 / (m as f64).sqrt(), 0.0),
        b2: r.vec(d, 0.1, 0.0),
    }
}

fn approx_of(spec: &str, shape: &BlockShape) -> BlockApprox {
    StudentSpec::parse(spec, &StudentSpec::preset("reference").unwrap()).unwrap().block_approx(shape)
}

fn block_with(spec: &str, seed: u64, inputs: &[f64]) -> Block {
    let shape = BlockShape::new(5, 8, 2, 16).unwrap();
    let block = Block::new(shape, random_block(shape, seed), approx_of(spec, &shape)).unwrap();
    block.calibrated(inputs, 0.3).unwrap()
}

fn small_block(seed: u64, inputs: &[f64]) -> Block {
    block_with("reference", seed, inputs)
}

struct Owner {
    ctx: Context,
    sk: Arc<SecretKey>,
    keys: EvaluationKeys,
}

fn owner(log_n: u32, levels: usize, steps: &[i64]) -> Owner {
    let mut spec = ParameterSpec::new(log_n, levels, 30);
    spec.insecure = true;
    let ctx = Context::new(&spec).unwrap();
    let sk = Arc::new(SecretKey::generate(&ctx));
    let keys = EvaluationKeys::new(
        &ctx,
        None,
        Some(Arc::new(sk.relin_key())),
        Some(Arc::new(sk.galois_keys(steps, true).unwrap())),
    )
    .unwrap();
    Owner { ctx, sk, keys }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

fn range(a: &[f64]) -> f64 {
    a.iter().cloned().fold(f64::MIN, f64::max) - a.iter().cloned().fold(f64::MAX, f64::min)
}

/// `block` on `x` (batch x tokens x width) through the mirror, group by group.
fn mirrored(block: &Block, layout: &TokenLayout, x: &[f64], batch: usize) -> Vec<f64> {
    let b = Mirror::new(layout.slots, 40).with_refresh_level(2);
    let out: Vec<Vec<Vec<f64>>> = layout
        .pack(x, batch)
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(g, cts)| {
            let v = cts.into_iter().map(|c| b.value(c).unwrap()).collect();
            let y = block.evaluate(&b, layout, layout.samples_in_group(batch, g), v).unwrap();
            y.into_iter().map(|v| v.data).collect()
        })
        .collect();
    layout.unpack(&out, batch).unwrap()
}

/// The mirror (token layout, level rules, refreshes) computes the reference function.
#[test]
fn mirror_matches_reference_forward() {
    let batch = 7;
    let mut r = Rng(11);
    let x = r.vec(batch * 5 * 8, 1.0, 0.0);
    let block = small_block(3, &x);
    let slots = 16; // 3 samples per group: exercises several groups and a partial one
    let layout = TokenLayout::new(5, 8, slots).unwrap();
    let got = mirrored(&block, &layout, &x, batch);
    let want: Vec<f64> = x.chunks(40).flat_map(|s| block.forward(s).unwrap()).collect();
    assert!(max_abs_diff(&got, &want) < 1e-9, "mirror differs from forward by {}", max_abs_diff(&got, &want));
}

/// An MLP whose hidden width is not a multiple of the block's width streams in uneven chunks
/// (6 + 6 + 6 + 2 hidden units), with GELU folded into FC2 or evaluated.
#[test]
fn mlp_in_uneven_hidden_chunks_matches_reference() {
    let batch = 4;
    let mut r = Rng(17);
    let shape = BlockShape::new(5, 6, 2, 20).unwrap();
    let x = r.vec(batch * 5 * 6, 1.0, 0.0);
    let layout = TokenLayout::new(5, 6, 16).unwrap();
    for spec in ["reference", "gelu=chebyshev:7"] {
        let block = Block::new(shape, random_block(shape, 9), approx_of(spec, &shape)).unwrap();
        let block = block.calibrated(&x, 0.3).unwrap();
        let got = mirrored(&block, &layout, &x, batch);
        let want = block.forward_batch(&x, false).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-9, "{spec}: mirror differs by {}", max_abs_diff(&got, &want));
    }
}

/// Encrypted output vs the reference for a stack of 4 blocks, re-encrypted between blocks.
#[test]
fn encrypted_stack_of_four_blocks_matches_mirror() {
    let batch = 3;
    let mut r = Rng(5);
    let x0 = r.vec(batch * 5 * 8, 1.0, 0.0);
    // Calibrate each block on the activations it will see.
    let mut blocks = Vec::new();
    let mut act = x0.clone();
    for i in 0..4 {
        let block = small_block(100 + i, &act);
        act = act.chunks(40).flat_map(|s| block.forward(s).unwrap()).collect();
        blocks.push(block);
    }
    let layout = TokenLayout::new(5, 8, 1 << 9).unwrap();
    let plan = DiagonalPlan::new(&layout, batch, None).unwrap();
    let levels = blocks[0].depth().attention + blocks[0].depth().mlp + 4;
    let o = owner(10, levels, &plan.rotation_steps());
    assert!(o
        .keys
        .galois
        .as_ref()
        .unwrap()
        .get(blindfed::math::automorphism::conjugation_element(1 << 10))
        .is_some());
    let refresher: Arc<dyn Refresher> = o.sk.clone();
    let backend = Encrypted::new(&o.keys).unwrap().with_refresher(refresher);
    let mut x = x0.clone();
    let mut reference = x0;
    for block in &blocks {
        let packed = PackedBatch::encrypt(&o.sk, 5, 8, &x, batch, true).unwrap();
        let input = packed.real_groups(o.keys.galois.as_deref()).unwrap().remove(0).into_owned();
        let y = block.evaluate(&backend, &packed.layout, batch, input).unwrap();
        let out = PackedBatch::from_real(packed.layout, batch, vec![y], true).unwrap();
        x = out.decrypt(&o.sk).unwrap();
        reference = reference.chunks(40).flat_map(|s| block.forward(s).unwrap()).collect();
    }
    let err = max_abs_diff(&x, &reference);
    let span = range(&reference);
    eprintln!("4-block stack: max abs error {err:.3e}, activation range {span:.3}");
    assert!(err < 1e-3 * span, "error {err} exceeds 1e-3 of the range {span}");
    // The encrypted run did exactly what the tracer predicts for one block (times four).
    let tracer = Mirror::tracer(1 << 9, levels).with_refresh_level(backend.refresh_level());
    let inputs = (0..8).map(|_| tracer.value(vec![]).unwrap()).collect();
    blocks[0].evaluate(&tracer, &layout, batch, inputs).unwrap();
    let (t, e) = (tracer.cost(), backend.cost());
    assert_eq!(4 * t.key_switches(), e.key_switches());
    // The encrypted backend timed every kind of operation it ran; the tracer timed nothing.
    for kind in ["rotations", "relinearizations", "tensor_products", "linear_layers", "refreshes"] {
        assert!(e.nanos.get(kind).is_some_and(|&ns| ns > 0), "no time measured for {kind}: {:?}", e.nanos);
    }
    assert!(t.nanos.is_empty());
    // (The 4 conjugations per block that separate the complex packing happen outside the backend.)
    assert_eq!(4 * t.refresh_rounds, e.refresh_rounds);
    assert_eq!(4 * t.conjugations, e.conjugations);
    assert_eq!(4 * t.refreshed_ciphertexts, e.refreshed_ciphertexts);
    let by_level: Vec<(usize, u64)> = t.refreshed_by_level.iter().map(|(&l, &n)| (l, 4 * n)).collect();
    assert_eq!(by_level, e.refreshed_by_level.into_iter().collect::<Vec<_>>());
}

#[test]
fn masked_refresh_hides_and_restores() {
    let o = owner(10, 6, &[1]);
    let values: Vec<f64> = (0..512).map(|i| (i as f64 / 100.0).sin()).collect();
    let packed = PackedBatch::encrypt(&o.sk, 1, 1, &values[..1], 1, false).unwrap();
    let ct = packed.groups[0][0].clone();
    let (masked, m) = mask(&ct).unwrap();
    // What the owner sees is dominated by the mask: nowhere near the value.
    let seen = o.sk.decrypt(&masked).unwrap().decode();
    assert!(seen[0].re.abs() > 1e6, "the mask is too small: owner saw {}", seen[0].re);
    let top = o.ctx.max_level();
    let fresh = o.sk.refresh(vec![masked], top).unwrap().remove(0);
    let back = unmask(&fresh, &m).unwrap();
    assert_eq!(back.level(), top);
    let got = o.sk.decrypt(&back).unwrap().decode();
    assert!((got[0].re - values[0]).abs() < 1e-5);
    // A reply at another level than the mask's is refused.
    let (masked, m) = mask(&ct).unwrap();
    let low = o.sk.refresh(vec![masked], top - 1).unwrap().remove(0);
    assert!(matches!(unmask(&low, &m), Err(Error::Malformed(_))));
    // A whole round trip through the helper gives the same, at any level asked for.
    for level in [top, refresh_level(&o.ctx) + 1] {
        let again = refresh_all(vec![ct.clone()], o.sk.as_ref(), level).unwrap().remove(0);
        assert_eq!(again.level(), level);
        assert!((o.sk.decrypt(&again).unwrap().decode()[0].re - values[0]).abs() < 1e-5);
    }
}

/// Values at one level travel two to a ciphertext and come back apart; a lone value or one at
/// another level travels alone. Every slot of every value survives.
#[test]
fn a_paired_refresh_halves_the_ciphertexts_and_restores_each_value() {
    let o = owner(10, 6, &[1]);
    let slots = o.ctx.params.slots();
    let top = o.ctx.max_level();
    let signal =
        |k: f64| -> Vec<f64> { (0..slots).map(|i| (i as f64 * k / 37.0).sin() * (1.0 + k)).collect() };
    let encrypt = |v: &[f64], level: usize| {
        let packed = PackedBatch::encrypt(&o.sk, 1, 1, v, slots, false).unwrap();
        blindfed::ckks::evaluator::adjust_level(&packed.groups[0][0], level).unwrap()
    };
    let wanted: Vec<Vec<f64>> = (0..5).map(|k| signal(k as f64)).collect();
    // Three at the top (a pair and a lone one), two one level down (a pair).
    let levels = [top, top, top, top - 1, top - 1];
    let cts: Vec<_> = wanted.iter().zip(levels).map(|(v, l)| encrypt(v, l)).collect();
    let target = refresh_level(&o.ctx) + 2;
    let (out, sent) = refresh_paired(cts, o.sk.as_ref(), target, o.keys.galois.as_deref()).unwrap();
    assert_eq!(sent, Sent { ciphertexts: 3, conjugations: 2 });
    assert_eq!(out.len(), 5);
    for (k, (ct, want)) in out.iter().zip(&wanted).enumerate() {
        assert_eq!(ct.level(), target);
        let got: Vec<f64> = o.sk.decrypt(ct).unwrap().decode().iter().map(|z| z.re).collect();
        let err = max_abs_diff(&got, want);
        assert!(err < 1e-4, "value {k}: error {err}");
    }
    // Without the conjugation key a pair cannot be separated: a clear error, not garbage.
    let cts: Vec<_> = wanted[..2].iter().map(|v| encrypt(v, top)).collect();
    assert!(matches!(refresh_paired(cts, o.sk.as_ref(), top, None), Err(Error::MissingKey(_))));
}

#[test]
fn clear_errors() {
    let mut r = Rng(9);
    let x = r.vec(5 * 8, 1.0, 0.0);
    let block = small_block(1, &x);
    // Wrong shapes.
    assert!(matches!(block.forward(&x[..39]), Err(Error::Shape(_))));
    let shape = BlockShape::new(5, 8, 2, 16).unwrap();
    let mut w = random_block(shape, 2);
    w.wq.pop();
    assert!(matches!(Block::new(shape, w, approx_of("reference", &shape)), Err(Error::Shape(_))));
    assert!(BlockShape::new(5, 8, 3, 16).is_err());
    // Too few levels for a stage.
    let b = Mirror::new(16, 5).with_refresh_level(2);
    let layout = TokenLayout::new(5, 8, 16).unwrap();
    let v = (0..8).map(|_| b.value(vec![0.0; 16]).unwrap()).collect();
    assert!(matches!(block.evaluate(&b, &layout, 3, v), Err(Error::OutOfLevels(_))));
    // Missing rotation keys.
    let levels = block.depth().attention + block.depth().mlp + 4;
    let o = owner(10, levels, &[1]);
    let refresher: Arc<dyn Refresher> = o.sk.clone();
    let backend = Encrypted::new(&o.keys).unwrap().with_refresher(refresher);
    let packed = PackedBatch::encrypt(&o.sk, 5, 8, &x, 1, false).unwrap();
    let layout = packed.layout;
    let res = block.evaluate(&backend, &layout, 1, packed.groups[0].clone());
    assert!(matches!(res, Err(Error::MissingKey(_))), "{res:?}");
}

/// A narrow chain deeper than the ring's levels runs in steps joined by refreshes: the
/// planner needs only its deepest step to fit, and the result is still the reference's.
#[test]
fn a_deep_narrow_chain_runs_in_refreshed_steps() {
    let shape = BlockShape::new(5, 8, 2, 16).unwrap();
    let a = BlockApprox {
        numerator: approx::exp_taylor(6, (-6.0, 6.0)).unwrap(),
        denominator: Denominator::RowSum(approx::goldschmidt(18, (1.0, 5000.0)).unwrap()),
        ..approx_of("reference", &shape)
    };
    let block = Block::new(shape, random_block(shape, 3), a).unwrap();
    let d = block.depth();
    assert!(d.reciprocal > d.attention + d.mlp, "{d:?}");
    let plan = plan_block(&block, 30, None).unwrap();
    assert!(plan.spec.levels < d.reciprocal, "{} levels for {d:?}", plan.spec.levels);
    let mut r = Rng(17);
    let x = r.vec(3 * 5 * 8, 1.0, 0.0);
    let layout = TokenLayout::new(5, 8, 16).unwrap();
    let b = Mirror::new(16, plan.spec.levels).with_refresh_level(plan.refresh_level);
    let v = layout.pack(&x, 3).unwrap().remove(0).into_iter().map(|c| b.value(c).unwrap()).collect();
    let y = block.evaluate(&b, &layout, 3, v).unwrap();
    let got = layout.unpack(&[y.into_iter().map(|v| v.data).collect()], 3).unwrap();
    let want: Vec<f64> = x.chunks(40).flat_map(|s| block.forward(s).unwrap()).collect();
    assert!(max_abs_diff(&got, &want) < 1e-9);
    // Each head's 1/sum took several round trips.
    assert!(b.cost().refresh_rounds >= 2 * 3, "{:?}", b.cost());
}

const FAMILIES: [&str; 8] = [
    "reference",
    "paper",
    "softmax=quad",
    "softmax=power:4",
    "softmax=quad denominator=constant",
    "norm=affine",
    "softmax=quad denominator=constant norm=affine",
    "gelu=chebyshev:7 norm=layernorm:newton:15:3",
];

/// Every family, through the mirror (several groups, a partial one), computes the reference;
/// so does the owner-normalised path.
#[test]
fn every_family_mirrors_its_reference() {
    let batch = 7;
    let mut r = Rng(23);
    let x = r.vec(batch * 5 * 8, 1.0, 0.0);
    let layout = TokenLayout::new(5, 8, 16).unwrap();
    for spec in FAMILIES {
        let block = block_with(spec, 4, &x);
        for normalised in [false, true] {
            let b = Mirror::new(16, 40).with_refresh_level(2);
            let want = block.forward_batch(&x, normalised).unwrap();
            let hat: Vec<f64> = x.chunks(8).flat_map(|row| owner_normalise(row, block.approx.eps)).collect();
            let groups = layout.pack(&x, batch).unwrap();
            let hats = layout.pack(&hat, batch).unwrap();
            let out: Vec<Vec<Vec<f64>>> = groups
                .into_iter()
                .zip(hats)
                .enumerate()
                .map(|(g, (cts, hs))| {
                    let v: Vec<_> = cts.into_iter().map(|c| b.value(c).unwrap()).collect();
                    let h: Vec<_> = hs.into_iter().map(|c| b.value(c).unwrap()).collect();
                    let n = layout.samples_in_group(batch, g);
                    let y = if normalised {
                        block.evaluate_normalised(&b, &layout, n, v, h).unwrap()
                    } else {
                        block.evaluate(&b, &layout, n, v).unwrap()
                    };
                    y.into_iter().map(|v| v.data).collect()
                })
                .collect();
            let got = layout.unpack(&out, batch).unwrap();
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-9, "{spec} (owner-normalised {normalised}): mirror differs by {err}");
        }
    }
}

/// What the owner sends for an owner-normalised block: (x - mean) / sqrt(var + eps) per token.
fn owner_normalise(row: &[f64], eps: f64) -> Vec<f64> {
    let d = row.len() as f64;
    let mean = row.iter().sum::<f64>() / d;
    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
    row.iter().map(|v| (v - mean) / (var + eps).sqrt()).collect()
}

/// The new families on ciphertexts against their mirror, with the owner-normalised path.
#[test]
fn new_families_encrypted_match_their_mirror() {
    let batch = 3;
    let mut r = Rng(29);
    let x = r.vec(batch * 5 * 8, 1.0, 0.0);
    for spec in &FAMILIES[2..] {
        let block = block_with(spec, 6, &x);
        let layout = TokenLayout::new(5, 8, 1 << 9).unwrap();
        let d = block.depth();
        let levels = d.attention.max(d.mlp).max(d.narrow_step) + 3;
        let plan = DiagonalPlan::new(&layout, batch, None).unwrap();
        let o = owner(10, levels, &plan.rotation_steps());
        let refresher: Arc<dyn Refresher> = o.sk.clone();
        let packed = PackedBatch::encrypt(&o.sk, 5, 8, &x, batch, true).unwrap();
        let hat: Vec<f64> = x.chunks(8).flat_map(|row| owner_normalise(row, block.approx.eps)).collect();
        let hat = PackedBatch::encrypt(&o.sk, 5, 8, &hat, batch, true).unwrap();
        for normalised in [false, true] {
            let (out, cost) = block
                .evaluate_batch(&o.keys, refresher.clone(), &packed, normalised.then_some(&hat), None)
                .unwrap();
            let got = out.decrypt(&o.sk).unwrap();
            let want = block.forward_batch(&x, normalised).unwrap();
            let (err, span) = (max_abs_diff(&got, &want), range(&want));
            eprintln!(
                "{spec} (owner-normalised {normalised}): error {err:.2e} on a range of {span:.2}, {cost:?}"
            );
            assert!(err < 1e-3 * span, "{spec}: error {err} on a range of {span}");
        }
    }
}

/// With the cheap families a ViT-Tiny block plans at N = 2^14 with 128-bit parameters.
#[test]
fn cheap_families_plan_vit_tiny_at_n_2_14() {
    let shape = BlockShape::new(197, 192, 3, 768).unwrap();
    let weights = random_block(shape, 8);
    for (spec, log_n) in [("softmax=quad denominator=constant norm=affine", 14), ("reference", 15)] {
        let block = Block::new(shape, weights.clone(), approx_of(spec, &shape)).unwrap();
        let plan = plan_block(&block, 30, None).unwrap();
        assert_eq!(plan.spec.log_n, log_n, "{spec}: {:?}", plan.depth);
        assert!(plan.params.is_128_bit_secure() && !plan.params.insecure);
    }
}
