//! Real values as integers modulo 2^k: x becomes round(x * 2^f) in two's complement.
//!
//! The sum over all owners must never wrap, so encoding refuses (never clips) a value that is
//! not finite or whose magnitude exceeds the agreed bound, and the parameters guarantee that
//! n * ceil(bound * 2^f) < 2^(k-1). Then the sum of the encodings, read as a signed k-bit
//! integer, is exactly the sum of the rounded values.

use crate::error::{Error, Result};

/// Fractional bits of the fixed point unless a round says otherwise: 20 bits keep about six
/// decimal digits of each update, and a 64-bit ring then holds the sum of thousands of owners
/// at a bound of 2^20.
pub const DEFAULT_FRAC_BITS: u32 = 20;

/// The encoding shared by all owners and the server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedPoint {
    pub frac_bits: u32,
    pub ring_bits: u32,
    pub bound: f64,
}

impl FixedPoint {
    /// 2^k - 1: reduction modulo 2^k is a bitwise and.
    pub fn ring_mask(&self) -> u64 {
        ring_mask(self.ring_bits)
    }

    fn scale(&self) -> f64 {
        (self.frac_bits as f64).exp2()
    }

    /// The largest magnitude an encoded value can have, ceil(bound * 2^f).
    pub fn max_encoded(&self) -> f64 {
        (self.bound * self.scale()).ceil()
    }

    /// round(x * 2^f) as a signed integer, or an error naming the index and the value when x
    /// is not finite or |x| exceeds the bound.
    pub fn encode_signed(&self, values: &[f64]) -> Result<Vec<i64>> {
        let scale = self.scale();
        values
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if !x.is_finite() {
                    return Err(Error::Overflow(format!("value {x} at index {i} is not finite")));
                }
                if x.abs() > self.bound {
                    return Err(Error::Overflow(format!(
                        "value {x} at index {i} exceeds the bound {} (values are never clipped)",
                        self.bound
                    )));
                }
                // Scaling by a power of two is exact; the parameters keep the result below 2^62.
                Ok((x * scale).round() as i64)
            })
            .collect()
    }

    /// The encodings as elements of Z_{2^k} (two's complement, reduced).
    pub fn encode(&self, values: &[f64]) -> Result<Vec<u64>> {
        let mask = self.ring_mask();
        Ok(self.encode_signed(values)?.into_iter().map(|v| v as u64 & mask).collect())
    }

    /// Elements of Z_{2^k} read as signed integers in [-2^(k-1), 2^(k-1)).
    pub fn to_signed(&self, ring: &[u64]) -> Vec<i64> {
        let k = self.ring_bits;
        // Shift the sign bit of the k-bit value into bit 63 and back (arithmetic shift).
        ring.iter().map(|&v| ((v << (64 - k)) as i64) >> (64 - k)).collect()
    }

    /// Signed integers back to reals: v / 2^f.
    pub fn decode(&self, signed: &[i64]) -> Vec<f64> {
        let scale = self.scale();
        signed.iter().map(|&v| v as f64 / scale).collect()
    }
}

/// 2^k - 1 for 1 <= k <= 64.
pub fn ring_mask(ring_bits: u32) -> u64 {
    u64::MAX >> (64 - ring_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trips_within_half_an_ulp() {
        for (f, k) in [(20, 64), (8, 16), (0, 32), (30, 48)] {
            let fp = FixedPoint { frac_bits: f, ring_bits: k, bound: 100.0 };
            let xs = [0.0, -0.0, 1.5, -1.5, 99.999, -100.0, 100.0, 1e-9, -3.25e-3];
            let signed = fp.encode_signed(&xs).unwrap();
            let ring = fp.encode(&xs).unwrap();
            assert!(ring.iter().all(|&v| v <= fp.ring_mask()));
            assert_eq!(fp.to_signed(&ring), signed);
            for (x, y) in xs.iter().zip(fp.decode(&signed)) {
                assert!((x - y).abs() <= 0.5 / (f as f64).exp2(), "{x} -> {y} (f = {f})");
            }
        }
    }

    #[test]
    fn signed_reading_wraps_at_half_the_ring() {
        let fp = FixedPoint { frac_bits: 0, ring_bits: 16, bound: 1.0 };
        assert_eq!(fp.to_signed(&[0, 1, 0x7fff, 0x8000, 0xffff]), vec![0, 1, 32767, -32768, -1]);
        let fp = FixedPoint { ring_bits: 64, ..fp };
        assert_eq!(fp.to_signed(&[u64::MAX, 1 << 63]), vec![-1, i64::MIN]);
    }

    #[test]
    fn out_of_range_and_non_finite_values_are_refused_not_clipped() {
        let fp = FixedPoint { frac_bits: 20, ring_bits: 64, bound: 2.0 };
        let err = fp.encode(&[0.0, 1.0, 2.5]).unwrap_err();
        assert!(matches!(&err, Error::Overflow(m) if m.contains("index 2") && m.contains("2.5")), "{err}");
        let err = fp.encode(&[f64::NAN]).unwrap_err();
        assert!(matches!(&err, Error::Overflow(m) if m.contains("index 0") && m.contains("NaN")), "{err}");
        assert!(fp.encode(&[f64::NEG_INFINITY]).is_err());
        assert!(fp.encode(&[-2.0, 2.0]).is_ok());
    }
}
