//! SGX and TDX quotes (Intel DCAP), verified by `dcap-qvl` against Intel's production root CA:
//! the PCK certificate chain and CRLs, the QE report and identity, the TCB info and the quote's
//! signature, all at the injected time. dcap-qvl judges the TCB status only to refuse `Revoked`
//! platforms; the other statuses are the policy's to accept. Debug enclaves and untrusted TDs
//! (any TUD attribute bit: debug, or the profiling bits) are let through dcap-qvl and marked
//! `debug`, so that the policy refuses them with its own message.

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::quote::Report;
use dcap_qvl::verify::QuoteVerifier;

use crate::{AttestError, Claims, TeeKind};

/// SGX `ATTRIBUTES.DEBUG` is bit 1 of the flags.
pub(crate) fn sgx_debug(attributes: &[u8; 16]) -> bool {
    attributes[0] & 0x02 != 0
}

/// TDX `TDATTRIBUTES`: byte 0 is the TUD group (bit 0 DEBUG, bits 4–6 profiling and other
/// host-visible features); any bit set there makes the TD untrusted.
pub(crate) fn td_untrusted(td_attributes: &[u8; 8]) -> bool {
    td_attributes[0] != 0
}

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
    let mut claims = match &verified.report {
        Report::SgxEnclave(r) => Claims {
            kind: TeeKind::Sgx,
            measurement: r.mr_enclave.to_vec(),
            signer: Some(r.mr_signer.to_vec()),
            svn: u32::from(r.isv_svn),
            product_id: Some(r.isv_prod_id),
            tdx: None,
            snp: None,
            tcb_status: String::new(),
            advisories: Vec::new(),
            tcb_eval_data_number: None,
            debug: sgx_debug(&r.attributes),
            report_data: r.report_data.to_vec(),
            insecure: false,
        },
        Report::TD10(r) => td(r),
        Report::TD15(r) => td(&r.base),
        Report::TD15Ex(r) => td(&r.base.base),
    };
    claims.tcb_status = verified.status.clone();
    claims.advisories = verified.advisory_ids.clone();
    // The collateral verified above (its TCB info and QE identity are signed by Intel), so its
    // evaluation data numbers can be read from it.
    let number = |json: &str| -> Result<u32, AttestError> {
        serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v["tcbEvaluationDataNumber"].as_u64())
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                AttestError::Malformed("collateral without tcbEvaluationDataNumber".into())
            })
    };
    claims.tcb_eval_data_number =
        Some(number(&collateral.tcb_info)?.min(number(&collateral.qe_identity)?));
    Ok(claims)
}

fn td(r: &dcap_qvl::quote::TDReport10) -> Claims {
    Claims {
        kind: TeeKind::Tdx,
        measurement: r.mr_td.to_vec(),
        signer: None,
        svn: 0,
        product_id: None,
        tdx: Some(crate::TdxClaims {
            rtmr: [
                r.rt_mr0.to_vec(),
                r.rt_mr1.to_vec(),
                r.rt_mr2.to_vec(),
                r.rt_mr3.to_vec(),
            ],
            mr_config_id: r.mr_config_id.to_vec(),
            mr_owner: r.mr_owner.to_vec(),
            mr_owner_config: r.mr_owner_config.to_vec(),
        }),
        snp: None,
        tcb_status: String::new(),
        advisories: Vec::new(),
        tcb_eval_data_number: None,
        debug: td_untrusted(&r.td_attributes),
        report_data: r.report_data.to_vec(),
        insecure: false,
    }
}
