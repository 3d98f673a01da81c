//! Any byte string given to the parameters decoder returns Ok or Err, never panics,
//! and a value it accepts re-encodes to exactly the same bytes (the format is canonical).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = blindfed::ckks::serial::parameters_from_bytes(data) {
        assert_eq!(blindfed::ckks::serial::parameters_to_bytes(&value), data);
    }
});
