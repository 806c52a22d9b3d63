//! Chunked HPKE envelopes: how a data owner encrypts a dataset to an attested trainer's key so
//! that large files stream and the trainer detects any truncation, reordering or splicing.
//!
//! - **Encryption**: HPKE (RFC 9180) in base mode with DHKEM(X25519, HKDF-SHA256),
//!   HKDF-SHA256 and ChaCha20-Poly1305, from the `hpke` crate. One HPKE context per envelope;
//!   its `info` is a domain label followed by the envelope's header, so the header (format,
//!   chunk size and the owner's context string, e.g. the job and dataset names) is bound into
//!   the key schedule.
//! - **Chunks**, as in the STREAM construction (Hoang, Reyhanitabar, Rogaway & Vizár, "Online
//!   Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015, §7): the
//!   plaintext is cut into chunks of `chunk_size` bytes, each sealed with the context's
//!   sequence-numbered nonce and with associated data `SHA-256(header) ‖ u64 index ‖ final
//!   flag`. A dropped, repeated or reordered chunk fails its tag (the index differs), a stream
//!   cut at a chunk boundary fails because the last chunk present was not sealed as final, a
//!   chunk appended after the final one fails because the final chunk is then opened as not
//!   final, and a chunk from another envelope fails because its key differs.
//! - **Content address**: an envelope's id is `sha256:` and the hex SHA-256 of its bytes, so
//!   the untrusted host can store and name it, and the audit log can record it, without being
//!   able to read it.
//!
//! Format: `MAGIC ‖ u16 suite ‖ u32 chunk_size ‖ u16 context length ‖ context ‖ enc (32)`,
//! then per chunk `u32 length ‖ ciphertext` (at most `chunk_size + 16` bytes). An empty
//! plaintext is one empty final chunk.
//!
//! [`open`] writes each chunk as soon as its tag verifies; an error at a later chunk (a
//! truncated stream, say) therefore leaves a prefix written. Callers must treat the output as
//! garbage unless `open` returns `Ok`.

use std::io::{Read, Write};

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand::RngCore;
use ring::digest::{Context, SHA256};

type Kem = X25519HkdfSha256;

/// The first bytes of every envelope.
pub const MAGIC: &[u8; 8] = b"CFDENV01";
/// The only suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305.
const SUITE: u16 = 1;
/// Bytes of an X25519 encapsulated key.
const ENC_LEN: usize = 32;
/// Bytes of a ChaCha20-Poly1305 tag.
const TAG_LEN: usize = 16;
/// The default chunk: 64 KiB.
pub const DEFAULT_CHUNK: usize = 64 * 1024;
/// The largest chunk an envelope may declare (bounds the memory a reader commits).
pub const MAX_CHUNK: usize = 16 * 1024 * 1024;
/// The longest context string.
pub const MAX_CONTEXT: usize = 4096;

/// What can go wrong with an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Reading or writing failed.
    #[error("envelope I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The header is not an envelope's, or declares unsupported parameters.
    #[error("not a Confide envelope: {0}")]
    Header(String),
    /// A chunk does not authenticate: wrong key, or altered, reordered, spliced or dropped.
    #[error(
        "chunk {0} does not authenticate (wrong recipient key, or the envelope was altered, reordered, spliced or cut)"
    )]
    Chunk(u64),
    /// The stream ends inside a chunk or before any chunk.
    #[error("the envelope is truncated: {0}")]
    Truncated(String),
    /// A key or parameter is unusable.
    #[error("envelope key: {0}")]
    Key(String),
}

/// A recipient's HPKE key pair (X25519).
#[derive(Clone)]
pub struct RecipientKey {
    secret: <Kem as hpke::Kem>::PrivateKey,
    public: <Kem as hpke::Kem>::PublicKey,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RecipientKey(public {}, ***)",
            hex::encode(self.public_bytes())
        )
    }
}

impl RecipientKey {
    /// A fresh key pair from the operating system's generator.
    pub fn generate() -> Self {
        let mut ikm = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut ikm);
        let (secret, public) = Kem::derive_keypair(&ikm);
        Self { secret, public }
    }

    /// The key pair of a 32-byte secret.
    pub fn from_secret_bytes(secret: &[u8]) -> Result<Self, EnvelopeError> {
        let secret = <Kem as hpke::Kem>::PrivateKey::from_bytes(secret)
            .map_err(|e| EnvelopeError::Key(e.to_string()))?;
        let public = Kem::sk_to_pk(&secret);
        Ok(Self { secret, public })
    }

    /// The 32-byte secret (for sealing it; never send it anywhere).
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.secret.to_bytes().to_vec()
    }

    /// The 32-byte public key.
    pub fn public_bytes(&self) -> Vec<u8> {
        self.public.to_bytes().to_vec()
    }
}

/// What sealing or opening an envelope saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeSummary {
    /// `sha256:<hex>` of the envelope's bytes.
    pub id: String,
    /// The envelope's length.
    pub envelope_bytes: u64,
    /// The plaintext's length.
    pub plaintext_bytes: u64,
    /// Chunks.
    pub chunks: u64,
    /// The context string from the header.
    pub context: Vec<u8>,
}

/// The content address of some bytes: `sha256:<hex>`.
pub fn content_id(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&SHA256, bytes))
    )
}

/// The header's bytes up to the encapsulated key.
fn header_prefix(chunk_size: usize, context: &[u8]) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend(SUITE.to_be_bytes());
    h.extend((chunk_size as u32).to_be_bytes());
    h.extend((context.len() as u16).to_be_bytes());
    h.extend(context);
    h
}

fn hpke_info(prefix: &[u8]) -> Vec<u8> {
    let mut info = b"confide/envelope/v1 ".to_vec();
    info.extend(prefix);
    info
}

fn chunk_aad(header_digest: &[u8], index: u64, last: bool) -> Vec<u8> {
    let mut aad = header_digest.to_vec();
    aad.extend(index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Context,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(data)?;
        self.hash.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }
}

/// Encrypts everything `input` yields to `recipient` (a 32-byte X25519 public key), in chunks
/// of `chunk_size` bytes, writing the envelope to `output`. `context` names what is sealed
/// (e.g. the job and the dataset) and is authenticated; the recipient gets it back.
pub fn seal(
    recipient: &[u8],
    context: &[u8],
    chunk_size: usize,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<EnvelopeSummary, EnvelopeError> {
    if !(1..=MAX_CHUNK).contains(&chunk_size) {
        return Err(EnvelopeError::Key(format!(
            "chunk size {chunk_size} is outside 1..={MAX_CHUNK}"
        )));
    }
    if context.len() > MAX_CONTEXT {
        return Err(EnvelopeError::Key(format!(
            "context of {} bytes, at most {MAX_CONTEXT}",
            context.len()
        )));
    }
    let public = <Kem as hpke::Kem>::PublicKey::from_bytes(recipient)
        .map_err(|e| EnvelopeError::Key(e.to_string()))?;
    let prefix = header_prefix(chunk_size, context);
    let (enc, mut ctx) = hpke::setup_sender::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeS::Base,
        &public,
        &hpke_info(&prefix),
    )
    .map_err(|e| EnvelopeError::Key(e.to_string()))?;
    let mut header = prefix;
    header.extend(enc.to_bytes());
    let header_digest = ring::digest::digest(&SHA256, &header);
    let mut out = Hashing {
        inner: output,
        hash: Context::new(&SHA256),
        bytes: 0,
    };
    out.put(&header)?;
    let mut current = vec![0u8; chunk_size];
    let mut next = vec![0u8; chunk_size];
    let mut len = fill(input, &mut current)?;
    let (mut index, mut plaintext_bytes) = (0u64, 0u64);
    loop {
        // A chunk is final when nothing follows it; a full chunk needs a look ahead.
        let next_len = if len == chunk_size {
            fill(input, &mut next)?
        } else {
            0
        };
        let last = next_len == 0;
        let ct = ctx
            .seal(
                &current[..len],
                &chunk_aad(header_digest.as_ref(), index, last),
            )
            .map_err(|e| EnvelopeError::Key(e.to_string()))?;
        out.put(&(ct.len() as u32).to_be_bytes())?;
        out.put(&ct)?;
        plaintext_bytes += len as u64;
        index += 1;
        if last {
            break;
        }
        std::mem::swap(&mut current, &mut next);
        len = next_len;
    }
    out.inner.flush()?;
    Ok(EnvelopeSummary {
        id: format!("sha256:{}", hex::encode(out.hash.finish())),
        envelope_bytes: out.bytes,
        plaintext_bytes,
        chunks: index,
        context: context.to_vec(),
    })
}

/// Reads exactly `buf.len()` bytes, or reports what was being read as truncated.
fn read_exact_or(input: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), EnvelopeError> {
    let got = fill(input, buf)?;
    if got < buf.len() {
        return Err(EnvelopeError::Truncated(format!(
            "{what}: {got} of {} bytes",
            buf.len()
        )));
    }
    Ok(())
}

/// Reads a chunk's length: `None` at a clean end of the stream.
fn read_len(input: &mut impl Read) -> Result<Option<[u8; 4]>, EnvelopeError> {
    let mut len = [0u8; 4];
    match fill(input, &mut len)? {
        0 => Ok(None),
        4 => Ok(Some(len)),
        n => Err(EnvelopeError::Truncated(format!(
            "a chunk length: {n} of 4 bytes"
        ))),
    }
}

/// Decrypts an envelope with the recipient's key, writing the plaintext to `output` (see the
/// module documentation: only an `Ok` means the whole output is authentic and complete).
pub fn open(
    key: &RecipientKey,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<EnvelopeSummary, EnvelopeError> {
    let mut hash = Context::new(&SHA256);
    let mut envelope_bytes = 0u64;
    let mut take = |buf: &[u8]| {
        hash.update(buf);
        envelope_bytes += buf.len() as u64;
    };
    let mut fixed = [0u8; 16];
    read_exact_or(input, &mut fixed, "header")?;
    take(&fixed);
    if &fixed[..8] != MAGIC {
        return Err(EnvelopeError::Header("wrong magic bytes".into()));
    }
    let suite = u16::from_be_bytes([fixed[8], fixed[9]]);
    if suite != SUITE {
        return Err(EnvelopeError::Header(format!("unknown suite {suite}")));
    }
    let chunk_size = u32::from_be_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]) as usize;
    if !(1..=MAX_CHUNK).contains(&chunk_size) {
        return Err(EnvelopeError::Header(format!(
            "chunk size {chunk_size} is outside 1..={MAX_CHUNK}"
        )));
    }
    let context_len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    if context_len > MAX_CONTEXT {
        return Err(EnvelopeError::Header(format!(
            "context of {context_len} bytes, at most {MAX_CONTEXT}"
        )));
    }
    let mut context = vec![0u8; context_len];
    read_exact_or(input, &mut context, "context")?;
    take(&context);
    let mut enc = [0u8; ENC_LEN];
    read_exact_or(input, &mut enc, "encapsulated key")?;
    take(&enc);
    let prefix = header_prefix(chunk_size, &context);
    let mut header = prefix.clone();
    header.extend(enc);
    let header_digest = ring::digest::digest(&SHA256, &header);
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc)
        .map_err(|e| EnvelopeError::Header(format!("encapsulated key: {e}")))?;
    let mut ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &key.secret,
        &enc,
        &hpke_info(&prefix),
    )
    .map_err(|_| EnvelopeError::Chunk(0))?;
    let max_record = chunk_size + TAG_LEN;
    let Some(mut len_bytes) = read_len(input)? else {
        return Err(EnvelopeError::Truncated("no chunk".into()));
    };
    let mut record = Vec::with_capacity(max_record);
    let (mut index, mut plaintext_bytes) = (0u64, 0u64);
    loop {
        take(&len_bytes);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if !(TAG_LEN..=max_record).contains(&len) {
            return Err(EnvelopeError::Header(format!(
                "chunk {index} declares {len} bytes, the envelope's chunks hold {TAG_LEN}..={max_record}"
            )));
        }
        record.resize(len, 0);
        read_exact_or(input, &mut record, &format!("chunk {index}"))?;
        take(&record);
        let following = read_len(input)?;
        let last = following.is_none();
        let pt = ctx
            .open(&record, &chunk_aad(header_digest.as_ref(), index, last))
            .map_err(|_| EnvelopeError::Chunk(index))?;
        // Only the final chunk may be short.
        if !last && pt.len() != chunk_size {
            return Err(EnvelopeError::Chunk(index));
        }
        output.write_all(&pt)?;
        plaintext_bytes += pt.len() as u64;
        index += 1;
        match following {
            Some(l) => len_bytes = l,
            None => break,
        }
    }
    output.flush()?;
    Ok(EnvelopeSummary {
        id: format!("sha256:{}", hex::encode(hash.finish())),
        envelope_bytes,
        plaintext_bytes,
        chunks: index,
        context,
    })
}

#[cfg(test)]
mod tests;
