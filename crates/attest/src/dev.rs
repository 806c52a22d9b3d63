//! The dev TEE: a simulated trusted environment for machines without SGX, TDX or SEV-SNP.
//!
//! It signs a statement (measurement, report data) with an Ed25519 key kept in a local file.
//! **It protects nothing against the host**: whoever runs the machine can read the key, the
//! trusted core's memory and its data. Its evidence is always marked `insecure`, and a policy
//! accepts it only with `[dev] allow = true` and the dev key pinned. It exists so that the
//! confidential-mode code paths (key binding, encrypted upload, sealing, release) run and are
//! tested everywhere.

use serde::{Deserialize, Serialize};

use crate::{AttestError, Claims, Evidence, TeeKind};

/// Domain separation for the dev TEE's signatures.
pub const STATEMENT_DOMAIN: &[u8] = b"confide/attest/dev-tee/v1\n";

/// What the dev TEE signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Always `"dev-insecure"`.
    pub tee: String,
    /// SHA-256 of the trusted core's executable, hex.
    pub measurement: String,
    /// The 64 bytes of report data, hex.
    pub report_data: String,
}

/// The measurement of an executable: SHA-256 of its bytes.
pub fn measure_file(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let bytes = std::fs::read(path)?;
    let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// The simulated TEE: a signing key and the measurement of the code it vouches for.
pub struct DevTee {
    key: confide_crypto::SigningKey,
    measurement: [u8; 32],
}

impl std::fmt::Debug for DevTee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DevTee(signer {}, measurement {})",
            hex::encode(self.key.public_key()),
            hex::encode(self.measurement)
        )
    }
}

impl DevTee {
    /// A dev TEE with its signing key and the measurement of the code it vouches for.
    pub fn new(key: confide_crypto::SigningKey, measurement: [u8; 32]) -> Self {
        Self { key, measurement }
    }

    /// The public key that policies pin (`[dev] signers`).
    pub fn signer(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// Evidence carrying `report_data` (normally [`crate::binding`] of a key and a nonce).
    pub fn evidence(&self, report_data: &[u8; 64]) -> Evidence {
        let statement = serde_json::to_string(&Statement {
            tee: "dev-insecure".into(),
            measurement: hex::encode(self.measurement),
            report_data: hex::encode(report_data),
        })
        .unwrap_or_default();
        let mut msg = STATEMENT_DOMAIN.to_vec();
        msg.extend_from_slice(statement.as_bytes());
        Evidence::Dev {
            signature: hex::encode(self.key.sign(&msg)),
            signer: hex::encode(self.key.public_key()),
            statement,
        }
    }
}

pub(crate) fn verify(
    statement: &str,
    signature: &str,
    signer: &str,
) -> Result<Claims, AttestError> {
    let malformed = |m: String| AttestError::Malformed(m);
    let signer_bytes = hex::decode(signer).map_err(|e| malformed(format!("signer: {e}")))?;
    let sig = hex::decode(signature).map_err(|e| malformed(format!("signature: {e}")))?;
    let mut msg = STATEMENT_DOMAIN.to_vec();
    msg.extend_from_slice(statement.as_bytes());
    confide_crypto::sign::verify(&signer_bytes, &msg, &sig)
        .map_err(|_| AttestError::Platform("the dev TEE's signature does not verify".into()))?;
    let s: Statement =
        serde_json::from_str(statement).map_err(|e| malformed(format!("statement: {e}")))?;
    if s.tee != "dev-insecure" {
        return Err(malformed(format!("statement names TEE `{}`", s.tee)));
    }
    let measurement = hex::decode(&s.measurement).map_err(|e| malformed(e.to_string()))?;
    let report_data = hex::decode(&s.report_data).map_err(|e| malformed(e.to_string()))?;
    if measurement.len() != 32 || report_data.len() != 64 {
        return Err(malformed(
            "measurement must be 32 bytes and report data 64".into(),
        ));
    }
    Ok(Claims {
        kind: TeeKind::Dev,
        measurement,
        signer: Some(signer_bytes),
        svn: 0,
        product_id: None,
        tdx: None,
        snp: None,
        tcb_status: "dev-insecure".into(),
        advisories: Vec::new(),
        tcb_eval_data_number: None,
        debug: true,
        report_data,
        insecure: true,
    })
}
