//! Versioned binary format for parameters, ciphertexts, plaintexts and public keys.
//!
//! All integers are little-endian. Every object starts with an 8-byte header:
//! `"BFHE"`, format version (u16, currently 1), kind (u8), flags (u8; bit 0 = seeded).
//! Every object but a parameter set then carries the 32-byte SHAKE256 fingerprint of its
//! parameter set, so objects of different sets are never mixed.
//!
//! | kind | body |
//! |------|------|
//! | 1 parameters | log_n u8, scale_bits u8, secret u8 (0 ternary, 1 fixed weight), weight u32, insecure u8, #q u8, #p u8, moduli u64 x (#q + #p) |
//! | 2 ciphertext | level u8, slots u32, scale f64, size u8, then c_0 .. c_{size-1}; when seeded, c_1 is replaced by its 32-byte seed |
//! | 3 plaintext  | level u8, slots u32, scale f64, poly |
//! | 4 public key | b (rows q_0..q_L, p_0..), then a or its seed |
//! | 5 relinearisation key | switch key |
//! | 6 Galois keys | count u32, then per key in increasing element order: element u64, switch key |
//! | 7 evaluation keys | for public, relinearisation, Galois keys in turn: length u64 (0: absent), then that object |
//!
//! A switch key is: digits u8, b_0 .. b_{digits-1} (rows q_0..q_L, p_0..), then a_0 .. or one seed.
//! A poly is its rows in NTT form, each row's N residues bit-packed at the bit width of its
//! prime (least significant bit first) and padded to a whole byte. Decoders check every length,
//! level, residue and count before using it, never allocate more than the input could hold,
//! and reject trailing bytes. Secret keys have no encoding.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::math::modulus::Modulus;
use crate::math::poly::RnsPoly;

use super::ciphertext::Ciphertext;
use super::context::Context;
use super::encryptor::expand_symmetric_a;
use super::keygen::{expand_public_key_a, expand_switch_key_a};
use super::keys::{EvaluationKeys, GaloisKeys, KeyPoly, KeySwitchKey, PublicKey, RelinKey};
use super::params::{Parameters, SecretDistribution};
use super::plaintext::Plaintext;

const MAGIC: &[u8; 4] = b"BFHE";
pub const FORMAT_VERSION: u16 = 1;
const SEEDED: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Parameters = 1,
    Ciphertext = 2,
    Plaintext = 3,
    PublicKey = 4,
    RelinKey = 5,
    GaloisKeys = 6,
    EvaluationKeys = 7,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Parameters => "parameters",
            Kind::Ciphertext => "ciphertext",
            Kind::Plaintext => "plaintext",
            Kind::PublicKey => "public key",
            Kind::RelinKey => "relinearisation key",
            Kind::GaloisKeys => "Galois keys",
            Kind::EvaluationKeys => "evaluation-key bundle",
        }
    }
}

/// An object's header: magic, version, kind, flags (and its parameter set's fingerprint).
fn header(kind: Kind, seeded: bool) -> Writer {
    let mut w = Writer::with_magic(MAGIC);
    w.u16(FORMAT_VERSION);
    w.u8(kind as u8);
    w.u8(if seeded { SEEDED } else { 0 });
    w
}

fn header_with_context(kind: Kind, seeded: bool, ctx: &Context) -> Writer {
    let mut w = header(kind, seeded);
    w.bytes(&ctx.fingerprint);
    w
}

/// A polynomial's rows, each residue at its prime's bit width, each row padded to a byte.
fn write_poly(w: &mut Writer, p: &RnsPoly, moduli: &[Modulus]) {
    for (row, m) in p.rows().zip(moduli) {
        let bits = m.bits();
        let mut acc: u128 = 0;
        let mut filled = 0u32;
        for &x in row {
            acc |= (x as u128) << filled;
            filled += bits;
            while filled >= 8 {
                w.u8(acc as u8);
                acc >>= 8;
                filled -= 8;
            }
        }
        if filled > 0 {
            w.u8(acc as u8);
        }
    }
}

fn malformed(msg: impl Into<String>) -> Error {
    Error::Malformed(msg.into())
}

/// Checks the header; returns the reader positioned after it and the flags.
fn open(bytes: &[u8], kind: Kind) -> Result<(Reader<'_>, u8)> {
    let mut r = Reader::new(bytes, kind.name());
    if r.left() < MAGIC.len() || r.take(MAGIC.len())? != MAGIC {
        return Err(malformed(format!("not a blindfed object (expected a {})", kind.name())));
    }
    let version = r.u16()?;
    if version != FORMAT_VERSION {
        return Err(r.malformed(format!(
            "format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )));
    }
    let found = r.u8()?;
    if found != kind as u8 {
        return Err(malformed(format!(
            "expected a {} (kind {}), found kind {found}",
            kind.name(),
            kind as u8
        )));
    }
    let flags = r.u8()?;
    if flags & !SEEDED != 0 {
        return Err(r.malformed(format!("unknown flags {flags:#x}")));
    }
    Ok((r, flags))
}

fn open_with_context<'a>(bytes: &'a [u8], kind: Kind, ctx: &Context) -> Result<(Reader<'a>, bool)> {
    let (mut r, flags) = open(bytes, kind)?;
    if r.take(32)? != ctx.fingerprint {
        return Err(r.malformed("belongs to a different parameter set"));
    }
    Ok((r, flags & SEEDED != 0))
}

fn read_seed(r: &mut Reader) -> Result<[u8; 32]> {
    r.array()
}

fn read_poly(r: &mut Reader, moduli: &[Modulus], n: usize) -> Result<RnsPoly> {
    // Check the whole size first so a lying header cannot make us allocate.
    let total: usize = moduli.iter().map(|m| (n * m.bits() as usize).div_ceil(8)).sum();
    if r.left() < total {
        return Err(r.malformed(format!("truncated polynomial: needs {total} bytes, {} left", r.left())));
    }
    let mut p = RnsPoly::zero(n, moduli.len());
    for (j, (row, m)) in p.rows_mut().zip(moduli).enumerate() {
        let bits = m.bits();
        let bytes = r.take((n * bits as usize).div_ceil(8))?;
        let mask = (1u128 << bits) - 1;
        let (mut acc, mut filled, mut next) = (0u128, 0u32, 0usize);
        for x in row.iter_mut() {
            while filled < bits {
                acc |= (bytes[next] as u128) << filled;
                next += 1;
                filled += 8;
            }
            let v = (acc & mask) as u64;
            acc >>= bits;
            filled -= bits;
            if v >= m.value() {
                return Err(
                    r.malformed(format!("residue {v} in row {j} is not below its modulus {}", m.value()))
                );
            }
            *x = v;
        }
        if acc != 0 {
            return Err(r.malformed(format!("non-zero padding bits after row {j}")));
        }
    }
    Ok(p)
}

// ---- parameters -------------------------------------------------------------------------

pub fn parameters_to_bytes(p: &Parameters) -> Vec<u8> {
    let mut w = header(Kind::Parameters, false);
    w.u8(p.log_n as u8);
    w.u8(p.scale_bits as u8);
    match p.secret {
        SecretDistribution::Ternary => {
            w.u8(0);
            w.u32(0);
        }
        SecretDistribution::HammingWeight(h) => {
            w.u8(1);
            w.u32(h as u32);
        }
    }
    w.u8(p.insecure as u8);
    w.u8(p.q.len() as u8);
    w.u8(p.p.len() as u8);
    for &m in p.q.iter().chain(&p.p) {
        w.u64(m);
    }
    w.into_bytes()
}

pub fn parameters_from_bytes(bytes: &[u8]) -> Result<Parameters> {
    let (mut r, flags) = open(bytes, Kind::Parameters)?;
    if flags != 0 {
        return Err(malformed("parameters cannot be seeded"));
    }
    let log_n = r.u8()? as u32;
    let scale_bits = r.u8()? as u32;
    let secret = match (r.u8()?, r.u32()?) {
        (0, 0) => SecretDistribution::Ternary,
        (1, h) => SecretDistribution::HammingWeight(h as usize),
        (kind, _) => return Err(malformed(format!("unknown secret distribution {kind}"))),
    };
    let insecure = match r.u8()? {
        0 => false,
        1 => true,
        v => return Err(malformed(format!("insecure flag must be 0 or 1, got {v}"))),
    };
    let (nq, np) = (r.u8()? as usize, r.u8()? as usize);
    let q = (0..nq).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
    let p = (0..np).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
    r.finish()?;
    let params = Parameters { log_n, scale_bits, q, p, secret, insecure };
    params.validate()?;
    Ok(params)
}

// ---- ciphertexts and plaintexts ---------------------------------------------------------

fn write_meta(w: &mut Writer, level: usize, slots: usize, scale: f64) {
    w.u8(level as u8);
    w.u32(slots as u32);
    w.f64(scale);
}

fn read_meta(r: &mut Reader, ctx: &Context) -> Result<(usize, usize, f64)> {
    let level = r.u8()? as usize;
    if level > ctx.max_level() {
        return Err(malformed(format!(
            "level {level} exceeds the parameter set's maximum {}",
            ctx.max_level()
        )));
    }
    let slots = r.u32()? as usize;
    if !slots.is_power_of_two() || slots > ctx.params.slots() {
        return Err(malformed(format!(
            "slot count {slots} is not a power of two up to {}",
            ctx.params.slots()
        )));
    }
    let scale = r.f64()?;
    if !(scale.is_finite() && scale >= 1.0) {
        return Err(malformed(format!("scale {scale} is not a finite number >= 1")));
    }
    Ok((level, slots, scale))
}

impl Ciphertext {
    /// Serialises; a fresh symmetric ciphertext is written with its seed instead of c_1.
    pub fn to_bytes(&self) -> Vec<u8> {
        let seeded = self.seed.is_some();
        let mut w = header_with_context(Kind::Ciphertext, seeded, &self.ctx);
        write_meta(&mut w, self.level, self.slots, self.scale);
        w.u8(self.polys.len() as u8);
        let moduli = self.ctx.q_moduli(self.level);
        write_poly(&mut w, &self.polys[0], moduli);
        match &self.seed {
            Some(seed) => w.bytes(seed),
            None => self.polys[1..].iter().for_each(|p| write_poly(&mut w, p, moduli)),
        }
        w.into_bytes()
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<Ciphertext> {
        let (mut r, seeded) = open_with_context(bytes, Kind::Ciphertext, ctx)?;
        let (level, slots, scale) = read_meta(&mut r, ctx)?;
        let size = r.u8()? as usize;
        if !(2..=3).contains(&size) || (seeded && size != 2) {
            return Err(malformed(format!(
                "ciphertext size {size} is invalid{}",
                if seeded { " for a seeded ciphertext" } else { "" }
            )));
        }
        let moduli = ctx.q_moduli(level);
        let n = ctx.degree();
        let mut polys = vec![read_poly(&mut r, moduli, n)?];
        let seed = if seeded {
            let seed = read_seed(&mut r)?;
            polys.push(expand_symmetric_a(ctx, &seed, level));
            Some(seed)
        } else {
            for _ in 1..size {
                polys.push(read_poly(&mut r, moduli, n)?);
            }
            None
        };
        r.finish()?;
        Ok(Ciphertext { ctx: ctx.clone(), polys, level, scale, slots, seed })
    }
}

impl Plaintext {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = header_with_context(Kind::Plaintext, false, &self.ctx);
        write_meta(&mut w, self.level, self.slots, self.scale);
        write_poly(&mut w, &self.poly, self.ctx.q_moduli(self.level));
        w.into_bytes()
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<Plaintext> {
        let (mut r, seeded) = open_with_context(bytes, Kind::Plaintext, ctx)?;
        if seeded {
            return Err(malformed("a plaintext cannot be seeded"));
        }
        let (level, slots, scale) = read_meta(&mut r, ctx)?;
        let poly = read_poly(&mut r, ctx.q_moduli(level), ctx.degree())?;
        r.finish()?;
        Ok(Plaintext::from_poly(ctx, poly, level, scale, slots))
    }
}

// ---- keys -------------------------------------------------------------------------------

impl PublicKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = header_with_context(Kind::PublicKey, self.seed.is_some(), &self.ctx);
        let moduli = &self.ctx.key_moduli;
        write_poly(&mut w, &self.b, moduli);
        match &self.seed {
            Some(seed) => w.bytes(seed),
            None => write_poly(&mut w, &self.a, moduli),
        }
        w.into_bytes()
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<PublicKey> {
        let (mut r, seeded) = open_with_context(bytes, Kind::PublicKey, ctx)?;
        let moduli = &ctx.key_moduli;
        let b = read_poly(&mut r, moduli, ctx.degree())?;
        let (a, seed) = if seeded {
            let seed = read_seed(&mut r)?;
            (expand_public_key_a(ctx, &seed), Some(seed))
        } else {
            (read_poly(&mut r, moduli, ctx.degree())?, None)
        };
        r.finish()?;
        Ok(PublicKey { ctx: ctx.clone(), b, a, seed })
    }
}

fn write_switch_key(w: &mut Writer, key: &KeySwitchKey) {
    w.u8(key.b.len() as u8);
    key.b.iter().for_each(|b| write_poly(w, &b.to_poly(), &key.ctx.key_moduli));
    match &key.seed {
        Some(seed) => w.bytes(seed),
        None => key.a.iter().for_each(|a| write_poly(w, &a.to_poly(), &key.ctx.key_moduli)),
    }
}

fn read_switch_key(r: &mut Reader, ctx: &Context, seeded: bool) -> Result<KeySwitchKey> {
    let digits = r.u8()? as usize;
    if digits != ctx.digits.len() {
        return Err(malformed(format!(
            "switch key has {digits} digits, the parameter set uses {}",
            ctx.digits.len()
        )));
    }
    let n = ctx.degree();
    let compact = |p: RnsPoly| KeyPoly::new(&p, &ctx.key_moduli);
    let b = (0..digits).map(|_| read_poly(r, &ctx.key_moduli, n).map(compact)).collect::<Result<Vec<_>>>()?;
    let (a, seed) = if seeded {
        let seed = read_seed(r)?;
        (expand_switch_key_a(ctx, &seed).into_iter().map(compact).collect(), Some(seed))
    } else {
        (
            (0..digits).map(|_| read_poly(r, &ctx.key_moduli, n).map(compact)).collect::<Result<Vec<_>>>()?,
            None,
        )
    };
    Ok(KeySwitchKey { ctx: ctx.clone(), b, a, seed })
}

impl RelinKey {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = header_with_context(Kind::RelinKey, self.0.seed.is_some(), &self.0.ctx);
        write_switch_key(&mut w, &self.0);
        w.into_bytes()
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<RelinKey> {
        let (mut r, seeded) = open_with_context(bytes, Kind::RelinKey, ctx)?;
        let key = read_switch_key(&mut r, ctx, seeded)?;
        r.finish()?;
        Ok(RelinKey(key))
    }
}

impl GaloisKeys {
    /// Serialises; the seeded flag is set only if there are keys and every one is seeded
    /// (keys generated here are).
    pub fn to_bytes(&self) -> Vec<u8> {
        let seeded = !self.keys.is_empty() && self.keys.values().all(|k| k.seed.is_some());
        let mut w = header_with_context(Kind::GaloisKeys, seeded, &self.ctx);
        w.u32(self.keys.len() as u32);
        for (&g, key) in &self.keys {
            w.u64(g);
            if seeded {
                write_switch_key(&mut w, key);
            } else {
                let unseeded = KeySwitchKey { seed: None, ..key.clone() };
                write_switch_key(&mut w, &unseeded);
            }
        }
        w.into_bytes()
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<GaloisKeys> {
        let (mut r, seeded) = open_with_context(bytes, Kind::GaloisKeys, ctx)?;
        let count = r.u32()? as usize;
        let two_n = 2 * ctx.degree() as u64;
        if count > ctx.degree() {
            return Err(malformed(format!(
                "{count} Galois keys is more than the {} elements that exist",
                ctx.degree()
            )));
        }
        if count == 0 && seeded {
            return Err(malformed("an empty set of Galois keys cannot be seeded"));
        }
        let mut keys = BTreeMap::new();
        let mut previous = 0u64;
        for _ in 0..count {
            let g = r.u64()?;
            if g % 2 == 0 || g >= two_n || g <= previous {
                return Err(malformed(format!(
                    "Galois element {g} is not odd, below 2N and in increasing order"
                )));
            }
            previous = g;
            keys.insert(g, read_switch_key(&mut r, ctx, seeded)?);
        }
        r.finish()?;
        Ok(GaloisKeys { ctx: ctx.clone(), keys })
    }
}

/// A length-prefixed nested object of a bundle; length 0 means absent.
fn read_section<'a>(r: &mut Reader<'a>) -> Result<Option<&'a [u8]>> {
    let len = usize::try_from(r.u64()?).map_err(|_| malformed("section length overflows"))?;
    (len > 0).then(|| r.take(len)).transpose()
}

impl EvaluationKeys {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = header_with_context(Kind::EvaluationKeys, false, &self.ctx);
        for section in [
            self.public.as_ref().map(|k| k.to_bytes()),
            self.relin.as_ref().map(|k| k.to_bytes()),
            self.galois.as_ref().map(|k| k.to_bytes()),
        ] {
            let bytes = section.unwrap_or_default();
            w.u64(bytes.len() as u64);
            w.bytes(&bytes);
        }
        w.into_bytes()
    }

    pub fn from_bytes(ctx: &Context, bytes: &[u8]) -> Result<EvaluationKeys> {
        let (mut r, seeded) = open_with_context(bytes, Kind::EvaluationKeys, ctx)?;
        if seeded {
            return Err(malformed("a bundle has no seeded form (its keys are seeded inside)"));
        }
        let public = read_section(&mut r)?.map(|b| PublicKey::from_bytes(ctx, b)).transpose()?;
        let relin = read_section(&mut r)?.map(|b| RelinKey::from_bytes(ctx, b)).transpose()?;
        let galois = read_section(&mut r)?.map(|b| GaloisKeys::from_bytes(ctx, b)).transpose()?;
        r.finish()?;
        EvaluationKeys::new(ctx, public.map(Arc::new), relin.map(Arc::new), galois.map(Arc::new))
    }
}

/// Appends `cts` as a list of u32-length-prefixed ciphertexts (the framing that packed
/// batches and refresh messages share).
pub fn write_ciphertext_list<'a>(w: &mut Writer, cts: impl IntoIterator<Item = &'a Ciphertext>) {
    cts.into_iter().for_each(|ct| w.framed(&ct.to_bytes()));
}

/// Reads exactly `count` length-prefixed ciphertexts. Refuses counts the bytes left cannot
/// hold before allocating.
pub fn read_ciphertext_list(ctx: &Context, r: &mut Reader, count: usize) -> Result<Vec<Ciphertext>> {
    // Every ciphertext takes at least its 4-byte length.
    if count > r.left() / 4 {
        return Err(r.malformed(format!("{count} ciphertexts announced, {} bytes left", r.left())));
    }
    (0..count).map(|_| Ciphertext::from_bytes(ctx, r.framed()?)).collect()
}
