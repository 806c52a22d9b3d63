//! Daemons of a standing federation as child processes, and a federation directory with
//! the examples' demo model owner, for the service's integration tests.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{ok, root};

/// A running daemon and the addresses it printed (in order).
pub struct Daemon {
    pub child: Child,
    pub addrs: Vec<String>,
    log: PathBuf,
    /// Held while the daemon lives: a daemon whose stdout is closed stops at its next line.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Starts `cmd` and reads the `lines` addresses it prints first.
    pub fn spawn(mut cmd: Command, lines: usize, log: PathBuf) -> Daemon {
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut addrs = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            out.read_line(&mut line).expect("address line");
            assert!(
                line.contains(" listening on "),
                "{args:?}: {line}{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            addrs.push(line.trim().rsplit(' ').next().expect("address").to_string());
        }
        Daemon {
            child,
            addrs,
            log,
            _stdout: out,
        }
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code();
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

pub struct Fed {
    pub dir: tempfile::TempDir,
    pub fed: PathBuf,
    /// Each party's network namespace and address, when the parties run in their own
    /// (`crates/cli/tests/netns.rs`); otherwise every party is on 127.0.0.1.
    pub hosts: Option<std::collections::HashMap<String, (String, String)>>,
}

impl Fed {
    pub fn new() -> Fed {
        let dir = tempfile::tempdir().expect("dir");
        let fed = dir.path().join("fed");
        let f = path(&fed);
        ok(&["ca", "init", "--dir", f, "--federation", "fleet-test"]);
        for (name, role) in [
            ("coordinator", "coordinator"),
            ("keyholder", "keyholder"),
            ("aggregator-1", "aggregator"),
            ("aggregator-2", "aggregator"),
            ("aggregator-3", "aggregator"),
            ("guest", "node"),
            ("host", "node"),
            ("mallory", "model-owner"),
        ] {
            ok(&["ca", "issue", "--dir", f, "--name", name, "--role", role]);
        }
        // The model owner is the examples' demo identity, which the example policies name.
        let keys = root().join("examples/keys");
        std::fs::copy(keys.join("model-owner.key"), fed.join("owner.key")).expect("key");
        ok(&[
            "ca",
            "issue",
            "--dir",
            f,
            "--name",
            "owner",
            "--role",
            "model-owner",
            "--public-key",
            path(&keys.join("model-owner.key.pub")),
        ]);
        Fed {
            dir,
            fed,
            hosts: None,
        }
    }

    /// `confide` as `party`: inside its network namespace, if it has one.
    pub fn command(&self, party: &str) -> Command {
        match self.hosts.as_ref().and_then(|h| h.get(party)) {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_confide")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_confide")),
        }
    }

    /// `party`'s address, with port 0 (the daemon prints the port it bound).
    pub fn listen(&self, party: &str) -> String {
        match self.hosts.as_ref().and_then(|h| h.get(party)) {
            Some((_, ip)) => format!("{ip}:0"),
            None => "127.0.0.1:0".into(),
        }
    }

    /// A signed manifest of the breast_homo example under `scheme`, `rounds` rounds.
    pub fn manifest(&self, id: &str, scheme: &str, rounds: u32) -> PathBuf {
        self.manifest_with(id, scheme, rounds, "")
    }

    /// [`Fed::manifest`], with `extra` TOML appended to the job file.
    pub fn manifest_with(&self, id: &str, scheme: &str, rounds: u32, extra: &str) -> PathBuf {
        let example =
            std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
        let text = super::absolute_example_paths(&example)
            .replace("id = \"breast-homo\"", &format!("id = \"{id}\""))
            .replace("rounds = 80", &format!("rounds = {rounds}"))
            .replace("scheme = \"paillier\"", &format!("scheme = \"{scheme}\""))
            .replace("round_timeout_secs = 60.0", "round_timeout_secs = 20.0")
            + extra;
        let config = self.dir.path().join(format!("{id}.toml"));
        std::fs::write(&config, text).expect("write");
        let out = self.dir.path().join(format!("{id}.json"));
        ok(&[
            "job",
            "sign",
            "--config",
            path(&config),
            "--key",
            path(&self.fed.join("owner.key")),
            "--out",
            path(&out),
        ]);
        out
    }

    /// `confide job …` as `name` against `control`, with `--format json`.
    pub fn job(&self, control: &str, name: &str, args: &[&str]) -> Output {
        self.command(name)
            .arg("job")
            .args(args)
            .args(["--format", "json"])
            .env("CONFIDE_CONTROL", control)
            .env("CONFIDE_FED", &self.fed)
            .env("CONFIDE_NAME", name)
            .output()
            .expect("run confide")
    }

    /// `confide node inbox …` against the node daemon at `admin`, as `name`.
    pub fn inbox(&self, admin: &str, name: &str, args: &[&str]) -> Output {
        self.command(name)
            .args(["node", "inbox"])
            .args(args)
            .args(["--format", "json", "--admin", admin])
            .env("CONFIDE_FED", &self.fed)
            .env("CONFIDE_NAME", name)
            .output()
            .expect("run confide")
    }

    /// The key holder daemon, with the test Paillier key for every `paillier` job (a fresh
    /// 2048-bit key per job takes 10–60 s here).
    pub fn keyholder(&self) -> Daemon {
        self.keyholder_at(&self.listen("keyholder"), &[], "keyholder.log")
    }

    /// The key holder daemon on `listen`, with `env`.
    pub fn keyholder_at(&self, listen: &str, env: &[(&str, &str)], log: &str) -> Daemon {
        let mut cmd = self.command("keyholder");
        cmd.envs(env.iter().copied()).args([
            "keyholder",
            "serve",
            "--fed",
            path(&self.fed),
            "--listen",
            listen,
            "--admin",
            "127.0.0.1:0",
            "--insecure-fixed-key",
            path(&root().join("crates/crypto/testdata/paillier-2048-TEST-ONLY.json")),
        ]);
        Daemon::spawn(cmd, 2, self.dir.path().join(log))
    }

    pub fn coordinator(&self, keyholder: &str) -> Daemon {
        self.coordinator_with(&["--keyholder", keyholder])
    }

    /// The coordinator daemon, with `extra` arguments (its key holder, its aggregators).
    pub fn coordinator_with(&self, extra: &[&str]) -> Daemon {
        let listen = self.listen("coordinator");
        self.coordinator_at((&listen, &listen), extra, &[], "coordinator.log")
    }

    /// The coordinator daemon with its control and fleet ports on `(control, fleet)`, with
    /// `extra` arguments and `env`, logging to `log`; its store is always the same file.
    pub fn coordinator_at(
        &self,
        (control, fleet): (&str, &str),
        extra: &[&str],
        env: &[(&str, &str)],
        log: &str,
    ) -> Daemon {
        let store = self.dir.path().join("coordinator.redb");
        let mut cmd = self.command("coordinator");
        cmd.envs(env.iter().copied())
            .args(["coordinator", "serve"])
            .args(extra)
            .args([
                "--fed",
                path(&self.fed),
                "--control",
                control,
                "--admin",
                "127.0.0.1:0",
                "--fleet",
                fleet,
                "--store",
                path(&store),
            ]);
        Daemon::spawn(cmd, 3, self.dir.path().join(log))
    }

    /// Aggregator daemon `index` (from 1), with the shared verify key root in `verify_key`.
    pub fn aggregator(&self, index: usize, verify_key: &Path) -> Daemon {
        let listen = self.listen(&format!("aggregator-{index}"));
        self.aggregator_at(
            index,
            verify_key,
            &listen,
            &[],
            &format!("aggregator-{index}.log"),
        )
    }

    /// Aggregator daemon `index` on `listen`, with `env`, logging to `log`; its store and
    /// seal key are always the same files.
    pub fn aggregator_at(
        &self,
        index: usize,
        verify_key: &Path,
        listen: &str,
        env: &[(&str, &str)],
        log: &str,
    ) -> Daemon {
        let name = format!("aggregator-{index}");
        let mut cmd = self.command(&name);
        cmd.envs(env.iter().copied())
            .args(["aggregator", "serve", "--fed", path(&self.fed)])
            .args(["--index", &index.to_string(), "--listen", listen])
            .args(["--admin", "127.0.0.1:0", "--verify-key", path(verify_key)]);
        Daemon::spawn(cmd, 2, self.dir.path().join(log))
    }

    pub fn node(&self, name: &str, fleet: &str, policy: &Path) -> Daemon {
        self.node_with(name, fleet, policy, &[], &format!("{name}.log"))
    }

    /// Node daemon `name` with `env`, logging to `log`; its store is always the same file.
    pub fn node_with(
        &self,
        name: &str,
        fleet: &str,
        policy: &Path,
        env: &[(&str, &str)],
        log: &str,
    ) -> Daemon {
        let data = root().join(format!("data/breast_homo/breast_homo_{name}.csv"));
        self.node_serving(name, fleet, &[(&data, policy)], (env, &[]), log)
    }

    /// A fresh approval key for owner `name` (`confide keygen`): its file and its party id.
    pub fn approver_key(&self, name: &str) -> (PathBuf, String) {
        let key = self.dir.path().join(format!("{name}-approver.key"));
        let made = Command::new(env!("CARGO_BIN_EXE_confide"))
            .args(["keygen", "--out", path(&key), "--no-tls-key"])
            .output()
            .expect("keygen");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let id = json(&made)["id"].as_str().expect("id").to_string();
        (key, id)
    }

    /// Node daemon `name` serving `sources` (each a CSV and its policy, in order), with `env`
    /// and `extra` arguments.
    pub fn node_serving(
        &self,
        name: &str,
        fleet: &str,
        sources: &[(&Path, &Path)],
        (env, extra): (&[(&str, &str)], &[&str]),
        log: &str,
    ) -> Daemon {
        let mut cmd = self.command(name);
        cmd.args([
            "node",
            "serve",
            "--fed",
            path(&self.fed),
            "--name",
            name,
            "--coordinator",
            fleet,
        ]);
        for (data, policy) in sources {
            cmd.args(["--data", path(data), "--policy", path(policy)]);
        }
        cmd.args(extra);
        cmd.args([
            "--admin",
            "127.0.0.1:0",
            "--poll",
            "0.3",
            "--store",
            path(&self.dir.path().join(format!("{name}-node.redb"))),
        ]);
        cmd.envs(env.iter().copied());
        Daemon::spawn(cmd, 1, self.dir.path().join(log))
    }
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn state_of(fed: &Fed, control: &str, job: &str) -> String {
    let out = fed.job(control, "owner", &["status", job]);
    json(&out)["state"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `GET path` on an admin port: the body.
pub fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin port");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
