//! Sealed storage for the trusted trainer: everything it keeps on the untrusted host's disk
//! (datasets, checkpoints, models) is encrypted and authenticated with AES-256-GCM (ring).
//!
//! - **Key**: HKDF-SHA256 (RFC 5869, ring) from 32 bytes of root key material, with the
//!   trusted core's code measurement as the salt and its identity in the `info`. Under SGX or
//!   Gramine the root would be the enclave's sealing key (itself bound to the measurement);
//!   in dev mode it is a key file. A different measurement or identity derives a different
//!   key, so a changed binary cannot read what the old one sealed.
//! - **Associated data**: a domain label, the blob's *slot* (its name, e.g. `dataset/<id>`)
//!   and its *version*. A blob moved to another slot, or with its version edited, fails.
//! - **Rollback**: the version is a monotonic counter per slot that the caller records
//!   elsewhere (the trainer records it in the audit log when it seals).
//!   [`SealingKey::unseal_version`] refuses any other version, so replacing a blob with an
//!   older sealed copy of the same slot is detected.
//! - **Nonces**: 96 bits from the operating system's generator per blob. For AES-GCM with
//!   random nonces NIST SP 800-38D §8.3 caps one key at 2^32 encryptions; a trainer seals a
//!   few blobs per job.
//!
//! Blob format: `MAGIC ‖ u64 version ‖ nonce (12) ‖ ciphertext ‖ tag (16)`.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// The first bytes of every sealed blob.
pub const MAGIC: &[u8; 8] = b"CFDSEAL1";
const HEADER_LEN: usize = 8 + 8 + NONCE_LEN;
const TAG_LEN: usize = 16;

/// What can go wrong with a sealed blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Not a sealed blob, or cut short.
    #[error("not a sealed blob: {0}")]
    Malformed(String),
    /// The tag does not verify: another key (measurement, identity), another slot, an edited
    /// version or altered bytes.
    #[error(
        "sealed blob for `{0}` does not authenticate (another trainer or measurement, another slot, or altered)"
    )]
    Authentication(String),
    /// An authentic blob of another version than the one recorded: a rollback (or a blob newer
    /// than the record).
    #[error(
        "sealed blob for `{slot}` has version {found}, the record says {expected}: an old copy put back (rollback) or a record out of date"
    )]
    Version {
        /// The slot.
        slot: String,
        /// The version recorded.
        expected: u64,
        /// The version in the blob.
        found: u64,
    },
    /// Encryption failed (the system generator, or an oversized input).
    #[error("sealing failed: {0}")]
    Internal(String),
}

/// A sealing key, derived from root key material, the code measurement and the identity.
pub struct SealingKey(LessSafeKey);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(***)")
    }
}

fn aad(slot: &str, version: u64) -> Vec<u8> {
    let mut a = b"confide/seal/v1 ".to_vec();
    a.extend((slot.len() as u32).to_be_bytes());
    a.extend(slot.as_bytes());
    a.extend(version.to_be_bytes());
    a
}

impl SealingKey {
    /// Derives the key of the trusted core with code `measurement` and name `identity` from
    /// 32 bytes of root key material.
    pub fn derive(root: &[u8; 32], measurement: &[u8], identity: &str) -> Self {
        let mut info = b"confide/seal/v1 key ".to_vec();
        info.extend((identity.len() as u32).to_be_bytes());
        info.extend(identity.as_bytes());
        let info = [info.as_slice()];
        let prk = Salt::new(HKDF_SHA256, measurement).extract(root);
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .expect("an AES-256 key is far below HKDF-SHA256's output limit");
        Self(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// Seals `plaintext` as `version` of `slot`.
    pub fn seal(&self, slot: &str, version: u64, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Internal("the system generator failed".into()))?;
        let mut blob = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        blob.extend(MAGIC);
        blob.extend(version.to_be_bytes());
        blob.extend(nonce);
        let mut body = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(slot, version)),
                &mut body,
            )
            .map_err(|_| SealError::Internal("AES-GCM refused the input".into()))?;
        blob.extend(body);
        Ok(blob)
    }

    /// Opens a blob sealed for `slot`, returning its version and plaintext. Use
    /// [`SealingKey::unseal_version`] wherever a version is recorded.
    pub fn unseal(&self, slot: &str, blob: &[u8]) -> Result<(u64, Vec<u8>), SealError> {
        if blob.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::Malformed(format!("{} bytes", blob.len())));
        }
        if &blob[..8] != MAGIC {
            return Err(SealError::Malformed("wrong magic bytes".into()));
        }
        let mut version = [0u8; 8];
        version.copy_from_slice(&blob[8..16]);
        let version = u64::from_be_bytes(version);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&blob[16..HEADER_LEN]);
        let mut body = blob[HEADER_LEN..].to_vec();
        let plain = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(slot, version)),
                &mut body,
            )
            .map_err(|_| SealError::Authentication(slot.to_string()))?;
        let len = plain.len();
        body.truncate(len);
        Ok((version, body))
    }

    /// Opens a blob of `slot` that must be exactly version `expected` (the version recorded
    /// when it was sealed): an authentic older copy is refused as a rollback.
    pub fn unseal_version(
        &self,
        slot: &str,
        expected: u64,
        blob: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let (found, plain) = self.unseal(slot, blob)?;
        if found != expected {
            return Err(SealError::Version {
                slot: slot.to_string(),
                expected,
                found,
            });
        }
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: [u8; 32] = [9u8; 32];

    fn key() -> SealingKey {
        SealingKey::derive(&ROOT, b"measurement-a", "trainer")
    }

    #[test]
    fn a_blob_opens_only_under_its_key_slot_and_version() {
        let k = key();
        let blob = k.seal("dataset/x", 3, b"rows").expect("seal");
        assert_eq!(
            k.unseal("dataset/x", &blob).expect("open"),
            (3, b"rows".to_vec())
        );
        assert_eq!(
            k.unseal_version("dataset/x", 3, &blob).expect("open"),
            b"rows"
        );
        // Another slot, another measurement, another identity, another root.
        let auth = |r: Result<(u64, Vec<u8>), SealError>| {
            assert!(matches!(r, Err(SealError::Authentication(_))), "{r:?}")
        };
        auth(k.unseal("dataset/y", &blob));
        auth(SealingKey::derive(&ROOT, b"measurement-b", "trainer").unseal("dataset/x", &blob));
        auth(SealingKey::derive(&ROOT, b"measurement-a", "other").unseal("dataset/x", &blob));
        auth(SealingKey::derive(&[8; 32], b"measurement-a", "trainer").unseal("dataset/x", &blob));
        // The version edited in the header, a flipped ciphertext bit, a cut tag.
        let mut edited = blob.clone();
        edited[15] ^= 1;
        auth(k.unseal("dataset/x", &edited));
        let mut flipped = blob.clone();
        flipped[HEADER_LEN] ^= 1;
        auth(k.unseal("dataset/x", &flipped));
        auth(k.unseal("dataset/x", &blob[..blob.len() - 1]));
        assert!(matches!(
            k.unseal("dataset/x", &blob[..10]),
            Err(SealError::Malformed(_))
        ));
        // Two seals of the same input differ (fresh nonces).
        assert_ne!(blob, k.seal("dataset/x", 3, b"rows").expect("seal"));
        // Empty plaintexts seal too.
        let empty = k.seal("model", 1, b"").expect("seal");
        assert_eq!(k.unseal_version("model", 1, &empty).expect("open"), b"");
    }

    #[test]
    fn an_older_authentic_copy_is_refused_as_a_rollback() {
        let k = key();
        let v1 = k.seal("checkpoint", 1, b"epoch 1").expect("seal");
        let v2 = k.seal("checkpoint", 2, b"epoch 2").expect("seal");
        assert_eq!(
            k.unseal_version("checkpoint", 2, &v2).expect("v2"),
            b"epoch 2"
        );
        // The host puts the older blob back: authentic, but not the recorded version.
        assert_eq!(
            k.unseal_version("checkpoint", 2, &v1),
            Err(SealError::Version {
                slot: "checkpoint".into(),
                expected: 2,
                found: 1
            })
        );
    }
}
