//! The distillation losses of the two stages, each with its gradient with respect to the
//! student's tensor (the teacher's side is a constant target).
//!
//! Stage I matches attention maps, hidden states and embeddings by mean squared error; stage II
//! matches predictions by the temperature-softened KL divergence of Hinton et al., scaled by
//! tau^2 so that its gradient keeps the magnitude of a hard-label loss as tau grows.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// A loss value and d loss / d student, shaped like the student's tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Loss {
    pub value: f64,
    pub gradient: Vec<f64>,
}

/// Below this many values the work is not worth splitting across threads.
const PARALLEL_MIN: usize = 1 << 14;

fn check_pair(student: &[f64], teacher: &[f64]) -> Result<()> {
    if student.len() != teacher.len() {
        return Err(Error::Shape(format!("student has {} values, teacher {}", student.len(), teacher.len())));
    }
    if student.is_empty() {
        return Err(Error::Shape("the loss of empty tensors is undefined".into()));
    }
    if student.iter().chain(teacher).any(|v| !v.is_finite()) {
        return Err(Error::NotFinite("loss inputs must be finite (a NaN or inf reached the loss)".into()));
    }
    Ok(())
}

/// mean((s - t)^2) over every element.
pub fn mse(student: &[f64], teacher: &[f64]) -> Result<Loss> {
    check_pair(student, teacher)?;
    let n = student.len() as f64;
    let gradient: Vec<f64> = if student.len() >= PARALLEL_MIN {
        student.par_iter().zip(teacher).map(|(s, t)| 2.0 * (s - t) / n).collect()
    } else {
        student.iter().zip(teacher).map(|(s, t)| 2.0 * (s - t) / n).collect()
    };
    let value = student.iter().zip(teacher).map(|(s, t)| (s - t) * (s - t)).sum::<f64>() / n;
    Ok(Loss { value, gradient })
}

/// Numerically stable softmax of `z / tau`, with its log.
fn log_softmax(z: &[f64], tau: f64) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let shifted: Vec<f64> = z.iter().map(|v| (v - max) / tau).collect();
    let log_sum = shifted.iter().map(|v| v.exp()).sum::<f64>().ln();
    shifted.iter().map(|v| v - log_sum).collect()
}

/// tau^2 * mean over rows of KL(softmax(t / tau) || softmax(s / tau)), for logits shaped
/// (rows, classes) in row-major order.
pub fn soft_target_kl(student: &[f64], teacher: &[f64], classes: usize, tau: f64) -> Result<Loss> {
    check_pair(student, teacher)?;
    if classes == 0 || !student.len().is_multiple_of(classes) {
        return Err(Error::Shape(format!(
            "{} logits do not split into rows of {classes} classes",
            student.len()
        )));
    }
    if !(tau.is_finite() && tau > 0.0) {
        return Err(Error::OutOfRange(format!("temperature must be finite and > 0, got {tau}")));
    }
    let rows = student.len() / classes;
    let per_row: Vec<(f64, Vec<f64>)> = student
        .par_chunks(classes)
        .zip(teacher.par_chunks(classes))
        .map(|(s, t)| {
            let log_p = log_softmax(t, tau);
            let log_q = log_softmax(s, tau);
            let kl: f64 = log_p.iter().zip(&log_q).map(|(lp, lq)| lp.exp() * (lp - lq)).sum();
            // d/ds of tau^2 KL / rows = tau (q - p) / rows.
            let g =
                log_p.iter().zip(&log_q).map(|(lp, lq)| tau * (lq.exp() - lp.exp()) / rows as f64).collect();
            (kl, g)
        })
        .collect();
    let value = tau * tau * per_row.iter().map(|(kl, _)| kl).sum::<f64>() / rows as f64;
    let gradient = per_row.into_iter().flat_map(|(_, g)| g).collect();
    Ok(Loss { value, gradient })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric_gradient(f: impl Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
        (0..x.len())
            .map(|i| {
                let h = 1e-6;
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                a[i] += h;
                b[i] -= h;
                (f(&a) - f(&b)) / (2.0 * h)
            })
            .collect()
    }

    #[test]
    fn mse_value_and_gradient() {
        let s = [1.0, -2.0, 0.5, 3.0];
        let t = [0.0, -1.0, 0.5, 1.0];
        let l = mse(&s, &t).unwrap();
        assert!((l.value - (1.0 + 1.0 + 0.0 + 4.0) / 4.0).abs() < 1e-12);
        let g = numeric_gradient(|x| mse(x, &t).unwrap().value, &s);
        for (a, b) in l.gradient.iter().zip(&g) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn kl_is_zero_on_equal_logits_and_has_the_right_gradient() {
        let t = [2.0, -1.0, 0.5, 0.0, 0.0, 7.0];
        let same = soft_target_kl(&t, &t, 3, 5.0).unwrap();
        assert!(same.value.abs() < 1e-12);
        assert!(same.gradient.iter().all(|g| g.abs() < 1e-12));
        let s = [1.0, 0.0, -0.5, 2.0, -3.0, 1.0];
        for tau in [1.0, 5.0] {
            let l = soft_target_kl(&s, &t, 3, tau).unwrap();
            assert!(l.value > 0.0);
            let g = numeric_gradient(|x| soft_target_kl(x, &t, 3, tau).unwrap().value, &s);
            for (a, b) in l.gradient.iter().zip(&g) {
                assert!((a - b).abs() < 1e-6, "tau {tau}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn kl_is_stable_for_large_logits() {
        let l = soft_target_kl(&[1000.0, 0.0], &[0.0, 1000.0], 2, 1.0).unwrap();
        assert!(l.value.is_finite() && (l.value - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(mse(&[1.0], &[1.0, 2.0]).is_err());
        assert!(mse(&[], &[]).is_err());
        assert!(mse(&[f64::NAN], &[1.0]).is_err());
        assert!(soft_target_kl(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], 2, 1.0).is_err());
        assert!(soft_target_kl(&[1.0, 2.0], &[1.0, 2.0], 2, 0.0).is_err());
    }
}
