//! A served job's checkpoint: what a restarted coordinator needs to go on with a job at the
//! round after the last one it committed (RES-006…009 in docs/rules.md).
//!
//! A round is committed by one store transaction that appends its audit entry and replaces
//! the job's checkpoint, so the log and the checkpoint never disagree about which rounds
//! happened: a crash before the commit leaves the round uncommitted (it is collected again,
//! from the owners' stored updates, RES-007), and a crash after it leaves the round done.
//! The job's start is committed the same way, as round 0.
//!
//! The checkpoint holds the global model, the owners still in the job, their certificates
//! and privacy claims, and the report so far. It holds nothing an owner's update could be
//! learnt from: the coordinator never has more than the round's sum.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use confide_governance::audit::{AuditError, AuditLog, Event};
use confide_store::{Store, StoreExt as _};
use serde::{Deserialize, Serialize};

use crate::coordinator::{OwnerPrivacy, OwnerTally, RoundRecord};

/// The table of checkpoints (JSON), by manifest hash.
pub const CHECKPOINTS: &str = "coordinator.checkpoints";
/// The table of checkpointed global models (little-endian `f32`s), by manifest hash.
const MODELS: &str = "coordinator.checkpoint_models";
/// The table of checkpointed server optimiser moments (`ServerState::to_bytes`), by hash.
const MOMENTS: &str = "coordinator.checkpoint_moments";

/// Where a job stands after its last committed round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Rounds committed (0: the job started, no round yet).
    pub round: u32,
    /// SHA-256 of the global model after `round` (`confide_secagg::model_digest`), checked
    /// when the model is read back.
    pub model_digest: String,
    /// SHA-256 of the server optimiser's moments (`moments`), checked when they are read back.
    pub moments_digest: String,
    /// Owners that joined.
    pub joined: BTreeSet<String>,
    /// Owners still in the job (approved in time, not excluded, not withdrawn).
    pub alive: BTreeSet<String>,
    /// Parties whose registration is in the audit log.
    pub registered: BTreeSet<String>,
    /// The owners' certificates (DER, hex), relayed to the key holder and the aggregators.
    pub certs: BTreeMap<String, String>,
    /// The rounds so far.
    pub history: Vec<RoundRecord>,
    /// The owners' record-level DP claims.
    pub privacy: BTreeMap<String, OwnerPrivacy>,
    /// The job's events so far.
    pub events: Vec<String>,
    /// Refused contributions so far, by reason.
    pub rejections: BTreeMap<String, u64>,
    /// Per owner: declared rows and refused contributions, for the contribution records.
    #[serde(default)]
    pub tallies: BTreeMap<String, OwnerTally>,
    /// The global model after `round` (stored apart, as raw bytes).
    #[serde(skip)]
    pub params: Vec<f32>,
    /// The server optimiser's moments after `round` (stored apart; empty under FedAvg).
    #[serde(skip)]
    pub moments: Vec<u8>,
}

/// The checkpoints of the jobs of one coordinator, in its store (the store of its audit log
/// and job records).
#[derive(Clone, Debug)]
pub struct Checkpoints {
    store: Arc<dyn Store>,
}

impl Checkpoints {
    /// The checkpoints in `store`, which must also hold the audit log.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Appends `event` to the audit log and replaces job `hash`'s checkpoint with `cp`, in
    /// one transaction. Returns the entry's index.
    ///
    /// # Errors
    /// The store failed (then neither happened).
    pub fn commit(&self, hash: &[u8; 32], event: &Event, cp: &Checkpoint) -> Result<u64, String> {
        let json = serde_json::to_vec(cp).map_err(|e| e.to_string())?;
        let model: Vec<u8> = cp.params.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.store
            .transact(|txn| {
                let index = AuditLog::record_in(txn, event)?;
                txn.put(CHECKPOINTS, hash, &json)?;
                txn.put(MODELS, hash, &model)?;
                txn.put(MOMENTS, hash, &cp.moments)?;
                Ok::<_, AuditError>(index)
            })
            .map_err(|e| format!("audit log and checkpoint: {e}"))
    }

    /// Job `hash`'s checkpoint, if it has one.
    ///
    /// # Errors
    /// The store failed, or the checkpoint does not read back whole (its model's digest
    /// differs from the one recorded).
    pub fn load(&self, hash: &[u8; 32]) -> Result<Option<Checkpoint>, String> {
        let (json, model, moments) = self
            .store
            .read(|txn| {
                Ok::<_, confide_store::StoreError>((
                    txn.get(CHECKPOINTS, hash)?,
                    txn.get(MODELS, hash)?,
                    txn.get(MOMENTS, hash)?,
                ))
            })
            .map_err(|e| e.to_string())?;
        let Some(json) = json else {
            return Ok(None);
        };
        let mut cp: Checkpoint =
            serde_json::from_slice(&json).map_err(|e| format!("checkpoint: {e}"))?;
        let model = model.ok_or("checkpoint: its model is missing")?;
        if model.len() % 4 != 0 {
            return Err("checkpoint: a model of a broken length".into());
        }
        cp.params = model
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if hex::encode(confide_secagg::model_digest(&cp.params)) != cp.model_digest {
            return Err("checkpoint: its model does not match its digest".into());
        }
        cp.moments = moments.unwrap_or_default();
        if hex::encode(confide_crypto::sha256(&cp.moments)) != cp.moments_digest {
            return Err("checkpoint: its optimiser moments do not match their digest".into());
        }
        Ok(Some(cp))
    }

    /// The jobs that have a checkpoint.
    ///
    /// # Errors
    /// The store failed.
    pub fn jobs(&self) -> Result<Vec<[u8; 32]>, String> {
        let rows = self
            .store
            .read(|txn| txn.scan_prefix(CHECKPOINTS, &[]))
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .filter_map(|(k, _)| <[u8; 32]>::try_from(k.as_slice()).ok())
            .collect())
    }

    /// Removes job `hash`'s checkpoint (the job ended); says whether there was one.
    ///
    /// # Errors
    /// The store failed.
    pub fn erase(&self, hash: &[u8; 32]) -> Result<bool, String> {
        self.store
            .transact(|txn| {
                let had = txn.delete(CHECKPOINTS, hash)?;
                txn.delete(MODELS, hash)?;
                txn.delete(MOMENTS, hash)?;
                Ok::<_, confide_store::StoreError>(had)
            })
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_governance::audit::EventKind;

    fn sample(round: u32) -> Checkpoint {
        let params = vec![0.5f32, -1.25, f32::MIN_POSITIVE, 3.0e-12];
        let moments = vec![1u8, 2, 3];
        Checkpoint {
            round,
            model_digest: hex::encode(confide_secagg::model_digest(&params)),
            moments_digest: hex::encode(confide_crypto::sha256(&moments)),
            moments,
            joined: ["a".into(), "b".into()].into(),
            alive: ["a".into()].into(),
            registered: ["a".into(), "b".into()].into(),
            certs: [("a".to_string(), "00ff".to_string())].into(),
            history: Vec::new(),
            privacy: BTreeMap::new(),
            events: vec!["round 1: `b` missed the deadline and is excluded".into()],
            rejections: BTreeMap::new(),
            tallies: BTreeMap::new(),
            params,
        }
    }

    #[test]
    fn a_checkpoint_commits_with_its_audit_entry_and_reads_back_bit_for_bit() {
        let store: Arc<dyn Store> = Arc::new(confide_store::MemoryStore::default());
        let cps = Checkpoints::new(store.clone());
        let log = AuditLog::new(store);
        let hash = [7u8; 32];
        assert_eq!(cps.load(&hash).expect("load"), None);
        let event = Event::now(
            EventKind::Round,
            "job",
            "coordinator",
            serde_json::json!({}),
        );
        let i = cps.commit(&hash, &event, &sample(1)).expect("commit");
        assert_eq!(i, 0);
        assert_eq!(log.size().expect("size"), 1);
        let back = cps.load(&hash).expect("load").expect("a checkpoint");
        assert_eq!(back, sample(1));
        assert!(
            back.params
                .iter()
                .zip(&sample(1).params)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        cps.commit(&hash, &event, &sample(2)).expect("commit");
        assert_eq!(cps.load(&hash).expect("load").map(|c| c.round), Some(2));
        assert_eq!(cps.jobs().expect("jobs"), vec![hash]);
        assert!(cps.erase(&hash).expect("erase"));
        assert!(cps.jobs().expect("jobs").is_empty());
        assert_eq!(cps.load(&hash).expect("load"), None);
        assert!(!cps.erase(&hash).expect("erase"));
    }

    #[test]
    fn a_checkpoint_whose_model_was_altered_is_refused() {
        let store: Arc<dyn Store> = Arc::new(confide_store::MemoryStore::default());
        let cps = Checkpoints::new(store.clone());
        let hash = [9u8; 32];
        let event = Event::now(
            EventKind::Round,
            "job",
            "coordinator",
            serde_json::json!({}),
        );
        cps.commit(&hash, &event, &sample(3)).expect("commit");
        store
            .transact(|txn| txn.put(MODELS, &hash, &[0u8; 16]))
            .expect("put");
        let err = cps.load(&hash).expect_err("refused");
        assert!(err.contains("does not match its digest"), "{err}");
    }
}
