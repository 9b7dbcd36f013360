//! The AccessKeys the simulated account accepts (permanent ones, and the temporary ones STS
//! issues with a security token), and how a request proves it holds one: steps 1-5 of the
//! gateway's checks, which STS's `AssumeRole` makes too.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use jiff::Timestamp;
use secrecy::ExposeSecret;

use super::SimConfig;
use super::answer::ApiError;
use super::params::Params;
use super::verify::{self, SigningKey};

/// An AccessKey the gateway accepts: permanent, or a temporary one STS issued with its
/// security token, valid until it expires.
#[derive(Clone)]
struct Key {
    signing: SigningKey,
    session: Option<(String, Instant)>,
}

/// The keys, behind a lock so tests can rotate one (and STS add temporary ones) while the
/// simulator runs.
pub(crate) struct Keys {
    keys: Mutex<HashMap<String, Key>>,
    timestamp_window: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Keys {
    pub(crate) fn new(config: &SimConfig) -> Keys {
        let keys = config
            .credentials
            .iter()
            .map(|(id, secret)| {
                let key = Key {
                    signing: verify::signing_key(secret.expose_secret()),
                    session: None,
                };
                (id.clone(), key)
            })
            .collect();
        Keys {
            keys: Mutex::new(keys),
            timestamp_window: config.timestamp_window,
        }
    }

    pub(crate) fn set_credentials(&self, access_key_id: &str, secret: &str) {
        let key = Key {
            signing: verify::signing_key(secret),
            session: None,
        };
        lock(&self.keys).insert(access_key_id.to_owned(), key);
    }

    /// Accepts a temporary key (issued by STS) with its token until `expires`.
    pub(crate) fn add_temporary(
        &self,
        access_key_id: &str,
        secret: &str,
        token: &str,
        expires: Instant,
    ) {
        let key = Key {
            signing: verify::signing_key(secret),
            session: Some((token.to_owned(), expires)),
        };
        lock(&self.keys).insert(access_key_id.to_owned(), key);
    }

    /// Steps 1-5; returns the request's nonce.
    pub(crate) fn authenticate<'p>(
        &self,
        method: &str,
        params: &'p Params,
    ) -> Result<&'p str, ApiError> {
        let required = |name: &str| {
            params
                .non_empty(name)
                .ok_or_else(|| ApiError::missing(name))
        };
        let access_key_id = required("AccessKeyId")?;
        let signature = required("Signature")?;
        let signature_method = required("SignatureMethod")?;
        let signature_version = required("SignatureVersion")?;
        let nonce = required("SignatureNonce")?;
        let timestamp = required("Timestamp")?;

        if signature_method != "HMAC-SHA1" {
            return Err(ApiError::invalid("SignatureMethod"));
        }
        if signature_version != "1.0" {
            return Err(ApiError::invalid("SignatureVersion"));
        }
        let Some(key) = lock(&self.keys).get(access_key_id).cloned() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            ));
        };
        let string_to_sign = verify::string_to_sign(method, params);
        if !verify::verify(&key.signing, &string_to_sign, signature) {
            // The real gateway includes its string to sign, and so do we: it is the fastest way
            // to see which parameter the client encoded differently.
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "SignatureDoesNotMatch",
                format!(
                    "Specified signature is not matched with our calculation. \
                     server string to sign is:{string_to_sign}"
                ),
            ));
        }
        let Some(sent_at) = verify::parse_timestamp(timestamp) else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidTimeStamp.Format",
                "Specified time stamp or date value is not well formatted.",
            ));
        };
        let skew_ms = (Timestamp::now().as_millisecond() - sent_at.as_millisecond()).unsigned_abs();
        if u128::from(skew_ms) > self.timestamp_window.as_millis() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            ));
        }
        if let Some((token, expires)) = &key.session {
            if params.non_empty("SecurityToken") != Some(token.as_str()) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidSecurityToken.MismatchWithAccessKey",
                    "Specified SecurityToken mismatch with the AccessKey.",
                ));
            }
            if Instant::now() >= *expires {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidSecurityToken.Expired",
                    "Specified SecurityToken is expired.",
                ));
            }
        }
        Ok(nonce)
    }
}
