//! A batch of activations encrypted in the token layout, with the layout attached.
//!
//! Wire format (little-endian): magic "BFPK", version u8 = 1, then tokens, features, slots,
//! batch as u32, then for every group and feature a u32 length and that ciphertext's own
//! encoding (see `ckks::serial`). Decoding checks the layout against the parameters, every
//! count and length, and rejects trailing bytes.

use rayon::prelude::*;

use crate::ckks::evaluator::adjust_level;
use crate::ckks::{Ciphertext, Complex, Context, Plaintext, SecretKey};
use crate::error::{Error, Result};
use crate::parallel;

use super::layout::TokenLayout;

const MAGIC: &[u8; 4] = b"BFPK";
const VERSION: u8 = 1;

#[derive(Clone, Debug)]
pub struct PackedBatch {
    pub layout: TokenLayout,
    pub batch: usize,
    /// groups[g][f]: feature f of the samples of group g.
    pub groups: Vec<Vec<Ciphertext>>,
}

impl PackedBatch {
    /// Encrypts (batch, tokens, features) values with the owner's secret key (seeded
    /// ciphertexts: half the bytes on the wire).
    pub fn encrypt(
        sk: &SecretKey,
        tokens: usize,
        features: usize,
        values: &[f64],
        batch: usize,
    ) -> Result<Self> {
        let ctx = sk.context();
        let layout = TokenLayout::new(tokens, features, ctx.params.slots())?;
        let groups = layout
            .pack(values, batch)?
            .into_iter()
            .map(|cts| {
                parallel::install(|| {
                    cts.par_iter()
                        .map(|slots| {
                            let values: Vec<Complex> = slots.iter().map(|&x| Complex::new(x, 0.0)).collect();
                            sk.encrypt_symmetric(&Plaintext::encode(ctx, &values, None, None)?)
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PackedBatch { layout, batch, groups })
    }

    pub fn decrypt(&self, sk: &SecretKey) -> Result<Vec<f64>> {
        let groups = self
            .groups
            .iter()
            .map(|cts| {
                parallel::install(|| {
                    cts.par_iter()
                        .map(|ct| {
                            let pt = sk.decrypt(ct)?;
                            Ok(pt.decode().into_iter().map(|z| z.re).collect::<Vec<f64>>())
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.layout.unpack(&groups, self.batch)
    }

    pub fn context(&self) -> &Context {
        self.groups[0][0].context()
    }

    /// Lowest level of any ciphertext.
    pub fn level(&self) -> usize {
        self.groups.iter().flatten().map(|c| c.level()).min().unwrap_or(0)
    }

    /// Every ciphertext at `level` (smaller on the wire; values unchanged).
    pub fn at_level(&self, level: usize) -> Result<Self> {
        let groups = self
            .groups
            .iter()
            .map(|cts| cts.iter().map(|c| adjust_level(c, level)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        Ok(PackedBatch { groups, ..self.clone() })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        for v in [self.layout.tokens, self.layout.features, self.layout.slots, self.batch] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for ct in self.groups.iter().flatten() {
            let bytes = ct.to_bytes();
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<Self> {
        let malformed = |what: &str| Error::Malformed(format!("packed batch: {what}"));
        if bytes.len() < 21 || &bytes[..4] != MAGIC {
            return Err(malformed("missing header"));
        }
        if bytes[4] != VERSION {
            return Err(malformed(&format!("unsupported version {}", bytes[4])));
        }
        let word =
            |i: usize| u32::from_le_bytes(bytes[5 + 4 * i..9 + 4 * i].try_into().expect("4 bytes")) as usize;
        let (tokens, features, slots, batch) = (word(0), word(1), word(2), word(3));
        if slots != ctx.params.slots() {
            return Err(malformed(&format!("{slots} slots, the parameters have {}", ctx.params.slots())));
        }
        let layout = TokenLayout::new(tokens, features, slots).map_err(|e| malformed(&e.to_string()))?;
        if batch == 0 {
            return Err(malformed("empty batch"));
        }
        let count =
            layout.groups(batch).checked_mul(features).ok_or_else(|| malformed("too many ciphertexts"))?;
        // Every ciphertext takes at least its 4-byte length: refuse counts the bytes cannot hold.
        if count > (bytes.len() - 21) / 4 {
            return Err(malformed("truncated"));
        }
        let mut rest = &bytes[21..];
        let mut cts = Vec::with_capacity(count);
        for _ in 0..count {
            if rest.len() < 4 {
                return Err(malformed("truncated"));
            }
            let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
            if rest.len() - 4 < len {
                return Err(malformed("truncated ciphertext"));
            }
            let ct = Ciphertext::from_bytes(ctx, &rest[4..4 + len])?;
            if ct.slots() != slots {
                return Err(malformed("a ciphertext packs a different number of slots"));
            }
            cts.push(ct);
            rest = &rest[4 + len..];
        }
        if !rest.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        let groups = cts.chunks(features).map(|c| c.to_vec()).collect();
        Ok(PackedBatch { layout, batch, groups })
    }
}
