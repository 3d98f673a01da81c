//! Criterion benches of the CKKS operations on the benchmark parameter sets
//! (N = 2^14 with 7 levels, N = 2^15 with 18 levels, 40-bit scale). The SEAL comparison lives
//! in `blindfed bench ckks`, which times both libraries in one run.
//!
//! BLINDFED_BENCH_SETS=14:7,15:18 selects sets; BLINDFED_THREADS sets the thread count;
//! BLINDFED_BENCH_SCALE sets the scale bits (30 is the block's: 30-bit primes take the lazy
//! 64-bit paths).

use blindfed::ckks::{evaluator as ev, Complex, Context, ParameterSpec, Plaintext, SecretKey};
use blindfed::parallel;
use criterion::{criterion_group, criterion_main, Criterion};

fn sets() -> Vec<(u32, usize)> {
    std::env::var("BLINDFED_BENCH_SETS")
        .unwrap_or_else(|_| "14:7,15:18".into())
        .split(',')
        .filter_map(|s| {
            let (n, l) = s.split_once(':')?;
            Some((n.trim().parse().ok()?, l.trim().parse().ok()?))
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("BLINDFED_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(1);
    parallel::set_num_threads(threads).unwrap();
    let scale = std::env::var("BLINDFED_BENCH_SCALE").ok().and_then(|t| t.parse().ok()).unwrap_or(40);
    for (log_n, levels) in sets() {
        let ctx = Context::new(&ParameterSpec::new(log_n, levels, scale)).unwrap();
        let sk = SecretKey::generate(&ctx);
        let pk = sk.public_key();
        let rlk = sk.relin_key();
        let gk = sk.galois_keys(&(1..=8).collect::<Vec<_>>(), false).unwrap();
        let values: Vec<Complex> =
            (0..ctx.params.slots()).map(|i| Complex::new((i as f64).sin(), 0.0)).collect();
        let pt = Plaintext::encode(&ctx, &values, None, None).unwrap();
        let ct = pk.encrypt(&pt).unwrap();
        let mut g = c.benchmark_group(format!("ckks/N=2^{log_n},L={levels},scale={scale},threads={threads}"));
        g.sample_size(10);
        g.bench_function("encode", |b| b.iter(|| Plaintext::encode(&ctx, &values, None, None).unwrap()));
        g.bench_function("encrypt", |b| b.iter(|| pk.encrypt(&pt).unwrap()));
        g.bench_function("encrypt_symmetric", |b| b.iter(|| sk.encrypt_symmetric(&pt).unwrap()));
        g.bench_function("decrypt", |b| b.iter(|| sk.decrypt(&ct).unwrap()));
        g.bench_function("multiply_relin_rescale", |b| {
            b.iter(|| ev::multiply_relin_rescale(&ct, &ct, &rlk).unwrap())
        });
        // The inner loop of attention's scores and A V: one product added to a running sum.
        let mut sum = ev::multiply(&ct, &ct).unwrap();
        g.bench_function("multiply_accumulate", |b| {
            b.iter(|| ev::multiply_accumulate(&mut sum, &ct, &ct).unwrap())
        });
        // Attention's shape: 8 sums sharing 8 operands (one pass), against the same 64 products
        // added one at a time.
        let others: Vec<_> = (0..8).map(|i| ev::rotate(&ct, i + 1, &gk).unwrap()).collect();
        let mut sums = vec![ev::multiply(&ct, &ct).unwrap(); 8];
        let pairs: Vec<Vec<_>> =
            (0..8).map(|o| (0..8).map(|i| (&others[i], &others[(i + o) % 8])).collect()).collect();
        g.bench_function("multiply_accumulate_pairs_8x8", |b| {
            b.iter(|| {
                let mut targets: Vec<_> = sums.iter_mut().collect();
                ev::multiply_accumulate_pairs(&mut targets, &pairs).unwrap()
            })
        });
        g.bench_function("multiply_accumulate_8x8_one_by_one", |b| {
            b.iter(|| {
                for (sum, products) in sums.iter_mut().zip(&pairs) {
                    for (x, y) in products {
                        ev::multiply_accumulate(sum, x, y).unwrap();
                    }
                }
            })
        });
        g.bench_function("multiply_plain", |b| b.iter(|| ev::mul_plain(&ct, &pt).unwrap()));
        g.bench_function("rotate", |b| b.iter(|| ev::rotate(&ct, 1, &gk).unwrap()));
        g.bench_function("rotate_hoisted_8", |b| {
            b.iter(|| ev::rotate_hoisted(&ct, &[1, 2, 3, 4, 5, 6, 7, 8], &gk).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
