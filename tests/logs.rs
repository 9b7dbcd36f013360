//! Log capture: a worker process logging JSON handles a mix of requests (every answer mode,
//! `+86` and dashed spellings, rejections, retries, a hop through the wait queues, an
//! ambiguous reset, a permanent error, a duplicate) and its log is read back line by line.
//! Every line is one JSON object; what is logged while a request is handled carries the
//! request's span with the masked callee; and no line holds a phone number, the AccessKey
//! secret or the broker password.

mod helpers;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use dialex_devkit::harness::{Harness, Received};
use dialex_devkit::simulator::{DEMO_ACCESS_KEY_SECRET, Fault, SimConfig};
use dialex_worker::outcome::Status;
use dialex_worker::phone::PhoneNumber;
use helpers::{WAIT, outcomes_until, settings};
use secrecy::ExposeSecret as _;
use serde_json::Value;

const INSTANCE: &str = "d278629c-c687-4aa3-b044-4fe9b012e7ef";
/// The company's displayed number: a landline, as callers usually are.
const LANDLINE_CALLER: &str = "022-8519-6281";
/// A mobile used as caller by one request: personal data like any callee.
const MOBILE_CALLER: &str = "+86 136 9876 5432";

/// One valid request, the fault its callee meets, and how it must end.
struct Case {
    id: &'static str,
    callee: &'static str,
    caller: &'static str,
    answer_mode: &'static str,
    fault: Option<(Fault, u32)>,
    status: Status,
}

const CASES: &[Case] = &[
    Case {
        id: "logs-ivr",
        callee: "+86 157-3203-6617",
        caller: LANDLINE_CALLER,
        answer_mode: "ivr",
        fault: None,
        status: Status::Dialed,
    },
    Case {
        id: "logs-agent",
        callee: "157 3203 6618",
        caller: LANDLINE_CALLER,
        answer_mode: "agent",
        fault: None,
        status: Status::Dialed,
    },
    Case {
        id: "logs-skill",
        callee: "0086 157 3203 6619",
        caller: MOBILE_CALLER,
        answer_mode: "skill_group",
        fault: None,
        status: Status::Dialed,
    },
    Case {
        id: "logs-throttled",
        callee: "139-1234-5670",
        caller: LANDLINE_CALLER,
        answer_mode: "ivr",
        fault: Some((Fault::Throttle, 2)),
        status: Status::Dialed,
    },
    // Outlasts the three attempts in process: one hop through a wait queue, then dialed.
    Case {
        id: "logs-unavailable",
        callee: "+8613912345671",
        caller: LANDLINE_CALLER,
        answer_mode: "agent",
        fault: Some((Fault::Unavailable, 4)),
        status: Status::Dialed,
    },
    Case {
        id: "logs-reset",
        callee: "139 1234 5672",
        caller: LANDLINE_CALLER,
        answer_mode: "ivr",
        fault: Some((Fault::ResetAfterExecute, 1)),
        status: Status::Unknown,
    },
    Case {
        id: "logs-invalid-parameter",
        callee: "13912345673",
        caller: LANDLINE_CALLER,
        answer_mode: "skill_group",
        fault: Some((Fault::InvalidParameter, 1)),
        status: Status::Failed,
    },
];

/// Not a dialable number (ten digits), but still somebody's digits.
const INVALID_CALLEE: &str = "139-1234-567";
/// A valid number in a request broken elsewhere, and one in a body that is not JSON at all.
const BAD_MODE_CALLEE: &str = "139 1234 5675";
const MALFORMED_CALLEE: &str = "13912345674";

fn body(id: &str, callee: &str, caller: &str, answer_mode: &str) -> Vec<u8> {
    let rout_point = match answer_mode {
        "agent" => "agent001@ExampleCallCenter",
        "skill_group" => "skillgroup-1",
        _ => "paEF_1GAQXXJ",
    };
    serde_json::json!({
        "request_id": id,
        "instance_id": INSTANCE,
        "caller": caller,
        "callee": callee,
        "answer_mode": answer_mode,
        "rout_point": rout_point,
        // Producers put personal data in attributes too; they are echoed, never logged.
        "attributes": {"ticket": id, "customer_phone": callee},
    })
    .to_string()
    .into_bytes()
}

/// `dialex-worker run` wired to the harness, logging JSON to `log`. `RUST_LOG` raises the
/// worker's own level to debug over the `log.level` (`warn`) that `worker_env` passes, and
/// keeps every other crate at info; `worker_env` also carries the simulator's credentials.
fn spawn_worker(harness: &Harness, log: &Path) -> tokio::process::Child {
    let log = std::fs::File::create(log).expect("worker log file");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_dialex-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(harness.worker_env())
        .env(
            "DIALEX_AMQP__URL",
            harness.settings.amqp.url.expose_secret(),
        )
        .env("DIALEX_LOG__FORMAT", "json")
        .env("RUST_LOG", "info,dialex_worker=debug")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts")
}

/// SIGTERM, as Kubernetes stops a pod, then waits for a clean exit.
async fn terminate(mut worker: tokio::process::Child) {
    let pid = worker.id().expect("the worker is running");
    let kill = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill runs");
    assert!(kill.success(), "kill -TERM {pid}");
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s of SIGTERM")
        .expect("waiting for the worker");
    assert!(status.success(), "the worker exited with {status}");
}

/// The request span's fields of a log line, if it was logged inside one.
fn request_span(line: &Value) -> Option<&serde_json::Map<String, Value>> {
    line["spans"]
        .as_array()?
        .iter()
        .filter_map(Value::as_object)
        .find(|span| span.get("name").and_then(Value::as_str) == Some("request"))
}

/// `157****6617`: the first three and last four digits of an 11-digit mobile.
fn masked(national: &str) -> String {
    format!("{}****{}", &national[..3], &national[7..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_carry_the_request_span_and_never_a_number_or_secret() {
    let mut h = Harness::start(settings(), SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable on 127.0.0.1:5672");
    let log_path = std::env::temp_dir().join(format!("{}-logs.jsonl", h.settings.store.key_prefix));
    let worker = spawn_worker(&h, &log_path);

    for case in CASES {
        let national = PhoneNumber::parse(case.callee).expect("a valid callee");
        if let Some((fault, times)) = case.fault {
            h.simulator.inject(national.as_str(), fault, times);
        }
        h.publish_request(
            &body(case.id, case.callee, case.caller, case.answer_mode),
            None,
        )
        .await
        .unwrap();
    }
    h.publish_request(
        &body(
            "logs-invalid-callee",
            INVALID_CALLEE,
            LANDLINE_CALLER,
            "ivr",
        ),
        None,
    )
    .await
    .unwrap();
    h.publish_request(
        &body("logs-bad-mode", BAD_MODE_CALLEE, LANDLINE_CALLER, "fax"),
        None,
    )
    .await
    .unwrap();
    let malformed = format!(r#"{{"request_id": "x", "callee": "{MALFORMED_CALLEE}", "caller""#);
    h.publish_request(malformed.as_bytes(), Some("logs-malformed"))
        .await
        .unwrap();

    let mut want: HashMap<&str, Status> = CASES.iter().map(|c| (c.id, c.status)).collect();
    want.insert("logs-invalid-callee", Status::Rejected);
    want.insert("logs-bad-mode", Status::Rejected);
    want.insert("logs-malformed", Status::Rejected);
    let finals = |received: &[Received]| -> HashMap<String, Status> {
        received
            .iter()
            .filter(|r| r.event.status != Status::Deferred)
            .map(|r| (r.event.request_id.clone(), r.event.status))
            .collect()
    };
    let received = outcomes_until(&mut h, WAIT, |r| finals(r).len() == want.len()).await;
    let got = finals(&received);
    for (id, status) in &want {
        assert_eq!(got.get(*id), Some(status), "outcome of {id}");
    }
    assert!(
        received
            .iter()
            .any(|r| r.event.request_id == "logs-unavailable"
                && r.event.status == Status::Deferred),
        "the persisting 503 should have hopped through a wait queue"
    );
    // A duplicate finds the stored result and publishes it again: one more logged path.
    h.publish_request(
        &body("logs-ivr", CASES[0].callee, CASES[0].caller, "ivr"),
        None,
    )
    .await
    .unwrap();
    let again = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(again[0].event.request_id, "logs-ivr");
    assert_eq!(again[0].event.status, Status::Dialed);

    terminate(worker).await;
    let log = std::fs::read_to_string(&log_path).expect("the worker's log");
    let lines: Vec<&str> = log.lines().collect();
    println!("{} log lines in {}", lines.len(), log_path.display());

    // (a) One JSON object per line, each with a level and a message.
    let requests = want.len() + 1;
    assert!(
        lines.len() >= requests,
        "only {} log lines for {requests} requests:\n{log}",
        lines.len()
    );
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    for (line, value) in lines.iter().zip(&parsed) {
        assert!(value.is_object(), "not a JSON object: {line}");
        assert!(value["level"].is_string(), "no level: {line}");
        assert!(
            value["message"].is_string() || value["fields"]["message"].is_string(),
            "no message: {line}"
        );
    }
    // RUST_LOG, not log.level (warn), decided what was logged.
    assert!(
        parsed.iter().any(|v| v["level"] == "INFO"),
        "RUST_LOG should override log.level = warn:\n{log}"
    );

    // (b) Lines logged inside a request carry its span (in `spans`, and as `span` while it is
    // the innermost): request_id, and for a valid request instance_id and the masked callee.
    let mut outcome_lines: HashSet<&str> = HashSet::new();
    for (line, value) in lines.iter().zip(&parsed) {
        let Some(span) = request_span(value) else {
            continue;
        };
        let request_id = span["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("request span without request_id: {line}"));
        if let Some(case) = CASES.iter().find(|c| c.id == request_id) {
            let national = PhoneNumber::parse(case.callee).expect("a valid callee");
            assert_eq!(span["instance_id"], INSTANCE, "{line}");
            assert_eq!(span["callee"], masked(national.as_str()).as_str(), "{line}");
        }
        if value["message"] == "outcome published" {
            outcome_lines.insert(request_id);
        }
    }
    for id in want.keys() {
        assert!(
            outcome_lines.contains(id),
            "no `outcome published` line inside the span of {id}:\n{log}"
        );
    }
    let retry = parsed
        .iter()
        .find(|v| v["message"] == "DialEx attempt failed; retrying")
        .expect("the throttled request logs its retries");
    assert!(
        retry["span"]["request_id"].is_string() && retry["span"]["callee"].is_string(),
        "the current span rides on every line: {retry}"
    );

    // (c) No number in any spelling, no secret. Separators are dropped before looking, so a
    // number logged as `157-3203-6617` or `+86 157 3203 6617` is caught as well.
    let numbers: Vec<(String, String)> = CASES
        .iter()
        .map(|c| c.callee)
        .chain([MOBILE_CALLER, BAD_MODE_CALLEE, MALFORMED_CALLEE])
        .map(|raw| {
            let national = PhoneNumber::parse(raw).expect("a valid number");
            (raw.to_owned(), national.as_str().to_owned())
        })
        .chain([(INVALID_CALLEE.to_owned(), INVALID_CALLEE.replace('-', ""))])
        .collect();
    let amqp_url = h.settings.amqp.url.expose_secret().to_owned();
    let broker_userinfo = amqp_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo.to_owned())
        .expect("the test broker URL carries a user and password");
    for line in &lines {
        let digits_only: String = line
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '+'))
            .collect();
        for (raw, national) in &numbers {
            assert!(!line.contains(raw.as_str()), "{raw} in the log: {line}");
            assert!(!digits_only.contains(national), "{raw} in the log: {line}");
        }
        assert!(
            !line.contains(DEMO_ACCESS_KEY_SECRET),
            "the AccessKey secret in the log: {line}"
        );
        assert!(
            !line.contains(&format!("{broker_userinfo}@")),
            "the broker credentials in the log: {line}"
        );
        assert!(
            !line.contains(&amqp_url),
            "the broker URL in the log: {line}"
        );
    }

    let _ = std::fs::remove_file(&log_path);
    h.cleanup().await.unwrap();
}

/// An STS token the worker is given: it appears in CCC's string to sign.
const STS_TOKEN: &str = "CAIS-sts-token-never-to-be-seen";
/// The callee of the request CCC refuses: it appears in CCC's string to sign.
const REFUSED_CALLEE: &str = "13712345678";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_ccc_echoes_never_reaches_a_log_the_probes_the_metrics_or_an_event() {
    // A wrong secret: CCC answers SignatureDoesNotMatch with its whole string to sign, which
    // holds the callee, the caller, the AccessKeyId and the STS token.
    for format in ["json", "pretty"] {
        let h = Harness::start(settings(), SimConfig::default())
            .await
            .expect("RabbitMQ must be reachable on 127.0.0.1:5672");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log_path =
            std::env::temp_dir().join(format!("{}-echo.{format}", h.settings.store.key_prefix));
        let log = std::fs::File::create(&log_path).expect("worker log file");
        let worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_dialex-worker"))
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(h.worker_env())
            .env("DIALEX_AMQP__URL", h.settings.amqp.url.expose_secret())
            .env("DIALEX_HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("DIALEX_LOG__FORMAT", format)
            .env("RUST_LOG", "info,dialex_worker=debug")
            .env("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "not-the-secret")
            .env("ALIBABA_CLOUD_SECURITY_TOKEN", STS_TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the worker binary starts");
        h.publish_request(
            &body("echoed", REFUSED_CALLEE, LANDLINE_CALLER, "ivr"),
            None,
        )
        .await
        .unwrap();

        let get = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let request =
                format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.ok()?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.ok()?;
            Some(answer)
        };
        // Paused, saying why, with the probe failing behind it.
        let deadline = tokio::time::Instant::now() + WAIT;
        let readyz = loop {
            if let Some(answer) = get("/readyz").await
                && answer.contains("SignatureDoesNotMatch")
            {
                break answer;
            }
            assert!(tokio::time::Instant::now() < deadline, "never paused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // At least one probe has failed and been logged.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        let metrics = get("/metrics").await.expect("the metrics page");
        terminate(worker).await;
        let log = std::fs::read_to_string(&log_path).expect("the worker's log");
        assert!(
            log.contains("SignatureDoesNotMatch"),
            "the cause is logged:\n{log}"
        );
        let mut dead = h.dead_letters().await.unwrap();
        dead.retain(|d| !d.body.is_empty());
        let caller_digits = LANDLINE_CALLER.replace('-', "");
        for (place, text) in [("readyz", &readyz), ("metrics", &metrics), ("log", &log)] {
            for secret in [
                REFUSED_CALLEE,
                caller_digits.as_str(),
                STS_TOKEN,
                "not-the-secret",
                dialex_devkit::simulator::DEMO_ACCESS_KEY_ID,
            ] {
                assert!(
                    !text.contains(secret),
                    "{secret} in the {place} ({format} logs):\n{text}"
                );
            }
        }
        assert!(dead.is_empty(), "nothing is parked while paused");
        let _ = std::fs::remove_file(&log_path);
        h.cleanup().await.unwrap();
    }
}

/// A worker process on RRSA credentials through the simulator's STS, living 5 s: refreshed
/// while it dials, then refused (the token file holds a token STS does not accept) until they
/// expire and the worker pauses, then accepted again. No line of its log holds an OIDC token,
/// an issued secret or security token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_refreshes_and_their_failures_log_no_token_or_secret() {
    let mut h = Harness::start(settings(), SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable on 127.0.0.1:5672");
    h.simulator.set_sts_lifetime(Duration::from_secs(5));
    h.simulator.accept_oidc_token("oidc-token-accepted");
    let dir = std::env::temp_dir().join(format!("{}-rrsa", h.settings.store.key_prefix));
    std::fs::create_dir_all(&dir).expect("token dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "oidc-token-accepted").expect("token written");
    let log_path = std::env::temp_dir().join(format!("{}-sts.jsonl", h.settings.store.key_prefix));
    let sts = dialex_devkit::simulator::StsConfig::default();
    let worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_dialex-worker"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(
            h.worker_env()
                .into_iter()
                .filter(|(name, _)| !name.starts_with("ALIBABA_CLOUD_")),
        )
        .env("DIALEX_AMQP__URL", h.settings.amqp.url.expose_secret())
        .env("ALIBABA_CLOUD_ROLE_ARN", &sts.role_arn)
        .env("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", &sts.oidc_provider_arn)
        .env("ALIBABA_CLOUD_OIDC_TOKEN_FILE", &token_file)
        .env("ALIBABA_CLOUD_STS_ENDPOINT", h.simulator.sts_endpoint())
        .env("DIALEX_LOG__FORMAT", "json")
        .env("RUST_LOG", "info,dialex_worker=debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("worker log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts");

    let number = |i: usize| format!("1573203{:04}", 7000 + i);
    for i in 0..3 {
        h.publish_request(
            &body(&format!("sts-log-{i}"), &number(i), LANDLINE_CALLER, "ivr"),
            None,
        )
        .await
        .unwrap();
    }
    assert_eq!(h.outcomes(3, WAIT).await.unwrap().len(), 3);
    // STS refuses from now on: the credentials run out, and the next request pauses the
    // worker.
    std::fs::write(&token_file, "oidc-token-refused").expect("token rotated");
    tokio::time::sleep(Duration::from_secs(6)).await;
    h.publish_request(
        &body("sts-log-paused", &number(3), LANDLINE_CALLER, "ivr"),
        None,
    )
    .await
    .unwrap();
    let until = tokio::time::Instant::now() + WAIT;
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("no credentials to sign with")
    {
        assert!(tokio::time::Instant::now() < until, "never paused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Accepted again: it resumes by itself and dials the request that waited.
    h.simulator.accept_oidc_token("oidc-token-refused");
    let r = h.outcomes(1, WAIT).await.unwrap();
    assert_eq!(r[0].event.request_id, "sts-log-paused");
    assert_eq!(r[0].event.status, Status::Dialed);
    terminate(worker).await;

    let log = std::fs::read_to_string(&log_path).expect("the worker's log");
    assert!(
        log.contains("could not refresh the credentials"),
        "the refused refreshes are logged:\n{log}"
    );
    let issued = h.simulator.sts_issued();
    assert!(issued.len() >= 2, "{issued:?}");
    let mut secrets = vec![
        "oidc-token-accepted".to_owned(),
        "oidc-token-refused".to_owned(),
    ];
    for credentials in &issued {
        secrets.push(credentials.access_key_secret.clone());
        secrets.push(credentials.security_token.clone());
    }
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "{secret} logged:\n{log}");
    }
    h.cleanup().await.expect("clean up");
}
