//! The job configuration: one TOML file that describes a federated training job.
//!
//! A [`JobConfig`] is what a person writes (`examples/breast_homo.toml`). It contains local,
//! per-machine details (where each party's CSV lives, how the simulation starts its roles) and
//! the shareable part, the [`JobSpec`], that every role must agree on: model, data schema,
//! training hyper-parameters, encoding, aggregation scheme and participants. The spec has a
//! digest ([`JobSpec::digest_input`]) that owners sign into every contribution, so a coordinator
//! cannot reuse a contribution made for one job in another.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layers::{self, Layer, Shape};

/// The most parameters a job's model may have (64 MiB as f32): every process of a job
/// allocates several vectors of this length, and an unallocatable model would abort each one.
pub const MAX_PARAMS: usize = 1 << 24;

/// The largest learning rate accepted (local and server). Far above any useful value; it
/// keeps a typo such as `1e300` from passing validation.
pub const MAX_LEARNING_RATE: f64 = 100.0;
/// Largest FedProx μ accepted (Li et al. tune μ in {0.001, 0.01, 0.1, 1}).
pub const MAX_PROXIMAL_MU: f64 = 10.0;

/// Errors found while reading or validating a job configuration. These are configuration
/// mistakes: the person who wrote the file must fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read job config {path}: {source}")]
    Read {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("invalid job config {path}: {message}")]
    Parse {
        /// The path of the file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of its allowed range or inconsistent with another.
    #[error("invalid job config: `{field}` {problem}")]
    Invalid {
        /// The dotted name of the field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

pub(crate) fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// The aggregation scheme that protects owners' updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemeKind {
    /// No protection: the coordinator sees every update. For tests and baselines only.
    Plain,
    /// Packed fixed-point Paillier; a separate key holder decrypts only the sum.
    Paillier,
    /// SecAgg+ pairwise masking: no key holder; survives dropouts (`[masking]`).
    Masking,
    /// BFV lattice encryption with SIMD packing; a separate key holder decrypts only the sum.
    Lattice,
    /// Prio3 additive shares with validity proofs among `n ≥ 2` aggregators (`[aggregators]`);
    /// private while one aggregator is honest.
    Shares,
    /// Shamir `t`-of-`n` shares among aggregators with robust reconstruction (`[aggregators]`).
    Threshold,
}

impl SchemeKind {
    /// Whether a separate key holder decrypts the round's sum (`paillier`, `lattice`).
    pub fn uses_key_holder(self) -> bool {
        matches!(self, SchemeKind::Paillier | SchemeKind::Lattice)
    }

    /// Whether several aggregators (`confide aggregator`) finish each round (`shares`,
    /// `threshold`).
    pub fn uses_aggregators(self) -> bool {
        matches!(self, SchemeKind::Shares | SchemeKind::Threshold)
    }

    /// The name used in configuration files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemeKind::Plain => "plain",
            SchemeKind::Paillier => "paillier",
            SchemeKind::Masking => "masking",
            SchemeKind::Lattice => "lattice",
            SchemeKind::Shares => "shares",
            SchemeKind::Threshold => "threshold",
        }
    }
}

/// The `[aggregators]` section: how many aggregators run a `shares` or `threshold` job and,
/// under `threshold`, how many of them reconstruct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AggregatorsSection {
    /// Aggregators, `n`. Default: 2 under `shares`, 7 under `threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Under `threshold`: shares that reconstruct, `t` (`t − 1` colluding aggregators learn
    /// nothing); more than half of `n` and below `n`. Default: `⌊n/2⌋ + 1`, 4 of 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<usize>,
}

impl AggregatorsSection {
    /// `(n, t)` under `scheme`; under `shares` every aggregator is needed, `t = n`.
    pub fn effective(&self, scheme: SchemeKind) -> (usize, usize) {
        match scheme {
            SchemeKind::Threshold => {
                let n = self.count.unwrap_or(7);
                (n, self.threshold.unwrap_or(n / 2 + 1))
            }
            _ => {
                let n = self.count.unwrap_or(2);
                (n, n)
            }
        }
    }
}

/// The `[masking]` section: SecAgg+ parameters (defaults from the owner count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MaskingSection {
    /// Neighbours per owner, `k` (even, or `n − 1` for the complete graph). Default: the
    /// complete graph up to 31 owners, else 20 (Bell et al. choose `k = O(log n)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbours: Option<usize>,
    /// Shares needed to rebuild an owner's secrets, `t`: more than half of its `k + 1` share
    /// holders. Default: the smallest such value, `⌊(k + 1)/2⌋ + 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<usize>,
}

impl MaskingSection {
    /// `(k, t)` for `n` owners.
    pub fn effective(&self, n: usize) -> (usize, usize) {
        let complete = n.saturating_sub(1);
        let k = self
            .neighbours
            .unwrap_or(if n <= 31 { complete } else { 20 })
            .min(complete);
        let t = self.threshold.unwrap_or(k.div_ceil(2) + 1);
        (k, t)
    }
}

/// The model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Binary logistic regression (one output, sigmoid).
    Logistic,
    /// Multinomial logistic (softmax) regression.
    Softmax,
    /// Multi-layer perceptron with ReLU hidden layers and a softmax (or sigmoid) output.
    Mlp,
    /// A declarative list of layers (`model.input`, `[[model.layers]]`; see
    /// [`crate::layers`]), ending in one logit per class under a softmax.
    Layers,
}

/// A column of a CSV file, by header name or by zero-based index (for files without a header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnRef {
    /// Zero-based column index.
    Index(usize),
    /// Header name.
    Name(String),
}

impl std::fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnRef::Index(i) => write!(f, "column #{i}"),
            ColumnRef::Name(n) => write!(f, "column `{n}`"),
        }
    }
}

/// The `[job]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// A name for the job; it appears in reports and in every signed contribution.
    pub id: String,
    /// Number of federated rounds.
    pub rounds: u32,
    /// Aggregation scheme.
    pub scheme: SchemeKind,
    /// The key holder decrypts (and the coordinator aggregates) only when at least this many
    /// distinct authorised owners contributed to a round.
    pub min_owners: usize,
    /// Seed for model initialisation and local shuffling (not for any cryptographic randomness).
    #[serde(default)]
    pub seed: u64,
    /// How long the coordinator waits for contributions in a round before it proceeds without
    /// the missing owners (or fails the round when fewer than `min_owners` remain).
    #[serde(default = "default_round_timeout")]
    pub round_timeout_secs: f64,
}

fn default_round_timeout() -> f64 {
    60.0
}

/// The `[model]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Model family.
    pub kind: ModelKind,
    /// Hidden layer widths (MLP only).
    #[serde(default)]
    pub hidden: Vec<usize>,
    /// Number of classes (2 for logistic regression).
    pub classes: usize,
    /// The shape of one record for a layer list (`kind = "layers"` only; empty: a flat
    /// vector of `data.feature_count` numbers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input: Vec<usize>,
    /// The layers (`kind = "layers"` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// Initial weights for a layer list (`init = { file = "init.safetensors", sha256 = "…" }`,
    /// as `confide model import` writes them); without it, the seeded initialisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitWeights>,
}

/// The most bytes of initial weights a job carries: they travel inside the signed manifest
/// (at most 1 MiB, base64 taking 4/3), so every role starts from the bytes the model owner
/// signed.
pub const MAX_INIT_BYTES: usize = 512 * 1024;

/// A layer list's initial weights, carried in the job itself: the safetensors file in
/// Confide's layout and its SHA-256. The manifest binds both; the file's path stays on the
/// model owner's machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitWeights {
    /// The file, relative to the job file: read by [`JobConfig::load`], never part of the
    /// job's spec.
    #[serde(default, skip_serializing)]
    pub file: Option<PathBuf>,
    /// SHA-256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// The file's bytes, base64 (standard alphabet, padded); filled by [`JobConfig::load`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub safetensors: String,
}

impl InitWeights {
    /// The weights' bytes, checked against their digest.
    ///
    /// # Errors
    /// No bytes (a job parsed from text, not loaded), bytes that are not base64, or bytes
    /// whose SHA-256 is not the stated one.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        use base64::Engine as _;
        if self.safetensors.is_empty() {
            return Err(
                "model.init names weights that were not read (load the job from its file)".into(),
            );
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.safetensors)
            .map_err(|e| format!("model.init: the weights are not base64: {e}"))?;
        let digest = hex_lower(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        if digest != self.sha256 {
            return Err(format!(
                "model.init: the weights' SHA-256 is {digest}, not the stated {}",
                self.sha256
            ));
        }
        Ok(bytes)
    }

    /// Reads the file (resolved against `base`), checks its size and digest, and keeps its
    /// bytes.
    fn read(&mut self, base: &Path) -> Result<(), ConfigError> {
        use base64::Engine as _;
        let Some(file) = &self.file else {
            return Ok(());
        };
        let path = resolve(base, file);
        let bytes = std::fs::read(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        if bytes.len() > MAX_INIT_BYTES {
            return Err(invalid(
                "model.init",
                format!(
                    "{} has {} bytes; a job carries at most {MAX_INIT_BYTES} bytes of initial weights",
                    path.display(),
                    bytes.len()
                ),
            ));
        }
        self.safetensors = base64::engine::general_purpose::STANDARD.encode(&bytes);
        self.bytes().map_err(|m| invalid("model.init", m))?;
        self.file = Some(path);
        Ok(())
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ModelSection {
    /// The input shape of a layer list, for records of `features` numbers.
    ///
    /// # Errors
    /// A message when `input` does not fit the features or the first layer.
    pub fn layer_input(&self, features: usize) -> Result<Shape, String> {
        layers::input_shape(&self.input, features, &self.layers)
    }
}

/// How features are standardised. Statistics are never fitted per node in a federated job,
/// because owners standardising differently would make their updates incompatible (FedAvg
/// averages weights that refer to differently scaled inputs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
pub enum StandardizeSpec {
    /// Use features as they are (breast_homo is already standardised upstream).
    None,
    /// Fixed statistics written into the job: `x' = (x - mean) / std`.
    Fixed {
        /// Per-feature mean.
        mean: Vec<f64>,
        /// Per-feature standard deviation (must be positive).
        std: Vec<f64>,
    },
}

/// How an owner's data file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// A CSV file of feature columns and a label column.
    #[default]
    Csv,
    /// Plain text for next-character prediction (LEAF's Shakespeare task): the file's lines
    /// are joined with one space, every character becomes its index in `data.text.alphabet`,
    /// and each window of `data.feature_count` characters is a record whose label is the
    /// character after it.
    Text,
    /// One safetensors file per owner: records `x` (`U8` pixels, scaled by 1/255, or `F32`),
    /// labels `y`, and optionally `group` (docs/models.md).
    Safetensors,
}

impl DataFormat {
    fn is_csv(&self) -> bool {
        *self == DataFormat::Csv
    }
}

/// LEAF's 80 characters for Shakespeare (`ALL_LETTERS` in LEAF's
/// `models/utils/language_utils.py`, github.com/TalwalkarLab/leaf), in its order.
pub const LEAF_ALPHABET: &str =
    "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}";

/// What a text file's characters outside the alphabet do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownChars {
    /// The file is refused (the error gives the count and the first line, never the
    /// character).
    #[default]
    Refuse,
    /// They are dropped before the windows are cut.
    Skip,
}

/// `[data.text]`: how text becomes records (format = "text").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// The characters, in id order; `model.classes` must be its length. `"leaf"` (the
    /// default) is [`LEAF_ALPHABET`].
    #[serde(default = "leaf")]
    pub alphabet: String,
    /// Characters outside the alphabet.
    #[serde(default)]
    pub unknown: UnknownChars,
    /// Characters between the starts of consecutive windows (1: every window, as LEAF).
    #[serde(default = "one_usize")]
    pub stride: usize,
}

fn leaf() -> String {
    "leaf".into()
}

fn one_usize() -> usize {
    1
}

impl TextSpec {
    /// The alphabet's characters, in id order.
    pub fn characters(&self) -> Vec<char> {
        if self.alphabet == "leaf" {
            LEAF_ALPHABET.chars().collect()
        } else {
            self.alphabet.chars().collect()
        }
    }
}

impl Default for TextSpec {
    fn default() -> Self {
        Self {
            alphabet: leaf(),
            unknown: UnknownChars::Refuse,
            stride: 1,
        }
    }
}

/// The `[data]` section: the schema every owner's data file must have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// How the files are read (CSV unless set).
    #[serde(default, skip_serializing_if = "DataFormat::is_csv")]
    pub format: DataFormat,
    /// Whether the CSV files start with a header row.
    #[serde(default = "yes")]
    pub has_header: bool,
    /// The label column (CSV only; required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<ColumnRef>,
    /// Columns that are neither features nor label (such as a row id).
    #[serde(default)]
    pub exclude: Vec<ColumnRef>,
    /// Number of feature columns.
    pub feature_count: usize,
    /// Expected feature names, in order (files with a header only). When given, every owner
    /// checks that its header matches exactly.
    #[serde(default)]
    pub features: Vec<String>,
    /// Standardisation.
    #[serde(default = "no_standardize")]
    pub standardize: StandardizeSpec,
    /// How text becomes records (format = "text" only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
}

fn yes() -> bool {
    true
}

fn no_standardize() -> StandardizeSpec {
    StandardizeSpec::None
}

/// The `[training]` section: local training at every owner, and the server step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Local passes over the owner's data per round.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// SGD learning rate.
    pub learning_rate: f64,
    /// L2 penalty (weight decay) applied to weights, not biases.
    #[serde(default)]
    pub l2: f64,
    /// Server learning rate applied to the averaged update (1.0 is plain FedAvg); the η of
    /// the server optimiser when there is one.
    #[serde(default = "one")]
    pub server_learning_rate: f64,
    /// The server optimiser; none is FedAvg (the model moves by η times the mean update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_optimizer: Option<ServerOptimizer>,
    /// FedProx's proximal term μ (Li et al., "Federated Optimization in Heterogeneous
    /// Networks", MLSys 2020): each owner minimises its loss plus `μ/2·‖w − w_global‖²`, which
    /// keeps local models near the round's global model on skewed data. None is FedAvg's
    /// local step (μ = 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proximal_mu: Option<f64>,
    /// A robust aggregation rule instead of the mean (only under `plain`, where the
    /// coordinator sees each update; the other schemes reveal only the sum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust: Option<RobustRule>,
}

/// `[training.robust]`: how the coordinator combines the round's updates under `plain` when
/// some owners may send arbitrary ones. Coordinate-wise median and trimmed mean are Yin et al.,
/// "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018; Krum
/// is Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient
/// Descent", NeurIPS 2017.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RobustRule {
    /// `median`, `trimmed_mean` or `krum`.
    pub kind: RobustKind,
    /// Trimmed mean: the fraction of updates dropped at each end of every coordinate, in
    /// [0, 0.5).
    #[serde(default = "default_trim")]
    pub trim: f64,
    /// Krum: the number of faulty owners f it tolerates (it needs n ≥ 2f + 3 updates).
    #[serde(default = "default_faulty")]
    pub faulty: usize,
}

/// Which robust rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RobustKind {
    /// The coordinate-wise median.
    Median,
    /// The coordinate-wise mean of the values left after dropping the `trim` fraction at
    /// each end.
    TrimmedMean,
    /// The one update whose n − f − 2 nearest neighbours are nearest (squared L2).
    Krum,
}

fn default_trim() -> f64 {
    0.1
}

/// How many updates a trimmed mean drops at each end of a coordinate when `n` arrive:
/// ⌊trim·n⌋, computed so that a product such as 0.29·100 = 28.999… still gives 29.
pub fn trimmed(trim: f64, n: usize) -> usize {
    (trim * n as f64 + 1e-9).floor() as usize
}

fn default_faulty() -> usize {
    1
}

fn one() -> f64 {
    1.0
}

/// A server optimiser: how the coordinator moves the global model by the round's mean update
/// Δ. FedAvgM is Hsu et al. 2019 (arXiv:1909.06335): `v ← β₁·v + Δ`, `x ← x + η·v`. FedAdagrad,
/// FedAdam and FedYogi are Reddi et al., "Adaptive Federated Optimization", ICLR 2021,
/// Algorithm 2: `m ← β₁·m + (1−β₁)·Δ`, then `v ← v + Δ²` (Adagrad), `v ← β₂·v + (1−β₂)·Δ²`
/// (Adam) or `v ← v − (1−β₂)·Δ²·sign(v − Δ²)` (Yogi), and `x ← x + η·m / (√v + τ)`, with
/// `m` starting at 0 and `v` at τ².
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptimizer {
    /// `fedavgm`, `fedadagrad`, `fedadam` or `fedyogi`.
    pub kind: ServerOptimizerKind,
    /// β₁: the momentum (FedAvgM) or the first-moment decay.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// β₂: the second-moment decay (FedAdam, FedYogi).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// τ: the adaptivity (the second moment's floor).
    #[serde(default = "default_tau")]
    pub tau: f64,
}

/// Which server optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerOptimizerKind {
    /// Server momentum.
    FedAvgM,
    /// Adaptive, with the sum of squared updates.
    FedAdagrad,
    /// Adaptive, Adam's moments.
    FedAdam,
    /// Adaptive, Yogi's additive second moment.
    FedYogi,
}

fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.99
}

fn default_tau() -> f64 {
    1e-3
}

/// The `[encoding]` section: how float updates become integers for secure aggregation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncodingSection {
    /// Fixed-point fractional bits: a value `v` is encoded as `round(v · 2^scale_bits)`.
    #[serde(default = "default_scale_bits")]
    pub scale_bits: u32,
    /// Every update coordinate is clipped to `[-clip, clip]` before encoding.
    #[serde(default = "default_clip")]
    pub clip: f64,
}

fn default_scale_bits() -> u32 {
    24
}

fn default_clip() -> f64 {
    4.0
}

impl Default for EncodingSection {
    fn default() -> Self {
        Self {
            scale_bits: default_scale_bits(),
            clip: default_clip(),
        }
    }
}

/// The `[paillier]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaillierSection {
    /// Modulus size in bits: 2048 (default) or 3072.
    #[serde(default = "default_modulus_bits")]
    pub modulus_bits: u32,
    /// Key holder only: load the secret key from this file instead of generating one at start.
    /// Local to the key holder; not part of the shared spec.
    #[serde(default, skip_serializing)]
    pub key_file: Option<PathBuf>,
}

fn default_modulus_bits() -> u32 {
    2048
}

impl Default for PaillierSection {
    fn default() -> Self {
        Self {
            modulus_bits: default_modulus_bits(),
            key_file: None,
        }
    }
}

/// One data owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartySection {
    /// The owner's name; it is also the name in its certificate.
    pub name: String,
    /// Path of the owner's CSV (used by `confide simulate`; a standalone node takes `--data`).
    pub data: PathBuf,
    /// The owner's dataset policy (used by `confide simulate`; a standalone node takes
    /// `--policy`). Without one, `simulate` approves the job by co-signing the manifest on the
    /// owner's behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
}

/// How `confide simulate` starts the roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SimulateMode {
    /// Every role is its own operating-system process on loopback.
    #[default]
    Processes,
    /// Every role is a task in one process, still talking gRPC over mutual TLS on loopback.
    InProcess,
}

/// The `[simulate]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimulateSection {
    /// Processes (default) or in-process.
    #[serde(default)]
    pub mode: SimulateMode,
    /// The model owner's identity key (from `confide keygen`), which signs the job's manifest
    /// and receives the model. Default: a fresh key for this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_owner_key: Option<PathBuf>,
    /// Make the owners from one dataset and a partitioner instead of `[[parties]]` tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionSection>,
}

/// `[simulate.partition]`: `confide simulate` splits one CSV (with the job's columns) among
/// owners `owner-001`, `owner-002`, … with a seeded partitioner, and writes each owner's part
/// into the run's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSection {
    /// The dataset: a CSV with the job's header, label and excluded columns.
    pub data: PathBuf,
    /// `natural`, `iid`, `dirichlet:ALPHA`, `shards:PER_OWNER` or `quantity:BETA`.
    pub partitioner: String,
    /// Owners to split among (the natural split makes one per group value instead).
    #[serde(default = "ten")]
    pub owners: usize,
    /// Seed of the split (the job's seed if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The group column of the natural split (a writer, a hospital, a role); it must be one
    /// of `data.exclude`, so that it is not a feature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<ColumnRef>,
}

fn ten() -> usize {
    10
}

/// The `[evaluation]` section: the coordinator's held-out set, as in Intel's sample where the
/// parameter server validates the global model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationSection {
    /// Test CSV, same schema as the owners' files.
    pub test: PathBuf,
}

/// The `[limits]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest gRPC message any role accepts or sends, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
}

fn default_max_message() -> usize {
    256 * 1024 * 1024
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message(),
        }
    }
}

/// The `[privacy]` section: differential privacy for the job. Without it, training is not
/// differentially private (updates are still protected by the aggregation scheme).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// What is protected. `record`: every owner runs DP-SGD on its own data (one record's
    /// presence is hidden; ε is accounted per dataset).
    pub level: PrivacyLevel,
    /// The ε each dataset may spend on this job; the noise multiplier is calibrated to it.
    /// Give this or `noise_multiplier`, not both.
    #[serde(default)]
    pub target_epsilon: Option<f64>,
    /// A fixed noise multiplier σ (noise standard deviation over the clip norm); ε is then
    /// computed and reported.
    #[serde(default)]
    pub noise_multiplier: Option<f64>,
    /// δ of the (ε, δ) guarantee.
    pub delta: f64,
    /// Per-record L2 clipping norm of DP-SGD.
    pub clip_norm: f64,
    /// The accountant that turns (q, σ, steps) into ε (record level; client level always
    /// uses the RDP bound of the distributed discrete Gaussian).
    #[serde(default)]
    pub accountant: AccountantKind,
    /// Client level: the number of honest owners whose noise the guarantee relies on; the
    /// noise is calibrated so that the sum of theirs alone meets the target. At most
    /// `job.min_owners` (default: `job.min_owners`).
    #[serde(default)]
    pub min_honest_owners: Option<usize>,
    /// Client level: bits of the integer ring the noisy updates are summed in (default 24).
    #[serde(default)]
    pub modulus_bits: Option<u32>,
    /// Client level: the value of one integer step (default `clip_norm / 10000`).
    #[serde(default)]
    pub granularity: Option<f64>,
}

/// The unit that differential privacy protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivacyLevel {
    /// One record of one dataset (DP-SGD at every owner).
    Record,
    /// One owner's whole contribution (the distributed discrete Gaussian of Kairouz, Liu,
    /// Steinke 2021, over secure aggregation).
    Client,
}

/// Privacy accountants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccountantKind {
    /// Rényi DP (Mironov, Talwar, Zhang 2019).
    #[default]
    Rdp,
    /// Privacy-loss distributions (tighter).
    Pld,
}

impl AccountantKind {
    /// The name used in configuration files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountantKind::Rdp => "rdp",
            AccountantKind::Pld => "pld",
        }
    }
}

impl PrivacySection {
    fn validate_client(&self, job: &JobSection) -> Result<(), ConfigError> {
        let fields = [
            (
                "privacy.min_honest_owners",
                self.min_honest_owners.is_some(),
            ),
            ("privacy.modulus_bits", self.modulus_bits.is_some()),
            ("privacy.granularity", self.granularity.is_some()),
        ];
        if self.level == PrivacyLevel::Record {
            if let Some((name, _)) = fields.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    "privacy.level",
                    format!("`{name}` applies to level = \"client\" only"),
                ));
            }
            return Ok(());
        }
        if job.scheme == SchemeKind::Plain {
            return Err(invalid(
                "privacy.level",
                "client-level DP needs a secure aggregation scheme (`paillier`): under `plain` the coordinator sees each owner's noise share",
            ));
        }
        if let Some(n) = self.min_honest_owners
            && (n == 0 || n > job.min_owners)
        {
            return Err(invalid(
                "privacy.min_honest_owners",
                format!("must be between 1 and job.min_owners ({})", job.min_owners),
            ));
        }
        if let Some(b) = self.modulus_bits
            && !(8..=40).contains(&b)
        {
            return Err(invalid("privacy.modulus_bits", "must be between 8 and 40"));
        }
        if let Some(g) = self.granularity
            && !(g > 0.0 && g.is_finite())
        {
            return Err(invalid(
                "privacy.granularity",
                "must be positive and finite",
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match (self.target_epsilon, self.noise_multiplier) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    "privacy.target_epsilon",
                    "give exactly one of privacy.target_epsilon and privacy.noise_multiplier",
                ));
            }
            (Some(e), None) if !(e > 0.0 && e <= 1000.0) => {
                return Err(invalid("privacy.target_epsilon", "must be in (0, 1000]"));
            }
            (None, Some(s)) if !(s > 0.0 && s <= 1000.0) => {
                return Err(invalid("privacy.noise_multiplier", "must be in (0, 1000]"));
            }
            _ => {}
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(invalid("privacy.delta", "must be in (0, 1)"));
        }
        if !(self.clip_norm > 0.0 && self.clip_norm.is_finite()) {
            return Err(invalid("privacy.clip_norm", "must be positive and finite"));
        }
        Ok(())
    }
}

/// A whole job configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// `[job]`
    pub job: JobSection,
    /// `[model]`
    pub model: ModelSection,
    /// `[data]`
    pub data: DataSection,
    /// `[training]`
    pub training: TrainingSection,
    /// `[encoding]`
    #[serde(default)]
    pub encoding: EncodingSection,
    /// `[paillier]`
    #[serde(default)]
    pub paillier: PaillierSection,
    /// `[evaluation]`
    #[serde(default)]
    pub evaluation: Option<EvaluationSection>,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[simulate]`
    #[serde(default)]
    pub simulate: SimulateSection,
    /// `[privacy]`
    #[serde(default)]
    pub privacy: Option<PrivacySection>,
    /// `[masking]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<MaskingSection>,
    /// `[aggregators]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregators: Option<AggregatorsSection>,
    /// `[confidential]`: train centrally in an attested trusted core instead of federating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidential: Option<ConfidentialSection>,
    /// `[code]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::code::CodeSection>,
    /// `[[parties]]` (none when `[simulate.partition]` makes the owners).
    #[serde(default)]
    pub parties: Vec<PartySection>,
}

/// The `[confidential]` section (confidential mode): the owners encrypt their data to an
/// attested trusted core, which trains centrally with DP-SGD and releases the model to the
/// recipients named here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfidentialSection {
    /// Who may receive the model (`confide simulate` creates their keys).
    #[serde(default = "default_recipients")]
    pub recipients: Vec<String>,
    /// The trusted execution environment: `dev` (the insecure simulated TEE, the only one
    /// that runs without TEE hardware).
    #[serde(default = "default_tee")]
    pub tee: String,
    /// The recipient that commissions the job (its party id is the "model owner" that the
    /// owners' dataset policies allow or refuse); default: the first recipient.
    #[serde(default)]
    pub model_owner: Option<String>,
    /// What runs in the trusted part: `sml2` (default), the trusted core alone, as its own
    /// confined process behind a typed channel; or `sml1`, everything, the host and the
    /// coordination included (Soteria's two partitionings).
    #[serde(default)]
    pub partition: Partition,
}

impl ConfidentialSection {
    /// The recipient that commissions the job.
    pub fn model_owner(&self) -> Option<&str> {
        self.model_owner
            .as_deref()
            .or_else(|| self.recipients.first().map(String::as_str))
    }
}

/// What runs inside the trusted part in confidential mode (Soteria's SML-1 and SML-2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Everything, host and coordination included, in the trusted part (one process).
    Sml1,
    /// Only the trusted core, as its own confined process; the host is untrusted.
    #[default]
    Sml2,
}

impl Partition {
    /// Its name in job files.
    pub fn as_str(self) -> &'static str {
        match self {
            Partition::Sml1 => "sml1",
            Partition::Sml2 => "sml2",
        }
    }
}

fn default_recipients() -> Vec<String> {
    vec!["model-owner".into()]
}

fn default_tee() -> String {
    "dev".into()
}

/// The part of a job that every role must agree on. It carries no local paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The authorised data owners, by name.
    pub owners: Vec<String>,
    /// Paillier modulus size.
    pub modulus_bits: u32,
    /// `[job]`
    pub job: JobSection,
    /// `[model]`
    pub model: ModelSection,
    /// `[data]`
    pub data: DataSection,
    /// `[training]`
    pub training: TrainingSection,
    /// `[encoding]`
    pub encoding: EncodingSection,
    /// `[limits]`
    pub limits: LimitsSection,
    /// `[privacy]`
    #[serde(default)]
    pub privacy: Option<PrivacySection>,
    /// `[masking]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<MaskingSection>,
    /// `[aggregators]`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregators: Option<AggregatorsSection>,
    /// `[code]`: the model owner's own training code, run confined at every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<crate::code::CodeSection>,
}

impl JobConfig {
    /// Reads, parses and validates a job file. Relative paths in it are resolved against the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        // Absolute, so the resolved config means the same from any working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let base = base.as_path();
        for party in &mut config.parties {
            party.data = resolve(base, &party.data);
            if let Some(p) = &mut party.policy {
                *p = resolve(base, p);
            }
        }
        if let Some(k) = &mut config.simulate.model_owner_key {
            *k = resolve(base, k);
        }
        if let Some(part) = &mut config.simulate.partition {
            part.data = resolve(base, &part.data);
        }
        if let Some(eval) = &mut config.evaluation {
            eval.test = resolve(base, &eval.test);
        }
        if let Some(key) = &mut config.paillier.key_file {
            *key = resolve(base, key);
        }
        if let Some(init) = &mut config.model.init {
            init.read(base)?;
        }
        if let Some(code) = &mut config.code {
            code.read(base)?;
            config.spec().validate()?;
        }
        Ok(config)
    }

    /// Parses and validates TOML text (paths are left as written).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: JobConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        if config.confidential.is_some() && config.code.is_some() {
            return Err(invalid(
                "code",
                "confidential mode runs Confide's own trainer only: user code would have to be measured with its interpreter and every package",
            ));
        }
        match &config.simulate.partition {
            None => config.spec_before_load().validate()?,
            Some(part) => {
                if !config.parties.is_empty() {
                    return Err(invalid(
                        "parties",
                        "a job with [simulate.partition] has no [[parties]]: simulate makes the owners",
                    ));
                }
                if config.confidential.is_some() {
                    return Err(invalid(
                        "simulate.partition",
                        "is for federated jobs, not confidential mode",
                    ));
                }
                if part.owners == 0 || part.owners > 10_000 {
                    return Err(invalid(
                        "simulate.partition.owners",
                        "must be between 1 and 10000",
                    ));
                }
                if part.partitioner != "natural" && part.owners < config.job.min_owners {
                    return Err(invalid(
                        "simulate.partition.owners",
                        format!(
                            "{} owners cannot reach job.min_owners = {}",
                            part.owners, config.job.min_owners
                        ),
                    ));
                }
                if config.data.format == DataFormat::Text {
                    return Err(invalid(
                        "simulate.partition",
                        "splits CSV or safetensors data, not text",
                    ));
                }
                if let Some(g) = &part.group {
                    if config.data.format == DataFormat::Safetensors {
                        return Err(invalid(
                            "simulate.partition.group",
                            "an array file's groups are its tensor `group`; remove this key",
                        ));
                    }
                    if !config.data.exclude.contains(g) {
                        return Err(invalid(
                            "simulate.partition.group",
                            format!("{g} must be one of data.exclude, so that it is not a feature"),
                        ));
                    }
                }
                // Everything else is checked now, on as many placeholder owners as the split
                // asks for (the natural split's count is known once the data is read).
                let mut probe = config.clone();
                probe.parties = (1..=part.owners.max(probe.job.min_owners))
                    .map(|i| PartySection {
                        name: format!("owner-{i:03}"),
                        data: PathBuf::new(),
                        policy: None,
                    })
                    .collect();
                probe.spec_before_load().validate()?;
            }
        }
        if config.confidential.is_some() {
            // The trusted core trains with DP-SGD only.
            layers::record_level_dp_supported(&config.model.layers)
                .map_err(|m| invalid("model.layers", m))?;
            for (set, field) in [
                (
                    config.training.proximal_mu.is_some(),
                    "training.proximal_mu",
                ),
                (config.training.robust.is_some(), "training.robust"),
            ] {
                if set {
                    return Err(invalid(
                        field,
                        "is for federated jobs; confidential mode trains centrally",
                    ));
                }
            }
        }
        Ok(config)
    }

    /// The spec checked when the file is parsed: a `[code]` whose directory `load` has not
    /// hashed yet is left out (`load` checks the whole spec again once it has), except that
    /// record-level DP is refused at once.
    fn spec_before_load(&self) -> JobSpec {
        let mut spec = self.spec();
        if self
            .code
            .as_ref()
            .is_some_and(|c| c.dir.is_some() && c.files.is_empty())
        {
            spec.code = None;
            if spec
                .privacy
                .as_ref()
                .is_some_and(|p| p.level == PrivacyLevel::Record)
            {
                // Keep a code section the validation refuses for its privacy level.
                spec.code = self
                    .code
                    .clone()
                    .map(|c| crate::code::CodeSection { dir: None, ..c });
            }
        }
        spec
    }

    /// The shareable part of this configuration.
    pub fn spec(&self) -> JobSpec {
        JobSpec {
            job: self.job.clone(),
            model: self.model.clone(),
            data: self.data.clone(),
            training: self.training.clone(),
            encoding: self.encoding.clone(),
            modulus_bits: self.paillier.modulus_bits,
            limits: self.limits.clone(),
            privacy: self.privacy.clone(),
            masking: self.masking,
            aggregators: self.aggregators,
            code: self
                .code
                .clone()
                .map(|c| crate::code::CodeSection { dir: None, ..c }),
            owners: self.parties.iter().map(|p| p.name.clone()).collect(),
        }
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Party names are also certificate names and file names: keep them simple.
pub fn validate_party_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid party name (1-63 characters of a-z, 0-9 and '-', not starting with '-')"
        ))
    }
}

impl JobSpec {
    /// `(n, t)`: the aggregators of a `shares` or `threshold` job and how many reconstruct.
    pub fn aggregators_n_t(&self) -> (usize, usize) {
        self.aggregators
            .unwrap_or_default()
            .effective(self.job.scheme)
    }

    /// An upper bound on the model's parameter count (saturating): the layers from the
    /// features through the hidden widths to one output per class.
    pub fn param_count_bound(&self) -> usize {
        if self.model.kind == ModelKind::Layers {
            return self
                .model
                .layer_input(self.data.feature_count)
                .and_then(|input| {
                    layers::param_count(input, &self.model.layers, self.model.classes)
                })
                .unwrap_or(0);
        }
        let mut dims = vec![self.data.feature_count];
        dims.extend(&self.model.hidden);
        dims.push(self.model.classes);
        dims.windows(2).fold(0usize, |acc, w| {
            acc.saturating_add(w[0].saturating_mul(w[1]).saturating_add(w[1]))
        })
    }

    /// Checks every range and cross-field rule. Each message names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let j = &self.job;
        if j.id.is_empty() || j.id.len() > 128 {
            return Err(invalid("job.id", "must have 1 to 128 characters"));
        }
        if j.rounds == 0 || j.rounds > 100_000 {
            return Err(invalid("job.rounds", "must be between 1 and 100000"));
        }
        if self.owners.is_empty() {
            return Err(invalid("parties", "at least one data owner is needed"));
        }
        let mut names = std::collections::BTreeSet::new();
        for name in &self.owners {
            validate_party_name(name).map_err(|e| invalid("parties.name", e))?;
            if ["coordinator", "keyholder", "owner"].contains(&name.as_str())
                || name.starts_with("aggregator-")
            {
                return Err(invalid(
                    "parties.name",
                    format!("`{name}` is reserved for a role"),
                ));
            }
            if !names.insert(name) {
                return Err(invalid("parties.name", format!("`{name}` appears twice")));
            }
        }
        if j.min_owners == 0 || j.min_owners > self.owners.len() {
            return Err(invalid(
                "job.min_owners",
                format!(
                    "must be between 1 and the number of parties ({})",
                    self.owners.len()
                ),
            ));
        }
        if j.scheme.uses_key_holder() && j.min_owners < 2 {
            return Err(invalid(
                "job.min_owners",
                format!(
                    "must be at least 2 under `{}`: with one owner the decrypted sum is that owner's update",
                    j.scheme.as_str()
                ),
            ));
        }
        if j.scheme == SchemeKind::Masking {
            let n = self.owners.len();
            if n < 2 || j.min_owners < 2 {
                return Err(invalid(
                    "job.min_owners",
                    "must be at least 2 under `masking`: with one owner the unmasked sum is that owner's update",
                ));
            }
            let (k, t) = self.masking.unwrap_or_default().effective(n);
            if k < n - 1 && (k % 2 == 1 || k < 2) {
                return Err(invalid(
                    "masking.neighbours",
                    format!(
                        "{k} neighbours: a sparse neighbourhood must be even and at least 2 (or {} for every other owner)",
                        n - 1
                    ),
                ));
            }
            if t > k + 1 || 2 * t <= k + 1 {
                return Err(invalid(
                    "masking.threshold",
                    format!(
                        "{t} must be more than half of an owner's {} share holders and at most {}",
                        k + 1,
                        k + 1
                    ),
                ));
            }
        } else if self.masking.is_some() {
            return Err(invalid("masking", "applies to scheme = \"masking\" only"));
        }
        if j.scheme.uses_aggregators() {
            if j.min_owners < 2 {
                return Err(invalid(
                    "job.min_owners",
                    format!(
                        "must be at least 2 under `{}`: with one owner the reconstructed sum is that owner's update",
                        j.scheme.as_str()
                    ),
                ));
            }
            let (n, t) = self.aggregators_n_t();
            if j.scheme == SchemeKind::Shares && !(2..=16).contains(&n) {
                return Err(invalid(
                    "aggregators.count",
                    format!("{n}: `shares` needs between 2 and 16 aggregators"),
                ));
            }
            if j.scheme == SchemeKind::Shares
                && self.aggregators.and_then(|a| a.threshold).is_some()
            {
                return Err(invalid(
                    "aggregators.threshold",
                    "applies to scheme = \"threshold\" only (`shares` needs every aggregator)",
                ));
            }
            if j.scheme == SchemeKind::Threshold && !(3..=64).contains(&n) {
                return Err(invalid(
                    "aggregators.count",
                    format!("{n}: `threshold` needs between 3 and 64 aggregators"),
                ));
            }
            if j.scheme == SchemeKind::Threshold && (!(2..n).contains(&t) || 2 * t <= n) {
                return Err(invalid(
                    "aggregators.threshold",
                    format!(
                        "{t}: must be more than half of the {n} aggregators (so no two disjoint groups can each rebuild a sum, of different owners) and below {n}; a round finishes while at most ⌊(n − t)/2⌋ aggregators are down (the release quorum against split views)"
                    ),
                ));
            }
        } else if self.aggregators.is_some() {
            return Err(invalid(
                "aggregators",
                "applies to scheme = \"shares\" or \"threshold\" only",
            ));
        }
        if !(j.round_timeout_secs > 0.0 && j.round_timeout_secs <= 86_400.0) {
            return Err(invalid("job.round_timeout_secs", "must be in (0, 86400]"));
        }
        let m = &self.model;
        match m.kind {
            ModelKind::Logistic if m.classes != 2 => {
                return Err(invalid(
                    "model.classes",
                    "logistic regression needs exactly 2",
                ));
            }
            ModelKind::Logistic | ModelKind::Softmax if !m.hidden.is_empty() => {
                return Err(invalid("model.hidden", "only an MLP has hidden layers"));
            }
            ModelKind::Mlp if m.hidden.is_empty() => {
                return Err(invalid(
                    "model.hidden",
                    "an MLP needs at least one hidden layer",
                ));
            }
            ModelKind::Layers if !m.hidden.is_empty() => {
                return Err(invalid(
                    "model.hidden",
                    "a layer list gives its widths in model.layers",
                ));
            }
            ModelKind::Layers => {}
            _ if m.init.is_some() => {
                return Err(invalid(
                    "model.init",
                    "initial weights are for a layer list (kind = \"layers\")",
                ));
            }
            _ if !m.layers.is_empty() || !m.input.is_empty() => {
                return Err(invalid(
                    "model.layers",
                    "model.input and model.layers need kind = \"layers\"",
                ));
            }
            _ => {}
        }
        if let Some(init) = &m.init {
            if init.sha256.len() != 64
                || !init
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid(
                    "model.init",
                    "sha256 must be 64 lowercase hex digits (`confide model import` prints it)",
                ));
            }
            if init.file.is_none() && init.safetensors.is_empty() {
                return Err(invalid("model.init", "needs file = \"…\" (the weights)"));
            }
            // The same bound on weights given inline as on a file (base64: 4 characters per 3
            // bytes).
            if init.safetensors.len() > MAX_INIT_BYTES.div_ceil(3) * 4 {
                return Err(invalid(
                    "model.init",
                    format!("a job carries at most {MAX_INIT_BYTES} bytes of initial weights"),
                ));
            }
        }
        if m.classes < 2 || m.classes > 100_000 {
            return Err(invalid("model.classes", "must be between 2 and 100000"));
        }
        if m.hidden.iter().any(|&h| h == 0 || h > 1_000_000) {
            return Err(invalid(
                "model.hidden",
                "widths must be between 1 and 1000000",
            ));
        }
        let d = &self.data;
        if d.feature_count == 0 || d.feature_count > 1_000_000 {
            return Err(invalid(
                "data.feature_count",
                "must be between 1 and 1000000",
            ));
        }
        if let Some(code) = &self.code {
            // The directory is the job file's, read by `load`: a spec carries the files and
            // the digest only (`JobConfig::spec` drops it), and they always agree.
            if self
                .privacy
                .as_ref()
                .is_some_and(|p| p.level == PrivacyLevel::Record)
            {
                return Err(invalid(
                    "privacy.level",
                    "record-level DP cannot be enforced on user code (the node cannot see inside its training loop); use level = \"client\": the node clips each update and adds the distributed discrete Gaussian itself",
                ));
            }
            if code.dir.is_some() {
                return Err(invalid(
                    "code.dir",
                    "a job's spec carries the bundle's files and digest, not a directory",
                ));
            }
            code.validate()?;
        }
        if self.model.kind == ModelKind::Layers {
            let input = self
                .model
                .layer_input(d.feature_count)
                .map_err(|m| invalid("model.input", m))?;
            layers::infer(input, &self.model.layers, self.model.classes)
                .map_err(|m| invalid("model.layers", m))?;
            if self
                .privacy
                .as_ref()
                .is_some_and(|p| p.level == PrivacyLevel::Record)
            {
                layers::record_level_dp_supported(&self.model.layers)
                    .map_err(|m| invalid("privacy.level", m))?;
            }
            if let Some(Layer::Embedding { vocab, .. }) = self.model.layers.first() {
                if d.standardize != StandardizeSpec::None {
                    return Err(invalid(
                        "data.standardize",
                        "an embedding reads token ids: they must not be standardised",
                    ));
                }
                let alphabet = d.text.clone().unwrap_or_default().characters().len();
                if d.format == DataFormat::Text && *vocab < alphabet {
                    return Err(invalid(
                        "model.layers",
                        format!(
                            "layers[0] (embedding): vocab = {vocab} is below the alphabet's {alphabet} characters"
                        ),
                    ));
                }
            }
        }
        // Each width may be within bounds while their products are not: bound the model.
        let params = self.param_count_bound();
        if params > MAX_PARAMS {
            return Err(invalid(
                if self.model.kind == ModelKind::Layers {
                    "model.layers"
                } else {
                    "model.hidden"
                },
                format!(
                    "the model has {params} parameters; at most {MAX_PARAMS} are accepted (each process holds several copies, {} MiB each as f32)",
                    (MAX_PARAMS * 4) >> 20
                ),
            ));
        }
        if !d.features.is_empty() && d.features.len() != d.feature_count {
            return Err(invalid(
                "data.features",
                format!(
                    "lists {} names but data.feature_count is {}",
                    d.features.len(),
                    d.feature_count
                ),
            ));
        }
        match (d.format, &d.label) {
            (DataFormat::Csv, None) => {
                return Err(invalid("data.label", "a CSV job names its label column"));
            }
            (DataFormat::Csv, Some(_)) => {
                if d.text.is_some() {
                    return Err(invalid("data.text", "applies to format = \"text\" only"));
                }
            }
            (DataFormat::Safetensors, Some(_)) => {
                return Err(invalid(
                    "data.label",
                    "an array file's labels are its tensor `y`; remove data.label",
                ));
            }
            (DataFormat::Safetensors, None) => {
                if d.text.is_some() || !d.exclude.is_empty() || !d.features.is_empty() {
                    return Err(invalid(
                        "data",
                        "an array file has no columns to exclude or name, and no text settings",
                    ));
                }
            }
            (DataFormat::Text, Some(_)) => {
                return Err(invalid(
                    "data.label",
                    "a text job's label is the character after each window; remove data.label",
                ));
            }
            (DataFormat::Text, None) => {
                let text = d.text.clone().unwrap_or_default();
                let chars = text.characters();
                let distinct: std::collections::BTreeSet<char> = chars.iter().copied().collect();
                if chars.len() < 2 || distinct.len() != chars.len() {
                    return Err(invalid(
                        "data.text.alphabet",
                        "needs at least 2 characters, each once",
                    ));
                }
                if self.model.classes != chars.len() {
                    return Err(invalid(
                        "model.classes",
                        format!(
                            "a text job predicts a character: classes must be the alphabet's {} characters",
                            chars.len()
                        ),
                    ));
                }
                if text.stride == 0 || text.stride > d.feature_count + 1 {
                    return Err(invalid(
                        "data.text.stride",
                        "must be between 1 and the window (data.feature_count) + 1",
                    ));
                }
                // Record-level DP protects one record. Overlapping windows put one character in
                // up to window + 1 records, so the guarantee would not cover a character.
                if self
                    .privacy
                    .as_ref()
                    .is_some_and(|p| p.level == PrivacyLevel::Record)
                    && text.stride <= d.feature_count
                {
                    return Err(invalid(
                        "data.text.stride",
                        format!(
                            "record-level DP needs windows that share no character: stride = {} (the window {} and the label after it); for a speaker's or an owner's whole text, use client-level DP",
                            d.feature_count + 1,
                            d.feature_count
                        ),
                    ));
                }
                if !d.exclude.is_empty()
                    || !d.features.is_empty()
                    || d.standardize != StandardizeSpec::None
                {
                    return Err(invalid(
                        "data",
                        "a text job has no columns to exclude or name, and no standardisation",
                    ));
                }
            }
        }
        if !d.has_header
            && (matches!(d.label, Some(ColumnRef::Name(_)))
                || d.exclude.iter().any(|c| matches!(c, ColumnRef::Name(_))))
        {
            return Err(invalid(
                "data.label",
                "files without a header must name columns by index",
            ));
        }
        if let StandardizeSpec::Fixed { mean, std } = &d.standardize {
            if mean.len() != d.feature_count || std.len() != d.feature_count {
                return Err(invalid(
                    "data.standardize",
                    "mean and std must each have data.feature_count entries",
                ));
            }
            if std.iter().any(|s| !(s.is_finite() && *s > 0.0))
                || mean.iter().any(|m| !m.is_finite())
            {
                return Err(invalid(
                    "data.standardize",
                    "std must be positive and finite, mean finite",
                ));
            }
        }
        let t = &self.training;
        if t.local_epochs == 0 || t.local_epochs > 10_000 {
            return Err(invalid(
                "training.local_epochs",
                "must be between 1 and 10000",
            ));
        }
        if t.batch_size == 0 {
            return Err(invalid("training.batch_size", "must be positive"));
        }
        if !(t.learning_rate > 0.0 && t.learning_rate <= MAX_LEARNING_RATE) {
            return Err(invalid(
                "training.learning_rate",
                format!("must be in (0, {MAX_LEARNING_RATE}]"),
            ));
        }
        if !(t.l2 >= 0.0 && t.l2.is_finite()) {
            return Err(invalid("training.l2", "must be non-negative and finite"));
        }
        if !(t.server_learning_rate > 0.0 && t.server_learning_rate <= MAX_LEARNING_RATE) {
            return Err(invalid(
                "training.server_learning_rate",
                format!("must be in (0, {MAX_LEARNING_RATE}]"),
            ));
        }
        if let Some(mu) = t.proximal_mu {
            if !(mu > 0.0 && mu <= MAX_PROXIMAL_MU) {
                return Err(invalid(
                    "training.proximal_mu",
                    format!("must be in (0, {MAX_PROXIMAL_MU}] (leave it out for FedAvg)"),
                ));
            }
            // Alone, the term scales w − w_global by (1 − lr·μ) each step: at lr·μ ≥ 1 it
            // overshoots the global model, and at 2 it diverges.
            if t.learning_rate * mu >= 1.0 {
                return Err(invalid(
                    "training.proximal_mu",
                    format!(
                        "training.learning_rate × proximal_mu must be below 1 (it is {})",
                        t.learning_rate * mu
                    ),
                ));
            }
        }
        if let Some(r) = &t.robust {
            if self.job.scheme != SchemeKind::Plain {
                return Err(invalid(
                    "training.robust",
                    "a robust rule needs scheme = \"plain\": every other scheme reveals only the sum of the updates (they rely on norm bounds, which `shares` proves)",
                ));
            }
            let n = self.job.min_owners;
            match r.kind {
                RobustKind::Median if n < 3 => {
                    return Err(invalid(
                        "training.robust",
                        format!(
                            "the median of fewer than 3 updates is their mean; job.min_owners is {n}"
                        ),
                    ));
                }
                RobustKind::TrimmedMean => {
                    if !(0.0..0.5).contains(&r.trim) {
                        return Err(invalid("training.robust.trim", "must be in [0, 0.5)"));
                    }
                    if trimmed(r.trim, n) == 0 {
                        return Err(invalid(
                            "training.robust.trim",
                            format!(
                                "drops nothing from {n} updates (job.min_owners): raise trim or min_owners"
                            ),
                        ));
                    }
                }
                RobustKind::Krum if r.faulty > self.owners.len() || n < 2 * r.faulty + 3 => {
                    return Err(invalid(
                        "training.robust.faulty",
                        format!(
                            "Krum with {} faulty owners needs at least 2·faulty + 3 updates per round; job.min_owners is {n}",
                            r.faulty
                        ),
                    ));
                }
                _ => {}
            }
        }
        if let Some(o) = &t.server_optimizer {
            if !(0.0..1.0).contains(&o.beta1) {
                return Err(invalid(
                    "training.server_optimizer.beta1",
                    "must be in [0, 1)",
                ));
            }
            if !(0.0..1.0).contains(&o.beta2) {
                return Err(invalid(
                    "training.server_optimizer.beta2",
                    "must be in [0, 1)",
                ));
            }
            if !(o.tau > 0.0 && o.tau <= 1.0) {
                return Err(invalid(
                    "training.server_optimizer.tau",
                    "must be in (0, 1]",
                ));
            }
        }
        let e = &self.encoding;
        if e.scale_bits == 0 || e.scale_bits > 40 {
            return Err(invalid("encoding.scale_bits", "must be between 1 and 40"));
        }
        if !(e.clip > 0.0 && e.clip <= 1.0e6) {
            return Err(invalid("encoding.clip", "must be in (0, 1e6]"));
        }
        if self.modulus_bits != 2048 && self.modulus_bits != 3072 {
            return Err(invalid("paillier.modulus_bits", "must be 2048 or 3072"));
        }
        // The join reply carries the job twice (its spec and its manifest), initial weights
        // included.
        let init_len = self.model.init.as_ref().map_or(0, |i| {
            i.safetensors.len().max(
                i.file
                    .as_ref()
                    .map_or(0, |_| MAX_INIT_BYTES.div_ceil(3) * 4),
            )
        });
        if init_len > 0 && self.limits.max_message_bytes < 2 * init_len + 256 * 1024 {
            return Err(invalid(
                "limits.max_message_bytes",
                format!(
                    "must be at least {} for this job's initial weights (the job's messages carry them twice)",
                    2 * init_len + 256 * 1024
                ),
            ));
        }
        if !(64 * 1024..=1 << 30).contains(&self.limits.max_message_bytes) {
            return Err(invalid(
                "limits.max_message_bytes",
                "must be between 65536 and 1073741824 (1 GiB)",
            ));
        }
        if let Some(p) = &self.privacy {
            p.validate()?;
            p.validate_client(&self.job)?;
        }
        Ok(())
    }

    /// The bytes that identify this job in signatures: a fixed domain label followed by the
    /// TOML serialisation of the spec (fields in declaration order, floats in shortest
    /// round-trip form). Hash it before signing. (The governance issue replaces this with an
    /// RFC 8785 canonical JSON manifest.)
    pub fn digest_input(&self) -> Vec<u8> {
        let mut out = b"confide/job-spec/v1\n".to_vec();
        // Serialising a plain struct of strings, numbers and vectors cannot fail.
        let json = canonical_text(self);
        out.extend_from_slice(json.as_bytes());
        out
    }

    /// Serialises the spec for the wire (TOML text, parsed back with [`JobSpec::from_wire`]).
    pub fn to_wire(&self) -> String {
        canonical_text(self)
    }

    /// Parses a spec received from the coordinator and validates it.
    pub fn from_wire(text: &str) -> Result<Self, ConfigError> {
        let spec: JobSpec = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<wire>"),
            message: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Number of input features of the model.
    pub fn input_dim(&self) -> usize {
        self.data.feature_count
    }
}

/// Deterministic text form of a spec. TOML serialisation of a struct writes fields in
/// declaration order and floats in Rust's shortest round-trip form, so equal specs give equal
/// bytes on every machine.
fn canonical_text(spec: &JobSpec) -> String {
    match toml::to_string(spec) {
        Ok(s) => s,
        // The spec contains only strings, integers, finite floats (validated) and arrays of
        // them; TOML serialisation of such a value does not fail.
        Err(e) => unreachable!("a validated JobSpec always serialises: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[job]
id = "t"
rounds = 3
scheme = "paillier"
min_owners = 2

[model]
kind = "logistic"
classes = 2

[data]
label = "y"
exclude = ["id"]
feature_count = 2

[training]
local_epochs = 1
batch_size = 8
learning_rate = 0.1

[[parties]]
name = "a"
data = "a.csv"

[[parties]]
name = "b"
data = "b.csv"
"#;

    #[test]
    fn parses_minimal_config_with_defaults() {
        let c = JobConfig::parse(MINIMAL).expect("valid");
        assert_eq!(c.encoding.scale_bits, 24);
        assert_eq!(c.paillier.modulus_bits, 2048);
        assert_eq!(c.spec().owners, vec!["a", "b"]);
    }

    #[test]
    fn spec_round_trips_over_the_wire_with_identical_digest_input() {
        let spec = JobConfig::parse(MINIMAL).expect("valid").spec();
        let back = JobSpec::from_wire(&spec.to_wire()).expect("parses");
        assert_eq!(spec, back);
        assert_eq!(spec.digest_input(), back.digest_input());
    }

    /// A server optimiser is part of the signed spec only when a job names one: the digest of
    /// every job without one is what it was before the option existed.
    #[test]
    fn a_server_optimiser_is_parsed_checked_and_absent_from_older_specs() {
        let plain = JobConfig::parse(MINIMAL).expect("valid").spec();
        assert!(!plain.to_wire().contains("server_optimizer"));
        let text = format!("{MINIMAL}\n[training.server_optimizer]\nkind = \"fedyogi\"\n");
        let spec = JobConfig::parse(&text).expect("valid").spec();
        let o = spec.training.server_optimizer.clone().expect("optimiser");
        assert_eq!(
            (o.kind, o.beta1, o.beta2, o.tau),
            (ServerOptimizerKind::FedYogi, 0.9, 0.99, 1e-3)
        );
        assert_ne!(spec.digest_input(), plain.digest_input());
        for (line, field) in [
            ("beta1 = 1.0", "beta1"),
            ("beta2 = -0.1", "beta2"),
            ("tau = 0.0", "tau"),
            ("kind = \"fedsgd\"", "kind"),
        ] {
            let bad =
                format!("{MINIMAL}\n[training.server_optimizer]\nkind = \"fedadam\"\n{line}\n")
                    .replace("kind = \"fedadam\"\nkind", "kind");
            let err = JobConfig::parse(&bad).expect_err("invalid");
            assert!(err.to_string().contains(field), "{line}: {err}");
        }
    }

    /// A layer list is read, checked and carried in the signed spec; presets' specs do not
    /// change (no `input` or `layers` keys), so their manifest hashes stay as they were.
    #[test]
    fn layer_lists_are_parsed_checked_and_absent_from_preset_specs() {
        let plain = JobConfig::parse(MINIMAL).expect("valid").spec();
        let wire = plain.to_wire();
        for key in ["layers", "input", "format", "text"] {
            assert!(!wire.contains(key), "{key} in {wire}");
        }
        let cnn = include_str!("../../../examples/digits_cnn.toml");
        let spec = JobConfig::parse(cnn).expect("valid").spec();
        assert_eq!(spec.model.kind, ModelKind::Layers);
        assert_eq!(spec.model.input, [1, 8, 8]);
        assert_eq!(JobSpec::from_wire(&spec.to_wire()).expect("wire"), spec);
        assert!(spec.param_count_bound() > 0);
        let gru = cnn.replace("input = [1, 8, 8]", "input = [8, 8]").replace(
            "  { type = \"conv2d\", channels = 8, kernel = 3, padding = 1 },\n  { type = \"group_norm\", groups = 2 },\n  { type = \"relu\" },\n  { type = \"max_pool2d\", size = 2 },\n  { type = \"flatten\" },\n",
            "  { type = \"gru\", units = 8 },\n",
        );
        JobConfig::parse(&gru).expect("a GRU without DP");
        let record = gru.replace(
            "[evaluation]",
            "[privacy]\nlevel = \"record\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\n\n[evaluation]",
        );
        let err = JobConfig::parse(&record).expect_err("record-level DP");
        assert!(
            err.to_string().contains("privacy.level") && err.to_string().contains("(gru)"),
            "{err}"
        );
        for (from, to, field) in [
            (
                "{ type = \"relu\" }",
                "{ type = \"batch_norm\" }",
                "model.layers",
            ),
            ("input = [1, 8, 8]", "input = [2, 8, 8]", "model.input"),
            (
                "kind = \"layers\"",
                "kind = \"mlp\"\nhidden = [4]",
                "model.layers",
            ),
        ] {
            assert!(cnn.contains(from), "{from}");
            let err = JobConfig::parse(&cnn.replacen(from, to, 1)).expect_err(to);
            assert!(err.to_string().contains(field), "{to}: {err}");
        }
    }

    /// Text jobs: the label is the next character, the classes are the alphabet, and record-level
    /// DP needs windows that share no character.
    #[test]
    fn text_jobs_are_checked() {
        let text = include_str!("../../../examples/shakespeare_gru.toml")
            .replace("{ type = \"gru\", units = 64 },", "{ type = \"flatten\" },");
        let spec = JobConfig::parse(&text).expect("valid").spec();
        assert_eq!(spec.data.format, DataFormat::Text);
        assert_eq!(JobSpec::from_wire(&spec.to_wire()).expect("wire"), spec);
        let dp = |stride: usize| {
            text.replace("stride = 1", &format!("stride = {stride}")).replace(
                "[evaluation]",
                "[privacy]\nlevel = \"record\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\n\n[evaluation]",
            )
        };
        let err = JobConfig::parse(&dp(1)).expect_err("overlapping windows");
        assert!(
            err.to_string().contains("data.text.stride") && err.to_string().contains("stride = 21"),
            "{err}"
        );
        JobConfig::parse(&dp(21)).expect("disjoint windows");
        for (from, to, field) in [
            (
                "\nformat = \"text\"",
                "\nformat = \"text\"\nlabel = \"y\"",
                "data.label",
            ),
            ("classes = 80", "classes = 79", "model.classes"),
            ("units = 80 }", "units = 79 }", "model.layers"),
            ("vocab = 80", "vocab = 60", "model.layers"),
            ("stride = 1", "stride = 0", "data.text.stride"),
            ("stride = 1", "stride = 22", "data.text.stride"),
            (
                "alphabet = \"leaf\"",
                "alphabet = \"aa\"",
                "data.text.alphabet",
            ),
            ("\nformat = \"text\"", "\nformat = \"csv\"", "data.label"),
        ] {
            assert!(text.contains(from), "{from}");
            let mut changed = text.replacen(from, to, 1);
            if to == "classes = 79" {
                // The last layer follows, so that only the alphabet disagrees.
                changed = changed.replace("units = 80 }", "units = 79 }");
            }
            let err = JobConfig::parse(&changed).expect_err(to);
            assert!(err.to_string().contains(field), "{to}: {err}");
        }
    }

    /// FedProx's μ is in the signed spec only when a job sets it, and is checked.
    #[test]
    fn fedprox_mu_is_parsed_checked_and_absent_from_older_specs() {
        let plain = JobConfig::parse(MINIMAL).expect("valid").spec();
        assert!(!plain.to_wire().contains("proximal_mu"));
        let with = |mu: &str| {
            MINIMAL.replace("[training]\n", &format!("[training]\nproximal_mu = {mu}\n"))
        };
        let spec = JobConfig::parse(&with("0.01")).expect("valid").spec();
        assert_eq!(spec.training.proximal_mu, Some(0.01));
        assert_ne!(spec.digest_input(), plain.digest_input());
        assert_eq!(JobSpec::from_wire(&spec.to_wire()).expect("wire"), spec);
        // Confidential mode trains centrally: no FedProx there.
        let confidential = include_str!("../../../examples/confidential_digits.toml")
            .replace("[training]\n", "[training]\nproximal_mu = 0.01\n");
        let err = JobConfig::parse(&confidential).expect_err("confidential");
        assert!(err.to_string().contains("training.proximal_mu"), "{err}");
        // 10 is allowed alone, but not with this job's learning rate 0.1 (lr·μ = 1).
        for bad in ["0.0", "-1.0", "11.0", "nan", "10.0"] {
            let err = JobConfig::parse(&with(bad)).expect_err("invalid");
            assert!(
                err.to_string().contains("training.proximal_mu"),
                "{bad}: {err}"
            );
        }
    }

    /// A robust rule is in the signed spec only when set, and only under `plain`.
    #[test]
    fn a_robust_rule_needs_plain_and_enough_owners_for_krum() {
        // Plain, with three owners and min_owners = 3.
        let three = MINIMAL
            .replace("scheme = \"paillier\"", "scheme = \"plain\"")
            .replace("min_owners = 2", "min_owners = 3")
            + "\n[[parties]]\nname = \"c\"\ndata = \"c.csv\"\n";
        let base = JobConfig::parse(&three).expect("valid").spec();
        assert!(!base.to_wire().contains("robust"));
        let with = |text: &str, rule: &str| format!("{text}\n[training.robust]\n{rule}\n");
        let spec = JobConfig::parse(&with(&three, "kind = \"median\""))
            .expect("valid")
            .spec();
        let r = spec.training.robust.expect("rule");
        assert_eq!((r.kind, r.trim, r.faulty), (RobustKind::Median, 0.1, 1));
        assert_ne!(spec.digest_input(), base.digest_input());
        assert_eq!(JobSpec::from_wire(&spec.to_wire()).expect("wire"), spec);
        // A trim that drops one of three, and a median with a trim it ignores, are fine.
        JobConfig::parse(&with(&three, "kind = \"trimmed_mean\"\ntrim = 0.34")).expect("valid");
        JobConfig::parse(&with(&three, "kind = \"median\"\ntrim = 0.9")).expect("valid");
        let two = MINIMAL.replace("scheme = \"paillier\"", "scheme = \"plain\"");
        let invalid_field = |text: &str, rule: &str| match JobConfig::parse(&with(text, rule)) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{rule}: expected a refusal, got {other:?}"),
        };
        for (text, rule, field) in [
            (MINIMAL, "kind = \"median\"", "training.robust"),
            (two.as_str(), "kind = \"median\"", "training.robust"),
            (
                three.as_str(),
                "kind = \"trimmed_mean\"\ntrim = 0.5",
                "training.robust.trim",
            ),
            // The default trim 0.1 drops nothing from 3 updates.
            (
                three.as_str(),
                "kind = \"trimmed_mean\"",
                "training.robust.trim",
            ),
            // min_owners = 3 < 2·1 + 3.
            (three.as_str(), "kind = \"krum\"", "training.robust.faulty"),
            (
                three.as_str(),
                "kind = \"krum\"\nfaulty = 9223372036854775807",
                "training.robust.faulty",
            ),
        ] {
            assert_eq!(invalid_field(text, rule), field, "{rule}");
        }
        assert!(matches!(
            JobConfig::parse(&with(&three, "kind = \"mean\"")),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn rejects_min_owners_above_party_count() {
        let text = MINIMAL.replace("min_owners = 2", "min_owners = 3");
        let err = JobConfig::parse(&text).expect_err("invalid");
        assert!(err.to_string().contains("job.min_owners"), "{err}");
    }

    #[test]
    fn masking_parameters_default_from_the_owner_count_and_are_checked() {
        let text = MINIMAL.replace("scheme = \"paillier\"", "scheme = \"masking\"");
        let c = JobConfig::parse(&text).expect("valid");
        assert_eq!(c.spec().masking.unwrap_or_default().effective(2), (1, 2));
        assert_eq!(MaskingSection::default().effective(10), (9, 6));
        assert_eq!(MaskingSection::default().effective(100), (20, 11));
        for (section, field) in [
            ("[masking]\nthreshold = 1\n", "masking.threshold"),
            ("[masking]\nthreshold = 3\n", "masking.threshold"),
        ] {
            let err = JobConfig::parse(&format!("{text}\n{section}")).expect_err("invalid");
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = JobConfig::parse(&format!("{MINIMAL}\n[masking]\nthreshold = 2\n"))
            .expect_err("masking section without masking");
        assert!(err.to_string().contains("masking"), "{err}");
    }

    #[test]
    fn aggregator_parameters_have_defaults_and_are_checked() {
        let shares = MINIMAL.replace("scheme = \"paillier\"", "scheme = \"shares\"");
        let threshold = MINIMAL.replace("scheme = \"paillier\"", "scheme = \"threshold\"");
        let c = JobConfig::parse(&shares).expect("valid");
        assert_eq!(c.spec().aggregators_n_t(), (2, 2));
        let c = JobConfig::parse(&threshold).expect("valid");
        assert_eq!(c.spec().aggregators_n_t(), (7, 4));
        let c =
            JobConfig::parse(&format!("{threshold}\n[aggregators]\ncount = 5\n")).expect("valid");
        assert_eq!(c.spec().aggregators_n_t(), (5, 3));
        for (text, section, field) in [
            (&shares, "[aggregators]\ncount = 1\n", "aggregators.count"),
            (
                &shares,
                "[aggregators]\nthreshold = 2\n",
                "aggregators.threshold",
            ),
            (
                &threshold,
                "[aggregators]\ncount = 2\n",
                "aggregators.count",
            ),
            (
                &threshold,
                "[aggregators]\nthreshold = 1\n",
                "aggregators.threshold",
            ),
            (
                &threshold,
                "[aggregators]\nthreshold = 3\n",
                "aggregators.threshold",
            ),
            (
                &threshold,
                "[aggregators]\nthreshold = 7\n",
                "aggregators.threshold",
            ),
            (&threshold, "[aggregators]\nsize = 7\n", "size"),
        ] {
            let err = JobConfig::parse(&format!("{text}\n{section}")).expect_err("invalid");
            assert!(err.to_string().contains(field), "{section}: {err}");
        }
        let err = JobConfig::parse(&format!("{MINIMAL}\n[aggregators]\ncount = 3\n"))
            .expect_err("aggregators without an aggregator scheme");
        assert!(err.to_string().contains("aggregators"), "{err}");
        let one = threshold.replace("min_owners = 2", "min_owners = 1");
        assert!(JobConfig::parse(&one).is_err());
    }

    #[test]
    fn rejects_single_owner_paillier() {
        let text = MINIMAL.replace("min_owners = 2", "min_owners = 1");
        let err = JobConfig::parse(&text).expect_err("invalid");
        assert!(err.to_string().contains("at least 2"), "{err}");
    }

    #[test]
    fn rejects_unknown_field_with_location() {
        let text = MINIMAL.replace("rounds = 3", "rounds = 3\nroundz = 4");
        let err = JobConfig::parse(&text).expect_err("invalid").to_string();
        assert!(err.contains("roundz") && err.contains("line 5"), "{err}");
    }

    #[test]
    fn rejects_bad_modulus() {
        let text = format!("{MINIMAL}\n[paillier]\nmodulus_bits = 1024\n");
        let err = JobConfig::parse(&text).expect_err("invalid");
        assert!(err.to_string().contains("paillier.modulus_bits"), "{err}");
    }

    #[test]
    fn privacy_section_round_trips_and_is_validated() {
        let text = format!(
            "{MINIMAL}\n[privacy]\nlevel = \"record\"\ntarget_epsilon = 8.0\ndelta = 1e-5\nclip_norm = 1.0\naccountant = \"pld\"\n"
        );
        let spec = JobConfig::parse(&text).expect("valid").spec();
        let p = spec.privacy.as_ref().expect("privacy");
        assert_eq!(p.accountant, AccountantKind::Pld);
        assert_eq!(JobSpec::from_wire(&spec.to_wire()).expect("wire"), spec);
        let both = text.replace("delta = 1e-5", "delta = 1e-5\nnoise_multiplier = 1.0");
        let err = JobConfig::parse(&both).expect_err("both").to_string();
        assert!(err.contains("exactly one"), "{err}");
        let bad_delta = text.replace("delta = 1e-5", "delta = 1.5");
        assert!(JobConfig::parse(&bad_delta).is_err());
        let client = text.replace("\"record\"", "\"client\"");
        assert!(JobConfig::parse(&client).is_ok());
        let plain = client.replace("scheme = \"paillier\"", "scheme = \"plain\"");
        let err = JobConfig::parse(&plain).expect_err("plain").to_string();
        assert!(err.contains("secure aggregation"), "{err}");
        let honest = client.replace("clip_norm = 1.0", "clip_norm = 1.0\nmin_honest_owners = 3");
        let err = JobConfig::parse(&honest).expect_err("too many").to_string();
        assert!(err.contains("min_honest_owners"), "{err}");
        let record_only = text.replace("clip_norm = 1.0", "clip_norm = 1.0\nmodulus_bits = 20");
        let err = JobConfig::parse(&record_only)
            .expect_err("record")
            .to_string();
        assert!(err.contains("client"), "{err}");
    }

    #[test]
    fn rejects_reserved_and_duplicate_names() {
        let dup = MINIMAL.replace("name = \"b\"", "name = \"a\"");
        assert!(JobConfig::parse(&dup).is_err());
        let reserved = MINIMAL.replace("name = \"b\"", "name = \"keyholder\"");
        assert!(JobConfig::parse(&reserved).is_err());
        let reserved = MINIMAL.replace("name = \"b\"", "name = \"aggregator-1\"");
        assert!(JobConfig::parse(&reserved).is_err());
    }
}
