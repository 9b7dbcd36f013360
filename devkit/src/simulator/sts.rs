//! STS (API 2015-04-01), as far as the worker's credential providers use it, served under
//! `/sts/`: `AssumeRoleWithOIDC` (unsigned: the OIDC token is the proof) and `AssumeRole`
//! (signed with a permanent AccessKey); and an ECS instance's metadata service for its RAM
//! role, under `/latest/`. Each issues a temporary AccessKey with its security token, which
//! the gateway then accepts for `DialEx` until it expires, and no longer.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::{Response, StatusCode};
use jiff::Timestamp;
use serde::Serialize;

use super::answer::{self, ApiError, Body};
use super::keys::Keys;
use super::params::Params;

/// The API version STS speaks.
const VERSION: &str = "2015-04-01";

/// The one RAM role STS lets callers assume, and how.
#[derive(Debug, Clone)]
pub struct StsConfig {
    /// The role's ARN; any other is `EntityNotExist.Role`.
    pub role_arn: String,
    /// The OIDC provider trusted to vouch for `AssumeRoleWithOIDC` callers.
    pub oidc_provider_arn: String,
    /// How long issued credentials live (at most what the caller asks for).
    pub lifetime: Duration,
}

impl Default for StsConfig {
    fn default() -> Self {
        StsConfig {
            role_arn: "acs:ram::1234567890123456:role/dialex-worker".to_owned(),
            oidc_provider_arn: "acs:ram::1234567890123456:oidc-provider/ack-rrsa-sim".to_owned(),
            lifetime: Duration::from_secs(3600),
        }
    }
}

/// One set of temporary credentials STS issued.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    /// `AssumeRoleWithOIDC`, `AssumeRole`, `ecs-metadata` (the instance's RAM role) or
    /// `credentials-uri`.
    pub action: &'static str,
    pub access_key_id: String,
    /// The secret and the token: what must never show in the worker's logs.
    pub access_key_secret: String,
    pub security_token: String,
    /// The OIDC token it was issued for (`AssumeRoleWithOIDC`).
    pub oidc_token: Option<String>,
    pub expires_at: Timestamp,
}

pub(crate) struct Sts {
    keys: Arc<Keys>,
    config: Mutex<StsConfig>,
    /// The OIDC tokens `AssumeRoleWithOIDC` accepts (the platform rotates them; an old one
    /// stays valid a while after the next is mounted).
    oidc_tokens: Mutex<Vec<String>>,
    issued: Mutex<Vec<Issued>>,
    /// Session tokens the metadata service handed out.
    metadata_tokens: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sts {
    pub(crate) fn new(config: StsConfig, keys: Arc<Keys>) -> Sts {
        Sts {
            keys,
            config: Mutex::new(config),
            oidc_tokens: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            metadata_tokens: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn accept_oidc_token(&self, token: &str) {
        lock(&self.oidc_tokens).push(token.to_owned());
    }

    pub(crate) fn set_lifetime(&self, lifetime: Duration) {
        lock(&self.config).lifetime = lifetime;
    }

    pub(crate) fn issued(&self) -> Vec<Issued> {
        lock(&self.issued).clone()
    }

    /// Answers one STS request.
    pub(crate) fn handle(&self, method: &str, params: &Params) -> Response<Body> {
        let request_id = answer::new_request_id();
        match self.assume(method, params) {
            Ok(body) => answer::json(StatusCode::OK, &request_id, &body.with_id(&request_id)),
            Err(error) => error.into_response(&request_id),
        }
    }

    fn assume(&self, method: &str, params: &Params) -> Result<Answer, ApiError> {
        let required = |name: &str| {
            params
                .non_empty(name)
                .ok_or_else(|| ApiError::missing(name))
        };
        let action = required("Action")?;
        if required("Version")? != VERSION {
            return Err(ApiError::invalid("Version"));
        }
        let config = lock(&self.config).clone();
        let (action, oidc_token) = match action {
            "AssumeRoleWithOIDC" => {
                let token = required("OIDCToken")?;
                if required("OIDCProviderArn")? != config.oidc_provider_arn {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "EntityNotExist.OIDCProvider",
                        "The specified OIDC provider does not exist.",
                    ));
                }
                if !lock(&self.oidc_tokens)
                    .iter()
                    .any(|accepted| accepted == token)
                {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "AuthenticationFail.OIDCToken.Invalid",
                        "The OIDC token is invalid or has expired.",
                    ));
                }
                ("AssumeRoleWithOIDC", Some(token.to_owned()))
            }
            "AssumeRole" => {
                self.keys.authenticate(method, params)?;
                ("AssumeRole", None)
            }
            _ => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "InvalidAction.NotFound",
                    "Specified api is not found, please check your url and method.",
                ));
            }
        };
        if required("RoleArn")? != config.role_arn {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "EntityNotExist.Role",
                "The specified Role not exists.",
            ));
        }
        let asked = match params.non_empty("DurationSeconds") {
            None => Duration::from_secs(3600),
            Some(text) => match text.parse::<u64>() {
                Ok(secs) if (900..=43_200).contains(&secs) => Duration::from_secs(secs),
                _ => return Err(ApiError::invalid("DurationSeconds")),
            },
        };
        let credentials = self.issue(action, oidc_token, asked.min(config.lifetime));
        let session = params.non_empty("RoleSessionName").unwrap_or("session");
        Ok(Answer {
            request_id: String::new(),
            assumed_role_user: AssumedRoleUser {
                assumed_role_id: format!("300000000000000000:{session}"),
                arn: format!(
                    "{}/{session}",
                    config.role_arn.replace(":role/", ":assumed-role/")
                ),
            },
            credentials,
        })
    }

    /// A temporary key living `lifetime`, which the gateway accepts from now on.
    fn issue(
        &self,
        action: &'static str,
        oidc_token: Option<String>,
        lifetime: Duration,
    ) -> IssuedCredentials {
        let now = Instant::now();
        let access_key_id = format!("STS.{}", uuid::Uuid::new_v4().simple());
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let token = format!("CAIS{}", uuid::Uuid::new_v4().simple());
        self.keys
            .add_temporary(&access_key_id, &secret, &token, now + lifetime);
        // Announced to the second, rounded down: never later than the key really expires.
        let expires_at = Timestamp::now() + lifetime;
        lock(&self.issued).push(Issued {
            action,
            access_key_id: access_key_id.clone(),
            access_key_secret: secret.clone(),
            security_token: token.clone(),
            oidc_token,
            expires_at,
        });
        IssuedCredentials {
            access_key_id,
            access_key_secret: secret,
            security_token: token,
            expiration: expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }
    }

    /// A credentials URI's answer: fresh temporary credentials, as a local credentials
    /// service serves them.
    pub(crate) fn served(&self) -> Response<Body> {
        let lifetime = lock(&self.config).lifetime;
        let issued = self.issue("credentials-uri", None, lifetime);
        let body = serde_json::json!({
            "Code": "Success",
            "AccessKeyId": issued.access_key_id,
            "AccessKeySecret": issued.access_key_secret,
            "SecurityToken": issued.security_token,
            "Expiration": issued.expiration,
        });
        answer::json(StatusCode::OK, &answer::new_request_id(), &body)
    }

    /// The instance metadata service's answer for `path` (under `/latest/`), as an ECS
    /// instance with the RAM role of [`StsConfig::role_arn`] attached gives it.
    /// `PUT api/token` hands out a session token; the RAM paths then require it
    /// (`X-aliyun-ecs-metadata-token`), as an instance that allows only the hardened mode.
    pub(crate) fn metadata(&self, method: &str, path: &str, token: Option<&str>) -> Response<Body> {
        let text = |status: StatusCode, body: String| {
            let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
            *response.status_mut() = status;
            response
        };
        if method == "PUT" && path == "api/token" {
            let session = uuid::Uuid::new_v4().simple().to_string();
            lock(&self.metadata_tokens).push(session.clone());
            return text(StatusCode::OK, session);
        }
        if !token.is_some_and(|token| lock(&self.metadata_tokens).iter().any(|t| t == token)) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized".to_owned());
        }
        let config = lock(&self.config).clone();
        let role = config
            .role_arn
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        match path.strip_prefix("meta-data/ram/security-credentials/") {
            Some("") => text(StatusCode::OK, role),
            Some(asked) if asked == role => {
                let issued = self.issue("ecs-metadata", None, config.lifetime);
                let body = serde_json::json!({
                    "AccessKeyId": issued.access_key_id,
                    "AccessKeySecret": issued.access_key_secret,
                    "SecurityToken": issued.security_token,
                    "Expiration": issued.expiration,
                    "LastUpdated": Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "Code": "Success",
                });
                text(StatusCode::OK, body.to_string())
            }
            _ => text(StatusCode::NOT_FOUND, "Not Found".to_owned()),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    request_id: String,
    assumed_role_user: AssumedRoleUser,
    credentials: IssuedCredentials,
}

impl Answer {
    fn with_id(mut self, request_id: &str) -> Answer {
        request_id.clone_into(&mut self.request_id);
        self
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AssumedRoleUser {
    assumed_role_id: String,
    arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct IssuedCredentials {
    access_key_id: String,
    access_key_secret: String,
    security_token: String,
    expiration: String,
}
