//! Black-box scenarios: requests on RabbitMQ, the worker, the CCC simulator, outcome events.

mod helpers;

use std::collections::HashMap;
use std::time::Duration;

use dialex_devkit::simulator::SimConfig;
use dialex_worker::outcome::Status;
use helpers::{WAIT, callee, request, settings, started};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_exactly_one_outcome_with_the_simulators_task_id() {
    let mut h = started(settings(), SimConfig::default()).await;
    const VALID: usize = 500;
    let modes = ["ivr", "agent", "skill_group", "0", "1", "2"];
    let mut expected: HashMap<String, (Status, Option<&str>)> = HashMap::new();
    let mut callee_of: HashMap<String, String> = HashMap::new();
    for i in 0..VALID {
        let id = format!("valid-{i}");
        let mode = modes[i % modes.len()];
        let mut body = request(&id, &callee(i), mode);
        if mode.len() == 1 {
            // Numeric answer modes go out as JSON numbers.
            let text = String::from_utf8(body)
                .unwrap()
                .replace(&format!("\"{mode}\""), mode);
            body = text.into_bytes();
        }
        h.publish_request(&body, None).await.unwrap();
        expected.insert(id.clone(), (Status::Dialed, None));
        callee_of.insert(id, callee(i));
    }

    // Invalid requests whose id can be recovered: each gets a `rejected` event.
    let invalid: Vec<(String, Vec<u8>, Option<&str>, &str)> = vec![
        ("bad-callee".into(), request("bad-callee", "12345", "ivr"), None, "invalid_callee"),
        ("bad-mode".into(), request("bad-mode", "13900000001", "fax"), None, "invalid_answer_mode"),
        (
            "no-caller".into(),
            br#"{"request_id":"no-caller","instance_id":"i","callee":"13900000002","answer_mode":"ivr","rout_point":"f"}"#.to_vec(),
            None,
            "missing_caller",
        ),
        (
            "wrong-type".into(),
            br#"{"request_id":"wrong-type","instance_id":7,"caller":"02285196281","callee":"13900000003","answer_mode":"ivr","rout_point":"f"}"#.to_vec(),
            None,
            "invalid_instance_id",
        ),
        (
            "malformed-with-id".into(),
            b"{\"request_id\": ".to_vec(),
            Some("malformed-with-id"),
            "invalid_json",
        ),
        (
            "too-big".into(),
            {
                let mut big = request("too-big", "13900000004", "ivr");
                big.truncate(big.len() - 1);
                big.extend_from_slice(b",\"pad\":\"");
                big.extend(std::iter::repeat_n(b'x', 70 * 1024));
                big.extend_from_slice(b"\"}");
                big
            },
            Some("too-big"),
            "body_too_large",
        ),
    ];
    for (id, body, message_id, code) in &invalid {
        h.publish_request(body, *message_id).await.unwrap();
        expected.insert(id.clone(), (Status::Rejected, Some(code)));
    }
    // One with no recoverable id at all: dead-lettered, no event.
    h.publish_request(b"\xff\xfe not json", None).await.unwrap();

    let received = h.outcomes(expected.len(), WAIT).await.unwrap();
    let dials = h.simulator.dials();
    let task_by_callee: HashMap<&str, &str> = dials
        .iter()
        .map(|d| (d.callee.as_str(), d.task_id.as_str()))
        .collect();

    let mut seen = HashMap::new();
    for r in &received {
        let e = &r.event;
        *seen.entry(e.request_id.clone()).or_insert(0) += 1;
        let (status, code) = expected
            .get(&e.request_id)
            .unwrap_or_else(|| panic!("unexpected event for {}", e.request_id));
        assert_eq!(e.status, *status, "{}", e.request_id);
        assert_eq!(r.routing_key, format!("dial.outcome.{}", status.as_str()));
        assert_eq!(
            r.properties.message_id().as_ref().map(|m| m.to_string()),
            Some(e.event_id.to_string())
        );
        assert_eq!(
            r.properties
                .correlation_id()
                .as_ref()
                .map(|m| m.to_string()),
            Some(e.request_id.clone())
        );
        assert_eq!(r.properties.delivery_mode(), &Some(2));
        assert_eq!(
            r.properties
                .kind()
                .as_ref()
                .map(|k| k.to_string())
                .as_deref(),
            Some("dial.outcome")
        );
        match e.status {
            Status::Dialed => {
                let callee = &callee_of[&e.request_id];
                assert_eq!(
                    e.task_id.as_deref(),
                    Some(task_by_callee[callee.as_str()]),
                    "{}",
                    e.request_id
                );
                assert_eq!(e.attempts, 1);
                assert!(e.aliyun_request_id.is_some());
                let attributes = e.attributes.as_ref().expect("attributes echoed").get();
                assert!(attributes.contains(&e.request_id));
            }
            Status::Rejected => {
                assert_eq!(e.code.as_deref(), *code, "{}", e.request_id);
                assert!(e.task_id.is_none());
                assert_eq!(e.attempts, 0);
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert!(seen.values().all(|&n| n == 1), "duplicate outcome events");
    assert_eq!(seen.len(), expected.len());
    assert_eq!(
        dials.len(),
        VALID,
        "the simulator executed exactly the valid requests"
    );

    // Nothing more arrives, nothing is left behind.
    assert!(h.outcomes(1, Duration::from_millis(500)).await.is_err());
    helpers::assert_request_queue_drains(&h).await;
    let dead = h.dead_letters().await.unwrap();
    assert_eq!(dead.len(), invalid.len() + 1);
    assert!(dead.iter().any(|d| d.body.starts_with(b"\xff\xfe")
        && d.reason.as_deref() == Some("invalid_json")));
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_lands_in_dial_dead_with_its_reason() {
    let mut h = started(settings(), SimConfig::default()).await;
    h.publish_request(b"this is not json", None).await.unwrap();
    h.publish_request(&request("after-the-bad-one", &callee(7), "ivr"), None)
        .await
        .unwrap();
    // The good request behind it is not blocked.
    let received = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(received[0].event.request_id, "after-the-bad-one");
    assert_eq!(received[0].event.status, Status::Dialed);

    let dead = h.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, b"this is not json");
    assert_eq!(dead[0].reason.as_deref(), Some("invalid_json"));
    assert!(dead[0].detail.as_deref().is_some_and(|d| !d.is_empty()));
    helpers::assert_request_queue_drains(&h).await;
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_traceparent_travels_onto_its_outcome_event() {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let mut h = started(settings(), SimConfig::default()).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(LongString::from(traceparent)),
    );
    h.publish_request_with(
        &request("traced", &callee(60), "ivr"),
        lapin::BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap();
    let received = h.outcomes(1, WAIT).await.unwrap();
    let carried = received[0]
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent").cloned());
    assert_eq!(
        carried,
        Some(AMQPValue::LongString(LongString::from(traceparent)))
    );
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_request_echoes_its_attributes_when_only_another_field_is_wrong() {
    let mut h = started(settings(), SimConfig::default()).await;
    let event = helpers::only_outcome(&mut h, &request("bad-callee-ticket", "12345", "ivr")).await;
    assert_eq!(event.status, Status::Rejected);
    assert_eq!(event.code.as_deref(), Some("invalid_callee"));
    let attributes: serde_json::Value = serde_json::from_str(
        event
            .attributes
            .as_ref()
            .expect("attributes echoed in the rejected event")
            .get(),
    )
    .unwrap();
    assert_eq!(
        attributes,
        serde_json::json!({"ticket": "bad-callee-ticket"})
    );
    assert!(h.simulator.dials().is_empty());
    h.cleanup().await.unwrap();
}

/// `body` with `field` set to `value`.
fn with_field(body: &[u8], field: &str, value: serde_json::Value) -> Vec<u8> {
    let mut json: serde_json::Value = serde_json::from_slice(body).unwrap();
    json[field] = value;
    json.to_string().into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialed_event_carries_every_field_of_the_simulators_answer() {
    let mut h = started(settings(), SimConfig::default()).await;
    h.publish_request(&request("all-fields", &callee(70), "agent"), None)
        .await
        .unwrap();
    // Read as a downstream consumer would: the JSON on the wire, not the worker's own type.
    let delivery = h
        .next_outcome_delivery(WAIT)
        .await
        .unwrap()
        .expect("an outcome");
    let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    let dials = h.simulator.dials();
    assert_eq!(dials.len(), 1, "dialed exactly once");
    let dial = &dials[0];

    assert_eq!(event["status"], "dialed");
    assert_eq!(event["request_id"], "all-fields");
    assert_eq!(event["task_id"], dial.task_id.as_str());
    assert_eq!(event["aliyun_request_id"], dial.aliyun_request_id.as_str());
    // The simulator answers as documented: Code OK, StatusCode 200 (a number, reported as the
    // contract's string), StatusDesc Okay, HttpStatusCode 200, and an empty Message, which is
    // no message at all.
    assert_eq!(event["code"], "OK");
    assert_eq!(event["status_code"], "200");
    assert_eq!(event["status_desc"], "Okay");
    assert_eq!(event["http_status_code"], 200);
    assert!(event.get("message").is_none(), "{event}");
    // TimeStamp is the dial's time in milliseconds, reported as RFC 3339.
    let ccc_time: jiff::Timestamp = event["ccc_time"]
        .as_str()
        .expect("ccc_time is a string")
        .parse()
        .expect("ccc_time is RFC 3339");
    assert_eq!(
        ccc_time,
        jiff::Timestamp::from_millisecond(dial.ended_at.as_millisecond()).unwrap()
    );
    assert_eq!(
        event["attributes"],
        serde_json::json!({"ticket": "all-fields"})
    );
    assert!(
        !event.to_string().contains(&callee(70)),
        "no phone number in the event: {event}"
    );
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_provider_goes_out_as_the_dialex_provider_parameter() {
    let mut h = started(settings(), SimConfig::default()).await;
    let with_provider = with_field(
        &request("with-provider", &callee(71), "ivr"),
        "provider",
        serde_json::json!("cmcc 专线"),
    );
    h.publish_request(&with_provider, None).await.unwrap();
    h.publish_request(&request("without-provider", &callee(72), "ivr"), None)
        .await
        .unwrap();
    let received = h.outcomes(2, WAIT).await.unwrap();
    assert!(received.iter().all(|r| r.event.status == Status::Dialed));

    let dials = h.simulator.dials();
    assert_eq!(dials.len(), 2);
    let provider_of = |callee: String| {
        dials
            .iter()
            .find(|d| d.callee == callee)
            .map(|d| d.provider.clone())
            .expect("dialed")
    };
    assert_eq!(provider_of(callee(71)).as_deref(), Some("cmcc 专线"));
    assert_eq!(provider_of(callee(72)), None);
    h.cleanup().await.unwrap();
}
