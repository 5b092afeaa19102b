//! AWS Bedrock as a provider, against an emulated Bedrock runtime that
//! checks every request's SigV4 signature and speaks the binary event
//! stream: Claude Code on Claude through InvokeModelWithResponseStream, the
//! official SDKs (Messages and Chat Completions on Converse), the signing
//! really checked, and credentials from web identity and the instance role.

use std::time::Duration;

use serde_json::{Value, json};
use tests::agents::shipped_profile;
use tests::providers::{BEDROCK_REGION, EmulatedProviders};
use tests::scripted::Step;

/// A Bedrock provider serving `claude-scripted` (Claude, through an
/// inference profile) and `nova-lite` (Converse only) on the emulated
/// runtime, signing with `aws`.
fn bedrock_provider(providers: &EmulatedProviders, aws: Value) -> Value {
    json!({
        "kind": "bedrock", "base_url": providers.root_url, "region": BEDROCK_REGION,
        "models": ["claude-scripted", "nova-lite"],
        "deployments": {"claude-scripted": "us.anthropic.claude-scripted-v1:0", "nova-lite": "us.amazon.nova-lite-v1:0"},
        "prices": {"claude-scripted": {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0},
                   "nova-lite": {"input_usd_per_mtok": 0.06, "output_usd_per_mtok": 0.24}},
        "anthropic_betas": ["interleaved-thinking-2025-05-14"],
        "aws": aws,
    })
}

/// The seed's provider policy, as the README quotes it.
const SEED_ALLOWED: &str = r#"["azure-openai-prod", "bedrock-prod"]"#;

/// The seed's providers: Azure OpenAI and Bedrock, both emulated.
fn seed_providers(providers: &EmulatedProviders, aws: Value) -> String {
    json!({
        "azure-openai-prod": {"kind": "azure_openai", "base_url": providers.root_url, "api_key": providers.key,
                              "models": ["gpt-4o"], "deployments": {"gpt-4o": "gpt-4o-prod"}},
        "bedrock-prod": bedrock_provider(providers, aws),
    })
    .to_string()
}

#[tokio::test]
async fn claude_code_on_bedrock_completes_a_run_with_usage_cost_and_redaction_and_no_credential_leaks() {
    let providers = EmulatedProviders::start().await;
    providers.plan(&[Step::write("hello.txt", "hello from bedrock\n"), Step::run("cat hello.txt")]);
    let (key_id, secret) = providers.bedrock_keys();
    // The first call is throttled: Claude Code retries it, as it would
    // Anthropic's own 429.
    providers.bedrock_throttle(1);
    let mut profile = shipped_profile("claude-code");
    profile["env"]["PADDOCK_MODEL"] = json!("claude-scripted");
    let profile = profile.to_string();
    let providers_json = seed_providers(&providers, json!({"access_key_id": key_id, "secret_access_key": secret}));
    let app = tests::spawn_app(&[
        ("PADDOCK_AGENTS__CLAUDE-CODE", profile.as_str()),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", SEED_ALLOWED),
        ("PADDOCK_SANDBOX__MEMORY_BYTES", "2147483648"),
        ("PADDOCK_SANDBOX__TIMEOUT_SECONDS", "300"),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# Widgets\n")]);
    let mut worker = app.spawn_worker_process();
    let (canaries, run, logs) = tests::agents::run_with_canaries(&app, &repo, "claude-code").await;
    let id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}\n{}", worker.log_text());
    assert_eq!(run["facts"]["files_changed"], json!(["hello.txt"]), "{logs}");

    // Every request reached Bedrock signed (none refused), redacted before
    // it was signed (the emulator verified the signature over what it got).
    assert_eq!(providers.bedrock_refused(), 0, "a request failed Bedrock's signature check");
    let received = providers.received();
    assert!(received.len() >= 2, "{received:?}");
    for (rule, canary) in &canaries {
        assert!(received.iter().all(|r| !r.contains(canary.as_str())), "{rule} reached Bedrock");
    }
    assert!(received.iter().any(|r| r.contains("[REDACTED:aws-access-key-id:")), "{received:?}");
    let invoked: Vec<Value> = received
        .iter()
        .map(|r| serde_json::from_str::<Value>(r).unwrap())
        .filter(|r| r.get("input").is_none())
        .collect();
    assert!(invoked.iter().all(|r| r["anthropic_version"] == "bedrock-2023-05-31" && r.get("model").is_none()));

    // Usage and cost booked from the translated stream; the throttled call
    // recorded as the 429 it was.
    let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
    let calls = summary["model_calls"].as_array().unwrap();
    assert!(calls.iter().all(|c| c["provider"] == "bedrock-prod" && c["model"] == "claude-scripted"), "{calls:#?}");
    assert_eq!(calls.iter().filter(|c| c["status"] == 429).count(), 1, "{calls:#?}");
    let answered: Vec<&Value> = calls.iter().filter(|c| c["status"] == 200).collect();
    assert!(answered.len() >= 2, "{calls:#?}");
    let reported: Vec<&&Value> = answered.iter().filter(|c| c["usage_reported"] == true).collect();
    assert!(reported.len() >= 2, "usage read from the translated streams: {calls:#?}");
    for call in reported {
        assert!(call["tokens_in"].as_u64().unwrap() > 0 && call["tokens_out"].as_u64().unwrap() > 0, "{call}");
        let expected = (call["tokens_in"].as_f64().unwrap() * 3.0 + call["tokens_out"].as_f64().unwrap() * 15.0) / 1e6;
        assert!((call["cost_usd"].as_f64().unwrap() - expected).abs() < 1e-9, "{call}");
    }

    // The AWS secret is nowhere: not in the stored log, the transcript or
    // the worker's own log (which holds the gateway's).
    let transcript = String::from_utf8(app.artifact(&format!("runs/{id}/transcript.jsonl")).await.to_vec()).unwrap();
    assert!(transcript.contains("content_block_delta"), "the translated stream is kept: {transcript}");
    let worker_log = worker.log_text();
    assert!(worker_log.contains("model call"), "the gateway's log is in the worker's: {worker_log}");
    let signatures: Vec<String> = providers
        .aws_presented()
        .iter()
        .filter_map(|auth| auth.split("Signature=").nth(1).map(str::to_owned))
        .collect();
    assert!(!signatures.is_empty());
    for (what, text) in [("run log", &logs), ("transcript", &transcript), ("worker log", &worker_log)] {
        assert!(!text.contains(&secret), "the AWS secret key reached the {what}");
        assert!(signatures.iter().all(|s| !text.contains(s.as_str())), "a signature reached the {what}");
    }
    worker.kill_hard();
    providers.stop().await;
}

const SDKS: &str = r#"python3 - <<'PY'
import anthropic, openai
question = [{"role": "user", "content": "hi"}]
a = anthropic.Anthropic(max_retries=3)
print("messages:", a.messages.create(model="claude-scripted", max_tokens=16, messages=question).content[0].text)
events = a.messages.create(model="claude-scripted", max_tokens=16, messages=question, stream=True)
print("messages stream:", "".join(e.delta.text for e in events if e.type == "content_block_delta"))
print("count:", a.messages.count_tokens(model="claude-scripted", messages=question).input_tokens > 0)
o = openai.OpenAI()
print("chat:", o.chat.completions.create(model="nova-lite", messages=question, max_tokens=32).choices[0].message.content)
chunks = o.chat.completions.create(model="nova-lite", messages=question, stream=True, stream_options={"include_usage": True})
chunks = list(chunks)
print("chat stream:", "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage.total_tokens)
tools = [{"type": "function", "function": {"name": "bash", "description": "run a command", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}}]
first = o.chat.completions.create(model="nova-lite", messages=[{"role": "user", "content": "list files"}], tools=tools)
call = first.choices[0].message.tool_calls[0]
print("tool call:", first.choices[0].finish_reason, call.function.name, call.function.arguments)
then = [{"role": "user", "content": "list files"}, first.choices[0].message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "README.md"}]
print("after tool:", o.chat.completions.create(model="nova-lite", messages=then, tools=tools).choices[0].message.content)
streamed = o.chat.completions.create(model="nova-lite", messages=[{"role": "user", "content": "list files"}], tools=tools, stream=True)
arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in streamed if c.choices and c.choices[0].delta.tool_calls)
print("tool stream:", arguments)
try:
    o.chat.completions.create(model="nova-lite", messages=question, seed=7)
except openai.BadRequestError as e:
    print("unmapped:", e.status_code, e.body["message"])
print("azure:", o.chat.completions.create(model="gpt-4o", messages=question).choices[0].message.content)
try:
    o.chat.completions.create(model="gpt-4o-mini", messages=question)
except openai.PermissionDeniedError as e:
    print("not allowed:", e.status_code)
PY"#;

#[tokio::test]
async fn the_official_sdks_reach_bedrock_through_the_gateway_under_the_seed_policy() {
    let providers = EmulatedProviders::start().await;
    let (key_id, secret) = providers.bedrock_keys();
    // The SDK's first call is throttled and retried by the SDK itself.
    providers.bedrock_throttle(1);
    let providers_json = seed_providers(&providers, json!({"access_key_id": key_id, "secret_access_key": secret}));
    // Configured with Azure only; the seed's policy, PUT as the README
    // writes it, allows Bedrock too.
    let app = tests::spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", SDKS),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", r#"["azure-openai-prod"]"#),
    ])
    .await;
    let policy = json!({
        "default_provider": "azure-openai-prod",
        "allowed_providers": serde_json::from_str::<Value>(SEED_ALLOWED).unwrap(),
        "disallowed": ["personal-api-keys", "unmanaged-proxies"],
        "logging": {"prompt_content": "redacted", "metadata": "retained_180_days"}
    });
    let put = app.client.put(app.url("/v1/llm-policy")).bearer_auth(&app.token).json(&policy).send().await.unwrap();
    assert_eq!(put.status().as_u16(), 200, "{}", put.text().await.unwrap());
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "use the SDKs").await;
    let (_, logs) = app.wait_for_success(&id).await;
    tests::assert_contains_all(
        &logs,
        &[
            "\nmessages: Hello from Claude on Bedrock",
            "\nmessages stream: Hello from Claude on Bedrock",
            "\ncount: True",
            "\nchat: Hello from us.amazon.nova-lite-v1:0 on Bedrock",
            "\nchat stream: Hello from us.amazon.nova-lite-v1:0 on Bedrock 28",
            "\ntool call: tool_calls bash {\"command\":\"ls\"}",
            "\nafter tool: Hello from us.amazon.nova-lite-v1:0 on Bedrock",
            "\ntool stream: {\"command\":\"ls\"}",
            "\nunmapped: 400 `seed` has no equivalent in Bedrock's Converse API; leave it out",
            "\nazure: Hello from deployment gpt-4o-prod",
            "\nnot allowed: 403",
        ],
    );
    assert_eq!(providers.bedrock_refused(), 0);
    let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
    let calls = summary["model_calls"].as_array().unwrap();
    assert_eq!(calls.iter().filter(|c| c["status"] == 429).count(), 1, "the throttled call: {calls:#?}");
    let chat: Vec<&Value> = calls.iter().filter(|c| c["model"] == "nova-lite" && c["status"] == 200).collect();
    assert_eq!(chat.len(), 5, "{calls:#?}");
    assert!(chat.iter().all(|c| c["tokens_in"] == 21 && c["tokens_out"] == 7), "usage from Converse: {chat:#?}");
    // Converse got Bedrock's shapes: the tool result in a user turn.
    let received = providers.received();
    assert!(
        received.iter().any(|r| r.contains("\"toolResult\":{\"content\":[{\"text\":\"README.md\"}]")),
        "{received:?}"
    );
    assert!(received.iter().any(|r| r.contains("\"inferenceConfig\":{\"maxTokens\":32}")), "{received:?}");
    worker.shutdown().await;
    providers.stop().await;
}

/// A POST to the emulated runtime signed with `secret` (the body sent may
/// differ from the one signed).
async fn signed_post(
    providers: &EmulatedProviders,
    id: &str,
    secret: &str,
    signed: &str,
    sent: &str,
) -> reqwest::Response {
    let url = format!("{}/model/us.anthropic.claude-scripted-v1%3A0/invoke", providers.root_url);
    let credentials = aws_credential_types::Credentials::new(id, secret, None, None, "test");
    let identity = credentials.into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(BEDROCK_REGION)
        .name("bedrock")
        .time(std::time::SystemTime::now())
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let headers = [("content-type", "application/json")];
    let request = aws_sigv4::http_request::SignableRequest::new(
        "POST",
        url.as_str(),
        headers.into_iter(),
        aws_sigv4::http_request::SignableBody::Bytes(signed.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = aws_sigv4::http_request::sign(request, &params).unwrap().into_parts();
    let mut post = tests::tls::TestCa::get().client().post(&url).header("content-type", "application/json");
    for (name, value) in instructions.headers() {
        post = post.header(name, value);
    }
    post.body(sent.to_owned()).send().await.unwrap()
}

#[tokio::test]
async fn bedrock_refuses_a_signature_it_cannot_verify_and_its_refusals_reach_clients_in_their_shape() {
    let (providers, queue, mut config) = crate::gateway::emulated_gateway(0).await;
    let (id, secret) = providers.bedrock_keys();
    let body =
        r#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    // Signed right: answered (so the check can pass).
    assert_eq!(signed_post(&providers, &id, &secret, body, body).await.status().as_u16(), 200);
    // The wrong secret, or a body other than the one signed: refused.
    for (secret, sent) in [("not-the-secret", body), (secret.as_str(), &body.replace("hi", "ho"))] {
        let refused = signed_post(&providers, &id, secret, body, sent).await;
        assert_eq!(refused.status().as_u16(), 403);
        let kind = refused.headers()["x-amzn-errortype"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("InvalidSignatureException:"), "{kind}");
        let message: Value = refused.json().await.unwrap();
        assert!(message["message"].as_str().unwrap().contains("signature we calculated does not match"), "{message}");
    }
    assert_eq!(providers.bedrock_refused(), 2);
    assert_eq!(providers.received().len(), 1, "refused requests reach no model");

    // A gateway holding the wrong secret: Bedrock's refusal reaches the
    // client in Anthropic's shape, and the secret is in no answer.
    let wrong = bedrock_provider(&providers, json!({"access_key_id": id, "secret_access_key": "wrong-secret-value"}));
    config.providers.insert("bedrock-prod".to_owned(), serde_json::from_value(wrong).unwrap());
    config.allowed_providers = vec!["bedrock-prod".to_owned()];
    let (token, server, _gateway) =
        crate::gateway::serve_run_gateway(&providers, &queue, "acme", &config, Duration::from_secs(600)).await;
    let refused = reqwest::Client::new()
        .post(format!("http://{}/v1/messages", server.address))
        .header("x-api-key", &token)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-scripted", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let text = refused.text().await.unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"]["type"], "permission_error", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("InvalidSignatureException"), "{answer}");
    assert!(!text.contains("wrong-secret-value"));
    assert_eq!(providers.bedrock_refused(), 3);

    // Signed right, refused for what was asked: access denied and
    // validation, each in the client's own shape.
    let mut provider = bedrock_provider(&providers, json!({"access_key_id": id, "secret_access_key": secret}));
    provider["models"] = json!(["claude-scripted", "nova-lite", "claude-denied"]);
    provider["deployments"]["claude-denied"] = json!("us.anthropic.claude-denied-v1:0");
    config.providers.insert("bedrock-prod".to_owned(), serde_json::from_value(provider).unwrap());
    let (token, server, _gateway) =
        crate::gateway::serve_run_gateway(&providers, &queue, "acme", &config, Duration::from_secs(600)).await;
    let client = reqwest::Client::new();
    let messages = |body: Value| {
        client
            .post(format!("http://{}/v1/messages", server.address))
            .header("x-api-key", &token)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
    };
    let denied =
        messages(json!({"model": "claude-denied", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}));
    let denied = denied.await.unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let answer: Value = denied.json().await.unwrap();
    assert_eq!(answer["error"]["type"], "permission_error", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("AccessDeniedException"), "{answer}");
    let invalid =
        messages(json!({"model": "claude-scripted", "messages": [{"role": "user", "content": "hi"}]})).await.unwrap();
    assert_eq!(invalid.status().as_u16(), 400);
    let answer: Value = invalid.json().await.unwrap();
    assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("max_tokens"), "{answer}");
    let chat = client
        .post(format!("http://{}/v1/chat/completions", server.address))
        .bearer_auth(&token)
        .json(&json!({"model": "nova-lite", "messages": [{"role": "assistant", "content": "I start"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(chat.status().as_u16(), 400);
    let answer: Value = chat.json().await.unwrap();
    assert_eq!(answer["error"]["type"], "ValidationException", "OpenAI's shape: {answer}");
    assert_eq!(answer["error"]["code"], "invalid_request", "{answer}");
    assert_eq!(providers.bedrock_refused(), 3, "these were signed right");
    providers.stop().await;
}

#[tokio::test]
async fn web_identity_and_instance_role_credentials_sign_bedrock_calls() {
    let (providers, queue, mut config) = crate::gateway::emulated_gateway(0).await;
    let dir = std::env::temp_dir().join(format!("paddock-bedrock-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let (role, token_file) = providers.bedrock_web_identity(&dir);
    let imds = providers.start_imds().await;
    let sources = [
        (
            "web identity",
            json!({"role_arn": role, "web_identity_token_file": token_file, "sts_endpoint": providers.sts_url()}),
        ),
        ("instance role", json!({"imds_endpoint": imds.url})),
    ];
    for (n, (source, aws)) in sources.into_iter().enumerate() {
        let provider = bedrock_provider(&providers, aws);
        config.providers.insert("bedrock-prod".to_owned(), serde_json::from_value(provider).unwrap());
        config.allowed_providers = vec!["bedrock-prod".to_owned()];
        let (token, server, gateway) =
            crate::gateway::serve_run_gateway(&providers, &queue, "acme", &config, Duration::from_secs(600)).await;
        for stream in [false, true] {
            let answer = reqwest::Client::new()
                .post(format!("http://{}/v1/chat/completions", server.address))
                .bearer_auth(&token)
                .json(&json!({"model": "nova-lite", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let text = answer.text().await.unwrap();
            assert_eq!(status, 200, "{source}: {text}");
            assert!(text.contains("on Bedrock"), "{source}: {text}");
        }
        assert_eq!(providers.aws_keys_issued(), n + 1, "{source}: temporary keys are kept between calls");
        let calls = tests::eventually(Duration::from_secs(10), "both calls booked", || async {
            let calls = gateway.calls();
            if calls.len() == 2 { Ok(calls) } else { Err(format!("{} calls booked", calls.len())) }
        })
        .await;
        assert!(calls.iter().all(|c| c.status == 200 && c.tokens_in == 21 && c.tokens_out == 7), "{source}: {calls:?}");
    }
    assert_eq!(providers.bedrock_refused(), 0);
    // Temporary keys were presented with their session token.
    let presented = providers.aws_presented();
    assert!(presented.iter().filter(|p| p.starts_with("IQoJb3JpZ2luX2Vj")).count() >= 4, "{presented:?}");
    imds.stop().await;
    providers.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}
