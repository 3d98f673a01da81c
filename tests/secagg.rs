//! Secure aggregation end to end: exact sums under dropouts at every stage, the owner's
//! refusals, tampering and forgery, stage misuse, and malformed bytes (never a panic).

use std::collections::{BTreeMap, BTreeSet};

use blindfed::protocol::secagg::{wire, Owner, ParamSpec, Params, Server};
use blindfed::Error;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

type Msgs = BTreeMap<u64, Vec<u8>>;

/// Owners that leave at each stage: before advertising, sharing, masking, unmasking.
#[derive(Clone, Debug, Default)]
struct Dropouts([BTreeSet<u64>; 4]);

impl Dropouts {
    fn at(stage: usize, ids: &[u64]) -> Self {
        let mut d = Dropouts::default();
        d.0[stage] = ids.iter().copied().collect();
        d
    }
    fn stays(&self, id: u64, through: usize) -> bool {
        self.0[..=through].iter().all(|s| !s.contains(&id))
    }
}

struct Outcome {
    sums: Vec<i64>,
    survivors: Vec<u64>,
    dropped: Vec<u64>,
}

fn params(owners: &[u64], t: usize, length: usize, neighbours: Option<usize>) -> Params {
    Params::new(ParamSpec {
        neighbours,
        context: b"test run / round 1".to_vec(),
        ..ParamSpec::new(owners.to_vec(), t, length, 10.0)
    })
    .unwrap()
}

/// A reproducible owner seed for tests (real owners draw theirs from a CSPRNG).
fn test_seed(seed: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&seed.to_le_bytes());
    out
}

fn owners_of(params: &Params, seed: u64) -> BTreeMap<u64, Owner> {
    params
        .owners()
        .iter()
        .map(|&id| (id, Owner::new(params.clone(), id, Some(test_seed(seed))).unwrap()))
        .collect()
}

/// One round in process; any refusal by an owner or the server ends it with that error.
fn run(
    params: &Params,
    values: &BTreeMap<u64, Vec<f64>>,
    drops: &Dropouts,
    seed: u64,
) -> blindfed::Result<Outcome> {
    let mut owners = owners_of(params, seed);
    let mut server = Server::new(params.clone());
    let live = |stage: usize| -> Vec<u64> {
        params.owners().iter().copied().filter(|&id| drops.stays(id, stage)).collect()
    };
    let mut adverts = Msgs::new();
    for id in live(0) {
        adverts.insert(id, owners.get_mut(&id).unwrap().advertise()?);
    }
    let roster = server.roster(&adverts)?;
    let mut bundles = Msgs::new();
    for id in live(1) {
        bundles.insert(id, owners.get_mut(&id).unwrap().share(&roster)?);
    }
    let inboxes = server.route(&bundles)?;
    let mut masked = Msgs::new();
    for id in live(2) {
        masked.insert(id, owners.get_mut(&id).unwrap().mask(&inboxes[&id], &values[&id])?);
    }
    let request = server.collect(&masked)?;
    let mut answers = Msgs::new();
    for id in live(3) {
        answers.insert(id, owners.get_mut(&id).unwrap().unmask(&request)?);
    }
    let sums = server.aggregate(&answers)?;
    Ok(Outcome { sums, survivors: server.survivors().to_vec(), dropped: server.dropped().to_vec() })
}

fn random_values(params: &Params, rng: &mut ChaCha20Rng) -> BTreeMap<u64, Vec<f64>> {
    let bound = params.fixed_point().bound;
    params
        .owners()
        .iter()
        .map(|&id| {
            let v = (0..params.length())
                .map(|_| (rng.next_u64() as f64 / u64::MAX as f64 * 2.0 - 1.0) * bound)
                .collect();
            (id, v)
        })
        .collect()
}

/// The exact sum of the survivors' fixed-point encodings.
fn expected(params: &Params, values: &BTreeMap<u64, Vec<f64>>, survivors: &[u64]) -> Vec<i64> {
    let fp = params.fixed_point();
    let mut sum = vec![0i64; params.length()];
    for id in survivors {
        for (s, v) in sum.iter_mut().zip(fp.encode_signed(&values[id]).unwrap()) {
            *s += v;
        }
    }
    sum
}

/// Whether a round with these dropouts must succeed: every check an owner or the server
/// makes, restated on the sets.
fn should_succeed(params: &Params, drops: &Dropouts) -> bool {
    let (t, g) = (params.threshold(), params.graph());
    let set = |stage: usize| -> BTreeSet<u64> {
        params.owners().iter().copied().filter(|&id| drops.stays(id, stage)).collect()
    };
    let (u1, u2, u3, u4) = (set(0), set(1), set(2), set(3));
    // Holders of u's secrets that are in s: its neighbours and itself.
    let in_set = |u: u64, s: &BTreeSet<u64>| {
        g.neighbours(u).iter().filter(|v| s.contains(v)).count() + usize::from(s.contains(&u))
    };
    u1.len() >= t
        && u2.iter().all(|&u| in_set(u, &u1) >= t)
        && u2.len() >= t
        && u3.iter().all(|&u| in_set(u, &u2) >= t)
        && u3.len() >= t
        && u2.iter().all(|&u| in_set(u, &u4) >= t)
}

#[test]
fn a_round_without_dropouts_sums_exactly() {
    let p = params(&[11, 22, 33, 44, 55], 3, 200, None);
    let values = random_values(&p, &mut ChaCha20Rng::seed_from_u64(1));
    let out = run(&p, &values, &Dropouts::default(), 1).unwrap();
    assert_eq!(out.survivors, vec![11, 22, 33, 44, 55]);
    assert!(out.dropped.is_empty());
    assert_eq!(out.sums, expected(&p, &values, &out.survivors));
    let decoded = p.fixed_point().decode(&out.sums);
    for (i, d) in decoded.iter().enumerate() {
        let truth: f64 = values.values().map(|v| v[i]).sum();
        assert!((d - truth).abs() <= 5.0 * 0.5 / (1 << 20) as f64 + 1e-9, "{d} vs {truth}");
    }
}

#[test]
fn dropouts_at_each_stage_leave_the_exact_sum_of_the_survivors() {
    let ids: Vec<u64> = (1..=8).map(|i| i * 100).collect();
    for (neighbours, t) in [(Some(4), 2), (None, 3)] {
        let p = params(&ids, t, 64, neighbours);
        let values = random_values(&p, &mut ChaCha20Rng::seed_from_u64(2));
        for stage in 0..4 {
            let drops = Dropouts::at(stage, &[300, 700]);
            assert!(should_succeed(&p, &drops), "stage {stage}, {neighbours:?}");
            let out = run(&p, &values, &drops, 9).unwrap_or_else(|e| panic!("stage {stage}: {e}"));
            let survivors: Vec<u64> = if stage == 3 {
                ids.clone()
            } else {
                ids.iter().copied().filter(|&i| i != 300 && i != 700).collect()
            };
            assert_eq!(out.survivors, survivors, "stage {stage}");
            // Only an owner that shared and then sent nothing is "dropped" (its mask key is
            // reconstructed); one that never shared left no masks to remove.
            assert_eq!(out.dropped, if stage == 2 { vec![300, 700] } else { vec![] }, "stage {stage}");
            assert_eq!(out.sums, expected(&p, &values, &survivors), "stage {stage}, {neighbours:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn any_dropout_pattern_gives_the_exact_sum_or_an_error(
        n in 3usize..=10,
        degree_pick in 0usize..8,
        t_pick in 0usize..8,
        ring_bits in prop::sample::select(vec![32u32, 48, 64]),
        length in 1usize..40,
        stages in prop::collection::vec(0usize..12, 10),
        seed in any::<u64>(),
    ) {
        // Degree: n-1 (complete) or an even number in 2..n-1.
        let evens: Vec<usize> = (2..n - 1).filter(|d| d % 2 == 0).collect();
        let degree = if degree_pick % 3 == 0 || evens.is_empty() { n - 1 } else { evens[degree_pick % evens.len()] };
        let t = 2 + t_pick % degree;
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 7919 + 3).collect();
        let p = Params::new(ParamSpec {
            ring_bits,
            neighbours: Some(degree),
            context: seed.to_le_bytes().to_vec(),
            ..ParamSpec::new(ids.clone(), t, length, 10.0)
        })
        .unwrap();
        // Each owner leaves at stage s with s < 4, i.e. about a third of them leave.
        let mut drops = Dropouts::default();
        for (id, &s) in ids.iter().zip(&stages) {
            if s < 4 {
                drops.0[s].insert(*id);
            }
        }
        let values = random_values(&p, &mut ChaCha20Rng::seed_from_u64(seed));
        let result = run(&p, &values, &drops, seed);
        let must = should_succeed(&p, &drops);
        match result {
            Ok(out) => {
                prop_assert!(must, "succeeded where a check should have refused");
                let survivors: Vec<u64> = ids.iter().copied().filter(|&i| drops.stays(i, 2)).collect();
                prop_assert_eq!(&out.survivors, &survivors);
                prop_assert_eq!(out.sums, expected(&p, &values, &survivors));
            }
            Err(e) => prop_assert!(!must, "failed where it should succeed: {}", e),
        }
    }
}

/// A round driven to the unmask stage: the owners, the server and the request.
fn to_unmask(p: &Params, skip_mask: &[u64]) -> (BTreeMap<u64, Owner>, Server, Vec<u8>) {
    let mut owners = owners_of(p, 5);
    let mut server = Server::new(p.clone());
    let adverts: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    let roster = server.roster(&adverts).unwrap();
    let bundles: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.share(&roster).unwrap())).collect();
    let inboxes = server.route(&bundles).unwrap();
    let zeros = vec![0.0; p.length()];
    let masked: Msgs = owners
        .iter_mut()
        .filter(|(id, _)| !skip_mask.contains(id))
        .map(|(&id, o)| (id, o.mask(&inboxes[&id], &zeros).unwrap()))
        .collect();
    let request = server.collect(&masked).unwrap();
    (owners, server, request)
}

fn refusal(r: blindfed::Result<Vec<u8>>) -> String {
    match r {
        Err(Error::SecAgg(m)) => m,
        other => panic!("expected a refusal, got {:?}", other.map(|b| b.len())),
    }
}

#[test]
fn an_owner_refuses_requests_that_could_reveal_both_secrets_and_answers_once() {
    let p = params(&[1, 2, 3, 4, 5], 3, 4, None);
    let (mut owners, _, request) = to_unmask(&p, &[5]);
    let tag = *p.round_tag();
    let req = |survivors: &[u64], dropped: &[u64]| {
        wire::encode_unmask_request(
            &tag,
            &wire::UnmaskRequest { survivors: survivors.to_vec(), dropped: dropped.to_vec() },
        )
    };
    let o = owners.get_mut(&1).unwrap();
    let m = refusal(o.unmask(&req(&[1, 2, 3, 4], &[4, 5])));
    assert!(m.contains("owner 4 is listed both"), "{m}");
    let m = refusal(o.unmask(&req(&[2, 3, 4], &[1, 5])));
    assert!(m.contains("listed as dropped"), "{m}");
    let m = refusal(o.unmask(&req(&[1, 2], &[3, 4, 5])));
    assert!(m.contains("2 survivors, fewer than the threshold 3"), "{m}");
    let m = refusal(o.unmask(&req(&[1, 2, 3, 4, 9], &[5])));
    assert!(m.contains("9 is not an owner"), "{m}");
    // Omitting a neighbour that shared is inconsistent with what the owner saw.
    let m = refusal(o.unmask(&req(&[1, 2, 3, 4], &[])));
    assert!(m.contains("neighbour 5"), "{m}");
    // A refused request reveals nothing and leaves the owner ready for the right one, which
    // it answers exactly once.
    assert_eq!(request, req(&[1, 2, 3, 4], &[5]));
    o.unmask(&request).unwrap();
    let m = refusal(o.unmask(&request));
    assert!(m.contains("already answered"), "{m}");
}

#[test]
fn an_owner_refuses_survivors_whose_shares_it_never_saw() {
    let p = params(&[1, 2, 3, 4], 2, 4, None);
    let mut owners = owners_of(&p, 6);
    let mut server = Server::new(p.clone());
    let adverts: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    let roster = server.roster(&adverts).unwrap();
    // Owner 4 never shares, so nobody holds its shares.
    let bundles: Msgs = owners
        .iter_mut()
        .filter(|(&id, _)| id != 4)
        .map(|(&id, o)| (id, o.share(&roster).unwrap()))
        .collect();
    let inboxes = server.route(&bundles).unwrap();
    assert!(!inboxes.contains_key(&4));
    let o = owners.get_mut(&1).unwrap();
    o.mask(&inboxes[&1], &[0.0; 4]).unwrap();
    let bad = wire::encode_unmask_request(
        p.round_tag(),
        &wire::UnmaskRequest { survivors: vec![1, 2, 3, 4], dropped: vec![] },
    );
    let m = refusal(o.unmask(&bad));
    assert!(m.contains("neighbour 4 is listed, but its shares never reached"), "{m}");
}

#[test]
fn a_tampered_or_readdressed_share_names_its_sender() {
    let p = params(&[10, 20, 30], 2, 3, None);
    let mut owners = owners_of(&p, 7);
    let mut server = Server::new(p.clone());
    let adverts: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    let roster = server.roster(&adverts).unwrap();
    let bundles: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.share(&roster).unwrap())).collect();
    let inboxes = server.route(&bundles).unwrap();
    let tag = *p.round_tag();

    // Flip one byte of the first ciphertext in owner 10's inbox (from owner 20).
    let mut inbox = wire::decode_inbox(&tag, &inboxes[&10]).unwrap();
    assert_eq!(inbox.ciphertexts[0].0, 20);
    inbox.ciphertexts[0].1[17] ^= 0x01;
    let err = owners.get_mut(&10).unwrap().mask(&wire::encode_inbox(&tag, &inbox), &[0.0; 3]).unwrap_err();
    assert_eq!(err, Error::TamperedShare { from: 20, to: 10 });
    assert!(err.to_string().contains("owner 20"));

    // Owner 20's ciphertext for 30, delivered to 10 instead: the associated data names 30.
    let mut misrouted = wire::decode_inbox(&tag, &inboxes[&30]).unwrap();
    misrouted.owner = 10;
    misrouted.ciphertexts.retain(|(s, _)| *s == 20);
    let mut mixed = wire::decode_inbox(&tag, &inboxes[&10]).unwrap();
    mixed.ciphertexts[0] = misrouted.ciphertexts[0];
    let err = owners.get_mut(&10).unwrap().mask(&wire::encode_inbox(&tag, &mixed), &[0.0; 3]).unwrap_err();
    assert_eq!(err, Error::TamperedShare { from: 20, to: 10 });

    // Another owner's whole inbox is refused by its address; the genuine one still works.
    let o = owners.get_mut(&10).unwrap();
    assert!(
        matches!(o.mask(&inboxes[&30], &[0.0; 3]), Err(Error::SecAgg(m)) if m.contains("addressed to owner 30"))
    );
    o.mask(&inboxes[&10], &[0.0; 3]).unwrap();
}

#[test]
fn forged_sender_ids_are_rejected_by_the_server() {
    let p = params(&[1, 2, 3], 2, 2, None);
    let mut owners = owners_of(&p, 8);
    let mut server = Server::new(p.clone());
    let mut adverts: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    let a1 = adverts[&1].clone();
    adverts.insert(2, a1);
    let m = refusal(server.roster(&adverts));
    assert!(m.contains("arrived from owner 2 claims to come from owner 1"), "{m}");

    let mut owners = owners_of(&p, 8);
    let adverts: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    let mut server = Server::new(p.clone());
    let roster = server.roster(&adverts).unwrap();
    let mut bundles: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.share(&roster).unwrap())).collect();
    let b3 = bundles[&3].clone();
    bundles.insert(1, b3);
    let m = refusal(server.route(&bundles).map(|_| vec![]));
    assert!(m.contains("share bundle that arrived from owner 1 claims to come from owner 3"), "{m}");
    // A refused call leaves the server at its stage.
    assert_eq!(server.stage().name(), "route");
}

#[test]
fn too_few_owners_at_any_stage_is_an_error() {
    let p = params(&[1, 2, 3, 4, 5], 3, 2, None);
    // Fewer than t advertise.
    let mut owners = owners_of(&p, 9);
    let adverts: Msgs = owners.iter_mut().take(2).map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    let m = refusal(Server::new(p.clone()).roster(&adverts));
    assert!(m.contains("2 owners advertised, fewer than the threshold 3"), "{m}");
    // Fewer than t survive to collect.
    let values: BTreeMap<u64, Vec<f64>> = p.owners().iter().map(|&i| (i, vec![1.0, -1.0])).collect();
    let err = run(&p, &values, &Dropouts::at(2, &[1, 2, 3]), 1).err().unwrap();
    assert!(err.to_string().contains("2 owners sent masked inputs, fewer than the threshold 3"), "{err}");
    // Fewer than t answer: the missing shares are named, and more answers can follow.
    let (mut owners, mut server, request) = to_unmask(&p, &[]);
    let mut answers: Msgs =
        owners.iter_mut().take(2).map(|(&id, o)| (id, o.unmask(&request).unwrap())).collect();
    let m = match server.aggregate(&answers) {
        Err(Error::SecAgg(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(m.contains("lacks shares: need 3, got"), "{m}");
    answers.extend(owners.iter_mut().skip(2).map(|(&id, o)| (id, o.unmask(&request).unwrap())));
    assert_eq!(server.aggregate(&answers).unwrap(), vec![0, 0]);
}

#[test]
fn calls_out_of_order_and_late_inputs_are_refused() {
    let p = params(&[1, 2, 3, 4], 2, 2, None);
    let mut o = Owner::new(p.clone(), 1, None).unwrap();
    assert!(refusal(o.share(b"")).contains("cannot share now: its next step is advertise"));
    assert!(refusal(o.mask(b"", &[0.0, 0.0])).contains("cannot mask now"));
    assert!(refusal(o.unmask(b"")).contains("cannot unmask now"));
    o.advertise().unwrap();
    assert!(refusal(o.advertise()).contains("cannot advertise now: its next step is share"));
    assert!(Owner::new(p.clone(), 5, None).is_err());

    let mut s = Server::new(p.clone());
    assert!(refusal(s.route(&Msgs::new()).map(|_| vec![])).contains("cannot route now"));
    assert!(refusal(s.aggregate(&Msgs::new()).map(|_| vec![])).contains("cannot aggregate now"));

    // A masked input that arrives after collect is refused, as is a second aggregate.
    let (mut owners, mut server, request) = to_unmask(&p, &[4]);
    let late = owners.get_mut(&4).unwrap();
    assert_eq!(late.stage().name(), "mask");
    let m = refusal(server.collect(&Msgs::from([(4, vec![0u8; 8])])));
    assert!(m.contains("refused"), "{m}");
    let answers: Msgs = owners.iter_mut().take(3).map(|(&id, o)| (id, o.unmask(&request).unwrap())).collect();
    server.aggregate(&answers).unwrap();
    assert_eq!(server.stage().name(), "done");
    assert!(refusal(server.aggregate(&answers).map(|_| vec![])).contains("cannot aggregate now"));
}

#[test]
fn messages_of_another_round_are_refused() {
    let p1 = params(&[1, 2, 3], 2, 2, None);
    let p2 = Params::new(ParamSpec { context: b"round 2".to_vec(), ..p1.spec() }).unwrap();
    let mut a = Owner::new(p1.clone(), 1, None).unwrap();
    let mut s2 = Server::new(p2);
    let m = refusal(s2.roster(&Msgs::from([(1, a.advertise().unwrap())])));
    assert!(m.contains("another round"), "{m}");
}

#[test]
fn a_lone_masked_input_is_indistinguishable_from_uniform() {
    let p = params(&[1, 2, 3], 2, 4096, None);
    // Owner 1's masked input of a zero vector.
    let mut owners = owners_of(&p, 11);
    let mut server = Server::new(p.clone());
    let adverts: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    let roster = server.roster(&adverts).unwrap();
    let bundles: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.share(&roster).unwrap())).collect();
    let inboxes = server.route(&bundles).unwrap();
    let y = owners.get_mut(&1).unwrap().mask(&inboxes[&1], &vec![0.0; 4096]).unwrap();
    let y = wire::decode_masked(p.round_tag(), 64, 4096, &y).unwrap().values;
    let fp = p.fixed_point();
    let decoded = fp.decode(&fp.to_signed(&y));
    // A zero vector decodes to values spread over the whole ring, not near zero.
    let near_zero = decoded.iter().filter(|v| v.abs() <= fp.bound).count();
    assert!(near_zero <= 2, "{near_zero} of 4096 masked values within the bound");
    // Every bit position is set about half the time (4096 draws: 5 sigma is about 0.04).
    for bit in 0..64 {
        let ones = y.iter().filter(|&&v| v >> bit & 1 == 1).count() as f64 / 4096.0;
        assert!((ones - 0.5).abs() < 0.05, "bit {bit} set in {ones:.3} of the values");
    }
}

/// Every message of a round, with the call that decodes it in the state that expects it.
#[test]
fn malformed_bytes_never_panic() {
    let p = params(&[1, 2, 3, 4], 2, 5, Some(2));
    let tag = *p.round_tag();
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut mutations = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut out = vec![vec![], bytes[..bytes.len() / 2].to_vec()];
        for _ in 0..60 {
            let mut b = bytes.to_vec();
            match rng.next_u32() % 3 {
                0 => b.truncate(rng.next_u32() as usize % bytes.len()),
                1 => {
                    let i = rng.next_u32() as usize % b.len();
                    b[i] ^= 1 << (rng.next_u32() % 8);
                }
                _ => {
                    let i = rng.next_u32() as usize % b.len();
                    b[i] = rng.next_u32() as u8;
                }
            }
            out.push(b);
        }
        out
    };
    for m in mutations(&p.to_bytes()) {
        let _ = Params::from_bytes(&m);
    }
    let (mut owners, server_at_aggregate, request) = to_unmask(&p, &[]);
    drop(server_at_aggregate);
    for m in mutations(&request) {
        let _ = wire::decode_unmask_request(&tag, &m);
    }
    // The owner stays ready after each refusal; the genuine request still works.
    let o = owners.get_mut(&1).unwrap();
    for m in mutations(&request) {
        if m != request {
            assert!(o.unmask(&m).is_err());
        }
    }
    let answer = o.unmask(&request).unwrap();
    for m in mutations(&answer) {
        let _ = wire::decode_unmask_answer(&tag, &m);
    }

    // Each server stage against mutated inputs, and each owner stage.
    let mut owners = owners_of(&p, 13);
    let adverts: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.advertise().unwrap())).collect();
    for m in mutations(&adverts[&1]) {
        let mut bad = adverts.clone();
        bad.insert(1, m);
        let _ = Server::new(p.clone()).roster(&bad);
    }
    let mut server = Server::new(p.clone());
    let roster = server.roster(&adverts).unwrap();
    for m in mutations(&roster) {
        let _ = Owner::new(p.clone(), 2, None).unwrap().share(&m);
    }
    let bundles: Msgs = owners.iter_mut().map(|(&id, o)| (id, o.share(&roster).unwrap())).collect();
    let inboxes = {
        let mut s = Server::new(p.clone());
        s.roster(&adverts).unwrap();
        s.route(&bundles).unwrap()
    };
    for m in mutations(&bundles[&1]) {
        let mut s = Server::new(p.clone());
        s.roster(&adverts).unwrap();
        let mut bad = bundles.clone();
        bad.insert(1, m);
        let _ = s.route(&bad);
    }
    let o = owners.get_mut(&1).unwrap();
    for m in mutations(&inboxes[&1]) {
        if m != inboxes[&1] {
            assert!(o.mask(&m, &[0.0; 5]).is_err());
        }
    }
    let y = o.mask(&inboxes[&1], &[0.0; 5]).unwrap();
    for m in mutations(&y) {
        let mut s = Server::new(p.clone());
        s.roster(&adverts).unwrap();
        s.route(&bundles).unwrap();
        let _ = s.collect(&Msgs::from([(1, m), (2, vec![]), (3, vec![])]));
    }
    drop(server);
}

#[test]
fn three_owners_with_threshold_two_survive_one_dropout_at_any_stage() {
    // Each owner holds a share of its own secrets, so two survivors rebuild both self-masks.
    let p = params(&[5, 6, 7], 2, 16, None);
    let values = random_values(&p, &mut ChaCha20Rng::seed_from_u64(4));
    for stage in 0..4 {
        let drops = Dropouts::at(stage, &[6]);
        let out = run(&p, &values, &drops, 3).unwrap_or_else(|e| panic!("stage {stage}: {e}"));
        let survivors: Vec<u64> = if stage == 3 { vec![5, 6, 7] } else { vec![5, 7] };
        assert_eq!(out.survivors, survivors, "stage {stage}");
        assert_eq!(out.sums, expected(&p, &values, &survivors), "stage {stage}");
    }
}
