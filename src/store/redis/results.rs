//! Contacts and call results on Redis: first writer wins, one script for both.

use super::RedisStore;
use super::records::evalsha;
use crate::store::{CallResults, StoreError, holder};

/// Stores the value unless the key holds one already; returns what the key holds now (ours, or
/// the earlier value, unchanged, its expiry too).
///
/// An earlier value is written again, as it is: `WAIT` counts the replicas that hold this
/// connection's writes, so only a write of our own makes the `WAIT` after the script cover a
/// value another replica of the worker wrote (replication keeps the order of writes).
///
/// KEYS[1] contact or result key; ARGV[1] value, ARGV[2] record TTL ms. Returns the stored value.
pub(super) const FIRST_WINS_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  redis.call('SET', KEYS[1], current, 'KEEPTTL')
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
";

/// Reads the value, writing it again as it is (see [`FIRST_WINS_LUA`]) so that the `WAIT`
/// after the script covers it. KEYS[1] result key. Returns the value, or nil.
pub(super) const READ_CONFIRMED_LUA: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  redis.call('SET', KEYS[1], current, 'KEEPTTL')
end
return current
";

impl RedisStore {
    /// `<prefix>:contact:<instance length>:<instance_id>:<contact_id>`: the length keeps
    /// `("a:b", "c")` and `("a", "b:c")` apart.
    pub(super) fn contact_key(&self, instance_id: &str, contact_id: &str) -> String {
        format!(
            "{}:contact:{}:{instance_id}:{contact_id}",
            self.inner.key_prefix,
            instance_id.len()
        )
    }

    /// `<prefix>:result:<request_id>`.
    pub(super) fn result_key(&self, request_id: &str) -> String {
        format!("{}:result:{request_id}", self.inner.key_prefix)
    }

    /// Runs [`FIRST_WINS_LUA`] on `key`. With `store.min_replicas_acked`, an answer the
    /// replicas did not confirm is [`StoreError::NotReplicated`]: acting on it could take a
    /// contact or publish a result that a failover then forgets. Asking again is safe: it finds
    /// the same value and waits for the replicas once more.
    async fn first_wins(
        &self,
        what: &str,
        key: String,
        value: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let script = &self.inner.scripts.first_wins;
        let mut eval = evalsha(script, key);
        eval.arg(value).arg(self.inner.record_ttl_ms);
        let (stored, replicated): (Vec<u8>, _) = self.run_replicated(what, script, eval).await?;
        replicated?;
        Ok(stored)
    }
}

impl CallResults for RedisStore {
    async fn claim_contact(
        &self,
        instance_id: &str,
        contact_id: &str,
        request_id: &str,
    ) -> Result<String, StoreError> {
        let key = self.contact_key(instance_id, contact_id);
        holder(
            self.first_wins("claim contact", key, request_id.as_bytes())
                .await?,
        )
    }

    async fn contact_holders(
        &self,
        instance_id: &str,
        contact_ids: &[&str],
    ) -> Result<Vec<Option<String>>, StoreError> {
        // `MGET` with no key is an error, and there is nothing to ask.
        if contact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = contact_ids
            .iter()
            .map(|contact_id| self.contact_key(instance_id, contact_id))
            .collect();
        let mut conn = self.conn.get();
        let stored: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.error("contact holders", &e))?;
        if stored.len() != keys.len() {
            return Err(self.error("contact holders", &"MGET answered for other keys"));
        }
        stored
            .into_iter()
            .map(|holder_bytes| holder_bytes.map(holder).transpose())
            .collect()
    }

    async fn record_call_result(
        &self,
        request_id: &str,
        result: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.first_wins("record call result", self.result_key(request_id), result)
            .await
    }

    async fn call_result(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // Published as soon as it is read: read only once the replicas hold it, so a
        // failover cannot forget a result that was published.
        let script = &self.inner.scripts.read_confirmed;
        let eval = evalsha(script, self.result_key(request_id));
        let (stored, replicated): (Option<Vec<u8>>, _) =
            self.run_replicated("call result", script, eval).await?;
        replicated?;
        Ok(stored)
    }
}
