//! The trusted core's process entry point, shared by the minimal `confide-trainer-core` binary
//! (this crate only: no network or CLI code in the measured binary) and by `confide
//! trainer-core`. It measures its own executable, reads its keys from its directory, confines
//! itself (resource limits, landlock to its directory, seccomp against sockets, io_uring and
//! exec), reads its configuration from the first frame on stdin, and then answers the host's
//! requests on stdin/stdout ([`crate::protocol`]). It must run before any other thread exists,
//! so that no thread escapes the confinement.

use std::path::Path;

use confide_attest::dev::{DevTee, measure_file};
use confide_crypto::SigningKey;

use crate::core::TrustedCore;
use crate::host::serve;
use crate::protocol::{CoreConfig, read_frame};
use crate::sandbox::{Confinement, Limits, confine};

/// The name of the minimal core binary, which hosts prefer when it sits next to their own.
pub const CORE_BINARY: &str = "confide-trainer-core";

/// Runs the core in `dir` (holding `tee.key`, the dev TEE's PKCS#8 Ed25519 key, and
/// `seal.key`, 32 bytes of root sealing key material) until the host closes the channel.
/// Diagnostics go to stderr, which the host sends to the core's log.
pub fn run(dir: &Path) -> Result<(), String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the core's executable: {e}"))?;
    let measurement =
        measure_file(&exe).map_err(|e| format!("cannot measure {}: {e}", exe.display()))?;
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let tee = SigningKey::from_pkcs8_der(&read("tee.key")?).map_err(|e| e.to_string())?;
    let seal: [u8; 32] = read("seal.key")?
        .try_into()
        .map_err(|_| "seal.key must hold exactly 32 bytes".to_string())?;
    // Confined before it parses anything the host sends, the configuration included.
    let enforced = confine(&Confinement {
        directory: dir.to_path_buf(),
        readable: Vec::new(),
        limits: Limits::for_training(),
        allow_exec: false,
    })
    .map_err(|e| e.to_string())?;
    eprintln!(
        "trusted core {} confined: {}",
        exe.display(),
        serde_json::to_string(&enforced).unwrap_or_default()
    );
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let config: CoreConfig = read_frame(&mut input)
        .map_err(|e| e.to_string())?
        .ok_or("the host closed the channel before sending the configuration")?;
    let mut core = TrustedCore::new(
        config,
        Box::new(DevTee::new(tee, measurement)),
        &seal,
        &measurement,
    )?;
    let handled = serve(&mut core, &mut input, &mut output).map_err(|e| e.to_string())?;
    eprintln!("trusted core: channel closed after {handled} requests");
    Ok(())
}
