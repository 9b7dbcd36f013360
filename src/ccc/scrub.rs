//! Text that comes back from CCC, made safe to log, serve and publish.
//!
//! The gateway echoes requests in some error messages: `SignatureDoesNotMatch` ends with its
//! whole string to sign, `Callee`, `Caller`, `AccessKeyId` and `SecurityToken` included. So
//! every message and body snippet is scrubbed where it is parsed, before anything can copy
//! it: the values of those parameters (and `Signature`) are replaced by `***`, in any of the
//! encodings a string to sign or a query uses, and any other run of seven or more digits (a
//! phone number in free text) keeps only its first three and last four digits.

/// Parameters whose values never leave the process.
const SECRET_PARAMETERS: [&str; 8] = [
    "SecurityToken",
    "Signature",
    "AccessKeyId",
    "Callee",
    "Caller",
    // The call-record queries' number, and the numbers in their answers.
    "PhoneNumber",
    "CallingNumber",
    "CalledNumber",
];

/// What follows a parameter's name before its value: `=` in a query, percent-encoded once
/// in a string to sign, twice inside an encoded value, or a JSON member.
const SEPARATORS: [&str; 5] = ["%253D", "%3D", "=", "\":\"", "\": \""];

/// What ends a value.
const TERMINATORS: [&str; 5] = ["%2526", "%26", "&", "\"", " "];

/// `text` with secret parameter values removed and long digit runs masked.
pub fn scrub(text: &str) -> String {
    mask_digits(&remove_values(text))
}

fn remove_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'scan: while !rest.is_empty() {
        for name in SECRET_PARAMETERS {
            if let Some(after_name) = rest.strip_prefix(name) {
                for separator in SEPARATORS {
                    if let Some(value) = after_name.strip_prefix(separator) {
                        let end = TERMINATORS
                            .iter()
                            .filter_map(|t| value.find(t))
                            .min()
                            .unwrap_or(value.len());
                        out.push_str(name);
                        out.push_str(separator);
                        out.push_str("***");
                        rest = &value[end..];
                        continue 'scan;
                    }
                }
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

/// Every run of seven or more ASCII or full-width digits keeps its first three and last four.
fn mask_digits(text: &str) -> String {
    let is_digit = |c: char| c.is_ascii_digit() || ('０'..='９').contains(&c);
    let mut out = String::with_capacity(text.len());
    let mut run: Vec<char> = Vec::new();
    let flush = |run: &mut Vec<char>, out: &mut String| {
        if run.len() >= 7 {
            out.extend(&run[..3]);
            out.extend(std::iter::repeat_n('*', run.len() - 7));
            out.extend(&run[run.len() - 4..]);
        } else {
            out.extend(run.iter());
        }
        run.clear();
    };
    for c in text.chars() {
        if is_digit(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_to_sign_loses_its_secrets_and_numbers() {
        let message = "Specified signature is not matched with our calculation. server string \
            to sign is:POST&%2F&AccessKeyId%3DLTAI5tExample%26Action%3DDialEx%26Callee%3D\
            13800138000%26Caller%3D02285196281%26SecurityToken%3DCAIS%252Bsecret%252Ftoken%26\
            SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3Dabc";
        let scrubbed = scrub(message);
        for secret in [
            "LTAI5tExample",
            "13800138000",
            "02285196281",
            "CAIS",
            "secret",
        ] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("Callee%3D***%26"), "{scrubbed}");
        assert!(
            scrubbed.contains("SignatureMethod%3DHMAC-SHA1"),
            "{scrubbed}"
        );
        assert!(scrubbed.starts_with("Specified signature is not matched"));
    }

    #[test]
    fn query_and_json_forms_are_scrubbed_too() {
        assert_eq!(
            scrub("Signature=abc%2Bdef&Version=2017-07-05"),
            "Signature=***&Version=2017-07-05"
        );
        assert_eq!(
            scrub(r#"{"Callee":"13800138000","Code":"X"}"#),
            r#"{"Callee":"***","Code":"X"}"#
        );
        // The call-record queries' numbers.
        assert_eq!(
            scrub("PhoneNumber%3D13800138000%26StartTime%3D1"),
            "PhoneNumber%3D***%26StartTime%3D1"
        );
        assert_eq!(
            scrub(r#"{"CalledNumber":"13800138000","CallingNumber":"02285196281"}"#),
            r#"{"CalledNumber":"***","CallingNumber":"***"}"#
        );
    }

    #[test]
    fn long_digit_runs_keep_only_their_ends() {
        assert_eq!(scrub("call 15732036617 now"), "call 157****6617 now");
        assert_eq!(scrub("１５７３２０３６６１７"), "１５７****６６１７");
        assert_eq!(
            scrub("code 503 at 12:00, id 123456"),
            "code 503 at 12:00, id 123456"
        );
        assert_eq!(scrub("1234567"), "1234567");
        assert_eq!(scrub("12345678"), "123*5678");
    }
}
