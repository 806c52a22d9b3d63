//! The ristretto255 group (RFC 9496) and the hashing that the proofs use.
//!
//! `hash_to_scalar` and `hash_to_group` are RFC 9497's `HashToScalar` and `HashToGroup` for the
//! ristretto255-SHA512 suite (§4.1): `expand_message_xmd` with SHA-512 (RFC 9380 §5.3.1) to 64
//! bytes, then a wide reduction or RFC 9496's element derivation. Each caller passes its own
//! context string, so that a proof made for one purpose never verifies for another.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};

use crate::Error;

/// The encoded length of an element or a scalar.
pub const LEN: usize = 32;

/// RFC 9380 §5.3.1 `expand_message_xmd` with SHA-512, for `N <= 255 * 64` bytes.
pub fn expand_message_xmd<const N: usize>(parts: &[&[u8]], dst: &[u8]) -> [u8; N] {
    const B: usize = 64; // SHA-512 output
    const S: usize = 128; // SHA-512 block
    assert!(dst.len() <= 255, "a DST longer than 255 bytes");
    let ell = N.div_ceil(B);
    assert!(
        ell <= 255 && N <= 65535,
        "expand_message_xmd: output too long"
    );
    let dst_len = [dst.len() as u8];
    let mut h = Sha512::new();
    h.update([0u8; S]);
    for p in parts {
        h.update(p);
    }
    h.update((N as u16).to_be_bytes());
    h.update([0u8]);
    h.update(dst);
    h.update(dst_len);
    let b0 = h.finalize();
    let mut out = [0u8; N];
    let mut prev = [0u8; B];
    for i in 1..=ell {
        let mut h = Sha512::new();
        if i == 1 {
            h.update(b0);
        } else {
            let mixed: Vec<u8> = b0.iter().zip(prev.iter()).map(|(a, b)| a ^ b).collect();
            h.update(mixed);
        }
        h.update([i as u8]);
        h.update(dst);
        h.update(dst_len);
        prev.copy_from_slice(&h.finalize());
        let start = (i - 1) * B;
        let end = (start + B).min(N);
        out[start..end].copy_from_slice(&prev[..end - start]);
    }
    out
}

/// RFC 9497 `HashToScalar` for ristretto255-SHA512 under `context`.
pub fn hash_to_scalar(parts: &[&[u8]], context: &[u8]) -> Scalar {
    let dst = [b"HashToScalar-".as_slice(), context].concat();
    Scalar::from_bytes_mod_order_wide(&expand_message_xmd::<64>(parts, &dst))
}

/// RFC 9497 `HashToGroup` for ristretto255-SHA512 under `context` (RFC 9380's
/// hash_to_ristretto255: 64 uniform bytes through RFC 9496 §4.3.4's element derivation).
pub fn hash_to_group(parts: &[&[u8]], context: &[u8]) -> RistrettoPoint {
    let dst = [b"HashToGroup-".as_slice(), context].concat();
    RistrettoPoint::from_uniform_bytes(&expand_message_xmd::<64>(parts, &dst))
}

/// Decodes a canonical element encoding (RFC 9496 §4.3.1); the identity is refused where a
/// protocol value must not be it.
pub fn element(bytes: &[u8], what: &'static str) -> Result<RistrettoPoint, Error> {
    let arr: [u8; LEN] = bytes.try_into().map_err(|_| Error::Encoding(what))?;
    let point = CompressedRistretto(arr)
        .decompress()
        .ok_or(Error::Encoding(what))?;
    if point == RistrettoPoint::default() {
        return Err(Error::Encoding(what));
    }
    Ok(point)
}

/// Decodes a canonical scalar encoding (little-endian, below the group order).
pub fn scalar(bytes: &[u8], what: &'static str) -> Result<Scalar, Error> {
    let arr: [u8; LEN] = bytes.try_into().map_err(|_| Error::Encoding(what))?;
    Option::<Scalar>::from(Scalar::from_canonical_bytes(arr)).ok_or(Error::Encoding(what))
}

/// The encoding of an element.
pub fn enc(p: &RistrettoPoint) -> [u8; LEN] {
    p.compress().to_bytes()
}

/// A length-prefixed field (RFC 9497's `I2OSP(len(x), 2) || x`), for transcripts.
pub fn framed(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u16).to_be_bytes());
    out.extend_from_slice(field);
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).expect("hex").try_into().expect("32 bytes")
    }

    /// RFC 9496 Appendix A.1: encodings of small multiples of the generator (0 through 4).
    #[test]
    fn rfc9496_a1_multiples_of_the_generator() {
        let expected = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "e2f2ae0a6abc4e71a884a961c500515f58e30b6aa582dd8db6a65945e08d2d76",
            "6a493210f7499cd17fecb510ae0cea23a110e8d5b901f8acadd3095c73a3b919",
            "94741f5d5d52755ece4f23f044ee27d5d1ea1e2bd196b462166b16152a9d0259",
            "da80862773358b466ffadfe0b3293ab3d9fd53c5ea6c955358f568322daf6a57",
        ];
        let mut p = RistrettoPoint::default();
        for e in expected {
            assert_eq!(hex::encode(enc(&p)), e);
            p += G;
        }
    }

    /// RFC 9496 Appendix A.3: element derivation from 64 uniform bytes (first vector).
    #[test]
    fn rfc9496_a3_element_derivation() {
        let input = hex::decode(
            "5d1be09e3d0c82fc538112490e35701979d99e06ca3e2b5b54bffe8b4dc772c1\
             4d98b696a1bbfb5ca32c436cc61c16563790306c79eaca7705668b47dffe5bb6",
        )
        .expect("hex");
        let p = RistrettoPoint::from_uniform_bytes(&input.try_into().expect("64 bytes"));
        assert_eq!(
            hex::encode(enc(&p)),
            "3066f82a1a747d45120d1740f14358531a8f04bbffe6a819f86dfe50f44a0a46"
        );
    }

    /// RFC 9496 Appendix A.2: a non-canonical encoding is refused.
    #[test]
    fn rfc9496_a2_bad_encodings_are_refused() {
        let bad = hex32("00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
        assert!(element(&bad, "x").is_err());
        assert!(element(&[0u8; 32], "x").is_err(), "identity refused");
        assert!(element(&enc(&G), "x").is_ok());
    }
}
