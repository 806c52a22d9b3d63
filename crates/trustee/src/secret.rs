//! Writes and reads of a 32-byte secret under the trustees' collective key `X`, as CALYPSO's
//! long-term secrets (Kokoris-Kogias et al., PVLDB 14(4), 2021, §4.1) do them:
//!
//! - **Write**: hashed ElGamal, `U = r·G`, `c = k ⊕ H(r·X)`, with the label proof of TDH2
//!   (Shoup and Gennaro, "Securing threshold cryptosystems against chosen ciphertext attack",
//!   J. Cryptology 15(2), 2002, §4): `Ū = r·Ḡ`, `e = H(c, L, U, W, Ū, W̄)`, `f = w + r·e`,
//!   which binds the ciphertext to its label `L` (policy, owner, envelope, epoch).
//! - **Read**: a reader with key `x_c`, `X_c = x_c·G`, proves it holds `x_c` with RFC 8235's
//!   Schnorr proof, bound to its request. Trustee `i` answers `u_i = s_i·(U + X_c)` with an
//!   RFC 9497 DLEQ proof that `log_G X_i = log_{U+X_c} u_i`. Any `t` valid answers combine by
//!   Lagrange interpolation to `x·(U + X_c) = r·X + x_c·X`; the reader removes `x_c·X` and
//!   opens `k`. Without the key proof, a reader could pick `X_c = U' − U` and read another
//!   write's secret through its own request; the proof stops that.

use std::collections::BTreeMap;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha256};

use crate::dleq;
use crate::group::{self, enc, expand_message_xmd, framed, hash_to_group, hash_to_scalar};
use crate::{Error, GroupKey, KeyShare};

const CONTEXT: &[u8] = b"CONFIDE-TRUSTEE-V1";
const WRITE: &[u8] = b"CONFIDE-TRUSTEE-V1-write";
const READER: &[u8] = b"CONFIDE-TRUSTEE-V1-reader";
const REENCRYPT: &[u8] = b"CONFIDE-TRUSTEE-V1-reencrypt";
const PAD: &[u8] = b"CONFIDE-TRUSTEE-V1-pad";

/// The longest label or request field, in bytes: well inside the transcripts' 16-bit length
/// prefixes, so that no field is ever ambiguous.
pub const MAX_FIELD: usize = 1024;

/// TDH2's second generator `Ḡ`, whose discrete logarithm to `G` nobody knows.
pub fn second_generator() -> RistrettoPoint {
    hash_to_group(&[b"second generator"], CONTEXT)
}

/// What a write is bound to: a trustee refuses to treat the ciphertext under any other label.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Label {
    /// Digest of the owner's policy that governs reads.
    pub policy: String,
    /// The owner's identity.
    pub owner: String,
    /// Digest of the HPKE envelope (or release) whose recipient key is the secret.
    pub envelope: String,
    /// Digest of the trustees' group key (the epoch).
    pub epoch: String,
}

impl Label {
    /// Whether every field fits [`MAX_FIELD`].
    pub fn fits(&self) -> bool {
        [&self.policy, &self.owner, &self.envelope, &self.epoch]
            .iter()
            .all(|f| f.len() <= MAX_FIELD)
    }

    /// The label's bytes in the proof transcript.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for f in [&self.policy, &self.owner, &self.envelope, &self.epoch] {
            framed(&mut out, f.as_bytes());
        }
        out
    }
}

/// A written secret: the ciphertext and its TDH2 label proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The label it is bound to.
    pub label: Label,
    /// `k ⊕ H(r·X)`.
    pub c: [u8; 32],
    /// `r·G`.
    pub u: RistrettoPoint,
    /// `r·Ḡ`.
    pub u_bar: RistrettoPoint,
    /// The proof's challenge.
    pub e: Scalar,
    /// The proof's response.
    pub f: Scalar,
}

fn pad(shared: &RistrettoPoint) -> [u8; 32] {
    expand_message_xmd::<32>(&[&enc(shared)], PAD)
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn write_challenge(c: &[u8; 32], label: &Label, points: [&RistrettoPoint; 4]) -> Scalar {
    let mut t = Vec::with_capacity(256);
    framed(&mut t, c);
    framed(&mut t, &label.encode());
    for p in points {
        framed(&mut t, &enc(p));
    }
    hash_to_scalar(&[&t], WRITE)
}

impl Write {
    /// Encrypts `secret` under `key` with the nonces `r` and `w` (both fresh and uniform).
    pub fn seal_with(
        key: &RistrettoPoint,
        secret: &[u8; 32],
        label: Label,
        r: &Scalar,
        w: &Scalar,
    ) -> Write {
        let g_bar = second_generator();
        let u = r * G;
        let u_bar = r * g_bar;
        let c = xor(secret, &pad(&(r * key)));
        let e = write_challenge(&c, &label, [&u, &(w * G), &u_bar, &(w * g_bar)]);
        Write {
            label,
            c,
            u,
            u_bar,
            e,
            f: w + r * e,
        }
    }

    /// Encrypts `secret` under `key` with fresh nonces.
    pub fn seal(
        key: &RistrettoPoint,
        secret: &[u8; 32],
        label: Label,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Write {
        let (r, w) = (Scalar::random(rng), Scalar::random(rng));
        Write::seal_with(key, secret, label, &r, &w)
    }

    /// Checks the TDH2 proof against the write's own label (TRU-001).
    pub fn verify(&self) -> bool {
        let identity = RistrettoPoint::default();
        if !self.label.fits() || self.u == identity || self.u_bar == identity {
            return false;
        }
        let g_bar = second_generator();
        let w = self.f * G - self.e * self.u;
        let w_bar = self.f * g_bar - self.e * self.u_bar;
        write_challenge(&self.c, &self.label, [&self.u, &w, &self.u_bar, &w_bar]) == self.e
    }

    /// The write's identity: SHA-256 of its encoding.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_bytes()))
    }

    /// `label || c || U || Ū || e || f`, framed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        framed(&mut out, &self.label.encode());
        for f in [
            self.c,
            enc(&self.u),
            enc(&self.u_bar),
            self.e.to_bytes(),
            self.f.to_bytes(),
        ] {
            framed(&mut out, &f);
        }
        out
    }

    /// Decodes [`Write::to_bytes`]; every element and scalar must be canonical.
    pub fn from_bytes(bytes: &[u8]) -> Result<Write, Error> {
        let mut fields = unframe(bytes, 6)?.into_iter();
        let mut next = || fields.next().unwrap_or_default();
        let label_bytes = next();
        let label_fields = unframe(&label_bytes, 4)?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| Error::Encoding("label"));
        let label = Label {
            policy: text(&label_fields[0])?,
            owner: text(&label_fields[1])?,
            envelope: text(&label_fields[2])?,
            epoch: text(&label_fields[3])?,
        };
        let c: [u8; 32] = next()
            .try_into()
            .map_err(|_| Error::Encoding("ciphertext"))?;
        Ok(Write {
            label,
            c,
            u: group::element(&next(), "write U")?,
            u_bar: group::element(&next(), "write Ū")?,
            e: group::scalar(&next(), "write e")?,
            f: group::scalar(&next(), "write f")?,
        })
    }
}

/// Splits `n` length-prefixed fields, refusing trailing bytes.
fn unframe(mut bytes: &[u8], n: usize) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if bytes.len() < 2 {
            return Err(Error::Encoding("framed fields"));
        }
        let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
        if bytes.len() < 2 + len {
            return Err(Error::Encoding("framed fields"));
        }
        out.push(bytes[2..2 + len].to_vec());
        bytes = &bytes[2 + len..];
    }
    if !bytes.is_empty() {
        return Err(Error::Encoding("framed fields"));
    }
    Ok(out)
}

/// RFC 8235 §2.2's Schnorr proof of knowledge of `x_c` for `X_c`, with the reader's identity
/// as UserID and the request's digest as OtherInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyProof {
    /// `V = v·G`.
    pub v: RistrettoPoint,
    /// `r = v − x_c·c`.
    pub r: Scalar,
}

fn key_challenge(v: &RistrettoPoint, key: &RistrettoPoint, user: &str, other: &[u8]) -> Scalar {
    let mut t = Vec::with_capacity(200);
    for p in [&G, v, key] {
        framed(&mut t, &enc(p));
    }
    framed(&mut t, user.as_bytes());
    framed(&mut t, other);
    hash_to_scalar(&[&t], READER)
}

impl KeyProof {
    /// Proves knowledge of `secret` with the nonce `v`.
    pub fn prove_with(secret: &Scalar, user: &str, other: &[u8], v: &Scalar) -> KeyProof {
        let big_v = v * G;
        let c = key_challenge(&big_v, &(secret * G), user, other);
        KeyProof {
            v: big_v,
            r: v - secret * c,
        }
    }

    /// Checks `V = r·G + c·X_c` (RFC 8235 §2.3, with the public key checked to be a valid,
    /// non-identity element by its decoding).
    pub fn verify(&self, key: &RistrettoPoint, user: &str, other: &[u8]) -> bool {
        let c = key_challenge(&self.v, key, user, other);
        self.r * G + c * key == self.v
    }
}

/// A reader's request for one write, on behalf of one job and purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// The write's id.
    pub write: String,
    /// The reader's identity (its certificate's subject).
    pub reader: String,
    /// The job (manifest hash) it reads for.
    pub job: String,
    /// The purpose it states.
    pub purpose: String,
    /// `X_c`, the reader's public key for this read.
    pub reader_key: RistrettoPoint,
    /// Its proof of holding `x_c`.
    pub key_proof: KeyProof,
}

impl ReadRequest {
    /// The bytes the reader's key proof is bound to (RFC 8235's OtherInfo).
    fn bound(write: &str, job: &str, purpose: &str, key: &RistrettoPoint) -> Vec<u8> {
        let mut t = Vec::new();
        for f in [
            write.as_bytes(),
            job.as_bytes(),
            purpose.as_bytes(),
            &enc(key),
        ] {
            framed(&mut t, f);
        }
        t
    }

    /// A request with a fresh reader key; returns it with the key's secret.
    pub fn new(
        write: &str,
        reader: &str,
        job: &str,
        purpose: &str,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> (ReadRequest, Scalar) {
        let secret = Scalar::random(rng);
        let v = Scalar::random(rng);
        (
            ReadRequest::with(write, reader, job, purpose, &secret, &v),
            secret,
        )
    }

    /// A request with the reader key `secret` and proof nonce `v`.
    pub fn with(
        write: &str,
        reader: &str,
        job: &str,
        purpose: &str,
        secret: &Scalar,
        v: &Scalar,
    ) -> ReadRequest {
        let reader_key = secret * G;
        let other = ReadRequest::bound(write, job, purpose, &reader_key);
        ReadRequest {
            write: write.to_string(),
            reader: reader.to_string(),
            job: job.to_string(),
            purpose: purpose.to_string(),
            reader_key,
            key_proof: KeyProof::prove_with(secret, reader, &other, v),
        }
    }

    /// Whether the key proof holds for this reader, write, job, purpose and key (TRU-004).
    pub fn key_proof_holds(&self) -> bool {
        // The identity is x_c = 0: every share would then be s_i·U, which opens the write for
        // anyone who sees t of them.
        if self.reader_key == RistrettoPoint::default()
            || [&self.write, &self.reader, &self.job, &self.purpose]
                .iter()
                .any(|f| f.len() > MAX_FIELD)
        {
            return false;
        }
        let other = ReadRequest::bound(&self.write, &self.job, &self.purpose, &self.reader_key);
        self.key_proof
            .verify(&self.reader_key, &self.reader, &other)
    }

    /// The request's identity: one share per id (TRU-006).
    pub fn id(&self) -> String {
        let mut t = Vec::new();
        framed(&mut t, self.reader.as_bytes());
        t.extend(ReadRequest::bound(
            &self.write,
            &self.job,
            &self.purpose,
            &self.reader_key,
        ));
        hex::encode(Sha256::digest(t))
    }
}

/// One trustee's re-encryption share, with its DLEQ proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// The trustee's index (its FROST identifier).
    pub trustee: u16,
    /// `u_i = s_i·(U + X_c)`.
    pub u: RistrettoPoint,
    /// `log_G X_i = log_{U+X_c} u_i`.
    pub proof: dleq::Proof,
}

impl Share {
    /// The share of `key` for `write` and `reader_key`, with the proof nonce `nonce`.
    pub fn make_with(
        key: &KeyShare,
        write: &Write,
        reader_key: &RistrettoPoint,
        nonce: &Scalar,
    ) -> Share {
        let base = write.u + reader_key;
        let u = key.secret * base;
        let public = key.secret * G;
        Share {
            trustee: key.index,
            u,
            proof: dleq::prove_with(&key.secret, &G, &public, &[base], &[u], nonce, REENCRYPT),
        }
    }

    /// The share with a fresh proof nonce.
    pub fn make(
        key: &KeyShare,
        write: &Write,
        reader_key: &RistrettoPoint,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) -> Share {
        Share::make_with(key, write, reader_key, &Scalar::random(rng))
    }

    /// Checks the proof against the trustee's public share `X_i` in `group` (TRU-007).
    pub fn verify(&self, group: &GroupKey, write: &Write, reader_key: &RistrettoPoint) -> bool {
        let Some(public) = group.shares.get(&self.trustee) else {
            return false;
        };
        dleq::verify(
            &G,
            public,
            &[write.u + reader_key],
            &[self.u],
            &self.proof,
            REENCRYPT,
        )
    }

    /// `index || u || proof`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.trustee.to_be_bytes().to_vec();
        out.extend_from_slice(&enc(&self.u));
        out.extend_from_slice(&self.proof.to_bytes());
        out
    }

    /// Decodes [`Share::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Share, Error> {
        if bytes.len() != 2 + 32 + 64 {
            return Err(Error::Encoding("share"));
        }
        Ok(Share {
            trustee: u16::from_be_bytes([bytes[0], bytes[1]]),
            u: group::element(&bytes[2..34], "share")?,
            proof: dleq::Proof::from_bytes(&bytes[34..])?,
        })
    }
}

/// The Lagrange coefficient at 0 of `i` among `set` (identifiers as field elements).
fn lagrange(i: u16, set: &[u16]) -> Scalar {
    let xi = Scalar::from(u64::from(i));
    let mut num = Scalar::ONE;
    let mut den = Scalar::ONE;
    for &j in set.iter().filter(|&&j| j != i) {
        let xj = Scalar::from(u64::from(j));
        num *= xj;
        den *= xj - xi;
    }
    num * den.invert()
}

/// Why a read could not be opened: the trustees named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "TRU-008: {valid} valid shares of the {threshold} needed; bad shares from {bad:?} (TRU-007), no answer from {missing:?} (no valid shares at all: the write does not verify or is not for this epoch)"
)]
pub struct Unopened {
    /// Valid shares received.
    pub valid: usize,
    /// Shares needed.
    pub threshold: u16,
    /// Trustees whose share failed its proof.
    pub bad: Vec<u16>,
    /// Trustees that gave no share.
    pub missing: Vec<u16>,
}

/// What a reader got from the trustees: the secret, and the trustees whose shares it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The 32-byte secret.
    pub secret: [u8; 32],
    /// Trustees whose shares failed their proof (TRU-007), to be named in the log.
    pub bad: Vec<u16>,
}

/// Verifies every share, combines `t` valid ones, and opens the secret (the reader's side).
pub fn open(
    group: &GroupKey,
    write: &Write,
    reader_secret: &Scalar,
    shares: &[Share],
) -> Result<Opened, Unopened> {
    let reader_key = reader_secret * G;
    if !write.verify() || write.label.epoch != group.digest() {
        return Err(Unopened {
            valid: 0,
            threshold: group.threshold,
            bad: Vec::new(),
            missing: Vec::new(),
        });
    }
    let mut valid: BTreeMap<u16, RistrettoPoint> = BTreeMap::new();
    let mut failed = std::collections::BTreeSet::new();
    for s in shares {
        if valid.contains_key(&s.trustee) {
            continue;
        }
        // A forged share under an honest trustee's index does not hide its real one.
        if s.verify(group, write, &reader_key) {
            valid.insert(s.trustee, s.u);
        } else {
            failed.insert(s.trustee);
        }
    }
    let bad: Vec<u16> = failed
        .into_iter()
        .filter(|i| !valid.contains_key(i))
        .collect();
    let missing: Vec<u16> = group
        .shares
        .keys()
        .filter(|i| !valid.contains_key(i) && !bad.contains(i))
        .copied()
        .collect();
    if valid.len() < usize::from(group.threshold) {
        return Err(Unopened {
            valid: valid.len(),
            threshold: group.threshold,
            bad,
            missing,
        });
    }
    let chosen: Vec<u16> = valid
        .keys()
        .take(usize::from(group.threshold))
        .copied()
        .collect();
    let combined: RistrettoPoint = chosen
        .iter()
        .map(|i| lagrange(*i, &chosen) * valid[i])
        .sum();
    let shared = combined - reader_secret * group.key;
    Ok(Opened {
        secret: xor(&write.c, &pad(&shared)),
        bad,
    })
}

/// The whole key `x` from `t` key shares, by Lagrange interpolation: what no trustee ever
/// computes; for tests and the benchmark's single-key baseline.
pub fn whole_key(shares: &[KeyShare]) -> Scalar {
    let ids: Vec<u16> = shares.iter().map(|s| s.index).collect();
    shares
        .iter()
        .map(|s| lagrange(s.index, &ids) * s.secret)
        .sum()
}

/// Opens a write with the whole secret key (the single-key-holder baseline; tests).
pub fn open_with_key(secret_key: &Scalar, write: &Write) -> [u8; 32] {
    xor(&write.c, &pad(&(secret_key * write.u)))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn label() -> Label {
        Label {
            policy: "policy".into(),
            owner: "hospital-a".into(),
            envelope: "envelope".into(),
            epoch: "epoch".into(),
        }
    }

    #[test]
    fn a_write_round_trips_and_its_proof_binds_the_label() {
        let mut rng = rand::thread_rng();
        let x = Scalar::random(&mut rng);
        let w = Write::seal(&(x * G), &[7u8; 32], label(), &mut rng);
        assert!(w.verify());
        assert_eq!(Write::from_bytes(&w.to_bytes()).expect("decode"), w);
        assert_eq!(open_with_key(&x, &w), [7u8; 32]);
        let mut moved = w.clone();
        moved.label.policy = "my own policy".into();
        assert!(!moved.verify(), "the same ciphertext under another label");
        let mut bent = w.clone();
        bent.c[0] ^= 1;
        assert!(!bent.verify(), "another ciphertext under the proof");
        let mut bytes = w.to_bytes();
        bytes.push(0);
        assert!(Write::from_bytes(&bytes).is_err(), "trailing bytes");
    }

    #[test]
    fn a_key_proof_binds_reader_write_job_purpose_and_key() {
        let mut rng = rand::thread_rng();
        let (req, _) = ReadRequest::new("w1", "trainer", "job", "train", &mut rng);
        assert!(req.key_proof_holds());
        for bend in [
            |r: &mut ReadRequest| r.reader = "mallory".into(),
            |r: &mut ReadRequest| r.write = "w2".into(),
            |r: &mut ReadRequest| r.job = "other".into(),
            |r: &mut ReadRequest| r.purpose = "export".into(),
            |r: &mut ReadRequest| r.reader_key += G,
        ] {
            let mut r = req.clone();
            bend(&mut r);
            assert!(!r.key_proof_holds());
        }
    }
}
