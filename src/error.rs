//! The crate's error type; the Python binding maps every variant to a `ValueError` subclass.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum Error {
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    #[error("insecure parameters: {0} (pass insecure=True only for tests)")]
    Insecure(String),
    #[error("operands are at different levels ({0} and {1}); bring them to one level first")]
    LevelMismatch(usize, usize),
    #[error("operands have different scales (2^{0:.4} and 2^{1:.4}); adjust one of them first")]
    ScaleMismatch(f64, f64),
    #[error("not enough levels: {0}")]
    OutOfLevels(String),
    #[error("missing key: {0}")]
    MissingKey(String),
    /// Arrays, weights or batches of the wrong size or layout.
    #[error("wrong shape: {0}")]
    Shape(String),
    /// A setting or value outside what the operation accepts (a degree, a level, a range).
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// NaN or infinity where finite numbers are needed.
    #[error("not finite: {0}")]
    NotFinite(String),
    /// An approximation or student spec that does not parse or does not fit its slot.
    #[error("invalid spec: {0}")]
    Spec(String),
    /// Calibration that does not settle, or data outside the calibrated ranges.
    #[error("calibration: {0}")]
    Calibration(String),
    /// A three-polynomial ciphertext (a product not yet relinearised) where two are needed.
    #[error("relinearise first: {0}")]
    Unrelinearised(String),
    /// A callback from the caller (progress, a remote owner) that failed.
    #[error("{0}")]
    Callback(String),
    /// Anything else: misuse of an internal routine (an empty sum, a missing term), or a
    /// resource the system refused (threads).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("objects belong to different parameter sets")]
    ParameterMismatch,
    #[error("malformed data: {0}")]
    Malformed(String),
    #[error("secure aggregation: {0}")]
    SecAgg(String),
    #[error("secure aggregation: the shares from owner {from} to owner {to} failed authentication (tampered with or misrouted)")]
    TamperedShare { from: u64, to: u64 },
    #[error("fixed-point overflow: {0}")]
    Overflow(String),
}

pub type Result<T> = std::result::Result<T, Error>;
