//! Any byte string given to the evaluation-key bundle decoder returns Ok or Err, never panics,
//! and a value it accepts re-encodes to exactly the same bytes (the format is canonical).
#![no_main]

mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = blindfed::ckks::EvaluationKeys::from_bytes(common::context(), data) {
        assert_eq!(value.to_bytes(), data);
    }
});
