//! Typed `DialEx` answers and the classification of failures.
//!
//! The classification decides whether a customer might be rung twice, so it is data: one table
//! from error code to class, read top to bottom, plus the transport cases that have no code.

use super::scrub::scrub;
use serde::Deserialize;

/// What a failure means for the request that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// The gateway proves the call was not placed: safe to retry with a fresh nonce.
    Retryable,
    /// The request may have been executed and the worker cannot tell: never re-send blindly.
    Ambiguous,
    /// The request itself is wrong (parameters, business rules): retrying cannot help.
    Permanent,
    /// The worker is misconfigured (credentials, signature, clock): every request would fail.
    Systemic,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 4] = [
        ErrorClass::Retryable,
        ErrorClass::Ambiguous,
        ErrorClass::Permanent,
        ErrorClass::Systemic,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Ambiguous => "ambiguous",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Systemic => "systemic",
        }
    }
}

/// Error codes and their class. A trailing `.*` matches the code itself and every sub-code
/// (`Throttling.*` matches `Throttling` and `Throttling.User`). First match wins; codes not in
/// the table are permanent.
pub const CODE_CLASSES: &[(&str, ErrorClass)] = &[
    ("Throttling.*", ErrorClass::Retryable),
    ("ServiceUnavailable.*", ErrorClass::Retryable),
    ("InternalError.*", ErrorClass::Retryable),
    ("InvalidAccessKeyId.*", ErrorClass::Systemic),
    ("SignatureDoesNotMatch", ErrorClass::Systemic),
    ("IncompleteSignature", ErrorClass::Systemic),
    ("InvalidTimeStamp.*", ErrorClass::Systemic),
    ("InvalidSecurityToken.*", ErrorClass::Systemic),
    ("Forbidden.*", ErrorClass::Systemic),
    // A nonce the gateway has already seen means an earlier send of this very request arrived.
    ("SignatureNonceUsed", ErrorClass::Ambiguous),
];

/// The class of an Alibaba error code, per [`CODE_CLASSES`].
pub fn class_of_code(code: &str) -> ErrorClass {
    CODE_CLASSES
        .iter()
        .find(|(pattern, _)| code_matches(pattern, code))
        .map_or(ErrorClass::Permanent, |(_, class)| *class)
}

/// `pattern` is a code, or a code followed by `.*` for it and all its sub-codes.
fn code_matches(pattern: &str, code: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            code == prefix
                || code
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
        }
        None => code == pattern,
    }
}

/// The built-in table plus the operator's additions from `[ccc.error_classes]`, which are
/// consulted first (so they can also override a built-in entry).
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    overrides: Vec<(String, ErrorClass)>,
}

impl Classifier {
    pub fn new(overrides: impl IntoIterator<Item = (String, ErrorClass)>) -> Self {
        let mut overrides: Vec<(String, ErrorClass)> = overrides.into_iter().collect();
        // Exact codes before wildcards, longer wildcards before shorter ones.
        overrides.sort_by_key(|(pattern, _)| {
            (pattern.ends_with(".*"), std::cmp::Reverse(pattern.len()))
        });
        Classifier { overrides }
    }

    pub fn class(&self, failure: &DialFailure) -> ErrorClass {
        if let DialFailure::Api(api) = failure
            && let Some((_, class)) = self
                .overrides
                .iter()
                .find(|(pattern, _)| code_matches(pattern, &api.code))
        {
            return *class;
        }
        failure.class()
    }
}

/// The class of an HTTP status that came without a parseable Alibaba error body.
pub fn class_of_bare_status(status: u16) -> ErrorClass {
    match status {
        429 | 500 | 503 => ErrorClass::Retryable,
        // The gateway never redirects, and the client follows no redirect: `ccc.endpoint`
        // points somewhere else, for every request alike. Nothing was executed.
        300..=399 => ErrorClass::Systemic,
        // A proxy in front of the gateway gave up waiting: the gateway may have executed it.
        502 | 504 => ErrorClass::Ambiguous,
        // Anything else without a body is a gateway we do not understand; the call may or
        // may not have been placed.
        _ => ErrorClass::Ambiguous,
    }
}

/// A successful `DialEx`: the call was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialAccepted {
    pub task_id: String,
    pub request_id: String,
    pub code: String,
    pub message: Option<String>,
    pub status_code: Option<String>,
    pub status_desc: Option<String>,
    pub http_status_code: Option<u16>,
    /// Milliseconds since the epoch, as the gateway reports it.
    pub time_stamp: Option<String>,
}

impl DialAccepted {
    /// [`Self::time_stamp`] as an instant, or `None` if the gateway sent none or something
    /// that is not a whole number of milliseconds in jiff's range: it is informational, so
    /// a strange value is dropped rather than failing a call that was placed.
    pub fn ccc_time(&self) -> Option<jiff::Timestamp> {
        let millis: i64 = self.time_stamp.as_deref()?.parse().ok()?;
        jiff::Timestamp::from_millisecond(millis).ok()
    }
}

/// An error answer from the gateway, or a `Success=false` body with HTTP 200.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub http_status: u16,
    pub request_id: Option<String>,
    pub host_id: Option<String>,
    pub code: String,
    pub message: Option<String>,
    pub recommend: Option<String>,
    pub status_code: Option<String>,
    pub status_desc: Option<String>,
}

/// Why one attempt did not produce a [`DialAccepted`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum DialFailure {
    /// The gateway answered with an error.
    #[error("CCC answered HTTP {} {}: {}", .0.http_status, .0.code, .0.message.as_deref().unwrap_or(""))]
    Api(Box<ApiError>),
    /// No usable answer: the class says whether the request could have been executed.
    #[error("CCC transport failure ({}): {detail}", class.as_str())]
    Transport {
        class: ErrorClass,
        /// The worker's own code for it (`connect`, `timeout`, `connection_lost`, `http_502`…).
        code: &'static str,
        detail: String,
    },
}

impl DialFailure {
    pub fn class(&self) -> ErrorClass {
        match self {
            DialFailure::Api(e) => class_of_code(&e.code),
            DialFailure::Transport { class, .. } => *class,
        }
    }

    /// The code carried into the outcome event.
    pub fn code(&self) -> &str {
        match self {
            DialFailure::Api(e) => &e.code,
            DialFailure::Transport { code, .. } => code,
        }
    }

    pub fn message(&self) -> Option<&str> {
        match self {
            DialFailure::Api(e) => e.message.as_deref(),
            DialFailure::Transport { detail, .. } => Some(detail),
        }
    }

    pub fn api(&self) -> Option<&ApiError> {
        match self {
            DialFailure::Api(e) => Some(e),
            DialFailure::Transport { .. } => None,
        }
    }

    /// CCC asks for a slower pace (`Throttling`, `Throttling.User`, `Throttling.Api`, …).
    pub fn is_throttling(&self) -> bool {
        self.code().starts_with("Throttling")
    }

    /// The gateway has already run a request with this nonce: answered to a replay of a
    /// request that did arrive, so the call may have been placed.
    pub fn is_nonce_replay(&self) -> bool {
        self.code() == "SignatureNonceUsed"
    }

    /// What an operator should check when CCC refuses the worker itself (a systemic answer).
    pub fn remedy(&self) -> &'static str {
        let code = self.code();
        if code.starts_with("InvalidAccessKeyId") {
            "check ALIBABA_CLOUD_ACCESS_KEY_ID (and ALIBABA_CLOUD_SECURITY_TOKEN for STS credentials)"
        } else if code == "SignatureDoesNotMatch" || code == "IncompleteSignature" {
            "check ALIBABA_CLOUD_ACCESS_KEY_SECRET"
        } else if code.starts_with("InvalidTimeStamp") {
            "check the clock of this machine (NTP); CCC accepts requests within 15 minutes of its time"
        } else if code == "http_redirect" {
            "ccc.endpoint answers with a redirect, which is never followed: set it to the gateway itself"
        } else if code == "credentials_unavailable" {
            "the worker resumes by itself once the credentials provider answers"
        } else if code.starts_with("Forbidden") {
            "check the RAM permissions of the AccessKey (ccc:DialEx) and the account's status"
        } else {
            "check the ALIBABA_CLOUD_* credentials, ccc.endpoint and the clock"
        }
    }
}

/// The gateway's JSON body; every field optional because error and success bodies differ and
/// `StatusCode` arrives as a number or a string.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    request_id: Option<String>,
    host_id: Option<String>,
    code: Option<String>,
    message: Option<String>,
    recommend: Option<String>,
    success: Option<bool>,
    task_id: Option<String>,
    status_code: Option<StringOrNumber>,
    status_desc: Option<String>,
    http_status_code: Option<u16>,
    time_stamp: Option<StringOrNumber>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    String(String),
    Number(serde_json::Number),
}

impl StringOrNumber {
    fn into_string(self) -> String {
        match self {
            StringOrNumber::String(s) => s,
            StringOrNumber::Number(n) => n.to_string(),
        }
    }
}

/// Interprets one HTTP answer (status and body) from the gateway. Messages and body snippets
/// are scrubbed here (see [`super::scrub`]), before anything can copy them.
pub fn parse_answer(http_status: u16, raw: &[u8]) -> Result<DialAccepted, DialFailure> {
    let body = match read_answer(http_status, raw) {
        Answered::Success(body) => body,
        Answered::Refused(failure) => return Err(failure),
        Answered::Unreadable => return Err(bare_status_failure(http_status, raw)),
    };
    if let Some(task_id) = body.task_id.filter(|t| !t.is_empty()) {
        return Ok(DialAccepted {
            task_id,
            request_id: body.request_id.unwrap_or_default(),
            code: body.code.unwrap_or_else(|| "OK".to_owned()),
            message: body.message.filter(|m| !m.is_empty()).map(|m| scrub(&m)),
            status_code: body.status_code.map(StringOrNumber::into_string),
            status_desc: body.status_desc,
            http_status_code: body.http_status_code,
            time_stamp: body.time_stamp.map(StringOrNumber::into_string),
        });
    }
    // "OK" without a TaskId: the call's fate is unknown and nothing can be correlated.
    Err(DialFailure::Transport {
        class: ErrorClass::Ambiguous,
        code: "missing_task_id",
        detail: "CCC reported success without a TaskId".to_owned(),
    })
}

/// The failure an answer to a query (an action that changes nothing, such as
/// `ListCallDetailRecords`) carries, or `None` when it is a success whose body the caller
/// reads for itself.
pub(crate) fn query_failure(http_status: u16, raw: &[u8]) -> Option<DialFailure> {
    match read_answer(http_status, raw) {
        Answered::Success(_) => None,
        Answered::Refused(failure) => Some(failure),
        Answered::Unreadable => Some(bare_status_failure(http_status, raw)),
    }
}

/// What an answer's status and common fields say, before the action's own fields are read.
enum Answered {
    Success(Body),
    Refused(DialFailure),
    /// No Alibaba body, or one without an error code: the status alone decides.
    Unreadable,
}

fn read_answer(http_status: u16, raw: &[u8]) -> Answered {
    let parsed: Option<Body> = serde_json::from_slice(raw).ok();
    let Some(body) = parsed.filter(|b| b.code.is_some() || b.request_id.is_some()) else {
        return Answered::Unreadable;
    };
    let succeeded = (200..300).contains(&http_status)
        && body.success != Some(false)
        && body.code.as_deref().is_none_or(|c| c == "OK" || c == "200");
    if succeeded {
        return Answered::Success(body);
    }
    if body.task_id.as_deref().is_some_and(|t| !t.is_empty()) {
        // A TaskId in an answer that is not a success (a 5xx saying OK, say): the call may
        // well have been placed. Never "certainly not placed".
        return Answered::Refused(DialFailure::Transport {
            class: ErrorClass::Ambiguous,
            code: "contradictory_answer",
            detail: format!("HTTP {http_status} with a TaskId but not a success"),
        });
    }
    let Some(code) = body.code.filter(|c| c != "OK" && c != "200") else {
        // No error code to classify by: the status alone decides, as for a body we cannot
        // read (a 5xx whose meaning is unclear is ambiguous, never permanent).
        return Answered::Unreadable;
    };
    Answered::Refused(DialFailure::Api(Box::new(ApiError {
        http_status,
        request_id: body.request_id,
        host_id: body.host_id,
        code,
        message: body.message.map(|m| scrub(&m)),
        recommend: body.recommend,
        status_code: body.status_code.map(StringOrNumber::into_string),
        status_desc: body.status_desc,
    })))
}

fn bare_status_failure(http_status: u16, body: &[u8]) -> DialFailure {
    let code = match http_status {
        429 => "http_429",
        500 => "http_500",
        502 => "http_502",
        503 => "http_503",
        504 => "http_504",
        300..=399 => "http_redirect",
        200..=299 => "unparseable_body",
        _ => "http_error",
    };
    let class = if (200..300).contains(&http_status) {
        // The gateway said 2xx but we cannot read what it did.
        ErrorClass::Ambiguous
    } else {
        class_of_bare_status(http_status)
    };
    let snippet = scrub(&String::from_utf8_lossy(&body[..body.len().min(200)]));
    DialFailure::Transport {
        class,
        code,
        detail: format!("HTTP {http_status} without an Alibaba body: {snippet:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(code: &str) -> DialFailure {
        DialFailure::Api(Box::new(ApiError {
            http_status: 400,
            request_id: None,
            host_id: None,
            code: code.to_owned(),
            message: None,
            recommend: None,
            status_code: None,
            status_desc: None,
        }))
    }

    #[test]
    fn a_failure_says_what_it_means_and_what_to_check() {
        assert!(answered("Throttling.User").is_throttling());
        assert!(answered("Throttling").is_throttling());
        assert!(!answered("ServiceUnavailable").is_throttling());
        assert!(answered("SignatureNonceUsed").is_nonce_replay());
        assert!(!answered("SignatureDoesNotMatch").is_nonce_replay());
        for (code, check) in [
            ("InvalidAccessKeyId.NotFound", "ALIBABA_CLOUD_ACCESS_KEY_ID"),
            ("SignatureDoesNotMatch", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
            ("IncompleteSignature", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
            ("InvalidTimeStamp.Expired", "clock"),
            ("http_redirect", "ccc.endpoint"),
            ("Forbidden.RAM", "RAM permissions"),
            ("InvalidSecurityToken.Expired", "credentials"),
        ] {
            assert!(answered(code).remedy().contains(check), "{code}");
        }
    }

    #[test]
    fn the_documented_success_body_parses() {
        let body = br#"{"TimeStamp":"1554862236398","StatusCode":200,"HttpStatusCode":200,
            "RequestId":"26D1277F-55BF-453E-A6B2-02B7E6F97699","TaskId":"155486223597726619",
            "Success":true,"Code":"OK","StatusDesc":"Okay","Message":""}"#;
        let ok = parse_answer(200, body).unwrap();
        assert_eq!(ok.task_id, "155486223597726619");
        assert_eq!(ok.request_id, "26D1277F-55BF-453E-A6B2-02B7E6F97699");
        assert_eq!(ok.status_code.as_deref(), Some("200"));
        assert_eq!(ok.status_desc.as_deref(), Some("Okay"));
        assert_eq!(ok.http_status_code, Some(200));
        assert_eq!(ok.time_stamp.as_deref(), Some("1554862236398"));
        assert_eq!(
            ok.ccc_time().map(|t| t.to_string()).as_deref(),
            Some("2019-04-10T02:10:36.398Z")
        );
        assert_eq!(ok.code, "OK");
        assert_eq!(ok.message, None);
    }

    #[test]
    fn a_time_stamp_that_is_not_epoch_milliseconds_gives_no_ccc_time() {
        let with_time_stamp = |time_stamp: &str| {
            let body =
                format!(r#"{{"RequestId":"R","TaskId":"1","Code":"OK","TimeStamp":{time_stamp}}}"#);
            parse_answer(200, body.as_bytes()).unwrap()
        };
        assert_eq!(
            with_time_stamp("1554862236398").ccc_time(),
            Some(jiff::Timestamp::from_millisecond(1_554_862_236_398).unwrap())
        );
        for odd in [
            "\"\"",
            "\"soon\"",
            "\"1554862236.398\"",
            "1.5e12",
            "\"99999999999999999999\"",
            "\"253402300800000\"",
        ] {
            assert_eq!(with_time_stamp(odd).ccc_time(), None, "{odd}");
        }
        let body = br#"{"RequestId":"R","TaskId":"1","Code":"OK"}"#;
        assert_eq!(parse_answer(200, body).unwrap().ccc_time(), None);
    }

    #[test]
    fn an_error_body_parses_with_every_field() {
        let body = br#"{"RequestId":"R1","HostId":"ccc.cn-shanghai.aliyuncs.com",
            "Code":"SignatureDoesNotMatch","Message":"Specified signature is not matched",
            "Recommend":"https://api.aliyun.com/troubleshoot?q=SignatureDoesNotMatch"}"#;
        let err = parse_answer(400, body).unwrap_err();
        let api = err.api().unwrap();
        assert_eq!(api.http_status, 400);
        assert_eq!(api.request_id.as_deref(), Some("R1"));
        assert_eq!(api.host_id.as_deref(), Some("ccc.cn-shanghai.aliyuncs.com"));
        assert_eq!(api.code, "SignatureDoesNotMatch");
        assert!(api.recommend.as_deref().unwrap().contains("troubleshoot"));
        assert_eq!(err.class(), ErrorClass::Systemic);
    }

    #[test]
    fn success_false_with_http_200_is_an_error() {
        let body = br#"{"RequestId":"R2","Success":false,"Code":"Parameter.Invalid",
            "Message":"Callee is invalid","HttpStatusCode":200,"StatusCode":"400","StatusDesc":"Bad"}"#;
        let err = parse_answer(200, body).unwrap_err();
        assert_eq!(err.code(), "Parameter.Invalid");
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert_eq!(err.api().unwrap().status_desc.as_deref(), Some("Bad"));
    }

    #[test]
    fn success_without_task_id_is_ambiguous() {
        let err =
            parse_answer(200, br#"{"RequestId":"R","Success":true,"Code":"OK"}"#).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Ambiguous);
        assert_eq!(err.code(), "missing_task_id");
    }

    #[test]
    fn bare_statuses_are_classified() {
        let cases = [
            (429, ErrorClass::Retryable),
            (500, ErrorClass::Retryable),
            (503, ErrorClass::Retryable),
            (502, ErrorClass::Ambiguous),
            (504, ErrorClass::Ambiguous),
            (200, ErrorClass::Ambiguous),
            (404, ErrorClass::Ambiguous),
        ];
        for (status, class) in cases {
            assert_eq!(
                parse_answer(status, b"").unwrap_err().class(),
                class,
                "{status}"
            );
            assert_eq!(
                parse_answer(status, b"<html>bad gateway</html>")
                    .unwrap_err()
                    .class(),
                class,
                "{status}"
            );
        }
    }

    #[test]
    fn codes_are_classified_by_the_table() {
        let cases = [
            ("Throttling", ErrorClass::Retryable),
            ("Throttling.User", ErrorClass::Retryable),
            ("Throttling.Api", ErrorClass::Retryable),
            ("ThrottlingX", ErrorClass::Permanent),
            ("ServiceUnavailable", ErrorClass::Retryable),
            ("InternalError", ErrorClass::Retryable),
            ("InvalidAccessKeyId.NotFound", ErrorClass::Systemic),
            ("InvalidAccessKeyId.Inactive", ErrorClass::Systemic),
            ("SignatureDoesNotMatch", ErrorClass::Systemic),
            ("IncompleteSignature", ErrorClass::Systemic),
            ("InvalidTimeStamp.Expired", ErrorClass::Systemic),
            ("Forbidden.RAM", ErrorClass::Systemic),
            ("SignatureNonceUsed", ErrorClass::Ambiguous),
            ("MissingCallee", ErrorClass::Permanent),
            ("InvalidParameter.AnswerMode", ErrorClass::Permanent),
            ("SomethingNew", ErrorClass::Permanent),
        ];
        for (code, class) in cases {
            assert_eq!(class_of_code(code), class, "{code}");
        }
    }

    #[test]
    fn operator_overrides_come_before_the_built_in_table() {
        let classifier = Classifier::new([
            ("Busy.*".to_owned(), ErrorClass::Retryable),
            ("Busy.Forever".to_owned(), ErrorClass::Permanent),
            ("Forbidden.Instance".to_owned(), ErrorClass::Permanent),
        ]);
        let failure = |code: &str| {
            parse_answer(
                400,
                format!(r#"{{"RequestId":"R","Code":"{code}"}}"#).as_bytes(),
            )
            .unwrap_err()
        };
        assert_eq!(
            classifier.class(&failure("Busy.Now")),
            ErrorClass::Retryable
        );
        assert_eq!(
            classifier.class(&failure("Busy.Forever")),
            ErrorClass::Permanent
        );
        assert_eq!(
            classifier.class(&failure("Forbidden.Instance")),
            ErrorClass::Permanent
        );
        assert_eq!(
            classifier.class(&failure("Forbidden.RAM")),
            ErrorClass::Systemic
        );
        assert_eq!(classifier.class(&failure("Other")), ErrorClass::Permanent);
        assert_eq!(
            Classifier::default().class(&failure("Busy.Now")),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn throttling_and_server_errors_with_bodies_are_retryable() {
        for (status, code) in [
            (400, "Throttling.User"),
            (503, "ServiceUnavailable"),
            (500, "InternalError"),
        ] {
            let body = format!(r#"{{"RequestId":"R","Code":"{code}","Message":"m"}}"#);
            let err = parse_answer(status, body.as_bytes()).unwrap_err();
            assert_eq!(err.class(), ErrorClass::Retryable, "{code}");
        }
    }

    #[test]
    fn a_server_error_without_a_code_is_never_certainly_not_placed() {
        // No Code at all: the status decides, and an unclear 5xx is ambiguous.
        let err = parse_answer(504, br#"{"RequestId":"R"}"#).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Ambiguous);
        let err = parse_answer(599, br#"{"RequestId":"R","Message":"?"}"#).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Ambiguous);
        // 500 and 503 without a code stay retryable, as their bare statuses are.
        let err = parse_answer(503, br#"{"RequestId":"R"}"#).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Retryable);
        // Code OK and a TaskId on a 5xx: the call may well have been placed.
        let body = br#"{"RequestId":"R","Code":"OK","TaskId":"T-1"}"#;
        let err = parse_answer(500, body).unwrap_err();
        assert_eq!(
            (err.class(), err.code()),
            (ErrorClass::Ambiguous, "contradictory_answer")
        );
        // Code OK without a TaskId on a 5xx: the status decides.
        let err = parse_answer(502, br#"{"RequestId":"R","Code":"OK"}"#).unwrap_err();
        assert_eq!(err.class(), ErrorClass::Ambiguous);
    }
}
