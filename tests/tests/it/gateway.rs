//! The model gateway end to end: a sandboxed agent calls emulated providers
//! through it with nothing but a base URL and its run token.

use serde_json::{Value, json};
use tests::providers::EmulatedProviders;
use tests::spawn_app;

/// Canaries are assembled inside the sandbox so the command text holds none.
const AGENT: &str = r#"set -- $PADDOCK_TASK_BODY
AWS="AKIA$(printf 'Q%.0s' $(seq 16))"
REGISTERED="$1"
ask() { printf '{"model":"%s","stream":%s,"messages":[{"role":"user","content":"key %s and %s"}]}' "$1" "$2" "$AWS" "$REGISTERED"; }
curl -sS "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d "$(ask gpt-test false)"; echo
curl -sSN "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d "$(ask gpt-test true)"
ANTH=$(printf '{"model":"claude-test","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"key %s"}]}' "$AWS")
curl -sSN "$ANTHROPIC_BASE_URL/v1/messages" -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' -d "$ANTH"
curl -sS "$OPENAI_BASE_URL/models" -H "Authorization: Bearer $OPENAI_API_KEY"; echo
curl -sS -o /dev/null -w 'disallowed model: %{http_code}\n' "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -d "$(ask gpt-forbidden false)"
curl -sS -o /dev/null -w 'wrong token: %{http_code}\n' "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer pdk_run_not-the-token" -d "$(ask gpt-test false)"
curl -sS -o /dev/null -w 'anthropic wrong token: %{http_code}\n' "$ANTHROPIC_BASE_URL/v1/messages" -H "x-api-key: nope" -d "$ANTH"
env | grep -c provider-key || echo "no provider key in the sandbox""#;

const ALLOWED: &str = r#"["emulated-openai", "emulated-anthropic"]"#;

/// `gateway.providers` for the emulated OpenAI and Anthropic servers, plus a
/// provider that is configured but not allowed, offering `unused_models`.
fn providers_with(providers: &EmulatedProviders, unused_models: &[&str]) -> String {
    json!({
        "emulated-openai": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-test"]},
        "emulated-anthropic": {"kind": "anthropic", "base_url": providers.base_url, "api_key": providers.key, "models": ["claude-test"]},
        "unused": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": unused_models},
    })
    .to_string()
}

#[tokio::test]
async fn agents_reach_allowed_models_through_the_gateway_with_secrets_redacted() {
    let providers = EmulatedProviders::start().await;
    let registered = format!("registered-secret-{}", ulid::Ulid::new());
    let providers_json = providers_with(&providers, &["gpt-forbidden"]);
    let redact = json!([registered]).to_string();
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", AGENT),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", ALLOWED),
        ("PADDOCK_GATEWAY__REDACT", redact.as_str()),
    ])
    .await;
    let (id, logs) = run_agent_calling_models(&app, &registered).await;
    assert!(!logs.contains("gpt-forbidden\",\"object"), "a disallowed model was listed:\n{logs}");

    let received = providers.received();
    assert_eq!(received.len(), 3, "{received:?}");
    let aws = format!("AKIA{}", "Q".repeat(16));
    for body in &received {
        assert!(!body.contains(&aws), "an AWS key reached the provider: {body}");
        assert!(!body.contains(&registered), "a registered secret reached the provider: {body}");
        assert!(body.contains("[REDACTED:aws-access-key-id:"), "{body}");
    }
    assert!(received[0].contains("[REDACTED:known-secret:"), "{}", received[0]);

    let summary_key = format!("runs/{id}/summary.json");
    let summary: Value = serde_json::from_slice(&app.artifact(&summary_key).await).unwrap();
    let calls = summary["model_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4, "three allowed calls and one refused: {summary:#}");
    assert_eq!(calls[0]["redactions"], json!({"aws-access-key-id": 1, "known-secret": 1}));
    assert!(calls.iter().any(|c| c["status"] == 403));
    assert!(!logs.contains(&registered) && !logs.contains(&aws), "a secret reached the stored log");
    assert!(calls.iter().all(|c| c["run_id"] == id.as_str() && c["tenant"] == "default"), "{summary:#}");

    // The transcript keeps each call, redacted.
    let transcript_key = format!("runs/{id}/transcript.jsonl");
    let run = app.run(&id).await;
    assert!(run["artifacts"].as_array().unwrap().iter().any(|k| k == transcript_key.as_str()), "{run:#}");
    let transcript = String::from_utf8(app.artifact(&transcript_key).await.to_vec()).unwrap();
    let lines: Vec<Value> = transcript.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{transcript}");
    assert_eq!(lines[0]["model"], "gpt-test");
    assert!(lines[0]["request"].as_str().unwrap().contains("[REDACTED:aws-access-key-id:"), "{transcript}");
    assert!(lines[0]["response"].as_str().unwrap().contains("Hello from the emulated provider"), "{transcript}");
    assert!(lines[1]["response"].as_str().unwrap().contains("data: [DONE]"), "the streamed answer is kept too");
    assert!(lines[2]["response"].as_str().unwrap().contains("message_stop"));
    assert!(!transcript.contains(&registered) && !transcript.contains(&aws), "a secret reached the transcript");

    // The run token is revoked when the run ends.
    let pattern = format!("{{{}}}:gwtok:*", app.config.redis.namespace);
    let left =
        std::process::Command::new("redis-cli").args(["-p", "6390", "--scan", "--pattern", &pattern]).output().unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "a run token outlived its run");
    providers.stop().await;
}

/// Runs [`AGENT`] with `registered` as its task body and checks what every
/// gateway set-up must show in its log; returns the run id and the log.
async fn run_agent_calling_models(app: &tests::TestApp, registered: &str) -> (String, String) {
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let body = json!({"repository": repo, "base_ref": "main", "task": {"title": "call models", "body": registered}});
    let accepted: Value = app.post_run(&body).await.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let (_, logs) = app.wait_for_success(&id).await;
    tests::assert_contains_all(
        &logs,
        &[
            "\"content\":\"Hello from the emulated provider\"",
            "data: [DONE]",
            "\"content\":\"lo from \"",
            "event: message_stop",
            "\"id\":\"gpt-test\"",
            "\ndisallowed model: 403",
            "\nwrong token: 401",
            "\nanthropic wrong token: 401",
            "\nno provider key in the sandbox",
        ],
    );
    worker.shutdown().await;
    (id, logs)
}

async fn serve_run(
    providers: &EmulatedProviders,
    queue: &store::RunQueue,
    tenant: &str,
    config: &common::config::GatewayConfig,
    ttl: std::time::Duration,
) -> (String, gateway::GatewayServer, common::RunId) {
    let (token, server, gateway) = serve_run_gateway(providers, queue, tenant, config, ttl).await;
    (token, server, gateway.run)
}

/// A run's gateway on a local port, and the gateway (to read its record).
/// It trusts the test CA, as `tls.extra_ca_files` makes it.
pub(crate) async fn serve_run_gateway(
    providers: &EmulatedProviders,
    queue: &store::RunQueue,
    tenant: &str,
    config: &common::config::GatewayConfig,
    ttl: std::time::Duration,
) -> (String, gateway::GatewayServer, std::sync::Arc<gateway::RunGateway>) {
    let http = tests::tls::trusting_outbound().http().build().unwrap();
    serve_run_gateway_with(providers, queue, tenant, config, ttl, http).await
}

pub(crate) async fn serve_run_gateway_with(
    providers: &EmulatedProviders,
    queue: &store::RunQueue,
    tenant: &str,
    config: &common::config::GatewayConfig,
    ttl: std::time::Duration,
    http: reqwest::Client,
) -> (String, gateway::GatewayServer, std::sync::Arc<gateway::RunGateway>) {
    use gateway::{GatewayServer, Redactor, RunGateway, mint_token, token_hash};
    let run = common::RunId::new();
    let token = mint_token().unwrap();
    let grant = store::GatewayGrant { run, tenant: tenant.to_owned(), trace_parent: None };
    queue.put_gateway_token(&token_hash(&token), &grant, ttl).await.unwrap();
    let redactor = Redactor::new(std::slice::from_ref(&providers.key), b"test");
    let gateway =
        RunGateway::new(run, tenant.to_owned(), token_hash(&token), config.clone(), queue.clone(), redactor, http);
    let gateway = std::sync::Arc::new(gateway);
    let server = GatewayServer::start("127.0.0.1:0".parse().unwrap(), gateway.clone()).await.unwrap();
    (token, server, gateway)
}

/// Waits until the run's budget shows `used` and nothing reserved.
async fn wait_for_spend(queue: &store::RunQueue, run: common::RunId, used: store::Spend) {
    let what = format!("the run's budget shows {used:?} used and nothing reserved");
    tests::eventually(std::time::Duration::from_secs(10), &what, || async {
        let (spent, reserved) = queue.run_spend(run).await.unwrap();
        let settled = spent == used && reserved == store::Spend::default();
        if settled { Ok(()) } else { Err(format!("used {spent:?}, reserved {reserved:?}")) }
    })
    .await
}

/// Emulated providers, a fresh queue namespace and a gateway configuration
/// for the emulated OpenAI provider.
pub(crate) async fn emulated_gateway(
    tenant_per_minute: u32,
) -> (EmulatedProviders, store::RunQueue, common::config::GatewayConfig) {
    let providers = EmulatedProviders::start().await;
    let queue = tests::fixtures::fresh_queue(None, false).await;
    let config = gateway_config(&providers, tenant_per_minute);
    (providers, queue, config)
}

fn gateway_config(providers: &EmulatedProviders, tenant_per_minute: u32) -> common::config::GatewayConfig {
    let mut config = common::config::GatewayConfig::default();
    let provider = serde_json::from_value(json!({
        "kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-test"]
    }))
    .unwrap();
    config.providers.insert("emulated".to_owned(), provider);
    config.allowed_providers = vec!["emulated".to_owned()];
    config.run_requests_per_minute = 0;
    config.tenant_requests_per_minute = tenant_per_minute;
    config
}

async fn chat(client: &reqwest::Client, server: &gateway::GatewayServer, token: &str) -> reqwest::Response {
    client
        .post(format!("http://{}/v1/chat/completions", server.address))
        .bearer_auth(token)
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn two_gateways_sharing_redis_enforce_one_tenant_limit() {
    let (providers, queue, config) = emulated_gateway(6).await;
    let hour = std::time::Duration::from_secs(3600);
    let (token_a, replica_a, _) = serve_run(&providers, &queue, "acme", &config, hour).await;
    let (token_b, replica_b, _) = serve_run(&providers, &queue, "acme", &config, hour).await;
    let client = reqwest::Client::new();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..12 {
        let response = if i % 2 == 0 {
            chat(&client, &replica_a, &token_a).await
        } else {
            chat(&client, &replica_b, &token_b).await
        };
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(retry >= 1);
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (6, 6), "the tenant got more than its limit across two gateways");
    assert_eq!(providers.received().len(), 6, "refused calls must not reach the provider");
    providers.stop().await;
}

#[tokio::test]
async fn revoked_expired_and_raw_provider_keys_are_refused() {
    let (providers, queue, config) = emulated_gateway(0).await;
    let client = reqwest::Client::new();

    let (token, server, run) =
        serve_run(&providers, &queue, "acme", &config, std::time::Duration::from_secs(3600)).await;
    assert_eq!(chat(&client, &server, &token).await.status().as_u16(), 200);
    assert_eq!(chat(&client, &server, &providers.key).await.status().as_u16(), 401, "a raw provider key was accepted");
    // As an emergency revocation does it: by run, without knowing the token.
    assert!(queue.revoke_run_gateway_token(run).await.unwrap());
    let revoked = chat(&client, &server, &token).await;
    assert_eq!(revoked.status().as_u16(), 401);
    let body: Value = revoked.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");

    let (short, server, _) =
        serve_run(&providers, &queue, "acme", &config, std::time::Duration::from_millis(300)).await;
    assert_eq!(chat(&client, &server, &short).await.status().as_u16(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(chat(&client, &server, &short).await.status().as_u16(), 401, "an expired run token was accepted");
    assert_eq!(providers.received().len(), 2);
    providers.stop().await;
}

#[tokio::test]
async fn token_budgets_are_reserved_before_a_call_and_settled_after_it() {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    config.run_token_budget = 5000;
    let (token, server, run) =
        serve_run(&providers, &queue, "acme", &config, std::time::Duration::from_secs(3600)).await;
    let client = reqwest::Client::new();
    let ask = |max_tokens: u64| {
        client
            .post(format!("http://{}/v1/chat/completions", server.address))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-test", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    assert_eq!(ask(3000).await.unwrap().status().as_u16(), 200);
    // A call is settled after its answer has gone out (not before its last
    // bytes): wait for that, as the next call can otherwise come first.
    wait_for_spend(&queue, run, store::Spend { tokens: 17, micro_usd: 0 }).await;
    assert_eq!(ask(3000).await.unwrap().status().as_u16(), 200, "the first call's unused reservation was not released");
    let refused = ask(4990).await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert_eq!(providers.received().len(), 2, "a call over budget reached the provider");

    // Each answer reported 17 tokens; nothing stays reserved.
    wait_for_spend(&queue, run, store::Spend { tokens: 34, micro_usd: 0 }).await;
    providers.stop().await;
}

const SDKS: &str = r#"python3 - <<'PY'
import openai, anthropic
question = [{"role": "user", "content": "hi"}]
o = openai.OpenAI()
print("chat:", o.chat.completions.create(model="gpt-test", messages=question).choices[0].message.content)
chunks = o.chat.completions.create(model="gpt-test", messages=question, stream=True)
print("chat stream:", "".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
print("responses:", o.responses.create(model="gpt-test", input="hi").output_text)
events = o.responses.create(model="gpt-test", input="hi", stream=True)
print("responses stream:", "".join(e.delta for e in events if e.type == "response.output_text.delta"))
a = anthropic.Anthropic()
print("messages:", a.messages.create(model="claude-test", max_tokens=16, messages=question).content[0].text)
events = a.messages.create(model="claude-test", max_tokens=16, messages=question, stream=True)
print("messages stream:", "".join(e.delta.text for e in events if e.type == "content_block_delta"))
print("models:", sorted(m.id for m in o.models.list()), [m.id for m in a.models.list()])
try:
    o.chat.completions.create(model="gpt-forbidden", messages=question)
except openai.PermissionDeniedError as e:
    print("refused:", e.status_code)
PY"#;

#[tokio::test]
async fn the_official_openai_and_anthropic_sdks_work_through_the_gateway() {
    let providers = EmulatedProviders::start().await;
    let providers_json = providers_with(&providers, &[]);
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", SDKS),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", ALLOWED),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "use the SDKs").await;
    let (_, logs) = app.wait_for_success(&id).await;
    tests::assert_contains_all(
        &logs,
        &[
            "\nchat: Hello from the emulated provider",
            "\nchat stream: Hello from the emulated provider",
            "\nresponses: Hello from the emulated provider",
            "\nresponses stream: Hello from the emulated provider",
            "\nmessages: Hello from the emulated provider",
            "\nmessages stream: Hello from the emulated provider",
            "\nmodels: ['claude-test', 'gpt-test'] ['gpt-test', 'claude-test']",
            "\nrefused: 403",
        ],
    );
    worker.shutdown().await;
    providers.stop().await;
}

#[tokio::test]
async fn azure_openai_deployments_get_their_path_and_api_key_header() {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    let base = providers.base_url.trim_end_matches("/v1").to_owned();
    let azure = serde_json::from_value(json!({
        "kind": "azure_openai", "base_url": base, "api_key": providers.key, "models": ["gpt-4o"],
        "api_version": "2024-10-21", "deployments": {"gpt-4o": "prod-gpt4o"}
    }))
    .unwrap();
    config.providers.insert("azure-openai-prod".to_owned(), azure);
    config.allowed_providers.push("azure-openai-prod".to_owned());
    let (token, server, _) = serve_run(&providers, &queue, "acme", &config, std::time::Duration::from_secs(3600)).await;
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", server.address))
        .bearer_auth(&token)
        .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from deployment prod-gpt4o");
    providers.stop().await;
}

#[tokio::test]
async fn the_provider_policy_set_through_the_api_decides_what_runs_may_call() {
    let providers = EmulatedProviders::start().await;
    let providers_json = providers_with(&providers, &["gpt-spare"]);
    let agent = r#"for m in gpt-test gpt-spare; do
  curl -sS -o /dev/null -w "$m: %{http_code}\n" "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -d "{\"model\":\"$m\",\"messages\":[]}"
done"#;
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", agent),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", ALLOWED),
    ])
    .await;
    let put = |body: Value| app.client.put(app.url("/v1/llm-policy")).bearer_auth(&app.token).json(&body).send();
    let current: Value = app.get("/v1/llm-policy").await.json().await.unwrap();
    assert_eq!(current["allowed_providers"], json!(["emulated-openai", "emulated-anthropic"]));
    let unknown = put(json!({"allowed_providers": ["personal-key"], "default_provider": null})).await.unwrap();
    assert_eq!(unknown.status().as_u16(), 400);
    let policy = json!({
        "default_provider": "unused",
        "allowed_providers": ["unused", "emulated-anthropic"],
        "disallowed": ["emulated-openai", "personal-api-keys"],
        "logging": {"prompt_content": "omitted", "metadata": "retained_180_days"}
    });
    let set = put(policy.clone()).await.unwrap();
    assert_eq!(set.status().as_u16(), 200);
    assert_eq!(app.get("/v1/llm-policy").await.json::<Value>().await.unwrap(), policy);

    let repo = app.repo(&[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "under policy").await;
    let run = app.wait_until_finished(&id).await;
    let logs = app.logs_of(&run).await;
    assert!(logs.contains("\ngpt-test: 403"), "a disallowed provider was used:\n{logs}");
    assert!(logs.contains("\ngpt-spare: 200"), "the newly allowed provider was refused:\n{logs}");
    let transcript = String::from_utf8(app.artifact(&format!("runs/{id}/transcript.jsonl")).await.to_vec()).unwrap();
    let line: Value = serde_json::from_str(transcript.lines().next().unwrap()).unwrap();
    assert_eq!(
        (line["provider"].as_str(), line["request"].is_null()),
        (Some("unused"), true),
        "content must be omitted: {line}"
    );
    worker.shutdown().await;
    providers.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_cancels_the_upstream_call_and_settles_its_budget() {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    config.providers.get_mut("emulated").unwrap().models.push("gpt-slow".to_owned());
    config.run_token_budget = 100_000;
    let (token, server, run) =
        serve_run(&providers, &queue, "acme", &config, std::time::Duration::from_secs(3600)).await;
    let mut response = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", server.address))
        .bearer_auth(&token)
        .json(&json!({"model": "gpt-slow", "stream": true, "max_tokens": 500, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "), "the stream did not start");
    let (_, reserved) = queue.run_spend(run).await.unwrap();
    assert!(reserved.tokens >= 500, "nothing was reserved for the call in flight");
    drop(response);

    let used = tests::eventually(std::time::Duration::from_secs(10), "the abandoned call settled", || async {
        let (used, reserved) = queue.run_spend(run).await.map_err(|e| e.to_string())?;
        match (providers.abandoned_streams(), reserved.tokens) {
            (1, 0) => Ok(used.tokens),
            (abandoned, reserved) => Err(format!("upstream abandoned: {abandoned}, reserved still {reserved}")),
        }
    })
    .await;
    assert!(used > 0, "the abandoned call was not booked");
    providers.stop().await;
}

#[tokio::test]
async fn canaries_of_every_redaction_class_never_reach_the_provider() {
    let providers = EmulatedProviders::start().await;
    let providers_json = providers_with(&providers, &[]);
    let agent = r#"python3 -c 'import json, os; print(json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": os.environ["PADDOCK_TASK_BODY"]}]}))' > /tmp/request.json
curl -sS -o /dev/null -w 'status: %{http_code}\n' "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d @/tmp/request.json"#;
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", agent),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", ALLOWED),
    ])
    .await;
    let canaries = gateway::canaries();
    let prompt: String = canaries.iter().map(|(_, c)| format!("here: {c}\n")).collect();
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let body = json!({"repository": repo, "base_ref": "main", "task": {"title": "leak", "body": prompt}});
    let accepted: Value = app.post_run(&body).await.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let run = app.wait_until_finished(&id).await;
    let logs = app.logs_of(&run).await;
    assert!(logs.contains("\nstatus: 200"), "{logs}");
    let received = providers.received();
    assert_eq!(received.len(), 1);
    let transcript = String::from_utf8(app.artifact(&format!("runs/{id}/transcript.jsonl")).await.to_vec()).unwrap();
    for (rule, canary) in &canaries {
        assert!(!received[0].contains(canary.as_str()), "{rule} reached the provider: {}", received[0]);
        assert!(received[0].contains(&format!("[REDACTED:{rule}:")), "{rule} not redacted: {}", received[0]);
        assert!(!transcript.contains(canary.as_str()), "{rule} reached the transcript");
        assert!(!logs.contains(canary.as_str()), "{rule} reached the stored log");
    }
    worker.shutdown().await;
    providers.stop().await;
}

#[tokio::test]
async fn each_call_is_metered_priced_and_held_to_a_cost_budget() {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    let prices = json!({"gpt-test": {"input_usd_per_mtok": 2.5, "output_usd_per_mtok": 10.0}});
    config.providers.get_mut("emulated").unwrap().prices = serde_json::from_value(prices).unwrap();
    // 12 tokens in and 5 out cost $0.00008; the budget covers one worst
    // case of 1000 output tokens ($0.01) but not two calls' worth.
    config.run_cost_budget_usd = 0.0101;
    let hour = std::time::Duration::from_secs(3600);
    let (token, server, gateway) = serve_run_gateway(&providers, &queue, "acme", &config, hour).await;
    let client = reqwest::Client::new();
    let ask = |max_tokens: u64| {
        client
            .post(format!("http://{}/v1/chat/completions", server.address))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-test", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let answered = ask(1000).await.unwrap();
    assert_eq!(answered.status().as_u16(), 200);
    let request_id = answered.headers()["x-paddock-request-id"].to_str().unwrap().to_owned();
    assert!(request_id.starts_with("req_"), "{request_id}");
    // The provider's part of the call's time, so a client can tell the
    // gateway's own time from it.
    let timing = answered.headers()["server-timing"].to_str().unwrap().to_owned();
    let upstream_ms: f64 = timing.strip_prefix("upstream;dur=").and_then(|ms| ms.parse().ok()).expect(&timing);
    assert!(upstream_ms > 0.0, "{timing}");
    answered.bytes().await.unwrap();
    wait_for_spend(&queue, gateway.run, store::Spend { tokens: 17, micro_usd: 80 }).await;

    let refused = ask(1000).await.unwrap();
    assert_eq!(refused.status().as_u16(), 429, "the second worst case exceeds the cost budget");
    assert!(refused.headers().contains_key("x-paddock-request-id"), "refusals carry a request id too");
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("run cost budget"), "{body}");
    assert_eq!(providers.received().len(), 1, "a call over the cost budget reached the provider");

    gateway.settled().await;
    let calls = gateway.calls();
    assert_eq!(calls.len(), 2);
    let call = &calls[0];
    assert_eq!(call.request_id, request_id);
    assert_eq!((call.run_id, call.tenant.as_str()), (gateway.run, "acme"));
    assert_eq!(
        (call.provider.as_deref(), call.model.as_deref(), call.status),
        (Some("emulated"), Some("gpt-test"), 200)
    );
    assert_eq!((call.tokens_in, call.tokens_out), (12, 5));
    assert!((call.cost_usd - 0.00008).abs() < 1e-12, "{}", call.cost_usd);
    assert!(call.duration_ms >= call.latency_ms);
    assert_eq!(calls[1].status, 429);
    assert!(calls[1].refusal.as_deref().unwrap_or_default().contains("cost budget"), "{:?}", calls[1]);
    providers.stop().await;
}

#[tokio::test]
async fn secrets_in_answers_are_redacted_even_when_split_across_stream_chunks() {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    config.providers.get_mut("emulated").unwrap().models.push("gpt-leaky".to_owned());
    let hour = std::time::Duration::from_secs(3600);
    let (token, server, gateway) = serve_run_gateway(&providers, &queue, "acme", &config, hour).await;
    let secret = format!("AKIA{}", "L".repeat(16));
    for stream in [true, false] {
        let answer = reqwest::Client::new()
            .post(format!("http://{}/v1/chat/completions", server.address))
            .bearer_auth(&token)
            .json(&json!({"model": "gpt-leaky", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200);
        let text = answer.text().await.unwrap();
        assert!(!text.contains(&secret), "a secret in the answer reached the sandbox: {text}");
        assert!(text.contains("use [REDACTED:aws-access-key-id:"), "{text}");
        if stream {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        } else {
            let body: Value = serde_json::from_str(&text).expect("the answer is still JSON");
            assert!(body["choices"][0]["message"]["content"].as_str().unwrap().contains("[REDACTED:"));
        }
    }
    let calls = tests::eventually(std::time::Duration::from_secs(10), "every call booked", || async {
        let calls = gateway.calls();
        if calls.len() == 2 { Ok(calls) } else { Err(format!("{} calls booked", calls.len())) }
    })
    .await;
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(call.redactions.get("aws-access-key-id"), Some(&1), "{call:?}");
    }
    let transcript = serde_json::to_string(&gateway.transcript()).unwrap();
    assert!(!transcript.contains(&secret) && transcript.contains("[REDACTED:aws-access-key-id:"), "{transcript}");
    providers.stop().await;
}

/// A run's gateway allowed Claude on (emulated) Vertex AI, signing in with
/// a service account Google trusts or not; the key file lives in `.dir`.
struct VertexRun {
    providers: EmulatedProviders,
    token: String,
    server: gateway::GatewayServer,
    gateway: std::sync::Arc<gateway::RunGateway>,
    dir: std::path::PathBuf,
}

async fn vertex_run(trusted: bool) -> VertexRun {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    let dir = std::env::temp_dir().join(format!("paddock-vertex-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let vertex = serde_json::from_value(json!({
        "kind": "vertex", "base_url": providers.root_url, "models": ["claude-vertex"],
        "project": "acme-ai", "region": "us-east5", "credentials_file": providers.vertex_credentials(&dir, trusted),
        "deployments": {"claude-vertex": "claude-vertex@20250514"},
        "prices": {"claude-vertex": {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0}},
    }))
    .unwrap();
    config.providers.insert("vertex-prod".to_owned(), vertex);
    config.allowed_providers.push("vertex-prod".to_owned());
    let hour = std::time::Duration::from_secs(3600);
    let (token, server, gateway) = serve_run_gateway(&providers, &queue, "acme", &config, hour).await;
    VertexRun { providers, token, server, gateway, dir }
}

impl Drop for VertexRun {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[tokio::test]
async fn claude_on_vertex_is_reached_with_a_service_account_token() {
    let VertexRun { providers, token, server, gateway, .. } = &vertex_run(true).await;
    let client = reqwest::Client::new();
    let ask = |path: &'static str, stream: bool| {
        client
            .post(format!("http://{}{path}", server.address))
            .header("x-api-key", token)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "claude-vertex", "max_tokens": 16, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let whole: Value = ask("/v1/messages", false).await.unwrap().json().await.unwrap();
    assert_eq!(whole["content"][0]["text"], "Hello from the emulated provider", "{whole}");
    assert_eq!(whole["model"], "claude-vertex@20250514", "the model went in the path");
    let streamed = ask("/v1/messages", true).await.unwrap().text().await.unwrap();
    assert!(streamed.contains("event: content_block_delta") && streamed.contains("event: message_stop"), "{streamed}");
    let counted: Value = ask("/v1/messages/count_tokens", false).await.unwrap().json().await.unwrap();
    assert_eq!(counted["input_tokens"], 9, "{counted}");
    assert_eq!(providers.google_tokens_issued(), 1, "the access token is cached between calls");
    for body in providers.received() {
        assert!(body.contains("\"anthropic_version\":\"vertex-2023-10-16\""), "{body}");
    }
    let calls = tests::eventually(std::time::Duration::from_secs(10), "every call booked", || async {
        let calls = gateway.calls();
        if calls.len() >= 2 { Ok(calls) } else { Err(format!("{} calls booked", calls.len())) }
    })
    .await;
    assert_eq!(calls[1].provider.as_deref(), Some("vertex-prod"));
    assert_eq!((calls[1].tokens_in, calls[1].tokens_out), (12, 5), "usage from message_start and message_delta");
    assert!((calls[1].cost_usd - (12.0 * 3.0 + 5.0 * 15.0) / 1e6).abs() < 1e-12);
    providers.stop().await;
}

#[tokio::test]
async fn a_vertex_service_account_google_does_not_trust_is_refused_before_the_model() {
    let VertexRun { providers, token, server, .. } = &vertex_run(false).await;
    let refused = reqwest::Client::new()
        .post(format!("http://{}/v1/messages", server.address))
        .header("x-api-key", token)
        .json(&json!({"model": "claude-vertex", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 502);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "error", "Anthropic's error shape: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("invalid_grant"), "{body}");
    assert!(providers.received().is_empty());
    providers.stop().await;
}

#[tokio::test]
async fn a_standalone_gateway_holds_the_provider_keys_and_workers_relay_to_it() {
    let providers = EmulatedProviders::start().await;
    let registered = format!("registered-secret-{}", ulid::Ulid::new());
    let listen = format!("127.0.0.1:{}", tests::free_port());
    // The worker knows where the gateway is, and no provider or its key;
    // prompts and run tokens cross to the gateway host over TLS, the
    // gateway's certificate checked for its name.
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", AGENT),
        ("PADDOCK_GATEWAY__REMOTE", listen.as_str()),
        ("PADDOCK_GATEWAY__REMOTE_TLS", "true"),
        ("PADDOCK_GATEWAY__REMOTE_SERVER_NAME", "localhost"),
    ])
    .await;
    assert!(app.config.gateway.providers.is_empty());
    let providers_json = providers_with(&providers, &["gpt-forbidden"]);
    let redact = json!([registered]).to_string();
    let ca = tests::tls::TestCa::get();
    let (cert, key) = (ca.cert_file().display().to_string(), ca.key_file().display().to_string());
    let _gateway = app
        .spawn_gateway_process(
            &listen,
            &[
                ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
                ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", ALLOWED),
                ("PADDOCK_GATEWAY__REDACT", redact.as_str()),
                ("PADDOCK_GATEWAY__TLS_CERT_FILE", cert.as_str()),
                ("PADDOCK_GATEWAY__TLS_KEY_FILE", key.as_str()),
            ],
        )
        .await;
    let (id, logs) = run_agent_calling_models(&app, &registered).await;
    assert!(logs.contains(&format!("relayed to the standalone gateway at {listen} (over TLS)")), "{logs}");
    let received = providers.received();
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(received.iter().all(|b| !b.contains(&registered) && b.contains("[REDACTED:")), "{received:?}");

    // The worker's record holds what the standalone gateway saw.
    let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
    let calls = summary["model_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 4, "three allowed calls and one refused: {summary:#}");
    assert!(calls.iter().all(|c| c["run_id"] == id.as_str() && c["tenant"] == "default"), "{summary:#}");
    assert_eq!(calls.iter().filter(|c| c["status"] == 200).count(), 3);
    let transcript = String::from_utf8(app.artifact(&format!("runs/{id}/transcript.jsonl")).await.to_vec()).unwrap();
    assert_eq!(transcript.lines().count(), 3, "{transcript}");
    assert!(!transcript.contains(&registered), "a secret reached the transcript");
    providers.stop().await;
}

#[tokio::test]
async fn token_rate_limits_take_the_worst_case_and_give_back_what_was_not_used() {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    config.providers.get_mut("emulated").unwrap().models.push("gpt-slow".to_owned());
    config.tenant_tokens_per_minute = 3000;
    let hour = std::time::Duration::from_secs(3600);
    let (token, server, _) = serve_run(&providers, &queue, "acme", &config, hour).await;
    let client = reqwest::Client::new();
    let ask = |model: &str, stream: bool| {
        client
            .post(format!("http://{}/v1/chat/completions", server.address))
            .bearer_auth(&token)
            .json(&json!({"model": model, "stream": stream, "max_tokens": 2500, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    // Each call may use 2500+ tokens of the 3000 a minute, but uses 17: the
    // rest goes back, so the next one is admitted at once.
    for _ in 0..2 {
        let answered = ask("gpt-test", false).await.unwrap();
        assert_eq!(answered.status().as_u16(), 200);
        answered.bytes().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // While a call that may use 2500 tokens is streaming, another is refused.
    let mut slow = ask("gpt-slow", true).await.unwrap();
    slow.chunk().await.unwrap().expect("the slow stream started");
    let refused = ask("gpt-test", false).await.unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    let retry: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("tenant's token rate limit"), "{body}");
    assert_eq!(providers.received().len(), 3, "the refused call reached the provider");
    drop(slow);
    providers.stop().await;
}

#[tokio::test]
async fn secrets_a_tenant_registers_are_stored_sealed_and_redacted_from_its_runs() {
    let providers = EmulatedProviders::start().await;
    let providers_json = providers_with(&providers, &[]);
    let agent = r#"python3 -c 'import json, os; print(json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "deploy with " + os.environ["PADDOCK_TASK_BODY"]}]}))' > /tmp/request.json
curl -sS -o /dev/null -w 'status: %{http_code}\n' "$OPENAI_BASE_URL/chat/completions" -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' -d @/tmp/request.json
echo "the agent echoes $PADDOCK_TASK_BODY""#;
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", agent),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", ALLOWED),
        ("PADDOCK_SECRETS__ENCRYPTION_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
    ])
    .await;
    let secret = format!("payments-deploy-{}", ulid::Ulid::new());
    let put = |name: &str, value: &str| {
        app.client
            .put(app.url(&format!("/v1/tenants/payments/secrets/{name}")))
            .bearer_auth(&app.token)
            .json(&json!({"value": value}))
            .send()
    };
    let registered = put("deploy-key", &secret).await.unwrap();
    assert_eq!(registered.status().as_u16(), 200);
    let shown: Value = registered.json().await.unwrap();
    assert_eq!(shown["name"], "deploy-key");
    assert!(!shown.to_string().contains(&secret), "the API showed the value: {shown}");
    assert_eq!(put("short", "abc").await.unwrap().status().as_u16(), 400);
    let listed: Value = app.get("/v1/tenants/payments/secrets").await.json().await.unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["fingerprint"], shown["fingerprint"]);

    // Redis holds it sealed only.
    let key = format!("{{{}}}:secrets:payments", app.config.redis.namespace);
    let raw = std::process::Command::new("redis-cli").args(["-p", "6390", "hgetall", &key]).output().unwrap();
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.contains("deploy-key") && !raw.contains(&secret), "{raw}");

    let repo = app.repo_named("payments-", &[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let body = json!({"tenant": "payments", "repository": repo, "base_ref": "main", "task": {"title": "deploy", "body": secret}});
    let accepted: Value = app.post_run(&body).await.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let (_, logs) = app.wait_for_success(&id).await;
    assert!(logs.contains("\nstatus: 200"), "{logs}");
    assert!(!logs.contains(&secret) && logs.contains("the agent echoes [REDACTED:known-secret:"), "{logs}");
    let received = providers.received();
    assert!(!received[0].contains(&secret) && received[0].contains("[REDACTED:known-secret:"), "{received:?}");
    let transcript = String::from_utf8(app.artifact(&format!("runs/{id}/transcript.jsonl")).await.to_vec()).unwrap();
    assert!(!transcript.contains(&secret));

    let remove =
        || app.client.delete(app.url("/v1/tenants/payments/secrets/deploy-key")).bearer_auth(&app.token).send();
    assert_eq!(remove().await.unwrap().status().as_u16(), 204);
    assert_eq!(remove().await.unwrap().status().as_u16(), 404);
    worker.shutdown().await;
    providers.stop().await;
}

#[tokio::test]
async fn without_an_encryption_key_secrets_are_refused_with_the_key_named() {
    let app = spawn_app(&[]).await;
    let refused = app
        .client
        .put(app.url("/v1/tenants/payments/secrets/deploy-key"))
        .bearer_auth(&app.token)
        .json(&json!({"value": "a-long-enough-secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let problem: Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("secrets.encryption_key"), "{problem}");
}

#[tokio::test]
async fn an_agent_profile_names_where_its_agent_finds_the_task_gateway_and_token() {
    let providers = EmulatedProviders::start().await;
    let providers_json = providers_with(&providers, &[]);
    let profile = json!({
        "command": r#"echo "task=[$PADDOCK_TASK]" | head -1; echo "greeting=$GREETING"
echo "openai=${OPENAI_BASE_URL:-unset} anthropic=${ANTHROPIC_BASE_URL:-unset} key=${OPENAI_API_KEY:-unset}"
curl -sS -o /dev/null -w 'own names: %{http_code}\n' "$LLM_BASE/models" -H "Authorization: Bearer $LLM_KEY""#,
        "env": {"GREETING": "hello from the profile"},
        "openai_base_url_env": ["LLM_BASE"],
        "anthropic_base_url_env": [],
        "token_env": ["LLM_KEY"],
    })
    .to_string();
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__NAMED", profile.as_str()),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", ALLOWED),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run_as(&repo, "profiles", "named").await;
    let (_, logs) = app.wait_for_success(&id).await;
    tests::assert_contains_all(
        &logs,
        &[
            "\ntask=[profiles",
            "\ngreeting=hello from the profile",
            "\nopenai=unset anthropic=unset key=unset",
            "\nown names: 200",
        ],
    );
    worker.shutdown().await;
    providers.stop().await;
}

/// Every provider kind on HTTPS (the emulators' certificates come from the
/// test CA): reached when the CA is in `tls.extra_ca_files`; refused with an
/// error naming the host and the untrusted certificate otherwise, before
/// any request body leaves.
#[tokio::test]
async fn each_provider_kind_is_reached_over_https_only_when_its_ca_is_trusted() {
    let (providers, queue, mut config) = emulated_gateway(0).await;
    let dir = std::env::temp_dir().join(format!("paddock-kinds-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let kinds = json!({
        "azure": {"kind": "azure_openai", "base_url": providers.root_url, "api_key": providers.key,
                  "models": ["gpt-azure"], "deployments": {"gpt-azure": "prod-gpt"}},
        "anthropic": {"kind": "anthropic", "base_url": providers.base_url, "api_key": providers.key, "models": ["claude-test"]},
        "vertex": {"kind": "vertex", "base_url": providers.root_url, "models": ["claude-vertex"], "project": "acme-ai",
                   "region": "us-east5", "credentials_file": providers.vertex_credentials(&dir, true)},
    });
    for (name, provider) in kinds.as_object().unwrap() {
        config.providers.insert(name.clone(), serde_json::from_value(provider.clone()).unwrap());
        config.allowed_providers.push(name.clone());
    }
    let calls = [
        ("/v1/chat/completions", "gpt-test"),
        ("/v1/chat/completions", "gpt-azure"),
        ("/v1/messages", "claude-test"),
        ("/v1/messages", "claude-vertex"),
    ];
    let host = providers.root_url.trim_start_matches("https://").to_owned();
    let hour = std::time::Duration::from_secs(3600);
    let client = reqwest::Client::new();
    let ask = |server: &gateway::GatewayServer, token: &str, path: &str, model: &str| {
        client
            .post(format!("http://{}{path}", server.address))
            .bearer_auth(token)
            .header("x-api-key", token)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };

    // Trusting only the operating system's store (first, so no Vertex
    // token is cached yet and its token exchange is refused too).
    let untrusted = platform::outbound::Outbound::system().http().build().unwrap();
    let (token, server, gateway) = serve_run_gateway_with(&providers, &queue, "acme", &config, hour, untrusted).await;
    for (path, model) in calls {
        let answer = ask(&server, &token, path, model).await.unwrap();
        assert_eq!(answer.status().as_u16(), 502, "{model} reached a provider this process does not trust");
        let body = answer.text().await.unwrap();
        let reason = format!("TLS with {host} failed before any request was sent: its certificate is not signed");
        assert!(body.contains(&reason), "{model}: {body}");
    }
    assert!(providers.received().is_empty(), "a request body left for an untrusted provider");
    assert_eq!(providers.google_tokens_issued(), 0, "the service-account assertion left for an untrusted host");
    let records = tests::eventually(std::time::Duration::from_secs(10), "every call booked", || async {
        let calls = gateway.calls();
        if calls.len() == 4 { Ok(calls) } else { Err(format!("{} calls booked", calls.len())) }
    })
    .await;
    assert_eq!(records.len(), 4);
    for record in &records {
        let refusal = record.refusal.as_deref().unwrap_or_default();
        assert!(refusal.contains(&format!("TLS with {host}")) && refusal.contains("tls.extra_ca_files"), "{refusal}");
    }

    // With the test CA in `tls.extra_ca_files`.
    let (token, server, _) = serve_run_gateway(&providers, &queue, "acme", &config, hour).await;
    for (path, model) in calls {
        let answer = ask(&server, &token, path, model).await.unwrap();
        let status = answer.status().as_u16();
        assert_eq!(status, 200, "{model}: {}", answer.text().await.unwrap());
    }
    assert_eq!(providers.received().len(), 4);
    assert_eq!(providers.google_tokens_issued(), 1);
    std::fs::remove_dir_all(&dir).ok();
    providers.stop().await;
}

/// A worker's relay to the standalone gateway checks the gateway's
/// certificate: against a gateway it does not trust it relays nothing.
#[tokio::test]
async fn a_relay_reaches_a_standalone_gateway_over_tls_only_if_it_trusts_its_certificate() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tests::tls::server_config()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut buf = vec![0u8; 4096];
                if tls.read(&mut buf).await.unwrap_or(0) > 0 {
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nrelayed")
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let config =
        common::config::GatewayConfig { remote: Some(gateway.to_string()), remote_tls: true, ..Default::default() };
    let ask = async |outbound: &platform::outbound::Outbound| {
        let remote = gateway::RemoteGateway::from_config(&config, outbound).unwrap().unwrap();
        assert!(remote.describe().ends_with("(over TLS)"));
        let relay = gateway::Relay::start("127.0.0.1:0".parse().unwrap(), remote).await.unwrap();
        let answer = reqwest::get(format!("http://{}/v1/models", relay.address)).await;
        answer.ok().map(|a| a.status().as_u16())
    };
    assert_eq!(ask(&platform::outbound::Outbound::system()).await, None, "relayed to an untrusted gateway");
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 0, "bytes reached an untrusted gateway");
    assert_eq!(ask(&tests::tls::trusting_outbound()).await, Some(200));
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}
