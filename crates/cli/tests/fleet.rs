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
    let host_policy = co_signature_policy(&fed);
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    // host's owner decides with its own approval key, which the daemon never holds.
    let (host_key, host_approver) = fed.approver_key("host");
    let host_data = root().join("data/breast_homo/breast_homo_host.csv");
    let mut host = fed.node_serving(
        "host",
        &fleet,
        &[(&host_data, &host_policy)],
        (&[], &["--approver", &host_approver]),
        "host.log",
    );
    let host_admin = host.addrs[0].clone();
    let host_key = path(&host_key).to_string();

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
        let out = fed.inbox(&host_admin, "host", &["approve", job, "--key", &host_key]);
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
        &[
            "reject",
            "fleet-rejected",
            "--reason",
            "not this study",
            "--key",
            &host_key,
        ],
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
        let out = fed.inbox(
            &host_admin,
            "host",
            &["approve", "fleet-long", "--key", &host_key],
        );
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

/// RES-006 and RES-007: the coordinator daemon aborts itself at `point` in round 3 of a
/// 6-round job under `scheme` (as `kill -9` would), and is started again on the same ports
/// and store. It goes on from its last committed round; the owners whose update for the lost
/// round had left send the same bytes again; the job completes with the model of an
/// uninterrupted one-shot run, and the key holder decrypted each round once.
fn coordinator_killed_at(point: &str, scheme: &str) {
    coordinator_killed_with(point, scheme, "");
}

/// [`coordinator_killed_at`] with `extra` appended to the job file.
fn coordinator_killed_with(point: &str, scheme: &str, job_extra: &str) {
    coordinator_killed_in(3, point, scheme, job_extra);
}

/// [`coordinator_killed_with`] at `point` in round `at` (of 6).
fn coordinator_killed_in(at: u32, point: &str, scheme: &str, job_extra: &str) {
    let fed = Fed::new();
    let mut keyholder = fed.keyholder();
    let root_key = fed.dir.path().join("verify.key");
    std::fs::write(&root_key, hex_of(&[0x5a; 32])).expect("write");
    let mut aggregators = Vec::new();
    let mut extra = vec!["--keyholder".to_string(), keyholder.addrs[1].clone()];
    if scheme == "shares" {
        for i in 1..=2 {
            let a = fed.aggregator(i, &root_key);
            extra.extend(["--aggregator".to_string(), a.addrs[1].clone()]);
            aggregators.push(a);
        }
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let listen = fed.listen("coordinator");
    let crash = format!("{point}@{at}");
    let mut first = fed.coordinator_at(
        (&listen, &listen),
        &extra,
        &[("CONFIDE_CRASH_AT", &crash)],
        "coordinator-1.log",
    );
    let (control, fleet) = (first.addrs[1].clone(), first.addrs[2].clone());
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let job = format!("resume-{scheme}-{point}");
    submit_until_abort(
        &fed,
        &control,
        (&job, scheme, job_extra),
        &mut first,
        &crash,
    );
    let mut second = fed.coordinator_at((&control, &fleet), &extra, &[], "coordinator-2.log");
    assert!(
        second.log().contains("it goes on after round"),
        "{}",
        second.log()
    );
    wait_for(180, &job, || {
        let s = state_of(&fed, &control, &job);
        assert!(
            !["failed", "cancelled", "rejected"].contains(&s.as_str()),
            "ended {s}:\n{}\n{}\n{}",
            second.log(),
            guest.log(),
            host.log()
        );
        (s == "completed").then_some(())
    });
    same_model_as_one_shot(&fed, &control, &job);
    // The report says where it went on, has the 6 rounds once each, both owners in each.
    let report: Value = serde_json::from_slice(
        &std::fs::read(
            fed.dir
                .path()
                .join(format!("served-{job}/coordinator-report.json")),
        )
        .expect("report"),
    )
    .expect("json");
    let resumed_after = if point == "coordinator-committed" {
        at
    } else {
        at - 1
    };
    assert!(
        report["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e
                .as_str()
                .is_some_and(|e| e.ends_with(&format!("goes on after round {resumed_after}")))),
        "{report}"
    );
    let history = report["history"].as_array().expect("history");
    assert_eq!(
        history
            .iter()
            .map(|r| r["round"].as_u64().expect("round"))
            .collect::<Vec<_>>(),
        (1..=6).collect::<Vec<u64>>(),
        "{report}"
    );
    assert!(
        history
            .iter()
            .all(|r| r["contributors"].as_array().map(Vec::len) == Some(2)),
        "{report}"
    );
    // Each round was decrypted once (a round unsealed before the crash was answered again
    // from the key holder's record), and nobody retrained: 6 rounds, 6 updates each.
    if scheme == "paillier" {
        let state = std::fs::read_to_string(fed.fed.join("keyholder-state.jsonl"))
            .expect("key holder state");
        for round in 1..=6 {
            assert_eq!(
                state
                    .lines()
                    .filter(|l| l.contains(&format!("\"round\":{round},")))
                    .count(),
                1,
                "round {round}: {state}"
            );
        }
    }
    for d in [&mut guest, &mut host] {
        assert!(!d.log().contains("RES-005"), "{}", d.log());
    }
    for d in [&mut guest, &mut host, &mut second, &mut keyholder]
        .into_iter()
        .chain(aggregators.iter_mut())
    {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// The owners' updates for round 3 are in; the key holder has not been asked.
#[test]
fn a_coordinator_killed_after_collecting_a_round_resends_nothing_new() {
    coordinator_killed_at("coordinator-collected", "paillier");
}

/// The key holder decrypted round 3; the coordinator died before committing it.
#[test]
fn a_coordinator_killed_after_the_unseal_gets_the_same_sum_again() {
    coordinator_killed_at("coordinator-unsealed", "paillier");
}

/// Under `shares`, the aggregators released round 3's partial sums; the coordinator died
/// before committing it. The same updates make the identical request, which each aggregator
/// answers again with the same set of owners (RES-009).
#[test]
fn a_coordinator_killed_after_the_aggregators_released_gets_the_same_sums_again() {
    coordinator_killed_at("coordinator-unsealed", "shares");
}

/// Round 3 committed under `shares`: the aggregator daemons kept the job's keys, and the
/// job goes on at round 4.
#[test]
fn a_coordinator_killed_between_shares_rounds_goes_on() {
    coordinator_killed_at("coordinator-committed", "shares");
}

/// RES-011 under `masking`: every stage of round 3 is in, the unmasking answers included; the
/// coordinator died before committing it. The owners rebuild the round's masking clients from
/// their stored seeds and answer each stage's identical broadcast with the same bytes: nobody
/// answers the unmasking stage for another set of survivors, and the sum is the same.
#[test]
fn a_coordinator_killed_after_a_masking_round_gets_the_same_answers_again() {
    coordinator_killed_at("coordinator-collected", "masking");
}

/// RES-011 under `masking`, cut off mid-round: the owners' key shares for round 3 are in, the
/// next stage's broadcast never left.
#[test]
fn a_coordinator_killed_mid_masking_round_replays_it() {
    coordinator_killed_at("coordinator-stage-2", "masking");
}

/// The last round committed, the daemon stops before the job's end is stored (while it waits
/// for the final cosignatures): started again, it goes on to the job's end and releases the
/// model of the uninterrupted run.
#[test]
fn a_coordinator_killed_after_its_last_round_still_releases_the_model() {
    coordinator_killed_in(6, "coordinator-committed", "plain", "");
}

/// A server optimiser's moments are part of the checkpoint: under FedAdam the job goes on at
/// round 4 with the moments of round 3, and the model is the uninterrupted run's.
#[test]
fn a_coordinator_killed_between_fedadam_rounds_keeps_the_optimiser_moments() {
    coordinator_killed_with(
        "coordinator-committed",
        "plain",
        "\n[training.server_optimizer]\nkind = \"fedadam\"\n",
    );
}

/// Round 3 committed under `masking`: the job goes on at round 4 with fresh masks from a
/// model nobody trained from.
#[test]
fn a_coordinator_killed_between_masking_rounds_goes_on() {
    coordinator_killed_at("coordinator-committed", "masking");
}

/// RES-007 and RES-008: the node daemon `guest` aborts itself in round 3 of a 6-round
/// `paillier` job right after it wrote its update to its store, before sending it, and is
/// started again on the same store. It rejoins (no second approval), sends the stored update
/// when the coordinator asks for round 3, and the job completes with the model of an
/// uninterrupted run; the key holder decrypted round 3 once.
#[test]
fn a_node_daemon_killed_mid_round_rejoins_and_sends_its_stored_update() {
    let fed = Fed::new();
    let mut keyholder = fed.keyholder();
    let mut coordinator = fed.coordinator(&keyholder.addrs[1]);
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    let policies = root().join("examples/policies");
    let guest_policy = policies.join("breast_homo_guest.toml");
    let mut first = fed.node_with(
        "guest",
        &fleet,
        &guest_policy,
        &[("CONFIDE_CRASH_AT", "node-recorded@3")],
        "guest-1.log",
    );
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let job = "resume-node";
    submit_until_abort(
        &fed,
        &control,
        (job, "paillier", ""),
        &mut first,
        "node-recorded@3",
    );
    let mut second = fed.node_with("guest", &fleet, &guest_policy, &[], "guest-2.log");
    wait_for(180, job, || {
        let s = state_of(&fed, &control, job);
        assert!(
            !["failed", "cancelled", "rejected"].contains(&s.as_str()),
            "ended {s}:\n{}\n{}\n{}",
            coordinator.log(),
            second.log(),
            host.log()
        );
        (s == "completed").then_some(())
    });
    same_model_as_one_shot(&fed, &control, job);
    assert!(
        second
            .log()
            .contains("rejoins job `resume-node` after round 3"),
        "{}",
        second.log()
    );
    let state = std::fs::read_to_string(fed.fed.join("keyholder-state.jsonl")).expect("state");
    assert_eq!(
        state.lines().filter(|l| l.contains("\"round\":3,")).count(),
        1,
        "{state}"
    );
    for d in [&mut second, &mut host, &mut coordinator, &mut keyholder] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// A job nobody approves expires `--expire-after` seconds after its submission: `job status`
/// says `expired` with exit code 6, and the daemon goes on serving.
#[test]
fn a_job_nobody_approves_expires() {
    let fed = Fed::new();
    let mut coordinator = fed.coordinator_with(&["--expire-after", "1.5"]);
    let control = coordinator.addrs[1].clone();
    let m = fed.manifest("fleet-expires", "plain", 3);
    let out = fed.job(&control, "owner", &["submit", path(&m)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        state_of(&fed, &control, "fleet-expires"),
        "awaiting_approval"
    );
    wait_for(30, "the job to expire", || {
        (state_of(&fed, &control, "fleet-expires") == "expired").then_some(())
    });
    let out = fed.job(&control, "owner", &["status", "fleet-expires"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(coordinator.terminate(), Some(0), "{}", coordinator.log());
}

/// RES-009 and RES-010: aggregator daemon 1 of a `shares` job aborts itself in round 3 right
/// after recording its answer to the round's contributions, before sending it, and is started
/// again on its address and store. It unseals the job's key seed, reads its records, answers
/// the coordinator's identical request again (the coordinator asked again meanwhile), and the
/// job completes with the model of an uninterrupted one-shot run.
#[test]
fn an_aggregator_daemon_killed_mid_round_comes_back_with_the_jobs_key_and_record() {
    let fed = Fed::new();
    let root_key = fed.dir.path().join("verify.key");
    std::fs::write(&root_key, hex_of(&[0x5a; 32])).expect("write");
    let listen = fed.listen("aggregator-1");
    let mut first = fed.aggregator_at(
        1,
        &root_key,
        &listen,
        &[("CONFIDE_CRASH_AT", "aggregator-recorded@3")],
        "aggregator-1-first.log",
    );
    let a1 = first.addrs[1].clone();
    let mut a2 = fed.aggregator(2, &root_key);
    let a2_addr = a2.addrs[1].clone();
    let mut coordinator = fed.coordinator_with(&["--aggregator", &a1, "--aggregator", &a2_addr]);
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let job = "resume-aggregator";
    submit_until_abort(
        &fed,
        &control,
        (job, "shares", ""),
        &mut first,
        "aggregator-recorded@3",
    );
    let mut second = fed.aggregator_at(1, &root_key, &a1, &[], "aggregator-1-second.log");
    assert!(
        second.log().contains("recovered (1 open jobs)"),
        "{}",
        second.log()
    );
    wait_for(180, job, || {
        let s = state_of(&fed, &control, job);
        assert!(
            !["failed", "cancelled", "rejected"].contains(&s.as_str()),
            "ended {s}:\n{}\n{}\n{}",
            coordinator.log(),
            second.log(),
            guest.log()
        );
        (s == "completed").then_some(())
    });
    same_model_as_one_shot(&fed, &control, job);
    // The job ended: its key material and records are gone from the restarted aggregator.
    wait_for(30, "the job to close at aggregator-1", || {
        get(&second.addrs[0], "/metrics")
            .contains("confide_aggregator_open_jobs 0")
            .then_some(())
    });
    for d in [
        &mut guest,
        &mut host,
        &mut coordinator,
        &mut second,
        &mut a2,
    ] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// A node daemon that serves two datasets runs each job on the first one whose checks approve
/// it: here `guest` serves the digits CSV first (its policy allows the job, but the data does not
/// fit the job's schema) and its breast_homo CSV second. The job runs on the second, with the
/// model of the one-shot run on that data; the inbox names the dataset.
#[test]
fn a_node_daemon_with_two_datasets_runs_a_job_on_the_one_that_fits() {
    let fed = Fed::new();
    let mut coordinator = fed.coordinator_with(&[]);
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    let policies = root().join("examples/policies");
    let guest_policy = policies.join("breast_homo_guest.toml");
    let digits_policy = fed.dir.path().join("digits-policy.toml");
    std::fs::write(
        &digits_policy,
        std::fs::read_to_string(&guest_policy)
            .expect("policy")
            .replace("name = \"breast_homo_guest\"", "name = \"digits_guest\""),
    )
    .expect("write");
    let digits = root().join("data/digits/digits.csv");
    let breast = root().join("data/breast_homo/breast_homo_guest.csv");
    let mut guest = fed.node_serving(
        "guest",
        &fleet,
        &[(&digits, &digits_policy), (&breast, &guest_policy)],
        (&[], &[]),
        "guest.log",
    );
    let guest_admin = guest.addrs[0].clone();
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let m = fed.manifest("fleet-two-datasets", "plain", 3);
    let out = fed.job(&control, "owner", &["submit", path(&m), "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        guest.log()
    );
    same_model_as_one_shot(&fed, &control, "fleet-two-datasets");
    let list = json(&fed.inbox(&guest_admin, "guest", &["list"]));
    let entry = &list.as_array().expect("entries")[0];
    assert_eq!(entry["source"], 1, "{list}");
    assert_eq!(entry["dataset"], "breast_homo_guest", "{list}");
    assert!(
        entry["why"]
            .as_str()
            .is_some_and(|w| w.starts_with("dataset 2: ")),
        "{list}"
    );
    // The inbox keeps each dataset's review: the digits refuse the job, breast_homo takes it.
    let reviews = entry["datasets"].as_array().expect("per-dataset reviews");
    assert_eq!(reviews.len(), 2, "{list}");
    assert_eq!(reviews[1]["dataset"], "breast_homo_guest", "{list}");
    assert!(
        reviews[0]["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("reject")),
        "{list}"
    );
    assert!(
        reviews[1]["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("approve")),
        "{list}"
    );
    for d in [&mut guest, &mut host, &mut coordinator] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// The owner's approval key off the daemon: `host` runs with `--approver` (the id of a key
/// made by `confide keygen`), so a co-signature by the node's own identity key is refused, and
/// the owner's `inbox approve --key` runs the job.
#[test]
fn an_owner_approves_with_a_key_the_node_daemon_does_not_hold() {
    let fed = Fed::new();
    let mut coordinator = fed.coordinator_with(&[]);
    let (control, fleet) = (coordinator.addrs[1].clone(), coordinator.addrs[2].clone());
    let (key, approver) = fed.approver_key("host");
    let policies = root().join("examples/policies");
    let host_policy = co_signature_policy(&fed);
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let host_data = root().join("data/breast_homo/breast_homo_host.csv");
    let mut host = fed.node_serving(
        "host",
        &fleet,
        &[(&host_data, &host_policy)],
        (&[], &["--approver", &approver]),
        "host.log",
    );
    let admin = host.addrs[0].clone();
    let m = fed.manifest("fleet-approver", "plain", 3);
    let out = fed.job(&control, "owner", &["submit", path(&m)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(30, "host's inbox", || {
        let list = json(&fed.inbox(&admin, "host", &["list"]));
        (list[0]["status"] == "pending").then_some(())
    });
    // guest's daemon has no --approver: it takes no decision from its inbox at all.
    let guest_admin = guest.addrs[0].clone();
    let none = fed.inbox(&guest_admin, "guest", &["approve", "fleet-approver"]);
    assert_eq!(
        none.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("without --approver"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    // The node's own key is not the owner's.
    let refused = fed.inbox(&admin, "host", &["approve", "fleet-approver"]);
    assert_eq!(
        refused.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let approved = fed.inbox(
        &admin,
        "host",
        &["approve", "fleet-approver", "--key", path(&key)],
    );
    assert_eq!(
        approved.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&approved.stderr)
    );
    wait_for(60, "fleet-approver", || {
        (state_of(&fed, &control, "fleet-approver") == "completed").then_some(())
    });
    for d in [&mut guest, &mut host, &mut coordinator] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// Submits the 6-round job `job` under `scheme` as its owner, and waits for the daemon
/// `first` to abort itself at its crash point (its log names `point`).
fn submit_until_abort(
    fed: &Fed,
    control: &str,
    (job, scheme, extra): (&str, &str, &str),
    first: &mut common::daemons::Daemon,
    point: &str,
) {
    let m = fed.manifest_with(job, scheme, 6, extra);
    let out = fed.job(control, "owner", &["submit", path(&m)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(120, "the daemon to abort", || {
        first.child.try_wait().expect("wait").map(|_| ())
    });
    assert!(
        first.log().contains(&format!("crash point {point}")),
        "{}",
        first.log()
    );
}

/// host's example policy, with its rule asking for the owner's co-signature.
fn co_signature_policy(fed: &Fed) -> std::path::PathBuf {
    let policy = fed.dir.path().join("host-policy.toml");
    std::fs::write(
        &policy,
        std::fs::read_to_string(root().join("examples/policies/breast_homo_host.toml"))
            .expect("policy")
            .replace("approval = \"automatic\"", "approval = \"co-signature\""),
    )
    .expect("write");
    policy
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
