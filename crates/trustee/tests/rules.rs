//! Every TRU rule refused, one test each, and the threshold properties: any `t` valid shares
//! open the secret, `t − 1` do not, and a tampered share or proof is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use confide_store::MemoryStore;
use confide_trustee::dkg::{self, Board, DkgError, Participant};
use confide_trustee::secret::{self, Label, ReadRequest, Share, Write};
use confide_trustee::trustee::{Grant, Trustee};
use confide_trustee::{GroupKey, KeyShare};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;
use curve25519_dalek::scalar::Scalar;
use proptest::prelude::*;
use rand::SeedableRng;

const SECRET: [u8; 32] = [42u8; 32];

struct Setup {
    shares: Vec<KeyShare>,
    trustees: Vec<Trustee>,
    write: Write,
}

fn label(group: &GroupKey) -> Label {
    Label {
        policy: "policy-1".into(),
        owner: "hospital-a".into(),
        envelope: "envelope-1".into(),
        epoch: group.digest(),
    }
}

fn setup(seed: u64) -> Setup {
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let shares = dkg::run_local(4, 3, &mut rng).expect("dkg");
    let group = shares[0].group.clone();
    let write = Write::seal(&group.key, &SECRET, label(&group), &mut rng);
    let trustees: Vec<Trustee> = shares
        .iter()
        .map(|s| Trustee::new(s.clone(), Arc::new(MemoryStore::default())))
        .collect();
    for t in &trustees {
        t.accept_write("hospital-a", &write).expect("write");
    }
    Setup {
        shares,
        trustees,
        write,
    }
}

fn grant(write: &Write, reader: &str, job: &str) -> Grant {
    Grant {
        write: write.id(),
        owner: "hospital-a".into(),
        reader: reader.into(),
        purpose: "train".into(),
        job: job.into(),
    }
}

fn granted(s: &Setup, reader: &str) {
    for t in &s.trustees {
        t.grant("hospital-a", &grant(&s.write, reader, "*"))
            .expect("grant");
    }
}

#[test]
fn a_3_of_4_read_opens_the_secret_with_one_trustee_down() {
    let s = setup(1);
    granted(&s, "trainer");
    let mut rng = rand::thread_rng();
    let (req, key) = ReadRequest::new(&s.write.id(), "trainer", "job-1", "train", &mut rng);
    let answers: Vec<Share> = s.trustees[..3]
        .iter()
        .map(|t| t.reencrypt("trainer", &req, &mut rng).expect("share"))
        .collect();
    let opened = secret::open(&s.shares[0].group, &s.write, &key, &answers).expect("open");
    assert_eq!(opened.secret, SECRET);
}

#[test]
fn tru_001_a_write_with_a_broken_proof_another_epoch_or_another_writer_is_refused() {
    let s = setup(2);
    let mut rng = rand::thread_rng();
    let group = &s.shares[0].group;
    // A fresh write (its U never seen), its label changed after the proof was made.
    let mut moved = Write::seal(&group.key, &SECRET, label(group), &mut rng);
    moved.label.policy = "attacker policy".into();
    let e = s.trustees[0]
        .accept_write("hospital-a", &moved)
        .expect_err("broken proof");
    assert_eq!(e.rule(), "TRU-001");
    assert!(e.to_string().contains("proof"), "{e}");
    let mut other = label(group);
    other.epoch = "another epoch".into();
    let w = Write::seal(&group.key, &SECRET, other, &mut rng);
    assert_eq!(
        s.trustees[0]
            .accept_write("hospital-a", &w)
            .expect_err("epoch")
            .rule(),
        "TRU-001"
    );
    // Mallory writes a secret labelled as hospital-a's (to grant reads of it in its name).
    let fresh = Write::seal(&group.key, &SECRET, label(group), &mut rng);
    assert_eq!(
        s.trustees[0]
            .accept_write("mallory", &fresh)
            .expect_err("writer")
            .rule(),
        "TRU-001"
    );
    s.trustees[0]
        .accept_write("hospital-a", &fresh)
        .expect("its owner");
}

#[test]
fn tru_002_a_ciphertext_written_again_under_another_label_is_refused() {
    let s = setup(3);
    // The writer knows r for its own write, so it can prove a new label for the same U.
    let group = &s.shares[0].group;
    let r = Scalar::from(7u64);
    let mine = Write::seal_with(&group.key, &SECRET, label(group), &r, &Scalar::from(9u64));
    s.trustees[0]
        .accept_write("hospital-a", &mine)
        .expect("first");
    assert_eq!(
        s.trustees[0]
            .accept_write("hospital-a", &mine)
            .expect("again"),
        mine.id(),
        "the same write: accepted again, nothing new"
    );
    let mut relabel = label(group);
    relabel.policy = "a looser policy".into();
    let again = Write::seal_with(&group.key, &SECRET, relabel, &r, &Scalar::from(11u64));
    assert!(
        again.verify(),
        "a valid proof, for the same ciphertext point"
    );
    assert_eq!(
        s.trustees[0]
            .accept_write("hospital-a", &again)
            .expect_err("relabel")
            .rule(),
        "TRU-002"
    );
}

#[test]
fn tru_003_an_unknown_write_is_neither_granted_nor_read() {
    let s = setup(4);
    let mut g = grant(&s.write, "trainer", "*");
    g.write = "no-such-write".into();
    assert_eq!(
        s.trustees[0]
            .grant("hospital-a", &g)
            .expect_err("grant")
            .rule(),
        "TRU-003"
    );
    let mut rng = rand::thread_rng();
    let (req, _) = ReadRequest::new("no-such-write", "trainer", "job", "train", &mut rng);
    assert_eq!(
        s.trustees[0]
            .reencrypt("trainer", &req, &mut rng)
            .expect_err("read")
            .rule(),
        "TRU-003"
    );
}

#[test]
fn tru_004_another_callers_request_a_substituted_key_or_the_identity_key_is_refused() {
    let s = setup(5);
    granted(&s, "trainer");
    let mut rng = rand::thread_rng();
    let (req, _) = ReadRequest::new(&s.write.id(), "trainer", "job-1", "train", &mut rng);
    // Mallory sends the trainer's request from its own connection.
    for t in &s.trustees {
        assert_eq!(
            t.reencrypt("mallory", &req, &mut rng)
                .expect_err("caller")
                .rule(),
            "TRU-004"
        );
    }
    // Mallory has its own write W' (U') with a grant to itself, and no grant on the victim's
    // write W. It asks to read W' with X_c = U − U' + y·G, which would open W: it cannot
    // prove it holds that key.
    let group = &s.shares[0].group;
    let mut own = label(group);
    own.owner = "mallory".into();
    let theirs = Write::seal(&group.key, &[1u8; 32], own, &mut rng);
    for t in &s.trustees {
        t.accept_write("mallory", &theirs).expect("mallory's write");
        let mut g = grant(&theirs, "mallory", "*");
        g.owner = "mallory".into();
        t.grant("mallory", &g).expect("mallory's grant");
    }
    let y = Scalar::random(&mut rng);
    let (mut forged, _) = ReadRequest::new(&theirs.id(), "mallory", "job-1", "train", &mut rng);
    forged.reader_key = s.write.u - theirs.u + y * G;
    for t in &s.trustees {
        assert_eq!(
            t.reencrypt("mallory", &forged, &mut rng)
                .expect_err("x_c = U - U' + yG")
                .rule(),
            "TRU-004"
        );
    }
    // Had the trustees answered, the shares would open the victim's write: the check matters.
    let shares: Vec<Share> = s
        .shares
        .iter()
        .take(3)
        .map(|k| Share::make(k, &theirs, &forged.reader_key, &mut rng))
        .collect();
    // x·(U' + X_c) = r·X + y·X: remove y·X and the victim's write opens.
    let victim = combine(&shares) - y * group.key;
    assert_eq!(
        xor_pad(&s.write, &victim),
        SECRET,
        "the attack works without TRU-004"
    );
    // The identity as reader key (x_c = 0): every share would be s_i·U, readable by anyone.
    let zero = ReadRequest::with(
        &s.write.id(),
        "trainer",
        "job-1",
        "train",
        &Scalar::ZERO,
        &Scalar::ONE,
    );
    assert_eq!(
        s.trustees[0]
            .reencrypt("trainer", &zero, &mut rng)
            .expect_err("identity")
            .rule(),
        "TRU-004"
    );
}

fn combine(shares: &[Share]) -> curve25519_dalek::ristretto::RistrettoPoint {
    let ids: Vec<u16> = shares.iter().map(|s| s.trustee).collect();
    shares
        .iter()
        .map(|s| {
            let xi = Scalar::from(u64::from(s.trustee));
            let mut l = Scalar::ONE;
            for &j in ids.iter().filter(|j| **j != s.trustee) {
                let xj = Scalar::from(u64::from(j));
                l *= xj * (xj - xi).invert();
            }
            l * s.u
        })
        .sum()
}

fn xor_pad(w: &Write, shared: &curve25519_dalek::ristretto::RistrettoPoint) -> [u8; 32] {
    let pad = confide_trustee::group::expand_message_xmd::<32>(
        &[&confide_trustee::group::enc(shared)],
        b"CONFIDE-TRUSTEE-V1-pad",
    );
    std::array::from_fn(|i| w.c[i] ^ pad[i])
}

#[test]
fn tru_005_no_grant_another_owners_grant_or_a_revoked_grant_is_refused() {
    let s = setup(6);
    let t = &s.trustees[0];
    let mut rng = rand::thread_rng();
    let (req, _) = ReadRequest::new(&s.write.id(), "trainer", "job-1", "train", &mut rng);
    assert_eq!(
        t.reencrypt("trainer", &req, &mut rng)
            .expect_err("no grant")
            .rule(),
        "TRU-005"
    );
    // Mallory grants a read of hospital-a's write, in its own name or in hospital-a's.
    let mut stranger = grant(&s.write, "trainer", "*");
    stranger.owner = "mallory".into();
    assert_eq!(
        t.grant("mallory", &stranger)
            .expect_err("not the owner")
            .rule(),
        "TRU-005"
    );
    let forged = grant(&s.write, "trainer", "*");
    assert_eq!(
        t.grant("mallory", &forged)
            .expect_err("in another's name")
            .rule(),
        "TRU-005"
    );
    // A grant for another job does not reach this request.
    t.grant("hospital-a", &grant(&s.write, "trainer", "job-2"))
        .expect("grant");
    assert_eq!(
        t.reencrypt("trainer", &req, &mut rng)
            .expect_err("other job")
            .rule(),
        "TRU-005"
    );
    let g = grant(&s.write, "trainer", "job-1");
    let id = t.grant("hospital-a", &g).expect("grant");
    t.reencrypt("trainer", &req, &mut rng).expect("allowed");
    // Only the owner revokes, and only a grant that exists on that write.
    assert_eq!(
        t.revoke("mallory", &s.write.id(), &id)
            .expect_err("not the owner")
            .rule(),
        "TRU-005"
    );
    let group = &s.shares[0].group;
    let mut own = label(group);
    own.owner = "mallory".into();
    let theirs = Write::seal(&group.key, &[1u8; 32], own, &mut rng);
    t.accept_write("mallory", &theirs).expect("mallory's write");
    assert_eq!(
        t.revoke("mallory", &theirs.id(), &id)
            .expect_err("a grant on another write")
            .rule(),
        "TRU-005"
    );
    t.reencrypt("trainer", &req, &mut rng)
        .expect("still allowed");
    t.revoke("hospital-a", &s.write.id(), &id).expect("revoke");
    let e = t.reencrypt("trainer", &req, &mut rng).expect_err("revoked");
    assert_eq!(e.rule(), "TRU-005");
    assert!(e.to_string().contains("revoked"), "{e}");
    // The owner grants it again: a new decision, and it holds.
    t.grant("hospital-a", &g).expect("granted again");
    t.reencrypt("trainer", &req, &mut rng)
        .expect("allowed again");
}

#[test]
fn tru_006_one_share_per_request_the_same_share_again() {
    let s = setup(7);
    granted(&s, "trainer");
    let mut rng = rand::thread_rng();
    let (req, _) = ReadRequest::new(&s.write.id(), "trainer", "job-1", "train", &mut rng);
    let first = s.trustees[0]
        .reencrypt("trainer", &req, &mut rng)
        .expect("share");
    let again = s.trustees[0]
        .reencrypt("trainer", &req, &mut rng)
        .expect("again");
    assert_eq!(first, again, "the stored share, not a fresh proof");
    assert_eq!(s.trustees[0].released().expect("count"), 1);
}

#[test]
fn tru_006_the_share_survives_a_restart_of_the_trustee() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("trustee.redb");
    let s = setup(8);
    let mut rng = rand::thread_rng();
    let (req, _) = ReadRequest::new(&s.write.id(), "trainer", "job-1", "train", &mut rng);
    let first = {
        let store = Arc::new(confide_store::RedbStore::open(&path).expect("store"));
        let t = Trustee::new(s.shares[0].clone(), store);
        t.accept_write("hospital-a", &s.write).expect("write");
        t.grant("hospital-a", &grant(&s.write, "trainer", "*"))
            .expect("grant");
        t.reencrypt("trainer", &req, &mut rng).expect("share")
    };
    let store = Arc::new(confide_store::RedbStore::open(&path).expect("reopen"));
    let t = Trustee::new(s.shares[0].clone(), store);
    assert_eq!(
        t.reencrypt("trainer", &req, &mut rng).expect("again"),
        first
    );
}

#[test]
fn tru_007_and_008_a_lying_trustee_is_named_and_two_down_stop_the_read() {
    let s = setup(9);
    granted(&s, "trainer");
    let group = &s.shares[0].group;
    let mut rng = rand::thread_rng();
    let (req, key) = ReadRequest::new(&s.write.id(), "trainer", "job-1", "train", &mut rng);
    let mut answers: Vec<Share> = s
        .trustees
        .iter()
        .map(|t| t.reencrypt("trainer", &req, &mut rng).expect("share"))
        .collect();
    // Trustee 2 returns a wrong share with its (now wrong) proof.
    answers[1].u += G;
    let opened = secret::open(group, &s.write, &key, &answers).expect("three good of four");
    assert_eq!(opened.secret, SECRET);
    assert_eq!(opened.bad, vec![2], "TRU-007 names the trustee");
    // A forged share under trustee 1's index, sent before trustee 1's own: it is skipped,
    // trustee 1's real share still counts, and trustee 1 is not named.
    let mut forged = answers[0];
    forged.u += G;
    let mut with_forgery = vec![forged];
    with_forgery.extend(answers.iter().copied());
    let opened = secret::open(group, &s.write, &key, &with_forgery).expect("still opens");
    assert_eq!((opened.secret, opened.bad.clone()), (SECRET, vec![2]));
    // Two down: trustees 3 and 4 give nothing.
    let e = secret::open(group, &s.write, &key, &answers[..2]).expect_err("too few");
    assert_eq!(
        (e.valid, e.bad.clone(), e.missing.clone()),
        (1, vec![2], vec![3, 4])
    );
    assert!(e.to_string().starts_with("TRU-008"), "{e}");
}

#[test]
fn tru_009_a_trustee_that_equivocates_is_named_and_the_dkg_aborts() {
    let mut rng = rand::thread_rng();
    let mut board = Board::default();
    let (_, first) = Participant::start(2, 4, 3, &mut rng).expect("start");
    let (_, second) = Participant::start(2, 4, 3, &mut rng).expect("restart with fresh randomness");
    board.post(1, 2, &first).expect("first");
    board.post(1, 2, &first).expect("the same again");
    assert_eq!(board.post(1, 2, &second), Err(DkgError::Equivocation(2, 1)));
    // A trustee whose round-1 slot shows a package it did not send stops: someone posted in
    // its name.
    let mut round1 = BTreeMap::new();
    let mut parts = Vec::new();
    for i in 1..=4 {
        let (p, pkg) = Participant::start(i, 4, 3, &mut rng).expect("start");
        round1.insert(i, pkg);
        parts.push(p);
    }
    let mut in_its_name = round1.clone();
    in_its_name.insert(1, second);
    assert_eq!(
        parts[0].round2(&in_its_name).map(|_| ()),
        Err(DkgError::Equivocation(1, 1))
    );
    let mut missing = round1.clone();
    missing.remove(&4);
    assert!(matches!(
        parts[1].round2(&missing),
        Err(DkgError::Refused { .. })
    ));
}

#[test]
fn tru_009_a_bad_round2_package_blames_its_sender() {
    let mut rng = rand::thread_rng();
    let mut parts = Vec::new();
    let mut round1 = BTreeMap::new();
    for i in 1..=4 {
        let (p, pkg) = Participant::start(i, 4, 3, &mut rng).expect("start");
        round1.insert(i, pkg);
        parts.push(p);
    }
    let mut inbox: BTreeMap<u16, BTreeMap<u16, Vec<u8>>> = BTreeMap::new();
    for (i, p) in parts.iter_mut().enumerate() {
        for (to, pkg) in p.round2(&round1).expect("round 2") {
            inbox.entry(to).or_default().insert(i as u16 + 1, pkg);
        }
    }
    // Trustee 3 sends trustee 1 the share meant for trustee 2.
    let swapped = inbox[&2][&3].clone();
    inbox.get_mut(&1).expect("inbox").insert(3, swapped);
    match parts[0].finish(&inbox[&1]) {
        Err(DkgError::Refused { culprits, .. }) => assert_eq!(culprits, vec![3]),
        other => panic!("expected a refusal naming 3, got {other:?}"),
    }
}

#[test]
fn tru_010_an_epoch_is_active_only_when_every_trustee_logged_the_same_key() {
    let agree: BTreeMap<u16, String> = (1..=4).map(|i| (i, "k".to_string())).collect();
    assert_eq!(dkg::activate(&agree, 4), Ok("k".to_string()));
    let mut missing = agree.clone();
    missing.remove(&4);
    assert!(
        matches!(dkg::activate(&missing, 4), Err(DkgError::Disagreement(m)) if m.contains("[4]"))
    );
    let mut split = agree.clone();
    split.insert(3, "other".into());
    assert!(matches!(
        dkg::activate(&split, 4),
        Err(DkgError::Disagreement(_))
    ));
}

#[test]
fn a_key_share_round_trips_and_refuses_a_share_that_is_not_the_groups() {
    let s = setup(10);
    let k = &s.shares[1];
    let back = KeyShare::from_bytes(&k.to_bytes()).expect("decode");
    assert_eq!(
        (back.index, back.secret, back.group.clone()),
        (k.index, k.secret, k.group.clone())
    );
    let mut other = k.clone();
    other.secret += Scalar::ONE;
    assert!(KeyShare::from_bytes(&other.to_bytes()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Any t of n valid shares open the secret; t − 1 do not; a tampered proof is refused.
    #[test]
    fn any_t_shares_open_and_t_minus_1_do_not(
        seed in any::<u64>(),
        (n, t) in (2u16..=7).prop_flat_map(|n| (Just(n), 2u16..=n)),
        pick in any::<u64>(),
    ) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let shares = dkg::run_local(n, t, &mut rng).expect("dkg");
        let group = shares[0].group.clone();
        let secret_bytes: [u8; 32] = rand::Rng::r#gen(&mut rng);
        let w = Write::seal(&group.key, &secret_bytes, label(&group), &mut rng);
        let (req, key) = ReadRequest::new(&w.id(), "r", "j", "p", &mut rng);
        // A pseudo-random subset of size t.
        let mut order: Vec<usize> = (0..usize::from(n)).collect();
        let mut p = pick;
        for i in (1..order.len()).rev() {
            order.swap(i, (p % (i as u64 + 1)) as usize);
            p = p.rotate_left(7) ^ 0x9e37_79b9_7f4a_7c15;
        }
        let answers: Vec<Share> = order[..usize::from(t)]
            .iter()
            .map(|&i| Share::make(&shares[i], &w, &req.reader_key, &mut rng))
            .collect();
        let opened = secret::open(&group, &w, &key, &answers).expect("t shares");
        prop_assert_eq!(opened.secret, secret_bytes);
        let short = secret::open(&group, &w, &key, &answers[..usize::from(t) - 1]);
        prop_assert!(short.is_err());
        // And not only by counting: t − 1 key shares interpolate to another key.
        let fewer: Vec<KeyShare> = order[..usize::from(t) - 1].iter().map(|&i| shares[i].clone()).collect();
        prop_assert_ne!(secret::open_with_key(&secret::whole_key(&fewer), &w), secret_bytes);
        let all: Vec<KeyShare> = order[..usize::from(t)].iter().map(|&i| shares[i].clone()).collect();
        prop_assert_eq!(secret::open_with_key(&secret::whole_key(&all), &w), secret_bytes);
        let mut bent = answers.clone();
        bent[0].proof.s += Scalar::ONE;
        let e = secret::open(&group, &w, &key, &bent);
        prop_assert!(e.is_err(), "t − 1 valid after a tampered proof");
        prop_assert_eq!(e.err().map(|e| e.bad), Some(vec![bent[0].trustee]));
    }
}
