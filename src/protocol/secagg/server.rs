//! The server's side of a round: publish the roster, route encrypted shares, collect masked
//! inputs, and remove the masks from their sum with the shares the survivors return.
//!
//! The server sees only public keys, ciphertexts, masked vectors and the shares the unmask
//! request asks for; it learns the sum of the survivors' inputs and who dropped when. Every
//! message is checked against the transport identity it arrived under (the map key) and
//! against the stage: a late masked input after `collect`, or a call out of order, is an
//! error, not a silent change to the result.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroizing;

use super::keys::{KeyPair, MASK_SEED};
use super::mask::{self, Sign};
use super::params::Params;
use super::shamir::{self, Share};
use super::stage_error;
use super::wire::{self, Advert, Envelopes, UnmaskRequest};
use crate::error::{Error, Result};

/// What the server does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerStage {
    Roster,
    Route,
    Collect,
    Aggregate,
    Done,
}

impl ServerStage {
    pub fn name(self) -> &'static str {
        match self {
            ServerStage::Roster => "roster",
            ServerStage::Route => "route",
            ServerStage::Collect => "collect",
            ServerStage::Aggregate => "aggregate",
            ServerStage::Done => "done",
        }
    }
}

pub struct Server {
    params: Params,
    stage: ServerStage,
    /// U1 with the advertised keys.
    roster: BTreeMap<u64, Advert>,
    /// U2: owners whose shares were routed.
    shared: BTreeSet<u64>,
    /// U3 and U2 \ U3.
    survivors: Vec<u64>,
    dropped: Vec<u64>,
    /// Sum of the masked inputs of U3, modulo 2^k.
    sum: Vec<u64>,
}

/// Prefixes a decoding error with the owner the bytes arrived from.
fn from_owner(id: u64) -> impl Fn(Error) -> Error {
    move |e| match e {
        Error::Malformed(m) => Error::Malformed(format!("from owner {id}: {m}")),
        Error::SecAgg(m) => Error::SecAgg(format!("from owner {id}: {m}")),
        e => e,
    }
}

fn forged(what: &str, claimed: u64, id: u64) -> Error {
    Error::SecAgg(format!("the {what} that arrived from owner {id} claims to come from owner {claimed}"))
}

impl Server {
    pub fn new(params: Params) -> Self {
        Server {
            params,
            stage: ServerStage::Roster,
            roster: BTreeMap::new(),
            shared: BTreeSet::new(),
            survivors: vec![],
            dropped: vec![],
            sum: vec![],
        }
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn stage(&self) -> ServerStage {
        self.stage
    }

    /// U3 (ascending); empty before `collect`.
    pub fn survivors(&self) -> &[u64] {
        &self.survivors
    }

    /// U2 \ U3: owners that shared their secrets but sent no masked input; empty before
    /// `collect`.
    pub fn dropped(&self) -> &[u64] {
        &self.dropped
    }

    fn expect(&self, stage: ServerStage, call: &str) -> Result<()> {
        if self.stage == ServerStage::Aggregate && stage == ServerStage::Collect {
            return Err(Error::SecAgg(
                "collect was already called: masked inputs that arrive after it are refused".into(),
            ));
        }
        if self.stage != stage {
            return Err(stage_error("the server", call, self.stage.name()));
        }
        Ok(())
    }

    fn tag(&self) -> [u8; 16] {
        *self.params.round_tag()
    }

    fn need_threshold(&self, count: usize, what: &str) -> Result<()> {
        let t = self.params.threshold();
        if count < t {
            return Err(Error::SecAgg(format!("{count} owners {what}, fewer than the threshold {t}")));
        }
        Ok(())
    }

    /// Stage 1: the public keys of the owners that advertised (U1), keyed by transport id.
    pub fn roster(&mut self, adverts: &BTreeMap<u64, Vec<u8>>) -> Result<Vec<u8>> {
        self.expect(ServerStage::Roster, "roster")?;
        let mut roster = BTreeMap::new();
        for (&id, bytes) in adverts {
            if !self.params.is_owner(id) {
                return Err(Error::SecAgg(format!("{id} is not an owner of this round")));
            }
            let advert = wire::decode_advert(&self.tag(), bytes).map_err(from_owner(id))?;
            if advert.sender != id {
                return Err(forged("advertisement", advert.sender, id));
            }
            roster.insert(id, advert);
        }
        self.need_threshold(roster.len(), "advertised")?;
        let list: Vec<Advert> = roster.values().cloned().collect();
        self.roster = roster;
        self.stage = ServerStage::Route;
        Ok(wire::encode_roster(&self.tag(), &list))
    }

    /// Stage 2: per owner that shared (U2), the ciphertexts addressed to it by the others.
    /// A bundle must come from its embedded sender and address exactly that sender's
    /// neighbours in U1.
    pub fn route(&mut self, bundles: &BTreeMap<u64, Vec<u8>>) -> Result<BTreeMap<u64, Vec<u8>>> {
        self.expect(ServerStage::Route, "route")?;
        let graph = self.params.graph();
        let mut inboxes: BTreeMap<u64, Envelopes> = BTreeMap::new();
        for (&id, bytes) in bundles {
            if !self.roster.contains_key(&id) {
                return Err(Error::SecAgg(format!("owner {id} sent shares without having advertised")));
            }
            let bundle = wire::decode_bundle(&self.tag(), bytes).map_err(from_owner(id))?;
            if bundle.owner != id {
                return Err(forged("share bundle", bundle.owner, id));
            }
            let addressed: Vec<u64> = bundle.ciphertexts.iter().map(|(r, _)| *r).collect();
            let expected: Vec<u64> =
                graph.neighbours(id).iter().copied().filter(|v| self.roster.contains_key(v)).collect();
            if addressed != expected {
                return Err(Error::SecAgg(format!(
                    "owner {id}'s shares are addressed to {addressed:?}, its neighbours that advertised are {expected:?}"
                )));
            }
            for (recipient, ct) in bundle.ciphertexts {
                inboxes
                    .entry(recipient)
                    .or_insert_with(|| Envelopes { owner: recipient, ciphertexts: vec![] })
                    .ciphertexts
                    .push((id, ct));
            }
        }
        self.need_threshold(bundles.len(), "shared their secrets")?;
        let shared: BTreeSet<u64> = bundles.keys().copied().collect();
        let tag = self.tag();
        let out = shared
            .iter()
            .map(|&r| {
                let inbox = inboxes.remove(&r).unwrap_or(Envelopes { owner: r, ciphertexts: vec![] });
                (r, wire::encode_inbox(&tag, &inbox))
            })
            .collect();
        self.shared = shared;
        self.stage = ServerStage::Collect;
        Ok(out)
    }

    /// Stage 3: sums the masked inputs of the survivors (U3, at least t of them, all in U2)
    /// and returns the unmask request listing U3 and the dropped D = U2 \ U3.
    pub fn collect(&mut self, masked: &BTreeMap<u64, Vec<u8>>) -> Result<Vec<u8>> {
        self.expect(ServerStage::Collect, "collect")?;
        let fixed = self.params.fixed_point();
        let ring = fixed.ring_mask();
        let mut sum = vec![0u64; self.params.length()];
        for (&id, bytes) in masked {
            if !self.shared.contains(&id) {
                return Err(Error::SecAgg(format!(
                    "owner {id} sent a masked input without having shared its secrets"
                )));
            }
            let m = wire::decode_masked(&self.tag(), fixed.ring_bits, self.params.length(), bytes)
                .map_err(from_owner(id))?;
            if m.sender != id {
                return Err(forged("masked input", m.sender, id));
            }
            sum.iter_mut().zip(&m.values).for_each(|(s, v)| *s = s.wrapping_add(*v) & ring);
        }
        self.need_threshold(masked.len(), "sent masked inputs")?;
        self.survivors = masked.keys().copied().collect();
        self.dropped = self.shared.iter().copied().filter(|id| !masked.contains_key(id)).collect();
        self.sum = sum;
        self.stage = ServerStage::Aggregate;
        let request = UnmaskRequest { survivors: self.survivors.clone(), dropped: self.dropped.clone() };
        Ok(wire::encode_unmask_request(&self.tag(), &request))
    }

    /// Stage 4: reconstructs b of every survivor and s_sk of every dropped owner from t shares
    /// each, removes the masks and returns the sum as signed fixed-point integers (see
    /// [`Server::decode`]). On an error the server stays at this stage, so it can retry with
    /// more answers.
    pub fn aggregate(&mut self, answers: &BTreeMap<u64, Vec<u8>>) -> Result<Vec<i64>> {
        self.expect(ServerStage::Aggregate, "aggregate")?;
        let (t, graph) = (self.params.threshold(), self.params.graph());
        let survivors: BTreeSet<u64> = self.survivors.iter().copied().collect();
        let dropped: BTreeSet<u64> = self.dropped.iter().copied().collect();
        let mut self_mask: BTreeMap<u64, Vec<Share>> = BTreeMap::new();
        let mut mask_key: BTreeMap<u64, Vec<Share>> = BTreeMap::new();
        for (&id, bytes) in answers {
            if !survivors.contains(&id) {
                return Err(Error::SecAgg(format!("owner {id} answered but is not a survivor")));
            }
            let answer = wire::decode_unmask_answer(&self.tag(), bytes).map_err(from_owner(id))?;
            if answer.sender != id {
                return Err(forged("unmask answer", answer.sender, id));
            }
            let x = self.params.x_of(id).expect("survivors are owners");
            for (list, allowed, out, what) in [
                (&answer.self_mask, &survivors, &mut self_mask, "self-mask seed"),
                (&answer.mask_key, &dropped, &mut mask_key, "mask key"),
            ] {
                for (v, y) in list {
                    // An owner holds shares of its neighbours' secrets and of its own.
                    if !allowed.contains(v) || !(*v == id || graph.are_neighbours(id, *v)) {
                        return Err(Error::SecAgg(format!(
                            "owner {id} returned a share of the {what} of owner {v}, which was not asked of it"
                        )));
                    }
                    out.entry(*v).or_default().push(Share { x, y: y.to_vec() });
                }
            }
        }
        let reconstruct =
            |shares: &BTreeMap<u64, Vec<Share>>, v: u64, what: &str| -> Result<Zeroizing<[u8; 32]>> {
                let got = shares.get(&v).map_or(&[][..], Vec::as_slice);
                if got.len() < t {
                    return Err(Error::SecAgg(format!(
                        "the {what} of owner {v} lacks shares: need {t}, got {}",
                        got.len()
                    )));
                }
                let secret = Zeroizing::new(shamir::reconstruct(&got[..t].iter().collect::<Vec<_>>())?);
                let mut out = Zeroizing::new([0u8; 32]);
                out.copy_from_slice(&secret);
                Ok(out)
            };
        let ctx = self.params.context();
        let mut seeds = Vec::new();
        for &u in &self.survivors {
            seeds.push((reconstruct(&self_mask, u, "self-mask seed")?, Sign::Minus));
        }
        for &d in &self.dropped {
            let key = KeyPair::from_secret_bytes(*reconstruct(&mask_key, d, "mask key of dropped owner")?);
            if key.public() != self.roster[&d].s_pk {
                return Err(Error::SecAgg(format!(
                    "the mask key reconstructed for dropped owner {d} does not match its advertised key"
                )));
            }
            // Survivor v added +PRG(s_vd) when v < d, -PRG(s_vd) when v > d: undo it.
            for &v in graph.neighbours(d).iter().filter(|v| survivors.contains(v)) {
                let seed = key.derive(&self.roster[&v].s_pk, MASK_SEED, ctx, d, v)?;
                seeds.push((seed, if v < d { Sign::Minus } else { Sign::Plus }));
            }
        }
        let fixed = self.params.fixed_point();
        let mut sum = self.sum.clone();
        mask::apply(&mut sum, &seeds, fixed.ring_bits);
        self.sum.clear();
        self.stage = ServerStage::Done;
        Ok(fixed.to_signed(&sum))
    }

    /// Signed fixed-point sums back to reals.
    pub fn decode(&self, sums: &[i64]) -> Vec<f64> {
        self.params.fixed_point().decode(sums)
    }
}
