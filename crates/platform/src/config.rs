//! Loading the configuration: defaults, then a TOML file, then `PADDOCK_*`
//! variables (figment); the result is validated, naming the key at fault.

use std::path::{Path, PathBuf};

use common::config::{Config, ConfigError};
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::SecretString;

/// `PADDOCK_*` variables that are not configuration keys.
const NOT_CONFIG: &[&str] = &["CONFIG", "HOME", "BIN_DIR", "LOG_FORMAT"];

/// Loads defaults, then `file` if given, then the `PADDOCK_*` variables
/// from `env`.
pub fn load<I>(file: Option<&Path>, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Invalid {
                key: "config file",
                message: format!("{} does not exist", path.display()),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let env: Vec<(String, String)> = env.into_iter().collect();
    let standard = |names: [&str; 2]| {
        names.iter().find_map(|name| env.iter().find(|(k, v)| k == name && !v.trim().is_empty())).map(|(_, v)| v)
    };
    let vars: Vec<(String, String)> = env
        .iter()
        .cloned()
        .filter_map(|(k, v)| {
            k.strip_prefix("PADDOCK_")
                .filter(|rest| !NOT_CONFIG.contains(rest))
                .map(|rest| (rest.to_lowercase().replace("__", "."), v))
        })
        .collect();
    for (key, value) in vars {
        figment = figment.merge(Serialized::global(&key, parse_env_value(&value)));
    }
    let mut config: Config = figment.extract().map_err(|e| ConfigError::Parse(e.to_string()))?;
    if config.outbound.https_proxy.is_none() {
        config.outbound.https_proxy = standard(["https_proxy", "HTTPS_PROXY"]).map(|v| SecretString::from(v.clone()));
    }
    if config.outbound.no_proxy.is_empty() {
        config.outbound.no_proxy = standard(["no_proxy", "NO_PROXY"])
            .map(|v| v.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
    }
    config.validate()?;
    Ok(config)
}

/// The configuration file a binary was given: `--config FILE`, else
/// `PADDOCK_CONFIG`, else none (defaults and the environment only). Any
/// other arguments are refused with `usage`.
pub fn file_from_args(mut args: impl Iterator<Item = String>, usage: &str) -> Result<Option<PathBuf>, ConfigError> {
    let from_env = std::env::var_os("PADDOCK_CONFIG").map(PathBuf::from);
    match (args.next().as_deref(), args.next(), args.next()) {
        (None, _, _) => Ok(from_env),
        (Some("--config"), Some(path), None) => Ok(Some(PathBuf::from(path))),
        _ => Err(ConfigError::Invalid { key: "command line", message: format!("is not understood; {usage}") }),
    }
}

/// Environment values are strings; numbers and booleans are recognised so
/// `PADDOCK_WORKER__CONCURRENCY=4` sets an integer, and a JSON array or
/// object sets a list or map (`PADDOCK_EGRESS__ALLOW='["pypi.org"]'`).
fn parse_env_value(value: &str) -> figment::value::Value {
    if let Ok(n) = value.parse::<i64>() {
        return n.into();
    }
    if (value.starts_with('[') || value.starts_with('{'))
        && let Ok(parsed) = serde_json::from_str::<figment::value::Value>(value)
    {
        return parsed;
    }
    match value {
        "true" => true.into(),
        "false" => false.into(),
        _ => value.to_owned().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::config::AgentConfig;
    use secrecy::ExposeSecret;
    use std::path::Path;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn retention_days_per_class_zero_forever_and_the_provider_policy_sets_model_call_metadata() {
        use common::retention::RetentionClass;
        let config = load(None, env(&[("PADDOCK_RETENTION__LOGS_DAYS", "0")])).expect("config loads");
        assert_eq!(config.retention.days(RetentionClass::Logs), None);
        assert_eq!(config.retention.days(RetentionClass::Audit), Some(400));
        let policy: common::policy::LlmPolicy = serde_json::from_value(serde_json::json!({
            "allowed_providers": [], "logging": {"prompt_content": "redacted", "metadata": "retained_45_days"}
        }))
        .expect("a policy");
        let applied = config.retention.with_policy(Some(&policy));
        assert_eq!(applied.days(RetentionClass::GatewayMetadata), Some(45));
        assert_eq!(config.retention.with_policy(None).days(RetentionClass::GatewayMetadata), Some(400));
        let overlapping = load(None, env(&[("PADDOCK_AUDIT__EXPORT_PREFIX", "audit/v1/exports")]));
        assert!(overlapping.unwrap_err().to_string().contains("audit.export_prefix"));
        let side_by_side =
            env(&[("PADDOCK_AUDIT__PREFIX", "audit"), ("PADDOCK_AUDIT__EXPORT_PREFIX", "audit-exports")]);
        assert!(load(None, side_by_side).is_ok());
    }

    #[test]
    fn an_otlp_endpoint_must_be_an_http_url_and_the_error_names_the_key() {
        let loaded = |url: &str| load(None, env(&[("PADDOCK_TELEMETRY__OTLP_ENDPOINT", url)]));
        let config = loaded("https://otel-collector.internal:4318").expect("config loads");
        assert_eq!(config.telemetry.otlp_endpoint.as_deref(), Some("https://otel-collector.internal:4318"));
        for bad in ["otel-collector:4318", "grpc://collector:4317", "https://", "http:///v1"] {
            let error = loaded(bad).expect_err(bad).to_string();
            assert!(error.contains("telemetry.otlp_endpoint"), "{bad}: {error}");
        }
    }

    #[test]
    fn environment_overrides_defaults() {
        let config = load(None, env(&[("PADDOCK_WORKER__CONCURRENCY", "7"), ("PADDOCK_REDIS__NAMESPACE", "t1")]))
            .expect("config loads");
        assert_eq!(config.worker.concurrency, 7);
        assert_eq!(config.redis.namespace, "t1");
    }

    #[test]
    fn lists_and_maps_come_from_json_in_the_environment() {
        let config = load(
            None,
            env(&[
                ("PADDOCK_EGRESS__ALLOW", r#"["pypi.org", "*.corp.example"]"#),
                ("PADDOCK_EGRESS__STATIC_HOSTS", r#"{"mirror.corp.example": "10.1.2.3"}"#),
            ]),
        )
        .expect("config loads");
        assert_eq!(config.egress.allow, vec!["pypi.org", "*.corp.example"]);
        assert_eq!(config.egress.static_hosts["mirror.corp.example"], "10.1.2.3");
    }

    #[test]
    fn tenants_own_disjoint_repositories_and_only_the_default_tenant_owns_the_rest() {
        let config = load(
            None,
            env(&[
                ("PADDOCK_TENANTS__PAYMENTS__REPOSITORIES", r#"["acme/ledger", "acme/payments-*"]"#),
                ("PADDOCK_TENANTS__DEFAULT__REPOSITORIES", r#"["*"]"#),
            ]),
        )
        .expect("config loads");
        let tenancy = config.tenancy().expect("consistent");
        assert_eq!(tenancy.owner_of(&"acme/payments-api".parse().unwrap()), Ok("payments"));
        assert_eq!(tenancy.owner_of(&"acme/widgets".parse().unwrap()), Ok("default"));
        let none = load(None, env(&[])).expect("no tenants is valid");
        assert!(none.tenancy().unwrap().owner_of(&"acme/widgets".parse().unwrap()).is_err(), "nobody owns it");
        let overlapping = env(&[
            ("PADDOCK_TENANTS__PAYMENTS__REPOSITORIES", r#"["acme/pay*"]"#),
            ("PADDOCK_TENANTS__BILLING__REPOSITORIES", r#"["acme/*ments"]"#),
        ]);
        let err = load(None, overlapping).unwrap_err().to_string();
        assert!(err.contains("`tenants`") && err.contains("billing") && err.contains("payments"), "{err}");
        let stolen = load(None, env(&[("PADDOCK_TENANTS__PAYMENTS__REPOSITORIES", r#"["*"]"#)])).unwrap_err();
        assert!(stolen.to_string().contains("only the default tenant"), "{stolen}");
        let bad = load(None, env(&[("PADDOCK_TENANTS__PAYMENTS__REPOSITORIES", r#"["acme"]"#)])).unwrap_err();
        assert!(bad.to_string().contains("acme"), "{bad}");
        let gone = load(None, env(&[("PADDOCK_GITHUB__TENANT", "payments")])).unwrap_err();
        assert!(gone.to_string().contains("github.tenant"), "{gone}");
    }

    #[test]
    fn errors_name_the_key() {
        let err = load(None, env(&[("PADDOCK_WORKER__CONCURRENCY", "0")])).unwrap_err();
        assert!(err.to_string().contains("worker.concurrency"), "{err}");
        let err = load(None, env(&[("PADDOCK_WORKER__CONCURENCY", "2")])).unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
        let err = load(None, env(&[("PADDOCK_WORKER__CONCURRENCY", "many")])).unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");
        let err = load(None, env(&[("PADDOCK_PUBLISH__MODE", "fork")])).unwrap_err();
        assert!(err.to_string().contains("publish.fork_owner"), "{err}");
        let err =
            load(None, env(&[("PADDOCK_PUBLISH__MODE", "fork"), ("PADDOCK_PUBLISH__FORK_OWNER", "a/b")])).unwrap_err();
        assert!(err.to_string().contains("publish.fork_owner"), "{err}");
        let err = load(None, env(&[("PADDOCK_SANDBOX__RUNTIME", "kata")])).unwrap_err();
        assert!(err.to_string().contains("runtime"), "{err}");
        let forked = env(&[("PADDOCK_PUBLISH__MODE", "fork"), ("PADDOCK_PUBLISH__FORK_OWNER", "acme-paddock")]);
        let config = load(None, forked).expect("config loads");
        assert_eq!(config.publish.fork_of(&"acme/ledger".parse().unwrap()).unwrap().to_string(), "acme-paddock/ledger");
    }

    #[test]
    fn the_outbound_proxy_falls_back_to_the_standard_variables_and_tls_cannot_be_turned_off() {
        let standard = env(&[("HTTPS_PROXY", "http://u:p@proxy.corp:3128"), ("no_proxy", "internal.corp, 10.0.0.0/8")]);
        let config = load(None, standard.clone()).expect("config loads");
        let proxy = config.outbound.https_proxy.as_ref().map(|p| p.expose_secret().to_owned());
        assert_eq!(proxy.as_deref(), Some("http://u:p@proxy.corp:3128"));
        assert_eq!(config.outbound.no_proxy, ["internal.corp", "10.0.0.0/8"]);
        assert!(!format!("{config:?}").contains("u:p@"), "proxy credentials must not show in Debug");
        let mut configured = standard;
        configured.push(("PADDOCK_OUTBOUND__HTTPS_PROXY".to_owned(), "http://egress.corp:8080".to_owned()));
        let config = load(None, configured).expect("config loads");
        let proxy = config.outbound.https_proxy.as_ref().map(|p| p.expose_secret().to_owned());
        assert_eq!(proxy.as_deref(), Some("http://egress.corp:8080"), "configuration wins over the environment");
        for (key, value, named) in [
            ("PADDOCK_REDIS__URL", "rediss://cache.corp:6380/#insecure", "redis.url"),
            ("PADDOCK_REDIS__URL", "cache.corp:6379", "redis.url"),
            ("PADDOCK_OUTBOUND__HTTPS_PROXY", "proxy.corp:3128", "outbound.https_proxy"),
            ("PADDOCK_TLS__VERIFY", "false", "verify"),
        ] {
            let err = load(None, env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
        }
    }

    #[test]
    fn the_documented_agent_profiles_load_and_match_the_built_in_ones() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/agents/profiles.toml");
        let config = load(Some(&file), env(&[])).unwrap();
        for name in ["reference", "mini-swe-agent", "claude-code", "codex", "aider", "openhands"] {
            assert!(config.agents.contains_key(name), "{name} is not documented");
        }
        let documented = &config.agents["mini-swe-agent"];
        let built_in = AgentConfig::mini_swe_agent();
        assert_eq!((&documented.command, &documented.env), (&built_in.command, &built_in.env));
        assert_eq!(config.agents["claude-code"].token_env, ["ANTHROPIC_AUTH_TOKEN"]);
    }

    #[test]
    fn gateway_settings_are_checked_with_the_key_named() {
        let cases = [
            ("PADDOCK_GATEWAY__RUN_COST_BUDGET_USD", "-1", "gateway.run_cost_budget_usd"),
            ("PADDOCK_GATEWAY__REMOTE", "gateway.internal", "gateway.remote"),
            ("PADDOCK_GATEWAY__REMOTE_SERVER_NAME", "gateway.corp", "gateway.remote_server_name"),
            ("PADDOCK_GATEWAY__TLS_KEY_FILE", "/etc/paddock/gateway.key", "gateway.tls_cert_file"),
            (
                "PADDOCK_GATEWAY__PROVIDERS",
                r#"{"v": {"kind": "vertex", "base_url": "https://x", "models": ["m"], "project": "p"}}"#,
                "gateway.providers",
            ),
            (
                "PADDOCK_GATEWAY__PROVIDERS",
                r#"{"o": {"kind": "openai", "base_url": "https://x", "models": ["m"]}}"#,
                "needs an api_key",
            ),
            (
                "PADDOCK_GATEWAY__PROVIDERS",
                r#"{"o": {"kind": "openai", "api_key": "k", "models": ["m"]}}"#,
                "`o` needs a base_url",
            ),
            ("PADDOCK_GATEWAY__PROVIDERS", r#"{"b": {"kind": "bedrock", "models": ["m"]}}"#, "needs a region"),
            (
                "PADDOCK_GATEWAY__PROVIDERS",
                r#"{"b": {"kind": "bedrock", "region": "us-east-1", "models": ["m"], "aws": {"access_key_id": "AKIA"}}}"#,
                "aws.access_key_id and aws.secret_access_key must be set together",
            ),
            (
                "PADDOCK_GATEWAY__PROVIDERS",
                r#"{"b": {"kind": "bedrock", "region": "us-east-1", "models": ["m"], "aws": {"role_arn": "arn:aws:iam::1:role/r"}}}"#,
                "aws.role_arn and aws.web_identity_token_file must be set together",
            ),
            (
                "PADDOCK_GATEWAY__PROVIDERS",
                r#"{"b": {"kind": "bedrock", "region": "us-east-1", "models": ["m"], "api_key": "k"}}"#,
                "signs with AWS credentials",
            ),
            (
                "PADDOCK_GATEWAY__PROVIDERS",
                r#"{"b": {"kind": "bedrock", "region": "us-east-1", "models": ["m"], "aws": {"profile": "x"}}}"#,
                "profile",
            ),
        ];
        for (key, value, named) in cases {
            let err = load(None, env(&[(key, value)])).unwrap_err();
            assert!(err.to_string().contains(named), "{key}={value}: {err}");
        }
        let vertex = r#"{"v": {"kind": "vertex", "base_url": "https://x", "models": ["m"], "project": "p",
            "region": "r", "credentials_file": "/etc/sa.json", "prices": {"m": {"input_usd_per_mtok": 3, "output_usd_per_mtok": 15}}}}"#;
        let config = load(None, env(&[("PADDOCK_GATEWAY__PROVIDERS", vertex)])).unwrap();
        assert_eq!(config.gateway.providers["v"].prices["m"].output_usd_per_mtok, 15.0);
        // Bedrock needs no base_url and no api_key: the region's endpoint
        // and the instance or pod role.
        let bedrock = r#"{"b": {"kind": "bedrock", "region": "eu-west-1", "models": ["m"]}}"#;
        let config = load(None, env(&[("PADDOCK_GATEWAY__PROVIDERS", bedrock)])).unwrap();
        assert!(config.gateway.providers["b"].aws.access_key_id.is_none());
    }

    #[test]
    fn a_file_is_layered_between_defaults_and_environment() {
        let dir = std::env::temp_dir().join(format!("paddock-config-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("paddock.toml");
        std::fs::write(&path, "[worker]\nconcurrency = 3\nname = \"from-file\"\n[agents.fix]\ncommand = \"true\"\n")
            .expect("write config");
        let config = load(Some(&path), env(&[("PADDOCK_WORKER__CONCURRENCY", "5")])).expect("config loads");
        assert_eq!(config.worker.concurrency, 5);
        assert_eq!(config.worker.name, "from-file");
        assert!(config.agents.contains_key("fix") && config.agents.contains_key("default"));
        std::fs::remove_dir_all(dir).ok();
    }
}
