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
    let params = serial::parameters_to_bytes(&ctx.params);
    write("decode_parameters", "params", &params);
    // The same set with a fixed-weight (h = 8) secret: secret u8 at offset 10, weight u32 at 11.
    let mut sparse = params.clone();
    sparse[10] = 1;
    sparse[11..15].copy_from_slice(&8u32.to_le_bytes());
    assert_eq!(serial::parameters_to_bytes(&serial::parameters_from_bytes(&sparse).expect("sparse")), sparse);
    write("decode_parameters", "params_sparse", &sparse);

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

    // Unseeded forms (no public API makes them): clear the seeded flag and replace each
    // 32-byte seed with an explicit uniform half, here a copy of the b polynomials (residues
    // already below their moduli, so the result is a valid encoding).
    let pk_unseeded = unseed_public_key(&pk_bytes);
    assert_eq!(blindfed::ckks::PublicKey::from_bytes(ctx, &pk_unseeded).expect("unseeded pk").to_bytes(), pk_unseeded);
    write("decode_public_key", "unseeded", &pk_unseeded);
    let rlk_unseeded = unseed_switch_keys(&rlk_bytes, 40, 1, 0);
    assert_eq!(blindfed::ckks::RelinKey::from_bytes(ctx, &rlk_unseeded).expect("unseeded rlk").to_bytes(), rlk_unseeded);
    write("decode_relin_key", "unseeded", &rlk_unseeded);
    let count = u32::from_le_bytes(gk_bytes[40..44].try_into().unwrap()) as usize;
    let gk_unseeded = unseed_switch_keys(&gk_bytes, 44, count, 8);
    assert_eq!(blindfed::ckks::GaloisKeys::from_bytes(ctx, &gk_unseeded).expect("unseeded gk").to_bytes(), gk_unseeded);
    write("decode_galois_keys", "unseeded", &gk_unseeded);
    let mut gk_empty = gk_bytes[..40].to_vec();
    gk_empty[7] = 0;
    gk_empty.extend_from_slice(&0u32.to_le_bytes());
    assert!(blindfed::ckks::GaloisKeys::from_bytes(ctx, &gk_empty).is_ok());
    write("decode_galois_keys", "empty", &gk_empty);
    // A bundle holding the unseeded objects (sections are length-prefixed nested objects).
    let ek_empty = EvaluationKeys::new(ctx, None, None, None).expect("bundle").to_bytes();
    let mut ek_unseeded = ek_empty[..40].to_vec();
    for section in [&pk_unseeded, &rlk_unseeded, &gk_empty] {
        ek_unseeded.extend_from_slice(&(section.len() as u64).to_le_bytes());
        ek_unseeded.extend_from_slice(section);
    }
    assert_eq!(EvaluationKeys::from_bytes(ctx, &ek_unseeded).expect("unseeded bundle").to_bytes(), ek_unseeded);
    write("decode_evaluation_keys", "unseeded", &ek_unseeded);

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

/// Public key: header (8) + fingerprint (32) + b + seed (32) -> flags 0, header + fingerprint + b + b.
fn unseed_public_key(bytes: &[u8]) -> Vec<u8> {
    assert_eq!(bytes[7], 1, "expected a seeded public key");
    let b = &bytes[40..bytes.len() - 32];
    let mut out = bytes[..40].to_vec();
    out[7] = 0;
    out.extend_from_slice(b);
    out.extend_from_slice(b);
    out
}

/// `count` switch keys starting at `start`, each preceded by `prefix` bytes (the Galois element)
/// and laid out as digits u8, b_0..b_{d-1}, seed (32). Every key has the same size.
fn unseed_switch_keys(bytes: &[u8], start: usize, count: usize, prefix: usize) -> Vec<u8> {
    assert_eq!(bytes[7], 1, "expected seeded switch keys");
    let per_key = (bytes.len() - start) / count;
    assert_eq!(start + per_key * count, bytes.len());
    let mut out = bytes[..start].to_vec();
    out[7] = 0;
    for k in 0..count {
        let key = &bytes[start + k * per_key..start + (k + 1) * per_key];
        let b = &key[prefix + 1..per_key - 32];
        out.extend_from_slice(&key[..prefix + 1]);
        out.extend_from_slice(b);
        out.extend_from_slice(b);
    }
    out
}
