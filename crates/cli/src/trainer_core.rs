//! `confide trainer-core`: the confidential trainer's trusted core as its own process, for
//! hosts without the minimal `confide-trainer-core` binary next to them (see
//! `confide_trainer::entry`). It runs before the async runtime starts, so no other thread
//! escapes the confinement.

use std::path::PathBuf;

use anyhow::Result;

/// Arguments of `confide trainer-core`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainerCoreArgs {
    /// The core's directory, the only one it may read or write once confined. It holds
    /// `tee.key` (the dev TEE's PKCS#8 Ed25519 key) and `seal.key` (32 bytes of root sealing
    /// key material; a TEE's sealing key takes its place on real hardware).
    #[arg(long)]
    pub dir: PathBuf,
}

/// Runs the core until the host closes the channel.
pub fn run(args: &TrainerCoreArgs) -> Result<i32> {
    confide_trainer::entry::run(&args.dir).map_err(anyhow::Error::msg)?;
    Ok(0)
}

/// Arguments of `confide code-worker` (started by a node for a job with `[code]`).
#[derive(clap::Args, Debug, Clone)]
pub struct CodeWorkerArgs {
    /// The only directory the worker may write (the node makes it empty).
    #[arg(long)]
    pub scratch: PathBuf,
    /// The environment's interpreter.
    #[arg(long)]
    pub python: PathBuf,
    /// Paths the worker may read (never write): the environment, the system's libraries,
    /// the bundle.
    #[arg(long = "read")]
    pub read: Vec<PathBuf>,
}

/// Confines this process (resource limits, landlock, seccomp without sockets, `io_uring` or
/// `ptrace`) and replaces it with `python -I -B -m confide.worker`, which forbids starting
/// programs before it reads anything from the node. Returns only on failure, with the error.
pub fn code_worker(args: &CodeWorkerArgs) -> anyhow::Error {
    use confide_trainer::sandbox::{Confinement, Limits, confine};
    use std::os::unix::process::CommandExt as _;
    let enforced = match confine(&Confinement {
        directory: args.scratch.clone(),
        readable: args.read.clone(),
        limits: Limits::for_training(),
        allow_exec: true,
    }) {
        Ok(e) => e,
        Err(e) => return anyhow::anyhow!("user code cannot be confined: {e}"),
    };
    eprintln!(
        "user code confined: {}",
        serde_json::to_string(&enforced).unwrap_or_default()
    );
    let err = std::process::Command::new(&args.python)
        .args(["-I", "-B", "-m", "confide.worker"])
        .current_dir(&args.scratch)
        .env_clear()
        .env("HOME", &args.scratch)
        .env("TMPDIR", &args.scratch)
        .env("LANG", "C.UTF-8")
        .exec();
    anyhow::anyhow!("cannot start {}: {err}", args.python.display())
}
