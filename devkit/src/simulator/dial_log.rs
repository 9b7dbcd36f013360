//! The record of executed dials: what the call centre would actually have rung.
//!
//! Tests assert on it ("the customer was rung exactly once"), so it is the simulator's most
//! important output. Records live in memory for [`super::Simulator::dials`] and
//! `GET /__sim/dials`, and optionally go to a JSON-lines file for the demo and the benchmark.
//! File writes happen in one writer task fed by a channel, so a request handler never waits on
//! the disk; the writer flushes whenever it runs out of queued records, and on request.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};

use super::DialRecord;

enum LogMsg {
    Record(Box<DialRecord>),
    Flush(oneshot::Sender<()>),
}

pub(crate) struct DialLog {
    records: Mutex<Vec<DialRecord>>,
    file: Option<mpsc::UnboundedSender<LogMsg>>,
}

impl DialLog {
    /// Opens (creating or appending to) `path`, if given, and starts its writer task on the
    /// current runtime.
    pub(crate) async fn open(path: Option<&Path>) -> io::Result<Self> {
        let file = match path {
            None => None,
            Some(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?;
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(write_lines(file, path.to_owned(), rx));
                Some(tx)
            }
        };
        Ok(Self {
            records: Mutex::new(Vec::new()),
            file,
        })
    }

    pub(crate) fn record(&self, record: DialRecord) {
        if let Some(tx) = &self.file {
            // The writer only stops when every sender is gone, so this cannot fail while `self`
            // lives; if it somehow did, the in-memory record below is still authoritative.
            let _ = tx.send(LogMsg::Record(Box::new(record.clone())));
        }
        self.lock().push(record);
    }

    pub(crate) fn snapshot(&self) -> Vec<DialRecord> {
        self.lock().clone()
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Waits until every record logged so far is written and flushed to the file.
    pub(crate) async fn flush(&self) {
        if let Some(tx) = &self.file {
            let (ack, done) = oneshot::channel();
            if tx.send(LogMsg::Flush(ack)).is_ok() {
                let _ = done.await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<DialRecord>> {
        // A panic while holding this lock cannot leave the Vec half-updated, so poisoning is
        // not a reason to lose the log.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn write_lines(
    file: tokio::fs::File,
    path: PathBuf,
    mut rx: mpsc::UnboundedReceiver<LogMsg>,
) {
    let mut out = BufWriter::new(file);
    let mut line = Vec::with_capacity(512);
    let mut failed = false;
    while let Some(msg) = rx.recv().await {
        let result = match msg {
            LogMsg::Record(record) => {
                line.clear();
                match serde_json::to_writer(&mut line, &record) {
                    Ok(()) => {
                        line.push(b'\n');
                        out.write_all(&line).await
                    }
                    Err(e) => Err(io::Error::other(e)),
                }
            }
            LogMsg::Flush(ack) => {
                let result = out.flush().await;
                let _ = ack.send(());
                result
            }
        };
        // Flushing whenever the queue runs dry batches writes under load yet keeps the file
        // current for anyone tailing it.
        let result = match result {
            Ok(()) if rx.is_empty() => out.flush().await,
            other => other,
        };
        if let Err(error) = result {
            // Warn once: a full disk would otherwise log once per dial.
            if !failed {
                tracing::warn!(path = %path.display(), %error, "simulator dial log write failed");
                failed = true;
            }
        }
    }
    if let Err(error) = out.flush().await {
        tracing::warn!(path = %path.display(), %error, "simulator dial log flush failed");
    }
}
