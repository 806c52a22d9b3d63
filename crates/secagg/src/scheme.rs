//! The aggregation interface and the `plain` and `paillier` schemes.
//!
//! Every scheme is a pair of sans-I/O state machines. The client side turns an encoded update
//! into stage payloads; the server side accepts verified contributions stage by stage, closes a
//! stage with the owners still alive, and either broadcasts the next stage's message (multi-
//! round protocols such as SecAgg+ masking), asks an external party to finish (the Paillier key
//! holder, or several share aggregators), or returns the sum. The same code runs in the
//! in-process simulation and behind gRPC.
//!
//! Rejections carry a closed, numbered reason ([`Reject`]); the table is in the README under
//! "Validation rules".

use std::collections::{BTreeMap, BTreeSet};

use confide_core::SchemeKind;
use confide_crypto::{FixedPoint, PackingLayout, PublicKey};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::contribution::{Contribution, VerifiedContribution};

/// Why a contribution was refused. The numeric codes are stable and go over the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// UPD-001: the contribution is for another round (stale or replayed).
    WrongRound = 1,
    /// UPD-002: this owner already contributed to this stage.
    Duplicate = 2,
    /// UPD-003: the sender is not an authorised owner of this job.
    NotAnOwner = 3,
    /// UPD-004: the signature does not verify.
    BadSignature = 4,
    /// UPD-005: the payload has the wrong number of elements for the model (shape mismatch).
    WrongShape = 5,
    /// UPD-006: the payload is larger than any valid one.
    Oversized = 6,
    /// UPD-007: the payload does not decode (corrupted ciphertext or framing).
    Malformed = 7,
    /// UPD-008: a plain value lies outside the encoding range.
    OutOfRange = 8,
    /// UPD-009: the round's stage is closed (late submission), or the owner left the job.
    StageClosed = 9,
    /// UPD-010: the update was trained from another model than this round's global model.
    StaleModel = 10,
    /// UPD-011: the aggregators' joint check of the update's validity proof failed (`shares`).
    InvalidProof = 11,
}

impl Reject {
    /// All reasons, in code order.
    pub const ALL: [Reject; 11] = [
        Reject::WrongRound,
        Reject::Duplicate,
        Reject::NotAnOwner,
        Reject::BadSignature,
        Reject::WrongShape,
        Reject::Oversized,
        Reject::Malformed,
        Reject::OutOfRange,
        Reject::StageClosed,
        Reject::StaleModel,
        Reject::InvalidProof,
    ];

    /// The rule id, such as `UPD-004`.
    pub fn rule(self) -> String {
        format!("UPD-{:03}", self as u32)
    }

    /// A short name for reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Reject::WrongRound => "wrong_round",
            Reject::Duplicate => "duplicate",
            Reject::NotAnOwner => "not_an_owner",
            Reject::BadSignature => "bad_signature",
            Reject::WrongShape => "wrong_shape",
            Reject::Oversized => "oversized",
            Reject::Malformed => "malformed",
            Reject::OutOfRange => "out_of_range",
            Reject::StageClosed => "stage_closed",
            Reject::StaleModel => "stale_model",
            Reject::InvalidProof => "invalid_proof",
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u32 == code)
    }
}

/// A rejection with its detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {}: {detail}", reason.rule(), reason.name())]
pub struct Rejection {
    /// The reason.
    pub reason: Reject,
    /// Human-readable detail.
    pub detail: String,
}

impl Rejection {
    /// A rejection.
    pub fn new(reason: Reject, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Failures of a round as a whole (as opposed to one bad contribution).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemeError {
    /// Fewer contributions than the job's minimum.
    #[error("only {got} contributions, the job requires at least {min}")]
    TooFewContributions {
        /// Accepted contributions.
        got: usize,
        /// `min_owners`.
        min: usize,
    },
    /// The caller used the state machine out of order.
    #[error("protocol misuse: {0}")]
    Misuse(String),
    /// Encoding, packing or encryption failed.
    #[error("{0}")]
    Crypto(String),
    /// The external party's answer does not fit the request.
    #[error("invalid answer from the external party: {0}")]
    BadExternal(String),
    /// Too many owners dropped out for the round's secrets to be rebuilt.
    #[error("the round cannot be completed: {0}")]
    Unrecoverable(String),
}

/// Parameters shared by both sides of a scheme.
#[derive(Debug, Clone)]
pub struct SchemeParams {
    /// Fixed-point encoding.
    pub fixed: FixedPoint,
    /// Coordinates per update (the model's parameter count).
    pub len: usize,
    /// Owners the job authorises (the packing headroom is computed for all of them).
    pub owners: usize,
    /// Minimum contributions per round.
    pub min_owners: usize,
}

/// An exact integer sum of encoded updates, and who contributed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSum {
    /// Per-coordinate sums of fixed-point values.
    pub sums: Vec<i128>,
    /// Owners whose contributions are in the sum.
    pub contributors: Vec<String>,
    /// Owners whose contributions the aggregators refused while finishing the round, and why
    /// (`shares`: an invalid proof or an undecryptable share).
    pub rejected: Vec<(String, Reject)>,
    /// Aggregators found faulty while finishing the round (`threshold`: a wrong partial sum),
    /// each with what was wrong.
    pub faulty: Vec<String>,
}

/// What a server needs from an external party to finish a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalRequest {
    /// Paillier: the key holder must check these signed contributions, sum them and decrypt
    /// only the sum.
    Unseal {
        /// The round.
        round: u32,
        /// The contributions, with their owners' signatures, for independent verification.
        contributions: Vec<Contribution>,
    },
    /// `shares`, `threshold`: the aggregators must check these signed contributions, open
    /// their shares, verify them jointly and return their partial sums
    /// ([`crate::aggregators`]).
    Aggregate {
        /// The round.
        round: u32,
        /// The contributions, with their owners' signatures, for independent verification.
        contributions: Vec<Contribution>,
    },
}

/// What an external party returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalResult {
    /// The decrypted sum plaintexts, big-endian.
    Unsealed(Vec<Vec<u8>>),
    /// The aggregators' answers to the finishing step, by aggregator index (`None`: no
    /// answer), with the request they answered.
    Aggregated {
        /// What every aggregator was asked.
        request: crate::aggregators::FinishRequest,
        /// Their replies.
        replies: Vec<Option<crate::aggregators::FinishReply>>,
    },
}

/// The outcome of closing a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageResult {
    /// A multi-stage scheme continues with this message to the surviving owners.
    Broadcast {
        /// The next stage.
        stage: u32,
        /// Its message.
        payload: Vec<u8>,
    },
    /// An external party must finish the round; pass its answer to
    /// [`AggregationServer::finish`].
    External(ExternalRequest),
    /// The round's sum.
    Sum(AggregateSum),
}

/// Client side of a scheme: protects one owner's encoded update.
pub trait AggregationClient: Send {
    /// The stage-0 payload for an encoded update (each value within the encoding's `±M`).
    fn start(&mut self, encoded: &[i64]) -> Result<Vec<u8>, SchemeError>;
    /// The payload for a later stage, given the server's broadcast. Single-stage schemes
    /// reject this call.
    fn on_broadcast(&mut self, stage: u32, payload: &[u8]) -> Result<Vec<u8>, SchemeError>;
}

/// Server side of a scheme for one round.
pub trait AggregationServer: Send {
    /// The scheme.
    fn kind(&self) -> SchemeKind;
    /// The stage currently collecting.
    fn stage(&self) -> u32;
    /// Accepts a verified contribution to the current stage, checking its structure.
    fn accept(&mut self, contribution: VerifiedContribution) -> Result<(), Rejection>;
    /// Owners accepted so far in the current stage.
    fn accepted(&self) -> BTreeSet<String>;
    /// Closes the current stage. Contributions from owners not in `survivors` are dropped
    /// (they disconnected); the round fails when fewer than `min_owners` remain.
    fn close_stage(&mut self, survivors: &BTreeSet<String>) -> Result<StageResult, SchemeError>;
    /// Completes a round that needed an external party.
    fn finish(&mut self, result: ExternalResult) -> Result<AggregateSum, SchemeError>;
}

/// What a round's contributions must refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundContext {
    /// Round number.
    pub round: u32,
    /// Digest of the round's global model (`contribution::model_digest`).
    pub model_digest: [u8; 32],
}

/// The checks every server makes before looking at a payload: the stage is open (UPD-009),
/// the round (UPD-001) and model (UPD-010) are this round's, and the owner has not contributed
/// yet (UPD-002).
fn admit(
    c: &Contribution,
    ctx: &RoundContext,
    closed: bool,
    got: &BTreeMap<String, VerifiedContribution>,
) -> Result<(), Rejection> {
    admit_stage(c, ctx, 0, closed, got)
}

/// [`admit`] for a given stage of a multi-stage scheme.
pub(crate) fn admit_stage(
    c: &Contribution,
    ctx: &RoundContext,
    stage: u32,
    closed: bool,
    got: &BTreeMap<String, VerifiedContribution>,
) -> Result<(), Rejection> {
    let round = ctx.round;
    if closed {
        return Err(Rejection::new(
            Reject::StageClosed,
            "the round no longer accepts contributions",
        ));
    }
    if c.round != round {
        return Err(Rejection::new(
            Reject::WrongRound,
            format!(
                "contribution for round {}, the current round is {round}",
                c.round
            ),
        ));
    }
    if c.stage != stage {
        return Err(Rejection::new(
            Reject::StageClosed,
            format!(
                "contribution for stage {}, the current stage is {stage}",
                c.stage
            ),
        ));
    }
    if c.model_digest != ctx.model_digest {
        return Err(Rejection::new(
            Reject::StaleModel,
            "the update was trained from another model than this round's",
        ));
    }
    if got.contains_key(&c.owner) {
        return Err(Rejection::new(
            Reject::Duplicate,
            "already contributed this round",
        ));
    }
    Ok(())
}

/// Frames a list of fixed-width elements: `count u32be ‖ elements`.
pub(crate) fn frame(count: usize, body: impl IntoIterator<Item = u8>) -> Vec<u8> {
    let mut out = (count as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Parses `count u32be ‖ count × width bytes`, requiring the exact expected count and
/// consuming all input.
pub(crate) fn unframe(
    payload: &[u8],
    expected: usize,
    width: usize,
) -> Result<Vec<&[u8]>, Rejection> {
    let Some((count, body)) = payload.split_first_chunk::<4>() else {
        return Err(Rejection::new(
            Reject::Malformed,
            "payload shorter than its header",
        ));
    };
    let count = u32::from_be_bytes(*count) as usize;
    if count != expected {
        return Err(Rejection::new(
            Reject::WrongShape,
            format!("{count} elements, the model needs {expected}"),
        ));
    }
    let max = 4 + expected * width;
    if payload.len() > max {
        return Err(Rejection::new(
            Reject::Oversized,
            format!("{} bytes, a valid payload has {max}", payload.len()),
        ));
    }
    if body.len() != count * width {
        return Err(Rejection::new(
            Reject::Malformed,
            format!("{} body bytes for {count} elements of {width}", body.len()),
        ));
    }
    Ok(body.chunks_exact(width).collect())
}

pub(crate) fn survivors_only(
    got: &mut BTreeMap<String, VerifiedContribution>,
    survivors: &BTreeSet<String>,
    min: usize,
) -> Result<(), SchemeError> {
    got.retain(|owner, _| survivors.contains(owner));
    if got.len() < min {
        return Err(SchemeError::TooFewContributions {
            got: got.len(),
            min,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// plain

/// `plain` client: sends the encoded values in the clear.
#[derive(Debug)]
pub struct PlainClient;

impl AggregationClient for PlainClient {
    fn start(&mut self, encoded: &[i64]) -> Result<Vec<u8>, SchemeError> {
        Ok(frame(
            encoded.len(),
            encoded.iter().flat_map(|v| v.to_be_bytes()),
        ))
    }
    fn on_broadcast(&mut self, _: u32, _: &[u8]) -> Result<Vec<u8>, SchemeError> {
        Err(SchemeError::Misuse("`plain` has a single stage".into()))
    }
}

/// `plain` server: sums in the clear. The coordinator sees every update.
#[derive(Debug)]
pub struct PlainServer {
    params: SchemeParams,
    ctx: RoundContext,
    closed: bool,
    got: BTreeMap<String, VerifiedContribution>,
    parsed: BTreeMap<String, Vec<i64>>,
    rule: Option<confide_core::RobustRule>,
}

impl PlainServer {
    /// A server for one round.
    pub fn new(params: SchemeParams, ctx: RoundContext) -> Self {
        Self {
            params,
            ctx,
            closed: false,
            got: BTreeMap::new(),
            parsed: BTreeMap::new(),
            rule: None,
        }
    }

    /// Combines the round's updates with a robust rule instead of summing them
    /// ([`crate::robust`]); the result is still the rule's estimate times the count.
    #[must_use]
    pub fn with_rule(mut self, rule: Option<confide_core::RobustRule>) -> Self {
        self.rule = rule;
        self
    }
}

impl AggregationServer for PlainServer {
    fn kind(&self) -> SchemeKind {
        SchemeKind::Plain
    }
    fn stage(&self) -> u32 {
        0
    }
    fn accept(&mut self, c: VerifiedContribution) -> Result<(), Rejection> {
        admit(c.get(), &self.ctx, self.closed, &self.got)?;
        let m = self.params.fixed.max_abs();
        let values = unframe(&c.get().payload, self.params.len, 8)?
            .into_iter()
            .map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                i64::from_be_bytes(a)
            })
            .collect::<Vec<_>>();
        if let Some(i) = values.iter().position(|v| v.unsigned_abs() > m) {
            return Err(Rejection::new(
                Reject::OutOfRange,
                format!("value {i} is {}, outside ±{m}", values[i]),
            ));
        }
        self.parsed.insert(c.get().owner.clone(), values);
        self.got.insert(c.get().owner.clone(), c);
        Ok(())
    }
    fn accepted(&self) -> BTreeSet<String> {
        self.got.keys().cloned().collect()
    }
    fn close_stage(&mut self, survivors: &BTreeSet<String>) -> Result<StageResult, SchemeError> {
        self.closed = true;
        survivors_only(&mut self.got, survivors, self.params.min_owners)?;
        let sums = match &self.rule {
            Some(rule) => {
                let updates: Vec<&[i64]> =
                    self.got.keys().map(|o| self.parsed[o].as_slice()).collect();
                crate::robust::combine(rule, &updates).map_err(SchemeError::Unrecoverable)?
            }
            None => {
                let mut sums = vec![0i128; self.params.len];
                for owner in self.got.keys() {
                    for (s, v) in sums.iter_mut().zip(&self.parsed[owner]) {
                        *s += i128::from(*v);
                    }
                }
                sums
            }
        };
        Ok(StageResult::Sum(AggregateSum {
            sums,
            contributors: self.got.keys().cloned().collect(),
            rejected: Vec::new(),
            faulty: Vec::new(),
        }))
    }
    fn finish(&mut self, _: ExternalResult) -> Result<AggregateSum, SchemeError> {
        Err(SchemeError::Misuse(
            "`plain` needs no external party".into(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// paillier

/// The packing layout a job uses under `paillier`.
pub fn paillier_layout(
    params: &SchemeParams,
    modulus_bits: u32,
) -> Result<PackingLayout, SchemeError> {
    PackingLayout::new(&params.fixed, params.owners, modulus_bits)
        .map_err(|e| SchemeError::Crypto(e.to_string()))
}

/// `paillier` client: packs the encoded update and encrypts each plaintext under the key
/// holder's public key with DJN randomisers.
#[derive(Debug)]
pub struct PaillierClient {
    pk: PublicKey,
    layout: PackingLayout,
    rng: ChaCha20Rng,
}

impl PaillierClient {
    /// A client. `seed` must come from a CSPRNG (the caller's `OsRng`): it seeds the
    /// ChaCha20 generator of the encryption randomness.
    pub fn new(pk: PublicKey, params: &SchemeParams, seed: [u8; 32]) -> Result<Self, SchemeError> {
        let layout = paillier_layout(params, pk.modulus_bits())?;
        Ok(Self {
            pk,
            layout,
            rng: ChaCha20Rng::from_seed(seed),
        })
    }

    /// The packing layout.
    pub fn layout(&self) -> &PackingLayout {
        &self.layout
    }
}

impl AggregationClient for PaillierClient {
    fn start(&mut self, encoded: &[i64]) -> Result<Vec<u8>, SchemeError> {
        let plaintexts = self
            .layout
            .pack(encoded)
            .map_err(|e| SchemeError::Crypto(e.to_string()))?;
        let mut body = Vec::with_capacity(plaintexts.len() * self.pk.ciphertext_bytes());
        for pt in &plaintexts {
            let c = self
                .pk
                .encrypt(pt, &mut self.rng)
                .map_err(|e| SchemeError::Crypto(e.to_string()))?;
            body.extend(self.pk.ciphertext_to_bytes(&c));
        }
        Ok(frame(plaintexts.len(), body))
    }
    fn on_broadcast(&mut self, _: u32, _: &[u8]) -> Result<Vec<u8>, SchemeError> {
        Err(SchemeError::Misuse("`paillier` has a single stage".into()))
    }
}

/// Parses a `paillier` payload into ciphertexts, with the rule that refused it.
pub fn parse_paillier_payload(
    pk: &PublicKey,
    layout: &PackingLayout,
    len: usize,
    payload: &[u8],
) -> Result<Vec<confide_crypto::Ciphertext>, Rejection> {
    unframe(payload, layout.plaintexts_for(len), pk.ciphertext_bytes())?
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            pk.ciphertext_from_bytes(b)
                .map_err(|e| Rejection::new(Reject::Malformed, format!("ciphertext {i}: {e}")))
        })
        .collect()
}
