//! Black-box tests of the simulator over real loopback sockets, with reqwest as the client.
//!
//! Requests are signed with the simulator's own canonicaliser (pinned by the published vectors
//! in `verify`), and encoded on the wire the way Alibaba's SDK sends them: common parameters and
//! `Signature` in the query, business parameters in a form body for POST.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::Value;

use super::params::Params;
use super::verify;
use super::*;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn start(config: SimConfig) -> Simulator {
    Simulator::start(loopback(), config).await.unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn timestamp(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3986 encoding for the query string.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    verify::percent_encode_into(s, &mut out);
    out
}

/// Form encoding as browsers and most HTTP clients write it: space as `+`.
fn form_encode(s: &str) -> String {
    url_encode(s).replace("%20", "+")
}

fn join(pairs: &[(String, String)], encode: fn(&str) -> String) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A `DialEx` request under construction: tests tweak it, then send it.
#[derive(Clone)]
struct DialReq {
    method: Method,
    /// Sent in the query (with `Signature`).
    common: Vec<(String, String)>,
    /// Sent in the form body for POST, in the query for GET.
    business: Vec<(String, String)>,
    secret: String,
    /// Replaces the computed signature (or removes it, with `Some(None)`).
    signature: Option<Option<String>>,
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl DialReq {
    fn post(callee: &str) -> Self {
        let nonce = uuid::Uuid::new_v4().to_string();
        let now = timestamp(Timestamp::now());
        Self {
            method: Method::POST,
            common: owned(&[
                ("AccessKeyId", DEMO_ACCESS_KEY_ID),
                ("Action", "DialEx"),
                ("Format", "JSON"),
                ("RegionId", "cn-shanghai"),
                ("SignatureMethod", "HMAC-SHA1"),
                ("SignatureNonce", &nonce),
                ("SignatureVersion", "1.0"),
                ("Timestamp", &now),
                ("Version", "2017-07-05"),
            ]),
            business: owned(&[
                ("InstanceId", "d278629c-c687-4aa3-b044-4fe9b012e7ef"),
                ("Caller", "02285196281"),
                ("Callee", callee),
                ("AnswerMode", "1"),
                ("RoutPoint", "agent01@demo-domain"),
            ]),
            secret: DEMO_ACCESS_KEY_SECRET.to_owned(),
            signature: None,
        }
    }

    fn get(callee: &str) -> Self {
        Self {
            method: Method::GET,
            ..Self::post(callee)
        }
    }

    fn param(&self, key: &str) -> Option<&str> {
        self.common
            .iter()
            .chain(&self.business)
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn set(mut self, key: &str, value: &str) -> Self {
        let existing = self
            .common
            .iter_mut()
            .chain(self.business.iter_mut())
            .find(|(k, _)| k == key);
        match existing {
            Some(pair) => pair.1 = value.to_owned(),
            None => self.business.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    fn remove(mut self, key: &str) -> Self {
        self.common.retain(|(k, _)| k != key);
        self.business.retain(|(k, _)| k != key);
        self
    }

    fn string_to_sign(&self) -> String {
        let all = self.common.iter().chain(&self.business).cloned().collect();
        verify::string_to_sign(self.method.as_str(), &Params::from_pairs(all).unwrap())
    }

    fn computed_signature(&self) -> String {
        verify::sign(&verify::signing_key(&self.secret), &self.string_to_sign())
    }

    /// Sends the request as signed (or with the overridden signature).
    async fn send(&self, endpoint: &str, client: &reqwest::Client) -> reqwest::Result<Answer> {
        let mut query = self.common.clone();
        let signature = match &self.signature {
            Some(overridden) => overridden.clone(),
            None => Some(self.computed_signature()),
        };
        if let Some(signature) = signature {
            query.push(("Signature".to_owned(), signature));
        }
        let mut request = if self.method == Method::GET {
            query.extend(self.business.iter().cloned());
            client.get(format!("{endpoint}/?{}", join(&query, url_encode)))
        } else {
            client
                .post(format!("{endpoint}/?{}", join(&query, url_encode)))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(join(&self.business, form_encode))
        };
        request = request.header("accept", "application/json");
        Answer::read(request.send().await?).await
    }
}

struct Answer {
    status: u16,
    body: Value,
    /// The `x-acs-request-id` header, if any.
    request_id: Option<String>,
}

impl Answer {
    async fn read(response: reqwest::Response) -> reqwest::Result<Self> {
        let status = response.status().as_u16();
        let request_id = response
            .headers()
            .get("x-acs-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        Ok(Self {
            status,
            body,
            request_id,
        })
    }

    fn code(&self) -> &str {
        self.body["Code"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["Message"].as_str().unwrap_or("")
    }

    /// Asserts an error answer with the common error body shape.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "{}", self.body);
        assert_eq!(self.body["HostId"], "ccc.cn-shanghai.aliyuncs.com");
        assert!(uuid::Uuid::parse_str(self.body["RequestId"].as_str().unwrap()).is_ok());
        assert!(self.body["Recommend"].as_str().unwrap().contains(code));
        assert!(!self.message().is_empty());
    }
}

async fn send(req: &DialReq, sim: &Simulator) -> Answer {
    req.send(&sim.endpoint(), &http()).await.unwrap()
}

#[tokio::test]
async fn post_dial_is_accepted_answered_as_documented_and_logged() {
    let sim = start(SimConfig::default()).await;
    let req = DialReq::post("15732036617").set("Provider", "sim provider");
    let answer = send(&req, &sim).await;

    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = &answer.body;
    assert_eq!(body["Code"], "OK");
    assert_eq!(body["Success"], true);
    assert_eq!(body["StatusCode"], 200);
    assert_eq!(body["HttpStatusCode"], 200);
    assert_eq!(body["StatusDesc"], "Okay");
    assert_eq!(body["Message"], "");
    let request_id = body["RequestId"].as_str().unwrap();
    assert_eq!(request_id, request_id.to_uppercase());
    assert!(uuid::Uuid::parse_str(request_id).is_ok());
    let task_id = body["TaskId"].as_str().unwrap();
    assert!(task_id.len() >= 18 && task_id.bytes().all(|b| b.is_ascii_digit()));
    let time_stamp: i64 = body["TimeStamp"].as_str().unwrap().parse().unwrap();
    assert!((Timestamp::now().as_millisecond() - time_stamp).abs() < 10_000);

    let dials = sim.dials();
    assert_eq!(dials.len(), 1);
    let dial = &dials[0];
    assert_eq!(dial.task_id, task_id);
    assert_eq!(dial.aliyun_request_id, request_id);
    assert_eq!(dial.instance_id, "d278629c-c687-4aa3-b044-4fe9b012e7ef");
    assert_eq!(dial.caller, "02285196281");
    assert_eq!(dial.callee, "15732036617");
    assert_eq!(dial.answer_mode, 1);
    assert_eq!(dial.rout_point, "agent01@demo-domain");
    assert_eq!(dial.provider.as_deref(), Some("sim provider"));
    assert_eq!(dial.nonce, req.param("SignatureNonce").unwrap());
    assert!(dial.started_at <= dial.ended_at);
    assert_eq!(time_stamp, dial.ended_at.as_millisecond());
}

#[tokio::test]
async fn get_with_everything_in_the_query_is_accepted() {
    let sim = start(SimConfig::default()).await;
    let answer = send(&DialReq::get("15732036617"), &sim).await;
    assert_eq!(
        (answer.status, answer.code()),
        (200, "OK"),
        "{}",
        answer.body
    );
    assert_eq!(sim.dial_count(), 1);
}

#[tokio::test]
async fn unicode_and_reserved_characters_are_signed_like_the_gateway() {
    let sim = start(SimConfig::default()).await;
    let req = DialReq::post("15732036617")
        .set("Provider", "阿里云 *~+/=&")
        .set("AnswerMode", "2")
        .set("RoutPoint", "skill group (queue) 1");
    let answer = send(&req, &sim).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(sim.dials()[0].provider.as_deref(), Some("阿里云 *~+/=&"));
}

#[tokio::test]
async fn wrong_secret_is_answered_with_the_servers_string_to_sign() {
    let sim = start(SimConfig::default()).await;
    let mut req = DialReq::post("15732036617");
    req.secret = "not-the-secret".to_owned();
    let answer = send(&req, &sim).await;
    answer.assert_error(400, "SignatureDoesNotMatch");
    let expected = format!("server string to sign is:{}", req.string_to_sign());
    assert!(
        answer.message().ends_with(&expected),
        "{}",
        answer.message()
    );
    assert!(
        answer
            .message()
            .starts_with("Specified signature is not matched")
    );
    assert_eq!(sim.dial_count(), 0);
}

#[tokio::test]
async fn tampered_body_is_a_mismatch_and_does_not_burn_the_nonce() {
    let sim = start(SimConfig::default()).await;
    let honest = DialReq::post("15732036617");
    let mut tampered = honest.clone().set("Callee", "15700000000");
    tampered.signature = Some(Some(honest.computed_signature()));
    send(&tampered, &sim)
        .await
        .assert_error(400, "SignatureDoesNotMatch");

    // Same nonce, honest parameters: the forged request must not have used it up.
    let answer = send(&honest, &sim).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(sim.dials()[0].callee, "15732036617");
}

#[tokio::test]
async fn garbage_signature_is_a_mismatch() {
    let sim = start(SimConfig::default()).await;
    let mut req = DialReq::post("15732036617");
    req.signature = Some(Some("%%% not base64".to_owned()));
    send(&req, &sim)
        .await
        .assert_error(400, "SignatureDoesNotMatch");
}

#[tokio::test]
async fn timestamps_must_be_well_formed_and_fresh() {
    let sim = start(SimConfig::default()).await;
    let twenty_minutes = SignedDuration::from_mins(20);
    let stale = timestamp(Timestamp::now().checked_sub(twenty_minutes).unwrap());
    send(&DialReq::post("1").set("Timestamp", &stale), &sim)
        .await
        .assert_error(400, "InvalidTimeStamp.Expired");
    let future = timestamp(Timestamp::now().checked_add(twenty_minutes).unwrap());
    send(&DialReq::post("1").set("Timestamp", &future), &sim)
        .await
        .assert_error(400, "InvalidTimeStamp.Expired");
    let slightly_off = timestamp(
        Timestamp::now()
            .checked_sub(SignedDuration::from_mins(10))
            .unwrap(),
    );
    assert_eq!(
        send(&DialReq::post("1").set("Timestamp", &slightly_off), &sim)
            .await
            .status,
        200
    );
    send(
        &DialReq::post("1").set("Timestamp", "2024-01-01 00:00:00"),
        &sim,
    )
    .await
    .assert_error(400, "InvalidTimeStamp.Format");
    assert_eq!(sim.dial_count(), 1);
}

#[tokio::test]
async fn reused_nonce_is_refused_and_not_dialed_twice() {
    let sim = start(SimConfig::default()).await;
    let req = DialReq::post("15732036617");
    assert_eq!(send(&req, &sim).await.status, 200);
    send(&req, &sim)
        .await
        .assert_error(400, "SignatureNonceUsed");
    assert_eq!(sim.dial_count(), 1);
}

#[tokio::test]
async fn missing_and_unsupported_common_parameters() {
    let sim = start(SimConfig::default()).await;
    let mut unsigned = DialReq::post("1");
    unsigned.signature = Some(None);
    send(&unsigned, &sim)
        .await
        .assert_error(400, "MissingSignature");
    for param in [
        "AccessKeyId",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "Timestamp",
        "Action",
        "Version",
    ] {
        let answer = send(&DialReq::post("1").remove(param), &sim).await;
        answer.assert_error(400, &format!("Missing{param}"));
        assert_eq!(
            answer.message(),
            format!("{param} is mandatory for this action.")
        );
    }
    send(
        &DialReq::post("1").set("SignatureMethod", "HMAC-SHA256"),
        &sim,
    )
    .await
    .assert_error(400, "InvalidParameter.SignatureMethod");
    send(&DialReq::post("1").set("SignatureVersion", "2.0"), &sim)
        .await
        .assert_error(400, "InvalidParameter.SignatureVersion");
    let answer = send(&DialReq::post("1").set("AccessKeyId", "who-is-this"), &sim).await;
    answer.assert_error(404, "InvalidAccessKeyId.NotFound");
    assert_eq!(answer.message(), "Specified access key is not found.");
    send(&DialReq::post("1").set("Action", "Dial"), &sim)
        .await
        .assert_error(404, "InvalidAction.NotFound");
    send(&DialReq::post("1").set("Version", "2019-10-30"), &sim)
        .await
        .assert_error(400, "InvalidVersion");
    assert_eq!(sim.dial_count(), 0);
}

#[tokio::test]
async fn credentials_come_from_the_config() {
    let config = SimConfig {
        credentials: vec![("other-id".to_owned(), SecretString::from("other-secret"))],
        ..SimConfig::default()
    };
    let sim = start(config).await;
    send(&DialReq::post("1"), &sim)
        .await
        .assert_error(404, "InvalidAccessKeyId.NotFound");
    let mut req = DialReq::post("1").set("AccessKeyId", "other-id");
    req.secret = "other-secret".to_owned();
    assert_eq!(send(&req, &sim).await.status, 200);
}

#[tokio::test]
async fn dialex_parameters_are_validated() {
    let sim = start(SimConfig::default()).await;
    let answer = send(&DialReq::post("1").remove("Callee"), &sim).await;
    answer.assert_error(400, "MissingCallee");
    assert_eq!(answer.message(), "Callee is mandatory for this action.");
    for (key, value, code) in [
        ("AnswerMode", "3", "InvalidParameter.AnswerMode"),
        ("AnswerMode", "agent", "InvalidParameter.AnswerMode"),
        ("RoutPoint", "paEF_1GAQXXJ", "InvalidParameter.RoutPoint"),
        ("Callee", "+8615732036617", "InvalidParameter.Callee"),
        ("Caller", "022-85196281", "InvalidParameter.Caller"),
        ("InstanceId", "", "MissingInstanceId"),
    ] {
        send(&DialReq::post("1").set(key, value), &sim)
            .await
            .assert_error(400, code);
    }
    assert_eq!(sim.dial_count(), 0);
}

#[tokio::test]
async fn authenticated_but_invalid_request_still_uses_its_nonce() {
    let sim = start(SimConfig::default()).await;
    let req = DialReq::post("1").set("AnswerMode", "9");
    send(&req, &sim)
        .await
        .assert_error(400, "InvalidParameter.AnswerMode");
    send(&req, &sim)
        .await
        .assert_error(400, "SignatureNonceUsed");
}

#[tokio::test]
async fn throttle_is_not_executed_and_consumed_once() {
    let sim = start(SimConfig::default()).await;
    sim.inject("15700000001", Fault::Throttle, 1);
    let answer = send(&DialReq::post("15700000001"), &sim).await;
    answer.assert_error(400, "Throttling.User");
    assert_eq!(
        answer.message(),
        "Request was denied due to user flow control."
    );
    assert_eq!(sim.dial_count(), 0);
    // Other callees are unaffected, and the fault is used up.
    assert_eq!(send(&DialReq::post("15700000002"), &sim).await.status, 200);
    assert_eq!(send(&DialReq::post("15700000001"), &sim).await.status, 200);
    assert_eq!(sim.dial_count(), 2);
}

#[tokio::test]
async fn server_side_faults_are_not_executed() {
    let sim = start(SimConfig::default()).await;
    let callee = "15700000003";
    sim.inject(callee, Fault::Unavailable, 1);
    sim.inject(callee, Fault::InternalError, 2);
    sim.inject(callee, Fault::BadGatewayNoBody, 1);
    send(&DialReq::post(callee), &sim)
        .await
        .assert_error(503, "ServiceUnavailable");
    for _ in 0..2 {
        send(&DialReq::post(callee), &sim)
            .await
            .assert_error(500, "InternalError");
    }
    let answer = send(&DialReq::post(callee), &sim).await;
    assert_eq!((answer.status, &answer.body), (502, &Value::Null));
    assert_eq!(sim.dial_count(), 0);
    assert_eq!(send(&DialReq::post(callee), &sim).await.status, 200);
}

#[tokio::test]
async fn invalid_requests_do_not_consume_faults() {
    let sim = start(SimConfig::default()).await;
    sim.inject("15700000004", Fault::Throttle, 1);
    send(&DialReq::post("15700000004").set("AnswerMode", "7"), &sim)
        .await
        .assert_error(400, "InvalidParameter.AnswerMode");
    send(&DialReq::post("15700000004"), &sim)
        .await
        .assert_error(400, "Throttling.User");
}

#[tokio::test]
async fn slow_fault_executes_the_dial_then_outlasts_the_client() {
    let config = SimConfig {
        slow_delay: Duration::from_secs(3),
        ..SimConfig::default()
    };
    let sim = start(config).await;
    sim.inject("15700000005", Fault::Slow, 1);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = DialReq::post("15700000005")
        .send(&sim.endpoint(), &client)
        .await
        .err()
        .expect("the client should time out");
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(sim.dial_count(), 1);
}

#[tokio::test]
async fn slow_fault_answers_after_the_delay() {
    let config = SimConfig {
        slow_delay: Duration::from_millis(200),
        ..SimConfig::default()
    };
    let sim = start(config).await;
    sim.inject("15700000006", Fault::Slow, 1);
    let started = std::time::Instant::now();
    let answer = send(&DialReq::post("15700000006"), &sim).await;
    assert_eq!(answer.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(
        sim.dials()[0].task_id,
        answer.body["TaskId"].as_str().unwrap()
    );
}

#[tokio::test]
async fn reset_after_execute_drops_the_connection_and_a_replay_proves_arrival() {
    let sim = start(SimConfig::default()).await;
    sim.inject("15700000007", Fault::ResetAfterExecute, 1);
    let req = DialReq::post("15700000007");
    let error = req
        .send(&sim.endpoint(), &http())
        .await
        .err()
        .expect("the connection should be dropped");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(sim.dial_count(), 1);
    // The worker's ambiguity check: replaying the identical signed request says it arrived.
    send(&req, &sim)
        .await
        .assert_error(400, "SignatureNonceUsed");
    assert_eq!(sim.dial_count(), 1);
}

#[tokio::test]
async fn latency_delays_the_answer_and_the_dial_completes_without_the_client() {
    let config = SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    };
    let sim = start(config).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let error = DialReq::post("15700000008")
        .send(&sim.endpoint(), &impatient)
        .await
        .err()
        .expect("the client should time out");
    assert!(error.is_timeout(), "{error:?}");
    // The call goes on even though nobody waits for the answer.
    for _ in 0..100 {
        if sim.dial_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dial = &sim.dials()[0];
    let took = dial.ended_at.duration_since(dial.started_at);
    assert!(took >= SignedDuration::from_millis(300), "{took:?}");

    let answer = send(&DialReq::post("15700000008"), &sim).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn task_ids_are_unique_over_many_concurrent_dials() {
    let sim = start(SimConfig::default()).await;
    let client = http();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let endpoint = sim.endpoint();
        let client = client.clone();
        tasks.spawn(async move {
            let req = DialReq::post(&format!("1570000{i:04}"));
            let answer = req.send(&endpoint, &client).await.unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
            answer.body["TaskId"].as_str().unwrap().to_owned()
        });
    }
    let task_ids: HashSet<String> = tasks.join_all().await.into_iter().collect();
    assert_eq!(task_ids.len(), 200);
    let logged: HashSet<String> = sim.dials().into_iter().map(|d| d.task_id).collect();
    assert_eq!(logged, task_ids);
}

#[tokio::test]
async fn dial_log_file_gets_one_json_line_per_dial() {
    let path = std::env::temp_dir().join(format!("sim-dials-{}.jsonl", uuid::Uuid::new_v4()));
    let config = SimConfig {
        dial_log: Some(path.clone()),
        ..SimConfig::default()
    };
    let sim = start(config).await;
    for callee in ["15700000010", "15700000011", "15700000012"] {
        assert_eq!(send(&DialReq::post(callee), &sim).await.status, 200);
    }
    sim.flush_dial_log().await;
    let flushed = std::fs::read_to_string(&path).unwrap();
    assert_eq!(flushed.lines().count(), 3);

    sim.inject("15700000013", Fault::ResetAfterExecute, 1);
    let _ = DialReq::post("15700000013")
        .send(&sim.endpoint(), &http())
        .await;
    let in_memory = sim.dials();
    sim.shutdown().await;

    let written: Vec<DialRecord> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(written, in_memory);
    assert_eq!(written.len(), 4);
}

#[tokio::test]
async fn control_plane_over_http() {
    let sim = start(SimConfig::default()).await;
    let client = http();
    let injected = client
        .post(format!("{}/__sim/faults", sim.endpoint()))
        .body(r#"{"callee":"15700000020","fault":"throttle","times":2}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(injected.status(), 200);
    let default_times = client
        .post(format!("{}/__sim/faults", sim.endpoint()))
        .body(r#"{"callee":"15700000020","fault":"internal_error"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(default_times.status(), 200);
    let bad = client
        .post(format!("{}/__sim/faults", sim.endpoint()))
        .body(r#"{"callee":"1","fault":"meteor_strike"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    for _ in 0..2 {
        send(&DialReq::post("15700000020"), &sim)
            .await
            .assert_error(400, "Throttling.User");
    }
    send(&DialReq::post("15700000020"), &sim)
        .await
        .assert_error(500, "InternalError");
    let ok = send(&DialReq::post("15700000020"), &sim).await;
    assert_eq!(ok.status, 200);

    let dials = client
        .get(format!("{}/__sim/dials", sim.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(dials.status(), 200);
    let dials: Vec<DialRecord> = serde_json::from_str(&dials.text().await.unwrap()).unwrap();
    assert_eq!(dials.len(), 1);
    assert_eq!(dials[0].callee, "15700000020");
    assert_eq!(dials[0].task_id, ok.body["TaskId"].as_str().unwrap());
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let sim = start(SimConfig::default()).await;
    let client = http();
    let base = sim.endpoint();

    let answer = Answer::read(client.get(format!("{base}/?a=%ZZ")).send().await.unwrap())
        .await
        .unwrap();
    answer.assert_error(400, "InvalidParameter");

    let post = |body: Vec<u8>, content_type: &'static str| {
        client
            .post(format!("{base}/"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let form = "application/x-www-form-urlencoded";
    let bad_utf8 = Answer::read(post(b"Callee=%FF%FE".to_vec(), form).await.unwrap())
        .await
        .unwrap();
    bad_utf8.assert_error(400, "InvalidParameter");
    let duplicate = Answer::read(post(b"a=1&a=2".to_vec(), form).await.unwrap())
        .await
        .unwrap();
    duplicate.assert_error(400, "InvalidParameter");
    let json = Answer::read(post(b"{}".to_vec(), "application/json").await.unwrap())
        .await
        .unwrap();
    json.assert_error(400, "InvalidParameter");
    let huge = Answer::read(post(vec![b'a'; 100 * 1024], form).await.unwrap())
        .await
        .unwrap();
    huge.assert_error(413, "InvalidParameter.BodyTooLarge");

    let put = Answer::read(client.put(format!("{base}/")).send().await.unwrap())
        .await
        .unwrap();
    put.assert_error(405, "UnsupportedHTTPMethod");
    let elsewhere = Answer::read(client.get(format!("{base}/nope")).send().await.unwrap())
        .await
        .unwrap();
    elsewhere.assert_error(404, "InvalidAction.NotFound");

    // Still serving after all that.
    assert_eq!(send(&DialReq::post("1"), &sim).await.status, 200);
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    assert_eq!(sim.endpoint(), format!("http://127.0.0.1:{}", addr.port()));
    sim.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let sim = start(SimConfig::default()).await;
    let addr = sim.addr();
    drop(sim);
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "server still accepting after drop");
}

#[tokio::test]
async fn shutdown_aborts_connections_held_by_a_slow_fault() {
    let sim = start(SimConfig::default()).await;
    sim.inject("15700000030", Fault::Slow, 1);
    let req = DialReq::post("15700000030");
    let endpoint = sim.endpoint();
    let pending = tokio::spawn(async move { req.send(&endpoint, &http()).await.is_err() });
    for _ in 0..100 {
        if sim.dial_count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), sim.shutdown())
        .await
        .unwrap();
    assert!(
        pending.await.unwrap(),
        "the slow request should have been cut off"
    );
}

// --- Call records: ListCallDetailRecords and ListCallEventDetailByContactId ---

const INSTANCE: &str = "d278629c-c687-4aa3-b044-4fe9b012e7ef";

impl DialReq {
    /// A POST of `action` with `business` as its own parameters (common ones as for `DialEx`).
    fn action(action: &str, business: &[(&str, &str)]) -> Self {
        let mut req = Self::post("1").set("Action", action);
        req.business = owned(business);
        req
    }

    /// `ListCallDetailRecords` for [`INSTANCE`], first page of 10, plus `extra` parameters.
    fn list(extra: &[(&str, &str)]) -> Self {
        let mut req = Self::action(
            "ListCallDetailRecords",
            &[
                ("InstanceId", INSTANCE),
                ("PageNumber", "1"),
                ("PageSize", "10"),
            ],
        );
        for (key, value) in extra {
            req = req.set(key, value);
        }
        req
    }

    /// `ListCallEventDetailByContactId` for `contact_id` in [`INSTANCE`].
    fn events(contact_id: &str) -> Self {
        Self::action(
            "ListCallEventDetailByContactId",
            &[("InstanceId", INSTANCE), ("ContactId", contact_id)],
        )
    }
}

impl Answer {
    /// Asserts a success answer of the common envelope, the request id in body and header.
    fn assert_success(&self) {
        assert_eq!((self.status, self.code()), (200, "OK"), "{}", self.body);
        assert_eq!(self.body["Success"], true);
        assert_eq!(self.body["HttpStatusCode"], 200);
        assert_eq!(self.body["Message"], "");
        let request_id = self.body["RequestId"].as_str().unwrap();
        assert_eq!(request_id, request_id.to_uppercase());
        assert!(uuid::Uuid::parse_str(request_id).is_ok());
        assert_eq!(self.request_id.as_deref(), Some(request_id));
    }

    /// `CallDetailRecords.TotalCount` of a successful `ListCallDetailRecords`.
    fn total(&self) -> u64 {
        self.body["CallDetailRecords"]["TotalCount"]
            .as_u64()
            .unwrap()
    }

    /// The page of records of a successful `ListCallDetailRecords`.
    fn records(&self) -> Vec<Value> {
        self.assert_success();
        self.body["CallDetailRecords"]["List"]["CallDetailRecord"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn record(contact_id: &str, instance_id: &str, callee: &str, at_ms: i64) -> CallRecord {
    CallRecord {
        contact_id: contact_id.to_owned(),
        instance_id: instance_id.to_owned(),
        calling_number: "02285196281".to_owned(),
        called_number: callee.to_owned(),
        start_time: Timestamp::from_millisecond(at_ms).unwrap(),
        duration_s: 0,
        disposition: "NoAnswer".to_owned(),
        agent_names: String::new(),
        release_reason: "NoAnswer".to_owned(),
    }
}

fn with_record_delay(delay: Duration) -> SimConfig {
    SimConfig {
        call_record_delay: delay,
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn a_dials_record_appears_after_the_delay_beside_an_older_unrelated_one() {
    let sim = start(with_record_delay(Duration::from_millis(400))).await;
    let callee = "15700000100";
    let dialed = send(&DialReq::post(callee), &sim).await;
    assert_eq!(dialed.status, 200, "{}", dialed.body);
    let dialed_ms: i64 = dialed.body["TimeStamp"].as_str().unwrap().parse().unwrap();

    // At once only the older call is there: same numbers, ten minutes earlier, not answered.
    let early = send(&DialReq::list(&[("PhoneNumber", callee)]), &sim).await;
    let records = early.records();
    assert_eq!((early.total(), records.len()), (1, 1), "{}", early.body);
    let older = &records[0];
    assert_eq!(older["StartTime"], dialed_ms - 10 * 60 * 1000);
    assert_eq!(older["ContactDisposition"], "NoAnswer");
    assert_eq!(older["Duration"], 0);
    assert_eq!(older["CallingNumber"], "02285196281");
    assert_eq!(older["CalledNumber"], callee);
    assert_eq!(older["AgentNames"], "");
    assert_eq!(older["Agents"]["CallDetailAgent"], serde_json::json!([]));
    assert_eq!(sim.call_records().len(), 2);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = send(&DialReq::list(&[("PhoneNumber", callee)]), &sim).await;
    let records = later.records();
    assert_eq!(later.total(), 2, "{}", later.body);
    assert_eq!(later.body["CallDetailRecords"]["PageNumber"], 1);
    assert_eq!(later.body["CallDetailRecords"]["PageSize"], 10);
    let call = &records[0];
    let contact_id = call["ContactId"].as_str().unwrap();
    assert!(contact_id.starts_with("job-"), "{contact_id}");
    assert!(contact_id[4..].bytes().all(|b| b.is_ascii_digit()));
    assert_ne!(contact_id, records[1]["ContactId"].as_str().unwrap());
    let start = dialed_ms + 300;
    assert_eq!(
        call,
        &serde_json::json!({
            "ContactId": contact_id,
            "StartTime": start,
            "Duration": 37,
            "ContactType": "Outbound",
            "ContactDisposition": "Success",
            "CallingNumber": "02285196281",
            "CalledNumber": callee,
            "AgentNames": "agent01",
            "SkillGroupNames": "",
            "InstanceId": INSTANCE,
            "Agents": {"CallDetailAgent": [{
                "AgentId": "agent01", "AgentName": "agent01", "SkillGroupName": "",
                "QueueTime": 0, "RingTime": 4, "StartTime": start, "TalkTime": 37,
                "HoldTime": 0, "WorkTime": 0,
            }]},
        })
    );
    assert_eq!(records[1], *older);

    // Only the first call to a number brings an older one along.
    assert_eq!(send(&DialReq::post(callee), &sim).await.status, 200);
    assert_eq!(sim.call_records().len(), 3);
}

#[tokio::test]
async fn skill_group_calls_name_the_group_and_no_agent() {
    let sim = start(with_record_delay(Duration::ZERO)).await;
    let req = DialReq::post("15700000101")
        .set("AnswerMode", "2")
        .set("RoutPoint", "queue-1");
    assert_eq!(send(&req, &sim).await.status, 200);
    let answer = send(&DialReq::list(&[("ContactDisposition", "Success")]), &sim).await;
    let records = answer.records();
    assert_eq!(records.len(), 1, "{}", answer.body);
    assert_eq!(records[0]["SkillGroupNames"], "queue-1");
    assert_eq!(records[0]["AgentNames"], "");
    assert_eq!(
        records[0]["Agents"]["CallDetailAgent"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn record_filters_paging_and_total_count() {
    let sim = start(with_record_delay(Duration::ZERO)).await;
    let t = 1_765_000_000_000;
    for (id, at) in [("c-1", t), ("c-2", t + 1000), ("c-3", t + 2000)] {
        sim.add_call_record(record(id, INSTANCE, "15700000110", at));
    }
    sim.add_call_record(record("c-4", INSTANCE, "15700000111", t + 3000));
    sim.add_call_record(record("c-5", "another-instance", "15700000110", t + 500));
    let mut inbound_caller = record("c-6", INSTANCE, "02285196281", t + 4000);
    inbound_caller.calling_number = "15700000110".to_owned();
    inbound_caller.disposition = "Success".to_owned();
    sim.add_call_record(inbound_caller);

    let ids = |answer: &Answer| -> Vec<String> {
        answer
            .records()
            .iter()
            .map(|r| r["ContactId"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = send(&DialReq::list(&[]), &sim).await;
    assert_eq!(ids(&all), ["c-6", "c-4", "c-3", "c-2", "c-1"]);
    assert_eq!(all.total(), 5);

    // Either number matches; other instances never do.
    let number = send(&DialReq::list(&[("PhoneNumber", "15700000110")]), &sim).await;
    assert_eq!(ids(&number), ["c-6", "c-3", "c-2", "c-1"]);

    let (from, to) = ((t + 1000).to_string(), (t + 2000).to_string());
    let window = send(
        &DialReq::list(&[
            ("PhoneNumber", "15700000110"),
            ("StartTime", &from),
            ("StopTime", &to),
        ]),
        &sim,
    )
    .await;
    assert_eq!(ids(&window), ["c-3", "c-2"]);
    assert_eq!(window.total(), 2);
    let from_only = send(&DialReq::list(&[("StartTime", &to)]), &sim).await;
    assert_eq!(ids(&from_only), ["c-6", "c-4", "c-3"]);

    let page_2 = send(
        &DialReq::list(&[
            ("PhoneNumber", "15700000110"),
            ("PageSize", "3"),
            ("PageNumber", "2"),
        ]),
        &sim,
    )
    .await;
    assert_eq!(ids(&page_2), ["c-1"]);
    assert_eq!(page_2.total(), 4);
    assert_eq!(page_2.body["CallDetailRecords"]["PageNumber"], 2);
    assert_eq!(page_2.body["CallDetailRecords"]["PageSize"], 3);
    let past_the_end = send(&DialReq::list(&[("PageNumber", "9")]), &sim).await;
    assert_eq!((ids(&past_the_end).len(), past_the_end.total()), (0, 5));

    let answered = send(&DialReq::list(&[("ContactDisposition", "Success")]), &sim).await;
    assert_eq!(ids(&answered), ["c-6"]);
    let outbound = send(&DialReq::list(&[("ContactType", "Outbound")]), &sim).await;
    assert_eq!(outbound.total(), 5);
    let inbound = send(&DialReq::list(&[("ContactType", "Inbound")]), &sim).await;
    assert_eq!(inbound.total(), 0);

    let other = send(&DialReq::list(&[("InstanceId", "another-instance")]), &sim).await;
    assert_eq!(ids(&other), ["c-5"]);
}

#[tokio::test]
async fn a_scripted_outcome_appears_after_its_own_delay_and_sticks() {
    let sim = start(with_record_delay(Duration::from_secs(60))).await;
    let callee = "15700000120";
    sim.script_call(
        callee,
        CallScript {
            appears_after: Some(Duration::from_millis(300)),
            ..CallScript::disposition("NoAnswer")
        },
    );
    assert_eq!(send(&DialReq::post(callee), &sim).await.status, 200);
    let unanswered = [("PhoneNumber", callee), ("ContactDisposition", "NoAnswer")];
    // The older unrelated call only.
    assert_eq!(send(&DialReq::list(&unanswered), &sim).await.total(), 1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let answer = send(&DialReq::list(&unanswered), &sim).await;
    let records = answer.records();
    assert_eq!(records.len(), 2, "{}", answer.body);
    let call = &records[0];
    assert_eq!(call["Duration"], 0);
    // An agent call nobody answered names no agent.
    assert_eq!(call["AgentNames"], "");
    assert_eq!(call["Agents"]["CallDetailAgent"], serde_json::json!([]));

    let events = send(&DialReq::events(call["ContactId"].as_str().unwrap()), &sim).await;
    events.assert_success();
    assert_eq!(events.body["Data"]["ReleaseReason"], "NoAnswer");
    assert_eq!(events.body["Data"]["ReleaseAgent"], "");

    // Sticky: the next call to the number turns out the same, until the script is replaced.
    assert_eq!(send(&DialReq::post(callee), &sim).await.status, 200);
    sim.script_call(
        callee,
        CallScript {
            release_reason: Some("UserBusy".to_owned()),
            ..CallScript::disposition("Busy")
        },
    );
    assert_eq!(send(&DialReq::post(callee), &sim).await.status, 200);
    let outcomes: Vec<(String, u32, String)> = sim
        .call_records()
        .into_iter()
        .map(|r| (r.disposition, r.duration_s, r.release_reason))
        .collect();
    let outcome = |d: &str, s: u32, r: &str| (d.to_owned(), s, r.to_owned());
    assert_eq!(
        outcomes,
        [
            outcome("NoAnswer", 0, "NoAnswer"),
            outcome("NoAnswer", 0, "NoAnswer"),
            outcome("NoAnswer", 0, "NoAnswer"),
            outcome("Busy", 0, "UserBusy"),
        ]
    );
    assert_eq!(CallScript::default(), CallScript::disposition("Success"));
    assert_eq!(CallScript::default().duration_s, 37);
}

#[tokio::test]
async fn an_unrecorded_call_never_appears() {
    let sim = start(with_record_delay(Duration::ZERO)).await;
    let callee = "15700000130";
    sim.script_call(
        callee,
        CallScript {
            recorded: false,
            ..CallScript::default()
        },
    );
    assert_eq!(send(&DialReq::post(callee), &sim).await.status, 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = send(&DialReq::list(&[("PhoneNumber", callee)]), &sim).await;
    let records = answer.records();
    assert_eq!(records.len(), 1, "{}", answer.body);
    assert_eq!(records[0]["ContactDisposition"], "NoAnswer");
    assert_eq!(sim.call_records().len(), 1);
    assert_eq!(sim.dial_count(), 1);
}

#[tokio::test]
async fn record_queries_are_authenticated_like_dialex() {
    let sim = start(SimConfig::default()).await;
    let mut forged = DialReq::list(&[]);
    forged.secret = "not-the-secret".to_owned();
    let answer = send(&forged, &sim).await;
    answer.assert_error(400, "SignatureDoesNotMatch");
    let expected = format!("server string to sign is:{}", forged.string_to_sign());
    assert!(
        answer.message().ends_with(&expected),
        "{}",
        answer.message()
    );
    assert!(answer.request_id.is_some());

    let query = DialReq::list(&[]);
    send(&query, &sim).await.assert_success();
    send(&query, &sim)
        .await
        .assert_error(400, "SignatureNonceUsed");
    let events = DialReq::events("job-0");
    send(&events, &sim)
        .await
        .assert_error(404, "ContactNotExist");
    send(&events, &sim)
        .await
        .assert_error(400, "SignatureNonceUsed");
    send(&DialReq::list(&[]).remove("Timestamp"), &sim)
        .await
        .assert_error(400, "MissingTimestamp");

    // Only the authenticated, valid query is logged.
    let queries = sim.record_queries();
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0].instance_id, INSTANCE);
    assert!(!queries[0].throttled);

    // Down means down for every action.
    sim.set_down(true);
    send(&DialReq::list(&[]), &sim)
        .await
        .assert_error(503, "ServiceUnavailable");
    assert_eq!(sim.record_queries().len(), 1);
}

#[tokio::test]
async fn record_query_parameters_are_validated() {
    let sim = start(SimConfig::default()).await;
    let answer = send(&DialReq::list(&[]).remove("PageSize"), &sim).await;
    answer.assert_error(400, "MissingPageSize");
    assert_eq!(answer.message(), "PageSize is mandatory for this action.");
    send(&DialReq::list(&[]).remove("PageNumber"), &sim)
        .await
        .assert_error(400, "MissingPageNumber");
    send(&DialReq::list(&[]).remove("InstanceId"), &sim)
        .await
        .assert_error(400, "MissingInstanceId");
    for (key, value, code) in [
        ("PageSize", "500", "InvalidParameter.PageSize"),
        ("PageSize", "0", "InvalidParameter.PageSize"),
        ("PageSize", "ten", "InvalidParameter.PageSize"),
        ("PageNumber", "0", "InvalidParameter.PageNumber"),
        ("PageNumber", "-1", "InvalidParameter.PageNumber"),
        ("StartTime", "2025-12-06", "InvalidParameter.StartTime"),
        ("StopTime", "soon", "InvalidParameter.StopTime"),
        ("Version", "2019-10-30", "InvalidVersion"),
    ] {
        send(&DialReq::list(&[(key, value)]), &sim)
            .await
            .assert_error(400, code);
    }
    send(&DialReq::list(&[("PageSize", "100")]), &sim)
        .await
        .assert_success();
    send(&DialReq::list(&[]).remove("Version"), &sim)
        .await
        .assert_error(400, "MissingVersion");
    send(&DialReq::events("job-1").remove("ContactId"), &sim)
        .await
        .assert_error(400, "MissingContactId");
    send(&DialReq::action("ListCallDetailRecord", &[]), &sim)
        .await
        .assert_error(404, "InvalidAction.NotFound");
    send(&DialReq::action("StartBack2BackCall", &[]), &sim)
        .await
        .assert_error(404, "InvalidAction.NotFound");
    assert_eq!(sim.record_queries().len(), 1);
}

#[tokio::test]
async fn the_pace_limit_throttles_queries_above_the_rate_per_instance() {
    let config = SimConfig {
        record_queries_per_second: 3,
        ..SimConfig::default()
    };
    let sim = start(config).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = send(&DialReq::list(&[]), &sim).await;
        if answer.status != 200 {
            answer.assert_error(400, "Throttling.User");
        }
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [200, 200, 200, 400, 400]);
    // Another instance has its own allowance.
    send(&DialReq::list(&[("InstanceId", "another-instance")]), &sim)
        .await
        .assert_success();
    let queries = sim.record_queries();
    let throttled: Vec<bool> = queries.iter().map(|q| q.throttled).collect();
    assert_eq!(throttled, [false, false, false, true, true, false]);
    assert_eq!(queries[5].instance_id, "another-instance");
    assert!(queries.windows(2).all(|w| w[0].at <= w[1].at));

    // A second later the instance is answered again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send(&DialReq::list(&[]), &sim).await.assert_success();
}

#[tokio::test]
async fn injected_query_faults_answer_the_next_queries() {
    let sim = start(SimConfig::default()).await;
    sim.inject_query_fault(Fault::Throttle, 1);
    sim.inject_query_fault(Fault::Unavailable, 1);
    sim.inject_query_fault(Fault::InternalError, 2);
    // A dial is not a query: the faults stay queued.
    assert_eq!(send(&DialReq::post("15700000140"), &sim).await.status, 200);
    // Nor is an invalid query.
    send(&DialReq::list(&[("PageSize", "500")]), &sim)
        .await
        .assert_error(400, "InvalidParameter.PageSize");

    send(&DialReq::list(&[]), &sim)
        .await
        .assert_error(400, "Throttling.User");
    send(&DialReq::list(&[]), &sim)
        .await
        .assert_error(503, "ServiceUnavailable");
    for _ in 0..2 {
        send(&DialReq::list(&[]), &sim)
            .await
            .assert_error(500, "InternalError");
    }
    send(&DialReq::list(&[]), &sim).await.assert_success();
    let queries = sim.record_queries();
    assert_eq!(queries.len(), 5);
    assert!(queries.iter().all(|q| !q.throttled));
}

#[tokio::test]
async fn contact_events_for_known_and_unknown_contacts() {
    let sim = start(with_record_delay(Duration::ZERO)).await;
    let callee = "15700000150";
    let dialed = send(&DialReq::post(callee), &sim).await;
    assert_eq!(dialed.status, 200);
    let call = sim
        .call_records()
        .into_iter()
        .find(|r| r.called_number == callee && r.disposition == "Success")
        .unwrap();
    let dialed_ms: i64 = dialed.body["TimeStamp"].as_str().unwrap().parse().unwrap();
    assert_eq!(call.start_time.as_millisecond(), dialed_ms + 300);

    let answer = send(&DialReq::events(&call.contact_id), &sim).await;
    answer.assert_success();
    let start = (dialed_ms + 300).to_string();
    let released = (dialed_ms + 300 + 37_000).to_string();
    assert_eq!(
        answer.body["Data"],
        serde_json::json!({
            "Caller": "02285196281",
            "Callee": callee,
            "CallType": "Outbound",
            "StartTime": start,
            "ReleaseAgent": "agent01",
            "ReleaseReason": "NormalClearing",
            "Events": {"CallEventDetail": [
                {"TimeStamp": start, "Event": "Dialing", "AgentName": "", "Status": "",
                 "CallMode": "", "Duration": 0},
                {"TimeStamp": released, "Event": "Released", "AgentName": "", "Status": "",
                 "CallMode": "", "Duration": 37},
            ]},
        })
    );

    let unknown = send(&DialReq::events("job-does-not-exist"), &sim).await;
    unknown.assert_error(404, "ContactNotExist");
    assert_eq!(unknown.message(), "The specified contact does not exist.");
    send(
        &DialReq::events(&call.contact_id).set("InstanceId", "another-instance"),
        &sim,
    )
    .await
    .assert_error(404, "ContactNotExist");

    // A contact whose record is not visible yet is not known yet either.
    sim.script_call(
        "15700000151",
        CallScript {
            appears_after: Some(Duration::from_secs(60)),
            ..CallScript::default()
        },
    );
    assert_eq!(send(&DialReq::post("15700000151"), &sim).await.status, 200);
    let pending = sim
        .call_records()
        .into_iter()
        .find(|r| r.called_number == "15700000151" && r.disposition == "Success")
        .unwrap();
    send(&DialReq::events(&pending.contact_id), &sim)
        .await
        .assert_error(404, "ContactNotExist");
}

#[tokio::test]
async fn contact_ids_are_unique_across_simulators() {
    let one = start(with_record_delay(Duration::ZERO)).await;
    let two = start(with_record_delay(Duration::ZERO)).await;
    for sim in [&one, &two] {
        assert_eq!(send(&DialReq::post("15700000160"), sim).await.status, 200);
    }
    let ids: HashSet<String> = one
        .call_records()
        .into_iter()
        .chain(two.call_records())
        .map(|r| r.contact_id)
        .collect();
    assert_eq!(ids.len(), 4);
}

#[tokio::test]
async fn a_call_that_takes_time_starts_after_its_dial_returns() {
    let config = SimConfig {
        latency: Duration::from_millis(100),
        call_record_delay: Duration::ZERO,
        ..SimConfig::default()
    };
    let sim = start(config).await;
    let dialed = send(&DialReq::post("15700000170"), &sim).await;
    assert_eq!(dialed.status, 200);
    let dialed_ms: i64 = dialed.body["TimeStamp"].as_str().unwrap().parse().unwrap();
    let answer = send(&DialReq::list(&[("ContactDisposition", "Success")]), &sim).await;
    let records = answer.records();
    assert_eq!(records.len(), 1, "{}", answer.body);
    assert_eq!(records[0]["StartTime"], dialed_ms + 300);
}
