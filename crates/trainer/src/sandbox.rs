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
//!    list for the native ABI; a second filter refuses every x32 system-call number (bit 30
//!    set), which kernels built with x32 support would otherwise route to the same calls.
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
    /// [`seal_worker`] before it runs anything it did not start with). landlock still limits
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

fn seccomp_err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(e.to_string())
}

/// Installs a filter on every thread: each system call of `rules` fails with `errno` when
/// one of its rules matches (an empty rule list: always).
fn apply_rules(
    rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>>,
    errno: i32,
) -> Result<(), SandboxError> {
    let arch: TargetArch = std::env::consts::ARCH.try_into().map_err(seccomp_err)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(seccomp_err)?;
    let program: BpfProgram = filter.try_into().map_err(seccomp_err)?;
    seccompiler::apply_filter_all_threads(&program).map_err(seccomp_err)
}

/// Refuses every x32 system call (numbers with bit 30 set) with `EPERM`: on kernels built
/// with x32 support they would reach the same kernel code as the native calls the other
/// filters deny. A hand-written classic BPF program (seccompiler matches exact numbers only):
/// load the number, test bit 30, return `ERRNO(EPERM)` or `ALLOW`.
#[cfg(target_arch = "x86_64")]
fn deny_x32() -> Result<(), SandboxError> {
    use seccompiler::sock_filter;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let op = |code: u16, jt: u8, jf: u8, k: u32| sock_filter { code, jt, jf, k };
    let program: BpfProgram = vec![
        // BPF_LD | BPF_W | BPF_ABS: seccomp_data.nr (offset 0)
        op(0x20, 0, 0, 0),
        // BPF_JMP | BPF_JSET | BPF_K: bit 30 set → next instruction, else skip it
        op(0x45, 0, 1, X32_SYSCALL_BIT),
        // BPF_RET | BPF_K
        op(0x06, 0, 0, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        op(0x06, 0, 0, SECCOMP_RET_ALLOW),
    ];
    seccompiler::apply_filter_all_threads(&program).map_err(seccomp_err)
}

#[cfg(not(target_arch = "x86_64"))]
fn deny_x32() -> Result<(), SandboxError> {
    Ok(())
}

fn apply_seccomp(denied: &[(&str, libc::c_long)]) -> Result<(), SandboxError> {
    deny_x32()?;
    apply_rules(
        denied.iter().map(|&(_, nr)| (nr, Vec::new())).collect(),
        libc::EPERM,
    )
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

/// Seals a user code worker, on every thread, with filters that stack on the launcher's
/// and cannot be removed (it calls this first thing, after the launcher's [`confine`] with
/// [`Confinement::allow_exec`] executed it):
/// - `execve` and `execveat` fail with `EPERM`: no program can be started;
/// - no new process: `fork` and `vfork` fail with `EPERM`, `clone` too unless it makes a
///   thread (`CLONE_THREAD`), and `clone3` fails with `ENOSYS` (glibc then makes its threads
///   with `clone`). A child could otherwise outlive the worker's kill and keep its pipes open;
/// - signals only to itself: `kill`, `tgkill`, `rt_sigqueueinfo` and `rt_tgsigqueueinfo` fail
///   with `EPERM` for any other process (the node, above all; landlock ABI v3 does not scope
///   signals), `tkill` and `pidfd_send_signal` always.
pub fn seal_worker() -> Result<(), SandboxError> {
    use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition, SeccompRule};
    let me = i64::from(std::process::id());
    let rule =
        |conditions: Vec<SeccompCondition>| SeccompRule::new(conditions).map_err(seccomp_err);
    let cond = |arg: u8, len: Len, op: Op, value: u64| {
        SeccompCondition::new(arg, len, op, value).map_err(seccomp_err)
    };
    let not_me = || -> Result<Vec<SeccompRule>, SandboxError> {
        Ok(vec![rule(vec![cond(0, Len::Dword, Op::Ne, me as u64)?])?])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        EXEC.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    rules.insert(libc::SYS_fork, Vec::new());
    rules.insert(libc::SYS_vfork, Vec::new());
    rules.insert(libc::SYS_tkill, Vec::new());
    rules.insert(libc::SYS_pidfd_send_signal, Vec::new());
    rules.insert(
        libc::SYS_clone,
        vec![rule(vec![cond(
            0,
            Len::Qword,
            Op::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?])?],
    );
    for nr in [
        libc::SYS_kill,
        libc::SYS_tgkill,
        libc::SYS_rt_sigqueueinfo,
        libc::SYS_rt_tgsigqueueinfo,
    ] {
        rules.insert(nr, not_me()?);
    }
    apply_rules(rules, libc::EPERM)?;
    apply_rules(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        libc::ENOSYS,
    )
}
