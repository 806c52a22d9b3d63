//! IDX arrays (the format MNIST and Fashion-MNIST ship in), optionally gzipped: a big-endian
//! header of two zero bytes, a type byte and a dimension count, then one u32 size per
//! dimension, then the elements row-major. Only unsigned bytes (type 0x08) are read, which is
//! what image and label files use; other types are refused by name.

use std::io::Read;
use std::path::Path;

use crate::dataset::Dataset;

/// The most elements an IDX file may declare (2^31, 2 GiB of bytes): a corrupt header must not
/// make the reader allocate without bound.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// IDX reading errors.
#[derive(Debug, thiserror::Error)]
pub enum IdxError {
    /// The file could not be opened or read (including a broken gzip stream).
    #[error("{path}: {message}")]
    Io {
        /// File path.
        path: String,
        /// What failed.
        message: String,
    },
    /// Not an IDX header.
    #[error(
        "{path}: not an IDX file (magic {magic:02x?}; IDX starts with 00 00, a type and a dimension count)"
    )]
    BadMagic {
        /// File path.
        path: String,
        /// The first four bytes.
        magic: [u8; 4],
    },
    /// An element type other than unsigned bytes.
    #[error(
        "{path}: IDX element type {name} (0x{code:02x}) is not supported; only unsigned bytes (0x08) are"
    )]
    Type {
        /// File path.
        path: String,
        /// The type byte.
        code: u8,
        /// Its name in the format.
        name: &'static str,
    },
    /// The body is shorter or longer than the header declares, or the header is absurd.
    #[error("{path}: {message}")]
    Size {
        /// File path.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// Images and labels do not belong together.
    #[error("{message}")]
    Mismatch {
        /// What is wrong.
        message: String,
    },
}

/// An IDX array of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Sizes, outermost first (e.g. `[10000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Reads an IDX file; a name ending in `.gz` is decompressed first.
///
/// # Errors
/// See [`IdxError`].
pub fn load_idx(path: &Path) -> Result<IdxArray, IdxError> {
    let shown = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| IdxError::Io {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    if path.extension().is_some_and(|e| e == "gz") {
        read_idx(flate2::read::GzDecoder::new(file), &shown)
    } else {
        read_idx(std::io::BufReader::new(file), &shown)
    }
}

/// Reads an IDX array from `reader` (`shown` names it in errors).
///
/// # Errors
/// See [`IdxError`].
pub fn read_idx(mut reader: impl Read, shown: &str) -> Result<IdxArray, IdxError> {
    let io = |e: std::io::Error| IdxError::Io {
        path: shown.to_string(),
        message: e.to_string(),
    };
    let size = |message: String| IdxError::Size {
        path: shown.to_string(),
        message,
    };
    let mut magic = [0u8; 4];
    read_fully(&mut reader, &mut magic)
        .map_err(io)?
        .then_some(())
        .ok_or_else(|| size("shorter than an IDX header".into()))?;
    if magic[0] != 0 || magic[1] != 0 || magic[3] == 0 {
        return Err(IdxError::BadMagic {
            path: shown.to_string(),
            magic,
        });
    }
    let name = match magic[2] {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0b => "short",
        0x0c => "int",
        0x0d => "float",
        0x0e => "double",
        _ => {
            return Err(IdxError::BadMagic {
                path: shown.to_string(),
                magic,
            });
        }
    };
    if magic[2] != 0x08 {
        return Err(IdxError::Type {
            path: shown.to_string(),
            code: magic[2],
            name,
        });
    }
    let mut dims = Vec::with_capacity(usize::from(magic[3]));
    for _ in 0..magic[3] {
        let mut d = [0u8; 4];
        read_fully(&mut reader, &mut d)
            .map_err(io)?
            .then_some(())
            .ok_or_else(|| size("the header ends inside its sizes".into()))?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let total = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&t| t <= MAX_ELEMENTS)
        .ok_or_else(|| size(format!("sizes {dims:?} exceed {MAX_ELEMENTS} elements")))?;
    let mut data = Vec::with_capacity(total.min(1 << 24));
    let got = (&mut reader)
        .take(total as u64)
        .read_to_end(&mut data)
        .map_err(io)?;
    if got < total {
        return Err(size(format!(
            "truncated: the header declares {dims:?} = {total} bytes, the body has {got}"
        )));
    }
    let mut extra = [0u8; 1];
    if reader.read(&mut extra).map_err(io)? > 0 {
        return Err(size(format!(
            "more bytes than the header's {dims:?} = {total}"
        )));
    }
    Ok(IdxArray { dims, data })
}

/// Fills `buf`; `false` when the input ends first.
fn read_fully(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut at = 0;
    while at < buf.len() {
        match reader.read(&mut buf[at..])? {
            0 => return Ok(false),
            n => at += n,
        }
    }
    Ok(true)
}

/// Images (`[n, rows, cols]`) and labels (`[n]`) as a dataset: pixels scaled to `[0, 1]`,
/// features named `px0` … row-major, labels below `classes`.
///
/// # Errors
/// Shapes that do not fit together, or a label of `classes` or more.
pub fn image_dataset(
    images: &IdxArray,
    labels: &IdxArray,
    classes: usize,
) -> Result<Dataset, IdxError> {
    let mismatch = |message: String| IdxError::Mismatch { message };
    let [n, rows, cols] = images.dims[..] else {
        return Err(mismatch(format!(
            "images must be [count, rows, cols], not {:?}",
            images.dims
        )));
    };
    if labels.dims != [n] {
        return Err(mismatch(format!(
            "{n} images but labels of shape {:?}",
            labels.dims
        )));
    }
    if let Some(i) = labels.data.iter().position(|&l| usize::from(l) >= classes) {
        return Err(mismatch(format!(
            "label {} of image {i} is not below {classes}",
            labels.data[i]
        )));
    }
    let width = rows * cols;
    Ok(Dataset {
        features: images.data.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels: labels.data.iter().map(|&l| u32::from(l)).collect(),
        feature_count: width,
        feature_names: (0..width).map(|i| format!("px{i}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    fn mnist(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/mnist")
            .join(name)
    }

    #[test]
    fn the_shipped_mnist_test_set_reads_with_its_published_counts() {
        let images = load_idx(&mnist("t10k-images-idx3-ubyte.gz")).expect("images");
        let labels = load_idx(&mnist("t10k-labels-idx1-ubyte.gz")).expect("labels");
        assert_eq!(images.dims, vec![10_000, 28, 28]);
        // data/mnist/SOURCE.md: SHA-256 of the decompressed file (header included).
        let mut whole = idx(&[10_000, 28, 28], &[]);
        whole.extend_from_slice(&images.data);
        let digest = ring::digest::digest(&ring::digest::SHA256, &whole);
        assert_eq!(
            hex(digest.as_ref()),
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        );
        // The known MNIST test-set label counts (also in SOURCE.md).
        let mut counts = [0usize; 10];
        for &l in &labels.data {
            counts[usize::from(l)] += 1;
        }
        assert_eq!(
            counts,
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
        let data = image_dataset(&images, &labels, 10).expect("dataset");
        assert_eq!((data.len(), data.feature_count), (10_000, 784));
        assert!(data.features.iter().all(|p| (0.0..=1.0).contains(p)));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn bad_magic_other_types_truncation_and_trailing_bytes_are_refused() {
        let ok = idx(&[2, 2], &[1, 2, 3, 4]);
        assert_eq!(
            read_idx(&ok[..], "t").expect("ok"),
            IdxArray {
                dims: vec![2, 2],
                data: vec![1, 2, 3, 4]
            }
        );
        let err = read_idx(&b"PK\x03\x04rest"[..], "t").expect_err("zip");
        assert!(matches!(err, IdxError::BadMagic { .. }), "{err}");
        let mut float = ok.clone();
        float[2] = 0x0d;
        let err = read_idx(&float[..], "t").expect_err("float");
        assert!(err.to_string().contains("float"), "{err}");
        let err = read_idx(&ok[..ok.len() - 1], "t").expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = read_idx(&ok[..6], "t").expect_err("header");
        assert!(err.to_string().contains("header"), "{err}");
        let mut long = ok.clone();
        long.push(9);
        assert!(read_idx(&long[..], "t").is_err());
        // A header declaring 2^32 × 2^32 bytes is refused before any allocation.
        let huge = idx(&[u32::MAX, u32::MAX], &[]);
        let err = read_idx(&huge[..], "t").expect_err("huge");
        assert!(err.to_string().contains("exceed"), "{err}");
    }

    #[test]
    fn images_and_labels_must_fit_together() {
        let images = IdxArray {
            dims: vec![2, 1, 2],
            data: vec![0, 255, 51, 102],
        };
        let labels = IdxArray {
            dims: vec![2],
            data: vec![1, 0],
        };
        let d = image_dataset(&images, &labels, 2).expect("ok");
        assert_eq!(d.features, vec![0.0, 1.0, 0.2, 0.4]);
        assert!(image_dataset(&images, &labels, 1).is_err());
        let three = IdxArray {
            dims: vec![3],
            data: vec![0, 0, 0],
        };
        assert!(image_dataset(&images, &three, 2).is_err());
    }
}
