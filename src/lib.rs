//! blindfed's core: an RNS-CKKS engine and the layers built on it.
//!
//! Layers, lowest first; each uses only the ones before it:
//! - [`math`]: moduli, primes, NTT, RNS polynomials, basis conversion, samplers.
//! - [`ckks`]: parameters, encoding, keys, encryption, evaluation, serialisation.
//! - [`he`]: packed activations, encrypted linear algebra, polynomials, masked refresh.
//! - [`nn`]: approximations, the FHE-friendly block, the distillation loss.
//! - [`protocol`]: refreshes over bytes and the sanitisation of what the provider returns.
//! - `py`: the PyO3 bindings (feature `python`), conversion only.

pub mod ckks;
pub mod error;
pub mod he;
pub mod math;
pub mod nn;
pub mod parallel;
pub mod protocol;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};

/// Ciphertext operations allocate and free multi-megabyte buffers at a high rate; the system
/// allocator returns them to the kernel and pays page faults on every operation, mimalloc
/// keeps them (polars makes the same choice for its extension module).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
