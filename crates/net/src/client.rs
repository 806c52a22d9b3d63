//! A client of the coordinator's `Control` service ([`crate::control`]): the calls behind
//! `confide job submit|list|status|logs|cancel|download` and `confide nodes list`, shared by
//! the command line and the Python package, with every answer parsed and checked.
//!
//! The caller is a party of the federation (its certificate and key from the federation
//! directory): a model owner, a recipient, or the coordinator's operator. Mutual TLS names it
//! to the coordinator, which decides what it may see and do.

use std::path::{Path, PathBuf};

use confide_governance::manifest::SignedManifest;
use confide_governance::statement::{Action, SignedStatement, Statement};
use confide_service::{JobEvent, JobRecord};
use tonic::transport::Channel;

use crate::coordinator::JobReport;
use crate::fleet::NodeSeen;
use crate::pb::{self, control_client::ControlClient};
use crate::pki::Credentials;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator refused the request (a numbered rule, no permission, a bad request):
    /// the command ends with `EXIT_REFUSED`.
    #[error("refused: {0}")]
    Refused(String),
    /// No such job, or none the caller may see (a refusal too: the command exits with
    /// `EXIT_REFUSED`).
    #[error("refused: {0}")]
    NotFound(String),
    /// The coordinator could not be reached, or the call broke off.
    #[error("coordinator: {0}")]
    Unavailable(String),
    /// The coordinator's answer did not parse or did not check out.
    #[error("the coordinator sent a malformed answer: {0}")]
    Malformed(String),
    /// A local step failed (the credentials, signing, writing the files).
    #[error("{0}")]
    Local(String),
}

/// A numbered refusal, or a failed call.
fn call_failed(s: tonic::Status) -> ClientError {
    if s.code() == tonic::Code::NotFound {
        return ClientError::NotFound(s.message().to_string());
    }
    match crate::control::rule_of(&s) {
        Some(_) => ClientError::Refused(s.message().to_string()),
        None => match s.code() {
            tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::ResourceExhausted => ClientError::Refused(s.message().to_string()),
            _ => ClientError::Unavailable(crate::roles::describe_failure(&s)),
        },
    }
}

fn parse<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, ClientError> {
    serde_json::from_str(json).map_err(|e| ClientError::Malformed(e.to_string()))
}

/// The answer to a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job as the coordinator holds it.
    pub record: JobRecord,
    /// False when the same manifest had been submitted before (the same job comes back).
    pub created: bool,
    /// The job's page on the coordinator's dashboard (empty without one).
    pub url: String,
}

/// A completed job's released model, checked against its signed manifest.
#[derive(Debug, Clone)]
pub struct Release {
    /// The job.
    pub record: JobRecord,
    /// The coordinator's report.
    pub report: JobReport,
    /// The signed manifest (verified; its hash is the job's).
    pub manifest: SignedManifest,
    /// The job as the verified manifest describes it.
    pub spec: confide_core::JobSpec,
    /// The model's parameters, in the layout of the manifest's model.
    pub params: Vec<f32>,
}

/// A stream of a job's events.
#[derive(Debug)]
pub struct Events {
    stream: tonic::Streaming<pb::JobEventReply>,
}

impl Events {
    /// The next event; `None` once the stream ends (at once without `follow`, when the job
    /// ends with it).
    ///
    /// # Errors
    /// The call broke off, or an event did not parse.
    pub async fn next(&mut self) -> Result<Option<JobEvent>, ClientError> {
        match self.stream.message().await.map_err(call_failed)? {
            Some(m) => parse(&m.event_json).map(Some),
            None => Ok(None),
        }
    }
}

/// An open connection to a coordinator's `Control` service.
#[derive(Debug)]
pub struct ControlSession {
    client: ControlClient<Channel>,
    creds: Credentials,
}

impl ControlSession {
    /// Loads the party's credentials from the federation directory and connects over
    /// mutual TLS.
    ///
    /// # Errors
    /// Unreadable credentials (or a wrong passphrase), or no coordinator at `address`.
    pub async fn open(
        address: &str,
        server_name: &str,
        fed: &Path,
        name: &str,
        passphrase: Option<&str>,
    ) -> Result<Self, ClientError> {
        let creds = Credentials::load_with(fed, name, passphrase)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let channel = crate::transport::connect(address, server_name, &creds)
            .await
            .map_err(|e| {
                ClientError::Unavailable(format!(
                    "{e} (is `confide coordinator serve` running with --control {address}?)"
                ))
            })?;
        let client = ControlClient::new(channel)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(confide_service::jobs::MAX_MANIFEST_BYTES + 1024);
        Ok(Self { client, creds })
    }

    /// The caller's credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Submits a signed manifest (its bytes as `confide job sign` wrote them).
    ///
    /// # Errors
    /// Refused (not signed by a model owner, an id already used by another manifest, …), or
    /// the call failed.
    pub async fn submit(&mut self, manifest: Vec<u8>) -> Result<Submitted, ClientError> {
        let reply = self
            .client
            .submit_job(pb::JobSubmitRequest { manifest })
            .await
            .map_err(call_failed)?
            .into_inner();
        Ok(Submitted {
            record: parse(&reply.record_json)?,
            created: reply.created,
            url: reply.url,
        })
    }

    /// The jobs the caller may see, optionally only those in `state`.
    ///
    /// # Errors
    /// Refused, or the call failed.
    pub async fn list(&mut self, state: Option<&str>) -> Result<Vec<JobRecord>, ClientError> {
        let reply = self
            .client
            .list_jobs(pb::JobListRequest {
                state: state.unwrap_or_default().to_string(),
            })
            .await
            .map_err(call_failed)?
            .into_inner();
        reply.records_json.iter().map(|j| parse(j)).collect()
    }

    /// One job (its manifest hash, a unique hash prefix of 8+ hex digits, or its job id).
    ///
    /// # Errors
    /// No such job visible to the caller, or the call failed.
    pub async fn status(&mut self, job: &str) -> Result<JobRecord, ClientError> {
        let reply = self
            .client
            .job_status(pb::JobName {
                name: job.to_string(),
            })
            .await
            .map_err(call_failed)?
            .into_inner();
        parse(&reply.record_json)
    }

    /// A job's events from `from`; with `follow`, the stream stays open until the job ends.
    ///
    /// # Errors
    /// No such job visible to the caller, or the call failed.
    pub async fn events(
        &mut self,
        job: &str,
        from: u64,
        follow: bool,
    ) -> Result<Events, ClientError> {
        let stream = self
            .client
            .job_events(pb::JobEventsRequest {
                name: job.to_string(),
                from,
                follow,
            })
            .await
            .map_err(call_failed)?
            .into_inner();
        Ok(Events { stream })
    }

    /// Cancels a job as its model owner, with a statement signed by the caller's key (the
    /// coordinator logs it).
    ///
    /// # Errors
    /// Not the model owner, a job already ended, or the call failed.
    pub async fn cancel(&mut self, job: &str, reason: &str) -> Result<JobRecord, ClientError> {
        let record = self.status(job).await?;
        let hash: [u8; 32] = hex::decode(&record.hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| ClientError::Malformed("a job hash that is not 32 bytes".into()))?;
        let id = self.creds.identity();
        let statement = Statement::new(
            Action::Cancel,
            &hash,
            reason,
            id.public(),
            time::OffsetDateTime::now_utc(),
        );
        let signed =
            SignedStatement::sign(statement, &id).map_err(|e| ClientError::Local(e.to_string()))?;
        let reply = self
            .client
            .cancel_job(pb::JobCancelRequest {
                statement: signed.to_json().into_bytes(),
            })
            .await
            .map_err(call_failed)?
            .into_inner();
        parse(&reply.record_json)
    }

    /// A completed job's model (recipients only), checked: the manifest must verify and hash
    /// to the job, the job must be the one asked for, and the parameters must be whole `f32`s.
    ///
    /// # Errors
    /// Not a recipient, a job without a model, or a malformed answer.
    pub async fn download(&mut self, job: &str) -> Result<Release, ClientError> {
        let reply = self
            .client
            .download_job(pb::JobName {
                name: job.to_string(),
            })
            .await
            .map_err(call_failed)?
            .into_inner();
        let record: JobRecord = parse(&reply.record_json)?;
        let report: JobReport = parse(&reply.report_json)?;
        let manifest = SignedManifest::from_json(&reply.manifest_json)
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        // The manifest must verify (its hash recomputed, its signatures checked) and be the
        // job's; the job must be the one asked for when it was named by its hash.
        let verified = manifest
            .verify()
            .map_err(|e| ClientError::Malformed(format!("a manifest that does not verify: {e}")))?;
        if verified.hash_hex() != record.hash {
            return Err(ClientError::Malformed(
                "a manifest that does not hash to the job".into(),
            ));
        }
        let asked = job.to_ascii_lowercase();
        if asked.len() >= 8
            && asked.chars().all(|c| c.is_ascii_hexdigit())
            && !record.hash.starts_with(&asked)
            && record.job_id != job
        {
            return Err(ClientError::Malformed(format!(
                "job {} instead of the one asked for ({job})",
                record.hash
            )));
        }
        if reply.model.len() % 4 != 0 {
            return Err(ClientError::Malformed("a model of partial floats".into()));
        }
        let params = reply
            .model
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Release {
            record,
            report,
            spec: verified.spec,
            manifest,
            params,
        })
    }

    /// The nodes the coordinator has heard from (its operator only).
    ///
    /// # Errors
    /// Not the operator, or the call failed.
    pub async fn nodes(&mut self) -> Result<Vec<NodeSeen>, ClientError> {
        let reply = self
            .client
            .list_nodes(pb::NodeListRequest {})
            .await
            .map_err(call_failed)?
            .into_inner();
        reply.nodes_json.iter().map(|j| parse(j)).collect()
    }
}

/// Writes a released model into `dir`: `model.safetensors`, its card `model.json` and the
/// coordinator's `coordinator-report.json`. Returns the paths of the weights and the card.
///
/// # Errors
/// The job released no model (or one of the wrong size), or a file could not be written.
pub fn write_release(
    dir: &Path,
    job_id: &str,
    spec: &confide_core::JobSpec,
    params: &[f32],
    report: &JobReport,
) -> Result<(PathBuf, PathBuf), String> {
    use confide_ml::export::{ModelCard, export_model};
    let model = crate::coordinator::model_spec(spec);
    let names = if spec.data.features.is_empty() {
        (0..spec.data.feature_count)
            .map(|i| format!("f{i}"))
            .collect()
    } else {
        spec.data.features.clone()
    };
    let standardization = confide_ml::Standardizer::of_job(&spec.data.standardize);
    let provenance = std::collections::HashMap::from([
        ("job_id".to_string(), job_id.to_string()),
        ("scheme".to_string(), report.scheme.clone()),
        ("rounds".to_string(), report.rounds.to_string()),
        ("status".to_string(), report.status.clone()),
    ]);
    let card = ModelCard::new(&model, names, standardization, provenance);
    if params.len() != model.param_count() {
        return Err(format!("the job released no model ({})", report.message));
    }
    let paths = export_model(dir, "model", params, &card).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let report_path = dir.join("coordinator-report.json");
    std::fs::write(&report_path, text)
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
    Ok(paths)
}

impl Release {
    /// Writes the model, its card and the report into `dir` ([`write_release`]).
    ///
    /// # Errors
    /// See [`write_release`].
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
        let spec = self
            .manifest
            .manifest
            .job_spec()
            .map_err(|e| e.to_string())?;
        write_release(dir, &self.record.job_id, &spec, &self.params, &self.report)
    }
}
