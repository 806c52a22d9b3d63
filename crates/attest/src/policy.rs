//! The attestation policy: which evidence a verifier accepts. One TOML file, one optional
//! section per kind of environment; evidence of a kind without a section is refused.
//!
//! ```toml
//! [sgx]
//! mr_enclave = ["<hex>"]        # accepted code measurements (and/or mr_signer)
//! mr_signer = ["<hex>"]
//! min_isv_svn = 0
//! tcb_statuses = ["UpToDate"]   # TCB statuses accepted, as Intel's verifier names them
//! allow_debug = false
//!
//! [tdx]
//! mr_td = ["<hex>"]
//! tcb_statuses = ["UpToDate"]
//! allow_debug = false
//!
//! [sev_snp]
//! measurements = ["<hex>"]
//! min_tcb = { bootloader = 0, tee = 0, snp = 0, microcode = 0 }
//! min_svn = 0
//! allow_debug = false
//!
//! [dev]                         # the simulated TEE: insecure, for development only
//! allow = true
//! signers = ["<hex>"]
//! measurements = ["<hex>"]      # empty: any code the pinned dev TEE vouches for
//! ```

use serde::Deserialize;

use crate::{AttestError, Claims, TeeKind};

/// An attestation policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// SGX enclaves.
    pub sgx: Option<SgxPolicy>,
    /// TDX trust domains.
    pub tdx: Option<TdxPolicy>,
    /// SEV-SNP guests.
    pub sev_snp: Option<SnpPolicy>,
    /// The insecure dev TEE.
    pub dev: Option<DevPolicy>,
}

/// `[sgx]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgxPolicy {
    /// Accepted MRENCLAVE values (hex).
    #[serde(default)]
    pub mr_enclave: Vec<String>,
    /// Accepted MRSIGNER values (hex).
    #[serde(default)]
    pub mr_signer: Vec<String>,
    /// Minimum ISVSVN.
    #[serde(default)]
    pub min_isv_svn: u32,
    /// Accepted TCB statuses.
    #[serde(default = "up_to_date")]
    pub tcb_statuses: Vec<String>,
    /// Whether debug enclaves are accepted.
    #[serde(default)]
    pub allow_debug: bool,
}

/// `[tdx]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// Accepted MRTD values (hex).
    pub mr_td: Vec<String>,
    /// Accepted TCB statuses.
    #[serde(default = "up_to_date")]
    pub tcb_statuses: Vec<String>,
    /// Whether debug TDs are accepted.
    #[serde(default)]
    pub allow_debug: bool,
}

/// `[sev_snp]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// Accepted launch measurements (hex).
    pub measurements: Vec<String>,
    /// Minimum reported TCB.
    #[serde(default)]
    pub min_tcb: SnpTcb,
    /// Minimum guest SVN.
    #[serde(default)]
    pub min_svn: u32,
    /// Whether guests whose policy allows debugging are accepted.
    #[serde(default)]
    pub allow_debug: bool,
}

/// An SEV-SNP TCB version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpTcb {
    /// PSP bootloader SVN.
    #[serde(default)]
    pub bootloader: u8,
    /// PSP OS SVN.
    #[serde(default)]
    pub tee: u8,
    /// SNP firmware SVN.
    #[serde(default)]
    pub snp: u8,
    /// Microcode SVN.
    #[serde(default)]
    pub microcode: u8,
}

/// `[dev]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevPolicy {
    /// Must be true for dev evidence to be accepted at all.
    #[serde(default)]
    pub allow: bool,
    /// Accepted dev TEE public keys (hex).
    #[serde(default)]
    pub signers: Vec<String>,
    /// Accepted measurements (hex); empty accepts any.
    #[serde(default)]
    pub measurements: Vec<String>,
}

fn up_to_date() -> Vec<String> {
    vec!["UpToDate".into()]
}

fn refuse(m: impl Into<String>) -> AttestError {
    AttestError::Policy(m.into())
}

fn pinned(list: &[String], value: &[u8], what: &str) -> Result<(), AttestError> {
    let v = hex::encode(value);
    if list.iter().any(|x| x.eq_ignore_ascii_case(&v)) {
        Ok(())
    } else {
        Err(refuse(format!("{what} {v} is not among the accepted ones")))
    }
}

fn status_ok(accepted: &[String], claims: &Claims) -> Result<(), AttestError> {
    if accepted.iter().any(|s| s == &claims.tcb_status) {
        Ok(())
    } else {
        Err(refuse(format!(
            "TCB status `{}` is not accepted (accepted: {}); advisories: {}",
            claims.tcb_status,
            accepted.join(", "),
            claims.advisories.join(", ")
        )))
    }
}

fn debug_ok(allow: bool, claims: &Claims) -> Result<(), AttestError> {
    if claims.debug && !allow {
        return Err(refuse(
            "a debug environment (the host can read its memory) is not accepted",
        ));
    }
    Ok(())
}

impl Policy {
    /// Reads a policy file.
    pub fn load(path: &std::path::Path) -> Result<Self, AttestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| refuse(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| refuse(format!("{}: {e}", path.display())))
    }

    /// Parses a policy.
    pub fn parse(text: &str) -> Result<Self, AttestError> {
        let p: Policy = toml::from_str(text).map_err(|e| refuse(e.to_string()))?;
        if let Some(s) = &p.sgx
            && s.mr_enclave.is_empty()
            && s.mr_signer.is_empty()
        {
            return Err(refuse("[sgx] must pin mr_enclave or mr_signer"));
        }
        Ok(p)
    }

    /// Whether the policy accepts what verified evidence claims.
    pub fn check(&self, c: &Claims) -> Result<(), AttestError> {
        let missing = |kind: &str| refuse(format!("this policy accepts no {kind} evidence"));
        match c.kind {
            TeeKind::Sgx => {
                let p = self.sgx.as_ref().ok_or_else(|| missing("SGX"))?;
                if !p.mr_enclave.is_empty() {
                    pinned(&p.mr_enclave, &c.measurement, "MRENCLAVE")?;
                }
                if !p.mr_signer.is_empty() {
                    pinned(&p.mr_signer, c.signer.as_deref().unwrap_or(&[]), "MRSIGNER")?;
                }
                if c.svn < p.min_isv_svn {
                    return Err(refuse(format!(
                        "ISVSVN {} is below the minimum {}",
                        c.svn, p.min_isv_svn
                    )));
                }
                status_ok(&p.tcb_statuses, c)?;
                debug_ok(p.allow_debug, c)
            }
            TeeKind::Tdx => {
                let p = self.tdx.as_ref().ok_or_else(|| missing("TDX"))?;
                pinned(&p.mr_td, &c.measurement, "MRTD")?;
                status_ok(&p.tcb_statuses, c)?;
                debug_ok(p.allow_debug, c)
            }
            TeeKind::SevSnp => {
                let p = self.sev_snp.as_ref().ok_or_else(|| missing("SEV-SNP"))?;
                pinned(&p.measurements, &c.measurement, "measurement")?;
                let tcb = c.snp_tcb.unwrap_or_default();
                let min = [
                    p.min_tcb.bootloader,
                    p.min_tcb.tee,
                    p.min_tcb.snp,
                    p.min_tcb.microcode,
                ];
                if tcb.iter().zip(&min).any(|(have, need)| have < need) {
                    return Err(refuse(format!(
                        "{} is below the minimum {min:?} (bootloader, TEE, SNP, microcode)",
                        c.tcb_status
                    )));
                }
                if c.svn < p.min_svn {
                    return Err(refuse(format!(
                        "guest SVN {} is below the minimum {}",
                        c.svn, p.min_svn
                    )));
                }
                debug_ok(p.allow_debug, c)
            }
            TeeKind::Dev => {
                let p = self.dev.as_ref().filter(|p| p.allow).ok_or_else(|| {
                    refuse("dev TEE evidence is insecure and this policy does not allow it")
                })?;
                pinned(
                    &p.signers,
                    c.signer.as_deref().unwrap_or(&[]),
                    "dev TEE key",
                )?;
                if !p.measurements.is_empty() {
                    pinned(&p.measurements, &c.measurement, "measurement")?;
                }
                Ok(())
            }
        }
    }
}
