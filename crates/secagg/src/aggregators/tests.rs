//! `shares` and `threshold` rounds driven through the state machines: owners → coordinator →
//! aggregators → sum, with bad owners, crashed aggregators and lying aggregators.

use confide_core::SchemeKind;

use super::*;
use crate::tests::{
    JOB, Owner, all, ctx, expected_sum, owners, params, signed, updates, verified, with_keys,
};
use crate::{PlainClient, PlainServer};

const VERIFY_KEY: [u8; 32] = [5u8; 32];

fn multi(kind: SchemeKind, n: usize, t: usize, len: usize, os: usize) -> MultiParams {
    MultiParams::new(kind, n, t, params(len, os, 2), JOB).expect("params")
}

fn aggregators(p: &MultiParams, os: &[Owner]) -> Vec<Aggregator> {
    (0..p.n)
        .map(|i| {
            Aggregator::new(
                i,
                AggregatorKey::generate(),
                crate::contribution::tests::key(),
                p.clone(),
                (p.kind == SchemeKind::Shares).then_some(VERIFY_KEY),
                all(os),
            )
            .expect("aggregator")
        })
        .collect()
}

/// The aggregators' certified signing keys, as the network layer hands them over.
fn signer_keys(aggs: &[Aggregator]) -> Vec<Option<[u8; 32]>> {
    aggs.iter().map(|a| Some(a.signer_key())).collect()
}

fn public_keys(aggs: &[Aggregator]) -> Vec<Vec<u8>> {
    aggs.iter()
        .map(|a| parse_public_key(&a.public_hex()).expect("key"))
        .collect()
}

/// How an aggregator misbehaves in a round.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Honest,
    /// Never answers (crashed before the round).
    Crashed,
    /// Answers step 3 with its partial sum plus one in coordinate `0`.
    Lies,
}

/// Runs the coordinator's side of a round against the aggregators with the given faults.
fn run_round(
    server: &mut MultiServer,
    aggs: &mut [Aggregator],
    faults: &[Fault],
    os: &[Owner],
) -> Result<AggregateSum, SchemeError> {
    run_round_with_refusals(server, aggs, faults, os).0
}

/// As [`run_round`], with the honest aggregators' refusals to release.
fn run_round_with_refusals(
    server: &mut MultiServer,
    aggs: &mut [Aggregator],
    faults: &[Fault],
    os: &[Owner],
) -> (Result<AggregateSum, SchemeError>, Vec<String>) {
    let StageResult::External(ExternalRequest::Aggregate {
        round,
        contributions,
    }) = server.close_stage(&all(os)).expect("close")
    else {
        panic!("the aggregators finish the round")
    };
    let relayed = with_keys(os, contributions.clone());
    let answers: Vec<Option<PrepareAnswer>> = aggs
        .iter_mut()
        .zip(faults)
        .map(|(a, f)| {
            (*f != Fault::Crashed).then(|| a.prepare(round, relayed.clone()).expect("prepare"))
        })
        .collect();
    // The coordinator checks each answer's signature before relaying it.
    let view = view_digest(&contributions);
    for (i, (a, answer)) in aggs.iter().zip(&answers).enumerate() {
        if let Some(answer) = answer {
            let owners = all(os);
            assert!(answer.verify(&server.params, (round, i), &owners, &view, &a.signer_key()));
        }
    }
    let request = FinishRequest::assemble(
        round,
        contributions.iter().map(|c| c.owner.clone()),
        &answers,
    );
    let keys = signer_keys(aggs);
    // An honest aggregator refuses to commit a round that cannot be finished.
    let commits: Vec<Vec<u8>> = aggs
        .iter_mut()
        .zip(faults)
        .map(|(a, f)| match f {
            Fault::Crashed => Vec::new(),
            _ => a.commit(&request, &keys).unwrap_or_default(),
        })
        .collect();
    let mut refusals = Vec::new();
    let replies = aggs
        .iter_mut()
        .zip(faults)
        .map(|(a, f)| match f {
            Fault::Crashed => None,
            Fault::Honest => a
                .release(round, &commits, &keys)
                .map_err(|e| refusals.push(e.to_string()))
                .ok(),
            Fault::Lies => {
                let mut r = a.release(round, &commits, &keys).expect("release");
                r.aggregate[7] ^= 1;
                Some(r)
            }
        })
        .collect();
    let sum = server.finish(ExternalResult::Aggregated { request, replies });
    (sum, refusals)
}

/// Every owner's honest, signed contribution for `round`.
fn contributions(
    p: &MultiParams,
    keys: &[Vec<u8>],
    os: &[Owner],
    ups: &[Vec<i64>],
    round: u32,
) -> Vec<Contribution> {
    os.iter()
        .zip(ups)
        .map(|(o, u)| signed(o, round, protect(p, keys, o, u)))
        .collect()
}

/// Step 2 at every aggregator, with the same contributions.
fn prepare_all(
    aggs: &mut [Aggregator],
    round: u32,
    os: &[Owner],
    cs: &[Contribution],
) -> Vec<Option<PrepareAnswer>> {
    aggs.iter_mut()
        .map(|a| {
            Some(
                a.prepare(round, with_keys(os, cs.to_vec()))
                    .expect("prepare"),
            )
        })
        .collect()
}

/// Steps 3 and 4 at every aggregator, with the same request: all must succeed.
fn commit_and_release_all(aggs: &mut [Aggregator], request: &FinishRequest) {
    let signers = signer_keys(aggs);
    let commits: Vec<Vec<u8>> = aggs
        .iter_mut()
        .map(|a| a.commit(request, &signers).expect("commit"))
        .collect();
    for a in aggs.iter_mut() {
        let reply = a
            .release(request.round, &commits, &signers)
            .expect("release");
        // A release asked again (its answer was lost) gets the same partial sum, and a commit
        // asked again the same signature (RES-010).
        let again = a.release(request.round, &commits, &signers).expect("again");
        assert_eq!(again, reply);
    }
    for (a, signature) in aggs.iter_mut().zip(&commits) {
        assert_eq!(&a.commit(request, &signers).expect("again"), signature);
    }
}

fn plain_sum(os: &[Owner], ups: &[Vec<i64>]) -> AggregateSum {
    let p = params(ups[0].len(), os.len(), 2);
    let mut plain = PlainServer::new(p, ctx(1));
    for (o, u) in os.iter().zip(ups) {
        plain
            .accept(verified(o, 1, PlainClient.start(u).expect("encode")))
            .expect("accept");
    }
    match plain.close_stage(&all(os)).expect("close") {
        StageResult::Sum(s) => s,
        _ => panic!("plain sums"),
    }
}

/// The aggregators of a round and the coordinator's server, which has accepted every owner's
/// honest contribution.
fn honest_round(p: &MultiParams, os: &[Owner], ups: &[Vec<i64>]) -> (Vec<Aggregator>, MultiServer) {
    let aggs = aggregators(p, os);
    let keys = public_keys(&aggs);
    let mut server = MultiServer::new(p.clone(), ctx(1));
    for (o, u) in os.iter().zip(ups) {
        server
            .accept(verified(o, 1, protect(p, &keys, o, u)))
            .expect("accept");
    }
    (aggs, server)
}

fn protect(p: &MultiParams, keys: &[Vec<u8>], o: &Owner, u: &[i64]) -> Vec<u8> {
    MultiClient::new(p.clone(), keys, &o.name, [o.name.len() as u8; 32])
        .expect("client")
        .start(u)
        .expect("protect")
}

#[test]
fn shares_round_equals_plain_round_for_two_and_three_aggregators() {
    let os = owners(3);
    let ups = updates(3, 40);
    let plain = plain_sum(&os, &ups);
    for n in [2, 3] {
        let p = multi(SchemeKind::Shares, n, n, 40, 3);
        let (mut aggs, mut server) = honest_round(&p, &os, &ups);
        let sum = run_round(&mut server, &mut aggs, &vec![Fault::Honest; n], &os).expect("sum");
        assert_eq!(sum.sums, expected_sum(&ups, &[0, 1, 2]), "n = {n}");
        assert_eq!(sum, plain, "n = {n}");
    }
}

#[test]
fn shares_reject_a_forged_proof_and_an_undecryptable_share_by_reason() {
    let os = owners(4);
    let ups = updates(4, 30);
    let p = multi(SchemeKind::Shares, 2, 2, 30, 4);
    let mut aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let mut server = MultiServer::new(p.clone(), ctx(1));
    for (i, (o, u)) in os.iter().zip(&ups).enumerate() {
        let payload = match i {
            // o1 shifts one coordinate of its leader share: the shares now add up to a value the
            // proof does not cover (an out-of-range update in disguise).
            1 => {
                let mut c = MultiClient::new(p.clone(), &keys, &o.name, [1; 32]).expect("client");
                let mut pts = c.plaintexts(u).expect("shard");
                let plen = u32::from_be_bytes(pts[0][16..20].try_into().expect("4")) as usize;
                let at = 20 + plen; // the low byte of the first field element (little-endian)
                pts[0][at] = pts[0][at].wrapping_add(1);
                c.seal(&pts).expect("seal")
            }
            // o2 flips a bit of aggregator-2's ciphertext: it does not decrypt.
            2 => {
                let mut c = MultiClient::new(p.clone(), &keys, &o.name, [2; 32]).expect("client");
                let pts = c.plaintexts(u).expect("shard");
                let mut payload = c.seal(&pts).expect("seal");
                let last = payload.len() - 1;
                payload[last] ^= 1;
                payload
            }
            _ => protect(&p, &keys, o, u),
        };
        server.accept(verified(o, 1, payload)).expect("accept");
    }
    let sum = run_round(&mut server, &mut aggs, &[Fault::Honest; 2], &os).expect("sum");
    assert_eq!(sum.contributors, vec!["o0".to_string(), "o3".to_string()]);
    assert_eq!(
        sum.rejected,
        vec![
            ("o1".to_string(), Reject::InvalidProof),
            ("o2".to_string(), Reject::Malformed)
        ]
    );
    assert_eq!(sum.sums, expected_sum(&ups, &[0, 3]));
    // aggregator-2 could not open o2's share, which aggregator-1 opened: both are named.
    assert_eq!(sum.faulty.len(), 1, "{:?}", sum.faulty);
    assert!(
        sum.faulty[0].starts_with("aggregator-2: could not open the share of `o2`"),
        "{:?}",
        sum.faulty
    );
}

#[test]
fn shares_need_every_aggregator() {
    let os = owners(2);
    let ups = updates(2, 10);
    let p = multi(SchemeKind::Shares, 2, 2, 10, 2);
    let (mut aggs, mut server) = honest_round(&p, &os, &ups);
    let err = run_round(
        &mut server,
        &mut aggs,
        &[Fault::Honest, Fault::Crashed],
        &os,
    )
    .expect_err("one aggregator missing");
    assert!(
        err.to_string().contains("aggregator-2 did not answer"),
        "{err}"
    );
}

/// A 4-of-n round with the given faults: the sum, the updates, and the honest aggregators'
/// refusals to release.
fn threshold_round(
    faults: &[Fault],
) -> (
    Result<AggregateSum, SchemeError>,
    Vec<Vec<i64>>,
    Vec<String>,
) {
    let os = owners(3);
    let ups = updates(3, 25);
    let p = multi(SchemeKind::Threshold, faults.len(), 4, 25, 3);
    let (mut aggs, mut server) = honest_round(&p, &os, &ups);
    let (sum, refusals) = run_round_with_refusals(&mut server, &mut aggs, faults, &os);
    (sum, ups, refusals)
}

#[test]
fn threshold_seven_four_survives_one_crash_and_one_liar_and_names_the_liar() {
    use Fault::*;
    let (sum, ups, refusals) =
        threshold_round(&[Honest, Crashed, Honest, Honest, Lies, Honest, Honest]);
    assert!(refusals.is_empty(), "{refusals:?}");
    let sum = sum.expect("sum");
    assert_eq!(sum.sums, expected_sum(&ups, &[0, 1, 2]));
    assert_eq!(sum.contributors.len(), 3);
    assert_eq!(sum.faulty.len(), 2, "{:?}", sum.faulty);
    assert!(
        sum.faulty[0].starts_with("aggregator-2: did not answer"),
        "{:?}",
        sum.faulty
    );
    assert!(
        sum.faulty[1].starts_with("aggregator-5: its partial sum is off"),
        "{:?}",
        sum.faulty
    );
    // Up to the bound with 7 replies: (7 − 4) / 2 = 1 liar; with no crash and 1 liar it also
    // holds.
    let (sum, ups, _) = threshold_round(&[Lies, Honest, Honest, Honest, Honest, Honest, Honest]);
    assert_eq!(sum.expect("sum").sums, expected_sum(&ups, &[0, 1, 2]));
    // The decoder alone would need only t = 4 replies, but with two aggregators down only 5
    // commit, below the release quorum of 6 (against split views): every honest aggregator
    // refuses to release, and the round fails with the reason.
    let (sum, _, refusals) =
        threshold_round(&[Crashed, Crashed, Honest, Honest, Honest, Honest, Honest]);
    assert_eq!(refusals.len(), 5, "{refusals:?}");
    assert!(
        refusals
            .iter()
            .all(|r| r.contains("KEY-008 only 5 aggregators committed")),
        "{refusals:?}"
    );
    let err = sum.expect_err("below the release quorum");
    assert!(
        err.to_string().contains("only 0 aggregators released"),
        "{err}"
    );
}

#[test]
fn threshold_past_the_bound_fails_with_an_error_not_a_wrong_sum() {
    use Fault::*;
    // One crash and two uncoordinated liars: 6 replies correct only 1.
    let (sum, _, refusals) =
        threshold_round(&[Honest, Crashed, Lies, Honest, Lies, Honest, Honest]);
    assert!(refusals.is_empty(), "{refusals:?}");
    let err = sum.expect_err("past the bound");
    assert!(err.to_string().contains("cannot be decoded"), "{err}");
}

#[test]
fn aggregators_refuse_a_second_round_too_few_owners_and_forged_contributions() {
    let os = owners(3);
    let ups = updates(3, 8);
    let p = multi(SchemeKind::Threshold, 3, 2, 8, 3);
    let mut aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let cs = contributions(&p, &keys, &os, &ups, 1);
    let a = &mut aggs[0];
    // A forged signature (KEY-001) and an unknown owner (KEY-002).
    let mut forged = with_keys(&os, cs.clone());
    forged[1].0.payload[5] ^= 1;
    assert!(matches!(
        a.prepare(1, forged),
        Err(UnsealError::BadSignature(_))
    ));
    let mut stranger = with_keys(&os, cs.clone());
    stranger[0].0.owner = "mallory".into();
    assert!(matches!(
        a.prepare(1, stranger),
        Err(UnsealError::NotAnOwner(_))
    ));
    // Too few (KEY-004) at step 2, and at step 3 when the table leaves out owners.
    assert!(matches!(
        a.prepare(1, with_keys(&os, cs[..1].to_vec())),
        Err(UnsealError::TooFew { .. })
    ));
    let prepared = a.prepare(1, with_keys(&os, cs.clone())).expect("prepare");
    // The same global model in another round, while round 1 is open and after it finished, is
    // refused: two sums over different subsets of one model's updates would isolate an owner.
    let same_model = |round: u32| -> Vec<(Contribution, Vec<u8>)> {
        let cs = os
            .iter()
            .zip(&ups)
            .map(|(o, u)| {
                crate::sign_contribution(
                    &o.key,
                    &JOB,
                    crate::Unsigned {
                        owner: o.name.clone(),
                        round,
                        stage: 0,
                        model_digest: crate::model_digest(&[1.0]),
                        payload: protect(&p, &keys, o, u),
                    },
                )
            })
            .collect();
        with_keys(&os, cs)
    };
    assert!(matches!(
        a.prepare(2, same_model(2)),
        Err(UnsealError::AlreadyUnsealed(2))
    ));
    let no_keys = [None, None, None];
    // The request must list exactly the owners this aggregator was given (KEY-008).
    let mut request = FinishRequest::assemble(
        1,
        os.iter().map(|o| o.name.clone()),
        &[Some(prepared.clone()), None, None],
    );
    request.table.retain(|o, _| o == "o0");
    assert!(matches!(
        a.commit(&request, &no_keys),
        Err(UnsealError::Inconsistent(_))
    ));
    // Too few owners in the sum at step 3 (KEY-004): aggregator-3 could not open the shares of
    // o1 and o2, so by the rule only o0 is in the sum.
    let broken: Vec<Contribution> = os
        .iter()
        .zip(&ups)
        .enumerate()
        .map(|(i, (o, u))| {
            let mut payload = protect(&p, &keys, o, u);
            if i > 0 {
                let last = payload.len() - 1;
                payload[last] ^= 1;
            }
            crate::sign_contribution(
                &o.key,
                &JOB,
                crate::Unsigned {
                    owner: o.name.clone(),
                    round: 4,
                    stage: 0,
                    model_digest: crate::model_digest(&[4.0]),
                    payload,
                },
            )
        })
        .collect();
    let keys3 = signer_keys(&aggs);
    let mine = aggs[0]
        .prepare(4, with_keys(&os, broken.clone()))
        .expect("prepare");
    let third = aggs[2].prepare(4, with_keys(&os, broken)).expect("prepare");
    let request = FinishRequest::assemble(
        4,
        os.iter().map(|o| o.name.clone()),
        &[Some(mine), None, Some(third)],
    );
    assert!(matches!(
        aggs[0].commit(&request, &keys3),
        Err(UnsealError::TooFew { got: 1, min: 2 })
    ));
    let a = &mut aggs[0];
    // A round is prepared again only for the identical contributions, with the same answer
    // (RES-009); any other subset of them is refused (KEY-005).
    let again = a.prepare(1, with_keys(&os, cs.clone())).expect("identical");
    assert_eq!(again.signature, prepared.signature);
    assert!(matches!(
        a.prepare(1, with_keys(&os, cs[..2].to_vec())),
        Err(UnsealError::AlreadyUnsealed(1))
    ));
    let request = FinishRequest::assemble(
        1,
        os.iter().map(|o| o.name.clone()),
        &[Some(prepared), None, None],
    );
    let mine = a.commit(&request, &no_keys).expect("commit");
    // The identical request again (its answer was lost) gets the same answer; another one is
    // refused (KEY-005).
    assert_eq!(a.commit(&request, &no_keys).expect("again"), mine);
    let mut other = request.clone();
    other.signatures[0].push(0);
    assert!(matches!(
        a.commit(&other, &no_keys),
        Err(UnsealError::AlreadyUnsealed(1))
    ));
    assert!(matches!(
        a.prepare(3, same_model(3)),
        Err(UnsealError::AlreadyUnsealed(3))
    ));
    // Its own commitment alone is below the quorum of 3: nothing is released.
    assert!(matches!(
        a.release(1, &[mine, Vec::new(), Vec::new()], &no_keys),
        Err(UnsealError::Inconsistent(_))
    ));
}

/// RES-009: an aggregator answers a round's identical request again (after its coordinator,
/// or itself, restarted: `restore`), but commits it only to the set of owners it committed to
/// before. Here aggregator-3 cannot open `o1`'s share, so a coordinator that asks aggregator-1
/// with aggregator-2's answer sums {o0, o1, o2}, and with aggregator-3's would sum {o0, o2}:
/// two partial sums whose difference is `o1`'s share. The second is refused.
#[test]
fn an_aggregator_answers_a_round_again_only_for_the_same_set() {
    let os = owners(3);
    let ups = updates(3, 8);
    let p = multi(SchemeKind::Threshold, 3, 2, 8, 3);
    let mut aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let signers = signer_keys(&aggs);
    let cs: Vec<Contribution> = os
        .iter()
        .zip(&ups)
        .enumerate()
        .map(|(i, (o, u))| {
            let mut payload = protect(&p, &keys, o, u);
            if i == 1 {
                let last = payload.len() - 1;
                payload[last] ^= 1;
            }
            signed(o, 1, payload)
        })
        .collect();
    let answers = prepare_all(&mut aggs, 1, &os, &cs);
    let names = || os.iter().map(|o| o.name.clone());
    let with_second =
        FinishRequest::assemble(1, names(), &[answers[0].clone(), answers[1].clone(), None]);
    let with_third =
        FinishRequest::assemble(1, names(), &[answers[0].clone(), None, answers[2].clone()]);
    aggs[0].commit(&with_second, &signers).expect("commit");
    // Aggregator-1 restarts: a fresh state with its records (as a daemon keeps them).
    let records = aggs[0].records().clone();
    assert_eq!(records.len(), 1);
    assert!(records[&1].content.is_some());
    for r in records.values() {
        assert_eq!(RoundRecord::from_bytes(&r.to_bytes()).as_ref(), Some(r));
    }
    let mut restarted = Aggregator::new(
        0,
        AggregatorKey::generate(),
        crate::contribution::tests::key(),
        p.clone(),
        None,
        all(&os),
    )
    .expect("aggregator");
    restarted.restore(records);
    for a in [&mut aggs[0], &mut restarted] {
        // Another subset of the round, and its model in another round: refused.
        assert!(matches!(
            a.prepare(1, with_keys(&os, cs[..2].to_vec())),
            Err(UnsealError::AlreadyUnsealed(1))
        ));
        let moved: Vec<Contribution> = cs
            .iter()
            .map(|c| {
                let o = os.iter().find(|o| o.name == c.owner).expect("owner");
                crate::sign_contribution(
                    &o.key,
                    &JOB,
                    crate::Unsigned {
                        owner: o.name.clone(),
                        round: 2,
                        stage: 0,
                        model_digest: c.model_digest,
                        payload: c.payload.clone(),
                    },
                )
            })
            .collect();
        assert!(matches!(
            a.prepare(2, with_keys(&os, moved)),
            Err(UnsealError::AlreadyUnsealed(2))
        ));
    }
    // The identical request is answered again by the aggregator that kept its state (the
    // restarted one has another HPKE key here, so it cannot open the shares: a daemon keeps
    // its key sealed, crates/net).
    aggs[0]
        .prepare(1, with_keys(&os, cs.clone()))
        .expect("identical");
    let err = aggs[0]
        .commit(&with_third, &signers)
        .expect_err("another set");
    assert!(
        matches!(&err, UnsealError::Inconsistent(m) if m.contains("another set of owners")),
        "{err}"
    );
    aggs[0]
        .prepare(1, with_keys(&os, cs.clone()))
        .expect("identical");
    aggs[0]
        .commit(&with_second, &signers)
        .expect("the same set");
}

/// Under `shares`, a verifier share replaced by the coordinator, or aggregators given
/// different contributions, make the honest aggregators refuse to commit.
#[test]
fn shares_aggregators_refuse_altered_answers_and_different_contributions() {
    let os = owners(3);
    let ups = updates(3, 12);
    let p = multi(SchemeKind::Shares, 2, 2, 12, 2);
    let mut aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let signers = signer_keys(&aggs);
    let cs = contributions(&p, &keys, &os, &ups, 1);
    let answers = prepare_all(&mut aggs, 1, &os, &cs);
    let names = || os.iter().map(|o| o.name.clone());
    let request = FinishRequest::assemble(1, names(), &answers);
    // One byte of aggregator-2's verifier share for o1, changed in transit.
    let mut altered = request.clone();
    let share = altered.table.get_mut("o1").expect("o1")[1]
        .as_mut()
        .expect("share");
    share[0] ^= 1;
    let err = aggs[0].commit(&altered, &signers).expect_err("altered");
    assert!(
        matches!(&err, UnsealError::Inconsistent(m) if m.contains("aggregator-2")),
        "{err}"
    );
    // The same altered share in a column listed as not answering (so that no signature would
    // be checked), and a request that leaves aggregator-2 out altogether.
    let mut unlisted = altered.clone();
    unlisted.answered[1] = false;
    unlisted.signatures[1].clear();
    let err = aggs[0]
        .commit(&unlisted, &signers)
        .expect_err("unsigned column");
    assert!(
        matches!(&err, UnsealError::Inconsistent(m) if m.contains("lists as not answering")),
        "{err}"
    );
    let mut alone = request.clone();
    alone.answered[1] = false;
    alone.signatures[1].clear();
    for row in alone.table.values_mut() {
        row[1] = None;
    }
    let err = aggs[0].commit(&alone, &signers).expect_err("one answer");
    assert!(
        matches!(&err, UnsealError::Inconsistent(m) if m.contains("every aggregator")),
        "{err}"
    );
    // An aggregator's answer that is validly signed but not for exactly the relayed owners (one
    // left out) is refused by the coordinator before it can make the others refuse.
    let view = view_digest(&cs);
    let owner_set = all(&os);
    let good = answers[1].clone().expect("answer");
    assert!(good.verify(&p, (1, 1), &owner_set, &view, &aggs[1].signer_key()));
    let mut short = good.clone();
    short.prepared.pop();
    let column = short
        .prepared
        .iter()
        .map(|x| (x.owner.as_str(), x.share.as_ref().ok().map(Vec::as_slice)));
    short.signature = aggs[1]
        .signer
        .sign(&p.prepare_statement(1, 1, &view, column))
        .to_vec();
    assert!(!short.verify(&p, (1, 1), &owner_set, &view, &aggs[1].signer_key()));
    // Nor is a good answer under another index or key.
    assert!(!good.verify(&p, (1, 0), &owner_set, &view, &aggs[1].signer_key()));
    assert!(!good.verify(&p, (1, 1), &owner_set, &view, &aggs[0].signer_key()));
    // A signature that is not aggregator-2's key (say, the coordinator's own).
    let mut foreign = signers.clone();
    foreign[1] = Some(crate::contribution::tests::key().public_key());
    assert!(matches!(
        aggs[0].commit(&request, &foreign),
        Err(UnsealError::Inconsistent(_))
    ));
    // Aggregator-2 answered round 2 over o0 and o1 only; aggregator-1 was given all three.
    let cs2 = contributions(&p, &keys, &os, &ups, 2);
    let first = aggs[0]
        .prepare(2, with_keys(&os, cs2.clone()))
        .expect("prepare");
    let second = aggs[1]
        .prepare(2, with_keys(&os, cs2[..2].to_vec()))
        .expect("prepare");
    let split = FinishRequest::assemble(2, names(), &[Some(first), Some(second)]);
    assert!(matches!(
        aggs[0].commit(&split, &signers),
        Err(UnsealError::Inconsistent(_))
    ));
    // The untouched request still commits and releases at both.
    commit_and_release_all(&mut aggs, &request);
}

/// The split-view attack under `threshold` 4-of-7: o1's share for aggregator-7 does not
/// open, so a coordinator that tells aggregators 1–3 that aggregator-7 answered and 4–6 that it
/// did not gets two groups to sum {o0, o2} and {o0, o1, o2}. With aggregator-7 colluding and
/// signing both, neither set reaches the quorum of 6, and no honest aggregator releases.
#[test]
fn threshold_split_views_never_reach_the_release_quorum() {
    let os = owners(3);
    let ups = updates(3, 12);
    let p = multi(SchemeKind::Threshold, 7, 4, 12, 2);
    assert_eq!(p.quorum(), 6);
    let mut aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let signers = signer_keys(&aggs);
    let cs: Vec<Contribution> = os
        .iter()
        .zip(&ups)
        .enumerate()
        .map(|(i, (o, u))| {
            let mut payload = protect(&p, &keys, o, u);
            if i == 1 {
                let last = payload.len() - 1;
                payload[last] ^= 1;
            }
            signed(o, 1, payload)
        })
        .collect();
    let answers = prepare_all(&mut aggs, 1, &os, &cs);
    let names = || os.iter().map(|o| o.name.clone());
    let with_seventh = FinishRequest::assemble(1, names(), &answers);
    let mut without = answers.clone();
    without[6] = None;
    let without_seventh = FinishRequest::assemble(1, names(), &without);
    assert_eq!(with_seventh.decide_threshold().0, vec!["o0", "o2"]);
    assert_eq!(without_seventh.decide_threshold().0, vec!["o0", "o1", "o2"]);
    let mut commits = vec![Vec::new(); 7];
    for (i, a) in aggs.iter_mut().enumerate().take(6) {
        let request = if i < 3 {
            &with_seventh
        } else {
            &without_seventh
        };
        commits[i] = a.commit(request, &signers).expect("commit");
        // An honest aggregator commits once: the other view is refused.
        let other = if i < 3 {
            &without_seventh
        } else {
            &with_seventh
        };
        assert!(matches!(
            a.commit(other, &signers),
            Err(UnsealError::AlreadyUnsealed(1))
        ));
    }
    // Aggregator-7 colludes: it signs a commitment to both sets.
    let content = |accepted: &[&str]| {
        let digests = contribution_digests(&cs);
        let accepted: Vec<String> = accepted.iter().map(|s| s.to_string()).collect();
        owners_digest("confide/aggregators/commit", &digests, &accepted)
    };
    let seventh = |accepted: &[&str]| {
        aggs[6]
            .signer
            .sign(&p.commit_statement(1, 6, &content(accepted)))
            .to_vec()
    };
    let mut both = commits.clone();
    both[6] = seventh(&["o0", "o2"]);
    let for_first_group = both.clone();
    both[6] = seventh(&["o0", "o1", "o2"]);
    let for_second_group = both;
    // A signature counts once, at its own index: aggregator-4's commitment copied into every
    // slot counts once at aggregator-5 (which committed to the same set).
    let copies = vec![commits[3].clone(); 7];
    let err = aggs[4].release(1, &copies, &signers).expect_err("copies");
    assert!(
        matches!(&err, UnsealError::Inconsistent(m) if m.contains("only 2 aggregators")),
        "{err}"
    );
    for (i, a) in aggs.iter_mut().enumerate().take(6) {
        let sigs = if i < 3 {
            &for_first_group
        } else {
            &for_second_group
        };
        let err = a.release(1, sigs, &signers).expect_err("split view");
        assert!(
            matches!(&err, UnsealError::Inconsistent(m) if m.contains("only 4 aggregators")),
            "{err}"
        );
    }
    // Control: had the coordinator shown everyone the same table, the honest commitments
    // would have reached the quorum.
    let mut fresh = aggregators(&p, &os);
    let cs = contributions(&p, &public_keys(&fresh), &os, &ups, 1);
    let answers = prepare_all(&mut fresh, 1, &os, &cs);
    commit_and_release_all(&mut fresh, &FinishRequest::assemble(1, names(), &answers));
}

#[test]
fn the_coordinator_checks_the_payload_structure() {
    let os = owners(2);
    let p = multi(SchemeKind::Threshold, 3, 2, 8, 2);
    let aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let good = protect(&p, &keys, &os[0], &[1; 8]);
    let mut server = MultiServer::new(p.clone(), ctx(1));
    let reason = |server: &mut MultiServer, payload: Vec<u8>| {
        server
            .accept(verified(&os[1], 1, payload))
            .expect_err("refused")
            .reason
    };
    let mut wrong_count = good.clone();
    wrong_count[3] = 2;
    assert_eq!(reason(&mut server, wrong_count), Reject::WrongShape);
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(reason(&mut server, trailing), Reject::Oversized);
    assert_eq!(
        reason(&mut server, good[..good.len() - 1].to_vec()),
        Reject::Malformed
    );
    let short_model = protect(
        &multi(SchemeKind::Threshold, 3, 2, 7, 2),
        &keys,
        &os[1],
        &[1; 7],
    );
    assert_eq!(reason(&mut server, short_model), Reject::WrongShape);
    server.accept(verified(&os[0], 1, good)).expect("accept");
    // The client refuses values outside the encoding range.
    let m = params(8, 2, 2).fixed.max_abs() as i64;
    assert!(
        MultiClient::new(p.clone(), &keys, "o0", [0; 32])
            .expect("client")
            .start(&[m + 1; 8])
            .is_err()
    );
    // Parameters that could wrap the field are refused.
    let mut big = params(8, 1 << 40, 2);
    big.fixed = confide_crypto::FixedPoint::new(24, 4.0).expect("fp");
    assert!(MultiParams::new(SchemeKind::Threshold, 7, 4, big, JOB).is_err());
}

#[test]
fn threshold_refuses_an_owner_whose_share_one_aggregator_cannot_open_and_names_it() {
    let os = owners(3);
    let ups = updates(3, 12);
    let p = multi(SchemeKind::Threshold, 7, 4, 12, 3);
    let mut aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let mut server = MultiServer::new(p.clone(), ctx(1));
    for (i, (o, u)) in os.iter().zip(&ups).enumerate() {
        let mut payload = protect(&p, &keys, o, u);
        if i == 1 {
            // o1 sends aggregator-7 a share that does not decrypt.
            let last = payload.len() - 1;
            payload[last] ^= 1;
        }
        server.accept(verified(o, 1, payload)).expect("accept");
    }
    let sum = run_round(&mut server, &mut aggs, &[Fault::Honest; 7], &os).expect("sum");
    assert_eq!(sum.contributors, vec!["o0".to_string(), "o2".to_string()]);
    assert_eq!(sum.rejected, vec![("o1".to_string(), Reject::Malformed)]);
    assert_eq!(sum.sums, expected_sum(&ups, &[0, 2]));
    assert_eq!(sum.faulty.len(), 1, "{:?}", sum.faulty);
    assert!(
        sum.faulty[0].starts_with("aggregator-7: could not open the share of `o1` that 6 other"),
        "{:?}",
        sum.faulty
    );
}
