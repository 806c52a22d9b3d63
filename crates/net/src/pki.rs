//! A small certificate authority per federation, and party identities.
//!
//! `confide ca init` creates an Ed25519 CA; `confide ca issue` certifies a party's Ed25519
//! identity key (made with `confide keygen`, or generated on the spot) in a certificate whose
//! subject CN is the party's name and whose OU is its role, with the name as a DNS
//! subject-alternative name (the TLS server name). The same key signs the party's
//! contributions, approvals and tree heads, and its party id is derived from it: a TLS peer, a
//! signature and an id are one identity. `confide ca revoke` adds a party to the CA-signed
//! revocation list (`revoked.json`), which every role checks on every call.
//!
//! Layout of a federation directory: `ca.crt`, `ca.key`, `revoked.json` (once something is
//! revoked), and `<name>.crt`, `<name>.key` (and `<name>.key.pub`) per party. Private keys are
//! written with mode 0600; a party's key may be passphrase-encrypted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use confide_core::Role;
use confide_governance::identity::{
    Identity, PublicIdentity, TlsKey, party_id, pem, pkcs8_v1, tls_key_path,
};
use confide_governance::revocation::{RevocationList, Revoked};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType, SubjectPublicKeyInfo,
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
    /// A private key file cannot be used (truncated, malformed, wrong passphrase).
    #[error("key file {path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
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
    // PKCS#8 v1, which OpenSSL reads (ring writes Ed25519 keys as v2).
    let der = pkcs8_v1(&key.serialize_der()).map_err(PkiError::Generate)?;
    write_secret(&dir.join("ca.key"), &pem("PRIVATE KEY", &der))?;
    write_public(&dir.join("ca.crt"), &cert.pem())
}

/// Generates a key for a party (`<name>.key`, `<name>.key.pub`) and issues its certificate.
pub fn issue(dir: &Path, name: &str, role: Role, now: OffsetDateTime) -> Result<(), PkiError> {
    confide_core::config::validate_party_name(name).map_err(PkiError::Rejected)?;
    check_name_role(name, role)?;
    let identity = Identity::generate().map_err(PkiError::Generate)?;
    let tls = TlsKey::generate().map_err(PkiError::Generate)?;
    identity
        .save_with(&dir.join(format!("{name}.key")), None, Some(&tls))
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    issue_for_key(dir, name, role, &identity.public_with_tls(&tls), now)
}

/// The URI subject alternative name that carries a party's identity key and its signature
/// binding the certificate's TLS key: `confide:identity:v1:<key hex>:<signature hex>`.
const IDENTITY_URI_PREFIX: &str = "confide:identity:v1:";

/// Servers are authenticated by name, so a server's name is only ever issued with its role:
/// `coordinator`, `keyholder` and `aggregator-N` are each their role's own.
fn check_name_role(name: &str, role: Role) -> Result<(), PkiError> {
    let reserved = match name {
        "coordinator" => Some(Role::Coordinator),
        "keyholder" => Some(Role::KeyHolder),
        n if n.starts_with("aggregator-") => Some(Role::Aggregator),
        _ => None,
    };
    if (reserved.is_some() || role == Role::Aggregator) && reserved != Some(role) {
        return Err(PkiError::Rejected(format!(
            "the name `{name}` cannot have the role {role} (coordinator, keyholder and aggregator-N are each their role's own)"
        )));
    }
    Ok(())
}

/// The DER SubjectPublicKeyInfo of an Ed25519 public key (RFC 8410 §4).
fn ed25519_spki(key: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend_from_slice(key);
    der
}

/// Issues `<name>.crt` for an existing identity (its public key), signed by the CA in `dir`.
pub fn issue_for_key(
    dir: &Path,
    name: &str,
    role: Role,
    public: &PublicIdentity,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    confide_core::config::validate_party_name(name).map_err(PkiError::Rejected)?;
    let key = public.key().map_err(PkiError::Rejected)?;
    if party_id(&key) != public.id {
        return Err(PkiError::Rejected(
            "the id is not derived from the key".into(),
        ));
    }
    check_name_role(name, role)?;
    // With a bound TLS key (P-256), the certificate certifies that key for TLS and carries the
    // identity key and its binding; without one, it certifies the Ed25519 identity key itself.
    let tls = public.tls().map_err(PkiError::Rejected)?;
    let spki_der = match &tls {
        Some((spki, _)) => spki.clone(),
        None => ed25519_spki(&key),
    };
    let spki =
        SubjectPublicKeyInfo::from_der(&spki_der).map_err(|e| PkiError::Generate(e.to_string()))?;
    let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&dir.join("ca.crt"))?, ca_key)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut params = CertificateParams::new(vec![name.to_string()])
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    params.distinguished_name = dn;
    if let Some((_, binding)) = &tls {
        let uri = format!(
            "{IDENTITY_URI_PREFIX}{}:{}",
            hex::encode(key),
            hex::encode(binding)
        );
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().map_err(
                |e: rcgen::Error| PkiError::Generate(e.to_string()),
            )?));
    }
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
        .signed_by(&spki, &issuer)
        .map_err(|e| PkiError::Generate(e.to_string()))?;
    write_public(&dir.join(format!("{name}.crt")), &cert.pem())
}

/// Revokes the party certified as `<name>.crt`: adds its id to the CA-signed `revoked.json`.
/// Returns the revoked id.
pub fn revoke(
    dir: &Path,
    name: &str,
    reason: &str,
    now: OffsetDateTime,
) -> Result<String, PkiError> {
    let cert = pem_to_der(&read(&dir.join(format!("{name}.crt")))?)?;
    let id = read_identity(&cert)?;
    let ca =
        Identity::load(&dir.join("ca.key"), None).map_err(|e| PkiError::Rejected(e.to_string()))?;
    let ca_pub = ca_public_key(&pem_to_der(&read(&dir.join("ca.crt"))?)?)?;
    if ca.public_key().as_slice() != ca_pub.as_slice() {
        return Err(PkiError::Rejected("ca.key is not the key of ca.crt".into()));
    }
    let path = dir.join(REVOCATIONS);
    let mut list =
        RevocationList::load(&path, &ca_pub).map_err(|e| PkiError::Rejected(e.to_string()))?;
    list.revoke(
        Revoked {
            id: id.id.clone(),
            name: id.name.clone(),
            reason: reason.to_string(),
            time: confide_governance::policy::rfc3339(now),
        },
        ca.signing_key(),
    )
    .map_err(|e| PkiError::Rejected(e.to_string()))?;
    list.save(&path).map_err(|e| io(&path, e))?;
    Ok(id.id)
}

/// The revocation list's file name in a federation directory.
pub const REVOCATIONS: &str = "revoked.json";

fn ca_public_key(ca_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, ca) =
        X509Certificate::from_der(ca_der).map_err(|e| PkiError::Rejected(format!("CA: {e}")))?;
    Ok(ca.public_key().subject_public_key.data.to_vec())
}

/// A revocation list as loaded (or why it could not be trusted).
type LoadedList = Result<Arc<RevocationList>, String>;

/// A federation's revocation list as a role sees it: re-read whenever the file changes, and
/// checked on every call. A list that does not verify refuses everyone (fail closed).
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    ca_key: Vec<u8>,
    cache: Mutex<Option<(Option<std::time::SystemTime>, LoadedList)>>,
    /// The highest serial this process has accepted: an older list (or none, once one was
    /// seen) is a rollback of revocations and is not trusted.
    highest: Mutex<Option<u64>>,
}

impl Revocations {
    /// The list of the federation in `dir`, verified with the CA certificate `ca_der`.
    pub fn new(dir: &Path, ca_der: &[u8]) -> Result<Self, PkiError> {
        Ok(Self {
            path: dir.join(REVOCATIONS),
            ca_key: ca_public_key(ca_der)?,
            cache: Mutex::new(None),
            highest: Mutex::new(None),
        })
    }

    fn current(&self) -> Result<Arc<RevocationList>, String> {
        let stamp = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, list)) = cache.as_ref()
            && *seen == stamp
        {
            return list.clone();
        }
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let list = RevocationList::load(&self.path, &self.ca_key)
            .map_err(|e| format!("{}: {e}", self.path.display()))
            .and_then(|list| match *highest {
                Some(h) if stamp.is_none() => Err(format!(
                    "{} disappeared after this process accepted its serial {h}: revocations cannot be undone by deleting the list",
                    self.path.display()
                )),
                Some(h) if list.serial < h => Err(format!(
                    "{} has serial {}, older than the serial {h} already accepted: a rolled-back list is not trusted",
                    self.path.display(),
                    list.serial
                )),
                _ => Ok(list),
            })
            .map(|list| {
                if stamp.is_some() {
                    *highest = Some(highest.map_or(list.serial, |h| h.max(list.serial)));
                }
                Arc::new(list)
            });
        *cache = Some((stamp, list.clone()));
        list
    }

    /// `Err` with the reason when the party with id `id` is revoked, or when the list cannot
    /// be trusted.
    pub fn check(&self, id: &str) -> Result<(), String> {
        let list = self.current()?;
        match list.find(id) {
            Some(r) => Err(format!(
                "`{}` ({}) was revoked by the federation CA at {}: {}",
                r.name, r.id, r.time, r.reason
            )),
            None => Ok(()),
        }
    }
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
    /// Its private key, PKCS#8 PEM (decrypted).
    key_pem: String,
    /// Its identity (the certificate's key).
    identity: Arc<Identity>,
    /// The federation CA certificate, PEM.
    pub ca_pem: String,
    /// The federation's revocation list.
    pub revocations: Arc<Revocations>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} as {}, key ***)", self.name, self.role)
    }
}

impl Credentials {
    /// Loads `<name>.crt`, `<name>.key` and `ca.crt` from `dir`, and checks that the
    /// certificate chains to the CA, names `name`, certifies the key, and is not revoked.
    pub fn load(dir: &Path, name: &str) -> Result<Self, PkiError> {
        Self::load_with(dir, name, None)
    }

    /// As [`Credentials::load`], with the passphrase of an encrypted key.
    pub fn load_with(dir: &Path, name: &str, passphrase: Option<&str>) -> Result<Self, PkiError> {
        let cert_pem = read(&dir.join(format!("{name}.crt")))?;
        let key_path = dir.join(format!("{name}.key"));
        let key_err = |path: &Path, e: confide_governance::identity::IdentityError| PkiError::Key {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let identity = Identity::load(&key_path, passphrase).map_err(|e| key_err(&key_path, e))?;
        // A TLS key beside the identity key is the transport key; its certificate must
        // certify exactly that key. Without one, the certificate certifies the identity key.
        let tls_path = tls_key_path(&key_path);
        let tls = if tls_path.exists() {
            Some(TlsKey::load(&tls_path, passphrase).map_err(|e| key_err(&tls_path, e))?)
        } else {
            None
        };
        let key_pem = tls
            .as_ref()
            .map_or_else(|| identity.pkcs8_pem(), TlsKey::pkcs8_pem);
        let ca_pem = read(&dir.join("ca.crt"))?;
        let der = pem_to_der(&cert_pem)?;
        let id = verify_party_certificate(&der, &pem_to_der(&ca_pem)?)?;
        if id.name != name {
            return Err(PkiError::Rejected(format!(
                "{name}.crt names `{}`, not `{name}`",
                id.name
            )));
        }
        if id.public_key != identity.public_key() {
            return Err(PkiError::Rejected(format!(
                "{name}.crt certifies another key than {name}.key"
            )));
        }
        let (_, parsed) =
            X509Certificate::from_der(&der).map_err(|e| PkiError::Rejected(e.to_string()))?;
        match &tls {
            Some(t) if parsed.public_key().raw != t.spki() => {
                return Err(PkiError::Rejected(format!(
                    "{name}.crt certifies another TLS key than {}",
                    tls_path.display()
                )));
            }
            None if parsed.public_key().raw != ed25519_spki(&identity.public_key()).as_slice() => {
                return Err(PkiError::Rejected(format!(
                    "{name}.crt certifies a TLS key, and {} is missing",
                    tls_path.display()
                )));
            }
            _ => {}
        }
        let revocations = Arc::new(Revocations::new(dir, &pem_to_der(&ca_pem)?)?);
        revocations.check(&id.id).map_err(PkiError::Rejected)?;
        Ok(Self {
            name: id.name,
            role: id.role,
            cert_pem,
            key_pem,
            identity: Arc::new(identity),
            ca_pem,
            revocations,
        })
    }

    /// The party's identity.
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// The private key in PEM, for the TLS stack.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The signing key (the identity's Ed25519 key, which the certificate certifies).
    pub fn signing_key(&self) -> Result<confide_crypto::SigningKey, PkiError> {
        let pem = self.identity.pkcs8_pem();
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| PkiError::Rejected(format!("private key: {e}")))?;
        confide_crypto::SigningKey::from_pkcs8_der(der.secret_der())
            .map_err(|e| PkiError::Rejected(e.to_string()))
    }

    /// The party id.
    pub fn id(&self) -> String {
        self.identity.id()
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

/// Loads `<name>.crt` from a federation directory and checks it: issued by the directory's CA,
/// currently valid, naming `name` with `role`, and not revoked. For parties whose keys must be
/// known before they connect (the confidential trainer's owners and recipients).
pub fn load_party_certificate(
    dir: &Path,
    name: &str,
    role: Role,
) -> Result<PeerIdentity, PkiError> {
    let ca_der = pem_to_der(&read(&dir.join("ca.crt"))?)?;
    let der = pem_to_der(&read(&dir.join(format!("{name}.crt")))?)?;
    let id = verify_party_certificate(&der, &ca_der)?;
    if id.name != name || id.role != role {
        return Err(PkiError::Rejected(format!(
            "{name}.crt certifies `{}` as {}, not `{name}` as {role}",
            id.name, id.role
        )));
    }
    Revocations::new(dir, &ca_der)?
        .check(&id.id)
        .map_err(PkiError::Rejected)?;
    Ok(id)
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
    /// Its party id (derived from the key).
    pub id: String,
}

/// When a certificate (DER) stops being valid, as Unix seconds.
///
/// # Errors
/// Not a certificate.
pub fn not_after(der: &[u8]) -> Result<i64, PkiError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::Rejected(e.to_string()))?;
    Ok(cert.validity().not_after.timestamp())
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
    let public_key = match spki.algorithm.algorithm.to_id_string().as_str() {
        // id-Ed25519 (RFC 8410): the certified key is the identity key (and no other
        // identity may be claimed beside it).
        "1.3.101.112" => {
            if has_identity_uri(&cert) {
                return Err(PkiError::Rejected(
                    "an Ed25519 certificate carries an identity URI".into(),
                ));
            }
            spki.subject_public_key.data.to_vec()
        }
        // id-ecPublicKey (RFC 5480): a TLS key, bound to the identity key in the URI SAN.
        "1.2.840.10045.2.1" => bound_identity(&cert)?,
        other => {
            return Err(PkiError::Rejected(format!(
                "the certificate key ({other}) is neither Ed25519 nor a bound P-256 TLS key"
            )));
        }
    };
    if public_key.len() != 32 {
        return Err(PkiError::Rejected("malformed Ed25519 key".into()));
    }
    Ok(PeerIdentity {
        name,
        role,
        id: party_id(&public_key),
        public_key,
    })
}

/// Whether a certificate has any identity URI.
fn has_identity_uri(cert: &X509Certificate<'_>) -> bool {
    use x509_parser::extensions::GeneralName;
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value
                .general_names
                .iter()
                .any(|g| matches!(g, GeneralName::URI(u) if u.starts_with(IDENTITY_URI_PREFIX)))
        })
}

/// The identity key of a certificate whose key is a TLS key: exactly one identity URI, whose
/// signature binds the certificate's SubjectPublicKeyInfo to that key.
fn bound_identity(cert: &X509Certificate<'_>) -> Result<Vec<u8>, PkiError> {
    use x509_parser::extensions::GeneralName;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Rejected(format!("subject alternative names: {e}")))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|g| match g {
            GeneralName::URI(u) => u.strip_prefix(IDENTITY_URI_PREFIX),
            _ => None,
        })
        .collect();
    let [uri] = uris.as_slice() else {
        return Err(PkiError::Rejected(format!(
            "a TLS-key certificate needs exactly one identity URI, this one has {}",
            uris.len()
        )));
    };
    let (key, binding) = uri
        .split_once(':')
        .ok_or_else(|| PkiError::Rejected("malformed identity URI".into()))?;
    let key = hex::decode(key).map_err(|_| PkiError::Rejected("identity key hex".into()))?;
    let binding =
        hex::decode(binding).map_err(|_| PkiError::Rejected("binding signature hex".into()))?;
    confide_governance::identity::verify_tls_binding(&key, cert.public_key().raw, &binding)
        .map_err(PkiError::Rejected)?;
    Ok(key)
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
        // Server names go with their roles only (servers are authenticated by name).
        for (name, role) in [
            ("keyholder", Role::Node),
            ("coordinator", Role::KeyHolder),
            ("aggregator-1", Role::Node),
            ("agg", Role::Aggregator),
        ] {
            assert!(
                issue(dir.path(), name, role, now).is_err(),
                "{name} as {role}"
            );
        }
        issue(dir.path(), "aggregator-1", Role::Aggregator, now).expect("aggregator");
    }

    #[test]
    fn tls_certificates_certify_a_p256_key_bound_to_the_identity_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        issue(dir.path(), "guest", Role::Node, now).expect("issue");
        let creds = Credentials::load(dir.path(), "guest").expect("load");
        let der = creds.cert_der().expect("der");
        let (_, cert) = X509Certificate::from_der(&der).expect("parse");
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1",
            "the TLS key is ECDSA"
        );
        // The identity (signing) key is what the certificate names, through the binding.
        let id = read_identity(&der).expect("read");
        assert_eq!(id.public_key, creds.identity().public_key().to_vec());
        assert_eq!(id.id, creds.id());
        // The TLS stack gets the P-256 key, not the identity key.
        assert!(creds.key_pem() != creds.identity().pkcs8_pem());
        // A certificate for another TLS key than the file beside the identity key is refused.
        let tls = dir.path().join("guest.tls.key");
        std::fs::remove_file(&tls).expect("rm");
        TlsKey::generate()
            .expect("key")
            .save(&tls, None)
            .expect("save");
        let err = Credentials::load(dir.path(), "guest").expect_err("other TLS key");
        assert!(err.to_string().contains("another TLS key"), "{err}");
        // Without the TLS key the certificate is unusable, and says so at start.
        std::fs::remove_file(&tls).expect("rm");
        let err = Credentials::load(dir.path(), "guest").expect_err("no TLS key");
        assert!(err.to_string().contains("is missing"), "{err}");
        // A public file whose "TLS key" is not a P-256 key is refused at issuance.
        let id = Identity::generate().expect("id");
        let ed = ed25519_spki(&Identity::generate().expect("id").public_key());
        let odd = PublicIdentity {
            tls_public_key: Some(hex::encode(&ed)),
            tls_binding: Some(hex::encode(id.bind_tls(&ed))),
            ..id.public()
        };
        assert!(issue_for_key(dir.path(), "odd", Role::Node, &odd, now).is_err());
    }

    #[test]
    fn a_tls_certificate_with_a_forged_binding_is_rejected() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        let (victim, tls) = (
            Identity::generate().expect("id"),
            TlsKey::generate().expect("tls"),
        );
        // A public file that claims the victim's identity for a TLS key the victim never
        // bound (the signature is over another key): refused at issuance.
        let other = TlsKey::generate().expect("tls");
        let forged = PublicIdentity {
            tls_public_key: Some(hex::encode(tls.spki())),
            tls_binding: Some(hex::encode(victim.bind_tls(other.spki()))),
            ..victim.public()
        };
        assert!(issue_for_key(dir.path(), "mallory", Role::Node, &forged, now).is_err());
        // A certificate carrying such a binding (as a careless CA might issue) is refused when
        // read, so no peer accepts it as the victim.
        let ca_key =
            KeyPair::from_pem(&read(&dir.path().join("ca.key")).expect("ca")).expect("key");
        let issuer =
            Issuer::from_ca_cert_pem(&read(&dir.path().join("ca.crt")).expect("ca"), ca_key)
                .expect("issuer");
        let mut params = CertificateParams::new(vec!["mallory".to_string()]).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "mallory");
        dn.push(DnType::OrganizationalUnitName, "node");
        params.distinguished_name = dn;
        let uri = format!(
            "{IDENTITY_URI_PREFIX}{}:{}",
            hex::encode(victim.public_key()),
            hex::encode(victim.bind_tls(other.spki()))
        );
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().expect("uri")));
        let spki = SubjectPublicKeyInfo::from_der(tls.spki()).expect("spki");
        let cert = params.signed_by(&spki, &issuer).expect("sign");
        let err = verify_party_certificate(
            cert.der(),
            &pem_to_der(&read(&dir.path().join("ca.crt")).expect("ca")).expect("der"),
        )
        .expect_err("forged");
        assert!(err.to_string().contains("binding"), "{err}");
        // An Ed25519 certificate that also claims an identity URI is refused: its key is its
        // identity, and no other may be claimed beside it.
        let mallory = Identity::generate().expect("id");
        let ed_spki = ed25519_spki(&mallory.public_key());
        let spki = SubjectPublicKeyInfo::from_der(&ed_spki).expect("spki");
        let cert = params.signed_by(&spki, &issuer).expect("sign");
        let err = read_identity(cert.der()).expect_err("two identities");
        assert!(err.to_string().contains("identity URI"), "{err}");
    }

    #[test]
    fn keys_are_written_in_a_form_openssl_reads() {
        // PKCS#8 v1 (RFC 5208): version 0 and no public key field, for the CA, identity and
        // TLS keys alike. OpenSSL 3.0 refuses Ed25519 v2 documents; .ci/run also checks the
        // files with `openssl pkey`.
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        issue(dir.path(), "guest", Role::Node, now).expect("issue");
        for f in ["ca.key", "guest.key", "guest.tls.key"] {
            let (label, der) =
                confide_governance::identity::unpem(&read(&dir.path().join(f)).expect("read"))
                    .expect("pem");
            assert_eq!(label, "PRIVATE KEY", "{f}");
            // SEQUENCE { INTEGER 0, …: version 0 is v1.
            assert_eq!(der[0], 0x30, "{f}");
            let at = if der[1] & 0x80 == 0 {
                2
            } else {
                2 + usize::from(der[1] & 0x7f)
            };
            assert_eq!(&der[at..at + 3], &[0x02, 0x01, 0x00], "{f} is PKCS#8 v1");
        }
    }

    #[test]
    fn an_identity_without_a_tls_key_still_gets_an_ed25519_certificate() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        let id = Identity::generate().expect("id");
        id.save(&dir.path().join("old.key"), None).expect("save");
        issue_for_key(dir.path(), "old", Role::Node, &id.public(), now).expect("issue");
        let creds = Credentials::load(dir.path(), "old").expect("load");
        let der = creds.cert_der().expect("der");
        let (_, cert) = X509Certificate::from_der(&der).expect("parse");
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.3.101.112"
        );
        assert_eq!(creds.key_pem(), id.pkcs8_pem());
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

    #[test]
    fn a_certificate_for_a_keygen_identity_binds_that_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        let id = Identity::generate().expect("key");
        issue_for_key(dir.path(), "alice", Role::Node, &id.public(), now).expect("issue");
        id.save(&dir.path().join("alice.key"), Some("pw"))
            .expect("save");
        assert!(
            Credentials::load(dir.path(), "alice").is_err(),
            "encrypted key needs its passphrase"
        );
        let creds = Credentials::load_with(dir.path(), "alice", Some("pw")).expect("load");
        assert_eq!(creds.id(), id.id());
        let peer = read_identity(&creds.cert_der().expect("der")).expect("read");
        assert_eq!(peer.id, id.id());

        // A certificate for one key with another key file is refused.
        let other = Identity::generate().expect("key");
        issue_for_key(dir.path(), "bob", Role::Node, &other.public(), now).expect("issue");
        Identity::generate()
            .expect("key")
            .save(&dir.path().join("bob.key"), None)
            .expect("save");
        let err = Credentials::load(dir.path(), "bob").expect_err("mismatch");
        assert!(err.to_string().contains("another key"), "{err}");
    }

    #[test]
    fn a_rolled_back_or_deleted_revocation_list_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = OffsetDateTime::now_utc();
        init_ca(dir.path(), "t", now).expect("ca");
        for n in ["a", "b", "c"] {
            issue(dir.path(), n, Role::Node, now).expect("issue");
        }
        let ca = pem_to_der(&read(&dir.path().join("ca.crt")).expect("read")).expect("der");
        let list = Revocations::new(dir.path(), &ca).expect("list");
        let id = |n: &str| {
            read_identity(
                &pem_to_der(&read(&dir.path().join(format!("{n}.crt"))).expect("read"))
                    .expect("der"),
            )
            .expect("id")
            .id
        };
        assert!(list.check(&id("a")).is_ok(), "no list: nobody revoked");
        revoke(dir.path(), "a", "one", now).expect("revoke");
        let path = dir.path().join(REVOCATIONS);
        let serial_1 = std::fs::read(&path).expect("read");
        assert!(list.check(&id("a")).is_err());
        std::thread::sleep(std::time::Duration::from_millis(20));
        revoke(dir.path(), "b", "two", now).expect("revoke");
        assert!(list.check(&id("b")).is_err());
        assert!(list.check(&id("c")).is_ok());
        // The older, validly signed list un-revokes `b`: refused.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, &serial_1).expect("write");
        let err = list.check(&id("c")).expect_err("rolled back");
        assert!(err.contains("older"), "{err}");
        // Deleting the list: refused too.
        std::fs::remove_file(&path).expect("rm");
        let err = list.check(&id("c")).expect_err("deleted");
        assert!(err.contains("disappeared"), "{err}");
    }
}
