//! Image and tensor data as one safetensors file (`[data] format = "safetensors"`): records
//! `x` (`[n, …]`, `U8` pixels scaled to `[0, 1]` by 1/255, or `F32` as they are), labels `y`
//! (`[n]`, U8, I8, U16, I16, U32, I32 or I64) and, optionally, a group per record `group`
//! (`[n]` integers: a writer, a hospital) for the natural split. One file per owner, readable by
//! NumPy, PyTorch and every safetensors reader; `confide data convert` makes one from IDX files.
//!
//! Errors never show a value: a bad label is reported by record index and class count only.

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::dataset::{DataError, Dataset};

/// Records, labels and groups read from a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrays {
    /// The records as a dataset.
    pub data: Dataset,
    /// The group of each record, when the file has `group`.
    pub groups: Option<Vec<i64>>,
}

fn bad(shown: &str, message: String) -> DataError {
    DataError::Schema {
        path: shown.to_string(),
        public: format!("the array file does not fit the job: {message}"),
        message,
    }
}

fn integers(view: &TensorView<'_>, shown: &str, name: &str) -> Result<Vec<i64>, DataError> {
    let b = view.data();
    let out: Vec<i64> = match view.dtype() {
        Dtype::U8 => b.iter().map(|&v| i64::from(v)).collect(),
        Dtype::I8 => b.iter().map(|&v| i64::from(v as i8)).collect(),
        Dtype::U16 => b
            .chunks_exact(2)
            .map(|c| i64::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::I16 => b
            .chunks_exact(2)
            .map(|c| i64::from(i16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::U32 => b
            .chunks_exact(4)
            .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        other => {
            return Err(bad(
                shown,
                format!("`{name}` must hold integers, not {other:?}"),
            ));
        }
    };
    Ok(out)
}

/// Reads `x`, `y` and (if present) `group` from safetensors bytes; `width` is the job's
/// `data.feature_count`, `classes` its class count.
///
/// # Errors
/// Malformed bytes, a missing tensor, shapes that do not fit, a label outside `0..classes`, a
/// non-finite feature.
pub fn read_arrays(
    bytes: &[u8],
    shown: &str,
    width: usize,
    classes: usize,
) -> Result<Arrays, DataError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(shown, format!("not a safetensors file ({e})")))?;
    let x = st
        .tensor("x")
        .map_err(|_| bad(shown, "no tensor `x` (the records)".into()))?;
    let y = st
        .tensor("y")
        .map_err(|_| bad(shown, "no tensor `y` (the labels)".into()))?;
    let n = *x
        .shape()
        .first()
        .ok_or_else(|| bad(shown, "`x` has no record axis".into()))?;
    let per = x.shape()[1..]
        .iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .ok_or_else(|| {
            bad(
                shown,
                format!("`x` has an impossible shape {:?}", x.shape()),
            )
        })?;
    if per != width {
        return Err(bad(
            shown,
            format!("`x` holds {per} numbers per record, the job's data.feature_count is {width}"),
        ));
    }
    if y.shape() != [n] {
        return Err(bad(
            shown,
            format!("`y` has shape {:?}, not [{n}]", y.shape()),
        ));
    }
    let features: Vec<f32> = match x.dtype() {
        Dtype::U8 => x.data().iter().map(|&p| f32::from(p) / 255.0).collect(),
        Dtype::F32 => x
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => {
            return Err(bad(shown, format!("`x` must be U8 or F32, not {other:?}")));
        }
    };
    if let Some(i) = features.iter().position(|v| !v.is_finite()) {
        return Err(DataError::BadNumber {
            path: shown.to_string(),
            line: (i / width.max(1) + 1) as u64,
            column: format!("x[{}]", i % width.max(1)),
            value: "(not shown)".into(),
            why: "is not finite",
        });
    }
    let labels = integers(&y, shown, "y")?;
    if let Some(i) = labels
        .iter()
        .position(|&l| l < 0 || l as u64 >= classes as u64)
    {
        return Err(DataError::BadLabel {
            path: shown.to_string(),
            line: (i + 1) as u64,
            value: "(not shown)".into(),
            classes,
        });
    }
    let groups = match st.tensor("group") {
        Ok(g) if g.shape() == [n] => Some(integers(&g, shown, "group")?),
        Ok(g) => {
            return Err(bad(
                shown,
                format!("`group` has shape {:?}, not [{n}]", g.shape()),
            ));
        }
        Err(_) => None,
    };
    if n == 0 {
        return Err(DataError::Empty {
            path: shown.to_string(),
        });
    }
    Ok(Arrays {
        data: Dataset {
            features,
            labels: labels.into_iter().map(|l| l as u32).collect(),
            feature_count: width,
            feature_names: (0..width).map(|i| format!("x{i}")).collect(),
        },
        groups,
    })
}

/// The records to write: raw pixels (`U8`, read back scaled by 1/255) or values (`F32`, read
/// back as they are).
#[derive(Debug, Clone, Copy)]
pub enum Records<'a> {
    /// Pixels 0..=255.
    Pixels(&'a [u8]),
    /// Values.
    Values(&'a [f32]),
}

impl Records<'_> {
    fn len(&self) -> usize {
        match self {
            Records::Pixels(p) => p.len(),
            Records::Values(v) => v.len(),
        }
    }
}

/// Writes records, labels (`I64`) and optionally groups (`I64`) as safetensors bytes, `x`
/// shaped `[n, shape…]`.
///
/// # Errors
/// Shapes that do not fit.
pub fn write_arrays(
    shape: &[usize],
    records: Records<'_>,
    labels: &[u32],
    groups: Option<&[i64]>,
) -> Result<Vec<u8>, DataError> {
    let n = labels.len();
    let width: usize = shape.iter().product();
    let fail = |m: String| DataError::Schema {
        path: "<arrays>".into(),
        message: m.clone(),
        public: m,
    };
    if records.len() != n * width || groups.is_some_and(|g| g.len() != n) {
        return Err(fail(format!(
            "{} values and {n} labels do not fit records of {shape:?}",
            records.len()
        )));
    }
    let (dtype, x): (Dtype, Vec<u8>) = match records {
        Records::Pixels(p) => (Dtype::U8, p.to_vec()),
        Records::Values(v) => (Dtype::F32, v.iter().flat_map(|v| v.to_le_bytes()).collect()),
    };
    let y: Vec<u8> = labels
        .iter()
        .flat_map(|&l| i64::from(l).to_le_bytes())
        .collect();
    let g: Option<Vec<u8>> = groups.map(|g| g.iter().flat_map(|v| v.to_le_bytes()).collect());
    let mut dims = vec![n];
    dims.extend_from_slice(shape);
    let mut views = vec![
        (
            "x".to_string(),
            TensorView::new(dtype, dims, &x).map_err(|e| fail(e.to_string()))?,
        ),
        (
            "y".to_string(),
            TensorView::new(Dtype::I64, vec![n], &y).map_err(|e| fail(e.to_string()))?,
        ),
    ];
    if let Some(g) = &g {
        views.push((
            "group".to_string(),
            TensorView::new(Dtype::I64, vec![n], g).map_err(|e| fail(e.to_string()))?,
        ));
    }
    safetensors::serialize(views, None).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(x: (&[u8], Dtype, Vec<usize>), y: (&[u8], Dtype, Vec<usize>)) -> Vec<u8> {
        let views = vec![
            ("x", TensorView::new(x.1, x.2, x.0).expect("x")),
            ("y", TensorView::new(y.1, y.2, y.0).expect("y")),
        ];
        safetensors::serialize(views, None).expect("serialize")
    }

    #[test]
    fn pixels_are_scaled_labels_checked_and_round_trips_hold() {
        let bytes = file(
            (&[0, 255, 51, 102, 0, 0, 255, 255], Dtype::U8, vec![2, 2, 2]),
            (&[3, 1], Dtype::U8, vec![2]),
        );
        let a = read_arrays(&bytes, "t", 4, 4).expect("read");
        assert_eq!(a.data.labels, [3, 1]);
        assert_eq!(a.data.features[..4], [0.0, 1.0, 0.2, 0.4]);
        assert!(a.groups.is_none());
        let err = read_arrays(&bytes, "t", 4, 3).expect_err("label 3 of 3 classes");
        assert!(
            err.public_reason(&[]).starts_with("DATA-005 line 1"),
            "{err}"
        );
        assert!(read_arrays(&bytes, "t", 5, 4).is_err(), "wrong width");
        assert!(read_arrays(&bytes[..20], "t", 4, 4).is_err(), "truncated");
        let back = write_arrays(
            &[2, 2],
            Records::Values(&a.data.features),
            &a.data.labels,
            Some(&[7, 9]),
        )
        .expect("write");
        let again = read_arrays(&back, "t", 4, 4).expect("read back");
        assert_eq!(again.data, a.data);
        assert_eq!(again.groups, Some(vec![7, 9]));
        let pixels = [0u8, 255, 51, 102, 0, 0, 255, 255];
        let raw = write_arrays(&[2, 2], Records::Pixels(&pixels), &[3, 1], None).expect("u8");
        assert_eq!(read_arrays(&raw, "t", 4, 4).expect("read").data, a.data);
    }
}
