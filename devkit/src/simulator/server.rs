//! Sockets, connections, routing and shutdown of the simulator.
//!
//! One task accepts connections and owns a `JoinSet` of per-connection tasks, so shutting down
//! (explicitly, or by dropping the [`Simulator`]) stops accepting and aborts every open
//! connection, including ones parked in a [`Fault::Slow`] answer.
//!
//! Routes:
//!
//! - `GET /` and `POST /`: the gateway (`DialEx`, `ListCallDetailRecords`,
//!   `ListCallEventDetailByContactId`), see the simulator module's table of checks.
//! - `GET /__sim/dials`: every executed dial, as a JSON array of [`DialRecord`].
//! - `POST /__sim/faults`: `{"callee": "...", "fault": "throttle", "times": 1}` queues a fault
//!   (`times` defaults to 1); answers 200 with the accepted injection echoed.
//!
//! The `/__sim/` routes are a test control plane and are not authenticated.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::answer::{self, ApiError, Body};
use super::gateway::{Gateway, Reply};
use super::keys::Keys;
use super::params::Params;
use super::sts::Sts;
use super::{CallRecord, CallScript, DialRecord, Fault, Issued, RecordQuery, SimConfig};

/// Largest request body accepted; the gateway's own limit is far above anything `DialEx` sends,
/// and a bound keeps a broken client from growing the simulator's memory.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// A running CCC simulator. Dropping it stops the server (as [`Simulator::shutdown`] does,
/// without waiting).
pub struct Simulator {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    sts: Arc<Sts>,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    _stop_on_drop: DropGuard,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .field("dials", &self.dial_count())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Binds `listen` (port 0 picks a free port) and serves on the current tokio runtime.
    ///
    /// Fails if the address cannot be bound or the dial log file cannot be opened.
    pub async fn start(listen: SocketAddr, config: SimConfig) -> io::Result<Simulator> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let keys = Arc::new(Keys::new(&config));
        let services = Services {
            gateway: Arc::new(Gateway::new(&config, Arc::clone(&keys), shutdown.clone()).await?),
            sts: Arc::new(Sts::new(config.sts.clone(), keys)),
        };
        let server = tokio::spawn(accept_loop(listener, services.clone(), shutdown.clone()));
        tracing::info!(%addr, "CCC simulator listening");
        Ok(Simulator {
            addr,
            gateway: services.gateway,
            sts: services.sts,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            server,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to configure the client with, e.g. `http://127.0.0.1:38211`. A wildcard bind
    /// address is reported as loopback, since that is where a local client can reach it.
    pub fn endpoint(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Queues `times` occurrences of `fault` for requests whose `Callee` is exactly `callee`,
    /// after any faults already queued for it. Each authenticated, valid request to that callee
    /// consumes one.
    pub fn inject(&self, callee: &str, fault: Fault, times: u32) {
        self.gateway.inject(callee, fault, times);
    }

    /// Decides how every later call to `callee` turns out in the call records (disposition,
    /// duration, when its record appears, whether it gets one), until replaced by another
    /// script for the same callee. Calls to a callee without a script are answered `Success`.
    pub fn script_call(&self, callee: &str, script: CallScript) {
        self.gateway.records().script(callee, script);
    }

    /// Adds `record` to the call records as given, visible at once, as if the call centre had
    /// placed a call no `DialEx` asked for (say, a second call to the same number).
    pub fn add_call_record(&self, record: CallRecord) {
        self.gateway.records().add(record);
    }

    /// Every call record, visible yet or not, in the order they were created.
    pub fn call_records(&self) -> Vec<CallRecord> {
        self.gateway.records().all()
    }

    /// Every authenticated, valid `ListCallDetailRecords` request, in arrival order, and
    /// whether the pace limit refused it.
    pub fn record_queries(&self) -> Vec<RecordQuery> {
        self.gateway.records().queries()
    }

    /// Makes the next `times` authenticated, valid `ListCallDetailRecords` requests that the
    /// pace limit lets through answer with `fault`: [`Fault::Throttle`] is 400
    /// `Throttling.User`, [`Fault::InternalError`] 500 `InternalError`, any other 503
    /// `ServiceUnavailable`. Queued after faults injected before.
    pub fn inject_query_fault(&self, fault: Fault, times: u32) {
        self.gateway.records().inject_query_fault(fault, times);
    }

    /// Takes the whole gateway down (`true`: every request, the worker's probe included, is
    /// answered 503 `ServiceUnavailable` before anything is checked, and nothing is executed)
    /// or brings it back (`false`).
    pub fn set_down(&self, down: bool) {
        self.gateway.set_down(down);
    }

    /// Accepts `secret` for `access_key_id` from now on (adds the key, or rotates it), as
    /// when an operator fixes credentials on the account side.
    pub fn set_credentials(&self, access_key_id: &str, secret: &str) {
        self.gateway.keys().set_credentials(access_key_id, secret);
    }

    /// The STS endpoint, for the worker's `AssumeRoleWithOIDC` and `AssumeRole`.
    pub fn sts_endpoint(&self) -> String {
        format!("http://{}/sts", self.addr)
    }

    /// A credentials URI (`ALIBABA_CLOUD_CREDENTIALS_URI`), serving temporary credentials.
    pub fn credentials_uri(&self) -> String {
        format!("http://{}/credentials", self.addr)
    }

    /// The base URL of the simulated ECS instance metadata service (`/latest/…`).
    pub fn metadata_endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// An OIDC token `AssumeRoleWithOIDC` accepts from now on, beside those accepted
    /// before (any other is refused), as when the platform mounts a new service-account
    /// token.
    pub fn accept_oidc_token(&self, token: &str) {
        self.sts.accept_oidc_token(token);
    }

    /// How long the credentials STS issues from now on live.
    pub fn set_sts_lifetime(&self, lifetime: Duration) {
        self.sts.set_lifetime(lifetime);
    }

    /// Every set of temporary credentials STS issued, in order.
    pub fn sts_issued(&self) -> Vec<Issued> {
        self.sts.issued()
    }

    /// Every dial executed so far, in the order they completed.
    pub fn dials(&self) -> Vec<DialRecord> {
        self.gateway.log().snapshot()
    }

    /// How many dials were executed so far.
    pub fn dial_count(&self) -> usize {
        self.gateway.log().len()
    }

    /// Waits until every dial logged so far is written to [`SimConfig::dial_log`] (no-op
    /// without a log file).
    pub async fn flush_dial_log(&self) {
        self.gateway.log().flush().await;
    }

    /// Stops accepting, aborts open connections, and flushes the dial log file.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if let Err(error) = self.server.await {
            tracing::warn!(%error, "CCC simulator accept loop failed");
        }
        self.gateway.log().flush().await;
    }
}

/// What the simulator serves: the gateway, and the STS (with the metadata service and the
/// credentials URI) whose keys it accepts.
#[derive(Clone)]
struct Services {
    gateway: Arc<Gateway>,
    sts: Arc<Sts>,
}

async fn accept_loop(listener: TcpListener, services: Services, shutdown: CancellationToken) {
    // As many connections as the benchmark's clients open, and then some.
    dialex_worker::accept::accept_until(listener, shutdown, "CCC simulator", 4096, |stream| {
        serve_connection(stream, services.clone())
    })
    .await;
}

async fn serve_connection(stream: TcpStream, services: Services) {
    // Small request/response exchanges: don't let Nagle add latency to benchmarks.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request| {
        let services = services.clone();
        async move { route(&services, request).await }
    });
    if let Err(error) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "CCC simulator connection ended with an error");
    }
}

/// Returned to hyper to make it close the connection without answering.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped on purpose by an injected fault")]
struct DroppedOnPurpose;

async fn route(
    services: &Services,
    request: Request<Incoming>,
) -> Result<Response<Body>, DroppedOnPurpose> {
    let Services { gateway, sts } = services;
    enum Route {
        Gateway,
        Sts,
        Metadata,
        CredentialsUri,
        Dials,
        Faults,
        WrongMethod,
        NotFound,
    }
    let route = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::POST, "/") => Route::Gateway,
        (&Method::GET | &Method::POST, "/sts/" | "/sts") => Route::Sts,
        (&Method::GET | &Method::PUT, path) if path.starts_with("/latest/") => Route::Metadata,
        (&Method::GET, "/credentials") => Route::CredentialsUri,
        (&Method::GET, "/__sim/dials") => Route::Dials,
        (&Method::POST, "/__sim/faults") => Route::Faults,
        (_, "/") => Route::WrongMethod,
        _ => Route::NotFound,
    };
    let response = match route {
        Route::Gateway => return gateway_request(gateway, request).await,
        Route::Sts => assume(sts, request).await,
        Route::CredentialsUri => sts.served(),
        Route::Metadata => {
            let path = request.uri().path().trim_start_matches("/latest/");
            let token = request
                .headers()
                .get("x-aliyun-ecs-metadata-token")
                .and_then(|value| value.to_str().ok());
            sts.metadata(request.method().as_str(), path, token)
        }
        Route::Dials => answer::json(
            StatusCode::OK,
            &answer::new_request_id(),
            &gateway.log().snapshot(),
        ),
        Route::Faults => inject_fault(gateway, request).await,
        Route::WrongMethod => rejection(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UnsupportedHTTPMethod",
            "This http method is not supported.",
        )),
        Route::NotFound => rejection(ApiError::new(
            StatusCode::NOT_FOUND,
            "InvalidAction.NotFound",
            "Specified api is not found, please check your url and method.",
        )),
    };
    Ok(response)
}

async fn assume(sts: &Sts, request: Request<Incoming>) -> Response<Body> {
    match parameters(request).await {
        Ok((method, params)) => sts.handle(method.as_str(), &params),
        Err(error) => rejection(error),
    }
}

async fn gateway_request(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
) -> Result<Response<Body>, DroppedOnPurpose> {
    let (method, params) = match parameters(request).await {
        Ok(parsed) => parsed,
        Err(error) => return Ok(rejection(error)),
    };
    match gateway.handle(method.as_str(), &params).await {
        Reply::Answer(response) => Ok(response),
        Reply::Drop => Err(DroppedOnPurpose),
    }
}

/// The request's method and its parameters, from the query and (for a POST) the form body.
async fn parameters(request: Request<Incoming>) -> Result<(Method, Params), ApiError> {
    let (parts, body) = request.into_parts();
    // Only a POST carries parameters in its body; a GET's body (if any) is ignored like the
    // gateway ignores it.
    let form_body = if parts.method == Method::POST {
        let bytes = read_body(body).await?;
        if !bytes.is_empty() && !is_form(parts.headers.get(CONTENT_TYPE)) {
            return Err(ApiError::malformed(
                "The request body must be application/x-www-form-urlencoded.",
            ));
        }
        Some(bytes)
    } else {
        None
    };
    let params = Params::parse(parts.uri.query(), form_body.as_deref())
        .map_err(|error| ApiError::malformed(error.to_string()))?;
    Ok((parts.method, params))
}

/// `application/x-www-form-urlencoded`, with or without parameters such as `charset`.
fn is_form(content_type: Option<&hyper::header::HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "InvalidParameter.BodyTooLarge",
            format!("The request body is larger than {MAX_BODY_BYTES} bytes."),
        )),
        Err(_) => Err(ApiError::malformed("The request body could not be read.")),
    }
}

fn rejection(error: ApiError) -> Response<Body> {
    error.into_response(&answer::new_request_id())
}

/// Body of `POST /__sim/faults`, echoed back on success.
#[derive(Debug, Serialize, Deserialize)]
struct FaultRequest {
    callee: String,
    fault: Fault,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

async fn inject_fault(gateway: &Gateway, request: Request<Incoming>) -> Response<Body> {
    let bytes = match read_body(request.into_body()).await {
        Ok(bytes) => bytes,
        Err(error) => return rejection(error),
    };
    match serde_json::from_slice::<FaultRequest>(&bytes) {
        Ok(injection) => {
            gateway.inject(&injection.callee, injection.fault, injection.times);
            answer::json(StatusCode::OK, &answer::new_request_id(), &injection)
        }
        Err(error) => rejection(ApiError::malformed(format!(
            "Expected {{\"callee\": \"...\", \"fault\": \"throttle|unavailable|internal_error|\
             bad_gateway_no_body|slow|reset_after_execute\", \"times\": 1}}: {error}"
        ))),
    }
}
