//! Criterion benches of the arithmetic kernels (NTT, basis conversion) at the ring degrees the
//! benchmark sets use.

use blindfed::math::lincomb;
use blindfed::math::modulus::Modulus;
use blindfed::math::ntt::NttTable;
use blindfed::math::primes::{ntt_primes, Side};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    for log_n in [14u32, 15] {
        let n = 1usize << log_n;
        for bits in [40u32, 60] {
            let q = ntt_primes(bits, 1, n, Side::Below, &[])[0];
            let m = Modulus::new(q);
            let table = NttTable::new(m, n).unwrap();
            let mut a: Vec<u64> = (0..n as u64).map(|i| (i * 0x9e37_79b9) % q).collect();
            let mut g = c.benchmark_group(format!("ntt/N=2^{log_n},{bits}-bit"));
            g.sample_size(20);
            // `forward`/`inverse` dispatch to the AVX-512 kernels where the CPU has them; the
            // `_scalar` variants are the portable path, for comparison.
            g.bench_function("forward", |b| b.iter(|| table.forward(&mut a)));
            g.bench_function("forward_scalar", |b| b.iter(|| table.forward_scalar(&mut a)));
            g.bench_function("inverse", |b| b.iter(|| table.inverse(&mut a)));
            g.bench_function("inverse_scalar", |b| b.iter(|| table.inverse_scalar(&mut a)));
            let x: Vec<u64> = a.clone();
            g.bench_function("pointwise_mul", |b| {
                b.iter(|| a.iter_mut().zip(&x).for_each(|(p, &y)| *p = m.mul(*p, y)))
            });
            g.finish();
        }
    }
}

/// One limb of a 192 -> 192 linear layer at N = 2^14 (ViT-Tiny's Q, K, V or W_o on one prime):
/// the inner loop of every encrypted linear layer.
fn bench_lincomb(c: &mut Criterion) {
    let (n, d) = (1usize << 14, 192usize);
    for bits in [30u32, 60] {
        let q = ntt_primes(bits, 1, n, Side::Below, &[])[0];
        let m = Modulus::new(q);
        let inputs: Vec<Vec<u64>> =
            (0..d).map(|i| (0..n as u64).map(|k| (k * 0x9e37_79b9 + i as u64 * 77) % q).collect()).collect();
        let refs: Vec<&[u64]> = inputs.iter().map(|v| v.as_slice()).collect();
        // Small signed weights (a 30-bit scale times weights below 1).
        let weights: Vec<i128> = (0..d * d).map(|i| ((i as i128 * 7919) % (1 << 28)) - (1 << 27)).collect();
        let mut outs = vec![vec![0u64; n]; d];
        let mut g = c.benchmark_group(format!("lincomb/{d}x{d},N=2^14,{bits}-bit"));
        g.sample_size(10);
        g.bench_function("combine", |b| {
            b.iter(|| {
                let mut targets: Vec<&mut [u64]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                lincomb::combine(&mut targets, &refs, &weights, &m);
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench, bench_lincomb);
criterion_main!(benches);
