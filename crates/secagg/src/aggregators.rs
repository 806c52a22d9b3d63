//! The schemes that several aggregators finish: `shares` and `threshold` (sans-I/O).
//!
//! # Flow of a round
//! 1. Each owner splits its encoded update into one share per aggregator and encrypts each
//!    share to that aggregator's key with HPKE (RFC 9180, base mode,
//!    DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, from the `hpke` crate). The
//!    `info` string binds the job, the scheme and the aggregator's index; the associated data
//!    is the owner's name. The signed contribution carries all the ciphertexts to the
//!    coordinator, which can read none of them ([`MultiClient`], [`MultiServer`]). Each
//!    aggregator signs its HPKE public key with its certified Ed25519 key
//!    ([`Aggregator::key_signature`]); owners check that signature, the certificate's name,
//!    role and revocation before they encrypt to the key ([`verify_key_signature`]).
//! 2. **Prepare.** The coordinator relays the round's signed contributions, with the owners'
//!    certificates, to every aggregator. Each aggregator checks them itself (the key holder's
//!    KEY-001…003 and KEY-007, [`crate::keyholder::check_signed`]), opens its own shares and
//!    returns one *verifier share* per owner, or the reason it could not, **signed** over the
//!    digest of the contributions it was given ([`view_digest`], [`Aggregator::prepare`]).
//! 3. **Commit.** The coordinator sends every aggregator the table of all signed answers
//!    ([`FinishRequest`]). Each aggregator checks every answer's signature against the
//!    contributions *it* was given (KEY-008), decides by the same deterministic rule which
//!    owners are in the sum, checks that they are at least `min_owners` (KEY-004) and that this
//!    round and its model were not committed before (KEY-005), computes its partial sum, keeps
//!    it, and returns a signature over the set it will sum ([`Aggregator::commit`]).
//! 4. **Release.** The coordinator sends every aggregator the commit signatures. An
//!    aggregator returns its partial sum only when at least the quorum
//!    [`MultiParams::quorum`] of aggregators (itself and others whose signatures it checks)
//!    committed to the same set
//!    ([`Aggregator::release`], KEY-008).
//! 5. The coordinator reconstructs the sum ([`MultiServer::finish`]).
//!
//! Why the quorum: an honest aggregator commits once per round, so two different sets can
//! both reach `q` commitments only if at least `2q − n` aggregators committed to both, i.e.
//! lied. With `q > (n + t − 1)/2` that takes `t` or more colluding aggregators, who could
//! reconstruct the owners' shares anyway. Without it, a coordinator colluding with
//! `c ≥ 2t − n` aggregators could have two groups sum different subsets of one round (for
//! example by telling only one group that an aggregator failed to open an owner's share) and
//! subtract the two sums (a *split view*). Under `shares` every aggregator is needed, so
//! `q = n`. The price is liveness: a round under `threshold` finishes only while at most
//! `n − q` aggregators are down (one of seven at the default 4-of-7).
//!
//! Why the signed answers: a verifier share decides whether an owner's proof verifies. Were
//! they relayed unsigned, a coordinator could replace one to let a colluding owner's invalid
//! update pass. Signed, a replaced answer makes every honest aggregator refuse to commit.
//!
//! A restarted aggregator has a fresh HPKE key, so it cannot open any share sent to its
//! predecessor; its "round already finished" memory (KEY-005) can therefore live in memory.
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
//! # Deciding who is in the sum
//! An owner is in the sum when every aggregator that answered step 2 opened its share
//! (`threshold`), or when all `n` aggregators opened their shares and the proof verifies
//! (`shares`). Under `threshold` an aggregator that answers step 2 falsely can thereby
//! exclude an owner; that costs the owner its round, never the sum's correctness or anyone's
//! privacy, and the coordinator logs which aggregator reported what.

use std::collections::{BTreeMap, BTreeSet};

use confide_core::SchemeKind;
use confide_crypto::{SigningKey, sha256, sign};
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
            SchemeKind::Threshold if t < 2 || t >= n || 2 * t <= n || n > 255 => {
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

    /// How many aggregators must commit to the same set of owners before any releases its
    /// partial sum: `n` under `shares`, the least `q > (n + t − 1)/2` under `threshold` (see
    /// the module documentation).
    pub fn quorum(&self) -> usize {
        match self.kind {
            SchemeKind::Threshold => (self.n + self.t - 1) / 2 + 1,
            _ => self.n,
        }
    }

    /// The prefix of every statement an aggregator signs in this job.
    fn statement(&self, what: &str, round: u32, index: usize) -> Vec<u8> {
        let mut m = format!("confide/aggregators/{what}/v1 {} ", self.kind.as_str()).into_bytes();
        m.extend(self.job_digest);
        m.extend(round.to_be_bytes());
        m.extend((index as u32).to_be_bytes());
        m
    }

    /// What aggregator `index` signs in step 2: the contributions it was given and its answer
    /// per owner (the verifier share, or that it could not open the share).
    fn prepare_statement<'a>(
        &self,
        round: u32,
        index: usize,
        view: &[u8; 32],
        column: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Vec<u8> {
        let mut answers = Vec::new();
        for (owner, share) in column {
            answers.extend((owner.len() as u32).to_be_bytes());
            answers.extend(owner.as_bytes());
            match share {
                Some(share) => {
                    answers.push(1);
                    answers.extend((share.len() as u64).to_be_bytes());
                    answers.extend(share);
                }
                None => answers.push(0),
            }
        }
        let mut m = self.statement("prepare", round, index);
        m.extend(view);
        m.extend(sha256(&answers));
        m
    }

    /// What aggregator `index` signs in step 3: the set of owners it will sum.
    fn commit_statement(&self, round: u32, index: usize, content: &[u8; 32]) -> Vec<u8> {
        let mut m = self.statement("commit", round, index);
        m.extend(content);
        m
    }

    /// What aggregator `index` signs about its HPKE public key.
    fn key_statement(&self, index: usize, public_key: &[u8]) -> Vec<u8> {
        let mut m = self.statement("hpke-key", 0, index);
        m.extend(public_key);
        m
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
        Self::from_seed(&Self::fresh_seed())
    }

    /// A fresh 32-byte seed from the operating system's generator (kept sealed by an
    /// aggregator daemon, which rebuilds the key with [`AggregatorKey::from_seed`]).
    pub fn fresh_seed() -> [u8; 32] {
        let mut ikm = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut ikm);
        ikm
    }

    /// The key pair derived from `seed` (HPKE `DeriveKeyPair`, RFC 9180 §7.1.3).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let (secret, public) = Kem::derive_keypair(seed);
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

/// Signature checks by the owners: `signature` is aggregator `index`'s Ed25519 signature,
/// under its certified key `signer`, over its HPKE `public_key` for this job.
pub fn verify_key_signature(
    params: &MultiParams,
    index: usize,
    public_key: &[u8],
    signer: &[u8],
    signature: &[u8],
) -> bool {
    sign::verify(signer, &params.key_statement(index, public_key), signature).is_ok()
}

/// The digest of each contribution: its owner and signature. A verified Ed25519 signature
/// determines the message it signs (which covers the job, round, global model, owner and the
/// payload's SHA-256), so equal digests mean equal contributions, without hashing the payloads
/// again. (An owner that signs one message twice with different nonces only makes views
/// differ, which makes aggregators refuse, never agree on different contents.)
fn contribution_digests<'a>(
    contributions: impl IntoIterator<Item = &'a Contribution>,
) -> BTreeMap<String, [u8; 32]> {
    contributions
        .into_iter()
        .map(|c| {
            let mut m = b"confide/aggregators/contribution".to_vec();
            m.extend((c.owner.len() as u32).to_be_bytes());
            m.extend(c.owner.as_bytes());
            m.extend(&c.signature);
            (c.owner.clone(), sha256(&m))
        })
        .collect()
}

/// SHA-256 over a label and the named owners with their contributions' digests, in name order.
fn owners_digest<'a>(
    label: &str,
    digests: &BTreeMap<String, [u8; 32]>,
    owners: impl IntoIterator<Item = &'a String>,
) -> [u8; 32] {
    let mut m = label.as_bytes().to_vec();
    for owner in owners {
        m.extend((owner.len() as u32).to_be_bytes());
        m.extend(owner.as_bytes());
        m.extend(digests.get(owner).copied().unwrap_or_default());
    }
    sha256(&m)
}

/// The digest of a round's contributions as one party sees them: every owner with the digest
/// of what it signed. Aggregators sign it in step 2, so each can tell whether the others were
/// given the same contributions.
pub fn view_digest(contributions: &[Contribution]) -> [u8; 32] {
    let digests = contribution_digests(contributions);
    owners_digest("confide/aggregators/view", &digests, digests.keys())
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
        let released = points.len();
        let quorum = self.params.quorum();
        let decoded = threshold::reconstruct(&points, self.params.t, &mut rand::rngs::OsRng)
            .map_err(|e| {
                SchemeError::Unrecoverable(if released < quorum {
                    format!(
                        "{e}: only {released} aggregators released a partial sum; each releases only when {quorum} of {} commit to the same set of owners (the release quorum against split views), so at most {} may be down",
                        self.params.n,
                        self.params.n - quorum
                    )
                } else {
                    e.to_string()
                })
            })?;
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

/// One aggregator's whole answer to step 2: per owner, and its signature over them and the
/// contributions it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareAnswer {
    /// Per owner, in name order.
    pub prepared: Vec<Prepared>,
    /// Ed25519 signature of the aggregator's certified key.
    pub signature: Vec<u8>,
}

impl PrepareAnswer {
    /// Whether aggregator `index`, whose certified key is `signer`, signed this answer over
    /// contributions with digest `view`, answering for exactly the relayed `owners` in name
    /// order (the coordinator checks this before relaying it, so that an answer the other
    /// aggregators would refuse never reaches them).
    pub fn verify(
        &self,
        params: &MultiParams,
        (round, index): (u32, usize),
        owners: &BTreeSet<String>,
        view: &[u8; 32],
        signer: &[u8],
    ) -> bool {
        if !self.prepared.iter().map(|p| &p.owner).eq(owners.iter()) {
            return false;
        }
        let column = self
            .prepared
            .iter()
            .map(|p| (p.owner.as_str(), p.share.as_ref().ok().map(Vec::as_slice)));
        let m = params.prepare_statement(round, index, view, column);
        sign::verify(signer, &m, &self.signature).is_ok()
    }
}

/// Step 3's request, the same for every aggregator: who answered step 2 and, per owner, what
/// each aggregator answered (`None`: no share, or no answer), with each answer's signature.
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
    /// Per aggregator index, its step-2 signature (empty when it did not answer).
    pub signatures: Vec<Vec<u8>>,
}

impl FinishRequest {
    /// Assembles the request from step 2's answers by aggregator index (`None`: the
    /// aggregator did not answer, or its answer's signature did not verify). Owners come from
    /// the relayed contributions.
    pub fn assemble(
        round: u32,
        owners: impl IntoIterator<Item = String>,
        answers: &[Option<PrepareAnswer>],
    ) -> Self {
        let n = answers.len();
        let mut table: BTreeMap<String, Vec<Option<Vec<u8>>>> =
            owners.into_iter().map(|o| (o, vec![None; n])).collect();
        let mut reasons = BTreeMap::new();
        for (i, a) in answers.iter().enumerate() {
            for p in a.iter().flat_map(|a| &a.prepared) {
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
            signatures: answers
                .iter()
                .map(|a| a.as_ref().map(|a| a.signature.clone()).unwrap_or_default())
                .collect(),
        }
    }

    /// The answers of aggregator `index` as it signed them.
    fn column(&self, index: usize) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.table
            .iter()
            .map(move |(owner, row)| (owner.as_str(), row[index].as_deref()))
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

/// A prepared round: what opened, and the contributions it was given.
struct OpenRound {
    opened: BTreeMap<String, Opened>,
    digests: BTreeMap<String, [u8; 32]>,
    view: [u8; 32],
}

/// A committed round: the digest of the set of owners summed, and the reply kept until a
/// quorum commits to the same set.
struct Committed {
    content: [u8; 32],
    reply: FinishReply,
}

/// SHA-256 over a step-3 request (its round, which aggregators answered, every cell of the
/// table, the reasons and the signatures), to recognise the same request sent again.
fn request_digest(r: &FinishRequest) -> [u8; 32] {
    fn put(b: &mut Vec<u8>, x: &[u8]) {
        b.extend((x.len() as u64).to_be_bytes());
        b.extend_from_slice(x);
    }
    let mut b = b"confide/aggregators/finish-request".to_vec();
    b.extend(r.round.to_be_bytes());
    b.extend(r.answered.iter().map(|a| u8::from(*a)));
    for (owner, row) in &r.table {
        put(&mut b, owner.as_bytes());
        for cell in row {
            b.push(u8::from(cell.is_some()));
            put(&mut b, cell.as_deref().unwrap_or_default());
        }
    }
    for (owner, reason) in &r.reasons {
        put(&mut b, owner.as_bytes());
        b.extend((*reason as u32).to_be_bytes());
    }
    for sig in &r.signatures {
        put(&mut b, sig);
    }
    sha256(&b)
}

/// One aggregator's state for a job (sans-I/O): its keys, its copy of the job, and the rounds
/// in progress or finished.
pub struct Aggregator {
    index: usize,
    key: AggregatorKey,
    signer: SigningKey,
    params: MultiParams,
    verify_key: Option<[u8; 32]>,
    owners: BTreeSet<String>,
    vdaf: Option<Prio3SumVec>,
    open: BTreeMap<u32, OpenRound>,
    committed: BTreeMap<u32, Committed>,
    finished: BTreeSet<u32>,
    models: BTreeSet<[u8; 32]>,
    round_models: BTreeMap<u32, [u8; 32]>,
    records: BTreeMap<u32, RoundRecord>,
    /// Per committed round, the request's digest and the commit signature: the same request
    /// again (its answer was lost) gets the same answer.
    commits: BTreeMap<u32, ([u8; 32], Vec<u8>)>,
    /// Per released round, the partial sum released: a release asked again gets it again.
    released: BTreeMap<u32, FinishReply>,
}

/// What an aggregator answered in a round (RES-009): kept for the job's life, and by a daemon
/// in its store before each answer leaves, so that a repeated request is answered only if it
/// is the identical one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundRecord {
    /// The global model the round's contributions were trained from (zeroes: none named).
    pub model: [u8; 32],
    /// The digest of the contributions it was given (its view).
    pub view: [u8; 32],
    /// The digest of the set of owners it committed to sum, once it committed.
    pub content: Option<[u8; 32]>,
}

impl RoundRecord {
    /// 64 bytes (model, view), then 32 more (content) once committed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(&self.model);
        out.extend_from_slice(&self.view);
        if let Some(c) = &self.content {
            out.extend_from_slice(c);
        }
        out
    }

    /// The inverse of [`RoundRecord::to_bytes`]; `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let part = |i: usize| <[u8; 32]>::try_from(bytes.get(i * 32..(i + 1) * 32)?).ok();
        match bytes.len() {
            64 => Some(Self {
                model: part(0)?,
                view: part(1)?,
                content: None,
            }),
            96 => Some(Self {
                model: part(0)?,
                view: part(1)?,
                content: Some(part(2)?),
            }),
            _ => None,
        }
    }
}

/// Per aggregator index, its certified Ed25519 public key when the caller checked its
/// certificate (name `aggregator-{i+1}`, role aggregator, the federation's CA, not revoked).
pub type AggregatorKeys = [Option<[u8; 32]>];

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Aggregator({})", aggregator_name(self.index))
    }
}

impl Aggregator {
    /// Aggregator `index` (0-based) of a job. `signer` is the key its certificate certifies.
    /// `verify_key` is the Prio3 verify key that all `shares` aggregators share and no owner
    /// knows; `threshold` needs none.
    pub fn new(
        index: usize,
        key: AggregatorKey,
        signer: SigningKey,
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
            signer,
            params,
            verify_key,
            owners,
            vdaf,
            open: BTreeMap::new(),
            committed: BTreeMap::new(),
            finished: BTreeSet::new(),
            models: BTreeSet::new(),
            round_models: BTreeMap::new(),
            records: BTreeMap::new(),
            commits: BTreeMap::new(),
            released: BTreeMap::new(),
        })
    }

    /// What this aggregator answered, by round.
    pub fn records(&self) -> &BTreeMap<u32, RoundRecord> {
        &self.records
    }

    /// Takes back what an aggregator answered before it restarted (its store's records):
    /// those rounds are answered again only to the identical request, and their models are
    /// never aggregated in another round.
    pub fn restore(&mut self, records: BTreeMap<u32, RoundRecord>) {
        self.models.extend(records.values().map(|r| r.model));
        self.records = records;
    }

    /// The HPKE public key, hex.
    pub fn public_hex(&self) -> String {
        self.key.public_hex()
    }

    /// The signature of this aggregator's certified key over its HPKE public key.
    pub fn key_signature(&self) -> Vec<u8> {
        let public = self.key.public.to_bytes();
        self.signer
            .sign(&self.params.key_statement(self.index, &public))
            .to_vec()
    }

    /// The Ed25519 public key this aggregator signs with.
    pub fn signer_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    /// Step 2: checks the relayed contributions (each with its owner's certified public key),
    /// opens this aggregator's share of each, and signs its answers with the digest of the
    /// contributions. A round is prepared once.
    pub fn prepare(
        &mut self,
        round: u32,
        contributions: Vec<(Contribution, Vec<u8>)>,
    ) -> Result<PrepareAnswer, UnsealError> {
        let (model, checked) =
            check_signed(round, contributions, &self.owners, &self.params.job_digest)?;
        let digests = contribution_digests(checked.values().map(|c| c.get()));
        let view = owners_digest("confide/aggregators/view", &digests, digests.keys());
        match self.records.get(&round) {
            // RES-009: the identical request again (its coordinator restarted, or this
            // aggregator did): answered again from the same ciphertexts, which reveals nothing
            // new. Its commit must then name the same set of owners as before.
            Some(r) if r.view == view && r.model == model.unwrap_or_default() => {
                self.open.remove(&round);
                self.committed.remove(&round);
                self.finished.remove(&round);
                self.commits.remove(&round);
                self.released.remove(&round);
            }
            Some(_) => return Err(UnsealError::AlreadyUnsealed(round)),
            None => {
                // A global model is aggregated in one round only, finished or still open:
                // otherwise a coordinator could have two subsets of the same updates summed
                // and subtract them.
                if let Some(m) = model
                    && (self.models.contains(&m) || self.round_models.values().any(|o| *o == m))
                {
                    return Err(UnsealError::AlreadyUnsealed(round));
                }
            }
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
        let answer = PrepareAnswer {
            signature: Vec::new(),
            prepared: out,
        };
        let column: BTreeMap<&str, Option<&[u8]>> = answer
            .prepared
            .iter()
            .map(|p| (p.owner.as_str(), p.share.as_ref().ok().map(Vec::as_slice)))
            .collect();
        let statement = self
            .params
            .prepare_statement(round, self.index, &view, column);
        let signature = self.signer.sign(&statement).to_vec();
        self.open.insert(
            round,
            OpenRound {
                opened,
                digests,
                view,
            },
        );
        self.round_models.insert(round, model.unwrap_or_default());
        self.records.entry(round).or_insert(RoundRecord {
            model: model.unwrap_or_default(),
            view,
            content: None,
        });
        Ok(PrepareAnswer {
            signature,
            ..answer
        })
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

    /// Step 3: checks that every answer in the request is signed by its aggregator over the
    /// contributions this aggregator was given (KEY-008), decides who is in the sum by the
    /// scheme's rule, checks there are at least `min_owners` of them (KEY-004), computes and
    /// keeps this aggregator's partial sum, and returns its signature over the set of owners
    /// summed. `keys` are the certified keys of the other aggregators. A round is committed
    /// once, and its global model is never aggregated again (KEY-005).
    pub fn commit(
        &mut self,
        request: &FinishRequest,
        keys: &AggregatorKeys,
    ) -> Result<Vec<u8>, UnsealError> {
        let round = request.round;
        let digest = request_digest(request);
        if self.finished.contains(&round) || self.committed.contains_key(&round) {
            // The identical request again (the answer was lost): the same answer.
            return match self.commits.get(&round) {
                Some((d, signature)) if *d == digest => Ok(signature.clone()),
                _ => Err(UnsealError::AlreadyUnsealed(round)),
            };
        }
        let open = self
            .open
            .get(&round)
            .ok_or_else(|| UnsealError::Internal(format!("round {round} was not prepared here")))?;
        let n = self.params.n;
        if request.answered.len() != n
            || request.signatures.len() != n
            || request.table.values().any(|row| row.len() != n)
            || !request.answered[self.index]
        {
            return Err(UnsealError::Internal(
                "the request is malformed or does not list this aggregator's own answer".into(),
            ));
        }
        let inconsistent = |m: String| Err(UnsealError::Inconsistent(m));
        // Only signed answers count: a column of an aggregator that did not answer must be
        // empty, or the coordinator could slip in verifier shares nobody signed.
        if let Some(j) = (0..n)
            .find(|&j| !request.answered[j] && request.table.values().any(|row| row[j].is_some()))
        {
            return inconsistent(format!(
                "the request has answers for {}, which it lists as not answering",
                aggregator_name(j)
            ));
        }
        if self.vdaf.is_some()
            && let Some(j) = request.answered.iter().position(|a| !a)
        {
            return inconsistent(format!(
                "`shares` needs every aggregator's answer, and {} has none",
                aggregator_name(j)
            ));
        }
        if !request.table.keys().eq(open.digests.keys()) {
            return inconsistent(
                "the request lists other owners than the contributions given to this aggregator"
                    .into(),
            );
        }
        for j in (0..n).filter(|&j| request.answered[j]) {
            let key = if j == self.index {
                Some(self.signer_key())
            } else {
                keys.get(j).copied().flatten()
            };
            let Some(key) = key else {
                return inconsistent(format!("no certified key for {}", aggregator_name(j)));
            };
            let statement = self
                .params
                .prepare_statement(round, j, &open.view, request.column(j));
            if sign::verify(&key, &statement, &request.signatures[j]).is_err() {
                return inconsistent(format!(
                    "the answer of {} in the request is not what it signed over the contributions given here (altered, or the aggregators were given different contributions)",
                    aggregator_name(j)
                ));
            }
        }
        let (accepted, rejected, aggregate) = match &self.vdaf {
            Some(vdaf) => self.finish_shares(vdaf, request, &open.opened)?,
            None => {
                let (accepted, rejected) = request.decide_threshold();
                let mut parts = Vec::with_capacity(accepted.len());
                for o in &accepted {
                    match open.opened.get(o) {
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
        let content = owners_digest("confide/aggregators/commit", &open.digests, &accepted);
        // RES-009: a round answered again commits to the same set of owners, or not at all.
        match self.records.get_mut(&round) {
            Some(r) if r.content.is_some_and(|c| c != content) => {
                return inconsistent(
                    "this round was committed here before to another set of owners".into(),
                );
            }
            Some(r) => r.content = Some(content),
            None => return Err(UnsealError::Internal("an unrecorded round".into())),
        }
        let signature = self
            .signer
            .sign(&self.params.commit_statement(round, self.index, &content))
            .to_vec();
        self.commits.insert(round, (digest, signature.clone()));
        self.open.remove(&round);
        if let Some(m) = self.round_models.remove(&round) {
            self.models.insert(m);
        }
        self.committed.insert(
            round,
            Committed {
                content,
                reply: FinishReply {
                    accepted,
                    rejected,
                    aggregate,
                },
            },
        );
        Ok(signature)
    }

    /// Step 4: returns the partial sum committed in step 3 once at least
    /// [`MultiParams::quorum`] aggregators, this one included, signed a commitment to the same
    /// set of owners (KEY-008). `signatures` are the commit signatures by aggregator index
    /// (empty: none); `keys` the other aggregators' certified keys.
    pub fn release(
        &mut self,
        round: u32,
        signatures: &[Vec<u8>],
        keys: &AggregatorKeys,
    ) -> Result<FinishReply, UnsealError> {
        if self.finished.contains(&round) {
            // Released already (the answer was lost): the same partial sum, nothing new.
            return self
                .released
                .get(&round)
                .cloned()
                .ok_or(UnsealError::AlreadyUnsealed(round));
        }
        let committed = self.committed.get(&round).ok_or_else(|| {
            UnsealError::Internal(format!("round {round} was not committed here"))
        })?;
        // This aggregator's own commitment counts; each other index counts once, under the key
        // certified for that index.
        let agreeing = (0..self.params.n)
            .filter(|&j| {
                if j == self.index {
                    return true;
                }
                let statement = self.params.commit_statement(round, j, &committed.content);
                match (keys.get(j).copied().flatten(), signatures.get(j)) {
                    (Some(key), Some(sig)) => sign::verify(&key, &statement, sig).is_ok(),
                    _ => false,
                }
            })
            .count();
        let quorum = self.params.quorum();
        if agreeing < quorum {
            return Err(UnsealError::Inconsistent(format!(
                "only {agreeing} aggregators committed to the set of owners this one committed to; {quorum} are needed before a partial sum is released"
            )));
        }
        let committed = self
            .committed
            .remove(&round)
            .ok_or_else(|| UnsealError::Internal("lost the committed round".into()))?;
        self.finished.insert(round);
        self.released.insert(round, committed.reply.clone());
        Ok(committed.reply)
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
