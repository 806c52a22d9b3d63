//! End-to-end tests of the state machines: owners → coordinator → key holder → sum.

use std::collections::BTreeSet;

use confide_crypto::{FixedPoint, SecretKey, SecretKeyJson, SigningKey};

use crate::contribution::{self, sign_contribution, tests::key, tests::unsigned};
use crate::*;

fn test_key() -> SecretKey {
    let json: SecretKeyJson = serde_json::from_str(include_str!(
        "../../crypto/testdata/paillier-2048-TEST-ONLY.json"
    ))
    .expect("json");
    SecretKey::from_json(&json, false).expect("key")
}

pub(crate) const JOB: [u8; 32] = [9u8; 32];

pub(crate) struct Owner {
    pub(crate) name: String,
    pub(crate) key: SigningKey,
}

pub(crate) fn owners(n: usize) -> Vec<Owner> {
    (0..n)
        .map(|i| Owner {
            name: format!("o{i}"),
            key: key(),
        })
        .collect()
}

pub(crate) fn params(len: usize, owners: usize, min: usize) -> SchemeParams {
    SchemeParams {
        fixed: FixedPoint::new(20, 2.0).expect("fp"),
        len,
        owners,
        min_owners: min,
    }
}

pub(crate) fn updates(n: usize, len: usize) -> Vec<Vec<i64>> {
    let fp = FixedPoint::new(20, 2.0).expect("fp");
    (0..n)
        .map(|o| {
            (0..len)
                .map(|i| fp.encode(((o * 31 + i * 7) % 13) as f32 / 3.0 - 2.1))
                .collect()
        })
        .collect()
}

pub(crate) fn expected_sum(ups: &[Vec<i64>], who: &[usize]) -> Vec<i128> {
    (0..ups[0].len())
        .map(|i| who.iter().map(|&o| i128::from(ups[o][i])).sum())
        .collect()
}

/// A contribution signed by `o` for `round`, trained from round `round`'s test model.
pub(crate) fn signed(o: &Owner, round: u32, payload: Vec<u8>) -> Contribution {
    sign_contribution(&o.key, &JOB, unsigned(&o.name, round, payload))
}

pub(crate) fn verified(o: &Owner, round: u32, payload: Vec<u8>) -> VerifiedContribution {
    contribution::verify(signed(o, round, payload), &o.key.public_key(), &JOB).expect("valid")
}

/// The context of round `round` (its model digest matches `unsigned`'s).
pub(crate) fn ctx(round: u32) -> RoundContext {
    RoundContext {
        round,
        model_digest: model_digest(&[round as f32]),
    }
}

fn no_persist(_: &UnsealRecord) -> Result<(), String> {
    Ok(())
}

pub(crate) fn all(os: &[Owner]) -> BTreeSet<String> {
    os.iter().map(|o| o.name.clone()).collect()
}

fn unsealer(key: impl Into<HolderKey>, os: &[Owner], p: SchemeParams) -> Unsealer {
    Unsealer::new(key.into(), JOB, all(os), p, []).expect("unsealer")
}

pub(crate) fn with_keys(os: &[Owner], cs: Vec<Contribution>) -> Vec<(Contribution, Vec<u8>)> {
    cs.into_iter()
        .map(|c| {
            let k = os
                .iter()
                .find(|o| o.name == c.owner)
                .expect("owner")
                .key
                .public_key()
                .to_vec();
            (c, k)
        })
        .collect()
}

#[test]
fn paillier_round_equals_plain_round_exactly() {
    let sk = test_key();
    let os = owners(3);
    let len = 200; // several plaintexts
    let p = params(len, 3, 2);
    let ups = updates(3, len);

    let mut plain = PlainServer::new(p.clone(), ctx(1));
    let mut server = KeyHolderServer::new(
        HolderPublicKey::Paillier(sk.public_key().clone()),
        p.clone(),
        ctx(1),
    )
    .expect("server");
    for (o, u) in os.iter().zip(&ups) {
        let mut pc = PaillierClient::new(sk.public_key().clone(), &p, [o.name.len() as u8; 32])
            .expect("client");
        server
            .accept(verified(o, 1, pc.start(u).expect("protect")))
            .expect("accept");
        plain
            .accept(verified(o, 1, PlainClient.start(u).expect("protect")))
            .expect("accept");
    }
    let StageResult::Sum(plain_sum) = plain.close_stage(&all(&os)).expect("close") else {
        panic!("plain sums")
    };
    let StageResult::External(ExternalRequest::Unseal {
        round,
        contributions,
    }) = server.close_stage(&all(&os)).expect("close")
    else {
        panic!("paillier needs the key holder")
    };
    let mut ks = unsealer(sk, &os, p);
    let pts = ks
        .unseal(round, with_keys(&os, contributions), no_persist)
        .expect("unseal");
    let sum = server
        .finish(ExternalResult::Unsealed(pts))
        .expect("finish");
    assert_eq!(sum.sums, expected_sum(&ups, &[0, 1, 2]));
    assert_eq!(sum, plain_sum);
}

#[test]
fn dropout_proceeds_with_survivors_and_fails_below_minimum() {
    let sk = test_key();
    let os = owners(3);
    let p = params(10, 3, 2);
    let ups = updates(3, 10);
    let mut server = KeyHolderServer::new(
        HolderPublicKey::Paillier(sk.public_key().clone()),
        p.clone(),
        ctx(1),
    )
    .expect("server");
    for (o, u) in os.iter().zip(&ups) {
        let mut pc = PaillierClient::new(sk.public_key().clone(), &p, [1; 32]).expect("client");
        server
            .accept(verified(o, 1, pc.start(u).expect("protect")))
            .expect("accept");
    }
    // o1 disconnected before the stage closed.
    let survivors: BTreeSet<String> = ["o0".to_string(), "o2".to_string()].into();
    let StageResult::External(ExternalRequest::Unseal {
        round,
        contributions,
    }) = server.close_stage(&survivors).expect("close")
    else {
        panic!("external")
    };
    let mut ks = unsealer(sk, &os, p.clone());
    let pts = ks
        .unseal(round, with_keys(&os, contributions), no_persist)
        .expect("unseal");
    let sum = server
        .finish(ExternalResult::Unsealed(pts))
        .expect("finish");
    assert_eq!(sum.contributors, vec!["o0", "o2"]);
    assert_eq!(sum.sums, expected_sum(&ups, &[0, 2]));

    let mut lonely = PlainServer::new(p, ctx(2));
    lonely
        .accept(verified(&os[0], 2, PlainClient.start(&ups[0]).expect("p")))
        .expect("accept");
    assert_eq!(
        lonely.close_stage(&all(&os)).expect_err("too few"),
        SchemeError::TooFewContributions { got: 1, min: 2 }
    );
}

#[test]
fn server_rejections_carry_their_rule() {
    let sk = test_key();
    let os = owners(2);
    let p = params(40, 2, 2);
    let ups = updates(2, 40);
    let mut server = KeyHolderServer::new(
        HolderPublicKey::Paillier(sk.public_key().clone()),
        p.clone(),
        ctx(2),
    )
    .expect("server");
    let mut pc = PaillierClient::new(sk.public_key().clone(), &p, [3; 32]).expect("client");
    let good = pc.start(&ups[0]).expect("protect");

    // UPD-001: replay of a round-1 contribution into round 2.
    let err = server
        .accept(verified(&os[0], 1, good.clone()))
        .expect_err("replay");
    assert_eq!(err.reason, Reject::WrongRound);
    // UPD-005: a model of another shape (one ciphertext too many).
    let other = params(400, 2, 2);
    let mut pc_other =
        PaillierClient::new(sk.public_key().clone(), &other, [3; 32]).expect("client");
    let wrong = pc_other.start(&updates(1, 400)[0]).expect("protect");
    assert_eq!(
        server
            .accept(verified(&os[0], 2, wrong))
            .expect_err("shape")
            .reason,
        Reject::WrongShape
    );
    // UPD-006: oversized.
    let mut big = good.clone();
    big.extend(vec![0u8; 10_000]);
    assert_eq!(
        server
            .accept(verified(&os[0], 2, big))
            .expect_err("big")
            .reason,
        Reject::Oversized
    );
    // UPD-007: a corrupted ciphertext (zero is not a unit mod N²) and a truncated body.
    let mut zero = good.clone();
    zero[4..4 + 512].fill(0);
    assert_eq!(
        server
            .accept(verified(&os[0], 2, zero))
            .expect_err("bad ct")
            .reason,
        Reject::Malformed
    );
    assert_eq!(
        server
            .accept(verified(&os[0], 2, good[..good.len() - 1].to_vec()))
            .expect_err("short")
            .reason,
        Reject::Malformed
    );
    // Accepted, then UPD-002 for the same owner.
    server
        .accept(verified(&os[0], 2, good.clone()))
        .expect("accept");
    assert_eq!(
        server
            .accept(verified(&os[0], 2, good))
            .expect_err("dup")
            .reason,
        Reject::Duplicate
    );

    // UPD-008: plain values beyond the clip range.
    let mut plain = PlainServer::new(p.clone(), ctx(1));
    let mut vals = ups[1].clone();
    vals[3] = i64::MAX;
    let payload = PlainClient.start(&vals).expect("p");
    assert_eq!(
        plain
            .accept(verified(&os[1], 1, payload))
            .expect_err("range")
            .reason,
        Reject::OutOfRange
    );
    for r in Reject::ALL {
        assert_eq!(Reject::from_code(r as u32), Some(r));
        assert!(r.rule().starts_with("UPD-0"));
    }
}

#[test]
fn key_holder_enforces_its_rules() {
    let sk = test_key();
    let os = owners(3);
    let p = params(30, 3, 2);
    let ups = updates(3, 30);
    let protect = |o: usize, round: u32| {
        let mut pc = PaillierClient::new(sk.public_key().clone(), &p, [5; 32]).expect("client");
        signed(&os[o], round, pc.start(&ups[o]).expect("protect"))
    };
    let cs: Vec<Contribution> = (0..3).map(|o| protect(o, 4)).collect();
    let mut ks = unsealer(sk.clone(), &os, p.clone());

    // KEY-004: one owner alone is never decrypted.
    assert!(matches!(
        ks.unseal(4, with_keys(&os, cs[..1].to_vec()), no_persist),
        Err(UnsealError::TooFew { got: 1, min: 2 })
    ));
    // KEY-003: the same owner twice does not count as two.
    let dup = vec![cs[0].clone(), cs[0].clone()];
    assert!(matches!(
        ks.unseal(4, with_keys(&os, dup), no_persist),
        Err(UnsealError::Duplicate(_))
    ));
    // KEY-001: o1's round-4 contribution relabelled as round 5, beside a genuine round-5 one:
    // only the signature check can catch it.
    let mut moved = cs[1].clone();
    moved.round = 5;
    moved.model_digest = model_digest(&[5.0]);
    let genuine5 = protect(0, 5);
    assert!(matches!(
        ks.unseal(5, with_keys(&os, vec![genuine5, moved]), no_persist),
        Err(UnsealError::BadSignature(o)) if o == "o1"
    ));
    // KEY-001: a valid signature under another key.
    let mut forged = with_keys(&os, cs[..2].to_vec());
    forged[1].1 = key().public_key().to_vec();
    assert!(matches!(
        ks.unseal(4, forged, no_persist),
        Err(UnsealError::BadSignature(_))
    ));
    // KEY-002: an owner the job does not list.
    let stranger = Owner {
        name: "mallory".into(),
        key: key(),
    };
    let sc = signed(&stranger, 4, cs[0].payload.clone());
    let req = vec![
        (cs[0].clone(), os[0].key.public_key().to_vec()),
        (sc, stranger.key.public_key().to_vec()),
    ];
    assert!(matches!(
        ks.unseal(4, req, no_persist),
        Err(UnsealError::NotAnOwner(_))
    ));
    // KEY-006: a malformed ciphertext, validly signed.
    let mut short = cs[1].payload.clone();
    short.truncate(100);
    let broken = signed(&os[1], 4, short);
    assert!(matches!(
        ks.unseal(4, with_keys(&os, vec![cs[0].clone(), broken]), no_persist),
        Err(UnsealError::Malformed { .. })
    ));
    // KEY-007: contributions trained from different models.
    let mut other_model = unsigned("o1", 4, cs[1].payload.clone());
    other_model.model_digest = model_digest(&[42.0]);
    let other_model = sign_contribution(&os[1].key, &JOB, other_model);
    assert!(matches!(
        ks.unseal(
            4,
            with_keys(&os, vec![cs[0].clone(), other_model]),
            no_persist
        ),
        Err(UnsealError::MixedModels)
    ));
    // A failed durable record stops the decryption and leaves nothing marked.
    assert!(matches!(
        ks.unseal(4, with_keys(&os, cs.clone()), |_| Err("disk full".into())),
        Err(UnsealError::Persist(_))
    ));
    assert!(ks.unsealed_rounds().is_empty());
    // A valid request decrypts, and the record names its round and model.
    let mut recorded = None;
    let pts = ks
        .unseal(4, with_keys(&os, cs.clone()), |r| {
            recorded = Some(*r);
            Ok(())
        })
        .expect("unseal");
    assert_eq!(pts.len(), 1);
    let record = recorded.expect("recorded");
    assert_eq!(record.round, 4);
    assert_eq!(record.model_digest, model_digest(&[4.0]));
    assert!(record.contributions.is_some());
    // RES-001: the identical request again (in any order) gets the same sum, and records
    // nothing new...
    let mut reversed = cs.clone();
    reversed.reverse();
    let again = ks
        .unseal(4, with_keys(&os, reversed), |_| {
            Err("a repeat must not record anything".into())
        })
        .expect("the identical request is answered");
    assert_eq!(again, pts);
    // ...also by a key holder restarted from the record.
    let mut restarted =
        Unsealer::new(sk.clone().into(), JOB, all(&os), p.clone(), [record]).expect("unsealer");
    assert_eq!(
        restarted
            .unseal(4, with_keys(&os, cs.clone()), no_persist)
            .expect("answered after a restart"),
        pts
    );
    // A record from before RES-001 names no set: nothing matches it.
    let before_res = UnsealRecord {
        contributions: None,
        ..record
    };
    let mut old =
        Unsealer::new(sk.clone().into(), JOB, all(&os), p.clone(), [before_res]).expect("unsealer");
    assert!(matches!(
        old.unseal(4, with_keys(&os, cs.clone()), no_persist),
        Err(UnsealError::AlreadyUnsealed(4))
    ));
    // A contribution whose payload differs by one byte is another set: refused.
    let mut changed = cs.clone();
    let mut u = unsigned(&os[0].name, 4, cs[0].payload.clone());
    u.model_digest = cs[0].model_digest;
    u.payload = {
        let mut p = u.payload.clone();
        p[0] ^= 1;
        p
    };
    changed[0] = sign_contribution(&os[0].key, &JOB, u);
    assert!(matches!(
        ks.unseal(4, with_keys(&os, changed), no_persist),
        Err(UnsealError::AlreadyUnsealed(4))
    ));
    // KEY-005: never twice for the same round, not even a subset...
    assert!(matches!(
        ks.unseal(4, with_keys(&os, cs[..2].to_vec()), no_persist),
        Err(UnsealError::AlreadyUnsealed(4))
    ));
    // ...nor for another round that reuses the same global model (differencing across rounds).
    let mut same_model: Vec<Contribution> = (0..2)
        .map(|o| {
            let mut u = unsigned(&os[o].name, 6, cs[o].payload.clone());
            u.model_digest = model_digest(&[4.0]);
            sign_contribution(&os[o].key, &JOB, u)
        })
        .collect();
    assert!(matches!(
        ks.unseal(6, with_keys(&os, same_model.clone()), no_persist),
        Err(UnsealError::AlreadyUnsealed(6))
    ));
    // ...nor after a restart: a new key holder loaded with the durable record refuses too.
    let mut restarted = Unsealer::new(sk.into(), JOB, all(&os), p, [record]).expect("unsealer");
    assert!(matches!(
        restarted.unseal(4, with_keys(&os, cs[1..].to_vec()), no_persist),
        Err(UnsealError::AlreadyUnsealed(4))
    ));
    same_model.truncate(2);
    assert!(matches!(
        restarted.unseal(6, with_keys(&os, same_model), no_persist),
        Err(UnsealError::AlreadyUnsealed(6))
    ));
}

#[test]
fn late_and_stale_contributions_are_refused() {
    let os = owners(2);
    let p = params(5, 2, 2);
    let ups = updates(2, 5);
    let mut server = PlainServer::new(p, ctx(3));
    // UPD-010: trained from another model than the round's.
    let mut u = unsigned("o0", 3, PlainClient.start(&ups[0]).expect("p"));
    u.model_digest = model_digest(&[99.0]);
    let stale = contribution::verify(
        sign_contribution(&os[0].key, &JOB, u),
        &os[0].key.public_key(),
        &JOB,
    )
    .expect("valid");
    assert_eq!(
        server.accept(stale).expect_err("stale").reason,
        Reject::StaleModel
    );
    for (o, up) in os.iter().zip(&ups) {
        server
            .accept(verified(o, 3, PlainClient.start(up).expect("p")))
            .expect("accept");
    }
    server.close_stage(&all(&os)).expect("close");
    // UPD-009: a contribution after the stage closed is refused, not silently dropped.
    let late = verified(&os[0], 3, PlainClient.start(&ups[0]).expect("p"));
    assert_eq!(
        server.accept(late).expect_err("late").reason,
        Reject::StageClosed
    );
}

fn lattice_key(p: &SchemeParams) -> confide_crypto::LatticeSecretKey {
    let lp = crate::lattice::lattice_params(p).expect("params");
    confide_crypto::LatticeSecretKey::generate(lp, [11; 32]).expect("key")
}

#[test]
fn lattice_round_equals_plain_round_exactly_with_a_dropout() {
    let os = owners(3);
    let len = 5000; // two ciphertexts
    let p = params(len, 3, 2);
    let ups = updates(3, len);
    let sk = lattice_key(&p);
    // The owners and the coordinator use the key as published, checked against the job.
    let published = HolderPublicKey::parse(
        confide_core::SchemeKind::Lattice,
        &sk.public_key().to_json(),
        &p,
        2048,
    )
    .expect("published key");
    let mut server = published.server(&p, ctx(1)).expect("server");
    let mut plain = PlainServer::new(p.clone(), ctx(1));
    for (i, (o, u)) in os.iter().zip(&ups).enumerate() {
        let mut client = published.client(&p, [i as u8; 32]).expect("client");
        let payload = client.start(u).expect("protect");
        server.accept(verified(o, 1, payload)).expect("accept");
        plain
            .accept(verified(o, 1, PlainClient.start(u).expect("protect")))
            .expect("accept");
    }
    // o1 disconnected before the stage closed.
    let survivors: BTreeSet<String> = ["o0".to_string(), "o2".to_string()].into();
    let StageResult::Sum(plain_sum) = plain.close_stage(&survivors).expect("close") else {
        panic!("plain sums")
    };
    let StageResult::External(ExternalRequest::Unseal {
        round,
        contributions,
    }) = server.close_stage(&survivors).expect("close")
    else {
        panic!("lattice needs the key holder")
    };
    let mut ks = unsealer(sk, &os, p.clone());
    let pts = ks
        .unseal(round, with_keys(&os, contributions), no_persist)
        .expect("unseal");
    let sum = server
        .finish(ExternalResult::Unsealed(pts.clone()))
        .expect("finish");
    assert_eq!(sum.sums, expected_sum(&ups, &[0, 2]));
    assert_eq!(sum, plain_sum);

    // A key holder (or a path to it) that returns a sum beyond what two owners can reach is
    // caught by the coordinator, not applied.
    let mut server = published.server(&p, ctx(1)).expect("server");
    for (o, u) in os.iter().zip(&ups).take(2) {
        let mut client = published.client(&p, [3; 32]).expect("client");
        server
            .accept(verified(o, 1, client.start(u).expect("protect")))
            .expect("accept");
    }
    server.close_stage(&all(&os)).expect("close");
    let mut tampered = pts;
    let t = crate::lattice::lattice_params(&p)
        .expect("params")
        .plaintext_modulus();
    tampered[0][..8].copy_from_slice(&(t / 2).to_be_bytes()); // slot 0: far beyond 2·M
    assert!(matches!(
        server.finish(ExternalResult::Unsealed(tampered)),
        Err(SchemeError::BadExternal(_))
    ));
}

#[test]
fn lattice_server_and_key_holder_refuse_what_they_must() {
    let os = owners(3);
    let p = params(100, 3, 2);
    let ups = updates(3, 100);
    let sk = lattice_key(&p);
    let pk = sk.public_key().clone();
    let protect = |o: usize, round: u32| {
        let mut c = LatticeClient::new(pk.clone(), [o as u8; 32]);
        signed(&os[o], round, c.start(&ups[o]).expect("protect"))
    };
    let cs: Vec<Contribution> = (0..3).map(|o| protect(o, 1)).collect();

    // The coordinator's server: a truncated payload, a payload for a longer model, a
    // well-framed payload of zeros (does not decode), and a ciphertext declaring another
    // polynomial representation (decodes, re-encodes identically, is not NTT form).
    let mut server = KeyHolderServer::new(HolderPublicKey::Lattice(pk.clone()), p.clone(), ctx(1))
        .expect("server");
    let mut short = cs[0].payload.clone();
    short.truncate(short.len() - 1);
    assert_eq!(
        server
            .accept(verified(&os[0], 1, short))
            .expect_err("short")
            .reason,
        Reject::Malformed
    );
    let mut long_model = LatticeClient::new(pk.clone(), [1; 32]);
    let long = long_model.start(&vec![0; 5000]).expect("protect");
    assert_eq!(
        server
            .accept(verified(&os[0], 1, long))
            .expect_err("long")
            .reason,
        Reject::WrongShape
    );
    let mut zeros = cs[0].payload.clone();
    zeros[4..].fill(0);
    assert_eq!(
        server
            .accept(verified(&os[0], 1, zeros))
            .expect_err("zeros")
            .reason,
        Reject::Malformed
    );
    server
        .accept(verified(&os[0], 1, cs[0].payload.clone()))
        .expect("genuine");

    // The key holder: alone (KEY-004), malformed and validly signed (KEY-006), then one set of
    // contributions only (KEY-005, RES-001).
    let mut ks = unsealer(sk, &os, p.clone());
    assert!(matches!(
        ks.unseal(1, with_keys(&os, cs[..1].to_vec()), no_persist),
        Err(UnsealError::TooFew { got: 1, min: 2 })
    ));
    let mut bad = cs[1].payload.clone();
    bad[10] ^= 0xff;
    let broken = signed(&os[1], 1, bad);
    assert!(matches!(
        ks.unseal(1, with_keys(&os, vec![cs[0].clone(), broken]), no_persist),
        Err(UnsealError::Malformed { .. })
    ));
    let pts = ks
        .unseal(1, with_keys(&os, cs.clone()), no_persist)
        .expect("first");
    server
        .accept(verified(&os[1], 1, cs[1].payload.clone()))
        .expect("genuine");
    server
        .accept(verified(&os[2], 1, cs[2].payload.clone()))
        .expect("genuine");
    server.close_stage(&all(&os)).expect("close");
    let sum = server
        .finish(ExternalResult::Unsealed(pts.clone()))
        .expect("finish");
    assert_eq!(sum.sums, expected_sum(&ups, &[0, 1, 2]));
    // RES-001 under BFV too: the identical request again decrypts to the same plaintexts;
    // KEY-005: a subset of the round is refused.
    let again = ks
        .unseal(1, with_keys(&os, cs.clone()), no_persist)
        .expect("identical request");
    assert_eq!(again, pts);
    assert!(matches!(
        ks.unseal(1, with_keys(&os, cs[1..].to_vec()), no_persist),
        Err(UnsealError::AlreadyUnsealed(1))
    ));

    // A BFV key made for another job's parameters is refused by the key holder, and its
    // published form by owners.
    let other = params(100, 1000, 2);
    assert!(matches!(
        Unsealer::new(lattice_key(&other).into(), JOB, all(&os), p.clone(), []),
        Err(UnsealError::Internal(_))
    ));
    assert!(
        HolderPublicKey::parse(
            confide_core::SchemeKind::Lattice,
            &lattice_key(&other).public_key().to_json(),
            &p,
            2048
        )
        .is_err()
    );
    // A Paillier key where the job says lattice, and the reverse.
    assert!(
        HolderPublicKey::parse(
            confide_core::SchemeKind::Lattice,
            &serde_json::to_string(&test_key().public_key().to_json()).expect("json"),
            &p,
            2048
        )
        .is_err()
    );
    assert!(
        HolderPublicKey::parse(confide_core::SchemeKind::Paillier, &pk.to_json(), &p, 2048)
            .is_err()
    );
}

/// A `plain` server with a robust rule gives the rule's estimate times the count, so that the
/// coordinator's division by the count gives the median; one wild owner does not move it.
#[test]
fn a_plain_server_with_a_robust_rule_returns_the_median_times_the_count() {
    let os = owners(3);
    let p = params(4, 3, 2);
    let rule = confide_core::RobustRule {
        kind: confide_core::RobustKind::Median,
        trim: 0.1,
        faulty: 1,
    };
    let mut server = PlainServer::new(p.clone(), ctx(1)).with_rule(Some(rule));
    let ups: [Vec<i64>; 3] = [
        vec![10, 20, 30, 40],
        vec![12, 18, 33, 41],
        vec![9_000, -9_000, 9_000, -9_000],
    ];
    for (o, u) in os.iter().zip(&ups) {
        server
            .accept(verified(o, 1, PlainClient.start(u).expect("protect")))
            .expect("accept");
    }
    let StageResult::Sum(sum) = server.close_stage(&all(&os)).expect("close") else {
        panic!("a sum")
    };
    assert_eq!(sum.sums, vec![3 * 12, 3 * 18, 3 * 33, 3 * 40]);
    assert_eq!(
        sum.contributors.len(),
        3,
        "every accepted owner is the rule's input"
    );
}
