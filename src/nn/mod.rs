//! The FHE-friendly transformer: approximations and their families, the text grammar of both,
//! the block (reference, mirror and encrypted evaluation through one generic routine) and the
//! parameter planner.

pub mod approx;
pub mod batch;
pub mod block;
pub mod distill;
pub mod families;
pub mod plan;
pub mod spec;
