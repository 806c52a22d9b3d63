//! `confide bench dashboard`: the dashboards' views rendered from stores holding N jobs
//! (default 200: signed manifests of the DP example, each with its cost and rule verdicts,
//! each debited in the node's ledger and submitted to the coordinator's job store, the first
//! run to its end), with each view's size, against the inbox's JSON listing of the same jobs
//! (what `confide node inbox list` reads) as the baseline, in one process. "Verify now" is
//! timed on an audit log of 20 entries per job.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use confide_core::Role;
use confide_governance::identity::Identity;
use confide_governance::manifest::{Manifest, Mode, SignedManifest};
use confide_store::Store;
use serde_json::json;

use crate::dashboard_views::{Chrome, Dataset, Heartbeats, Node};
use crate::node_serve::{Entry, Inbox, Status};

/// Options of `confide bench dashboard`.
#[derive(clap::Args, Debug)]
pub struct DashboardBench {
    /// Jobs in the node's store.
    #[arg(long, default_value_t = 200)]
    jobs: u32,
    /// Renders per view.
    #[arg(long, default_value_t = 20)]
    repeats: u32,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Times `f` `repeats` times: the median in milliseconds and the last result's length.
fn time(repeats: u32, mut f: impl FnMut() -> Result<usize>) -> Result<(f64, usize)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        bytes = f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(times), bytes))
}

/// Moves job `hash` through every round to `completed`, with a report of one evaluated
/// round record per round (figures made up for the page; only its rendering is measured).
fn complete_first(
    jobs: &confide_service::Jobs,
    hash: &str,
    spec: &confide_core::JobSpec,
    now: time::OffsetDateTime,
) -> Result<()> {
    use confide_service::{Stage, Transition};
    let h = confide_service::jobs::parse_hash(hash).context("hash")?;
    let fail = |e: confide_service::ServiceError| anyhow::anyhow!("{e}");
    for owner in &spec.owners {
        jobs.transition(
            &h,
            &Transition::Approve {
                owner: owner.clone(),
            },
            owner,
            now,
        )
        .map_err(fail)?;
    }
    jobs.transition(&h, &Transition::Dispatch, "coordinator", now)
        .map_err(fail)?;
    let rounds = spec.job.rounds;
    let steps: Vec<Transition> = (2..=rounds)
        .map(|round| Transition::Progress {
            round,
            stage: Stage::Training,
        })
        .chain([Transition::Progress {
            round: rounds,
            stage: Stage::Committing,
        }])
        .collect();
    jobs.progress(&h, &steps, "coordinator", now)
        .map_err(fail)?;
    let history: Vec<serde_json::Value> = (1..=rounds)
        .map(|r| {
            json!({
                "round": r, "contributors": spec.owners, "excluded": [],
                "test_accuracy": 0.9 + f64::from(r) / f64::from(rounds) / 20.0,
                "test_auc": null, "test_log_loss": 0.3 - f64::from(r) / f64::from(rounds) / 10.0,
                "test_correct": null, "seconds": 0.02, "aggregation_seconds": 0.005,
            })
        })
        .collect();
    let report = json!({
        "job_id": spec.job.id, "status": "finished", "message": "", "scheme": "paillier",
        "parties": spec.owners, "rounds": rounds, "rounds_planned": rounds, "history": history,
        "rejections": {}, "events": [], "keyholder_key": null, "param_count": 31,
        "privacy": {}, "manifest_hash": hash, "audit": null,
    });
    jobs.complete(&h, &report.to_string(), &[0u8; 64], now)
        .map_err(fail)?;
    Ok(())
}

/// Runs the benchmark and prints its figures as JSON.
pub fn run(b: &DashboardBench) -> Result<i32> {
    anyhow::ensure!(b.jobs >= 1, "--jobs must be at least 1");
    let dir = tempfile::tempdir()?;
    let fed = dir.path().join("fed");
    let now = time::OffsetDateTime::now_utc();
    confide_net::pki::init_ca(&fed, "bench", now)?;
    confide_net::pki::issue(&fed, "node", Role::Node, now)?;
    let creds = confide_net::pki::Credentials::load(&fed, "node")?;
    let examples = std::path::Path::new("examples");
    let owner = Identity::load(&examples.join("keys/model-owner.key"), None)?;
    let template = confide_core::JobConfig::load(&examples.join("breast_homo_dp.toml"))
        .context("the DP example (run the benchmark from the repository's root)")?
        .spec();
    let store: Arc<dyn Store> =
        confide_store::RedbStore::open_shared(dir.path().join("node.redb"))?;
    let inbox = Inbox {
        store: store.clone(),
        me: Some(owner.id()),
    };
    let ledger_path = dir.path().join("ledger.redb");
    let ledger = confide_dp::ledger::BudgetLedger::open(&ledger_path)?;
    let dataset = "bench_data";
    ledger.set_budget(
        dataset,
        confide_dp::ledger::Budget::new(f64::from(b.jobs) * 2.0 + 10.0, f64::from(b.jobs) * 2e-5)?,
    )?;
    // The coordinator's job store, with the same jobs submitted.
    let jobs = confide_service::Jobs::new(Arc::new(confide_store::MemoryStore::new()));
    let started = Instant::now();
    let mut hashes = Vec::new();
    for i in 0..b.jobs {
        let mut spec = template.clone();
        spec.job.id = format!("bench-job-{i:04}");
        let signed = SignedManifest::sign(
            Manifest::new(&spec, Mode::Federated, owner.public(), Vec::new())?,
            &owner,
        )?;
        let hash = signed.verify()?.hash_hex();
        let mut e = Entry {
            hash: hash.clone(),
            job_id: spec.job.id.clone(),
            model_owner: owner.id(),
            rounds: spec.job.rounds,
            verdict: "ask".into(),
            why: "policy rule `dp study` requires this owner's co-signature".into(),
            status: [Status::Pending, Status::Ended, Status::Rejected][i as usize % 3],
            sent: true,
            approval: None,
            note: String::new(),
            updated_ms: 0,
            manifest_json: serde_json::to_string(&signed)?,
            source: 0,
            dataset: dataset.into(),
            cost: Some(confide_net::node::PrivacyCost {
                epsilon: 2.0,
                delta: 1e-5,
                noise_multiplier: 1.1,
                clip_norm: 1.0,
                sampling_rate: 0.15,
                steps: 100,
                accountant: "rdp".into(),
                level: "record".into(),
            }),
            rules: vec![confide_governance::policy::RuleVerdict {
                rule: "dp study".into(),
                allows: true,
                approval: confide_governance::policy::Approval::CoSignature,
                why: String::new(),
            }],
            statement: String::new(),
            datasets: Vec::new(),
        };
        inbox.put(&mut e)?;
        ledger.debit(
            dataset,
            &e.job_id,
            confide_dp::ledger::Budget::new(2.0, 1e-5)?,
        )?;
        let submitted = jobs
            .submit(e.manifest_json.as_bytes(), &owner.id(), now)
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        // Most have ended: a model owner may have at most 64 unfinished jobs.
        if i > 0 && (i % 4 != 0 || i / 4 >= 50) {
            let h = confide_service::jobs::parse_hash(&submitted.record.hash)
                .context("a submitted job's hash")?;
            jobs.transition(&h, &confide_service::Transition::Expire, "coordinator", now)
                .map_err(|err| anyhow::anyhow!("{err}"))?;
        }
        hashes.push(hash);
    }
    // The first job ran to its end, so that its page has rounds and curves to draw.
    complete_first(&jobs, &hashes[0], &template, now)?;
    let fill_s = started.elapsed().as_secs_f64();
    drop(ledger);

    let node = Node {
        node: "node".into(),
        node_id: creds.id(),
        admin: "127.0.0.1:7103".into(),
        coordinator: "127.0.0.1:7100".into(),
        approver: Some(owner.id()),
        approver_key: None,
        datasets: vec![Dataset {
            name: dataset.into(),
            ledger: Some(dataset.into()),
            policy: None,
        }],
        ledger: Some(ledger_path),
        store,
        inbox: inbox.clone(),
        creds,
        heard: Arc::new(Mutex::new(Heartbeats::default())),
        started_ms: 0,
        verified: Mutex::default(),
    };
    let chrome = Chrome {
        party: owner.id(),
        who: owner.id(),
        csrf: "0".repeat(64),
        node: "node".into(),
        signs_here: true,
    };
    let page = |r: Result<String, (axum::http::StatusCode, String)>| {
        r.map(|s| s.len())
            .map_err(|(c, m)| anyhow::anyhow!("{c}: {m}"))
    };
    let (json_ms, json_bytes) = time(b.repeats, || {
        Ok(serde_json::to_string_pretty(&inbox.list()?)?.len())
    })?;
    let mut views = Vec::new();
    let css = include_str!("../assets/dashboard.css").len();
    for (name, (ms, bytes)) in [
        ("inbox", time(b.repeats, || page(node.inbox_page(&chrome)))?),
        (
            "inbox job",
            time(b.repeats, || page(node.inbox_job_page(&chrome, &hashes[0])))?,
        ),
        ("jobs", time(b.repeats, || page(node.jobs_page(&chrome)))?),
        (
            "job",
            time(b.repeats, || page(node.job_page(&chrome, &hashes[1])))?,
        ),
        (
            "budget",
            time(b.repeats, || page(node.budget_page(&chrome)))?,
        ),
        ("audit", time(b.repeats, || page(node.audit_page(&chrome)))?),
        (
            "health",
            time(b.repeats, || page(node.health_page(&chrome)))?,
        ),
    ] {
        views.push(json!({
            "view": name,
            "render_ms": ms,
            "html_kb": bytes as f64 / 1024.0,
            "with_stylesheet_kb": (bytes + css) as f64 / 1024.0,
            "vs_json_listing": ms / json_ms.max(1e-9),
        }));
    }

    // The coordinator's dashboard over the same jobs, as their model owner.
    let board = crate::board::Board {
        control: confide_net::control::ControlService::new(
            jobs,
            "operator".into(),
            node.creds.revocations.clone(),
        ),
        ca: node.creds.ca_der()?,
        name: "coordinator".into(),
        admin: "127.0.0.1:7102".into(),
        audit: confide_governance::audit::AuditLog::new(
            Arc::new(confide_store::MemoryStore::new()),
        ),
        sessions: crate::sessions::SessionBook::new("operator"),
    };
    let owner_chrome = crate::board::Chrome {
        who: "owner".into(),
        party: owner.id(),
        csrf: "0".repeat(64),
        name: "coordinator".into(),
        operator: false,
    };
    for (name, (ms, bytes)) in [
        (
            "coordinator: jobs",
            time(b.repeats, || page(board.jobs_page(&owner_chrome)))?,
        ),
        (
            "coordinator: one job",
            time(b.repeats, || {
                page(board.job_page(&owner_chrome, &hashes[0]))
            })?,
        ),
    ] {
        views.push(json!({
            "view": name,
            "render_ms": ms,
            "html_kb": bytes as f64 / 1024.0,
            "with_stylesheet_kb": (bytes + css) as f64 / 1024.0,
            "vs_json_listing": ms / json_ms.max(1e-9),
        }));
    }

    // "Verify now" on a log of 20 entries per job, signed by a coordinator key.
    let log = confide_governance::audit::AuditLog::new(Arc::new(confide_store::MemoryStore::new()));
    let coordinator = Identity::generate().map_err(anyhow::Error::msg)?;
    for h in &hashes {
        for r in 0..20 {
            log.record(&confide_governance::audit::Event::now(
                confide_governance::audit::EventKind::Round,
                h,
                "coordinator",
                json!({ "round": r }),
            ))?;
        }
    }
    log.sign_head(&coordinator)?;
    let export = log.export(&coordinator.public_key())?;
    let coordinator_identity = confide_net::pki::PeerIdentity {
        name: "coordinator".into(),
        role: Role::Coordinator,
        public_key: coordinator.public_key().to_vec(),
        id: coordinator.id(),
    };
    let jobs: Vec<(String, String)> = hashes.iter().map(|h| (h.clone(), String::new())).collect();
    let (verify_ms, rows) = time(b.repeats.min(5), || {
        let v = crate::dashboard_views::check_log(
            export.clone(),
            Some(&coordinator_identity),
            None,
            &jobs,
            &("node".into(), node.node_id.clone()),
        );
        anyhow::ensure!(v.ok, "the bench log does not verify: {:?}", v.lines);
        let shown = v.entries.len() + v.older;
        *node
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
        Ok(shown)
    })?;
    // The audit view again, now with the verification's entries.
    let (ms, bytes) = time(b.repeats, || page(node.audit_page(&chrome)))?;
    views.push(json!({
        "view": "audit, after verify now",
        "render_ms": ms,
        "html_kb": bytes as f64 / 1024.0,
        "with_stylesheet_kb": (bytes + css) as f64 / 1024.0,
        "vs_json_listing": ms / json_ms.max(1e-9),
    }));
    let out = json!({
        "benchmark": "dashboard",
        "jobs": b.jobs,
        "repeats": b.repeats,
        "store_fill_s": fill_s,
        "baseline": { "what": "the inbox as JSON (confide node inbox list)", "ms": json_ms, "kb": json_bytes as f64 / 1024.0 },
        "views": views,
        "targets": { "render_ms": 300, "page_kb": 200 },
        "verify_now": { "log_entries": hashes.len() * 20, "ms": verify_ms, "entries_of_these_jobs": rows },
    });
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}
