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
//! - **A shared set** ([`SharedList`]), optional, for lists managed at run time by an operator
//!   CLI across all replicas. The Redis backend keeps it
//!   ([`RedisDncSet`](crate::store::redis::dnc::RedisDncSet)) as hex HMAC-SHA1 digests of the
//!   national number under a secret key, never raw numbers, for the same reason as the
//!   cooldown keys (see [`crate::gates::cooldown`]): a leaked dump cannot be reversed by
//!   hashing every possible number without the key.
//!
//! How the file is reloaded while the worker runs is the [`file`] module's.
//!
//! # Errors fail closed
//!
//! The file lookup cannot fail. A shared lookup that errors or does not answer within
//! [`LOOKUP_TIMEOUT`] returns `Err`; whether that blocks the call is the caller's decision
//! (the pipeline fails closed: an unknown answer is not a "no"). No error message contains a
//! phone number, the Redis URL or a secret.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::DropGuard;

use crate::phone::PhoneNumber;

mod file;

use file::{FileSet, start_file};

/// How long a membership check in the shared set may take. A lookup sits on the path of every
/// dial, so a stalled Redis must fail the check quickly rather than hold the call.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

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
    /// The shared set, if any (the backend connected it).
    pub shared: Option<Arc<dyn SharedList>>,
}

/// A do-not-call set every replica shares, kept by the backend. A lookup must answer within
/// [`LOOKUP_TIMEOUT`] or fail with [`DncError::Timeout`]; no error carries a number or a
/// secret. `Debug` names where the set lives, never what it holds.
pub trait SharedList: fmt::Debug + Send + Sync + 'static {
    /// Whether `number` is in the set.
    fn contains<'a>(&'a self, number: &'a PhoneNumber) -> BoxFuture<'a, Result<bool, DncError>>;

    /// Adds `number`; adding a listed number is not an error.
    fn add<'a>(&'a self, number: &'a PhoneNumber) -> BoxFuture<'a, Result<(), DncError>>;

    /// Removes `number`; removing an unlisted number is not an error.
    fn remove<'a>(&'a self, number: &'a PhoneNumber) -> BoxFuture<'a, Result<(), DncError>>;
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
    /// The shared set's backend refused, failed or answered something unexpected.
    #[error("shared do-not-call set: {0}")]
    Redis(String),
    /// The shared set did not answer in time; whether a write took effect is unknown.
    #[error("shared do-not-call set: no answer from Redis within {} ms", .0.as_millis())]
    Timeout(Duration),
}

/// The do-not-call list: the file's numbers in memory, plus the shared set if configured.
///
/// Cheap to clone (one `Arc`). The background reloader stops when the last clone is dropped.
#[derive(Clone)]
pub struct DncList {
    inner: Arc<Inner>,
}

struct Inner {
    file: Option<Arc<FileSet>>,
    shared: Option<Arc<dyn SharedList>>,
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
            .field("shared_set", &self.inner.shared)
            .finish()
    }
}

impl DncList {
    /// Loads the file (if any) and starts its reloader; consults `shared` (if any) as well.
    ///
    /// Must be called inside a Tokio runtime, which the reloader runs on.
    ///
    /// # Errors
    ///
    /// [`DncError::File`] if the configured file cannot be read (fail fast: a worker without
    /// its list would dial people who opted out), [`DncError::Settings`] for a zero reload
    /// interval.
    pub async fn start(settings: DncSources) -> Result<DncList, DncError> {
        if settings.file.is_some() && settings.reload_interval.is_zero() {
            return Err(DncError::Settings("the reload interval must be positive"));
        }
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
                shared: settings.shared,
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
    /// set if one is configured.
    ///
    /// # Errors
    ///
    /// Only from the shared lookup: [`DncError::Redis`] or [`DncError::Timeout`] (after
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

    /// Adds `number` to the shared set. Adding a listed number is
    /// not an error.
    ///
    /// # Errors
    ///
    /// [`DncError::NoSharedSet`] without a shared set; [`DncError::Redis`] or
    /// [`DncError::Timeout`] if the write failed or its effect is unknown.
    pub async fn add(&self, number: &PhoneNumber) -> Result<(), DncError> {
        self.shared()?.add(number).await
    }

    /// Removes `number` from the shared set. Removing an unlisted number is not an
    /// error. Numbers in the file are not affected: edit the file for those.
    ///
    /// # Errors
    ///
    /// As for [`DncList::add`].
    pub async fn remove(&self, number: &PhoneNumber) -> Result<(), DncError> {
        self.shared()?.remove(number).await
    }

    fn shared(&self) -> Result<&Arc<dyn SharedList>, DncError> {
        self.inner.shared.as_ref().ok_or(DncError::NoSharedSet)
    }
}

#[cfg(test)]
mod tests;
