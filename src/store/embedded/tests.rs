use std::collections::BTreeSet;

use redb::Value;

use super::sweep::sweep_batch;
use super::*;
use crate::config::Settings;
use crate::store::contract::{
    Backend, DAY, EVENT, FP, Kind, OTHER_FP, RawRecord, WORKER, contract_tests,
};

/// A unique directory under the system temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        TempDir(std::env::temp_dir().join(format!("dialex-embedded-{}", uuid::Uuid::new_v4())))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(dir: &TempDir) -> StoreSettings {
    let mut store = Settings::load_from(None, Vec::new())
        .expect("defaults load")
        .store;
    store.data_dir = dir.0.clone();
    store
}

fn settings_with(dir: &TempDir, lease_ms: u64, ttl_ms: u64, sweep_ms: u64) -> StoreSettings {
    let mut store = settings(dir);
    store.lease_ms = lease_ms;
    store.record_ttl_ms = ttl_ms;
    store.sweep_interval_ms = sweep_ms;
    store
}

fn open(settings: &StoreSettings) -> EmbeddedStore {
    EmbeddedStore::open(settings, WORKER.into()).expect("store opens")
}

async fn acquire(store: &EmbeddedStore, id: &str) -> ClaimToken {
    match store.claim(id, FP).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired for {id}, got {other:?}"),
    }
}

/// A store in a directory of its own, for the contract tests.
struct EmbeddedUnderTest {
    // Dropped first: the store closes its file before the directory goes.
    store: EmbeddedStore,
    _dir: TempDir,
}

impl EmbeddedUnderTest {
    /// Every row of `kind` and every entry of its expiry index, as `(expires_at_ms, key)`.
    fn rows_and_index(&self, kind: Kind) -> [BTreeSet<(u64, String)>; 2] {
        use redb::ReadableDatabase;
        let txn = self.store.inner.db.begin_read().unwrap();
        match kind {
            Kind::Records => expiries(&txn, RECORDS, RECORDS_BY_EXPIRY, |row| row.0),
            Kind::Cooldowns => expiries(&txn, COOLDOWNS, COOLDOWNS_BY_EXPIRY, |row| row.0),
            Kind::DailyCounters => {
                expiries(&txn, DAILY_COUNTERS, DAILY_COUNTERS_BY_EXPIRY, |row| row.0)
            }
            // One table holds both, told apart by the key's first letter.
            Kind::Contacts | Kind::CallResults => {
                let letter = if matches!(kind, Kind::Contacts) {
                    'c'
                } else {
                    'r'
                };
                expiries(&txn, CALL_RESULTS, CALL_RESULTS_BY_EXPIRY, |row| row.0).map(|set| {
                    set.into_iter()
                        .filter(|(_, key)| key.starts_with(letter))
                        .collect()
                })
            }
        }
    }
}

fn expiries<V: Value + 'static>(
    txn: &redb::ReadTransaction,
    rows: TableDefinition<&'static str, V>,
    index: TableDefinition<(u64, &'static str), ()>,
    expires_of: impl Fn(V::SelfType<'_>) -> u64,
) -> [BTreeSet<(u64, String)>; 2] {
    let rows = txn.open_table(rows).unwrap();
    let index = txn.open_table(index).unwrap();
    [
        rows.iter()
            .unwrap()
            .map(|row| {
                let (key, value) = row.unwrap();
                (expires_of(value.value()), key.value().to_owned())
            })
            .collect(),
        index
            .iter()
            .unwrap()
            .map(|entry| {
                let (key, _) = entry.unwrap();
                let (expires, key) = key.value();
                (expires, key.to_owned())
            })
            .collect(),
    ]
}

impl Backend for EmbeddedUnderTest {
    type Store = EmbeddedStore;

    async fn open(lease: Duration) -> Self {
        let dir = TempDir::new();
        let mut settings = settings(&dir);
        settings.lease_ms = millis(lease);
        EmbeddedUnderTest {
            store: open(&settings),
            _dir: dir,
        }
    }

    fn store(&self) -> &EmbeddedStore {
        &self.store
    }

    async fn another_replica(&self) -> EmbeddedStore {
        self.store.clone()
    }

    async fn stored(&self, request_id: &str) -> Option<RawRecord> {
        use redb::ReadableDatabase;
        let txn = self.store.inner.db.begin_read().unwrap();
        let records = txn.open_table(RECORDS).unwrap();
        let row = records.get(request_id).unwrap()?;
        let (expires_at_ms, value) = row.value();
        Some(RawRecord {
            value: value.to_vec(),
            expires_at_ms,
        })
    }

    async fn put_raw(&self, request_id: &str, value: &[u8]) {
        let (id, value) = (request_id.to_owned(), value.to_vec());
        self.store
            .write(Durability::Immediate, move |txn, now| {
                let mut records = txn.open_table(RECORDS).or_backend()?;
                let mut index = txn.open_table(RECORDS_BY_EXPIRY).or_backend()?;
                let old = read_record(&records, &id)?.map(|(expires, _)| expires);
                put_record(&mut records, &mut index, &id, old, now + 60_000, &value)?;
                Ok(((), Changed::Yes))
            })
            .await
            .unwrap();
    }

    async fn daily_count(&self, key: &str, day: &str) -> Option<u32> {
        use redb::ReadableDatabase;
        let txn = self.store.inner.db.begin_read().unwrap();
        let counters = txn.open_table(DAILY_COUNTERS).unwrap();
        let (expires, count) = counters
            .get(counter_key(key, day).as_str())
            .unwrap()?
            .value();
        (expires > now_ms().unwrap()).then_some(count)
    }

    async fn live(&self, kind: Kind) -> usize {
        let now = now_ms().unwrap();
        let [rows, _] = self.rows_and_index(kind);
        rows.iter().filter(|(expires, _)| *expires > now).count()
    }

    async fn untidy(&self) -> Vec<String> {
        let mut untidy = Vec::new();
        for kind in [
            Kind::Records,
            Kind::Cooldowns,
            Kind::DailyCounters,
            Kind::Contacts,
            Kind::CallResults,
        ] {
            let [rows, index] = self.rows_and_index(kind);
            for row in rows.difference(&index) {
                untidy.push(format!("{kind:?} row {row:?} has no index entry"));
            }
            for entry in index.difference(&rows) {
                untidy.push(format!("{kind:?} index entry {entry:?} has no row"));
            }
        }
        untidy
    }

    /// Dropping the store closes its file; dropping the directory then removes it.
    async fn clean_up(self) {}
}

contract_tests!(EmbeddedUnderTest);

#[tokio::test]
async fn leases_and_counters_run_on_the_local_clock() {
    let dir = TempDir::new();
    let settings = settings(&dir);
    let store = open(&settings);
    let before = now_ms().unwrap();
    let token = acquire(&store, "r1").await;
    let Record::Claimed { lease_until_ms, .. } = Record::decode(&token.0).unwrap() else {
        panic!("the token must be a claim");
    };
    let after = now_ms().unwrap();
    assert!(
        lease_until_ms >= before + settings.lease_ms && lease_until_ms <= after + settings.lease_ms,
        "{lease_until_ms}"
    );
    // A counter lives DAILY_COUNTER_TTL from its first reservation, whatever comes later.
    assert!(store.daily_reserve("k", DAY, 3).await.unwrap());
    let created = now_ms().unwrap();
    assert!(store.daily_reserve("k", DAY, 3).await.unwrap());
    store.daily_release("k", DAY).await.unwrap();
    let expires = {
        use redb::ReadableDatabase;
        let txn = store.inner.db.begin_read().unwrap();
        let counters = txn.open_table(DAILY_COUNTERS).unwrap();
        let row = counters.get(counter_key("k", DAY).as_str()).unwrap();
        row.unwrap().value().0
    };
    let ttl = millis(DAILY_COUNTER_TTL);
    assert!(
        expires <= created + ttl && expires > created + ttl - 60_000,
        "{expires}"
    );
}

#[tokio::test]
async fn state_survives_closing_and_reopening() {
    let dir = TempDir::new();
    let settings = settings(&dir);
    let store = open(&settings);
    let _claimed = acquire(&store, "claimed").await;
    let token = acquire(&store, "recorded").await;
    store.record("recorded", &token, EVENT).await.unwrap();
    assert_eq!(
        store
            .cooldown_acquire("callee", "recorded", Duration::from_secs(60))
            .await
            .unwrap(),
        Cooldown::Free
    );
    // The file is single-process: a second open while the first is alive fails.
    let err = EmbeddedStore::open(&settings, "worker-b".into()).unwrap_err();
    assert!(err.to_string().contains("already open"), "{err}");
    let clone = store.clone();
    drop(store);
    drop(clone);

    let store = EmbeddedStore::open(&settings, "worker-b".into()).expect("reopens");
    match store.claim("claimed", FP).await.unwrap() {
        Claim::Held { worker, .. } => assert_eq!(worker, "worker-a"),
        other => panic!("expected Held, got {other:?}"),
    }
    assert_eq!(
        store.claim("recorded", FP).await.unwrap(),
        Claim::Recorded {
            event: EVENT.to_vec(),
        }
    );
    // Still the first request's: a different request under its id is still turned away.
    assert_eq!(
        store.claim("recorded", OTHER_FP).await.unwrap(),
        Claim::Reused
    );
    assert_eq!(
        store
            .cooldown_acquire("callee", "other", Duration::from_secs(60))
            .await
            .unwrap(),
        Cooldown::Taken {
            request_id: "recorded".into(),
            task_id: None
        }
    );
}

/// Environment variable that turns [`crash_child`] into the process `kill -9` is aimed at.
const CRASH_DIR_VAR: &str = "DIALEX_EMBEDDED_CRASH_TEST_DIR";

/// Not a test on its own: [`claims_survive_kill_9`] runs this test binary again with only
/// this function selected; it claims (and records every other) request, printing each one as
/// soon as the store returns, until it is killed.
#[tokio::test]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR_VAR) else {
        return;
    };
    let mut settings = Settings::load_from(None, Vec::new()).unwrap().store;
    settings.data_dir = dir.into();
    let store = EmbeddedStore::open(&settings, "doomed".into()).unwrap();
    for i in 0.. {
        let id = format!("req-{i}");
        let token = acquire(&store, &id).await;
        if i % 2 == 1 {
            store.record(&id, &token, EVENT).await.unwrap();
            println!("recorded {id}");
        } else {
            println!("claimed {id}");
        }
    }
}

#[tokio::test]
async fn claims_survive_kill_9() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    let dir = TempDir::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "store::embedded::tests::crash_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_VAR, &dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some((state, id)) = line.split_once(' ')
            && (state == "claimed" || state == "recorded")
        {
            acknowledged.push((state.to_owned(), id.to_owned()));
            if acknowledged.len() == 40 {
                // SIGKILL mid-stream: no destructors, no clean close of the file.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    assert_eq!(acknowledged.len(), 40, "child stopped early");

    // Reopening repairs the file; every acknowledged claim and result is there.
    let store = open(&settings(&dir));
    for (state, id) in &acknowledged {
        let claim = store.claim(id, FP).await.unwrap();
        match (state.as_str(), &claim) {
            ("claimed", Claim::Held { worker, .. }) => assert_eq!(worker, "doomed"),
            ("recorded", Claim::Recorded { event, .. }) => assert_eq!(event, EVENT),
            _ => panic!("{id} was {state} before the kill, now {claim:?}"),
        }
    }
}

#[tokio::test]
async fn a_record_past_its_ttl_can_be_claimed_again() {
    let dir = TempDir::new();
    let store = open(&settings_with(&dir, 20, 80, 60_000));
    let token = acquire(&store, "r1").await;
    store.record("r1", &token, EVENT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    // Expired rows read as absent before any sweep.
    assert_eq!(store.row_counts().unwrap()[..2], [1, 1]);
    let again = acquire(&store, "r1").await;
    // The old expiry-index entry moved with the row.
    assert_eq!(store.row_counts().unwrap()[..2], [1, 1]);
    // And an expired claim: recording over it stores with a fresh horizon.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        store.record("r1", &again, EVENT).await.unwrap(),
        Recorded::Stored
    );
    assert!(matches!(
        store.claim("r1", FP).await.unwrap(),
        Claim::Recorded { .. }
    ));
    assert_eq!(store.row_counts().unwrap()[..2], [1, 1]);
}

#[tokio::test]
async fn the_sweeper_deletes_expired_entries_only() {
    let dir = TempDir::new();
    // Written by a store whose sweeper does not run during the test, so the rows are all
    // there to count whatever the machine's speed; each row carries its own expiry.
    let store = open(&settings_with(&dir, 20, 60, 60_000));
    for i in 0..20 {
        let id = format!("r{i}");
        let token = acquire(&store, &id).await;
        if i % 2 == 0 {
            store.record(&id, &token, EVENT).await.unwrap();
        }
    }
    store
        .cooldown_acquire("short", "r0", Duration::from_millis(60))
        .await
        .unwrap();
    store
        .cooldown_acquire("long", "r1", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.row_counts().unwrap(), [20, 20, 2, 2]);
    drop(store);

    // Reopened with a short sweep interval: it cleans up what an earlier run left behind.
    let store = open(&settings_with(&dir, 20, 60, 25));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let counts = store.row_counts().unwrap();
        if counts == [0, 0, 1, 1] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sweeper left {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store
            .cooldown_acquire("long", "r2", Duration::from_secs(60))
            .await
            .unwrap(),
        Cooldown::Taken {
            request_id: "r1".into(),
            task_id: None
        }
    );
}

#[tokio::test]
async fn a_sweep_batch_stops_at_its_limit() {
    let dir = TempDir::new();
    let store = open(&settings_with(&dir, 10, 20, 60_000));
    for i in 0..7 {
        acquire(&store, &format!("r{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(40)).await;
    let inner = Arc::clone(&store.inner);
    let swept = tokio::task::spawn_blocking(move || {
        let first = sweep_batch(&inner, Swept::Records, 3)?;
        let counts_after_first = {
            use redb::{ReadableDatabase, ReadableTableMetadata};
            let txn = inner.db.begin_read().or_backend()?;
            txn.open_table(RECORDS).or_backend()?.len().or_backend()?
        };
        let rest = [
            sweep_batch(&inner, Swept::Records, 3)?,
            sweep_batch(&inner, Swept::Records, 3)?,
            sweep_batch(&inner, Swept::Records, 3)?,
        ];
        Ok::<_, StoreError>((first, counts_after_first, rest))
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(swept, (3, 4, [3, 1, 0]));
    assert_eq!(store.row_counts().unwrap(), [0, 0, 0, 0]);
}

#[tokio::test]
async fn daily_counters_survive_closing_and_reopening() {
    let dir = TempDir::new();
    let settings = settings(&dir);
    let store = open(&settings);
    assert!(store.daily_reserve("k", DAY, 2).await.unwrap());
    assert!(store.daily_reserve("k", DAY, 2).await.unwrap());
    store.daily_release("k", DAY).await.unwrap();
    drop(store);

    let store = open(&settings);
    assert!(store.daily_reserve("k", DAY, 2).await.unwrap());
    assert!(!store.daily_reserve("k", DAY, 2).await.unwrap());
}

#[tokio::test]
async fn expired_daily_counters_count_as_absent_and_are_swept() {
    let dir = TempDir::new();
    // No sweep during the first part: expired rows are still there to count.
    let store = open(&settings_with(&dir, 20, 60_000, 60_000));
    let short = Duration::from_millis(50);
    assert!(store.reserve_daily("k", DAY, 1, short).await.unwrap());
    assert!(!store.reserve_daily("k", DAY, 1, short).await.unwrap());
    assert!(store.reserve_daily("gone", DAY, 1, short).await.unwrap());
    assert!(store.daily_reserve("long", DAY, 1).await.unwrap());
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(store.counter_row_counts().unwrap(), [3, 3]);
    // An expired counter is not released (it reads as 0) ...
    store.daily_release("gone", DAY).await.unwrap();
    // ... and reads as absent: counting starts over, with a new expiry; the index entry moves.
    assert!(store.daily_reserve("k", DAY, 1).await.unwrap());
    assert!(!store.daily_reserve("k", DAY, 1).await.unwrap());
    assert_eq!(store.counter_row_counts().unwrap(), [3, 3]);
    drop(store);

    // Reopened with a short sweep interval: only the expired counter goes.
    let store = open(&settings_with(&dir, 20, 60_000, 25));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let counts = store.counter_row_counts().unwrap();
        if counts == [2, 2] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sweeper left {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!store.daily_reserve("k", DAY, 1).await.unwrap());
    assert!(!store.daily_reserve("long", DAY, 1).await.unwrap());
    assert!(store.daily_reserve("gone", DAY, 1).await.unwrap());
}

#[test]
fn open_outside_a_runtime_is_an_error() {
    let dir = TempDir::new();
    let err = EmbeddedStore::open(&settings(&dir), "w".into()).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}

/// Keeps the writer busy inside a transaction of its own until the returned sender is used or
/// dropped. Returns once the writer is inside it, so that everything queued meanwhile forms
/// the writer's next batch.
fn hold_writer(store: &EmbeddedStore) -> std::sync::mpsc::Sender<()> {
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let _answer = store
        .inner
        .writer
        .queue(Needs::Nothing, false, move |_, _| {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
            Ok(((), Changed::No))
        })
        .unwrap();
    started_rx.recv().unwrap();
    go_tx
}

/// Polls `op` once, so that it queues its operation, and hands it back to be awaited later.
fn queued<F: Future>(op: F) -> std::pin::Pin<Box<F>> {
    let mut op = Box::pin(op);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        op.as_mut().poll(&mut cx).is_pending(),
        "answered while the writer was held"
    );
    op
}

#[tokio::test]
async fn operations_in_one_batch_see_each_others_effects() {
    let dir = TempDir::new();
    let store = open(&settings(&dir));
    let minute = Duration::from_secs(60);
    let unrelated = ClaimToken(b"C|worker-b|1".to_vec());

    let release = hold_writer(&store);
    // All queued, in this order, while the writer is held: they form its next batch.
    let recorded = queued(store.record("r1", &unrelated, EVENT));
    let seen_recorded = queued(store.claim("r1", FP));
    // A non-durable operation (it changes nothing) amid the durable ones.
    let checked = queued(store.check());
    let earlier = queued(store.record("r1", &unrelated, b"{}"));
    let claimed = queued(store.claim("r2", FP));
    let held = queued(store.claim("r2", FP));
    let free = queued(store.cooldown_acquire("k", "a", minute));
    let taken = queued(store.cooldown_acquire("k", "b", minute));
    let reserved = [
        queued(store.daily_reserve("d", DAY, 2)),
        queued(store.daily_reserve("d", DAY, 2)),
        queued(store.daily_reserve("d", DAY, 2)),
    ];
    let unreserved = queued(store.daily_release("d", DAY));
    let reserved_again = queued(store.daily_reserve("d", DAY, 2));
    drop(release);

    assert_eq!(recorded.await.unwrap(), Recorded::Stored);
    assert_eq!(
        seen_recorded.await.unwrap(),
        Claim::Recorded {
            event: EVENT.to_vec(),
        }
    );
    checked.await.unwrap();
    assert_eq!(earlier.await.unwrap(), Recorded::Earlier(EVENT.to_vec()));
    let token = match claimed.await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    };
    assert!(matches!(held.await.unwrap(), Claim::Held { worker, .. } if worker == "worker-a"));
    assert_eq!(free.await.unwrap(), Cooldown::Free);
    assert_eq!(
        taken.await.unwrap(),
        Cooldown::Taken {
            request_id: "a".into(),
            task_id: None
        }
    );
    let mut counted = Vec::new();
    for reserve in reserved {
        counted.push(reserve.await.unwrap());
    }
    assert_eq!(counted, [true, true, false]);
    unreserved.await.unwrap();
    assert!(reserved_again.await.unwrap());

    // And all of it was committed.
    assert_eq!(store.row_counts().unwrap(), [2, 2, 1, 1]);
    assert_eq!(store.counter_row_counts().unwrap(), [1, 1]);
    assert_eq!(
        store.record("r2", &token, EVENT).await.unwrap(),
        Recorded::Stored
    );
    assert!(!store.daily_reserve("d", DAY, 2).await.unwrap());
}

#[tokio::test]
async fn a_failed_operation_leaves_the_rest_of_its_batch_answered_and_committed() {
    let dir = TempDir::new();
    let settings = settings(&dir);
    let store = open(&settings);
    let stale = ClaimToken(b"C|worker-b|1".to_vec());

    let release = hold_writer(&store);
    let claimed = queued(store.claim("r1", FP));
    // Sees the claim just made, which is not its token: fails alone.
    let conflict = queued(store.record("r1", &stale, EVENT));
    let held = queued(store.claim("r1", FP));
    let other = queued(store.record("r2", &stale, EVENT));
    let other_seen = queued(store.claim("r2", FP));
    drop(release);

    assert!(matches!(claimed.await.unwrap(), Claim::Acquired(_)));
    assert!(matches!(conflict.await, Err(StoreError::Conflict)));
    assert!(matches!(held.await.unwrap(), Claim::Held { .. }));
    assert_eq!(other.await.unwrap(), Recorded::Stored);
    assert_eq!(
        other_seen.await.unwrap(),
        Claim::Recorded {
            event: EVENT.to_vec(),
        }
    );
    drop(store);

    let store = open(&settings);
    assert!(matches!(
        store.claim("r1", FP).await.unwrap(),
        Claim::Held { .. }
    ));
    assert!(matches!(
        store.claim("r2", FP).await.unwrap(),
        Claim::Recorded { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_and_records_of_distinct_ids_all_survive_reopening() {
    let dir = TempDir::new();
    let settings = settings(&dir);
    let store = open(&settings);
    let event = |i: usize| format!(r#"{{"status":"dialed","n":{i}}}"#).into_bytes();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("r{i}");
                let token = acquire(&store, &id).await;
                store.record(&id, &token, &event(i)).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), Recorded::Stored);
    }
    assert_eq!(store.row_counts().unwrap()[..2], [200, 200]);
    drop(store);

    let store = open(&settings);
    for i in 0..200 {
        assert_eq!(
            store.claim(&format!("r{i}"), FP).await.unwrap(),
            Claim::Recorded { event: event(i) },
            "r{i}"
        );
    }
    assert_eq!(store.row_counts().unwrap()[..2], [200, 200]);
}

#[tokio::test]
async fn a_panicking_operation_fails_and_the_writer_goes_on() {
    let dir = TempDir::new();
    let store = open(&settings(&dir));
    let answer = store
        .inner
        .writer
        .queue(Needs::Fsync, false, |_, _| -> Result<((), Changed), _> {
            panic!("a bug in an operation")
        })
        .unwrap();
    assert!(matches!(
        answer.await.unwrap(),
        Err(StoreError::Backend { .. })
    ));
    let token = acquire(&store, "r1").await;
    assert_eq!(
        store.record("r1", &token, EVENT).await.unwrap(),
        Recorded::Stored
    );
}

#[tokio::test]
async fn expired_call_results_read_as_absent_may_be_taken_again_and_are_swept() {
    let dir = TempDir::new();
    // A record TTL of 60 ms, and no sweep: the expired rows stay to be looked at.
    let store = open(&settings_with(&dir, 20, 60, 60_000));
    for (contact, request) in [("c1", "r1"), ("c2", "r2")] {
        assert_eq!(
            store.claim_contact("i", contact, request).await.unwrap(),
            request
        );
        assert_eq!(
            store.record_call_result(request, EVENT).await.unwrap(),
            EVENT
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.call_result_row_counts().unwrap(), [4, 4]);
    drop(store);

    // Past their expiry, not yet swept: absent, and free to take.
    let settings = settings_with(&dir, 20, 60_000, 60_000);
    let store = open(&settings);
    assert_eq!(
        store.contact_holders("i", &["c1", "c2"]).await.unwrap(),
        [None, None]
    );
    assert_eq!(store.call_result("r1").await.unwrap(), None);
    assert_eq!(store.claim_contact("i", "c1", "r9").await.unwrap(), "r9");
    assert_eq!(store.record_call_result("r1", b"{}").await.unwrap(), b"{}");
    // The taken rows moved their index entries to their new expiry.
    assert_eq!(store.call_result_row_counts().unwrap(), [4, 4]);
    drop(store);

    // Reopened with a short sweep interval: only the expired entries go.
    let store = open(&settings_with(&dir, 20, 60_000, 25));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let counts = store.call_result_row_counts().unwrap();
        if counts == [2, 2] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sweeper left {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.contact_holders("i", &["c1", "c2"]).await.unwrap(),
        [Some("r9".to_owned()), None]
    );
    assert_eq!(store.call_result("r1").await.unwrap(), Some(b"{}".to_vec()));
    assert_eq!(store.call_result("r2").await.unwrap(), None);
}

#[tokio::test]
async fn call_results_survive_closing_and_reopening() {
    let dir = TempDir::new();
    let settings = settings(&dir);
    let store = open(&settings);
    store.claim_contact("i", "c1", "r1").await.unwrap();
    store.record_call_result("r1", EVENT).await.unwrap();
    drop(store);

    let store = open(&settings);
    assert_eq!(store.claim_contact("i", "c1", "r2").await.unwrap(), "r1");
    assert_eq!(store.record_call_result("r1", b"{}").await.unwrap(), EVENT);
}
