//! Envelopes round-trip at every size around the chunk boundary, and every structural attack
//! on the stream (truncation, reordering, splicing, appending, header edits) fails.

use super::*;

const CHUNK: usize = 64;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn seal_bytes(key: &RecipientKey, context: &[u8], plain: &[u8]) -> (Vec<u8>, EnvelopeSummary) {
    let mut out = Vec::new();
    let summary = seal(
        &key.public_bytes(),
        context,
        CHUNK,
        &mut &plain[..],
        &mut out,
    )
    .expect("seal");
    (out, summary)
}

fn open_bytes(
    key: &RecipientKey,
    envelope: &[u8],
) -> Result<(Vec<u8>, EnvelopeSummary), EnvelopeError> {
    let mut out = Vec::new();
    let summary = open(key, &mut &envelope[..], &mut out)?;
    Ok((out, summary))
}

/// The offsets of each chunk record (its length field) in an envelope.
fn records(envelope: &[u8]) -> Vec<(usize, usize)> {
    let context_len = u16::from_be_bytes([envelope[14], envelope[15]]) as usize;
    let mut at = 16 + context_len + ENC_LEN;
    let mut out = Vec::new();
    while at < envelope.len() {
        let len = u32::from_be_bytes(envelope[at..at + 4].try_into().expect("4")) as usize;
        out.push((at, 4 + len));
        at += 4 + len;
    }
    out
}

#[test]
fn round_trips_at_every_size_around_the_chunk_boundary() {
    let key = RecipientKey::generate();
    for len in [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK,
        3 * CHUNK + CHUNK / 2,
    ] {
        let plain = data(len);
        let (env, sealed) = seal_bytes(&key, b"job=j dataset=d", &plain);
        let (back, opened) = open_bytes(&key, &env).expect("open");
        assert_eq!(back, plain, "len {len}");
        assert_eq!(sealed, opened, "len {len}");
        assert_eq!(sealed.id, content_id(&env));
        assert_eq!(sealed.envelope_bytes, env.len() as u64);
        assert_eq!(sealed.plaintext_bytes, len as u64);
        assert_eq!(
            sealed.chunks,
            (len.div_ceil(CHUNK)).max(1) as u64,
            "len {len}"
        );
        assert_eq!(opened.context, b"job=j dataset=d");
    }
    // Fresh randomness: the same input gives another envelope and id.
    let (a, sa) = seal_bytes(&key, b"", &data(10));
    let (b, sb) = seal_bytes(&key, b"", &data(10));
    assert_ne!(a, b);
    assert_ne!(sa.id, sb.id);
}

#[test]
fn another_key_or_an_altered_byte_fails() {
    let key = RecipientKey::generate();
    let (env, _) = seal_bytes(&key, b"ctx", &data(3 * CHUNK));
    assert!(matches!(
        open_bytes(&RecipientKey::generate(), &env),
        Err(EnvelopeError::Chunk(0))
    ));
    // Every byte after the magic and suite matters.
    for i in 10..env.len() {
        let mut bad = env.clone();
        bad[i] ^= 0x01;
        assert!(open_bytes(&key, &bad).is_err(), "byte {i} flipped");
    }
    let mut magic = env.clone();
    magic[0] ^= 1;
    assert!(matches!(
        open_bytes(&key, &magic),
        Err(EnvelopeError::Header(_))
    ));
    // The context is authenticated: same length, other bytes.
    let mut ctx = env.clone();
    ctx[16] = b'X';
    assert!(open_bytes(&key, &ctx).is_err());
    // A key pair survives its byte form.
    let again = RecipientKey::from_secret_bytes(&key.secret_bytes()).expect("key");
    assert_eq!(again.public_bytes(), key.public_bytes());
    assert!(open_bytes(&again, &env).is_ok());
}

#[test]
fn truncation_reordering_splicing_and_appending_fail() {
    let key = RecipientKey::generate();
    let plain = data(4 * CHUNK);
    let (env, _) = seal_bytes(&key, b"ctx", &plain);
    let recs = records(&env);
    assert_eq!(recs.len(), 4);
    // Cut at a chunk boundary: the last chunk present was not sealed as final.
    for (keep, &(at, _)) in recs.iter().enumerate().skip(1) {
        let err = open_bytes(&key, &env[..at]).expect_err("cut");
        assert!(
            matches!(err, EnvelopeError::Chunk(i) if i == keep as u64 - 1),
            "{err}"
        );
    }
    // Cut inside a chunk, and right after the header.
    let err = open_bytes(&key, &env[..env.len() - 3]).expect_err("cut inside");
    assert!(matches!(err, EnvelopeError::Truncated(_)), "{err}");
    let err = open_bytes(&key, &env[..recs[0].0]).expect_err("no chunk");
    assert!(matches!(err, EnvelopeError::Truncated(_)), "{err}");
    // Two chunks swapped.
    let (a, la) = recs[1];
    let (b, lb) = recs[2];
    let mut swapped = env[..a].to_vec();
    swapped.extend(&env[b..b + lb]);
    swapped.extend(&env[a..a + la]);
    swapped.extend(&env[b + lb..]);
    assert!(matches!(
        open_bytes(&key, &swapped),
        Err(EnvelopeError::Chunk(1))
    ));
    // A chunk dropped from the middle, and one repeated.
    let mut dropped = env[..a].to_vec();
    dropped.extend(&env[a + la..]);
    assert!(matches!(
        open_bytes(&key, &dropped),
        Err(EnvelopeError::Chunk(1))
    ));
    let mut repeated = env[..b].to_vec();
    repeated.extend(&env[a..a + la]);
    repeated.extend(&env[b..]);
    assert!(matches!(
        open_bytes(&key, &repeated),
        Err(EnvelopeError::Chunk(2))
    ));
    // A chunk spliced in from another envelope to the same recipient.
    let (other, _) = seal_bytes(&key, b"ctx", &plain);
    let orecs = records(&other);
    let mut spliced = env[..a].to_vec();
    spliced.extend(&other[orecs[1].0..orecs[1].0 + orecs[1].1]);
    spliced.extend(&env[a + la..]);
    assert!(matches!(
        open_bytes(&key, &spliced),
        Err(EnvelopeError::Chunk(1))
    ));
    // Appending a chunk after the final one: the final chunk is then opened as not final.
    let (last, llast) = recs[3];
    let mut appended = env.clone();
    appended.extend(&env[last..last + llast]);
    assert!(matches!(
        open_bytes(&key, &appended),
        Err(EnvelopeError::Chunk(3))
    ));
}

#[test]
fn bad_parameters_are_refused_with_a_reason() {
    let key = RecipientKey::generate();
    let mut out = Vec::new();
    assert!(matches!(
        seal(&key.public_bytes(), b"", 0, &mut &b"x"[..], &mut out),
        Err(EnvelopeError::Key(_))
    ));
    assert!(matches!(
        seal(&[1u8; 5], b"", 16, &mut &b"x"[..], &mut out),
        Err(EnvelopeError::Key(_))
    ));
    assert!(matches!(
        seal(
            &key.public_bytes(),
            &[0u8; MAX_CONTEXT + 1],
            16,
            &mut &b"x"[..],
            &mut out
        ),
        Err(EnvelopeError::Key(_))
    ));
    // A header declaring a huge chunk, or a record longer than the chunk size, is refused
    // before any allocation of that size.
    let (env, _) = seal_bytes(&key, b"", &data(10));
    let mut huge = env.clone();
    huge[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        open_bytes(&key, &huge),
        Err(EnvelopeError::Header(_))
    ));
    let mut long = env.clone();
    let (at, _) = records(&env)[0];
    long[at..at + 4].copy_from_slice(&((CHUNK + TAG_LEN + 1) as u32).to_be_bytes());
    assert!(matches!(
        open_bytes(&key, &long),
        Err(EnvelopeError::Header(_))
    ));
    assert!(matches!(
        open_bytes(&key, b"short"),
        Err(EnvelopeError::Truncated(_))
    ));
}
