//! The HE Standard's 128-bit bounds on log2(QP) for a ternary secret.

/// Largest total modulus size in bits (special primes included) that keeps 128-bit classical
/// security for a uniform ternary secret, by ring degree (Albrecht et al., HE Standard 2018,
/// Table 1). None when the degree is outside the table.
pub fn max_log_qp_128(log_n: u32) -> Option<f64> {
    match log_n {
        10 => Some(27.0),
        11 => Some(54.0),
        12 => Some(109.0),
        13 => Some(218.0),
        14 => Some(438.0),
        15 => Some(881.0),
        16 => Some(1772.0),
        _ => None,
    }
}
