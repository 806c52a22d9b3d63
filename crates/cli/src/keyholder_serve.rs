//! `confide keyholder serve` and `confide aggregator serve`: the long-running key holder and
//! aggregators, fresh key material per job (`confide_net::keyholders`,
//! `confide_net::aggregators`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use confide_core::Role;
use confide_net::keyholders::{KeyHolderJobs, KeySource};
use confide_net::pki::Credentials;

use crate::governance::Passphrase;

/// `confide keyholder serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// This party's name in the federation directory.
    #[arg(long, default_value = "keyholder")]
    name: String,
    /// Address that coordinators and nodes reach (gRPC, mutual TLS); port 0 picks a free
    /// port. The bound address is printed on stdout, after the admin address.
    #[arg(long, default_value = "127.0.0.1:7104")]
    listen: std::net::SocketAddr,
    /// Address of the admin port (plain HTTP: /metrics, /livez, /readyz); keep it on
    /// loopback. The bound address is printed first on stdout.
    #[arg(long, default_value = "127.0.0.1:7105")]
    admin: std::net::SocketAddr,
    /// The key holder's store (redb): each open job's manifest and its sealed key. Default:
    /// <fed>/<name>-service.redb.
    #[arg(long)]
    store: Option<PathBuf>,
    /// The 32-byte root the job keys are sealed under (created on first use, mode 0600).
    /// Default: <fed>/<name>-seal.key. Without it the store's keys cannot be unsealed.
    #[arg(long)]
    seal_key: Option<PathBuf>,
    /// Where every decryption is recorded before it happens (KEY-005, RES-001). Default:
    /// <fed>/<name>-state.jsonl.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Tests and demos only: use this Paillier key file for every `paillier` job instead of
    /// a fresh key per job (a fresh 2048-bit key takes 10-60 s here). Never for real data.
    #[arg(long)]
    insecure_fixed_key: Option<PathBuf>,
    #[command(flatten)]
    passphrase: Passphrase,
}

/// Serves a daemon's admin port with one gauge, `(name, help)`, read by `count` at each
/// scrape, until `stop` turns true.
fn admin_port(
    admin: tokio::net::TcpListener,
    ready: &Arc<std::sync::atomic::AtomicBool>,
    (name, help): (&'static str, &'static str),
    count: impl Fn() -> usize + Send + Sync + 'static,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), confide_net::transport::NetError>> {
    let render: confide_net::admin::Render = Arc::new(move || {
        Ok(format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}\n# EOF\n",
            count()
        ))
    });
    tokio::spawn(confide_net::admin::serve_admin(
        admin,
        ready.clone(),
        render,
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    ))
}

/// A daemon's store (`store`, default `<fed>/<name>-service.redb`) and the root its job keys
/// are sealed under (`seal_key`, default `<fed>/<name>-seal.key`).
fn store_and_seal(
    fed: &std::path::Path,
    name: &str,
    store: Option<PathBuf>,
    seal_key: Option<PathBuf>,
) -> Result<(PathBuf, Arc<dyn confide_store::Store>, [u8; 32])> {
    let path = store.unwrap_or_else(|| fed.join(format!("{name}-service.redb")));
    let opened: Arc<dyn confide_store::Store> = confide_store::RedbStore::open_shared(&path)
        .with_context(|| format!("{name} store {}", path.display()))?;
    let root = seal_root(&seal_key.unwrap_or_else(|| fed.join(format!("{name}-seal.key"))))?;
    Ok((path, opened, root))
}

/// Says what a daemon recovered from its store at `path`, or why it could not.
fn recovered(
    role: &str,
    path: &std::path::Path,
    outcome: Result<usize, confide_net::transport::NetError>,
) -> Result<()> {
    let n = outcome.with_context(|| format!("recovering {}", path.display()))?;
    eprintln!(
        "confide {role}: store {} recovered ({n} open jobs)",
        path.display()
    );
    Ok(())
}

/// Reads the seal root, or creates it (32 bytes from the OS generator, mode 0600).
fn seal_root(path: &std::path::Path) -> Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| anyhow::anyhow!("{}: a seal key is 32 bytes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut root = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut root);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&root)?;
            f.sync_all()?;
            Ok(root)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Runs the key holder daemon until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> Result<i32> {
    let signalled = crate::control::stop_signal()?;
    let creds = Credentials::load_with(&args.fed, &args.name, args.passphrase.get()?.as_deref())?;
    if creds.role != Role::KeyHolder {
        bail!("`{}` has role {}, not keyholder", creds.name, creds.role);
    }
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = crate::bind(args.admin, "keyholder admin").await?;
    let (path, store, root) = store_and_seal(&args.fed, &args.name, args.store, args.seal_key)?;
    let source = match args.insecure_fixed_key {
        Some(p) => {
            eprintln!(
                "confide keyholder: INSECURE: every paillier job uses the key in {}",
                p.display()
            );
            KeySource::File(p)
        }
        None => KeySource::Fresh,
    };
    let state = args
        .state
        .unwrap_or_else(|| args.fed.join(format!("{}-state.jsonl", args.name)));
    let jobs = KeyHolderJobs::new(creds.clone(), store, &root, state, source);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let jobs = jobs.clone();
        admin_port(
            admin,
            &ready,
            (
                "confide_keyholder_open_jobs",
                "Jobs whose key this key holder keeps.",
            ),
            move || jobs.open_jobs(),
            stop_rx,
        )
    };
    // Recover before serving: every open job's key must unseal.
    recovered("keyholder", &path, jobs.recover())?;
    let listener = crate::bind(args.listen, "keyholder").await?;
    let stop = until_stopped("keyholder", signalled, &ready);
    confide_net::roles::serve_keyholder_daemon(listener, &creds, jobs, stop).await?;
    stopped("keyholder", stop_tx, admin_task).await
}

/// The shutdown future of a daemon's port: ready from now on, until SIGTERM or SIGINT.
fn until_stopped(
    role: &'static str,
    signalled: impl std::future::Future<Output = ()>,
    ready: &Arc<std::sync::atomic::AtomicBool>,
) -> impl std::future::Future<Output = ()> {
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    let ready = ready.clone();
    async move {
        signalled.await;
        ready.store(false, std::sync::atomic::Ordering::SeqCst);
        eprintln!("confide {role}: stopping (calls in progress finish)");
    }
}

/// Stops a daemon's admin port once its port stopped serving.
async fn stopped(
    role: &str,
    stop: tokio::sync::watch::Sender<bool>,
    admin_task: tokio::task::JoinHandle<Result<(), confide_net::transport::NetError>>,
) -> Result<i32> {
    let _ = stop.send(true);
    admin_task.await.context("admin port task")??;
    eprintln!("confide {role}: stopped");
    Ok(0)
}

/// `confide aggregator serve`.
#[derive(clap::Args, Debug)]
pub struct AggregatorServeArgs {
    /// Federation directory with ca.crt and this aggregator's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// This aggregator's index, from 1; its certificate is `aggregator-<index>`.
    #[arg(long)]
    index: usize,
    /// Address that coordinators and nodes reach (gRPC, mutual TLS); port 0 picks a free
    /// port. The bound address is printed on stdout, after the admin address.
    #[arg(long, default_value = "127.0.0.1:7110")]
    listen: std::net::SocketAddr,
    /// Address of the admin port (plain HTTP: /metrics, /livez, /readyz); keep it on
    /// loopback. The bound address is printed first on stdout.
    #[arg(long, default_value = "127.0.0.1:7111")]
    admin: std::net::SocketAddr,
    /// Under `shares`: the root of every job's Prio3 verify key (64 hex digits), the same
    /// file at every aggregator of the federation and known to no data owner. Each job's key
    /// is derived from it and the manifest hash (HKDF-SHA256).
    #[arg(long)]
    verify_key: Option<PathBuf>,
    /// The aggregator's store (redb): each open job's manifest, its sealed key seed, and what
    /// the aggregator answered in each round. Default: <fed>/aggregator-<index>-service.redb.
    #[arg(long)]
    store: Option<PathBuf>,
    /// The 32-byte root the job key seeds are sealed under (created on first use, mode
    /// 0600). Default: <fed>/aggregator-<index>-seal.key. Without it the store's keys cannot
    /// be unsealed.
    #[arg(long)]
    seal_key: Option<PathBuf>,
    #[command(flatten)]
    passphrase: Passphrase,
}

/// Runs an aggregator daemon until SIGTERM or SIGINT.
pub async fn serve_aggregator(args: AggregatorServeArgs) -> Result<i32> {
    let signalled = crate::control::stop_signal()?;
    if args.index == 0 {
        bail!("--index starts at 1");
    }
    let name = confide_secagg::aggregators::aggregator_name(args.index - 1);
    let creds = Credentials::load_with(&args.fed, &name, args.passphrase.get()?.as_deref())?;
    if creds.role != Role::Aggregator {
        bail!("`{}` has role {}, not aggregator", creds.name, creds.role);
    }
    let root = args
        .verify_key
        .as_deref()
        .map(crate::load_verify_key)
        .transpose()?;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = crate::bind(args.admin, "aggregator admin").await?;
    let (path, store, seal) = store_and_seal(&args.fed, &name, args.store, args.seal_key)?;
    let jobs = confide_net::aggregators::AggregatorJobs::new(
        creds.clone(),
        args.index - 1,
        root,
        store,
        &seal,
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let admin_task = {
        let jobs = jobs.clone();
        admin_port(
            admin,
            &ready,
            (
                "confide_aggregator_open_jobs",
                "Jobs whose key material this aggregator keeps.",
            ),
            move || jobs.open_jobs(),
            stop_rx,
        )
    };
    // Recover before serving: every open job's key must unseal.
    recovered("aggregator", &path, jobs.recover())?;
    let listener = crate::bind(args.listen, "aggregator").await?;
    let stop = until_stopped("aggregator", signalled, &ready);
    confide_net::roles::serve_aggregator_daemon(listener, &creds, jobs, stop).await?;
    stopped("aggregator", stop_tx, admin_task).await
}
