//! Ciphertexts: two (or, before relinearisation, three) RNS polynomials in NTT form.

use crate::math::poly::RnsPoly;

use super::context::Context;

#[derive(Clone, Debug)]
pub struct Ciphertext {
    pub(crate) ctx: Context,
    /// c_0, c_1 (, c_2): decrypts as c_0 + c_1 s (+ c_2 s^2).
    pub(crate) polys: Vec<RnsPoly>,
    pub(crate) level: usize,
    pub(crate) scale: f64,
    /// Number of meaningful slots (a power of two; the slot vector is periodic beyond it).
    pub(crate) slots: usize,
    /// For a fresh symmetric encryption: the seed that regenerates c_1, so it can be sent in
    /// half the bytes. Cleared by any operation.
    pub(crate) seed: Option<[u8; 32]>,
}

impl Ciphertext {
    pub fn level(&self) -> usize {
        self.level
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Number of polynomials (2, or 3 after a multiplication without relinearisation).
    pub fn size(&self) -> usize {
        self.polys.len()
    }

    pub fn is_seeded(&self) -> bool {
        self.seed.is_some()
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}
