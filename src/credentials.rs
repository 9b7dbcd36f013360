//! Alibaba Cloud credentials, from the standard environment variables, held in secret types
//! that never print.

use secrecy::SecretString;

/// Why the credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
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
