//! RNS-CKKS: approximate homomorphic encryption over the complex slots of Z[X]/(X^N + 1).

pub mod ciphertext;
pub mod complex;
pub mod context;
pub mod encoder;
pub mod encryptor;
pub mod evaluator;
pub mod keygen;
pub mod keys;
mod keyswitch;
pub mod params;
pub mod plaintext;
pub mod security;
pub mod serial;

pub use ciphertext::Ciphertext;
pub use complex::Complex;
pub use context::Context;
pub use keys::{EvaluationKeys, GaloisKeys, KeySwitchKey, PublicKey, RelinKey, SecretKey};
pub use params::{ParameterSpec, Parameters, SecretDistribution};
pub use plaintext::Plaintext;
