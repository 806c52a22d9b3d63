//! `confide bench service`: a job through the standing daemons against the same job one-shot
//! (`confide simulate`), in one run; then, with `--soak N`, N small jobs back to back through
//! the same daemons, two at a time, with the coordinator's resident memory and store size.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use confide_core::config::JobConfig;
use confide_core::{Role, SchemeKind};
use confide_governance::identity::Identity;
use confide_governance::manifest::{Manifest, Mode, SignedManifest};

/// Options of `confide bench service`.
#[derive(clap::Args, Debug)]
pub struct ServiceBench {
    /// The job (the README's example by default); run from the repository root.
    #[arg(long, default_value = "examples/breast_homo.toml")]
    config: PathBuf,
    /// The Paillier key both runs use, so that neither run's time includes key generation.
    #[arg(
        long,
        default_value = "crates/crypto/testdata/paillier-2048-TEST-ONLY.json"
    )]
    paillier_key: PathBuf,
    /// Then run this many small jobs (`plain`, 3 rounds) back to back through the same
    /// daemons, two at a time (0: none).
    #[arg(long, default_value_t = 0)]
    soak: u32,
    /// Each node daemon's longest wait between two heartbeats (`confide node serve --poll`).
    #[arg(long, default_value_t = 5.0)]
    poll: f64,
    /// Scratch directory (default: a fresh temporary one).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// A daemon started for the bench, killed when dropped.
struct Daemon {
    child: Child,
    addrs: Vec<String>,
    /// Held while the daemon lives: a daemon whose stdout is closed stops at its next line.
    _stdout: BufReader<std::process::ChildStdout>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("the confide executable")
}

fn spawn(args: &[&str], lines: usize, log: &Path) -> Result<Daemon> {
    let mut child = Command::new(exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut addrs = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line)?;
        match line.trim().rsplit_once(" listening on ") {
            Some((_, addr)) => addrs.push(addr.to_string()),
            None => bail!(
                "`confide {}` did not start: {}",
                args.join(" "),
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
    Ok(Daemon {
        child,
        addrs,
        _stdout: out,
    })
}

fn confide(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(exe()?).args(args).output()?)
}

fn ok(args: &[&str]) -> Result<std::process::Output> {
    let out = confide(args)?;
    if !out.status.success() {
        bail!(
            "`confide {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

fn s(p: &Path) -> Result<&str> {
    p.to_str().context("a path that is not UTF-8")
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Signs `config`'s job, with `change` applied, as `owner`.
fn sign(
    config: &JobConfig,
    owner: &Identity,
    out: &Path,
    change: impl FnOnce(&mut JobConfig),
) -> Result<()> {
    let mut c = config.clone();
    change(&mut c);
    let manifest = Manifest::new(&c.spec(), Mode::Federated, owner.public(), vec![])?;
    SignedManifest::sign(manifest, owner)?.save(out)?;
    Ok(())
}

/// Runs the bench.
pub fn run(b: &ServiceBench) -> Result<i32> {
    let config = JobConfig::load(&b.config)?;
    let owner_key = config
        .simulate
        .model_owner_key
        .clone()
        .context("the job names no model owner key ([simulate] model_owner_key)")?;
    let owner = Identity::load(&owner_key, None)?;
    let tmp = tempfile::tempdir()?;
    let work = b
        .work_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let key = s(&b.paillier_key)?;
    eprintln!(
        "bench service: job `{}` ({} rounds, {}), {} parties",
        config.job.id,
        config.job.rounds,
        config.job.scheme.as_str(),
        config.parties.len()
    );

    // The baseline: the same job, one-shot, every role a fresh process.
    let started = Instant::now();
    ok(&[
        "simulate",
        "--config",
        s(&b.config)?,
        "--work-dir",
        s(&work.join("one-shot"))?,
        "--report",
        s(&work.join("one-shot.json"))?,
        "--paillier-key",
        key,
    ])?;
    let one_shot = started.elapsed();

    // The daemons.
    let fed = work.join("fed");
    let f = s(&fed)?;
    ok(&["ca", "init", "--dir", f, "--federation", "bench"])?;
    let mut parties = vec![
        ("coordinator".to_string(), "coordinator"),
        ("keyholder".to_string(), "keyholder"),
    ];
    parties.extend(config.parties.iter().map(|p| (p.name.clone(), "node")));
    for (name, role) in &parties {
        ok(&["ca", "issue", "--dir", f, "--name", name, "--role", role])?;
    }
    owner.save(&fed.join("owner.key"), None)?;
    confide_net::pki::issue_for_key(
        &fed,
        "owner",
        Role::ModelOwner,
        &owner.public(),
        time::OffsetDateTime::now_utc(),
    )?;
    let started_daemons = Instant::now();
    let mut args = vec!["keyholder", "serve", "--fed", f, "--listen", "127.0.0.1:0"];
    args.extend(["--admin", "127.0.0.1:0"]);
    if config.job.scheme == SchemeKind::Paillier {
        args.extend(["--insecure-fixed-key", key]);
    }
    let keyholder = spawn(&args, 2, &work.join("keyholder.log"))?;
    let store = work.join("coordinator.redb");
    let coordinator = spawn(
        &[
            "coordinator",
            "serve",
            "--fed",
            f,
            "--keyholder",
            &keyholder.addrs[1],
            "--control",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--fleet",
            "127.0.0.1:0",
            "--store",
            s(&store)?,
        ],
        3,
        &work.join("coordinator.log"),
    )?;
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    let poll = b.poll.to_string();
    let mut nodes = Vec::new();
    for p in &config.parties {
        let mut args = vec!["node", "serve", "--fed", f, "--name", &p.name];
        args.extend(["--coordinator", &fleet, "--data", s(&p.data)?]);
        args.extend(["--admin", "127.0.0.1:0", "--poll", &poll]);
        let node_store = work.join(format!("{}-node.redb", p.name));
        args.extend(["--store", s(&node_store)?]);
        if let Some(policy) = &p.policy {
            args.extend(["--policy", s(policy)?]);
        }
        nodes.push(spawn(&args, 1, &work.join(format!("{}.log", p.name)))?);
    }
    let daemons_up = started_daemons.elapsed();

    let manifest = work.join("job.json");
    sign(&config, &owner, &manifest, |_| {})?;
    let job = |args: &[&str]| -> Result<std::process::Output> {
        let mut all = vec!["job"];
        all.extend(args);
        all.extend(["--coordinator", &control, "--fed", f, "--name", "owner"]);
        confide(&all)
    };
    let started = Instant::now();
    let out = job(&["submit", s(&manifest)?, "--wait"])?;
    let served = started.elapsed();
    if !out.status.success() {
        bail!(
            "the served job did not complete: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Where the served job's time went, from its events (the coordinator's clock).
    let logs = job(&["logs", &config.job.id, "--format", "json"])?;
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&logs.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let t0 = events
        .first()
        .and_then(|e| e["time_ms"].as_u64())
        .unwrap_or(0);
    let mut marks = Vec::new();
    for e in &events {
        let state = &e["state"];
        let mark = match state["name"].as_str() {
            Some("queued") => Some("approved by every owner (queued)".to_string()),
            Some("running") if state["round"] == 1 => Some("running, round 1".to_string()),
            Some("running") if state["round"] == 2 => Some("round 2 (round 1 done)".to_string()),
            Some("completed") => Some("completed".to_string()),
            _ => None,
        };
        if let (Some(m), Some(t)) = (mark, e["time_ms"].as_u64()) {
            marks.push(format!("{m} at {:.2} s", (t - t0) as f64 / 1000.0));
        }
    }
    outln!("served job, from its submission: {}", marks.join("; "));
    let ratio = served.as_secs_f64() / one_shot.as_secs_f64();
    outln!(
        "one-shot (`confide simulate`, every role a new process): {:.2} s",
        one_shot.as_secs_f64()
    );
    outln!(
        "through the daemons (submit to completed):                {:.2} s",
        served.as_secs_f64()
    );
    outln!(
        "ratio: {ratio:.2}× (target ≤ 1.2×: {})",
        if ratio <= 1.2 { "met" } else { "NOT met" }
    );
    outln!(
        "starting the daemons, once for every job: {:.2} s; with it the ratio is {:.2}×",
        daemons_up.as_secs_f64(),
        (served + daemons_up).as_secs_f64() / one_shot.as_secs_f64()
    );

    if b.soak > 0 {
        soak(b.soak, &config, &owner, &work, &coordinator, &store, &job)?;
    }
    drop(nodes);
    drop(coordinator);
    drop(keyholder);
    Ok(0)
}

/// `n` small jobs, two at a time, through the running daemons.
fn soak(
    n: u32,
    config: &JobConfig,
    owner: &Identity,
    work: &Path,
    coordinator: &Daemon,
    store: &Path,
    job: &dyn Fn(&[&str]) -> Result<std::process::Output>,
) -> Result<()> {
    let dir = work.join("soak");
    std::fs::create_dir_all(&dir)?;
    let pid = coordinator.child.id();
    outln!("soak: {n} jobs (`plain`, 3 rounds), two at a time");
    outln!(
        "{:>6} {:>10} {:>14} {:>14}",
        "jobs",
        "seconds",
        "coordinator RSS",
        "store bytes"
    );
    let sample = |done: u32, t: Duration| -> Result<()> {
        outln!(
            "{done:>6} {:>10.1} {:>14} {:>14}",
            t.as_secs_f64(),
            rss(pid).map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            std::fs::metadata(store).map_or("?".into(), |m| m.len().to_string())
        );
        Ok(())
    };
    let started = Instant::now();
    sample(0, Duration::ZERO)?;
    let mut running: Vec<String> = Vec::new();
    let (mut next, mut done) = (0u32, 0u32);
    while done < n {
        while running.len() < 2 && next < n {
            let id = format!("soak-{next}");
            let path = dir.join(format!("{id}.json"));
            sign(config, owner, &path, |c| {
                c.job.id = id.clone();
                c.job.scheme = SchemeKind::Plain;
                c.job.rounds = 3;
            })?;
            let out = job(&["submit", s(&path)?])?;
            if !out.status.success() {
                bail!("{id}: {}", String::from_utf8_lossy(&out.stderr));
            }
            running.push(id);
            next += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut still = Vec::new();
        for id in running.drain(..) {
            let out = job(&["status", &id, "--format", "json"])?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            match v["state"]["name"].as_str() {
                Some("completed") => {
                    done += 1;
                    if done % 20 == 0 || done == n {
                        sample(done, started.elapsed())?;
                    }
                }
                Some("failed" | "cancelled" | "rejected" | "expired") => {
                    bail!("{id} ended {}", v["state"])
                }
                _ => still.push(id),
            }
        }
        running = still;
    }
    outln!(
        "soak: {n} jobs completed in {:.1} s ({:.2} s per job)",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / f64::from(n)
    );
    // A finished job's coordinator is kept while its route lingers; after that, the
    // coordinator's memory is what it keeps for every job (none) plus its caches.
    let linger = confide_net::fleet::LINGER + Duration::from_secs(2);
    outln!(
        "after {} s more (the last jobs' routes closed):",
        linger.as_secs()
    );
    std::thread::sleep(linger);
    sample(n, started.elapsed())?;
    Ok(())
}
