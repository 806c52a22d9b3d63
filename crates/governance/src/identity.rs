//! Party identities: an Ed25519 key per party (`confide keygen`), its id derived from the
//! public key, and the key file.
//!
//! - **Id**: the first 16 bytes of `SHA-256("confide/party-id/v1\n" ‖ public key)`, as 32
//!   lowercase hex digits. It names the party in manifests, policies, approvals, revocation
//!   lists and the audit log; whoever holds the public key can recompute it.
//! - **Key file**: PEM. Unencrypted, it is PKCS#8 (`-----BEGIN PRIVATE KEY-----`, RFC 5958 and
//!   RFC 8410). With a passphrase it is an `ENCRYPTED PRIVATE KEY`: PKCS#8 encrypted with
//!   PBES2 (RFC 8018) using scrypt (N = 2^15, r = 8, p = 1) and AES-256-CBC, as implemented by
//!   the RustCrypto `pkcs8` crate, which OpenSSL also reads. The file is created with mode
//!   0600 and never overwritten.
//! - **Public file**: `<key>.pub`, JSON `{"id": …, "public_key": …}` with the key in hex, to
//!   hand to the certificate authority and to the owners who write policies.
//!
//! The same key is the party's TLS key: the federation CA certifies it (`confide ca issue
//! --public-key`), so a TLS peer, a signature and an id are one identity.

use std::path::{Path, PathBuf};

use confide_crypto::SigningKey;
use pkcs8::der::Decode;
use pkcs8::{EncryptedPrivateKeyInfo, PrivateKeyInfo};
use serde::{Deserialize, Serialize};

/// Identity errors.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The key file is not a key Confide can use.
    #[error("{path}: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key is encrypted and no passphrase was given.
    #[error(
        "{0}: the key is encrypted; give its passphrase (--passphrase-env or --passphrase-file)"
    )]
    NeedsPassphrase(PathBuf),
}

/// The id of the party whose Ed25519 public key is `public_key`.
pub fn party_id(public_key: &[u8]) -> String {
    let mut input = b"confide/party-id/v1\n".to_vec();
    input.extend_from_slice(public_key);
    hex::encode(&confide_crypto::sha256(&input)[..16])
}

/// Whether `text` has the shape of a party id (32 lowercase hex digits).
pub fn is_party_id(text: &str) -> bool {
    text.len() == 32 && crate::jcs::hex_decode(text).is_ok()
}

/// A party's signing identity.
pub struct Identity {
    key: SigningKey,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({}, key ***)", self.id())
    }
}

/// The public half, as written to `<key>.pub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIdentity {
    /// The party id.
    pub id: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
}

impl PublicIdentity {
    /// Reads and checks a `.pub` file (the id must match the key).
    ///
    /// # Errors
    /// Unreadable, malformed, or an id that is not the key's.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        let bad = |message: String| IdentityError::BadKey {
            path: path.to_path_buf(),
            message,
        };
        let p: PublicIdentity =
            serde_json::from_str(&text).map_err(|e| bad(format!("public identity: {e}")))?;
        let key = p.key().map_err(bad)?;
        if party_id(&key) != p.id {
            return Err(bad("the id is not derived from the public key".into()));
        }
        Ok(p)
    }

    /// The raw public key.
    ///
    /// # Errors
    /// Not 32 bytes of lowercase hex.
    pub fn key(&self) -> Result<[u8; 32], String> {
        crate::jcs::hex_array(&self.public_key)
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Identity {
    /// A fresh identity from the operating system's random generator.
    ///
    /// # Errors
    /// The generator failed.
    pub fn generate() -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| "Ed25519 key generation failed".to_string())?;
        Self::from_pkcs8(doc.as_ref().to_vec()).map_err(|e| e.to_string())
    }

    /// From PKCS#8 DER.
    ///
    /// # Errors
    /// Not an Ed25519 PKCS#8 key.
    pub fn from_pkcs8(der: Vec<u8>) -> Result<Self, confide_crypto::SignatureError> {
        let key = SigningKey::from_pkcs8_der(&der)?;
        Ok(Self { key, pkcs8: der })
    }

    /// The signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// The party id.
    pub fn id(&self) -> String {
        party_id(&self.public_key())
    }

    /// The public half.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            id: self.id(),
            public_key: hex::encode(self.public_key()),
        }
    }

    /// The unencrypted PKCS#8 PEM (for the TLS stack, in memory only).
    pub fn pkcs8_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8)
    }

    /// Writes the key to `path` (mode 0600; refuses to overwrite), encrypted when a passphrase
    /// is given, and the public half to `<path>.pub`.
    ///
    /// # Errors
    /// The file exists or cannot be written, or encryption failed.
    pub fn save(&self, path: &Path, passphrase: Option<&str>) -> Result<(), IdentityError> {
        let text = match passphrase {
            None => self.pkcs8_pem(),
            Some(p) => {
                if p.is_empty() {
                    return Err(IdentityError::BadKey {
                        path: path.to_path_buf(),
                        message: "the passphrase is empty".into(),
                    });
                }
                let info = PrivateKeyInfo::from_der(&self.pkcs8).map_err(|e| io(path, e))?;
                let doc = info
                    .encrypt(rand::rngs::OsRng, p.as_bytes())
                    .map_err(|e| io(path, format!("encrypting the key: {e}")))?;
                pem("ENCRYPTED PRIVATE KEY", doc.as_bytes())
            }
        };
        write_new(path, &text, true)?;
        let public = public_path(path);
        let json = serde_json::to_string_pretty(&self.public()).map_err(|e| io(&public, e))?;
        write_new(&public, &(json + "\n"), false)
    }

    /// Reads a key file written by [`Identity::save`] (or any Ed25519 PKCS#8 PEM).
    ///
    /// # Errors
    /// Unreadable, not an Ed25519 key, encrypted without a passphrase, or a wrong passphrase.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        Self::from_pem(&text, passphrase).map_err(|e| match e {
            PemProblem::NeedsPassphrase => IdentityError::NeedsPassphrase(path.to_path_buf()),
            PemProblem::Bad(message) => IdentityError::BadKey {
                path: path.to_path_buf(),
                message,
            },
        })
    }

    fn from_pem(text: &str, passphrase: Option<&str>) -> Result<Self, PemProblem> {
        let (label, der) = unpem(text).map_err(PemProblem::Bad)?;
        let der = match label.as_str() {
            "PRIVATE KEY" => der,
            "ENCRYPTED PRIVATE KEY" => {
                let p = passphrase.ok_or(PemProblem::NeedsPassphrase)?;
                let info = EncryptedPrivateKeyInfo::from_der(&der)
                    .map_err(|e| PemProblem::Bad(format!("encrypted key: {e}")))?;
                info.decrypt(p.as_bytes())
                    .map_err(|_| PemProblem::Bad("wrong passphrase, or a damaged key file".into()))?
                    .as_bytes()
                    .to_vec()
            }
            other => {
                return Err(PemProblem::Bad(format!(
                    "a `{other}` PEM is not a private key"
                )));
            }
        };
        Self::from_pkcs8(der).map_err(|e| PemProblem::Bad(format!("not an Ed25519 key: {e}")))
    }
}

enum PemProblem {
    NeedsPassphrase,
    Bad(String),
}

/// `<key>.pub` beside a key file.
pub fn public_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), IdentityError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            io(path, "already exists; refusing to overwrite")
        } else {
            io(path, e)
        }
    })?;
    f.write_all(contents.as_bytes()).map_err(|e| io(path, e))?;
    f.sync_all().map_err(|e| io(path, e))
}

/// PEM armour (RFC 7468), via the RustCrypto `pem-rfc7468` crate.
pub fn pem(label: &str, der: &[u8]) -> String {
    use pkcs8::der::pem;
    // Only an invalid label can fail, and the labels are fixed strings.
    pem::encode_string(label, pem::LineEnding::LF, der).unwrap_or_default()
}

/// The label and DER of a PEM document.
///
/// # Errors
/// Not a single well-formed PEM block.
pub fn unpem(text: &str) -> Result<(String, Vec<u8>), String> {
    pkcs8::der::pem::decode_vec(text.trim().as_bytes())
        .map(|(label, der)| (label.to_string(), der))
        .map_err(|e| format!("PEM: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_and_without_a_passphrase() {
        let dir = tempfile::tempdir().expect("tmp");
        let id = Identity::generate().expect("keygen");
        let plain = dir.path().join("a.key");
        id.save(&plain, None).expect("save");
        let back = Identity::load(&plain, None).expect("load");
        assert_eq!(back.id(), id.id());
        assert_eq!(
            PublicIdentity::load(&public_path(&plain)).expect("pub"),
            id.public()
        );

        let locked = dir.path().join("b.key");
        id.save(&locked, Some("correct horse")).expect("save");
        let text = std::fs::read_to_string(&locked).expect("read");
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        assert!(matches!(
            Identity::load(&locked, None),
            Err(IdentityError::NeedsPassphrase(_))
        ));
        assert!(matches!(
            Identity::load(&locked, Some("wrong")),
            Err(IdentityError::BadKey { .. })
        ));
        assert_eq!(
            Identity::load(&locked, Some("correct horse"))
                .expect("load")
                .id(),
            id.id()
        );

        #[cfg(unix)]
        for p in [&plain, &locked] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        // Never overwritten.
        assert!(id.save(&plain, None).is_err());
    }

    #[test]
    fn ids_are_derived_from_the_key_and_checked() {
        let a = Identity::generate().expect("keygen");
        let b = Identity::generate().expect("keygen");
        assert_ne!(a.id(), b.id());
        assert!(is_party_id(&a.id()));
        assert_eq!(a.id(), party_id(&a.public_key()));
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("x.pub");
        let forged = PublicIdentity {
            id: b.id(),
            public_key: a.public().public_key,
        };
        std::fs::write(&p, serde_json::to_string(&forged).expect("json")).expect("write");
        assert!(PublicIdentity::load(&p).is_err());
    }
}
