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
//! - The HPKE key is derived from a fresh 32-byte seed, which is **sealed and committed to the
//!   store before the public key leaves** (as the key holder daemon does with its keys).
//! - What it answers in each round (the contributions' digest, then the set of owners it
//!   committed to sum) is written to the store before the answer leaves (RES-009): a restarted
//!   aggregator answers a round again only to the identical request, and never aggregates one
//!   of its global models in another round.
//! - A restarted aggregator unseals every open job's key and reads its records before it
//!   serves, so jobs survive it; coordinators ask it again meanwhile (RES-010).
//! - Closing a job (`CloseJob`) deletes its sealed seed and records, and drops its key
//!   material; its requests are then refused (FLEET-003).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use confide_core::{JobSpec, Role, SchemeKind};
use confide_crypto::seal::SealingKey;
use confide_secagg::AggregatorKey;
use confide_secagg::aggregators::RoundRecord;
use confide_store::{Store, StoreExt};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::aggregator::{AggregatorGrpc, AggregatorService, Chaos, Recorder};
use crate::fleet::Routes;
use crate::guard::Guarded;
use crate::pb;
use crate::pki::Credentials;
use crate::transport::{NetError, peer, transport_err};

/// Open jobs: manifest and sealed key seed, by manifest hash.
const JOBS: &str = "aggregator.jobs";
/// What was answered in each round: by manifest hash and round (4 bytes, big-endian).
const ROUNDS: &str = "aggregator.rounds";
/// The measurement-like label the sealing key is bound to.
const SEAL_LABEL: &[u8] = b"confide aggregator serve, sealed job keys v1";

/// What the store keeps of an open job.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    manifest_json: String,
    /// The sealed 32-byte HPKE key seed (`confide_crypto::seal` blob), hex.
    sealed_seed: String,
}

/// A job's guarded `Aggregator` service.
pub type AggServer = Guarded<pb::aggregator_server::AggregatorServer<AggregatorGrpc>>;

/// The aggregator's jobs.
#[derive(Clone)]
pub struct AggregatorJobs(Arc<Inner>);

struct Inner {
    creds: Credentials,
    index: usize,
    verify_root: Option<[u8; 32]>,
    store: Arc<dyn Store>,
    sealing: SealingKey,
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
    /// Its jobs' sealed key seeds and round records are kept in `store`, sealed under a key
    /// derived from `seal_root`.
    pub fn new(
        creds: Credentials,
        index: usize,
        verify_root: Option<[u8; 32]>,
        store: Arc<dyn Store>,
        seal_root: &[u8; 32],
    ) -> Self {
        let sealing = SealingKey::derive(seal_root, SEAL_LABEL, &creds.id());
        Self(Arc::new(Inner {
            creds,
            index,
            verify_root,
            store,
            sealing,
            routes: Routes::default(),
            open: Mutex::default(),
        }))
    }

    /// Unseals every open job's key, reads its round records, and serves it: call before
    /// serving anything. Returns how many jobs are open.
    ///
    /// # Errors
    /// A stored job does not read back, or its key does not unseal (the wrong seal key file).
    pub fn recover(&self) -> Result<usize, NetError> {
        let err = |e: String| transport_err("aggregator store", e);
        let (jobs, rounds) = self
            .0
            .store
            .read(|txn| {
                Ok::<_, confide_store::StoreError>((
                    txn.scan_prefix(JOBS, &[])?,
                    txn.scan_prefix(ROUNDS, &[])?,
                ))
            })
            .map_err(|e| err(e.to_string()))?;
        let mut records: HashMap<[u8; 32], BTreeMap<u32, RoundRecord>> = HashMap::new();
        for (key, value) in rounds {
            let hash = key.get(..32).and_then(|h| <[u8; 32]>::try_from(h).ok());
            let round = key
                .get(32..36)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes);
            let (Some(hash), Some(round), Some(r), 36) =
                (hash, round, RoundRecord::from_bytes(&value), key.len())
            else {
                return Err(err("a malformed round record".into()));
            };
            records.entry(hash).or_default().insert(round, r);
        }
        let mut open = lock(&self.0.open);
        for (key, value) in &jobs {
            let hash: [u8; 32] = key
                .as_slice()
                .try_into()
                .map_err(|_| err("a malformed job key".into()))?;
            let stored: Stored = serde_json::from_slice(value).map_err(|e| err(e.to_string()))?;
            let (spec, _) = crate::keyholders::verified(&stored.manifest_json).map_err(err)?;
            let (_, seed) = self
                .0
                .sealing
                .unseal(&slot(&hash), &hex::decode(&stored.sealed_seed).unwrap_or_default())
                .map_err(|e| {
                    err(format!(
                        "job {}: its key does not unseal ({e}); is this the aggregator's seal key file?",
                        hex::encode(&hash[..8])
                    ))
                })?;
            let seed: [u8; 32] = seed
                .try_into()
                .map_err(|_| err("a key seed is 32 bytes".into()))?;
            let rounds = records.remove(&hash).unwrap_or_default();
            let public = self
                .serve(&spec, hash, &seed, rounds)
                .map_err(|e| err(e.message().to_string()))?;
            open.insert(hash, public);
        }
        Ok(jobs.len())
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
        if spec.job.scheme == SchemeKind::Shares && self.0.verify_root.is_none() {
            return Err(Status::failed_precondition(
                "`shares` jobs need the aggregators' shared verify key root \
                 (`confide aggregator serve --verify-key`)",
            ));
        }
        let seed = AggregatorKey::fresh_seed();
        // Sealed and committed before the public key leaves: a restart serves the same key.
        let sealed = self
            .0
            .sealing
            .seal(&slot(&hash), 1, &seed)
            .map_err(internal)?;
        let stored = serde_json::to_vec(&Stored {
            manifest_json: manifest_json.to_string(),
            sealed_seed: hex::encode(sealed),
        })
        .map_err(internal)?;
        self.0
            .store
            .transact(|txn| txn.put(JOBS, &hash, &stored))
            .map_err(internal)?;
        let public = self.serve(&spec, hash, &seed, BTreeMap::new())?;
        open.insert(hash, public.clone());
        tracing::info!(
            "job `{}` ({}): fresh aggregator key material, sealed",
            spec.job.id,
            hex::encode(&hash[..8])
        );
        Ok(public)
    }

    /// Serves job `hash` with the key from `seed` and what it answered before (`rounds`);
    /// returns its public key.
    fn serve(
        &self,
        spec: &JobSpec,
        hash: [u8; 32],
        seed: &[u8; 32],
        rounds: BTreeMap<u32, RoundRecord>,
    ) -> Result<String, Status> {
        // Without the root a `shares` job is refused here (`open`), or by the aggregator
        // (`recover`, a daemon restarted without --verify-key).
        let verify_key = match (spec.job.scheme, &self.0.verify_root) {
            (SchemeKind::Shares, Some(root)) => Some(job_verify_key(root, &hash)),
            _ => None,
        };
        let store = self.0.store.clone();
        let record: Recorder = Arc::new(move |round, r: &RoundRecord| {
            let mut key = hash.to_vec();
            key.extend(round.to_be_bytes());
            store
                .transact(|txn| txn.put(ROUNDS, &key, &r.to_bytes()))
                .map_err(|e| e.to_string())
        });
        let service = AggregatorService::with_key(
            spec,
            (self.0.index, verify_key),
            &self.0.creds,
            (AggregatorKey::from_seed(seed), rounds, Some(record)),
            Chaos::default(),
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let public = service.public_hex().to_string();
        let guard = crate::guard::aggregator(spec, self.0.creds.revocations.clone());
        let server = pb::aggregator_server::AggregatorServer::new(AggregatorGrpc(service))
            .max_decoding_message_size(guard.max_bytes())
            .max_encoding_message_size(crate::roles::relay_limit(spec));
        self.0
            .routes
            .insert(hash, tower_layer::Layer::layer(&guard, server));
        Ok(public)
    }

    fn close(&self, hash: &[u8; 32]) -> Result<bool, Status> {
        // The sealed seed and the records go first: nothing of the job survives a restart.
        self.0
            .store
            .transact(|txn| {
                txn.delete(JOBS, hash)?;
                for (key, _) in txn.scan_prefix(ROUNDS, hash)? {
                    txn.delete(ROUNDS, &key)?;
                }
                Ok::<_, confide_store::StoreError>(())
            })
            .map_err(internal)?;
        let existed = lock(&self.0.open).remove(hash).is_some();
        self.0.routes.close(
            hash,
            "the coordinator closed the job; its key material is dropped".into(),
        );
        Ok(existed)
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
        if self.0.close(&hash)? {
            tracing::info!("job {}: closed", hex::encode(&hash[..8]));
        }
        Ok(Response::new(pb::CloseJobReply {}))
    }
}

fn slot(hash: &[u8; 32]) -> String {
    format!("aggregator-key/{}", hex::encode(hash))
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("aggregator: {e}");
    Status::internal("the aggregator's store failed (see its log)")
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
