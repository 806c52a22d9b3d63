use super::*;

const OWNER: &str = "00112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100";
const HASH: &str = "0000000000000000000000000000000000000000000000000000000000000001";

fn policy(extra_rule: &str, tail: &str) -> String {
    format!(
        r#"[dataset]
name = "guest"
expires = 2030-01-01T00:00:00Z
lifetime_epsilon = 10.0
lifetime_delta = 1e-5

[[rule]]
name = "study"
model_owners = ["{OWNER}"]
modes = ["federated"]
schemes = ["paillier"]
approval = "automatic"
{extra_rule}
{tail}"#
    )
}

fn parse(text: &str) -> Result<Policy, PolicyError> {
    Policy::parse(text, Path::new("p.toml"))
}

fn job() -> JobRequest {
    JobRequest {
        job_id: "j".into(),
        manifest_hash: HASH.into(),
        model_owner: OWNER.into(),
        mode: Mode::Federated,
        scheme: "paillier".into(),
        privacy: Some((2.0, 1e-5)),
        recipients: vec![OWNER.into()],
        code: "builtin".into(),
        code_reviews: Vec::new(),
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

fn allowed(p: &Policy, j: &JobRequest) -> bool {
    p.evaluate(j, now()).is_ok()
}

#[test]
fn model_owner_rule() {
    let p = parse(&policy("", "")).expect("valid");
    assert!(allowed(&p, &job()));
    let j = JobRequest {
        model_owner: OTHER.into(),
        recipients: vec![OTHER.into()],
        ..job()
    };
    let e = p.evaluate(&j, now()).expect_err("denied");
    assert!(e.to_string().contains("model owner"), "{e}");
}

#[test]
fn mode_rule() {
    let p = parse(&policy("", "")).expect("valid");
    assert!(allowed(&p, &job()));
    let j = JobRequest {
        mode: Mode::Confidential,
        ..job()
    };
    assert!(
        p.evaluate(&j, now())
            .expect_err("denied")
            .to_string()
            .contains("mode")
    );
}

#[test]
fn scheme_rule() {
    let p = parse(&policy("", "")).expect("valid");
    assert!(allowed(&p, &job()));
    let j = JobRequest {
        scheme: "plain".into(),
        ..job()
    };
    assert!(
        p.evaluate(&j, now())
            .expect_err("denied")
            .to_string()
            .contains("scheme")
    );
}

#[test]
fn epsilon_per_job_rule() {
    let p = parse(&policy("max_epsilon = 4.0", "")).expect("valid");
    assert!(allowed(&p, &job()));
    let over = JobRequest {
        privacy: Some((4.5, 1e-5)),
        ..job()
    };
    assert!(
        p.evaluate(&over, now())
            .expect_err("denied")
            .to_string()
            .contains("4.5")
    );
    let none = JobRequest {
        privacy: None,
        ..job()
    };
    assert!(
        p.evaluate(&none, now())
            .expect_err("denied")
            .to_string()
            .contains("no differential privacy")
    );
}

#[test]
fn lifetime_epsilon_is_read_and_bounds_the_per_job_limit() {
    let p = parse(&policy("", "")).expect("valid");
    assert_eq!(p.lifetime, Some((10.0, 1e-5)));
    let e = parse(&policy("max_epsilon = 12.0", "")).expect_err("above lifetime");
    assert_eq!(
        (e.line, e.field.as_str()),
        (13, "rule[0].max_epsilon"),
        "{e}"
    );
}

#[test]
fn recipients_rule() {
    let p = parse(&policy(
        &format!("recipients = [\"{OWNER}\", \"{OTHER}\"]"),
        "",
    ))
    .expect("valid");
    let both = JobRequest {
        recipients: vec![OWNER.into(), OTHER.into()],
        ..job()
    };
    assert!(allowed(&p, &both));
    // Default recipients: the rule's model owners only.
    let p = parse(&policy("", "")).expect("valid");
    assert!(
        p.evaluate(&both, now())
            .expect_err("denied")
            .to_string()
            .contains("recipient")
    );
}

#[test]
fn expiry_rule() {
    let p = parse(&policy("", "")).expect("valid");
    assert!(allowed(&p, &job()));
    let later = OffsetDateTime::from_unix_timestamp(1_900_000_000).expect("time");
    assert!(matches!(p.evaluate(&job(), later), Err(Denial::Expired(_))));
    // A date alone expires at its start, UTC.
    let p = parse(&policy("", "").replace("2030-01-01T00:00:00Z", "2027-01-15")).expect("valid");
    assert_eq!(rfc3339(p.expires), "2027-01-15T00:00:00Z");
}

#[test]
fn revocation_rules() {
    let p = parse(&policy("", "")).expect("valid");
    assert!(allowed(&p, &job()));
    for tail in [
        format!("[revoked]\nmodel_owners = [\"{OWNER}\"]"),
        "[revoked]\njobs = [\"j\"]".to_string(),
        format!("[revoked]\nmanifests = [\"{HASH}\"]"),
    ] {
        let p = parse(&policy("", &tail)).expect("valid");
        assert!(
            matches!(p.evaluate(&job(), now()), Err(Denial::Revoked(_))),
            "{tail}"
        );
    }
    // Revoking another job leaves this one allowed.
    let p = parse(&policy("", "[revoked]\njobs = [\"other\"]")).expect("valid");
    assert!(allowed(&p, &job()));
}

#[test]
fn approval_kind_is_reported() {
    let p = parse(&policy("", "")).expect("valid");
    assert_eq!(
        p.evaluate(&job(), now()).expect("allowed").approval,
        Approval::Automatic
    );
    let p = parse(&policy("", "").replace("\"automatic\"", "\"co-signature\"")).expect("valid");
    assert_eq!(
        p.evaluate(&job(), now()).expect("allowed").approval,
        Approval::CoSignature
    );
}

#[test]
fn a_later_rule_can_allow_what_an_earlier_one_does_not() {
    let second = format!(
        "\n[[rule]]\nname = \"plain ok\"\nmodel_owners = [\"{OWNER}\"]\nmodes = [\"federated\"]\nschemes = [\"plain\"]\napproval = \"co-signature\"\n"
    );
    let p = parse(&policy("", &second)).expect("valid");
    let j = JobRequest {
        scheme: "plain".into(),
        ..job()
    };
    assert_eq!(p.evaluate(&j, now()).expect("allowed").rule, "plain ok");
}

#[test]
fn errors_name_line_and_field() {
    let cases: Vec<(String, usize, &str)> = vec![
        (
            policy("", "").replace(&format!("[\"{OWNER}\"]"), "[\"alice\"]"),
            9,
            "rule[0].model_owners",
        ),
        (
            policy("", "").replace("[\"paillier\"]", "[\"rot13\"]"),
            11,
            "rule[0].schemes",
        ),
        (
            policy("", "").replace("lifetime_epsilon = 10.0", "lifetime_epsilon = -1.0"),
            4,
            "dataset.lifetime_epsilon",
        ),
        (
            policy("", "").replace("lifetime_delta = 1e-5\n", ""),
            4,
            "dataset.lifetime_delta",
        ),
        (
            policy("", "").replace("2030-01-01T00:00:00Z", "2030-01-01T00:00:00"),
            3,
            "dataset.expires",
        ),
        (policy("max_epsilon = nan", ""), 13, "rule[0].max_epsilon"),
        (policy("colour = \"blue\"", ""), 13, "colour"),
        (
            policy("", "").replace("[\"federated\"]", "[\"offline\"]"),
            10,
            "modes",
        ),
        (
            policy("", "[revoked]\nmanifests = [\"abc\"]"),
            15,
            "revoked.manifests",
        ),
    ];
    for (text, line, field) in cases {
        let e = parse(&text).expect_err("invalid");
        assert_eq!((e.line, e.field.as_str()), (line, field), "{e}\n{text}");
        assert!(
            e.to_string()
                .starts_with(&format!("p.toml:{line}: `{field}`")),
            "{e}"
        );
    }
}

#[test]
fn user_code_is_an_opt_in_and_may_need_a_trusted_reviewer() {
    let python = JobRequest {
        code: "python".into(),
        ..job()
    };
    // Default: builtin only.
    let p = parse(&policy("", "")).expect("valid");
    let e = p.evaluate(&python, now()).expect_err("denied");
    assert!(e.to_string().contains("runs python training code"), "{e}");
    assert!(allowed(&p, &job()));
    // Opted in, no reviewer required.
    let p = parse(&policy(r#"code = ["builtin", "python"]"#, "")).expect("valid");
    assert!(allowed(&p, &python));
    // Opted in with a reviewer: only that reviewer's co-signature counts.
    let p = parse(&policy(
        &format!("code = [\"python\"]\ncode_reviewers = [\"{OTHER}\"]"),
        "",
    ))
    .expect("valid");
    let e = p.evaluate(&python, now()).expect_err("denied");
    assert!(e.to_string().contains("reviewed by: nobody"), "{e}");
    let by_owner = JobRequest {
        code_reviews: vec![OWNER.into()],
        ..python.clone()
    };
    assert!(!allowed(&p, &by_owner));
    let by_reviewer = JobRequest {
        code_reviews: vec![OWNER.into(), OTHER.into()],
        ..python
    };
    assert!(allowed(&p, &by_reviewer));
    // This rule allows python only: a builtin job is refused by it.
    assert!(!allowed(&p, &job()));
}

#[test]
fn code_fields_are_checked() {
    let e = parse(&policy(r#"code = ["onnx"]"#, "")).expect_err("unknown kind");
    assert!(e.message.contains("an ONNX import is builtin"), "{e}");
    assert_eq!(e.field, "rule[0].code");
    let e = parse(&policy(&format!("code_reviewers = [\"{OTHER}\"]"), ""))
        .expect_err("reviewers without python");
    assert!(e.message.contains("applies to rules with code"), "{e}");
    let e = parse(&policy(
        "code = [\"python\"]\ncode_reviewers = [\"bob\"]",
        "",
    ))
    .expect_err("not a party id");
    assert!(e.message.contains("not a party id"), "{e}");
}
