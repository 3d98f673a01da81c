//! Arithmetic below any scheme: moduli, primes, NTT, RNS polynomials, basis conversion,
//! automorphisms and samplers.

pub mod automorphism;
pub mod crt;
pub mod dual;
pub mod lincomb;
pub mod modulus;
pub mod ntt;
mod ntt_avx512;
pub mod poly;
pub mod primes;
pub mod rns;
pub mod sampling;
pub mod tensor;
