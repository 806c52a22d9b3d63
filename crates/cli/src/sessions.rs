//! Browser sessions for the daemons' dashboards, bound to a key the daemon knows.
//!
//! A login is a challenge-response: the daemon hands out a challenge that carries its own
//! time and a MAC under a key made at start (so handing out challenges stores nothing, and
//! nobody can use up the owner's); the CLI signs it with the party's key; the daemon checks
//! the MAC, the age (two minutes), the signature and that the challenge was not used before,
//! and answers with a one-time ticket. Opening the ticket's address sets the session cookie
//! (HttpOnly, SameSite=Strict, path `/ui`, 8 hours). The cookie's name carries the daemon's
//! id, so two daemons on one host keep their sessions apart.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use rand::RngCore;

/// How long a login challenge may wait for its signature.
const CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// How long the one-time address stays valid.
const TICKET_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// At most this many tickets, and this many sessions, per party (its oldest goes first), so
/// that no party's logins push out another's.
const PER_PARTY: usize = 8;
/// At most this many tickets and sessions in all (the oldest goes first).
const MAX_PENDING: usize = 1024;
/// At most this many used challenges remembered (each from a verified signature).
const MAX_USED: usize = 1024;

/// Why a request is refused: its status and message.
pub(crate) type Refused = (StatusCode, &'static str);

/// A live session: who, and its CSRF token.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The party id whose key opened it.
    pub party: String,
    /// How the pages name it (a name and role, or the id).
    pub name: String,
    /// The role its certificate gave it (empty when the key has no certificate).
    pub role: String,
    pub csrf: String,
    expires: Instant,
}

/// Who a ticket admits: party id, display name, role.
type Admitted = (String, String, String);

#[derive(Debug, Default)]
struct Inner {
    used: HashMap<String, Instant>,
    tickets: HashMap<String, (Instant, Admitted)>,
    live: HashMap<String, Session>,
}

/// A daemon's sessions.
#[derive(Clone)]
pub(crate) struct SessionBook {
    inner: Arc<Mutex<Inner>>,
    mac: Arc<ring::hmac::Key>,
    cookie: String,
}

pub(crate) fn token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Equal, in time that depends only on the lengths.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Keeps fewer than `max` entries, dropping the expired ones, then the oldest.
fn bound<V>(map: &mut HashMap<String, V>, max: usize, expiry: impl Fn(&V) -> Instant) {
    let now = Instant::now();
    map.retain(|_, v| expiry(v) > now);
    while map.len() >= max {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| expiry(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

/// Makes room for one more entry of `party`: expired entries go, then the party's oldest
/// beyond [`PER_PARTY`], then the oldest of all beyond [`MAX_PENDING`].
fn bound_party<V>(
    map: &mut HashMap<String, V>,
    party: &str,
    of: impl Fn(&V) -> (Instant, &String),
) {
    let now = Instant::now();
    map.retain(|_, v| of(v).0 > now);
    loop {
        let mine: Vec<(&String, Instant)> = map
            .iter()
            .filter(|(_, v)| of(v).1 == party)
            .map(|(k, v)| (k, of(v).0))
            .collect();
        let Some(oldest) = (mine.len() >= PER_PARTY)
            .then(|| {
                mine.iter()
                    .min_by_key(|(_, t)| *t)
                    .map(|(k, _)| (*k).clone())
            })
            .flatten()
        else {
            break;
        };
        map.remove(&oldest);
    }
    bound(map, MAX_PENDING, |v| of(v).0);
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl SessionBook {
    /// The sessions of the daemon whose party id is `server_id`.
    pub(crate) fn new(server_id: &str) -> Self {
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let tag: String = server_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(16)
            .collect();
        Self {
            inner: Arc::default(),
            mac: Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)),
            cookie: format!("confide_session_{tag}"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh challenge: its time, 16 random bytes and their MAC, hex.
    pub(crate) fn challenge(&self) -> String {
        let mut body = unix_ms().to_be_bytes().to_vec();
        let mut r = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut r);
        body.extend_from_slice(&r);
        let tag = ring::hmac::sign(&self.mac, &body);
        body.extend_from_slice(tag.as_ref());
        hex::encode(body)
    }

    /// Checks that `nonce` is a challenge this daemon made less than two minutes ago.
    pub(crate) fn fresh(&self, nonce: &str) -> Result<(), &'static str> {
        let stale = "unknown or expired challenge: log in again";
        let raw = hex::decode(nonce).map_err(|_| stale)?;
        if raw.len() != 56 {
            return Err(stale);
        }
        ring::hmac::verify(&self.mac, &raw[..24], &raw[24..]).map_err(|_| stale)?;
        let made = u64::from_be_bytes(raw[..8].try_into().map_err(|_| stale)?);
        let age = unix_ms().saturating_sub(made);
        if made > unix_ms() + 1000 || age > u64::try_from(CHALLENGE_TTL.as_millis()).unwrap_or(0) {
            return Err(stale);
        }
        Ok(())
    }

    /// After the signature over `nonce` verified: uses the challenge up (once) and issues a
    /// one-time ticket for `party` (shown as `name`, with `role`).
    pub(crate) fn admit(
        &self,
        nonce: &str,
        (party, name, role): (&str, &str, &str),
    ) -> Result<String, Refused> {
        self.fresh(nonce).map_err(|m| (StatusCode::FORBIDDEN, m))?;
        let mut s = self.lock();
        let now = Instant::now();
        s.used.retain(|_, t| *t > now);
        if s.used.contains_key(nonce) {
            return Err((
                StatusCode::FORBIDDEN,
                "this challenge was used already: log in again",
            ));
        }
        if s.used.len() >= MAX_USED {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "too many logins in the last two minutes: try again shortly",
            ));
        }
        s.used.insert(nonce.to_string(), now + CHALLENGE_TTL);
        bound_party(&mut s.tickets, party, |t| (t.0, &t.1.0));
        let ticket = token();
        s.tickets.insert(
            ticket.clone(),
            (
                now + TICKET_TTL,
                (party.to_string(), name.to_string(), role.to_string()),
            ),
        );
        Ok(ticket)
    }

    /// Turns a ticket into a session (once): the session and its `Set-Cookie` value.
    pub(crate) fn enter(&self, ticket: &str) -> Option<(HeaderValue, Session)> {
        let mut s = self.lock();
        let (expires, (party, name, role)) = s.tickets.remove(ticket)?;
        if expires <= Instant::now() {
            return None;
        }
        bound_party(&mut s.live, &party, |v| (v.expires, &v.party));
        let id = token();
        let session = Session {
            party,
            name,
            role,
            csrf: token(),
            expires: Instant::now() + SESSION_TTL,
        };
        s.live.insert(id.clone(), session.clone());
        let cookie = format!(
            "{}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}",
            self.cookie,
            SESSION_TTL.as_secs()
        );
        HeaderValue::from_str(&cookie).ok().map(|c| (c, session))
    }

    fn session_id(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == self.cookie)
            .map(|(_, v)| v.to_string())
    }

    /// The live session the request's cookie names.
    pub(crate) fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = self.session_id(headers)?;
        let mut s = self.lock();
        let now = Instant::now();
        s.live.retain(|_, v| v.expires > now);
        s.live
            .iter()
            .find(|(k, _)| same(k, &id))
            .map(|(_, v)| v.clone())
    }

    /// The session of a state-changing request: a live session, the same site, and the
    /// session's CSRF token in the form.
    pub(crate) fn authorise(&self, headers: &HeaderMap, csrf: &str) -> Result<Session, Refused> {
        let Some(session) = self.session(headers) else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "no session: log in (`confide node login` or `confide job login`) and open the \
                 address it prints",
            ));
        };
        if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
            && site != "same-origin"
            && site != "none"
        {
            return Err((
                StatusCode::FORBIDDEN,
                "refused: the request came from another site",
            ));
        }
        if !same(&session.csrf, csrf) {
            return Err((
                StatusCode::FORBIDDEN,
                "refused: the form's CSRF token is not this session's (reload the page)",
            ));
        }
        Ok(session)
    }

    /// Ends the request's session; the `Set-Cookie` value that clears the cookie.
    pub(crate) fn logout(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let id = self.session_id(headers)?;
        self.lock().live.retain(|k, _| !same(k, &id));
        HeaderValue::from_str(&format!(
            "{}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
            self.cookie
        ))
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_in_full() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert_ne!(token(), token());
    }

    /// One party's logins push out only its own oldest sessions.
    #[test]
    fn a_party_cannot_push_out_anothers_sessions() {
        let book = SessionBook::new("0123456789abcdef");
        let login = |party: &str| {
            let t = book
                .admit(&book.challenge(), (party, party, ""))
                .expect("admitted");
            book.enter(&t).expect("session").0
        };
        let first = login("alice");
        for _ in 0..50 {
            login("mallory");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(
                first
                    .to_str()
                    .expect("ascii")
                    .split(';')
                    .next()
                    .expect("pair"),
            )
            .expect("header"),
        );
        assert_eq!(book.session(&h).map(|s| s.party), Some("alice".into()));
        let live = book
            .lock()
            .live
            .values()
            .filter(|v| v.party == "mallory")
            .count();
        assert_eq!(live, PER_PARTY);
    }

    #[test]
    fn pending_maps_stay_bounded() {
        let mut m = HashMap::new();
        for i in 0..200 {
            bound(&mut m, MAX_PENDING, |t: &Instant| *t);
            m.insert(i.to_string(), Instant::now() + Duration::from_secs(60 + i));
        }
        assert!(m.len() <= MAX_PENDING);
        assert!(m.contains_key("199"));
    }

    /// A challenge is this daemon's, used once; a forged or another daemon's one is refused;
    /// a ticket works once; the cookie names the daemon.
    #[test]
    fn challenges_and_tickets_work_once() {
        let book = SessionBook::new("0123456789abcdef0123");
        let other = SessionBook::new("fedcba9876543210");
        let c = book.challenge();
        assert!(book.fresh(&c).is_ok());
        assert!(other.fresh(&c).is_err(), "another daemon's challenge");
        let mut forged = hex::decode(&c).expect("hex");
        forged[9] ^= 1;
        assert!(book.fresh(&hex::encode(&forged)).is_err());
        assert!(book.fresh("zz").is_err());
        let ticket = book.admit(&c, ("p", "party", "owner")).expect("admitted");
        assert!(
            book.admit(&c, ("p", "party", "owner")).is_err(),
            "a challenge is used once"
        );
        let (cookie, session) = book.enter(&ticket).expect("session");
        assert!(book.enter(&ticket).is_none(), "a ticket works once");
        let cookie = cookie.to_str().expect("ascii").to_string();
        assert!(
            cookie.starts_with("confide_session_0123456789abcdef="),
            "{cookie}"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(cookie.split(';').next().expect("pair")).expect("header"),
        );
        assert_eq!(book.session(&h).map(|s| s.party), Some("p".into()));
        assert!(other.session(&h).is_none(), "another daemon's cookie");
        assert!(book.authorise(&h, &session.csrf).is_ok());
        assert!(book.authorise(&h, "0").is_err());
        book.logout(&h);
        assert!(book.session(&h).is_none());
    }
}
