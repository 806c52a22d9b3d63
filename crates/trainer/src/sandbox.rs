//! Confinement of the trusted core before it touches data or runs training (the draft design's
//! containerised worker, with the kernel's own mechanisms):
//!
//! 1. **Resource limits** (`setrlimit(2)`, through rustix): address space, CPU seconds, the
//!    largest file it may write, and open files.
//! 2. **landlock** (the `landlock` crate, ABI v3: Linux 6.2+): the process may read, write,
//!    create, remove and execute files only beneath its own directory, and read (never write)
//!    the extra paths it is given; elsewhere those operations fail with `EACCES`. (ABI v3 does
//!    not cover metadata changes such as `chmod`, nor signals; those are outside this
//!    confinement.)
//! 3. **seccomp** (the `seccompiler` crate, a BPF filter on all threads): `socket`,
//!    `socketpair`, the three `io_uring` calls, `execve`, `execveat` and `ptrace` fail with
//!    `EPERM`. The core therefore cannot create sockets or start other programs; it talks to
//!    the host only through the descriptors it already holds (its pipes). The filter is a deny
//!    list for the native ABI: it does not handle the x32 system-call numbers of kernels built
//!    with x32 support (an allow list would).
//!
//! The confinement cannot be undone and is inherited by threads created afterwards. landlock
//! applies to the calling thread only (Linux has no landlock `TSYNC`), so [`confine`] must run
//! on the main thread before any other thread starts: in `main`, before training spawns its
//! worker threads. It fails closed: if the kernel cannot fully enforce the landlock rules,
//! [`confine`] returns an error instead of running unconfined.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use serde::Serialize;

/// The landlock ABI whose rules are required.
const LANDLOCK_ABI: ABI = ABI::V3;

/// The system calls the filter refuses.
const DENIED: [(&str, libc::c_long); 8] = [
    ("socket", libc::SYS_socket),
    ("socketpair", libc::SYS_socketpair),
    // io_uring can create and connect sockets without `socket(2)` (IORING_OP_SOCKET).
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("ptrace", libc::SYS_ptrace),
];

/// Resource limits (`None`: leave as is). Soft and hard limits are both set, so they cannot be
/// raised again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Address space, bytes (`RLIMIT_AS`).
    pub address_space_bytes: Option<u64>,
    /// CPU time, seconds (`RLIMIT_CPU`).
    pub cpu_seconds: Option<u64>,
    /// The largest file it may create or extend, bytes (`RLIMIT_FSIZE`).
    pub file_bytes: Option<u64>,
    /// Open file descriptors (`RLIMIT_NOFILE`).
    pub open_files: Option<u64>,
}

impl Limits {
    /// Defaults for a training run: 8 GiB of address space, 1 hour of CPU, 4 GiB files, 256
    /// open files.
    pub fn for_training() -> Self {
        Self {
            address_space_bytes: Some(8 << 30),
            cpu_seconds: Some(3600),
            file_bytes: Some(4 << 30),
            open_files: Some(256),
        }
    }
}

/// What to confine the process to.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    /// The only directory it may write (and read).
    pub directory: PathBuf,
    /// Further paths it may read, never write.
    pub readable: Vec<PathBuf>,
    /// Resource limits.
    pub limits: Limits,
    /// Leave `execve` and `execveat` allowed, for a launcher that confines itself and then
    /// executes its one program (user code's interpreter, which must then call
    /// [`deny_exec`] before it runs anything it did not start with). landlock still limits
    /// what can be executed to the readable paths.
    pub allow_exec: bool,
}

/// What [`confine`] enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enforced {
    /// The writable directory.
    pub directory: String,
    /// The read-only paths.
    pub readable: Vec<String>,
    /// landlock's status (always `fully enforced`: anything less is an error).
    pub landlock: String,
    /// The system calls refused with `EPERM`.
    pub denied_syscalls: Vec<String>,
    /// The limits set.
    pub limits: Limits,
}

/// Why the process could not be confined (it must then not go on).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A resource limit could not be set.
    #[error("setrlimit {resource}: {message}")]
    Limit {
        /// The resource.
        resource: &'static str,
        /// The error.
        message: String,
    },
    /// landlock could not be set up, or the kernel cannot enforce it fully.
    #[error("landlock: {0}")]
    Landlock(String),
    /// The seccomp filter could not be built or installed.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A path is unusable.
    #[error("{path}: {message}")]
    Path {
        /// The path.
        path: String,
        /// The problem.
        message: String,
    },
}

fn set_limit(
    resource: rustix::process::Resource,
    name: &'static str,
    value: Option<u64>,
) -> Result<(), SandboxError> {
    let Some(v) = value else {
        return Ok(());
    };
    rustix::process::setrlimit(
        resource,
        rustix::process::Rlimit {
            current: Some(v),
            maximum: Some(v),
        },
    )
    .map_err(|e| SandboxError::Limit {
        resource: name,
        message: e.to_string(),
    })
}

fn apply_limits(limits: &Limits) -> Result<(), SandboxError> {
    use rustix::process::Resource;
    set_limit(Resource::As, "RLIMIT_AS", limits.address_space_bytes)?;
    set_limit(Resource::Cpu, "RLIMIT_CPU", limits.cpu_seconds)?;
    set_limit(Resource::Fsize, "RLIMIT_FSIZE", limits.file_bytes)?;
    set_limit(Resource::Nofile, "RLIMIT_NOFILE", limits.open_files)
}

fn apply_landlock(directory: &Path, readable: &[PathBuf]) -> Result<(), SandboxError> {
    let err = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(
            readable,
            AccessFs::from_read(LANDLOCK_ABI),
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            [directory],
            AccessFs::from_all(LANDLOCK_ABI),
        ))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(()),
        other => Err(SandboxError::Landlock(format!(
            "the kernel enforces the rules only {other:?} (landlock ABI v3, Linux 6.2 or later, is required); refusing to run unconfined"
        ))),
    }
}

fn apply_seccomp(denied: &[(&str, libc::c_long)]) -> Result<(), SandboxError> {
    fn err(e: impl std::fmt::Display) -> SandboxError {
        SandboxError::Seccomp(e.to_string())
    }
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(err)?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        denied.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    let program: BpfProgram = filter.try_into().map_err(err)?;
    seccompiler::apply_filter_all_threads(&program).map_err(err)
}

/// Confines the calling process: resource limits, then landlock, then seccomp (see the module
/// documentation). Call it on the main thread before any other thread starts.
pub fn confine(c: &Confinement) -> Result<Enforced, SandboxError> {
    let path_err = |p: &Path, e: std::io::Error| SandboxError::Path {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let directory = c
        .directory
        .canonicalize()
        .map_err(|e| path_err(&c.directory, e))?;
    if !directory.is_dir() {
        return Err(SandboxError::Path {
            path: directory.display().to_string(),
            message: "not a directory".into(),
        });
    }
    let readable = c
        .readable
        .iter()
        .map(|p| p.canonicalize().map_err(|e| path_err(p, e)))
        .collect::<Result<Vec<_>, _>>()?;
    apply_limits(&c.limits)?;
    apply_landlock(&directory, &readable)?;
    let denied: Vec<(&str, libc::c_long)> = DENIED
        .iter()
        .copied()
        .filter(|(_, nr)| !c.allow_exec || !EXEC.iter().any(|(_, e)| e == nr))
        .collect();
    apply_seccomp(&denied)?;
    Ok(Enforced {
        directory: directory.display().to_string(),
        readable: readable.iter().map(|p| p.display().to_string()).collect(),
        landlock: "fully enforced (ABI v3)".into(),
        denied_syscalls: denied.iter().map(|(n, _)| (*n).to_string()).collect(),
        limits: c.limits,
    })
}

/// The system calls that start a program.
const EXEC: [(&str, libc::c_long); 2] = [
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
];

/// Adds a seccomp filter that refuses `execve` and `execveat` with `EPERM`, on every thread
/// of the calling process. Filters stack and cannot be removed: after this, the process and
/// its children can no longer start any program. User code's worker calls it first thing,
/// after the launcher's [`confine`] with [`Confinement::allow_exec`] executed it.
pub fn deny_exec() -> Result<(), SandboxError> {
    apply_seccomp(&EXEC)
}
