//! Starting each role on a listener. The CLI runs one role per process; the in-process
//! simulation runs them as tasks. Both use exactly this code and talk gRPC over mutual TLS.

use std::future::Future;
use std::time::{Duration, Instant};

use confide_core::JobSpec;
use confide_ml::Dataset;
use confide_secagg::{ExternalResult, HolderKey, HolderPublicKey};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::aggregator::{AggregatorGrpc, AggregatorLinks, AggregatorService, Chaos};
use crate::coordinator::{
    Coordinator, CoordinatorOptions, CoordinatorService, JobReport, job_scheme_params,
};
use crate::keyholder::{KeyHolderGrpc, KeyHolderService};
use crate::pb;
use crate::pki::Credentials;
use crate::transport::{NetError, connect, init_crypto, server_tls, transport_err};

/// Serves the confidential trainer's host on `listener` until `shutdown` completes, then stops
/// the trusted core.
pub async fn serve_trainer(
    listener: TcpListener,
    creds: &Credentials,
    service: crate::trainer::TrainerService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    init_crypto();
    let max = crate::trainer::MAX_UPLOAD_BYTES + crate::trainer::PIECE_BYTES;
    let guard = crate::guard::trainer(crate::trainer::PIECE_BYTES, creds.revocations.clone());
    let svc = pb::trainer_server::TrainerServer::new(service.clone())
        .max_decoding_message_size(guard.max_bytes())
        .max_encoding_message_size(max);
    let served = Server::builder()
        .tls_config(server_tls(creds))
        .map_err(|e| transport_err("trainer TLS", e))?
        .layer(guard)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| transport_err("trainer", e));
    let stopped = service
        .shutdown()
        .await
        .map_err(|e| transport_err("stopping the trusted core", e));
    served.and(stopped)
}

/// Serves the key holder on `listener` until `shutdown` completes. With `state`, every
/// decryption is recorded there first; with `attester`, it answers a nonce with evidence of
/// its public key (it runs as a trusted core).
pub async fn serve_keyholder(
    listener: TcpListener,
    creds: &Credentials,
    spec: &JobSpec,
    key: impl Into<HolderKey>,
    (state, attester): (
        Option<std::path::PathBuf>,
        Option<confide_attest::dev::DevTee>,
    ),
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    init_crypto();
    let service = KeyHolderService::new(spec, key.into(), creds, state, attester)?;
    // An unseal request carries one update per owner; the guard bounds each method.
    let guard = crate::guard::keyholder(spec, creds.revocations.clone());
    let svc = pb::key_holder_server::KeyHolderServer::new(KeyHolderGrpc(service))
        .max_decoding_message_size(guard.max_bytes())
        .max_encoding_message_size(relay_limit(spec));
    Server::builder()
        .tls_config(server_tls(creds))
        .map_err(|e| transport_err("key holder TLS", e))?
        .layer(guard)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| transport_err("key holder", e))
}

/// Serves aggregator `index` (0-based) on `listener` until `shutdown` completes.
pub async fn serve_aggregator(
    listener: TcpListener,
    creds: &Credentials,
    spec: &JobSpec,
    index: usize,
    verify_key: Option<[u8; 32]>,
    chaos: Chaos,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    init_crypto();
    let service = AggregatorService::new(spec, index, verify_key, creds, chaos)?;
    // A request carries one update per owner; the guard bounds each method.
    let guard = crate::guard::aggregator(spec, creds.revocations.clone());
    let svc = pb::aggregator_server::AggregatorServer::new(AggregatorGrpc(service))
        .max_decoding_message_size(guard.max_bytes())
        .max_encoding_message_size(relay_limit(spec));
    Server::builder()
        .tls_config(server_tls(creds))
        .map_err(|e| transport_err("aggregator TLS", e))?
        .layer(guard)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| transport_err("aggregator", e))
}

/// Standard gRPC health (`grpc.health.v1.Health`, tonic-health) for a daemon's port: the
/// overall status ("") is SERVING while the port serves, and NOT_SERVING once `shutdown`
/// completed (calls in progress still finish). A daemon opens its ports only after it has
/// recovered its store, so SERVING also means recovered. Any federation certificate may ask.
async fn with_health(
    shutdown: impl Future<Output = ()>,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    impl Future<Output = ()>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let shutdown = async move {
        shutdown.await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    };
    (service, shutdown)
}

/// Serves the long-running coordinator's control API on `listener` until `shutdown`
/// completes. The job store must already be open: a daemon serves only after it has recovered.
pub async fn serve_control(
    listener: TcpListener,
    creds: &Credentials,
    service: crate::control::ControlService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    init_crypto();
    let guard = service.guard();
    let svc = pb::control_server::ControlServer::new(service)
        .max_decoding_message_size(guard.max_bytes());
    let (health, shutdown) = with_health(shutdown).await;
    Server::builder()
        .tls_config(server_tls(creds))
        .map_err(|e| transport_err("control TLS", e))?
        .add_service(tower_layer::Layer::layer(&guard, svc))
        .add_service(health)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| transport_err("control", e))
}

/// Serves a long-running key holder (`confide keyholder serve`) on `listener` until `shutdown`
/// completes: `KeyHolderJobs` for coordinators, and every open job's `KeyHolder` service,
/// routed by the `confide-job` metadata. `jobs` must already be recovered.
pub async fn serve_keyholder_daemon(
    listener: TcpListener,
    creds: &Credentials,
    jobs: crate::keyholders::KeyHolderJobs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    init_crypto();
    let guard = crate::keyholders::guard(creds.revocations.clone());
    let svc = pb::key_holder_jobs_server::KeyHolderJobsServer::new(
        crate::keyholders::KeyHolderJobsGrpc(jobs.clone()),
    )
    .max_decoding_message_size(guard.max_bytes());
    let (health, shutdown) = with_health(shutdown).await;
    Server::builder()
        .tls_config(server_tls(creds))
        .map_err(|e| transport_err("key holder TLS", e))?
        .add_service(tower_layer::Layer::layer(&guard, svc))
        .add_service(jobs.routes().router())
        .add_service(health)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| transport_err("key holder", e))
}

/// Serves a long-running aggregator (`confide aggregator serve`) on `listener` until
/// `shutdown` completes: `AggregatorJobs` for coordinators, and every open job's `Aggregator`
/// service, routed by the `confide-job` metadata.
pub async fn serve_aggregator_daemon(
    listener: TcpListener,
    creds: &Credentials,
    jobs: crate::aggregators::AggregatorJobs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    init_crypto();
    let guard = crate::aggregators::guard(creds.revocations.clone());
    let svc = pb::aggregator_jobs_server::AggregatorJobsServer::new(
        crate::aggregators::AggregatorJobsGrpc(jobs.clone()),
    )
    .max_decoding_message_size(guard.max_bytes());
    let (health, shutdown) = with_health(shutdown).await;
    Server::builder()
        .tls_config(server_tls(creds))
        .map_err(|e| transport_err("aggregator TLS", e))?
        .add_service(tower_layer::Layer::layer(&guard, svc))
        .add_service(jobs.routes().router())
        .add_service(health)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| transport_err("aggregator", e))
}

/// Serves a long-running coordinator's fleet port on `listener` until `shutdown` completes:
/// the `Fleet` service (offers, decisions) and every running job's `Coordinator` service,
/// routed by the `confide-job` metadata (`crate::fleet`).
pub async fn serve_fleet(
    listener: TcpListener,
    creds: &Credentials,
    fleet: crate::fleet::FleetService,
    routes: crate::fleet::JobRoutes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError> {
    init_crypto();
    let guard = fleet.guard();
    let svc = pb::fleet_server::FleetServer::new(fleet);
    let fleet_svc = tower_layer::Layer::layer(&guard, svc);
    let (health, shutdown) = with_health(shutdown).await;
    Server::builder()
        .tls_config(server_tls(creds))
        .map_err(|e| transport_err("fleet TLS", e))?
        .add_service(fleet_svc)
        .add_service(routes.router())
        .add_service(health)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .map_err(|e| transport_err("fleet", e))
}

/// The connections accepted on `listener`, with Nagle's algorithm off: the protocols exchange
/// small messages in turn, which Nagle's algorithm with delayed acknowledgements would hold
/// back by about 40 ms each (`Server::tcp_nodelay` does not apply to our own listener).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|stream| {
        if let Ok(s) = &stream
            && let Err(e) = s.set_nodelay(true)
        {
            tracing::warn!("TCP_NODELAY: {e}");
        }
        stream
    })
}

/// The message limit for relaying a round's contributions: one update per owner.
pub fn relay_limit(spec: &JobSpec) -> usize {
    spec.limits
        .max_message_bytes
        .saturating_mul(spec.owners.len().max(1))
}

/// Asks the key holder to unseal round `round`'s sum of `relayed`. RES-002: a key holder that
/// is unreachable (restarting) is asked again, with the byte-identical request, until the
/// caller's deadline (the round's); by RES-001 it answers a request it already decrypted
/// with the same sum.
pub async fn unseal_at_keyholder(
    channel: crate::fleet::JobChannel,
    relay: usize,
    round: u32,
    relayed: Vec<(confide_secagg::Contribution, Vec<u8>)>,
) -> Result<ExternalResult, String> {
    let mut kh = pb::key_holder_client::KeyHolderClient::new(channel)
        .max_decoding_message_size(relay)
        .max_encoding_message_size(relay);
    let request = crate::keyholder::relayed_to_pb(round, relayed);
    let mut wait = UNSEAL_RETRY_FIRST;
    loop {
        match kh.unseal(request.clone()).await {
            Ok(r) => return Ok(ExternalResult::Unsealed(r.into_inner().plaintexts)),
            Err(s) if is_transport_failure(&s) => {
                tracing::warn!(
                    "round {round}: the key holder {}; asking again in {:.1} s",
                    describe_failure(&s),
                    wait.as_secs_f64()
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(UNSEAL_RETRY_MAX);
            }
            Err(s) => return Err(describe_failure(&s)),
        }
    }
}

/// The first wait before asking an unreachable key holder again (RES-002).
const UNSEAL_RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two asks.
const UNSEAL_RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether a failed call never reached the peer's logic (it was down, restarting, or the
/// connection broke), so that asking again with the same request is the right response.
pub fn is_transport_failure(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// A failed call to another role in words: a refusal (the peer answered no) or a transport
/// failure (it could not be reached or the connection broke); the callers prefix the peer.
pub fn describe_failure(s: &tonic::Status) -> String {
    use tonic::Code;
    let msg = crate::guard::excerpt_n(s.message(), 512);
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            format!("could not be reached ({:?}): {msg}", s.code())
        }
        _ => format!("refused: {msg}"),
    }
}

/// What the coordinator role needs.
#[derive(Debug)]
pub struct CoordinatorRole {
    /// Its credentials.
    pub creds: Credentials,
    /// The job.
    pub spec: JobSpec,
    /// Held-out evaluation data.
    pub eval: Option<Dataset>,
    /// The key holder's address (paillier, lattice).
    pub keyholder: Option<String>,
    /// The aggregators' addresses, by index (shares, threshold).
    pub aggregators: Vec<String>,
    /// After the job ends, keep serving this long so the model owner can fetch the model (the
    /// coordinator stops earlier once the model owner confirms receipt).
    pub linger: Duration,
    /// The job's signed manifest.
    pub manifest: confide_governance::manifest::SignedManifest,
    /// The audit log's store (a redb file); `None` keeps it in memory.
    pub audit_store: Option<std::path::PathBuf>,
    /// Write the exported audit log here when the job ends.
    pub audit_export: Option<std::path::PathBuf>,
}

/// The audit log in `path` (redb), or in memory.
pub fn open_audit_log(
    path: Option<&std::path::Path>,
) -> Result<confide_governance::audit::AuditLog, NetError> {
    let store: std::sync::Arc<dyn confide_store::Store> = match path {
        Some(p) => std::sync::Arc::new(
            confide_store::RedbStore::open(p)
                .map_err(|e| transport_err(format!("audit store {}", p.display()), e))?,
        ),
        None => std::sync::Arc::new(confide_store::MemoryStore::new()),
    };
    Ok(confide_governance::audit::AuditLog::new(store))
}

/// Fetches the key holder's public key (retrying while it starts) and checks it against the
/// job: the modulus size under `paillier`, the exact BFV parameters under `lattice`.
async fn keyholder_public_key(
    endpoint: &str,
    creds: &Credentials,
    spec: &JobSpec,
    wait: Duration,
) -> Result<HolderPublicKey, NetError> {
    let deadline = Instant::now() + wait;
    let json = loop {
        let attempt = async {
            let ch = connect(endpoint, "keyholder", creds).await?;
            let reply = pb::key_holder_client::KeyHolderClient::new(ch)
                .get_public_key(pb::PublicKeyRequest::default())
                .await
                .map_err(|s| transport_err("key holder", s.message()))?;
            Ok::<_, NetError>(reply.into_inner().public_key_json)
        };
        match attempt.await {
            Ok(json) => break json,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    HolderPublicKey::parse(
        spec.job.scheme,
        &json,
        &job_scheme_params(spec)?,
        spec.modulus_bits,
    )
    .map_err(|e| transport_err("key holder", e))
}

/// Runs a whole job as the coordinator, serving on `listener`; returns the report and the
/// final parameters.
pub async fn run_coordinator(
    listener: TcpListener,
    role: CoordinatorRole,
) -> Result<(JobReport, Vec<f32>), NetError> {
    init_crypto();
    let timeout = Duration::from_secs_f64(role.spec.job.round_timeout_secs);
    let scheme = role.spec.job.scheme;
    let holder_key = match (scheme.uses_key_holder(), &role.keyholder) {
        (true, Some(ep)) => Some(keyholder_public_key(ep, &role.creds, &role.spec, timeout).await?),
        (true, None) => {
            return Err(transport_err(
                "coordinator",
                format!("the {} scheme needs --keyholder", scheme.as_str()),
            ));
        }
        (false, _) => None,
    };
    let keyholder_channel = match &role.keyholder {
        Some(ep) if holder_key.is_some() => Some(connect(ep, "keyholder", &role.creds).await?),
        _ => None,
    };
    let max = role.spec.limits.max_message_bytes;
    let relay = relay_limit(&role.spec);
    let aggregators = if scheme.uses_aggregators() {
        let (n, _) = role.spec.aggregators_n_t();
        if role.aggregators.len() != n {
            return Err(transport_err(
                "coordinator",
                format!(
                    "the job has {n} aggregators; {} --aggregator addresses were given",
                    role.aggregators.len()
                ),
            ));
        }
        Some(
            AggregatorLinks::connect(
                &role.spec,
                &role.aggregators,
                &role.creds,
                (relay, timeout),
                crate::fleet::JobHeader::default(),
            )
            .await?,
        )
    } else {
        None
    };
    let coordinator = Coordinator::new(CoordinatorOptions {
        spec: role.spec.clone(),
        eval: role.eval,
        keyholder_endpoint: role.keyholder.clone(),
        aggregator_endpoints: role.aggregators.clone(),
        manifest: role.manifest.clone(),
        identity: role.creds.identity(),
        certificate: role
            .creds
            .cert_der()
            .map_err(|e| transport_err("coordinator certificate", e))?,
        audit: open_audit_log(role.audit_store.as_deref())?,
        audit_export: role.audit_export.clone(),
        revocations: role.creds.revocations.clone(),
        checkpoints: None,
        resume: None,
    })?;
    let guard = coordinator.guard();
    let svc =
        pb::coordinator_server::CoordinatorServer::new(CoordinatorService(coordinator.clone()))
            .max_decoding_message_size(guard.max_bytes())
            .max_encoding_message_size(max);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .tls_config(server_tls(&role.creds))
        .map_err(|e| transport_err("coordinator TLS", e))?
        .layer(guard)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming(listener), async {
            let _ = stop_rx.await;
        });
    let server = tokio::spawn(server);

    let unseal = |round: u32, relayed: Vec<(confide_secagg::Contribution, Vec<u8>)>| {
        let channel = keyholder_channel.clone();
        let aggregators = aggregators.clone();
        async move {
            if let Some(links) = aggregators {
                return Ok(links.run_round(round, relayed).await);
            }
            let channel = channel.ok_or("has no open connection")?;
            let channel = tonic::service::interceptor::InterceptedService::new(
                channel,
                crate::fleet::JobHeader::default(),
            );
            unseal_at_keyholder(channel, relay, round, relayed).await
        }
    };
    let report = coordinator.clone().run(holder_key, unseal).await;
    let params = coordinator
        .result()
        .map(|(_, p)| p.to_vec())
        .unwrap_or_default();

    // Let the model owner fetch the result, then stop.
    let _ = tokio::time::timeout(role.linger, coordinator.fetched()).await;
    let _ = stop_tx.send(());
    let _ = server.await;
    Ok((report, params))
}

#[cfg(test)]
mod tests {
    use super::describe_failure;
    use tonic::Status;

    #[test]
    fn a_transport_failure_is_not_worded_as_a_refusal() {
        let unreachable = describe_failure(&Status::unavailable("tcp connect error"));
        assert!(
            unreachable.starts_with("could not be reached"),
            "{unreachable}"
        );
        assert!(!unreachable.contains("refused"), "{unreachable}");
        let refused = describe_failure(&Status::permission_denied("KEY-004 one contribution"));
        assert_eq!(refused, "refused: KEY-004 one contribution");
        let long = describe_failure(&Status::failed_precondition("x".repeat(10_000)));
        assert!(long.len() < 600, "{} bytes", long.len());
    }
}
