//! The schemes that several aggregators finish: `shares` and `threshold` (sans-I/O).
//!
//! # Flow of a round
//! 1. Each owner splits its encoded update into one share per aggregator and encrypts each
//!    share to that aggregator's key with HPKE (RFC 9180, base mode,
//!    DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, from the `hpke` crate). The
//!    `info` string binds the job, the scheme and the aggregator's index; the associated data
//!    is the owner's name. The signed contribution carries all the ciphertexts to the
//!    coordinator, which can read none of them ([`MultiClient`], [`MultiServer`]).
//! 2. The coordinator relays the round's signed contributions, with the owners' certificates,
//!    to every aggregator. Each aggregator checks them itself (the key holder's KEY-001…003
//!    and KEY-007, [`crate::keyholder::check_signed`]), opens its own shares and returns one
//!    *verifier share* per owner, or the reason it could not ([`Aggregator::prepare`]).
//! 3. The coordinator sends every aggregator the table of all verifier shares
//!    ([`FinishRequest`]). Each aggregator decides by the same deterministic rule which
//!    owners are in the sum, checks that they are at least `min_owners` (KEY-004) and that
//!    this round was not finished before (KEY-005), and returns its partial sum over them
//!    ([`Aggregator::finish`]).
//! 4. The coordinator reconstructs the sum ([`MultiServer::finish`]).
//!
//! # `shares`: Prio3 with validity proofs
//! The shares are Prio3 input shares (Corrigan-Gibbs & Boneh, NSDI 2017; the VDAF draft,
//! draft-irtf-cfrg-vdaf) of `Prio3SumVec` from the `prio` crate: additive shares over a 128-bit
//! field with a fully linear proof that **every coordinate lies in `[0, 2M]`**, where `M` is
//! the fixed-point encoding's largest magnitude (owners add `M` before sharing; the collector
//! subtracts `k·M` from the sum of `k` updates). The aggregators verify the proof jointly
//! from their verifier shares: the verifier message is computed by every aggregator from all
//! verifier shares, so no aggregator has to trust another's combination. A failed proof is
//! rejected as UPD-011. The aggregators share a secret *verify key* (provisioned out of band,
//! as in DAP, draft-ietf-ppm-dap); owners must not know it, or they could forge proofs.
//! - **Robustness**: the proof bounds each coordinate, not the update's norm. One malicious
//!   owner can therefore move every coordinate of the sum by at most `2M` encoded units, i.e.
//!   `2·clip` in model units, and the mean by `2·clip/k`, but never by more, and cannot make
//!   the sum wrap or overflow. An L2 bound (the `FixedPointBoundedL2VecSum` type that prio
//!   0.18 dropped) would bound the whole vector; it is not implemented.
//! - **Privacy** holds while at least one aggregator is honest: any `n − 1` shares are
//!   uniformly random. Every aggregator is needed to finish a round.
//! - **Correctness against aggregators** is not provided: an aggregator that returns a wrong
//!   aggregate share makes the sum wrong without detection (`threshold` corrects and names
//!   wrong partial sums up to its bound).
//!
//! # `threshold`: Shamir `t`-of-`n`
//! Shares are points of random degree-`(t − 1)` polynomials over GF(2^61 − 1)
//! ([`crate::threshold`]). Owners' shares carry no proof; the coordinator reconstructs with the
//! Berlekamp–Welch decoder, which corrects `e` wrong partial sums with `N ≥ t + 2e` replies
//! and names the aggregators that sent them. Past that bound the guarantee is the weaker one
//! documented in [`crate::threshold`].
//!
//! # Not covered yet (a malicious coordinator)
//! - Aggregators do not check that they were all given the same contributions and table, so a
//!   coordinator colluding with `c ≥ 2t − n` aggregators can have two groups sum different
//!   subsets of one round under `threshold` and subtract them (split views). A quorum of
//!   aggregator signatures over the round's contents, `q > (n + t − 1)/2`, would stop it.
//! - Verifier shares are relayed unsigned, so under `shares` the coordinator could replace one
//!   to let a colluding owner's invalid update pass.
//!
//! # Deciding who is in the sum
//! An owner is in the sum when every aggregator that answered step 2 opened its share
//! (`threshold`), or when all `n` aggregators opened their shares and the proof verifies
//! (`shares`). Under `threshold` an aggregator that answers step 2 falsely can thereby
//! exclude an owner; that costs the owner its round, never the sum's correctness or anyone's
//! privacy, and the coordinator logs which aggregator reported what.

use std::collections::{BTreeMap, BTreeSet};

use confide_core::SchemeKind;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use prio::codec::{Encode, ParameterizedDecode};
use prio::vdaf::prio3::Prio3SumVec;
use prio::vdaf::{
    Aggregatable, Aggregator as _, Client as _, Collector as _, Vdaf, VerifyTransition,
};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::contribution::{Contribution, VerifiedContribution};
use crate::keyholder::{UnsealError, check_signed};
use crate::scheme::{
    AggregateSum, AggregationClient, AggregationServer, ExternalRequest, ExternalResult, Reject,
    Rejection, RoundContext, SchemeError, SchemeParams, StageResult, admit_stage, survivors_only,
};
use crate::threshold;

type Kem = X25519HkdfSha256;
type HpkePublic = <Kem as hpke::Kem>::PublicKey;
type HpkeSecret = <Kem as hpke::Kem>::PrivateKey;
type VerifyState = <Prio3SumVec as prio::vdaf::Aggregator<32, 16>>::VerifyState;
type VerifierShare = <Prio3SumVec as prio::vdaf::Aggregator<32, 16>>::VerifierShare;

/// Bytes of an HPKE encapsulated key (X25519).
const ENC_LEN: usize = 32;
/// Bytes of the ChaCha20-Poly1305 tag.
const TAG_LEN: usize = 16;
/// Bytes of a Prio3 report nonce.
const NONCE_LEN: usize = 16;

/// The aggregator's name for index `i` (0-based): `aggregator-{i+1}`, also its certificate
/// name and, under `threshold`, its x-coordinate `i + 1`.
pub fn aggregator_name(index: usize) -> String {
    format!("aggregator-{}", index + 1)
}

/// The parameters both sides derive from the job.
#[derive(Debug, Clone)]
pub struct MultiParams {
    /// `shares` or `threshold`.
    pub kind: SchemeKind,
    /// Aggregators.
    pub n: usize,
    /// Shares that reconstruct (`n` under `shares`).
    pub t: usize,
    /// Encoding, length and owner bounds.
    pub scheme: SchemeParams,
    /// The job digest (bound into every encryption and proof).
    pub job_digest: [u8; 32],
}

impl MultiParams {
    /// Checks the parameters: the scheme, `n` and `t`, and that no sum can wrap the field.
    pub fn new(
        kind: SchemeKind,
        n: usize,
        t: usize,
        scheme: SchemeParams,
        job_digest: [u8; 32],
    ) -> Result<Self, SchemeError> {
        let bad = |m: String| Err(SchemeError::Crypto(m));
        match kind {
            SchemeKind::Shares if !(2..=255).contains(&n) || t != n => {
                return bad(format!("`shares` with {n} aggregators and threshold {t}"));
            }
            SchemeKind::Threshold if t < 2 || t > n || 2 * t <= n => {
                return bad(format!(
                    "`threshold` with {n} aggregators and threshold {t}"
                ));
            }
            SchemeKind::Shares | SchemeKind::Threshold => {}
            other => return bad(format!("`{}` has no aggregators", other.as_str())),
        }
        let m = u128::from(scheme.fixed.max_abs());
        let owners = scheme.owners.max(1) as u128;
        let limit = match kind {
            SchemeKind::Threshold => u128::from(crate::shamir::P / 2),
            _ => u128::MAX >> 8,
        };
        if m.saturating_mul(owners).saturating_mul(2) >= limit {
            return bad(format!(
                "sums of {owners} updates of magnitude up to {m} could wrap the field; lower encoding.scale_bits or encoding.clip"
            ));
        }
        Ok(Self {
            kind,
            n,
            t,
            scheme,
            job_digest,
        })
    }

    fn offset(&self) -> i64 {
        self.scheme.fixed.max_abs() as i64
    }

    /// The Prio3 instance under `shares`: every coordinate in `[0, 2M]`, with the chunk
    /// length `≈ √(len · bits)` that the VDAF draft recommends for `SumVec`.
    pub fn vdaf(&self) -> Result<Prio3SumVec, SchemeError> {
        let max = 2 * u128::from(self.scheme.fixed.max_abs());
        let bits = 128 - max.leading_zeros() as usize;
        let chunk = ((self.scheme.len * bits) as f64).sqrt().ceil().max(1.0) as usize;
        Prio3SumVec::new_sum_vec(self.n as u8, max, self.scheme.len, chunk)
            .map_err(|e| SchemeError::Crypto(format!("prio: {e}")))
    }

    /// The Prio3 application context: the job.
    fn prio_ctx(&self) -> Vec<u8> {
        let mut ctx = b"confide/shares/v1 ".to_vec();
        ctx.extend(self.job_digest);
        ctx
    }

    /// HPKE `info` for aggregator `index`.
    fn info(&self, index: usize) -> Vec<u8> {
        let mut info = format!("confide/aggregators/v1 {} ", self.kind.as_str()).into_bytes();
        info.extend(self.job_digest);
        info.extend((index as u32).to_be_bytes());
        info
    }
}

/// An aggregator's HPKE key pair.
#[derive(Clone)]
pub struct AggregatorKey {
    secret: HpkeSecret,
    public: HpkePublic,
}

impl std::fmt::Debug for AggregatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AggregatorKey({})", self.public_hex())
    }
}

impl AggregatorKey {
    /// A fresh key from the operating system's generator.
    pub fn generate() -> Self {
        let mut ikm = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut ikm);
        let (secret, public) = Kem::derive_keypair(&ikm);
        Self { secret, public }
    }

    /// The public key, hex (what `GetPublicKey` publishes).
    pub fn public_hex(&self) -> String {
        hex::encode(self.public.to_bytes())
    }
}

/// Parses a published aggregator public key (64 hex digits).
pub fn parse_public_key(text: &str) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("aggregator key: {e}"))?;
    HpkePublic::from_bytes(&bytes).map_err(|e| format!("aggregator key: {e}"))?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// client

/// An owner's side: shares the update, proves it in range (`shares`) and encrypts each share
/// to its aggregator.
pub struct MultiClient {
    params: MultiParams,
    keys: Vec<HpkePublic>,
    owner: String,
    vdaf: Option<Prio3SumVec>,
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for MultiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MultiClient({}, {})",
            self.params.kind.as_str(),
            self.owner
        )
    }
}

impl MultiClient {
    /// A client for `owner`, with the aggregators' public keys in index order. `seed` drives
    /// the Shamir polynomials (Prio3 and HPKE draw from the operating system).
    pub fn new(
        params: MultiParams,
        keys: &[Vec<u8>],
        owner: &str,
        seed: [u8; 32],
    ) -> Result<Self, SchemeError> {
        if keys.len() != params.n {
            return Err(SchemeError::Crypto(format!(
                "{} aggregator keys for {} aggregators",
                keys.len(),
                params.n
            )));
        }
        let keys = keys
            .iter()
            .map(|k| HpkePublic::from_bytes(k).map_err(|e| SchemeError::Crypto(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let vdaf = match params.kind {
            SchemeKind::Shares => Some(params.vdaf()?),
            _ => None,
        };
        Ok(Self {
            params,
            keys,
            owner: owner.to_string(),
            vdaf,
            rng: ChaCha20Rng::from_seed(seed),
        })
    }

    /// The plaintext share for each aggregator (under `shares` each carries the Prio3 nonce
    /// and public share); [`MultiClient::seal`] encrypts them. `start` does both.
    pub fn plaintexts(&mut self, encoded: &[i64]) -> Result<Vec<Vec<u8>>, SchemeError> {
        let p = &self.params;
        match &self.vdaf {
            Some(vdaf) => {
                let m = p.offset();
                let measurement: Vec<u128> = encoded.iter().map(|&v| (v + m) as u128).collect();
                let mut nonce = [0u8; NONCE_LEN];
                self.rng.fill_bytes(&mut nonce);
                let (public, inputs) = vdaf
                    .shard(&p.prio_ctx(), &measurement, &nonce)
                    .map_err(|e| SchemeError::Crypto(format!("prio: {e}")))?;
                let public = public
                    .get_encoded()
                    .map_err(|e| SchemeError::Crypto(e.to_string()))?;
                inputs
                    .iter()
                    .map(|share| {
                        let mut pt = nonce.to_vec();
                        pt.extend((public.len() as u32).to_be_bytes());
                        pt.extend(&public);
                        share
                            .encode(&mut pt)
                            .map_err(|e| SchemeError::Crypto(e.to_string()))?;
                        Ok(pt)
                    })
                    .collect()
            }
            None => {
                let shares = threshold::share(encoded, p.n, p.t, &mut self.rng)
                    .map_err(|e| SchemeError::Crypto(e.to_string()))?;
                Ok(shares
                    .into_iter()
                    .map(|v| v.into_iter().flat_map(u64::to_be_bytes).collect())
                    .collect())
            }
        }
    }
}

impl AggregationClient for MultiClient {
    fn start(&mut self, encoded: &[i64]) -> Result<Vec<u8>, SchemeError> {
        let m = self.params.offset();
        if encoded.len() != self.params.scheme.len {
            return Err(SchemeError::Crypto(format!(
                "{} values for a model of {}",
                encoded.len(),
                self.params.scheme.len
            )));
        }
        if let Some(i) = encoded.iter().position(|v| v.abs() > m) {
            return Err(SchemeError::Crypto(format!(
                "value {i} is {}, outside ±{m}",
                encoded[i]
            )));
        }
        let plaintexts = self.plaintexts(encoded)?;
        self.seal(&plaintexts)
    }

    fn on_broadcast(&mut self, _: u32, _: &[u8]) -> Result<Vec<u8>, SchemeError> {
        Err(SchemeError::Misuse(format!(
            "`{}` has a single stage",
            self.params.kind.as_str()
        )))
    }
}

impl MultiClient {
    /// Encrypts each plaintext share to its aggregator: the payload of a contribution.
    pub fn seal(&self, plaintexts: &[Vec<u8>]) -> Result<Vec<u8>, SchemeError> {
        let mut out = (self.params.n as u32).to_be_bytes().to_vec();
        for (i, (pt, key)) in plaintexts.iter().zip(&self.keys).enumerate() {
            let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem>(
                &OpModeS::Base,
                key,
                &self.params.info(i),
                pt,
                self.owner.as_bytes(),
            )
            .map_err(|e| SchemeError::Crypto(format!("HPKE: {e}")))?;
            out.extend(((ENC_LEN + ct.len()) as u32).to_be_bytes());
            out.extend(enc.to_bytes());
            out.extend(ct);
        }
        Ok(out)
    }
}

/// One encrypted share: `(encapsulated key, ciphertext)`.
type Part<'a> = (&'a [u8], &'a [u8]);

/// Splits a payload into its `n` encrypted parts.
fn split_parts(payload: &[u8], n: usize) -> Result<Vec<Part<'_>>, Rejection> {
    let malformed = |m: String| Rejection::new(Reject::Malformed, m);
    let Some((count, mut rest)) = payload.split_first_chunk::<4>() else {
        return Err(malformed("payload shorter than its header".into()));
    };
    let count = u32::from_be_bytes(*count) as usize;
    if count != n {
        return Err(Rejection::new(
            Reject::WrongShape,
            format!("{count} shares for {n} aggregators"),
        ));
    }
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(malformed(format!("share {i} has no length")));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len < ENC_LEN + TAG_LEN || len > tail.len() {
            return Err(malformed(format!("share {i} has a bad length {len}")));
        }
        let (part, tail) = tail.split_at(len);
        parts.push(part.split_at(ENC_LEN));
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(Rejection::new(
            Reject::Oversized,
            format!("{} bytes after the last share", rest.len()),
        ));
    }
    Ok(parts)
}

// ---------------------------------------------------------------------------------------------
// coordinator

/// The coordinator's side of one round: checks the payloads' structure, asks the aggregators
/// to finish, and reconstructs the sum from their replies.
#[derive(Debug)]
pub struct MultiServer {
    params: MultiParams,
    ctx: RoundContext,
    closed: bool,
    got: BTreeMap<String, VerifiedContribution>,
    pending: bool,
}

impl MultiServer {
    /// A server for one round.
    pub fn new(params: MultiParams, ctx: RoundContext) -> Self {
        Self {
            params,
            ctx,
            closed: false,
            got: BTreeMap::new(),
            pending: false,
        }
    }

    /// The exact ciphertext length of a `threshold` share; `None` under `shares` (Prio3's
    /// leader share and proof lengths are checked by the aggregators that parse them).
    fn expected_ct(&self) -> Option<usize> {
        (self.params.kind == SchemeKind::Threshold).then(|| 8 * self.params.scheme.len + TAG_LEN)
    }
}

impl AggregationServer for MultiServer {
    fn kind(&self) -> SchemeKind {
        self.params.kind
    }
    fn stage(&self) -> u32 {
        0
    }
    fn accept(&mut self, c: VerifiedContribution) -> Result<(), Rejection> {
        admit_stage(c.get(), &self.ctx, 0, self.closed, &self.got)?;
        let parts = split_parts(&c.get().payload, self.params.n)?;
        if let Some(want) = self.expected_ct()
            && let Some(i) = parts.iter().position(|(_, ct)| ct.len() != want)
        {
            return Err(Rejection::new(
                if parts[i].1.len() > want {
                    Reject::Oversized
                } else {
                    Reject::WrongShape
                },
                format!(
                    "share {i} has {} bytes, the model needs {want}",
                    parts[i].1.len()
                ),
            ));
        }
        self.got.insert(c.get().owner.clone(), c);
        Ok(())
    }
    fn accepted(&self) -> BTreeSet<String> {
        self.got.keys().cloned().collect()
    }
    fn close_stage(&mut self, survivors: &BTreeSet<String>) -> Result<StageResult, SchemeError> {
        self.closed = true;
        survivors_only(&mut self.got, survivors, self.params.scheme.min_owners)?;
        self.pending = true;
        Ok(StageResult::External(ExternalRequest::Aggregate {
            round: self.ctx.round,
            contributions: self.got.values().map(|c| c.get().clone()).collect(),
        }))
    }
    fn finish(&mut self, result: ExternalResult) -> Result<AggregateSum, SchemeError> {
        if !std::mem::take(&mut self.pending) {
            return Err(SchemeError::Misuse("finish before close_stage".into()));
        }
        let ExternalResult::Aggregated { request, replies } = result else {
            return Err(SchemeError::Misuse(
                "an aggregators' round finishes with the aggregators' replies".into(),
            ));
        };
        if replies.len() != self.params.n || request.answered.len() != self.params.n {
            return Err(SchemeError::BadExternal(format!(
                "{} replies for {} aggregators",
                replies.len(),
                self.params.n
            )));
        }
        match self.params.kind {
            SchemeKind::Shares => {
                if let Some(i) = request.answered.iter().position(|a| !a) {
                    return Err(SchemeError::Unrecoverable(format!(
                        "{} did not answer; `shares` needs every aggregator",
                        aggregator_name(i)
                    )));
                }
                self.finish_shares(&request, replies)
            }
            _ => self.finish_threshold(&request, replies),
        }
    }
}

impl MultiServer {
    fn finish_shares(
        &self,
        request: &FinishRequest,
        replies: Vec<Option<FinishReply>>,
    ) -> Result<AggregateSum, SchemeError> {
        let mut got = Vec::with_capacity(replies.len());
        for (i, r) in replies.into_iter().enumerate() {
            match r {
                Some(r) => got.push(r),
                None => {
                    return Err(SchemeError::Unrecoverable(format!(
                        "{} did not answer; `shares` needs every aggregator",
                        aggregator_name(i)
                    )));
                }
            }
        }
        let first = &got[0];
        if let Some(i) = got
            .iter()
            .position(|r| r.accepted != first.accepted || r.rejected != first.rejected)
        {
            return Err(SchemeError::BadExternal(format!(
                "{} and {} disagree on which owners are in the sum",
                aggregator_name(0),
                aggregator_name(i)
            )));
        }
        let k = first.accepted.len();
        if k < self.params.scheme.min_owners {
            return Err(SchemeError::TooFewContributions {
                got: k,
                min: self.params.scheme.min_owners,
            });
        }
        let vdaf = self.params.vdaf()?;
        let shares = got
            .iter()
            .enumerate()
            .map(|(i, r)| {
                <Prio3SumVec as Vdaf>::AggregateShare::get_decoded_with_param(
                    &(&vdaf, &()),
                    &r.aggregate,
                )
                .map_err(|e| {
                    SchemeError::BadExternal(format!(
                        "{}: aggregate share: {e}",
                        aggregator_name(i)
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let total = vdaf
            .unshard(&(), shares, k)
            .map_err(|e| SchemeError::BadExternal(format!("prio: {e}")))?;
        let offset = i128::from(self.params.offset()) * k as i128;
        let sums = total.into_iter().map(|v| v as i128 - offset).collect();
        Ok(AggregateSum {
            sums,
            contributors: first.accepted.clone(),
            rejected: first.rejected.clone(),
            faulty: request.split_reports(),
        })
    }

    fn finish_threshold(
        &self,
        request: &FinishRequest,
        replies: Vec<Option<FinishReply>>,
    ) -> Result<AggregateSum, SchemeError> {
        let (accepted, rejected) = request.decide_threshold();
        let mut faulty = request.split_reports();
        let k = accepted.len();
        if k < self.params.scheme.min_owners {
            return Err(SchemeError::TooFewContributions {
                got: k,
                min: self.params.scheme.min_owners,
            });
        }
        let len = self.params.scheme.len;
        let mut points = Vec::new();
        for (i, r) in replies.into_iter().enumerate() {
            let Some(r) = r else {
                faulty.push(format!(
                    "{}: did not answer (crashed, unreachable or refused)",
                    aggregator_name(i)
                ));
                continue;
            };
            if r.accepted != accepted {
                faulty.push(format!(
                    "{}: summed another set of owners than the round's",
                    aggregator_name(i)
                ));
                continue;
            }
            match parse_u64s(&r.aggregate, len) {
                Some(v) => points.push((i, v)),
                None => faulty.push(format!(
                    "{}: a partial sum that is not {len} field elements",
                    aggregator_name(i)
                )),
            }
        }
        let decoded = threshold::reconstruct(&points, self.params.t, &mut rand::rngs::OsRng)
            .map_err(|e| SchemeError::Unrecoverable(e.to_string()))?;
        faulty.extend(decoded.liars.iter().map(|&i| {
            format!(
                "{}: its partial sum is off the decoded polynomial (a wrong answer)",
                aggregator_name(i)
            )
        }));
        Ok(AggregateSum {
            sums: decoded.sums,
            contributors: accepted,
            rejected,
            faulty,
        })
    }
}

fn parse_u64s(bytes: &[u8], len: usize) -> Option<Vec<u64>> {
    if bytes.len() != 8 * len {
        return None;
    }
    let v: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
        .collect();
    v.iter().all(|&x| x < crate::shamir::P).then_some(v)
}

// ---------------------------------------------------------------------------------------------
// messages between the coordinator and the aggregators

/// One aggregator's answer for one owner in step 2: its verifier share (empty under
/// `threshold`), or why it could not open the owner's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The owner.
    pub owner: String,
    /// The verifier share, or the reason.
    pub share: Result<Vec<u8>, Reject>,
}

/// Step 3's request, the same for every aggregator: who answered step 2 and, per owner, what
/// each aggregator answered (`None`: no share, or no answer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FinishRequest {
    /// The round.
    pub round: u32,
    /// Which aggregators answered step 2, by index.
    pub answered: Vec<bool>,
    /// Per owner, per aggregator index.
    pub table: BTreeMap<String, Vec<Option<Vec<u8>>>>,
    /// Per owner whose share some aggregator could not open, the first reason given.
    pub reasons: BTreeMap<String, Reject>,
}

impl FinishRequest {
    /// Assembles the request from step 2's answers by aggregator index (`None`: the
    /// aggregator did not answer). Owners come from the relayed contributions.
    pub fn assemble(
        round: u32,
        owners: impl IntoIterator<Item = String>,
        answers: &[Option<Vec<Prepared>>],
    ) -> Self {
        let n = answers.len();
        let mut table: BTreeMap<String, Vec<Option<Vec<u8>>>> =
            owners.into_iter().map(|o| (o, vec![None; n])).collect();
        let mut reasons = BTreeMap::new();
        for (i, a) in answers.iter().enumerate() {
            for p in a.iter().flatten() {
                let Some(row) = table.get_mut(&p.owner) else {
                    continue;
                };
                match &p.share {
                    Ok(share) => row[i] = Some(share.clone()),
                    Err(reason) => {
                        reasons.entry(p.owner.clone()).or_insert(*reason);
                    }
                }
            }
        }
        Self {
            round,
            answered: answers.iter().map(Option::is_some).collect(),
            table,
            reasons,
        }
    }

    /// Why `owner` is not in the sum when a share is missing.
    fn reason(&self, owner: &str) -> Reject {
        self.reasons
            .get(owner)
            .copied()
            .unwrap_or(Reject::Malformed)
    }

    /// Aggregators that could not open a share that other aggregators opened: either the owner
    /// sent them a bad share or they report falsely; the owner is refused either way, and the
    /// report names both.
    pub fn split_reports(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (owner, row) in &self.table {
            let answered = || row.iter().zip(&self.answered).filter(|(_, a)| **a);
            let opened = answered().filter(|(share, _)| share.is_some()).count();
            if opened == 0 {
                continue;
            }
            for (i, _) in row
                .iter()
                .zip(&self.answered)
                .enumerate()
                .filter(|(_, (share, answered))| **answered && share.is_none())
            {
                out.push(format!(
                    "{}: could not open the share of `{owner}` that {opened} other aggregators opened (`{owner}` is refused: it sent a bad share, or this aggregator reports falsely)",
                    aggregator_name(i)
                ));
            }
        }
        out
    }

    /// `threshold`'s rule: an owner is in the sum when every aggregator that answered opened
    /// its share; the others are rejected as malformed.
    pub fn decide_threshold(&self) -> (Vec<String>, Vec<(String, Reject)>) {
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for (owner, row) in &self.table {
            let complete = row
                .iter()
                .zip(&self.answered)
                .all(|(share, &answered)| !answered || share.is_some());
            if complete {
                accepted.push(owner.clone());
            } else {
                rejected.push((owner.clone(), self.reason(owner)));
            }
        }
        (accepted, rejected)
    }
}

/// Step 3's answer: the owners in the partial sum, those refused and why, and the partial sum
/// (a Prio3 aggregate share under `shares`, field elements under `threshold`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FinishReply {
    /// Owners in the sum.
    pub accepted: Vec<String>,
    /// Owners refused, with the reason.
    pub rejected: Vec<(String, Reject)>,
    /// The partial sum.
    pub aggregate: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// aggregator

/// What an aggregator opened for one owner.
enum Opened {
    Threshold(Vec<u64>),
    Shares(Box<VerifyState>),
}

/// One aggregator's state for a job (sans-I/O): its key, its copy of the job, and the rounds
/// in progress or finished.
pub struct Aggregator {
    index: usize,
    key: AggregatorKey,
    params: MultiParams,
    verify_key: Option<[u8; 32]>,
    owners: BTreeSet<String>,
    vdaf: Option<Prio3SumVec>,
    open: BTreeMap<u32, BTreeMap<String, Opened>>,
    finished: BTreeSet<u32>,
    models: BTreeSet<[u8; 32]>,
    round_models: BTreeMap<u32, [u8; 32]>,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aggregator({})", aggregator_name(self.index))
    }
}

impl Aggregator {
    /// Aggregator `index` (0-based) of a job. `verify_key` is the Prio3 verify key that all
    /// `shares` aggregators share and no owner knows; `threshold` needs none.
    pub fn new(
        index: usize,
        key: AggregatorKey,
        params: MultiParams,
        verify_key: Option<[u8; 32]>,
        owners: BTreeSet<String>,
    ) -> Result<Self, SchemeError> {
        if index >= params.n {
            return Err(SchemeError::Misuse(format!(
                "{} in a job with {} aggregators",
                aggregator_name(index),
                params.n
            )));
        }
        let vdaf = match params.kind {
            SchemeKind::Shares => {
                if verify_key.is_none() {
                    return Err(SchemeError::Misuse(
                        "`shares` aggregators need the shared verify key".into(),
                    ));
                }
                Some(params.vdaf()?)
            }
            _ => None,
        };
        Ok(Self {
            index,
            key,
            params,
            verify_key,
            owners,
            vdaf,
            open: BTreeMap::new(),
            finished: BTreeSet::new(),
            models: BTreeSet::new(),
            round_models: BTreeMap::new(),
        })
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        self.key.public_hex()
    }

    /// Step 2: checks the relayed contributions (each with its owner's certified public key)
    /// and opens this aggregator's share of each. A round is prepared once.
    pub fn prepare(
        &mut self,
        round: u32,
        contributions: Vec<(Contribution, Vec<u8>)>,
    ) -> Result<Vec<Prepared>, UnsealError> {
        if self.finished.contains(&round) || self.open.contains_key(&round) {
            return Err(UnsealError::AlreadyUnsealed(round));
        }
        let (model, checked) =
            check_signed(round, contributions, &self.owners, &self.params.job_digest)?;
        // A global model is aggregated in one round only, finished or still open: otherwise a
        // coordinator could have two subsets of the same updates summed and subtract them.
        if let Some(m) = model
            && (self.models.contains(&m) || self.round_models.values().any(|o| *o == m))
        {
            return Err(UnsealError::AlreadyUnsealed(round));
        }
        if checked.len() < self.params.scheme.min_owners {
            return Err(UnsealError::TooFew {
                got: checked.len(),
                min: self.params.scheme.min_owners,
            });
        }
        let mut opened = BTreeMap::new();
        let mut out = Vec::with_capacity(checked.len());
        for (owner, c) in checked {
            let share = match self.open_one(&owner, &c.get().payload) {
                Ok((o, share)) => {
                    opened.insert(owner.clone(), o);
                    Ok(share)
                }
                Err(reason) => Err(reason),
            };
            out.push(Prepared { owner, share });
        }
        self.open.insert(round, opened);
        self.round_models.insert(round, model.unwrap_or_default());
        Ok(out)
    }

    fn open_one(&self, owner: &str, payload: &[u8]) -> Result<(Opened, Vec<u8>), Reject> {
        let parts = split_parts(payload, self.params.n).map_err(|r| r.reason)?;
        let (enc, ct) = parts[self.index];
        let enc =
            <Kem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| Reject::Malformed)?;
        let pt = hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.key.secret,
            &enc,
            &self.params.info(self.index),
            ct,
            owner.as_bytes(),
        )
        .map_err(|_| Reject::Malformed)?;
        match (&self.vdaf, self.verify_key) {
            (Some(vdaf), Some(vk)) => {
                let (nonce, rest) = pt
                    .split_first_chunk::<NONCE_LEN>()
                    .ok_or(Reject::Malformed)?;
                let (plen, rest) = rest.split_first_chunk::<4>().ok_or(Reject::Malformed)?;
                let plen = u32::from_be_bytes(*plen) as usize;
                if plen > rest.len() {
                    return Err(Reject::Malformed);
                }
                let (public, input) = rest.split_at(plen);
                let public =
                    <Prio3SumVec as Vdaf>::PublicShare::get_decoded_with_param(vdaf, public)
                        .map_err(|_| Reject::Malformed)?;
                let input = <Prio3SumVec as Vdaf>::InputShare::get_decoded_with_param(
                    &(vdaf, self.index),
                    input,
                )
                .map_err(|_| Reject::Malformed)?;
                let (state, share) = vdaf
                    .verify_init(
                        &vk,
                        &self.params.prio_ctx(),
                        self.index,
                        &(),
                        nonce,
                        &public,
                        &input,
                    )
                    .map_err(|_| Reject::InvalidProof)?;
                let share = share.get_encoded().map_err(|_| Reject::Malformed)?;
                Ok((Opened::Shares(Box::new(state)), share))
            }
            _ => {
                let v = parse_u64s(&pt, self.params.scheme.len).ok_or(Reject::Malformed)?;
                Ok((Opened::Threshold(v), Vec::new()))
            }
        }
    }

    /// Step 3: decides who is in the sum by the scheme's rule, checks there are at least
    /// `min_owners` of them, and returns this aggregator's partial sum. A round is finished
    /// once; its global model is never aggregated again.
    pub fn finish(&mut self, request: &FinishRequest) -> Result<FinishReply, UnsealError> {
        let round = request.round;
        if self.finished.contains(&round) {
            return Err(UnsealError::AlreadyUnsealed(round));
        }
        let opened = self
            .open
            .get(&round)
            .ok_or_else(|| UnsealError::Internal(format!("round {round} was not prepared here")))?;
        if request.answered.len() != self.params.n || !request.answered[self.index] {
            return Err(UnsealError::Internal(
                "the request does not list this aggregator's own answer".into(),
            ));
        }
        let (accepted, rejected, aggregate) = match &self.vdaf {
            Some(vdaf) => self.finish_shares(vdaf, request, opened)?,
            None => {
                let (accepted, rejected) = request.decide_threshold();
                let mut parts = Vec::with_capacity(accepted.len());
                for o in &accepted {
                    match opened.get(o) {
                        Some(Opened::Threshold(v)) => parts.push(v.as_slice()),
                        _ => {
                            return Err(UnsealError::Internal(format!(
                                "the request puts `{o}` in the sum, but its share did not open here"
                            )));
                        }
                    }
                }
                let sum = threshold::aggregate(parts)
                    .map_err(|e| UnsealError::Internal(e.to_string()))?;
                (
                    accepted,
                    rejected,
                    sum.into_iter().flat_map(u64::to_be_bytes).collect(),
                )
            }
        };
        if accepted.len() < self.params.scheme.min_owners {
            return Err(UnsealError::TooFew {
                got: accepted.len(),
                min: self.params.scheme.min_owners,
            });
        }
        self.open.remove(&round);
        self.finished.insert(round);
        if let Some(m) = self.round_models.remove(&round) {
            self.models.insert(m);
        }
        Ok(FinishReply {
            accepted,
            rejected,
            aggregate,
        })
    }

    #[allow(clippy::type_complexity)]
    fn finish_shares(
        &self,
        vdaf: &Prio3SumVec,
        request: &FinishRequest,
        opened: &BTreeMap<String, Opened>,
    ) -> Result<(Vec<String>, Vec<(String, Reject)>, Vec<u8>), UnsealError> {
        let ctx = self.params.prio_ctx();
        let mut agg = vdaf.aggregate_init(&());
        let mut accepted = Vec::new();
        let mut rejected = Vec::new();
        for (owner, row) in &request.table {
            let Some(shares) = row.iter().cloned().collect::<Option<Vec<Vec<u8>>>>() else {
                rejected.push((owner.clone(), request.reason(owner)));
                continue;
            };
            let Some(Opened::Shares(state)) = opened.get(owner) else {
                rejected.push((owner.clone(), Reject::Malformed));
                continue;
            };
            let verdict = (|| {
                let decoded = shares
                    .iter()
                    .map(|b| VerifierShare::get_decoded_with_param(state, b))
                    .collect::<Result<Vec<_>, _>>()
                    .ok()?;
                let message = vdaf.verifier_shares_to_message(&ctx, &(), decoded).ok()?;
                match vdaf.verify_next(&ctx, (**state).clone(), message).ok()? {
                    VerifyTransition::Finish(out) => Some(out),
                    VerifyTransition::Continue(..) => None,
                }
            })();
            match verdict {
                Some(out) => {
                    agg.accumulate(&out)
                        .map_err(|e| UnsealError::Internal(e.to_string()))?;
                    accepted.push(owner.clone());
                }
                None => rejected.push((owner.clone(), Reject::InvalidProof)),
            }
        }
        let bytes = agg
            .get_encoded()
            .map_err(|e| UnsealError::Internal(e.to_string()))?;
        Ok((accepted, rejected, bytes))
    }
}

#[cfg(test)]
mod tests;
