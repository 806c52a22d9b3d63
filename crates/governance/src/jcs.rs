//! The canonical JSON form used for everything Confide signs or hashes: the JSON
//! Canonicalization Scheme of RFC 8785, as implemented by the `serde_json_canonicalizer` crate.
//!
//! In short (RFC 8785 §3.2): no whitespace; object members sorted by the UTF-16 code units of
//! their names; strings with the minimal JSON escapes; numbers in the ECMAScript
//! `Number.prototype.toString` form (the shortest decimal that round-trips the IEEE-754
//! double, e.g. `1e+21`, `0.000001`, `1e-7`, `-0` written as `0`). Confide's documents hold
//! integers (all below 2^53, so exact) and finite `f64` values; an `f32` is widened to `f64`
//! exactly before it is written. Non-finite numbers cannot appear: JSON has none.
//!
//! The test vectors below are RFC 8785 Appendix B's number examples and §3.2.3's ordering
//! example.

use serde::Serialize;

/// Canonicalisation errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JcsError {
    /// The value cannot be written as JSON.
    #[error("cannot canonicalise: {0}")]
    Serialize(String),
    /// The bytes are not JSON.
    #[error("not JSON: {0}")]
    Parse(String),
    /// Valid JSON, but not in canonical form (so its bytes could differ from what was signed).
    #[error("not in RFC 8785 canonical form")]
    NotCanonical,
}

/// The RFC 8785 canonical bytes of `value`.
///
/// # Errors
/// The value does not serialise (for example a map with non-string keys).
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, JcsError> {
    serde_json_canonicalizer::to_vec(value).map_err(|e| JcsError::Serialize(e.to_string()))
}

/// Parses `bytes` and checks that they are exactly the canonical form of what they encode.
///
/// # Errors
/// Not JSON, or JSON that is not canonical.
pub fn parse_canonical(bytes: &[u8]) -> Result<serde_json::Value, JcsError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| JcsError::Parse(e.to_string()))?;
    if to_vec(&value)? != bytes {
        return Err(JcsError::NotCanonical);
    }
    Ok(value)
}

/// Strict lowercase hexadecimal, as Confide writes it: uppercase digits are refused, so one
/// value has exactly one spelling.
///
/// # Errors
/// Odd length or a character other than `0-9a-f`.
pub fn hex_decode(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("`{}` is not lowercase hex", truncate(text)));
    }
    hex::decode(text).map_err(|e| e.to_string())
}

/// [`hex_decode`] into a fixed-size array.
///
/// # Errors
/// Not lowercase hex, or the wrong length.
pub fn hex_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let bytes = hex_decode(text)?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected {N} bytes of hex, got {}", bytes.len()))
}

fn truncate(text: &str) -> String {
    text.chars().take(24).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
    #[test]
    fn numbers_match_rfc8785_appendix_b() {
        let cases: &[(u64, &str)] = &[
            (0x0000_0000_0000_0000, "0"),
            (0x8000_0000_0000_0000, "0"),
            (0x0000_0000_0000_0001, "5e-324"),
            (0x8000_0000_0000_0001, "-5e-324"),
            (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
            (0xffef_ffff_ffff_ffff, "-1.7976931348623157e+308"),
            (0x4340_0000_0000_0000, "9007199254740992"),
            (0xc340_0000_0000_0000, "-9007199254740992"),
            (0x4430_0000_0000_0000, "295147905179352830000"),
            (0x44b5_2d02_c7e1_4af5, "9.999999999999997e+22"),
            (0x44b5_2d02_c7e1_4af6, "1e+23"),
            (0x44b5_2d02_c7e1_4af7, "1.0000000000000001e+23"),
            (0x444b_1ae4_d6e2_ef4e, "999999999999999700000"),
            (0x444b_1ae4_d6e2_ef4f, "999999999999999900000"),
            (0x444b_1ae4_d6e2_ef50, "1e+21"),
            (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
            (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
            (0x41b3_de43_5555_5553, "333333333.3333332"),
            (0x41b3_de43_5555_5554, "333333333.33333325"),
            (0x41b3_de43_5555_5555, "333333333.3333333"),
            (0x41b3_de43_5555_5556, "333333333.3333334"),
            (0x41b3_de43_5555_5557, "333333333.33333343"),
            (0xbecb_f647_612f_3696, "-0.0000033333333333333333"),
            (0x4314_3ff3_c1cb_0959, "1424953923781206.2"),
        ];
        for &(bits, want) in cases {
            let got = to_vec(&f64::from_bits(bits)).expect("finite");
            assert_eq!(String::from_utf8(got).expect("utf8"), want, "{bits:#018x}");
        }
    }

    /// RFC 8785 §3.2.3: members sorted by UTF-16 code units.
    #[test]
    fn member_order_follows_utf16_code_units() {
        let text = "{\"\\u20ac\":\"Euro Sign\",\"\\r\":\"Carriage Return\",\"\\ufb33\":\"Hebrew Letter Dalet With Dagesh\",\"1\":\"One\",\"\\ud83d\\ude00\":\"Emoji: Grinning Face\",\"\\u0080\":\"Control\",\"\\u00f6\":\"Latin Small Letter O With Diaeresis\"}";
        let value: serde_json::Value = serde_json::from_str(text).expect("json");
        let names: Vec<String> = {
            let canon = String::from_utf8(to_vec(&value).expect("ok")).expect("utf8");
            let back: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&canon).expect("json");
            // serde_json's map preserves insertion order only with a feature; read the order
            // from the text instead.
            let mut order: Vec<(usize, String)> = back
                .keys()
                .map(|k| {
                    (
                        canon
                            .find(&format!("\"{}\"", json_escape(k)))
                            .unwrap_or(usize::MAX),
                        k.clone(),
                    )
                })
                .collect();
            order.sort();
            order.into_iter().map(|(_, k)| k).collect()
        };
        let want = [
            "\r",
            "1",
            "\u{80}",
            "\u{f6}",
            "\u{20ac}",
            "\u{1f600}",
            "\u{fb33}",
        ];
        assert_eq!(names, want);
    }

    fn json_escape(k: &str) -> String {
        let quoted = serde_json::to_string(k).expect("string");
        quoted[1..quoted.len() - 1].to_string()
    }

    #[test]
    fn non_canonical_bytes_are_refused() {
        assert!(parse_canonical(br#"{"a":1,"b":2}"#).is_ok());
        assert_eq!(
            parse_canonical(br#"{"b":2,"a":1}"#),
            Err(JcsError::NotCanonical)
        );
        assert_eq!(parse_canonical(br#"{"a": 1}"#), Err(JcsError::NotCanonical));
        assert_eq!(
            parse_canonical(br#"{"a":1.0}"#),
            Err(JcsError::NotCanonical)
        );
        assert!(matches!(
            parse_canonical(br#"{"a":"#),
            Err(JcsError::Parse(_))
        ));
    }

    #[test]
    fn hex_is_strict_lowercase() {
        assert_eq!(hex_decode("00ff").expect("ok"), vec![0, 255]);
        assert!(hex_decode("00FF").is_err());
        assert!(hex_decode("0").is_err());
        assert!(hex_array::<2>("000102").is_err());
    }
}
