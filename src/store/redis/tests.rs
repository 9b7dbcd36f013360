use redis::AsyncCommands;

use super::*;
use crate::config::{Settings, StoreBackend};
use crate::store::contract::{Backend, DAY, FP, Kind, RawRecord, WORKER, contract_tests};
use crate::store::{
    CallResults as _, CalleeState as _, Claim, ClaimToken, DAILY_COUNTER_TTL, DialRecords as _,
    Record,
};

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
    let mut conn = store.conn.get();
    conn.pttl(key).await.expect("PTTL")
}

async fn get(store: &RedisStore, key: &str) -> Option<Vec<u8>> {
    let mut conn = store.conn.get();
    conn.get(key).await.expect("GET")
}

/// Every key matching `pattern`.
async fn keys(store: &RedisStore, pattern: &str) -> Vec<String> {
    let mut conn = store.conn.get();
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
        let mut conn = self.store.conn.get();
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
        let mut conn = self.store.conn.get();
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
            Kind::Contacts => "contact",
            Kind::CallResults => "result",
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
    let mut conn = store.conn.get();
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
    let mut conn = a.conn.get();
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

/// The machine's Redis has no replicas: asking for one, a claim is taken, found unconfirmed
/// and given back (nothing is left to block the request), the check says why, and the same
/// claim succeeds once no replica is asked for.
#[tokio::test]
async fn a_claim_no_replica_confirms_is_given_back_and_the_check_fails() {
    let mut s = settings(10_000);
    s.min_replicas_acked = 1;
    s.replica_ack_timeout_ms = 50;
    let store = connect(&s, "w1").await;
    let unconfirmed = store.claim("r1", FP).await;
    assert!(
        matches!(
            unconfirmed,
            Err(StoreError::NotReplicated {
                acked: 0,
                wanted: 1,
                timeout_ms: 50
            })
        ),
        "{unconfirmed:?}"
    );
    assert_eq!(get(&store, &store.record_key("r1")).await, None);
    let check = store.check().await;
    assert!(
        matches!(check, Err(StoreError::NotReplicated { .. })),
        "{check:?}"
    );

    s.min_replicas_acked = 0;
    let primary_alone = connect(&s, "w1").await;
    assert!(matches!(
        primary_alone.claim("r1", FP).await,
        Ok(Claim::Acquired(_))
    ));
    primary_alone
        .check()
        .await
        .expect("the primary alone answers");
    cleanup(&store).await;
}

#[tokio::test]
async fn contacts_and_call_results_live_the_record_ttl_from_their_first_write() {
    let settings = settings(60_000);
    let a = connect(&settings, WORKER).await;
    let prefix = &settings.key_prefix;
    assert_eq!(
        a.contact_key("a:b", "c"),
        format!("{prefix}:contact:3:a:b:c")
    );
    assert_eq!(a.result_key("r1"), format!("{prefix}:result:r1"));

    a.claim_contact("i", "c1", "r1").await.unwrap();
    a.record_call_result("r1", b"{}").await.unwrap();
    let keys = [a.contact_key("i", "c1"), a.result_key("r1")];
    let mut first = Vec::new();
    for key in &keys {
        let ttl = pttl(&a, key).await;
        assert!(ttl > 60_000 && ttl <= 120_000, "{key} PTTL {ttl}");
        first.push(ttl);
    }
    // Later attempts change neither the value nor its expiry.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(a.claim_contact("i", "c1", "r2").await.unwrap(), "r1");
    assert_eq!(
        a.record_call_result("r1", b"[]").await.unwrap(),
        b"{}".to_vec()
    );
    for (key, first) in keys.iter().zip(first) {
        let ttl = pttl(&a, key).await;
        assert!(ttl > 0 && ttl < first, "{key} PTTL {ttl} after {first}");
    }
    cleanup(&a).await;
}

/// No replica confirms on the machine's Redis: the first writer's value is stored but not
/// acted on; asked again once no replica is required, the same value comes back.
#[tokio::test]
async fn a_contact_or_call_result_no_replica_confirms_is_an_error() {
    let mut s = settings(10_000);
    s.min_replicas_acked = 1;
    s.replica_ack_timeout_ms = 50;
    let store = connect(&s, "w1").await;
    let unconfirmed = store.claim_contact("i", "c1", "r1").await;
    assert!(
        matches!(unconfirmed, Err(StoreError::NotReplicated { acked: 0, .. })),
        "{unconfirmed:?}"
    );
    let unconfirmed = store.record_call_result("r1", b"{}").await;
    assert!(
        matches!(unconfirmed, Err(StoreError::NotReplicated { acked: 0, .. })),
        "{unconfirmed:?}"
    );

    s.min_replicas_acked = 0;
    let primary_alone = connect(&s, "w2").await;
    assert_eq!(
        primary_alone.claim_contact("i", "c1", "r2").await.unwrap(),
        "r1"
    );
    assert_eq!(
        primary_alone.record_call_result("r1", b"[]").await.unwrap(),
        b"{}".to_vec()
    );
    cleanup(&store).await;
}
