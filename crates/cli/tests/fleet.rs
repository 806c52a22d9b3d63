//! The standing federation end to end, as real processes over mutual TLS: a coordinator
//! daemon (`confide coordinator serve`), two node daemons (`confide node serve`), and model
//! owners who submit jobs. One node's policy approves on its own; the other's asks its owner,
//! who approves and rejects from the inbox. Two jobs run at once and complete, the recipient
//! downloads the model, a job cancelled while it runs stops, and every daemon ends with
//! SIGTERM and exit code 0.

mod common;

use std::process::Command;

use common::daemons::{Fed, get, json, path, state_of, wait_for};
use common::root;
use serde_json::Value;

#[test]
fn node_daemons_approve_run_and_finish_jobs_from_a_standing_coordinator() {
    let fed = Fed::new();
    let mut keyholder = fed.keyholder();
    let mut coordinator = fed.coordinator(&keyholder.addrs[1]);
    let (admin, control, fleet) = (
        coordinator.addrs[0].clone(),
        coordinator.addrs[1].clone(),
        coordinator.addrs[2].clone(),
    );
    // guest's policy approves by itself; host's asks its owner (a co-signature).
    let policies = root().join("examples/policies");
    let host_policy = fed.dir.path().join("host-policy.toml");
    std::fs::write(
        &host_policy,
        std::fs::read_to_string(policies.join("breast_homo_host.toml"))
            .expect("policy")
            .replace("approval = \"automatic\"", "approval = \"co-signature\""),
    )
    .expect("write");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &host_policy);
    let host_admin = host.addrs[0].clone();

    let a = fed.manifest("fleet-masking", "masking", 3);
    let b = fed.manifest("fleet-rejected", "plain", 3);
    let c = fed.manifest("fleet-plain", "plain", 3);
    let p = fed.manifest("fleet-paillier", "paillier", 3);
    for m in [&a, &b, &c, &p] {
        let out = fed.job(&control, "owner", &["submit", path(m)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // host's inbox holds all three, waiting for its owner; guest approved all three.
    let pending = wait_for(30, "host's inbox", || {
        let out = fed.inbox(&host_admin, "host", &["list"]);
        let list = json(&out);
        let n = list
            .as_array()
            .map_or(0, |l| l.iter().filter(|e| e["status"] == "pending").count());
        (n == 4).then_some(list)
    });
    assert!(
        pending[0]["why"]
            .as_str()
            .unwrap_or_default()
            .contains("co-signature"),
        "{pending}"
    );
    assert_eq!(
        state_of(&fed, &control, "fleet-masking"),
        "awaiting_approval"
    );

    // host's owner approves two from the inbox and rejects one, each signed by its key.
    for job in ["fleet-masking", "fleet-plain", "fleet-paillier"] {
        let out = fed.inbox(&host_admin, "host", &["approve", job]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json(&out)["status"], "approved");
    }
    // A stranger's key cannot approve for host.
    let out = fed.inbox(
        &host_admin,
        "guest",
        &["reject", "fleet-rejected", "--reason", "x"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fed.inbox(
        &host_admin,
        "host",
        &["reject", "fleet-rejected", "--reason", "not this study"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The approved jobs run (two at once, the third queued) and complete; the rejected one
    // ends rejected.
    for job in ["fleet-masking", "fleet-plain", "fleet-paillier"] {
        wait_for(180, job, || {
            let s = state_of(&fed, &control, job);
            assert!(
                !["failed", "cancelled", "rejected", "expired"].contains(&s.as_str()),
                "{job} ended {s}:\n{}\n{}\n{}",
                coordinator.log(),
                guest.log(),
                host.log()
            );
            (s == "completed").then_some(())
        });
    }
    let rejected = json(&fed.job(&control, "owner", &["status", "fleet-rejected"]));
    assert_eq!(rejected["state"]["name"], "rejected", "{rejected}");
    assert_eq!(rejected["state"]["owner"], "host");
    assert!(
        rejected["state"]["rule"]
            .as_str()
            .unwrap_or_default()
            .contains("not this study")
    );

    // The recipient downloads the model; a stranger may not.
    let out_dir = fed.dir.path().join("model");
    let out = fed.job(
        &control,
        "owner",
        &["download", "fleet-masking", "--out", path(&out_dir)],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out_dir.join("model.safetensors").is_file());
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("coordinator-report.json")).expect("report"),
    )
    .expect("json");
    assert_eq!(report["status"], "finished", "{report}");
    assert_eq!(report["rounds"], 3, "{report}");
    assert_eq!(report["scheme"], "masking", "{report}");
    // The same jobs, run one-shot by `confide simulate`, give the same models bit for bit:
    // the service runs the same code path (the masks cancel, the key holder decrypts the
    // same sums; training is seeded by the job).
    for job in ["fleet-masking", "fleet-paillier"] {
        same_model_as_one_shot(&fed, &control, job);
    }
    // The key holder erased each job's key when the job ended.
    let keys = get(&keyholder.addrs[0], "/metrics");
    assert!(keys.contains("confide_keyholder_open_jobs 0"), "{keys}");
    let out = fed.job(
        &control,
        "mallory",
        &["download", "fleet-masking", "--out", path(&out_dir)],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The operator sees both nodes; the inboxes say how each job ended for them.
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args([
            "nodes",
            "list",
            "--format",
            "json",
            "--coordinator",
            &control,
        ])
        .args(["--fed", path(&fed.fed), "--name", "coordinator"])
        .output()
        .expect("nodes list");
    let nodes = json(&out);
    let names: Vec<&str> = nodes
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["guest", "host"], "{nodes}");
    let list = json(&fed.inbox(&host_admin, "host", &["list"]));
    let ended = list
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["status"] == "ended")
        .count();
    assert_eq!(ended, 3, "{list}");

    // The metrics moved: two completed, one rejected, both nodes connected.
    let metrics = get(&admin, "/metrics");
    for line in [
        "confide_jobs{state=\"completed\"} 3",
        "confide_jobs{state=\"rejected\"} 1",
        "confide_nodes_connected 2",
        // Three jobs of 3 rounds, two owners each; the paillier job's 3 sums were unsealed.
        "confide_rounds_total 9",
        "confide_contributions_total{outcome=\"summed\"} 18",
        "confide_unseals_total 3",
        "confide_round_seconds_count 9",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    // A job cancelled while it runs stops, and stays cancelled.
    let long = fed.manifest("fleet-long", "plain", 500);
    assert_eq!(
        fed.job(&control, "owner", &["submit", path(&long)])
            .status
            .code(),
        Some(0)
    );
    wait_for(30, "fleet-long in host's inbox", || {
        let out = fed.inbox(&host_admin, "host", &["approve", "fleet-long"]);
        (out.status.code() == Some(0)).then_some(())
    });
    wait_for(60, "fleet-long running", || {
        let r = json(&fed.job(&control, "owner", &["status", "fleet-long"]));
        (r["state"]["name"] == "running" && r["state"]["round"].as_u64() >= Some(2)).then_some(())
    });
    let out = fed.job(
        &control,
        "owner",
        &["cancel", "fleet-long", "--reason", "enough"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)["state"]["name"], "cancelled");
    // The nodes hear that the job no longer runs, and end it.
    wait_for(60, "the nodes to end fleet-long", || {
        let list = json(&fed.inbox(&host_admin, "host", &["list"]));
        list.as_array()?
            .iter()
            .any(|e| e["job_id"] == "fleet-long" && e["status"] == "ended")
            .then_some(())
    });
    assert_eq!(state_of(&fed, &control, "fleet-long"), "cancelled");

    for d in [&mut guest, &mut host, &mut coordinator, &mut keyholder] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// RES-001…003 with a long-running key holder: it aborts itself right after recording round
/// 3's decryption of a `lattice` job (a fresh BFV key, sealed in its store), and is started
/// again on its address. It unseals the job's key from its store before it serves, the
/// coordinator asks it again (RES-002), it answers the identical request (RES-001), and the
/// job completes with the model of an uninterrupted one-shot run.
#[test]
fn a_key_holder_daemon_killed_mid_job_comes_back_with_the_jobs_sealed_key() {
    let fed = Fed::new();
    let mut first = fed.keyholder_at(
        "127.0.0.1:0",
        &[("CONFIDE_CRASH_AT", "keyholder-after-record@3")],
        "keyholder-1.log",
    );
    let listen = first.addrs[1].clone();
    let mut coordinator = fed.coordinator(&listen);
    let control = coordinator.addrs[1].clone();
    let fleet = coordinator.addrs[2].clone();
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let m = fed.manifest("fleet-lattice", "lattice", 6);
    assert_eq!(
        fed.job(&control, "owner", &["submit", path(&m)])
            .status
            .code(),
        Some(0)
    );
    // The key holder aborts itself in round 3, after its record.
    wait_for(120, "the key holder to abort", || {
        first.child.try_wait().expect("wait").map(|_| ())
    });
    assert!(
        first.log().contains("keyholder-after-record"),
        "{}",
        first.log()
    );
    let mut second = fed.keyholder_at(&listen, &[], "keyholder-2.log");
    assert!(
        second.log().contains("recovered (1 open jobs)"),
        "{}",
        second.log()
    );
    wait_for(180, "fleet-lattice", || {
        let s = state_of(&fed, &control, "fleet-lattice");
        assert!(
            !["failed", "cancelled", "rejected"].contains(&s.as_str()),
            "ended {s}:\n{}\n{}\n{}",
            coordinator.log(),
            second.log(),
            guest.log()
        );
        (s == "completed").then_some(())
    });
    same_model_as_one_shot(&fed, &control, "fleet-lattice");
    // Round 3 was decrypted once, before the crash; the restarted key holder answered the
    // identical request from its record, and the job's key is gone now.
    let state = std::fs::read_to_string(fed.fed.join("keyholder-state.jsonl")).expect("state");
    assert_eq!(
        state.lines().filter(|l| l.contains("\"round\":3,")).count(),
        1,
        "{state}"
    );
    let keys = get(&second.addrs[0], "/metrics");
    assert!(keys.contains("confide_keyholder_open_jobs 0"), "{keys}");
    for d in [&mut guest, &mut host, &mut coordinator, &mut second] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// `shares` through two aggregator daemons: the coordinator opens the job at both (each makes
/// fresh key material, and the job's verify key from the shared root), the owners' shares go to
/// them, the job completes with the model of a one-shot run, and both drop the job's key
/// material at the end.
#[test]
fn a_shares_job_runs_through_aggregator_daemons() {
    let fed = Fed::new();
    let root_key = fed.dir.path().join("verify.key");
    std::fs::write(&root_key, hex_of(&[0x5a; 32])).expect("write");
    let mut aggregators = [fed.aggregator(1, &root_key), fed.aggregator(2, &root_key)];
    let (a1, a2) = (
        aggregators[0].addrs[1].clone(),
        aggregators[1].addrs[1].clone(),
    );
    let mut coordinator = fed.coordinator_with(&["--aggregator", &a1, "--aggregator", &a2]);
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let m = fed.manifest("fleet-shares", "shares", 3);
    let out = fed.job(&control, "owner", &["submit", path(&m), "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        coordinator.log(),
        guest.log()
    );
    same_model_as_one_shot(&fed, &control, "fleet-shares");
    for a in &aggregators {
        let m = get(&a.addrs[0], "/metrics");
        assert!(m.contains("confide_aggregator_open_jobs 0"), "{m}");
    }
    for d in [&mut guest, &mut host, &mut coordinator] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
    for a in &mut aggregators {
        assert_eq!(a.terminate(), Some(0), "{}", a.log());
    }
}

/// `threshold` (Shamir 2-of-3 here) through three aggregator daemons: the same path as
/// `shares`, without a verify key; the model is the one-shot run's.
#[test]
fn a_threshold_job_runs_through_aggregator_daemons() {
    let fed = Fed::new();
    let root_key = fed.dir.path().join("verify.key");
    std::fs::write(&root_key, hex_of(&[0x3c; 32])).expect("write");
    let mut aggregators: Vec<_> = (1..=3).map(|i| fed.aggregator(i, &root_key)).collect();
    let addrs: Vec<String> = aggregators.iter().map(|a| a.addrs[1].clone()).collect();
    let mut args = Vec::new();
    for a in &addrs {
        args.extend(["--aggregator", a.as_str()]);
    }
    let mut coordinator = fed.coordinator_with(&args);
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let m = fed.manifest_with(
        "fleet-threshold",
        "threshold",
        3,
        "\n[aggregators]\ncount = 3\n",
    );
    let out = fed.job(&control, "owner", &["submit", path(&m), "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        coordinator.log(),
        guest.log()
    );
    same_model_as_one_shot(&fed, &control, "fleet-threshold");
    for d in [&mut guest, &mut host, &mut coordinator] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
    for a in &mut aggregators {
        assert_eq!(a.terminate(), Some(0), "{}", a.log());
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads job `job`'s model as its owner and checks it bit for bit against the same job
/// run one-shot by `confide simulate`.
fn same_model_as_one_shot(fed: &Fed, control: &str, job: &str) {
    let served = fed.dir.path().join(format!("served-{job}"));
    let out = fed.job(control, "owner", &["download", job, "--out", path(&served)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let work = fed.dir.path().join(format!("one-shot-{job}"));
    let one_shot = common::simulate(&fed.dir.path().join(format!("{job}.toml")), &work, &[]);
    assert_eq!(one_shot.code, 0, "{}", one_shot.stderr);
    assert_eq!(
        std::fs::read(work.join("run/model/model.safetensors")).expect("one-shot model"),
        std::fs::read(served.join("model.safetensors")).expect("served model"),
        "{job}: the served model differs from the one-shot run's"
    );
}
