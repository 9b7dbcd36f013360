//! The bodies the gateway answers with: the `DialEx` success body, the common envelope of the
//! other actions' success bodies, and the common error body.
//!
//! Error bodies carry `RequestId`, `HostId`, `Code`, `Message` and `Recommend` like the real
//! gateway's; every answer also carries the `RequestId` in an `x-acs-request-id` header, as the
//! gateway does, so a client can log it even when it cannot parse the body.

use std::borrow::Cow;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;

/// Response body type of every simulator answer.
pub(crate) type Body = Full<Bytes>;

/// `HostId` of every error body: the endpoint the simulator stands in for.
const HOST_ID: &str = "ccc.cn-shanghai.aliyuncs.com";

/// A fresh gateway-style request id: an upper-case UUID.
pub(crate) fn new_request_id() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4()
        .hyphenated()
        .encode_upper(&mut buf)
        .to_owned()
}

/// A gateway error answer: HTTP status, `Code` and `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: Cow<'static, str>,
    pub(crate) message: Cow<'static, str>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// 400 `Missing<Param>` "<Param> is mandatory for this action."
    pub(crate) fn missing(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("Missing{param}"),
            format!("{param} is mandatory for this action."),
        )
    }

    /// 400 `InvalidParameter.<Param>` "Specified parameter <Param> is not valid."
    pub(crate) fn invalid(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            format!("InvalidParameter.{param}"),
            format!("Specified parameter {param} is not valid."),
        )
    }

    /// 400 `Throttling.User`: flow control.
    pub(crate) fn throttling() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "Throttling.User",
            "Request was denied due to user flow control.",
        )
    }

    /// 503 `ServiceUnavailable`: a temporary failure of the server.
    pub(crate) fn service_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
        )
    }

    /// 500 `InternalError`: an unknown failure of the server.
    pub(crate) fn internal_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "The request processing has failed due to some unknown error, exception or failure.",
        )
    }

    /// 400 `InvalidParameter` for requests that cannot even be read as parameters.
    pub(crate) fn malformed(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidParameter", message)
    }

    pub(crate) fn into_response(self, request_id: &str) -> Response<Body> {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct ErrorBody<'a> {
            request_id: &'a str,
            host_id: &'a str,
            code: &'a str,
            message: &'a str,
            recommend: String,
        }
        let body = ErrorBody {
            request_id,
            host_id: HOST_ID,
            code: &self.code,
            message: &self.message,
            recommend: format!(
                "https://api.aliyun.com/troubleshoot?q={}&product=CCC",
                self.code
            ),
        };
        json(self.status, request_id, &body)
    }
}

/// The `DialEx` success answer, shaped after the documentation's JSON example (note
/// `StatusCode` is a number there, while `TimeStamp` and `TaskId` are strings). `TimeStamp` is
/// `placed_at`, the dial's time ("本次外呼的时间戳"), which is also the dial record's
/// `ended_at`, so a test can tell the answer's timestamp from the dial log.
pub(crate) fn dial_ok(
    request_id: &str,
    task_id: &str,
    placed_at: jiff::Timestamp,
) -> Response<Body> {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct DialExBody<'a> {
        time_stamp: String,
        status_code: u16,
        status_desc: &'a str,
        http_status_code: u16,
        request_id: &'a str,
        task_id: &'a str,
        success: bool,
        code: &'a str,
        message: &'a str,
    }
    let body = DialExBody {
        time_stamp: placed_at.as_millisecond().to_string(),
        status_code: 200,
        status_desc: "Okay",
        http_status_code: 200,
        request_id,
        task_id,
        success: true,
        code: "OK",
        message: "",
    };
    json(StatusCode::OK, request_id, &body)
}

/// HTTP 200 with the envelope the 2017-07-05 actions other than `DialEx` share
/// (`RequestId`, `Success`, `Code`, `Message`, `HttpStatusCode`) and the fields of `payload`
/// beside them.
pub(crate) fn success(request_id: &str, payload: &impl Serialize) -> Response<Body> {
    #[derive(Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Envelope<'a, P> {
        request_id: &'a str,
        success: bool,
        code: &'a str,
        message: &'a str,
        http_status_code: u16,
        #[serde(flatten)]
        payload: P,
    }
    let body = Envelope {
        request_id,
        success: true,
        code: "OK",
        message: "",
        http_status_code: 200,
        payload,
    };
    json(StatusCode::OK, request_id, &body)
}

/// A JSON answer with the request id header.
pub(crate) fn json(status: StatusCode, request_id: &str, body: &impl Serialize) -> Response<Body> {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        // Our own plain structs always serialise; answer something sane rather than panic.
        Err(_) => b"{}".to_vec(),
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-acs-request-id", id);
    }
    response
}

/// An answer with no body at all (what a load balancer says on a 502).
pub(crate) fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
