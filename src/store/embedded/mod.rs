//! Embedded backend: dial records, cooldowns, daily call counters and call results in one local
//! [redb] file, for a single replica.
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
//! | `call_results`        | `c<instance length>\|<instance_id>\|<contact_id>` | `(expires_at_ms, holding request_id)` |
//! |                       | `r\|<request_id>`            | `(expires_at_ms, call-result event)`    |
//! | `call_results_by_expiry` | `(expires_at_ms, call-result key)` | `()`                        |
//!
//! A counter key leads with the day label's length, so it is unambiguous whatever the day label and
//! key contain. A counter's expiry is set when it is created and not moved by later
//! reservations or releases.
//!
//! `call_results` holds both halves of [`CallResults`]: contacts and results, told apart by the
//! key's first letter. A contact key gives the instance id's length, so no separator inside an
//! id can make two (instance, contact) pairs one key. Both are first writer wins: an entry's
//! value and expiry (`record_ttl` from its first write) never change until it expires.
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
//! second dial or a wrong outcome (`claim`, `record`, `release`, the cooldowns, the daily counters,
//! contacts and call results) are durable: fsynced before they return. The sweeper is not: losing a sweep in a crash is
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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError, Durability, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    CallResults, CalleeState, Claim, ClaimToken, Cooldown, DAILY_COUNTER_TTL, DialRecords, Record,
    Recorded, StoreError, check_fingerprint, holder,
};
use crate::config::StoreSettings;

mod sweep;
mod writer;

use sweep::{Swept, sweep_loop, sweep_table};
use writer::{Needs, Writer, writer_stopped};

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
const CALL_RESULTS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("call_results");
const CALL_RESULTS_BY_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("call_results_by_expiry");

type ExpiryTable<'t> = redb::Table<'t, (u64, &'static str), ()>;
type RecordTable<'t> = redb::Table<'t, &'static str, (u64, &'static [u8])>;
type CooldownTable<'t> = redb::Table<'t, &'static str, (u64, &'static str, Option<&'static str>)>;
type CounterTable<'t> = redb::Table<'t, &'static str, (u64, u32)>;

/// The file-backed [`DialStore`](super::DialStore) for a single replica.
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
    /// Queues one sweep batch: up to `limit` expired rows of one kind, in a non-durable
    /// transaction of its own, answered with how many index entries it removed.
    fn sweep(
        &self,
        kind: Swept,
        limit: usize,
    ) -> Result<oneshot::Receiver<Result<usize, StoreError>>, StoreError> {
        // Losing a sweep in a crash only leaves rows that read as absent; the next durable commit
        // persists it anyway. No fsync while holding the writer lock.
        self.writer.queue(Needs::Commit, true, move |txn, now| {
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
                Swept::CallResults => {
                    sweep_table(txn, CALL_RESULTS, CALL_RESULTS_BY_EXPIRY, now, limit, |v| {
                        v.0
                    })?
                }
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
        txn.open_table(CALL_RESULTS).or_backend()?;
        txn.open_table(CALL_RESULTS_BY_EXPIRY).or_backend()?;
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
        let answer = self.inner.writer.queue(needs, false, op)?;
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

    /// Row counts of (call results and contacts, their expiry index).
    #[cfg(test)]
    fn call_result_row_counts(&self) -> Result<[u64; 2], StoreError> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = self.inner.db.begin_read().or_backend()?;
        Ok([
            txn.open_table(CALL_RESULTS)
                .or_backend()?
                .len()
                .or_backend()?,
            txn.open_table(CALL_RESULTS_BY_EXPIRY)
                .or_backend()?
                .len()
                .or_backend()?,
        ])
    }

    /// Stores `value` under the `call_results` key `key` unless a live entry is there, and
    /// returns the entry that is there now. Durable before it returns, like a dial record:
    /// losing it could let a second request take the same contact, or a second, different
    /// result be published.
    async fn first_wins(&self, key: String, value: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let record_ttl_ms = self.inner.record_ttl_ms;
        self.write(Durability::Immediate, move |txn, now| {
            let mut rows = txn.open_table(CALL_RESULTS).or_backend()?;
            let mut index = txn.open_table(CALL_RESULTS_BY_EXPIRY).or_backend()?;
            let current = read_record(&rows, &key)?;
            let old_expiry = match current {
                Some((expires, stored)) if expires > now => return Ok((stored, Changed::No)),
                // Absent, or expired and not yet swept: ours, with a fresh horizon.
                current => current.map(|(expires, _)| expires),
            };
            let expires = now.saturating_add(record_ttl_ms);
            rows.insert(key.as_str(), (expires, value.as_slice()))
                .or_backend()?;
            move_expiry(&mut index, &key, old_expiry, expires)?;
            Ok((value.clone(), Changed::Yes))
        })
        .await
    }

    /// The live entries under `keys` in `call_results`, in the same order.
    async fn live_call_results(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        // Through the writer, although it only reads: it sees every write in commit order and
        // tells live from expired on the same clock as the writes. Nothing changes, so nothing
        // is committed or fsynced.
        self.write(Durability::None, move |txn, now| {
            let rows = txn.open_table(CALL_RESULTS).or_backend()?;
            let live = keys
                .iter()
                .map(|key| {
                    Ok(read_record(&rows, key)?
                        .and_then(|(expires, value)| (expires > now).then_some(value)))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok((live, Changed::No))
        })
        .await
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

impl DialRecords for EmbeddedStore {
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

    async fn check(&self) -> Result<(), StoreError> {
        // Through the writer, like every change: proves the thread and the file both work.
        self.write(Durability::None, |txn, _now| {
            txn.open_table(RECORDS).or_backend()?;
            Ok(((), Changed::No))
        })
        .await
    }
}

impl CalleeState for EmbeddedStore {
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
}

impl CallResults for EmbeddedStore {
    async fn claim_contact(
        &self,
        instance_id: &str,
        contact_id: &str,
        request_id: &str,
    ) -> Result<String, StoreError> {
        let key = contact_key(instance_id, contact_id);
        holder(self.first_wins(key, request_id.as_bytes().to_vec()).await?)
    }

    async fn contact_holders(
        &self,
        instance_id: &str,
        contact_ids: &[&str],
    ) -> Result<Vec<Option<String>>, StoreError> {
        if contact_ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys = contact_ids
            .iter()
            .map(|contact_id| contact_key(instance_id, contact_id))
            .collect();
        self.live_call_results(keys)
            .await?
            .into_iter()
            .map(|stored| stored.map(holder).transpose())
            .collect()
    }

    async fn record_call_result(
        &self,
        request_id: &str,
        result: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        self.first_wins(result_key(request_id), result.to_vec())
            .await
    }

    async fn call_result(&self, request_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut live = self.live_call_results(vec![result_key(request_id)]).await?;
        Ok(live.pop().flatten())
    }
}

/// The `call_results` key of a contact: `c<instance length>|<instance_id>|<contact_id>`. The
/// length makes it unambiguous whatever the ids hold, and the leading `c` keeps it apart from
/// every result key.
fn contact_key(instance_id: &str, contact_id: &str) -> String {
    format!("c{}|{instance_id}|{contact_id}", instance_id.len())
}

/// The `call_results` key of a request's call result: `r|<request_id>`.
fn result_key(request_id: &str) -> String {
    format!("r|{request_id}")
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

/// A record row, copied out of the transaction: `(expires_at_ms, encoded Record)`. Also reads
/// `call_results` rows, which have the same shape: `(expires_at_ms, value)`.
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
mod tests;
