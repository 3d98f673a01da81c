//! Arithmetic in GF(2^8) modulo the AES polynomial x^8 + x^4 + x^3 + x + 1, in constant time.
//!
//! Shamir shares of secret keys pass through these operations, so nothing branches or indexes
//! memory on a value: multiplication is eight masked shift-and-add steps, and the inverse is
//! the fixed exponentiation a^254 (Fermat), which maps 0 to 0. No lookup tables, whose cache
//! footprint would leak the operands.

/// Addition (and subtraction): exclusive or.
#[inline]
pub fn add(a: u8, b: u8) -> u8 {
    a ^ b
}

/// Product modulo x^8 + x^4 + x^3 + x + 1, without branches on the operands.
#[inline]
pub fn mul(a: u8, b: u8) -> u8 {
    let (mut a, mut b, mut p) = (a, b, 0u8);
    for _ in 0..8 {
        // All ones when the low bit of b is set, else zero.
        p ^= a & 0u8.wrapping_sub(b & 1);
        // Reduce by the polynomial when the shift carries out of the top bit.
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    p
}

/// The multiplicative inverse, a^254; `inv(0)` is 0. A fixed addition chain, so the time does
/// not depend on `a`.
pub fn inv(a: u8) -> u8 {
    let a2 = mul(a, a);
    let a3 = mul(a2, a);
    let a6 = mul(a3, a3);
    let a12 = mul(a6, a6);
    let a15 = mul(a12, a3);
    let a30 = mul(a15, a15);
    let a60 = mul(a30, a30);
    let a63 = mul(a60, a3);
    let a126 = mul(a63, a63);
    let a127 = mul(a126, a);
    mul(a127, a127)
}

/// The quotient a / b (b must not be 0; callers divide only by public, distinct x-coordinates).
#[inline]
pub fn div(a: u8, b: u8) -> u8 {
    mul(a, inv(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference multiplication: carry-less product, then long division by 0x11b.
    fn slow_mul(a: u8, b: u8) -> u8 {
        let mut p: u16 = 0;
        for i in 0..8 {
            if (b >> i) & 1 == 1 {
                p ^= (a as u16) << i;
            }
        }
        for i in (8..16).rev() {
            if (p >> i) & 1 == 1 {
                p ^= 0x11b << (i - 8);
            }
        }
        p as u8
    }

    #[test]
    fn multiplication_matches_the_reference_and_is_commutative_for_all_pairs() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let p = mul(a, b);
                assert_eq!(p, slow_mul(a, b), "{a} * {b}");
                assert_eq!(p, mul(b, a), "{a} * {b} commutes");
            }
        }
        // A known AES value: {57} * {83} = {c1} (FIPS-197, 4.2).
        assert_eq!(mul(0x57, 0x83), 0xc1);
    }

    #[test]
    fn every_nonzero_element_has_an_inverse() {
        assert_eq!(inv(0), 0);
        for a in 1..=255u8 {
            let i = inv(a);
            assert_eq!(mul(a, i), 1, "{a} * inv({a}) = {a} * {i}");
            assert_eq!(div(a, a), 1);
        }
    }

    #[test]
    fn field_laws_hold() {
        for a in 0..=255u8 {
            assert_eq!(mul(a, 1), a);
            assert_eq!(mul(a, 0), 0);
            assert_eq!(add(a, a), 0);
            for b in (0..=255u8).step_by(7) {
                for c in (0..=255u8).step_by(11) {
                    assert_eq!(mul(a, mul(b, c)), mul(mul(a, b), c), "associativity");
                    assert_eq!(mul(a, add(b, c)), add(mul(a, b), mul(a, c)), "distributivity");
                }
            }
        }
    }
}
