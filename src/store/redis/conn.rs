//! What every Redis user here shares (the dial-record store, the limiter, the do-not-call
//! list): finding the primary (at `store.url`, or wherever the sentinels say it is now),
//! opening a connection to it the same careful way, and keeping the URL and the passwords out
//! of error messages.
//!
//! The redis crate does not put secrets in its errors today; the [`Redactor`] makes sure a
//! future version (or a server echoing input) cannot leak them into logs either.

use std::fmt::{self, Display};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo as _, Script, TlsCertificates,
};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{StoreSettings, host_port};

/// How often a primary found through the sentinels is checked (`ROLE`, on the connection in
/// use), and the sentinels asked again when it does not answer as master.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Where the primary is: `url`, or the server the sentinels name for `sentinel_service`
/// (then `url` gives only the user, password and database).
#[derive(Clone)]
pub struct RedisAddress {
    pub url: SecretString,
    /// With `rediss://`: the CA file (`store.tls_ca_file`); empty for the system's roots.
    pub tls_ca_file: PathBuf,
    /// `host:port` of each sentinel; empty: `url` names the primary.
    pub sentinels: Vec<String>,
    pub sentinel_service: String,
    pub sentinel_password: SecretString,
}

impl RedisAddress {
    /// `store.url`, `store.tls_ca_file` and `store.sentinel*`.
    pub fn of_store(store: &StoreSettings) -> RedisAddress {
        RedisAddress {
            url: store.url.clone(),
            tls_ca_file: store.tls_ca_file.clone(),
            sentinels: store.sentinels.clone(),
            sentinel_service: store.sentinel_service.clone(),
            sentinel_password: store.sentinel_password.clone(),
        }
    }

    /// The server at `url`, trusting the system's CA roots.
    pub fn url(url: impl Into<String>) -> RedisAddress {
        RedisAddress {
            url: SecretString::from(url.into()),
            tls_ca_file: PathBuf::new(),
            sentinels: Vec::new(),
            sentinel_service: String::new(),
            sentinel_password: SecretString::from(String::new()),
        }
    }
}

impl fmt::Debug for RedisAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisAddress")
            .field("url", &"[redacted]")
            .field("sentinels", &self.sentinels)
            .field("sentinel_service", &self.sentinel_service)
            .finish_non_exhaustive()
    }
}

/// The connection to the primary that a Redis user sends its commands on. Cheap to clone.
///
/// With sentinels, a task checks every second that the server in use still answers `ROLE`
/// as master, and when it does not (it died, or came back demoted), asks the sentinels where
/// the primary is now and moves every later command there. The commands that failed in
/// between fail as any Redis error does: the worker pauses and resumes once
/// [`Primary::check`] passes.
#[derive(Clone)]
pub(crate) struct Primary(Arc<Shared>);

struct Shared {
    sentinels: Option<tokio::sync::Mutex<SentinelClient>>,
    current: RwLock<Current>,
    /// Loaded on every server the primary moves to, so `EVALSHA` finds them cached.
    scripts: Vec<Script>,
    timeouts: Timeouts,
    redactor: Redactor<String>,
}

struct Current {
    conn: ConnectionManager,
    /// `host:port`, to tell whether the sentinels name another server.
    at: String,
}

/// What `ROLE` says of a server.
enum Role {
    Primary,
    Replica,
}

impl Primary {
    /// Finds the primary at `address`, connects within `timeouts.connect`, loads `scripts`
    /// and runs `first` on a plain connection (see [`connect_checked`]), with the redactor for its errors. Errors go through
    /// the returned [`Redactor`] (`wrap`ped; `what` names an unusable URL).
    pub(crate) async fn connect<E, T>(
        address: &RedisAddress,
        wrap: fn(String) -> E,
        what: &str,
        timeouts: Timeouts,
        scripts: &[&Script],
        first: impl AsyncFnOnce(&mut MultiplexedConnection, &Redactor<E>) -> Result<T, E>,
    ) -> Result<(Primary, Redactor<E>, T), E> {
        let redactor = Redactor::for_address(address, wrap);
        let (client, sentinels) = if address.sentinels.is_empty() {
            (open(address, &redactor, what)?, None)
        } else {
            let mut sentinels = sentinel_client(address).map_err(|e| redactor.error(what, &e))?;
            let client = locate(&mut sentinels, timeouts)
                .await
                .map_err(|e| redactor.error("no primary from the sentinels", &e))?;
            (client, Some(tokio::sync::Mutex::new(sentinels)))
        };
        let at = client.get_connection_info().addr().to_string();
        let load_then_first = async |probe: &mut MultiplexedConnection| {
            load(probe, scripts)
                .await
                .map_err(|e| redactor.error("cannot load scripts", &e))?;
            first(probe, &redactor).await
        };
        let (conn, answer) = connect_checked(client, &redactor, timeouts, load_then_first).await?;
        let following = sentinels.is_some();
        let primary = Primary(Arc::new(Shared {
            sentinels,
            current: RwLock::new(Current { conn, at }),
            scripts: scripts.iter().map(|&script| script.clone()).collect(),
            timeouts,
            redactor: Redactor::for_address(address, |message| message),
        }));
        if following {
            primary.follow_in_background();
        }
        Ok((primary, redactor, answer))
    }

    /// The connection to send the next command on.
    pub(crate) fn get(&self) -> ConnectionManager {
        self.0
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .conn
            .clone()
    }

    /// Whether the server in use answers as the primary. With sentinels, one that does not is
    /// left for the one they name now, which must. A server that refuses `ROLE` (an ACL, a
    /// proxy) passes if it answers at all.
    pub(crate) async fn check(&self) -> Result<(), String> {
        let role = self.role().await;
        if self.0.sentinels.is_none() {
            return match role? {
                Role::Primary => Ok(()),
                Role::Replica => Err(
                    "store.url reaches a replica, which refuses writes: point it at the primary \
                     or set store.sentinels"
                        .to_owned(),
                ),
            };
        }
        if matches!(role, Ok(Role::Primary)) {
            return Ok(());
        }
        self.follow().await?;
        match self.role().await? {
            Role::Primary => Ok(()),
            Role::Replica => Err("the server the sentinels name is a replica".to_owned()),
        }
    }

    async fn role(&self) -> Result<Role, String> {
        let mut conn = self.get();
        match redis::cmd("ROLE")
            .query_async::<redis::Value>(&mut conn)
            .await
        {
            Ok(redis::Value::Array(items)) => match items.first() {
                Some(redis::Value::BulkString(role)) if role.as_slice() != b"master" => {
                    Ok(Role::Replica)
                }
                _ => Ok(Role::Primary),
            },
            Ok(_) => Ok(Role::Primary),
            // An error reply: the server answers, but will not say.
            Err(error) if error.code().is_some() => Ok(Role::Primary),
            Err(error) => Err(self.0.redactor.error("no answer from Redis", &error)),
        }
    }

    /// Asks the sentinels where the primary is; if it moved, connects there and sends every
    /// later command to it.
    async fn follow(&self) -> Result<(), String> {
        let Some(sentinels) = &self.0.sentinels else {
            return Ok(());
        };
        let shared = &self.0;
        let client = {
            let mut sentinels = sentinels.lock().await;
            locate(&mut sentinels, shared.timeouts)
                .await
                .map_err(|e| shared.redactor.error("no primary from the sentinels", &e))?
        };
        let at = client.get_connection_info().addr().to_string();
        let moved = shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .at
            != at;
        if !moved {
            return Ok(());
        }
        let scripts: Vec<&Script> = shared.scripts.iter().collect();
        let load = async |probe: &mut MultiplexedConnection| {
            load(probe, &scripts)
                .await
                .map_err(|e| shared.redactor.error("cannot load scripts", &e))
        };
        let (conn, ()) = connect_checked(client, &shared.redactor, shared.timeouts, load).await?;
        tracing::warn!(primary = %at, "the sentinels name another Redis primary; moving to it");
        *shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Current { conn, at };
        Ok(())
    }

    /// Checks every [`FOLLOW_EVERY`] until the last clone is dropped.
    fn follow_in_background(&self) {
        let shared = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FOLLOW_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if let Err(error) = Primary(shared).check().await {
                    tracing::debug!(%error, "the Redis primary is not where it was");
                }
            }
        });
    }
}

/// The sentinels of `address`, asking for the master of `sentinel_service` and handing out
/// clients that log in as `url` says.
fn sentinel_client(address: &RedisAddress) -> redis::RedisResult<SentinelClient> {
    let nodes = address.sentinels.iter().filter_map(|s| host_port(s));
    let mut builder = SentinelClientBuilder::new(
        nodes.map(|(host, port)| ConnectionAddr::Tcp(host, port)),
        &address.sentinel_service,
        SentinelServerType::Master,
    )?;
    let info = address.url.expose_secret().into_connection_info()?;
    let login = info.redis_settings();
    if let Some(user) = login.username() {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(password) = login.password() {
        builder = builder.set_client_to_redis_password(password);
    }
    builder = builder.set_client_to_redis_db(login.db());
    let password = address.sentinel_password.expose_secret();
    if !password.is_empty() {
        builder = builder.set_client_to_sentinel_password(password);
    }
    builder.build()
}

/// A client for the server the sentinels name as primary, which has said so itself (`ROLE`).
async fn locate(sentinels: &mut SentinelClient, timeouts: Timeouts) -> Result<Client, String> {
    tokio::time::timeout(timeouts.connect, sentinels.async_get_client())
        .await
        .map_err(|_| format!("no answer within {} s", timeouts.connect.as_secs()))?
        .map_err(|e| e.to_string())
}

async fn load(probe: &mut MultiplexedConnection, scripts: &[&Script]) -> redis::RedisResult<()> {
    for script in scripts {
        script.prepare_invoke().load_async(probe).await?;
    }
    Ok(())
}

/// A Redis user's time limits: to connect, and for each answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

/// The client for `address.url`. `what` names the setting in the error when the URL is
/// unusable. A `rediss://` URL connects over TLS, verifying the server against `tls_ca_file`
/// (`store.tls_ca_file`) when it is set and the system's roots when not.
fn open<E>(address: &RedisAddress, redactor: &Redactor<E>, what: &str) -> Result<Client, E> {
    let url = address.url.expose_secret();
    let ca = crate::tls::ca_pem(&address.tls_ca_file, "store.tls_ca_file")
        .map_err(|e| redactor.error(what, &e))?;
    match ca {
        None => Client::open(url),
        Some(pem) => Client::build_with_tls(
            url,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.into_bytes()),
            },
        ),
    }
    .map_err(|e| redactor.error(what, &e))
}

/// A plain connection for start-up checks: it fails at once with the real reason (refused,
/// wrong password, missing permission), where the connection manager would retry until the
/// caller's deadline and leave only "timed out".
async fn check_connection<E>(
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
async fn manager<E>(
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
async fn connect_checked<E, T>(
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

/// Scrubs the URL, its password and the password's decoded form (and any other secret added) from messages, then wraps
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

    /// For `address`: its URL, the URL's password and the sentinels' password.
    pub(crate) fn for_address(address: &RedisAddress, wrap: fn(String) -> E) -> Self {
        let mut redactor = Redactor::new(address.url.expose_secret(), wrap);
        if !address.sentinel_password.expose_secret().is_empty() {
            redactor.secrets.push(address.sentinel_password.clone());
        }
        redactor
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

    #[test]
    fn the_sentinels_password_is_scrubbed_too() {
        let mut address = RedisAddress::url("redis://:primary-pw@ignored:6379/0");
        address.sentinels = vec!["sentinel-0:26379".into()];
        address.sentinel_service = "mymaster".into();
        address.sentinel_password = SecretString::from("sentinel-pw".to_owned());
        let r = Redactor::for_address(&address, |m| m);
        let out = r.error("auth", &"sentinel-pw and primary-pw refused");
        assert_eq!(out, "auth: [redacted] and [redacted] refused");
        let printed = format!("{address:?}");
        assert!(!printed.contains("-pw"), "{printed}");
        assert!(printed.contains("sentinel-0:26379"), "{printed}");
    }
}
