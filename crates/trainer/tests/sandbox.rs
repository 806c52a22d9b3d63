//! A confined training run cannot open a socket, start a program, or read or write outside its
//! directory, and still trains; the same probes succeed unconfined (so each check can fail).

use std::path::Path;
use std::process::Command;

fn probe(dir: &Path, outside: &Path, unconfined: bool) -> serde_json::Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confide-sandbox-probe"));
    cmd.arg(dir).arg(outside);
    if unconfined {
        cmd.arg("--unconfined");
    }
    let out = cmd.output().expect("run the probe");
    assert!(
        out.status.success(),
        "probe failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("probe JSON")
}

fn ok(v: &serde_json::Value, what: &str) -> bool {
    v[what]["ok"]
        .as_bool()
        .unwrap_or_else(|| panic!("no `{what}` in {v}"))
}

/// The first 200 rows of the digits training set (header included).
fn training_rows(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/digits/digits_train.csv");
    let text = std::fs::read_to_string(&src).expect("digits_train.csv");
    let head: Vec<&str> = text.lines().take(201).collect();
    std::fs::write(dir.join("train.csv"), head.join("\n") + "\n").expect("write");
}

#[test]
fn a_confined_training_run_has_no_sockets_no_exec_and_no_files_outside_its_directory() {
    let work = tempfile::tempdir().expect("tmp");
    let elsewhere = tempfile::tempdir().expect("tmp");
    let secret = elsewhere.path().join("other-owner.csv");
    std::fs::write(&secret, "label,p0\n1,2\n").expect("write");
    training_rows(work.path());

    let control = probe(work.path(), &secret, true);
    for what in [
        "tcp_socket",
        "udp_socket",
        "read_inside",
        "read_outside",
        "write_outside",
        "exec",
        "training",
    ] {
        assert!(ok(&control, what), "unconfined `{what}` failed: {control}");
    }
    std::fs::remove_file(elsewhere.path().join("escaped.txt")).expect("control wrote it");

    let confined = probe(work.path(), &secret, false);
    assert_eq!(confined["enforced"]["landlock"], "fully enforced (ABI v3)");
    // seccomp refuses the system calls with EPERM; landlock refuses the paths with EACCES.
    for (what, errno) in [
        ("tcp_socket", libc::EPERM),
        ("udp_socket", libc::EPERM),
        ("exec", libc::EPERM),
        ("read_outside", libc::EACCES),
        ("write_outside", libc::EACCES),
    ] {
        assert!(
            !ok(&confined, what),
            "confined `{what}` succeeded: {confined}"
        );
        assert_eq!(confined[what]["errno"], errno, "`{what}`: {confined}");
    }
    assert!(!elsewhere.path().join("escaped.txt").exists());
    // Inside its directory it reads, trains and writes the model.
    assert!(ok(&confined, "read_inside"), "{confined}");
    assert!(ok(&confined, "training"), "{confined}");
    assert_eq!(confined["training"]["result"]["rows"], 200);
    assert_eq!(confined["training"]["result"]["steps"], 20);
    let model = std::fs::metadata(work.path().join("model.bin")).expect("model written");
    assert_eq!(
        model.len(),
        confined["training"]["result"]["model_bytes"]
            .as_u64()
            .expect("bytes")
    );
}
