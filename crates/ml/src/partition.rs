//! Partitioners: how one dataset is split among simulated owners (the real-data issue, item 4).
//! Each returns, per owner, the indices of its records, disjoint and covering the dataset, and
//! each is seeded (ChaCha20), so a seed reproduces a split exactly.
//!
//! - [`Partitioner::Natural`]: one owner per value of the record's group (a writer, a hospital,
//!   a speaking role), as LEAF and FLamby split their data.
//! - [`Partitioner::Iid`]: a uniform shuffle cut into near-equal parts.
//! - [`Partitioner::Dirichlet`]: for each class, owner shares drawn from Dirichlet(α); small α
//!   gives each owner few classes (Hsu, Qi and Brown 2019, "Measuring the Effects of
//!   Non-Identical Data Distribution for Federated Visual Classification").
//! - [`Partitioner::Shards`]: records sorted by label, cut into `owners × per_owner` shards,
//!   each owner dealt `per_owner` of them (McMahan et al. 2017's pathological non-IID split:
//!   200 shards of 300 MNIST images, 2 per client).
//! - [`Partitioner::Quantity`]: IID content, owner sizes drawn from Dirichlet(β) (the
//!   quantity-skew setting of Li, Diao, Chen and He 2022, "Federated Learning on Non-IID Data
//!   Silos: An Experimental Study").
//!
//! Gamma variates (for the Dirichlet draws) come from `rand_distr`.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, Gamma};

/// How to split a dataset among owners.
#[derive(Debug, Clone, PartialEq)]
pub enum Partitioner {
    /// One owner per group value, in sorted order of the values.
    Natural,
    /// Uniformly at random, near-equal sizes.
    Iid,
    /// Per class, owner shares ~ Dirichlet(α).
    Dirichlet {
        /// Concentration: small is skewed, large is near IID.
        alpha: f64,
    },
    /// Label-sorted shards, `per_owner` to each owner.
    Shards {
        /// Shards per owner.
        per_owner: usize,
    },
    /// Owner sizes ~ Dirichlet(β), content IID.
    Quantity {
        /// Concentration of the sizes.
        beta: f64,
    },
}

/// Why a dataset cannot be split as asked.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PartitionError {
    /// Zero owners, or more owners than records (or shards than records).
    #[error("cannot split {records} records among {owners} owners{detail}")]
    Size {
        /// Records.
        records: usize,
        /// Owners asked for.
        owners: usize,
        /// More about it.
        detail: String,
    },
    /// A concentration that is not positive and finite.
    #[error("{name} must be positive and finite, not {value}")]
    Concentration {
        /// `alpha` or `beta`.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// The natural split needs a group per record.
    #[error("the natural split needs a group column (one value per record)")]
    NoGroups,
}

/// Splits the records (their `labels`, and `groups` for the natural split) among `owners`
/// (ignored by the natural split, which has one owner per group). Returns each owner's record
/// indices, ascending.
///
/// # Errors
/// See [`PartitionError`].
pub fn partition(
    labels: &[u32],
    groups: Option<&[String]>,
    owners: usize,
    how: &Partitioner,
    seed: u64,
) -> Result<Vec<Vec<usize>>, PartitionError> {
    let n = labels.len();
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let size_error = |detail: &str| PartitionError::Size {
        records: n,
        owners,
        detail: detail.to_string(),
    };
    if !matches!(how, Partitioner::Natural) && (owners == 0 || owners > n) {
        return Err(size_error(""));
    }
    let mut parts = match how {
        Partitioner::Natural => {
            let groups = groups.ok_or(PartitionError::NoGroups)?;
            if groups.len() != n {
                return Err(PartitionError::NoGroups);
            }
            let mut by: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (i, g) in groups.iter().enumerate() {
                by.entry(g.as_str()).or_default().push(i);
            }
            by.into_values().collect()
        }
        Partitioner::Iid => {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            cut(&idx, &equal_sizes(n, owners))
        }
        Partitioner::Dirichlet { alpha } => {
            let shares = Dirichlet::new("alpha", *alpha, owners)?;
            let mut parts = vec![Vec::new(); owners];
            let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            for (i, &l) in labels.iter().enumerate() {
                by_class.entry(l).or_default().push(i);
            }
            for (_, mut idx) in by_class {
                idx.shuffle(&mut rng);
                let p = shares.sample(&mut rng);
                for (owner, chunk) in cut(&idx, &proportional_sizes(idx.len(), &p))
                    .into_iter()
                    .enumerate()
                {
                    parts[owner].extend(chunk);
                }
            }
            parts
        }
        Partitioner::Shards { per_owner } => {
            let shards = owners.saturating_mul(*per_owner);
            if *per_owner == 0 || shards > n {
                return Err(size_error(&format!(
                    " in {per_owner} shard(s) each ({shards} shards)"
                )));
            }
            // Sorted by label (ties by a seeded shuffle), cut into equal shards, dealt out.
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            idx.sort_by_key(|&i| labels[i]);
            let mut pieces = cut(&idx, &equal_sizes(n, shards));
            pieces.shuffle(&mut rng);
            pieces.chunks(*per_owner).map(|c| c.concat()).collect()
        }
        Partitioner::Quantity { beta } => {
            let p = Dirichlet::new("beta", *beta, owners)?.sample(&mut rng);
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            // Every owner gets at least one record; the rest follow the drawn proportions.
            let rest = proportional_sizes(n - owners, &p);
            let sizes: Vec<usize> = rest.iter().map(|s| s + 1).collect();
            cut(&idx, &sizes)
        }
    };
    for p in &mut parts {
        p.sort_unstable();
    }
    Ok(parts)
}

/// Dirichlet(c, …, c) over `k` owners, as normalised Gamma(c, 1) variates.
struct Dirichlet {
    gamma: Gamma<f64>,
    k: usize,
}

impl Dirichlet {
    fn new(name: &'static str, c: f64, k: usize) -> Result<Self, PartitionError> {
        let bad = PartitionError::Concentration { name, value: c };
        if !(c.is_finite() && c > 0.0) {
            return Err(bad);
        }
        Ok(Self {
            gamma: Gamma::new(c, 1.0).map_err(|_| bad)?,
            k,
        })
    }

    fn sample(&self, rng: &mut ChaCha20Rng) -> Vec<f64> {
        let g: Vec<f64> = (0..self.k).map(|_| self.gamma.sample(rng)).collect();
        let sum: f64 = g.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            g.iter().map(|x| x / sum).collect()
        } else {
            // Every variate underflowed (tiny c): all mass on one owner, as the limit is.
            let mut p = vec![0.0; self.k];
            p[0] = 1.0;
            p
        }
    }
}

/// `n` split into `k` sizes differing by at most one.
fn equal_sizes(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

/// `n` split by proportions `p` (summing to 1) with largest-remainder rounding, so the sizes
/// sum to exactly `n`.
fn proportional_sizes(n: usize, p: &[f64]) -> Vec<usize> {
    let exact: Vec<f64> = p.iter().map(|x| x * n as f64).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = n - sizes.iter().sum::<usize>().min(n);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| {
        let ra = exact[a] - exact[a].floor();
        let rb = exact[b] - exact[b].floor();
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        sizes[i] += 1;
        left -= 1;
    }
    sizes
}

/// `idx` cut into consecutive pieces of `sizes` (which sum to its length).
fn cut(idx: &[usize], sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for &s in sizes {
        out.push(idx[at..at + s].to_vec());
        at += s;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1,000 records of 10 classes, 100 each.
    fn labels() -> Vec<u32> {
        (0..1000).map(|i| (i % 10) as u32).collect()
    }

    fn check_cover(parts: &[Vec<usize>], n: usize) {
        let mut all: Vec<usize> = parts.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "disjoint and covering");
    }

    /// Mean over owners of the largest class's share of the owner's records.
    fn skew(parts: &[Vec<usize>], labels: &[u32]) -> f64 {
        let mut total = 0.0;
        let mut counted = 0;
        for p in parts.iter().filter(|p| !p.is_empty()) {
            let mut counts = [0usize; 10];
            for &i in p {
                counts[labels[i] as usize] += 1;
            }
            total += *counts.iter().max().unwrap_or(&0) as f64 / p.len() as f64;
            counted += 1;
        }
        total / counted as f64
    }

    #[test]
    fn every_partitioner_covers_the_dataset_and_a_seed_reproduces_it() {
        let labels = labels();
        for how in [
            Partitioner::Iid,
            Partitioner::Dirichlet { alpha: 0.5 },
            Partitioner::Shards { per_owner: 2 },
            Partitioner::Quantity { beta: 0.5 },
        ] {
            let a = partition(&labels, None, 20, &how, 7).expect("split");
            assert_eq!(a.len(), 20, "{how:?}");
            check_cover(&a, labels.len());
            assert_eq!(
                a,
                partition(&labels, None, 20, &how, 7).expect("again"),
                "{how:?}"
            );
            assert_ne!(
                a,
                partition(&labels, None, 20, &how, 8).expect("other"),
                "{how:?}"
            );
        }
        let iid = partition(&labels, None, 7, &Partitioner::Iid, 1).expect("split");
        let sizes: Vec<usize> = iid.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![143, 143, 143, 143, 143, 143, 142]);
    }

    #[test]
    fn the_natural_split_has_one_owner_per_group() {
        let labels = vec![0, 1, 0, 1, 1];
        let groups: Vec<String> = ["b", "a", "b", "c", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let parts = partition(&labels, Some(&groups), 0, &Partitioner::Natural, 1).expect("split");
        assert_eq!(parts, vec![vec![1, 4], vec![0, 2], vec![3]]);
        assert_eq!(
            partition(&labels, None, 0, &Partitioner::Natural, 1),
            Err(PartitionError::NoGroups)
        );
    }

    #[test]
    fn the_dirichlet_skew_moves_with_alpha() {
        let labels = labels();
        let at = |alpha| {
            // Averaged over seeds: one draw is noisy.
            (0..5)
                .map(|s| {
                    let p = partition(&labels, None, 10, &Partitioner::Dirichlet { alpha }, s)
                        .expect("split");
                    skew(&p, &labels)
                })
                .sum::<f64>()
                / 5.0
        };
        let (low, mid, high) = (at(0.05), at(1.0), at(100.0));
        assert!(low > mid && mid > high, "{low} {mid} {high}");
        // Near IID at α = 100: the largest class is close to a tenth of each owner's data.
        assert!(high < 0.2, "{high}");
        assert!(low > 0.6, "{low}");
    }

    #[test]
    fn shards_give_each_owner_few_classes() {
        // McMahan et al.'s setting in miniature: 2 shards per owner of label-sorted data.
        let labels = labels();
        let parts =
            partition(&labels, None, 50, &Partitioner::Shards { per_owner: 2 }, 3).expect("split");
        for p in &parts {
            assert_eq!(p.len(), 20);
            let mut classes: Vec<u32> = p.iter().map(|&i| labels[i]).collect();
            classes.dedup();
            classes.sort_unstable();
            classes.dedup();
            assert!(classes.len() <= 2, "{classes:?}");
        }
    }

    #[test]
    fn quantity_skew_moves_sizes_not_labels() {
        let labels = labels();
        let spread = |beta| {
            let p =
                partition(&labels, None, 10, &Partitioner::Quantity { beta }, 5).expect("split");
            let sizes: Vec<usize> = p.iter().map(Vec::len).collect();
            assert!(sizes.iter().all(|&s| s >= 1));
            sizes.iter().max().copied().unwrap_or(0) - sizes.iter().min().copied().unwrap_or(0)
        };
        assert!(
            spread(0.1) > spread(100.0),
            "{} {}",
            spread(0.1),
            spread(100.0)
        );
    }

    #[test]
    fn impossible_splits_are_refused() {
        let labels = labels();
        assert!(matches!(
            partition(&labels, None, 0, &Partitioner::Iid, 1),
            Err(PartitionError::Size { .. })
        ));
        assert!(matches!(
            partition(&labels, None, 1001, &Partitioner::Iid, 1),
            Err(PartitionError::Size { .. })
        ));
        assert!(matches!(
            partition(&labels, None, 600, &Partitioner::Shards { per_owner: 2 }, 1),
            Err(PartitionError::Size { .. })
        ));
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                partition(&labels, None, 10, &Partitioner::Dirichlet { alpha }, 1),
                Err(PartitionError::Concentration { .. })
            ));
        }
    }
}
