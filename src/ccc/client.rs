//! The real `DialEx` client: one signed HTTPS attempt per call; and the read-only call-record
//! queries, signed the same way.
//!
//! Requests go out the way Alibaba's current SDK sends them: `POST /` with the common
//! parameters (and the signature) in the query string and the business parameters in an
//! `application/x-www-form-urlencoded` body; the signature covers both. Each attempt gets a
//! fresh `SignatureNonce` and `Timestamp`, so the gateway never mistakes a deliberate retry
//! for a replay.

use std::fmt::Write as _;

use secrecy::ExposeSecret;

use super::records::{CallEnding, RecordPage, RecordQuery, parse_ending, parse_page};
use super::response::{DialFailure, ErrorClass, parse_answer, query_failure};
use super::{CallRecords, CccClient, DialAccepted, DialParams};
use crate::ccc::CccSettings;
use crate::credentials::{CredentialSource, Unavailable};
use crate::signature::{push_encoded, sign};

/// The DialEx API version this client speaks.
pub const API_VERSION: &str = "2017-07-05";

/// Bodies larger than this are not read: the gateway's answers are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// `DialEx` over HTTPS (or plain HTTP to the loopback simulator). Cheap to clone: the HTTP
/// client and the credentials are shared.
#[derive(Clone)]
pub struct HttpCccClient {
    http: reqwest::Client,
    /// The endpoint origin followed by `/?`, ready for the query.
    base: String,
    region_id: String,
    credentials: CredentialSource,
}

#[derive(Debug, thiserror::Error)]
#[error("could not build the HTTP client: {0}")]
pub struct ClientBuildError(#[from] reqwest::Error);

impl HttpCccClient {
    /// A client signing with what `credentials` holds at each attempt (fixed credentials
    /// convert into a source of their own).
    pub fn new(
        settings: &CccSettings,
        credentials: impl Into<CredentialSource>,
    ) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout())
            .timeout(settings.request_timeout())
            .pool_idle_timeout(std::time::Duration::from_secs(50))
            .user_agent(concat!("dialex-worker/", env!("CARGO_PKG_VERSION")))
            // A redirect would re-send the form body (the callee with it) wherever it points,
            // perhaps over plain HTTP: the gateway never redirects, so none is followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(HttpCccClient {
            http,
            base: format!("{}/?", settings.endpoint.trim_end_matches('/')),
            region_id: settings.region_id.clone(),
            credentials: credentials.into(),
        })
    }

    /// Signs one `DialEx` attempt: returns the full URL (common parameters and signature) and
    /// the form body (business parameters).
    fn signed_request(&self, params: &DialParams<'_>) -> Result<(String, String), Unavailable> {
        let mut business: Vec<(&str, &str)> = vec![
            ("AnswerMode", params.answer_mode),
            ("Callee", params.callee),
            ("Caller", params.caller),
            ("InstanceId", params.instance_id),
            ("RoutPoint", params.rout_point),
        ];
        if let Some(provider) = params.provider {
            business.push(("Provider", provider));
        }
        self.signed("DialEx", &business)
    }

    /// Signs an `action` request with these business parameters and the credentials of the
    /// moment; fails only when they expired and could not be refreshed.
    fn signed(
        &self,
        action: &str,
        business: &[(&str, &str)],
    ) -> Result<(String, String), Unavailable> {
        let credentials = self.credentials.current()?;
        let nonce = uuid::Uuid::new_v4().to_string();
        let timestamp = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let token = credentials
            .security_token
            .as_ref()
            .map(|t| t.expose_secret());

        let mut common: Vec<(&str, &str)> = vec![
            ("AccessKeyId", &credentials.access_key_id),
            ("Action", action),
            ("Format", "JSON"),
            ("RegionId", &self.region_id),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", &nonce),
            ("SignatureVersion", "1.0"),
            ("Timestamp", &timestamp),
            ("Version", API_VERSION),
        ];
        if let Some(token) = token {
            common.push(("SecurityToken", token));
        }
        let all: Vec<(&str, &str)> = common.iter().chain(business.iter()).copied().collect();
        let signature = sign("POST", &all, credentials.access_key_secret.expose_secret());

        let mut url = String::with_capacity(self.base.len() + 512);
        url.push_str(&self.base);
        append_pairs(&mut url, &common);
        url.push_str("&Signature=");
        push_encoded(&mut url, &signature);
        let mut body = String::with_capacity(256);
        append_pairs(&mut body, business);
        Ok((url, body))
    }
}

fn append_pairs(out: &mut String, pairs: &[(&str, &str)]) {
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        let _ = write!(out, "{key}=");
        push_encoded(out, value);
    }
}

/// A signed `DialEx` request: the URL with the signed query, and the form body; or why it
/// could not be signed, which sending it answers without sending anything.
pub struct SignedRequest(Result<(String, String), DialFailure>);

/// No credentials to sign with: the worker itself cannot call CCC, so it pauses (systemic)
/// until a refresh succeeds.
fn no_credentials(unavailable: Unavailable) -> DialFailure {
    DialFailure::Transport {
        class: ErrorClass::Systemic,
        code: "credentials_unavailable",
        detail: unavailable.to_string(),
    }
}

impl HttpCccClient {
    async fn post(&self, signed: &SignedRequest) -> Result<DialAccepted, DialFailure> {
        let (url, body) = signed.0.as_ref().map_err(Clone::clone)?;
        let (status, bytes) = self.exchange(url, body).await?;
        parse_answer(status, &bytes)
    }

    /// Sends one signed request and reads the answer's status and body (at most
    /// [`MAX_ANSWER_BYTES`]).
    async fn exchange(&self, url: &str, body: &str) -> Result<(u16, Vec<u8>), DialFailure> {
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body.to_owned())
            .send()
            .await
            .map_err(transport_failure)?;
        let status = response.status().as_u16();
        let oversized = || DialFailure::Transport {
            class: ErrorClass::Ambiguous,
            code: "oversized_answer",
            detail: format!("HTTP {status} with an oversized body"),
        };
        if response
            .content_length()
            .is_some_and(|len| len > MAX_ANSWER_BYTES as u64)
        {
            return Err(oversized());
        }
        // Read chunk by chunk: a chunked answer announces no length, and is cut off at the
        // same limit rather than read whole.
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(oversized());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok((status, bytes))
    }

    /// Sends a read-only `action` and returns the success body for the caller to read.
    async fn query(&self, action: &str, business: &[(&str, &str)]) -> Result<Vec<u8>, DialFailure> {
        let (url, body) = self.signed(action, business).map_err(no_credentials)?;
        let (status, bytes) = self.exchange(&url, &body).await?;
        match query_failure(status, &bytes) {
            Some(failure) => Err(failure),
            None => Ok(bytes),
        }
    }
}

impl CallRecords for HttpCccClient {
    async fn list_call_records(&self, query: &RecordQuery<'_>) -> Result<RecordPage, DialFailure> {
        let page = query.page.to_string();
        let page_size = query.page_size.to_string();
        let start = query.start.as_millisecond().to_string();
        let stop = query.stop.as_millisecond().to_string();
        let body = self
            .query(
                "ListCallDetailRecords",
                &[
                    ("InstanceId", query.instance_id),
                    ("PageNumber", &page),
                    ("PageSize", &page_size),
                    ("PhoneNumber", query.phone_number.as_str()),
                    ("StartTime", &start),
                    ("StopTime", &stop),
                ],
            )
            .await?;
        parse_page(&body)
    }

    async fn call_ending(
        &self,
        instance_id: &str,
        contact_id: &str,
    ) -> Result<CallEnding, DialFailure> {
        let body = self
            .query(
                "ListCallEventDetailByContactId",
                &[("ContactId", contact_id), ("InstanceId", instance_id)],
            )
            .await?;
        parse_ending(&body)
    }
}

impl CccClient for HttpCccClient {
    type Signed = SignedRequest;

    fn sign(&self, params: &DialParams<'_>) -> SignedRequest {
        SignedRequest(self.signed_request(params).map_err(no_credentials))
    }

    async fn send(&self, signed: &SignedRequest) -> Result<DialAccepted, DialFailure> {
        self.post(signed).await
    }

    async fn probe(&self) -> Result<(), DialFailure> {
        // No Callee: the gateway checks credentials, signature and timestamp first, then
        // refuses the missing parameter. Nobody can be rung by this request.
        let signed = self.signed(
            "DialEx",
            &[
                ("AnswerMode", "0"),
                ("Caller", "0"),
                ("InstanceId", "dialex-worker-probe"),
                ("RoutPoint", "probe"),
            ],
        );
        match self
            .post(&SignedRequest(signed.map_err(no_credentials)))
            .await
        {
            Err(failure)
                if matches!(failure.class(), ErrorClass::Systemic)
                    || matches!(failure, DialFailure::Transport { .. })
                    || (failure.class() == ErrorClass::Retryable && !failure.is_throttling()) =>
            {
                Err(failure)
            }
            _ => Ok(()),
        }
    }
}

/// Maps a transport error to its class. A failure to connect proves nothing was sent; anything
/// after that (timeout, reset, a truncated answer) may follow an executed call.
fn transport_failure(error: reqwest::Error) -> DialFailure {
    let (class, code) = if error.is_connect() {
        (ErrorClass::Retryable, "connect")
    } else if error.is_timeout() {
        (ErrorClass::Ambiguous, "timeout")
    } else if error.is_builder() {
        (ErrorClass::Permanent, "request_build")
    } else {
        (ErrorClass::Ambiguous, "connection_lost")
    };
    // reqwest's message names the URL, which carries the signed query: keep only the kind.
    let detail = error.without_url().to_string();
    DialFailure::Transport {
        class,
        code,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::credentials::Credentials;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A one-connection HTTP server on loopback that reads a request and answers `answer`;
    /// returns its address and whether anyone connected.
    async fn answering(answer: Vec<u8>) -> (std::net::SocketAddr, tokio::task::JoinHandle<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(async move {
            let accepted =
                tokio::time::timeout(std::time::Duration::from_secs(2), listener.accept()).await;
            let Ok(Ok((mut socket, _))) = accepted else {
                return false;
            };
            let mut request = vec![0u8; 16 * 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket.write_all(&answer).await;
            let _ = socket.shutdown().await;
            true
        });
        (addr, served)
    }

    fn client_for(addr: std::net::SocketAddr) -> HttpCccClient {
        let mut settings = Settings::load_from(None, Vec::new()).unwrap();
        settings.ccc.endpoint = format!("http://{addr}");
        HttpCccClient::new(&settings.ccc, Credentials::new("test-id", "test-secret")).unwrap()
    }

    #[tokio::test]
    async fn a_redirect_is_never_followed_and_pauses_the_worker() {
        // Where the redirect points: it must never see the form body.
        let (elsewhere, reached) =
            answering(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
        let redirect = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{elsewhere}/\r\ncontent-length: 0\r\n\r\n"
        );
        let (gateway, _) = answering(redirect.into_bytes()).await;
        let client = client_for(gateway);
        let failure = client.send(&client.sign(&PARAMS)).await.unwrap_err();
        assert_eq!(failure.code(), "http_redirect");
        assert_eq!(failure.class(), ErrorClass::Systemic);
        assert!(!reached.await.unwrap(), "the redirect was followed");
    }

    #[tokio::test]
    async fn a_chunked_answer_is_cut_off_at_the_limit() {
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..8 {
            answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            answer.extend_from_slice(&chunk);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let (gateway, _) = answering(answer).await;
        let client = client_for(gateway);
        let failure = client.send(&client.sign(&PARAMS)).await.unwrap_err();
        assert_eq!(failure.code(), "oversized_answer");
    }

    fn client(token: Option<&str>) -> HttpCccClient {
        let settings = Settings::load_from(None, Vec::new()).unwrap();
        let mut credentials = Credentials::new("test-id", "test-secret");
        credentials.security_token = token.map(|t| secrecy::SecretString::from(t.to_owned()));
        HttpCccClient::new(&settings.ccc, credentials).unwrap()
    }

    const PARAMS: DialParams<'static> = DialParams {
        instance_id: "d278629c-c687-4aa3-b044-4fe9b012e7ef",
        caller: "02285196281",
        callee: "15732036617",
        answer_mode: "1",
        rout_point: "ram1@Domain",
        provider: None,
    };

    fn query_pairs(url: &str) -> Vec<(String, String)> {
        let query = url.split_once('?').unwrap().1;
        form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect()
    }

    #[test]
    fn common_parameters_go_in_the_query_and_business_ones_in_the_body() {
        let (url, body) = client(None).signed_request(&PARAMS).unwrap();
        assert!(url.starts_with("https://ccc.cn-shanghai.aliyuncs.com/?"));
        let query = query_pairs(&url);
        let keys: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            "AccessKeyId",
            "Action",
            "Format",
            "RegionId",
            "SignatureMethod",
            "SignatureNonce",
            "SignatureVersion",
            "Timestamp",
            "Version",
            "Signature",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(!keys.contains(&"SecurityToken"));
        assert!(!keys.contains(&"Callee"));
        assert_eq!(
            body,
            "AnswerMode=1&Callee=15732036617&Caller=02285196281&InstanceId=d278629c-c687-4aa3-b044-4fe9b012e7ef&RoutPoint=ram1%40Domain"
        );
    }

    #[test]
    fn the_signature_covers_query_and_body_together() {
        let (url, body) = client(Some("sts-token")).signed_request(&PARAMS).unwrap();
        let mut pairs = query_pairs(&url);
        pairs.extend(form_urlencoded::parse(body.as_bytes()).into_owned());
        let signature = pairs
            .iter()
            .position(|(k, _)| k == "Signature")
            .map(|i| pairs.remove(i).1)
            .unwrap();
        assert!(
            pairs
                .iter()
                .any(|(k, v)| k == "SecurityToken" && v == "sts-token")
        );
        let borrowed: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(sign("POST", &borrowed, "test-secret"), signature);
    }

    #[test]
    fn every_attempt_has_a_fresh_nonce() {
        let c = client(None);
        let nonce = |url: &str| {
            query_pairs(url)
                .into_iter()
                .find(|(k, _)| k == "SignatureNonce")
                .unwrap()
                .1
        };
        let a = nonce(&c.signed_request(&PARAMS).unwrap().0);
        let b = nonce(&c.signed_request(&PARAMS).unwrap().0);
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
    }

    #[test]
    fn the_timestamp_is_utc_to_the_second() {
        let (url, _) = client(None).signed_request(&PARAMS).unwrap();
        let ts = query_pairs(&url)
            .into_iter()
            .find(|(k, _)| k == "Timestamp")
            .unwrap()
            .1;
        assert_eq!(ts.len(), 20, "{ts}");
        assert!(ts.ends_with('Z'));
        let parsed: jiff::Timestamp = ts.parse().unwrap();
        let skew = jiff::Timestamp::now().duration_since(parsed);
        assert!(skew.as_secs().abs() < 5);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let c = client(Some("sts-token"));
        let shown = format!("{:?}", c.credentials.current().unwrap());
        assert!(!shown.contains("test-secret") && !shown.contains("sts-token"));
    }
}
