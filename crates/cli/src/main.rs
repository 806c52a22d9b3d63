//! `confide`: the command-line entry point for every role.

/// Writes a line to standard output. A failed write (a closed pipe, a full disk) returns a
/// [`StdoutError`] from the enclosing function instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::StdoutError)?;
    }};
}

mod bench;
mod bench_confidential;
mod bench_dashboard;
mod bench_service;
mod bench_trustee;
mod board;
mod confidential;
mod control;
mod dashboard;
mod dashboard_views;
mod evaluate;
mod governance;
mod keyholder_serve;
#[cfg(feature = "onnx")]
mod model_import;
mod node_serve;
mod partition;
mod sessions;
mod simulate;
mod sweep;
mod train;
mod trainer_core;
mod trainer_net;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use confide_core::{JobConfig, Role};
use confide_crypto::{SecretKey, SecretKeyJson};
use confide_net::pki::{self, Credentials};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "confide",
    version,
    about = "Federated training with Paillier-protected aggregation over mutual TLS",
    long_about = "Confide trains one model across data owners who never share their data. \
Roles run as separate processes (coordinator, keyholder, node) or all at once with `simulate`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole federation on this machine from a job file.
    Simulate(simulate::SimulateArgs),
    /// Central training for one data owner (DP-SGD when the job has a [privacy] section).
    Train(train::TrainArgs),
    /// Score an exported model on data files read as its job describes them, for example each
    /// owner's own test set (prints JSON).
    Evaluate(evaluate::EvaluateArgs),
    /// Manage a federation's certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Paillier key management.
    #[command(subcommand)]
    Paillier(PaillierCommand),
    /// Run the coordinator: rounds and FedAvg (never holds a decryption key). `coordinator
    /// serve` runs the long-lived coordinator with its control API; `coordinator --config …`
    /// runs one job and exits.
    Coordinator(CoordinatorCmd),
    /// Run the Paillier key holder: decrypts only sums of at least min_owners signed updates.
    Keyholder(KeyholderCmd),
    /// Run one `shares` or `threshold` aggregator: opens only its own shares, checks proofs
    /// jointly with the others, returns only its partial sum.
    Aggregator(AggregatorCmd),
    /// Run a data owner's node: trains locally and sends protected updates.
    Node(NodeCmd),
    /// The nodes known to a running coordinator.
    #[command(subcommand)]
    Nodes(NodesCommand),
    /// Run the confidential trainer's trusted core (started by its host, `confide simulate`
    /// for a job with a [confidential] section): confined to --dir, it speaks the typed
    /// channel on stdin and stdout.
    TrainerCore(trainer_core::TrainerCoreArgs),
    /// Run a model owner's training code confined (started by a node for a job with [code]).
    #[command(hide = true)]
    CodeWorker(trainer_core::CodeWorkerArgs),
    /// Run the confidential trainer's untrusted host for a job with a [confidential] section:
    /// starts the trusted core, relays owners' encrypted uploads and recipients' fetches to
    /// it over mutual TLS, and keeps ciphertext and the audit log only.
    Trainer(trainer_net::TrainerArgs),
    /// As a data owner: check the trainer's attestation evidence, your dataset policy and
    /// ledger, then upload your CSV encrypted to the attested core (prints JSON).
    Upload(trainer_net::UploadArgs),
    /// As a model recipient: fetch the model encrypted to a fresh key, check the core's
    /// evidence of the release, and export it (prints JSON).
    Fetch(trainer_net::FetchArgs),
    /// As an owner or a recipient of a confidential job: the trainer's state as you may see
    /// it (an owner its own upload, a recipient the report and its releases; prints JSON).
    TrainerStatus(trainer_net::StatusArgs),
    /// Benchmarks that print JSON.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Differential-privacy accounting (prints JSON) and the accuracy–ε sweep.
    #[command(subcommand)]
    Dp(DpCommand),
    /// Datasets: split one among simulated owners (prints JSON; --plot draws an SVG), or convert
    /// IDX images to the safetensors format jobs read.
    #[command(subcommand)]
    Data(DataCommand),
    /// Models from other tools: `model import` turns an ONNX graph into a job's layer list and
    /// its initial weights (prints JSON).
    #[cfg(feature = "onnx")]
    #[command(subcommand)]
    Model(ModelCommand),
    /// A data owner's privacy budget ledger (a redb file; prints JSON).
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Create a party's Ed25519 identity key and the P-256 TLS key bound to it (mode 0600,
    /// optionally passphrase-encrypted); prints its party id (JSON).
    Keygen(governance::KeygenArgs),
    /// Signed job manifests: sign (model owner), verify, approve (data owner). Prints JSON.
    #[command(subcommand)]
    Job(governance::JobCommand),
    /// Dataset policies (prints JSON).
    #[command(subcommand)]
    Policy(governance::PolicyCommand),
    /// The tamper-evident audit log: verify, prove, check-proof, export (prints JSON).
    #[command(subcommand)]
    Audit(governance::AuditCommand),
    /// Each owner's signed contribution record of a job (rounds its update was summed in,
    /// refused contributions, rows, ε and δ), from a verified audit log.
    Contributions(governance::ContributionsArgs),
}

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// Set (or raise) a dataset's lifetime (ε, δ) budget.
    SetBudget {
        /// Ledger file (created if missing).
        #[arg(long)]
        ledger: PathBuf,
        /// Dataset name.
        #[arg(long)]
        dataset: String,
        /// Lifetime ε.
        #[arg(long)]
        epsilon: f64,
        /// Lifetime δ.
        #[arg(long)]
        delta: f64,
    },
    /// A dataset's budget, what it has spent and every job's entry.
    Show {
        /// Ledger file.
        #[arg(long)]
        ledger: PathBuf,
        /// Dataset name.
        #[arg(long)]
        dataset: String,
    },
    /// Refund a job that was debited but never started (an operator's decision).
    Release {
        /// Ledger file.
        #[arg(long)]
        ledger: PathBuf,
        /// Dataset name.
        #[arg(long)]
        dataset: String,
        /// Job id.
        #[arg(long)]
        job: String,
    },
}

/// Which accountant to use.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum Accountant {
    /// Rényi DP of the Poisson-subsampled Gaussian (Mironov, Talwar, Zhang 2019).
    Rdp,
    /// Privacy-loss distributions (tighter ε).
    Pld,
}

impl From<Accountant> for confide_dp::plan::Accountant {
    fn from(a: Accountant) -> Self {
        match a {
            Accountant::Rdp => confide_dp::plan::Accountant::Rdp,
            Accountant::Pld => confide_dp::plan::Accountant::Pld,
        }
    }
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Split a dataset among owners with a seeded partitioner: natural (by a group column),
    /// iid, dirichlet:ALPHA over labels, shards:PER_OWNER (label-sorted shards), quantity:BETA.
    Partition(partition::PartitionArgs),
    /// IDX images and labels (and a group per image, e.g. MNIST's writers) to one safetensors
    /// file, the format jobs read with `[data] format = "safetensors"` (prints JSON).
    Convert(partition::ConvertArgs),
}

#[cfg(feature = "onnx")]
#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// An ONNX graph (PyTorch's export) into model.toml, the [model] section of a job as a
    /// layer list, and init.safetensors, its weights in Confide's layout; unsupported
    /// operators are refused by name (prints JSON).
    Import(model_import::ImportArgs),
}

#[derive(Subcommand, Debug)]
enum DpCommand {
    /// ε of `steps` steps of the Poisson-subsampled Gaussian mechanism.
    Epsilon {
        /// Sampling rate per step (batch size / dataset size).
        #[arg(long)]
        q: f64,
        /// Noise multiplier (noise standard deviation / clipping norm).
        #[arg(long)]
        sigma: f64,
        /// Number of steps.
        #[arg(long)]
        steps: u64,
        /// Target δ.
        #[arg(long)]
        delta: f64,
        /// Accountant.
        #[arg(long, value_enum, default_value_t = Accountant::Rdp)]
        accountant: Accountant,
    },
    /// The smallest noise multiplier whose ε is at most the target.
    Sigma {
        /// Target ε.
        #[arg(long)]
        target_epsilon: f64,
        /// Sampling rate per step.
        #[arg(long)]
        q: f64,
        /// Number of steps.
        #[arg(long)]
        steps: u64,
        /// Target δ.
        #[arg(long)]
        delta: f64,
        /// Accountant.
        #[arg(long, value_enum, default_value_t = Accountant::Rdp)]
        accountant: Accountant,
    },
    /// Train the same job at several ε and plot test accuracy against ε (SVG).
    Sweep(sweep::SweepArgs),
}

#[derive(Subcommand, Debug)]
enum CaCommand {
    /// Create a federation CA (ca.crt, ca.key) in a directory.
    Init {
        /// Federation directory.
        #[arg(long)]
        dir: PathBuf,
        /// Federation name, written into the CA certificate.
        #[arg(long, default_value = "confide")]
        federation: String,
    },
    /// Certify a party's identity key (<name>.crt). With --public-key, the key made by
    /// `confide keygen` (copy the key file to <dir>/<name>.key on the party's machine);
    /// without it, a fresh key is generated as <dir>/<name>.key.
    Issue {
        /// Federation directory (holding ca.crt and ca.key).
        #[arg(long)]
        dir: PathBuf,
        /// Party name (a-z, 0-9, '-').
        #[arg(long)]
        name: String,
        /// Role: coordinator, keyholder, node or model-owner.
        #[arg(long)]
        role: Role,
        /// The party's public identity file (`<key>.pub` from `confide keygen`).
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Revoke a party: add it to the CA-signed revocation list (revoked.json), which every
    /// role checks on every call. Distribute the updated file to every party.
    Revoke {
        /// Federation directory (holding ca.crt, ca.key and <name>.crt).
        #[arg(long)]
        dir: PathBuf,
        /// The party to revoke.
        #[arg(long)]
        name: String,
        /// Why (recorded in the list).
        #[arg(long, default_value = "revoked by the federation CA")]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
enum PaillierCommand {
    /// Generate a Paillier secret key file (mode 0600) for the key holder.
    Keygen {
        /// Modulus size: 2048 or 3072.
        #[arg(long, default_value_t = 2048)]
        bits: u32,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct RoleCommon {
    /// Job file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct CoordinatorCmd {
    #[command(subcommand)]
    sub: Option<CoordinatorSub>,
    #[command(flatten)]
    one_job: Option<CoordinatorArgs>,
}

#[derive(Subcommand, Debug)]
enum CoordinatorSub {
    /// Run the long-lived coordinator until SIGTERM: it keeps jobs in its store and serves
    /// the control API (`confide job submit|list|status|logs|cancel`). Dispatching jobs to
    /// node daemons is not built yet (see docs/service.md).
    Serve(control::ServeArgs),
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct NodeCmd {
    #[command(subcommand)]
    sub: Option<NodeSub>,
    #[command(flatten)]
    one_job: Option<NodeArgs>,
}

#[derive(Subcommand, Debug)]
enum NodesCommand {
    /// The nodes a running coordinator has heard from on its fleet port, and when (its
    /// operator only).
    List {
        #[command(flatten)]
        connect: control::Connect,
    },
}

#[derive(Subcommand, Debug)]
enum NodeSub {
    /// Run the long-lived node beside this owner's data until SIGTERM: it connects to a
    /// coordinator's fleet port, files each job offered to it in its inbox (approving or
    /// rejecting it when the owner's policy decides), and runs the approved jobs.
    Serve(node_serve::ServeArgs),
    /// The jobs offered to a running node daemon: list, show, approve, reject, revoke.
    #[command(subcommand)]
    Inbox(node_serve::InboxCommand),
    /// Open the node daemon's dashboard: signs a login challenge with the owner's approval
    /// key and prints a one-time address to open in a browser.
    Login(dashboard::LoginArgs),
}

#[derive(clap::Args, Debug)]
// No flattened groups in here: clap fills an `Option<Args>` only from its own arguments.
struct CoordinatorArgs {
    /// Job file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// This party's name in the federation directory.
    #[arg(long, default_value = "coordinator")]
    name: String,
    /// The key holder's address (host:port), for the paillier and lattice schemes.
    #[arg(long)]
    keyholder: Option<String>,
    /// An aggregator's address (host:port), for the shares and threshold schemes: repeat it
    /// once per aggregator, in index order (aggregator-1 first).
    #[arg(long = "aggregator")]
    aggregators: Vec<String>,
    /// Write the released model and the report here when the job ends.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds to keep serving after the job so the model owner can fetch the model (the
    /// coordinator stops earlier once the model owner confirms receipt).
    #[arg(long, default_value_t = 60.0)]
    linger_secs: f64,
    /// The job's manifest, signed by the model owner (`confide job sign`); it must describe
    /// --config exactly.
    #[arg(long)]
    manifest: PathBuf,
    /// The audit log's store (redb; created if missing). Default: <fed>/<name>-audit.redb.
    #[arg(long)]
    audit_store: Option<PathBuf>,
    /// Write the exported audit log file here when the job ends.
    #[arg(long)]
    audit_export: Option<PathBuf>,
    /// Read the key's passphrase from this environment variable.
    #[arg(long, conflicts_with = "passphrase_file")]
    passphrase_env: Option<String>,
    /// Read the key's passphrase from the first line of this file.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct KeyholderCmd {
    #[command(subcommand)]
    sub: Option<KeyholderSub>,
    #[command(flatten)]
    one_job: Option<KeyholderArgs>,
}

#[derive(Subcommand, Debug)]
enum KeyholderSub {
    /// Run the long-lived key holder until SIGTERM: it makes a fresh key for each job a
    /// coordinator opens, keeps it sealed while the job lives, and erases it when the job ends.
    Serve(keyholder_serve::ServeArgs),
}

#[derive(clap::Args, Debug)]
// No flattened groups in here: clap fills an `Option<Args>` only from its own arguments.
struct KeyholderArgs {
    /// Job file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// This party's name in the federation directory.
    #[arg(long, default_value = "keyholder")]
    name: String,
    /// Paillier secret key file (from `confide paillier keygen`); by default a fresh key is
    /// generated. Under `lattice` a fresh BFV key is always generated and kept in memory.
    #[arg(long)]
    key: Option<PathBuf>,
    /// File where every decryption is recorded (synced) before it happens, so a restarted key
    /// holder never decrypts a round or a global model twice. Default: keyholder-state.jsonl
    /// in the federation directory.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Run as a trusted core under the dev TEE (insecure; see the README): its key is
    /// DIR/tee.key (created on first use), and DIR/attestation-policy.toml is the policy that
    /// nodes pass as --keyholder-attestation-policy. The key holder then answers a node's
    /// nonce with evidence binding the job and its public key.
    #[arg(long)]
    tee_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct AggregatorCmd {
    #[command(subcommand)]
    sub: Option<AggregatorSub>,
    #[command(flatten)]
    one_job: Option<AggregatorArgs>,
}

#[derive(Subcommand, Debug)]
enum AggregatorSub {
    /// Run a long-lived aggregator until SIGTERM: it makes fresh key material for each job a
    /// coordinator opens (under `shares`, the job's verify key from the shared root), and
    /// drops it when the job ends.
    Serve(keyholder_serve::AggregatorServeArgs),
}

#[derive(clap::Args, Debug)]
// No flattened groups in here: clap fills an `Option<Args>` only from its own arguments.
struct AggregatorArgs {
    /// Job file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// Address to listen on; port 0 picks a free port. The bound address is printed on stdout.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// This aggregator's index, 1 to the job's `[aggregators] count`; its certificate is
    /// `aggregator-<index>` in the federation directory.
    #[arg(long)]
    index: usize,
    /// Under `shares`: the Prio3 verify key that every aggregator of the job shares and no
    /// data owner may know (a file with 64 hex digits; `confide simulate` writes one per run).
    #[arg(long)]
    verify_key: Option<PathBuf>,
    /// Chaos testing: exit abruptly when asked to prepare this round.
    #[arg(long, hide = true)]
    crash_at_round: Option<u32>,
    /// Chaos testing: return a wrong partial sum.
    #[arg(long, hide = true)]
    lie: bool,
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// Federation directory with ca.crt and this owner's certificate and key.
    #[arg(long)]
    fed: PathBuf,
    /// This owner's name (its certificate's name).
    #[arg(long)]
    name: String,
    /// The coordinator's address (host:port).
    #[arg(long)]
    coordinator: String,
    /// This owner's CSV file.
    #[arg(long)]
    data: PathBuf,
    /// The directory of the code bundles this owner has reviewed or accepted, each under its
    /// `[code] bundle` name (as `confide node serve --code-dir`).
    #[arg(long)]
    code_dir: Option<PathBuf>,
    /// An environment for user code, `NAME=PYTHON` (as `confide node serve --code-env`).
    #[arg(long = "code-env", value_name = "NAME=PYTHON")]
    code_env: Vec<String>,
    /// Chaos testing: exit abruptly after submitting this round, without withdrawing.
    #[arg(long, hide = true)]
    crash_after_round: Option<u32>,
    /// Chaos testing of multi-stage schemes: exit abruptly after submitting ROUND.STAGE.
    #[arg(long, hide = true)]
    crash_after_stage: Option<String>,
    /// Privacy budget ledger (a redb file, see `confide ledger`): the job's ε is debited for
    /// `--dataset` before the first round, and a job over budget is refused.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// This dataset's name in the ledger (default: the policy's dataset name).
    #[arg(long)]
    dataset: Option<String>,
    /// The owner's policy for this dataset (TOML, see the README). Without one, the node runs
    /// a job only if this owner co-signed its manifest (`confide job approve`).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The witness's memory of the coordinator's tree heads (redb). Default:
    /// <fed>/<name>-witness.redb.
    #[arg(long)]
    witness_store: Option<PathBuf>,
    /// Under `paillier` and `lattice`: the attestation policy the key holder's evidence must
    /// satisfy before this owner encrypts anything to its key (e.g. the key holder's
    /// <tee-dir>/attestation-policy.toml under the dev TEE).
    #[arg(long)]
    keyholder_attestation_policy: Option<PathBuf>,
    // The passphrase options, inline (no flattened groups: see `CoordinatorArgs`).
    /// Read the key's passphrase from this environment variable.
    #[arg(long, conflicts_with = "passphrase_file")]
    passphrase_env: Option<String>,
    /// Read the key's passphrase from the first line of this file.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

/// Standard output could not be written.
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

/// Whether `e` is a write to a closed pipe (`confide … | head`): the reader has what it
/// wanted, so the command ends quietly.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .is_some_and(|s| s.0.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CONFIDE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The trusted core confines itself: it must run before any runtime thread exists.
    if let Command::TrainerCore(args) = &cli.command {
        let code = trainer_core::run(args).unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            1
        });
        std::process::exit(code);
    }
    if let Command::CodeWorker(args) = &cli.command {
        let err = trainer_core::code_worker(args);
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) if is_broken_pipe(&e) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Simulate(args) => simulate::run(args).await,
        Command::TrainerCore(_) | Command::CodeWorker(_) => {
            anyhow::bail!("`trainer-core` and `code-worker` run before the async runtime")
        }
        Command::Ca(CaCommand::Init { dir, federation }) => {
            pki::init_ca(&dir, &federation, time::OffsetDateTime::now_utc())?;
            outln!("created {}/ca.crt and ca.key", dir.display());
            Ok(0)
        }
        Command::Ca(CaCommand::Issue {
            dir,
            name,
            role,
            public_key,
        }) => {
            let now = time::OffsetDateTime::now_utc();
            match public_key {
                Some(p) => {
                    let public = confide_governance::identity::PublicIdentity::load(&p)?;
                    pki::issue_for_key(&dir, &name, role, &public, now)?;
                    outln!(
                        "issued {}/{name}.crt ({role}) for party {}",
                        dir.display(),
                        public.id
                    );
                }
                None => {
                    pki::issue(&dir, &name, role, now)?;
                    outln!(
                        "issued {}/{name}.crt and {name}.key ({role})",
                        dir.display()
                    );
                }
            }
            Ok(0)
        }
        Command::Ca(CaCommand::Revoke { dir, name, reason }) => {
            let id = pki::revoke(&dir, &name, &reason, time::OffsetDateTime::now_utc())?;
            outln!(
                "revoked `{name}` ({id}) in {}",
                dir.join(pki::REVOCATIONS).display()
            );
            Ok(0)
        }
        Command::Keygen(args) => print_json(governance::keygen(&args)?),
        Command::Job(governance::JobCommand::Service(cmd)) => control::run(cmd).await,
        Command::Job(cmd) => print_json(governance::job(cmd)?),
        Command::Policy(cmd) => print_json(governance::policy(cmd)?),
        Command::Audit(cmd) => print_json(governance::audit(cmd).await?),
        Command::Contributions(a) => governance::contributions(a).await,
        Command::Paillier(PaillierCommand::Keygen { bits, out }) => {
            let start = std::time::Instant::now();
            let sk = SecretKey::generate(bits, &mut rand::rngs::OsRng)?;
            write_secret_file(
                &out,
                &serde_json::to_string_pretty(&sk.to_json("confide key holder"))?,
            )?;
            outln!(
                "{bits}-bit Paillier key written to {} in {:.1} s (fingerprint {})",
                out.display(),
                start.elapsed().as_secs_f64(),
                sk.public_key().fingerprint()
            );
            Ok(0)
        }
        Command::Coordinator(CoordinatorCmd {
            sub: Some(CoordinatorSub::Serve(args)),
            ..
        }) => control::serve(args).await,
        Command::Coordinator(CoordinatorCmd {
            one_job: Some(args),
            ..
        }) => coordinator(args).await,
        Command::Coordinator(_) => {
            bail!(
                "`confide coordinator` needs `serve`, or --config, --fed and --manifest for one job"
            )
        }
        Command::Keyholder(KeyholderCmd {
            sub: Some(KeyholderSub::Serve(args)),
            ..
        }) => keyholder_serve::serve(args).await,
        Command::Keyholder(KeyholderCmd {
            one_job: Some(args),
            ..
        }) => keyholder(args).await,
        Command::Keyholder(_) => {
            bail!("`confide keyholder` needs `serve`, or --config and --fed for one job")
        }
        Command::Aggregator(AggregatorCmd {
            sub: Some(AggregatorSub::Serve(args)),
            ..
        }) => keyholder_serve::serve_aggregator(args).await,
        Command::Aggregator(AggregatorCmd {
            one_job: Some(args),
            ..
        }) => aggregator(args).await,
        Command::Aggregator(_) => {
            bail!("`confide aggregator` needs `serve`, or --config, --fed and --index for one job")
        }
        Command::Node(NodeCmd {
            sub: Some(NodeSub::Serve(args)),
            ..
        }) => node_serve::serve(args).await,
        Command::Node(NodeCmd {
            sub: Some(NodeSub::Inbox(cmd)),
            ..
        }) => tokio::task::spawn_blocking(move || node_serve::inbox(cmd)).await?,
        Command::Node(NodeCmd {
            sub: Some(NodeSub::Login(args)),
            ..
        }) => tokio::task::spawn_blocking(move || dashboard::login_command(&args)).await?,
        Command::Node(NodeCmd {
            one_job: Some(args),
            ..
        }) => node(args).await,
        Command::Nodes(NodesCommand::List { connect }) => control::nodes(connect).await,
        Command::Node(_) => {
            bail!(
                "`confide node` needs `serve`, `inbox`, `login`, or --fed, --name, --coordinator and --data for one job"
            )
        }
        Command::Trainer(args) => trainer_net::trainer(args).await,
        Command::Upload(args) => trainer_net::upload(args).await,
        Command::Fetch(args) => trainer_net::fetch_model(args).await,
        Command::TrainerStatus(args) => trainer_net::status(args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::Train(args) => tokio::task::spawn_blocking(move || train::run(args)).await?,
        Command::Dp(DpCommand::Sweep(args)) => {
            tokio::task::spawn_blocking(move || sweep::run(&args)).await?
        }
        Command::Ledger(cmd) => {
            outln!("{}", serde_json::to_string_pretty(&ledger_json(cmd)?)?);
            Ok(0)
        }
        Command::Data(DataCommand::Partition(args)) => print_json(partition::run(&args)?),
        Command::Data(DataCommand::Convert(args)) => print_json(partition::convert(&args)?),
        #[cfg(feature = "onnx")]
        Command::Model(ModelCommand::Import(args)) => print_json(model_import::import(&args)?),
        Command::Evaluate(args) => print_json(evaluate::run(&args)?),
        Command::Dp(cmd) => {
            let out = dp_json(cmd)?;
            outln!("{}", serde_json::to_string_pretty(&out)?);
            Ok(0)
        }
    }
}

fn ledger_json(cmd: LedgerCommand) -> Result<serde_json::Value> {
    use confide_dp::ledger::{Budget, BudgetLedger};
    let show = |ledger: &BudgetLedger, dataset: &str| -> Result<serde_json::Value> {
        Ok(serde_json::json!({
            "dataset": dataset,
            "budget": ledger.budget(dataset)?,
            "spent": ledger.spent(dataset)?,
            "entries": ledger.history(dataset)?,
        }))
    };
    match cmd {
        LedgerCommand::SetBudget {
            ledger,
            dataset,
            epsilon,
            delta,
        } => {
            let l = BudgetLedger::open(&ledger)?;
            l.set_budget(&dataset, Budget::new(epsilon, delta)?)?;
            show(&l, &dataset)
        }
        LedgerCommand::Show { ledger, dataset } => {
            if !ledger.exists() {
                bail!("no ledger at {}", ledger.display());
            }
            show(&BudgetLedger::open(&ledger)?, &dataset)
        }
        LedgerCommand::Release {
            ledger,
            dataset,
            job,
        } => {
            let l = BudgetLedger::open(&ledger)?;
            l.release(&dataset, &job)?;
            show(&l, &dataset)
        }
    }
}

fn dp_json(cmd: DpCommand) -> Result<serde_json::Value> {
    Ok(match cmd {
        DpCommand::Epsilon {
            q,
            sigma,
            steps,
            delta,
            accountant,
        } => {
            let acc = confide_dp::plan::Accountant::from(accountant);
            let epsilon = acc.epsilon(q, sigma, steps, delta)?;
            serde_json::json!({
                "accountant": acc.as_str(), "epsilon": epsilon,
                "q": q, "sigma": sigma, "steps": steps, "delta": delta,
            })
        }
        DpCommand::Sigma {
            target_epsilon,
            q,
            steps,
            delta,
            accountant,
        } => {
            let acc = confide_dp::plan::Accountant::from(accountant);
            let sigma = acc.noise_multiplier_for(target_epsilon, q, steps, delta)?;
            let epsilon = acc.epsilon(q, sigma, steps, delta)?;
            serde_json::json!({
                "accountant": acc.as_str(), "noise_multiplier": sigma, "epsilon": epsilon,
                "target_epsilon": target_epsilon, "q": q, "steps": steps, "delta": delta,
            })
        }
        DpCommand::Sweep(_) => bail!("`dp sweep` is not a JSON query"),
    })
}

fn print_json(value: serde_json::Value) -> Result<i32> {
    outln!("{}", serde_json::to_string_pretty(&value)?);
    Ok(0)
}

pub fn write_secret_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(contents.as_ref())?;
    Ok(())
}

/// The key holder's secret key for a job: under `paillier` the key in `key_file` or a fresh one,
/// under `lattice` a fresh BFV key (it never leaves the key holder's memory; `key_file` is not
/// used).
pub async fn holder_key(
    spec: &confide_core::JobSpec,
    key_file: Option<&Path>,
    announce: bool,
) -> Result<confide_secagg::HolderKey> {
    match spec.job.scheme {
        confide_core::SchemeKind::Lattice => {
            let params = confide_secagg::lattice::lattice_params(
                &confide_net::coordinator::job_scheme_params(spec)?,
            )?;
            if announce {
                eprintln!("keyholder: generating a BFV key ({})", params.describe());
            }
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
            Ok(confide_crypto::LatticeSecretKey::generate(params, seed)?.into())
        }
        _ => match key_file {
            Some(path) => Ok(load_secret_key(path)?.into()),
            None => {
                let bits = spec.modulus_bits;
                if announce {
                    eprintln!("keyholder: generating a {bits}-bit Paillier key");
                }
                let sk = tokio::task::spawn_blocking(move || {
                    SecretKey::generate(bits, &mut rand::rngs::OsRng)
                })
                .await??;
                Ok(sk.into())
            }
        },
    }
}

/// Reads a Paillier secret key file.
pub fn load_secret_key(path: &Path) -> Result<SecretKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: SecretKeyJson = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a key file", path.display()))?;
    Ok(SecretKey::from_json(&json, false)?)
}

async fn bind(addr: SocketAddr, role: &str) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("{role}: cannot listen on {addr}"))?;
    // The first line on stdout is the bound address: `confide simulate` reads it.
    outln!("confide {role} listening on {}", listener.local_addr()?);
    Ok(listener)
}

async fn coordinator(args: CoordinatorArgs) -> Result<i32> {
    let config = JobConfig::load(&args.config)?;
    let spec = config.spec();
    let creds = Credentials::load_with(
        &args.fed,
        &args.name,
        governance::Passphrase {
            passphrase_env: args.passphrase_env.clone(),
            passphrase_file: args.passphrase_file.clone(),
        }
        .get()?
        .as_deref(),
    )?;
    let manifest = confide_governance::manifest::SignedManifest::load(&args.manifest)?;
    if creds.role != Role::Coordinator {
        bail!("`{}` has role {}, not coordinator", creds.name, creds.role);
    }
    let eval = match &config.evaluation {
        Some(e) => Some(confide_net::node::load_job_data(&spec, &e.test)?),
        None => None,
    };
    let listener = bind(args.listen, "coordinator").await?;
    let (report, params) = confide_net::roles::run_coordinator(
        listener,
        confide_net::roles::CoordinatorRole {
            creds,
            spec: spec.clone(),
            eval,
            keyholder: args.keyholder,
            aggregators: args.aggregators,
            linger: Duration::from_secs_f64(args.linger_secs.max(0.0)),
            manifest,
            audit_store: Some(
                args.audit_store
                    .unwrap_or_else(|| args.fed.join(format!("{}-audit.redb", args.name))),
            ),
            audit_export: args.audit_export,
        },
    )
    .await?;
    if let Some(out) = &args.out {
        simulate::export_release(out, &config.job.id, &spec, &params, &report)?;
    }
    if report.status == "finished" {
        Ok(0)
    } else {
        eprintln!("job failed: {}", report.message);
        Ok(2)
    }
}

async fn keyholder(args: KeyholderArgs) -> Result<i32> {
    let config = JobConfig::load(&args.config)?;
    let spec = config.spec();
    let creds = Credentials::load(&args.fed, &args.name)?;
    if creds.role != Role::KeyHolder {
        bail!("`{}` has role {}, not keyholder", creds.name, creds.role);
    }
    if spec.job.scheme == confide_core::SchemeKind::Lattice && args.key.is_some() {
        bail!(
            "--key holds a Paillier key; under `lattice` the key holder generates its BFV key in memory"
        );
    }
    let key_file = args.key.or(config.paillier.key_file.clone());
    let sk = holder_key(&spec, key_file.as_deref(), true).await?;
    let attester = match &args.tee_dir {
        Some(_) if key_file.is_some() => bail!(
            "--tee-dir with a key file: whoever holds the file could decrypt any update, whatever the attested code does; let the attested key holder generate its key"
        ),
        Some(dir) => {
            let (key, measurement, _) =
                confidential::dev_tee_files(dir, &std::env::current_exe()?)?;
            eprintln!(
                "keyholder: attested by the dev TEE (insecure); nodes check it with {}",
                dir.join("attestation-policy.toml").display()
            );
            Some(confide_attest::dev::DevTee::new(key, measurement))
        }
        None => None,
    };
    let listener = bind(args.listen, "keyholder").await?;
    let state = args
        .state
        .unwrap_or_else(|| args.fed.join("keyholder-state.jsonl"));
    confide_net::roles::serve_keyholder(
        listener,
        &creds,
        &spec,
        sk,
        (Some(state), attester),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await?;
    Ok(0)
}

/// Reads a Prio3 verify key file (64 hex digits).
pub fn load_verify_key(path: &Path) -> Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| anyhow::anyhow!("{}: not 64 hex digits", path.display()))?;
    Ok(bytes)
}

async fn aggregator(args: AggregatorArgs) -> Result<i32> {
    let config = JobConfig::load(&args.config)?;
    let spec = config.spec();
    if !spec.job.scheme.uses_aggregators() {
        bail!(
            "the job's scheme `{}` has no aggregators (`shares` and `threshold` do)",
            spec.job.scheme.as_str()
        );
    }
    let (n, _) = spec.aggregators_n_t();
    if args.index == 0 || args.index > n {
        bail!("--index must be between 1 and the job's {n} aggregators");
    }
    let name = confide_secagg::aggregators::aggregator_name(args.index - 1);
    let creds = Credentials::load(&args.fed, &name)?;
    let verify_key = match (&args.verify_key, spec.job.scheme) {
        (Some(p), confide_core::SchemeKind::Shares) => Some(load_verify_key(p)?),
        (None, confide_core::SchemeKind::Shares) => {
            bail!("`shares` aggregators need --verify-key (the key all aggregators share)")
        }
        (Some(_), _) => bail!("--verify-key applies to `shares` only"),
        (None, _) => None,
    };
    let listener = bind(args.listen, "aggregator").await?;
    confide_net::roles::serve_aggregator(
        listener,
        &creds,
        &spec,
        args.index - 1,
        verify_key,
        confide_net::aggregator::Chaos {
            crash_at_round: args.crash_at_round,
            lie: args.lie,
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await?;
    Ok(0)
}

async fn node(args: NodeArgs) -> Result<i32> {
    let passphrase = governance::Passphrase {
        passphrase_env: args.passphrase_env.clone(),
        passphrase_file: args.passphrase_file.clone(),
    };
    let creds = Credentials::load_with(&args.fed, &args.name, passphrase.get()?.as_deref())?;
    if creds.role != Role::Node {
        bail!("`{}` has role {}, not node", creds.name, creds.role);
    }
    let dataset = node_serve::ledger_dataset(
        args.dataset.as_ref(),
        args.policy.as_deref(),
        args.ledger.is_some(),
    )?;
    let witness_store = args
        .witness_store
        .clone()
        .unwrap_or_else(|| args.fed.join(format!("{}-witness.redb", args.name)));
    let summary = confide_net::node::run_node(confide_net::node::NodeOptions {
        job: None,
        approval: None,
        creds,
        coordinator: args.coordinator,
        data: args.data,
        crash_after_round: args.crash_after_round,
        crash_after_stage: match &args.crash_after_stage {
            Some(rs) => {
                let (r, st) = rs
                    .split_once('.')
                    .ok_or_else(|| anyhow::anyhow!("--crash-after-stage needs ROUND.STAGE"))?;
                Some((r.parse()?, st.parse()?))
            }
            None => None,
        },
        ledger: args.ledger.zip(dataset),
        keyholder_attestation: args.keyholder_attestation_policy,
        approver: None,
        code: node_serve::CodeArgs {
            code_dir: args.code_dir.clone(),
            code_env: args.code_env.clone(),
        }
        .host(&args.fed, &args.name)?,
        policy: args.policy,
        witness_store: Some(witness_store),
    })
    .await?;
    if summary.finished {
        eprintln!(
            "node `{}`: job finished after {} rounds",
            args.name, summary.rounds
        );
        Ok(0)
    } else {
        eprintln!("node `{}`: job failed: {}", args.name, summary.message);
        Ok(2)
    }
}
