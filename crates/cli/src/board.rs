//! The coordinator's dashboard for operators and model owners, served by `confide coordinator
//! serve` on its admin port under `/ui/`: the jobs a party may see (its own as model owner or
//! recipient; every job for the operator) with their state history, their rounds with
//! aggregate figures only (owners counted, never named; the held-out accuracy and loss as
//! charts), the model's download for its recipients, the connected nodes (operator) and the
//! audit log's head.
//!
//! A session is bound to a federation party's key: `confide job login` signs the daemon's
//! challenge with the party's identity key and sends its certificate, which the coordinator
//! checks against the federation's CA and revocation list ([`crate::sessions`]); the
//! revocation list is checked again at every page. A party sees the jobs `confide job list`
//! shows it; a job's rounds (from its report) only its recipients, who may download the report
//! with `confide job download`, and the operator, whose coordinator computed them; the model
//! only its recipients that are model owners, as `confide job download`; the nodes and the
//! audit log's head only the operator.

use std::sync::{Arc, OnceLock};

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use confide_core::Role;
use confide_net::control::ControlService;
use confide_net::pki::PeerIdentity;
use confide_service::JobRecord;
use serde::Deserialize;

use crate::dashboard::{enter_with, html, logout_with, problem, see_other};
use crate::sessions::SessionBook;

/// The coordinator as its dashboard sees it.
pub(crate) struct Board {
    pub control: ControlService,
    pub ca: Vec<u8>,
    pub name: String,
    pub admin: String,
    pub audit: confide_governance::audit::AuditLog,
    pub sessions: SessionBook,
}

/// The routes' state: the board, once the store has recovered.
type Cell = Arc<OnceLock<Arc<Board>>>;

/// What `confide job login` sends.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardLogin {
    /// The party's certificate (DER), hex.
    pub certificate: String,
    /// The challenge, as the daemon gave it.
    pub nonce: String,
    /// Ed25519 signature over `crate::dashboard::login_message(coordinator id, nonce)`, hex.
    pub signature: String,
}

impl Board {
    fn operator(&self) -> &str {
        self.control.operator()
    }

    /// The party a session stands for, as `may_see` checks it.
    fn peer(&self, s: &Who) -> PeerIdentity {
        PeerIdentity {
            name: String::new(),
            role: if s.operator {
                Role::Coordinator
            } else {
                Role::ModelOwner
            },
            public_key: Vec::new(),
            id: s.party.clone(),
        }
    }

    fn login(&self, req: &BoardLogin) -> Result<String, (StatusCode, String)> {
        let refused = |why: String| (StatusCode::FORBIDDEN, why);
        let der = hex::decode(&req.certificate)
            .map_err(|_| refused("the certificate is not hex".into()))?;
        let who = confide_net::pki::verify_party_certificate(&der, &self.ca)
            .map_err(|e| refused(format!("the certificate: {e}")))?;
        self.control.revocations().check(&who.id).map_err(refused)?;
        let allowed = who.role == Role::ModelOwner
            || (who.role == Role::Coordinator && who.id == self.operator());
        if !allowed {
            return Err(refused(format!(
                "`{}` has role {}: this dashboard is for model owners and this coordinator's \
                 operator",
                who.name, who.role
            )));
        }
        self.sessions
            .fresh(&req.nonce)
            .map_err(|m| refused(m.into()))?;
        let key = <[u8; 32]>::try_from(who.public_key.as_slice())
            .map_err(|_| refused("the certificate's key is not Ed25519".into()))?;
        let sig = hex::decode(&req.signature)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s).ok())
            .ok_or_else(|| refused("the signature is not 64 bytes of hex".into()))?;
        confide_crypto::sign::verify(
            &key,
            &crate::dashboard::login_message(self.operator(), &req.nonce),
            &sig,
        )
        .map_err(|_| refused("the signature does not verify".into()))?;
        self.sessions
            .admit(
                &req.nonce,
                (
                    &who.id,
                    &format!("{} ({})", who.name, who.role),
                    &who.role.to_string(),
                ),
            )
            .map_err(|(c, m)| (c, m.to_string()))
    }

    fn visible(&self, who: &Who) -> Result<Vec<JobRecord>, (StatusCode, String)> {
        let peer = self.peer(who);
        let mut all = self
            .control
            .jobs()
            .list()
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        all.retain(|r| self.control.may_see(r, &peer));
        all.reverse();
        Ok(all)
    }

    fn record(&self, who: &Who, hash: &str) -> Result<JobRecord, (StatusCode, String)> {
        let not_found = || (StatusCode::NOT_FOUND, format!("no job {hash}"));
        let h = confide_service::jobs::parse_hash(hash).ok_or_else(not_found)?;
        let r = self
            .control
            .jobs()
            .get(&h)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .ok_or_else(not_found)?;
        if self.control.may_see(&r, &self.peer(who)) {
            Ok(r)
        } else {
            Err(not_found())
        }
    }
}

pub(crate) struct Chrome {
    pub who: String,
    pub party: String,
    pub csrf: String,
    pub name: String,
    pub operator: bool,
}

/// Whom a session stands for.
pub(crate) struct Who {
    pub party: String,
    /// The coordinator's own certificate (its operator), not a model owner's.
    pub operator: bool,
}

impl Chrome {
    fn who(&self) -> Who {
        Who {
            party: self.party.clone(),
            operator: self.operator,
        }
    }
}

struct JobRow {
    hash: String,
    job_id: String,
    state: String,
    progress: String,
    model_owner: String,
    submitted: String,
    updated: String,
}

#[derive(Template)]
#[template(path = "coordinator/jobs.html")]
struct JobsPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    rows: Vec<JobRow>,
}

struct EventRow {
    time: String,
    actor: String,
    what: String,
    state: String,
}

struct RoundRow {
    round: u32,
    contributors: usize,
    excluded: usize,
    accuracy: String,
    loss: String,
    seconds: String,
}

struct Field {
    name: &'static str,
    value: String,
}

#[derive(Template)]
#[template(path = "coordinator/job.html")]
struct JobPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    hash: String,
    job_id: String,
    fields: Vec<Field>,
    events: Vec<EventRow>,
    rounds: Vec<RoundRow>,
    chart: String,
    evaluated: bool,
    download: bool,
    recipient: bool,
    shows_rounds: bool,
}

struct NodeRow {
    name: String,
    id: String,
    last: String,
    connected: bool,
}

#[derive(Template)]
#[template(path = "coordinator/nodes.html")]
struct NodesPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    rows: Vec<NodeRow>,
}

#[derive(Template)]
#[template(path = "coordinator/audit.html")]
struct AuditPage<'a> {
    c: &'a Chrome,
    nav: &'static str,
    fields: Vec<Field>,
}

#[derive(Template)]
#[template(path = "coordinator/login.html")]
struct LoginPage {
    name: String,
    admin: String,
}

fn when(ms: u64) -> String {
    crate::dashboard_views::when(ms)
}

pub(crate) type PageResult = Result<String, (StatusCode, String)>;

fn rendered(r: askama::Result<String>) -> PageResult {
    r.map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

impl Board {
    pub(crate) fn jobs_page(&self, c: &Chrome) -> PageResult {
        let rows = self
            .visible(&c.who())?
            .into_iter()
            .map(|r| JobRow {
                progress: match &r.state {
                    confide_service::JobState::Running { round, .. } => {
                        format!("round {round} of {}", r.rounds)
                    }
                    confide_service::JobState::Completed => format!("{0} of {0}", r.rounds),
                    _ => format!("{} rounds", r.rounds),
                },
                state: r.state.describe(),
                model_owner: r.model_owner.chars().take(12).collect(),
                submitted: when(r.submitted_ms),
                updated: when(r.updated_ms),
                hash: r.hash,
                job_id: r.job_id,
            })
            .collect();
        rendered(
            JobsPage {
                c,
                nav: "jobs",
                rows,
            }
            .render(),
        )
    }

    pub(crate) fn job_page(&self, c: &Chrome, hash: &str) -> PageResult {
        let r = self.record(&c.who(), hash)?;
        let h = confide_service::jobs::parse_hash(&r.hash)
            .ok_or((StatusCode::INTERNAL_SERVER_ERROR, "bad hash".to_string()))?;
        let jobs = self.control.jobs();
        let internal =
            |e: confide_service::ServiceError| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        let events = jobs
            .events(&h, 0)
            .map_err(internal)?
            .into_iter()
            .map(|e| EventRow {
                time: when(e.time_ms),
                actor: e.actor.chars().take(24).collect(),
                what: e.what,
                state: e.state.describe(),
            })
            .collect();
        let recipient = r.recipients.contains(&c.party);
        let result = jobs.result(&h).map_err(internal)?;
        let done = result.is_some();
        // The rounds come from the report: its recipients' (`confide job download`) and the
        // operator's, whose coordinator computed them.
        let report: Option<confide_net::coordinator::JobReport> = result
            .filter(|_| recipient || c.operator)
            .and_then(|(json, _)| match serde_json::from_str(&json) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!("job `{}`: its stored report: {e}", r.job_id);
                    None
                }
            });
        let history = report.as_ref().map_or(&[][..], |r| &r.history[..]);
        let rounds = history
            .iter()
            .map(|x| RoundRow {
                round: x.round,
                contributors: x.contributors.len(),
                excluded: x.excluded.len(),
                accuracy: x.test_accuracy.map_or("—".into(), |a| format!("{a:.4}")),
                loss: x.test_log_loss.map_or("—".into(), |l| format!("{l:.4}")),
                seconds: format!("{:.3}", x.seconds),
            })
            .collect();
        let fields = vec![
            Field {
                name: "State",
                value: r.state.describe(),
            },
            Field {
                name: "Manifest hash",
                value: r.hash.clone(),
            },
            Field {
                name: "Model owner",
                value: r.model_owner.clone(),
            },
            Field {
                name: "Participants",
                value: r.participants.join(", "),
            },
            Field {
                name: "Approved by",
                value: format!("{} of {}", r.approved.len(), r.participants.len()),
            },
            Field {
                name: "Recipients",
                value: r.recipients.join(", "),
            },
            Field {
                name: "Rounds",
                value: r.rounds.to_string(),
            },
            Field {
                name: "Submitted",
                value: when(r.submitted_ms),
            },
        ];
        rendered(
            JobPage {
                c,
                nav: "jobs",
                chart: crate::dashboard_views::curves(&r.job_id, history),
                evaluated: history.iter().any(|x| x.test_accuracy.is_some()),
                download: recipient && !c.operator && done,
                recipient: recipient && !c.operator,
                shows_rounds: recipient || c.operator,
                hash: r.hash,
                job_id: r.job_id,
                fields,
                events,
                rounds,
            }
            .render(),
        )
    }

    fn nodes_page(&self, c: &Chrome) -> PageResult {
        if !c.operator {
            return Err((
                StatusCode::FORBIDDEN,
                "only this coordinator's operator sees its nodes".into(),
            ));
        }
        let now = confide_service::jobs::millis(time::OffsetDateTime::now_utc());
        let mut rows: Vec<NodeRow> = self
            .control
            .nodes()
            .list()
            .into_iter()
            .map(|n| NodeRow {
                connected: now.saturating_sub(n.last_ms)
                    <= u64::try_from(confide_net::fleet::CONNECTED_WITHIN.as_millis())
                        .unwrap_or(u64::MAX),
                last: when(n.last_ms),
                name: n.name,
                id: n.id,
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rendered(
            NodesPage {
                c,
                nav: "nodes",
                rows,
            }
            .render(),
        )
    }

    fn audit_page(&self, c: &Chrome) -> PageResult {
        if !c.operator {
            return Err((
                StatusCode::FORBIDDEN,
                "only this coordinator's operator sees its audit log here; the nodes check it \
                 on their dashboards (\"verify now\")"
                    .into(),
            ));
        }
        let err = |e: confide_governance::audit::AuditError| {
            (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        };
        let mut fields = vec![
            Field {
                name: "Log (this coordinator's id)",
                value: self.operator().to_string(),
            },
            Field {
                name: "Entries",
                value: self.audit.size().map_err(err)?.to_string(),
            },
        ];
        match self.audit.latest_head().map_err(err)? {
            Some(h) => {
                fields.push(Field {
                    name: "Last signed head: entries",
                    value: h.size.to_string(),
                });
                fields.push(Field {
                    name: "Root",
                    value: h.root.clone(),
                });
                fields.push(Field {
                    name: "Signed at",
                    value: when(h.timestamp),
                });
            }
            None => fields.push(Field {
                name: "Last signed head",
                value: "none yet".into(),
            }),
        }
        rendered(
            AuditPage {
                c,
                nav: "audit",
                fields,
            }
            .render(),
        )
    }
}

/// Renders a page for the request's session, off the async threads.
async fn page(
    cell: &Cell,
    headers: &HeaderMap,
    render: impl FnOnce(&Board, &Chrome) -> PageResult + Send + 'static,
) -> Response {
    let Some(b) = cell.get().cloned() else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the coordinator is recovering",
        );
    };
    let Some(s) = b.sessions.session(headers) else {
        return see_other("/ui/login");
    };
    if let Err(why) = b.control.revocations().check(&s.party) {
        return problem(StatusCode::FORBIDDEN, &why);
    }
    let chrome = Chrome {
        operator: s.role == Role::Coordinator.to_string() && s.party == b.operator(),
        who: s.name,
        party: s.party,
        csrf: s.csrf,
        name: b.name.clone(),
    };
    crate::dashboard::off_thread(b, move |b| render(b, &chrome)).await
}

/// The dashboard's routes; they answer 503 until `cell` is set.
pub(crate) fn routes(cell: Cell) -> Router {
    crate::dashboard::common_routes("/ui/jobs")
        .route("/ui/login", get(login_page))
        .route("/ui/login/challenge", post(challenge))
        .route("/ui/login/session", post(login))
        .route("/ui/enter/{ticket}", get(enter))
        .route("/ui/logout", post(logout))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/{hash}", get(job))
        .route("/ui/jobs/{hash}/model.safetensors", get(model))
        .route("/ui/jobs/{hash}/report.json", get(report))
        .route("/ui/nodes", get(nodes))
        .route("/ui/audit", get(audit))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(cell)
}

/// The answer while the store recovers (the routes are served before it is open).
fn recovering() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the coordinator is recovering",
    )
}

async fn login_page(State(cell): State<Cell>) -> Response {
    let Some(b) = cell.get().cloned() else {
        return recovering();
    };
    html(
        LoginPage {
            name: b.name.clone(),
            admin: b.admin.clone(),
        }
        .render(),
    )
}

async fn challenge(State(cell): State<Cell>) -> Response {
    match cell.get() {
        Some(b) => serde_json::json!({
            "nonce": b.sessions.challenge(),
            "coordinator_id": b.operator(),
            "coordinator": b.name,
        })
        .to_string()
        .into_response(),
        None => recovering(),
    }
}

async fn login(State(cell): State<Cell>, body: axum::body::Bytes) -> Response {
    let Some(b) = cell.get().cloned() else {
        return recovering();
    };
    let req: BoardLogin = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("not a login: {e}")),
    };
    match b.login(&req) {
        Ok(ticket) => serde_json::json!({ "path": format!("/ui/enter/{ticket}") })
            .to_string()
            .into_response(),
        Err((code, why)) => problem(code, &why),
    }
}

async fn enter(State(cell): State<Cell>, Path(ticket): Path<String>) -> Response {
    match cell.get() {
        Some(b) => enter_with(&b.sessions, &ticket, "/ui/jobs"),
        None => recovering(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(cell): State<Cell>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    match cell.get() {
        Some(b) => logout_with(&b.sessions, &headers, &f.csrf, "/ui/login"),
        None => recovering(),
    }
}

async fn jobs(State(cell): State<Cell>, headers: HeaderMap) -> Response {
    page(&cell, &headers, |b, c| b.jobs_page(c)).await
}

async fn job(State(cell): State<Cell>, headers: HeaderMap, Path(hash): Path<String>) -> Response {
    page(&cell, &headers, move |b, c| b.job_page(c, &hash)).await
}

async fn nodes(State(cell): State<Cell>, headers: HeaderMap) -> Response {
    page(&cell, &headers, |b, c| b.nodes_page(c)).await
}

async fn audit(State(cell): State<Cell>, headers: HeaderMap) -> Response {
    page(&cell, &headers, |b, c| b.audit_page(c)).await
}

/// A completed job's model or report, for its recipients only (as `confide job download`).
async fn download(cell: &Cell, headers: &HeaderMap, hash: String, model: bool) -> Response {
    let Some(b) = cell.get().cloned() else {
        return recovering();
    };
    let Some(s) = b.sessions.session(headers) else {
        return see_other("/ui/login");
    };
    if let Err(why) = b.control.revocations().check(&s.party) {
        return problem(StatusCode::FORBIDDEN, &why);
    }
    let who = Who {
        operator: s.role == Role::Coordinator.to_string() && s.party == b.operator(),
        party: s.party,
    };
    let found = tokio::task::spawn_blocking(move || {
        let r = b.record(&who, &hash)?;
        // As `confide job download`: the job's recipients, model owners only.
        if who.operator || !r.recipients.contains(&who.party) {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "only job `{}`'s recipients may download its model",
                    r.job_id
                ),
            ));
        }
        let h = confide_service::jobs::parse_hash(&r.hash)
            .ok_or((StatusCode::INTERNAL_SERVER_ERROR, "bad hash".to_string()))?;
        b.control
            .jobs()
            .result(&h)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .ok_or((
                StatusCode::CONFLICT,
                format!("job `{}` has no model yet", r.job_id),
            ))
    })
    .await;
    match found {
        Ok(Ok((report, params))) => {
            let (kind, name, body) = if model {
                ("application/octet-stream", "model.safetensors", params)
            } else {
                ("application/json", "report.json", report.into_bytes())
            };
            (
                [
                    (header::CONTENT_TYPE, kind.to_string()),
                    (
                        header::CONTENT_DISPOSITION,
                        format!("attachment; filename=\"{name}\""),
                    ),
                ],
                body,
            )
                .into_response()
        }
        Ok(Err((code, why))) => problem(code, &why),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn model(State(cell): State<Cell>, headers: HeaderMap, Path(hash): Path<String>) -> Response {
    download(&cell, &headers, hash, true).await
}

async fn report(
    State(cell): State<Cell>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Response {
    download(&cell, &headers, hash, false).await
}

/// `confide job login`: opens a session on the coordinator's dashboard.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The coordinator's admin address (`confide coordinator serve --admin`).
    #[arg(
        long,
        env = "CONFIDE_COORDINATOR_ADMIN",
        default_value = "127.0.0.1:7102"
    )]
    admin: String,
    /// Federation directory with ca.crt and this party's certificate and key.
    #[arg(long, env = "CONFIDE_FED")]
    fed: std::path::PathBuf,
    /// This party's name (a model owner, or the coordinator's own name for its operator).
    #[arg(long, env = "CONFIDE_NAME")]
    name: String,
    /// The coordinator's party id, when known: a daemon at --admin with another id is
    /// refused before anything is signed (no other daemon can pass on its challenge).
    #[arg(long)]
    coordinator_id: Option<String>,
    /// The dashboard's address as a browser reaches it (for example the TLS proxy in front of
    /// the admin port); the printed address starts with it. Default: http://<--admin>.
    #[arg(long)]
    url: Option<String>,
    #[command(flatten)]
    passphrase: crate::governance::Passphrase,
}

/// Runs `confide job login`: prints the one-time address that opens the dashboard.
pub fn login_command(args: &LoginArgs) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let creds = confide_net::pki::Credentials::load_with(
        &args.fed,
        &args.name,
        args.passphrase.get()?.as_deref(),
    )?;
    let (code, body) = crate::node_serve::http(&args.admin, "POST", "/ui/login/challenge", b"")?;
    if code != 200 {
        anyhow::bail!(
            "the coordinator answered {code}: {}",
            crate::dashboard_views::text_of(&body)
        );
    }
    let c: serde_json::Value = serde_json::from_str(&body).context("malformed challenge")?;
    let nonce = c["nonce"].as_str().context("no nonce")?;
    let coordinator = c["coordinator_id"].as_str().context("no coordinator id")?;
    if let Some(expected) = &args.coordinator_id
        && expected != coordinator
    {
        anyhow::bail!(
            "the daemon at {} is coordinator {coordinator}, not {expected}: nothing was signed",
            args.admin
        );
    }
    eprintln!(
        "signing a login to coordinator `{}` ({coordinator}) as `{}`",
        c["coordinator"].as_str().unwrap_or("?"),
        creds.name
    );
    let req = BoardLogin {
        certificate: hex::encode(creds.cert_der()?),
        nonce: nonce.to_string(),
        signature: hex::encode(
            creds
                .signing_key()?
                .sign(&crate::dashboard::login_message(coordinator, nonce)),
        ),
    };
    crate::dashboard::finish_login(&args.admin, &req, args.url.as_deref())
}
