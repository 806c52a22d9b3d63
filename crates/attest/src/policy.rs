//! The attestation policy: which evidence a verifier accepts. One TOML file, one optional
//! section per kind of environment; evidence of a kind without a section is refused.
//!
//! ```toml
//! [sgx]
//! mr_enclave = ["<hex>"]        # accepted code measurements (and/or mr_signer + isv_prod_id)
//! mr_signer = ["<hex>"]
//! isv_prod_id = 1               # required with mr_signer
//! min_isv_svn = 0               # only with mr_signer: the signer sets the SVN
//! tcb_statuses = ["UpToDate"]   # TCB statuses accepted, as Intel's verifier names them
//! min_tcb_eval_data_number = 0  # refuse collateral older than this TCB recovery
//! allow_debug = false
//!
//! [tdx]
//! mr_td = ["<hex>"]             # the TD firmware
//! rtmr = [["<hex>"], ["<hex>"], ["<hex>"], ["<hex>"]]   # accepted RTMR0..3: kernel and above
//! mr_config_id = ["<hex>"]      # optional pins
//! mr_owner = ["<hex>"]
//! mr_owner_config = ["<hex>"]
//! tcb_statuses = ["UpToDate"]
//! allow_debug = false           # any TUD attribute bit (debug, profiling) counts as debug
//!
//! [sev_snp]
//! measurements = ["<hex>"]
//! min_tcb = { bootloader = 0, tee = 0, snp = 0, microcode = 0 }   # checked against the VCEK
//! min_svn = 0
//! max_vmpl = 0                  # the VMPL that asked for the report
//! allow_migration_agent = false
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
    /// The product id required with `mr_signer` (one signer may sign several products).
    pub isv_prod_id: Option<u16>,
    /// Minimum ISVSVN (only with `mr_signer`: whoever signs an enclave chooses its SVN).
    #[serde(default)]
    pub min_isv_svn: u32,
    /// Accepted TCB statuses.
    #[serde(default = "up_to_date")]
    pub tcb_statuses: Vec<String>,
    /// Minimum TCB evaluation data number of the collateral: the prover supplies the
    /// collateral, so without this it may present older, unexpired collateral from before a
    /// TCB recovery, under which its platform still looks up to date.
    #[serde(default)]
    pub min_tcb_eval_data_number: u32,
    /// Whether debug enclaves are accepted.
    #[serde(default)]
    pub allow_debug: bool,
}

/// `[tdx]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxPolicy {
    /// Accepted MRTD values (hex): the TD's firmware.
    pub mr_td: Vec<String>,
    /// Accepted values of RTMR0, RTMR1, RTMR2 and RTMR3 (hex), one list per register: the
    /// firmware configuration, the kernel, its command line and initrd, and run-time
    /// extensions. All four are required: MRTD alone says nothing about the code above the
    /// firmware.
    pub rtmr: [Vec<String>; 4],
    /// Accepted MRCONFIGID values; empty accepts any.
    #[serde(default)]
    pub mr_config_id: Vec<String>,
    /// Accepted MROWNER values; empty accepts any.
    #[serde(default)]
    pub mr_owner: Vec<String>,
    /// Accepted MROWNERCONFIG values; empty accepts any.
    #[serde(default)]
    pub mr_owner_config: Vec<String>,
    /// Accepted TCB statuses.
    #[serde(default = "up_to_date")]
    pub tcb_statuses: Vec<String>,
    /// Minimum TCB evaluation data number of the collateral: the prover supplies the
    /// collateral, so without this it may present older, unexpired collateral from before a
    /// TCB recovery, under which its platform still looks up to date.
    #[serde(default)]
    pub min_tcb_eval_data_number: u32,
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
    /// Minimum guest SVN (set by the host's ID block: meaningful only with a pinned ID key,
    /// which this policy does not support yet).
    #[serde(default)]
    pub min_svn: u32,
    /// The highest VM privilege level accepted as the report's requester (0 by default: a
    /// less privileged level under an SVSM could otherwise obtain reports with its own data).
    #[serde(default)]
    pub max_vmpl: u32,
    /// Whether guests that a migration agent may export are accepted.
    #[serde(default)]
    pub allow_migration_agent: bool,
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

fn invalid(m: impl Into<String>) -> AttestError {
    AttestError::InvalidPolicy(m.into())
}

/// Every pinned value must be hex of the field's width.
fn check_hex(list: &[String], bytes: usize, field: &str) -> Result<(), AttestError> {
    for v in list {
        if v.len() != 2 * bytes || hex::decode(v).is_err() {
            return Err(invalid(format!(
                "{field}: `{v}` is not {bytes} bytes of hex"
            )));
        }
    }
    Ok(())
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

fn fresh_enough(min: u32, claims: &Claims) -> Result<(), AttestError> {
    let n = claims.tcb_eval_data_number.unwrap_or(0);
    if n < min {
        return Err(refuse(format!(
            "the collateral's TCB evaluation data number {n} is below the minimum {min}"
        )));
    }
    Ok(())
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
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))
    }

    /// Parses and validates a policy.
    pub fn parse(text: &str) -> Result<Self, AttestError> {
        let p: Policy = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(s) = &p.sgx {
            if s.mr_enclave.is_empty() && s.mr_signer.is_empty() {
                return Err(invalid("[sgx] must pin mr_enclave or mr_signer"));
            }
            if !s.mr_signer.is_empty() && s.isv_prod_id.is_none() {
                return Err(invalid("[sgx] mr_signer needs isv_prod_id"));
            }
            if s.min_isv_svn > 0 && s.mr_signer.is_empty() {
                return Err(invalid(
                    "[sgx] min_isv_svn needs mr_signer: anyone can re-sign an enclave with any SVN",
                ));
            }
            check_hex(&s.mr_enclave, 32, "sgx.mr_enclave")?;
            check_hex(&s.mr_signer, 32, "sgx.mr_signer")?;
        }
        if let Some(t) = &p.tdx {
            check_hex(&t.mr_td, 48, "tdx.mr_td")?;
            for (i, r) in t.rtmr.iter().enumerate() {
                if r.is_empty() {
                    return Err(invalid(format!(
                        "[tdx] rtmr[{i}] must pin at least one value"
                    )));
                }
                check_hex(r, 48, &format!("tdx.rtmr[{i}]"))?;
            }
            check_hex(&t.mr_config_id, 48, "tdx.mr_config_id")?;
            check_hex(&t.mr_owner, 48, "tdx.mr_owner")?;
            check_hex(&t.mr_owner_config, 48, "tdx.mr_owner_config")?;
        }
        if let Some(n) = &p.sev_snp {
            check_hex(&n.measurements, 48, "sev_snp.measurements")?;
        }
        if let Some(d) = &p.dev {
            if d.allow && d.signers.is_empty() {
                return Err(invalid(
                    "[dev] allow = true needs the dev TEE's key in signers",
                ));
            }
            check_hex(&d.signers, 32, "dev.signers")?;
            check_hex(&d.measurements, 32, "dev.measurements")?;
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
                    if p.isv_prod_id != c.product_id {
                        return Err(refuse(format!(
                            "ISVPRODID {:?} is not the accepted {:?}",
                            c.product_id, p.isv_prod_id
                        )));
                    }
                }
                if c.svn < p.min_isv_svn {
                    return Err(refuse(format!(
                        "ISVSVN {} is below the minimum {}",
                        c.svn, p.min_isv_svn
                    )));
                }
                status_ok(&p.tcb_statuses, c)?;
                fresh_enough(p.min_tcb_eval_data_number, c)?;
                debug_ok(p.allow_debug, c)
            }
            TeeKind::Tdx => {
                let p = self.tdx.as_ref().ok_or_else(|| missing("TDX"))?;
                pinned(&p.mr_td, &c.measurement, "MRTD")?;
                let t = c
                    .tdx
                    .as_ref()
                    .ok_or_else(|| refuse("TDX evidence without its RTMRs"))?;
                for (i, (accepted, value)) in p.rtmr.iter().zip(&t.rtmr).enumerate() {
                    pinned(accepted, value, &format!("RTMR{i}"))?;
                }
                for (accepted, value, what) in [
                    (&p.mr_config_id, &t.mr_config_id, "MRCONFIGID"),
                    (&p.mr_owner, &t.mr_owner, "MROWNER"),
                    (&p.mr_owner_config, &t.mr_owner_config, "MROWNERCONFIG"),
                ] {
                    if !accepted.is_empty() {
                        pinned(accepted, value, what)?;
                    }
                }
                status_ok(&p.tcb_statuses, c)?;
                fresh_enough(p.min_tcb_eval_data_number, c)?;
                debug_ok(p.allow_debug, c)
            }
            TeeKind::SevSnp => {
                let p = self.sev_snp.as_ref().ok_or_else(|| missing("SEV-SNP"))?;
                pinned(&p.measurements, &c.measurement, "measurement")?;
                let snp = c
                    .snp
                    .as_ref()
                    .ok_or_else(|| refuse("SEV-SNP evidence without its TCB"))?;
                if snp.vmpl > p.max_vmpl {
                    return Err(refuse(format!(
                        "the report was requested at VMPL {}, above the accepted {}",
                        snp.vmpl, p.max_vmpl
                    )));
                }
                if snp.migrate_ma && !p.allow_migration_agent {
                    return Err(refuse(
                        "the guest may be exported by a migration agent, which this policy does not accept",
                    ));
                }
                let tcb = snp.tcb;
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
