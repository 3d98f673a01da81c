//! Writes VALID encodings of every object kind into `corpus/<target>/`, so the decoder
//! targets start past the header and fingerprint checks. Run from the fuzz directory:
//! `cargo run --bin make_seeds` (no fuzzing flags needed).

#[path = "../fuzz_targets/common.rs"]
mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use blindfed::ckks::{evaluator, serial, Complex, EvaluationKeys, Plaintext, SecretKey};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).expect("create corpus dir");
    fs::write(dir.join(name), bytes).expect("write seed");
    println!("{target}/{name}: {} bytes", bytes.len());
}

fn main() {
    let ctx = common::context();
    let sk = SecretKey::generate(ctx);

    // Parameters.
    write("decode_parameters", "params", &serial::parameters_to_bytes(&ctx.params));

    // Plaintexts: a few value sets, levels and slot counts.
    let values: Vec<Complex> = (0..8).map(|i| Complex::new(i as f64 * 0.25 - 1.0, 0.5)).collect();
    let pt = Plaintext::encode(ctx, &values, None, None).expect("encode");
    let pt_small = Plaintext::encode(ctx, &values[..2], None, None).expect("encode 2");
    let pt_low = Plaintext::encode(ctx, &values[..4], Some(0), None).expect("encode level 0");
    let pt_one = Plaintext::encode(ctx, &[Complex::new(3.0, -2.0)], Some(1), Some(1024.0)).expect("encode 1");
    for (name, p) in [("full", &pt), ("two", &pt_small), ("level0", &pt_low), ("one", &pt_one)] {
        let bytes = p.to_bytes();
        assert!(Plaintext::from_bytes(ctx, &bytes).is_ok());
        write("decode_plaintext", name, &bytes);
    }

    // Ciphertexts: public-key, symmetric (seeded), size 3, lower level.
    let pk = sk.public_key();
    let ct_pk = pk.encrypt(&pt).expect("encrypt pk");
    let ct_sym = sk.encrypt_symmetric(&pt).expect("encrypt sym");
    let ct_sym_low = sk.encrypt_symmetric(&pt_low).expect("encrypt sym low");
    let ct_pk_low = pk.encrypt(&pt_low).expect("encrypt pk low");
    let ct3 = evaluator::multiply(&ct_pk, &ct_sym).expect("multiply");
    for (name, c) in [
        ("pk", &ct_pk),
        ("sym_seeded", &ct_sym),
        ("sym_seeded_level0", &ct_sym_low),
        ("pk_level0", &ct_pk_low),
        ("size3", &ct3),
    ] {
        let bytes = c.to_bytes();
        assert!(blindfed::ckks::Ciphertext::from_bytes(ctx, &bytes).is_ok());
        write("decode_ciphertext", name, &bytes);
    }

    // Keys.
    let pk_bytes = pk.to_bytes();
    assert!(blindfed::ckks::PublicKey::from_bytes(ctx, &pk_bytes).is_ok());
    write("decode_public_key", "seeded", &pk_bytes);

    let rlk = sk.relin_key();
    let rlk_bytes = rlk.to_bytes();
    assert!(blindfed::ckks::RelinKey::from_bytes(ctx, &rlk_bytes).is_ok());
    write("decode_relin_key", "seeded", &rlk_bytes);

    let gk = sk.galois_keys(&[1, -1], true).expect("galois keys");
    let gk_bytes = gk.to_bytes();
    assert!(blindfed::ckks::GaloisKeys::from_bytes(ctx, &gk_bytes).is_ok());
    write("decode_galois_keys", "rot_pm1_conj", &gk_bytes);
    let gk1 = sk.galois_keys(&[2], false).expect("galois keys 2");
    write("decode_galois_keys", "rot2", &gk1.to_bytes());

    let pk = Arc::new(pk);
    let rlk = Arc::new(rlk);
    let gk = Arc::new(gk);
    let bundles = [
        ("pk_rlk", EvaluationKeys::new(ctx, Some(pk.clone()), Some(rlk.clone()), None)),
        ("all", EvaluationKeys::new(ctx, Some(pk.clone()), Some(rlk.clone()), Some(gk.clone()))),
        ("galois_only", EvaluationKeys::new(ctx, None, None, Some(gk.clone()))),
        ("empty", EvaluationKeys::new(ctx, None, None, None)),
    ];
    for (name, b) in bundles {
        let bytes = b.expect("bundle").to_bytes();
        assert!(EvaluationKeys::from_bytes(ctx, &bytes).is_ok());
        write("decode_evaluation_keys", name, &bytes);
    }
}
