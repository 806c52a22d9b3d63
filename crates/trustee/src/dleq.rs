//! Proofs that two discrete logarithms are equal (Chaum–Pedersen), exactly as RFC 9497 §2.2
//! builds them: `GenerateProof`, `VerifyProof` and the composites of §2.2.1, over
//! ristretto255-SHA512. The known-answer tests below are RFC 9497 Appendix A.1.2's VOPRF
//! vectors; Confide's own uses pass their own context string.
//!
//! A proof shows that `B = k·A` and `D[i] = k·C[i]` for every i, for one secret `k`.

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

use crate::Error;
use crate::group::{self, enc, framed, hash_to_scalar};

/// A proof: the challenge and the response, 64 bytes (`c || s`, each little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    /// The challenge `c`.
    pub c: Scalar,
    /// The response `s = r - c·k`.
    pub s: Scalar,
}

impl Proof {
    /// `c || s`.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.c.as_bytes());
        out[32..].copy_from_slice(self.s.as_bytes());
        out
    }

    /// Decodes `c || s`; each half must be a canonical scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Proof, Error> {
        if bytes.len() != 64 {
            return Err(Error::Encoding("proof"));
        }
        Ok(Proof {
            c: group::scalar(&bytes[..32], "proof challenge")?,
            s: group::scalar(&bytes[32..], "proof response")?,
        })
    }
}

/// The seed of §2.2.1: `Hash(len(Bm) || Bm || len(seedDST) || seedDST)`.
fn seed(b: &RistrettoPoint, context: &[u8]) -> [u8; 64] {
    let mut t = Vec::with_capacity(128);
    framed(&mut t, &enc(b));
    framed(&mut t, &[b"Seed-".as_slice(), context].concat());
    Sha512::digest(&t).into()
}

/// The composite weights `d_i` of §2.2.1.
fn weights(
    b: &RistrettoPoint,
    c: &[RistrettoPoint],
    d: &[RistrettoPoint],
    context: &[u8],
) -> Vec<Scalar> {
    let seed = seed(b, context);
    c.iter()
        .zip(d)
        .enumerate()
        .map(|(i, (ci, di))| {
            let mut t = Vec::with_capacity(200);
            framed(&mut t, &seed);
            t.extend_from_slice(&(i as u16).to_be_bytes());
            framed(&mut t, &enc(ci));
            framed(&mut t, &enc(di));
            t.extend_from_slice(b"Composite");
            hash_to_scalar(&[&t], context)
        })
        .collect()
}

/// The challenge of §2.2.1: `HashToScalar(Bm || M || Z || t2 || t3 || "Challenge")`, framed.
fn challenge(points: [&RistrettoPoint; 5], context: &[u8]) -> Scalar {
    let mut t = Vec::with_capacity(180);
    for p in points {
        framed(&mut t, &enc(p));
    }
    t.extend_from_slice(b"Challenge");
    hash_to_scalar(&[&t], context)
}

/// `GenerateProof(k, A, B, C, D)` with the nonce `r` (RFC 9497 §2.2.1, using
/// `ComputeCompositesFast`). `r` must be fresh and uniform for every proof.
pub fn prove_with(
    k: &Scalar,
    a: &RistrettoPoint,
    b: &RistrettoPoint,
    c: &[RistrettoPoint],
    d: &[RistrettoPoint],
    r: &Scalar,
    context: &[u8],
) -> Proof {
    debug_assert_eq!(c.len(), d.len());
    let w = weights(b, c, d, context);
    let m: RistrettoPoint = w.iter().zip(c).map(|(wi, ci)| wi * ci).sum();
    let z = k * m;
    let t2 = r * a;
    let t3 = r * m;
    let c = challenge([b, &m, &z, &t2, &t3], context);
    Proof { c, s: r - c * k }
}

/// `GenerateProof` with a fresh nonce from `rng`.
pub fn prove(
    k: &Scalar,
    a: &RistrettoPoint,
    b: &RistrettoPoint,
    c: &[RistrettoPoint],
    d: &[RistrettoPoint],
    context: &[u8],
    rng: &mut (impl rand::RngCore + rand::CryptoRng),
) -> Proof {
    prove_with(k, a, b, c, d, &Scalar::random(rng), context)
}

/// `VerifyProof(A, B, C, D, proof)` (RFC 9497 §2.2.2, using `ComputeComposites`).
pub fn verify(
    a: &RistrettoPoint,
    b: &RistrettoPoint,
    c: &[RistrettoPoint],
    d: &[RistrettoPoint],
    proof: &Proof,
    context: &[u8],
) -> bool {
    if c.len() != d.len() || c.is_empty() {
        return false;
    }
    let w = weights(b, c, d, context);
    let m: RistrettoPoint = w.iter().zip(c).map(|(wi, ci)| wi * ci).sum();
    let z: RistrettoPoint = w.iter().zip(d).map(|(wi, di)| wi * di).sum();
    let t2 = proof.s * a + proof.c * b;
    let t3 = proof.s * m + proof.c * z;
    challenge([b, &m, &z, &t2, &t3], context) == proof.c
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;

    /// RFC 9497's context string for the VOPRF mode of ristretto255-SHA512 (§3.1, §4.1).
    const VOPRF: &[u8] = b"OPRFV1-\x01-ristretto255-SHA512";

    fn s(h: &str) -> Scalar {
        group::scalar(&hex::decode(h).expect("hex"), "test").expect("scalar")
    }
    fn p(h: &str) -> RistrettoPoint {
        group::element(&hex::decode(h).expect("hex"), "test").expect("element")
    }

    struct Vector {
        input: &'static [&'static str],
        blind: &'static [&'static str],
        blinded: &'static [&'static str],
        evaluated: &'static [&'static str],
        proof: &'static str,
        r: &'static str,
    }

    /// RFC 9497 Appendix A.1.2 (ristretto255-SHA512, VOPRF mode): test vectors 1, 2 and 3.
    /// (The draft-09 vectors that some libraries still carry differ: their context string
    /// was `VOPRF09-`.)
    const SK: &str = "e6f73f344b79b379f1a0dd37e07ff62e38d9f71345ce62ae3a9bc60b04ccd909";
    const PK: &str = "c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e";
    const BLIND: &str = "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706";
    const R: &str = "222a5e897cf59db8145db8d16e597e8facb80ae7d4e26d9881aa6f61d645fc0e";
    const VECTORS: [Vector; 3] = [
        Vector {
            input: &["00"],
            blind: &[BLIND],
            blinded: &["863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945"],
            evaluated: &["aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e"],
            proof: "ddef93772692e535d1a53903db24367355cc2cc78de93b3be5a8ffcc6985dd06\
                    6d4346421d17bf5117a2a1ff0fcb2a759f58a539dfbe857a40bce4cf49ec600d",
            r: R,
        },
        Vector {
            input: &["5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"],
            blind: &[BLIND],
            blinded: &["cc0b2a350101881d8a4cba4c80241d74fb7dcbfde4a61fde2f91443c2bf9ef0c"],
            evaluated: &["60a59a57208d48aca71e9e850d22674b611f752bed48b36f7a91b372bd7ad468"],
            proof: "401a0da6264f8cf45bb2f5264bc31e109155600babb3cd4e5af7d181a2c9dc0a\
                    67154fabf031fd936051dec80b0b6ae29c9503493dde7393b722eafdf5a50b02",
            r: R,
        },
        Vector {
            input: &["00", "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"],
            blind: &[BLIND, R],
            blinded: &[
                "863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945",
                "90a0145ea9da29254c3a56be4fe185465ebb3bf2a1801f7124bbbadac751e654",
            ],
            evaluated: &[
                "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e",
                "cc5ac221950a49ceaa73c8db41b82c20372a4c8d63e5dded2db920b7eee36a2a",
            ],
            proof: "cc203910175d786927eeb44ea847328047892ddf8590e723c37205cb74600b0a\
                    5ab5337c8eb4ceae0494c2cf89529dcf94572ed267473d567aeed6ab873dee08",
            r: "419c4f4f5052c53c45f3da494d2b67b220d02118e0857cdbcf037f9ea84bbe0c",
        },
    ];

    #[test]
    fn rfc9497_voprf_vectors_hash_to_group() {
        // The blinded elements are Blind·HashToGroup(Input): this checks expand_message_xmd
        // and the element derivation through RFC 9497's own numbers.
        for v in &VECTORS {
            for ((input, blind), blinded) in v.input.iter().zip(v.blind).zip(v.blinded) {
                let h = group::hash_to_group(&[&hex::decode(input).expect("hex")], VOPRF);
                assert_eq!(hex::encode(enc(&(s(blind) * h))), *blinded);
            }
        }
        assert_eq!(hex::encode(enc(&(s(SK) * G))), PK);
    }

    #[test]
    fn rfc9497_voprf_vectors_proofs() {
        for v in &VECTORS {
            let c: Vec<_> = v.blinded.iter().map(|h| p(h)).collect();
            let d: Vec<_> = v.evaluated.iter().map(|h| p(h)).collect();
            for (ci, di) in c.iter().zip(&d) {
                assert_eq!(s(SK) * ci, *di, "the evaluation is k·C");
            }
            let proof = prove_with(&s(SK), &G, &p(PK), &c, &d, &s(v.r), VOPRF);
            assert_eq!(hex::encode(proof.to_bytes()), v.proof);
            let parsed = Proof::from_bytes(&hex::decode(v.proof).expect("hex")).expect("proof");
            assert!(verify(&G, &p(PK), &c, &d, &parsed, VOPRF));
            // Another context, another element, or another proof: refused.
            assert!(!verify(&G, &p(PK), &c, &d, &parsed, b"another context"));
            let mut other = d.clone();
            other[0] += G;
            assert!(!verify(&G, &p(PK), &c, &other, &parsed, VOPRF));
            let bent = Proof {
                c: parsed.c,
                s: parsed.s + Scalar::ONE,
            };
            assert!(!verify(&G, &p(PK), &c, &d, &bent, VOPRF));
        }
    }
}
