//! Signed contributions: what an owner sends for a round, bound to the job and the round so a
//! coordinator can neither forge one nor replay it into another round or job.
//!
//! The signed message is
//! `"confide/contribution/v1" ‖ job_digest[32] ‖ round u32be ‖ stage u32be ‖ len(owner) u8 ‖
//! owner ‖ SHA-256(payload)`, signed with Ed25519 by the owner's key (the key its TLS
//! certificate certifies).

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

/// The bytes an owner signs.
pub fn signing_message(
    job_digest: &[u8; 32],
    round: u32,
    stage: u32,
    owner: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut m = b"confide/contribution/v1".to_vec();
    m.extend_from_slice(job_digest);
    m.extend_from_slice(&round.to_be_bytes());
    m.extend_from_slice(&stage.to_be_bytes());
    // Owner names are validated to at most 63 bytes.
    m.push(owner.len().min(255) as u8);
    m.extend_from_slice(owner.as_bytes());
    m.extend_from_slice(&sha256(payload));
    m
}

/// Signs a payload as `owner`.
pub fn sign_contribution(
    key: &SigningKey,
    job_digest: &[u8; 32],
    owner: &str,
    round: u32,
    stage: u32,
    payload: Vec<u8>,
) -> Contribution {
    let signature = key
        .sign(&signing_message(job_digest, round, stage, owner, &payload))
        .to_vec();
    Contribution {
        owner: owner.to_string(),
        round,
        stage,
        payload,
        signature,
    }
}

/// Checks a contribution's signature under `owner_public_key` for this job.
pub fn verify(
    c: Contribution,
    owner_public_key: &[u8],
    job_digest: &[u8; 32],
) -> Result<VerifiedContribution, SignatureError> {
    let msg = signing_message(job_digest, c.round, c.stage, &c.owner, &c.payload);
    sign::verify(owner_public_key, &msg, &c.signature)?;
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

    #[test]
    fn signature_binds_job_round_stage_owner_and_payload() {
        let k = key();
        let job = [7u8; 32];
        let c = sign_contribution(&k, &job, "guest", 3, 0, vec![1, 2, 3]);
        assert!(verify(c.clone(), &k.public_key(), &job).is_ok());
        assert!(verify(c.clone(), &k.public_key(), &[8u8; 32]).is_err());
        for tweak in 0..4 {
            let mut bad = c.clone();
            match tweak {
                0 => bad.round = 4,
                1 => bad.stage = 1,
                2 => bad.owner = "host".into(),
                _ => bad.payload[0] ^= 1,
            }
            assert!(verify(bad, &k.public_key(), &job).is_err(), "tweak {tweak}");
        }
        assert!(verify(c, &key().public_key(), &job).is_err());
    }
}
