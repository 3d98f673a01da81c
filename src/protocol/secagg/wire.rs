//! Versioned binary encodings of the parameters and of every message of a round.
//!
//! Layout (little-endian): magic "BFSA", version u8 = 1, kind u8, then (all but the
//! parameters) the 16-byte round tag of the parameters, then the body. Lists carry a u32
//! count and are strictly ascending by id, so a decoded message never holds duplicates.
//! Every decoder checks each length against the bytes left before allocating, rejects
//! trailing bytes and returns [`Error::Malformed`] for anything else: bytes from the network
//! never cause a panic.

use super::params::{ParamSpec, MAX_CONTEXT, MAX_LENGTH};
use crate::codec::{Reader, Writer};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"BFSA";
const VERSION: u8 = 1;

/// A ciphertext of one neighbour's pair of 32-byte shares: 64 bytes and a 16-byte tag.
pub const CIPHERTEXT_LEN: usize = 64 + 16;

/// The kinds of encoded object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Params = 1,
    Advert = 2,
    Roster = 3,
    Bundle = 4,
    Inbox = 5,
    Masked = 6,
    UnmaskRequest = 7,
    UnmaskAnswer = 8,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Params => "secure-aggregation parameters",
            Kind::Advert => "advertisement",
            Kind::Roster => "roster",
            Kind::Bundle => "share bundle",
            Kind::Inbox => "share inbox",
            Kind::Masked => "masked input",
            Kind::UnmaskRequest => "unmask request",
            Kind::UnmaskAnswer => "unmask answer",
        }
    }
}

/// An owner's two public keys: c encrypts shares, s seeds pairwise masks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub sender: u64,
    pub c_pk: [u8; 32],
    pub s_pk: [u8; 32],
}

/// Encrypted shares, from one sender (a bundle) or to one recipient (an inbox): the id is
/// the other end of each ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelopes {
    pub owner: u64,
    pub ciphertexts: Vec<(u64, [u8; CIPHERTEXT_LEN])>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Masked {
    pub sender: u64,
    pub values: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmaskRequest {
    pub survivors: Vec<u64>,
    pub dropped: Vec<u64>,
}

/// A survivor's shares: of the self-mask seed b of each surviving neighbour, and of the mask
/// key s_sk of each dropped one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnmaskAnswer {
    pub sender: u64,
    pub self_mask: Vec<(u64, [u8; 32])>,
    pub mask_key: Vec<(u64, [u8; 32])>,
}

fn writer(kind: Kind, tag: Option<&[u8; 16]>) -> Writer {
    let mut w = Writer::with_magic(MAGIC);
    w.u8(VERSION);
    w.u8(kind as u8);
    if let Some(tag) = tag {
        w.bytes(tag);
    }
    w
}

fn write_ids(w: &mut Writer, ids: &[u64]) {
    w.count(ids.len());
    ids.iter().for_each(|&id| w.u64(id));
}

fn write_id_blobs<const N: usize>(w: &mut Writer, items: &[(u64, [u8; N])]) {
    w.count(items.len());
    for (id, blob) in items {
        w.u64(*id);
        w.bytes(blob);
    }
}

/// Checks the header: magic, version, kind and (when given) the round tag.
fn open<'a>(bytes: &'a [u8], kind: Kind, tag: Option<&[u8; 16]>) -> Result<Reader<'a>> {
    let mut r = Reader::new(bytes, kind.name());
    r.magic(MAGIC)?;
    let version = r.u8()?;
    if version != VERSION {
        return Err(r.malformed(format!("unsupported version {version} (this build reads {VERSION})")));
    }
    let found = r.u8()?;
    if found != kind as u8 {
        return Err(r.malformed(format!(
            "message kind {found} where {} ({}) was expected",
            kind as u8,
            kind.name()
        )));
    }
    if let Some(tag) = tag {
        if r.take(16)? != tag {
            return Err(Error::SecAgg(format!(
                "{}: the message belongs to another round or parameter set",
                kind.name()
            )));
        }
    }
    Ok(r)
}

fn ascending(r: &Reader, ids: impl Iterator<Item = u64>) -> Result<()> {
    let mut last = None;
    for id in ids {
        if last.is_some_and(|l| l >= id) {
            return Err(r.malformed(format!("ids not strictly ascending (owner {id})")));
        }
        last = Some(id);
    }
    Ok(())
}

fn read_ids(r: &mut Reader) -> Result<Vec<u64>> {
    let count = r.count(8)?;
    let ids = (0..count).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
    ascending(r, ids.iter().copied())?;
    Ok(ids)
}

fn read_id_blobs<const N: usize>(r: &mut Reader) -> Result<Vec<(u64, [u8; N])>> {
    let count = r.count(8 + N)?;
    let items = (0..count).map(|_| Ok((r.u64()?, r.array()?))).collect::<Result<Vec<_>>>()?;
    ascending(r, items.iter().map(|(id, _)| *id))?;
    Ok(items)
}

pub fn encode_params(spec: &ParamSpec) -> Vec<u8> {
    let mut w = writer(Kind::Params, None);
    write_ids(&mut w, &spec.owners);
    w.count(spec.threshold);
    w.count(spec.length);
    w.u64(spec.bound.to_bits());
    w.u8(spec.frac_bits as u8);
    w.u8(spec.ring_bits as u8);
    w.count(spec.neighbours.unwrap_or(spec.owners.len().saturating_sub(1)));
    w.count(spec.context.len());
    w.bytes(&spec.context);
    w.into_bytes()
}

/// The spec in the bytes; [`super::Params::from_bytes`] then checks it as any other.
pub fn decode_params(bytes: &[u8]) -> Result<ParamSpec> {
    let mut r = open(bytes, Kind::Params, None)?;
    let owners = read_ids(&mut r)?;
    let threshold = r.u32()? as usize;
    let length = r.u32()? as usize;
    if length > MAX_LENGTH {
        return Err(r.malformed(format!("length {length} above {MAX_LENGTH}")));
    }
    let bound = f64::from_bits(r.u64()?);
    let frac_bits = r.u8()? as u32;
    let ring_bits = r.u8()? as u32;
    let neighbours = Some(r.u32()? as usize);
    let len = r.count(1)?;
    if len > MAX_CONTEXT {
        return Err(r.malformed(format!("{len} bytes of context, at most {MAX_CONTEXT}")));
    }
    let context = r.take(len)?.to_vec();
    r.finish()?;
    Ok(ParamSpec { owners, threshold, length, bound, frac_bits, ring_bits, neighbours, context })
}

pub fn encode_advert(tag: &[u8; 16], a: &Advert) -> Vec<u8> {
    let mut w = writer(Kind::Advert, Some(tag));
    w.u64(a.sender);
    w.bytes(&a.c_pk);
    w.bytes(&a.s_pk);
    w.into_bytes()
}

pub fn decode_advert(tag: &[u8; 16], bytes: &[u8]) -> Result<Advert> {
    let mut r = open(bytes, Kind::Advert, Some(tag))?;
    let a = Advert { sender: r.u64()?, c_pk: r.array()?, s_pk: r.array()? };
    r.finish()?;
    Ok(a)
}

/// The adverts of the owners that advertised, ascending by id.
pub fn encode_roster(tag: &[u8; 16], adverts: &[Advert]) -> Vec<u8> {
    let mut w = writer(Kind::Roster, Some(tag));
    w.count(adverts.len());
    for a in adverts {
        w.u64(a.sender);
        w.bytes(&a.c_pk);
        w.bytes(&a.s_pk);
    }
    w.into_bytes()
}

pub fn decode_roster(tag: &[u8; 16], bytes: &[u8]) -> Result<Vec<Advert>> {
    let mut r = open(bytes, Kind::Roster, Some(tag))?;
    let count = r.count(72)?;
    let adverts = (0..count)
        .map(|_| Ok(Advert { sender: r.u64()?, c_pk: r.array()?, s_pk: r.array()? }))
        .collect::<Result<Vec<_>>>()?;
    ascending(&r, adverts.iter().map(|a| a.sender))?;
    r.finish()?;
    Ok(adverts)
}

fn encode_envelopes(kind: Kind, tag: &[u8; 16], e: &Envelopes) -> Vec<u8> {
    let mut w = writer(kind, Some(tag));
    w.u64(e.owner);
    write_id_blobs(&mut w, &e.ciphertexts);
    w.into_bytes()
}

fn decode_envelopes(kind: Kind, tag: &[u8; 16], bytes: &[u8]) -> Result<Envelopes> {
    let mut r = open(bytes, kind, Some(tag))?;
    let e = Envelopes { owner: r.u64()?, ciphertexts: read_id_blobs(&mut r)? };
    r.finish()?;
    Ok(e)
}

/// A sender's ciphertexts, keyed by recipient.
pub fn encode_bundle(tag: &[u8; 16], e: &Envelopes) -> Vec<u8> {
    encode_envelopes(Kind::Bundle, tag, e)
}

pub fn decode_bundle(tag: &[u8; 16], bytes: &[u8]) -> Result<Envelopes> {
    decode_envelopes(Kind::Bundle, tag, bytes)
}

/// A recipient's ciphertexts, keyed by sender.
pub fn encode_inbox(tag: &[u8; 16], e: &Envelopes) -> Vec<u8> {
    encode_envelopes(Kind::Inbox, tag, e)
}

pub fn decode_inbox(tag: &[u8; 16], bytes: &[u8]) -> Result<Envelopes> {
    decode_envelopes(Kind::Inbox, tag, bytes)
}

/// Bytes per element of Z_{2^k}: ceil(k/8).
fn element_bytes(ring_bits: u32) -> usize {
    ring_bits.div_ceil(8) as usize
}

pub fn encode_masked(tag: &[u8; 16], ring_bits: u32, m: &Masked) -> Vec<u8> {
    let width = element_bytes(ring_bits);
    let mut w = writer(Kind::Masked, Some(tag));
    w.u64(m.sender);
    w.count(m.values.len());
    for v in &m.values {
        w.bytes(&v.to_le_bytes()[..width]);
    }
    w.into_bytes()
}

/// A masked input of exactly `length` elements, each below 2^k.
pub fn decode_masked(tag: &[u8; 16], ring_bits: u32, length: usize, bytes: &[u8]) -> Result<Masked> {
    let width = element_bytes(ring_bits);
    let mask = super::fixed_point::ring_mask(ring_bits);
    let mut r = open(bytes, Kind::Masked, Some(tag))?;
    let sender = r.u64()?;
    let count = r.count(width)?;
    if count != length {
        return Err(r.malformed(format!("{count} values where the round has {length}")));
    }
    let body = r.take(count * width)?;
    let values: Vec<u64> = body
        .chunks_exact(width)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    if let Some(i) = values.iter().position(|&v| v & !mask != 0) {
        return Err(r.malformed(format!("value {i} does not fit in {ring_bits} bits")));
    }
    r.finish()?;
    Ok(Masked { sender, values })
}

pub fn encode_unmask_request(tag: &[u8; 16], q: &UnmaskRequest) -> Vec<u8> {
    let mut w = writer(Kind::UnmaskRequest, Some(tag));
    write_ids(&mut w, &q.survivors);
    write_ids(&mut w, &q.dropped);
    w.into_bytes()
}

pub fn decode_unmask_request(tag: &[u8; 16], bytes: &[u8]) -> Result<UnmaskRequest> {
    let mut r = open(bytes, Kind::UnmaskRequest, Some(tag))?;
    let q = UnmaskRequest { survivors: read_ids(&mut r)?, dropped: read_ids(&mut r)? };
    r.finish()?;
    Ok(q)
}

pub fn encode_unmask_answer(tag: &[u8; 16], a: &UnmaskAnswer) -> Vec<u8> {
    let mut w = writer(Kind::UnmaskAnswer, Some(tag));
    w.u64(a.sender);
    write_id_blobs(&mut w, &a.self_mask);
    write_id_blobs(&mut w, &a.mask_key);
    w.into_bytes()
}

pub fn decode_unmask_answer(tag: &[u8; 16], bytes: &[u8]) -> Result<UnmaskAnswer> {
    let mut r = open(bytes, Kind::UnmaskAnswer, Some(tag))?;
    let a = UnmaskAnswer {
        sender: r.u64()?,
        self_mask: read_id_blobs(&mut r)?,
        mask_key: read_id_blobs(&mut r)?,
    };
    r.finish()?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: [u8; 16] = [7; 16];

    #[test]
    fn messages_round_trip_and_damage_is_refused() {
        let q = UnmaskRequest { survivors: vec![1, 5, 9], dropped: vec![3] };
        let bytes = encode_unmask_request(&TAG, &q);
        assert_eq!(decode_unmask_request(&TAG, &bytes).unwrap(), q);
        assert!(matches!(decode_unmask_request(&[8; 16], &bytes), Err(Error::SecAgg(_))));
        assert!(matches!(decode_masked(&TAG, 64, 1, &bytes), Err(Error::Malformed(_))));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(decode_unmask_request(&TAG, &extra), Err(Error::Malformed(_))));
        for cut in 0..bytes.len() {
            assert!(decode_unmask_request(&TAG, &bytes[..cut]).is_err());
        }
        let unsorted = UnmaskRequest { survivors: vec![5, 1], dropped: vec![] };
        assert!(decode_unmask_request(&TAG, &encode_unmask_request(&TAG, &unsorted)).is_err());

        let m = Masked { sender: 4, values: vec![0, 0xff_ffff_ffff, 17] };
        let bytes = encode_masked(&TAG, 40, &m);
        assert_eq!(bytes.len(), 22 + 8 + 4 + 3 * 5);
        assert_eq!(decode_masked(&TAG, 40, 3, &bytes).unwrap(), m);
        assert!(decode_masked(&TAG, 40, 4, &bytes).is_err());
        // 0xff.. in 36 bits: the top nibble of the last byte must be zero.
        assert!(decode_masked(&TAG, 36, 3, &encode_masked(&TAG, 36, &m)).is_err());

        // A huge announced count is refused before anything is allocated.
        let mut huge = writer(Kind::Roster, Some(&TAG));
        huge.u32(u32::MAX);
        assert!(decode_roster(&TAG, &huge.into_bytes()).is_err());
    }
}
