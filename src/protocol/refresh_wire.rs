//! Masked refreshes over bytes: the provider's [`Refresher`] that sends its masked
//! ciphertexts to a remote owner, and the owner's answer.
//!
//! Wire format (little-endian): magic "BFRF", version u8 = 2, kind u8 (0: request, 1: reply),
//! level u8 (where the owner re-encrypts: the levels the values still need), count u32, then
//! per ciphertext a u32 length and its `ckks::serial` encoding. Decoders check every length
//! and reject trailing bytes; a reply must hold as many ciphertexts as the request, at the
//! level it asked for.

use crate::ckks::serial::{read_ciphertext_list, write_ciphertext_list};
use crate::ckks::{Ciphertext, Context, SecretKey};
use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};
use crate::he::refresh::Refresher;

const MAGIC: &[u8; 4] = b"BFRF";
const VERSION: u8 = 2;
const REQUEST: u8 = 0;
const REPLY: u8 = 1;

fn name(kind: u8) -> &'static str {
    if kind == REQUEST {
        "refresh request"
    } else {
        "refresh reply"
    }
}

fn encode(kind: u8, level: usize, cts: &[Ciphertext]) -> Vec<u8> {
    let mut w = Writer::with_magic(MAGIC);
    w.u8(VERSION);
    w.u8(kind);
    w.u8(u8::try_from(level).expect("a chain has fewer than 256 levels"));
    w.count(cts.len());
    write_ciphertext_list(&mut w, cts);
    w.into_bytes()
}

/// The level a message names and its ciphertexts.
fn decode(ctx: &Context, kind: u8, bytes: &[u8]) -> Result<(usize, Vec<Ciphertext>)> {
    let mut r = Reader::new(bytes, name(kind));
    r.magic(MAGIC)?;
    let version = r.u8()?;
    if version != VERSION {
        return Err(r.malformed(format!("unsupported version {version}")));
    }
    let found = r.u8()?;
    if found != kind {
        return Err(r.malformed(format!("message kind {found} where {kind} was expected")));
    }
    let level = r.u8()? as usize;
    if level > ctx.max_level() {
        return Err(r.malformed(format!("level {level} is above the top level {}", ctx.max_level())));
    }
    let count = r.u32()? as usize;
    let cts = read_ciphertext_list(ctx, &mut r, count)?;
    r.finish()?;
    Ok((level, cts))
}

/// A refresh request's bytes: the masked ciphertexts and the level the owner re-encrypts at.
pub fn encode_request(level: usize, masked: &[Ciphertext]) -> Vec<u8> {
    encode(REQUEST, level, masked)
}

/// A refresh request's level and masked ciphertexts; [`Error::Malformed`] for anything else.
pub fn decode_request(ctx: &Context, bytes: &[u8]) -> Result<(usize, Vec<Ciphertext>)> {
    decode(ctx, REQUEST, bytes)
}

/// A refresh reply's bytes: the re-encrypted ciphertexts at the level the request named.
pub fn encode_reply(level: usize, fresh: &[Ciphertext]) -> Vec<u8> {
    encode(REPLY, level, fresh)
}

/// A refresh reply's level and ciphertexts; [`Error::Malformed`] for anything else.
pub fn decode_reply(ctx: &Context, bytes: &[u8]) -> Result<(usize, Vec<Ciphertext>)> {
    decode(ctx, REPLY, bytes)
}

/// The owner's side: decrypt each masked ciphertext (uniformly random-looking values) and
/// re-encrypt it at the level the request names.
pub fn answer(sk: &SecretKey, request: &[u8]) -> Result<Vec<u8>> {
    let (level, masked) = decode_request(sk.context(), request)?;
    Ok(encode_reply(level, &sk.refresh(masked, level)?))
}

/// The provider's side: each refresh is one round trip through `send` (request bytes in,
/// reply bytes out), typically a network call.
pub struct RemoteOwner<F> {
    ctx: Context,
    send: F,
}

impl<F: Fn(Vec<u8>) -> Result<Vec<u8>> + Send + Sync> RemoteOwner<F> {
    pub fn new(ctx: Context, send: F) -> Self {
        RemoteOwner { ctx, send }
    }
}

impl<F: Fn(Vec<u8>) -> Result<Vec<u8>> + Send + Sync> Refresher for RemoteOwner<F> {
    fn refresh(&self, masked: Vec<Ciphertext>, level: usize) -> Result<Vec<Ciphertext>> {
        let reply = (self.send)(encode_request(level, &masked))?;
        let (replied, fresh) = decode_reply(&self.ctx, &reply)?;
        if replied != level || fresh.iter().any(|c| c.level() != level) {
            return Err(Error::Malformed(format!("refresh reply: not at the level {level} requested")));
        }
        if fresh.len() != masked.len() {
            return Err(Error::Malformed(format!(
                "refresh reply: {} ciphertexts for {} requested",
                fresh.len(),
                masked.len()
            )));
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ckks::{ParameterSpec, Parameters, Plaintext};
    use crate::he::refresh::refresh_all;

    #[test]
    fn a_remote_refresh_round_trips_and_rejects_bad_replies() {
        let mut spec = ParameterSpec::new(11, 4, 30);
        spec.insecure = true;
        let ctx = Context::from_parameters(Parameters::new(&spec).unwrap()).unwrap();
        let sk = SecretKey::generate(&ctx);
        let values: Vec<_> = (0..8).map(|i| crate::ckks::Complex::new(i as f64 / 8.0, 0.0)).collect();
        let level = crate::he::refresh::refresh_level(&ctx);
        let ct = sk.encrypt_symmetric(&Plaintext::encode(&ctx, &values, Some(level), None).unwrap()).unwrap();
        let owner = RemoteOwner::new(ctx.clone(), |req: Vec<u8>| answer(&sk, &req));
        let top = ctx.max_level();
        // The owner re-encrypts at the level the request names, any from the floor to the top.
        for target in level..=top {
            let fresh = refresh_all(vec![ct.clone()], &owner, target).unwrap();
            assert_eq!(fresh[0].level(), target);
            let out = sk.decrypt(&fresh[0]).unwrap().decode();
            for (a, b) in out.iter().zip(&values) {
                assert!((a.re - b.re).abs() < 1e-4, "{a:?} vs {b:?} at level {target}");
            }
        }
        // A reply with the wrong kind, a truncated one, an empty one and one at another level
        // than asked are refused; so is a request above the top level.
        let bad = RemoteOwner::new(ctx.clone(), |req: Vec<u8>| Ok(req));
        assert!(matches!(refresh_all(vec![ct.clone()], &bad, top), Err(Error::Malformed(_))));
        let short = RemoteOwner::new(ctx.clone(), |req: Vec<u8>| {
            let mut r = answer(&sk, &req)?;
            r.pop();
            Ok(r)
        });
        assert!(matches!(refresh_all(vec![ct.clone()], &short, top), Err(Error::Malformed(_))));
        let empty = RemoteOwner::new(ctx.clone(), |_| Ok(encode(REPLY, top, &[])));
        assert!(matches!(refresh_all(vec![ct.clone()], &empty, top), Err(Error::Malformed(_))));
        let elsewhere = RemoteOwner::new(ctx.clone(), |req: Vec<u8>| {
            let (_, masked) = decode(sk.context(), REQUEST, &req)?;
            Ok(encode(REPLY, top, &sk.refresh(masked, top)?))
        });
        assert!(matches!(refresh_all(vec![ct], &elsewhere, level), Err(Error::Malformed(_))));
        let mut above = encode(REQUEST, top, &[]);
        above[6] = top as u8 + 1;
        assert!(matches!(answer(&sk, &above), Err(Error::Malformed(_))));
        assert!(answer(&sk, b"BFRF").is_err());
    }
}
