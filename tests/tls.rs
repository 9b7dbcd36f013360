//! TLS to RabbitMQ (`amqps://`) and Redis (`rediss://`), against local TLS listeners whose
//! certificates come from a CA made for the test: the worker dials through them when pointed
//! at that CA, and refuses them when it is not.

mod helpers;

use std::net::SocketAddr;

use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::{Settings, StoreBackend};
use dialex_worker::store::redis::RedisStore;
use helpers::tls::TlsProxy;
use helpers::{assert_dialed_once, callee, only_outcome, request, settings_with, started};
use secrecy::SecretString;

const RABBITMQ: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 5672);
const REDIS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6379);

/// Settings that reach RabbitMQ and Redis only through `amqp` and `redis`, trusting their CA.
fn through(amqp: &TlsProxy, redis: &TlsProxy) -> Settings {
    let mut settings = settings_with(StoreBackend::Redis);
    settings.amqp.url =
        SecretString::from(format!("amqps://guest:guest@localhost:{}/%2f", amqp.port));
    settings.amqp.tls_ca_file = amqp.ca_file.clone();
    settings.store.url = SecretString::from(format!("rediss://localhost:{}/0", redis.port));
    settings.store.tls_ca_file = redis.ca_file.clone();
    // The shared do-not-call set uses the same Redis connection settings.
    settings.dnc.shared = true;
    settings.validate().expect("TLS settings are valid");
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pointed_at_the_ca_dials_through_tls_to_rabbitmq_and_redis() {
    let amqp = TlsProxy::start(RABBITMQ).await;
    let redis = TlsProxy::start(REDIS).await;
    let mut h = started(through(&amqp, &redis), SimConfig::default()).await;

    let event = only_outcome(&mut h, &request("tls-1", &callee(1), "ivr")).await;
    assert_dialed_once(&event, &h.simulator);
    // The harness's connection and the worker's two to RabbitMQ; the store, the limiter and
    // the do-not-call set to Redis (each checks with a plain connection first).
    assert!(
        amqp.handshakes() >= 3,
        "{} AMQP handshakes",
        amqp.handshakes()
    );
    assert!(
        redis.handshakes() >= 3,
        "{} Redis handshakes",
        redis.handshakes()
    );
    h.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_an_unknown_ca_is_refused_without_quoting_the_password() {
    let amqp = TlsProxy::start(RABBITMQ).await;
    let redis = TlsProxy::start(REDIS).await;
    let mut settings = through(&amqp, &redis);
    // The system's roots only: the test CA is not among them.
    settings.amqp.tls_ca_file = Default::default();
    settings.store.tls_ca_file = Default::default();
    settings.amqp.url = SecretString::from(format!(
        "amqps://guest:s3cret-pw@localhost:{}/%2f",
        amqp.port
    ));
    settings.store.url =
        SecretString::from(format!("rediss://:s3cret-pw@localhost:{}/0", redis.port));

    let amqp_error = dialex_worker::amqp::connect(&settings.amqp, "test: untrusted")
        .await
        .map(drop)
        .expect_err("an untrusted certificate is refused")
        .to_string();
    let redis_error = RedisStore::connect(&settings.store, "test".to_owned())
        .await
        .map(drop)
        .expect_err("an untrusted certificate is refused")
        .to_string();
    for error in [&amqp_error, &redis_error] {
        assert!(
            error.to_lowercase().contains("certificate") || error.contains("UnknownIssuer"),
            "{error}"
        );
        assert!(!error.contains("s3cret-pw"), "{error}");
    }
    // Nothing got past the handshake.
    assert_eq!(amqp.handshakes(), 0);
    assert_eq!(redis.handshakes(), 0);
}
