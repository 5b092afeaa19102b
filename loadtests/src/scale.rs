//! Scale: 10,000 queued and 1,000 running runs across several worker
//! processes. The workers are this binary (`loadtests scale-worker`): the
//! real `RunBackend`, leases and heartbeats, with a task that holds its slot
//! (no sandbox) for the whole measurement. Measured: Redis load (commands
//! and CPU per second) from heartbeats and claims while everything is
//! queued or running, API latency while it runs, and worker memory per
//! running run. Baselines: `redis-benchmark` on the same Redis, the same
//! API idle.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use common::{Priority, RunId, StopReason};
use serde_json::json;
use store::{ClaimedRun, Outcome, RunQueue};
use worker::backend::RunBackend;
use worker::leases::Leases;

use crate::load::fixed_rate;
use crate::scheduling::commands_processed;
use crate::{Report, Row};

const QUEUED: u32 = 10_000;
const PROCESSES: u32 = 4;
const SLOTS: u32 = 250;
const HOLD: Duration = Duration::from_secs(40);

struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub async fn run() -> Report {
    let app = Arc::new(tests::spawn_app(&[]).await);
    let namespace = app.config.redis.namespace.clone();
    let started = Instant::now();
    for i in 0..QUEUED {
        let spec = tests::fixtures::run_spec(&format!("t{}", i % 50), &format!("acme/r{}", i % 500), Priority::Normal);
        tests::fixtures::enqueue(&app.queue, RunId::new(), &spec, 3, None).await.expect("enqueue");
    }
    let enqueue_seconds = started.elapsed().as_secs_f64();
    let probe = app.create_run("acme/probe", "probe").await;
    // The runs' request events shipped to the trail first: the baselines
    // are of an API whose shipper is idle too.
    app.shipped().await;

    // The API and Redis idle: the baselines.
    let idle_api = api_latency(&app, &probe).await;
    let idle_redis = redis_load(Duration::from_secs(5)).await;

    let exe = std::env::current_exe().expect("own path");
    let children: Vec<Child> = (0..PROCESSES)
        .map(|p| {
            Command::new(&exe)
                .args([
                    "scale-worker",
                    &namespace,
                    &format!("scale-{p}"),
                    &SLOTS.to_string(),
                    &HOLD.as_secs().to_string(),
                ])
                .envs(tests::services::endpoint_vars())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("start a scale worker")
        })
        .collect();
    let workers = Workers(children);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_idle: Vec<u64> = workers.0.iter().map(|c| rss_kb(c.id())).collect();
    let want = i64::from(PROCESSES * SLOTS);
    loop {
        let depth = app.queue.depth().await.expect("depth");
        if depth.totals.get("running").copied().unwrap_or(0) >= want {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "slots did not fill: {depth:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let busy_redis = redis_load(Duration::from_secs(10)).await;
    let busy_api = api_latency(&app, &probe).await;
    let rss_busy: Vec<u64> = workers.0.iter().map(|c| rss_kb(c.id())).collect();
    let depth = app.queue.depth().await.expect("depth");
    drop(workers);
    let capacity = crate::scheduling::redis_benchmark("set");
    let per_run_kb = (rss_busy.iter().sum::<u64>() as f64 - rss_idle.iter().sum::<u64>() as f64) / want as f64;
    let running = depth.totals.get("running").copied().unwrap_or(0);
    let queued = depth.totals.get("queued").copied().unwrap_or(0);
    Report {
        name: "scale",
        rows: vec![
            Row::per_second(
                &format!("Redis commands with {running} running, {queued} queued ({PROCESSES} worker processes)"),
                busy_redis.0,
                "redis-benchmark SET capacity",
                capacity,
            ),
            Row::plain(
                "Redis CPU while at scale (heartbeats, claims)",
                format!("{:.1}% of a core (idle {:.1}%)", busy_redis.1 * 100.0, idle_redis.1 * 100.0),
            ),
            Row::ms("GET /v1/runs/{id} p99 at 50 req/s during scale", busy_api.0, "same API idle", idle_api.0),
            Row::ms("POST /v1/runs p99 at 50 req/s during scale", busy_api.1, "same API idle", idle_api.1),
            Row::plain("worker memory per running run (RSS, no sandbox)", format!("{per_run_kb:.0} KiB")),
        ],
        data: json!({
            "queued_at_start": QUEUED, "processes": PROCESSES, "slots_per_process": SLOTS,
            "enqueue_seconds": enqueue_seconds, "running": running, "queued": queued,
            "redis_commands_per_s": busy_redis.0, "redis_commands_per_s_idle": idle_redis.0,
            "redis_benchmark_set_per_second": capacity,
            "redis_cpu_share": busy_redis.1, "redis_cpu_share_idle": idle_redis.1,
            "api_get_p99_ms": busy_api.0, "api_get_p99_ms_idle": idle_api.0,
            "api_post_p99_ms": busy_api.1, "api_post_p99_ms_idle": idle_api.1,
            "worker_rss_kb_idle": rss_idle, "worker_rss_kb_busy": rss_busy, "worker_kb_per_running_run": per_run_kb,
        }),
    }
}

/// p99 of GET and POST at a fixed 50 req/s for 6 s each.
async fn api_latency(app: &Arc<tests::TestApp>, probe: &str) -> (f64, f64) {
    let client = reqwest::Client::new();
    let get = {
        let (app, client, url) = (app.clone(), client.clone(), app.url(&format!("/v1/runs/{probe}")));
        move |_| {
            let (app, client, url) = (app.clone(), client.clone(), url.clone());
            async move { client.get(&url).bearer_auth(&app.token).send().await.is_ok_and(|r| r.status().is_success()) }
        }
    };
    let post = {
        let (app, client) = (app.clone(), client.clone());
        move |i: u32| {
            let (app, client) = (app.clone(), client.clone());
            async move {
                let body =
                    json!({"repository": "acme/during", "base_ref": "main", "task": {"title": format!("during {i}")}});
                let sent = client.post(app.url("/v1/runs")).bearer_auth(&app.token).json(&body).send().await;
                sent.is_ok_and(|r| r.status().as_u16() == 202)
            }
        }
    };
    let got = fixed_rate(50, 300, get).await;
    let posted = fixed_rate(50, 300, post).await;
    assert_eq!(got.errors + posted.errors, 0, "the API failed requests at scale");
    (got.p99, posted.p99)
}

/// Commands per second and the share of a core Redis used over `window`.
async fn redis_load(window: Duration) -> (f64, f64) {
    let (commands, cpu) = (commands_processed(), redis_cpu());
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let seconds = started.elapsed().as_secs_f64();
    ((commands_processed() - commands) as f64 / seconds, (redis_cpu() - cpu) / seconds)
}

fn redis_cpu() -> f64 {
    let out = Command::new("redis-cli").args(["-p", "6390", "info", "cpu"]).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum()
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_owned()))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `loadtests scale-worker <namespace> <name> <slots> <hold seconds>`: a
/// worker process that claims runs and holds each for `hold`, heartbeating.
pub async fn worker_process(args: &[String]) {
    let [namespace, name, slots, hold] = args else { panic!("scale-worker <namespace> <name> <slots> <hold>") };
    let mut vars = tests::services::endpoint_vars();
    vars.push(("PADDOCK_REDIS__NAMESPACE".to_owned(), namespace.clone()));
    let config = platform::config::load(None, vars).expect("config");
    let queue = RunQueue::connect(&config.redis, &platform::outbound::Outbound::system()).await.expect("redis");
    let (slots, hold): (usize, u64) = (slots.parse().expect("slots"), hold.parse().expect("hold"));
    let leases = Leases::default();
    let lease = Duration::from_secs(30);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(leases.clone().keep_alive(queue.clone(), name.clone(), lease, Duration::from_secs(10), stop.clone()));
    // Idle first, so the parent can read this process's base memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = (queue.clone(), leases, Duration::from_secs(hold));
    let name = name.clone();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    tokio::spawn(worker::backend::listen_for_wakes(queue.clone(), wake.clone(), stop.clone()));
    let monitor = Monitor::new().register(move |_| {
        let (poll, stopping) = (Duration::from_millis(200), stop.clone());
        let backend = RunBackend::new(queue.clone(), name.clone(), lease, poll, slots, wake.clone(), stopping);
        WorkerBuilder::new(name.clone()).backend(backend).data(state.clone()).concurrency(slots).build(hold_slot)
    });
    let _ = monitor
        .run_with_signal(async {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(())
        })
        .await;
}

async fn hold_slot(
    run: ClaimedRun,
    state: apalis_core::task::data::Data<(RunQueue, Leases, Duration)>,
) -> Result<(), apalis_core::error::BoxDynError> {
    let (queue, leases, hold) = &*state;
    let guard = leases.hold(&run);
    tokio::time::sleep(*hold).await;
    drop(guard);
    let done = Outcome::Done { reason: StopReason::Completed, artifacts: Vec::new(), facts: None };
    queue.finish(&run, &done).await?;
    Ok(())
}
