//! Encryption: with the public key (anyone) or the secret key (seeded, half-size ciphertexts).

use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::math::poly::RnsPoly;
use crate::math::sampling::{self, fresh_seed, os_rng, SeedStream};
use crate::parallel;

use super::ciphertext::Ciphertext;
use super::keygen::error_poly;
use super::keys::{PublicKey, SecretKey};
use super::plaintext::Plaintext;

/// Domain tag of a symmetric ciphertext's uniform polynomial in its seed stream.
const SYMMETRIC_TAG: u64 = 0;

/// The uniform polynomial of a seeded symmetric ciphertext at `level`.
pub(crate) fn expand_symmetric_a(ctx: &super::context::Context, seed: &[u8; 32], level: usize) -> RnsPoly {
    sampling::uniform_poly(&mut SeedStream::new(seed, SYMMETRIC_TAG), ctx.q_moduli(level), ctx.degree())
}

impl PublicKey {
    /// (b u + e_0 + m, a u + e_1) with a fresh ternary u and errors e_0, e_1.
    pub fn encrypt(&self, pt: &Plaintext) -> Result<Ciphertext> {
        if pt.ctx != self.ctx {
            return Err(Error::ParameterMismatch);
        }
        Ok(parallel::install(|| {
            let ctx = &self.ctx;
            let level = pt.level;
            let moduli = ctx.q_moduli(level);
            let mut coeffs = sampling::ternary(&mut os_rng(), ctx.degree());
            let mut u = RnsPoly::from_signed(&coeffs, moduli);
            coeffs.zeroize();
            u.ntt(&ctx.q_ntt(level));
            let mut c0 = error_poly(ctx, level + 1);
            let mut c1 = error_poly(ctx, level + 1);
            c0.add_product(&self.b, &u, moduli);
            c0.add_assign(&pt.poly, moduli);
            c1.add_product(&self.a, &u, moduli);
            u.zeroize();
            Ciphertext {
                ctx: ctx.clone(),
                polys: vec![c0, c1],
                level,
                scale: pt.scale,
                slots: pt.slots,
                seed: None,
            }
        }))
    }
}

impl SecretKey {
    /// (-a s + e + m, a) with a expanded from a fresh public seed, which the ciphertext keeps so
    /// that it serialises at about half size.
    pub fn encrypt_symmetric(&self, pt: &Plaintext) -> Result<Ciphertext> {
        if pt.ctx != self.ctx {
            return Err(Error::ParameterMismatch);
        }
        Ok(parallel::install(|| {
            let ctx = &self.ctx;
            let level = pt.level;
            let moduli = ctx.q_moduli(level);
            let seed = fresh_seed();
            let a = expand_symmetric_a(ctx, &seed, level);
            let mut c0 = error_poly(ctx, level + 1);
            c0.add_assign(&pt.poly, moduli);
            let mut a_s = a.clone();
            a_s.mul_assign(&self.poly, moduli);
            c0.sub_assign(&a_s, moduli);
            Ciphertext {
                ctx: ctx.clone(),
                polys: vec![c0, a],
                level,
                scale: pt.scale,
                slots: pt.slots,
                seed: Some(seed),
            }
        }))
    }

    /// c_0 + c_1 s (+ c_2 s^2): the plaintext, in NTT form at the ciphertext's level and scale.
    pub fn decrypt(&self, ct: &Ciphertext) -> Result<Plaintext> {
        if ct.ctx != self.ctx {
            return Err(Error::ParameterMismatch);
        }
        Ok(parallel::install(|| {
            let ctx = &self.ctx;
            let moduli = ctx.q_moduli(ct.level);
            // The secret's first level + 1 rows are exactly its rows modulo q_0..q_level.
            let s = &self.poly;
            let mut acc = ct.polys[0].clone();
            acc.add_product(&ct.polys[1], s, moduli);
            if let Some(c2) = ct.polys.get(2) {
                let mut s2 = s.slice_limbs(0, ct.level + 1);
                s2.mul_assign(s, moduli);
                acc.add_product(c2, &s2, moduli);
                s2.zeroize();
            }
            Plaintext::from_poly(ctx, acc, ct.level, ct.scale, ct.slots)
        }))
    }
}
