//! The control API of a long-running coordinator: gRPC `Control` on its own port, over mutual
//! TLS. It only translates: every decision is in `confide_service` (the job state machine
//! and the durable job store), and every refusal is that crate's numbered [`Refusal`].

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use confide_core::Role;
use confide_service::{Code, JobRecord, Jobs, Refusal, ServiceError};
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::guard::{Guard, GuardStats};
use crate::pb;
use crate::pki::{PeerIdentity, Revocations};
use crate::transport::peer;

/// How often a followed event stream looks at the store when nothing woke it.
const FOLLOW_POLL: Duration = Duration::from_millis(500);
/// The most event streams served at once; more are refused with `RESOURCE_EXHAUSTED`.
pub const MAX_FOLLOWERS: usize = 256;

/// The gRPC status for a refusal: the rule id leads the message and is in the `confide-rule`
/// metadata, so clients can branch on it without parsing words.
pub fn refusal_status(r: &Refusal) -> Status {
    let msg = crate::guard::excerpt_n(&r.to_string(), 1024);
    let mut status = match r.code {
        Code::Malformed | Code::Signature | Code::Statement | Code::Ambiguous => {
            Status::invalid_argument(msg)
        }
        Code::IdReused => Status::already_exists(msg),
        Code::NotModelOwner | Code::NotAllowed | Code::NotParticipant => {
            Status::permission_denied(msg)
        }
        Code::UnknownJob => Status::not_found(msg),
        Code::Terminal | Code::WrongState => Status::failed_precondition(msg),
        Code::Quota => Status::resource_exhausted(msg),
    };
    if let Ok(v) = r.code.id().parse() {
        status.metadata_mut().insert("confide-rule", v);
    }
    status
}

/// The rule id of a refusal received from a control server, if the status carries one.
pub fn rule_of(status: &Status) -> Option<String> {
    status
        .metadata()
        .get("confide-rule")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// The coordinator's metrics. Only aggregate figures: jobs by state, refusals by rule id (a
/// closed set), audit log size and store commit time; nothing per owner.
#[derive(Debug)]
struct Metrics {
    registry: Registry,
    jobs: Family<StateLabel, Gauge>,
    refusals: Family<RuleLabel, Counter>,
    audit_entries: Gauge,
    commit_seconds: Histogram,
    nodes_connected: Gauge,
    rounds: Counter,
    round_seconds: Histogram,
    aggregation_seconds: Histogram,
    contributions: Family<OutcomeLabel, Counter>,
    rejections: Family<RuleLabel, Counter>,
    unseals: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<StateLabel, Gauge>::default();
        registry.register("confide_jobs", "Jobs in the store, by state", jobs.clone());
        let refusals = Family::<RuleLabel, Counter>::default();
        registry.register(
            "confide_refusals",
            "Requests refused on the control and fleet ports, by rule id (JOB-nnn, NET-nnn, FLEET-nnn)",
            refusals.clone(),
        );
        let audit_entries = Gauge::default();
        registry.register(
            "confide_audit_entries",
            "Entries in the coordinator's audit log (the Merkle tree size)",
            audit_entries.clone(),
        );
        // 100 µs … about 3.3 s.
        let commit_seconds = Histogram::new(exponential_buckets(1e-4, 2.0, 16));
        registry.register(
            "confide_store_commit_seconds",
            "Time of each job store transaction made for a control call",
            commit_seconds.clone(),
        );
        let nodes_connected = Gauge::default();
        registry.register(
            "confide_nodes_connected",
            "Nodes heard on the fleet port within the last 15 s",
            nodes_connected.clone(),
        );
        let rounds = Counter::default();
        registry.register(
            "confide_rounds",
            "Rounds committed by jobs that ended",
            rounds.clone(),
        );
        // 10 ms … about 5.5 min.
        let round_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register(
            "confide_round_seconds",
            "Wall time of each round, from opening to the new global model",
            round_seconds.clone(),
        );
        let aggregation_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "confide_aggregation_seconds",
            "Of each round: closing its stages and aggregating (the key holder's unseal included)",
            aggregation_seconds.clone(),
        );
        let contributions = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "confide_contributions",
            "Owners' places in committed rounds: summed, or excluded (withdrew or missed the deadline)",
            contributions.clone(),
        );
        let rejections = Family::<RuleLabel, Counter>::default();
        registry.register(
            "confide_rejected_contributions",
            "Contributions refused by the aggregation, by reason",
            rejections.clone(),
        );
        let unseals = Counter::default();
        registry.register(
            "confide_unseals",
            "Sums the key holder decrypted for this coordinator (paillier, lattice)",
            unseals.clone(),
        );
        Self {
            registry,
            jobs,
            refusals,
            audit_entries,
            commit_seconds,
            nodes_connected,
            rounds,
            round_seconds,
            aggregation_seconds,
            contributions,
            rejections,
            unseals,
        }
    }
}

/// The control service.
#[derive(Debug, Clone)]
pub struct ControlService {
    jobs: Jobs,
    operator: String,
    revocations: Arc<Revocations>,
    followers: Arc<std::sync::atomic::AtomicUsize>,
    changed: Arc<watch::Sender<u64>>,
    stopping: Arc<watch::Sender<bool>>,
    metrics: Arc<Metrics>,
    guard_stats: Arc<OnceLock<Arc<GuardStats>>>,
    fleet_stats: Arc<OnceLock<Arc<GuardStats>>>,
    routes: crate::fleet::JobRoutes,
    nodes: crate::fleet::Nodes,
    /// The dashboard's base address, for the job addresses a submission returns.
    dashboard: Option<String>,
}

impl ControlService {
    /// Submissions answer with the job's address on the dashboard at `base`.
    pub fn with_dashboard(mut self, base: &str) -> Self {
        self.dashboard = Some(base.to_string());
        self
    }

    /// A control service on a recovered job store, run by the party `operator` (the
    /// coordinator's own party id: its certificate may read every job).
    pub fn new(jobs: Jobs, operator: String, revocations: Arc<Revocations>) -> Self {
        Self {
            jobs,
            operator,
            revocations,
            followers: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
            stopping: Arc::new(watch::channel(false).0),
            metrics: Arc::new(Metrics::new()),
            guard_stats: Arc::default(),
            fleet_stats: Arc::default(),
            routes: crate::fleet::JobRoutes::default(),
            nodes: crate::fleet::Nodes::default(),
            dashboard: None,
        }
    }

    /// The request guard of the fleet port's `Fleet` service (`crate::guard::fleet`); its
    /// refusals are counted in this service's metrics.
    pub fn fleet_guard(&self) -> Guard {
        let guard = crate::guard::fleet(self.revocations.clone());
        let _ = self.fleet_stats.set(guard.stats());
        guard
    }

    /// The running jobs' routes on the fleet port.
    pub fn routes(&self) -> &crate::fleet::JobRoutes {
        &self.routes
    }

    /// The nodes heard on the fleet port.
    pub fn nodes(&self) -> &crate::fleet::Nodes {
        &self.nodes
    }

    /// The federation's revocation list.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The operator's party id (this coordinator's own).
    pub fn operator(&self) -> &str {
        &self.operator
    }

    /// A receiver that changes whenever a job changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The request guard for this service's port (`crate::guard::control`); its refusals
    /// are counted in this service's metrics.
    pub fn guard(&self) -> Guard {
        let guard = crate::guard::control(self.revocations.clone());
        // One guard per service: a second call keeps counting into the first's statistics.
        let _ = self.guard_stats.set(guard.stats());
        guard
    }

    /// The metrics in the OpenMetrics text format, brought up to date from the store.
    ///
    /// # Errors
    /// The store failed.
    pub fn render_metrics(&self) -> Result<String, String> {
        let m = &self.metrics;
        for (state, n) in self.jobs.count_by_state().map_err(|e| e.to_string())? {
            m.jobs
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // The guard counts its own refusals (NET-nnn); bring the counters up to its totals.
        // The job store's refusals (JOB-nnn) are counted as they happen, in `fail`.
        let mut guarded = BTreeMap::<String, u64>::new();
        let stats = [self.guard_stats.get(), self.fleet_stats.get()];
        for s in stats.into_iter().flatten().chain([&self.routes.stats()]) {
            for (rule, n) in s.by_rule() {
                *guarded.entry(rule).or_default() += n;
            }
        }
        for (rule, n) in guarded {
            let c = m.refusals.get_or_create(&RuleLabel { rule });
            c.inc_by(n.saturating_sub(c.get()));
        }
        let now_ms = confide_service::jobs::millis(time::OffsetDateTime::now_utc());
        m.nodes_connected
            .set(i64::try_from(self.nodes.connected(now_ms)).unwrap_or(i64::MAX));
        let audit = self.jobs.audit_entries().map_err(|e| e.to_string())?;
        m.audit_entries
            .set(i64::try_from(audit).unwrap_or(i64::MAX));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &m.registry)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Counts what a job that ended did, from its report: rounds, their times, contributions
    /// summed and excluded, rejections by reason, and (`unsealed`) the key holder's unseals.
    /// Only figures summed over owners: nothing per owner.
    pub fn observe_report(&self, report: &crate::coordinator::JobReport, unsealed: bool) {
        let m = &self.metrics;
        let rounds = report.history.len() as u64;
        m.rounds.inc_by(rounds);
        if unsealed {
            m.unseals.inc_by(rounds);
        }
        for r in &report.history {
            m.round_seconds.observe(r.seconds);
            m.aggregation_seconds.observe(r.aggregation_seconds);
            for (outcome, n) in [
                ("summed", r.contributors.len()),
                ("excluded", r.excluded.len()),
            ] {
                m.contributions
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(n as u64);
            }
        }
        for (reason, n) in &report.rejections {
            m.rejections
                .get_or_create(&RuleLabel {
                    rule: crate::guard::excerpt_n(reason, 64),
                })
                .inc_by(*n);
        }
    }

    /// The job store.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// Wakes followers after a change of state made outside this service (the scheduler).
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Ends every followed event stream (with `UNAVAILABLE`), so that a graceful shutdown
    /// does not wait for followers; calls in progress finish.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// The status for a store error: a counted, numbered refusal, or an internal error.
    pub fn fail(&self, e: ServiceError) -> Status {
        match e {
            ServiceError::Refused(r) => {
                tracing::info!("control: refused: {r}");
                self.metrics
                    .refusals
                    .get_or_create(&RuleLabel {
                        rule: r.code.id().to_string(),
                    })
                    .inc();
                refusal_status(&r)
            }
            other => {
                tracing::error!("control: {other}");
                Status::internal("the coordinator's job store failed (see its log)")
            }
        }
    }

    fn caller<T>(&self, req: &Request<T>, roles: &[Role]) -> Result<PeerIdentity, Status> {
        peer(req, roles, &self.revocations)
    }

    /// The job `name` names, if `caller` may see it. A job the caller may not see is
    /// answered as unknown (JOB-005): its existence is not the caller's business.
    fn visible(&self, name: &str, caller: &PeerIdentity) -> Result<JobRecord, Status> {
        let found = self
            .jobs
            .resolve_visible(name, |r| self.may_see(r, caller))
            .and_then(|h| self.jobs.get(&h))
            .map_err(|e| self.fail(e))?;
        found.ok_or_else(|| {
            self.fail(ServiceError::Refused(Refusal::new(
                Code::UnknownJob,
                format!("no job is named `{name}`"),
            )))
        })
    }

    /// Whether `caller` may see `record`: its model owner, a recipient, or this daemon's
    /// operator.
    pub fn may_see(&self, record: &JobRecord, caller: &PeerIdentity) -> bool {
        (caller.role == Role::Coordinator && caller.id == self.operator)
            || record.model_owner == caller.id
            || record.recipients.contains(&caller.id)
    }

    /// Runs a store mutation off the async threads (a commit waits for the disk), then wakes
    /// followers.
    pub async fn mutate<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Jobs) -> Result<R, ServiceError> + Send + 'static,
    ) -> Result<R, Status> {
        let jobs = self.jobs.clone();
        let (out, took) = tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            (f(&jobs), start.elapsed())
        })
        .await
        .map_err(|e| Status::internal(format!("job store task: {e}")))?;
        self.metrics.commit_seconds.observe(took.as_secs_f64());
        self.notify();
        out.map_err(|e| self.fail(e))
    }
}

/// A stored record's manifest hash.
fn record_hash(record: &JobRecord) -> Result<[u8; 32], Status> {
    confide_service::jobs::parse_hash(&record.hash)
        .ok_or_else(|| Status::internal("malformed job hash in the store"))
}

fn record_reply(record: &JobRecord, created: bool) -> Result<Response<pb::JobReply>, Status> {
    Ok(Response::new(pb::JobReply {
        record_json: serde_json::to_string(record).map_err(|e| Status::internal(e.to_string()))?,
        created,
        url: String::new(),
    }))
}

/// One open event stream, released when its task ends.
struct FollowerSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEventReply, Status>> + Send>>;

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    async fn submit_job(
        &self,
        req: Request<pb::JobSubmitRequest>,
    ) -> Result<Response<pb::JobReply>, Status> {
        let caller = self.caller(&req, &[Role::ModelOwner])?;
        let manifest = req.into_inner().manifest;
        let now = time::OffsetDateTime::now_utc();
        let s = self
            .mutate(move |jobs| jobs.submit(&manifest, &caller.id, now))
            .await?;
        if s.new {
            tracing::info!("job `{}` ({}) submitted", s.record.job_id, s.record.hash);
        }
        let mut reply = record_reply(&s.record, s.new)?;
        if let Some(base) = &self.dashboard {
            reply.get_mut().url = format!("{base}/ui/jobs/{}", s.record.hash);
        }
        Ok(reply)
    }

    async fn list_jobs(
        &self,
        req: Request<pb::JobListRequest>,
    ) -> Result<Response<pb::JobListReply>, Status> {
        let caller = self.caller(&req, &[Role::ModelOwner, Role::Coordinator])?;
        let state = req.into_inner().state;
        if !state.is_empty() && !confide_service::JobState::NAMES.contains(&state.as_str()) {
            return Err(Status::invalid_argument(format!(
                "unknown state `{}` (one of {})",
                crate::guard::excerpt(&state),
                confide_service::JobState::NAMES.join(", ")
            )));
        }
        let all = self.jobs.list().map_err(|e| self.fail(e))?;
        let records_json = all
            .iter()
            .filter(|r| self.may_see(r, &caller))
            .filter(|r| state.is_empty() || r.state.name() == state)
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::JobListReply { records_json }))
    }

    async fn job_status(
        &self,
        req: Request<pb::JobName>,
    ) -> Result<Response<pb::JobReply>, Status> {
        let caller = self.caller(&req, &[Role::ModelOwner, Role::Coordinator])?;
        let record = self.visible(&req.into_inner().name, &caller)?;
        record_reply(&record, false)
    }

    async fn cancel_job(
        &self,
        req: Request<pb::JobCancelRequest>,
    ) -> Result<Response<pb::JobReply>, Status> {
        let caller = self.caller(&req, &[Role::ModelOwner])?;
        let statement = req.into_inner().statement;
        let now = time::OffsetDateTime::now_utc();
        let record = self
            .mutate(move |jobs| jobs.cancel(&statement, &caller.id, now))
            .await?;
        tracing::info!("job `{}`: {}", record.job_id, record.state.describe());
        record_reply(&record, false)
    }

    type JobEventsStream = EventStream;

    async fn job_events(
        &self,
        req: Request<pb::JobEventsRequest>,
    ) -> Result<Response<Self::JobEventsStream>, Status> {
        let caller = self.caller(&req, &[Role::ModelOwner, Role::Coordinator])?;
        let pb::JobEventsRequest { name, from, follow } = req.into_inner();
        let record = self.visible(&name, &caller)?;
        let hash = record_hash(&record)?;
        let active = self
            .followers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let slot = FollowerSlot(self.followers.clone());
        if active >= MAX_FOLLOWERS {
            return Err(Status::resource_exhausted(format!(
                "{MAX_FOLLOWERS} event streams are open; try again later"
            )));
        }
        let (tx, rx) = mpsc::channel(32);
        let jobs = self.jobs.clone();
        let mut changed = self.changed.subscribe();
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let mut next = from;
            loop {
                let read = {
                    let jobs = jobs.clone();
                    tokio::task::spawn_blocking(move || {
                        Ok::<_, ServiceError>((jobs.get(&hash)?, jobs.events(&hash, next)?))
                    })
                    .await
                };
                let (record, events) = match read {
                    Ok(Ok((Some(r), e))) => (r, e),
                    Ok(Ok((None, _))) => return,
                    Ok(Err(e)) => {
                        tracing::error!("control: events: {e}");
                        let _ = tx.send(Err(Status::internal("the job store failed"))).await;
                        return;
                    }
                    Err(e) => {
                        tracing::error!("control: events task: {e}");
                        return;
                    }
                };
                for e in events {
                    next = e.seq + 1;
                    let Ok(event_json) = serde_json::to_string(&e) else {
                        return;
                    };
                    // A follower that stops reading must not hold up a shutdown.
                    tokio::select! {
                        sent = tx.send(Ok(pb::JobEventReply { event_json })) => {
                            if sent.is_err() {
                                return;
                            }
                        }
                        _ = stopping.wait_for(|s| *s) => return,
                    }
                }
                // Ended, and everything up to the end was sent (or asked for from beyond it).
                let ended = record.state.is_terminal() && next >= record.events;
                if !follow || ended {
                    return;
                }
                if *stopping.borrow() {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the coordinator is stopping; the job is kept, follow it again \
                             when the coordinator is back",
                        )))
                        .await;
                    return;
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = stopping.changed() => {}
                    () = tokio::time::sleep(FOLLOW_POLL) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn download_job(
        &self,
        req: Request<pb::JobName>,
    ) -> Result<Response<pb::JobDownloadReply>, Status> {
        let caller = self.caller(&req, &[Role::ModelOwner])?;
        let record = self.visible(&req.into_inner().name, &caller)?;
        if !record.recipients.contains(&caller.id) && !record.recipients.contains(&caller.name) {
            return Err(self.fail(ServiceError::Refused(Refusal::new(
                Code::NotAllowed,
                format!(
                    "only job `{}`'s recipients may download its model; `{}` is not one",
                    record.job_id, caller.name
                ),
            ))));
        }
        let hash = record_hash(&record)?;
        let Some((report_json, model)) = self.jobs.result(&hash).map_err(|e| self.fail(e))? else {
            return Err(self.fail(ServiceError::Refused(Refusal::new(
                Code::WrongState,
                format!(
                    "job `{}` is {}; a model is there once it completed",
                    record.job_id,
                    record.state.describe()
                ),
            ))));
        };
        let manifest = self.jobs.manifest(&hash).map_err(|e| self.fail(e))?;
        Ok(Response::new(pb::JobDownloadReply {
            record_json: serde_json::to_string(&record)
                .map_err(|e| Status::internal(e.to_string()))?,
            report_json,
            model,
            manifest_json: String::from_utf8_lossy(&manifest.unwrap_or_default()).into_owned(),
        }))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::NodeListRequest>,
    ) -> Result<Response<pb::NodeListReply>, Status> {
        let caller = self.caller(&req, &[Role::Coordinator])?;
        if caller.id != self.operator {
            return Err(Status::permission_denied(
                "only this coordinator's operator lists its nodes",
            ));
        }
        let nodes_json = self
            .nodes
            .list()
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::NodeListReply { nodes_json }))
    }
}
