//! Threshold secret management for Confide, after CALYPSO (Kokoris-Kogias et al., "CALYPSO:
//! Private Data Management for Decentralized Ledgers", PVLDB 14(4), 2021; eprint 2018/209).
//!
//! - [`dkg`]: n trustees make a collective ristretto255 key with frost-ristretto255's DKG; each
//!   keeps only its share.
//! - [`secret`]: a writer encrypts a 32-byte secret under that key, bound to a label by a TDH2
//!   proof; a reader gets re-encryption shares, each with an RFC 9497 DLEQ proof, and opens the
//!   secret from any `t` valid ones.
//! - [`trustee`]: what one trustee checks, itself, before it answers, and what it keeps.
//!
//! Unlike CALYPSO's reference code, which checks proofs only at its leader and does not check
//! the reader's key, every trustee here checks everything itself.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha256};

pub mod dkg;
pub mod dleq;
pub mod group;
pub mod secret;
pub mod trustee;

/// Bytes that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum Error {
    /// Bytes that are not a canonical encoding of what they claim to be.
    #[error("not a canonical encoding of the {0}")]
    Encoding(&'static str),
}

/// The trustees' public side of an epoch: the collective key `X`, each trustee's public share
/// `X_i = s_i·G` by index, and the threshold `t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKey {
    /// Shares needed to open a read.
    pub threshold: u16,
    /// `X`.
    pub key: RistrettoPoint,
    /// `X_i` by trustee index.
    pub shares: BTreeMap<u16, RistrettoPoint>,
}

impl GroupKey {
    /// `t || X || (i || X_i)...`, the bytes every trustee logs the digest of.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.threshold.to_be_bytes().to_vec();
        out.extend_from_slice(&group::enc(&self.key));
        for (i, x) in &self.shares {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(&group::enc(x));
        }
        out
    }

    /// Decodes [`GroupKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<GroupKey, Error> {
        if bytes.len() < 34 || !(bytes.len() - 34).is_multiple_of(34) {
            return Err(Error::Encoding("group key"));
        }
        let threshold = u16::from_be_bytes([bytes[0], bytes[1]]);
        let key = group::element(&bytes[2..34], "group key")?;
        let mut shares = BTreeMap::new();
        for chunk in bytes[34..].chunks(34) {
            let i = u16::from_be_bytes([chunk[0], chunk[1]]);
            // Index 0 would be the whole key's abscissa.
            if i == 0
                || shares
                    .insert(i, group::element(&chunk[2..], "public share")?)
                    .is_some()
            {
                return Err(Error::Encoding("group key"));
            }
        }
        if threshold < 2 || usize::from(threshold) > shares.len() {
            return Err(Error::Encoding("group key"));
        }
        Ok(GroupKey {
            threshold,
            key,
            shares,
        })
    }

    /// The epoch's digest: SHA-256 of [`GroupKey::to_bytes`], hex.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }
}

/// One trustee's share of the collective key.
#[derive(Clone)]
pub struct KeyShare {
    /// The trustee's index (its FROST identifier, 1-based).
    pub index: u16,
    /// `s_i`.
    pub secret: Scalar,
    /// The epoch's public side.
    pub group: GroupKey,
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyShare")
            .field("index", &self.index)
            .field("group", &self.group.digest())
            .finish_non_exhaustive()
    }
}

impl KeyShare {
    /// `i || s_i || group`: secret bytes, to be sealed at rest by the caller.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.index.to_be_bytes().to_vec();
        out.extend_from_slice(self.secret.as_bytes());
        out.extend(self.group.to_bytes());
        out
    }

    /// Decodes [`KeyShare::to_bytes`], checking that `s_i·G` is the group's `X_i`.
    pub fn from_bytes(bytes: &[u8]) -> Result<KeyShare, Error> {
        if bytes.len() < 34 {
            return Err(Error::Encoding("key share"));
        }
        let index = u16::from_be_bytes([bytes[0], bytes[1]]);
        let secret = group::scalar(&bytes[2..34], "key share")?;
        let group = GroupKey::from_bytes(&bytes[34..])?;
        let public = secret * curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
        if group.shares.get(&index) != Some(&public) {
            return Err(Error::Encoding(
                "key share (not the group's share for its index)",
            ));
        }
        Ok(KeyShare {
            index,
            secret,
            group,
        })
    }
}
