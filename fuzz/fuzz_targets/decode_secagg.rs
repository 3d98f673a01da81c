//! Any byte string given to a secure-aggregation decoder returns Ok or Err, never panics, and
//! a message it accepts re-encodes to exactly the same bytes. The first byte picks the decoder.
#![no_main]

use blindfed::protocol::secagg::wire;
use libfuzzer_sys::fuzz_target;

const TAG: [u8; 16] = [7; 16];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else { return };
    let again = match pick % 8 {
        0 => wire::decode_params(bytes).map(|s| wire::encode_params(&s)),
        1 => wire::decode_advert(&TAG, bytes).map(|a| wire::encode_advert(&TAG, &a)),
        2 => wire::decode_roster(&TAG, bytes).map(|r| wire::encode_roster(&TAG, &r)),
        3 => wire::decode_bundle(&TAG, bytes).map(|e| wire::encode_bundle(&TAG, &e)),
        4 => wire::decode_inbox(&TAG, bytes).map(|e| wire::encode_inbox(&TAG, &e)),
        5 => wire::decode_masked(&TAG, 48, 4, bytes).map(|m| wire::encode_masked(&TAG, 48, &m)),
        6 => wire::decode_unmask_request(&TAG, bytes).map(|q| wire::encode_unmask_request(&TAG, &q)),
        _ => wire::decode_unmask_answer(&TAG, bytes).map(|a| wire::encode_unmask_answer(&TAG, &a)),
    };
    if let Ok(again) = again {
        assert_eq!(again, bytes);
    }
});
