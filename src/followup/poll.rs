//! One follow-up job's poll, as a decision: the call result to publish, or when to look
//! again. Nothing here touches the broker; `intake::followups` carries the step out.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::FollowupSettings;
use super::job::FollowupJob;
use super::matching::{self, Dialed, Match};
use super::pace::Pace;
use super::result::{CallResultEvent, Subject, UnknownReason};
use crate::ccc::{CallDetailRecord, CallRecords, DialFailure, RecordQuery};
use crate::store::{CallResults, StoreError};

/// A job that comes back this much before its poll is due is polled anyway (the wait tiers
/// round delays down to whole tiers).
const EARLY: SignedDuration = SignedDuration::from_millis(250);
/// Records per `ListCallDetailRecords` page (a page of 50 stays well inside the client's
/// limit on an answer's size), and the pages read per poll: far more calls to one number than
/// fit in one match window. A number with more than that in the window is not guessed about.
const PAGE_SIZE: u32 = 50;
const MAX_PAGES: u32 = 10;
/// How soon a job whose poll failed (a query, the store) is tried again: 5 s, doubling, at
/// most a minute.
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What to do with a job.
#[derive(Debug)]
pub enum JobStep {
    /// Publish the request's call result (as stored: the same bytes on every delivery) and
    /// acknowledge the job.
    Publish(Published),
    /// Look again once `due_at` has come: the job goes to the wait tier that fits.
    Wait(FollowupJob),
    /// The stored result cannot be read: the job is parked for an operator.
    Park {
        reason: &'static str,
        detail: String,
    },
}

/// A call result ready to publish.
#[derive(Debug)]
pub struct Published {
    pub event: CallResultEvent,
    pub json: Vec<u8>,
}

/// The follow-up's stages, shared by every job in flight.
pub struct Followup<R, S> {
    pub records: R,
    pub store: S,
    pub settings: FollowupSettings,
    pub pace: Pace,
}

/// What one poll found, owned.
#[derive(Debug)]
enum Found {
    /// The call, taken for the request.
    Call(Box<CallDetailRecord>),
    /// Several records could be the call.
    Several,
    Nothing,
}

/// Why a poll could not decide.
#[derive(Debug)]
enum Failed {
    Query(DialFailure),
    Store(StoreError),
}

impl<R: CallRecords, S: CallResults> Followup<R, S> {
    /// The step for `job`, delivered now.
    pub async fn step(&self, mut job: FollowupJob) -> JobStep {
        if job.due_at.duration_since(Timestamp::now()) > EARLY {
            return JobStep::Wait(job);
        }
        match self.store.call_result(&job.request_id).await {
            Ok(Some(stored)) => return stored_result(stored),
            Ok(None) => {}
            Err(error) => return self.later(job, &error),
        }
        let found = match self.poll(&job).await {
            Ok(found) => found,
            Err(failed) => return self.failed(job, failed).await,
        };
        job.polls = job.polls.saturating_add(1);
        job.failures = 0;
        let event = match found {
            Found::Call(record) => self.result_of(&job, &record).await,
            _ if job.polls < self.settings.polls() => {
                let after = self.settings.poll_after(job.polls).unwrap_or_default();
                job.due_at = job.dialed_at.checked_add(after).unwrap_or(Timestamp::MAX);
                tracing::debug!(
                    polls = job.polls,
                    ?found,
                    "no single record yet; looking again later"
                );
                return JobStep::Wait(job);
            }
            Found::Several => CallResultEvent::unknown(&subject(&job), UnknownReason::Ambiguous),
            Found::Nothing => CallResultEvent::unknown(&subject(&job), UnknownReason::NoRecord),
        };
        self.record(&job, &event).await
    }

    /// Reads the records of the job's number in its match window and decides which is its
    /// call; a call found is taken for the request before it is returned.
    async fn poll(&self, job: &FollowupJob) -> Result<Found, Failed> {
        let window = matching::Window::of(&self.settings);
        let (start, stop) = window.bounds(job.dialed_at);
        let mut records = Vec::new();
        let mut listed = 0u64;
        let mut complete = false;
        for page in 1..=MAX_PAGES {
            self.pace.start(&job.instance_id).await;
            let query = RecordQuery {
                instance_id: &job.instance_id,
                phone_number: &job.callee,
                start,
                stop,
                page,
                page_size: PAGE_SIZE,
            };
            let answer = self
                .records
                .list_call_records(&query)
                .await
                .map_err(Failed::Query)?;
            listed += answer.listed as u64;
            records.extend(answer.records);
            if answer.listed < PAGE_SIZE as usize || listed >= answer.total {
                complete = true;
                break;
            }
        }
        if !complete {
            // More records in the window than the pages read: not decided on a part of them.
            return Ok(Found::Several);
        }
        let dialed = Dialed {
            request_id: &job.request_id,
            caller: &job.caller,
            callee: &job.callee,
            dialed_at: job.dialed_at,
        };
        let candidates = matching::candidates(&records, &dialed, window);
        if candidates.is_empty() {
            return Ok(Found::Nothing);
        }
        let ids: Vec<&str> = candidates.iter().map(|r| r.contact_id.as_str()).collect();
        let mut holders = self
            .store
            .contact_holders(&job.instance_id, &ids)
            .await
            .map_err(Failed::Store)?;
        // Each round either takes a record or learns that another request just took one:
        // at most one round per candidate.
        for _ in 0..=candidates.len() {
            let record = match matching::decide(&candidates, &holders, &job.request_id) {
                Match::Exact(record) => record,
                Match::Ambiguous(_) => return Ok(Found::Several),
                Match::None => return Ok(Found::Nothing),
            };
            let holder = self
                .store
                .claim_contact(&job.instance_id, &record.contact_id, &job.request_id)
                .await
                .map_err(Failed::Store)?;
            if holder == job.request_id {
                return Ok(Found::Call(Box::new(record.clone())));
            }
            if let Some(i) = ids.iter().position(|id| *id == record.contact_id) {
                holders[i] = Some(holder);
            }
        }
        Ok(Found::Nothing)
    }

    /// The result for the job's call, with how it ended when that is asked for and CCC
    /// says (a failure to say only leaves `release_reason` out).
    async fn result_of(&self, job: &FollowupJob, record: &CallDetailRecord) -> CallResultEvent {
        let ending = if self.settings.fetch_release_reason {
            self.pace.start(&job.instance_id).await;
            match self
                .records
                .call_ending(&job.instance_id, &record.contact_id)
                .await
            {
                Ok(ending) => Some(ending),
                Err(failure) => {
                    tracing::warn!(
                        code = failure.code(),
                        "could not learn how the call ended; publishing the result without it"
                    );
                    None
                }
            }
        } else {
            None
        };
        CallResultEvent::of_record(&subject(job), record, ending.as_ref())
    }

    /// Stores `event` as the request's result unless one is stored, and publishes the stored
    /// one.
    async fn record(&self, job: &FollowupJob, event: &CallResultEvent) -> JobStep {
        match self
            .store
            .record_call_result(&job.request_id, &event.to_json())
            .await
        {
            Ok(stored) => stored_result(stored),
            Err(error) => self.later(job.clone(), &error),
        }
    }

    /// A poll that could not decide. A query that keeps failing ends as `unknown`
    /// (`query_failed`), recorded like any result; anything else is tried again soon,
    /// without spending a poll.
    async fn failed(&self, mut job: FollowupJob, failed: Failed) -> JobStep {
        match failed {
            Failed::Query(failure) => {
                job.failures = job.failures.saturating_add(1);
                if job.failures >= self.settings.max_query_failures {
                    tracing::error!(
                        code = failure.code(),
                        failures = job.failures,
                        "CCC's records could not be read; the call result is unknown"
                    );
                    let event =
                        CallResultEvent::unknown(&subject(&job), UnknownReason::QueryFailed);
                    return self.record(&job, &event).await;
                }
                self.later(job, &failure)
            }
            Failed::Store(error) => self.later(job, &error),
        }
    }

    /// Looks again after a pause that grows with the failures in a row: 5 s, doubling, at
    /// most a minute.
    fn later(&self, mut job: FollowupJob, why: &dyn std::fmt::Display) -> JobStep {
        let retry_in = RETRY_FIRST
            .saturating_mul(1 << job.failures.saturating_sub(1).min(4))
            .min(RETRY_MAX);
        tracing::warn!(error = %why, ?retry_in, "could not poll CCC's records; trying again");
        job.due_at = Timestamp::now()
            .checked_add(retry_in)
            .unwrap_or(Timestamp::MAX);
        JobStep::Wait(job)
    }
}

/// What the result event says about the job's request.
fn subject(job: &FollowupJob) -> Subject<'_> {
    Subject {
        request_id: &job.request_id,
        task_id: &job.task_id,
        dialed_at: job.dialed_at,
        attributes: job.attributes.as_deref(),
        polls: job.polls,
    }
}

/// Publishes a stored result as stored.
fn stored_result(json: Vec<u8>) -> JobStep {
    match serde_json::from_slice::<CallResultEvent>(&json) {
        Ok(event) => JobStep::Publish(Published { event, json }),
        Err(error) => {
            tracing::error!(%error, "the stored call result is unreadable; parking the job");
            JobStep::Park {
                reason: "unreadable_record",
                detail: "the stored call result could not be read".to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::ccc::{CallEnding, ErrorClass, RecordPage};
    use crate::config::Settings;
    use crate::followup::result::{Disposition, MatchKind};
    use crate::phone::PhoneNumber;
    use crate::store::embedded::EmbeddedStore;

    const CALLER: &str = "02285196281";
    const CALLEE: &str = "15732036617";
    const DIALED_MS: i64 = 1_765_000_000_000;

    /// Answers queries from a script, one answer per page asked for.
    #[derive(Default)]
    struct Scripted {
        pages: Mutex<VecDeque<Result<RecordPage, DialFailure>>>,
        asked: Mutex<u32>,
    }

    impl Scripted {
        fn answer(&self, answer: Result<RecordPage, DialFailure>) {
            self.pages.lock().unwrap().push_back(answer);
        }

        fn asked(&self) -> u32 {
            *self.asked.lock().unwrap()
        }
    }

    impl CallRecords for Scripted {
        async fn list_call_records(
            &self,
            _query: &RecordQuery<'_>,
        ) -> Result<RecordPage, DialFailure> {
            *self.asked.lock().unwrap() += 1;
            self.pages
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Ok(RecordPage::default()))
        }

        async fn call_ending(&self, _: &str, _: &str) -> Result<CallEnding, DialFailure> {
            Ok(CallEnding {
                release_reason: Some("NormalClearing".into()),
                release_agent: None,
            })
        }
    }

    struct Fixture {
        followup: Followup<Scripted, EmbeddedStore>,
        _dir: tempdir::Dir,
    }

    mod tempdir {
        /// A directory removed on drop.
        pub struct Dir(pub std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn fixture() -> Fixture {
        let mut settings = Settings::load_from(None, Vec::new()).unwrap();
        let dir = tempdir::Dir(
            std::env::temp_dir().join(format!("dialex-poll-{}", uuid::Uuid::new_v4().simple())),
        );
        settings.store.data_dir = dir.0.clone();
        settings.followup.max_query_failures = 2;
        Fixture {
            followup: Followup {
                records: Scripted::default(),
                store: EmbeddedStore::open(&settings.store, "w".into()).unwrap(),
                pace: Pace::new(1_000.0),
                settings: settings.followup,
            },
            _dir: dir,
        }
    }

    fn job(request_id: &str) -> FollowupJob {
        let dialed_at = Timestamp::from_millisecond(DIALED_MS).unwrap();
        FollowupJob {
            request_id: request_id.into(),
            instance_id: "inst".into(),
            caller: PhoneNumber::parse(CALLER).unwrap(),
            callee: PhoneNumber::parse(CALLEE).unwrap(),
            task_id: "task-1".into(),
            dialed_at,
            attributes: None,
            polls: 0,
            failures: 0,
            due_at: dialed_at,
        }
    }

    fn page(ids: &[&str]) -> RecordPage {
        let records = ids
            .iter()
            .enumerate()
            .map(|(i, id)| CallDetailRecord {
                contact_id: (*id).into(),
                started_at: Timestamp::from_millisecond(DIALED_MS + 300 + 1_000 * i as i64).ok(),
                duration_s: Some(20),
                contact_type: Some("Outbound".into()),
                disposition: Some("Success".into()),
                calling: PhoneNumber::parse(CALLER).ok(),
                called: PhoneNumber::parse(CALLEE).ok(),
                agents: Vec::new(),
            })
            .collect::<Vec<_>>();
        RecordPage {
            total: records.len() as u64,
            listed: records.len(),
            records,
        }
    }

    fn unavailable() -> DialFailure {
        DialFailure::Transport {
            class: ErrorClass::Retryable,
            code: "http_503",
            detail: "down".into(),
        }
    }

    fn published(step: JobStep) -> CallResultEvent {
        match step {
            JobStep::Publish(published) => published.event,
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_job_back_early_waits_again_without_asking() {
        let f = fixture();
        let mut early = job("r");
        early.due_at = Timestamp::now() + jiff::SignedDuration::from_secs(30);
        assert!(matches!(f.followup.step(early).await, JobStep::Wait(_)));
        assert_eq!(f.followup.records.asked(), 0);
    }

    #[tokio::test]
    async fn one_record_is_taken_recorded_and_published_and_then_published_as_stored() {
        let f = fixture();
        f.followup.records.answer(Ok(page(&["c1"])));
        let event = published(f.followup.step(job("r")).await);
        assert_eq!(event.disposition, Disposition::Answered);
        assert_eq!(event.contact_id.as_deref(), Some("c1"));
        assert_eq!(event.release_reason.as_deref(), Some("NormalClearing"));
        assert_eq!(event.polls, 1);
        let holders = f
            .followup
            .store
            .contact_holders("inst", &["c1"])
            .await
            .unwrap();
        assert_eq!(holders, [Some("r".to_owned())]);
        // Again: the stored result, without a query.
        let again = published(f.followup.step(job("r")).await);
        assert_eq!(again.completed_at, event.completed_at);
        assert_eq!(f.followup.records.asked(), 1);
    }

    #[tokio::test]
    async fn nothing_yet_waits_for_the_next_poll_and_nothing_at_the_last_is_no_record() {
        let f = fixture();
        let JobStep::Wait(next) = f.followup.step(job("r")).await else {
            panic!("waits");
        };
        assert_eq!(next.polls, 1);
        let second = Duration::from_millis(f.followup.settings.polls_ms[1]);
        assert_eq!(next.due_at, job("r").dialed_at + second);
        let mut last = job("r");
        last.polls = f.followup.settings.polls() - 1;
        let event = published(f.followup.step(last).await);
        assert_eq!(event.reason, Some(UnknownReason::NoRecord));
        assert_eq!(event.match_kind, MatchKind::None);
    }

    #[tokio::test]
    async fn a_record_another_request_took_is_not_this_ones() {
        let f = fixture();
        f.followup
            .store
            .claim_contact("inst", "c1", "other")
            .await
            .unwrap();
        f.followup.records.answer(Ok(page(&["c1", "c2"])));
        let event = published(f.followup.step(job("r")).await);
        assert_eq!(event.contact_id.as_deref(), Some("c2"));
        // Two free records at the last poll: not guessed.
        let mut last = job("s");
        last.polls = f.followup.settings.polls() - 1;
        f.followup.records.answer(Ok(page(&["c3", "c4"])));
        let event = published(f.followup.step(last).await);
        assert_eq!(event.match_kind, MatchKind::Ambiguous);
        assert_eq!(event.contact_id, None);
    }

    #[tokio::test]
    async fn a_failing_query_is_tried_again_then_ends_query_failed() {
        let f = fixture();
        f.followup.records.answer(Err(unavailable()));
        let JobStep::Wait(retry) = f.followup.step(job("r")).await else {
            panic!("tried again");
        };
        assert_eq!((retry.polls, retry.failures), (0, 1));
        let wait = retry.due_at.duration_since(Timestamp::now());
        assert!(
            wait > jiff::SignedDuration::from_secs(4) && wait <= jiff::SignedDuration::from_secs(5)
        );
        f.followup.records.answer(Err(unavailable()));
        let mut due = retry;
        due.due_at = Timestamp::now();
        let event = published(f.followup.step(due).await);
        assert_eq!(event.reason, Some(UnknownReason::QueryFailed));
    }
}
