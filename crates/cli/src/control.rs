//! `confide coordinator serve` and the job commands that talk to it (`confide job submit`,
//! `list`, `status`, `logs`, `cancel`): thin translations between the command line and the
//! coordinator's gRPC `Control` service (`confide_net::control`).
//!
//! Exit codes: 0 completed (or, without `--wait`, accepted); 1 the command itself failed (bad
//! arguments, unreachable coordinator); 3 refused (a numbered rule) or rejected; 4 failed;
//! 5 cancelled; 6 expired.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use confide_core::Role;
use confide_net::client::{ClientError, ControlSession};
use confide_net::control;
use confide_net::pki::Credentials;
use confide_service::{JobEvent, JobRecord, JobState, Outcome};

use crate::governance::Passphrase;

/// How long a stopping daemon waits for calls in progress.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The exit code of a refused request.
pub const EXIT_REFUSED: i32 = 3;

/// `confide coordinator serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// This party's name in the federation directory.
    #[arg(long, default_value = "coordinator")]
    name: String,
    /// Address of the control API (model owners, operator); port 0 picks a free port. The
    /// bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:7101")]
    control: std::net::SocketAddr,
    /// Address of the admin port (plain HTTP: /metrics, /livez, /readyz); keep it on
    /// loopback. The bound address is printed on stdout, before the control address.
    #[arg(long, default_value = "127.0.0.1:7102")]
    admin: std::net::SocketAddr,
    /// Address of the fleet port, where nodes (`confide node serve`) connect to hear of jobs,
    /// approve them and run them; port 0 picks a free port. The bound address is printed on
    /// stdout, after the control address.
    #[arg(long, default_value = "127.0.0.1:7100")]
    fleet: std::net::SocketAddr,
    /// The long-running key holder (`confide keyholder serve`) that jobs under `paillier`
    /// and `lattice` use: it makes a fresh key for each.
    #[arg(long)]
    keyholder: Option<String>,
    /// A long-running aggregator (`confide aggregator serve`) that jobs under `shares` and
    /// `threshold` use: repeat it once per aggregator, in index order (aggregator-1 first).
    #[arg(long = "aggregator")]
    aggregators: Vec<String>,
    /// How many jobs run at once; more wait in `queued`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_jobs: u32,
    /// A job that is still awaiting approval, or queued, this many seconds after it was
    /// submitted is expired (exit code 6 for `confide job status`); the default is 7 days.
    #[arg(long, default_value_t = 604_800.0, value_parser = positive_seconds)]
    expire_after: f64,
    /// The coordinator's store (redb; created if missing): jobs, their events and the audit
    /// log. Default: <fed>/<name>-service.redb.
    #[arg(long)]
    store: Option<PathBuf>,
    /// The operator's held-out test sets: a job with id J of the model owner with party id M
    /// is evaluated after every round on `<DIR>/M/J.csv` (`.txt` for text, `.safetensors` for
    /// image arrays; read with the job's data format and features), when that file exists;
    /// its report and the dashboard then carry the test accuracy and loss. Test sets are not
    /// part of a signed job: the operator chooses them.
    #[arg(long)]
    evaluation: Option<PathBuf>,
    /// The dashboard's address as users reach it (for example behind a TLS proxy), for the
    /// job addresses that `confide job submit` prints. Default: http://<the admin address>.
    #[arg(long)]
    dashboard_url: Option<String>,
    #[command(flatten)]
    passphrase: Passphrase,
}

/// Before anything is served: every job that was `running` when the daemon stopped goes on
/// from its checkpoint (RES-006), and is returned; one without a checkpoint (stopped before
/// its first round began) is failed with its reason. Never left `running` with nobody running
/// it. Checkpoints of jobs that ended are erased.
fn resume_or_fail(jobs: &confide_service::Jobs, path: &std::path::Path) -> Result<Vec<[u8; 32]>> {
    let checkpoints = confide_net::checkpoint::Checkpoints::new(jobs.store());
    let interrupted = jobs
        .list()
        .with_context(|| format!("recovering {}", path.display()))?
        .into_iter()
        .filter(|r| matches!(r.state, JobState::Running { .. } | JobState::Releasing));
    let mut resume = Vec::new();
    for r in interrupted {
        let hash = parse_hash(&r.hash)?;
        let cp = checkpoints
            .load(&hash)
            .map_err(|e| anyhow::anyhow!("recovering job `{}`: {e}", r.job_id))?;
        if let (Some(cp), JobState::Running { .. }) = (&cp, &r.state) {
            eprintln!(
                "confide coordinator: job `{}` was running; it goes on after round {}",
                r.job_id, cp.round
            );
            resume.push(hash);
            continue;
        }
        let reason = if matches!(r.state, JobState::Running { .. }) {
            "the coordinator stopped before the job's first round began (nothing was trained); \
             submit it again under a new job id"
        } else {
            "the coordinator stopped while it released the job's model"
        }
        .to_string();
        jobs.transition(
            &hash,
            &confide_service::Transition::Fail { reason },
            "coordinator",
            time::OffsetDateTime::now_utc(),
        )?;
        checkpoints.erase(&hash).map_err(anyhow::Error::msg)?;
        eprintln!(
            "confide coordinator: job `{}` was starting; it is failed",
            r.job_id
        );
    }
    // A job that ended while its checkpoint was being erased leaves one behind: erase it now.
    for hash in checkpoints.jobs().map_err(anyhow::Error::msg)? {
        let ended = jobs
            .get(&hash)?
            .is_none_or(|r| !matches!(r.state, JobState::Running { .. }));
        if ended {
            checkpoints.erase(&hash).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(resume)
}

/// A duration in seconds: finite and above zero.
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e10 => Ok(v),
        _ => Err(format!("`{text}` is not a number of seconds above 0")),
    }
}

/// Runs the long-lived coordinator until SIGTERM or SIGINT: opens (and so recovers) its store
/// first, then serves.
pub async fn serve(args: ServeArgs) -> Result<i32> {
    // Watch for SIGTERM and SIGINT from the start: a signal that arrives while the store
    // recovers, or just after the daemon turned ready, still stops it cleanly.
    let signalled = stop_signal()?;
    let creds = Credentials::load_with(&args.fed, &args.name, args.passphrase.get()?.as_deref())?;
    if creds.role != Role::Coordinator {
        bail!("`{}` has role {}, not coordinator", creds.name, creds.role);
    }
    if let Some(dir) = &args.evaluation
        && !dir.is_dir()
    {
        bail!("--evaluation {}: not a directory", dir.display());
    }
    // The admin port answers first, so that /readyz says 503 while the store recovers.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = crate::bind(args.admin, "coordinator admin").await?;
    let admin_addr = admin.local_addr()?.to_string();
    let render: Arc<std::sync::OnceLock<control::ControlService>> = Arc::default();
    let board: Arc<std::sync::OnceLock<Arc<crate::board::Board>>> = Arc::default();
    let admin_task = {
        let render = render.clone();
        let render: confide_net::admin::Render = Arc::new(move || match render.get() {
            Some(s) => s.render_metrics(),
            None => Ok("# EOF\n".to_string()),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(confide_net::admin::serve_admin_with(
            admin,
            ready.clone(),
            render,
            crate::board::routes(board.clone()),
            async move {
                let _ = stop_rx.await;
            },
        ));
        (task, stop_tx)
    };
    let path = args
        .store
        .unwrap_or_else(|| args.fed.join(format!("{}-service.redb", args.name)));
    let store: Arc<dyn confide_store::Store> = Arc::new(confide_store::RedbStore::open(&path)?);
    let jobs = confide_service::Jobs::new(store.clone());
    let audit = confide_governance::audit::AuditLog::new(store);
    let resume = resume_or_fail(&jobs, &path)?;
    // Recover before serving: every record must read back (a corrupt store stops here).
    let counts = jobs
        .count_by_state()
        .with_context(|| format!("recovering {}", path.display()))?;
    let summary: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    eprintln!(
        "confide coordinator: store {} recovered ({})",
        path.display(),
        if summary.is_empty() {
            "no jobs".to_string()
        } else {
            summary.join(", ")
        }
    );
    let dashboard_url = args
        .dashboard_url
        .clone()
        .unwrap_or_else(|| format!("http://{admin_addr}"));
    let service = control::ControlService::new(jobs, creds.id(), creds.revocations.clone())
        .with_dashboard(dashboard_url.trim_end_matches('/'));
    let _ = render.set(service.clone());
    let _ = board.set(Arc::new(crate::board::Board {
        control: service.clone(),
        ca: creds.ca_der()?,
        name: creds.name.clone(),
        admin: admin_addr.clone(),
        audit: audit.clone(),
        sessions: crate::sessions::SessionBook::new(&creds.id()),
    }));
    let listener = crate::bind(args.control, "coordinator control").await?;
    let fleet_listener = crate::bind(args.fleet, "coordinator fleet").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let routes = service.routes().clone();
    for hash in &resume {
        routes.recovering(hash);
    }
    let fleet = confide_net::fleet::FleetService::new(service.clone(), creds.cert_der()?)
        .with_audit(audit.clone(), creds.identity());
    let fleet_task = {
        let creds = creds.clone();
        let routes = routes.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            confide_net::roles::serve_fleet(fleet_listener, &creds, fleet, routes, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let dispatcher = confide_net::fleet::Dispatcher::new(
        service.clone(),
        routes,
        creds.clone(),
        audit,
        args.max_jobs as usize,
    )
    .with_keyholder(args.keyholder.clone())
    .with_aggregators(args.aggregators.clone())
    .with_resume(resume)
    .with_evaluation(args.evaluation.clone())
    .with_expiry(std::time::Duration::from_secs_f64(args.expire_after));
    let dispatch_task = tokio::spawn(dispatcher.run(stop_rx));
    let stopper = service.clone();
    let not_ready = ready.clone();
    let stop = async move {
        signalled.await;
        let _ = stop_tx.send(true);
        not_ready.store(false, std::sync::atomic::Ordering::SeqCst);
        eprintln!("confide coordinator: stopping (no new calls; calls in progress finish)");
        stopper.stop();
        // Calls in progress get a bounded time; each store commit is atomic either way.
        tokio::spawn(async {
            tokio::time::sleep(DRAIN_LIMIT).await;
            eprintln!(
                "confide coordinator: calls still in progress after {} s; exiting",
                DRAIN_LIMIT.as_secs()
            );
            std::process::exit(1);
        });
    };
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let served = confide_net::roles::serve_control(listener, &creds, service, stop).await;
    let (task, stop_admin) = admin_task;
    let _ = stop_admin.send(());
    let admin_result = task.await.context("admin port task")?;
    let _ = dispatch_task.await;
    let fleet_result = fleet_task.await.context("fleet port task")?;
    served?;
    fleet_result?;
    admin_result?;
    eprintln!("confide coordinator: stopped");
    Ok(0)
}

fn parse_hash(text: &str) -> Result<[u8; 32]> {
    confide_service::jobs::parse_hash(text)
        .with_context(|| format!("malformed job hash `{text}` in the store"))
}

/// A future that completes on the first SIGINT or SIGTERM; the handlers are installed now.
pub(crate) fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// How a command prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Lines for people.
    Text,
    /// JSON for programs (one document; `logs` prints one event per line).
    Json,
}

/// Where the coordinator is and who is asking.
#[derive(clap::Args, Debug)]
pub struct Connect {
    /// The coordinator's control address (host:port).
    #[arg(long, env = "CONFIDE_CONTROL")]
    coordinator: String,
    /// Federation directory with ca.crt and your certificate and key.
    #[arg(long, env = "CONFIDE_FED")]
    fed: PathBuf,
    /// Your name in the federation directory (a model owner, or the coordinator's operator).
    #[arg(long, env = "CONFIDE_NAME")]
    name: String,
    /// The coordinator's name in its certificate.
    #[arg(long, default_value = "coordinator")]
    server_name: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    passphrase: Passphrase,
}

/// The job commands served by a running coordinator.
#[derive(clap::Subcommand, Debug)]
pub enum ServiceJobCommand {
    /// Open the coordinator's dashboard (its admin port, `/ui/`) as this party (a model
    /// owner, or the operator): signs a login challenge with the party's key and prints a
    /// one-time address to open in a browser.
    Login(crate::board::LoginArgs),
    /// Submit a signed manifest to a running coordinator (`confide coordinator serve`). The
    /// same manifest again returns the same job; with --wait, follow it until it ends and
    /// exit with its outcome.
    Submit {
        /// The manifest file (`confide job sign`).
        manifest: PathBuf,
        /// Follow the job's events until it ends.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// The jobs you may see (yours as model owner or recipient; every job, for the operator).
    List {
        /// Only jobs in this state (awaiting_approval, queued, running, releasing, completed,
        /// cancelled, rejected, expired, failed).
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        connect: Connect,
    },
    /// One job's state (exit code: its outcome once it has ended, 0 before).
    Status {
        /// The job: its manifest hash, a unique hash prefix (8+ hex digits) or its job id.
        job: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// A job's events; with --follow, until it ends.
    Logs {
        /// The job: its manifest hash, a unique hash prefix or its job id.
        job: String,
        /// Keep printing events until the job ends.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        connect: Connect,
    },
    /// Download a completed job's model (safetensors and its card) and the coordinator's
    /// report into a directory; only the job's recipients may.
    Download {
        /// The job: its manifest hash, a unique hash prefix or its job id.
        job: String,
        /// Where to write model.safetensors, model.json and coordinator-report.json.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    /// Cancel a job, as its model owner, with a statement signed by your key (it goes into
    /// the coordinator's audit log).
    Cancel {
        /// The job: its manifest hash, a unique hash prefix or its job id.
        job: String,
        /// Why (at most 200 characters; recorded in the audit log).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        connect: Connect,
    },
}

struct Session {
    control: ControlSession,
    format: Format,
}

impl Session {
    async fn open(c: &Connect) -> Result<Self> {
        let passphrase = c.passphrase.get()?;
        let control = ControlSession::open(
            &c.coordinator,
            &c.server_name,
            &c.fed,
            &c.name,
            passphrase.as_deref(),
        )
        .await
        .map_err(failed)?;
        Ok(Self {
            control,
            format: c.format,
        })
    }
}

/// A refusal from the coordinator, which ends the command with [`EXIT_REFUSED`].
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// A failed call: a numbered refusal ([`Refused`]), or the call itself failed.
fn failed(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Refused(m) | ClientError::NotFound(m) => Refused(m).into(),
        other => anyhow::anyhow!(other),
    }
}

fn when(ms: u64) -> String {
    i128::from(ms)
        .checked_mul(1_000_000)
        .and_then(|n| time::OffsetDateTime::from_unix_timestamp_nanos(n).ok())
        .map(confide_governance::policy::rfc3339)
        .unwrap_or_else(|| ms.to_string())
}

/// Prints a job's record; `created` and `url` (its dashboard address) come with a submission.
fn print_record(
    format: Format,
    r: &JobRecord,
    created: Option<bool>,
    url: Option<&str>,
) -> Result<()> {
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(r)?;
            if let Some(c) = created {
                v["created"] = c.into();
            }
            if let Some(u) = url.filter(|u| !u.is_empty()) {
                v["url"] = u.into();
            }
            outln!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            if let Some(c) = created {
                outln!(
                    "{} job `{}`",
                    if c { "submitted" } else { "already submitted:" },
                    r.job_id
                );
            }
            outln!("job       {}", r.job_id);
            outln!("hash      {}", r.hash);
            outln!("state     {}", r.state.describe());
            outln!("rounds    {}", r.rounds);
            outln!(
                "approved  {}/{} ({})",
                r.approved.len(),
                r.participants.len(),
                r.participants.join(", ")
            );
            outln!("submitted {}", when(r.submitted_ms));
            outln!("updated   {}", when(r.updated_ms));
            if let Some(u) = url.filter(|u| !u.is_empty()) {
                outln!("dashboard {u}");
            }
        }
    }
    Ok(())
}

fn print_event(format: Format, e: &JobEvent) -> Result<()> {
    match format {
        Format::Json => outln!("{}", serde_json::to_string(e)?),
        Format::Text => outln!("#{:<4} {}  {}  {}", e.seq, when(e.time_ms), e.actor, e.what),
    }
    Ok(())
}

/// The exit code for a job's state: its outcome once it ended, 0 before.
fn exit_code(r: &JobRecord) -> i32 {
    r.state.outcome().map_or(0, Outcome::exit_code)
}

/// Prints a job's events from `from`; with `follow`, until it ends. Returns the last state.
async fn events(s: &mut Session, name: &str, from: u64, follow: bool) -> Result<JobRecord> {
    let mut stream = s.control.events(name, from, follow).await.map_err(failed)?;
    while let Some(e) = stream.next().await.map_err(failed)? {
        print_event(s.format, &e)?;
    }
    status(s, name).await
}

async fn status(s: &mut Session, name: &str) -> Result<JobRecord> {
    s.control.status(name).await.map_err(failed)
}

/// `confide nodes list`: the nodes a running coordinator has heard from (its operator only).
pub async fn nodes(connect: Connect) -> Result<i32> {
    match nodes_inner(connect).await {
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(EXIT_REFUSED)
        }
        other => other,
    }
}

async fn nodes_inner(connect: Connect) -> Result<i32> {
    let mut s = Session::open(&connect).await?;
    let nodes = s.control.nodes().await.map_err(failed)?;
    let now = confide_service::jobs::millis(time::OffsetDateTime::now_utc());
    let within = u64::try_from(confide_net::fleet::CONNECTED_WITHIN.as_millis()).unwrap_or(0);
    match s.format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&nodes)?),
        Format::Text => {
            outln!(
                "{:<24} {:<12} {:<26} {}",
                "NODE",
                "STATUS",
                "LAST HEARD",
                "ID"
            );
            for n in &nodes {
                let status = if now.saturating_sub(n.last_ms) <= within {
                    "connected"
                } else {
                    "silent"
                };
                outln!(
                    "{:<24} {:<12} {:<26} {}",
                    n.name,
                    status,
                    when(n.last_ms),
                    n.id
                );
            }
        }
    }
    Ok(0)
}

/// Runs a job command against a running coordinator.
pub async fn run(cmd: ServiceJobCommand) -> Result<i32> {
    match run_inner(cmd).await {
        Ok(code) => Ok(code),
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(EXIT_REFUSED)
        }
        Err(e) => Err(e),
    }
}

async fn run_inner(cmd: ServiceJobCommand) -> Result<i32> {
    match cmd {
        ServiceJobCommand::Login(args) => {
            tokio::task::spawn_blocking(move || crate::board::login_command(&args)).await?
        }
        ServiceJobCommand::Submit {
            manifest,
            wait,
            connect,
        } => {
            let bytes = std::fs::read(&manifest)
                .with_context(|| format!("cannot read {}", manifest.display()))?;
            let mut s = Session::open(&connect).await?;
            let reply = s.control.submit(bytes).await.map_err(failed)?;
            let r = reply.record;
            if !wait {
                print_record(s.format, &r, Some(reply.created), Some(&reply.url))?;
                return Ok(0);
            }
            if s.format == Format::Text && !reply.url.is_empty() {
                outln!("dashboard {}", reply.url);
            }
            if s.format == Format::Text {
                outln!(
                    "{} job `{}` ({}); following it",
                    if reply.created {
                        "submitted"
                    } else {
                        "already submitted:"
                    },
                    r.job_id,
                    r.hash
                );
            }
            let end = events(&mut s, &r.hash, 0, true).await?;
            if s.format == Format::Text {
                outln!("job `{}`: {}", end.job_id, end.state.describe());
            }
            Ok(exit_code(&end))
        }
        ServiceJobCommand::List { state, connect } => {
            let mut s = Session::open(&connect).await?;
            let records = s.control.list(state.as_deref()).await.map_err(failed)?;
            match s.format {
                Format::Json => outln!("{}", serde_json::to_string_pretty(&records)?),
                Format::Text => {
                    outln!("{:<14} {:<24} {:<20} {}", "HASH", "JOB", "STATE", "UPDATED");
                    for r in &records {
                        outln!(
                            "{:<14} {:<24} {:<20} {}",
                            &r.hash[..12.min(r.hash.len())],
                            r.job_id,
                            r.state.name(),
                            when(r.updated_ms)
                        );
                    }
                }
            }
            Ok(0)
        }
        ServiceJobCommand::Download { job, out, connect } => {
            let mut s = Session::open(&connect).await?;
            let release = s.control.download(&job).await.map_err(failed)?;
            let (weights, card) = release.write(&out).map_err(|e| anyhow::anyhow!(e))?;
            let record = release.record;
            match s.format {
                Format::Json => outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "job": record.job_id,
                        "hash": record.hash,
                        "weights": weights,
                        "card": card,
                        "report": out.join("coordinator-report.json"),
                    }))?
                ),
                Format::Text => {
                    outln!(
                        "job `{}`: model written to {}",
                        record.job_id,
                        weights.display()
                    );
                    outln!("card   {}", card.display());
                    outln!("report {}", out.join("coordinator-report.json").display());
                }
            }
            Ok(0)
        }
        ServiceJobCommand::Status { job, connect } => {
            let mut s = Session::open(&connect).await?;
            let r = status(&mut s, &job).await?;
            print_record(s.format, &r, None, None)?;
            Ok(exit_code(&r))
        }
        ServiceJobCommand::Logs {
            job,
            follow,
            connect,
        } => {
            let mut s = Session::open(&connect).await?;
            let end = events(&mut s, &job, 0, follow).await?;
            Ok(if follow { exit_code(&end) } else { 0 })
        }
        ServiceJobCommand::Cancel {
            job,
            reason,
            connect,
        } => {
            let mut s = Session::open(&connect).await?;
            let r = s.control.cancel(&job, &reason).await.map_err(failed)?;
            print_record(s.format, &r, None, None)?;
            Ok(0)
        }
    }
}
