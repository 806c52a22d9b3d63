//! A long-running key holder (`confide keyholder serve`): one process, a fresh key per job.
//!
//! - A coordinator opens a job (`KeyHolderJobs.OpenJob`) with its signed manifest. The key
//!   holder verifies the manifest, makes a fresh key for the job (Paillier from the OS
//!   generator, or a BFV key from a fresh 32-byte seed), **seals it and commits it to its
//!   store before the public key leaves**, and serves the job's `KeyHolder` service.
//!   Opening a job again answers the same public key (an idempotent open: a coordinator
//!   that lost the answer may ask again).
//! - Every `KeyHolder` request names its job in the `confide-job` metadata
//!   (`crate::fleet::Router`); each job has its own [`KeyHolderService`], guard, and
//!   decryption record (RES-001…003 hold per job).
//! - A restarted key holder unseals every open job's key before it serves (it serves only
//!   after it has recovered), so jobs survive it.
//! - Closing a job (`CloseJob`) deletes its sealed key from the store and drops it from
//!   memory; the job's requests are then refused (FLEET-003).
//!
//! Sealing is `confide_crypto::seal` (AES-256-GCM under a key derived with HKDF-SHA256) from a
//! 32-byte root in a key file beside the store, in the manner of the trainer's dev mode: the
//! store alone does not reveal a key. Under a TEE the root would be the enclave's sealing key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use confide_core::{JobSpec, Role, SchemeKind};
use confide_crypto::seal::SealingKey;
use confide_governance::manifest::SignedManifest;
use confide_secagg::HolderKey;
use confide_store::{Store, StoreExt};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use crate::coordinator::job_scheme_params;
use crate::fleet::Routes;
use crate::guard::Guarded;
use crate::keyholder::{KeyHolderGrpc, KeyHolderService};
use crate::pb;
use crate::pki::Credentials;
use crate::transport::{NetError, peer, transport_err};

const JOBS: &str = "keyholder.jobs";

/// The measurement-like label the sealing key is bound to.
const SEAL_LABEL: &[u8] = b"confide keyholder serve, sealed job keys v1";

/// A job's guarded `KeyHolder` service.
pub type KeyServer = Guarded<pb::key_holder_server::KeyHolderServer<KeyHolderGrpc>>;

/// Where each job's key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A fresh key per job (the default, and the only choice for real data).
    Fresh,
    /// This Paillier key for every `paillier` job (tests and demos: generating a fresh 2048-bit
    /// key takes 10–60 s on a small machine). It defeats per-job keys; never for real data.
    File(PathBuf),
}

/// What the store keeps of an open job.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    manifest_json: String,
    /// The sealed key (`confide_crypto::seal` blob), hex.
    sealed_key: String,
}

/// A job's secret key material, as sealed.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum KeyMaterial {
    Paillier(confide_crypto::SecretKeyJson),
    /// The 32-byte seed the BFV key was generated from (hex), and its public key as
    /// published (`LatticeSecretKey::restore`).
    Lattice {
        seed: String,
        public_json: String,
    },
}

/// The key holder's jobs.
#[derive(Clone)]
pub struct KeyHolderJobs(Arc<Inner>);

struct Inner {
    creds: Credentials,
    store: Arc<dyn Store>,
    sealing: SealingKey,
    state: PathBuf,
    source: KeySource,
    routes: Routes<KeyServer>,
    public: Mutex<HashMap<[u8; 32], String>>,
    /// One open at a time: two opens of one job must not make two keys.
    opening: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyHolderJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHolderJobs({:?})", self.0.routes)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("key holder: {e}");
    Status::internal("the key holder's store failed (see its log)")
}

impl KeyHolderJobs {
    /// The key holder of `creds`, on `store`, sealing with `seal_root`, recording decryptions
    /// in `state`.
    pub fn new(
        creds: Credentials,
        store: Arc<dyn Store>,
        seal_root: &[u8; 32],
        state: PathBuf,
        source: KeySource,
    ) -> Self {
        let sealing = SealingKey::derive(seal_root, SEAL_LABEL, &creds.id());
        Self(Arc::new(Inner {
            creds,
            store,
            sealing,
            state,
            source,
            routes: Routes::default(),
            public: Mutex::default(),
            opening: tokio::sync::Mutex::new(()),
        }))
    }

    /// The jobs' routes (the `KeyHolder` service for every open job).
    pub fn routes(&self) -> &Routes<KeyServer> {
        &self.0.routes
    }

    /// How many jobs are open.
    pub fn open_jobs(&self) -> usize {
        lock(&self.0.public).len()
    }

    /// Unseals every open job's key and serves it: call before serving anything.
    ///
    /// # Errors
    /// A stored job does not read back or its key does not unseal (the wrong seal key file).
    pub fn recover(&self) -> Result<usize, NetError> {
        let rows = self
            .0
            .store
            .read(|txn| txn.scan_prefix(JOBS, &[]))
            .map_err(|e| transport_err("key holder store", e))?;
        for (key, value) in &rows {
            let stored: Stored =
                serde_json::from_slice(value).map_err(|e| transport_err("key holder store", e))?;
            let hash: [u8; 32] = key
                .as_slice()
                .try_into()
                .map_err(|_| transport_err("key holder store", "a malformed job key"))?;
            let (spec, _) = verified(&stored.manifest_json)
                .map_err(|e| transport_err("key holder store", e))?;
            let (_, plain) = self
                .0
                .sealing
                .unseal(&slot(&hash), &hex::decode(&stored.sealed_key).unwrap_or_default())
                .map_err(|e| {
                    transport_err(
                        "key holder store",
                        format!("job {}: its key does not unseal ({e}); is this the key holder's seal key file?", hex::encode(&hash[..8])),
                    )
                })?;
            let material: KeyMaterial =
                serde_json::from_slice(&plain).map_err(|e| transport_err("key holder store", e))?;
            let key = key_from(&spec, &material).map_err(|e| transport_err("key holder", e))?;
            self.serve(hash, &spec, key)?;
        }
        Ok(rows.len())
    }

    fn serve(&self, hash: [u8; 32], spec: &JobSpec, key: HolderKey) -> Result<String, NetError> {
        let public = key.public_json();
        let service =
            KeyHolderService::new(spec, key, &self.0.creds, Some(self.0.state.clone()), None)?;
        let guard = crate::guard::keyholder(spec, self.0.creds.revocations.clone());
        let relay = crate::roles::relay_limit(spec);
        let server = pb::key_holder_server::KeyHolderServer::new(KeyHolderGrpc(service))
            .max_decoding_message_size(guard.max_bytes())
            .max_encoding_message_size(relay);
        self.0
            .routes
            .insert(hash, tower_layer::Layer::layer(&guard, server));
        lock(&self.0.public).insert(hash, public.clone());
        Ok(public)
    }

    async fn open(&self, manifest_json: String) -> Result<String, Status> {
        let (spec, hash) = verified(&manifest_json).map_err(Status::invalid_argument)?;
        if !spec.job.scheme.uses_key_holder() {
            return Err(Status::invalid_argument(format!(
                "job `{}` runs under `{}`, which has no key holder",
                spec.job.id,
                spec.job.scheme.as_str()
            )));
        }
        let _one = self.0.opening.lock().await;
        if let Some(public) = lock(&self.0.public).get(&hash) {
            return Ok(public.clone());
        }
        let material = self.fresh(&spec).await.map_err(Status::internal)?;
        let key = key_from(&spec, &material).map_err(Status::internal)?;
        // Sealed and committed before the public key leaves: a restart serves the same key.
        let plain = serde_json::to_vec(&material).map_err(internal)?;
        let sealed = self
            .0
            .sealing
            .seal(&slot(&hash), 1, &plain)
            .map_err(internal)?;
        let stored = serde_json::to_vec(&Stored {
            manifest_json,
            sealed_key: hex::encode(sealed),
        })
        .map_err(internal)?;
        self.0
            .store
            .transact(|txn| txn.put(JOBS, &hash, &stored))
            .map_err(internal)?;
        tracing::info!(
            "job `{}` ({}): a fresh {} key, sealed",
            spec.job.id,
            hex::encode(&hash[..8]),
            spec.job.scheme.as_str()
        );
        self.serve(hash, &spec, key)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn fresh(&self, spec: &JobSpec) -> Result<KeyMaterial, String> {
        match (spec.job.scheme, &self.0.source) {
            (SchemeKind::Lattice, _) => {
                let mut seed = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
                let key = confide_crypto::LatticeSecretKey::generate(lattice_params(spec)?, seed)
                    .map_err(|e| e.to_string())?;
                Ok(KeyMaterial::Lattice {
                    seed: hex::encode(seed),
                    public_json: key.public_key().to_json(),
                })
            }
            (_, KeySource::File(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let json: confide_crypto::SecretKeyJson = serde_json::from_str(&text)
                    .map_err(|e| format!("{}: not a key file: {e}", path.display()))?;
                Ok(KeyMaterial::Paillier(json))
            }
            (_, KeySource::Fresh) => {
                let bits = spec.modulus_bits;
                let sk = tokio::task::spawn_blocking(move || {
                    confide_crypto::SecretKey::generate(bits, &mut rand::rngs::OsRng)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
                Ok(KeyMaterial::Paillier(sk.to_json("confide keyholder serve")))
            }
        }
    }

    fn close(&self, hash: &[u8; 32]) -> Result<bool, Status> {
        let existed = self
            .0
            .store
            .transact(|txn| txn.delete(JOBS, hash))
            .map_err(internal)?;
        lock(&self.0.public).remove(hash);
        self.0.routes.close(
            hash,
            "the coordinator closed the job; its key is erased".into(),
        );
        Ok(existed)
    }
}

fn slot(hash: &[u8; 32]) -> String {
    format!("job-key/{}", hex::encode(hash))
}

/// The job spec and hash of a manifest whose signatures verify.
pub(crate) fn verified(manifest_json: &str) -> Result<(JobSpec, [u8; 32]), String> {
    let signed = SignedManifest::from_json(manifest_json).map_err(|e| e.to_string())?;
    let v = signed.verify().map_err(|e| e.to_string())?;
    let spec = v.manifest.job_spec().map_err(|e| e.to_string())?;
    Ok((spec, v.hash))
}

fn key_from(spec: &JobSpec, material: &KeyMaterial) -> Result<HolderKey, String> {
    match material {
        KeyMaterial::Paillier(json) => {
            // A test key (`KeySource::File`) may be smaller than the production sizes.
            let sk = confide_crypto::SecretKey::from_json(json, true).map_err(|e| e.to_string())?;
            Ok(sk.into())
        }
        KeyMaterial::Lattice { seed, public_json } => {
            let seed: [u8; 32] = hex::decode(seed)
                .ok()
                .and_then(|s| s.try_into().ok())
                .ok_or("a malformed BFV seed")?;
            Ok(
                confide_crypto::LatticeSecretKey::restore(lattice_params(spec)?, seed, public_json)
                    .map_err(|e| e.to_string())?
                    .into(),
            )
        }
    }
}

fn lattice_params(spec: &JobSpec) -> Result<confide_crypto::LatticeParams, String> {
    confide_secagg::lattice::lattice_params(&job_scheme_params(spec).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

/// The gRPC `KeyHolderJobs` service: coordinators open and close jobs.
#[derive(Clone, Debug)]
pub struct KeyHolderJobsGrpc(pub KeyHolderJobs);

#[tonic::async_trait]
impl pb::key_holder_jobs_server::KeyHolderJobs for KeyHolderJobsGrpc {
    async fn open_job(
        &self,
        request: Request<pb::OpenJobRequest>,
    ) -> Result<Response<pb::OpenJobReply>, Status> {
        let caller = peer(&request, &[Role::Coordinator], &self.0.0.creds.revocations)?;
        let public_key_json = self.0.open(request.into_inner().manifest_json).await?;
        tracing::info!("`{}` opened a job", caller.name);
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
            tracing::info!("job {}: closed, its key erased", hex::encode(&hash[..8]));
        }
        Ok(Response::new(pb::CloseJobReply {}))
    }
}

/// The key holder daemon's guard for `KeyHolderJobs` (coordinators only; a manifest is at
/// most 1 MiB).
pub fn guard(revocations: Arc<crate::pki::Revocations>) -> crate::guard::Guard {
    jobs_guard("confide.v1.KeyHolderJobs", revocations)
}

/// The guard of a daemon's `OpenJob`/`CloseJob` service named `service`.
pub(crate) fn jobs_guard(
    service: &str,
    revocations: Arc<crate::pki::Revocations>,
) -> crate::guard::Guard {
    use crate::guard::{MethodRule, Shape};
    let max_manifest = confide_service::jobs::MAX_MANIFEST_BYTES;
    crate::guard::Guard::new(service, revocations)
        .method(
            "OpenJob",
            MethodRule::new(
                &[Role::Coordinator],
                max_manifest + 16,
                Shape::new().field(1, 1, max_manifest),
            ),
        )
        .method(
            "CloseJob",
            MethodRule::new(
                &[Role::Coordinator],
                crate::guard::SMALL_BYTES,
                Shape::new().field(1, 1, 64),
            ),
        )
}
