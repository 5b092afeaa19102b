//! `cargo xtask bench [NAME...]`: Paddock's benchmarks, each printed beside
//! a baseline measured in the same run on the same machine. Writes
//! `loadtests/results/latest.json` and `latest.md` (for a subset,
//! `<names>.json` and `.md`, e.g. `agents.md`).
//!
//! - `api`: `POST /v1/runs` and `GET /v1/runs/{id}` at a fixed offered rate
//!   and at saturation, against a bare actix-web handler.
//! - `scheduling`: runs per second through the real queue scripts with a
//!   task that starts no sandbox, and Redis commands per run, against
//!   `redis-benchmark`.
//! - `scale`: 10,000 queued and 1,000 running runs across four worker
//!   processes: Redis load from heartbeats and claims, API latency while it
//!   runs, worker memory per running run.
//! - `sandbox-start`: median time from a worker's claim to the agent's first
//!   instruction, from the warm pool and cold, against
//!   `docker run --rm <image> true`.
//! - `gateway`: latency added by the model gateway at 1,000 requests a
//!   second, against the emulated provider called directly, and at a rate
//!   LiteLLM's proxy sustains, beside LiteLLM before the same provider.
//! - `redaction`: the redactor's throughput on one core.
//! - `agents`: per shipped agent, claim → its first model call, against
//!   `docker run --rm <image> true`, with the image's size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod api;
mod load;
mod model_gateway;
mod scale;
mod scheduling;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const RUNS: usize = 10;

/// One benchmark's outcome: table rows and the raw figures.
pub struct Report {
    pub name: &'static str,
    pub rows: Vec<Row>,
    pub data: Value,
}

/// A line of the table: Paddock's figure beside its baseline.
pub struct Row {
    pub what: String,
    pub paddock: String,
    pub baseline: String,
    pub ratio: String,
}

impl Row {
    /// Latencies: the added time and the ratio.
    pub fn ms(what: &str, ours: f64, baseline: &str, base: f64) -> Self {
        Self {
            what: what.to_owned(),
            paddock: format!("{ours:.2} ms"),
            baseline: format!("{baseline}: {base:.2} ms"),
            ratio: format!("{:.2}× ({:+.2} ms)", ours / base, ours - base),
        }
    }

    /// Rates: Paddock's share of the baseline.
    pub fn per_second(what: &str, ours: f64, baseline: &str, base: f64) -> Self {
        Self {
            what: what.to_owned(),
            paddock: format!("{ours:.0}/s"),
            baseline: format!("{baseline}: {base:.0}/s"),
            ratio: format!("{:.3}×", ours / base),
        }
    }

    pub fn plain(what: &str, value: String) -> Self {
        Self { what: what.to_owned(), paddock: value, baseline: String::new(), ratio: String::new() }
    }
}

const ALL: &[&str] = &["api", "scheduling", "scale", "sandbox-start", "gateway", "redaction", "agents"];

#[tokio::main]
async fn main() {
    // The bench prints its own figures; Paddock's per-call lines only on
    // RUST_LOG=info.
    platform::telemetry::init_with(platform::telemetry::Format::Text, "warn");
    let mut which: Vec<String> = std::env::args().skip(1).collect();
    if which.first().map(String::as_str) == Some("scale-worker") {
        return scale::worker_process(&which[1..]).await;
    }
    if which.is_empty() {
        which = ALL.iter().map(|s| (*s).to_owned()).collect();
    }
    let started = Instant::now();
    let mut reports = Vec::new();
    for name in &which {
        eprintln!("loadtests: {name}");
        let report = match name.as_str() {
            "api" => api::run().await,
            "scheduling" => scheduling::run().await,
            "scale" => scale::run().await,
            "sandbox-start" => sandbox_start().await,
            "gateway" => model_gateway::run().await,
            "redaction" => redaction(),
            "agents" => agents::run().await,
            other => panic!("unknown benchmark {other}; known: {ALL:?}"),
        };
        print!("{}", table(std::slice::from_ref(&report)));
        reports.push(report);
    }
    // A subset goes to its own files, leaving the full set's alone.
    let stem = if which.len() == ALL.len() { "latest".to_owned() } else { which.join("+") };
    write_results(&stem, &reports, started.elapsed());
}

fn table(reports: &[Report]) -> String {
    let mut out = String::from("| benchmark | Paddock | baseline | ratio |\n|---|---|---|---|\n");
    for row in reports.iter().flat_map(|r| &r.rows) {
        out.push_str(&format!("| {} | {} | {} | {} |\n", row.what, row.paddock, row.baseline, row.ratio));
    }
    out
}

/// `loadtests/results/<stem>.json` (raw figures) and `<stem>.md` (the table).
fn write_results(stem: &str, reports: &[Report], took: Duration) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results");
    std::fs::create_dir_all(&dir).expect("results dir");
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned)))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let json = json!({
        "measured_at_ms": now_ms(), "seconds": took.as_secs_f64(), "cpu": machine, "cores": cores,
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "benchmarks": reports.iter().map(|r| (r.name.to_owned(), r.data.clone())).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(dir.join(format!("{stem}.json")), serde_json::to_string_pretty(&json).unwrap() + "\n")
        .expect("write json");
    let md = format!(
        "Measured {} on {cores} cores ({machine}), {} build, in {:.0} s.\n\n{}",
        time_label(),
        if cfg!(debug_assertions) { "debug" } else { "release" },
        took.as_secs_f64(),
        table(reports)
    );
    std::fs::write(dir.join(format!("{stem}.md")), md).expect("write markdown");
    eprintln!(
        "loadtests: wrote {} and {stem}.md in {:.0} s",
        dir.join(format!("{stem}.json")).display(),
        took.as_secs_f64()
    );
}

fn time_label() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]).output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
}

/// Redaction on one core: the gateway's redactor (a provider key and a run
/// token known, every rule) over an agent transcript with a secret about
/// every 500 bytes, and over the same text without them, each beside one
/// SIMD substring count over the same bytes (the floor of any scan).
pub fn redaction() -> Report {
    use gateway::Redactor;

    let known = [format!("sk-emulated-{}", "k".repeat(32)), format!("pdk_run_{}", "t".repeat(43))];
    let redactor = Redactor::new(&known, b"bench");
    let transcript = realistic_transcript(2 << 20);
    let secrets = transcript.matches("AKIA").count();
    let clean = transcript.replace("AKIA", "AKIa");
    // GB/s of `work` over `text`, for at least two seconds.
    let rate = |text: &str, work: &dyn Fn(&str) -> usize| {
        let started = Instant::now();
        let (mut bytes, mut seen) = (0usize, 0usize);
        while started.elapsed() < Duration::from_secs(2) {
            seen += work(text);
            bytes += text.len();
        }
        assert!(seen > 0 || !text.contains("AKIA"));
        bytes as f64 / 1e9 / started.elapsed().as_secs_f64()
    };
    let (out, counts) = redactor.redact(&transcript);
    assert!(!out.contains("AKIAQ") && counts.total() as usize == secrets, "a secret passed: {counts:?}");
    let redacting = |text: &str| redactor.redact(text).1.total() as usize;
    let scanning = |text: &str| memchr::memmem::find_iter(text.as_bytes(), b"AKIA").count() + 1;
    let (with, with_floor) = (rate(&transcript, &redacting), rate(&transcript, &scanning));
    let (without, without_floor) = (rate(&clean, &redacting), rate(&clean, &scanning));
    let every = transcript.len() / secrets.max(1);
    let gbs = |what: &str, ours: f64, floor: f64| Row {
        what: what.to_owned(),
        paddock: format!("{ours:.2} GB/s"),
        baseline: format!("one memmem count over the same bytes: {floor:.2} GB/s"),
        ratio: format!("{:.2}×", ours / floor),
    };
    Report {
        name: "redaction",
        rows: vec![
            gbs(
                &format!(
                    "redaction on one core, 2 MiB agent transcript, a secret every {every} B ({secrets} replaced)"
                ),
                with,
                with_floor,
            ),
            gbs("redaction on one core, the same transcript without secrets", without, without_floor),
        ],
        data: json!({
            "bytes": transcript.len(), "secrets": secrets,
            "gb_per_s": with, "floor_gb_per_s": with_floor,
            "clean_gb_per_s": without, "clean_floor_gb_per_s": without_floor,
        }),
    }
}

/// Agent-transcript-like text: code, shell output, JSON tool calls, and a
/// few secrets, repeated to `size` bytes.
pub fn realistic_transcript(size: usize) -> String {
    let secret = format!("AKIA{}", "Q".repeat(16));
    let block = format!(
        "$ cargo test --workspace\n   Compiling widgets v0.1.0 (/workspace)\n    Finished test [unoptimized] in 3.2s\n\
         running 12 tests\ntest parser::tests::empty ... ok\n\
         {{\"role\":\"assistant\",\"tool_calls\":[{{\"function\":{{\"name\":\"edit\",\"arguments\":\"{{\\\"path\\\":\\\"src/lib.rs\\\"}}\"}}}}]}}\n\
         fn ship(order: &Order) -> Result<Receipt, Error> {{\n    let total = order.items.iter().map(|i| i.price).sum();\n    Ok(Receipt {{ total }})\n}}\n\
         export AWS_ACCESS_KEY_ID={secret}\n"
    );
    block.repeat(size / block.len() + 1)
}

/// `docker run --rm <image> true`, `runs` times: how long each took (ms).
pub fn docker_run_ms(image: &str, runs: usize) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new("docker").args(["run", "--rm", image, "true"]).status().unwrap();
            assert!(status.success(), "docker run {image} failed");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2.0 }
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

pub async fn sandbox_start() -> Report {
    let warm = start_times(true).await;
    let cold = start_times(false).await;
    let image = warm.image.clone();
    let baseline = docker_run_ms(&image, RUNS);
    let base = median(baseline.clone());
    let (ours, cold_ms) = (median(warm.claim_to_first.clone()), median(cold.claim_to_first.clone()));
    let figures = |times: &StartTimes| {
        json!({"paddock_ms": times.claim_to_first, "paddock_median_ms": median(times.claim_to_first.clone()),
               "phase_medians_ms": times.phase_medians().into_iter().map(|(n, ms)| (n, json!(ms))).collect::<serde_json::Map<_, _>>()})
    };
    let data = json!({
        "runs": RUNS, "baseline_ms": baseline, "baseline_median_ms": base,
        "warm": figures(&warm), "cold": figures(&cold), "ratio": ours / base, "cold_ratio": cold_ms / base,
    });
    let breakdown = |times: &StartTimes| {
        times.phase_medians().iter().map(|(n, ms)| format!("{n} {ms:.0}")).collect::<Vec<_>>().join(", ")
    };
    let docker_run = format!("`docker run --rm {image} true`");
    Report {
        name: "sandbox_start",
        rows: vec![
            Row::ms("sandbox start, warm pool: claim → agent's first instruction (median)", ours, &docker_run, base),
            Row::plain("warm start by step (median ms)", breakdown(&warm)),
            Row::ms("sandbox start, cold (no pool member fits): claim → first instruction", cold_ms, &docker_run, base),
            Row::plain("cold start by step (median ms)", breakdown(&cold)),
        ],
        data,
    }
}

/// Claim → the agent's first instruction for `RUNS` runs, and each run's
/// start-up steps, with the worker's warm pool on or off.
struct StartTimes {
    image: String,
    claim_to_first: Vec<f64>,
    phases: Vec<(String, Vec<f64>)>,
}

impl StartTimes {
    fn phase_medians(&self) -> Vec<(String, f64)> {
        self.phases.iter().map(|(name, samples)| (name.clone(), median(samples.clone()))).collect()
    }
}

async fn start_times(warm: bool) -> StartTimes {
    // The agent's first instruction prints the time it ran, in ms.
    let app = tests::spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo first-instruction-ms=$(($(date +%s%N) / 1000000))"),
        ("PADDOCK_WORKER__CONCURRENCY", "1"),
        ("PADDOCK_SANDBOX__WARM_POOL", if warm { "2" } else { "0" }),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# bench\n")]);
    let worker = app.spawn_worker().await;
    // One warm-up run so the image and caches are hot for both sides.
    let warm_up = app.create_run(&repo, "warm-up").await;
    app.wait_until_finished(&warm_up).await;

    let mut claim_to_first = Vec::new();
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for i in 0..RUNS {
        // A run arriving at an idle worker: its pool refilled since the last.
        if warm {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
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
        claim_to_first.push(first - claimed_ms);
        let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
        for phase in summary["phases_ms"].as_array().into_iter().flatten() {
            let (name, ms) = (phase[0].as_str().unwrap_or_default().to_owned(), phase[1].as_f64().unwrap_or_default());
            match phases.iter_mut().find(|(n, _)| *n == name) {
                Some((_, samples)) => samples.push(ms),
                None => phases.push((name, vec![ms])),
            }
        }
    }
    worker.shutdown().await;
    let wanted = if warm { "sandbox_warm" } else { "sandbox" };
    assert!(phases.iter().any(|(n, s)| n == wanted && s.len() == RUNS), "every run started {wanted}: {phases:?}");
    StartTimes { image: app.config.sandbox.image.clone(), claim_to_first, phases }
}
