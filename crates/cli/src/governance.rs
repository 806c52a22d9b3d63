//! `confide keygen`, `confide job …`, `confide policy …` and `confide audit …`: identities,
//! signed manifests, approvals, policies and the audit log from the command line. Every
//! command prints JSON on stdout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use confide_core::JobConfig;
use confide_governance::audit::{self, AuditLog, InclusionProof};
use confide_governance::identity::{Identity, TlsKey, public_path, tls_key_path};
use confide_governance::manifest::{Manifest, Mode, SignedManifest};
use confide_governance::policy::{Policy, rfc3339};
use serde_json::{Value, json};

/// Where a key's passphrase comes from (never from the command line itself).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Passphrase {
    /// Read the key's passphrase from this environment variable.
    #[arg(long, conflicts_with = "passphrase_file")]
    pub passphrase_env: Option<String>,
    /// Read the key's passphrase from the first line of this file.
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

impl Passphrase {
    /// The passphrase, if one was asked for.
    pub fn get(&self) -> Result<Option<String>> {
        if let Some(var) = &self.passphrase_env {
            let p = std::env::var(var)
                .with_context(|| format!("environment variable {var} is not set"))?;
            return Ok(Some(p));
        }
        if let Some(f) = &self.passphrase_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            return Ok(Some(text.lines().next().unwrap_or("").to_string()));
        }
        Ok(None)
    }
}

/// `confide keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// The key file to create (mode 0600); the public half goes to `<out>.pub`, and the
    /// P-256 TLS key bound to it to `<stem>.tls.key`.
    #[arg(long)]
    pub out: PathBuf,
    /// Make no TLS key: the certificate will certify the Ed25519 key itself for TLS, which
    /// Confide accepts but gRPC's BoringSSL clients (grpc-python, grpc-core) do not.
    #[arg(long)]
    pub no_tls_key: bool,
    #[command(flatten)]
    pub passphrase: Passphrase,
}

/// `confide job …`.
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Sign a job as its model owner: writes the manifest file (RFC 8785 canonical manifest,
    /// its hash and the signature).
    Sign {
        /// The job file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The model owner's key (from `confide keygen`).
        #[arg(long)]
        key: PathBuf,
        /// A party id allowed to receive the model (repeatable; default: the model owner).
        #[arg(long)]
        recipient: Vec<String>,
        /// The manifest file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        passphrase: Passphrase,
    },
    /// Verify a manifest file's signatures and approvals; with --policy, also say whether that
    /// policy allows the job.
    Verify {
        /// The manifest file.
        #[arg(long)]
        manifest: PathBuf,
        /// The job file it should describe (optional).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A dataset policy to evaluate the job against (optional).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Approve a job as a data owner: co-sign the manifest's hash (the file is updated in
    /// place, atomically).
    Approve {
        /// The manifest file.
        #[arg(long)]
        manifest: PathBuf,
        /// The data owner's key.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        passphrase: Passphrase,
    },
    /// Review a job's code bundle as a code reviewer: co-sign the bundle's digest (`[code]
    /// digest`; the file is updated in place). Policies name trusted reviewers in
    /// `code_reviewers`.
    ReviewCode {
        /// The manifest file.
        #[arg(long)]
        manifest: PathBuf,
        /// The reviewer's key.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        passphrase: Passphrase,
    },
    #[command(flatten)]
    Service(crate::control::ServiceJobCommand),
}

/// `confide policy …`.
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a dataset policy file (errors name the line and field).
    Check {
        /// The policy file.
        #[arg(long)]
        policy: PathBuf,
    },
}

/// `confide audit …`.
#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify a whole audit log end to end: from an exported file (--log), from a log store
    /// (--store with --log-key), or from a running coordinator (--coordinator).
    Verify {
        #[command(flatten)]
        source: LogSource,
        /// Require the log to be signed by this key (hex, e.g. from the coordinator's
        /// `.key.pub`). Without it, the log is only checked against the key it names, which
        /// proves its consistency but not who wrote it ("pinned": false in the output).
        #[arg(long)]
        log_key: Option<String>,
        /// Require a cosignature of the head by this witness (a party id; repeatable).
        #[arg(long)]
        witness: Vec<String>,
    },
    /// Print the inclusion proof of entry N of an exported log (JSON), for `check-proof`.
    Prove {
        /// The exported log file.
        #[arg(long)]
        log: PathBuf,
        /// The entry's index, from 0.
        entry: u64,
        /// Write the proof here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an inclusion proof offline.
    CheckProof {
        /// The proof file (from `audit prove`).
        #[arg(long)]
        proof: PathBuf,
        /// Require the log to be signed by this key (hex).
        #[arg(long)]
        log_key: Option<String>,
        /// Require a cosignature of the head by this witness (a party id; repeatable).
        #[arg(long)]
        witness: Vec<String>,
    },
    /// Export a log (from a store or a running coordinator) as the canonical log file.
    Export {
        #[command(flatten)]
        source: LogSource,
        /// The log's key (hex); required with --store.
        #[arg(long)]
        log_key: Option<String>,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where an audit log is read from.
#[derive(clap::Args, Debug)]
pub struct LogSource {
    /// An exported log file.
    #[arg(long, conflicts_with_all = ["store", "coordinator"])]
    pub log: Option<PathBuf>,
    /// A log store (the coordinator's redb file; not while the coordinator runs).
    #[arg(long, conflicts_with = "coordinator")]
    pub store: Option<PathBuf>,
    /// A running coordinator's address (host:port); needs --fed and --name.
    #[arg(long, requires_all = ["fed", "name"])]
    pub coordinator: Option<String>,
    /// Federation directory (with --coordinator).
    #[arg(long)]
    pub fed: Option<PathBuf>,
    /// This party's name in the federation (with --coordinator).
    #[arg(long)]
    pub name: Option<String>,
}

fn key_arg(hex: Option<&str>) -> Result<Option<[u8; 32]>> {
    hex.map(|h| confide_governance::jcs::hex_array::<32>(h).map_err(|e| anyhow!("--log-key: {e}")))
        .transpose()
}

impl LogSource {
    /// The exported log file's bytes.
    async fn bytes(&self, log_key: Option<&[u8; 32]>) -> Result<Vec<u8>> {
        if let Some(path) = &self.log {
            return std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
        }
        if let Some(path) = &self.store {
            let key = log_key.ok_or_else(|| anyhow!("--store needs --log-key"))?;
            let store = confide_store::RedbStore::open(path)
                .with_context(|| format!("cannot open the log store {}", path.display()))?;
            return Ok(AuditLog::new(std::sync::Arc::new(store)).export(key)?);
        }
        if let (Some(addr), Some(fed), Some(name)) = (&self.coordinator, &self.fed, &self.name) {
            let creds = confide_net::pki::Credentials::load(fed, name)?;
            let channel = confide_net::transport::connect(addr, "coordinator", &creds).await?;
            let reply = confide_net::pb::coordinator_client::CoordinatorClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .export_audit(confide_net::pb::ExportAuditRequest {})
                .await
                .map_err(|s| anyhow!("the coordinator refused: {}", s.message()))?;
            return Ok(reply.into_inner().log_file);
        }
        bail!("give --log FILE, --store DB or --coordinator ADDR")
    }
}

/// Runs `confide keygen`.
pub fn keygen(args: &KeygenArgs) -> Result<Value> {
    let id = Identity::generate().map_err(anyhow::Error::msg)?;
    let tls = if args.no_tls_key {
        None
    } else {
        Some(TlsKey::generate().map_err(anyhow::Error::msg)?)
    };
    id.save_with(&args.out, args.passphrase.get()?.as_deref(), tls.as_ref())?;
    Ok(json!({
        "id": id.id(),
        "public_key": hex::encode(id.public_key()),
        "key_file": args.out.display().to_string(),
        "tls_key_file": tls.map(|_| tls_key_path(&args.out).display().to_string()),
        "public_file": public_path(&args.out).display().to_string(),
        "encrypted": args.passphrase.get()?.is_some(),
    }))
}

/// The (ε, δ) a job states in its spec, when that does not depend on a dataset's size.
fn stated_privacy(spec: &confide_core::JobSpec) -> Option<(f64, f64)> {
    spec.privacy
        .as_ref()
        .and_then(|p| p.target_epsilon.map(|e| (e, p.delta)))
}

/// Runs `confide job …`.
pub fn job(cmd: JobCommand) -> Result<Value> {
    match cmd {
        JobCommand::Service(_) => bail!("job commands for a running coordinator are async (a bug)"),
        JobCommand::Sign {
            config,
            key,
            recipient,
            out,
            passphrase,
        } => {
            let owner = Identity::load(&key, passphrase.get()?.as_deref())?;
            let spec = JobConfig::load(&config)?.spec();
            if spec.model.init.is_some() {
                // Initial weights that do not fit the layers would fail every round: refuse
                // them before signing.
                confide_ml::job::initial_params(&spec, spec.job.seed)
                    .map_err(anyhow::Error::msg)?;
            }
            let manifest = Manifest::new(&spec, Mode::Federated, owner.public(), recipient)?;
            let signed = SignedManifest::sign(manifest, &owner)?;
            if out.exists() {
                bail!("{} already exists; refusing to overwrite", out.display());
            }
            signed.save(&out)?;
            let v = signed.verify()?;
            Ok(json!({
                "manifest": out.display().to_string(),
                "hash": v.hash_hex(),
                "job_id": v.manifest.job_id,
                "model_owner": v.manifest.model_owner.id,
                "recipients": v.manifest.recipients,
            }))
        }
        JobCommand::Verify {
            manifest,
            config,
            policy,
        } => {
            let signed = SignedManifest::load(&manifest)?;
            let v = signed.verify()?;
            let mut out = v.summary();
            if let Some(c) = config {
                let spec = JobConfig::load(&c)?.spec();
                if !v.manifest.describes(&spec) {
                    bail!(
                        "the manifest does not describe {} (the job changed after signing)",
                        c.display()
                    );
                }
                out["describes_config"] = json!(true);
            }
            if let Some(p) = policy {
                let policy = Policy::load(&p)?;
                let privacy = stated_privacy(&v.spec);
                let request = v.job_request(privacy);
                out["policy"] = match policy.evaluate(&request, time::OffsetDateTime::now_utc()) {
                    Ok(a) => {
                        json!({ "allowed": true, "rule": a.rule, "approval": format!("{:?}", a.approval) })
                    }
                    Err(d) => json!({ "allowed": false, "reason": d.to_string() }),
                };
                if v.spec.privacy.is_some() && privacy.is_none() {
                    out["policy"]["note"] = json!(
                        "the job fixes σ, so its ε depends on the dataset's size: the node checks it against max_epsilon with its data"
                    );
                }
            }
            Ok(out)
        }
        JobCommand::Approve {
            manifest,
            key,
            passphrase,
        } => {
            let owner = Identity::load(&key, passphrase.get()?.as_deref())?;
            let mut signed = SignedManifest::load(&manifest)?;
            signed.approve(&owner)?;
            signed.save(&manifest)?;
            let v = signed.verify()?;
            Ok(json!({
                "manifest": manifest.display().to_string(),
                "hash": v.hash_hex(),
                "approved_by": owner.id(),
                "approvals": v.approvals,
            }))
        }
        JobCommand::ReviewCode {
            manifest,
            key,
            passphrase,
        } => {
            let reviewer = Identity::load(&key, passphrase.get()?.as_deref())?;
            let mut signed = SignedManifest::load(&manifest)?;
            signed.review_code(&reviewer)?;
            signed.save(&manifest)?;
            let v = signed.verify()?;
            Ok(json!({
                "manifest": manifest.display().to_string(),
                "digest": v.spec.code.as_ref().map(|c| c.digest.clone()),
                "reviewed_by": reviewer.id(),
                "code_reviews": v.code_reviews,
            }))
        }
    }
}

/// Runs `confide policy …`.
pub fn policy(cmd: PolicyCommand) -> Result<Value> {
    match cmd {
        PolicyCommand::Check { policy } => {
            let p = Policy::load(&policy)?;
            // Valid, yet allowing nothing: say so rather than let `valid: true` mislead.
            let mut warnings = Vec::new();
            if p.expires <= time::OffsetDateTime::now_utc() {
                warnings.push(format!(
                    "the policy expired at {}: it allows no job",
                    rfc3339(p.expires)
                ));
            }
            if p.rules.is_empty() {
                warnings.push("the policy has no rules: it allows no job".to_string());
            }
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            Ok(json!({
                "valid": true,
                "allows_jobs": warnings.is_empty(),
                "warnings": warnings,
                "dataset": p.dataset,
                "expires": rfc3339(p.expires),
                "lifetime_epsilon": p.lifetime.map(|l| l.0),
                "lifetime_delta": p.lifetime.map(|l| l.1),
                "rules": p.rules.iter().map(|r| json!({
                    "name": r.name,
                    "model_owners": r.model_owners,
                    "modes": r.modes.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                    "schemes": r.schemes,
                    "max_epsilon": r.max_epsilon,
                    "recipients": r.recipients,
                    "approval": format!("{:?}", r.approval),
                })).collect::<Vec<_>>(),
                "revoked": {
                    "model_owners": p.revoked_model_owners,
                    "jobs": p.revoked_jobs,
                    "manifests": p.revoked_manifests,
                },
            }))
        }
    }
}

fn summary(v: &audit::VerifiedLog) -> Value {
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for e in &v.log.entries {
        *kinds
            .entry(e["kind"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    json!({
        "valid": true,
        "entries": v.head.size,
        "log_id": v.log.tree_head.log_id,
        "root": v.log.tree_head.root,
        "tree_head": v.log.tree_head,
        "witnesses": v.witnesses,
        "kinds": kinds,
    })
}

/// Runs `confide audit …`.
pub async fn audit(cmd: AuditCommand) -> Result<Value> {
    match cmd {
        AuditCommand::Verify {
            source,
            log_key,
            witness,
        } => {
            let key = key_arg(log_key.as_deref())?;
            let bytes = source.bytes(key.as_ref()).await?;
            let v = audit::verify_export(&bytes, key.as_ref().map(|k| &k[..]))?;
            require_witnesses(&witness, &v.witnesses)?;
            let mut s = summary(&v);
            s["pinned"] = json!(key.is_some());
            Ok(s)
        }
        AuditCommand::Prove { log, entry, out } => {
            let bytes =
                std::fs::read(&log).with_context(|| format!("cannot read {}", log.display()))?;
            let v = audit::verify_export(&bytes, None)?;
            let proof = audit::prove(&v, entry)?;
            let value = serde_json::to_value(&proof)?;
            if let Some(path) = out {
                write_new(&path, &serde_json::to_string_pretty(&value)?)?;
            }
            Ok(value)
        }
        AuditCommand::CheckProof {
            proof,
            log_key,
            witness,
        } => {
            let key = key_arg(log_key.as_deref())?;
            let text = std::fs::read_to_string(&proof)
                .with_context(|| format!("cannot read {}", proof.display()))?;
            let p: InclusionProof = serde_json::from_str(&text)
                .with_context(|| format!("{}: not an inclusion proof", proof.display()))?;
            let witnesses = audit::check_proof(&p, key.as_ref().map(|k| &k[..]))?;
            require_witnesses(&witness, &witnesses)?;
            Ok(json!({
                "valid": true,
                "pinned": key.is_some(),
                "index": p.index,
                "tree_size": p.tree_head.size,
                "log_id": p.tree_head.log_id,
                "entry": p.entry,
                "witnesses": witnesses,
            }))
        }
        AuditCommand::Export {
            source,
            log_key,
            out,
        } => {
            let key = key_arg(log_key.as_deref())?;
            let bytes = source.bytes(key.as_ref()).await?;
            let v = audit::verify_export(&bytes, key.as_ref().map(|k| &k[..]))?;
            if out.exists() {
                bail!("{} already exists; refusing to overwrite", out.display());
            }
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            let mut s = summary(&v);
            s["log_file"] = json!(out.display().to_string());
            Ok(s)
        }
    }
}

fn require_witnesses(required: &[String], present: &[String]) -> Result<()> {
    if let Some(w) = required.iter().find(|w| !present.contains(w)) {
        bail!("witness `{w}` did not cosign this head (cosigned by: {present:?})");
    }
    Ok(())
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    if path.exists() {
        bail!("{} already exists; refusing to overwrite", path.display());
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `confide contributions`.
#[derive(clap::Args, Debug)]
pub struct ContributionsArgs {
    /// The job: its id or its manifest hash (hex).
    pub job: String,
    #[command(flatten)]
    source: LogSource,
    /// Require the log, and so the records, to be signed by this key (hex, e.g. from the
    /// coordinator's `.key.pub`).
    #[arg(long)]
    log_key: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: crate::control::Format,
}

/// Prints each owner's signed contribution record of a job, read from a verified audit log;
/// every record's signature must be the log operator's.
pub async fn contributions(a: ContributionsArgs) -> Result<i32> {
    use confide_governance::contribution::{RowsBasis, SignedContribution};
    let key = key_arg(a.log_key.as_deref())?;
    let bytes = a.source.bytes(key.as_ref()).await?;
    let v = audit::verify_export(&bytes, key.as_ref().map(|k| &k[..]))?;
    let by_hash = a.job.len() == 64 && a.job.bytes().all(|b| b.is_ascii_hexdigit());
    // Records by owner; a record written again (a coordinator stopped between writing the
    // records and erasing the job's checkpoint writes them again on resume) is shown once.
    let mut rows: std::collections::BTreeMap<String, (u64, SignedContribution)> =
        std::collections::BTreeMap::new();
    let mut hashes = std::collections::BTreeSet::new();
    for (index, entry) in v.log.entries.iter().enumerate() {
        let Ok(event) = serde_json::from_value::<audit::Event>(entry.clone()) else {
            continue;
        };
        if event.kind != audit::EventKind::Contribution || (!by_hash && event.job != a.job) {
            continue;
        }
        let signed: SignedContribution = serde_json::from_value(event.detail)
            .with_context(|| format!("entry {index}: not a contribution record"))?;
        let record = signed.verify().with_context(|| format!("entry {index}"))?;
        if by_hash && record.job != a.job {
            continue;
        }
        if record.author.public_key != v.log.log_public_key {
            bail!(
                "entry {index}: the record of `{}` is signed by `{}`, not by the log's operator",
                record.owner,
                record.author.id
            );
        }
        hashes.insert(record.job.clone());
        match rows.get(&record.owner) {
            Some((_, earlier)) if earlier.record == signed.record => {}
            Some((first, _)) => bail!(
                "entries {first} and {index} hold two different records of `{}`",
                record.owner
            ),
            None => {
                rows.insert(record.owner.clone(), (index as u64, signed.clone()));
            }
        }
    }
    if hashes.len() > 1 {
        bail!(
            "job id `{}` names {} different manifests in this log ({}): give the manifest hash",
            a.job,
            hashes.len(),
            hashes.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let pinned = key.is_some();
    if a.format == crate::control::Format::Json {
        let records: Vec<Value> = rows
            .values()
            .map(|(index, s)| json!({ "entry": index, "signed": s }))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "pinned": pinned, "records": records }))?
        );
        return Ok(if records.is_empty() { 1 } else { 0 });
    }
    let Some((_, first)) = rows.values().next() else {
        bail!(
            "no contribution records for job `{}` in this log (they are written when a job ends)",
            a.job
        );
    };
    let first = &first.record;
    println!(
        "job {} ({}), {} rounds run; records signed by {}{}",
        first.job_id,
        first.job,
        first.rounds_run,
        first.author.id,
        if pinned {
            ""
        } else {
            " (not pinned: pass --log-key to check who wrote the log)"
        }
    );
    println!(
        "{:<16} {:>8} {:>9} {:<20} {:>14} {:>8} {:>9} {:>6}",
        "owner", "in sums", "late in", "refused", "rows", "ε", "δ", "entry"
    );
    for (index, s) in rows.values() {
        let r = &s.record;
        let refused = if r.refused.is_empty() {
            "-".to_string()
        } else {
            r.refused
                .iter()
                .map(|(rule, n)| format!("{rule}×{n}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let rows_text = match (r.rows, r.rows_basis) {
            (Some(n), RowsBasis::Attested) => format!("{n} attested"),
            (Some(n), _) => format!("{n} declared"),
            (None, _) => "-".to_string(),
        };
        let num = |x: Option<f64>, f: fn(f64) -> String| x.map_or("-".to_string(), f);
        println!(
            "{:<16} {:>8} {:>9} {:<20} {:>14} {:>8} {:>9} {:>6}",
            r.owner,
            r.rounds.len(),
            r.excluded_in.len(),
            refused,
            rows_text,
            num(r.epsilon, |e| format!("{e:.3}")),
            num(r.delta, |d| format!("{d:.0e}")),
            index
        );
    }
    println!(
        "each owner proves its record offline: confide audit prove --log FILE ENTRY, then confide audit check-proof"
    );
    Ok(0)
}
