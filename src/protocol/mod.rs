//! What passes between the provider and an owner: the owner's answer to a masked refresh
//! sent over bytes, and the sanitisation (sample permutation, payload-only slots, fresh
//! randomness, flooding noise) applied to everything the provider returns. Between owners:
//! secure aggregation of their updates ([`secagg`], SecAgg+), so the server sees only sums.

pub mod refresh_wire;
pub mod sanitize;
pub mod secagg;
