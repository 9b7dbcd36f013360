//! Failure handling against the simulator's faults: one scenario per error class, retries
//! through the wait queues, and what happens when CCC cannot be reached.

mod helpers;

use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::{Fault, SimConfig, Simulator};
use dialex_worker::credentials::Credentials;
use dialex_worker::outcome::Status;
use helpers::{WAIT, assert_dialed_once, callee, only_outcome, request, settings, started};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_with_fresh_nonces_and_dials_once() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(42);
    h.simulator.inject(&number, Fault::Throttle, 2);
    let event = &only_outcome(&mut h, &request("throttled", &number, "agent")).await;
    assert_dialed_once(event, &h.simulator);
    assert_eq!(event.attempts, 3);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_twice_then_ok_is_dialed_on_the_third_attempt() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(48);
    h.simulator.inject(&number, Fault::Unavailable, 2);
    let event = &only_outcome(&mut h, &request("unavailable-twice", &number, "ivr")).await;
    assert_eq!(event.status, Status::Dialed);
    assert_eq!(event.attempts, 3);
    assert_eq!(h.simulator.dial_count(), 1);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_at_once_without_retrying() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(49);
    h.simulator.inject(&number, Fault::InvalidParameter, 1);
    let event = &only_outcome(&mut h, &request("invalid-parameter", &number, "ivr")).await;
    assert_eq!(event.status, Status::Failed);
    assert_eq!(event.code.as_deref(), Some("InvalidParameter"));
    assert_eq!(event.attempts, 1);
    assert!(event.aliyun_request_id.is_some());
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_that_persist_leave_through_the_wait_queues_then_fail_at_the_total_cap() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(43);
    h.simulator.inject(&number, Fault::InternalError, 100);
    h.publish_request(&request("always-500", &number, "ivr"), None)
        .await
        .unwrap();
    // Three attempts in-process, then one hop through a wait queue (announced once), then the
    // three attempts left of the total cap of six.
    let received = h.outcomes(2, WAIT).await.unwrap();
    let deferred = &received[0].event;
    assert_eq!(deferred.status, Status::Deferred);
    assert_eq!(deferred.code.as_deref(), Some("retry"));
    assert_eq!(deferred.attempts, 3);
    assert!(deferred.next_attempt_at.is_some());
    let failed = &received[1].event;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.code.as_deref(), Some("InternalError"));
    assert_eq!(failed.attempts, 6);
    assert!(failed.aliyun_request_id.is_some());
    assert_eq!(h.simulator.dial_count(), 0);
    assert!(
        h.next_outcome(Duration::from_secs(2))
            .await
            .unwrap()
            .is_none(),
        "one terminal outcome, nothing after it"
    );
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_recovers_after_a_hop_is_dialed_with_every_attempt_counted() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(50);
    h.simulator.inject(&number, Fault::Throttle, 4);
    h.publish_request(&request("recovers", &number, "agent"), None)
        .await
        .unwrap();
    let received = h.outcomes(2, WAIT).await.unwrap();
    assert_eq!(received[0].event.status, Status::Deferred);
    assert_eq!(received[0].event.code.as_deref(), Some("retry"));
    let event = &received[1].event;
    assert_dialed_once(event, &h.simulator);
    assert_eq!(event.attempts, 5);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_attempt_after_a_hop_never_starts_before_next_attempt_at() {
    // A 2 s wait between hops: the delay, computed a moment after next_attempt_at is set, is a
    // hair under 2 s, which must still go to the 2 s tier (not the 500 ms one), and a request
    // back early must wait again.
    let mut s = settings();
    s.ccc.requeue_delay_ms = 2_000;
    s.ccc.max_requeue_delay_ms = 2_000;
    let mut h = started(s, SimConfig::default()).await;
    let number = callee(51);
    h.simulator.inject(&number, Fault::Throttle, 3);
    h.publish_request(&request("not-early", &number, "ivr"), None)
        .await
        .unwrap();
    let received = h.outcomes(2, WAIT).await.unwrap();
    let deferred = &received[0].event;
    assert_eq!(deferred.code.as_deref(), Some("retry"));
    let next_attempt_at = deferred.next_attempt_at.expect("next_attempt_at");
    assert_dialed_once(&received[1].event, &h.simulator);
    let dial = &h.simulator.dials()[0];
    assert!(
        dial.started_at >= next_attempt_at,
        "dialed at {}, before next_attempt_at {next_attempt_at}",
        dial.started_at
    );
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_never_wait_past_expires_at() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(51);
    h.simulator.inject(&number, Fault::Unavailable, 100);
    // The next hop (half a second away) would come after the deadline.
    let expires_at = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(400);
    let body = serde_json::json!({
        "request_id": "expiring",
        "instance_id": "inst-1",
        "caller": "02285196281",
        "callee": number,
        "answer_mode": "ivr",
        "rout_point": "flow-1",
        "expires_at": expires_at.to_string(),
    });
    h.publish_request(&serde_json::to_vec(&body).unwrap(), None)
        .await
        .unwrap();
    let event = &h.outcomes(1, WAIT).await.unwrap()[0].event;
    assert_eq!(event.status, Status::Failed);
    assert_eq!(event.code.as_deref(), Some("ServiceUnavailable"));
    assert_eq!(event.attempts, 3);
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_retried_until_ccc_is_back() {
    let mut s = settings();
    // Room for a few hops while the endpoint is down.
    s.ccc.max_total_attempts = 15;
    let mut h = dialex_devkit::harness::Harness::start(s, SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");
    // An address nothing listens on, for now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    h.settings.ccc.endpoint = format!("http://{addr}");
    h.start_worker(dialex_devkit::harness::Harness::demo_credentials())
        .await
        .unwrap();
    h.publish_request(&request("refused", &callee(52), "ivr"), None)
        .await
        .unwrap();
    let first = h
        .next_outcome(WAIT)
        .await
        .unwrap()
        .expect("a deferred event");
    assert_eq!(first.event.status, Status::Deferred);
    assert_eq!(first.event.code.as_deref(), Some("retry"));
    assert!(
        first
            .event
            .message
            .as_deref()
            .is_some_and(|m| m.contains("(connect)")),
        "{:?}",
        first.event.message
    );

    let back = Simulator::start(addr, SimConfig::default()).await.unwrap();
    let event = &h.outcomes(1, WAIT).await.unwrap()[0].event;
    assert_dialed_once(event, &back);
    assert!(event.attempts > 3, "{}", event.attempts);
    back.shutdown().await;
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_call_was_placed_is_unknown_and_never_redialed() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(44);
    h.simulator.inject(&number, Fault::ResetAfterExecute, 1);
    let event = &only_outcome(&mut h, &request("reset", &number, "ivr")).await;
    assert_eq!(event.status, Status::Unknown);
    assert_eq!(event.code.as_deref(), Some("ambiguous"));
    assert_eq!(event.attempts, 1);
    assert_eq!(h.simulator.dial_count(), 1, "dialed exactly once");
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_lost_before_it_arrived_is_placed_by_the_identical_replay() {
    let mut h = started(settings(), SimConfig::default()).await;
    let number = callee(46);
    h.simulator.inject(&number, Fault::LostBeforeArrival, 1);
    let event = &only_outcome(&mut h, &request("lost", &number, "ivr")).await;
    assert_dialed_once(event, &h.simulator);
    assert_eq!(event.attempts, 1);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replay_an_ambiguous_send_is_unknown_at_once() {
    let mut s = settings();
    s.ccc.replay_ambiguous = false;
    let mut h = started(s, SimConfig::default()).await;
    let number = callee(47);
    h.simulator.inject(&number, Fault::LostBeforeArrival, 1);
    h.publish_request(&request("no-replay", &number, "ivr"), None)
        .await
        .unwrap();
    let received = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(received[0].event.status, Status::Unknown);
    assert_eq!(received[0].event.code.as_deref(), Some("connection_lost"));
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_after_sending_is_unknown_and_never_redialed() {
    let mut s = settings();
    s.ccc.request_timeout_ms = 1_000;
    let sim = SimConfig {
        slow_delay: Duration::from_secs(3),
        ..SimConfig::default()
    };
    let mut h = started(s, sim).await;
    let number = callee(45);
    h.simulator.inject(&number, Fault::Slow, 1);
    let event = &only_outcome(&mut h, &request("slow", &number, "ivr")).await;
    assert_eq!(event.status, Status::Unknown);
    // The identical request was replayed and refused as already seen.
    assert_eq!(event.code.as_deref(), Some("ambiguous"));
    assert!(
        event
            .message
            .as_deref()
            .unwrap_or("")
            .contains("already seen")
    );
    assert_eq!(event.attempts, 1);
    assert_eq!(h.simulator.dial_count(), 1);
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_pauses_the_worker_keeping_every_request_until_ccc_accepts_it() {
    let mut h = Harness::start(settings(), SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");
    let mut credentials = Harness::demo_credentials();
    credentials.access_key_secret = Credentials::new("x", "not-the-secret").access_key_secret;
    h.start_worker(credentials).await.unwrap();
    const REQUESTS: usize = 10;
    for i in 0..REQUESTS {
        h.publish_request(
            &request(&format!("wrong-secret-{i}"), &callee(i), "ivr"),
            None,
        )
        .await
        .unwrap();
    }

    // The simulator's check is real: the worker is refused, pauses, and gives every request
    // back; none is burnt as `failed`.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, body) = loop {
        let (status, body) = h.readyz().await.unwrap();
        if body.contains("paused") || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
    assert!(body.contains("ALIBABA_CLOUD_ACCESS_KEY_SECRET"), "{body}");
    let names = h.settings.amqp.names.clone();
    assert_eq!(
        h.settled_depth(&names.request_queue, REQUESTS as u32, WAIT)
            .await
            .unwrap(),
        REQUESTS as u32,
        "every request must be back in its queue"
    );
    assert_eq!(h.simulator.dial_count(), 0);
    assert!(
        h.next_outcome(Duration::from_secs(2))
            .await
            .unwrap()
            .is_none(),
        "no outcome of any kind while paused"
    );
    assert!(h.dead_letters().await.unwrap().is_empty());
    // Paused, not exited: the worker is still there, probing.
    assert!(h.worker_exit(Duration::from_millis(100)).await.is_err());

    // The account side is fixed (the key now matches what the worker signs with): the worker
    // notices on its next probe and dials every request it kept, once.
    h.simulator.set_credentials(
        dialex_devkit::simulator::DEMO_ACCESS_KEY_ID,
        "not-the-secret",
    );
    let received = h.outcomes(REQUESTS, WAIT).await.unwrap();
    assert!(received.iter().all(|r| r.event.status == Status::Dialed));
    assert_eq!(h.simulator.dial_count(), REQUESTS);
    let (status, body) = h.readyz().await.unwrap();
    assert_eq!(status, 200, "{body}");
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_for_one_instance_parks_that_request_and_never_pauses_the_worker() {
    // CCC refuses calls to this request's target (Forbidden.RAM) while it accepts the worker
    // (the probe passes): only that request is affected, parked after its deliveries.
    let mut h = started(settings(), SimConfig::default()).await;
    let refused = callee(60);
    h.simulator.inject(&refused, Fault::Forbidden, 100);
    h.publish_request(&request("forbidden", &refused, "ivr"), None)
        .await
        .unwrap();
    for i in 0..5 {
        h.publish_request(
            &request(&format!("allowed-{i}"), &callee(61 + i), "ivr"),
            None,
        )
        .await
        .unwrap();
    }
    let received = h.outcomes(6, WAIT).await.unwrap();
    let event = helpers::the_one_not_dialed(&received, "forbidden");
    assert_eq!(event.status, Status::Failed);
    assert_eq!(event.code.as_deref(), Some("Forbidden.RAM"));
    assert_eq!(h.simulator.dial_count(), 5);
    let parked = helpers::dead_letters_soon(&h, 1).await;
    assert_eq!(parked[0].reason.as_deref(), Some("ccc_refused"));
    assert_eq!(h.readyz().await.unwrap().0, 200);
    h.cleanup().await.unwrap();
}
