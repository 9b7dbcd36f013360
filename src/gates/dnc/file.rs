//! The list file: loaded into memory, and reloaded in the background when it changes.
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

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::{CancellationToken, DropGuard};

use super::{DncError, MAX_REPORTED_LINES};
use crate::phone::PhoneNumber;

/// The file's numbers as last loaded, shared between the lookups and the reloader.
pub(super) struct FileSet {
    pub(super) path: PathBuf,
    /// National digits. Behind an `Arc` so a reload builds the new set without any lock and
    /// then swaps it in with one pointer write.
    numbers: RwLock<Arc<HashSet<String>>>,
}

impl FileSet {
    pub(super) fn contains(&self, number: &PhoneNumber) -> bool {
        // A poisoned lock only means a panic elsewhere while it was held; the only write is a
        // pointer swap, so the set behind it is always whole.
        self.numbers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(number.as_str())
    }

    pub(super) fn len(&self) -> usize {
        self.numbers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(super) fn replace(&self, numbers: HashSet<String>) {
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
    pub(super) fn warn_skipped(&self, path: &Path) {
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
pub(super) async fn start_file(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
