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
    /// The same for a group whose input its owner normalised (the first block of a request
    /// with owner normalisation): its first normalisation costs nothing.
    pub normalised_cost: Cost,
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
///
/// A ring fits when its levels above the refresh floor carry the deeper wide stage and the
/// deepest step of a narrow chain (chains refresh between steps). Within the smallest ring
/// that fits, the levels are trimmed to what the block uses: both stages in one segment if
/// the ring allows; else the fewest that carry each stage alone, since the wide values are
/// refreshed between the stages anyway and every level costs every key switch more.
pub fn plan_block(block: &Block, scale_bits: u32, levels: Option<usize>) -> Result<BlockPlan> {
    let depth = block.depth();
    let widest = depth.attention.max(depth.mlp).max(depth.narrow_step);
    let mut tried = Vec::new();
    for log_n in 13..=16u32 {
        let slots = 1usize << (log_n - 1);
        if block.shape.tokens > slots {
            continue;
        }
        let Some(max) = max_levels(log_n, scale_bits) else { continue };
        let chosen = levels.unwrap_or(max).min(max);
        let floor = crate::he::refresh::refresh_level(&Context::from_parameters(Parameters::new(
            &ParameterSpec::new(log_n, chosen, scale_bits),
        )?)?);
        tried.push(format!("2^{log_n}: {chosen} levels, refresh floor {floor}"));
        if chosen < widest + floor {
            continue;
        }
        let one_segment = depth.attention + depth.mlp + floor;
        let chosen = match levels {
            Some(_) => chosen,
            None if one_segment <= chosen => one_segment.max(widest + floor),
            None => widest + floor,
        };
        let spec = ParameterSpec::new(log_n, chosen, scale_bits);
        let params = Parameters::new(&spec)?;
        let ctx = Context::from_parameters(params.clone())?;
        let refresh_level = crate::he::refresh::refresh_level(&ctx);
        let layout = TokenLayout::new(block.shape.tokens, block.shape.width, slots)?;
        let samples = layout.samples_per_group();
        let trace = |normalised: bool| -> Result<Cost> {
            let tracer = Mirror::tracer(slots, chosen).with_refresh_level(refresh_level);
            let inputs =
                || (0..block.shape.width).map(|_| tracer.value(Vec::new())).collect::<Result<Vec<_>>>();
            if normalised {
                block.evaluate_normalised(&tracer, &layout, samples, inputs()?, inputs()?)?;
            } else {
                block.evaluate(&tracer, &layout, samples, inputs()?)?;
            }
            let mut cost = tracer.cost();
            // Separating a complex-packed input: one conjugation per two features (each).
            cost.rotations += (1 + normalised as u64) * block.shape.width.div_ceil(2) as u64;
            Ok(cost)
        };
        let (cost, normalised_cost) = (trace(false)?, trace(true)?);
        let mut rotation_steps = DiagonalPlan::new(&layout, samples, None)?.rotation_steps();
        rotation_steps.retain(|s| cost.rotation_steps.contains(&s.rem_euclid(slots as i64)));
        return Ok(BlockPlan {
            spec,
            params,
            depth,
            layout,
            refresh_level,
            rotation_steps,
            cost,
            normalised_cost,
        });
    }
    Err(Error::OutOfLevels(format!(
        "no 128-bit parameter set carries this block (stages need {} and {} levels, the deepest \
         narrow step {}); tried {}",
        depth.attention,
        depth.mlp,
        depth.narrow_step,
        tried.join(", ")
    )))
}
