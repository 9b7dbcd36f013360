//! Credentials served over HTTP by a sidecar or a local agent (`ALIBABA_CLOUD_CREDENTIALS_URI`):
//! `GET` answers `{"Code":"Success","AccessKeyId",…,"SecurityToken","Expiration"}`.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use super::{Credentials, CredentialsError, Fetching, Lease, Provider};

pub(super) const CREDENTIALS_URI: &str = "ALIBABA_CLOUD_CREDENTIALS_URI";

/// Answers are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The credentials at a URI.
pub struct CredentialsUri {
    http: reqwest::Client,
    uri: String,
}

impl CredentialsUri {
    /// From `ALIBABA_CLOUD_CREDENTIALS_URI`; `None` when it is not set.
    pub(super) fn from_env(
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<CredentialsUri>, CredentialsError> {
        let Some(uri) = env(CREDENTIALS_URI) else {
            return Ok(None);
        };
        let fail = |reason: String| CredentialsError::Fetch {
            provider: "credentials URI",
            reason,
        };
        url::Url::parse(&uri).map_err(|e| fail(format!("{CREDENTIALS_URI} is not a URL: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| fail(format!("could not build the HTTP client: {e}")))?;
        Ok(Some(CredentialsUri { http, uri }))
    }

    async fn get(&self) -> Result<Lease, CredentialsError> {
        let fail = |reason: String| CredentialsError::Fetch {
            provider: "credentials URI",
            reason: format!("{reason}; check what {CREDENTIALS_URI} points at"),
        };
        let mut response = self
            .http
            .get(&self.uri)
            .send()
            .await
            .map_err(|e| fail(format!("no answer: {}", e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("it answered HTTP {}", status.as_u16())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fail(format!("the answer was cut off: {}", e.without_url())))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(fail("the answer is oversized".to_owned()));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: Served = serde_json::from_slice(&body).map_err(|e| {
            fail(format!(
                "unreadable credentials: {}",
                super::sts::json_error(&e)
            ))
        })?;
        if answer.code != "Success" {
            return Err(fail(format!("it answered Code {}", answer.code)));
        }
        let expires_at = answer
            .expiration
            .parse()
            .map_err(|e| fail(format!("unreadable Expiration: {e}")))?;
        Ok(Lease {
            credentials: Credentials {
                access_key_id: answer.access_key_id,
                access_key_secret: answer.access_key_secret,
                security_token: Some(answer.security_token),
            },
            expires_at: Some(expires_at),
            recheck_after: None,
        })
    }
}

impl Provider for CredentialsUri {
    fn name(&self) -> &'static str {
        "credentials URI"
    }

    fn fetch(&self) -> Fetching<'_> {
        Box::pin(self.get())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Served {
    code: String,
    access_key_id: String,
    access_key_secret: SecretString,
    security_token: SecretString,
    expiration: String,
}
