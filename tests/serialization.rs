//! Round trips of every serialised object, and rejection (never a panic) of malformed bytes.

use blindfed::ckks::serial::{parameters_from_bytes, parameters_to_bytes};
use blindfed::ckks::{
    evaluator as ev, Ciphertext, Complex, Context, EvaluationKeys, GaloisKeys, ParameterSpec, Plaintext,
    PublicKey, RelinKey, SecretKey,
};
use blindfed::Error;
use proptest::prelude::*;
use std::sync::Arc;

mod common;

fn setup() -> &'static (Context, SecretKey) {
    common::small_owner()
}

fn sample_values() -> Vec<Complex> {
    (0..32).map(|i| Complex::new(i as f64 / 32.0, -(i as f64) / 64.0)).collect()
}

fn close(a: &[Complex], b: &[Complex]) -> bool {
    a.iter().zip(b).all(|(x, y)| (*x - *y).abs() < 1e-4)
}

#[test]
fn every_object_round_trips() {
    let (ctx, sk) = setup();
    let params = parameters_from_bytes(&parameters_to_bytes(&ctx.params)).unwrap();
    assert_eq!(params, ctx.params);

    let v = sample_values();
    let pt = Plaintext::encode(ctx, &v, None, None).unwrap();
    let pt2 = Plaintext::from_bytes(ctx, &pt.to_bytes()).unwrap();
    assert!(close(&pt2.decode(), &v));

    let pk = sk.public_key();
    let pk2 = PublicKey::from_bytes(ctx, &pk.to_bytes()).unwrap();
    let ct = pk2.encrypt(&pt).unwrap();
    assert!(!ct.is_seeded());
    let back = Ciphertext::from_bytes(ctx, &ct.to_bytes()).unwrap();
    assert!(close(&sk.decrypt(&back).unwrap().decode(), &v));

    // A seeded ciphertext is about half the size and still decrypts after the round trip.
    let seeded = sk.encrypt_symmetric(&pt).unwrap();
    let bytes = seeded.to_bytes();
    assert!(bytes.len() * 10 < ct.to_bytes().len() * 6, "{} vs {}", bytes.len(), ct.to_bytes().len());
    assert!(close(&sk.decrypt(&Ciphertext::from_bytes(ctx, &bytes).unwrap()).unwrap().decode(), &v));

    let rlk = RelinKey::from_bytes(ctx, &sk.relin_key().to_bytes()).unwrap();
    let bundle = EvaluationKeys::new(ctx, None, Some(Arc::new(rlk.clone())), None).unwrap();
    let bundle = EvaluationKeys::from_bytes(ctx, &bundle.to_bytes()).unwrap();
    assert!(bundle.public.is_none() && bundle.relin.is_some() && bundle.galois.is_none());
    let gk = GaloisKeys::from_bytes(ctx, &sk.galois_keys(&[1, -2], true).unwrap().to_bytes()).unwrap();
    let sq = ev::rescale(&ev::relinearize(&ev::multiply(&back, &back).unwrap(), &rlk).unwrap()).unwrap();
    let expected: Vec<_> = v.iter().map(|z| *z * *z).collect();
    assert!(close(&sk.decrypt(&sq).unwrap().decode(), &expected));
    let rot = ev::rotate(&back, -2, &gk).unwrap();
    let expected: Vec<_> = (0..32).map(|i| v[(i + 30) % 32]).collect();
    assert!(close(&sk.decrypt(&rot).unwrap().decode(), &expected));
    // A size-3 ciphertext round-trips too.
    let m = ev::multiply(&back, &back).unwrap();
    assert_eq!(Ciphertext::from_bytes(ctx, &m.to_bytes()).unwrap().size(), 3);
}

#[test]
fn objects_of_another_parameter_set_are_refused() {
    let (ctx, sk) = setup();
    let mut spec = ParameterSpec::new(6, 1, 30);
    spec.first_bits = 40;
    spec.special_bits = 40;
    spec.insecure = true;
    let other = Context::new(&spec).unwrap();
    let ct = sk.encrypt_symmetric(&Plaintext::encode(ctx, &sample_values(), None, None).unwrap()).unwrap();
    match Ciphertext::from_bytes(&other, &ct.to_bytes()) {
        Err(Error::Malformed(msg)) => assert!(msg.contains("different parameter set"), "{msg}"),
        other => panic!("expected refusal, got {other:?}"),
    }
    assert!(matches!(PublicKey::from_bytes(ctx, &ct.to_bytes()), Err(Error::Malformed(_))));
}

#[test]
fn insecure_parameters_are_refused_when_decoded_as_secure() {
    let (ctx, _) = setup();
    let mut bytes = parameters_to_bytes(&ctx.params);
    // Flip the insecure flag off: N = 2^6 has no 128-bit bound, so decoding must refuse.
    let flag_at = 8 + 2 + 5;
    assert_eq!(bytes[flag_at], 1);
    bytes[flag_at] = 0;
    assert!(matches!(parameters_from_bytes(&bytes), Err(Error::Insecure(_))));
}

#[test]
fn a_parameter_set_naming_too_many_primes_is_refused_before_anything_is_built() {
    let (ctx, _) = setup();
    let mut bytes = parameters_to_bytes(&ctx.params);
    // A 4 KB blob at N = 2^17 with 255 + 255 primes, flagged insecure (test-only): building its
    // context would take minutes and gigabytes.
    let (log_n_at, counts_at) = (8, 8 + 2 + 5 + 1);
    bytes[log_n_at] = 17;
    bytes.truncate(counts_at);
    bytes.extend([255, 255]);
    for i in 0..510u64 {
        bytes.extend((((i + 1) << 18) + 1).to_le_bytes());
    }
    let err = parameters_from_bytes(&bytes).unwrap_err();
    assert!(matches!(&err, Error::InvalidParameters(m) if m.contains("510 primes")), "{err}");
}

fn all_encodings() -> Vec<(&'static str, Vec<u8>)> {
    let (ctx, sk) = setup();
    let pt = Plaintext::encode(ctx, &sample_values(), None, None).unwrap();
    vec![
        ("params", parameters_to_bytes(&ctx.params)),
        ("ct", sk.public_key().encrypt(&pt).unwrap().to_bytes()),
        ("seeded", sk.encrypt_symmetric(&pt).unwrap().to_bytes()),
        ("pt", pt.to_bytes()),
        ("pk", sk.public_key().to_bytes()),
        ("rlk", sk.relin_key().to_bytes()),
        ("gk", sk.galois_keys(&[1], false).unwrap().to_bytes()),
        (
            "bundle",
            EvaluationKeys::new(
                ctx,
                Some(Arc::new(sk.public_key())),
                None,
                Some(Arc::new(sk.galois_keys(&[2], false).unwrap())),
            )
            .unwrap()
            .to_bytes(),
        ),
    ]
}

fn decode_any(name: &str, bytes: &[u8]) -> Result<(), Error> {
    let (ctx, _) = setup();
    match name {
        "params" => parameters_from_bytes(bytes).map(|_| ()),
        "ct" | "seeded" => Ciphertext::from_bytes(ctx, bytes).map(|_| ()),
        "pt" => Plaintext::from_bytes(ctx, bytes).map(|_| ()),
        "pk" => PublicKey::from_bytes(ctx, bytes).map(|_| ()),
        "rlk" => RelinKey::from_bytes(ctx, bytes).map(|_| ()),
        "bundle" => EvaluationKeys::from_bytes(ctx, bytes).map(|_| ()),
        _ => GaloisKeys::from_bytes(ctx, bytes).map(|_| ()),
    }
}

#[test]
fn every_truncation_and_extension_is_an_error() {
    for (name, bytes) in all_encodings() {
        decode_any(name, &bytes).unwrap();
        for len in 0..bytes.len() {
            assert!(decode_any(name, &bytes[..len]).is_err(), "{name} truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_any(name, &longer).is_err(), "{name} with a trailing byte");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn corrupted_bytes_never_panic(which in 0usize..8, pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let encodings = all_encodings();
        let (name, mut bytes) = encodings[which].clone();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let _ = decode_any(name, &bytes);
    }

    #[test]
    fn random_bytes_are_rejected(bytes in prop::collection::vec(any::<u8>(), 0..512), which in 0usize..8) {
        let name = all_encodings()[which].0;
        prop_assert!(decode_any(name, &bytes).is_err());
    }
}
