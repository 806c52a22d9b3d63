//! `confide aggregator`: one of the `shares` or `threshold` aggregators (see
//! `confide_secagg::aggregators` for the protocol and the rules each aggregator enforces), and
//! the coordinator's side of talking to all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confide_core::{JobSpec, Role};
use confide_secagg::aggregators::{
    FinishReply, FinishRequest, MultiParams, PrepareAnswer, Prepared, RoundRecord, aggregator_name,
    view_digest,
};
use confide_secagg::contribution::Contribution;
use confide_secagg::{Aggregator, AggregatorKey, ExternalResult, Reject};
use tonic::{Request, Response, Status};

use crate::coordinator::{job_digest, job_scheme_params};
use crate::keyholder::{check_relayed, relayed_from_pb, relayed_to_pb};
use crate::pb;
use crate::pki::{Credentials, Revocations, verify_party_certificate};
use crate::transport::{NetError, peer, transport_err};

/// The parameters of a `shares` or `threshold` job.
pub fn multi_params(spec: &JobSpec) -> Result<MultiParams, NetError> {
    let (n, t) = spec.aggregators_n_t();
    MultiParams::new(
        spec.job.scheme,
        n,
        t,
        job_scheme_params(spec)?,
        job_digest(spec),
    )
    .map_err(|e| transport_err("aggregators", e))
}

/// The certified signing key of aggregator `index`: its certificate chains to the federation
/// CA, is not revoked, has role aggregator and names `aggregator-{index+1}`.
pub fn aggregator_signer(
    der: &[u8],
    ca_der: &[u8],
    revocations: &Revocations,
    index: usize,
) -> Result<[u8; 32], String> {
    let name = aggregator_name(index);
    let id = verify_party_certificate(der, ca_der).map_err(|e| format!("{name}: {e}"))?;
    revocations
        .check(&id.id)
        .map_err(|e| format!("{name}: {e}"))?;
    if id.role != Role::Aggregator || id.name != name {
        return Err(format!(
            "the certificate for {name} names `{}` ({})",
            id.name, id.role
        ));
    }
    id.public_key
        .as_slice()
        .try_into()
        .map_err(|_| format!("{name}: malformed key"))
}

/// Per aggregator index, the signing key its certificate certifies (`None`: no certificate, or
/// one that does not check out, which is logged).
fn signer_keys(
    certificates: &[Vec<u8>],
    ca_der: &[u8],
    revocations: &Revocations,
) -> Vec<Option<[u8; 32]>> {
    certificates
        .iter()
        .enumerate()
        .map(|(i, der)| {
            if der.is_empty() {
                return None;
            }
            aggregator_signer(der, ca_der, revocations, i)
                .inspect_err(|e| tracing::warn!("{e}"))
                .ok()
        })
        .collect()
}

/// Misbehaviour for chaos testing (`confide simulate --faulty-aggregator`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chaos {
    /// Exit abruptly when asked to prepare this round (a crash).
    pub crash_at_round: Option<u32>,
    /// Return a wrong partial sum (one bit flipped) in every round.
    pub lie: bool,
}

/// Writes what an aggregator answered in a round to its store (RES-009), before the answer
/// leaves.
pub type Recorder = Arc<dyn Fn(u32, &RoundRecord) -> Result<(), String> + Send + Sync>;

/// One aggregator.
pub struct AggregatorService {
    state: Mutex<Aggregator>,
    record: Option<Recorder>,
    public_hex: String,
    key_signature: Vec<u8>,
    cert_der: Vec<u8>,
    ca_der: Vec<u8>,
    revocations: Arc<crate::pki::Revocations>,
    name: String,
    chaos: Chaos,
}

impl std::fmt::Debug for AggregatorService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AggregatorService({})", self.name)
    }
}

impl AggregatorService {
    /// Aggregator `index` (0-based) of a job, with a fresh HPKE key. Its credentials must be
    /// the aggregator certificate named `aggregator-{index+1}`.
    pub fn new(
        spec: &JobSpec,
        index: usize,
        verify_key: Option<[u8; 32]>,
        creds: &Credentials,
        chaos: Chaos,
    ) -> Result<Arc<Self>, NetError> {
        Self::with_key(
            spec,
            (index, verify_key),
            creds,
            (AggregatorKey::generate(), BTreeMap::new(), None),
            chaos,
        )
    }

    /// Aggregator `index` of a job with `key`, what it answered before (`records`, from its
    /// store after a restart) and where it records each answer before it leaves.
    pub fn with_key(
        spec: &JobSpec,
        (index, verify_key): (usize, Option<[u8; 32]>),
        creds: &Credentials,
        (key, records, record): (AggregatorKey, BTreeMap<u32, RoundRecord>, Option<Recorder>),
        chaos: Chaos,
    ) -> Result<Arc<Self>, NetError> {
        let refuse = |m: String| transport_err("aggregator", m);
        let name = aggregator_name(index);
        if creds.role != Role::Aggregator || creds.name != name {
            return Err(refuse(format!(
                "aggregator {} needs the certificate `{name}` (role aggregator), not `{}` ({})",
                index + 1,
                creds.name,
                creds.role
            )));
        }
        let params = multi_params(spec)?;
        let owners: BTreeSet<String> = spec.owners.iter().cloned().collect();
        let signer = creds.signing_key().map_err(|e| refuse(e.to_string()))?;
        let mut aggregator = Aggregator::new(index, key, signer, params, verify_key, owners)
            .map_err(|e| refuse(e.to_string()))?;
        aggregator.restore(records);
        Ok(Arc::new(Self {
            record,
            public_hex: aggregator.public_hex(),
            key_signature: aggregator.key_signature(),
            cert_der: creds.cert_der().map_err(|e| refuse(e.to_string()))?,
            state: Mutex::new(aggregator),
            ca_der: creds.ca_der().map_err(|e| refuse(e.to_string()))?,
            revocations: creds.revocations.clone(),
            name,
            chaos,
        }))
    }

    /// This aggregator's HPKE public key for the job, hex.
    pub fn public_hex(&self) -> &str {
        &self.public_hex
    }

    /// Step 2 (sans-gRPC): checks the relayed contributions, opens this aggregator's shares
    /// and signs the answers.
    pub fn prepare_relayed(
        &self,
        round: u32,
        relayed: Vec<(Contribution, Vec<u8>)>,
    ) -> Result<PrepareAnswer, String> {
        if self.chaos.crash_at_round == Some(round) {
            tracing::error!("chaos: {} crashes at round {round}", self.name);
            std::process::exit(3);
        }
        let checked = check_relayed(relayed, &self.ca_der, &self.revocations)?;
        let mut a = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = a
            .prepare(round, checked)
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                self.persist(&a, round)?;
                confide_core::crash::point("aggregator-recorded", round);
                Ok(answer)
            });
        if let Err(e) = &result {
            tracing::warn!("round {round}: refused to prepare: {e}");
        }
        result
    }

    /// Writes round `round`'s record to the daemon's store (RES-009).
    fn persist(&self, a: &Aggregator, round: u32) -> Result<(), String> {
        match (&self.record, a.records().get(&round)) {
            (Some(record), Some(r)) => {
                record(round, r).map_err(|e| format!("recording round {round}: {e}"))
            }
            _ => Ok(()),
        }
    }

    /// Step 3 (sans-gRPC): `certificates` are the aggregators' certificates by index.
    pub fn commit(
        &self,
        request: &FinishRequest,
        certificates: &[Vec<u8>],
    ) -> Result<Vec<u8>, String> {
        let keys = signer_keys(certificates, &self.ca_der, &self.revocations);
        let mut a = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = a
            .commit(request, &keys)
            .map_err(|e| e.to_string())
            .and_then(|signature| {
                self.persist(&a, request.round)?;
                Ok(signature)
            });
        match &result {
            Ok(_) => tracing::info!("round {}: committed", request.round),
            Err(e) => tracing::warn!("round {}: refused to commit: {e}", request.round),
        }
        result
    }

    /// Step 4 (sans-gRPC).
    pub fn release(
        &self,
        round: u32,
        signatures: &[Vec<u8>],
        certificates: &[Vec<u8>],
    ) -> Result<FinishReply, String> {
        let keys = signer_keys(certificates, &self.ca_der, &self.revocations);
        let mut a = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut reply = a
            .release(round, signatures, &keys)
            .inspect_err(|e| tracing::warn!("round {round}: refused to release: {e}"))
            .map_err(|e| e.to_string())?;
        tracing::info!(
            "round {round}: partial sum over {} owners ({} refused)",
            reply.accepted.len(),
            reply.rejected.len()
        );
        if self.chaos.lie
            && let Some(b) = reply.aggregate.last_mut()
        {
            tracing::error!("chaos: {} returns a wrong partial sum", self.name);
            *b ^= 1;
        }
        Ok(reply)
    }
}

/// The gRPC face of an aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorGrpc(pub Arc<AggregatorService>);

#[tonic::async_trait]
impl pb::aggregator_server::Aggregator for AggregatorGrpc {
    async fn get_public_key(
        &self,
        request: Request<pb::PublicKeyRequest>,
    ) -> Result<Response<pb::PublicKeyReply>, Status> {
        peer(
            &request,
            &[Role::Node, Role::Coordinator, Role::ModelOwner],
            &self.0.revocations,
        )?;
        Ok(Response::new(pb::PublicKeyReply {
            public_key_json: self.0.public_hex.clone(),
            certificate: self.0.cert_der.clone(),
            key_signature: self.0.key_signature.clone(),
            evidence_json: String::new(),
        }))
    }

    async fn prepare(
        &self,
        request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::PrepareReply>, Status> {
        peer(&request, &[Role::Coordinator], &self.0.revocations)?;
        let req = request.into_inner();
        let relayed = relayed_from_pb(req.contributions);
        let service = self.0.clone();
        let round = req.round;
        // Decryption and proof checks are CPU work: keep them off the async executor.
        let prepared = tokio::task::spawn_blocking(move || service.prepare_relayed(round, relayed))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::permission_denied)?;
        Ok(Response::new(pb::PrepareReply {
            shares: prepared.prepared.into_iter().map(prepared_to_pb).collect(),
            signature: prepared.signature,
            certificate: self.0.cert_der.clone(),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::FinishRequest>,
    ) -> Result<Response<pb::CommitReply>, Status> {
        peer(&request, &[Role::Coordinator], &self.0.revocations)?;
        let wire = request.into_inner();
        let certificates = wire.certificates.clone();
        let req = finish_request_from_pb(wire);
        let service = self.0.clone();
        let signature = tokio::task::spawn_blocking(move || service.commit(&req, &certificates))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::permission_denied)?;
        Ok(Response::new(pb::CommitReply {
            signature,
            certificate: self.0.cert_der.clone(),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::FinishReply>, Status> {
        peer(&request, &[Role::Coordinator], &self.0.revocations)?;
        let r = request.into_inner();
        let service = self.0.clone();
        // Certificate and signature checks: keep them off the async executor.
        let reply = tokio::task::spawn_blocking(move || {
            service.release(r.round, &r.signatures, &r.certificates)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::permission_denied)?;
        Ok(Response::new(finish_reply_to_pb(reply)))
    }
}

// ---------------------------------------------------------------------------------------------
// wire forms

fn code(r: Reject) -> u32 {
    r as u32
}

fn reject(code: u32) -> Reject {
    Reject::from_code(code).unwrap_or(Reject::Malformed)
}

fn prepared_to_pb(p: Prepared) -> pb::PreparedShare {
    match p.share {
        Ok(share) => pb::PreparedShare {
            owner: p.owner,
            verifier_share: share,
            reject_code: 0,
        },
        Err(r) => pb::PreparedShare {
            owner: p.owner,
            verifier_share: Vec::new(),
            reject_code: code(r),
        },
    }
}

fn prepared_from_pb(p: pb::PreparedShare) -> Prepared {
    Prepared {
        owner: p.owner,
        share: if p.reject_code == 0 {
            Ok(p.verifier_share)
        } else {
            Err(reject(p.reject_code))
        },
    }
}

fn finish_request_to_pb(r: &FinishRequest, certificates: &[Vec<u8>]) -> pb::FinishRequest {
    pb::FinishRequest {
        round: r.round,
        answered: r.answered.clone(),
        signatures: r.signatures.clone(),
        certificates: certificates.to_vec(),
        rows: r
            .table
            .iter()
            .map(|(owner, row)| pb::FinishRow {
                owner: owner.clone(),
                present: row.iter().map(Option::is_some).collect(),
                verifier_shares: row.iter().map(|s| s.clone().unwrap_or_default()).collect(),
                reject_code: r.reasons.get(owner).map_or(0, |r| code(*r)),
            })
            .collect(),
    }
}

fn finish_request_from_pb(r: pb::FinishRequest) -> FinishRequest {
    let mut out = FinishRequest {
        round: r.round,
        answered: r.answered,
        signatures: r.signatures,
        ..FinishRequest::default()
    };
    for row in r.rows {
        let shares = row
            .present
            .iter()
            .zip(row.verifier_shares)
            .map(|(&p, s)| p.then_some(s))
            .collect();
        if row.reject_code != 0 {
            out.reasons
                .insert(row.owner.clone(), reject(row.reject_code));
        }
        out.table.insert(row.owner, shares);
    }
    out
}

fn finish_reply_to_pb(r: FinishReply) -> pb::FinishReply {
    pb::FinishReply {
        accepted: r.accepted,
        rejected: r
            .rejected
            .into_iter()
            .map(|(owner, r)| pb::RejectedOwner {
                owner,
                reject_code: code(r),
            })
            .collect(),
        aggregate: r.aggregate,
    }
}

fn finish_reply_from_pb(r: pb::FinishReply) -> FinishReply {
    FinishReply {
        accepted: r.accepted,
        rejected: r
            .rejected
            .into_iter()
            .map(|o| (o.owner, reject(o.reject_code)))
            .collect(),
        aggregate: r.aggregate,
    }
}

// ---------------------------------------------------------------------------------------------
// the coordinator's side

/// The coordinator's connections to the aggregators, in index order.
#[derive(Debug, Clone)]
pub struct AggregatorLinks {
    channels: Vec<crate::fleet::JobChannel>,
    params: MultiParams,
    ca_der: Vec<u8>,
    revocations: Arc<Revocations>,
    limit: usize,
    timeout: Duration,
}

impl AggregatorLinks {
    /// Connects to every aggregator (server name `aggregator-{i+1}`); every request carries
    /// `header` (the job's name, for aggregator daemons that serve many jobs).
    pub async fn connect(
        spec: &JobSpec,
        endpoints: &[String],
        creds: &Credentials,
        (limit, timeout): (usize, Duration),
        header: crate::fleet::JobHeader,
    ) -> Result<Self, NetError> {
        let mut channels = Vec::with_capacity(endpoints.len());
        for (i, ep) in endpoints.iter().enumerate() {
            channels.push(tonic::service::interceptor::InterceptedService::new(
                crate::transport::connect(ep, &aggregator_name(i), creds).await?,
                header.clone(),
            ));
        }
        Ok(Self {
            channels,
            params: multi_params(spec)?,
            ca_der: creds
                .ca_der()
                .map_err(|e| transport_err("coordinator", e))?,
            revocations: creds.revocations.clone(),
            limit,
            timeout,
        })
    }

    /// Each of the three steps may take a quarter of the round's external budget, so an
    /// aggregator that hangs counts as crashed and the round still finishes in time.
    fn step_timeout(&self) -> Duration {
        self.timeout / 4
    }

    fn client(
        &self,
        i: usize,
    ) -> pb::aggregator_client::AggregatorClient<crate::fleet::JobChannel> {
        pb::aggregator_client::AggregatorClient::new(self.channels[i].clone())
            .max_decoding_message_size(self.limit)
            .max_encoding_message_size(self.limit)
    }

    /// An answer to step 2 if its certificate and signature check out; otherwise `None`,
    /// logged, so that one aggregator's bad signature does not make the others refuse.
    fn checked_answer(
        &self,
        (round, i): (u32, usize),
        owners: &BTreeSet<String>,
        view: &[u8; 32],
        reply: pb::PrepareReply,
    ) -> Option<(PrepareAnswer, Vec<u8>)> {
        let key = aggregator_signer(&reply.certificate, &self.ca_der, &self.revocations, i)
            .inspect_err(|e| tracing::warn!("round {round}: {e}"))
            .ok()?;
        let answer = PrepareAnswer {
            prepared: reply.shares.into_iter().map(prepared_from_pb).collect(),
            signature: reply.signature,
        };
        if !answer.verify(&self.params, (round, i), owners, view, &key) {
            tracing::warn!(
                "round {round}: {} sent an answer that is not signed over this round's contributions or not for exactly its owners",
                aggregator_name(i)
            );
            return None;
        }
        Some((answer, reply.certificate))
    }

    /// Steps 2 to 4 of a round with every aggregator, in parallel. An aggregator that fails
    /// or does not answer within the timeout counts as not answering; what it said is logged.
    pub async fn run_round(
        &self,
        round: u32,
        relayed: Vec<(Contribution, Vec<u8>)>,
    ) -> ExternalResult {
        let owners: Vec<String> = relayed.iter().map(|(c, _)| c.owner.clone()).collect();
        let contributions: Vec<Contribution> = relayed.iter().map(|(c, _)| c.clone()).collect();
        let view = view_digest(&contributions);
        let owner_set: BTreeSet<String> = owners.iter().cloned().collect();
        let request = relayed_to_pb(round, relayed);
        let n = self.channels.len();
        let prepares = (0..n).map(|i| {
            let client = self.client(i);
            let request = &request;
            async move {
                let r = again(self.step_timeout(), || {
                    let (mut c, r) = (client.clone(), request.clone());
                    async move { c.prepare(r).await }
                })
                .await;
                answer(round, i, "prepare", r)
            }
        });
        let prepared: Vec<Option<(PrepareAnswer, Vec<u8>)>> =
            futures_util::future::join_all(prepares)
                .await
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.and_then(|r| self.checked_answer((round, i), &owner_set, &view, r)))
                .collect();
        let certificates: Vec<Vec<u8>> = prepared
            .iter()
            .map(|p| p.as_ref().map(|(_, c)| c.clone()).unwrap_or_default())
            .collect();
        let answers: Vec<Option<PrepareAnswer>> =
            prepared.into_iter().map(|p| p.map(|(a, _)| a)).collect();
        let finish = FinishRequest::assemble(round, owners, &answers);
        let wire = finish_request_to_pb(&finish, &certificates);
        let commits = (0..n).map(|i| {
            let client = self.client(i);
            let wire = &wire;
            let answered = finish.answered[i];
            async move {
                if !answered {
                    return None;
                }
                let r = again(self.step_timeout(), || {
                    let (mut c, w) = (client.clone(), wire.clone());
                    async move { c.commit(w).await }
                })
                .await;
                answer(round, i, "commit", r)
            }
        });
        let commits = futures_util::future::join_all(commits).await;
        let release = pb::ReleaseRequest {
            round,
            signatures: commits
                .iter()
                .map(|c| c.as_ref().map(|c| c.signature.clone()).unwrap_or_default())
                .collect(),
            certificates: commits
                .iter()
                .map(|c| {
                    c.as_ref()
                        .map(|c| c.certificate.clone())
                        .unwrap_or_default()
                })
                .collect(),
        };
        let releases = (0..n).map(|i| {
            let client = self.client(i);
            let release = &release;
            let committed = commits[i].is_some();
            async move {
                if !committed {
                    return None;
                }
                let r = again(self.step_timeout(), || {
                    let (mut c, r) = (client.clone(), release.clone());
                    async move { c.release(r).await }
                })
                .await;
                answer(round, i, "release", r).map(finish_reply_from_pb)
            }
        });
        let replies = futures_util::future::join_all(releases).await;
        ExternalResult::Aggregated {
            request: finish,
            replies,
        }
    }
}

/// RES-010: `call` until it is answered (or refused), asking again with the same request
/// while the aggregator cannot be reached, backing off from 0.1 s to 2 s, for at most `limit`.
async fn again<T, F, Fut>(
    limit: Duration,
    mut call: F,
) -> Result<Result<Response<T>, Status>, tokio::time::error::Elapsed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Response<T>, Status>>,
{
    tokio::time::timeout(limit, async {
        let mut backoff = Duration::from_millis(100);
        loop {
            match call().await {
                Err(s) if crate::roles::is_transport_failure(&s) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    })
    .await
}

/// An aggregator's reply, or `None` (logged) when it refused or did not answer in time.
fn answer<T>(
    round: u32,
    i: usize,
    step: &str,
    reply: Result<Result<Response<T>, Status>, tokio::time::error::Elapsed>,
) -> Option<T> {
    match reply {
        Ok(Ok(reply)) => Some(reply.into_inner()),
        Ok(Err(status)) => {
            tracing::warn!(
                "round {round}: {} refused to {step}: {}",
                aggregator_name(i),
                status.message()
            );
            None
        }
        Err(_) => {
            tracing::warn!("round {round}: {} did not answer", aggregator_name(i));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{init_ca, issue, revoke};
    use time::OffsetDateTime;

    /// Owners and the coordinator accept an aggregator's key or answer only under the
    /// certificate of that very aggregator, from this federation, unrevoked.
    #[test]
    fn aggregator_signer_checks_ca_name_role_and_revocation() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        issue(dir.path(), "aggregator-1", Role::Aggregator, now).expect("issue");
        issue(dir.path(), "aggregator-2", Role::Aggregator, now).expect("issue");
        issue(dir.path(), "guest", Role::Node, now).expect("issue");
        let creds = |n: &str| Credentials::load(dir.path(), n).expect("load");
        let (one, two, guest) = (creds("aggregator-1"), creds("aggregator-2"), creds("guest"));
        let ca = one.ca_der().expect("ca");
        let der = |c: &Credentials| c.cert_der().expect("der");
        let key = aggregator_signer(&der(&one), &ca, &one.revocations, 0).expect("valid");
        assert_eq!(key, one.signing_key().expect("key").public_key());
        // Another aggregator's certificate for index 0, and a node's.
        assert!(aggregator_signer(&der(&two), &ca, &one.revocations, 0).is_err());
        assert!(aggregator_signer(&der(&guest), &ca, &one.revocations, 0).is_err());
        assert!(aggregator_signer(&[], &ca, &one.revocations, 0).is_err());
        // Another federation's CA.
        let other = tempfile::tempdir().expect("tmp");
        init_ca(other.path(), "t", now).expect("ca");
        issue(other.path(), "aggregator-1", Role::Aggregator, now).expect("issue");
        let foreign = Credentials::load(other.path(), "aggregator-1").expect("load");
        assert!(aggregator_signer(&der(&foreign), &ca, &one.revocations, 0).is_err());
        // Revoked: refused from then on.
        revoke(dir.path(), "aggregator-1", "key compromise", now).expect("revoke");
        let err = aggregator_signer(&der(&one), &ca, &one.revocations, 0).expect_err("revoked");
        assert!(err.contains("revoked"), "{err}");
        assert!(aggregator_signer(&der(&two), &ca, &one.revocations, 1).is_ok());
    }
}
