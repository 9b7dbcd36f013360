//! OIDC role credentials, as ACK's RRSA provides them: the platform mounts a service-account
//! token into the pod and names the RAM role and the OIDC provider in the environment; STS
//! `AssumeRoleWithOIDC` exchanges the token (read afresh each time: the platform rotates it)
//! for temporary credentials.

use std::path::PathBuf;
use std::time::Duration;

use super::sts::{self, Sts};
use super::{CredentialsError, Fetching, Lease, Provider};

pub(super) const ROLE_ARN: &str = "ALIBABA_CLOUD_ROLE_ARN";
pub(super) const OIDC_PROVIDER_ARN: &str = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN";
pub(super) const OIDC_TOKEN_FILE: &str = "ALIBABA_CLOUD_OIDC_TOKEN_FILE";
const ROLE_SESSION_NAME: &str = "ALIBABA_CLOUD_ROLE_SESSION_NAME";

/// How long the credentials are asked for (STS's default; the shortest it grants is 900 s).
const DURATION: Duration = Duration::from_secs(3600);

/// `AssumeRoleWithOIDC` with the token in `token_file`.
pub struct Oidc {
    sts: Sts,
    role_arn: String,
    oidc_provider_arn: String,
    token_file: PathBuf,
    session_name: String,
}

impl Oidc {
    /// From the three `ALIBABA_CLOUD_*` variables RRSA injects: `None` when none is set, an
    /// error naming the missing ones when only some are.
    pub(super) fn from_env(
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Oidc>, CredentialsError> {
        let names = [ROLE_ARN, OIDC_PROVIDER_ARN, OIDC_TOKEN_FILE];
        let values = names.map(env);
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let [Some(role_arn), Some(oidc_provider_arn), Some(token_file)] = values else {
            let missing: Vec<&str> = names
                .iter()
                .zip(&values)
                .filter(|(_, value)| value.is_none())
                .map(|(name, _)| *name)
                .collect();
            return Err(CredentialsError::Fetch {
                provider: "OIDC (RRSA)",
                reason: format!(
                    "{} set, but not {}: all three are needed",
                    names
                        .iter()
                        .zip(&values)
                        .filter(|(_, value)| value.is_some())
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(" and "),
                    missing.join(" and ")
                ),
            });
        };
        Ok(Some(Oidc {
            sts: Sts::from_env(env)?,
            role_arn,
            oidc_provider_arn,
            token_file: PathBuf::from(token_file),
            session_name: env(ROLE_SESSION_NAME).unwrap_or_else(sts::session_name),
        }))
    }

    async fn assume(&self) -> Result<Lease, CredentialsError> {
        let fail = |reason: String| CredentialsError::Fetch {
            provider: self.name(),
            reason,
        };
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| {
                fail(format!(
                    "cannot read the OIDC token file {} ({OIDC_TOKEN_FILE}): {e}",
                    self.token_file.display()
                ))
            })?;
        let token = token.trim();
        let duration = DURATION.as_secs().to_string();
        let issued = self
            .sts
            .call(
                "AssumeRoleWithOIDC",
                &[
                    ("DurationSeconds", &duration),
                    ("OIDCProviderArn", &self.oidc_provider_arn),
                    ("OIDCToken", token),
                    ("RoleArn", &self.role_arn),
                    ("RoleSessionName", &self.session_name),
                ],
                None,
            )
            .await
            .map_err(|e| {
                // STS may quote what it was sent; the token is a credential.
                fail(format!(
                    "{}; check {ROLE_ARN}, {OIDC_PROVIDER_ARN} and the RAM role's trust policy",
                    e.replace(token, "***")
                ))
            })?;
        issued.into_lease().map_err(fail)
    }
}

impl Provider for Oidc {
    fn name(&self) -> &'static str {
        "OIDC (RRSA)"
    }

    fn fetch(&self) -> Fetching<'_> {
        Box::pin(self.assume())
    }
}
