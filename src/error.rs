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
