//! The do-not-call gate: numbers on the list are never dialed.
//!
//! [`DncList`] owns the answer to "may this callee be rung at all?". The pipeline asks it just
//! before dialing and ends a listed request as `suppressed` with code `dnc`. Two sources feed
//! it:
//!
//! - **A file** of numbers, one per line, in any spelling [`PhoneNumber::parse`] accepts
//!   (`+86 157-3203-6617`, `15732036617`, …); `#` starts a comment, blank lines are ignored.
//!   Every entry is normalised to national digits and held in memory, so a lookup is a hash-set
//!   probe under a read lock: no I/O and no waiting on a reload. Lines that are not phone
//!   numbers are skipped with one warning per load naming their line numbers, never their
//!   content (a near-miss is still someone's phone number).
//! - **A shared Redis set** `<prefix>:dnc`, optional, for lists managed at run time by an
//!   operator CLI across all replicas. It holds hex HMAC-SHA1 digests of the national number
//!   under a secret key, never raw numbers, for the same reason as the cooldown keys (see
//!   [`crate::gates::cooldown`]): a leaked dump cannot be reversed by hashing every possible
//!   number without the key.
//!
//! # Reloading
//!
//! Opt-out lists change while the worker runs, and a restart to pick up an opt-out would be
//! the wrong trade. A background task polls the file every `reload_interval` and reloads when
//! its fingerprint changes: length, modification and change times, inode, and the fully
//! resolved path. `std::fs::metadata` follows symlinks, and the resolved path changes when a
//! Kubernetes ConfigMap update re-points its `..data` symlink, so both in-place edits and
//! atomic swaps are seen. A changed fingerprint with unchanged content (a `touch`, a swap to an
//! identical copy) is recognised by a content hash and does not rebuild the set.
//!
//! A file that goes missing or unreadable keeps the last good list: an opt-out must not be
//! forgotten because a volume blinked. That is logged once per change of state, not on every
//! poll. At start-up, by contrast, a configured file that cannot be read is an error: starting
//! with no list would dial people who opted out.
//!
//! Edits should replace the file atomically (write a new file, then rename it over the old one
//! or re-point a symlink). A poll that lands in the middle of an in-place rewrite may load a
//! partial list; the next poll corrects it, since the fingerprint changes again.
//!
//! # Errors fail closed
//!
//! The file lookup cannot fail. A Redis lookup that errors or does not answer within
//! [`LOOKUP_TIMEOUT`] returns `Err`; whether that blocks the call is the caller's decision
//! (the pipeline fails closed: an unknown answer is not a "no"). No error message contains a
//! phone number, the Redis URL or a secret.

use std::collections::HashSet;
use std::fmt;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use redis::aio::ConnectionManager;
use secrecy::{ExposeSecret, SecretString};
use sha1::Sha1;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::phone::PhoneNumber;
use crate::redis_conn::{self, Redactor, Timeouts};

/// How long a membership check in the shared set may take. A lookup sits on the path of every
/// dial, so a stalled Redis must fail the check quickly rather than hold the call.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// How long [`DncList::add`] and [`DncList::remove`] may take. They serve an operator, not a
/// waiting call, so they can afford to ride out a reconnect.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`DncList::start`] waits for Redis, reconnection attempts included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many skipped line numbers one warning lists; the rest are only counted, so a file of
/// garbage cannot produce a megabyte-long log line.
const MAX_REPORTED_LINES: usize = 20;

/// Where the do-not-call list comes from. A plain struct the caller fills from configuration.
#[derive(Debug)]
pub struct DncSources {
    /// The list file; `None` for no file.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes. Must be positive.
    pub reload_interval: Duration,
    /// The shared Redis set, if any.
    pub redis: Option<RedisDnc>,
}

/// The shared do-not-call set in Redis.
pub struct RedisDnc {
    /// Redis URL (`redis://…`); may carry a password, so it is secret.
    pub url: SecretString,
    /// With `rediss://`: the CA file (`store.tls_ca_file`); empty for the system's roots.
    pub tls_ca_file: PathBuf,
    /// Key prefix; the set is `<key_prefix>:dnc`.
    pub key_prefix: String,
    /// HMAC key the set's members are hashed under. Every writer and reader of the set must
    /// use the same key, or their hashes will not match.
    pub hash_key: SecretString,
}

impl fmt::Debug for RedisDnc {
    // By hand, to say which fields are hidden; `SecretString`'s own Debug already redacts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDnc")
            .field("url", &"[redacted]")
            .field("key_prefix", &self.key_prefix)
            .field("hash_key", &"[redacted]")
            .finish()
    }
}

/// Why the do-not-call list could not be loaded or consulted.
///
/// Messages never contain a phone number, a Redis URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum DncError {
    /// The list file could not be read at start-up.
    #[error("cannot read the do-not-call file {}: {reason}", path.display())]
    File {
        /// The configured path.
        path: PathBuf,
        /// What the operating system said.
        reason: io::Error,
    },
    /// The settings cannot work (a zero reload interval, an empty key).
    #[error("invalid do-not-call settings: {0}")]
    Settings(&'static str),
    /// [`DncList::add`] or [`DncList::remove`] without a shared set configured.
    #[error("no shared do-not-call set is configured (it needs Redis)")]
    NoSharedSet,
    /// Redis refused, failed or answered something unexpected.
    #[error("shared do-not-call set: {0}")]
    Redis(String),
    /// Redis did not answer in time; whether a write took effect is unknown.
    #[error("shared do-not-call set: no answer from Redis within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// The do-not-call list: the file's numbers in memory, plus the shared Redis set if configured.
///
/// Cheap to clone (one `Arc`). The background reloader stops when the last clone is dropped.
#[derive(Clone)]
pub struct DncList {
    inner: Arc<Inner>,
}

struct Inner {
    file: Option<Arc<FileSet>>,
    shared: Option<SharedSet>,
    /// Cancels the reloader when the last [`DncList`] clone goes away. The reloader holds the
    /// [`FileSet`] but not [`Inner`], so it cannot keep itself alive.
    _stop_reloader: Option<DropGuard>,
}

impl fmt::Debug for DncList {
    // By hand: the Redis connection's own Debug is not ours to vet for secrets, and the
    // numbers themselves must never print.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DncList")
            .field(
                "file",
                &self.inner.file.as_ref().map(|file| file.path.display()),
            )
            .field("file_len", &self.file_len())
            .field(
                "shared_set",
                &self.inner.shared.as_ref().map(|shared| &shared.key),
            )
            .finish()
    }
}

impl DncList {
    /// Loads the file (if any), starts its reloader and connects to Redis (if configured).
    ///
    /// Must be called inside a Tokio runtime, which the reloader runs on.
    ///
    /// # Errors
    ///
    /// [`DncError::File`] if the configured file cannot be read (fail fast: a worker without
    /// its list would dial people who opted out), [`DncError::Settings`] for a zero reload
    /// interval or an empty Redis key prefix or hash key, and [`DncError::Redis`] if Redis
    /// cannot be reached in time or refuses to read the set.
    pub async fn start(settings: DncSources) -> Result<DncList, DncError> {
        if settings.file.is_some() && settings.reload_interval.is_zero() {
            return Err(DncError::Settings("the reload interval must be positive"));
        }
        // Redis first: it validates settings and fails without side effects, whereas the file
        // load spawns a task.
        let shared = match &settings.redis {
            Some(redis) => Some(SharedSet::connect(redis).await?),
            None => None,
        };
        let (file, stop) = match settings.file {
            Some(path) => {
                let (file, stop) = start_file(path, settings.reload_interval).await?;
                (Some(file), Some(stop))
            }
            None => (None, None),
        };
        Ok(DncList {
            inner: Arc::new(Inner {
                file,
                shared,
                _stop_reloader: stop,
            }),
        })
    }

    /// A list with no sources: every lookup answers "not listed".
    pub fn empty() -> DncList {
        DncList {
            inner: Arc::new(Inner {
                file: None,
                shared: None,
                _stop_reloader: None,
            }),
        }
    }

    /// Whether `number` is on the list: the in-memory file set first (no I/O), then the shared
    /// Redis set if one is configured.
    ///
    /// # Errors
    ///
    /// Only from the Redis lookup: [`DncError::Redis`] or [`DncError::Timeout`] (after
    /// [`LOOKUP_TIMEOUT`]). The caller should treat an error as "maybe listed".
    pub async fn contains(&self, number: &PhoneNumber) -> Result<bool, DncError> {
        if let Some(file) = &self.inner.file
            && file.contains(number)
        {
            return Ok(true);
        }
        match &self.inner.shared {
            Some(shared) => shared.contains(number).await,
            None => Ok(false),
        }
    }

    /// How many distinct numbers the file currently lists (0 without a file).
    pub fn file_len(&self) -> usize {
        self.inner.file.as_ref().map_or(0, |file| file.len())
    }

    /// Adds `number` to the shared Redis set (as its keyed hash). Adding a listed number is
    /// not an error.
    ///
    /// # Errors
    ///
    /// [`DncError::NoSharedSet`] without Redis configured; [`DncError::Redis`] or
    /// [`DncError::Timeout`] if the write failed or its effect is unknown.
    pub async fn add(&self, number: &PhoneNumber) -> Result<(), DncError> {
        self.shared()?.write("SADD", number).await
    }

    /// Removes `number` from the shared Redis set. Removing an unlisted number is not an
    /// error. Numbers in the file are not affected: edit the file for those.
    ///
    /// # Errors
    ///
    /// As for [`DncList::add`].
    pub async fn remove(&self, number: &PhoneNumber) -> Result<(), DncError> {
        self.shared()?.write("SREM", number).await
    }

    fn shared(&self) -> Result<&SharedSet, DncError> {
        self.inner.shared.as_ref().ok_or(DncError::NoSharedSet)
    }
}

// ---------------------------------------------------------------------------------------------
// The file
// ---------------------------------------------------------------------------------------------

/// The file's numbers as last loaded, shared between the lookups and the reloader.
struct FileSet {
    path: PathBuf,
    /// National digits. Behind an `Arc` so a reload builds the new set without any lock and
    /// then swaps it in with one pointer write.
    numbers: RwLock<Arc<HashSet<String>>>,
}

impl FileSet {
    fn contains(&self, number: &PhoneNumber) -> bool {
        // A poisoned lock only means a panic elsewhere while it was held; the only write is a
        // pointer swap, so the set behind it is always whole.
        self.numbers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(number.as_str())
    }

    fn len(&self) -> usize {
        self.numbers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn replace(&self, numbers: HashSet<String>) {
        let new = Arc::new(numbers);
        let mut guard = self.numbers.write().unwrap_or_else(PoisonError::into_inner);
        let old = std::mem::replace(&mut *guard, new);
        drop(guard);
        // Freeing a large set takes a while; do it after the lock is released so lookups
        // never wait on it.
        drop(old);
    }
}

/// What identifies one version of the file without reading it.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Fingerprint {
    /// The path with every symlink resolved: changes when a ConfigMap swaps its `..data` link.
    target: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    /// Device, inode and change time: a replaced file is a new inode even when length and
    /// modification time match (`cp -p`, a swap to a copy made in the same second).
    #[cfg(unix)]
    identity: (u64, u64, i64, i64),
}

fn fingerprint(path: &Path) -> io::Result<Fingerprint> {
    // `metadata` follows symlinks: we describe the file the path leads to, not the link.
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(io::Error::other("is a directory"));
    }
    Ok(Fingerprint {
        target: std::fs::canonicalize(path)?,
        len: meta.len(),
        modified: meta.modified().ok(),
        #[cfg(unix)]
        identity: {
            use std::os::unix::fs::MetadataExt as _;
            (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
        },
    })
}

/// The version of the file the in-memory set was built from.
#[derive(Clone)]
struct Snapshot {
    fingerprint: Fingerprint,
    content_hash: u64,
}

/// The numbers found in a file, and the lines that were not numbers.
#[derive(Debug, Default)]
struct Parsed {
    numbers: HashSet<String>,
    /// 1-based numbers of the first [`MAX_REPORTED_LINES`] skipped lines.
    skipped_lines: Vec<usize>,
    skipped: usize,
}

impl Parsed {
    /// The one warning per load about lines that are not phone numbers. Names line numbers
    /// only: the content could be a real number with a typo.
    fn warn_skipped(&self, path: &Path) {
        if self.skipped == 0 {
            return;
        }
        tracing::warn!(
            path = %path.display(),
            skipped = self.skipped,
            lines = %describe_lines(&self.skipped_lines, self.skipped),
            "lines of the do-not-call file are not valid phone numbers and were skipped"
        );
    }
}

/// `3, 7, 12`, or `3, 7, 12 and 40 more` when only the first lines were kept.
fn describe_lines(lines: &[usize], total: usize) -> String {
    let listed = lines
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match total.saturating_sub(lines.len()) {
        0 => listed,
        more => format!("{listed} and {more} more"),
    }
}

/// Parses the file's content: one number per line, `#` to the end of a line is a comment.
fn parse_list(bytes: &[u8]) -> Parsed {
    // Invalid UTF-8 becomes U+FFFD, which no number contains, so such lines are just skipped.
    let text = String::from_utf8_lossy(bytes);
    // Editors on Windows like to start files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut parsed = Parsed::default();
    // `lines` also strips a `\r` before the `\n`.
    for (index, line) in text.lines().enumerate() {
        let entry = line.split_once('#').map_or(line, |(entry, _)| entry).trim();
        if entry.is_empty() {
            continue;
        }
        match PhoneNumber::parse(entry) {
            Ok(number) => {
                parsed.numbers.insert(number.as_str().to_owned());
            }
            Err(_) => {
                parsed.skipped += 1;
                if parsed.skipped_lines.len() < MAX_REPORTED_LINES {
                    parsed.skipped_lines.push(index + 1);
                }
            }
        }
    }
    parsed
}

fn content_hash(bytes: &[u8]) -> u64 {
    // Change detection within one process, not security: SipHash with its fixed keys is fine.
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// Reads and parses the file. The fingerprint is taken before reading, so a write that races
/// the read changes the fingerprint again and the next poll reloads.
fn load(path: &Path) -> io::Result<(Snapshot, Parsed)> {
    let fingerprint = fingerprint(path)?;
    let bytes = std::fs::read(path)?;
    let snapshot = Snapshot {
        fingerprint,
        content_hash: content_hash(&bytes),
    };
    Ok((snapshot, parse_list(&bytes)))
}

/// What one poll of the file found.
enum Polled {
    /// Same fingerprint: nothing read.
    Unchanged,
    /// A new fingerprint but the same bytes: nothing to rebuild.
    SameContent(Fingerprint),
    /// New content.
    Changed(Snapshot, Parsed),
    /// Missing or unreadable.
    Unreadable(io::Error),
}

/// One poll; blocking (file system calls and parsing), so it runs on the blocking pool.
fn poll(path: &Path, known: &Snapshot) -> Polled {
    let fingerprint = match fingerprint(path) {
        Ok(fingerprint) => fingerprint,
        Err(e) => return Polled::Unreadable(e),
    };
    if fingerprint == known.fingerprint {
        return Polled::Unchanged;
    }
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => return Polled::Unreadable(e),
    };
    let hash = content_hash(&bytes);
    if hash == known.content_hash {
        return Polled::SameContent(fingerprint);
    }
    let snapshot = Snapshot {
        fingerprint,
        content_hash: hash,
    };
    Polled::Changed(snapshot, parse_list(&bytes))
}

/// Loads the file now and spawns its reloader.
async fn start_file(
    path: PathBuf,
    reload_interval: Duration,
) -> Result<(Arc<FileSet>, DropGuard), DncError> {
    let load_path = path.clone();
    let loaded = tokio::task::spawn_blocking(move || load(&load_path))
        .await
        .unwrap_or_else(|_| Err(io::Error::other("the loading task panicked")));
    let (snapshot, parsed) = match loaded {
        Ok(loaded) => loaded,
        Err(reason) => return Err(DncError::File { path, reason }),
    };
    parsed.warn_skipped(&path);
    tracing::info!(
        path = %path.display(),
        numbers = parsed.numbers.len(),
        "do-not-call file loaded"
    );
    let file = Arc::new(FileSet {
        path,
        numbers: RwLock::new(Arc::new(parsed.numbers)),
    });
    let stop = CancellationToken::new();
    tokio::spawn(reload_loop(
        Arc::clone(&file),
        reload_interval,
        snapshot,
        stop.clone(),
    ));
    Ok((file, stop.drop_guard()))
}

/// Whether the file could be read at the last poll; warnings are logged on changes only.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Health {
    Readable,
    Unreadable(io::ErrorKind),
}

/// Polls the file every `interval` until `stop` is cancelled.
async fn reload_loop(
    file: Arc<FileSet>,
    interval: Duration,
    mut known: Snapshot,
    stop: CancellationToken,
) {
    let mut health = Health::Readable;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let path = file.path.clone();
        let previous = known.clone();
        let polled = tokio::select! {
            () = stop.cancelled() => return,
            polled = tokio::task::spawn_blocking(move || poll(&path, &previous)) => polled,
        };
        let polled =
            polled.unwrap_or_else(|_| Polled::Unreadable(io::Error::other("the poll panicked")));

        if let Polled::Unreadable(e) = &polled {
            let now = Health::Unreadable(e.kind());
            if health != now {
                tracing::warn!(
                    path = %file.path.display(),
                    error = %e,
                    numbers = file.len(),
                    "cannot read the do-not-call file; keeping the last good list"
                );
                health = now;
            }
            continue;
        }
        if health != Health::Readable {
            tracing::info!(path = %file.path.display(), "the do-not-call file is readable again");
            health = Health::Readable;
        }
        match polled {
            Polled::Unchanged | Polled::Unreadable(_) => {}
            Polled::SameContent(fingerprint) => {
                tracing::debug!(path = %file.path.display(), "do-not-call file touched, content unchanged");
                known.fingerprint = fingerprint;
            }
            Polled::Changed(snapshot, parsed) => {
                parsed.warn_skipped(&file.path);
                let count = parsed.numbers.len();
                file.replace(parsed.numbers);
                known = snapshot;
                tracing::info!(
                    path = %file.path.display(),
                    numbers = count,
                    "do-not-call file reloaded"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The shared Redis set
// ---------------------------------------------------------------------------------------------

/// The `<prefix>:dnc` set of keyed hashes.
struct SharedSet {
    conn: ConnectionManager,
    key: String,
    mac: Hmac<Sha1>,
    redactor: Redactor<DncError>,
}

impl SharedSet {
    async fn connect(settings: &RedisDnc) -> Result<SharedSet, DncError> {
        if settings.key_prefix.is_empty() {
            return Err(DncError::Settings("the Redis key prefix must not be empty"));
        }
        let hash_key = settings.hash_key.expose_secret();
        if hash_key.is_empty() {
            // An empty key would make the hashes reversible by anyone.
            return Err(DncError::Settings("the hash key must not be empty"));
        }
        let mac = Hmac::<Sha1>::new_from_slice(hash_key.as_bytes())
            .map_err(|_| DncError::Settings("the hash key is not usable for HMAC"))?;
        let (client, redactor) = redis_conn::open(
            &settings.url,
            &settings.tls_ca_file,
            DncError::Redis,
            "not a usable Redis URL",
        )?;
        let key = format!("{}:dnc", settings.key_prefix);

        let timeouts = Timeouts {
            connect: CONNECT_TIMEOUT,
            response: ADMIN_TIMEOUT,
        };
        let read_size = async |probe: &mut redis::aio::MultiplexedConnection| {
            redis::cmd("SCARD")
                .arg(&key)
                .query_async::<u64>(probe)
                .await
                .map_err(|e| redactor.error("cannot read the set", &e))
        };
        let (conn, size) =
            redis_conn::connect_checked(client, &redactor, timeouts, read_size).await?;
        tracing::info!(key = %key, entries = size, "shared do-not-call set connected");
        Ok(SharedSet {
            conn,
            key,
            mac,
            redactor,
        })
    }

    /// Hex HMAC-SHA1 of the national digits: the set member for `number`.
    fn member(&self, number: &PhoneNumber) -> String {
        let mut mac = self.mac.clone();
        mac.update(number.as_str().as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(digest.len() * 2);
        for byte in digest {
            use std::fmt::Write as _;
            let _ = write!(out, "{byte:02x}");
        }
        out
    }

    async fn contains(&self, number: &PhoneNumber) -> Result<bool, DncError> {
        let mut cmd = redis::cmd("SISMEMBER");
        cmd.arg(&self.key).arg(self.member(number));
        let answer: i64 = self.run(&cmd, LOOKUP_TIMEOUT, "lookup").await?;
        match answer {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DncError::Redis(format!(
                "lookup: unexpected answer {answer} to SISMEMBER"
            ))),
        }
    }

    async fn write(&self, command: &'static str, number: &PhoneNumber) -> Result<(), DncError> {
        let mut cmd = redis::cmd(command);
        cmd.arg(&self.key).arg(self.member(number));
        // The count of members changed (0 or 1) is not interesting: both outcomes are success.
        let _: i64 = self.run(&cmd, ADMIN_TIMEOUT, command).await?;
        Ok(())
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        limit: Duration,
        what: &str,
    ) -> Result<T, DncError> {
        let mut conn = self.conn.clone();
        // Dropping the query on timeout is safe: the multiplexed connection discards the late
        // answer instead of handing it to the next caller.
        match tokio::time::timeout(limit, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.redactor.error(what, &e)),
            Err(_) => Err(DncError::Timeout(limit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Weak;
    use std::time::Instant;

    const REDIS_URL: &str = "redis://127.0.0.1:6379";
    /// Short, so reloads are seen quickly.
    const INTERVAL: Duration = Duration::from_millis(100);
    /// How long a change may take to show before a test gives up.
    const PATIENCE: Duration = Duration::from_secs(5);

    fn number(raw: &str) -> PhoneNumber {
        PhoneNumber::parse(raw).expect("test numbers are valid")
    }

    /// A uniquely named temporary directory, removed when dropped (also when a test fails).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!("dnc-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Writes `content` to `path` atomically (a new file renamed over the old one), the way
    /// operators are told to edit the list.
    fn replace_file(path: &Path, content: &str) {
        let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4()));
        std::fs::write(&tmp, content).expect("write temp file");
        std::fs::rename(&tmp, path).expect("rename over the list");
    }

    fn file_sources(path: PathBuf) -> DncSources {
        DncSources {
            file: Some(path),
            reload_interval: INTERVAL,
            redis: None,
        }
    }

    /// Waits until the list answers `want` for `raw`, or fails after [`PATIENCE`].
    async fn eventually(list: &DncList, raw: &str, want: bool) {
        let n = number(raw);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if list.contains(&n).await.expect("file lookups cannot fail") == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} still {}listed after {PATIENCE:?}",
                if want { "not " } else { "" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn listed(list: &DncList, raw: &str) -> bool {
        list.contains(&number(raw))
            .await
            .expect("lookup should succeed")
    }

    fn redis_settings(prefix: &str, hash_key: &str) -> RedisDnc {
        RedisDnc {
            url: SecretString::from(REDIS_URL.to_owned()),
            tls_ca_file: PathBuf::new(),
            key_prefix: prefix.to_owned(),
            hash_key: SecretString::from(hash_key.to_owned()),
        }
    }

    async fn start_or_explain(settings: DncSources) -> DncList {
        match DncList::start(settings).await {
            Ok(list) => list,
            Err(e) => panic!(
                "these tests need a real Redis at {REDIS_URL}; start one \
                 (e.g. `redis-server --daemonize yes` or \
                 `docker run -d -p 6379:6379 redis:7`): {e}"
            ),
        }
    }

    async fn raw_redis() -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(REDIS_URL).expect("valid URL");
        client
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("these tests need a real Redis at {REDIS_URL}: {e}"))
    }

    #[test]
    fn parsing_normalises_numbers_and_skips_comments_blanks_and_garbage() {
        let content = "\u{feff}# opted out 2026-11\n\
                       +86 157-3203-6617\n\
                       \n\
                       \t  \n\
                       022-8519-6281   # landline, inline comment\r\n\
                       not a number\n\
                       15732036617\n\
                       1573203661\n\
                       # 13000000000 commented out\n\
                       400 123 4567\n";
        let parsed = parse_list(content.as_bytes());
        let mut numbers: Vec<_> = parsed.numbers.iter().map(String::as_str).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, ["02285196281", "15732036617", "4001234567"]);
        assert_eq!(parsed.skipped, 2);
        assert_eq!(parsed.skipped_lines, [6, 8]);
    }

    #[test]
    fn invalid_utf8_lines_are_skipped_not_fatal() {
        let parsed = parse_list(b"15732036617\n\xff\xfe157\n02285196281\n");
        assert_eq!(parsed.numbers.len(), 2);
        assert_eq!(parsed.skipped_lines, [2]);
    }

    #[test]
    fn the_skipped_lines_warning_lists_only_the_first_lines() {
        let content = "garbage\n".repeat(MAX_REPORTED_LINES + 5);
        let parsed = parse_list(content.as_bytes());
        assert_eq!(parsed.skipped, MAX_REPORTED_LINES + 5);
        assert_eq!(parsed.skipped_lines.len(), MAX_REPORTED_LINES);
        let described = describe_lines(&parsed.skipped_lines, parsed.skipped);
        assert!(described.starts_with("1, 2, 3, "), "{described}");
        assert!(described.ends_with("20 and 5 more"), "{described}");
        assert_eq!(describe_lines(&[3, 7], 2), "3, 7");
    }

    #[tokio::test]
    async fn a_listed_number_is_found_whatever_its_spelling() {
        let dir = TempDir::new();
        let path = dir.path("dnc.txt");
        std::fs::write(
            &path,
            "# list\n+86 157-3203-6617\n\ngarbage line\n(022) 8519 6281\n",
        )
        .expect("write list");
        let list = DncList::start(file_sources(path))
            .await
            .expect("list loads");
        assert!(listed(&list, "15732036617").await);
        assert!(listed(&list, "0086 157 3203 6617").await);
        assert!(listed(&list, "02285196281").await);
        assert!(!listed(&list, "15732036618").await);
        assert!(!listed(&list, "13000000000").await);
        assert_eq!(list.file_len(), 2);
    }

    #[tokio::test]
    async fn additions_and_removals_are_picked_up_without_a_restart() {
        let dir = TempDir::new();
        let path = dir.path("dnc.txt");
        std::fs::write(&path, "15732036617\n").expect("write list");
        let list = DncList::start(file_sources(path.clone()))
            .await
            .expect("list loads");
        assert!(!listed(&list, "13000000000").await);

        // Appending in place, as someone editing the file by hand would.
        std::fs::write(&path, "15732036617\n130-0000-0000\n").expect("append");
        eventually(&list, "13000000000", true).await;
        assert!(listed(&list, "15732036617").await);
        assert_eq!(list.file_len(), 2);

        replace_file(&path, "130 0000 0000\n");
        eventually(&list, "15732036617", false).await;
        assert!(listed(&list, "13000000000").await);
        assert_eq!(list.file_len(), 1);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_swap_is_picked_up() {
        let dir = TempDir::new();
        // The ConfigMap layout: list -> ..data/dnc.txt, ..data -> ..v1; an update writes ..v2
        // and renames a new symlink over ..data.
        for (version, content) in [("..v1", "15732036617\n"), ("..v2", "13000000000\n")] {
            std::fs::create_dir(dir.path(version)).expect("version dir");
            std::fs::write(dir.path(version).join("dnc.txt"), content).expect("write version");
        }
        std::os::unix::fs::symlink("..v1", dir.path("..data")).expect("data link");
        std::os::unix::fs::symlink("..data/dnc.txt", dir.path("dnc.txt")).expect("file link");

        let list = DncList::start(file_sources(dir.path("dnc.txt")))
            .await
            .expect("list loads through symlinks");
        assert!(listed(&list, "15732036617").await);
        assert!(!listed(&list, "13000000000").await);

        std::os::unix::fs::symlink("..v2", dir.path("..data_tmp")).expect("new link");
        std::fs::rename(dir.path("..data_tmp"), dir.path("..data")).expect("swap link");
        eventually(&list, "13000000000", true).await;
        assert!(!listed(&list, "15732036617").await);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_swap_to_a_file_of_the_same_size_and_time_is_picked_up() {
        let dir = TempDir::new();
        let path = dir.path("dnc.txt");
        std::fs::write(&path, "15732036617\n").expect("write list");
        let list = DncList::start(file_sources(path.clone()))
            .await
            .expect("list loads");
        // Same length, same modification time: only the inode tells them apart.
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        let tmp = dir.path("new.txt");
        std::fs::write(&tmp, "13000000000\n").expect("write new");
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(modified))
            .expect("set mtime");
        std::fs::rename(&tmp, &path).expect("swap");
        eventually(&list, "13000000000", true).await;
        assert!(!listed(&list, "15732036617").await);
    }

    #[tokio::test]
    async fn a_deleted_file_keeps_the_last_good_list_until_it_returns() {
        let dir = TempDir::new();
        let path = dir.path("dnc.txt");
        std::fs::write(&path, "15732036617\n").expect("write list");
        let list = DncList::start(file_sources(path.clone()))
            .await
            .expect("list loads");
        std::fs::remove_file(&path).expect("delete list");
        // Proving that nothing happens takes some waiting: several polls' worth.
        tokio::time::sleep(INTERVAL * 5).await;
        assert!(listed(&list, "15732036617").await);
        assert_eq!(list.file_len(), 1);

        std::fs::write(&path, "13000000000\n").expect("write list again");
        eventually(&list, "13000000000", true).await;
        assert!(!listed(&list, "15732036617").await);
    }

    #[tokio::test]
    async fn a_missing_file_at_start_up_is_an_error() {
        let dir = TempDir::new();
        let path = dir.path("missing.txt");
        let err = DncList::start(file_sources(path.clone()))
            .await
            .expect_err("missing file must fail start-up");
        assert!(
            matches!(&err, DncError::File { path: p, reason } if *p == path && reason.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        assert!(err.to_string().contains("missing.txt"), "{err}");

        let err = DncList::start(file_sources(dir.0.clone()))
            .await
            .expect_err("a directory is not a list");
        assert!(matches!(err, DncError::File { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_zero_reload_interval_is_rejected() {
        let dir = TempDir::new();
        let path = dir.path("dnc.txt");
        std::fs::write(&path, "").expect("write list");
        let mut settings = file_sources(path);
        settings.reload_interval = Duration::ZERO;
        let err = DncList::start(settings).await.expect_err("zero interval");
        assert!(matches!(err, DncError::Settings(_)), "{err:?}");
    }

    #[tokio::test]
    async fn the_empty_list_contains_nothing_and_has_no_shared_set() {
        let list = DncList::empty();
        assert!(!listed(&list, "15732036617").await);
        assert_eq!(list.file_len(), 0);
        let err = list
            .add(&number("15732036617"))
            .await
            .expect_err("no Redis");
        assert!(matches!(err, DncError::NoSharedSet), "{err:?}");
        assert!(matches!(
            list.remove(&number("15732036617")).await,
            Err(DncError::NoSharedSet)
        ));

        let nothing = DncList::start(DncSources {
            file: None,
            reload_interval: Duration::ZERO,
            redis: None,
        })
        .await
        .expect("no sources is fine");
        assert!(!listed(&nothing, "15732036617").await);
    }

    #[tokio::test]
    async fn the_reloader_stops_when_the_last_clone_is_dropped() {
        let dir = TempDir::new();
        let path = dir.path("dnc.txt");
        std::fs::write(&path, "15732036617\n").expect("write list");
        let list = DncList::start(file_sources(path))
            .await
            .expect("list loads");
        let file: Weak<FileSet> = Arc::downgrade(list.inner.file.as_ref().expect("a file"));
        // The list and the reloader each hold the file set.
        assert_eq!(file.strong_count(), 2);

        let clone = list.clone();
        drop(list);
        tokio::time::sleep(INTERVAL * 3).await;
        assert_eq!(file.strong_count(), 2, "a clone still lives");
        assert!(listed(&clone, "15732036617").await);

        drop(clone);
        let deadline = Instant::now() + PATIENCE;
        while file.strong_count() > 0 {
            assert!(Instant::now() < deadline, "the reloader is still running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_shared_set_holds_keyed_hashes_and_supports_add_and_remove() {
        let prefix = format!("dialex-dnc-test-{}", uuid::Uuid::new_v4());
        let key = format!("{prefix}:dnc");
        let list = start_or_explain(DncSources {
            file: None,
            reload_interval: INTERVAL,
            redis: Some(redis_settings(&prefix, "test-secret")),
        })
        .await;
        let mut raw = raw_redis().await;

        let n = number("+86 157-3203-6617");
        assert!(!listed(&list, "15732036617").await);
        list.add(&n).await.expect("SADD");
        list.add(&n).await.expect("adding twice is fine");
        assert!(listed(&list, "15732036617").await);
        assert!(!listed(&list, "13000000000").await);

        // The member is the hex HMAC of the national digits under the key, nothing else.
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("SMEMBERS");
        let mut mac = Hmac::<Sha1>::new_from_slice(b"test-secret").expect("any key length");
        mac.update(b"15732036617");
        let expected: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(members, [expected]);
        assert!(!members[0].contains("15732036617"));

        // Another hash key cannot see it: every reader must share the key.
        let other = start_or_explain(DncSources {
            file: None,
            reload_interval: INTERVAL,
            redis: Some(redis_settings(&prefix, "another-secret")),
        })
        .await;
        assert!(!listed(&other, "15732036617").await);

        list.remove(&n).await.expect("SREM");
        list.remove(&n).await.expect("removing twice is fine");
        assert!(!listed(&list, "15732036617").await);
        let size: u64 = redis::cmd("SCARD")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("SCARD");
        assert_eq!(size, 0);

        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("DEL");
    }

    #[tokio::test]
    async fn the_file_and_the_shared_set_are_both_consulted() {
        let dir = TempDir::new();
        let path = dir.path("dnc.txt");
        std::fs::write(&path, "15732036617\n").expect("write list");
        let prefix = format!("dialex-dnc-test-{}", uuid::Uuid::new_v4());
        let list = start_or_explain(DncSources {
            file: Some(path),
            reload_interval: INTERVAL,
            redis: Some(redis_settings(&prefix, "test-secret")),
        })
        .await;
        list.add(&number("13000000000")).await.expect("SADD");
        assert!(listed(&list, "15732036617").await, "from the file");
        assert!(listed(&list, "13000000000").await, "from Redis");
        assert!(!listed(&list, "02285196281").await);
        // Removing from Redis does not touch the file.
        list.remove(&number("15732036617")).await.expect("SREM");
        assert!(listed(&list, "15732036617").await);

        let mut raw = raw_redis().await;
        let _: i64 = redis::cmd("DEL")
            .arg(format!("{prefix}:dnc"))
            .query_async(&mut raw)
            .await
            .expect("DEL");
    }

    #[tokio::test]
    async fn a_wrong_type_key_is_an_error_not_a_no() {
        let prefix = format!("dialex-dnc-test-{}", uuid::Uuid::new_v4());
        let key = format!("{prefix}:dnc");
        let list = start_or_explain(DncSources {
            file: None,
            reload_interval: INTERVAL,
            redis: Some(redis_settings(&prefix, "test-secret")),
        })
        .await;
        let mut raw = raw_redis().await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("not a set")
            .query_async(&mut raw)
            .await
            .expect("SET");
        let err = list
            .contains(&number("15732036617"))
            .await
            .expect_err("WRONGTYPE must not read as 'not listed'");
        assert!(matches!(err, DncError::Redis(_)), "{err:?}");
        assert!(!err.to_string().contains("15732036617"), "{err}");
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .expect("DEL");
    }

    /// A fake Redis that answers `:0` to every command except `SISMEMBER`, which it never
    /// answers: a server that accepted the connection and then stalled.
    async fn stalling_redis() -> String {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    // RESP requests: `*<n>`, then `$<len>` and the argument for each of n.
                    while let Ok(Some(header)) = lines.next_line().await {
                        let count: usize = header.trim_start_matches('*').parse().unwrap_or(0);
                        let mut name = String::new();
                        for i in 0..count * 2 {
                            let Ok(Some(line)) = lines.next_line().await else {
                                return;
                            };
                            if i == 1 {
                                name = line.to_ascii_uppercase();
                            }
                        }
                        if name != "SISMEMBER" && write.write_all(b":0\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("redis://{addr}")
    }

    #[tokio::test]
    async fn a_stalled_redis_fails_the_lookup_quickly() {
        let list = DncList::start(DncSources {
            file: None,
            reload_interval: INTERVAL,
            redis: Some(RedisDnc {
                url: SecretString::from(stalling_redis().await),
                tls_ca_file: PathBuf::new(),
                key_prefix: "p".to_owned(),
                hash_key: SecretString::from("k".to_owned()),
            }),
        })
        .await
        .expect("the fake answers the start-up probe");
        let started = Instant::now();
        let err = list
            .contains(&number("15732036617"))
            .await
            .expect_err("no answer is not a 'no'");
        let took = started.elapsed();
        assert!(
            matches!(err, DncError::Timeout(t) if t == LOOKUP_TIMEOUT),
            "{err:?}"
        );
        assert!(took < LOOKUP_TIMEOUT * 3, "took {took:?}");
    }

    #[tokio::test]
    async fn connection_errors_never_show_the_url_or_password() {
        // Port 1 on loopback refuses at once.
        let err = DncList::start(DncSources {
            file: None,
            reload_interval: INTERVAL,
            redis: Some(RedisDnc {
                url: SecretString::from("redis://user:s3cr%40t@127.0.0.1:1/0".to_owned()),
                tls_ca_file: PathBuf::new(),
                key_prefix: "p".to_owned(),
                hash_key: SecretString::from("k".to_owned()),
            }),
        })
        .await
        .expect_err("nothing listens on port 1");
        let message = err.to_string();
        for leak in ["s3cr", "redis://", "127.0.0.1:1"] {
            assert!(!message.contains(leak), "{message}");
        }
        assert!(!format!("{err:?}").contains("s3cr"));

        let err = DncList::start(DncSources {
            file: None,
            reload_interval: INTERVAL,
            redis: Some(RedisDnc {
                url: SecretString::from(REDIS_URL.to_owned()),
                tls_ca_file: PathBuf::new(),
                key_prefix: "p".to_owned(),
                hash_key: SecretString::from(String::new()),
            }),
        })
        .await
        .expect_err("empty hash key");
        assert!(matches!(err, DncError::Settings(_)), "{err:?}");
    }

    #[test]
    fn the_redis_settings_debug_hides_secrets() {
        let printed = format!("{:?}", redis_settings("p", "hush"));
        assert!(!printed.contains("hush"), "{printed}");
        assert!(!printed.contains("127.0.0.1"), "{printed}");
    }

    #[test]
    fn redaction_covers_the_url_and_both_spellings_of_the_password() {
        let redactor = Redactor::new("redis://u:p%40ss@h:6379/0", DncError::Redis);
        let err = redis::RedisError::from((
            redis::ErrorKind::Io,
            "boom",
            "redis://u:p%40ss@h:6379/0 p@ss p%40ss".to_owned(),
        ));
        let message = redactor.error("x", &err).to_string();
        assert!(!message.contains("p@ss"), "{message}");
        assert!(!message.contains("p%40ss"), "{message}");
    }
}
