//! Signed contributions: what an owner sends for a round, bound to the job and the round so a
//! coordinator can neither forge one nor replay it into another round or job.
//!
//! The signed message is
//! `"confide/contribution/v2" ‖ job_digest[32] ‖ round u32be ‖ stage u32be ‖ model_digest[32] ‖
//! len(owner) u8 ‖ owner ‖ SHA-256(payload)`, signed with Ed25519 by the owner's key (the key
//! its TLS certificate certifies). `model_digest` ([`model_digest`]) names the global model the
//! owner trained from, so the key holder can refuse to decrypt two sums computed from the same
//! model (which a coordinator could subtract to isolate one owner's update).

use confide_crypto::{SignatureError, SigningKey, sha256, sign};

/// One owner's message for one stage of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The owner's name (as in its certificate).
    pub owner: String,
    /// Round number, from 1.
    pub round: u32,
    /// Protocol stage within the round (0 for single-stage schemes).
    pub stage: u32,
    /// SHA-256 of the global model this update was trained from ([`model_digest`]).
    pub model_digest: [u8; 32],
    /// The scheme's payload.
    pub payload: Vec<u8>,
    /// Ed25519 signature over [`signing_message`].
    pub signature: Vec<u8>,
}

/// A contribution whose signature was checked against its owner's key for the expected job and
/// round. Only [`verify`] makes one, so code that needs a checked contribution cannot be handed
/// an unchecked one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedContribution(Contribution);

impl VerifiedContribution {
    /// The contribution.
    pub fn get(&self) -> &Contribution {
        &self.0
    }

    /// Unwraps it (for relaying to a party that verifies it again).
    pub fn into_inner(self) -> Contribution {
        self.0
    }
}

/// SHA-256 over a domain label and the parameters as little-endian `f32`.
pub fn model_digest(params: &[f32]) -> [u8; 32] {
    let mut bytes = b"confide/model/v1".to_vec();
    bytes.extend(params.iter().flat_map(|p| p.to_le_bytes()));
    sha256(&bytes)
}

/// The bytes an owner signs.
pub fn signing_message(c: &Contribution, job_digest: &[u8; 32]) -> Vec<u8> {
    let mut m = b"confide/contribution/v2".to_vec();
    m.extend_from_slice(job_digest);
    m.extend_from_slice(&c.round.to_be_bytes());
    m.extend_from_slice(&c.stage.to_be_bytes());
    m.extend_from_slice(&c.model_digest);
    // Owner names are validated to at most 63 bytes.
    m.push(c.owner.len().min(255) as u8);
    m.extend_from_slice(c.owner.as_bytes());
    m.extend_from_slice(&sha256(&c.payload));
    m
}

/// What an owner contributes, before signing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsigned {
    /// Owner name.
    pub owner: String,
    /// Round.
    pub round: u32,
    /// Stage.
    pub stage: u32,
    /// Digest of the model trained from.
    pub model_digest: [u8; 32],
    /// Payload.
    pub payload: Vec<u8>,
}

/// Signs a contribution as its owner.
pub fn sign_contribution(key: &SigningKey, job_digest: &[u8; 32], u: Unsigned) -> Contribution {
    let mut c = Contribution {
        owner: u.owner,
        round: u.round,
        stage: u.stage,
        model_digest: u.model_digest,
        payload: u.payload,
        signature: Vec::new(),
    };
    c.signature = key.sign(&signing_message(&c, job_digest)).to_vec();
    c
}

/// Checks a contribution's signature under `owner_public_key` for this job.
pub fn verify(
    c: Contribution,
    owner_public_key: &[u8],
    job_digest: &[u8; 32],
) -> Result<VerifiedContribution, SignatureError> {
    sign::verify(
        owner_public_key,
        &signing_message(&c, job_digest),
        &c.signature,
    )?;
    Ok(VerifiedContribution(c))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key() -> SigningKey {
        let rng = ring::rand::SystemRandom::new();
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        SigningKey::from_pkcs8_der(der.as_ref()).expect("parse")
    }

    pub(crate) fn unsigned(owner: &str, round: u32, payload: Vec<u8>) -> Unsigned {
        Unsigned {
            owner: owner.into(),
            round,
            stage: 0,
            model_digest: model_digest(&[round as f32]),
            payload,
        }
    }

    #[test]
    fn signature_binds_job_round_stage_model_owner_and_payload() {
        let k = key();
        let job = [7u8; 32];
        let c = sign_contribution(&k, &job, unsigned("guest", 3, vec![1, 2, 3]));
        assert!(verify(c.clone(), &k.public_key(), &job).is_ok());
        assert!(verify(c.clone(), &k.public_key(), &[8u8; 32]).is_err());
        for tweak in 0..5 {
            let mut bad = c.clone();
            match tweak {
                0 => bad.round = 4,
                1 => bad.stage = 1,
                2 => bad.owner = "host".into(),
                3 => bad.model_digest[0] ^= 1,
                _ => bad.payload[0] ^= 1,
            }
            assert!(verify(bad, &k.public_key(), &job).is_err(), "tweak {tweak}");
        }
        assert!(verify(c, &key().public_key(), &job).is_err());
    }
}
