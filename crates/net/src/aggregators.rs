//! A long-running aggregator (`confide aggregator serve`): one process, fresh key material per
//! job.
//!
//! - A coordinator opens a job (`AggregatorJobs.OpenJob`) with its signed manifest. The
//!   aggregator verifies it and makes the job's [`AggregatorService`]: a fresh HPKE key pair
//!   (owners encrypt their shares to it) and, under `shares`, the job's Prio3 verify key,
//!   derived with HKDF-SHA256 (RFC 5869) from the root every aggregator of the federation
//!   holds (`--verify-key`) and the manifest hash, so that the job's aggregators agree on it
//!   without anyone sending it, and no two jobs share one. Opening a job again changes nothing.
//! - Every `Aggregator` request names its job in the `confide-job` metadata
//!   (`crate::fleet::Router`); each job has its own service, guard and round state.
//! - Closing a job (`CloseJob`) drops its key material; its requests are then refused
//!   (FLEET-003).
//!
//! The HPKE key lives in memory only: an aggregator daemon that restarts serves the open jobs
//! no more (their coordinator's rounds then go on without it where the scheme allows, as
//! under `threshold`). Sealing it at rest, as the key holder daemon does, is still to come.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use confide_core::{Role, SchemeKind};
use tonic::{Request, Response, Status};

use crate::aggregator::{AggregatorGrpc, AggregatorService, Chaos};
use crate::fleet::Routes;
use crate::guard::Guarded;
use crate::pb;
use crate::pki::Credentials;
use crate::transport::peer;

/// A job's guarded `Aggregator` service.
pub type AggServer = Guarded<pb::aggregator_server::AggregatorServer<AggregatorGrpc>>;

/// The aggregator's jobs.
#[derive(Clone)]
pub struct AggregatorJobs(Arc<Inner>);

struct Inner {
    creds: Credentials,
    index: usize,
    verify_root: Option<[u8; 32]>,
    routes: Routes<AggServer>,
    open: Mutex<HashMap<[u8; 32], String>>,
}

impl std::fmt::Debug for AggregatorJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AggregatorJobs({}, {:?})",
            self.0.index + 1,
            self.0.routes
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The Prio3 verify key of job `hash`: HKDF-SHA256 (RFC 5869) from the aggregators' shared
/// `root`, with the manifest hash as the salt.
pub fn job_verify_key(root: &[u8; 32], hash: &[u8; 32]) -> [u8; 32] {
    struct Len32;
    impl ring::hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, hash).extract(root);
    let mut out = [0u8; 32];
    prk.expand(&[b"confide/prio3-verify-key/v1"], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes are far below HKDF-SHA256's output limit");
    out
}

impl AggregatorJobs {
    /// Aggregator `index` (0-based) with `creds` (`aggregator-<index+1>`); `verify_root` is
    /// the federation's shared root of `shares` verify keys (none: `shares` jobs are refused).
    pub fn new(creds: Credentials, index: usize, verify_root: Option<[u8; 32]>) -> Self {
        Self(Arc::new(Inner {
            creds,
            index,
            verify_root,
            routes: Routes::default(),
            open: Mutex::default(),
        }))
    }

    /// The jobs' routes (the `Aggregator` service for every open job).
    pub fn routes(&self) -> &Routes<AggServer> {
        &self.0.routes
    }

    /// How many jobs are open.
    pub fn open_jobs(&self) -> usize {
        lock(&self.0.open).len()
    }

    fn open(&self, manifest_json: &str) -> Result<String, Status> {
        let (spec, hash) =
            crate::keyholders::verified(manifest_json).map_err(Status::invalid_argument)?;
        if !spec.job.scheme.uses_aggregators() {
            return Err(Status::invalid_argument(format!(
                "job `{}` runs under `{}`, which has no aggregators",
                spec.job.id,
                spec.job.scheme.as_str()
            )));
        }
        let (n, _) = spec.aggregators_n_t();
        if self.0.index >= n {
            return Err(Status::invalid_argument(format!(
                "job `{}` has {n} aggregators; this is aggregator {}",
                spec.job.id,
                self.0.index + 1
            )));
        }
        let mut open = lock(&self.0.open);
        if let Some(public) = open.get(&hash) {
            return Ok(public.clone());
        }
        let verify_key = match (spec.job.scheme, &self.0.verify_root) {
            (SchemeKind::Shares, Some(root)) => Some(job_verify_key(root, &hash)),
            (SchemeKind::Shares, None) => {
                return Err(Status::failed_precondition(
                    "`shares` jobs need the aggregators' shared verify key root \
                     (`confide aggregator serve --verify-key`)",
                ));
            }
            _ => None,
        };
        let service = AggregatorService::new(
            &spec,
            self.0.index,
            verify_key,
            &self.0.creds,
            Chaos::default(),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let public = service.public_hex().to_string();
        let guard = crate::guard::aggregator(&spec, self.0.creds.revocations.clone());
        let server = pb::aggregator_server::AggregatorServer::new(AggregatorGrpc(service))
            .max_decoding_message_size(guard.max_bytes())
            .max_encoding_message_size(crate::roles::relay_limit(&spec));
        self.0
            .routes
            .insert(hash, tower_layer::Layer::layer(&guard, server));
        open.insert(hash, public.clone());
        tracing::info!(
            "job `{}` ({}): fresh aggregator key material",
            spec.job.id,
            hex::encode(&hash[..8])
        );
        Ok(public)
    }

    fn close(&self, hash: &[u8; 32]) -> bool {
        let existed = lock(&self.0.open).remove(hash).is_some();
        self.0.routes.close(
            hash,
            "the coordinator closed the job; its key material is dropped".into(),
        );
        existed
    }
}

/// The gRPC `AggregatorJobs` service: coordinators open and close jobs.
#[derive(Clone, Debug)]
pub struct AggregatorJobsGrpc(pub AggregatorJobs);

#[tonic::async_trait]
impl pb::aggregator_jobs_server::AggregatorJobs for AggregatorJobsGrpc {
    async fn open_job(
        &self,
        request: Request<pb::OpenJobRequest>,
    ) -> Result<Response<pb::OpenJobReply>, Status> {
        peer(&request, &[Role::Coordinator], &self.0.0.creds.revocations)?;
        let public_key_json = self.0.open(&request.into_inner().manifest_json)?;
        Ok(Response::new(pb::OpenJobReply { public_key_json }))
    }

    async fn close_job(
        &self,
        request: Request<pb::CloseJobRequest>,
    ) -> Result<Response<pb::CloseJobReply>, Status> {
        peer(&request, &[Role::Coordinator], &self.0.0.creds.revocations)?;
        let hash = confide_service::jobs::parse_hash(&request.into_inner().manifest_hash)
            .ok_or_else(|| Status::invalid_argument("a manifest hash is 64 hex digits"))?;
        if self.0.close(&hash) {
            tracing::info!("job {}: closed", hex::encode(&hash[..8]));
        }
        Ok(Response::new(pb::CloseJobReply {}))
    }
}

/// The aggregator daemon's guard for `AggregatorJobs` (coordinators only).
pub fn guard(revocations: Arc<crate::pki::Revocations>) -> crate::guard::Guard {
    crate::keyholders::jobs_guard("confide.v1.AggregatorJobs", revocations)
}

#[cfg(test)]
mod tests {
    use super::job_verify_key;

    #[test]
    fn each_job_gets_its_own_verify_key_and_every_aggregator_the_same_one() {
        let root = [7u8; 32];
        let a = job_verify_key(&root, &[1; 32]);
        assert_eq!(a, job_verify_key(&root, &[1; 32]));
        assert_ne!(a, job_verify_key(&root, &[2; 32]));
        assert_ne!(a, job_verify_key(&[8; 32], &[1; 32]));
    }
}
