//! Alibaba Cloud credentials: where they come from (a [`Provider`]), and the
//! [`CredentialSource`] every request is signed with, refreshed well before it expires.
//!
//! Secrets are held in types that never print.

mod source;

use std::future::Future;
use std::pin::Pin;

use secrecy::SecretString;

pub use source::{CredentialSource, Unavailable};

/// Why credentials could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialsError {
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    /// A provider could not fetch them; the message names what to check and holds no secret.
    #[error("{provider}: {reason}")]
    Fetch {
        provider: &'static str,
        reason: String,
    },
}

/// Credentials, and until when they may be used (`None`: until further notice).
#[derive(Debug, Clone)]
pub struct Lease {
    pub credentials: Credentials,
    pub expires_at: Option<jiff::Timestamp>,
}

/// What [`Provider::fetch`] returns.
pub type Fetching<'a> = Pin<Box<dyn Future<Output = Result<Lease, CredentialsError>> + Send + 'a>>;

/// One place credentials come from: the environment, STS through an OIDC token, the
/// instance's RAM role, a credentials file.
pub trait Provider: Send + Sync + 'static {
    /// How logs and `/readyz` name it.
    fn name(&self) -> &'static str;

    /// Fresh credentials. Called at start-up, then again before each lease expires.
    fn fetch(&self) -> Fetching<'_>;
}

/// Credentials that never change: the `ALIBABA_CLOUD_ACCESS_KEY_*` variables as read at
/// start-up, or a fixed pair (tests, the demo).
pub struct Fixed(pub Credentials);

impl Provider for Fixed {
    fn name(&self) -> &'static str {
        "environment"
    }

    fn fetch(&self) -> Fetching<'_> {
        let lease = Lease {
            credentials: self.0.clone(),
            expires_at: None,
        };
        Box::pin(std::future::ready(Ok(lease)))
    }
}

/// Alibaba Cloud credentials from the standard environment variables.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: SecretString,
    /// STS token, sent as `SecurityToken` when present.
    pub security_token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"[redacted]")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

impl Credentials {
    pub const ACCESS_KEY_ID: &'static str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
    pub const ACCESS_KEY_SECRET: &'static str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
    pub const SECURITY_TOKEN: &'static str = "ALIBABA_CLOUD_SECURITY_TOKEN";

    pub fn new(access_key_id: impl Into<String>, access_key_secret: impl Into<String>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            access_key_secret: SecretString::from(access_key_secret.into()),
            security_token: None,
        }
    }

    /// Reads the three standard variables; the token is optional.
    pub fn from_env() -> Result<Credentials, CredentialsError> {
        let var = Self::var;
        let access_key_id =
            var(Self::ACCESS_KEY_ID).ok_or(CredentialsError::MissingEnv(Self::ACCESS_KEY_ID))?;
        let access_key_secret = var(Self::ACCESS_KEY_SECRET)
            .ok_or(CredentialsError::MissingEnv(Self::ACCESS_KEY_SECRET))?;
        Ok(Credentials {
            access_key_id,
            access_key_secret: SecretString::from(access_key_secret),
            security_token: var(Self::SECURITY_TOKEN).map(SecretString::from),
        })
    }

    /// Which of the three variables [`Credentials::from_env`] would find, without their
    /// values: for reports.
    pub fn presence_in_env() -> [(&'static str, bool); 3] {
        [
            Self::ACCESS_KEY_ID,
            Self::ACCESS_KEY_SECRET,
            Self::SECURITY_TOKEN,
        ]
        .map(|name| (name, Self::var(name).is_some()))
    }

    /// An empty variable counts as unset.
    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let mut c = Credentials::new("id", "very-secret");
        c.security_token = Some(SecretString::from("sts-token"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("very-secret") && !shown.contains("sts-token"),
            "{shown}"
        );
        assert!(shown.contains("\"id\""), "{shown}");
    }
}
