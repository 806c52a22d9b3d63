//! The trustees' distributed key generation: frost-ristretto255's `keys::dkg` (Pedersen's DKG
//! with proofs of knowledge, as in the FROST paper, Komlo and Goldberg, SAC 2020, Figure 1),
//! wrapped as a machine that takes messages and returns messages, with no I/O of its own.
//!
//! Round 1 is broadcast (through the audit log); round 2 is one package per recipient, secret,
//! so it travels encrypted to that recipient. [`Board`] is what each trustee keeps of the
//! broadcast: a trustee that posts two different round-1 packages is named, and the DKG aborts
//! (TRU-009). [`activate`] starts an epoch only when every trustee logged the same group-key
//! digest (TRU-010).

use std::collections::BTreeMap;

use frost_ristretto255 as frost;
use frost_ristretto255::keys::dkg;

use crate::group;
use crate::{GroupKey, KeyShare};

/// Why the DKG stopped, naming the trustees at fault where there are any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkgError {
    /// A trustee posted two different round-1 packages.
    #[error("TRU-009: trustee {0} posted two different round-{1} packages; the DKG aborts")]
    Equivocation(u16, u8),
    /// frost refused a package; `culprits` are the trustees it blames.
    #[error("TRU-009: the DKG failed ({reason}); blamed: {culprits:?}")]
    Refused {
        /// frost's reason.
        reason: String,
        /// The trustees frost blames (empty when it blames nobody).
        culprits: Vec<u16>,
    },
    /// The trustees do not all hold the same group key.
    #[error("TRU-010: the epoch is not active: {0}")]
    Disagreement(String),
    /// A call out of order (round 2 before round 1, and so on).
    #[error("the DKG is not at that step: {0}")]
    OutOfOrder(&'static str),
}

fn identifier(index: u16) -> Result<frost::Identifier, DkgError> {
    frost::Identifier::try_from(index).map_err(|e| refused(&e))
}

/// A FROST identifier back to the trustee's index (identifiers made from `u16`s); `None` for
/// one that no `u16` made.
fn index(id: &frost::Identifier) -> Option<u16> {
    let bytes = id.serialize();
    bytes[2..]
        .iter()
        .all(|b| *b == 0)
        .then(|| u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn refused(e: &frost::Error) -> DkgError {
    DkgError::Refused {
        reason: e.to_string(),
        culprits: e.culprits().iter().filter_map(index).collect(),
    }
}

enum Step {
    Round1(dkg::round1::SecretPackage),
    Round2(
        dkg::round2::SecretPackage,
        BTreeMap<frost::Identifier, dkg::round1::Package>,
    ),
    Done,
}

/// One trustee's side of the DKG.
pub struct Participant {
    index: u16,
    n: u16,
    /// Its own round-1 package, as broadcast: the board must show the same one.
    own: Vec<u8>,
    step: Step,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret packages stay out of logs.
        f.debug_struct("Participant")
            .field("index", &self.index)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl Participant {
    /// Starts trustee `index` (1-based) of `n` with threshold `t`: returns the participant and
    /// its round-1 package, to broadcast.
    pub fn start(
        index: u16,
        n: u16,
        t: u16,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Result<(Participant, Vec<u8>), DkgError> {
        let (secret, package) =
            dkg::part1(identifier(index)?, n, t, rng).map_err(|e| refused(&e))?;
        let bytes = package.serialize().map_err(|e| refused(&e))?;
        Ok((
            Participant {
                index,
                n,
                own: bytes.clone(),
                step: Step::Round1(secret),
            },
            bytes,
        ))
    }

    /// Takes every other trustee's round-1 package; returns the round-2 package for each
    /// other trustee, by index (each to be sent encrypted to its recipient only).
    pub fn round2(
        &mut self,
        round1: &BTreeMap<u16, Vec<u8>>,
    ) -> Result<BTreeMap<u16, Vec<u8>>, DkgError> {
        let Step::Round1(secret) = std::mem::replace(&mut self.step, Step::Done) else {
            return Err(DkgError::OutOfOrder("round 2 needs round 1"));
        };
        // The broadcast must hold exactly trustees 1..=n, and this trustee's own package as it
        // sent it: anything else under its index is someone posting in its name.
        if round1.get(&self.index) != Some(&self.own) {
            return Err(DkgError::Equivocation(self.index, 1));
        }
        let expected: Vec<u16> = (1..=self.n).collect();
        if round1.keys().copied().collect::<Vec<_>>() != expected {
            return Err(DkgError::Refused {
                reason: format!(
                    "round 1 needs packages from trustees 1..={} exactly",
                    self.n
                ),
                culprits: round1
                    .keys()
                    .filter(|i| **i == 0 || **i > self.n)
                    .copied()
                    .collect(),
            });
        }
        let packages = decode(round1, self.index, 1, dkg::round1::Package::deserialize)?;
        let (secret2, out) = dkg::part2(secret, &packages).map_err(|e| refused(&e))?;
        self.step = Step::Round2(secret2, packages);
        out.into_iter()
            .map(|(id, p)| {
                let to =
                    index(&id).ok_or(DkgError::OutOfOrder("an identifier not from an index"))?;
                Ok((to, p.serialize().map_err(|e| refused(&e))?))
            })
            .collect()
    }

    /// Takes the round-2 packages sent to this trustee; returns its key share.
    pub fn finish(&mut self, round2: &BTreeMap<u16, Vec<u8>>) -> Result<KeyShare, DkgError> {
        let Step::Round2(secret, round1) = std::mem::replace(&mut self.step, Step::Done) else {
            return Err(DkgError::OutOfOrder("finishing needs round 2"));
        };
        let packages = decode(round2, self.index, 2, dkg::round2::Package::deserialize)?;
        let (key, public) = dkg::part3(&secret, &round1, &packages).map_err(|e| refused(&e))?;
        let secret =
            group::scalar(&key.signing_share().serialize(), "signing share").map_err(|e| {
                DkgError::Refused {
                    reason: e.to_string(),
                    culprits: Vec::new(),
                }
            })?;
        let group = group_key(&public, self.n)?;
        Ok(KeyShare {
            index: self.index,
            secret,
            group,
        })
    }
}

/// Decodes the packages of `round` from every trustee but `me`, blaming the sender of one
/// that does not decode.
fn decode<P>(
    packages: &BTreeMap<u16, Vec<u8>>,
    me: u16,
    round: u8,
    deserialize: impl Fn(&[u8]) -> Result<P, frost::Error>,
) -> Result<BTreeMap<frost::Identifier, P>, DkgError> {
    let mut out = BTreeMap::new();
    for (&from, bytes) in packages.iter().filter(|(i, _)| **i != me) {
        let p = deserialize(bytes).map_err(|e| DkgError::Refused {
            reason: format!("round-{round} package from {from}: {e}"),
            culprits: vec![from],
        })?;
        out.insert(identifier(from)?, p);
    }
    Ok(out)
}

fn group_key(public: &frost::keys::PublicKeyPackage, n: u16) -> Result<GroupKey, DkgError> {
    let bad = |what: &str| DkgError::Disagreement(format!("the public key package's {what}"));
    let key = public
        .verifying_key()
        .serialize()
        .map_err(|_| bad("group key"))?;
    let mut shares = BTreeMap::new();
    for (id, share) in public.verifying_shares() {
        let bytes = share.serialize().map_err(|_| bad("shares"))?;
        let i = index(id).ok_or_else(|| bad("shares"))?;
        shares.insert(
            i,
            group::element(&bytes, "verifying share").map_err(|_| bad("shares"))?,
        );
    }
    if shares.len() != usize::from(n) {
        return Err(bad("share count"));
    }
    Ok(GroupKey {
        threshold: public.min_signers().ok_or_else(|| bad("threshold"))?,
        key: group::element(&key, "group key").map_err(|_| bad("group key"))?,
        shares,
    })
}

/// What one trustee keeps of the broadcast channel during a DKG: the first package each
/// trustee posted in each round, by digest.
#[derive(Debug, Default, Clone)]
pub struct Board {
    seen: BTreeMap<(u8, u16), [u8; 32]>,
    packages: BTreeMap<(u8, u16), Vec<u8>>,
}

impl Board {
    /// Records `package` from `trustee` in `round` (1 for the broadcast round, or the epoch's
    /// digest round). The same package again is a no-op; a different one names the trustee.
    pub fn post(&mut self, round: u8, trustee: u16, package: &[u8]) -> Result<(), DkgError> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(package).into();
        match self.seen.get(&(round, trustee)) {
            Some(d) if *d != digest => Err(DkgError::Equivocation(trustee, round)),
            Some(_) => Ok(()),
            None => {
                self.seen.insert((round, trustee), digest);
                self.packages.insert((round, trustee), package.to_vec());
                Ok(())
            }
        }
    }

    /// The packages of `round`, by trustee.
    pub fn round(&self, round: u8) -> BTreeMap<u16, Vec<u8>> {
        self.packages
            .iter()
            .filter(|((r, _), _)| *r == round)
            .map(|((_, t), p)| (*t, p.clone()))
            .collect()
    }
}

/// TRU-010: an epoch is active only when all `n` trustees logged the same group-key digest.
/// Returns that digest, or names the trustees missing or disagreeing.
pub fn activate(digests: &BTreeMap<u16, String>, n: u16) -> Result<String, DkgError> {
    let missing: Vec<u16> = (1..=n).filter(|i| !digests.contains_key(i)).collect();
    if !missing.is_empty() {
        return Err(DkgError::Disagreement(format!(
            "no digest yet from trustees {missing:?}"
        )));
    }
    let mut counts: BTreeMap<&String, Vec<u16>> = BTreeMap::new();
    for (i, d) in digests {
        counts.entry(d).or_default().push(*i);
    }
    if counts.len() == 1 {
        return Ok(digests.values().next().cloned().unwrap_or_default());
    }
    Err(DkgError::Disagreement(format!(
        "the trustees logged {} different group keys: {:?}",
        counts.len(),
        counts.values().collect::<Vec<_>>()
    )))
}

/// Runs a whole DKG among `n` trustees in memory (for tests, the benchmark and a dealer-free
/// local setup). Returns each trustee's share, by index.
pub fn run_local(
    n: u16,
    t: u16,
    rng: &mut (impl rand::RngCore + rand::CryptoRng),
) -> Result<Vec<KeyShare>, DkgError> {
    let mut board = Board::default();
    let mut parts = Vec::new();
    for i in 1..=n {
        let (p, package) = Participant::start(i, n, t, rng)?;
        board.post(1, i, &package)?;
        parts.push(p);
    }
    let round1 = board.round(1);
    let mut inbox: BTreeMap<u16, BTreeMap<u16, Vec<u8>>> = BTreeMap::new();
    for p in &mut parts {
        for (to, package) in p.round2(&round1)? {
            inbox.entry(to).or_default().insert(p.index, package);
        }
    }
    let shares = parts
        .iter_mut()
        .map(|p| p.finish(&inbox.remove(&p.index).unwrap_or_default()))
        .collect::<Result<Vec<_>, _>>()?;
    let digests = shares.iter().map(|s| (s.index, s.group.digest())).collect();
    activate(&digests, n)?;
    Ok(shares)
}

/// A trusted dealer's split of a fresh key among `n` (frost's `generate_with_dealer`): the
/// benchmark's baseline for the DKG. Confide never uses a dealer: whoever deals knows the key.
pub fn dealer_baseline(
    n: u16,
    t: u16,
    rng: &mut (impl rand::RngCore + rand::CryptoRng),
) -> Result<usize, DkgError> {
    let (shares, _) =
        frost::keys::generate_with_dealer(n, t, frost::keys::IdentifierList::Default, rng)
            .map_err(|e| refused(&e))?;
    Ok(shares.len())
}
