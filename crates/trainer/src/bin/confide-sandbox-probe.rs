//! Confines itself as the trusted core does, then tries what a confined training run must not
//! be able to do, runs a small DP-SGD training on a CSV inside its directory, and prints what
//! happened as JSON. `crates/trainer/tests/sandbox.rs` runs it; `--unconfined` is the control
//! run that shows each probe can succeed.
//!
//! Usage: `confide-sandbox-probe DIR OUTSIDE_FILE [--unconfined]` (DIR holds `train.csv`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use confide_ml::dpsgd::{self, CsprngNoise, DpSgdConfig};
use confide_ml::{CsvSpec, ModelKind, ModelSpec};
use confide_trainer::sandbox::{Confinement, Limits, confine};
use rand::SeedableRng;
use serde_json::json;

fn outcome<T>(r: std::io::Result<T>) -> serde_json::Value {
    match r {
        Ok(_) => json!({"ok": true}),
        Err(e) => json!({
            "ok": false,
            "kind": format!("{:?}", e.kind()),
            "errno": e.raw_os_error(),
            "error": e.to_string(),
        }),
    }
}

fn train(dir: &Path) -> Result<serde_json::Value, String> {
    let spec = CsvSpec {
        has_header: true,
        label: confide_ml::Column::Name("label".into()),
        exclude: Vec::new(),
    };
    let data = confide_ml::dataset::load_csv(&dir.join("train.csv"), &spec, 10)
        .map_err(|e| e.to_string())?;
    let model = ModelSpec::preset(ModelKind::Mlp, data.feature_count, vec![16], 10);
    let config = DpSgdConfig {
        steps: 20,
        sampling_rate: 0.2,
        learning_rate: 0.5,
        momentum: 0.0,
        l2: 0.0,
        proximal_mu: 0.0,
        clip_norm: 1.0,
        noise_multiplier: 1.0,
    };
    let mut sampler = rand_chacha::ChaCha20Rng::from_entropy();
    let mut noise = CsprngNoise::from_entropy()?;
    let out = dpsgd::train_dp(
        &model,
        &model.initial_vector(1),
        &data,
        &config,
        &mut sampler,
        &mut noise,
        &mut |_, _| {},
    )
    .map_err(|e| e.to_string())?;
    let bytes: Vec<u8> = out.params.iter().flat_map(|p| p.to_le_bytes()).collect();
    std::fs::write(dir.join("model.bin"), &bytes).map_err(|e| e.to_string())?;
    Ok(json!({"rows": data.len(), "steps": out.steps, "model_bytes": bytes.len()}))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--noop") {
        return;
    }
    if args.len() < 3 {
        eprintln!("usage: confide-sandbox-probe DIR OUTSIDE_FILE [--unconfined]");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let outside = PathBuf::from(&args[2]);
    let confined = args.get(3).map(String::as_str) != Some("--unconfined");
    let enforced = if confined {
        match confine(&Confinement {
            directory: dir.clone(),
            readable: Vec::new(),
            limits: Limits::for_training(),
            allow_exec: false,
        }) {
            Ok(e) => json!(e),
            Err(e) => {
                eprintln!("cannot confine: {e}");
                std::process::exit(3);
            }
        }
    } else {
        serde_json::Value::Null
    };
    let escape = outside.with_file_name("escaped.txt");
    let report = json!({
        "confined": confined,
        "enforced": enforced,
        "tcp_socket": outcome(std::net::TcpListener::bind("127.0.0.1:0")),
        "udp_socket": outcome(std::net::UdpSocket::bind("127.0.0.1:0")),
        "read_inside": outcome(std::fs::read(dir.join("train.csv"))),
        "read_outside": outcome(std::fs::read(&outside)),
        "write_outside": outcome(std::fs::write(&escape, b"escaped")),
        "exec": outcome(
            std::env::current_exe().and_then(|exe| std::process::Command::new(exe).arg("--noop").status())
        ),
        "training": match train(&dir) {
            Ok(v) => json!({"ok": true, "result": v}),
            Err(e) => json!({"ok": false, "error": e}),
        },
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{report}");
}
