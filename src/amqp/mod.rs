//! The RabbitMQ edge: connections, the declared topology, and the confirmed publisher.
//!
//! Consuming and publishing use separate connections, so flow control applied by the broker to
//! a publishing connection can never stall the delivery of requests (and their acks).

pub mod publisher;
pub mod topology;

pub use publisher::{PublishError, Publisher};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::AMQPValue;
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::config::AmqpSettings;
use crate::outcome::DeferReason;

/// Set by quorum queues on a redelivery: how often the message was delivered before.
pub const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// A failed broker operation, saying which one.
#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ {what} failed: {source}")]
pub struct AmqpError {
    pub what: &'static str,
    #[source]
    pub source: lapin::Error,
}

impl AmqpError {
    /// A failure found on this side (a bad URL, a deadline), in lapin's error type.
    pub(crate) fn local(
        what: &'static str,
        kind: std::io::ErrorKind,
        message: impl Into<String>,
    ) -> Self {
        let io = std::io::Error::new(kind, message.into());
        AmqpError {
            what,
            source: lapin::ErrorKind::IOError(std::sync::Arc::new(io)).into(),
        }
    }
}

/// Attaches the operation's name to a lapin error.
pub(crate) fn op(what: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |source| AmqpError { what, source }
}

/// The frame size proposed to the broker unless the URL sets `frame_max`. lapin keeps send
/// and receive buffers of 32 frames per connection, so the broker's 128 KiB default costs
/// 16 MiB of memory for the worker's two connections; requests and events are a few hundred
/// bytes (64 KiB at most, sent in several frames), so 16 KiB frames cost nothing in speed.
const FRAME_MAX: u32 = 16 * 1024;

/// How long one node may take to accept a connection before the next is tried.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection named `name` (shown in the management UI as the connection name) to
/// the first of `amqp.url`'s nodes that answers, in order; over TLS for `amqps://`, trusting
/// `amqp.tls_ca_file` too. Fails with the last node's error when none answers.
pub async fn connect(amqp: &AmqpSettings, name: &str) -> Result<Connection, AmqpError> {
    let ca = crate::tls::ca_pem(&amqp.tls_ca_file, "amqp.tls_ca_file").map_err(|message| {
        AmqpError::local("connect", std::io::ErrorKind::InvalidInput, message)
    })?;
    let nodes = amqp.nodes();
    let mut last = None;
    for (index, url) in nodes.iter().enumerate() {
        let attempt = tokio::time::timeout(NODE_TIMEOUT, connect_node(url, name, &ca))
            .await
            .unwrap_or_else(|_| {
                Err(AmqpError::local(
                    "connect",
                    std::io::ErrorKind::TimedOut,
                    "the node did not answer in time",
                ))
            });
        match attempt {
            Ok(connection) => return Ok(connection),
            Err(error) if nodes.len() > 1 => {
                // The host and port only: the URL may carry a password.
                tracing::warn!(
                    node = index + 1,
                    of = nodes.len(),
                    address = %node_address(url),
                    %error,
                    "a RabbitMQ node did not take the connection; trying the next"
                );
                last = Some(error);
            }
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        AmqpError::local(
            "connect",
            std::io::ErrorKind::InvalidInput,
            "amqp.url names no node",
        )
    }))
}

/// One node's connection.
async fn connect_node(url: &str, name: &str, ca: &Option<String>) -> Result<Connection, AmqpError> {
    let mut uri: AMQPUri = url
        .parse()
        // The parser's message may quote the URL, password included.
        .map_err(|_: String| {
            AmqpError::local(
                "connect",
                std::io::ErrorKind::InvalidInput,
                "amqp.url is not a valid AMQP URL",
            )
        })?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: ca.clone(),
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let runtime = lapin::runtime::default_runtime().map_err(op("connect"))?;
    Connection::connect_uri_with_config(uri, properties, tls, runtime)
        .await
        .map_err(op("connect"))
}

/// `host:port` of a node's URL, for the log; nothing else of it.
fn node_address(url: &str) -> String {
    url.parse::<AMQPUri>()
        .map(|uri| format!("{}:{}", uri.authority.host, uri.authority.port))
        .unwrap_or_else(|_| "an unreadable URL".to_owned())
}

/// A delivered message, as the pipeline sees it.
#[derive(Debug)]
pub struct Incoming {
    pub body: Vec<u8>,
    /// AMQP `message_id`: the fallback `request_id`.
    pub message_id: Option<String>,
    pub properties: BasicProperties,
    pub redelivered: bool,
    pub received_at: Timestamp,
    /// Since when the request has been ready to dial: `received_at`, or, for one back from
    /// waiting for a pace or concurrency slot, when that wait began (`x-dialex-ready-at`).
    /// What `queue_to_dial_seconds` measures from.
    pub ready_at: Timestamp,
    /// Why the request was last deferred (the `x-dialex-deferred` header), if it was.
    pub deferred_reason: Option<DeferReason>,
    /// When the last deferral said it may be evaluated again (the `x-dialex-not-before`
    /// header): a request back from a wait queue early waits again.
    pub not_before: Option<Timestamp>,
    /// When the wait queue it was last deferred to was due to hand it back (the
    /// `x-dialex-due` header).
    pub due: Option<Timestamp>,
    /// DialEx attempts made on earlier hops (the `x-dialex-attempts` header).
    pub prior_attempts: u32,
    /// The W3C `traceparent` header, copied onto the outcome event.
    pub traceparent: Option<String>,
    /// How often `dialex-worker dead replay` put this request back (`x-dialex-replays`).
    pub replays: u32,
    /// The start the limiter booked for it, as signed when it was deferred
    /// (`x-dialex-booking`); the pipeline checks the signature.
    pub booking: Option<String>,
    /// How often the broker has delivered this message before without it being settled
    /// (quorum queues' `x-delivery-count`).
    pub delivery_count: u32,
    /// Set once this delivery holds the request's claim: from then on the claim, not the
    /// broker's delivery limit, keeps it from being dialed twice.
    claimed: AtomicBool,
}

impl Incoming {
    pub fn new(body: Vec<u8>, properties: BasicProperties, redelivered: bool) -> Self {
        let raw = |name: &str| properties.headers().as_ref()?.inner().get(name).cloned();
        let header = |name: &str| match raw(name)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        };
        let delivery_count = match raw(DELIVERY_COUNT_HEADER) {
            Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).ok(),
            Some(AMQPValue::LongInt(n)) => u32::try_from(n).ok(),
            Some(AMQPValue::LongUInt(n)) => Some(n),
            Some(AMQPValue::ShortInt(n)) => u32::try_from(n).ok(),
            Some(AMQPValue::ShortUInt(n)) => Some(u32::from(n)),
            _ => None,
        }
        .unwrap_or(0);
        let deferred_reason =
            header(publisher::DEFERRED_HEADER).and_then(|reason| DeferReason::parse(&reason));
        let received_at = Timestamp::now();
        // Only for a wait for a slot, and never later than now: the header only feeds a
        // metric, but an upstream could set it too.
        let ready_at = header(publisher::READY_AT_HEADER)
            .filter(|_| deferred_reason == Some(DeferReason::Limits))
            .and_then(|at| at.parse::<Timestamp>().ok())
            .map_or(received_at, |at| at.min(received_at));
        Incoming {
            delivery_count,
            claimed: AtomicBool::new(false),
            deferred_reason,
            not_before: header(publisher::NOT_BEFORE_HEADER).and_then(|at| at.parse().ok()),
            due: header(publisher::DUE_HEADER)
                .filter(|_| deferred_reason.is_some())
                .and_then(|at| at.parse().ok()),
            prior_attempts: header(publisher::ATTEMPTS_HEADER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            traceparent: header("traceparent").filter(|s| is_traceparent(s)),
            booking: header(publisher::BOOKING_HEADER),
            replays: header(publisher::REPLAYS_HEADER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            body,
            properties,
            redelivered,
            received_at,
            ready_at,
        }
    }

    /// Whether it is a follow-up job (AMQP `type` `dial.followup`) rather than a request.
    pub fn is_followup_job(&self) -> bool {
        crate::followup::job::is_job(&self.properties)
    }

    pub fn mark_claimed(&self) {
        self.claimed.store(true, Ordering::Relaxed);
    }

    pub fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Relaxed)
    }
}

/// Whether `value` is a W3C Trace Context `traceparent`: `version-trace_id-parent_id-flags`
/// in lowercase hex (2, 32, 16 and 2 digits), version not `ff`, neither id all zeros. A
/// version 00 header is exactly that; a later version may append `-` and more, which is kept.
/// Anything else is dropped rather than copied onto the outcome event.
fn is_traceparent(value: &str) -> bool {
    let hex = |part: &str, len: usize| {
        part.len() == len && part.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |part: &str| part.bytes().any(|b| b != b'0');
    if value.len() > 256 || !value.is_char_boundary(55.min(value.len())) {
        return false;
    }
    let (head, rest) = value.split_at(55.min(value.len()));
    let mut parts = head.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && nonzero(trace_id)
        && hex(parent_id, 16)
        && nonzero(parent_id)
        && hex(flags, 2)
        && (rest.is_empty() || (version != "00" && rest.starts_with('-')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn only_w3c_traceparents_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(good));
        assert!(is_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        ));
        for bad in [
            "",
            "hello",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-+86 157 3203 6617 and some more text to reach fifty-five",
        ] {
            assert!(!is_traceparent(bad), "{bad:?}");
        }
        let long = format!(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
            "x".repeat(300)
        );
        assert!(!is_traceparent(&long));
        // Multi-byte text never splits inside a character.
        assert!(!is_traceparent(&"é".repeat(40)));
    }

    #[test]
    fn an_invalid_traceparent_header_is_dropped_from_the_delivery() {
        let with = |value: &str| {
            let mut headers = FieldTable::default();
            headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(value.as_bytes().to_vec().into()),
            );
            Incoming::new(
                Vec::new(),
                BasicProperties::default().with_headers(headers),
                false,
            )
            .traceparent
        };
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(with(good).as_deref(), Some(good));
        assert_eq!(with("call 13800000000"), None);
    }
}
