//! Credentials served over HTTP by a sidecar or a local agent (`ALIBABA_CLOUD_CREDENTIALS_URI`):
//! `GET` answers `{"Code":"Success","AccessKeyId",…,"SecurityToken","Expiration"}`.

use std::time::Duration;

use super::http::{self, Temporary};
use super::{CredentialsError, Fetching, Lease, Provider};

pub(super) const CREDENTIALS_URI: &str = "ALIBABA_CLOUD_CREDENTIALS_URI";

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
        let http = http::client(Duration::from_secs(5), Duration::from_secs(10)).map_err(fail)?;
        Ok(Some(CredentialsUri { http, uri }))
    }

    async fn get(&self) -> Result<Lease, CredentialsError> {
        let fail = |reason: String| CredentialsError::Fetch {
            provider: "credentials URI",
            reason: format!("{reason}; check what {CREDENTIALS_URI} points at"),
        };
        let response = self
            .http
            .get(&self.uri)
            .send()
            .await
            .map_err(|e| fail(format!("no answer: {}", e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("it answered HTTP {}", status.as_u16())));
        }
        let body = http::body(response).await.map_err(fail)?;
        http::json::<Temporary>(&body)
            .and_then(Temporary::into_lease_if_success)
            .map_err(|e| fail(format!("unusable credentials: {e}")))
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
