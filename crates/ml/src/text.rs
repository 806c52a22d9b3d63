//! Text for next-character prediction (`[data] format = "text"`), as LEAF builds its
//! Shakespeare samples: an owner's lines are joined with one space, every character becomes
//! its index in the job's alphabet, and each window of `window` characters is one record whose
//! label is the character after it. Windows start every `stride` characters.
//!
//! Errors never show the text: a character outside the alphabet is reported by count and
//! first line (DATA-009 over the network).

use std::io::Read;

use confide_core::{TextSpec, UnknownChars};

use crate::dataset::{DataError, Dataset};

/// The most feature values one file may become (1 GiB as `f32`): each character is stored
/// `window / stride` times.
const MAX_VALUES: usize = 1 << 28;

/// Reads text from `reader` (`shown` names it in errors) into records of `window` character
/// ids, each labelled with the id of the character that follows.
///
/// # Errors
/// Unreadable or non-UTF-8 input, a character outside the alphabet under
/// [`UnknownChars::Refuse`], or fewer than `window + 1` characters.
pub fn read_text(
    mut reader: impl Read,
    shown: &str,
    window: usize,
    spec: &TextSpec,
) -> Result<Dataset, DataError> {
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).map_err(|e| DataError::Io {
        path: shown.to_string(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8(raw).map_err(|e| DataError::Text {
        path: shown.to_string(),
        line: 1 + bytecount_lines(&e.as_bytes()[..e.utf8_error().valid_up_to()]),
        message: "is not UTF-8 text".into(),
    })?;
    let alphabet = spec.characters();
    let index = |c: char| alphabet.iter().position(|&a| a == c);
    let mut ids: Vec<u32> = Vec::with_capacity(text.len());
    let (mut unknown, mut first_unknown) = (0usize, 0usize);
    for (n, line) in text.lines().enumerate() {
        if n > 0 {
            match index(' ') {
                Some(space) => ids.push(space as u32),
                None if spec.unknown == UnknownChars::Skip => {}
                None => {
                    return Err(DataError::Text {
                        path: shown.to_string(),
                        line: n + 1,
                        message: "lines are joined with a space, which the alphabet lacks".into(),
                    });
                }
            }
        }
        for c in line.trim_end_matches('\r').chars() {
            match index(c) {
                Some(i) => ids.push(i as u32),
                None => {
                    if unknown == 0 {
                        first_unknown = n + 1;
                    }
                    unknown += 1;
                }
            }
        }
    }
    if unknown > 0 && spec.unknown == UnknownChars::Refuse {
        return Err(DataError::Text {
            path: shown.to_string(),
            line: first_unknown,
            message: format!(
                "{unknown} character(s) outside data.text.alphabet, the first on this line (set data.text.unknown = \"skip\" to drop them)"
            ),
        });
    }
    if ids.len() <= window {
        return Err(DataError::Empty {
            path: shown.to_string(),
        });
    }
    let starts: Vec<usize> = (0..ids.len() - window)
        .step_by(spec.stride.max(1))
        .collect();
    if starts.len().saturating_mul(window) > MAX_VALUES {
        return Err(DataError::Text {
            path: shown.to_string(),
            line: 1,
            message: format!(
                "{} windows of {window} characters exceed {MAX_VALUES} values (1 GiB); raise data.text.stride or split the file",
                starts.len()
            ),
        });
    }
    let mut features = Vec::with_capacity(starts.len() * window);
    let mut labels = Vec::with_capacity(starts.len());
    for s in starts {
        features.extend(ids[s..s + window].iter().map(|&i| i as f32));
        labels.push(ids[s + window]);
    }
    Ok(Dataset {
        features,
        labels,
        feature_count: window,
        feature_names: (0..window).map(|i| format!("c{i}")).collect(),
    })
}

fn bytecount_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(alphabet: &str, unknown: UnknownChars, stride: usize) -> TextSpec {
        TextSpec {
            alphabet: alphabet.into(),
            unknown,
            stride,
        }
    }

    #[test]
    fn lines_are_joined_and_cut_into_labelled_windows() {
        let s = spec(" abc", UnknownChars::Refuse, 1);
        let d = read_text("ab\r\nca\n".as_bytes(), "t", 3, &s).expect("text");
        // "ab ca" → ids 1 2 0 3 1: windows [1 2 0]→3, [2 0 3]→1.
        assert_eq!(d.features, [1.0, 2.0, 0.0, 2.0, 0.0, 3.0]);
        assert_eq!(d.labels, [3, 1]);
        assert_eq!(d.feature_count, 3);
        let strided = read_text(
            "abcabca".as_bytes(),
            "t",
            2,
            &spec(" abc", UnknownChars::Refuse, 2),
        )
        .expect("text");
        assert_eq!(strided.labels, [3, 2, 1]);
    }

    #[test]
    fn the_leaf_alphabet_has_its_80_characters_in_order() {
        let leaf = TextSpec::default().characters();
        assert_eq!(leaf.len(), 80);
        assert_eq!((leaf[0], leaf[1], leaf[79]), ('\n', ' ', '}'));
        assert_eq!(leaf.iter().position(|&c| c == 'a'), Some(53));
    }

    #[test]
    fn unknown_characters_are_refused_without_showing_them_or_skipped() {
        let text = "abc\nab{c\nc{{a";
        let err = read_text(
            text.as_bytes(),
            "t",
            2,
            &spec(" abc", UnknownChars::Refuse, 1),
        )
        .expect_err("refused");
        let shown = err.to_string();
        assert!(
            shown.contains("t:2") && shown.contains("3 character(s)"),
            "{shown}"
        );
        assert!(!shown.contains('{'), "{shown}");
        assert!(
            err.public_reason(&[]).starts_with("DATA-009 line 2"),
            "{}",
            err.public_reason(&[])
        );
        let d = read_text(
            text.as_bytes(),
            "t",
            2,
            &spec(" abc", UnknownChars::Skip, 1),
        )
        .expect("skip");
        // "abc ab{c c{{a" without the braces: "abc abc ca", 10 characters, 8 windows.
        assert_eq!(d.labels.len(), 8);
        assert!(
            read_text(
                "ab".as_bytes(),
                "t",
                2,
                &spec(" abc", UnknownChars::Refuse, 1)
            )
            .is_err()
        );
        assert!(
            read_text(
                &[0x61, 0xff][..],
                "t",
                1,
                &spec(" abc", UnknownChars::Refuse, 1)
            )
            .is_err()
        );
    }
}
