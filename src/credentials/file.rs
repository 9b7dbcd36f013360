//! The credentials file of Alibaba Cloud's tools (`~/.alibabacloud/credentials`, INI), one
//! profile of it: an AccessKey (`type = access_key`), or a RAM role assumed with one
//! (`type = ram_role_arn`, STS `AssumeRole`). The file is read again every
//! [`RECHECK`], so a key changed on disk (a Kubernetes Secret mounted as the file) is used
//! without a restart.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::sts::{self, Sts};
use super::{Credentials, CredentialsError, Fetching, Lease, Provider};

pub(super) const CREDENTIALS_FILE: &str = "ALIBABA_CLOUD_CREDENTIALS_FILE";
const PROFILE: &str = "ALIBABA_CLOUD_PROFILE";

/// How often an AccessKey profile is read again (a mounted Secret changes within a minute
/// or so of its update).
const RECHECK: Duration = Duration::from_secs(10);
const DURATION: Duration = Duration::from_secs(3600);

/// One profile of the credentials file.
pub struct CredentialsFile {
    path: PathBuf,
    profile: String,
    sts: Sts,
}

impl CredentialsFile {
    /// `ALIBABA_CLOUD_CREDENTIALS_FILE`, or `~/.alibabacloud/credentials` when it exists;
    /// the profile `ALIBABA_CLOUD_PROFILE` names, `default` without it.
    pub(super) fn from_env(
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Option<CredentialsFile>, CredentialsError> {
        let path = match env(CREDENTIALS_FILE) {
            Some(path) => PathBuf::from(path),
            None => match env("HOME") {
                Some(home) => {
                    let path = PathBuf::from(home).join(".alibabacloud/credentials");
                    if !path.is_file() {
                        return Ok(None);
                    }
                    path
                }
                None => return Ok(None),
            },
        };
        Ok(Some(CredentialsFile {
            path,
            profile: env(PROFILE).unwrap_or_else(|| "default".to_owned()),
            sts: Sts::from_env(env)?,
        }))
    }

    async fn read(&self) -> Result<Lease, CredentialsError> {
        let fail = |reason: String| CredentialsError::Fetch {
            provider: "credentials file",
            reason: format!(
                "{} (profile {}): {reason}",
                self.path.display(),
                self.profile
            ),
        };
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|e| fail(format!("cannot read it: {e}")))?;
        // The parser's message may quote the line: only its position is kept.
        let ini = ini::Ini::load_from_str_noescape(&text)
            .map_err(|e| fail(format!("not an INI file (line {})", e.line)))?;
        let section = ini
            .section(Some(self.profile.as_str()))
            .ok_or_else(|| fail("no such profile".to_owned()))?;
        let field = |name: &str| {
            section
                .get(name)
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| fail(format!("no {name}")))
        };
        let key = Credentials {
            access_key_id: field("access_key_id")?.to_owned(),
            access_key_secret: SecretString::from(field("access_key_secret")?.to_owned()),
            security_token: None,
        };
        match field("type")? {
            "access_key" => Ok(Lease {
                credentials: key,
                expires_at: None,
                recheck_after: Some(RECHECK),
            }),
            "ram_role_arn" => {
                let session = section
                    .get("role_session_name")
                    .map(str::to_owned)
                    .unwrap_or_else(sts::session_name);
                let duration = DURATION.as_secs().to_string();
                let mut params = vec![
                    ("DurationSeconds", duration.as_str()),
                    ("RoleArn", field("role_arn")?),
                    ("RoleSessionName", session.as_str()),
                ];
                if let Some(policy) = section.get("policy") {
                    params.push(("Policy", policy));
                }
                let issued = self
                    .sts
                    .call("AssumeRole", &params, Some(&key))
                    .await
                    .map_err(|e| fail(format!("{e}; check role_arn and the AccessKey's RAM permissions (sts:AssumeRole)")))?;
                issued.into_lease().map_err(fail)
            }
            other => Err(fail(format!(
                "type {other} is not supported here (access_key, ram_role_arn)"
            ))),
        }
    }
}

impl Provider for CredentialsFile {
    fn name(&self) -> &'static str {
        "credentials file"
    }

    fn fetch(&self) -> Fetching<'_> {
        Box::pin(self.read())
    }
}
