//! The owner's dashboard on the node daemon's admin port, over plain HTTP: a session only from
//! the owner's approval key, CSRF and same-site checks on every action, decisions signed with
//! the owner's encrypted key, the revoke path, and the safe headers on every response. The
//! browser test (`tests/browser/`, in `.ci/run`) drives the same pages in Chromium.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemons::{Fed, json, path, state_of, wait_for};
use common::root;

const PASSPHRASE: &str = "correct horse battery staple";

/// One HTTP/1.1 exchange: status, headers (lower-case names), body.
fn http(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, HashMap<String, String>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin port");
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    // Bodies may be binary (a model): lossy, for the length and the text checks.
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (code, headers, body.to_string())
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={enc}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// An approval key encrypted under [`PASSPHRASE`]: its file and party id.
fn encrypted_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{name}-approver.key"));
    let made = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["keygen", "--out", path(&key), "--no-tls-key"])
        .args(["--passphrase-env", "DASH_PASS"])
        .env("DASH_PASS", PASSPHRASE)
        .output()
        .expect("keygen");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    (
        key.clone(),
        json(&made)["id"].as_str().expect("id").to_string(),
    )
}

/// A policy for breast_homo under plain DP jobs with a lifetime budget, approving by `approval`.
fn policy(dir: &Path, dataset: &str, approval: &str) -> PathBuf {
    let p = dir.join(format!("{dataset}.toml"));
    std::fs::write(
        &p,
        format!(
            "[dataset]\nname = \"{dataset}\"\nexpires = 2030-12-31T23:59:59Z\n\
             lifetime_epsilon = 10.0\nlifetime_delta = 1e-5\n\n[[rule]]\nname = \"dp study\"\n\
             model_owners = [\"b547bdb0e95a80974d0ccd4b00544743\"]\nmodes = [\"federated\"]\n\
             schemes = [\"plain\"]\nmax_epsilon = 3.0\napproval = \"{approval}\"\n"
        ),
    )
    .expect("policy");
    p
}

const PRIVATE: &str = "\n[privacy]\nlevel = \"record\"\ntarget_epsilon = 2.0\ndelta = 1e-5\n\
                       clip_norm = 1.0\naccountant = \"rdp\"\n";

/// Signs and submits the private job `id` of `rounds` rounds as the model owner.
fn submit(fed: &Fed, control: &str, id: &str, rounds: u32) {
    let m = fed.manifest_with(id, "plain", rounds, PRIVATE);
    let out = fed.job(control, "owner", &["submit", path(&m)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `confide node login` with `key`: its exit code and the address it printed.
fn login(admin: &str, key: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["node", "login", "--admin", admin, "--key", path(key)])
        .args(["--passphrase-env", "DASH_PASS"])
        .env("DASH_PASS", PASSPHRASE)
        .output()
        .expect("login");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Opens the one-time login address `url` of the daemon at `admin`: the session cookie
/// (`name=value`) and the whole `Set-Cookie` header.
fn open(admin: &str, url: &str) -> (String, String) {
    let (code, h, _) = http(
        admin,
        "GET",
        url.trim_start_matches(&format!("http://{admin}")),
        &[],
        "",
    );
    assert_eq!(code, 303);
    let set = h["set-cookie"].clone();
    let cookie = set.split(';').next().expect("cookie").to_string();
    (cookie, set)
}

/// The value of the first `name="csrf" value="…"` in a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token");
    let rest = &page[at + 19..];
    rest[..rest.find('"').expect("end")].to_string()
}

/// A coordinator and the two node daemons, each with a ledger and an encrypted approval key
/// (`stranger` is a third key no daemon knows); guest's and host's policies approve by
/// `approvals`. Returns the daemons and the keys (guest, host, stranger).
fn federation(
    fed: &Fed,
    (guest_approval, host_approval): (&str, &str),
) -> ([common::daemons::Daemon; 3], [PathBuf; 3]) {
    let dir = fed.dir.path();
    let coordinator = fed.coordinator_with(&[]);
    let fleet = coordinator.addrs[2].clone();
    let keys = ["guest", "host", "stranger"].map(|n| encrypted_key(dir, n).0);
    let node = |name: &str, approval: &str, key: &Path| {
        let data = root().join(format!("data/breast_homo/breast_homo_{name}.csv"));
        let ledger = dir.join(format!("{name}-ledger.redb"));
        fed.node_serving(
            name,
            &fleet,
            &[(&data, &policy(dir, &format!("{name}_data"), approval))],
            (
                &[],
                &["--ledger", path(&ledger), "--approver-key", path(key)],
            ),
            &format!("{name}.log"),
        )
    };
    let guest = node("guest", guest_approval, &keys[0]);
    let host = node("host", host_approval, &keys[1]);
    ([coordinator, guest, host], keys)
}

#[test]
fn the_dashboard_opens_only_for_the_owner_and_acts_only_with_its_key() {
    let fed = Fed::new();
    let ([mut coordinator, mut guest, mut host], [_, key, stranger]) =
        federation(&fed, ("automatic", "co-signature"));
    let control = coordinator.addrs[1].clone();
    let admin = host.addrs[0].clone();

    // No session: pages redirect to the login page, actions are refused; every response
    // carries the safe headers.
    let (code, h, _) = http(&admin, "GET", "/ui/inbox", &[], "");
    assert_eq!((code, h["location"].as_str()), (303, "/ui/login"));
    let (code, h, page) = http(&admin, "GET", "/ui/login", &[], "");
    assert_eq!(code, 200);
    assert!(page.contains("confide node login"), "{page}");
    assert!(
        h["content-security-policy"].contains("default-src 'none'"),
        "{h:?}"
    );
    for (k, v) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(h[k], v, "{h:?}");
    }
    let (code, _, _) = http(&admin, "GET", "/metrics", &[], "");
    assert_eq!(code, 200);

    // Another key cannot open this owner's dashboard.
    let (code, _, err) = login(&admin, &stranger);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("not the approval key of this node's owner"),
        "{err}"
    );

    // The owner's key can; the address works once.
    let (code, url, err) = login(&admin, &key);
    assert_eq!(code, Some(0), "{err}");
    let (cookie, set) = open(&admin, &url);
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
    let target = url.trim_start_matches(&format!("http://{admin}"));
    let (code, _, _) = http(&admin, "GET", target, &[], "");
    assert_eq!(code, 403, "a login address works once");
    let with = [("Cookie", cookie.as_str())];

    // A private job that host's policy leaves to its owner.
    submit(&fed, &control, "dash-a", 3);
    let hash = wait_for(30, "host's inbox", || {
        let list = json(&fed.inbox(&admin, "host", &["list"]));
        (list[0]["status"] == "pending")
            .then(|| list[0]["hash"].as_str().expect("hash").to_string())
    });
    let (code, _, page) = http(&admin, "GET", "/ui/inbox", &with, "");
    assert_eq!(code, 200);
    assert!(
        page.contains("dash-a") && page.contains("1 job(s) wait"),
        "{page}"
    );
    let (code, _, page) = http(&admin, "GET", &format!("/ui/inbox/{hash}"), &with, "");
    assert_eq!(code, 200);
    for shown in [
        "Noise multiplier σ",
        "Remaining ε after this job",
        "dp study",
        "your co-signature",
        "confide dp epsilon --q ",
        "id=\"approve\"",
    ] {
        assert!(page.contains(shown), "{shown} missing: {page}");
    }
    let csrf = csrf_of(&page);
    let approve = format!("/ui/inbox/{hash}/approve");
    let urlencoded = ("Content-Type", "application/x-www-form-urlencoded");

    // Forged token, no session, another site, wrong passphrase: all refused, nothing changes.
    let forged = form(&[("csrf", &"0".repeat(64)), ("passphrase", PASSPHRASE)]);
    let (code, _, _) = http(&admin, "POST", &approve, &[with[0], urlencoded], &forged);
    assert_eq!(code, 403);
    let good = form(&[("csrf", &csrf), ("passphrase", PASSPHRASE)]);
    let (code, _, _) = http(&admin, "POST", &approve, &[urlencoded], &good);
    assert_eq!(code, 401);
    let cross = [with[0], urlencoded, ("Sec-Fetch-Site", "cross-site")];
    let (code, _, _) = http(&admin, "POST", &approve, &cross, &good);
    assert_eq!(code, 403);
    let wrong = form(&[("csrf", &csrf), ("passphrase", "not it")]);
    let (code, _, page) = http(&admin, "POST", &approve, &[with[0], urlencoded], &wrong);
    assert_eq!(code, 403, "{page}");
    let list = json(&fed.inbox(&admin, "host", &["list"]));
    assert_eq!(list[0]["status"], "pending", "{list}");

    // The owner approves in the page; the job runs to its end.
    let (code, h, page) = http(&admin, "POST", &approve, &[with[0], urlencoded], &good);
    assert_eq!(
        (code, h.get("location")),
        (303, Some(&format!("/ui/inbox/{hash}"))),
        "{page}"
    );
    wait_for(90, "dash-a", || {
        (state_of(&fed, &control, "dash-a") == "completed").then_some(())
    });
    let (_, _, page) = http(&admin, "GET", "/ui/jobs", &with, "");
    assert!(page.contains("3/3"), "{page}");
    let (_, _, page) = http(&admin, "GET", "/ui/budget", &with, "");
    assert!(page.contains("dash-a") && page.contains("<svg"), "{page}");
    let verify = form(&[("csrf", &csrf)]);
    let (code, _, _) = http(
        &admin,
        "POST",
        "/ui/audit/verify",
        &[with[0], urlencoded],
        &verify,
    );
    assert_eq!(code, 303);
    let (_, _, page) = http(&admin, "GET", "/ui/audit", &with, "");
    assert!(page.contains("<strong>Verified</strong>"), "{page}");
    assert!(
        page.contains("consistent: the log extends the head"),
        "{page}"
    );
    let (code, _, export) = http(&admin, "GET", "/ui/audit/export", &with, "");
    assert_eq!(code, 200);
    // The owner's co-signature reached the coordinator's audit log with the decision.
    assert!(
        export.contains("owner_statement"),
        "the co-signature is not in the log"
    );
    let (_, _, page) = http(&admin, "GET", "/ui/health", &with, "");
    assert!(page.contains("The coordinator answers"), "{page}");

    // A job the owner revokes: the approve button is gone and the server refuses it.
    submit(&fed, &control, "dash-b", 3);
    let hash_b = wait_for(30, "dash-b in host's inbox", || {
        let list = json(&fed.inbox(&admin, "host", &["list"]));
        list.as_array()
            .expect("list")
            .iter()
            .find(|e| e["job_id"] == "dash-b" && e["status"] == "pending")
            .map(|e| e["hash"].as_str().expect("hash").to_string())
    });
    let revoke = form(&[
        ("csrf", &csrf),
        ("passphrase", PASSPHRASE),
        ("reason", "not this study"),
    ]);
    let (code, _, page) = http(
        &admin,
        "POST",
        &format!("/ui/jobs/{hash_b}/revoke"),
        &[with[0], urlencoded],
        &revoke,
    );
    assert_eq!(code, 303, "{page}");
    let (_, _, page) = http(&admin, "GET", &format!("/ui/inbox/{hash_b}"), &with, "");
    assert!(
        !page.contains("id=\"approve\"") && page.contains("You revoked this job"),
        "{page}"
    );
    let (code, _, _) = http(
        &admin,
        "POST",
        &format!("/ui/inbox/{hash_b}/approve"),
        &[with[0], urlencoded],
        &good,
    );
    assert_eq!(code, 409);
    wait_for(30, "dash-b rejected", || {
        (state_of(&fed, &control, "dash-b") == "rejected").then_some(())
    });

    // Logging out ends the session.
    let (code, _, _) = http(
        &admin,
        "POST",
        "/ui/logout",
        &[with[0], urlencoded],
        &verify,
    );
    assert_eq!(code, 303);
    let (code, _, _) = http(&admin, "GET", "/ui/inbox", &with, "");
    assert_eq!(code, 303);
    for d in [&mut guest, &mut host, &mut coordinator] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// The owner's revocation, on both sides of a job's start: an approved job that has not
/// started ends rejected with the owner's statement and costs the dataset no ε; a running
/// job stops at its next round, and the coordinator logs the withdrawal with the statement.
#[test]
fn a_revocation_stops_a_job_before_it_costs_and_a_running_one_at_its_next_round() {
    let fed = Fed::new();
    // guest leaves every job to its owner; host approves by its policy.
    let ([mut coordinator, mut guest, mut host], [guest_key, host_key, _]) =
        federation(&fed, ("co-signature", "automatic"));
    let control = coordinator.addrs[1].clone();
    let (guest_admin, admin) = (guest.addrs[0].clone(), host.addrs[0].clone());
    let entry = |job: &str| {
        json(&fed.inbox(&admin, "host", &["list"]))
            .as_array()
            .expect("list")
            .iter()
            .find(|e| e["job_id"] == job)
            .cloned()
    };
    let owner_cli = |admin: &str, args: &[&str], key: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_confide"))
            .args(["node", "inbox"])
            .args(args)
            .args([
                "--admin",
                admin,
                "--key",
                path(key),
                "--passphrase-env",
                "DASH_PASS",
            ])
            .env("DASH_PASS", PASSPHRASE)
            .output()
            .expect("inbox");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Approved by host's policy (and sent), waiting for guest: host's owner revokes it.
    let m = fed.manifest_with("dash-c", "plain", 3, PRIVATE);
    assert!(
        fed.job(&control, "owner", &["submit", path(&m)])
            .status
            .success()
    );
    wait_for(30, "host's approval sent", || {
        entry("dash-c").filter(|e| e["status"] == "approved" && e["sent"] == true)
    });
    owner_cli(
        &admin,
        &["revoke", "dash-c", "--reason", "no longer"],
        &host_key,
    );
    wait_for(30, "dash-c rejected", || {
        (state_of(&fed, &control, "dash-c") == "rejected").then_some(())
    });
    assert_eq!(entry("dash-c").expect("entry")["status"], "rejected");

    // A long job, approved by both: host's owner revokes it once it runs.
    let m = fed.manifest_with("dash-d", "plain", 400, PRIVATE);
    assert!(
        fed.job(&control, "owner", &["submit", path(&m)])
            .status
            .success()
    );
    wait_for(30, "dash-d at guest", || {
        json(&fed.inbox(&guest_admin, "guest", &["list"]))
            .as_array()
            .expect("list")
            .iter()
            .any(|e| e["job_id"] == "dash-d")
            .then_some(())
    });
    owner_cli(&guest_admin, &["approve", "dash-d"], &guest_key);
    let (code, url, err) = login(&admin, &host_key);
    assert_eq!(code, Some(0), "{err}");
    let (cookie, _) = open(&admin, &url);
    let with = [("Cookie", cookie.as_str())];
    let hash = entry("dash-d").expect("dash-d")["hash"]
        .as_str()
        .expect("hash")
        .to_string();
    let sent = |page: &str| -> u32 {
        let at = page.find("<dt>Rounds sent</dt><dd>").expect("rounds sent") + 24;
        page[at..]
            .split(' ')
            .next()
            .expect("n")
            .parse()
            .expect("number")
    };
    let page = wait_for(60, "dash-d's first rounds", || {
        let (_, _, page) = http(&admin, "GET", &format!("/ui/jobs/{hash}"), &with, "");
        (sent(&page) >= 2).then_some(page)
    });
    let csrf = csrf_of(&page);
    let revoke = form(&[
        ("csrf", &csrf),
        ("passphrase", PASSPHRASE),
        ("reason", "stop now"),
    ]);
    let (code, _, page) = http(
        &admin,
        "POST",
        &format!("/ui/jobs/{hash}/revoke"),
        &[
            with[0],
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        &revoke,
    );
    assert_eq!(code, 303, "{page}");
    let ended = wait_for(60, "host to leave dash-d", || {
        entry("dash-d").filter(|e| e["status"] == "ended")
    });
    assert!(
        ended["note"]
            .as_str()
            .is_some_and(|n| n.contains("revoked")),
        "{ended}"
    );
    let (_, _, page) = http(&admin, "GET", &format!("/ui/jobs/{hash}"), &with, "");
    let rounds = sent(&page);
    assert!(rounds < 400, "host sent {rounds} rounds");

    // The coordinator's log holds both of the owner's revocations, verified.
    let verify = form(&[("csrf", &csrf)]);
    let urlencoded = ("Content-Type", "application/x-www-form-urlencoded");
    let (code, _, _) = http(
        &admin,
        "POST",
        "/ui/audit/verify",
        &[with[0], urlencoded],
        &verify,
    );
    assert_eq!(code, 303);
    let (code, _, export) = http(&admin, "GET", "/ui/audit/export", &with, "");
    assert_eq!(code, 200);
    let log: serde_json::Value = serde_json::from_str(&export).expect("log");
    let entries = log["entries"].as_array().expect("entries");
    let revoked_statement =
        |e: &serde_json::Value, field: &str| e["detail"][field]["statement"]["action"] == "revoke";
    assert!(
        entries
            .iter()
            .any(|e| e["job"] == "dash-c" && revoked_statement(e, "owner_statement")),
        "no rejection of dash-c with the owner's revocation"
    );
    assert!(
        entries.iter().any(|e| e["job"] == "dash-d"
            && e["detail"]["kind"] == "revocation"
            && revoked_statement(e, "statement")),
        "no withdrawal from dash-d with the owner's revocation"
    );
    // dash-c cost host nothing; dash-d was debited when it started.
    let (_, _, page) = http(&admin, "GET", "/ui/budget", &with, "");
    assert!(
        !page.contains("dash-c") && page.contains("dash-d"),
        "{page}"
    );
    for d in [&mut guest, &mut host, &mut coordinator] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}

/// `confide job login` as `name`: the session cookie on the coordinator's dashboard at
/// `admin`, or the refusal's exit code and message.
fn board_session(fed: &Fed, admin: &str, name: &str) -> Result<String, (Option<i32>, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args([
            "job",
            "login",
            "--admin",
            admin,
            "--fed",
            path(&fed.fed),
            "--name",
            name,
        ])
        .output()
        .expect("login");
    if !out.status.success() {
        return Err((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(open(admin, &url).0)
}

/// The coordinator's dashboard: a session only from a federation key of a model owner or the
/// operator, each party sees its own jobs, the rounds' held-out curves from the operator's
/// test set, downloads for recipients only, the nodes for the operator only; and a
/// submission prints the job's address.
#[test]
fn the_coordinator_dashboard_shows_each_party_its_own_jobs() {
    let fed = Fed::new();
    // The operator's test set for the examples' model owner's job `dash-e`.
    let eval = fed.dir.path().join("evaluation");
    let owner_dir = eval.join("b547bdb0e95a80974d0ccd4b00544743");
    std::fs::create_dir_all(&owner_dir).expect("dir");
    std::fs::copy(
        root().join("data/breast_homo/breast_homo_test.csv"),
        owner_dir.join("dash-e.csv"),
    )
    .expect("test set");
    let mut coordinator = fed.coordinator_with(&["--evaluation", path(&eval)]);
    let (admin, control, fleet) = (
        coordinator.addrs[0].clone(),
        coordinator.addrs[1].clone(),
        coordinator.addrs[2].clone(),
    );
    let policies = root().join("examples/policies");
    let mut guest = fed.node("guest", &fleet, &policies.join("breast_homo_guest.toml"));
    let mut host = fed.node("host", &fleet, &policies.join("breast_homo_host.toml"));
    let m = fed.manifest("dash-e", "plain", 5);
    let out = fed.job(&control, "owner", &["submit", path(&m)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let submitted = json(&out);
    let hash = submitted["hash"].as_str().expect("hash").to_string();
    assert_eq!(
        submitted["url"],
        format!("http://{admin}/ui/jobs/{hash}"),
        "{submitted}"
    );
    wait_for(90, "dash-e", || {
        (state_of(&fed, &control, "dash-e") == "completed").then_some(())
    });

    // Who may log in: model owners and the operator, not a node.
    let (code, err) = board_session(&fed, &admin, "guest").expect_err("a node is refused");
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("has role node"), "{err}");
    let owner = board_session(&fed, &admin, "owner").expect("owner");
    let mallory = board_session(&fed, &admin, "mallory").expect("another model owner");
    let operator = board_session(&fed, &admin, "coordinator").expect("operator");

    // The model owner: its job, the curves from the operator's test set, the download.
    let c = [("Cookie", owner.as_str())];
    let (_, _, page) = http(&admin, "GET", "/ui/jobs", &c, "");
    assert!(page.contains("dash-e") && page.contains("5 of 5"), "{page}");
    let (_, _, page) = http(&admin, "GET", &format!("/ui/jobs/{hash}"), &c, "");
    for shown in [
        "<svg class=\"chart\"",
        "id=\"rounds\"",
        "id=\"download-model\"",
        "<dt>State</dt><dd>completed</dd>",
    ] {
        assert!(page.contains(shown), "{shown} missing: {page}");
    }
    let (code, _, model) = http(
        &admin,
        "GET",
        &format!("/ui/jobs/{hash}/model.safetensors"),
        &c,
        "",
    );
    assert_eq!(code, 200);
    assert!(model.len() > 100);
    let (code, _, report) = http(
        &admin,
        "GET",
        &format!("/ui/jobs/{hash}/report.json"),
        &c,
        "",
    );
    assert_eq!(code, 200);
    let report: serde_json::Value = serde_json::from_str(&report).expect("report");
    let accuracy = report["history"][4]["test_accuracy"]
        .as_f64()
        .expect("evaluated");
    assert!(accuracy > 0.8, "{accuracy}");
    for view in ["/ui/nodes", "/ui/audit"] {
        let (code, _, _) = http(&admin, "GET", view, &c, "");
        assert_eq!(code, 403, "only the operator sees {view}");
    }

    // Another model owner sees nothing of it.
    let c = [("Cookie", mallory.as_str())];
    let (code, _, page) = http(&admin, "GET", "/ui/jobs", &c, "");
    assert_eq!(code, 200);
    assert!(
        !page.contains("dash-e") && page.contains("No job yet"),
        "{page}"
    );
    for target in [
        format!("/ui/jobs/{hash}"),
        format!("/ui/jobs/{hash}/model.safetensors"),
    ] {
        let (code, _, _) = http(&admin, "GET", &target, &c, "");
        assert_eq!(code, 404, "{target}");
    }

    // The operator sees every job and the nodes, but is no recipient.
    let c = [("Cookie", operator.as_str())];
    let (_, _, page) = http(&admin, "GET", "/ui/jobs", &c, "");
    assert!(page.contains("dash-e"), "{page}");
    let (_, _, page) = http(&admin, "GET", "/ui/nodes", &c, "");
    assert!(page.contains("guest") && page.contains("host"), "{page}");
    let (code, _, _) = http(
        &admin,
        "GET",
        &format!("/ui/jobs/{hash}/model.safetensors"),
        &c,
        "",
    );
    assert_eq!(code, 403);
    let (_, _, page) = http(&admin, "GET", &format!("/ui/jobs/{hash}"), &c, "");
    assert!(
        page.contains("id=\"rounds\"") && !page.contains("download-model"),
        "{page}"
    );
    let (_, _, page) = http(&admin, "GET", "/ui/audit", &c, "");
    assert!(page.contains("Last signed head: entries"), "{page}");

    // A revoked party's session stops working at once.
    let revoked = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["ca", "revoke", "--dir", path(&fed.fed), "--name", "mallory"])
        .args(["--reason", "left the consortium"])
        .output()
        .expect("revoke");
    assert!(
        revoked.status.success(),
        "{}",
        String::from_utf8_lossy(&revoked.stderr)
    );
    let (code, _, page) = http(
        &admin,
        "GET",
        "/ui/jobs",
        &[("Cookie", mallory.as_str())],
        "",
    );
    assert_eq!(code, 403, "{page}");
    assert!(page.contains("revoked"), "{page}");

    // No session: the login page.
    let (code, h, _) = http(&admin, "GET", "/ui/jobs", &[], "");
    assert_eq!((code, h["location"].as_str()), (303, "/ui/login"));
    for d in [&mut guest, &mut host, &mut coordinator] {
        assert_eq!(d.terminate(), Some(0), "{}", d.log());
    }
}
