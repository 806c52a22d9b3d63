//! The roles a party can play in a federation. A party's role is written into its certificate
//! (subject organisational unit) by the federation's certificate authority, and every server
//! checks it before it serves a request.

use std::fmt;
use std::str::FromStr;

/// A role in a federation (see docs/ARCHITECTURE.md, "Roles").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Runs rounds and FedAvg; never holds the decryption key.
    Coordinator,
    /// Holds the Paillier secret key; decrypts only sums of enough signed contributions.
    KeyHolder,
    /// One of the `shares` or `threshold` aggregators (`confide aggregator`), named
    /// `aggregator-1`, `aggregator-2`, ….
    Aggregator,
    /// A data owner (`confide node`).
    Node,
    /// The model owner (data scientist): watches progress and receives the released model.
    ModelOwner,
}

impl Role {
    /// The text form used in certificates and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::KeyHolder => "keyholder",
            Role::Aggregator => "aggregator",
            Role::Node => "node",
            Role::ModelOwner => "model-owner",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "coordinator" => Ok(Role::Coordinator),
            "keyholder" => Ok(Role::KeyHolder),
            "aggregator" => Ok(Role::Aggregator),
            "node" => Ok(Role::Node),
            "model-owner" => Ok(Role::ModelOwner),
            other => Err(format!(
                "unknown role `{other}` (expected coordinator, keyholder, aggregator, node or model-owner)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_text_round_trips() {
        for r in [
            Role::Coordinator,
            Role::KeyHolder,
            Role::Aggregator,
            Role::Node,
            Role::ModelOwner,
        ] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("admin".parse::<Role>().is_err());
    }
}
