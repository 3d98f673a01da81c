//! PyO3 bindings: conversion only. Every heavy call releases the GIL; every engine error
//! becomes a `ValueError` subclass with the engine's message.

mod approx;
mod array;
mod block;
mod ckks;
mod distill;
mod protocol;
mod secagg;

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::error::Error;

create_exception!(_core, CkksError, PyValueError, "An operation the CKKS engine refused.");
create_exception!(_core, InsecureParametersError, CkksError, "Parameters below 128-bit security.");
create_exception!(_core, MalformedDataError, CkksError, "Bytes that do not decode to a valid object.");
create_exception!(_core, MissingKeyError, CkksError, "An operation needs a key that was not provided.");
create_exception!(_core, ShapeError, CkksError, "Arrays, weights or batches of the wrong size or layout.");
create_exception!(
    _core,
    OutOfRangeError,
    CkksError,
    "A setting or value outside what the operation accepts."
);
create_exception!(_core, NonFiniteError, CkksError, "NaN or infinity where finite numbers are needed.");
create_exception!(
    _core,
    SpecError,
    CkksError,
    "An approximation or student spec that does not parse or fit its slot."
);
create_exception!(
    _core,
    CalibrationError,
    CkksError,
    "Calibration that does not settle, or data outside the calibrated ranges."
);
create_exception!(
    _core,
    CallbackError,
    CkksError,
    "A callback of the caller (progress, a remote owner) that failed."
);
create_exception!(_core, SecAggError, PyValueError, "A step of secure aggregation that was refused.");
create_exception!(_core, TamperedShareError, SecAggError, "Encrypted shares that failed authentication.");
create_exception!(_core, FixedPointOverflowError, SecAggError, "A value outside the fixed-point bound.");

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Insecure(_) => InsecureParametersError::new_err(msg),
            Error::Malformed(_) => MalformedDataError::new_err(msg),
            Error::MissingKey(_) => MissingKeyError::new_err(msg),
            Error::Shape(_) => ShapeError::new_err(msg),
            Error::OutOfRange(_) => OutOfRangeError::new_err(msg),
            Error::NotFinite(_) => NonFiniteError::new_err(msg),
            Error::Spec(_) => SpecError::new_err(msg),
            Error::Calibration(_) => CalibrationError::new_err(msg),
            Error::Callback(_) => CallbackError::new_err(msg),
            Error::SecAgg(_) => SecAggError::new_err(msg),
            Error::TamperedShare { .. } => TamperedShareError::new_err(msg),
            Error::Overflow(_) => FixedPointOverflowError::new_err(msg),
            _ => CkksError::new_err(msg),
        }
    }
}

/// Uses `threads` worker threads for heavy operations (0: one per core).
#[pyfunction]
fn set_num_threads(threads: usize) -> PyResult<()> {
    Ok(crate::parallel::set_num_threads(threads)?)
}

/// The number of worker threads heavy operations use.
#[pyfunction]
fn num_threads() -> usize {
    crate::parallel::num_threads()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    crate::keep_freed_memory();
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CkksError", py.get_type::<CkksError>())?;
    m.add("InsecureParametersError", py.get_type::<InsecureParametersError>())?;
    m.add("MalformedDataError", py.get_type::<MalformedDataError>())?;
    m.add("MissingKeyError", py.get_type::<MissingKeyError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("OutOfRangeError", py.get_type::<OutOfRangeError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("SpecError", py.get_type::<SpecError>())?;
    m.add("CalibrationError", py.get_type::<CalibrationError>())?;
    m.add("CallbackError", py.get_type::<CallbackError>())?;
    m.add("SecAggError", py.get_type::<SecAggError>())?;
    m.add("TamperedShareError", py.get_type::<TamperedShareError>())?;
    m.add("FixedPointOverflowError", py.get_type::<FixedPointOverflowError>())?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    ckks::register(m)?;
    approx::register(m)?;
    block::register(m)?;
    distill::register(m)?;
    protocol::register(m)?;
    secagg::register(m)
}
