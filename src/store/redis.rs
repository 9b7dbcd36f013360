//! Redis backend: dial records and cooldowns shared by many replicas.
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
//! # Keys
//!
//! - `<prefix>:req:<request_id>`: a string holding the shared [`Record`] encoding
//!   (`C#fingerprint|worker|lease_until_ms`, `R#fingerprint|event`; `C|…`, `R|…` and `P|event`,
//!   left by earlier versions, read as the same states without a fingerprint), expiring
//!   `record_ttl` after the claim.
//! - `<prefix>:cd:<key>`: a hash with field `r` (the holding `request_id`) and, once dialed,
//!   `t` (the CCC task id), expiring `window` after it was taken or dialed. The key is already a
//!   keyed hash of instance and callee: no phone number is ever stored.
//! - `<prefix>:day:<day>:<key>`: an integer, the calls counted for that callee (the same keyed
//!   hash) on that day label, expiring [`DAILY_COUNTER_TTL`] after its first reservation.
//!
//! # Errors mean "unknown"
//!
//! A [`StoreError::Backend`] (a dropped connection, a response timeout) does not say whether
//! the script ran. Every method but `claim` is safe to call again: a repeated `record` with the
//! same token answers [`Recorded::Earlier`] with the event it stored the first time. A `claim`
//! whose answer was lost may have left a claim in Redis; the caller must not dial on an error,
//! and the request will later be seen as held, then abandoned (never dialed twice).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisError, Script};

use super::{
    Claim, ClaimToken, Cooldown, DAILY_COUNTER_TTL, DialStore, Record, Recorded, StoreError,
    check_fingerprint,
};
use crate::config::StoreSettings;
use crate::redis_conn::{self, Redactor, Timeouts};

/// How long [`RedisStore::connect`] waits for Redis, all reconnection attempts included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one script may take to answer. Generous, because a timed-out `record` leaves its
/// effect unknown; short enough that a stalled Redis fails the request instead of hanging it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims the request if nothing is there; otherwise returns what is there, unchanged, with
/// the server's time so the caller can tell a live lease from a dead one on the server's clock
/// (and a different request's fingerprint from its own).
///
/// KEYS[1] record key; ARGV[1] worker id, ARGV[2] lease ms, ARGV[3] record TTL ms,
/// ARGV[4] fingerprint. Returns `{1, claim, now_ms}` (acquired) or `{0, stored value, now_ms}`.
const CLAIM_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('GET', KEYS[1])
if current then
  return {0, current, now}
end
-- %.0f, not tostring: tostring switches to exponent notation for large numbers.
local claim = 'C#' .. ARGV[4] .. '|' .. ARGV[1] .. '|' .. string.format('%.0f', now + tonumber(ARGV[2]))
redis.call('SET', KEYS[1], claim, 'PX', ARGV[3])
return {1, claim, now}
";

/// Writes the result if the stored value is exactly our claim (or nothing is stored any
/// more); otherwise returns the stored value for the caller to classify. Comparing the whole
/// claim value, lease end included, means a claim taken over by anyone (even the same worker
/// id, later) is never overwritten with a stale result.
///
/// KEYS[1] record key; ARGV[1] token, ARGV[2] the encoded result (it carries the token's
/// fingerprint), ARGV[3] record TTL ms. Returns `{1, ''}` (stored) or `{0, stored value}`.
const RECORD_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  -- Keep the claim's expiry: the record lives record_ttl from the claim, not longer.
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return {1, ''}
end
if not current then
  -- The claim is gone (expired or swept) but this result is still the only one: keep it.
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return {1, ''}
end
return {0, current}
";

/// Deletes the key only if it still holds exactly this value (claim token).
///
/// KEYS[1] record key; ARGV[1] token. Returns 1 if deleted, else 0.
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Takes the cooldown slot if it is free; a request that already holds it keeps it (without
/// restarting the window).
///
/// KEYS[1] cooldown key; ARGV[1] request id, ARGV[2] window ms.
/// Returns `{1, '', ''}` (free) or `{0, holder, task id or ''}`.
const COOLDOWN_ACQUIRE_LUA: &str = r"
local holder = redis.call('HGET', KEYS[1], 'r')
if not holder then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'r', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, '', ''}
end
if holder == ARGV[1] then
  return {1, '', ''}
end
return {0, holder, redis.call('HGET', KEYS[1], 't') or ''}
";

/// Records the holder's task id and restarts the window from now, if this request holds the
/// slot or nobody does (the window ran out while the call was being placed: the dial still
/// happened, so the callee is protected from now on).
///
/// KEYS[1] cooldown key; ARGV[1] request id, ARGV[2] task id, ARGV[3] window ms.
/// Returns 1 if written, 0 if another request holds the slot.
const COOLDOWN_DIALED_LUA: &str = r"
local holder = redis.call('HGET', KEYS[1], 'r')
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'r', ARGV[1], 't', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Frees the slot only if this request holds it.
///
/// KEYS[1] cooldown key; ARGV[1] request id. Returns 1 if deleted, else 0.
const COOLDOWN_RELEASE_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'r') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Counts one call if fewer than the cap are counted. Read, compare and increment are one
/// script, so concurrent reservations from any number of replicas never exceed the cap (the
/// `INCR`-then-check-then-`DECR` alternative would briefly overshoot and refuse calls that
/// fit). The expiry is set when the counter has none (it was just created, or lost it somehow),
/// so a counter never outlives [`DAILY_COUNTER_TTL`] from its first call and is never kept
/// alive forever by later ones.
///
/// KEYS[1] counter key; ARGV[1] cap (>= 1), ARGV[2] TTL ms.
/// Returns 1 (counted), 0 (cap reached) or -1 (the key holds something that is not a count).
const DAILY_RESERVE_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
local count = 0
if current then
  count = tonumber(current)
  if not count then
    return -1
  end
end
if count >= tonumber(ARGV[1]) then
  return 0
end
redis.call('INCR', KEYS[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
";

/// Takes back one reservation: `DECR` only while the counter exists and is above zero, so a
/// repeated or late release never drives it negative (which would grant an extra call) and
/// never creates a key without an expiry. `DECR` keeps the key's TTL.
///
/// KEYS[1] counter key. Returns 1 if decremented, else 0.
const DAILY_RELEASE_LUA: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]))
if count and count > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
";

/// The dial store on Redis, for many replicas. Cheap to clone: a multiplexed connection that
/// reconnects by itself, and shared configuration.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    inner: Arc<Inner>,
}

struct Inner {
    key_prefix: String,
    worker_id: String,
    lease_ms: u64,
    record_ttl_ms: u64,
    scripts: Scripts,
    redactor: Redactor<StoreError>,
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
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            claim: Script::new(CLAIM_LUA),
            record: Script::new(RECORD_LUA),
            release: Script::new(RELEASE_LUA),
            cooldown_acquire: Script::new(COOLDOWN_ACQUIRE_LUA),
            cooldown_dialed: Script::new(COOLDOWN_DIALED_LUA),
            cooldown_release: Script::new(COOLDOWN_RELEASE_LUA),
            daily_reserve: Script::new(DAILY_RESERVE_LUA),
            daily_release: Script::new(DAILY_RELEASE_LUA),
        }
    }

    fn all(&self) -> [&Script; 8] {
        [
            &self.claim,
            &self.record,
            &self.release,
            &self.cooldown_acquire,
            &self.cooldown_dialed,
            &self.cooldown_release,
            &self.daily_reserve,
            &self.daily_release,
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
        let (client, redactor) = redis_conn::open(
            &settings.url,
            &settings.tls_ca_file,
            backend,
            "store.url is not a usable Redis URL",
        )?;
        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            response: RESPONSE_TIMEOUT,
        };
        let scripts = Scripts::new();
        let conn =
            redis_conn::connect_with_scripts(client, &redactor, timeouts, &scripts.all()).await?;
        Ok(RedisStore {
            conn,
            inner: Arc::new(Inner {
                key_prefix: settings.key_prefix.clone(),
                worker_id,
                lease_ms: millis(settings.lease()),
                record_ttl_ms: millis(settings.record_ttl()),
                scripts,
                redactor,
            }),
        })
    }

    /// Deletes every key under `store.key_prefix`: dial records, cooldowns and counters, the
    /// limiter's state and the shared do-not-call set. Everything the deployment remembers is
    /// gone: for tearing down a test deployment, never a live one.
    pub async fn delete_everything(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis_conn::delete_prefixed(&mut conn, &self.inner.key_prefix)
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

    fn error(&self, what: &str, err: &RedisError) -> StoreError {
        self.inner.redactor.error(what, err)
    }
}

impl DialStore for RedisStore {
    async fn claim(&self, request_id: &str, fingerprint: &str) -> Result<Claim, StoreError> {
        check_fingerprint(fingerprint)?;
        let mut conn = self.conn.clone();
        let (acquired, value, now_ms): (i64, Vec<u8>, u64) = self
            .inner
            .scripts
            .claim
            .key(self.record_key(request_id))
            .arg(&self.inner.worker_id)
            .arg(self.inner.lease_ms)
            .arg(self.inner.record_ttl_ms)
            .arg(fingerprint)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("claim", &e))?;
        if acquired == 1 {
            return Ok(Claim::Acquired(ClaimToken(value)));
        }
        // The script changed nothing: whatever is there is only classified, here.
        Claim::found(value, now_ms, fingerprint)
    }

    async fn record(
        &self,
        request_id: &str,
        token: &ClaimToken,
        event: &[u8],
    ) -> Result<Recorded, StoreError> {
        let result = token.result(event)?;
        let mut conn = self.conn.clone();
        let (stored, current): (i64, Vec<u8>) = self
            .inner
            .scripts
            .record
            .key(self.record_key(request_id))
            .arg(token.0.as_slice())
            .arg(result)
            .arg(self.inner.record_ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("record", &e))?;
        if stored == 1 {
            return Ok(Recorded::Stored);
        }
        match Record::decode(&current)? {
            Record::Recorded { event, .. } => Ok(Recorded::Earlier(event)),
            // A different claim: our lease ran out and someone else holds the request now.
            Record::Claimed { .. } => Err(StoreError::Conflict),
        }
    }

    async fn release(&self, request_id: &str, token: &ClaimToken) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _deleted: i64 = self
            .inner
            .scripts
            .release
            .key(self.record_key(request_id))
            .arg(token.0.as_slice())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("release", &e))?;
        Ok(())
    }

    async fn cooldown_acquire(
        &self,
        key: &str,
        request_id: &str,
        window: Duration,
    ) -> Result<Cooldown, StoreError> {
        // A zero window is "cooldown off"; Redis would also reject an expiry of 0 ms.
        if window.is_zero() {
            return Ok(Cooldown::Free);
        }
        let mut conn = self.conn.clone();
        let (free, holder, task_id): (i64, String, String) = self
            .inner
            .scripts
            .cooldown_acquire
            .key(self.cooldown_key(key))
            .arg(request_id)
            .arg(millis(window))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("cooldown acquire", &e))?;
        if free == 1 {
            return Ok(Cooldown::Free);
        }
        Ok(Cooldown::Taken {
            request_id: holder,
            task_id: (!task_id.is_empty()).then_some(task_id),
        })
    }

    async fn cooldown_dialed(
        &self,
        key: &str,
        request_id: &str,
        task_id: &str,
        window: Duration,
    ) -> Result<(), StoreError> {
        if window.is_zero() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _written: i64 = self
            .inner
            .scripts
            .cooldown_dialed
            .key(self.cooldown_key(key))
            .arg(request_id)
            .arg(task_id)
            .arg(millis(window))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("cooldown dialed", &e))?;
        Ok(())
    }

    async fn cooldown_release(&self, key: &str, request_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _deleted: i64 = self
            .inner
            .scripts
            .cooldown_release
            .key(self.cooldown_key(key))
            .arg(request_id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("cooldown release", &e))?;
        Ok(())
    }

    async fn daily_reserve(&self, key: &str, day: &str, max: u32) -> Result<bool, StoreError> {
        // A cap of 0 allows nothing; no need to ask Redis (callers pass max >= 1 anyway).
        if max == 0 {
            return Ok(false);
        }
        let mut conn = self.conn.clone();
        let counted: i64 = self
            .inner
            .scripts
            .daily_reserve
            .key(self.daily_key(key, day))
            .arg(max)
            .arg(millis(DAILY_COUNTER_TTL))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("daily reserve", &e))?;
        match counted {
            1 => Ok(true),
            0 => Ok(false),
            // The key names a hash and a date label, never a phone number: safe to report.
            _ => Err(StoreError::Corrupt(format!(
                "daily counter {day}:{key} is not a number"
            ))),
        }
    }

    async fn daily_release(&self, key: &str, day: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _decremented: i64 = self
            .inner
            .scripts
            .daily_release
            .key(self.daily_key(key, day))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.error("daily release", &e))?;
        Ok(())
    }

    async fn check(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.error("ping", &e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Settings, StoreBackend};
    use redis::AsyncCommands;

    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    /// Settings for a private corner of the local Redis: a fresh key prefix per test.
    fn settings(lease_ms: u64) -> StoreSettings {
        let mut store = Settings::load_from(None, Vec::new())
            .expect("default settings load")
            .store;
        // Mutating fields skips validation; these values are chosen to be sane anyway.
        store.backend = StoreBackend::Redis;
        store.url = secrecy::SecretString::from(REDIS_URL.to_owned());
        store.key_prefix = format!("dialex-test-{}", uuid::Uuid::new_v4());
        store.lease_ms = lease_ms;
        // Short, so keys a failed test leaves behind disappear on their own.
        store.record_ttl_ms = 120_000;
        store
    }

    async fn connect(settings: &StoreSettings, worker: &str) -> RedisStore {
        match RedisStore::connect(settings, worker.to_owned()).await {
            Ok(store) => store,
            Err(e) => panic!(
                "these tests need a real Redis 7 at {REDIS_URL}; start one \
                 (e.g. `redis-server --daemonize yes` or \
                 `docker run -d -p 6379:6379 redis:7`): {e}"
            ),
        }
    }

    /// Deletes every key under the store's prefix.
    async fn cleanup(store: &RedisStore) {
        store.delete_everything().await.expect("delete test keys");
    }

    async fn pttl(store: &RedisStore, key: &str) -> i64 {
        let mut conn = store.conn.clone();
        conn.pttl(key).await.expect("PTTL")
    }

    async fn get(store: &RedisStore, key: &str) -> Option<Vec<u8>> {
        let mut conn = store.conn.clone();
        conn.get(key).await.expect("GET")
    }

    fn id() -> String {
        uuid::Uuid::new_v4().to_string()
    }

    /// The fingerprint of the request every test claims for, and of a different request.
    const FP: &str = "f1f1f1";
    const OTHER_FP: &str = "0b0b0b";

    #[tokio::test]
    async fn claim_record_lifecycle() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let b = connect(&settings, "worker-b").await;
        let request = id();

        let Claim::Acquired(token) = a.claim(&request, FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        // The token is exactly what is stored, and names us with a lease on Redis's clock.
        let key = a.record_key(&request);
        assert_eq!(get(&a, &key).await.as_deref(), Some(token.0.as_slice()));
        let Record::Claimed {
            worker,
            lease_until_ms,
            fingerprint,
        } = Record::decode(&token.0).unwrap()
        else {
            panic!("token must be a claim");
        };
        assert_eq!(worker, "worker-a");
        assert_eq!(fingerprint.as_deref(), Some(FP));
        let mut conn = a.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        let server_now = secs * 1000 + micros / 1000;
        assert!(
            lease_until_ms > server_now && lease_until_ms <= server_now + 60_000,
            "lease end {lease_until_ms} must be within the lease of server time {server_now}"
        );
        let ttl = pttl(&a, &key).await;
        assert!(ttl > 60_000 && ttl <= 120_000, "claim PTTL {ttl}");

        // Another worker, and a second delivery in the same worker, both see a live claim.
        for store in [&b, &a] {
            match store.claim(&request, FP).await.unwrap() {
                Claim::Held { worker, remaining } => {
                    assert_eq!(worker, "worker-a");
                    assert!(remaining > Duration::ZERO && remaining <= Duration::from_secs(60));
                }
                other => panic!("expected Held, got {other:?}"),
            }
        }

        let event = br#"{"status":"dialed","event_id":"e1"}"#;
        assert_eq!(
            a.record(&request, &token, event).await.unwrap(),
            Recorded::Stored
        );
        let ttl_after = pttl(&a, &key).await;
        assert!(
            ttl_after > 0 && ttl_after <= ttl,
            "record keeps the claim's TTL: {ttl_after} vs {ttl}"
        );
        assert_eq!(
            b.claim(&request, FP).await.unwrap(),
            Claim::Recorded {
                event: event.to_vec()
            }
        );
        // Recording again with the same token (a retry after a lost answer) is harmless.
        assert_eq!(
            a.record(&request, &token, b"{}").await.unwrap(),
            Recorded::Earlier(event.to_vec())
        );

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn a_record_marked_published_by_an_earlier_version_is_still_a_result() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let request = id();
        let key = a.record_key(&request);
        let event = br#"{"status":"dialed","event_id":"e0"}"#;
        let mut stored = b"P|".to_vec();
        stored.extend_from_slice(event);
        let mut conn = a.conn.clone();
        let _: () = conn
            .pset_ex(&key, stored.as_slice(), 60_000)
            .await
            .expect("PSETEX");

        assert_eq!(
            a.claim(&request, FP).await.unwrap(),
            Claim::Recorded {
                event: event.to_vec()
            }
        );
        let token = ClaimToken(b"C|worker-a|1".to_vec());
        assert_eq!(
            a.record(&request, &token, b"{}").await.unwrap(),
            Recorded::Earlier(event.to_vec())
        );
        a.release(&request, &token).await.unwrap();
        assert_eq!(get(&a, &key).await, Some(stored));

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn a_claim_and_its_result_carry_the_requests_fingerprint() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let request = id();
        let key = a.record_key(&request);
        let Claim::Acquired(token) = a.claim(&request, FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        assert!(token.0.starts_with(b"C#f1f1f1|worker-a|"));
        a.record(&request, &token, b"{}").await.unwrap();
        assert_eq!(get(&a, &key).await.as_deref(), Some(&b"R#f1f1f1|{}"[..]));
        cleanup(&a).await;
    }

    #[tokio::test]
    async fn a_reused_request_id_is_reported_and_changes_nothing() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let b = connect(&settings, "worker-b").await;
        let request = id();
        let key = a.record_key(&request);

        // On a live claim: the claim and its lease stay, its holder goes on.
        let Claim::Acquired(token) = a.claim(&request, FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        let ttl = pttl(&a, &key).await;
        assert_eq!(b.claim(&request, OTHER_FP).await.unwrap(), Claim::Reused);
        assert_eq!(get(&a, &key).await.as_deref(), Some(token.0.as_slice()));
        let ttl_after = pttl(&a, &key).await;
        assert!(
            ttl_after > 0 && ttl_after <= ttl,
            "TTL {ttl_after} vs {ttl}"
        );
        assert!(matches!(
            b.claim(&request, FP).await.unwrap(),
            Claim::Held { worker, .. } if worker == "worker-a"
        ));

        // On a result: the result stays, and is still the first request's answer.
        let event = br#"{"status":"dialed","task_id":"t-1"}"#;
        assert_eq!(
            a.record(&request, &token, event).await.unwrap(),
            Recorded::Stored
        );
        let stored = get(&a, &key).await;
        for _ in 0..2 {
            assert_eq!(b.claim(&request, OTHER_FP).await.unwrap(), Claim::Reused);
        }
        assert_eq!(get(&a, &key).await, stored);
        assert_eq!(
            b.claim(&request, FP).await.unwrap(),
            Claim::Recorded {
                event: event.to_vec()
            }
        );

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn a_reused_request_id_on_an_abandoned_claim_leaves_it_to_be_resolved() {
        let settings = settings(50);
        let dead = connect(&settings, "worker-dead").await;
        let other = connect(&settings, "worker-other").await;
        let request = id();
        let key = other.record_key(&request);

        let Claim::Acquired(original) = dead.claim(&request, FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            other.claim(&request, OTHER_FP).await.unwrap(),
            Claim::Reused
        );
        assert_eq!(
            get(&other, &key).await.as_deref(),
            Some(original.0.as_slice())
        );
        // The first request's redelivery still finds it abandoned, with the same token.
        assert_eq!(
            other.claim(&request, FP).await.unwrap(),
            Claim::Abandoned(original.clone())
        );
        let unknown = br#"{"status":"unknown","code":"interrupted"}"#;
        assert_eq!(
            other.record(&request, &original, unknown).await.unwrap(),
            Recorded::Stored
        );
        assert_eq!(
            other.claim(&request, OTHER_FP).await.unwrap(),
            Claim::Reused
        );

        cleanup(&other).await;
    }

    #[tokio::test]
    async fn records_written_before_fingerprints_match_any_request() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let mut conn = a.conn.clone();
        let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        let live = format!("C|worker-b|{}", (secs + 60) * 1000);
        let [live_id, dead_id, recorded_id] = [id(), id(), id()];
        let event = br#"{"status":"dialed"}"#;
        let mut recorded = b"R|".to_vec();
        recorded.extend_from_slice(event);
        for (request, value) in [
            (&live_id, live.as_bytes()),
            (&dead_id, &b"C|worker-b|1"[..]),
            (&recorded_id, recorded.as_slice()),
        ] {
            let _: () = conn
                .pset_ex(a.record_key(request), value, 60_000)
                .await
                .expect("PSETEX");
        }

        for fingerprint in [FP, OTHER_FP] {
            assert!(matches!(
                a.claim(&live_id, fingerprint).await.unwrap(),
                Claim::Held { worker, .. } if worker == "worker-b"
            ));
            assert_eq!(
                a.claim(&dead_id, fingerprint).await.unwrap(),
                Claim::Abandoned(ClaimToken(b"C|worker-b|1".to_vec()))
            );
            assert_eq!(
                a.claim(&recorded_id, fingerprint).await.unwrap(),
                Claim::Recorded {
                    event: event.to_vec()
                }
            );
        }
        // Resolved with its old token, the old claim leaves a result without a fingerprint.
        let stale = ClaimToken(b"C|worker-b|1".to_vec());
        assert_eq!(
            a.record(&dead_id, &stale, b"{}").await.unwrap(),
            Recorded::Stored
        );
        assert_eq!(
            get(&a, &a.record_key(&dead_id)).await.as_deref(),
            Some(&b"R|{}"[..])
        );
        assert_eq!(
            a.claim(&dead_id, OTHER_FP).await.unwrap(),
            Claim::Recorded {
                event: b"{}".to_vec()
            }
        );
        a.release(&live_id, &ClaimToken(live.into_bytes()))
            .await
            .unwrap();
        assert_eq!(get(&a, &a.record_key(&live_id)).await, None);

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn a_fingerprint_the_encoding_cannot_hold_is_refused_before_redis_is_asked() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let request = id();
        for bad in ["", "a|b", "a#b"] {
            assert!(matches!(
                a.claim(&request, bad).await,
                Err(StoreError::InvalidFingerprint)
            ));
        }
        assert_eq!(get(&a, &a.record_key(&request)).await, None);
        cleanup(&a).await;
    }

    #[tokio::test]
    async fn an_expired_lease_is_abandoned_and_resolved_once() {
        let settings = settings(50);
        let dead = connect(&settings, "worker-dead").await;
        let other = connect(&settings, "worker-other").await;
        let request = id();

        let Claim::Acquired(original) = dead.claim(&request, FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        tokio::time::sleep(Duration::from_millis(150)).await;

        let Claim::Abandoned(stale) = other.claim(&request, FP).await.unwrap() else {
            panic!("an expired lease must be reported abandoned");
        };
        assert_eq!(stale, original, "the abandoned token is the stored claim");

        let unknown = br#"{"status":"unknown","code":"interrupted"}"#;
        assert_eq!(
            other.record(&request, &stale, unknown).await.unwrap(),
            Recorded::Stored
        );
        // A second resolver holding the same stale token finds the first result.
        assert_eq!(
            other.record(&request, &stale, b"{}").await.unwrap(),
            Recorded::Earlier(unknown.to_vec())
        );
        // And the dead worker, coming back late with its result, does not overwrite it.
        assert_eq!(
            dead.record(&request, &original, br#"{"status":"dialed"}"#)
                .await
                .unwrap(),
            Recorded::Earlier(unknown.to_vec())
        );
        assert!(pttl(&other, &other.record_key(&request)).await > 0);

        cleanup(&other).await;
    }

    #[tokio::test]
    async fn a_foreign_claim_is_never_overwritten() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let request = id();

        let Claim::Acquired(token) = a.claim(&request, FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        let wrong = ClaimToken(b"C|worker-b|1".to_vec());
        assert!(matches!(
            a.record(&request, &wrong, b"{}").await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            get(&a, &a.record_key(&request)).await.as_deref(),
            Some(token.0.as_slice())
        );

        // A claim by the same worker id but with another lease end is another claim too.
        let Record::Claimed {
            worker,
            lease_until_ms,
            fingerprint,
        } = Record::decode(&token.0).unwrap()
        else {
            panic!("token must be a claim");
        };
        let older = ClaimToken(
            Record::Claimed {
                worker,
                lease_until_ms: lease_until_ms - 1,
                fingerprint,
            }
            .encode(),
        );
        assert!(matches!(
            a.record(&request, &older, b"{}").await,
            Err(StoreError::Conflict)
        ));

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn record_without_a_stored_claim_stores_with_a_ttl() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let request = id();
        let token = ClaimToken(b"C|worker-a|1".to_vec());
        assert_eq!(
            a.record(&request, &token, b"{\"x\":1}").await.unwrap(),
            Recorded::Stored
        );
        let ttl = pttl(&a, &a.record_key(&request)).await;
        assert!(ttl > 0 && ttl <= 120_000, "PTTL {ttl}");
        cleanup(&a).await;
    }

    #[tokio::test]
    async fn release_only_drops_the_named_claim() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let request = id();

        let Claim::Acquired(token) = a.claim(&request, FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        a.release(&request, &ClaimToken(b"C|worker-b|1".to_vec()))
            .await
            .unwrap();
        assert!(matches!(
            a.claim(&request, FP).await.unwrap(),
            Claim::Held { .. }
        ));

        a.release(&request, &token).await.unwrap();
        assert_eq!(get(&a, &a.record_key(&request)).await, None);
        assert!(matches!(
            a.claim(&request, FP).await.unwrap(),
            Claim::Acquired(_)
        ));

        // A result is never released, whatever token is offered.
        let Claim::Held { .. } = a.claim(&request, FP).await.unwrap() else {
            panic!("still claimed");
        };
        let value = get(&a, &a.record_key(&request)).await.unwrap();
        let current = ClaimToken(value);
        a.record(&request, &current, b"{}").await.unwrap();
        a.release(&request, &current).await.unwrap();
        assert!(matches!(
            a.claim(&request, FP).await.unwrap(),
            Claim::Recorded { .. }
        ));

        cleanup(&a).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_one_of_many_concurrent_claims_acquires() {
        let settings = settings(60_000);
        let stores = [
            connect(&settings, "worker-a").await,
            connect(&settings, "worker-b").await,
            connect(&settings, "worker-c").await,
        ];
        let request = id();
        let barrier = Arc::new(tokio::sync::Barrier::new(50));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                let request = request.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.claim(&request, FP).await
                })
            })
            .collect();
        let mut acquired = 0;
        let mut held = 0;
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Claim::Acquired(_) => acquired += 1,
                Claim::Held { .. } => held += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((acquired, held), (1, 49));
        cleanup(&stores[0]).await;
    }

    #[tokio::test]
    async fn an_unreadable_record_is_reported_corrupt() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let request = id();
        let mut conn = a.conn.clone();
        let _: () = conn
            .set(a.record_key(&request), "garbage")
            .await
            .expect("SET");
        assert!(matches!(
            a.claim(&request, FP).await,
            Err(StoreError::Corrupt(_))
        ));
        cleanup(&a).await;
    }

    #[tokio::test]
    async fn cooldown_slot_lifecycle() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let key = "3f2a9c";
        let window = Duration::from_secs(60);
        let cd_key = a.cooldown_key(key);

        assert_eq!(
            a.cooldown_acquire(key, "r1", window).await.unwrap(),
            Cooldown::Free
        );
        let ttl = pttl(&a, &cd_key).await;
        assert!(ttl > 0 && ttl <= 60_000, "cooldown PTTL {ttl}");
        assert_eq!(
            a.cooldown_acquire(key, "r2", window).await.unwrap(),
            Cooldown::Taken {
                request_id: "r1".into(),
                task_id: None
            }
        );
        // The holder asking again (a redelivery) may go ahead.
        assert_eq!(
            a.cooldown_acquire(key, "r1", window).await.unwrap(),
            Cooldown::Free
        );

        // Dialed: the task id is remembered and the window restarts with the new length.
        a.cooldown_dialed(key, "r1", "task-1", Duration::from_secs(30))
            .await
            .unwrap();
        let ttl = pttl(&a, &cd_key).await;
        assert!(ttl > 0 && ttl <= 30_000, "restarted PTTL {ttl}");
        let taken = Cooldown::Taken {
            request_id: "r1".into(),
            task_id: Some("task-1".into()),
        };
        assert_eq!(a.cooldown_acquire(key, "r2", window).await.unwrap(), taken);

        // Someone else's dial or release does not touch the slot.
        a.cooldown_dialed(key, "r2", "task-2", window)
            .await
            .unwrap();
        a.cooldown_release(key, "r2").await.unwrap();
        assert_eq!(a.cooldown_acquire(key, "r3", window).await.unwrap(), taken);

        a.cooldown_release(key, "r1").await.unwrap();
        assert_eq!(
            a.cooldown_acquire(key, "r2", window).await.unwrap(),
            Cooldown::Free
        );

        // A dial reported after the slot expired takes it again.
        let late = "aa11";
        a.cooldown_dialed(late, "r9", "task-9", window)
            .await
            .unwrap();
        assert_eq!(
            a.cooldown_acquire(late, "r2", window).await.unwrap(),
            Cooldown::Taken {
                request_id: "r9".into(),
                task_id: Some("task-9".into())
            }
        );

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn cooldown_expires_after_its_window() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let key = "b7e1";
        let short = Duration::from_millis(50);
        assert_eq!(
            a.cooldown_acquire(key, "r1", short).await.unwrap(),
            Cooldown::Free
        );
        assert!(matches!(
            a.cooldown_acquire(key, "r2", short).await.unwrap(),
            Cooldown::Taken { .. }
        ));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            a.cooldown_acquire(key, "r2", short).await.unwrap(),
            Cooldown::Free
        );

        // A zero window means "off": always free, nothing stored.
        let off = "c0ff";
        for request in ["r1", "r2"] {
            assert_eq!(
                a.cooldown_acquire(off, request, Duration::ZERO)
                    .await
                    .unwrap(),
                Cooldown::Free
            );
        }
        let mut conn = a.conn.clone();
        let exists: bool = conn.exists(a.cooldown_key(off)).await.expect("EXISTS");
        assert!(!exists);

        cleanup(&a).await;
    }

    async fn exists(store: &RedisStore, key: &str) -> bool {
        let mut conn = store.conn.clone();
        conn.exists(key).await.expect("EXISTS")
    }

    #[tokio::test]
    async fn daily_reserve_counts_up_to_the_cap_and_release_frees_one() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let (key, day) = ("9d4e01", "2026-11-25");
        let counter = a.daily_key(key, day);
        assert_eq!(counter, format!("{}:day:{day}:{key}", settings.key_prefix));

        for _ in 0..3 {
            assert!(a.daily_reserve(key, day, 3).await.unwrap());
        }
        assert!(!a.daily_reserve(key, day, 3).await.unwrap());
        assert!(!a.daily_reserve(key, day, 3).await.unwrap());
        assert_eq!(get(&a, &counter).await.as_deref(), Some(&b"3"[..]));

        // The counter expires, within DAILY_COUNTER_TTL of its first reservation.
        let ttl = pttl(&a, &counter).await;
        let limit = i64::try_from(DAILY_COUNTER_TTL.as_millis()).unwrap();
        assert!(ttl > limit - 60_000 && ttl <= limit, "daily PTTL {ttl}");

        a.daily_release(key, day).await.unwrap();
        assert_eq!(get(&a, &counter).await.as_deref(), Some(&b"2"[..]));
        let ttl_after = pttl(&a, &counter).await;
        assert!(ttl_after > 0 && ttl_after <= ttl, "release keeps the TTL");
        assert!(a.daily_reserve(key, day, 3).await.unwrap());
        assert!(!a.daily_reserve(key, day, 3).await.unwrap());

        // A raised cap lets more through; a lowered one refuses without counting.
        assert!(a.daily_reserve(key, day, 4).await.unwrap());
        assert!(!a.daily_reserve(key, day, 2).await.unwrap());
        assert_eq!(get(&a, &counter).await.as_deref(), Some(&b"4"[..]));

        // A cap of 0 allows nothing and creates nothing.
        assert!(!a.daily_reserve("e0e0", day, 0).await.unwrap());
        assert!(!exists(&a, &a.daily_key("e0e0", day)).await);

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn daily_release_never_goes_below_zero_nor_creates_a_key() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let day = "2026-11-25";

        // Nothing reserved: nothing is created.
        a.daily_release("f00d", day).await.unwrap();
        a.daily_release("f00d", day).await.unwrap();
        assert!(!exists(&a, &a.daily_key("f00d", day)).await);

        // Reserved once, released three times: zero, not negative.
        let key = "beef";
        let counter = a.daily_key(key, day);
        assert!(a.daily_reserve(key, day, 1).await.unwrap());
        for _ in 0..3 {
            a.daily_release(key, day).await.unwrap();
        }
        assert_eq!(get(&a, &counter).await.as_deref(), Some(&b"0"[..]));
        // So the cap still allows exactly one more, not one per extra release.
        assert!(a.daily_reserve(key, day, 1).await.unwrap());
        assert!(!a.daily_reserve(key, day, 1).await.unwrap());
        assert!(pttl(&a, &counter).await > 0);

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn daily_counters_are_per_day_and_per_key() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let (today, tomorrow) = ("2026-11-25", "2026-11-26");

        assert!(a.daily_reserve("k1", today, 1).await.unwrap());
        assert!(!a.daily_reserve("k1", today, 1).await.unwrap());
        // Another day, or another callee, has its own count.
        assert!(a.daily_reserve("k1", tomorrow, 1).await.unwrap());
        assert!(a.daily_reserve("k2", today, 1).await.unwrap());
        assert!(!a.daily_reserve("k1", tomorrow, 1).await.unwrap());
        assert!(!a.daily_reserve("k2", today, 1).await.unwrap());

        // Releasing one day's call frees that day only.
        a.daily_release("k1", tomorrow).await.unwrap();
        assert!(!a.daily_reserve("k1", today, 1).await.unwrap());
        assert!(a.daily_reserve("k1", tomorrow, 1).await.unwrap());

        for (key, day) in [("k1", today), ("k1", tomorrow), ("k2", today)] {
            let ttl = pttl(&a, &a.daily_key(key, day)).await;
            assert!(ttl > 0, "{key} {day} has PTTL {ttl}");
        }

        cleanup(&a).await;
    }

    #[tokio::test]
    async fn a_non_numeric_daily_counter_is_reported_corrupt() {
        let settings = settings(60_000);
        let a = connect(&settings, "worker-a").await;
        let (key, day) = ("c0de", "2026-11-25");
        let counter = a.daily_key(key, day);
        let mut conn = a.conn.clone();
        let _: () = conn.set(&counter, "garbage").await.expect("SET");
        assert!(matches!(
            a.daily_reserve(key, day, 5).await,
            Err(StoreError::Corrupt(_))
        ));
        // Release leaves it alone rather than failing.
        a.daily_release(key, day).await.unwrap();
        assert_eq!(get(&a, &counter).await.as_deref(), Some(&b"garbage"[..]));
        cleanup(&a).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_daily_reservations_never_exceed_the_cap() {
        let settings = settings(60_000);
        let stores = [
            connect(&settings, "worker-a").await,
            connect(&settings, "worker-b").await,
            connect(&settings, "worker-c").await,
        ];
        let (key, day) = ("5eed", "2026-11-25");
        let barrier = Arc::new(tokio::sync::Barrier::new(30));
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let store = stores[i % stores.len()].clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.daily_reserve(key, day, 5).await
                })
            })
            .collect();
        let mut counted = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() {
                counted += 1;
            }
        }
        assert_eq!(counted, 5);
        assert_eq!(
            get(&stores[0], &stores[0].daily_key(key, day))
                .await
                .as_deref(),
            Some(&b"5"[..])
        );
        cleanup(&stores[0]).await;
    }

    #[tokio::test]
    async fn connection_errors_never_show_the_password() {
        let mut settings = settings(60_000);
        // Nothing listens on port 1: the connection is refused.
        settings.url = secrecy::SecretString::from("redis://user:hunter2@127.0.0.1:1/0".to_owned());
        let err = RedisStore::connect(&settings, "w".into())
            .await
            .expect_err("port 1 must refuse");
        let message = err.to_string();
        assert!(message.starts_with("redis store:"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(!message.contains("127.0.0.1:1"), "{message}");
        assert!(message.contains("cannot connect"), "{message}");
    }

    #[test]
    fn the_redactor_scrubs_url_and_password() {
        let redactor = Redactor::new("redis://u:p%40ss@h:6379/0", backend);
        let err = RedisError::from((
            redis::ErrorKind::Io,
            "boom",
            "redis://u:p%40ss@h:6379/0 p@ss p%40ss".to_owned(),
        ));
        let message = redactor.error("x", &err).to_string();
        assert!(!message.contains("p@ss"), "{message}");
        assert!(!message.contains("p%40ss"), "{message}");
        assert!(message.contains("[redacted]"), "{message}");
    }

    #[test]
    fn millis_never_rounds_a_real_duration_to_zero() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
