//! The shared limiter: every replica paces each instance against the same state in Redis.
//!
//! # One script per attempt
//!
//! An attempt reads four keys and, only if every rule passes, writes them all. As separate
//! commands two replicas could both see the last free permit, or the same free rate slot, and
//! both call. A Lua script runs atomically on the server, so each attempt is one script: one
//! round trip, no `WATCH` retries, no window between the check and the take. The script is
//! loaded at [`RedisLimiter::connect`] (failing early on an ACL without scripting); `EVALSHA`
//! loads it again if Redis forgot it.
//!
//! # Server time
//!
//! Rate states (theoretical arrival times) and permit leases are instants, and replicas'
//! clocks disagree: a replica whose clock ran fast would see every other replica's rate slots
//! as long past and call early, and would expire live permits. So every instant is read and
//! compared on Redis's clock, with `TIME` inside the script, in microseconds (a 50 ms interval
//! at 20 calls/s, or 1 ms at 1000, needs finer than whole milliseconds). The pair mark is a
//! relative `PX` expiry, so it runs on the server's clock too. Redis 7 replicates a script's
//! effects, not the script, so reading `TIME` before writing is allowed.
//!
//! # Keys
//!
//! All under `<prefix>:lim:{<instance_id>}:`; the braces are a Redis Cluster hash tag, so one
//! attempt's keys always live on one node.
//!
//! - `…:rate`: a string, the instance's TAT in microseconds of server time. Expires when the
//!   TAT passes (an absent key and a past TAT mean the same: idle).
//! - `…:sem`: a sorted set of permit holders (a random token each) scored by lease end in
//!   milliseconds of server time. Expired holders are removed before counting, so a crashed
//!   replica's permits come back after their lease. The key expires one lease after its
//!   latest holder joined, so an idle instance leaves nothing behind.
//! - `…:caller:<caller_key>`: a caller's TAT, like `rate`, when per-caller pacing is on.
//! - `…:starts`: the TAT of the instance's granted starts, like `rate`: every grant keeps the
//!   instance's spacing from the grants before it, booked calls included.
//! - `…:pair:<pair_key>`: a marker set with `PX`
//!   [`PAIR_SPACING`](crate::gates::limits::PAIR_SPACING).
//!
//! Caller and pair keys are opaque hashes supplied by the caller: no phone number is stored.
//!
//! # Errors
//!
//! A [`LimitError::Backend`] does not say whether the script ran. If it ran and granted, the
//! holder entry stays until its lease and one rate slot is spent: harmless, as the request is
//! not dialed (the caller defers it) and the slot comes back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use redis::aio::ConnectionManager;
use redis::{RedisError, Script};

use super::conn::{Primary, Redactor, RedisAddress, Timeouts};
use super::millis;
use crate::gates::limits::{
    Attempt, Booked, Booking, CallKey, Common, Hold, LimitError, LimitRules, Limiter, Pace, Permit,
    Slots, WaitFor,
};

/// How long [`RedisLimiter::connect`] waits for Redis, all reconnection attempts included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one script may take to answer. Short: the acquire loop is bounded by `max_wait`,
/// and a stalled Redis should fail the attempt (the request is deferred) rather than hang it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What both scripts start with: `now`, Redis's clock in microseconds, and `tat_of(key)`, a
/// stored TAT, or `now` when it is absent or past (`nil`: the key holds no number).
macro_rules! tat_prelude {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function tat_of(key)
  local v = redis.call('GET', key)
  if not v then
    return now
  end
  local n = tonumber(v)
  if not n then
    return nil
  end
  return math.max(n, now)
end
"
    };
}

/// One all-or-nothing attempt at every slot of a call.
///
/// `KEYS[1]` rate, `KEYS[2]` sem, `KEYS[3]` caller, `KEYS[4]` pair, `KEYS[5]` starts. An
/// interval of 0 is a call whose start was booked (`BOOK_LUA`): no rate is checked or
/// advanced; the starts' spacing always is.
/// `ARGV[1]` interval µs, `ARGV[2]` tolerance µs ((burst - 1) * interval), `ARGV[3]` caller
/// interval µs (0: off), `ARGV[4]` pair window ms (0: off), `ARGV[5]` max in flight, `ARGV[6]`
/// lease ms, `ARGV[7]` holder token, `ARGV[8]` spacing µs, `ARGV[9]` spacing tolerance µs.
///
/// Returns `{0, lease end ms}` (granted: rate and caller TATs advanced, pair marked, holder
/// added), `{1|2|3, wait µs}` (refused by the rate, the caller's rate or the pair mark: the
/// longest of their waits), `{4, µs until the earliest lease ends}` (every permit taken), or
/// `{-1, n}` (`KEYS[n]` holds something this script did not write).
const ACQUIRE_LUA: &str = concat!(
    tat_prelude!(),
    r"
local now_ms = math.floor(now / 1000)

-- Pacing first: every rule, keeping the longest wait (nothing can go before it). An
-- interval of 0 is a booked call: its rate was counted when it was booked.
local reason, wait = 0, 0
local interval = tonumber(ARGV[1])
local tat = now
if interval > 0 then
  tat = tat_of(KEYS[1])
  if not tat then
    return {-1, 1}
  end
  local d = tat - tonumber(ARGV[2]) - now
  if d > wait then
    reason, wait = 1, d
  end
end
local spacing = tonumber(ARGV[8])
local starts = now
if spacing > 0 then
  starts = tat_of(KEYS[5])
  if not starts then
    return {-1, 5}
  end
  local d = starts - tonumber(ARGV[9]) - now
  if d > wait then
    reason, wait = 1, d
  end
end
local caller_interval = tonumber(ARGV[3])
local caller_tat = now
if caller_interval > 0 then
  caller_tat = tat_of(KEYS[3])
  if not caller_tat then
    return {-1, 3}
  end
  local d = caller_tat - now
  if d > wait then
    reason, wait = 2, d
  end
end
local pair_window = tonumber(ARGV[4])
if pair_window > 0 then
  local ttl = redis.call('PTTL', KEYS[4])
  if ttl == -1 then
    -- Exists without an expiry: not ours (ours always carry PX).
    return {-1, 4}
  end
  if ttl > 0 and ttl * 1000 > wait then
    reason, wait = 3, ttl * 1000
  end
end
if wait > 0 then
  return {reason, wait}
end

-- Then the permit: holders whose lease ended (crashed replicas) give their slot back first.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {4, math.max(tonumber(first[2]) - now_ms, 0) * 1000}
end

-- Everything passed: take it all. %.0f, not tostring: tostring switches to exponent
-- notation (and loses digits) for numbers this large.
if interval > 0 then
  local next_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
    'PX', string.format('%.0f', math.ceil((next_tat - now) / 1000) + 1))
end
if caller_interval > 0 then
  local next_caller = caller_tat + caller_interval
  redis.call('SET', KEYS[3], string.format('%.0f', next_caller),
    'PX', string.format('%.0f', math.ceil((next_caller - now) / 1000) + 1))
end
if spacing > 0 then
  local next_start = starts + spacing
  redis.call('SET', KEYS[5], string.format('%.0f', next_start),
    'PX', string.format('%.0f', math.ceil((next_start - now) / 1000) + 1))
end
if pair_window > 0 then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[4])
end
local lease = tonumber(ARGV[6])
local lease_end = now_ms + lease
redis.call('ZADD', KEYS[2], string.format('%.0f', lease_end), ARGV[7])
-- Never shorten: a holder added by a replica with a longer lease must outlive this one.
if redis.call('PTTL', KEYS[2]) < lease then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return {0, lease_end}
"
);

/// Books the earliest start the rates leave for a call (see `Limiter::book`): the instance's
/// TAT less its burst tolerance, or the caller's TAT, whichever is later, and not before now.
/// When the instance's is the later, both rates advance from that start; when the caller's
/// is, only the caller's does.
///
/// `KEYS[1]` rate, `KEYS[2]` caller. `ARGV[1]` interval µs, `ARGV[2]` tolerance µs, `ARGV[3]`
/// caller interval µs (0: off).
///
/// Returns `{1, µs from now to the start, now}` (the instance's rate booked), `{2, µs, now}`
/// (the caller's alone), with `now` in µs of server time, or `{-1, n, 0}` (`KEYS[n]` holds something this script did not write; `n` as
/// in [`ACQUIRE_LUA`]: 1 rate, 3 caller).
const BOOK_LUA: &str = concat!(
    tat_prelude!(),
    r"

local function advance(key, from, interval)
  local next_tat = from + interval
  redis.call('SET', key, string.format('%.0f', next_tat),
    'PX', string.format('%.0f', math.ceil((next_tat - now) / 1000) + 1))
end

local tat = tat_of(KEYS[1])
if not tat then
  return {-1, 1, 0}
end
local slot = math.max(now, tat - tonumber(ARGV[2]))
local caller_interval = tonumber(ARGV[3])
if caller_interval > 0 then
  local caller_tat = tat_of(KEYS[2])
  if not caller_tat then
    return {-1, 3, 0}
  end
  if caller_tat > slot then
    advance(KEYS[2], caller_tat, caller_interval)
    return {2, caller_tat - now, now}
  end
  advance(KEYS[2], slot, caller_interval)
end
advance(KEYS[1], math.max(tat, slot), tonumber(ARGV[1]))
return {1, slot - now, now}
"
);

/// Paces `DialEx` calls across every replica sharing one Redis. Cheap to clone: a
/// multiplexed connection that reconnects by itself, and shared configuration.
#[derive(Clone)]
pub struct RedisLimiter {
    pub(crate) conn: Primary,
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    common: Common,
    clock: ServerClock,
    pub(crate) key_prefix: String,
    lease_ms: u64,
    acquire: Script,
    book: Script,
    redactor: Redactor<LimitError>,
}

impl fmt::Debug for RedisLimiter {
    // By hand: the connection's own Debug is not ours to vet for secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("key_prefix", &self.inner.key_prefix)
            .field("rules", &self.inner.common.rules)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// Connects to `url` (waiting at most 5 s) and loads the script. Keys live under
    /// `<key_prefix>:lim:`; every replica must use the same prefix (and, for the limits to
    /// mean what they say, the same settings).
    ///
    /// Fails if Redis cannot be reached, refuses the credentials, or refuses `SCRIPT LOAD`:
    /// better at start-up than on the first call. Error messages never contain the URL or its
    /// password.
    pub async fn connect(
        address: &RedisAddress,
        key_prefix: &str,
        settings: LimitRules,
    ) -> Result<Self, LimitError> {
        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            response: RESPONSE_TIMEOUT,
        };
        let acquire = Script::new(ACQUIRE_LUA);
        let book = Script::new(BOOK_LUA);
        let (conn, redactor, ()) = Primary::connect(
            address,
            LimitError::Backend,
            "the URL is not a usable Redis URL",
            timeouts,
            &[&acquire, &book],
            async |_, _| Ok(()),
        )
        .await?;
        let common = Common::new(&settings);
        Ok(RedisLimiter {
            conn,
            inner: Arc::new(Inner {
                lease_ms: millis(common.rules.lease),
                common,
                clock: ServerClock::default(),
                key_prefix: key_prefix.to_owned(),
                acquire,
                book,
                redactor,
            }),
        })
    }

    /// The acquire loop's state, for the tests that count attempts.
    #[cfg(test)]
    pub(crate) fn common(&self) -> &Common {
        &self.inner.common
    }

    /// `<prefix>:lim:{<instance_id>}:<kind>`.
    pub(crate) fn key(&self, instance_id: &str, kind: &str) -> String {
        format!("{}:lim:{{{instance_id}}}:{kind}", self.inner.key_prefix)
    }
}

impl Limiter for RedisLimiter {
    async fn acquire_within(
        &self,
        key: &CallKey<'_>,
        max_wait: Duration,
    ) -> Result<Option<Permit>, LimitError> {
        self.inner.common.acquire(self, key, max_wait, None).await
    }

    fn throttled(&self, instance_id: &str) {
        self.inner.common.throttled(instance_id);
    }

    fn paces_callers(&self, instance_id: &str) -> bool {
        self.inner.common.rules.paces_callers(instance_id)
    }

    async fn book(&self, key: &CallKey<'_>) -> Result<Booking, LimitError> {
        self.inner.common.book(self, key).await
    }

    async fn acquire_booked(
        &self,
        key: &CallKey<'_>,
        booking: &Booking,
        max_wait: Duration,
    ) -> Result<Option<Permit>, LimitError> {
        self.inner
            .common
            .acquire(self, key, max_wait, Some(booking))
            .await
    }
}

impl Slots for RedisLimiter {
    async fn attempt(&self, key: &CallKey<'_>, pace: &Pace) -> Result<Attempt, LimitError> {
        let sem_key = self.key(key.instance_id, "sem");
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut conn = self.conn.get();
        let (code, value): (i64, i64) = self
            .inner
            .acquire
            .key(self.key(key.instance_id, "rate"))
            .key(&sem_key)
            .key(self.key(key.instance_id, &format!("caller:{}", key.caller_key)))
            .key(self.key(key.instance_id, &format!("pair:{}", key.pair_key)))
            .key(self.key(key.instance_id, "starts"))
            .arg(micros(pace.interval))
            .arg(micros(pace.tolerance))
            .arg(pace.caller_interval.map_or(0, |i| micros(i).max(1)))
            .arg(millis(pace.pair_window))
            .arg(pace.max_in_flight)
            .arg(self.inner.lease_ms)
            .arg(&token)
            .arg(micros(pace.spacing).max(1))
            .arg(micros(pace.spacing_tolerance))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.inner.redactor.error("acquire", &e))?;
        let after = Duration::from_micros(u64::try_from(value).unwrap_or(0));
        let reason = match code {
            0 => {
                return Ok(Attempt::Granted(Permit::new(Box::new(RedisHold {
                    conn,
                    inner: self.inner.clone(),
                    instance: key.instance_id.to_owned(),
                    sem_key,
                    token,
                }))));
            }
            1 => WaitFor::Pace,
            2 => WaitFor::CallerPace,
            3 => WaitFor::Pair,
            4 => WaitFor::Permit,
            -1 => {
                let which = match value {
                    1 => "rate",
                    3 => "caller",
                    5 => "starts",
                    _ => "pair",
                };
                // Names the instance and the kind of key only: keys hold no phone numbers,
                // but there is no need to log hashes either.
                return Err(LimitError::Corrupt(format!(
                    "a {which} key of instance {} holds something the limiter did not write",
                    key.instance_id
                )));
            }
            other => {
                return Err(LimitError::Corrupt(format!(
                    "unexpected answer {other} from the acquire script"
                )));
            }
        };
        Ok(Attempt::Wait { reason, after })
    }

    async fn book(&self, key: &CallKey<'_>, pace: &Pace) -> Result<(Duration, Booked), LimitError> {
        let mut conn = self.conn.get();
        let (code, value, server_now): (i64, i64, i64) = self
            .inner
            .book
            .key(self.key(key.instance_id, "rate"))
            .key(self.key(key.instance_id, &format!("caller:{}", key.caller_key)))
            .arg(micros(pace.interval).max(1))
            .arg(micros(pace.tolerance))
            .arg(pace.caller_interval.map_or(0, |i| micros(i).max(1)))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.inner.redactor.error("book", &e))?;
        // The answer may have waited (for this task to run) before it is read here, and the
        // start is "wait from now": that wait would push the start later by as much, and
        // bookings made on different replicas would no longer keep their spacing. So the
        // wait is counted from when Redis answered, as this replica's clock saw it.
        let late = self.inner.clock.answer_delay(server_now);
        let wait = Duration::from_micros(u64::try_from(value).unwrap_or(0)).saturating_sub(late);
        match code {
            1 => Ok((wait, Booked::Instance)),
            2 => Ok((wait, Booked::Caller)),
            -1 => Err(LimitError::Corrupt(format!(
                "a {} key of instance {} holds something the limiter did not write",
                if value == 1 { "rate" } else { "caller" },
                key.instance_id
            ))),
            other => Err(LimitError::Corrupt(format!(
                "unexpected answer {other} from the booking script"
            ))),
        }
    }
}

/// How this replica's wall clock relates to Redis's, from the booking script's answers: the
/// smallest `local - server` difference seen lately is the offset plus the quickest answer's
/// delay, so an answer's delay is how far its difference exceeds that. Renewed every
/// [`CLOCK_WINDOW`], so a clock that is stepped or drifts is followed.
#[derive(Default)]
struct ServerClock {
    least: std::sync::Mutex<Option<(i64, std::time::Instant)>>,
}

const CLOCK_WINDOW: Duration = Duration::from_secs(10);

impl ServerClock {
    /// How long after `server_now` (µs of Redis time) this answer is being read.
    fn answer_delay(&self, server_now: i64) -> Duration {
        let difference = Timestamp::now().as_microsecond() - server_now;
        let mut least = self
            .least
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let renew =
            least.is_none_or(|(value, since)| difference < value || since.elapsed() > CLOCK_WINDOW);
        if renew {
            *least = Some((difference, std::time::Instant::now()));
        }
        let base = least.map_or(difference, |(value, _)| value);
        Duration::from_micros(u64::try_from(difference - base).unwrap_or(0))
    }
}

/// A Redis permit's hold: which holder entry to remove.
struct RedisHold {
    conn: ConnectionManager,
    inner: Arc<Inner>,
    instance: String,
    sem_key: String,
    token: String,
}

impl Hold for RedisHold {
    fn instance(&self) -> &str {
        &self.instance
    }

    fn common(&self) -> &Common {
        &self.inner.common
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    /// Removes the holder entry on a task of its own, then wakes this process's waiters.
    fn give_back(self: Box<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(
                instance_id = self.instance,
                "no runtime to release a permit on; its lease will free it"
            );
            return None;
        };
        Some(runtime.spawn(async move {
            let RedisHold {
                mut conn,
                inner,
                instance,
                sem_key,
                token,
            } = *self;
            let removed: Result<i64, RedisError> = redis::cmd("ZREM")
                .arg(&sem_key)
                .arg(&token)
                .query_async(&mut conn)
                .await;
            if let Err(e) = removed {
                tracing::warn!(
                    instance_id = instance,
                    error = %inner.redactor.error("release", &e),
                    "could not release a permit; its lease will free it"
                );
            }
            inner.common.wake(&instance);
        }))
    }
}

/// Whole microseconds, saturating (the settings are clamped far below that anyway).
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
