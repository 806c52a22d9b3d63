//! CSV datasets: features as `f32`, labels as class indices.
//!
//! The label column and any excluded columns (such as breast_homo's `id`) are named by header
//! or by zero-based index, since some files (digits.csv) have no header. Every malformed row is
//! reported with its line number; nothing is silently dropped.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

/// Which column is the label and which columns to ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvSpec {
    /// Whether the first row is a header.
    pub has_header: bool,
    /// The label column.
    pub label: Column,
    /// Columns that are neither features nor label.
    pub exclude: Vec<Column>,
}

/// A column by header name or zero-based index (the job file's type).
pub use confide_core::ColumnRef as Column;

/// Problems with a data file. These are the data owner's input errors.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// File path.
        path: String,
        /// Underlying error.
        message: String,
    },
    /// A named column is not in the header, or an index is past the last column.
    #[error("{path}: {column} not found (the file has {available} columns)")]
    MissingColumn {
        /// File path.
        path: String,
        /// The column asked for.
        column: String,
        /// How many columns the file has.
        available: usize,
    },
    /// A row has a different number of fields from the first row.
    #[error("{path}:{line}: expected {expected} fields, found {found}")]
    FieldCount {
        /// File path.
        path: String,
        /// 1-based line number.
        line: u64,
        /// Fields in the first row.
        expected: usize,
        /// Fields in this row.
        found: usize,
    },
    /// A feature value is not a number, not finite, or outside f32's range.
    #[error("{path}:{line}: column {column}: `{value}` {why}")]
    BadNumber {
        /// File path.
        path: String,
        /// 1-based line number.
        line: u64,
        /// The column (header name or index).
        column: String,
        /// The offending text.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A label is not a non-negative integer below the number of classes.
    #[error("{path}:{line}: label `{value}` is not a class index in 0..{classes}")]
    BadLabel {
        /// File path.
        path: String,
        /// 1-based line number.
        line: u64,
        /// The offending text.
        value: String,
        /// Number of classes expected.
        classes: usize,
    },
    /// The CSV parser rejected the file (for example, unbalanced quotes).
    #[error("{path}: malformed CSV near line {line}: {message}")]
    Malformed {
        /// File path.
        path: String,
        /// 1-based line number where the parser stopped.
        line: u64,
        /// The parser's message.
        message: String,
    },
    /// The file has no data rows.
    #[error("{path}: no data rows")]
    Empty {
        /// File path.
        path: String,
    },
    /// A text file cannot become records (never shows the text).
    #[error("{path}:{line}: {message}")]
    Text {
        /// File path.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong, without the text's content.
        message: String,
    },
    /// The file's columns do not match the job's schema.
    #[error("{path}: schema mismatch: {message}")]
    Schema {
        /// File path.
        path: String,
        /// What differs.
        message: String,
        /// What differs, in terms of the job's schema only (no header text from the file).
        public: String,
    },
}

impl DataError {
    /// What may cross the network about this error: a numbered reason, a line number, and a
    /// column name only when the job's schema (`schema`, its feature names) has it. Never a
    /// cell's content, a parser's message (it may quote the data) or a local path.
    pub fn public_reason(&self, schema: &[String]) -> String {
        let column = |c: &str| {
            if schema.iter().any(|s| s == c) {
                format!("column `{c}`")
            } else {
                "a column".to_string()
            }
        };
        match self {
            Self::Io { .. } => "DATA-001 the data file cannot be read".into(),
            Self::MissingColumn { .. } => {
                "DATA-002 a column the job needs is not in the data file".into()
            }
            Self::FieldCount {
                line,
                expected,
                found,
                ..
            } => format!("DATA-003 line {line}: {found} fields where {expected} were expected"),
            Self::BadNumber {
                line, column: c, ..
            } => {
                format!("DATA-004 line {line}: {} holds no finite number", column(c))
            }
            Self::BadLabel { line, classes, .. } => {
                format!("DATA-005 line {line}: the label is not a class index in 0..{classes}")
            }
            Self::Malformed { line, .. } => format!("DATA-006 malformed CSV near line {line}"),
            Self::Empty { .. } => "DATA-007 the data file has no data rows".into(),
            Self::Schema { public, .. } => format!("DATA-008 {public}"),
            Self::Text { line, message, .. } => format!("DATA-009 line {line}: {message}"),
        }
    }
}

/// A loaded dataset, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Feature values, `rows × feature_count`, row-major.
    pub features: Vec<f32>,
    /// Class index per row.
    pub labels: Vec<u32>,
    /// Number of features per row.
    pub feature_count: usize,
    /// Feature names from the header (`x{i}`-style positions when the file has none).
    pub feature_names: Vec<String>,
}

impl Dataset {
    /// The rows of several datasets with the same columns, in order (`None` for no parts).
    pub fn concat(parts: impl IntoIterator<Item = Dataset>) -> Option<Dataset> {
        let mut parts = parts.into_iter();
        let mut all = parts.next()?;
        for part in parts {
            all.features.extend_from_slice(&part.features);
            all.labels.extend_from_slice(&part.labels);
        }
        Some(all)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The feature slice of one row.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.feature_count..(i + 1) * self.feature_count]
    }

    /// Rows selected by index, in the given order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.feature_count);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            features.extend_from_slice(self.row(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            features,
            labels,
            feature_count: self.feature_count,
            feature_names: self.feature_names.clone(),
        }
    }

    /// A stratified split: for each class, `test_fraction` of its rows (rounded) go to the
    /// second set, chosen by a seeded shuffle.
    pub fn stratified_split(&self, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let classes = self
            .labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        let mut train = Vec::new();
        let mut test = Vec::new();
        for class in 0..classes {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&i| self.labels[i] as usize == class)
                .collect();
            rows.shuffle(&mut rng);
            let n_test = (rows.len() as f64 * test_fraction).round() as usize;
            test.extend_from_slice(&rows[..n_test]);
            train.extend_from_slice(&rows[n_test..]);
        }
        train.sort_unstable();
        test.sort_unstable();
        (self.select(&train), self.select(&test))
    }

    /// Checks the dataset against a job's schema: feature count, and names when both sides
    /// have them.
    pub fn check_schema(
        &self,
        path: &str,
        feature_count: usize,
        names: &[String],
    ) -> Result<(), DataError> {
        if self.feature_count != feature_count {
            let message = format!(
                "the job expects {feature_count} feature columns, the file has {}",
                self.feature_count
            );
            return Err(DataError::Schema {
                path: path.to_string(),
                public: message.clone(),
                message,
            });
        }
        if !names.is_empty() && names != self.feature_names.as_slice() {
            let first = names
                .iter()
                .zip(&self.feature_names)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(DataError::Schema {
                path: path.to_string(),
                message: format!(
                    "feature {first} is `{}` in the file but `{}` in the job",
                    self.feature_names[first], names[first]
                ),
                public: format!(
                    "feature {first} is not `{}` in the file, as the job expects",
                    names[first]
                ),
            });
        }
        Ok(())
    }
}

fn resolve_column(
    column: &Column,
    header: Option<&csv::StringRecord>,
    width: usize,
    path: &str,
) -> Result<usize, DataError> {
    let missing = || DataError::MissingColumn {
        path: path.to_string(),
        column: column.to_string(),
        available: width,
    };
    match column {
        Column::Index(i) if *i < width => Ok(*i),
        Column::Index(_) => Err(missing()),
        Column::Name(name) => header
            .and_then(|h| h.iter().position(|f| f.trim() == name))
            .ok_or_else(missing),
    }
}

/// The values of one column (a record's group: a writer, a hospital, a speaking role), one per
/// data row, trimmed; for splitting a dataset by it ([`crate::partition`]).
///
/// # Errors
/// Unreadable or malformed CSV, a missing column, or a row too short to hold it.
pub fn read_column(
    reader: impl std::io::Read,
    shown: &str,
    has_header: bool,
    column: &Column,
) -> Result<Vec<String>, DataError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let mut records = csv.records();
    let malformed = |e: csv::Error| DataError::Malformed {
        path: shown.to_string(),
        line: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    };
    let header = match (has_header, records.next()) {
        (_, None) => {
            return Err(DataError::Empty {
                path: shown.to_string(),
            });
        }
        (true, Some(h)) => Some(h.map_err(malformed)?),
        (false, Some(first)) => {
            let first = first.map_err(malformed)?;
            let at = resolve_column(column, None, first.len(), shown)?;
            return std::iter::once(Ok(first))
                .chain(records)
                .enumerate()
                .map(|(i, r)| value_at(r.map_err(malformed)?, at, i as u64 + 1, shown))
                .collect();
        }
    };
    let width = header.as_ref().map_or(0, csv::StringRecord::len);
    let at = resolve_column(column, header.as_ref(), width, shown)?;
    records
        .enumerate()
        .map(|(i, r)| value_at(r.map_err(malformed)?, at, i as u64 + 2, shown))
        .collect()
}

fn value_at(
    record: csv::StringRecord,
    at: usize,
    line: u64,
    shown: &str,
) -> Result<String, DataError> {
    record
        .get(at)
        .map(|v| v.trim().to_string())
        .ok_or_else(|| DataError::FieldCount {
            path: shown.to_string(),
            line,
            expected: at + 1,
            found: record.len(),
        })
}

/// Loads a CSV file. `classes` bounds the labels (labels must be integers in `0..classes`).
pub fn load_csv(path: &Path, spec: &CsvSpec, classes: usize) -> Result<Dataset, DataError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| DataError::Io {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    read_csv(file, &shown, spec, classes)
}

/// Parses CSV from any reader (see [`load_csv`]).
pub fn read_csv(
    reader: impl std::io::Read,
    shown: &str,
    spec: &CsvSpec,
    classes: usize,
) -> Result<Dataset, DataError> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let malformed = |e: csv::Error| DataError::Malformed {
        path: shown.to_string(),
        line: e.position().map_or(0, |p| p.line()),
        message: e.to_string(),
    };
    let mut records = csv.records();
    let header = if spec.has_header {
        match records.next() {
            Some(r) => Some(r.map_err(malformed)?),
            None => {
                return Err(DataError::Empty {
                    path: shown.to_string(),
                });
            }
        }
    } else {
        None
    };

    let mut width = header.as_ref().map(|h| h.len());
    let mut plan: Option<(usize, Vec<usize>)> = None;
    let mut names = Vec::new();
    let mut features = Vec::new();
    let mut labels = Vec::new();

    for record in records {
        let record = record.map_err(malformed)?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() == 1 && record.get(0).is_some_and(|f| f.trim().is_empty()) {
            // A blank line (such as a trailing one) carries no data.
            continue;
        }
        let w = *width.get_or_insert(record.len());
        if record.len() != w {
            return Err(DataError::FieldCount {
                path: shown.to_string(),
                line,
                expected: w,
                found: record.len(),
            });
        }
        if plan.is_none() {
            let label = resolve_column(&spec.label, header.as_ref(), w, shown)?;
            let mut skip = vec![label];
            for c in &spec.exclude {
                skip.push(resolve_column(c, header.as_ref(), w, shown)?);
            }
            let cols: Vec<usize> = (0..w).filter(|i| !skip.contains(i)).collect();
            names = cols
                .iter()
                .map(|&i| match &header {
                    Some(h) => h.get(i).unwrap_or("").trim().to_string(),
                    None => format!("#{i}"),
                })
                .collect();
            plan = Some((label, cols));
        }
        let Some((label_col, cols)) = &plan else {
            unreachable!("plan is set above")
        };
        let raw_label = record.get(*label_col).unwrap_or("").trim();
        let label = parse_label(raw_label, classes).ok_or_else(|| DataError::BadLabel {
            path: shown.to_string(),
            line,
            value: raw_label.to_string(),
            classes,
        })?;
        labels.push(label);
        for (k, &c) in cols.iter().enumerate() {
            let raw = record.get(c).unwrap_or("").trim();
            let why = match raw.parse::<f64>() {
                Ok(v) if v.is_finite() && v.abs() <= f64::from(f32::MAX) => {
                    features.push(v as f32);
                    continue;
                }
                Ok(v) if v.is_finite() => "does not fit a 32-bit float (|x| > 3.4e38)",
                Ok(_) => "is not a finite number",
                Err(_) => "is not a number",
            };
            return Err(DataError::BadNumber {
                path: shown.to_string(),
                line,
                column: names[k].clone(),
                value: raw.to_string(),
                why,
            });
        }
    }
    let Some((_, cols)) = plan else {
        return Err(DataError::Empty {
            path: shown.to_string(),
        });
    };
    Ok(Dataset {
        features,
        labels,
        feature_count: cols.len(),
        feature_names: names,
    })
}

fn parse_label(raw: &str, classes: usize) -> Option<u32> {
    let v: f64 = raw.parse().ok()?;
    if v.fract() != 0.0 || v < 0.0 || v >= classes as f64 {
        return None;
    }
    Some(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CsvSpec {
        CsvSpec {
            has_header: true,
            label: Column::Name("y".into()),
            exclude: vec![Column::Name("id".into())],
        }
    }

    fn parse(text: &str) -> Result<Dataset, DataError> {
        read_csv(text.as_bytes(), "t.csv", &spec(), 2)
    }

    #[test]
    fn loads_named_label_and_excluded_id() {
        let d = parse("id,y,a,b\n1,0,0.5,1\n2,1,-2,3e-1\n").expect("valid");
        assert_eq!(d.labels, vec![0, 1]);
        assert_eq!(d.features, vec![0.5, 1.0, -2.0, 0.3]);
        assert_eq!(d.feature_names, vec!["a", "b"]);
    }

    #[test]
    fn loads_headerless_by_index() {
        let spec = CsvSpec {
            has_header: false,
            label: Column::Index(2),
            exclude: vec![],
        };
        let d = read_csv("1,2,3\n4,5,6\n".as_bytes(), "d.csv", &spec, 10).expect("valid");
        assert_eq!(d.labels, vec![3, 6]);
        assert_eq!(d.feature_count, 2);
    }

    #[test]
    fn malformed_row_names_its_line() {
        let err = parse("id,y,a,b\n1,0,0.5,1\n2,1,abc,1\n").expect_err("bad");
        assert!(err.to_string().contains("t.csv:3"), "{err}");
        assert!(err.to_string().contains("`abc`"), "{err}");
    }

    #[test]
    fn short_row_is_a_field_count_error() {
        let err = parse("id,y,a,b\n1,0,0.5,1\n2,1,1\n").expect_err("bad");
        assert!(
            matches!(
                err,
                DataError::FieldCount {
                    line: 3,
                    expected: 4,
                    found: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn label_out_of_range_is_rejected() {
        let err = parse("id,y,a,b\n1,2,0.5,1\n").expect_err("bad");
        assert!(matches!(err, DataError::BadLabel { .. }), "{err}");
    }

    #[test]
    fn missing_label_column_is_named() {
        let err = read_csv("id,z,a\n1,0,1\n".as_bytes(), "t.csv", &spec(), 2).expect_err("bad");
        assert!(err.to_string().contains("`y` not found"), "{err}");
    }

    #[test]
    fn non_finite_values_are_rejected() {
        assert!(parse("id,y,a,b\n1,0,NaN,1\n").is_err());
        assert!(parse("id,y,a,b\n1,0,inf,1\n").is_err());
        assert!(parse("id,y,a,b\n1,0,1e39,1\n").is_err());
    }

    #[test]
    fn a_value_beyond_f32_is_not_called_non_finite() {
        // 1e308 is a finite f64; what is wrong is that it does not fit an f32.
        let err = parse("id,y,a,b\n1,0,1e308,1\n").expect_err("bad");
        assert!(
            err.to_string().contains("does not fit a 32-bit float"),
            "{err}"
        );
        let err = parse("id,y,a,b\n1,0,inf,1\n").expect_err("bad");
        assert!(err.to_string().contains("is not a finite number"), "{err}");
        let err = parse("id,y,a,b\n1,0,abc,1\n").expect_err("bad");
        assert!(err.to_string().contains("is not a number"), "{err}");
    }

    #[test]
    fn a_group_column_is_read_by_name_or_index() {
        let text = "id,y,site,a\n1,0,cleveland,0.5\n2,1, va ,1\n";
        let by_name =
            read_column(text.as_bytes(), "t.csv", true, &Column::Name("site".into())).expect("ok");
        assert_eq!(by_name, vec!["cleveland", "va"]);
        let by_index =
            read_column("1,x\n2,y\n".as_bytes(), "t.csv", false, &Column::Index(1)).expect("ok");
        assert_eq!(by_index, vec!["x", "y"]);
        let err = read_column(text.as_bytes(), "t.csv", true, &Column::Name("nope".into()))
            .expect_err("missing");
        assert!(matches!(err, DataError::MissingColumn { .. }), "{err}");
        let err = read_column("a,b\n1\n".as_bytes(), "t.csv", true, &Column::Index(1))
            .expect_err("short row");
        assert!(
            matches!(err, DataError::FieldCount { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn public_reasons_carry_no_cell_and_no_path() {
        let schema = ["a".to_string(), "b".to_string()];
        let secret = "PATIENT Jane Doe";
        let err = read_csv(
            format!("id,y,a,b\n1,0,{secret},1\n").as_bytes(),
            "/home/clinic/private.csv",
            &spec(),
            2,
        )
        .expect_err("bad");
        assert!(err.to_string().contains(secret), "the owner sees it: {err}");
        let public = err.public_reason(&schema);
        assert_eq!(public, "DATA-004 line 2: column `a` holds no finite number");
        // A column the job's schema does not name is not named either.
        assert_eq!(
            err.public_reason(&[]),
            "DATA-004 line 2: a column holds no finite number"
        );
        for e in [
            parse("id,y,a,b\n1,0,1\n").expect_err("short"),
            parse("id,y,a,b\n1,7,0,1\n").expect_err("label"),
            parse("id,y,a,b\n").expect_err("empty"),
        ] {
            let p = e.public_reason(&schema);
            assert!(p.starts_with("DATA-") && !p.contains("t.csv"), "{p}");
        }
    }

    #[test]
    fn empty_file_is_an_error() {
        assert!(matches!(parse("id,y,a,b\n"), Err(DataError::Empty { .. })));
        assert!(matches!(parse(""), Err(DataError::Empty { .. })));
    }

    #[test]
    fn schema_check_catches_count_and_names() {
        let d = parse("id,y,a,b\n1,0,0.5,1\n").expect("valid");
        assert!(
            d.check_schema("t.csv", 2, &["a".into(), "b".into()])
                .is_ok()
        );
        assert!(d.check_schema("t.csv", 3, &[]).is_err());
        let err = d
            .check_schema("t.csv", 2, &["a".into(), "c".into()])
            .expect_err("names differ");
        assert!(err.to_string().contains("`b` in the file but `c`"), "{err}");
    }

    #[test]
    fn stratified_split_keeps_class_ratio() {
        let mut text = String::from("id,y,a,b\n");
        for i in 0..100 {
            text.push_str(&format!("{i},{},{i},0\n", u32::from(i < 30)));
        }
        let d = parse(&text).expect("valid");
        let (train, test) = d.stratified_split(0.2, 7);
        assert_eq!(test.len(), 20);
        assert_eq!(train.len(), 80);
        assert_eq!(test.labels.iter().filter(|&&l| l == 1).count(), 6);
    }
}
