//! The federation's revocation list: identities the certificate authority has revoked.
//!
//! The CA signs the list (Ed25519, over `"confide/revocation-list/v1\n"` followed by the RFC
//! 8785 canonical JSON of the list without its signature), so any party holding `ca.crt` can
//! check a copy it received from anyone. Every role loads `revoked.json` from its federation
//! directory and refuses revoked parties in every call; a list whose signature fails makes the
//! role refuse everything (fail closed) rather than ignore it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::jcs;

/// The format tag.
pub const FORMAT: &str = "confide-revocations/1";

/// One revoked identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// Party id.
    pub id: String,
    /// Its name in the federation.
    pub name: String,
    /// Why.
    pub reason: String,
    /// When, RFC 3339.
    pub time: String,
}

/// The CA-signed list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationList {
    /// [`FORMAT`].
    pub format: String,
    /// How many times the list was signed; a copy with a lower serial is older.
    pub serial: u64,
    /// The revoked identities.
    pub revoked: Vec<Revoked>,
    /// The CA's signature, hex (empty before signing).
    pub signature: String,
}

/// Revocation-list errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RevocationError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(String),
    /// Malformed or wrongly signed.
    #[error("revocation list: {0}")]
    Invalid(String),
}

impl Default for RevocationList {
    fn default() -> Self {
        Self {
            format: FORMAT.into(),
            serial: 0,
            revoked: Vec::new(),
            signature: String::new(),
        }
    }
}

impl RevocationList {
    fn message(&self) -> Result<Vec<u8>, RevocationError> {
        let mut unsigned = self.clone();
        unsigned.signature.clear();
        let mut m = b"confide/revocation-list/v1\n".to_vec();
        m.extend(jcs::to_vec(&unsigned).map_err(|e| RevocationError::Invalid(e.to_string()))?);
        Ok(m)
    }

    /// Adds an entry (if the id is not yet revoked) and signs the list with the CA key.
    ///
    /// # Errors
    /// Cannot happen for a well-formed list.
    pub fn revoke(
        &mut self,
        entry: Revoked,
        ca: &confide_crypto::SigningKey,
    ) -> Result<bool, RevocationError> {
        let added = !self.revoked.iter().any(|r| r.id == entry.id);
        if added {
            self.revoked.push(entry);
        }
        self.serial += 1;
        self.signature = hex::encode(ca.sign(&self.message()?));
        Ok(added)
    }

    /// Checks the CA's signature.
    ///
    /// # Errors
    /// Wrong format or signature.
    pub fn verify(&self, ca_public_key: &[u8]) -> Result<(), RevocationError> {
        if self.format != FORMAT {
            return Err(RevocationError::Invalid(format!(
                "format `{}`",
                self.format
            )));
        }
        let sig = jcs::hex_decode(&self.signature).map_err(RevocationError::Invalid)?;
        confide_crypto::sign::verify(ca_public_key, &self.message()?, &sig)
            .map_err(|_| RevocationError::Invalid("the CA's signature does not verify".into()))
    }

    /// The entry revoking `id`, if any.
    pub fn find(&self, id: &str) -> Option<&Revoked> {
        self.revoked.iter().find(|r| r.id == id)
    }

    /// Loads and verifies `path`; a missing file is an empty list.
    ///
    /// # Errors
    /// Unreadable, malformed or wrongly signed.
    pub fn load(path: &Path, ca_public_key: &[u8]) -> Result<Self, RevocationError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(RevocationError::Io(format!("{}: {e}", path.display()))),
        };
        let list: Self = serde_json::from_str(&text)
            .map_err(|e| RevocationError::Invalid(format!("{}: {e}", path.display())))?;
        list.verify(ca_public_key)?;
        Ok(list)
    }

    /// Writes the list atomically.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), RevocationError> {
        let io = |e: std::io::Error| RevocationError::Io(format!("{}: {e}", path.display()));
        let tmp = path.with_extension("tmp");
        let text =
            serde_json::to_string_pretty(self).map_err(|e| RevocationError::Io(e.to_string()))?;
        std::fs::write(&tmp, text + "\n").map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn signed_lists_verify_and_tampering_is_caught() {
        let ca = Identity::generate().expect("key");
        let mut list = RevocationList::default();
        let entry = Revoked {
            id: "00112233445566778899aabbccddeeff".into(),
            name: "mallory".into(),
            reason: "key lost".into(),
            time: "2026-11-22T00:00:00Z".into(),
        };
        assert!(list.revoke(entry.clone(), ca.signing_key()).expect("sign"));
        assert!(!list.revoke(entry, ca.signing_key()).expect("sign"));
        list.verify(&ca.public_key()).expect("verifies");
        assert!(list.find("00112233445566778899aabbccddeeff").is_some());
        let mut forged = list.clone();
        forged.revoked.clear();
        assert!(forged.verify(&ca.public_key()).is_err());
        let other = Identity::generate().expect("key");
        assert!(list.verify(&other.public_key()).is_err());

        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("revoked.json");
        assert_eq!(
            RevocationList::load(&p, &ca.public_key())
                .expect("missing")
                .revoked
                .len(),
            0
        );
        list.save(&p).expect("save");
        assert_eq!(
            RevocationList::load(&p, &ca.public_key()).expect("load"),
            list
        );
    }
}
