//! End-to-end properties of the CKKS engine: every operation decrypts to what numpy-style
//! arithmetic on the slot values gives, within the precision the parameters promise.

use blindfed::ckks::{evaluator as ev, Ciphertext, Complex, Context, ParameterSpec, Plaintext, SecretKey};
use blindfed::Error;
use proptest::prelude::*;
use std::sync::OnceLock;

struct Fixture {
    ctx: Context,
    sk: SecretKey,
    pk: blindfed::ckks::PublicKey,
    rlk: blindfed::ckks::RelinKey,
    gk: blindfed::ckks::GaloisKeys,
}

/// N = 2^11 (insecure: small and fast) with 4 levels; special_count 2 to exercise multi-prime
/// digits, and a second set with one prime per digit.
fn fixture(alpha: usize) -> &'static Fixture {
    static A1: OnceLock<Fixture> = OnceLock::new();
    static A2: OnceLock<Fixture> = OnceLock::new();
    let cell = if alpha == 1 { &A1 } else { &A2 };
    cell.get_or_init(|| {
        let mut spec = ParameterSpec::new(11, 4, 40);
        spec.special_count = Some(alpha);
        spec.insecure = true;
        let ctx = Context::new(&spec).unwrap();
        let sk = SecretKey::generate(&ctx);
        Fixture {
            pk: sk.public_key(),
            rlk: sk.relin_key(),
            gk: sk.galois_keys(&[1, 2, 3, -1, 7, 100], true).unwrap(),
            ctx,
            sk,
        }
    })
}

fn values(seed: u64, len: usize) -> Vec<Complex> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    (0..len).map(|_| Complex::new(next(), next())).collect()
}

fn encrypt(f: &Fixture, v: &[Complex], public: bool) -> Ciphertext {
    let pt = Plaintext::encode(&f.ctx, v, None, None).unwrap();
    if public {
        f.pk.encrypt(&pt).unwrap()
    } else {
        f.sk.encrypt_symmetric(&pt).unwrap()
    }
}

fn decrypt(f: &Fixture, ct: &Ciphertext) -> Vec<Complex> {
    f.sk.decrypt(ct).unwrap().decode()
}

fn max_err(a: &[Complex], b: &[Complex]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (*x - *y).abs()).fold(0.0, f64::max)
}

const PRECISION: f64 = 1e-6; // about 20 bits; fresh ciphertexts at 2^40 scale reach ~2^-25

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    #[test]
    fn encrypt_decrypt_round_trip(seed in any::<u64>(), log_slots in 0u32..11, public in any::<bool>(), alpha in 1usize..3) {
        let f = fixture(alpha);
        let v = values(seed, 1 << log_slots);
        let ct = encrypt(f, &v, public);
        prop_assert_eq!(ct.slots(), v.len());
        prop_assert!(max_err(&decrypt(f, &ct), &v) < PRECISION);
    }

    #[test]
    fn add_sub_negate_and_plain_ops(seed in any::<u64>(), alpha in 1usize..3) {
        let f = fixture(alpha);
        let (x, y) = (values(seed, 1024), values(seed ^ 99, 1024));
        let (a, b) = (encrypt(f, &x, true), encrypt(f, &y, false));
        let sum: Vec<_> = x.iter().zip(&y).map(|(p, q)| *p + *q).collect();
        let diff: Vec<_> = x.iter().zip(&y).map(|(p, q)| *p - *q).collect();
        prop_assert!(max_err(&decrypt(f, &ev::add(&a, &b).unwrap()), &sum) < PRECISION);
        prop_assert!(max_err(&decrypt(f, &ev::sub(&a, &b).unwrap()), &diff) < PRECISION);
        let neg: Vec<_> = x.iter().map(|p| Complex::new(-p.re, -p.im)).collect();
        prop_assert!(max_err(&decrypt(f, &ev::negate(&a)), &neg) < PRECISION);
        let pt = Plaintext::encode(&f.ctx, &y, None, None).unwrap();
        prop_assert!(max_err(&decrypt(f, &ev::add_plain(&a, &pt).unwrap()), &sum) < PRECISION);
        prop_assert!(max_err(&decrypt(f, &ev::sub_plain(&a, &pt).unwrap()), &diff) < PRECISION);
        let shifted: Vec<_> = x.iter().map(|p| Complex::new(p.re + 0.25, p.im)).collect();
        prop_assert!(max_err(&decrypt(f, &ev::add_scalar(&a, 0.25).unwrap()), &shifted) < PRECISION);
    }

    #[test]
    fn multiply_relinearize_rescale(seed in any::<u64>(), alpha in 1usize..3) {
        let f = fixture(alpha);
        let (x, y) = (values(seed, 1024), values(seed ^ 5, 1024));
        let (a, b) = (encrypt(f, &x, true), encrypt(f, &y, true));
        let prod: Vec<_> = x.iter().zip(&y).map(|(p, q)| *p * *q).collect();
        let m = ev::multiply(&a, &b).unwrap();
        prop_assert_eq!(m.size(), 3);
        prop_assert!(max_err(&decrypt(f, &m), &prod) < PRECISION, "size-3 decryption");
        let r = ev::rescale(&ev::relinearize(&m, &f.rlk).unwrap()).unwrap();
        prop_assert_eq!(r.level(), f.ctx.max_level() - 1);
        prop_assert!((r.scale() / f.ctx.scale_at(r.level()) - 1.0).abs() < 1e-12, "canonical scale");
        prop_assert!(max_err(&decrypt(f, &r), &prod) < PRECISION);
        let fused = ev::multiply_relin_rescale(&a, &b, &f.rlk).unwrap();
        prop_assert_eq!(fused.level(), r.level());
        prop_assert!((fused.scale() / r.scale() - 1.0).abs() < 1e-15);
        prop_assert!(max_err(&decrypt(f, &fused), &prod) < PRECISION, "fused");
        // ct x pt and ct x scalar land on the same canonical scale.
        let pt = Plaintext::encode(&f.ctx, &y, None, None).unwrap();
        let rp = ev::rescale(&ev::mul_plain(&a, &pt).unwrap()).unwrap();
        prop_assert!(max_err(&decrypt(f, &rp), &prod) < PRECISION);
        let tripled: Vec<_> = x.iter().map(|p| Complex::new(3.0 * p.re, 3.0 * p.im)).collect();
        let by_integer = ev::mul_integer(&a, 3);
        prop_assert_eq!((by_integer.level(), by_integer.scale()), (a.level(), a.scale()));
        prop_assert!(max_err(&decrypt(f, &by_integer), &tripled) < PRECISION);
        let rs = ev::rescale(&ev::mul_scalar(&a, -1.5).unwrap()).unwrap();
        let scaled: Vec<_> = x.iter().map(|p| Complex::new(-1.5 * p.re, -1.5 * p.im)).collect();
        prop_assert!(max_err(&decrypt(f, &rs), &scaled) < PRECISION);
        // Results of different depth combine after adjust_level.
        let sum = ev::add(&r, &ev::adjust_level(&a, r.level()).unwrap()).unwrap();
        let expected: Vec<_> = prod.iter().zip(&x).map(|(p, q)| *p + *q).collect();
        prop_assert!(max_err(&decrypt(f, &sum), &expected) < PRECISION);
    }

    #[test]
    fn rotations_and_conjugation(seed in any::<u64>(), alpha in 1usize..3) {
        let f = fixture(alpha);
        let x = values(seed, 1024);
        let a = encrypt(f, &x, true);
        let steps = [1i64, 2, 3, -1, 7, 100, 0];
        let hoisted = ev::rotate_hoisted(&a, &steps, &f.gk).unwrap();
        for (&k, ct) in steps.iter().zip(&hoisted) {
            let expected: Vec<_> = (0..1024).map(|i| x[(i as i64 + k).rem_euclid(1024) as usize]).collect();
            prop_assert!(max_err(&decrypt(f, ct), &expected) < PRECISION, "hoisted step {}", k);
            prop_assert!(max_err(&decrypt(f, &ev::rotate(&a, k, &f.gk).unwrap()), &expected) < PRECISION, "step {}", k);
        }
        let conj: Vec<_> = x.iter().map(|p| Complex::new(p.re, -p.im)).collect();
        prop_assert!(max_err(&decrypt(f, &ev::conjugate(&a, &f.gk).unwrap()), &conj) < PRECISION);
    }
}

#[test]
fn rotation_of_a_sparse_batch_wraps_within_the_batch() {
    let f = fixture(1);
    let x = values(3, 8);
    let r = ev::rotate(&encrypt(f, &x, false), 3, &f.gk).unwrap();
    let expected: Vec<_> = (0..8).map(|i| x[(i + 3) % 8]).collect();
    assert!(max_err(&decrypt(f, &r), &expected) < PRECISION);
}

#[test]
fn depth_is_used_up_to_level_zero() {
    let f = fixture(2);
    let x: Vec<Complex> = values(11, 64).iter().map(|z| Complex::new(z.re, 0.0)).collect();
    let mut ct = encrypt(f, &x, true);
    let mut expected = x.clone();
    while ct.level() > 0 {
        ct = ev::rescale(&ev::relinearize(&ev::multiply(&ct, &ct).unwrap(), &f.rlk).unwrap()).unwrap();
        expected = expected.iter().map(|z| *z * *z).collect();
    }
    assert!(max_err(&decrypt(f, &ct), &expected) < 1e-4);
    assert!(matches!(ev::rescale(&ct), Err(Error::OutOfLevels(_))));
}

#[test]
fn mismatched_operands_are_refused() {
    let f = fixture(1);
    let x = values(1, 16);
    let a = encrypt(f, &x, true);
    let low = ev::rescale(&ev::mul_scalar(&a, 2.0).unwrap()).unwrap();
    assert!(matches!(ev::add(&a, &low), Err(Error::LevelMismatch(4, 3))));
    let dropped = ev::drop_level(&a, 3).unwrap();
    assert!(matches!(ev::add(&dropped, &low), Err(Error::ScaleMismatch(..))));
    let other = fixture(2);
    assert!(matches!(ev::add(&a, &encrypt(other, &x, true)), Err(Error::ParameterMismatch)));
    assert!(matches!(ev::rotate(&a, 5, &f.gk), Err(Error::MissingKey(_))));
    assert!(Plaintext::encode(&f.ctx, &[], None, None).is_err());
    assert!(Plaintext::encode(&f.ctx, &[Complex::new(f64::NAN, 0.0)], None, None).is_err());
    assert!(Plaintext::encode(&f.ctx, &[Complex::new(1e30, 0.0)], None, None).is_err());
    assert!(Plaintext::encode(&f.ctx, &x, Some(9), None).is_err());
    let m = ev::multiply(&a, &a).unwrap();
    assert!(ev::multiply(&m, &a).is_err());
}

#[test]
fn multiplying_by_i_rotates_every_slot_a_quarter_turn() {
    let f = fixture(1);
    let v = values(77, 16);
    let got = decrypt(f, &ev::mul_by_i(&encrypt(f, &v, false)));
    for (g, w) in got.iter().zip(&v) {
        assert!((g.re - -w.im).abs() < 1e-6 && (g.im - w.re).abs() < 1e-6, "{g:?} vs i * {w:?}");
    }
}

#[test]
fn multiply_accumulate_equals_summed_products() {
    let f = fixture(2);
    let (a, b, c, d) = (values(1, 64), values(2, 64), values(3, 64), values(4, 64));
    let (ea, eb, ec, ed) =
        (encrypt(f, &a, false), encrypt(f, &b, false), encrypt(f, &c, true), encrypt(f, &d, true));
    let mut acc = ev::multiply(&ea, &eb).unwrap();
    ev::multiply_accumulate(&mut acc, &ec, &ed).unwrap();
    let want = ev::add(&ev::multiply(&ea, &eb).unwrap(), &ev::multiply(&ec, &ed).unwrap()).unwrap();
    assert_eq!(acc.size(), 3);
    let (got, want) = (f.sk.decrypt(&acc).unwrap().decode(), f.sk.decrypt(&want).unwrap().decode());
    for (g, w) in got.iter().zip(&want) {
        assert!((g.re - w.re).abs() < 1e-9 && (g.im - w.im).abs() < 1e-9);
    }
    // Operands at another level or a size-2 sum are refused, not mixed.
    let low = ev::drop_level(&ec, 2).unwrap();
    assert!(ev::multiply_accumulate(&mut acc, &low, &low).is_err());
    let mut two = ea.clone();
    assert!(ev::multiply_accumulate(&mut two, &eb, &ec).is_err());
}

#[test]
fn a_seeded_secret_key_is_reproducible_and_seed_specific() {
    let f = fixture(1);
    let x = values(5, 16);
    let a = SecretKey::from_seed(&f.ctx, [7; 32]);
    let b = SecretKey::from_seed(&f.ctx, [7; 32]);
    let other = SecretKey::from_seed(&f.ctx, [8; 32]);
    let pt = Plaintext::encode(&f.ctx, &x, None, None).unwrap();
    let ct = a.encrypt_symmetric(&pt).unwrap();
    assert!(max_err(&b.decrypt(&ct).unwrap().decode(), &x) < PRECISION);
    assert!(max_err(&other.decrypt(&ct).unwrap().decode(), &x) > 1.0);
}
