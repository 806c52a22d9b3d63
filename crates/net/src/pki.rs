//! A small certificate authority per federation, and party identities.
//!
//! `confide ca init` creates an Ed25519 CA; `confide ca issue` gives each party an Ed25519 key
//! and a certificate whose subject CN is the party's name and whose OU is its role, with the
//! name as a DNS subject-alternative name (the TLS server name). The same Ed25519 key signs the
//! party's contributions, so its TLS identity and its signatures are one identity.
//!
//! Layout of a federation directory: `ca.crt`, `ca.key`, and `<name>.crt`, `<name>.key` per
//! party. Private keys are written with mode 0600.

use std::path::{Path, PathBuf};

use confide_core::Role;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// PKI errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A certificate is malformed or does not satisfy the federation's rules.
    #[error("certificate rejected: {0}")]
    Rejected(String),
}

fn io(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn write_secret(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(|e| io(path, e))?;
    f.write_all(contents.as_bytes()).map_err(|e| io(path, e))
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    if path.exists() {
        return Err(io(path, "already exists; refusing to overwrite"));
    }
    std::fs::write(path, contents).map_err(|e| io(path, e))
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

/// Creates `ca.crt` and `ca.key` in `dir` (which is created if needed). Refuses to overwrite.
pub fn init_ca(dir: &Path, federation: &str, now: OffsetDateTime) -> Result<(), PkiError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let key =
        KeyPair::generate_for(&PKCS_ED25519).map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{federation} federation CA"));
    dn.push(DnType::OrganizationName, "confide");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(365);
    let cert = params
        .self_signed(&key)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    write_secret(&dir.join("ca.key"), &key.serialize_pem())?;
    write_public(&dir.join("ca.crt"), &cert.pem())
}

/// Issues `<name>.crt` and `<name>.key` for a party, signed by the CA in `dir`.
pub fn issue(dir: &Path, name: &str, role: Role, now: OffsetDateTime) -> Result<(), PkiError> {
    confide_core::config::validate_party_name(name).map_err(PkiError::Rejected)?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&dir.join("ca.crt"))?, ca_key)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let key =
        KeyPair::generate_for(&PKCS_ED25519).map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut params = CertificateParams::new(vec![name.to_string()])
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(90);
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    write_secret(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
    write_public(&dir.join(format!("{name}.crt")), &cert.pem())
}

/// A party's credentials, loaded from a federation directory.
#[derive(Clone)]
pub struct Credentials {
    /// The party's name (from its certificate).
    pub name: String,
    /// Its role (from its certificate).
    pub role: Role,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM.
    key_pem: String,
    /// The federation CA certificate, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} as {}, key ***)", self.name, self.role)
    }
}

impl Credentials {
    /// Loads `<name>.crt`, `<name>.key` and `ca.crt` from `dir`, and checks that the
    /// certificate chains to the CA and names `name`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, PkiError> {
        let cert_pem = read(&dir.join(format!("{name}.crt")))?;
        let key_pem = read(&dir.join(format!("{name}.key")))?;
        let ca_pem = read(&dir.join("ca.crt"))?;
        let der = pem_to_der(&cert_pem)?;
        let id = verify_party_certificate(&der, &pem_to_der(&ca_pem)?)?;
        if id.name != name {
            return Err(PkiError::Rejected(format!(
                "{name}.crt names `{}`, not `{name}`",
                id.name
            )));
        }
        Ok(Self {
            name: id.name,
            role: id.role,
            cert_pem,
            key_pem,
            ca_pem,
        })
    }

    /// The private key in PEM, for the TLS stack.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The signing key (the certificate's Ed25519 key).
    pub fn signing_key(&self) -> Result<confide_crypto::SigningKey, PkiError> {
        let der = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Rejected(format!("private key: {e}")))?;
        confide_crypto::SigningKey::from_pkcs8_der(der.secret_der())
            .map_err(|e| PkiError::Rejected(e.to_string()))
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> Result<Vec<u8>, PkiError> {
        pem_to_der(&self.ca_pem)
    }

    /// This party's certificate in DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        pem_to_der(&self.cert_pem)
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| PkiError::Rejected(format!("PEM: {e}")))
}

/// What a verified certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The party's name (subject CN).
    pub name: String,
    /// Its role (subject OU).
    pub role: Role,
    /// Its raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
}

/// Reads name, role and key from a certificate without checking its issuer (use on
/// certificates that the TLS layer already verified).
pub fn read_identity(der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Rejected(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::Rejected(
            "trailing bytes after the certificate".into(),
        ));
    }
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| PkiError::Rejected("no subject CN".into()))?
        .to_string();
    let role: Role = subject
        .iter_organizational_unit()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| PkiError::Rejected("no subject OU (role)".into()))?
        .parse()
        .map_err(PkiError::Rejected)?;
    let spki = cert.public_key();
    // id-Ed25519, RFC 8410.
    if spki.algorithm.algorithm.to_id_string() != "1.3.101.112" {
        return Err(PkiError::Rejected(
            "the certificate key is not Ed25519".into(),
        ));
    }
    let public_key = spki.subject_public_key.data.to_vec();
    if public_key.len() != 32 {
        return Err(PkiError::Rejected("malformed Ed25519 key".into()));
    }
    Ok(PeerIdentity {
        name,
        role,
        public_key,
    })
}

/// Verifies that a party certificate is signed by the CA and currently valid, then reads it.
pub fn verify_party_certificate(der: &[u8], ca_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, ca) =
        X509Certificate::from_der(ca_der).map_err(|e| PkiError::Rejected(format!("CA: {e}")))?;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Rejected(e.to_string()))?;
    if cert.issuer() != ca.subject() {
        return Err(PkiError::Rejected("not issued by the federation CA".into()));
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| PkiError::Rejected(format!("CA signature does not verify: {e}")))?;
    if !cert.validity().is_valid() {
        return Err(PkiError::Rejected(
            "certificate is expired or not yet valid".into(),
        ));
    }
    read_identity(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_name_role_and_the_signing_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        issue(dir.path(), "guest", Role::Node, now).expect("issue");
        let creds = Credentials::load(dir.path(), "guest").expect("load");
        assert_eq!(creds.role, Role::Node);
        let id = verify_party_certificate(
            &creds.cert_der().expect("der"),
            &creds.ca_der().expect("der"),
        )
        .expect("ok");
        assert_eq!(
            id.public_key,
            creds.signing_key().expect("key").public_key().to_vec()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("guest.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Refuses to overwrite.
        assert!(issue(dir.path(), "guest", Role::Node, now).is_err());
        assert!(init_ca(dir.path(), "t", now).is_err());
    }

    #[test]
    fn a_certificate_from_another_ca_is_rejected() {
        let a = tempfile::tempdir().expect("tmp");
        let b = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        // A rogue CA with the same (predictable) name: only the signature check can tell.
        init_ca(a.path(), "same", now).expect("ca");
        init_ca(b.path(), "same", now).expect("ca");
        issue(b.path(), "mallory", Role::Node, now).expect("issue");
        let foreign = pem_to_der(&read(&b.path().join("mallory.crt")).expect("read")).expect("der");
        let ca_a = pem_to_der(&read(&a.path().join("ca.crt")).expect("read")).expect("der");
        assert!(verify_party_certificate(&foreign, &ca_a).is_err());
    }
}
