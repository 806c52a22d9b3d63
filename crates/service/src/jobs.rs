//! The coordinator's durable job store.
//!
//! Tables (in the coordinator's one store, beside its audit log):
//! - `jobs`: manifest hash → [`JobRecord`] (JSON);
//! - `jobs.manifests`: manifest hash → the signed manifest file exactly as submitted;
//! - `jobs.by_id`: job id → manifest hash (one manifest per job id, JOB-003);
//! - `jobs.events`: manifest hash ‖ sequence number (u64, big-endian) → [`JobEvent`] (JSON).
//!
//! A submission, and every change of state, is **one** store transaction that reads the record,
//! applies the transition ([`JobRecord::apply`]), writes the record and the job's event, and
//! appends the audit entry (`AuditLog::record_in`). Read-write transactions are serialised,
//! so of two racing changes (a cancel and a dispatch) the second sees the first's result: a
//! cancel that wins leaves the dispatch refused, and a dispatch that wins is followed by the
//! cancel, after which every further step of the run is refused (JOB-007). A crash leaves all
//! of a change or none of it, and a restarted coordinator reads the same states back: a
//! cancelled job stays cancelled.

use std::collections::BTreeMap;
use std::sync::Arc;

use confide_governance::audit::{AuditError, AuditLog, Event, EventKind};
use confide_governance::manifest::SignedManifest;
use confide_governance::statement::{Action, SignedStatement};
use confide_store::{ReadTxn, Store, StoreError, StoreExt, Txn};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::job::{Applied, Code, JobRecord, JobState, Refusal, Transition};

const JOBS: &str = "jobs";
const MANIFESTS: &str = "jobs.manifests";
const BY_ID: &str = "jobs.by_id";
const EVENTS: &str = "jobs.events";
/// A completed job's report (JSON), by manifest hash.
const REPORTS: &str = "jobs.reports";
/// A completed job's model (little-endian f32), by manifest hash.
const MODELS: &str = "jobs.models";

/// The shortest hash prefix accepted as a job name.
pub const MIN_PREFIX: usize = 8;
/// The largest manifest file accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// The most unfinished jobs one model owner may have in a coordinator (JOB-012).
pub const MAX_OPEN_JOBS_PER_OWNER: usize = 64;

/// JOB-001 for a job id: letters, digits, `.`, `_` and `-` only (it is printed and logged),
/// and not 8 or more hex digits, which would read as a manifest hash prefix.
fn check_job_id(id: &str) -> Result<(), ServiceError> {
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(refuse(
            Code::Malformed,
            "a job id served by a coordinator has only letters, digits, `.`, `_` and `-`",
        ));
    }
    if id.len() >= MIN_PREFIX && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(
            Code::Malformed,
            "a job id of 8 or more hex digits would read as a manifest hash prefix",
        ));
    }
    Ok(())
}

/// What went wrong: the request was refused (the caller's fault, numbered), or the store
/// failed or holds something this code did not write (ours or the environment's).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A numbered refusal.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The store failed.
    #[error("job store: {0}")]
    Store(#[from] StoreError),
    /// The audit log failed.
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    /// Stored data that this code did not write.
    #[error("job store is corrupt: {0}")]
    Corrupt(String),
}

fn refuse(code: Code, message: impl Into<String>) -> ServiceError {
    ServiceError::Refused(Refusal::new(code, message))
}

/// One entry of a job's history, as `confide job logs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEvent {
    /// Its sequence number within the job, from 0.
    pub seq: u64,
    /// When, Unix milliseconds.
    pub time_ms: u64,
    /// Who caused it (a party id, or `coordinator`).
    pub actor: String,
    /// What happened, in words.
    pub what: String,
    /// The job's state after it.
    pub state: JobState,
}

/// A submission's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The job.
    pub record: JobRecord,
    /// Whether this submission created it (`false`: the same manifest was already submitted,
    /// and nothing changed).
    pub new: bool,
}

/// The job store.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: Arc<dyn Store>,
}

/// Unix milliseconds of `t` (0 before 1970).
pub fn millis(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn event_key(hash: &[u8; 32], seq: u64) -> Vec<u8> {
    let mut k = hash.to_vec();
    k.extend(seq.to_be_bytes());
    k
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(bytes).map_err(|e| ServiceError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ServiceError> {
    serde_json::to_vec(value).map_err(|e| ServiceError::Corrupt(e.to_string()))
}

/// A manifest hash from its 64 hex digits.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

fn read_record(txn: &dyn ReadTxn, hash: &[u8; 32]) -> Result<Option<JobRecord>, ServiceError> {
    txn.get(JOBS, hash)?
        .map(|b| decode_record(hash, &b))
        .transpose()
}

/// A job record read back, or the key of the record that does not read.
fn decode_record(key: &[u8], bytes: &[u8]) -> Result<JobRecord, ServiceError> {
    decode(&format!("job record {}", hex::encode(key)), bytes)
}

/// An audit entry about the job `record`.
fn audit_event(
    kind: EventKind,
    record: &JobRecord,
    actor: &str,
    now: OffsetDateTime,
    mut detail: serde_json::Value,
) -> Event {
    detail["manifest"] = record.hash.clone().into();
    Event {
        kind,
        job: record.job_id.clone(),
        actor: actor.to_string(),
        time: confide_governance::policy::rfc3339(now),
        detail,
    }
}

/// Writes `next` (the record after a change), its event and its audit entry in `txn`.
fn commit(
    txn: &mut dyn Txn,
    hash: &[u8; 32],
    mut next: JobRecord,
    what: String,
    audit: &Event,
) -> Result<JobRecord, ServiceError> {
    let event = JobEvent {
        seq: next.events,
        time_ms: next.updated_ms,
        actor: audit.actor.clone(),
        what,
        state: next.state.clone(),
    };
    next.events += 1;
    txn.put(EVENTS, &event_key(hash, event.seq), &encode(&event)?)?;
    txn.put(JOBS, hash, &encode(&next)?)?;
    AuditLog::record_in(txn, audit)?;
    Ok(next)
}

impl Jobs {
    /// The job store kept in `store`, which the coordinator's audit log shares.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The store underneath (the coordinator keeps its jobs' checkpoints there too).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Submits a signed manifest file on behalf of `submitter` (the caller's authenticated
    /// party id). The same manifest submitted again returns the existing job and changes
    /// nothing.
    ///
    /// # Errors
    /// JOB-001 not a manifest file or an invalid job spec, JOB-002 a signature that is missing
    /// or does not verify, JOB-004 a submitter that is not the manifest's model owner, JOB-003
    /// a job id that another manifest already uses; or the store failed.
    pub fn submit(
        &self,
        manifest_file: &[u8],
        submitter: &str,
        now: OffsetDateTime,
    ) -> Result<Submitted, ServiceError> {
        use confide_governance::manifest::ManifestError;
        if manifest_file.len() > MAX_MANIFEST_BYTES {
            return Err(refuse(
                Code::Malformed,
                format!("the manifest file is over {MAX_MANIFEST_BYTES} bytes"),
            ));
        }
        let text = std::str::from_utf8(manifest_file)
            .map_err(|_| refuse(Code::Malformed, "the manifest file is not UTF-8"))?;
        let signed = SignedManifest::from_json(text)
            .map_err(|e| refuse(Code::Malformed, format!("not a manifest file: {e}")))?;
        let verified = signed.verify().map_err(|e| match e {
            ManifestError::Signature(m) => refuse(Code::Signature, m),
            other => refuse(Code::Malformed, other.to_string()),
        })?;
        let m = &verified.manifest;
        check_job_id(&m.job_id)?;
        if m.model_owner.id != submitter {
            return Err(refuse(
                Code::NotModelOwner,
                format!(
                    "the manifest's model owner is `{}`, the submitter is `{submitter}`",
                    m.model_owner.id
                ),
            ));
        }
        let hash = verified.hash;
        let record = JobRecord {
            hash: verified.hash_hex(),
            job_id: m.job_id.clone(),
            model_owner: m.model_owner.id.clone(),
            participants: m.participants.clone(),
            recipients: m.recipients.clone(),
            rounds: verified.spec.job.rounds,
            approved: Vec::new(),
            state: JobState::AwaitingApproval,
            submitted_ms: millis(now),
            updated_ms: millis(now),
            events: 0,
        };
        self.store.transact(|txn| {
            if let Some(existing) = read_record(txn, &hash)? {
                return Ok(Submitted {
                    record: existing,
                    new: false,
                });
            }
            if txn.get(BY_ID, m.job_id.as_bytes())?.is_some() {
                return Err(refuse(
                    Code::IdReused,
                    format!(
                        "job id `{}` is already used by another manifest; a job id names one \
                         job (give the new job another id)",
                        m.job_id
                    ),
                ));
            }
            let open = txn
                .scan_prefix(JOBS, &[])?
                .iter()
                .map(|(k, v)| decode_record(k, v))
                .filter(|r| {
                    r.as_ref().map_or(true, |r| {
                        r.model_owner == submitter && !r.state.is_terminal()
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
                .len();
            if open >= MAX_OPEN_JOBS_PER_OWNER {
                return Err(refuse(
                    Code::Quota,
                    format!(
                        "you have {open} unfinished jobs here, the most one model owner may \
                         have; cancel one or wait for one to end"
                    ),
                ));
            }
            txn.put(MANIFESTS, &hash, manifest_file)?;
            txn.put(BY_ID, m.job_id.as_bytes(), &hash)?;
            let audit = audit_event(
                EventKind::Submission,
                &record,
                submitter,
                now,
                serde_json::json!({ "rounds": record.rounds, "participants": record.participants }),
            );
            let record = commit(txn, &hash, record.clone(), "submitted".into(), &audit)?;
            Ok(Submitted { record, new: true })
        })
    }

    /// Applies `t` to job `hash` on behalf of `actor` (a party id, or `coordinator`), in one
    /// transaction with its event and audit entry. A transition already in effect changes
    /// nothing and returns the record.
    ///
    /// # Errors
    /// JOB-005 an unknown job, the refusals of [`JobRecord::apply`], or the store failed.
    pub fn transition(
        &self,
        hash: &[u8; 32],
        t: &Transition,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<JobRecord, ServiceError> {
        self.change(
            hash,
            t,
            actor,
            now,
            EventKind::StateChange,
            serde_json::json!({}),
        )
    }

    /// Moves a running job's progress through `steps` (each a `Progress` transition, in
    /// order) in one transaction: each step still gets its event and audit entry, but the
    /// store commits once (a scheduler reports rounds in batches).
    ///
    /// # Errors
    /// As [`Jobs::transition`], for the first step refused (nothing is written then).
    pub fn progress(
        &self,
        hash: &[u8; 32],
        steps: &[Transition],
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<JobRecord, ServiceError> {
        self.store.transact(|txn| {
            let mut record = read_record(txn, hash)?.ok_or_else(|| unknown(&hex::encode(hash)))?;
            for t in steps {
                if let Applied::Changed(next) = record.apply(t, millis(now))? {
                    let detail = serde_json::json!({
                        "from": record.state.name(),
                        "to": serde_json::to_value(&next.state)
                            .map_err(|e| ServiceError::Corrupt(e.to_string()))?,
                    });
                    let audit = audit_event(EventKind::StateChange, &next, actor, now, detail);
                    let what = format!("{}: {}", t.name(), next.state.describe());
                    record = commit(txn, hash, *next, what, &audit)?;
                }
            }
            Ok(record)
        })
    }

    /// A participant's decision on job `hash` (an approval or a rejection), with `detail`
    /// (its signature and basis) in the audit entry.
    ///
    /// # Errors
    /// As [`Jobs::transition`].
    pub fn decide(
        &self,
        hash: &[u8; 32],
        t: &Transition,
        actor: &str,
        now: OffsetDateTime,
        detail: serde_json::Value,
    ) -> Result<JobRecord, ServiceError> {
        self.change(hash, t, actor, now, EventKind::Approval, detail)
    }

    /// Stores a finished job's report and model, releases it and completes it, in one
    /// transaction: a job is `completed` exactly when its model is in the store.
    ///
    /// # Errors
    /// The job is not at its last round's commit (JOB-008), or the store failed.
    pub fn complete(
        &self,
        hash: &[u8; 32],
        report_json: &str,
        model: &[u8],
        now: OffsetDateTime,
    ) -> Result<JobRecord, ServiceError> {
        self.store.transact(|txn| {
            let mut record = read_record(txn, hash)?.ok_or_else(|| unknown(&hex::encode(hash)))?;
            for t in [Transition::Release, Transition::Complete] {
                if let Applied::Changed(next) = record.apply(&t, millis(now))? {
                    let detail = serde_json::json!({
                        "from": record.state.name(),
                        "to": next.state.name(),
                    });
                    let audit =
                        audit_event(EventKind::ModelRelease, &next, "coordinator", now, detail);
                    let what = format!("{}: {}", t.name(), next.state.describe());
                    record = commit(txn, hash, *next, what, &audit)?;
                }
            }
            txn.put(REPORTS, hash, report_json.as_bytes())?;
            txn.put(MODELS, hash, model)?;
            Ok(record)
        })
    }

    /// A completed job's report (JSON) and model bytes.
    ///
    /// # Errors
    /// The store failed.
    pub fn result(&self, hash: &[u8; 32]) -> Result<Option<(String, Vec<u8>)>, ServiceError> {
        self.store.read(|txn| {
            let (Some(report), Some(model)) = (txn.get(REPORTS, hash)?, txn.get(MODELS, hash)?)
            else {
                return Ok(None);
            };
            let report = String::from_utf8(report)
                .map_err(|e| ServiceError::Corrupt(format!("job report: {e}")))?;
            Ok(Some((report, model)))
        })
    }

    fn change(
        &self,
        hash: &[u8; 32],
        t: &Transition,
        actor: &str,
        now: OffsetDateTime,
        kind: EventKind,
        detail: serde_json::Value,
    ) -> Result<JobRecord, ServiceError> {
        self.store.transact(|txn| {
            let record = read_record(txn, hash)?.ok_or_else(|| unknown(&hex::encode(hash)))?;
            match record.apply(t, millis(now))? {
                Applied::Unchanged => Ok(record),
                Applied::Changed(next) => {
                    let mut detail = detail.clone();
                    detail["from"] = record.state.name().into();
                    detail["to"] = serde_json::to_value(&next.state)
                        .map_err(|e| ServiceError::Corrupt(e.to_string()))?;
                    let audit = audit_event(kind, &next, actor, now, detail);
                    let what = format!("{}: {}", t.name(), next.state.describe());
                    commit(txn, hash, *next, what, &audit)
                }
            }
        })
    }

    /// Cancels a job with a signed statement by `caller` (the authenticated party id). The
    /// statement goes into the audit log whole. Cancelling a cancelled job again is answered
    /// with the job and changes nothing.
    ///
    /// # Errors
    /// JOB-009 a statement that is malformed, not a cancel, not by the caller, or whose
    /// signature does not verify; JOB-005 an unknown job; JOB-006 a caller that is not the
    /// job's model owner; JOB-007 a job that already ended otherwise; or the store failed.
    pub fn cancel(
        &self,
        statement: &[u8],
        caller: &str,
        now: OffsetDateTime,
    ) -> Result<JobRecord, ServiceError> {
        let signed = SignedStatement::from_json(statement)
            .map_err(|e| refuse(Code::Statement, e.to_string()))?;
        let verified = signed
            .verify()
            .map_err(|e| refuse(Code::Statement, e.to_string()))?;
        let s = &verified.statement;
        if s.author.id != caller {
            return Err(refuse(
                Code::Statement,
                format!(
                    "the statement is by `{}`, the caller is `{caller}`",
                    s.author.id
                ),
            ));
        }
        if s.action != Action::Cancel {
            return Err(refuse(Code::Statement, "the statement is not a cancel"));
        }
        let record = self.get(&verified.job)?.ok_or_else(|| unknown(&s.job))?;
        if record.model_owner != caller {
            return Err(refuse(
                Code::NotAllowed,
                format!(
                    "only job `{}`'s model owner may cancel it; `{caller}` is not",
                    record.job_id
                ),
            ));
        }
        let detail = serde_json::json!({
            "statement": serde_json::to_value(&signed)
                .map_err(|e| ServiceError::Corrupt(e.to_string()))?,
        });
        let t = Transition::Cancel {
            by: caller.to_string(),
            reason: s.reason.clone(),
        };
        self.change(
            &verified.job,
            &t,
            caller,
            now,
            EventKind::Cancellation,
            detail,
        )
    }

    /// Job `hash`, if there is one.
    ///
    /// # Errors
    /// The store failed or holds a malformed record.
    pub fn get(&self, hash: &[u8; 32]) -> Result<Option<JobRecord>, ServiceError> {
        self.store.read(|txn| read_record(txn, hash))
    }

    /// Job `hash`'s manifest file, exactly as submitted.
    ///
    /// # Errors
    /// The store failed.
    pub fn manifest(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, ServiceError> {
        self.store
            .read(|txn| Ok::<_, ServiceError>(txn.get(MANIFESTS, hash)?))
    }

    /// The job that `name` names: its manifest hash (hex), a hash prefix of at least
    /// [`MIN_PREFIX`] hex digits that matches one job, or its job id.
    ///
    /// # Errors
    /// JOB-005 no such job, JOB-011 a prefix that matches several; or the store failed.
    pub fn resolve(&self, name: &str) -> Result<[u8; 32], ServiceError> {
        self.resolve_visible(name, |_| true)
    }

    /// As [`Jobs::resolve`], among the jobs that `visible` accepts only: a job the caller may
    /// not see is answered as if it did not exist, and is never counted as a match.
    ///
    /// # Errors
    /// As [`Jobs::resolve`].
    pub fn resolve_visible(
        &self,
        name: &str,
        visible: impl Fn(&JobRecord) -> bool,
    ) -> Result<[u8; 32], ServiceError> {
        self.store.read(|txn| {
            let seen = |hash: &[u8; 32]| -> Result<bool, ServiceError> {
                Ok(read_record(txn, hash)?.is_some_and(|r| visible(&r)))
            };
            if let Some(hash) = parse_hash(name)
                && seen(&hash)?
            {
                return Ok(hash);
            }
            let lower = name.to_ascii_lowercase();
            if lower.len() >= MIN_PREFIX && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
                let whole = &lower[..lower.len() & !1];
                let prefix = hex::decode(whole).unwrap_or_default();
                let mut hits = Vec::new();
                for (k, v) in txn.scan_prefix(JOBS, &prefix)? {
                    if hex::encode(&k).starts_with(&lower) && visible(&decode_record(&k, &v)?) {
                        hits.push(k);
                    }
                }
                match hits.as_slice() {
                    [one] => {
                        return one.as_slice().try_into().map_err(|_| {
                            ServiceError::Corrupt(format!("bad key {}", hex::encode(one)))
                        });
                    }
                    [] => {}
                    many => {
                        return Err(refuse(
                            Code::Ambiguous,
                            format!("`{name}` is the start of {} jobs' hashes", many.len()),
                        ));
                    }
                }
            }
            if let Some(hash) = txn.get(BY_ID, name.as_bytes())? {
                let hash: [u8; 32] = hash
                    .try_into()
                    .map_err(|_| ServiceError::Corrupt(format!("job id `{name}`: bad hash")))?;
                if seen(&hash)? {
                    return Ok(hash);
                }
            }
            Err(unknown(name))
        })
    }

    /// Every job, oldest submission first.
    ///
    /// # Errors
    /// The store failed or holds a malformed record.
    pub fn list(&self) -> Result<Vec<JobRecord>, ServiceError> {
        let mut all: Vec<JobRecord> = self.store.read(|txn| {
            txn.scan_prefix(JOBS, &[])?
                .iter()
                .map(|(k, v)| decode_record(k, v))
                .collect::<Result<Vec<_>, ServiceError>>()
        })?;
        all.sort_by(|a, b| (a.submitted_ms, &a.hash).cmp(&(b.submitted_ms, &b.hash)));
        Ok(all)
    }

    /// How many jobs are in each state (every state named, zeros included).
    ///
    /// # Errors
    /// As [`Jobs::list`].
    pub fn count_by_state(&self) -> Result<BTreeMap<&'static str, u64>, ServiceError> {
        let mut counts: BTreeMap<&'static str, u64> =
            JobState::NAMES.iter().map(|n| (*n, 0)).collect();
        for r in self.list()? {
            *counts.entry(r.state.name()).or_default() += 1;
        }
        Ok(counts)
    }

    /// The number of entries in the audit log that this store shares.
    ///
    /// # Errors
    /// The store failed.
    pub fn audit_entries(&self) -> Result<u64, ServiceError> {
        Ok(AuditLog::new(self.store.clone()).size()?)
    }

    /// Job `hash`'s events from sequence number `from` on.
    ///
    /// # Errors
    /// The store failed or holds a malformed event.
    pub fn events(&self, hash: &[u8; 32], from: u64) -> Result<Vec<JobEvent>, ServiceError> {
        self.store.read(|txn| {
            txn.scan_prefix(EVENTS, hash)?
                .iter()
                .map(|(_, v)| decode::<JobEvent>("job event", v))
                .filter(|e| e.as_ref().map_or(true, |e| e.seq >= from))
                .collect()
        })
    }
}

fn unknown(name: &str) -> ServiceError {
    refuse(Code::UnknownJob, format!("no job is named `{name}`"))
}

#[cfg(test)]
mod tests;
