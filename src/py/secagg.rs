//! Bindings for secure aggregation (SecAgg+): the round's parameters, an owner and the
//! server, every message as bytes and every batch of messages as a dict keyed by node id.

use std::collections::BTreeMap;

use crate::error::Error;
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use zeroize::Zeroize;

use crate::protocol::secagg::fixed_point::DEFAULT_FRAC_BITS;
use crate::protocol::secagg::{Owner, ParamSpec, Params, Server};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SECAGG_FRAC_BITS", DEFAULT_FRAC_BITS)?;
    m.add_class::<PySecAggParams>()?;
    m.add_class::<PySecAggOwner>()?;
    m.add_class::<PySecAggServer>()?;
    Ok(())
}

/// Messages from several owners: node id to bytes.
type Messages = BTreeMap<u64, Vec<u8>>;

/// The parameters of one secure-aggregation round, shared by the server and every owner.
#[pyclass(name = "SecAggParams", module = "blindfed._core", frozen)]
#[derive(Clone)]
pub struct PySecAggParams {
    params: Params,
}

#[pymethods]
impl PySecAggParams {
    #[new]
    #[pyo3(signature = (owners, threshold, length, bound, *, frac_bits=DEFAULT_FRAC_BITS, ring_bits=64, neighbours=None, context=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        owners: Vec<u64>,
        threshold: usize,
        length: usize,
        bound: f64,
        frac_bits: u32,
        ring_bits: u32,
        neighbours: Option<usize>,
        context: Vec<u8>,
    ) -> PyResult<Self> {
        let spec = ParamSpec { owners, threshold, length, bound, frac_bits, ring_bits, neighbours, context };
        Ok(PySecAggParams { params: Params::new(spec)? })
    }

    /// Owner node ids, ascending.
    #[getter]
    fn owners(&self) -> Vec<u64> {
        self.params.owners().to_vec()
    }
    #[getter]
    fn threshold(&self) -> usize {
        self.params.threshold()
    }
    #[getter]
    fn length(&self) -> usize {
        self.params.length()
    }
    #[getter]
    fn bound(&self) -> f64 {
        self.params.fixed_point().bound
    }
    #[getter]
    fn frac_bits(&self) -> u32 {
        self.params.fixed_point().frac_bits
    }
    #[getter]
    fn ring_bits(&self) -> u32 {
        self.params.fixed_point().ring_bits
    }
    /// Degree of the neighbour graph (n-1 when the graph is complete).
    #[getter]
    fn neighbours(&self) -> usize {
        self.params.neighbours()
    }
    #[getter]
    fn context<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.params.context())
    }

    /// The neighbours of `owner` in the round's graph, ascending.
    fn neighbours_of(&self, owner: u64) -> Vec<u64> {
        self.params.graph().neighbours(owner).to_vec()
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.params.to_bytes())
    }

    #[staticmethod]
    fn from_bytes(data: &[u8]) -> PyResult<Self> {
        Ok(PySecAggParams { params: Params::from_bytes(data)? })
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PySecAggParams>().is_ok_and(|o| o.get().params.to_bytes() == self.params.to_bytes())
    }

    fn __hash__(&self) -> u64 {
        u64::from_le_bytes(self.params.round_tag()[..8].try_into().expect("16-byte tag"))
    }

    fn __repr__(&self) -> String {
        let fp = self.params.fixed_point();
        format!(
            "SecAggParams(owners={}, threshold={}, length={}, bound={}, frac_bits={}, ring_bits={}, neighbours={})",
            self.params.owners().len(),
            self.params.threshold(),
            self.params.length(),
            fp.bound,
            fp.frac_bits,
            fp.ring_bits,
            self.params.neighbours()
        )
    }
}

/// One owner's side of a round; its secrets are zeroised when the object is freed.
#[pyclass(name = "SecAggOwner", module = "blindfed._core")]
pub struct PySecAggOwner {
    owner: Owner,
}

#[pymethods]
impl PySecAggOwner {
    /// `seed`: 32 secret bytes (from a CSPRNG) that all the owner's secrets of the round
    /// expand from, so that a new process can replay the stages; default: the OS CSPRNG.
    #[new]
    #[pyo3(signature = (params, me, *, seed=None))]
    fn new(params: &PySecAggParams, me: u64, seed: Option<&[u8]>) -> PyResult<Self> {
        let seed = match seed {
            None => None,
            Some(bytes) => Some(<[u8; 32]>::try_from(bytes).map_err(|_| {
                PyErr::from(Error::SecAgg(format!("seed must be 32 bytes, got {}", bytes.len())))
            })?),
        };
        let owner = Owner::new(params.params.clone(), me, seed);
        let mut seed = seed;
        seed.zeroize();
        Ok(PySecAggOwner { owner: owner? })
    }

    #[getter]
    fn id(&self) -> u64 {
        self.owner.id()
    }

    /// The next call expected: "advertise", "share", "mask", "unmask" or "done".
    #[getter]
    fn stage(&self) -> &'static str {
        self.owner.stage().name()
    }

    fn advertise<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.owner.advertise()?))
    }

    fn share<'py>(&mut self, py: Python<'py>, roster: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let roster = roster.to_vec();
        let owner = &mut self.owner;
        let bundle = py.detach(|| owner.share(&roster))?;
        Ok(PyBytes::new(py, &bundle))
    }

    fn mask<'py>(
        &mut self,
        py: Python<'py>,
        inbox: &[u8],
        values: PyReadonlyArray1<'py, f64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let inbox = inbox.to_vec();
        let values = values.as_array().to_vec();
        let owner = &mut self.owner;
        let masked = py.detach(|| owner.mask(&inbox, &values))?;
        Ok(PyBytes::new(py, &masked))
    }

    fn unmask<'py>(&mut self, py: Python<'py>, request: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.owner.unmask(request)?))
    }

    fn __repr__(&self) -> String {
        format!("SecAggOwner(id={}, stage='{}')", self.owner.id(), self.owner.stage().name())
    }
}

/// The server's side of a round.
#[pyclass(name = "SecAggServer", module = "blindfed._core")]
pub struct PySecAggServer {
    server: Server,
}

#[pymethods]
impl PySecAggServer {
    #[new]
    fn new(params: &PySecAggParams) -> Self {
        PySecAggServer { server: Server::new(params.params.clone()) }
    }

    /// The next call expected: "roster", "route", "collect", "aggregate" or "done".
    #[getter]
    fn stage(&self) -> &'static str {
        self.server.stage().name()
    }

    /// Owners whose masked inputs were summed, ascending (empty before `collect`).
    #[getter]
    fn survivors(&self) -> Vec<u64> {
        self.server.survivors().to_vec()
    }

    /// Owners that shared their secrets but sent no masked input (empty before `collect`).
    #[getter]
    fn dropped(&self) -> Vec<u64> {
        self.server.dropped().to_vec()
    }

    fn roster<'py>(&mut self, py: Python<'py>, adverts: Messages) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(py, &self.server.roster(&adverts)?))
    }

    fn route<'py>(&mut self, py: Python<'py>, bundles: Messages) -> PyResult<Bound<'py, PyDict>> {
        let server = &mut self.server;
        let inboxes = py.detach(|| server.route(&bundles))?;
        let out = PyDict::new(py);
        for (id, inbox) in inboxes {
            out.set_item(id, PyBytes::new(py, &inbox))?;
        }
        Ok(out)
    }

    fn collect<'py>(&mut self, py: Python<'py>, masked: Messages) -> PyResult<Bound<'py, PyBytes>> {
        let server = &mut self.server;
        let request = py.detach(|| server.collect(&masked))?;
        Ok(PyBytes::new(py, &request))
    }

    fn aggregate<'py>(&mut self, py: Python<'py>, answers: Messages) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let server = &mut self.server;
        let sums = py.detach(|| server.aggregate(&answers).map(|s| server.decode(&s)))?;
        Ok(PyArray1::from_vec(py, sums))
    }

    fn __repr__(&self) -> String {
        format!("SecAggServer(stage='{}')", self.server.stage().name())
    }
}
