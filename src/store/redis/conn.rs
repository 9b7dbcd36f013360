//! What every Redis user here shares (the dial-record store, the limiter, the do-not-call
//! list): opening a connection the same careful way, and keeping the URL and its password out
//! of error messages.
//!
//! The redis crate does not put secrets in its errors today; the [`Redactor`] makes sure a
//! future version (or a server echoing input) cannot leak them into logs either.

use std::fmt::Display;
use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, TlsCertificates};
use secrecy::{ExposeSecret, SecretString};

/// A Redis user's time limits: to connect, and for each answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

/// The client for `url`, and the redactor for its errors. `what` names the setting in the
/// error when the URL is unusable. A `rediss://` URL connects over TLS, verifying the server
/// against `tls_ca_file` (`store.tls_ca_file`) when it is set and the system's roots when not.
pub(crate) fn open<E>(
    url: &SecretString,
    tls_ca_file: &Path,
    wrap: fn(String) -> E,
    what: &str,
) -> Result<(Client, Redactor<E>), E> {
    let url = url.expose_secret();
    let redactor = Redactor::new(url, wrap);
    let ca = crate::tls::ca_pem(tls_ca_file, "store.tls_ca_file").map_err(wrap)?;
    let client = match ca {
        None => Client::open(url),
        Some(pem) => Client::build_with_tls(
            url,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.into_bytes()),
            },
        ),
    }
    .map_err(|e| redactor.error(what, &e))?;
    Ok((client, redactor))
}

/// A plain connection for start-up checks: it fails at once with the real reason (refused,
/// wrong password, missing permission), where the connection manager would retry until the
/// caller's deadline and leave only "timed out".
pub(crate) async fn check_connection<E>(
    client: &Client,
    redactor: &Redactor<E>,
    timeouts: Timeouts,
) -> Result<MultiplexedConnection, E> {
    client
        .get_multiplexed_async_connection_with_config(
            &AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeouts.connect))
                .set_response_timeout(Some(timeouts.response)),
        )
        .await
        .map_err(|e| redactor.error("cannot connect", &e))
}

/// The reconnecting connection used once the checks have passed. It reconnects once, at
/// once, and otherwise fails fast: a command must not sit out a long reconnect schedule while
/// its request holds a claim. Waiting out an outage is the worker's job (it pauses, probes
/// and resumes).
pub(crate) async fn manager<E>(
    client: Client,
    redactor: &Redactor<E>,
    timeouts: Timeouts,
) -> Result<ConnectionManager, E> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.response))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(|e| redactor.error("cannot connect", &e))
}

/// Connects within `timeouts.connect` in all (the manager retries a refused connection with
/// backoff, which on its own could outlast it): a plain connection first, for a clear error,
/// on which `first` runs (loading scripts, reading what the caller reports at start-up); then
/// the manager.
pub(crate) async fn connect_checked<E, T>(
    client: Client,
    redactor: &Redactor<E>,
    timeouts: Timeouts,
    first: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, E>,
) -> Result<(ConnectionManager, T), E> {
    tokio::time::timeout(timeouts.connect, async {
        let mut probe = check_connection(&client, redactor, timeouts).await?;
        let answer = first(&mut probe).await?;
        drop(probe);
        Ok((manager(client, redactor, timeouts).await?, answer))
    })
    .await
    .unwrap_or_else(|_| {
        Err(redactor.error(
            "no connection",
            &format!("nothing within {} s", timeouts.connect.as_secs()),
        ))
    })
}

/// [`connect_checked`], loading `scripts` on the plain connection so that the first call of
/// each finds it cached.
pub(crate) async fn connect_with_scripts<E>(
    client: Client,
    redactor: &Redactor<E>,
    timeouts: Timeouts,
    scripts: &[&redis::Script],
) -> Result<ConnectionManager, E> {
    let load = async |probe: &mut MultiplexedConnection| {
        for script in scripts {
            script
                .prepare_invoke()
                .load_async(probe)
                .await
                .map_err(|e| redactor.error("cannot load scripts", &e))?;
        }
        Ok(())
    };
    let (manager, ()) = connect_checked(client, redactor, timeouts, load).await?;
    Ok(manager)
}

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

/// `text` as a `SCAN MATCH` pattern that matches only itself: a key prefix holding `*`, `?`,
/// `[` or a backslash must not reach other deployments' keys.
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Deletes every key under `<prefix>:`: how tests and the harness leave Redis as they found it.
pub(crate) async fn delete_prefixed<C>(conn: &mut C, prefix: &str) -> redis::RedisResult<()>
where
    C: redis::aio::ConnectionLike + Send + Sync,
{
    use redis::AsyncCommands as _;
    let pattern = format!("{}:*", glob_literal(prefix));
    let keys: Vec<String> = {
        let mut iter = conn.scan_match::<_, String>(&pattern).await?;
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key?);
        }
        keys
    };
    for chunk in keys.chunks(500) {
        let _: () = conn.del(chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_is_matched_literally() {
        assert_eq!(glob_literal("dialex"), "dialex");
        assert_eq!(glob_literal("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn urls_and_passwords_are_scrubbed_in_both_encodings() {
        let url = "redis://user:p%40ss@host:6379/0";
        let r = Redactor::new(url, |m| m);
        let out = r.scrub(format!("{url} said p%40ss and p@ss"));
        assert!(!out.contains("p%40ss") && !out.contains("p@ss"), "{out}");
        assert!(out.contains("[redacted]"));
        // The same through `error`, for a Redis error whose detail quotes them.
        let err =
            redis::RedisError::from((redis::ErrorKind::Io, "boom", format!("{url} p@ss p%40ss")));
        let out = r.error("x", &err);
        assert!(!out.contains("p%40ss") && !out.contains("p@ss"), "{out}");
        assert!(
            out.starts_with("x: ") && out.contains("[redacted]"),
            "{out}"
        );
    }
}
