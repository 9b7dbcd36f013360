//! The benchmark command still runs end to end (a tiny run: its figures mean nothing here).

#[test]
fn the_bench_command_runs_floor_and_worker_and_reports_a_ratio() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dialex-devkit"))
        .args([
            "bench",
            "--requests",
            "200",
            "--rounds",
            "1",
            "--paced-rate",
            "400",
        ])
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for run in [
        "floor ",
        "worker ",
        "floor paced 400/s",
        "worker paced 400/s",
    ] {
        let row = stdout
            .lines()
            .find(|line| line.starts_with(run))
            .unwrap_or_else(|| panic!("no {run:?} row in\n{stdout}"));
        let dialed: usize = row
            .split_whitespace()
            .nth(if run.contains("paced") { 5 } else { 3 })
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no dialed count in {row:?}"));
        assert_eq!(
            dialed,
            if run.contains("paced") { 100 } else { 200 },
            "{row}"
        );
    }
    assert!(stdout.contains("worker / floor throughput over 1 round(s): median"));
}
