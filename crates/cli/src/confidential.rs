//! `confide simulate` for a job with a `[confidential]` section: the confidential mode on one
//! machine. This process plays the untrusted host, the data owners and the model recipients;
//! the trusted core is its own confined process (`confide trainer-core`), reached only through
//! its typed channel.
//!
//! 1. The host starts the core with a fresh dev-TEE key and root sealing key in the core's
//!    directory, and sends it the configuration (job, owners' and recipients' signing keys).
//! 2. Each owner asks for evidence with a fresh nonce and checks it against its attestation
//!    policy (the dev TEE's key and the measurement of the `confide` binary it audited) and the
//!    configuration it expects; only then does it encrypt its CSV to the core's key (chunked
//!    HPKE envelope) and sign the envelope's content id. The host stores the envelope and the
//!    sealed copy the core returns: ciphertext only.
//! 3. The core trains on the sealed datasets with DP-SGD and returns the sealed model and a
//!    report limited to the DP parameters and the accuracy on the public test set.
//! 4. Each recipient signs a fresh key; the core encrypts the model to it; the recipient opens
//!    it and exports it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use confide_attest::Policy;
use confide_attest::dev::DevTee;
use confide_core::{ConfidentialSection, JobConfig, JobSpec, Partition};
use confide_crypto::SigningKey;
use confide_crypto::envelope::RecipientKey;
use confide_ml::Standardizer;
use confide_ml::export::{ModelCard, export_model};
use confide_trainer::core::TrustedCore;
use confide_trainer::host::{Core, CoreProcess};
use confide_trainer::owner::{attest_and_seal, open_release, sign_release_key};
use confide_trainer::protocol::{CoreConfig, CoreReply, CoreRequest, SealedBlob, TrainingReport};
use rand::RngCore;
use serde_json::json;

use crate::simulate::{Outcome, SimulateArgs};

fn fresh_key() -> Result<(Vec<u8>, SigningKey)> {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
    let key = SigningKey::from_pkcs8_der(der.as_ref())?;
    Ok((der.as_ref().to_vec(), key))
}

fn call(core: &mut Core, request: &CoreRequest, what: &str) -> Result<CoreReply> {
    match core.call(request)? {
        CoreReply::Refused { reason } => bail!("the trusted core refused {what}: {reason}"),
        reply => Ok(reply),
    }
}

/// Seconds since the Unix epoch (the time attestation is verified at).
pub(crate) fn unix_now() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs())
}

/// Stores a sealed blob on the host's disk; returns its path.
fn keep(store: &Path, b: &SealedBlob) -> Result<PathBuf> {
    let path = store.join(format!(
        "{}.v{}.sealed",
        b.slot.replace('/', "_"),
        b.version
    ));
    std::fs::write(&path, &b.blob).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Checks a `[confidential]` job: the dev TEE (the only one without hardware), at least one
/// recipient, a model owner among them, and DP-SGD. Returns the section.
pub(crate) fn checked_section(config: &JobConfig) -> Result<ConfidentialSection> {
    let section = config
        .confidential
        .clone()
        .context("the job has no [confidential] section")?;
    if section.tee != "dev" {
        bail!(
            "[confidential] tee = `{}`: only the dev TEE runs on a machine without TEE hardware (see the README for SGX, TDX and SEV-SNP)",
            section.tee
        );
    }
    if section.recipients.is_empty() {
        bail!("[confidential] recipients is empty: nobody could receive the model");
    }
    if let Some(m) = &section.model_owner
        && !section.recipients.contains(m)
    {
        bail!("[confidential] model_owner `{m}` is not one of the recipients");
    }
    if config.spec().privacy.is_none() {
        bail!("the confidential trainer trains with DP-SGD only: add a [privacy] section");
    }
    Ok(section)
}

/// The dev TEE of a trusted process in `dir`: its signing key `tee.key` (PKCS#8, created on
/// first use, mode 0600), the measurement of the `measured` binary (the one the process
/// runs), and the attestation policy that pins both (also written to
/// `dir/attestation-policy.toml`, for the parties who check it).
pub(crate) fn dev_tee_files(dir: &Path, measured: &Path) -> Result<(SigningKey, [u8; 32], String)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join("tee.key");
    let key = if key_path.exists() {
        SigningKey::from_pkcs8_der(
            &std::fs::read(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?,
        )?
    } else {
        let (der, key) = fresh_key()?;
        crate::write_secret_file(&key_path, &der)?;
        key
    };
    let measurement = confide_attest::dev::measure_file(measured)
        .with_context(|| format!("cannot measure {}", measured.display()))?;
    let policy = format!(
        "# The dev TEE (insecure): its signing key and the measurement of the audited binary.\n[dev]\nallow = true\nsigners = [\"{}\"]\nmeasurements = [\"{}\"]\n",
        hex::encode(key.public_key()),
        hex::encode(measurement)
    );
    let path = dir.join("attestation-policy.toml");
    std::fs::write(&path, &policy).with_context(|| format!("cannot write {}", path.display()))?;
    Ok((key, measurement, policy))
}

/// The binary the trusted core runs (and is measured) as: under SML-2 the minimal
/// `confide-trainer-core` when it sits next to this executable (`cargo build --release
/// --workspace` builds it), else this executable's `trainer-core` command; under SML-1 this
/// executable, host and all.
pub(crate) fn core_binary(partition: Partition) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let minimal = exe.with_file_name(confide_trainer::entry::CORE_BINARY);
    Ok(match partition {
        Partition::Sml2 if minimal.is_file() => minimal,
        _ => exe,
    })
}

/// Starts the trusted core for `core_config` with a fresh dev-TEE key and root sealing key in
/// `core_dir` (which must not exist yet): as its own confined process ([`core_binary`],
/// logging to `log`) under SML-2, or inside this process under SML-1. Returns the core, the
/// attestation policy (TOML) that pins the dev TEE's key and the core binary's measurement
/// (which owners who audited that binary would hold), and that binary.
pub(crate) fn start_core(
    partition: Partition,
    core_dir: &Path,
    log: &Path,
    core_config: &CoreConfig,
) -> Result<(Core, String, PathBuf)> {
    if core_dir.exists() {
        bail!(
            "{} already exists; choose a new work directory",
            core_dir.display()
        );
    }
    std::fs::create_dir_all(core_dir)
        .with_context(|| format!("cannot create {}", core_dir.display()))?;
    let exe = std::env::current_exe()?;
    let binary = core_binary(partition)?;
    // The core's secrets, in its directory (dev mode: the host can read them too).
    let (tee_key, measurement, policy) = dev_tee_files(core_dir, &binary)?;
    let mut seal_root = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seal_root);
    crate::write_secret_file(&core_dir.join("seal.key"), seal_root)?;
    let core = match partition {
        Partition::Sml2 => {
            let log = std::fs::File::create(log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let mut command = std::process::Command::new(&binary);
            if binary == exe {
                command.arg("trainer-core");
            }
            command
                .arg("--dir")
                .arg(core_dir)
                .env("CONFIDE_LOG", "warn")
                .stderr(log);
            Core::Process(CoreProcess::spawn(command, core_config)?)
        }
        Partition::Sml1 => Core::InProcess(Box::new(
            TrustedCore::new(
                core_config.clone(),
                Box::new(DevTee::new(tee_key, measurement)),
                &seal_root,
                &measurement,
            )
            .map_err(anyhow::Error::msg)?,
        )),
    };
    Ok((core, policy, binary))
}

/// Exports a released model (safetensors and model card) into `dir`; returns the weights' path.
pub(crate) fn export_released(
    spec: &JobSpec,
    params: &[f32],
    report: &TrainingReport,
    dir: &Path,
) -> Result<PathBuf> {
    let standardization = Standardizer::of_job(&spec.data.standardize);
    let provenance = [
        ("job_id".to_string(), spec.job.id.clone()),
        (
            "trainer".to_string(),
            "confide trainer-core (dev TEE)".into(),
        ),
        ("epsilon".to_string(), report.epsilon.to_string()),
        ("delta".to_string(), report.delta.to_string()),
        ("accountant".to_string(), report.accountant.clone()),
    ]
    .into();
    let card = ModelCard::new(
        &confide_ml::job::model_spec(spec),
        spec.data.features.clone(),
        standardization,
        provenance,
    );
    let (weights, _) = export_model(dir, "model", params, &card)?;
    Ok(weights)
}

/// Runs a confidential job.
pub fn simulate(args: &SimulateArgs, config: JobConfig, work: PathBuf) -> Result<Outcome> {
    let started = Instant::now();
    let section = checked_section(&config)?;
    let spec = config.spec();
    let store = work.join("host").join("store");
    let uploads = work.join("host").join("uploads");
    let (core_dir, logs) = (work.join("core"), work.join("logs"));
    if core_dir.exists() {
        bail!(
            "{} already exists; choose a new --work-dir",
            core_dir.display()
        );
    }
    for d in [&store, &uploads, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    // Owners and recipients with fresh signing keys.
    let mut owner_keys = BTreeMap::new();
    for p in &config.parties {
        owner_keys.insert(p.name.clone(), fresh_key()?.1);
    }
    let mut recipient_keys = BTreeMap::new();
    for r in &section.recipients {
        recipient_keys.insert(r.clone(), fresh_key()?.1);
    }
    let hex_keys = |m: &BTreeMap<String, SigningKey>| -> BTreeMap<String, String> {
        m.iter()
            .map(|(n, k)| (n.clone(), hex::encode(k.public_key())))
            .collect()
    };
    let core_config = CoreConfig {
        spec: spec.clone(),
        owners: hex_keys(&owner_keys),
        recipients: hex_keys(&recipient_keys),
        partition: section.partition,
    };
    let (mut core, policy, binary) = start_core(
        section.partition,
        &core_dir,
        &logs.join("trainer-core.log"),
        &core_config,
    )?;
    // The owners' attestation policy: the dev TEE's key and the binary they audited.
    let policy = Policy::parse(&policy)?;

    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut sealed = Vec::new();
    let mut upload_report = Vec::new();
    let mut claims = None;
    for p in &config.parties {
        bar.set_message(format!("`{}` checks the trainer and uploads", p.name));
        let now = unix_now()?;
        let mut file = std::fs::File::open(&p.data)
            .with_context(|| format!("cannot read {}", p.data.display()))?;
        let (up, c) = attest_and_seal(
            &mut |r| core.call(&r).map_err(|e| e.to_string()),
            (&core_config, &policy),
            (&p.name, &owner_keys[&p.name]),
            &mut file,
            now,
        )
        .map_err(anyhow::Error::msg)?;
        claims = Some(c);
        let hex_id = up.summary.id.trim_start_matches("sha256:").to_string();
        std::fs::write(uploads.join(&hex_id), &up.envelope)?;
        let CoreReply::Stored {
            sealed: blob, rows, ..
        } = call(
            &mut core,
            &CoreRequest::Ingest {
                owner: p.name.clone(),
                envelope: up.envelope,
                signature: up.signature,
            },
            &format!("the upload of `{}`", p.name),
        )?
        else {
            bail!("the trusted core answered an upload with something else");
        };
        keep(&store, &blob)?;
        upload_report.push(json!({
            "owner": p.name,
            "envelope_id": up.summary.id,
            "envelope_bytes": up.summary.envelope_bytes,
            "plaintext_bytes": up.summary.plaintext_bytes,
            "chunks": up.summary.chunks,
            "rows": rows,
            "sealed_slot": blob.slot,
            "sealed_version": blob.version,
        }));
        sealed.push(blob);
    }

    bar.set_message("the trusted core trains with DP-SGD");
    let public_test = match &config.evaluation {
        Some(e) => {
            std::fs::read(&e.test).with_context(|| format!("cannot read {}", e.test.display()))?
        }
        None => Vec::new(),
    };
    let train_start = Instant::now();
    let CoreReply::Trained { model, report } = call(
        &mut core,
        &CoreRequest::Train {
            datasets: sealed,
            public_test,
            seed: spec.job.seed,
        },
        "training",
    )?
    else {
        bail!("the trusted core answered training with something else");
    };
    let training_seconds = train_start.elapsed().as_secs_f64();
    keep(&store, &model)?;

    bar.set_message("release to the recipients");
    let model_spec = confide_ml::job::model_spec(&spec);
    let mut releases = Vec::new();
    let mut exported = None;
    let mut test_metrics = None;
    for (name, signer) in &recipient_keys {
        let release_key = RecipientKey::generate();
        let signature = sign_release_key(&core_config, name, signer, &release_key.public_bytes());
        let nonce: [u8; 32] = rand::random();
        let CoreReply::Released {
            envelope,
            envelope_id,
            report_json,
            evidence,
        } = call(
            &mut core,
            &CoreRequest::Release {
                recipient: name.clone(),
                key: release_key.public_bytes(),
                signature,
                model: model.clone(),
                nonce: nonce.to_vec(),
            },
            &format!("the release to `{name}`"),
        )?
        else {
            bail!("the trusted core answered a release with something else");
        };
        let (params, _, _) = open_release(
            (&core_config, &policy),
            (name, &release_key),
            (&envelope, &report_json, &evidence),
            &nonce,
            unix_now()?,
        )
        .map_err(anyhow::Error::msg)?;
        if exported.is_none() {
            exported = Some(export_released(
                &spec,
                &params,
                &report,
                &work.join("model"),
            )?);
            if let Some(e) = &config.evaluation {
                let test = confide_ml::job::load_job_data(&spec, &e.test)?;
                test_metrics = Some(confide_ml::train::evaluate(&model_spec, &params, &test)?);
            }
        }
        releases
            .push(json!({"recipient": name, "envelope_id": envelope_id, "bytes": envelope.len()}));
    }
    core.finish()?;
    bar.finish_and_clear();
    let claims = claims.context("no owner checked the trainer")?;
    let report_json = json!({
        "job_id": spec.job.id,
        "status": "finished",
        "message": "",
        "scheme": "confidential",
        "mode": "dev TEE, insecure: it protects nothing against the host",
        "partition": section.partition.as_str(),
        "core_binary": binary.display().to_string(),
        "parties": config.parties.len(),
        "rounds": 1,
        "test_accuracy": test_metrics.map(|m| m.accuracy),
        "test_correct": test_metrics.map(|m| m.correct),
        "test_rows": test_metrics.map(|m| m.rows),
        "test_log_loss": test_metrics.map(|m| m.log_loss),
        "privacy_level": "record",
        "epsilon": report.epsilon,
        "delta": report.delta,
        "accountant": report.accountant,
        "noise_multiplier": report.noise_multiplier,
        "clip_norm": spec.privacy.as_ref().map(|p| p.clip_norm),
        "steps": report.steps,
        "train_rows": report.rows,
        "core_public_test_accuracy": report.public_test_accuracy,
        "training_seconds": training_seconds,
        "wall_seconds": started.elapsed().as_secs_f64(),
        "attestation": {
            "tee": format!("{:?}", claims.kind),
            "insecure": claims.insecure,
            "measurement": hex::encode(&claims.measurement),
            "config_digest": hex::encode(core_config.digest()),
        },
        "uploads": upload_report,
        "releases": releases,
        "model": exported.map(|p| p.display().to_string()),
        "work_dir": work.display().to_string(),
    });
    let text = serde_json::to_string_pretty(&report_json)?;
    std::fs::write(work.join("report.json"), &text)?;
    Ok(Outcome {
        report: report_json,
        finished: true,
    })
}
