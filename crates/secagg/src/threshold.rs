//! The arithmetic of the `threshold` scheme: Shamir sharing of update vectors among `n`
//! aggregators (any `t` shares reconstruct; `t − 1` colluding aggregators learn nothing), and
//! **robust reconstruction** of the sum from the aggregators' partial sums when some crashed
//! and some lie, naming the liars.
//!
//! # Decoding
//! Aggregator `a` (x-coordinate `a + 1`) returns `S_a[j] = F_j(a + 1)`, where `F_j` is the sum of
//! the owners' degree-`(t − 1)` polynomials for coordinate `j`, so `(S_a[j])_a` is a Reed–Solomon
//! codeword for every `j`. The decoder draws secret random weights `r_j` and decodes the single
//! codeword `y_a = Σ_j r_j S_a[j]` with the Berlekamp–Welch algorithm (Welch & Berlekamp, US
//! patent 4,633,470, 1986; as presented by Gemmell & Sudan, 1992): with `N` replies it corrects
//! up to `E = ⌊(N − t)/2⌋` wrong ones, i.e. it needs `N ≥ t + 2e` for `e` liars. An aggregator
//! whose `y_a` is off the decoded polynomial is **named** as a liar. A lie that changes any
//! coordinate changes `y_a` except with probability `1/p` (`p = 2^61 − 1`), because the weights
//! are drawn after the replies arrived. The sum is then interpolated from `t` non-liars, and
//! every further non-liar is checked against it with fresh weights.
//!
//! # Past the bound (the weaker guarantee, tested)
//! Error correction alone cannot tell a liar from an honest party when there are too many of
//! them:
//! - liars that do not coordinate are detected, and the round fails with an error;
//! - `e` liars that coordinate can make the decoder return a **wrong sum silently** when
//!   `e ≥ N − E − t + 1`: they all answer with one polynomial `Q ≠ F` that also passes through
//!   `t − 1` honest answers, so `Q` agrees with `N − E` replies. With `n = 7`, `t = 4` and no
//!   crash that takes 3 liars; with one crash, 2;
//! - an owner that sends one aggregator a share off its polynomial makes that honest aggregator
//!   look like a liar (it is named) and, within the bound, the sum stays correct but includes
//!   that owner's inconsistent contribution as decoded from the other shares.
//!
//! Verifiable shares (commitments to the share vectors) would close the first two gaps; they are
//! not implemented.

use rand::RngCore;

use crate::shamir::{self, P, add, mul, sub};

/// Threshold-scheme errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    /// Bad parameters or inputs.
    #[error("threshold: {0}")]
    Invalid(String),
    /// Fewer replies than the threshold.
    #[error("threshold: {got} aggregators answered, {t} are needed")]
    TooFew {
        /// Replies.
        got: usize,
        /// The threshold.
        t: usize,
    },
    /// More wrong replies than can be corrected: detected, no sum returned.
    #[error(
        "threshold: the partial sums cannot be decoded: more than {correctable} of {replies} aggregators are wrong"
    )]
    Undecodable {
        /// Replies received.
        replies: usize,
        /// Wrong replies that could have been corrected.
        correctable: usize,
    },
}

/// A field element for a signed integer (`|v| < p/2`).
pub fn to_field(v: i64) -> u64 {
    if v >= 0 {
        (v as u64) % P
    } else {
        P - ((v.unsigned_abs()) % P)
    }
}

/// The signed integer of a field element (values above `p/2` are negative).
pub fn from_field(v: u64) -> i128 {
    if v > P / 2 {
        i128::from(v) - i128::from(P)
    } else {
        i128::from(v)
    }
}

/// Shares an encoded update among `n` aggregators with threshold `t`: `result[a]` goes to
/// aggregator `a` (x-coordinate `a + 1`).
///
/// # Errors
/// `t` not in `1..=n`.
pub fn share(
    encoded: &[i64],
    n: usize,
    t: usize,
    rng: &mut impl RngCore,
) -> Result<Vec<Vec<u64>>, ThresholdError> {
    if t == 0 || t > n {
        return Err(ThresholdError::Invalid(format!(
            "threshold {t} with {n} aggregators"
        )));
    }
    let xs: Vec<u64> = (1..=n as u64).collect();
    let mut out = vec![Vec::with_capacity(encoded.len()); n];
    let mut coeffs = vec![0u64; t];
    for &v in encoded {
        coeffs[0] = to_field(v);
        for c in &mut coeffs[1..] {
            *c = shamir::random(rng);
        }
        for (a, &x) in xs.iter().enumerate() {
            out[a].push(shamir::eval(&coeffs, x));
        }
    }
    Ok(out)
}

/// An aggregator's work: the coordinate-wise sum of the share vectors it received.
///
/// # Errors
/// Vectors of different lengths.
pub fn aggregate<'a>(
    shares: impl IntoIterator<Item = &'a [u64]>,
) -> Result<Vec<u64>, ThresholdError> {
    let mut acc: Option<Vec<u64>> = None;
    for s in shares {
        match &mut acc {
            None => {
                if s.iter().any(|&y| y >= P) {
                    return Err(ThresholdError::Invalid(
                        "a share is not a field element".into(),
                    ));
                }
                acc = Some(s.to_vec());
            }
            Some(a) => {
                if a.len() != s.len() {
                    return Err(ThresholdError::Invalid(
                        "share vectors of different lengths".into(),
                    ));
                }
                for (x, y) in a.iter_mut().zip(s) {
                    if *y >= P {
                        return Err(ThresholdError::Invalid(
                            "a share is not a field element".into(),
                        ));
                    }
                    *x = add(*x, *y);
                }
            }
        }
    }
    acc.ok_or_else(|| ThresholdError::Invalid("no shares".into()))
}

/// The decoded sum and the aggregators found lying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Per-coordinate sums.
    pub sums: Vec<i128>,
    /// Indices of aggregators whose partial sums were wrong.
    pub liars: Vec<usize>,
}

fn combine(v: &[u64], weights: &[u64]) -> u64 {
    v.iter()
        .zip(weights)
        .fold(0, |acc, (&a, &w)| add(acc, mul(a, w)))
}

/// Solves `A x = b` over GF(p) by Gaussian elimination; `None` when singular.
fn solve(mut a: Vec<Vec<u64>>, mut b: Vec<u64>) -> Option<Vec<u64>> {
    let n = b.len();
    let m = a.first().map_or(0, Vec::len);
    let mut row = 0;
    let mut pivots = Vec::new();
    for col in 0..m {
        let Some(pr) = (row..n).find(|&r| a[r][col] != 0) else {
            continue;
        };
        a.swap(row, pr);
        b.swap(row, pr);
        let inv = shamir::inv(a[row][col]);
        for v in &mut a[row][col..m] {
            *v = mul(*v, inv);
        }
        b[row] = mul(b[row], inv);
        let pivot_row = a[row].clone();
        for r in 0..n {
            if r != row && a[r][col] != 0 {
                let f = a[r][col];
                for (v, &p) in a[r][col..m].iter_mut().zip(&pivot_row[col..m]) {
                    *v = sub(*v, mul(f, p));
                }
                b[r] = sub(b[r], mul(f, b[row]));
            }
        }
        pivots.push(col);
        row += 1;
        if row == n {
            break;
        }
    }
    // Inconsistent rows (0 = non-zero) mean no solution.
    if (row..n).any(|r| b[r] != 0) {
        return None;
    }
    let mut x = vec![0u64; m];
    for (r, &c) in pivots.iter().enumerate() {
        x[c] = b[r];
    }
    Some(x)
}

/// Polynomial division over GF(p): `(quotient, remainder)`; `den` has a non-zero leading term.
fn divide(num: &[u64], den: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let mut rem = num.to_vec();
    let dd = den.len() - 1;
    if num.len() <= dd {
        return (vec![0], rem);
    }
    let lead_inv = shamir::inv(den[dd]);
    let mut q = vec![0u64; num.len() - dd];
    for i in (0..q.len()).rev() {
        let coef = mul(rem[i + dd], lead_inv);
        q[i] = coef;
        for (j, &d) in den.iter().enumerate() {
            rem[i + j] = sub(rem[i + j], mul(coef, d));
        }
    }
    rem.truncate(dd);
    (q, rem)
}

/// Berlekamp–Welch: the polynomial of degree `< t` through all but at most `e` of the points,
/// or `None`.
pub fn berlekamp_welch(points: &[(u64, u64)], t: usize, e: usize) -> Option<Vec<u64>> {
    let n = points.len();
    if n < t + 2 * e {
        return None;
    }
    // Unknowns: Q's t + e coefficients, then E's e low coefficients (E is monic of degree e).
    // Equation per point: Q(x) − y·(E_0 + … + E_{e−1} x^{e−1}) = y·x^e.
    let cols = t + e + e;
    let mut a = Vec::with_capacity(n);
    let mut b = Vec::with_capacity(n);
    for &(x, y) in points {
        let mut row = Vec::with_capacity(cols);
        let mut xp = 1u64;
        for _ in 0..t + e {
            row.push(xp);
            xp = mul(xp, x);
        }
        let mut xp = 1u64;
        for _ in 0..e {
            row.push(sub(0, mul(y, xp)));
            xp = mul(xp, x);
        }
        a.push(row);
        b.push(mul(y, shamir::pow(x, e as u64)));
    }
    let sol = solve(a, b)?;
    let q = &sol[..t + e];
    let mut err = sol[t + e..].to_vec();
    err.push(1);
    let (p, rem) = divide(q, &err);
    if rem.iter().any(|&r| r != 0) {
        return None;
    }
    let mut p = p;
    p.resize(t, 0);
    if p.len() > t {
        return None;
    }
    let agree = points
        .iter()
        .filter(|&&(x, y)| shamir::eval(&p, x) == y)
        .count();
    (agree + e >= n).then_some(p)
}

/// Robustly reconstructs the sum from the aggregators' partial sums `(index, vector)`, naming
/// the aggregators whose vectors are wrong. `rng` must be secret to the decoder.
///
/// # Errors
/// Fewer than `t` replies, inconsistent lengths, or more wrong replies than can be corrected
/// (see the module documentation for what coordinated liars past the bound can do).
pub fn reconstruct(
    replies: &[(usize, Vec<u64>)],
    t: usize,
    rng: &mut impl RngCore,
) -> Result<Decoded, ThresholdError> {
    let n = replies.len();
    if n < t || t == 0 {
        return Err(ThresholdError::TooFew { got: n, t });
    }
    let len = replies[0].1.len();
    if replies.iter().any(|(_, v)| v.len() != len) {
        return Err(ThresholdError::Invalid(
            "partial sums of different lengths".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    if replies
        .iter()
        .any(|(a, _)| !seen.insert(*a) || *a as u64 + 1 >= P)
    {
        return Err(ThresholdError::Invalid(
            "a repeated or out-of-range aggregator index".into(),
        ));
    }
    if replies.iter().any(|(_, v)| v.iter().any(|&y| y >= P)) {
        return Err(ThresholdError::Invalid(
            "a partial sum is not made of field elements".into(),
        ));
    }
    let weights: Vec<u64> = (0..len).map(|_| shamir::random(rng)).collect();
    let points: Vec<(u64, u64)> = replies
        .iter()
        .map(|(a, v)| (*a as u64 + 1, combine(v, &weights)))
        .collect();
    let correctable = (n - t) / 2;
    let poly = berlekamp_welch(&points, t, correctable).ok_or(ThresholdError::Undecodable {
        replies: n,
        correctable,
    })?;
    let liars: Vec<usize> = replies
        .iter()
        .zip(&points)
        .filter(|(_, (x, y))| shamir::eval(&poly, *x) != *y)
        .map(|((a, _), _)| *a)
        .collect();
    let honest: Vec<&(usize, Vec<u64>)> =
        replies.iter().filter(|(a, _)| !liars.contains(a)).collect();
    if honest.len() < t {
        return Err(ThresholdError::Undecodable {
            replies: n,
            correctable,
        });
    }
    let (used, rest) = honest.split_at(t);
    let xs: Vec<u64> = used.iter().map(|(a, _)| *a as u64 + 1).collect();
    let lagrange = shamir::lagrange_at_zero(&xs).map_err(ThresholdError::Invalid)?;
    let sums: Vec<u64> = (0..len)
        .map(|j| {
            used.iter()
                .zip(&lagrange)
                .fold(0, |acc, ((_, v), &l)| add(acc, mul(v[j], l)))
        })
        .collect();
    // Every other non-liar must agree with the interpolation, on fresh weights.
    if !rest.is_empty() {
        let check: Vec<u64> = (0..len).map(|_| shamir::random(rng)).collect();
        let combos: Vec<u64> = used.iter().map(|(_, v)| combine(v, &check)).collect();
        for (a, v) in rest {
            let x = *a as u64 + 1;
            let basis = lagrange_at(&xs, x).map_err(ThresholdError::Invalid)?;
            let predicted = combos
                .iter()
                .zip(&basis)
                .fold(0, |acc, (&c, &l)| add(acc, mul(c, l)));
            if predicted != combine(v, &check) {
                return Err(ThresholdError::Undecodable {
                    replies: n,
                    correctable,
                });
            }
        }
    }
    Ok(Decoded {
        sums: sums.into_iter().map(from_field).collect(),
        liars,
    })
}

/// Lagrange basis values at `x` for the points `xs`.
fn lagrange_at(xs: &[u64], x: u64) -> Result<Vec<u64>, String> {
    let mut out = Vec::with_capacity(xs.len());
    for (j, &xj) in xs.iter().enumerate() {
        let (mut num, mut den) = (1u64, 1u64);
        for (m, &xm) in xs.iter().enumerate() {
            if m != j {
                if xm == xj {
                    return Err("repeated x".into());
                }
                num = mul(num, sub(x, xm));
                den = mul(den, sub(xj, xm));
            }
        }
        out.push(mul(num, shamir::inv(den)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
