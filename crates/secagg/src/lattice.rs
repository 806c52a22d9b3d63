//! The `lattice` scheme: each owner packs its encoded update into the 4096 SIMD slots of BFV
//! plaintexts and encrypts them under the key holder's public key
//! ([`confide_crypto::lattice`] has the parameters and their security level). The coordinator
//! checks each ciphertext's form and relays the signed contributions; the key holder verifies
//! them itself, adds them and decrypts only the sum, exactly as under `paillier`
//! ([`crate::keyholder`]).

use confide_crypto::lattice::decode_sum;
use confide_crypto::{LatticeCiphertext, LatticeEncryptor, LatticeParams, LatticePublicKey};

use crate::scheme::{
    AggregationClient, Reject, Rejection, SchemeError, SchemeParams, frame, unframe,
};

/// The BFV parameters a job uses under `lattice`.
pub fn lattice_params(params: &SchemeParams) -> Result<LatticeParams, SchemeError> {
    LatticeParams::for_job(&params.fixed, params.owners)
        .map_err(|e| SchemeError::Crypto(e.to_string()))
}

/// Parses a `lattice` payload into ciphertexts, with the rule that refused it.
pub fn parse_lattice_payload(
    pk: &LatticePublicKey,
    len: usize,
    payload: &[u8],
) -> Result<Vec<LatticeCiphertext>, Rejection> {
    unframe(
        payload,
        LatticeParams::ciphertexts_for(len),
        pk.ciphertext_bytes(),
    )?
    .into_iter()
    .enumerate()
    .map(|(i, b)| {
        pk.parse_ciphertext(b)
            .map_err(|e| Rejection::new(Reject::Malformed, format!("ciphertext {i}: {e}")))
    })
    .collect()
}

/// Serialises decrypted slots for the wire: each plaintext as its 4096 slots, `u64` big-endian.
pub fn slots_to_bytes(slots: &[u64]) -> Vec<u8> {
    slots.iter().flat_map(|s| s.to_be_bytes()).collect()
}

/// `lattice` client: encrypts the encoded update under the key holder's BFV public key.
#[derive(Debug)]
pub struct LatticeClient {
    enc: LatticeEncryptor,
}

impl LatticeClient {
    /// A client. `seed` must come from a CSPRNG (the caller's `OsRng`): it seeds the ChaCha20
    /// generator of the encryption randomness.
    pub fn new(pk: LatticePublicKey, seed: [u8; 32]) -> Self {
        Self {
            enc: LatticeEncryptor::new(pk, seed),
        }
    }
}

impl AggregationClient for LatticeClient {
    fn start(&mut self, encoded: &[i64]) -> Result<Vec<u8>, SchemeError> {
        let cts = self
            .enc
            .encrypt(encoded)
            .map_err(|e| SchemeError::Crypto(e.to_string()))?;
        Ok(frame(cts.len(), cts.into_iter().flatten()))
    }
    fn on_broadcast(&mut self, _: u32, _: &[u8]) -> Result<Vec<u8>, SchemeError> {
        Err(SchemeError::Misuse("`lattice` has a single stage".into()))
    }
}

/// Reads decrypted `lattice` plaintexts (each 4096 slots, `u64` big-endian) back into the signed
/// sums of `len` coordinates over `contributions` owners.
pub fn decode_lattice_sum(
    pk: &LatticePublicKey,
    plaintexts: &[Vec<u8>],
    len: usize,
    contributions: usize,
) -> Result<Vec<i128>, SchemeError> {
    let width = confide_crypto::lattice::DEGREE * 8;
    if let Some(p) = plaintexts.iter().find(|p| p.len() != width) {
        return Err(SchemeError::BadExternal(format!(
            "a decrypted plaintext has {} bytes, not {width}",
            p.len()
        )));
    }
    let slots: Vec<Vec<u64>> = plaintexts
        .iter()
        .map(|p| {
            p.chunks_exact(8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                .collect()
        })
        .collect();
    decode_sum(pk.params(), &slots, len, contributions)
        .map_err(|e| SchemeError::BadExternal(e.to_string()))
}
