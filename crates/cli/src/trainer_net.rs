//! `confide trainer`, `confide upload` and `confide fetch`: the confidential mode over the
//! network, each role on its own machine (see `confide_net::trainer`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use confide_core::{JobConfig, Role};
use confide_governance::manifest::Mode;
use confide_governance::policy::{JobRequest, Policy as DatasetPolicy};
use confide_net::pki::Credentials;
use confide_net::trainer::{
    MAX_UPLOAD_BYTES, TrainerHostOptions, TrainerService, attest_trainer, connect_trainer,
    expected_config, fetch, send_dataset,
};
use confide_trainer::owner::seal_dataset;
use serde_json::json;

use crate::confidential::{checked_section, export_released, start_core, unix_now};
use crate::{RoleCommon, bind, governance};

/// `confide trainer`.
#[derive(clap::Args, Debug)]
pub struct TrainerArgs {
    #[command(flatten)]
    common: RoleCommon,
    /// The host's name in the federation directory (a coordinator certificate). The
    /// directory must also hold each owner's and each recipient's certificate: their keys are
    /// bound into the trusted core's configuration.
    #[arg(long, default_value = "coordinator")]
    name: String,
    /// Work directory: core/ (the core's dev-TEE key and sealing root), host/ (uploads,
    /// sealed blobs, releases, audit.redb), logs/, and attestation-policy.toml (the dev
    /// policy to give owners and recipients). It must not hold a core yet.
    #[arg(long)]
    work_dir: PathBuf,
    /// Stop once every recipient has fetched the model (default: serve until interrupted).
    #[arg(long)]
    until_released: bool,
    #[command(flatten)]
    passphrase: governance::Passphrase,
}

/// Where a client finds the trainer and which attestation policy it holds.
#[derive(clap::Args, Debug)]
pub struct TrainerLink {
    /// Job file (TOML) with a [confidential] section: the job this party expects.
    #[arg(long)]
    config: PathBuf,
    /// Federation directory with ca.crt, this party's certificate and key, and the
    /// certificates of every owner and recipient of the job.
    #[arg(long)]
    fed: PathBuf,
    /// This party's name in the federation directory.
    #[arg(long)]
    name: String,
    /// The trainer host's address (host:port).
    #[arg(long)]
    trainer: String,
    /// The trainer host's certificate name.
    #[arg(long, default_value = "coordinator")]
    trainer_name: String,
    /// The attestation policy (TOML: accepted TEEs, measurements, signers, TCB) that the
    /// trusted core's evidence must satisfy.
    #[arg(long)]
    attestation_policy: PathBuf,
    #[command(flatten)]
    passphrase: governance::Passphrase,
}

/// `confide upload`.
#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    #[command(flatten)]
    link: TrainerLink,
    /// The CSV to upload (default: this owner's `data` in the job file).
    #[arg(long)]
    data: Option<PathBuf>,
    /// This owner's policy for the dataset: the upload happens only if it allows the job
    /// (mode confidential, scheme confidential, the job's ε and recipients).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Privacy budget ledger (redb): the job's ε is debited for --dataset before the upload.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The dataset's name in the ledger (default: the policy's dataset name).
    #[arg(long)]
    dataset: Option<String>,
}

/// `confide fetch`.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    #[command(flatten)]
    link: TrainerLink,
    /// Directory to export the model into (model.safetensors and its model card).
    #[arg(long)]
    out: PathBuf,
    /// How long to wait for the model to be trained, in seconds.
    #[arg(long, default_value_t = 600.0)]
    wait_secs: f64,
}

/// `confide trainer-status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// This party's name (an owner or a recipient of the job).
    #[arg(long)]
    name: String,
    /// The trainer host's address (host:port).
    #[arg(long)]
    trainer: String,
    /// The trainer host's certificate name.
    #[arg(long, default_value = "coordinator")]
    trainer_name: String,
    #[command(flatten)]
    passphrase: governance::Passphrase,
}

/// Prints the trainer's state as this party may see it: an owner its own upload, a recipient
/// the report and its own releases (JSON).
pub async fn status(args: StatusArgs) -> Result<i32> {
    let creds = Credentials::load_with(&args.fed, &args.name, args.passphrase.get()?.as_deref())?;
    let mut client = connect_trainer(&args.trainer, &args.trainer_name, &creds).await?;
    let reply = client
        .trainer_status(confide_net::pb::TrainerStatusRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("trainer status: {}", s.message()))?
        .into_inner();
    let state: serde_json::Value = serde_json::from_str(&reply.state_json)?;
    outln!("{}", serde_json::to_string_pretty(&state)?);
    Ok(0)
}

/// Runs the trainer host until interrupted (or until every recipient fetched the model).
pub async fn trainer(args: TrainerArgs) -> Result<i32> {
    let config = JobConfig::load(&args.common.config)?;
    let section = checked_section(&config)?;
    let spec = config.spec();
    let creds = Credentials::load_with(
        &args.common.fed,
        &args.name,
        args.passphrase.get()?.as_deref(),
    )?;
    if creds.role != Role::Coordinator {
        bail!(
            "`{}` has role {}, not coordinator (the trainer host runs with a coordinator certificate)",
            creds.name,
            creds.role
        );
    }
    let core_config = expected_config(&spec, &section, &args.common.fed)?;
    let work = &args.work_dir;
    let (host_dir, logs) = (work.join("host"), work.join("logs"));
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let (core, policy, binary) = start_core(
        section.partition,
        &work.join("core"),
        &logs.join("trainer-core.log"),
        &core_config,
    )?;
    let policy_path = work.join("attestation-policy.toml");
    std::fs::write(&policy_path, &policy)
        .with_context(|| format!("cannot write {}", policy_path.display()))?;
    let public_test = match &config.evaluation {
        Some(e) => {
            std::fs::read(&e.test).with_context(|| format!("cannot read {}", e.test.display()))?
        }
        None => Vec::new(),
    };
    let service = TrainerService::new(
        TrainerHostOptions {
            core,
            config: core_config.clone(),
            dir: host_dir.clone(),
            public_test,
        },
        &creds,
    )?;
    let listener = bind(args.common.listen, "trainer").await?;
    eprintln!(
        "trainer: job `{}`, configuration {}, {} (dev TEE, insecure), core binary {}; dev attestation policy in {}",
        spec.job.id,
        hex::encode(core_config.digest()),
        section.partition.as_str(),
        binary.display(),
        policy_path.display()
    );
    let watched = service.clone();
    let recipients = core_config.recipients.len();
    let until_released = args.until_released;
    let shutdown = async move {
        let released = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let state = watched.state_json();
                let fetched: std::collections::BTreeSet<_> = state["releases"]
                    .as_array()
                    .map(|r| r.iter().map(|x| x["recipient"].to_string()).collect())
                    .unwrap_or_default();
                if fetched.len() >= recipients || state["phase"] == "failed" {
                    return;
                }
            }
        };
        if until_released {
            tokio::select! {
                () = released => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    confide_net::roles::serve_trainer(listener, &creds, service.clone(), shutdown).await?;
    let state = service.state_json();
    outln!("{}", serde_json::to_string_pretty(&state)?);
    Ok(if state["phase"] == "failed" { 1 } else { 0 })
}

/// What a client of the trainer loads: the job, its expected core configuration, its
/// credentials, the attestation policy and a connection.
struct Linked {
    config: JobConfig,
    section: confide_core::ConfidentialSection,
    expected: confide_trainer::protocol::CoreConfig,
    creds: Credentials,
    policy: confide_attest::Policy,
    client: confide_net::trainer::Client,
}

async fn link(l: &TrainerLink, role: Role) -> Result<Linked> {
    let config = JobConfig::load(&l.config)?;
    let section = checked_section(&config)?;
    let creds = Credentials::load_with(&l.fed, &l.name, l.passphrase.get()?.as_deref())?;
    if creds.role != role {
        bail!("`{}` has role {}, not {role}", creds.name, creds.role);
    }
    let expected = expected_config(&config.spec(), &section, &l.fed)?;
    let policy = confide_attest::Policy::load(&l.attestation_policy)
        .with_context(|| format!("attestation policy {}", l.attestation_policy.display()))?;
    let client = connect_trainer(&l.trainer, &l.trainer_name, &creds).await?;
    Ok(Linked {
        config,
        section,
        expected,
        creds,
        policy,
        client,
    })
}

fn claims_json(c: &confide_attest::Claims) -> serde_json::Value {
    json!({
        "tee": format!("{:?}", c.kind),
        "insecure": c.insecure,
        "measurement": hex::encode(&c.measurement),
    })
}

/// The (ε, δ) a confidential job spends: its `target_epsilon` (the core calibrates the noise to
/// stay within it for the total rows, which no single owner knows; a fixed noise multiplier
/// would leave an owner unable to tell its ε before training).
fn job_budget(spec: &confide_core::JobSpec) -> Result<(f64, f64)> {
    let privacy = spec
        .privacy
        .as_ref()
        .context("the confidential trainer trains with DP-SGD only")?;
    let epsilon = privacy.target_epsilon.context(
        "the job sets no target_epsilon: an owner cannot tell what it would spend before training, so it cannot check its policy or ledger",
    )?;
    Ok((epsilon, privacy.delta))
}

/// Checks the owner's dataset policy against the attested job. Returns the rule that allowed
/// it and the dataset's lifetime budget.
fn check_dataset_policy(
    path: &std::path::Path,
    linked: &Linked,
) -> Result<(String, DatasetPolicy)> {
    let policy = DatasetPolicy::load(path)?;
    let spec = linked.config.spec();
    let privacy = Some(job_budget(&spec)?);
    let ids = |names: &[String]| -> Result<Vec<String>> {
        names
            .iter()
            .map(|n| {
                let key = &linked.expected.recipients[n];
                Ok(confide_governance::identity::party_id(&hex::decode(key)?))
            })
            .collect()
    };
    let model_owner = linked
        .section
        .model_owner()
        .context("the job names no model owner")?
        .to_string();
    let request = JobRequest {
        job_id: spec.job.id.clone(),
        manifest_hash: hex::encode(linked.expected.digest()),
        model_owner: ids(std::slice::from_ref(&model_owner))?.remove(0),
        mode: Mode::Confidential,
        scheme: "confidential".into(),
        privacy,
        recipients: ids(&linked.section.recipients)?,
        code: "builtin".into(),
        code_reviews: Vec::new(),
    };
    let allowed = policy
        .evaluate(&request, time::OffsetDateTime::now_utc())
        .map_err(|d| anyhow::anyhow!("`{}` does not upload: {d}", linked.creds.name))?;
    Ok((allowed.rule, policy))
}

/// Uploads an owner's dataset; prints JSON.
pub async fn upload(args: UploadArgs) -> Result<i32> {
    let mut linked = link(&args.link, Role::Node).await?;
    let owner = linked.creds.name.clone();
    let spec = linked.config.spec();
    if !spec.owners.contains(&owner) {
        bail!("`{owner}` is not an owner of job `{}`", spec.job.id);
    }
    let data = match &args.data {
        Some(d) => d.clone(),
        None => linked
            .config
            .parties
            .iter()
            .find(|p| p.name == owner)
            .map(|p| p.data.clone())
            .with_context(|| format!("the job file has no data for `{owner}`; pass --data"))?,
    };
    // The owner's own checks, on its own machine, of the job the core is configured for.
    let (rule, dataset_policy) = match &args.policy {
        Some(p) => {
            let (rule, policy) = check_dataset_policy(p, &linked)?;
            (Some(rule), Some(policy))
        }
        None => (None, None),
    };
    let ledger = match (&args.ledger, &dataset_policy) {
        (None, Some(p)) if p.lifetime.is_some() => bail!(
            "the policy of dataset `{}` sets a lifetime ε; pass --ledger to enforce it",
            p.dataset
        ),
        (Some(path), _) => {
            let dataset = args
                .dataset
                .clone()
                .or_else(|| dataset_policy.as_ref().map(|p| p.dataset.clone()))
                .context("--ledger needs --dataset (or a --policy naming the dataset)")?;
            let l = confide_dp::ledger::BudgetLedger::open(path)
                .with_context(|| format!("privacy ledger {}", path.display()))?;
            Some((l, dataset))
        }
        (None, _) => None,
    };
    let key = linked.creds.signing_key()?;
    let (attested_key, claims) = attest_trainer(
        &mut linked.client,
        (&linked.expected, &linked.policy),
        &owner,
        unix_now()?,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    // Checked and sealed here, before anything is debited: a missing file, a CSV that does not
    // fit the job or a dataset too large fails without spending ε.
    let csv = std::fs::read(&data).with_context(|| format!("cannot read {}", data.display()))?;
    // The same parsing the core does: a CSV it would refuse is refused here, before any ε is
    // debited.
    confide_ml::job::read_job_data(&spec, &csv[..], &data.display().to_string())?;
    let sealed = seal_dataset(&linked.expected, &owner, &key, &attested_key, &mut &csv[..])
        .map_err(anyhow::Error::msg)?;
    if sealed.envelope.len() > MAX_UPLOAD_BYTES {
        bail!(
            "the sealed dataset has {} bytes; a trainer accepts at most {MAX_UPLOAD_BYTES}",
            sealed.envelope.len()
        );
    }
    // Each core instance trains once: its spend is an entry of its own, named after the
    // attested key. A retry to the same core debits nothing more; another core with the same
    // configuration (a restarted trainer) is another training, and is debited again.
    let ledger_job = format!(
        "{}@core-{}",
        spec.job.id,
        &hex::encode(confide_crypto::sha256(&attested_key))[..16]
    );
    if let Some((l, dataset)) = &ledger {
        if let Some((e, d)) = dataset_policy.as_ref().and_then(|p| p.lifetime) {
            let b = confide_dp::ledger::Budget::new(e, d)?;
            if l.budget(dataset)? != Some(b) {
                l.set_budget(dataset, b)?;
            }
        }
        let (epsilon, delta) = job_budget(&spec)?;
        let cost = confide_dp::ledger::Budget::new(epsilon, delta)?;
        l.debit(dataset, &ledger_job, cost)
            .map_err(|e| anyhow::anyhow!("privacy budget: {e}"))?;
        // From here on the core may train on the data: the debit can never be refunded.
        l.mark_started(dataset, &ledger_job)?;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )?
        .progress_chars("=> "),
    );
    bar.set_message(format!("`{owner}` uploads"));
    let shown = bar.clone();
    let reply = send_dataset(
        &mut linked.client,
        &sealed,
        Arc::new(move |sent, total| {
            shown.set_length(total);
            shown.set_position(sent);
        }),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let summary = &sealed.summary;
    let out = json!({
        "owner": owner,
        "job_id": spec.job.id,
        "config_digest": hex::encode(linked.expected.digest()),
        "envelope_id": reply.envelope_id,
        "envelope_bytes": summary.envelope_bytes,
        "plaintext_bytes": summary.plaintext_bytes,
        "chunks": summary.chunks,
        "rows": reply.rows,
        "sealed_slot": reply.sealed_slot,
        "sealed_version": reply.sealed_version,
        "attestation": claims_json(&claims),
        "policy_rule": rule,
        "ledger_dataset": ledger.as_ref().map(|(_, d)| d.clone()),
        "ledger_job": ledger.as_ref().map(|_| ledger_job),
    });
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

/// Fetches the model as a recipient, exports it, and evaluates it on the job's test set when
/// it has one; prints JSON.
pub async fn fetch_model(args: FetchArgs) -> Result<i32> {
    let mut linked = link(&args.link, Role::ModelOwner).await?;
    let recipient = linked.creds.name.clone();
    let spec = linked.config.spec();
    let signer = linked.creds.signing_key()?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("`{recipient}` waits for the model"));
    bar.enable_steady_tick(Duration::from_millis(120));
    let now = || unix_now().unwrap_or(0);
    let fetched = fetch(
        &mut linked.client,
        (&linked.expected, &linked.policy),
        (&recipient, &signer),
        Duration::from_secs_f64(args.wait_secs.max(0.0)),
        &now,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let weights = export_released(&spec, &fetched.params, &fetched.report, &args.out)?;
    let test = match &linked.config.evaluation {
        Some(e) => {
            let data = confide_ml::job::load_job_data(&spec, &e.test)?;
            Some(confide_ml::train::evaluate(
                &confide_ml::job::model_spec(&spec),
                &fetched.params,
                &data,
            )?)
        }
        None => None,
    };
    let out = json!({
        "recipient": recipient,
        "job_id": spec.job.id,
        "envelope_id": fetched.envelope_id,
        "model": weights.display().to_string(),
        "test_accuracy": test.map(|m| m.accuracy),
        "test_rows": test.map(|m| m.rows),
        "epsilon": fetched.report.epsilon,
        "delta": fetched.report.delta,
        "accountant": fetched.report.accountant,
        "steps": fetched.report.steps,
        "train_rows": fetched.report.rows,
        "attestation": claims_json(&fetched.claims),
    });
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
