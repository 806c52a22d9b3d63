//! The privacy budget ledger: how much of each dataset's lifetime privacy budget jobs have spent.
//!
//! Each dataset has a lifetime budget `(ε_total, δ_total)` set by its owner. A job is debited its
//! cost `(ε, δ)`, as computed by the accountant for the whole job, **before it starts**, and the
//! debit is refused if it would take the dataset past its budget. Check and debit happen in one
//! serialisable store transaction, so concurrent jobs (threads, or processes taking turns on the
//! store) can never overspend together.
//!
//! # Composition across jobs
//!
//! Jobs compose by **basic composition** (Dwork and Roth, "The Algorithmic Foundations of
//! Differential Privacy", 2014, Theorem 3.16, which also holds for adaptively chosen mechanisms):
//! running mechanisms that are `(ε_i, δ_i)`-DP on the same dataset is `(Σ ε_i, Σ δ_i)`-DP. So a
//! dataset's spend is the sum of its jobs' costs, for ε and for δ separately. Advanced
//! composition or composing privacy loss distributions would give a tighter total, but only for
//! jobs whose mechanisms are known in full; jobs here are arbitrary, chosen by different
//! parties, and reported only as `(ε, δ)`, for which basic composition is the bound that always
//! holds. Within one job the accountant composes the job's steps tightly (RDP, PLD).
//!
//! A comparison allows a relative tolerance of 10⁻¹² so that spending exactly the budget is
//! allowed despite rounding in the sum (`0.1 + 0.2` slightly exceeds `0.3`).
//!
//! # Job life cycle and crashes
//!
//! [`BudgetLedger::debit`] → [`BudgetLedger::mark_started`] → (the job runs) →
//! [`BudgetLedger::mark_finished`]. Callers must record the start **before** the job touches the
//! data. Every step is durable when it returns (with a durable store) and idempotent:
//!
//! - A retried debit with the same `(dataset, job id)` returns the receipt of the first debit
//!   and spends nothing more, so a coordinator that crashed after debiting can simply retry. A
//!   retry with a different cost is refused: a job id names one job with one cost.
//! - A debit is never refunded automatically. A job that was debited and then lost (crash,
//!   cancellation) stays debited: the ledger cannot know that it did not run partially.
//! - [`BudgetLedger::release`] refunds a debit only while the job is still `Debited`, i.e. was
//!   never marked started. It is an operator's explicit action, for someone who knows the job
//!   never ran; once a job has started, its debit stays forever. A released job id cannot be
//!   debited again.
//!
//! Who may set a budget or release a debit is a governance question (policies, approvals, audit
//! log) answered above this layer; the ledger enforces the arithmetic and the life cycle.
//!
//! # Storage
//!
//! Records are JSON in two [`confide_store`] maps: [`BUDGETS_TABLE`] (key: dataset name) and
//! [`ENTRIES_TABLE`] (key: `dataset ‖ 0x00 ‖ job id`; names cannot contain control characters,
//! so a dataset's entries are exactly the keys with prefix `dataset ‖ 0x00`).

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use confide_store::{ReadTxn, Store, StoreError, StoreExt, Txn};
use serde::{Deserialize, Serialize};

/// The store map holding each dataset's budget.
pub const BUDGETS_TABLE: &str = "dp-ledger.budgets";
/// The store map holding each job's debit.
pub const ENTRIES_TABLE: &str = "dp-ledger.entries";
/// The longest dataset name or job id accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Relative tolerance of budget comparisons.
pub const RELATIVE_TOLERANCE: f64 = 1e-12;

/// A source of wall-clock time in whole seconds since the Unix epoch. Passed in, so that tests
/// and simulations are deterministic.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Seconds since 1970-01-01T00:00:00Z.
    fn unix_seconds(&self) -> u64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_seconds(&self) -> u64 {
        // A clock set before 1970 reads as 1970.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }
}

/// A privacy budget or cost `(ε, δ)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// ε: finite and ≥ 0.
    pub epsilon: f64,
    /// δ: in `[0, 1)`.
    pub delta: f64,
}

impl Budget {
    /// Nothing spent.
    pub const ZERO: Budget = Budget {
        epsilon: 0.0,
        delta: 0.0,
    };

    /// A checked `(ε, δ)`.
    pub fn new(epsilon: f64, delta: f64) -> Result<Self, LedgerError> {
        let budget = Budget { epsilon, delta };
        budget.validate("budget")?;
        Ok(budget)
    }

    fn validate(self, what: &'static str) -> Result<(), LedgerError> {
        let reason = if !self.epsilon.is_finite() || self.epsilon < 0.0 {
            "ε must be finite and ≥ 0"
        } else if !(0.0..1.0).contains(&self.delta) {
            "δ must be in [0, 1)"
        } else {
            return Ok(());
        };
        Err(LedgerError::InvalidBudget {
            what,
            epsilon: self.epsilon,
            delta: self.delta,
            reason,
        })
    }

    fn plus(self, other: Budget) -> Budget {
        Budget {
            epsilon: self.epsilon + other.epsilon,
            delta: self.delta + other.delta,
        }
    }

    /// Whether spending `self` stays within `limit`, up to [`RELATIVE_TOLERANCE`].
    fn within(self, limit: Budget) -> bool {
        let fits = |spent: f64, limit: f64| spent <= limit + limit * RELATIVE_TOLERANCE;
        fits(self.epsilon, limit.epsilon) && fits(self.delta, limit.delta)
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "(ε = {}, δ = {})", self.epsilon, self.delta)
    }
}

/// Where a debited job is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Debited, not started: the job may not have run. Counts against the budget.
    Debited,
    /// Started: the job may have used the data. Counts against the budget forever.
    Started,
    /// Finished. Counts against the budget forever.
    Finished,
    /// Released by an operator before it started. Does not count.
    Released,
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryState::Debited => "debited (not started)",
            EntryState::Started => "started",
            EntryState::Finished => "finished",
            EntryState::Released => "released",
        })
    }
}

/// One job's debit on one dataset, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The job.
    pub job_id: String,
    /// What the job costs.
    pub cost: Budget,
    /// Where the job is in its life cycle.
    pub state: EntryState,
    /// The dataset's total spend right after this debit.
    pub spent_after: Budget,
    /// Position among the dataset's debits (0 for the first).
    pub ordinal: u64,
    /// When the debit was made (Unix seconds).
    pub debited_at: u64,
    /// When the job was marked started.
    pub started_at: Option<u64>,
    /// When the job was marked finished.
    pub finished_at: Option<u64>,
    /// When the debit was released.
    pub released_at: Option<u64>,
}

/// Proof that a job's cost was debited from a dataset's budget. Only the ledger makes one, so
/// code that launches jobs can require it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Receipt {
    dataset: String,
    job_id: String,
    cost: Budget,
    spent_after: Budget,
    debited_at: u64,
}

impl Receipt {
    fn new(dataset: &str, entry: &LedgerEntry) -> Self {
        Receipt {
            dataset: dataset.to_owned(),
            job_id: entry.job_id.clone(),
            cost: entry.cost,
            spent_after: entry.spent_after,
            debited_at: entry.debited_at,
        }
    }

    /// The dataset debited.
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// The job debited.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The amount debited.
    pub fn cost(&self) -> Budget {
        self.cost
    }

    /// The dataset's total spend right after this debit.
    pub fn spent_after(&self) -> Budget {
        self.spent_after
    }

    /// When the debit was made (Unix seconds).
    pub fn debited_at(&self) -> u64 {
        self.debited_at
    }
}

/// Ledger errors: the caller's invalid input or misuse, refusals by the budget rules, an
/// unreadable record, or the store's failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A dataset name or job id is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// "dataset name" or "job id".
        what: &'static str,
        /// The value given.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A budget or cost is not a valid `(ε, δ)`.
    #[error("invalid {what} (ε = {epsilon}, δ = {delta}): {reason}")]
    InvalidBudget {
        /// "budget" or "cost".
        what: &'static str,
        /// The ε given.
        epsilon: f64,
        /// The δ given.
        delta: f64,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The dataset has no budget, so nothing may be spent on it.
    #[error(
        "dataset {dataset:?} has no privacy budget: its owner must set one before any job can use it"
    )]
    NoBudget {
        /// The dataset.
        dataset: String,
    },
    /// The debit would take the dataset past its budget; nothing was debited.
    #[error(
        "refused: job {job_id:?} would exceed the privacy budget of dataset {dataset:?}: \
         budget {budget}, already spent {spent}, requested {requested}"
    )]
    BudgetExceeded {
        /// The dataset.
        dataset: String,
        /// The job.
        job_id: String,
        /// The dataset's lifetime budget.
        budget: Budget,
        /// What jobs have spent so far.
        spent: Budget,
        /// The job's cost.
        requested: Budget,
    },
    /// A new budget would be below what is already spent; the budget was not changed.
    #[error(
        "refused: budget {requested} for dataset {dataset:?} is below what jobs have already spent ({spent})"
    )]
    BudgetBelowSpent {
        /// The dataset.
        dataset: String,
        /// The budget asked for.
        requested: Budget,
        /// What jobs have spent so far.
        spent: Budget,
    },
    /// A retried debit asks for a different cost than the recorded one.
    #[error(
        "job {job_id:?} on dataset {dataset:?} was already debited {recorded}, but this debit asks \
         for {requested}: a job id names one job with one cost (use a new job id)"
    )]
    CostMismatch {
        /// The dataset.
        dataset: String,
        /// The job.
        job_id: String,
        /// The cost debited first.
        recorded: Budget,
        /// The cost asked for now.
        requested: Budget,
    },
    /// The job's debit was released, so its id cannot be debited again.
    #[error(
        "job {job_id:?} on dataset {dataset:?} was released and cannot be debited again (use a new job id)"
    )]
    JobReleased {
        /// The dataset.
        dataset: String,
        /// The job.
        job_id: String,
    },
    /// No debit exists for the job on the dataset.
    #[error("no job {job_id:?} has been debited on dataset {dataset:?}")]
    UnknownJob {
        /// The dataset.
        dataset: String,
        /// The job.
        job_id: String,
    },
    /// The job's state does not allow the step.
    #[error("job {job_id:?} on dataset {dataset:?} is {state}: cannot {action}")]
    InvalidTransition {
        /// The dataset.
        dataset: String,
        /// The job.
        job_id: String,
        /// Its state.
        state: EntryState,
        /// The step refused.
        action: &'static str,
    },
    /// A release of a job that has started.
    #[error(
        "refused: job {job_id:?} on dataset {dataset:?} is {state}; it may have used the data, so \
         its debit stays (only a job that never started can be released)"
    )]
    ReleaseAfterStart {
        /// The dataset.
        dataset: String,
        /// The job.
        job_id: String,
        /// Its state.
        state: EntryState,
    },
    /// A stored record could not be decoded or encoded.
    #[error("ledger record {record} is unreadable: {detail}")]
    Corrupt {
        /// Which record.
        record: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A dataset's budget record, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DatasetRecord {
    budget: Budget,
    budget_set_at: u64,
    /// The ordinal the next debit gets.
    next_ordinal: u64,
}

/// The privacy budget ledger over a [`Store`]. Cheap to clone; clones share the store.
#[derive(Debug, Clone)]
pub struct BudgetLedger {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

fn validate_name(what: &'static str, value: &str) -> Result<(), LedgerError> {
    let reason = if value.is_empty() {
        "empty"
    } else if value.len() > MAX_NAME_LEN {
        "longer than 256 bytes"
    } else if value.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(LedgerError::InvalidName {
        what,
        value: value.to_owned(),
        reason,
    })
}

fn entry_prefix(dataset: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(dataset.len() + 1);
    key.extend_from_slice(dataset.as_bytes());
    key.push(0);
    key
}

fn entry_key(dataset: &str, job_id: &str) -> Vec<u8> {
    let mut key = entry_prefix(dataset);
    key.extend_from_slice(job_id.as_bytes());
    key
}

fn decode<T: serde::de::DeserializeOwned>(record: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|error| LedgerError::Corrupt {
        record: record.to_owned(),
        detail: error.to_string(),
    })
}

fn encode<T: Serialize>(record: &str, value: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(value).map_err(|error| LedgerError::Corrupt {
        record: record.to_owned(),
        detail: error.to_string(),
    })
}

fn load_dataset(txn: &dyn ReadTxn, dataset: &str) -> Result<Option<DatasetRecord>, LedgerError> {
    txn.get(BUDGETS_TABLE, dataset.as_bytes())?
        .map(|bytes| decode(&format!("budget of dataset {dataset:?}"), &bytes))
        .transpose()
}

/// The dataset's entries in debit order.
fn load_entries(txn: &dyn ReadTxn, dataset: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
    let mut entries = txn
        .scan_prefix(ENTRIES_TABLE, &entry_prefix(dataset))?
        .into_iter()
        .map(|(key, bytes)| {
            let record = format!(
                "entry {:?} of dataset {dataset:?}",
                String::from_utf8_lossy(key.get(dataset.len() + 1..).unwrap_or_default())
            );
            decode::<LedgerEntry>(&record, &bytes)
        })
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|entry| entry.ordinal);
    Ok(entries)
}

fn load_entry(
    txn: &dyn ReadTxn,
    dataset: &str,
    job_id: &str,
) -> Result<Option<LedgerEntry>, LedgerError> {
    txn.get(ENTRIES_TABLE, &entry_key(dataset, job_id))?
        .map(|bytes| decode(&format!("entry {job_id:?} of dataset {dataset:?}"), &bytes))
        .transpose()
}

fn store_entry(txn: &mut dyn Txn, dataset: &str, entry: &LedgerEntry) -> Result<(), LedgerError> {
    let bytes = encode(
        &format!("entry {:?} of dataset {dataset:?}", entry.job_id),
        entry,
    )?;
    txn.put(ENTRIES_TABLE, &entry_key(dataset, &entry.job_id), &bytes)?;
    Ok(())
}

/// What counts against the budget: every entry not released, summed in debit order.
fn spent_of(entries: &[LedgerEntry]) -> Budget {
    entries
        .iter()
        .filter(|entry| entry.state != EntryState::Released)
        .fold(Budget::ZERO, |sum, entry| sum.plus(entry.cost))
}

impl BudgetLedger {
    /// A ledger over `store`, timestamping with `clock`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        BudgetLedger { store, clock }
    }

    /// Opens (or creates) the embedded default: a ledger in a redb file, stamped with the
    /// system clock. Only one process may hold the file at a time.
    ///
    /// # Errors
    /// The file cannot be opened or another process holds it.
    pub fn open(path: &std::path::Path) -> Result<Self, LedgerError> {
        let store = confide_store::RedbStore::open_shared(path)?;
        Ok(Self::new(store, Arc::new(SystemClock)))
    }

    /// Sets the lifetime budget of `dataset`, creating the dataset's record if needed. Refused
    /// if jobs have already spent more than `budget`. Raising a budget is allowed here; whether
    /// the caller may is a policy question.
    pub fn set_budget(&self, dataset: &str, budget: Budget) -> Result<(), LedgerError> {
        validate_name("dataset name", dataset)?;
        budget.validate("budget")?;
        let now = self.clock.unix_seconds();
        self.store.transact(|txn| {
            let spent = spent_of(&load_entries(&*txn, dataset)?);
            if !spent.within(budget) {
                return Err(LedgerError::BudgetBelowSpent {
                    dataset: dataset.to_owned(),
                    requested: budget,
                    spent,
                });
            }
            let next_ordinal =
                load_dataset(&*txn, dataset)?.map_or(0, |record| record.next_ordinal);
            let record = DatasetRecord {
                budget,
                budget_set_at: now,
                next_ordinal,
            };
            let bytes = encode(&format!("budget of dataset {dataset:?}"), &record)?;
            txn.put(BUDGETS_TABLE, dataset.as_bytes(), &bytes)?;
            Ok(())
        })
    }

    /// The lifetime budget of `dataset`, if one was set.
    pub fn budget(&self, dataset: &str) -> Result<Option<Budget>, LedgerError> {
        validate_name("dataset name", dataset)?;
        self.store
            .read(|txn| Ok(load_dataset(txn, dataset)?.map(|record| record.budget)))
    }

    /// Debits `cost` for `job_id` from `dataset`'s budget, durably, before the job starts.
    ///
    /// Refused with [`LedgerError::BudgetExceeded`] (and nothing changed) if the dataset's
    /// spend plus `cost` would exceed its budget, in ε or in δ. Idempotent per
    /// `(dataset, job_id)`: a retry with the same cost returns the first debit's receipt and
    /// spends nothing; a retry with another cost is refused.
    pub fn debit(&self, dataset: &str, job_id: &str, cost: Budget) -> Result<Receipt, LedgerError> {
        validate_name("dataset name", dataset)?;
        validate_name("job id", job_id)?;
        cost.validate("cost")?;
        let now = self.clock.unix_seconds();
        self.store.transact(|txn| {
            let Some(mut record) = load_dataset(&*txn, dataset)? else {
                return Err(LedgerError::NoBudget {
                    dataset: dataset.to_owned(),
                });
            };
            let entries = load_entries(&*txn, dataset)?;
            if let Some(existing) = entries.iter().find(|entry| entry.job_id == job_id) {
                if existing.state == EntryState::Released {
                    return Err(LedgerError::JobReleased {
                        dataset: dataset.to_owned(),
                        job_id: job_id.to_owned(),
                    });
                }
                if existing.cost != cost {
                    return Err(LedgerError::CostMismatch {
                        dataset: dataset.to_owned(),
                        job_id: job_id.to_owned(),
                        recorded: existing.cost,
                        requested: cost,
                    });
                }
                return Ok(Receipt::new(dataset, existing));
            }
            let spent = spent_of(&entries);
            let spent_after = spent.plus(cost);
            if !spent_after.within(record.budget) {
                return Err(LedgerError::BudgetExceeded {
                    dataset: dataset.to_owned(),
                    job_id: job_id.to_owned(),
                    budget: record.budget,
                    spent,
                    requested: cost,
                });
            }
            let entry = LedgerEntry {
                job_id: job_id.to_owned(),
                cost,
                state: EntryState::Debited,
                spent_after,
                ordinal: record.next_ordinal,
                debited_at: now,
                started_at: None,
                finished_at: None,
                released_at: None,
            };
            record.next_ordinal = record.next_ordinal.saturating_add(1);
            let bytes = encode(&format!("budget of dataset {dataset:?}"), &record)?;
            txn.put(BUDGETS_TABLE, dataset.as_bytes(), &bytes)?;
            store_entry(txn, dataset, &entry)?;
            Ok(Receipt::new(dataset, &entry))
        })
    }

    /// Applies `step` to the job's entry in one transaction and stores the result if it changed.
    fn transition(
        &self,
        dataset: &str,
        job_id: &str,
        step: impl FnOnce(&mut LedgerEntry, u64) -> Result<(), LedgerError>,
    ) -> Result<LedgerEntry, LedgerError> {
        validate_name("dataset name", dataset)?;
        validate_name("job id", job_id)?;
        let now = self.clock.unix_seconds();
        self.store.transact(|txn| {
            let Some(mut entry) = load_entry(&*txn, dataset, job_id)? else {
                return Err(LedgerError::UnknownJob {
                    dataset: dataset.to_owned(),
                    job_id: job_id.to_owned(),
                });
            };
            let before = entry.clone();
            step(&mut entry, now)?;
            if entry != before {
                store_entry(txn, dataset, &entry)?;
            }
            Ok(entry)
        })
    }

    /// What a job launcher calls before it touches the data: debits `cost` (see
    /// [`BudgetLedger::debit`]) and marks the job started, refusing a job id that has already
    /// started, finished or been released — re-running a job under the same id would train on
    /// the data again without paying for it. A crash between the debit and the start leaves the
    /// debit in place; calling this again with the same id and cost then starts the job
    /// without a second debit.
    pub fn start_job(
        &self,
        dataset: &str,
        job_id: &str,
        cost: Budget,
    ) -> Result<LedgerEntry, LedgerError> {
        self.debit(dataset, job_id, cost)?;
        self.transition(dataset, job_id, |entry, now| match entry.state {
            EntryState::Debited => {
                entry.state = EntryState::Started;
                entry.started_at = Some(now);
                Ok(())
            }
            state => Err(LedgerError::InvalidTransition {
                dataset: dataset.to_owned(),
                job_id: job_id.to_owned(),
                state,
                action: "start it again (a job id runs once; use a new job id)",
            }),
        })
    }

    /// Records that the job is starting. Call it before the job touches the data: from then on
    /// its debit can never be released. Idempotent for a job already started.
    pub fn mark_started(&self, dataset: &str, job_id: &str) -> Result<LedgerEntry, LedgerError> {
        self.transition(dataset, job_id, |entry, now| match entry.state {
            EntryState::Debited => {
                entry.state = EntryState::Started;
                entry.started_at = Some(now);
                Ok(())
            }
            EntryState::Started => Ok(()),
            state @ (EntryState::Finished | EntryState::Released) => {
                Err(LedgerError::InvalidTransition {
                    dataset: dataset.to_owned(),
                    job_id: job_id.to_owned(),
                    state,
                    action: "mark it started",
                })
            }
        })
    }

    /// Records that the job finished. Its debit stays. Idempotent for a job already finished.
    pub fn mark_finished(&self, dataset: &str, job_id: &str) -> Result<LedgerEntry, LedgerError> {
        self.transition(dataset, job_id, |entry, now| match entry.state {
            EntryState::Started => {
                entry.state = EntryState::Finished;
                entry.finished_at = Some(now);
                Ok(())
            }
            EntryState::Finished => Ok(()),
            state @ (EntryState::Debited | EntryState::Released) => {
                Err(LedgerError::InvalidTransition {
                    dataset: dataset.to_owned(),
                    job_id: job_id.to_owned(),
                    state,
                    action: "mark it finished (it was never marked started)",
                })
            }
        })
    }

    /// Refunds the debit of a job that never started. This is an operator's explicit action for
    /// a job known not to have run (its launch failed, it was cancelled); the ledger never
    /// releases on its own. Refused with [`LedgerError::ReleaseAfterStart`] once the job has
    /// been marked started. Idempotent for a job already released; the job id cannot be debited
    /// again.
    pub fn release(&self, dataset: &str, job_id: &str) -> Result<LedgerEntry, LedgerError> {
        self.transition(dataset, job_id, |entry, now| match entry.state {
            EntryState::Debited => {
                entry.state = EntryState::Released;
                entry.released_at = Some(now);
                Ok(())
            }
            EntryState::Released => Ok(()),
            state @ (EntryState::Started | EntryState::Finished) => {
                Err(LedgerError::ReleaseAfterStart {
                    dataset: dataset.to_owned(),
                    job_id: job_id.to_owned(),
                    state,
                })
            }
        })
    }

    /// What jobs have spent from `dataset`'s budget: the sum of every debit not released
    /// (zero for a dataset the ledger does not know).
    pub fn spent(&self, dataset: &str) -> Result<Budget, LedgerError> {
        validate_name("dataset name", dataset)?;
        self.store
            .read(|txn| Ok(spent_of(&load_entries(txn, dataset)?)))
    }

    /// Every debit on `dataset`, released ones included, in the order they were made.
    pub fn history(&self, dataset: &str) -> Result<Vec<LedgerEntry>, LedgerError> {
        validate_name("dataset name", dataset)?;
        self.store.read(|txn| load_entries(txn, dataset))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicU64, Ordering};

    use confide_store::{MemoryStore, RedbStore};

    use super::*;

    /// A clock the test sets.
    #[derive(Debug)]
    struct ManualClock(AtomicU64);

    impl ManualClock {
        fn at(seconds: u64) -> Arc<Self> {
            Arc::new(ManualClock(AtomicU64::new(seconds)))
        }

        fn set(&self, seconds: u64) {
            self.0.store(seconds, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn unix_seconds(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn cost(epsilon: f64, delta: f64) -> Budget {
        Budget { epsilon, delta }
    }

    fn memory_ledger() -> (BudgetLedger, Arc<ManualClock>) {
        let clock = ManualClock::at(1_000);
        (
            BudgetLedger::new(Arc::new(MemoryStore::new()), clock.clone()),
            clock,
        )
    }

    #[test]
    fn exceeding_the_budget_is_refused_and_changes_nothing() {
        let (ledger, _) = memory_ledger();
        ledger
            .set_budget("hospital-a", cost(3.0, 1e-5))
            .expect("set budget");
        ledger
            .debit("hospital-a", "job-1", cost(2.0, 5e-6))
            .expect("first debit fits");
        let history_before = ledger.history("hospital-a").expect("history");

        // Over in ε.
        let error = ledger
            .debit("hospital-a", "job-2", cost(1.5, 0.0))
            .expect_err("ε over budget");
        match &error {
            LedgerError::BudgetExceeded {
                dataset,
                job_id,
                budget,
                spent,
                requested,
            } => {
                assert_eq!(dataset, "hospital-a");
                assert_eq!(job_id, "job-2");
                assert_eq!(*budget, cost(3.0, 1e-5));
                assert_eq!(*spent, cost(2.0, 5e-6));
                assert_eq!(*requested, cost(1.5, 0.0));
            }
            other => panic!("expected BudgetExceeded, got {other:?}"),
        }
        let message = error.to_string();
        for part in ["hospital-a", "job-2", "ε = 3", "ε = 2", "ε = 1.5"] {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }

        // Over in δ only.
        let error = ledger
            .debit("hospital-a", "job-3", cost(0.5, 6e-6))
            .expect_err("δ over budget");
        assert!(
            matches!(error, LedgerError::BudgetExceeded { .. }),
            "{error:?}"
        );

        assert_eq!(ledger.spent("hospital-a").expect("spent"), cost(2.0, 5e-6));
        assert_eq!(
            ledger.history("hospital-a").expect("history"),
            history_before
        );
        // A refused job id was not recorded, so it can be debited later within budget.
        ledger
            .debit("hospital-a", "job-2", cost(1.0, 0.0))
            .expect("fits now");
    }

    #[test]
    fn a_dataset_without_budget_cannot_be_spent() {
        let (ledger, _) = memory_ledger();
        let error = ledger
            .debit("nobody-set-this", "job", cost(0.0, 0.0))
            .expect_err("no budget");
        assert!(matches!(error, LedgerError::NoBudget { .. }), "{error:?}");
        assert!(error.to_string().contains("nobody-set-this"));
        assert_eq!(ledger.budget("nobody-set-this").expect("budget"), None);
        assert_eq!(
            ledger.spent("nobody-set-this").expect("spent"),
            Budget::ZERO
        );
        assert!(
            ledger
                .history("nobody-set-this")
                .expect("history")
                .is_empty()
        );
    }

    #[test]
    fn spending_exactly_the_budget_is_allowed() {
        let (ledger, _) = memory_ledger();
        ledger.set_budget("d", cost(1.0, 1e-5)).expect("set budget");
        for i in 0..10 {
            ledger
                .debit("d", &format!("job-{i}"), cost(0.1, 1e-6))
                .expect("a tenth of the budget");
        }
        let spent = ledger.spent("d").expect("spent");
        assert!((spent.epsilon - 1.0).abs() < 1e-12, "{spent}");
        let error = ledger
            .debit("d", "one-more", cost(1e-9, 0.0))
            .expect_err("budget used up");
        assert!(matches!(error, LedgerError::BudgetExceeded { .. }));

        // 0.1 + 0.2 = 0.30000000000000004 > 0.3, within the tolerance.
        ledger.set_budget("e", cost(0.3, 0.0)).expect("set budget");
        ledger.debit("e", "a", cost(0.1, 0.0)).expect("debit");
        ledger.debit("e", "b", cost(0.2, 0.0)).expect("debit");
    }

    #[test]
    fn debit_is_idempotent_per_dataset_and_job() {
        let (ledger, clock) = memory_ledger();
        ledger.set_budget("d", cost(2.0, 1e-5)).expect("set budget");
        let first = ledger.debit("d", "job", cost(1.0, 1e-6)).expect("debit");
        clock.set(2_000);
        let retry = ledger.debit("d", "job", cost(1.0, 1e-6)).expect("retry");
        assert_eq!(retry, first);
        assert_eq!(retry.debited_at(), 1_000);
        assert_eq!(ledger.spent("d").expect("spent"), cost(1.0, 1e-6));
        assert_eq!(ledger.history("d").expect("history").len(), 1);

        let error = ledger
            .debit("d", "job", cost(1.0, 2e-6))
            .expect_err("different cost");
        assert!(
            matches!(error, LedgerError::CostMismatch { ref recorded, .. } if *recorded == cost(1.0, 1e-6)),
            "{error:?}"
        );

        // A retry after the job started still returns the receipt.
        ledger.mark_started("d", "job").expect("start");
        assert_eq!(
            ledger.debit("d", "job", cost(1.0, 1e-6)).expect("retry"),
            first
        );
        // The same job id on another dataset is another debit.
        ledger
            .set_budget("d2", cost(1.0, 1e-5))
            .expect("set budget");
        ledger.debit("d2", "job", cost(1.0, 1e-6)).expect("debit");
        assert_eq!(ledger.spent("d").expect("spent"), cost(1.0, 1e-6));
    }

    #[test]
    fn datasets_whose_names_share_a_prefix_are_separate() {
        let (ledger, _) = memory_ledger();
        for dataset in ["a", "ab", "a b"] {
            ledger
                .set_budget(dataset, cost(5.0, 0.0))
                .expect("set budget");
        }
        ledger.debit("a", "x", cost(1.0, 0.0)).expect("debit");
        ledger.debit("ab", "x", cost(2.0, 0.0)).expect("debit");
        ledger.debit("a b", "x", cost(3.0, 0.0)).expect("debit");
        assert_eq!(ledger.spent("a").expect("spent").epsilon, 1.0);
        assert_eq!(ledger.spent("ab").expect("spent").epsilon, 2.0);
        assert_eq!(ledger.history("a").expect("history").len(), 1);
    }

    #[test]
    fn release_refunds_only_jobs_never_started() {
        let (ledger, clock) = memory_ledger();
        ledger.set_budget("d", cost(3.0, 0.0)).expect("set budget");
        for job in ["never-started", "started", "finished"] {
            ledger.debit("d", job, cost(1.0, 0.0)).expect("debit");
        }
        ledger.mark_started("d", "started").expect("start");
        ledger.mark_started("d", "finished").expect("start");
        ledger.mark_finished("d", "finished").expect("finish");
        assert!(matches!(
            ledger.debit("d", "fourth", cost(0.5, 0.0)),
            Err(LedgerError::BudgetExceeded { .. })
        ));

        for job in ["started", "finished"] {
            let error = ledger
                .release("d", job)
                .expect_err("started jobs keep their debit");
            assert!(
                matches!(error, LedgerError::ReleaseAfterStart { .. }),
                "{job}: {error:?}"
            );
            assert!(error.to_string().contains("never started"), "{error}");
        }
        assert_eq!(ledger.spent("d").expect("spent").epsilon, 3.0);

        clock.set(1_500);
        let released = ledger.release("d", "never-started").expect("release");
        assert_eq!(released.state, EntryState::Released);
        assert_eq!(released.released_at, Some(1_500));
        assert_eq!(ledger.spent("d").expect("spent").epsilon, 2.0);
        // Idempotent, and the refund is usable.
        ledger.release("d", "never-started").expect("release again");
        assert_eq!(ledger.spent("d").expect("spent").epsilon, 2.0);
        ledger
            .debit("d", "fourth", cost(1.0, 0.0))
            .expect("refund spent");

        // A released job id is spent for good; released jobs cannot start.
        assert!(matches!(
            ledger.debit("d", "never-started", cost(1.0, 0.0)),
            Err(LedgerError::JobReleased { .. })
        ));
        assert!(matches!(
            ledger.mark_started("d", "never-started"),
            Err(LedgerError::InvalidTransition { .. })
        ));
        assert!(matches!(
            ledger.release("d", "no-such-job"),
            Err(LedgerError::UnknownJob { .. })
        ));
        // History keeps the released entry, in debit order.
        let jobs: Vec<String> = ledger
            .history("d")
            .expect("history")
            .into_iter()
            .map(|entry| entry.job_id)
            .collect();
        assert_eq!(jobs, ["never-started", "started", "finished", "fourth"]);
    }

    #[test]
    fn life_cycle_records_states_and_times() {
        let (ledger, clock) = memory_ledger();
        ledger.set_budget("d", cost(1.0, 0.0)).expect("set budget");
        ledger.debit("d", "job", cost(0.5, 0.0)).expect("debit");
        let error = ledger.mark_finished("d", "job").expect_err("not started");
        assert!(
            matches!(
                error,
                LedgerError::InvalidTransition {
                    state: EntryState::Debited,
                    ..
                }
            ),
            "{error:?}"
        );
        clock.set(1_100);
        let started = ledger.mark_started("d", "job").expect("start");
        clock.set(1_200);
        assert_eq!(
            ledger.mark_started("d", "job").expect("start again"),
            started,
            "a repeated start changes nothing"
        );
        clock.set(1_300);
        let finished = ledger.mark_finished("d", "job").expect("finish");
        assert!(matches!(
            ledger.mark_started("d", "job"),
            Err(LedgerError::InvalidTransition {
                state: EntryState::Finished,
                ..
            })
        ));
        assert_eq!(
            finished,
            LedgerEntry {
                job_id: "job".to_owned(),
                cost: cost(0.5, 0.0),
                state: EntryState::Finished,
                spent_after: cost(0.5, 0.0),
                ordinal: 0,
                debited_at: 1_000,
                started_at: Some(1_100),
                finished_at: Some(1_300),
                released_at: None,
            }
        );
        assert_eq!(ledger.history("d").expect("history"), vec![finished]);
        assert!(matches!(
            ledger.mark_started("d", "other"),
            Err(LedgerError::UnknownJob { .. })
        ));
    }

    #[test]
    fn budget_cannot_be_lowered_below_what_is_spent() {
        let (ledger, _) = memory_ledger();
        ledger.set_budget("d", cost(4.0, 1e-5)).expect("set budget");
        ledger.debit("d", "job", cost(2.0, 4e-6)).expect("debit");
        let error = ledger
            .set_budget("d", cost(1.5, 1e-5))
            .expect_err("below spent ε");
        assert!(
            matches!(error, LedgerError::BudgetBelowSpent { .. }),
            "{error:?}"
        );
        assert!(matches!(
            ledger.set_budget("d", cost(3.0, 1e-6)),
            Err(LedgerError::BudgetBelowSpent { .. })
        ));
        assert_eq!(ledger.budget("d").expect("budget"), Some(cost(4.0, 1e-5)));
        ledger
            .set_budget("d", cost(2.0, 4e-6))
            .expect("exactly the spend");
        ledger.set_budget("d", cost(8.0, 1e-5)).expect("raise");
        ledger.debit("d", "next", cost(6.0, 0.0)).expect("debit");
        // The dataset's ordinal counter survives a budget change.
        let ordinals: Vec<u64> = ledger
            .history("d")
            .expect("history")
            .iter()
            .map(|entry| entry.ordinal)
            .collect();
        assert_eq!(ordinals, [0, 1]);
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let (ledger, _) = memory_ledger();
        for budget in [
            cost(-1.0, 0.0),
            cost(f64::NAN, 0.0),
            cost(f64::INFINITY, 0.0),
            cost(1.0, 1.0),
            cost(1.0, -1e-9),
            cost(1.0, f64::NAN),
        ] {
            assert!(
                matches!(
                    ledger.set_budget("d", budget),
                    Err(LedgerError::InvalidBudget { what: "budget", .. })
                ),
                "{budget}"
            );
            assert!(Budget::new(budget.epsilon, budget.delta).is_err());
        }
        ledger.set_budget("d", cost(1.0, 0.5)).expect("set budget");
        assert!(matches!(
            ledger.debit("d", "job", cost(-0.1, 0.0)),
            Err(LedgerError::InvalidBudget { what: "cost", .. })
        ));
        let long = "x".repeat(MAX_NAME_LEN + 1);
        for (dataset, job) in [
            ("", "job"),
            ("d", ""),
            ("d\0x", "job"),
            ("d", "job\nx"),
            (long.as_str(), "job"),
            ("d", long.as_str()),
        ] {
            let error = ledger
                .debit(dataset, job, cost(0.1, 0.0))
                .expect_err("invalid name");
            assert!(
                matches!(error, LedgerError::InvalidName { .. }),
                "{dataset:?}/{job:?}: {error:?}"
            );
        }
        assert!(ledger.history("d").expect("history").is_empty());
        Budget::new(0.0, 0.0).expect("zero is a valid budget");
    }

    #[test]
    fn unreadable_records_are_reported() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ledger = BudgetLedger::new(store.clone(), ManualClock::at(0));
        ledger.set_budget("d", cost(1.0, 0.0)).expect("set budget");
        store
            .transact(|txn| txn.put(ENTRIES_TABLE, &entry_key("d", "job"), b"{not json"))
            .expect("write garbage");
        let error = ledger.spent("d").expect_err("corrupt entry");
        assert!(matches!(error, LedgerError::Corrupt { .. }), "{error:?}");
        assert!(error.to_string().contains("\"job\""), "{error}");
    }

    /// Eight OS threads race to debit 24 jobs of ε = 1 against a budget of 5.
    fn concurrent_debits_never_overspend(store: Arc<dyn Store>) {
        const THREADS: usize = 8;
        const JOBS_PER_THREAD: usize = 3;
        let ledger = BudgetLedger::new(store, ManualClock::at(0));
        ledger
            .set_budget("shared", cost(5.0, 1e-5))
            .expect("set budget");
        let barrier = Barrier::new(THREADS);
        let results: Vec<Result<Receipt, LedgerError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..THREADS)
                .map(|thread| {
                    let ledger = ledger.clone();
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        (0..JOBS_PER_THREAD)
                            .map(|job| {
                                ledger.debit(
                                    "shared",
                                    &format!("thread-{thread}-job-{job}"),
                                    cost(1.0, 1e-6),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|handle| handle.join().expect("thread"))
                .collect()
        });
        let succeeded = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(succeeded, 5);
        for result in &results {
            if let Err(error) = result {
                assert!(
                    matches!(error, LedgerError::BudgetExceeded { .. }),
                    "{error:?}"
                );
            }
        }
        let spent = ledger.spent("shared").expect("spent");
        assert_eq!(spent.epsilon, 5.0);
        assert!((spent.delta - 5e-6).abs() < 1e-18, "{spent}");
        let history = ledger.history("shared").expect("history");
        assert_eq!(history.len(), 5);
        // Each successful debit saw every earlier one.
        for (i, entry) in history.iter().enumerate() {
            assert_eq!(entry.spent_after.epsilon, (i + 1) as f64);
        }
    }

    #[test]
    fn concurrent_debits_never_overspend_on_redb() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = RedbStore::open(dir.path().join("ledger.redb")).expect("open store");
        concurrent_debits_never_overspend(Arc::new(store));
    }

    #[test]
    fn concurrent_debits_never_overspend_in_memory() {
        concurrent_debits_never_overspend(Arc::new(MemoryStore::new()));
    }

    #[test]
    fn ledger_survives_reopen() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("ledger.redb");
        let open = |path: &std::path::Path| {
            let store = RedbStore::open(path).expect("open store");
            BudgetLedger::new(Arc::new(store), ManualClock::at(7))
        };
        let history = {
            let ledger = open(&path);
            ledger.set_budget("d", cost(2.0, 1e-5)).expect("set budget");
            ledger.debit("d", "a", cost(1.0, 1e-6)).expect("debit");
            ledger.debit("d", "b", cost(0.5, 1e-6)).expect("debit");
            ledger.mark_started("d", "a").expect("start");
            ledger.mark_finished("d", "a").expect("finish");
            ledger.release("d", "b").expect("release");
            ledger.history("d").expect("history")
        };
        let ledger = open(&path);
        assert_eq!(ledger.history("d").expect("history"), history);
        assert_eq!(ledger.budget("d").expect("budget"), Some(cost(2.0, 1e-5)));
        assert_eq!(ledger.spent("d").expect("spent"), cost(1.0, 1e-6));
        assert!(matches!(
            ledger.debit("d", "c", cost(1.5, 0.0)),
            Err(LedgerError::BudgetExceeded { .. })
        ));
        ledger.debit("d", "c", cost(1.0, 0.0)).expect("debit");
    }

    /// Set in the child process of the crash test to the ledger's database path.
    const CRASH_CHILD_VAR: &str = "CONFIDE_LEDGER_TEST_CRASH_DB";

    #[test]
    fn crash_between_debit_and_start_keeps_the_debit() {
        if let Ok(path) = std::env::var(CRASH_CHILD_VAR) {
            // Child: debit, then die before marking the job started.
            let store = RedbStore::open(&path).expect("child opens store");
            let ledger = BudgetLedger::new(Arc::new(store), ManualClock::at(1_000));
            ledger
                .debit("d", "crashing-job", cost(1.0, 1e-6))
                .expect("child debits");
            println!("CHILD: debited");
            std::process::abort();
        }

        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("ledger.redb");
        {
            let store = RedbStore::open(&path).expect("open store");
            BudgetLedger::new(Arc::new(store), ManualClock::at(0))
                .set_budget("d", cost(3.0, 1e-5))
                .expect("set budget");
        }
        let module = module_path!();
        let test = format!(
            "{}::crash_between_debit_and_start_keeps_the_debit",
            module.split_once("::").map_or(module, |(_, rest)| rest)
        );
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CRASH_CHILD_VAR, &path)
            .output()
            .expect("spawn the test binary as a child process");
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            !child.status.success() && stdout.contains("CHILD: debited"),
            "the child should debit and then abort: {:?}\n{stdout}\n{}",
            child.status,
            String::from_utf8_lossy(&child.stderr)
        );

        let store = RedbStore::open(&path).expect("reopen after the crash");
        let ledger = BudgetLedger::new(Arc::new(store), ManualClock::at(2_000));
        let history = ledger.history("d").expect("history");
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].job_id, "crashing-job");
        assert_eq!(history[0].state, EntryState::Debited);
        assert_eq!(history[0].debited_at, 1_000);
        assert_eq!(ledger.spent("d").expect("spent"), cost(1.0, 1e-6));

        // The restarted coordinator retries the same debit: no double spend.
        let receipt = ledger
            .debit("d", "crashing-job", cost(1.0, 1e-6))
            .expect("retry");
        assert_eq!(receipt.debited_at(), 1_000);
        assert_eq!(receipt.spent_after(), cost(1.0, 1e-6));
        assert_eq!(ledger.spent("d").expect("spent"), cost(1.0, 1e-6));
        assert_eq!(ledger.history("d").expect("history").len(), 1);
        ledger.mark_started("d", "crashing-job").expect("start");
    }

    #[test]
    fn start_job_runs_a_job_id_once_and_resumes_after_a_crash() {
        let ledger = BudgetLedger::new(
            Arc::new(confide_store::MemoryStore::new()),
            Arc::new(SystemClock),
        );
        ledger
            .set_budget("d", Budget::new(10.0, 1e-5).expect("budget"))
            .expect("set");
        let cost = Budget::new(2.0, 1e-6).expect("cost");
        // A crash after the debit: the next launch starts the job without a second debit.
        ledger.debit("d", "job", cost).expect("debit");
        let entry = ledger.start_job("d", "job", cost).expect("start");
        assert_eq!(entry.state, EntryState::Started);
        assert_eq!(ledger.spent("d").expect("spent").epsilon, 2.0);
        let again = ledger
            .start_job("d", "job", cost)
            .expect_err("second start");
        assert!(again.to_string().contains("runs once"), "{again}");
        assert_eq!(ledger.spent("d").expect("spent").epsilon, 2.0);
        let over = ledger
            .start_job("d", "big", Budget::new(9.0, 1e-6).expect("cost"))
            .expect_err("over budget");
        assert!(matches!(over, LedgerError::BudgetExceeded { .. }), "{over}");
    }
}
