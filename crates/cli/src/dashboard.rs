//! The owner's dashboard, served by `confide node serve` on its admin port under `/ui/`.
//!
//! Five views (inbox, jobs, budget, audit, health), rendered on the server from askama
//! templates compiled into the binary; the only other files are one stylesheet and nothing
//! else, served from the binary too, so a page loads nothing from outside the daemon.
//!
//! Authentication: a local session bound to the owner's approval key. `confide node login`
//! asks the daemon for a challenge, signs it with that key (the one the daemon knows by
//! `--approver`) and gets a one-time address; opening it sets a session cookie (HttpOnly,
//! SameSite=Strict, 8 hours). Every page without a session redirects to the login page,
//! which says how to get one; every action without one is refused.
//!
//! Actions (approve, reject, revoke, verify now) are forms that carry the session's CSRF
//! token, are refused from another site (`Sec-Fetch-Site`), and change state only through
//! a statement signed by the owner's key: the daemon holds that key only encrypted
//! (`--approver-key`), and opens it with the passphrase typed into the form for that one
//! signature. Without `--approver-key`, each page prints the `confide node inbox` command
//! instead. Every response carries a strict Content-Security-Policy and the other safe
//! default headers (`confide_net::admin`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use confide_governance::identity::Identity;
use confide_governance::manifest::SignedManifest;
use confide_governance::statement::{Action, SignedStatement, Statement};
use serde::Deserialize;

use crate::dashboard_views as views;
use crate::node_serve::Inbox;
use crate::sessions::{Refused, SessionBook};

/// A wrong passphrase costs this long (the key file's own derivation adds to it).
const WRONG_PASSPHRASE_DELAY: Duration = Duration::from_secs(1);

/// The message an owner's key signs to open a dashboard session.
pub fn login_message(node_id: &str, nonce: &str) -> Vec<u8> {
    format!("confide dashboard login v1\n{node_id}\n{nonce}").into_bytes()
}

/// What `confide node login` sends: the owner's public key, the challenge, the signature.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The approval key's public key, hex.
    pub public_key: String,
    /// The challenge, as the daemon gave it.
    pub nonce: String,
    /// Ed25519 signature over [`login_message`], hex.
    pub signature: String,
}

/// The dashboard's state: the node daemon's, read-only, plus the sessions.
#[derive(Clone)]
pub(crate) struct Dashboard {
    pub(crate) view: Arc<views::Node>,
    inbox: Inbox,
    sessions: SessionBook,
    /// The owner's approval key file (encrypted), when actions may be signed in the page.
    approver_key: Option<PathBuf>,
    /// One "verify now" at a time.
    verifying: Arc<tokio::sync::Mutex<()>>,
}

impl Dashboard {
    pub(crate) fn new(view: Arc<views::Node>, inbox: Inbox, approver_key: Option<PathBuf>) -> Self {
        Self {
            sessions: SessionBook::new(&view.node_id),
            view,
            inbox,
            approver_key,
            verifying: Arc::default(),
        }
    }

    /// Checks a signed login and returns a one-time ticket.
    fn login(&self, req: &LoginRequest) -> Result<String, (StatusCode, String)> {
        let refused = |why: &str| (StatusCode::FORBIDDEN, why.to_string());
        let Some(approver) = self.view.approver.as_deref() else {
            return Err(refused(
                "this node daemon has no --approver: no key may open its dashboard",
            ));
        };
        let key = hex::decode(&req.public_key)
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or_else(|| refused("the public key is not 32 bytes of hex"))?;
        if confide_governance::identity::party_id(&key) != approver {
            return Err(refused(
                "this key is not the approval key of this node's owner",
            ));
        }
        self.sessions.fresh(&req.nonce).map_err(refused)?;
        let sig = hex::decode(&req.signature)
            .ok()
            .and_then(|s| <[u8; 64]>::try_from(s).ok())
            .ok_or_else(|| refused("the signature is not 64 bytes of hex"))?;
        confide_crypto::sign::verify(&key, &login_message(&self.view.node_id, &req.nonce), &sig)
            .map_err(|_| refused("the signature does not verify"))?;
        self.sessions
            .admit(&req.nonce, (approver, approver, "owner"))
            .map_err(|(c, m)| (c, m.to_string()))
    }

    /// The owner's key for a state-changing form: the session and CSRF checks of
    /// [`Dashboard::authorise`], then the key opened with the form's passphrase.
    async fn signer(
        &self,
        headers: &HeaderMap,
        csrf: &str,
        passphrase: String,
    ) -> Result<Identity, Refused> {
        self.sessions.authorise(headers, csrf)?;
        self.open_key(passphrase).await
    }

    /// The owner's approval key, opened with `passphrase` for one signature.
    async fn open_key(&self, passphrase: String) -> Result<Identity, Refused> {
        let Some(path) = self.approver_key.clone() else {
            return Err((
                StatusCode::CONFLICT,
                "this daemon was started without --approver-key: sign with the printed command",
            ));
        };
        let opened =
            tokio::task::spawn_blocking(move || Identity::load(&path, Some(&passphrase))).await;
        match opened {
            Ok(Ok(id)) => Ok(id),
            Ok(Err(e @ confide_governance::identity::IdentityError::Io { .. })) => {
                tracing::error!("the approval key: {e}");
                Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the approval key file cannot be read (see the daemon's log)",
                ))
            }
            Ok(Err(_)) => {
                tokio::time::sleep(WRONG_PASSPHRASE_DELAY).await;
                Err((
                    StatusCode::FORBIDDEN,
                    "refused: the passphrase does not open the owner's approval key",
                ))
            }
            Err(_) => Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the key could not be opened (see the daemon's log)",
            )),
        }
    }
}

/// A short page for an error, with its status.
pub(crate) fn problem(code: StatusCode, message: &str) -> Response {
    let page = views::ProblemPage {
        title: code.canonical_reason().unwrap_or("Error").to_string(),
        message: message.to_string(),
    };
    (code, html(page.render())).into_response()
}

pub(crate) fn html(rendered: askama::Result<String>) -> Response {
    match rendered {
        Ok(body) => ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response(),
        Err(e) => {
            tracing::error!("dashboard template: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered (see the daemon's log)\n",
            )
                .into_response()
        }
    }
}

pub(crate) fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// Renders a page off the async threads (pages read the stores).
async fn page(
    d: &Dashboard,
    headers: &HeaderMap,
    render: impl FnOnce(&views::Node, &views::Chrome) -> Result<String, (StatusCode, String)>
    + Send
    + 'static,
) -> Response {
    let Some(session) = d.sessions.session(headers) else {
        return see_other("/ui/login");
    };
    let chrome = views::Chrome {
        party: session.party,
        who: session.name,
        csrf: session.csrf,
        node: d.view.node.clone(),
        signs_here: d.approver_key.is_some(),
    };
    off_thread(d.view.clone(), move |view| render(view, &chrome)).await
}

/// Renders a page from `state` off the async threads (pages read the stores); a refusal
/// becomes a problem page.
pub(crate) async fn off_thread<T: Send + Sync + 'static>(
    state: Arc<T>,
    render: impl FnOnce(&T) -> Result<String, (StatusCode, String)> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(move || render(&state)).await {
        Ok(Ok(body)) => {
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
        }
        Ok(Err((code, message))) => problem(code, &message),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The routes both dashboards share: the root and `/ui` go to `home`, and the stylesheet.
pub(crate) fn common_routes<S: Clone + Send + Sync + 'static>(home: &'static str) -> Router<S> {
    Router::new()
        .route("/", get(move || async move { see_other(home) }))
        .route("/ui", get(move || async move { see_other(home) }))
        .route("/ui/", get(move || async move { see_other(home) }))
        .route("/ui/static/dashboard.css", get(stylesheet))
}

/// The second half of a login from the CLI: posts the signed `request` to the daemon at
/// `admin` and prints the one-time address under `base` (default `http://<admin>`).
pub(crate) fn finish_login(
    admin: &str,
    request: &impl serde::Serialize,
    base: Option<&str>,
) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let (code, body) = crate::node_serve::http(
        admin,
        "POST",
        "/ui/login/session",
        &serde_json::to_vec(request)?,
    )?;
    if code != 200 {
        eprintln!("error: refused: {}", views::text_of(&body));
        return Ok(crate::control::EXIT_REFUSED);
    }
    let r: serde_json::Value = serde_json::from_str(&body).context("malformed answer")?;
    let path = r["path"].as_str().context("no address")?;
    let base = base.map_or_else(|| format!("http://{admin}"), str::to_string);
    outln!("{}{path}", base.trim_end_matches('/'));
    eprintln!("open it within two minutes; it works once, and the session lasts 8 hours");
    Ok(0)
}

/// The dashboard's routes, under `/ui/`.
pub(crate) fn routes(d: Dashboard) -> Router {
    common_routes("/ui/inbox")
        .route("/ui/login", get(login_page))
        .route("/ui/login/challenge", post(challenge))
        .route("/ui/login/session", post(login))
        .route("/ui/enter/{ticket}", get(enter))
        .route("/ui/logout", post(logout))
        .route("/ui/inbox", get(inbox))
        .route("/ui/inbox/{hash}", get(inbox_job))
        .route("/ui/inbox/{hash}/approve", post(approve))
        .route("/ui/inbox/{hash}/reject", post(reject))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/{hash}", get(job))
        .route("/ui/jobs/{hash}/revoke", post(revoke))
        .route("/ui/budget", get(budget))
        .route("/ui/audit", get(audit))
        .route("/ui/audit/verify", post(verify))
        .route("/ui/audit/export", get(export))
        .route("/ui/health", get(health))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(d)
}

pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("../assets/dashboard.css"),
    )
        .into_response()
}

async fn login_page(State(d): State<Dashboard>) -> Response {
    html(
        views::LoginPage {
            node: d.view.node.clone(),
            admin: d.view.admin.clone(),
            has_approver: d.view.approver.is_some(),
        }
        .render(),
    )
}

async fn challenge(State(d): State<Dashboard>) -> Response {
    if d.view.approver.is_none() {
        return problem(
            StatusCode::FORBIDDEN,
            "this node daemon has no --approver: no key may open its dashboard",
        );
    }
    serde_json::json!({
        "nonce": d.sessions.challenge(),
        "node_id": d.view.node_id,
        "node": d.view.node,
    })
    .to_string()
    .into_response()
}

async fn login(State(d): State<Dashboard>, body: axum::body::Bytes) -> Response {
    let req: LoginRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(StatusCode::BAD_REQUEST, &format!("not a login: {e}")),
    };
    match d.login(&req) {
        Ok(ticket) => serde_json::json!({ "path": format!("/ui/enter/{ticket}") })
            .to_string()
            .into_response(),
        Err((code, why)) => problem(code, &why),
    }
}

async fn enter(State(d): State<Dashboard>, Path(ticket): Path<String>) -> Response {
    enter_with(&d.sessions, &ticket, "/ui/inbox")
}

/// Opens the session of a one-time ticket and goes to `home`.
pub(crate) fn enter_with(sessions: &SessionBook, ticket: &str, home: &str) -> Response {
    match sessions.enter(ticket) {
        Some((cookie, _)) => {
            let mut res = see_other(home);
            res.headers_mut().insert(header::SET_COOKIE, cookie);
            res
        }
        None => problem(
            StatusCode::FORBIDDEN,
            "this login address was used already or has expired: log in again",
        ),
    }
}

/// Ends the session of a logout form, and goes to `login`.
pub(crate) fn logout_with(
    sessions: &SessionBook,
    headers: &HeaderMap,
    csrf: &str,
    login: &str,
) -> Response {
    if let Err((code, why)) = sessions.authorise(headers, csrf) {
        return problem(code, why);
    }
    let mut res = see_other(login);
    if let Some(clear) = sessions.logout(headers) {
        res.headers_mut().insert(header::SET_COOKIE, clear);
    }
    res
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    logout_with(&d.sessions, &headers, &f.csrf, "/ui/login")
}

async fn inbox(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    page(&d, &headers, |v, c| v.inbox_page(c)).await
}

async fn inbox_job(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(hash): Path<String>,
) -> Response {
    page(&d, &headers, move |v, c| v.inbox_job_page(c, &hash)).await
}

async fn jobs(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    page(&d, &headers, |v, c| v.jobs_page(c)).await
}

async fn job(State(d): State<Dashboard>, headers: HeaderMap, Path(hash): Path<String>) -> Response {
    page(&d, &headers, move |v, c| v.job_page(c, &hash)).await
}

async fn budget(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    page(&d, &headers, |v, c| v.budget_page(c)).await
}

async fn audit(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    page(&d, &headers, |v, c| v.audit_page(c)).await
}

async fn health(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    page(&d, &headers, |v, c| v.health_page(c)).await
}

#[derive(Deserialize)]
struct SignedForm {
    csrf: String,
    passphrase: String,
    #[serde(default)]
    reason: String,
}

/// Runs a change of the inbox off the async threads, then goes to `back`; its refusals
/// become pages.
async fn decide<T: Send + 'static>(
    d: &Dashboard,
    hash: String,
    back: String,
    f: impl FnOnce(&Inbox, &str) -> Result<T, (u16, String)> + Send + 'static,
) -> Response {
    let inbox = d.inbox.clone();
    match tokio::task::spawn_blocking(move || f(&inbox, &hash)).await {
        Ok(Ok(_)) => see_other(&back),
        Ok(Err((code, why))) => problem(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &format!("refused: {why}"),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn approve(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    Form(f): Form<SignedForm>,
) -> Response {
    let id = match d.signer(&headers, &f.csrf, f.passphrase).await {
        Ok(id) => id,
        Err((code, why)) => return problem(code, why),
    };
    let back = format!("/ui/inbox/{hash}");
    decide(&d, hash, back, move |inbox, hash| {
        let e = inbox.entry(hash)?;
        let mut manifest =
            SignedManifest::from_json(&e.manifest_json).map_err(|m| (500, m.to_string()))?;
        manifest.approve(&id).map_err(|m| (409, m.to_string()))?;
        let sig = manifest
            .signatures
            .pop()
            .ok_or((500, "no co-signature".into()))?;
        let body = serde_json::to_vec(&sig).map_err(|m| (500, m.to_string()))?;
        inbox.approve(hash, &body)
    })
    .await
}

/// The owner's signed statement of `action` on job `hash`.
fn statement(
    id: &Identity,
    action: Action,
    hash: &str,
    reason: &str,
) -> Result<SignedStatement, (u16, String)> {
    let h = confide_service::jobs::parse_hash(hash).ok_or((404, format!("no job {hash}")))?;
    let reason = reason.trim();
    if reason.is_empty() {
        return Err((400, "give a reason".into()));
    }
    let s = Statement::new(
        action,
        &h,
        reason,
        id.public(),
        time::OffsetDateTime::now_utc(),
    );
    SignedStatement::sign(s, id).map_err(|e| (400, e.to_string()))
}

async fn reject(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    Form(f): Form<SignedForm>,
) -> Response {
    let back = format!("/ui/inbox/{hash}");
    state_with_statement(&d, &headers, (hash, back), f, Action::Reject).await
}

async fn revoke(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    Form(f): Form<SignedForm>,
) -> Response {
    let back = format!("/ui/jobs/{hash}");
    state_with_statement(&d, &headers, (hash, back), f, Action::Revoke).await
}

/// The owner's signed reject or revoke of job `hash`, from its form; then goes to `back`.
async fn state_with_statement(
    d: &Dashboard,
    headers: &HeaderMap,
    (hash, back): (String, String),
    f: SignedForm,
    action: Action,
) -> Response {
    let id = match d.signer(headers, &f.csrf, f.passphrase).await {
        Ok(id) => id,
        Err((code, why)) => return problem(code, why),
    };
    decide(d, hash, back, move |inbox, hash| {
        let signed = statement(&id, action, hash, &f.reason)?.to_json();
        match action {
            Action::Revoke => inbox.revoke(hash, &signed),
            _ => inbox.reject(hash, signed.as_bytes()),
        }
    })
    .await
}

async fn verify(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err((code, why)) = d.sessions.authorise(&headers, &f.csrf) {
        return problem(code, why);
    }
    // One at a time: a request while one runs waits for it and shows its result.
    match d.verifying.try_lock() {
        Ok(_running) => d.view.verify_now().await,
        Err(_) => drop(d.verifying.lock().await),
    }
    see_other("/ui/audit")
}

async fn export(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if d.sessions.session(&headers).is_none() {
        return see_other("/ui/login");
    }
    match d.view.last_export().map(|b| b.to_vec()) {
        Some(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"audit-log.json\"",
                ),
            ],
            bytes,
        )
            .into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "nothing to export yet: run \"verify now\" on the audit view first",
        ),
    }
}

/// `confide node login`: opens a dashboard session with the owner's approval key.
#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The node daemon's admin address (`confide node serve --admin`).
    #[arg(long, env = "CONFIDE_NODE_ADMIN", default_value = "127.0.0.1:7103")]
    admin: String,
    /// The owner's approval key (`confide keygen`), whose id the daemon has as --approver.
    #[arg(long)]
    key: PathBuf,
    /// The node's party id, when known (`confide ca issue` printed it): a daemon at --admin
    /// with another id is refused before anything is signed, so that no other daemon can
    /// pass on a challenge of a node this key opens.
    #[arg(long)]
    node_id: Option<String>,
    #[command(flatten)]
    passphrase: crate::governance::Passphrase,
}

/// Runs `confide node login`: prints the one-time address that opens the dashboard.
pub fn login_command(args: &LoginArgs) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let id = Identity::load(&args.key, args.passphrase.get()?.as_deref())?;
    let (code, body) = crate::node_serve::http(&args.admin, "POST", "/ui/login/challenge", b"")?;
    if code != 200 {
        anyhow::bail!("the node daemon answered {code}: {}", views::text_of(&body));
    }
    let c: serde_json::Value = serde_json::from_str(&body).context("malformed challenge")?;
    let nonce = c["nonce"].as_str().context("no nonce")?;
    let node_id = c["node_id"].as_str().context("no node id")?;
    if let Some(expected) = &args.node_id
        && expected != node_id
    {
        anyhow::bail!(
            "the daemon at {} is node {node_id}, not {expected}: nothing was signed",
            args.admin
        );
    }
    eprintln!(
        "signing a login to node `{}` ({node_id}) with key {}",
        c["node"].as_str().unwrap_or("?"),
        id.id()
    );
    let req = LoginRequest {
        public_key: hex::encode(id.public_key()),
        nonce: nonce.to_string(),
        signature: hex::encode(id.signing_key().sign(&login_message(node_id, nonce))),
    };
    finish_login(&args.admin, &req, None)
}
