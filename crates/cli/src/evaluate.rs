//! `confide evaluate`: scores an exported model (its safetensors file, with the JSON card
//! beside it) on data files read as the job describes them, for example each hospital's own
//! test set. The card must match the job's model, standardisation and feature names, so that
//! the files are read and scaled as in training. Prints JSON.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use confide_core::JobConfig;
use confide_ml::Standardizer;
use confide_ml::export::{ModelCard, from_safetensors};
use serde_json::{Value, json};

/// `confide evaluate`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// The job file the model was trained by: its `[model]` must be the card's, and its
    /// `[data]` section reads the files.
    #[arg(long)]
    pub config: PathBuf,
    /// The model's safetensors file (`runs/<job>/model/model.safetensors`); its card is the
    /// `.json` file of the same name.
    #[arg(long)]
    pub model: PathBuf,
    /// A data file to score (repeat for several).
    #[arg(long = "data", required = true)]
    pub data: Vec<PathBuf>,
}

/// Runs `confide evaluate`.
pub fn run(args: &EvaluateArgs) -> Result<Value> {
    let spec = JobConfig::load(&args.config)?.spec();
    let model = confide_ml::job::model_spec(&spec);
    let card_path = args.model.with_extension("json");
    let card: ModelCard = serde_json::from_str(
        &std::fs::read_to_string(&card_path).with_context(|| card_path.display().to_string())?,
    )
    .with_context(|| format!("{}: not a model card", card_path.display()))?;
    if card.spec != model {
        bail!(
            "{} describes another model than {}'s [model] section",
            card_path.display(),
            args.config.display()
        );
    }
    let standardization = Standardizer::of_job(&spec.data.standardize);
    if card.standardization != standardization {
        bail!(
            "{} was trained with another standardisation than {}'s [data] section applies",
            card_path.display(),
            args.config.display()
        );
    }
    if !spec.data.features.is_empty() && card.feature_names != spec.data.features {
        bail!(
            "{} was trained on other features than {}'s data.features",
            card_path.display(),
            args.config.display()
        );
    }
    let bytes = std::fs::read(&args.model).with_context(|| args.model.display().to_string())?;
    let params = from_safetensors(&model, &bytes)?;
    let mut files = Vec::with_capacity(args.data.len());
    for path in &args.data {
        let data = confide_ml::job::load_job_data(&spec, path)?;
        let m = confide_ml::train::evaluate(&model, &params, &data)?;
        files.push(json!({
            "data": path.display().to_string(),
            "rows": m.rows,
            "correct": m.correct,
            "accuracy": m.accuracy,
            "log_loss": m.log_loss,
            "auc": m.auc,
        }));
    }
    Ok(json!({
        "model": args.model.display().to_string(),
        "job": spec.job.id,
        "files": files,
    }))
}
