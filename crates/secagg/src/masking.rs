//! `masking`: secure aggregation by pairwise masks, SecAgg+ (Bell, Bonawitz, Gascón, Lepoint,
//! Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020),
//! the sparse-graph version of SecAgg (Bonawitz et al., "Practical Secure Aggregation for
//! Privacy-Preserving Machine Learning", CCS 2017). One server; owners may drop out at every
//! stage; the server learns only the sum of the owners who sent a masked input.
//!
//! # The round
//! Owners are the job's authorised owners, sorted by name; owner `i` has Shamir x-coordinate
//! `i + 1`. A public seed (derived from the job digest and the round) permutes them onto a
//! ring, and each owner's **neighbours** are the `k` owners nearest to it on the ring (`k`
//! even; `k ≥ n − 1` is the complete graph of the original SecAgg). An owner's secrets are
//! shared among its *holders*: its neighbours and itself.
//!
//! 0. **Advertise keys.** Each owner sends two fresh X25519 public keys: `c` (to encrypt shares)
//!    and `s` (to agree on masks). The server closes the stage with `U1`, the owners that sent.
//! 1. **Share keys.** The server broadcasts `U1`'s keys, each with the signature its owner made
//!    over them (the stage-0 contribution's signature, which covers the job, the round, the
//!    global model and the keys). Each owner checks the signatures of the keys it uses (its
//!    neighbours') against the keys that the federation CA certifies for those owners
//!    ([`KeyCheck`]) before using them, as the
//!    actively secure version of SecAgg does (Bonawitz et al. 2017, §6), so a server cannot
//!    substitute its own keys to read shares or masks. Each owner then draws a self-mask seed `b`,
//!    Shamir-shares `b` and its mask secret key `s_sk` (threshold `t`) among its holders in
//!    `U1`, and sends each neighbour its share pair, encrypted (ChaCha20-Poly1305) under a key
//!    derived (HKDF-SHA256) from their `c` agreement. The server closes with `U2`.
//! 2. **Masked input.** The server broadcasts `U2` and the encrypted shares. Each owner in `U2`
//!    sends `y = x + PRG(b) + Σ_{v ∈ N(u) ∩ U2} ±PRG(s_uv)` (mod 2^64), where `s_uv` comes from
//!    the X25519 agreement of `s_sk_u` and `s_pk_v`, the sign is `+` when `u < v`, and the PRG
//!    is the ChaCha20 stream keyed by the seed. The server closes with `U3`.
//! 3. **Consistency check.** The server broadcasts `U3`, the owners that sent a masked input
//!    (at least `max(t, min_owners)` of them). Each owner in `U3` checks it and answers with
//!    the same list, which its signed contribution turns into its signature over `U3` (Bonawitz
//!    et al. 2017, §4, "ConsistencyCheck"). The server closes with `U4`.
//! 4. **Unmask.** The server broadcasts `U3` with the signatures of `U4`. Each owner in `U4`
//!    checks that at least `max(t, min_owners)` owners of `U3` signed exactly the `U3` it
//!    signed ([`KeyCheck`]), so every honest holder answers for the same survivors, and
//!    reveals, for every owner `v ∈ U2` whose shares it holds, its share of `b_v` if `v ∈ U3`
//!    and its share of `s_sk_v` otherwise — never both. With `t` shares per owner the server
//!    removes the self masks of `U3` and the pairwise masks that `U3` shared with the owners
//!    that dropped after sharing their keys; what remains is `Σ_{U3} x`.
//!
//! If fewer than `t` holders of some owner's secret answer, the round aborts with an error that
//! names the owner; so does any stage that ends with fewer than `max(t, min_owners)` owners.
//!
//! # Limits
//! Semi-honest owners: a malicious owner can send a wrong share and make the round abort (not
//! learn anything). Against a malicious server: the advertised keys are authenticated (stage
//! 1), every message is signed (the contribution's signature covers job, round, stage and
//! payload), owners refuse a `U3` smaller than `max(t, min_owners)` or not contained in `U2`,
//! and the signed consistency check (stages 3 and 4) stops a server from telling different
//! holders different `U3` sets to collect both kinds of shares of one owner. Bonawitz et al.
//! prove this design secure against an active server colluding with fewer than `t` owners; we
//! follow the design and test it, we have not proved our code.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use x25519_dalek::{PublicKey as XPublic, StaticSecret};

use crate::contribution::VerifiedContribution;
use crate::scheme::{
    AggregateSum, AggregationClient, AggregationServer, ExternalResult, Reject, Rejection,
    RoundContext, SchemeError, StageResult, admit_stage,
};
use crate::shamir;

/// The public parameters of one masking round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskingConfig {
    /// The job's authorised owners (sorted internally).
    pub owners: Vec<String>,
    /// Neighbours per owner (`k`); `k ≥ n − 1` means every other owner.
    pub neighbours: usize,
    /// Shares needed to reconstruct an owner's secrets (`t`).
    pub threshold: usize,
    /// Coordinates per update.
    pub len: usize,
    /// The round.
    pub round: u32,
    /// Public randomness for the neighbour graph (same for every party).
    pub graph_seed: [u8; 32],
    /// The job's minimum number of contributions.
    pub min_owners: usize,
}

const KEY: usize = 32;
const SECRET_ELEMENTS: usize = 5; // shamir::chunks(32)
const SHARE_PLAIN: usize = 2 * SECRET_ELEMENTS * 8;
const TAG: usize = 16;

impl MaskingConfig {
    fn n(&self) -> usize {
        self.owners.len()
    }

    /// Checks the parameters.
    ///
    /// # Errors
    /// Fewer than 2 owners, an odd sparse `k`, or a threshold outside `(holders/2, holders]`.
    pub fn validate(&self) -> Result<(), SchemeError> {
        let n = self.n();
        let bad = |m: String| Err(SchemeError::Misuse(m));
        if n < 2 {
            return bad("masking needs at least 2 owners".into());
        }
        let mut sorted = self.owners.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != n {
            return bad("owner names repeat".into());
        }
        let k = self.degree();
        if k < n - 1 && k % 2 == 1 {
            return bad(format!(
                "neighbours = {k}: a sparse neighbourhood must be even"
            ));
        }
        if k == 0 {
            return bad("neighbours must be at least 2".into());
        }
        let holders = k + 1;
        if self.threshold > holders || 2 * self.threshold <= holders {
            return bad(format!(
                "threshold {} must be more than half of an owner's {holders} share holders and at most {holders}",
                self.threshold
            ));
        }
        Ok(())
    }

    /// The effective neighbourhood size.
    pub fn degree(&self) -> usize {
        self.neighbours.min(self.n() - 1)
    }

    fn sorted(&self) -> Vec<String> {
        let mut s = self.owners.clone();
        s.sort();
        s
    }

    /// Each owner's neighbours (indices into the sorted owners).
    pub fn graph(&self) -> Vec<BTreeSet<usize>> {
        let n = self.n();
        let k = self.degree();
        if k >= n - 1 {
            return (0..n)
                .map(|i| (0..n).filter(|&j| j != i).collect())
                .collect();
        }
        // A public random ring: position[i] is owner i's place.
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = ChaCha20Rng::from_seed(self.graph_seed);
        for i in (1..n).rev() {
            let j = rng.gen_range(0..=i);
            order.swap(i, j);
        }
        let mut graph = vec![BTreeSet::new(); n];
        for (p, &i) in order.iter().enumerate() {
            for d in 1..=k / 2 {
                let j = order[(p + d) % n];
                graph[i].insert(j);
                graph[j].insert(i);
            }
        }
        graph
    }

    /// `t − 1` more shares than this are lost when an owner's holders drop: the probability
    /// that one owner's secret cannot be rebuilt when each holder independently drops with
    /// probability `rate` (a binomial tail; Bell et al. choose `k` and `t` to make it small).
    pub fn failure_probability(&self, rate: f64) -> f64 {
        let h = self.degree() + 1;
        let survive = 1.0 - rate;
        (0..self.threshold)
            .map(|i| binomial(h, i) * survive.powi(i as i32) * rate.powi((h - i) as i32))
            .sum()
    }
}

fn binomial(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

fn hkdf32(ikm: &[u8], info: &[&[u8]]) -> [u8; 32] {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"confide/secagg/v1").extract(ikm);
    let mut out = [0u8; 32];
    // 32 bytes from HKDF-SHA256 is always within its limit.
    if let Ok(okm) = prk.expand(info, hkdf::HKDF_SHA256) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn agree(secret: &StaticSecret, public: &[u8; 32]) -> Result<[u8; 32], SchemeError> {
    let shared = secret.diffie_hellman(&XPublic::from(*public));
    if !shared.was_contributory() {
        return Err(SchemeError::Crypto("a low-order X25519 public key".into()));
    }
    Ok(*shared.as_bytes())
}

/// Whether a public key is not of low order (its agreement with any secret is not all-zero).
fn contributory(public: &[u8; 32]) -> bool {
    StaticSecret::from([0x5a; 32])
        .diffie_hellman(&XPublic::from(*public))
        .was_contributory()
}

fn mask_seed(shared: &[u8; 32], round: u32, a: usize, b: usize) -> [u8; 32] {
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    hkdf32(
        shared,
        &[
            b"mask",
            &round.to_be_bytes(),
            &lo.to_be_bytes(),
            &hi.to_be_bytes(),
        ],
    )
}

fn share_key(shared: &[u8; 32], round: u32) -> Result<LessSafeKey, SchemeError> {
    let k = hkdf32(shared, &[b"share", &round.to_be_bytes()]);
    UnboundKey::new(&CHACHA20_POLY1305, &k)
        .map(LessSafeKey::new)
        .map_err(|_| SchemeError::Crypto("AEAD key".into()))
}

fn share_nonce_aad(round: u32, from: usize, to: usize) -> (Nonce, Vec<u8>) {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(from as u32).to_be_bytes());
    n[4..8].copy_from_slice(&(to as u32).to_be_bytes());
    let mut aad = b"confide/secagg/share/v1".to_vec();
    aad.extend_from_slice(&round.to_be_bytes());
    aad.extend_from_slice(&(from as u32).to_be_bytes());
    aad.extend_from_slice(&(to as u32).to_be_bytes());
    (Nonce::assume_unique_for_key(n), aad)
}

/// Adds `sign · PRG(seed)` to `acc` (mod 2^64).
fn apply_prg(acc: &mut [u64], seed: &[u8; 32], add: bool) {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    let mut buf = [0u64; 1024];
    for chunk in acc.chunks_mut(1024) {
        let b = &mut buf[..chunk.len()];
        rng.fill(b);
        if add {
            for (a, m) in chunk.iter_mut().zip(b.iter()) {
                *a = a.wrapping_add(*m);
            }
        } else {
            for (a, m) in chunk.iter_mut().zip(b.iter()) {
                *a = a.wrapping_sub(*m);
            }
        }
    }
}

// ---- wire formats (all integers big-endian) ----

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| "u32")?,
        ))
    }
    fn key(&mut self) -> Result<[u8; 32], String> {
        self.take(32)?.try_into().map_err(|_| "key".into())
    }
    fn u64s(&mut self, n: usize) -> Result<Vec<u64>, String> {
        let b = self.take(n.checked_mul(8).ok_or("too long")?)?;
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }
    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }
}

/// `count u32be ‖ count × index u32be`.
fn index_list(set: impl IntoIterator<Item = usize>) -> Vec<u8> {
    let v: Vec<usize> = set.into_iter().collect();
    let mut out = (v.len() as u32).to_be_bytes().to_vec();
    for i in v {
        out.extend_from_slice(&(i as u32).to_be_bytes());
    }
    out
}

/// Reads an [`index_list`]; indices must be strictly increasing.
fn read_index_set(r: &mut Reader<'_>) -> Result<BTreeSet<usize>, SchemeError> {
    let bad = SchemeError::BadExternal;
    let count = r.u32().map_err(bad)? as usize;
    let mut set = BTreeSet::new();
    for _ in 0..count {
        let i = r.u32().map_err(bad)? as usize;
        if set.last().is_some_and(|&l| l >= i) {
            return Err(bad("an owner list out of order".into()));
        }
        set.insert(i);
    }
    Ok(set)
}

/// Appends `index u32be ‖ body ‖ signature` for a broadcast that carries owners' signatures.
fn push_signed(out: &mut Vec<u8>, i: usize, body: &[u8], sig: &[u8]) -> Result<(), SchemeError> {
    if sig.len() != SIGNATURE {
        return Err(SchemeError::BadExternal(format!(
            "a {}-byte signature",
            sig.len()
        )));
    }
    out.extend_from_slice(&(i as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(sig);
    Ok(())
}

fn put_u64s(out: &mut Vec<u8>, v: &[u64]) {
    for x in v {
        out.extend_from_slice(&x.to_be_bytes());
    }
}

fn malformed(stage: u32, e: impl std::fmt::Display) -> Rejection {
    Rejection::new(Reject::Malformed, format!("masking stage {stage}: {e}"))
}

// ---- client ----

/// Checks that another owner signed a message of this round: given the owner's name, the
/// stage (0: its advertised keys `c_pk ‖ s_pk`; 3: its `U3` list), that stage's payload and the
/// signature, `Ok` only when the signature of the owner's contribution for that stage verifies
/// under the key the federation certifies for that owner, for this job, round and model.
pub type KeyCheck = Box<dyn Fn(&str, u32, &[u8], &[u8]) -> Result<(), String> + Send>;

/// Bytes of an Ed25519 signature.
const SIGNATURE: usize = 64;

/// One owner's side of a masking round.
pub struct MaskingClient {
    check: KeyCheck,
    cfg: MaskingConfig,
    me: usize,
    graph: Vec<BTreeSet<usize>>,
    c_sk: StaticSecret,
    s_sk: StaticSecret,
    s_sk_bytes: [u8; 32],
    b: [u8; 32],
    rng: ChaCha20Rng,
    stage: u32,
    input: Vec<i64>,
    keys: BTreeMap<usize, ([u8; 32], [u8; 32])>,
    /// Shares this owner holds: owner → (share of s_sk, share of b).
    held: BTreeMap<usize, (Vec<u64>, Vec<u64>)>,
    u2: BTreeSet<usize>,
    /// The `U3` this owner signed.
    u3: BTreeSet<usize>,
}

impl std::fmt::Debug for MaskingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MaskingClient({}, stage {}, keys ***)",
            self.cfg.sorted()[self.me],
            self.stage
        )
    }
}

impl MaskingClient {
    /// The client of owner `me` for one round; `seed` must be fresh secret randomness; `check`
    /// authenticates the other owners' advertised keys.
    ///
    /// # Errors
    /// Invalid parameters, or `me` is not an owner.
    pub fn new(
        cfg: MaskingConfig,
        me: &str,
        seed: [u8; 32],
        check: KeyCheck,
    ) -> Result<Self, SchemeError> {
        cfg.validate()?;
        let me =
            cfg.sorted().iter().position(|o| o == me).ok_or_else(|| {
                SchemeError::Misuse(format!("`{me}` is not an owner of this job"))
            })?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut draw = || {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            k
        };
        let (c, s, b) = (draw(), draw(), draw());
        Ok(Self {
            check,
            graph: cfg.graph(),
            cfg,
            me,
            c_sk: StaticSecret::from(c),
            s_sk: StaticSecret::from(s),
            s_sk_bytes: s,
            b,
            rng,
            stage: 0,
            input: Vec::new(),
            keys: BTreeMap::new(),
            held: BTreeMap::new(),
            u2: BTreeSet::new(),
            u3: BTreeSet::new(),
        })
    }

    fn holders_in(&self, owner: usize, set: &BTreeSet<usize>) -> Vec<usize> {
        let mut h: Vec<usize> = self.graph[owner]
            .iter()
            .copied()
            .filter(|j| set.contains(j))
            .collect();
        h.push(owner);
        h.sort();
        h
    }

    fn share_keys(&mut self, payload: &[u8]) -> Result<Vec<u8>, SchemeError> {
        let mut r = Reader(payload);
        let count = r.u32().map_err(SchemeError::BadExternal)? as usize;
        let mut keys = BTreeMap::new();
        let names = self.cfg.sorted();
        for _ in 0..count {
            let i = r.u32().map_err(SchemeError::BadExternal)? as usize;
            let c = r.key().map_err(SchemeError::BadExternal)?;
            let s = r.key().map_err(SchemeError::BadExternal)?;
            let sig = r.take(SIGNATURE).map_err(SchemeError::BadExternal)?;
            if i >= self.cfg.n() || keys.insert(i, (c, s)).is_some() {
                return Err(SchemeError::BadExternal(
                    "bad owner index in the key list".into(),
                ));
            }
            // The keys this owner uses (its neighbours', and its own as listed) must be signed;
            // the others never enter its computation.
            if i != self.me && !self.graph[self.me].contains(&i) {
                continue;
            }
            let mut advertised = c.to_vec();
            advertised.extend_from_slice(&s);
            (self.check)(&names[i], 0, &advertised, sig).map_err(|e| {
                SchemeError::BadExternal(format!(
                    "the keys listed for `{}` are not signed by that owner: {e}",
                    names[i]
                ))
            })?;
        }
        r.end().map_err(SchemeError::BadExternal)?;
        let mine = (
            *XPublic::from(&self.c_sk).as_bytes(),
            *XPublic::from(&self.s_sk).as_bytes(),
        );
        if keys.get(&self.me) != Some(&mine) {
            return Err(SchemeError::BadExternal(
                "the key list does not carry this owner's keys".into(),
            ));
        }
        let need = self.cfg.threshold.max(self.cfg.min_owners);
        if keys.len() < need {
            return Err(SchemeError::TooFewContributions {
                got: keys.len(),
                min: need,
            });
        }
        let u1: BTreeSet<usize> = keys.keys().copied().collect();
        let holders = self.holders_in(self.me, &u1);
        let xs: Vec<u64> = holders.iter().map(|&h| h as u64 + 1).collect();
        let t = self.cfg.threshold;
        let s_shares = shamir::share_elements(
            &shamir::bytes_to_elements(&self.s_sk_bytes),
            t,
            &xs,
            &mut self.rng,
        );
        let b_shares =
            shamir::share_elements(&shamir::bytes_to_elements(&self.b), t, &xs, &mut self.rng);
        let round = self.cfg.round;
        let mut out = Vec::new();
        let mut sent = 0u32;
        let mut body = Vec::new();
        for (h, &holder) in holders.iter().enumerate() {
            if holder == self.me {
                self.held
                    .insert(self.me, (s_shares[h].clone(), b_shares[h].clone()));
                continue;
            }
            let mut plain = Vec::with_capacity(SHARE_PLAIN + TAG);
            put_u64s(&mut plain, &s_shares[h]);
            put_u64s(&mut plain, &b_shares[h]);
            let key = share_key(&agree(&self.c_sk, &keys[&holder].0)?, round)?;
            let (nonce, aad) = share_nonce_aad(round, self.me, holder);
            key.seal_in_place_append_tag(nonce, Aad::from(aad), &mut plain)
                .map_err(|_| SchemeError::Crypto("sealing a share".into()))?;
            body.extend_from_slice(&(holder as u32).to_be_bytes());
            body.extend_from_slice(&plain);
            sent += 1;
        }
        out.extend_from_slice(&sent.to_be_bytes());
        out.extend(body);
        self.keys = keys;
        Ok(out)
    }

    fn masked_input(&mut self, payload: &[u8]) -> Result<Vec<u8>, SchemeError> {
        let mut r = Reader(payload);
        let bad = SchemeError::BadExternal;
        let count = r.u32().map_err(bad)? as usize;
        let mut u2 = BTreeSet::new();
        for _ in 0..count {
            u2.insert(r.u32().map_err(bad)? as usize);
        }
        let cts = r.u32().map_err(bad)? as usize;
        let round = self.cfg.round;
        for _ in 0..cts {
            let from = r.u32().map_err(bad)? as usize;
            let to = r.u32().map_err(bad)? as usize;
            let ct = r.take(SHARE_PLAIN + TAG).map_err(bad)?;
            if to != self.me {
                continue;
            }
            if !u2.contains(&from) || !self.graph[self.me].contains(&from) {
                return Err(SchemeError::BadExternal(format!(
                    "a share from owner {from}, who is not a neighbour in U2"
                )));
            }
            let c_pk = self
                .keys
                .get(&from)
                .ok_or_else(|| {
                    SchemeError::BadExternal("a share from an owner without keys".into())
                })?
                .0;
            let key = share_key(&agree(&self.c_sk, &c_pk)?, round)?;
            let (nonce, aad) = share_nonce_aad(round, from, self.me);
            let mut buf = ct.to_vec();
            let plain = key
                .open_in_place(nonce, Aad::from(aad), &mut buf)
                .map_err(|_| {
                    SchemeError::BadExternal(format!(
                        "the share from owner {from} does not decrypt"
                    ))
                })?;
            let mut pr = Reader(plain);
            let s = pr.u64s(SECRET_ELEMENTS).map_err(bad)?;
            let b = pr.u64s(SECRET_ELEMENTS).map_err(bad)?;
            if self.held.insert(from, (s, b)).is_some() {
                return Err(SchemeError::BadExternal(format!(
                    "two shares from owner {from}"
                )));
            }
        }
        r.end().map_err(bad)?;
        if !u2.contains(&self.me) {
            return Err(SchemeError::BadExternal("this owner is not in U2".into()));
        }
        if !u2.iter().all(|v| self.keys.contains_key(v)) {
            return Err(SchemeError::BadExternal("U2 is not a subset of U1".into()));
        }
        // Bell et al. and Bonawitz et al.: never mask with fewer than t − 1 neighbours, nor in a
        // round of fewer than max(t, min_owners) owners (a server that isolates this owner would
        // otherwise unmask its input with its self-mask seed alone).
        let need = self.cfg.threshold.max(self.cfg.min_owners);
        if u2.len() < need {
            return Err(SchemeError::TooFewContributions {
                got: u2.len(),
                min: need,
            });
        }
        let neighbours_in = self.graph[self.me]
            .iter()
            .filter(|v| u2.contains(v))
            .count();
        if neighbours_in + 1 < self.cfg.threshold {
            return Err(SchemeError::BadExternal(format!(
                "only {neighbours_in} of this owner's neighbours are in U2; at least {} are needed",
                self.cfg.threshold - 1
            )));
        }
        // Every neighbour in U2 must have sent this owner its shares.
        for v in self.graph[self.me].iter().filter(|v| u2.contains(v)) {
            if !self.held.contains_key(v) {
                return Err(SchemeError::BadExternal(format!(
                    "no share from neighbour {v}, though it is in U2"
                )));
            }
        }
        let mut y: Vec<u64> = self.input.iter().map(|&x| x as u64).collect();
        apply_prg(&mut y, &self.b, true);
        for &v in self.graph[self.me].iter().filter(|v| u2.contains(v)) {
            let seed = mask_seed(&agree(&self.s_sk, &self.keys[&v].1)?, round, self.me, v);
            apply_prg(&mut y, &seed, self.me < v);
        }
        self.u2 = u2;
        let mut out = Vec::with_capacity(y.len() * 8);
        put_u64s(&mut out, &y);
        Ok(out)
    }

    /// Stage 3: checks `U3` and answers with it (the answer's signature is this owner's
    /// signature over `U3`).
    fn consistency(&mut self, payload: &[u8]) -> Result<Vec<u8>, SchemeError> {
        let mut r = Reader(payload);
        let u3 = read_index_set(&mut r)?;
        r.end().map_err(SchemeError::BadExternal)?;
        if !u3.is_subset(&self.u2) {
            return Err(SchemeError::BadExternal("U3 is not a subset of U2".into()));
        }
        let need = self.cfg.threshold.max(self.cfg.min_owners);
        if u3.len() < need {
            // Answering would let the server unmask too few owners' sum.
            return Err(SchemeError::TooFewContributions {
                got: u3.len(),
                min: need,
            });
        }
        if !u3.contains(&self.me) {
            return Err(SchemeError::BadExternal("this owner is not in U3".into()));
        }
        let answer = index_list(u3.iter().copied());
        self.u3 = u3;
        Ok(answer)
    }

    /// Stage 4: checks that enough owners signed the same `U3`, then reveals the shares.
    fn unmask(&mut self, payload: &[u8]) -> Result<Vec<u8>, SchemeError> {
        let mut r = Reader(payload);
        let bad = SchemeError::BadExternal;
        let u3 = read_index_set(&mut r)?;
        if u3 != self.u3 {
            return Err(bad(
                "the unmasking request names another U3 than the one this owner signed".into(),
            ));
        }
        let signed = index_list(u3.iter().copied());
        let names = self.cfg.sorted();
        let count = r.u32().map_err(bad)? as usize;
        let mut signers = BTreeSet::new();
        for _ in 0..count {
            let i = r.u32().map_err(bad)? as usize;
            let sig = r.take(SIGNATURE).map_err(bad)?;
            if !u3.contains(&i) || !signers.insert(i) {
                return Err(bad(format!(
                    "a U3 signature from owner {i}, not in U3 (or twice)"
                )));
            }
            (self.check)(&names[i], 3, &signed, sig)
                .map_err(|e| bad(format!("`{}` did not sign this U3: {e}", names[i])))?;
        }
        r.end().map_err(bad)?;
        let need = self.cfg.threshold.max(self.cfg.min_owners);
        if signers.len() < need {
            return Err(SchemeError::TooFewContributions {
                got: signers.len(),
                min: need,
            });
        }
        let mut out = Vec::new();
        let mut n = 0u32;
        let mut body = Vec::new();
        for (&v, (s, b)) in self.held.iter().filter(|(v, _)| self.u2.contains(v)) {
            body.extend_from_slice(&(v as u32).to_be_bytes());
            if u3.contains(&v) {
                body.push(1);
                put_u64s(&mut body, b);
            } else {
                body.push(0);
                put_u64s(&mut body, s);
            }
            n += 1;
        }
        out.extend_from_slice(&n.to_be_bytes());
        out.extend(body);
        Ok(out)
    }
}

impl AggregationClient for MaskingClient {
    fn start(&mut self, encoded: &[i64]) -> Result<Vec<u8>, SchemeError> {
        if self.stage != 0 {
            return Err(SchemeError::Misuse("start called twice".into()));
        }
        if encoded.len() != self.cfg.len {
            return Err(SchemeError::Misuse(format!(
                "{} values, the round has {}",
                encoded.len(),
                self.cfg.len
            )));
        }
        self.input = encoded.to_vec();
        self.stage = 1;
        let mut out = XPublic::from(&self.c_sk).as_bytes().to_vec();
        out.extend_from_slice(XPublic::from(&self.s_sk).as_bytes());
        Ok(out)
    }

    fn on_broadcast(&mut self, stage: u32, payload: &[u8]) -> Result<Vec<u8>, SchemeError> {
        if stage != self.stage {
            return Err(SchemeError::Misuse(format!(
                "stage {stage} broadcast, this owner is at stage {}",
                self.stage
            )));
        }
        let out = match stage {
            1 => self.share_keys(payload)?,
            2 => self.masked_input(payload)?,
            3 => self.consistency(payload)?,
            4 => self.unmask(payload)?,
            _ => return Err(SchemeError::Misuse(format!("masking has no stage {stage}"))),
        };
        self.stage += 1;
        Ok(out)
    }
}

// ---- server ----

/// The server's side of a masking round.
#[derive(Debug)]
pub struct MaskingServer {
    cfg: MaskingConfig,
    owners: Vec<String>,
    graph: Vec<BTreeSet<usize>>,
    ctx: RoundContext,
    stage: u32,
    failed: bool,
    got: BTreeMap<String, VerifiedContribution>,
    keys: BTreeMap<usize, ([u8; 32], [u8; 32])>,
    shares: Vec<(usize, usize, Vec<u8>)>,
    u2: BTreeSet<usize>,
    inputs: BTreeMap<usize, Vec<u64>>,
    /// `U4`: the owners that signed `U3`.
    signers: BTreeSet<usize>,
}

impl MaskingServer {
    /// The server for one round.
    ///
    /// # Errors
    /// Invalid parameters.
    pub fn new(cfg: MaskingConfig, ctx: RoundContext) -> Result<Self, SchemeError> {
        cfg.validate()?;
        Ok(Self {
            owners: cfg.sorted(),
            graph: cfg.graph(),
            cfg,
            ctx,
            stage: 0,
            failed: false,
            got: BTreeMap::new(),
            keys: BTreeMap::new(),
            shares: Vec::new(),
            u2: BTreeSet::new(),
            inputs: BTreeMap::new(),
            signers: BTreeSet::new(),
        })
    }

    fn index(&self, owner: &str) -> Option<usize> {
        self.owners.iter().position(|o| o == owner)
    }

    fn expected_holders(&self, owner: usize, set: &BTreeSet<usize>) -> BTreeSet<usize> {
        self.graph[owner]
            .iter()
            .copied()
            .filter(|j| set.contains(j))
            .collect()
    }

    fn check(&self, me: usize, payload: &[u8]) -> Result<(), Rejection> {
        let st = self.stage;
        let mut r = Reader(payload);
        match st {
            0 => {
                let c = r.key().map_err(|e| malformed(st, e))?;
                let s = r.key().map_err(|e| malformed(st, e))?;
                // A low-order key would make every neighbour's agreement fail (and drive honest
                // owners out of the job); two equal keys are not fresh.
                if c == s || !contributory(&c) || !contributory(&s) {
                    return Err(malformed(st, "a low-order or repeated X25519 public key"));
                }
            }
            1 => {
                if !self.keys.contains_key(&me) {
                    return Err(Rejection::new(Reject::StageClosed, "not in U1"));
                }
                let u1: BTreeSet<usize> = self.keys.keys().copied().collect();
                let want = self.expected_holders(me, &u1);
                let n = r.u32().map_err(|e| malformed(st, e))? as usize;
                let mut seen = BTreeSet::new();
                for _ in 0..n {
                    let to = r.u32().map_err(|e| malformed(st, e))? as usize;
                    r.take(SHARE_PLAIN + TAG).map_err(|e| malformed(st, e))?;
                    if !want.contains(&to) || !seen.insert(to) {
                        return Err(malformed(
                            st,
                            format!(
                                "a share for owner {to}, who is not a neighbour in U1 (or twice)"
                            ),
                        ));
                    }
                }
                if seen != want {
                    return Err(malformed(st, "shares missing for some neighbours"));
                }
            }
            2 => {
                if !self.u2.contains(&me) {
                    return Err(Rejection::new(Reject::StageClosed, "not in U2"));
                }
                if payload.len() != self.cfg.len * 8 {
                    return Err(Rejection::new(
                        Reject::WrongShape,
                        format!(
                            "{} bytes of masked input, the model needs {}",
                            payload.len(),
                            self.cfg.len * 8
                        ),
                    ));
                }
                return Ok(());
            }
            3 => {
                if !self.inputs.contains_key(&me) {
                    return Err(Rejection::new(Reject::StageClosed, "not in U3"));
                }
                if payload != index_list(self.inputs.keys().copied()) {
                    return Err(malformed(st, "the answer is not this round's U3"));
                }
                return Ok(());
            }
            4 => {
                if !self.signers.contains(&me) {
                    return Err(Rejection::new(Reject::StageClosed, "not in U4"));
                }
                let n = r.u32().map_err(|e| malformed(st, e))? as usize;
                let mut seen = BTreeSet::new();
                for _ in 0..n {
                    let v = r.u32().map_err(|e| malformed(st, e))? as usize;
                    let kind = r.take(1).map_err(|e| malformed(st, e))?[0];
                    r.u64s(SECRET_ELEMENTS).map_err(|e| malformed(st, e))?;
                    let holds = v == me || self.graph[me].contains(&v);
                    let right_kind = u8::from(self.inputs.contains_key(&v)) == kind;
                    if !self.u2.contains(&v) || !holds || !right_kind || !seen.insert(v) {
                        return Err(malformed(st, format!("an unexpected share of owner {v}")));
                    }
                }
            }
            _ => return Err(Rejection::new(Reject::StageClosed, "the round is over")),
        }
        r.end().map_err(|e| malformed(st, e))
    }

    /// The surviving owners' payloads and signatures, by index.
    fn survivors(&mut self, survivors: &BTreeSet<String>) -> BTreeMap<usize, (Vec<u8>, Vec<u8>)> {
        let got = std::mem::take(&mut self.got);
        got.into_iter()
            .filter(|(o, _)| survivors.contains(o))
            .filter_map(|(o, c)| {
                let c = c.into_inner();
                self.index(&o).map(|i| (i, (c.payload, c.signature)))
            })
            .collect()
    }

    fn need(&self, got: usize) -> Result<(), SchemeError> {
        let min = self.cfg.threshold.max(self.cfg.min_owners);
        if got < min {
            return Err(SchemeError::TooFewContributions { got, min });
        }
        Ok(())
    }

    fn unmask(&self, answers: BTreeMap<usize, Vec<u8>>) -> Result<AggregateSum, SchemeError> {
        let t = self.cfg.threshold;
        // Collect every answer's shares by the owner they belong to.
        let mut by_owner: BTreeMap<usize, Vec<(u64, Vec<u64>)>> = BTreeMap::new();
        for (&holder, payload) in &answers {
            let mut r = Reader(payload);
            let n = r.u32().map_err(SchemeError::BadExternal)? as usize;
            for _ in 0..n {
                let v = r.u32().map_err(SchemeError::BadExternal)? as usize;
                r.take(1).map_err(SchemeError::BadExternal)?;
                let s = r.u64s(SECRET_ELEMENTS).map_err(SchemeError::BadExternal)?;
                by_owner.entry(v).or_default().push((holder as u64 + 1, s));
            }
        }
        let rebuild = |v: usize| -> Result<[u8; 32], SchemeError> {
            let shares = by_owner.get(&v).map(Vec::as_slice).unwrap_or(&[]);
            if shares.len() < t {
                return Err(SchemeError::Unrecoverable(format!(
                    "owner `{}`'s {} cannot be rebuilt: {} of its share holders answered, {t} are needed (too many dropouts)",
                    self.owners[v],
                    if self.inputs.contains_key(&v) {
                        "self mask"
                    } else {
                        "mask key"
                    },
                    shares.len()
                )));
            }
            let refs: Vec<(u64, &[u64])> = shares.iter().map(|(x, s)| (*x, s.as_slice())).collect();
            let elements =
                shamir::reconstruct_elements(&refs, t).map_err(SchemeError::Unrecoverable)?;
            let bytes =
                shamir::elements_to_bytes(&elements, KEY).map_err(SchemeError::Unrecoverable)?;
            bytes
                .try_into()
                .map_err(|_| SchemeError::Unrecoverable("secret length".into()))
        };
        let mut sum = vec![0u64; self.cfg.len];
        for y in self.inputs.values() {
            for (a, v) in sum.iter_mut().zip(y) {
                *a = a.wrapping_add(*v);
            }
        }
        for &u in self.inputs.keys() {
            let b = rebuild(u)?;
            apply_prg(&mut sum, &b, false);
        }
        let round = self.cfg.round;
        for &v in self.u2.iter().filter(|v| !self.inputs.contains_key(v)) {
            let s_sk = StaticSecret::from(rebuild(v)?);
            // The pairwise masks that surviving neighbours of `v` added: remove them.
            for &u in self.graph[v].iter().filter(|u| self.inputs.contains_key(u)) {
                let seed = mask_seed(&agree(&s_sk, &self.keys[&u].1)?, round, v, u);
                // u added +PRG when u < v, −PRG otherwise.
                apply_prg(&mut sum, &seed, u > v);
            }
        }
        Ok(AggregateSum {
            sums: sum.into_iter().map(|v| i128::from(v as i64)).collect(),
            contributors: self
                .inputs
                .keys()
                .map(|&i| self.owners[i].clone())
                .collect(),
            rejected: Vec::new(),
            faulty: Vec::new(),
        })
    }
}

impl AggregationServer for MaskingServer {
    fn kind(&self) -> confide_core::SchemeKind {
        confide_core::SchemeKind::Masking
    }

    fn stage(&self) -> u32 {
        self.stage
    }

    fn accept(&mut self, contribution: VerifiedContribution) -> Result<(), Rejection> {
        let c = contribution.get();
        admit_stage(
            c,
            &self.ctx,
            self.stage,
            self.failed || self.stage > 4,
            &self.got,
        )?;
        let me = self.index(&c.owner).ok_or_else(|| {
            Rejection::new(Reject::NotAnOwner, format!("`{}` is not an owner", c.owner))
        })?;
        self.check(me, &c.payload)?;
        self.got.insert(c.owner.clone(), contribution);
        Ok(())
    }

    fn accepted(&self) -> BTreeSet<String> {
        self.got.keys().cloned().collect()
    }

    fn close_stage(&mut self, survivors: &BTreeSet<String>) -> Result<StageResult, SchemeError> {
        let mut got = BTreeMap::new();
        let mut signatures = BTreeMap::new();
        for (i, (payload, signature)) in self.survivors(survivors) {
            got.insert(i, payload);
            signatures.insert(i, signature);
        }
        let result = (|| match self.stage {
            0 => {
                self.need(got.len())?;
                let mut payload = (got.len() as u32).to_be_bytes().to_vec();
                for (&i, p) in &got {
                    push_signed(&mut payload, i, p, &signatures[&i])?;
                    let mut r = Reader(p);
                    let c = r.key().map_err(SchemeError::BadExternal)?;
                    let s = r.key().map_err(SchemeError::BadExternal)?;
                    self.keys.insert(i, (c, s));
                }
                Ok(StageResult::Broadcast { stage: 1, payload })
            }
            1 => {
                self.need(got.len())?;
                self.u2 = got.keys().copied().collect();
                for (&from, p) in &got {
                    let mut r = Reader(p);
                    let n = r.u32().map_err(SchemeError::BadExternal)?;
                    for _ in 0..n {
                        let to = r.u32().map_err(SchemeError::BadExternal)? as usize;
                        let ct = r
                            .take(SHARE_PLAIN + TAG)
                            .map_err(SchemeError::BadExternal)?;
                        if self.u2.contains(&to) {
                            self.shares.push((from, to, ct.to_vec()));
                        }
                    }
                }
                let mut payload = index_list(self.u2.iter().copied());
                payload.extend_from_slice(&(self.shares.len() as u32).to_be_bytes());
                for (from, to, ct) in &self.shares {
                    payload.extend_from_slice(&(*from as u32).to_be_bytes());
                    payload.extend_from_slice(&(*to as u32).to_be_bytes());
                    payload.extend_from_slice(ct);
                }
                Ok(StageResult::Broadcast { stage: 2, payload })
            }
            2 => {
                self.need(got.len())?;
                for (i, p) in got {
                    let mut r = Reader(&p);
                    let y = r.u64s(self.cfg.len).map_err(SchemeError::BadExternal)?;
                    self.inputs.insert(i, y);
                }
                Ok(StageResult::Broadcast {
                    stage: 3,
                    payload: index_list(self.inputs.keys().copied()),
                })
            }
            3 => {
                self.need(got.len())?;
                let mut payload = index_list(self.inputs.keys().copied());
                payload.extend_from_slice(&(signatures.len() as u32).to_be_bytes());
                for (&i, sig) in &signatures {
                    push_signed(&mut payload, i, &[], sig)?;
                    self.signers.insert(i);
                }
                Ok(StageResult::Broadcast { stage: 4, payload })
            }
            4 => Ok(StageResult::Sum(self.unmask(got)?)),
            s => Err(SchemeError::Misuse(format!("masking has no stage {s}"))),
        })();
        match &result {
            Ok(StageResult::Broadcast { stage, .. }) => self.stage = *stage,
            _ => {
                self.stage = 5;
                self.failed = result.is_err();
            }
        }
        result
    }

    fn finish(&mut self, _: ExternalResult) -> Result<AggregateSum, SchemeError> {
        Err(SchemeError::Misuse(
            "masking needs no external party".into(),
        ))
    }
}

#[cfg(test)]
mod tests;
