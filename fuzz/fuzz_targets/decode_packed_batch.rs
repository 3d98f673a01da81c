//! Any byte string given to the packed-batch decoder returns Ok or Err, never panics, and a
//! batch it accepts re-encodes to exactly the same bytes.
#![no_main]

mod common;
use blindfed::he::packed::PackedBatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = PackedBatch::from_bytes(common::context(), data) {
        assert_eq!(batch.to_bytes(), data);
    }
});
