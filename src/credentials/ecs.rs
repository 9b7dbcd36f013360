//! The RAM role attached to the ECS instance, from its metadata service: a session token
//! first (`PUT /latest/api/token`, the hardened mode), then the role's temporary credentials.

use std::time::Duration;

use super::http::{self, Temporary};
use super::{CredentialsError, Fetching, Lease, Provider};

pub(super) const ECS_METADATA: &str = "ALIBABA_CLOUD_ECS_METADATA";
/// This worker's own: where the metadata service is, for tests and proxies (the official
/// tools always use 100.100.100.200).
const ECS_METADATA_ENDPOINT: &str = "ALIBABA_CLOUD_ECS_METADATA_ENDPOINT";
const IMDSV1_DISABLED: &str = "ALIBABA_CLOUD_IMDSV1_DISABLED";

const DEFAULT_ENDPOINT: &str = "http://100.100.100.200";
/// How long a metadata session token lives, as the official tools ask.
const TOKEN_TTL_SECONDS: &str = "21600";
/// The metadata service answers on the instance's own link.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The instance's RAM role `role`.
pub struct EcsRamRole {
    http: reqwest::Client,
    base: String,
    role: String,
    /// Refuse the old mode, without a session token (`ALIBABA_CLOUD_IMDSV1_DISABLED=true`).
    token_required: bool,
}

impl EcsRamRole {
    /// From `ALIBABA_CLOUD_ECS_METADATA` (the role's name); `None` when it is not set.
    pub(super) fn from_env(
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<EcsRamRole>, CredentialsError> {
        let Some(role) = env(ECS_METADATA) else {
            return Ok(None);
        };
        let http = http::client(TIMEOUT, TIMEOUT).map_err(|reason| CredentialsError::Fetch {
            provider: "ECS RAM role",
            reason,
        })?;
        Ok(Some(EcsRamRole {
            http,
            base: env(ECS_METADATA_ENDPOINT)
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            role,
            token_required: env(IMDSV1_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }))
    }

    async fn fetch_role(&self) -> Result<Lease, CredentialsError> {
        let fail = |reason: String| CredentialsError::Fetch {
            provider: self.name(),
            reason: format!(
                "{reason}; check that the instance has the RAM role {ECS_METADATA} names attached"
            ),
        };
        let token = match self.session_token().await {
            Ok(token) => Some(token),
            Err(reason) if self.token_required => {
                return Err(fail(format!(
                    "no metadata session token ({IMDSV1_DISABLED} is set): {reason}"
                )));
            }
            Err(_) => None,
        };
        let url = format!(
            "{}/latest/meta-data/ram/security-credentials/{}",
            self.base, self.role
        );
        let mut request = self.http.get(url);
        if let Some(token) = &token {
            request = request.header("X-aliyun-ecs-metadata-token", token);
        }
        let response = request.send().await.map_err(|e| {
            fail(format!(
                "the metadata service did not answer: {}",
                e.without_url()
            ))
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!(
                "the metadata service answered HTTP {} for the role",
                status.as_u16()
            )));
        }
        let body = http::body(response).await.map_err(fail)?;
        http::json::<Temporary>(&body)
            .and_then(Temporary::into_lease_if_success)
            .map_err(|e| {
                fail(format!(
                    "unusable credentials from the metadata service: {e}"
                ))
            })
    }

    /// A metadata session token, as the hardened mode asks.
    async fn session_token(&self) -> Result<String, String> {
        let response = self
            .http
            .put(format!("{}/latest/api/token", self.base))
            .header("X-aliyun-ecs-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        response
            .text()
            .await
            .map_err(|e| e.without_url().to_string())
    }
}

impl Provider for EcsRamRole {
    fn name(&self) -> &'static str {
        "ECS RAM role"
    }

    fn fetch(&self) -> Fetching<'_> {
        Box::pin(self.fetch_role())
    }
}
