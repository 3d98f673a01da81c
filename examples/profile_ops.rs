//! Runs one CKKS operation in a loop, for profiling with `perf record`:
//! `cargo run --release --example profile_ops -- mul 14 7 50`.

use blindfed::ckks::{evaluator as ev, Complex, Context, ParameterSpec, Plaintext, SecretKey};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("mul");
    let log_n: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(14);
    let levels: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(7);
    let reps: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    blindfed::parallel::set_num_threads(1).unwrap();
    let ctx = Context::new(&ParameterSpec::new(log_n, levels, 40)).unwrap();
    let sk = SecretKey::generate(&ctx);
    let rlk = sk.relin_key();
    let gk = sk.galois_keys(&[1], false).unwrap();
    let v: Vec<Complex> = (0..ctx.params.slots()).map(|i| Complex::new((i as f64).cos(), 0.0)).collect();
    let pt = Plaintext::encode(&ctx, &v, None, None).unwrap();
    let ct = sk.public_key().encrypt(&pt).unwrap();
    let start = std::time::Instant::now();
    for _ in 0..reps {
        match op {
            "mul" => {
                drop(ev::rescale(&ev::relinearize(&ev::multiply(&ct, &ct).unwrap(), &rlk).unwrap()).unwrap())
            }
            "rotate" => drop(ev::rotate(&ct, 1, &gk).unwrap()),
            "decrypt" => drop(sk.decrypt(&ct).unwrap()),
            "mul_plain" => drop(ev::mul_plain(&ct, &pt).unwrap()),
            other => panic!("unknown op {other}"),
        }
    }
    println!("{op}: {:.3} ms per op", start.elapsed().as_secs_f64() * 1e3 / reps as f64);
}
