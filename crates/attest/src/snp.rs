//! SEV-SNP attestation reports, verified by the `sev` crate: AMD's root (ARK) and signing key
//! (ASK) for the processor family, built into `sev`, certify the chip's VCEK, which signs the
//! report. The VCEK's validity period is checked against the injected time here (`sev` does not
//! look at time). The ARK and ASK are constants, so their own signatures are checked once per
//! process.

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
    Ok(Claims {
        kind: TeeKind::SevSnp,
        measurement: report.measurement.to_vec(),
        signer: None,
        svn: report.guest_svn,
        tcb_status: format!(
            "reported TCB: bootloader {}, TEE {}, SNP {}, microcode {}",
            t.bootloader, t.tee, t.snp, t.microcode
        ),
        advisories: Vec::new(),
        snp_tcb: Some([t.bootloader, t.tee, t.snp, t.microcode]),
        debug: report.policy.debug_allowed(),
        report_data: report.report_data.to_vec(),
        insecure: false,
    })
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
