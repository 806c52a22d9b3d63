//! `confide simulate`: the whole federation on one machine. It creates a federation CA and
//! certificates, starts the key holder, the coordinator and one node per owner (as separate
//! processes on loopback, or as tasks in this process over the same gRPC + mutual-TLS code),
//! follows the job as the model owner with a progress bar, fetches the released model, exports
//! it and writes a report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use confide_core::{JobConfig, JobSpec, Role, SchemeKind, SimulateMode};
use confide_net::coordinator::JobReport;
use confide_net::pb::{self, JobState};
use confide_net::pki::{self, Credentials};
use confide_secagg::aggregators::aggregator_name;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

/// How to start the roles.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeArg {
    /// Each role is its own process on loopback.
    Processes,
    /// Each role is a task in this process (still gRPC over mutual TLS on loopback).
    InProcess,
}

/// Scheme override.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemeArg {
    /// No protection (baseline).
    Plain,
    /// Packed Paillier with a separate key holder.
    Paillier,
    /// SecAgg+ pairwise masking (no key holder).
    Masking,
    /// BFV with SIMD packing and a separate key holder.
    Lattice,
    /// Prio3 shares with validity proofs among several aggregators.
    Shares,
    /// Shamir t-of-n shares among aggregators, robust to crashed and lying ones.
    Threshold,
}

/// `confide simulate` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Job file (TOML), for example examples/breast_homo.toml.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub code: crate::node_serve::CodeArgs,
    /// Write the JSON report here (it is also written into the work directory).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Override the job's [simulate] mode.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Directory for certificates, logs, the model and the report (default: a new directory
    /// under ./runs).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Override the job's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the job's scheme.
    #[arg(long, value_enum)]
    pub scheme: Option<SchemeArg>,
    /// Override the number of rounds.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Use this Paillier secret key file instead of generating a fresh key.
    #[arg(long)]
    pub paillier_key: Option<PathBuf>,
    /// No progress bar or summary (the report is still written).
    #[arg(long)]
    pub quiet: bool,
    /// Chaos testing (processes mode): OWNER:ROUND makes that owner's node exit abruptly after
    /// submitting ROUND (OWNER:ROUND.STAGE: after that stage of a multi-stage scheme).
    #[arg(long, hide = true)]
    pub crash: Vec<String>,
    /// Chaos testing of `shares` and `threshold`: `aggregator-I:crash@ROUND` makes that
    /// aggregator exit abruptly when asked to prepare ROUND (processes mode);
    /// `aggregator-I:lie` makes it return wrong partial sums.
    #[arg(long, hide = true)]
    pub faulty_aggregator: Vec<String>,
    /// Revocation testing: OWNER:ROUND revokes the job in that owner's policy (its copy in
    /// the work directory) as soon as the model owner sees ROUND complete.
    #[arg(long, hide = true)]
    pub revoke_after: Option<String>,
}

/// What a simulation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The JSON report.
    pub report: Value,
    /// Whether the job finished.
    pub finished: bool,
}

pub async fn run(args: SimulateArgs) -> Result<i32> {
    let out = simulate(&args).await?;
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&out.report)?)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
    }
    if !args.quiet {
        print_summary(&out.report)?;
    }
    Ok(if out.finished { 0 } else { 2 })
}

fn print_summary(r: &Value) -> Result<()> {
    let f = |k: &str| r.get(k).and_then(Value::as_f64);
    outln!();
    outln!(
        "job `{}`: {}",
        r["job_id"].as_str().unwrap_or(""),
        r["status"].as_str().unwrap_or("")
    );
    if let Some(m) = r["message"].as_str().filter(|m| !m.is_empty()) {
        outln!("  reason:        {m}");
    }
    if r["scheme"] == "confidential" {
        outln!(
            "  mode:          confidential, {} ({})",
            r["partition"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or("")
        );
        outln!("  parties:       {}", r["parties"]);
        outln!(
            "  trained:       centrally, {} DP-SGD steps on {} rows",
            r["steps"],
            r["train_rows"]
        );
    } else {
        outln!(
            "  scheme:        {} ({} mode)",
            r["scheme"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or("")
        );
        outln!("  parties:       {}", r["parties"]);
        outln!("  rounds:        {}", r["rounds"]);
    }
    if let (Some(a), Some(c), Some(n)) = (
        f("test_accuracy"),
        r["test_correct"].as_u64(),
        r["test_rows"].as_u64(),
    ) {
        outln!("  test accuracy: {a:.4} ({c}/{n})");
    }
    if let Some(a) = f("test_auc") {
        outln!("  test AUC:      {a:.4}");
    }
    if let Some(l) = f("test_log_loss") {
        outln!("  test log-loss: {l:.4}");
    }
    if let (Some(e), Some(d)) = (f("epsilon"), f("delta")) {
        outln!(
            "  privacy:       {}-level (ε = {e:.3}, δ = {d:e}; {} accountant, σ = {:.3}, C = {})",
            r["privacy_level"].as_str().unwrap_or(""),
            r["accountant"].as_str().unwrap_or(""),
            f("noise_multiplier").unwrap_or(f64::NAN),
            f("clip_norm").unwrap_or(f64::NAN)
        );
        // Client level with few owners: say plainly what the noise weighs against the signal.
        if let (Some("client"), Some(sigma), Some(c), Some(d), Some(n)) = (
            r["privacy_level"].as_str(),
            f("noise_multiplier"),
            f("clip_norm"),
            r["param_count"].as_u64(),
            r["parties"].as_array().map(Vec::len),
        ) {
            let noise = sigma * c * (d as f64).sqrt();
            let signal = n as f64 * c;
            outln!(
                "  noise:         the summed update carries noise of L2 norm ≈ σ·C·√d = {noise:.2}; \
                 the {n} owners' clipped updates together weigh at most n·C = {signal:.2}{}",
                if noise > signal {
                    " (the noise outweighs them: more owners, or a larger ε, would help)"
                } else {
                    ""
                }
            );
        }
    } else {
        outln!("  privacy:       no differential privacy (updates protected by the scheme only)");
    }
    if let Some(lost) = r["lost_owners"].as_array().filter(|l| !l.is_empty()) {
        outln!("  lost owners:   {}", lost.len());
        for l in lost {
            outln!(
                "                 {}: {}",
                l["owner"].as_str().unwrap_or(""),
                l["why"].as_str().unwrap_or("")
            );
        }
    }
    outln!("  wall time:     {:.2} s", f("wall_seconds").unwrap_or(0.0));
    if let Some(m) = r["model"]["safetensors"].as_str() {
        outln!("  model:         {m}");
    }
    outln!("  work dir:      {}", r["work_dir"].as_str().unwrap_or(""));
    Ok(())
}

/// Loads the job, applies overrides, and returns the config.
fn effective_config(args: &SimulateArgs) -> Result<JobConfig> {
    let mut config = JobConfig::load(&args.config)?;
    if let Some(seed) = args.seed {
        config.job.seed = seed;
    }
    if let Some(rounds) = args.rounds {
        config.job.rounds = rounds;
    }
    if let Some(s) = args.scheme {
        config.job.scheme = match s {
            SchemeArg::Plain => SchemeKind::Plain,
            SchemeArg::Paillier => SchemeKind::Paillier,
            SchemeArg::Masking => SchemeKind::Masking,
            SchemeArg::Lattice => SchemeKind::Lattice,
            SchemeArg::Shares => SchemeKind::Shares,
            SchemeArg::Threshold => SchemeKind::Threshold,
        };
    }
    if let Some(m) = args.mode {
        config.simulate.mode = match m {
            ModeArg::Processes => SimulateMode::Processes,
            ModeArg::InProcess => SimulateMode::InProcess,
        };
    }
    if config.simulate.partition.is_some() {
        // Checked once `simulate` has made the owners (`partition::expand`).
        return Ok(config);
    }
    check_config(&config)?;
    Ok(config)
}

/// Checks a job whose owners are known: the whole spec, client-level DP's calibration, and
/// every owner's data file.
fn check_config(config: &JobConfig) -> Result<()> {
    config.spec().validate()?;
    // Client-level DP: calibrate now, so that a ring without headroom is refused up front.
    confide_net::coordinator::client_dp(&config.spec()).map_err(anyhow::Error::msg)?;
    for p in &config.parties {
        if !p.data.exists() {
            bail!(
                "party `{}`: data file {} does not exist",
                p.name,
                p.data.display()
            );
        }
    }
    Ok(())
}

/// Runs a simulation (used by `simulate` and by the benchmarks).
pub async fn simulate(args: &SimulateArgs) -> Result<Outcome> {
    let started = Instant::now();
    let mut config = effective_config(args)?;
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            PathBuf::from("runs").join(format!("{}-{stamp}", config.job.id))
        }
    };
    if config.confidential.is_some() {
        let args = args.clone();
        return tokio::task::spawn_blocking(move || {
            crate::confidential::simulate(&args, config, work)
        })
        .await?;
    }
    let fed = work.join("fed");
    if fed.exists() {
        bail!("{} already exists; choose a new --work-dir", fed.display());
    }
    if config.simulate.partition.is_some() {
        let (parties, summary) = crate::partition::expand(&config, &work.join("owners"))?;
        if !args.quiet {
            let sizes: Vec<u64> = summary["owners"]
                .as_array()
                .map(|o| o.iter().filter_map(|x| x["records"].as_u64()).collect())
                .unwrap_or_default();
            eprintln!(
                "{} owners from {} ({}): {} to {} records each (details in {})",
                sizes.len(),
                summary["data"].as_str().unwrap_or(""),
                summary["partitioner"].as_str().unwrap_or(""),
                sizes.iter().min().copied().unwrap_or(0),
                sizes.iter().max().copied().unwrap_or(0),
                work.join("owners/partition.json").display()
            );
        }
        config.parties = parties;
        // The roles read the job with its owners: the split is done (in processes mode they
        // would refuse a file with both).
        config.simulate.partition = None;
        check_config(&config)?;
    }
    let spec = config.spec();
    std::fs::create_dir_all(work.join("logs"))?;
    let now = time::OffsetDateTime::now_utc();
    pki::init_ca(&fed, &spec.job.id, now)?;
    pki::issue(&fed, "coordinator", Role::Coordinator, now)?;
    pki::issue(&fed, "keyholder", Role::KeyHolder, now)?;
    let (aggregator_count, _) = spec.aggregators_n_t();
    if spec.job.scheme.uses_aggregators() {
        for i in 0..aggregator_count {
            pki::issue(&fed, &aggregator_name(i), Role::Aggregator, now)?;
        }
    }
    for p in &config.parties {
        pki::issue(&fed, &p.name, Role::Node, now)?;
    }
    let job_file = work.join("job.toml");
    std::fs::write(&job_file, toml::to_string(&config)?)?;
    let gov = prepare_governance(&config, &fed, &work, now)?;

    let quiet = args.quiet;
    let spinner = |msg: &str| {
        let pb = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        pb.set_message(msg.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    };
    let uses_key_holder = spec.job.scheme.uses_key_holder();
    let key_file = args
        .paillier_key
        .clone()
        .or(config.paillier.key_file.clone())
        .filter(|_| spec.job.scheme == SchemeKind::Paillier);
    let mode = config.simulate.mode;

    let mut roles = Roles {
        code: args.code.clone(),
        ..Roles::default()
    };
    let result = async {
        let keyholder_addr = if uses_key_holder {
            let sp = spinner(
                if key_file.is_some() || spec.job.scheme == SchemeKind::Lattice {
                    "starting the key holder"
                } else {
                    "key holder: generating a fresh Paillier key (safe primes take a few seconds)"
                },
            );
            let addr = roles
                .start_keyholder(mode, &job_file, &fed, &config, key_file.as_deref(), &work)
                .await?;
            sp.finish_and_clear();
            Some(addr)
        } else {
            None
        };
        let aggregator_addrs = if spec.job.scheme.uses_aggregators() {
            let sp = spinner(&format!("starting {aggregator_count} aggregators"));
            let addrs = roles
                .start_aggregators(
                    mode,
                    &job_file,
                    &fed,
                    &config,
                    &args.faulty_aggregator,
                    &work,
                )
                .await?;
            sp.finish_and_clear();
            addrs
        } else {
            Vec::new()
        };
        let coord_addr = roles
            .start_coordinator(
                mode,
                &job_file,
                &fed,
                &config,
                keyholder_addr.as_deref(),
                &aggregator_addrs,
                &work,
                &gov,
            )
            .await?;
        for p in &config.parties {
            let crash = args
                .crash
                .iter()
                .find_map(|c| c.strip_prefix(&format!("{}:", p.name)))
                .map(str::to_string);
            roles
                .start_node(
                    mode,
                    &fed,
                    &p.name,
                    &coord_addr,
                    &p.data,
                    crash,
                    &work,
                    &gov,
                )
                .await?;
        }
        let revoke = match &args.revoke_after {
            Some(r) => {
                let (owner, round) = r
                    .split_once(':')
                    .ok_or_else(|| anyhow!("--revoke-after needs OWNER:ROUND"))?;
                let policy = gov
                    .policies
                    .get(owner)
                    .ok_or_else(|| anyhow!("--revoke-after: `{owner}` has no policy"))?
                    .clone();
                Some((policy, round.parse::<u32>()?, spec.job.id.clone()))
            }
            None => None,
        };
        follow(&fed, &coord_addr, &spec, quiet, revoke).await
    }
    .await;
    let lost = roles.stop().await;
    let (report, params) = result?;

    let model_dir = work.join("model");
    let (weights, card) = export_release(&model_dir, &config.job.id, &spec, &params, &report)?;
    let last = report.history.last();
    let mode_name = match mode {
        SimulateMode::Processes => "processes",
        SimulateMode::InProcess => "in-process",
    };
    let test_rows = config
        .evaluation
        .as_ref()
        .and_then(|e| confide_net::node::load_job_data(&spec, &e.test).ok())
        .map(|d| d.len());
    // Record-level DP: each owner's node states what its DP-SGD spends; the job's guarantee
    // is the weakest of them.
    let claims = report.privacy.values();
    let epsilon = claims.clone().map(|c| c.epsilon).reduce(f64::max);
    let delta = claims.clone().map(|c| c.delta).reduce(f64::max);
    let sigma = claims.map(|c| c.noise_multiplier).reduce(f64::min);
    let audit = report.audit.as_ref().map(|a| {
        json!({
            "entries": a.entries,
            "tree_head": a.tree_head,
            "cosignatures": a.cosignatures,
            "witnesses": a.cosignatures.len(),
            "log_file": a.log_file,
            "log_public_key": gov.coordinator_public_key,
        })
    });
    let report_json = json!({
        "job_id": report.job_id,
        "status": report.status,
        "message": report.message,
        "scheme": report.scheme,
        "mode": mode_name,
        "parties": report.parties,
        "rounds": report.rounds,
        "rounds_planned": report.rounds_planned,
        "test_accuracy": last.and_then(|r| r.test_accuracy),
        "test_auc": last.and_then(|r| r.test_auc),
        "test_log_loss": last.and_then(|r| r.test_log_loss),
        "test_correct": last.and_then(|r| r.test_correct),
        "test_rows": test_rows,
        "wall_seconds": started.elapsed().as_secs_f64(),
        "mean_round_seconds": mean(report.history.iter().map(|r| r.seconds)),
        "history": report.history,
        "rejections": report.rejections,
        // Owners whose node failed or was stopped: a run that lost owners says so, whatever
        // the job's status (it fails by itself when fewer than min_owners remain).
        "lost_owners": lost
            .iter()
            .map(|(owner, why)| json!({ "owner": owner, "why": why }))
            .collect::<Vec<_>>(),
        "events": report.events,
        "param_count": report.param_count,
        "min_owners": spec.job.min_owners,
        "keyholder_key": report.keyholder_key,
        "keyholder_attestation": (uses_key_holder && key_file.is_none()).then_some(
            "dev TEE (insecure): every node checked its evidence of the job and public key before encrypting"
        ),
        "seed": spec.job.seed,
        "privacy_level": spec.privacy.as_ref().map(|p| match p.level {
            confide_core::PrivacyLevel::Record => "record",
            confide_core::PrivacyLevel::Client => "client",
        }),
        "epsilon": epsilon,
        "delta": delta,
        "accountant": report.privacy.values().next().map(|c| c.accountant.clone()),
        "noise_multiplier": sigma,
        "clip_norm": spec.privacy.as_ref().map(|p| p.clip_norm),
        "privacy_by_owner": report.privacy,
        "model": {
            "safetensors": weights.display().to_string(),
            "card": card.display().to_string(),
        },
        "manifest": {
            "file": gov.manifest_file.display().to_string(),
            "hash": report.manifest_hash,
            "model_owner": gov.model_owner_id,
            "approvals": gov.approvals,
        },
        "audit": audit,
        "work_dir": work.display().to_string(),
    });
    std::fs::write(
        work.join("report.json"),
        serde_json::to_string_pretty(&report_json)?,
    )?;
    Ok(Outcome {
        finished: report.status == "finished",
        report: report_json,
    })
}

fn mean(it: impl Iterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = it.collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Writes the released model (safetensors + JSON card) and the coordinator's report.
pub fn export_release(
    dir: &Path,
    job_id: &str,
    spec: &JobSpec,
    params: &[f32],
    report: &JobReport,
) -> Result<(PathBuf, PathBuf)> {
    confide_net::client::write_release(dir, job_id, spec, params, report).map_err(|e| anyhow!(e))
}

/// Follows the job as the model owner: one progress-bar step per round, then fetches the model.
async fn follow(
    fed: &Path,
    coord: &str,
    spec: &JobSpec,
    quiet: bool,
    mut revoke: Option<(PathBuf, u32, String)>,
) -> Result<(JobReport, Vec<f32>)> {
    let creds = Credentials::load(fed, "owner")?;
    let channel = confide_net::transport::connect(coord, "coordinator", &creds).await?;
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(u64::from(spec.job.rounds))
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] round {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{} ({})", spec.job.id, spec.job.scheme.as_str()));
    bar.set_message("waiting for owners");
    // Without a terminal the bar draws nothing: print a line per round instead, so a long run
    // does not look hung.
    let lines = !quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut stream = client.watch(pb::WatchRequest {}).await?.into_inner();
    while let Some(p) = stream.message().await? {
        match JobState::try_from(p.state).unwrap_or(JobState::Failed) {
            JobState::Running => {
                let rec: Value = serde_json::from_str(&p.record_json).unwrap_or(Value::Null);
                let mut msg = format!(
                    "contributors {}",
                    rec["contributors"].as_array().map_or(0, Vec::len)
                );
                if let Some(a) = rec["test_accuracy"].as_f64() {
                    msg.push_str(&format!(" acc {a:.4}"));
                }
                if let Some(a) = rec["test_auc"].as_f64() {
                    msg.push_str(&format!(" auc {a:.4}"));
                }
                if lines {
                    eprintln!(
                        "{} round {}/{}: {msg}",
                        spec.job.id, p.round, spec.job.rounds
                    );
                }
                bar.set_message(msg);
                bar.set_position(u64::from(p.round));
                if let Some((policy, round, job)) = &revoke
                    && p.round >= *round
                {
                    let mut text = std::fs::read_to_string(policy)?;
                    if text.lines().any(|l| l.trim() == "[revoked]") {
                        bail!("{} already has a [revoked] table", policy.display());
                    }
                    text.push_str(&format!("\n[revoked]\njobs = [\"{job}\"]\n"));
                    // Replace the file in one step: the owner's node reads it every round,
                    // and a half-written policy reads as unreadable (POL-003), not revoked.
                    let staged = policy.with_extension("toml.new");
                    std::fs::write(&staged, text)?;
                    std::fs::rename(&staged, policy)?;
                    revoke = None;
                }
            }
            _ => break,
        }
    }
    bar.finish();
    let release = client
        .fetch_model(pb::FetchModelRequest {})
        .await?
        .into_inner();
    // Tell the coordinator the model arrived, so it can stop serving.
    client.ack_model(pb::AckModelRequest {}).await?;
    let report: JobReport =
        serde_json::from_str(&release.report_json).context("coordinator report")?;
    Ok((report, release.params))
}

/// The simulation's governance material.
struct Governance {
    manifest_file: PathBuf,
    model_owner_id: String,
    approvals: Vec<String>,
    policies: HashMap<String, PathBuf>,
    audit_store: PathBuf,
    audit_export: PathBuf,
    coordinator_public_key: String,
}

/// Certifies the model owner's key, signs the job's manifest as the model owner, copies each
/// owner's policy into the work directory, and co-signs the manifest for owners without a
/// policy (the simulation stands in for them).
fn prepare_governance(
    config: &JobConfig,
    fed: &Path,
    work: &Path,
    now: time::OffsetDateTime,
) -> Result<Governance> {
    use confide_governance::identity::Identity;
    use confide_governance::manifest::{Manifest, Mode, SignedManifest};
    let owner = match &config.simulate.model_owner_key {
        Some(k) => Identity::load(k, None)
            .with_context(|| format!("the model owner's key {}", k.display()))?,
        None => Identity::generate().map_err(anyhow::Error::msg)?,
    };
    owner.save(&fed.join("owner.key"), None)?;
    pki::issue_for_key(fed, "owner", Role::ModelOwner, &owner.public(), now)?;
    let spec = config.spec();
    let manifest = Manifest::new(&spec, Mode::Federated, owner.public(), vec![])?;
    let mut signed = SignedManifest::sign(manifest, &owner)?;
    let mut policies = HashMap::new();
    std::fs::create_dir_all(work.join("policies"))?;
    for p in &config.parties {
        match &p.policy {
            Some(src) => {
                let copy = work.join("policies").join(format!("{}.toml", p.name));
                // Checked where the user wrote it, so an error names the user's file.
                confide_governance::policy::Policy::load(src)
                    .with_context(|| format!("party `{}`: policy {}", p.name, src.display()))?;
                std::fs::copy(src, &copy)
                    .with_context(|| format!("party `{}`: policy {}", p.name, src.display()))?;
                policies.insert(p.name.clone(), copy);
            }
            None => {
                let id = Identity::load(&fed.join(format!("{}.key", p.name)), None)?;
                signed.approve(&id)?;
            }
        }
    }
    let manifest_file = work.join("job.manifest.json");
    signed.save(&manifest_file)?;
    let coordinator = Identity::load(&fed.join("coordinator.key"), None)?;
    Ok(Governance {
        manifest_file,
        model_owner_id: owner.id(),
        approvals: signed.verify()?.approvals,
        policies,
        audit_store: work.join("audit.redb"),
        audit_export: work.join("audit-log.json"),
        coordinator_public_key: hex::encode(coordinator.public_key()),
    })
}

/// The roles started by a simulation.
#[derive(Default)]
struct Roles {
    children: Vec<(String, Child)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Owners whose node did not end cleanly (in-process: its error), by name.
    lost: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop_servers: Vec<tokio::sync::oneshot::Sender<()>>,
    /// The key holder's attestation policy (it runs as a trusted core under the dev TEE),
    /// which every node checks before encrypting to its key.
    keyholder_policy: Option<PathBuf>,
    /// Where the nodes find user code and its environments (`--code-dir`, `--code-env`).
    code: crate::node_serve::CodeArgs,
}

/// Parsed `--faulty-aggregator` options for aggregator `index` (0-based).
fn chaos_for(index: usize, faults: &[String]) -> Result<confide_net::aggregator::Chaos> {
    let mut chaos = confide_net::aggregator::Chaos::default();
    let name = aggregator_name(index);
    for f in faults {
        let (who, what) = f
            .split_once(':')
            .ok_or_else(|| anyhow!("--faulty-aggregator needs NAME:crash@ROUND or NAME:lie"))?;
        if who != name {
            continue;
        }
        match what.strip_prefix("crash@") {
            Some(r) => chaos.crash_at_round = Some(r.parse().context("crash@ROUND")?),
            None if what == "lie" => chaos.lie = true,
            None => bail!("--faulty-aggregator {f}: expected crash@ROUND or lie"),
        }
    }
    Ok(chaos)
}

impl Roles {
    fn command(&self, role_args: &[&str], log: &Path) -> Result<Command> {
        let exe = std::env::current_exe().context("cannot find the confide executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(role_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .env(
                "CONFIDE_LOG",
                std::env::var("CONFIDE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// Spawns a role process and reads the address it prints.
    async fn spawn(
        &mut self,
        name: &str,
        args: &[&str],
        work: &Path,
        wait: Duration,
    ) -> Result<String> {
        let log = work.join("logs").join(format!("{name}.log"));
        let mut child = self
            .command(args, &log)?
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from {name}"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(wait, lines.next_line()).await;
        let addr = match line {
            Ok(Ok(Some(l))) => l.rsplit(' ').next().unwrap_or_default().to_string(),
            _ => {
                let _ = child.kill().await;
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "{name} did not start; its log ({}):\n{}",
                    log.display(),
                    tail_lines(&tail, 20)
                );
            }
        };
        self.children.push((name.to_string(), child));
        Ok(addr)
    }

    async fn start_keyholder(
        &mut self,
        mode: SimulateMode,
        job: &Path,
        fed: &Path,
        config: &JobConfig,
        key: Option<&Path>,
        work: &Path,
    ) -> Result<String> {
        // The key holder runs as a trusted core (dev TEE) when it generates its key: its
        // evidence binds the job and its public key, and every node checks it against this
        // policy before encrypting. A key from a file is not attested (whoever holds the file
        // could decrypt anything).
        let tee_dir = work.join("keyholder-tee");
        let tee = match key {
            None => {
                let (tee_key, measurement, _) =
                    crate::confidential::dev_tee_files(&tee_dir, &std::env::current_exe()?)?;
                self.keyholder_policy = Some(tee_dir.join("attestation-policy.toml"));
                Some((tee_key, measurement))
            }
            Some(_) => None,
        };
        match mode {
            SimulateMode::Processes => {
                let (j, f) = (job.display().to_string(), fed.display().to_string());
                let state = work.join("keyholder-state.jsonl").display().to_string();
                let t = tee_dir.display().to_string();
                let mut args = vec!["keyholder", "--config", &j, "--fed", &f, "--state", &state];
                if tee.is_some() {
                    args.extend(["--tee-dir", &t]);
                }
                let k = key.map(|k| k.display().to_string());
                if let Some(k) = &k {
                    args.extend(["--key", k]);
                }
                self.spawn("keyholder", &args, work, Duration::from_secs(600))
                    .await
            }
            SimulateMode::InProcess => {
                let spec = config.spec();
                let creds = Credentials::load(fed, "keyholder")?;
                let sk = crate::holder_key(&spec, key, false).await?;
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?.to_string();
                let state = work.join("keyholder-state.jsonl");
                let (tx, rx) = tokio::sync::oneshot::channel();
                self.stop_servers.push(tx);
                self.tasks.push(tokio::spawn(async move {
                    let shutdown = async {
                        let _ = rx.await;
                    };
                    if let Err(e) = confide_net::roles::serve_keyholder(
                        listener,
                        &creds,
                        &spec,
                        sk,
                        (
                            Some(state),
                            tee.map(|(k, m)| confide_attest::dev::DevTee::new(k, m)),
                        ),
                        shutdown,
                    )
                    .await
                    {
                        eprintln!("keyholder: {e}");
                    }
                }));
                Ok(addr)
            }
        }
    }

    /// Starts the job's aggregators (with a fresh verify key under `shares`, written to the
    /// work directory for the processes); returns their addresses in index order.
    async fn start_aggregators(
        &mut self,
        mode: SimulateMode,
        job: &Path,
        fed: &Path,
        config: &JobConfig,
        faults: &[String],
        work: &Path,
    ) -> Result<Vec<String>> {
        let spec = config.spec();
        let (n, _) = spec.aggregators_n_t();
        let verify_key = match spec.job.scheme {
            SchemeKind::Shares => {
                let mut k = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
                let path = work.join("aggregators-verify-key.hex");
                crate::write_secret_file(&path, hex::encode(k))?;
                Some((k, path))
            }
            _ => None,
        };
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let chaos = chaos_for(i, faults)?;
            let name = aggregator_name(i);
            let addr = match mode {
                SimulateMode::Processes => {
                    let (j, f) = (job.display().to_string(), fed.display().to_string());
                    let index = (i + 1).to_string();
                    let mut args =
                        vec!["aggregator", "--config", &j, "--fed", &f, "--index", &index];
                    let vk = verify_key.as_ref().map(|(_, p)| p.display().to_string());
                    if let Some(vk) = &vk {
                        args.extend(["--verify-key", vk]);
                    }
                    let crash = chaos.crash_at_round.map(|r| r.to_string());
                    if let Some(r) = &crash {
                        args.extend(["--crash-at-round", r]);
                    }
                    if chaos.lie {
                        args.push("--lie");
                    }
                    self.spawn(&name, &args, work, Duration::from_secs(60))
                        .await?
                }
                SimulateMode::InProcess => {
                    if chaos.crash_at_round.is_some() {
                        bail!("a crashing aggregator needs processes mode");
                    }
                    let creds = Credentials::load(fed, &name)?;
                    let listener = TcpListener::bind("127.0.0.1:0").await?;
                    let addr = listener.local_addr()?.to_string();
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    self.stop_servers.push(tx);
                    let spec = spec.clone();
                    let vk = verify_key.as_ref().map(|(k, _)| *k);
                    self.tasks.push(tokio::spawn(async move {
                        let shutdown = async {
                            let _ = rx.await;
                        };
                        if let Err(e) = confide_net::roles::serve_aggregator(
                            listener, &creds, &spec, i, vk, chaos, shutdown,
                        )
                        .await
                        {
                            eprintln!("{}: {e}", aggregator_name(i));
                        }
                    }));
                    addr
                }
            };
            addrs.push(addr);
        }
        Ok(addrs)
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_coordinator(
        &mut self,
        mode: SimulateMode,
        job: &Path,
        fed: &Path,
        config: &JobConfig,
        keyholder: Option<&str>,
        aggregators: &[String],
        work: &Path,
        gov: &Governance,
    ) -> Result<String> {
        match mode {
            SimulateMode::Processes => {
                let (j, f) = (job.display().to_string(), fed.display().to_string());
                let m = gov.manifest_file.display().to_string();
                let store = gov.audit_store.display().to_string();
                let export = gov.audit_export.display().to_string();
                let mut args = vec![
                    "coordinator",
                    "--config",
                    &j,
                    "--fed",
                    &f,
                    "--manifest",
                    &m,
                    "--audit-store",
                    &store,
                    "--audit-export",
                    &export,
                ];
                if let Some(k) = keyholder {
                    args.extend(["--keyholder", k]);
                }
                for a in aggregators {
                    args.extend(["--aggregator", a]);
                }
                self.spawn("coordinator", &args, work, Duration::from_secs(60))
                    .await
            }
            SimulateMode::InProcess => {
                let spec = config.spec();
                let eval = match &config.evaluation {
                    Some(e) => Some(confide_net::node::load_job_data(&spec, &e.test)?),
                    None => None,
                };
                let creds = Credentials::load(fed, "coordinator")?;
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?.to_string();
                let role = confide_net::roles::CoordinatorRole {
                    creds,
                    spec,
                    eval,
                    keyholder: keyholder.map(str::to_string),
                    aggregators: aggregators.to_vec(),
                    linger: Duration::from_secs(60),
                    manifest: confide_governance::manifest::SignedManifest::load(
                        &gov.manifest_file,
                    )?,
                    audit_store: Some(gov.audit_store.clone()),
                    audit_export: Some(gov.audit_export.clone()),
                };
                self.tasks.push(tokio::spawn(async move {
                    if let Err(e) = confide_net::roles::run_coordinator(listener, role).await {
                        eprintln!("coordinator: {e}");
                    }
                }));
                Ok(addr)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_node(
        &mut self,
        mode: SimulateMode,
        fed: &Path,
        name: &str,
        coordinator: &str,
        data: &Path,
        crash: Option<String>,
        work: &Path,
        gov: &Governance,
    ) -> Result<()> {
        let policy = gov.policies.get(name).cloned();
        let witness = work.join(format!("witness-{name}.redb"));
        // A policy with a lifetime ε is enforced through a ledger.
        let ledger = match &policy {
            Some(p) => {
                let pol = confide_governance::policy::Policy::load(p)?;
                pol.lifetime
                    .map(|_| (work.join(format!("ledger-{name}.redb")), pol.dataset))
            }
            None => None,
        };
        match mode {
            SimulateMode::Processes => {
                let (f, d) = (fed.display().to_string(), data.display().to_string());
                let w = witness.display().to_string();
                let mut args = vec![
                    "node",
                    "--fed",
                    &f,
                    "--name",
                    name,
                    "--coordinator",
                    coordinator,
                    "--data",
                    &d,
                    "--witness-store",
                    &w,
                ];
                let p = policy.as_ref().map(|p| p.display().to_string());
                if let Some(p) = &p {
                    args.extend(["--policy", p]);
                }
                let k = self
                    .keyholder_policy
                    .as_ref()
                    .map(|k| k.display().to_string());
                if let Some(k) = &k {
                    args.extend(["--keyholder-attestation-policy", k]);
                }
                let l = ledger
                    .as_ref()
                    .map(|(l, d)| (l.display().to_string(), d.clone()));
                if let Some((l, d)) = &l {
                    args.extend(["--ledger", l, "--dataset", d]);
                }
                let code_dir = self.code.code_dir.as_ref().map(|c| c.display().to_string());
                if let Some(c) = &code_dir {
                    args.extend(["--code-dir", c]);
                }
                for e in &self.code.code_env {
                    args.extend(["--code-env", e]);
                }
                if let Some(c) = &crash {
                    // ROUND, or ROUND.STAGE for a multi-stage scheme.
                    let flag = if c.contains('.') {
                        "--crash-after-stage"
                    } else {
                        "--crash-after-round"
                    };
                    args.extend([flag, c]);
                }
                let log = work.join("logs").join(format!("node-{name}.log"));
                let child = self
                    .command(&args, &log)?
                    .spawn()
                    .with_context(|| format!("cannot start node {name}"))?;
                self.children.push((format!("node-{name}"), child));
                Ok(())
            }
            SimulateMode::InProcess => {
                if crash.is_some() {
                    bail!("--crash needs processes mode");
                }
                let opts = confide_net::node::NodeOptions {
                    job: None,
                    approval: None,
                    creds: Credentials::load(fed, name)?,
                    coordinator: coordinator.to_string(),
                    data: data.to_path_buf(),
                    crash_after_round: None,
                    crash_after_stage: None,
                    ledger,
                    policy,
                    witness_store: Some(witness),
                    keyholder_attestation: self.keyholder_policy.clone(),
                    approver: None,
                    code: self.code.host(fed, name)?,
                };
                let name = name.to_string();
                let lost = self.lost.clone();
                self.tasks.push(tokio::spawn(async move {
                    if let Err(e) = confide_net::node::run_node(opts).await {
                        eprintln!("node `{name}`: {e}");
                        if let Ok(mut l) = lost.lock() {
                            l.push((name, e.to_string()));
                        }
                    }
                }));
                Ok(())
            }
        }
    }

    /// Lets nodes and the coordinator finish, then stops the key holder and the aggregators.
    /// Returns the owners whose node did not end cleanly, with why (a process that exited
    /// with an error or had to be killed, or an in-process node's error).
    async fn stop(&mut self) -> Vec<(String, String)> {
        let grace = Duration::from_secs(10);
        let mut lost = Vec::new();
        for (name, child) in &mut self.children {
            if name == "keyholder" || name.starts_with("aggregator-") {
                continue;
            }
            let owner = name.strip_prefix("node-").map(str::to_string);
            match tokio::time::timeout(grace, child.wait()).await {
                // 2: the job failed, and the node stayed to its end (as an in-process node
                // that returns a summary of a failed job).
                Ok(Ok(status)) if status.success() || status.code() == Some(2) => {}
                Ok(Ok(status)) => {
                    if let Some(o) = owner {
                        lost.push((
                            o.clone(),
                            format!("its node {status} (see logs/node-{o}.log)"),
                        ));
                    }
                }
                Ok(Err(e)) => {
                    if let Some(o) = owner {
                        lost.push((o, format!("its node could not be waited for: {e}")));
                    }
                }
                Err(_) => {
                    let _ = child.kill().await;
                    if let Some(o) = owner {
                        lost.push((
                            o,
                            "its node did not stop within 10 s of the job's end".into(),
                        ));
                    }
                }
            }
        }
        for (_, child) in &mut self.children {
            let _ = child.kill().await;
        }
        for tx in self.stop_servers.drain(..) {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(grace, t).await.is_err() {
                // A role task that does not stop is abandoned with the runtime.
            }
        }
        if let Ok(l) = self.lost.lock() {
            lost.extend(l.iter().cloned());
        }
        lost.sort();
        lost
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
