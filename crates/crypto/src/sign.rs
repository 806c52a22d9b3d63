//! Ed25519 signatures (RFC 8032) through ring. A party's signing key is the same Ed25519 key
//! that its TLS certificate certifies, so a signature and a mutual-TLS session name the same
//! party.

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Signature errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The private key is not a PKCS#8 Ed25519 key.
    #[error("not a PKCS#8 Ed25519 private key: {0}")]
    BadKey(String),
    /// The signature does not verify under the public key.
    #[error("signature does not verify")]
    Invalid,
}

/// An Ed25519 signing key. `Debug` prints only the public key.
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey(public {}, ***)",
            hex::encode(self.public_key())
        )
    }
}

impl SigningKey {
    /// Parses a PKCS#8 (v1 or v2) DER Ed25519 private key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, SignatureError> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Self)
            .map_err(|e| SignatureError::BadKey(e.to_string()))
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.public_key().as_ref());
        out
    }

    /// Signs a message.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.0.sign(message).as_ref());
        out
    }
}

/// Verifies an Ed25519 signature.
pub fn verify(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .map_err(|_| SignatureError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1, TEST 2: secret key 4ccd08…, message 0x72.
    #[test]
    fn rfc8032_test_vector_2_verifies() {
        let public =
            hex::decode("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
                .expect("hex");
        let sig = hex::decode(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        )
        .expect("hex");
        assert_eq!(verify(&public, &[0x72], &sig), Ok(()));
        assert_eq!(verify(&public, &[0x73], &sig), Err(SignatureError::Invalid));
    }

    #[test]
    fn sign_then_verify_and_tamper() {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
        let key = SigningKey::from_pkcs8_der(der.as_ref()).expect("parse");
        let sig = key.sign(b"round 3");
        assert!(verify(&key.public_key(), b"round 3", &sig).is_ok());
        assert!(verify(&key.public_key(), b"round 4", &sig).is_err());
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(verify(&key.public_key(), b"round 3", &bad).is_err());
        assert!(SigningKey::from_pkcs8_der(&[1, 2, 3]).is_err());
    }
}
