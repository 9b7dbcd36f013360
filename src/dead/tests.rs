use lapin::types::{FieldArray, LongString, ShortString};

use super::commands::{Acted, Listing, print_acted, print_listing};
use super::sweep::Walked;
use super::*;

fn long(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn properties(headers: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert((*name).into(), value.clone());
    }
    BasicProperties::default().with_headers(table)
}

const BODY: &[u8] = br#"{"request_id":"r-1","instance_id":"inst-a","callee":"15732036617"}"#;

/// What the broker writes on a message it dead-letters.
fn broker_death(reason: &str, count: i64, time: u64) -> AMQPValue {
    let mut entry = FieldTable::default();
    entry.insert("reason".into(), long(reason));
    entry.insert("queue".into(), long("dial.requests"));
    entry.insert("count".into(), AMQPValue::LongLongInt(count));
    entry.insert("time".into(), AMQPValue::Timestamp(time));
    AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)]))
}

#[test]
fn a_message_the_worker_parked_shows_its_reason_detail_and_time() {
    let parked = Parked::read(
        BODY,
        &properties(&[
            (REASON_HEADER, long("ccc_refused")),
            (DETAIL_HEADER, long("CCC refused this request")),
            (PARKED_AT_HEADER, long("2026-12-07T01:00:00Z")),
            (REPLAYS_HEADER, long("2")),
        ]),
    );
    assert_eq!(parked.request_id.as_deref(), Some("r-1"));
    assert_eq!(parked.instance_id.as_deref(), Some("inst-a"));
    assert_eq!(parked.reason, "ccc_refused");
    assert_eq!(parked.detail.as_deref(), Some("CCC refused this request"));
    assert_eq!(
        parked.parked_at,
        Some("2026-12-07T01:00:00Z".parse().unwrap())
    );
    assert_eq!(parked.replays, 2);
    assert!(!parked.rejected_for_content());
    // Nothing of the body but the ids: the callee never shows.
    let json = serde_json::to_string(&parked).unwrap();
    assert!(!json.contains("15732036617"), "{json}");
}

#[test]
fn a_message_the_broker_dead_lettered_shows_the_brokers_reason_count_and_time() {
    let parked = Parked::read(
        BODY,
        &properties(&[
            ("x-death", broker_death("delivery_limit", 1, 1_796_000_000)),
            ("x-first-death-reason", long("delivery_limit")),
        ]),
    );
    assert_eq!(parked.reason, "delivery_limit");
    assert_eq!(parked.deaths, Some(1));
    assert_eq!(parked.died_in.as_deref(), Some("dial.requests"));
    assert_eq!(
        parked.parked_at,
        Some(Timestamp::from_second(1_796_000_000).unwrap())
    );
}

#[test]
fn a_body_that_is_not_json_falls_back_on_the_message_id() {
    let props = properties(&[(REASON_HEADER, long("invalid_json"))])
        .with_message_id(ShortString::from("m-9"));
    let parked = Parked::read(b"{not json", &props);
    assert_eq!(parked.request_id.as_deref(), Some("m-9"));
    assert_eq!(parked.instance_id, None);
    assert!(parked.rejected_for_content());
    let bare = Parked::read(b"", &BasicProperties::default());
    assert_eq!(bare.reason, "unknown");
    assert_eq!(bare.request_id, None);
}

fn parked(reason: &str, replays: u32) -> Parked {
    Parked {
        request_id: Some("r-1".into()),
        instance_id: Some("inst-a".into()),
        reason: reason.into(),
        detail: None,
        parked_at: Some("2026-12-07T01:00:00Z".parse().unwrap()),
        deaths: None,
        died_in: None,
        replays,
        followup_job: false,
    }
}

#[test]
fn a_parked_follow_up_job_is_replayed_to_the_follow_up_queue_not_as_a_request() {
    let settings = crate::config::Settings::load_from(None, Vec::new()).unwrap();
    let names = &settings.amqp.names;
    let job = BasicProperties::default().with_type(crate::followup::job::JOB_TYPE.into());
    let parked_job = Parked::read(BODY, &job);
    assert!(parked_job.followup_job);
    assert_eq!(parked_job.replay_to(names), ("", "dial.followups"));
    let request = Parked::read(BODY, &properties(&[]));
    assert!(!request.followup_job);
    assert_eq!(request.replay_to(names), ("dial.requests", "dial.request"));
}

#[test]
fn every_filter_given_must_match() {
    let p = parked("poison_message", 0);
    assert!(Filter::default().matches(&p));
    let by = |f: Filter| f.matches(&p);
    assert!(by(Filter {
        reason: Some("poison_message".into()),
        instance_id: Some("inst-a".into()),
        ..Filter::default()
    }));
    assert!(!by(Filter {
        reason: Some("poison_message".into()),
        instance_id: Some("inst-b".into()),
        ..Filter::default()
    }));
    assert!(!by(Filter {
        request_id: Some("r-2".into()),
        ..Filter::default()
    }));
    assert!(by(Filter {
        since: Some("2026-12-07T00:59:59Z".parse().unwrap()),
        ..Filter::default()
    }));
    assert!(!by(Filter {
        since: Some("2026-12-07T01:00:01Z".parse().unwrap()),
        ..Filter::default()
    }));
    let undated = Parked {
        parked_at: None,
        ..p.clone()
    };
    assert!(
        !Filter {
            since: Some("2000-01-01T00:00:00Z".parse().unwrap()),
            ..Filter::default()
        }
        .matches(&undated)
    );
}

#[test]
fn replay_skips_content_rejections_loops_and_what_is_past_max() {
    let rules = ReplayRules {
        include_rejected: false,
        max_replays: 3,
        max: Some(2),
    };
    assert_eq!(
        rules.decide(&parked("poison_message", 0), 0),
        Ok(Decision::Replay)
    );
    assert_eq!(
        rules.decide(&parked("invalid_callee", 0), 0),
        Err(Skip::RejectedForContent)
    );
    assert_eq!(
        rules.decide(&parked("delivery_limit", 3), 0),
        Err(Skip::ReplayedTooOften)
    );
    assert_eq!(
        rules.decide(&parked("delivery_limit", 0), 2),
        Err(Skip::MaxReached)
    );
    let with_rejected = ReplayRules {
        include_rejected: true,
        ..rules
    };
    assert_eq!(
        with_rejected.decide(&parked("invalid_callee", 0), 0),
        Ok(Decision::Replay)
    );
}

#[test]
fn a_replayed_copy_drops_the_parking_and_counts_the_replay() {
    let original = properties(&[
        (REASON_HEADER, long("delivery_limit")),
        (DETAIL_HEADER, long("detail")),
        (PARKED_AT_HEADER, long("2026-12-07T01:00:00Z")),
        (ATTEMPTS_HEADER, long("6")),
        (DEFERRED_HEADER, long("retry")),
        (NOT_BEFORE_HEADER, long("2026-12-07T01:00:00Z")),
        (DELIVERY_COUNT_HEADER, AMQPValue::LongLongInt(5)),
        ("x-death", broker_death("delivery_limit", 1, 1)),
        ("x-first-death-reason", long("delivery_limit")),
        ("x-first-death-queue", long("dial.requests")),
        (
            "traceparent",
            long("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ),
    ])
    .with_message_id(ShortString::from("m-1"));
    let copy = replay_properties(&original, 1);
    let headers = copy.headers().as_ref().unwrap().inner();
    let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(headers.contains_key("traceparent"));
    assert_eq!(headers.get(REPLAYS_HEADER), Some(&long("1")));
    assert_eq!(copy.message_id(), original.message_id());

    let kept = kept_properties(&original);
    let kept = kept.headers().as_ref().unwrap().inner();
    assert!(!kept.contains_key(DELIVERY_COUNT_HEADER));
    assert_eq!(kept.len(), 10);
}

#[test]
fn the_table_and_the_final_word_say_what_matched_and_why_some_stayed() {
    let listing = Listing {
        matched: 1,
        shown: vec![Parked {
            detail: Some("x".repeat(100)),
            ..parked("poison_message", 1)
        }],
        walked: Walked {
            counted: 4,
            read: 4,
            kept: 4,
            ..Walked::default()
        },
    };
    let mut out = Vec::new();
    print_listing(&listing, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("REQUEST_ID"), "{text}");
    assert!(lines[1].starts_with("r-1"), "{text}");
    assert!(lines[1].contains("poison_message"), "{text}");
    assert!(lines[1].ends_with('…'), "long details are cut: {text}");
    assert_eq!(lines[2], "1 of 4 parked messages match; 1 shown");

    let acted = Acted {
        matched: 5,
        acted: 3,
        dry_run: true,
        skipped: [(Skip::RejectedForContent, 2)].into(),
        stopped: false,
        walked: Walked {
            counted: 9,
            read: 9,
            ..Walked::default()
        },
    };
    let mut out = Vec::new();
    print_acted(&acted, "replayed", &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "5 matched of 9 read; 3 would be replayed\n\
         2 left parked: parked for its content (--include-rejected replays it)\n"
    );
}
