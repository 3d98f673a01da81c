//! Picks the parameters for a block: the smallest ring whose 128-bit modulus budget carries the
//! deepest stage, then as many levels as avoid refreshing the wide activations, and predicts
//! the whole evaluation's cost on the tracer before any key exists.

use crate::ckks::{Context, ParameterSpec, Parameters};
use crate::error::{Error, Result};
use crate::he::attention::DiagonalPlan;
use crate::he::backend::Backend;
use crate::he::cost::Cost;
use crate::he::layout::TokenLayout;
use crate::he::mirror::Mirror;

use super::block::{Block, BlockDepth};

#[derive(Clone, Debug)]
pub struct BlockPlan {
    pub spec: ParameterSpec,
    pub params: Parameters,
    pub depth: BlockDepth,
    pub layout: TokenLayout,
    /// Level below which a value cannot be refreshed.
    pub refresh_level: usize,
    /// Rotation steps to generate Galois keys for.
    pub rotation_steps: Vec<i64>,
    /// One full group (`layout.samples_per_group()` samples) through the block.
    pub cost: Cost,
}

/// The largest number of levels a secure set of this ring and scale can have.
fn max_levels(log_n: u32, scale_bits: u32) -> Option<usize> {
    let bound = crate::ckks::security::max_log_qp_128(log_n)?;
    let mut levels = ((bound - 120.0) / scale_bits as f64).floor().max(0.0) as usize;
    while levels > 0 {
        let mut spec = ParameterSpec::new(log_n, levels, scale_bits);
        spec.special_count = None;
        if Parameters::new(&spec).is_ok() {
            return Some(levels);
        }
        levels -= 1;
    }
    None
}

/// Plans `block` at `scale_bits` bits of scale; `levels` overrides the level count.
pub fn plan_block(block: &Block, scale_bits: u32, levels: Option<usize>) -> Result<BlockPlan> {
    let depth = block.depth();
    let widest = depth.attention.max(depth.mlp);
    let narrow = depth.inv_sqrt.max(depth.reciprocal);
    let mut tried = Vec::new();
    for log_n in 13..=16u32 {
        let slots = 1usize << (log_n - 1);
        if block.shape.tokens > slots {
            continue;
        }
        let Some(max) = max_levels(log_n, scale_bits) else { continue };
        let chosen = levels.unwrap_or(max).min(max);
        let spec = ParameterSpec::new(log_n, chosen, scale_bits);
        let params = Parameters::new(&spec)?;
        let ctx = Context::from_parameters(params.clone())?;
        let floor = crate::he::refresh::refresh_level(&ctx);
        tried.push(format!("2^{log_n}: {chosen} levels"));
        // A stage starts at max - 1 after a refresh and must end at the refresh floor; narrow
        // chains likewise.
        if chosen < widest.max(narrow) + floor + 1 {
            continue;
        }
        // Trim levels the whole block does not use (fewer primes, faster operations).
        // Trimmed to what the block uses: both wide stages in one go, or the deepest narrow
        // chain, which restarts from the top level after its refresh.
        let needed = (depth.attention + depth.mlp).max(narrow) + floor + 1;
        let chosen = if levels.is_some() { chosen } else { chosen.min(needed) };
        let spec = ParameterSpec::new(log_n, chosen, scale_bits);
        let params = Parameters::new(&spec)?;
        let ctx = Context::from_parameters(params.clone())?;
        let layout = TokenLayout::new(block.shape.tokens, block.shape.width, slots)?;
        let tracer =
            Mirror::tracer(slots, chosen).with_refresh_level(crate::he::refresh::refresh_level(&ctx));
        let samples = layout.samples_per_group();
        let inputs = (0..block.shape.width).map(|_| tracer.value(Vec::new())).collect::<Result<Vec<_>>>()?;
        block.evaluate(&tracer, &layout, samples, inputs)?;
        let mut cost = tracer.cost();
        // Separating a complex-packed input: one conjugation per two features.
        cost.rotations += block.shape.width.div_ceil(2) as u64;
        let mut rotation_steps = DiagonalPlan::new(&layout, samples, None)?.rotation_steps();
        rotation_steps.retain(|s| cost.rotation_steps.contains(&s.rem_euclid(slots as i64)));
        return Ok(BlockPlan {
            spec,
            params,
            depth,
            layout,
            refresh_level: crate::he::refresh::refresh_level(&ctx),
            rotation_steps,
            cost,
        });
    }
    Err(Error::OutOfLevels(format!(
        "no 128-bit parameter set carries this block (stages need {} and {} levels, narrow \
         chains {narrow}); tried {}",
        depth.attention,
        depth.mlp,
        tried.join(", ")
    )))
}
