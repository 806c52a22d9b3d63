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
