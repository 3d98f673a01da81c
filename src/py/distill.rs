//! Bindings for the distillation losses: arrays in, (loss, gradient) out.

use pyo3::prelude::*;

use super::array::RealArray;
use crate::error::Error;
use crate::nn::distill::{self, Loss};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(mse_loss, m)?)?;
    m.add_function(wrap_pyfunction!(soft_target_kl, m)?)?;
    Ok(())
}

fn pair(student: &Bound<'_, PyAny>, teacher: &Bound<'_, PyAny>) -> PyResult<(RealArray, RealArray)> {
    let s = RealArray::extract(student, "student")?;
    let t = RealArray::extract(teacher, "teacher")?;
    if s.shape != t.shape {
        return Err(Error::Shape(format!(
            "student shape {:?} differs from teacher shape {:?}",
            s.shape, t.shape
        ))
        .into());
    }
    Ok((s, t))
}

fn answer<'py>(py: Python<'py>, like: &RealArray, loss: Loss) -> PyResult<(f64, Bound<'py, PyAny>)> {
    Ok((loss.value, like.like(py, loss.gradient)?))
}

/// mean((student - teacher)^2) and its gradient with respect to `student`.
#[pyfunction]
fn mse_loss<'py>(
    py: Python<'py>,
    student: &Bound<'py, PyAny>,
    teacher: &Bound<'py, PyAny>,
) -> PyResult<(f64, Bound<'py, PyAny>)> {
    let (s, t) = pair(student, teacher)?;
    let loss = py.detach(|| distill::mse(&s.values, &t.values))?;
    answer(py, &s, loss)
}

/// tau^2 * mean over rows of KL(softmax(teacher / tau) || softmax(student / tau)) for logits
/// shaped (..., classes), and its gradient with respect to `student`.
#[pyfunction]
#[pyo3(signature = (student, teacher, tau=5.0))]
fn soft_target_kl<'py>(
    py: Python<'py>,
    student: &Bound<'py, PyAny>,
    teacher: &Bound<'py, PyAny>,
    tau: f64,
) -> PyResult<(f64, Bound<'py, PyAny>)> {
    let (s, t) = pair(student, teacher)?;
    let classes = *s.shape.last().ok_or_else(|| Error::Shape("logits need a class axis".into()))?;
    let loss = py.detach(|| distill::soft_target_kl(&s.values, &t.values, classes, tau))?;
    answer(py, &s, loss)
}
