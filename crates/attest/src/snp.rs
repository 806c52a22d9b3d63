//! SEV-SNP attestation reports, verified by the `sev` crate: AMD's root (ARK) and signing key
//! (ASK) for the processor family, built into `sev`, certify the chip's VCEK, which signs the
//! report. Checked here, because `sev` does not:
//! - the VCEK's validity period, at the injected time;
//! - the VCEK's TCB extensions (AMD's "Versioned Chip Endorsement Key" specification, OIDs
//!   1.3.6.1.4.1.3704.1.3.1/.2/.3/.8: bootloader, TEE, SNP and microcode SPL) equal the report's
//!   reported TCB, and its hwID extension (1.3.6.1.4.1.3704.1.4) equals the report's chip id:
//!   otherwise a key of an old, vulnerable TCB could sign a report that claims a new one.
//!
//! The ARK and ASK are constants, so their own signatures are checked once per process. AMD's
//! certificate revocation list is not consulted.

use std::sync::OnceLock;

use sev::certs::snp::{Certificate, Verifiable, builtin, ca};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use crate::{AttestError, Claims, TeeKind};

pub(crate) fn verify(
    product: &str,
    report: &[u8],
    vcek_der: &[u8],
    now_secs: u64,
) -> Result<Claims, AttestError> {
    let ca = verified_ca(product)?;
    let vek = Certificate::from_der(vcek_der)
        .map_err(|e| AttestError::Malformed(format!("VCEK: {e}")))?;
    check_validity(vcek_der, now_secs)?;
    let report = AttestationReport::from_bytes(report)
        .map_err(|e| AttestError::Malformed(format!("report: {e}")))?;
    (&ca.ask, &vek)
        .verify()
        .map_err(|e| AttestError::Platform(format!("the ASK does not sign the VCEK: {e}")))?;
    (&vek, &report)
        .verify()
        .map_err(|e| AttestError::Platform(format!("report signature: {e}")))?;
    let t = &report.reported_tcb;
    let tcb = [t.bootloader, t.tee, t.snp, t.microcode];
    let (cert_tcb, hwid) = vcek_tcb(vcek_der)?;
    if cert_tcb != tcb {
        return Err(AttestError::Platform(format!(
            "the report claims TCB {tcb:?}, its VCEK certifies {cert_tcb:?} (bootloader, TEE, SNP, microcode)"
        )));
    }
    if hwid.as_slice() != report.chip_id.as_slice() {
        return Err(AttestError::Platform(
            "the VCEK was issued for another chip than the report's".into(),
        ));
    }
    Ok(Claims {
        kind: TeeKind::SevSnp,
        measurement: report.measurement.to_vec(),
        signer: None,
        svn: report.guest_svn,
        product_id: None,
        tdx: None,
        snp: Some(crate::SnpClaims {
            tcb,
            vmpl: report.vmpl,
            migrate_ma: report.policy.migrate_ma_allowed(),
        }),
        tcb_status: format!(
            "reported TCB: bootloader {}, TEE {}, SNP {}, microcode {}",
            t.bootloader, t.tee, t.snp, t.microcode
        ),
        advisories: Vec::new(),
        tcb_eval_data_number: None,
        debug: report.policy.debug_allowed(),
        report_data: report.report_data.to_vec(),
        insecure: false,
    })
}

/// Reads a minimal DER TLV (short or one-byte long length) with the expected tag.
fn der_value(bytes: &[u8], tag: u8) -> Option<&[u8]> {
    let (&t, rest) = bytes.split_first()?;
    let (&l, rest) = rest.split_first()?;
    let (len, rest) = match l {
        0..=0x7f => (usize::from(l), rest),
        0x81 => {
            let (&l2, rest) = rest.split_first()?;
            (usize::from(l2), rest)
        }
        _ => return None,
    };
    (t == tag && rest.len() == len).then_some(rest)
}

/// The VCEK's TCB extensions (bootloader, TEE, SNP, microcode) and its hwID.
pub(crate) fn vcek_tcb(der: &[u8]) -> Result<([u8; 4], Vec<u8>), AttestError> {
    use x509_parser::prelude::FromDer;
    let bad = |m: &str| AttestError::Malformed(format!("VCEK: {m}"));
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| bad(&e.to_string()))?;
    let mut tcb = [None; 4];
    let mut hwid = None;
    for ext in cert.extensions() {
        let slot = match ext.oid.to_id_string().as_str() {
            "1.3.6.1.4.1.3704.1.3.1" => 0,
            "1.3.6.1.4.1.3704.1.3.2" => 1,
            "1.3.6.1.4.1.3704.1.3.3" => 2,
            "1.3.6.1.4.1.3704.1.3.8" => 3,
            "1.3.6.1.4.1.3704.1.4" => {
                // The hwID's extnValue holds the 64 raw bytes of the chip id (some issuers
                // wrap them in an OCTET STRING).
                let raw = der_value(ext.value, 0x04).unwrap_or(ext.value);
                if raw.len() != 64 {
                    return Err(bad("hwID is not 64 bytes"));
                }
                hwid = Some(raw.to_vec());
                continue;
            }
            _ => continue,
        };
        // An SPL is a DER INTEGER 0..=255 (a leading zero byte when the top bit is set).
        let v = der_value(ext.value, 0x02).ok_or_else(|| bad("TCB extension is not an INTEGER"))?;
        let v = match v {
            [b] if *b < 0x80 => *b,
            [0, b] if *b >= 0x80 => *b,
            _ => return Err(bad("TCB extension out of range")),
        };
        tcb[slot] = Some(v);
    }
    let tcb = [tcb[0], tcb[1], tcb[2], tcb[3]];
    match (tcb, hwid) {
        ([Some(a), Some(b), Some(c), Some(d)], Some(h)) => Ok(([a, b, c, d], h)),
        _ => Err(bad("missing TCB or hwID extensions")),
    }
}

/// AMD's root (ARK, self-signed) and signing key (ASK, signed by the ARK) for a product, built
/// into `sev`; verified once per process, since they never change.
fn verified_ca(product: &str) -> Result<&'static ca::Chain, AttestError> {
    type Slot = OnceLock<Result<ca::Chain, String>>;
    static MILAN: Slot = OnceLock::new();
    static GENOA: Slot = OnceLock::new();
    static TURIN: Slot = OnceLock::new();
    let (slot, load): (&Slot, fn() -> std::io::Result<ca::Chain>) = match product {
        "milan" => (&MILAN, || {
            Ok(ca::Chain {
                ark: builtin::milan::ark()?,
                ask: builtin::milan::ask()?,
            })
        }),
        "genoa" => (&GENOA, || {
            Ok(ca::Chain {
                ark: builtin::genoa::ark()?,
                ask: builtin::genoa::ask()?,
            })
        }),
        "turin" => (&TURIN, || {
            Ok(ca::Chain {
                ark: builtin::turin::ark()?,
                ask: builtin::turin::ask()?,
            })
        }),
        other => {
            return Err(AttestError::Malformed(format!(
                "unknown SEV-SNP product `{other}` (milan, genoa or turin)"
            )));
        }
    };
    slot.get_or_init(|| {
        let chain = load().map_err(|e| e.to_string())?;
        (&chain).verify().map_err(|e| e.to_string())?;
        Ok(chain)
    })
    .as_ref()
    .map_err(|e| AttestError::Platform(format!("AMD's {product} root chain: {e}")))
}

/// The VCEK must be valid at `now_secs`.
fn check_validity(der: &[u8], now_secs: u64) -> Result<(), AttestError> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| AttestError::Malformed(format!("VCEK: {e}")))?;
    let v = cert.validity();
    let now = now_secs as i64;
    if now < v.not_before.timestamp() || now > v.not_after.timestamp() {
        return Err(AttestError::Platform(format!(
            "the VCEK is valid from {} to {}, not at the given time",
            v.not_before, v.not_after
        )));
    }
    Ok(())
}
