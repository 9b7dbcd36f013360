//! Builds the worker from settings and runs it: the same code path for `run`, the demo and
//! the tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::amqp::{self, AmqpError, PublishError, Publisher, op, topology};
use crate::backend::{Backend, BackendError};
use crate::ccc::{CallRecords, CccClient};
use crate::config::{Settings, StoreBackend};
use crate::defer::Tiers;
use crate::dial::DialPolicy;
use crate::followup::Followup;
use crate::followup::pace::Pace;
use crate::gates::cooldown::{CalleeGate, NumberHasher};
use crate::gates::dnc::{DncError, DncList, DncSources};
use crate::gates::hours::{BusinessHours, CalendarError};
use crate::gates::limits::Limiter;
use crate::health::Health;
use crate::intake::followups::Runner;
use crate::intake::{Stopped, consume};
use crate::metrics::{Metrics, PauseCause};
use crate::outage::OutageBreaker;
use crate::pipeline::{Halt, HaltCause, Pipeline, Schedule};
use crate::store::{CallResults, DialStore};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The store, the limiter or the shared do-not-call set could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The business-hours calendar is not usable.
    #[error(transparent)]
    Calendar(#[from] CalendarError),
    /// The do-not-call file could not be loaded.
    #[error(transparent)]
    Dnc(#[from] DncError),
}

/// This process's name in claims: the pod name (Kubernetes sets `HOSTNAME`) plus a random
/// suffix, so a restarted worker never mistakes its predecessor's claims for its own.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

/// Opens the backend `store.backend` names (the one place that choice is made) and runs the
/// worker on it.
pub async fn run_with_configured_store<C: CccClient + CallRecords + Clone>(
    settings: &Settings,
    client: C,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let worker = worker_id();
    match settings.store.backend {
        StoreBackend::Embedded => {
            let backend = Backend::embedded(settings, worker)?;
            run(settings, client, backend, metrics, health, shutdown).await
        }
        StoreBackend::Redis => {
            let backend = Backend::redis(settings, worker).await?;
            run(settings, client, backend, metrics, health, shutdown).await
        }
    }
}

/// Declares the topology, consumes until `shutdown`, and closes cleanly.
pub async fn run<
    C: CccClient + CallRecords + Clone,
    S: DialStore + CallResults + Clone,
    L: Limiter,
>(
    settings: &Settings,
    client: C,
    backend: Backend<S, L>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    // Not ready from the moment shutdown is asked for, while in-flight work drains.
    tokio::spawn({
        let health = Arc::clone(&health);
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health.set_shutting_down();
        }
    });
    metrics.pace_cap.set(settings.limits.calls_per_second);
    let amqp_settings = &settings.amqp;
    let tiers = Tiers::new(&settings.deferral, &amqp_settings.names);
    let hours = BusinessHours::new(&settings.business_hours)?;
    let file = &settings.dnc.file;
    let dnc = DncList::start(DncSources {
        file: (!file.as_os_str().is_empty()).then(|| file.clone()),
        reload_interval: Duration::from_millis(settings.dnc.reload_interval_ms),
        shared: backend.shared_dnc,
    })
    .await?;
    let halt = Arc::new(Halt::default());
    let followup_tiers = crate::defer::Tiers::of_followups(settings);
    let followup = followup_tiers.as_ref().map(|tiers| Followups {
        followup: Followup {
            records: client.clone(),
            store: backend.store.clone(),
            settings: settings.followup.clone(),
            pace: Pace::new(settings.followup.queries_per_second),
        },
        tiers: tiers.clone(),
    });
    let pipeline = Arc::new(Pipeline {
        client,
        store: backend.store,
        policy: DialPolicy::from_settings(&settings.ccc),
        publisher: Publisher::new(amqp_settings, Arc::clone(&metrics)),
        tiers,
        callee: CalleeGate::new(&settings.cooldown, hours.default_calendar().time_zone()),
        hasher: NumberHasher::new(&settings.cooldown),
        hours,
        dnc,
        limiter: backend.limiter,
        outage: OutageBreaker::new(&settings.outage),
        metrics: Arc::clone(&metrics),
        halt: Arc::clone(&halt),
        delivery_limit: amqp_settings.delivery_limit,
        lease: settings.store.lease(),
        unreleased: Default::default(),
        followup: followup_tiers.map(|tiers| Schedule {
            first_poll: settings.followup.poll_after(0).unwrap_or_default(),
            tiers,
        }),
    });

    // The broker supervisor: one session per connection pair; a lost session is rebuilt
    // with growing pauses, re-declaring the topology, until shutdown.
    let mut pause = RECONNECT_MIN;
    let mut sessions = 0u64;
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match Session::open(settings, &pipeline.publisher).await {
            Ok(session) => {
                let opened = Instant::now();
                sessions += 1;
                if sessions > 1 {
                    metrics.amqp_reconnects.inc();
                    tracing::info!("reconnected to RabbitMQ");
                }
                pause = RECONNECT_MIN;
                let requests = async {
                    let ended = serve(settings, &session, &pipeline, &health, &shutdown).await;
                    session.lost.cancel();
                    ended
                };
                let followups = serve_followups(
                    settings,
                    &session,
                    followup.as_ref(),
                    &pipeline.publisher,
                    &metrics,
                );
                let (ended, ()) = tokio::join!(requests, followups);
                session.close().await;
                match ended {
                    Ended::Shutdown => return Ok(()),
                    Ended::BrokerLost => {
                        tracing::warn!("lost RabbitMQ; reconnecting");
                        // A session that ran a while was lost, not refused: try again at once
                        // (another node of a cluster is likely to answer). The pauses grow
                        // only while no node takes the connection.
                        if opened.elapsed() >= RECONNECT_MIN {
                            health.set_consuming(false);
                            continue;
                        }
                    }
                }
            }
            Err(SessionError::Topology(error)) => return Err(error.into()),
            Err(SessionError::Connect(error)) => {
                tracing::error!(%error, retry_in = ?pause, "cannot reach RabbitMQ");
            }
        }
        health.set_consuming(false);
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = pause.saturating_mul(2).min(RECONNECT_MAX);
    }
}

/// Pauses between attempts to reach RabbitMQ: 1 s, doubling to 30 s.
const RECONNECT_MIN: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// The longest pause between checks of a store that failed: a check is cheap, and the
/// worker resumes within this long of the store's return (a Redis failover, a replica back).
const STORE_PROBE_MAX: Duration = Duration::from_secs(5);
/// The longest any single broker operation (connect, declare, open a channel) may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a broker session ended.
enum Ended {
    Shutdown,
    BrokerLost,
}

enum SessionError {
    /// The broker cannot be reached (yet): try again later.
    Connect(AmqpError),
    /// The broker refuses the topology (for example a queue declared earlier with other
    /// arguments): a configuration problem that retrying cannot fix.
    Topology(AmqpError),
}

/// Two connections to the broker (consuming and publishing apart, so flow control on
/// publishes never stalls acks) and a token cancelled when either reports an error.
struct Session {
    consume: lapin::Connection,
    publish: lapin::Connection,
    lost: CancellationToken,
}

impl Session {
    async fn open(settings: &Settings, publisher: &Publisher) -> Result<Session, SessionError> {
        let amqp_settings = &settings.amqp;
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        // Each node has its own deadline (`amqp::NODE_TIMEOUT`), the next tried after it.
        let connect = |role: &'static str| {
            let name = format!("{} {role} {host}", amqp_settings.connection_name);
            async move { amqp::connect(amqp_settings, &name).await }
        };
        let publish = connect("publish").await.map_err(SessionError::Connect)?;
        let consume = connect("consume").await.map_err(SessionError::Connect)?;
        let lost = CancellationToken::new();
        for connection in [&publish, &consume] {
            let mut events = connection.events_listener();
            let lost = lost.clone();
            tokio::spawn(async move {
                while let Some(event) = events.next().await {
                    if let lapin::Event::Error(error) = event {
                        tracing::warn!(%error, "RabbitMQ connection failed");
                        lost.cancel();
                        return;
                    }
                }
                // The listener ends with the connection.
                lost.cancel();
            });
        }
        let channel = tokio::time::timeout(BROKER_TIMEOUT, publisher.attach(&publish))
            .await
            .unwrap_or_else(|_| Err(timed_out("open publish channel")))
            .map_err(SessionError::Connect)?;
        let tiers = Tiers::new(&settings.deferral, &amqp_settings.names);
        let followup_tiers = crate::defer::Tiers::of_followups(settings);
        tokio::time::timeout(
            BROKER_TIMEOUT,
            topology::declare(&channel, amqp_settings, &tiers, followup_tiers.as_ref()),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("declare topology")))
        .map_err(|error| {
            if is_refusal(&error.source) {
                SessionError::Topology(error)
            } else {
                SessionError::Connect(error)
            }
        })?;
        Ok(Session {
            consume,
            publish,
            lost,
        })
    }

    async fn close(self) {
        self.lost.cancel();
        for connection in [&self.consume, &self.publish] {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), connection.close(200, "bye".into()))
                    .await;
        }
    }
}

/// A broker operation that did not finish within [`BROKER_TIMEOUT`].
fn timed_out(what: &'static str) -> AmqpError {
    AmqpError::local(
        what,
        std::io::ErrorKind::TimedOut,
        format!("no answer within {BROKER_TIMEOUT:?}"),
    )
}

/// Whether the broker refused an operation on purpose (a channel-level protocol error such as
/// PRECONDITION_FAILED or ACCESS_REFUSED), as opposed to the connection failing.
fn is_refusal(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(_))
}

/// Consumes on `session` until shutdown or the session is lost; pauses (and resumes) in
/// between when CCC refuses the worker or the store stops answering.
async fn serve<C: CccClient, S: DialStore, L: Limiter>(
    settings: &Settings,
    session: &Session,
    pipeline: &Arc<Pipeline<C, S, L>>,
    health: &Health,
    shutdown: &CancellationToken,
) -> Ended {
    let amqp_settings = &settings.amqp;
    let drain = settings.shutdown.drain_timeout();
    loop {
        // A pause carried over from a lost session: this one may already have cured it.
        let inherited_pause = pipeline.halt.cause().is_some();
        let consumer = match tokio::time::timeout(
            BROKER_TIMEOUT,
            start_consumer(
                &session.consume,
                &amqp_settings.names.request_queue,
                amqp_settings.prefetch,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(timed_out("start consuming")))
        {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(%error, "could not start consuming");
                return Ended::BrokerLost;
            }
        };
        let (channel, consumer) = consumer;
        health.set_consuming(true);
        tracing::info!(
            queue = amqp_settings.names.request_queue,
            prefetch = amqp_settings.prefetch,
            "consuming dial requests"
        );
        let consuming = consume(
            consumer,
            &channel,
            Arc::clone(pipeline),
            shutdown.clone(),
            session.lost.clone(),
            drain,
        );
        tokio::pin!(consuming);
        // Not ready from the moment the pipeline halts, not only once the requests in hand
        // have drained (a result waiting for the store can hold the drain for its length).
        let halted = pipeline.halt.token();
        let stopped = tokio::select! {
            stopped = &mut consuming => stopped,
            () = halted.cancelled() => {
                health.set_consuming(false);
                consuming.await
            }
        };
        health.set_consuming(false);
        // Closing the channel returns every unsettled delivery to the queue.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), channel.close(200, "bye".into())).await;

        match stopped {
            Stopped::Shutdown => return Ended::Shutdown,
            Stopped::ConsumerClosed => return Ended::BrokerLost,
            Stopped::Halted => {
                let Some(cause) = pipeline.halt.cause() else {
                    return Ended::BrokerLost;
                };
                let kind = match cause {
                    HaltCause::Ccc(_) => PauseCause::Ccc,
                    HaltCause::Outage(_) => PauseCause::CccOutage,
                    HaltCause::Store(_) => PauseCause::Store,
                    HaltCause::Broker(_) => PauseCause::Broker,
                };
                health.set_paused(Some(format!("paused: {cause}")));
                pipeline.metrics.set_paused(kind, true);
                let resumed = match kind {
                    // The worker's own credentials, signature or clock: keep the messages,
                    // wait until CCC accepts the worker again, then resume.
                    PauseCause::Ccc => {
                        probe_until(
                            shutdown,
                            &session.lost,
                            Duration::from_secs(60),
                            "CCC still refuses the worker; check the ALIBABA_CLOUD_* credentials, the endpoint and the clock",
                            || pipeline.client.probe(),
                        )
                        .await
                    }
                    // CCC is down for everyone: the requests went back with their attempts
                    // unspent; wait until it answers again.
                    PauseCause::CccOutage => {
                        probe_until(
                            shutdown,
                            &session.lost,
                            settings.outage.max_probe_interval(),
                            "CCC still fails (503, 500 or refused connections)",
                            || pipeline.client.probe(),
                        )
                        .await
                    }
                    // Never dial without a record: wait until the store answers again.
                    PauseCause::Store => {
                        probe_until(
                            shutdown,
                            &session.lost,
                            STORE_PROBE_MAX,
                            "the dial-record store still does not answer",
                            || pipeline.store.check(),
                        )
                        .await
                    }
                    // Outcomes could not be delivered: nothing more is dialed until the
                    // broker takes publishes again (a lost connection is rebuilt by the
                    // supervisor; a blocked one is unblocked by the broker).
                    // The pause began in a lost session, and this new one takes publishes.
                    PauseCause::Broker if inherited_pause && pipeline.publisher.check().is_ok() => {
                        Probed::Passed
                    }
                    PauseCause::Broker => {
                        probe_until(
                            shutdown,
                            &session.lost,
                            Duration::from_secs(5),
                            "RabbitMQ still does not take the worker's publishes",
                            || {
                                let checked = pipeline.publisher.check();
                                if matches!(checked, Err(PublishError::NotConnected)) {
                                    // The broker closed the publishing channel (say, an
                                    // exchange was deleted) but not the connection: a new
                                    // session opens a channel and declares the topology.
                                    session.lost.cancel();
                                }
                                std::future::ready(checked)
                            },
                        )
                        .await
                    }
                };
                pipeline.metrics.set_paused(kind, false);
                match resumed {
                    Probed::Passed => {}
                    Probed::Shutdown => return Ended::Shutdown,
                    // Paused still: the next session's consumer stops at once and the pause
                    // goes on there.
                    Probed::SessionLost => return Ended::BrokerLost,
                }
                pipeline.release_remembered().await;
                pipeline.outage.reset();
                tracing::info!(
                    cause = kind.as_str(),
                    "the cause of the pause is gone; resuming"
                );
                health.set_paused(None);
                pipeline.halt.reset();
            }
        }
    }
}

/// The follow-up as the session runs it: its stages and its queue's wait tiers.
struct Followups<R, S> {
    followup: Followup<R, S>,
    tiers: Tiers,
}

/// Consumes follow-up jobs for as long as the session lasts (the follow-up keeps going while
/// the dial path pauses: it dials nobody). A consumer that cannot start is tried again with
/// the next session.
async fn serve_followups<R: CallRecords, S: CallResults>(
    settings: &Settings,
    session: &Session,
    followups: Option<&Followups<R, S>>,
    publisher: &Publisher,
    metrics: &Metrics,
) {
    let Some(followups) = followups else {
        return;
    };
    let queue = &settings.amqp.names.followup_queue;
    let started = tokio::time::timeout(
        BROKER_TIMEOUT,
        start_consumer(&session.consume, queue, settings.followup.prefetch),
    )
    .await
    .unwrap_or_else(|_| Err(timed_out("start consuming follow-ups")));
    let (channel, consumer) = match started {
        Ok(started) => started,
        Err(error) => {
            tracing::warn!(%error, "could not start consuming follow-up jobs");
            session.lost.cancel();
            return;
        }
    };
    tracing::info!(queue, "consuming follow-up jobs");
    let runner = Runner {
        followup: &followups.followup,
        publisher,
        tiers: &followups.tiers,
        metrics,
        lost: session.lost.clone(),
    };
    runner.consume(consumer).await;
    // Ended by itself (the broker cancelled it, the queue was deleted): a new session
    // declares the topology again and starts it afresh.
    session.lost.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.close(200, "bye".into())).await;
}

/// Opens a consuming channel with `prefetch` and starts consuming `queue`.
async fn start_consumer(
    connection: &lapin::Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(lapin::Channel, lapin::Consumer), AmqpError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(op("open consume channel"))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(op("set prefetch"))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(op("start consuming"))?;
    Ok((channel, consumer))
}

/// How a pause's probing ended.
enum Probed {
    Passed,
    Shutdown,
    /// The broker session was lost meanwhile: reconnect first.
    SessionLost,
}

/// Runs `probe` with growing pauses (1 s, doubling to `longest`) until it succeeds, logging
/// each failure with `still`; stops early on shutdown or when the broker session is `lost`.
async fn probe_until<E, F, Fut>(
    shutdown: &CancellationToken,
    lost: &CancellationToken,
    longest: Duration,
    still: &str,
    mut probe: F,
) -> Probed
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut pause = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Probed::Shutdown,
            () = lost.cancelled() => return Probed::SessionLost,
            () = tokio::time::sleep(pause) => {}
        }
        pause = pause.saturating_mul(2).min(longest);
        match probe().await {
            Ok(()) => return Probed::Passed,
            Err(error) => tracing::error!(%error, next_probe_in = ?pause, "paused: {still}"),
        }
    }
}
