//! The schemes with a key holder (`paillier`, `lattice`): the key holder's public key as
//! owners and the coordinator receive it, and the coordinator's round server, which checks each
//! contribution's ciphertexts and hands the signed contributions to the key holder. The key
//! holder verifies them itself and decrypts only their sum ([`crate::keyholder`]); the
//! coordinator never holds the key.

use std::collections::{BTreeMap, BTreeSet};

use confide_core::SchemeKind;
use confide_crypto::{LatticePublicKey, PackingLayout, PublicKey};

use crate::contribution::VerifiedContribution;
use crate::lattice::{LatticeClient, decode_lattice_sum, lattice_params, parse_lattice_payload};
use crate::scheme::{
    AggregateSum, AggregationClient, AggregationServer, ExternalRequest, ExternalResult,
    PaillierClient, Rejection, RoundContext, SchemeError, SchemeParams, StageResult, admit_stage,
    paillier_layout, parse_paillier_payload, survivors_only,
};

/// The key holder's public key under a scheme that uses one.
#[derive(Debug, Clone)]
pub enum HolderPublicKey {
    /// `paillier`.
    Paillier(PublicKey),
    /// `lattice`.
    Lattice(LatticePublicKey),
}

impl HolderPublicKey {
    /// Parses what the key holder publishes, for a job with these parameters: a Paillier key
    /// must have the job's modulus size, a BFV key exactly the parameters the job derives.
    pub fn parse(
        scheme: SchemeKind,
        json: &str,
        params: &SchemeParams,
        modulus_bits: u32,
    ) -> Result<Self, String> {
        match scheme {
            SchemeKind::Paillier => {
                let parsed: confide_crypto::PublicKeyJson =
                    serde_json::from_str(json).map_err(|e| format!("public key JSON: {e}"))?;
                let pk = PublicKey::from_json(&parsed).map_err(|e| e.to_string())?;
                if pk.modulus_bits() != modulus_bits {
                    return Err(format!(
                        "the key holder's key has {} bits, the job requires {modulus_bits}",
                        pk.modulus_bits()
                    ));
                }
                Ok(Self::Paillier(pk))
            }
            SchemeKind::Lattice => {
                let lp = lattice_params(params).map_err(|e| e.to_string())?;
                LatticePublicKey::from_json(json, &lp)
                    .map(Self::Lattice)
                    .map_err(|e| e.to_string())
            }
            other => Err(format!("`{}` uses no key holder", other.as_str())),
        }
    }

    /// A short fingerprint for reports.
    pub fn fingerprint(&self) -> String {
        match self {
            Self::Paillier(pk) => pk.fingerprint(),
            Self::Lattice(pk) => pk.fingerprint(),
        }
    }

    /// An owner's client. `seed` must come from a CSPRNG.
    pub fn client(
        &self,
        params: &SchemeParams,
        seed: [u8; 32],
    ) -> Result<Box<dyn AggregationClient>, SchemeError> {
        Ok(match self {
            Self::Paillier(pk) => Box::new(PaillierClient::new(pk.clone(), params, seed)?),
            Self::Lattice(pk) => Box::new(LatticeClient::new(pk.clone(), seed)),
        })
    }

    /// The coordinator's server for one round.
    pub fn server(
        &self,
        params: &SchemeParams,
        ctx: RoundContext,
    ) -> Result<Box<dyn AggregationServer>, SchemeError> {
        Ok(match self {
            Self::Paillier(_) | Self::Lattice(_) => {
                Box::new(KeyHolderServer::new(self.clone(), params.clone(), ctx)?)
            }
        })
    }
}

/// The coordinator's server for one round of a key-holder scheme.
#[derive(Debug)]
pub struct KeyHolderServer {
    key: HolderPublicKey,
    /// The packing layout under `paillier`.
    layout: Option<PackingLayout>,
    params: SchemeParams,
    ctx: RoundContext,
    closed: bool,
    got: BTreeMap<String, VerifiedContribution>,
    pending: Option<Vec<String>>,
}

impl KeyHolderServer {
    /// A server for one round.
    pub fn new(
        key: HolderPublicKey,
        params: SchemeParams,
        ctx: RoundContext,
    ) -> Result<Self, SchemeError> {
        let layout = match &key {
            HolderPublicKey::Paillier(pk) => Some(paillier_layout(&params, pk.modulus_bits())?),
            HolderPublicKey::Lattice(_) => None,
        };
        Ok(Self {
            key,
            layout,
            params,
            ctx,
            closed: false,
            got: BTreeMap::new(),
            pending: None,
        })
    }

    /// Checks that a payload holds exactly the well-formed ciphertexts the model needs.
    fn check(&self, payload: &[u8]) -> Result<(), Rejection> {
        let len = self.params.len;
        match (&self.key, &self.layout) {
            (HolderPublicKey::Paillier(pk), Some(layout)) => {
                parse_paillier_payload(pk, layout, len, payload).map(drop)
            }
            (HolderPublicKey::Paillier(_), None) => Err(Rejection::new(
                crate::Reject::Malformed,
                "no packing layout",
            )),
            (HolderPublicKey::Lattice(pk), _) => parse_lattice_payload(pk, len, payload).map(drop),
        }
    }
}

impl AggregationServer for KeyHolderServer {
    fn kind(&self) -> SchemeKind {
        match self.key {
            HolderPublicKey::Paillier(_) => SchemeKind::Paillier,
            HolderPublicKey::Lattice(_) => SchemeKind::Lattice,
        }
    }
    fn stage(&self) -> u32 {
        0
    }
    fn accept(&mut self, c: VerifiedContribution) -> Result<(), Rejection> {
        admit_stage(c.get(), &self.ctx, 0, self.closed, &self.got)?;
        self.check(&c.get().payload)?;
        self.got.insert(c.get().owner.clone(), c);
        Ok(())
    }
    fn accepted(&self) -> BTreeSet<String> {
        self.got.keys().cloned().collect()
    }
    fn close_stage(&mut self, survivors: &BTreeSet<String>) -> Result<StageResult, SchemeError> {
        self.closed = true;
        survivors_only(&mut self.got, survivors, self.params.min_owners)?;
        self.pending = Some(self.got.keys().cloned().collect());
        Ok(StageResult::External(ExternalRequest::Unseal {
            round: self.ctx.round,
            contributions: self.got.values().map(|c| c.get().clone()).collect(),
        }))
    }
    fn finish(&mut self, result: ExternalResult) -> Result<AggregateSum, SchemeError> {
        let contributors = self
            .pending
            .take()
            .ok_or_else(|| SchemeError::Misuse("finish before close_stage".into()))?;
        let ExternalResult::Unsealed(plaintexts) = result else {
            return Err(SchemeError::Misuse(
                "a key-holder round finishes with the key holder's plaintexts".into(),
            ));
        };
        let (len, k) = (self.params.len, contributors.len());
        let sums = match (&self.key, &self.layout) {
            (HolderPublicKey::Paillier(_), Some(layout)) => layout
                .unpack_sum(&plaintexts, len, k)
                .map_err(|e| SchemeError::BadExternal(e.to_string()))?,
            (HolderPublicKey::Lattice(pk), _) => decode_lattice_sum(pk, &plaintexts, len, k)?,
            (HolderPublicKey::Paillier(_), None) => {
                return Err(SchemeError::Misuse("no packing layout".into()));
            }
        };
        Ok(AggregateSum {
            sums,
            contributors,
            rejected: Vec::new(),
            faulty: Vec::new(),
        })
    }
}
