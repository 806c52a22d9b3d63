//! `confide model import`: an ONNX graph into a job's `[model]` section (a layer list) and its
//! initial weights as safetensors, with the digests of both files (`confide_ml::onnx`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use confide_core::layers::Layer;
use serde_json::{Value, json};

/// `confide model import`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The ONNX file (for example from `torch.onnx.export`, opset 17 or later).
    pub onnx: PathBuf,
    /// A new directory for model.toml (the job's [model] section) and init.safetensors (the
    /// graph's weights in Confide's layout).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(serde::Serialize)]
struct Section<'a> {
    model: ModelToml<'a>,
}

#[derive(serde::Serialize)]
struct ModelToml<'a> {
    kind: &'static str,
    classes: usize,
    input: &'a [usize],
    layers: &'a [Layer],
    init: InitToml,
}

#[derive(serde::Serialize)]
struct InitToml {
    file: &'static str,
    sha256: String,
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Runs `confide model import`.
pub fn import(args: &ImportArgs) -> Result<Value> {
    let bytes = std::fs::read(&args.onnx)
        .with_context(|| format!("cannot read {}", args.onnx.display()))?;
    let imported = confide_ml::onnx::import(&bytes)?;
    let spec = imported.model_spec();
    let weights = confide_ml::export::to_safetensors(&spec, &imported.params)?;
    if weights.len() > confide_core::config::MAX_INIT_BYTES {
        bail!(
            "the graph's weights take {} bytes; a job carries at most {} bytes of initial weights (in its signed manifest)",
            weights.len(),
            confide_core::config::MAX_INIT_BYTES
        );
    }
    write_new_dir(&args.out)?;
    let section = Section {
        model: ModelToml {
            kind: "layers",
            classes: imported.classes,
            input: &imported.input,
            layers: &imported.layers,
            init: InitToml {
                file: "init.safetensors",
                sha256: sha256(&weights),
            },
        },
    };
    let header = format!(
        "# Imported by `confide model import` from {} (sha256 {}).\n\
         # The [model] section of a job: paste it into the job file, with init.safetensors (the\n\
         # graph's weights in this layer list's layout) beside it; the manifest carries both.\n",
        file_name(&args.onnx),
        sha256(&bytes),
    );
    let toml_text = header + &toml::to_string(&section)?;
    let model_toml = args.out.join("model.toml");
    let init = args.out.join("init.safetensors");
    std::fs::write(&model_toml, toml_text)
        .with_context(|| format!("cannot write {}", model_toml.display()))?;
    std::fs::write(&init, &weights).with_context(|| format!("cannot write {}", init.display()))?;
    Ok(json!({
        "onnx": args.onnx.display().to_string(),
        "onnx_sha256": sha256(&bytes),
        "model": model_toml.display().to_string(),
        "init": init.display().to_string(),
        "init_sha256": sha256(&weights),
        "input": imported.input,
        "classes": imported.classes,
        "layers": imported.layers.iter().map(Layer::name).collect::<Vec<_>>(),
        "parameters": imported.params.len(),
        "dropped": imported.dropped,
    }))
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Creates `dir`, refusing one that exists and is not empty (nothing is overwritten).
fn write_new_dir(dir: &Path) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty; refusing to overwrite",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
