//! Alibaba Cloud credentials: where they come from (a [`Provider`]), and the
//! [`CredentialSource`] every request is signed with, refreshed well before it expires.
//!
//! Secrets are held in types that never print.

mod ecs;
mod file;
mod http;
mod oidc;
mod source;
mod sts;
mod uri;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use secrecy::SecretString;

pub use ecs::EcsRamRole;
pub use file::CredentialsFile;
pub use oidc::Oidc;
pub use source::{CredentialSource, Unavailable};
pub use uri::CredentialsUri;

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

/// Credentials, until when they may be used (`None`: until further notice), and, for
/// credentials that do not expire but may change (a file), when to look again.
#[derive(Debug, Clone)]
pub struct Lease {
    pub credentials: Credentials,
    pub expires_at: Option<jiff::Timestamp>,
    pub recheck_after: Option<std::time::Duration>,
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
            recheck_after: None,
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

/// The first provider of the chain the environment sets up, in the official tools' order:
/// static keys (`ALIBABA_CLOUD_ACCESS_KEY_ID` and `_SECRET`, with `_SECURITY_TOKEN` for
/// STS ones), then OIDC (`ALIBABA_CLOUD_ROLE_ARN`, `_OIDC_PROVIDER_ARN`, `_OIDC_TOKEN_FILE`:
/// ACK's RRSA), then a profile of the credentials file (`ALIBABA_CLOUD_CREDENTIALS_FILE`, or
/// `~/.alibabacloud/credentials` when it exists; `ALIBABA_CLOUD_PROFILE`), then the ECS
/// instance's RAM role (`ALIBABA_CLOUD_ECS_METADATA`), then a credentials URI
/// (`ALIBABA_CLOUD_CREDENTIALS_URI`). A provider set up by halves is an error naming what is missing, never
/// passed over for the next.
pub fn from_env() -> Result<Arc<dyn Provider>, CredentialsError> {
    from_vars(&Credentials::var)
}

/// [`from_env`] with the variables looked up in `env` (an empty value counts as unset).
pub fn from_vars(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Provider>, CredentialsError> {
    let env = |name: &str| env(name).filter(|value| !value.is_empty());
    let id = env(Credentials::ACCESS_KEY_ID);
    let secret = env(Credentials::ACCESS_KEY_SECRET);
    match (id, secret) {
        (Some(access_key_id), Some(secret)) => {
            return Ok(Arc::new(Fixed(Credentials {
                access_key_id,
                access_key_secret: SecretString::from(secret),
                security_token: env(Credentials::SECURITY_TOKEN).map(SecretString::from),
            })));
        }
        (Some(_), None) => {
            return Err(CredentialsError::MissingEnv(Credentials::ACCESS_KEY_SECRET));
        }
        (None, Some(_)) => return Err(CredentialsError::MissingEnv(Credentials::ACCESS_KEY_ID)),
        (None, None) => {}
    }
    if let Some(oidc) = Oidc::from_env(&env)? {
        return Ok(Arc::new(oidc));
    }
    if let Some(file) = CredentialsFile::from_env(&env)? {
        return Ok(Arc::new(file));
    }
    if let Some(role) = EcsRamRole::from_env(&env)? {
        return Ok(Arc::new(role));
    }
    if let Some(uri) = CredentialsUri::from_env(&env)? {
        return Ok(Arc::new(uri));
    }
    Err(CredentialsError::Fetch {
        provider: "the credential chain",
        reason: format!(
            "no credentials: set {} and {} (a RAM user's AccessKey), or {}, {} and {} (RRSA on ACK), or {} (a profile of Alibaba Cloud's credentials file), or {} (the ECS instance's RAM role), or {} (a local credentials service)",
            Credentials::ACCESS_KEY_ID,
            Credentials::ACCESS_KEY_SECRET,
            oidc::ROLE_ARN,
            oidc::OIDC_PROVIDER_ARN,
            oidc::OIDC_TOKEN_FILE,
            file::CREDENTIALS_FILE,
            ecs::ECS_METADATA,
            uri::CREDENTIALS_URI
        ),
    })
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

    /// Which of the chain's variables are set, without their values: for reports.
    pub fn presence_in_env() -> [(&'static str, bool); 9] {
        [
            Self::ACCESS_KEY_ID,
            Self::ACCESS_KEY_SECRET,
            Self::SECURITY_TOKEN,
            oidc::ROLE_ARN,
            oidc::OIDC_PROVIDER_ARN,
            oidc::OIDC_TOKEN_FILE,
            file::CREDENTIALS_FILE,
            ecs::ECS_METADATA,
            uri::CREDENTIALS_URI,
        ]
        .map(|name| (name, Self::var(name).is_some()))
    }

    /// An empty variable counts as unset.
    pub(crate) fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(vars: &[(&str, &str)]) -> Result<Arc<dyn Provider>, CredentialsError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        from_vars(&|name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn the_chain_takes_static_keys_first_then_oidc() {
        let oidc = [
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"),
            (
                "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
                "acs:ram::1:oidc-provider/p",
            ),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/var/run/token"),
        ];
        let mut both = oidc.to_vec();
        both.extend([
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret"),
        ]);
        assert_eq!(chain(&both).unwrap().name(), "environment");
        assert_eq!(chain(&oidc).unwrap().name(), "OIDC (RRSA)");
    }

    #[test]
    fn a_provider_set_up_by_halves_names_what_is_missing() {
        let error = chain(&[("ALIBABA_CLOUD_ACCESS_KEY_ID", "id")])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET"), "{error}");
        let error = chain(&[
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", ""),
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("not ALIBABA_CLOUD_OIDC_PROVIDER_ARN and ALIBABA_CLOUD_OIDC_TOKEN_FILE"),
            "{error}"
        );
        let error = chain(&[]).err().unwrap().to_string();
        assert!(
            error.starts_with("the credential chain: no credentials"),
            "{error}"
        );
    }

    #[test]
    fn sts_is_reached_over_https_unless_on_loopback() {
        let oidc = [
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/r"),
            (
                "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
                "acs:ram::1:oidc-provider/p",
            ),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/var/run/token"),
        ];
        for (endpoint, fine) in [
            ("sts-vpc.cn-hangzhou.aliyuncs.com", true),
            ("http://127.0.0.1:9/sts", true),
            ("http://sts.example.com", false),
        ] {
            let mut vars = oidc.to_vec();
            vars.push(("ALIBABA_CLOUD_STS_ENDPOINT", endpoint));
            assert_eq!(chain(&vars).is_ok(), fine, "{endpoint}");
        }
    }

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
