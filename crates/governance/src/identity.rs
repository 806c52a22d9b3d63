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
//!   Keys are written as PKCS#8 v1 (no embedded public key), which OpenSSL 3.0 reads; v2 files
//!   from earlier versions are still read.
//! - **Public file**: `<key>.pub`, JSON `{"id": …, "public_key": …}` with the key in hex, to
//!   hand to the certificate authority and to the owners who write policies. With a TLS key
//!   it also holds `tls_public_key` (the SubjectPublicKeyInfo, hex) and `tls_binding`.
//! - **TLS key**: `<stem>.tls.key`, an ECDSA P-256 key (PKCS#8, encrypted like the identity
//!   key when a passphrase is given). Standard TLS stacks (gRPC's BoringSSL among them) do
//!   not offer Ed25519 in TLS, so the transport uses this key. The identity key signs
//!   [`tls_binding_message`] over the TLS key's SubjectPublicKeyInfo, and the federation CA
//!   puts the identity key and that signature in the certificate (`net::pki`), so a TLS peer,
//!   a signer and a party id remain one identity.

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

/// A bound TLS key: its SubjectPublicKeyInfo (DER) and the identity's binding signature.
pub type TlsBinding = (Vec<u8>, Vec<u8>);

/// The public half, as written to `<key>.pub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicIdentity {
    /// The party id.
    pub id: String,
    /// The Ed25519 public key, hex.
    pub public_key: String,
    /// The TLS key's SubjectPublicKeyInfo (DER, hex), when the party has a TLS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_public_key: Option<String>,
    /// The identity key's signature over [`tls_binding_message`] of that key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_binding: Option<String>,
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
        p.tls().map_err(bad)?;
        Ok(p)
    }

    /// The TLS key's SubjectPublicKeyInfo and its binding signature, checked against the
    /// identity key; `None` for a party without a TLS key.
    ///
    /// # Errors
    /// Only one of the two fields, bad hex, or a binding that does not verify.
    pub fn tls(&self) -> Result<Option<TlsBinding>, String> {
        match (&self.tls_public_key, &self.tls_binding) {
            (None, None) => Ok(None),
            (Some(spki), Some(sig)) => {
                let spki = hex::decode(spki).map_err(|e| format!("tls_public_key: {e}"))?;
                if spki.len() != P256_SPKI_PREFIX.len() + 65 || !spki.starts_with(&P256_SPKI_PREFIX)
                {
                    return Err("tls_public_key is not a P-256 SubjectPublicKeyInfo".into());
                }
                let sig = hex::decode(sig).map_err(|e| format!("tls_binding: {e}"))?;
                verify_tls_binding(&self.key()?, &spki, &sig)?;
                Ok(Some((spki, sig)))
            }
            _ => Err("tls_public_key and tls_binding come together".into()),
        }
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
        // Kept (and written) as PKCS#8 v1: OpenSSL 3.0 does not read Ed25519 v2 documents.
        let pkcs8 = pkcs8_v1(&der).map_err(confide_crypto::SignatureError::BadKey)?;
        Ok(Self { key, pkcs8 })
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
            tls_public_key: None,
            tls_binding: None,
        }
    }

    /// The public half with `tls`'s key bound to this identity.
    pub fn public_with_tls(&self, tls: &TlsKey) -> PublicIdentity {
        PublicIdentity {
            tls_public_key: Some(hex::encode(&tls.spki)),
            tls_binding: Some(hex::encode(self.bind_tls(&tls.spki))),
            ..self.public()
        }
    }

    /// This identity's signature binding the TLS key whose SubjectPublicKeyInfo is `spki`.
    pub fn bind_tls(&self, spki: &[u8]) -> Vec<u8> {
        self.key.sign(&tls_binding_message(spki)).to_vec()
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
        self.save_with(path, passphrase, None)
    }

    /// As [`Identity::save`], with a TLS key: it goes to [`tls_key_path`] of `path` (encrypted
    /// under the same passphrase), and the public file binds it.
    ///
    /// # Errors
    /// As [`Identity::save`].
    pub fn save_with(
        &self,
        path: &Path,
        passphrase: Option<&str>,
        tls: Option<&TlsKey>,
    ) -> Result<(), IdentityError> {
        write_new(path, &private_pem(&self.pkcs8, path, passphrase)?, true)?;
        let public = match tls {
            Some(t) => {
                let tls_path = tls_key_path(path);
                write_new(
                    &tls_path,
                    &private_pem(&t.pkcs8, &tls_path, passphrase)?,
                    true,
                )?;
                self.public_with_tls(t)
            }
            None => self.public(),
        };
        let public_file = public_path(path);
        let json = serde_json::to_string_pretty(&public).map_err(|e| io(&public_file, e))?;
        write_new(&public_file, &(json + "\n"), false)
    }

    /// Reads a key file written by [`Identity::save`] (or any Ed25519 PKCS#8 PEM).
    ///
    /// # Errors
    /// Unreadable, not an Ed25519 key, encrypted without a passphrase, or a wrong passphrase.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self, IdentityError> {
        let der = read_private_der(path, passphrase)?;
        Self::from_pkcs8(der).map_err(|e| IdentityError::BadKey {
            path: path.to_path_buf(),
            message: format!("not an Ed25519 key: {e}"),
        })
    }
}

/// A party's TLS key: ECDSA P-256, bound to its identity (see the module's documentation).
pub struct TlsKey {
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
}

impl std::fmt::Debug for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsKey(P-256, key ***)")
    }
}

/// The DER prefix of a P-256 SubjectPublicKeyInfo (RFC 5480: id-ecPublicKey, prime256v1),
/// followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

impl TlsKey {
    /// A fresh P-256 key from the operating system's random generator.
    ///
    /// # Errors
    /// The generator failed.
    pub fn generate() -> Result<Self, String> {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .map_err(|_| "P-256 key generation failed".to_string())?;
        Self::from_pkcs8(doc.as_ref().to_vec())
    }

    /// From PKCS#8 DER.
    ///
    /// # Errors
    /// Not a P-256 PKCS#8 key.
    pub fn from_pkcs8(der: Vec<u8>) -> Result<Self, String> {
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &der,
            &rng,
        )
        .map_err(|e| format!("not a P-256 key: {e}"))?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        Ok(Self { pkcs8: der, spki })
    }

    /// Reads a TLS key file.
    ///
    /// # Errors
    /// Unreadable, not a P-256 key, encrypted without a passphrase, or a wrong passphrase.
    pub fn load(path: &Path, passphrase: Option<&str>) -> Result<Self, IdentityError> {
        let der = read_private_der(path, passphrase)?;
        Self::from_pkcs8(der).map_err(|message| IdentityError::BadKey {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Writes the key to `path` (mode 0600; refuses to overwrite), encrypted when a passphrase
    /// is given.
    ///
    /// # Errors
    /// The file exists or cannot be written, or encryption failed.
    pub fn save(&self, path: &Path, passphrase: Option<&str>) -> Result<(), IdentityError> {
        write_new(path, &private_pem(&self.pkcs8, path, passphrase)?, true)
    }

    /// The SubjectPublicKeyInfo (DER).
    pub fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// The unencrypted PKCS#8 PEM (for the TLS stack, in memory only).
    pub fn pkcs8_pem(&self) -> String {
        pem("PRIVATE KEY", &self.pkcs8)
    }
}

/// What an identity key signs to bind a TLS key (its SubjectPublicKeyInfo, DER).
pub fn tls_binding_message(spki: &[u8]) -> Vec<u8> {
    let mut m = b"confide/tls-key-binding/v1\n".to_vec();
    m.extend_from_slice(spki);
    m
}

/// Checks that `identity` (an Ed25519 public key) bound the TLS key `spki` with `signature`.
///
/// # Errors
/// The signature does not verify.
pub fn verify_tls_binding(identity: &[u8], spki: &[u8], signature: &[u8]) -> Result<(), String> {
    confide_crypto::sign::verify(identity, &tls_binding_message(spki), signature).map_err(|_| {
        "the TLS key's binding signature does not verify under the identity key".into()
    })
}

/// `<stem>.tls.key` beside an identity key file `<stem>.key` (or `<name>.tls.key` beside any
/// other name).
pub fn tls_key_path(identity_key: &Path) -> PathBuf {
    let stem = identity_key
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    identity_key.with_file_name(format!("{stem}.tls.key"))
}

/// An Ed25519 PKCS#8 document as v1 (RFC 5208 shape: no public key field), the form
/// OpenSSL 3.0 reads.
///
/// # Errors
/// Not a PKCS#8 document.
pub fn pkcs8_v1(der: &[u8]) -> Result<Vec<u8>, String> {
    use pkcs8::der::Encode as _;
    let info = PrivateKeyInfo::from_der(der).map_err(|e| format!("PKCS#8: {e}"))?;
    PrivateKeyInfo {
        public_key: None,
        ..info
    }
    .to_der()
    .map_err(|e| format!("PKCS#8: {e}"))
}

/// A private key's PEM: PKCS#8, or encrypted PKCS#8 (PBES2) under `passphrase`.
fn private_pem(der: &[u8], path: &Path, passphrase: Option<&str>) -> Result<String, IdentityError> {
    match passphrase {
        None => Ok(pem("PRIVATE KEY", der)),
        Some("") => Err(IdentityError::BadKey {
            path: path.to_path_buf(),
            message: "the passphrase is empty".into(),
        }),
        Some(p) => {
            let info = PrivateKeyInfo::from_der(der).map_err(|e| io(path, e))?;
            let doc = info
                .encrypt(rand::rngs::OsRng, p.as_bytes())
                .map_err(|e| io(path, format!("encrypting the key: {e}")))?;
            Ok(pem("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
        }
    }
}

/// The PKCS#8 DER of the private key PEM in `path`, decrypted with `passphrase` when it is
/// encrypted.
fn read_private_der(path: &Path, passphrase: Option<&str>) -> Result<Vec<u8>, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let bad = |message: String| IdentityError::BadKey {
        path: path.to_path_buf(),
        message,
    };
    let (label, der) = unpem(&text).map_err(bad)?;
    match label.as_str() {
        "PRIVATE KEY" => Ok(der),
        "ENCRYPTED PRIVATE KEY" => {
            let p = passphrase.ok_or_else(|| IdentityError::NeedsPassphrase(path.to_path_buf()))?;
            let info = EncryptedPrivateKeyInfo::from_der(&der)
                .map_err(|e| bad(format!("encrypted key: {e}")))?;
            Ok(info
                .decrypt(p.as_bytes())
                .map_err(|_| bad("wrong passphrase, or a damaged key file".into()))?
                .as_bytes()
                .to_vec())
        }
        other => Err(bad(format!("a `{other}` PEM is not a private key"))),
    }
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
            ..a.public()
        };
        std::fs::write(&p, serde_json::to_string(&forged).expect("json")).expect("write");
        assert!(PublicIdentity::load(&p).is_err());
    }

    #[test]
    fn a_tls_key_is_saved_encrypted_and_bound_to_the_identity() {
        let dir = tempfile::tempdir().expect("tmp");
        let (id, tls) = (
            Identity::generate().expect("id"),
            TlsKey::generate().expect("tls"),
        );
        let path = dir.path().join("owner.key");
        id.save_with(&path, Some("pw"), Some(&tls)).expect("save");
        let tls_path = tls_key_path(&path);
        assert_eq!(tls_path, dir.path().join("owner.tls.key"));
        assert!(matches!(
            TlsKey::load(&tls_path, None),
            Err(IdentityError::NeedsPassphrase(_))
        ));
        let back = TlsKey::load(&tls_path, Some("pw")).expect("load");
        assert_eq!(back.spki(), tls.spki());
        let public = PublicIdentity::load(&public_path(&path)).expect("pub");
        assert_eq!(
            public.tls().expect("bound"),
            Some((tls.spki().to_vec(), id.bind_tls(tls.spki())))
        );
        // Another identity's binding, or a binding of another key, does not verify.
        let other = Identity::generate().expect("id");
        let swapped = PublicIdentity {
            tls_binding: Some(hex::encode(other.bind_tls(tls.spki()))),
            ..public.clone()
        };
        assert!(swapped.tls().is_err());
        let half = PublicIdentity {
            tls_binding: None,
            ..public
        };
        assert!(half.tls().is_err());
        // Identity keys are kept as PKCS#8 v1 whatever form they were read from.
        let v2 = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .expect("v2");
        let read = Identity::from_pkcs8(v2.as_ref().to_vec()).expect("reads v2");
        assert!(read.pkcs8.len() < v2.as_ref().len());
        assert_eq!(
            Identity::from_pkcs8(read.pkcs8.clone()).expect("v1").id(),
            read.id()
        );
    }
}
