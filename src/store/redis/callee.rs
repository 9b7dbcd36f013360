//! Callee state on Redis: the cooldown slot and the daily counters, one script each.

use std::time::Duration;

use super::{RedisStore, millis};
use crate::store::{CalleeState, Cooldown, DAILY_COUNTER_TTL, StoreError};

/// Takes the cooldown slot if it is free; a request that already holds it keeps it (without
/// restarting the window).
///
/// KEYS[1] cooldown key; ARGV[1] request id, ARGV[2] window ms.
/// Returns `{1, '', ''}` (free) or `{0, holder, task id or ''}`.
pub(super) const COOLDOWN_ACQUIRE_LUA: &str = r"
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
pub(super) const COOLDOWN_DIALED_LUA: &str = r"
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
pub(super) const COOLDOWN_RELEASE_LUA: &str = r"
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
pub(super) const DAILY_RESERVE_LUA: &str = r"
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
pub(super) const DAILY_RELEASE_LUA: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]))
if count and count > 0 then
  redis.call('DECR', KEYS[1])
  return 1
end
return 0
";

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
        let mut conn = self.conn.get();
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
        let mut conn = self.conn.get();
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
        let mut conn = self.conn.get();
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
        let mut conn = self.conn.get();
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
        let mut conn = self.conn.get();
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
