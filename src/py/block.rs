//! Bindings for the FHE-friendly block: approximations, the block itself, packed batches.

use std::collections::HashMap;
use std::sync::Arc;

use numpy::{PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::he::backend::Backend;
use crate::he::cost::Cost;
use crate::he::encrypted::Encrypted;
use crate::he::mirror::Mirror;
use crate::he::packed::PackedBatch;
use crate::he::polynomial::{affine_coefficients, Basis};
use crate::nn::approx::{self, Approximation};
use crate::nn::block::{Block, BlockApprox, BlockShape, BlockWeights};
use crate::nn::plan::{plan_block, BlockPlan};

use super::array::RealArray;
use super::ckks::{PyEvaluationKeys, PyParameters, PySecretKey};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(approximation_preset, m)?)?;
    m.add_class::<PyApproximation>()?;
    m.add_class::<PyBlock>()?;
    m.add_class::<PyPackedBatch>()?;
    Ok(())
}

fn flat(a: &PyReadonlyArrayDyn<'_, f64>) -> Vec<f64> {
    a.as_array().iter().copied().collect()
}

/// The block's approximations by preset: "default" (ours) or "paper", keyed exp, reciprocal,
/// inv_sqrt, gelu (and eps).
#[pyfunction]
#[pyo3(signature = (name="default"))]
fn approximation_preset<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
    let a = match name {
        "default" => crate::nn::block::default_approx(),
        "paper" => crate::nn::block::paper_approx(),
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown preset {name:?}; expected 'default' or 'paper'"
            )))
        }
    };
    let d = PyDict::new(py);
    d.set_item("exp", PyApproximation { inner: a.exp })?;
    d.set_item("reciprocal", PyApproximation { inner: a.reciprocal })?;
    d.set_item("inv_sqrt", PyApproximation { inner: a.inv_sqrt })?;
    d.set_item("gelu", PyApproximation { inner: a.gelu })?;
    d.set_item("eps", a.eps)?;
    Ok(d)
}

/// One approximation of a non-polynomial function: the single source of its coefficients.
#[pyclass(name = "Approximation", module = "blindfed.approx", frozen)]
#[derive(Clone)]
pub struct PyApproximation {
    pub(crate) inner: Approximation,
}

#[pymethods]
impl PyApproximation {
    /// exp(x) ~ (1 + x / 2^r)^(2^r) on [lo, hi].
    #[staticmethod]
    fn exp_squaring(r: u32, lo: f64, hi: f64) -> PyResult<Self> {
        Ok(PyApproximation { inner: approx::exp_squaring(r, (lo, hi))? })
    }

    /// exp(x) by Chebyshev interpolation of `degree` on [lo, hi] (the default of the block).
    #[staticmethod]
    #[pyo3(signature = (lo, hi, degree=15))]
    fn exp_chebyshev(lo: f64, hi: f64, degree: usize) -> PyResult<Self> {
        Ok(PyApproximation { inner: approx::exp_chebyshev(lo, hi, degree)? })
    }

    /// exp(x) by its Taylor polynomial of `degree` on [lo, hi] (the paper: degree 6).
    #[staticmethod]
    #[pyo3(signature = (lo, hi, degree=6))]
    fn exp_taylor(lo: f64, hi: f64, degree: usize) -> PyResult<Self> {
        Ok(PyApproximation { inner: approx::exp_taylor(degree, (lo, hi))? })
    }

    /// 1/x on [lo, hi] by Goldschmidt iterations.
    #[staticmethod]
    fn goldschmidt(iterations: u32, lo: f64, hi: f64) -> PyResult<Self> {
        Ok(PyApproximation { inner: approx::goldschmidt(iterations, (lo, hi))? })
    }

    /// 1/sqrt(x) on [lo, hi]: Chebyshev initial guess, then Newton steps.
    #[staticmethod]
    #[pyo3(signature = (lo, hi, guess_degree=31, newton_steps=2))]
    fn inv_sqrt(lo: f64, hi: f64, guess_degree: usize, newton_steps: u32) -> PyResult<Self> {
        Ok(PyApproximation { inner: approx::inv_sqrt(lo, hi, guess_degree, newton_steps)? })
    }

    /// The paper's GELU: Quad(x) = 0.125 x^2 + 0.25 x + 0.5.
    #[staticmethod]
    fn gelu_quad() -> Self {
        PyApproximation { inner: approx::gelu_quad() }
    }

    /// GELU by a Chebyshev interpolant of `degree` on [lo, hi].
    #[staticmethod]
    fn gelu_chebyshev(lo: f64, hi: f64, degree: usize) -> PyResult<Self> {
        Ok(PyApproximation { inner: approx::gelu_chebyshev(lo, hi, degree)? })
    }

    /// The approximation evaluated element-wise (same steps as the encrypted evaluation).
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let out = x.as_array().mapv(|v| self.inner.eval(v));
        Ok(PyArrayDyn::from_owned_array(py, out))
    }

    /// (f(x), f'(x)) element-wise for a float32 or float64 array, in its precision: the
    /// forward and backward of the torch modules on CPU tensors.
    fn value_and_derivative<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let x = RealArray::extract(x, "x")?;
        let (y, dy) = py.detach(|| self.inner.eval_many_with_derivative(&x.values));
        Ok((x.like(py, y)?, x.like(py, dy)?))
    }

    /// The same kind of approximation refitted to the range [lo, hi].
    fn with_range(&self, lo: f64, hi: f64) -> PyResult<Self> {
        Ok(PyApproximation { inner: self.inner.with_range((lo, hi))? })
    }

    /// The exact function it approximates.
    fn exact<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let out = x.as_array().mapv(|v| self.inner.exact(v));
        Ok(PyArrayDyn::from_owned_array(py, out))
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.name()
    }

    /// The input range it is accurate on (calibrated or chosen).
    #[getter]
    fn range(&self) -> (f64, f64) {
        self.inner.range()
    }

    /// Levels one evaluation consumes.
    #[getter]
    fn depth(&self) -> usize {
        self.inner.depth()
    }

    /// (max absolute error, max relative error) against the exact function on the range.
    #[pyo3(signature = (samples=10001))]
    fn max_error(&self, samples: usize) -> (f64, f64) {
        self.inner.max_error(samples)
    }

    /// How many inputs fall outside the range (the mirror's out-of-range detector).
    fn out_of_range(&self, x: PyReadonlyArrayDyn<'_, f64>) -> usize {
        self.inner.out_of_range(&flat(&x))
    }

    /// The same kind of approximation with its range set from observed inputs.
    #[pyo3(signature = (x, margin=0.1))]
    fn calibrated(&self, x: PyReadonlyArrayDyn<'_, f64>, margin: f64) -> PyResult<Self> {
        let range = approx::calibrated_range(&flat(&x), margin)?;
        Ok(PyApproximation { inner: self.inner.with_range(range)? })
    }

    /// Everything needed to rebuild it elsewhere (torch modules read this).
    fn spec<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("name", self.inner.name())?;
        d.set_item("range", self.inner.range())?;
        d.set_item("depth", self.inner.depth())?;
        d.set_item("function", self.inner.function())?;
        match &self.inner {
            Approximation::Polynomial { poly, .. } => {
                d.set_item("kind", "polynomial")?;
                set_poly(&d, poly)?;
            }
            Approximation::ExpChebyshev { poly, squarings, .. } => {
                d.set_item("kind", "exp_chebyshev")?;
                d.set_item("squarings", squarings)?;
                set_poly(&d, poly)?;
            }
            Approximation::ExpSquaring { r, .. } => {
                d.set_item("kind", "exp_squaring")?;
                d.set_item("r", r)?;
            }
            Approximation::ExpTaylor { degree, .. } => {
                d.set_item("kind", "exp_taylor")?;
                d.set_item("degree", degree)?;
                set_poly(&d, &approx::taylor_exp(*degree))?;
            }
            Approximation::Goldschmidt { iterations, .. } => {
                d.set_item("kind", "goldschmidt")?;
                d.set_item("iterations", iterations)?;
            }
            Approximation::InvSqrt { guess, newton_steps, .. } => {
                d.set_item("kind", "inv_sqrt")?;
                d.set_item("newton_steps", newton_steps)?;
                let g = PyDict::new(py);
                set_poly(&g, guess)?;
                d.set_item("guess", g)?;
            }
        }
        Ok(d)
    }

    fn __repr__(&self) -> String {
        let (lo, hi) = self.inner.range();
        format!(
            "Approximation({}, range=({lo:.4}, {hi:.4}), depth={})",
            self.inner.name(),
            self.inner.depth()
        )
    }
}

fn set_poly(d: &Bound<'_, PyDict>, poly: &crate::he::polynomial::Polynomial) -> PyResult<()> {
    match poly.basis {
        Basis::Power => d.set_item("basis", "power")?,
        Basis::Chebyshev { lo, hi } => {
            d.set_item("basis", "chebyshev")?;
            d.set_item("basis_range", (lo, hi))?;
            d.set_item("affine", affine_coefficients(lo, hi))?;
        }
    }
    d.set_item("coefficients", poly.coeffs.clone())
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
    d.set_item("lowest_level", c.lowest_level)?;
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
            return Err(PyValueError::new_err(format!(
                "expected an array of shape (batch, tokens, features), got {shape:?}"
            )));
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

/// The FHE-friendly pre-LayerNorm transformer block.
#[pyclass(name = "Block", module = "blindfed.block", frozen)]
pub struct PyBlock {
    inner: Arc<Block>,
}

fn approx_arg(d: Option<&Bound<'_, PyDict>>, key: &str, default: Approximation) -> PyResult<Approximation> {
    match d.and_then(|d| d.get_item(key).ok().flatten()) {
        None => Ok(default),
        Some(v) => Ok(v
            .cast::<PyApproximation>()
            .map_err(|_| {
                PyTypeError::new_err(format!("approx['{key}'] must be a blindfed.approx.Approximation"))
            })?
            .get()
            .inner
            .clone()),
    }
}

impl PyBlock {
    fn check_batch(&self, x: &PyReadonlyArrayDyn<'_, f64>) -> PyResult<(usize, Vec<f64>)> {
        let s = self.inner.shape;
        let shape = x.shape();
        if shape.len() != 3 || shape[1] != s.tokens || shape[2] != s.width {
            return Err(PyValueError::new_err(format!(
                "expected an array of shape (batch, {}, {}), got {shape:?}",
                s.tokens, s.width
            )));
        }
        Ok((shape[0], flat(x)))
    }

    fn per_sample(&self, py: Python<'_>, x: PyReadonlyArrayDyn<'_, f64>) -> PyResult<(usize, Vec<Vec<f64>>)> {
        let (batch, values) = self.check_batch(&x)?;
        let per = self.inner.shape.tokens * self.inner.shape.width;
        let block = self.inner.clone();
        let out = py.detach(|| {
            values.chunks(per).map(|s| block.forward(s)).collect::<crate::error::Result<Vec<_>>>()
        })?;
        Ok((batch, out))
    }
}

#[pymethods]
impl PyBlock {
    /// `weights` maps ln1_gamma, ln1_beta, wq, bq, wk, bk, wv, bv, wo, bo, ln2_gamma, ln2_beta,
    /// w1, b1, w2, b2 to float64 arrays (matrices shaped (out, in) as in torch). `approx` may
    /// override any of exp, reciprocal, inv_sqrt, gelu (Approximation objects) and eps.
    #[new]
    #[pyo3(signature = (weights, *, tokens, heads, approx=None))]
    fn new(
        weights: &Bound<'_, PyDict>,
        tokens: usize,
        heads: usize,
        approx: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let mut t: HashMap<&str, (Vec<usize>, Vec<f64>)> = HashMap::new();
        for name in WEIGHT_NAMES {
            let v = weights
                .get_item(name)?
                .ok_or_else(|| PyValueError::new_err(format!("missing weight '{name}'")))?;
            let a: PyReadonlyArrayDyn<'_, f64> = v.extract().map_err(|_| {
                PyTypeError::new_err(format!("weight '{name}' must be a float64 numpy array"))
            })?;
            t.insert(name, (a.shape().to_vec(), flat(&a)));
        }
        if let Some(extra) = weights.keys().iter().find_map(|k| {
            let k: String = k.extract().unwrap_or_default();
            (!WEIGHT_NAMES.contains(&k.as_str())).then_some(k)
        }) {
            return Err(PyValueError::new_err(format!("unknown weight '{extra}'")));
        }
        let (w1_shape, _) = &t["w1"];
        let (wq_shape, _) = &t["wq"];
        if w1_shape.len() != 2 || wq_shape.len() != 2 {
            return Err(PyValueError::new_err("wq and w1 must be 2-D (out, in) matrices"));
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
        let defaults = crate::nn::block::default_approx();
        let eps = match approx.and_then(|d| d.get_item("eps").ok().flatten()) {
            Some(v) => v.extract::<f64>()?,
            None => defaults.eps,
        };
        let a = BlockApprox {
            exp: approx_arg(approx, "exp", defaults.exp)?,
            reciprocal: approx_arg(approx, "reciprocal", defaults.reciprocal)?,
            inv_sqrt: approx_arg(approx, "inv_sqrt", defaults.inv_sqrt)?,
            gelu: approx_arg(approx, "gelu", defaults.gelu)?,
            eps,
        };
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

    /// The approximations in use: exp, reciprocal, inv_sqrt, gelu.
    #[getter]
    fn approximations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let a = &self.inner.approx;
        let d = PyDict::new(py);
        for (k, v) in
            [("exp", &a.exp), ("reciprocal", &a.reciprocal), ("inv_sqrt", &a.inv_sqrt), ("gelu", &a.gelu)]
        {
            d.set_item(k, PyApproximation { inner: v.clone() })?;
        }
        d.set_item("eps", a.eps)?;
        Ok(d)
    }

    /// The block in f64 on a (batch, tokens, width) array, one sample at a time: the reference.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let (batch, out) = self.per_sample(py, x)?;
        let s = self.inner.shape;
        PyArray1::from_vec(py, out.concat()).reshape(vec![batch, s.tokens, s.width])
    }

    /// The plaintext mirror: the encrypted evaluation's exact arithmetic and level rules on
    /// f64 vectors in the token layout with `slots` slots (`simulate` mode).
    #[pyo3(signature = (x, *, params))]
    fn mirror<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f64>,
        params: &PyParameters,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let (batch, values) = self.check_batch(&x)?;
        let s = self.inner.shape;
        let block = self.inner.clone();
        let ctx = params.ctx.clone();
        let out = py.detach(|| -> crate::error::Result<Vec<f64>> {
            let backend = Mirror::like(&ctx);
            let layout = crate::he::layout::TokenLayout::new(s.tokens, s.width, ctx.params.slots())?;
            let groups = layout
                .pack(&values, batch)?
                .into_iter()
                .enumerate()
                .map(|(g, cts)| {
                    let x = cts
                        .into_iter()
                        .map(|c| backend.value(c))
                        .collect::<crate::error::Result<Vec<_>>>()?;
                    let y = block.evaluate(&backend, &layout, layout.samples_in_group(batch, g), x)?;
                    Ok(y.into_iter().map(|v| v.data).collect())
                })
                .collect::<crate::error::Result<Vec<_>>>()?;
            layout.unpack(&groups, batch)
        })?;
        PyArray1::from_vec(py, out).reshape(vec![batch, s.tokens, s.width])
    }

    /// Inputs seen by each approximation on this data (arrays keyed exp, reciprocal, inv_sqrt, gelu).
    fn observe<'py>(&self, py: Python<'py>, x: PyReadonlyArrayDyn<'py, f64>) -> PyResult<Bound<'py, PyDict>> {
        let (_, values) = self.check_batch(&x)?;
        let per = self.inner.shape.tokens * self.inner.shape.width;
        let block = self.inner.clone();
        let obs = py.detach(|| {
            let mut all = crate::nn::block::Observations::default();
            for s in values.chunks(per) {
                let o = block.observe(s)?;
                all.exp.extend(o.exp);
                all.reciprocal.extend(o.reciprocal);
                all.inv_sqrt.extend(o.inv_sqrt);
                all.gelu.extend(o.gelu);
            }
            Ok::<_, crate::error::Error>(all)
        })?;
        let d = PyDict::new(py);
        d.set_item("exp", PyArray1::from_vec(py, obs.exp))?;
        d.set_item("reciprocal", PyArray1::from_vec(py, obs.reciprocal))?;
        d.set_item("inv_sqrt", PyArray1::from_vec(py, obs.inv_sqrt))?;
        d.set_item("gelu", PyArray1::from_vec(py, obs.gelu))?;
        Ok(d)
    }

    /// A copy whose approximation ranges come from this data, widened by `margin`; repeated
    /// until the ranges hold (each approximation's inputs depend on the ones before it).
    #[pyo3(signature = (x, margin=0.2))]
    fn calibrated(&self, py: Python<'_>, x: PyReadonlyArrayDyn<'_, f64>, margin: f64) -> PyResult<Self> {
        let (_, values) = self.check_batch(&x)?;
        let block = self.inner.clone();
        let out = py.detach(|| block.calibrated(&values, margin))?;
        Ok(PyBlock { inner: Arc::new(out) })
    }

    /// Left-rotation steps an evaluation with `params` needs Galois keys for.
    fn rotation_steps(&self, params: &PyParameters) -> PyResult<Vec<i64>> {
        let s = self.inner.shape;
        let layout = crate::he::layout::TokenLayout::new(s.tokens, s.width, params.ctx.params.slots())?;
        let plan = crate::he::attention::DiagonalPlan::new(&layout, layout.samples_per_group(), None)?;
        Ok(plan.rotation_steps())
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
        d.set_item("depth", depth)?;
        d.set_item("cost", cost_dict(py, &plan.cost)?)?;
        Ok(d)
    }

    /// Evaluates the block on an encrypted batch. `owner` answers the masked refreshes: the
    /// owner's `SecretKey` (in process), or a callable taking a refresh request (bytes) and
    /// returning the owner's reply (bytes), typically a network round trip. Returns the
    /// encrypted output and the operations counted.
    fn evaluate<'py>(
        &self,
        py: Python<'py>,
        batch: &PyPackedBatch,
        keys: &PyEvaluationKeys,
        owner: &Bound<'py, PyAny>,
    ) -> PyResult<(PyPackedBatch, Bound<'py, PyDict>)> {
        let block = self.inner.clone();
        let keys = keys.keys.clone();
        let owner = super::protocol::refresher(keys.context(), owner)?;
        let input = batch.inner.clone();
        let (out, cost) = py.detach(|| -> crate::error::Result<_> {
            let backend = Encrypted::new(&keys)?.with_refresher(owner);
            let real = input.real_groups(keys.galois.as_deref())?;
            let separations = if input.complex { real.len() * input.layout.features.div_ceil(2) } else { 0 };
            let groups = real
                .into_iter()
                .enumerate()
                .map(|(g, x)| {
                    block.evaluate(&backend, &input.layout, input.layout.samples_in_group(input.batch, g), x)
                })
                .collect::<crate::error::Result<Vec<_>>>()?;
            let mut cost = backend.cost();
            // The conjugations that separate a complex-packed input are key switches too.
            cost.rotations += separations as u64;
            Ok((PackedBatch::from_real(input.layout, input.batch, groups, input.complex)?, cost))
        })?;
        Ok((PyPackedBatch { inner: out }, cost_dict(py, &cost)?))
    }

    fn __repr__(&self) -> String {
        let s = self.inner.shape;
        format!("Block(tokens={}, width={}, heads={}, mlp={})", s.tokens, s.width, s.heads, s.mlp)
    }
}
