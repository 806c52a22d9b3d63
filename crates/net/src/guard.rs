//! The request guard: every server's first layer. It authorises the caller from its TLS
//! certificate and bounds what it may send *before* a single byte of the body is read or
//! decoded.
//!
//! # Rules (NET-xxx)
//! - **NET-001** the caller's certificate role is one that the method serves.
//! - **NET-002** the caller is not on the federation's revocation list.
//! - **NET-003** a request message is no larger than its method's limit. The gRPC frame header
//!   declares the length, so an oversized message is refused before its body is buffered.
//! - **NET-004** each field of a request appears no more often, and is no longer, than the
//!   method's shape allows. Repeated message fields are counted on the wire as they stream in,
//!   so a body of empty elements cannot make the decoder allocate ~50× its size.
//! - **NET-005** the request is well-formed protobuf, uncompressed.
//! - **NET-006** the method exists.
//! - **NET-007** (coordinator) a round's model and broadcasts go only to the job's admitted
//!   owners.
//! - **NET-008** (coordinator) only the manifest's recipients follow a job's metrics, fetch
//!   its model or acknowledge it.
//! - **NET-009** a large request got no permit within [`PERMIT_WAIT`], or its body did not
//!   arrive within [`READ_DEADLINE`].
//!
//! Methods with a large limit also take one of a few permits (a caller at most one), so that
//! concurrent large requests cannot multiply the memory a server buffers; a permit is bounded
//! in time both ways, so slow callers cannot hold the others off. A unary method takes one
//! message per call. Refusals are counted per rule and per
//! caller; a caller's refusals are logged at counts 1, 2, 4, 8, …, so a flood of refusals
//! costs log lines logarithmic in its size. Every message a refusal carries is capped and
//! escaped ([`excerpt`]), and so is every `grpc-message` a server sends.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use confide_core::{JobSpec, Role};
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::pki::{PeerIdentity, Revocations, read_identity};

/// The most characters of a peer-supplied string that any log line, audit entry or reply
/// repeats.
pub const EXCERPT_CHARS: usize = 64;

/// The longest `grpc-message` any server sends (bytes, percent-encoded).
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// How many large requests a server reads at once (a caller at most one of them).
pub const LARGE_PERMITS: usize = 4;

/// How long a large request waits for a permit before it is refused (NET-009).
pub const PERMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a large request's body may take to arrive once it holds a permit (NET-009).
pub const READ_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);

/// A request limit above which a method counts as large.
pub const LARGE_BYTES: usize = 4 << 20;

/// The limit of a request that carries no data (a nonce, a round number).
pub const SMALL_BYTES: usize = 1024;

/// A length-capped, escaped excerpt of a peer-supplied string: at most [`EXCERPT_CHARS`]
/// characters, control and non-ASCII characters escaped, and the original length when cut.
pub fn excerpt(s: &str) -> String {
    excerpt_n(s, EXCERPT_CHARS)
}

/// [`excerpt`] with a cap of `max` characters.
pub fn excerpt_n(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push_str(&format!("…({} bytes)", s.len()));
            return out;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            out.extend(c.escape_default());
        }
    }
    out
}

/// One field of a message shape.
#[derive(Debug, Clone)]
struct FieldRule {
    max_count: usize,
    max_len: usize,
    inner: Option<Arc<Shape>>,
}

/// What a request message may hold, field by field. Only named fields are counted and bounded:
/// prost merges repeated occurrences of a singular field and skips unknown ones, so neither
/// allocates per occurrence, and counting them would itself cost memory per field number.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    fields: BTreeMap<u32, FieldRule>,
}

impl Shape {
    /// A shape with no named fields (each field at most once, any length within the method).
    pub fn new() -> Self {
        Self::default()
    }

    /// Field `number` appears at most `max_count` times, each at most `max_len` bytes long.
    pub fn field(mut self, number: u32, max_count: usize, max_len: usize) -> Self {
        self.fields.insert(
            number,
            FieldRule {
                max_count,
                max_len,
                inner: None,
            },
        );
        self
    }

    /// Field `number` is a message of shape `inner`, at most `max_count` times and `max_len`
    /// bytes each.
    pub fn message(mut self, number: u32, max_count: usize, max_len: usize, inner: Shape) -> Self {
        self.fields.insert(
            number,
            FieldRule {
                max_count,
                max_len,
                inner: Some(Arc::new(inner)),
            },
        );
        self
    }

    fn rule(&self, number: u32) -> Option<&FieldRule> {
        self.fields.get(&number)
    }
}

/// What one method accepts.
#[derive(Debug, Clone)]
pub struct MethodRule {
    roles: Vec<Role>,
    max_bytes: usize,
    shape: Arc<Shape>,
    streaming: bool,
}

impl MethodRule {
    /// Callers with one of `roles`, messages of at most `max_bytes`, of shape `shape`.
    pub fn new(roles: &[Role], max_bytes: usize, shape: Shape) -> Self {
        Self {
            roles: roles.to_vec(),
            max_bytes,
            shape: Arc::new(shape),
            streaming: false,
        }
    }

    /// The method takes a stream of messages (each within the limit); a unary method takes
    /// exactly one.
    pub fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// The method's message limit in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The roles it serves.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }
}

/// Refusal counters of a guard, by rule and by caller.
#[derive(Debug, Default)]
pub struct GuardStats {
    by_rule: Mutex<BTreeMap<String, u64>>,
    by_caller: Mutex<HashMap<(String, String), u64>>,
}

impl GuardStats {
    /// Counts a refusal of `caller` under `rule`; logs it when the caller's count for the
    /// rule is a power of two.
    pub fn refuse(&self, rule: &str, caller: &str, what: &str) {
        *lock(&self.by_rule).entry(rule.to_string()).or_default() += 1;
        let n = {
            let mut m = lock(&self.by_caller);
            let n = m.entry((caller.to_string(), rule.to_string())).or_default();
            *n += 1;
            *n
        };
        if n.is_power_of_two() {
            tracing::warn!(
                "{rule}: refused `{}` ({what}); {n} refusal(s) of this caller under {rule}",
                excerpt(caller)
            );
        }
    }

    /// Refusals so far, by rule.
    pub fn by_rule(&self) -> BTreeMap<String, u64> {
        lock(&self.by_rule).clone()
    }

    /// Refusals of `caller` under `rule`.
    pub fn of(&self, caller: &str, rule: &str) -> u64 {
        lock(&self.by_caller)
            .get(&(caller.to_string(), rule.to_string()))
            .copied()
            .unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A server's guard: its methods' rules, the revocation list, and its counters.
#[derive(Debug, Clone)]
pub struct Guard {
    service: String,
    methods: Arc<HashMap<String, MethodRule>>,
    revocations: Arc<Revocations>,
    large: Arc<tokio::sync::Semaphore>,
    per_caller: Arc<Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    stats: Arc<GuardStats>,
    /// How long a large request waits for its permits, and then for its body.
    waits: (std::time::Duration, std::time::Duration),
}

/// A caller's own permit and one of the server's.
type Permits = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

impl Guard {
    /// A guard for gRPC service `service` (e.g. `confide.v1.KeyHolder`).
    pub fn new(service: &str, revocations: Arc<Revocations>) -> Self {
        Self {
            service: service.to_string(),
            methods: Arc::new(HashMap::new()),
            revocations,
            large: Arc::new(tokio::sync::Semaphore::new(LARGE_PERMITS)),
            per_caller: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(GuardStats::default()),
            waits: (PERMIT_WAIT, READ_DEADLINE),
        }
    }

    /// Other waits than [`PERMIT_WAIT`] and [`READ_DEADLINE`] (tests).
    pub fn with_waits(mut self, permit: std::time::Duration, body: std::time::Duration) -> Self {
        self.waits = (permit, body);
        self
    }

    /// Adds `method`'s rule.
    pub fn method(mut self, method: &str, rule: MethodRule) -> Self {
        Arc::make_mut(&mut self.methods).insert(method.to_string(), rule);
        self
    }

    /// The gRPC service's full name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Each method's name and rule, sorted by name.
    pub fn methods(&self) -> Vec<(String, MethodRule)> {
        let mut m: Vec<_> = self
            .methods
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        m.sort_by(|a, b| a.0.cmp(&b.0));
        m
    }

    /// The largest message limit of any method (the decoder's limit for the service).
    pub fn max_bytes(&self) -> usize {
        self.methods
            .values()
            .map(|m| m.max_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The refusal counters, shared with the service if it counts its own refusals.
    pub fn stats(&self) -> Arc<GuardStats> {
        self.stats.clone()
    }

    /// A permit to read a large body: the caller's own (one at a time) and one of the server's
    /// [`LARGE_PERMITS`], each waited for at most [`PERMIT_WAIT`] in all.
    async fn permits(&self, caller: &str) -> Result<Permits, Status> {
        let own = lock(&self.per_caller)
            .entry(caller.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
            .clone();
        let wait = async {
            let own = own.acquire_owned().await.ok()?;
            let shared = self.large.clone().acquire_owned().await.ok()?;
            Some((own, shared))
        };
        match tokio::time::timeout(self.waits.0, wait).await {
            Ok(Some(p)) => Ok(p),
            _ => {
                self.stats.refuse("NET-009", caller, "large request");
                Err(Status::resource_exhausted(format!(
                    "NET-009 the server is reading other large requests; retry (waited {} s)",
                    self.waits.0.as_secs()
                )))
            }
        }
    }

    /// The caller's identity from its verified TLS certificate, and the method's rule; or the
    /// refusal.
    fn admit<B>(&self, req: &http::Request<B>) -> Result<(MethodRule, PeerIdentity), Status> {
        let path = req.uri().path();
        let method = path
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(self.service.as_str()))
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or("");
        let certs = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs);
        let leaf = certs
            .as_ref()
            .and_then(|c| c.first())
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let id = read_identity(leaf.as_ref()).map_err(|e| {
            Status::unauthenticated(format!("client certificate: {}", excerpt(&e.to_string())))
        })?;
        let Some(rule) = self.methods.get(method) else {
            self.stats.refuse("NET-006", &id.id, "unknown method");
            return Err(Status::unimplemented(format!(
                "NET-006 no method `{}` in {}",
                excerpt(method),
                self.service
            )));
        };
        if let Err(e) = self.revocations.check(&id.id) {
            self.stats.refuse("NET-002", &id.id, method);
            return Err(Status::permission_denied(format!(
                "NET-002 {}",
                excerpt(&e)
            )));
        }
        if !rule.roles.contains(&id.role) {
            self.stats.refuse("NET-001", &id.id, method);
            return Err(Status::permission_denied(format!(
                "NET-001 `{}` has role {}; {method} needs {}",
                excerpt(&id.name),
                id.role,
                rule.roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
        Ok((rule.clone(), id))
    }
}

impl<S> tower_layer::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            guard: self.clone(),
            inner,
        }
    }
}

/// A service behind a [`Guard`].
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    guard: Guard,
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S: tonic::server::NamedService> tonic::server::NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower_service::Service<http::Request<Body>> for Guarded<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is ready only after poll_ready; keep the ready one (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let (rule, id) = match guard.admit(&req) {
                Ok(admitted) => admitted,
                Err(status) => return Ok(capped(status.into_http())),
            };
            // Held until the body is read (or its deadline): it bounds what large requests
            // buffer at once, and one caller holds at most one.
            let permit = if rule.max_bytes > LARGE_BYTES {
                match guard.permits(&id.id).await {
                    Ok(p) => Some(p),
                    Err(status) => return Ok(capped(status.into_http())),
                }
            } else {
                None
            };
            let method = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let (parts, body) = req.into_parts();
            let scan = Scanner::new(rule.shape.clone(), rule.max_bytes);
            let bounded = Bounded {
                inner: body,
                scan: if rule.streaming { scan } else { scan.unary() },
                deadline: permit
                    .is_some()
                    .then(|| Box::pin(tokio::time::sleep(guard.waits.1))),
                stats: guard.stats.clone(),
                caller: id.id,
                method,
                failed: false,
                permit,
            };
            let req = http::Request::from_parts(parts, Body::new(bounded));
            inner.call(req).await.map(capped)
        })
    }
}

/// Caps the `grpc-message` of a response.
fn capped(mut resp: http::Response<Body>) -> http::Response<Body> {
    let long = resp
        .headers()
        .get("grpc-message")
        .is_some_and(|v| v.len() > MAX_STATUS_MESSAGE);
    if long && let Some(v) = resp.headers().get("grpc-message") {
        let mut cut = v.as_bytes()[..cut_point(v.as_bytes(), MAX_STATUS_MESSAGE)].to_vec();
        cut.extend_from_slice(b"%E2%80%A6");
        if let Ok(v) = http::HeaderValue::from_bytes(&cut) {
            resp.headers_mut().insert("grpc-message", v);
        }
    }
    resp
}

/// Where to cut a percent-encoded `grpc-message` to at most `max` bytes: never inside an
/// escape, and never before a UTF-8 continuation byte (so the rest still decodes as UTF-8).
fn cut_point(bytes: &[u8], max: usize) -> usize {
    let mut safe = 0;
    let mut i = 0;
    while i < bytes.len() {
        let (len, value) = if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            (
                3,
                hex.and_then(|h| u8::from_str_radix(h, 16).ok())
                    .unwrap_or(0),
            )
        } else {
            (1, bytes[i])
        };
        // A token that is not a continuation byte starts a character: a cut may go before it.
        if value & 0xc0 != 0x80 {
            safe = i;
        }
        if i + len > max {
            return safe;
        }
        i += len;
    }
    bytes.len()
}

/// A request body checked by a [`Scanner`] as it streams in.
struct Bounded {
    inner: Body,
    scan: Scanner,
    stats: Arc<GuardStats>,
    caller: String,
    method: String,
    failed: bool,
    permit: Option<Permits>,
    /// With a permit: when the body must have arrived.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl http_body::Body for Bounded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            self.failed = true;
            self.permit = None;
            self.stats.refuse("NET-009", &self.caller, &self.method);
            return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                "NET-009 {}: the body did not arrive in time",
                self.method
            )))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
            && let Err((rule, why)) = self.scan.feed(data)
        {
            self.failed = true;
            self.stats.refuse(rule, &self.caller, &self.method);
            let msg = format!("{rule} {}: {why}", self.method);
            self.permit = None;
            return Poll::Ready(Some(Err(if rule == "NET-005" {
                Status::invalid_argument(msg)
            } else {
                Status::resource_exhausted(msg)
            })));
        }
        if matches!(&polled, Poll::Ready(None | Some(Err(_)))) {
            self.permit = None;
            self.deadline = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Where the scanner is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    /// Reading the 5-byte gRPC frame header.
    Header,
    /// Reading a field's tag.
    Tag,
    /// Reading a varint field's value.
    Varint,
    /// Reading a length prefix of field `number`.
    Length(u32),
    /// Skipping this many bytes.
    Skip(u64),
}

/// An open message: its shape, where it ends (frame offset), and its field counts.
#[derive(Debug)]
struct Open {
    shape: Arc<Shape>,
    end: u64,
    counts: HashMap<u32, usize>,
}

/// A streaming protobuf wire scanner (gRPC length-prefixed frames). It keeps no message
/// bytes: only its position, a partial varint, and one counter per field seen.
#[derive(Debug)]
pub struct Scanner {
    root: Arc<Shape>,
    max_bytes: usize,
    /// Frames still accepted (`None`: any number).
    frames_left: Option<usize>,
    at: At,
    header: Vec<u8>,
    pos: u64,
    stack: Vec<Open>,
    varint: u64,
    shift: u32,
}

type Refusal = (&'static str, String);

impl Scanner {
    /// A scanner of messages of shape `root`, each at most `max_bytes`.
    pub fn new(root: Arc<Shape>, max_bytes: usize) -> Self {
        Self {
            root,
            max_bytes,
            frames_left: None,
            at: At::Header,
            header: Vec::with_capacity(5),
            pos: 0,
            stack: Vec::new(),
            varint: 0,
            shift: 0,
        }
    }

    /// Accepts one message only (a unary call).
    pub fn unary(mut self) -> Self {
        self.frames_left = Some(1);
        self
    }

    /// Reads the next bytes of the body.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), Refusal> {
        loop {
            self.close_finished()?;
            let Some((&b, rest)) = data.split_first() else {
                return Ok(());
            };
            match self.at {
                At::Header => {
                    self.header.push(b);
                    data = rest;
                    if self.header.len() == 5 {
                        self.open_frame()?;
                    }
                }
                At::Skip(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.pos += take;
                    self.at = if take == n {
                        At::Tag
                    } else {
                        At::Skip(n - take)
                    };
                }
                At::Tag | At::Varint | At::Length(_) => {
                    data = rest;
                    self.pos += 1;
                    if self.shift >= 64 {
                        return Err(("NET-005", "a varint is longer than 10 bytes".into()));
                    }
                    self.varint |= u64::from(b & 0x7f) << self.shift;
                    self.shift += 7;
                    if b & 0x80 == 0 {
                        let v = std::mem::take(&mut self.varint);
                        self.shift = 0;
                        self.varint_done(v)?;
                    }
                }
            }
        }
    }

    fn open_frame(&mut self) -> Result<(), Refusal> {
        match &mut self.frames_left {
            Some(0) => {
                return Err(("NET-005", "a unary call carries one message".into()));
            }
            Some(n) => *n -= 1,
            None => {}
        }
        if self.header[0] != 0 {
            return Err(("NET-005", "compressed messages are not accepted".into()));
        }
        let len = u32::from_be_bytes([
            self.header[1],
            self.header[2],
            self.header[3],
            self.header[4],
        ]);
        self.header.clear();
        if len as usize > self.max_bytes {
            return Err((
                "NET-003",
                format!(
                    "a {len}-byte message exceeds this method's limit of {} bytes",
                    self.max_bytes
                ),
            ));
        }
        self.pos = 0;
        self.stack.push(Open {
            shape: self.root.clone(),
            end: u64::from(len),
            counts: HashMap::new(),
        });
        self.at = At::Tag;
        Ok(())
    }

    /// Pops the messages that end here; after the frame's root, expects the next header.
    fn close_finished(&mut self) -> Result<(), Refusal> {
        while self.at == At::Tag
            && let Some(top) = self.stack.last()
        {
            if self.pos > top.end {
                return Err(("NET-005", "a field runs past its message".into()));
            }
            if self.pos < top.end {
                break;
            }
            self.stack.pop();
            if self.stack.is_empty() {
                self.at = At::Header;
            }
        }
        Ok(())
    }

    fn varint_done(&mut self, v: u64) -> Result<(), Refusal> {
        match self.at {
            At::Tag => {
                let number = u32::try_from(v >> 3).unwrap_or(u32::MAX);
                if number == 0 {
                    return Err(("NET-005", "field number 0".into()));
                }
                let top = self.stack.last_mut().ok_or(("NET-005", String::new()))?;
                if let Some(max_count) = top.shape.rule(number).map(|r| r.max_count) {
                    let n = top.counts.entry(number).or_default();
                    *n += 1;
                    if *n > max_count {
                        return Err((
                            "NET-004",
                            format!("field {number} appears more than {max_count} time(s)"),
                        ));
                    }
                }
                self.at = match v & 7 {
                    0 => At::Varint,
                    1 => At::Skip(8),
                    2 => At::Length(number),
                    5 => At::Skip(4),
                    w => return Err(("NET-005", format!("wire type {w}"))),
                };
            }
            At::Varint => self.at = At::Tag,
            At::Length(number) => {
                let top = self.stack.last().ok_or(("NET-005", String::new()))?;
                let rule = top.shape.rule(number);
                let max_len = rule.map_or(usize::MAX, |r| r.max_len);
                if v > max_len as u64 {
                    return Err((
                        "NET-004",
                        format!("field {number} is {v} bytes long; at most {max_len} are accepted"),
                    ));
                }
                if self.pos.saturating_add(v) > top.end {
                    return Err(("NET-005", format!("field {number} runs past its message")));
                }
                match rule.and_then(|r| r.inner.clone()) {
                    Some(shape) => {
                        self.stack.push(Open {
                            shape,
                            end: self.pos + v,
                            counts: HashMap::new(),
                        });
                        self.at = At::Tag;
                    }
                    None => self.at = if v == 0 { At::Tag } else { At::Skip(v) },
                }
            }
            At::Header | At::Skip(_) => {}
        }
        Ok(())
    }
}

/// Roles that may read public keys and attestation evidence.
const READERS: &[Role] = &[Role::Node, Role::Coordinator, Role::ModelOwner];
/// Room for a certificate (DER), a signature, an owner name, a JSON tree head or cosignature.
const CERT: usize = 16 << 10;
const SIG: usize = 1024;
const NAME: usize = 256;
const JSON: usize = 16 << 10;

/// A contribution whose payload is at most `payload` bytes.
fn contribution(payload: usize) -> Shape {
    Shape::new()
        .field(1, 1, NAME)
        .field(4, 1, payload)
        .field(5, 1, SIG)
        .field(6, 1, 64)
}

/// A round's relayed contributions (`UnsealRequest`): one per owner.
fn relayed(spec: &JobSpec) -> (Shape, usize) {
    let owners = spec.owners.len().max(1);
    let max = spec.limits.max_message_bytes;
    let shape = Shape::new().message(
        2,
        owners,
        max.saturating_add(CERT + SIG + 1024),
        Shape::new()
            .message(1, 1, max.saturating_add(SIG + 1024), contribution(max))
            .field(2, 1, CERT),
    );
    let per_owner = max.saturating_add(CERT + 2 * SIG + 2048);
    (
        shape,
        owners.saturating_mul(per_owner).saturating_add(SMALL_BYTES),
    )
}

/// The coordinator's guard.
pub fn coordinator(spec: &JobSpec, revocations: Arc<Revocations>) -> Guard {
    let max = spec.limits.max_message_bytes;
    let small = || MethodRule::new(&[Role::Node], SMALL_BYTES, Shape::new());
    let owner = || MethodRule::new(&[Role::ModelOwner], SMALL_BYTES, Shape::new());
    let submit = Shape::new()
        .message(1, 1, max.saturating_add(4 * SIG), contribution(max))
        .message(2, 1, 1024, Shape::new().field(1, 1, 32))
        .field(3, 1, JSON)
        .field(4, 1, JSON);
    Guard::new("confide.v1.Coordinator", revocations)
        .method("Join", small())
        .method("NextRound", small())
        .method("NextStage", small())
        .method(
            "Submit",
            MethodRule::new(
                &[Role::Node],
                max.saturating_add(4 * SIG + 2 * JSON + 2048),
                submit,
            ),
        )
        .method(
            "Withdraw",
            MethodRule::new(
                &[Role::Node],
                8192,
                Shape::new()
                    .field(1, 1, 2048)
                    .field(2, 1, 32)
                    .field(3, 1, MAX_STATEMENT_BYTES),
            ),
        )
        .method(
            "Approve",
            MethodRule::new(
                &[Role::Node],
                4096,
                Shape::new()
                    .field(1, 1, 64)
                    .field(2, 1, NAME)
                    .field(3, 1, SIG),
            ),
        )
        .method(
            "Cosign",
            MethodRule::new(
                &[Role::Node],
                2 * JSON + 64,
                Shape::new().field(1, 1, JSON).field(2, 1, JSON),
            ),
        )
        .method("Watch", owner())
        .method("FetchModel", owner())
        .method("AckModel", owner())
        .method(
            "ExportAudit",
            MethodRule::new(
                &[
                    Role::Node,
                    Role::ModelOwner,
                    Role::Coordinator,
                    Role::KeyHolder,
                    Role::Aggregator,
                ],
                SMALL_BYTES,
                Shape::new(),
            ),
        )
}

/// The key holder's guard.
pub fn keyholder(spec: &JobSpec, revocations: Arc<Revocations>) -> Guard {
    let (shape, max) = relayed(spec);
    Guard::new("confide.v1.KeyHolder", revocations)
        .method(
            "GetPublicKey",
            MethodRule::new(READERS, SMALL_BYTES, Shape::new().field(1, 1, 64)),
        )
        .method("Unseal", MethodRule::new(&[Role::Coordinator], max, shape))
}

/// An aggregator's guard.
pub fn aggregator(spec: &JobSpec, revocations: Arc<Revocations>) -> Guard {
    let (shape, max) = relayed(spec);
    let (n, _) = spec.aggregators_n_t();
    let n = n.max(1);
    let owners = spec.owners.len().max(1);
    let share = spec.limits.max_message_bytes;
    let row = Shape::new()
        .field(1, 1, NAME)
        .field(2, n, n)
        .field(3, n, share);
    let finish = Shape::new()
        .field(2, n, n)
        .message(
            3,
            owners,
            n.saturating_mul(share.saturating_add(8))
                .saturating_add(NAME + 2 * n + 64),
            row,
        )
        .field(4, n, SIG)
        .field(5, n, CERT);
    let finish_max = max.saturating_add(n.saturating_mul(SIG + CERT + 64));
    let release = Shape::new().field(2, n, SIG).field(3, n, CERT);
    Guard::new("confide.v1.Aggregator", revocations)
        .method(
            "GetPublicKey",
            MethodRule::new(READERS, SMALL_BYTES, Shape::new().field(1, 1, 64)),
        )
        .method("Prepare", MethodRule::new(&[Role::Coordinator], max, shape))
        .method(
            "Commit",
            MethodRule::new(&[Role::Coordinator], finish_max, finish),
        )
        .method(
            "Release",
            MethodRule::new(
                &[Role::Coordinator],
                n * (SIG + CERT + 64) + SMALL_BYTES,
                release,
            ),
        )
}

/// The long-running coordinator's control API: model owners submit, follow and cancel their
/// jobs; the operator (the coordinator's own certificate) may read every job.
pub fn control(revocations: Arc<Revocations>) -> Guard {
    let max_manifest = confide_service::jobs::MAX_MANIFEST_BYTES;
    let readers = &[Role::ModelOwner, Role::Coordinator];
    let name = || Shape::new().field(1, 1, 256);
    Guard::new("confide.v1.Control", revocations)
        .method(
            "SubmitJob",
            MethodRule::new(
                &[Role::ModelOwner],
                max_manifest + 16,
                Shape::new().field(1, 1, max_manifest),
            ),
        )
        .method(
            "ListJobs",
            MethodRule::new(readers, SMALL_BYTES, Shape::new().field(1, 1, 32)),
        )
        .method("JobStatus", MethodRule::new(readers, SMALL_BYTES, name()))
        .method(
            "CancelJob",
            MethodRule::new(
                &[Role::ModelOwner],
                CANCEL_BYTES + 16,
                Shape::new().field(1, 1, CANCEL_BYTES),
            ),
        )
        .method("JobEvents", MethodRule::new(readers, SMALL_BYTES, name()))
        .method(
            "DownloadJob",
            MethodRule::new(&[Role::ModelOwner], SMALL_BYTES, name()),
        )
        .method(
            "ListNodes",
            MethodRule::new(&[Role::Coordinator], SMALL_BYTES, Shape::new()),
        )
}

/// The fleet port's own service (`confide.v1.Fleet`): nodes' heartbeats and decisions. The
/// per-job `Coordinator` service on the same port is guarded by each job's own guard.
pub fn fleet(revocations: Arc<Revocations>) -> Guard {
    Guard::new("confide.v1.Fleet", revocations)
        .method(
            "Offers",
            MethodRule::new(&[Role::Node], SMALL_BYTES, Shape::new()),
        )
        .method(
            "Decide",
            MethodRule::new(
                &[Role::Node],
                8 * SMALL_BYTES,
                Shape::new()
                    .field(1, 1, 64)
                    .field(3, 1, 4 * MAX_RULE_CHARS)
                    .field(4, 1, 128)
                    .field(5, 1, MAX_STATEMENT_BYTES),
            ),
        )
        .method(
            "Audit",
            MethodRule::new(&[Role::Node], SMALL_BYTES, Shape::new()),
        )
}

/// The longest owner's statement (a co-signature or a signed statement, JSON) that a
/// decision or a withdrawal may carry, in bytes.
pub const MAX_STATEMENT_BYTES: usize = 4096;

/// The longest basis or rule a node's decision may carry, in characters.
pub const MAX_RULE_CHARS: usize = 200;

/// The largest signed statement accepted (a cancel with its 200-character reason, the
/// author's public identity and the signature fit in well under half of it).
const CANCEL_BYTES: usize = 8 * 1024;

/// The confidential trainer host's guard. `Upload` streams pieces of at most `piece` bytes.
pub fn trainer(piece: usize, revocations: Arc<Revocations>) -> Guard {
    let both = &[Role::Node, Role::ModelOwner];
    Guard::new("confide.v1.Trainer", revocations)
        .method(
            "Attest",
            MethodRule::new(both, SMALL_BYTES, Shape::new().field(1, 1, 64)),
        )
        .method(
            "Upload",
            MethodRule::new(
                &[Role::Node],
                piece + SIG + 64,
                Shape::new().field(1, 1, SIG).field(2, 1, piece),
            )
            .streaming(),
        )
        .method(
            "TrainerStatus",
            MethodRule::new(both, SMALL_BYTES, Shape::new()),
        )
        .method(
            "Fetch",
            MethodRule::new(
                &[Role::ModelOwner],
                SMALL_BYTES,
                Shape::new()
                    .field(1, 1, 64)
                    .field(2, 1, SIG)
                    .field(3, 1, 64),
            ),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(msg: &impl prost::Message) -> Vec<u8> {
        let body = msg.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn unseal_shape(owners: usize) -> Arc<Shape> {
        Arc::new(Shape::new().message(
            2,
            owners,
            1 << 20,
            Shape::new().message(1, 1, 1 << 20, Shape::new().field(1, 1, 256)),
        ))
    }

    fn relayed(owner: &str) -> crate::pb::RelayedContribution {
        crate::pb::RelayedContribution {
            contribution: Some(crate::pb::Contribution {
                owner: owner.into(),
                round: 1,
                payload: vec![7; 100],
                ..Default::default()
            }),
            owner_certificate: vec![1; 50],
        }
    }

    #[test]
    fn repeated_empty_elements_are_counted_before_decoding() {
        let many = crate::pb::UnsealRequest {
            round: 1,
            contributions: vec![crate::pb::RelayedContribution::default(); 10_000],
        };
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        let err = s.feed(&framed(&many)).expect_err("refused");
        assert_eq!(err.0, "NET-004", "{err:?}");
        let ok = crate::pb::UnsealRequest {
            round: 1,
            contributions: vec![relayed("a"), relayed("b"), relayed("c")],
        };
        // Byte by byte, as a slow stream would arrive, and twice in one body.
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        for b in framed(&ok).iter().chain(framed(&ok).iter()) {
            s.feed(std::slice::from_ref(b)).expect("accepted");
        }
        assert_eq!(s.at, At::Header);
    }

    #[test]
    fn oversized_frames_and_long_strings_are_refused_from_their_prefix() {
        // Only the header of a 64 MiB message: refused before any of its body.
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        let err = s.feed(&[0, 4, 0, 0, 0]).expect_err("refused");
        assert_eq!(err.0, "NET-003");
        // A nested string longer than its cap: refused from its length prefix.
        let long = crate::pb::UnsealRequest {
            round: 1,
            contributions: vec![relayed(&"x".repeat(300))],
        };
        let bytes = framed(&long);
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        let err = s.feed(&bytes[..20]).expect_err("refused");
        assert_eq!(err.0, "NET-004", "{err:?}");
    }

    #[test]
    fn malformed_wire_is_refused() {
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        // Field 2 declares 100 bytes inside a 3-byte message.
        assert_eq!(
            s.feed(&[0, 0, 0, 0, 3, 0x12, 100, 0])
                .expect_err("refused")
                .0,
            "NET-005"
        );
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        assert_eq!(s.feed(&[1, 0, 0, 0, 0]).expect_err("refused").0, "NET-005");
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        // Wire type 3 (groups).
        assert_eq!(
            s.feed(&[0, 0, 0, 0, 1, 0x0b]).expect_err("refused").0,
            "NET-005"
        );
    }

    #[test]
    fn unknown_fields_cost_no_state_and_a_unary_call_takes_one_message() {
        // 20,000 distinct unknown field numbers: skipped, not counted.
        let mut body = Vec::new();
        for n in 100..20_100u32 {
            prost::encoding::encode_key(n, prost::encoding::WireType::Varint, &mut body);
            body.push(1);
        }
        let mut framed_body = vec![0];
        framed_body.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed_body.extend_from_slice(&body);
        let mut s = Scanner::new(unseal_shape(3), 1 << 20).unary();
        s.feed(&framed_body[..framed_body.len() - 1])
            .expect("accepted");
        assert!(s.stack.iter().all(|o| o.counts.is_empty()));
        s.feed(&framed_body[framed_body.len() - 1..])
            .expect("accepted");
        // A second message in a unary call is refused.
        let err = s.feed(&[0, 0, 0, 0, 0]).expect_err("second frame");
        assert_eq!(err.0, "NET-005", "{err:?}");
        // A streaming method takes several.
        let mut s = Scanner::new(unseal_shape(3), 1 << 20);
        s.feed(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .expect("two empty frames");
    }

    #[test]
    fn status_messages_are_cut_on_character_boundaries() {
        // "…" is %E2%80%A6: a cut may go before %E2, never before %80 or %A6.
        let msg = b"ab%E2%80%A6cd";
        assert_eq!(cut_point(msg, 4), 2);
        assert_eq!(cut_point(msg, 9), 2);
        assert_eq!(cut_point(msg, 11), 11);
        assert_eq!(cut_point(msg, 12), 12);
        assert_eq!(cut_point(msg, 100), msg.len());
        // Never inside an escape.
        assert_eq!(cut_point(b"a%41b", 2), 1);
    }

    #[tokio::test]
    async fn a_caller_holds_one_large_permit_and_waits_are_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let now = time::OffsetDateTime::now_utc();
        crate::pki::init_ca(dir.path(), "t", now).expect("ca");
        let ca = {
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            CertificateDer::from_pem_file(dir.path().join("ca.crt")).expect("ca")
        };
        let revocations = Arc::new(Revocations::new(dir.path(), ca.as_ref()).expect("list"));
        let guard = Guard::new("x", revocations).with_waits(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_millis(200),
        );
        let first = guard.permits("slow").await.expect("first");
        // The same caller's second large request waits, then is refused (NET-009) …
        let err = guard.permits("slow").await.expect_err("one per caller");
        assert!(err.message().starts_with("NET-009"), "{err:?}");
        // … while other callers still get theirs, up to the server's permits.
        let names: Vec<String> = (1..LARGE_PERMITS).map(|i| format!("c{i}")).collect();
        let others = futures_util::future::join_all(names.iter().map(|n| guard.permits(n))).await;
        assert!(others.iter().all(Result::is_ok));
        assert!(
            guard.permits("late").await.is_err(),
            "the server's permits are all taken"
        );
        drop(first);
        assert!(guard.permits("late").await.is_ok());
        assert_eq!(guard.stats().by_rule().get("NET-009"), Some(&2));
    }

    #[test]
    fn excerpts_are_capped_and_escaped() {
        let e = excerpt(&format!("PATIENT\n\u{1b}[31m{}", "y".repeat(10_000)));
        assert!(e.chars().count() < EXCERPT_CHARS + 40, "{e}");
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
        assert!(e.contains("bytes)"), "{e}");
        assert_eq!(excerpt("short"), "short");
    }
}
