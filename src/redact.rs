//! Keeps connection URLs and their passwords out of error messages.
//!
//! The redis crate does not put them in its errors today; this makes sure a future version (or
//! a server echoing input) cannot leak them into logs either. Shared by every Redis user: the
//! dial-record store, the limiter and the do-not-call list.

use std::fmt::Display;

use secrecy::{ExposeSecret, SecretString};

/// Scrubs the URL, its password and the password's decoded form from messages, then wraps
/// them in the caller's error type.
pub(crate) struct Redactor<E> {
    secrets: Vec<SecretString>,
    wrap: fn(String) -> E,
}

impl<E> Redactor<E> {
    pub(crate) fn new(url: &str, wrap: fn(String) -> E) -> Self {
        let mut secrets = vec![SecretString::from(url.to_owned())];
        if let Ok(parsed) = url::Url::parse(url)
            && let Some(password) = parsed.password()
        {
            let decoded = percent_encoding::percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned();
            secrets.push(SecretString::from(password.to_owned()));
            secrets.push(SecretString::from(decoded));
        }
        Redactor { secrets, wrap }
    }

    /// `what: err`, scrubbed, as the caller's error.
    pub(crate) fn error(&self, what: &str, err: &impl Display) -> E {
        (self.wrap)(self.scrub(format!("{what}: {err}")))
    }

    pub(crate) fn scrub(&self, mut message: String) -> String {
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            if !secret.is_empty() && message.contains(secret) {
                message = message.replace(secret, "[redacted]");
            }
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_passwords_are_scrubbed_in_both_encodings() {
        let r = Redactor::new("redis://user:p%40ss@host:6379/0", |m| m);
        let out = r.scrub("redis://user:p%40ss@host:6379/0 said p%40ss and p@ss".to_owned());
        assert!(!out.contains("p%40ss") && !out.contains("p@ss"), "{out}");
        assert!(out.contains("[redacted]"));
    }
}
