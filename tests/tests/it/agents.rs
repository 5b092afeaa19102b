//! The agents teams use, each as `infra/agents/profiles.toml` ships it, in
//! the image `cargo xtask images` built for it, in a real sandbox, reaching
//! a scripted model only through the gateway: the model asks, through the
//! agent's own tools, for a file and a command; the file comes back in the
//! diff, the command in the record (read from the agent's own events), and
//! no canary of the task reaches the provider.

use std::time::Duration;

use common::config::AgentConfig;
use serde_json::{Value, json};
use tests::agents::{SCRIPTED_ALLOWED, scripted_model, scripted_providers, shipped_profile};
use tests::providers::EmulatedProviders;
use tests::scripted::Step;

/// `agents.toml`: each agent's pinned version.
fn pinned_version(name: &str) -> String {
    tests::agents::pinned_agents()[name]["version"].as_str().unwrap().to_owned()
}

/// The plan every agent is given: a file, then a command that reads it;
/// aider takes both in one answer (its edit format and a shell block),
/// since it asks the model once per message.
fn plan(agent: &str) -> (Vec<Step>, String) {
    let command = "ls -la && cat hello.txt";
    let file = format!("hello from {agent}\n");
    let steps = match agent {
        "aider" => vec![Step::Say(format!(
            "hello.txt\n```\n<<<<<<< SEARCH\n=======\n{file}>>>>>>> REPLACE\n```\n\nThen check it:\n\n```bash\n{command}\n```\n"
        ))],
        _ => vec![Step::write("hello.txt", &file), Step::run(command)],
    };
    (steps, command.to_owned())
}

/// Runs `agent` (a profile of profiles.toml) on a task holding a canary of
/// every redaction class, with `model` scripted, and checks what the issue
/// asks of every agent.
async fn an_agent_as_shipped_creates_a_file_and_runs_a_command(agent: &str) {
    an_agent_creates_a_file_and_runs_a_command_on(agent, Upstream::Vendor).await;
}

/// Where the gateway sends an agent's calls.
#[derive(PartialEq)]
enum Upstream {
    /// The provider of the agent's own dialect.
    Vendor,
    /// AWS Bedrock (Claude through InvokeModel, other dialects through
    /// Converse), signed with SigV4.
    Bedrock,
}

async fn an_agent_creates_a_file_and_runs_a_command_on(agent: &str, upstream: Upstream) {
    let model = scripted_model(agent);
    let providers = EmulatedProviders::start().await;
    let (steps, command) = plan(agent);
    providers.plan(&steps);
    // Transcripts keep metadata only: the commands must come from the
    // agent's own events, not from the model's tool calls.
    let mut extra = vec![("PADDOCK_SANDBOX__TIMEOUT_SECONDS", "300"), ("PADDOCK_GATEWAY__PROMPT_CONTENT", "omitted")];
    let bedrock = (upstream == Upstream::Bedrock).then(|| {
        let (id, secret) = providers.bedrock_keys();
        let upstream_model = if model.starts_with("claude") { "anthropic.claude-scripted-v1:0" } else { "amazon.nova-scripted-v1:0" };
        json!({"bedrock-prod": {"kind": "bedrock", "base_url": providers.root_url, "region": tests::providers::BEDROCK_REGION,
            "models": [model], "deployments": {model: format!("us.{upstream_model}")},
            "aws": {"access_key_id": id, "secret_access_key": secret}}})
        .to_string()
    });
    if let Some(providers_json) = &bedrock {
        extra.push(("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()));
        extra.push(("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", r#"["bedrock-prod"]"#));
    }
    let (app, repo) = tests::agents::agent_app(agent, &providers, &extra).await;
    let worker = app.spawn_worker().await;
    let (canaries, run, logs) = tests::agents::run_with_canaries(&app, &repo, agent).await;
    let id = run["id"].as_str().unwrap().to_owned();
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    let facts = &run["facts"];
    assert_eq!(facts["files_changed"], json!(["hello.txt"]), "{facts:#}\n{logs}");
    let diff = String::from_utf8(app.artifact(&format!("runs/{id}/diff.patch")).await.to_vec()).unwrap();
    assert!(diff.contains(&format!("+hello from {agent}")), "{diff}");
    let commands: Vec<&str> = facts["commands"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(
        commands.iter().skip(1).any(|c| c.contains(&command)),
        "the command is not in the record: {commands:?}\n{logs}"
    );
    assert_eq!(facts["agent"]["name"], agent, "{facts:#}");
    assert_eq!(facts["agent"]["version"], pinned_version(agent), "{facts:#}");
    // Every call reached the provider through the gateway, with its key.
    let received = providers.received();
    assert!(!received.is_empty());
    assert_eq!(providers.refused(), 0, "a call reached the provider without the gateway's key");
    assert_eq!(providers.bedrock_refused(), 0, "a call reached Bedrock unsigned or signed wrong");
    for (rule, canary) in &canaries {
        assert!(received.iter().all(|r| !r.contains(canary.as_str())), "{rule} reached the provider");
    }
    let calls = facts["models"].as_array().unwrap();
    assert!(calls.iter().all(|c| c["model"] == model), "{calls:?}");
    if bedrock.is_some() {
        assert!(calls.iter().all(|c| c["provider"] == "bedrock-prod"), "{calls:?}");
        let invoked = received.iter().filter_map(|r| serde_json::from_str::<Value>(r).ok());
        let shape = if model.starts_with("claude") { "anthropic_version" } else { "messages" };
        assert!(invoked.into_iter().all(|r| r.get(shape).is_some() && r.get("model").is_none()), "{received:?}");
    }
    worker.shutdown().await;
    providers.stop().await;
}

#[tokio::test]
async fn claude_code_creates_a_file_and_runs_a_command_through_the_gateway() {
    an_agent_as_shipped_creates_a_file_and_runs_a_command("claude-code").await;
}

#[tokio::test]
async fn claude_code_on_bedrock_creates_a_file_and_runs_a_command() {
    an_agent_creates_a_file_and_runs_a_command_on("claude-code", Upstream::Bedrock).await;
}

#[tokio::test]
async fn aider_on_bedrock_converse_creates_a_file_and_runs_a_command() {
    an_agent_creates_a_file_and_runs_a_command_on("aider", Upstream::Bedrock).await;
}

#[tokio::test]
async fn opencode_on_bedrock_converse_creates_a_file_and_runs_a_command() {
    an_agent_creates_a_file_and_runs_a_command_on("opencode", Upstream::Bedrock).await;
}

#[tokio::test]
async fn openhands_on_bedrock_converse_creates_a_file_and_runs_a_command() {
    // OpenHands calls models through LiteLLM.
    an_agent_creates_a_file_and_runs_a_command_on("openhands", Upstream::Bedrock).await;
}

#[tokio::test]
async fn codex_creates_a_file_and_runs_a_command_through_the_gateway() {
    an_agent_as_shipped_creates_a_file_and_runs_a_command("codex").await;
}

#[tokio::test]
async fn aider_creates_a_file_and_runs_a_command_through_the_gateway() {
    an_agent_as_shipped_creates_a_file_and_runs_a_command("aider").await;
}

#[tokio::test]
async fn opencode_creates_a_file_and_runs_a_command_through_the_gateway() {
    an_agent_as_shipped_creates_a_file_and_runs_a_command("opencode").await;
}

#[tokio::test]
async fn gemini_cli_creates_a_file_and_runs_a_command_through_the_gateway() {
    an_agent_as_shipped_creates_a_file_and_runs_a_command("gemini-cli").await;
}

#[tokio::test]
async fn openhands_creates_a_file_and_runs_a_command_through_the_gateway() {
    an_agent_as_shipped_creates_a_file_and_runs_a_command("openhands").await;
}

#[test]
fn the_shipped_profiles_name_the_images_agents_toml_builds() {
    let sandbox_version = include_str!("../../../infra/sandbox/VERSION").trim();
    let agents = tests::agents::pinned_agents();
    let profiles = tests::agents::shipped_profiles();
    for (name, profile) in &profiles {
        let Some(image) = profile.get("image").and_then(|i| i.as_str()) else { continue };
        let agent = agents.get(name).unwrap_or_else(|| panic!("profile {name} names an image no agent builds"));
        let base = agent.get("base").and_then(|b| b.as_str()).unwrap_or("bookworm");
        let suffix = if base == "bookworm" { String::new() } else { format!("-{base}") };
        let expected = format!("paddock/agent-{name}:{}-{sandbox_version}{suffix}", agent["version"].as_str().unwrap());
        assert_eq!(image, expected, "profile {name}");
    }
    for name in agents.keys() {
        assert!(profiles.contains_key(name), "agent {name} is built but has no profile");
    }
    // The built-in profiles (tested through common::config) are the ones documented.
    let read = |name: &str| serde_json::from_value::<AgentConfig>(shipped_profile(name)).unwrap();
    let built_in = serde_json::to_value(AgentConfig::mini_swe_agent()).unwrap();
    assert_eq!(serde_json::to_value(read("mini-swe-agent")).unwrap(), built_in);
    let reference = read("reference");
    assert_eq!(reference.command, "paddock-agent");
    assert!(reference.reports_commands, "the reference agent signs its command reports");
}

#[tokio::test]
async fn an_agent_that_calls_its_vendor_directly_gets_nothing_and_the_attempt_is_recorded() {
    // Claude Code without the gateway's base URL: its default endpoint,
    // api.anthropic.com, through the egress proxy (as every sandbox
    // connection goes), which refuses it. It retries; 30 s bound it.
    let providers = EmulatedProviders::start().await;
    let mut profile = shipped_profile("claude-code");
    profile["env"]["PADDOCK_MODEL"] = json!("claude-scripted");
    profile["anthropic_base_url_env"] = json!([]);
    profile["token_env"] = json!(["ANTHROPIC_API_KEY"]);
    profile["command"] =
        json!(format!("timeout 30 bash -c '{}'", profile["command"].as_str().unwrap().replace('\'', r"'\''")));
    let profile = profile.to_string();
    let providers_json = scripted_providers(&providers);
    let app = tests::spawn_app(&[
        ("PADDOCK_AGENTS__CLAUDE-CODE", profile.as_str()),
        ("PADDOCK_GATEWAY__PROVIDERS", providers_json.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", SCRIPTED_ALLOWED),
        ("PADDOCK_SANDBOX__MEMORY_BYTES", "2147483648"),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# Widgets\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run_as(&repo, "Add a greeting file", "claude-code").await;
    let run = app.wait_for(&id, Duration::from_secs(120), |r| r["state"] != "queued" && r["state"] != "running").await;
    let logs = app.logs_of(&run).await;
    assert_eq!(run["facts"]["files_changed"], json!([]), "{logs}");
    let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
    let egress = summary["egress"].as_array().unwrap();
    let vendor: Vec<&Value> = egress.iter().filter(|e| e["host"] == "api.anthropic.com").collect();
    assert!(!vendor.is_empty(), "the direct call was not recorded: {egress:?}\n{logs}");
    assert!(vendor.iter().all(|e| e["allowed"] == false), "{vendor:?}");
    assert!(logs.contains("paddock: egress denied CONNECT api.anthropic.com:443"), "{logs}");
    assert!(providers.received().is_empty(), "a call reached a provider: {:?}", providers.received());
    assert!(summary["model_calls"].as_array().unwrap().is_empty());
    worker.shutdown().await;
    providers.stop().await;
}
