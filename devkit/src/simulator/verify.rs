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

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
        .unwrap()
    }

    fn check(method: &str, secret: &str, pairs: &[(&str, &str)], sts: Option<&str>, sig: &str) {
        let p = params(pairs);
        let computed_sts = string_to_sign(method, &p);
        if let Some(sts) = sts {
            assert_eq!(computed_sts, sts);
        }
        let key = signing_key(secret);
        assert_eq!(sign(&key, &computed_sts), sig);
        assert!(verify(&key, &computed_sts, sig));
    }

    #[test]
    fn published_vector_describe_regions() {
        check(
            "GET",
            "testsecret",
            &[
                ("AccessKeyId", "testid"),
                ("Action", "DescribeRegions"),
                ("Format", "XML"),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
                ("SignatureVersion", "1.0"),
                ("Timestamp", "2016-02-23T12:46:24Z"),
                ("Version", "2014-05-26"),
            ],
            Some(
                "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML\
                 %26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-\
                 4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z\
                 %26Version%3D2014-05-26",
            ),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY=",
        );
    }

    #[test]
    fn published_vector_describe_regions_literal_timestamp_key() {
        // The old ECS doc example spells the key `TimeStamp`; sorting must still be byte order.
        check(
            "GET",
            "testsecret",
            &[
                ("TimeStamp", "2016-02-23T12:46:24Z"),
                ("Format", "XML"),
                ("AccessKeyId", "testid"),
                ("Action", "DescribeRegions"),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
                ("Version", "2014-05-26"),
                ("SignatureVersion", "1.0"),
            ],
            None,
            "CT9X0VtwR86fNWSnsc6v8YGOjuE=",
        );
    }

    #[test]
    fn published_vector_send_sms_utf8_and_json_value() {
        check(
            "GET",
            "testSecret",
            &[
                ("AccessKeyId", "testId"),
                ("Action", "SendSms"),
                ("Format", "XML"),
                ("OutId", "123"),
                ("PhoneNumbers", "15300000001"),
                ("RegionId", "cn-hangzhou"),
                ("SignName", "阿里云短信测试专用"),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureNonce", "45e25e9b-0a6f-4070-8c85-2956eda1b466"),
                ("SignatureVersion", "1.0"),
                ("TemplateCode", "SMS_71390007"),
                ("TemplateParam", "{\"customer\":\"test\"}"),
                ("Timestamp", "2017-07-12T02:42:19Z"),
                ("Version", "2017-05-25"),
            ],
            Some(
                "GET&%2F&AccessKeyId%3DtestId%26Action%3DSendSms%26Format%3DXML%26OutId%3D123\
                 %26PhoneNumbers%3D15300000001%26RegionId%3Dcn-hangzhou%26SignName%3D%25E9%2598\
                 %25BF%25E9%2587%258C%25E4%25BA%2591%25E7%259F%25AD%25E4%25BF%25A1%25E6%25B5%258B\
                 %25E8%25AF%2595%25E4%25B8%2593%25E7%2594%25A8%26SignatureMethod%3DHMAC-SHA1\
                 %26SignatureNonce%3D45e25e9b-0a6f-4070-8c85-2956eda1b466%26SignatureVersion%3D1.0\
                 %26TemplateCode%3DSMS_71390007%26TemplateParam%3D%257B%2522customer%2522%253A\
                 %2522test%2522%257D%26Timestamp%3D2017-07-12T02%253A42%253A19Z\
                 %26Version%3D2017-05-25",
            ),
            "zJDF+Lrzhj/ThnlvIToysFRq6t4=",
        );
    }

    #[test]
    fn go_sdk_vectors_with_empty_values_and_space() {
        let base = [
            ("Version", ""),
            ("Action", ""),
            ("Format", "JSON"),
            ("Timestamp", "mock date"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureType", ""),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "MOCK_UUID"),
            ("AccessKeyId", "accessKeyId"),
            ("RegionId", "regionId"),
        ];
        check(
            "GET",
            "accessKeySecret",
            &base,
            None,
            "7loPmFjvDnzOVnQeQNj85S6nFGY=",
        );
        let mut sts = base.to_vec();
        sts.push(("SecurityToken", "accessKeyStsToken"));
        check(
            "GET",
            "accessKeySecret",
            &sts,
            None,
            "5Nxdcler+ihqWqv0Hr2On4PsBf4=",
        );
    }

    #[test]
    fn tea_openapi_util_vector() {
        check(
            "GET",
            "secret",
            &[("query", "test"), ("body", "test")],
            None,
            "XlUyV4sXjOuX5FnjUz9IF9tm5rU=",
        );
    }

    #[test]
    fn signature_parameter_is_not_signed() {
        let with = params(&[("a", "1"), ("Signature", "whatever")]);
        let without = params(&[("a", "1")]);
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
