//! The agent profiles Paddock ships (`infra/agents/profiles.toml`), set up
//! against the scripted model for the tests and the demo.

use serde_json::{Value, json};

use crate::TestApp;
use crate::providers::EmulatedProviders;

/// A file of `infra/agents/`, found from the working directory upwards
/// (the demo runs from a checkout) or else beside this crate.
fn agents_file(name: &str) -> std::path::PathBuf {
    let here = std::env::current_dir().unwrap_or_default();
    here.ancestors()
        .map(|dir| dir.join("infra/agents").join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/agents").join(name))
}

fn table(name: &str) -> toml::Table {
    let path = agents_file(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `profiles.toml`'s `[agents]`.
pub fn shipped_profiles() -> toml::Table {
    table("profiles.toml")["agents"].as_table().cloned().unwrap_or_default()
}

/// `agents.toml`: the agents Paddock builds images for.
pub fn pinned_agents() -> toml::Table {
    table("agents.toml")
}

/// A shipped profile, as JSON for `PADDOCK_AGENTS__<NAME>`.
pub fn shipped_profile(name: &str) -> Value {
    let profiles = shipped_profiles();
    let profile = profiles.get(name).unwrap_or_else(|| panic!("no profile {name} in profiles.toml"));
    serde_json::to_value(profile).unwrap()
}

/// The scripted model an agent's dialect reaches: Claude Code speaks
/// Anthropic Messages, Gemini CLI the Gemini API, the others OpenAI's.
pub fn scripted_model(agent: &str) -> &'static str {
    match agent {
        "claude-code" => "claude-scripted",
        "gemini-cli" => "gemini-scripted",
        _ => "gpt-scripted",
    }
}

/// The emulated providers behind the gateway, one per dialect.
pub fn scripted_providers(providers: &EmulatedProviders) -> String {
    json!({
        "scripted-anthropic": {"kind": "anthropic", "base_url": providers.base_url, "api_key": providers.key, "models": ["claude-scripted"]},
        "scripted-openai": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-scripted"]},
        "scripted-gemini": {"kind": "gemini", "base_url": format!("{}/v1beta", providers.root_url), "api_key": providers.key, "models": ["gemini-scripted"]},
    })
    .to_string()
}

pub const SCRIPTED_ALLOWED: &str = r#"["scripted-anthropic", "scripted-openai", "scripted-gemini"]"#;

/// The shipped profile `name` on the scripted model, configured as profile
/// `name` beside the scripted providers.
pub fn agent_settings(name: &str, providers: &EmulatedProviders) -> Vec<(String, String)> {
    let model = scripted_model(name);
    let mut profile = shipped_profile(name);
    profile["env"]["PADDOCK_MODEL"] = json!(model);
    if profile["env"].get("LLM_MODEL").is_some() {
        // OpenHands names its model through LiteLLM.
        profile["env"]["LLM_MODEL"] = json!(format!("openai/{model}"));
    }
    vec![
        (format!("PADDOCK_AGENTS__{}", name.to_uppercase()), profile.to_string()),
        ("PADDOCK_GATEWAY__PROVIDERS".to_owned(), scripted_providers(providers)),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS".to_owned(), SCRIPTED_ALLOWED.to_owned()),
        // Real agents are bigger than the reference one.
        ("PADDOCK_SANDBOX__MEMORY_BYTES".to_owned(), (2u64 << 30).to_string()),
    ]
}

/// An app running the shipped profile `name` on the scripted model, with
/// `extra` settings on top, and a repository holding `README.md`.
pub async fn agent_app(name: &str, providers: &EmulatedProviders, extra: &[(&str, &str)]) -> (TestApp, String) {
    let settings = agent_settings(name, providers);
    let mut vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.extend_from_slice(extra);
    let app = crate::spawn_app(&vars).await;
    let repo = app.repo(&[("README.md", b"# Widgets\n")]);
    (app, repo)
}

/// Posts "Add a greeting file" for `agent` on `repo`, its body holding a
/// canary of every redaction class, and waits (up to 400 s) for the run to
/// end: the canaries, the run and its stored log.
pub async fn run_with_canaries(app: &TestApp, repo: &str, agent: &str) -> (Vec<(&'static str, String)>, Value, String) {
    let canaries = gateway::canaries();
    let body: String = canaries.iter().map(|(_, c)| format!("context: {c}\n")).collect();
    let request = json!({"repository": repo, "base_ref": "main", "agent_profile": agent,
        "task": {"title": "Add a greeting file", "body": body}});
    let response = app.post_run(&request).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let ended = |r: &Value| r["state"] != "queued" && r["state"] != "running";
    let run = app.wait_for(&id, std::time::Duration::from_secs(400), ended).await;
    let logs = app.logs_of(&run).await;
    (canaries, run, logs)
}
