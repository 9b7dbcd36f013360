//! Request parameters as the gateway sees them: query and form body merged, decoded, sorted.
//!
//! The signature covers every parameter wherever it travelled, so both sources are decoded the
//! same way (`application/x-www-form-urlencoded` rules: `+` is a space, `%XX` is a byte) into one
//! list sorted by key. Decoding is strict on purpose: a lossy decoder would quietly sign
//! something other than what the client meant, and a client bug would surface as a puzzling
//! `SignatureDoesNotMatch` instead of a clear `InvalidParameter`.

use std::fmt;

/// Why a query string or body could not be turned into parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParamError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A decoded key or value that is not UTF-8.
    BadUtf8,
    /// The same key given twice (in the query, the body, or one in each): the gateway cannot
    /// know which one the client signed.
    Duplicate(String),
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::BadEscape => f.write_str("The request has a malformed percent-encoding."),
            ParamError::BadUtf8 => f.write_str("The request has parameters that are not UTF-8."),
            ParamError::Duplicate(key) => write!(f, "Parameter {key} is specified more than once."),
        }
    }
}

/// All parameters of one request, sorted by key (byte order), keys unique.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Decodes and merges the query string and the form body (either may be absent).
    pub(crate) fn parse(query: Option<&str>, form_body: Option<&[u8]>) -> Result<Self, ParamError> {
        let mut pairs = Vec::with_capacity(24);
        if let Some(query) = query {
            decode_into(query.as_bytes(), &mut pairs)?;
        }
        if let Some(body) = form_body {
            decode_into(body, &mut pairs)?;
        }
        Self::from_pairs(pairs)
    }

    /// Builds from already decoded pairs; used by `parse` and by tests with published vectors.
    pub(crate) fn from_pairs(mut pairs: Vec<(String, String)>) -> Result<Self, ParamError> {
        // Byte order of the raw keys is what the gateway sorts by; `str`'s `Ord` is exactly that.
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ParamError::Duplicate(w[0].0.clone()));
        }
        Ok(Self { pairs })
    }

    /// Test parameters from literal pairs, which must not repeat a key.
    #[cfg(test)]
    pub(crate) fn of(pairs: &[(&str, &str)]) -> Self {
        let owned = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::from_pairs(owned).expect("test pairs have distinct keys")
    }

    /// The value of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.pairs[i].1.as_str())
    }

    /// The value of `key` if present and not empty: the gateway treats `Key=` like a missing key.
    pub(crate) fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// All pairs in canonical (sorted) order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// Splits `input` on `&`, each piece on its first `=`, and decodes both halves.
fn decode_into(input: &[u8], pairs: &mut Vec<(String, String)>) -> Result<(), ParamError> {
    for piece in input.split(|&b| b == b'&') {
        // `a=1&&b=2` and a trailing `&` carry no parameter; browsers and servlets skip them too.
        if piece.is_empty() {
            continue;
        }
        let (key, value) = match piece.iter().position(|&b| b == b'=') {
            Some(i) => (&piece[..i], &piece[i + 1..]),
            None => (piece, &[][..]),
        };
        pairs.push((decode_component(key)?, decode_component(value)?));
    }
    Ok(())
}

/// Form-decodes one key or value: `+` is a space, `%XX` a byte, the result must be UTF-8.
fn decode_component(raw: &[u8]) -> Result<String, ParamError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_value);
                let lo = raw.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(ParamError::BadEscape),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ParamError::BadUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_body_merge_sorted() {
        let p = Params::parse(Some("b=2&a=1"), Some(b"c=3&Z=0")).unwrap();
        let keys: Vec<_> = p.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["Z", "a", "b", "c"]);
        assert_eq!(p.get("c"), Some("3"));
        assert_eq!(p.get("d"), None);
    }

    #[test]
    fn plus_is_space_and_escapes_decode() {
        let p = Params::parse(None, Some(b"k=a+b%2Bc%20d&e=%E9%98%BF&flag")).unwrap();
        assert_eq!(p.get("k"), Some("a b+c d"));
        assert_eq!(p.get("e"), Some("阿"));
        assert_eq!(p.get("flag"), Some(""));
        assert_eq!(p.non_empty("flag"), None);
    }

    #[test]
    fn empty_pieces_are_skipped() {
        let p = Params::parse(Some("&a=1&&b=2&"), None).unwrap();
        assert_eq!(p.iter().count(), 2);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_guess() {
        assert_eq!(Params::parse(Some("a=%"), None), Err(ParamError::BadEscape));
        assert_eq!(
            Params::parse(Some("a=%4"), None),
            Err(ParamError::BadEscape)
        );
        assert_eq!(
            Params::parse(Some("a=%zz"), None),
            Err(ParamError::BadEscape)
        );
        assert_eq!(
            Params::parse(None, Some(b"a=%FF")),
            Err(ParamError::BadUtf8)
        );
        assert_eq!(
            Params::parse(None, Some(b"a=\xff")),
            Err(ParamError::BadUtf8)
        );
        assert_eq!(
            Params::parse(Some("a=1"), Some(b"a=1")),
            Err(ParamError::Duplicate("a".into()))
        );
    }
}
