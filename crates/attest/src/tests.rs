//! Evidence fixtures are the published samples of dcap-qvl 0.7.1 (`sample/`) and sev 8.0.0
//! (`tests/certs_data/`); see `testdata/SOURCE.md`. The expected field values below were read
//! from the raw bytes at the offsets of Intel's quote formats and AMD's report format (SEV-SNP
//! ABI, table "ATTESTATION_REPORT structure"), not from the libraries under test.

use super::*;

/// 2025-07-01T00:00:00Z: inside both DCAP samples' collateral windows (issued 2025-06-19,
/// next update 2025-07-19) and the VCEK's validity (2023-04-03 to 2030-04-03).
const IN_WINDOW: u64 = 1_751_328_000;
/// 2026-11-22: the DCAP samples' collateral has expired.
const EXPIRED: u64 = 1_795_305_600;
/// 2031-01-01: after the VCEK's validity.
const AFTER_VCEK: u64 = 1_924_992_000;

const SGX_QUOTE: &[u8] = include_bytes!("../testdata/sgx_quote");
const SGX_COLLATERAL: &str = include_str!("../testdata/sgx_quote_collateral.json");
const TDX_QUOTE: &[u8] = include_bytes!("../testdata/tdx_quote");
const TDX_COLLATERAL: &str = include_str!("../testdata/tdx_quote_collateral.json");
const SNP_REPORT: &str = include_str!("../testdata/report_milan.hex");
const SNP_VCEK: &[u8] = include_bytes!("../testdata/vcek_milan.der");

const SGX_MRENCLAVE: &str = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
const SGX_MRSIGNER: &str = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6";
const TDX_MRTD: &str = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
const TDX_RTMR: [&str; 4] = [
    "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0",
    "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378",
    "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
];
const SNP_MEASUREMENT: &str = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";

fn dcap(quote: &[u8], collateral: &str) -> Evidence {
    Evidence::Dcap {
        quote: hex::encode(quote),
        collateral: serde_json::from_str(collateral).expect("collateral"),
    }
}

fn snp(report: &[u8], vcek: &[u8]) -> Evidence {
    Evidence::SevSnp {
        product: "milan".into(),
        report: hex::encode(report),
        vcek: hex::encode(vcek),
    }
}

fn snp_report() -> Vec<u8> {
    hex::decode(SNP_REPORT.trim()).expect("hex")
}

fn rd(bytes: &[u8]) -> [u8; 64] {
    bytes.try_into().expect("64 bytes")
}

/// The report data as the samples carry it (their own binding; the samples were not made for
/// Confide, so the positive cases expect exactly these bytes).
fn sgx_rd() -> [u8; 64] {
    rd(&SGX_QUOTE[368..432])
}
fn tdx_rd() -> [u8; 64] {
    rd(&TDX_QUOTE[568..632])
}
fn snp_rd() -> [u8; 64] {
    rd(&snp_report()[0x50..0x90])
}

fn sgx_policy() -> Policy {
    Policy::parse(&format!(
        "[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\nmr_signer = [\"{SGX_MRSIGNER}\"]\nisv_prod_id = 0\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n"
    ))
    .expect("policy")
}

fn tdx_policy_text(mr_td: &str, rtmr3: &str, statuses: &str) -> String {
    format!(
        "[tdx]\nmr_td = [\"{mr_td}\"]\nrtmr = [[\"{}\"], [\"{}\"], [\"{}\"], [\"{rtmr3}\"]]\ntcb_statuses = [{statuses}]\n",
        TDX_RTMR[0], TDX_RTMR[1], TDX_RTMR[2]
    )
}

fn tdx_policy() -> Policy {
    Policy::parse(&tdx_policy_text(TDX_MRTD, TDX_RTMR[3], "\"UpToDate\"")).expect("policy")
}

fn snp_policy() -> Policy {
    Policy::parse(&format!(
        "[sev_snp]\nmeasurements = [\"{SNP_MEASUREMENT}\"]\nmin_tcb = {{ bootloader = 3, snp = 8, microcode = 115 }}\n"
    ))
    .expect("policy")
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at] ^= 0x01;
    b
}

#[test]
fn binding_separates_keys_and_nonces() {
    let a = binding(b"key", &[1; 32]);
    assert_ne!(a, binding(b"key", &[2; 32]));
    assert_ne!(a, binding(b"kez", &[1; 32]));
    // Length-prefixed: moving a byte from the key into the nonce changes the binding.
    assert_ne!(binding(b"ke", &[1; 32]), binding(b"key", &[1; 32]));
    assert_eq!(a, binding(b"key", &[1; 32]));
}

#[test]
fn sgx_sample_verifies_and_its_claims_match_the_raw_quote() {
    let c = verify(
        &dcap(SGX_QUOTE, SGX_COLLATERAL),
        &sgx_policy(),
        &sgx_rd(),
        IN_WINDOW,
    )
    .expect("the sample verifies");
    assert_eq!(c.kind, TeeKind::Sgx);
    assert_eq!(hex::encode(&c.measurement), SGX_MRENCLAVE);
    assert_eq!(
        c.signer.as_deref().map(hex::encode),
        Some(SGX_MRSIGNER.into())
    );
    assert_eq!(c.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(c.advisories, ["INTEL-SA-00289", "INTEL-SA-00615"]);
    assert_eq!(c.tcb_eval_data_number, Some(17));
    assert!(!c.debug && !c.insecure);
    assert!(c.report_data.starts_with(b"Hello, world!"));
}

#[test]
fn sgx_sample_negative_cases() {
    let policy = sgx_policy();
    let ev = dcap(SGX_QUOTE, SGX_COLLATERAL);
    let platform = |r: Result<Claims, AttestError>, what: &str| {
        assert!(
            matches!(
                r,
                Err(AttestError::Platform(_)) | Err(AttestError::Malformed(_))
            ),
            "{what}: {r:?}"
        );
    };
    // A tampered byte of the report body (MRENCLAVE), of the signature, of the header.
    // (432..436 is the signature length, 436..500 the quote's ECDSA signature)
    for at in [112, 440, 10] {
        platform(
            verify(
                &dcap(&flip(SGX_QUOTE, at), SGX_COLLATERAL),
                &policy,
                &sgx_rd(),
                IN_WINDOW,
            ),
            &format!("byte {at}"),
        );
    }
    // A truncated quote.
    platform(
        verify(
            &dcap(&SGX_QUOTE[..SGX_QUOTE.len() - 1], SGX_COLLATERAL),
            &policy,
            &sgx_rd(),
            IN_WINDOW,
        ),
        "truncated",
    );
    platform(
        verify(
            &dcap(&SGX_QUOTE[..400], SGX_COLLATERAL),
            &policy,
            &sgx_rd(),
            IN_WINDOW,
        ),
        "header only",
    );
    // Expired collateral: the same evidence, verified today.
    platform(verify(&ev, &policy, &sgx_rd(), EXPIRED), "expired");
    // Tampered collateral: the TCB info no longer matches its signature.
    let tampered = SGX_COLLATERAL.replacen("\\\"version\\\":3", "\\\"version\\\":4", 1);
    assert_ne!(tampered, SGX_COLLATERAL, "the collateral edit applies");
    platform(
        verify(&dcap(SGX_QUOTE, &tampered), &policy, &sgx_rd(), IN_WINDOW),
        "collateral",
    );
    // A replayed nonce and another key: genuine evidence, wrong binding.
    assert_eq!(
        verify(&ev, &policy, &binding(b"trainer key", &[7; 32]), IN_WINDOW),
        Err(AttestError::Binding)
    );
    let mut other = sgx_rd();
    other[63] ^= 1;
    assert_eq!(
        verify(&ev, &policy, &other, IN_WINDOW),
        Err(AttestError::Binding)
    );
    // Policy rejections of the sample's verified claims.
    let policy_err = |p: &str| {
        let p = Policy::parse(p).expect("policy");
        assert!(
            matches!(
                verify(&ev, &p, &sgx_rd(), IN_WINDOW),
                Err(AttestError::Policy(_))
            ),
            "{p:?}"
        );
    };
    // Another measurement.
    policy_err(&format!(
        "[sgx]\nmr_enclave = [\"{}\"]\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n",
        "00".repeat(32)
    ));
    // Another signer, and another product of the sample's signer.
    policy_err(&format!(
        "[sgx]\nmr_signer = [\"{}\"]\nisv_prod_id = 0\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n",
        "11".repeat(32)
    ));
    policy_err(&format!(
        "[sgx]\nmr_signer = [\"{SGX_MRSIGNER}\"]\nisv_prod_id = 1\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n"
    ));
    // An outdated TCB: the sample is not UpToDate.
    policy_err(&format!("[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\n"));
    // A newer code version required.
    policy_err(&format!(
        "[sgx]\nmr_signer = [\"{SGX_MRSIGNER}\"]\nisv_prod_id = 0\nmin_isv_svn = 1\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n"
    ));
    // Collateral older than the policy's TCB recovery (the sample's evaluation number is 17).
    policy_err(&format!(
        "[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\nmin_tcb_eval_data_number = 18\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n"
    ));
    // A policy for TDX only.
    policy_err(&tdx_policy_text(TDX_MRTD, TDX_RTMR[3], "\"UpToDate\""));
    // Debug mode: the sample is a production enclave, so the verified claims are marked as
    // a debug enclave's would be and judged by the same policy.
    let mut claims = verify_platform(&ev, IN_WINDOW).expect("claims");
    claims.debug = true;
    assert!(matches!(policy.check(&claims), Err(AttestError::Policy(m)) if m.contains("debug")));
    let lenient = Policy::parse(&format!("[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\nallow_debug = true\ntcb_statuses = [\"ConfigurationAndSWHardeningNeeded\"]\n")).expect("policy");
    assert!(lenient.check(&claims).is_ok());
}

#[test]
fn tdx_sample_verifies_and_its_negative_cases_fail() {
    let ev = dcap(TDX_QUOTE, TDX_COLLATERAL);
    let policy = tdx_policy();
    let c = verify(&ev, &policy, &tdx_rd(), IN_WINDOW).expect("the sample verifies");
    assert_eq!(c.kind, TeeKind::Tdx);
    assert_eq!(hex::encode(&c.measurement), TDX_MRTD);
    let rtmr = &c.tdx.as_ref().expect("rtmrs").rtmr;
    assert_eq!(rtmr.clone().map(hex::encode), TDX_RTMR.map(String::from));
    assert_eq!(c.tcb_status, "UpToDate");
    assert_eq!(c.tcb_eval_data_number, Some(17));
    assert!(!c.debug);
    let platform = |r: Result<Claims, AttestError>, what: &str| {
        assert!(
            matches!(
                r,
                Err(AttestError::Platform(_)) | Err(AttestError::Malformed(_))
            ),
            "{what}: {r:?}"
        );
    };
    // A changed byte of RTMR3 (48 + 472), of MRTD, and a quote cut inside its signed body
    // (the sample ends in zero padding after the certification data, which the parser
    // ignores, so cutting only the padding does not change the evidence).
    for (what, bad) in [
        ("rtmr3", flip(TDX_QUOTE, 48 + 472 + 5)),
        ("mrtd", flip(TDX_QUOTE, 200)),
        ("truncated", TDX_QUOTE[..600].to_vec()),
    ] {
        platform(
            verify(&dcap(&bad, TDX_COLLATERAL), &policy, &tdx_rd(), IN_WINDOW),
            what,
        );
    }
    // Expired collateral, and collateral not yet issued (before 2025-06-19).
    platform(verify(&ev, &policy, &tdx_rd(), EXPIRED), "expired");
    platform(
        verify(&ev, &policy, &tdx_rd(), 1_750_000_000),
        "not yet valid",
    );
    // Tampered collateral.
    let tampered = TDX_COLLATERAL.replacen("\\\"version\\\":3", "\\\"version\\\":4", 1);
    assert_ne!(tampered, TDX_COLLATERAL, "the collateral edit applies");
    platform(
        verify(&dcap(TDX_QUOTE, &tampered), &policy, &tdx_rd(), IN_WINDOW),
        "collateral",
    );
    // Replayed nonce, another key.
    assert_eq!(
        verify(&ev, &policy, &binding(b"k", &[0; 32]), IN_WINDOW),
        Err(AttestError::Binding)
    );
    // Policy rejections: another MRTD, another RTMR3, a TCB status the policy does not accept,
    // an SGX-only policy, and an untrusted TD (debug or profiling bits).
    for p in [
        tdx_policy_text(&"22".repeat(48), TDX_RTMR[3], "\"UpToDate\""),
        tdx_policy_text(TDX_MRTD, &"44".repeat(48), "\"UpToDate\""),
        tdx_policy_text(TDX_MRTD, TDX_RTMR[3], "\"OutOfDate\""),
        // (appended to the [tdx] section: collateral older than the policy's TCB recovery)
        tdx_policy_text(TDX_MRTD, TDX_RTMR[3], "\"UpToDate\"") + "min_tcb_eval_data_number = 18\n",
        format!("[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\n"),
    ] {
        let p = Policy::parse(&p).expect("policy");
        assert!(
            matches!(
                verify(&ev, &p, &tdx_rd(), IN_WINDOW),
                Err(AttestError::Policy(_))
            ),
            "{p:?}"
        );
    }
    let mut claims = verify_platform(&ev, IN_WINDOW).expect("claims");
    claims.debug = true;
    assert!(matches!(policy.check(&claims), Err(AttestError::Policy(m)) if m.contains("debug")));
}

#[test]
fn debug_bits_are_read_from_the_right_positions() {
    // SGX ATTRIBUTES: INIT (bit 0), DEBUG (bit 1), MODE64BIT (bit 2). The sample has 0x05.
    let mut attrs = [0u8; 16];
    attrs[0] = 0x05;
    assert!(!dcap::sgx_debug(&attrs));
    attrs[0] = 0x07;
    assert!(dcap::sgx_debug(&attrs));
    // TDX TDATTRIBUTES byte 0 (TUD): DEBUG is bit 0, bits 4-6 are the profiling group; the
    // sample's attributes 00000010... have a bit only in byte 3 (SEPT_VE_DISABLE).
    let mut td = [0x00, 0x00, 0x00, 0x10, 0, 0, 0, 0];
    assert!(!dcap::td_untrusted(&td));
    for bit in [0x01, 0x10, 0x20, 0x40] {
        td[0] = bit;
        assert!(dcap::td_untrusted(&td), "{bit:#x}");
    }
    // SEV-SNP guest policy bit 19 (DEBUG) and bit 18 (MIGRATE_MA): the sample has 0x30000.
    let report = snp_report();
    let claims = verify_platform(&snp(&report, SNP_VCEK), IN_WINDOW).expect("claims");
    assert!(!claims.debug);
    assert!(!claims.snp.as_ref().expect("snp").migrate_ma);
}

#[test]
fn sev_snp_sample_verifies_and_its_claims_match_the_raw_report() {
    let c = verify(
        &snp(&snp_report(), SNP_VCEK),
        &snp_policy(),
        &snp_rd(),
        IN_WINDOW,
    )
    .expect("the sample verifies");
    assert_eq!(c.kind, TeeKind::SevSnp);
    assert_eq!(hex::encode(&c.measurement), SNP_MEASUREMENT);
    assert_eq!(c.snp.as_ref().map(|s| s.tcb), Some([3, 0, 8, 0x73]));
    // The VCEK's own TCB extensions and hwID, which the report must match.
    let (tcb, hwid) = snp::vcek_tcb(SNP_VCEK).expect("extensions");
    assert_eq!(tcb, [3, 0, 8, 0x73]);
    assert_eq!(hwid, snp_report()[0x1a0..0x1e0]);
    assert!(!c.debug && !c.insecure);
}

#[test]
fn sev_snp_sample_negative_cases() {
    let report = snp_report();
    let policy = snp_policy();
    let ev = snp(&report, SNP_VCEK);
    let platform = |r: Result<Claims, AttestError>, what: &str| {
        assert!(
            matches!(
                r,
                Err(AttestError::Platform(_)) | Err(AttestError::Malformed(_))
            ),
            "{what}: {r:?}"
        );
    };
    // A tampered byte in the measurement, in the report data, in the signature.
    // (the ECDSA signature's r starts at 0x2a0)
    for at in [0x90, 0x50, 0x2a0 + 10] {
        platform(
            verify(
                &snp(&flip(&report, at), SNP_VCEK),
                &policy,
                &snp_rd(),
                IN_WINDOW,
            ),
            &format!("byte {at}"),
        );
    }
    platform(
        verify(
            &snp(&report[..report.len() - 1], SNP_VCEK),
            &policy,
            &snp_rd(),
            IN_WINDOW,
        ),
        "truncated",
    );
    // A VCEK with a changed byte (its signature by the ASK breaks), and one from another
    // product's chain.
    platform(
        verify(
            &snp(&report, &flip(SNP_VCEK, 40)),
            &policy,
            &snp_rd(),
            IN_WINDOW,
        ),
        "vcek",
    );
    let genoa = Evidence::SevSnp {
        product: "genoa".into(),
        report: hex::encode(&report),
        vcek: hex::encode(SNP_VCEK),
    };
    platform(
        verify(&genoa, &policy, &snp_rd(), IN_WINDOW),
        "other product",
    );
    // After the VCEK's validity.
    platform(verify(&ev, &policy, &snp_rd(), AFTER_VCEK), "expired VCEK");
    // Replayed nonce, other key.
    assert_eq!(
        verify(&ev, &policy, &binding(b"trainer key", &[9; 32]), IN_WINDOW),
        Err(AttestError::Binding)
    );
    // Policy rejections: another measurement, a newer TCB required, a newer guest SVN, and
    // debug mode (the sample's guest policy forbids debugging; the claims are marked as a
    // debug guest's would be).
    for p in [
        format!("[sev_snp]\nmeasurements = [\"{}\"]\n", "33".repeat(48)),
        format!("[sev_snp]\nmeasurements = [\"{SNP_MEASUREMENT}\"]\nmin_tcb = {{ snp = 9 }}\n"),
        format!("[sev_snp]\nmeasurements = [\"{SNP_MEASUREMENT}\"]\nmin_svn = 1\n"),
        format!("[dev]\nallow = true\nsigners = [\"{}\"]\n", "77".repeat(32)),
    ] {
        let p = Policy::parse(&p).expect("policy");
        assert!(
            matches!(
                verify(&ev, &p, &snp_rd(), IN_WINDOW),
                Err(AttestError::Policy(_))
            ),
            "{p:?}"
        );
    }
    let mut claims = verify_platform(&ev, IN_WINDOW).expect("claims");
    claims.debug = true;
    assert!(matches!(policy.check(&claims), Err(AttestError::Policy(m)) if m.contains("debug")));
    // A report requested by a less privileged VMPL, and a guest a migration agent may export.
    let mut claims = verify_platform(&ev, IN_WINDOW).expect("claims");
    claims.snp.as_mut().expect("snp").vmpl = 1;
    assert!(matches!(policy.check(&claims), Err(AttestError::Policy(m)) if m.contains("VMPL")));
    let mut claims = verify_platform(&ev, IN_WINDOW).expect("claims");
    claims.snp.as_mut().expect("snp").migrate_ma = true;
    assert!(
        matches!(policy.check(&claims), Err(AttestError::Policy(m)) if m.contains("migration"))
    );
}

fn dev_tee() -> dev::DevTee {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    dev::DevTee::new(
        confide_crypto::SigningKey::from_pkcs8_der(der.as_ref()).expect("key"),
        [5; 32],
    )
}

fn dev_policy(tee: &dev::DevTee) -> Policy {
    Policy::parse(&format!(
        "[dev]\nallow = true\nsigners = [\"{}\"]\nmeasurements = [\"{}\"]\n",
        hex::encode(tee.signer()),
        hex::encode([5u8; 32])
    ))
    .expect("policy")
}

#[test]
fn dev_evidence_binds_key_and_nonce_and_is_always_insecure() {
    let tee = dev_tee();
    let (key, nonce) = (b"trainer public key".as_slice(), [3u8; 32]);
    let ev = tee.evidence(&binding(key, &nonce));
    let c = verify(&ev, &dev_policy(&tee), &binding(key, &nonce), 0).expect("verifies");
    assert!(c.insecure);
    assert_eq!(c.kind, TeeKind::Dev);
    // Evidence round-trips through its JSON form.
    let json = serde_json::to_string(&ev).expect("json");
    let back: Evidence = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, ev);
}

#[test]
fn dev_evidence_negative_cases() {
    let tee = dev_tee();
    let policy = dev_policy(&tee);
    let (key, nonce) = (b"trainer public key".as_slice(), [3u8; 32]);
    let expected = binding(key, &nonce);
    let ev = tee.evidence(&expected);
    let Evidence::Dev {
        statement,
        signature,
        signer,
    } = ev.clone()
    else {
        panic!("dev evidence")
    };
    let with = |statement: &str, signature: &str, signer: &str| Evidence::Dev {
        statement: statement.into(),
        signature: signature.into(),
        signer: signer.into(),
    };
    // Production policies (no [dev], or allow = false) refuse it.
    for p in [
        "",
        "[dev]\nallow = false\n",
        &format!("[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\n"),
    ] {
        let p = Policy::parse(p).expect("policy");
        assert!(matches!(
            verify(&ev, &p, &expected, 0),
            Err(AttestError::Policy(_))
        ));
    }
    // Another dev TEE's key, and another measurement.
    let other = dev_tee();
    assert!(matches!(
        verify(&other.evidence(&expected), &policy, &expected, 0),
        Err(AttestError::Policy(_))
    ));
    let p = Policy::parse(&format!(
        "[dev]\nallow = true\nsigners = [\"{}\"]\nmeasurements = [\"{}\"]\n",
        hex::encode(tee.signer()),
        "66".repeat(32)
    ))
    .expect("policy");
    assert!(matches!(
        verify(&ev, &p, &expected, 0),
        Err(AttestError::Policy(_))
    ));
    // A changed statement, a changed signature, a truncated signature, another signer field.
    let changed = statement.replacen("0505", "0506", 1);
    assert_ne!(changed, statement);
    assert!(matches!(
        verify(&with(&changed, &signature, &signer), &policy, &expected, 0),
        Err(AttestError::Platform(_))
    ));
    let mut sig = hex::decode(&signature).expect("hex");
    sig[0] ^= 1;
    assert!(matches!(
        verify(
            &with(&statement, &hex::encode(&sig), &signer),
            &policy,
            &expected,
            0
        ),
        Err(AttestError::Platform(_))
    ));
    assert!(
        verify(
            &with(&statement, &signature[..60], &signer),
            &policy,
            &expected,
            0
        )
        .is_err()
    );
    assert!(matches!(
        verify(
            &with(&statement, &signature, &hex::encode(other.signer())),
            &policy,
            &expected,
            0
        ),
        Err(AttestError::Platform(_))
    ));
    assert!(matches!(
        verify(&with(&statement, &signature, "zz"), &policy, &expected, 0),
        Err(AttestError::Malformed(_))
    ));
    // Replayed nonce and another key.
    assert_eq!(
        verify(&ev, &policy, &binding(key, &[4; 32]), 0),
        Err(AttestError::Binding)
    );
    assert_eq!(
        verify(&ev, &policy, &binding(b"another key", &nonce), 0),
        Err(AttestError::Binding)
    );
}

#[test]
fn policies_with_errors_are_refused() {
    let bad = |text: &str, why: &str| {
        assert!(
            matches!(Policy::parse(text), Err(AttestError::InvalidPolicy(_))),
            "{why}"
        );
    };
    bad("[sgx]\n", "sgx must pin something");
    bad(
        &format!("[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\nunknown = 1\n"),
        "unknown field",
    );
    bad("[tpm]\n", "unknown section");
    bad("[tdx]\n", "tdx needs mr_td and rtmr");
    bad(
        &format!("[tdx]\nmr_td = [\"{TDX_MRTD}\"]\nrtmr = [[], [], [], []]\n"),
        "empty rtmr",
    );
    bad("[sgx]\nmr_enclave = [\"0x33\"]\n", "not 32 bytes of hex");
    bad(
        &format!("[sgx]\nmr_signer = [\"{SGX_MRSIGNER}\"]\n"),
        "signer without product",
    );
    bad(
        &format!("[sgx]\nmr_enclave = [\"{SGX_MRENCLAVE}\"]\nmin_isv_svn = 2\n"),
        "svn without signer",
    );
    bad("[dev]\nallow = true\n", "dev without a pinned key");
}
