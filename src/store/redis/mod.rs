//! The Redis backend: everything the worker shares between replicas, in one Redis.
//!
//! - [`RedisStore`] (this module, `records`, `callee` and `results`): dial records, callee
//!   cooldowns, daily counters, and contacts and call results.
//! - [`limits`]: the shared limiter's slots.
//! - [`dnc`]: the shared do-not-call set.
//! - `conn`: how every one of them reaches Redis (TLS, timeouts, a checked first connection,
//!   error messages without the URL).
//!
//! # Why Lua scripts
//!
//! Every operation is "read the key, decide, maybe write". Done as separate commands, two
//! replicas could both read "absent" and both claim the same request, and a customer would be
//! rung twice. A script runs atomically on the Redis server (nothing else runs between its
//! commands), so each method here is one script: one round trip, no `WATCH`/`MULTI` retry
//! loops, and no window between the read and the write. The scripts are built once per store
//! (their SHA1 computed once) and loaded into Redis at [`RedisStore::connect`]; `EVALSHA` falls
//! back to loading them again if Redis forgot them (a restart or `SCRIPT FLUSH`).
//!
//! # Why server time
//!
//! A lease says "this claim is live until T". Replicas' clocks drift apart, and a replica whose
//! clock runs fast would think another's live lease had run out, declare the request abandoned
//! and race its holder. So lease ends are written and compared on one clock only: Redis's own,
//! read with `TIME` inside the claim script. Record and cooldown lifetimes are relative
//! (`PX`), so they too run on the server's clock. The client's clock is never consulted.
//!
//! Calling `TIME` before a write is allowed because Redis 7 replicates a script's *effects*
//! (the resulting `SET`), not the script, so replicas and the AOF never re-run it at a
//! different time.
//!
//! # Replicas
//!
//! Redis replicates asynchronously. With `store.min_replicas_acked` above 0, each claim and
//! each result is followed by `WAIT` in the same pipeline, on the same connection, so the
//! count covers that very write: a claim the replicas do not confirm in time is given back
//! undialed, a result is written again until they do. A failover to a replica then cannot
//! lose either. Contacts and call results are waited for the same way; one the replicas do not
//! confirm is an error, and asking again finds the same value and waits once more.
//!
//! # Keys
//!
//! - `<prefix>:req:<request_id>`: a string holding the shared [`Record`](super::Record) encoding
//!   (`C#fingerprint|worker|lease_until_ms`, `R#fingerprint|event`; `C|…`, `R|…` and `P|event`,
//!   left by earlier versions, read as the same states without a fingerprint), expiring
//!   `record_ttl` after the claim.
//! - `<prefix>:cd:<key>`: a hash with field `r` (the holding `request_id`) and, once dialed,
//!   `t` (the CCC task id), expiring `window` after it was taken or dialed. The key is already a
//!   keyed hash of instance and callee: no phone number is ever stored.
//! - `<prefix>:day:<day>:<key>`: an integer, the calls counted for that callee (the same keyed
//!   hash) on that day label, expiring [`DAILY_COUNTER_TTL`](super::DAILY_COUNTER_TTL) after its first reservation.
//! - `<prefix>:contact:<instance length>:<instance_id>:<contact_id>`: a string, the
//!   `request_id` holding that CCC call record (contact), expiring `record_ttl` after it was
//!   first claimed. The instance id's length keeps ids holding `:` from colliding.
//! - `<prefix>:result:<request_id>`: a string, the call-result event recorded for the request,
//!   expiring `record_ttl` after it was first recorded.
//! - `<prefix>:lim:{<instance_id>}:…`: the limiter's state (see [`limits`]).
//! - `<prefix>:dnc`: the shared do-not-call set (see [`dnc`]).
//!
//! # Errors mean "unknown"
//!
//! A [`StoreError::Backend`] (a dropped connection, a response timeout) does not say whether
//! the script ran. Every method but `claim` is safe to call again: a repeated `record` with the
//! same token answers [`Recorded::Earlier`](super::Recorded::Earlier) with the event it stored the first time. A `claim`
//! whose answer was lost may have left a claim in Redis; the caller must not dial on an error,
//! and the request will later be seen as held, then abandoned (never dialed twice).

mod callee;
pub(crate) mod conn;
pub mod dnc;
pub mod limits;
mod records;
mod results;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use redis::Script;

use super::StoreError;
use crate::config::StoreSettings;
use conn::{Primary, Redactor, Timeouts};

pub use conn::RedisAddress;

pub use limits::RedisLimiter;

/// How long [`RedisStore::connect`] waits for Redis, all reconnection attempts included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one script may take to answer. Generous, because a timed-out `record` leaves its
/// effect unknown; short enough that a stalled Redis fails the request instead of hanging it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The dial store on Redis, for many replicas. Cheap to clone: a multiplexed connection that
/// reconnects by itself (and follows the primary through failovers), and shared configuration.
#[derive(Clone)]
pub struct RedisStore {
    conn: Primary,
    inner: Arc<Inner>,
}

struct Inner {
    key_prefix: String,
    worker_id: String,
    lease_ms: u64,
    record_ttl_ms: u64,
    replication: Replication,
    scripts: Scripts,
    redactor: Redactor<StoreError>,
}

/// `store.min_replicas_acked` and `store.replica_ack_timeout_ms`: how many replicas must
/// confirm a claim or a result before the worker acts on it, and how long to wait for them;
/// and how many confirmed the last write.
#[derive(Debug)]
struct Replication {
    min_acked: u32,
    timeout_ms: u64,
    /// `WAIT` blocks the connection every request shares: while the replicas are known to
    /// lag, new claims fail at once instead of queueing behind one wait after another. Set
    /// by every `WAIT`'s answer, the store check's included.
    last_acked: AtomicU32,
}

struct Scripts {
    claim: Script,
    record: Script,
    release: Script,
    cooldown_acquire: Script,
    cooldown_dialed: Script,
    cooldown_release: Script,
    daily_reserve: Script,
    daily_release: Script,
    first_wins: Script,
    read_confirmed: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            claim: Script::new(records::CLAIM_LUA),
            record: Script::new(records::RECORD_LUA),
            release: Script::new(records::RELEASE_LUA),
            cooldown_acquire: Script::new(callee::COOLDOWN_ACQUIRE_LUA),
            cooldown_dialed: Script::new(callee::COOLDOWN_DIALED_LUA),
            cooldown_release: Script::new(callee::COOLDOWN_RELEASE_LUA),
            daily_reserve: Script::new(callee::DAILY_RESERVE_LUA),
            daily_release: Script::new(callee::DAILY_RELEASE_LUA),
            first_wins: Script::new(results::FIRST_WINS_LUA),
            read_confirmed: Script::new(results::READ_CONFIRMED_LUA),
        }
    }

    fn all(&self) -> [&Script; 10] {
        [
            &self.claim,
            &self.record,
            &self.release,
            &self.cooldown_acquire,
            &self.cooldown_dialed,
            &self.cooldown_release,
            &self.daily_reserve,
            &self.daily_release,
            &self.first_wins,
            &self.read_confirmed,
        ]
    }
}

impl fmt::Debug for RedisStore {
    // By hand: the connection's own Debug is not ours to vet for secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.inner.key_prefix)
            .field("worker_id", &self.inner.worker_id)
            .field("lease_ms", &self.inner.lease_ms)
            .field("record_ttl_ms", &self.inner.record_ttl_ms)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `settings.url` (waiting at most 5 s) and loads the scripts. Claims made
    /// through this store name `worker_id` as their holder.
    ///
    /// Fails if Redis cannot be reached, refuses the credentials, or refuses `SCRIPT LOAD`
    /// (an ACL without scripting): better at start-up than on the first request. Error
    /// messages never contain the URL or its password.
    pub async fn connect(
        settings: &StoreSettings,
        worker_id: String,
    ) -> Result<RedisStore, StoreError> {
        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            response: RESPONSE_TIMEOUT,
        };
        let scripts = Scripts::new();
        let (conn, redactor, ()) = Primary::connect(
            &RedisAddress::of_store(settings),
            backend,
            "store.url is not a usable Redis URL",
            timeouts,
            &scripts.all(),
            async |_, _| Ok(()),
        )
        .await?;
        Ok(RedisStore {
            conn,
            inner: Arc::new(Inner {
                key_prefix: settings.key_prefix.clone(),
                worker_id,
                lease_ms: millis(settings.lease()),
                record_ttl_ms: millis(settings.record_ttl()),
                replication: Replication {
                    min_acked: settings.min_replicas_acked,
                    timeout_ms: millis(settings.replica_ack_timeout()),
                    last_acked: AtomicU32::new(settings.min_replicas_acked),
                },
                scripts,
                redactor,
            }),
        })
    }

    /// Deletes every key under `store.key_prefix`: dial records, cooldowns and counters, the
    /// limiter's state and the shared do-not-call set. Everything the deployment remembers is
    /// gone: for tearing down a test deployment, never a live one.
    pub async fn delete_everything(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.get();
        conn::delete_prefixed(&mut conn, &self.inner.key_prefix)
            .await
            .map_err(|e| self.inner.redactor.error("cannot delete keys", &e))
    }

    /// The worker id this store's claims carry.
    pub fn worker_id(&self) -> &str {
        &self.inner.worker_id
    }

    fn record_key(&self, request_id: &str) -> String {
        format!("{}:req:{request_id}", self.inner.key_prefix)
    }

    fn cooldown_key(&self, key: &str) -> String {
        format!("{}:cd:{key}", self.inner.key_prefix)
    }

    fn daily_key(&self, key: &str, day: &str) -> String {
        format!("{}:day:{day}:{key}", self.inner.key_prefix)
    }

    fn error(&self, what: &str, err: &impl fmt::Display) -> StoreError {
        self.inner.redactor.error(what, err)
    }
}

/// Whole milliseconds for Redis, rounding a non-zero sub-millisecond duration up to 1 (an
/// expiry of 0 would be rejected, or delete the key).
fn millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !d.is_zero() { 1 } else { ms }
}

fn backend(message: String) -> StoreError {
    StoreError::Backend {
        backend: "redis",
        message,
    }
}
