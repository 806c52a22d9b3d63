//! SGX and TDX quotes (Intel DCAP), verified by `dcap-qvl` against Intel's production root CA:
//! the PCK certificate chain and CRLs, the QE report and identity, the TCB info and the quote's
//! signature, all at the injected time. Debug enclaves are let through here and judged by the
//! policy, so that "debug" is a policy decision with its own message.

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Report;
use dcap_qvl::verify::QuoteVerifier;

use crate::{AttestError, Claims, TeeKind};

/// SGX `ATTRIBUTES.DEBUG` (bit 1 of the flags).
const SGX_DEBUG: u8 = 0x02;
/// TDX `TDATTRIBUTES.DEBUG` (bit 0).
const TDX_DEBUG: u8 = 0x01;

pub(crate) fn verify(
    quote: &[u8],
    collateral: &serde_json::Value,
    now_secs: u64,
) -> Result<Claims, AttestError> {
    let collateral: QuoteCollateralV3 = serde_json::from_value(collateral.clone())
        .map_err(|e| AttestError::Malformed(format!("collateral: {e}")))?;
    let verified = QuoteVerifier::new_prod()
        .allow_debug(true)
        .verify(quote, &collateral, now_secs)
        .map_err(|e| AttestError::Platform(format!("{e:#}")))?;
    let (kind, measurement, signer, svn, debug, report_data) = match &verified.report {
        Report::SgxEnclave(r) => (
            TeeKind::Sgx,
            r.mr_enclave.to_vec(),
            Some(r.mr_signer.to_vec()),
            u32::from(r.isv_svn),
            r.attributes[0] & SGX_DEBUG != 0,
            r.report_data.to_vec(),
        ),
        Report::TD10(r) => td(r),
        Report::TD15(r) => td(&r.base),
        Report::TD15Ex(r) => td(&r.base.base),
    };
    Ok(Claims {
        kind,
        measurement,
        signer,
        svn,
        tcb_status: verified.status.clone(),
        advisories: verified.advisory_ids.clone(),
        snp_tcb: None,
        debug,
        report_data,
        insecure: false,
    })
}

type Fields = (TeeKind, Vec<u8>, Option<Vec<u8>>, u32, bool, Vec<u8>);

fn td(r: &dcap_qvl::quote::TDReport10) -> Fields {
    (
        TeeKind::Tdx,
        r.mr_td.to_vec(),
        None,
        0,
        r.td_attributes[0] & TDX_DEBUG != 0,
        r.report_data.to_vec(),
    )
}
