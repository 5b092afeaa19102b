//! `cargo xtask bench`: Paddock's benchmarks, each printed beside a baseline
//! measured in the same run on the same machine.
//!
//! - `sandbox-start`: median time from a worker's claim to the agent's first
//!   instruction (checkout, tar, network + firewall, hardened container,
//!   read-back, upload, proxy, exec), against `docker run --rm <image> true`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

const RUNS: usize = 10;

#[tokio::main]
async fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    if all || which.iter().any(|w| w == "sandbox-start") {
        sandbox_start().await;
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 }
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

async fn sandbox_start() {
    // The agent's first instruction prints the time it ran, in ms.
    let app = tests::spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo first-instruction-ms=$(($(date +%s%N) / 1000000))"),
        ("PADDOCK_WORKER__CONCURRENCY", "1"),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# bench\n")]);
    let worker = app.spawn_worker().await;
    // One warm-up run so the image and caches are hot for both sides.
    let warm = app.create_run(&repo, "warm-up").await;
    app.wait_until_finished(&warm).await;

    let mut paddock = Vec::new();
    for i in 0..RUNS {
        let id = app.create_run(&repo, &format!("bench {i}")).await;
        let run = app.wait_until_finished(&id).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
        let record = app.queue.get(id.parse().unwrap()).await.unwrap().unwrap();
        let claimed_ms = record.started_at_ms.unwrap() as f64;
        let logs = app.logs_of(&run).await;
        let first: f64 = logs
            .lines()
            .find_map(|l| l.strip_prefix("first-instruction-ms="))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no timestamp in the log:\n{logs}"));
        paddock.push(first - claimed_ms);
    }
    worker.shutdown().await;

    let image = &app.config.sandbox.image;
    let mut baseline = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let status = Command::new("docker").args(["run", "--rm", image, "true"]).status().unwrap();
        assert!(status.success());
        baseline.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let (ours, base) = (median(paddock.clone()), median(baseline.clone()));
    let ratio = ours / base;
    println!("| benchmark | Paddock (median) | baseline (median) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| sandbox start: claim → agent's first instruction | {ours:.0} ms | `docker run --rm {image} true`: {base:.0} ms | {ratio:.2}× |"
    );
    let result = json!({
        "benchmark": "sandbox_start",
        "runs": RUNS,
        "paddock_ms": paddock,
        "baseline_ms": baseline,
        "paddock_median_ms": ours,
        "baseline_median_ms": base,
        "ratio": ratio,
        "measured_at_ms": now_ms(),
    });
    println!("{result}");
    // Keep the harness's temp files tidy before exiting.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
