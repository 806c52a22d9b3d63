//! `confide keyholder`: holds the Paillier secret key and decrypts only sums (see
//! `confide_secagg::keyholder` for the rules it enforces). It is its own role and process,
//! separate from the coordinator, even on one machine.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use confide_core::{JobSpec, Role};
use confide_crypto::SecretKey;
use confide_secagg::contribution::Contribution;
use confide_secagg::{UnsealError, Unsealer};
use tonic::{Request, Response, Status};

use crate::coordinator::{fixed_point, job_digest, scheme_params};
use crate::pb;
use crate::pki::{Credentials, verify_party_certificate};
use crate::transport::{NetError, peer};

/// The key holder service.
pub struct KeyHolderService {
    unsealer: Mutex<Unsealer>,
    public_json: String,
    ca_der: Vec<u8>,
}

impl std::fmt::Debug for KeyHolderService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHolderService(***)")
    }
}

impl KeyHolderService {
    /// A key holder for a job, from its own copy of the job spec.
    pub fn new(spec: &JobSpec, sk: SecretKey, creds: &Credentials) -> Result<Arc<Self>, NetError> {
        if sk.public_key().modulus_bits() != spec.modulus_bits {
            return Err(crate::transport::transport_err(
                "key holder",
                format!(
                    "the key has {} bits, the job asks for {}",
                    sk.public_key().modulus_bits(),
                    spec.modulus_bits
                ),
            ));
        }
        let params = scheme_params(spec, fixed_point(spec)?);
        let public_json = serde_json::to_string(&sk.public_key().to_json())
            .map_err(|e| crate::transport::transport_err("key holder", e))?;
        let owners: BTreeSet<String> = spec.owners.iter().cloned().collect();
        let unsealer = Unsealer::new(sk, job_digest(spec), owners, params)
            .map_err(|e| crate::transport::transport_err("key holder", e))?;
        let ca_der = creds
            .ca_der()
            .map_err(|e| crate::transport::transport_err("key holder", e))?;
        Ok(Arc::new(Self {
            unsealer: Mutex::new(unsealer),
            public_json,
            ca_der,
        }))
    }

    /// Verifies relayed contributions' certificates and unseals (sans-gRPC core of `Unseal`).
    pub fn unseal_relayed(
        &self,
        round: u32,
        relayed: Vec<(Contribution, Vec<u8>)>,
    ) -> Result<Vec<Vec<u8>>, String> {
        let mut checked = Vec::with_capacity(relayed.len());
        for (c, cert) in relayed {
            let id = verify_party_certificate(&cert, &self.ca_der)
                .map_err(|e| format!("KEY-002 certificate of `{}`: {e}", c.owner))?;
            if id.role != Role::Node || id.name != c.owner {
                return Err(format!(
                    "KEY-002 certificate names `{}` ({}), the contribution `{}`",
                    id.name, id.role, c.owner
                ));
            }
            checked.push((c, id.public_key));
        }
        let mut u = self.unsealer.lock().unwrap_or_else(|p| p.into_inner());
        let result = u.unseal(round, checked);
        match &result {
            Ok(_) => tracing::info!("round {round}: decrypted the sum"),
            Err(e) => tracing::warn!("round {round}: refused: {e}"),
        }
        result.map_err(|e: UnsealError| e.to_string())
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
        peer(&request, &[Role::Node, Role::Coordinator, Role::ModelOwner])?;
        Ok(Response::new(pb::PublicKeyReply {
            public_key_json: self.0.public_json.clone(),
        }))
    }

    async fn unseal(
        &self,
        request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealReply>, Status> {
        peer(&request, &[Role::Coordinator])?;
        let req = request.into_inner();
        let relayed = req
            .contributions
            .into_iter()
            .map(|r| {
                let c = r.contribution.unwrap_or_default();
                (
                    Contribution {
                        owner: c.owner,
                        round: c.round,
                        stage: c.stage,
                        payload: c.payload,
                        signature: c.signature,
                    },
                    r.owner_certificate,
                )
            })
            .collect();
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
