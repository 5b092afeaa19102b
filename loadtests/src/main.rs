//! `cargo xtask bench`: Paddock's benchmarks, each printed beside a baseline
//! measured in the same run on the same machine.
//!
//! - `sandbox-start`: median time from a worker's claim to the agent's first
//!   instruction (checkout, tar, network + firewall, hardened container,
//!   read-back, upload, proxy, exec), against `docker run --rm <image> true`.
//! - `gateway`: latency added by the model gateway (token check, redaction,
//!   forwarding) at a fixed request rate, against the emulated provider
//!   called directly in the same run; and redaction throughput in MB/s.

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
    if all || which.iter().any(|w| w == "gateway") {
        gateway().await;
    }
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Sends `total` requests at `rate` per second (open model: each request
/// leaves at its scheduled time whatever the others do, and its latency is
/// counted from that time, so queueing is not hidden) and returns latencies
/// in ms.
async fn fixed_rate(client: &reqwest::Client, url: &str, token: &str, body: &str, rate: u32, total: u32) -> Vec<f64> {
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i;
        let (client, url, token, body) = (client.clone(), url.to_owned(), token.to_owned(), body.to_owned());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(scheduled).await;
            let response = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let ok = match response {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            assert!(ok, "request failed");
            scheduled.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut latencies = Vec::with_capacity(total as usize);
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    latencies
}

async fn gateway() {
    use std::sync::Arc;
    use worker::gateway::{GatewayServer, Redactor, RunGateway, mint_token, token_hash};

    let providers = tests::providers::EmulatedProviders::start().await;
    let queue = tests::fixtures::fresh_queue(None, false).await;
    let run = common::RunId::new();
    let token = mint_token().unwrap();
    let grant = worker::queue::GatewayGrant { run, tenant: "bench".to_owned() };
    queue.put_gateway_token(&token_hash(&token), &grant, Duration::from_secs(600)).await.unwrap();
    let mut config = common::config::GatewayConfig::default();
    let provider: common::config::ProviderConfig = serde_json::from_value(json!({
        "kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-test"]
    }))
    .unwrap();
    config.providers.insert("emulated".to_owned(), provider);
    config.allowed_providers = vec!["emulated".to_owned()];
    let redactor = Redactor::new(&[providers.key.clone(), token.clone()], b"bench");
    config.run_requests_per_minute = 0;
    let gateway = Arc::new(RunGateway::new(run, "bench".to_owned(), token_hash(&token), config, queue, redactor));
    let server = GatewayServer::start("127.0.0.1:0".parse().unwrap(), gateway).await.unwrap();

    let transcript = realistic_transcript(2 << 20);
    let prompt = &transcript[..4096];
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}).to_string();
    let client = reqwest::Client::new();
    let direct_url = format!("{}/chat/completions", providers.base_url);
    let gateway_url = format!("http://{}/v1/chat/completions", server.address);
    let (rate, total) = (100, 1000);
    // Warm both paths, then measure them in turn.
    fixed_rate(&client, &direct_url, &providers.key, &body, rate, 50).await;
    fixed_rate(&client, &gateway_url, &token, &body, rate, 50).await;
    let direct = fixed_rate(&client, &direct_url, &providers.key, &body, rate, total).await;
    let through = fixed_rate(&client, &gateway_url, &token, &body, rate, total).await;
    let (d50, d99) = (percentile(&direct, 50.0), percentile(&direct, 99.0));
    let (g50, g99) = (percentile(&through, 50.0), percentile(&through, 99.0));

    let redactor = Redactor::new(&[providers.key.clone(), token.clone()], b"bench");
    let started = Instant::now();
    let mut bytes = 0usize;
    while started.elapsed() < Duration::from_secs(3) {
        let (out, _) = redactor.redact(&transcript);
        bytes += transcript.len();
        assert!(!out.is_empty());
    }
    let mb_per_s = bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64();

    println!("| benchmark | Paddock | baseline | added | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| gateway p50 at {rate} req/s, 4 KiB prompts | {g50:.2} ms | provider direct: {d50:.2} ms | +{:.2} ms | {:.2}× |",
        g50 - d50,
        g50 / d50
    );
    println!(
        "| gateway p99 at {rate} req/s, 4 KiB prompts | {g99:.2} ms | provider direct: {d99:.2} ms | +{:.2} ms | {:.2}× |",
        g99 - d99,
        g99 / d99
    );
    println!("| redaction throughput (2 MiB agent transcript) | {mb_per_s:.1} MB/s | | | |");
    println!(
        "{}",
        json!({
            "benchmark": "gateway", "rate_per_s": rate, "requests": total,
            "direct_p50_ms": d50, "direct_p99_ms": d99, "gateway_p50_ms": g50, "gateway_p99_ms": g99,
            "redaction_mb_per_s": mb_per_s, "measured_at_ms": now_ms(),
        })
    );
    drop(server);
    providers.stop().await;
}

/// Agent-transcript-like text: code, shell output, JSON tool calls, and a
/// few secrets, repeated to `size` bytes.
fn realistic_transcript(size: usize) -> String {
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
