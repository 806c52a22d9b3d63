//! A data owner's policy for one dataset: who may train on it, how, with how much privacy
//! loss, who may receive the model, until when; and what has been revoked.
//!
//! ```toml
//! [dataset]
//! name = "guest"                    # the dataset's name in the owner's privacy ledger
//! expires = 2027-12-31T23:59:59Z    # an offset date-time, or a date (expires at its start, UTC)
//! lifetime_epsilon = 10.0           # optional: the dataset's total ε budget in the ledger
//! lifetime_delta = 1e-5             # required with lifetime_epsilon
//! declare_rows = true               # optional: state the row count for contribution records
//!                                   # (every party that reads the audit log sees it)
//!
//! [[rule]]
//! name = "breast-homo study"
//! model_owners = ["<party id>"]     # who may train, by key (party id); at least one
//! modes = ["federated"]             # federated | confidential
//! schemes = ["paillier"]            # plain | paillier | … | confidential (the confidential
//!                                   # trainer, with modes = ["confidential"])
//! max_epsilon = 4.0                 # optional: ε per job; when set, a job without DP is refused
//! recipients = ["<party id>"]       # optional: who may receive the model (default: the
//!                                   # rule's model owners)
//! approval = "automatic"            # automatic: this rule approves matching jobs;
//!                                   # co-signature: the owner must also `confide job approve`
//! code = ["builtin"]                # optional: whose training code may run: builtin
//!                                   # (Confide's trainer, layer lists and ONNX imports
//!                                   # included; the default), python (the model owner's
//!                                   # bundle, confined; an opt-in)
//! code_reviewers = ["<party id>"]   # optional, with python: one of them must have co-signed
//!                                   # the bundle's digest (`confide job review-code`)
//!
//! [revoked]                         # optional
//! model_owners = []                 # party ids whose jobs are refused from now on
//! jobs = []                         # job ids
//! manifests = []                    # manifest hashes (hex)
//! ```
//!
//! A job is allowed when it is not revoked, the policy has not expired, and some rule accepts
//! every aspect of it. Nodes evaluate the policy before a job starts and again at every round,
//! re-reading the file: editing it (revoking, removing a rule, an expiry passing) stops a
//! running job at its next round.
//!
//! Every error names the line and the field it is about.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use time::OffsetDateTime;
use toml::Spanned;

use crate::identity::is_party_id;
use crate::manifest::Mode;

/// A policy problem: where it is and what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}:{line}: `{field}`: {message}")]
pub struct PolicyError {
    /// The policy file.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// The field (dotted path).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// How a matching rule approves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Approval {
    /// The rule approves matching jobs by itself.
    Automatic,
    /// The owner must co-sign the manifest as well.
    CoSignature,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name (for messages and the audit log).
    pub name: String,
    /// Allowed model owners (party ids).
    pub model_owners: Vec<String>,
    /// Allowed modes.
    pub modes: Vec<Mode>,
    /// Allowed schemes (by name).
    pub schemes: Vec<String>,
    /// ε per job, when limited.
    pub max_epsilon: Option<f64>,
    /// Allowed model recipients.
    pub recipients: Vec<String>,
    /// How it approves.
    pub approval: Approval,
    /// The kinds of training code it allows ([`CODE_KINDS`]; default `builtin` only).
    pub code: Vec<String>,
    /// Reviewers one of whom must have co-signed a user code bundle (empty: none needed).
    pub code_reviewers: Vec<String>,
}

/// The kinds of training code a rule may allow: Confide's own trainer, or the model owner's
/// Python bundle.
pub const CODE_KINDS: &[&str] = &["builtin", "python"];

/// A validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The dataset's name.
    pub dataset: String,
    /// When the policy stops allowing anything.
    pub expires: OffsetDateTime,
    /// The dataset's lifetime (ε, δ) budget, when set.
    pub lifetime: Option<(f64, f64)>,
    /// Whether the node states the dataset's row count when it approves a job, for the
    /// owner's contribution record in the audit log (default: no).
    pub declare_rows: bool,
    /// The rules, in order.
    pub rules: Vec<Rule>,
    /// Revoked model owners.
    pub revoked_model_owners: Vec<String>,
    /// Revoked job ids.
    pub revoked_jobs: Vec<String>,
    /// Revoked manifest hashes.
    pub revoked_manifests: Vec<String>,
}

/// What a node asks about a job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// Job id.
    pub job_id: String,
    /// Manifest hash, hex.
    pub manifest_hash: String,
    /// The model owner's party id.
    pub model_owner: String,
    /// The job's mode.
    pub mode: Mode,
    /// The job's scheme.
    pub scheme: String,
    /// What the job spends on this dataset, `(ε, δ)`, or `None` without DP.
    pub privacy: Option<(f64, f64)>,
    /// The model's recipients.
    pub recipients: Vec<String>,
    /// Whose training code runs: `builtin` or `python` ([`CODE_KINDS`]).
    pub code: String,
    /// The party ids whose co-signatures of the code bundle verified.
    pub code_reviews: Vec<String>,
}

/// Why a job is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Something the job depends on was revoked.
    Revoked(String),
    /// The policy has expired.
    Expired(String),
    /// No rule allows the job.
    NoRule(String),
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denial::Revoked(m) => write!(f, "revoked: {m}"),
            Denial::Expired(m) => write!(f, "policy expired: {m}"),
            Denial::NoRule(m) => write!(f, "not allowed by the policy: {m}"),
        }
    }
}

/// The rule that allowed a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowed {
    /// The rule's name.
    pub rule: String,
    /// How it approves.
    pub approval: Approval,
}

/// One rule's verdict on a job, for the owner's review (the node's dashboard).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleVerdict {
    /// The rule's name.
    pub rule: String,
    /// Whether the rule allows the job.
    pub allows: bool,
    /// How the rule approves what it allows.
    pub approval: Approval,
    /// Why it does not allow the job (empty when it does).
    pub why: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dataset: Spanned<RawDataset>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    revoked: Option<RawRevoked>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    name: Spanned<String>,
    expires: Spanned<toml::value::Datetime>,
    lifetime_epsilon: Option<Spanned<f64>>,
    lifetime_delta: Option<Spanned<f64>>,
    #[serde(default)]
    declare_rows: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    model_owners: Spanned<Vec<String>>,
    modes: Spanned<Vec<Mode>>,
    schemes: Spanned<Vec<String>>,
    max_epsilon: Option<Spanned<f64>>,
    recipients: Option<Spanned<Vec<String>>>,
    approval: Approval,
    code: Option<Spanned<Vec<String>>>,
    code_reviewers: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRevoked {
    #[serde(default)]
    model_owners: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    jobs: Vec<String>,
    #[serde(default)]
    manifests: Option<Spanned<Vec<String>>>,
}

/// Scheme names a policy may list.
pub const SCHEMES: &[&str] = &[
    "plain",
    "paillier",
    "masking",
    "shares",
    "threshold",
    "lattice",
    "confidential",
];

impl Policy {
    /// Reads and validates a policy file.
    ///
    /// # Errors
    /// Unreadable, or invalid (the error names the line and field).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: path.display().to_string(),
            line: 0,
            field: String::new(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates policy text (`path` is used in messages).
    ///
    /// # Errors
    /// Invalid (the error names the line and field).
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let display: PathBuf = path.to_path_buf();
        let err = |span: std::ops::Range<usize>, field: &str, message: String| PolicyError {
            path: display.display().to_string(),
            line: line_of(text, span.start),
            field: field.to_string(),
            message,
        };
        let raw: RawPolicy = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            // toml's message names the missing or unexpected key; keep its first line.
            let message = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string();
            err(span.clone(), &field_at(text, span.start), message)
        })?;
        let d = raw.dataset.into_inner();
        if d.name.get_ref().trim().is_empty() {
            return Err(err(
                d.name.span(),
                "dataset.name",
                "must not be empty".into(),
            ));
        }
        let expires = datetime(d.expires.get_ref())
            .map_err(|m| err(d.expires.span(), "dataset.expires", m))?;
        let lifetime = match (&d.lifetime_epsilon, &d.lifetime_delta) {
            (None, None) => None,
            (Some(e), Some(delta)) => {
                let (ev, dv) = (*e.get_ref(), *delta.get_ref());
                if !(ev.is_finite() && ev > 0.0) {
                    return Err(err(
                        e.span(),
                        "dataset.lifetime_epsilon",
                        format!("{ev} is not a positive finite ε"),
                    ));
                }
                if !(dv > 0.0 && dv < 1.0) {
                    return Err(err(
                        delta.span(),
                        "dataset.lifetime_delta",
                        format!("{dv} is not in (0, 1)"),
                    ));
                }
                Some((ev, dv))
            }
            (Some(e), None) => {
                return Err(err(
                    e.span(),
                    "dataset.lifetime_delta",
                    "required with lifetime_epsilon".into(),
                ));
            }
            (None, Some(delta)) => {
                return Err(err(
                    delta.span(),
                    "dataset.lifetime_epsilon",
                    "required with lifetime_delta".into(),
                ));
            }
        };
        let mut rules = Vec::new();
        for (i, r) in raw.rule.into_iter().enumerate() {
            let r = r.into_inner();
            let f = |name: &str| format!("rule[{i}].{name}");
            let name = r.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(err(r.name.span(), &f("name"), "must not be empty".into()));
            }
            if rules.iter().any(|x: &Rule| x.name == name) {
                return Err(err(
                    r.name.span(),
                    &f("name"),
                    format!("a second rule named `{name}`"),
                ));
            }
            let owners = ids(&r.model_owners, &f("model_owners"), &err)?;
            if owners.is_empty() {
                return Err(err(
                    r.model_owners.span(),
                    &f("model_owners"),
                    "lists no model owner".into(),
                ));
            }
            if r.modes.get_ref().is_empty() {
                return Err(err(r.modes.span(), &f("modes"), "lists no mode".into()));
            }
            if r.schemes.get_ref().is_empty() {
                return Err(err(
                    r.schemes.span(),
                    &f("schemes"),
                    "lists no scheme".into(),
                ));
            }
            if let Some(s) = r
                .schemes
                .get_ref()
                .iter()
                .find(|s| !SCHEMES.contains(&s.as_str()))
            {
                return Err(err(
                    r.schemes.span(),
                    &f("schemes"),
                    format!("unknown scheme `{s}` (known: {})", SCHEMES.join(", ")),
                ));
            }
            let max_epsilon = match &r.max_epsilon {
                Some(e) => {
                    let v = *e.get_ref();
                    if !(v.is_finite() && v > 0.0) {
                        return Err(err(
                            e.span(),
                            &f("max_epsilon"),
                            format!("{v} is not a positive finite ε"),
                        ));
                    }
                    if let Some((life, _)) = lifetime
                        && v > life
                    {
                        return Err(err(
                            e.span(),
                            &f("max_epsilon"),
                            format!("{v} exceeds the dataset's lifetime ε {life}"),
                        ));
                    }
                    Some(v)
                }
                None => None,
            };
            let recipients = match &r.recipients {
                Some(list) => {
                    let v = ids(list, &f("recipients"), &err)?;
                    if v.is_empty() {
                        return Err(err(
                            list.span(),
                            &f("recipients"),
                            "lists no recipient".into(),
                        ));
                    }
                    v
                }
                None => owners.clone(),
            };
            let code = match &r.code {
                Some(list) => {
                    if list.get_ref().is_empty() {
                        return Err(err(list.span(), &f("code"), "lists no kind".into()));
                    }
                    if let Some(k) = list
                        .get_ref()
                        .iter()
                        .find(|k| !CODE_KINDS.contains(&k.as_str()))
                    {
                        return Err(err(
                            list.span(),
                            &f("code"),
                            format!(
                                "unknown kind `{k}` (known: {}; an ONNX import is builtin)",
                                CODE_KINDS.join(", ")
                            ),
                        ));
                    }
                    list.get_ref().clone()
                }
                None => vec!["builtin".to_string()],
            };
            let code_reviewers = match &r.code_reviewers {
                Some(list) => {
                    if !list.get_ref().is_empty() && !code.iter().any(|k| k == "python") {
                        return Err(err(
                            list.span(),
                            &f("code_reviewers"),
                            "applies to rules with code = [\"python\", …] only".into(),
                        ));
                    }
                    ids(list, &f("code_reviewers"), &err)?
                }
                None => Vec::new(),
            };
            rules.push(Rule {
                name,
                model_owners: owners,
                modes: r.modes.into_inner(),
                schemes: r.schemes.into_inner(),
                max_epsilon,
                recipients,
                approval: r.approval,
                code,
                code_reviewers,
            });
        }
        let revoked = raw.revoked.unwrap_or_default();
        let revoked_model_owners = match &revoked.model_owners {
            Some(list) => ids(list, "revoked.model_owners", &err)?,
            None => Vec::new(),
        };
        let revoked_manifests = match &revoked.manifests {
            Some(list) => {
                if let Some(h) = list
                    .get_ref()
                    .iter()
                    .find(|h| crate::jcs::hex_array::<32>(h).is_err())
                {
                    return Err(err(
                        list.span(),
                        "revoked.manifests",
                        format!("`{h}` is not a manifest hash (64 lowercase hex digits)"),
                    ));
                }
                list.get_ref().clone()
            }
            None => Vec::new(),
        };
        Ok(Self {
            dataset: d.name.into_inner(),
            expires,
            lifetime,
            declare_rows: d.declare_rows,
            rules,
            revoked_model_owners,
            revoked_jobs: revoked.jobs,
            revoked_manifests,
        })
    }

    /// Decides whether the policy allows `job` at time `now`.
    ///
    /// # Errors
    /// The job is revoked, the policy expired, or no rule allows it (the message says why each
    /// rule did not).
    pub fn evaluate(&self, job: &JobRequest, now: OffsetDateTime) -> Result<Allowed, Denial> {
        if self.revoked_model_owners.contains(&job.model_owner) {
            return Err(Denial::Revoked(format!(
                "model owner `{}` is revoked for dataset `{}`",
                job.model_owner, self.dataset
            )));
        }
        if self.revoked_jobs.contains(&job.job_id) {
            return Err(Denial::Revoked(format!(
                "job `{}` is revoked for dataset `{}`",
                job.job_id, self.dataset
            )));
        }
        if self.revoked_manifests.contains(&job.manifest_hash) {
            return Err(Denial::Revoked(format!(
                "manifest {} is revoked for dataset `{}`",
                job.manifest_hash, self.dataset
            )));
        }
        if now >= self.expires {
            return Err(Denial::Expired(format!(
                "the policy of dataset `{}` expired at {}",
                self.dataset,
                rfc3339(self.expires)
            )));
        }
        let mut reasons = Vec::new();
        for rule in &self.rules {
            match rule.check(job) {
                Ok(()) => {
                    return Ok(Allowed {
                        rule: rule.name.clone(),
                        approval: rule.approval,
                    });
                }
                Err(why) => reasons.push(format!("rule `{}`: {why}", rule.name)),
            }
        }
        if reasons.is_empty() {
            reasons.push("the policy has no rules".into());
        }
        Err(Denial::NoRule(format!(
            "dataset `{}`, job `{}`: {}",
            self.dataset,
            job.job_id,
            reasons.join("; ")
        )))
    }
}

impl Policy {
    /// Every rule's own verdict on `job`, in order (the first that allows it decides, as in
    /// [`Policy::evaluate`], whose result comes first).
    pub fn review(
        &self,
        job: &JobRequest,
        now: OffsetDateTime,
    ) -> (Result<Allowed, Denial>, Vec<RuleVerdict>) {
        let decision = self.evaluate(job, now);
        // A revocation or the policy's expiry refuses before any rule is asked.
        let first = match &decision {
            Err(d @ (Denial::Revoked(_) | Denial::Expired(_))) => Some(d.to_string()),
            _ => None,
        };
        let rules = self
            .rules
            .iter()
            .map(|rule| {
                let check = rule.check(job);
                RuleVerdict {
                    rule: rule.name.clone(),
                    allows: check.is_ok() && first.is_none(),
                    approval: rule.approval,
                    why: first.clone().or(check.err()).unwrap_or_default(),
                }
            })
            .collect();
        (decision, rules)
    }
}

impl Rule {
    fn check(&self, job: &JobRequest) -> Result<(), String> {
        if !self.model_owners.contains(&job.model_owner) {
            return Err(format!("model owner `{}` is not allowed", job.model_owner));
        }
        if !self.modes.contains(&job.mode) {
            return Err(format!("mode `{}` is not allowed", job.mode.as_str()));
        }
        if !self.schemes.contains(&job.scheme) {
            return Err(format!(
                "scheme `{}` is not allowed ({})",
                job.scheme,
                self.schemes.join(", ")
            ));
        }
        if let Some(max) = self.max_epsilon {
            match job.privacy {
                None => {
                    return Err(format!(
                        "the job has no differential privacy; this rule requires ε ≤ {max}"
                    ));
                }
                Some((e, _)) if e > max => {
                    return Err(format!(
                        "the job spends ε = {e:.4}, above this rule's {max}"
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(r) = job.recipients.iter().find(|r| !self.recipients.contains(r)) {
            return Err(format!("recipient `{r}` may not receive the model"));
        }
        if !self.code.contains(&job.code) {
            return Err(format!(
                "the job runs {} training code; this rule allows {} (add \"{}\" to its `code` to opt in)",
                job.code,
                self.code.join(", "),
                job.code
            ));
        }
        if job.code != "builtin"
            && !self.code_reviewers.is_empty()
            && !job
                .code_reviews
                .iter()
                .any(|r| self.code_reviewers.contains(r))
        {
            return Err(format!(
                "no reviewer this rule trusts has co-signed the code bundle (reviewed by: {}; `confide job review-code`)",
                if job.code_reviews.is_empty() {
                    "nobody".to_string()
                } else {
                    job.code_reviews.join(", ")
                }
            ));
        }
        Ok(())
    }
}

fn ids<E>(
    list: &Spanned<Vec<String>>,
    field: &str,
    err: &impl Fn(std::ops::Range<usize>, &str, String) -> E,
) -> Result<Vec<String>, E> {
    if let Some(bad) = list.get_ref().iter().find(|s| !is_party_id(s)) {
        return Err(err(
            list.span(),
            field,
            format!("`{bad}` is not a party id (32 lowercase hex digits; see `confide keygen`)"),
        ));
    }
    Ok(list.get_ref().clone())
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key on the line of `offset`, for parse errors whose message may not name it.
fn field_at(text: &str, offset: usize) -> String {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    line.split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches(['[', ']'])
        .to_string()
}

fn datetime(d: &toml::value::Datetime) -> Result<OffsetDateTime, String> {
    let date = d.date.ok_or("needs a date")?;
    let month = time::Month::try_from(date.month).map_err(|e| e.to_string())?;
    let day = time::Date::from_calendar_date(i32::from(date.year), month, date.day)
        .map_err(|e| e.to_string())?;
    let t = match d.time {
        Some(t) => time::Time::from_hms_nano(t.hour, t.minute, t.second, t.nanosecond)
            .map_err(|e| e.to_string())?,
        None => time::Time::MIDNIGHT,
    };
    let offset = match (d.time, d.offset) {
        (None, None) => time::UtcOffset::UTC,
        (Some(_), None) => return Err("a date-time needs an offset (for example `Z`)".into()),
        (_, Some(toml::value::Offset::Z)) => time::UtcOffset::UTC,
        (_, Some(toml::value::Offset::Custom { minutes })) => {
            time::UtcOffset::from_whole_seconds(i32::from(minutes) * 60)
                .map_err(|e| e.to_string())?
        }
    };
    Ok(time::PrimitiveDateTime::new(day, t).assume_offset(offset))
}

/// RFC 3339 text of a time (UTC).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
