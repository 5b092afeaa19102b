//! Paddock's own calls out as a real deployment makes them: TLS everywhere
//! (a Redis that speaks only TLS, an identity provider on HTTPS), trust
//! through `tls.extra_ca_files`, and a corporate CONNECT proxy for the
//! providers that sandboxes never use.

use platform::outbound::Outbound;
use serde_json::{Value, json};
use tests::connect_proxy::ConnectProxy;
use tests::oidc::OidcIssuer;
use tests::providers::EmulatedProviders;
use tests::redis_server::PrivateRedis;
use tests::spawn_app;

#[tokio::test]
async fn the_queue_api_and_worker_run_against_a_redis_that_speaks_only_tls() {
    let redis = PrivateRedis::start_tls(&[]);
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let app = spawn_app(&[("PADDOCK_REDIS__URL", url.as_str())]).await;
    let repo = app.repo(&[("README.md", b"# over tls\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "through TLS Redis").await;
    let (run, _) = app.wait_for_success(&id).await;
    assert_eq!(run["state"], "succeeded");
    worker.shutdown().await;

    // Without the CA the server's certificate is refused: no plain-text
    // fallback, no "insecure" switch.
    let config = &app.config.redis;
    let refused = store::RunQueue::connect(config, &Outbound::system()).await;
    let error = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.to_lowercase().contains("certificate"), "connected without trusting the CA: {error}");
}

#[tokio::test]
async fn oidc_tokens_verify_against_an_issuer_on_https_only_when_its_ca_is_trusted() {
    let issuer = OidcIssuer::start().await;
    assert!(issuer.issuer.starts_with("https://"));
    let oidc = issuer.config_json(&json!({"devs": ["requester"]}));
    let token = issuer.token("alice", &["devs"]);
    let trusting = spawn_app(&[("PADDOCK_IDENTITY__OIDC", oidc.as_str())]).await;
    let answer = trusting.client.get(trusting.url("/v1/runs")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200, "{}", answer.text().await.unwrap());

    let untrusting =
        spawn_app(&[("PADDOCK_IDENTITY__OIDC", oidc.as_str()), ("PADDOCK_TLS__EXTRA_CA_FILES", "[]")]).await;
    let answer = untrusting.client.get(untrusting.url("/v1/runs")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    let problem: Value = answer.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap_or_default();
    let host = issuer.issuer.trim_start_matches("https://");
    assert!(detail.contains(&format!("TLS with {host}")) && detail.contains("not signed by a CA"), "{problem}");
    issuer.stop().await;
}

/// One model call through the gateway and one request to an allowed host
/// through the sandbox's egress proxy.
const AGENT: &str = r#"curl -sS "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d '{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}'; echo
curl -sS -m 5 -k https://allowed.paddock.test/tunnel"#;

#[tokio::test]
async fn paddock_calls_providers_through_the_corporate_proxy_and_sandboxes_never_use_it() {
    let proxy = ConnectProxy::start().await;
    let providers = EmulatedProviders::start().await;
    let upstream = tests::allowed_upstream().await;
    let static_hosts = format!(r#"{{"allowed.paddock.test": "{upstream}"}}"#);
    let trusted = format!(r#"["{upstream}/32"]"#);
    let gateway = json!({"emulated": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-test"]}}).to_string();
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", AGENT),
        ("PADDOCK_GATEWAY__PROVIDERS", gateway.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", r#"["emulated"]"#),
        ("PADDOCK_OUTBOUND__HTTPS_PROXY", proxy.url.as_str()),
        ("PADDOCK_EGRESS__PRESET", "custom"),
        ("PADDOCK_EGRESS__ALLOW", r#"["allowed.paddock.test"]"#),
        ("PADDOCK_EGRESS__STATIC_HOSTS", static_hosts.as_str()),
        ("PADDOCK_EGRESS__TRUSTED_NETWORKS", trusted.as_str()),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# proxied\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "behind the corporate proxy").await;
    let (_, logs) = app.wait_for_success(&id).await;
    tests::assert_contains_all(
        &logs,
        &[
            "Hello from the emulated provider",
            "hello from upstream 443",
            "paddock: model call openai emulated gpt-test -> 200",
        ],
    );
    let provider = providers.root_url.trim_start_matches("https://").to_owned();
    let tunnels = proxy.tunnels();
    assert!(
        tunnels.iter().any(|t| t.target == provider && t.authorized),
        "the model call did not go through the proxy with its credentials: {tunnels:?}"
    );
    assert!(
        tunnels.iter().all(|t| !t.target.contains("allowed.paddock.test") && !t.target.contains(&upstream.to_string())),
        "sandbox egress went through the corporate proxy: {tunnels:?}"
    );
    assert_eq!(providers.received().len(), 1);
    assert!(!logs.contains(&proxy.password), "the proxy password reached the run's log");
    worker.shutdown().await;
    providers.stop().await;
}

#[tokio::test]
async fn a_provider_the_worker_does_not_trust_is_refused_and_the_run_log_says_why() {
    let providers = EmulatedProviders::start().await;
    let gateway = json!({"emulated": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-test"]}}).to_string();
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", AGENT.lines().next().unwrap()),
        ("PADDOCK_GATEWAY__PROVIDERS", gateway.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", r#"["emulated"]"#),
        ("PADDOCK_TLS__EXTRA_CA_FILES", "[]"),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# untrusted\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "an untrusted provider").await;
    let (_, logs) = app.wait_for_success(&id).await;
    let host = providers.root_url.trim_start_matches("https://");
    let reason = format!("TLS with {host} failed before any request was sent: its certificate is not signed by a CA");
    tests::assert_contains_all(
        &logs,
        &["\"code\":\"upstream_unreachable\"", "paddock: model call openai emulated gpt-test -> 502", &reason],
    );
    let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
    let refusal = summary["model_calls"][0]["refusal"].as_str().unwrap_or_default();
    assert!(refusal.contains(&reason), "{summary:#}");
    assert!(providers.received().is_empty(), "the request body reached an untrusted provider");
    worker.shutdown().await;
    providers.stop().await;
}
