//! Signed statements: a party's signed request to change a job that it does not carry in the
//! manifest itself (today: cancelling it).
//!
//! A statement is RFC 8785 canonical JSON ([`crate::jcs`]) of [`Statement`]; its signature is
//! Ed25519 over `"confide/statement/v1\n" ‖ canonical bytes`. The receiving daemon verifies
//! it, checks that the author is allowed to make it, and appends the whole signed statement to
//! its audit log, so anyone holding the log can check who asked for the change. Transport
//! authentication (the TLS client certificate) is only the first gate: the statement must
//! also come from the party that the certificate names.

use serde::{Deserialize, Serialize};

use crate::identity::{Identity, PublicIdentity, party_id};
use crate::jcs;

/// The statement format tag.
pub const FORMAT: &str = "confide-statement/1";
/// The longest reason accepted, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// What a statement asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Stop a job: it ends `cancelled` and never runs another round.
    Cancel,
    /// Refuse a job offered to the author's node (`confide node inbox reject`): the node
    /// rejects it to the coordinator, and the job ends `rejected`.
    Reject,
    /// Withdraw the author's dataset from a job it approved (the node dashboard's revoke):
    /// the node stops at the job's next round and tells the coordinator, which logs it.
    Revoke,
}

/// The statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// [`FORMAT`].
    pub format: String,
    /// What it asks for.
    pub action: Action,
    /// The job: its manifest hash, hex.
    pub job: String,
    /// Why, in at most [`MAX_REASON_CHARS`] characters.
    pub reason: String,
    /// Who asks (party id and public key).
    pub author: PublicIdentity,
    /// When, RFC 3339 UTC (informational: the log orders statements).
    pub time: String,
}

/// A statement with its author's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedStatement {
    /// The statement.
    pub statement: Statement,
    /// Ed25519 signature over [`message`], hex.
    pub signature: String,
}

/// Statement errors: the document is malformed, or its signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatementError {
    /// Not a well-formed statement.
    #[error("statement: {0}")]
    Malformed(String),
    /// The signature is not the author's.
    #[error("statement signature: {0}")]
    Signature(String),
}

/// The bytes a statement's signature covers.
///
/// # Errors
/// The statement does not serialise (a bug).
pub fn message(statement: &Statement) -> Result<Vec<u8>, StatementError> {
    let mut m = b"confide/statement/v1\n".to_vec();
    m.extend(jcs::to_vec(statement).map_err(|e| StatementError::Malformed(e.to_string()))?);
    Ok(m)
}

impl Statement {
    /// A statement by `author` about the job with manifest hash `job`, made at `now`.
    pub fn new(
        action: Action,
        job: &[u8; 32],
        reason: &str,
        author: PublicIdentity,
        now: time::OffsetDateTime,
    ) -> Self {
        Self {
            format: FORMAT.into(),
            action,
            job: hex::encode(job),
            reason: reason.to_string(),
            author,
            time: crate::policy::rfc3339(now),
        }
    }

    fn check(&self) -> Result<[u8; 32], StatementError> {
        let bad = |m: String| Err(StatementError::Malformed(m));
        if self.format != FORMAT {
            return bad(format!("format `{}`, expected `{FORMAT}`", self.format));
        }
        if self.reason.chars().count() > MAX_REASON_CHARS {
            return bad(format!("the reason is over {MAX_REASON_CHARS} characters"));
        }
        if self.reason.chars().any(char::is_control) {
            return bad("the reason contains control characters".into());
        }
        let key = self.author.key().map_err(StatementError::Malformed)?;
        if party_id(&key) != self.author.id {
            return bad("the author's id is not derived from its key".into());
        }
        jcs::hex_array::<32>(&self.job).map_err(|e| StatementError::Malformed(format!("job: {e}")))
    }
}

/// A statement whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedStatement {
    /// The statement.
    pub statement: Statement,
    /// The job's manifest hash.
    pub job: [u8; 32],
}

impl SignedStatement {
    /// Signs `statement` with `author`, which must be the author it names.
    ///
    /// # Errors
    /// The statement is malformed or names another author.
    pub fn sign(statement: Statement, author: &Identity) -> Result<Self, StatementError> {
        statement.check()?;
        if statement.author.id != author.id() {
            return Err(StatementError::Signature(format!(
                "the statement names author `{}`, this key is `{}`",
                statement.author.id,
                author.id()
            )));
        }
        let signature = hex::encode(author.signing_key().sign(&message(&statement)?));
        Ok(Self {
            statement,
            signature,
        })
    }

    /// Checks the statement and its author's signature.
    ///
    /// # Errors
    /// Malformed, or a signature that does not verify under the author's key.
    pub fn verify(&self) -> Result<VerifiedStatement, StatementError> {
        let job = self.statement.check()?;
        let key = self
            .statement
            .author
            .key()
            .map_err(StatementError::Malformed)?;
        let sig: [u8; 64] = jcs::hex_array(&self.signature).map_err(StatementError::Signature)?;
        confide_crypto::sign::verify(&key, &message(&self.statement)?, &sig).map_err(|_| {
            StatementError::Signature(format!(
                "the signature by `{}` does not verify",
                self.statement.author.id
            ))
        })?;
        Ok(VerifiedStatement {
            statement: self.statement.clone(),
            job,
        })
    }

    /// Parses a signed statement (JSON).
    ///
    /// # Errors
    /// Not a signed statement.
    pub fn from_json(text: &[u8]) -> Result<Self, StatementError> {
        serde_json::from_slice(text).map_err(|e| StatementError::Malformed(e.to_string()))
    }

    /// Its JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(reason: &str) -> (Identity, SignedStatement) {
        let id = Identity::generate().expect("key");
        let s = Statement::new(
            Action::Cancel,
            &[7; 32],
            reason,
            id.public(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        let signed = SignedStatement::sign(s, &id).expect("sign");
        (id, signed)
    }

    #[test]
    fn a_signed_statement_verifies_and_round_trips() {
        let (id, s) = signed("wrong data set");
        let v = s.verify().expect("verifies");
        assert_eq!(v.job, [7; 32]);
        assert_eq!(v.statement.author.id, id.id());
        let back = SignedStatement::from_json(s.to_json().as_bytes()).expect("parses");
        assert_eq!(back, s);
        back.verify().expect("still verifies");
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let (_, s) = signed("wrong data set");
        let mut other = s.clone();
        other.statement.reason = "another reason".into();
        assert!(matches!(other.verify(), Err(StatementError::Signature(_))));
        let mut other = s.clone();
        other.statement.job = hex::encode([8u8; 32]);
        assert!(matches!(other.verify(), Err(StatementError::Signature(_))));
        let mut other = s;
        let stranger = Identity::generate().expect("key");
        other.statement.author = stranger.public();
        assert!(matches!(other.verify(), Err(StatementError::Signature(_))));
    }

    #[test]
    fn malformed_statements_are_refused() {
        let id = Identity::generate().expect("key");
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        let s = Statement::new(
            Action::Cancel,
            &[1; 32],
            &long,
            id.public(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        assert!(matches!(
            SignedStatement::sign(s, &id),
            Err(StatementError::Malformed(_))
        ));
        let s = Statement::new(
            Action::Cancel,
            &[1; 32],
            "a\nb",
            id.public(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        assert!(SignedStatement::sign(s, &id).is_err());
        let other = Identity::generate().expect("key");
        let s = Statement::new(
            Action::Cancel,
            &[1; 32],
            "ok",
            other.public(),
            time::OffsetDateTime::UNIX_EPOCH,
        );
        assert!(matches!(
            SignedStatement::sign(s, &id),
            Err(StatementError::Signature(_))
        ));
        assert!(SignedStatement::from_json(b"{\"statement\":1}").is_err());
    }
}
