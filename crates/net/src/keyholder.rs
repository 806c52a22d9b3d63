//! `confide keyholder`: holds the secret key (Paillier or BFV) and decrypts only sums (see
//! `confide_secagg::keyholder` for the rules it enforces). It is its own role and process,
//! separate from the coordinator, even on one machine.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use confide_core::{JobSpec, Role, SchemeKind};
use confide_secagg::contribution::Contribution;
use confide_secagg::{HolderKey, UnsealError, UnsealRecord, Unsealer};
use tonic::{Request, Response, Status};

use crate::coordinator::{job_digest, job_scheme_params};
use crate::pb;
use crate::pki::{Credentials, verify_party_certificate};
use crate::transport::{NetError, peer};

/// What the key holder's attestation evidence binds (with the verifier's nonce): the job
/// digest and the SHA-256 of the public key it publishes.
pub fn public_key_statement(job_digest: &[u8; 32], public_json: &str) -> Vec<u8> {
    let mut m = b"confide/keyholder/public-key/v1\n".to_vec();
    m.extend(job_digest);
    m.extend(confide_crypto::sha256(public_json.as_bytes()));
    m
}

/// A node's check of the key holder's evidence, before it encrypts anything to the key:
/// the evidence must bind this job and exactly this public key to the node's `nonce`, under
/// the node's attestation `policy` (pinned measurement of the key holder's code, which
/// decrypts only sums of at least `min_owners` signed contributions).
pub fn check_keyholder_evidence(
    policy: &confide_attest::Policy,
    job_digest: &[u8; 32],
    public_json: &str,
    evidence_json: &str,
    nonce: &[u8; 32],
    now_secs: u64,
) -> Result<confide_attest::Claims, String> {
    if evidence_json.is_empty() {
        return Err("the key holder sent no attestation evidence (run it with --tee-dir)".into());
    }
    let evidence: confide_attest::Evidence = serde_json::from_str(evidence_json)
        .map_err(|e| format!("malformed key holder evidence: {e}"))?;
    confide_attest::verify(
        &evidence,
        policy,
        &confide_attest::binding(&public_key_statement(job_digest, public_json), nonce),
        now_secs,
    )
    .map_err(|e| format!("the key holder's attestation: {e}"))
}

/// The key holder service.
pub struct KeyHolderService {
    /// The dev TEE vouching for this process (`None`: it gives no evidence).
    attester: Option<confide_attest::dev::DevTee>,
    digest: [u8; 32],
    unsealer: Mutex<Unsealer>,
    public_json: String,
    ca_der: Vec<u8>,
    revocations: Arc<crate::pki::Revocations>,
    job_hex: String,
    state: Option<PathBuf>,
    fingerprint: String,
}

/// One line of the key holder's state file: a decryption, recorded before it happened.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StateLine {
    job: String,
    round: u32,
    model: String,
    /// The contribution set's digest (RES-001); absent in lines written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    contributions: Option<String>,
    /// The fingerprint of the key that decrypted (RES-003); absent in lines written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// Reads the decryptions recorded for `job_hex` in a state file (missing file: none). RES-003:
/// a record made under another key than `fingerprint` stops the key holder, because the
/// job's owners encrypted to that other key, and decrypting their ciphertexts under this one
/// would release garbage as a sum.
fn load_state(
    path: &std::path::Path,
    job_hex: &str,
    fingerprint: &str,
) -> Result<Vec<UnsealRecord>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let l: StateLine =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if l.job != job_hex {
            continue;
        }
        if let Some(k) = &l.key
            && k != fingerprint
        {
            return Err(format!(
                "{}:{}: RES-003 round {} of this job was decrypted under key {k}, this key \
                 holder has key {fingerprint}; restart it with the job's key (--key)",
                path.display(),
                i + 1,
                l.round
            ));
        }
        let model = hex::decode(&l.model)
            .ok()
            .and_then(|m| <[u8; 32]>::try_from(m).ok())
            .ok_or_else(|| format!("{}:{}: bad model digest", path.display(), i + 1))?;
        let contributions = match &l.contributions {
            None => None,
            Some(h) => Some(
                hex::decode(h)
                    .ok()
                    .and_then(|m| <[u8; 32]>::try_from(m).ok())
                    .ok_or_else(|| {
                        format!("{}:{}: bad contribution digest", path.display(), i + 1)
                    })?,
            ),
        };
        out.push(UnsealRecord {
            round: l.round,
            model_digest: model,
            contributions,
        });
    }
    Ok(out)
}

impl std::fmt::Debug for KeyHolderService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHolderService(***)")
    }
}

impl KeyHolderService {
    /// A key holder for a job, from its own copy of the job spec. `state` is the file where it
    /// records every decryption (KEY-005) before making it, and from which a restarted key
    /// holder reloads them; without it the record lives only as long as the process.
    pub fn new(
        spec: &JobSpec,
        key: HolderKey,
        creds: &Credentials,
        state: Option<PathBuf>,
        attester: Option<confide_attest::dev::DevTee>,
    ) -> Result<Arc<Self>, NetError> {
        let refuse = |m: String| crate::transport::transport_err("key holder", m);
        match (&key, spec.job.scheme) {
            (HolderKey::Paillier(sk), SchemeKind::Paillier) => {
                if sk.public_key().modulus_bits() != spec.modulus_bits {
                    return Err(refuse(format!(
                        "the key has {} bits, the job asks for {}",
                        sk.public_key().modulus_bits(),
                        spec.modulus_bits
                    )));
                }
            }
            (HolderKey::Lattice(_), SchemeKind::Lattice) => {}
            (_, scheme) => {
                return Err(refuse(format!(
                    "the key does not fit the job's scheme `{}`",
                    scheme.as_str()
                )));
            }
        }
        let params = job_scheme_params(spec)?;
        let public_json = key.public_json();
        let fingerprint = key.fingerprint();
        let owners: BTreeSet<String> = spec.owners.iter().cloned().collect();
        let digest = job_digest(spec);
        let job_hex = hex::encode(digest);
        let history = match &state {
            Some(p) => load_state(p, &job_hex, &key.fingerprint())
                .map_err(|e| crate::transport::transport_err("key holder state", e))?,
            None => Vec::new(),
        };
        let unsealer = Unsealer::new(key, digest, owners, params, history)
            .map_err(|e| crate::transport::transport_err("key holder", e))?;
        let ca_der = creds
            .ca_der()
            .map_err(|e| crate::transport::transport_err("key holder", e))?;
        Ok(Arc::new(Self {
            attester,
            digest,
            unsealer: Mutex::new(unsealer),
            public_json,
            ca_der,
            revocations: creds.revocations.clone(),
            job_hex,
            state,
            fingerprint,
        }))
    }

    /// Verifies relayed contributions' certificates and unseals (sans-gRPC core of `Unseal`).
    pub fn unseal_relayed(
        &self,
        round: u32,
        relayed: Vec<(Contribution, Vec<u8>)>,
    ) -> Result<Vec<Vec<u8>>, String> {
        let checked = check_relayed(relayed, &self.ca_der, &self.revocations)?;
        let mut u = self.unsealer.lock().unwrap_or_else(|p| p.into_inner());
        let result = u.unseal(round, checked, |rec| self.persist(rec));
        match &result {
            Ok(_) => {
                confide_core::crash::point("keyholder-after-decrypt", round);
                tracing::info!("round {round}: decrypted the sum");
            }
            Err(e) => tracing::warn!("round {round}: refused: {e}"),
        }
        result.map_err(|e: UnsealError| e.to_string())
    }

    /// Appends a record to the state file and syncs it to disk.
    fn persist(&self, rec: &UnsealRecord) -> Result<(), String> {
        confide_core::crash::point("keyholder-before-record", rec.round);
        let Some(path) = &self.state else {
            return Ok(());
        };
        let line = serde_json::to_string(&StateLine {
            job: self.job_hex.clone(),
            round: rec.round,
            model: hex::encode(rec.model_digest),
            contributions: rec.contributions.map(hex::encode),
            key: Some(self.fingerprint.clone()),
        })
        .map_err(|e| e.to_string())?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
        f.sync_all()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        confide_core::crash::point("keyholder-after-record", rec.round);
        Ok(())
    }
}

/// KEY-002 for relayed contributions: each owner certificate chains to the federation CA, is
/// not revoked, and names a node called like the contribution's owner. Returns each
/// contribution with the public key its certificate certifies.
pub fn check_relayed(
    relayed: Vec<(Contribution, Vec<u8>)>,
    ca_der: &[u8],
    revocations: &crate::pki::Revocations,
) -> Result<Vec<(Contribution, Vec<u8>)>, String> {
    let mut checked = Vec::with_capacity(relayed.len());
    for (c, cert) in relayed {
        let id = verify_party_certificate(&cert, ca_der).map_err(|e| {
            format!(
                "KEY-002 certificate of `{}`: {e}",
                crate::guard::excerpt(&c.owner)
            )
        })?;
        revocations
            .check(&id.id)
            .map_err(|e| format!("KEY-002 {e}"))?;
        if id.role != Role::Node || id.name != c.owner {
            return Err(format!(
                "KEY-002 certificate names `{}` ({}), the contribution `{}`",
                id.name,
                id.role,
                crate::guard::excerpt(&c.owner)
            ));
        }
        checked.push((c, id.public_key));
    }
    Ok(checked)
}

/// The relayed contributions of a request, with their owners' certificates.
pub fn relayed_from_pb(
    contributions: Vec<pb::RelayedContribution>,
) -> Vec<(Contribution, Vec<u8>)> {
    contributions
        .into_iter()
        .map(|r| {
            (
                crate::wire::from_pb(r.contribution.unwrap_or_default()),
                r.owner_certificate,
            )
        })
        .collect()
}

/// The wire form of a round's relayed contributions.
pub fn relayed_to_pb(round: u32, relayed: Vec<(Contribution, Vec<u8>)>) -> pb::UnsealRequest {
    pb::UnsealRequest {
        round,
        contributions: relayed
            .into_iter()
            .map(|(c, cert)| pb::RelayedContribution {
                contribution: Some(crate::wire::to_pb(c)),
                owner_certificate: cert,
            })
            .collect(),
    }
}

/// The gRPC face of the key holder.
#[derive(Debug, Clone)]
pub struct KeyHolderGrpc(pub Arc<KeyHolderService>);

#[tonic::async_trait]
impl pb::key_holder_server::KeyHolder for KeyHolderGrpc {
    async fn get_public_key(
        &self,
        request: Request<pb::PublicKeyRequest>,
    ) -> Result<Response<pb::PublicKeyReply>, Status> {
        peer(
            &request,
            &[Role::Node, Role::Coordinator, Role::ModelOwner],
            &self.0.revocations,
        )?;
        let nonce = request.into_inner().nonce;
        let evidence_json = match (&self.0.attester, nonce.is_empty()) {
            (Some(tee), false) => {
                let nonce: [u8; 32] = nonce.as_slice().try_into().map_err(|_| {
                    Status::invalid_argument(format!(
                        "a nonce must be 32 bytes, not {}",
                        nonce.len()
                    ))
                })?;
                let statement = public_key_statement(&self.0.digest, &self.0.public_json);
                let evidence = tee.evidence(&confide_attest::binding(&statement, &nonce));
                serde_json::to_string(&evidence).map_err(|e| Status::internal(e.to_string()))?
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::PublicKeyReply {
            public_key_json: self.0.public_json.clone(),
            evidence_json,
            ..Default::default()
        }))
    }

    async fn unseal(
        &self,
        request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealReply>, Status> {
        peer(&request, &[Role::Coordinator], &self.0.revocations)?;
        let req = request.into_inner();
        let relayed = relayed_from_pb(req.contributions);
        let service = self.0.clone();
        let round = req.round;
        // Summing and decrypting is CPU work: keep it off the async executor.
        let result = tokio::task::spawn_blocking(move || service.unseal_relayed(round, relayed))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        result
            .map(|plaintexts| Response::new(pb::UnsealReply { plaintexts }))
            .map_err(Status::permission_denied)
    }
}
