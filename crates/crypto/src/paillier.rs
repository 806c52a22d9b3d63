//! Paillier encryption over fast-paillier, with Damgård–Jurik–Nielsen short-exponent
//! randomisers for fast encryption.
//!
//! # Scheme
//! Paillier (Eurocrypt 1999) with `g = 1 + N`: `Enc(m; r) = (1 + mN) · r^N mod N²`. Key
//! generation, decryption and homomorphic addition are fast-paillier's (`DecryptionKey::
//! from_primes`, `decrypt`, `EncryptionKey::oadd`); this module adds no modular arithmetic of
//! its own beyond composing the library's big-integer operations.
//!
//! # Key generation
//! `p` and `q` are independent random safe primes of `modulus_bits / 2` bits
//! (fast-paillier's sieve + glass_pumpkin Miller–Rabin/Lucas tests); a key is accepted only when
//! `N = pq` has exactly `modulus_bits` bits. 2048-bit moduli give about 112-bit security and
//! 3072-bit about 128-bit (NIST SP 800-57 Part 1 Rev. 5, Table 2, for factoring-based schemes).
//!
//! # DJN randomisers
//! Computing `r^N mod N²` with a full-size `r` dominates encryption. Following Damgård, Jurik
//! and Nielsen ("A generalization of Paillier's public-key system with applications to
//! electronic voting", Int. J. Inf. Secur. 9(6), 2010, the key-generation variant with a fixed
//! `h`), the key holder publishes `h_s = h^N mod N²` for `h = −x² mod N` with random `x`, and an
//! encryptor uses `r^N = h_s^α` with a random exponent `α` of `⌈modulus_bits / 2⌉` bits. This
//! halves the exponent length (and so the cost) of encryption. Its semantic security rests on
//! DCR plus the assumption that `h^α` for short `α` is indistinguishable from a random square,
//! as DJN state; ciphertexts are ordinary Paillier ciphertexts and decrypt with the standard
//! algorithm. Randomisers can be precomputed offline ([`PublicKey::randomizer`]) and consumed
//! online by [`PublicKey::encrypt_with_randomizer`], which then costs one multiplication.

use fast_paillier::backend::Integer;
use fast_paillier::{DecryptionKey, EncryptionKey};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

/// Paillier errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaillierError {
    /// The requested modulus size is not supported.
    #[error("unsupported Paillier modulus size {0} (use 2048 or 3072)")]
    UnsupportedSize(u32),
    /// A key file or key message is malformed.
    #[error("invalid Paillier key: {0}")]
    InvalidKey(String),
    /// A ciphertext is malformed: wrong length, or not a unit modulo N².
    #[error("invalid ciphertext: {0}")]
    InvalidCiphertext(String),
    /// A plaintext does not fit.
    #[error("plaintext out of range: {0}")]
    PlaintextRange(String),
    /// The library reported a failure.
    #[error("paillier operation failed: {0}")]
    Library(String),
}

/// Smallest modulus this crate accepts outside tests.
pub const MIN_MODULUS_BITS: u32 = 2048;

/// A Paillier public key with its DJN base `h_s`.
#[derive(Clone, Debug)]
pub struct PublicKey {
    ek: EncryptionKey,
    hs: Integer,
    modulus_bits: u32,
}

/// A Paillier secret key. `Debug` prints nothing secret.
#[derive(Clone)]
pub struct SecretKey {
    dk: DecryptionKey,
    public: PublicKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({} bits, ***)", self.public.modulus_bits)
    }
}

/// A ciphertext modulo `N²`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext(Integer);

fn from_hex(s: &str, what: &str) -> Result<Integer, PaillierError> {
    Integer::from_str_radix(s, 16)
        .filter(|v| v.cmp0().is_gt())
        .ok_or_else(|| PaillierError::InvalidKey(format!("`{what}` is not a positive hex integer")))
}

/// JSON form of a public key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyJson {
    /// Modulus size.
    pub modulus_bits: u32,
    /// `N`, hex.
    pub n: String,
    /// `h_s = h^N mod N²`, hex.
    pub hs: String,
}

/// JSON form of a secret key (the primes and the DJN base).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyJson {
    /// A human-readable label (for example "TEST ONLY").
    pub label: String,
    /// Modulus size.
    pub modulus_bits: u32,
    /// Prime `p`, hex.
    pub p: String,
    /// Prime `q`, hex.
    pub q: String,
    /// `h_s`, hex.
    pub hs: String,
}

impl std::fmt::Debug for SecretKeyJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKeyJson({}, ***)", self.label)
    }
}

impl PublicKey {
    /// Modulus size in bits.
    pub fn modulus_bits(&self) -> u32 {
        self.modulus_bits
    }

    /// Bytes of a serialised ciphertext (`2 · ⌈modulus_bits / 8⌉`).
    pub fn ciphertext_bytes(&self) -> usize {
        2 * (self.modulus_bits as usize).div_ceil(8)
    }

    /// Bits of the DJN exponent.
    fn exponent_bits(&self) -> u32 {
        self.modulus_bits.div_ceil(2)
    }

    /// The JSON form.
    pub fn to_json(&self) -> PublicKeyJson {
        PublicKeyJson {
            modulus_bits: self.modulus_bits,
            n: self.ek.n().to_str_radix(16),
            hs: self.hs.to_str_radix(16),
        }
    }

    /// Parses and checks a public key: the size is supported, `N` has exactly that many bits
    /// and is odd, and `h_s` is a unit modulo `N²`.
    pub fn from_json(json: &PublicKeyJson) -> Result<Self, PaillierError> {
        check_size(json.modulus_bits)?;
        let n = from_hex(&json.n, "n")?;
        let hs = from_hex(&json.hs, "hs")?;
        Self::from_parts(n, hs, json.modulus_bits)
    }

    fn from_parts(n: Integer, hs: Integer, modulus_bits: u32) -> Result<Self, PaillierError> {
        if n.significant_bits() != u64::from(modulus_bits) || n.is_even() {
            return Err(PaillierError::InvalidKey(format!(
                "N has {} bits, expected an odd {modulus_bits}-bit modulus",
                n.significant_bits()
            )));
        }
        let ek = EncryptionKey::from_n(n);
        if !hs.in_mult_group_of(ek.nn()) {
            return Err(PaillierError::InvalidKey(
                "h_s is not a unit modulo N²".into(),
            ));
        }
        Ok(Self {
            ek,
            hs,
            modulus_bits,
        })
    }

    /// A fresh DJN randomiser `h_s^α mod N²`. This is the expensive part of encryption and can
    /// be computed ahead of time.
    pub fn randomizer(
        &self,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Integer, PaillierError> {
        let alpha = Integer::random_bits(self.exponent_bits(), rng);
        self.hs
            .pow_mod_ref(&alpha, self.ek.nn())
            .ok_or_else(|| PaillierError::Library("pow_mod undefined".into()))
    }

    /// Encrypts a non-negative big-endian plaintext below `N/2` with a fresh randomiser.
    pub fn encrypt(
        &self,
        plaintext_be: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Ciphertext, PaillierError> {
        let r = self.randomizer(rng)?;
        self.encrypt_with_randomizer(plaintext_be, &r)
    }

    /// Encrypts with a randomiser from [`randomizer`](Self::randomizer). Each randomiser must
    /// be used once only: reusing one links the two ciphertexts.
    pub fn encrypt_with_randomizer(
        &self,
        plaintext_be: &[u8],
        randomizer: &Integer,
    ) -> Result<Ciphertext, PaillierError> {
        let m = Integer::from_bytes_msf(plaintext_be);
        if m.cmp0().is_lt() || &m > self.ek.half_n() {
            return Err(PaillierError::PlaintextRange(format!(
                "{}-bit plaintext does not fit below N/2",
                m.significant_bits()
            )));
        }
        // (1 + N)^m = 1 + mN mod N².
        let a = (Integer::one() + &m * self.ek.n()) % self.ek.nn();
        Ok(Ciphertext((a * randomizer).modulo(self.ek.nn())))
    }

    /// Textbook encryption with a full-size random `r ∈ Z*_N` (fast-paillier's
    /// `encrypt_with_random`), the baseline that DJN randomisers speed up. Same ciphertext
    /// space, same decryption.
    pub fn encrypt_standard(
        &self,
        plaintext_be: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Ciphertext, PaillierError> {
        let m = Integer::from_bytes_msf(plaintext_be);
        if &m > self.ek.half_n() {
            return Err(PaillierError::PlaintextRange(
                "plaintext does not fit below N/2".into(),
            ));
        }
        self.ek
            .encrypt_with_random(rng, &m)
            .map(|(c, _)| Ciphertext(c))
            .map_err(|e| PaillierError::Library(e.to_string()))
    }

    /// Homomorphic addition: `Enc(a) ⊕ Enc(b) = Enc(a + b)`.
    pub fn add(&self, a: &Ciphertext, b: &Ciphertext) -> Result<Ciphertext, PaillierError> {
        self.ek
            .oadd(&a.0, &b.0)
            .map(Ciphertext)
            .map_err(|e| PaillierError::InvalidCiphertext(e.to_string()))
    }

    /// Serialises a ciphertext to exactly [`ciphertext_bytes`](Self::ciphertext_bytes) bytes,
    /// big-endian.
    pub fn ciphertext_to_bytes(&self, c: &Ciphertext) -> Vec<u8> {
        let raw = c.0.to_bytes_msf();
        let mut out = vec![0u8; self.ciphertext_bytes().saturating_sub(raw.len())];
        out.extend_from_slice(&raw);
        out
    }

    /// Parses a ciphertext, checking its length and that it is a unit modulo `N²`.
    pub fn ciphertext_from_bytes(&self, bytes: &[u8]) -> Result<Ciphertext, PaillierError> {
        if bytes.len() != self.ciphertext_bytes() {
            return Err(PaillierError::InvalidCiphertext(format!(
                "{} bytes, expected {}",
                bytes.len(),
                self.ciphertext_bytes()
            )));
        }
        let c = Integer::from_bytes_msf(bytes);
        if !c.in_mult_group_of(self.ek.nn()) {
            return Err(PaillierError::InvalidCiphertext(
                "not a unit modulo N²".into(),
            ));
        }
        Ok(Ciphertext(c))
    }

    /// A short fingerprint of the key (SHA-256 of its JSON form, hex, first 16 bytes).
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(&self.to_json()).unwrap_or_default();
        hex::encode(&crate::sha256(&json)[..16])
    }
}

fn check_size(bits: u32) -> Result<(), PaillierError> {
    if bits == 2048 || bits == 3072 {
        Ok(())
    } else {
        Err(PaillierError::UnsupportedSize(bits))
    }
}

impl SecretKey {
    /// Generates a key with a `modulus_bits`-bit modulus (2048 or 3072). Takes seconds to
    /// minutes: safe primes are rare.
    pub fn generate(
        modulus_bits: u32,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, PaillierError> {
        check_size(modulus_bits)?;
        Self::generate_unchecked(modulus_bits, rng)
    }

    /// Key generation without the size policy, so tests can exercise the same code on small,
    /// insecure sizes. Never use for real data.
    #[doc(hidden)]
    pub fn generate_unchecked(
        modulus_bits: u32,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, PaillierError> {
        loop {
            let p = Integer::generate_safe_prime(rng, modulus_bits / 2);
            let q = Integer::generate_safe_prime(rng, modulus_bits / 2);
            if p == q || (&p * &q).significant_bits() != u64::from(modulus_bits) {
                continue;
            }
            let n = &p * &q;
            let x = Integer::sample_in_mult_group_of(rng, &n);
            let h = (-(x.square()) % &n + &n) % &n;
            let nn = &n * &n;
            let hs = h
                .pow_mod_ref(&n, &nn)
                .ok_or_else(|| PaillierError::Library("pow_mod undefined".into()))?;
            return Self::from_parts(p, q, hs, modulus_bits);
        }
    }

    fn from_parts(
        p: Integer,
        q: Integer,
        hs: Integer,
        modulus_bits: u32,
    ) -> Result<Self, PaillierError> {
        let dk = DecryptionKey::from_primes(p, q)
            .map_err(|e| PaillierError::InvalidKey(e.to_string()))?;
        let public = PublicKey::from_parts(dk.n().clone(), hs, modulus_bits)?;
        Ok(Self { dk, public })
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Decrypts to a non-negative big-endian plaintext below `N/2`.
    pub fn decrypt(&self, c: &Ciphertext) -> Result<Vec<u8>, PaillierError> {
        let m = self
            .dk
            .decrypt(&c.0)
            .map_err(|e| PaillierError::InvalidCiphertext(e.to_string()))?;
        if m.cmp0().is_lt() {
            return Err(PaillierError::PlaintextRange(
                "decrypted value is negative: the sum overflowed N/2".into(),
            ));
        }
        Ok(m.to_bytes_msf())
    }

    /// The JSON form (the primes): handle as a secret.
    pub fn to_json(&self, label: &str) -> SecretKeyJson {
        SecretKeyJson {
            label: label.to_string(),
            modulus_bits: self.public.modulus_bits,
            p: self.dk.p().to_str_radix(16),
            q: self.dk.q().to_str_radix(16),
            hs: self.public.hs.to_str_radix(16),
        }
    }

    /// Loads a key from its JSON form, re-deriving and checking `N`. Sizes below 2048 bits are
    /// refused unless `allow_insecure_size` (tests only).
    pub fn from_json(
        json: &SecretKeyJson,
        allow_insecure_size: bool,
    ) -> Result<Self, PaillierError> {
        if !allow_insecure_size {
            check_size(json.modulus_bits)?;
        }
        let p = from_hex(&json.p, "p")?;
        let q = from_hex(&json.q, "q")?;
        let hs = from_hex(&json.hs, "hs")?;
        Self::from_parts(p, q, hs, json.modulus_bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    pub(crate) fn test_key() -> SecretKey {
        let json: SecretKeyJson =
            serde_json::from_str(include_str!("../testdata/paillier-2048-TEST-ONLY.json"))
                .expect("json");
        SecretKey::from_json(&json, false).expect("valid test key")
    }

    fn be(v: u64) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    fn to_u64(b: &[u8]) -> u64 {
        b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
    }

    #[test]
    fn homomorphic_addition_of_djn_ciphertexts() {
        let sk = test_key();
        let pk = sk.public_key();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let a = pk.encrypt(&be(123_456_789), &mut rng).expect("enc");
        // A textbook ciphertext adds to a DJN one: same ciphertext space.
        let b = pk
            .encrypt_standard(&be(987_654_321), &mut rng)
            .expect("enc");
        let c = pk.add(&a, &b).expect("add");
        assert_eq!(
            to_u64(&sk.decrypt(&c).expect("dec")),
            123_456_789 + 987_654_321
        );
        assert_eq!(to_u64(&sk.decrypt(&a).expect("dec")), 123_456_789);
        // Fresh randomness: equal plaintexts give different ciphertexts.
        let a2 = pk.encrypt(&be(123_456_789), &mut rng).expect("enc");
        assert_ne!(a, a2);
    }

    #[test]
    fn large_plaintexts_near_half_n_round_trip_and_beyond_are_refused() {
        let sk = test_key();
        let pk = sk.public_key();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut big = vec![0u8; 256];
        big[0] = 0x3f; // below 2^2046
        big[255] = 7;
        let c = pk.encrypt(&big, &mut rng).expect("enc");
        let back = sk.decrypt(&c).expect("dec");
        assert_eq!(back, big);
        let too_big = vec![0xffu8; 256];
        assert!(matches!(
            pk.encrypt(&too_big, &mut rng),
            Err(PaillierError::PlaintextRange(_))
        ));
    }

    #[test]
    fn ciphertext_codec_is_strict() {
        let sk = test_key();
        let pk = sk.public_key();
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let c = pk.encrypt(&be(5), &mut rng).expect("enc");
        let bytes = pk.ciphertext_to_bytes(&c);
        assert_eq!(bytes.len(), 512);
        assert_eq!(pk.ciphertext_from_bytes(&bytes).expect("parse"), c);
        assert_eq!(
            pk.ciphertext_to_bytes(&pk.ciphertext_from_bytes(&bytes).expect("parse")),
            bytes
        );
        assert!(pk.ciphertext_from_bytes(&bytes[1..]).is_err());
        assert!(pk.ciphertext_from_bytes(&[0u8; 512]).is_err());
        assert!(pk.ciphertext_from_bytes(&[0xffu8; 512]).is_err());
    }

    #[test]
    fn public_key_json_round_trip_and_validation() {
        let pk = test_key().public_key().clone();
        let json = pk.to_json();
        let back = PublicKey::from_json(&json).expect("valid");
        assert_eq!(back.to_json(), json);
        let mut bad = json.clone();
        bad.modulus_bits = 1024;
        assert!(PublicKey::from_json(&bad).is_err());
        let mut bad = json.clone();
        bad.n = "ff".into();
        assert!(PublicKey::from_json(&bad).is_err());
        let mut bad = json;
        bad.hs = "zz".into();
        assert!(PublicKey::from_json(&bad).is_err());
    }

    #[test]
    fn key_generation_produces_a_working_key_of_the_requested_size() {
        // Small insecure size so the test runs in seconds; the same code path makes real keys.
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let sk = SecretKey::generate_unchecked(512, &mut rng).expect("keygen");
        let pk = sk.public_key();
        assert_eq!(pk.modulus_bits(), 512);
        let a = pk.encrypt(&be(40), &mut rng).expect("enc");
        let b = pk.encrypt(&be(2), &mut rng).expect("enc");
        assert_eq!(
            to_u64(&sk.decrypt(&pk.add(&a, &b).expect("add")).expect("dec")),
            42
        );
        // The policy refuses insecure sizes.
        assert_eq!(
            SecretKey::generate(1024, &mut rng).expect_err("refused"),
            PaillierError::UnsupportedSize(1024)
        );
        assert!(SecretKey::from_json(&sk.to_json("t"), false).is_err());
        assert!(SecretKey::from_json(&sk.to_json("t"), true).is_ok());
    }

    #[test]
    fn secret_key_debug_hides_the_primes() {
        let sk = test_key();
        let shown = format!("{sk:?} {:?}", sk.to_json("x"));
        assert!(!shown.contains(&sk.to_json("x").p));
    }
}
