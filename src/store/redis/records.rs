//! Dial records on Redis: claim, record, release, one script each.

use super::RedisStore;
use crate::store::{
    Claim, ClaimToken, DialRecords, Record, Recorded, StoreError, check_fingerprint,
};

/// Claims the request if nothing is there; otherwise returns what is there, unchanged, with
/// the server's time so the caller can tell a live lease from a dead one on the server's clock
/// (and a different request's fingerprint from its own).
///
/// KEYS[1] record key; ARGV[1] worker id, ARGV[2] lease ms, ARGV[3] record TTL ms,
/// ARGV[4] fingerprint. Returns `{1, claim, now_ms}` (acquired) or `{0, stored value, now_ms}`.
pub(super) const CLAIM_LUA: &str = r"
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
pub(super) const RECORD_LUA: &str = r"
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
pub(super) const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

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
