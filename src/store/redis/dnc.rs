//! The shared do-not-call set `<prefix>:dnc`, written by `dialex-worker dnc` and read before
//! every dial. Its members are keyed hashes of the national number (see
//! [`crate::gates::dnc`] for why), never the numbers.

use std::fmt;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use secrecy::{ExposeSecret, SecretString};

use super::conn::{Primary, Redactor, RedisAddress, Timeouts};
use crate::config::Settings;
use crate::gates::cooldown::NumberHasher;
use crate::gates::dnc::{DncError, LOOKUP_TIMEOUT, SharedList};
use crate::phone::PhoneNumber;

/// How long [`RedisDncSet::connect`] waits for Redis, reconnection attempts included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an add or a remove may take. They serve an operator, not a waiting call, so they
/// can afford to ride out a reconnect.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the shared set lives and how its members are hashed.
pub struct RedisDnc {
    /// Where the Redis primary is (`store.url` or the sentinels).
    pub address: RedisAddress,
    /// Key prefix; the set is `<key_prefix>:dnc`.
    pub key_prefix: String,
    /// HMAC key the set's members are hashed under. Every writer and reader of the set must
    /// use the same key, or their hashes will not match.
    pub hash_key: SecretString,
}

impl RedisDnc {
    /// The set in the store's Redis (`store.url`, `store.key_prefix`), hashed under
    /// `cooldown.hash_key`: as the worker and `dialex-worker dnc` both reach it.
    pub fn from_settings(settings: &Settings) -> RedisDnc {
        RedisDnc {
            address: RedisAddress::of_store(&settings.store),
            key_prefix: settings.store.key_prefix.clone(),
            hash_key: settings.cooldown.hash_key.clone(),
        }
    }
}

impl fmt::Debug for RedisDnc {
    // By hand, to say which fields are hidden; `SecretString`'s own Debug already redacts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDnc")
            .field("address", &self.address)
            .field("key_prefix", &self.key_prefix)
            .field("hash_key", &"[redacted]")
            .finish()
    }
}

/// The `<prefix>:dnc` set of keyed hashes.
pub struct RedisDncSet {
    conn: Primary,
    key: String,
    hasher: NumberHasher,
    redactor: Redactor<DncError>,
}

impl fmt::Debug for RedisDncSet {
    // By hand: the connection's own Debug is not ours to vet for secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDncSet")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisDncSet {
    /// Connects (waiting at most 5 s) and reads the set's size, so an unreachable Redis or a
    /// refused read fails at start-up, not on the first call.
    ///
    /// # Errors
    ///
    /// [`DncError::Settings`] for an empty key prefix or hash key; [`DncError::Redis`] if
    /// Redis cannot be reached in time or refuses to read the set. No message contains the
    /// URL or its password.
    pub async fn connect(settings: &RedisDnc) -> Result<RedisDncSet, DncError> {
        if settings.key_prefix.is_empty() {
            return Err(DncError::Settings("the Redis key prefix must not be empty"));
        }
        if settings.hash_key.expose_secret().is_empty() {
            // An empty key would make the hashes reversible by anyone.
            return Err(DncError::Settings("the hash key must not be empty"));
        }
        let hasher = NumberHasher::with_key(&settings.hash_key);
        let key = format!("{}:dnc", settings.key_prefix);

        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            response: ADMIN_TIMEOUT,
        };
        let read_size = async |probe: &mut redis::aio::MultiplexedConnection,
                               redactor: &Redactor<DncError>| {
            redis::cmd("SCARD")
                .arg(&key)
                .query_async::<u64>(probe)
                .await
                .map_err(|e| redactor.error("cannot read the set", &e))
        };
        let (conn, redactor, size) = Primary::connect(
            &settings.address,
            DncError::Redis,
            "not a usable Redis URL",
            timeouts,
            &[],
            read_size,
        )
        .await?;
        tracing::info!(key = %key, entries = size, "shared do-not-call set connected");
        Ok(RedisDncSet {
            conn,
            key,
            hasher,
            redactor,
        })
    }

    /// Hex HMAC-SHA1 of the national digits: the set member for `number`.
    fn member(&self, number: &PhoneNumber) -> String {
        self.hasher.hash(&[number.as_str()])
    }

    async fn write(&self, command: &'static str, number: &PhoneNumber) -> Result<(), DncError> {
        let mut cmd = redis::cmd(command);
        cmd.arg(&self.key).arg(self.member(number));
        // The count of members changed (0 or 1) is not interesting: both outcomes are success.
        let _: i64 = self.run(&cmd, ADMIN_TIMEOUT, command).await?;
        Ok(())
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
        what: &str,
    ) -> Result<T, DncError> {
        let mut conn = self.conn.get();
        // Dropping the query on timeout is safe: the multiplexed connection discards the late
        // answer instead of handing it to the next caller.
        match tokio::time::timeout(limit, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.redactor.error(what, &e)),
            Err(_) => Err(DncError::Timeout(limit)),
        }
    }
}

impl SharedList for RedisDncSet {
    fn contains<'a>(&'a self, number: &'a PhoneNumber) -> BoxFuture<'a, Result<bool, DncError>> {
        async move {
            let mut cmd = redis::cmd("SISMEMBER");
            cmd.arg(&self.key).arg(self.member(number));
            let answer: i64 = self.run(&cmd, LOOKUP_TIMEOUT, "lookup").await?;
            match answer {
                0 => Ok(false),
                1 => Ok(true),
                _ => Err(DncError::Redis(format!(
                    "lookup: unexpected answer {answer} to SISMEMBER"
                ))),
            }
        }
        .boxed()
    }

    fn add<'a>(&'a self, number: &'a PhoneNumber) -> BoxFuture<'a, Result<(), DncError>> {
        self.write("SADD", number).boxed()
    }

    fn remove<'a>(&'a self, number: &'a PhoneNumber) -> BoxFuture<'a, Result<(), DncError>> {
        self.write("SREM", number).boxed()
    }
}
