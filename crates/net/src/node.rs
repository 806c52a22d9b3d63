//! `confide node`: a data owner. It checks the job's signed manifest and its owner's policy
//! before anything else, approves the job (automatically through a policy rule, or because its
//! owner co-signed the manifest), loads its CSV, checks it against the job's schema, trains
//! locally each round, encodes and protects its update with the job's scheme, signs it and
//! sends it to the coordinator. At every round it re-reads the policy (a revocation stops the
//! job for this owner) and witnesses the coordinator's audit log: it cosigns each signed tree
//! head only if it extends the last head it saw.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use confide_core::{JobSpec, SchemeKind};
use confide_ml::{DataError, TrainConfig};
use confide_secagg::{
    AggregationClient, HolderPublicKey, PlainClient, Unsigned, model_digest, sign_contribution,
};
use prost::Message as _;
use rand::{RngCore, SeedableRng};

use crate::coordinator::{fixed_point, job_digest, job_scheme_params, model_spec};
use crate::pb::{self, JobState};
use crate::pki::Credentials;
use crate::transport::connect;
use confide_governance::audit::SignedTreeHead;
use confide_governance::manifest::{Mode, SignedManifest, online_approval_message};
use confide_governance::policy::{Approval, JobRequest, Policy};
use confide_governance::witness::Witness;

/// Node failures.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The network or a peer failed.
    #[error(transparent)]
    Net(#[from] crate::transport::NetError),
    /// A call was refused.
    #[error("{0}")]
    Refused(String),
    /// The owner's data does not fit the job.
    #[error("data rejected: {0}")]
    Data(#[from] DataError),
    /// The job or a reply is inconsistent.
    #[error("{0}")]
    Job(String),
}

pub use confide_ml::job::load_job_data;

/// How much longer than the job's round timeout (plus the keepalive period) a node waits for a
/// silent coordinator before it concludes that the coordinator stopped answering (NODE-001).
const SILENCE_MARGIN: Duration = Duration::from_secs(10);

/// How long a one-shot node keeps trying to reach the coordinator for its first join
/// (NODE-003).
const FIRST_CONTACT: Duration = Duration::from_secs(60);

/// The same for a node daemon's job, whose coordinator may be recovering the job (FLEET-004)
/// while it waits for a key holder or aggregators for up to a round timeout each.
const FIRST_CONTACT_SERVED: Duration = Duration::from_secs(600);

/// RES-005: what this owner trained for a job, kept in the node's store (the witness store)
/// and written before each update leaves: the rounds and the global models it trained from.
/// A node restarted, or facing a restarted coordinator, refuses a round it already trained, a
/// model it already trained from, and more rounds than the job has. (A node that crashed
/// after training but before its update left may retrain that round: nothing was exposed.)
///
/// RES-007: the update itself (the contribution and its privacy claim, as sent) is written in
/// the same transaction, so that a coordinator that restarted before it committed the round
/// gets the same bytes again, never a fresh encryption or a retrained update.
#[derive(Debug)]
struct TrainingRecord {
    store: std::sync::Arc<dyn confide_store::Store>,
    job: [u8; 32],
    rounds: BTreeMap<u32, [u8; 32]>,
    /// The last update sent: its round and its bytes (a `SubmitRequest` without tree head).
    sent: Option<(u32, Vec<u8>)>,
    /// This owner decided to approve the job (RES-008; written before its ledger is debited
    /// and its approval sent): a restarted node rejoins instead of approving again.
    approved: bool,
    /// Under `masking`, the last round's record (RES-011).
    masking: Option<MaskingRecord>,
}

/// The jobs this owner approved, by job (written before the approval leaves).
const APPROVED: &str = "node.approved";
/// Under `masking`, the last round's secrets and stage answers, by job (RES-011).
const MASKING: &str = "node.masking";

/// RES-011: under `masking`, what a replay of the last round needs, kept in the node's own
/// store: the seed of the round's masking client (its X25519 keys, self-mask seed and Shamir
/// randomness all come from it), the encoded update it masked, and, per stage after the first,
/// the digest of the coordinator's broadcast and the answer sent to it. A round asked again is
/// answered with the same bytes, and only to the same broadcasts: an owner never answers the
/// unmasking stage for two different sets of survivors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskingRecord {
    round: u32,
    seed: [u8; 32],
    encoded: Vec<i64>,
    /// Stage → (the broadcast's SHA-256, the answer sent).
    stages: BTreeMap<u32, ([u8; 32], Vec<u8>)>,
}

const TRAINED: &str = "node.trained";
/// The last update each job sent, by job: the round (4 bytes, big-endian), then the bytes.
const SENT: &str = "node.sent";

impl TrainingRecord {
    fn load(
        store: std::sync::Arc<dyn confide_store::Store>,
        job: [u8; 32],
    ) -> Result<Self, NodeError> {
        use confide_store::StoreExt as _;
        let (entries, sent, approved, masking) = store
            .read(|txn| {
                Ok::<_, confide_store::StoreError>((
                    txn.scan_prefix(TRAINED, &job)?,
                    txn.get(SENT, &job)?,
                    txn.get(APPROVED, &job)?.is_some(),
                    txn.get(MASKING, &job)?,
                ))
            })
            .map_err(|e| NodeError::Job(format!("training record: {e}")))?;
        let sent = match sent {
            None => None,
            Some(v) if v.len() >= 4 => Some((
                u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                v[4..].to_vec(),
            )),
            Some(_) => return Err(NodeError::Job("training record: a malformed update".into())),
        };
        let mut rounds = BTreeMap::new();
        for (k, v) in entries {
            let round = k
                .get(32..36)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes);
            let model = <[u8; 32]>::try_from(v.as_slice()).ok();
            match (round, model) {
                (Some(r), Some(m)) if k.len() == 36 => {
                    rounds.insert(r, m);
                }
                _ => return Err(NodeError::Job("training record: a malformed entry".into())),
            }
        }
        let masking = masking
            .map(|m| serde_json::from_slice(&m))
            .transpose()
            .map_err(|e| NodeError::Job(format!("training record: masking: {e}")))?;
        Ok(Self {
            store,
            job,
            rounds,
            sent,
            approved,
            masking,
        })
    }

    /// The masking record of `round`, if it is the last round's.
    fn masking(&self, round: u32) -> Option<&MaskingRecord> {
        self.masking.as_ref().filter(|m| m.round == round)
    }

    /// RES-011: the answer to `stage` of the last round, given its broadcast's digest: the
    /// stored answer when that stage was answered to the same broadcast, an error when it was
    /// answered to another, and otherwise `answer`, recorded before it leaves.
    fn stage_answer(
        &mut self,
        (round, stage): (u32, u32),
        broadcast: [u8; 32],
        answer: Vec<u8>,
    ) -> Result<Vec<u8>, NodeError> {
        use confide_store::StoreExt as _;
        let Some(m) = self.masking.as_mut().filter(|m| m.round == round) else {
            return Err(NodeError::Job(format!(
                "training record: round {round} has no masking record"
            )));
        };
        match m.stages.get(&stage) {
            Some((b, sent)) if *b == broadcast => {
                if *sent != answer {
                    return Err(NodeError::Job(format!(
                        "RES-011 round {round}, stage {stage}: the answer computed again differs \
                         from the one sent; nothing is sent"
                    )));
                }
                return Ok(answer);
            }
            Some(_) => {
                return Err(NodeError::Refused(format!(
                    "RES-011 round {round}, stage {stage}: the coordinator asked again with another \
                     broadcast than the first time (the owners or survivors differ); this owner \
                     answers a stage of a round once"
                )));
            }
            None => {}
        }
        m.stages.insert(stage, (broadcast, answer.clone()));
        let json = serde_json::to_vec(&*m).map_err(|e| NodeError::Job(e.to_string()))?;
        self.store
            .transact(|txn| txn.put(MASKING, &self.job, &json))
            .map_err(|e| NodeError::Job(format!("training record: {e}")))?;
        Ok(answer)
    }

    /// Records that this owner approves the job (its ledger debited), before the approval
    /// leaves.
    fn mark_approved(&mut self) -> Result<(), NodeError> {
        use confide_store::StoreExt as _;
        self.store
            .transact(|txn| txn.put(APPROVED, &self.job, b"1"))
            .map_err(|e| NodeError::Job(format!("training record: {e}")))?;
        self.approved = true;
        Ok(())
    }

    /// The last round trained (0: none).
    fn last_round(&self) -> u32 {
        self.rounds.keys().next_back().copied().unwrap_or(0)
    }

    /// The update sent for `round` from `model`, when that is the last round trained.
    fn sent(&self, round: u32, model: &[u8; 32]) -> Option<&[u8]> {
        match (&self.sent, self.rounds.get(&round)) {
            (Some((r, bytes)), Some(m)) if *r == round && m == model => Some(bytes),
            _ => None,
        }
    }

    /// Why round `round` from `model` must not be trained, if it must not.
    fn check(&self, round: u32, model: &[u8; 32], job_rounds: u32) -> Option<String> {
        let last = self.rounds.keys().next_back().copied().unwrap_or(0);
        if round <= last {
            Some(format!(
                "RES-005 round {round}: this owner already trained round {last} of this job (its \
                 record survives restarts; a round is never trained twice)"
            ))
        } else if self.rounds.values().any(|m| m == model) {
            Some(format!(
                "RES-005 round {round}: this owner already trained from this global model (its \
                 record survives restarts)"
            ))
        } else if self.rounds.len() >= job_rounds as usize {
            Some(format!(
                "RES-005 round {round}: this owner already trained the job's {job_rounds} rounds"
            ))
        } else {
            None
        }
    }

    /// Records `round` trained from `model`, and the update `sent` (it replaces the last
    /// one), durably, before the update leaves.
    /// Under `masking`, `masking` (the round's seed and encoded update) replaces the last
    /// round's masking record in the same transaction.
    fn record(
        &mut self,
        round: u32,
        model: &[u8; 32],
        sent: &[u8],
        masking: Option<MaskingRecord>,
    ) -> Result<(), NodeError> {
        use confide_store::StoreExt as _;
        let mut key = self.job.to_vec();
        key.extend(round.to_be_bytes());
        let mut value = round.to_be_bytes().to_vec();
        value.extend_from_slice(sent);
        let masking_json = masking
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| NodeError::Job(e.to_string()))?;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let log = serde_json::to_vec(&SentRound {
            round,
            bytes: sent.len() as u64,
            at_ms,
        })
        .map_err(|e| NodeError::Job(e.to_string()))?;
        self.store
            .transact(|txn| {
                txn.put(TRAINED, &key, model)?;
                txn.put(SENT_LOG, &key, &log)?;
                txn.put(SENT, &self.job, &value)?;
                match &masking_json {
                    Some(m) => txn.put(MASKING, &self.job, m),
                    None => txn.delete(MASKING, &self.job).map(drop),
                }
            })
            .map_err(|e| NodeError::Job(format!("training record: {e}")))?;
        self.rounds.insert(round, *model);
        self.sent = Some((round, sent.to_vec()));
        self.masking = masking;
        Ok(())
    }

    /// Forgets the job's last update (the job ended: nothing will be asked again).
    fn forget_sent(&mut self) {
        use confide_store::StoreExt as _;
        let had = self.sent.take().is_some() | self.masking.take().is_some();
        if had
            && let Err(e) = self.store.transact(|txn| {
                txn.delete(SENT, &self.job)?;
                txn.delete(MASKING, &self.job).map(drop)
            })
        {
            tracing::warn!("training record: {e}");
        }
    }
}

/// The coordinator client, as a node holds it.
type Coordinator = pb::coordinator_client::CoordinatorClient<crate::fleet::JobChannel>;

/// The longest a node waits for a call that the coordinator answers within a round (a
/// submission, a stage): the round timeout plus [`SILENCE_MARGIN`]. The channel enforces it
/// on the node's side too, so a frozen coordinator cannot hold the node.
fn call_deadline(spec: &JobSpec) -> Duration {
    Duration::from_secs_f64(spec.job.round_timeout_secs) + SILENCE_MARGIN
}

/// A failed call within a round: NODE-001 when the coordinator did not answer in time, the
/// coordinator's refusal otherwise.
fn call_failed(what: &str, s: &tonic::Status, spec: &JobSpec) -> NodeError {
    // The channel enforces the deadline on this side, and reports it as `Cancelled`.
    if matches!(
        s.code(),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) {
        NodeError::Refused(format!(
            "NODE-001 the coordinator did not answer `{what}` within {:.0} s (the job's round \
             timeout plus {} s): it stopped or cannot be reached, so this owner stops",
            call_deadline(spec).as_secs_f64(),
            SILENCE_MARGIN.as_secs()
        ))
    } else {
        NodeError::Refused(format!("{what}: {}", s.message()))
    }
}

/// `msg` as a request that gives up after `deadline`.
fn with_deadline<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(deadline);
    r
}

/// The next round's task, or the job's end. Keepalives and brief failures (a coordinator
/// restarting, a dropped connection) are waited through; NODE-001 once the coordinator has not
/// answered at all for the round timeout plus its keepalive period and [`SILENCE_MARGIN`].
async fn next_task(
    coord: &mut Coordinator,
    spec: &JobSpec,
    after: u32,
    witnessed: u64,
) -> Result<pb::RoundTask, NodeError> {
    let keepalive = crate::coordinator::keepalive(spec);
    let limit = Duration::from_secs_f64(spec.job.round_timeout_secs) + keepalive + SILENCE_MARGIN;
    let mut heard = std::time::Instant::now();
    loop {
        let request = pb::NextRoundRequest {
            after_round: after,
            witnessed_size: witnessed,
        };
        match coord
            .next_round(with_deadline(request, keepalive + SILENCE_MARGIN))
            .await
        {
            Ok(reply) => {
                let task = reply.into_inner();
                if !task.keepalive {
                    return Ok(task);
                }
                heard = std::time::Instant::now();
            }
            Err(s)
                if crate::roles::is_transport_failure(&s)
                    || s.code() == tonic::Code::DeadlineExceeded =>
            {
                if heard.elapsed() >= limit {
                    return Err(NodeError::Refused(format!(
                        "NODE-001 the coordinator has not answered for {:.0} s (the job's round \
                         timeout is {:.0} s): it stopped or cannot be reached, so this owner \
                         stops (last failure: {})",
                        heard.elapsed().as_secs_f64(),
                        spec.job.round_timeout_secs,
                        crate::roles::describe_failure(&s)
                    )));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(s) => return Err(NodeError::Refused(format!("next round: {}", s.message()))),
        }
    }
}

/// How many stale heads in a row a node asks again for (see `run_node`'s witness loop).
const MAX_STALE_HEADS: u32 = 8;

/// What a node needs.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This owner's credentials.
    pub creds: Credentials,
    /// The coordinator's address (host:port).
    pub coordinator: String,
    /// The owner's CSV.
    pub data: PathBuf,
    /// Chaos testing: exit abruptly, without withdrawing, after submitting this round.
    pub crash_after_round: Option<u32>,
    /// Chaos testing of multi-stage schemes: exit abruptly after submitting this
    /// `(round, stage)`.
    pub crash_after_stage: Option<(u32, u32)>,
    /// The owner's privacy budget ledger and this dataset's name in it. With a ledger, a
    /// job's ε is debited before the first round, and a job that would exceed the dataset's
    /// budget (or a job without DP on a dataset that has a budget) is refused.
    pub ledger: Option<(PathBuf, String)>,
    /// The owner's policy for this dataset (see `confide_governance::policy`). Without one,
    /// the node runs a job only if its owner co-signed the manifest (`confide job approve`).
    pub policy: Option<PathBuf>,
    /// The witness's memory of the coordinator's tree heads (a redb file); `None` keeps it in
    /// memory for this run only.
    pub witness_store: Option<PathBuf>,
    /// The job, on a long-running coordinator's fleet port (its manifest hash, sent with
    /// every request); `None` for a one-job coordinator.
    pub job: Option<[u8; 32]>,
    /// The owner's co-signature of the job's manifest, given after the job was submitted
    /// (`confide node inbox approve`); it counts as a co-signature in the manifest.
    pub approval: Option<confide_governance::manifest::ManifestSignature>,
    /// An attestation policy the key holder's evidence must satisfy before this owner
    /// encrypts to its key (`paillier`, `lattice`); `None` trusts the key holder unattested.
    pub keyholder_attestation: Option<PathBuf>,
    /// The party id of the owner's approval key, when it is not the node's own identity
    /// (`confide node serve --approver`): only its co-signatures count as the owner's.
    pub approver: Option<String>,
    /// Where this node keeps reviewed code bundles and which environments it runs them in;
    /// `None`: jobs with `[code]` are refused.
    pub code: Option<CodeHost>,
}

/// How a node runs model owners' code (`--code-dir`, `--code-env`).
#[derive(Debug, Clone)]
pub struct CodeHost {
    /// The directory holding the bundles this owner has, each under its `[code] bundle` name.
    pub bundles: PathBuf,
    /// Environment names and their interpreters (`…/bin/python3`).
    pub envs: BTreeMap<String, PathBuf>,
    /// The launcher (the `confide` binary) and any arguments before `code-worker`.
    pub launcher: Vec<PathBuf>,
    /// Where the workers' scratch directories and logs go.
    pub work: PathBuf,
}

/// Finds the job's bundle and environment at this node, and re-hashes the bundle: the
/// launch, or (local message, public message).
fn prepare_code(
    opts: &NodeOptions,
    code: &confide_core::code::CodeSection,
    digest: &[u8; 32],
) -> Result<confide_trainer::usercode::Launch, (String, String)> {
    let Some(host) = &opts.code else {
        let m = "CODE-002 this node runs no user code (start it with --code-dir and --code-env)";
        return Err((m.to_string(), m.to_string()));
    };
    let dir = host.bundles.join(&code.bundle);
    // The node runs its own copy, taken and hashed in one pass: changes to the bundle
    // directory after this check cannot reach the worker, which imports lazily.
    let job = hex::encode(&digest[..8]);
    let snapshot = host.work.join(format!("{}-{job}-bundle", opts.creds.name));
    if snapshot.exists() {
        std::fs::remove_dir_all(&snapshot).map_err(|e| {
            let m = format!("CODE-003 {}: {e}", snapshot.display());
            (
                m,
                "CODE-003 user code could not be started at this node".to_string(),
            )
        })?;
    }
    let files = confide_core::code::copy_dir(&dir, &snapshot).map_err(|e| {
        (
            format!("CODE-001 bundle `{}`: {e}", code.bundle),
            format!(
                "CODE-001 this node has no usable copy of bundle `{}`",
                code.bundle
            ),
        )
    })?;
    let found = confide_core::code::digest(&files);
    if found != code.digest {
        return Err((
            format!(
                "CODE-001 the bundle `{}` in {} has digest {found}; the signed job names {} (the copy differs from what was signed and reviewed)",
                code.bundle,
                dir.display(),
                code.digest
            ),
            format!(
                "CODE-001 this node's copy of bundle `{}` does not match the signed digest",
                code.bundle
            ),
        ));
    }
    let Some(python) = host.envs.get(&code.env) else {
        let m = format!(
            "CODE-002 this node has no environment `{}` for user code (--code-env {}=PYTHON)",
            code.env, code.env
        );
        return Err((m.clone(), m));
    };
    // The worker reads its environment: it must not lead to this owner's keys, data, policy,
    // ledger or store.
    let mut secrets: Vec<&std::path::Path> = vec![&opts.data];
    secrets.extend(host.work.parent());
    secrets.extend(opts.policy.as_deref());
    secrets.extend(opts.ledger.as_ref().map(|(l, _)| l.as_path()));
    secrets.extend(opts.witness_store.as_deref());
    let readable = confide_trainer::usercode::readable_paths(python);
    if let Some((through, secret)) = confide_trainer::usercode::exposes(&readable, &secrets) {
        return Err((
            format!(
                "CODE-002 environment `{}` would let user code read {} (through {}); install it outside the node's files",
                code.env,
                secret.display(),
                through.display()
            ),
            format!(
                "CODE-002 this node's environment `{}` for user code is unusable",
                code.env
            ),
        ));
    }
    tracing::info!(
        "user code: bundle `{}` ({} files, {}) verified; environment `{}` ({})",
        code.bundle,
        files.len(),
        code.digest,
        code.env,
        python.display()
    );
    Ok(confide_trainer::usercode::Launch {
        launcher: host.launcher.clone(),
        python: python.clone(),
        bundle: snapshot,
        scratch: host.work.join(format!("{}-{job}-scratch", opts.creds.name)),
        log: host
            .work
            .join(format!("{}-{job}-code.log", opts.creds.name)),
        entry: code.entry.clone(),
    })
}

/// What a node did.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSummary {
    /// Rounds contributed.
    pub rounds: u32,
    /// The job's final state.
    pub finished: bool,
    /// Message from the coordinator when the job failed.
    pub message: String,
}

/// The channel to the coordinator with the job header, and its join reply (NODE-003: a
/// coordinator that cannot be reached yet is asked again).
async fn first_contact(
    opts: &NodeOptions,
    name: &str,
) -> Result<
    (
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            crate::fleet::JobHeader,
        >,
        pb::JoinReply,
    ),
    NodeError,
> {
    // NODE-003: a coordinator that cannot be reached yet (not started, restarting, a busy
    // host that lets the connection time out) is asked again, backing off from 0.1 s to 2 s,
    // for at most FIRST_CONTACT; a refusal ends the node at once.
    let patience = if opts.job.is_some() {
        FIRST_CONTACT_SERVED
    } else {
        FIRST_CONTACT
    };
    let first_contact = tokio::time::Instant::now() + patience;
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = async {
            let channel = tonic::service::interceptor::InterceptedService::new(
                crate::transport::connect_classified(&opts.coordinator, "coordinator", &opts.creds)
                    .await
                    .map_err(|f| (f.transient, NodeError::from(f.error)))?,
                crate::fleet::JobHeader::new(opts.job.as_ref()),
            );
            // The join reply is small; later messages are bounded by the job's limit.
            let join = pb::coordinator_client::CoordinatorClient::new(channel.clone())
                .join(pb::JoinRequest {})
                .await
                .map_err(|s| {
                    if crate::roles::is_transport_failure(&s) {
                        (
                            true,
                            NodeError::Refused(format!(
                                "join: the coordinator {}",
                                crate::roles::describe_failure(&s)
                            )),
                        )
                    } else {
                        (
                            false,
                            NodeError::Refused(format!("join refused: {}", s.message())),
                        )
                    }
                })?
                .into_inner();
            Ok::<_, (bool, NodeError)>((channel, join))
        };
        // Each attempt within the time left: a coordinator that takes the connection but
        // never answers does not hold the node past its patience.
        let left = first_contact.saturating_duration_since(tokio::time::Instant::now());
        let attempt = match tokio::time::timeout(left.max(Duration::from_secs(1)), attempt).await {
            Ok(result) => result,
            Err(_) => Err((
                false,
                NodeError::Refused(format!(
                    "the coordinator at {} did not answer the join within {} s",
                    opts.coordinator,
                    patience.as_secs()
                )),
            )),
        };
        match attempt {
            Ok(contact) => return Ok(contact),
            Err((true, e)) if tokio::time::Instant::now() + pause < first_contact => {
                tracing::warn!(
                    "`{name}`: the coordinator cannot be reached yet ({e}); asking again"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err((_, e)) => return Err(e),
        }
    }
}

/// Runs a node until the job ends.
pub async fn run_node(opts: NodeOptions) -> Result<NodeSummary, NodeError> {
    let name = opts.creds.name.clone();
    let signing = opts
        .creds
        .signing_key()
        .map_err(|e| NodeError::Job(e.to_string()))?;
    let (channel, join) = first_contact(&opts, &name).await?;
    let spec =
        JobSpec::from_wire(&join.job_spec).map_err(|e| NodeError::Job(format!("job spec: {e}")))?;
    let digest = job_digest(&spec);
    if opts.keyholder_attestation.is_some() && !spec.job.scheme.uses_key_holder() {
        return Err(NodeError::Job(format!(
            "a key holder attestation policy was given, but scheme `{}` has no key holder",
            spec.job.scheme.as_str()
        )));
    }
    if join.job_digest != digest {
        return Err(NodeError::Job(
            "the coordinator's job digest does not match its spec".into(),
        ));
    }
    let limit = spec.limits.max_message_bytes;
    let mut coord = pb::coordinator_client::CoordinatorClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    tracing::info!(
        "`{name}` joined job `{}` ({})",
        spec.job.id,
        hex::encode(&digest[..8])
    );

    // The manifest and the coordinator's identity, checked before any data is touched.
    let gov = match Governance::check(&opts, &join, &spec) {
        Ok(g) => g,
        Err(problem) => {
            refuse(&mut coord, &problem, "refusal").await;
            return Err(NodeError::Refused(problem));
        }
    };

    // Validate the local data before any round; on failure, tell the coordinator and stop.
    let data = match load_job_data(&spec, &opts.data) {
        Ok(d) if d.is_empty() => Err(DataError::Empty {
            path: opts.data.display().to_string(),
        }),
        other => other,
    };
    let data = match data {
        Ok(d) => std::sync::Arc::new(d),
        Err(e) => {
            // The owner sees the full error; the coordinator gets a numbered reason only.
            refuse(&mut coord, &e.public_reason(&spec.data.features), "data").await;
            return Err(e.into());
        }
    };

    // Plan the job's DP for this dataset, check the job against the owner's policy (ε
    // included), approve it, and only then debit the ledger. Refusals are reported to the
    // coordinator as a withdrawal, which it records in the audit log.
    let approved = plan_privacy(&spec, data.len()).and_then(|spend| {
        let request = gov.request(spend.as_ref().map(Spend::cost));
        let basis = gov
            .decide(&opts, &request)
            .map_err(Undecided::into_message)?;
        Ok((spend, request, basis))
    });
    let (spend, request, basis) = match approved {
        Ok(x) => x,
        Err(problem) => {
            refuse(&mut coord, &problem, "refusal").await;
            return Err(NodeError::Refused(problem));
        }
    };
    // User code: the reviewed bundle must be here, byte for byte what was signed, before
    // anything is approved or debited.
    let launch = match spec.code.as_ref().map(|c| prepare_code(&opts, c, &digest)) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err((local, public))) => {
            refuse(&mut coord, &public, "refusal").await;
            return Err(NodeError::Refused(local));
        }
    };
    let mut worker: Option<confide_trainer::usercode::Worker> = None;
    // The owner's consent before anything is approved or debited: a job the owner revoked
    // (the dashboard) is left at once, with the owner's statement, and costs no ε.
    if let Err(w) = gov.still_allowed(&opts, &request) {
        withdraw_consent(&mut coord, &w).await;
        return Err(NodeError::Refused(w.problem));
    }
    // The witness's memory first: a node that cannot witness must not approve.
    // Local failures (files, stores) are reported to the coordinator by number only: their
    // messages name this machine's paths.
    let (witness, mut training) = match gov
        .witness(&opts)
        .and_then(|(w, store)| Ok((w, TrainingRecord::load(store, digest)?)))
    {
        Ok(w) => w,
        Err(e) => {
            refuse(&mut coord, WITNESS_UNUSABLE, "refusal").await;
            return Err(e);
        }
    };
    let mut witnessed = match witness.last_seen(&gov.log_id) {
        Ok(h) => h.map_or(0, |h| h.size),
        Err(e) => {
            refuse(&mut coord, WITNESS_UNUSABLE, "refusal").await;
            return Err(NodeError::Job(e.to_string()));
        }
    };
    // RES-008: an owner that approved this job before it restarted rejoins: its ledger was
    // debited then (it is only checked now), and the coordinator has its approval. The
    // intent is written before the debit: a crash between the two leaves a rejoin that finds
    // no debit and refuses (no ε spent), never a debit that a restart cannot rejoin.
    let rejoin = training.approved;
    if !rejoin && let Err(e) = training.mark_approved() {
        refuse(&mut coord, WITNESS_UNUSABLE, "refusal").await;
        return Err(e);
    }
    let private = match gov
        .ledger(&opts)
        .and_then(|l| debit_ledger(&spec, spend, l.as_ref(), rejoin))
    {
        Ok(p) => p,
        Err(problem) => {
            refuse(&mut coord, LEDGER_REFUSES, "refusal").await;
            return Err(NodeError::Refused(problem));
        }
    };
    if rejoin {
        tracing::warn!(
            "`{name}` rejoins job `{}` after round {} (it approved it before it restarted)",
            spec.job.id,
            training.last_round()
        );
    } else {
        let approval = signing.sign(&online_approval_message(
            &gov.coordinator_id,
            &gov.manifest_hash,
        ));
        coord
            .approve(pb::ApproveRequest {
                manifest_hash: hex::encode(gov.manifest_hash),
                basis: basis.clone(),
                signature: hex::encode(approval),
                // Only when the owner's policy says so: the count goes into the audit log.
                declared_rows: match Governance::policy(&opts) {
                    Ok(Some(p)) if p.declare_rows => data.len() as u64,
                    _ => 0,
                },
            })
            .await
            .map_err(|s| NodeError::Refused(format!("approval refused: {}", s.message())))?;
        tracing::info!("`{name}` approved job `{}` ({basis})", spec.job.id);
    }
    let claim = private.as_ref().map(|(spend, _)| spend.claim());
    if let Some(c) = &claim {
        tracing::info!(
            "`{name}`: {} DP, σ = {:.4}, q = {:.5}: ε = {:.4} at δ = {:e} over the job",
            c.accountant,
            c.noise_multiplier,
            c.sampling_rate,
            c.epsilon,
            c.delta
        );
    }
    let dp_run = match &private {
        Some((Spend::Record(run), _)) => Some(confide_ml::dpsgd::DpSgdConfig {
            proximal_mu: spec.training.proximal_mu.unwrap_or(0.0),
            ..run.config.clone()
        }),
        _ => None,
    };
    let client_level = match &private {
        Some((Spend::Client(c), _)) => Some(*c),
        _ => None,
    };
    let mut dp_state = match &dp_run {
        Some(_) => Some((
            rand_chacha::ChaCha20Rng::from_entropy(),
            confide_ml::dpsgd::CsprngNoise::from_entropy().map_err(NodeError::Job)?,
        )),
        None => None,
    };
    let mut ddg_rng = match &client_level {
        Some(_) => Some(
            confide_dp::noise::NoiseRng::from_os().map_err(|e| NodeError::Job(e.to_string()))?,
        ),
        None => None,
    };

    let model = model_spec(&spec);
    let fixed = fixed_point(&spec)?;
    let params = job_scheme_params(&spec)?;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    // Under masking: the owners' certified signing keys, from the certificates that come with
    // each round's key list (checked against the CA before use).
    let certified: Certified = Default::default();
    // Under shares and threshold: the connections to the aggregators and their last known keys.
    let mut agg_keys = AggregatorDirectory {
        header: crate::fleet::JobHeader::new(opts.job.as_ref()),
        ..AggregatorDirectory::default()
    };
    let mut client: Box<dyn AggregationClient> = match spec.job.scheme {
        SchemeKind::Plain => Box::new(PlainClient),
        SchemeKind::Paillier | SchemeKind::Lattice => {
            let ch = tonic::service::interceptor::InterceptedService::new(
                connect(&join.keyholder_endpoint, "keyholder", &opts.creds).await?,
                crate::fleet::JobHeader::new(opts.job.as_ref()),
            );
            let mut kh = pb::key_holder_client::KeyHolderClient::new(ch);
            let nonce: [u8; 32] = rand::random();
            let reply = kh
                .get_public_key(pb::PublicKeyRequest {
                    nonce: nonce.to_vec(),
                })
                .await
                .map_err(|s| NodeError::Refused(format!("key holder: {}", s.message())))?
                .into_inner();
            if let Some(path) = &opts.keyholder_attestation {
                let policy = confide_attest::Policy::load(path).map_err(|e| {
                    NodeError::Job(format!("attestation policy {}: {e}", path.display()))
                })?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let claims = crate::keyholder::check_keyholder_evidence(
                    &policy,
                    &digest,
                    &reply.public_key_json,
                    &reply.evidence_json,
                    &nonce,
                    now,
                )
                .map_err(NodeError::Refused)?;
                tracing::info!(
                    "`{name}`: the key holder is attested ({:?}, measurement {})",
                    claims.kind,
                    hex::encode(&claims.measurement)
                );
            }
            HolderPublicKey::parse(
                spec.job.scheme,
                &reply.public_key_json,
                &params,
                spec.modulus_bits,
            )
            .map_err(NodeError::Job)?
            .client(&params, seed)
            .map_err(|e| NodeError::Job(e.to_string()))?
        }
        // Replaced by a fresh client (fresh keys) at every round.
        SchemeKind::Masking => masking_client(
            &spec,
            &digest,
            (1, [0; 32]),
            (&name, fresh_seed()),
            &certified,
        )?,
        // Replaced by a client with freshly fetched keys at every round.
        SchemeKind::Shares | SchemeKind::Threshold => {
            multi_client(
                &spec,
                &join.aggregator_endpoints,
                &opts.creds,
                &name,
                &mut agg_keys,
            )
            .await?
        }
    };

    let mut after = training.last_round();
    let mut rounds = u32::try_from(training.rounds.len()).unwrap_or(u32::MAX);
    let mut seen_models: std::collections::BTreeSet<[u8; 32]> =
        training.rounds.values().copied().collect();
    // How often in a row a head was stale because another job of this node, on the same
    // coordinator's log, witnessed a later head meanwhile.
    let mut stale = 0;
    loop {
        // A node daemon runs several jobs of one coordinator at once, and they share its log
        // and this witness: ask for the proof from what the witness has seen by now.
        if let Ok(Some(h)) = witness.last_seen(&gov.log_id) {
            witnessed = witnessed.max(h.size);
        }
        let task = next_task(&mut coord, &spec, after, witnessed).await?;
        // Witness the audit log: a head that does not extend what this owner saw is refused.
        let cosigned = match gov.witness_head(&witness, &task) {
            Ok(c) => {
                stale = 0;
                c
            }
            Err(problem) => {
                let moved = witness
                    .last_seen(&gov.log_id)
                    .ok()
                    .flatten()
                    .is_some_and(|h| h.size > witnessed);
                if moved && stale < MAX_STALE_HEADS {
                    // Asked with a size that another job moved past: ask again (the same
                    // task, with the proof from the new size).
                    stale += 1;
                    continue;
                }
                if let Err(e) = record_refused_head(training.store.as_ref(), &gov.log_id, &problem)
                {
                    tracing::warn!("`{name}`: recording the refused head: {e}");
                }
                refuse(&mut coord, &problem, "refusal").await;
                return Err(NodeError::Refused(problem));
            }
        };
        if let Some((head, _)) = &cosigned {
            witnessed = head.size;
        }
        let state = JobState::try_from(task.state).unwrap_or(JobState::Failed);
        if state != JobState::Running
            && let Some((head, cosig)) = &cosigned
        {
            // The final head: hand the cosignature over before leaving.
            if let Err(s) = coord
                .cosign(pb::CosignRequest {
                    cosignature_json: cosig.clone(),
                    tree_head_json: serde_json::to_string(head).unwrap_or_default(),
                })
                .await
            {
                tracing::warn!(
                    "`{name}`: the coordinator refused the final cosignature: {}",
                    s.message()
                );
            }
        }
        // The owner's consent is checked again at every round: a revoked job stops here.
        if state == JobState::Running
            && let Err(w) = gov.still_allowed(&opts, &request)
        {
            withdraw_consent(&mut coord, &w).await;
            return Err(NodeError::Refused(w.problem));
        }
        match state {
            JobState::Running => {}
            JobState::Finished => {
                training.forget_sent();
                if let Some((_, Some((ledger, dataset)))) = &private
                    && let Err(e) = ledger.mark_finished(dataset, &spec.job.id)
                {
                    tracing::warn!("`{name}`: ledger: {e}");
                }
                return Ok(NodeSummary {
                    rounds,
                    finished: true,
                    message: String::new(),
                });
            }
            _ => {
                training.forget_sent();
                return Ok(NodeSummary {
                    rounds,
                    finished: false,
                    message: task.message,
                });
            }
        }
        let round = task.round;
        let global = task.params;
        // RES-007: a coordinator that restarted before it committed this round asks for it
        // again: the same bytes go again (never a fresh update: the round was trained once).
        // Under masking (RES-011) the round's client is rebuilt from its stored seed, and each
        // stage is answered as the first time, or not at all.
        let trained_from = model_digest(&global);
        let (update, fresh) = if let Some(bytes) = training.sent(round, &trained_from) {
            let update = pb::SubmitRequest::decode(bytes)
                .map_err(|e| NodeError::Job(format!("training record: {e}")))?;
            tracing::info!("`{name}`: round {round} asked again; sending the same update");
            after = round;
            if spec.job.scheme == SchemeKind::Masking {
                client = replayed_masking_client(
                    &training,
                    &update,
                    (&spec, &digest, round, trained_from),
                    (&name, &certified),
                )?;
            }
            (update, false)
        } else {
            let problem = if round <= after {
                Some(format!("round {round} comes after round {after}"))
            } else if round > spec.job.rounds {
                // Every round spends privacy: never train beyond what the job (and the ledger) allow.
                Some(format!(
                    "round {round} is beyond the job's {} rounds",
                    spec.job.rounds
                ))
            } else if global.len() != model.param_count() {
                Some(format!(
                    "round {round}: the coordinator sent {} parameters, the model has {}",
                    global.len(),
                    model.param_count()
                ))
            } else if global.iter().any(|v| !v.is_finite()) {
                Some(format!(
                    "TRAIN-002 round {round}: the global model has non-finite parameters"
                ))
            } else if !seen_models.insert(model_digest(&global)) {
                // Training twice from one model would let the coordinator difference two sums.
                Some(format!(
                    "round {round}: the coordinator sent a global model this owner already trained from"
                ))
            } else {
                training.check(round, &model_digest(&global), spec.job.rounds)
            };
            if let Some(problem) = problem {
                refuse(&mut coord, &problem, "refusal").await;
                return Err(NodeError::Job(problem));
            }
            after = round;
            let mask_seed = fresh_seed();
            if spec.job.scheme == SchemeKind::Masking {
                client = masking_client(
                    &spec,
                    &digest,
                    (round, trained_from),
                    (&name, mask_seed),
                    &certified,
                )?;
            }
            if spec.job.scheme.uses_aggregators() {
                client = multi_client(
                    &spec,
                    &join.aggregator_endpoints,
                    &opts.creds,
                    &name,
                    &mut agg_keys,
                )
                .await?;
            }
            let cfg = TrainConfig {
                epochs: spec.training.local_epochs,
                batch_size: spec.training.batch_size,
                learning_rate: spec.training.learning_rate,
                l2: spec.training.l2,
                proximal_mu: spec.training.proximal_mu.unwrap_or(0.0),
                seed: spec.job.seed ^ (u64::from(round) << 32) ^ name_seed(&name),
            };
            // Shared, not copied: the dataset can be large and every round hands it to a thread.
            let (model2, data2) = (model.clone(), std::sync::Arc::clone(&data));
            let dp_cfg = dp_run.clone();
            let mut dp_rngs = dp_state.take();
            let mut ddg_rng_round = ddg_rng.take();
            let ddg_seed = crate::coordinator::ClientDp::round_seed(&digest, round);
            let mut user = worker.take();
            let user_launch = launch.clone();
            let (job_rounds, deadline) = (
                spec.job.rounds,
                Duration::from_secs_f64(spec.job.round_timeout_secs),
            );
            // Training and encryption are CPU work: run them off the async executor.
            let trained = tokio::task::spawn_blocking(move || {
                let params = match (&dp_cfg, &mut dp_rngs) {
                    // User code: a confined process trains; the node keeps everything else.
                    _ if user_launch.is_some() => {
                        if let (None, Some(l)) = (&user, &user_launch) {
                            user = Some(
                                confide_trainer::usercode::Worker::start(
                                    l, &model2, &data2, job_rounds, deadline,
                                )
                                .map_err(TrainFail::code)?,
                            );
                        }
                        match user.as_mut() {
                            Some(w) => w
                                .round(&model2, round, &global, deadline)
                                .map_err(TrainFail::code)?,
                            None => return Err(TrainFail::from("user code: no worker".to_string())),
                        }
                    }
                    (Some(c), Some((sampler, noise))) => {
                        confide_ml::dpsgd::train_dp(
                            &model2,
                            &global,
                            &data2,
                            c,
                            sampler,
                            noise,
                            &mut |_, _| {},
                        )
                        .map_err(|e| e.to_string())?
                        .params
                    }
                    _ => {
                        confide_ml::train::train(&model2, &global, &data2, &cfg)
                            .map_err(|e| e.to_string())?
                            .params
                    }
                };
                let delta: Vec<f32> = params.iter().zip(&global).map(|(n, o)| n - o).collect();
                // A NaN or infinity would be encoded as some number and the model would stop
                // moving without a word: say that training diverged instead.
                if delta.iter().any(|v| !v.is_finite()) {
                    return Err(TrainFail::Local(format!(
                        "{DIVERGED} in round {round}: local training produced non-finite parameters (lower training.learning_rate)"
                    )));
                }
                let encoded = match (&client_level, &mut ddg_rng_round) {
                    (Some(c), Some(rng)) => c
                        .ddg
                        .encode(&delta, ddg_seed, rng)
                        .map_err(|e| e.to_string())?,
                    _ => fixed.encode_all(&delta),
                };
                let payload = client.start(&encoded).map_err(|e| e.to_string())?;
                Ok::<_, TrainFail>((payload, client, dp_rngs, ddg_rng_round, encoded, user))
            })
            .await
            .map_err(|e| NodeError::Job(e.to_string()))?;
            let (payload, returned, dp_rngs, ddg_back, encoded, user_back) = match trained {
                Ok(t) => t,
                // User code's failures: the coordinator gets the numbered reason only,
                // nothing the code wrote or chose.
                Err(TrainFail::Code { local, public }) => {
                    refuse(&mut coord, &public, "refusal").await;
                    return Err(NodeError::Job(local));
                }
                Err(TrainFail::Local(problem)) => {
                    if problem.starts_with(DIVERGED) {
                        refuse(&mut coord, &problem, "refusal").await;
                    }
                    return Err(NodeError::Job(problem));
                }
            };
            worker = user_back;
            client = returned;
            dp_state = dp_rngs;
            ddg_rng = ddg_back;
            let c = sign_contribution(
                &signing,
                &digest,
                Unsigned {
                    owner: name.clone(),
                    round,
                    stage: 0,
                    model_digest: trained_from,
                    payload,
                },
            );
            // Consent is checked once more before the update leaves: a revocation during training
            // keeps this round's update at home.
            if let Err(w) = gov.still_allowed(&opts, &request) {
                withdraw_consent(&mut coord, &w).await;
                return Err(NodeError::Refused(w.problem));
            }
            // RES-005 and RES-007: the round, its model and the update itself are recorded
            // before the update leaves, so that no restart of this node or of the coordinator
            // makes it train this round or from this model again, and a coordinator that lost
            // the round gets the same bytes again.
            let update = pb::SubmitRequest {
                privacy: claim.clone(),
                contribution: Some(crate::wire::to_pb(c)),
                ..Default::default()
            };
            let masking = (spec.job.scheme == SchemeKind::Masking).then(|| MaskingRecord {
                round,
                seed: mask_seed,
                encoded,
                stages: BTreeMap::new(),
            });
            if let Err(e) = training.record(round, &trained_from, &update.encode_to_vec(), masking)
            {
                refuse(&mut coord, WITNESS_UNUSABLE, "refusal").await;
                return Err(e);
            }
            confide_core::crash::point("node-recorded", round);
            confide_core::crash::delay_point("node-before-submit", round);
            (update, true)
        };
        let Some(reply) = submit(&mut coord, update, cosigned.as_ref(), &spec).await? else {
            // The update is stored: a coordinator that lost it asks for this round again
            // (RES-007, RES-011); one that has it goes on without this owner.
            tracing::warn!(
                "`{name}`: round {round}: the coordinator could not be reached while the \
                 update was sent; waiting for it to ask again or go on"
            );
            rounds += u32::from(fresh);
            continue;
        };
        if !reply.accepted {
            // An honest node's update is only refused when something is broken; leave the job
            // at once so the round does not wait for this owner until its deadline.
            let problem = format!("round {round}: update rejected: {}", reply.detail);
            refuse(&mut coord, &problem, "refusal").await;
            return Err(NodeError::Refused(problem));
        }
        if spec.job.scheme == SchemeKind::Masking {
            masking_stages(
                &mut coord,
                (&mut client, &mut training),
                &signing,
                (&digest, &name, round, trained_from),
                (&opts, &spec, &certified),
                opts.crash_after_stage.filter(|_| fresh),
                &|| gov.still_allowed(&opts, &request),
            )
            .await?;
        }
        if !fresh {
            continue;
        }
        rounds += 1;
        if opts.crash_after_round == Some(round) {
            tracing::warn!("`{name}`: simulated crash after round {round}");
            std::process::exit(3);
        }
    }
}

/// Why a round's training task failed: the node's own error, or user code's, which has a
/// separate public reason (only that one reaches the coordinator).
enum TrainFail {
    Local(String),
    Code { local: String, public: String },
}

impl From<String> for TrainFail {
    fn from(s: String) -> Self {
        TrainFail::Local(s)
    }
}

impl TrainFail {
    fn code(e: confide_trainer::usercode::CodeError) -> Self {
        TrainFail::Code {
            local: e.to_string(),
            public: e.public(),
        }
    }
}

/// Sends an update (`update` without its tree head), with the cosigned head of this task.
/// `None`: the coordinator could not be reached, so whether it has the update is unknown.
async fn submit(
    coord: &mut Coordinator,
    mut update: pb::SubmitRequest,
    cosigned: Option<&(SignedTreeHead, String)>,
    spec: &JobSpec,
) -> Result<Option<pb::SubmitReply>, NodeError> {
    if let Some((head, cosig)) = cosigned {
        update.tree_head_json = serde_json::to_string(head).unwrap_or_default();
        update.cosignature_json.clone_from(cosig);
    }
    match coord
        .submit(with_deadline(update, call_deadline(spec)))
        .await
    {
        Ok(reply) => Ok(Some(reply.into_inner())),
        Err(s) if lost_contact(&s) => Ok(None),
        Err(s) => Err(call_failed("submit", &s, spec)),
    }
}

/// How long a node waits for one aggregator's key.
const KEY_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's connections to the aggregators, kept across rounds, and their last known keys.
#[derive(Debug, Default)]
struct AggregatorDirectory {
    channels: Vec<Option<crate::fleet::JobChannel>>,
    keys: Vec<Option<Vec<u8>>>,
    /// The job's name, sent with every request (aggregator daemons serve many jobs).
    header: crate::fleet::JobHeader,
}

/// Fetches aggregator `i`'s HPKE key over `channel` and checks that the aggregator's certified
/// key (CA, name, role, revocation) signed it: a TLS name alone does not say that the
/// certificate is still valid.
async fn fetch_aggregator_key(
    multi: &confide_secagg::aggregators::MultiParams,
    channel: crate::fleet::JobChannel,
    i: usize,
    ca_der: &[u8],
    creds: &Credentials,
) -> Result<Vec<u8>, NodeError> {
    let agg = confide_secagg::aggregators::aggregator_name(i);
    let reply = pb::aggregator_client::AggregatorClient::new(channel)
        .get_public_key(pb::PublicKeyRequest::default())
        .await
        .map_err(|s| NodeError::Refused(format!("{agg}: {}", s.message())))?
        .into_inner();
    let key = confide_secagg::aggregators::parse_public_key(&reply.public_key_json)
        .map_err(|e| NodeError::Job(format!("{agg}: {e}")))?;
    let signer =
        crate::aggregator::aggregator_signer(&reply.certificate, ca_der, &creds.revocations, i)
            .map_err(NodeError::Refused)?;
    if !confide_secagg::aggregators::verify_key_signature(
        multi,
        i,
        &key,
        &signer,
        &reply.key_signature,
    ) {
        return Err(NodeError::Refused(format!(
            "{agg}: its public key is not signed by its certified key"
        )));
    }
    Ok(key)
}

/// A `shares` or `threshold` client with each aggregator's current key, fetched straight from
/// that aggregator (in parallel, over connections kept across rounds) and signed by its
/// certified key, so a restarted aggregator's new key is used from the next round on. An
/// aggregator that cannot be reached keeps its last known key (under `threshold` the round
/// goes on without it); at the first round every one must answer.
async fn multi_client(
    spec: &JobSpec,
    endpoints: &[String],
    creds: &Credentials,
    name: &str,
    dir: &mut AggregatorDirectory,
) -> Result<Box<dyn AggregationClient>, NodeError> {
    let multi = crate::aggregator::multi_params(spec)?;
    if endpoints.len() != multi.n {
        return Err(NodeError::Refused(format!(
            "the coordinator lists {} aggregators, the job has {}",
            endpoints.len(),
            multi.n
        )));
    }
    dir.keys.resize(multi.n, None);
    dir.channels.resize(multi.n, None);
    let ca_der = creds
        .ca_der()
        .map_err(|e| NodeError::Job(format!("CA: {e}")))?;
    let fetches = endpoints.iter().enumerate().map(|(i, ep)| {
        let (multi, ca_der, known) = (&multi, &ca_der, dir.channels[i].clone());
        let header = dir.header.clone();
        async move {
            let channel = match known {
                Some(ch) => ch,
                None => {
                    let agg = confide_secagg::aggregators::aggregator_name(i);
                    tonic::service::interceptor::InterceptedService::new(
                        connect(ep, &agg, creds).await?,
                        header,
                    )
                }
            };
            // A hung aggregator must not stall the owner's round.
            let key = tokio::time::timeout(
                KEY_FETCH_TIMEOUT,
                fetch_aggregator_key(multi, channel.clone(), i, ca_der, creds),
            )
            .await
            .unwrap_or_else(|_| {
                Err(NodeError::Refused(format!(
                    "{}: no key within {} s",
                    confide_secagg::aggregators::aggregator_name(i),
                    KEY_FETCH_TIMEOUT.as_secs()
                )))
            });
            Ok::<_, NodeError>((channel, key))
        }
    });
    let fetched = futures_util::future::join_all(fetches).await;
    for (i, f) in fetched.into_iter().enumerate() {
        let agg = confide_secagg::aggregators::aggregator_name(i);
        let key = match f {
            Ok((channel, key)) => {
                // A connection whose call failed is rebuilt at the next round.
                dir.channels[i] = key.is_ok().then_some(channel);
                key
            }
            Err(e) => {
                dir.channels[i] = None;
                Err(e)
            }
        };
        match (key, &dir.keys[i]) {
            (Ok(key), _) => dir.keys[i] = Some(key),
            (Err(e), Some(_)) => tracing::warn!("{agg}: keeping its last key: {e}"),
            (Err(e), None) => return Err(e),
        }
    }
    let keys: Vec<Vec<u8>> = dir.keys.iter().flatten().cloned().collect();
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    Ok(Box::new(
        confide_secagg::MultiClient::new(multi, &keys, name, seed)
            .map_err(|e| NodeError::Job(e.to_string()))?,
    ))
}

/// Owner name → signing key, as certified by the federation CA.
type Certified = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>>;

/// A fresh masking client (fresh X25519 keys and self-mask seed) for `round`, trained from the
/// global model `trained_from`. It accepts another owner's advertised keys, and signatures over
/// `U3`, only when they verify under that owner's certified key.
fn masking_client(
    spec: &JobSpec,
    digest: &[u8; 32],
    (round, trained_from): (u32, [u8; 32]),
    (name, seed): (&str, [u8; 32]),
    certified: &Certified,
) -> Result<Box<dyn AggregationClient>, NodeError> {
    let cfg = crate::coordinator::masking_config(spec, digest, round);
    let (certified, digest) = (certified.clone(), *digest);
    let check: confide_secagg::masking::KeyCheck =
        Box::new(move |owner, stage, payload, signature| {
            let key = certified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(owner)
                .cloned()
                .ok_or_else(|| format!("no certificate for `{owner}` came with the key list"))?;
            let c = confide_secagg::Contribution {
                owner: owner.to_string(),
                round,
                stage,
                model_digest: trained_from,
                payload: payload.to_vec(),
                signature: signature.to_vec(),
            };
            confide_secagg::contribution::verify(c, &key, &digest)
                .map(drop)
                .map_err(|e| e.to_string())
        });
    Ok(Box::new(
        confide_secagg::masking::MaskingClient::new(cfg, name, seed, check)
            .map_err(|e| NodeError::Job(e.to_string()))?,
    ))
}

/// Replaces the certified keys with those of the owner certificates that came with a key list
/// and pass the checks (chain to the federation CA, not revoked now, a node of this job). A
/// certificate that fails is left out (with a warning): its owner's keys and signatures are then
/// refused, and only a neighbour's refusal stops this owner's round.
fn certify_owners(opts: &NodeOptions, spec: &JobSpec, certs: &[Vec<u8>], certified: &Certified) {
    let mut fresh = std::collections::BTreeMap::new();
    let ca = match opts.creds.ca_der() {
        Ok(ca) => ca,
        Err(e) => {
            tracing::warn!("owner certificates: {e}");
            Vec::new()
        }
    };
    for cert in certs {
        let checked = crate::pki::verify_party_certificate(cert, &ca)
            .map_err(|e| e.to_string())
            .and_then(|id| {
                opts.creds
                    .revocations
                    .check(&id.id)
                    .map_err(|e| e.to_string())?;
                if id.role != confide_core::Role::Node || !spec.owners.contains(&id.name) {
                    return Err(format!(
                        "`{}` ({}) is not an owner of this job",
                        id.name, id.role
                    ));
                }
                Ok(id)
            });
        match checked {
            Ok(id) => {
                fresh.insert(id.name, id.public_key);
            }
            Err(e) => tracing::warn!("an owner certificate is left out: {e}"),
        }
    }
    *certified.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
}

/// The later stages of a multi-stage scheme: waits for each stage's broadcast, answers it,
/// signs and submits the answer. Returns when the round is over for this owner.
async fn masking_stages(
    coord: &mut Coordinator,
    (client, training): (&mut Box<dyn AggregationClient>, &mut TrainingRecord),
    signing: &confide_crypto::SigningKey,
    (digest, name, round, trained_from): (&[u8; 32], &str, u32, [u8; 32]),
    (opts, spec, certified): (&NodeOptions, &JobSpec, &Certified),
    crash_after: Option<(u32, u32)>,
    consent: &(dyn Fn() -> Result<(), Withdrawn> + Sync),
) -> Result<(), NodeError> {
    if crash_after == Some((round, 0)) {
        tracing::warn!("`{name}`: simulated crash after round {round}, stage 0");
        std::process::exit(3);
    }
    for stage in 1..=4u32 {
        let task = match coord
            .next_stage(with_deadline(
                pb::NextStageRequest {
                    round,
                    after_stage: stage - 1,
                },
                call_deadline(spec),
            ))
            .await
        {
            Ok(t) => t.into_inner(),
            // The coordinator went away: one that restarts asks for the round again.
            Err(s) if lost_contact(&s) => return Ok(()),
            Err(s) => return Err(call_failed("next stage", &s, spec)),
        };
        if task.round != round || task.state != JobState::Running as i32 || task.stage != stage {
            // The round ended without this owner (it failed, or this owner was excluded).
            return Ok(());
        }
        if stage == 1 {
            certify_owners(opts, spec, &task.owner_certificates, certified);
        }
        let broadcast = confide_crypto::sha256(&task.payload);
        // Share and mask computation is CPU work: keep it off the async executor.
        let mut c = std::mem::replace(client, Box::new(PlainClient));
        let (answer, back) = tokio::task::spawn_blocking(move || {
            let a = c.on_broadcast(stage, &task.payload);
            (a, c)
        })
        .await
        .map_err(|e| NodeError::Job(e.to_string()))?;
        *client = back;
        // The masked input (stage 2) carries the owner's data: consent is checked again.
        if let Err(w) = consent() {
            withdraw_consent(coord, &w).await;
            return Err(NodeError::Refused(w.problem));
        }
        let payload = match answer
            .map_err(|e| NodeError::Refused(format!("round {round}, stage {stage}: {e}")))
            .and_then(|p| training.stage_answer((round, stage), broadcast, p))
        {
            Ok(p) => p,
            Err(e) => {
                let problem = e.to_string();
                refuse(coord, &problem, "refusal").await;
                return Err(e);
            }
        };
        let c = sign_contribution(
            signing,
            digest,
            Unsigned {
                owner: name.to_string(),
                round,
                stage,
                model_digest: trained_from,
                payload,
            },
        );
        let update = pb::SubmitRequest {
            contribution: Some(crate::wire::to_pb(c)),
            ..Default::default()
        };
        let Some(reply) = submit(coord, update, None, spec).await? else {
            return Ok(());
        };
        if !reply.accepted {
            let problem = format!("round {round}, stage {stage}: rejected: {}", reply.detail);
            refuse(coord, &problem, "refusal").await;
            return Err(NodeError::Refused(problem));
        }
        if crash_after == Some((round, stage)) {
            tracing::warn!("`{name}`: simulated crash after round {round}, stage {stage}");
            std::process::exit(3);
        }
    }
    Ok(())
}

/// RES-011: the masking client of round `round` rebuilt from its stored seed and encoded
/// update, checked to produce the stored first message again.
fn replayed_masking_client(
    training: &TrainingRecord,
    update: &pb::SubmitRequest,
    (spec, digest, round, trained_from): (&JobSpec, &[u8; 32], u32, [u8; 32]),
    (name, certified): (&str, &Certified),
) -> Result<Box<dyn AggregationClient>, NodeError> {
    let m = training.masking(round).ok_or_else(|| {
        NodeError::Job(format!(
            "training record: round {round} has no masking record"
        ))
    })?;
    let mut client = masking_client(
        spec,
        digest,
        (round, trained_from),
        (name, m.seed),
        certified,
    )?;
    let first = client
        .start(&m.encoded)
        .map_err(|e| NodeError::Job(e.to_string()))?;
    let sent = update.contribution.as_ref().map(|c| c.payload.as_slice());
    if sent != Some(first.as_slice()) {
        return Err(NodeError::Job(format!(
            "RES-011 round {round}: the masking client rebuilt from its seed does not give the \
             message sent; nothing is sent"
        )));
    }
    Ok(client)
}

/// Whether a failed call lost the coordinator (it could not be reached, or the connection
/// broke), as opposed to its refusal or this node's own deadline.
fn lost_contact(s: &tonic::Status) -> bool {
    crate::roles::is_transport_failure(s) && !matches!(s.code(), tonic::Code::Cancelled)
}

/// A fresh 32-byte seed from the operating system.
fn fresh_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    seed
}

/// What this owner's data spends on the job.
#[derive(Debug, Clone)]
enum Spend {
    /// Record level: DP-SGD on the owner's data.
    Record(confide_ml::dpsgd::PrivateRun),
    /// Client level: the distributed discrete Gaussian on the owner's update.
    Client(crate::coordinator::ClientDp),
}

impl Spend {
    fn cost(&self) -> (f64, f64) {
        match self {
            Spend::Record(run) => (run.plan.epsilon, run.plan.delta),
            Spend::Client(c) => (c.epsilon, c.delta),
        }
    }

    fn claim(&self) -> pb::PrivacyClaim {
        match self {
            Spend::Record(run) => pb::PrivacyClaim {
                accountant: run.plan.accountant.as_str().into(),
                epsilon: run.plan.epsilon,
                delta: run.plan.delta,
                noise_multiplier: run.plan.noise_multiplier,
                clip_norm: run.config.clip_norm,
                sampling_rate: run.config.sampling_rate,
                steps: run.plan.steps,
            },
            Spend::Client(c) => pb::PrivacyClaim {
                accountant: "ddg-rdp".into(),
                epsilon: c.epsilon,
                delta: c.delta,
                noise_multiplier: c.noise_multiplier(),
                clip_norm: c.ddg.l2_clip,
                sampling_rate: 1.0,
                steps: 0,
            },
        }
    }
}

/// What the owner spends and, when it keeps a ledger, the ledger and dataset name.
type Private = (Spend, Option<(confide_dp::ledger::BudgetLedger, String)>);

/// Plans the job's DP for a dataset of `rows` rows. `Err` is a refusal to explain to the
/// coordinator.
fn plan_privacy(spec: &JobSpec, rows: usize) -> Result<Option<Spend>, String> {
    let Some(privacy) = &spec.privacy else {
        return Ok(None);
    };
    Ok(Some(match privacy.level {
        confide_core::PrivacyLevel::Record => {
            let t = &spec.training;
            Spend::Record(
                confide_ml::dpsgd::plan_private_run(
                    privacy,
                    rows,
                    t.batch_size,
                    t.local_epochs,
                    u64::from(spec.job.rounds),
                    t.learning_rate,
                    t.l2,
                )
                .map_err(|e| format!("privacy plan: {e}"))?,
            )
        }
        confide_core::PrivacyLevel::Client => Spend::Client(
            crate::coordinator::client_dp(spec)?
                .ok_or("internal: client-level privacy without a plan")?,
        ),
    }))
}

/// A ledger file, the dataset's name in it, and the policy's lifetime budget `(ε, δ)`.
type LedgerTarget = (PathBuf, String, Option<(f64, f64)>);

/// Debits the job's (ε, δ) from the ledger (when the owner keeps one). `Err` is a refusal.
/// Debits the job's ε from the dataset's ledger, once: `rejoin` (this owner approved the job
/// before it restarted) only checks that the debit is there and the job not ended.
fn debit_ledger(
    spec: &JobSpec,
    spend: Option<Spend>,
    ledger: Option<&LedgerTarget>,
    rejoin: bool,
) -> Result<Option<Private>, String> {
    let ledger = match ledger {
        Some((path, dataset, lifetime)) => {
            let l = confide_dp::ledger::BudgetLedger::open(path)
                .map_err(|e| format!("privacy ledger {}: {e}", path.display()))?;
            // The policy's lifetime budget is the dataset's budget in the ledger.
            if let Some((e, d)) = lifetime {
                let b = confide_dp::ledger::Budget::new(*e, *d).map_err(|e| e.to_string())?;
                if l.budget(dataset).map_err(|e| e.to_string())? != Some(b) {
                    l.set_budget(dataset, b).map_err(|e| {
                        format!("privacy ledger: setting the policy's lifetime budget: {e}")
                    })?;
                }
            }
            Some((l, dataset.clone()))
        }
        None => None,
    };
    let Some(spend) = spend else {
        if let Some((l, dataset)) = &ledger
            && l.budget(dataset).map_err(|e| e.to_string())?.is_some()
        {
            return Err(format!(
                "dataset `{dataset}` has a privacy budget and this job has no [privacy] section (its ε would be unbounded)"
            ));
        }
        return Ok(None);
    };
    if let Some((l, dataset)) = &ledger {
        let (epsilon, delta) = spend.cost();
        let cost = confide_dp::ledger::Budget::new(epsilon, delta).map_err(|e| e.to_string())?;
        if rejoin {
            l.mark_started(dataset, &spec.job.id)
                .map_err(|e| format!("privacy budget (rejoining): {e}"))?;
        } else {
            l.start_job(dataset, &spec.job.id, cost)
                .map_err(|e| format!("privacy budget: {e}"))?;
        }
    }
    Ok(Some((spend, ledger)))
}

/// What a node tells the coordinator when its witness store cannot be used.
const WITNESS_UNUSABLE: &str = "WIT-001 the owner's witness store cannot be used";

/// What a node tells the coordinator when its privacy ledger refuses the job or fails.
const LEDGER_REFUSES: &str =
    "LEDGER-001 the owner's privacy budget ledger refuses this job or cannot be used";

/// The numbered reason a node gives when local training diverged.
pub const DIVERGED: &str = "TRAIN-001 training diverged";

/// Tells the coordinator this owner leaves the job, and why (`kind`: data or refusal; a
/// revocation goes through [`withdraw_consent`]); the coordinator records it in the audit log.
async fn refuse(coord: &mut Coordinator, problem: &str, kind: &str) {
    send_withdrawal(
        coord,
        pb::WithdrawRequest {
            reason: problem.to_string(),
            kind: kind.to_string(),
            statement_json: String::new(),
        },
    )
    .await;
}

/// Best effort, and bounded: a coordinator that does not answer cannot hold the node.
async fn send_withdrawal(coord: &mut Coordinator, withdraw: pb::WithdrawRequest) {
    let _ = coord
        .withdraw(with_deadline(withdraw, SILENCE_MARGIN))
        .await;
}

/// Why a node leaves a running job because its owner's consent is gone: the reason, and the
/// owner's signed revocation when the owner revoked from the node's dashboard.
#[derive(Debug, Clone)]
pub struct Withdrawn {
    /// The reason the coordinator logs.
    pub problem: String,
    /// The owner's signed statement (`SignedStatement` JSON, action `revoke`).
    pub statement: Option<String>,
}

/// Tells the coordinator this owner withdraws its consent (kind `revocation`), with the
/// owner's signed statement when there is one.
async fn withdraw_consent(coord: &mut Coordinator, w: &Withdrawn) {
    send_withdrawal(
        coord,
        pb::WithdrawRequest {
            reason: w.problem.clone(),
            kind: "revocation".into(),
            statement_json: w.statement.clone().unwrap_or_default(),
        },
    )
    .await;
}

/// The owners' revocations of running jobs (the node dashboard's revoke), by manifest hash:
/// the owner's signed statement (JSON). A job revoked here stops at its next round.
pub const REVOKED: &str = "node.revoked";

/// Records the owner's signed revocation of job `hash` in the node's store.
///
/// # Errors
/// The store failed.
pub fn record_revocation(
    store: &dyn confide_store::Store,
    hash: &[u8; 32],
    statement_json: &str,
) -> Result<(), confide_store::StoreError> {
    use confide_store::StoreExt as _;
    store.transact(|txn| txn.put(REVOKED, hash, statement_json.as_bytes()))
}

/// The owner's signed revocation of job `hash`, when the owner revoked it.
///
/// # Errors
/// The store failed.
pub fn owner_revocation(
    store: &dyn confide_store::Store,
    hash: &[u8; 32],
) -> Result<Option<String>, confide_store::StoreError> {
    use confide_store::StoreExt as _;
    let raw = store.read(|txn| txn.get(REVOKED, hash))?;
    Ok(raw.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The audit-log heads this node's witness refused (a rollback, a fork, a rewritten history,
/// a bad signature), by time: the owner's dashboard shows them as alerts.
const REFUSED_HEADS: &str = "node.refused_heads";

/// A head the witness refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefusedHead {
    /// The log (its operator's party id).
    pub log_id: String,
    /// Why it was refused.
    pub reason: String,
    /// When (Unix milliseconds).
    pub at_ms: u64,
}

fn record_refused_head(
    store: &dyn confide_store::Store,
    log_id: &str,
    reason: &str,
) -> Result<(), String> {
    use confide_store::StoreExt as _;
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let json = serde_json::to_vec(&RefusedHead {
        log_id: log_id.to_string(),
        reason: reason.to_string(),
        at_ms,
    })
    .map_err(|e| e.to_string())?;
    store
        .transact(|txn| txn.append(REFUSED_HEADS, &json).map(drop))
        .map_err(|e| e.to_string())
}

/// Every head this node's witness refused, oldest first.
///
/// # Errors
/// The store failed or holds a malformed entry.
pub fn refused_heads(store: &dyn confide_store::Store) -> Result<Vec<RefusedHead>, String> {
    use confide_store::StoreExt as _;
    let rows = store
        .read(|txn| txn.log_range(REFUSED_HEADS, 0..u64::MAX))
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|(_, v)| serde_json::from_slice(v).map_err(|e| format!("refused heads: {e}")))
        .collect()
}

/// What this node sent for a job, round by round (sizes and times, never the data), from
/// its store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SentRound {
    /// The round.
    pub round: u32,
    /// The update's size as sent, in bytes.
    pub bytes: u64,
    /// When it was recorded, just before it left (Unix milliseconds).
    pub at_ms: u64,
}

/// Per job and round, what the node sent ([`SentRound`], JSON).
const SENT_LOG: &str = "node.sent_log";

/// Every round this node sent an update for the job of digest `hash` (`coordinator::job_digest`), in order.
///
/// # Errors
/// The store failed or holds a malformed entry.
pub fn sent_rounds(
    store: &dyn confide_store::Store,
    hash: &[u8; 32],
) -> Result<Vec<SentRound>, String> {
    use confide_store::StoreExt as _;
    let rows = store
        .read(|txn| txn.scan_prefix(SENT_LOG, hash))
        .map_err(|e| e.to_string())?;
    rows.iter()
        .map(|(_, v)| serde_json::from_slice(v).map_err(|e| format!("sent log: {e}")))
        .collect()
}

/// Why a node did not approve a job on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undecided {
    /// No rule approves it automatically: the owner decides (a co-signature).
    NeedsOwner(String),
    /// The policy, the data or the job itself refuses it.
    Refused(String),
}

impl Undecided {
    fn into_message(self) -> String {
        match self {
            Undecided::NeedsOwner(m) | Undecided::Refused(m) => m,
        }
    }
}

/// A node daemon's verdict on a job offered to it, before the job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A policy rule approves it automatically (the basis, in words).
    Approve(String),
    /// The owner decides: the job waits in the node's inbox (why, in words).
    Ask(String),
    /// It is refused (the reason: a numbered rule where there is one; it names no local path).
    Reject(String),
}

/// A node daemon's review of a job offered to it: the verdict, what the job costs this
/// dataset, and each rule of the owner's policy on it (for the owner's inbox).
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// What the daemon does with the job.
    pub verdict: Verdict,
    /// What the job spends from this dataset's budget, and the mechanism behind it, when
    /// it is private and the checks got that far.
    pub cost: Option<PrivacyCost>,
    /// Each policy rule's own verdict, in order (empty without a policy, or when the checks
    /// stopped before the policy).
    pub rules: Vec<confide_governance::policy::RuleVerdict>,
}

/// What a private job costs one dataset, and the mechanism's parameters, as the node's
/// accountant computed them for that dataset.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyCost {
    /// ε over the whole job.
    pub epsilon: f64,
    /// δ.
    pub delta: f64,
    /// σ: the noise's standard deviation over the clip norm.
    pub noise_multiplier: f64,
    /// The clip norm (per record, or per update at client level).
    pub clip_norm: f64,
    /// The Poisson sampling rate q of DP-SGD (record level; 1 at client level).
    pub sampling_rate: f64,
    /// Noisy steps (DP-SGD steps, or rounds at client level).
    pub steps: u64,
    /// The accountant (`rdp`, `pld`, `ddg-rdp`).
    pub accountant: String,
    /// `record` or `client`.
    pub level: String,
}

impl Assessment {
    fn refused(why: String) -> Self {
        Self {
            verdict: Verdict::Reject(why),
            cost: None,
            rules: Vec::new(),
        }
    }
}

/// What a job costs a dataset of `rows` records, as a node's accountant computes it when
/// the job is offered (`None` for a job without DP).
///
/// # Errors
/// The job's privacy settings cannot be met for this dataset (the reason, in words).
pub fn privacy_cost(spec: &JobSpec, rows: usize) -> Result<Option<PrivacyCost>, String> {
    Ok(plan_privacy(spec, rows)?.as_ref().map(Spend::privacy_cost))
}

impl Spend {
    fn privacy_cost(&self) -> PrivacyCost {
        let c = self.claim();
        PrivacyCost {
            epsilon: c.epsilon,
            delta: c.delta,
            noise_multiplier: c.noise_multiplier,
            clip_norm: c.clip_norm,
            sampling_rate: c.sampling_rate,
            steps: c.steps,
            accountant: c.accountant,
            level: match self {
                Spend::Record(_) => "record".into(),
                Spend::Client(_) => "client".into(),
            },
        }
    }
}

/// Checks a job offered by a long-running coordinator against this node's manifest checks,
/// data and policy, exactly as [`run_node`] will when the job runs (the ledger is debited
/// only then).
pub fn assess(
    opts: &NodeOptions,
    manifest_json: &str,
    coordinator_certificate: &[u8],
) -> Assessment {
    let spec = match SignedManifest::from_json(manifest_json).and_then(|m| m.manifest.job_spec()) {
        Ok(s) => s,
        Err(e) => return Assessment::refused(format!("job manifest refused: {e}")),
    };
    let join = pb::JoinReply {
        manifest_json: manifest_json.to_string(),
        coordinator_certificate: coordinator_certificate.to_vec(),
        ..Default::default()
    };
    let gov = match Governance::check(opts, &join, &spec) {
        Ok(g) => g,
        Err(problem) => return Assessment::refused(problem),
    };
    let rows = match load_job_data(&spec, &opts.data) {
        Ok(d) if d.is_empty() => {
            return Assessment::refused(
                DataError::Empty {
                    path: opts.data.display().to_string(),
                }
                .public_reason(&spec.data.features),
            );
        }
        Ok(d) => d.len(),
        Err(e) => return Assessment::refused(e.public_reason(&spec.data.features)),
    };
    let spend = match plan_privacy(&spec, rows) {
        Ok(s) => s,
        Err(problem) => return Assessment::refused(problem),
    };
    let request = gov.request(spend.as_ref().map(Spend::cost));
    let cost = spend.as_ref().map(Spend::privacy_cost);
    let rules = match Governance::policy(opts) {
        Ok(Some(policy)) => policy.review(&request, time::OffsetDateTime::now_utc()).1,
        _ => Vec::new(),
    };
    let verdict = match gov.decide(opts, &request) {
        Ok(basis) => Verdict::Approve(basis),
        Err(Undecided::NeedsOwner(why)) => Verdict::Ask(why),
        Err(Undecided::Refused(problem)) => Verdict::Reject(problem),
    };
    Assessment {
        verdict,
        cost,
        rules,
    }
}

/// What the node established about the job's governance when it joined.
struct Governance {
    manifest: confide_governance::manifest::VerifiedManifest,
    manifest_hash: [u8; 32],
    my_id: String,
    log_id: String,
    log_key: Vec<u8>,
    coordinator_id: String,
    revocations: std::sync::Arc<crate::pki::Revocations>,
}

impl Governance {
    /// Verifies the manifest (model owner's signature, approvals, that it describes the job
    /// the coordinator runs) and the coordinator's certificate (the audit log's key).
    fn check(opts: &NodeOptions, join: &pb::JoinReply, spec: &JobSpec) -> Result<Self, String> {
        let signed = SignedManifest::from_json(&join.manifest_json)
            .map_err(|e| format!("the coordinator sent no valid manifest: {e}"))?;
        let manifest = signed
            .verify()
            .map_err(|e| format!("job manifest refused: {e}"))?;
        if !manifest.manifest.describes(spec) {
            return Err(
                "job manifest refused: it does not describe the job the coordinator runs".into(),
            );
        }
        let ca = opts.creds.ca_der().map_err(|e| e.to_string())?;
        let coordinator = crate::pki::verify_party_certificate(&join.coordinator_certificate, &ca)
            .map_err(|e| format!("the coordinator's certificate: {e}"))?;
        if coordinator.role != confide_core::Role::Coordinator {
            return Err(format!("`{}` is not a coordinator", coordinator.name));
        }
        let revocations = opts.creds.revocations.clone();
        revocations.check(&coordinator.id)?;
        revocations
            .check(&manifest.manifest.model_owner.id)
            .map_err(|e| format!("the model owner: {e}"))?;
        Ok(Self {
            manifest_hash: manifest.hash,
            manifest,
            my_id: opts.creds.id(),
            log_id: coordinator.id.clone(),
            log_key: coordinator.public_key,
            coordinator_id: coordinator.id,
            revocations,
        })
    }

    fn request(&self, privacy: Option<(f64, f64)>) -> JobRequest {
        self.manifest.job_request(privacy)
    }

    /// The owner's policy, re-read. A file that cannot be read is reported here, on the
    /// owner's machine, with its path; the error (which reaches the coordinator) names none.
    fn policy(opts: &NodeOptions) -> Result<Option<Policy>, String> {
        opts.policy
            .as_ref()
            .map(|p| {
                Policy::load(p).map_err(|e| {
                    tracing::error!("policy: {e}");
                    "POL-003 the owner's policy cannot be read (the node's log says why)"
                        .to_string()
                })
            })
            .transpose()
    }

    /// Whether this owner approves the job, and on what basis.
    fn decide(&self, opts: &NodeOptions, request: &JobRequest) -> Result<String, Undecided> {
        if request.mode != Mode::Federated {
            return Err(Undecided::Refused(format!(
                "a node runs federated jobs; this one is `{}`",
                request.mode.as_str()
            )));
        }
        let owner = opts.approver.as_ref().unwrap_or(&self.my_id);
        let co_signed = self.manifest.approvals.contains(owner)
            || opts.approval.as_ref().is_some_and(|a| {
                a.role == confide_governance::manifest::SignatureRole::Approval
                    && a.signer == *owner
                    && a.verify(&self.manifest_hash).is_ok()
            });
        match Self::policy(opts).map_err(Undecided::Refused)? {
            Some(policy) => {
                let allowed = policy
                    .evaluate(request, time::OffsetDateTime::now_utc())
                    .map_err(|d| Undecided::Refused(d.to_string()))?;
                match (allowed.approval, co_signed) {
                    (Approval::Automatic, _) => Ok(format!("policy rule `{}`", allowed.rule)),
                    (Approval::CoSignature, true) => {
                        Ok(format!("co-signature (policy rule `{}`)", allowed.rule))
                    }
                    (Approval::CoSignature, false) => Err(Undecided::NeedsOwner(format!(
                        "policy rule `{}` requires this owner's co-signature of manifest {} (`confide job approve`, or `confide node inbox approve`)",
                        allowed.rule,
                        hex::encode(self.manifest_hash)
                    ))),
                }
            }
            None if co_signed => Ok("co-signature".into()),
            None => Err(Undecided::NeedsOwner(format!(
                "this owner has neither a policy that approves the job (--policy) nor co-signed manifest {} (`confide job approve`, or `confide node inbox approve`)",
                hex::encode(self.manifest_hash)
            ))),
        }
    }

    /// Re-reads the policy, the revocation list and the owner's revocations in the node's
    /// store (the dashboard's revoke): `Err` once the job is no longer allowed.
    fn still_allowed(&self, opts: &NodeOptions, request: &JobRequest) -> Result<(), Withdrawn> {
        let plain = |problem: String| Withdrawn {
            problem,
            statement: None,
        };
        self.revocations
            .check(&self.coordinator_id)
            .map_err(plain)?;
        self.revocations
            .check(&self.manifest.manifest.model_owner.id)
            .map_err(|e| plain(format!("revoked: the model owner: {e}")))?;
        if let Some(policy) = Self::policy(opts).map_err(plain)? {
            policy
                .evaluate(request, time::OffsetDateTime::now_utc())
                .map_err(|d| plain(d.to_string()))?;
        }
        if let Some(path) = &opts.witness_store {
            let store = confide_store::RedbStore::open_shared(path)
                .map_err(|_| plain(WITNESS_UNUSABLE.to_string()))?;
            if let Some(statement) = owner_revocation(store.as_ref(), &self.manifest_hash)
                .map_err(|_| plain(WITNESS_UNUSABLE.to_string()))?
            {
                return Err(Withdrawn {
                    problem: "revoked: the owner withdrew this dataset from the job (a signed \
                              statement in the node's store)"
                        .into(),
                    statement: Some(statement),
                });
            }
        }
        Ok(())
    }

    /// The ledger and dataset, with the policy's lifetime budget. A policy with a lifetime
    /// budget needs a ledger to enforce it.
    fn ledger(&self, opts: &NodeOptions) -> Result<Option<LedgerTarget>, String> {
        let policy = Self::policy(opts)?;
        let lifetime = policy.as_ref().and_then(|p| p.lifetime);
        match (&opts.ledger, &policy) {
            (None, Some(p)) if lifetime.is_some() => Err(format!(
                "the policy of dataset `{}` sets a lifetime ε; run the node with --ledger to enforce it",
                p.dataset
            )),
            (Some((_, dataset)), Some(p)) if *dataset != p.dataset => Err(format!(
                "the ledger's dataset is `{dataset}`, the policy's is `{}`",
                p.dataset
            )),
            (Some((path, dataset)), _) => Ok(Some((path.clone(), dataset.clone(), lifetime))),
            (None, _) => Ok(None),
        }
    }

    /// The witness, and the node's store it keeps its memory in (which also holds the
    /// node's training record, RES-005).
    fn witness(
        &self,
        opts: &NodeOptions,
    ) -> Result<(Witness, std::sync::Arc<dyn confide_store::Store>), NodeError> {
        let store: std::sync::Arc<dyn confide_store::Store> = match &opts.witness_store {
            Some(p) => confide_store::RedbStore::open_shared(p)
                .map_err(|e| NodeError::Job(format!("witness store {}: {e}", p.display())))?,
            None => std::sync::Arc::new(confide_store::MemoryStore::new()),
        };
        Ok((Witness::new(store.clone(), opts.creds.identity()), store))
    }

    /// Checks the task's tree head against what this witness saw and cosigns it.
    fn witness_head(
        &self,
        witness: &Witness,
        task: &pb::RoundTask,
    ) -> Result<Option<(SignedTreeHead, String)>, String> {
        if task.tree_head_json.is_empty() {
            // The coordinator signs a head for every round: a task without one means the log
            // is not being shown to its witnesses.
            return if task.state == JobState::Running as i32 {
                Err(
                    "the coordinator sent a round without a signed audit-log head to witness"
                        .into(),
                )
            } else {
                Ok(None)
            };
        }
        let head: SignedTreeHead = serde_json::from_str(&task.tree_head_json)
            .map_err(|e| format!("audit log: malformed tree head: {e}"))?;
        let proof = task
            .consistency_proof
            .iter()
            .map(|p| {
                <[u8; 32]>::try_from(p.as_slice())
                    .map_err(|_| "audit log: malformed proof".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cosig = witness
            .observe(&head, &self.log_key, &proof)
            .map_err(|e| format!("audit log of `{}`: {e}", self.log_id))?;
        Ok(Some((
            head,
            serde_json::to_string(&cosig).map_err(|e| e.to_string())?,
        )))
    }
}

fn name_seed(name: &str) -> u64 {
    let h = confide_crypto::sha256(name.as_bytes());
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RES-005, RES-007 and RES-008 as the node's store keeps them: a round, its model, the
    /// update as sent and the approval survive a restart (a new `TrainingRecord` on the same
    /// store), and a round or a model trained once is refused.
    #[test]
    fn the_training_record_survives_a_restart_and_refuses_a_second_training() {
        let store: std::sync::Arc<dyn confide_store::Store> =
            std::sync::Arc::new(confide_store::MemoryStore::new());
        let (job, other) = ([1u8; 32], [2u8; 32]);
        let (a, b, c) = ([0xa; 32], [0xb; 32], [0xc; 32]);
        let mut r = TrainingRecord::load(store.clone(), job).expect("load");
        assert!(!r.approved);
        assert_eq!(r.check(1, &a, 3), None);
        r.mark_approved().expect("approve");
        r.record(1, &a, b"update one", None).expect("record");
        r.record(2, &b, b"update two", None).expect("record");
        let r = TrainingRecord::load(store.clone(), job).expect("reload");
        assert!(r.approved);
        assert!(r.masking(2).is_none());
        assert_eq!(r.last_round(), 2);
        // The last update, for its own round and model only.
        assert_eq!(r.sent(2, &b), Some(&b"update two"[..]));
        assert_eq!(r.sent(2, &a), None);
        assert_eq!(r.sent(1, &a), None);
        // A round again, a model again, past the job's rounds: refused.
        assert!(r.check(2, &c, 3).is_some_and(|m| m.starts_with("RES-005")));
        assert!(
            r.check(3, &a, 3)
                .is_some_and(|m| m.contains("this global model"))
        );
        assert!(r.check(3, &c, 2).is_some_and(|m| m.contains("2 rounds")));
        assert_eq!(r.check(3, &c, 3), None);
        // RES-011: under masking, a stage is answered once per broadcast; a restart keeps it.
        let mut r = TrainingRecord::load(store.clone(), job).expect("reload");
        assert!(
            r.stage_answer((3, 1), [1; 32], vec![9]).is_err(),
            "no record yet"
        );
        let m = MaskingRecord {
            round: 3,
            seed: [7; 32],
            encoded: vec![-1, 2],
            stages: BTreeMap::new(),
        };
        r.record(3, &c, b"keys", Some(m)).expect("record");
        assert_eq!(
            r.stage_answer((3, 1), [1; 32], vec![9]).expect("first"),
            vec![9]
        );
        let mut r = TrainingRecord::load(store.clone(), job).expect("reload");
        assert_eq!(r.masking(3).map(|m| m.encoded.clone()), Some(vec![-1, 2]));
        assert_eq!(
            r.stage_answer((3, 1), [1; 32], vec![9]).expect("again"),
            vec![9]
        );
        let refused = r
            .stage_answer((3, 1), [2; 32], vec![9])
            .expect_err("another broadcast");
        assert!(refused.to_string().contains("RES-011"), "{refused}");
        let drift = r
            .stage_answer((3, 1), [1; 32], vec![8])
            .expect_err("another answer");
        assert!(drift.to_string().contains("RES-011"), "{drift}");
        // Another job of the same store is its own.
        let o = TrainingRecord::load(store, other).expect("other");
        assert!(!o.approved && o.last_round() == 0 && o.sent(2, &b).is_none());
    }
}
