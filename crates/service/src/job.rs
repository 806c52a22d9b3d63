//! The job lifecycle: a closed set of states and the only transitions between them.
//!
//! ```text
//! awaiting_approval ──(every participant approved)──▶ queued ──dispatch──▶ running{round, stage}
//!   │                                                    │                      │   ▲ progress
//!   │  rejected{owner, rule} | expired  ◀────────────────┤                      ▼   │ (forward only)
//!   └────────────────────────────────────────────────────┘       releasing ──▶ completed
//!
//!   from any state that is not terminal: cancelled{by, reason} | failed{reason}
//! ```
//!
//! `completed`, `cancelled`, `rejected`, `expired` and `failed` are terminal: no transition
//! leaves them (JOB-007). A repeated cancel of a cancelled job changes nothing and is not an
//! error, so a client may retry a cancel whose answer it lost. Rejection is possible only before
//! the job runs (a participant's policy refuses the offer, or refuses it again at dispatch).
//! Each refusal carries a closed, numbered [`Code`] (the service rules table in
//! docs/rules.md).

use serde::{Deserialize, Serialize};

/// The stage of a running round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Owners train on the global model and send their contributions.
    Training,
    /// The contributions are combined: secure-aggregation stages, unsealing by the key holder.
    Aggregating,
    /// The new global model and the round's record are being committed.
    Committing,
}

impl Stage {
    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Training => "training",
            Stage::Aggregating => "aggregating",
            Stage::Committing => "committing",
        }
    }
}

/// A job's state. A closed set: a store holding anything else is refused as corrupt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobState {
    /// Verified and stored; waiting for participants' approvals.
    AwaitingApproval,
    /// Every participant approved; waiting to be dispatched.
    Queued,
    /// Round `round` (1-based) is in `stage`.
    Running {
        /// The round.
        round: u32,
        /// Its stage.
        stage: Stage,
    },
    /// The rounds are done; the model is being released to its recipients.
    Releasing,
    /// Done; the recipients have the model. Terminal.
    Completed,
    /// Stopped by a signed statement of `by`. Terminal.
    Cancelled {
        /// The party id that cancelled it.
        by: String,
        /// Its reason.
        reason: String,
    },
    /// A participant's policy refused it. Terminal.
    Rejected {
        /// The participant.
        owner: String,
        /// The policy rule that refused it.
        rule: String,
    },
    /// It was not dispatched before it expired. Terminal.
    Expired,
    /// It could not finish. Terminal.
    Failed {
        /// Why, without anything the protocol hides.
        reason: String,
    },
}

/// How a terminal job ended, which is also the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `completed`: exit code 0.
    Completed,
    /// `rejected`, or refused at submission: exit code 3.
    Refused,
    /// `failed`: exit code 4.
    Failed,
    /// `cancelled`: exit code 5.
    Cancelled,
    /// `expired`: exit code 6.
    Expired,
}

impl Outcome {
    /// The exit code of `confide job submit --wait` and `confide job status` for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Completed => 0,
            Outcome::Refused => 3,
            Outcome::Failed => 4,
            Outcome::Cancelled => 5,
            Outcome::Expired => 6,
        }
    }
}

impl JobState {
    /// The state's name (`running`, `cancelled`, …).
    pub fn name(&self) -> &'static str {
        match self {
            JobState::AwaitingApproval => "awaiting_approval",
            JobState::Queued => "queued",
            JobState::Running { .. } => "running",
            JobState::Releasing => "releasing",
            JobState::Completed => "completed",
            JobState::Cancelled { .. } => "cancelled",
            JobState::Rejected { .. } => "rejected",
            JobState::Expired => "expired",
            JobState::Failed { .. } => "failed",
        }
    }

    /// Every state name, in lifecycle order (for `--state` filters and metrics).
    pub const NAMES: [&'static str; 9] = [
        "awaiting_approval",
        "queued",
        "running",
        "releasing",
        "completed",
        "cancelled",
        "rejected",
        "expired",
        "failed",
    ];

    /// How the job ended, or `None` while it has not.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            JobState::Completed => Some(Outcome::Completed),
            JobState::Cancelled { .. } => Some(Outcome::Cancelled),
            JobState::Rejected { .. } => Some(Outcome::Refused),
            JobState::Expired => Some(Outcome::Expired),
            JobState::Failed { .. } => Some(Outcome::Failed),
            JobState::AwaitingApproval
            | JobState::Queued
            | JobState::Running { .. }
            | JobState::Releasing => None,
        }
    }

    /// Whether no transition leaves this state.
    pub fn is_terminal(&self) -> bool {
        self.outcome().is_some()
    }

    /// One line for people: `running (round 3, aggregating)`, `cancelled by … : reason`.
    pub fn describe(&self) -> String {
        match self {
            JobState::Running { round, stage } => {
                format!("running (round {round}, {})", stage.as_str())
            }
            JobState::Cancelled { by, reason } => format!("cancelled by {by}: {reason}"),
            JobState::Rejected { owner, rule } => format!("rejected by {owner} (rule {rule})"),
            JobState::Failed { reason } => format!("failed: {reason}"),
            other => other.name().to_string(),
        }
    }
}

/// A request to change a job's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Participant `owner` approved the job.
    Approve {
        /// The participant's name.
        owner: String,
    },
    /// Participant `owner`'s policy refused the job under `rule`.
    Reject {
        /// The participant's name.
        owner: String,
        /// The rule.
        rule: String,
    },
    /// The scheduler starts the job: round 1, training.
    Dispatch,
    /// The job reached `round` and `stage`; never backwards, never past the job's rounds.
    Progress {
        /// The round.
        round: u32,
        /// Its stage.
        stage: Stage,
    },
    /// The last round committed (it is in `committing`); the model goes to its recipients.
    Release,
    /// The recipients have the model.
    Complete,
    /// `by` cancelled the job (checked against its signed statement by the caller).
    Cancel {
        /// The party id.
        by: String,
        /// Its reason.
        reason: String,
    },
    /// The job expired before it was dispatched.
    Expire,
    /// The job cannot finish.
    Fail {
        /// Why.
        reason: String,
    },
}

impl Transition {
    /// The transition's name, for events and refusals.
    pub fn name(&self) -> &'static str {
        match self {
            Transition::Approve { .. } => "approve",
            Transition::Reject { .. } => "reject",
            Transition::Dispatch => "dispatch",
            Transition::Progress { .. } => "progress",
            Transition::Release => "release",
            Transition::Complete => "complete",
            Transition::Cancel { .. } => "cancel",
            Transition::Expire => "expire",
            Transition::Fail { .. } => "fail",
        }
    }
}

/// A refusal's number: a closed set, listed in docs/rules.md with where each is tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Code {
    /// JOB-001: the submission is not a well-formed manifest file, or its job spec is invalid.
    Malformed,
    /// JOB-002: the model owner's signature (or an approval) is missing or does not verify.
    Signature,
    /// JOB-003: the manifest's job id is already used by a different manifest.
    IdReused,
    /// JOB-004: the submitter is not the model owner that the manifest names.
    NotModelOwner,
    /// JOB-005: no job has that name.
    UnknownJob,
    /// JOB-006: the caller may not do this to this job (cancel by a stranger, download by
    /// someone who is not a recipient).
    NotAllowed,
    /// JOB-007: the job is in a terminal state, which is never left.
    Terminal,
    /// JOB-008: the transition does not apply to the job's current state.
    WrongState,
    /// JOB-009: a signed statement is malformed, not signed by the caller, or its signature
    /// does not verify.
    Statement,
    /// JOB-010: the party is not a participant of the job.
    NotParticipant,
    /// JOB-011: a job name (a hash prefix) matches more than one job.
    Ambiguous,
    /// JOB-012: the model owner already has as many unfinished jobs as a coordinator keeps
    /// for one owner.
    Quota,
}

impl Code {
    /// Every code, in order.
    pub const ALL: [Code; 12] = [
        Code::Malformed,
        Code::Signature,
        Code::IdReused,
        Code::NotModelOwner,
        Code::UnknownJob,
        Code::NotAllowed,
        Code::Terminal,
        Code::WrongState,
        Code::Statement,
        Code::NotParticipant,
        Code::Ambiguous,
        Code::Quota,
    ];

    /// The rule id, `JOB-001` … `JOB-012`.
    pub fn id(self) -> &'static str {
        match self {
            Code::Malformed => "JOB-001",
            Code::Signature => "JOB-002",
            Code::IdReused => "JOB-003",
            Code::NotModelOwner => "JOB-004",
            Code::UnknownJob => "JOB-005",
            Code::NotAllowed => "JOB-006",
            Code::Terminal => "JOB-007",
            Code::WrongState => "JOB-008",
            Code::Statement => "JOB-009",
            Code::NotParticipant => "JOB-010",
            Code::Ambiguous => "JOB-011",
            Code::Quota => "JOB-012",
        }
    }
}

/// A refused request: its rule and what was wrong, in words that reveal nothing the caller
/// may not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {message}", code.id())]
pub struct Refusal {
    /// The rule.
    pub code: Code,
    /// What was wrong.
    pub message: String,
}

impl Refusal {
    /// A refusal under `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// What the coordinator keeps about a job besides its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// The manifest hash, hex: the job's identity.
    pub hash: String,
    /// The manifest's job id: the job's display name.
    pub job_id: String,
    /// The model owner's party id.
    pub model_owner: String,
    /// The participants' names.
    pub participants: Vec<String>,
    /// The recipients' party ids.
    pub recipients: Vec<String>,
    /// The job's rounds.
    pub rounds: u32,
    /// The participants that approved so far, in order of approval.
    pub approved: Vec<String>,
    /// The state.
    pub state: JobState,
    /// When it was submitted, Unix milliseconds.
    pub submitted_ms: u64,
    /// When its state last changed, Unix milliseconds.
    pub updated_ms: u64,
    /// How many events the job has (the next event's sequence number).
    pub events: u64,
}

/// What [`JobRecord::apply`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The record after the transition.
    Changed(Box<JobRecord>),
    /// The transition was already in effect (a repeated cancel or approval): nothing to store.
    Unchanged,
}

impl JobRecord {
    /// Applies `t` at `now_ms`: the next record, nothing (already in effect), or the numbered
    /// reason it is refused. The record itself never changes; the caller stores the result.
    ///
    /// # Errors
    /// JOB-007 from a terminal state, JOB-008 for a transition the state does not allow (or
    /// progress that goes backwards or past the job's rounds), JOB-010 for an approval or
    /// rejection by a non-participant.
    pub fn apply(&self, t: &Transition, now_ms: u64) -> Result<Applied, Refusal> {
        if let (JobState::Cancelled { .. }, Transition::Cancel { .. }) = (&self.state, t) {
            return Ok(Applied::Unchanged);
        }
        if self.state.is_terminal() {
            return Err(Refusal::new(
                Code::Terminal,
                format!(
                    "job `{}` is {}; a terminal state is never left (refused: {})",
                    self.job_id,
                    self.state.name(),
                    t.name()
                ),
            ));
        }
        let wrong = || {
            Refusal::new(
                Code::WrongState,
                format!(
                    "`{}` does not apply to job `{}` in state {}",
                    t.name(),
                    self.job_id,
                    self.state.describe()
                ),
            )
        };
        let mut next = self.clone();
        next.updated_ms = now_ms;
        match (t, &self.state) {
            (Transition::Approve { owner }, JobState::AwaitingApproval) => {
                self.participant(owner)?;
                if self.approved.contains(owner) {
                    return Ok(Applied::Unchanged);
                }
                next.approved.push(owner.clone());
                if self.participants.iter().all(|p| next.approved.contains(p)) {
                    next.state = JobState::Queued;
                }
            }
            (Transition::Approve { owner }, JobState::Queued | JobState::Running { .. }) => {
                self.participant(owner)?;
                return Ok(Applied::Unchanged);
            }
            (Transition::Reject { owner, rule }, JobState::AwaitingApproval | JobState::Queued) => {
                self.participant(owner)?;
                next.state = JobState::Rejected {
                    owner: owner.clone(),
                    rule: rule.clone(),
                };
            }
            (Transition::Dispatch, JobState::Queued) => {
                next.state = JobState::Running {
                    round: 1,
                    stage: Stage::Training,
                };
            }
            (Transition::Progress { round, stage }, JobState::Running { round: r, stage: s }) => {
                if *round == 0
                    || *round > self.rounds
                    || *round > r.saturating_add(1)
                    || (*round, *stage) <= (*r, *s)
                {
                    return Err(Refusal::new(
                        Code::WrongState,
                        format!(
                            "job `{}` is at round {r} ({}) of {}; progress to round {round} ({}) \
                             would go backwards, stand still, skip a round or pass the last round",
                            self.job_id,
                            s.as_str(),
                            self.rounds,
                            stage.as_str()
                        ),
                    ));
                }
                next.state = JobState::Running {
                    round: *round,
                    stage: *stage,
                };
            }
            (
                Transition::Release,
                JobState::Running {
                    round,
                    stage: Stage::Committing,
                },
            ) if *round == self.rounds => {
                next.state = JobState::Releasing;
            }
            (Transition::Complete, JobState::Releasing) => next.state = JobState::Completed,
            (Transition::Cancel { by, reason }, _) => {
                next.state = JobState::Cancelled {
                    by: by.clone(),
                    reason: reason.clone(),
                };
            }
            (Transition::Expire, JobState::AwaitingApproval | JobState::Queued) => {
                next.state = JobState::Expired;
            }
            (Transition::Fail { reason }, _) => {
                next.state = JobState::Failed {
                    reason: reason.clone(),
                };
            }
            _ => return Err(wrong()),
        }
        Ok(Applied::Changed(Box::new(next)))
    }

    fn participant(&self, owner: &str) -> Result<(), Refusal> {
        if self.participants.iter().any(|p| p == owner) {
            Ok(())
        } else {
            Err(Refusal::new(
                Code::NotParticipant,
                format!("`{owner}` is not a participant of job `{}`", self.job_id),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: JobState) -> JobRecord {
        JobRecord {
            hash: "00".repeat(32),
            job_id: "j".into(),
            model_owner: "m".into(),
            participants: vec!["a".into(), "b".into()],
            recipients: vec!["m".into()],
            rounds: 3,
            approved: Vec::new(),
            state,
            submitted_ms: 1,
            updated_ms: 1,
            events: 0,
        }
    }

    fn changed(r: &JobRecord, t: Transition) -> JobRecord {
        match r.apply(&t, 9) {
            Ok(Applied::Changed(n)) => *n,
            other => panic!("{t:?} on {:?}: {other:?}", r.state),
        }
    }

    fn refused(r: &JobRecord, t: Transition) -> Code {
        match r.apply(&t, 9) {
            Err(e) => e.code,
            other => panic!("{t:?} on {:?} was not refused: {other:?}", r.state),
        }
    }

    fn cancel() -> Transition {
        Transition::Cancel {
            by: "m".into(),
            reason: "r".into(),
        }
    }

    fn running(round: u32, stage: Stage) -> JobState {
        JobState::Running { round, stage }
    }

    /// Every state, one of each.
    fn every_state() -> Vec<JobState> {
        vec![
            JobState::AwaitingApproval,
            JobState::Queued,
            running(2, Stage::Aggregating),
            JobState::Releasing,
            JobState::Completed,
            JobState::Cancelled {
                by: "m".into(),
                reason: "r".into(),
            },
            JobState::Rejected {
                owner: "a".into(),
                rule: "r1".into(),
            },
            JobState::Expired,
            JobState::Failed { reason: "x".into() },
        ]
    }

    /// Every kind of transition, one of each.
    fn every_transition() -> Vec<Transition> {
        vec![
            Transition::Approve { owner: "a".into() },
            Transition::Reject {
                owner: "a".into(),
                rule: "r1".into(),
            },
            Transition::Dispatch,
            Transition::Progress {
                round: 3,
                stage: Stage::Training,
            },
            Transition::Release,
            Transition::Complete,
            cancel(),
            Transition::Expire,
            Transition::Fail { reason: "x".into() },
        ]
    }

    #[test]
    fn the_happy_path_runs_through_every_live_state() {
        let r = record(JobState::AwaitingApproval);
        let r = changed(&r, Transition::Approve { owner: "a".into() });
        assert_eq!(r.state, JobState::AwaitingApproval, "b has not approved");
        let r = changed(&r, Transition::Approve { owner: "b".into() });
        assert_eq!(r.state, JobState::Queued);
        let r = changed(&r, Transition::Dispatch);
        assert_eq!(r.state, running(1, Stage::Training));
        let mut r = r;
        for round in 1..=3 {
            for stage in [Stage::Training, Stage::Aggregating, Stage::Committing] {
                if (round, stage) == (1, Stage::Training) {
                    continue;
                }
                r = changed(&r, Transition::Progress { round, stage });
            }
        }
        let r = changed(&r, Transition::Release);
        assert_eq!(r.state, JobState::Releasing);
        let r = changed(&r, Transition::Complete);
        assert_eq!(r.state.outcome(), Some(Outcome::Completed));
        assert_eq!(r.updated_ms, 9);
    }

    #[test]
    fn job_007_no_transition_leaves_a_terminal_state() {
        let mut checked = 0;
        for s in every_state().into_iter().filter(JobState::is_terminal) {
            for t in every_transition() {
                let r = record(s.clone());
                match (&s, &t) {
                    // A repeated cancel is answered, not refused, and changes nothing.
                    (JobState::Cancelled { .. }, Transition::Cancel { .. }) => {
                        assert_eq!(r.apply(&t, 9), Ok(Applied::Unchanged));
                    }
                    _ => assert_eq!(refused(&r, t), Code::Terminal),
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 5 * 9);
    }

    #[test]
    fn every_live_state_can_be_cancelled_or_failed() {
        for s in every_state().into_iter().filter(|s| !s.is_terminal()) {
            let r = record(s.clone());
            assert!(matches!(
                changed(&r, cancel()).state,
                JobState::Cancelled { .. }
            ));
            assert!(matches!(
                changed(&r, Transition::Fail { reason: "x".into() }).state,
                JobState::Failed { .. }
            ));
        }
    }

    #[test]
    fn job_008_transitions_outside_their_states_are_refused() {
        // The allowed (state, transition) pairs among the live states; everything else among
        // them is JOB-008.
        let allowed = |s: &JobState, t: &Transition| -> bool {
            matches!(
                (s, t),
                (_, Transition::Cancel { .. } | Transition::Fail { .. })
                    | (
                        JobState::AwaitingApproval,
                        Transition::Approve { .. } | Transition::Reject { .. } | Transition::Expire
                    )
                    | (
                        JobState::Queued,
                        Transition::Approve { .. }
                            | Transition::Reject { .. }
                            | Transition::Dispatch
                            | Transition::Expire
                    )
                    | (
                        JobState::Running { .. },
                        Transition::Approve { .. } | Transition::Progress { .. }
                    )
                    | (JobState::Releasing, Transition::Complete)
            )
        };
        let mut refusals = 0;
        for s in every_state().into_iter().filter(|s| !s.is_terminal()) {
            for t in every_transition() {
                let r = record(s.clone());
                if allowed(&s, &t) {
                    assert!(r.apply(&t, 9).is_ok(), "{t:?} on {s:?}");
                } else {
                    assert_eq!(refused(&r, t), Code::WrongState, "on {s:?}");
                    refusals += 1;
                }
            }
        }
        assert_eq!(refusals, 4 * 9 - 18);
    }

    #[test]
    fn job_008_progress_only_moves_forward_and_within_the_rounds() {
        let r = record(running(2, Stage::Aggregating));
        for (round, stage) in [
            (2, Stage::Aggregating),
            (2, Stage::Training),
            (1, Stage::Committing),
            (0, Stage::Training),
            (4, Stage::Training),
        ] {
            assert_eq!(
                refused(&r, Transition::Progress { round, stage }),
                Code::WrongState,
                "round {round} {stage:?}"
            );
        }
        assert_eq!(
            changed(
                &r,
                Transition::Progress {
                    round: 2,
                    stage: Stage::Committing
                }
            )
            .state,
            running(2, Stage::Committing)
        );
        // Release only after the last round.
        assert_eq!(refused(&r, Transition::Release), Code::WrongState);
        let last = record(running(3, Stage::Committing));
        assert_eq!(
            changed(&last, Transition::Release).state,
            JobState::Releasing
        );
    }

    #[test]
    fn job_010_only_participants_approve_or_reject_and_approvals_are_idempotent() {
        let r = record(JobState::AwaitingApproval);
        assert_eq!(
            refused(&r, Transition::Approve { owner: "z".into() }),
            Code::NotParticipant
        );
        assert_eq!(
            refused(
                &r,
                Transition::Reject {
                    owner: "z".into(),
                    rule: "r".into()
                }
            ),
            Code::NotParticipant
        );
        let once = changed(&r, Transition::Approve { owner: "a".into() });
        assert_eq!(
            once.apply(&Transition::Approve { owner: "a".into() }, 9),
            Ok(Applied::Unchanged)
        );
        let rejected = changed(
            &once,
            Transition::Reject {
                owner: "b".into(),
                rule: "max-epsilon".into(),
            },
        );
        assert_eq!(rejected.state.outcome(), Some(Outcome::Refused));
        assert_eq!(
            rejected.state.describe(),
            "rejected by b (rule max-epsilon)"
        );
    }

    #[test]
    fn states_round_trip_through_json_and_unknown_states_are_refused() {
        for s in every_state() {
            let r = record(s);
            let text = serde_json::to_string(&r).expect("json");
            let back: JobRecord = serde_json::from_str(&text).expect("parses");
            assert_eq!(back, r);
        }
        let mut v = serde_json::to_value(record(JobState::Queued)).expect("json");
        v["state"]["name"] = "paused".into();
        assert!(serde_json::from_value::<JobRecord>(v).is_err());
    }

    #[test]
    fn outcomes_have_distinct_exit_codes_and_codes_distinct_ids() {
        let codes: std::collections::BTreeSet<i32> = [
            Outcome::Completed,
            Outcome::Refused,
            Outcome::Failed,
            Outcome::Cancelled,
            Outcome::Expired,
        ]
        .iter()
        .map(|o| o.exit_code())
        .collect();
        assert_eq!(codes.len(), 5);
        let ids: std::collections::BTreeSet<&str> = Code::ALL.iter().map(|c| c.id()).collect();
        assert_eq!(ids.len(), Code::ALL.len());
        let names: Vec<&str> = every_state().iter().map(JobState::name).collect();
        assert_eq!(names, JobState::NAMES);
    }
}
