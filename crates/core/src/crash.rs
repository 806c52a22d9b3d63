//! Crash points for the restart tests (the RES-nnn rules in docs/rules.md).
//!
//! A test sets `CONFIDE_CRASH_AT=<point>@<round>` in one process's environment; when that
//! process reaches the named point in that round, it writes one line to stderr and aborts at
//! once (as `kill -9` would: no destructors, no buffered writes, no goodbye to its peers).
//! Without the variable, a crash point does nothing but compare against a value read once.
//! The points are listed where they are used: `keyholder-before-record`,
//! `keyholder-after-record` and `keyholder-after-decrypt` in `confide_net::keyholder`.

use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const VARIABLE: &str = "CONFIDE_CRASH_AT";

fn armed() -> Option<&'static (String, u32)> {
    static ARMED: OnceLock<Option<(String, u32)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(VARIABLE).ok()?;
            let (point, round) = v.split_once('@')?;
            Some((point.to_string(), round.parse().ok()?))
        })
        .as_ref()
}

/// Aborts the process if `CONFIDE_CRASH_AT` names `point` in `round`.
pub fn point(point: &str, round: u32) {
    if let Some((p, r)) = armed()
        && p == point
        && *r == round
    {
        eprintln!("crash point {point}@{round}: aborting");
        std::process::abort();
    }
}
