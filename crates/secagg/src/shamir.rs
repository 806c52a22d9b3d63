//! Shamir secret sharing (Shamir, "How to share a secret", CACM 1979) over the prime field
//! GF(p), p = 2^61 − 1 (a Mersenne prime, so reduction is two shifts and an add).
//!
//! Byte secrets (32-byte keys) are split into 7-byte chunks, each a field element below 2^56,
//! and every chunk is shared with its own random polynomial of degree `t − 1`. A share for the
//! holder with x-coordinate `x ≥ 1` is the polynomials' values at `x`; any `t` shares give the
//! secret back by Lagrange interpolation at 0, and fewer reveal nothing about it.

use rand::RngCore;

/// The field modulus 2^61 − 1.
pub const P: u64 = (1 << 61) - 1;

/// `a mod p` for any u128 below p².
fn reduce(a: u128) -> u64 {
    let lo = (a & u128::from(P)) as u64;
    let hi = (a >> 61) as u64;
    let s = lo + (hi & P) + (hi >> 61);
    let s = (s & P) + (s >> 61);
    if s >= P { s - P } else { s }
}

/// `a + b mod p`.
pub fn add(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P { s - P } else { s }
}

/// `a − b mod p`.
pub fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

/// `a · b mod p`.
pub fn mul(a: u64, b: u64) -> u64 {
    reduce(u128::from(a) * u128::from(b))
}

/// `a^e mod p`.
pub fn pow(mut a: u64, mut e: u64) -> u64 {
    let mut r = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, a);
        }
        a = mul(a, a);
        e >>= 1;
    }
    r
}

/// `a⁻¹ mod p` (Fermat); `a` must be non-zero.
pub fn inv(a: u64) -> u64 {
    pow(a, P - 2)
}

/// A uniform field element.
pub fn random(rng: &mut impl RngCore) -> u64 {
    loop {
        let v = rng.next_u64() >> 3;
        if v < P {
            return v;
        }
    }
}

/// Bytes per chunk of a byte secret.
const CHUNK: usize = 7;

/// Chunks of a secret of `len` bytes.
pub fn chunks(len: usize) -> usize {
    len.div_ceil(CHUNK)
}

/// Evaluates the polynomial with coefficients `coeffs` (constant first) at `x`.
pub fn eval(coeffs: &[u64], x: u64) -> u64 {
    coeffs.iter().rev().fold(0, |acc, &c| add(mul(acc, x), c))
}

/// Shares of field elements `secret` for holders `xs` (distinct, non-zero) with threshold `t`:
/// `result[h][i]` is holder `h`'s share of element `i`.
pub fn share_elements(
    secret: &[u64],
    t: usize,
    xs: &[u64],
    rng: &mut impl RngCore,
) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::with_capacity(secret.len()); xs.len()];
    for &s in secret {
        let mut coeffs = vec![s];
        coeffs.extend((1..t).map(|_| random(rng)));
        for (h, &x) in xs.iter().enumerate() {
            out[h].push(eval(&coeffs, x));
        }
    }
    out
}

/// The field elements of a byte secret.
pub fn bytes_to_elements(secret: &[u8]) -> Vec<u64> {
    secret
        .chunks(CHUNK)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

/// The byte secret of `len` bytes from its field elements.
///
/// # Errors
/// An element that cannot be a chunk (a wrong reconstruction).
pub fn elements_to_bytes(elements: &[u64], len: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(len);
    for (i, e) in elements.iter().enumerate() {
        let width = CHUNK.min(len - i * CHUNK);
        if *e >> (8 * width) != 0 {
            return Err("a reconstructed chunk is out of range (wrong shares)".into());
        }
        out.extend_from_slice(&e.to_le_bytes()[..width]);
    }
    Ok(out)
}

/// Reconstructs field elements from `t` or more shares `(x, share vector)`; uses the first
/// `t`.
///
/// # Errors
/// Fewer than `t` shares, duplicate or zero x, or share vectors of different lengths.
pub fn reconstruct_elements(shares: &[(u64, &[u64])], t: usize) -> Result<Vec<u64>, String> {
    if shares.len() < t || t == 0 {
        return Err(format!("{} shares, {t} needed", shares.len()));
    }
    let used = &shares[..t];
    let width = used[0].1.len();
    if used.iter().any(|(_, s)| s.len() != width) {
        return Err("shares of different lengths".into());
    }
    let lagrange = lagrange_at_zero(&used.iter().map(|(x, _)| *x).collect::<Vec<_>>())?;
    Ok((0..width)
        .map(|i| {
            used.iter()
                .zip(&lagrange)
                .fold(0, |acc, ((_, s), &l)| add(acc, mul(s[i], l)))
        })
        .collect())
}

/// Lagrange coefficients for interpolating at 0 from the points `xs`.
///
/// # Errors
/// A zero or repeated x.
pub fn lagrange_at_zero(xs: &[u64]) -> Result<Vec<u64>, String> {
    let mut out = Vec::with_capacity(xs.len());
    for (j, &xj) in xs.iter().enumerate() {
        if xj == 0 || xj >= P {
            return Err("share index out of range".into());
        }
        let (mut num, mut den) = (1u64, 1u64);
        for (m, &xm) in xs.iter().enumerate() {
            if m == j {
                continue;
            }
            if xm == xj {
                return Err("two shares with the same index".into());
            }
            num = mul(num, xm);
            den = mul(den, sub(xm, xj));
        }
        out.push(mul(num, inv(den)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn field_arithmetic_is_modular() {
        assert_eq!(add(P - 1, 2), 1);
        assert_eq!(sub(0, 1), P - 1);
        assert_eq!(mul(P - 1, P - 1), 1);
        for a in [1u64, 2, 12345, P - 2] {
            assert_eq!(mul(a, inv(a)), 1);
        }
        // 2^61 ≡ 1.
        assert_eq!(pow(2, 61), 1);
    }

    #[test]
    fn any_t_shares_recover_a_byte_secret_and_fewer_do_not_determine_it() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let xs: Vec<u64> = (1..=10).collect();
        let shares = share_elements(&bytes_to_elements(&secret), 6, &xs, &mut rng);
        // Every 6-subset of a sample of orders.
        for start in 0..5 {
            let pick: Vec<(u64, &[u64])> = (start..start + 6)
                .map(|i| (xs[i], shares[i].as_slice()))
                .collect();
            let back = reconstruct_elements(&pick, 6).expect("enough");
            assert_eq!(elements_to_bytes(&back, 32).expect("bytes"), secret);
        }
        let five: Vec<(u64, &[u64])> = (0..5).map(|i| (xs[i], shares[i].as_slice())).collect();
        assert!(reconstruct_elements(&five, 6).is_err());
        // Interpolating 5 shares as if t were 5 gives something else (degree-5 polynomial).
        let wrong = reconstruct_elements(&five, 5).expect("interpolates");
        assert_ne!(wrong, bytes_to_elements(&secret));
    }
}
