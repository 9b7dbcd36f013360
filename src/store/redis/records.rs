//! Dial records on Redis: claim, record, release, one script each.

use std::sync::atomic::Ordering;

use redis::{Cmd, ErrorKind, FromRedisValue, Script, ServerErrorKind, Value};

use super::{RedisStore, Replication};
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
        // Replicas known to lag: no claim is confirmed now, so none is taken.
        self.replicated(self.inner.replication.last_acked.load(Ordering::Relaxed))?;
        let scripts = &self.inner.scripts;
        let mut claim = evalsha(&scripts.claim, self.record_key(request_id));
        claim
            .arg(&self.inner.worker_id)
            .arg(self.inner.lease_ms)
            .arg(self.inner.record_ttl_ms)
            .arg(fingerprint);
        let ((acquired, value, now_ms), replicated): ((i64, Vec<u8>, u64), _) =
            self.run_replicated("claim", &scripts.claim, claim).await?;
        if acquired == 1 {
            let token = ClaimToken(value);
            if let Err(error) = replicated {
                // Not dialed on: a failover now could lose the claim. Given back, so the
                // request can be claimed again once the replicas keep up.
                let _ = self.release(request_id, &token).await;
                return Err(error);
            }
            return Ok(Claim::Acquired(token));
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
        let scripts = &self.inner.scripts;
        let mut record = evalsha(&scripts.record, self.record_key(request_id));
        record
            .arg(token.0.as_slice())
            .arg(result)
            .arg(self.inner.record_ttl_ms);
        let ((stored, current), replicated): ((i64, Vec<u8>), _) = self
            .run_replicated("record", &scripts.record, record)
            .await?;
        // Not published until the replicas hold it; written again, the result answers
        // `Earlier` and is waited for once more.
        replicated?;
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
        let mut conn = self.conn.get();
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
        // The primary (with sentinels: the one they name now) answers as the primary.
        self.conn
            .check()
            .await
            .map_err(|e| self.error("check", &e))?;
        let Replication {
            min_acked,
            timeout_ms,
            ..
        } = self.inner.replication;
        if min_acked == 0 {
            return Ok(());
        }
        let mut conn = self.conn.get();
        // Answers how many replicas hold every write made on this connection so far: enough
        // of them up and caught up.
        let acked: u32 = redis::cmd("WAIT")
            .arg(min_acked)
            .arg(timeout_ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error("wait for replicas", &e))?;
        self.acked(acked)
    }
}

/// `EVALSHA` of `script` with its one key: the caller adds the arguments.
pub(super) fn evalsha(script: &Script, key: String) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(1).arg(key);
    cmd
}

impl RedisStore {
    /// Runs `eval` (an [`evalsha`] of `script`) and, when `store.min_replicas_acked` asks for
    /// replicas, `WAIT`s for them in the same round trip on the same connection, so that the
    /// count covers this very write. Returns the script's answer, and whether enough replicas
    /// hold it. Loads the script and runs it again if Redis forgot it (a failover, a restart).
    pub(super) async fn run_replicated<T: FromRedisValue>(
        &self,
        what: &str,
        script: &Script,
        eval: Cmd,
    ) -> Result<(T, Result<(), StoreError>), StoreError> {
        let Replication {
            min_acked,
            timeout_ms,
            ..
        } = self.inner.replication;
        let mut pipe = redis::pipe();
        pipe.add_command(eval);
        if min_acked > 0 {
            pipe.cmd("WAIT").arg(min_acked).arg(timeout_ms);
        }
        let mut conn = self.conn.get();
        let mut answer = pipe.query_async::<Vec<Value>>(&mut conn).await;
        if matches!(&answer, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)) {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| self.error(what, &e))?;
            answer = pipe.query_async(&mut conn).await;
        }
        let mut values = answer.map_err(|e| self.error(what, &e))?.into_iter();
        let parse = |value: Option<Value>| value.ok_or_else(|| self.error(what, &"no answer"));
        let result =
            T::from_redis_value(parse(values.next())?).map_err(|e| self.error(what, &e))?;
        if min_acked == 0 {
            return Ok((result, Ok(())));
        }
        let acked =
            u32::from_redis_value(parse(values.next())?).map_err(|e| self.error(what, &e))?;
        Ok((result, self.acked(acked)))
    }

    /// Notes that `acked` replicas confirmed the latest write: [`StoreError::NotReplicated`]
    /// unless they are enough.
    fn acked(&self, acked: u32) -> Result<(), StoreError> {
        self.inner
            .replication
            .last_acked
            .store(acked, Ordering::Relaxed);
        self.replicated(acked)
    }

    /// [`StoreError::NotReplicated`] unless `acked` replicas are enough.
    fn replicated(&self, acked: u32) -> Result<(), StoreError> {
        let Replication {
            min_acked,
            timeout_ms,
            ..
        } = self.inner.replication;
        if acked >= min_acked {
            return Ok(());
        }
        Err(StoreError::NotReplicated {
            acked,
            wanted: min_acked,
            timeout_ms,
        })
    }
}
