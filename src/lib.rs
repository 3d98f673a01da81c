//! blindfed's core: an RNS-CKKS engine and the layers built on it.
//!
//! Layers, lowest first; each uses only the ones before it:
//! - [`codec`]: the byte codec every wire format shares.
//! - [`math`]: moduli, primes, NTT, RNS polynomials, basis conversion, samplers.
//! - [`ckks`]: parameters, encoding, keys, encryption, evaluation, serialisation.
//! - [`he`]: packed activations, encrypted linear algebra, polynomials, masked refresh.
//! - [`nn`]: approximations, the FHE-friendly block, the distillation loss.
//! - [`protocol`]: refreshes over bytes and the sanitisation of what the provider returns.
//! - `py`: the PyO3 bindings (feature `python`), conversion only.

pub mod ckks;
pub mod codec;
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

/// mimalloc's `mi_option_purge_delay` (the same value in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Stops mimalloc from returning freed memory to the kernel, unless `MIMALLOC_PURGE_DELAY`
/// says otherwise. By default it purges freed pages after 10 ms, and an encrypted block frees
/// and reallocates hundreds of megabytes every few milliseconds: re-faulting and zeroing them
/// cost a sixth of a block's time (`blindfed bench block`, small shape: 61 s per group with
/// purging, 51 s without, the same peak memory). The price: a process keeps its peak
/// allocation mapped (reused, not leaked) until it exits.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; mimalloc allows it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
