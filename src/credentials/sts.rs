//! Calling STS (API 2015-04-01): where it is, how a call goes out, and what it answers.

use std::time::Duration;

use jiff::Timestamp;
use secrecy::ExposeSecret as _;
use serde::Deserialize;

use super::http::{self, Temporary};
use super::{Credentials, CredentialsError};

const STS_ENDPOINT: &str = "ALIBABA_CLOUD_STS_ENDPOINT";
const STS_REGION: &str = "ALIBABA_CLOUD_STS_REGION";
const VPC_ENDPOINT_ENABLED: &str = "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED";

/// The STS endpoint and an HTTP client for it.
pub(super) struct Sts {
    http: reqwest::Client,
    /// The endpoint origin (and path) followed by `/?`, ready for the query.
    base: String,
}

impl Sts {
    /// `ALIBABA_CLOUD_STS_ENDPOINT` (a host, or a URL; ACK's RRSA webhook sets it), else the
    /// endpoint the official tools derive from `ALIBABA_CLOUD_STS_REGION` and
    /// `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED`: `sts[-vpc].<region>.aliyuncs.com`, or
    /// `sts.aliyuncs.com` without a region. HTTPS, except to a loopback address.
    pub(super) fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Sts, CredentialsError> {
        let fail = |reason: String| CredentialsError::Fetch {
            provider: "STS",
            reason,
        };
        let endpoint = match env(STS_ENDPOINT) {
            Some(endpoint) if endpoint.contains("://") => endpoint,
            Some(host) => format!("https://{host}"),
            None => {
                let vpc = env(VPC_ENDPOINT_ENABLED).is_some_and(|v| v.eq_ignore_ascii_case("true"));
                match env(STS_REGION) {
                    Some(region) if vpc => format!("https://sts-vpc.{region}.aliyuncs.com"),
                    Some(region) => format!("https://sts.{region}.aliyuncs.com"),
                    None => "https://sts.aliyuncs.com".to_owned(),
                }
            }
        };
        let url = url::Url::parse(&endpoint)
            .map_err(|e| fail(format!("{STS_ENDPOINT} is not a usable URL: {e}")))?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name == "localhost",
            None => false,
        };
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(fail(format!(
                "{STS_ENDPOINT} must be https:// (plain http only to a loopback address)"
            )));
        }
        Ok(Sts {
            http: http::client(Duration::from_secs(5), Duration::from_secs(10)).map_err(fail)?,
            base: format!("{}/?", endpoint.trim_end_matches('/')),
        })
    }

    /// `POST`s `action` with `params` in the form body: unsigned (`signer` `None`: the
    /// caller's proof is in the parameters, as `AssumeRoleWithOIDC`'s token), or signed with
    /// `signer`'s AccessKey (`AssumeRole`); the answer's temporary credentials, or what STS
    /// said instead.
    pub(super) async fn call(
        &self,
        action: &str,
        params: &[(&str, &str)],
        signer: Option<&Credentials>,
    ) -> Result<Temporary, String> {
        let timestamp = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let nonce = uuid::Uuid::new_v4().to_string();
        let mut common: Vec<(&str, &str)> = vec![
            ("Action", action),
            ("Format", "JSON"),
            ("Timestamp", &timestamp),
            ("Version", "2015-04-01"),
        ];
        let mut signature = None;
        if let Some(signer) = signer {
            common.extend([
                ("AccessKeyId", signer.access_key_id.as_str()),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureNonce", nonce.as_str()),
                ("SignatureVersion", "1.0"),
            ]);
            if let Some(token) = &signer.security_token {
                common.push(("SecurityToken", token.expose_secret()));
            }
            let all: Vec<(&str, &str)> = common.iter().chain(params).copied().collect();
            signature = Some(crate::signature::sign(
                "POST",
                &all,
                signer.access_key_secret.expose_secret(),
            ));
        }
        let mut url = self.base.clone();
        let signed = signature
            .as_deref()
            .map(|signature| ("Signature", signature));
        for (i, (key, value)) in common.iter().copied().chain(signed).enumerate() {
            if i > 0 {
                url.push('&');
            }
            url.push_str(key);
            url.push('=');
            crate::signature::push_encoded(&mut url, value);
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| format!("STS did not answer: {}", e.without_url()))?;
        let status = response.status();
        let bytes = http::body(response)
            .await
            .map_err(|e| format!("STS answered HTTP {status}, but {e}"))?;
        if status.is_success() {
            let answer: Assumed = http::json(&bytes)
                .map_err(|e| format!("STS answered HTTP {status} without credentials: {e}"))?;
            return Ok(answer.credentials);
        }
        let refusal: Refusal = http::json(&bytes).unwrap_or_default();
        Err(format!(
            "STS answered HTTP {} {}: {}",
            status.as_u16(),
            refusal.code.as_deref().unwrap_or("(no code)"),
            refusal.message.as_deref().unwrap_or("(no message)")
        ))
    }
}

/// What STS answers to `AssumeRole*`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Assumed {
    credentials: Temporary,
}

/// An error answer.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Refusal {
    code: Option<String>,
    message: Option<String>,
}

/// The session name when `ALIBABA_CLOUD_ROLE_SESSION_NAME` gives none.
pub(super) fn session_name() -> String {
    format!("dialex-worker-{}", Timestamp::now().as_second())
}
