//! Additive aggregation with BFV (Brakerski 2012; Fan & Vercauteren, ePrint 2012/144), through
//! the `fhe` crate (fhe.rs, version 0.1: not audited, so the parameters are checked here).
//!
//! # Parameters
//! - Ring degree `n = 4096`, so one ciphertext packs 4096 coordinates in its SIMD slots.
//! - Ciphertext modulus `q = q₁·q₂`, the two largest 45-bit primes `≡ 1 (mod 2n)` (what fhe's
//!   builder generates for `set_moduli_sizes(&[45, 45])`; [`MODULI`]): `log₂ q = 90`.
//! - Secret and errors from the centred binomial distribution of variance 10 (fhe's default;
//!   σ ≈ 3.16, the HE standard's σ = 3.2).
//! - Plaintext modulus `t`: the largest prime `≡ 1 (mod 2n)` below `2^b`, where `b` is the
//!   smallest width whose centred range holds every possible sum (`2·owners·M < t`), so sums
//!   never wrap.
//!
//! # Security level
//! The Homomorphic Encryption Security Standard (Albrecht et al., HomomorphicEncryption.org,
//! November 2018, Table 1, classical attacks) allows at most `log₂ q = 111` for 128-bit
//! security at `n = 4096` when the secret follows the error distribution, as fhe's does (CBD of
//! variance 10), and 109 for ternary secrets; 77 (75) for 192-bit and 60 (58) for 256-bit. Our `log₂ q = 90` is below the 128-bit bound (and above the 192-bit one):
//! the parameters reach the 128-bit level. Only additions are performed, so `q` only needs room
//! for the plaintext modulus and the noise, which [`LatticeParams::for_job`] checks.
//!
//! # Correctness bound
//! fhe encodes a plaintext `m` as exactly `⌊q·m/t⌋` (it multiplies `m·(q mod t) mod t` by
//! `(−t)⁻¹ mod q`), so a sum of `K` ciphertexts decrypts to the sum modulo `t` even when slots
//! wrap, with less than 1 of rounding per ciphertext. A fresh public-key encryption adds noise
//! of at most `2·n·B² + B`, where `B = 20` bounds the binomial samples (40 coin flips). The
//! sum is exact while `K·(2nB² + B + 1) < Δ/2` with `Δ = ⌊q/t⌋`; a job whose owners could break
//! that is refused, never decrypted wrongly. At breast_homo's encoding (`t < 2^30`) the bound
//! allows about 1.8·10^11 owners; at the widest accepted `t < 2^44`, about 10^7.

use std::sync::Arc;

use fhe::bfv::{BfvParameters, BfvParametersBuilder, Ciphertext, Encoding, Plaintext};
use fhe_traits::{
    DeserializeParametrized, FheDecoder, FheDecrypter, FheEncoder, FheEncrypter, Serialize,
};
use rand_chacha09::ChaCha20Rng;
use rand_chacha09::rand_core::SeedableRng;

use crate::encoding::FixedPoint;

/// The ring degree: SIMD slots per ciphertext.
pub const DEGREE: usize = 4096;
/// The ciphertext moduli: the two largest 45-bit primes `≡ 1 (mod 2·4096)`.
pub const MODULI: [u64; 2] = [0x1fff_fffc_e001, 0x1fff_fffa_2001];
/// Widest centred sum accepted, in bits: `t < 2^44` stays below both moduli, which fhe's
/// arithmetic assumes without checking it.
pub const MAX_PLAINTEXT_BITS: u32 = 43;
/// Bound on a centred-binomial sample of variance 10.
const CBD_BOUND: u128 = 20;

/// Errors of the lattice scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LatticeError {
    /// The job's encoding or owner count does not fit the parameters.
    #[error("lattice parameters: {0}")]
    Parameters(String),
    /// An encoded value lies outside `±M`.
    #[error("value {index} is {value}, outside the encoding range ±{max}")]
    OutOfRange {
        /// Coordinate.
        index: usize,
        /// Value.
        value: i64,
        /// `M`.
        max: u64,
    },
    /// A key or ciphertext does not decode, or is not in canonical form.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Key or ciphertext.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A public key made for other parameters.
    #[error("the public key is for other parameters than the job's: {0}")]
    WrongParameters(String),
    /// A decrypted slot is larger than the declared contributions can sum to.
    #[error(
        "slot {slot} decrypts to {value}, beyond what {contributions} contributions can sum to"
    )]
    SlotOverflow {
        /// Slot index.
        slot: usize,
        /// The centred value.
        value: i128,
        /// Contributions declared.
        contributions: usize,
    },
    /// The library failed.
    #[error("BFV: {0}")]
    Library(String),
}

fn lib(e: impl std::fmt::Display) -> LatticeError {
    LatticeError::Library(e.to_string())
}

/// The BFV parameters of one job, derived from its encoding and owner count alone, so that the
/// key holder and every owner derive the same ones.
#[derive(Debug, Clone)]
pub struct LatticeParams {
    par: Arc<BfvParameters>,
    t: u64,
    max_abs: u64,
    owners: usize,
}

/// The largest prime `p < 2^bits` with `p ≡ 1 (mod 2·DEGREE)` (needed for SIMD packing).
fn plaintext_prime(bits: u32) -> Option<u64> {
    let step = 2 * DEGREE as u64;
    let top = (1u64 << bits) - 1;
    let mut p = top - (top - 1) % step;
    while p > step {
        if fhe_util::is_prime(p) {
            return Some(p);
        }
        p -= step;
    }
    None
}

impl LatticeParams {
    /// Parameters for a job: its fixed-point encoding and the number of owners it authorises.
    /// Refuses configurations whose sums could wrap or whose noise could exceed the bound.
    pub fn for_job(fixed: &FixedPoint, owners: usize) -> Result<Self, LatticeError> {
        if owners == 0 {
            return Err(LatticeError::Parameters("needs at least one owner".into()));
        }
        let max_abs = fixed.max_abs();
        // Every sum lies in [-owners·M, owners·M]; the centred range of t must hold it.
        let span = 2 * owners as u128 * max_abs as u128 + 1;
        // No NTT prime lies below 2^15 (8193, 16385 and 24577 are composite): 15 bits at least.
        let bits = (128 - span.leading_zeros()).max(15);
        if bits > MAX_PLAINTEXT_BITS {
            return Err(LatticeError::Parameters(format!(
                "sums of {owners} owners at ±{max_abs} span {bits} bits, more than the {MAX_PLAINTEXT_BITS} a plaintext modulus below the ciphertext moduli holds: lower encoding.scale_bits or encoding.clip"
            )));
        }
        let t = plaintext_prime(bits + 1)
            .filter(|t| u128::from(*t) > span && MODULI.iter().all(|q| t < q))
            .ok_or_else(|| LatticeError::Parameters(format!("no {bits}-bit NTT prime")))?;
        let q: u128 = MODULI.iter().map(|m| u128::from(*m)).product();
        let delta = q / u128::from(t);
        let fresh = 2 * DEGREE as u128 * CBD_BOUND * CBD_BOUND + CBD_BOUND;
        let worst = owners as u128 * (fresh + 1);
        if worst >= delta / 2 {
            return Err(LatticeError::Parameters(format!(
                "the noise of {owners} summed ciphertexts could reach {worst}, above the decryption bound {}: fewer owners or a narrower encoding",
                delta / 2
            )));
        }
        let par = BfvParametersBuilder::new()
            .set_degree(DEGREE)
            .set_plaintext_modulus(t)
            .set_moduli(&MODULI)
            .build_arc()
            .map_err(lib)?;
        Ok(Self {
            par,
            t,
            max_abs,
            owners,
        })
    }

    /// The plaintext modulus.
    pub fn plaintext_modulus(&self) -> u64 {
        self.t
    }

    /// Ciphertexts needed for `len` coordinates.
    pub fn ciphertexts_for(len: usize) -> usize {
        len.div_ceil(DEGREE)
    }

    /// `log₂ q`, rounded up.
    pub fn log_q() -> u32 {
        MODULI.iter().map(|m| 64 - m.leading_zeros()).sum()
    }

    /// A description for reports and the README.
    pub fn describe(&self) -> String {
        format!(
            "BFV n={DEGREE}, log2 q={} ({} moduli), t={} ({} bits), CBD variance 10",
            Self::log_q(),
            MODULI.len(),
            self.t,
            64 - self.t.leading_zeros()
        )
    }

    fn same_as(&self, degree: usize, moduli: &[u64], t: u64) -> Result<(), LatticeError> {
        if degree != DEGREE || moduli != MODULI || t != self.t {
            return Err(LatticeError::WrongParameters(format!(
                "degree {degree}, moduli {moduli:?}, t {t}; the job needs degree {DEGREE}, moduli {MODULI:?}, t {}",
                self.t
            )));
        }
        Ok(())
    }
}

/// The key holder's BFV secret key.
pub struct LatticeSecretKey {
    params: LatticeParams,
    sk: fhe::bfv::SecretKey,
    public: LatticePublicKey,
}

impl std::fmt::Debug for LatticeSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatticeSecretKey(***, {})", self.public.fingerprint())
    }
}

impl LatticeSecretKey {
    /// A fresh key pair. `seed` must come from a CSPRNG; it seeds ChaCha20 for the secret and the
    /// public key's error (fhe draws the public key's uniform part from its own generator, so two
    /// keys from one seed share the secret but not the public key).
    pub fn generate(params: LatticeParams, seed: [u8; 32]) -> Result<Self, LatticeError> {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let sk = fhe::bfv::SecretKey::random(&params.par, &mut rng);
        let pk = fhe::bfv::PublicKey::new(&sk, &mut rng);
        let public = LatticePublicKey::from_key(params.clone(), pk)?;
        Ok(Self { params, sk, public })
    }

    /// The key pair that [`LatticeSecretKey::generate`] made from `seed`, with the public key
    /// it published (`public_json`, from [`LatticePublicKey::to_json`]): the secret is drawn
    /// again from the seed's ChaCha20 stream (it is drawn first), and the pair is checked by
    /// encrypting a test vector under the public key and decrypting it. A key holder that
    /// seals only the seed and the public key restores its key this way after a restart.
    pub fn restore(
        params: LatticeParams,
        seed: [u8; 32],
        public_json: &str,
    ) -> Result<Self, LatticeError> {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let sk = fhe::bfv::SecretKey::random(&params.par, &mut rng);
        let public = LatticePublicKey::from_json(public_json, &params)?;
        let key = Self { params, sk, public };
        let probe: Vec<i64> = (1..=16).collect();
        let mut enc = LatticeEncryptor::new(key.public.clone(), [7; 32]);
        let ct = enc.encrypt(&probe)?;
        let first = ct
            .first()
            .ok_or_else(|| LatticeError::Parameters("no ciphertext".into()))?;
        let slots = key.decrypt(&key.public.parse_ciphertext(first)?)?;
        let matches = probe
            .iter()
            .zip(&slots)
            .all(|(a, b)| u64::try_from(*a).ok() == Some(*b));
        if !matches {
            return Err(LatticeError::Parameters(
                "the seed's secret key does not decrypt under this public key".into(),
            ));
        }
        Ok(key)
    }

    /// The public key.
    pub fn public_key(&self) -> &LatticePublicKey {
        &self.public
    }

    /// The parameters.
    pub fn params(&self) -> &LatticeParams {
        &self.params
    }

    /// Decrypts a ciphertext to its slots, each in `[0, t)`.
    pub fn decrypt(&self, ct: &LatticeCiphertext) -> Result<Vec<u64>, LatticeError> {
        let pt: Plaintext = self.sk.try_decrypt(&ct.0).map_err(lib)?;
        Vec::<u64>::try_decode(&pt, Encoding::simd()).map_err(lib)
    }
}

/// A public key, with the parameters it was checked against.
#[derive(Debug, Clone)]
pub struct LatticePublicKey {
    params: LatticeParams,
    pk: fhe::bfv::PublicKey,
    bytes: Vec<u8>,
    ciphertext_bytes: usize,
}

/// The JSON form of a public key, as the key holder publishes it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PublicKeyJson {
    scheme: String,
    degree: usize,
    moduli: Vec<u64>,
    plaintext_modulus: u64,
    public_key: String,
}

impl LatticePublicKey {
    fn from_key(params: LatticeParams, pk: fhe::bfv::PublicKey) -> Result<Self, LatticeError> {
        let bytes = pk.to_bytes();
        // Every valid ciphertext has the size of a fresh one: measure it once.
        let zero = Plaintext::try_encode(&[0u64], Encoding::simd(), &params.par).map_err(lib)?;
        let ct: Ciphertext = pk
            .try_encrypt(&zero, &mut ChaCha20Rng::from_seed([0; 32]))
            .map_err(lib)?;
        Ok(Self {
            ciphertext_bytes: ct.to_bytes().len(),
            params,
            pk,
            bytes,
        })
    }

    /// Parses a published key, requiring exactly the parameters the job derives.
    pub fn from_json(json: &str, params: &LatticeParams) -> Result<Self, LatticeError> {
        let j: PublicKeyJson = serde_json::from_str(json).map_err(|e| LatticeError::Malformed {
            what: "public key",
            detail: e.to_string(),
        })?;
        if j.scheme != "bfv" {
            return Err(LatticeError::WrongParameters(format!(
                "scheme `{}`, expected `bfv`",
                j.scheme
            )));
        }
        params.same_as(j.degree, &j.moduli, j.plaintext_modulus)?;
        let bytes = hex::decode(&j.public_key).map_err(|e| LatticeError::Malformed {
            what: "public key",
            detail: e.to_string(),
        })?;
        let pk = fhe::bfv::PublicKey::from_bytes(&bytes, &params.par).map_err(|e| {
            LatticeError::Malformed {
                what: "public key",
                detail: e.to_string(),
            }
        })?;
        if pk.to_bytes() != bytes {
            return Err(LatticeError::Malformed {
                what: "public key",
                detail: "not in canonical form".into(),
            });
        }
        // A key whose polynomials are not in NTT form decodes, then makes fhe panic when it is
        // used: try one encryption, and refuse the key rather than crash.
        let params = params.clone();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::from_key(params, pk)))
            .map_err(|_| LatticeError::Malformed {
                what: "public key",
                detail: "its polynomials are not in the NTT form a BFV key has".into(),
            })?
    }

    /// The JSON the key holder publishes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&PublicKeyJson {
            scheme: "bfv".into(),
            degree: DEGREE,
            moduli: MODULI.to_vec(),
            plaintext_modulus: self.params.t,
            public_key: hex::encode(&self.bytes),
        })
        .unwrap_or_default()
    }

    /// SHA-256 of the key's bytes, hex (first 16 bytes), for reports.
    pub fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.bytes);
        hex::encode(&d.as_ref()[..16])
    }

    /// The parameters.
    pub fn params(&self) -> &LatticeParams {
        &self.params
    }

    /// Bytes of every valid ciphertext.
    pub fn ciphertext_bytes(&self) -> usize {
        self.ciphertext_bytes
    }

    /// Parses one ciphertext, requiring the canonical encoding of a two-element ciphertext at
    /// the top level with both polynomials in NTT form (what a fresh public-key encryption
    /// produces). fhe's decoder keeps whatever representation the bytes declare, and adding a
    /// polynomial of another representation panics inside fhe; `Ciphertext::new` refuses them.
    pub fn parse_ciphertext(&self, bytes: &[u8]) -> Result<LatticeCiphertext, LatticeError> {
        let bad = |detail: String| LatticeError::Malformed {
            what: "ciphertext",
            detail,
        };
        if bytes.len() != self.ciphertext_bytes {
            return Err(bad(format!(
                "{} bytes, a ciphertext has {}",
                bytes.len(),
                self.ciphertext_bytes
            )));
        }
        let ct = Ciphertext::from_bytes(bytes, &self.params.par).map_err(|e| bad(e.to_string()))?;
        if ct.len() != 2 || ct.to_bytes() != bytes {
            return Err(bad("not a canonical fresh ciphertext".into()));
        }
        let ct = Ciphertext::new(ct.to_vec(), &self.params.par)
            .map_err(|e| bad(format!("not a two-element NTT-form ciphertext: {e}")))?;
        Ok(LatticeCiphertext(ct))
    }
}

/// A BFV ciphertext that passed [`LatticePublicKey::parse_ciphertext`].
#[derive(Debug, Clone)]
pub struct LatticeCiphertext(Ciphertext);

impl LatticeCiphertext {
    /// Adds another ciphertext (slot-wise, modulo `t`).
    pub fn add_assign(&mut self, other: &LatticeCiphertext) {
        self.0 = &self.0 + &other.0;
    }
}

/// Encrypts encoded updates under a public key.
pub struct LatticeEncryptor {
    pk: LatticePublicKey,
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for LatticeEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LatticeEncryptor({})", self.pk.fingerprint())
    }
}

impl LatticeEncryptor {
    /// An encryptor. `seed` must come from a CSPRNG; it seeds the ChaCha20 generator of the
    /// encryption randomness.
    pub fn new(pk: LatticePublicKey, seed: [u8; 32]) -> Self {
        Self {
            pk,
            rng: ChaCha20Rng::from_seed(seed),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> &LatticePublicKey {
        &self.pk
    }

    /// Encrypts an encoded update (each value within `±M`) into `⌈len/4096⌉` ciphertexts:
    /// a value `e` goes into its slot as `e mod t`.
    pub fn encrypt(&mut self, encoded: &[i64]) -> Result<Vec<Vec<u8>>, LatticeError> {
        let p = &self.pk.params;
        let t = p.t as i64;
        if let Some(index) = encoded.iter().position(|v| v.unsigned_abs() > p.max_abs) {
            return Err(LatticeError::OutOfRange {
                index,
                value: encoded[index],
                max: p.max_abs,
            });
        }
        encoded
            .chunks(DEGREE)
            .map(|chunk| {
                let slots: Vec<u64> = chunk.iter().map(|v| v.rem_euclid(t) as u64).collect();
                let pt = Plaintext::try_encode(&slots, Encoding::simd(), &p.par).map_err(lib)?;
                let ct: Ciphertext = self.pk.pk.try_encrypt(&pt, &mut self.rng).map_err(lib)?;
                Ok(ct.to_bytes())
            })
            .collect()
    }
}

/// Turns decrypted slots of a sum of `contributions` updates back into signed sums of `len`
/// coordinates, refusing any slot beyond `±contributions·M` (a malformed contribution) and
/// non-zero padding.
pub fn decode_sum(
    params: &LatticeParams,
    slots: &[Vec<u64>],
    len: usize,
    contributions: usize,
) -> Result<Vec<i128>, LatticeError> {
    if slots.len() != LatticeParams::ciphertexts_for(len) || slots.iter().any(|s| s.len() != DEGREE)
    {
        return Err(LatticeError::Malformed {
            what: "decrypted sum",
            detail: format!(
                "{} plaintexts, {len} coordinates need {} of {DEGREE} slots",
                slots.len(),
                LatticeParams::ciphertexts_for(len)
            ),
        });
    }
    if contributions > params.owners {
        return Err(LatticeError::Parameters(format!(
            "{contributions} contributions, the parameters hold {}",
            params.owners
        )));
    }
    let t = i128::from(params.t);
    let limit = contributions as i128 * i128::from(params.max_abs);
    let mut out = Vec::with_capacity(len);
    for (slot, &v) in slots.iter().flatten().enumerate() {
        let v = i128::from(v);
        if v >= t {
            return Err(LatticeError::Malformed {
                what: "decrypted sum",
                detail: format!("slot {slot} is {v}, not below t"),
            });
        }
        let centred = if v > t / 2 { v - t } else { v };
        let bound = if slot < len { limit } else { 0 };
        if centred.abs() > bound {
            return Err(LatticeError::SlotOverflow {
                slot,
                value: centred,
                contributions,
            });
        }
        if slot < len {
            out.push(centred);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
