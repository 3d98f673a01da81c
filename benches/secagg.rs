//! Criterion benches of secure aggregation: one owner masking 100k values among 10 owners
//! (complete graph: one self mask and nine pairwise masks), and the server's unmasking with
//! one owner dropped after sharing.

use std::collections::BTreeMap;

use blindfed::protocol::secagg::{Owner, ParamSpec, Params, Server};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const OWNERS: u64 = 10;
const LENGTH: usize = 100_000;

type Msgs = BTreeMap<u64, Vec<u8>>;

/// Owners and server after routing: every owner holds its inbox.
fn routed(params: &Params) -> (BTreeMap<u64, Owner>, Server, Msgs) {
    let mut owners: BTreeMap<u64, Owner> =
        (1..=OWNERS).map(|i| (i, Owner::new(params.clone(), i, Some([i as u8; 32])).unwrap())).collect();
    let mut server = Server::new(params.clone());
    let adverts: Msgs = owners.iter_mut().map(|(&i, o)| (i, o.advertise().unwrap())).collect();
    let roster = server.roster(&adverts).unwrap();
    let bundles: Msgs = owners.iter_mut().map(|(&i, o)| (i, o.share(&roster).unwrap())).collect();
    let inboxes = server.route(&bundles).unwrap();
    (owners, server, inboxes)
}

fn bench(c: &mut Criterion) {
    let params = Params::new(ParamSpec::new((1..=OWNERS).collect(), 5, LENGTH, 1.0)).unwrap();
    let values: Vec<f64> = (0..LENGTH).map(|i| (i as f64 / LENGTH as f64) - 0.5).collect();
    let mut g = c.benchmark_group(format!("secagg/{OWNERS} owners x {LENGTH} values"));
    g.sample_size(10);
    g.bench_function("owner mask", |b| {
        b.iter_batched(
            || routed(&params),
            |(mut owners, _, inboxes)| owners.get_mut(&1).unwrap().mask(&inboxes[&1], &values).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("server aggregate (1 dropped)", |b| {
        b.iter_batched(
            || {
                let (mut owners, mut server, inboxes) = routed(&params);
                let masked: Msgs = owners
                    .iter_mut()
                    .filter(|(&i, _)| i != OWNERS)
                    .map(|(&i, o)| (i, o.mask(&inboxes[&i], &values).unwrap()))
                    .collect();
                let request = server.collect(&masked).unwrap();
                let answers: Msgs = owners
                    .iter_mut()
                    .filter(|(&i, _)| i != OWNERS)
                    .map(|(&i, o)| (i, o.unmask(&request).unwrap()))
                    .collect();
                (server, answers)
            },
            |(mut server, answers)| server.aggregate(&answers).unwrap(),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
