//! Key material: the owner's secret key and the public keys it may ship.

use std::collections::BTreeMap;
use std::sync::Arc;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::{Error, Result};
use crate::math::modulus::Modulus;
use crate::math::poly::RnsPoly;

use super::context::Context;

/// The secret key s, kept by its owner. Never serialised by the library; zeroised on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey {
    #[zeroize(skip)]
    pub(crate) ctx: Context,
    /// s over every key modulus (q's then p's), NTT form.
    pub(crate) poly: RnsPoly,
    /// Shoup constants of `poly` for the q rows, so decryption multiplies at Shoup cost.
    pub(crate) poly_shoup: RnsPoly,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl SecretKey {
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

/// (b, a) = (-a s + e, a) modulo Q_L P. `a` may be regenerated from `seed`.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub(crate) ctx: Context,
    pub(crate) b: RnsPoly,
    pub(crate) a: RnsPoly,
    pub(crate) seed: Option<[u8; 32]>,
}

/// Hybrid key-switching key from some s' to s: for each digit i,
/// (b_i, a_i) = (-a_i s + e_i + P g_i s', a_i) over the key moduli, where g_i is 1 modulo the
/// primes of digit i and 0 modulo every other prime (so P s' appears on digit i's rows only).
#[derive(Clone, Debug)]
pub struct KeySwitchKey {
    pub(crate) ctx: Context,
    pub(crate) b: Vec<KeyPoly>,
    pub(crate) a: Vec<KeyPoly>,
    pub(crate) seed: Option<[u8; 32]>,
}

/// Primes below this are "narrow": their key rows are stored in 32 bits, and key-switch
/// products with them fit 62 bits (deferred reduction in 64-bit sums).
pub(crate) const NARROW_PRIME_LIMIT: u64 = 1 << 31;

/// One polynomial of a key-switching key (NTT form over the key moduli), stored as compactly
/// as its primes allow: rows of narrow primes in 32 bits. Keys are the bulk of an evaluator's
/// memory and the key-switch inner product is bound by reading them, so with the block's
/// 30-bit chain this saves about 40 % of both.
#[derive(Clone, Debug)]
pub(crate) struct KeyPoly {
    rows: Vec<KeyRow>,
}

#[derive(Clone, Debug)]
pub(crate) enum KeyRow {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl KeyPoly {
    pub(crate) fn new(poly: &RnsPoly, moduli: &[Modulus]) -> Self {
        let rows = poly
            .rows()
            .zip(moduli)
            .map(|(row, m)| {
                if m.value() < NARROW_PRIME_LIMIT {
                    KeyRow::Narrow(row.iter().map(|&x| x as u32).collect())
                } else {
                    KeyRow::Wide(row.to_vec())
                }
            })
            .collect();
        KeyPoly { rows }
    }

    pub(crate) fn row(&self, k: usize) -> &KeyRow {
        &self.rows[k]
    }

    /// The polynomial in the ordinary form (for serialisation).
    pub(crate) fn to_poly(&self) -> RnsPoly {
        let n = match self.rows.first() {
            Some(KeyRow::Narrow(r)) => r.len(),
            Some(KeyRow::Wide(r)) => r.len(),
            None => 0,
        };
        let mut flat = Vec::with_capacity(n * self.rows.len());
        for row in &self.rows {
            match row {
                KeyRow::Narrow(r) => flat.extend(r.iter().map(|&x| x as u64)),
                KeyRow::Wide(r) => flat.extend_from_slice(r),
            }
        }
        RnsPoly::from_flat(n, flat)
    }
}

/// Switches s^2 to s after a ciphertext multiplication.
#[derive(Clone, Debug)]
pub struct RelinKey(pub(crate) KeySwitchKey);

/// Switch keys from s(X^g) to s(X), by Galois element g.
#[derive(Clone, Debug)]
pub struct GaloisKeys {
    pub(crate) ctx: Context,
    pub(crate) keys: BTreeMap<u64, KeySwitchKey>,
}

impl PublicKey {
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

impl RelinKey {
    pub fn context(&self) -> &Context {
        &self.0.ctx
    }
}

impl GaloisKeys {
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Galois elements with a key.
    pub fn elements(&self) -> Vec<u64> {
        self.keys.keys().copied().collect()
    }

    pub fn get(&self, galois: u64) -> Option<&KeySwitchKey> {
        self.keys.get(&galois)
    }
}

/// What an owner ships to an evaluator: any of the public, relinearisation and Galois keys,
/// all of one parameter set.
#[derive(Clone, Debug)]
pub struct EvaluationKeys {
    pub(crate) ctx: Context,
    pub public: Option<Arc<PublicKey>>,
    pub relin: Option<Arc<RelinKey>>,
    pub galois: Option<Arc<GaloisKeys>>,
}

impl EvaluationKeys {
    /// Bundles keys; refuses keys of different parameter sets.
    pub fn new(
        ctx: &Context,
        public: Option<Arc<PublicKey>>,
        relin: Option<Arc<RelinKey>>,
        galois: Option<Arc<GaloisKeys>>,
    ) -> Result<Self> {
        let same = public.as_ref().is_none_or(|k| k.context() == ctx)
            && relin.as_ref().is_none_or(|k| k.context() == ctx)
            && galois.as_ref().is_none_or(|k| k.context() == ctx);
        if !same {
            return Err(Error::ParameterMismatch);
        }
        Ok(EvaluationKeys { ctx: ctx.clone(), public, relin, galois })
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}
