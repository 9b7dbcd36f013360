//! Poison messages: a request that breaks the worker itself on every delivery ends in the
//! dead-letter queue after the queue's delivery limit, and the requests around it flow on.
//! The breakage is made on purpose through the `test-hooks` feature (a request header).

mod helpers;

use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::SimConfig;
use dialex_worker::outcome::Status;
use helpers::{
    WAIT, callee, hooked, outcomes_until, request, settings, spawn_worker_process, started,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_panics_the_handler_is_parked_after_the_delivery_limit() {
    let mut h = started(settings(), SimConfig::default()).await;
    let limit = h.settings.amqp.delivery_limit;
    h.publish_request_with(&request("poison", &callee(900), "ivr"), hooked("panic"))
        .await
        .unwrap();
    const OTHERS: usize = 20;
    for i in 0..OTHERS {
        h.publish_request(&request(&format!("fine-{i}"), &callee(i), "ivr"), None)
            .await
            .unwrap();
    }

    let received = outcomes_until(&mut h, WAIT, |r| r.len() == OTHERS + 1).await;
    let dialed = received
        .iter()
        .filter(|r| r.event.status == Status::Dialed)
        .count();
    assert_eq!(dialed, OTHERS, "the requests around the poison flow on");
    let poison: Vec<_> = received
        .iter()
        .filter(|r| r.event.request_id == "poison")
        .collect();
    assert_eq!(poison.len(), 1);
    assert_eq!(poison[0].event.status, Status::Failed);
    assert_eq!(poison[0].event.code.as_deref(), Some("poison_message"));
    let message = poison[0].event.message.as_deref().unwrap_or_default();
    assert!(
        message.contains(&format!("on {} deliveries", limit + 1)),
        "{message}"
    );
    assert_eq!(h.simulator.dial_count(), OTHERS);

    // The event is published first, then the message is parked.
    let mut dead = Vec::new();
    for _ in 0..100 {
        dead.extend(h.dead_letters().await.unwrap());
        if !dead.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason.as_deref(), Some("poison_message"));
    assert!(
        dead[0]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("panic")),
        "{:?}",
        dead[0].detail
    );
    helpers::assert_request_queue_drains(&h).await;
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_kills_the_worker_is_dead_lettered_by_the_broker() {
    let mut s = settings();
    s.amqp.delivery_limit = 2;
    // One delivery in flight: a process that dies takes every unsettled delivery down with it,
    // and each of those counts towards its own delivery limit too (see the README).
    s.amqp.prefetch = 1;
    let mut h = Harness::start(s, SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");
    h.publish_request_with(&request("killer", &callee(901), "ivr"), hooked("abort"))
        .await
        .unwrap();
    h.publish_request(&request("behind-the-killer", &callee(902), "ivr"), None)
        .await
        .unwrap();

    // Each worker process dies on the message; the broker counts every delivery that ended
    // with the channel gone, and parks the message once the limit is passed.
    let mut crashes = 0;
    let dead = loop {
        let mut worker = spawn_worker_process(&h);
        let exited = tokio::time::timeout(Duration::from_secs(5), worker.wait()).await;
        match exited {
            Ok(status) => {
                assert!(!status.unwrap().success(), "the hook aborts the process");
                crashes += 1;
            }
            // Still running: the poison is gone from its queue; this worker handles the rest.
            Err(_) => {
                let received = h.outcomes(1, WAIT).await.unwrap();
                assert_eq!(received[0].event.request_id, "behind-the-killer");
                assert_eq!(received[0].event.status, Status::Dialed);
                break h.dead_letters().await.unwrap();
            }
        }
        assert!(crashes <= 10, "the message was never dead-lettered");
    };
    assert_eq!(crashes, h.settings.amqp.delivery_limit + 1);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].broker_reason.as_deref(), Some("delivery_limit"));
    assert!(
        String::from_utf8_lossy(&dead[0].body).contains("\"killer\""),
        "the original body is kept"
    );
    assert_eq!(h.simulator.dial_count(), 1);
    h.cleanup().await.unwrap();
}
