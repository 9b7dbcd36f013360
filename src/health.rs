//! The worker's operational HTTP endpoint: liveness, readiness and metrics.
//!
//! - `/healthz` is the Kubernetes liveness probe: it answers `200` whenever the process and its
//!   runtime can answer at all, and never asks RabbitMQ, Redis or CCC, so an outage elsewhere
//!   does not get a healthy worker restarted.
//! - `/readyz` is the readiness probe: `503` while the worker is not taking requests (not yet
//!   consuming, paused by a systemic error or a store outage, or shutting down), with the reason.
//! - `/metrics` is the Prometheus scrape target, in OpenMetrics text.
//!
//! [`Health`] is the shared state readiness is computed from; the stages set it, [`serve`]
//! reads it. Every route answers `GET` and `HEAD`; other methods get `405`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A client that connects and then sends nothing is disconnected after this long, so idle or
/// half-open probe connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once: kubelet's probes and a few scrapers need a handful.
const MAX_CONNECTIONS: usize = 32;

/// The longest one connection is kept, keep-alive included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const OPENMETRICS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");

type Body = Full<Bytes>;

/// What readiness depends on; shared by the worker's stages.
///
/// A fresh value is not ready: nothing is consuming yet.
#[derive(Debug, Default)]
pub struct Health {
    consuming: AtomicBool,
    shutting_down: AtomicBool,
    paused: Mutex<Option<String>>,
}

impl Health {
    /// Records whether the consumer is attached to the request queue.
    pub fn set_consuming(&self, consuming: bool) {
        // Each flag stands alone and publishes no other data: no ordering is needed between them.
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// `Some(reason)`: paused by a systemic error (e.g. "CCC refuses the worker:
    /// SignatureDoesNotMatch") or a store outage; `None`: no longer paused.
    pub fn set_paused(&self, reason: Option<String>) {
        // A panic elsewhere while holding the lock leaves a plain `Option` behind, still valid.
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// Marks the worker as shutting down. Sticky: it is never ready again.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Ok when ready; Err(the reason, a short human sentence) when not.
    ///
    /// Shutting down outranks a pause, which outranks not consuming: the most lasting cause is
    /// the one worth reporting.
    pub fn readiness(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".to_owned());
        }
        if let Some(reason) = &*self.paused.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(reason.clone());
        }
        if !self.consuming.load(Ordering::Relaxed) {
            return Err("not consuming".to_owned());
        }
        Ok(())
    }
}

/// Binds `listen` and serves `metrics` and `health` there in the background until
/// `shutdown`; returns the bound address (useful with port 0).
pub async fn start(
    listen: std::net::SocketAddr,
    metrics: &crate::metrics::Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    tokio::spawn(serve(listener, Arc::new(registry), health, shutdown));
    Ok(addr)
}

/// Serves /healthz, /readyz and /metrics on `listener` until `shutdown` is cancelled.
///
/// Each connection runs in its own task; on shutdown the listener is closed and open
/// connections are dropped, since a probe in flight has nothing worth finishing.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "health endpoint listening");
    }
    crate::accept::accept_until(
        listener,
        shutdown,
        "health endpoint",
        MAX_CONNECTIONS,
        |stream| {
            let served = serve_connection(stream, Arc::clone(&registry), Arc::clone(&health));
            // Probes and scrapes are short: a connection kept open longer is dropped, so idle
            // keep-alive connections cannot hold the few places there are.
            async move {
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
            }
        },
    )
    .await;
}

async fn serve_connection(stream: TcpStream, registry: Arc<Registry>, health: Arc<Health>) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = route(&request, &registry, &health);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "health endpoint connection ended with an error");
    }
}

/// Answers one request. `HEAD` is answered like `GET`; hyper leaves the body out.
fn route(request: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Body> {
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        _ => metrics(registry),
    }
}

fn metrics(registry: &Registry) -> Response<Body> {
    let mut encoded = String::new();
    match prometheus_client::encoding::text::encode(&mut encoded, registry) {
        Ok(()) => {
            let mut response = Response::new(Full::new(Bytes::from(encoded)));
            response.headers_mut().insert(CONTENT_TYPE, OPENMETRICS);
            response
        }
        Err(error) => {
            tracing::warn!(%error, "encoding metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n".to_owned(),
            )
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, TEXT);
    response
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use reqwest::StatusCode;
    use tokio::task::JoinHandle;

    use super::*;

    /// A running endpoint on a free loopback port; stops when dropped.
    struct Endpoint {
        base: String,
        health: Arc<Health>,
        shutdown: CancellationToken,
        server: JoinHandle<()>,
    }

    impl Endpoint {
        async fn start(registry: Registry) -> Endpoint {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let base = format!("http://{}", listener.local_addr().expect("local addr"));
            let health = Arc::new(Health::default());
            let shutdown = CancellationToken::new();
            let server = tokio::spawn(serve(
                listener,
                Arc::new(registry),
                Arc::clone(&health),
                shutdown.clone(),
            ));
            Endpoint {
                base,
                health,
                shutdown,
                server,
            }
        }

        async fn get(&self, path: &str) -> (StatusCode, String) {
            let (status, _, body) = self.get_typed(path).await;
            (status, body)
        }

        /// As [`Endpoint::get`], with the answer's `Content-Type`.
        async fn get_typed(&self, path: &str) -> (StatusCode, Option<String>, String) {
            let response = reqwest::Client::new()
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .expect("request");
            let status = response.status();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            (status, content_type, response.text().await.expect("body"))
        }
    }

    impl Drop for Endpoint {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    #[tokio::test]
    async fn healthz_answers_ok_even_when_not_ready() {
        let endpoint = Endpoint::start(Registry::default()).await;
        endpoint.health.set_shutting_down();

        let (status, content_type, body) = endpoint.get_typed("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(body, "ok\n");
    }

    #[tokio::test]
    async fn readyz_follows_consuming_pause_and_shutdown() {
        let endpoint = Endpoint::start(Registry::default()).await;
        let health = &endpoint.health;

        assert_eq!(
            endpoint.get("/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: not consuming\n".to_owned()
            )
        );

        health.set_consuming(true);
        assert_eq!(
            endpoint.get("/readyz").await,
            (StatusCode::OK, "ready\n".to_owned())
        );

        health.set_paused(Some(
            "CCC refuses the worker: SignatureDoesNotMatch".to_owned(),
        ));
        assert_eq!(
            endpoint.get("/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: CCC refuses the worker: SignatureDoesNotMatch\n".to_owned()
            )
        );

        health.set_paused(None);
        assert_eq!(
            endpoint.get("/readyz").await,
            (StatusCode::OK, "ready\n".to_owned())
        );

        health.set_shutting_down();
        health.set_consuming(true);
        assert_eq!(
            endpoint.get("/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: shutting down\n".to_owned()
            )
        );
    }

    #[test]
    fn fresh_health_is_not_ready_and_shutdown_outranks_pause() {
        let health = Health::default();
        assert_eq!(health.readiness(), Err("not consuming".to_owned()));

        health.set_paused(Some("store outage".to_owned()));
        assert_eq!(health.readiness(), Err("store outage".to_owned()));

        health.set_shutting_down();
        assert_eq!(health.readiness(), Err("shutting down".to_owned()));
    }

    #[tokio::test]
    async fn metrics_expose_registered_counters_as_openmetrics() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register(
            "probe_hits",
            "Times the test hit the probe",
            counter.clone(),
        );
        counter.inc();
        let endpoint = Endpoint::start(registry).await;

        let (status, content_type, body) = endpoint.get_typed("/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            content_type.as_deref(),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(
            body.lines().any(|line| line == "probe_hits_total 1"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn head_is_answered_like_get_without_a_body() {
        let endpoint = Endpoint::start(Registry::default()).await;

        let response = reqwest::Client::new()
            .head(format!("{}/readyz", endpoint.base))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.text().await.expect("body"), "");
    }

    #[tokio::test]
    async fn unknown_path_is_not_found() {
        let endpoint = Endpoint::start(Registry::default()).await;

        assert_eq!(endpoint.get("/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn other_methods_are_refused_with_allow() {
        let endpoint = Endpoint::start(Registry::default()).await;

        let response = reqwest::Client::new()
            .post(format!("{}/healthz", endpoint.base))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            response.headers().get(ALLOW).map(HeaderValue::as_bytes),
            Some(&b"GET, HEAD"[..])
        );
    }

    #[tokio::test]
    async fn shutdown_stops_serving_even_with_a_connection_open() {
        let mut endpoint = Endpoint::start(Registry::default()).await;
        // The client keeps its connection alive in its pool while shutdown comes.
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", endpoint.base);
        let response = client.get(&url).send().await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);

        endpoint.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), &mut endpoint.server)
            .await
            .expect("serve returns promptly")
            .expect("serve does not panic");

        assert!(reqwest::Client::new().get(&url).send().await.is_err());
    }
}
