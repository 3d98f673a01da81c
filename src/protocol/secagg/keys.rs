//! X25519 key pairs and the key derivation that turns an agreement into a symmetric key.
//!
//! Every owner makes two fresh pairs per round: c, whose agreements encrypt the Shamir shares
//! sent to neighbours, and s, whose agreements seed the pairwise masks (the server learns s_sk
//! of an owner only if that owner drops out after sharing). Secrets are drawn from the
//! caller's CSPRNG (32 bytes, clamped by X25519) and zeroised on drop.
//!
//! KDF = SHA3-256(label | context | min(u, v) | max(u, v) | shared secret), with the label
//! and the context length-prefixed: keys are bound to their purpose, to the round, and to the
//! unordered pair of owners, so nothing derived in one round or for one pair serves another.

use rand_core::{CryptoRng, RngCore};
use sha3::{Digest, Sha3_256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Domain label of the keys that encrypt shares.
pub const SHARE_KEY: &[u8] = b"blindfed/secagg/v1/share-key";
/// Domain label of the pairwise mask seeds.
pub const MASK_SEED: &[u8] = b"blindfed/secagg/v1/mask-seed";

/// A fresh X25519 key pair; the secret is zeroised on drop.
pub struct KeyPair {
    secret: StaticSecret,
    public: PublicKey,
}

impl KeyPair {
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_secret_bytes(*bytes)
    }

    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        KeyPair { secret, public }
    }

    pub fn public(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The raw secret, for Shamir sharing only.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// KDF(X25519(self, theirs), label, context, me, them). Refuses a peer key of small order
    /// (the agreement would be all zeros, known to everyone).
    pub fn derive(
        &self,
        theirs: &[u8; 32],
        label: &[u8],
        context: &[u8],
        me: u64,
        them: u64,
    ) -> Result<Zeroizing<[u8; 32]>> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*theirs));
        if !shared.was_contributory() {
            return Err(Error::SecAgg(format!("owner {them}'s public key has small order")));
        }
        Ok(kdf(shared.as_bytes(), label, context, me, them))
    }
}

/// SHA3-256 over the length-prefixed label and context, the two ids in ascending order and
/// the shared secret.
pub fn kdf(shared: &[u8; 32], label: &[u8], context: &[u8], a: u64, b: u64) -> Zeroizing<[u8; 32]> {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha3_256::new();
    h.update((label.len() as u64).to_le_bytes());
    h.update(label);
    h.update((context.len() as u64).to_le_bytes());
    h.update(context);
    h.update(lo.to_le_bytes());
    h.update(hi.to_le_bytes());
    h.update(shared);
    Zeroizing::new(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn both_sides_derive_the_same_key_bound_to_label_context_and_pair() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (a, b) = (KeyPair::generate(&mut rng), KeyPair::generate(&mut rng));
        let k_ab = a.derive(&b.public(), SHARE_KEY, b"round 1", 10, 20).unwrap();
        let k_ba = b.derive(&a.public(), SHARE_KEY, b"round 1", 20, 10).unwrap();
        assert_eq!(*k_ab, *k_ba);
        assert_ne!(*k_ab, *a.derive(&b.public(), MASK_SEED, b"round 1", 10, 20).unwrap());
        assert_ne!(*k_ab, *a.derive(&b.public(), SHARE_KEY, b"round 2", 10, 20).unwrap());
        assert_ne!(*k_ab, *a.derive(&b.public(), SHARE_KEY, b"round 1", 10, 21).unwrap());
        // The secret survives a round trip through its bytes (what Shamir shares carry).
        let again = KeyPair::from_secret_bytes(*a.secret_bytes());
        assert_eq!(again.public(), a.public());
        // The identity point gives an all-zero agreement and is refused.
        assert!(a.derive(&[0u8; 32], SHARE_KEY, b"", 1, 2).is_err());
    }
}
