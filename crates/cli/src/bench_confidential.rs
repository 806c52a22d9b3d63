//! `confide bench confidential`: the cost of the confidential mode's cryptography (attestation
//! check, HPKE envelopes, owner signatures, sealing, unsealing, release) against the same
//! DP-SGD training on the same data without it, both in this process. Prints JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use confide_attest::Policy;
use confide_attest::dev::DevTee;
use confide_core::JobConfig;
use confide_crypto::SigningKey;
use confide_crypto::envelope::RecipientKey;
use confide_ml::Dataset;
use confide_ml::dpsgd::{self, CsprngNoise};
use confide_trainer::core::TrustedCore;
use confide_trainer::owner::{attest_and_seal, open_model, sign_release_key};
use confide_trainer::protocol::{CoreConfig, CoreReply, CoreRequest};
use rand::SeedableRng;
use serde_json::json;

/// Options of `confide bench confidential`.
#[derive(clap::Args, Debug)]
pub struct ConfidentialBench {
    /// A job file with a `[confidential]` section.
    #[arg(long, default_value = "examples/confidential_digits.toml")]
    config: PathBuf,
    /// Runs of each variant (alternating).
    #[arg(long, default_value_t = 5)]
    repeats: u32,
}

fn key() -> Result<(Vec<u8>, SigningKey)> {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("key generation failed"))?;
    Ok((
        der.as_ref().to_vec(),
        SigningKey::from_pkcs8_der(der.as_ref())?,
    ))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Parses every owner's CSV and trains with DP-SGD: the work without any cryptography.
fn plain_run(config: &JobConfig, csvs: &[(String, Vec<u8>)]) -> Result<f64> {
    let spec = config.spec();
    let start = Instant::now();
    let parts = csvs
        .iter()
        .map(|(name, csv)| confide_ml::job::read_job_data(&spec, &csv[..], name))
        .collect::<Result<Vec<_>, _>>()?;
    let train = Dataset::concat(parts);
    let train = train.context("no data")?;
    let privacy = spec.privacy.as_ref().context("no [privacy]")?;
    let run = dpsgd::plan_private_run(
        privacy,
        train.len(),
        spec.training.batch_size,
        spec.job.rounds * spec.training.local_epochs,
        1,
        spec.training.learning_rate,
        spec.training.l2,
    )
    .map_err(anyhow::Error::msg)?;
    let model = confide_ml::job::model_spec(&spec);
    let out = dpsgd::train_dp(
        &model,
        &model.initial_vector(spec.job.seed),
        &train,
        &run.config,
        &mut rand_chacha::ChaCha20Rng::from_entropy(),
        &mut CsprngNoise::from_entropy().map_err(anyhow::Error::msg)?,
        &mut |_, _| {},
    )?;
    std::hint::black_box(out.params);
    Ok(start.elapsed().as_secs_f64())
}

/// The whole confidential flow through the trusted core, in this process (no separate process,
/// no confinement): attestation and its check, envelopes and signatures, ingestion and sealing,
/// unsealing and training, release and opening.
fn confidential_run(config: &JobConfig, csvs: &[(String, Vec<u8>)]) -> Result<f64> {
    let spec = config.spec();
    let owners: Vec<(String, SigningKey)> = csvs
        .iter()
        .map(|(n, _)| Ok((n.clone(), key()?.1)))
        .collect::<Result<_>>()?;
    let recipient = key()?.1;
    let core_config = CoreConfig {
        spec,
        owners: owners
            .iter()
            .map(|(n, k)| (n.clone(), hex::encode(k.public_key())))
            .collect(),
        recipients: [(
            "model-owner".to_string(),
            hex::encode(recipient.public_key()),
        )]
        .into(),
        partition: confide_core::Partition::Sml2,
    };
    let (_, tee) = key()?;
    let measurement = [1u8; 32];
    let policy = Policy::parse(&format!(
        "[dev]\nallow = true\nsigners = [\"{}\"]\nmeasurements = [\"{}\"]\n",
        hex::encode(tee.public_key()),
        hex::encode(measurement)
    ))?;
    let start = Instant::now();
    let mut core = TrustedCore::new(
        core_config.clone(),
        Box::new(DevTee::new(tee, measurement)),
        &[2u8; 32],
        &measurement,
    )
    .map_err(anyhow::Error::msg)?;
    let mut sealed = Vec::new();
    for ((name, csv), (_, owner_key)) in csvs.iter().zip(&owners) {
        let (up, _) = attest_and_seal(
            &mut |r| Ok(core.handle(r)),
            (&core_config, &policy),
            (name, owner_key),
            &mut &csv[..],
            0,
        )
        .map_err(anyhow::Error::msg)?;
        match core.handle(CoreRequest::Ingest {
            owner: name.clone(),
            envelope: up.envelope,
            signature: up.signature,
        }) {
            CoreReply::Stored { sealed: s, .. } => sealed.push(s),
            other => bail!("ingest: {other:?}"),
        }
    }
    let CoreReply::Trained { model, .. } = core.handle(CoreRequest::Train {
        datasets: sealed,
        public_test: Vec::new(),
        seed: core_config.spec.job.seed,
    }) else {
        bail!("training failed");
    };
    let release = RecipientKey::generate();
    let signature = sign_release_key(
        &core_config,
        "model-owner",
        &recipient,
        &release.public_bytes(),
    );
    let CoreReply::Released { envelope, .. } = core.handle(CoreRequest::Release {
        recipient: "model-owner".into(),
        key: release.public_bytes(),
        signature,
        model,
        nonce: vec![0u8; 32],
    }) else {
        bail!("release failed");
    };
    std::hint::black_box(
        open_model(&core_config, "model-owner", &release, &envelope).map_err(anyhow::Error::msg)?,
    );
    Ok(start.elapsed().as_secs_f64())
}

/// Runs the benchmark.
pub fn run(b: &ConfidentialBench) -> Result<i32> {
    let config = JobConfig::load(&b.config)?;
    if config.confidential.is_none() {
        bail!("{} has no [confidential] section", b.config.display());
    }
    let csvs: Vec<(String, Vec<u8>)> = config
        .parties
        .iter()
        .map(|p| {
            std::fs::read(&p.data)
                .with_context(|| format!("cannot read {}", p.data.display()))
                .map(|bytes| (p.name.clone(), bytes))
        })
        .collect::<Result<_>>()?;
    let (mut plain, mut confidential) = (Vec::new(), Vec::new());
    for _ in 0..b.repeats.max(1) {
        plain.push(plain_run(&config, &csvs)?);
        confidential.push(confidential_run(&config, &csvs)?);
    }
    let (p, c) = (median(&mut plain), median(&mut confidential));
    outln!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "benchmark": "confidential",
            "job": config.job.id,
            "repeats": b.repeats,
            "note": "same DP-SGD training on the same CSVs; confidential adds attestation and its check, HPKE envelopes, owner signatures, sealing, unsealing, release and opening (in this process: the separate core process and its confinement are not included)",
            "plain_median_ms": p * 1e3,
            "confidential_median_ms": c * 1e3,
            "overhead_ratio": c / p,
            "overhead_percent": (c / p - 1.0) * 100.0,
            "plain_ms": plain.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
            "confidential_ms": confidential.iter().map(|s| s * 1e3).collect::<Vec<_>>(),
        }))?
    );
    Ok(0)
}
