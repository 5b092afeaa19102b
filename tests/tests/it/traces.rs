//! OpenTelemetry traces over OTLP: one run is one trace, from the portal's
//! request through the API, the queue and the worker's steps to each model
//! call in the standalone gateway, each span sent by the process that did
//! the work, to a collector that speaks HTTPS with the test CA.

use std::time::Duration;

use serde_json::json;
use tests::otlp::{Collector, Span};

/// One model call through the gateway, then a change to publish.
const CALL: &str = r#"curl -sS -o /dev/null -w 'model: %{http_code}\n' "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d '{"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}'
echo traced > TRACED.md"#;

/// The portal's own trace and span, as its `traceparent` names them.
const PORTAL_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PORTAL_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_run_is_one_trace_from_the_api_request_through_the_worker_steps_to_each_model_call() {
    let collector = Collector::start().await;
    let providers = tests::providers::EmulatedProviders::start().await;
    let listen = format!("127.0.0.1:{}", tests::free_port());
    let app =
        tests::spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", CALL), ("PADDOCK_GATEWAY__REMOTE", &listen)]).await;
    // Every process exports to the collector, in batches 200 ms apart.
    let otel = [("PADDOCK_TELEMETRY__OTLP_ENDPOINT", collector.endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let configured = json!({
        "openai": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-test"]},
    })
    .to_string();
    let mut gateway_env = vec![
        ("PADDOCK_GATEWAY__PROVIDERS", configured.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", r#"["openai"]"#),
    ];
    gateway_env.extend_from_slice(&otel);
    let _gateway = app.spawn_gateway_process(&listen, &gateway_env).await;
    let (_api, base) = app.spawn_api_process(&otel).await;
    let _worker = app.spawn_worker_process_with_env(&otel);

    let repo = app.repo(&[("README.md", b"# traced\n")]);
    let request = json!({"repository": repo, "base_ref": "main", "task": {"title": "Traced", "body": "."}});
    let accepted = app
        .client
        .post(format!("{base}/v1/runs"))
        .bearer_auth(&app.token)
        .header("traceparent", format!("00-{PORTAL_TRACE}-{PORTAL_SPAN}-01"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    let id = accepted.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (_, logs) = app.wait_for_success(&id).await;
    assert!(logs.contains("\nmodel: 200\n"), "{logs}");

    let what = "the run's spans at the collector";
    let spans = tests::eventually(Duration::from_secs(30), what, || async {
        let ours: Vec<Span> = collector.spans().into_iter().filter(|s| s.trace_id == PORTAL_TRACE).collect();
        let has = |service: &str, name: &str| ours.iter().any(|s| s.service == service && s.name == name);
        // The run's span ends last, after the run is reported finished.
        if has("paddock-api", "POST /v1/runs")
            && has("paddock-worker", "upload")
            && has("paddock-worker", "run")
            && has("paddock-gateway", "model call")
        {
            Ok(ours)
        } else {
            Err(format!("{ours:#?}"))
        }
    })
    .await;
    let one = |service: &str, name: &str| {
        let found: Vec<&Span> = spans.iter().filter(|s| s.service == service && s.name == name).collect();
        assert_eq!(found.len(), 1, "one {service} span {name:?}: {spans:#?}");
        found[0].clone()
    };
    // The API's request continues the portal's trace...
    let request = one("paddock-api", "POST /v1/runs");
    assert_eq!(request.parent_span_id, PORTAL_SPAN);
    assert_eq!(request.attribute("http.route"), Some("/v1/runs"));
    // ...it enqueues the run (audit event and script) in a span of its own...
    let enqueue = one("paddock-api", "enqueue");
    assert_eq!(
        (enqueue.parent_span_id.as_str(), enqueue.attribute("run_id")),
        (request.span_id.as_str(), Some(id.as_str()))
    );
    // ...the worker's run continues the request, across the queue...
    let run = one("paddock-worker", "run");
    assert_eq!(run.parent_span_id, request.span_id, "the run's span is the request's child");
    assert_eq!(run.attribute("run_id"), Some(id.as_str()));
    assert!(run.attribute("queued_ms").is_some_and(|ms| ms.parse::<u64>().is_ok()), "how long it was queued: {run:?}");
    // ...each step is the run's child, and so is the model call made in
    // another process.
    for step in ["checkout", "sandbox", "agent", "publish", "upload"] {
        let span = one("paddock-worker", step);
        assert_eq!(span.parent_span_id, run.span_id, "step {step} is the run's child");
    }
    // Taking the diff out is the end of the agent's step, in its sandbox.
    assert_eq!(one("paddock-worker", "diff").parent_span_id, one("paddock-worker", "agent").span_id);
    let call = one("paddock-gateway", "model call");
    assert_eq!(call.parent_span_id, run.span_id, "the gateway's call is the run's child");
    assert_eq!(call.attribute("run_id"), Some(id.as_str()));
    collector.stop().await;
    providers.stop().await;
}
