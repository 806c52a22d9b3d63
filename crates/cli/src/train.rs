//! `confide train`: central training for one data owner, with DP-SGD when the job has a
//! `[privacy]` section. It is the base of the confidential trainer: one party's data, one
//! trusted process, a model released with an (ε, δ) guarantee.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use confide_core::{JobConfig, JobSpec};
use confide_dp::ledger::{Budget, BudgetLedger};
use confide_ml::dpsgd::{self, CsprngNoise, PrivateRun};
use confide_ml::export::{ModelCard, export_model};
use confide_ml::{Dataset, ModelSpec, Standardizer, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

/// Arguments of `confide train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Job file (TOML). The training set is the union of its parties' `data` files (one
    /// trusted trainer over what the owners uploaded) unless `--data` is given; `[evaluation]
    /// test` is the test set. Training runs `job.rounds × training.local_epochs` passes over
    /// the data.
    #[arg(long)]
    pub config: PathBuf,
    /// Training CSV (overrides the job file's first party).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Seed for the model's initial weights (overrides `job.seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override `privacy.target_epsilon` (used by `confide dp sweep`).
    #[arg(long)]
    pub target_epsilon: Option<f64>,
    /// Directory for `model.safetensors`, `model.json` and `report.json`
    /// (default: runs/train-<job id>-<millis>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the report JSON here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Budget ledger (a redb file) to debit before training starts; with `--dataset`.
    #[arg(long, requires = "dataset")]
    pub ledger: Option<PathBuf>,
    /// The dataset's name in the ledger.
    #[arg(long, requires = "ledger")]
    pub dataset: Option<String>,
    /// Draw Poisson batches and noise from a ChaCha20 stream seeded with this value instead of
    /// the operating system. The run is then NOT private against anyone who knows the seed:
    /// for reproducing experiments only.
    #[arg(long)]
    pub insecure_noise_seed: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// DP-SGD's clipping and sampling without its noise (σ = 0): a non-private reference with
    /// the same hyper-parameters, as `confide dp sweep` draws it. Reports no ε.
    #[arg(long)]
    pub without_noise: bool,
}

/// The JSON report of a training run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    /// Job id.
    pub job_id: String,
    /// `dp-sgd` or `sgd`.
    pub method: String,
    /// Training rows.
    pub train_rows: usize,
    /// Test accuracy (when the job has an evaluation set).
    pub test_accuracy: Option<f64>,
    /// Test ROC AUC (binary tasks).
    pub test_auc: Option<f64>,
    /// Test log-loss.
    pub test_log_loss: Option<f64>,
    /// ε spent (None without DP).
    pub epsilon: Option<f64>,
    /// δ.
    pub delta: Option<f64>,
    /// Accountant name.
    pub accountant: Option<String>,
    /// Noise multiplier σ.
    pub noise_multiplier: Option<f64>,
    /// Clip norm C.
    pub clip_norm: Option<f64>,
    /// Poisson sampling rate.
    pub sampling_rate: Option<f64>,
    /// Optimisation steps.
    pub steps: u64,
    /// Steps with an empty Poisson batch.
    pub empty_batches: u64,
    /// Fraction of per-sample gradients that were clipped.
    pub clipped_fraction: Option<f64>,
    /// Whether noise came from a fixed seed (not private).
    pub insecure_noise_seed: bool,
    /// Wall-clock seconds of training.
    pub wall_seconds: f64,
    /// Model files.
    pub model: String,
}

/// Runs `confide train`.
pub fn run(args: TrainArgs) -> Result<i32> {
    let report = train(&args)?;
    outln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(0)
}

/// Trains and returns the report (also written under the output directory).
pub fn train(args: &TrainArgs) -> Result<TrainReport> {
    let mut config = JobConfig::load(&args.config)?;
    if let Some(e) = args.target_epsilon {
        let Some(p) = config.privacy.as_mut() else {
            bail!("--target-epsilon needs a [privacy] section in the job file");
        };
        p.target_epsilon = Some(e);
        p.noise_multiplier = None;
    }
    let spec = config.spec();
    spec.validate()?;
    let paths: Vec<PathBuf> = match &args.data {
        Some(p) => vec![p.clone()],
        None => config.parties.iter().map(|p| p.data.clone()).collect(),
    };
    let parts = paths
        .iter()
        .map(|path| confide_ml::job::load_job_data(&spec, path))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(train) = Dataset::concat(parts) else {
        bail!("no training data: give --data or a [[parties]] entry");
    };
    if train.is_empty() {
        bail!("no rows to train on in {paths:?}");
    }
    let test = match &config.evaluation {
        Some(e) => Some(confide_net::node::load_job_data(&spec, &e.test)?),
        None => None,
    };
    let model = confide_net::coordinator::model_spec(&spec);
    let seed = args.seed.unwrap_or(spec.job.seed);
    let init = confide_ml::job::initial_params(&spec, seed).map_err(anyhow::Error::msg)?;
    let epochs = spec
        .job
        .rounds
        .checked_mul(spec.training.local_epochs)
        .context("job.rounds × training.local_epochs overflows")?;

    if spec.privacy.is_some() {
        // Central training with a [privacy] section is DP-SGD, whatever its level says: refuse
        // a layer it cannot clip before any budget is touched.
        confide_core::layers::record_level_dp_supported(&spec.model.layers)
            .map_err(anyhow::Error::msg)?;
    }
    let mut private = match &spec.privacy {
        Some(p) => Some(
            dpsgd::plan_private_run(
                p,
                train.len(),
                spec.training.batch_size,
                epochs,
                1,
                spec.training.learning_rate,
                spec.training.l2,
            )
            .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    if args.without_noise {
        let Some(run) = private.as_mut() else {
            bail!("--without-noise needs a [privacy] section");
        };
        if args.ledger.is_some() {
            bail!("--without-noise is not private: it cannot run against a ledger");
        }
        run.config.noise_multiplier = 0.0;
    }
    if args.insecure_noise_seed.is_some() && args.ledger.is_some() {
        bail!("--insecure-noise-seed makes the noise predictable: it cannot run against a ledger");
    }
    let ledger = match (&args.ledger, &args.dataset, &private) {
        (Some(path), Some(dataset), Some(run)) => {
            let ledger = BudgetLedger::open(path)?;
            ledger.start_job(
                dataset,
                &spec.job.id,
                Budget::new(run.plan.epsilon, run.plan.delta)?,
            )?;
            Some((ledger, dataset.clone()))
        }
        (Some(path), Some(dataset), None) => {
            let ledger = BudgetLedger::open(path)?;
            if ledger.budget(dataset)?.is_some() {
                bail!(
                    "dataset `{dataset}` has a privacy budget in {}, and this job has no [privacy] section: its ε would be unbounded",
                    path.display()
                );
            }
            None
        }
        _ => None,
    };

    let total_steps = match &private {
        Some(run) => run.config.steps,
        None => u64::from(epochs) * train.len().div_ceil(spec.training.batch_size) as u64,
    };
    let bar = progress(args.quiet, total_steps);
    let start = Instant::now();
    let (params, steps, empty, clipped) = match &private {
        Some(run) => {
            let (mut sampler, mut noise) = match args.insecure_noise_seed {
                Some(s) => (
                    ChaCha20Rng::seed_from_u64(s),
                    CsprngNoise::from_seed(s.wrapping_add(1)),
                ),
                None => (
                    ChaCha20Rng::from_entropy(),
                    CsprngNoise::from_entropy().map_err(anyhow::Error::msg)?,
                ),
            };
            let out = dpsgd::train_dp(
                &model,
                &init,
                &train,
                &run.config,
                &mut sampler,
                &mut noise,
                &mut |done, _| bar.set_position(done),
            )?;
            (
                out.params,
                out.steps,
                out.empty_batches,
                Some(out.clipped_fraction),
            )
        }
        None => {
            let out = confide_ml::train::train(
                &model,
                &init,
                &train,
                &TrainConfig {
                    epochs,
                    batch_size: spec.training.batch_size,
                    learning_rate: spec.training.learning_rate,
                    l2: spec.training.l2,
                    proximal_mu: 0.0,
                    seed,
                },
            )?;
            (out.params, out.steps, 0, None)
        }
    };
    let wall_seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if let Some((ledger, dataset)) = &ledger {
        ledger.mark_finished(dataset, &spec.job.id)?;
    }

    let metrics = match &test {
        Some(t) => Some(confide_ml::train::evaluate(&model, &params, t)?),
        None => None,
    };
    let out_dir = args.out.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        PathBuf::from("runs").join(format!("train-{}-{ms}", spec.job.id))
    });
    let model_path = write_model(&out_dir, &spec, &model, &params, &train, private.as_ref())?;
    let report = TrainReport {
        job_id: spec.job.id.clone(),
        method: if private.is_some() { "dp-sgd" } else { "sgd" }.into(),
        train_rows: train.len(),
        test_accuracy: metrics.map(|m| m.accuracy),
        test_auc: metrics.and_then(|m| m.auc),
        test_log_loss: metrics.map(|m| m.log_loss),
        epsilon: private
            .as_ref()
            .filter(|_| !args.without_noise)
            .map(|r| r.plan.epsilon),
        delta: private.as_ref().map(|r| r.plan.delta),
        accountant: private
            .as_ref()
            .map(|r| r.plan.accountant.as_str().to_string()),
        noise_multiplier: private.as_ref().map(|r| r.config.noise_multiplier),
        clip_norm: private.as_ref().map(|r| r.config.clip_norm),
        sampling_rate: private.as_ref().map(|r| r.config.sampling_rate),
        steps,
        empty_batches: empty,
        clipped_fraction: clipped,
        insecure_noise_seed: args.insecure_noise_seed.is_some(),
        wall_seconds,
        model: model_path.display().to_string(),
    };
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(out_dir.join("report.json"), &json)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

fn progress(quiet: bool, total: u64) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:40}] step {pos}/{len} ({eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("training");
    bar
}

fn write_model(
    dir: &Path,
    spec: &JobSpec,
    model: &ModelSpec,
    params: &[f32],
    train: &Dataset,
    private: Option<&PrivateRun>,
) -> Result<PathBuf> {
    let standardization = Standardizer::of_job(&spec.data.standardize);
    let mut provenance = HashMap::from([
        ("job_id".to_string(), spec.job.id.clone()),
        ("trainer".to_string(), "confide train".to_string()),
    ]);
    if let Some(run) = private.filter(|r| r.config.noise_multiplier > 0.0) {
        provenance.insert("epsilon".into(), run.plan.epsilon.to_string());
        provenance.insert("delta".into(), run.plan.delta.to_string());
        provenance.insert("accountant".into(), run.plan.accountant.as_str().into());
    }
    let card = ModelCard::new(
        model,
        train.feature_names.clone(),
        standardization,
        provenance,
    );
    let (weights, _) = export_model(dir, "model", params, &card)?;
    Ok(weights)
}
