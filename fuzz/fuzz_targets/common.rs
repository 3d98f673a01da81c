//! A tiny fixed parameter set shared by the decoder targets, so inputs can reach deep into a
//! decoder (the fingerprint check comes first; seeds in `corpus/` carry the right one).

use std::sync::OnceLock;

use blindfed::ckks::{Context, ParameterSpec};

pub fn context() -> &'static Context {
    static CTX: OnceLock<Context> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut spec = ParameterSpec::new(4, 2, 30);
        spec.first_bits = 40;
        spec.special_bits = 40;
        spec.insecure = true;
        Context::new(&spec).expect("fuzz parameters are valid")
    })
}
