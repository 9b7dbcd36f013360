//! Signature v1 (HMAC-SHA1) as the gateway computes it, plus the `Timestamp` format check.
//!
//! Deliberately independent of the crate's signer: the percent-encoder, the canonical query and
//! the string to sign are written out here from the published algorithm and pinned by the
//! published vectors in the tests below. If the client's signer and this code disagree, the
//! simulator answers `SignatureDoesNotMatch` with its string to sign, which is the quickest way to
//! see which side is wrong.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::params::Params;

/// HMAC-SHA1 keyed with `AccessKeySecret + "&"`, prepared once per credential so each request
/// only clones the keyed state instead of re-deriving it.
pub(crate) type SigningKey = Hmac<Sha1>;

/// Prepares the HMAC key for one AccessKeySecret.
pub(crate) fn signing_key(secret: &str) -> SigningKey {
    let mut key = Vec::with_capacity(secret.len() + 1);
    key.extend_from_slice(secret.as_bytes());
    key.push(b'&');
    SigningKey::new_from_slice(&key).expect("HMAC takes keys of any length")
}

/// RFC 3986 percent-encoding as the gateway applies it: only `A-Z a-z 0-9 - _ . ~` are kept,
/// every other UTF-8 byte becomes `%XX` with upper-case hex (so a space is `%20`, never `+`,
/// and `*` is `%2A`).
pub(crate) fn percent_encode_into(input: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in input.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// `k=v&k=v` over every parameter but `Signature`, keys sorted, both sides encoded.
pub(crate) fn canonical_query(params: &Params) -> String {
    let mut out = String::with_capacity(512);
    for (key, value) in params.iter().filter(|(k, _)| *k != "Signature") {
        if !out.is_empty() {
            out.push('&');
        }
        percent_encode_into(key, &mut out);
        out.push('=');
        percent_encode_into(value, &mut out);
    }
    out
}

/// `METHOD&%2F&encode(canonical query)`.
pub(crate) fn string_to_sign(method: &str, params: &Params) -> String {
    let canonical = canonical_query(params);
    let mut out = String::with_capacity(method.len() + 5 + canonical.len() * 5 / 4);
    out.push_str(method);
    out.push_str("&%2F&");
    percent_encode_into(&canonical, &mut out);
    out
}

/// Base64 of the HMAC of `string_to_sign`: what a correct client puts in `Signature` (the
/// simulator itself only verifies; tests sign with this).
#[cfg(test)]
pub(crate) fn sign(key: &SigningKey, string_to_sign: &str) -> String {
    let mut mac = key.clone();
    mac.update(string_to_sign.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` (as sent, Base64) is the HMAC of `string_to_sign`. The comparison of the
/// MAC bytes is constant-time; a signature that is not even Base64 simply does not match.
pub(crate) fn verify(key: &SigningKey, string_to_sign: &str, signature: &str) -> bool {
    let Ok(claimed) = STANDARD.decode(signature) else {
        return false;
    };
    let mut mac = key.clone();
    mac.update(string_to_sign.as_bytes());
    mac.verify_slice(&claimed).is_ok()
}

/// Parses a `Timestamp` that must be exactly `YYYY-MM-DDThh:mm:ssZ` (UTC, no fraction, no
/// offset), which is the only form the gateway documents. `None` means a format error.
pub(crate) fn parse_timestamp(value: &str) -> Option<jiff::Timestamp> {
    let b = value.as_bytes();
    let shape_ok = b.len() == 20
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    // The shape is right; jiff checks the ranges (month 13, February 30 and the like).
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_vectors_verify() {
        let vectors = crate::vectors::signing_vectors();
        assert!(vectors.len() >= 6);
        for v in &vectors {
            let computed = string_to_sign(&v.method, &Params::of(&v.pairs()));
            if let Some(expected) = &v.string_to_sign {
                assert_eq!(&computed, expected, "{}", v.name);
            }
            let key = signing_key(&v.secret);
            assert_eq!(sign(&key, &computed), v.signature, "{}", v.name);
            assert!(verify(&key, &computed, &v.signature), "{}", v.name);
        }
    }

    #[test]
    fn signature_parameter_is_not_signed() {
        let with = Params::of(&[("a", "1"), ("Signature", "whatever")]);
        let without = Params::of(&[("a", "1")]);
        assert_eq!(
            string_to_sign("POST", &with),
            string_to_sign("POST", &without)
        );
    }

    #[test]
    fn percent_encoding_follows_rfc3986() {
        let mut out = String::new();
        percent_encode_into("a b*c~d+e/f=g&h-_.", &mut out);
        assert_eq!(out, "a%20b%2Ac~d%2Be%2Ff%3Dg%26h-_.");
    }

    #[test]
    fn verify_rejects_wrong_and_garbage_signatures() {
        let key = signing_key("s");
        let sig = sign(&key, "GET&%2F&a%3D1");
        assert!(!verify(&key, "GET&%2F&a%3D2", &sig));
        assert!(!verify(&key, "GET&%2F&a%3D1", "not base64!"));
        assert!(!verify(&key, "GET&%2F&a%3D1", ""));
        assert!(!verify(&signing_key("t"), "GET&%2F&a%3D1", &sig));
    }

    #[test]
    fn timestamp_format_is_strict() {
        assert!(parse_timestamp("2016-02-23T12:46:24Z").is_some());
        for bad in [
            "2016-02-23T12:46:24",
            "2016-02-23 12:46:24Z",
            "2016-02-23T12:46:24.000Z",
            "2016-02-23T12:46:24+00:00",
            "2016-13-23T12:46:24Z",
            "2016-02-30T12:46:24Z",
            "2016-02-23t12:46:24z",
            "１016-02-23T12:46:24Z",
            "",
        ] {
            assert!(parse_timestamp(bad).is_none(), "{bad} accepted");
        }
    }
}
