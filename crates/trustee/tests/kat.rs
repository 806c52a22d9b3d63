//! Known-answer tests: the write proof, the reader's key proof, the DLEQ re-encryption shares
//! and their combination, against values computed independently by `kat/kat.py` (libsodium's
//! ristretto255 through pysodium, and hashlib; the protocol steps written out again from the
//! cited specifications). The RFC 9496 and RFC 9497 vectors are in the unit tests of
//! `group.rs` and `dleq.rs`.

use std::collections::BTreeMap;

use confide_trustee::group::{self, enc};
use confide_trustee::secret::{self, Label, ReadRequest, Share, Write};
use confide_trustee::{GroupKey, KeyShare};
use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT as G;
use curve25519_dalek::scalar::Scalar;

const X: &str = "18f83127c0f0c8bad39ea4a029b7f1c544357290d51c0303096a670dfda08714";
const EPOCH: &str = "c702a87c1f864b14a462ff9fe19ca152cd4f7d6204663f744bc4a0df7ce47cb6";
const S1: &str = "b60d7a68080207c743fd98d3e0d33b05350fd0bff2d1c77b3cdf72f541626300";
const S2: &str = "c51b8e60f3c9b24b3f04bd934ea1f889405e9034025b3fbda5cc6e80424f2d08";
const S3: &str = "2eac4d7d84b8ea6b195f2ffbfa88bac7bed808be40506a22f9c652f1a19b2804";
const S4: &str = "de92ae1bd630c17fa8aae7acc48460d3af7e395caeb148ab36ce1e4860475504";
const R: &str = "1ea1394cb356adde3157941a28ec17f79b2e29100a286abce96f35fd24585c06";
const W: &str = "e27c76e6b926e9c5d660c4fa5ea4fc6c9f6d2121e3e06f502dcfbfaa6c50b201";
const U: &str = "14f8510658af177f4114d614396f81b38547eeb42425e3d1a7ce50615bc7ce12";
const UBAR: &str = "b4898e8b494f101eb651bb9cd09d0a536ec0782c0a665972c8384cb62477e441";
const C: &str = "c29128045567ced114b597f7ade7fdbb56fb2a28fd8bd1bc80f909fed5b02bd0";
const E: &str = "37133c14586d965887bad06d79187ae172f8eced138acfe3f6326ee221afb60a";
const F: &str = "a0d0505b1b8fa00d3653dc34cbb5d8ea2e57a48b796c92204130498166775b0b";
const WRITE_ID: &str = "4aa6e2c729f21aa3e936036703be8d9a66158bbdcbc453bc85c2f649296926a4";
const XC: &str = "4165f2005675b20128904db64d82acb06f26262dc47eb13ac597528a0b5e500f";
const V: &str = "342c26b78a3bcfd214cf9149d70ec38220e762eac77ebabeb28623ead74b3801";
const V_POINT: &str = "5213f6b980884544a129af333906bab96b3c07cd0ad64423f20d914acdf2e070";
const KEY_PROOF_R: &str = "96ec8503b77843d07eedbf38127464557f273de45a27aacf262629b45abda607";
const U1: &str = "842c9f59c720e287ccf4f5d09d0dca630c5d63c301265fe393832e0c672ce156";
const PROOF1: &str = "e43dc1735b0a43502dc15a00562f6214ea6b485566d98325c0e281d560baf00db2da677a061adce330e8f79fb33673801e4cb6d9be840cbb08c4c0e7266f0c04";
const NONCE1: &str = "1e1683f0e6657b8613619195fd9b4a8999f8a8ebd6e76a00cae652c5b2c7850d";
const U2: &str = "46e068f0dbe8a8c41137e49b3a2c6a296a8c6fd09704834d67d85b8218d32525";
const PROOF2: &str = "c46e3aaa2185b49179f84376705c2ae6407f4d0df225910b3bfebeb294ad97055573ef968cd48c27c594ae19c1b1d9e266e9b1b5262ab1fb98ff6201c76f3103";
const NONCE2: &str = "ebfdb4bce1a1cd61beb43fd97a17aae43b88b637c99173f39bf2eca1fa86e40f";
const U4: &str = "08cdc2551528a1f6022d4373b3fd6d149f083c29240b5562a128de290bda1803";
const PROOF4: &str = "33c4dee6768ec0b90e101e7fa9402de1cfcbd89def8208afd8f2ed5685fcbe062f61772a56ca7380f24803f7b235ee77eb7ee1984cb68bfdf27cd0be77f3800e";
const NONCE4: &str = "d33fa846cbd92d5d4fe2fb30d0a94528f94cf63bf2af706974c90f712d084a0a";
const OPENED: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn s(h: &str) -> Scalar {
    group::scalar(&hex::decode(h).expect("hex"), "kat").expect("scalar")
}

fn h(p: &curve25519_dalek::ristretto::RistrettoPoint) -> String {
    hex::encode(enc(p))
}

fn group_key() -> GroupKey {
    let shares: BTreeMap<u16, _> = [(1, S1), (2, S2), (3, S3), (4, S4)]
        .into_iter()
        .map(|(i, x)| (i, s(x) * G))
        .collect();
    GroupKey {
        threshold: 3,
        key: group::element(&hex::decode(X).expect("hex"), "X").expect("X"),
        shares,
    }
}

#[test]
fn the_group_keys_digest_matches_the_independent_value() {
    assert_eq!(group_key().digest(), EPOCH);
}

fn write() -> Write {
    let label = Label {
        policy: "policy-digest".into(),
        owner: "hospital-a".into(),
        envelope: "envelope-digest".into(),
        epoch: EPOCH.into(),
    };
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
    Write::seal_with(&group_key().key, &secret, label, &s(R), &s(W))
}

#[test]
fn the_write_and_its_tdh2_proof_match_the_independent_values() {
    let w = write();
    assert_eq!(h(&w.u), U);
    assert_eq!(h(&w.u_bar), UBAR);
    assert_eq!(hex::encode(w.c), C);
    assert_eq!(hex::encode(w.e.to_bytes()), E);
    assert_eq!(hex::encode(w.f.to_bytes()), F);
    assert_eq!(w.id(), WRITE_ID);
    assert!(w.verify());
}

#[test]
fn the_readers_key_proof_matches_the_independent_values() {
    let req = ReadRequest::with(WRITE_ID, "trainer", "job-1", "train", &s(XC), &s(V));
    assert_eq!(h(&req.key_proof.v), V_POINT);
    assert_eq!(hex::encode(req.key_proof.r.to_bytes()), KEY_PROOF_R);
    assert!(req.key_proof_holds());
}

#[test]
fn the_shares_their_proofs_and_the_combination_match_the_independent_values() {
    let group = group_key();
    let w = write();
    let reader_key = s(XC) * G;
    let mut shares = Vec::new();
    for (i, secret, nonce, u, proof) in [
        (1, S1, NONCE1, U1, PROOF1),
        (2, S2, NONCE2, U2, PROOF2),
        (4, S4, NONCE4, U4, PROOF4),
    ] {
        let key = KeyShare {
            index: i,
            secret: s(secret),
            group: group.clone(),
        };
        let share = Share::make_with(&key, &w, &reader_key, &s(nonce));
        assert_eq!(h(&share.u), u, "u_{i}");
        assert_eq!(hex::encode(share.proof.to_bytes()), proof, "proof_{i}");
        assert!(share.verify(&group, &w, &reader_key));
        shares.push(share);
    }
    let opened = secret::open(&group, &w, &s(XC), &shares).expect("three valid shares");
    assert_eq!(hex::encode(opened.secret), OPENED);
    assert!(opened.bad.is_empty());
}
