//! `confide trainer-core`: the confidential trainer's trusted core as its own process. It
//! measures its own executable, reads its keys from its directory, confines itself (resource
//! limits, landlock to its directory, seccomp against sockets, io_uring and exec), reads its
//! configuration from the first frame on stdin, and then answers the host's requests on stdin/stdout
//! (`confide_trainer::protocol`). It runs before the async runtime starts, so no other thread
//! escapes the confinement.

use std::path::PathBuf;

use anyhow::{Context, Result};
use confide_attest::dev::{DevTee, measure_file};
use confide_crypto::SigningKey;
use confide_trainer::core::TrustedCore;
use confide_trainer::host::serve;
use confide_trainer::protocol::{CoreConfig, read_frame};
use confide_trainer::sandbox::{Confinement, Limits, confine};

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
    let exe = std::env::current_exe().context("cannot find the core's own executable")?;
    let measurement =
        measure_file(&exe).with_context(|| format!("cannot measure {}", exe.display()))?;
    let read = |name: &str| {
        let path = args.dir.join(name);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tee = SigningKey::from_pkcs8_der(&read("tee.key")?)?;
    let seal: [u8; 32] = read("seal.key")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("seal.key must hold exactly 32 bytes"))?;
    // Confined before it parses anything the host sends, the configuration included.
    let enforced = confine(&Confinement {
        directory: args.dir.clone(),
        readable: Vec::new(),
        limits: Limits::for_training(),
    })?;
    tracing::warn!(
        "trusted core confined: {}",
        serde_json::to_string(&enforced).unwrap_or_default()
    );
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let config: CoreConfig = read_frame(&mut input)?
        .context("the host closed the channel before sending the configuration")?;
    let mut core = TrustedCore::new(
        config,
        Box::new(DevTee::new(tee, measurement)),
        &seal,
        &measurement,
    )
    .map_err(anyhow::Error::msg)?;
    let handled = serve(&mut core, &mut input, &mut output)?;
    tracing::warn!("trusted core: channel closed after {handled} requests");
    Ok(0)
}
