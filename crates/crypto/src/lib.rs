//! Confide's cryptographic building blocks. Everything here wraps a maintained library
//! (fast-paillier for Paillier, fhe.rs for BFV, ring for Ed25519, SHA-256, HKDF and AES-GCM,
//! hpke for RFC 9180); Confide adds encodings and protocol glue, never ciphers or modular
//! arithmetic of its own.
//!
//! - [`encoding`]: fixed-point encoding with clipping; packing of many coordinates into one
//!   plaintext with overflow-free headroom computed from the number of owners.
//! - [`envelope`]: chunked HPKE envelopes for uploads (STREAM-style chunk binding, content
//!   addresses).
//! - [`lattice`]: BFV parameters derived from the job, SIMD-packed encryption, checked parsing
//!   of ciphertexts and keys, decoding of decrypted sums.
//! - [`paillier`]: keys, DJN short-exponent encryption, decryption, homomorphic addition.
//! - [`seal`]: sealed storage (AES-256-GCM, key bound to measurement and identity, slot and
//!   version as associated data, rollback detection).
//! - [`sign`]: Ed25519 signatures.

pub mod encoding;
pub mod envelope;
pub mod lattice;
pub mod paillier;
pub mod seal;
pub mod sign;

pub use encoding::{EncodingError, FixedPoint, PackingLayout};
pub use lattice::{
    LatticeCiphertext, LatticeEncryptor, LatticeError, LatticeParams, LatticePublicKey,
    LatticeSecretKey,
};
pub use paillier::{Ciphertext, PaillierError, PublicKey, PublicKeyJson, SecretKey, SecretKeyJson};
pub use sign::{SignatureError, SigningKey};

/// SHA-256 (FIPS 180-4) through ring.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The name of the big-integer backend compiled in, for benchmark reports.
pub fn bigint_backend() -> &'static str {
    "num-bigint (pure Rust, via fast-paillier)"
}
