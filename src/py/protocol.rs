//! Bindings for the protocol layer: sanitisation and masked refreshes over bytes.

use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::ckks::Context;
use crate::error::Error;
use crate::he::refresh::Refresher;
use crate::protocol::refresh_wire::{answer, RemoteOwner};
use crate::protocol::sanitize;

use super::block::PyPackedBatch;
use super::ckks::{PyEvaluationKeys, PySecretKey};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(sanitize_batch, m)?)?;
    m.add_function(wrap_pyfunction!(answer_refresh, m)?)?;
    m.add_function(wrap_pyfunction!(permutation_rotation_steps, m)?)?;
    Ok(())
}

/// The owner that answers masked refreshes: its secret key in process, or a Python callable
/// from request bytes to reply bytes (called with the GIL held, from a worker thread).
pub(crate) fn refresher(ctx: &Context, owner: &Bound<'_, PyAny>) -> PyResult<Arc<dyn Refresher>> {
    if let Ok(sk) = owner.cast::<PySecretKey>() {
        return Ok(sk.get().key.clone());
    }
    if !owner.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "owner must be a SecretKey or a callable from refresh-request bytes to reply bytes, got {}",
            owner.get_type().name()?
        )));
    }
    let callback: Py<PyAny> = owner.clone().unbind();
    let send = move |request: Vec<u8>| -> crate::error::Result<Vec<u8>> {
        Python::attach(|py| {
            let reply = callback.call1(py, (PyBytes::new(py, &request),))?;
            reply.extract::<Vec<u8>>(py)
        })
        .map_err(|e| Error::Callback(format!("the owner's refresh failed: {e}")))
    };
    Ok(Arc::new(RemoteOwner::new(ctx.clone(), send)))
}

/// Permutes, zeroes outside the payload, re-randomises and floods a batch before it leaves
/// the provider (see `blindfed.protocol.sanitize`).
#[pyfunction]
#[pyo3(name = "sanitize", signature = (batch, order, keys, *, flood_bits = 8))]
fn sanitize_batch(
    py: Python<'_>,
    batch: &PyPackedBatch,
    order: Vec<usize>,
    keys: &PyEvaluationKeys,
    flood_bits: u32,
) -> PyResult<PyPackedBatch> {
    let keys = keys.keys.clone();
    let inner = py.detach(|| sanitize::permute_and_sanitize(&batch.inner, &order, &keys, flood_bits))?;
    Ok(PyPackedBatch { inner })
}

/// The owner's answer to a masked-refresh request: decrypt (masked, noise-like values) and
/// re-encrypt at the level the request names.
#[pyfunction]
fn answer_refresh<'py>(
    py: Python<'py>,
    secret_key: &PySecretKey,
    request: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let sk = secret_key.key.clone();
    let request = request.to_vec();
    let reply = py.detach(|| answer(&sk, &request))?;
    Ok(PyBytes::new(py, &reply))
}

/// Rotation steps a permutation of samples within windows of `window` needs.
#[pyfunction]
fn permutation_rotation_steps(tokens: usize, window: usize) -> Vec<i64> {
    sanitize::rotation_steps(tokens, window)
}
