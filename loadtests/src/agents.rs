//! `agents`: for each shipped agent, the time from a worker's claim to the
//! agent's first model call through the gateway (the run's first call
//! record), beside `docker run --rm <image> true` for the same image, and
//! the image's size.

use std::process::Command;

use serde_json::{Value, json};
use tests::scripted::Step;

use crate::{Report, Row, median};

/// Runs per agent (each starts a real agent in a real sandbox).
const RUNS: usize = 3;

pub async fn run() -> Report {
    let mut rows = Vec::new();
    let mut data = serde_json::Map::new();
    let mut to_exec = Vec::new();
    for (agent, pinned) in tests::agents::pinned_agents() {
        let version = pinned["version"].as_str().unwrap_or_default().to_owned();
        let image = tests::agents::shipped_profile(&agent)["image"].as_str().unwrap_or_default().to_owned();
        let (ours, base, size, exec) = measure(&agent, &image).await;
        let (paddock, baseline) = (median(ours.clone()), median(base.clone()));
        to_exec.push(format!("{agent} {:.0}", median(exec.clone())));
        rows.push(Row::ms(
            &format!(
                "{agent} {version}: claim → first model call (median of {RUNS}; image {:.2} GB)",
                size as f64 / 1e9
            ),
            paddock,
            "`docker run --rm <image> true`",
            baseline,
        ));
        data.insert(
            agent,
            json!({"version": version, "image": image, "image_bytes": size, "paddock_ms": ours, "baseline_ms": base,
                   "paddock_median_ms": paddock, "baseline_median_ms": baseline, "claim_to_exec_ms": exec}),
        );
    }
    // The rest of each figure is the agent's own start-up.
    rows.push(Row::plain("of which Paddock's: claim → agent process started (median ms)", to_exec.join(", ")));
    Report { name: "agents", rows, data: Value::Object(data) }
}

/// Claim → first call for `RUNS` runs of `agent`, `docker run` of its
/// image as often, the image's size in bytes, and claim → the agent's
/// process started (the run's phases up to `exec_started`).
async fn measure(agent: &str, image: &str) -> (Vec<f64>, Vec<f64>, u64, Vec<f64>) {
    let providers = tests::providers::EmulatedProviders::start().await;
    // The model has nothing to ask: the agent's first call is its last.
    providers.plan(&[Step::Say("Nothing needs to change.".to_owned())]);
    // Each run takes a warm sandbox of the agent's image, as a worker with
    // the default pool gives it (refilled while the previous run goes).
    let extra = [
        ("PADDOCK_WORKER__CONCURRENCY", "1"),
        ("PADDOCK_SANDBOX__TIMEOUT_SECONDS", "300"),
        ("PADDOCK_SANDBOX__WARM_POOL", "1"),
    ];
    let (app, repo) = tests::agents::agent_app(agent, &providers, &extra).await;
    let worker = app.spawn_worker().await;
    let (mut ours, mut exec) = (Vec::new(), Vec::new());
    // One warm-up run: caches hot for both sides.
    for i in 0..=RUNS {
        let id = app.create_run_as(&repo, &format!("bench {i}"), agent).await;
        let run = app.wait_until_finished(&id).await;
        let logs = app.logs_of(&run).await;
        assert_eq!(run["state"], "succeeded", "{agent}: {run:#}\n{logs}");
        let record = app.queue.get(id.parse().unwrap()).await.unwrap().unwrap();
        let claimed_ms = record.started_at_ms.unwrap() as f64;
        let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
        let first = summary["model_calls"]
            .as_array()
            .and_then(|c| c.iter().filter_map(|c| c["at_ms"].as_f64()).reduce(f64::min));
        let first = first.unwrap_or_else(|| panic!("{agent} made no model call:\n{logs}"));
        let phases = summary["phases_ms"].as_array().cloned().unwrap_or_default();
        let until = phases.iter().position(|p| p[0] == "exec_started").map_or(0, |i| i + 1);
        let started: f64 = phases[..until].iter().filter_map(|p| p[1].as_f64()).sum();
        if i > 0 {
            ours.push(first - claimed_ms);
            exec.push(started);
        }
    }
    worker.shutdown().await;
    providers.stop().await;
    let base = crate::docker_run_ms(image, RUNS);
    let size = Command::new("docker").args(["image", "inspect", "--format", "{{.Size}}", image]).output().unwrap();
    let size = String::from_utf8_lossy(&size.stdout).trim().parse().unwrap_or(0);
    (ours, base, size, exec)
}
