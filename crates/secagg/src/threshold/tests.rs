//! n = 7 aggregators, t = 4: crashes and lies up to the correction bound and past it.

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;

const N: usize = 7;
const T: usize = 4;
const LEN: usize = 50;

/// Each owner's share vectors, one per aggregator.
type OwnerShares = Vec<Vec<u64>>;

/// Owners' updates, their shares, and each aggregator's honest partial sum.
fn setup(owners: usize, seed: u64) -> (Vec<i128>, Vec<OwnerShares>, Vec<Vec<u64>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let updates: Vec<Vec<i64>> = (0..owners)
        .map(|o| {
            (0..LEN)
                .map(|j| ((o * 7919 + j * 104_729) % 2_000_001) as i64 - 1_000_000)
                .collect()
        })
        .collect();
    let want: Vec<i128> = (0..LEN)
        .map(|j| updates.iter().map(|u| i128::from(u[j])).sum())
        .collect();
    let shares: Vec<Vec<Vec<u64>>> = updates
        .iter()
        .map(|u| share(u, N, T, &mut rng).expect("share"))
        .collect();
    let partials = (0..N)
        .map(|a| aggregate(shares.iter().map(|s| s[a].as_slice())).expect("sum"))
        .collect();
    (want, shares, partials)
}

fn replies(partials: &[Vec<u64>], crashed: &[usize]) -> Vec<(usize, Vec<u64>)> {
    partials
        .iter()
        .enumerate()
        .filter(|(a, _)| !crashed.contains(a))
        .map(|(a, v)| (a, v.clone()))
        .collect()
}

fn lie(v: &mut [u64], seed: u64, everywhere: bool) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    if everywhere {
        for x in v.iter_mut() {
            *x = shamir::random(&mut rng);
        }
    } else {
        v[17] = add(v[17], 1);
    }
}

#[test]
fn all_honest_gives_the_exact_sum() {
    let (want, _, partials) = setup(5, 1);
    let d = reconstruct(
        &replies(&partials, &[]),
        T,
        &mut ChaCha20Rng::seed_from_u64(9),
    )
    .expect("ok");
    assert_eq!(d.sums, want);
    assert!(d.liars.is_empty());
}

#[test]
fn one_crashed_and_one_lying_gives_the_exact_sum_and_names_the_liar() {
    let (want, _, partials) = setup(5, 2);
    for crashed in 0..N {
        for liar in (0..N).filter(|&l| l != crashed) {
            for everywhere in [true, false] {
                let mut r = replies(&partials, &[crashed]);
                let pos = r.iter().position(|(a, _)| *a == liar).expect("present");
                lie(&mut r[pos].1, liar as u64, everywhere);
                let d = reconstruct(&r, T, &mut ChaCha20Rng::seed_from_u64(crashed as u64))
                    .unwrap_or_else(|e| panic!("crash {crashed}, liar {liar}: {e}"));
                assert_eq!(d.sums, want, "crash {crashed}, liar {liar}");
                assert_eq!(d.liars, vec![liar]);
            }
        }
    }
}

#[test]
fn crashes_alone_up_to_n_minus_t() {
    let (want, _, partials) = setup(3, 3);
    let d = reconstruct(
        &replies(&partials, &[0, 3, 6]),
        T,
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .expect("4 replies");
    assert_eq!(d.sums, want);
    let e = reconstruct(
        &replies(&partials, &[0, 1, 3, 6]),
        T,
        &mut ChaCha20Rng::seed_from_u64(1),
    )
    .expect_err("3 replies");
    assert_eq!(e, ThresholdError::TooFew { got: 3, t: 4 });
}

#[test]
fn past_the_bound_uncoordinated_liars_are_detected_not_returned() {
    let (_, _, partials) = setup(5, 4);
    // Two independent liars among 7 replies (bound: 1), and one liar with one crash and 6
    // replies plus a second liar.
    for (crashed, liars) in [
        (vec![], vec![1, 5]),
        (vec![2], vec![0, 6]),
        (vec![], vec![0, 3, 4]),
    ] {
        let mut r = replies(&partials, &crashed);
        for &l in &liars {
            let pos = r.iter().position(|(a, _)| *a == l).expect("present");
            lie(&mut r[pos].1, 100 + l as u64, true);
        }
        let e = reconstruct(&r, T, &mut ChaCha20Rng::seed_from_u64(5)).expect_err("past the bound");
        assert!(matches!(e, ThresholdError::Undecodable { .. }), "{e}");
    }
}

#[test]
fn past_the_bound_coordinated_liars_can_steer_the_sum_silently() {
    // The documented weakness: with one crash (6 replies, E = 1), 2 liars answer with a
    // polynomial Q that agrees with t − 1 = 3 honest aggregators and differs at 0.
    let (want, _, partials) = setup(5, 6);
    let crashed = [6];
    let honest_on_q = [0usize, 1, 2];
    let liars = [3usize, 4];
    let mut r = replies(&partials, &crashed);
    let q_at_zero_shift = 12345u64;
    // For every coordinate: Q = F + c·L(x), where L vanishes at the 3 honest points and L(0) = 1.
    let xs: Vec<u64> = honest_on_q.iter().map(|&a| a as u64 + 1).collect();
    let l = |x: u64| {
        let (mut num, mut den) = (1u64, 1u64);
        for &xm in &xs {
            num = mul(num, sub(x, xm));
            den = mul(den, sub(0, xm));
        }
        mul(num, shamir::inv(den))
    };
    for &a in &liars {
        let pos = r.iter().position(|(b, _)| *b == a).expect("present");
        let shift = mul(q_at_zero_shift, l(a as u64 + 1));
        for v in r[pos].1.iter_mut() {
            *v = add(*v, shift);
        }
    }
    let d = reconstruct(&r, T, &mut ChaCha20Rng::seed_from_u64(7)).expect("decodes");
    assert_ne!(
        d.sums, want,
        "coordinated liars past the bound steer the result"
    );
    assert!(
        d.sums
            .iter()
            .zip(&want)
            .all(|(a, b)| a - b == i128::from(q_at_zero_shift))
    );
    // And the honest aggregator off Q is the one named.
    assert_eq!(d.liars, vec![5]);
}

#[test]
fn a_bad_share_from_an_owner_frames_an_honest_aggregator() {
    let (_, mut shares, _) = setup(4, 8);
    // Owner 2 sends aggregator 4 a share off its polynomial.
    shares[2][4][10] = add(shares[2][4][10], 99);
    let partials: Vec<Vec<u64>> = (0..N)
        .map(|a| aggregate(shares.iter().map(|s| s[a].as_slice())).expect("sum"))
        .collect();
    let d = reconstruct(
        &replies(&partials, &[]),
        T,
        &mut ChaCha20Rng::seed_from_u64(3),
    )
    .expect("within the bound");
    assert_eq!(
        d.liars,
        vec![4],
        "the honest aggregator that got the bad share is named"
    );
}

#[test]
fn signed_values_round_trip_through_the_field() {
    for v in [0i64, 1, -1, 1 << 40, -(1 << 40)] {
        assert_eq!(from_field(to_field(v)), i128::from(v));
    }
}

#[test]
fn repeated_indices_and_non_field_values_are_refused() {
    let (_, _, partials) = setup(2, 10);
    let mut r = replies(&partials, &[]);
    r[1].0 = r[0].0;
    assert!(matches!(
        reconstruct(&r, T, &mut ChaCha20Rng::seed_from_u64(1)),
        Err(ThresholdError::Invalid(_))
    ));
    let bad = vec![P, 0, 0];
    assert!(aggregate([bad.as_slice()]).is_err());
}
