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
                p.clone(),
                (p.kind == SchemeKind::Shares).then_some(VERIFY_KEY),
                all(os),
            )
            .expect("aggregator")
        })
        .collect()
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
    let StageResult::External(ExternalRequest::Aggregate {
        round,
        contributions,
    }) = server.close_stage(&all(os))?
    else {
        panic!("the aggregators finish the round")
    };
    let relayed = with_keys(os, contributions.clone());
    let answers: Vec<Option<Vec<Prepared>>> = aggs
        .iter_mut()
        .zip(faults)
        .map(|(a, f)| {
            (*f != Fault::Crashed).then(|| a.prepare(round, relayed.clone()).expect("prepare"))
        })
        .collect();
    let request = FinishRequest::assemble(
        round,
        contributions.iter().map(|c| c.owner.clone()),
        &answers,
    );
    let replies = aggs
        .iter_mut()
        .zip(faults)
        .map(|(a, f)| match f {
            Fault::Crashed => None,
            // An honest aggregator refuses to finish a round that cannot be finished.
            Fault::Honest => a.finish(&request).ok(),
            Fault::Lies => {
                let mut r = a.finish(&request).expect("finish");
                r.aggregate[7] ^= 1;
                Some(r)
            }
        })
        .collect();
    server.finish(ExternalResult::Aggregated { request, replies })
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

fn threshold_round(faults: &[Fault]) -> (Result<AggregateSum, SchemeError>, Vec<Vec<i64>>) {
    let os = owners(3);
    let ups = updates(3, 25);
    let p = multi(SchemeKind::Threshold, faults.len(), 4, 25, 3);
    let (mut aggs, mut server) = honest_round(&p, &os, &ups);
    (run_round(&mut server, &mut aggs, faults, &os), ups)
}

#[test]
fn threshold_seven_four_survives_one_crash_and_one_liar_and_names_the_liar() {
    use Fault::*;
    let (sum, ups) = threshold_round(&[Honest, Crashed, Honest, Honest, Lies, Honest, Honest]);
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
    // holds; with 2 crashes and no liar too.
    let (sum, ups) = threshold_round(&[Lies, Honest, Honest, Honest, Honest, Honest, Honest]);
    assert_eq!(sum.expect("sum").sums, expected_sum(&ups, &[0, 1, 2]));
    let (sum, ups) = threshold_round(&[Crashed, Crashed, Honest, Honest, Honest, Honest, Crashed]);
    assert_eq!(sum.expect("sum").sums, expected_sum(&ups, &[0, 1, 2]));
}

#[test]
fn threshold_past_the_bound_fails_with_an_error_not_a_wrong_sum() {
    use Fault::*;
    // One crash and two uncoordinated liars: 6 replies correct only 1.
    let (sum, _) = threshold_round(&[Honest, Crashed, Lies, Honest, Lies, Honest, Honest]);
    let err = sum.expect_err("past the bound");
    assert!(err.to_string().contains("cannot be decoded"), "{err}");
    // Four crashes: fewer replies than the threshold.
    let (sum, _) = threshold_round(&[Crashed, Crashed, Crashed, Honest, Honest, Crashed, Honest]);
    assert!(sum.is_err());
}

#[test]
fn aggregators_refuse_a_second_round_too_few_owners_and_forged_contributions() {
    let os = owners(3);
    let ups = updates(3, 8);
    let p = multi(SchemeKind::Threshold, 3, 2, 8, 3);
    let mut aggs = aggregators(&p, &os);
    let keys = public_keys(&aggs);
    let cs: Vec<Contribution> = os
        .iter()
        .zip(&ups)
        .map(|(o, u)| signed(o, 1, protect(&p, &keys, o, u)))
        .collect();
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
    let mut request = FinishRequest::assemble(
        1,
        os.iter().map(|o| o.name.clone()),
        &[Some(prepared.clone()), Some(prepared.clone()), None],
    );
    request.table.retain(|o, _| o == "o0");
    assert!(matches!(
        a.finish(&request),
        Err(UnsealError::TooFew { .. })
    ));
    // A round is prepared and finished once (KEY-005).
    assert!(matches!(
        a.prepare(1, with_keys(&os, cs.clone())),
        Err(UnsealError::AlreadyUnsealed(1))
    ));
    let request = FinishRequest::assemble(
        1,
        os.iter().map(|o| o.name.clone()),
        &[Some(prepared.clone()), Some(prepared), None],
    );
    a.finish(&request).expect("finish");
    assert!(matches!(
        a.finish(&request),
        Err(UnsealError::AlreadyUnsealed(1))
    ));
    assert!(matches!(
        a.prepare(3, same_model(3)),
        Err(UnsealError::AlreadyUnsealed(3))
    ));
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
