//! Tests of both limiters. The Redis ones need a real Redis at [`REDIS_URL`] and fail (they are
//! never skipped) without one; each uses its own key prefix and deletes its keys at the end.
//! Timing assertions are deliberately generous: they check the rule, not the machine's speed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ::redis::AsyncCommands;
use tokio::time::Instant;

use super::*;
use crate::store::redis::{RedisAddress, RedisLimiter};

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Generous pacing, so only the rule under test binds.
fn settings() -> LimitRules {
    LimitRules {
        max_in_flight: 5,
        calls_per_second: 10_000.0,
        burst: 10_000,
        per_caller_calls_per_second: 0.0,
        max_wait: Duration::from_secs(10),
        permit_lease: Duration::from_secs(30),
        throttle_factor: 0.5,
        throttle_cooldown: Duration::from_secs(30),
        instances: BTreeMap::new(),
    }
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn prefix() -> String {
    format!("dialex-test-{}", uuid::Uuid::new_v4())
}

async fn redis_limiter(prefix: &str, settings: LimitRules) -> RedisLimiter {
    match RedisLimiter::connect(&RedisAddress::url(REDIS_URL), prefix, settings).await {
        Ok(limiter) => limiter,
        Err(e) => panic!(
            "these tests need a real Redis 7 at {REDIS_URL}; start one \
             (e.g. `redis-server --daemonize yes` or \
             `docker run -d -p 6379:6379 redis:7`): {e}"
        ),
    }
}

/// Deletes every key under the limiter's prefix.
async fn cleanup(limiter: &RedisLimiter) {
    let mut conn = limiter.conn.get();
    crate::store::redis::conn::delete_prefixed(&mut conn, &limiter.inner.key_prefix)
        .await
        .expect("delete test keys");
}

async fn holders(limiter: &RedisLimiter, instance: &str) -> i64 {
    let mut conn = limiter.conn.get();
    conn.zcard(limiter.key(instance, "sem"))
        .await
        .expect("ZCARD")
}

/// A key with a fresh pair (so the pair rule never binds unless a test wants it to).
async fn acquire<L: Limiter>(limiter: &L, instance: &str) -> Option<Permit> {
    let pair = unique();
    limiter
        .acquire(&CallKey {
            instance_id: instance,
            caller_key: "caller",
            pair_key: &pair,
        })
        .await
        .expect("acquire")
}

// ---------------------------------------------------------------------------------------------
// Shared scenarios, run against either backend.

/// 40 tasks spread over `limiters`, each holding its permit ~50 ms: never more than 5 at once
/// (tracked from the outside), and every task gets its permit within max_wait.
async fn concurrency_stays_within_max<L: Limiter + Clone>(limiters: &[L]) {
    let instance = unique();
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(tokio::sync::Barrier::new(40));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let limiter = limiters[i % limiters.len()].clone();
            let (instance, current, peak, barrier) = (
                instance.clone(),
                current.clone(),
                peak.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                let permit = acquire(&limiter, &instance).await?;
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                current.fetch_sub(1, Ordering::SeqCst);
                permit.release().await;
                Some(())
            })
        })
        .collect();
    let mut granted = 0;
    for task in tasks {
        if task.await.expect("task").is_some() {
            granted += 1;
        }
    }
    assert_eq!(granted, 40, "every task must get a permit within max_wait");
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= 5,
        "observed {peak} permits at once, max_in_flight is 5"
    );
    // 40 calls of 50 ms through 5 slots cannot all have run one at a time.
    assert!(peak >= 2, "observed peak {peak}: permits were never shared");
}

/// 60 acquisitions at 20/s, burst 1: about 3 s, and no 1-second window holds more than 21.
async fn rate_is_paced<L: Limiter + Clone>(limiter: &L) {
    let instance = unique();
    let barrier = Arc::new(tokio::sync::Barrier::new(60));
    let start = Instant::now();
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let (limiter, instance, barrier) = (limiter.clone(), instance.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let permit = acquire(&limiter, &instance).await?;
                let at = Instant::now();
                permit.release().await;
                Some(at)
            })
        })
        .collect();
    let mut grants = Vec::new();
    for task in tasks {
        grants.push(task.await.expect("task").expect("granted within max_wait"));
    }
    let elapsed = start.elapsed();
    grants.sort();
    // 60 grants at burst 1 are 59 intervals of 50 ms apart: 2.95 s at the very least.
    assert!(
        elapsed >= Duration::from_millis(2850) && elapsed < Duration::from_secs(6),
        "60 calls at 20/s took {elapsed:?}"
    );
    for (i, first) in grants.iter().enumerate() {
        let in_window = grants[i..]
            .iter()
            .take_while(|t| t.duration_since(*first) <= Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 21,
            "{in_window} grants within one second of grant {i}"
        );
    }
}

/// The only permit is held: an acquire with max_wait 200 ms gives up with `None`.
async fn max_wait_defers<L: Limiter>(holder: &L, waiter: &L) {
    let instance = unique();
    let held = acquire(holder, &instance).await.expect("first permit");
    let start = Instant::now();
    let second = acquire(waiter, &instance).await;
    let waited = start.elapsed();
    assert!(second.is_none(), "max_in_flight 1 is held: expected None");
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "gave up after {waited:?}, max_wait is 200 ms"
    );
    held.release().await;
    assert!(
        acquire(waiter, &instance).await.is_some(),
        "released: free again"
    );
}

/// The same pair twice: the second waits out the pair mark (~1 s); another pair does not.
async fn same_pair_waits_a_second<L: Limiter>(limiter: &L, impatient: &L) {
    let instance = unique();
    let key = CallKey {
        instance_id: &instance,
        caller_key: "c1",
        pair_key: "pair-1",
    };
    let first = limiter.acquire(&key).await.expect("acquire");
    let marked = Instant::now();
    first.expect("first call").release().await;

    // Waiting longer than max_wait allows: deferred (at once: the wait is known).
    assert!(impatient.acquire(&key).await.expect("acquire").is_none());
    // Another pair goes straight through.
    let other = CallKey {
        pair_key: "pair-2",
        ..key
    };
    let start = Instant::now();
    assert!(limiter.acquire(&other).await.expect("acquire").is_some());
    assert!(start.elapsed() < Duration::from_millis(500));

    let second = limiter.acquire(&key).await.expect("acquire");
    let waited = marked.elapsed();
    assert!(second.is_some(), "granted once the mark expires");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "the same pair again after {waited:?}"
    );
}

/// Per-caller pacing at 4/s: the same caller waits ~250 ms, another caller does not.
async fn per_caller_is_paced<L: Limiter>(limiter: &L) {
    let instance = unique();
    let key = |caller: &'static str, pair: &'static str| (caller, pair);
    let acquire_as = |(caller, pair): (&'static str, &'static str)| {
        let instance = instance.clone();
        async move {
            limiter
                .acquire(&CallKey {
                    instance_id: &instance,
                    caller_key: caller,
                    pair_key: pair,
                })
                .await
                .expect("acquire")
                .expect("granted")
        }
    };
    drop(acquire_as(key("a", "p1")).await);
    let start = Instant::now();
    drop(acquire_as(key("b", "p2")).await);
    assert!(
        start.elapsed() < Duration::from_millis(150),
        "another caller is not held back"
    );
    drop(acquire_as(key("a", "p3")).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "caller a again after {waited:?}, at 4 calls/s"
    );
}

/// Grants in `window` of back-to-back acquisitions.
async fn grants_in<L: Limiter>(limiter: &L, instance: &str, window: Duration) -> usize {
    let start = Instant::now();
    let mut granted = 0;
    while start.elapsed() < window {
        if let Some(permit) = acquire(limiter, instance).await {
            granted += 1;
            permit.release().await;
        }
    }
    granted
}

/// 40/s, burst 1: about 20 grants in 500 ms; throttled (factor 0.5), about 10; another
/// instance is not affected.
async fn throttling_slows_the_instance<L: Limiter>(limiter: &L) {
    let (instance, other) = (unique(), unique());
    let window = Duration::from_millis(500);
    let before = grants_in(limiter, &instance, window).await;
    limiter.throttled(&instance);
    let after = grants_in(limiter, &instance, window).await;
    let untouched = grants_in(limiter, &other, window).await;
    assert!(
        (15..=23).contains(&before),
        "{before} grants in 500 ms at 40/s"
    );
    assert!(
        after * 4 <= before * 3,
        "throttled: {after} grants vs {before} before"
    );
    assert!(
        (7..=14).contains(&after),
        "{after} grants throttled to 20/s"
    );
    assert!(
        untouched * 4 > before * 3,
        "other instance: {untouched} vs {before}"
    );
}

/// A holder that vanishes without releasing (a crash) keeps its slot only for its lease.
async fn expired_lease_frees_the_slot<L: Limiter>(limiter: &L) {
    let instance = unique();
    let permit = acquire(limiter, &instance).await.expect("permit");
    let taken = Instant::now();
    std::mem::forget(permit);
    let start = Instant::now();
    let again = acquire(limiter, &instance).await;
    assert!(again.is_some(), "the lease ran out: the slot is free again");
    let waited = taken.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && start.elapsed() < Duration::from_secs(2),
        "slot came back after {waited:?}; the lease is 200 ms"
    );
}

/// Counts a backend's attempts.
struct Counting<B>(B, Arc<AtomicUsize>);

impl<B: Slots> Slots for Counting<B> {
    async fn attempt(&self, key: &CallKey<'_>, pace: &Pace) -> Result<Attempt, LimitError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.attempt(key, pace).await
    }

    async fn book(&self, key: &CallKey<'_>, pace: &Pace) -> Result<(Duration, Booked), LimitError> {
        self.0.book(key, pace).await
    }
}

/// A backlog waiting for the rate (30 at 40/s), then for permits (20 through 2): waiters
/// queue, so attempts stay a small multiple of grants (a stampede would be one attempt per
/// waiter per grant: hundreds).
async fn waiters_queue_instead_of_stampeding<B: Slots + Clone + 'static>(
    backend: B,
    common: impl Fn(&B) -> &Common + Copy + Send + Sync + 'static,
) {
    for (tasks, hold) in [(30, Duration::ZERO), (20, Duration::from_millis(30))] {
        let attempts = Arc::new(AtomicUsize::new(0));
        let instance = unique();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let counting = Counting(backend.clone(), attempts.clone());
                let instance = instance.clone();
                tokio::spawn(async move {
                    let pair = unique();
                    let key = CallKey {
                        instance_id: &instance,
                        caller_key: "c",
                        pair_key: &pair,
                    };
                    let permit = common(&counting.0)
                        .acquire(&counting, &key, Duration::MAX, None)
                        .await
                        .expect("acquire")
                        .expect("granted");
                    tokio::time::sleep(hold).await;
                    permit.release().await;
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        let attempts = attempts.load(Ordering::SeqCst);
        assert!(
            attempts <= tasks * 4,
            "{attempts} attempts for {tasks} grants (hold {hold:?})"
        );
    }
}

/// Rules for the booking scenarios: 10 calls/s, no burst, one permit.
fn booking_rules() -> LimitRules {
    LimitRules {
        max_in_flight: 1,
        calls_per_second: 10.0,
        burst: 1,
        ..settings()
    }
}

/// [`booking_rules`] with each caller paced at 2 calls/s.
fn with_callers() -> LimitRules {
    LimitRules {
        per_caller_calls_per_second: 2.0,
        ..booking_rules()
    }
}

/// Milliseconds from `from` to `to`.
fn ms_between(from: jiff::Timestamp, to: jiff::Timestamp) -> i64 {
    to.duration_since(from).as_millis() as i64
}

/// Bookings queue at the instance's pace from now (100 ms apart), and an ordinary call finds
/// the rate taken.
async fn bookings_queue_at_the_pace<L: Limiter>(limiter: &L) {
    let instance = unique();
    let start = jiff::Timestamp::now();
    let mut slots = Vec::new();
    for i in 0..4 {
        let (caller, pair) = (format!("caller-{i}"), unique());
        let key = CallKey {
            instance_id: &instance,
            caller_key: &caller,
            pair_key: &pair,
        };
        let booking = limiter.book(&key).await.expect("book");
        assert_eq!(booking.booked, Booked::Instance);
        slots.push(ms_between(start, booking.start));
    }
    for (i, slot) in slots.iter().enumerate() {
        let want = 100 * i as i64;
        assert!(
            (slot - want).abs() <= 40,
            "slot {i} at {slot} ms, not {want}: {slots:?}"
        );
    }
    // Nothing left now for a call that cannot wait.
    let pair = unique();
    let ordinary = CallKey {
        instance_id: &instance,
        caller_key: "someone-else",
        pair_key: &pair,
    };
    let refused = limiter
        .acquire_within(&ordinary, Duration::ZERO)
        .await
        .expect("acquire");
    assert!(refused.is_none(), "the booked slots are taken");
}

/// With per-caller pacing (2/s under the instance's 10/s), a busy caller's bookings follow its
/// own pace and leave the instance's rate to the other callers; the booked call asks the
/// instance's rate when it starts.
async fn caller_bookings_leave_the_instance_alone<L: Limiter>(limiter: &L) {
    let instance = unique();
    let start = jiff::Timestamp::now();
    let pairs: Vec<String> = (0..4).map(|_| unique()).collect();
    let key = |caller: &'static str, pair: usize| CallKey {
        instance_id: &instance,
        caller_key: caller,
        pair_key: &pairs[pair],
    };
    let mut busy = Vec::new();
    let mut bookings = Vec::new();
    for pair in 0..3 {
        let booking = limiter.book(&key("busy", pair)).await.expect("book");
        busy.push((ms_between(start, booking.start), booking.booked));
        bookings.push(booking);
    }
    let busy_second = bookings[1];
    let quiet = limiter.book(&key("quiet", 3)).await.expect("book");
    let quiet_at = ms_between(start, quiet.start);
    // The busy caller's first call takes the instance's rate now; its next ones its own
    // pace, 500 ms apart. The quiet caller's call comes next at the instance's pace (100 ms),
    // not behind the busy caller's second.
    let wants = [
        (0, Booked::Instance),
        (500, Booked::Caller),
        (1000, Booked::Caller),
    ];
    for ((at, booked), (want_at, want_booked)) in busy.iter().zip(wants) {
        assert_eq!(*booked, want_booked, "{busy:?}");
        assert!((at - want_at).abs() <= 60, "{busy:?}");
    }
    assert_eq!(quiet.booked, Booked::Instance);
    assert!(
        (quiet_at - 100).abs() <= 60,
        "quiet caller at {quiet_at} ms"
    );
    // At its start, the busy caller's call takes the instance's rate too: right after it,
    // a call that cannot wait is refused by the instance's pace.
    tokio::time::sleep(
        Duration::from_millis(500).saturating_sub(Duration::from_millis(
            u64::try_from(ms_between(start, jiff::Timestamp::now())).unwrap_or(0),
        )),
    )
    .await;
    let permit = limiter
        .acquire_booked(&key("busy", 1), &busy_second, Duration::from_millis(200))
        .await
        .expect("acquire")
        .expect("the caller's booked start");
    permit.release().await;
    let refused = limiter
        .acquire_within(&key("third", 2), Duration::ZERO)
        .await
        .expect("acquire");
    assert!(
        refused.is_none(),
        "the booked call counted the instance's rate"
    );
}

/// [`booking_rules`] with 3 permits, and instance `own` with one permit at 2 calls/s.
fn own_caps_rules(own: &str) -> LimitRules {
    let mut rules = LimitRules {
        max_in_flight: 3,
        ..booking_rules()
    };
    rules.instances.insert(
        own.to_owned(),
        InstanceLimits {
            max_in_flight: Some(1),
            calls_per_second: Some(2.0),
            ..InstanceLimits::default()
        },
    );
    rules
}

/// Per-instance caps ([`own_caps_rules`]): `own` has its own permits and rate, every other
/// instance `[limits]`'s.
async fn an_instance_has_caps_of_its_own<L: Limiter>(limiter: &L, own: &str) {
    let other = unique();
    let pairs: Vec<String> = (0..5).map(|_| unique()).collect();
    let call = |instance: &str, pair: usize| {
        // Built per call: `CallKey` borrows.
        (instance.to_owned(), pairs[pair].clone())
    };
    let mut held = Vec::new();
    // Any other instance: 3 permits, at 10/s.
    for pair in 0..3 {
        let (instance, pair) = call(&other, pair);
        let key = CallKey {
            instance_id: &instance,
            caller_key: "c",
            pair_key: &pair,
        };
        let permit = limiter
            .acquire_within(&key, Duration::from_millis(500))
            .await
            .expect("acquire");
        held.push(permit.expect("one of the default three permits"));
    }
    // `own`: one permit, and its next start 500 ms after its first (2/s).
    let (instance, pair) = call(own, 3);
    let first = CallKey {
        instance_id: &instance,
        caller_key: "c",
        pair_key: &pair,
    };
    let permit = limiter.acquire_within(&first, Duration::ZERO).await;
    held.push(permit.expect("acquire").expect("its one permit"));
    let (instance, pair) = call(own, 4);
    let second = CallKey {
        instance_id: &instance,
        caller_key: "c",
        pair_key: &pair,
    };
    let start = jiff::Timestamp::now();
    let booking = limiter.book(&second).await.expect("book");
    let at = ms_between(start, booking.start);
    assert!((at - 500).abs() <= 60, "booked {at} ms ahead, not 500");
    let refused = limiter
        .acquire_booked(&second, &booking, Duration::ZERO)
        .await
        .expect("acquire");
    assert!(refused.is_none(), "its one permit is taken");
    for permit in held {
        permit.release().await;
    }
}

/// A booked call is not held back by the rate it already counted, only by the permits.
async fn a_booked_call_skips_the_rate_but_not_the_permits<L: Limiter>(limiter: &L) {
    let instance = unique();
    let (first_pair, second_pair) = (unique(), unique());
    let first = CallKey {
        instance_id: &instance,
        caller_key: "c-1",
        pair_key: &first_pair,
    };
    let second = CallKey {
        instance_id: &instance,
        caller_key: "c-2",
        pair_key: &second_pair,
    };
    for _ in 0..10 {
        limiter.book(&first).await.expect("book");
    }
    // Taken as booked now (the rates are the test's concern elsewhere).
    let now = Booking {
        start: jiff::Timestamp::now(),
        booked: Booked::Instance,
    };
    let permit = limiter
        .acquire_booked(&first, &now, Duration::ZERO)
        .await
        .expect("acquire")
        .expect("a booked call goes though the rate is booked a second ahead");
    let none = limiter
        .acquire_booked(&second, &now, Duration::ZERO)
        .await
        .expect("acquire");
    assert!(none.is_none(), "the one permit is taken");
    permit.release().await;
    let second_permit = limiter
        .acquire_booked(&second, &now, Duration::from_secs(1))
        .await
        .expect("acquire");
    assert!(second_permit.is_some(), "the permit came back");
}

// ---------------------------------------------------------------------------------------------
// Local limiter.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_concurrency_stays_within_max_in_flight() {
    concurrency_stays_within_max(&[LocalLimiter::new(settings())]).await;
}

#[tokio::test]
async fn local_dropped_permit_comes_back_at_once() {
    let limiter = LocalLimiter::new(LimitRules {
        max_in_flight: 1,
        max_wait: Duration::ZERO,
        ..settings()
    });
    let permit = acquire(&limiter, "i").await.expect("first");
    assert!(acquire(&limiter, "i").await.is_none(), "held");
    drop(permit);
    assert!(
        acquire(&limiter, "i").await.is_some(),
        "back without waiting"
    );
}

#[tokio::test]
async fn local_expired_lease_frees_the_slot() {
    let limiter = LocalLimiter::new(LimitRules {
        max_in_flight: 1,
        permit_lease: Duration::from_millis(200),
        max_wait: Duration::from_secs(3),
        ..settings()
    });
    expired_lease_frees_the_slot(&limiter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_rate_is_paced() {
    rate_is_paced(&LocalLimiter::new(LimitRules {
        max_in_flight: 100,
        calls_per_second: 20.0,
        burst: 1,
        ..settings()
    }))
    .await;
}

#[tokio::test]
async fn local_max_wait_defers() {
    let limiter = LocalLimiter::new(LimitRules {
        max_in_flight: 1,
        max_wait: Duration::from_millis(200),
        ..settings()
    });
    max_wait_defers(&limiter, &limiter).await;
}

#[tokio::test]
async fn local_same_pair_waits_a_second() {
    let limiter = LocalLimiter::new(settings());
    let impatient = limiter.sharing_state(LimitRules {
        max_wait: Duration::from_millis(300),
        ..settings()
    });
    same_pair_waits_a_second(&limiter, &impatient).await;
}

#[tokio::test]
async fn local_per_caller_is_paced() {
    per_caller_is_paced(&LocalLimiter::new(LimitRules {
        per_caller_calls_per_second: 4.0,
        ..settings()
    }))
    .await;
}

#[tokio::test]
async fn local_throttling_slows_the_instance() {
    throttling_slows_the_instance(&LocalLimiter::new(LimitRules {
        max_in_flight: 10,
        calls_per_second: 40.0,
        burst: 1,
        ..settings()
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_waiters_queue_instead_of_stampeding() {
    let limiter = LocalLimiter::new(LimitRules {
        max_in_flight: 2,
        calls_per_second: 40.0,
        burst: 1,
        ..settings()
    });
    waiters_queue_instead_of_stampeding(limiter, |l| &l.shared.common).await;
}

#[tokio::test]
async fn local_state_is_swept_once_idle() {
    let limiter = LocalLimiter::new(LimitRules {
        per_caller_calls_per_second: 1000.0,
        ..settings()
    });
    for _ in 0..50 {
        drop(acquire(&limiter, &unique()).await.expect("granted"));
    }
    assert_eq!(lock(&limiter.shared.state).instances.len(), 50);
    // Pair marks last 1 s; the sweep runs at most once a second, on the next attempt.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    drop(acquire(&limiter, "last").await.expect("granted"));
    assert_eq!(lock(&limiter.shared.state).instances.len(), 1);
}

#[tokio::test]
async fn local_bookings_queue_at_the_pace() {
    bookings_queue_at_the_pace(&LocalLimiter::new(booking_rules())).await;
}

#[tokio::test]
async fn local_caller_bookings_leave_the_instance_alone() {
    caller_bookings_leave_the_instance_alone(&LocalLimiter::new(with_callers())).await;
}

#[tokio::test]
async fn local_an_instance_has_caps_of_its_own() {
    let own = unique();
    an_instance_has_caps_of_its_own(&LocalLimiter::new(own_caps_rules(&own)), &own).await;
}

#[tokio::test]
async fn local_a_booked_call_skips_the_rate_but_not_the_permits() {
    a_booked_call_skips_the_rate_but_not_the_permits(&LocalLimiter::new(booking_rules())).await;
}

// ---------------------------------------------------------------------------------------------
// Redis limiter.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_concurrency_stays_within_max_in_flight() {
    let limiter = redis_limiter(&prefix(), settings()).await;
    concurrency_stays_within_max(std::slice::from_ref(&limiter)).await;
    cleanup(&limiter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_semaphore_is_global_across_replicas() {
    let prefix = prefix();
    let replicas = [
        redis_limiter(&prefix, settings()).await,
        redis_limiter(&prefix, settings()).await,
        redis_limiter(&prefix, settings()).await,
    ];
    concurrency_stays_within_max(&replicas).await;
    cleanup(&replicas[0]).await;
}

#[tokio::test]
async fn redis_dropped_permit_comes_back() {
    let limiter = redis_limiter(
        &prefix(),
        LimitRules {
            max_in_flight: 1,
            max_wait: Duration::from_secs(5),
            ..settings()
        },
    )
    .await;
    let instance = unique();
    let permit = acquire(&limiter, &instance).await.expect("first");
    assert_eq!(holders(&limiter, &instance).await, 1);
    drop(permit);
    // The background ZREM (and its wake-up) lets the next one in long before the 30 s lease.
    let start = Instant::now();
    let again = acquire(&limiter, &instance).await.expect("second");
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(holders(&limiter, &instance).await, 1);
    again.release().await;
    assert_eq!(holders(&limiter, &instance).await, 0, "release removes it");
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_expired_lease_frees_the_slot() {
    let limiter = redis_limiter(
        &prefix(),
        LimitRules {
            max_in_flight: 1,
            permit_lease: Duration::from_millis(200),
            max_wait: Duration::from_secs(3),
            ..settings()
        },
    )
    .await;
    expired_lease_frees_the_slot(&limiter).await;
    cleanup(&limiter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rate_is_paced() {
    let limiter = redis_limiter(
        &prefix(),
        LimitRules {
            max_in_flight: 100,
            calls_per_second: 20.0,
            burst: 1,
            ..settings()
        },
    )
    .await;
    rate_is_paced(&limiter).await;
    cleanup(&limiter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rate_is_global_across_replicas() {
    let prefix = prefix();
    let rules = LimitRules {
        max_in_flight: 100,
        calls_per_second: 20.0,
        burst: 1,
        ..settings()
    };
    let a = redis_limiter(&prefix, rules.clone()).await;
    let b = redis_limiter(&prefix, rules).await;
    let instance = unique();
    let start = Instant::now();
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let limiter = if i % 2 == 0 { a.clone() } else { b.clone() };
            let instance = instance.clone();
            tokio::spawn(async move { acquire(&limiter, &instance).await.is_some() })
        })
        .collect();
    for task in tasks {
        assert!(task.await.expect("task"));
    }
    let elapsed = start.elapsed();
    // 30 at 20/s over two replicas: 29 intervals, not 14 (as with two private paces).
    assert!(elapsed >= Duration::from_millis(1350), "took {elapsed:?}");
    cleanup(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_waiters_queue_instead_of_stampeding() {
    let limiter = redis_limiter(
        &prefix(),
        LimitRules {
            max_in_flight: 2,
            calls_per_second: 40.0,
            burst: 1,
            ..settings()
        },
    )
    .await;
    waiters_queue_instead_of_stampeding(limiter.clone(), RedisLimiter::common).await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_max_wait_defers() {
    let prefix = prefix();
    let rules = LimitRules {
        max_in_flight: 1,
        max_wait: Duration::from_millis(200),
        ..settings()
    };
    let holder = redis_limiter(&prefix, rules.clone()).await;
    let waiter = redis_limiter(&prefix, rules).await;
    max_wait_defers(&holder, &waiter).await;
    cleanup(&holder).await;
}

#[tokio::test]
async fn redis_same_pair_waits_a_second() {
    let prefix = prefix();
    let limiter = redis_limiter(&prefix, settings()).await;
    let impatient = redis_limiter(
        &prefix,
        LimitRules {
            max_wait: Duration::from_millis(300),
            ..settings()
        },
    )
    .await;
    same_pair_waits_a_second(&limiter, &impatient).await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_per_caller_is_paced() {
    let limiter = redis_limiter(
        &prefix(),
        LimitRules {
            per_caller_calls_per_second: 4.0,
            ..settings()
        },
    )
    .await;
    per_caller_is_paced(&limiter).await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_throttling_slows_the_instance() {
    let limiter = redis_limiter(
        &prefix(),
        LimitRules {
            max_in_flight: 10,
            calls_per_second: 40.0,
            burst: 1,
            ..settings()
        },
    )
    .await;
    throttling_slows_the_instance(&limiter).await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_keys_expire_and_hold_server_time() {
    let limiter = redis_limiter(
        &prefix(),
        LimitRules {
            calls_per_second: 2.0,
            burst: 1,
            per_caller_calls_per_second: 1.0,
            ..settings()
        },
    )
    .await;
    let instance = unique();
    let permit = limiter
        .acquire(&CallKey {
            instance_id: &instance,
            caller_key: "3f2a",
            pair_key: "9bc1",
        })
        .await
        .expect("acquire")
        .expect("granted");
    let mut conn = limiter.conn.get();
    let (secs, micros): (u64, u64) = ::redis::cmd("TIME")
        .query_async(&mut conn)
        .await
        .expect("TIME");
    let server_now = secs * 1_000_000 + micros;

    let rate_key = limiter.key(&instance, "rate");
    let tat: u64 = conn.get(&rate_key).await.expect("GET rate");
    assert!(
        tat > server_now && tat <= server_now + 500_000,
        "TAT {tat} is one 500 ms interval past server time {server_now}"
    );
    for (key, max_ms) in [
        (rate_key, 501),
        (limiter.key(&instance, "caller:3f2a"), 1001),
        (limiter.key(&instance, "pair:9bc1"), 1000),
        (limiter.key(&instance, "sem"), 30_000),
    ] {
        let ttl: i64 = conn.pttl(&key).await.expect("PTTL");
        assert!(ttl > 0 && ttl <= max_ms, "{key}: PTTL {ttl}");
    }
    let lease_end: Vec<(String, f64)> = conn
        .zrange_withscores(limiter.key(&instance, "sem"), 0, -1)
        .await
        .expect("ZRANGE");
    assert_eq!(lease_end.len(), 1);
    let lease_end_ms = lease_end[0].1 as u64;
    let server_ms = server_now / 1000;
    assert!(
        lease_end_ms > server_ms && lease_end_ms <= server_ms + 30_000,
        "lease end {lease_end_ms} is one lease past server time {server_ms}"
    );
    permit.release().await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_a_foreign_value_is_reported_corrupt() {
    let limiter = redis_limiter(&prefix(), settings()).await;
    let instance = unique();
    let mut conn = limiter.conn.get();
    let _: () = conn
        .set(limiter.key(&instance, "rate"), "garbage")
        .await
        .expect("SET");
    let result = limiter
        .acquire(&CallKey {
            instance_id: &instance,
            caller_key: "c",
            pair_key: "p",
        })
        .await;
    match result {
        Err(LimitError::Corrupt(message)) => assert!(message.contains("rate"), "{message}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_connection_errors_never_show_the_password() {
    // Nothing listens on port 1: the connection is refused.
    let url = RedisAddress::url("redis://user:hunter2@127.0.0.1:1/0");
    let err = RedisLimiter::connect(&url, "p", settings())
        .await
        .expect_err("port 1 must refuse");
    let message = err.to_string();
    assert!(message.starts_with("redis limiter:"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
    assert!(!message.contains("127.0.0.1:1"), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// The arithmetic.

#[test]
fn gcra_lets_a_burst_through_then_spaces_calls() {
    let ms = Duration::from_millis;
    let interval = ms(100);
    let tolerance = interval * 2; // burst 3
    let now = ms(10_000);
    let mut tat = Duration::ZERO; // idle: long past
    for _ in 0..3 {
        assert_eq!(gcra_wait(tat, now, tolerance), Duration::ZERO);
        tat = gcra_advance(tat, now, interval);
    }
    assert_eq!(tat, ms(10_300));
    // The fourth waits one interval, and then goes.
    assert_eq!(gcra_wait(tat, now, tolerance), ms(100));
    let later = now + ms(100);
    assert_eq!(gcra_wait(tat, later, tolerance), Duration::ZERO);
    tat = gcra_advance(tat, later, interval);
    assert_eq!(gcra_wait(tat, later, tolerance), ms(100));
    // After a quiet spell the full burst is available again, never more.
    let quiet = later + ms(5_000);
    assert_eq!(gcra_wait(tat, quiet, tolerance), Duration::ZERO);
    assert_eq!(gcra_advance(tat, quiet, interval), quiet + interval);
}

#[test]
fn out_of_range_settings_are_clamped() {
    let rules = Rules::new(&LimitRules {
        max_in_flight: 0,
        calls_per_second: f64::NAN,
        burst: 0,
        per_caller_calls_per_second: -1.0,
        max_wait: Duration::MAX,
        permit_lease: Duration::ZERO,
        throttle_factor: 0.0,
        throttle_cooldown: Duration::MAX,
        instances: BTreeMap::from([(
            "own".to_owned(),
            InstanceLimits {
                max_in_flight: Some(0),
                ..InstanceLimits::default()
            },
        )]),
    });
    assert_eq!(rules.caps.max_in_flight, 1);
    assert_eq!(rules.caps.burst, 1);
    assert_eq!(rules.caps.interval, Duration::from_secs(1));
    assert_eq!(rules.caps.caller_interval, None);
    assert_eq!(rules.caps("own").max_in_flight, 1);
    assert_eq!(rules.max_wait, MAX_DURATION);
    assert_eq!(rules.lease, Duration::from_millis(1));
    assert_eq!(rules.throttle_factor, 1.0);
    let tiny = Rules::new(&LimitRules {
        calls_per_second: 1e-300,
        throttle_factor: 1e-9,
        ..settings()
    });
    assert_eq!(tiny.caps.interval, MAX_INTERVAL);
    assert_eq!(tiny.throttle_factor, MIN_THROTTLE_FACTOR);
    assert_eq!(tiny.pace("i", true).interval, MAX_INTERVAL);
}

#[test]
fn pace_follows_rate_burst_and_throttling() {
    let rules = Rules::new(&LimitRules {
        calls_per_second: 10.0,
        burst: 5,
        per_caller_calls_per_second: 2.0,
        throttle_factor: 0.5,
        ..settings()
    });
    let normal = rules.pace("i", false);
    assert_eq!(normal.interval, Duration::from_millis(100));
    assert_eq!(normal.tolerance, Duration::from_millis(400));
    assert_eq!(normal.caller_interval, Some(Duration::from_millis(500)));
    assert_eq!(normal.pair_window, PAIR_SPACING);
    let slow = rules.pace("i", true);
    assert_eq!(slow.interval, Duration::from_millis(200));
    assert_eq!(slow.tolerance, Duration::from_millis(800));
    // The caller rule is not the instance's pace: throttling leaves it alone.
    assert_eq!(slow.caller_interval, normal.caller_interval);
}

#[tokio::test]
async fn throttling_lasts_for_the_cooldown_only() {
    let common = Common::new(&LimitRules {
        calls_per_second: 10.0,
        throttle_cooldown: Duration::from_millis(150),
        ..settings()
    });
    let normal = common.pace("i").interval;
    common.throttled("i");
    assert_eq!(common.pace("i").interval, normal * 2);
    assert_eq!(common.pace("j").interval, normal);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(common.pace("i").interval, normal);
}

#[test]
fn limiters_and_permits_can_cross_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<LocalLimiter>();
    send_sync::<RedisLimiter>();
    send_sync::<Permit>();
    send_sync::<LimitError>();
}

#[tokio::test]
async fn redis_bookings_queue_at_the_pace() {
    let limiter = redis_limiter(&prefix(), booking_rules()).await;
    bookings_queue_at_the_pace(&limiter).await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_caller_bookings_leave_the_instance_alone() {
    let limiter = redis_limiter(&prefix(), with_callers()).await;
    caller_bookings_leave_the_instance_alone(&limiter).await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_an_instance_has_caps_of_its_own() {
    let own = unique();
    let limiter = redis_limiter(&prefix(), own_caps_rules(&own)).await;
    an_instance_has_caps_of_its_own(&limiter, &own).await;
    cleanup(&limiter).await;
}

#[tokio::test]
async fn redis_a_booked_call_skips_the_rate_but_not_the_permits() {
    let limiter = redis_limiter(&prefix(), booking_rules()).await;
    a_booked_call_skips_the_rate_but_not_the_permits(&limiter).await;
    cleanup(&limiter).await;
}
