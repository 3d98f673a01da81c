//! Real numpy arrays in either float precision: torch trains in float32, the core computes in
//! f64, and results go back in the caller's precision and shape.

use crate::error::Error;
use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

/// The values of a float32 or float64 array (C order), its shape and its precision.
pub struct RealArray {
    pub values: Vec<f64>,
    pub shape: Vec<usize>,
    pub single: bool,
}

impl RealArray {
    pub fn extract(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'_, f64>>() {
            return Ok(RealArray {
                values: a.as_array().iter().copied().collect(),
                shape: a.shape().to_vec(),
                single: false,
            });
        }
        if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'_, f32>>() {
            let values = a.as_array().iter().map(|&v| v as f64).collect();
            return Ok(RealArray { values, shape: a.shape().to_vec(), single: true });
        }
        Err(PyTypeError::new_err(format!("{what} must be a float32 or float64 numpy array")))
    }

    /// `values` (one per element of this array) as an array of this shape and precision.
    pub fn like<'py>(&self, py: Python<'py>, values: Vec<f64>) -> PyResult<Bound<'py, PyAny>> {
        let shape = IxDyn(&self.shape);
        let bad = |e: numpy::ndarray::ShapeError| PyErr::from(Error::Shape(e.to_string()));
        if self.single {
            let v: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
            let a = ArrayD::from_shape_vec(shape, v).map_err(bad)?;
            Ok(PyArrayDyn::from_owned_array(py, a).into_any())
        } else {
            let a = ArrayD::from_shape_vec(shape, values).map_err(bad)?;
            Ok(PyArrayDyn::from_owned_array(py, a).into_any())
        }
    }
}
