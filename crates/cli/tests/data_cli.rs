//! `confide data partition`: a seeded split of one dataset among owners, as JSON and an SVG.

mod common;

use common::{confide, json_out, root};

#[test]
fn a_dirichlet_split_of_digits_covers_it_and_draws_one_bar_per_owner() {
    let dir = tempfile::tempdir().expect("tmp");
    let svg = dir.path().join("split.svg");
    let data = root().join("data/digits/digits.csv");
    let args = |seed: &str| {
        vec![
            "data".to_string(),
            "partition".into(),
            "--data".into(),
            data.display().to_string(),
            "--no-header".into(),
            "--label".into(),
            "64".into(),
            "--classes".into(),
            "10".into(),
            "--partitioner".into(),
            "dirichlet:0.1".into(),
            "--owners".into(),
            "12".into(),
            "--seed".into(),
            seed.into(),
            "--plot".into(),
            svg.display().to_string(),
        ]
    };
    let run = |seed: &str| {
        let a = args(seed);
        json_out(&confide(&a.iter().map(String::as_str).collect::<Vec<_>>()))
    };
    let out = run("3");
    let sizes: Vec<u64> = out["sizes"]
        .as_array()
        .expect("sizes")
        .iter()
        .map(|v| v.as_u64().expect("size"))
        .collect();
    assert_eq!(sizes.len(), 12);
    assert_eq!(sizes.iter().sum::<u64>(), 1797);
    assert_eq!(out["records"], 1797);
    assert_eq!(
        run("3")["sizes"],
        out["sizes"],
        "a seed reproduces the split"
    );
    assert_ne!(run("4")["sizes"], out["sizes"]);
    let text = std::fs::read_to_string(&svg).expect("svg");
    assert!(text.starts_with("<svg"), "{text}");
    for o in 0..12 {
        assert!(text.contains(&format!("class=\"owner-{o}\"")), "owner {o}");
    }
}

#[test]
fn the_natural_split_follows_the_group_column_and_bad_arguments_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let csv = dir.path().join("sites.csv");
    std::fs::write(
        &csv,
        "y,site,a\n0,cleveland,1\n1,va,2\n1,cleveland,3\n0,hungary,4\n1,va,5\n",
    )
    .expect("write");
    let csv_s = csv.display().to_string();
    let base = [
        "data",
        "partition",
        "--data",
        &csv_s,
        "--label",
        "y",
        "--classes",
        "2",
    ];
    let natural: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--partitioner", "natural", "--group", "site"])
        .collect();
    let out = json_out(&confide(&natural));
    assert_eq!(
        out["groups"],
        serde_json::json!(["cleveland", "hungary", "va"])
    );
    assert_eq!(out["sizes"], serde_json::json!([2, 1, 2]));
    assert_eq!(
        out["label_counts"],
        serde_json::json!([[1, 1], [1, 0], [0, 2]])
    );
    for (how, message) in [
        (vec!["--partitioner", "natural"], "needs --group"),
        (vec!["--partitioner", "dirichlet:x"], "needs a number"),
        (vec!["--partitioner", "zipf"], "unknown partitioner `zipf`"),
        (
            vec!["--partitioner", "iid", "--owners", "9", "--exclude", "site"],
            "cannot split 5 records among 9 owners",
        ),
        (vec!["--partitioner", "iid"], "`cleveland` is not a number"),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(how).collect();
        let out = confide(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(message), "{err}");
    }
}
