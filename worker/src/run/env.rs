//! The environment an agent's command runs with inside its sandbox.

use std::net::Ipv4Addr;

use common::RunSpec;
use common::config::AgentConfig;

/// What the sandbox reaches besides its files: the egress proxy, and the
/// model gateway with the run token when models are allowed.
pub(super) struct Reach<'a> {
    pub(super) gateway_ip: Ipv4Addr,
    pub(super) proxy_url: &'a str,
    /// The gateway's base URL and the run token.
    pub(super) models: Option<(&'a str, &'a str)>,
}

/// The profile's own variables first, then Paddock's, which win: the task,
/// the run id, the proxy for everything but the gateway, and the gateway's
/// base URL and token under the names the profile's agent reads (by
/// default those of the SDKs, LiteLLM, Codex CLI, Claude Code and Gemini
/// CLI).
pub(super) fn agent_env(run: &common::RunId, spec: &RunSpec, agent: &AgentConfig, reach: &Reach<'_>) -> Vec<String> {
    let mut env: Vec<String> = agent.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend([
        format!("PADDOCK_TASK={}\n\n{}", spec.task_title, spec.task_body),
        format!("PADDOCK_TASK_TITLE={}", spec.task_title),
        format!("PADDOCK_TASK_BODY={}", spec.task_body),
        format!("PADDOCK_RUN_ID={run}"),
        "HOME=/tmp".to_owned(),
        // The model gateway is on the sandbox's own gateway address.
        format!("NO_PROXY={}", reach.gateway_ip),
        format!("no_proxy={}", reach.gateway_ip),
    ]);
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.push(format!("{name}={}", reach.proxy_url));
    }
    if let Some((base, token)) = reach.models {
        // The only secret a sandbox ever holds: revoked when the run ends.
        env.extend(agent.openai_base_url_env.iter().map(|name| format!("{name}={base}/v1")));
        env.extend(agent.anthropic_base_url_env.iter().map(|name| format!("{name}={base}")));
        env.extend(agent.gemini_base_url_env.iter().map(|name| format!("{name}={base}")));
        env.extend(agent.token_env.iter().map(|name| format!("{name}={token}")));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RunSpec {
        serde_json::from_value(serde_json::json!({
            "tenant": "payments", "repository": "acme/api", "base_ref": "main",
            "task_title": "Fix the typo", "task_body": "README says wrold",
            "requested_by": "dev@example.com", "agent_profile": "default"
        }))
        .expect("a run spec")
    }

    fn value<'a>(env: &'a [String], name: &str) -> Vec<&'a str> {
        env.iter().filter_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')).collect()
    }

    #[test]
    fn paddock_variables_win_over_the_profile_and_the_gateway_bypasses_the_proxy() {
        let mut agent = AgentConfig::mini_swe_agent();
        agent.env.insert("HOME".to_owned(), "/root".to_owned());
        agent.env.insert("MSWEA_COST_TRACKING".to_owned(), "ignore_errors".to_owned());
        let run = common::RunId::new();
        let reach =
            Reach { gateway_ip: Ipv4Addr::new(10, 203, 0, 1), proxy_url: "http://10.203.0.1:3128", models: None };
        let env = agent_env(&run, &spec(), &agent, &reach);
        let home = env.iter().rposition(|kv| kv == "HOME=/tmp");
        assert!(home > env.iter().position(|kv| kv == "HOME=/root"), "the later value wins in the exec env");
        assert_eq!(value(&env, "MSWEA_COST_TRACKING"), ["ignore_errors"]);
        assert_eq!(value(&env, "NO_PROXY"), ["10.203.0.1"]);
        assert_eq!(value(&env, "https_proxy"), ["http://10.203.0.1:3128"]);
        assert_eq!(value(&env, "PADDOCK_TASK"), ["Fix the typo\n\nREADME says wrold"]);
        assert_eq!(value(&env, "PADDOCK_RUN_ID"), [run.to_string().as_str()]);
        assert!(value(&env, "OPENAI_API_KEY").is_empty(), "no token without a gateway");
    }

    #[test]
    fn the_run_token_and_base_urls_go_under_the_names_the_profile_reads() {
        let mut agent = AgentConfig::mini_swe_agent();
        agent.openai_base_url_env = vec!["OPENAI_BASE_URL".to_owned()];
        agent.anthropic_base_url_env = vec!["ANTHROPIC_BASE_URL".to_owned()];
        agent.token_env = vec!["OPENAI_API_KEY".to_owned(), "ANTHROPIC_AUTH_TOKEN".to_owned()];
        let base = "http://10.203.0.1:8089";
        let reach = Reach {
            gateway_ip: Ipv4Addr::new(10, 203, 0, 1),
            proxy_url: "http://10.203.0.1:3128",
            models: Some((base, "pdk_run_x")),
        };
        let env = agent_env(&common::RunId::new(), &spec(), &agent, &reach);
        assert_eq!(value(&env, "OPENAI_BASE_URL"), ["http://10.203.0.1:8089/v1"]);
        assert_eq!(value(&env, "ANTHROPIC_BASE_URL"), [base]);
        assert_eq!(value(&env, "OPENAI_API_KEY"), ["pdk_run_x"]);
        assert_eq!(value(&env, "ANTHROPIC_AUTH_TOKEN"), ["pdk_run_x"]);
    }
}
