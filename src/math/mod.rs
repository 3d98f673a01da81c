//! Arithmetic below any scheme: moduli, primes, NTT, RNS polynomials, basis conversion,
//! automorphisms and samplers.

/// Defines `fn $name(args)` whose body runs compiled for AVX-512F or AVX2 when the CPU has
/// them (where the compiler vectorises its plain loops) and portably otherwise: the run-time
/// dispatch of the deferred-reduction kernels, written once.
macro_rules! vectorised {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use vectorised;

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
