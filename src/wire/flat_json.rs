//! A fast path for the plain JSON that producers write: one flat object of scalar fields, no
//! escapes in strings. [`fields`] reads such an object in one pass, borrowing keys and values from
//! the text, and gives up (`None`) on anything else: nested values, escapes, malformed or
//! trailing input. The decoder then parses the same text with serde_json, so every input gets the
//! same result and error either way; this path only has to be right when it answers, and the
//! decoder's tests hold the two to the same results.

/// One scalar value as written in the text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar<'a> {
    /// The string's contents, without quotes (it had no escapes).
    Str(&'a str),
    /// A number in JSON's grammar, as written.
    Num(&'a str),
    Bool(bool),
    Null,
}

impl<'a> Scalar<'a> {
    pub(crate) fn str(self) -> Option<&'a str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A JSON number as `f64`, rounded correctly (as serde_json with `float_roundtrip` does).
    /// A number too large for `f64` gives `None` (serde_json refuses it).
    pub(crate) fn f64(self) -> Option<f64> {
        match self {
            Scalar::Num(n) => n.parse().ok().filter(|v: &f64| v.is_finite()),
            _ => None,
        }
    }

    pub(crate) fn bool(self) -> Option<bool> {
        match self {
            Scalar::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// Calls `field` with each key and value of the flat object `text`, in order. Returns `None` when
/// `text` is not a flat object in the plain form, or when `field` returns `None`.
pub(crate) fn fields<'a>(text: &'a str, mut field: impl FnMut(&'a str, Scalar<'a>) -> Option<()>) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return end(b, i + 1);
    }
    loop {
        let (key, after) = string(text, i)?;
        i = skip_ws(b, after);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (value, after) = scalar(text, i)?;
        field(key, value)?;
        i = skip_ws(b, after);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return end(b, i + 1),
            _ => return None,
        }
    }
}

fn end(b: &[u8], i: usize) -> Option<()> {
    (skip_ws(b, i) == b.len()).then_some(())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// A string starting at `i` (its opening quote) without escapes or control characters; returns its
/// contents and the index after the closing quote. A quote is ASCII, so it never falls inside a
/// multi-byte character and the slice is at character boundaries.
fn string(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let end = start + special_byte(b.get(start..)?)?;
    if b[end] != b'"' {
        return None;
    }
    Some((text.get(start..end)?, end + 1))
}

/// The index of the first `"`, `\\` or control character in `b`, eight bytes at a time.
fn special_byte(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte that is zero (exact up to the first one, which is all we use).
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let mut at = 0;
    while let Some(chunk) = b.get(at..at + 8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        let found = zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\'))) | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    b[at..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|i| at + i)
}

fn scalar(text: &str, i: usize) -> Option<(Scalar<'_>, usize)> {
    let b = text.as_bytes();
    match *b.get(i)? {
        b'"' => string(text, i).map(|(s, next)| (Scalar::Str(s), next)),
        b't' => literal(b, i, b"true").map(|next| (Scalar::Bool(true), next)),
        b'f' => literal(b, i, b"false").map(|next| (Scalar::Bool(false), next)),
        b'n' => literal(b, i, b"null").map(|next| (Scalar::Null, next)),
        b'-' | b'0'..=b'9' => {
            let next = number(b, i)?;
            Some((Scalar::Num(text.get(i..next)?), next))
        }
        _ => None,
    }
}

fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b.get(i..)?.starts_with(word).then_some(i + word.len())
}

/// The end of a number in JSON's grammar starting at `i`:
/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match b.get(i) {
        Some(b'0') => i + 1,
        Some(b'1'..=b'9') => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &str) -> Option<Vec<(&str, Scalar<'_>)>> {
        let mut out = Vec::new();
        fields(text, |k, v| {
            out.push((k, v));
            Some(())
        })?;
        Some(out)
    }

    #[test]
    fn reads_a_flat_object() {
        let got = collect(r#" { "a" : "x y", "b":-1.5e+3,"c":true, "d":false,"e":null ,"é":0 } "#).unwrap();
        assert_eq!(
            got,
            vec![
                ("a", Scalar::Str("x y")),
                ("b", Scalar::Num("-1.5e+3")),
                ("c", Scalar::Bool(true)),
                ("d", Scalar::Bool(false)),
                ("e", Scalar::Null),
                ("é", Scalar::Num("0")),
            ]
        );
        assert_eq!(collect("{}").unwrap(), vec![]);
    }

    #[test]
    fn gives_up_on_anything_else() {
        for text in [
            "",
            "[]",
            r#"{"a":"x\"y"}"#,
            r#"{"a\n":1}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":{"b":1}}"#,
            r#"{"a":[1]}"#,
            r#"{"a":1,}"#,
            r#"{"a":1} x"#,
            r#"{"a":1"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":+1}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            r#"{"a":NaN}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            r#"{"a":1 "b":2}"#,
        ] {
            assert_eq!(collect(text), None, "{text}");
        }
    }

    #[test]
    fn special_bytes_are_found_at_any_offset() {
        for len in 0..40 {
            for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                for at in 0..len {
                    // Neighbours just above and below the special bytes must not be mistaken for them.
                    let mut b: Vec<u8> = (0..len).map(|i| [b'!', b'#', b'[', b']', 0x20, 0x7f, 0xc3, 0xa9][i % 8]).collect();
                    assert_eq!(special_byte(&b), None, "{b:?}");
                    b[at] = special;
                    if at + 1 < len {
                        b[at + 1] = b'"';
                    }
                    assert_eq!(special_byte(&b), Some(at), "{b:?}");
                }
            }
        }
    }

    #[test]
    fn numbers_convert_like_serde_json() {
        for n in ["0", "-0", "1", "181.0", "0.1", "1e3", "1E-3", "-2.5e+10", "123456789012345678901234567890", "1e400"] {
            let ours = Scalar::Num(n).f64();
            let theirs: Option<f64> = serde_json::from_str(n).ok();
            assert_eq!(ours.map(f64::to_bits), theirs.map(f64::to_bits), "{n}");
        }
    }
}
