//! Figures for Confide's DP building blocks, printed as JSON lines:
//! `cargo run --release -p confide-dp --example dp_bench`.
//!
//! - PLD ε against dp-accounting's golden values (`testdata/dp_accounting_pld.json`), with the
//!   time each case takes, and the time to calibrate σ for the first case;
//! - throughput of the noise samplers, with raw ChaCha20 output as the baseline in the same
//!   process.

use std::time::Instant;

use confide_dp::noise::{self, DiscreteGaussian, GaussianNoise, NoiseRng, SigmaSq};
use rand::RngCore;

fn main() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("../testdata/dp_accounting_pld.json")).expect("json");
    for c in v["cases"].as_array().expect("cases") {
        let q = c["q"].as_f64().expect("q");
        let s = c["sigma"].as_f64().expect("sigma");
        let t = c["steps"].as_u64().expect("steps");
        let d = c["delta"].as_f64().expect("delta");
        let golden = c["pld_epsilon"].as_f64().expect("pld_epsilon");
        let start = Instant::now();
        let ours = confide_dp::pld::epsilon(q, s, t, d).expect("pld");
        let secs = start.elapsed().as_secs_f64();
        let rdp = confide_dp::rdp::epsilon(q, s, t, d).expect("rdp");
        println!(
            "{{\"bench\":\"pld_epsilon\",\"q\":{q},\"sigma\":{s},\"steps\":{t},\"delta\":{d},\
             \"ours\":{ours},\"dp_accounting\":{golden},\"rel_diff\":{:.3e},\"rdp\":{rdp},\
             \"seconds\":{secs:.4}}}",
            (ours - golden) / golden
        );
    }
    let c = &v["cases"][0];
    let (q, t, d) = (
        c["q"].as_f64().expect("q"),
        c["steps"].as_u64().expect("steps"),
        c["delta"].as_f64().expect("delta"),
    );
    let target = c["pld_epsilon"].as_f64().expect("pld_epsilon");
    let start = Instant::now();
    let sigma = confide_dp::pld::noise_multiplier_for(target, q, t, d).expect("sigma");
    println!(
        "{{\"bench\":\"pld_noise_multiplier_for\",\"target\":{target},\"sigma\":{sigma},\
         \"seconds\":{:.3}}}",
        start.elapsed().as_secs_f64()
    );

    let mut rng = NoiseRng::from_seed([1; 32]);
    // Baseline: raw ChaCha20 words.
    let n = 20_000_000u64;
    let start = Instant::now();
    let mut acc = 0u64;
    for _ in 0..n {
        acc ^= rng.next_u64();
    }
    let base = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"chacha20_u64\",\"per_second\":{base:.4e},\"check\":{}}}",
        acc & 1
    );

    // Box–Muller into f64.
    let mut z = vec![0.0f64; 1 << 20];
    let reps = 20;
    let start = Instant::now();
    for _ in 0..reps {
        noise::fill_standard_normal(&mut z, &mut rng);
    }
    let rate = (reps * z.len()) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"standard_normal\",\"per_second\":{rate:.4e},\"vs_chacha_u64\":{:.3}}}",
        rate / base
    );

    // DP-SGD-sized noise: 200 000 f32 parameters per step, snapped.
    let gn = GaussianNoise::new(1.1, 1024.0).expect("noise");
    let mut params = vec![0.25f32; 200_000];
    let reps = 200;
    let start = Instant::now();
    for _ in 0..reps {
        gn.add_to(&mut params, &mut rng).expect("add");
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = (reps * params.len()) as f64 / secs;
    println!(
        "{{\"bench\":\"gaussian_noise_add_to\",\"params\":{},\"per_second\":{rate:.4e},\
         \"ms_per_step\":{:.3},\"grid\":{}}}",
        params.len(),
        1e3 * secs / reps as f64,
        gn.grid()
    );

    // Exact discrete Gaussian.
    for sigma in [1.5, 3.3, 10.0, 123.4, 1000.0, 10_000.0] {
        let dg = DiscreteGaussian::new(SigmaSq::from_sigma(sigma).expect("σ²")).expect("dg");
        let n = 1_000_000;
        let start = Instant::now();
        let mut acc = 0i64;
        for _ in 0..n {
            acc = acc.wrapping_add(dg.sample(&mut rng));
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "{{\"bench\":\"discrete_gaussian\",\"sigma\":{sigma},\"sigma_sq_den\":{},\
             \"per_second\":{rate:.4e},\"check\":{}}}",
            dg.sigma_sq().den(),
            acc & 1
        );
    }
}
