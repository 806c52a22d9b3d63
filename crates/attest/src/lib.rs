//! Attestation for Confide's confidential mode.
//!
//! A trusted core proves what code it runs by producing **evidence**: a statement signed by its
//! platform that names its code measurement and carries 64 bytes of report data. The core puts
//! [`binding`]`(public key, nonce)` there: a SHA-512 over a fresh public key (to which owners then
//! encrypt their data) and the verifier's nonce (so old evidence cannot be replayed).
//!
//! A verifier checks, in this order ([`verify`]):
//! 1. the platform's signatures, with the time injected: SGX and TDX DCAP quotes through
//!    `dcap-qvl` (Intel's root, the PCK chain, CRLs, TCB info, QE identity), SEV-SNP reports
//!    through `sev` (AMD's ARK and ASK for the product, the VCEK, its validity period), or the
//!    dev TEE's Ed25519 signature;
//! 2. its [`Policy`]: the accepted measurements and signers, TCB levels, debug mode, and whether
//!    the insecure dev TEE is accepted at all (production policies refuse it);
//! 3. the binding: the report data must equal the binding of the expected key and nonce.
//!
//! Nothing here reads a clock or the network: collateral travels with the evidence, and the
//! caller passes the time.

use serde::{Deserialize, Serialize};

mod dcap;
pub mod dev;
pub mod policy;
mod snp;

pub use policy::Policy;

/// Domain separation for the report data.
pub const BINDING_DOMAIN: &[u8] = b"confide/attest/v1\n";

/// The report data that binds a public key and a verifier's nonce:
/// `SHA-512(domain ‖ u32be(len key) ‖ key ‖ nonce)`.
pub fn binding(public_key: &[u8], nonce: &[u8; 32]) -> [u8; 64] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
    ctx.update(BINDING_DOMAIN);
    ctx.update(&(public_key.len() as u32).to_be_bytes());
    ctx.update(public_key);
    ctx.update(nonce);
    let mut out = [0u8; 64];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Evidence from a trusted core, as it travels (JSON, bytes as hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Evidence {
    /// The simulated TEE of dev mode: a statement signed with a local key. Insecure.
    Dev {
        /// The statement (JSON, see [`dev::Statement`]).
        statement: String,
        /// Ed25519 signature over `dev::STATEMENT_DOMAIN ‖ statement`, hex.
        signature: String,
        /// The dev TEE's public key, hex.
        signer: String,
    },
    /// An SGX or TDX quote with its collateral (dcap-qvl's `QuoteCollateralV3` JSON).
    Dcap {
        /// The quote, hex.
        quote: String,
        /// The collateral.
        collateral: serde_json::Value,
    },
    /// An SEV-SNP attestation report with the chip's VCEK certificate.
    SevSnp {
        /// The processor family whose AMD root signs the chain: `milan`, `genoa` or `turin`.
        product: String,
        /// The report, hex.
        report: String,
        /// The VCEK certificate, DER, hex.
        vcek: String,
    },
}

/// The kind of trusted execution environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeKind {
    /// The simulated dev TEE (no protection).
    Dev,
    /// Intel SGX enclave.
    Sgx,
    /// Intel TDX trust domain.
    Tdx,
    /// AMD SEV-SNP guest.
    SevSnp,
}

/// What verified evidence says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// The environment.
    pub kind: TeeKind,
    /// The primary measurement: MRENCLAVE (SGX: the enclave's code), MRTD (TDX: the TD's
    /// initial firmware only; the kernel and the software above it are in [`TdxClaims::rtmr`]),
    /// the SNP launch measurement, or the dev core's executable hash.
    pub measurement: Vec<u8>,
    /// The signer of the code (MRSIGNER under SGX), if the platform reports one.
    pub signer: Option<Vec<u8>>,
    /// The security version of the code (ISVSVN under SGX, the guest SVN under SEV-SNP).
    pub svn: u32,
    /// The product id under SGX (ISVPRODID).
    pub product_id: Option<u16>,
    /// TDX's other measurement registers.
    pub tdx: Option<TdxClaims>,
    /// SEV-SNP specifics.
    pub snp: Option<SnpClaims>,
    /// The platform's TCB status as its verifier states it (`UpToDate`, `OutOfDate`, …), or
    /// the reported TCB under SEV-SNP.
    pub tcb_status: String,
    /// Security advisories that apply to the platform's TCB.
    pub advisories: Vec<String>,
    /// DCAP: the lower of the TCB info's and the QE identity's TCB evaluation data numbers
    /// (how recent Intel's TCB assessment in the collateral is).
    pub tcb_eval_data_number: Option<u32>,
    /// Debug mode (its memory is readable by the host).
    pub debug: bool,
    /// The 64 bytes of report data.
    pub report_data: Vec<u8>,
    /// True for evidence that protects nothing (the dev TEE). Always shown to users.
    pub insecure: bool,
}

/// The measurement registers of a TDX quote besides MRTD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TdxClaims {
    /// RTMR0–3: firmware configuration, the OS loader and kernel, the kernel command line and
    /// initrd, and whatever the TD extends at run time.
    pub rtmr: [Vec<u8>; 4],
    /// MRCONFIGID, set by the host at launch.
    pub mr_config_id: Vec<u8>,
    /// MROWNER.
    pub mr_owner: Vec<u8>,
    /// MROWNERCONFIG.
    pub mr_owner_config: Vec<u8>,
}

/// What an SEV-SNP report says besides its measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnpClaims {
    /// The reported TCB (bootloader, TEE, SNP, microcode), equal to the VCEK's.
    pub tcb: [u8; 4],
    /// The VM privilege level that asked for the report (0 is the guest's most privileged).
    pub vmpl: u32,
    /// Whether the guest policy lets a migration agent export the guest's memory.
    pub migrate_ma: bool,
}

/// Why evidence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    /// The evidence does not parse.
    #[error("ATT-001 malformed evidence: {0}")]
    Malformed(String),
    /// The platform's signatures, certificates or collateral do not verify at this time.
    #[error("ATT-002 the evidence does not verify: {0}")]
    Platform(String),
    /// The evidence verifies but the policy refuses what it says.
    #[error("ATT-003 refused by the attestation policy: {0}")]
    Policy(String),
    /// The policy file itself is unreadable or invalid.
    #[error("ATT-005 invalid attestation policy: {0}")]
    InvalidPolicy(String),
    /// The report data is not the binding of the expected key and nonce (another key, or a
    /// replayed nonce).
    #[error(
        "ATT-004 the evidence is not bound to the expected key and nonce (another key, or replayed evidence)"
    )]
    Binding,
}

/// Verifies evidence against a policy and the report data the verifier expects (usually
/// [`binding`] of the announced key and the nonce it sent), at time `now_secs` (Unix seconds).
pub fn verify(
    evidence: &Evidence,
    policy: &Policy,
    expected_report_data: &[u8; 64],
    now_secs: u64,
) -> Result<Claims, AttestError> {
    let claims = verify_platform(evidence, now_secs)?;
    policy.check(&claims)?;
    if claims.report_data.as_slice() != expected_report_data.as_slice() {
        return Err(AttestError::Binding);
    }
    Ok(claims)
}

/// Checks the platform's signatures only and returns the claims (step 1 of [`verify`]).
pub fn verify_platform(evidence: &Evidence, now_secs: u64) -> Result<Claims, AttestError> {
    match evidence {
        Evidence::Dev {
            statement,
            signature,
            signer,
        } => dev::verify(statement, signature, signer),
        Evidence::Dcap { quote, collateral } => dcap::verify(&unhex(quote)?, collateral, now_secs),
        Evidence::SevSnp {
            product,
            report,
            vcek,
        } => snp::verify(product, &unhex(report)?, &unhex(vcek)?, now_secs),
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, AttestError> {
    hex::decode(s).map_err(|e| AttestError::Malformed(format!("hex: {e}")))
}

#[cfg(test)]
mod tests;
