//! A batch of activations encrypted in the token layout, with the layout attached.
//!
//! On the wire a batch is *complex-packed* by default: ciphertext k of a group carries feature
//! 2k in the real and feature 2k + 1 in the imaginary part of its slots, which halves the bytes
//! each way. The provider separates them with one conjugation per ciphertext (z + conj z and
//! i (conj z - z), both exact up to the key switch's noise); the owner encodes at half the
//! scale so both come out at the canonical scale. Outputs are packed back as a + i b, which is
//! free (multiplying by i is multiplying by X^(N/2)).
//!
//! Wire format (little-endian): magic "BFPK", version u8 = 1, flags u8 (bit 0: complex), then
//! tokens, features, slots, batch as u32, then for every group and ciphertext a u32 length and
//! that ciphertext's own encoding (see `ckks::serial`). Decoding checks the layout against the
//! parameters, every count and length, and rejects unknown flags and trailing bytes.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::ckks::evaluator::{add, adjust_level, conjugate, mul_by_i, sub};
use crate::ckks::serial::{read_ciphertext_list, write_ciphertext_list};
use crate::ckks::{Ciphertext, Complex, Context, GaloisKeys, Plaintext, SecretKey};
use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::parallel;

use super::layout::TokenLayout;

const MAGIC: &[u8; 4] = b"BFPK";
const VERSION: u8 = 1;

#[derive(Clone, Debug)]
pub struct PackedBatch {
    pub layout: TokenLayout,
    pub batch: usize,
    /// Two features per ciphertext (real and imaginary parts) instead of one.
    pub complex: bool,
    /// groups[g][k]: feature k (or features 2k, 2k + 1 if complex) of the samples of group g.
    pub groups: Vec<Vec<Ciphertext>>,
}

/// a + i b: two real ciphertexts at one level and scale in one (free: i is X^(N/2)).
pub(crate) fn join_complex(a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext> {
    add(a, &mul_by_i(b))
}

/// The real and imaginary parts of `z` as real ciphertexts, by one conjugation: z + conj z and
/// i (conj z - z) are 2 Re z and 2 Im z, so both land on twice z's scale.
pub(crate) fn split_complex(z: &Ciphertext, keys: &GaloisKeys) -> Result<(Ciphertext, Ciphertext)> {
    let zc = conjugate(z, keys)?;
    let mut re = add(z, &zc)?;
    re.scale = z.scale() * 2.0;
    let mut im = mul_by_i(&sub(&zc, z)?);
    im.scale = z.scale() * 2.0;
    Ok((re, im))
}

fn pairs(features: &[Vec<f64>]) -> Vec<Vec<Complex>> {
    features
        .chunks(2)
        .map(|pair| {
            let im = pair.get(1);
            pair[0].iter().enumerate().map(|(s, &re)| Complex::new(re, im.map_or(0.0, |v| v[s]))).collect()
        })
        .collect()
}

impl PackedBatch {
    /// Encrypts (batch, tokens, features) values with the owner's secret key (seeded
    /// ciphertexts: half the bytes), complex-packed if `complex`.
    pub fn encrypt(
        sk: &SecretKey,
        tokens: usize,
        features: usize,
        values: &[f64],
        batch: usize,
        complex: bool,
    ) -> Result<Self> {
        let ctx = sk.context();
        let layout = TokenLayout::new(tokens, features, ctx.params.slots())?;
        let top = ctx.max_level();
        // Complex packing: both parts come back from z + conj z = 2 Re z, so encode at half scale.
        let scale = if complex { ctx.scale_at(top) / 2.0 } else { ctx.scale_at(top) };
        let groups = layout
            .pack(values, batch)?
            .into_iter()
            .map(|cts| {
                let messages: Vec<Vec<Complex>> = if complex {
                    pairs(&cts)
                } else {
                    cts.iter().map(|c| c.iter().map(|&x| Complex::new(x, 0.0)).collect()).collect()
                };
                parallel::install(|| {
                    messages
                        .par_iter()
                        .map(|m| sk.encrypt_symmetric(&Plaintext::encode(ctx, m, None, Some(scale))?))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PackedBatch { layout, batch, complex, groups })
    }

    pub fn decrypt(&self, sk: &SecretKey) -> Result<Vec<f64>> {
        let features = self.layout.features;
        let groups = self
            .groups
            .iter()
            .map(|cts| {
                let decoded = parallel::install(|| {
                    cts.par_iter().map(|ct| Ok(sk.decrypt(ct)?.decode())).collect::<Result<Vec<_>>>()
                })?;
                let mut real: Vec<Vec<f64>> = Vec::with_capacity(features);
                for z in decoded {
                    real.push(z.iter().map(|v| v.re).collect());
                    if self.complex && real.len() < features {
                        real.push(z.iter().map(|v| v.im).collect());
                    }
                }
                Ok(real)
            })
            .collect::<Result<Vec<_>>>()?;
        self.layout.unpack(&groups, self.batch)
    }

    /// The provider's view: one real ciphertext per feature for every group (complex batches
    /// are separated with one conjugation each, which needs the conjugation key).
    pub fn real_groups(&self, keys: Option<&GaloisKeys>) -> Result<Vec<Cow<'_, [Ciphertext]>>> {
        if !self.complex {
            return Ok(self.groups.iter().map(|g| Cow::Borrowed(g.as_slice())).collect());
        }
        let keys = keys.ok_or_else(|| {
            Error::MissingKey("a complex-packed batch needs the conjugation key (conjugate=True)".into())
        })?;
        let features = self.layout.features;
        self.groups
            .iter()
            .map(|cts| {
                let mut real = Vec::with_capacity(features);
                for z in cts {
                    let (re, im) = split_complex(z, keys)?;
                    real.push(re);
                    if real.len() < features {
                        real.push(im);
                    }
                }
                Ok(Cow::Owned(real))
            })
            .collect()
    }

    /// Packs one real ciphertext per feature back into a batch (as a + i b pairs if `complex`).
    pub fn from_real(
        layout: TokenLayout,
        batch: usize,
        groups: Vec<Vec<Ciphertext>>,
        complex: bool,
    ) -> Result<Self> {
        if groups.len() != layout.groups(batch) || groups.iter().any(|g| g.len() != layout.features) {
            return Err(Error::Shape(format!(
                "expected {} groups of {} ciphertexts",
                layout.groups(batch),
                layout.features
            )));
        }
        let groups = if complex {
            groups
                .iter()
                .map(|cts| {
                    let level = cts.iter().map(|c| c.level()).min().unwrap_or(0);
                    cts.chunks(2)
                        .map(|pair| {
                            let re = adjust_level(&pair[0], level)?;
                            match pair.get(1) {
                                Some(im) => join_complex(&re, &adjust_level(im, level)?),
                                None => Ok(re),
                            }
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            groups
        };
        Ok(PackedBatch { layout, batch, complex, groups })
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

    /// A masked refresh of every ciphertext through `owner` (who sees only masked values): the
    /// same batch at the top level. Ciphertexts must be at the refresh level or above. A
    /// complex batch lands at half the canonical scale, as the owner encrypts one, so the
    /// provider's separation yields canonical real ciphertexts.
    pub fn refreshed(&self, owner: &dyn super::refresh::Refresher) -> Result<Self> {
        let ctx = self.context();
        let top = ctx.max_level();
        let scale = ctx.scale_at(top) / if self.complex { 2.0 } else { 1.0 };
        let per_group = self.groups.first().map_or(0, |g| g.len());
        let values = self.groups.iter().flatten().cloned().collect();
        let fresh = super::refresh::refresh_all_at(values, owner, top, scale)?;
        let groups = fresh.chunks(per_group.max(1)).map(|c| c.to_vec()).collect();
        Ok(PackedBatch { groups, ..self.clone() })
    }

    /// One batch per ciphertext group, in order (the last may hold fewer samples): the unit
    /// of work a provider can spread over machines, since nothing mixes groups.
    pub fn split_groups(&self) -> Vec<Self> {
        (0..self.groups.len())
            .map(|g| PackedBatch {
                layout: self.layout,
                batch: self.layout.samples_in_group(self.batch, g),
                complex: self.complex,
                groups: vec![self.groups[g].clone()],
            })
            .collect()
    }

    /// The batch whose groups are `parts`' groups in order, undoing [`Self::split_groups`]:
    /// every part but the last must fill its groups, all share one layout, packing and ring.
    pub fn concat(parts: &[Self]) -> Result<Self> {
        let first = parts.first().ok_or_else(|| Error::Shape("no batches to join".into()))?;
        let per = first.layout.samples_per_group();
        let mut batch = 0;
        let mut groups = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if part.layout != first.layout || part.complex != first.complex {
                return Err(Error::Shape(format!("batch {i} has another layout or packing")));
            }
            if part.context() != first.context() {
                return Err(Error::ParameterMismatch);
            }
            if i + 1 < parts.len() && part.batch % per != 0 {
                return Err(Error::Shape(format!(
                    "batch {i} holds {} samples; only the last may leave a group of {per} part-full",
                    part.batch
                )));
            }
            batch += part.batch;
            groups.extend(part.groups.iter().cloned());
        }
        Ok(PackedBatch { layout: first.layout, batch, complex: first.complex, groups })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::with_magic(MAGIC);
        w.u8(VERSION);
        w.u8(self.complex as u8);
        for v in [self.layout.tokens, self.layout.features, self.layout.slots, self.batch] {
            w.count(v);
        }
        write_ciphertext_list(&mut w, self.groups.iter().flatten());
        w.into_bytes()
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "packed batch");
        r.magic(MAGIC)?;
        let version = r.u8()?;
        if version != VERSION {
            return Err(r.malformed(format!("unsupported version {version}")));
        }
        let flags = r.u8()?;
        if flags > 1 {
            return Err(r.malformed(format!("unknown flags {flags:#x}")));
        }
        let complex = flags == 1;
        let [tokens, features, slots, batch] = [r.u32()?, r.u32()?, r.u32()?, r.u32()?].map(|v| v as usize);
        if slots != ctx.params.slots() {
            return Err(r.malformed(format!("{slots} slots, the parameters have {}", ctx.params.slots())));
        }
        let layout = TokenLayout::new(tokens, features, slots).map_err(|e| r.malformed(e))?;
        if batch == 0 {
            return Err(r.malformed("empty batch"));
        }
        let per_group = if complex { features.div_ceil(2) } else { features };
        let count =
            layout.groups(batch).checked_mul(per_group).ok_or_else(|| r.malformed("too many ciphertexts"))?;
        let cts = read_ciphertext_list(ctx, &mut r, count)?;
        if cts.iter().any(|ct| ct.slots() != slots) {
            return Err(r.malformed("a ciphertext packs a different number of slots"));
        }
        r.finish()?;
        let groups = cts.chunks(per_group).map(|c| c.to_vec()).collect();
        Ok(PackedBatch { layout, batch, complex, groups })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ckks::{ParameterSpec, Parameters};

    #[test]
    fn split_groups_and_concat_round_trip() {
        let mut spec = ParameterSpec::new(10, 2, 30);
        spec.insecure = true;
        let ctx = Context::from_parameters(Parameters::new(&spec).unwrap()).unwrap();
        let sk = SecretKey::generate(&ctx);
        // 3 tokens x 3 features, 200 samples: groups of 170 and 30.
        let (tokens, features, batch) = (3, 3, 200);
        let x: Vec<f64> = (0..batch * tokens * features).map(|i| (i % 17) as f64 / 17.0).collect();
        let packed = PackedBatch::encrypt(&sk, tokens, features, &x, batch, true).unwrap();
        let parts = packed.split_groups();
        assert_eq!(parts.iter().map(|p| p.batch).collect::<Vec<_>>(), vec![170, 30]);
        let joined = PackedBatch::concat(&parts).unwrap();
        assert_eq!(joined.to_bytes(), packed.to_bytes());
        let first = parts[0].decrypt(&sk).unwrap();
        assert!(first.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-4));
        // Only the last part may be part-full, and parts must share a layout.
        assert!(PackedBatch::concat(&[parts[1].clone(), parts[0].clone()]).is_err());
        let other = PackedBatch::encrypt(&sk, tokens, 2, &x[..2 * tokens * 5], 5, true).unwrap();
        assert!(PackedBatch::concat(&[parts[0].clone(), other]).is_err());
        assert!(PackedBatch::concat(&[]).is_err());
    }
}
