//! Scheduling overhead: runs per second from enqueue to finished through
//! the real queue scripts (enqueue, claim with fair scheduling, finish),
//! apalis workers over `RunBackend` whose task starts no sandbox and
//! finishes the run at once (this task function exists only here); Redis
//! commands per run; against `redis-benchmark` on the same server.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use common::{Priority, RunId, StopReason};
use futures::StreamExt;
use serde_json::json;
use store::{ClaimedRun, Outcome, RunQueue};
use worker::backend::RunBackend;

use crate::{Report, Row};

const RUNS: u32 = 3000;
const WORKERS: u32 = 4;
const CONCURRENCY: usize = 8;
/// Requests accepting runs at once.
const ENQUEUE_CONCURRENCY: usize = 64;

/// The queue, and how many runs the workers finished (counted here, as the
/// BullMQ peer counts its completions, so watching costs Redis nothing).
type State = (RunQueue, Arc<AtomicU32>);

/// The task that starts nothing: it hands the run back as completed.
async fn finish_at_once(
    run: ClaimedRun,
    state: apalis_core::task::data::Data<State>,
) -> Result<(), apalis_core::error::BoxDynError> {
    let done = Outcome::Done { reason: StopReason::Completed, artifacts: Vec::new(), facts: None };
    let (queue, finished) = &*state;
    queue.finish(&run, &done).await?;
    finished.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

pub async fn run() -> Report {
    let queue = tests::fixtures::fresh_queue(None, false).await;
    let before = commands_processed();
    let calls_before = command_calls();
    let started = Instant::now();
    // As the API enqueues under load: many requests at once.
    futures::stream::iter(0..RUNS)
        .for_each_concurrent(ENQUEUE_CONCURRENCY, |i| {
            let queue = queue.clone();
            async move {
                let spec =
                    tests::fixtures::run_spec(&format!("t{}", i % 20), &format!("acme/r{}", i % 100), Priority::Normal);
                tests::fixtures::enqueue(&queue, RunId::new(), &spec, 3, None).await.expect("enqueue");
            }
        })
        .await;
    let enqueued = started.elapsed();
    let mut monitor = Monitor::new();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(worker::backend::listen_for_wakes(queue.clone(), wake.clone(), stop.clone()));
    let finished = Arc::new(AtomicU32::new(0));
    for w in 0..WORKERS {
        let (queue, wake, finished) = (queue.clone(), wake.clone(), finished.clone());
        monitor = monitor.register(move |_| {
            let backend = RunBackend::new(
                queue.clone(),
                format!("bench-{w}"),
                Duration::from_secs(60),
                Duration::from_millis(20),
                CONCURRENCY,
                wake.clone(),
                tokio_util::sync::CancellationToken::new(),
            );
            WorkerBuilder::new(format!("bench-{w}"))
                .backend(backend)
                .data((queue.clone(), finished.clone()))
                .concurrency(CONCURRENCY)
                .build(finish_at_once)
        });
    }
    let stopping = stop.clone();
    let monitor = tokio::spawn(monitor.run_with_signal(async move {
        stopping.cancelled().await;
        Ok(())
    }));
    while finished.load(Ordering::Relaxed) < RUNS {
        assert!(started.elapsed() < Duration::from_secs(300), "runs did not finish: {:?}", queue.depth().await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();
    let commands = commands_processed().saturating_sub(before) as f64 / f64::from(RUNS);
    let by_command = per_run(&calls_before, RUNS);
    stop.cancel();
    let _ = monitor.await;
    let depth = queue.depth().await.expect("depth");
    assert_eq!(depth.totals.get("succeeded").copied(), Some(i64::from(RUNS)), "{depth:?}");
    let runs_per_second = f64::from(RUNS) / total.as_secs_f64();
    let set_per_second = redis_benchmark("set");
    let evalsha_cost = set_per_second / runs_per_second;
    let bullmq = bullmq();
    let what = format!("runs enqueued → claimed → finished ({WORKERS}×{CONCURRENCY} slots, no sandbox)");
    let peer = format!("BullMQ {} jobs added → processed → completed, same Redis, same slots", bullmq.version);
    Report {
        name: "scheduling",
        rows: vec![
            Row::per_second(&what, runs_per_second, &peer, bullmq.jobs_per_second),
            Row::per_second(&what, runs_per_second, "redis-benchmark SET", set_per_second),
            Row {
                what: "Redis commands per run (scripts' inner commands included)".to_owned(),
                paddock: format!("{commands:.1}"),
                baseline: format!("BullMQ per job: {:.1}", bullmq.redis_commands_per_job),
                ratio: format!("{:.2}×", commands / bullmq.redis_commands_per_job),
            },
        ],
        data: json!({
            "runs": RUNS, "workers": WORKERS, "concurrency": CONCURRENCY, "enqueue_concurrency": ENQUEUE_CONCURRENCY,
            "enqueue_seconds": enqueued.as_secs_f64(), "total_seconds": total.as_secs_f64(),
            "runs_per_second": runs_per_second, "redis_commands_per_run": commands,
            "redis_commands_per_run_by_name": by_command.iter().map(|(n, c)| json!([n, (c * 100.0).round() / 100.0])).collect::<Vec<_>>(),
            "redis_benchmark_set_per_second": set_per_second, "set_equivalents_per_run": evalsha_cost,
            "bullmq": bullmq.raw,
        }),
    }
}

struct BullMq {
    version: String,
    jobs_per_second: f64,
    redis_commands_per_job: f64,
    raw: serde_json::Value,
}

/// BullMQ doing the same on the same Redis (`loadtests/peers/bullmq.cjs`):
/// as many jobs added one at a time, then as many workers and slots taking
/// them, a job that does nothing, completed.
fn bullmq() -> BullMq {
    let dir = std::env::var("PADDOCK_BENCH_BULLMQ")
        .expect("PADDOCK_BENCH_BULLMQ names BullMQ's install (cargo xtask bench sets it)");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/bullmq.cjs");
    let out = std::process::Command::new("node")
        .arg(script)
        .args(["6390", &RUNS.to_string(), &WORKERS.to_string(), &CONCURRENCY.to_string()])
        .arg(ENQUEUE_CONCURRENCY.to_string())
        .env("NODE_PATH", std::path::Path::new(&dir).join("node_modules"))
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "BullMQ's run failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let raw: serde_json::Value = serde_json::from_str(text.trim()).expect("BullMQ's figures");
    BullMq {
        version: raw["version"].as_str().unwrap_or_default().to_owned(),
        jobs_per_second: raw["jobs_per_second"].as_f64().expect("jobs_per_second"),
        redis_commands_per_job: raw["redis_commands_per_job"].as_f64().expect("redis_commands_per_job"),
        raw,
    }
}

/// `total_commands_processed` of the shared Redis.
/// Calls per command name so far (`INFO commandstats`), scripts' inner
/// commands included.
pub(crate) fn command_calls() -> std::collections::BTreeMap<String, u64> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", "6390", "info", "commandstats"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// What each command name cost per run between two `command_calls`, most first.
pub(crate) fn per_run(before: &std::collections::BTreeMap<String, u64>, runs: u32) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = command_calls()
        .into_iter()
        .map(|(name, calls)| {
            let n = calls.saturating_sub(before.get(&name).copied().unwrap_or(0));
            (name, n as f64 / f64::from(runs))
        })
        .filter(|(_, n)| *n >= 0.05)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

pub fn commands_processed() -> u64 {
    let out =
        std::process::Command::new("redis-cli").args(["-p", "6390", "info", "stats"]).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Requests per second `redis-benchmark` gets for `command` (one client
/// connection per core's worth, no pipelining), against the same server.
pub fn redis_benchmark(command: &str) -> f64 {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", "6390", "-n", "50000", "-c", "8", "-q", "-t", command])
        .output()
        .expect("redis-benchmark (from the redis-tools package) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "SET: 61349.69 requests per second, p50=0.071 msec"
    text.split(['\r', '\n'])
        .filter_map(|l| l.split_once(": ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"))
}
