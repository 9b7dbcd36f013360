//! Temporary credentials from STS through an OIDC token (RRSA on ACK), against the
//! simulator's STS, whose keys the gateway accepts only until they expire.

mod helpers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::{SimConfig, StsConfig};
use dialex_worker::credentials::{self, CredentialSource, Provider};
use dialex_worker::outcome::Status;
use helpers::{WAIT, callee, harness, request, settings};
use tokio::time::Instant;

/// The variables RRSA's webhook sets in a pod, pointing at the simulator's STS and at
/// `token_file`.
fn rrsa_provider(h: &Harness, role_arn: &str, token_file: &std::path::Path) -> Arc<dyn Provider> {
    let sts = StsConfig::default();
    let vars: HashMap<&str, String> = HashMap::from([
        ("ALIBABA_CLOUD_ROLE_ARN", role_arn.to_owned()),
        ("ALIBABA_CLOUD_OIDC_PROVIDER_ARN", sts.oidc_provider_arn),
        (
            "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            token_file.display().to_string(),
        ),
        ("ALIBABA_CLOUD_STS_ENDPOINT", h.simulator.sts_endpoint()),
    ]);
    credentials::from_vars(&|name: &str| vars.get(name).cloned()).expect("a complete RRSA set")
}

fn token_file() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dialex-rrsa-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join("token")
}

/// STS credentials that live 5 s, under 20 s of continuous load: refreshed well before they
/// expire, so no request meets `InvalidSecurityToken` and the worker never pauses. The token
/// file is rotated halfway, and the refreshes after that present the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_second_sts_credentials_under_load_never_expire_on_a_request() {
    const REQUESTS: usize = 1_000;
    let mut s = settings();
    // 1,000 requests over 20 s.
    s.limits.calls_per_second = 50.0;
    s.limits.burst = 5;
    let mut h = harness(s, SimConfig::default()).await;
    h.simulator.set_sts_lifetime(Duration::from_secs(5));
    h.simulator.accept_oidc_token("projected-token-1");
    let token_file = token_file();
    std::fs::write(&token_file, "projected-token-1\n").expect("token written");
    let role_arn = StsConfig::default().role_arn;
    let source = CredentialSource::start(rrsa_provider(&h, &role_arn, &token_file)).await;
    assert_eq!(source.provider(), "OIDC (RRSA)");
    h.start_worker(source).await.expect("worker starts");

    for i in 0..REQUESTS {
        h.publish_request(&request(&format!("sts-{i}"), &callee(i), "ivr"), None)
            .await
            .expect("request published");
    }
    let started = Instant::now();
    let (mut statuses, mut rotated, mut not_ready) = (HashMap::new(), false, 0);
    let mut last_probe = Instant::now();
    let mut done = 0;
    while done < REQUESTS {
        let Some(r) = h
            .next_outcome(Duration::from_millis(100))
            .await
            .expect("outcome stream")
        else {
            assert!(started.elapsed() < WAIT * 2, "{done} of {REQUESTS} done");
            continue;
        };
        if let Some(code) = &r.event.code {
            assert!(!code.starts_with("InvalidSecurityToken"), "{:?}", r.event);
        }
        if r.event.status != Status::Deferred {
            // A deferral (waiting for a pace slot) is not an outcome yet.
            done += 1;
            *statuses.entry(r.event.status).or_insert(0) += 1;
        }
        if last_probe.elapsed() >= Duration::from_millis(100) {
            last_probe = Instant::now();
            not_ready += usize::from(h.readyz().await.expect("/readyz").0 != 200);
        }
        if !rotated && started.elapsed() >= Duration::from_secs(10) {
            // The platform mounts a new token; the old one stays valid a while.
            std::fs::write(&token_file, "projected-token-2\n").expect("token rotated");
            h.simulator.accept_oidc_token("projected-token-2");
            rotated = true;
        }
    }
    let took = started.elapsed();
    assert_eq!(
        statuses.get(&Status::Dialed),
        Some(&REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(helpers::assert_dialed_at_most_once(&h), REQUESTS);
    assert_eq!(not_ready, 0, "/readyz answered 503 during the run");
    let issued = h.simulator.sts_issued();
    // One at start-up, then one every 2.8 to 3.3 s.
    let expected = (took.as_secs_f64() / 3.4) as usize;
    assert!(
        issued.len() > expected,
        "{} credentials issued in {took:?}",
        issued.len()
    );
    assert!(rotated, "the run ended before the token was rotated");
    let last = issued.last().expect("issued");
    assert_eq!(last.oidc_token.as_deref(), Some("projected-token-2"));
    println!(
        "{REQUESTS} requests dialed in {:.1} s with 5 s STS credentials: {} issued, /readyz never 503",
        took.as_secs_f64(),
        issued.len()
    );
    h.cleanup().await.expect("clean up");
}

/// A role ARN that does not exist: the worker starts but stays paused, and `/readyz` says
/// what STS answered and what to check; nothing is dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_role_arn_pauses_the_worker_with_the_reason() {
    let mut h = harness(settings(), SimConfig::default()).await;
    h.simulator.accept_oidc_token("projected-token");
    let token_file = token_file();
    std::fs::write(&token_file, "projected-token").expect("token written");
    let wrong = "acs:ram::1234567890123456:role/no-such-role";
    let source = CredentialSource::start(rrsa_provider(&h, wrong, &token_file)).await;
    h.start_worker(source).await.expect("worker starts");
    h.publish_request(&request("wrong-role", &callee(1), "ivr"), None)
        .await
        .expect("request published");
    let until = Instant::now() + WAIT;
    let body = loop {
        let (status, body) = h.readyz().await.expect("/readyz");
        if status == 503 && body.contains("EntityNotExist.Role") {
            break body;
        }
        assert!(
            Instant::now() < until,
            "never paused with the reason: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains("no credentials to sign with")
            && body.contains("ALIBABA_CLOUD_ROLE_ARN")
            && !body.contains("projected-token"),
        "{body}"
    );
    assert_eq!(h.simulator.dial_count(), 0);
    h.cleanup().await.expect("clean up");
}

/// The ECS instance's RAM role: credentials from the metadata service, asked with a session
/// token (the hardened mode, required here), refreshed before they expire while requests
/// keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instances_ram_role_comes_from_the_metadata_service_and_is_refreshed() {
    const REQUESTS: usize = 80;
    let mut s = settings();
    // 80 requests over 8 s, with 5 s credentials.
    s.limits.calls_per_second = 10.0;
    s.limits.burst = 1;
    let mut h = harness(s, SimConfig::default()).await;
    h.simulator.set_sts_lifetime(Duration::from_secs(5));
    let vars: HashMap<&str, String> = HashMap::from([
        ("ALIBABA_CLOUD_ECS_METADATA", "dialex-worker".to_owned()),
        (
            "ALIBABA_CLOUD_ECS_METADATA_ENDPOINT",
            h.simulator.metadata_endpoint(),
        ),
        ("ALIBABA_CLOUD_IMDSV1_DISABLED", "true".to_owned()),
    ]);
    let provider =
        credentials::from_vars(&|name: &str| vars.get(name).cloned()).expect("the ECS RAM role");
    assert_eq!(provider.name(), "ECS RAM role");
    h.start_worker(CredentialSource::start(provider).await)
        .await
        .expect("worker starts");
    for i in 0..REQUESTS {
        h.publish_request(&request(&format!("ecs-{i}"), &callee(i), "ivr"), None)
            .await
            .expect("request published");
    }
    let mut dialed = 0;
    while dialed < REQUESTS {
        let r = h
            .next_outcome(WAIT)
            .await
            .expect("outcome stream")
            .expect("an outcome");
        if r.event.status == Status::Deferred {
            // Waiting for a pace slot: not an outcome yet.
            continue;
        }
        assert_eq!(r.event.status, Status::Dialed, "{:?}", r.event);
        dialed += 1;
    }
    let issued = h.simulator.sts_issued();
    assert!(
        issued.len() >= 3 && issued.iter().all(|i| i.action == "ecs-metadata"),
        "{issued:?}"
    );
    assert_eq!(helpers::assert_dialed_at_most_once(&h), REQUESTS);
    h.cleanup().await.expect("clean up");
}

/// Writes an INI credentials file with one profile.
fn credentials_file(profile: &str, lines: &[(&str, &str)]) -> std::path::PathBuf {
    let path = token_file().with_file_name("credentials");
    let mut text = format!("[{profile}]\n");
    for (key, value) in lines {
        text.push_str(&format!("{key} = {value}\n"));
    }
    std::fs::write(&path, text).expect("credentials file written");
    path
}

/// Dials one request and returns its outcome's status.
async fn dial_one(h: &mut Harness, id: &str, index: usize) -> Status {
    h.publish_request(&request(id, &callee(index), "ivr"), None)
        .await
        .expect("request published");
    h.next_outcome(WAIT)
        .await
        .expect("outcome stream")
        .expect("an outcome")
        .event
        .status
}

/// An AccessKey profile of the credentials file, as a mounted Secret provides it: a key
/// changed in the file is used from the next look (within 10 s), without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_in_the_credentials_file_is_used_without_a_restart() {
    use dialex_devkit::simulator::{DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET};
    let mut h = harness(settings(), SimConfig::default()).await;
    let file = credentials_file(
        "worker",
        &[
            ("type", "access_key"),
            ("access_key_id", DEMO_ACCESS_KEY_ID),
            ("access_key_secret", DEMO_ACCESS_KEY_SECRET),
        ],
    );
    let vars: HashMap<&str, String> = HashMap::from([
        ("ALIBABA_CLOUD_CREDENTIALS_FILE", file.display().to_string()),
        ("ALIBABA_CLOUD_PROFILE", "worker".to_owned()),
    ]);
    let provider = credentials::from_vars(&|name: &str| vars.get(name).cloned())
        .expect("the credentials file");
    assert_eq!(provider.name(), "credentials file");
    h.start_worker(CredentialSource::start(provider).await)
        .await
        .expect("worker starts");
    assert_eq!(dial_one(&mut h, "file-1", 1).await, Status::Dialed);

    // The key is rotated: the account accepts only the new one, and the file holds it.
    h.simulator
        .set_credentials("rotated-key-id", "rotated-key-secret");
    h.simulator
        .set_credentials(DEMO_ACCESS_KEY_ID, "the old secret is no longer valid");
    std::fs::write(
        &file,
        "[worker]\ntype = access_key\naccess_key_id = rotated-key-id\naccess_key_secret = rotated-key-secret\n",
    )
    .expect("file rewritten");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(dial_one(&mut h, "file-2", 2).await, Status::Dialed);
    assert_eq!(h.simulator.dial_count(), 2);
    h.cleanup().await.expect("clean up");
}

/// A `ram_role_arn` profile: the worker assumes the role with the profile's AccessKey (STS
/// `AssumeRole`, signed) and dials with the temporary credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ram_role_profile_assumes_the_role_with_its_access_key() {
    use dialex_devkit::simulator::{DEMO_ACCESS_KEY_ID, DEMO_ACCESS_KEY_SECRET};
    let mut h = harness(settings(), SimConfig::default()).await;
    let role_arn = StsConfig::default().role_arn;
    let file = credentials_file(
        "default",
        &[
            ("type", "ram_role_arn"),
            ("access_key_id", DEMO_ACCESS_KEY_ID),
            ("access_key_secret", DEMO_ACCESS_KEY_SECRET),
            ("role_arn", &role_arn),
            ("role_session_name", "dialex-test"),
        ],
    );
    let vars: HashMap<&str, String> = HashMap::from([
        ("ALIBABA_CLOUD_CREDENTIALS_FILE", file.display().to_string()),
        ("ALIBABA_CLOUD_STS_ENDPOINT", h.simulator.sts_endpoint()),
    ]);
    let provider = credentials::from_vars(&|name: &str| vars.get(name).cloned())
        .expect("the credentials file");
    h.start_worker(CredentialSource::start(provider).await)
        .await
        .expect("worker starts");
    assert_eq!(dial_one(&mut h, "role-1", 1).await, Status::Dialed);
    let issued = h.simulator.sts_issued();
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0].action, "AssumeRole");
    h.cleanup().await.expect("clean up");
}

/// A credentials URI (a sidecar serving credentials): fetched at start-up and again before
/// its 5-second credentials expire, while requests keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credentials_uri_is_fetched_again_before_its_credentials_expire() {
    let mut h = harness(settings(), SimConfig::default()).await;
    h.simulator.set_sts_lifetime(Duration::from_secs(5));
    let vars: HashMap<&str, String> = HashMap::from([(
        "ALIBABA_CLOUD_CREDENTIALS_URI",
        h.simulator.credentials_uri(),
    )]);
    let provider =
        credentials::from_vars(&|name: &str| vars.get(name).cloned()).expect("the credentials URI");
    assert_eq!(provider.name(), "credentials URI");
    h.start_worker(CredentialSource::start(provider).await)
        .await
        .expect("worker starts");
    for i in 0..8 {
        assert_eq!(
            dial_one(&mut h, &format!("uri-{i}"), i).await,
            Status::Dialed
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let issued = h.simulator.sts_issued();
    assert!(
        issued.len() >= 3 && issued.iter().all(|i| i.action == "credentials-uri"),
        "{issued:?}"
    );
    h.cleanup().await.expect("clean up");
}
