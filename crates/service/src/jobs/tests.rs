use std::sync::Arc;

use confide_governance::audit::AuditLog;
use confide_governance::identity::Identity;
use confide_governance::manifest::{Manifest, Mode, SignedManifest};
use confide_governance::statement::{Action, SignedStatement, Statement};
use confide_store::{MemoryStore, RedbStore, Store};
use time::OffsetDateTime;

use super::*;
use crate::job::Stage;

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time")
}

fn spec(id: &str, rounds: u32) -> confide_core::JobSpec {
    let text = format!(
        r#"
        [job]
        id = "{id}"
        rounds = {rounds}
        scheme = "plain"
        min_owners = 2
        [model]
        kind = "logistic"
        classes = 2
        [data]
        label = "y"
        feature_count = 2
        [training]
        local_epochs = 1
        batch_size = 8
        learning_rate = 0.1
        [[parties]]
        name = "a"
        data = "a.csv"
        [[parties]]
        name = "b"
        data = "b.csv"
    "#
    );
    confide_core::JobConfig::parse(&text).expect("job").spec()
}

fn manifest(owner: &Identity, id: &str, rounds: u32) -> Vec<u8> {
    let m = Manifest::new(&spec(id, rounds), Mode::Federated, owner.public(), vec![])
        .expect("manifest");
    SignedManifest::sign(m, owner)
        .expect("sign")
        .to_json()
        .into_bytes()
}

fn cancel_statement(author: &Identity, job: &[u8; 32], reason: &str) -> Vec<u8> {
    let s = Statement::new(Action::Cancel, job, reason, author.public(), now());
    SignedStatement::sign(s, author)
        .expect("sign")
        .to_json()
        .into_bytes()
}

fn refused_code(r: Result<impl std::fmt::Debug, ServiceError>) -> Code {
    match r {
        Err(ServiceError::Refused(e)) => e.code,
        other => panic!("not refused: {other:?}"),
    }
}

fn memory() -> (Arc<dyn Store>, Jobs) {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    (store.clone(), Jobs::new(store))
}

fn hash_of(r: &JobRecord) -> [u8; 32] {
    parse_hash(&r.hash).expect("hash")
}

fn submit(jobs: &Jobs, owner: &Identity, id: &str, rounds: u32) -> JobRecord {
    jobs.submit(&manifest(owner, id, rounds), &owner.id(), now())
        .expect("submitted")
        .record
}

fn approve_all(jobs: &Jobs, hash: &[u8; 32]) {
    for o in ["a", "b"] {
        jobs.transition(hash, &Transition::Approve { owner: o.into() }, o, now())
            .expect("approve");
    }
}

#[test]
fn a_submission_is_stored_with_its_event_and_audit_entry() {
    let (store, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let file = manifest(&owner, "study-1", 3);
    let s = jobs.submit(&file, &owner.id(), now()).expect("submitted");
    assert!(s.new);
    assert_eq!(s.record.state, JobState::AwaitingApproval);
    assert_eq!(s.record.job_id, "study-1");
    assert_eq!(s.record.participants, ["a", "b"]);
    let hash = hash_of(&s.record);
    assert_eq!(jobs.manifest(&hash).expect("read"), Some(file));
    let events = jobs.events(&hash, 0).expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].what, "submitted");
    let log = AuditLog::new(store);
    assert_eq!(log.size().expect("size"), 1);
    let entry: serde_json::Value =
        serde_json::from_slice(&log.entry(0).expect("read").expect("entry")).expect("json");
    assert_eq!(entry["kind"], "submission");
    assert_eq!(entry["actor"], owner.id());
    assert_eq!(entry["detail"]["manifest"], s.record.hash);
}

#[test]
fn submitting_the_same_manifest_twice_is_a_no_op() {
    let (store, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let file = manifest(&owner, "j", 3);
    let first = jobs.submit(&file, &owner.id(), now()).expect("first");
    let later = now() + time::Duration::hours(1);
    let again = jobs.submit(&file, &owner.id(), later).expect("again");
    assert!(!again.new);
    assert_eq!(again.record, first.record, "nothing changed");
    assert_eq!(AuditLog::new(store).size().expect("size"), 1);
    assert_eq!(jobs.list().expect("list").len(), 1);
}

#[test]
fn job_003_a_different_manifest_under_a_used_job_id_is_refused() {
    let (_, jobs) = memory();
    let owner = Identity::generate().expect("key");
    submit(&jobs, &owner, "j", 3);
    let other = manifest(&owner, "j", 4);
    assert_eq!(
        refused_code(jobs.submit(&other, &owner.id(), now())),
        Code::IdReused
    );
    // Even by another model owner.
    let stranger = Identity::generate().expect("key");
    assert_eq!(
        refused_code(jobs.submit(&manifest(&stranger, "j", 3), &stranger.id(), now())),
        Code::IdReused
    );
    assert_eq!(jobs.list().expect("list").len(), 1);
}

#[test]
fn job_001_002_004_bad_submissions_are_refused_and_store_nothing() {
    let (store, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let good = manifest(&owner, "j", 3);
    let id = owner.id();
    // Garbage, not UTF-8, JSON that is not a manifest, and an oversized file.
    assert_eq!(
        refused_code(jobs.submit(b"\x00garbage", &id, now())),
        Code::Malformed
    );
    assert_eq!(
        refused_code(jobs.submit(b"\xff\xfe", &id, now())),
        Code::Malformed
    );
    assert_eq!(
        refused_code(jobs.submit(b"{\"a\":1}", &id, now())),
        Code::Malformed
    );
    let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert_eq!(
        refused_code(jobs.submit(&huge, &id, now())),
        Code::Malformed
    );
    // Unsigned.
    let mut unsigned: serde_json::Value = serde_json::from_slice(&good).expect("json");
    unsigned["signatures"] = serde_json::json!([]);
    let unsigned = serde_json::to_vec(&unsigned).expect("json");
    assert_eq!(
        refused_code(jobs.submit(&unsigned, &id, now())),
        Code::Signature
    );
    // A signature that does not verify: the content changed after signing.
    let mut changed: serde_json::Value = serde_json::from_slice(&good).expect("json");
    changed["manifest"]["spec"]["job"]["rounds"] = 99.into();
    let changed = serde_json::to_vec(&changed).expect("json");
    assert_eq!(
        refused_code(jobs.submit(&changed, &id, now())),
        Code::Signature
    );
    // A good manifest submitted by someone else.
    let stranger = Identity::generate().expect("key");
    assert_eq!(
        refused_code(jobs.submit(&good, &stranger.id(), now())),
        Code::NotModelOwner
    );
    assert!(jobs.list().expect("list").is_empty());
    assert_eq!(AuditLog::new(store).size().expect("size"), 0);
}

#[test]
fn job_005_006_009_cancel_by_a_stranger_or_with_a_bad_statement_is_refused() {
    let (_, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let hash = hash_of(&submit(&jobs, &owner, "j", 3));
    let stranger = Identity::generate().expect("key");
    // A stranger's own, valid statement.
    let theirs = cancel_statement(&stranger, &hash, "mine now");
    assert_eq!(
        refused_code(jobs.cancel(&theirs, &stranger.id(), now())),
        Code::NotAllowed
    );
    // The owner's statement relayed by a stranger.
    let owners = cancel_statement(&owner, &hash, "stop");
    assert_eq!(
        refused_code(jobs.cancel(&owners, &stranger.id(), now())),
        Code::Statement
    );
    // A statement whose reason was changed after signing.
    let mut forged: serde_json::Value = serde_json::from_slice(&owners).expect("json");
    forged["statement"]["reason"] = "other".into();
    let forged = serde_json::to_vec(&forged).expect("json");
    assert_eq!(
        refused_code(jobs.cancel(&forged, &owner.id(), now())),
        Code::Statement
    );
    assert_eq!(
        refused_code(jobs.cancel(b"garbage", &owner.id(), now())),
        Code::Statement
    );
    // An unknown job.
    let nowhere = cancel_statement(&owner, &[9; 32], "stop");
    assert_eq!(
        refused_code(jobs.cancel(&nowhere, &owner.id(), now())),
        Code::UnknownJob
    );
    assert_eq!(
        jobs.get(&hash).expect("read").expect("job").state,
        JobState::AwaitingApproval
    );
}

#[test]
fn a_cancel_is_audited_with_its_statement_and_a_repeat_changes_nothing() {
    let (store, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let hash = hash_of(&submit(&jobs, &owner, "j", 3));
    let stmt = cancel_statement(&owner, &hash, "wrong cohort");
    let c = jobs.cancel(&stmt, &owner.id(), now()).expect("cancelled");
    assert_eq!(
        c.state,
        JobState::Cancelled {
            by: owner.id(),
            reason: "wrong cohort".into()
        }
    );
    let log = AuditLog::new(store);
    assert_eq!(log.size().expect("size"), 2);
    let entry: serde_json::Value =
        serde_json::from_slice(&log.entry(1).expect("read").expect("entry")).expect("json");
    assert_eq!(entry["kind"], "cancellation");
    let logged: SignedStatement =
        serde_json::from_value(entry["detail"]["statement"].clone()).expect("statement");
    logged
        .verify()
        .expect("the logged statement verifies on its own");
    let again = jobs.cancel(&stmt, &owner.id(), now()).expect("answered");
    assert_eq!(again, c);
    assert_eq!(
        log.size().expect("size"),
        2,
        "a repeated cancel logs nothing"
    );
    assert_eq!(jobs.events(&hash, 0).expect("events").len(), 2);
    assert_eq!(jobs.events(&hash, 1).expect("events").len(), 1);
}

#[test]
fn jobs_are_named_by_hash_by_id_or_by_a_unique_prefix() {
    let (_, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let hashes: Vec<String> = (0..20)
        .map(|i| submit(&jobs, &owner, &format!("j{i}"), 2).hash)
        .collect();
    let first = parse_hash(&hashes[0]).expect("hash");
    assert_eq!(jobs.resolve(&hashes[0]).expect("by hash"), first);
    assert_eq!(jobs.resolve("j0").expect("by id"), first);
    assert_eq!(jobs.resolve(&hashes[0][..9]).expect("by odd prefix"), first);
    assert_eq!(
        jobs.resolve(&hashes[0][..12]).expect("by even prefix"),
        first
    );
    assert_eq!(refused_code(jobs.resolve("nope")), Code::UnknownJob);
    assert_eq!(
        refused_code(jobs.resolve(&hashes[0][..4])),
        Code::UnknownJob
    );
    assert_eq!(jobs.list().expect("list").len(), 20);
    let counts = jobs.count_by_state().expect("counts");
    assert_eq!(counts["awaiting_approval"], 20);
    assert_eq!(counts.len(), JobState::NAMES.len());
}

#[test]
fn job_011_an_ambiguous_prefix_is_refused() {
    // Two records whose hashes share their first 8 hex digits, written directly.
    let (store, jobs) = memory();
    for last in [1u8, 2] {
        let mut hash = [0xab; 32];
        hash[31] = last;
        let r = JobRecord {
            hash: hex::encode(hash),
            job_id: format!("x{last}"),
            model_owner: "m".into(),
            participants: vec![],
            recipients: vec![],
            rounds: 1,
            approved: vec![],
            state: JobState::Queued,
            submitted_ms: 0,
            updated_ms: 0,
            events: 0,
        };
        store
            .transact(|txn| {
                txn.put(JOBS, &hash, &encode(&r)?)?;
                Ok::<_, ServiceError>(())
            })
            .expect("write");
    }
    assert_eq!(refused_code(jobs.resolve("abababab")), Code::Ambiguous);
    let mut one = [0xab; 32];
    one[31] = 1;
    assert_eq!(jobs.resolve(&hex::encode(one)).expect("exact"), one);
}

/// Runs a job through every state with the store, as the scheduler will.
fn run_to_completion(jobs: &Jobs, hash: &[u8; 32], rounds: u32) -> Result<JobRecord, ServiceError> {
    let t = |t: Transition| jobs.transition(hash, &t, "coordinator", now());
    t(Transition::Dispatch)?;
    for round in 1..=rounds {
        for stage in [Stage::Training, Stage::Aggregating, Stage::Committing] {
            if (round, stage) != (1, Stage::Training) {
                t(Transition::Progress { round, stage })?;
            }
        }
    }
    t(Transition::Release)?;
    t(Transition::Complete)
}

#[test]
fn approvals_queue_a_job_and_the_run_is_recorded_step_by_step() {
    let (store, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let hash = hash_of(&submit(&jobs, &owner, "j", 2));
    let approve =
        |o: &str| jobs.transition(&hash, &Transition::Approve { owner: o.into() }, o, now());
    assert_eq!(refused_code(approve("z")), Code::NotParticipant);
    assert_eq!(
        refused_code(jobs.transition(&hash, &Transition::Dispatch, "coordinator", now())),
        Code::WrongState
    );
    approve("a").expect("a");
    approve("a").expect("a again changes nothing");
    assert_eq!(approve("b").expect("b").state, JobState::Queued);
    let done = run_to_completion(&jobs, &hash, 2).expect("runs");
    assert_eq!(done.state, JobState::Completed);
    // submitted, a, b, dispatch, 5 progress steps, release, complete.
    let events = jobs.events(&hash, 0).expect("events");
    assert_eq!(events.len(), 11);
    assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(AuditLog::new(store).size().expect("size"), 11);
    assert_eq!(
        refused_code(jobs.transition(&hash, &Transition::Dispatch, "coordinator", now())),
        Code::Terminal
    );
}

#[test]
fn a_cancel_racing_a_dispatch_has_one_winner_and_nothing_runs_after_it() {
    let owner = Identity::generate().expect("key");
    let mut cancel_won = 0;
    for trial in 0..40 {
        let (_, jobs) = memory();
        let hash = hash_of(&submit(&jobs, &owner, "j", 3));
        approve_all(&jobs, &hash);
        let stmt = cancel_statement(&owner, &hash, "race");
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (j1, b1) = (jobs.clone(), barrier.clone());
        let runner = std::thread::spawn(move || {
            b1.wait();
            // The scheduler: dispatch, then keep going while the store lets it.
            run_to_completion(&j1, &hash, 3)
        });
        let (j2, id) = (jobs.clone(), owner.id());
        let canceller = std::thread::spawn(move || {
            barrier.wait();
            j2.cancel(&stmt, &id, now())
        });
        let ran = runner.join().expect("runner");
        let cancelled = canceller.join().expect("canceller");
        let end = jobs.get(&hash).expect("read").expect("job").state;
        match (&ran, &cancelled) {
            // The cancel came after the whole run: the run won, the cancel is refused.
            (Ok(done), Err(ServiceError::Refused(e))) => {
                assert_eq!(done.state, JobState::Completed);
                assert_eq!(e.code, Code::Terminal);
                assert_eq!(end, JobState::Completed);
            }
            // The cancel won, before or during the run: the run stopped at its next step.
            (Err(ServiceError::Refused(e)), Ok(c)) => {
                assert_eq!(
                    e.code,
                    Code::Terminal,
                    "trial {trial}: the run was stopped by {e}"
                );
                assert!(matches!(c.state, JobState::Cancelled { .. }));
                assert_eq!(end, c.state);
                cancel_won += 1;
            }
            other => panic!("trial {trial}: {other:?}"),
        }
        // Whatever won, nothing is recorded after a terminal state.
        let events = jobs.events(&hash, 0).expect("events");
        let first_terminal = events
            .iter()
            .position(|e| e.state.is_terminal())
            .expect("ended");
        assert_eq!(first_terminal, events.len() - 1, "trial {trial}");
    }
    eprintln!("the cancel won {cancel_won} of 40 races");
}

#[test]
fn a_restart_keeps_every_job_and_a_cancelled_job_stays_cancelled() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("coordinator.redb");
    let owner = Identity::generate().expect("key");
    let (cancelled, queued) = {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("open"));
        let jobs = Jobs::new(store);
        let ha = hash_of(&submit(&jobs, &owner, "a", 2));
        let hb = hash_of(&submit(&jobs, &owner, "b", 2));
        jobs.cancel(&cancel_statement(&owner, &ha, "stop"), &owner.id(), now())
            .expect("cancel");
        approve_all(&jobs, &hb);
        (ha, hb)
    };
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).expect("reopen"));
    let jobs = Jobs::new(store.clone());
    let a = jobs.get(&cancelled).expect("read").expect("a");
    assert!(matches!(a.state, JobState::Cancelled { .. }));
    assert_eq!(
        refused_code(jobs.transition(&cancelled, &Transition::Dispatch, "coordinator", now())),
        Code::Terminal
    );
    assert_eq!(
        jobs.get(&queued).expect("read").expect("b").state,
        JobState::Queued
    );
    assert_eq!(
        run_to_completion(&jobs, &queued, 2).expect("runs").state,
        JobState::Completed
    );
    // Resubmitting the cancelled manifest does not revive it.
    let file = jobs.manifest(&cancelled).expect("read").expect("manifest");
    let again = jobs.submit(&file, &owner.id(), now()).expect("answered");
    assert!(!again.new);
    assert!(matches!(again.record.state, JobState::Cancelled { .. }));
    // 2 submissions, 1 cancel, 2 approvals, dispatch, 5 progress steps, release, complete.
    assert_eq!(
        AuditLog::new(store).size().expect("size"),
        2 + 1 + 2 + 1 + 5 + 2
    );
}

#[test]
fn corrupt_records_are_reported_not_guessed() {
    let (store, jobs) = memory();
    store
        .transact(|txn| {
            txn.put(JOBS, &[1; 32], b"{\"hash\": 5}")?;
            Ok::<_, ServiceError>(())
        })
        .expect("write");
    assert!(matches!(jobs.get(&[1; 32]), Err(ServiceError::Corrupt(_))));
    assert!(matches!(jobs.list(), Err(ServiceError::Corrupt(_))));
}

#[test]
fn job_001_job_ids_that_could_mislead_are_refused() {
    let (_, jobs) = memory();
    let owner = Identity::generate().expect("key");
    for id in [
        "deadbeef",
        "0123456789abcdef",
        "bad id",
        "tab\tid",
        "ünïcode",
    ] {
        let m = manifest(&owner, id, 2);
        assert_eq!(
            refused_code(jobs.submit(&m, &owner.id(), now())),
            Code::Malformed,
            "{id:?}"
        );
    }
    // Short hex and ordinary ids are fine.
    for id in ["abc", "study-2026.v1_a"] {
        jobs.submit(&manifest(&owner, id, 2), &owner.id(), now())
            .expect(id);
    }
}

#[test]
fn job_012_a_model_owner_has_a_bounded_number_of_unfinished_jobs() {
    let (_, jobs) = memory();
    let owner = Identity::generate().expect("key");
    let mut first = None;
    for i in 0..MAX_OPEN_JOBS_PER_OWNER {
        let r = submit(&jobs, &owner, &format!("q{i}"), 2);
        first.get_or_insert(hash_of(&r));
    }
    let one_more = manifest(&owner, "q-extra", 2);
    assert_eq!(
        refused_code(jobs.submit(&one_more, &owner.id(), now())),
        Code::Quota
    );
    // Another owner is not affected; an ended job frees a place.
    let other = Identity::generate().expect("key");
    submit(&jobs, &other, "theirs", 2);
    let first = first.expect("first");
    jobs.cancel(
        &cancel_statement(&owner, &first, "make room"),
        &owner.id(),
        now(),
    )
    .expect("cancel");
    jobs.submit(&one_more, &owner.id(), now())
        .expect("room again");
}

#[test]
fn names_resolve_only_among_the_jobs_a_caller_may_see() {
    let (_, jobs) = memory();
    let alice = Identity::generate().expect("key");
    let mallory = Identity::generate().expect("key");
    let hers = submit(&jobs, &alice, "hers", 2);
    let theirs = submit(&jobs, &mallory, "theirs", 2);
    let mallory_sees = |r: &JobRecord| r.model_owner == mallory.id();
    for name in [hers.hash.as_str(), &hers.hash[..10], "hers"] {
        assert_eq!(
            refused_code(jobs.resolve_visible(name, mallory_sees)),
            Code::UnknownJob,
            "{name}"
        );
    }
    assert_eq!(
        jobs.resolve_visible(&theirs.hash[..10], mallory_sees)
            .expect("own"),
        hash_of(&theirs)
    );
}
