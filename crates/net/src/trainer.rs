//! The confidential trainer over the network: `confide trainer` (the untrusted host),
//! `confide upload` (a data owner) and `confide fetch` (a model recipient), gRPC over mutual
//! TLS with the federation's certificates.
//!
//! The host relays requests to the trusted core (its own confined process, or in the host's
//! process under SML-1) and keeps only what the core hands back: envelopes encrypted to the
//! core, sealed blobs, and envelopes encrypted to recipients. Owners and recipients trust the
//! core's attestation evidence, not the host:
//!
//! - an owner asks for evidence with a fresh nonce, checks it against its attestation policy
//!   and the configuration it expects (the job, every owner's and recipient's certified key),
//!   and only then encrypts its CSV to the attested key and streams it;
//! - when every owner has uploaded, the host asks the core to train (DP-SGD);
//! - a recipient sends a key it signed and a fresh nonce; the core encrypts the model to that
//!   key and returns evidence that binds the envelope's content id to the nonce, so the host
//!   can neither read the model nor substitute another.
//!
//! Every upload, refusal (by the host or the core), training start and end, and release is an
//! event in the host's audit log (a redb file; each event is followed by a newly signed tree
//! head), which `confide audit verify --store` checks. A release is recorded before its
//! envelope leaves the host. Calls refused by the TLS layer or for a revoked certificate never
//! reach the service and are not logged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confide_attest::{Claims, Evidence, Policy as AttestPolicy};
use confide_core::Role;
use confide_crypto::SigningKey;
use confide_crypto::envelope::RecipientKey;
use confide_governance::audit::{AuditLog, Event, EventKind};
use confide_governance::identity::Identity;
use confide_trainer::host::Core;
use confide_trainer::owner::{Upload, check_core, open_release, sign_release_key};
use confide_trainer::protocol::{CoreConfig, CoreReply, CoreRequest, SealedBlob, TrainingReport};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::pb;
use crate::pb::trainer_client::TrainerClient;
use crate::pki::{Credentials, Revocations};
use crate::transport::{NetError, peer, transport_err};

/// The largest envelope an owner may upload: 256 MiB (the core's frame limit, with the
/// envelope in hex, is 1 GiB).
pub const MAX_UPLOAD_BYTES: usize = 256 << 20;

/// The size of the pieces an upload is streamed in.
pub const PIECE_BYTES: usize = 1 << 20;

/// What the host needs.
#[derive(Debug)]
pub struct TrainerHostOptions {
    /// The trusted core, started with `config`.
    pub core: Core,
    /// The core's configuration.
    pub config: CoreConfig,
    /// The host's directory: `uploads/`, `store/`, `releases/` and `audit.redb`.
    pub dir: PathBuf,
    /// A public test set (CSV bytes) for the accuracy the core reports, or empty.
    pub public_test: Vec<u8>,
}

#[derive(Debug, Clone)]
enum Phase {
    Uploading,
    Training,
    Trained {
        model: SealedBlob,
        report: TrainingReport,
    },
    Failed(String),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Uploading => "uploading",
            Phase::Training => "training",
            Phase::Trained { .. } => "trained",
            Phase::Failed(_) => "failed",
        }
    }
}

#[derive(Debug)]
struct HostState {
    /// Owners whose upload is being received or ingested (one stream per owner at a time),
    /// with the bytes received so far, which count against the room left for uploads.
    in_flight: BTreeMap<String, usize>,
    uploads: BTreeMap<String, Value>,
    sealed: BTreeMap<String, SealedBlob>,
    phase: Phase,
    releases: Vec<Value>,
}

struct Inner {
    core: Mutex<Option<Core>>,
    state: Mutex<HostState>,
    config: CoreConfig,
    dir: PathBuf,
    public_test: Vec<u8>,
    audit: AuditLog,
    identity: Arc<Identity>,
    revocations: Arc<Revocations>,
}

/// An owner's upload slot, released when dropped.
struct InFlight {
    service: TrainerService,
    owner: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.service.lock_state().in_flight.remove(&self.owner);
    }
}

/// The host's gRPC service.
#[derive(Clone)]
pub struct TrainerService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TrainerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrainerService({})", self.inner.config.spec.job.id)
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// partial file under the final name.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn sealed_path(store: &Path, b: &SealedBlob) -> PathBuf {
    store.join(format!(
        "{}.v{}.sealed",
        b.slot.replace('/', "_"),
        b.version
    ))
}

impl TrainerService {
    /// The service for `opts`, its audit log in `<dir>/audit.redb` signed with the host's key.
    pub fn new(opts: TrainerHostOptions, creds: &Credentials) -> Result<Self, NetError> {
        for d in ["uploads", "store", "releases"] {
            let path = opts.dir.join(d);
            std::fs::create_dir_all(&path)
                .map_err(|e| transport_err(format!("creating {}", path.display()), e))?;
        }
        let audit = crate::roles::open_audit_log(Some(&opts.dir.join("audit.redb")))?;
        let service = Self {
            inner: Arc::new(Inner {
                core: Mutex::new(Some(opts.core)),
                state: Mutex::new(HostState {
                    in_flight: Default::default(),
                    uploads: BTreeMap::new(),
                    sealed: BTreeMap::new(),
                    phase: Phase::Uploading,
                    releases: Vec::new(),
                }),
                config: opts.config,
                dir: opts.dir,
                public_test: opts.public_test,
                audit,
                identity: creds.identity(),
                revocations: creds.revocations.clone(),
            }),
        };
        service
            .record(
                EventKind::JobStart,
                &creds.name,
                json!({
                    "mode": "confidential",
                    "config_digest": hex::encode(service.inner.config.digest()),
                    "owners": service.inner.config.owners.keys().collect::<Vec<_>>(),
                    "recipients": service.inner.config.recipients.keys().collect::<Vec<_>>(),
                }),
            )
            .map_err(|e| transport_err("audit log", e.message()))?;
        Ok(service)
    }

    /// The job's state as JSON (what `TrainerStatus` returns).
    pub fn state_json(&self) -> Value {
        let state = self.lock_state();
        let (report, message) = match &state.phase {
            Phase::Trained { report, .. } => (serde_json::to_value(report).ok(), String::new()),
            Phase::Failed(m) => (None, m.clone()),
            _ => (None, String::new()),
        };
        json!({
            "job_id": self.inner.config.spec.job.id,
            "config_digest": hex::encode(self.inner.config.digest()),
            "phase": state.phase.name(),
            "message": message,
            "owners": self.inner.config.owners.keys().collect::<Vec<_>>(),
            "uploads": state.uploads,
            "report": report,
            "releases": state.releases,
        })
    }

    /// Stops the trusted core (closing its channel) once no call is in flight (training may
    /// hold it; this waits off the async threads).
    pub async fn shutdown(&self) -> Result<(), String> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let core = inner
                .core
                .lock()
                .map_err(|_| "the core's lock is poisoned".to_string())?
                .take();
            match core {
                Some(c) => c.finish().map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, HostState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends an event and signs the new head.
    fn record(&self, kind: EventKind, actor: &str, detail: Value) -> Result<(), Status> {
        let event = Event::now(kind, &self.inner.config.spec.job.id, actor, detail);
        self.inner
            .audit
            .record(&event)
            .and_then(|_| self.inner.audit.sign_head(&self.inner.identity))
            .map(|_| ())
            .map_err(|e| internal("audit log", e))
    }

    /// One request to the core, off the async threads (the core answers one at a time).
    async fn call(&self, request: CoreRequest) -> Result<CoreReply, Status> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = inner
                .core
                .lock()
                .map_err(|_| Status::internal("the core's lock is poisoned"))?;
            let core = guard
                .as_mut()
                .ok_or_else(|| Status::unavailable("the trusted core has stopped"))?;
            core.call(&request).map_err(|e| internal("trusted core", e))
        })
        .await
        .map_err(|e| internal("trusted core task", e))?
    }

    /// The caller's name, checked against the key the core was configured with for it.
    fn configured_peer<T>(
        &self,
        request: &Request<T>,
        role: Role,
        keys: &BTreeMap<String, String>,
    ) -> Result<String, Status> {
        let id = peer(request, &[role], &self.inner.revocations)?;
        let refusal = match keys.get(&id.name) {
            None => format!(
                "`{}` is not a {role} of job `{}`",
                id.name, self.inner.config.spec.job.id
            ),
            Some(key) if *key != hex::encode(&id.public_key) => format!(
                "`{}` presents another key than the one the trusted core was configured with",
                id.name
            ),
            Some(_) => return Ok(id.name),
        };
        // A refused access is an access: it goes in the log too.
        self.record(
            EventKind::Refusal,
            &id.name,
            json!({"what": role.as_str(), "party_id": id.id, "reason": refusal}),
        )?;
        Err(Status::permission_denied(refusal))
    }

    fn refuse_upload(&self, owner: &str, reason: &str) -> Result<(), Status> {
        self.record(
            EventKind::Refusal,
            owner,
            json!({"what": "upload", "reason": reason}),
        )
    }

    /// Receives an owner's stream, within the per-upload limit and within what the training
    /// request can carry to the core (every sealed dataset and every upload in progress,
    /// hex-encoded, in one frame). Returns the envelope and the owner's signature.
    async fn receive(
        &self,
        owner: &str,
        mut stream: Streaming<pb::UploadPiece>,
    ) -> Result<(Vec<u8>, Vec<u8>), Status> {
        let limit = (confide_trainer::protocol::MAX_FRAME / 2)
            .saturating_sub(self.inner.public_test.len() + (1 << 20));
        let mut signature = None;
        let mut envelope = Vec::new();
        while let Some(piece) = stream.message().await? {
            if signature.is_none() {
                signature = Some(piece.signature);
            }
            let size = envelope.len() + piece.data.len();
            let room = {
                let mut state = self.lock_state();
                let others: usize = state
                    .sealed
                    .values()
                    .map(|b| b.blob.len())
                    .chain(
                        state
                            .in_flight
                            .iter()
                            .filter(|(o, _)| o.as_str() != owner)
                            .map(|(_, n)| *n),
                    )
                    .sum();
                let room = limit.saturating_sub(others).min(MAX_UPLOAD_BYTES);
                if size <= room {
                    state.in_flight.insert(owner.to_string(), size);
                }
                room
            };
            if size > room {
                let reason = format!(
                    "the upload exceeds the {room} bytes left for it (at most {MAX_UPLOAD_BYTES} per owner, and every dataset must fit one request to the core)"
                );
                self.refuse_upload(owner, &reason)?;
                return Err(Status::resource_exhausted(reason));
            }
            envelope.extend(piece.data);
        }
        let Some(signature) = signature else {
            self.refuse_upload(owner, "an empty upload")?;
            return Err(Status::invalid_argument("an empty upload"));
        };
        Ok((envelope, signature))
    }

    async fn ingest(
        &self,
        owner: String,
        envelope: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<pb::UploadReply, Status> {
        let bytes = envelope.len();
        let id = confide_crypto::envelope::content_id(&envelope);
        let dir = &self.inner.dir;
        // Kept under its content id before the core sees it (the core answers with the same id).
        let upload_path = dir.join("uploads").join(id.trim_start_matches("sha256:"));
        write_atomic(&upload_path, &envelope).map_err(|e| internal("storing the upload", e))?;
        let reply = self
            .call(CoreRequest::Ingest {
                owner: owner.clone(),
                envelope,
                signature,
            })
            .await?;
        let (sealed, envelope_id, rows) = match reply {
            CoreReply::Stored {
                sealed,
                envelope_id,
                rows,
            } => (sealed, envelope_id, rows),
            CoreReply::Refused { reason } => {
                // The refused ciphertext is not kept.
                let _ = std::fs::remove_file(&upload_path);
                self.refuse_upload(&owner, &reason)?;
                return Err(Status::permission_denied(format!(
                    "the trusted core refused the upload: {reason}"
                )));
            }
            _ => return Err(Status::internal("the trusted core answered out of turn")),
        };
        if envelope_id != id {
            return Err(Status::internal(format!(
                "the trusted core names the upload {envelope_id}, the host computed {id}"
            )));
        }
        write_atomic(&sealed_path(&dir.join("store"), &sealed), &sealed.blob)
            .map_err(|e| internal("storing the sealed dataset", e))?;
        let detail = json!({
            "envelope_id": envelope_id,
            "envelope_bytes": bytes,
            "rows": rows,
            "sealed_slot": sealed.slot,
            "sealed_version": sealed.version,
            "sealed_id": confide_crypto::envelope::content_id(&sealed.blob),
        });
        self.record(EventKind::Upload, &owner, detail.clone())?;
        let reply = pb::UploadReply {
            envelope_id,
            rows: rows as u64,
            sealed_slot: sealed.slot.clone(),
            sealed_version: sealed.version,
        };
        let start = {
            let mut state = self.lock_state();
            state.uploads.insert(owner.clone(), detail);
            state.sealed.insert(owner, sealed);
            let all = self
                .inner
                .config
                .owners
                .keys()
                .all(|o| state.sealed.contains_key(o));
            if all && matches!(state.phase, Phase::Uploading) {
                state.phase = Phase::Training;
                Some(state.sealed.values().cloned().collect::<Vec<_>>())
            } else {
                None
            }
        };
        if let Some(datasets) = start {
            let service = self.clone();
            tokio::spawn(async move { service.train(datasets).await });
        }
        Ok(reply)
    }

    async fn train(&self, datasets: Vec<SealedBlob>) {
        tracing::info!("every owner uploaded: the trusted core trains");
        let versions: Vec<Value> = datasets
            .iter()
            .map(|b| json!({"slot": b.slot, "version": b.version}))
            .collect();
        if let Err(e) = self.record(
            EventKind::Round,
            "trusted-core",
            json!({"status": "training", "datasets": versions}),
        ) {
            // Nothing is trained unlogged.
            self.lock_state().phase = Phase::Failed(e.message().to_string());
            return;
        }
        let started = Instant::now();
        let reply = self
            .call(CoreRequest::Train {
                datasets,
                public_test: self.inner.public_test.clone(),
                seed: self.inner.config.spec.job.seed,
            })
            .await;
        let phase = match reply {
            Ok(CoreReply::Trained { model, report }) => {
                match write_atomic(
                    &sealed_path(&self.inner.dir.join("store"), &model),
                    &model.blob,
                ) {
                    Ok(()) => Phase::Trained { model, report },
                    Err(e) => Phase::Failed(format!("storing the sealed model: {e}")),
                }
            }
            Ok(CoreReply::Refused { reason }) => Phase::Failed(reason),
            Ok(_) => Phase::Failed("the trusted core answered out of turn".into()),
            Err(status) => Phase::Failed(status.message().to_string()),
        };
        let detail = match &phase {
            Phase::Trained { model, report } => json!({
                "status": "trained",
                "seconds": started.elapsed().as_secs_f64(),
                "epsilon": report.epsilon,
                "delta": report.delta,
                "accountant": report.accountant,
                "steps": report.steps,
                "sealed_slot": model.slot,
                "sealed_version": model.version,
                "sealed_id": confide_crypto::envelope::content_id(&model.blob),
            }),
            Phase::Failed(m) => json!({"status": "failed", "message": m}),
            _ => Value::Null,
        };
        let actor = "trusted-core".to_string();
        if let Err(e) = self.record(EventKind::JobEnd, &actor, detail) {
            tracing::error!("{}", e.message());
        }
        tracing::info!("training: {}", phase.name());
        self.lock_state().phase = phase;
    }
}

#[tonic::async_trait]
impl pb::trainer_server::Trainer for TrainerService {
    async fn attest(
        &self,
        request: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestReply>, Status> {
        // Only the job's parties: an owner before uploading, a recipient checking the core.
        let id = peer(
            &request,
            &[Role::Node, Role::ModelOwner],
            &self.inner.revocations,
        )?;
        let keys = if id.role == Role::Node {
            &self.inner.config.owners
        } else {
            &self.inner.config.recipients
        };
        self.configured_peer(&request, id.role, keys)?;
        let nonce = request.into_inner().nonce;
        match self.call(CoreRequest::Attest { nonce }).await? {
            CoreReply::Evidence {
                evidence,
                public_key,
                config_digest,
            } => Ok(Response::new(pb::AttestReply {
                evidence_json: serde_json::to_string(&evidence)
                    .map_err(|e| internal("evidence", e))?,
                public_key,
                config_digest,
            })),
            CoreReply::Refused { reason } => Err(Status::invalid_argument(reason)),
            _ => Err(Status::internal("the trusted core answered out of turn")),
        }
    }

    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadPiece>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        let owner = self.configured_peer(&request, Role::Node, &self.inner.config.owners)?;
        // One dataset per owner, received once: a second stream (a retry racing the first,
        // or a replacement after the last owner's upload) would hand the core a version the
        // training request no longer carries.
        let closed = {
            let mut state = self.lock_state();
            if !matches!(state.phase, Phase::Uploading) {
                Some("uploads are closed: every owner has uploaded and training has started")
            } else if state.sealed.contains_key(&owner) {
                Some("this owner's dataset is already uploaded (a core accepts one per owner)")
            } else if state.in_flight.contains_key(&owner) {
                Some("this owner's upload is already in progress")
            } else {
                state.in_flight.insert(owner.clone(), 0);
                None
            }
        };
        if let Some(reason) = closed {
            self.refuse_upload(&owner, reason)?;
            return Err(Status::failed_precondition(reason));
        }
        // Releases the owner's slot however this ends, a client that disconnects included
        // (its handler future is then dropped).
        let slot = InFlight {
            service: self.clone(),
            owner: owner.clone(),
        };
        let (envelope, signature) = self.receive(&owner, request.into_inner()).await?;
        // Once the whole envelope is here, ingesting runs to its end even if the client goes
        // away: the core may accept it, and the host must then store and log it.
        let service = self.clone();
        tokio::spawn(async move {
            let reply = service.ingest(owner, envelope, signature).await;
            drop(slot);
            reply
        })
        .await
        .map_err(|e| internal("upload task", e))?
        .map(Response::new)
    }

    async fn trainer_status(
        &self,
        request: Request<pb::TrainerStatusRequest>,
    ) -> Result<Response<pb::TrainerStatusReply>, Status> {
        let id = peer(
            &request,
            &[Role::Node, Role::ModelOwner],
            &self.inner.revocations,
        )?;
        let config = &self.inner.config;
        let key = hex::encode(&id.public_key);
        let is = |keys: &BTreeMap<String, String>| keys.get(&id.name) == Some(&key);
        let mut state = self.state_json();
        // A party of this job only, and each sees what it needs: an owner its own upload, a
        // recipient the report of the model it receives.
        if is(&config.recipients) {
            state["uploads"] = json!(state["uploads"].as_object().map_or(0, |u| u.len()));
            let mine: Vec<Value> = state["releases"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter(|x| x["recipient"] == id.name.as_str())
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            state["releases"] = json!(mine);
        } else if is(&config.owners) {
            let mine = state["uploads"][&id.name].clone();
            state["uploads"] = json!({ id.name.clone(): mine });
            state["report"] = Value::Null;
            state["releases"] = json!(state["releases"].as_array().map_or(0, |r| r.len()));
        } else {
            let reason = format!(
                "`{}` is not a party of job `{}`",
                id.name, config.spec.job.id
            );
            self.record(
                EventKind::Refusal,
                &id.name,
                json!({"what": "status", "party_id": id.id, "reason": reason}),
            )?;
            return Err(Status::permission_denied(reason));
        }
        Ok(Response::new(pb::TrainerStatusReply {
            state_json: state.to_string(),
        }))
    }

    async fn fetch(
        &self,
        request: Request<pb::FetchRequest>,
    ) -> Result<Response<pb::FetchReply>, Status> {
        let recipient =
            self.configured_peer(&request, Role::ModelOwner, &self.inner.config.recipients)?;
        let phase = self.lock_state().phase.clone();
        let model = match phase {
            Phase::Trained { model, .. } => model,
            Phase::Failed(m) => return Err(Status::aborted(format!("training failed: {m}"))),
            phase @ (Phase::Uploading | Phase::Training) => {
                let uploaded = self.lock_state().uploads.len();
                return Err(Status::failed_precondition(format!(
                    "the model is not trained yet ({}; {uploaded} of {} owners uploaded)",
                    phase.name(),
                    self.inner.config.owners.len()
                )));
            }
        };
        let r = request.into_inner();
        let reply = self
            .call(CoreRequest::Release {
                recipient: recipient.clone(),
                key: r.key,
                signature: r.signature,
                model,
                nonce: r.nonce,
            })
            .await?;
        let (envelope, envelope_id, report_json, evidence) = match reply {
            CoreReply::Released {
                envelope,
                envelope_id,
                report_json,
                evidence,
            } => (envelope, envelope_id, report_json, evidence),
            CoreReply::Refused { reason } => {
                self.record(
                    EventKind::Refusal,
                    &recipient,
                    json!({"what": "release", "reason": reason}),
                )?;
                return Err(Status::permission_denied(format!(
                    "the trusted core refused the release: {reason}"
                )));
            }
            _ => return Err(Status::internal("the trusted core answered out of turn")),
        };
        let hex_id = envelope_id.trim_start_matches("sha256:");
        write_atomic(&self.inner.dir.join("releases").join(hex_id), &envelope)
            .map_err(|e| internal("storing the release", e))?;
        let detail = json!({"envelope_id": envelope_id, "bytes": envelope.len()});
        // Recorded before the envelope leaves the host.
        self.record(EventKind::ModelRelease, &recipient, detail.clone())?;
        self.lock_state()
            .releases
            .push(json!({"recipient": recipient, "envelope_id": envelope_id}));
        Ok(Response::new(pb::FetchReply {
            envelope,
            envelope_id,
            report_json,
            evidence_json: serde_json::to_string(&evidence).map_err(|e| internal("evidence", e))?,
        }))
    }
}

/// A connection to the trainer host.
pub type Client = TrainerClient<Channel>;

/// Connects to the trainer host at `endpoint`, which must present the certificate of
/// `server_name` (the host runs with a `coordinator` certificate).
pub async fn connect_trainer(
    endpoint: &str,
    server_name: &str,
    creds: &Credentials,
) -> Result<TrainerClient<Channel>, NetError> {
    let channel = crate::transport::connect(endpoint, server_name, creds).await?;
    Ok(TrainerClient::new(channel)
        .max_decoding_message_size(MAX_UPLOAD_BYTES + PIECE_BYTES)
        .max_encoding_message_size(MAX_UPLOAD_BYTES + PIECE_BYTES))
}

/// The configuration a party expects the trusted core to serve: the job, and the certified
/// key of each owner (`<name>.crt`, role node) and each recipient (role model-owner) in the
/// federation directory `fed`.
pub fn expected_config(
    spec: &confide_core::JobSpec,
    section: &confide_core::ConfidentialSection,
    fed: &Path,
) -> Result<CoreConfig, NetError> {
    let keys = |names: &[String], role: Role| -> Result<BTreeMap<String, String>, NetError> {
        names
            .iter()
            .map(|n| {
                crate::pki::load_party_certificate(fed, n, role)
                    .map(|id| (n.clone(), hex::encode(id.public_key)))
                    .map_err(|e| transport_err(format!("the certificate of `{n}`"), e))
            })
            .collect()
    };
    Ok(CoreConfig {
        spec: spec.clone(),
        owners: keys(&spec.owners, Role::Node)?,
        recipients: keys(&section.recipients, Role::ModelOwner)?,
        partition: section.partition,
    })
}

/// An owner's check of the trainer before anything leaves its machine: evidence for a fresh
/// nonce, checked against `policy` and the `expected` configuration ([`check_core`]). Returns
/// the attested key to seal to, and the verified claims.
pub async fn attest_trainer(
    client: &mut TrainerClient<Channel>,
    (expected, policy): (&CoreConfig, &AttestPolicy),
    owner: &str,
    now_secs: u64,
) -> Result<(Vec<u8>, Claims), String> {
    let nonce: [u8; 32] = rand::random();
    let reply = client
        .attest(pb::AttestRequest {
            nonce: nonce.to_vec(),
        })
        .await
        .map_err(|s| format!("attestation: {}", s.message()))?
        .into_inner();
    let evidence: Evidence = serde_json::from_str(&reply.evidence_json)
        .map_err(|e| format!("malformed evidence: {e}"))?;
    let claims = check_core(
        &evidence,
        &reply.public_key,
        &reply.config_digest,
        expected,
        policy,
        &nonce,
        now_secs,
    )
    .map_err(|e| format!("`{owner}` refuses the trainer: {e}"))?;
    Ok((reply.public_key, claims))
}

/// Streams an owner's sealed upload ([`confide_trainer::owner::seal_dataset`] to a key checked
/// with [`attest_trainer`]) in [`PIECE_BYTES`] pieces (`progress` gets bytes sent and the
/// total). Returns the host's reply, checked to name the envelope's content id.
pub async fn send_dataset(
    client: &mut TrainerClient<Channel>,
    sealed: &Upload,
    progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<pb::UploadReply, String> {
    if sealed.envelope.len() > MAX_UPLOAD_BYTES {
        return Err(format!(
            "the sealed dataset has {} bytes; a trainer accepts at most {MAX_UPLOAD_BYTES}",
            sealed.envelope.len()
        ));
    }
    let total = sealed.envelope.len() as u64;
    let mut pieces: Vec<pb::UploadPiece> = sealed
        .envelope
        .chunks(PIECE_BYTES)
        .map(|c| pb::UploadPiece {
            signature: Vec::new(),
            data: c.to_vec(),
        })
        .collect();
    if pieces.is_empty() {
        pieces.push(pb::UploadPiece::default());
    }
    pieces[0].signature = sealed.signature.clone();
    let mut sent = 0u64;
    let stream = tokio_stream::iter(pieces.into_iter().inspect(move |p| {
        sent += p.data.len() as u64;
        progress(sent, total);
    }));
    let reply = client
        .upload(stream)
        .await
        .map_err(|s| format!("upload: {}", s.message()))?
        .into_inner();
    if reply.envelope_id != sealed.summary.id {
        return Err(format!(
            "the trainer acknowledged {}, not the uploaded {}",
            reply.envelope_id, sealed.summary.id
        ));
    }
    Ok(reply)
}

/// What a fetch returned.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The model's parameters.
    pub params: Vec<f32>,
    /// The core's training report.
    pub report: TrainingReport,
    /// The release envelope's content id.
    pub envelope_id: String,
    /// The verified attestation claims of the release.
    pub claims: Claims,
}

/// A recipient's fetch: a fresh X25519 key signed with `signer`, a fresh nonce; waits up to
/// `wait` while the model is not trained yet; checks the release's evidence and opens the
/// envelope ([`open_release`]).
pub async fn fetch(
    client: &mut TrainerClient<Channel>,
    (expected, policy): (&CoreConfig, &AttestPolicy),
    (recipient, signer): (&str, &SigningKey),
    wait: Duration,
    now_secs: &(dyn Fn() -> u64 + Sync),
) -> Result<Fetched, String> {
    let key = RecipientKey::generate();
    let signature = sign_release_key(expected, recipient, signer, &key.public_bytes());
    let nonce: [u8; 32] = rand::random();
    let deadline = Instant::now() + wait;
    let reply = loop {
        let request = pb::FetchRequest {
            key: key.public_bytes(),
            signature: signature.clone(),
            nonce: nonce.to_vec(),
        };
        match client.fetch(request).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(s) => return Err(format!("fetch: {}", s.message())),
        }
    };
    let evidence: Evidence = serde_json::from_str(&reply.evidence_json)
        .map_err(|e| format!("malformed evidence: {e}"))?;
    let (params, report, claims) = open_release(
        (expected, policy),
        (recipient, &key),
        (&reply.envelope, &reply.report_json, &evidence),
        &nonce,
        now_secs(),
    )?;
    Ok(Fetched {
        params,
        report,
        envelope_id: reply.envelope_id,
        claims,
    })
}
