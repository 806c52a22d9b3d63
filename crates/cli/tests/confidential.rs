//! `confide simulate` on `examples/confidential_digits.toml`: two owners' encrypted uploads, the
//! trusted core as its own confined process, DP-SGD, release to the recipient; the host keeps
//! ciphertext only.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn simulate(config: &Path, work: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["simulate", "--quiet", "--config"])
        .arg(config)
        .arg("--work-dir")
        .arg(work)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn the_confidential_example_trains_in_the_confined_core_and_the_host_sees_ciphertext_only() {
    let tmp = tempfile::tempdir().expect("tmp");
    let work = tmp.path().join("run");
    let (ok, err) = simulate(&repo("examples/confidential_digits.toml"), &work);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(report["status"], "finished");
    assert!(report["epsilon"].as_f64().expect("epsilon") <= 8.0 + 1e-9);
    assert_eq!(report["train_rows"], 1438);
    assert_eq!(report["attestation"]["insecure"], true);
    // The recipient's copy and the core's own figure agree; DP noise is drawn from the OS, so
    // only a floor far below the measured 0.95–0.97 is checked.
    let accuracy = report["test_accuracy"].as_f64().expect("accuracy");
    assert_eq!(Some(accuracy), report["core_public_test_accuracy"].as_f64());
    assert!(accuracy > 0.85, "{report}");
    assert!(work.join("model/model.safetensors").exists());
    // The core ran as the binary the report names (the minimal one when it was built next to
    // `confide`, as `cargo test --workspace` builds it), and that process confined itself.
    let exe = Path::new(env!("CARGO_BIN_EXE_confide"));
    let minimal = exe.with_file_name("confide-trainer-core");
    let expected = if minimal.is_file() {
        minimal
    } else {
        exe.to_path_buf()
    };
    let binary = report["core_binary"].as_str().expect("core_binary");
    assert_eq!(Path::new(binary), expected);
    let log = std::fs::read_to_string(work.join("logs/trainer-core.log")).expect("log");
    let started = std::fs::canonicalize(binary).expect("binary");
    assert!(
        log.contains(&format!("trusted core {} confined", started.display())),
        "{log}"
    );
    assert!(log.contains("fully enforced"), "{log}");
    // Everything the host stores is ciphertext: no CSV header, no row of the data.
    let csv = std::fs::read_to_string(repo("data/digits/clinic_a.csv")).expect("csv");
    let row = csv.lines().nth(1).expect("row");
    let mut stored = 0;
    for dir in ["host/store", "host/uploads"] {
        for entry in std::fs::read_dir(work.join(dir)).expect("dir") {
            let bytes = std::fs::read(entry.expect("entry").path()).expect("read");
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("p0,p1") && !text.contains(row), "{dir}");
            stored += 1;
        }
    }
    // Two uploads, two sealed datasets and the sealed model.
    assert_eq!(stored, 5);
}

#[test]
fn a_confidential_job_needs_the_dev_tee_here_and_dp() {
    let tmp = tempfile::tempdir().expect("tmp");
    // The job file names its data relative to itself: point it at the repository's.
    let data = format!("\"{}/", repo("data").display());
    let text = std::fs::read_to_string(repo("examples/confidential_digits.toml"))
        .expect("toml")
        .replace("\"../data/", &data);
    let privacy = "[privacy]\nlevel = \"record\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 0.5\naccountant = \"rdp\"\n";
    assert!(text.contains(privacy));
    for (what, edited, expected) in [
        (
            "sgx",
            text.replace("tee = \"dev\"", "tee = \"sgx\""),
            "only the dev TEE",
        ),
        ("no-dp", text.replace(privacy, ""), "DP-SGD only"),
        (
            "nobody",
            text.replace("recipients = [\"model-owner\"]", "recipients = []"),
            "nobody could receive",
        ),
        (
            "owner",
            text.replace("model_owner = \"model-owner\"", "model_owner = \"mallory\""),
            "not one of the recipients",
        ),
        (
            "partition",
            text.replace("partition = \"sml2\"", "partition = \"sml3\""),
            "sml3",
        ),
    ] {
        assert_ne!(edited, text, "{what}");
        let config = tmp.path().join(format!("{what}.toml"));
        std::fs::write(&config, edited).expect("write");
        let (ok, err) = simulate(&config, &tmp.path().join(what));
        assert!(!ok, "{what} ran");
        assert!(err.contains(expected), "{what}: {err}");
    }
}

#[test]
fn the_sml1_partition_runs_the_same_core_inside_the_host_process() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = format!("\"{}/", repo("data").display());
    let text = std::fs::read_to_string(repo("examples/confidential_digits.toml"))
        .expect("toml")
        .replace("\"../data/", &data)
        .replace("partition = \"sml2\"", "partition = \"sml1\"");
    let config = tmp.path().join("sml1.toml");
    std::fs::write(&config, text).expect("write");
    let work = tmp.path().join("run");
    let (ok, err) = simulate(&config, &work);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join("report.json")).expect("report"))
            .expect("json");
    assert_eq!(report["partition"], "sml1");
    assert_eq!(report["train_rows"], 1438);
    assert!(
        report["test_accuracy"].as_f64().expect("accuracy") > 0.85,
        "{report}"
    );
    // No core process was started, so it wrote no log of its own.
    assert!(!work.join("logs/trainer-core.log").exists());
}
