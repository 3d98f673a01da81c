//! Any byte string given to the masked-refresh decoders (request and reply) returns Ok or Err,
//! never panics, and a message they accept re-encodes to exactly the same bytes.
#![no_main]

mod common;
use blindfed::protocol::refresh_wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((level, cts)) = refresh_wire::decode_request(common::context(), data) {
        assert_eq!(refresh_wire::encode_request(level, &cts), data);
    }
    if let Ok((level, cts)) = refresh_wire::decode_reply(common::context(), data) {
        assert_eq!(refresh_wire::encode_reply(level, &cts), data);
    }
});
