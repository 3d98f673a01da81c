//! The FHE-friendly transformer: approximation specs, the block (reference, mirror and
//! encrypted evaluation through one generic routine) and the parameter planner.

pub mod approx;
pub mod block;
pub mod distill;
pub mod plan;
