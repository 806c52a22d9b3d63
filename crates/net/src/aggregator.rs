//! `confide aggregator`: one of the `shares` or `threshold` aggregators (see
//! `confide_secagg::aggregators` for the protocol and the rules each aggregator enforces), and
//! the coordinator's side of talking to all of them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confide_core::{JobSpec, Role};
use confide_secagg::aggregators::{
    FinishReply, FinishRequest, MultiParams, Prepared, aggregator_name,
};
use confide_secagg::contribution::Contribution;
use confide_secagg::{Aggregator, AggregatorKey, ExternalResult, Reject};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::coordinator::{job_digest, job_scheme_params};
use crate::keyholder::{check_relayed, relayed_from_pb, relayed_to_pb};
use crate::pb;
use crate::pki::Credentials;
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

/// Misbehaviour for chaos testing (`confide simulate --faulty-aggregator`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chaos {
    /// Exit abruptly when asked to prepare this round (a crash).
    pub crash_at_round: Option<u32>,
    /// Return a wrong partial sum (one bit flipped) in every round.
    pub lie: bool,
}

/// One aggregator.
pub struct AggregatorService {
    state: Mutex<Aggregator>,
    public_hex: String,
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
        let aggregator =
            Aggregator::new(index, AggregatorKey::generate(), params, verify_key, owners)
                .map_err(|e| refuse(e.to_string()))?;
        Ok(Arc::new(Self {
            public_hex: aggregator.public_hex(),
            state: Mutex::new(aggregator),
            ca_der: creds.ca_der().map_err(|e| refuse(e.to_string()))?,
            revocations: creds.revocations.clone(),
            name,
            chaos,
        }))
    }

    /// Step 2 (sans-gRPC): checks the relayed contributions and opens this aggregator's shares.
    pub fn prepare_relayed(
        &self,
        round: u32,
        relayed: Vec<(Contribution, Vec<u8>)>,
    ) -> Result<Vec<Prepared>, String> {
        if self.chaos.crash_at_round == Some(round) {
            tracing::error!("chaos: {} crashes at round {round}", self.name);
            std::process::exit(3);
        }
        let checked = check_relayed(relayed, &self.ca_der, &self.revocations)?;
        let mut a = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let result = a.prepare(round, checked).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::warn!("round {round}: refused to prepare: {e}");
        }
        result
    }

    /// Step 3 (sans-gRPC).
    pub fn finish(&self, request: &FinishRequest) -> Result<FinishReply, String> {
        let mut a = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut reply = a.finish(request).map_err(|e| e.to_string())?;
        tracing::info!(
            "round {}: partial sum over {} owners ({} refused)",
            request.round,
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
            shares: prepared.into_iter().map(prepared_to_pb).collect(),
        }))
    }

    async fn finish(
        &self,
        request: Request<pb::FinishRequest>,
    ) -> Result<Response<pb::FinishReply>, Status> {
        peer(&request, &[Role::Coordinator], &self.0.revocations)?;
        let req = finish_request_from_pb(request.into_inner());
        let service = self.0.clone();
        let reply = tokio::task::spawn_blocking(move || service.finish(&req))
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

fn finish_request_to_pb(r: &FinishRequest) -> pb::FinishRequest {
    pb::FinishRequest {
        round: r.round,
        answered: r.answered.clone(),
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
    channels: Vec<Channel>,
    limit: usize,
    timeout: Duration,
}

impl AggregatorLinks {
    /// Connects to every aggregator (server name `aggregator-{i+1}`).
    pub async fn connect(
        endpoints: &[String],
        creds: &Credentials,
        limit: usize,
        timeout: Duration,
    ) -> Result<Self, NetError> {
        let mut channels = Vec::with_capacity(endpoints.len());
        for (i, ep) in endpoints.iter().enumerate() {
            channels.push(crate::transport::connect(ep, &aggregator_name(i), creds).await?);
        }
        Ok(Self {
            channels,
            limit,
            timeout,
        })
    }

    /// Each of the two steps may take a third of the round's external budget, so an aggregator
    /// that hangs counts as crashed and the round still finishes in time.
    fn step_timeout(&self) -> Duration {
        self.timeout / 3
    }

    fn client(&self, i: usize) -> pb::aggregator_client::AggregatorClient<Channel> {
        pb::aggregator_client::AggregatorClient::new(self.channels[i].clone())
            .max_decoding_message_size(self.limit)
            .max_encoding_message_size(self.limit)
    }

    /// Steps 2 and 3 of a round with every aggregator, in parallel. An aggregator that fails
    /// or does not answer within the timeout counts as not answering; what it said is logged.
    pub async fn run_round(
        &self,
        round: u32,
        relayed: Vec<(Contribution, Vec<u8>)>,
    ) -> ExternalResult {
        let owners: Vec<String> = relayed.iter().map(|(c, _)| c.owner.clone()).collect();
        let request = relayed_to_pb(round, relayed);
        let prepares = (0..self.channels.len()).map(|i| {
            let mut client = self.client(i);
            let request = request.clone();
            async move {
                let r = tokio::time::timeout(self.step_timeout(), client.prepare(request)).await;
                answer(round, i, "prepare", r).map(|reply| {
                    reply
                        .shares
                        .into_iter()
                        .map(prepared_from_pb)
                        .collect::<Vec<_>>()
                })
            }
        });
        let answers = futures_util::future::join_all(prepares).await;
        let finish = FinishRequest::assemble(round, owners, &answers);
        let wire = finish_request_to_pb(&finish);
        let finishes = (0..self.channels.len()).map(|i| {
            let mut client = self.client(i);
            let wire = wire.clone();
            let answered = finish.answered[i];
            async move {
                if !answered {
                    return None;
                }
                let r = tokio::time::timeout(self.step_timeout(), client.finish(wire)).await;
                answer(round, i, "finish", r).map(finish_reply_from_pb)
            }
        });
        let replies = futures_util::future::join_all(finishes).await;
        ExternalResult::Aggregated {
            request: finish,
            replies,
        }
    }
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
