//! What the node dashboard's pages show: view models built from the daemon's stores, and the
//! askama templates (`templates/node/`) they render into. Every figure is computed here, on
//! the server; the templates escape every value (askama's HTML escaping), and the only
//! unescaped markup is the SVG chart that [`burn_down`] builds from numbers.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::http::StatusCode;
use confide_dp::ledger::{BudgetLedger, EntryState, LedgerEntry};
use confide_governance::audit::SignedTreeHead;
use confide_governance::manifest::SignedManifest;
use confide_governance::policy::Policy;
use confide_net::pki::{Credentials, PeerIdentity};
use confide_store::Store;

use crate::node_serve::{Entry, Inbox, Status};

type PageResult = Result<String, (StatusCode, String)>;

fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn rendered(r: askama::Result<String>) -> PageResult {
    r.map_err(internal)
}

/// The message of an error body (a problem page or plain text), for the CLI.
pub fn text_of(body: &str) -> String {
    const START: &str = "<p class=\"problem\">";
    let text = match body.find(START) {
        Some(a) => {
            let rest = &body[a + START.len()..];
            rest.find("</p>").map_or(rest, |b| &rest[..b])
        }
        None => body,
    };
    unescape(text.trim())
}

/// HTML text back to plain text: the named entities askama writes, and numeric ones.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let decoded = rest.find(';').filter(|end| *end <= 10).and_then(|end| {
            let c = match &rest[1..end] {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                n => n
                    .strip_prefix("#x")
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| n.strip_prefix('#').map(str::parse::<u32>))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, end))
        });
        match decoded {
            Some((c, end)) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The daemon's heartbeats to its coordinator.
#[derive(Debug, Default)]
pub(crate) struct Heartbeats {
    pub ok: u64,
    pub failed: u64,
    pub last_error: String,
    /// The last answered heartbeat (Unix milliseconds).
    pub last_ok_ms: u64,
    /// The coordinator, from its certificate (checked against the CA).
    pub coordinator: Option<PeerIdentity>,
}

/// One dataset the daemon serves.
#[derive(Debug, Clone)]
pub(crate) struct Dataset {
    /// Its name in the inbox (its policy's dataset, or its file).
    pub name: String,
    /// Its name in the ledger (`--dataset`, or the policy's), when the daemon keeps one.
    pub ledger: Option<String>,
    pub policy: Option<PathBuf>,
}

/// The last "verify now" of the audit view.
#[derive(Debug, Clone)]
pub(crate) struct Verification {
    pub at_ms: u64,
    pub ok: bool,
    pub lines: Vec<String>,
    /// The newest [`MAX_AUDIT_ROWS`] entries about this node's jobs.
    pub entries: Vec<AuditRow>,
    /// How many older ones the page leaves to the export.
    pub older: usize,
    pub export: Option<Arc<[u8]>>,
}

/// The most audit entries the audit view lists (the newest); the export has them all.
pub(crate) const MAX_AUDIT_ROWS: usize = 200;

/// The longest "verify now" waits for the coordinator's log.
const FETCH_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The node daemon as its dashboard sees it (read-only).
pub(crate) struct Node {
    pub node: String,
    pub node_id: String,
    pub admin: String,
    pub coordinator: String,
    pub approver: Option<String>,
    pub approver_key: Option<PathBuf>,
    pub datasets: Vec<Dataset>,
    pub ledger: Option<PathBuf>,
    pub store: Arc<dyn Store>,
    pub inbox: Inbox,
    pub creds: Credentials,
    pub heard: Arc<Mutex<Heartbeats>>,
    pub started_ms: u64,
    pub verified: Mutex<Option<Verification>>,
}

/// What every page's frame shows: who is logged in, the CSRF token of its forms.
pub(crate) struct Chrome {
    /// The party id of the session's key.
    pub party: String,
    /// How the pages name it.
    pub who: String,
    pub csrf: String,
    pub node: String,
    /// The daemon holds the encrypted approval key: forms sign in the page.
    pub signs_here: bool,
}

fn now_ms() -> u64 {
    confide_service::jobs::millis(time::OffsetDateTime::now_utc())
}

/// A time as `2026-12-07 19:40:12 UTC`.
pub(crate) fn when(ms: u64) -> String {
    if ms == 0 {
        return "—".into();
    }
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.format(&f).unwrap_or_default()
}

fn eps(x: f64) -> String {
    format!("{x:.4}")
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Approved => "approved",
        Status::Rejected => "rejected",
        Status::Running => "running",
        Status::Ended => "ended",
    }
}

/// A page with only a message (errors, refusals).
#[derive(Template)]
#[template(path = "node/problem.html")]
pub(crate) struct ProblemPage {
    pub title: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "node/login.html")]
pub(crate) struct LoginPage {
    pub node: String,
    pub admin: String,
    pub has_approver: bool,
}

pub(crate) struct InboxRow {
    hash: String,
    job_id: String,
    model_owner: String,
    status: &'static str,
    verdict: String,
    dataset: String,
    epsilon: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "node/inbox.html")]
struct InboxPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    pending: usize,
    rows: Vec<InboxRow>,
}

struct Field {
    name: &'static str,
    value: String,
}

struct DatasetRow {
    dataset: String,
    epsilon: String,
    delta: String,
    remaining: String,
    verdict: String,
}

struct RuleRow {
    rule: String,
    verdict: &'static str,
    approval: &'static str,
    why: String,
}

#[derive(Template)]
#[template(path = "node/inbox_job.html")]
struct InboxJobPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    hash: String,
    job_id: String,
    status: &'static str,
    verdict: String,
    why: String,
    job: Vec<Field>,
    privacy: Vec<Field>,
    check: String,
    budget: Vec<Field>,
    rules: Vec<RuleRow>,
    datasets: Vec<DatasetRow>,
    can_decide: bool,
    revoked: bool,
    approve_cmd: String,
    reject_cmd: String,
}

struct JobRow {
    hash: String,
    job_id: String,
    status: &'static str,
    sent: u32,
    rounds: u32,
    last: String,
    note: String,
}

#[derive(Template)]
#[template(path = "node/jobs.html")]
struct JobsPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    rows: Vec<JobRow>,
    refusals: Vec<JobRow>,
}

struct SentRow {
    round: u32,
    bytes: String,
    at: String,
}

#[derive(Template)]
#[template(path = "node/job.html")]
struct JobPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    hash: String,
    job_id: String,
    status: &'static str,
    note: String,
    dataset: String,
    sent: u32,
    rounds: u32,
    rows: Vec<SentRow>,
    can_revoke: bool,
    revoked: String,
    revoke_cmd: String,
}

struct LedgerRow {
    job_id: String,
    epsilon: String,
    delta: String,
    state: String,
    spent_after: String,
    debited: String,
    receipt: String,
}

struct DatasetBudget {
    name: String,
    figures: Vec<Field>,
    chart: String,
    rows: Vec<LedgerRow>,
}

#[derive(Template)]
#[template(path = "node/budget.html")]
struct BudgetPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    datasets: Vec<DatasetBudget>,
    ledger: bool,
}

/// One audit entry that concerns this owner's jobs.
#[derive(Debug, Clone)]
pub(crate) struct AuditRow {
    index: u64,
    kind: String,
    job: String,
    actor: String,
    time: String,
    mine: bool,
}

#[derive(Template)]
#[template(path = "node/audit.html")]
struct AuditPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    head: Vec<Field>,
    alerts: Vec<String>,
    verified: bool,
    verified_ok: bool,
    verified_at: String,
    lines: Vec<String>,
    entries: Vec<AuditRow>,
    older: usize,
    export: bool,
}

#[derive(Template)]
#[template(path = "node/health.html")]
struct HealthPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    fields: Vec<Field>,
    healthy: bool,
}

/// A dataset's budget figures from the ledger: lifetime (ε, δ), spent, reserved.
struct Figures {
    lifetime: Option<(f64, f64)>,
    spent: (f64, f64),
    reserved: (f64, f64),
    history: Vec<LedgerEntry>,
}

impl Figures {
    fn remaining(&self) -> Option<f64> {
        self.lifetime
            .map(|(e, _)| e - self.spent.0 - self.reserved.0)
    }
}

impl Node {
    fn entries(&self) -> Result<Vec<Entry>, (StatusCode, String)> {
        let mut all = self.inbox.list().map_err(internal)?;
        all.sort_by_key(|e| std::cmp::Reverse(e.updated_ms));
        Ok(all)
    }

    fn entry(&self, hash: &str) -> Result<Entry, (StatusCode, String)> {
        self.inbox.entry(hash).map_err(|(code, m)| {
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND),
                m,
            )
        })
    }

    fn revoked(&self, hash: &str) -> Option<String> {
        let h = confide_service::jobs::parse_hash(hash)?;
        confide_net::node::owner_revocation(self.store.as_ref(), &h)
            .ok()
            .flatten()
    }

    fn policy(&self, dataset: &str) -> Option<Policy> {
        self.datasets
            .iter()
            .find(|d| d.name == dataset)
            .and_then(|d| d.policy.as_ref())
            .and_then(|p| Policy::load(p).ok())
    }

    /// The budget figures of `dataset` (its name in the inbox): its ledger entries, and its
    /// lifetime budget as the node enforces it (the policy's, which the node writes into the
    /// ledger at each debit; the ledger's when the policy has none).
    fn figures(&self, dataset: &str) -> Result<Option<Figures>, String> {
        let (Some(path), Some(name)) = (
            &self.ledger,
            self.datasets
                .iter()
                .find(|d| d.name == dataset)
                .and_then(|d| d.ledger.as_deref()),
        ) else {
            return Ok(None);
        };
        let ledger = BudgetLedger::open(path).map_err(|e| e.to_string())?;
        let lifetime = match self.policy(dataset).and_then(|p| p.lifetime) {
            Some(l) => Some(l),
            None => ledger
                .budget(name)
                .map_err(|e| e.to_string())?
                .map(|b| (b.epsilon, b.delta)),
        };
        let history = ledger.history(name).map_err(|e| e.to_string())?;
        let sum = |f: &dyn Fn(EntryState) -> bool| {
            history
                .iter()
                .filter(|e| f(e.state))
                .fold((0.0, 0.0), |(a, b), e| {
                    (a + e.cost.epsilon, b + e.cost.delta)
                })
        };
        Ok(Some(Figures {
            lifetime,
            spent: sum(&|s| matches!(s, EntryState::Started | EntryState::Finished)),
            reserved: sum(&|s| s == EntryState::Debited),
            history,
        }))
    }

    pub(crate) fn inbox_page(&self, c: &Chrome) -> PageResult {
        let all = self.entries()?;
        let rows = all
            .iter()
            .map(|e| InboxRow {
                hash: e.hash.clone(),
                job_id: e.job_id.clone(),
                model_owner: short(&e.model_owner),
                status: status_name(e.status),
                verdict: e.verdict.clone(),
                dataset: e.dataset.clone(),
                epsilon: e.cost.as_ref().map_or("—".into(), |p| eps(p.epsilon)),
                updated: when(e.updated_ms),
            })
            .collect();
        rendered(
            InboxPage {
                c,
                nav: "inbox",
                pending: all.iter().filter(|e| e.status == Status::Pending).count(),
                rows,
            }
            .render(),
        )
    }

    pub(crate) fn inbox_job_page(&self, c: &Chrome, hash: &str) -> PageResult {
        let e = self.entry(hash)?;
        let (privacy, check) = e
            .cost
            .as_ref()
            .map_or_else(Default::default, privacy_fields);
        let revoked = self.revoked(&e.hash).is_some();
        let can_decide = matches!(e.status, Status::Pending | Status::Approved)
            && !revoked
            && self.approver.is_some();
        let key = self.key_shown();
        rendered(
            InboxJobPage {
                c,
                nav: "inbox",
                approve_cmd: format!(
                    "confide node inbox approve {} --admin {} --key {key}",
                    e.hash, self.admin
                ),
                reject_cmd: format!(
                    "confide node inbox reject {} --reason \"…\" --admin {} --key {key}",
                    e.hash, self.admin
                ),
                job: self.job_fields(&e),
                privacy,
                check,
                budget: self.budget_fields(&e),
                rules: rule_rows(&e),
                datasets: self.dataset_rows(&e),
                can_decide,
                revoked,
                hash: e.hash,
                job_id: e.job_id,
                status: status_name(e.status),
                verdict: e.verdict,
                why: e.why,
            }
            .render(),
        )
    }

    /// The approval key as the printed commands name it.
    fn key_shown(&self) -> String {
        self.approver_key
            .as_ref()
            .map_or("YOUR-APPROVAL-KEY".into(), |p| p.display().to_string())
    }

    /// The offered job, from its signed manifest, and the dataset it would use.
    fn job_fields(&self, e: &Entry) -> Vec<Field> {
        let mut job = vec![
            field("Manifest hash", e.hash.clone()),
            field("Model owner", e.model_owner.clone()),
        ];
        if let Ok(m) = SignedManifest::from_json(&e.manifest_json) {
            let man = &m.manifest;
            job.push(field("Participants", man.participants.join(", ")));
            job.push(field("Mode", man.mode.as_str().into()));
            job.push(field("Recipients of the model", man.recipients.join(", ")));
            if let Ok(spec) = man.job_spec() {
                job.push(field("Scheme", spec.job.scheme.as_str().into()));
                job.push(field("Rounds", spec.job.rounds.to_string()));
                job.push(field(
                    "At least this many owners per round",
                    spec.job.min_owners.to_string(),
                ));
                job.push(field("Model", describe_model(&spec)));
                job.push(field("Features read", spec.data.features.len().to_string()));
            }
        }
        job.push(field("Dataset it would use", e.dataset.clone()));
        if let Some(p) = self.policy(&e.dataset) {
            job.push(field(
                "Your policy expires",
                confide_governance::policy::rfc3339(p.expires),
            ));
        }
        job
    }

    /// The job's dataset's budget: lifetime, spent and reserved, what remains now and after
    /// the job.
    fn budget_fields(&self, e: &Entry) -> Vec<Field> {
        let f = match self.figures(&e.dataset) {
            Ok(Some(f)) => f,
            Ok(None) => return Vec::new(),
            Err(why) => return vec![field("Budget", format!("the ledger cannot be read: {why}"))],
        };
        let mut budget = Vec::new();
        if let Some((life, _)) = f.lifetime {
            budget.push(field("Lifetime ε", eps(life)));
        }
        budget.push(field("Spent and reserved ε", eps(f.spent.0 + f.reserved.0)));
        if let Some(left) = f.remaining() {
            budget.push(field("Remaining ε now", eps(left)));
            if let Some(p) = &e.cost {
                let ran = f
                    .history
                    .iter()
                    .any(|h| h.job_id == e.job_id && h.state != EntryState::Released);
                budget.push(Field {
                    name: if ran {
                        "Remaining ε (this job already debited)"
                    } else {
                        "Remaining ε after this job"
                    },
                    value: eps(if ran { left } else { left - p.epsilon }),
                });
            }
        }
        budget
    }

    /// With several datasets: what the job would cost each, and each one's verdict.
    fn dataset_rows(&self, e: &Entry) -> Vec<DatasetRow> {
        if e.datasets.len() < 2 {
            return Vec::new();
        }
        e.datasets
            .iter()
            .map(|d| {
                let left = self
                    .figures(&d.dataset)
                    .ok()
                    .flatten()
                    .and_then(|f| f.remaining());
                DatasetRow {
                    dataset: d.dataset.clone(),
                    epsilon: d.cost.as_ref().map_or("—".into(), |c| eps(c.epsilon)),
                    delta: d
                        .cost
                        .as_ref()
                        .map_or("—".into(), |c| format!("{:e}", c.delta)),
                    remaining: match (left, &d.cost) {
                        (Some(l), Some(c)) => eps(l - c.epsilon),
                        (Some(l), None) => eps(l),
                        (None, _) => "no lifetime budget".into(),
                    },
                    verdict: d.verdict.clone(),
                }
            })
            .collect()
    }

    /// What this node sent for the job of `e` (its training record is kept by job digest).
    fn sent(&self, e: &Entry) -> Vec<confide_net::node::SentRound> {
        SignedManifest::from_json(&e.manifest_json)
            .and_then(|m| m.manifest.job_spec())
            .ok()
            .map(|spec| confide_net::coordinator::job_digest(&spec))
            .and_then(|d| confide_net::node::sent_rounds(self.store.as_ref(), &d).ok())
            .unwrap_or_default()
    }

    pub(crate) fn jobs_page(&self, c: &Chrome) -> PageResult {
        let mut rows = Vec::new();
        let mut refusals = Vec::new();
        for e in self.entries()? {
            let sent = self.sent(&e);
            let row = JobRow {
                last: sent.last().map_or("—".into(), |s| {
                    format!("{} bytes at {}", s.bytes, when(s.at_ms))
                }),
                sent: u32::try_from(sent.len()).unwrap_or(u32::MAX),
                rounds: e.rounds,
                status: status_name(e.status),
                note: if e.note.is_empty() {
                    e.why.clone()
                } else {
                    e.note.clone()
                },
                hash: e.hash,
                job_id: e.job_id,
            };
            match e.status {
                Status::Pending => {}
                Status::Rejected => refusals.push(row),
                Status::Ended if row.note.starts_with("failed") => refusals.push(row),
                _ => rows.push(row),
            }
        }
        rendered(
            JobsPage {
                c,
                nav: "jobs",
                rows,
                refusals,
            }
            .render(),
        )
    }

    pub(crate) fn job_page(&self, c: &Chrome, hash: &str) -> PageResult {
        let e = self.entry(hash)?;
        let sent = self.sent(&e);
        let revoked = self.revoked(&e.hash).map_or(String::new(), |s| {
            confide_governance::statement::SignedStatement::from_json(s.as_bytes())
                .map(|st| {
                    format!(
                        "revoked by {} at {}: {}",
                        short(&st.statement.author.id),
                        st.statement.time,
                        st.statement.reason
                    )
                })
                .unwrap_or_else(|_| "revoked".into())
        });
        let key = self.key_shown();
        rendered(
            JobPage {
                c,
                nav: "jobs",
                can_revoke: revoked.is_empty()
                    && self.approver.is_some()
                    && matches!(
                        e.status,
                        Status::Pending | Status::Approved | Status::Running
                    ),
                revoke_cmd: format!(
                    "confide node inbox revoke {} --reason \"…\" --admin {} --key {key}",
                    e.hash, self.admin
                ),
                revoked,
                sent: u32::try_from(sent.len()).unwrap_or(u32::MAX),
                rounds: e.rounds,
                rows: sent
                    .iter()
                    .map(|s| SentRow {
                        round: s.round,
                        bytes: s.bytes.to_string(),
                        at: when(s.at_ms),
                    })
                    .collect(),
                status: status_name(e.status),
                note: e.note,
                dataset: e.dataset,
                hash: e.hash,
                job_id: e.job_id,
            }
            .render(),
        )
    }

    pub(crate) fn budget_page(&self, c: &Chrome) -> PageResult {
        let mut datasets = Vec::new();
        for d in &self.datasets {
            let Some(f) = self.figures(&d.name).map_err(internal)? else {
                continue;
            };
            let mut figures = Vec::new();
            match f.lifetime {
                Some((e, delta)) => {
                    figures.push(Field {
                        name: "Lifetime ε",
                        value: eps(e),
                    });
                    figures.push(Field {
                        name: "Lifetime δ",
                        value: format!("{delta:e}"),
                    });
                }
                None => figures.push(Field {
                    name: "Lifetime ε",
                    value: "not set (no lifetime budget in the policy or the ledger)".into(),
                }),
            }
            figures.push(Field {
                name: "Spent ε (jobs that started)",
                value: eps(f.spent.0),
            });
            figures.push(Field {
                name: "Reserved ε (debited, not started)",
                value: eps(f.reserved.0),
            });
            if let Some(left) = f.remaining() {
                figures.push(Field {
                    name: "Remaining ε",
                    value: eps(left),
                });
            }
            let rows = f
                .history
                .iter()
                .map(|h| LedgerRow {
                    job_id: h.job_id.clone(),
                    epsilon: eps(h.cost.epsilon),
                    delta: format!("{:e}", h.cost.delta),
                    state: h.state.to_string(),
                    spent_after: eps(h.spent_after.epsilon),
                    debited: when(h.debited_at.saturating_mul(1000)),
                    receipt: format!(
                        "debit #{} of `{}` on `{}`: ε {} (total after: {})",
                        h.ordinal,
                        h.job_id,
                        d.name,
                        eps(h.cost.epsilon),
                        eps(h.spent_after.epsilon)
                    ),
                })
                .collect();
            datasets.push(DatasetBudget {
                name: d.name.clone(),
                chart: burn_down(&d.name, f.lifetime.map(|l| l.0), &f.history, now_ms()),
                figures,
                rows,
            });
        }
        rendered(
            BudgetPage {
                c,
                nav: "budget",
                ledger: self.ledger.is_some(),
                datasets,
            }
            .render(),
        )
    }

    fn heard(&self) -> std::sync::MutexGuard<'_, Heartbeats> {
        self.heard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn last_head(&self) -> Option<SignedTreeHead> {
        let log = self.heard().coordinator.as_ref()?.id.clone();
        confide_governance::witness::Witness::new(self.store.clone(), self.creds.identity())
            .last_seen(&log)
            .ok()
            .flatten()
    }

    pub(crate) fn audit_page(&self, c: &Chrome) -> PageResult {
        let mut head = Vec::new();
        match self.last_head() {
            Some(h) => {
                head.push(Field {
                    name: "Log (the coordinator's id)",
                    value: h.log_id.clone(),
                });
                head.push(Field {
                    name: "Entries covered",
                    value: h.size.to_string(),
                });
                head.push(Field {
                    name: "Root",
                    value: h.root.clone(),
                });
                head.push(Field {
                    name: "Signed at",
                    value: when(h.timestamp),
                });
            }
            None => head.push(Field {
                name: "Last cosigned head",
                value: "none yet: this node cosigns a head at each round it takes part in".into(),
            }),
        }
        let alerts = confide_net::node::refused_heads(self.store.as_ref())
            .map_err(internal)?
            .into_iter()
            .map(|r| format!("{}: {}", when(r.at_ms), r.reason))
            .collect();
        // The page's part of the last verification (never the export itself).
        let v = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|v| Verification {
                at_ms: v.at_ms,
                ok: v.ok,
                lines: v.lines.clone(),
                entries: v.entries.clone(),
                older: v.older,
                export: v.export.as_ref().map(|_| Arc::from(&[][..])),
            });
        rendered(
            AuditPage {
                c,
                nav: "audit",
                head,
                alerts,
                verified: v.is_some(),
                verified_ok: v.as_ref().is_some_and(|v| v.ok),
                verified_at: v.as_ref().map_or(String::new(), |v| when(v.at_ms)),
                export: v.as_ref().is_some_and(|v| v.export.is_some()),
                lines: v.as_ref().map_or(Vec::new(), |v| v.lines.clone()),
                older: v.as_ref().map_or(0, |v| v.older),
                entries: v.map_or(Vec::new(), |v| v.entries),
            }
            .render(),
        )
    }

    pub(crate) fn last_export(&self) -> Option<Arc<[u8]>> {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(|v| v.export.clone())
    }

    /// "Verify now": fetches the coordinator's log and runs `confide audit verify`'s check on
    /// it, pinned to the coordinator's key, then checks that it extends the last head this
    /// node cosigned (an RFC 9162 consistency proof).
    pub(crate) async fn verify_now(self: &Arc<Self>) {
        let fetched = match tokio::time::timeout(FETCH_LIMIT, self.fetch_log()).await {
            Ok(f) => f,
            Err(_) => Err(format!(
                "the coordinator did not send its log within {} s",
                FETCH_LIMIT.as_secs()
            )),
        };
        let coordinator = self.heard().coordinator.clone();
        let witnessed = self.last_head();
        let me = self.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let jobs: Vec<(String, String)> = me
                .inbox
                .list()
                .unwrap_or_default()
                .into_iter()
                .map(|e| (e.hash, e.job_id))
                .collect();
            let who = (me.node.clone(), me.node_id.clone());
            match fetched {
                Err(e) => Verification {
                    at_ms: now_ms(),
                    ok: false,
                    lines: vec![format!("could not fetch the log: {e}")],
                    entries: Vec::new(),
                    older: 0,
                    export: None,
                },
                Ok(bytes) => {
                    check_log(bytes, coordinator.as_ref(), witnessed.as_ref(), &jobs, &who)
                }
            }
        })
        .await;
        let v = checked.unwrap_or_else(|e| Verification {
            at_ms: now_ms(),
            ok: false,
            lines: vec![format!("the check failed: {e}")],
            entries: Vec::new(),
            older: 0,
            export: None,
        });
        *self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(v);
    }

    async fn fetch_log(&self) -> Result<Vec<u8>, String> {
        let ch = confide_net::transport::connect(&self.coordinator, "coordinator", &self.creds)
            .await
            .map_err(|e| e.to_string())?;
        let reply = confide_net::pb::fleet_client::FleetClient::new(ch)
            .max_decoding_message_size(256 * 1024 * 1024)
            .audit(confide_net::pb::ExportAuditRequest {})
            .await
            .map_err(|s| confide_net::roles::describe_failure(&s))?;
        Ok(reply.into_inner().log_file)
    }

    pub(crate) fn health_page(&self, c: &Chrome) -> PageResult {
        let h = self.heard();
        let mut fields = vec![
            Field {
                name: "Node",
                value: format!("{} ({})", self.node, self.node_id),
            },
            Field {
                name: "Coordinator (fleet port)",
                value: self.coordinator.clone(),
            },
            Field {
                name: "Coordinator's identity",
                value: h
                    .coordinator
                    .as_ref()
                    .map_or("not heard yet".into(), |p| format!("{} ({})", p.name, p.id)),
            },
            Field {
                name: "Last heartbeat answered",
                value: when(h.last_ok_ms),
            },
            Field {
                name: "Heartbeats answered / failed",
                value: format!("{} / {}", h.ok, h.failed),
            },
        ];
        if !h.last_error.is_empty() {
            fields.push(Field {
                name: "Last heartbeat error",
                value: h.last_error.clone(),
            });
        }
        let healthy = h.last_ok_ms > 0 && h.last_error.is_empty();
        drop(h);
        let expiry = self
            .creds
            .cert_der()
            .ok()
            .and_then(|d| confide_net::pki::not_after(&d).ok());
        fields.push(Field {
            name: "This node's certificate expires",
            value: expiry.map_or("unreadable".into(), |s| {
                when(u64::try_from(s).unwrap_or(0).saturating_mul(1000))
            }),
        });
        fields.push(Field {
            name: "Approval key (--approver)",
            value: self
                .approver
                .clone()
                .unwrap_or_else(|| "none: the inbox takes no decision".into()),
        });
        fields.push(Field {
            name: "Datasets",
            value: self
                .datasets
                .iter()
                .map(|d| d.name.clone())
                .collect::<Vec<_>>()
                .join(", "),
        });
        fields.push(Field {
            name: "Daemon started",
            value: when(self.started_ms),
        });
        fields.push(Field {
            name: "Version",
            value: format!(
                "confide {} (protocol confide.v1)",
                env!("CARGO_PKG_VERSION")
            ),
        });
        rendered(
            HealthPage {
                c,
                nav: "health",
                fields,
                healthy,
            }
            .render(),
        )
    }
}

fn field(name: &'static str, value: String) -> Field {
    Field { name, value }
}

/// The privacy cost's fields, and the `confide dp epsilon` command that recomputes its ε
/// (record level only).
fn privacy_fields(p: &confide_net::node::PrivacyCost) -> (Vec<Field>, String) {
    let fields = vec![
        field("Level", p.level.clone()),
        field("ε (this dataset, whole job)", eps(p.epsilon)),
        field("δ", format!("{:e}", p.delta)),
        field("Noise multiplier σ", format!("{}", p.noise_multiplier)),
        field("Clip norm", format!("{}", p.clip_norm)),
        field("Sampling rate q", format!("{}", p.sampling_rate)),
        field("Noisy steps", p.steps.to_string()),
        field("Accountant", p.accountant.clone()),
    ];
    let check = if p.level == "record" {
        format!(
            "confide dp epsilon --q {} --sigma {} --steps {} --delta {} --accountant {}",
            p.sampling_rate, p.noise_multiplier, p.steps, p.delta, p.accountant
        )
    } else {
        String::new()
    };
    (fields, check)
}

/// Each policy rule's verdict on the job.
fn rule_rows(e: &Entry) -> Vec<RuleRow> {
    e.rules
        .iter()
        .map(|r| RuleRow {
            rule: r.rule.clone(),
            verdict: if r.allows { "allows" } else { "does not allow" },
            approval: match r.approval {
                confide_governance::policy::Approval::Automatic => "automatic",
                confide_governance::policy::Approval::CoSignature => "your co-signature",
            },
            why: r.why.clone(),
        })
        .collect()
}

/// The model, in words: its kind and layers.
fn describe_model(spec: &confide_core::JobSpec) -> String {
    let m = &spec.model;
    if m.layers.is_empty() {
        format!("{:?}", m.kind).to_lowercase()
    } else {
        let layers: Vec<String> = m
            .layers
            .iter()
            .map(|l| {
                serde_json::to_value(l)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect();
        format!("layers: {}", layers.join(" → "))
    }
}

/// The check behind "verify now", on a fetched export.
pub(crate) fn check_log(
    bytes: Vec<u8>,
    coordinator: Option<&PeerIdentity>,
    witnessed: Option<&SignedTreeHead>,
    jobs: &[(String, String)],
    (name, id): &(String, String),
) -> Verification {
    let bytes: Arc<[u8]> = Arc::from(bytes);
    let mut lines = Vec::new();
    let pinned: Option<[u8; 32]> = coordinator.and_then(|c| c.public_key.clone().try_into().ok());
    // Without the coordinator's certified key the log proves only its own consistency.
    let mut ok = pinned.is_some();
    if pinned.is_none() {
        lines.push(
            "NOT VERIFIED: the coordinator has not been heard yet, so its key is unknown and \
             the log's signer cannot be checked"
                .into(),
        );
    }
    let v = match confide_governance::audit::verify_export(&bytes, pinned.as_ref().map(|k| &k[..]))
    {
        Ok(v) => v,
        Err(e) => {
            return Verification {
                at_ms: now_ms(),
                ok: false,
                lines: vec![format!("the log does not verify: {e}")],
                entries: Vec::new(),
                older: 0,
                export: Some(bytes),
            };
        }
    };
    lines.push(format!(
        "verified: {} entries, every leaf and the root recomputed, the head's signature checked{}",
        v.head.size,
        if pinned.is_some() {
            " against the coordinator's certified key"
        } else {
            ""
        }
    ));
    lines.push(format!(
        "cosigned by {} witness(es){}",
        v.witnesses.len(),
        if v.witnesses.contains(id) {
            ", this node among them"
        } else {
            ""
        }
    ));
    let (consistent, line) = consistency(witnessed, &v);
    ok &= consistent;
    lines.extend(line);
    let mut entries = entries_of(&v, jobs, (name, id));
    let older = entries.len().saturating_sub(MAX_AUDIT_ROWS);
    entries.drain(..older);
    Verification {
        at_ms: now_ms(),
        ok,
        lines,
        entries,
        older,
        export: Some(bytes),
    }
}

/// Whether the fetched log `v` extends the head this node cosigned (`witnessed`), by an
/// RFC 9162 consistency proof, and what to say of it.
fn consistency(
    witnessed: Option<&SignedTreeHead>,
    v: &confide_governance::audit::VerifiedLog,
) -> (bool, Option<String>) {
    let log_id = hex::decode(&v.log.log_public_key)
        .map(|k| confide_governance::identity::party_id(&k))
        .unwrap_or_default();
    let Some(w) = witnessed else {
        return (
            true,
            Some(
                "this node has cosigned no head of this log yet: no consistency proof to check"
                    .into(),
            ),
        );
    };
    if w.log_id != log_id {
        return (
            false,
            Some(format!(
                "ALERT: the cosigned head is of log {}, the fetched log is {log_id}",
                w.log_id
            )),
        );
    }
    match w.unverified_head() {
        Ok(old) if old.size == 0 => (true, None),
        Ok(old) if old.size <= v.head.size => {
            let proof = usize::try_from(old.size)
                .ok()
                .and_then(|n| confide_governance::merkle::consistency_proof(n, &v.leaves));
            let consistent = proof.is_some_and(|p| {
                confide_governance::merkle::verify_consistency(
                    old.size,
                    v.head.size,
                    &old.root,
                    &v.head.root,
                    &p,
                )
            });
            let line = if consistent {
                format!(
                    "consistent: the log extends the head of {} entries this node cosigned \
                     (RFC 9162 consistency proof)",
                    old.size
                )
            } else {
                format!(
                    "ALERT: the log does not extend the head of {} entries this node cosigned",
                    old.size
                )
            };
            (consistent, Some(line))
        }
        Ok(old) => (
            false,
            Some(format!(
                "ALERT: the log has {} entries, fewer than the {} this node cosigned (a \
                 rollback)",
                v.head.size, old.size
            )),
        ),
        Err(e) => (false, Some(format!("the cosigned head is unreadable: {e}"))),
    }
}

/// The entries of the log `v` about `jobs` (by hash or id), those by or about this node
/// (`name`, `id`) marked.
fn entries_of(
    v: &confide_governance::audit::VerifiedLog,
    jobs: &[(String, String)],
    (name, id): (&String, &String),
) -> Vec<AuditRow> {
    v.log
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let job = e["job"].as_str().unwrap_or("");
            if job.is_empty() || !jobs.iter().any(|(h, j)| h == job || j == job) {
                return None;
            }
            let actor = e["actor"].as_str().unwrap_or("").to_string();
            let detail = &e["detail"];
            let mine = actor == *name
                || actor == *id
                || [&detail["owner"], &detail["participant"], &detail["id"]]
                    .iter()
                    .any(|v| v.as_str() == Some(name) || v.as_str() == Some(id));
            Some(AuditRow {
                index: i as u64,
                kind: e["kind"].as_str().unwrap_or("").to_string(),
                job: job.to_string(),
                actor,
                time: e["time"].as_str().unwrap_or("").to_string(),
                mine,
            })
        })
        .collect()
}

/// The remaining-ε burn-down of one dataset as an inline SVG (numbers only): the lifetime
/// budget at the first debit, then the remaining budget after each debit not released.
fn burn_down(dataset: &str, lifetime: Option<f64>, history: &[LedgerEntry], now_ms: u64) -> String {
    let debits: Vec<&LedgerEntry> = history
        .iter()
        .filter(|h| h.state != EntryState::Released)
        .collect();
    let Some(life) = lifetime.filter(|l| *l > 0.0) else {
        return String::new();
    };
    let (w, h, pad) = (560.0_f64, 180.0_f64, 40.0_f64);
    let t0 = debits.first().map_or(now_ms / 1000, |d| d.debited_at) as f64;
    let t1 = ((now_ms / 1000) as f64).max(t0 + 1.0);
    let x = |t: f64| pad + (t - t0) / (t1 - t0) * (w - 2.0 * pad);
    let y = |e: f64| pad / 2.0 + (1.0 - (e / life).clamp(0.0, 1.0)) * (h - pad);
    let mut points = vec![format!("{:.1},{:.1}", x(t0), y(life))];
    let mut spent = 0.0;
    for d in &debits {
        let t = d.debited_at as f64;
        points.push(format!("{:.1},{:.1}", x(t), y(life - spent)));
        spent += d.cost.epsilon;
        points.push(format!("{:.1},{:.1}", x(t), y(life - spent)));
    }
    points.push(format!("{:.1},{:.1}", x(t1), y(life - spent)));
    let label = format!(
        "Remaining privacy budget of {}: from ε {} to ε {} over {} debits",
        escape(dataset),
        eps(life),
        eps(life - spent),
        debits.len()
    );
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-labelledby=\"chart-{id}\">\
         <title id=\"chart-{id}\">{label}</title>\
         <line x1=\"{pad}\" y1=\"{top}\" x2=\"{pad}\" y2=\"{bottom}\" stroke=\"#555\"/>\
         <line x1=\"{pad}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#555\"/>\
         <text x=\"4\" y=\"{ty}\" font-size=\"11\" fill=\"#222\">{life}</text>\
         <text x=\"4\" y=\"{bottom}\" font-size=\"11\" fill=\"#222\">0</text>\
         <text x=\"{pad}\" y=\"{h}\" font-size=\"11\" fill=\"#222\">first debit</text>\
         <text x=\"{nowx}\" y=\"{h}\" font-size=\"11\" fill=\"#222\">now</text>\
         <polyline fill=\"none\" stroke=\"#0b5394\" stroke-width=\"2\" points=\"{points}\"/></svg>",
        id = hex::encode(&confide_crypto::sha256(dataset.as_bytes())[..6]),
        top = pad / 2.0,
        bottom = h - pad / 2.0,
        right = w - pad,
        ty = pad / 2.0 + 4.0,
        life = eps(life),
        nowx = w - pad - 20.0,
        points = points.join(" "),
    )
}

/// A job's held-out accuracy and log-loss after each round as an inline SVG (numbers only),
/// or nothing when no round was evaluated.
pub(crate) fn curves(job: &str, history: &[confide_net::coordinator::RoundRecord]) -> String {
    let acc: Vec<(u32, f64)> = history
        .iter()
        .filter_map(|r| r.test_accuracy.map(|a| (r.round, a)))
        .collect();
    let loss: Vec<(u32, f64)> = history
        .iter()
        .filter_map(|r| r.test_log_loss.map(|l| (r.round, l)))
        .filter(|(_, l)| l.is_finite())
        .collect();
    if acc.is_empty() && loss.is_empty() {
        return String::new();
    }
    // The legend sits above the plot, which spans [top, bottom].
    let (w, h, pad, top) = (560.0_f64, 220.0_f64, 40.0_f64, 40.0_f64);
    let bottom = h - pad / 2.0;
    let last = history.iter().map(|r| r.round).max().unwrap_or(1).max(2);
    let x = |r: u32| pad + f64::from(r - 1) / f64::from(last - 1) * (w - 2.0 * pad);
    let top_loss = loss
        .iter()
        .map(|(_, l)| *l)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let y = |v: f64, scale: f64| top + (1.0 - (v / scale).clamp(0.0, 1.0)) * (bottom - top);
    let line = |pts: &[(u32, f64)], top: f64| {
        pts.iter()
            .map(|(r, v)| format!("{:.1},{:.1}", x(*r), y(*v, top)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let label = format!(
        "Held-out accuracy (blue, 0 to 1) and log-loss (orange, 0 to {}) of {} after each of {} \
         rounds; last accuracy {}",
        eps(top_loss),
        escape(job),
        history.len(),
        acc.last().map_or("—".into(), |(_, a)| eps(*a))
    );
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-labelledby=\"curves-title\">\
         <title id=\"curves-title\">{label}</title>\
         <line x1=\"{pad}\" y1=\"{top}\" x2=\"{pad}\" y2=\"{bottom}\" stroke=\"#555\"/>\
         <line x1=\"{pad}\" y1=\"{bottom}\" x2=\"{right}\" y2=\"{bottom}\" stroke=\"#555\"/>\
         <text x=\"4\" y=\"{ty}\" font-size=\"11\" fill=\"#222\">1</text>\
         <text x=\"4\" y=\"{bottom}\" font-size=\"11\" fill=\"#222\">0</text>\
         <text x=\"{pad}\" y=\"{h}\" font-size=\"11\" fill=\"#222\">round 1</text>\
         <text x=\"{lastx}\" y=\"{h}\" font-size=\"11\" fill=\"#222\">round {last}</text>\
         <text x=\"{pad}\" y=\"14\" font-size=\"11\" fill=\"#0b5394\">— accuracy (0 to 1)</text>\
         <text x=\"{legendx}\" y=\"14\" font-size=\"11\" fill=\"#8a4504\">- - log-loss (0 to {toploss})</text>\
         <polyline fill=\"none\" stroke=\"#0b5394\" stroke-width=\"2\" points=\"{acc}\"/>\
         <polyline fill=\"none\" stroke=\"#b45f06\" stroke-width=\"2\" stroke-dasharray=\"5 3\" points=\"{loss}\"/></svg>",
        right = w - pad,
        ty = top + 4.0,
        lastx = w - pad - 40.0,
        legendx = pad + 180.0,
        toploss = eps(top_loss),
        acc = line(&acc, 1.0),
        loss = line(&loss, top_loss),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_escapes_the_dataset_name_and_draws_each_debit() {
        let entry = |t: u64, e: f64, state| LedgerEntry {
            job_id: "j".into(),
            cost: confide_dp::ledger::Budget::new(e, 1e-6).expect("budget"),
            state,
            spent_after: confide_dp::ledger::Budget::ZERO,
            ordinal: 0,
            debited_at: t,
            started_at: None,
            finished_at: None,
            released_at: None,
        };
        let svg = burn_down(
            "<x>",
            Some(10.0),
            &[
                entry(1_000, 2.0, EntryState::Finished),
                entry(2_000, 3.0, EntryState::Released),
                entry(3_000, 1.0, EntryState::Debited),
            ],
            4_000_000,
        );
        assert!(svg.contains("&lt;x&gt;") && !svg.contains("<x>"));
        assert!(
            svg.contains("from ε 10.0000 to ε 7.0000 over 2 debits"),
            "{svg}"
        );
        assert_eq!(burn_down("d", None, &[], 0), "");
    }

    #[test]
    fn the_curves_show_only_evaluated_rounds_and_escape_the_job() {
        let round = |r: u32, acc: Option<f64>| confide_net::coordinator::RoundRecord {
            round: r,
            contributors: vec!["a".into(), "b".into()],
            excluded: Vec::new(),
            test_accuracy: acc,
            test_auc: None,
            test_log_loss: acc.map(|a| 1.0 - a),
            test_correct: None,
            seconds: 0.1,
            aggregation_seconds: 0.01,
        };
        assert_eq!(curves("j", &[round(1, None), round(2, None)]), "");
        let svg = curves("<j>", &[round(1, Some(0.5)), round(2, Some(0.9))]);
        assert!(svg.contains("&lt;j&gt;") && !svg.contains("<j>"), "{svg}");
        assert!(svg.contains("last accuracy 0.9000"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 2);
    }

    #[test]
    fn a_problem_page_yields_its_message_to_the_cli() {
        let page = ProblemPage {
            title: "Forbidden".into(),
            message: "refused: <no>".into(),
        }
        .render()
        .expect("renders");
        assert_eq!(text_of(&page), "refused: <no>");
        assert_eq!(
            unescape("a &amp; b &#x27;c&#39; &#60;&nope; &"),
            "a & b 'c' <&nope; &"
        );
        assert_eq!(text_of("plain\n"), "plain");
    }
}
