//! Robust aggregation rules for `plain`, where the coordinator holds every owner's update:
//! the coordinate-wise median and trimmed mean (Yin et al., ICML 2018) and Krum (Blanchard et
//! al., NeurIPS 2017). The other schemes reveal only the sum, so they cannot apply these; they
//! rely on norm bounds instead (clipping at every owner, which `shares` proves).
//!
//! Each rule returns its estimate times the number of updates, per coordinate, in the
//! fixed-point domain: the coordinator divides by the count, as it does for the mean.

use confide_core::{RobustKind, RobustRule};

/// `a / b` rounded to the nearest integer (ties away from zero); `b > 0`.
fn div_round(a: i128, b: i128) -> i128 {
    if a >= 0 {
        (2 * a + b) / (2 * b)
    } else {
        -((-2 * a + b) / (2 * b))
    }
}

/// Combines `updates` (one fixed-point vector per owner, all of one length) under `rule`.
///
/// # Errors
/// No updates, vectors of different lengths, or too few updates for Krum (n < 2f + 3).
pub fn combine(rule: &RobustRule, updates: &[&[i64]]) -> Result<Vec<i128>, String> {
    let n = updates.len();
    let Some(len) = updates.first().map(|u| u.len()) else {
        return Err("no updates to combine".into());
    };
    if updates.iter().any(|u| u.len() != len) {
        return Err("updates of different lengths".into());
    }
    let n128 = n as i128;
    match rule.kind {
        RobustKind::Median | RobustKind::TrimmedMean => {
            let k = if rule.kind == RobustKind::Median {
                0
            } else {
                confide_core::config::trimmed(rule.trim, n).min((n - 1) / 2)
            };
            let mut column = vec![0i64; n];
            Ok((0..len)
                .map(|j| {
                    for (c, u) in column.iter_mut().zip(updates) {
                        *c = u[j];
                    }
                    column.sort_unstable();
                    if rule.kind == RobustKind::Median {
                        if n % 2 == 1 {
                            n128 * i128::from(column[n / 2])
                        } else {
                            // n·(a + b)/2, exact since n is even.
                            (n128 / 2) * (i128::from(column[n / 2 - 1]) + i128::from(column[n / 2]))
                        }
                    } else {
                        let kept = &column[k..n - k];
                        let sum: i128 = kept.iter().map(|v| i128::from(*v)).sum();
                        div_round(n128 * sum, kept.len() as i128)
                    }
                })
                .collect())
        }
        RobustKind::Krum => {
            let f = rule.faulty;
            let needed = f.saturating_mul(2).saturating_add(3);
            if n < needed {
                return Err(format!(
                    "Krum with {f} faulty owners needs at least {needed} updates, this round has {n}"
                ));
            }
            let mut dist = vec![vec![0f64; n]; n];
            for i in 0..n {
                for j in i + 1..n {
                    let d: f64 = updates[i]
                        .iter()
                        .zip(updates[j])
                        .map(|(a, b)| {
                            // |v| ≤ the encoding's bound < 2^62: the difference fits an i64.
                            let x = (*a - *b) as f64;
                            x * x
                        })
                        .sum();
                    dist[i][j] = d;
                    dist[j][i] = d;
                }
            }
            let neighbours = n - f - 2;
            let score = |i: usize| {
                let mut d: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
                d.sort_by(f64::total_cmp);
                d[..neighbours].iter().sum::<f64>()
            };
            // Ties go to the first owner in name order: the choice is deterministic.
            let best = (0..n)
                .map(|i| (score(i), i))
                .min_by(|a, b| a.0.total_cmp(&b.0))
                .map(|(_, i)| i)
                .unwrap_or(0);
            Ok(updates[best]
                .iter()
                .map(|v| n128 * i128::from(*v))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RobustKind, trim: f64, faulty: usize) -> RobustRule {
        RobustRule { kind, trim, faulty }
    }

    fn mean(sums: &[i128], n: usize) -> Vec<f64> {
        sums.iter().map(|s| *s as f64 / n as f64).collect()
    }

    /// Four honest owners near 10 and one that sends 10^6: the mean moves by about 2·10^5,
    /// the robust rules stay within the honest values.
    #[test]
    fn one_wild_update_moves_the_mean_but_not_the_robust_rules() {
        let honest: [[i64; 3]; 4] = [[10, -10, 0], [11, -9, 1], [9, -11, -1], [12, -8, 2]];
        let wild = [1_000_000i64, 1_000_000, -1_000_000];
        let mut all: Vec<&[i64]> = honest.iter().map(|u| u.as_slice()).collect();
        all.push(&wild);
        let plain_mean: Vec<f64> = (0..3)
            .map(|j| all.iter().map(|u| u[j] as f64).sum::<f64>() / 5.0)
            .collect();
        assert!(plain_mean[0] > 100_000.0);
        for r in [
            rule(RobustKind::Median, 0.0, 1),
            rule(RobustKind::TrimmedMean, 0.2, 1),
            rule(RobustKind::Krum, 0.0, 1),
        ] {
            let est = mean(&combine(&r, &all).expect("combines"), 5);
            for j in 0..3 {
                let lo = honest.iter().map(|u| u[j]).min().expect("min") as f64;
                let hi = honest.iter().map(|u| u[j]).max().expect("max") as f64;
                assert!(lo <= est[j] && est[j] <= hi, "{:?}: {est:?}", r.kind);
            }
        }
    }

    #[test]
    fn the_rules_compute_what_their_definitions_say() {
        let u: [[i64; 2]; 5] = [[1, 50], [2, 40], [3, 30], [4, 20], [100, 10]];
        let all: Vec<&[i64]> = u.iter().map(|x| x.as_slice()).collect();
        // Median: 3 and 30, times 5.
        assert_eq!(
            combine(&rule(RobustKind::Median, 0.0, 1), &all),
            Ok(vec![15, 150])
        );
        // Even count: the two middle values' mean, times n.
        let four = &all[..4];
        assert_eq!(
            combine(&rule(RobustKind::Median, 0.0, 1), four),
            Ok(vec![10, 140])
        );
        // Trimmed mean, trim 0.2 of 5: drop one at each end; mean of (2, 3, 4) = 3 and of
        // (20, 30, 40) = 30, times 5.
        assert_eq!(
            combine(&rule(RobustKind::TrimmedMean, 0.2, 1), &all),
            Ok(vec![15, 150])
        );
        // Trim 0: the plain sum.
        assert_eq!(
            combine(&rule(RobustKind::TrimmedMean, 0.0, 1), &all),
            Ok(vec![110, 150])
        );
        // Krum, f = 1: each update's score is the sum of its n − f − 2 = 2 smallest squared
        // distances. [2, 40] and [3, 30] tie at 101 + 101 = 202 ([1, 50] and [4, 20] score
        // 101 + 404, the wild [100, 10] 9316 + 9809); the first in order wins. Times 5.
        assert_eq!(
            combine(&rule(RobustKind::Krum, 0.0, 1), &all),
            Ok(vec![10, 200])
        );
    }

    #[test]
    fn krum_refuses_too_few_updates_and_nothing_combines_nothing() {
        let u: [[i64; 1]; 4] = [[1], [2], [3], [4]];
        let all: Vec<&[i64]> = u.iter().map(|x| x.as_slice()).collect();
        let e = combine(&rule(RobustKind::Krum, 0.0, 1), &all).expect_err("4 < 5");
        assert!(e.contains("at least 5"), "{e}");
        assert!(combine(&rule(RobustKind::Median, 0.0, 1), &[]).is_err());
        let ragged: Vec<&[i64]> = vec![&[1, 2], &[3]];
        assert!(combine(&rule(RobustKind::Median, 0.0, 1), &ragged).is_err());
    }

    #[test]
    fn trimmed_mean_rounds_to_nearest() {
        // Mean of (1, 2) = 1.5; times n = 2 is exactly 3.
        let a: Vec<&[i64]> = vec![&[1], &[2]];
        assert_eq!(
            combine(&rule(RobustKind::TrimmedMean, 0.0, 1), &a),
            Ok(vec![3])
        );
        let b: Vec<&[i64]> = vec![&[-1], &[-2], &[-2], &[0], &[-100]];
        // trim 0.2 of 5 drops -100 and 0: mean of (-1, -2, -2) = -5/3, times 5 = -8.33 -> -8.
        assert_eq!(
            combine(&rule(RobustKind::TrimmedMean, 0.2, 1), &b),
            Ok(vec![-8])
        );
        // A positive inexact one: trim 0.2 of 5 keeps (1, 2, 2), mean 5/3, times 5 = 8.33 -> 8;
        // and (2, 2, 3) in the second coordinate, 7/3 · 5 = 11.67 -> 12.
        let c: Vec<&[i64]> = vec![&[1, 2], &[2, 2], &[2, 3], &[0, 0], &[9, 9]];
        assert_eq!(
            combine(&rule(RobustKind::TrimmedMean, 0.2, 1), &c),
            Ok(vec![8, 12])
        );
        // Ties round away from zero: trim 0.2 of 6 drops one at each end and keeps (0, 0, 0, 1),
        // times 6 / 4 = 1.5 -> 2; and (−1, 0, 0, 0) -> −1.5 -> −2.
        let d: Vec<&[i64]> = vec![&[0, 0], &[0, 0], &[1, -1], &[0, 0], &[9, 9], &[-9, -9]];
        assert_eq!(
            combine(&rule(RobustKind::TrimmedMean, 0.2, 1), &d),
            Ok(vec![2, -2])
        );
    }
}
