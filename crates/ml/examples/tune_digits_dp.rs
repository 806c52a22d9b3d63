//! How `examples/digits_dp.toml`'s hyper-parameters were chosen, without looking at the test
//! set: a stratified 80/20 validation split of `digits_train.csv` (seed 99), DP-SGD at
//! ε = 8, δ = 1e-5 (RDP accountant, σ calibrated for the *fit* part's size, which is smaller
//! than the full training file, so the final run needs no more noise than tuning had), each
//! setting run with 3 seeds, ranked by mean validation accuracy. `digits_test.csv` is never
//! read here.
//!
//! Run: `cargo run --release -p confide-ml --example tune_digits_dp`

use std::path::Path;

use confide_core::{AccountantKind, PrivacyLevel, PrivacySection};
use confide_ml::dataset::{Column, CsvSpec, load_csv};
use confide_ml::dpsgd::{CsprngNoise, plan_private_run, train_dp};
use confide_ml::train::evaluate;
use confide_ml::{ModelKind, ModelSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn main() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits/digits_train.csv");
    let csv = CsvSpec {
        has_header: true,
        label: Column::Name("label".into()),
        exclude: vec![],
    };
    let mut all = load_csv(&path, &csv, 10).unwrap_or_else(|e| panic!("{e}"));
    for v in &mut all.features {
        *v /= 16.0;
    }
    let (fit, val) = all.stratified_split(0.2, 99);
    let spec = ModelSpec::preset(ModelKind::Mlp, 64, vec![64], 10);
    let privacy = PrivacySection {
        level: PrivacyLevel::Record,
        target_epsilon: Some(8.0),
        noise_multiplier: None,
        delta: 1e-5,
        clip_norm: 1.0,
        accountant: AccountantKind::Rdp,
        min_honest_owners: None,
        modulus_bits: None,
        granularity: None,
    };
    let mut results = Vec::new();
    for batch in [64usize, 128, 256] {
        for epochs in [10u32, 20, 40] {
            for lr in [0.5f64, 1.0, 2.0, 4.0] {
                for clip in [0.5f64, 1.0, 2.0] {
                    let p = PrivacySection {
                        clip_norm: clip,
                        ..privacy.clone()
                    };
                    let run = plan_private_run(&p, fit.len(), batch, epochs, 1, lr / clip, 0.0)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let mut accs = Vec::new();
                    for seed in 1..=3u64 {
                        let mut sampler = ChaCha20Rng::seed_from_u64(seed);
                        let mut noise = CsprngNoise::from_seed(seed + 100);
                        let out = train_dp(
                            &spec,
                            &spec.initial_vector(seed),
                            &fit,
                            &run.config,
                            &mut sampler,
                            &mut noise,
                            &mut |_, _| {},
                        )
                        .unwrap_or_else(|e| panic!("{e}"));
                        accs.push(evaluate(&spec, &out.params, &val).expect("eval").accuracy);
                    }
                    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
                    let min = accs.iter().copied().fold(1.0, f64::min);
                    println!(
                        "batch {batch:3} epochs {epochs:2} lr {lr:3} clip {clip:3} σ {:.3} ε {:.3}: val mean {mean:.4} min {min:.4}",
                        run.plan.noise_multiplier, run.plan.epsilon
                    );
                    results.push((mean, min, batch, epochs, lr, clip));
                }
            }
        }
    }
    results.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("best 5 (mean val acc, min, batch, epochs, lr, clip):");
    for r in results.iter().take(5) {
        println!("{r:?}");
    }
}
