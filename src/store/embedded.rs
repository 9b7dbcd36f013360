//! Embedded backend: dial records, cooldowns and daily call counters in one local [redb] file, for
//! a single replica.
//!
//! # Why redb
//!
//! The store is where "never ring a customer twice" is kept, so it must survive a `kill -9` (or a
//! power cut) with every acknowledged claim intact. redb is a pure-Rust, ACID key-value store: each
//! commit writes copy-on-write B-tree pages and then flips a checksummed commit slot in the file
//! header, so a crash leaves either the old or the new state, never a torn one, and opening a file a
//! killed process left behind repairs it. It is one file, needs no C toolchain, and is actively
//! maintained. The alternatives fit worse:
//!
//! - sled: its stable line is an unmaintained 0.34 beta, with an on-disk format still in flux;
//! - RocksDB: a heavy C++ build and a tuning surface far beyond a few small tables;
//! - SQLite: a C dependency and SQL for what is a key-value job.
//!
//! # Layout
//!
//! | table                 | key                        | value                                   |
//! |-----------------------|----------------------------|-----------------------------------------|
//! | `records`             | `request_id`               | `(expires_at_ms, encoded Record)`       |
//! | `records_by_expiry`   | `(expires_at_ms, request_id)` | `()`                                 |
//! | `cooldowns`           | cooldown key               | `(expires_at_ms, holder request_id, task_id)` |
//! | `cooldowns_by_expiry` | `(expires_at_ms, key)`     | `()`                                    |
//! | `daily_counters`      | `<day length>\|<day>\|<key>` | `(expires_at_ms, count)`              |
//! | `daily_counters_by_expiry` | `(expires_at_ms, counter key)` | `()`                          |
//!
//! A counter key leads with the day label's length, so it is unambiguous whatever the day label and
//! key contain. A counter's expiry is set when it is created and not moved by later
//! reservations or releases.
//!
//! Every write keeps a row and its expiry-index entry in step, in the same transaction. Expired
//! rows are treated as absent by every operation; a background sweeper deletes them later, walking
//! the expiry indexes in small batches so it never holds the single writer lock for long.
//!
//! # Atomicity and durability
//!
//! Every operation runs inside a redb write transaction: redb admits one writer at a time, so a
//! read-check-write inside it is atomic, the way a Lua script is in the Redis backend. Time is the
//! local system clock (ms since the epoch), read by each operation once the writer lock is held, so
//! that operations see time move forward in commit order. Operations whose loss could lead to a
//! second dial or a wrong outcome (`claim`, `record`, `release`, the cooldowns, the daily counters)
//! are durable: fsynced before they return. The sweeper is not: losing a sweep in a crash is
//! harmless (an expired row is treated as absent), and the next durable commit persists it anyway.
//! An operation that finds nothing to change needs no commit and costs no fsync.
//!
//! # Group commit
//!
//! An fsync per operation (two per request) capped the worker at about a thousand requests a
//! second, so operations share commits. One writer thread owns all writing: each call queues its operation and waits
//! for the answer. The writer takes the first queued operation and every other one already
//! waiting (at most 256), applies them in queue order inside one write transaction, each
//! seeing the effects of those before it, and commits once: fsynced if any operation that changed
//! something needs it, without fsync if none does, not at all if nothing changed. Only then does
//! it answer them all, so no caller hears of an effect before it is as durable as that caller's
//! operation requires. The answers are exactly those of one transaction per operation in queue
//! order:
//!
//! - if the commit fails, none of the batch's effects exist and every operation gets the error;
//! - if an operation fails (a conflicting claim, a corrupt row, a storage error), the transaction
//!   is abandoned and the batch is run again in three parts, each its own transaction: the
//!   operations before the failed one, the failed one alone, and the rest.
//!
//! No batching delay is added: while one commit's fsync runs, the operations that arrive queue up
//! and form the next batch, so batches grow with load and a lone operation is not held back. The
//! sweeper's batches go through the same writer, each in a transaction of its own, so they never
//! hold up (nor wait long behind) the pipeline's operations.
//!
//! redb's "quick repair" is left off: it would double the cost of every commit to save the full
//! repair that follows a crash, which reads the whole file once at start-up (about half a second
//! for 300,000 records on a warm cache).
//!
//! redb is blocking; the writer is a plain thread, and callers wait for it without blocking the
//! async runtime.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{
    Database, DatabaseError, Durability, ReadableTable, TableDefinition, Value, WriteTransaction,
};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Claim, ClaimToken, Cooldown, DAILY_COUNTER_TTL, DialStore, Record, Recorded, StoreError,
    check_fingerprint,
};
use crate::config::StoreSettings;

/// The database file inside `StoreSettings::data_dir`.
pub const FILE_NAME: &str = "dialex.redb";

const BACKEND: &str = "embedded";

/// Most rows the sweeper deletes per write transaction: each batch holds the writer lock (and so
/// delays claims) for a few milliseconds (about 6 ms measured, release build), not for as long as
/// a backlog takes.
const SWEEP_BATCH: usize = 1_000;

/// Most operations the writer applies in one transaction. Bounds how long one batch holds the
/// writer lock; under load the queue is rarely this deep (it holds at most one operation per
/// request in flight).
const MAX_BATCH: usize = 256;

/// redb's default page cache is 1 GiB, which a memory-limited container would pay for once the
/// file grows; the working set here (recent requests) is small.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

const RECORDS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("records");
const RECORDS_BY_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("records_by_expiry");
const COOLDOWNS: TableDefinition<&str, (u64, &str, Option<&str>)> =
    TableDefinition::new("cooldowns");
const COOLDOWNS_BY_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("cooldowns_by_expiry");
const DAILY_COUNTERS: TableDefinition<&str, (u64, u32)> = TableDefinition::new("daily_counters");
const DAILY_COUNTERS_BY_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("daily_counters_by_expiry");

type ExpiryTable<'t> = redb::Table<'t, (u64, &'static str), ()>;
type RecordTable<'t> = redb::Table<'t, &'static str, (u64, &'static [u8])>;
type CooldownTable<'t> = redb::Table<'t, &'static str, (u64, &'static str, Option<&'static str>)>;
type CounterTable<'t> = redb::Table<'t, &'static str, (u64, u32)>;

/// The file-backed [`DialStore`] for a single replica.
///
/// Cheap to clone (an `Arc` inside); all clones share one open database and its writer thread.
/// When the last clone is dropped the sweeper stops, the writer finishes the operations already
/// queued (the drop waits for it: milliseconds) and the file is closed before the drop returns.
/// Only one process can have the file open: a second [`EmbeddedStore::open`] of the same
/// `data_dir` fails while the first is alive, so two replicas can never share it by accident.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The writer thread's database, for tests to read directly.
    #[cfg(test)]
    db: Arc<Database>,
    path: PathBuf,
    worker_id: String,
    lease_ms: u64,
    record_ttl_ms: u64,
    writer: Writer,
    /// Cancels the sweeper when the last store clone goes, so it does not sleep on for a whole
    /// interval holding nothing but a dead `Weak`.
    _stop_sweeper: DropGuard,
}

impl Inner {
    /// Queues `op` for the writer and returns where its answer will arrive. `op` gets the
    /// transaction and the time (read once the writer lock is held) and says whether it changed
    /// anything; a change needs `needs` from the commit. `alone` runs it in a transaction of its
    /// own rather than in a batch with others.
    ///
    /// If `op` (or any operation in its batch) fails, the whole transaction is abandoned, so a
    /// failure part-way through leaves no trace, and the batch is run again in parts (see
    /// [`run_batch`]): `op` may run more than once, each time in a fresh transaction, and is
    /// answered for the run that settles.
    fn submit<T, F>(
        &self,
        needs: Needs,
        alone: bool,
        op: F,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction, u64) -> Result<(T, Changed), StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.writer.submit(Box::new(Pending {
            op,
            needs,
            alone,
            answer: None,
            reply: Some(reply),
        }))?;
        Ok(answer)
    }

    /// Queues one sweep batch: up to `limit` expired rows of one kind, in a non-durable
    /// transaction of its own, answered with how many index entries it removed.
    fn sweep(
        &self,
        kind: Swept,
        limit: usize,
    ) -> Result<oneshot::Receiver<Result<usize, StoreError>>, StoreError> {
        // Losing a sweep in a crash only leaves rows that read as absent; the next durable commit
        // persists it anyway. No fsync while holding the writer lock.
        self.submit(Needs::Commit, true, move |txn, now| {
            let deleted = match kind {
                Swept::Records => {
                    sweep_table(txn, RECORDS, RECORDS_BY_EXPIRY, now, limit, |v| v.0)?
                }
                Swept::Cooldowns => {
                    sweep_table(txn, COOLDOWNS, COOLDOWNS_BY_EXPIRY, now, limit, |v| v.0)?
                }
                Swept::DailyCounters => sweep_table(
                    txn,
                    DAILY_COUNTERS,
                    DAILY_COUNTERS_BY_EXPIRY,
                    now,
                    limit,
                    |v| v.0,
                )?,
            };
            let changed = if deleted == 0 {
                Changed::No
            } else {
                Changed::Yes
            };
            Ok((deleted, changed))
        })
    }
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .field("worker_id", &self.inner.worker_id)
            .field("lease_ms", &self.inner.lease_ms)
            .field("record_ttl_ms", &self.inner.record_ttl_ms)
            .finish()
    }
}

impl EmbeddedStore {
    /// Opens (creating it and `data_dir` if needed) `data_dir/dialex.redb`, starts the writer
    /// thread, and starts the sweeper on the current tokio runtime.
    ///
    /// `worker_id` is written into claims, so [`Claim::Held`] can name the holder.
    ///
    /// Blocks while it opens the file. After an unclean exit (crash, `kill -9`) redb first repairs
    /// the file, which reads all of it: seconds for a large file, logged as it goes. Call it from
    /// `spawn_blocking` if the caller must not block a runtime thread.
    ///
    /// Fails outside a tokio runtime, if the directory or file cannot be created or opened, if
    /// another process (or another live store in this one) has the file open, or if the writer
    /// thread cannot be started.
    pub fn open(settings: &StoreSettings, worker_id: String) -> Result<EmbeddedStore, StoreError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| backend("EmbeddedStore::open must be called inside a tokio runtime"))?;
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE_NAME);

        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        let repair_path = path.clone();
        // The callback may run many times; log once per tenth of progress, not every call.
        let logged_tenths = AtomicU8::new(u8::MAX);
        builder.set_repair_callback(move |session| {
            let tenths = (session.progress() * 10.0).clamp(0.0, 9.0) as u8;
            if logged_tenths.swap(tenths, Ordering::Relaxed) != tenths {
                tracing::warn!(
                    path = %repair_path.display(),
                    progress = format!("{:.0}%", session.progress() * 100.0),
                    "store file was not closed cleanly (crash or kill); repairing it before use"
                );
            }
        });
        let db = builder.create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => backend(format!(
                "{} is already open in another process (or another store in this one); \
                 the embedded store serves exactly one replica",
                path.display()
            )),
            other => backend(format!("cannot open {}: {other}", path.display())),
        })?;

        // Create the tables up front, so reads never meet a missing table.
        let txn = db.begin_write().or_backend()?;
        txn.open_table(RECORDS).or_backend()?;
        txn.open_table(RECORDS_BY_EXPIRY).or_backend()?;
        txn.open_table(COOLDOWNS).or_backend()?;
        txn.open_table(COOLDOWNS_BY_EXPIRY).or_backend()?;
        txn.open_table(DAILY_COUNTERS).or_backend()?;
        txn.open_table(DAILY_COUNTERS_BY_EXPIRY).or_backend()?;
        txn.commit().or_backend()?;

        let db = Arc::new(db);
        let writer = Writer::start(Arc::clone(&db))?;
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            #[cfg(test)]
            db,
            path,
            worker_id,
            lease_ms: millis(settings.lease()),
            record_ttl_ms: millis(settings.record_ttl()),
            writer,
            _stop_sweeper: stop.clone().drop_guard(),
        });
        runtime.spawn(sweep_loop(
            Arc::downgrade(&inner),
            settings.sweep_interval(),
            stop,
        ));
        tracing::info!(path = %inner.path.display(), "embedded store open");
        Ok(EmbeddedStore { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `op` on the writer thread, in a write transaction it may share with other operations
    /// (see the module docs), and returns its answer once that transaction is settled. `op` gets
    /// the transaction and the time (read once the writer lock is held) and says whether it changed
    /// anything: a change is committed with at least `durability` before the answer comes back;
    /// an operation that changes nothing adds no commit (and no fsync). An error leaves no effect.
    ///
    /// `op` may run more than once (after another operation in its batch failed), always in a
    /// fresh transaction, so it takes what it needs by reference.
    async fn write<T, F>(&self, durability: Durability, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction, u64) -> Result<(T, Changed), StoreError> + Send + 'static,
    {
        let needs = match durability {
            Durability::None => Needs::Commit,
            _ => Needs::Fsync,
        };
        let answer = self.inner.submit(needs, false, op)?;
        answer.await.map_err(|_| writer_stopped())?
    }

    /// [`DialStore::daily_reserve`] with the counter's lifetime as a parameter (tests use a short
    /// one). Fsynced when it counts: a reservation must survive a crash, like a claim.
    async fn reserve_daily(
        &self,
        key: &str,
        day: &str,
        max: u32,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // Nothing can be counted: no transaction, no fsync.
        if max == 0 {
            return Ok(false);
        }
        let counter = counter_key(key, day);
        let ttl_ms = millis(ttl);
        self.write(Durability::Immediate, move |txn, now| {
            let mut counters = txn.open_table(DAILY_COUNTERS).or_backend()?;
            let mut index = txn.open_table(DAILY_COUNTERS_BY_EXPIRY).or_backend()?;
            let current = read_counter(&counters, &counter)?;
            let (expires, count) = match current {
                Some((expires, count)) if expires > now => (expires, count),
                // Absent or expired (not yet swept): a fresh counter, living from now.
                _ => (now.saturating_add(ttl_ms), 0),
            };
            if count >= max {
                return Ok((false, Changed::No));
            }
            counters
                .insert(counter.as_str(), (expires, count + 1))
                .or_backend()?;
            move_expiry(&mut index, &counter, current.map(|(old, _)| old), expires)?;
            Ok((true, Changed::Yes))
        })
        .await
    }

    /// Row counts of (daily counters, daily counter expiry index).
    #[cfg(test)]
    fn counter_row_counts(&self) -> Result<[u64; 2], StoreError> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = self.inner.db.begin_read().or_backend()?;
        Ok([
            txn.open_table(DAILY_COUNTERS)
                .or_backend()?
                .len()
                .or_backend()?,
            txn.open_table(DAILY_COUNTERS_BY_EXPIRY)
                .or_backend()?
                .len()
                .or_backend()?,
        ])
    }

    /// Row counts of (records, record expiry index, cooldowns, cooldown expiry index).
    #[cfg(test)]
    fn row_counts(&self) -> Result<[u64; 4], StoreError> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = self.inner.db.begin_read().or_backend()?;
        Ok([
            txn.open_table(RECORDS).or_backend()?.len().or_backend()?,
            txn.open_table(RECORDS_BY_EXPIRY)
                .or_backend()?
                .len()
                .or_backend()?,
            txn.open_table(COOLDOWNS).or_backend()?.len().or_backend()?,
            txn.open_table(COOLDOWNS_BY_EXPIRY)
                .or_backend()?
                .len()
                .or_backend()?,
        ])
    }
}

/// Whether a transaction wrote anything (and so must be committed).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Changed {
    Yes,
    No,
}

impl DialStore for EmbeddedStore {
    async fn claim(&self, request_id: &str, fingerprint: &str) -> Result<Claim, StoreError> {
        check_fingerprint(fingerprint)?;
        let id = request_id.to_owned();
        let fingerprint = fingerprint.to_owned();
        let worker = self.inner.worker_id.clone();
        let (lease_ms, record_ttl_ms) = (self.inner.lease_ms, self.inner.record_ttl_ms);
        self.write(Durability::Immediate, move |txn, now| {
            let mut records = txn.open_table(RECORDS).or_backend()?;
            let mut index = txn.open_table(RECORDS_BY_EXPIRY).or_backend()?;
            let old_expiry = match read_record(&records, &id)? {
                // Held, abandoned, recorded or reused: reported, never changed. An abandoned
                // claim stays as it is; whoever resolves it records with its token.
                Some((expires, bytes)) if expires > now => {
                    return Ok((Claim::found(bytes, now, &fingerprint)?, Changed::No));
                }
                // Absent, or expired past the duplicate-detection horizon: ours.
                current => current.map(|(expires, _)| expires),
            };
            let claim = Record::Claimed {
                worker: worker.clone(),
                lease_until_ms: now.saturating_add(lease_ms),
                fingerprint: Some(fingerprint.clone()),
            }
            .encode();
            let expires = now.saturating_add(record_ttl_ms);
            put_record(&mut records, &mut index, &id, old_expiry, expires, &claim)?;
            Ok((Claim::Acquired(ClaimToken(claim)), Changed::Yes))
        })
        .await
    }

    async fn record(
        &self,
        request_id: &str,
        token: &ClaimToken,
        event: &[u8],
    ) -> Result<Recorded, StoreError> {
        let id = request_id.to_owned();
        let value = token.result(event)?;
        let token = token.0.clone();
        let record_ttl_ms = self.inner.record_ttl_ms;
        self.write(Durability::Immediate, move |txn, now| {
            let mut records = txn.open_table(RECORDS).or_backend()?;
            let mut index = txn.open_table(RECORDS_BY_EXPIRY).or_backend()?;
            let current = read_record(&records, &id)?;
            let expires = match &current {
                Some((expires, bytes)) if *expires > now => match Record::decode(bytes)? {
                    Record::Recorded { event, .. } => {
                        return Ok((Recorded::Earlier(event), Changed::No));
                    }
                    // Still our claim (or the abandoned one being resolved): the result takes
                    // its place and keeps its horizon.
                    Record::Claimed { .. } if *bytes == token => *expires,
                    Record::Claimed { .. } => return Err(StoreError::Conflict),
                },
                // The claim is gone (expired or released) but the dial happened: keep the result
                // for a full horizon from now.
                _ => now.saturating_add(record_ttl_ms),
            };
            let old_expiry = current.map(|(expires, _)| expires);
            put_record(&mut records, &mut index, &id, old_expiry, expires, &value)?;
            Ok((Recorded::Stored, Changed::Yes))
        })
        .await
    }

    async fn release(&self, request_id: &str, token: &ClaimToken) -> Result<(), StoreError> {
        let id = request_id.to_owned();
        let token = token.0.clone();
        // Durable although losing it is safe (the claim would expire into `unknown`): releases
        // are rare and that outcome is worth an fsync to avoid.
        self.write(Durability::Immediate, move |txn, _| {
            let mut records = txn.open_table(RECORDS).or_backend()?;
            let mut index = txn.open_table(RECORDS_BY_EXPIRY).or_backend()?;
            match read_record(&records, &id)? {
                Some((expires, bytes)) if bytes == token => {
                    records.remove(id.as_str()).or_backend()?;
                    index.remove((expires, id.as_str())).or_backend()?;
                    Ok(((), Changed::Yes))
                }
                _ => Ok(((), Changed::No)),
            }
        })
        .await
    }

    async fn cooldown_acquire(
        &self,
        key: &str,
        request_id: &str,
        window: Duration,
    ) -> Result<Cooldown, StoreError> {
        // A zero window is "no cooldown": nothing to hold, nothing to fsync.
        if window.is_zero() {
            return Ok(Cooldown::Free);
        }
        let key = key.to_owned();
        let request_id = request_id.to_owned();
        let window_ms = millis(window);
        self.write(Durability::Immediate, move |txn, now| {
            let mut cooldowns = txn.open_table(COOLDOWNS).or_backend()?;
            let mut index = txn.open_table(COOLDOWNS_BY_EXPIRY).or_backend()?;
            let current = read_cooldown(&cooldowns, &key)?;
            if let Some(held) = &current
                && held.expires > now
            {
                let answer = if held.holder == request_id {
                    Cooldown::Free
                } else {
                    Cooldown::Taken {
                        request_id: held.holder.clone(),
                        task_id: held.task_id.clone(),
                    }
                };
                return Ok((answer, Changed::No));
            }
            let slot = Slot {
                expires: now.saturating_add(window_ms),
                holder: request_id.clone(),
                task_id: None,
            };
            put_cooldown(&mut cooldowns, &mut index, &key, current.as_ref(), &slot)?;
            Ok((Cooldown::Free, Changed::Yes))
        })
        .await
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
        let key = key.to_owned();
        let request_id = request_id.to_owned();
        let task_id = task_id.to_owned();
        let window_ms = millis(window);
        self.write(Durability::Immediate, move |txn, now| {
            let mut cooldowns = txn.open_table(COOLDOWNS).or_backend()?;
            let mut index = txn.open_table(COOLDOWNS_BY_EXPIRY).or_backend()?;
            let current = read_cooldown(&cooldowns, &key)?;
            if let Some(held) = &current
                && held.expires > now
                && held.holder != request_id
            {
                // Someone else's live slot: theirs to keep.
                return Ok(((), Changed::No));
            }
            let slot = Slot {
                expires: now.saturating_add(window_ms),
                holder: request_id.clone(),
                task_id: Some(task_id.clone()),
            };
            put_cooldown(&mut cooldowns, &mut index, &key, current.as_ref(), &slot)?;
            Ok(((), Changed::Yes))
        })
        .await
    }

    async fn cooldown_release(&self, key: &str, request_id: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        let request_id = request_id.to_owned();
        // Durable: a lost release would suppress the callee's next request for a whole window.
        self.write(Durability::Immediate, move |txn, _| {
            let mut cooldowns = txn.open_table(COOLDOWNS).or_backend()?;
            let mut index = txn.open_table(COOLDOWNS_BY_EXPIRY).or_backend()?;
            match read_cooldown(&cooldowns, &key)? {
                Some(held) if held.holder == request_id => {
                    cooldowns.remove(key.as_str()).or_backend()?;
                    index.remove((held.expires, key.as_str())).or_backend()?;
                    Ok(((), Changed::Yes))
                }
                _ => Ok(((), Changed::No)),
            }
        })
        .await
    }

    async fn daily_reserve(&self, key: &str, day: &str, max: u32) -> Result<bool, StoreError> {
        self.reserve_daily(key, day, max, DAILY_COUNTER_TTL).await
    }

    async fn daily_release(&self, key: &str, day: &str) -> Result<(), StoreError> {
        let counter = counter_key(key, day);
        // Durable: a lost release would cost the callee one of its calls for the day.
        self.write(Durability::Immediate, move |txn, now| {
            let mut counters = txn.open_table(DAILY_COUNTERS).or_backend()?;
            match read_counter(&counters, &counter)? {
                // Same expiry, so the index entry stays as it is. A counter at 0 stays until it
                // expires, keeping the lifetime it was created with.
                Some((expires, count)) if expires > now && count > 0 => {
                    counters
                        .insert(counter.as_str(), (expires, count - 1))
                        .or_backend()?;
                    Ok(((), Changed::Yes))
                }
                // Absent, expired (reads as 0) or already 0: never below zero, never created.
                _ => Ok(((), Changed::No)),
            }
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        // Through the writer, like every change: proves the thread and the file both work.
        self.write(Durability::None, |txn, _now| {
            txn.open_table(RECORDS).or_backend()?;
            Ok(((), Changed::No))
        })
        .await
    }
}

/// The `daily_counters` key of `key` on `day`: `<day length>|<day>|<key>`, unambiguous for any
/// day label and key.
fn counter_key(key: &str, day: &str) -> String {
    format!("{}|{day}|{key}", day.len())
}

/// A daily counter row: `(expires_at_ms, count)`.
fn read_counter(
    counters: &CounterTable<'_>,
    counter: &str,
) -> Result<Option<(u64, u32)>, StoreError> {
    Ok(counters.get(counter).or_backend()?.map(|row| row.value()))
}

/// A record row, copied out of the transaction: `(expires_at_ms, encoded Record)`.
fn read_record(records: &RecordTable<'_>, id: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    Ok(records.get(id).or_backend()?.map(|row| {
        let (expires, bytes) = row.value();
        (expires, bytes.to_vec())
    }))
}

/// Writes a record row and moves its expiry-index entry from `old_expiry` to `expires`.
fn put_record(
    records: &mut RecordTable<'_>,
    index: &mut ExpiryTable<'_>,
    id: &str,
    old_expiry: Option<u64>,
    expires: u64,
    value: &[u8],
) -> Result<(), StoreError> {
    records.insert(id, (expires, value)).or_backend()?;
    move_expiry(index, id, old_expiry, expires)
}

/// Moves the expiry-index entry of the row `key` from `old` (none for a new row) to `expires`.
/// An unchanged expiry leaves the index alone: the entry is already there (every row has one),
/// and rewriting it would cost a B-tree update per result recorded over a claim.
fn move_expiry(
    index: &mut ExpiryTable<'_>,
    key: &str,
    old: Option<u64>,
    expires: u64,
) -> Result<(), StoreError> {
    match old {
        Some(old) if old == expires => return Ok(()),
        Some(old) => {
            index.remove((old, key)).or_backend()?;
        }
        None => {}
    }
    index.insert((expires, key), ()).or_backend()?;
    Ok(())
}

/// A cooldown row, copied out of the transaction.
struct Slot {
    expires: u64,
    holder: String,
    task_id: Option<String>,
}

fn read_cooldown(cooldowns: &CooldownTable<'_>, key: &str) -> Result<Option<Slot>, StoreError> {
    Ok(cooldowns.get(key).or_backend()?.map(|row| {
        let (expires, holder, task_id) = row.value();
        Slot {
            expires,
            holder: holder.to_owned(),
            task_id: task_id.map(str::to_owned),
        }
    }))
}

/// Writes a cooldown row and moves its expiry-index entry from `old`'s expiry to the new one.
fn put_cooldown(
    cooldowns: &mut CooldownTable<'_>,
    index: &mut ExpiryTable<'_>,
    key: &str,
    old: Option<&Slot>,
    slot: &Slot,
) -> Result<(), StoreError> {
    cooldowns
        .insert(
            key,
            (slot.expires, slot.holder.as_str(), slot.task_id.as_deref()),
        )
        .or_backend()?;
    move_expiry(index, key, old.map(|old| old.expires), slot.expires)
}

/// Every `every`, deletes expired records, then expired cooldowns, then expired daily counters,
/// one batch per transaction on the writer thread, yielding between batches. Holds only a `Weak`
/// (upgraded just long enough to queue a batch), so it never keeps the store (and its file) open;
/// stops when `stop` is cancelled (the last store clone was dropped).
async fn sweep_loop(store: Weak<Inner>, every: Duration, stop: CancellationToken) {
    // A zero interval would spin; validation forbids it, this keeps the loop sane regardless.
    let every = every.max(Duration::from_millis(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        for kind in [Swept::Records, Swept::Cooldowns, Swept::DailyCounters] {
            let mut total = 0;
            loop {
                let queued = {
                    let Some(inner) = store.upgrade() else { return };
                    inner.sweep(kind, SWEEP_BATCH)
                };
                let batch = match queued {
                    Ok(answer) => answer.await.unwrap_or_else(|_| Err(writer_stopped())),
                    Err(error) => Err(error),
                };
                match batch {
                    Ok(deleted) => {
                        total += deleted;
                        if deleted < SWEEP_BATCH {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?kind, "store sweep failed; retrying next interval");
                        break;
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
                // Let the pipeline's transactions in between batches.
                tokio::task::yield_now().await;
            }
            if total > 0 {
                tracing::debug!(deleted = total, ?kind, "swept expired store entries");
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Swept {
    Records,
    Cooldowns,
    DailyCounters,
}

/// [`Inner::sweep`], waited for on the calling thread (not an async one).
#[cfg(test)]
fn sweep_batch(inner: &Inner, kind: Swept, limit: usize) -> Result<usize, StoreError> {
    inner
        .sweep(kind, limit)?
        .blocking_recv()
        .map_err(|_| writer_stopped())?
}

/// Deletes up to `limit` expiry-index entries due at or before `now`, and each one's row if the
/// row itself has expired (a row is only ever indexed under its current expiry; the check keeps a
/// live row safe even if that ever failed to hold).
fn sweep_table<V>(
    txn: &WriteTransaction,
    rows: TableDefinition<&'static str, V>,
    index: TableDefinition<(u64, &'static str), ()>,
    now: u64,
    limit: usize,
    expires_of: impl Fn(V::SelfType<'_>) -> u64,
) -> Result<usize, StoreError>
where
    V: Value + 'static,
{
    let mut rows = txn.open_table(rows).or_backend()?;
    let mut index = txn.open_table(index).or_backend()?;
    // `(now + 1, "")` is the first key due after `now`.
    let due = index
        .range(..(now.saturating_add(1), ""))
        .or_backend()?
        .take(limit)
        .map(|entry| {
            entry.or_backend().map(|(key, _)| {
                let (expires, id) = key.value();
                (expires, id.to_owned())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (expires, id) in &due {
        index.remove((*expires, id.as_str())).or_backend()?;
        let expired = rows
            .get(id.as_str())
            .or_backend()?
            .is_some_and(|row| expires_of(row.value()) <= now);
        if expired {
            rows.remove(id.as_str()).or_backend()?;
        }
    }
    Ok(due.len())
}

/// What an operation needs from the commit of its batch; a batch gets the most any of its
/// operations needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Needs {
    /// It changed nothing.
    Nothing,
    /// A commit, without fsync.
    Commit,
    /// A commit fsynced before anyone is answered.
    Fsync,
}

/// The writer thread's inbox, and the thread itself, joined when the last store clone goes.
struct Writer {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread; it owns all writing to `db` and stops when the `Writer` is
    /// dropped.
    fn start(db: Arc<Database>) -> Result<Writer, StoreError> {
        let (jobs, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || write_loop(&db, &inbox))
            .map_err(|e| backend(format!("cannot start the store writer thread: {e}")))?;
        Ok(Writer {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    fn submit(&self, job: Box<dyn Job>) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .ok_or_else(writer_stopped)?
            .send(job)
            .map_err(|_| writer_stopped())
    }
}

impl Drop for Writer {
    /// Closes the inbox and waits for the thread: it answers what is already queued, then exits,
    /// dropping its handle on the database, so the file is closed once the store is gone.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

/// One queued operation, type-erased for the writer's inbox.
trait Job: Send {
    /// Whether it runs in a transaction of its own rather than in a batch with others.
    fn alone(&self) -> bool;

    /// Applies the operation in `txn`, keeping its answer for [`Job::settle`], and says what its
    /// change needs from the commit. May be called again, in a fresh transaction, if its batch
    /// was abandoned.
    fn apply(&mut self, txn: &WriteTransaction) -> Result<Needs, StoreError>;

    /// Answers the caller once the transaction is settled: the kept answer if `outcome` is `Ok`
    /// (committed, or nothing to commit), else the error. Only the first call answers.
    fn settle(&mut self, outcome: Result<(), StoreError>);
}

struct Pending<T, F> {
    op: F,
    /// What the operation needs from the commit if it changed something.
    needs: Needs,
    alone: bool,
    answer: Option<T>,
    reply: Option<oneshot::Sender<Result<T, StoreError>>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnMut(&WriteTransaction, u64) -> Result<(T, Changed), StoreError> + Send,
{
    fn alone(&self) -> bool {
        self.alone
    }

    fn apply(&mut self, txn: &WriteTransaction) -> Result<Needs, StoreError> {
        let now = now_ms()?;
        let (answer, changed) = (self.op)(txn, now)?;
        self.answer = Some(answer);
        Ok(match changed {
            Changed::Yes => self.needs,
            Changed::No => Needs::Nothing,
        })
    }

    fn settle(&mut self, outcome: Result<(), StoreError>) {
        let Some(reply) = self.reply.take() else {
            return;
        };
        let result = outcome.and_then(|()| {
            self.answer
                .take()
                .ok_or_else(|| backend("store operation settled without being applied"))
        });
        // An error means the caller stopped waiting: nobody to tell.
        let _ = reply.send(result);
    }
}

/// The writer thread: takes the first queued job and every other one already waiting (up to
/// [`MAX_BATCH`], stopping before a job that must run alone), runs them as one batch, and repeats
/// until every store clone is gone and the queue is empty.
fn write_loop(db: &Database, inbox: &mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(job) => job,
            None => match inbox.recv() {
                Ok(job) => job,
                // Every sender is gone, and so is everything they queued.
                Err(mpsc::RecvError) => return,
            },
        };
        let alone = first.alone();
        batch.push(first);
        while !alone && batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(job) if job.alone() => {
                    next = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A panic (a bug) fails its batch instead of stopping the writer for good; redb aborts
        // the unwound transaction. Jobs already answered keep their answer.
        if catch_unwind(AssertUnwindSafe(|| run_batch(db, &mut batch))).is_err() {
            for job in &mut batch {
                job.settle(Err(backend(
                    "the store writer panicked during this operation",
                )));
            }
        }
        batch.clear();
    }
}

/// Runs `jobs` in order in one write transaction and answers each.
///
/// If one of them fails, the transaction is abandoned (none of the batch's effects are kept) and
/// the batch is run again in three parts, each its own transaction: the jobs before the failed
/// one, the failed one alone (answered with its error if it fails again), and the rest. Every job
/// thus gets the answer one transaction per job would have given it, and the others do not pay
/// for one's failure with an fsync each.
fn run_batch(db: &Database, jobs: &mut [Box<dyn Job>]) {
    match apply_batch(db, jobs) {
        Ok(()) => {
            for job in jobs {
                job.settle(Ok(()));
            }
        }
        Err(BatchError::Settle(error)) => {
            for job in jobs {
                job.settle(Err(error.clone()));
            }
        }
        Err(BatchError::Job { index, error }) => {
            if let [job] = jobs {
                job.settle(Err(error));
                return;
            }
            let (before, rest) = jobs.split_at_mut(index);
            let (failed, after) = rest.split_at_mut(1);
            for part in [before, failed, after] {
                if !part.is_empty() {
                    run_batch(db, part);
                }
            }
        }
    }
}

enum BatchError {
    /// Beginning, committing or aborting the transaction failed: every job gets the error.
    Settle(StoreError),
    /// The job at `index` failed; the transaction was abandoned.
    Job { index: usize, error: StoreError },
}

/// Applies `jobs` in order in one write transaction, then commits it with what the most demanding
/// job needs (or aborts it, if none changed anything).
fn apply_batch(db: &Database, jobs: &mut [Box<dyn Job>]) -> Result<(), BatchError> {
    let mut txn = db.begin_write().or_backend().map_err(BatchError::Settle)?;
    let mut needs = Needs::Nothing;
    for (index, job) in jobs.iter_mut().enumerate() {
        match job.apply(&txn) {
            Ok(job_needs) => needs = needs.max(job_needs),
            Err(error) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "store transaction abort failed");
                }
                return Err(BatchError::Job { index, error });
            }
        }
    }
    let durability = match needs {
        Needs::Nothing => return txn.abort().or_backend().map_err(BatchError::Settle),
        Needs::Commit => Durability::None,
        Needs::Fsync => Durability::Immediate,
    };
    txn.set_durability(durability)
        .or_backend()
        .and_then(|()| txn.commit().or_backend())
        .map_err(BatchError::Settle)
}

fn writer_stopped() -> StoreError {
    backend("the store writer thread has stopped")
}

/// Milliseconds since the epoch on the local clock (one replica: no clock to agree with).
fn now_ms() -> Result<u64, StoreError> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| backend("system clock is before 1970"))?;
    Ok(millis(since))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn backend(message: impl fmt::Display) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        message: message.to_string(),
    }
}

/// `?`-friendly conversion of any redb error into [`StoreError::Backend`].
trait OrBackend<T> {
    fn or_backend(self) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrBackend<T> for Result<T, E> {
    fn or_backend(self) -> Result<T, StoreError> {
        self.map_err(|e| backend(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

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
            for kind in [Kind::Records, Kind::Cooldowns, Kind::DailyCounters] {
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
            lease_until_ms >= before + settings.lease_ms
                && lease_until_ms <= after + settings.lease_ms,
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
            .submit(Needs::Nothing, false, move |_, _| {
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
            .submit(Needs::Fsync, false, |_, _| -> Result<((), Changed), _> {
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
}
