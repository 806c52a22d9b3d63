//! Crash and pause points for the restart tests (the RES-nnn rules in docs/rules.md).
//!
//! A test sets `CONFIDE_CRASH_AT=<point>@<round>` in one process's environment; when that
//! process reaches the named point in that round, it writes one line to stderr and aborts at
//! once (as `kill -9` would: no destructors, no buffered writes, no goodbye to its peers).
//! Without the variable, a crash point does nothing but compare against a value read once.
//! The points are listed where they are used: `keyholder-before-record`,
//! `keyholder-after-record` and `keyholder-after-decrypt` in `confide_net::keyholder`.
//!
//! `CONFIDE_PAUSE_AT=<point>@<round>` instead stops the process with SIGSTOP at that point
//! (once), as a frozen machine would; the test continues it with SIGCONT. The point:
//! `coordinator-deadline-wait` (half a second into a round's stage deadline, between a look at the
//! state and a look at the clock).
//!
//! `CONFIDE_DELAY_AT=<point>@<round>` makes the process wait [`DELAY`] at that point, as a slow
//! owner would. The point: `node-before-submit` (before an owner sends its round's update).

use std::sync::OnceLock;

/// The environment variable that arms a crash point.
pub const VARIABLE: &str = "CONFIDE_CRASH_AT";
/// The environment variable that arms a pause point.
pub const PAUSE_VARIABLE: &str = "CONFIDE_PAUSE_AT";
/// The environment variable that arms a delay point.
pub const DELAY_VARIABLE: &str = "CONFIDE_DELAY_AT";
/// How long a delay point waits.
pub const DELAY: std::time::Duration = std::time::Duration::from_secs(4);

fn parse(variable: &str) -> Option<(String, u32)> {
    let v = std::env::var(variable).ok()?;
    let (point, round) = v.split_once('@')?;
    Some((point.to_string(), round.parse().ok()?))
}

fn armed(variable: &str, point: &str, round: u32) -> bool {
    static CRASH: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static PAUSE: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static DELAY: OnceLock<Option<(String, u32)>> = OnceLock::new();
    let cell = match variable {
        VARIABLE => &CRASH,
        PAUSE_VARIABLE => &PAUSE,
        _ => &DELAY,
    };
    cell.get_or_init(|| parse(variable))
        .as_ref()
        .is_some_and(|(p, r)| p == point && *r == round)
}

/// Aborts the process if `CONFIDE_CRASH_AT` names `point` in `round`.
pub fn point(point: &str, round: u32) {
    if armed(VARIABLE, point, round) {
        eprintln!("crash point {point}@{round}: aborting");
        std::process::abort();
    }
}

/// Stops the process (SIGSTOP, until a SIGCONT) if `CONFIDE_PAUSE_AT` names `point` in
/// `round`.
pub fn pause_point(point: &str, round: u32) {
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if armed(PAUSE_VARIABLE, point, round)
        && !PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        eprintln!("pause point {point}@{round}: stopping");
        let me = rustix::process::getpid();
        if let Err(e) = rustix::process::kill_process(me, rustix::process::Signal::STOP) {
            eprintln!("pause point {point}@{round}: {e}");
        }
    }
}

/// Blocks the calling thread for [`DELAY`] if `CONFIDE_DELAY_AT` names `point` in `round`.
pub fn delay_point(point: &str, round: u32) {
    if armed(DELAY_VARIABLE, point, round) {
        eprintln!("delay point {point}@{round}: waiting {} s", DELAY.as_secs());
        std::thread::sleep(DELAY);
    }
}
