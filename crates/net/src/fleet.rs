//! The fleet port of a long-running coordinator (`confide coordinator serve --fleet`), and its
//! scheduler.
//!
//! Nodes connect outward to the fleet port. There they find two gRPC services:
//! - `Fleet`: `Offers` is a node's heartbeat, answered with the unfinished jobs that name it;
//!   `Decide` carries its signed approval or rejection of one of them.
//! - `Coordinator`, the per-job protocol of `crate::coordinator`, for every running job at
//!   once. Each request names its job in the `confide-job` metadata (the manifest hash, hex);
//!   [`Router`] hands it to that job's own guarded service, so each job keeps its own message
//!   limits, roles and refusal counters.
//!
//! [`Dispatcher`] starts queued jobs (at most `max_running` at once), reports their rounds to
//! the job store, stores a finished job's model and report (`confide job download`), and stops
//! a job that was cancelled while it ran.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use confide_core::Role;
use confide_governance::audit::AuditLog;
use confide_governance::manifest::{
    SignedManifest, online_approval_message, online_rejection_message,
};
use confide_service::jobs::parse_hash;
use confide_service::{Code, JobRecord, JobState, Jobs, Refusal, ServiceError, Stage, Transition};
use tonic::body::Body;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::control::ControlService;
use crate::coordinator::{Coordinator, CoordinatorOptions, CoordinatorService};
use crate::guard::{Guard, GuardStats, Guarded, MAX_RULE_CHARS};
use crate::pb;
use crate::pki::Credentials;
use crate::transport::peer;

/// The metadata key that names a fleet request's job: its manifest hash, lowercase hex.
pub const JOB_HEADER: &str = "confide-job";

/// How long a finished job's route stays open, so that its nodes hear the end (and the
/// witnesses cosign the last tree head) before the job's requests are refused.
pub const LINGER: Duration = Duration::from_secs(15);

/// The longest an `Offers` long poll waits (a node's heartbeat, so it stays well within
/// [`CONNECTED_WITHIN`]).
pub const MAX_OFFERS_WAIT: Duration = Duration::from_secs(10);

/// How long a closed job's route answers FLEET-003 before it is forgotten (the router's
/// memory stays bounded however many jobs a coordinator runs).
pub const FORGET_AFTER: Duration = Duration::from_secs(600);

/// How often a running job's progress is read and reported.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// How long a job may wait for approval or in the queue, unless the coordinator is told
/// otherwise: 7 days.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often the scheduler looks at the store when nothing woke it.
const SCHEDULE_TICK: Duration = Duration::from_millis(500);

/// Adds the `confide-job` metadata to every request of a client (nothing for a one-job
/// coordinator, which serves one job and needs no name).
#[derive(Clone, Debug, Default)]
pub struct JobHeader(Option<tonic::metadata::AsciiMetadataValue>);

impl JobHeader {
    /// The header for job `hash`, or none.
    pub fn new(hash: Option<&[u8; 32]>) -> Self {
        Self(hash.and_then(|h| hex::encode(h).parse().ok()))
    }
}

impl tonic::service::Interceptor for JobHeader {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(JOB_HEADER, v.clone());
        }
        Ok(req)
    }
}

/// A channel to a coordinator whose requests name their job.
pub type JobChannel = InterceptedService<Channel, JobHeader>;

/// A running job's guarded `Coordinator` service.
pub type JobServer = Guarded<pb::coordinator_server::CoordinatorServer<CoordinatorService>>;

/// The fleet port's job routes.
pub type JobRoutes = Routes<JobServer>;

enum Route<S> {
    Open(Box<S>),
    Closed(String),
    /// A job that ran when the daemon stopped, not served again yet (FLEET-004).
    Recovering,
}

impl<S: Clone> Clone for Route<S> {
    fn clone(&self) -> Self {
        match self {
            Route::Open(s) => Route::Open(s.clone()),
            Route::Closed(w) => Route::Closed(w.clone()),
            Route::Recovering => Route::Recovering,
        }
    }
}

/// The services of the jobs a daemon serves, by manifest hash: each request is handed to the
/// service of the job its `confide-job` metadata names.
pub struct Routes<S> {
    map: Arc<Mutex<HashMap<[u8; 32], Route<S>>>>,
    stats: Arc<GuardStats>,
}

impl<S> Clone for Routes<S> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<S> Default for Routes<S> {
    fn default() -> Self {
        Self {
            map: Arc::default(),
            stats: Arc::default(),
        }
    }
}

impl<S> std::fmt::Debug for Routes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Routes({} jobs)", lock(&self.map).len())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JobRoutes {
    /// Serves job `coordinator` on the fleet port, behind its own guard.
    pub fn open(&self, coordinator: &Arc<Coordinator>, max_message: usize) {
        let guard = coordinator.guard();
        let server =
            pb::coordinator_server::CoordinatorServer::new(CoordinatorService(coordinator.clone()))
                .max_decoding_message_size(guard.max_bytes())
                .max_encoding_message_size(max_message);
        self.insert(
            coordinator.manifest_hash(),
            tower_layer::Layer::layer(&guard, server),
        );
    }
}

impl<S: Clone> Routes<S> {
    /// Serves job `hash` with `service`.
    pub fn insert(&self, hash: [u8; 32], service: S) {
        lock(&self.map).insert(hash, Route::Open(Box::new(service)));
    }

    /// Whether job `hash` is served now.
    pub fn is_open(&self, hash: &[u8; 32]) -> bool {
        matches!(lock(&self.map).get(hash), Some(Route::Open(_)))
    }

    /// Job `hash` ran when the daemon stopped and will be served again: until then its
    /// requests are answered FLEET-004 (`UNAVAILABLE`: ask again), never "unknown".
    pub fn recovering(&self, hash: &[u8; 32]) {
        lock(&self.map).insert(*hash, Route::Recovering);
    }

    /// Stops serving job `hash`: its requests are answered FLEET-003 with `why`.
    pub fn close(&self, hash: &[u8; 32], why: String) {
        lock(&self.map).insert(*hash, Route::Closed(why));
    }

    /// Forgets job `hash` (a job that ended long ago is answered as unknown).
    pub fn forget(&self, hash: &[u8; 32]) {
        lock(&self.map).remove(hash);
    }

    /// The refusals of the router itself (FLEET-001…003), by rule.
    pub fn stats(&self) -> Arc<GuardStats> {
        self.stats.clone()
    }

    /// The router: the service for every job, in one.
    pub fn router(&self) -> Router<S> {
        Router(self.clone())
    }
}

/// One gRPC service for every job a daemon serves: routes each request to its job.
pub struct Router<S>(Routes<S>);

impl<S> Clone for Router<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S> std::fmt::Debug for Router<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Router({:?})", self.0)
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Router<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Router<S> {
    fn refuse(&self, rule: &str, status: Status) -> http::Response<Body> {
        self.0.stats.refuse(rule, "-", "fleet");
        let mut status = status;
        if let Ok(v) = rule.parse() {
            status.metadata_mut().insert("confide-rule", v);
        }
        status.into_http()
    }
}

impl<S> tower_service::Service<http::Request<Body>> for Router<S>
where
    S: tower_service::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let hash = req
            .headers()
            .get(JOB_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| hex::decode(v).ok())
            .and_then(|v| <[u8; 32]>::try_from(v).ok());
        let Some(hash) = hash else {
            let r = self.refuse(
                "FLEET-001",
                Status::invalid_argument(format!(
                    "FLEET-001 a request to a daemon that serves many jobs names its job: the \
                     `{JOB_HEADER}` metadata holds the manifest hash (64 hex digits)"
                )),
            );
            return Box::pin(async move { Ok(r) });
        };
        let route = lock(&self.0.map).get(&hash).cloned();
        match route {
            Some(Route::Open(svc)) => {
                let mut svc = *svc;
                Box::pin(async move { tower_service::Service::call(&mut svc, req).await })
            }
            Some(Route::Closed(why)) => {
                let r = self.refuse(
                    "FLEET-003",
                    Status::failed_precondition(format!(
                        "FLEET-003 job {} no longer runs here: {}",
                        hex::encode(&hash[..8]),
                        crate::guard::excerpt_n(&why, 256)
                    )),
                );
                Box::pin(async move { Ok(r) })
            }
            Some(Route::Recovering) => {
                let r = self.refuse(
                    "FLEET-004",
                    Status::unavailable(format!(
                        "FLEET-004 job {} is being recovered after a restart; ask again",
                        hex::encode(&hash[..8])
                    )),
                );
                Box::pin(async move { Ok(r) })
            }
            None => {
                let r = self.refuse(
                    "FLEET-002",
                    Status::not_found(format!(
                        "FLEET-002 job {} does not run here (not yet, or not at all)",
                        hex::encode(&hash[..8])
                    )),
                );
                Box::pin(async move { Ok(r) })
            }
        }
    }
}

/// The nodes a coordinator has heard from.
#[derive(Clone, Debug, Default)]
pub struct Nodes(Arc<Mutex<BTreeMap<String, NodeSeen>>>);

/// One node, as last heard.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct NodeSeen {
    /// Its name (certificate subject).
    pub name: String,
    /// Its party id.
    pub id: String,
    /// When it was last heard, Unix milliseconds.
    pub last_ms: u64,
}

/// A node heard within this long counts as connected.
pub const CONNECTED_WITHIN: Duration = Duration::from_secs(15);

impl Nodes {
    /// Records a heartbeat.
    pub fn heard(&self, name: &str, id: &str, now_ms: u64) {
        lock(&self.0).insert(
            name.to_string(),
            NodeSeen {
                name: name.to_string(),
                id: id.to_string(),
                last_ms: now_ms,
            },
        );
    }

    /// Every node heard since this daemon started, by name.
    pub fn list(&self) -> Vec<NodeSeen> {
        lock(&self.0).values().cloned().collect()
    }

    /// How many were heard within [`CONNECTED_WITHIN`] of `now_ms`.
    pub fn connected(&self, now_ms: u64) -> usize {
        let within = u64::try_from(CONNECTED_WITHIN.as_millis()).unwrap_or(u64::MAX);
        lock(&self.0)
            .values()
            .filter(|n| now_ms.saturating_sub(n.last_ms) <= within)
            .count()
    }
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// The `Fleet` service: heartbeats, offers and decisions.
#[derive(Clone, Debug)]
pub struct FleetService {
    control: ControlService,
    certificate: Vec<u8>,
    /// The audit log and the key that signs its heads, for `Audit`.
    audit: Option<(AuditLog, Arc<confide_governance::identity::Identity>)>,
}

impl FleetService {
    /// The fleet service of the coordinator whose control service is `control` and whose
    /// certificate (DER) is `certificate`.
    pub fn new(control: ControlService, certificate: Vec<u8>) -> Self {
        Self {
            control,
            certificate,
            audit: None,
        }
    }

    /// Serves `Audit` from `log`, whose heads `identity` (the coordinator's) signs.
    pub fn with_audit(
        mut self,
        log: AuditLog,
        identity: Arc<confide_governance::identity::Identity>,
    ) -> Self {
        self.audit = Some((log, identity));
        self
    }

    /// The request guard of the `Fleet` service.
    pub fn guard(&self) -> Guard {
        self.control.fleet_guard()
    }
}

#[tonic::async_trait]
impl pb::fleet_server::Fleet for FleetService {
    async fn offers(
        &self,
        req: Request<pb::OffersRequest>,
    ) -> Result<Response<pb::OffersReply>, Status> {
        let caller = peer(&req, &[Role::Node], self.control.revocations())?;
        let pb::OffersRequest { after, wait_ms } = req.into_inner();
        self.control.nodes().heard(
            &caller.name,
            &caller.id,
            confide_service::jobs::millis(now()),
        );
        // A long poll: answer once the jobs changed since the node's last answer, or when
        // the wait is over (a node hears of a job, or of its start, at once).
        let mut changed = self.control.subscribe();
        let wait = Duration::from_millis(u64::from(wait_ms)).min(MAX_OFFERS_WAIT);
        if wait > Duration::ZERO {
            let _ = tokio::time::timeout(wait, changed.wait_for(|v| *v != after)).await;
            self.control.nodes().heard(
                &caller.name,
                &caller.id,
                confide_service::jobs::millis(now()),
            );
        }
        let version = *changed.borrow();
        let jobs = self.control.jobs().clone();
        let name = caller.name.clone();
        let offers = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for r in jobs.list()? {
                if r.state.is_terminal() || !r.participants.contains(&name) {
                    continue;
                }
                let Some(hash) = parse_hash(&r.hash) else {
                    continue;
                };
                let manifest = jobs.manifest(&hash)?.unwrap_or_default();
                out.push(pb::Offer {
                    manifest_json: String::from_utf8_lossy(&manifest).into_owned(),
                    record_json: serde_json::to_string(&r)
                        .map_err(|e| ServiceError::Corrupt(e.to_string()))?,
                });
            }
            Ok::<_, ServiceError>(out)
        })
        .await
        .map_err(|e| Status::internal(format!("job store task: {e}")))?
        .map_err(|e| self.control.fail(e))?;
        Ok(Response::new(pb::OffersReply {
            offers,
            coordinator_certificate: self.certificate.clone(),
            version,
        }))
    }

    async fn decide(
        &self,
        req: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::DecideReply>, Status> {
        let caller = peer(&req, &[Role::Node], self.control.revocations())?;
        let d = req.into_inner();
        let unknown = || {
            self.control.fail(ServiceError::Refused(Refusal::new(
                Code::UnknownJob,
                format!(
                    "no job `{}` names you",
                    crate::guard::excerpt(&d.manifest_hash)
                ),
            )))
        };
        let hash = parse_hash(&d.manifest_hash).ok_or_else(unknown)?;
        let record = self
            .control
            .jobs()
            .get(&hash)
            .map_err(|e| self.control.fail(e))?
            .filter(|r| r.participants.contains(&caller.name))
            .ok_or_else(unknown)?;
        if d.rule.chars().count() > MAX_RULE_CHARS {
            return Err(self.control.fail(ServiceError::Refused(Refusal::new(
                Code::Statement,
                format!("a decision's rule has at most {MAX_RULE_CHARS} characters"),
            ))));
        }
        let operator = self.control.operator();
        let message = if d.approve {
            online_approval_message(operator, &hash)
        } else {
            online_rejection_message(operator, &hash, &d.rule)
        };
        let verified = <[u8; 32]>::try_from(caller.public_key.as_slice())
            .ok()
            .zip(
                hex::decode(&d.signature)
                    .ok()
                    .and_then(|s| <[u8; 64]>::try_from(s).ok()),
            )
            .is_some_and(|(key, sig)| confide_crypto::sign::verify(&key, &message, &sig).is_ok());
        if !verified {
            return Err(self.control.fail(ServiceError::Refused(Refusal::new(
                Code::Statement,
                format!(
                    "the decision on job `{}` is not signed by `{}`'s key",
                    record.job_id, caller.name
                ),
            ))));
        }
        let t = if d.approve {
            Transition::Approve {
                owner: caller.name.clone(),
            }
        } else {
            Transition::Reject {
                owner: caller.name.clone(),
                rule: d.rule.clone(),
            }
        };
        // The node's own signature decides; the owner's statement is evidence for the log.
        // One that does not verify is logged as refused, never lost with the decision.
        let owner = owner_statement(&d.owner_statement, d.approve, &hash);
        let mut detail = serde_json::json!({
            "participant": caller.name,
            "approve": d.approve,
            "basis": d.rule,
            "signature": d.signature,
            "public_key": hex::encode(&caller.public_key),
        });
        match owner {
            Ok(Some(owner)) => detail["owner_statement"] = owner,
            Ok(None) => {}
            Err(why) => detail["owner_statement_refused"] = serde_json::json!(why),
        }
        let actor = caller.id.clone();
        let record = self
            .control
            .mutate(move |jobs| jobs.decide(&hash, &t, &actor, now(), detail))
            .await?;
        tracing::info!(
            "job `{}`: `{}` {}; {}",
            record.job_id,
            caller.name,
            if d.approve { "approved" } else { "rejected" },
            record.state.describe()
        );
        Ok(Response::new(pb::DecideReply {
            record_json: serde_json::to_string(&record)
                .map_err(|e| Status::internal(e.to_string()))?,
        }))
    }

    async fn audit(
        &self,
        req: Request<pb::ExportAuditRequest>,
    ) -> Result<Response<pb::ExportAuditReply>, Status> {
        peer(&req, &[Role::Node], self.control.revocations())?;
        let Some((log, identity)) = self.audit.clone() else {
            return Err(Status::unimplemented(
                "this coordinator does not export its audit log on the fleet port",
            ));
        };
        let log_file = tokio::task::spawn_blocking(move || {
            // Entries appended after the last head are covered by a fresh head, so that the
            // export verifies to its end.
            let behind = match (log.latest_head(), log.size()) {
                (Ok(Some(h)), Ok(n)) => h.size < n,
                (Ok(None), Ok(_)) => true,
                _ => false,
            };
            if behind {
                log.sign_head(&identity).map_err(|e| e.to_string())?;
            }
            log.export(&identity.public_key())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| Status::internal(format!("audit task: {e}")))?
        .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::ExportAuditReply { log_file }))
    }
}

/// The owner's own signed decision that a node's decision carries (empty: none), checked:
/// an approval carries the owner's co-signature of the manifest, a rejection the owner's
/// signed rejection of this job. Returns it as the audit entry keeps it.
fn owner_statement(
    text: &str,
    approve: bool,
    hash: &[u8; 32],
) -> Result<Option<serde_json::Value>, String> {
    use confide_governance::manifest::{ManifestSignature, SignatureRole};
    use confide_governance::statement::{Action, SignedStatement};
    if text.is_empty() {
        return Ok(None);
    }
    if approve {
        let sig: ManifestSignature =
            serde_json::from_str(text).map_err(|e| format!("not a co-signature: {e}"))?;
        if sig.role != SignatureRole::Approval || sig.verify(hash).is_err() {
            return Err("the co-signature does not approve this manifest".into());
        }
        serde_json::to_value(&sig)
            .map(Some)
            .map_err(|e| e.to_string())
    } else {
        let signed = SignedStatement::from_json(text.as_bytes())
            .map_err(|e| format!("not a signed statement: {e}"))?;
        let verified = signed.verify().map_err(|e| e.to_string())?;
        // An owner rejects a pending job, or revokes it before it ran (the dashboard).
        if !matches!(verified.statement.action, Action::Reject | Action::Revoke)
            || verified.job != *hash
        {
            return Err("the statement is not a rejection of this job".into());
        }
        serde_json::to_value(&signed)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// Starts queued jobs and follows them to their end.
pub struct Dispatcher {
    control: ControlService,
    routes: JobRoutes,
    creds: Credentials,
    audit: AuditLog,
    max_running: usize,
    keyholder: Option<String>,
    aggregators: Vec<String>,
    /// Jobs that were running when the coordinator stopped, to go on with first.
    resume: Vec<[u8; 32]>,
    /// How long a job may wait for approval or in the queue before it expires.
    expire_after: Duration,
    /// The operator's held-out test sets, by job id (`<dir>/<job id>.csv`).
    evaluation: Option<std::path::PathBuf>,
    /// The jobs' checkpoints, in the job store's store (RES-006).
    checkpoints: crate::checkpoint::Checkpoints,
}

/// What a job's rounds need beyond the coordinator.
enum External {
    /// Nothing (`plain`, `masking`).
    None,
    /// The key holder's public key for the job, and a channel to it (`paillier`, `lattice`).
    KeyHolder(confide_secagg::HolderPublicKey, Channel),
    /// The job's aggregators (`shares`, `threshold`).
    Aggregators(crate::aggregator::AggregatorLinks),
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dispatcher(at most {} at once)", self.max_running)
    }
}

/// Reads the job store off the async threads.
async fn read<R: Send + 'static>(
    control: &ControlService,
    f: impl FnOnce(&Jobs) -> Result<R, ServiceError> + Send + 'static,
) -> Result<R, ServiceError> {
    let jobs = control.jobs().clone();
    tokio::task::spawn_blocking(move || f(&jobs))
        .await
        .map_err(|e| ServiceError::Corrupt(format!("job store task: {e}")))?
}

/// Changes the job store off the async threads (a commit waits for the disk), then wakes the
/// control service's followers (and the scheduler). Only a change may wake them: the
/// scheduler reads the store when woken, so a read that woke it would keep it spinning.
async fn store<R: Send + 'static>(
    control: &ControlService,
    f: impl FnOnce(&Jobs) -> Result<R, ServiceError> + Send + 'static,
) -> Result<R, ServiceError> {
    let out = read(control, f).await;
    control.notify();
    out
}

impl Dispatcher {
    /// A scheduler for the jobs in `control`'s store, serving them through `routes`, with the
    /// coordinator's credentials; the jobs' audit entries go to `audit` (the store's log).
    pub fn new(
        control: ControlService,
        routes: JobRoutes,
        creds: Credentials,
        audit: AuditLog,
        max_running: usize,
    ) -> Self {
        Self {
            checkpoints: crate::checkpoint::Checkpoints::new(control.jobs().store()),
            control,
            routes,
            creds,
            audit,
            max_running: max_running.max(1),
            keyholder: None,
            aggregators: Vec::new(),
            resume: Vec::new(),
            expire_after: DEFAULT_EXPIRY,
            evaluation: None,
        }
    }

    /// Evaluates each job after every round on the operator's held-out test set for it,
    /// `<dir>/<model owner's party id>/<job id>.<csv|txt|safetensors>` (by the job's data
    /// format), when that file exists: keyed by the model owner too, so that no other model
    /// owner can submit a job under that id to be scored on the operator's data.
    pub fn with_evaluation(mut self, dir: Option<std::path::PathBuf>) -> Self {
        self.evaluation = dir;
        self
    }

    /// The held-out test set of `spec`'s job (submitted by `owner`), if the operator gave
    /// one; read off the async threads. A file that cannot be read is logged and the job runs
    /// without evaluation.
    async fn evaluation_of(
        &self,
        spec: &confide_core::JobSpec,
        owner: &str,
    ) -> Option<confide_ml::Dataset> {
        let dir = self.evaluation.as_ref()?;
        let id = &spec.job.id;
        // Job ids and party ids are names; never a path.
        let plain = |s: &str| !s.is_empty() && !s.contains(['/', '\\']) && !s.starts_with('.');
        if !plain(id) || !plain(owner) {
            return None;
        }
        let ext = match spec.data.format {
            confide_core::DataFormat::Csv => "csv",
            confide_core::DataFormat::Text => "txt",
            confide_core::DataFormat::Safetensors => "safetensors",
        };
        let path = dir.join(owner).join(format!("{id}.{ext}"));
        if !path.exists() {
            return None;
        }
        let job = spec.clone();
        let at = path.clone();
        let loaded = tokio::task::spawn_blocking(move || crate::node::load_job_data(&job, &at))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        match loaded {
            Ok(d) => {
                tracing::info!(
                    "job `{id}`: evaluated on {} ({} rows)",
                    path.display(),
                    d.len()
                );
                Some(d)
            }
            Err(e) => {
                tracing::error!(
                    "job `{id}`: its test set {}: {e}; no evaluation",
                    path.display()
                );
                None
            }
        }
    }

    /// A job still awaiting approval, or queued, `after` its submission is expired.
    pub fn with_expiry(mut self, after: Duration) -> Self {
        self.expire_after = after;
        self
    }

    /// Goes on with `jobs` (running when the coordinator stopped, each with a checkpoint)
    /// before starting anything else; their routes answer FLEET-004 until then.
    pub fn with_resume(mut self, jobs: Vec<[u8; 32]>) -> Self {
        self.resume = jobs;
        self
    }

    /// Jobs under `shares` and `threshold` use the long-running aggregators at `endpoints`
    /// (`confide aggregator serve`), in index order.
    pub fn with_aggregators(mut self, endpoints: Vec<String>) -> Self {
        self.aggregators = endpoints;
        self
    }

    /// Jobs under `paillier` and `lattice` use the long-running key holder at `endpoint`
    /// (`confide keyholder serve`): it makes a fresh key per job.
    pub fn with_keyholder(mut self, endpoint: Option<String>) -> Self {
        self.keyholder = endpoint;
        self
    }

    /// Schedules until `stop` turns true; then stops starting jobs and returns (the jobs
    /// still running are dropped with the daemon).
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut changed = this.control.subscribe();
        let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
        let mut started: std::collections::HashSet<[u8; 32]> = Default::default();
        for hash in this.resume.clone() {
            started.insert(hash);
            let job = this.clone();
            running.spawn(async move { job.resume_job(hash).await });
        }
        loop {
            if *stop.borrow() {
                return;
            }
            while running.try_join_next().is_some() {}
            match read(&this.control, |jobs| jobs.list()).await {
                Ok(all) => {
                    let all = this.expire(all).await;
                    if running.len() < this.max_running {
                        for r in all {
                            if running.len() >= this.max_running {
                                break;
                            }
                            let Some(hash) = parse_hash(&r.hash) else {
                                continue;
                            };
                            if r.state != JobState::Queued || !started.insert(hash) {
                                continue;
                            }
                            let job = this.clone();
                            running.spawn(async move { job.run_job(hash, r).await });
                        }
                    }
                }
                Err(e) => tracing::error!("scheduler: the job store failed: {e}"),
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(SCHEDULE_TICK) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
    }

    /// Expires the jobs of `all` that waited for approval, or in the queue, longer than
    /// allowed (each one transaction; a job dispatched meanwhile stays running: one winner),
    /// and returns the others.
    async fn expire(&self, all: Vec<JobRecord>) -> Vec<JobRecord> {
        let limit = u64::try_from(self.expire_after.as_millis()).unwrap_or(u64::MAX);
        let now_ms = u64::try_from(now().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let (due, rest): (Vec<JobRecord>, Vec<JobRecord>) = all.into_iter().partition(|r| {
            matches!(r.state, JobState::AwaitingApproval | JobState::Queued)
                && now_ms.saturating_sub(r.submitted_ms) >= limit
        });
        for r in due {
            let Some(hash) = parse_hash(&r.hash) else {
                continue;
            };
            match self.transition(hash, Transition::Expire).await {
                Ok(_) => tracing::info!(
                    "job `{}` expired: not started within {:.0} s of its submission",
                    r.job_id,
                    self.expire_after.as_secs_f64()
                ),
                Err(e) => tracing::info!("job `{}` was not expired: {e}", r.job_id),
            }
        }
        rest
    }

    async fn transition(&self, hash: [u8; 32], t: Transition) -> Result<JobRecord, ServiceError> {
        store(&self.control, move |jobs| {
            jobs.transition(&hash, &t, "coordinator", now())
        })
        .await
    }

    async fn fail(&self, hash: [u8; 32], job: &str, reason: String) {
        tracing::warn!("job `{job}` failed: {reason}");
        if let Err(e) = self.transition(hash, Transition::Fail { reason }).await {
            tracing::warn!("job `{job}`: {e}");
        }
    }

    /// Runs one job from `queued` to its end.
    async fn run_job(self: Arc<Self>, hash: [u8; 32], record: JobRecord) {
        self.start(hash, record, None).await;
    }

    /// Goes on with a job that was running when the coordinator stopped, from its
    /// checkpoint (RES-006): the same key material at the key holder and the aggregators
    /// (each kept it), the model and owners of its last committed round.
    async fn resume_job(self: Arc<Self>, hash: [u8; 32]) {
        let checkpoints = self.checkpoints.clone();
        let loaded = read(&self.control, move |jobs| {
            let record = jobs.get(&hash)?;
            let cp = checkpoints.load(&hash).map_err(ServiceError::Corrupt)?;
            Ok((record, cp))
        })
        .await;
        let (record, cp) = match loaded {
            Ok((Some(r), Some(cp))) => (r, cp),
            Ok(_) => {
                self.routes.close(&hash, "its checkpoint is gone".into());
                return self
                    .fail(hash, "?", "its record or checkpoint is gone".into())
                    .await;
            }
            Err(e) => {
                self.routes.close(&hash, e.to_string());
                return self.fail(hash, "?", e.to_string()).await;
            }
        };
        tracing::info!(
            "job `{}` ({}) goes on after round {}",
            record.job_id,
            hex::encode(&hash[..8]),
            cp.round
        );
        self.start(hash, record, Some(cp)).await;
    }

    /// Prepares job `hash` (from `resume`, its checkpoint, when it ran before), serves and
    /// follows it to its end, then closes its keys and erases its checkpoint.
    async fn start(
        &self,
        hash: [u8; 32],
        record: JobRecord,
        resume: Option<crate::checkpoint::Checkpoint>,
    ) {
        let job = record.job_id.clone();
        let resuming = resume.is_some();
        let (coordinator, external) = match self.prepare(&hash, resume).await {
            Ok(c) => c,
            Err(reason) => {
                // A resumed job's route answered FLEET-004 until now.
                if resuming {
                    self.routes.close(&hash, reason.clone());
                }
                self.close_keys(&hash).await;
                return self.fail(hash, &job, reason).await;
            }
        };
        self.follow(hash, record, coordinator, external).await;
        // The job ended, one way or another: its key material is erased at the key holder
        // and the aggregators, and its checkpoint here.
        self.close_keys(&hash).await;
        let checkpoints = self.checkpoints.clone();
        let erased = read(&self.control, move |_| {
            checkpoints.erase(&hash).map_err(ServiceError::Corrupt)
        })
        .await;
        if let Err(e) = erased {
            tracing::warn!("job {}: its checkpoint: {e}", hex::encode(&hash[..8]));
        }
    }

    /// Tells the key holder and the aggregators that job `hash` ended (they drop its key
    /// material); best effort: each keeps it until it is told.
    async fn close_keys(&self, hash: &[u8; 32]) {
        let request = || pb::CloseJobRequest {
            manifest_hash: hex::encode(hash),
        };
        if let Some(endpoint) = &self.keyholder {
            let closed = async {
                let ch = crate::transport::connect(endpoint, "keyholder", &self.creds)
                    .await
                    .map_err(|e| e.to_string())?;
                pb::key_holder_jobs_client::KeyHolderJobsClient::new(ch)
                    .close_job(request())
                    .await
                    .map_err(|s| crate::roles::describe_failure(&s))
            };
            if let Err(e) = closed.await {
                tracing::warn!("job {}: the key holder {e}", hex::encode(&hash[..8]));
            }
        }
        for (i, endpoint) in self.aggregators.iter().enumerate() {
            let name = confide_secagg::aggregators::aggregator_name(i);
            let closed = async {
                let ch = crate::transport::connect(endpoint, &name, &self.creds)
                    .await
                    .map_err(|e| e.to_string())?;
                pb::aggregator_jobs_client::AggregatorJobsClient::new(ch)
                    .close_job(request())
                    .await
                    .map_err(|s| crate::roles::describe_failure(&s))
            };
            if let Err(e) = closed.await {
                tracing::warn!("job {}: {name} {e}", hex::encode(&hash[..8]));
            }
        }
    }

    /// Serves a prepared job and follows it to its end.
    async fn follow(
        &self,
        hash: [u8; 32],
        record: JobRecord,
        coordinator: Arc<Coordinator>,
        external: External,
    ) {
        let job = record.job_id.clone();
        // Serve it before it turns running: a node that sees `running` finds it here.
        let max_message = coordinator.spec().limits.max_message_bytes;
        self.routes.open(&coordinator, max_message);
        // A resumed job is running already; its rounds so far are in the store.
        let mut reported = match record.state {
            JobState::Running { round, .. } => round.max(1),
            _ => {
                if let Err(e) = self.transition(hash, Transition::Dispatch).await {
                    // Cancelled (or expired) since it was queued: one winner, and it is not us.
                    tracing::info!("job `{job}` was not started: {e}");
                    self.routes.close(&hash, e.to_string());
                    return;
                }
                tracing::info!("job `{job}` ({}) started", hex::encode(&hash[..8]));
                1
            }
        };
        let rounds = record.rounds;
        let (holder_key, channel, links) = match external {
            External::KeyHolder(k, ch) => (Some(k), Some(ch), None),
            External::Aggregators(links) => (None, None, Some(links)),
            External::None => (None, None, None),
        };
        let relay = crate::roles::relay_limit(coordinator.spec());
        let unseal = |round: u32, relayed: Vec<(confide_secagg::Contribution, Vec<u8>)>| {
            let channel = channel.clone();
            let links = links.clone();
            async move {
                if let Some(links) = links {
                    return Ok(links.run_round(round, relayed).await);
                }
                let Some(channel) = channel else {
                    return Err("this scheme needs no key holder or aggregators".to_string());
                };
                let channel = InterceptedService::new(channel, JobHeader::new(Some(&hash)));
                crate::roles::unseal_at_keyholder(channel, relay, round, relayed).await
            }
        };
        let run = coordinator.clone().run(holder_key, unseal);
        tokio::pin!(run);
        let report = loop {
            tokio::select! {
                report = &mut run => break report,
                () = tokio::time::sleep(PROGRESS_TICK) => {
                    if let Some(r) = coordinator.running_round()
                        && reported < r.min(rounds)
                    {
                        // Every round since the last tick, in one store commit.
                        let steps: Vec<Transition> = (reported + 1..=r.min(rounds))
                            .map(|round| Transition::Progress { round, stage: Stage::Training })
                            .collect();
                        reported = r.min(rounds);
                        let moved = store(&self.control, move |jobs| {
                            jobs.progress(&hash, &steps, "coordinator", now())
                        })
                        .await;
                        if let Err(e) = moved {
                            // Cancelled while it ran: stop it here.
                            return self.stop(&hash, &job, e).await;
                        }
                    }
                    match self.control.jobs().get(&hash) {
                        Ok(Some(r)) if r.state.is_terminal() => {
                            return self.stop(&hash, &job, ServiceError::Refused(Refusal::new(
                                Code::Terminal,
                                format!("job `{job}` is {}", r.state.describe()),
                            ))).await;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!("job `{job}`: the job store failed: {e}"),
                    }
                }
            }
        };
        self.control
            .observe_report(&report, coordinator.spec().job.scheme.uses_key_holder());
        if report.status != "finished" {
            self.fail(hash, &job, report.message.clone()).await;
            self.linger(hash, format!("job `{job}` failed"));
            return;
        }
        let outcome = async {
            let steps: Vec<Transition> = (reported..=rounds)
                .map(|r| {
                    let stage = if r == rounds {
                        Stage::Committing
                    } else {
                        Stage::Training
                    };
                    (r, stage)
                })
                .filter(|step| *step != (reported, Stage::Training))
                .map(|(round, stage)| Transition::Progress { round, stage })
                .collect();
            store(&self.control, move |jobs| {
                jobs.progress(&hash, &steps, "coordinator", now())
            })
            .await?;
            let params = coordinator
                .result()
                .map(|(_, p)| p.to_vec())
                .unwrap_or_default();
            let model: Vec<u8> = params.iter().flat_map(|x| x.to_le_bytes()).collect();
            let report_json =
                serde_json::to_string(&report).map_err(|e| ServiceError::Corrupt(e.to_string()))?;
            store(&self.control, move |jobs| {
                jobs.complete(&hash, &report_json, &model, now())
            })
            .await
        }
        .await;
        match outcome {
            Ok(r) => tracing::info!("job `{job}`: {}", r.state.describe()),
            Err(e) => {
                self.fail(hash, &job, format!("storing its result: {e}"))
                    .await
            }
        }
        self.linger(hash, format!("job `{job}` ended"));
    }

    /// Closes a job that ended in the store while it ran (it was cancelled).
    async fn stop(&self, hash: &[u8; 32], job: &str, why: ServiceError) {
        tracing::info!("job `{job}` stopped: {why}");
        self.routes.close(hash, why.to_string());
    }

    /// Keeps a finished job's route open for [`LINGER`], then closes it (its coordinator is
    /// dropped then), and forgets it after [`FORGET_AFTER`] (FLEET-003 becomes FLEET-002).
    fn linger(&self, hash: [u8; 32], why: String) {
        let routes = self.routes.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LINGER).await;
            routes.close(&hash, why);
            tokio::time::sleep(FORGET_AFTER).await;
            routes.forget(&hash);
        });
    }

    /// The job's coordinator, from its stored manifest; under `paillier` and `lattice`, with
    /// the key holder's fresh public key for the job and a channel to it; under `shares` and
    /// `threshold`, with links to the job's aggregators.
    async fn prepare(
        &self,
        hash: &[u8; 32],
        resume: Option<crate::checkpoint::Checkpoint>,
    ) -> Result<(Arc<Coordinator>, External), String> {
        let bytes = self
            .control
            .jobs()
            .manifest(hash)
            .map_err(|e| e.to_string())?
            .ok_or("its manifest is missing from the store")?;
        let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
        let manifest = SignedManifest::from_json(&text).map_err(|e| e.to_string())?;
        let spec = manifest.manifest.job_spec().map_err(|e| e.to_string())?;
        let scheme = spec.job.scheme;
        let wait = Duration::from_secs_f64(spec.job.round_timeout_secs);
        let external = if scheme.uses_key_holder() {
            let endpoint = self.keyholder.as_deref().ok_or_else(|| {
                format!(
                    "scheme `{}` needs a key holder: start the coordinator with --keyholder \
                     (the address of `confide keyholder serve`)",
                    scheme.as_str()
                )
            })?;
            let (json, channel) = self.open_at(endpoint, "keyholder", &text, wait).await?;
            let key = confide_secagg::HolderPublicKey::parse(
                scheme,
                &json,
                &crate::coordinator::job_scheme_params(&spec).map_err(|e| e.to_string())?,
                spec.modulus_bits,
            )
            .map_err(|e| format!("the key holder's key: {e}"))?;
            External::KeyHolder(key, channel)
        } else if scheme.uses_aggregators() {
            let (n, _) = spec.aggregators_n_t();
            if self.aggregators.len() != n {
                return Err(format!(
                    "scheme `{}` needs the job's {n} aggregators: start the coordinator with \
                     --aggregator once per aggregator (`confide aggregator serve`); {} given",
                    scheme.as_str(),
                    self.aggregators.len()
                ));
            }
            for (i, endpoint) in self.aggregators.iter().enumerate() {
                let name = confide_secagg::aggregators::aggregator_name(i);
                self.open_at(endpoint, &name, &text, wait).await?;
            }
            let links = crate::aggregator::AggregatorLinks::connect(
                &spec,
                &self.aggregators,
                &self.creds,
                (crate::roles::relay_limit(&spec), wait),
                JobHeader::new(Some(hash)),
            )
            .await
            .map_err(|e| e.to_string())?;
            External::Aggregators(links)
        } else {
            External::None
        };
        let eval = self
            .evaluation_of(&spec, &manifest.manifest.model_owner.id)
            .await;
        let coordinator = Coordinator::new(CoordinatorOptions {
            spec,
            eval,
            keyholder_endpoint: matches!(external, External::KeyHolder(..))
                .then(|| self.keyholder.clone())
                .flatten(),
            aggregator_endpoints: if matches!(external, External::Aggregators(_)) {
                self.aggregators.clone()
            } else {
                Vec::new()
            },
            manifest,
            identity: self.creds.identity(),
            certificate: self.creds.cert_der().map_err(|e| e.to_string())?,
            audit: self.audit.clone(),
            audit_export: None,
            revocations: self.creds.revocations.clone(),
            checkpoints: Some(self.checkpoints.clone()),
            resume,
        })
        .map_err(|e| e.to_string())?;
        Ok((coordinator, external))
    }

    /// Opens the job at the key holder or aggregator `name` at `endpoint` (which makes its
    /// fresh key material), asking again while it cannot be reached, for at most `wait`.
    /// Returns its answer and the channel.
    async fn open_at(
        &self,
        endpoint: &str,
        name: &str,
        manifest_json: &str,
        wait: Duration,
    ) -> Result<(String, Channel), String> {
        let deadline = tokio::time::Instant::now() + wait;
        let request = || pb::OpenJobRequest {
            manifest_json: manifest_json.to_string(),
        };
        loop {
            let attempt = async {
                let ch = crate::transport::connect(endpoint, name, &self.creds)
                    .await
                    .map_err(|e| (true, e.to_string()))?;
                let reply = if name == "keyholder" {
                    pb::key_holder_jobs_client::KeyHolderJobsClient::new(ch.clone())
                        .open_job(request())
                        .await
                } else {
                    pb::aggregator_jobs_client::AggregatorJobsClient::new(ch.clone())
                        .open_job(request())
                        .await
                };
                let reply = reply.map_err(|s| {
                    (
                        crate::roles::is_transport_failure(&s),
                        crate::roles::describe_failure(&s),
                    )
                })?;
                Ok::<_, (bool, String)>((reply.into_inner().public_key_json, ch))
            };
            match attempt.await {
                Ok(x) => return Ok(x),
                Err((true, e)) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!("`{name}` {e}; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err((_, e)) => return Err(format!("`{name}` {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner's own decision that a node forwards is logged only when it verifies and
    /// concerns this job: a rejection (or a revocation before the job ran) for a rejection.
    #[test]
    fn an_owners_statement_is_checked_before_it_is_logged() {
        use confide_governance::statement::{Action, SignedStatement, Statement};
        let id = confide_governance::identity::Identity::generate().expect("key");
        let job = [3u8; 32];
        let signed = |action, on: &[u8; 32]| {
            let s = Statement::new(action, on, "no", id.public(), now());
            SignedStatement::sign(s, &id).expect("sign").to_json()
        };
        assert_eq!(owner_statement("", false, &job), Ok(None));
        for action in [Action::Reject, Action::Revoke] {
            let logged = owner_statement(&signed(action, &job), false, &job).expect("valid");
            assert!(logged.is_some());
        }
        assert!(owner_statement(&signed(Action::Cancel, &job), false, &job).is_err());
        assert!(owner_statement(&signed(Action::Reject, &[4; 32]), false, &job).is_err());
        let tampered = signed(Action::Reject, &job).replace("\"no\"", "\"yes\"");
        assert!(owner_statement(&tampered, false, &job).is_err());
        // A rejection is not a co-signature.
        assert!(owner_statement(&signed(Action::Reject, &job), true, &job).is_err());
    }

    /// A job's service that answers every request with an empty 200.
    #[derive(Clone)]
    struct Served;

    impl tower_service::Service<http::Request<Body>> for Served {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            Box::pin(async { Ok(http::Response::new(Body::empty())) })
        }
    }

    /// The gRPC status code and `confide-rule` of a router's answer (`None`: served).
    async fn ask(router: &mut Router<Served>, job: Option<&[u8; 32]>) -> Option<(i32, String)> {
        let mut req = http::Request::new(Body::empty());
        if let Some(h) = job {
            req.headers_mut()
                .insert(JOB_HEADER, hex::encode(h).parse().expect("header"));
        }
        let r = tower_service::Service::call(router, req)
            .await
            .expect("infallible");
        let code = r
            .headers()
            .get("grpc-status")?
            .to_str()
            .ok()?
            .parse()
            .ok()?;
        let rule = r.headers().get("confide-rule")?.to_str().ok()?.to_string();
        Some((code, rule))
    }

    #[tokio::test]
    async fn the_router_serves_open_jobs_and_names_each_refusal() {
        let routes: Routes<Served> = Routes::default();
        let mut router = routes.router();
        let (open, closed, recovering, unknown) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32]);
        routes.insert(open, Served);
        routes.insert(closed, Served);
        routes.close(&closed, "cancelled".into());
        routes.recovering(&recovering);
        assert_eq!(ask(&mut router, Some(&open)).await, None);
        let code = |c: tonic::Code| c as i32;
        assert_eq!(
            ask(&mut router, None).await,
            Some((code(tonic::Code::InvalidArgument), "FLEET-001".into()))
        );
        assert_eq!(
            ask(&mut router, Some(&unknown)).await,
            Some((code(tonic::Code::NotFound), "FLEET-002".into()))
        );
        assert_eq!(
            ask(&mut router, Some(&closed)).await,
            Some((code(tonic::Code::FailedPrecondition), "FLEET-003".into()))
        );
        // A job being recovered is never "unknown": its nodes are told to ask again.
        assert_eq!(
            ask(&mut router, Some(&recovering)).await,
            Some((code(tonic::Code::Unavailable), "FLEET-004".into()))
        );
        routes.insert(recovering, Served);
        assert_eq!(ask(&mut router, Some(&recovering)).await, None);
        assert_eq!(routes.stats().by_rule().values().sum::<u64>(), 4);
    }
}
