//! The byte codec every wire format shares.
//!
//! Fields are little-endian and appended in order ([`Writer`]); a [`Reader`] checks every
//! length against the bytes left before it reads or allocates, names the message it reads in
//! every error ([`Error::Malformed`]), and refuses trailing bytes. A format (`ckks::serial`,
//! `protocol::secagg::wire`, `protocol::refresh_wire`, `he::packed`) owns its header and its
//! fields; how a field becomes bytes, and how bytes are checked, is written here once.

use std::fmt::Display;

use crate::error::{Error, Result};

/// An encoder: fields appended to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// A message starting with `magic`.
    pub fn with_magic(magic: &[u8; 4]) -> Self {
        let mut w = Writer::default();
        w.bytes(magic);
        w
    }

    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    /// A count or length as u32 (what every format uses for them).
    pub fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("counts and lengths on the wire fit in 32 bits"));
    }

    /// Bytes prefixed by their u32 length.
    pub fn framed(&mut self, b: &[u8]) {
        self.count(b.len());
        self.bytes(b);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A decoder over hostile bytes: every read is checked, every error names the message.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `bytes` as a `what` (the name errors carry).
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, pos: 0, what }
    }

    /// [`Error::Malformed`] naming the message.
    pub fn malformed(&self, msg: impl Display) -> Error {
        Error::Malformed(format!("{}: {msg}", self.what))
    }

    /// Bytes not read yet.
    pub fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.malformed(format!(
                "truncated: {n} bytes needed at offset {}, {} left",
                self.pos,
                self.left()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// A u32 count of items at least `item_bytes` long each, refused if the bytes left could
    /// not hold them (so a lying count never makes the caller allocate).
    pub fn count(&mut self, item_bytes: usize) -> Result<usize> {
        let count = self.u32()? as usize;
        if count.saturating_mul(item_bytes) > self.left() {
            return Err(self.malformed(format!(
                "{count} items of at least {item_bytes} bytes announced, {} bytes left",
                self.left()
            )));
        }
        Ok(count)
    }

    /// Bytes prefixed by their u32 length.
    pub fn framed(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// Checks that the message starts with `magic`.
    pub fn magic(&mut self, magic: &[u8; 4]) -> Result<()> {
        if self.left() < magic.len() || self.take(magic.len())? != magic {
            return Err(self.malformed("bad magic (not this kind of message)"));
        }
        Ok(())
    }

    /// The end of the message: no trailing bytes.
    pub fn finish(self) -> Result<()> {
        if self.left() != 0 {
            return Err(self.malformed(format!("{} trailing bytes", self.left())));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_every_shortfall_is_refused() {
        let mut w = Writer::with_magic(b"TEST");
        w.u8(7);
        w.u16(0x1234);
        w.u32(5);
        w.u64(u64::MAX);
        w.f64(-2.5);
        w.framed(b"abc");
        let bytes = w.into_bytes();
        let read = |bytes: &[u8]| -> Result<(u8, u16, u32, u64, f64, Vec<u8>)> {
            let mut r = Reader::new(bytes, "test message");
            r.magic(b"TEST")?;
            let out = (r.u8()?, r.u16()?, r.u32()?, r.u64()?, r.f64()?, r.framed()?.to_vec());
            r.finish()?;
            Ok(out)
        };
        assert_eq!(read(&bytes).unwrap(), (7, 0x1234, 5, u64::MAX, -2.5, b"abc".to_vec()));
        for len in 0..bytes.len() {
            let err = read(&bytes[..len]).unwrap_err().to_string();
            assert!(err.contains("test message"), "{err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read(&longer).unwrap_err().to_string().contains("1 trailing bytes"));
        assert!(read(b"XEST").is_err());
    }

    #[test]
    fn a_count_the_bytes_cannot_hold_is_refused() {
        let mut w = Writer::default();
        w.u32(1 << 30);
        w.bytes(&[0; 16]);
        let bytes = w.into_bytes();
        assert!(Reader::new(&bytes, "list").count(8).is_err());
        assert_eq!(Reader::new(&bytes, "list").count(0).unwrap(), 1 << 30);
        let mut r = Reader::new(&bytes[..12], "list");
        r.u32().unwrap();
        assert_eq!(r.count(0).unwrap(), 0);
    }
}
