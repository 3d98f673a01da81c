//! Bindings for the approximations, their families and their text grammar.

use crate::error::Error;
use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::he::polynomial::{affine_coefficients, Basis, Polynomial};
use crate::nn::approx::{self, Approximation, Step};
use crate::nn::spec::{parse_approximation, DenominatorKind, NormKind, Slot, StudentSpec, PRESETS};

use super::array::RealArray;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyApproximation>()?;
    m.add_class::<PyStudentSpec>()?;
    Ok(())
}

fn flat(a: &PyReadonlyArrayDyn<'_, f64>) -> Vec<f64> {
    a.as_array().iter().copied().collect()
}

/// One approximation of a non-polynomial function (or a power replacing exp): the single
/// source of its coefficients. Its text (`.text`) is its serialisation.
#[pyclass(name = "Approximation", module = "blindfed.approx", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyApproximation {
    pub(crate) inner: Approximation,
}

impl From<Approximation> for PyApproximation {
    fn from(inner: Approximation) -> Self {
        PyApproximation { inner }
    }
}

#[pymethods]
impl PyApproximation {
    /// A template for `slot` ("numerator", "reciprocal", "inv_sqrt" or "gelu") from its text,
    /// e.g. "chebyshev:15", "quad", "power:4", "goldschmidt:9", "newton:31:2" (ranges are
    /// placeholders until calibration).
    #[staticmethod]
    fn parse(slot: &str, text: &str) -> PyResult<Self> {
        Ok(parse_approximation(Slot::parse(slot)?, text)?.into())
    }

    /// The approximation whose `.text` this is.
    #[staticmethod]
    fn from_text(text: &str) -> PyResult<Self> {
        Ok(Approximation::from_text(text)?.into())
    }

    /// exp(x) ~ (1 + x / 2^r)^(2^r) on [lo, hi].
    #[staticmethod]
    fn exp_squaring(r: u32, lo: f64, hi: f64) -> PyResult<Self> {
        Ok(approx::exp_squaring(r, (lo, hi))?.into())
    }

    /// exp(x) by Chebyshev interpolation of `degree` on [lo, hi].
    #[staticmethod]
    #[pyo3(signature = (lo, hi, degree=15))]
    fn exp_chebyshev(lo: f64, hi: f64, degree: usize) -> PyResult<Self> {
        Ok(approx::exp_chebyshev(lo, hi, degree)?.into())
    }

    /// exp(x) by its Taylor polynomial of `degree` on [lo, hi] (the paper: degree 6).
    #[staticmethod]
    #[pyo3(signature = (lo, hi, degree=6))]
    fn exp_taylor(lo: f64, hi: f64, degree: usize) -> PyResult<Self> {
        Ok(approx::exp_taylor(degree, (lo, hi))?.into())
    }

    /// (x + shift)^p for an even p (2Quad is p = 2): a softmax numerator; [lo, hi] is the
    /// range calibration saw.
    #[staticmethod]
    #[pyo3(signature = (p, shift, lo, hi))]
    fn power(p: u32, shift: f64, lo: f64, hi: f64) -> PyResult<Self> {
        Ok(approx::power(p, shift, (lo, hi))?.into())
    }

    /// 1/x on [lo, hi] by Goldschmidt iterations.
    #[staticmethod]
    fn goldschmidt(iterations: u32, lo: f64, hi: f64) -> PyResult<Self> {
        Ok(approx::goldschmidt(iterations, (lo, hi))?.into())
    }

    /// 1/sqrt(x) on [lo, hi]: Chebyshev initial guess, then Newton steps.
    #[staticmethod]
    #[pyo3(signature = (lo, hi, guess_degree=31, newton_steps=2))]
    fn inv_sqrt(lo: f64, hi: f64, guess_degree: usize, newton_steps: u32) -> PyResult<Self> {
        Ok(approx::inv_sqrt(lo, hi, guess_degree, newton_steps)?.into())
    }

    /// The paper's GELU: Quad(x) = 0.125 x^2 + 0.25 x + 0.5.
    #[staticmethod]
    fn gelu_quad() -> Self {
        approx::gelu_quad().into()
    }

    /// GELU by a Chebyshev interpolant of `degree` on [lo, hi].
    #[staticmethod]
    fn gelu_chebyshev(lo: f64, hi: f64, degree: usize) -> PyResult<Self> {
        Ok(approx::gelu_chebyshev(lo, hi, degree)?.into())
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
        Ok(self.inner.with_range((lo, hi))?.into())
    }

    /// The same power with another shift (the learned constant of a power numerator).
    fn with_shift(&self, shift: f64) -> PyResult<Self> {
        match &self.inner {
            Approximation::Power { p, range, .. } => Ok(approx::power(*p, shift, *range)?.into()),
            other => Err(Error::Spec(format!("{} has no shift", other.name())).into()),
        }
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

    /// What it computes: "exp", "power", "reciprocal", "inv_sqrt" or "gelu".
    #[getter]
    fn function(&self) -> &'static str {
        self.inner.function()
    }

    /// The kind and degree, e.g. "exp:chebyshev:15" or "power:2".
    #[getter]
    fn kind(&self) -> String {
        self.inner.kind_text()
    }

    /// The whole approximation as text (kind, learned constants, range).
    #[getter]
    fn text(&self) -> String {
        self.inner.to_text()
    }

    /// A power's shift (None for other kinds).
    #[getter]
    fn shift(&self) -> Option<f64> {
        match &self.inner {
            Approximation::Power { shift, .. } => Some(*shift),
            _ => None,
        }
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
        Ok(self.inner.with_range(range)?.into())
    }

    /// The evaluation's steps with their coefficients, for another evaluator (the torch
    /// student's native path): dicts keyed "op" and the step's parameters.
    fn steps<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for step in self.inner.steps() {
            let d = PyDict::new(py);
            match step {
                Step::Polynomial(p) => {
                    d.set_item("op", "polynomial")?;
                    set_poly(&d, &p)?;
                }
                Step::Square(times) => {
                    d.set_item("op", "square")?;
                    d.set_item("times", times)?;
                }
                Step::Power { p, shift } => {
                    d.set_item("op", "power")?;
                    d.set_item("p", p)?;
                    d.set_item("shift", shift)?;
                }
                Step::Goldschmidt { hi, iterations } => {
                    d.set_item("op", "goldschmidt")?;
                    d.set_item("hi", hi)?;
                    d.set_item("iterations", iterations)?;
                }
                Step::Newton { guess, steps } => {
                    d.set_item("op", "newton")?;
                    d.set_item("steps", steps)?;
                    let g = PyDict::new(py);
                    set_poly(&g, &guess)?;
                    d.set_item("guess", g)?;
                }
            }
            out.append(d)?;
        }
        Ok(out)
    }

    fn __repr__(&self) -> String {
        let (lo, hi) = self.inner.range();
        format!(
            "Approximation({}, range=({lo:.4}, {hi:.4}), depth={})",
            self.inner.name(),
            self.inner.depth()
        )
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (String,))> {
        let from_text = slf.getattr("from_text")?;
        Ok((from_text, (slf.get().inner.to_text(),)))
    }
}

fn set_poly(d: &Bound<'_, PyDict>, poly: &Polynomial) -> PyResult<()> {
    match poly.basis {
        Basis::Power => d.set_item("basis", "power")?,
        Basis::Chebyshev { lo, hi } => {
            d.set_item("basis", "chebyshev")?;
            d.set_item("affine", affine_coefficients(lo, hi))?;
        }
    }
    d.set_item("coefficients", poly.coeffs.clone())
}

/// The families a student uses in every block, parsed from text over a base spec:
/// `StudentSpec("softmax=quad denominator=constant norm=affine")`, or a preset name.
#[pyclass(name = "StudentSpec", module = "blindfed.approx", frozen, eq)]
#[derive(Clone, PartialEq)]
pub struct PyStudentSpec {
    pub(crate) inner: StudentSpec,
}

#[pymethods]
impl PyStudentSpec {
    /// `text` over the preset `base` ("default", "reference" or "paper").
    #[new]
    #[pyo3(signature = (text="default", *, base="default"))]
    fn new(text: &str, base: &str) -> PyResult<Self> {
        Ok(PyStudentSpec { inner: StudentSpec::parse(text, &StudentSpec::preset(base)?)? })
    }

    /// The preset names.
    #[staticmethod]
    fn presets() -> Vec<&'static str> {
        PRESETS.to_vec()
    }

    /// The softmax numerator's template (an exp approximation or a power).
    #[getter]
    fn numerator(&self) -> PyApproximation {
        self.inner.numerator.clone().into()
    }

    /// "sum" (the row sum, inverted by `reciprocal`) or "constant" (learned per head).
    #[getter]
    fn denominator(&self) -> &'static str {
        match self.inner.denominator {
            DenominatorKind::RowSum(_) => "sum",
            DenominatorKind::Constant => "constant",
        }
    }

    #[getter]
    fn reciprocal(&self) -> Option<PyApproximation> {
        match &self.inner.denominator {
            DenominatorKind::RowSum(r) => Some(r.clone().into()),
            DenominatorKind::Constant => None,
        }
    }

    /// "layernorm" (1/sqrt by `inv_sqrt`) or "affine" (per-feature statistics, folded).
    #[getter]
    fn norm(&self) -> &'static str {
        match self.inner.norm {
            NormKind::LayerNorm(_) => "layernorm",
            NormKind::Affine => "affine",
        }
    }

    #[getter]
    fn inv_sqrt(&self) -> Option<PyApproximation> {
        match &self.inner.norm {
            NormKind::LayerNorm(r) => Some(r.clone().into()),
            NormKind::Affine => None,
        }
    }

    #[getter]
    fn gelu(&self) -> PyApproximation {
        self.inner.gelu.clone().into()
    }

    /// Whether the owner normalises the first block input of each request.
    #[getter]
    fn owner_norm(&self) -> bool {
        self.inner.owner_norm
    }

    #[getter]
    fn eps(&self) -> f64 {
        self.inner.eps
    }

    /// The canonical text (parsing it gives this spec back).
    #[getter]
    fn text(&self) -> String {
        self.inner.to_text()
    }

    fn __repr__(&self) -> String {
        format!("StudentSpec({:?})", self.inner.to_text())
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, (String,))> {
        let cls = slf.get_type().into_any();
        Ok((cls, (slf.get().inner.to_text(),)))
    }
}
