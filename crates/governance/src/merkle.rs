//! The Merkle tree of RFC 9162 (Laurie, Messeri, Stradling, "Certificate Transparency Version
//! 2.0", 2021), Section 2.1, with SHA-256:
//!
//! - `MTH({}) = SHA-256()`, `MTH({d}) = SHA-256(0x00 ‖ d)` (a leaf), and for `n > 1`, with `k`
//!   the largest power of two below `n`, `MTH(D[n]) = SHA-256(0x01 ‖ MTH(D[0:k]) ‖ MTH(D[k:n]))`.
//!   The distinct prefixes keep a leaf from passing for an interior node.
//! - Inclusion proofs (`PATH`, Section 2.1.3.1) and their verification (2.1.3.2).
//! - Consistency proofs (`PROOF`/`SUBPROOF`, 2.1.4.1) and their verification (2.1.4.2).
//!
//! Functions take the leaf *hashes*; roots are recomputed from them (linear in the tree size).

/// A SHA-256 value.
pub type Hash = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The leaf hash of an entry: `SHA-256(0x00 ‖ entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    sha256(&[&[0x00], entry])
}

/// An interior node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// `MTH` over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(&[]),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The inclusion proof of leaf `index` in the tree of `leaves` (`PATH`), or `None` when
/// `index` is out of range.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    Some(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// Verifies that `leaf` is entry `index` of the tree of size `size` whose root is `root`
/// (RFC 9162, Section 2.1.3.2).
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root_hash: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root_hash
}

/// The consistency proof between the tree of the first `old` leaves and the tree of all
/// `leaves` (`PROOF(m, D[n])`), or `None` unless `0 < old ≤ n`.
pub fn consistency_proof(old: usize, leaves: &[Hash]) -> Option<Vec<Hash>> {
    if old == 0 || old > leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    subproof(old, leaves, true, &mut out);
    Some(out)
}

fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// Verifies that the tree of size `second` with root `second_root` extends the tree of size
/// `first` with root `first_root` (RFC 9162, Section 2.1.4.2).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    fr == *first_root && sr == *second_root && snode == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        let v = hex::decode(s).expect("hex");
        let mut out = [0u8; 32];
        out.copy_from_slice(&v);
        out
    }

    /// The eight test entries of Certificate Transparency's reference Merkle tree tests (the
    /// RFC 6962 implementation's `merkle_tree_test`), with the roots of sizes 0–8 and two
    /// inclusion proofs; widely reproduced by independent CT implementations.
    const ENTRIES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        ENTRIES
            .iter()
            .map(|e| leaf_hash(&hex::decode(e).expect("hex")))
            .collect()
    }

    #[test]
    fn roots_match_the_reference_vectors() {
        let l = leaves();
        for (n, expected) in ROOTS.iter().enumerate() {
            assert_eq!(root(&l[..n]), h(expected), "size {n}");
        }
    }

    #[test]
    fn inclusion_proofs_match_the_reference_vectors_and_verify() {
        let l = leaves();
        let p0 = inclusion_proof(0, &l).expect("proof");
        assert_eq!(
            p0,
            vec![
                h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
                h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
                h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
            ]
        );
        let p5 = inclusion_proof(5, &l).expect("proof");
        assert_eq!(
            p5,
            vec![
                h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
                h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
            ]
        );
        let r = h(ROOTS[8]);
        assert!(verify_inclusion(0, 8, &l[0], &p0, &r));
        assert!(verify_inclusion(5, 8, &l[5], &p5, &r));
        assert!(!verify_inclusion(5, 8, &l[4], &p5, &r), "wrong leaf");
        assert!(!verify_inclusion(4, 8, &l[5], &p5, &r), "wrong index");
        assert!(!verify_inclusion(5, 8, &l[5], &p5[..2], &r), "short proof");
    }

    fn many(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    #[test]
    fn every_inclusion_proof_verifies_in_every_tree_size_and_tampering_fails() {
        let all = many(37);
        for size in 1..=all.len() {
            let tree = &all[..size];
            let r = root(tree);
            for i in 0..size {
                let p = inclusion_proof(i, tree).expect("proof");
                assert!(verify_inclusion(i as u64, size as u64, &tree[i], &p, &r));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(i as u64, size as u64, &tree[i], &bad, &r));
                }
            }
            assert!(inclusion_proof(size, tree).is_none());
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_rewritten_history_fails() {
        let all = many(37);
        for second in 1..=all.len() {
            let r2 = root(&all[..second]);
            for first in 1..=second {
                let r1 = root(&all[..first]);
                let p = consistency_proof(first, &all[..second]).expect("proof");
                assert!(
                    verify_consistency(first as u64, second as u64, &r1, &r2, &p),
                    "{first} → {second}"
                );
                if first < second {
                    // A log that changed an old entry cannot prove consistency with the old
                    // head.
                    let mut forged = all[..second].to_vec();
                    forged[first - 1] = leaf_hash(b"rewritten");
                    let fr2 = root(&forged);
                    let fp = consistency_proof(first, &forged).expect("proof");
                    assert!(!verify_consistency(
                        first as u64,
                        second as u64,
                        &r1,
                        &fr2,
                        &fp
                    ));
                }
            }
        }
        assert!(consistency_proof(0, &all).is_none());
        assert!(!verify_consistency(3, 2, &all[0], &all[1], &[]));
    }
}
