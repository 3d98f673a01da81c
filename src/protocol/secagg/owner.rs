//! An owner's side of a round: advertise keys, share secrets with neighbours, send the masked
//! input, and answer the server's one unmask request.
//!
//! The owner's secrets (its two X25519 secrets, the self-mask seed b and the shares it holds
//! for its neighbours) are zeroised on drop and leave the owner only as Shamir shares,
//! encrypted to neighbours, or in the single unmask answer. That answer is where privacy is
//! decided: for a neighbour it reveals a share of b (the neighbour survived) or of s_sk (it
//! dropped), never both, so the owner checks the request against what it saw before
//! answering and answers at most once.

use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sha3::{Digest, Sha3_256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::keys::{KeyPair, MASK_SEED, SHARE_KEY};
use super::mask::{self, Sign};
use super::params::Params;
use super::shamir;
use super::wire::{self, Advert, Envelopes, Masked, UnmaskAnswer};
use super::{aead, stage_error};
use crate::error::{Error, Result};

/// What the owner does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerStage {
    Advertise,
    Share,
    Mask,
    Unmask,
    Done,
}

impl OwnerStage {
    pub fn name(self) -> &'static str {
        match self {
            OwnerStage::Advertise => "advertise",
            OwnerStage::Share => "share",
            OwnerStage::Mask => "mask",
            OwnerStage::Unmask => "unmask",
            OwnerStage::Done => "done",
        }
    }
}

/// The shares of one neighbour's secrets that this owner holds.
#[derive(Zeroize, ZeroizeOnDrop)]
struct Held {
    mask_key: [u8; 32],
    self_mask: [u8; 32],
}

pub struct Owner {
    params: Params,
    me: u64,
    rng: ChaCha20Rng,
    c: KeyPair,
    s: KeyPair,
    b: Zeroizing<[u8; 32]>,
    stage: OwnerStage,
    /// Neighbours that advertised (U1), with their keys.
    peers: BTreeMap<u64, Advert>,
    /// Neighbours whose shares arrived (this owner's view of U2), and this owner's own share
    /// of its secrets (kept from the share stage).
    held: BTreeMap<u64, Held>,
    own: Option<Held>,
}

impl Owner {
    /// Owner `me` of the round, with fresh keys and self-mask seed drawn from a ChaCha20
    /// CSPRNG seeded by the OS, or from `seed`: 32 secret bytes (from a CSPRNG) that every
    /// secret of the owner's round expands from, so that an owner whose processes come and go
    /// can replay its stages. The seed is as secret as everything it expands to.
    pub fn new(params: Params, me: u64, seed: Option<[u8; 32]>) -> Result<Self> {
        if !params.is_owner(me) {
            return Err(Error::SecAgg(format!("{me} is not an owner of this round")));
        }
        let mut rng = match seed {
            None => ChaCha20Rng::try_from_os_rng()
                .map_err(|e| Error::SecAgg(format!("the operating system's random source failed: {e}")))?,
            Some(seed) => {
                let h = Sha3_256::new_with_prefix(b"blindfed/secagg/v1/owner-seed")
                    .chain_update(seed)
                    .chain_update(me.to_le_bytes())
                    .chain_update(params.round_tag());
                ChaCha20Rng::from_seed(h.finalize().into())
            }
        };
        let c = KeyPair::generate(&mut rng);
        let s = KeyPair::generate(&mut rng);
        let mut b = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(b.as_mut());
        Ok(Owner {
            params,
            me,
            rng,
            c,
            s,
            b,
            stage: OwnerStage::Advertise,
            peers: BTreeMap::new(),
            held: BTreeMap::new(),
            own: None,
        })
    }

    pub fn id(&self) -> u64 {
        self.me
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn stage(&self) -> OwnerStage {
        self.stage
    }

    fn expect(&self, stage: OwnerStage, call: &str) -> Result<()> {
        if self.stage == OwnerStage::Done && stage == OwnerStage::Unmask {
            return Err(Error::SecAgg(format!(
                "owner {} already answered an unmask request this round and answers only one",
                self.me
            )));
        }
        if self.stage != stage {
            return Err(stage_error(&format!("owner {}", self.me), call, self.stage.name()));
        }
        Ok(())
    }

    fn tag(&self) -> [u8; 16] {
        *self.params.round_tag()
    }

    /// Stage 0: the owner's two public keys.
    pub fn advertise(&mut self) -> Result<Vec<u8>> {
        self.expect(OwnerStage::Advertise, "advertise")?;
        let advert = Advert { sender: self.me, c_pk: self.c.public(), s_pk: self.s.public() };
        self.stage = OwnerStage::Share;
        Ok(wire::encode_advert(&self.tag(), &advert))
    }

    /// Stage 1: t-of-m Shamir shares of s_sk and b for the m neighbours in the roster, each
    /// neighbour's pair encrypted to it; the bundle goes to the server for routing.
    pub fn share(&mut self, roster: &[u8]) -> Result<Vec<u8>> {
        self.expect(OwnerStage::Share, "share")?;
        let (me, t) = (self.me, self.params.threshold());
        let roster = wire::decode_roster(&self.tag(), roster)?;
        if let Some(a) = roster.iter().find(|a| !self.params.is_owner(a.sender)) {
            return Err(Error::SecAgg(format!(
                "the roster lists {}, who is not an owner of this round",
                a.sender
            )));
        }
        match roster.iter().find(|a| a.sender == me) {
            Some(a) if a.c_pk == self.c.public() && a.s_pk == self.s.public() => {}
            Some(_) => return Err(Error::SecAgg(format!("the roster carries other keys for owner {me}"))),
            None => return Err(Error::SecAgg(format!("the roster does not list owner {me}"))),
        }
        if roster.len() < t {
            return Err(Error::SecAgg(format!(
                "{} owners advertised, fewer than the threshold {t}",
                roster.len()
            )));
        }
        let graph = self.params.graph();
        let peers: BTreeMap<u64, Advert> = roster
            .into_iter()
            .filter(|a| graph.are_neighbours(me, a.sender))
            .map(|a| (a.sender, a))
            .collect();
        // The owner holds a share of its own secrets too (as in SecAgg), so that a survivor's
        // self-mask seed can be rebuilt from t survivors, itself included.
        if peers.len() + 1 < t {
            return Err(Error::SecAgg(format!(
                "only {} of owner {me}'s neighbours advertised; its secrets need {t} holders",
                peers.len() + 1
            )));
        }
        let mut holders: Vec<u64> = peers.keys().copied().collect();
        holders.push(me);
        holders.sort_unstable();
        let xs: Vec<u8> =
            holders.iter().map(|&v| self.params.x_of(v).expect("roster ids are owners")).collect();
        let key_shares = shamir::split(self.s.secret_bytes().as_ref(), t, &xs, &mut self.rng)?;
        let seed_shares = shamir::split(self.b.as_ref(), t, &xs, &mut self.rng)?;
        let ctx = self.params.context();
        let mut ciphertexts = Vec::with_capacity(peers.len());
        for ((&v, ks), bs) in holders.iter().zip(&key_shares).zip(&seed_shares) {
            if v == me {
                let mut own = Held { mask_key: [0; 32], self_mask: [0; 32] };
                own.mask_key.copy_from_slice(&ks.y);
                own.self_mask.copy_from_slice(&bs.y);
                self.own = Some(own);
                continue;
            }
            let key = self.c.derive(&peers[&v].c_pk, SHARE_KEY, ctx, me, v)?;
            let mut pt = Zeroizing::new([0u8; 64]);
            pt[..32].copy_from_slice(&ks.y);
            pt[32..].copy_from_slice(&bs.y);
            ciphertexts.push((v, aead::seal(&key, ctx, me, v, &pt)));
        }
        self.peers = peers;
        self.stage = OwnerStage::Mask;
        Ok(wire::encode_bundle(&self.tag(), &Envelopes { owner: me, ciphertexts }))
    }

    /// Stage 2: keeps the neighbours' shares from the inbox and returns
    /// y = x + PRG(b) + sum over neighbours v that shared of ±PRG(s_uv) (+ when u < v) mod 2^k.
    /// Refuses with fewer than t neighbours' shares: the pairwise masks would be too few to
    /// hide the input once b is revealed.
    pub fn mask(&mut self, inbox: &[u8], values: &[f64]) -> Result<Vec<u8>> {
        self.expect(OwnerStage::Mask, "mask")?;
        let (me, t) = (self.me, self.params.threshold());
        if values.len() != self.params.length() {
            return Err(Error::SecAgg(format!(
                "{} values where the round has {}",
                values.len(),
                self.params.length()
            )));
        }
        let inbox = wire::decode_inbox(&self.tag(), inbox)?;
        if inbox.owner != me {
            return Err(Error::SecAgg(format!("the inbox is addressed to owner {}, not {me}", inbox.owner)));
        }
        if let Some((v, _)) = inbox.ciphertexts.iter().find(|(v, _)| !self.peers.contains_key(v)) {
            return Err(Error::SecAgg(format!(
                "the inbox holds shares from {v}, not a neighbour of owner {me} that advertised"
            )));
        }
        if inbox.ciphertexts.len() + 1 < t {
            return Err(Error::SecAgg(format!(
                "only {} neighbours' shares reached owner {me}, need {} for the threshold {t}: masking now could expose its input",
                inbox.ciphertexts.len(),
                t - 1
            )));
        }
        let ctx = self.params.context();
        let mut held = BTreeMap::new();
        for (v, ct) in &inbox.ciphertexts {
            let key = self.c.derive(&self.peers[v].c_pk, SHARE_KEY, ctx, me, *v)?;
            let pt = aead::open(&key, ctx, *v, me, ct)?;
            let mut h = Held { mask_key: [0; 32], self_mask: [0; 32] };
            h.mask_key.copy_from_slice(&pt[..32]);
            h.self_mask.copy_from_slice(&pt[32..]);
            held.insert(*v, h);
        }
        let fixed = self.params.fixed_point();
        let mut y = fixed.encode(values)?;
        let mut seeds = vec![(self.b.clone(), Sign::Plus)];
        for &v in held.keys() {
            let seed = self.s.derive(&self.peers[&v].s_pk, MASK_SEED, ctx, me, v)?;
            seeds.push((seed, if me < v { Sign::Plus } else { Sign::Minus }));
        }
        mask::apply(&mut y, &seeds, fixed.ring_bits);
        if let Some(own) = self.own.take() {
            held.insert(me, own);
        }
        self.held = held;
        self.stage = OwnerStage::Unmask;
        Ok(wire::encode_masked(&self.tag(), fixed.ring_bits, &Masked { sender: me, values: y }))
    }

    /// Stage 3: shares of b for each neighbour listed as surviving, of s_sk for each listed as
    /// dropped. Refuses (and stays ready for a correct request) when an owner is in both
    /// lists, when this owner is not a survivor, when fewer than t survive, or when the lists
    /// disagree with the neighbours whose shares arrived; answers only once.
    pub fn unmask(&mut self, request: &[u8]) -> Result<Vec<u8>> {
        self.expect(OwnerStage::Unmask, "unmask")?;
        let (me, t) = (self.me, self.params.threshold());
        let q = wire::decode_unmask_request(&self.tag(), request)?;
        let refuse =
            |why: String| Err(Error::SecAgg(format!("owner {me} refuses the unmask request: {why}")));
        let survivors: BTreeSet<u64> = q.survivors.iter().copied().collect();
        let dropped: BTreeSet<u64> = q.dropped.iter().copied().collect();
        if let Some(v) = survivors.intersection(&dropped).next() {
            return refuse(format!("owner {v} is listed both as surviving and as dropped"));
        }
        if let Some(v) = survivors.union(&dropped).find(|&&v| !self.params.is_owner(v)) {
            return refuse(format!("{v} is not an owner of this round"));
        }
        if dropped.contains(&me) {
            return refuse("it is listed as dropped".into());
        }
        if !survivors.contains(&me) {
            return refuse("it is not listed as a survivor".into());
        }
        if survivors.len() < t {
            return refuse(format!("{} survivors, fewer than the threshold {t}", survivors.len()));
        }
        for &v in self.params.graph().neighbours(me) {
            let listed = survivors.contains(&v) || dropped.contains(&v);
            let shared = self.held.contains_key(&v);
            if listed && !shared {
                return refuse(format!("neighbour {v} is listed, but its shares never reached this owner"));
            }
            if shared && !listed {
                return refuse(format!(
                    "neighbour {v} shared its secrets but is listed neither as surviving nor as dropped"
                ));
            }
        }
        let pick = |set: &BTreeSet<u64>, f: fn(&Held) -> [u8; 32]| -> Vec<(u64, [u8; 32])> {
            self.held.iter().filter(|(v, _)| set.contains(v)).map(|(&v, h)| (v, f(h))).collect()
        };
        let answer = UnmaskAnswer {
            sender: me,
            self_mask: pick(&survivors, |h| h.self_mask),
            mask_key: pick(&dropped, |h| h.mask_key),
        };
        self.held.clear();
        self.stage = OwnerStage::Done;
        Ok(wire::encode_unmask_answer(&self.tag(), &answer))
    }
}
