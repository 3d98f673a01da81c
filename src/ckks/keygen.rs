//! Key generation: the secret key and every public key derived from it.

use std::collections::BTreeMap;

use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::math::automorphism::{conjugation_element, rotation_element};
use crate::math::poly::RnsPoly;
use crate::math::sampling::{self, fresh_seed, os_rng, SeedStream};
use crate::parallel;

use super::context::Context;
use super::keys::{GaloisKeys, KeyPoly, KeySwitchKey, PublicKey, RelinKey, SecretKey};
use super::params::SecretDistribution;

/// Domain tag of the public key's uniform polynomial in its seed stream.
const PUBLIC_KEY_TAG: u64 = u64::MAX;

/// A fresh error polynomial on the given key-modulus rows, NTT form.
pub(crate) fn error_poly_on(ctx: &Context, rows: &[usize]) -> RnsPoly {
    small_poly_on(ctx, rows, sampling::error(&mut os_rng(), ctx.degree()))
}

/// Small signed coefficients reduced onto the given key-modulus rows and transformed to NTT
/// form; the coefficients are zeroised afterwards.
pub(crate) fn small_poly_on(ctx: &Context, rows: &[usize], mut coeffs: Vec<i64>) -> RnsPoly {
    let moduli: Vec<_> = rows.iter().map(|&r| ctx.key_moduli[r]).collect();
    let mut p = RnsPoly::from_signed(&coeffs, &moduli);
    coeffs.zeroize();
    p.ntt(&rows.iter().map(|&r| &ctx.ntt[r]).collect::<Vec<_>>());
    p
}

/// An error polynomial over the first `rows` key moduli, NTT form.
pub(crate) fn error_poly(ctx: &Context, rows: usize) -> RnsPoly {
    error_poly_on(ctx, &(0..rows).collect::<Vec<_>>())
}

impl SecretKey {
    /// Samples a fresh secret key from the operating system's entropy.
    pub fn generate(ctx: &Context) -> SecretKey {
        Self::sample(ctx, os_rng())
    }

    /// The secret key that a 32-byte seed expands to (ChaCha20). The seed is as secret as the
    /// key: it lets an owner whose processes come and go keep one key on its own disk without
    /// serialising the key itself. Draw it from a CSPRNG.
    pub fn from_seed(ctx: &Context, seed: [u8; 32]) -> SecretKey {
        Self::sample(ctx, ChaCha20Rng::from_seed(seed))
    }

    fn sample(ctx: &Context, mut rng: ChaCha20Rng) -> SecretKey {
        parallel::install(|| {
            let n = ctx.degree();
            let mut coeffs = match ctx.params.secret {
                SecretDistribution::Ternary => sampling::ternary(&mut rng, n),
                SecretDistribution::HammingWeight(h) => sampling::ternary_hamming(&mut rng, n, h),
            };
            let mut poly = RnsPoly::from_signed(&coeffs, &ctx.key_moduli);
            coeffs.zeroize();
            poly.ntt(&ctx.ntt.iter().collect::<Vec<_>>());
            let mut poly_shoup = poly.slice_limbs(0, ctx.max_level() + 1);
            poly_shoup.for_each_row(|i, row| {
                let m = ctx.key_moduli[i];
                row.iter_mut().for_each(|x| *x = m.shoup(*x));
            });
            SecretKey { ctx: ctx.clone(), poly, poly_shoup }
        })
    }

    /// The public encryption key over every key modulus (Q_L P), so that encryption can divide
    /// its noise by P; its uniform half is expanded from a seed.
    pub fn public_key(&self) -> PublicKey {
        parallel::install(|| {
            let ctx = &self.ctx;
            let seed = fresh_seed();
            let a = expand_public_key_a(ctx, &seed);
            let mut b = error_poly(ctx, ctx.key_moduli.len());
            let mut a_s = a.clone();
            a_s.mul_assign(&self.poly, &ctx.key_moduli);
            b.sub_assign(&a_s, &ctx.key_moduli);
            PublicKey { ctx: ctx.clone(), b, a, seed: Some(seed) }
        })
    }

    /// The relinearisation key (switches s^2 to s).
    pub fn relin_key(&self) -> RelinKey {
        parallel::install(|| {
            let mut s2 = self.poly.clone();
            s2.mul_assign(&self.poly, &self.ctx.key_moduli);
            let key = self.switch_key_from(&s2);
            s2.zeroize();
            RelinKey(key)
        })
    }

    /// Galois keys for the given left-rotation steps (negative: right) and, optionally,
    /// complex conjugation.
    pub fn galois_keys(&self, steps: &[i64], conjugate: bool) -> Result<GaloisKeys> {
        let n = self.ctx.degree();
        let slots = (n / 2) as i64;
        let mut elements: Vec<u64> = Vec::new();
        for &step in steps {
            if step.rem_euclid(slots) == 0 {
                return Err(Error::OutOfRange(format!(
                    "rotation step {step} is a multiple of the slot count; it needs no key"
                )));
            }
            elements.push(rotation_element(n, step));
        }
        if conjugate {
            elements.push(conjugation_element(n));
        }
        Ok(self.galois_keys_for_elements(&elements))
    }

    /// Galois keys for explicit Galois elements (odd, below 2N).
    pub fn galois_keys_for_elements(&self, elements: &[u64]) -> GaloisKeys {
        parallel::install(|| {
            let mut keys = BTreeMap::new();
            for &g in elements {
                if keys.contains_key(&g) {
                    continue;
                }
                let perm = self.ctx.galois_permutation(g);
                let mut rotated = self.poly.permute_ntt(&perm);
                keys.insert(g, self.switch_key_from(&rotated));
                rotated.zeroize();
            }
            GaloisKeys { ctx: self.ctx.clone(), keys }
        })
    }

    /// A key-switching key from `from` (NTT form over all key moduli) to this secret.
    fn switch_key_from(&self, from: &RnsPoly) -> KeySwitchKey {
        let ctx = &self.ctx;
        let seed = fresh_seed();
        let rows = ctx.key_moduli.len();
        let mut bs = Vec::with_capacity(ctx.digits.len());
        let mut as_ = Vec::with_capacity(ctx.digits.len());
        for (d, digit) in ctx.digits.iter().enumerate() {
            let a =
                sampling::uniform_poly(&mut SeedStream::new(&seed, d as u64), &ctx.key_moduli, ctx.degree());
            let mut b = error_poly(ctx, rows);
            let mut a_s = a.clone();
            a_s.mul_assign(&self.poly, &ctx.key_moduli);
            b.sub_assign(&a_s, &ctx.key_moduli);
            for j in digit.clone() {
                let m = ctx.key_moduli[j];
                let (w, ws) = (ctx.p_mod_q[j], m.shoup(ctx.p_mod_q[j]));
                for (x, &y) in b.limb_mut(j).iter_mut().zip(from.limb(j)) {
                    *x = m.add(*x, m.mul_shoup(y, w, ws));
                }
            }
            bs.push(KeyPoly::new(&b, &ctx.key_moduli));
            as_.push(KeyPoly::new(&a, &ctx.key_moduli));
        }
        KeySwitchKey { ctx: ctx.clone(), b: bs, a: as_, seed: Some(seed) }
    }
}

/// Regenerates the uniform halves of a seeded key-switching key.
pub(crate) fn expand_switch_key_a(ctx: &Context, seed: &[u8; 32]) -> Vec<RnsPoly> {
    (0..ctx.digits.len())
        .map(|d| sampling::uniform_poly(&mut SeedStream::new(seed, d as u64), &ctx.key_moduli, ctx.degree()))
        .collect()
}

/// Regenerates the uniform half of a seeded public key.
pub(crate) fn expand_public_key_a(ctx: &Context, seed: &[u8; 32]) -> RnsPoly {
    sampling::uniform_poly(&mut SeedStream::new(seed, PUBLIC_KEY_TAG), &ctx.key_moduli, ctx.degree())
}
