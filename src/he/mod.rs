//! Encrypted linear algebra and polynomials over CKKS, written once against [`Backend`] so the
//! same routine runs encrypted, in the f64 mirror, or as a cost tracer.

pub mod attention;
pub mod backend;
pub mod cost;
pub mod encrypted;
pub mod layout;
pub mod mirror;
pub mod packed;
pub mod polynomial;
pub mod refresh;

pub use backend::Backend;
pub use cost::Cost;
pub use encrypted::Encrypted;
pub use mirror::{Mirror, MirrorValue};
