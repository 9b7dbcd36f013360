//! Chaos runs: many requests through running workers while a test breaks a server, watched
//! the way an operator would (outcomes, `/readyz`), then judged on the three promises: one
//! terminal outcome per request, no callee dialed twice, every `dialed` event carrying its
//! dial's TaskId.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use dialex_devkit::harness::Harness;
use dialex_worker::outcome::Status;
use tokio::time::Instant;

use super::{WAIT, callee, request};

/// Runs `scripts/<script>` with `args`; its output, or a loud failure naming what went wrong
/// (a server that cannot start, a package not installed).
pub fn script(script: &str, args: &[&str]) -> String {
    let path = format!("{}/scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("bash")
        .arg(&path)
        .args(args)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{script} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// What a chaos run saw.
#[derive(Default)]
pub struct Run {
    /// Per request id, every (event id, status) it was published with.
    pub events: HashMap<String, HashSet<(uuid::Uuid, Status)>>,
    task_ids: HashMap<String, String>,
    /// From the workers' start to the last request's first outcome.
    pub seconds: f64,
    /// How long the first worker's `/readyz` answered 503, sampled every 100 ms.
    pub paused: Duration,
    /// Whether a 503 body ever contained what the run expected it to say.
    pub pause_explained: bool,
    /// The longest wait for the next outcome.
    pub longest_silence: Duration,
}

/// Where a run is, as `at` in [`run`] sees it every 100 ms.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Requests with an outcome.
    pub done: usize,
    /// Dials the simulator executed.
    pub dials: usize,
    /// Whether the first worker's `/readyz` answered 200.
    pub ready: bool,
}

/// Publishes `requests` requests named `<prefix>-<i>` (callee [`callee`]`(i)`), starts
/// `workers` workers, and reads outcomes until every request has one, calling `at` every
/// 100 ms to break things mid-run. `pause_says` is what a 503 from `/readyz` should contain.
pub async fn run(
    h: &mut Harness,
    prefix: &str,
    requests: usize,
    workers: usize,
    pause_says: &str,
    mut at: impl FnMut(Progress),
) -> Run {
    for i in 0..requests {
        h.publish_request(&request(&format!("{prefix}-{i}"), &callee(i), "ivr"), None)
            .await
            .expect("request published");
    }
    let started = Instant::now();
    for _ in 0..workers {
        h.start_worker(Harness::demo_credentials())
            .await
            .expect("worker starts");
    }
    let mut run = Run::default();
    let (mut last_outcome, mut last_probe) = (Instant::now(), Instant::now());
    while run.events.len() < requests {
        if let Some(r) = h
            .next_outcome(Duration::from_millis(100))
            .await
            .expect("outcome stream")
        {
            run.longest_silence = run.longest_silence.max(last_outcome.elapsed());
            last_outcome = Instant::now();
            run.note(r.event);
        }
        assert!(
            last_outcome.elapsed() < WAIT,
            "no outcome for {WAIT:?} with {} of {requests} done",
            run.events.len()
        );
        if last_probe.elapsed() >= Duration::from_millis(100) {
            let (status, body) = h.readyz().await.expect("/readyz answers");
            if status == 503 {
                run.paused += last_probe.elapsed();
                run.pause_explained |= body.contains(pause_says);
            }
            last_probe = Instant::now();
            at(Progress {
                done: run.events.len(),
                dials: h.simulator.dial_count(),
                ready: status == 200,
            });
        }
    }
    run.seconds = started.elapsed().as_secs_f64();
    run
}

impl Run {
    fn note(&mut self, event: dialex_worker::outcome::OutcomeEvent) {
        if let Some(task_id) = &event.task_id {
            self.task_ids
                .insert(event.request_id.clone(), task_id.clone());
        }
        self.events
            .entry(event.request_id)
            .or_default()
            .insert((event.event_id, event.status));
    }

    /// Reads the duplicates of outcomes still on their way (until none comes for 2 s), then
    /// asserts the three promises for `requests` requests named `<prefix>-<i>`, and that the
    /// request queue ends empty. Returns the count of each status.
    pub async fn judge(
        &mut self,
        h: &mut Harness,
        prefix: &str,
        requests: usize,
    ) -> BTreeMap<String, usize> {
        while let Some(r) = h
            .next_outcome(Duration::from_secs(2))
            .await
            .expect("outcome stream")
        {
            self.note(r.event);
        }
        super::assert_request_queue_drains(h).await;
        let dials = h.simulator.dials();
        let mut per_callee: HashMap<&str, Vec<&str>> = HashMap::new();
        for d in &dials {
            per_callee
                .entry(d.callee.as_str())
                .or_default()
                .push(d.task_id.as_str());
        }
        let dialed_twice = per_callee.values().filter(|t| t.len() > 1).count();
        assert_eq!(dialed_twice, 0, "a customer was rung twice");
        let conflicting = self.events.values().filter(|set| set.len() > 1).count();
        assert_eq!(conflicting, 0, "a request got two different outcomes");
        let mut statuses = BTreeMap::new();
        for i in 0..requests {
            let id = format!("{prefix}-{i}");
            let Some((_, status)) = self.events[&id].iter().next() else {
                unreachable!("a request is in the map once it has an outcome")
            };
            *statuses.entry(format!("{status:?}")).or_default() += 1;
            if *status == Status::Dialed {
                let dialed = per_callee.get(callee(i).as_str()).map(|t| t[0]);
                assert_eq!(
                    self.task_ids.get(&id).map(String::as_str),
                    dialed,
                    "{id}'s event carries its dial's TaskId"
                );
            }
        }
        statuses
    }

    /// One line for the test's output: what the run saw.
    pub fn report(&self, name: &str, statuses: &BTreeMap<String, usize>, dials: usize) {
        println!(
            "{name}: {} requests, outcomes {statuses:?}, {dials} dials, {:.1} s, /readyz 503 for {:.1} s, longest wait between outcomes {:.1} s",
            self.events.len(),
            self.seconds,
            self.paused.as_secs_f64(),
            self.longest_silence.as_secs_f64()
        );
    }
}
