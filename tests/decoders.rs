//! Every decoder of bytes from the network beside the CKKS objects (those are in
//! `serialization.rs`): the secure-aggregation messages, the masked-refresh messages and packed
//! batches. Mutated bytes (flipped, cut, extended, spliced) decode to an error, never a panic,
//! and whatever a decoder accepts re-encodes to exactly the bytes it came from: the formats are
//! canonical. The cases here are a short run for CI; `PROPTEST_CASES=100000 cargo test --release
//! --test decoders` is the long one (the `fuzz/` targets cover the same decoders with libFuzzer).

use std::sync::OnceLock;

use blindfed::ckks::{Ciphertext, Context, Plaintext, SecretKey};
use blindfed::he::packed::PackedBatch;
use blindfed::protocol::refresh_wire;
use blindfed::protocol::secagg::{wire, ParamSpec};
use proptest::prelude::*;

const TAG: [u8; 16] = [7; 16];

mod common;

fn owner() -> &'static (Context, SecretKey) {
    common::small_owner()
}

fn ciphertexts(count: usize) -> Vec<Ciphertext> {
    let (ctx, sk) = owner();
    (0..count)
        .map(|i| {
            let values = vec![blindfed::ckks::Complex::new(i as f64, 0.5); ctx.params.slots()];
            sk.encrypt_symmetric(&Plaintext::encode(ctx, &values, Some(1), None).unwrap()).unwrap()
        })
        .collect()
}

/// A decoder under test: `Ok(re-encoding)` for what it accepts.
type Decode = fn(&[u8]) -> Result<Vec<u8>, blindfed::Error>;

type Entry = (&'static str, Vec<u8>, Decode);

fn entry(name: &'static str, bytes: Vec<u8>, decode: Decode) -> Entry {
    (name, bytes, decode)
}

/// One valid encoding per decoder, with the decoder (re-encoding what it accepts).
fn decoders() -> &'static [Entry] {
    static D: OnceLock<Vec<Entry>> = OnceLock::new();
    D.get_or_init(|| {
        let advert = |sender| wire::Advert { sender, c_pk: [1; 32], s_pk: [2; 32] };
        let envelopes = wire::Envelopes { owner: 3, ciphertexts: vec![(1, [4; 80]), (5, [6; 80])] };
        let spec = ParamSpec {
            neighbours: Some(2),
            context: b"round".to_vec(),
            ..ParamSpec::new(vec![1, 3, 5], 2, 4, 10.0)
        };
        let masked = wire::Masked { sender: 3, values: vec![1, 2, 3, 1 << 40] };
        let request = wire::UnmaskRequest { survivors: vec![1, 3], dropped: vec![5] };
        let answer =
            wire::UnmaskAnswer { sender: 1, self_mask: vec![(3, [8; 32])], mask_key: vec![(5, [9; 32])] };
        let cts = ciphertexts(3);
        let values: Vec<f64> = (0..24).map(|v| v as f64 / 24.0).collect();
        let batch = PackedBatch::encrypt(&owner().1, 3, 4, &values, 2, true).unwrap();
        vec![
            entry("secagg params", wire::encode_params(&spec), |b| {
                wire::decode_params(b).map(|s| wire::encode_params(&s))
            }),
            entry("secagg advert", wire::encode_advert(&TAG, &advert(3)), |b| {
                wire::decode_advert(&TAG, b).map(|a| wire::encode_advert(&TAG, &a))
            }),
            entry("secagg roster", wire::encode_roster(&TAG, &[advert(1), advert(3)]), |b| {
                wire::decode_roster(&TAG, b).map(|r| wire::encode_roster(&TAG, &r))
            }),
            entry("secagg bundle", wire::encode_bundle(&TAG, &envelopes), |b| {
                wire::decode_bundle(&TAG, b).map(|e| wire::encode_bundle(&TAG, &e))
            }),
            entry("secagg inbox", wire::encode_inbox(&TAG, &envelopes), |b| {
                wire::decode_inbox(&TAG, b).map(|e| wire::encode_inbox(&TAG, &e))
            }),
            entry("secagg masked", wire::encode_masked(&TAG, 48, &masked), |b| {
                wire::decode_masked(&TAG, 48, 4, b).map(|m| wire::encode_masked(&TAG, 48, &m))
            }),
            entry("secagg unmask request", wire::encode_unmask_request(&TAG, &request), |b| {
                wire::decode_unmask_request(&TAG, b).map(|q| wire::encode_unmask_request(&TAG, &q))
            }),
            entry("secagg unmask answer", wire::encode_unmask_answer(&TAG, &answer), |b| {
                wire::decode_unmask_answer(&TAG, b).map(|a| wire::encode_unmask_answer(&TAG, &a))
            }),
            entry("refresh request", refresh_wire::encode_request(1, &cts), |b| {
                refresh_wire::decode_request(&owner().0, b).map(|(l, c)| refresh_wire::encode_request(l, &c))
            }),
            entry("refresh reply", refresh_wire::encode_reply(1, &cts[..2]), |b| {
                refresh_wire::decode_reply(&owner().0, b).map(|(l, c)| refresh_wire::encode_reply(l, &c))
            }),
            entry("packed batch", batch.to_bytes(), |b| {
                PackedBatch::from_bytes(&owner().0, b).map(|p| p.to_bytes())
            }),
        ]
    })
}

#[test]
fn every_valid_message_round_trips_and_every_cut_or_extension_is_refused() {
    for (name, bytes, decode) in decoders() {
        assert_eq!(&decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}")), bytes, "{name}");
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{name} cut to {len} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "{name} with a trailing byte");
    }
}

/// What a decoder does with `bytes`: an error, or a value that re-encodes to them.
fn check(name: &str, decode: Decode, bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(again) = decode(bytes) {
        prop_assert_eq!(again.as_slice(), bytes, "{} accepted bytes it does not re-encode", name);
    }
    Ok(())
}

proptest! {
    // 256 cases each by default; PROPTEST_CASES sets more.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn flipped_bytes_never_panic(which in any::<prop::sample::Index>(), flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..), 1..4)) {
        let (name, bytes, decode) = which.get(decoders());
        let mut bad = bytes.clone();
        for (at, x) in flips {
            let i = at.index(bad.len());
            bad[i] ^= x;
        }
        check(name, *decode, &bad)?;
    }

    #[test]
    fn spliced_bytes_never_panic(which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), cut in 0usize..64, insert in prop::collection::vec(any::<u8>(), 0..64)) {
        let (name, bytes, decode) = which.get(decoders());
        let i = at.index(bytes.len() + 1);
        let end = (i + cut).min(bytes.len());
        let bad: Vec<u8> = bytes[..i].iter().chain(&insert).chain(&bytes[end..]).copied().collect();
        check(name, *decode, &bad)?;
    }

    #[test]
    fn random_bytes_never_panic(which in any::<prop::sample::Index>(), tail in prop::collection::vec(any::<u8>(), 0..256)) {
        // A valid header (the first 6 bytes: magic, version, kind) followed by noise reaches
        // past the first checks.
        let (name, bytes, decode) = which.get(decoders());
        let bad: Vec<u8> = bytes[..6.min(bytes.len())].iter().chain(&tail).copied().collect();
        check(name, *decode, &bad)?;
    }
}
