//! A block over whole batches: every ciphertext group of a packed batch (the provider's encrypted
//! run), every group of a plaintext batch in the same layout (the mirror, `simulate` mode),
//! every sample (the f64 reference). Bindings call these and only convert.

use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;

use crate::ckks::{Context, EvaluationKeys};
use crate::error::{Error, Result};
use crate::he::attention::DiagonalPlan;
use crate::he::backend::{Backend, Progress};
use crate::he::cost::Cost;
use crate::he::encrypted::Encrypted;
use crate::he::layout::TokenLayout;
use crate::he::mirror::{Mirror, MirrorValue};
use crate::he::packed::PackedBatch;
use crate::he::refresh::Refresher;
use crate::parallel;

use super::block::{Block, Observations};

impl Block {
    fn sample_len(&self) -> usize {
        self.shape.tokens * self.shape.width
    }

    fn check_batch(&self, x: &[f64]) -> Result<usize> {
        let per = self.sample_len();
        if x.is_empty() || !x.len().is_multiple_of(per) {
            return Err(Error::Shape(format!(
                "a batch is whole samples of {} tokens x {} features ({per} values), got {} values",
                self.shape.tokens,
                self.shape.width,
                x.len()
            )));
        }
        Ok(x.len() / per)
    }

    /// [`Block::forward`] (or [`Block::forward_normalised`]) of every sample of `x`, in
    /// parallel.
    pub fn forward_batch(&self, x: &[f64], normalised: bool) -> Result<Vec<f64>> {
        self.check_batch(x)?;
        let out = parallel::install(|| {
            x.par_chunks(self.sample_len())
                .map(|s| if normalised { self.forward_normalised(s) } else { self.forward(s) })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(out.concat())
    }

    /// What every approximation sees on the samples of `x`.
    pub fn observe_batch(&self, x: &[f64]) -> Result<Observations> {
        self.check_batch(x)?;
        let mut all = Observations::default();
        for s in x.chunks(self.sample_len()) {
            all.extend(self.observe(s)?);
        }
        Ok(all)
    }

    /// The left-rotation steps an evaluation on `slots` slots needs Galois keys for.
    pub fn rotation_steps(&self, slots: usize) -> Result<Vec<i64>> {
        let layout = TokenLayout::new(self.shape.tokens, self.shape.width, slots)?;
        Ok(DiagonalPlan::new(&layout, layout.samples_per_group(), None)?.rotation_steps())
    }

    /// The plaintext mirror of [`Block::evaluate_batch`]: the same arithmetic and level rules
    /// on f64 vectors in the token layout of `ctx`'s slots. `x_hat` is the owner-normalised
    /// input, if any.
    pub fn mirror_batch(&self, ctx: &Context, x: &[f64], x_hat: Option<&[f64]>) -> Result<Vec<f64>> {
        let batch = self.check_batch(x)?;
        if let Some(h) = x_hat {
            if h.len() != x.len() {
                return Err(Error::Shape(format!(
                    "the normalised input has {} values, the input {}",
                    h.len(),
                    x.len()
                )));
            }
        }
        let backend = Mirror::like(ctx);
        let layout = TokenLayout::new(self.shape.tokens, self.shape.width, ctx.params.slots())?;
        let values = |groups: Vec<Vec<Vec<f64>>>| -> Result<Vec<Vec<MirrorValue>>> {
            groups.into_iter().map(|g| g.into_iter().map(|c| backend.value(c)).collect()).collect()
        };
        let inputs = values(layout.pack(x, batch)?)?;
        let hats: Vec<Option<_>> = match x_hat {
            Some(h) => values(layout.pack(h, batch)?)?.into_iter().map(Some).collect(),
            None => vec![None; inputs.len()],
        };
        let out = inputs
            .into_iter()
            .zip(hats)
            .enumerate()
            .map(|(g, (x, hat))| {
                let y = self.run(
                    &backend,
                    &layout,
                    layout.samples_in_group(batch, g),
                    Cow::Owned(x),
                    hat.map(Cow::Owned),
                )?;
                Ok(y.into_iter().map(|v| v.data).collect())
            })
            .collect::<Result<Vec<_>>>()?;
        layout.unpack(&out, batch)
    }

    /// The block on every group of an encrypted batch with the owner's evaluation keys;
    /// `owner` answers the masked refreshes, `x_hat` is the owner-normalised input (same
    /// layout and batch), if any. Returns the encrypted output (packed like the input) and
    /// the operations counted, including the conjugations that separate complex packing.
    pub fn evaluate_batch(
        &self,
        keys: &EvaluationKeys,
        owner: Arc<dyn Refresher>,
        input: &PackedBatch,
        x_hat: Option<&PackedBatch>,
        progress: Option<Progress>,
    ) -> Result<(PackedBatch, Cost)> {
        let backend = Encrypted::new(keys)?.with_refresher(owner).with_progress(progress);
        let galois = keys.galois.as_deref();
        let separations = |b: &PackedBatch| {
            if b.complex {
                b.groups.len() * b.layout.features.div_ceil(2)
            } else {
                0
            }
        };
        let mut conjugations = separations(input);
        let real = input.real_groups(galois)?;
        let hats: Vec<Option<_>> = match x_hat {
            Some(h) => {
                if h.layout != input.layout || h.batch != input.batch {
                    return Err(Error::Shape(
                        "the normalised input must have the input's layout and batch size".into(),
                    ));
                }
                conjugations += separations(h);
                h.real_groups(galois)?.into_iter().map(Some).collect()
            }
            None => vec![None; real.len()],
        };
        let count = real.len();
        let groups = real
            .into_iter()
            .zip(hats)
            .enumerate()
            .map(|(g, (x, hat))| {
                backend.stage(&format!("group {}/{count}", g + 1))?;
                self.run(&backend, &input.layout, input.layout.samples_in_group(input.batch, g), x, hat)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut cost = backend.cost();
        cost.rotations += conjugations as u64;
        Ok((PackedBatch::from_real(input.layout, input.batch, groups, input.complex)?, cost))
    }
}
