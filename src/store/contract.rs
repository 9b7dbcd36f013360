//! The [`DialStore`] and [`CallResults`] contract, written once and run against every backend.
//!
//! Each test here is a generic `async fn` over a [`Backend`]: a fresh, isolated store plus the
//! few ways a test looks inside it. A backend's test module implements [`Backend`] and calls
//! [`contract_tests!`] once, which adds a `contract` module holding one `#[tokio::test]` per test
//! below; a new backend gets the whole suite the same way. What only one backend can show
//! (embedded: the sweeper, reopening, `kill -9`, the group-commit writer; Redis: lifetimes on the
//! server's clock, corrupt counters, connection errors) stays in that backend's own tests.
//!
//! Every test ends with [`finish`]: the backend's tidiness check and its clean-up.

use std::sync::Arc;
use std::time::Duration;

use super::{
    CallResults, CalleeState, Claim, ClaimToken, Cooldown, DialRecords, DialStore,
    MAX_FINGERPRINT_LEN, Record, Recorded, StoreError,
};

/// The worker every contract store claims as.
pub(super) const WORKER: &str = "worker-a";
/// The fingerprint of the request every test claims for, and of a different request.
pub(super) const FP: &str = "f1f1f1";
pub(super) const OTHER_FP: &str = "0b0b0b";
pub(super) const EVENT: &[u8] = br#"{"status":"dialed"}"#;
const UNKNOWN: &[u8] = br#"{"status":"unknown","code":"interrupted"}"#;
pub(super) const DAY: &str = "2026-11-25";
const NEXT_DAY: &str = "2026-11-26";
/// The lease of most tests: no claim runs out while a test looks at it.
const LEASE: Duration = Duration::from_secs(60);
/// The lease of the tests about abandoned claims, and how long they wait for it to run out.
const SHORT_LEASE: Duration = Duration::from_millis(50);
const PAST_SHORT_LEASE: Duration = Duration::from_millis(150);
const MINUTE: Duration = Duration::from_secs(60);

/// A backend as the contract tests see it: a store of its own, and a look inside.
pub(super) trait Backend: Sized {
    type Store: DialStore + CallResults + Clone;

    /// Opens a fresh store that no other test shares (its own directory, its own key prefix),
    /// whose claims name [`WORKER`] and last `lease`. Panics if it cannot: a backend that is not
    /// there (Redis down) fails its tests, it never skips them.
    async fn open(lease: Duration) -> Self;

    /// The store [`Backend::open`] opened.
    fn store(&self) -> &Self::Store;

    /// Another handle on the same state, as a second replica would use it. Redis: a connection
    /// of its own naming `worker-b`. A backend that serves one replica returns a clone.
    async fn another_replica(&self) -> Self::Store;

    /// What is stored for `request_id`, exactly as written, and when it expires; `None` if
    /// nothing is.
    async fn stored(&self, request_id: &str) -> Option<RawRecord>;

    /// Stores `value` for `request_id` as it is, for a minute: what an earlier version of the
    /// worker would have left (`C|worker-b|1`, `R|{...}`, `P|{...}`), or garbage.
    async fn put_raw(&self, request_id: &str, value: &[u8]);

    /// The count of the live daily counter of `key` on `day`; `None` if there is none.
    async fn daily_count(&self, key: &str, day: &str) -> Option<u32>;

    /// How many live (unexpired) entries of `kind` the store holds.
    async fn live(&self, kind: Kind) -> usize;

    /// Whatever stored could outlive its expiry, one line each; empty when the store is tidy.
    /// Embedded: every record, cooldown, counter, contact and call-result row has exactly its
    /// expiry-index entry.
    /// Redis: every key has a TTL.
    async fn untidy(&self) -> Vec<String>;

    /// Removes everything the store wrote (its directory, its keys).
    async fn clean_up(self);
}

/// A request's stored value and when it expires, in ms since the epoch on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RawRecord {
    pub value: Vec<u8>,
    pub expires_at_ms: u64,
}

/// What a store holds entries of.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Records,
    Cooldowns,
    DailyCounters,
    /// Contacts claimed for a request.
    Contacts,
    /// Call results recorded for a request.
    CallResults,
}

/// Adds a `contract` module running every contract test against `$backend` (a type implementing
/// [`Backend`] in the calling module), with the runtime each test needs. A contract test missing
/// from these lists is dead code, which the lints refuse.
macro_rules! contract_tests {
    ($backend:ident) => {
        mod contract {
            $crate::store::contract::contract_tests!(@current_thread $backend:
                a_live_claim_is_held_even_for_the_same_worker,
                a_recorded_result_is_reported_to_later_claims,
                an_expired_lease_is_abandoned_and_resolved_once,
                a_claim_and_its_result_carry_the_requests_fingerprint,
                a_reused_request_id_on_a_live_claim_is_reported_and_changes_nothing,
                a_reused_request_id_on_an_abandoned_claim_leaves_it_to_be_resolved,
                a_reused_request_id_on_a_result_is_reported_and_the_result_kept,
                records_written_before_fingerprints_match_any_request,
                a_result_marked_published_by_an_earlier_version_is_still_a_result,
                a_fingerprint_the_encoding_cannot_hold_is_refused_before_anything_is_written,
                an_unreadable_record_is_reported_corrupt,
                recording_over_someone_elses_claim_conflicts,
                recording_without_a_claim_stores_the_result,
                release_drops_only_the_matching_claim,
                cooldowns_hold_a_callee_for_one_request,
                a_cooldown_expires_after_its_window,
                a_zero_cooldown_window_holds_nothing,
                daily_reservations_stop_at_the_cap_and_release_frees_one,
                daily_release_never_goes_below_zero_nor_creates_a_counter,
                daily_counters_are_per_day_and_per_key,
                a_working_store_passes_its_check,
                the_first_claim_on_a_contact_wins,
                contact_holders_are_answered_in_order,
                a_contact_id_in_two_instances_is_two_contacts,
                the_first_call_result_wins_byte_for_byte,
                ids_holding_separators_do_not_collide,
            );
            $crate::store::contract::contract_tests!(@multi_thread $backend:
                exactly_one_of_many_concurrent_claims_acquires,
                concurrent_daily_reservations_never_exceed_the_cap,
                exactly_one_of_many_concurrent_contact_claims_wins,
            );
        }
    };
    (@current_thread $backend:ident: $($test:ident,)*) => {$(
        #[tokio::test]
        async fn $test() {
            $crate::store::contract::$test::<super::$backend>().await;
        }
    )*};
    (@multi_thread $backend:ident: $($test:ident,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $test() {
            $crate::store::contract::$test::<super::$backend>().await;
        }
    )*};
}
pub(super) use contract_tests;

/// Removes the store, then fails if it was not tidy.
async fn finish<B: Backend>(backend: B) {
    let untidy = backend.untidy().await;
    backend.clean_up().await;
    assert!(untidy.is_empty(), "the store is not tidy: {untidy:#?}");
}

async fn acquire<S: DialStore>(store: &S, request_id: &str) -> ClaimToken {
    match store.claim(request_id, FP).await.expect("claim") {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired for {request_id}, got {other:?}"),
    }
}

async fn value<B: Backend>(backend: &B, request_id: &str) -> Option<Vec<u8>> {
    backend.stored(request_id).await.map(|raw| raw.value)
}

fn recorded(event: &[u8]) -> Claim {
    Claim::Recorded {
        event: event.to_vec(),
    }
}

pub(super) async fn a_live_claim_is_held_even_for_the_same_worker<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let token = acquire(store, "r1").await;
    // The token is exactly what is stored, and names us and the request's fingerprint.
    assert_eq!(value(&backend, "r1").await, Some(token.0.clone()));
    let Record::Claimed {
        worker,
        fingerprint,
        ..
    } = Record::decode(&token.0).unwrap()
    else {
        panic!("the token must be a claim");
    };
    assert_eq!(
        (worker.as_str(), fingerprint.as_deref()),
        (WORKER, Some(FP))
    );
    // Another replica, and a second delivery in the same worker, both see a live claim.
    for asker in [backend.another_replica().await, store.clone()] {
        match asker.claim("r1", FP).await.unwrap() {
            Claim::Held { worker, remaining } => {
                assert_eq!(worker, WORKER);
                assert!(remaining <= LEASE, "{remaining:?}");
                assert!(remaining > LEASE - Duration::from_secs(10), "{remaining:?}");
            }
            other => panic!("expected Held, got {other:?}"),
        }
    }
    // Another id is independent.
    acquire(store, "r2").await;
    assert_eq!(backend.live(Kind::Records).await, 2);
    finish(backend).await;
}

pub(super) async fn a_recorded_result_is_reported_to_later_claims<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let token = acquire(store, "r1").await;
    let claimed = backend.stored("r1").await.expect("the claim is stored");
    // Time passes, so that a result which restarted the expiry would show.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.record("r1", &token, EVENT).await.unwrap(),
        Recorded::Stored
    );
    // The result takes the claim's place and keeps its expiry: it lives the record TTL from
    // the claim, not longer.
    let result = backend.stored("r1").await.expect("the result is stored");
    assert_eq!(result.expires_at_ms, claimed.expires_at_ms);
    // Every later claim (a redelivery, here or on another replica) is told the result, and
    // changes nothing.
    let other = backend.another_replica().await;
    for asker in [store, &other, store] {
        assert_eq!(asker.claim("r1", FP).await.unwrap(), recorded(EVENT));
    }
    assert_eq!(backend.stored("r1").await, Some(result));
    assert_eq!(backend.live(Kind::Records).await, 1);
    // Recording again with the same token (a retry after a lost answer) finds the first result.
    assert_eq!(
        store.record("r1", &token, b"{}").await.unwrap(),
        Recorded::Earlier(EVENT.to_vec())
    );
    finish(backend).await;
}

pub(super) async fn an_expired_lease_is_abandoned_and_resolved_once<B: Backend>() {
    let backend = B::open(SHORT_LEASE).await;
    let (dead, other) = (backend.store(), backend.another_replica().await);
    let original = acquire(dead, "r1").await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    // The abandoned token is the stored claim; claiming again does not take it over.
    for _ in 0..2 {
        assert_eq!(
            other.claim("r1", FP).await.unwrap(),
            Claim::Abandoned(original.clone())
        );
    }
    assert_eq!(
        other.record("r1", &original, UNKNOWN).await.unwrap(),
        Recorded::Stored
    );
    // A second resolver holding the same token finds the first result ...
    assert_eq!(
        other.record("r1", &original, b"{}").await.unwrap(),
        Recorded::Earlier(UNKNOWN.to_vec())
    );
    // ... and so does the dead worker, coming back late with its result: it overwrites nothing.
    assert_eq!(
        dead.record("r1", &original, EVENT).await.unwrap(),
        Recorded::Earlier(UNKNOWN.to_vec())
    );
    assert_eq!(dead.claim("r1", FP).await.unwrap(), recorded(UNKNOWN));
    finish(backend).await;
}

pub(super) async fn a_claim_and_its_result_carry_the_requests_fingerprint<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let token = acquire(store, "r1").await;
    assert!(token.0.starts_with(b"C#f1f1f1|worker-a|"), "{token:?}");
    assert_eq!(value(&backend, "r1").await, Some(token.0.clone()));
    store.record("r1", &token, EVENT).await.unwrap();
    assert_eq!(
        value(&backend, "r1").await,
        Some([&b"R#f1f1f1|"[..], EVENT].concat())
    );
    finish(backend).await;
}

pub(super) async fn a_reused_request_id_on_a_live_claim_is_reported_and_changes_nothing<
    B: Backend,
>() {
    let backend = B::open(LEASE).await;
    let (store, other) = (backend.store(), backend.another_replica().await);
    let token = acquire(store, "r1").await;
    let before = backend.stored("r1").await;
    assert_eq!(other.claim("r1", OTHER_FP).await.unwrap(), Claim::Reused);
    // The claim and its lease stay exactly as they were.
    assert_eq!(backend.stored("r1").await, before);
    // The first request's redelivery is still told its claim is held, and its holder records
    // as usual.
    assert!(matches!(
        other.claim("r1", FP).await.unwrap(),
        Claim::Held { worker, .. } if worker == WORKER
    ));
    assert_eq!(
        store.record("r1", &token, EVENT).await.unwrap(),
        Recorded::Stored
    );
    assert_eq!(backend.live(Kind::Records).await, 1);
    finish(backend).await;
}

pub(super) async fn a_reused_request_id_on_an_abandoned_claim_leaves_it_to_be_resolved<
    B: Backend,
>() {
    let backend = B::open(SHORT_LEASE).await;
    let (dead, other) = (backend.store(), backend.another_replica().await);
    let original = acquire(dead, "r1").await;
    tokio::time::sleep(PAST_SHORT_LEASE).await;
    let before = backend.stored("r1").await;
    assert_eq!(other.claim("r1", OTHER_FP).await.unwrap(), Claim::Reused);
    assert_eq!(backend.stored("r1").await, before);
    assert_eq!(before.map(|raw| raw.value), Some(original.0.clone()));
    // The first request's redelivery still finds it abandoned, with the very same token.
    assert_eq!(
        other.claim("r1", FP).await.unwrap(),
        Claim::Abandoned(original.clone())
    );
    assert_eq!(
        other.record("r1", &original, UNKNOWN).await.unwrap(),
        Recorded::Stored
    );
    assert_eq!(other.claim("r1", OTHER_FP).await.unwrap(), Claim::Reused);
    finish(backend).await;
}

pub(super) async fn a_reused_request_id_on_a_result_is_reported_and_the_result_kept<B: Backend>() {
    let backend = B::open(LEASE).await;
    let (store, other) = (backend.store(), backend.another_replica().await);
    let token = acquire(store, "r1").await;
    store.record("r1", &token, EVENT).await.unwrap();
    let before = backend.stored("r1").await;
    for _ in 0..2 {
        assert_eq!(other.claim("r1", OTHER_FP).await.unwrap(), Claim::Reused);
    }
    assert_eq!(backend.stored("r1").await, before);
    // Still the first request's answer.
    assert_eq!(other.claim("r1", FP).await.unwrap(), recorded(EVENT));
    finish(backend).await;
}

pub(super) async fn records_written_before_fingerprints_match_any_request<B: Backend>() {
    // A lease that ends in the year 2286: live on any store's clock.
    const LIVE: &[u8] = b"C|worker-b|9999999999999";
    const DEAD: &[u8] = b"C|worker-b|1";
    let backend = B::open(LEASE).await;
    let store = backend.store();
    backend.put_raw("live", LIVE).await;
    backend.put_raw("dead", DEAD).await;
    backend
        .put_raw("recorded", &[&b"R|"[..], EVENT].concat())
        .await;
    backend
        .put_raw("published", &[&b"P|"[..], EVENT].concat())
        .await;

    for fingerprint in [FP, OTHER_FP] {
        assert!(matches!(
            store.claim("live", fingerprint).await.unwrap(),
            Claim::Held { worker, .. } if worker == "worker-b"
        ));
        assert_eq!(
            store.claim("dead", fingerprint).await.unwrap(),
            Claim::Abandoned(ClaimToken(DEAD.to_vec()))
        );
        for id in ["recorded", "published"] {
            assert_eq!(store.claim(id, fingerprint).await.unwrap(), recorded(EVENT));
        }
    }
    // The old claim is resolved with its old token into a result without a fingerprint, which,
    // like its claim, answers any request.
    let stale = ClaimToken(DEAD.to_vec());
    assert_eq!(
        store.record("dead", &stale, UNKNOWN).await.unwrap(),
        Recorded::Stored
    );
    assert_eq!(
        value(&backend, "dead").await,
        Some([&b"R|"[..], UNKNOWN].concat())
    );
    assert_eq!(
        store.claim("dead", OTHER_FP).await.unwrap(),
        recorded(UNKNOWN)
    );
    // And an old live claim is released by its token as before.
    store
        .release("live", &ClaimToken(LIVE.to_vec()))
        .await
        .unwrap();
    assert_eq!(backend.stored("live").await, None);
    finish(backend).await;
}

pub(super) async fn a_result_marked_published_by_an_earlier_version_is_still_a_result<
    B: Backend,
>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let published = [&b"P|"[..], EVENT].concat();
    backend.put_raw("r1", &published).await;
    assert_eq!(store.claim("r1", FP).await.unwrap(), recorded(EVENT));
    // Neither a result nor a release changes it.
    let token = ClaimToken(b"C|worker-a|1".to_vec());
    assert_eq!(
        store.record("r1", &token, b"{}").await.unwrap(),
        Recorded::Earlier(EVENT.to_vec())
    );
    store.release("r1", &token).await.unwrap();
    assert_eq!(value(&backend, "r1").await, Some(published));
    finish(backend).await;
}

pub(super) async fn a_fingerprint_the_encoding_cannot_hold_is_refused_before_anything_is_written<
    B: Backend,
>() {
    let backend = B::open(LEASE).await;
    let too_long = "a".repeat(MAX_FINGERPRINT_LEN + 1);
    for bad in ["", "a|b", "a#b", &too_long] {
        assert!(
            matches!(
                backend.store().claim("r1", bad).await,
                Err(StoreError::InvalidFingerprint)
            ),
            "{bad:?}"
        );
    }
    assert_eq!(backend.stored("r1").await, None);
    assert_eq!(backend.live(Kind::Records).await, 0);
    finish(backend).await;
}

pub(super) async fn an_unreadable_record_is_reported_corrupt<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    backend.put_raw("r1", b"garbage").await;
    assert!(matches!(
        store.claim("r1", FP).await,
        Err(StoreError::Corrupt(_))
    ));
    // Nor is a result recorded over it.
    let token = ClaimToken(b"C|worker-a|1".to_vec());
    assert!(matches!(
        store.record("r1", &token, EVENT).await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(value(&backend, "r1").await, Some(b"garbage".to_vec()));
    finish(backend).await;
}

pub(super) async fn recording_over_someone_elses_claim_conflicts<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let ours = acquire(store, "r1").await;
    let Record::Claimed {
        worker,
        lease_until_ms,
        fingerprint,
    } = Record::decode(&ours.0).unwrap()
    else {
        panic!("the token must be a claim");
    };
    let theirs = [
        ClaimToken(b"C|worker-b|1".to_vec()),
        ClaimToken(
            Record::Claimed {
                worker: "worker-b".into(),
                lease_until_ms: 1,
                fingerprint: Some(FP.into()),
            }
            .encode(),
        ),
        // The same worker id with another lease end is another claim too.
        ClaimToken(
            Record::Claimed {
                worker,
                lease_until_ms: lease_until_ms - 1,
                fingerprint,
            }
            .encode(),
        ),
    ];
    for token in &theirs {
        assert!(
            matches!(
                store.record("r1", token, EVENT).await,
                Err(StoreError::Conflict)
            ),
            "{token:?}"
        );
    }
    // Nothing changed: the claim is still ours, still live, and records as usual.
    assert_eq!(value(&backend, "r1").await, Some(ours.0.clone()));
    assert!(matches!(
        store.claim("r1", FP).await.unwrap(),
        Claim::Held { .. }
    ));
    assert_eq!(
        store.record("r1", &ours, EVENT).await.unwrap(),
        Recorded::Stored
    );
    finish(backend).await;
}

pub(super) async fn recording_without_a_claim_stores_the_result<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    // The claim was released, or is gone, but the dial happened: its result is kept.
    let token = acquire(store, "r1").await;
    store.release("r1", &token).await.unwrap();
    assert_eq!(
        store.record("r1", &token, EVENT).await.unwrap(),
        Recorded::Stored
    );
    assert_eq!(store.claim("r1", FP).await.unwrap(), recorded(EVENT));
    // The same for a claim this store never saw.
    let unseen = ClaimToken(b"C|worker-a|1".to_vec());
    assert_eq!(
        store.record("r2", &unseen, EVENT).await.unwrap(),
        Recorded::Stored
    );
    assert_eq!(
        value(&backend, "r2").await,
        Some([&b"R|"[..], EVENT].concat())
    );
    assert_eq!(backend.live(Kind::Records).await, 2);
    finish(backend).await;
}

pub(super) async fn release_drops_only_the_matching_claim<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let token = acquire(store, "r1").await;
    store
        .release("r1", &ClaimToken(b"C|worker-b|1".to_vec()))
        .await
        .unwrap();
    assert!(matches!(
        store.claim("r1", FP).await.unwrap(),
        Claim::Held { .. }
    ));
    store.release("r1", &token).await.unwrap();
    assert_eq!(backend.stored("r1").await, None);
    assert_eq!(backend.live(Kind::Records).await, 0);
    // A result is never released, not even by the token of the claim it replaced.
    let again = acquire(store, "r1").await;
    store.record("r1", &again, EVENT).await.unwrap();
    store.release("r1", &again).await.unwrap();
    assert_eq!(store.claim("r1", FP).await.unwrap(), recorded(EVENT));
    // Releasing an unknown id is a no-op.
    store.release("nope", &again).await.unwrap();
    assert_eq!(backend.live(Kind::Records).await, 1);
    finish(backend).await;
}

pub(super) async fn exactly_one_of_many_concurrent_claims_acquires<B: Backend>() {
    let backend = B::open(LEASE).await;
    let stores = [
        backend.store().clone(),
        backend.another_replica().await,
        backend.another_replica().await,
    ];
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (store, barrier) = (stores[i % stores.len()].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim("same", FP).await
            })
        })
        .collect();
    let (mut acquired, mut held) = (0, 0);
    for task in tasks {
        match task.await.unwrap().unwrap() {
            Claim::Acquired(_) => acquired += 1,
            Claim::Held { .. } => held += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((acquired, held), (1, 49));
    assert_eq!(backend.live(Kind::Records).await, 1);
    finish(backend).await;
}

pub(super) async fn cooldowns_hold_a_callee_for_one_request<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let taken = |request_id: &str, task_id: Option<&str>| Cooldown::Taken {
        request_id: request_id.into(),
        task_id: task_id.map(Into::into),
    };
    assert_eq!(
        store.cooldown_acquire("k", "a", MINUTE).await.unwrap(),
        Cooldown::Free
    );
    assert_eq!(
        store.cooldown_acquire("k", "b", MINUTE).await.unwrap(),
        taken("a", None)
    );
    // The holder asking again (a redelivery) may go on.
    assert_eq!(
        store.cooldown_acquire("k", "a", MINUTE).await.unwrap(),
        Cooldown::Free
    );
    // Dialed: the task id is remembered.
    store
        .cooldown_dialed("k", "a", "task-1", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.cooldown_acquire("k", "b", MINUTE).await.unwrap(),
        taken("a", Some("task-1"))
    );
    // Neither a dial nor a release by a non-holder touches the slot.
    store
        .cooldown_dialed("k", "b", "task-2", MINUTE)
        .await
        .unwrap();
    store.cooldown_release("k", "b").await.unwrap();
    assert_eq!(
        store.cooldown_acquire("k", "c", MINUTE).await.unwrap(),
        taken("a", Some("task-1"))
    );
    store.cooldown_release("k", "a").await.unwrap();
    assert_eq!(backend.live(Kind::Cooldowns).await, 0);
    assert_eq!(
        store.cooldown_acquire("k", "b", MINUTE).await.unwrap(),
        Cooldown::Free
    );
    // A dial reported with no slot held (its window ran out while the call was placed) takes
    // the slot.
    store
        .cooldown_dialed("k2", "d", "task-3", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.cooldown_acquire("k2", "e", MINUTE).await.unwrap(),
        taken("d", Some("task-3"))
    );
    assert_eq!(backend.live(Kind::Cooldowns).await, 2);
    finish(backend).await;
}

pub(super) async fn a_cooldown_expires_after_its_window<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    let (short, past_short) = (Duration::from_millis(50), Duration::from_millis(150));
    assert_eq!(
        store.cooldown_acquire("k", "a", short).await.unwrap(),
        Cooldown::Free
    );
    assert!(matches!(
        store.cooldown_acquire("k", "b", short).await.unwrap(),
        Cooldown::Taken { .. }
    ));
    store
        .cooldown_dialed("k", "a", "task-1", short)
        .await
        .unwrap();
    tokio::time::sleep(past_short).await;
    assert_eq!(
        store.cooldown_acquire("k", "b", short).await.unwrap(),
        Cooldown::Free
    );
    // An expired slot of someone else does not stop a dial from taking it either.
    tokio::time::sleep(past_short).await;
    store
        .cooldown_dialed("k", "c", "task-2", MINUTE)
        .await
        .unwrap();
    assert_eq!(
        store.cooldown_acquire("k", "d", short).await.unwrap(),
        Cooldown::Taken {
            request_id: "c".into(),
            task_id: Some("task-2".into())
        }
    );
    assert_eq!(backend.live(Kind::Cooldowns).await, 1);
    finish(backend).await;
}

pub(super) async fn a_zero_cooldown_window_holds_nothing<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    for request_id in ["a", "b"] {
        assert_eq!(
            store
                .cooldown_acquire("k", request_id, Duration::ZERO)
                .await
                .unwrap(),
            Cooldown::Free
        );
        store
            .cooldown_dialed("k", request_id, "task-1", Duration::ZERO)
            .await
            .unwrap();
    }
    assert_eq!(backend.live(Kind::Cooldowns).await, 0);
    finish(backend).await;
}

pub(super) async fn daily_reservations_stop_at_the_cap_and_release_frees_one<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    for _ in 0..3 {
        assert!(store.daily_reserve("k", DAY, 3).await.unwrap());
    }
    assert!(!store.daily_reserve("k", DAY, 3).await.unwrap());
    assert!(!store.daily_reserve("k", DAY, 3).await.unwrap());
    assert_eq!(backend.daily_count("k", DAY).await, Some(3));
    store.daily_release("k", DAY).await.unwrap();
    assert_eq!(backend.daily_count("k", DAY).await, Some(2));
    assert!(store.daily_reserve("k", DAY, 3).await.unwrap());
    assert!(!store.daily_reserve("k", DAY, 3).await.unwrap());
    // A raised cap lets more through; a lowered one refuses without counting.
    assert!(store.daily_reserve("k", DAY, 4).await.unwrap());
    assert!(!store.daily_reserve("k", DAY, 2).await.unwrap());
    assert_eq!(backend.daily_count("k", DAY).await, Some(4));
    // A cap of 0 allows nothing and creates nothing.
    assert!(!store.daily_reserve("zero", DAY, 0).await.unwrap());
    assert_eq!(backend.daily_count("zero", DAY).await, None);
    assert_eq!(backend.live(Kind::DailyCounters).await, 1);
    finish(backend).await;
}

pub(super) async fn daily_release_never_goes_below_zero_nor_creates_a_counter<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    // Nothing reserved: nothing is created.
    store.daily_release("none", DAY).await.unwrap();
    store.daily_release("none", DAY).await.unwrap();
    assert_eq!(backend.live(Kind::DailyCounters).await, 0);
    // Reserved once, released three times: zero, not negative ...
    assert!(store.daily_reserve("k", DAY, 2).await.unwrap());
    for _ in 0..3 {
        store.daily_release("k", DAY).await.unwrap();
    }
    assert_eq!(backend.daily_count("k", DAY).await, Some(0));
    // ... so the cap still allows exactly `max` more, not one per extra release.
    assert!(store.daily_reserve("k", DAY, 2).await.unwrap());
    assert!(store.daily_reserve("k", DAY, 2).await.unwrap());
    assert!(!store.daily_reserve("k", DAY, 2).await.unwrap());
    assert_eq!(backend.live(Kind::DailyCounters).await, 1);
    finish(backend).await;
}

pub(super) async fn daily_counters_are_per_day_and_per_key<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    assert!(store.daily_reserve("a", DAY, 1).await.unwrap());
    assert!(!store.daily_reserve("a", DAY, 1).await.unwrap());
    // Another day, or another callee, has its own count.
    assert!(store.daily_reserve("a", NEXT_DAY, 1).await.unwrap());
    assert!(store.daily_reserve("b", DAY, 1).await.unwrap());
    assert!(!store.daily_reserve("a", NEXT_DAY, 1).await.unwrap());
    assert!(!store.daily_reserve("b", DAY, 1).await.unwrap());
    // Separators inside a day label or key do not make two counters collide.
    assert!(store.daily_reserve("c|d", "x", 1).await.unwrap());
    assert!(store.daily_reserve("d", "x|c", 1).await.unwrap());
    assert!(store.daily_reserve("x|d", "c", 1).await.unwrap());
    // Releasing one counter frees that one only.
    store.daily_release("a", NEXT_DAY).await.unwrap();
    assert!(!store.daily_reserve("a", DAY, 1).await.unwrap());
    assert!(!store.daily_reserve("b", DAY, 1).await.unwrap());
    assert!(store.daily_reserve("a", NEXT_DAY, 1).await.unwrap());
    assert_eq!(backend.live(Kind::DailyCounters).await, 6);
    finish(backend).await;
}

pub(super) async fn concurrent_daily_reservations_never_exceed_the_cap<B: Backend>() {
    let backend = B::open(LEASE).await;
    let stores = [
        backend.store().clone(),
        backend.another_replica().await,
        backend.another_replica().await,
    ];
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (store, barrier) = (stores[i % stores.len()].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.daily_reserve("k", DAY, 5).await
            })
        })
        .collect();
    let mut counted = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() {
            counted += 1;
        }
    }
    assert_eq!(counted, 5);
    assert!(!backend.store().daily_reserve("k", DAY, 5).await.unwrap());
    assert_eq!(backend.daily_count("k", DAY).await, Some(5));
    finish(backend).await;
}

pub(super) async fn a_working_store_passes_its_check<B: Backend>() {
    let backend = B::open(LEASE).await;
    backend.store().check().await.unwrap();
    backend.another_replica().await.check().await.unwrap();
    finish(backend).await;
}

/// An instance id and one of another instance.
const INSTANCE: &str = "ccc-1";
const OTHER_INSTANCE: &str = "ccc-2";
/// A call result, with bytes a re-encoding would change (spacing, key order, non-ASCII).
const RESULT: &[u8] = "{\"status\": \"answered\",  \"name\":\"Zoë\"}".as_bytes();
const OTHER_RESULT: &[u8] = br#"{"status":"no_answer"}"#;

async fn claim_contact<S: CallResults>(store: &S, contact_id: &str, request_id: &str) -> String {
    store
        .claim_contact(INSTANCE, contact_id, request_id)
        .await
        .expect("claim contact")
}

pub(super) async fn the_first_claim_on_a_contact_wins<B: Backend>() {
    let backend = B::open(LEASE).await;
    let (store, other) = (backend.store(), backend.another_replica().await);
    assert_eq!(claim_contact(store, "c1", "r1").await, "r1");
    // Another request, here or on another replica, is told who holds it, and takes nothing.
    assert_eq!(claim_contact(store, "c1", "r2").await, "r1");
    assert_eq!(claim_contact(&other, "c1", "r3").await, "r1");
    // The holder claiming again (a redelivered follow-up) gets it back.
    assert_eq!(claim_contact(&other, "c1", "r1").await, "r1");
    assert_eq!(claim_contact(store, "c1", "r1").await, "r1");
    // Another contact is independent, even for the same request.
    assert_eq!(claim_contact(store, "c2", "r2").await, "r2");
    assert_eq!(claim_contact(store, "c3", "r1").await, "r1");
    assert_eq!(backend.live(Kind::Contacts).await, 3);
    assert_eq!(backend.live(Kind::CallResults).await, 0);
    finish(backend).await;
}

pub(super) async fn contact_holders_are_answered_in_order<B: Backend>() {
    let backend = B::open(LEASE).await;
    let (store, other) = (backend.store(), backend.another_replica().await);
    let nobody: Vec<Option<String>> = vec![None, None];
    assert_eq!(
        store
            .contact_holders(INSTANCE, &["c1", "c2"])
            .await
            .unwrap(),
        nobody
    );
    assert_eq!(
        store.contact_holders(INSTANCE, &[]).await.unwrap(),
        Vec::<Option<String>>::new()
    );
    claim_contact(store, "c1", "r1").await;
    claim_contact(&other, "c3", "r3").await;
    claim_contact(store, "c3", "r1").await;
    let expected = vec![
        Some("r3".to_owned()),
        None,
        Some("r1".to_owned()),
        Some("r1".to_owned()),
        None,
    ];
    for asker in [store, &other] {
        assert_eq!(
            asker
                .contact_holders(INSTANCE, &["c3", "c2", "c1", "c1", "nope"])
                .await
                .unwrap(),
            expected
        );
    }
    // Asking changes nothing.
    assert_eq!(backend.live(Kind::Contacts).await, 2);
    finish(backend).await;
}

pub(super) async fn a_contact_id_in_two_instances_is_two_contacts<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    assert_eq!(
        store.claim_contact(INSTANCE, "c1", "r1").await.unwrap(),
        "r1"
    );
    assert_eq!(
        store
            .claim_contact(OTHER_INSTANCE, "c1", "r2")
            .await
            .unwrap(),
        "r2"
    );
    assert_eq!(
        store.contact_holders(INSTANCE, &["c1"]).await.unwrap(),
        [Some("r1".to_owned())]
    );
    assert_eq!(
        store
            .contact_holders(OTHER_INSTANCE, &["c1"])
            .await
            .unwrap(),
        [Some("r2".to_owned())]
    );
    assert_eq!(backend.live(Kind::Contacts).await, 2);
    finish(backend).await;
}

pub(super) async fn the_first_call_result_wins_byte_for_byte<B: Backend>() {
    let backend = B::open(LEASE).await;
    let (store, other) = (backend.store(), backend.another_replica().await);
    assert_eq!(store.call_result("r1").await.unwrap(), None);
    assert_eq!(
        store.record_call_result("r1", RESULT).await.unwrap(),
        RESULT
    );
    // A second result, here or on another replica, is answered with the first, unchanged.
    assert_eq!(
        store.record_call_result("r1", OTHER_RESULT).await.unwrap(),
        RESULT
    );
    assert_eq!(
        other.record_call_result("r1", OTHER_RESULT).await.unwrap(),
        RESULT
    );
    assert_eq!(
        other.record_call_result("r1", RESULT).await.unwrap(),
        RESULT
    );
    for asker in [store, &other] {
        assert_eq!(
            asker.call_result("r1").await.unwrap().as_deref(),
            Some(RESULT)
        );
        assert_eq!(asker.call_result("r2").await.unwrap(), None);
    }
    // Another request's result is its own; a call result is no dial record.
    assert_eq!(
        other.record_call_result("r2", OTHER_RESULT).await.unwrap(),
        OTHER_RESULT
    );
    assert_eq!(
        store.call_result("r2").await.unwrap().as_deref(),
        Some(OTHER_RESULT)
    );
    assert_eq!(backend.stored("r1").await, None);
    assert_eq!(backend.live(Kind::CallResults).await, 2);
    assert_eq!(backend.live(Kind::Records).await, 0);
    assert_eq!(backend.live(Kind::Contacts).await, 0);
    finish(backend).await;
}

pub(super) async fn ids_holding_separators_do_not_collide<B: Backend>() {
    let backend = B::open(LEASE).await;
    let store = backend.store();
    // Pairs that a plain `<instance><separator><contact>` key would make one.
    let pairs = [
        ("a:b", "c"),
        ("a", "b:c"),
        ("a|b", "c"),
        ("a", "b|c"),
        ("1:a", "b"),
        ("1|a", "b"),
        ("a", "1:a:b"),
        ("a", "1|a|b"),
    ];
    for (i, (instance, contact)) in pairs.iter().enumerate() {
        let request = format!("r{i}");
        assert_eq!(
            store
                .claim_contact(instance, contact, &request)
                .await
                .unwrap(),
            request,
            "{instance:?} {contact:?}"
        );
    }
    for (i, (instance, contact)) in pairs.iter().enumerate() {
        assert_eq!(
            store.contact_holders(instance, &[*contact]).await.unwrap(),
            [Some(format!("r{i}"))],
            "{instance:?} {contact:?}"
        );
    }
    // Request ids shaped like contact keys are results of their own, not contacts.
    let requests = ["a:b:c", "1:a:b", "c1|a|b", "r|x", "contact:1:a:b"];
    for (i, request) in requests.iter().enumerate() {
        let result = format!("{{\"n\":{i}}}").into_bytes();
        assert_eq!(
            store.record_call_result(request, &result).await.unwrap(),
            result,
            "{request:?}"
        );
    }
    for (i, request) in requests.iter().enumerate() {
        assert_eq!(
            store.call_result(request).await.unwrap(),
            Some(format!("{{\"n\":{i}}}").into_bytes()),
            "{request:?}"
        );
    }
    assert_eq!(backend.live(Kind::Contacts).await, pairs.len());
    assert_eq!(backend.live(Kind::CallResults).await, requests.len());
    finish(backend).await;
}

pub(super) async fn exactly_one_of_many_concurrent_contact_claims_wins<B: Backend>() {
    let backend = B::open(LEASE).await;
    let stores = [
        backend.store().clone(),
        backend.another_replica().await,
        backend.another_replica().await,
    ];
    let barrier = Arc::new(tokio::sync::Barrier::new(30));
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let (store, barrier) = (stores[i % stores.len()].clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let request = format!("r{i}");
                let holder = store.claim_contact(INSTANCE, "c1", &request).await?;
                let result = store.record_call_result("same", request.as_bytes()).await?;
                Ok::<_, StoreError>((request, holder, result))
            })
        })
        .collect();
    let mut holders = std::collections::BTreeSet::new();
    let mut results = std::collections::BTreeSet::new();
    let mut won = 0;
    for task in tasks {
        let (request, holder, result) = task.await.unwrap().unwrap();
        if holder == request {
            won += 1;
        }
        holders.insert(holder);
        results.insert(result);
    }
    // Everyone was told the same holder and the same result, and exactly one took the contact.
    assert_eq!((won, holders.len(), results.len()), (1, 1, 1));
    let holder = holders.pop_first();
    assert_eq!(
        backend
            .store()
            .contact_holders(INSTANCE, &["c1"])
            .await
            .unwrap(),
        [holder]
    );
    assert_eq!(
        backend.store().call_result("same").await.unwrap(),
        results.pop_first()
    );
    finish(backend).await;
}
