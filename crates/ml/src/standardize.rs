//! Feature standardisation `x' = (x - mean) / std`.
//!
//! Statistics are fitted on training data only ([`Standardizer::fit`]); in a federated job they
//! come from the job file instead, because owners fitting their own statistics would train on
//! differently scaled inputs and FedAvg would average incompatible weights.

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;

/// Per-feature mean and standard deviation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// Per-feature mean.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation; constant features get 1 so they map to 0.
    pub std: Vec<f64>,
}

impl Standardizer {
    /// The fixed standardisation a job file gives (`None` for `mode = "none"`).
    pub fn of_job(spec: &confide_core::StandardizeSpec) -> Option<Self> {
        match spec {
            confide_core::StandardizeSpec::None => None,
            confide_core::StandardizeSpec::Fixed { mean, std } => Some(Self {
                mean: mean.clone(),
                std: std.clone(),
            }),
        }
    }

    /// Fits mean and (population) standard deviation on a training set.
    pub fn fit(train: &Dataset) -> Self {
        let d = train.feature_count;
        let n = train.len().max(1) as f64;
        let mut mean = vec![0.0f64; d];
        for i in 0..train.len() {
            for (m, &x) in mean.iter_mut().zip(train.row(i)) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f64; d];
        for i in 0..train.len() {
            for ((v, &x), m) in var.iter_mut().zip(train.row(i)).zip(&mean) {
                *v += (f64::from(x) - m).powi(2);
            }
        }
        let std = var
            .into_iter()
            .map(|v| {
                let s = (v / n).sqrt();
                if s > 1e-12 { s } else { 1.0 }
            })
            .collect();
        Self { mean, std }
    }

    /// Applies the transformation in place.
    ///
    /// # Panics
    /// If the dataset's feature count differs from the fitted one (a caller bug: schemas are
    /// checked when data is loaded).
    pub fn apply(&self, data: &mut Dataset) {
        assert_eq!(data.feature_count, self.mean.len(), "standardizer width");
        for row in data.features.chunks_mut(data.feature_count) {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = ((f64::from(*x) - m) / s) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_then_apply_gives_zero_mean_unit_variance_and_ignores_test_rows() {
        let mut train = Dataset {
            features: vec![1.0, 5.0, 3.0, 5.0],
            labels: vec![0, 1],
            feature_count: 2,
            feature_names: vec!["a".into(), "b".into()],
        };
        let s = Standardizer::fit(&train);
        assert_eq!(s.mean, vec![2.0, 5.0]);
        assert_eq!(s.std, vec![1.0, 1.0]); // the constant column keeps std 1
        s.apply(&mut train);
        assert_eq!(train.features, vec![-1.0, 0.0, 1.0, 0.0]);
        let mut test = Dataset {
            features: vec![4.0, 6.0],
            labels: vec![0],
            feature_count: 2,
            feature_names: vec!["a".into(), "b".into()],
        };
        s.apply(&mut test);
        assert_eq!(test.features, vec![2.0, 1.0]);
    }
}
