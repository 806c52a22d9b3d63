use super::*;

fn fixed(scale_bits: u32, clip: f64) -> FixedPoint {
    FixedPoint::new(scale_bits, clip).expect("fixed point")
}

fn keys(owners: usize) -> (LatticeParams, LatticeSecretKey) {
    let params = LatticeParams::for_job(&fixed(24, 4.0), owners).expect("params");
    let sk = LatticeSecretKey::generate(params.clone(), [7; 32]).expect("key");
    (params, sk)
}

#[test]
fn plaintext_modulus_is_an_ntt_prime_that_holds_every_sum() {
    for owners in [1usize, 2, 10, 100] {
        let p = LatticeParams::for_job(&fixed(24, 4.0), owners).expect("params");
        let t = p.plaintext_modulus();
        assert!(fhe_util::is_prime(t));
        assert_eq!(t % (2 * DEGREE as u64), 1);
        let m = fixed(24, 4.0).max_abs() as u128;
        assert!(
            u128::from(t) > 2 * owners as u128 * m + 1,
            "t {t} for {owners}"
        );
        // Derived from the job alone: the same every time.
        assert_eq!(
            LatticeParams::for_job(&fixed(24, 4.0), owners)
                .expect("params")
                .plaintext_modulus(),
            t
        );
    }
    assert_eq!(LatticeParams::log_q(), 90);
    for q in MODULI {
        assert!(fhe_util::is_prime(q) && q % (2 * DEGREE as u64) == 1 && q >> 44 == 1);
    }
}

#[test]
fn sums_of_signed_updates_decrypt_exactly_including_the_extremes() {
    let owners = 5;
    let (params, sk) = keys(owners);
    let m = fixed(24, 4.0).max_abs() as i64;
    let len = DEGREE + 904; // two ciphertexts, the second partly padding
    let updates: Vec<Vec<i64>> = (0..owners as i64)
        .map(|o| {
            (0..len as i64)
                .map(|i| match (i + o) % 5 {
                    _ if i == 0 => m,
                    _ if i == 1 => -m,
                    0 => m,
                    1 => -m,
                    2 => 0,
                    _ => (i * 7919 + o * 104_729) % (2 * m + 1) - m,
                })
                .collect()
        })
        .collect();
    let mut acc: Option<Vec<LatticeCiphertext>> = None;
    for (o, u) in updates.iter().enumerate() {
        let mut enc = LatticeEncryptor::new(sk.public_key().clone(), [o as u8 + 1; 32]);
        let cts = enc.encrypt(u).expect("encrypt");
        assert_eq!(cts.len(), 2);
        let parsed: Vec<LatticeCiphertext> = cts
            .iter()
            .map(|b| sk.public_key().parse_ciphertext(b).expect("parse"))
            .collect();
        acc = Some(match acc {
            None => parsed,
            Some(mut a) => {
                for (x, y) in a.iter_mut().zip(&parsed) {
                    x.add_assign(y);
                }
                a
            }
        });
    }
    let slots: Vec<Vec<u64>> = acc
        .expect("sum")
        .iter()
        .map(|c| sk.decrypt(c).expect("decrypt"))
        .collect();
    let sums = decode_sum(&params, &slots, len, owners).expect("decode");
    for (i, s) in sums.iter().enumerate() {
        let expected: i128 = updates.iter().map(|u| i128::from(u[i])).sum();
        assert_eq!(*s, expected, "coordinate {i}");
    }
    // Every owner at +M, then every owner at -M: the extremes of the range.
    assert_eq!(sums[0], owners as i128 * i128::from(m));
    assert_eq!(sums[1], -(owners as i128) * i128::from(m));
}

#[test]
fn configurations_that_could_wrap_or_overflow_the_noise_are_refused() {
    let wide = LatticeParams::for_job(&fixed(40, 1.0e6), 2).expect_err("too wide");
    assert!(wide.to_string().contains("plaintext modulus"), "{wide}");
    // Sums of 2^16 owners at ±2^26 span 2^43 + 1 values: one bit more than fits.
    assert!(LatticeParams::for_job(&fixed(24, 4.0), (1 << 16) - 1).is_ok());
    assert!(LatticeParams::for_job(&fixed(24, 4.0), 1 << 16).is_err());
    let crowded = LatticeParams::for_job(&fixed(1, 0.5), 1 << 39).expect_err("too many");
    assert!(crowded.to_string().contains("noise"), "{crowded}");
    assert!(LatticeParams::for_job(&fixed(24, 4.0), 0).is_err());
}

#[test]
fn out_of_range_values_are_refused_before_encryption() {
    let (_, sk) = keys(2);
    let m = fixed(24, 4.0).max_abs() as i64;
    let mut enc = LatticeEncryptor::new(sk.public_key().clone(), [1; 32]);
    let err = enc.encrypt(&[0, m + 1]).expect_err("out of range");
    assert!(
        matches!(err, LatticeError::OutOfRange { index: 1, .. }),
        "{err}"
    );
}

#[test]
fn public_keys_are_checked_against_the_job_parameters() {
    let (params, sk) = keys(2);
    let json = sk.public_key().to_json();
    let pk = LatticePublicKey::from_json(&json, &params).expect("own key");
    assert_eq!(pk.fingerprint(), sk.public_key().fingerprint());
    // A key holder publishing parameters of another job (another t) is refused.
    let other = LatticeParams::for_job(&fixed(24, 4.0), 1_000).expect("params");
    let err = LatticePublicKey::from_json(&json, &other).expect_err("other t");
    assert!(matches!(err, LatticeError::WrongParameters(_)), "{err}");
    // Tampered or truncated key material, and another scheme name.
    let mut v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let hex_key = v["public_key"].as_str().expect("hex").to_string();
    v["public_key"] = hex_key[..hex_key.len() - 2].into();
    assert!(LatticePublicKey::from_json(&v.to_string(), &params).is_err());
    v["public_key"] = hex_key.clone().into();
    v["scheme"] = "paillier".into();
    assert!(LatticePublicKey::from_json(&v.to_string(), &params).is_err());
    v["scheme"] = "bfv".into();
    v["moduli"] = serde_json::json!([MODULI[0]]);
    assert!(LatticePublicKey::from_json(&v.to_string(), &params).is_err());
    assert!(LatticePublicKey::from_json("{", &params).is_err());
}

#[test]
fn malformed_ciphertexts_are_refused() {
    let (_, sk) = keys(2);
    let pk = sk.public_key();
    let mut enc = LatticeEncryptor::new(pk.clone(), [3; 32]);
    let ct = enc.encrypt(&[1, 2, 3]).expect("encrypt").remove(0);
    assert_eq!(ct.len(), pk.ciphertext_bytes());
    assert!(pk.parse_ciphertext(&ct).is_ok());
    assert!(
        pk.parse_ciphertext(&ct[..ct.len() - 1]).is_err(),
        "truncated"
    );
    let mut longer = ct.clone();
    longer.push(0);
    assert!(pk.parse_ciphertext(&longer).is_err(), "extended");
    let mut framing = ct.clone();
    framing[0] ^= 0xff;
    assert!(pk.parse_ciphertext(&framing).is_err(), "broken framing");
    assert!(pk.parse_ciphertext(&vec![0u8; ct.len()]).is_err(), "zeros");
    // The first polynomial's representation field (protobuf tag 0x08, value 2 = NTT): a
    // ciphertext declaring power-basis (1) or NTT-Shoup (3) form keeps its size and encoding,
    // decodes, and would make fhe panic when summed.
    assert_eq!(
        (ct[4], ct[5]),
        (0x08, 0x02),
        "layout of the first polynomial"
    );
    for representation in [1u8, 3] {
        let mut forged = ct.clone();
        forged[5] = representation;
        assert!(
            pk.parse_ciphertext(&forged).is_err(),
            "representation {representation}"
        );
    }
}

#[test]
fn small_encodings_get_a_valid_plaintext_modulus() {
    // Sums spanning fewer than 2^15 values: no NTT prime below 2^15 exists, so t is the
    // smallest 16-bit one.
    for (scale_bits, clip, owners) in [(4, 1.0, 2), (1, 0.5, 1), (10, 1.0, 7)] {
        let p = LatticeParams::for_job(&fixed(scale_bits, clip), owners).expect("params");
        assert!(fhe_util::is_prime(p.plaintext_modulus()));
        let sk = LatticeSecretKey::generate(p.clone(), [1; 32]).expect("key");
        let mut enc = LatticeEncryptor::new(sk.public_key().clone(), [2; 32]);
        let m = fixed(scale_bits, clip).max_abs() as i64;
        let ct = sk
            .public_key()
            .parse_ciphertext(&enc.encrypt(&[m, -m, 0]).expect("encrypt")[0])
            .expect("parse");
        let slots = sk.decrypt(&ct).expect("decrypt");
        assert_eq!(
            decode_sum(&p, &[slots], 3, 1).expect("decode"),
            [i128::from(m), -i128::from(m), 0]
        );
    }
}

#[test]
fn decrypted_sums_beyond_the_declared_contributions_are_refused() {
    let (params, _) = keys(3);
    let m = i128::from(fixed(24, 4.0).max_abs());
    let t = params.plaintext_modulus();
    let mut slots = vec![vec![0u64; DEGREE]];
    slots[0][0] = (2 * m) as u64; // two contributions at +M: fine
    slots[0][1] = t - (2 * m) as u64; // two at -M: fine
    assert_eq!(
        decode_sum(&params, &slots, 10, 2).expect("in range")[..2],
        [2 * m, -2 * m]
    );
    slots[0][2] = (2 * m + 1) as u64;
    assert!(matches!(
        decode_sum(&params, &slots, 10, 2),
        Err(LatticeError::SlotOverflow { slot: 2, .. })
    ));
    slots[0][2] = 0;
    slots[0][50] = 1; // padding beyond the model
    assert!(matches!(
        decode_sum(&params, &slots, 10, 2),
        Err(LatticeError::SlotOverflow { slot: 50, .. })
    ));
    slots[0][50] = t; // not a residue
    assert!(decode_sum(&params, &slots, 10, 2).is_err());
    assert!(
        decode_sum(&params, &[], 10, 2).is_err(),
        "missing plaintext"
    );
    assert!(
        decode_sum(&params, &slots, 10, 4).is_err(),
        "more than owners"
    );
}

#[test]
fn a_key_restores_from_its_seed_and_public_key_and_from_nothing_else() {
    let params = LatticeParams::for_job(&fixed(24, 4.0), 2).expect("params");
    let key = LatticeSecretKey::generate(params.clone(), [3; 32]).expect("key");
    let public = key.public_key().to_json();
    let restored = LatticeSecretKey::restore(params.clone(), [3; 32], &public).expect("restore");
    assert_eq!(
        restored.public_key().fingerprint(),
        key.public_key().fingerprint()
    );
    // A sum encrypted to the original key decrypts under the restored one.
    let mut enc = LatticeEncryptor::new(key.public_key().clone(), [9; 32]);
    let ct = enc.encrypt(&[5, -3, 0, 12]).expect("encrypt");
    let slots = restored
        .decrypt(&key.public_key().parse_ciphertext(&ct[0]).expect("parse"))
        .expect("decrypt");
    let t = params.plaintext_modulus();
    assert_eq!(&slots[..4], &[5, t - 3, 0, 12]);
    // Another seed's secret does not fit this public key.
    let err = LatticeSecretKey::restore(params, [4; 32], &public).expect_err("refused");
    assert!(err.to_string().contains("does not decrypt"), "{err}");
}
