//! Redis with a replica, on a real primary, replica and three sentinels beside the machine's
//! Redis (`scripts/redis-ha.sh`, started by the tests themselves).
//!
//! With `store.min_replicas_acked`, a claim or a result is acted on only once a replica holds
//! it, so a failover to that replica cannot lose it. The scenarios share the servers, so they
//! take turns.

mod helpers;

use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use helpers::chaos::{self, script};
use helpers::settings_with;
use tokio::time::Instant;

/// One scenario at a time: they kill the same servers.
static SERVERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `scripts/redis-ha.sh` with `args`.
fn redis_ha(args: &[&str]) -> String {
    script("redis-ha.sh", args)
}

/// The ports of the current primary and of the other server, its replica.
fn primary_and_replica() -> (u16, u16) {
    let primary: u16 = redis_ha(&["primary"])
        .parse()
        .expect("redis-ha.sh names a port");
    (primary, if primary == 6391 { 6392 } else { 6391 })
}

/// Where the replica-loss scenario is.
enum Stage {
    Running,
    /// The replica was killed; waiting for the workers to pause.
    Killed,
    /// Paused since this instant; the dials in flight when it began are let finish.
    Paused(Instant),
    /// Counting: no dial may happen from here, with these many done, until the replica
    /// returns.
    Holding(Instant, usize),
    Restarted,
}

/// The replica is killed mid-run: no claim is confirmed any more, so the workers pause
/// instead of dialing on claims a failover could lose, dial nothing for as long as it is
/// gone, and resume by themselves once it is back. Every request is dialed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_wait_for_the_replica_and_the_workers_pause_while_it_is_gone() {
    let _turn = SERVERS.lock().await;
    redis_ha(&["up"]);
    let (primary, replica) = primary_and_replica();
    const REQUESTS: usize = 1_000;

    let mut settings = settings_with(StoreBackend::Redis);
    settings.store.url = format!("redis://127.0.0.1:{primary}").into();
    settings.store.min_replicas_acked = 1;
    settings.store.replica_ack_timeout_ms = 200;
    // Paced so the replica goes down mid-run: 1,000 requests take about 7 s.
    settings.limits.calls_per_second = 150.0;
    settings.limits.burst = 10;
    dialex_worker::telemetry::init(&settings.log);
    let mut h = Harness::start(settings, SimConfig::default())
        .await
        .expect("RabbitMQ must be reachable");

    let replica = replica.to_string();
    let background =
        |args: [String; 2]| tokio::task::spawn_blocking(move || redis_ha(&[&args[0], &args[1]]));
    let mut stage = Stage::Running;
    let mut tasks = Vec::new();
    let mut dials_while_gone = None;
    let mut run = chaos::run(
        &mut h,
        "wait",
        REQUESTS,
        2,
        "store.min_replicas_acked",
        |progress| match stage {
            Stage::Running if progress.done >= REQUESTS * 3 / 10 => {
                tasks.push(background(["kill".into(), replica.clone()]));
                stage = Stage::Killed;
            }
            Stage::Killed if !progress.ready => stage = Stage::Paused(Instant::now()),
            Stage::Paused(since) if since.elapsed() >= Duration::from_secs(1) => {
                stage = Stage::Holding(Instant::now(), progress.dials);
            }
            Stage::Holding(since, dials) if since.elapsed() >= Duration::from_secs(3) => {
                dials_while_gone = Some(progress.dials - dials);
                tasks.push(background(["start".into(), replica.clone()]));
                stage = Stage::Restarted;
            }
            _ => {}
        },
    )
    .await;
    for task in tasks {
        task.await.expect("redis-ha.sh ran");
    }
    let statuses = run.judge(&mut h, "wait", REQUESTS).await;
    run.report("replica lost mid-run", &statuses, h.simulator.dial_count());
    assert_eq!(
        dials_while_gone,
        Some(0),
        "dials while the replica was gone (None: the workers never paused)"
    );
    assert!(
        run.pause_explained,
        "/readyz never named store.min_replicas_acked"
    );
    assert_eq!(statuses.get("Dialed"), Some(&REQUESTS), "{statuses:?}");
    h.cleanup().await.expect("clean up");
}
