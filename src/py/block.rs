//! Bindings for the FHE-friendly block and packed batches.

use std::collections::HashMap;
use std::sync::Arc;

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::error::Error;
use crate::he::backend::Progress;
use crate::he::cost::Cost;
use crate::he::packed::PackedBatch;
use crate::nn::approx::Approximation;
use crate::nn::block::{Block, BlockShape, BlockWeights};
use crate::nn::families::{AffineStats, BlockApprox, Denominator, Norm};
use crate::nn::plan::{plan_block, BlockPlan};
use crate::nn::spec::StudentSpec;

use super::approx::{PyApproximation, PyStudentSpec};
use super::ckks::{PyEvaluationKeys, PyParameters, PySecretKey};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(owner_normalise, m)?)?;
    m.add_class::<PyBlock>()?;
    m.add_class::<PyPackedBatch>()?;
    Ok(())
}

fn flat(a: &PyReadonlyArrayDyn<'_, f64>) -> Vec<f64> {
    a.as_array().iter().copied().collect()
}

/// `(x - mean) / sqrt(var + eps)` along the last axis of a float64 array: what an owner sends
/// for a block it normalises in the clear.
#[pyfunction]
#[pyo3(signature = (x, eps=1e-6))]
fn owner_normalise<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f64>,
    eps: f64,
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    let shape = x.shape().to_vec();
    let width = shape.last().copied().unwrap_or(0);
    let values = flat(&x);
    let out = py.detach(|| crate::nn::block::owner_normalise(&values, width, eps))?;
    PyArray1::from_vec(py, out).reshape(shape)
}

fn cost_dict<'py>(py: Python<'py>, c: &Cost) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("key_switches", c.key_switches())?;
    d.set_item("relinearizations", c.relinearizations)?;
    d.set_item("rotations", c.rotations)?;
    d.set_item("hoisted_rotations", c.hoisted_rotations)?;
    d.set_item("tensor_products", c.tensor_products)?;
    d.set_item("plain_products", c.plain_products)?;
    d.set_item("linear_terms", c.linear_terms)?;
    d.set_item("refresh_rounds", c.refresh_rounds)?;
    d.set_item("refreshed_ciphertexts", c.refreshed_ciphertexts)?;
    d.set_item("refreshed_by_level", c.refreshed_by_level.clone())?;
    d.set_item("conjugations", c.conjugations)?;
    d.set_item("lowest_level", c.lowest_level)?;
    // Measured wall seconds by kind of operation (encrypted evaluations only).
    let seconds = PyDict::new(py);
    for (kind, nanos) in &c.nanos {
        seconds.set_item(kind, *nanos as f64 * 1e-9)?;
    }
    d.set_item("seconds", seconds)?;
    Ok(d)
}

/// Activations (batch, tokens, features) encrypted in the token layout; the layout travels
/// with the ciphertexts.
#[pyclass(name = "PackedBatch", module = "blindfed.block", frozen)]
pub struct PyPackedBatch {
    pub(crate) inner: PackedBatch,
}

#[pymethods]
impl PyPackedBatch {
    /// Encrypts a float64 array of shape (batch, tokens, features) with the owner's key;
    /// `complex` packs two features per ciphertext (half the bytes; the evaluator then needs
    /// the conjugation key).
    #[staticmethod]
    #[pyo3(signature = (secret_key, x, *, complex=true))]
    fn encrypt(
        py: Python<'_>,
        secret_key: &PySecretKey,
        x: PyReadonlyArrayDyn<'_, f64>,
        complex: bool,
    ) -> PyResult<Self> {
        let shape = x.shape().to_vec();
        if shape.len() != 3 {
            return Err(Error::Shape(format!(
                "expected an array of shape (batch, tokens, features), got {shape:?}"
            ))
            .into());
        }
        let values = flat(&x);
        let sk = secret_key.key.clone();
        let inner =
            py.detach(|| PackedBatch::encrypt(&sk, shape[1], shape[2], &values, shape[0], complex))?;
        Ok(PyPackedBatch { inner })
    }

    /// The values as a float64 array of shape (batch, tokens, features).
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        secret_key: &PySecretKey,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let sk = secret_key.key.clone();
        let values = py.detach(|| self.inner.decrypt(&sk))?;
        let l = &self.inner.layout;
        PyArray1::from_vec(py, values).reshape(vec![self.inner.batch, l.tokens, l.features])
    }

    #[getter]
    fn shape(&self) -> (usize, usize, usize) {
        (self.inner.batch, self.inner.layout.tokens, self.inner.layout.features)
    }

    #[getter]
    fn level(&self) -> usize {
        self.inner.level()
    }

    /// Whether two features share each ciphertext.
    #[getter]
    fn complex(&self) -> bool {
        self.inner.complex
    }

    /// Ciphertexts per group and number of groups.
    #[getter]
    fn ciphertexts(&self) -> usize {
        self.inner.groups.iter().map(|g| g.len()).sum()
    }

    #[getter]
    fn samples_per_group(&self) -> usize {
        self.inner.layout.samples_per_group()
    }

    /// A masked refresh of every ciphertext: `owner` (a `SecretKey`, or a callable from request
    /// bytes to reply bytes) sees only uniformly masked values and re-encrypts them; the
    /// result holds the same values one level below the top.
    fn refreshed(&self, py: Python<'_>, owner: &Bound<'_, PyAny>) -> PyResult<Self> {
        let owner = super::protocol::refresher(self.inner.context(), owner)?;
        let inner = py.detach(|| self.inner.refreshed(owner.as_ref()))?;
        Ok(PyPackedBatch { inner })
    }

    /// The same batch with every ciphertext dropped to `level` (fewer bytes to send).
    fn at_level(&self, py: Python<'_>, level: usize) -> PyResult<Self> {
        Ok(PyPackedBatch { inner: py.detach(|| self.inner.at_level(level))? })
    }

    /// One batch per ciphertext group, in order (the last may hold fewer samples).
    fn split_groups(&self) -> Vec<Self> {
        self.inner.split_groups().into_iter().map(|inner| PyPackedBatch { inner }).collect()
    }

    /// The batch made of `parts`' groups in order (undoes `split_groups`; only the last part
    /// may leave a group part-full).
    #[staticmethod]
    fn concat(parts: Vec<PyRef<'_, PyPackedBatch>>) -> PyResult<Self> {
        let parts: Vec<PackedBatch> = parts.iter().map(|p| p.inner.clone()).collect();
        Ok(PyPackedBatch { inner: PackedBatch::concat(&parts)? })
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = py.detach(|| self.inner.to_bytes());
        PyBytes::new(py, &bytes)
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, params: &PyParameters, data: &[u8]) -> PyResult<Self> {
        let ctx = params.ctx.clone();
        Ok(PyPackedBatch { inner: py.detach(|| PackedBatch::from_bytes(&ctx, data))? })
    }

    fn __repr__(&self) -> String {
        let (b, t, f) = self.shape();
        format!(
            "PackedBatch(shape=({b}, {t}, {f}), level={}, ciphertexts={})",
            self.level(),
            self.ciphertexts()
        )
    }
}

const WEIGHT_NAMES: [&str; 16] = [
    "ln1_gamma",
    "ln1_beta",
    "wq",
    "bq",
    "wk",
    "bk",
    "wv",
    "bv",
    "wo",
    "bo",
    "ln2_gamma",
    "ln2_beta",
    "w1",
    "b1",
    "w2",
    "b2",
];

/// The FHE-friendly pre-norm transformer block.
#[pyclass(name = "Block", module = "blindfed.block", frozen)]
pub struct PyBlock {
    inner: Arc<Block>,
}

fn approximation(v: &Bound<'_, PyAny>, key: &str) -> PyResult<Approximation> {
    Ok(v.cast::<PyApproximation>()
        .map_err(|_| {
            PyTypeError::new_err(format!("approx['{key}'] must be a blindfed.approx.Approximation"))
        })?
        .get()
        .inner
        .clone())
}

fn floats(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<f64>> {
    v.extract::<Vec<f64>>().map_err(|_| PyTypeError::new_err(format!("{what} must be a sequence of floats")))
}

fn affine_stats(v: &Bound<'_, PyAny>, key: &str) -> PyResult<AffineStats> {
    let (mean, inv_std): (Bound<'_, PyAny>, Bound<'_, PyAny>) = v.extract().map_err(|_| {
        PyTypeError::new_err(format!("approx['norm']['{key}'] must be a (mean, inv_std) pair"))
    })?;
    Ok(AffineStats { mean: floats(&mean, "a mean")?, inv_std: floats(&inv_std, "an inverse deviation")? })
}

/// The block's families from `approx` (keys numerator, denominator, norm, gelu, eps; older
/// names exp, reciprocal, inv_sqrt are read as the first three) over `base`.
fn block_approx(d: Option<&Bound<'_, PyDict>>, mut a: BlockApprox) -> PyResult<BlockApprox> {
    let Some(d) = d else { return Ok(a) };
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        match key.as_str() {
            "numerator" | "exp" => a.numerator = approximation(&v, &key)?,
            "gelu" => a.gelu = approximation(&v, &key)?,
            "eps" => a.eps = v.extract()?,
            "denominator" | "reciprocal" => {
                a.denominator = match v.cast::<PyApproximation>() {
                    Ok(r) => Denominator::RowSum(r.get().inner.clone()),
                    Err(_) => Denominator::Constant(floats(&v, "a constant denominator")?),
                }
            }
            "norm" | "inv_sqrt" => {
                a.norm = match v.cast::<PyApproximation>() {
                    Ok(r) => Norm::LayerNorm(r.get().inner.clone()),
                    Err(_) => {
                        let stats = v.cast::<PyDict>().map_err(|_| {
                            PyTypeError::new_err(
                                "approx['norm'] is an inv_sqrt Approximation or {'norm1': (mean, inv_std), 'norm2': ...}",
                            )
                        })?;
                        let get = |k: &str| {
                            stats.get_item(k)?.ok_or_else(|| {
                                PyErr::from(Error::Spec(format!("approx['norm'] lacks '{k}'")))
                            })
                        };
                        Norm::Affine {
                            norm1: affine_stats(&get("norm1")?, "norm1")?,
                            norm2: affine_stats(&get("norm2")?, "norm2")?,
                        }
                    }
                }
            }
            _ => return Err(Error::Spec(format!("unknown approximation key '{key}'")).into()),
        }
    }
    Ok(a)
}

fn approx_dict<'py>(py: Python<'py>, a: &BlockApprox) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("numerator", PyApproximation::from(a.numerator.clone()))?;
    match &a.denominator {
        Denominator::RowSum(r) => d.set_item("denominator", PyApproximation::from(r.clone()))?,
        Denominator::Constant(c) => d.set_item("denominator", c.clone())?,
    }
    match &a.norm {
        Norm::LayerNorm(r) => d.set_item("norm", PyApproximation::from(r.clone()))?,
        Norm::Affine { norm1, norm2 } => {
            let stats = PyDict::new(py);
            stats.set_item("norm1", (norm1.mean.clone(), norm1.inv_std.clone()))?;
            stats.set_item("norm2", (norm2.mean.clone(), norm2.inv_std.clone()))?;
            d.set_item("norm", stats)?;
        }
    }
    d.set_item("gelu", PyApproximation::from(a.gelu.clone()))?;
    d.set_item("eps", a.eps)?;
    Ok(d)
}

impl PyBlock {
    /// The batch's values, checked against the block's (tokens, width).
    fn batch(&self, x: &PyReadonlyArrayDyn<'_, f64>) -> PyResult<(usize, Vec<f64>)> {
        let s = self.inner.shape;
        let shape = x.shape();
        if shape.len() != 3 || shape[1] != s.tokens || shape[2] != s.width {
            return Err(Error::Shape(format!(
                "expected an array of shape (batch, {}, {}), got {shape:?}",
                s.tokens, s.width
            ))
            .into());
        }
        Ok((shape[0], flat(x)))
    }

    fn shaped<'py>(
        &self,
        py: Python<'py>,
        batch: usize,
        values: Vec<f64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let s = self.inner.shape;
        PyArray1::from_vec(py, values).reshape(vec![batch, s.tokens, s.width])
    }
}

#[pymethods]
impl PyBlock {
    /// `weights` maps ln1_gamma, ln1_beta, wq, bq, wk, bk, wv, bv, wo, bo, ln2_gamma, ln2_beta,
    /// w1, b1, w2, b2 to float64 arrays (matrices shaped (out, in) as in torch). The families
    /// come from `spec` (a `StudentSpec`; the default one if None) with any of them replaced
    /// by `approx`: numerator, denominator (a reciprocal `Approximation` or one constant per
    /// head), norm (an inv_sqrt `Approximation` or affine statistics), gelu, eps.
    #[new]
    #[pyo3(signature = (weights, *, tokens, heads, approx=None, spec=None))]
    fn new(
        weights: &Bound<'_, PyDict>,
        tokens: usize,
        heads: usize,
        approx: Option<&Bound<'_, PyDict>>,
        spec: Option<PyRef<'_, PyStudentSpec>>,
    ) -> PyResult<Self> {
        let mut t: HashMap<&str, (Vec<usize>, Vec<f64>)> = HashMap::new();
        for name in WEIGHT_NAMES {
            let v =
                weights.get_item(name)?.ok_or_else(|| Error::Shape(format!("missing weight '{name}'")))?;
            let a: PyReadonlyArrayDyn<'_, f64> = v.extract().map_err(|_| {
                PyTypeError::new_err(format!("weight '{name}' must be a float64 numpy array"))
            })?;
            t.insert(name, (a.shape().to_vec(), flat(&a)));
        }
        if let Some(extra) = weights.keys().iter().find_map(|k| {
            let k: String = k.extract().unwrap_or_default();
            (!WEIGHT_NAMES.contains(&k.as_str())).then_some(k)
        }) {
            return Err(Error::Shape(format!("unknown weight '{extra}'")).into());
        }
        let (w1_shape, _) = &t["w1"];
        let (wq_shape, _) = &t["wq"];
        if w1_shape.len() != 2 || wq_shape.len() != 2 {
            return Err(Error::Shape("wq and w1 must be 2-D (out, in) matrices".into()).into());
        }
        let shape = BlockShape::new(tokens, wq_shape[1], heads, w1_shape[0])?;
        let mut take = |n: &str| t.remove(n).map(|(_, v)| v).unwrap_or_default();
        let w = BlockWeights {
            ln1_gamma: take("ln1_gamma"),
            ln1_beta: take("ln1_beta"),
            wq: take("wq"),
            bq: take("bq"),
            wk: take("wk"),
            bk: take("bk"),
            wv: take("wv"),
            bv: take("bv"),
            wo: take("wo"),
            bo: take("bo"),
            ln2_gamma: take("ln2_gamma"),
            ln2_beta: take("ln2_beta"),
            w1: take("w1"),
            b1: take("b1"),
            w2: take("w2"),
            b2: take("b2"),
        };
        let base = match spec {
            Some(s) => s.inner.clone(),
            None => StudentSpec::preset("default")?,
        };
        let a = block_approx(approx, base.block_approx(&shape))?;
        Ok(PyBlock { inner: Arc::new(Block::new(shape, w, a)?) })
    }

    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.shape;
        let d = PyDict::new(py);
        d.set_item("tokens", s.tokens)?;
        d.set_item("width", s.width)?;
        d.set_item("heads", s.heads)?;
        d.set_item("mlp", s.mlp)?;
        Ok(d)
    }

    /// The families in use, keyed numerator, denominator, norm, gelu, eps (as `approx` takes
    /// them).
    #[getter]
    fn approximations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        approx_dict(py, &self.inner.approx)
    }

    /// The block in f64 on a (batch, tokens, width) array, one sample at a time: the
    /// reference. `normalised`: N1 is the exact LayerNorm (the owner normalised the input).
    #[pyo3(signature = (x, *, normalised=false))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
        normalised: bool,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let (batch, values) = self.batch(&x)?;
        let block = self.inner.clone();
        let out = py.detach(|| block.forward_batch(&values, normalised))?;
        self.shaped(py, batch, out)
    }

    /// The plaintext mirror: the encrypted evaluation's exact arithmetic and level rules on
    /// f64 vectors in the token layout of `params` (`simulate` mode). `x_hat`: the input
    /// normalised by its owner, if it sent one.
    #[pyo3(signature = (x, *, params, x_hat=None))]
    fn mirror<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
        params: &PyParameters,
        x_hat: Option<PyReadonlyArrayDyn<'py, f64>>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let (batch, values) = self.batch(&x)?;
        let hat = x_hat.map(|h| self.batch(&h)).transpose()?.map(|(_, v)| v);
        let block = self.inner.clone();
        let ctx = params.ctx.clone();
        let out = py.detach(|| block.mirror_batch(&ctx, &values, hat.as_deref()))?;
        self.shaped(py, batch, out)
    }

    /// Inputs seen by each approximation on this data: arrays keyed numerator, reciprocal
    /// (the row sums, all heads), inv_sqrt, gelu.
    fn observe<'py>(&self, py: Python<'py>, x: PyReadonlyArrayDyn<'py, f64>) -> PyResult<Bound<'py, PyDict>> {
        let (_, values) = self.batch(&x)?;
        let block = self.inner.clone();
        let obs = py.detach(|| block.observe_batch(&values))?;
        let d = PyDict::new(py);
        for slot in ["numerator", "reciprocal", "inv_sqrt", "gelu"] {
            d.set_item(slot, PyArray1::from_vec(py, obs.inputs(slot).into_owned()))?;
        }
        Ok(d)
    }

    /// A copy whose ranges, constants and statistics come from this data, ranges widened by
    /// `margin`; repeated until the ranges hold (each approximation's inputs depend on the
    /// ones before it).
    #[pyo3(signature = (x, margin=0.2))]
    fn calibrated(&self, py: Python<'_>, x: PyReadonlyArrayDyn<'_, f64>, margin: f64) -> PyResult<Self> {
        let (_, values) = self.batch(&x)?;
        let block = self.inner.clone();
        let out = py.detach(|| block.calibrated(&values, margin))?;
        Ok(PyBlock { inner: Arc::new(out) })
    }

    /// Raises if an approximation's range does not contain what this data feeds it.
    fn check_ranges(&self, py: Python<'_>, x: PyReadonlyArrayDyn<'_, f64>) -> PyResult<()> {
        let (_, values) = self.batch(&x)?;
        let block = self.inner.clone();
        Ok(py.detach(|| block.check_ranges(&values))?)
    }

    /// Left-rotation steps an evaluation with `params` needs Galois keys for.
    fn rotation_steps(&self, params: &PyParameters) -> PyResult<Vec<i64>> {
        Ok(self.inner.rotation_steps(params.ctx.params.slots())?)
    }

    /// The smallest secure parameters for this block and the predicted cost of one full group.
    #[pyo3(signature = (*, scale_bits=30, levels=None))]
    fn plan<'py>(
        &self,
        py: Python<'py>,
        scale_bits: u32,
        levels: Option<usize>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let block = self.inner.clone();
        let plan: BlockPlan = py.detach(|| plan_block(&block, scale_bits, levels))?;
        let d = PyDict::new(py);
        let ctx = crate::ckks::Context::from_parameters(plan.params.clone())?;
        d.set_item("parameters", PyParameters { ctx })?;
        d.set_item("log_n", plan.spec.log_n)?;
        d.set_item("levels", plan.spec.levels)?;
        d.set_item("scale_bits", plan.spec.scale_bits)?;
        d.set_item("samples_per_group", plan.layout.samples_per_group())?;
        d.set_item("refresh_level", plan.refresh_level)?;
        d.set_item("rotation_steps", plan.rotation_steps.clone())?;
        // Complex-packed inputs are separated with conjugations.
        d.set_item("conjugate", true)?;
        let depth = PyDict::new(py);
        depth.set_item("attention", plan.depth.attention)?;
        depth.set_item("mlp", plan.depth.mlp)?;
        depth.set_item("inv_sqrt", plan.depth.inv_sqrt)?;
        depth.set_item("reciprocal", plan.depth.reciprocal)?;
        depth.set_item("narrow_step", plan.depth.narrow_step)?;
        d.set_item("depth", depth)?;
        d.set_item("cost", cost_dict(py, &plan.cost)?)?;
        d.set_item("normalised_cost", cost_dict(py, &plan.normalised_cost)?)?;
        Ok(d)
    }

    /// Evaluates the block on an encrypted batch. `owner` answers the masked refreshes: the
    /// owner's `SecretKey` (in process), or a callable taking a refresh request (bytes) and
    /// returning the owner's reply (bytes), typically a network round trip. `x_hat`: the
    /// input normalised by its owner, if it sent one. `progress`: called with the name of
    /// each stage as the evaluation enters it ("group 1/2", "attention head 1/3", "MLP part
    /// 2/4"); an exception it raises stops the evaluation. Returns the encrypted output and
    /// the operations counted.
    #[pyo3(signature = (batch, keys, owner, *, x_hat=None, progress=None))]
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        batch: &PyPackedBatch,
        keys: &PyEvaluationKeys,
        owner: &Bound<'py, PyAny>,
        x_hat: Option<PyRef<'py, PyPackedBatch>>,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<(PyPackedBatch, Bound<'py, PyDict>)> {
        let progress = progress.map(progress_callback).transpose()?;
        let block = self.inner.clone();
        let keys = keys.keys.clone();
        let owner = super::protocol::refresher(keys.context(), owner)?;
        // Borrowed, not copied: the provider's working set is the block's, not a second batch.
        let input = &batch.inner;
        let hat = x_hat.as_ref().map(|h| &h.inner);
        let (out, cost) = py.detach(|| block.evaluate_batch(&keys, owner, input, hat, progress))?;
        Ok((PyPackedBatch { inner: out }, cost_dict(py, &cost)?))
    }

    fn __repr__(&self) -> String {
        let s = self.inner.shape;
        format!("Block(tokens={}, width={}, heads={}, mlp={})", s.tokens, s.width, s.heads, s.mlp)
    }
}

/// A Python callable of one string as the core's progress report (called with the GIL held,
/// from the evaluating thread).
fn progress_callback(callback: Bound<'_, PyAny>) -> PyResult<Progress> {
    if !callback.is_callable() {
        return Err(PyTypeError::new_err(format!(
            "progress must be a callable taking a stage name, got {}",
            callback.get_type().name()?
        )));
    }
    let callback: Py<PyAny> = callback.unbind();
    Ok(Arc::new(move |stage: &str| {
        Python::attach(|py| callback.call1(py, (stage,)).map(drop))
            .map_err(|e| Error::Callback(format!("the progress callback failed: {e}")))
    }))
}
