//! Contribution records: what each owner gave a job and what it cost it, signed by the party
//! that ran the job and appended to the audit log when the job ends (Kaires' fairness towards
//! contributing owners).
//!
//! A record is RFC 8785 canonical JSON ([`crate::jcs`]) of [`Contribution`]; its signature is
//! Ed25519 over `"confide/contribution/v1\n" ‖ canonical bytes`, by the author it names (the
//! coordinator, whose key also signs the log's tree heads). An owner keeps the exported log,
//! or just its entry's inclusion proof (`confide audit prove`), and can show its record to
//! anyone offline.
//!
//! The record holds only what the coordinator saw without individual updates: rounds whose
//! sum included the owner, contributions accepted and refused (by rule), rows as declared (or
//! attested, in confidential mode), and the (ε, δ) the owner's node stated. Scores that need
//! individual updates (leave-one-out, Shapley values over subsets) are refused: under secure
//! aggregation they can only come from sums over different subsets, and subtracting two such
//! sums reveals one owner's update (the differencing KEY-005 and RES-009 exist to stop).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, PublicIdentity, party_id};
use crate::jcs;

/// The record format tag.
pub const FORMAT: &str = "confide-contribution/1";

/// How a row count is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowsBasis {
    /// The owner's node stated it when it approved (nothing checks it).
    Declared,
    /// The attested trusted trainer counted the rows it decrypted.
    Attested,
    /// Not known (the owner did not state it).
    Unknown,
}

/// One owner's record for one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// [`FORMAT`].
    pub format: String,
    /// The job's manifest hash, hex.
    pub job: String,
    /// The job's id.
    pub job_id: String,
    /// The owner.
    pub owner: String,
    /// Rounds whose aggregate included the owner's update.
    pub rounds: Vec<u32>,
    /// Rounds the job ran.
    pub rounds_run: u32,
    /// Rounds in which the coordinator excluded the owner for missing the round's deadline
    /// (a withdrawal or a revocation shows as rounds missing from `rounds`).
    pub excluded_in: Vec<u32>,
    /// Contributions refused, by rule id, in the rounds the coordinator committed.
    pub refused: BTreeMap<String, u64>,
    /// Rows, when known.
    pub rows: Option<u64>,
    /// How `rows` is known.
    pub rows_basis: RowsBasis,
    /// ε the owner's node stated for the job, when the job had DP and the node sent a claim.
    pub epsilon: Option<f64>,
    /// δ with it.
    pub delta: Option<f64>,
    /// The accountant of that claim: `rdp` or `pld` (record-level DP), `ddg-rdp`
    /// (client-level DP).
    pub accountant: Option<String>,
    /// Who signs the record: the coordinator (or the trainer host).
    pub author: PublicIdentity,
}

/// A record with its author's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedContribution {
    /// The record.
    pub record: Contribution,
    /// Ed25519 signature over [`message`], hex.
    pub signature: String,
}

/// Why a record is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContributionError {
    /// Not a well-formed record.
    #[error("contribution record: {0}")]
    Malformed(String),
    /// The signature is not the author's.
    #[error("contribution record signature: {0}")]
    Signature(String),
}

/// The bytes a record's signature covers.
///
/// # Errors
/// The record does not serialise (a bug).
pub fn message(record: &Contribution) -> Result<Vec<u8>, ContributionError> {
    let mut m = b"confide/contribution/v1\n".to_vec();
    m.extend(jcs::to_vec(record).map_err(|e| ContributionError::Malformed(e.to_string()))?);
    Ok(m)
}

impl Contribution {
    fn check(&self) -> Result<(), ContributionError> {
        let bad = |m: String| Err(ContributionError::Malformed(m));
        if self.format != FORMAT {
            return bad(format!("format `{}`, expected `{FORMAT}`", self.format));
        }
        jcs::hex_array::<32>(&self.job)
            .map_err(|e| ContributionError::Malformed(format!("job: {e}")))?;
        let key = self.author.key().map_err(ContributionError::Malformed)?;
        if party_id(&key) != self.author.id {
            return bad("the author's id is not derived from its key".into());
        }
        if self
            .rounds
            .iter()
            .chain(&self.excluded_in)
            .any(|r| *r == 0 || *r > self.rounds_run)
        {
            return bad("a round outside the rounds the job ran".into());
        }
        for x in [self.epsilon, self.delta].into_iter().flatten() {
            if !x.is_finite() || x < 0.0 {
                return bad("ε and δ must be finite and non-negative".into());
            }
        }
        Ok(())
    }
}

impl SignedContribution {
    /// Signs `record` with `author`, which must be the author it names.
    ///
    /// # Errors
    /// The record is malformed or names another author.
    pub fn sign(record: Contribution, author: &Identity) -> Result<Self, ContributionError> {
        record.check()?;
        if record.author.id != author.id() {
            return Err(ContributionError::Signature(format!(
                "the record names author `{}`, this key is `{}`",
                record.author.id,
                author.id()
            )));
        }
        let signature = hex::encode(author.signing_key().sign(&message(&record)?));
        Ok(Self { record, signature })
    }

    /// Checks the record and its author's signature.
    ///
    /// # Errors
    /// Malformed, or a signature that does not verify under the author's key.
    pub fn verify(&self) -> Result<&Contribution, ContributionError> {
        self.record.check()?;
        let key = self
            .record
            .author
            .key()
            .map_err(ContributionError::Malformed)?;
        let sig: [u8; 64] =
            jcs::hex_array(&self.signature).map_err(ContributionError::Signature)?;
        confide_crypto::sign::verify(&key, &message(&self.record)?, &sig).map_err(|_| {
            ContributionError::Signature(format!(
                "the signature by `{}` does not verify",
                self.record.author.id
            ))
        })?;
        Ok(&self.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(author: &Identity) -> Contribution {
        Contribution {
            format: FORMAT.into(),
            job: hex::encode([3u8; 32]),
            job_id: "breast-homo".into(),
            owner: "hospital".into(),
            rounds: vec![1, 2, 4],
            rounds_run: 4,
            excluded_in: vec![3],
            refused: BTreeMap::from([("UPD-005".to_string(), 1)]),
            rows: Some(284),
            rows_basis: RowsBasis::Declared,
            epsilon: Some(1.5),
            delta: Some(1e-5),
            accountant: Some("rdp".into()),
            author: author.public(),
        }
    }

    #[test]
    fn a_signed_record_verifies_and_an_altered_one_does_not() {
        let id = Identity::generate().expect("key");
        let signed = SignedContribution::sign(record(&id), &id).expect("sign");
        assert_eq!(signed.verify().expect("verifies").rounds, vec![1, 2, 4]);
        let json = serde_json::to_string(&signed).expect("json");
        let back: SignedContribution = serde_json::from_str(&json).expect("parse");
        back.verify().expect("still verifies");
        let mut more = signed.clone();
        more.record.rounds.push(3);
        assert!(matches!(
            more.verify(),
            Err(ContributionError::Signature(_))
        ));
        let mut cheaper = signed;
        cheaper.record.epsilon = Some(0.1);
        assert!(cheaper.verify().is_err());
    }

    #[test]
    fn malformed_records_are_refused_before_signing() {
        let id = Identity::generate().expect("key");
        let other = Identity::generate().expect("key");
        assert!(
            SignedContribution::sign(record(&id), &other).is_err(),
            "another author"
        );
        let mut late = record(&id);
        late.rounds.push(9);
        assert!(
            SignedContribution::sign(late, &id).is_err(),
            "a round the job never ran"
        );
        let mut nan = record(&id);
        nan.epsilon = Some(f64::NAN);
        assert!(SignedContribution::sign(nan, &id).is_err());
    }
}
