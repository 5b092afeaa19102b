//! `cargo xtask demo`: one run end to end on local defaults. Starts a git
//! server with a sample repository, the real `api` and `worker` binaries,
//! requests a run over HTTP, waits for it, and prints what it produced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::{GitServer, services};
use worker::artifacts::{ObjectStore, S3Store};

const AGENT: &str = r#"set -e
echo "task: $PADDOCK_TASK_TITLE"
for f in $(grep -rlE 'teh|recieve' --include='*.md' --include='*.py' .); do
  sed -i -E 's/\bteh\b/the/g; s/recieve/receive/g' "$f"
  echo "fixed spelling in $f"
done
printf -- '- %s\n' "$PADDOCK_TASK_TITLE" >> CHANGELOG.md
python3 -c 'import ast; ast.parse(open("widgets.py").read())' && echo "widgets.py still parses""#;

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let git = GitServer::start().await;
    git.create_repo(
        "acme",
        "widgets",
        &[
            ("README.md", b"# Widgets\n\nWidgets recieve orders and ship teh parts.\n"),
            ("widgets.py", b"def ship(order):\n    \"\"\"Ship teh parts of an order.\"\"\"\n    return order\n"),
        ],
    );
    let token = format!("demo-admin-token-{}", ulid::Ulid::new());
    let port = free_port();
    let mut vars = services::endpoint_vars();
    vars.extend([
        ("PADDOCK_REDIS__NAMESPACE".to_owned(), "demo".to_owned()),
        ("PADDOCK_API__LISTEN".to_owned(), format!("127.0.0.1:{port}")),
        ("PADDOCK_API__BOOTSTRAP_ADMIN_TOKEN".to_owned(), token.clone()),
        ("PADDOCK_GIT__BASE_URL".to_owned(), git.base_url.clone()),
        ("PADDOCK_AGENTS__DEFAULT__COMMAND".to_owned(), AGENT.to_owned()),
        ("PADDOCK_SANDBOX__MEMORY_BYTES".to_owned(), (512u64 << 20).to_string()),
        ("PADDOCK_SANDBOX__TIMEOUT_SECONDS".to_owned(), "300".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    let bin = services::bin_dir();
    let spawn = |name: &str| {
        Command::new(bin.join(name))
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.join(name).display()))
    };
    let _children = Children(vec![spawn("api"), spawn("worker")]);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await?;

    let request = json!({
        "repository": "acme/widgets",
        "base_ref": "main",
        "task": {"title": "Fix spelling mistakes", "body": "Issue #1: the README and docstrings have typos."},
    });
    let accepted = client.post(format!("{base}/v1/runs")).bearer_auth(&token).json(&request).send().await?;
    anyhow::ensure!(accepted.status().as_u16() == 202, "run request refused: {}", accepted.text().await?);
    let location = accepted.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let accepted: Value = accepted.json().await?;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    println!("run requested: {id} ({location})");

    let started = Instant::now();
    let run = loop {
        let run: Value = client.get(format!("{base}{location}")).bearer_auth(&token).send().await?.json().await?;
        if run["state"] == "succeeded" || run["state"] == "failed" {
            break run;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "the run did not finish in 5 minutes: {run}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let elapsed = started.elapsed();
    let config = common::config::Config::load(None, vars.clone())?;
    let store = S3Store::new(&config.s3);
    let keys: Vec<&str> = run["artifacts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    for key in keys.iter().filter(|k| k.ends_with("diff.patch") || k.ends_with("summary.json")) {
        let body = store.get(key).await?.unwrap_or_default();
        println!("\n--- {key} ---\n{}", String::from_utf8_lossy(&body));
    }
    let logs = client.get(format!("{base}/v1/runs/{id}/logs")).bearer_auth(&token).send().await?.text().await?;
    println!("--- logs (GET /v1/runs/{id}/logs) ---\n{logs}");
    println!("=== run {id} ===");
    println!("final state:  {} ({})", run["state"], run["stop_reason"]);
    println!("requested by: {} for {} @ {}", run["requested_by"], run["repository"], run["base_ref"]);
    println!("attempt:      {} on {}", run["attempt"], run["worker"].as_str().unwrap_or_default());
    println!("took:         {:.1} s from request to finished", elapsed.as_secs_f64());
    println!("artifacts in s3://{}/:", config.s3.bucket);
    for key in &keys {
        println!("  {key}");
    }
    anyhow::ensure!(run["state"] == "succeeded", "the demo run did not succeed");
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the api did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
