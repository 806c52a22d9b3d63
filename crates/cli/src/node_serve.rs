//! `confide node serve`: the long-lived node beside an owner's data, and `confide node inbox`,
//! the owner's view of the jobs offered to it.
//!
//! The daemon connects outward only, to the coordinator's fleet port. Each poll is its
//! heartbeat and returns the unfinished jobs that name this node. It checks each new offer
//! exactly as a one-job node checks a job it joins (manifest signatures, the coordinator's
//! certificate, the data, the DP plan, the owner's policy; `confide_net::node::assess`):
//! - a policy rule that approves automatically: the daemon approves, signed by the node's key;
//! - a policy or a job that refuses it: the daemon rejects it, under that rule;
//! - otherwise the job waits in the durable inbox until the owner runs
//!   `confide node inbox approve` (the owner's key co-signs the manifest, in the command,
//!   not in the daemon) or `confide node inbox reject` (a signed statement).
//!
//! Once the coordinator runs an approved job, the daemon runs it as `confide node` would
//! (`confide_net::node::run_node`, which debits the ledger once per job and keeps RES-005's
//! training record). The inbox lives in the daemon's store (redb, table `node.inbox`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use confide_core::Role;
use confide_governance::manifest::{
    ManifestSignature, SignatureRole, SignedManifest, online_approval_message,
    online_rejection_message,
};
use confide_governance::statement::{Action, SignedStatement, Statement};
use confide_net::node::Verdict;
use confide_net::pb;
use confide_net::pki::Credentials;
use confide_service::JobRecord;
use confide_store::{Store, StoreExt};
use serde::{Deserialize, Serialize};

use crate::governance::Passphrase;

const INBOX: &str = "node.inbox";

/// What a daemon serving several datasets tells the coordinator when none accepts a job.
const NONE_FITS: &str = "NODE-002 none of this owner's datasets accepts the job";

/// The longest reason a rejection carries to the coordinator, in characters.
const MAX_REASON: usize = confide_net::guard::MAX_RULE_CHARS;

/// Where a node keeps model owners' code and which environments run it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CodeArgs {
    /// The directory of the code bundles this owner has reviewed or accepted, each under its
    /// `[code] bundle` name; the node re-hashes a job's bundle against the signed digest
    /// before it runs it. Without it, jobs with user code are refused.
    #[arg(long)]
    pub code_dir: Option<PathBuf>,
    /// An environment for user code, `NAME=PYTHON` (the interpreter of a virtual environment
    /// the owner installed, with `confide` and the bundle's locked requirements). Repeat it
    /// for several.
    #[arg(long = "code-env", value_name = "NAME=PYTHON")]
    pub code_env: Vec<String>,
}

impl CodeArgs {
    /// The node's code host: bundles in --code-dir, scratch directories and logs in
    /// `<fed>/<name>-code/`, this executable as the confined launcher.
    pub fn host(
        &self,
        fed: &std::path::Path,
        name: &str,
    ) -> Result<Option<confide_net::node::CodeHost>> {
        let Some(bundles) = &self.code_dir else {
            if !self.code_env.is_empty() {
                anyhow::bail!("--code-env needs --code-dir");
            }
            return Ok(None);
        };
        if !bundles.is_dir() {
            anyhow::bail!("--code-dir {}: not a directory", bundles.display());
        }
        let mut envs = std::collections::BTreeMap::new();
        for e in &self.code_env {
            let (n, python) = e
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--code-env `{e}`: give NAME=PYTHON"))?;
            let python = std::path::absolute(python)?;
            if !python.is_file() {
                anyhow::bail!("--code-env {n}: {} is not a file", python.display());
            }
            if envs.insert(n.to_string(), python).is_some() {
                anyhow::bail!("--code-env: `{n}` given twice");
            }
        }
        if envs.is_empty() {
            anyhow::bail!("--code-dir needs at least one --code-env NAME=PYTHON");
        }
        let work = std::path::absolute(fed.join(format!("{name}-code")))?;
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        Ok(Some(confide_net::node::CodeHost {
            bundles: std::path::absolute(bundles)?,
            envs,
            launcher: vec![std::env::current_exe()?],
            work,
        }))
    }
}

/// `confide node serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Federation directory with ca.crt and this owner's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// This owner's name (its certificate's name).
    #[arg(long)]
    name: String,
    /// The coordinator's fleet address (`confide coordinator serve --fleet`).
    #[arg(long)]
    coordinator: String,
    /// This owner's CSV file. Repeat it (each with its own --policy, in the same order) to
    /// serve several datasets: each offer goes to the first dataset, in this order, whose
    /// checks approve the job, else to the first that leaves it to the owner.
    #[arg(long = "data", required = true)]
    data: Vec<PathBuf>,
    /// The owner's policy for the dataset of the same position (TOML). A rule with
    /// `approval = "automatic"` approves matching jobs; other jobs wait in the inbox. With
    /// several datasets, each needs one.
    #[arg(long = "policy")]
    policy: Vec<PathBuf>,
    /// Privacy budget ledger (redb): each job's ε is debited once, before its first round,
    /// from the budget of the dataset that runs it (one ledger holds every dataset, by name).
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// The dataset's name in the ledger (default: its policy's dataset name); only with one
    /// dataset.
    #[arg(long)]
    dataset: Option<String>,
    /// The party id of the owner's approval key (`confide keygen`; the daemon holds only this
    /// id): only its co-signatures (`confide node inbox approve --key`) and signed rejections
    /// count as the owner's decisions. Without it the daemon holds no key that decides for
    /// the owner: jobs that a policy leaves to the owner wait, and the inbox takes no
    /// decision. (Giving the node's own id lets the node's key decide, which this daemon
    /// holds.)
    #[arg(long)]
    approver: Option<String>,
    /// The owner's approval key file, encrypted (`confide keygen` with a passphrase): its id
    /// becomes --approver, and the dashboard's forms sign the owner's decisions with it,
    /// opening it with the passphrase typed into the form for that one signature (the daemon
    /// never keeps it unlocked). An unencrypted key is refused.
    #[arg(long)]
    approver_key: Option<PathBuf>,
    #[command(flatten)]
    code: CodeArgs,
    /// The daemon's store: its inbox, its witness memory and training records (redb).
    /// Default: <fed>/<name>-node.redb.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Address of the admin port (plain HTTP: /metrics, /livez, /readyz, the inbox for
    /// `confide node inbox`, and the owner's dashboard under /ui/, which needs a session
    /// from `confide node login`); keep it on loopback, or behind the organisation's reverse
    /// proxy (docs/dashboard.md). The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:7103")]
    admin: std::net::SocketAddr,
    /// The longest wait between two heartbeats, in seconds. Each heartbeat is a long poll
    /// for the offers that name this node: it returns as soon as the coordinator's jobs
    /// change, so a node hears of a job (and of its start) at once. The coordinator caps
    /// the wait at 10 s.
    #[arg(long, default_value_t = 5.0)]
    poll: f64,
    #[command(flatten)]
    passphrase: Passphrase,
}

/// What the daemon did with an offered job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for the owner (`confide node inbox approve|reject`).
    Pending,
    /// Approved (by a policy rule or by the owner); it runs once the coordinator starts it.
    Approved,
    /// Rejected (by a policy rule, the checks, or the owner).
    Rejected,
    /// This node is running it.
    Running,
    /// It ended for this node (its note says how).
    Ended,
}

/// One inbox entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The manifest hash, hex.
    pub hash: String,
    /// The job id.
    pub job_id: String,
    /// The model owner's party id.
    pub model_owner: String,
    /// Rounds.
    pub rounds: u32,
    /// What the daemon's checks said: `approve`, `ask` or `reject`.
    pub verdict: String,
    /// Why, in words (the rule, or what the owner must decide).
    pub why: String,
    /// What happened to it.
    pub status: Status,
    /// Whether the decision reached the coordinator.
    pub sent: bool,
    /// The owner's co-signature, when the owner approved from the inbox.
    pub approval: Option<ManifestSignature>,
    /// How it ended for this node.
    pub note: String,
    /// When it last changed, Unix milliseconds.
    pub updated_ms: u64,
    /// The manifest file.
    pub manifest_json: String,
    /// Which of the daemon's datasets the job runs on (its position, from 0, when offered).
    #[serde(default)]
    pub source: usize,
    /// That dataset's name (its policy's dataset, or its file): a restarted daemon runs the
    /// job on the dataset of this name, wherever it now is in the list.
    #[serde(default)]
    pub dataset: String,
    /// What the job costs that dataset, and the mechanism, as the daemon's checks computed it.
    #[serde(default)]
    pub cost: Option<confide_net::node::PrivacyCost>,
    /// Each rule of that dataset's policy on the job.
    #[serde(default)]
    pub rules: Vec<confide_governance::policy::RuleVerdict>,
    /// The owner's signed rejection or revocation (JSON), when the owner decided so from the
    /// inbox: the coordinator logs it with the decision.
    #[serde(default)]
    pub statement: String,
    /// What the job would cost each of the daemon's datasets, and each one's verdict.
    #[serde(default)]
    pub datasets: Vec<DatasetReview>,
}

/// One dataset's review of an offered job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetReview {
    /// The dataset's name.
    pub dataset: String,
    /// What the job would cost it (when private and the checks got that far).
    pub cost: Option<confide_net::node::PrivacyCost>,
    /// The daemon's checks on it, in words.
    pub verdict: String,
}

fn now_ms() -> u64 {
    confide_service::jobs::millis(time::OffsetDateTime::now_utc())
}

#[derive(Clone)]
pub(crate) struct Inbox {
    pub(crate) store: Arc<dyn Store>,
    /// The party id of the owner's approval key (`--approver`); without one the daemon takes
    /// no decision of the owner's from the inbox.
    pub(crate) me: Option<String>,
}

impl Inbox {
    pub(crate) fn get(&self, hash: &str) -> Result<Option<Entry>> {
        let bytes = self.store.read(|txn| txn.get(INBOX, hash.as_bytes()))?;
        bytes
            .map(|b| serde_json::from_slice(&b).context("inbox entry"))
            .transpose()
    }

    pub(crate) fn put(&self, e: &mut Entry) -> Result<()> {
        e.updated_ms = now_ms();
        let bytes = serde_json::to_vec(e)?;
        self.store
            .transact(|txn| txn.put(INBOX, e.hash.as_bytes(), &bytes))?;
        Ok(())
    }

    pub(crate) fn list(&self) -> Result<Vec<Entry>> {
        let rows = self.store.read(|txn| txn.scan_prefix(INBOX, &[]))?;
        rows.iter()
            .map(|(_, v)| serde_json::from_slice(v).context("inbox entry"))
            .collect()
    }

    /// The owner's co-signature from `confide node inbox approve`.
    /// The owner's approval key's party id, or a refusal when the daemon has none.
    fn owner(&self) -> Result<&str, (u16, String)> {
        self.me.as_deref().ok_or_else(|| {
            (
                403,
                "this node daemon takes no decisions from the inbox: it was started without \
                 --approver (the party id of the owner's approval key, `confide keygen`)"
                    .to_string(),
            )
        })
    }

    /// Changes job `hash`'s entry with `f` in one store transaction (read, check, write), so
    /// that two decisions, or a decision and the daemon's own bookkeeping, never overwrite
    /// each other. `f` sees the transaction too, for what it must record with the change.
    pub(crate) fn update(
        &self,
        hash: &str,
        f: impl FnOnce(&mut dyn confide_store::Txn, &mut Entry) -> Result<(), (u16, String)>,
    ) -> Result<Entry, (u16, String)> {
        struct Fail((u16, String));
        impl From<confide_store::StoreError> for Fail {
            fn from(e: confide_store::StoreError) -> Self {
                Fail((500, e.to_string()))
            }
        }
        self.store
            .transact(|txn| {
                let raw = txn
                    .get(INBOX, hash.as_bytes())?
                    .ok_or_else(|| Fail((404, format!("no job {hash} in the inbox"))))?;
                let mut e: Entry = serde_json::from_slice(&raw)
                    .map_err(|err| Fail((500, format!("inbox entry: {err}"))))?;
                f(txn, &mut e).map_err(Fail)?;
                e.updated_ms = now_ms();
                let bytes = serde_json::to_vec(&e).map_err(|err| Fail((500, err.to_string())))?;
                txn.put(INBOX, hash.as_bytes(), &bytes)?;
                Ok(e)
            })
            .map_err(|Fail(f)| f)
    }

    /// The owner's co-signature from `confide node inbox approve` (or the dashboard).
    pub(crate) fn approve(&self, hash: &str, body: &[u8]) -> Result<Entry, (u16, String)> {
        let me = self.owner()?.to_string();
        let sig: ManifestSignature =
            serde_json::from_slice(body).map_err(|e| (400, format!("not a co-signature: {e}")))?;
        let h = parse_hash(hash).map_err(|m| (404, m.to_string()))?;
        if sig.role != SignatureRole::Approval || sig.signer != me || sig.verify(&h).is_err() {
            return Err((
                403,
                "the co-signature is not this owner's approval of this manifest".into(),
            ));
        }
        self.update(hash, |txn, e| {
            if revoked_in(txn, &h)? {
                return Err((
                    409,
                    "the owner revoked this job: it cannot be approved".into(),
                ));
            }
            match e.status {
                Status::Pending | Status::Approved => {}
                other => return Err((409, format!("job `{}` is {other:?}", e.job_id))),
            }
            e.status = Status::Approved;
            e.why = "co-signed by the owner (inbox)".into();
            e.approval = Some(sig);
            e.sent = false;
            Ok(())
        })
    }

    /// The owner's statement `body`, checked: it verifies, its author is this owner, its
    /// action is `action` and it names job `hash`. Returns it re-serialised (compact).
    fn signed(
        &self,
        hash: &str,
        body: &[u8],
        action: Action,
        what: &str,
    ) -> Result<(String, confide_governance::statement::VerifiedStatement), (u16, String)> {
        let me = self.owner()?;
        let signed =
            SignedStatement::from_json(body).map_err(|e| (400, format!("not a statement: {e}")))?;
        let verified = signed.verify().map_err(|e| (403, e.to_string()))?;
        if verified.statement.action != action
            || verified.statement.author.id != me
            || hex::encode(verified.job) != hash
        {
            return Err((
                403,
                format!("the statement is not this owner's {what} of this job"),
            ));
        }
        Ok((signed.to_json(), verified))
    }

    /// The owner's signed rejection from `confide node inbox reject` (or the dashboard).
    pub(crate) fn reject(&self, hash: &str, body: &[u8]) -> Result<Entry, (u16, String)> {
        let (json, verified) = self.signed(hash, body, Action::Reject, "rejection")?;
        self.update(hash, |_, e| {
            match e.status {
                Status::Pending | Status::Approved => {}
                other => return Err((409, format!("job `{}` is {other:?}", e.job_id))),
            }
            e.status = Status::Rejected;
            e.why = format!("rejected by the owner: {}", verified.statement.reason);
            e.statement = json;
            e.sent = false;
            Ok(())
        })
    }

    /// The owner's signed revocation (`confide node inbox revoke`, or the dashboard),
    /// recorded in the node's store (`confide_net::node::REVOKED`) with the entry's change:
    /// - a pending job is rejected with it;
    /// - an approved job that does not run yet: the daemon sends a rejection carrying it
    ///   (the job ends rejected, if the coordinator has not started it; if it has, the node
    ///   joins only to withdraw with the statement, before it debits its ledger);
    /// - a running job stops at its next round, and the withdrawal carries the statement.
    ///
    /// Either way the statement reaches the coordinator's audit log.
    pub(crate) fn revoke(&self, hash: &str, body: &str) -> Result<Entry, (u16, String)> {
        let (json, verified) = self.signed(hash, body.as_bytes(), Action::Revoke, "revocation")?;
        let h = parse_hash(hash).map_err(|m| (404, m.to_string()))?;
        let reason = verified.statement.reason.clone();
        self.update(hash, |txn, e| {
            if revoked_in(txn, &h)? {
                return Err((409, format!("job `{}` is revoked already", e.job_id)));
            }
            match e.status {
                Status::Pending => {
                    e.status = Status::Rejected;
                    e.why = format!("revoked by the owner: {reason}");
                    e.statement = json.clone();
                    e.sent = false;
                }
                Status::Approved => {
                    e.note = format!("revoked by the owner: {reason}");
                    e.statement = json.clone();
                    e.sent = false;
                }
                Status::Running => {
                    e.note = format!("revoked by the owner: {reason}; it stops at its next round");
                }
                other => return Err((409, format!("job `{}` is {other:?}", e.job_id))),
            }
            txn.put(confide_net::node::REVOKED, &h, json.as_bytes())
                .map_err(|err| (500, err.to_string()))
        })
    }

    pub(crate) fn entry(&self, hash: &str) -> Result<Entry, (u16, String)> {
        self.get(hash)
            .map_err(|m| (500, m.to_string()))?
            .ok_or_else(|| (404, format!("no job {hash} in the inbox")))
    }
}

/// Whether the owner revoked job `hash` (in the transaction's view of the node's store).
fn revoked_in(txn: &dyn confide_store::ReadTxn, hash: &[u8; 32]) -> Result<bool, (u16, String)> {
    txn.get(confide_net::node::REVOKED, hash)
        .map(|r| r.is_some())
        .map_err(|e| (500, e.to_string()))
}

fn parse_hash(text: &str) -> Result<[u8; 32]> {
    confide_service::jobs::parse_hash(text)
        .with_context(|| format!("`{text}` is not a manifest hash"))
}

/// One dataset a daemon serves: its CSV, its policy, and its name in the ledger.
type Source = (PathBuf, Option<PathBuf>, Option<String>);

/// The daemon's datasets, in the order given.
fn sources(args: &ServeArgs) -> Result<Vec<Source>> {
    let ledger = args.ledger.is_some();
    if args.data.len() == 1 {
        let policy = args.policy.first().cloned();
        if args.policy.len() > 1 {
            bail!(
                "one --data, {} --policy: give one policy per dataset",
                args.policy.len()
            );
        }
        let dataset = ledger_dataset(args.dataset.as_ref(), policy.as_deref(), ledger)?;
        return Ok(vec![(args.data[0].clone(), policy, dataset)]);
    }
    if args.policy.len() != args.data.len() {
        bail!(
            "{} --data and {} --policy: with several datasets, each needs its own policy, in \
             the same order",
            args.data.len(),
            args.policy.len()
        );
    }
    if args.dataset.is_some() {
        bail!("--dataset names one dataset; with several, each is named by its policy");
    }
    let mut names = std::collections::BTreeSet::new();
    args.data
        .iter()
        .zip(&args.policy)
        .map(|(data, policy)| {
            let name = confide_governance::policy::Policy::load(policy)?.dataset;
            if !names.insert(name.clone()) {
                bail!("two policies name dataset `{name}`: each dataset needs its own name");
            }
            Ok((data.clone(), Some(policy.clone()), ledger.then_some(name)))
        })
        .collect()
}

/// The dataset's name in the ledger: `--dataset`, or the policy's dataset; a ledger needs one.
pub(crate) fn ledger_dataset(
    dataset: Option<&String>,
    policy: Option<&std::path::Path>,
    ledger: bool,
) -> Result<Option<String>> {
    let dataset = match (dataset, policy) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(p)) => Some(confide_governance::policy::Policy::load(p)?.dataset),
        (None, None) => None,
    };
    if ledger && dataset.is_none() {
        bail!("--ledger needs --dataset (or a --policy naming the dataset)");
    }
    Ok(dataset)
}

/// Runs the node daemon until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> Result<i32> {
    let signalled = crate::control::stop_signal()?;
    let creds = Credentials::load_with(&args.fed, &args.name, args.passphrase.get()?.as_deref())?;
    if creds.role != Role::Node {
        bail!("`{}` has role {}, not node", creds.name, creds.role);
    }
    if !(args.poll > 0.0 && args.poll <= 60.0) {
        bail!("--poll must be in (0, 60] seconds");
    }
    let sources = sources(&args)?;
    if let Some(a) = &args.approver
        && !confide_governance::identity::is_party_id(a)
    {
        bail!("--approver `{a}` is not a party id (the `id` that `confide keygen` prints)");
    }
    let approver = match &args.approver_key {
        Some(key) => {
            let id = approval_key_id(key)?;
            if args.approver.as_ref().is_some_and(|a| *a != id) {
                bail!(
                    "--approver {} is not the id of --approver-key ({id})",
                    args.approver.as_deref().unwrap_or("")
                );
            }
            Some(id)
        }
        None => args.approver.clone(),
    };
    if approver.is_none() {
        eprintln!(
            "confide node: no --approver: jobs that a policy leaves to the owner wait in the \
             inbox, and the daemon takes no approval or rejection from it"
        );
    }
    let path = args
        .store
        .clone()
        .unwrap_or_else(|| args.fed.join(format!("{}-node.redb", args.name)));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = crate::bind(args.admin, "node admin").await?;
    let store: Arc<dyn Store> = confide_store::RedbStore::open_shared(&path)
        .with_context(|| format!("node store {}", path.display()))?;
    let inbox = Inbox {
        store: store.clone(),
        me: approver.clone(),
    };
    let recovered = inbox
        .list()
        .with_context(|| format!("recovering {}", path.display()))?;
    eprintln!(
        "confide node: store {} recovered ({} jobs in the inbox)",
        path.display(),
        recovered.len()
    );
    let code = args.code.host(&args.fed, &args.name)?;
    let base: Vec<confide_net::node::NodeOptions> = sources
        .into_iter()
        .map(|(data, policy, dataset)| confide_net::node::NodeOptions {
            creds: creds.clone(),
            coordinator: args.coordinator.clone(),
            data,
            crash_after_round: None,
            crash_after_stage: None,
            ledger: args.ledger.clone().zip(dataset),
            policy,
            witness_store: Some(path.clone()),
            job: None,
            approval: None,
            keyholder_attestation: None,
            approver: approver.clone(),
            code: code.clone(),
        })
        .collect();
    let heard = Arc::new(Mutex::new(Heartbeats::default()));
    let names = base
        .iter()
        .map(|o| match &o.policy {
            Some(p) => confide_governance::policy::Policy::load(p).map(|p| p.dataset),
            None => Ok(o.data.display().to_string()),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let view = Arc::new(crate::dashboard_views::Node {
        node: creds.name.clone(),
        node_id: creds.id(),
        admin: admin.local_addr()?.to_string(),
        coordinator: args.coordinator.clone(),
        approver: approver.clone(),
        approver_key: args.approver_key.clone(),
        datasets: names
            .iter()
            .zip(&base)
            .map(|(name, o)| crate::dashboard_views::Dataset {
                name: name.clone(),
                ledger: o.ledger.as_ref().map(|(_, d)| d.clone()),
                policy: o.policy.clone(),
            })
            .collect(),
        ledger: args.ledger.clone(),
        store,
        inbox: inbox.clone(),
        creds: creds.clone(),
        heard: heard.clone(),
        started_ms: now_ms(),
        verified: Mutex::default(),
    });
    let dashboard =
        crate::dashboard::Dashboard::new(view, inbox.clone(), args.approver_key.clone());
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let render = {
            let inbox = inbox.clone();
            let heard = heard.clone();
            Arc::new(move || render(&inbox, &heard)) as confide_net::admin::Render
        };
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(confide_net::admin::serve_admin_with(
            admin,
            ready.clone(),
            render,
            inbox_routes(inbox.clone()).merge(crate::dashboard::routes(dashboard)),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ))
    };
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let daemon = Daemon {
        inbox,
        base,
        names,
        creds,
        heard,
        running: Arc::default(),
        poll: Duration::from_secs_f64(args.poll),
    };
    tokio::select! {
        () = signalled => {}
        () = daemon.run(stop_rx.clone()) => {}
    }
    ready.store(false, std::sync::atomic::Ordering::SeqCst);
    eprintln!("confide node: stopping");
    let _ = stop_tx.send(true);
    let _ = stop_rx.changed().await;
    admin_task.await.context("admin port task")??;
    eprintln!("confide node: stopped");
    Ok(0)
}

use crate::dashboard_views::Heartbeats;

/// The party id of an approval key file, which must be encrypted.
fn approval_key_id(key: &std::path::Path) -> Result<String> {
    use confide_governance::identity::{Identity, IdentityError, PublicIdentity, public_path};
    match Identity::load(key, None) {
        Err(IdentityError::NeedsPassphrase(_)) => {}
        Ok(_) => bail!(
            "--approver-key {}: the key is not encrypted; the daemon holds the owner's key only \
             encrypted (make one with `confide keygen --passphrase-env …`)",
            key.display()
        ),
        Err(e) => return Err(e.into()),
    }
    let public = public_path(key);
    let p = PublicIdentity::load(&public)
        .with_context(|| format!("--approver-key needs its public half {}", public.display()))?;
    Ok(p.id)
}

fn render(inbox: &Inbox, heard: &Mutex<Heartbeats>) -> Result<String, String> {
    let entries = inbox.list().map_err(|e| e.to_string())?;
    let mut out = String::new();
    out.push_str("# HELP confide_node_inbox Jobs offered to this node, by status.\n");
    out.push_str("# TYPE confide_node_inbox gauge\n");
    for status in ["pending", "approved", "rejected", "running", "ended"] {
        let n = entries
            .iter()
            .filter(|e| {
                serde_json::to_value(e.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    == Some(status.to_string())
            })
            .count();
        out.push_str(&format!("confide_node_inbox{{status=\"{status}\"}} {n}\n"));
    }
    let h = heard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    out.push_str("# HELP confide_node_heartbeats Heartbeats to the coordinator, by outcome.\n");
    out.push_str("# TYPE confide_node_heartbeats counter\n");
    out.push_str(&format!(
        "confide_node_heartbeats_total{{outcome=\"ok\"}} {}\n",
        h.ok
    ));
    out.push_str(&format!(
        "confide_node_heartbeats_total{{outcome=\"failed\"}} {}\n",
        h.failed
    ));
    out.push_str("# EOF\n");
    Ok(out)
}

fn inbox_routes(inbox: Inbox) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};

    fn reply(r: Result<String, (u16, String)>) -> Response {
        match r {
            Ok(json) => (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                json,
            )
                .into_response(),
            Err((code, msg)) => (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                format!("{msg}\n"),
            )
                .into_response(),
        }
    }
    fn json<T: Serialize>(v: &T) -> Result<String, (u16, String)> {
        serde_json::to_string_pretty(v).map_err(|e| (500, e.to_string()))
    }
    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, (u16, String)> + Send + 'static,
    ) -> Result<T, (u16, String)> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| (500, e.to_string()))?
    }
    async fn list(State(inbox): State<Inbox>) -> Response {
        reply(
            blocking(move || inbox.list().map_err(|e| (500, e.to_string())))
                .await
                .and_then(|l| json(&l)),
        )
    }
    async fn show(State(inbox): State<Inbox>, Path(hash): Path<String>) -> Response {
        reply(
            blocking(move || inbox.entry(&hash))
                .await
                .and_then(|e| json(&e)),
        )
    }
    type Decision = fn(&Inbox, &str, &[u8]) -> Result<Entry, (u16, String)>;
    async fn decide(
        inbox: Inbox,
        hash: String,
        body: axum::body::Bytes,
        decision: Decision,
    ) -> Response {
        reply(
            blocking(move || decision(&inbox, &hash, &body))
                .await
                .and_then(|e| json(&e)),
        )
    }
    async fn approve(
        State(inbox): State<Inbox>,
        Path(hash): Path<String>,
        body: axum::body::Bytes,
    ) -> Response {
        decide(inbox, hash, body, Inbox::approve).await
    }
    async fn reject(
        State(inbox): State<Inbox>,
        Path(hash): Path<String>,
        body: axum::body::Bytes,
    ) -> Response {
        decide(inbox, hash, body, Inbox::reject).await
    }
    async fn revoke(
        State(inbox): State<Inbox>,
        Path(hash): Path<String>,
        body: axum::body::Bytes,
    ) -> Response {
        decide(inbox, hash, body, |inbox, hash, body| {
            inbox.revoke(hash, &String::from_utf8_lossy(body))
        })
        .await
    }
    axum::Router::new()
        .route("/inbox", get(list))
        .route("/inbox/{hash}", get(show))
        .route("/inbox/{hash}/approve", post(approve))
        .route("/inbox/{hash}/reject", post(reject))
        .route("/inbox/{hash}/revoke", post(revoke))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(inbox)
}

struct Daemon {
    inbox: Inbox,
    /// Per dataset, the options a job on it runs with (in the order given).
    base: Vec<confide_net::node::NodeOptions>,
    /// Per dataset, its name (its policy's dataset, or its file).
    names: Vec<String>,
    creds: Credentials,
    heard: Arc<Mutex<Heartbeats>>,
    /// The jobs this daemon runs now.
    running: Arc<Mutex<std::collections::HashSet<String>>>,
    poll: Duration,
}

type FleetClient = pb::fleet_client::FleetClient<tonic::transport::Channel>;

impl Daemon {
    async fn run(self, stop: tokio::sync::watch::Receiver<bool>) {
        let mut client: Option<FleetClient> = None;
        // The coordinator's store version of the last answer: the next heartbeat waits for a
        // change after it (a long poll of at most `poll`).
        let mut version = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            if client.is_none() {
                match confide_net::transport::connect(
                    &self.base[0].coordinator,
                    "coordinator",
                    &self.creds,
                )
                .await
                {
                    // Offers carry whole manifests, initial weights included (up to 1 MiB
                    // each): tonic's 4 MiB default would refuse a few of them at once.
                    Ok(ch) => {
                        client = Some(
                            pb::fleet_client::FleetClient::new(ch)
                                .max_decoding_message_size(64 * 1024 * 1024),
                        );
                    }
                    Err(e) => self.beat(Err(e.to_string())),
                }
            }
            let Some(c) = client.as_mut() else {
                tokio::time::sleep(self.poll).await;
                continue;
            };
            match self.tick(c, version).await {
                Ok(v) => {
                    self.beat(Ok(()));
                    version = v;
                }
                Err(e) => {
                    self.beat(Err(format!("{e:#}")));
                    client = None;
                    version = 0;
                    tokio::time::sleep(self.poll).await;
                }
            }
        }
    }

    fn beat(&self, outcome: Result<(), String>) {
        let mut h = self
            .heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match outcome {
            Ok(()) => {
                if h.failed > 0 && !h.last_error.is_empty() {
                    eprintln!("confide node: the coordinator answers again");
                    h.last_error.clear();
                }
                h.ok += 1;
                h.last_ok_ms = now_ms();
            }
            Err(e) => {
                if h.last_error != e {
                    eprintln!("confide node: heartbeat failed: {e}");
                    h.last_error = e;
                }
                h.failed += 1;
            }
        }
    }

    /// One heartbeat: waits (at most `poll`) for the coordinator's jobs to change after
    /// `version`, then handles every offer. Returns the answer's version.
    async fn tick(&self, client: &mut FleetClient, version: u64) -> Result<u64> {
        let wait_ms = u32::try_from(self.poll.as_millis()).unwrap_or(u32::MAX);
        let reply = client
            .offers(pb::OffersRequest {
                after: version,
                wait_ms,
            })
            .await
            .map_err(|s| anyhow::anyhow!(confide_net::roles::describe_failure(&s)))?
            .into_inner();
        // The coordinator's party id, from its certificate (checked against the CA): each
        // decision names it, so it cannot be replayed to another coordinator.
        let ca = self.creds.ca_der()?;
        let coordinator =
            confide_net::pki::verify_party_certificate(&reply.coordinator_certificate, &ca)
                .map_err(|e| anyhow::anyhow!("the coordinator's certificate: {e}"))?;
        if coordinator.role != Role::Coordinator {
            bail!("`{}` is not a coordinator", coordinator.name);
        }
        self.heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .coordinator = Some(coordinator.clone());
        for offer in reply.offers {
            let record: JobRecord = serde_json::from_str(&offer.record_json)
                .context("the coordinator sent a malformed job record")?;
            let mut entry = match self.inbox.get(&record.hash)? {
                Some(e) => e,
                None => {
                    self.assess(&record, &offer, &reply.coordinator_certificate)
                        .await?
                }
            };
            if !entry.sent && matches!(entry.status, Status::Approved | Status::Rejected) {
                self.decide(client, &mut entry, &coordinator.id).await?;
            }
            let runs = matches!(record.state, confide_service::JobState::Running { .. });
            if runs && matches!(entry.status, Status::Approved | Status::Running) {
                self.start(entry)?;
            }
        }
        Ok(reply.version)
    }

    /// Checks a new offer and files it in the inbox.
    async fn assess(&self, record: &JobRecord, offer: &pb::Offer, cert: &[u8]) -> Result<Entry> {
        let all = self.base.clone();
        let manifest = offer.manifest_json.clone();
        let cert = cert.to_vec();
        let verdicts = tokio::task::spawn_blocking(move || {
            all.iter()
                .map(|opts| confide_net::node::assess(opts, &manifest, &cert))
                .collect::<Vec<_>>()
        })
        .await?;
        let (source, (verdict, why, status)) = choose(
            &self.base,
            verdicts.iter().map(|a| a.verdict.clone()).collect(),
        );
        let mut e = Entry {
            hash: record.hash.clone(),
            job_id: record.job_id.clone(),
            model_owner: record.model_owner.clone(),
            rounds: record.rounds,
            verdict: verdict.into(),
            why,
            status,
            sent: false,
            approval: None,
            note: String::new(),
            updated_ms: 0,
            manifest_json: offer.manifest_json.clone(),
            source,
            dataset: self.names[source].clone(),
            cost: verdicts[source].cost.clone(),
            rules: verdicts[source].rules.clone(),
            statement: String::new(),
            datasets: self
                .names
                .iter()
                .zip(&verdicts)
                .map(|(name, a)| DatasetReview {
                    dataset: name.clone(),
                    cost: a.cost.clone(),
                    verdict: match &a.verdict {
                        Verdict::Approve(why) => format!("approve: {why}"),
                        Verdict::Ask(why) => format!("ask: {why}"),
                        Verdict::Reject(why) => format!("reject: {why}"),
                    },
                })
                .collect(),
        };
        self.inbox.put(&mut e)?;
        eprintln!(
            "confide node: job `{}` ({}) offered: {verdict}: {}",
            e.job_id,
            &e.hash[..16],
            e.why
        );
        Ok(e)
    }

    /// Sends a decision, signed by the node's key, and records that it was delivered.
    async fn decide(
        &self,
        client: &mut FleetClient,
        e: &mut Entry,
        coordinator: &str,
    ) -> Result<()> {
        let hash = parse_hash(&e.hash)?;
        // An approved job the owner revoked before it ran is rejected, with the revocation.
        let revoking = e.status == Status::Approved && !e.statement.is_empty();
        let approve = e.status == Status::Approved && !revoking;
        let rule = if revoking {
            e.note.chars().take(MAX_REASON).collect()
        } else {
            public_reason(e, self.base.len())
        };
        let message = if approve {
            online_approval_message(coordinator, &hash)
        } else {
            online_rejection_message(coordinator, &hash, &rule)
        };
        let signature = hex::encode(self.creds.signing_key()?.sign(&message));
        let sent = client
            .decide(pb::DecideRequest {
                manifest_hash: e.hash.clone(),
                approve,
                rule,
                signature,
                owner_statement: if approve {
                    e.approval
                        .as_ref()
                        .and_then(|a| serde_json::to_string(a).ok())
                        .unwrap_or_default()
                } else {
                    e.statement.clone()
                },
            })
            .await;
        let refused = match sent {
            Ok(_) => None,
            // A numbered refusal is final (the job ended meanwhile, or moved past the point
            // where this decision applies): keep it in the note, and do not send it again.
            // (A revocation refused because the job runs already is sent again as the
            // node's withdrawal, when it joins.)
            Err(s) if confide_net::control::rule_of(&s).is_some() => {
                eprintln!(
                    "confide node: job `{}`: the coordinator refused the decision: {}",
                    e.job_id,
                    s.message()
                );
                Some(format!("decision refused: {}", s.message()))
            }
            // Not delivered (the coordinator is restarting, the connection broke): again at
            // the next heartbeat.
            Err(s) => bail!(
                "decision on `{}`: {}",
                e.job_id,
                confide_net::roles::describe_failure(&s)
            ),
        };
        // Recorded only if the owner did not decide otherwise meanwhile (that decision is then
        // sent at the next heartbeat).
        let sent_as = (e.status, e.statement.clone(), e.approval.clone());
        *e = self
            .inbox
            .update(&e.hash, |_, cur| {
                if (cur.status, cur.statement.clone(), cur.approval.clone()) == sent_as {
                    cur.sent = true;
                    match &refused {
                        Some(note) if !revoking => cur.note.clone_from(note),
                        Some(_) => {}
                        None if revoking => {
                            cur.status = Status::Rejected;
                            cur.why.clone_from(&cur.note);
                        }
                        None => {}
                    }
                }
                Ok(())
            })
            .map_err(|(_, m)| anyhow::anyhow!(m))?;
        Ok(())
    }

    /// Runs an approved job that the coordinator started, once at a time per job.
    fn start(&self, mut e: Entry) -> Result<()> {
        {
            let mut running = self
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !running.insert(e.hash.clone()) {
                return Ok(());
            }
        }
        // The entry may have ended since the caller read it (a run that finished just now
        // records its end before it leaves the running set): never run a job twice.
        match self.inbox.get(&e.hash)? {
            Some(now) if now.status == Status::Ended => {
                self.running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&e.hash);
                return Ok(());
            }
            Some(now) => e = now,
            None => {}
        }
        let hash = parse_hash(&e.hash)?;
        let at = if e.dataset.is_empty() {
            Some(e.source).filter(|i| *i < self.base.len())
        } else {
            self.names.iter().position(|n| *n == e.dataset)
        };
        let Some(mut opts) = at.map(|i| self.base[i].clone()) else {
            self.running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&e.hash);
            bail!(
                "job `{}` was approved for dataset `{}`, which this daemon no longer serves: \
                 start it with that dataset",
                e.job_id,
                e.dataset
            );
        };
        e = match self.inbox.update(&e.hash, |_, cur| {
            if cur.status == Status::Ended {
                return Err((409, "ended".into()));
            }
            cur.status = Status::Running;
            Ok(())
        }) {
            Ok(now) => now,
            Err(_) => {
                self.running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&e.hash);
                return Ok(());
            }
        };
        opts.job = Some(hash);
        opts.approval = e.approval.clone();
        let inbox = self.inbox.clone();
        let running = self.running.clone();
        eprintln!("confide node: job `{}` runs", e.job_id);
        tokio::spawn(async move {
            let outcome = confide_net::node::run_node(opts).await;
            let note = match outcome {
                Ok(s) if s.finished => format!("finished after {} rounds", s.rounds),
                Ok(s) => format!("failed: {}", s.message),
                Err(err) => format!("failed: {err}"),
            };
            eprintln!("confide node: job `{}`: {note}", e.job_id);
            let ended = inbox.update(&e.hash, |_, cur| {
                cur.status = Status::Ended;
                cur.note = note;
                Ok(())
            });
            if let Err((_, err)) = ended {
                eprintln!("confide node: inbox: {err}");
            }
            running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&e.hash);
        });
        Ok(())
    }
}

/// Where the node daemon's admin port is, and how to print.
#[derive(clap::Args, Debug)]
pub struct InboxAt {
    /// The node daemon's admin address (`confide node serve --admin`).
    #[arg(long, env = "CONFIDE_NODE_ADMIN", default_value = "127.0.0.1:7103")]
    admin: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: crate::control::Format,
}

/// The owner whose key signs a decision.
#[derive(clap::Args, Debug)]
pub struct Owner {
    /// The owner's approval key (`confide keygen`), when the daemon was started with its id
    /// (`--approver`); it signs instead of the node's identity (--fed and --name are then
    /// not needed).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Federation directory with ca.crt and the owner's certificate and key (the node's own
    /// identity signs).
    #[arg(long, env = "CONFIDE_FED", required_unless_present = "key")]
    fed: Option<PathBuf>,
    /// The owner's name (the node's certificate name).
    #[arg(long, env = "CONFIDE_NAME", required_unless_present = "key")]
    name: Option<String>,
    #[command(flatten)]
    passphrase: Passphrase,
}

impl Owner {
    /// The key that signs the owner's decision.
    fn identity(&self) -> Result<Arc<confide_governance::identity::Identity>> {
        let passphrase = self.passphrase.get()?;
        match (&self.key, &self.fed, &self.name) {
            (Some(key), _, _) => Ok(Arc::new(confide_governance::identity::Identity::load(
                key,
                passphrase.as_deref(),
            )?)),
            (None, Some(fed), Some(name)) => {
                Ok(Credentials::load_with(fed, name, passphrase.as_deref())?.identity())
            }
            _ => bail!("give --key, or --fed and --name"),
        }
    }
}

/// Which dataset an offer goes to, and what the daemon does with it: the first dataset whose
/// checks approve the job, else the first that leaves it to the owner; otherwise it is
/// rejected, with every dataset's reason when there are several.
fn choose(
    base: &[confide_net::node::NodeOptions],
    verdicts: Vec<Verdict>,
) -> (usize, (&'static str, String, Status)) {
    // Datasets are named by position in the owner's inbox (the coordinator hears NODE-002).
    let several = base.len() > 1;
    let tagged = |i: usize, why: &str| {
        if several {
            format!("dataset {}: {why}", i + 1)
        } else {
            why.to_string()
        }
    };
    let mut ask = None;
    let mut reasons = Vec::new();
    for (i, v) in verdicts.iter().enumerate() {
        match v {
            Verdict::Approve(basis) => {
                return (i, ("approve", tagged(i, basis), Status::Approved));
            }
            Verdict::Ask(why) => {
                ask.get_or_insert((i, tagged(i, why)));
            }
            Verdict::Reject(why) => reasons.push(tagged(i, why)),
        }
    }
    match ask {
        Some((i, why)) => (i, ("ask", why, Status::Pending)),
        None => (0, ("reject", reasons.join("; "), Status::Rejected)),
    }
}

/// What the coordinator hears of a decision: the reason, at most [`MAX_REASON`] characters.
/// With several datasets, a job the checks reject gets only NODE-002 (none of them accepts
/// it): each dataset's reason stays in the owner's inbox. An owner's own rejection from the
/// inbox carries the owner's words.
fn public_reason(e: &Entry, datasets: usize) -> String {
    if e.status != Status::Approved && e.verdict == "reject" && datasets > 1 {
        NONE_FITS.to_string()
    } else {
        e.why.chars().take(MAX_REASON).collect()
    }
}

/// `confide node inbox …`: the jobs offered to a running node daemon.
#[derive(clap::Subcommand, Debug)]
pub enum InboxCommand {
    /// Every job offered to this node, and what became of it.
    List {
        #[command(flatten)]
        at: InboxAt,
    },
    /// One job: its manifest, the daemon's verdict and why.
    Show {
        /// The job: its manifest hash, a unique hash prefix (8+ hex digits) or its job id.
        job: String,
        #[command(flatten)]
        at: InboxAt,
    },
    /// Approve a waiting job: your key co-signs its manifest (here, not in the daemon).
    Approve {
        /// The job: its manifest hash, a unique hash prefix or its job id.
        job: String,
        #[command(flatten)]
        at: InboxAt,
        #[command(flatten)]
        owner: Owner,
    },
    /// Reject a waiting job, with a statement signed by your key; the job ends rejected.
    Reject {
        /// The job: its manifest hash, a unique hash prefix or its job id.
        job: String,
        /// Why (at most 200 characters; it reaches the coordinator's audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        at: InboxAt,
        #[command(flatten)]
        owner: Owner,
    },
    /// Revoke your consent to a job, with a statement signed by your key: a waiting job is
    /// rejected; an approved or running one stops at its next round, and the coordinator
    /// logs your statement.
    Revoke {
        /// The job: its manifest hash, a unique hash prefix or its job id.
        job: String,
        /// Why (at most 200 characters; it reaches the coordinator's audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        at: InboxAt,
        #[command(flatten)]
        owner: Owner,
    },
}

/// A plain HTTP/1.1 exchange with the daemon's admin port (loopback).
pub(crate) fn http(admin: &str, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin)
        .with_context(|| format!("is `confide node serve` running with --admin {admin}?"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the admin port sent no HTTP status")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

fn entries(admin: &str) -> Result<Vec<Entry>> {
    let (code, body) = http(admin, "GET", "/inbox", b"")?;
    if code != 200 {
        bail!("the node daemon answered {code}: {}", body.trim());
    }
    serde_json::from_str(&body).context("the node daemon sent a malformed inbox")
}

/// The entry `name` names: a full hash, a unique prefix of 8+ hex digits, or a job id.
fn find(admin: &str, name: &str) -> Result<Entry> {
    let all = entries(admin)?;
    let by_prefix = name.len() >= 8 && name.chars().all(|c| c.is_ascii_hexdigit());
    let found: Vec<Entry> = all
        .into_iter()
        .filter(|e| e.hash == name || e.job_id == name || (by_prefix && e.hash.starts_with(name)))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => bail!("no job `{name}` in the inbox"),
        n => bail!("`{name}` names {n} jobs; give more of the hash"),
    }
}

fn print_entry(format: crate::control::Format, e: &Entry, full: bool) -> Result<()> {
    match format {
        crate::control::Format::Json => outln!("{}", serde_json::to_string_pretty(e)?),
        crate::control::Format::Text => {
            outln!(
                "{}  {:<9} {:<24} {}",
                &e.hash[..16],
                serde_json::to_value(e.status)?.as_str().unwrap_or(""),
                e.job_id,
                e.why
            );
            if full {
                outln!("hash        {}", e.hash);
                outln!("model owner {}", e.model_owner);
                outln!("rounds      {}", e.rounds);
                outln!("verdict     {}", e.verdict);
                if !e.note.is_empty() {
                    outln!("note        {}", e.note);
                }
                outln!("{}", e.manifest_json);
            }
        }
    }
    Ok(())
}

/// Signs the owner's statement of `action` on `job` and posts it to the inbox's `what`.
fn signed_post(
    action: Action,
    what: &str,
    job: &str,
    reason: &str,
    at: &InboxAt,
    owner: &Owner,
    post: impl Fn(&InboxAt, &Entry, &str, Vec<u8>) -> Result<i32>,
) -> Result<i32> {
    let e = find(&at.admin, job)?;
    let id = owner.identity()?;
    let hash = parse_hash(&e.hash)?;
    let statement = Statement::new(
        action,
        &hash,
        reason,
        id.public(),
        time::OffsetDateTime::now_utc(),
    );
    let signed = SignedStatement::sign(statement, &id)?;
    post(at, &e, what, signed.to_json().into_bytes())
}

/// Runs `confide node inbox …`.
pub fn inbox(cmd: InboxCommand) -> Result<i32> {
    let post = |at: &InboxAt, e: &Entry, what: &str, body: Vec<u8>| -> Result<i32> {
        let (code, text) = http(
            &at.admin,
            "POST",
            &format!("/inbox/{}/{what}", e.hash),
            &body,
        )?;
        match code {
            200 => {
                let e: Entry = serde_json::from_str(&text).context("malformed reply")?;
                print_entry(at.format, &e, false)?;
                Ok(0)
            }
            403 | 409 => {
                eprintln!("error: refused: {}", text.trim());
                Ok(crate::control::EXIT_REFUSED)
            }
            _ => bail!("the node daemon answered {code}: {}", text.trim()),
        }
    };
    match cmd {
        InboxCommand::List { at } => {
            let all = entries(&at.admin)?;
            match at.format {
                crate::control::Format::Json => outln!("{}", serde_json::to_string_pretty(&all)?),
                crate::control::Format::Text => {
                    for e in &all {
                        print_entry(at.format, e, false)?;
                    }
                }
            }
            Ok(0)
        }
        InboxCommand::Show { job, at } => {
            print_entry(at.format, &find(&at.admin, &job)?, true)?;
            Ok(0)
        }
        InboxCommand::Approve { job, at, owner } => {
            let e = find(&at.admin, &job)?;
            let id = owner.identity()?;
            let mut manifest = SignedManifest::from_json(&e.manifest_json)?;
            if manifest.hash != e.hash {
                bail!("the inbox entry's manifest does not hash to {}", e.hash);
            }
            manifest.approve(&id)?;
            let sig = manifest.signatures.pop().context("no co-signature")?;
            post(&at, &e, "approve", serde_json::to_vec(&sig)?)
        }
        InboxCommand::Reject {
            job,
            reason,
            at,
            owner,
        } => signed_post(Action::Reject, "reject", &job, &reason, &at, &owner, post),
        InboxCommand::Revoke {
            job,
            reason,
            at,
            owner,
        } => signed_post(Action::Revoke, "revoke", &job, &reason, &at, &owner, post),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(verdict: &str, why: &str, status: Status) -> Entry {
        Entry {
            hash: "00".repeat(32),
            job_id: "j".into(),
            model_owner: "m".into(),
            rounds: 1,
            verdict: verdict.into(),
            why: why.into(),
            status,
            sent: false,
            approval: None,
            note: String::new(),
            updated_ms: 0,
            manifest_json: String::new(),
            source: 0,
            dataset: String::new(),
            cost: None,
            rules: Vec::new(),
            statement: String::new(),
            datasets: Vec::new(),
        }
    }

    /// NODE-002: with several datasets, the coordinator hears that none fits, not why each
    /// refused; with one, the numbered reason as before; the owner's own words always.
    #[test]
    fn the_coordinator_hears_none_of_the_datasets_reasons() {
        let checks = entry(
            "reject",
            "dataset 1: DATA-003 …; dataset 2: policy refuses",
            Status::Rejected,
        );
        assert_eq!(public_reason(&checks, 2), NONE_FITS);
        assert_eq!(public_reason(&checks, 1), checks.why);
        let owner = entry(
            "ask",
            "rejected by the owner: not this study",
            Status::Rejected,
        );
        assert_eq!(public_reason(&owner, 2), owner.why);
        let long = entry("reject", &"x".repeat(500), Status::Rejected);
        assert_eq!(public_reason(&long, 1).chars().count(), MAX_REASON);
    }
}
