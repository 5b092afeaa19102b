//! Prometheus metrics: every name in the catalogue is exposed and in the
//! README's table, and the counters move with what happened: a run that
//! finished, a model call the gateway refused, a secret it redacted, an
//! egress request the proxy denied. The test's tenant and provider are its
//! own, so other tests in the process do not move its series.

use serde_json::json;

use platform::metrics::names;

/// The value of `name`'s series whose labels include all of `labels`,
/// summed (0 when there is none).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            let matches = metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn scrape(app: &tests::TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status().as_u16(), 200);
    let kind = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    response.text().await.unwrap()
}

/// A GitHub token the gateway's `github-token` rule redacts.
const SECRET: &str = "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB";

#[tokio::test]
async fn every_metric_is_exposed_and_moves_with_what_a_run_did() {
    let unique = ulid::Ulid::new().to_string().to_lowercase();
    let tenant = format!("metrics{unique}");
    let provider = format!("p{unique}");
    let providers = tests::providers::EmulatedProviders::start().await;
    providers.script(&["```bash\necho noted > NOTE.md\n```", "Noted.\nPADDOCK_DONE"]);
    // One denied egress request, one refused model call, then the agent.
    let command = "curl -s -o /dev/null -x \"$HTTP_PROXY\" http://example.com/ ; \
        curl -s -o /dev/null \"$OPENAI_BASE_URL/chat/completions\" -H \"Authorization: Bearer $OPENAI_API_KEY\" \
        -H 'content-type: application/json' -d '{\"model\":\"gpt-forbidden\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' ; \
        PADDOCK_MODEL=gpt-scripted paddock-agent";
    let configured = json!({provider.clone(): {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-scripted"]}}).to_string();
    let allowed = json!([provider]).to_string();
    let owned = json!([format!("acme/metrics-{unique}-*")]).to_string();
    let tenant_key = format!("PADDOCK_TENANTS__{}__REPOSITORIES", tenant.to_uppercase());
    let app = tests::spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", command),
        ("PADDOCK_GATEWAY__PROVIDERS", &configured),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", &allowed),
        (&tenant_key, &owned),
    ])
    .await;
    let repo = app.repo_named(&format!("metrics-{unique}-"), &[("README.md", b"# Metrics\n")]);
    let worker = app.spawn_worker().await;
    let before = scrape(&app).await;
    let body = json!({"repository": repo, "base_ref": "main", "task": {"title": "Note it", "body": format!("The key {SECRET} leaked.")}});
    let response = app.post_run(&body).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (run, logs) = app.wait_for_success(&id).await;
    assert_eq!(run["tenant"], tenant.as_str());
    let after = scrape(&app).await;
    worker.shutdown().await;
    providers.stop().await;

    let moved = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    let mine = ("tenant", tenant.as_str());
    assert_eq!(moved(names::RUNS_ACCEPTED, &[mine, ("source", "api"), ("state", "queued")]), 1.0);
    assert_eq!(moved(names::RUNS_FINISHED, &[mine, ("state", "succeeded"), ("reason", "completed")]), 1.0);
    assert_eq!(moved(names::CLAIMS, &[mine]), 1.0);
    assert_eq!(moved(names::RETRIES, &[mine]), 0.0);
    // The refused call, and the agent's two calls.
    assert_eq!(moved(names::GATEWAY_REFUSALS, &[mine, ("reason", "not_allowed")]), 1.0, "{logs}");
    assert_eq!(moved(names::GATEWAY_CALLS, &[mine, ("provider", &provider), ("status", "2xx")]), 2.0, "{after}");
    assert!(moved(names::GATEWAY_TOKENS, &[mine, ("provider", &provider), ("direction", "in")]) > 0.0);
    assert!(moved(names::GATEWAY_TOKENS, &[mine, ("provider", &provider), ("direction", "out")]) > 0.0);
    let upstream = format!("{}_count", names::GATEWAY_DURATION);
    assert_eq!(moved(&upstream, &[("provider", &provider), ("part", "upstream")]), 2.0);
    assert_eq!(moved(&upstream, &[("provider", &provider), ("part", "overhead")]), 2.0);
    assert!(moved(names::REDACTIONS, &[("rule", "github-token")]) >= 2.0, "the task went to the model twice");
    assert!(moved(names::EGRESS, &[("preset", "none"), ("decision", "deny")]) >= 1.0, "{logs}");
    let steps = format!("{}_count", names::SANDBOX_START);
    // A small checkout is unpacked by the agent's exec: no upload step.
    for step in ["clone", "sandbox", "proxy_and_gateway", "exec_started"] {
        assert!(moved(&steps, &[("step", step)]) >= 1.0, "no {step} step in {after}");
    }
    let requests = format!("{}_count", names::HTTP_REQUESTS);
    assert!(moved(&requests, &[("route", "/v1/runs"), ("method", "POST"), ("status", "202")]) >= 1.0);
    assert!(moved(&requests, &[("route", "/v1/runs/{id}"), ("method", "GET"), ("status", "200")]) >= 1.0);
    assert!(moved(&format!("{}_count", names::AUDIT_WRITE), &[("writer", "api")]) >= 1.0);
    assert!(moved(&format!("{}_count", names::AUDIT_WRITE), &[("writer", "worker")]) >= 1.0);
    // The queue as Redis holds it: this tenant's run is counted as finished.
    assert_eq!(sample(&after, names::QUEUE_RUNS, &[mine, ("state", "succeeded")]), 1.0, "{after}");
    // ...in its priority band, which it left when it was claimed.
    let band = |state| sample(&after, names::QUEUE_BAND_RUNS, &[mine, ("band", "normal"), ("state", state)]);
    assert_eq!((band("succeeded"), band("queued"), band("running")), (1.0, 0.0, 0.0), "{after}");
    assert_eq!(sample(&after, names::QUEUE_BAND_RUNS, &[mine, ("band", "high")]), 0.0, "{after}");
    assert_eq!(band("dispatchable"), 0.0, "{after}");
    let all = format!("{}{{band=\"normal\",state=\"dispatchable\",tenant=\"*\"}}", names::QUEUE_BAND_RUNS);
    assert!(after.contains(&all), "the band's dispatchable runs across tenants: {after}");
    assert!(after.contains(&format!("{}{{tenant=\"*\"}}", names::QUEUE_DISPATCHABLE)), "{after}");

    // Every name of the catalogue is exposed, and the README explains it.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for name in catalogue() {
        let bare = name.strip_suffix("_total").unwrap_or(name);
        assert!(after.contains(&format!("# TYPE {bare} ")), "{name} is not exposed");
        assert!(readme.contains(&format!("| `{name}` |")), "{name} is not in the README's metrics table");
    }
}

/// Every constant of `platform::metrics::names`, read from its source (a
/// metric added there without a README row fails the test above).
fn catalogue() -> Vec<&'static str> {
    let source = include_str!("../../../crates/platform/src/metrics.rs");
    let listed: Vec<&str> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once(": &str = \"")?.1.strip_suffix("\";"))
        .filter(|name| name.starts_with("paddock_"))
        .collect();
    assert!(listed.len() >= 20, "{listed:?}");
    listed
}

#[tokio::test]
async fn a_worker_serves_its_metrics_where_it_is_told() {
    let app = tests::spawn_app(&[]).await;
    let port = tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _worker = app.spawn_worker_process_with_env(&[("PADDOCK_TELEMETRY__METRICS_LISTEN", &listen)]);
    let text = tests::eventually(std::time::Duration::from_secs(30), "the worker serves /metrics", || async {
        let answer = reqwest::get(format!("http://{listen}/metrics")).await.map_err(|e| e.to_string())?;
        answer.text().await.map_err(|e| e.to_string())
    })
    .await;
    let free = sample(&text, names::SLOTS_FREE, &[]);
    assert_eq!(free, app.config.worker.concurrency as f64, "{text}");
    assert!(text.contains(&format!("# TYPE {} gauge", names::RUNS_RUNNING)), "{text}");
    let elsewhere = reqwest::get(format!("http://{listen}/other")).await.unwrap();
    assert_eq!(elsewhere.status().as_u16(), 404);
}
