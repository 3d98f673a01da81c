//! Encryption: with the public key (anyone) or the secret key (seeded, half-size ciphertexts).

use zeroize::Zeroize;

use crate::error::{Error, Result};
use crate::math::poly::RnsPoly;
use crate::math::sampling::{self, fresh_seed, os_rng, SeedStream};
use crate::parallel;

use super::ciphertext::Ciphertext;
use super::keygen::{error_poly, error_poly_on, small_poly_on};
use super::keys::{PublicKey, SecretKey};
use super::keyswitch::divide_and_drop;
use super::plaintext::Plaintext;

/// Domain tag of a symmetric ciphertext's uniform polynomial in its seed stream.
const SYMMETRIC_TAG: u64 = 0;

/// The uniform polynomial of a seeded symmetric ciphertext at `level`.
pub(crate) fn expand_symmetric_a(ctx: &super::context::Context, seed: &[u8; 32], level: usize) -> RnsPoly {
    sampling::uniform_poly(&mut SeedStream::new(seed, SYMMETRIC_TAG), ctx.q_moduli(level), ctx.degree())
}

/// c_0 + c_1 s in one pass, multiplying with s's Shoup constants.
fn c0_plus_c1_s(ct: &Ciphertext, sk: &SecretKey) -> RnsPoly {
    let mut out = RnsPoly::zero(ct.ctx.degree(), ct.level + 1);
    out.for_each_row(|i, row| {
        let m = ct.ctx.key_moduli[i];
        let (c0, c1) = (ct.polys[0].limb(i), ct.polys[1].limb(i));
        let (s, s_shoup) = (sk.poly.limb(i), sk.poly_shoup.limb(i));
        for (((o, &x), &y), (&w, &ws)) in row.iter_mut().zip(c0).zip(c1).zip(s.iter().zip(s_shoup)) {
            *o = m.reduce_once(x + m.mul_shoup(y, w, ws));
        }
    });
    out
}

impl PublicKey {
    /// (b u + e_0, a u + e_1) computed modulo Q_l P with a fresh ternary u, divided by P
    /// (which shrinks the noise to about the rounding error), plus m.
    pub fn encrypt(&self, pt: &Plaintext) -> Result<Ciphertext> {
        if pt.ctx != self.ctx {
            return Err(Error::ParameterMismatch);
        }
        Ok(parallel::install(|| {
            let ctx = &self.ctx;
            let level = pt.level;
            let rows = ctx.extended_indices(level);
            let ext_moduli: Vec<_> = rows.iter().map(|&r| ctx.key_moduli[r]).collect();
            let mut u = small_poly_on(ctx, &rows, sampling::ternary(&mut os_rng(), ctx.degree()));
            let mut c0 = error_poly_on(ctx, &rows);
            let mut c1 = error_poly_on(ctx, &rows);
            c0.add_product(&self.b.select_limbs(&rows), &u, &ext_moduli);
            c1.add_product(&self.a.select_limbs(&rows), &u, &ext_moduli);
            u.zeroize();
            let mut c0 = divide_and_drop(ctx, &c0, level, false);
            let c1 = divide_and_drop(ctx, &c1, level, false);
            c0.add_assign(&pt.poly, ctx.q_moduli(level));
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
            let mut acc = c0_plus_c1_s(ct, self);
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
