//! The shared Redis set `<prefix>:dnc` of keyed hashes, written by `dialex-worker dnc`.

use std::time::Duration;

use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

use super::{ADMIN_TIMEOUT, CONNECT_TIMEOUT, DncError, LOOKUP_TIMEOUT, RedisDnc};
use crate::gates::cooldown::NumberHasher;
use crate::phone::PhoneNumber;
use crate::store::redis::conn::{self, Redactor, Timeouts};

/// The `<prefix>:dnc` set of keyed hashes.
pub(super) struct SharedSet {
    conn: ConnectionManager,
    pub(super) key: String,
    hasher: NumberHasher,
    redactor: Redactor<DncError>,
}

impl SharedSet {
    pub(super) async fn connect(settings: &RedisDnc) -> Result<SharedSet, DncError> {
        if settings.key_prefix.is_empty() {
            return Err(DncError::Settings("the Redis key prefix must not be empty"));
        }
        let hash_key = settings.hash_key.expose_secret();
        if hash_key.is_empty() {
            // An empty key would make the hashes reversible by anyone.
            return Err(DncError::Settings("the hash key must not be empty"));
        }
        let hasher = NumberHasher::with_key(&settings.hash_key);
        let (client, redactor) = conn::open(
            &settings.url,
            &settings.tls_ca_file,
            DncError::Redis,
            "not a usable Redis URL",
        )?;
        let key = format!("{}:dnc", settings.key_prefix);

        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            response: ADMIN_TIMEOUT,
        };
        let read_size = async |probe: &mut redis::aio::MultiplexedConnection| {
            redis::cmd("SCARD")
                .arg(&key)
                .query_async::<u64>(probe)
                .await
                .map_err(|e| redactor.error("cannot read the set", &e))
        };
        let (conn, size) = conn::connect_checked(client, &redactor, timeouts, read_size).await?;
        tracing::info!(key = %key, entries = size, "shared do-not-call set connected");
        Ok(SharedSet {
            conn,
            key,
            hasher,
            redactor,
        })
    }

    /// Hex HMAC-SHA1 of the national digits: the set member for `number`.
    pub(super) fn member(&self, number: &PhoneNumber) -> String {
        self.hasher.hash(&[number.as_str()])
    }

    pub(super) async fn contains(&self, number: &PhoneNumber) -> Result<bool, DncError> {
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

    pub(super) async fn write(
        &self,
        command: &'static str,
        number: &PhoneNumber,
    ) -> Result<(), DncError> {
        let mut cmd = redis::cmd(command);
        cmd.arg(&self.key).arg(self.member(number));
        // The count of members changed (0 or 1) is not interesting: both outcomes are success.
        let _: i64 = self.run(&cmd, ADMIN_TIMEOUT, command).await?;
        Ok(())
    }

    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
        what: &str,
    ) -> Result<T, DncError> {
        let mut conn = self.conn.clone();
        // Dropping the query on timeout is safe: the multiplexed connection discards the late
        // answer instead of handing it to the next caller.
        match tokio::time::timeout(limit, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.redactor.error(what, &e)),
            Err(_) => Err(DncError::Timeout(limit)),
        }
    }
}
