//! Encryption of the shares an owner sends a neighbour through the server: ChaCha20-Poly1305
//! under KDF(X25519 agreement of the c keys).
//!
//! The key is the same in both directions of a pair, so the nonce is the sender's id (and the
//! stage): each (key, nonce) is used once, since keys are fresh every round. The associated
//! data binds the round context, sender, recipient and stage, so the server can neither
//! replay a ciphertext from another round nor deliver it to anyone but its recipient.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

use super::wire::CIPHERTEXT_LEN;
use crate::error::{Error, Result};

/// The stage number bound into nonces and associated data.
const SHARE_STAGE: u32 = 1;

fn nonce(sender: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&sender.to_le_bytes());
    n[8..].copy_from_slice(&SHARE_STAGE.to_le_bytes());
    n
}

fn associated_data(context: &[u8], sender: u64, recipient: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(context.len() + 28);
    aad.extend_from_slice(&(context.len() as u64).to_le_bytes());
    aad.extend_from_slice(context);
    aad.extend_from_slice(&sender.to_le_bytes());
    aad.extend_from_slice(&recipient.to_le_bytes());
    aad.extend_from_slice(&SHARE_STAGE.to_le_bytes());
    aad
}

pub fn seal(
    key: &[u8; 32],
    context: &[u8],
    sender: u64,
    recipient: u64,
    shares: &[u8; 64],
) -> [u8; CIPHERTEXT_LEN] {
    let aad = associated_data(context, sender, recipient);
    let ct = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(Nonce::from_slice(&nonce(sender)), Payload { msg: shares, aad: &aad })
        .expect("ChaCha20-Poly1305 encrypts any 64-byte message");
    let mut out = [0u8; CIPHERTEXT_LEN];
    out.copy_from_slice(&ct);
    out
}

/// The 64 bytes of shares, or [`Error::TamperedShare`] naming the sender when the ciphertext
/// does not authenticate.
pub fn open(
    key: &[u8; 32],
    context: &[u8],
    sender: u64,
    recipient: u64,
    ct: &[u8; CIPHERTEXT_LEN],
) -> Result<zeroize::Zeroizing<[u8; 64]>> {
    let aad = associated_data(context, sender, recipient);
    let pt = zeroize::Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(Nonce::from_slice(&nonce(sender)), Payload { msg: ct, aad: &aad })
            .map_err(|_| Error::TamperedShare { from: sender, to: recipient })?,
    );
    let mut out = zeroize::Zeroizing::new([0u8; 64]);
    out.copy_from_slice(&pt);
    Ok(out)
}
