//! `confide coordinator`: runs the rounds and FedAvg. It relays ciphertexts and never holds a
//! decryption key.
//!
//! # Rules for bad input and failures
//! - A contribution that breaks a UPD rule is refused with its code; the round goes on without
//!   it, and the owner may resubmit a correct one before the deadline.
//! - An owner that withdraws (for example, its CSV failed validation) or does not contribute by
//!   the round deadline (`round_timeout_secs`; a node that disconnects mid-round ends up here)
//!   is excluded for the rest of the job. The round proceeds with the others when at least
//!   `min_owners` contributed; otherwise the round fails, the job stops with a clear error,
//!   and the global model stays at the last completed round.
//! - A key-holder refusal or error fails the round the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use confide_core::{JobSpec, PrivacyLevel, Role, SchemeKind};
use confide_crypto::FixedPoint;
use confide_dp::ddg::DdgConfig;
use confide_governance::audit::{AuditLog, Cosignature, Event, EventKind, SignedTreeHead};
use confide_governance::identity::Identity;
use confide_governance::manifest::{SignedManifest, online_approval_message};
use confide_ml::{Dataset, ModelSpec};
use confide_secagg::contribution::{self, Contribution};
use confide_secagg::masking::{MaskingConfig, MaskingServer};
use confide_secagg::{
    AggregateSum, AggregationServer, ExternalRequest, ExternalResult, HolderPublicKey, MultiServer,
    PlainServer, Reject, Rejection, RoundContext, SchemeParams, StageResult, model_digest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::checkpoint::Checkpoint;
use crate::pb::{self, JobState};
use crate::transport::{NetError, peer};

/// One round's record in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number, from 1.
    pub round: u32,
    /// Owners whose updates are in the round's sum.
    pub contributors: Vec<String>,
    /// Owners excluded in this round (withdrew or missed the deadline).
    pub excluded: Vec<String>,
    /// Test-set metrics of the global model after this round (when the coordinator has a test
    /// set).
    pub test_accuracy: Option<f64>,
    /// Test AUC (binary tasks).
    pub test_auc: Option<f64>,
    /// Test log-loss.
    pub test_log_loss: Option<f64>,
    /// Test rows classified correctly.
    pub test_correct: Option<usize>,
    /// Wall time of the round, from opening to the new global model, in seconds.
    pub seconds: f64,
    /// Of which: closing the stage and aggregation (key holder included), in seconds.
    pub aggregation_seconds: f64,
}

/// The coordinator's report of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobReport {
    /// Job id.
    pub job_id: String,
    /// `finished` or `failed`.
    pub status: String,
    /// Why the job failed.
    pub message: String,
    /// Aggregation scheme.
    pub scheme: String,
    /// Authorised owners.
    pub parties: Vec<String>,
    /// Rounds completed.
    pub rounds: u32,
    /// Rounds planned.
    pub rounds_planned: u32,
    /// Per-round records.
    pub history: Vec<RoundRecord>,
    /// Rejected contributions by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Refused requests by rule (NET-xxx from the request guard, and the coordinator's own).
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
    /// Notable events (withdrawals, exclusions), in order.
    pub events: Vec<String>,
    /// Fingerprint of the key holder's public key (paillier).
    pub keyholder_key: Option<String>,
    /// Model parameter count.
    pub param_count: usize,
    /// Record-level DP per owner, as each owner's node stated it (empty without DP).
    pub privacy: BTreeMap<String, OwnerPrivacy>,
    /// The job's manifest hash (hex).
    pub manifest_hash: String,
    /// The audit log at the job's end.
    pub audit: Option<AuditSummary>,
}

/// The audit log as the job left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditSummary {
    /// Entries in the log.
    pub entries: u64,
    /// The signed tree head over them.
    pub tree_head: SignedTreeHead,
    /// The witnesses' cosignatures of that head.
    pub cosignatures: Vec<Cosignature>,
    /// The exported log file, when one was written.
    pub log_file: Option<String>,
}

/// One owner's record-level DP for the job: the accountant's output for its DP-SGD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerPrivacy {
    /// `rdp` or `pld`.
    pub accountant: String,
    /// ε over the whole job.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// Per-record clip norm.
    pub clip_norm: f64,
    /// Poisson sampling rate (expected batch over the owner's row count).
    pub sampling_rate: f64,
    /// DP-SGD steps over the whole job.
    pub steps: u64,
}

/// What the coordinator counts of one owner for its contribution record: its declared rows
/// and its refused contributions by rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerTally {
    /// Rows the owner's node declared when it approved (`None`: not declared).
    pub declared_rows: Option<u64>,
    /// Refused contributions by rule id.
    pub refused: BTreeMap<String, u64>,
}

impl OwnerPrivacy {
    /// From the wire form.
    pub fn from_pb(c: &pb::PrivacyClaim) -> Self {
        Self {
            accountant: c.accountant.clone(),
            epsilon: c.epsilon,
            delta: c.delta,
            noise_multiplier: c.noise_multiplier,
            clip_norm: c.clip_norm,
            sampling_rate: c.sampling_rate,
            steps: c.steps,
        }
    }

    /// To the wire form.
    pub fn to_pb(&self) -> pb::PrivacyClaim {
        pb::PrivacyClaim {
            accountant: self.accountant.clone(),
            epsilon: self.epsilon,
            delta: self.delta,
            noise_multiplier: self.noise_multiplier,
            clip_norm: self.clip_norm,
            sampling_rate: self.sampling_rate,
            steps: self.steps,
        }
    }
}

/// What the coordinator needs to run a job.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// The job.
    pub spec: JobSpec,
    /// Held-out evaluation data (already standardised like the owners' data).
    pub eval: Option<Dataset>,
    /// Where the key holder listens (paillier).
    pub keyholder_endpoint: Option<String>,
    /// Where the aggregators listen, by index (`shares`, `threshold`).
    pub aggregator_endpoints: Vec<String>,
    /// The signed manifest of the job (it must describe `spec`).
    pub manifest: SignedManifest,
    /// The coordinator's identity: it signs the audit log's tree heads.
    pub identity: Arc<Identity>,
    /// Its certificate (DER), sent to nodes with the manifest.
    pub certificate: Vec<u8>,
    /// The audit log.
    pub audit: AuditLog,
    /// Write the exported audit log here when the job ends.
    pub audit_export: Option<std::path::PathBuf>,
    /// The federation's revocation list.
    pub revocations: Arc<crate::pki::Revocations>,
    /// Where the job's start and each round are committed with a checkpoint (a long-running
    /// coordinator); `None` for a one-job coordinator, which cannot resume.
    pub checkpoints: Option<crate::checkpoint::Checkpoints>,
    /// Go on from this checkpoint (a restarted coordinator) instead of starting the job.
    pub resume: Option<Checkpoint>,
}

#[derive(Clone, Debug)]
struct Snapshot {
    state: JobState,
    round: u32,
    params: Arc<Vec<f32>>,
    message: String,
    head: Option<SignedTreeHead>,
    stage: u32,
    broadcast: Arc<Vec<u8>>,
}

struct State {
    joined: BTreeSet<String>,
    /// Owners whose approval is being written to the audit log: the job does not start
    /// until each is in (or out), so no approval is logged after the job started.
    approving: BTreeSet<String>,
    started: bool,
    cosigned_final: BTreeSet<String>,
    alive: BTreeSet<String>,
    server: Option<Box<dyn AggregationServer>>,
    certs: BTreeMap<String, Vec<u8>>,
    rejections: BTreeMap<String, u64>,
    /// Per owner that approved: declared rows and refused contributions (its contribution
    /// record). An owner is in it once its approval is in the audit log.
    tallies: BTreeMap<String, OwnerTally>,
    events: Vec<String>,
    history: Vec<RoundRecord>,
    privacy: BTreeMap<String, OwnerPrivacy>,
    report: Option<(JobReport, Arc<Vec<f32>>)>,
    /// Parties whose registration is in the audit log (once each, however often they join).
    registered: BTreeSet<String>,
    /// Refusals per caller (party id); past [`AUDITED_REFUSALS`] they are only counted.
    refusals: BTreeMap<String, u64>,
    /// This round's accepted contributions by (owner, stage): SHA-256 of round, payload and
    /// signature. The same bytes again are answered as accepted and change nothing; other
    /// bytes are refused by the round (a duplicate).
    received: BTreeMap<(String, u32), [u8; 32]>,
    /// The round whose aggregation state `server` is (0: none yet).
    server_round: u32,
    /// The server optimiser's moments after the last committed round.
    moments: confide_ml::server_opt::ServerState,
}

/// How many refusals of one caller get an audit entry each; later ones are counted, and the
/// counts logged once when the job ends.
pub const AUDITED_REFUSALS: u64 = 8;

/// The coordinator's shared state, served by [`CoordinatorService`] and driven by
/// [`Coordinator::run`].
pub struct Coordinator {
    spec: JobSpec,
    spec_text: String,
    digest: [u8; 32],
    manifest_json: String,
    manifest_hash: [u8; 32],
    recipients: Vec<String>,
    identity: Arc<Identity>,
    certificate: Vec<u8>,
    audit: AuditLog,
    audit_export: Option<std::path::PathBuf>,
    revocations: Arc<crate::pki::Revocations>,
    model: ModelSpec,
    fixed: FixedPoint,
    client_dp: Option<ClientDp>,
    eval: Option<Dataset>,
    keyholder_endpoint: String,
    aggregator_endpoints: Vec<String>,
    checkpoints: Option<crate::checkpoint::Checkpoints>,
    /// The checkpoint this coordinator resumes from (taken when it runs).
    resume: Mutex<Option<Checkpoint>>,
    state: Mutex<State>,
    changed: Notify,
    fetched: Notify,
    rounds: watch::Sender<Snapshot>,
    progress: broadcast::Sender<pb::Progress>,
    guard: crate::guard::Guard,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Coordinator({})", self.spec.job.id)
    }
}

/// How often a deadline looks at the clock (RES-004).
const DEADLINE_TICK: Duration = Duration::from_millis(100);
/// How far into a wait the `coordinator-deadline-wait` pause point fires.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// How long a `NextRound` long poll waits before the coordinator answers with a keepalive:
/// the job's round timeout, at most 10 s. A node that hears nothing at all for a round timeout
/// plus this period, plus a margin, concludes that the coordinator stopped answering.
pub fn keepalive(spec: &JobSpec) -> Duration {
    Duration::from_secs_f64(spec.job.round_timeout_secs).min(Duration::from_secs(10))
}

/// The job digest: SHA-256 of the spec's digest input.
pub fn job_digest(spec: &JobSpec) -> [u8; 32] {
    confide_crypto::sha256(&spec.digest_input())
}

/// The masking (SecAgg+) parameters of a round: every party derives the same ones from the
/// spec, the job digest and the round (the neighbour graph's public seed).
pub fn masking_config(spec: &JobSpec, digest: &[u8; 32], round: u32) -> MaskingConfig {
    let (neighbours, threshold) = spec
        .masking
        .unwrap_or_default()
        .effective(spec.owners.len());
    let mut seed_input = b"confide/masking-graph/v1\n".to_vec();
    seed_input.extend_from_slice(digest);
    seed_input.extend_from_slice(&round.to_be_bytes());
    MaskingConfig {
        owners: spec.owners.clone(),
        neighbours,
        threshold,
        len: model_spec(spec).param_count(),
        round,
        graph_seed: confide_crypto::sha256(&seed_input),
        min_owners: spec.job.min_owners,
    }
}

pub use confide_ml::job::model_spec;

/// The fixed-point encoding of a job.
pub fn fixed_point(spec: &JobSpec) -> Result<FixedPoint, NetError> {
    FixedPoint::new(spec.encoding.scale_bits, spec.encoding.clip)
        .map_err(|e| crate::transport::transport_err("encoding", e))
}

/// Scheme parameters of a job.
pub fn scheme_params(spec: &JobSpec, fixed: FixedPoint) -> SchemeParams {
    SchemeParams {
        fixed,
        len: model_spec(spec).param_count(),
        owners: spec.owners.len(),
        min_owners: spec.job.min_owners,
    }
}

/// The aggregation parameters every role of a job uses (owners, coordinator and key holder
/// must agree): fixed-point updates, or under client-level DP the integers of the distributed
/// discrete Gaussian over the padded dimension.
///
/// # Errors
/// An invalid encoding or client-level DP configuration.
pub fn job_scheme_params(spec: &JobSpec) -> Result<SchemeParams, NetError> {
    match client_dp(spec).map_err(|e| crate::transport::transport_err("client-level DP", e))? {
        Some(c) => c.scheme_params(spec),
        None => Ok(scheme_params(spec, fixed_point(spec)?)),
    }
}

/// A job's client-level DP: the calibrated distributed discrete Gaussian, the ε it spends over
/// the whole job, and the number of honest owners it assumes. Every role computes the same
/// values from the spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientDp {
    /// Mechanism parameters (with the calibrated local noise).
    pub ddg: DdgConfig,
    /// ε over all rounds.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// Honest owners the guarantee relies on.
    pub honest: usize,
}

impl ClientDp {
    /// The noise multiplier: the total noise's standard deviation (of `honest` owners'
    /// shares) over the clip norm.
    pub fn noise_multiplier(&self) -> f64 {
        self.ddg.local_sigma * self.ddg.gamma * (self.honest as f64).sqrt() / self.ddg.l2_clip
    }

    /// The aggregation parameters: integers in `[−m/2, m/2)` over the padded dimension.
    pub fn scheme_params(&self, spec: &JobSpec) -> Result<SchemeParams, NetError> {
        let fixed = FixedPoint::new(0, self.ddg.half_modulus() as f64)
            .map_err(|e| crate::transport::transport_err("client-level DP encoding", e))?;
        Ok(SchemeParams {
            fixed,
            len: self.ddg.padded_dim(),
            owners: spec.owners.len(),
            min_owners: spec.job.min_owners,
        })
    }

    /// The public rotation seed of a round.
    pub fn round_seed(digest: &[u8; 32], round: u32) -> [u8; 32] {
        let mut input = b"confide/ddg-rotation/v1\n".to_vec();
        input.extend_from_slice(digest);
        input.extend_from_slice(&round.to_be_bytes());
        confide_crypto::sha256(&input)
    }
}

/// The client-level DP of `spec`, if it asks for it.
///
/// # Errors
/// Parameters the mechanism refuses, or a ring without headroom for the noisy sum.
pub fn client_dp(spec: &JobSpec) -> Result<Option<ClientDp>, String> {
    let Some(p) = spec
        .privacy
        .as_ref()
        .filter(|p| p.level == PrivacyLevel::Client)
    else {
        return Ok(None);
    };
    // By default one contributor of a minimal round may be curious: it knows its own share.
    let honest = p
        .min_honest_owners
        .unwrap_or(spec.job.min_owners.saturating_sub(1).max(1));
    let gamma = p.granularity.unwrap_or(p.clip_norm / 10_000.0);
    let mut ddg = DdgConfig {
        dim: model_spec(spec).param_count(),
        l2_clip: p.clip_norm,
        gamma,
        beta: (-0.5f64).exp(),
        local_sigma: 0.5,
        modulus_bits: p.modulus_bits.unwrap_or(24),
    };
    let rounds = u64::from(spec.job.rounds);
    ddg = match (p.target_epsilon, p.noise_multiplier) {
        (Some(e), _) => ddg
            .calibrate(e, honest, rounds, p.delta)
            .map_err(|e| e.to_string())?,
        (None, Some(z)) => DdgConfig {
            local_sigma: z * p.clip_norm / (gamma * (honest as f64).sqrt()),
            ..ddg
        },
        (None, None) => return Err("privacy needs target_epsilon or noise_multiplier".into()),
    };
    ddg.check_headroom(spec.owners.len())
        .map_err(|e| e.to_string())?;
    let epsilon = ddg
        .epsilon(honest, rounds, p.delta)
        .map_err(|e| e.to_string())?;
    Ok(Some(ClientDp {
        ddg,
        epsilon,
        delta: p.delta,
        honest,
    }))
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock is a bug; keep serving with the state as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Coordinator {
    /// Prepares a job.
    pub fn new(opts: CoordinatorOptions) -> Result<Arc<Self>, NetError> {
        let verified = opts
            .manifest
            .verify()
            .map_err(|e| crate::transport::transport_err("job manifest", e))?;
        if !verified.manifest.describes(&opts.spec) {
            return Err(crate::transport::transport_err(
                "job manifest",
                "the signed manifest does not describe this job (its spec differs from the job file)",
            ));
        }
        let fixed = fixed_point(&opts.spec)?;
        let client_dp = client_dp(&opts.spec)
            .map_err(|e| crate::transport::transport_err("client-level DP", e))?;
        let model = model_spec(&opts.spec);
        let mut state = State {
            joined: BTreeSet::new(),
            approving: BTreeSet::new(),
            started: false,
            cosigned_final: BTreeSet::new(),
            alive: BTreeSet::new(),
            server: None,
            certs: BTreeMap::new(),
            rejections: BTreeMap::new(),
            tallies: BTreeMap::new(),
            events: Vec::new(),
            history: Vec::new(),
            privacy: BTreeMap::new(),
            report: None,
            registered: BTreeSet::new(),
            refusals: BTreeMap::new(),
            received: BTreeMap::new(),
            server_round: 0,
            moments: confide_ml::server_opt::ServerState::default(),
        };
        let mut initial = Snapshot {
            state: JobState::Waiting,
            round: 0,
            params: Arc::new(Vec::new()),
            message: String::new(),
            head: None,
            stage: 0,
            broadcast: Arc::new(Vec::new()),
        };
        if let Some(cp) = &opts.resume {
            // A checkpoint at the last round is a job that ended before its end was stored: it
            // goes on to its end (the model is released from the checkpoint).
            if cp.params.len() != model.param_count() || cp.round > opts.spec.job.rounds {
                return Err(crate::transport::transport_err(
                    "checkpoint",
                    format!(
                        "it is at round {} of {} with {} parameters; the job's model has {}",
                        cp.round,
                        opts.spec.job.rounds,
                        cp.params.len(),
                        model.param_count()
                    ),
                ));
            }
            state.started = true;
            state.joined.clone_from(&cp.joined);
            state.alive.clone_from(&cp.alive);
            state.registered.clone_from(&cp.registered);
            state.certs = cp
                .certs
                .iter()
                .map(|(k, v)| (k.clone(), hex::decode(v).unwrap_or_default()))
                .collect();
            state.history.clone_from(&cp.history);
            state.privacy.clone_from(&cp.privacy);
            state.events.clone_from(&cp.events);
            state.rejections.clone_from(&cp.rejections);
            state.tallies.clone_from(&cp.tallies);
            state.moments =
                confide_ml::server_opt::ServerState::from_bytes(&cp.moments, cp.params.len())
                    .map_err(|e| crate::transport::transport_err("checkpoint", e))?;
            // Not `Running` until its next round opens: no task is handed out before then.
            initial.round = cp.round;
        }
        let (rounds, _) = watch::channel(initial);
        let (progress, _) = broadcast::channel(1024);
        Ok(Arc::new(Self {
            spec_text: opts.spec.to_wire(),
            digest: job_digest(&opts.spec),
            manifest_json: opts.manifest.to_json(),
            manifest_hash: verified.hash,
            recipients: verified.manifest.recipients.clone(),
            identity: opts.identity,
            certificate: opts.certificate,
            audit: opts.audit,
            audit_export: opts.audit_export,
            guard: crate::guard::coordinator(&opts.spec, opts.revocations.clone()),
            revocations: opts.revocations,
            model,
            fixed,
            client_dp,
            eval: opts.eval,
            keyholder_endpoint: opts.keyholder_endpoint.unwrap_or_default(),
            aggregator_endpoints: opts.aggregator_endpoints,
            spec: opts.spec,
            checkpoints: opts.checkpoints,
            resume: Mutex::new(opts.resume),
            state: Mutex::new(state),
            changed: Notify::new(),
            fetched: Notify::new(),
            rounds,
            progress,
        }))
    }

    /// Completes once the model owner has confirmed it received the released model.
    pub async fn fetched(&self) {
        self.fetched.notified().await;
    }

    /// The job digest.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The final report and parameters, once the job ended.
    pub fn result(&self) -> Option<(JobReport, Arc<Vec<f32>>)> {
        lock(&self.state).report.clone()
    }

    /// Waits until `done` holds for the state or the deadline passes.
    async fn wait_until(
        &self,
        round: u32,
        budget: Duration,
        done: impl Fn(&State) -> bool,
    ) -> bool {
        // RES-004: the budget is running time. A gap longer than two ticks between two looks at
        // the clock means this process was not running (frozen, suspended, starved); it is
        // charged as two ticks only, so requests that reached the socket in time are served
        // before the deadline instead of being shut out by it.
        let mut spent = Duration::ZERO;
        let mut last = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&lock(&self.state)) {
                return true;
            }
            if spent >= PAUSE_AFTER {
                // Test hook (RES-004): freeze here, between a look at the state and a look at
                // the clock, as a process stopped at the worst moment would be.
                confide_core::crash::pause_point("coordinator-deadline-wait", round);
            }
            let now = Instant::now();
            spent += (now - last).min(2 * DEADLINE_TICK);
            last = now;
            if spent >= budget {
                return false;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep((budget - spent).min(DEADLINE_TICK)) => {}
            }
        }
    }

    /// Appends an event to the audit log.
    fn log(&self, kind: EventKind, actor: &str, detail: serde_json::Value) -> Result<u64, String> {
        self.audit
            .record(&Event::now(kind, &self.spec.job.id, actor, detail))
            .map_err(|e| format!("audit log: {e}"))
    }

    /// Appends a `kind` entry to the audit log. On a long-running coordinator it commits in
    /// one transaction with the job's checkpoint after round `round` (global model `params`,
    /// with `record` added to the rounds so far): RES-006.
    fn commit(
        &self,
        kind: EventKind,
        detail: serde_json::Value,
        (round, params): (u32, &[f32]),
        record: Option<(&RoundRecord, &confide_ml::server_opt::ServerState)>,
    ) -> Result<u64, String> {
        let event = Event::now(kind, &self.spec.job.id, "coordinator", detail);
        let Some(checkpoints) = &self.checkpoints else {
            return self
                .audit
                .record(&event)
                .map_err(|e| format!("audit log: {e}"));
        };
        let cp = {
            let s = lock(&self.state);
            let moments = record.map_or(&s.moments, |(_, m)| m).to_bytes();
            Checkpoint {
                round,
                model_digest: hex::encode(model_digest(params)),
                moments_digest: hex::encode(confide_crypto::sha256(&moments)),
                moments,
                joined: s.joined.clone(),
                alive: s.alive.clone(),
                registered: s.registered.clone(),
                certs: s
                    .certs
                    .iter()
                    .map(|(k, v)| (k.clone(), hex::encode(v)))
                    .collect(),
                history: s
                    .history
                    .iter()
                    .chain(record.map(|(r, _)| r))
                    .cloned()
                    .collect(),
                privacy: s.privacy.clone(),
                events: s.events.clone(),
                rejections: s.rejections.clone(),
                tallies: s.tallies.clone(),
                params: params.to_vec(),
            }
        };
        checkpoints.commit(&self.manifest_hash, &event, &cp)
    }

    /// The request guard of this coordinator's server (its refusal counters are the
    /// coordinator's own).
    pub fn guard(&self) -> crate::guard::Guard {
        self.guard.clone()
    }

    /// Records a refusal of `caller` (party id) under `rule`: an audit entry for each of its
    /// first [`AUDITED_REFUSALS`], a count after that. `detail` holds only authenticated
    /// identities, rule ids and capped excerpts. Returns whether it was audited.
    fn refusal(&self, rule: &str, caller: &str, detail: serde_json::Value) -> bool {
        self.guard.stats().refuse(rule, caller, "coordinator");
        let n = {
            let mut s = lock(&self.state);
            let n = s.refusals.entry(caller.to_string()).or_default();
            *n += 1;
            *n
        };
        let audited = n <= AUDITED_REFUSALS;
        if audited {
            self.log_or_warn(EventKind::Refusal, "coordinator", detail);
        }
        audited
    }

    /// Appends each owner's signed contribution record (every owner whose approval is in the
    /// log), at the job's end: the rounds its update was summed in, the rounds it missed the
    /// deadline in, its refused contributions by rule (in committed rounds), its declared rows,
    /// and the (ε, δ) its node stated with its accountant. A claim that is not finite and
    /// non-negative is left out, so that one owner's claim cannot hold back the release.
    fn log_contributions(&self, rounds_run: u32) -> Result<(), String> {
        use confide_governance::contribution::{
            Contribution, FORMAT, RowsBasis, SignedContribution,
        };
        let records: Vec<Contribution> = {
            let s = lock(&self.state);
            s.tallies
                .iter()
                .map(|(owner, tally)| {
                    let tally = tally.clone();
                    let rounds_where = |pick: fn(&RoundRecord) -> &Vec<String>| {
                        s.history
                            .iter()
                            .filter(|r| pick(r).contains(owner))
                            .map(|r| r.round)
                            .collect::<Vec<u32>>()
                    };
                    let privacy = s.privacy.get(owner).filter(|p| {
                        [p.epsilon, p.delta]
                            .iter()
                            .all(|x| x.is_finite() && *x >= 0.0)
                    });
                    Contribution {
                        format: FORMAT.into(),
                        job: hex::encode(self.manifest_hash),
                        job_id: self.spec.job.id.clone(),
                        owner: owner.clone(),
                        rounds: rounds_where(|r| &r.contributors),
                        rounds_run,
                        excluded_in: rounds_where(|r| &r.excluded),
                        refused: tally.refused,
                        rows: tally.declared_rows,
                        rows_basis: if tally.declared_rows.is_some() {
                            RowsBasis::Declared
                        } else {
                            RowsBasis::Unknown
                        },
                        epsilon: privacy.map(|p| p.epsilon),
                        delta: privacy.map(|p| p.delta),
                        accountant: privacy.map(|p| p.accountant.clone()),
                        author: self.identity.public(),
                    }
                })
                .collect()
        };
        for record in records {
            let owner = record.owner.clone();
            let signed = SignedContribution::sign(record, &self.identity)
                .map_err(|e| format!("contribution record of `{owner}`: {e}"))?;
            let detail = serde_json::to_value(&signed)
                .map_err(|e| format!("contribution record of `{owner}`: {e}"))?;
            self.log(EventKind::Contribution, "coordinator", detail)?;
        }
        Ok(())
    }

    /// Logs the refusals that were only counted, once, at the job's end.
    fn log_counted_refusals(&self) {
        let counted: BTreeMap<String, u64> = lock(&self.state)
            .refusals
            .iter()
            .filter(|(_, n)| **n > AUDITED_REFUSALS)
            .map(|(id, n)| (id.clone(), n - AUDITED_REFUSALS))
            .collect();
        if !counted.is_empty() {
            self.log_or_warn(
                EventKind::Refusal,
                "coordinator",
                serde_json::json!({ "what": "refusals counted, not logged one by one", "counts": counted }),
            );
        }
    }

    /// Appends an event where a failure cannot be returned to anyone (it is logged loudly).
    fn log_or_warn(&self, kind: EventKind, actor: &str, detail: serde_json::Value) {
        if let Err(e) = self.log(kind, actor, detail) {
            tracing::error!("{e}");
        }
    }

    /// Signs the audit log's current head.
    fn sign_head(&self) -> Result<SignedTreeHead, String> {
        self.audit
            .sign_head(&self.identity)
            .map_err(|e| format!("audit log: {e}"))
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// The job.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The round in progress (`Some(r)` while round `r` runs; `None` before the first round
    /// and after the job ended), for a scheduler that reports the job's progress.
    pub fn running_round(&self) -> Option<u32> {
        let snap = self.rounds.borrow();
        (snap.state == JobState::Running).then_some(snap.round)
    }

    /// The manifest hash.
    pub fn manifest_hash(&self) -> [u8; 32] {
        self.manifest_hash
    }

    /// Records a witness's cosignature of a head this coordinator signed.
    fn accept_cosignature(
        &self,
        witness_id: &str,
        head_json: &str,
        cosig_json: &str,
    ) -> Result<SignedTreeHead, String> {
        // Parser errors quote their input: every message here is a capped excerpt.
        let short = |e: &dyn std::fmt::Display| crate::guard::excerpt_n(&e.to_string(), 160);
        let head: SignedTreeHead =
            serde_json::from_str(head_json).map_err(|e| format!("tree head: {}", short(&e)))?;
        let cosig: Cosignature =
            serde_json::from_str(cosig_json).map_err(|e| format!("cosignature: {}", short(&e)))?;
        if cosig.witness != witness_id {
            return Err(format!(
                "the cosignature is by `{}`, the caller is `{witness_id}`",
                crate::guard::excerpt(&cosig.witness)
            ));
        }
        head.verify(&self.identity.public_key())
            .map_err(|e| short(&e))?;
        self.audit
            .add_cosignature(&head, &cosig)
            .map_err(|e| short(&e))?;
        Ok(head)
    }

    fn record_event(&self, event: String) {
        tracing::info!("{event}");
        lock(&self.state).events.push(event);
    }

    /// Runs the job to its end. `unseal` performs the external part of a round: the key
    /// holder's under `paillier` and `lattice`, the aggregators' under `shares` and `threshold`
    /// (gRPC calls in deployments). `holder_key` is the key holder's public key.
    pub async fn run<F, Fut>(
        self: Arc<Self>,
        holder_key: Option<HolderPublicKey>,
        unseal: F,
    ) -> JobReport
    where
        F: Fn(u32, Vec<(Contribution, Vec<u8>)>) -> Fut,
        Fut: std::future::Future<Output = Result<ExternalResult, String>>,
    {
        let timeout = Duration::from_secs_f64(self.spec.job.round_timeout_secs);
        let keyholder_key = holder_key.as_ref().map(HolderPublicKey::fingerprint);
        let resumed = self
            .resume
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let mut params;
        let outcome = if let Some(cp) = resumed {
            // RES-006: the job goes on after its last committed round, from its checkpoint.
            params = Arc::new(cp.params);
            self.record_event(format!(
                "the coordinator restarted; the job goes on after round {}",
                cp.round
            ));
            match self.log(
                EventKind::StateChange,
                "coordinator",
                serde_json::json!({
                    "manifest_hash": hex::encode(self.manifest_hash),
                    "state": "running",
                    "resumed_after_round": cp.round,
                    "owners": lock(&self.state).alive.iter().cloned().collect::<Vec<_>>(),
                }),
            ) {
                Ok(_) => {
                    self.rounds_loop(&mut params, cp.round + 1, holder_key, &unseal, timeout)
                        .await
                }
                Err(e) => Err(e),
            }
        } else {
            // The job's own initial weights ([model] init, bound by the manifest), or the
            // seeded initialisation.
            match confide_ml::job::initial_params(&self.spec, self.spec.job.seed) {
                Ok(start) => {
                    params = Arc::new(start);
                    match self.start(&params, timeout).await {
                        Ok(()) => {
                            self.rounds_loop(&mut params, 1, holder_key, &unseal, timeout)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => {
                    params = Arc::new(Vec::new());
                    Err(e)
                }
            }
        };
        let rounds_done = lock(&self.state).history.len() as u32;
        // Record the end and the release, and sign the final head. Every released model is in
        // the log: when the log cannot be written, nothing is released and the job fails.
        let end = self.log(
            EventKind::JobEnd,
            "coordinator",
            serde_json::json!({
                "status": if outcome.is_ok() { "finished" } else { "failed" },
                "message": outcome.as_ref().err().cloned().unwrap_or_default(),
                "rounds": rounds_done,
            }),
        );
        self.log_counted_refusals();
        let records = if end.is_ok() {
            self.log_contributions(rounds_done)
        } else {
            Ok(())
        };
        let release = if rounds_done > 0 && end.is_ok() && records.is_ok() {
            self.log(
                EventKind::ModelRelease,
                "coordinator",
                serde_json::json!({
                    "recipients": self.recipients,
                    "model_digest": hex::encode(model_digest(&params)),
                    "manifest_hash": hex::encode(self.manifest_hash),
                    "rounds": rounds_done,
                    "job_status": if outcome.is_ok() { "finished" } else { "failed" },
                }),
            )
        } else {
            Ok(0)
        };
        let head = self.sign_head();
        let audit_problem = [
            end.err(),
            records.err(),
            release.err(),
            head.as_ref().err().cloned(),
        ]
        .into_iter()
        .flatten()
        .next();
        if let Some(p) = &audit_problem {
            tracing::error!("{p}: the model is not released");
            params = Arc::new(Vec::new());
        }
        let outcome = match (outcome, audit_problem) {
            (Err(m), _) => Err(m),
            (Ok(()), Some(p)) => Err(p),
            (Ok(()), None) => Ok(()),
        };
        let (state, message) = match &outcome {
            Ok(()) => (JobState::Finished, String::new()),
            Err(m) => (JobState::Failed, m.clone()),
        };
        let head = head.ok();
        self.rounds.send_replace(Snapshot {
            state,
            round: rounds_done + 1,
            params: params.clone(),
            message: message.clone(),
            head: head.clone(),
            stage: 0,
            broadcast: Arc::new(Vec::new()),
        });
        // Give the witnesses (the owners still in the job) a bounded time to cosign it.
        if head.is_some() {
            let wait = timeout.min(Duration::from_secs(10));
            self.wait_until(0, wait, |s| s.cosigned_final.is_superset(&s.alive))
                .await;
        }
        let audit = head.map(|h| self.audit_summary(h));
        let report = {
            let s = lock(&self.state);
            JobReport {
                job_id: self.spec.job.id.clone(),
                status: if outcome.is_ok() {
                    "finished"
                } else {
                    "failed"
                }
                .into(),
                message: message.clone(),
                scheme: self.spec.job.scheme.as_str().into(),
                parties: self.spec.owners.clone(),
                rounds: s.history.len() as u32,
                rounds_planned: self.spec.job.rounds,
                history: s.history.clone(),
                rejections: s.rejections.clone(),
                refusals: self.guard.stats().by_rule(),
                events: s.events.clone(),
                keyholder_key,
                param_count: self.model.param_count(),
                privacy: s.privacy.clone(),
                manifest_hash: hex::encode(self.manifest_hash),
                audit,
            }
        };
        lock(&self.state).report = Some((report.clone(), params.clone()));
        let round = report.rounds;
        let _ = self.progress.send(pb::Progress {
            state: state as i32,
            round,
            rounds: self.spec.job.rounds,
            record_json: String::new(),
            message,
        });
        report
    }

    /// Waits for the owners to join and approve, then starts the job: from then on approvals
    /// are refused. Fails when too few owners are in.
    async fn start(&self, params: &[f32], timeout: Duration) -> Result<(), String> {
        let owners = self.spec.owners.len();
        let all_joined = self
            .wait_until(0, timeout, |s| {
                s.joined.len() == owners && s.approving.is_empty()
            })
            .await;
        // From here on, approvals are refused: the owners are those that approved in time.
        // An approval being logged right now finishes first (a store commit).
        let present = loop {
            {
                let mut s = lock(&self.state);
                if s.approving.is_empty() {
                    s.started = true;
                    break s.alive.len();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        if present < self.spec.job.min_owners {
            Err(if all_joined {
                format!(
                    "only {present} of {owners} owners approved the job and stayed (the others withdrew; see the events); the job needs {}",
                    self.spec.job.min_owners
                )
            } else {
                format!(
                    "only {present} of {owners} owners joined and approved the job (and stayed) within {:.0} s; the job needs {}",
                    timeout.as_secs_f64(),
                    self.spec.job.min_owners
                )
            })
        } else {
            if !all_joined {
                let missing: Vec<String> = {
                    let s = lock(&self.state);
                    self.spec
                        .owners
                        .iter()
                        .filter(|o| !s.joined.contains(*o))
                        .cloned()
                        .collect()
                };
                self.record_event(format!(
                    "owners {missing:?} did not join in time; starting without them"
                ));
            }
            let present: Vec<String> = lock(&self.state).alive.iter().cloned().collect();
            // The start and round 0's checkpoint commit together (RES-006).
            self.commit(
                EventKind::JobStart,
                serde_json::json!({
                    "manifest_hash": hex::encode(self.manifest_hash),
                    "owners": present,
                    "scheme": self.spec.job.scheme.as_str(),
                    "rounds": self.spec.job.rounds,
                }),
                (0, params),
                None,
            )
            .map(|_| ())
        }
    }

    /// The audit log's state for the report, exporting the log file when asked to.
    fn audit_summary(&self, head: SignedTreeHead) -> AuditSummary {
        let cosignatures = self.audit.cosignatures(&head).unwrap_or_default();
        let log_file = self.audit_export.as_ref().and_then(|path| {
            let written = self
                .audit
                .export(&self.identity.public_key())
                .map_err(|e| e.to_string())
                .and_then(|bytes| write_atomically(path, &bytes));
            match written {
                Ok(()) => Some(path.display().to_string()),
                Err(e) => {
                    tracing::error!("exporting the audit log to {}: {e}", path.display());
                    None
                }
            }
        });
        AuditSummary {
            entries: head.size,
            tree_head: head,
            cosignatures,
            log_file,
        }
    }

    /// Runs rounds `first` to the job's last (after a restart, `first` is collected again from
    /// the owners' stored updates, RES-007).
    async fn rounds_loop<F, Fut>(
        &self,
        params: &mut Arc<Vec<f32>>,
        first: u32,
        holder_key: Option<HolderPublicKey>,
        unseal: &F,
        timeout: Duration,
    ) -> Result<(), String>
    where
        F: Fn(u32, Vec<(Contribution, Vec<u8>)>) -> Fut,
        Fut: std::future::Future<Output = Result<ExternalResult, String>>,
    {
        let sp = job_scheme_params(&self.spec).map_err(|e| e.to_string())?;
        for round in first..=self.spec.job.rounds {
            let started = Instant::now();
            let ctx = RoundContext {
                round,
                model_digest: model_digest(params),
            };
            let server: Box<dyn AggregationServer> = match self.spec.job.scheme {
                SchemeKind::Plain => {
                    Box::new(PlainServer::new(sp.clone(), ctx).with_rule(self.spec.training.robust))
                }
                SchemeKind::Paillier | SchemeKind::Lattice => holder_key
                    .as_ref()
                    .ok_or("the scheme needs the key holder's public key")?
                    .server(&sp, ctx)
                    .map_err(|e| e.to_string())?,
                SchemeKind::Masking => Box::new(
                    MaskingServer::new(masking_config(&self.spec, &self.digest, round), ctx)
                        .map_err(|e| e.to_string())?,
                ),
                SchemeKind::Shares | SchemeKind::Threshold => Box::new(MultiServer::new(
                    crate::aggregator::multi_params(&self.spec).map_err(|e| e.to_string())?,
                    ctx,
                )),
            };
            {
                let mut s = lock(&self.state);
                s.server = Some(server);
                s.server_round = round;
                s.received.clear();
            }
            let head = self.sign_head()?;
            self.rounds.send_replace(Snapshot {
                state: JobState::Running,
                round,
                params: params.clone(),
                message: String::new(),
                head: Some(head),
                stage: 0,
                broadcast: Arc::new(Vec::new()),
            });
            let mut stage_started = started;
            let mut excluded = Vec::new();
            let (agg_started, closing) = loop {
                self.wait_until(
                    round,
                    timeout.saturating_sub(stage_started.elapsed()),
                    |s| {
                        s.server
                            .as_ref()
                            .is_some_and(|srv| srv.accepted().is_superset(&s.alive))
                    },
                )
                .await;
                let agg_started = Instant::now();
                let (closing, stage_excluded) = {
                    let mut s = lock(&self.state);
                    let accepted = s
                        .server
                        .as_ref()
                        .map(|srv| srv.accepted())
                        .unwrap_or_default();
                    let stage_excluded: Vec<String> =
                        s.alive.difference(&accepted).cloned().collect();
                    for o in &stage_excluded {
                        s.alive.remove(o);
                        s.events.push(format!(
                            "round {round}: `{o}` missed the deadline and is excluded"
                        ));
                    }
                    let survivors = s.alive.clone();
                    let closing = match s.server.as_mut() {
                        Some(srv) => srv.close_stage(&survivors),
                        None => return Err("internal: no aggregation state".into()),
                    };
                    (closing, stage_excluded)
                };
                excluded.extend(stage_excluded);
                match closing {
                    // A multi-stage scheme: publish the next stage and collect it.
                    Ok(StageResult::Broadcast { stage, payload }) => {
                        confide_core::crash::point(&format!("coordinator-stage-{stage}"), round);
                        stage_started = Instant::now();
                        self.rounds.send_modify(|snap| {
                            snap.stage = stage;
                            snap.broadcast = Arc::new(payload);
                        });
                    }
                    other => break (agg_started, other),
                }
            };
            confide_core::crash::point("coordinator-collected", round);
            let sum = match closing.map_err(|e| format!("round {round} failed: {e}"))? {
                StageResult::Sum(sum) => sum,
                StageResult::External(
                    ExternalRequest::Unseal {
                        round: r,
                        contributions,
                    }
                    | ExternalRequest::Aggregate {
                        round: r,
                        contributions,
                    },
                ) => {
                    let party = if self.spec.job.scheme.uses_aggregators() {
                        "the aggregators"
                    } else {
                        "the key holder"
                    };
                    let relayed = {
                        let s = lock(&self.state);
                        contributions
                            .into_iter()
                            .map(|c| {
                                let cert = s.certs.get(&c.owner).cloned().unwrap_or_default();
                                (c, cert)
                            })
                            .collect()
                    };
                    let answer = tokio::time::timeout(timeout, unseal(r, relayed))
                        .await
                        .map_err(|_| {
                            format!(
                                "round {round} failed: {party} did not answer within {:.0} s",
                                timeout.as_secs_f64()
                            )
                        })?
                        .map_err(|e| format!("round {round} failed: {party} {e}"))?;
                    confide_core::crash::point("coordinator-unsealed", round);
                    let sum = {
                        let mut s = lock(&self.state);
                        let srv = s.server.as_mut().ok_or("internal: no aggregation state")?;
                        srv.finish(answer)
                            .map_err(|e| format!("round {round} failed: {e}"))?
                    };
                    for (owner, reason) in &sum.rejected {
                        self.count_rejection(owner, *reason);
                        self.record_event(format!(
                            "round {round}: the aggregators refused `{owner}`'s update: {} {}",
                            reason.rule(),
                            reason.name()
                        ));
                    }
                    for f in &sum.faulty {
                        tracing::warn!("round {round}: faulty aggregator: {f}");
                        self.record_event(format!("round {round}: faulty aggregator: {f}"));
                    }
                    sum
                }
                StageResult::Broadcast { .. } => {
                    return Err("internal: a broadcast after the stage loop".into());
                }
            };
            // Evaluate the candidate first: the global model only advances with a complete round.
            let (candidate, moments) = self
                .apply(params, &sum, round)
                .map_err(|e| format!("round {round} failed: {e}"))?;
            let aggregation_seconds = agg_started.elapsed().as_secs_f64();
            let metrics = match &self.eval {
                Some(d) => Some(
                    confide_ml::train::evaluate(&self.model, &candidate, d)
                        .map_err(|e| format!("round {round} failed: evaluation: {e}"))?,
                ),
                None => None,
            };
            let record = RoundRecord {
                round,
                contributors: sum.contributors.clone(),
                excluded: excluded.clone(),
                test_accuracy: metrics.map(|m| m.accuracy),
                test_auc: metrics.and_then(|m| m.auc),
                test_log_loss: metrics.map(|m| m.log_loss),
                test_correct: metrics.map(|m| m.correct),
                seconds: started.elapsed().as_secs_f64(),
                aggregation_seconds,
            };
            // The round's entry and the checkpoint after it commit together (RES-006).
            self.commit(
                EventKind::Round,
                serde_json::json!({
                    "round": round,
                    "contributors": sum.contributors,
                    "excluded": excluded,
                    "refused": sum.rejected.iter().map(|(o, r)| serde_json::json!({"owner": o, "rule": r.rule()})).collect::<Vec<_>>(),
                    "faulty_aggregators": sum.faulty,
                    "model_digest": hex::encode(model_digest(&candidate)),
                }),
                (round, &candidate),
                Some((&record, &moments)),
            )
            .map_err(|e| format!("round {round} failed: {e}"))?;
            *params = Arc::new(candidate);
            lock(&self.state).moments = moments;
            confide_core::crash::point("coordinator-committed", round);
            let json = serde_json::to_string(&record).unwrap_or_default();
            lock(&self.state).history.push(record);
            let _ = self.progress.send(pb::Progress {
                state: JobState::Running as i32,
                round,
                rounds: self.spec.job.rounds,
                record_json: json,
                message: String::new(),
            });
        }
        Ok(())
    }

    /// The server step: FedAvg moves the global model to `w + η · mean(Δ)` over the
    /// contributors (uniform weights; weighting by sample counts would reveal each owner's
    /// count); a server optimiser (`training.server_optimizer`) moves it by its own rule from
    /// the same mean (`confide_ml::server_opt`). Returns the model and the optimiser's moments.
    fn apply(
        &self,
        params: &[f32],
        sum: &AggregateSum,
        round: u32,
    ) -> Result<(Vec<f32>, confide_ml::server_opt::ServerState), String> {
        let k = sum.contributors.len().max(1) as f64;
        let lr = self.spec.training.server_learning_rate;
        let mean: Vec<f64> = match &self.client_dp {
            Some(c) => {
                let seed = ClientDp::round_seed(&self.digest, round);
                c.ddg
                    .decode_mean(&sum.sums, sum.contributors.len(), seed)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
            None if self.spec.training.server_optimizer.is_none() => {
                // FedAvg without client-level DP, as it always was: η·Σ/k in one expression.
                let model = params
                    .iter()
                    .zip(&sum.sums)
                    .map(|(w, s)| (f64::from(*w) + lr * self.fixed.decode(*s) / k) as f32)
                    .collect();
                return Ok((model, confide_ml::server_opt::ServerState::default()));
            }
            None => sum.sums.iter().map(|s| self.fixed.decode(*s) / k).collect(),
        };
        match &self.spec.training.server_optimizer {
            Some(opt) => {
                let before = lock(&self.state).moments.clone();
                confide_ml::server_opt::step(opt, lr, params, &mean, &before)
            }
            None => Ok((
                params
                    .iter()
                    .zip(&mean)
                    .map(|(w, m)| (f64::from(*w) + lr * m) as f32)
                    .collect(),
                confide_ml::server_opt::ServerState::default(),
            )),
        }
    }

    /// Whether this coordinator lacks `owner`'s update for `round`: the round is open (or,
    /// after a restart, not open yet) and has not accepted one from it. After a restart, a
    /// `masking` owner then answers the round's later stages again from its record (RES-011);
    /// a coordinator that kept running is past the round's first stage by then, so a masking
    /// owner that lost its connection mid-round is excluded from that round.
    fn lacks_update(&self, owner: &str, round: u32) -> bool {
        if round == 0 {
            return false;
        }
        let s = lock(&self.state);
        match s.server_round.cmp(&round) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => !s
                .server
                .as_ref()
                .is_some_and(|srv| srv.accepted().contains(owner)),
            std::cmp::Ordering::Greater => false,
        }
    }

    /// NET-007: `id` is an owner admitted to this job (approved it in time) and still in it.
    fn admitted(&self, id: &crate::pki::PeerIdentity) -> Result<(), Status> {
        let (joined, alive) = {
            let s = lock(&self.state);
            (s.joined.contains(&id.name), s.alive.contains(&id.name))
        };
        if joined && alive && self.spec.owners.contains(&id.name) {
            return Ok(());
        }
        self.guard.stats().refuse("NET-007", &id.id, "round model");
        Err(Status::permission_denied(format!(
            "NET-007 `{}` is not an admitted owner of this job ({})",
            id.name,
            if joined {
                "it withdrew or was excluded"
            } else {
                "it has not approved it"
            }
        )))
    }

    /// The job's result; once the rounds have ended, waits (bounded) for the report, which
    /// follows the witnesses' final cosignatures.
    async fn result_when_ended(&self) -> Result<(JobReport, Arc<Vec<f32>>), Status> {
        let mut rx = self.rounds.subscribe();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self.result() {
                return Ok(r);
            }
            let ended = matches!(
                rx.borrow_and_update().state,
                JobState::Finished | JobState::Failed
            );
            if !ended || Instant::now() >= deadline {
                return Err(Status::failed_precondition("the job has not ended yet"));
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.changed.notified()).await;
        }
    }

    fn count_rejection(&self, owner: &str, reason: Reject) {
        let mut s = lock(&self.state);
        *s.rejections.entry(reason.name().to_string()).or_default() += 1;
        // Only an owner that approved gets a record (others' refusals are counted above).
        if let Some(t) = s.tallies.get_mut(owner) {
            *t.refused.entry(reason.rule()).or_default() += 1;
        }
    }

    fn submit(
        &self,
        peer: &crate::pki::PeerIdentity,
        cert: Vec<u8>,
        c: Contribution,
        privacy: Option<OwnerPrivacy>,
        witness: Option<(String, String)>,
    ) -> Result<(), Rejection> {
        let (peer_name, peer_key, peer_id) = (
            peer.name.as_str(),
            peer.public_key.as_slice(),
            peer.id.as_str(),
        );
        let c_round = c.round;
        let key = (peer_name.to_string(), c.stage);
        let fingerprint = {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(&c.round.to_be_bytes());
            ctx.update(&c.payload);
            ctx.update(&c.signature);
            let d = ctx.finish();
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        let resent = {
            let s = lock(&self.state);
            s.server_round == c_round && s.received.get(&key) == Some(&fingerprint)
        };
        if resent {
            // A resend of what this round has (the owner did not hear the answer).
            return Ok(());
        }
        let result = (|| {
            if c.owner != peer_name {
                return Err(Rejection::new(
                    Reject::NotAnOwner,
                    format!(
                        "contribution names `{}` but the certificate is `{peer_name}`",
                        crate::guard::excerpt(&c.owner)
                    ),
                ));
            }
            if !self.spec.owners.contains(&c.owner) {
                return Err(Rejection::new(
                    Reject::NotAnOwner,
                    format!(
                        "`{}` is not an owner of this job",
                        crate::guard::excerpt(&c.owner)
                    ),
                ));
            }
            if !lock(&self.state).alive.contains(peer_name) {
                return Err(Rejection::new(
                    Reject::StageClosed,
                    format!(
                        "`{peer_name}` has not approved this job's manifest, or has withdrawn or was excluded"
                    ),
                ));
            }
            if let Some((head, cosig)) = &witness {
                self.accept_cosignature(peer_id, head, cosig).map_err(|e| {
                    Rejection::new(Reject::BadSignature, format!("audit cosignature: {e}"))
                })?;
            }
            let max = self.spec.limits.max_message_bytes;
            if c.payload.len() > max {
                return Err(Rejection::new(
                    Reject::Oversized,
                    format!("{} bytes > {max}", c.payload.len()),
                ));
            }
            let verified = contribution::verify(c, peer_key, &self.digest).map_err(|_| {
                Rejection::new(
                    Reject::BadSignature,
                    "signature does not verify for this job and round",
                )
            })?;
            let mut s = lock(&self.state);
            if !s.alive.contains(peer_name) {
                return Err(Rejection::new(
                    Reject::StageClosed,
                    format!(
                        "`{peer_name}` has not approved this job's manifest, or has withdrawn or was excluded"
                    ),
                ));
            }
            let srv = s
                .server
                .as_mut()
                .ok_or_else(|| Rejection::new(Reject::StageClosed, "no round is open"))?;
            srv.accept(verified)?;
            s.received.insert(key, fingerprint);
            s.certs.insert(peer_name.to_string(), cert);
            if let Some(p) = privacy {
                s.privacy.insert(peer_name.to_string(), p);
            }
            Ok(())
        })();
        match &result {
            Ok(()) => self.changed.notify_waiters(),
            Err(r) => {
                self.count_rejection(peer_name, r.reason);
                let audited = self.refusal(
                    &r.reason.rule(),
                    peer_id,
                    serde_json::json!({
                        "what": "contribution",
                        "owner": peer_name,
                        "round": c_round,
                        "code": r.reason.rule(),
                        "detail": r.to_string(),
                    }),
                );
                // The detail goes to the log as long as it goes to the audit log.
                if audited {
                    tracing::warn!("rejected a contribution from `{peer_name}`: {r}");
                }
            }
        }
        result
    }
}

/// The owner's signed revocation that a withdrawal carries, checked (its signature, its
/// action, its job), as the audit entry keeps it.
fn revocation_statement(text: &str, job: &[u8; 32]) -> Result<serde_json::Value, String> {
    use confide_governance::statement::{Action, SignedStatement};
    let signed =
        SignedStatement::from_json(text.as_bytes()).map_err(|e| format!("malformed: {e}"))?;
    let verified = signed.verify().map_err(|e| e.to_string())?;
    if verified.statement.action != Action::Revoke || verified.job != *job {
        return Err("it is not a revocation of this job".into());
    }
    serde_json::to_value(&signed).map_err(|e| e.to_string())
}

/// The most characters of a withdrawal reason the coordinator keeps.
pub const WITHDRAW_REASON_CHARS: usize = 200;

/// The gRPC face of a [`Coordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorService(pub Arc<Coordinator>);

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        let c = &self.0;
        let id = peer(&request, &[Role::Node], &c.revocations)?;
        if !c.spec.owners.contains(&id.name) {
            c.refusal(
                "UPD-003",
                &id.id,
                serde_json::json!({ "what": "join", "party": id.name, "id": id.id, "detail": "not an owner of this job" }),
            );
            return Err(Status::permission_denied(format!(
                "`{}` is not an owner of this job",
                id.name
            )));
        }
        {
            let s = lock(&c.state);
            let excluded = s.joined.contains(&id.name) && !s.alive.contains(&id.name);
            if excluded {
                return Err(Status::failed_precondition(format!(
                    "`{}` withdrew or was excluded from this job",
                    id.name
                )));
            }
        }
        // One registration entry per party, however often it joins (a rejoin is not news).
        let first = lock(&c.state).registered.insert(id.name.clone());
        if first {
            if let Err(e) = c.log(
                EventKind::Registration,
                &id.name,
                serde_json::json!({ "party": id.name, "id": id.id, "role": id.role.as_str() }),
            ) {
                lock(&c.state).registered.remove(&id.name);
                return Err(Status::internal(e));
            }
            tracing::info!("`{}` joined", id.name);
        }
        Ok(Response::new(pb::JoinReply {
            job_spec: c.spec_text.clone(),
            job_digest: c.digest.to_vec(),
            keyholder_endpoint: c.keyholder_endpoint.clone(),
            aggregator_endpoints: c.aggregator_endpoints.clone(),
            manifest_json: c.manifest_json.clone(),
            coordinator_certificate: c.certificate.clone(),
        }))
    }

    async fn approve(
        &self,
        request: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::ApproveReply>, Status> {
        let c = &self.0;
        let id = peer(&request, &[Role::Node], &c.revocations)?;
        if !c.spec.owners.contains(&id.name) {
            return Err(Status::permission_denied(format!(
                "`{}` is not an owner of this job",
                id.name
            )));
        }
        let req = request.into_inner();
        let checked = if req.manifest_hash != hex::encode(c.manifest_hash) {
            Err("the approval is for another manifest than this job's")
        } else {
            hex::decode(&req.signature)
                .map_err(|_| ())
                .and_then(|sig| {
                    confide_crypto::sign::verify(
                        &id.public_key,
                        &online_approval_message(&c.identity.id(), &c.manifest_hash),
                        &sig,
                    )
                    .map_err(|_| ())
                })
                .map_err(|()| "the approval signature does not verify")
        };
        if let Err(why) = checked {
            c.refusal(
                "UPD-004",
                &id.id,
                serde_json::json!({ "what": "approval", "owner": id.name, "id": id.id, "detail": why }),
            );
            return Err(Status::permission_denied(why));
        }
        // Check under one lock and mark the owner as approving; the owner is admitted once its
        // approval is in the audit log, and the job does not start while one is being written.
        {
            let mut s = lock(&c.state);
            if s.started {
                return Err(Status::failed_precondition(
                    "the job has started; approvals are closed",
                ));
            }
            if s.joined.contains(&id.name) || s.approving.contains(&id.name) {
                return Err(Status::failed_precondition(format!(
                    "`{}` already approved, withdrew or was excluded",
                    id.name
                )));
            }
            s.approving.insert(id.name.clone());
        }
        let logged = c.log(
            EventKind::Approval,
            &id.name,
            serde_json::json!({
                "owner": id.name,
                "id": id.id,
                "manifest_hash": req.manifest_hash,
                "basis": crate::guard::excerpt(&req.basis),
                "signature": req.signature,
            }),
        );
        {
            // The job has not started meanwhile: it waits for `approving` to empty.
            let mut s = lock(&c.state);
            s.approving.remove(&id.name);
            if logged.is_ok() {
                s.joined.insert(id.name.clone());
                s.alive.insert(id.name.clone());
                // Capped where canonical JSON numbers stay exact.
                s.tallies.entry(id.name.clone()).or_default().declared_rows =
                    (req.declared_rows > 0).then_some(req.declared_rows.min((1 << 53) - 1));
            }
        }
        c.changed.notify_waiters();
        if let Err(e) = logged {
            return Err(Status::internal(e));
        }
        tracing::info!(
            "`{}` approved the job ({})",
            id.name,
            crate::guard::excerpt(&req.basis)
        );
        Ok(Response::new(pb::ApproveReply {}))
    }

    async fn cosign(
        &self,
        request: Request<pb::CosignRequest>,
    ) -> Result<Response<pb::CosignReply>, Status> {
        let c = &self.0;
        let id = peer(&request, &[Role::Node], &c.revocations)?;
        if !lock(&c.state).alive.contains(&id.name) {
            return Err(Status::permission_denied(format!(
                "`{}` is not an owner taking part in this job",
                id.name
            )));
        }
        let req = request.into_inner();
        let head = c
            .accept_cosignature(&id.id, &req.tree_head_json, &req.cosignature_json)
            .map_err(Status::invalid_argument)?;
        let is_final = {
            let snap = c.rounds.borrow();
            // The final head, or a later head of the shared log, which contains it.
            matches!(snap.state, JobState::Finished | JobState::Failed)
                && snap
                    .head
                    .as_ref()
                    .is_some_and(|f| f == &head || (f.log_id == head.log_id && head.size > f.size))
        };
        if is_final {
            lock(&c.state).cosigned_final.insert(id.name.clone());
            c.changed.notify_waiters();
        }
        Ok(Response::new(pb::CosignReply {}))
    }

    async fn export_audit(
        &self,
        request: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<pb::ExportAuditReply>, Status> {
        let c = &self.0;
        peer(
            &request,
            &[
                Role::Node,
                Role::ModelOwner,
                Role::Coordinator,
                Role::KeyHolder,
            ],
            &c.revocations,
        )?;
        // Entries appended after the last head (late refusals) are covered by a fresh head.
        let behind = match (c.audit.latest_head(), c.audit.size()) {
            (Ok(Some(h)), Ok(n)) => h.size < n,
            // No head yet (even an empty log): sign one so the export verifies.
            (Ok(None), Ok(_)) => true,
            _ => false,
        };
        if behind {
            c.sign_head().map_err(Status::internal)?;
        }
        let log_file = c
            .audit
            .export(&c.identity.public_key())
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(pb::ExportAuditReply { log_file }))
    }

    async fn next_stage(
        &self,
        request: Request<pb::NextStageRequest>,
    ) -> Result<Response<pb::StageTask>, Status> {
        let id = peer(&request, &[Role::Node], &self.0.revocations)?;
        self.0.admitted(&id)?;
        let req = request.into_inner();
        let mut rx = self.0.rounds.subscribe();
        let snap = rx
            .wait_for(|s| {
                s.round != req.round
                    || s.stage > req.after_stage
                    || matches!(s.state, JobState::Finished | JobState::Failed)
            })
            .await
            .map_err(|_| Status::unavailable("the coordinator is shutting down"))?
            .clone();
        let same = snap.round == req.round && snap.state == JobState::Running;
        // The certificates of the owners still in the job (the key list's owners among them).
        let owner_certificates = if same && snap.stage == 1 {
            let s = lock(&self.0.state);
            s.certs
                .iter()
                .filter(|(o, _)| s.alive.contains(*o))
                .map(|(_, c)| c.clone())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::StageTask {
            state: snap.state as i32,
            round: snap.round,
            stage: snap.stage,
            payload: if same {
                snap.broadcast.to_vec()
            } else {
                Vec::new()
            },
            owner_certificates,
        }))
    }

    async fn next_round(
        &self,
        request: Request<pb::NextRoundRequest>,
    ) -> Result<Response<pb::RoundTask>, Status> {
        let id = peer(&request, &[Role::Node], &self.0.revocations)?;
        self.0.admitted(&id)?;
        let after = request.get_ref().after_round;
        let witnessed = request.get_ref().witnessed_size;
        // RES-007: an owner that trained round `after` but whose update this coordinator lacks
        // (it restarted, or the owner's submission got no answer, or the owner restarted) is
        // given that round again, to send the same update again. Only its own submission
        // changes this, and it is not submitting now.
        let resend = self.0.lacks_update(&id.name, after);
        let mut rx = self.0.rounds.subscribe();
        let waited = tokio::time::timeout(
            keepalive(&self.0.spec),
            rx.wait_for(|s| {
                s.round > after
                    || (resend && s.round == after && s.stage == 0 && s.state == JobState::Running)
                    || matches!(s.state, JobState::Finished | JobState::Failed)
            }),
        )
        .await;
        let snap = match waited.map(|changed| changed.map(|s| s.clone())) {
            Ok(changed) => {
                changed.map_err(|_| Status::unavailable("the coordinator is shutting down"))?
            }
            Err(_) => {
                // Alive, nothing new: say so, so that the node can tell a slow round from a
                // coordinator that stopped answering.
                let now = self.0.rounds.borrow().clone();
                return Ok(Response::new(pb::RoundTask {
                    state: now.state as i32,
                    round: now.round,
                    keepalive: true,
                    ..Default::default()
                }));
            }
        };
        // On a long-running coordinator several jobs share one audit log, so a node's
        // witness may already have seen a later head of it (from another job): then the task
        // carries a head signed now, which extends what the witness saw.
        let fresh = match &snap.head {
            Some(h) if witnessed > h.size => Some(
                self.0
                    .sign_head()
                    .map_err(|e| Status::internal(e.to_string()))?,
            ),
            _ => None,
        };
        let (tree_head_json, consistency_proof) = match fresh.as_ref().or(snap.head.as_ref()) {
            Some(h) => {
                let proof = if witnessed > 0 && witnessed < h.size {
                    self.0
                        .audit
                        .consistency_proof(witnessed, h.size)
                        .map_err(|e| Status::internal(e.to_string()))?
                } else {
                    Vec::new()
                };
                (
                    serde_json::to_string(h).map_err(|e| Status::internal(e.to_string()))?,
                    proof.into_iter().map(|p| p.to_vec()).collect(),
                )
            }
            None => (String::new(), Vec::new()),
        };
        Ok(Response::new(pb::RoundTask {
            state: snap.state as i32,
            round: snap.round,
            params: if snap.state == JobState::Running {
                snap.params.to_vec()
            } else {
                Vec::new()
            },
            message: snap.message,
            tree_head_json,
            consistency_proof,
            keepalive: false,
        }))
    }

    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let id = peer(&request, &[Role::Node], &self.0.revocations)?;
        let cert = request
            .peer_certs()
            .and_then(|c| c.first().map(|d| d.as_ref().to_vec()))
            .unwrap_or_default();
        let inner = request.into_inner();
        let privacy = inner.privacy.as_ref().map(OwnerPrivacy::from_pb);
        let witness = (!inner.cosignature_json.is_empty())
            .then(|| (inner.tree_head_json.clone(), inner.cosignature_json.clone()));
        let c = inner
            .contribution
            .ok_or_else(|| Status::invalid_argument("missing contribution"))?;
        let c = crate::wire::from_pb(c);
        // Signature verification and ciphertext parsing are CPU work: keep them off the async
        // executor.
        let coordinator = self.0.clone();
        let outcome =
            tokio::task::spawn_blocking(move || coordinator.submit(&id, cert, c, privacy, witness))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(match outcome {
            Ok(()) => pb::SubmitReply {
                accepted: true,
                reject_code: 0,
                detail: String::new(),
            },
            Err(r) => pb::SubmitReply {
                accepted: false,
                reject_code: r.reason as u32,
                detail: r.to_string(),
            },
        }))
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawReply>, Status> {
        let id = peer(&request, &[Role::Node], &self.0.revocations)?;
        if !self.0.spec.owners.contains(&id.name) {
            return Err(Status::permission_denied(format!(
                "`{}` is not an owner of this job",
                id.name
            )));
        }
        {
            let s = lock(&self.0.state);
            if s.joined.contains(&id.name) && !s.alive.contains(&id.name) {
                // Already out of the job: nothing changes, so nothing is logged again.
                return Ok(Response::new(pb::WithdrawReply {}));
            }
        }
        let req = request.into_inner();
        // A node sends a numbered reason; whatever arrives is kept only as a capped excerpt.
        let reason = crate::guard::excerpt_n(&req.reason, WITHDRAW_REASON_CHARS);
        let kind = if req.kind == "revocation" {
            EventKind::Revocation
        } else {
            EventKind::Refusal
        };
        let kind_name = match req.kind.as_str() {
            "" | "data" => "data",
            "refusal" => "refusal",
            "revocation" => "revocation",
            _ => "other",
        };
        let mut detail = serde_json::json!({
            "what": "withdrawal",
            "owner": id.name,
            "id": id.id,
            "kind": kind_name,
            "reason": reason,
        });
        // The owner's statement is evidence for the log: one that does not verify is logged
        // as refused, never lost with the withdrawal.
        if !req.statement_json.is_empty() {
            match revocation_statement(&req.statement_json, &self.0.manifest_hash) {
                Ok(v) => detail["statement"] = v,
                Err(why) => detail["statement_refused"] = serde_json::json!(why),
            }
        }
        self.0
            .log(kind, &id.name, detail)
            .map_err(Status::internal)?;
        {
            let mut s = lock(&self.0.state);
            s.joined.insert(id.name.clone());
            s.alive.remove(&id.name);
        }
        self.0
            .record_event(format!("`{}` withdrew: {reason}", id.name));
        self.0.changed.notify_waiters();
        Ok(Response::new(pb::WithdrawReply {}))
    }

    type WatchStream = ProgressStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = peer(&request, &[Role::ModelOwner], &self.0.revocations)?;
        if !self.0.recipients.contains(&id.id) {
            self.0.guard.stats().refuse("NET-008", &id.id, "Watch");
            return Err(Status::permission_denied(format!(
                "NET-008 `{}` ({}) is not a recipient of this job; only recipients follow its metrics",
                id.name, id.id
            )));
        }
        let c = self.0.clone();
        let rx = c.progress.subscribe();
        // Replay what already happened, then follow live events.
        let (replay, done) = {
            let s = lock(&c.state);
            let replay: Vec<pb::Progress> = s
                .history
                .iter()
                .map(|r| pb::Progress {
                    state: JobState::Running as i32,
                    round: r.round,
                    rounds: c.spec.job.rounds,
                    record_json: serde_json::to_string(r).unwrap_or_default(),
                    message: String::new(),
                })
                .collect();
            (replay, s.report.clone())
        };
        Ok(Response::new(progress_stream(
            replay,
            done,
            c.spec.job.rounds,
            rx,
        )))
    }

    async fn ack_model(
        &self,
        request: Request<pb::AckModelRequest>,
    ) -> Result<Response<pb::AckModelReply>, Status> {
        let id = peer(&request, &[Role::ModelOwner], &self.0.revocations)?;
        if !self.0.recipients.contains(&id.id) {
            self.0.guard.stats().refuse("NET-008", &id.id, "AckModel");
            return Err(Status::permission_denied(format!(
                "NET-008 `{}` ({}) is not a recipient of this job's model",
                id.name, id.id
            )));
        }
        if self.0.result().is_none() {
            return Err(Status::failed_precondition("the job has not ended yet"));
        }
        // Signalled only now: the release has fully reached the model owner.
        self.0.fetched.notify_one();
        Ok(Response::new(pb::AckModelReply {}))
    }

    async fn fetch_model(
        &self,
        request: Request<pb::FetchModelRequest>,
    ) -> Result<Response<pb::ModelRelease>, Status> {
        let id = peer(&request, &[Role::ModelOwner], &self.0.revocations)?;
        if !self.0.recipients.contains(&id.id) {
            self.0.refusal(
                "NET-008",
                &id.id,
                serde_json::json!({ "what": "model fetch", "party": id.name, "id": id.id, "detail": "not a recipient in the manifest" }),
            );
            return Err(Status::permission_denied(format!(
                "`{}` ({}) is not a recipient of this job's model",
                id.name, id.id
            )));
        }
        let (report, params) = self.0.result_when_ended().await?;
        Ok(Response::new(pb::ModelRelease {
            params: params.to_vec(),
            report_json: serde_json::to_string(&report)
                .map_err(|e| Status::internal(e.to_string()))?,
        }))
    }
}

/// A progress stream: the replayed records, then live events from `live` (subscribed before
/// the replay was read, so nothing is lost in between) until the job ends.
fn progress_stream(
    replay: Vec<pb::Progress>,
    done: Option<(JobReport, Arc<Vec<f32>>)>,
    rounds: u32,
    mut live: broadcast::Receiver<pb::Progress>,
) -> ProgressStream {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut last = 0;
        for p in replay {
            last = p.round;
            if tx.send(Ok(p)).await.is_err() {
                return;
            }
        }
        if let Some((report, _)) = done {
            let state = if report.status == "finished" {
                JobState::Finished
            } else {
                JobState::Failed
            };
            let _ = tx
                .send(Ok(pb::Progress {
                    state: state as i32,
                    round: report.rounds,
                    rounds,
                    record_json: String::new(),
                    message: report.message,
                }))
                .await;
            return;
        }
        loop {
            match live.recv().await {
                Ok(p) => {
                    let running = p.state == JobState::Running as i32;
                    if running && p.round <= last {
                        continue;
                    }
                    if tx.send(Ok(p)).await.is_err() || !running {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Writes `bytes` to `path` through a temporary file renamed into place.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}
