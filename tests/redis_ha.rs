//! Redis with a replica, on a real primary, replica and three sentinels beside the machine's
//! Redis (`scripts/redis-ha.sh`, started by the tests themselves).
//!
//! With `store.min_replicas_acked`, a claim or a result is acted on only once a replica holds
//! it, so a failover to that replica cannot lose it; with `store.sentinels`, the workers find
//! the promoted replica by themselves. The scenarios share the servers, so they take turns.

mod helpers;

use std::time::Duration;

use dialex_devkit::simulator::SimConfig;
use dialex_worker::config::StoreBackend;
use dialex_worker::store::DialRecords as _;
use dialex_worker::store::redis::RedisStore;
use helpers::chaos::{self, script};
use helpers::{harness, settings_with};
use tokio::time::Instant;

/// One scenario at a time: they kill the same servers.
static SERVERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `scripts/redis-ha.sh` with `args`.
fn redis_ha(args: &[&str]) -> String {
    script("redis-ha.sh", args)
}

/// [`redis_ha`] on a blocking thread, so the workers in this process keep running.
fn redis_ha_in_background(args: Vec<String>) -> tokio::task::JoinHandle<String> {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_ha(&args)
    })
}

/// Two workers' settings on the Redis store, claims confirmed by one replica within
/// 200 ms, paced at 150 calls/s so that a server is lost mid-run; `url` gives the primary (or,
/// with sentinels, its login).
fn replicated(url: &str) -> dialex_worker::config::Settings {
    let mut settings = settings_with(StoreBackend::Redis);
    settings.store.url = url.to_owned().into();
    settings.store.min_replicas_acked = 1;
    settings.store.replica_ack_timeout_ms = 200;
    settings.limits.calls_per_second = 150.0;
    settings.limits.burst = 10;
    settings
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

    // 1,000 requests take about 7 s.
    let mut h = harness(
        replicated(&format!("redis://127.0.0.1:{primary}")),
        SimConfig::default(),
    )
    .await;

    let replica = replica.to_string();
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
                tasks.push(redis_ha_in_background(vec!["kill".into(), replica.clone()]));
                stage = Stage::Killed;
            }
            Stage::Killed if !progress.ready => stage = Stage::Paused(Instant::now()),
            Stage::Paused(since) if since.elapsed() >= Duration::from_secs(1) => {
                stage = Stage::Holding(Instant::now(), progress.dials);
            }
            Stage::Holding(since, dials) if since.elapsed() >= Duration::from_secs(3) => {
                dials_while_gone = Some(progress.dials - dials);
                tasks.push(redis_ha_in_background(vec![
                    "start".into(),
                    replica.clone(),
                ]));
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

/// The primary is killed mid-run and the sentinels promote its replica. The workers, which
/// know only the sentinels, pause while no primary answers, move to the promoted one by
/// themselves and resume. The killed server comes back (as Kubernetes would restart it) as
/// the new primary's replica, so claims are confirmed again. Claims and results were held by
/// the replica before the workers acted on them, so the failover loses none: every request
/// is dialed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_follow_the_sentinels_to_the_promoted_replica() {
    let _turn = SERVERS.lock().await;
    redis_ha(&["up"]);
    let (primary, replica) = primary_and_replica();
    const REQUESTS: usize = 2_000;

    // Nothing listens at the URL: the user, password and database come from it, the primary
    // from the sentinels. 2,000 requests take about 13 s.
    let mut settings = replicated("redis://127.0.0.1:1/0");
    settings.store.sentinels = ["26391", "26392", "26393"]
        .map(|port| format!("127.0.0.1:{port}"))
        .to_vec();
    settings.store.sentinel_service = "dialex-test".to_owned();
    let mut h = harness(settings, SimConfig::default()).await;

    let mut failover = None;
    let mut run = chaos::run(
        &mut h,
        "failover",
        REQUESTS,
        2,
        "the dial-record store failed",
        |progress| {
            if failover.is_none() && progress.done >= REQUESTS * 3 / 10 {
                failover = Some(tokio::spawn(fail_over(primary, replica)));
            }
        },
    )
    .await;
    let promoted_after = failover
        .expect("the primary was killed mid-run")
        .await
        .expect("the failover ran");
    let statuses = run.judge(&mut h, "failover", REQUESTS).await;
    run.report(
        &format!("primary killed mid-run, replica promoted after {promoted_after:.1} s"),
        &statuses,
        h.simulator.dial_count(),
    );
    assert!(
        run.paused > Duration::ZERO && run.pause_explained,
        "/readyz never said the store failed"
    );
    assert_eq!(statuses.get("Dialed"), Some(&REQUESTS), "{statuses:?}");
    h.cleanup().await.expect("clean up");
}

/// Kills the primary, waits until the sentinels name `replica`, then starts the killed
/// server again (as their primary's replica). Returns the seconds from the kill to the
/// promotion.
async fn fail_over(primary: u16, replica: u16) -> f64 {
    let killed = Instant::now();
    redis_ha_in_background(vec!["kill".into(), primary.to_string()])
        .await
        .expect("redis-ha.sh ran");
    while redis_ha_in_background(vec!["primary".into()])
        .await
        .expect("redis-ha.sh ran")
        != replica.to_string()
    {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the sentinels promoted no replica within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted_after = killed.elapsed().as_secs_f64();
    redis_ha_in_background(vec!["start".into(), primary.to_string()])
        .await
        .expect("redis-ha.sh ran");
    promoted_after
}

/// A store that reaches a replica fails its check, saying so, instead of failing requests
/// one by one with `READONLY`; the same store given the sentinels finds the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_on_a_replica_fails_its_check_and_the_sentinels_lead_to_the_primary() {
    let _turn = SERVERS.lock().await;
    redis_ha(&["up"]);
    let (_, replica) = primary_and_replica();
    let mut settings = settings_with(StoreBackend::Redis);
    settings.store.url = format!("redis://127.0.0.1:{replica}/0").into();
    let store = RedisStore::connect(&settings.store, "replica-check".to_owned())
        .await
        .expect("a replica answers");
    let error = store
        .check()
        .await
        .expect_err("a replica is not the primary");
    assert!(error.to_string().contains("reaches a replica"), "{error}");

    settings.store.sentinels = vec!["127.0.0.1:26391".to_owned(), "127.0.0.1:26392".to_owned()];
    settings.store.sentinel_service = "dialex-test".to_owned();
    let store = RedisStore::connect(&settings.store, "replica-check".to_owned())
        .await
        .expect("the sentinels name the primary");
    store.check().await.expect("the primary answers as such");
}
