//! What the integration tests share: a tiny insecure parameter set and its owner.

use std::sync::OnceLock;

use blindfed::ckks::{Context, ParameterSpec, SecretKey};

/// N = 2^6, two 30-bit levels above a 40-bit first prime (insecure: for tests only) and a
/// secret key under it, made once per test binary.
pub fn small_owner() -> &'static (Context, SecretKey) {
    static S: OnceLock<(Context, SecretKey)> = OnceLock::new();
    S.get_or_init(|| {
        let mut spec = ParameterSpec::new(6, 2, 30);
        spec.first_bits = 40;
        spec.special_bits = 40;
        spec.insecure = true;
        let ctx = Context::new(&spec).unwrap();
        let sk = SecretKey::generate(&ctx);
        (ctx, sk)
    })
}
