//! Robust aggregation through the coordinator: breast_homo under `plain` with a third owner
//! whose data is the host's file with every label flipped. The same job with the mean and with
//! the coordinate-wise median (`[training.robust]`); the median's model must be the better one,
//! which it can only be if the coordinator applies the rule.

mod common;

use std::path::{Path, PathBuf};

use common::{absolute_example_paths, root, simulate};

fn flipped_copy_of_host(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(root().join("data/breast_homo/breast_homo_host.csv"))
        .expect("host data");
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    let label = header.split(',').position(|c| c == "y").expect("y column");
    let mut out = format!("{header}\n");
    for line in lines {
        let mut cells: Vec<String> = line.split(',').map(str::to_string).collect();
        cells[label] = if cells[label] == "1" { "0" } else { "1" }.to_string();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    let path = dir.join("mallory.csv");
    std::fs::write(&path, out).expect("write");
    path
}

fn job(dir: &Path, mallory: &Path, rule: Option<&str>) -> PathBuf {
    let mut text =
        std::fs::read_to_string(root().join("examples/breast_homo.toml")).expect("example");
    assert!(text.contains("scheme = \"paillier\""));
    assert!(text.contains("min_owners = 2"));
    text = absolute_example_paths(&text)
        .replace("scheme = \"paillier\"", "scheme = \"plain\"")
        .replace("min_owners = 2", "min_owners = 3");
    if let Some(kind) = rule {
        text = text.replacen(
            "[encoding]",
            &format!("[training.robust]\nkind = \"{kind}\"\n\n[encoding]"),
            1,
        );
    }
    text.push_str(&format!(
        "\n[[parties]]\nname = \"mallory\"\ndata = \"{}\"\n",
        mallory.display()
    ));
    let path = dir.join(format!("job-{}.toml", rule.unwrap_or("mean")));
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn the_median_resists_an_owner_with_flipped_labels_and_the_mean_does_not() {
    let dir = tempfile::tempdir().expect("tmp");
    let mallory = flipped_copy_of_host(dir.path());
    let mut loss = Vec::new();
    for rule in [None, Some("median")] {
        let work = dir.path().join(rule.unwrap_or("mean"));
        std::fs::create_dir_all(&work).expect("dir");
        let run = simulate(
            &job(dir.path(), &mallory, rule),
            &work,
            &["--mode", "in-process", "--quiet"],
        );
        assert_eq!(run.code, 0, "{rule:?}: {}", run.stderr);
        let r = &run.report;
        for h in r["history"].as_array().expect("history") {
            assert_eq!(h["contributors"].as_array().map(Vec::len), Some(3), "{h}");
        }
        loss.push(r["test_log_loss"].as_f64().expect("log-loss"));
    }
    // Measured: 0.3083 with the mean, 0.1398 with the median (docs/layout.md).
    assert!(
        loss[1] < loss[0] - 0.1,
        "median {} against mean {}",
        loss[1],
        loss[0]
    );
}
