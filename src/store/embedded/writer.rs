//! The writer thread: every write goes through it, and a batch of the operations waiting at
//! once commits in one transaction with one fsync (a group commit).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use super::{Changed, MAX_BATCH, OrBackend as _, backend, now_ms};
use crate::store::StoreError;

/// What an operation needs from the commit of its batch; a batch gets the most any of its
/// operations needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Needs {
    /// It changed nothing.
    Nothing,
    /// A commit, without fsync.
    Commit,
    /// A commit fsynced before anyone is answered.
    Fsync,
}

/// The writer thread's inbox, and the thread itself, joined when the last store clone goes.
pub(super) struct Writer {
    /// `None` only while dropping.
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread; it owns all writing to `db` and stops when the `Writer` is
    /// dropped.
    pub(super) fn start(db: Arc<Database>) -> Result<Writer, StoreError> {
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

    /// Queues `op` for the writer and returns where its answer will arrive. `op` gets the
    /// transaction and the time (read once the writer lock is held) and says whether it changed
    /// anything; a change needs `needs` from the commit. `alone` runs it in a transaction of its
    /// own rather than in a batch with others.
    ///
    /// If `op` (or any operation in its batch) fails, the whole transaction is abandoned, so a
    /// failure part-way through leaves no trace, and the batch is run again in parts (see
    /// `run_batch`): `op` may run more than once, each time in a fresh transaction, and is
    /// answered for the run that settles.
    pub(super) fn queue<T, F>(
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
        let job: Box<dyn Job> = Box::new(Pending {
            op,
            needs,
            alone,
            answer: None,
            reply: Some(reply),
        });
        self.jobs
            .as_ref()
            .ok_or_else(writer_stopped)?
            .send(job)
            .map_err(|_| writer_stopped())?;
        Ok(answer)
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

pub(super) fn writer_stopped() -> StoreError {
    backend("the store writer thread has stopped")
}
