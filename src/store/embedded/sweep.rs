//! The expiry sweeper: a background task that deletes expired records, cooldowns, daily
//! counters and call results in batches, by their expiry indexes, on the writer thread.

use std::sync::Weak;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition, Value, WriteTransaction};
use tokio_util::sync::CancellationToken;

use super::{Inner, OrBackend as _, SWEEP_BATCH, writer_stopped};
use crate::store::StoreError;

/// Every `every`, deletes expired records, then expired cooldowns, then expired daily counters,
/// then expired call results and contacts, one batch per transaction on the writer thread, yielding between batches. Holds only a `Weak`
/// (upgraded just long enough to queue a batch), so it never keeps the store (and its file) open;
/// stops when `stop` is cancelled (the last store clone was dropped).
pub(super) async fn sweep_loop(store: Weak<Inner>, every: Duration, stop: CancellationToken) {
    // A zero interval would spin; validation forbids it, this keeps the loop sane regardless.
    let every = every.max(Duration::from_millis(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        for kind in [
            Swept::Records,
            Swept::Cooldowns,
            Swept::DailyCounters,
            Swept::CallResults,
        ] {
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
pub(super) enum Swept {
    Records,
    Cooldowns,
    DailyCounters,
    /// Contacts and call results (one table).
    CallResults,
}

/// [`Inner::sweep`], waited for on the calling thread (not an async one).
#[cfg(test)]
pub(super) fn sweep_batch(inner: &Inner, kind: Swept, limit: usize) -> Result<usize, StoreError> {
    inner
        .sweep(kind, limit)?
        .blocking_recv()
        .map_err(|_| writer_stopped())?
}

/// Deletes up to `limit` expiry-index entries due at or before `now`, and each one's row if the
/// row itself has expired (a row is only ever indexed under its current expiry; the check keeps a
/// live row safe even if that ever failed to hold).
pub(super) fn sweep_table<V>(
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
