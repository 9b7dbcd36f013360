//! The RabbitMQ edge: connections, the declared topology, and the confirmed publisher.
//!
//! Consuming and publishing use separate connections, so flow control applied by the broker to
//! a publishing connection can never stall the delivery of requests (and their acks).

pub mod publisher;
pub mod topology;

pub use publisher::{PublishError, Publisher};

use jiff::Timestamp;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

/// A failed broker operation, saying which one.
#[derive(Debug, thiserror::Error)]
#[error("RabbitMQ {what} failed: {source}")]
pub struct AmqpError {
    pub what: &'static str,
    #[source]
    pub source: lapin::Error,
}

/// Attaches the operation's name to a lapin error.
pub(crate) fn op(what: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |source| AmqpError { what, source }
}

/// Opens a connection named `name` (shown in the management UI as the connection name).
pub async fn connect(url: &SecretString, name: &str) -> Result<Connection, AmqpError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose_secret(), properties)
        .await
        .map_err(op("connect"))
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
    /// Why the request was last deferred (the `x-dialex-deferred` header), if it was.
    pub deferred_reason: Option<String>,
    /// DialEx attempts made on earlier hops (the `x-dialex-attempts` header).
    pub prior_attempts: u32,
}

impl Incoming {
    pub fn new(body: Vec<u8>, properties: BasicProperties, redelivered: bool) -> Self {
        let header = |name: &str| {
            properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(name))
                .and_then(|v| match v {
                    lapin::types::AMQPValue::LongString(s) => {
                        std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned)
                    }
                    _ => None,
                })
        };
        Incoming {
            deferred_reason: header(publisher::DEFERRED_HEADER),
            prior_attempts: header(publisher::ATTEMPTS_HEADER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            body,
            properties,
            redelivered,
            received_at: Timestamp::now(),
        }
    }
}
