//! The masking round with every dropout pattern the threshold allows (complete graph, n = 10,
//! t = 6), one more aborting cleanly, and seeded random dropouts on sparse graphs.

use std::collections::BTreeSet;

use super::*;
use crate::contribution::{Unsigned, sign_contribution, verify};

const ROUND: u32 = 3;
const DIGEST: [u8; 32] = [7; 32];

fn owners(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("o{i:03}")).collect()
}

fn cfg(n: usize, k: usize, t: usize, len: usize) -> MaskingConfig {
    MaskingConfig {
        owners: owners(n),
        neighbours: k,
        threshold: t,
        len,
        round: ROUND,
        graph_seed: [9; 32],
        min_owners: 2,
    }
}

/// Checks other owners' signatures the way a node does: under the owner's key (all test owners
/// share `key`), for this job, round, stage and model.
fn checker(key: &confide_crypto::SigningKey) -> KeyCheck {
    let public = key.public_key().to_vec();
    Box::new(move |owner, stage, payload, signature| {
        let c = crate::contribution::Contribution {
            owner: owner.to_string(),
            round: ROUND,
            stage,
            model_digest: [1; 32],
            payload: payload.to_vec(),
            signature: signature.to_vec(),
        };
        verify(c, &public, &DIGEST)
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

fn input(i: usize, len: usize) -> Vec<i64> {
    (0..len)
        .map(|j| (i as i64 * 1_000_003 + j as i64 * 7919) % 200_001 - 100_000)
        .collect()
}

/// Runs one round; `drops[s]` are the owners that stop before sending stage `s`. Returns the
/// sum, or the error that ended the round.
fn run(
    c: &MaskingConfig,
    drops: &[BTreeSet<usize>; 5],
    key: &confide_crypto::SigningKey,
) -> Result<AggregateSum, SchemeError> {
    let names = c.sorted();
    let ctx = RoundContext {
        round: ROUND,
        model_digest: [1; 32],
    };
    let mut server = MaskingServer::new(c.clone(), ctx)?;
    let mut clients: Vec<Option<MaskingClient>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| MaskingClient::new(c.clone(), n, [i as u8 + 1; 32], checker(key)).ok())
        .collect();
    let mut alive: BTreeSet<usize> = (0..names.len()).collect();
    let mut broadcast: Option<Vec<u8>> = None;
    for stage in 0..5u32 {
        for d in &drops[stage as usize] {
            alive.remove(d);
        }
        for &i in &alive {
            let client = clients[i].as_mut().expect("client");
            let payload = match &broadcast {
                None => client.start(&input(i, c.len))?,
                Some(b) => client.on_broadcast(stage, b)?,
            };
            let signed = sign_contribution(
                key,
                &DIGEST,
                Unsigned {
                    owner: names[i].clone(),
                    round: ROUND,
                    stage,
                    model_digest: [1; 32],
                    payload,
                },
            );
            let verified = verify(signed, &key.public_key(), &DIGEST).expect("signature");
            server.accept(verified).expect("accepted");
        }
        let survivors: BTreeSet<String> = alive.iter().map(|&i| names[i].clone()).collect();
        match server.close_stage(&survivors)? {
            StageResult::Broadcast { stage: s, payload } => {
                assert_eq!(s, stage + 1);
                broadcast = Some(payload);
            }
            StageResult::Sum(sum) => return Ok(sum),
            StageResult::External(_) => panic!("no external party"),
        }
    }
    Err(SchemeError::Misuse("no sum after stage 4".into()))
}

fn expected(c: &MaskingConfig, drops: &[BTreeSet<usize>; 5]) -> Vec<i128> {
    let gone: BTreeSet<usize> = drops[..3].iter().flatten().copied().collect();
    let mut sum = vec![0i128; c.len];
    for i in (0..c.owners.len()).filter(|i| !gone.contains(i)) {
        for (s, v) in sum.iter_mut().zip(input(i, c.len)) {
            *s += i128::from(v);
        }
    }
    sum
}

fn key() -> confide_crypto::SigningKey {
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("keygen");
    confide_crypto::SigningKey::from_pkcs8_der(der.as_ref()).expect("key")
}

fn subsets(n: usize, max: usize) -> Vec<BTreeSet<usize>> {
    let mut out = vec![BTreeSet::new()];
    for i in 0..n {
        let more: Vec<BTreeSet<usize>> = out
            .iter()
            .filter(|s| s.len() < max)
            .map(|s| {
                let mut s = s.clone();
                s.insert(i);
                s
            })
            .collect();
        out.extend(more);
    }
    out
}

#[test]
fn every_dropout_pattern_up_to_the_threshold_at_every_stage_gives_the_exact_sum() {
    let c = cfg(10, 9, 6, 5);
    let key = key();
    let patterns = subsets(10, 4);
    assert_eq!(patterns.len(), 1 + 10 + 45 + 120 + 210);
    let mut runs = 0;
    for stage in 0..5 {
        for d in &patterns {
            let mut drops: [BTreeSet<usize>; 5] = Default::default();
            drops[stage] = d.clone();
            let sum =
                run(&c, &drops, &key).unwrap_or_else(|e| panic!("stage {stage}, drops {d:?}: {e}"));
            assert_eq!(sum.sums, expected(&c, &drops), "stage {stage}, drops {d:?}");
            let gone: BTreeSet<usize> = drops[..3].iter().flatten().copied().collect();
            assert_eq!(sum.contributors.len(), 10 - gone.len());
            runs += 1;
        }
    }
    assert_eq!(runs, 5 * 386);
    // Dropouts spread over stages (two at stage 1, one at the consistency check, one at
    // unmasking).
    let drops = [
        BTreeSet::new(),
        BTreeSet::from([2, 7]),
        BTreeSet::new(),
        BTreeSet::from([0]),
        BTreeSet::from([9]),
    ];
    assert_eq!(
        run(&c, &drops, &key).expect("sum").sums,
        expected(&c, &drops)
    );
}

#[test]
fn one_dropout_more_than_the_threshold_allows_aborts_cleanly() {
    let c = cfg(10, 9, 6, 5);
    let key = key();
    for stage in 0..5 {
        let mut drops: [BTreeSet<usize>; 5] = Default::default();
        drops[stage] = BTreeSet::from([1, 3, 4, 6, 8]);
        let err = run(&c, &drops, &key).expect_err("five dropouts");
        let text = err.to_string();
        assert!(
            matches!(err, SchemeError::TooFewContributions { got: 5, min: 6 })
                || matches!(err, SchemeError::Unrecoverable(_)),
            "stage {stage}: {text}"
        );
        if stage == 4 {
            assert!(
                text.contains("5 of its share holders answered, 6 are needed"),
                "{text}"
            );
        }
    }
}

#[test]
fn seeded_random_dropouts_on_sparse_graphs_give_the_exact_sum() {
    use rand::Rng;
    // n = 60, k = 20 neighbours, t = 11 of 21 holders, 10% dropout over the round.
    let c = cfg(60, 20, 11, 3);
    let p = c.failure_probability(0.1);
    // Bell et al.: choose k, t so that P[fewer than t of an owner's holders survive] is tiny.
    assert!(p < 1e-5, "per-owner failure probability {p:e}");
    let key = key();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2020);
    for _ in 0..6 {
        let mut drops: [BTreeSet<usize>; 5] = Default::default();
        for i in 0..60 {
            if rng.gen_bool(0.1) {
                drops[rng.gen_range(0..5)].insert(i);
            }
        }
        let sum = run(&c, &drops, &key).expect("within the parameters");
        assert_eq!(sum.sums, expected(&c, &drops));
    }
}

#[test]
fn sparse_graphs_are_k_regular_and_agree_for_every_party() {
    let c = cfg(60, 20, 11, 1);
    let g = c.graph();
    assert!(g.iter().all(|n| n.len() == 20));
    for (i, n) in g.iter().enumerate() {
        assert!(!n.contains(&i));
        assert!(n.iter().all(|&j| g[j].contains(&i)), "symmetric");
    }
    assert_eq!(g, cfg(60, 20, 11, 1).graph());
    let mut other = cfg(60, 20, 11, 1);
    other.graph_seed = [10; 32];
    assert_ne!(g, other.graph(), "a new round seed gives a new graph");
}

#[test]
fn bad_parameters_and_bad_messages_are_refused() {
    assert!(
        MaskingServer::new(
            cfg(10, 9, 5, 1),
            RoundContext {
                round: 1,
                model_digest: [0; 32]
            }
        )
        .is_err(),
        "t ≤ holders/2"
    );
    assert!(
        MaskingServer::new(
            cfg(10, 9, 11, 1),
            RoundContext {
                round: 1,
                model_digest: [0; 32]
            }
        )
        .is_err(),
        "t > holders"
    );
    assert!(
        MaskingServer::new(
            cfg(60, 7, 5, 1),
            RoundContext {
                round: 1,
                model_digest: [0; 32]
            }
        )
        .is_err(),
        "odd sparse k"
    );
    let c = cfg(4, 3, 3, 2);
    let key = key();
    let mut server = MaskingServer::new(
        c.clone(),
        RoundContext {
            round: ROUND,
            model_digest: [1; 32],
        },
    )
    .expect("ok");
    let bad = sign_contribution(
        &key,
        &DIGEST,
        Unsigned {
            owner: "o000".into(),
            round: ROUND,
            stage: 0,
            model_digest: [1; 32],
            payload: vec![0; 63],
        },
    );
    let r = server
        .accept(verify(bad, &key.public_key(), &DIGEST).expect("sig"))
        .expect_err("short");
    assert_eq!(r.reason, Reject::Malformed);
    // A low-order public key (the identity point) is refused at stage 0.
    let mut low = vec![0u8; 64];
    low[32] = 9;
    let low_order = sign_contribution(
        &key,
        &DIGEST,
        Unsigned {
            owner: "o001".into(),
            round: ROUND,
            stage: 0,
            model_digest: [1; 32],
            payload: low,
        },
    );
    let r = server
        .accept(verify(low_order, &key.public_key(), &DIGEST).expect("sig"))
        .expect_err("low order");
    assert_eq!(r.reason, Reject::Malformed);
    let wrong_stage = sign_contribution(
        &key,
        &DIGEST,
        Unsigned {
            owner: "o000".into(),
            round: ROUND,
            stage: 2,
            model_digest: [1; 32],
            payload: vec![0; 64],
        },
    );
    let r = server
        .accept(verify(wrong_stage, &key.public_key(), &DIGEST).expect("sig"))
        .expect_err("stage");
    assert_eq!(r.reason, Reject::StageClosed);
    // A client refuses an unmasking request for fewer than t owners.
    let mut client = MaskingClient::new(c, "o000", [1; 32], checker(&key)).expect("client");
    client.start(&[1, 2]).expect("start");
    assert!(
        client.on_broadcast(3, &[0, 0, 0, 0]).is_err(),
        "out of order"
    );
}

/// Runs stages `0..stages` with every owner and returns the server, the clients and the next
/// stage's broadcast.
fn run_stages(
    c: &MaskingConfig,
    key: &confide_crypto::SigningKey,
    stages: u32,
) -> (MaskingServer, Vec<MaskingClient>, Vec<u8>) {
    let names = c.sorted();
    let ctx = RoundContext {
        round: ROUND,
        model_digest: [1; 32],
    };
    let mut server = MaskingServer::new(c.clone(), ctx).expect("server");
    let mut clients: Vec<MaskingClient> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            MaskingClient::new(c.clone(), n, [i as u8 + 1; 32], checker(key)).expect("client")
        })
        .collect();
    let all: BTreeSet<String> = names.iter().cloned().collect();
    let mut broadcast: Option<Vec<u8>> = None;
    for stage in 0..stages {
        for (i, client) in clients.iter_mut().enumerate() {
            let payload = match &broadcast {
                None => client.start(&input(i, c.len)).expect("start"),
                Some(b) => client.on_broadcast(stage, b).expect("answer"),
            };
            server
                .accept(signed_for(key, &names[i], stage, payload))
                .expect("accept");
        }
        match server.close_stage(&all).expect("close") {
            StageResult::Broadcast { payload, .. } => broadcast = Some(payload),
            _ => panic!("a broadcast"),
        }
    }
    (server, clients, broadcast.expect("a broadcast"))
}

fn signed_for(
    key: &confide_crypto::SigningKey,
    owner: &str,
    stage: u32,
    payload: Vec<u8>,
) -> VerifiedContribution {
    let c = sign_contribution(
        key,
        &DIGEST,
        Unsigned {
            owner: owner.to_string(),
            round: ROUND,
            stage,
            model_digest: [1; 32],
            payload,
        },
    );
    verify(c, &key.public_key(), &DIGEST).expect("sig")
}

#[test]
fn owners_unmask_only_a_u3_that_enough_owners_signed() {
    let c = cfg(4, 3, 3, 2);
    let key = crate::contribution::tests::key();
    let names = c.sorted();
    let (mut server, mut clients, u3) = run_stages(&c, &key, 3);
    // Every owner signs U3 (its answer is the list itself).
    let answers: Vec<Vec<u8>> = clients
        .iter_mut()
        .map(|cl| cl.on_broadcast(3, &u3).expect("sign U3"))
        .collect();
    assert!(answers.iter().all(|a| *a == u3));
    // The server refuses an answer that is not its U3.
    let mut other = u3.clone();
    other.truncate(other.len() - 4);
    other[3] -= 1;
    assert_eq!(
        server
            .accept(signed_for(&key, &names[0], 3, other.clone()))
            .expect_err("another U3")
            .reason,
        Reject::Malformed
    );
    for (i, a) in answers.into_iter().enumerate() {
        server
            .accept(signed_for(&key, &names[i], 3, a))
            .expect("accept");
    }
    let all: BTreeSet<String> = names.iter().cloned().collect();
    let StageResult::Broadcast { stage: 4, payload } = server.close_stage(&all).expect("close")
    else {
        panic!("the unmasking request")
    };
    // Layout: U3 list, count, per signer index (4) ‖ signature (64).
    let sigs_at = u3.len() + 4;
    // A server that tells this owner of another U3 is caught.
    let mut lie = other.clone();
    lie.extend_from_slice(&payload[u3.len()..]);
    let err = clients[0].on_broadcast(4, &lie).expect_err("another U3");
    assert!(err.to_string().contains("another U3"), "{err}");
    // A forged signature is caught.
    let mut forged = payload.clone();
    forged[sigs_at + 4 + 10] ^= 1;
    let err = clients[1].on_broadcast(4, &forged).expect_err("forged");
    assert!(err.to_string().contains("did not sign this U3"), "{err}");
    // Too few signatures (two of four, the round needs three).
    let mut few = payload[..u3.len()].to_vec();
    few.extend_from_slice(&2u32.to_be_bytes());
    few.extend_from_slice(&payload[sigs_at..sigs_at + 2 * 68]);
    assert!(matches!(
        clients[2].on_broadcast(4, &few),
        Err(SchemeError::TooFewContributions { got: 2, min: 3 })
    ));
    // The genuine request is answered.
    clients[3].on_broadcast(4, &payload).expect("unmask");
}

#[test]
fn owners_refuse_keys_their_owner_did_not_sign() {
    let c = cfg(3, 2, 2, 4);
    let key = crate::contribution::tests::key();
    let (_, mut clients, payload) = run_stages(&c, &key, 1);
    // Entry layout: count, then per owner index (4) ‖ c (32) ‖ s (32) ‖ signature (64). A server
    // that swaps in its own mask key for o001 is caught by o000 and o002.
    let entry = 4 + 32 + 32 + 64;
    let mut forged = payload.clone();
    forged[4 + entry + 4 + 32] ^= 1;
    let err = clients[0].on_broadcast(1, &forged).expect_err("forged key");
    assert!(err.to_string().contains("`o001` are not signed"), "{err}");
    // A stripped signature is refused too; the genuine list is accepted.
    let mut stripped = payload.clone();
    stripped[4 + 2 * entry + 4 + 64] ^= 1;
    assert!(clients[2].on_broadcast(1, &stripped).is_err());
    clients[1].on_broadcast(1, &payload).expect("genuine keys");
}
