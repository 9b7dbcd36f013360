//! What the providers that fetch credentials over HTTP share (STS, the metadata service, a
//! credentials URI): the client, reading a bounded answer, and the credentials an answer
//! carries, read without ever quoting it (it holds secrets).

use std::time::Duration;

use jiff::Timestamp;
use secrecy::SecretString;
use serde::Deserialize;

use super::{Credentials, Lease};

/// Answers are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A client that gives up after `connect` to connect and `total` in all, and follows no
/// redirect (it would carry the request elsewhere).
pub(super) fn client(connect: Duration, total: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(total)
        .user_agent(concat!("dialex-worker/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("could not build the HTTP client: {e}"))
}

/// The answer's body, cut off as an error past [`MAX_ANSWER_BYTES`].
pub(super) async fn body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the answer was cut off: {}", e.without_url()))?
    {
        if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err("the answer is oversized".to_owned());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `body` as `T`; where it went wrong, by position only.
pub(super) fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|error| {
        format!(
            "not the expected JSON ({:?} error at line {}, column {})",
            error.classify(),
            error.line(),
            error.column()
        )
    })
}

/// Temporary credentials as STS, the metadata service and a credentials URI all give them
/// (`Code` only from the latter two).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Temporary {
    code: Option<String>,
    access_key_id: String,
    access_key_secret: SecretString,
    security_token: SecretString,
    /// `2021-10-20T04:27:09Z`.
    expiration: String,
}

impl Temporary {
    /// The credentials of an answer that must say `"Code": "Success"` (the metadata service,
    /// a credentials URI), and their expiry.
    pub(super) fn into_lease_if_success(self) -> Result<Lease, String> {
        match self.code.as_deref() {
            Some("Success") => self.into_lease(),
            Some(code) => Err(format!("the answer's Code is {code}")),
            None => Err("the answer has no Code".to_owned()),
        }
    }

    /// The credentials and their expiry.
    pub(super) fn into_lease(self) -> Result<Lease, String> {
        let expires_at: Timestamp = self
            .expiration
            .parse()
            .map_err(|e| format!("unreadable Expiration: {e}"))?;
        Ok(Lease {
            credentials: Credentials {
                access_key_id: self.access_key_id,
                access_key_secret: self.access_key_secret,
                security_token: Some(self.security_token),
            },
            expires_at: Some(expires_at),
            recheck_after: None,
        })
    }
}
