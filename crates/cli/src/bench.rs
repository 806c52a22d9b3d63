//! `confide bench paillier`: Paillier throughput and round times, each with a `plain` baseline
//! measured in the same run. Prints JSON. All measurements run on one thread.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use confide_crypto::{FixedPoint, PackingLayout, SecretKey, SecretKeyJson};
use confide_secagg::{AggregationClient, PaillierClient, PlainClient, SchemeParams};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::json;

use crate::simulate::{ModeArg, SchemeArg, SimulateArgs, simulate};

/// Benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Paillier operations, packed throughput and breast_homo round times against `plain`.
    Paillier(PaillierBench),
}

/// Options of `confide bench paillier`.
#[derive(clap::Args, Debug)]
pub struct PaillierBench {
    /// Job file for the round-time measurement.
    #[arg(long, default_value = "examples/breast_homo.toml")]
    config: PathBuf,
    /// Rounds per scheme for the round-time measurement.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Operations per micro-benchmark.
    #[arg(long, default_value_t = 50)]
    ops: usize,
    /// Weights in the packed-throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    weights: usize,
    /// Secret key file (default: the committed TEST-ONLY key; throughput does not depend on
    /// which key is used).
    #[arg(long)]
    key: Option<PathBuf>,
}

pub async fn run(cmd: BenchCommand) -> Result<i32> {
    match cmd {
        BenchCommand::Paillier(b) => paillier(b).await,
    }
}

fn per_sec(n: usize, secs: f64) -> f64 {
    n as f64 / secs.max(1e-12)
}

fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

async fn paillier(b: PaillierBench) -> Result<i32> {
    let sk = match &b.key {
        Some(k) => crate::load_secret_key(k)?,
        None => {
            let json: SecretKeyJson = serde_json::from_str(include_str!(
                "../../crypto/testdata/paillier-2048-TEST-ONLY.json"
            ))?;
            SecretKey::from_json(&json, false)?
        }
    };
    let pk = sk.public_key().clone();
    let mut rng = ChaCha20Rng::from_entropy();
    let n = b.ops.max(1);
    let fp = FixedPoint::new(24, 4.0)?;
    let layout = PackingLayout::new(&fp, 2, pk.modulus_bits())?;
    let pts: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            // A full plaintext: every slot used.
            layout
                .pack(&vec![
                    fp.encode(i as f32 / n as f32);
                    layout.slots_per_plaintext
                ])
                .map(|mut p| p.remove(0))
        })
        .collect::<Result<_, _>>()?;

    // Ciphertext operations at 2048 bits; textbook encryption is the baseline for DJN.
    let (std_cts, std_s) = time(|| {
        pts.iter()
            .map(|p| pk.encrypt_standard(p, &mut rng))
            .collect::<Result<Vec<_>, _>>()
    });
    std_cts?;
    let (cts, enc_s) = time(|| {
        pts.iter()
            .map(|p| pk.encrypt(p, &mut rng))
            .collect::<Result<Vec<_>, _>>()
    });
    let cts = cts?;
    let (rands, offline_s) = time(|| {
        (0..n)
            .map(|_| pk.randomizer(&mut rng))
            .collect::<Result<Vec<_>, _>>()
    });
    let rands = rands?;
    let (online, online_s) = time(|| {
        pts.iter()
            .zip(&rands)
            .map(|(p, r)| pk.encrypt_with_randomizer(p, r))
            .collect::<Result<Vec<_>, _>>()
    });
    online?;
    let (dec, dec_s) = time(|| {
        cts.iter()
            .map(|c| sk.decrypt(c))
            .collect::<Result<Vec<_>, _>>()
    });
    dec?;
    let adds = n * 20;
    let (sum, add_s) = time(|| {
        let mut acc = cts[0].clone();
        for i in 0..adds {
            acc = pk.add(&acc, &cts[i % cts.len()])?;
        }
        Ok::<_, confide_crypto::PaillierError>(acc)
    });
    sum?;

    // Packed throughput on a whole update, counting packing, encryption and framing.
    let params = SchemeParams {
        fixed: fp,
        len: b.weights,
        owners: 2,
        min_owners: 2,
    };
    let update: Vec<i64> = (0..b.weights)
        .map(|i| fp.encode(((i % 97) as f32 - 48.0) / 50.0))
        .collect();
    let mut client = PaillierClient::new(pk.clone(), &params, rand::random())?;
    let (payload, packed_s) = time(|| client.start(&update));
    let payload = payload?;
    let (plain_payload, plain_s) = time(|| PlainClient.start(&update));
    let plain_payload = plain_payload?;

    // breast_homo rounds, in-process over gRPC + mTLS, under `plain` and `paillier`.
    let mut rounds = serde_json::Map::new();
    for scheme in [SchemeArg::Plain, SchemeArg::Paillier] {
        let dir = tempfile::tempdir()?;
        let key_file = dir.path().join("key.json");
        std::fs::write(&key_file, serde_json::to_string(&sk.to_json("bench"))?)?;
        let args = SimulateArgs {
            config: b.config.clone(),
            report: None,
            mode: Some(ModeArg::InProcess),
            work_dir: Some(dir.path().join("run")),
            seed: None,
            scheme: Some(scheme),
            rounds: Some(b.rounds),
            paillier_key: Some(key_file),
            quiet: true,
            crash: Vec::new(),
        };
        let out = simulate(&args).await.context("round benchmark")?;
        let history = out.report["history"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let secs: Vec<f64> = history
            .iter()
            .filter_map(|r| r["seconds"].as_f64())
            .collect();
        // The first round includes connection setup; report it separately.
        let steady: Vec<f64> = secs.iter().skip(1).copied().collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        let name = if scheme == SchemeArg::Plain {
            "plain"
        } else {
            "paillier"
        };
        rounds.insert(
            name.into(),
            json!({
                "rounds": secs.len(),
                "first_round_ms": secs.first().map(|s| s * 1e3),
                "mean_round_ms": mean(&steady) * 1e3,
                "min_round_ms": steady.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
                "test_accuracy": out.report["test_accuracy"],
            }),
        );
    }
    let round_ratio = rounds["paillier"]["mean_round_ms"].as_f64().unwrap_or(0.0)
        / rounds["plain"]["mean_round_ms"]
            .as_f64()
            .unwrap_or(1.0)
            .max(1e-9);

    let report = json!({
        "benchmark": "paillier",
        "bigint_backend": confide_crypto::bigint_backend(),
        "modulus_bits": pk.modulus_bits(),
        "threads": 1,
        "ops": n,
        "encrypt_per_sec": per_sec(n, enc_s),
        "encrypt_textbook_per_sec": per_sec(n, std_s),
        "djn_speedup_over_textbook": std_s / enc_s.max(1e-12),
        "encrypt_offline_randomizer_per_sec": per_sec(n, offline_s),
        "encrypt_online_per_sec": per_sec(n, online_s),
        "decrypt_per_sec": per_sec(n, dec_s),
        "add_per_sec": per_sec(adds, add_s),
        "packing": {
            "scale_bits": fp.scale_bits,
            "clip": fp.clip,
            "owners": 2,
            "slot_bits": layout.slot_bits,
            "slots_per_ciphertext": layout.slots_per_plaintext,
        },
        "packed": {
            "weights": b.weights,
            "ciphertexts": layout.plaintexts_for(b.weights),
            "seconds": packed_s,
            "weights_per_sec": per_sec(b.weights, packed_s),
            "upload_bytes": payload.len(),
        },
        "plain": {
            "weights_per_sec": per_sec(b.weights, plain_s),
            "upload_bytes": plain_payload.len(),
        },
        "packed_vs_plain_slowdown": packed_s / plain_s.max(1e-12),
        "breast_homo_round": rounds,
        "round_time_ratio_paillier_over_plain": round_ratio,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(0)
}
