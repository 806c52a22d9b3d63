//! A model owner's own training code (`[code]`): a directory of files, bound to the signed job
//! by a digest over its file list, run at each data owner's node in a confined process.
//!
//! The digest is SHA-256 over the canonical list of the bundle's files, one line per file,
//! sorted by path (byte order):
//!
//! ```text
//! <sha256 of the file, 64 lowercase hex digits> <size in bytes, decimal> <path>\n
//! ```
//!
//! Paths are relative, `/`-separated, UTF-8, without `.` or `..` components and without
//! control characters. Every regular file counts. A symbolic link or any other special file,
//! and compiled Python (`__pycache__`, `.pyc`, `.pyo`: Python would run it in place of the
//! reviewed source), make the directory unusable as a bundle. A reviewer compares the list file by file; the digest
//! is what the manifest and the reviewers' co-signatures bind.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, invalid};

/// The most files a bundle may hold.
pub const MAX_FILES: usize = 4096;
/// The most bytes a bundle may hold (all files together).
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

/// Kinds of user code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeKind {
    /// A Python entry point run by `python3 -I -B -m confide.worker`.
    Python,
}

impl CodeKind {
    /// The name in job files and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            CodeKind::Python => "python",
        }
    }
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeFile {
    /// Relative path, `/`-separated.
    pub path: String,
    /// SHA-256 of its bytes, 64 lowercase hex digits.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `[code]`: the model owner's training code.
///
/// ```toml
/// [code]
/// kind = "python"
/// dir = "trainer"                 # read when the job file is loaded; never part of the spec
/// bundle = "heart-numpy"          # the name nodes keep the reviewed copy under (--code-dir)
/// entry = "train:fit"             # module:function inside the bundle
/// lock = "requirements.lock"      # the bundle's pinned requirements (a file in it)
/// env = "numpy"                   # the environment the data owner installed (--code-env)
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeSection {
    /// The kind of code.
    pub kind: CodeKind,
    /// The bundle's directory, relative to the job file: hashed by
    /// [`crate::JobConfig::load`], never part of the job's spec.
    #[serde(default, skip_serializing)]
    pub dir: Option<PathBuf>,
    /// The name data owners keep the bundle under.
    pub bundle: String,
    /// `module:function`, the function that receives the node's context.
    pub entry: String,
    /// The bundle's locked requirements file (a path inside the bundle).
    pub lock: String,
    /// The name of the environment the node runs it in.
    pub env: String,
    /// `sha256:` and the bundle digest (filled from `dir` when the job file is loaded).
    #[serde(default)]
    pub digest: String,
    /// The bundle's files (filled from `dir` when the job file is loaded).
    #[serde(default)]
    pub files: Vec<CodeFile>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// The bundle digest of `files` (any order; see the module documentation), as `sha256:<hex>`.
pub fn digest(files: &[CodeFile]) -> String {
    let mut sorted: Vec<&CodeFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    let mut text = String::new();
    for f in sorted {
        text.push_str(&format!("{} {} {}\n", f.sha256, f.size, f.path));
    }
    format!("sha256:{}", sha256(text.as_bytes()))
}

/// The 32 bytes of a `sha256:<hex>` bundle digest.
///
/// # Errors
/// Not of that form.
pub fn digest_bytes(digest: &str) -> Result<[u8; 32], String> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("`{digest}` is not `sha256:` and 64 hex digits"))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "`{digest}` is not `sha256:` and 64 lowercase hex digits"
        ));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Whether `path` is a bundle path: relative, `/`-separated, no empty, `.` or `..`
/// component, no control character.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.chars().any(|c| c.is_control() || c == '\\')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Hashes every file beneath `dir` (see the module documentation).
///
/// # Errors
/// `dir` is unreadable or not a directory, or holds a link or special file, compiled Python,
/// a name that is not UTF-8, more than [`MAX_FILES`] files or more than [`MAX_BUNDLE_BYTES`]
/// bytes.
pub fn hash_dir(dir: &Path) -> Result<Vec<CodeFile>, String> {
    walk(dir, None)
}

/// Copies the files beneath `dir` into `to` (which must not exist; made owner-only),
/// hashing each file's bytes as they are copied, so that the copy is exactly what the
/// returned list describes whatever happens to `dir` afterwards.
///
/// # Errors
/// As [`hash_dir`], or `to` cannot be written.
pub fn copy_dir(dir: &Path, to: &Path) -> Result<Vec<CodeFile>, String> {
    walk(dir, Some(to))
}

fn make_private_dir(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn walk(dir: &Path, copy_to: Option<&Path>) -> Result<Vec<CodeFile>, String> {
    if let Some(to) = copy_to {
        make_private_dir(to)?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{}: not a directory", dir.display()));
    }
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: {e}", path.display()))?;
            let full = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| format!("{}: the name is not UTF-8", full.display()))?;
            let relative = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if !valid_path(&relative) {
                return Err(format!("{}: not a usable bundle path", full.display()));
            }
            let kind = entry
                .file_type()
                .map_err(|e| format!("{}: {e}", full.display()))?;
            let compiled = relative.ends_with(".pyc")
                || relative.ends_with(".pyo")
                || relative.split('/').any(|c| c == "__pycache__");
            if compiled {
                return Err(format!(
                    "{}: compiled Python (remove `__pycache__` directories and `.pyc` files: a bundle holds what reviewers can read)",
                    full.display()
                ));
            }
            if kind.is_dir() {
                if let Some(to) = copy_to {
                    make_private_dir(&to.join(&relative))?;
                }
                stack.push((full, relative));
            } else if kind.is_file() {
                let size = entry
                    .metadata()
                    .map_err(|e| format!("{}: {e}", full.display()))?
                    .len();
                if total + size > MAX_BUNDLE_BYTES || files.len() >= MAX_FILES {
                    return Err(format!(
                        "{}: a bundle holds at most {MAX_FILES} files and {} MiB",
                        dir.display(),
                        MAX_BUNDLE_BYTES >> 20
                    ));
                }
                let bytes = std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))?;
                total += bytes.len() as u64;
                if total > MAX_BUNDLE_BYTES {
                    return Err(format!(
                        "{}: a bundle holds at most {MAX_FILES} files and {} MiB",
                        dir.display(),
                        MAX_BUNDLE_BYTES >> 20
                    ));
                }
                if let Some(to) = copy_to {
                    let target = to.join(&relative);
                    std::fs::write(&target, &bytes)
                        .map_err(|e| format!("{}: {e}", target.display()))?;
                }
                files.push(CodeFile {
                    path: relative,
                    sha256: sha256(&bytes),
                    size: bytes.len() as u64,
                });
            } else {
                return Err(format!(
                    "{}: a link or special file (a bundle holds regular files only)",
                    full.display()
                ));
            }
        }
    }
    files.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    Ok(files)
}

impl CodeSection {
    /// Hashes `dir` (resolved against `base`) into `files` and `digest`.
    pub(crate) fn read(&mut self, base: &Path) -> Result<(), ConfigError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let dir = if dir.is_absolute() {
            dir.clone()
        } else {
            base.join(dir)
        };
        self.files = hash_dir(&dir).map_err(|m| invalid("code.dir", m))?;
        self.digest = digest(&self.files);
        self.dir = Some(dir);
        self.validate()
    }

    /// Checks the fields, and that `digest` is the digest of `files`.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !s.starts_with('.')
        };
        if !name_ok(&self.bundle) {
            return Err(invalid(
                "code.bundle",
                "1 to 64 of a-z, A-Z, 0-9, `-`, `_`, `.` (not first)",
            ));
        }
        if !name_ok(&self.env) {
            return Err(invalid(
                "code.env",
                "1 to 64 of a-z, A-Z, 0-9, `-`, `_`, `.` (not first)",
            ));
        }
        let ident = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        let entry_ok = self
            .entry
            .split_once(':')
            .is_some_and(|(m, f)| m.split('.').all(ident) && ident(f));
        if !entry_ok {
            return Err(invalid(
                "code.entry",
                format!(
                    "`{}` is not `module:function` (for example `train:fit`)",
                    self.entry
                ),
            ));
        }
        if self.files.is_empty() {
            return Err(invalid(
                "code.files",
                "the bundle lists no files (give code.dir, the bundle's directory)",
            ));
        }
        if let Some(f) = self.files.iter().find(|f| !valid_path(&f.path)) {
            return Err(invalid(
                "code.files",
                format!("`{}` is not a bundle path", f.path),
            ));
        }
        let module = self.entry.split(':').next().unwrap_or_default();
        let module_file = format!("{}.py", module.replace('.', "/"));
        let package = format!("{}/__init__.py", module.replace('.', "/"));
        if !self
            .files
            .iter()
            .any(|f| f.path == module_file || f.path == package)
        {
            return Err(invalid(
                "code.entry",
                format!("the bundle has no `{module_file}` for module `{module}`"),
            ));
        }
        if !self.files.iter().any(|f| f.path == self.lock) {
            return Err(invalid(
                "code.lock",
                format!("the bundle has no file `{}`", self.lock),
            ));
        }
        digest_bytes(&self.digest).map_err(|m| invalid("code.digest", m))?;
        let computed = digest(&self.files);
        if computed != self.digest {
            return Err(invalid(
                "code.digest",
                format!(
                    "{} is not the digest of the listed files ({computed})",
                    self.digest
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_over_the_sorted_file_lines() {
        // Independent check: the same lines hashed by `sha256sum` (GNU coreutils 9.1):
        // printf '%s\n' '<sha of "a\n"> 2 a.py' '<sha of "b"> 1 pkg/b.py' | sha256sum
        let a = CodeFile {
            path: "a.py".into(),
            sha256: sha256(b"a\n"),
            size: 2,
        };
        let b = CodeFile {
            path: "pkg/b.py".into(),
            sha256: sha256(b"b"),
            size: 1,
        };
        assert_eq!(
            a.sha256,
            "87428fc522803d31065e7bce3cf03fe475096631e5e07bbd7a0fde60c4cf25c7"
        );
        let d = digest(&[b.clone(), a.clone()]);
        assert_eq!(d, digest(&[a, b]));
        assert_eq!(
            d,
            "sha256:396836430a8b3e2f76a3a904ab50a004a1c0871f7fb26f378fa89038fefc5b7c"
        );
    }

    #[test]
    fn paths_must_be_plain_relative_ones() {
        for ok in ["a.py", "pkg/b.py", "x/y/z.txt"] {
            assert!(valid_path(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a\nb",
            "a\\b",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_directory_hashes_to_its_files_and_links_are_refused() {
        let dir = std::env::temp_dir().join(format!("confide-code-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pkg")).expect("fs");
        std::fs::write(dir.join("a.py"), "a\n").expect("fs");
        std::fs::write(dir.join("pkg/b.py"), "b").expect("fs");
        let files = hash_dir(&dir).expect("fs");
        assert_eq!(
            files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["a.py", "pkg/b.py"]
        );
        assert_eq!(files[0].size, 2);
        let copy = dir.with_extension("copy");
        let _ = std::fs::remove_dir_all(&copy);
        assert_eq!(copy_dir(&dir, &copy).expect("copy"), files);
        assert_eq!(hash_dir(&copy).expect("hash the copy"), files);
        std::fs::remove_dir_all(&copy).expect("fs");
        std::fs::create_dir_all(dir.join("__pycache__")).expect("fs");
        let e = hash_dir(&dir).expect_err("compiled");
        assert!(e.contains("compiled Python"), "{e}");
        std::fs::remove_dir_all(dir.join("__pycache__")).expect("fs");
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).expect("fs");
        let e = hash_dir(&dir).expect_err("a link");
        assert!(e.contains("a link or special file"), "{e}");
        std::fs::remove_dir_all(&dir).expect("fs");
    }

    fn section() -> CodeSection {
        let files = vec![
            CodeFile {
                path: "pkg/train.py".into(),
                sha256: sha256(b"x"),
                size: 1,
            },
            CodeFile {
                path: "requirements.lock".into(),
                sha256: sha256(b""),
                size: 0,
            },
        ];
        CodeSection {
            kind: CodeKind::Python,
            dir: None,
            bundle: "loop".into(),
            entry: "pkg.train:fit".into(),
            lock: "requirements.lock".into(),
            env: "numpy".into(),
            digest: digest(&files),
            files,
        }
    }

    #[test]
    fn a_section_is_checked_field_by_field() {
        section().validate().expect("valid");
        let cases: Vec<(CodeSection, &str)> = vec![
            (
                CodeSection {
                    entry: "train".into(),
                    ..section()
                },
                "is not `module:function`",
            ),
            (
                CodeSection {
                    entry: "other:fit".into(),
                    ..section()
                },
                "the bundle has no `other.py`",
            ),
            (
                CodeSection {
                    lock: "req.txt".into(),
                    ..section()
                },
                "the bundle has no file `req.txt`",
            ),
            (
                CodeSection {
                    digest: format!("sha256:{}", "0".repeat(64)),
                    ..section()
                },
                "is not the digest of the listed files",
            ),
            (
                CodeSection {
                    bundle: "../x".into(),
                    ..section()
                },
                "code.bundle",
            ),
        ];
        for (c, expected) in cases {
            let e = c.validate().expect_err(expected).to_string();
            assert!(e.contains(expected), "{e}");
        }
    }

    #[test]
    fn user_code_refuses_record_level_dp_and_confidential_mode() {
        let job = |extra: &str| {
            let s = section();
            format!(
                r#"
                [job]
                id = "t"
                rounds = 1
                scheme = "paillier"
                min_owners = 2
                [model]
                kind = "logistic"
                classes = 2
                [data]
                label = "y"
                feature_count = 2
                [training]
                local_epochs = 1
                batch_size = 8
                learning_rate = 0.1
                [[parties]]
                name = "a"
                data = "a.csv"
                [[parties]]
                name = "b"
                data = "b.csv"
                [code]
                kind = "python"
                bundle = "loop"
                entry = "pkg.train:fit"
                lock = "requirements.lock"
                env = "numpy"
                digest = "{}"
                files = [{{ path = "pkg/train.py", sha256 = "{}", size = 1 }},
                         {{ path = "requirements.lock", sha256 = "{}", size = 0 }}]
                {extra}
                "#,
                s.digest, s.files[0].sha256, s.files[1].sha256
            )
        };
        crate::JobConfig::parse(&job("")).expect("a job with code");
        let record =
            "[privacy]\nlevel = \"record\"\ntarget_epsilon = 4.0\ndelta = 1e-5\nclip_norm = 1.0";
        let e = crate::JobConfig::parse(&job(record))
            .expect_err("record level")
            .to_string();
        assert!(
            e.contains("record-level DP cannot be enforced on user code"),
            "{e}"
        );
        let client = record.replace("record", "client");
        crate::JobConfig::parse(&job(&client)).expect("client level");
        // A spec that names a directory instead of agreeing files and digest is refused: the
        // digest could then differ from the listed files.
        let mut spec = crate::JobConfig::parse(&job("")).expect("job").spec();
        if let Some(c) = &mut spec.code {
            c.dir = Some("elsewhere".into());
            c.files.clear();
        }
        let e = spec.validate().expect_err("dir in a spec").to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = crate::JobConfig::parse(&job("[confidential]"))
            .expect_err("confidential")
            .to_string();
        assert!(
            e.contains("confidential mode runs Confide's own trainer only"),
            "{e}"
        );
    }
}
