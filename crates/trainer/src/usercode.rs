//! The node's side of a model owner's own training code (`[code]`): a confined worker process
//! that receives the node's data once and the global model every round, and returns only a
//! parameter vector.
//!
//! The process is started as `LAUNCHER code-worker …` (the `confide` binary's hidden command):
//! the launcher confines itself with [`crate::sandbox::confine`] (resource limits; landlock:
//! read the interpreter's environment, the system's libraries and the bundle, write only the
//! scratch directory; seccomp: no sockets, `io_uring` or `ptrace`), then executes
//! `python3 -I -B -m confide.worker`, whose first act is [`crate::sandbox::seal_worker`]. The
//! node's keys, store and network connections never enter that process.
//!
//! Frames on the worker's stdin and stdout: a 4-byte little-endian length and a JSON header,
//! then an 8-byte little-endian length and a payload (safetensors, or empty).
//!
//! | direction | header `type` | payload |
//! |---|---|---|
//! | node → worker | `hello` (protocol, entry, bundle, rounds, layout) | `x` and `y` |
//! | node → worker | `round` (round) | the global model, Confide's layout |
//! | worker → node | `submit` (round) | the trained model, Confide's layout |
//! | node → worker | `end` | none |
//!
//! The node checks every submitted tensor's name, dtype and shape against the signed model,
//! and every value for finiteness. What the worker writes to stderr goes to a local log file
//! (at most [`LOG_BYTES`]) and nowhere else; errors sent to the coordinator are numbered
//! reasons that carry nothing the worker chose.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use confide_ml::ModelSpec;
use serde_json::json;

/// The version of the frame protocol.
pub const PROTOCOL: u32 = 1;
/// The most bytes of the worker's stderr kept in the local log.
pub const LOG_BYTES: u64 = 1 << 20;
const MAX_HEADER: usize = 64 << 10;

/// Why user code could not produce an update. [`CodeError::public`] is what may leave the node.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// The worker could not be started.
    #[error("CODE-003 user code could not be started: {0}")]
    Start(String),
    /// The worker ended, failed, or broke the protocol before it submitted.
    #[error("CODE-004 user code failed in round {round}: {detail} (its stderr is in {log})")]
    Failed {
        /// The round.
        round: u32,
        /// What happened (local only: it may quote the worker).
        detail: String,
        /// The local log.
        log: String,
    },
    /// The submitted parameters do not fit the signed model.
    #[error(
        "CODE-005 user code returned parameters that do not fit the signed model in round {round}: {detail}"
    )]
    Shape {
        /// The round.
        round: u32,
        /// What does not fit (local only).
        detail: String,
    },
    /// The round's deadline passed; the worker was killed.
    #[error("CODE-006 user code did not submit round {round} within {secs:.0} s; it was stopped")]
    Timeout {
        /// The round.
        round: u32,
        /// The deadline, seconds.
        secs: f64,
    },
}

impl CodeError {
    /// The reason the coordinator may see: the number and the round, nothing the worker
    /// wrote or chose.
    pub fn public(&self) -> String {
        match self {
            CodeError::Start(_) => "CODE-003 user code could not be started at this node".into(),
            CodeError::Failed { round, .. } => {
                format!("CODE-004 user code failed in round {round} (the node's log says why)")
            }
            CodeError::Shape { round, .. } => format!(
                "CODE-005 user code returned parameters that do not fit the signed model in round {round}"
            ),
            CodeError::Timeout { round, secs } => {
                format!("CODE-006 user code did not submit round {round} within {secs:.0} s")
            }
        }
    }
}

/// How to start the worker.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The launcher program (the `confide` binary) and the arguments before `code-worker`.
    pub launcher: Vec<PathBuf>,
    /// The environment's interpreter (`…/bin/python3`).
    pub python: PathBuf,
    /// The verified bundle's directory.
    pub bundle: PathBuf,
    /// The scratch directory: created empty, the only place the worker may write.
    pub scratch: PathBuf,
    /// The local log of the worker's stderr.
    pub log: PathBuf,
    /// The entry point, `module:function`.
    pub entry: String,
}

/// Paths the worker reads besides the bundle: the interpreter's environment (the directory
/// above its `bin/`), the installation the interpreter's links lead to (a virtual
/// environment's base Python and standard library), and the system's programs, libraries
/// and loader cache.
pub fn readable_paths(python: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = [
        "/usr",
        "/lib",
        "/lib64",
        "/etc/ld.so.cache",
        "/dev/urandom",
        "/dev/null",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect();
    let real = python.canonicalize().ok();
    for prefix in [Some(python), real.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(|p| p.parent().and_then(Path::parent))
    {
        if !out.iter().any(|p| prefix.starts_with(p)) {
            out.push(prefix.to_path_buf());
        }
        // Directories the environment's `.pth` files add to the module path (an editable
        // install's source tree, for example); their `import` lines are not followed.
        for dir in pth_directories(prefix) {
            if !out.iter().any(|p| dir.starts_with(p)) {
                out.push(dir);
            }
        }
    }
    out
}

/// The first of `secrets` that one of `readable` would let the worker read, with that path
/// (both compared canonical where they exist).
pub fn exposes(readable: &[PathBuf], secrets: &[&Path]) -> Option<(PathBuf, PathBuf)> {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    for secret in secrets.iter().map(|s| canon(s)) {
        if let Some(r) = readable.iter().find(|r| secret.starts_with(canon(r))) {
            return Some((r.clone(), secret));
        }
    }
    None
}

/// The absolute, existing directories named by `.pth` files in `prefix/lib/python3*/site-packages`.
fn pth_directories(prefix: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(libs) = std::fs::read_dir(prefix.join("lib")) else {
        return out;
    };
    for lib in libs.flatten() {
        if !lib.file_name().to_string_lossy().starts_with("python3") {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(lib.path().join("site-packages")) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().extension().is_none_or(|x| x != "pth") {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for line in text.lines().map(str::trim) {
                let dir = Path::new(line);
                if !line.starts_with("import") && dir.is_absolute() && dir.is_dir() {
                    out.push(dir.to_path_buf());
                }
            }
        }
    }
    out
}

/// A running worker.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    log: PathBuf,
    scratch: PathBuf,
}

fn write_frame(
    out: &mut impl Write,
    header: &serde_json::Value,
    payload: &[u8],
) -> std::io::Result<()> {
    let h = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    out.write_all(&(h.len() as u32).to_le_bytes())?;
    out.write_all(&h)?;
    out.write_all(&(payload.len() as u64).to_le_bytes())?;
    out.write_all(payload)?;
    out.flush()
}

fn read_frame(
    input: &mut impl Read,
    max_payload: usize,
) -> Result<(serde_json::Value, Vec<u8>), String> {
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .map_err(|e| format!("the worker's channel closed ({e})"))?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_HEADER {
        return Err(format!(
            "a frame header of {n} bytes (at most {MAX_HEADER})"
        ));
    }
    let mut h = vec![0u8; n];
    input.read_exact(&mut h).map_err(|e| e.to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&h).map_err(|e| format!("a frame header that is not JSON: {e}"))?;
    let mut len = [0u8; 8];
    input.read_exact(&mut len).map_err(|e| e.to_string())?;
    let m = u64::from_le_bytes(len);
    if m > max_payload as u64 {
        return Err(format!("a payload of {m} bytes (at most {max_payload})"));
    }
    let mut payload = vec![0u8; m as usize];
    input.read_exact(&mut payload).map_err(|e| e.to_string())?;
    Ok((header, payload))
}

/// Runs `f`, killing process `pid` if `f` has not returned within `deadline` (a blocked
/// read or write on its pipes then ends). Returns `f`'s result and whether the deadline
/// passed. The process is not reaped meanwhile, so its pid cannot be reused.
fn within<T>(pid: u32, deadline: Duration, f: impl FnOnce() -> T) -> (T, bool) {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if wait.recv_timeout(deadline) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            return true;
        }
        false
    });
    let out = f();
    let _ = done.send(());
    (out, watchdog.join().unwrap_or(false))
}

/// The records as safetensors: `x` (f32, `[rows, …shape]`) and `y` (i64, `[rows]`).
fn data_tensors(data: &confide_ml::Dataset, shape: &[usize]) -> Result<Vec<u8>, String> {
    use safetensors::tensor::{Dtype, TensorView};
    let rows = data.len();
    let x: Vec<u8> = data.features.iter().flat_map(|v| v.to_le_bytes()).collect();
    let y: Vec<u8> = data
        .labels
        .iter()
        .flat_map(|&v| i64::from(v).to_le_bytes())
        .collect();
    let mut x_shape = vec![rows];
    x_shape.extend_from_slice(shape);
    let views = vec![
        (
            "x".to_string(),
            TensorView::new(Dtype::F32, x_shape, &x).map_err(|e| e.to_string())?,
        ),
        (
            "y".to_string(),
            TensorView::new(Dtype::I64, vec![rows], &y).map_err(|e| e.to_string())?,
        ),
    ];
    safetensors::serialize(views, None).map_err(|e| e.to_string())
}

impl Worker {
    /// Creates an empty scratch directory, starts the confined worker and sends it the
    /// entry point, the layout and the records.
    ///
    /// # Errors
    /// The scratch directory, the log or the process could not be made, or the worker closed
    /// its channel at once.
    pub fn start(
        launch: &Launch,
        model: &ModelSpec,
        data: &confide_ml::Dataset,
        rounds: u32,
        deadline: Duration,
    ) -> Result<Self, CodeError> {
        let start = |e: String| CodeError::Start(e);
        if launch.scratch.exists() {
            std::fs::remove_dir_all(&launch.scratch)
                .map_err(|e| start(format!("{}: {e}", launch.scratch.display())))?;
        }
        // Owner-only: what the code writes and prints is this owner's business alone.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&launch.scratch)
            .map_err(|e| start(format!("{}: {e}", launch.scratch.display())))?;
        let log = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
            0o600,
        )
        .open(&launch.log)
        .map_err(|e| start(format!("{}: {e}", launch.log.display())))?;
        let (program, before) = launch
            .launcher
            .split_first()
            .ok_or_else(|| start("no launcher".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(before)
            .arg("code-worker")
            .arg("--scratch")
            .arg(&launch.scratch)
            .arg("--python")
            .arg(&launch.python);
        for p in readable_paths(&launch.python)
            .iter()
            .chain(std::iter::once(&launch.bundle))
        {
            cmd.arg("--read").arg(p);
        }
        let mut child = cmd
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| start(format!("{}: {e}", program.display())))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(start("no pipes".into()));
        };
        // The worker's stderr goes to the local log, cut at LOG_BYTES; the rest is read and
        // dropped so the worker never blocks on it.
        std::thread::spawn(move || {
            let mut log = log;
            let mut kept = std::io::Read::take(stderr, LOG_BYTES);
            let _ = std::io::copy(&mut kept, &mut log);
            let mut rest = kept.into_inner();
            let _ = std::io::copy(&mut rest, &mut std::io::sink());
        });
        let mut worker = Self {
            child,
            stdin,
            stdout,
            log: launch.log.clone(),
            scratch: launch.scratch.clone(),
        };
        let layout: Vec<serde_json::Value> = confide_ml::export::tensor_layout(model)
            .into_iter()
            .map(|(name, shape, transposed)| {
                json!({ "name": name, "shape": shape, "torch_transposed": transposed })
            })
            .collect();
        let shape = if model.input_shape.is_empty() {
            vec![model.input_dim]
        } else {
            model.input_shape.clone()
        };
        let payload = data_tensors(data, &shape).map_err(start)?;
        let hello = json!({
            "type": "hello",
            "protocol": PROTOCOL,
            "entry": launch.entry,
            "bundle": launch.bundle,
            "rounds": rounds,
            "classes": model.classes,
            "layout": layout,
        });
        let (sent, timed_out) = within(worker.child.id(), deadline, || {
            write_frame(&mut worker.stdin, &hello, &payload)
        });
        if let Err(e) = sent {
            return Err(start(format!(
                "the worker {} before it read the data ({e}); see {}",
                if timed_out {
                    "did not read within the round's deadline"
                } else {
                    "closed its channel"
                },
                launch.log.display()
            )));
        }
        Ok(worker)
    }

    /// Sends round `round`'s global model and returns the parameters the worker submits,
    /// checked against `model`. The worker is killed if it has not submitted within
    /// `deadline`; the scratch directory is emptied afterwards.
    ///
    /// # Errors
    /// The worker failed, broke the protocol, timed out, or submitted parameters that do not
    /// fit the model.
    pub fn round(
        &mut self,
        model: &ModelSpec,
        round: u32,
        global: &[f32],
        deadline: Duration,
    ) -> Result<Vec<f32>, CodeError> {
        let log = self.log.display().to_string();
        let failed = |detail: String| CodeError::Failed {
            round,
            detail,
            log: log.clone(),
        };
        let weights =
            confide_ml::export::to_safetensors(model, global).map_err(|e| failed(e.to_string()))?;
        // The deadline covers sending the model (a worker that stops reading would block the
        // write) and waiting for its answer.
        let max = weights.len() + MAX_HEADER;
        let (stdin, stdout) = (&mut self.stdin, &mut self.stdout);
        let (frame, timed_out) = within(self.child.id(), deadline, || {
            write_frame(stdin, &json!({"type": "round", "round": round}), &weights)
                .map_err(|e| format!("the worker's channel closed ({e})"))?;
            read_frame(stdout, max)
        });
        if timed_out {
            return Err(CodeError::Timeout {
                round,
                secs: deadline.as_secs_f64(),
            });
        }
        let (header, payload) = match frame {
            Ok(f) => f,
            Err(e) => return Err(failed(self.ended(&e))),
        };
        if header["type"] != "submit" || header["round"] != round {
            return Err(failed(format!(
                "expected the submission of round {round}, got a `{}` frame",
                header["type"]
                    .as_str()
                    .unwrap_or("?")
                    .chars()
                    .take(32)
                    .collect::<String>()
                    .escape_debug()
            )));
        }
        let params = confide_ml::export::from_safetensors(model, &payload).map_err(|e| {
            CodeError::Shape {
                round,
                detail: e.to_string(),
            }
        })?;
        if let Some(i) = params.iter().position(|v| !v.is_finite()) {
            return Err(CodeError::Shape {
                round,
                detail: format!("parameter {i} is not finite"),
            });
        }
        self.wipe_scratch();
        Ok(params)
    }

    /// What became of a worker whose channel closed: its exit status if it ended.
    fn ended(&mut self, what: &str) -> String {
        std::thread::sleep(Duration::from_millis(100));
        match self.child.try_wait() {
            Ok(Some(status)) => format!("{what}; the worker exited with {status}"),
            _ => what.to_string(),
        }
    }

    fn wipe_scratch(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.scratch) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

impl Drop for Worker {
    /// Tells the worker the job ended, gives it up to 5 s to exit (then kills it), and
    /// removes the scratch directory.
    fn drop(&mut self) {
        let stdin = &mut self.stdin;
        let _ = within(self.child.id(), Duration::from_secs(5), || {
            write_frame(stdin, &json!({"type": "end"}), &[])
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
