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
    CalleeState, Claim, ClaimToken, Cooldown, DAILY_COUNTER_TTL, DialRecords, Record, Recorded,
    StoreError, check_fingerprint,
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

impl DialRecords for RedisStore {
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

    async fn check(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.error("ping", &e))
    }
}

impl CalleeState for RedisStore {
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
    use redis::AsyncCommands;

    use super::*;
    use crate::config::{Settings, StoreBackend};
    use crate::store::contract::{Backend, DAY, FP, Kind, RawRecord, WORKER, contract_tests};

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

    /// Every key matching `pattern`.
    async fn keys(store: &RedisStore, pattern: &str) -> Vec<String> {
        let mut conn = store.conn.clone();
        let mut iter = conn.scan_match::<_, String>(pattern).await.expect("SCAN");
        let mut keys = Vec::new();
        while let Some(key) = iter.next_item().await {
            keys.push(key.expect("SCAN"));
        }
        keys
    }

    /// A store under a key prefix of its own on the local Redis, for the contract tests.
    struct RedisUnderTest {
        store: RedisStore,
        settings: StoreSettings,
    }

    impl Backend for RedisUnderTest {
        type Store = RedisStore;

        async fn open(lease: Duration) -> Self {
            let settings = settings(millis(lease));
            RedisUnderTest {
                store: connect(&settings, WORKER).await,
                settings,
            }
        }

        fn store(&self) -> &RedisStore {
            &self.store
        }

        async fn another_replica(&self) -> RedisStore {
            connect(&self.settings, "worker-b").await
        }

        async fn stored(&self, request_id: &str) -> Option<RawRecord> {
            let key = self.store.record_key(request_id);
            let mut conn = self.store.conn.clone();
            let (value, expires_at_ms): (Option<Vec<u8>>, i64) = redis::pipe()
                .atomic()
                .get(&key)
                .cmd("PEXPIRETIME")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .expect("GET and PEXPIRETIME");
            Some(RawRecord {
                value: value?,
                expires_at_ms: u64::try_from(expires_at_ms).expect("the record has an expiry"),
            })
        }

        async fn put_raw(&self, request_id: &str, value: &[u8]) {
            let mut conn = self.store.conn.clone();
            let key = self.store.record_key(request_id);
            let _: () = conn.pset_ex(key, value, 60_000).await.expect("PSETEX");
        }

        async fn daily_count(&self, key: &str, day: &str) -> Option<u32> {
            let count = get(&self.store, &self.store.daily_key(key, day)).await?;
            Some(String::from_utf8(count).unwrap().parse().unwrap())
        }

        async fn live(&self, kind: Kind) -> usize {
            let tag = match kind {
                Kind::Records => "req",
                Kind::Cooldowns => "cd",
                Kind::DailyCounters => "day",
            };
            let pattern = format!("{}:{tag}:*", self.settings.key_prefix);
            keys(&self.store, &pattern).await.len()
        }

        async fn untidy(&self) -> Vec<String> {
            let mut untidy = Vec::new();
            let pattern = format!("{}:*", self.settings.key_prefix);
            for key in keys(&self.store, &pattern).await {
                let ttl = pttl(&self.store, &key).await;
                if ttl <= 0 {
                    untidy.push(format!("{key} has PTTL {ttl}"));
                }
            }
            untidy
        }

        async fn clean_up(self) {
            cleanup(&self.store).await;
        }
    }

    contract_tests!(RedisUnderTest);

    /// Redis's clock, in ms since the epoch.
    async fn server_now_ms(store: &RedisStore) -> u64 {
        let mut conn = store.conn.clone();
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("TIME");
        secs * 1000 + micros / 1000
    }

    #[tokio::test]
    async fn leases_and_records_run_on_the_servers_clock() {
        let settings = settings(60_000);
        let a = connect(&settings, WORKER).await;
        let before = server_now_ms(&a).await;
        let Claim::Acquired(token) = a.claim("r1", FP).await.unwrap() else {
            panic!("first claim must acquire");
        };
        let after = server_now_ms(&a).await;
        let Record::Claimed { lease_until_ms, .. } = Record::decode(&token.0).unwrap() else {
            panic!("the token must be a claim");
        };
        assert!(
            lease_until_ms >= before + 60_000 && lease_until_ms <= after + 60_000,
            "lease end {lease_until_ms} must be a lease after server time {before}..{after}"
        );
        // The claim lives the record TTL, past its lease.
        let ttl = pttl(&a, &a.record_key("r1")).await;
        assert!(ttl > 60_000 && ttl <= 120_000, "claim PTTL {ttl}");
        // A result recorded with no claim stored lives the record TTL from then.
        let unseen = ClaimToken(b"C|worker-a|1".to_vec());
        a.record("r2", &unseen, b"{}").await.unwrap();
        let ttl = pttl(&a, &a.record_key("r2")).await;
        assert!(ttl > 60_000 && ttl <= 120_000, "result PTTL {ttl}");
        cleanup(&a).await;
    }

    #[tokio::test]
    async fn cooldowns_and_counters_expire_on_the_servers_clock() {
        let settings = settings(60_000);
        let a = connect(&settings, WORKER).await;
        // A slot lives its window, restarted with the new length once dialed.
        let slot = a.cooldown_key("k");
        a.cooldown_acquire("k", "r1", Duration::from_secs(60))
            .await
            .unwrap();
        let ttl = pttl(&a, &slot).await;
        assert!(ttl > 0 && ttl <= 60_000, "cooldown PTTL {ttl}");
        a.cooldown_dialed("k", "r1", "task-1", Duration::from_secs(30))
            .await
            .unwrap();
        let ttl = pttl(&a, &slot).await;
        assert!(ttl > 0 && ttl <= 30_000, "restarted PTTL {ttl}");

        // A counter lives DAILY_COUNTER_TTL from its first reservation; later reservations and
        // releases keep its TTL.
        let counter = a.daily_key("k", DAY);
        assert_eq!(counter, format!("{}:day:{DAY}:k", settings.key_prefix));
        assert!(a.daily_reserve("k", DAY, 3).await.unwrap());
        let ttl = pttl(&a, &counter).await;
        let limit = i64::try_from(DAILY_COUNTER_TTL.as_millis()).unwrap();
        assert!(ttl > limit - 60_000 && ttl <= limit, "daily PTTL {ttl}");
        assert!(a.daily_reserve("k", DAY, 3).await.unwrap());
        a.daily_release("k", DAY).await.unwrap();
        let ttl_after = pttl(&a, &counter).await;
        assert!(
            ttl_after > 0 && ttl_after <= ttl,
            "PTTL {ttl_after} vs {ttl}"
        );
        cleanup(&a).await;
    }

    #[tokio::test]
    async fn a_non_numeric_daily_counter_is_reported_corrupt() {
        let settings = settings(60_000);
        let a = connect(&settings, WORKER).await;
        let (key, day) = ("c0de", DAY);
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
    fn millis_never_rounds_a_real_duration_to_zero() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
