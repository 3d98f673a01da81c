//! Secure aggregation (SecAgg+, Bell et al. 2020, semi-honest setting): the server learns the
//! sum of the owners' vectors and nothing else about any one of them, even when owners drop
//! out mid-round.
//!
//! Stages of a round (whoever does not answer a stage is out from then on):
//! 0. Each owner advertises two fresh X25519 public keys (c for encrypting shares, s for
//!    agreeing pairwise masks); the server publishes the roster U1 ([`keys`]).
//! 1. Each owner Shamir-shares its s secret and a fresh self-mask seed b among its neighbours
//!    in the public [`graph`] and itself ([`shamir`] over [`gf256`]), encrypts each
//!    neighbour's shares to it ([`aead`]) and the server routes them (U2: owners that
//!    shared). Keeping a share of its own lets t survivors, the owner among them, rebuild b.
//! 2. Each owner encodes its values in fixed point ([`fixed_point`]) and adds PRG(b) and, for
//!    each neighbour in U2, ±PRG(s_uv) ([`mask`]); the server sums what arrives (U3).
//! 3. The server asks the survivors for shares: of b for each survivor, of s_sk for each
//!    owner in D = U2 \ U3. Each owner answers once and refuses requests that could reveal
//!    both secrets of one owner ([`owner`]).
//! 4. The server reconstructs the seeds, removes the masks (pairwise masks of two survivors
//!    cancel) and decodes the sum ([`server`]).
//!
//! What the server learns: the sum of the inputs of U3, and the sets U1, U2, U3 (who dropped
//! when). What is not protected: the sum itself (with few survivors it can say much about
//! each); an owner's input against t colluding neighbours plus the server; anything against
//! a malicious server, which can give owners inconsistent views (there is no signed
//! consistency round) or drop honest owners on purpose; the validity of inputs (an owner can
//! send any values within the bound, so poisoning is out of scope); and the graph, which is
//! public and fixed by the round context, so it offers no protection against an adversary
//! who picks whom to corrupt after seeing it. Transport identities (the owner id a message
//! arrives under) must be authenticated by the channel. Messages are encoded by [`wire`].

pub mod aead;
pub mod fixed_point;
pub mod gf256;
pub mod graph;
pub mod keys;
pub mod mask;
pub mod owner;
pub mod params;
pub mod server;
pub mod shamir;
pub mod wire;

pub use owner::{Owner, OwnerStage};
pub use params::{ParamSpec, Params};
pub use server::{Server, ServerStage};

use crate::error::Error;

/// The error of a call made at the wrong stage.
fn stage_error(who: &str, call: &str, next: &str) -> Error {
    Error::SecAgg(format!("{who} cannot {call} now: its next step is {next}"))
}
