//! Typed configuration shared by the api and worker binaries.
//!
//! Layers, later wins: built-in defaults < TOML file < `PADDOCK_*` environment
//! variables (`__` separates sections, e.g. `PADDOCK_REDIS__URL`). Unknown keys
//! are refused, and every error names the key it is about.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub redis: RedisConfig,
    pub s3: S3Config,
    pub api: ApiConfig,
    pub worker: WorkerConfig,
    pub sandbox: SandboxConfig,
    pub git: GitConfig,
    pub egress: EgressConfig,
    pub gateway: GatewayConfig,
    pub secrets: SecretsConfig,
    pub github: GitHubConfig,
    pub publish: PublishConfig,
    pub identity: IdentityConfig,
    pub audit: AuditConfig,
    pub retention: RetentionConfig,
    pub tls: TlsConfig,
    pub outbound: OutboundConfig,
    pub telemetry: TelemetryConfig,
    /// Agent profiles by name; a run names one (or gets `default`).
    pub agents: BTreeMap<String, AgentConfig>,
    /// Tenants by name and the repositories each owns. A run's tenant is
    /// the one owning its repository; more can be declared through
    /// `PUT /v1/tenants/{tenant}`.
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// What one tenant owns.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// `owner/name` patterns with `*` wildcards (`acme/payments-*`,
    /// `acme/*`); `*` alone (every repository nobody else owns) only for
    /// `api.default_tenant`.
    pub repositories: Vec<crate::tenancy::RepoPattern>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    /// Every key Paddock writes starts with `<namespace>:{q}:`, so several
    /// deployments (or tests) can share one Redis without touching each other.
    pub namespace: String,
    /// How long a finished run's record stays in Redis; S3 keeps the evidence.
    pub finished_run_ttl_seconds: u64,
    /// How long runs that failed for infrastructure reasons stay in the
    /// dead-letter set.
    pub dead_letter_keep_seconds: u64,
    /// Connect to a Redis Cluster (`url` is any node) instead of one server.
    pub cluster: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint of an S3-compatible store; empty means AWS's regional endpoint.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    #[serde(serialize_with = "serialize_secret")]
    pub secret_access_key: SecretString,
    pub force_path_style: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: String,
    /// Until identity lands this token is the only way in; the API refuses to
    /// start without one.
    #[serde(serialize_with = "serialize_secret")]
    pub bootstrap_admin_token: SecretString,
    /// The tenant that may own `*`: every repository no other tenant owns.
    /// It owns nothing unless `[tenants.<default_tenant>]` says so.
    pub default_tenant: String,
    pub max_attempts: u32,
    /// How long an `Idempotency-Key` returns the run it first created.
    pub idempotency_ttl_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Prefix of the worker's name; a unique suffix is added per process.
    pub name: String,
    /// Runs this process executes at once.
    pub concurrency: usize,
    pub lease_seconds: u64,
    pub heartbeat_seconds: u64,
    /// How often an idle worker asks for work when no wake-up came: the
    /// queue publishes one when work becomes claimable, so this only bounds
    /// the delay when Pub/Sub loses one.
    pub poll_interval_ms: u64,
    /// After SIGTERM, how long running runs may continue before they are
    /// stopped and handed back to the queue.
    pub shutdown_grace_seconds: u64,
    /// Host directory for per-run clones.
    pub work_dir: PathBuf,
    /// Retry backoff base for infrastructure failures.
    pub retry_base_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    pub image: String,
    pub docker_host: String,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    pub workspace_bytes: u64,
    pub tmp_bytes: u64,
    pub timeout_seconds: u64,
    /// The runtime sandboxes run under unless a policy says otherwise:
    /// `runc` (default) or `runsc` (gVisor; `cargo xtask setup` registers it).
    pub runtime: SandboxRuntime,
    /// Pool the per-run sandbox networks (/28 each) are carved from.
    pub subnet_pool: String,
    /// Numeric uid:gid the agent runs as.
    pub uid: u32,
    pub gid: u32,
    /// Bytes of agent output kept; the rest is dropped with a marker.
    pub max_log_bytes: usize,
    pub max_diff_bytes: usize,
    /// The most one file of the diff may hold once its binary patch is
    /// inflated (a compressed patch can be tiny and inflate to gigabytes).
    pub max_inflated_file_bytes: u64,
    /// The most all of the diff's binary patches may hold inflated.
    pub max_inflated_diff_bytes: u64,
    /// The most files a checkout may hold (its bytes are bounded by the
    /// workspace): checked before anything is written out on the host.
    pub max_checkout_files: u64,
    /// Sandboxes each worker keeps made, hardened, verified and started
    /// for the default image and policy class (and as many of each agent
    /// profile's own image, unless the profile says otherwise in its
    /// `warm_pool`), so a run's start skips the
    /// network, volume and container set-up (each used once, then removed;
    /// 0 turns the pool off). Each idle member holds its network, firewall
    /// rules and an empty workspace, and counts against the host's
    /// sandboxes like a running one.
    pub warm_pool: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    /// Base URL the worker clones from: `<base_url>/<owner>/<name>.git`.
    pub base_url: String,
}

/// What a sandbox may reach through the worker's egress proxy. Nothing else
/// is reachable at all: the sandbox network is internal and has no DNS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// `none` (default: nothing), `registries` (package registries) or
    /// `custom` (the registries preset is not included; only `allow`).
    pub preset: EgressPreset,
    /// Hostnames allowed in addition to the preset: `example.com` exactly,
    /// `*.example.com` for its subdomains.
    pub allow: Vec<String>,
    /// The hostnames of the `registries` preset.
    pub registries: Vec<String>,
    /// Private networks (CIDR) the proxy may connect to, e.g. an internal
    /// package mirror; every other private, loopback or link-local address
    /// is refused.
    pub trusted_networks: Vec<String>,
    /// Names the proxy resolves to fixed addresses instead of asking DNS.
    pub static_hosts: BTreeMap<String, String>,
    /// Port of the proxy on each sandbox network's gateway address.
    pub proxy_port: u16,
}

/// The LLM gateway a sandbox calls models through: served on each run's
/// gateway address, authenticated by a per-run token, forwarding only to
/// the providers policy allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Port on each sandbox network's gateway address.
    pub port: u16,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub allowed_providers: Vec<String>,
    /// Further secrets to redact wherever they appear (exact match).
    #[serde(serialize_with = "serialize_secrets")]
    pub redact: Vec<SecretString>,
    /// Model calls one run may make per minute (in the worker; 0: no limit).
    pub run_requests_per_minute: u32,
    /// Model calls per minute per tenant, across every gateway (0: none).
    pub tenant_requests_per_minute: u32,
    /// Model calls per minute per provider, across every gateway (0: none).
    pub provider_requests_per_minute: u32,
    /// Tokens per minute per tenant, across every gateway (0: none). A call
    /// takes its worst case (prompt and `max_tokens`) when admitted; the
    /// unused part is given back when its usage is known.
    pub tenant_tokens_per_minute: u64,
    /// Tokens per minute per provider, across every gateway (0: none).
    pub provider_tokens_per_minute: u64,
    /// Tokens one run may use (0: no budget).
    pub run_token_budget: u64,
    /// Tokens one tenant may use per UTC day (0: no budget).
    pub tenant_daily_token_budget: u64,
    /// US dollars one run may spend on models, at `providers.*.prices`
    /// (0: no budget).
    pub run_cost_budget_usd: f64,
    /// US dollars one tenant may spend per UTC day (0: no budget).
    pub tenant_daily_cost_budget_usd: f64,
    /// Standalone gateway (`worker gateway`): where it listens, e.g.
    /// `0.0.0.0:8089`.
    pub listen: String,
    /// Set on workers when a standalone gateway holds the provider keys:
    /// its `host:port`. The worker then relays each run's gateway address
    /// there and needs no provider configuration itself.
    pub remote: Option<String>,
    /// Workers: relay to `remote` over TLS, checking the gateway's
    /// certificate (operating system's store plus `tls.extra_ca_files`)
    /// for `remote_server_name`, or for the address in `remote`.
    pub remote_tls: bool,
    pub remote_server_name: Option<String>,
    /// Standalone gateway: serve TLS on `listen` with this certificate
    /// chain and key (PEM), so prompts and run tokens cross the network
    /// between workers and gateway hosts encrypted.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// What the run's transcript keeps of prompts and completions:
    /// `redacted` (default) or `omitted` (metadata only).
    pub prompt_content: PromptContent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptContent {
    Redacted,
    Omitted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// e.g. `https://api.openai.com/v1`, `https://api.anthropic.com/v1` or
    /// `https://us-east5-aiplatform.googleapis.com`. Bedrock: optional, a
    /// VPC endpoint such as
    /// `https://vpce-0abc-xyz.bedrock-runtime.us-east-1.vpce.amazonaws.com`
    /// (default `https://bedrock-runtime.<region>.amazonaws.com`).
    #[serde(default)]
    pub base_url: String,
    /// The provider's key (not used by `vertex`, which signs in with
    /// `credentials_file`, nor by `bedrock`, which signs with `aws`).
    #[serde(serialize_with = "serialize_secret", default = "no_secret")]
    pub api_key: SecretString,
    /// Models this provider may be asked for.
    pub models: Vec<String>,
    /// Azure OpenAI: the `api-version` query parameter.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Model name → the provider's name for it: an Azure deployment, a
    /// Vertex model version such as `claude-sonnet-4@20250514`, or a
    /// Bedrock model id or inference profile such as
    /// `us.anthropic.claude-sonnet-4-20250514-v1:0` (default: the same name).
    #[serde(default)]
    pub deployments: BTreeMap<String, String>,
    /// Price per model, for cost metadata and cost budgets.
    #[serde(default)]
    pub prices: BTreeMap<String, ModelPrice>,
    /// Vertex AI: the Google Cloud project and region (Bedrock: the AWS
    /// region).
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Vertex AI: a service-account key file (JSON); the gateway exchanges
    /// a signed assertion for a short-lived access token.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// `anthropic-beta` flags passed on (Anthropic and Vertex); every other
    /// flag is dropped, since a beta can switch on server-side features.
    #[serde(default)]
    pub anthropic_betas: Vec<String>,
    /// Server-side tools calls may use, by type without its version:
    /// `web_search`, `web_fetch`, `code_execution`, `code_interpreter`,
    /// `file_search`, `image_generation`, `mcp` (remote MCP servers and
    /// connectors). The provider runs them outside the sandbox, so none by
    /// default; client-side tools (functions, bash, editors) always pass.
    #[serde(default)]
    pub server_tools: Vec<String>,
    /// Whether content may name URLs the provider fetches itself (image,
    /// document and file sources); off by default: send content inline.
    #[serde(default)]
    pub remote_urls: bool,
    /// Bedrock: where the gateway's AWS credentials come from.
    #[serde(default)]
    pub aws: AwsCredentialsConfig,
}

/// The AWS credentials a `bedrock` provider signs with. Without keys here,
/// the standard chain: `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` /
/// `AWS_SESSION_TOKEN`, then web identity (`role_arn` and
/// `web_identity_token_file`, or `AWS_ROLE_ARN` and
/// `AWS_WEB_IDENTITY_TOKEN_FILE`: EKS IRSA), then the container endpoint
/// (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`: ECS, EKS Pod
/// Identity), then the instance role (IMDSv2).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsCredentialsConfig {
    /// Long-lived keys: a last resort where no role can be had; when set
    /// they are used and the chain is not asked.
    pub access_key_id: Option<String>,
    #[serde(serialize_with = "serialize_optional_secret")]
    pub secret_access_key: Option<SecretString>,
    /// Web identity: the role to assume and the file holding the OIDC
    /// token (re-read at each sign-in; Kubernetes rotates it).
    pub role_arn: Option<String>,
    pub web_identity_token_file: Option<PathBuf>,
    /// STS endpoint for web identity (default `AWS_ENDPOINT_URL_STS`, else
    /// `https://sts.<region>.amazonaws.com`).
    pub sts_endpoint: Option<String>,
    /// Instance metadata endpoint (default
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else `http://169.254.169.254`).
    pub imds_endpoint: Option<String>,
}

/// The GitHub App Paddock acts as. Without `app_id`, runs clone anonymously
/// from `git.base_url` and end with a diff (no branch, no pull request).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitHubConfig {
    /// REST API base: `https://api.github.com`, or
    /// `https://<host>/api/v3` for GitHub Enterprise Server.
    pub api_url: String,
    pub app_id: Option<u64>,
    /// The App's private key (PEM), as downloaded from its settings page.
    pub private_key_file: Option<PathBuf>,
    /// The App's webhook secret; `POST /v1/webhooks/github` refuses
    /// deliveries it did not sign.
    #[serde(serialize_with = "serialize_optional_secret")]
    pub webhook_secret: Option<SecretString>,
    /// Labelling an issue with this starts a run.
    pub trigger_label: String,
    /// Assigning an issue to this login (the App's bot user) starts a run.
    pub bot_login: String,
    /// Commit author (and committer) of Paddock's commits.
    pub commit_author_name: String,
    pub commit_author_email: String,
    /// An SSH private key (OpenSSH format, no passphrase, mode 0600) the
    /// worker signs Paddock's commits with (`gpg.format = ssh`); it never
    /// enters a sandbox. GitHub shows the commits Verified when the public
    /// key is a signing key of the account `commit_author_email` belongs to.
    pub commit_signing_key_file: Option<PathBuf>,
    /// Where people can see a run, for links in pull requests and comments:
    /// `<run_link_base>/v1/runs/<id>`.
    pub run_link_base: String,
    /// Gone: a webhook run's tenant is the tenant owning its repository.
    /// Still read, so that a configuration setting it is refused clearly.
    #[serde(default, skip_serializing)]
    pub tenant: Option<String>,
    /// Agent profile of runs that webhooks start.
    pub agent_profile: String,
}

impl Default for GitHubConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".to_owned(),
            app_id: None,
            private_key_file: None,
            webhook_secret: None,
            trigger_label: "paddock".to_owned(),
            bot_login: "paddock[bot]".to_owned(),
            commit_author_name: "Paddock".to_owned(),
            commit_author_email: "paddock[bot]@users.noreply.github.com".to_owned(),
            commit_signing_key_file: None,
            run_link_base: "http://127.0.0.1:8080".to_owned(),
            tenant: None,
            agent_profile: "default".to_owned(),
        }
    }
}

/// Where a completed run's change goes before its pull request opens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    pub mode: PublishMode,
    /// With `mode = "fork"`: the account (an organization where the App is
    /// installed) holding each repository's fork, `<fork_owner>/<name>`.
    pub fork_owner: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    /// A `paddock/...` branch in the repository itself.
    #[default]
    Branch,
    /// A `paddock/...` branch in the repository's fork under `fork_owner`;
    /// the pull request comes from the fork, so the repository's CI treats
    /// it as an outside contribution, and the run's own token for the
    /// repository cannot push at all (`contents: read`).
    Fork,
}

impl PublishConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match (self.mode, self.fork_owner.as_deref()) {
            (PublishMode::Fork, None) => invalid("publish.fork_owner", "must be set when publish.mode is `fork`"),
            (_, Some(owner))
                if owner.is_empty()
                    || owner.len() > 39
                    || owner.starts_with('-')
                    || !owner.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                invalid("publish.fork_owner", "must be a GitHub account name (letters, digits, `-`)")
            }
            _ => Ok(()),
        }
    }

    /// The fork a run on `repo` publishes to, in fork mode.
    pub fn fork_of(&self, repo: &crate::RepoName) -> Option<crate::RepoName> {
        match (self.mode, &self.fork_owner) {
            (PublishMode::Fork, Some(owner)) => format!("{owner}/{}", repo.name()).parse().ok(),
            _ => None,
        }
    }
}

impl GitHubConfig {
    pub fn enabled(&self) -> bool {
        self.app_id.is_some()
    }
}

/// Callers from the company's identity provider: OIDC bearer tokens (SAML
/// stays at the IdP or a broker such as Dex or Keycloak, which issues OIDC).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    pub oidc: Option<OidcConfig>,
    /// GitHub login → the person (as the identity provider names them) that
    /// runs started from that login's webhooks are tied to. Webhook runs
    /// from a login not listed here are refused.
    pub github_logins: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Must equal the token's `iss`; its `/.well-known/openid-configuration`
    /// names the JWKS unless `jwks_uri` is set.
    pub issuer: String,
    /// Must be among the token's `aud`.
    pub audience: String,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Signature algorithms accepted (pinned; `none` never is).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Claim holding the caller's groups or roles.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim holding the person's email address.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Claim saying the address was verified; an address the identity
    /// provider has not verified is never shown nor used for bindings.
    #[serde(default = "default_email_verified_claim")]
    pub email_verified_claim: String,
    /// For identity providers that issue only addresses they verified and
    /// send no verification claim (set it only if that is so).
    #[serde(default)]
    pub email_always_verified: bool,
    /// How long the groups a person's last token named still count when a
    /// service account names them in `on_behalf_of` (they may have left a
    /// group since); after that only bindings to `user:<them>` count.
    #[serde(default = "default_groups_trusted")]
    pub groups_trusted_seconds: u64,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Group (or role claim value) → Paddock roles, granted globally.
    #[serde(default)]
    pub role_bindings: BTreeMap<String, Vec<crate::identity::Role>>,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_groups_trusted() -> u64 {
    86_400
}

fn default_email_claim() -> String {
    "email".to_owned()
}

fn default_email_verified_claim() -> String {
    "email_verified".to_owned()
}

fn default_leeway() -> u64 {
    60
}

/// How Paddock's own clients (model providers, the identity provider,
/// GitHub, S3, Redis) check the servers they call. They always verify
/// certificates, against the operating system's trust store plus these.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM files of further CA certificates to trust: an internal CA, or
    /// the one a TLS-inspecting proxy signs with.
    pub extra_ca_files: Vec<PathBuf>,
}

/// The corporate proxy Paddock's own HTTPS calls go through (model
/// providers, the Vertex token endpoint, the identity provider, GitHub's
/// API and git). Never used for a sandbox's egress, which only its own
/// egress proxy serves. Unset keys fall back to the standard `https_proxy`
/// and `no_proxy` environment variables.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// e.g. `http://proxy.corp.example:3128`, with credentials in the URL
    /// if the proxy needs them (never logged).
    #[serde(serialize_with = "serialize_optional_secret")]
    pub https_proxy: Option<SecretString>,
    /// Hosts reached directly: names (`.corp.example` and `corp.example`
    /// both cover its subdomains), IP addresses or CIDR ranges, or `*`.
    pub no_proxy: Vec<String>,
}

/// How Paddock is watched.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where a worker or a standalone gateway serves Prometheus'
    /// `GET /metrics` (`0.0.0.0:9464`); unset, it serves none. The API
    /// serves `/metrics` on its own port.
    pub metrics_listen: Option<String>,
    /// An OpenTelemetry collector's OTLP/HTTP base URL
    /// (`https://otel-collector.internal:4318`): spans go to
    /// `<it>/v1/traces` as protobuf, over the same TLS trust and proxy as
    /// every outbound call. Unset, no span leaves the process.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(listen) = &self.metrics_listen
            && listen.parse::<std::net::SocketAddr>().is_err()
        {
            return invalid("telemetry.metrics_listen", "must be an address and port, such as 0.0.0.0:9464");
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let host = endpoint.strip_prefix("https://").or_else(|| endpoint.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/') || h.contains(char::is_whitespace)) {
                return invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL, such as https://otel-collector:4318",
                );
            }
        }
        Ok(())
    }
}

/// The tamper-evident audit trail in object storage (`s3.bucket`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Ed25519 key that signs digests: 32 bytes, base64
    /// (`openssl rand -base64 32`). The API refuses to start without it.
    #[serde(serialize_with = "serialize_optional_secret")]
    pub signing_key: Option<SecretString>,
    /// Further public keys (base64) whose digests verify, e.g. the keys
    /// used before a rotation.
    pub trusted_public_keys: Vec<String>,
    /// Key prefix of segments and digests in the bucket.
    pub prefix: String,
    /// At most this long between a segment and the digest that lists it.
    pub digest_interval_seconds: u64,
    /// Key prefix of compliance export bundles (outside `prefix`).
    pub export_prefix: String,
    /// When the bucket has S3 Object Lock enabled, every segment and digest
    /// is written with a retention of `retention.audit_days` in this mode
    /// (`compliance`: nobody can delete or shorten it; `governance`: only
    /// holders of `s3:BypassGovernanceRetention`; `off`: rely on the
    /// bucket's default retention, if any).
    pub object_lock_mode: ObjectLockMode,
    /// How many of one run's events `GET /v1/audit/events` indexes (the
    /// signed trail keeps them all), so one run cannot push everyone
    /// else's events out of the index.
    pub max_indexed_events_per_run: u64,
    /// What makes a run's request event durable before the API answers 202
    /// (the event is written with the run, in Redis, and shipped to the
    /// bucket after): `fsync` (Redis with `appendonly yes` and `appendfsync
    /// always`: the reply follows the fsync) or `replica` (`WAIT` until a
    /// replica has the write, for managed Redis without fsync control).
    pub durability: AuditDurability,
    /// Runs are refused (503) while the oldest event not yet shipped to the
    /// bucket is older than this: an event is in object storage within it.
    pub max_ship_delay_seconds: u64,
    /// With `durability = "replica"`: how long to wait for a replica.
    pub replica_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDurability {
    #[default]
    Fsync,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectLockMode {
    Off,
    Governance,
    Compliance,
}

impl ObjectLockMode {
    /// The S3 name of the mode; `None` for `off`.
    pub fn s3_name(self) -> Option<&'static str> {
        match self {
            ObjectLockMode::Off => None,
            ObjectLockMode::Governance => Some("GOVERNANCE"),
            ObjectLockMode::Compliance => Some("COMPLIANCE"),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            signing_key: None,
            trusted_public_keys: Vec::new(),
            prefix: "audit/v1".to_owned(),
            digest_interval_seconds: 300,
            export_prefix: "audit-exports/v1".to_owned(),
            object_lock_mode: ObjectLockMode::Compliance,
            max_indexed_events_per_run: 5000,
            durability: AuditDurability::Fsync,
            max_ship_delay_seconds: 60,
            replica_timeout_ms: 1000,
        }
    }
}

/// How many days each class of stored object is kept (0: forever), and how
/// often a worker sweeps what is past it. Legal holds stop deletion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub artifacts_days: u32,
    pub logs_days: u32,
    pub transcripts_days: u32,
    pub gateway_metadata_days: u32,
    /// At least 365 by default: PCI DSS 10.5.1 asks for a year of audit logs.
    pub audit_days: u32,
    pub exports_days: u32,
    /// One worker of the fleet sweeps this often; 0 turns the sweeper off
    /// (when bucket lifecycle rules do the deleting and no holds are needed).
    pub sweep_interval_seconds: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            artifacts_days: 90,
            logs_days: 90,
            transcripts_days: 30,
            gateway_metadata_days: 400,
            audit_days: 400,
            exports_days: 30,
            sweep_interval_seconds: 3600,
        }
    }
}

impl RetentionConfig {
    /// This retention with the provider policy's `logging.metadata`
    /// (`retained_<n>_days`), when one is set, for model-call metadata.
    pub fn with_policy(&self, policy: Option<&crate::policy::LlmPolicy>) -> RetentionConfig {
        let mut retention = self.clone();
        if let Some(days) = policy.and_then(|p| p.logging.metadata_days()) {
            retention.gateway_metadata_days = days;
        }
        retention
    }

    /// Days objects of `class` are kept; `None` for forever.
    pub fn days(&self, class: crate::retention::RetentionClass) -> Option<u32> {
        use crate::retention::RetentionClass::*;
        let days = match class {
            Artifacts => self.artifacts_days,
            Logs => self.logs_days,
            Transcripts => self.transcripts_days,
            GatewayMetadata => self.gateway_metadata_days,
            Audit => self.audit_days,
            Exports => self.exports_days,
        };
        (days > 0).then_some(days)
    }
}

/// Secrets tenants register for redaction are kept sealed in Redis.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// 32 bytes, base64 (`openssl rand -base64 32`); the same on API
    /// servers, workers and standalone gateways. Without it, tenants cannot
    /// register secrets.
    #[serde(serialize_with = "serialize_optional_secret")]
    pub encryption_key: Option<SecretString>,
}

fn serialize_optional_secret<S: serde::Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

fn no_secret() -> SecretString {
    SecretString::from(String::new())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions and Responses, and compatible servers.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Azure OpenAI: OpenAI's wire API on deployment paths, `api-key` header.
    AzureOpenai,
    /// Claude on Google Vertex AI: Anthropic Messages on `rawPredict` /
    /// `streamRawPredict`, OAuth access token from a service account.
    Vertex,
    /// Google's Gemini API (AI Studio): `models/<model>:generateContent`
    /// and `:streamGenerateContent` under `base_url` (for example
    /// `https://generativelanguage.googleapis.com/v1beta`), `x-goog-api-key`.
    Gemini,
    /// AWS Bedrock: Anthropic Messages on `InvokeModel` /
    /// `InvokeModelWithResponseStream`, Chat Completions on `Converse` /
    /// `ConverseStream`, requests signed with SigV4.
    Bedrock,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            port: 8088,
            providers: BTreeMap::new(),
            allowed_providers: Vec::new(),
            redact: Vec::new(),
            run_requests_per_minute: 120,
            tenant_requests_per_minute: 0,
            provider_requests_per_minute: 0,
            tenant_tokens_per_minute: 0,
            provider_tokens_per_minute: 0,
            prompt_content: PromptContent::Redacted,
            run_token_budget: 0,
            tenant_daily_token_budget: 0,
            run_cost_budget_usd: 0.0,
            tenant_daily_cost_budget_usd: 0.0,
            listen: "127.0.0.1:8089".to_owned(),
            remote: None,
            remote_tls: false,
            remote_server_name: None,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

fn serialize_secrets<S: serde::Serializer>(secrets: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(secrets.len()))?;
    for secret in secrets {
        seq.serialize_element(secret.expose_secret())?;
    }
    seq.end()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EgressPreset {
    None,
    Registries,
    Custom,
}

impl EgressPreset {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressPreset::None => "none",
            EgressPreset::Registries => "registries",
            EgressPreset::Custom => "custom",
        }
    }
}

/// The OCI runtime a sandbox runs under, as registered with the Docker
/// engine. `runsc` (gVisor) puts a user-space kernel between the agent and
/// the host's: a kernel exploit in the sandbox meets gVisor, not Linux, at
/// the price of slower system calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxRuntime {
    #[default]
    Runc,
    Runsc,
}

impl SandboxRuntime {
    /// The name the engine knows the runtime by.
    pub fn name(self) -> &'static str {
        match self {
            SandboxRuntime::Runc => "runc",
            SandboxRuntime::Runsc => "runsc",
        }
    }
}

impl std::fmt::Display for SandboxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An agent profile: which image, which command, and where the agent finds
/// its task, the model gateway and its token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Shell command (bash) run in the workspace. The task is in
    /// `PADDOCK_TASK` (title, blank line, body), `PADDOCK_TASK_TITLE` and
    /// `PADDOCK_TASK_BODY`.
    pub command: String,
    /// Sandbox image (default `sandbox.image`); it must hold the agent.
    #[serde(default)]
    pub image: Option<String>,
    /// Further environment for the command (never secrets: the sandbox's
    /// only secret is the run token).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables that receive the gateway's OpenAI-style base URL
    /// (`http://<gateway>/v1`).
    #[serde(default = "openai_base_url_env")]
    pub openai_base_url_env: Vec<String>,
    /// Variables that receive the gateway's Anthropic-style base URL
    /// (`http://<gateway>`).
    #[serde(default = "anthropic_base_url_env")]
    pub anthropic_base_url_env: Vec<String>,
    /// Variables that receive the gateway's Gemini API base URL
    /// (`http://<gateway>`, under which the client asks for
    /// `/v1beta/models/<model>:<method>`).
    #[serde(default = "gemini_base_url_env")]
    pub gemini_base_url_env: Vec<String>,
    /// Variables that receive the run token.
    #[serde(default = "token_env")]
    pub token_env: Vec<String>,
    /// Whether the agent reports the commands it runs on its stderr, each
    /// line signed with the run's report key, which it reads from the first
    /// line of its stdin (`PADDOCK_REPORT_KEY_ON_STDIN=1` says so):
    /// `paddock-exec: <mac> <json>` (see `infra/sandbox/bin/paddock-agent`).
    /// Off for agents whose commands come from their own transcripts.
    #[serde(default = "reports_commands")]
    pub reports_commands: bool,
    /// The agent's own structured event stream on its stdout, from which the
    /// record takes the commands it ran (and which the log keeps as is).
    #[serde(default)]
    pub events: Option<AgentEvents>,
    /// Where the agent writes its events instead of its stdout: a file in
    /// the sandbox (absolute path), read once the agent has ended.
    #[serde(default)]
    pub events_file: Option<String>,
    /// Warm sandboxes each worker keeps of this profile's own `image`
    /// (default `sandbox.warm_pool`; 0: its runs start cold). Without an
    /// image of its own, the profile's runs take the default image's.
    #[serde(default)]
    pub warm_pool: Option<u32>,
}

impl AgentConfig {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if self.warm_pool.is_some_and(|n| n > 64) {
            return invalid("agents", format!("`{name}`: warm_pool must be at most 64"));
        }
        if let Some(path) = &self.events_file {
            let plain = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
            if !path.starts_with('/') || !plain || path.contains("..") {
                return invalid(
                    "agents",
                    format!("`{name}`: events_file must be an absolute path of letters, digits, `/`, `.`, `_` and `-`"),
                );
            }
            if self.events.is_none() {
                return invalid("agents", format!("`{name}`: events_file needs `events` to say its format"));
            }
        }
        Ok(())
    }
}

/// An agent's own machine-readable output: JSON lines on its stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentEvents {
    /// Claude Code's `--output-format stream-json --verbose`: `tool_use`
    /// blocks of its `Bash` tool in `assistant` messages.
    ClaudeStreamJson,
    /// Codex's `exec --json`: `command_execution` items.
    CodexJson,
    /// Gemini CLI's `--output-format stream-json`: `tool_use` events of its
    /// `run_shell_command` tool.
    GeminiStreamJson,
    /// opencode's `run --format json`: `tool_use` parts of its `bash` tool.
    OpencodeJson,
    /// OpenHands' `--headless --json`: its terminal actions.
    OpenhandsJson,
    /// aider's input history (`--input-history-file`, in `events_file`):
    /// the `/run <command>` entries of the shell commands it ran.
    AiderInputHistory,
}

fn reports_commands() -> bool {
    true
}

fn openai_base_url_env() -> Vec<String> {
    vec!["OPENAI_BASE_URL".to_owned(), "OPENAI_API_BASE".to_owned()]
}

fn anthropic_base_url_env() -> Vec<String> {
    vec!["ANTHROPIC_BASE_URL".to_owned()]
}

fn gemini_base_url_env() -> Vec<String> {
    vec!["GOOGLE_GEMINI_BASE_URL".to_owned()]
}

fn token_env() -> Vec<String> {
    ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "GEMINI_API_KEY"].map(str::to_owned).to_vec()
}

impl AgentConfig {
    /// mini-swe-agent (in the sandbox image) in yolo mode on the task, with
    /// its model through the gateway by LiteLLM (`openai/<PADDOCK_MODEL>`),
    /// no first-run wizard, no price lookups and no exit confirmation.
    pub fn mini_swe_agent() -> Self {
        let command = r#"mini -y -t "$PADDOCK_TASK" -m "openai/$PADDOCK_MODEL" -c mini.yaml -c agent.step_limit="$PADDOCK_MAX_STEPS" --exit-immediately -l 0 -o /tmp/mini.traj.json </dev/null"#;
        let env = [
            ("PADDOCK_MODEL", "gpt-4o"),
            ("PADDOCK_MAX_STEPS", "50"),
            ("MSWEA_CONFIGURED", "true"),
            ("MSWEA_COST_TRACKING", "ignore_errors"),
            ("MSWEA_SILENT_STARTUP", "1"),
            ("MSWEA_GLOBAL_CONFIG_DIR", "/tmp/mini-swe-agent"),
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
        ];
        Self {
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            // Its commands are read from its trajectory.
            reports_commands: false,
            ..Self::command(command)
        }
    }

    /// A profile running `command` in the default image with the default
    /// variable names.
    pub fn command(command: &str) -> Self {
        Self {
            command: command.to_owned(),
            image: None,
            env: BTreeMap::new(),
            openai_base_url_env: openai_base_url_env(),
            anthropic_base_url_env: anthropic_base_url_env(),
            gemini_base_url_env: gemini_base_url_env(),
            token_env: token_env(),
            reports_commands: true,
            events: None,
            events_file: None,
            warm_pool: None,
        }
    }
}

/// Version of the sandbox base image recipe in `infra/sandbox/`.
pub const SANDBOX_IMAGE_VERSION: &str = include_str!("../../infra/sandbox/VERSION").trim_ascii();

impl Default for Config {
    fn default() -> Self {
        Self {
            redis: RedisConfig::default(),
            s3: S3Config::default(),
            api: ApiConfig::default(),
            worker: WorkerConfig::default(),
            sandbox: SandboxConfig::default(),
            git: GitConfig::default(),
            egress: EgressConfig::default(),
            gateway: GatewayConfig::default(),
            secrets: SecretsConfig::default(),
            github: GitHubConfig::default(),
            publish: PublishConfig::default(),
            identity: IdentityConfig::default(),
            audit: AuditConfig::default(),
            retention: RetentionConfig::default(),
            tls: TlsConfig::default(),
            outbound: OutboundConfig::default(),
            telemetry: TelemetryConfig::default(),
            agents: BTreeMap::from([
                ("default".to_owned(), AgentConfig::command("git status --short")),
                ("reference".to_owned(), AgentConfig::command("paddock-agent")),
                ("mini-swe-agent".to_owned(), AgentConfig::mini_swe_agent()),
            ]),
            // Nobody owns anything until the operator says so.
            tenants: BTreeMap::new(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6390/".to_owned(),
            namespace: "paddock".to_owned(),
            finished_run_ttl_seconds: 7 * 24 * 3600,
            dead_letter_keep_seconds: 14 * 24 * 3600,
            cluster: false,
        }
    }
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:3900".to_owned(),
            region: "garage".to_owned(),
            bucket: "paddock".to_owned(),
            access_key_id: String::new(),
            secret_access_key: SecretString::from(String::new()),
            force_path_style: true,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            bootstrap_admin_token: SecretString::from(String::new()),
            default_tenant: "default".to_owned(),
            max_attempts: 3,
            idempotency_ttl_seconds: 24 * 3600,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            name: "worker".to_owned(),
            concurrency: 2,
            lease_seconds: 60,
            heartbeat_seconds: 10,
            poll_interval_ms: 2000,
            shutdown_grace_seconds: 300,
            work_dir: std::env::temp_dir().join("paddock-worker"),
            retry_base_seconds: 5,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            image: format!("paddock/sandbox:{SANDBOX_IMAGE_VERSION}"),
            docker_host: "unix:///var/run/docker.sock".to_owned(),
            memory_bytes: 2 << 30,
            nano_cpus: 1_000_000_000,
            pids_limit: 512,
            workspace_bytes: 1 << 30,
            tmp_bytes: 256 << 20,
            timeout_seconds: 3600,
            runtime: SandboxRuntime::Runc,
            subnet_pool: "10.213.0.0/16".to_owned(),
            uid: 1000,
            gid: 1000,
            max_log_bytes: 8 << 20,
            max_diff_bytes: 32 << 20,
            max_inflated_file_bytes: 64 << 20,
            max_inflated_diff_bytes: 256 << 20,
            max_checkout_files: 1_000_000,
            warm_pool: 2,
        }
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        let registries = [
            "pypi.org",
            "files.pythonhosted.org",
            "registry.npmjs.org",
            "crates.io",
            "index.crates.io",
            "static.crates.io",
            "proxy.golang.org",
            "sum.golang.org",
            "repo.maven.apache.org",
            "repo1.maven.org",
            "rubygems.org",
            "deb.debian.org",
        ];
        Self {
            preset: EgressPreset::None,
            allow: Vec::new(),
            registries: registries.iter().map(|s| (*s).to_owned()).collect(),
            trusted_networks: Vec::new(),
            static_hosts: BTreeMap::new(),
            proxy_port: 3128,
        }
    }
}

impl Default for GitConfig {
    fn default() -> Self {
        Self { base_url: "http://127.0.0.1:8081/git".to_owned() }
    }
}

/// A configuration value that cannot work, naming its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    /// The file or the environment does not parse into a configuration.
    Parse(String),
    #[error("invalid configuration: `{key}` {message}")]
    Invalid { key: &'static str, message: String },
}

impl Config {
    /// The sandbox policy runs get when no tenant or repository overrides it.
    pub fn default_policy(&self) -> crate::policy::SandboxPolicy {
        crate::policy::SandboxPolicy::defaults(&self.sandbox, self.egress.preset, &self.egress.allow)
    }

    /// Each section checks itself; what spans sections is checked here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        self.api.validate()?;
        self.worker.validate()?;
        self.sandbox.validate()?;
        self.audit.validate()?;
        self.gateway.validate()?;
        self.identity.validate()?;
        self.github.validate()?;
        self.publish.validate()?;
        self.secrets.validate()?;
        self.outbound.validate()?;
        self.telemetry.validate()?;
        if !self.agents.contains_key("default") {
            return invalid("agents.default", "must be configured: runs without a profile use it");
        }
        for (name, agent) in &self.agents {
            agent.validate(name)?;
        }
        self.tenancy()?;
        Ok(())
    }

    /// The tenants this configuration declares, checked against each other
    /// (names, patterns, `*` for the default tenant only, no overlaps).
    pub fn tenancy(&self) -> Result<crate::tenancy::Tenancy, ConfigError> {
        let mut tenancy = crate::tenancy::Tenancy::new(Vec::new(), &self.api.default_tenant);
        for (name, declared) in &self.tenants {
            let tenant = crate::tenancy::Tenant {
                name: name.clone(),
                repositories: declared.repositories.clone(),
                source: crate::tenancy::TenantSource::Config,
                changed_by: None,
                changed_at_ms: None,
            };
            if let Err(e) = tenancy.admits(&tenant) {
                return Err(ConfigError::Invalid { key: "tenants", message: format!("{name}: {}", e.message) });
            }
            tenancy = crate::tenancy::Tenancy::new([tenancy.tenants(), &[tenant]].concat(), &self.api.default_tenant);
        }
        Ok(tenancy)
    }
}

/// The error for `key`, as every section's `validate` answers it.
fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid { key, message: message.into() })
}

impl RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        // The redis crate reads `#insecure` as "skip certificate checks".
        if self.url.contains('#') {
            return invalid("redis.url", "must not have a fragment: certificate verification cannot be turned off");
        }
        let schemes = ["redis://", "rediss://", "unix://", "redis+unix://"];
        if !schemes.iter().any(|scheme| self.url.starts_with(scheme)) {
            return invalid("redis.url", "must start with redis://, rediss:// (TLS), unix:// or redis+unix://");
        }
        let key_chars =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
        if !key_chars(&self.namespace) {
            return invalid("redis.namespace", "must be letters, digits, `-` or `_`");
        }
        Ok(())
    }
}

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return invalid("api.max_attempts", "must be at least 1");
        }
        Ok(())
    }
}

impl WorkerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return invalid("worker.concurrency", "must be at least 1");
        }
        if self.heartbeat_seconds == 0 || self.heartbeat_seconds * 2 > self.lease_seconds {
            return invalid("worker.heartbeat_seconds", "must be at least 1 and at most half of worker.lease_seconds");
        }
        Ok(())
    }
}

impl SandboxConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_bytes < 16 << 20 {
            return invalid("sandbox.memory_bytes", "must be at least 16 MiB");
        }
        if self.timeout_seconds == 0 {
            return invalid("sandbox.timeout_seconds", "must be at least 1");
        }
        if self.uid == 0 {
            return invalid("sandbox.uid", "must not be 0: the agent never runs as root");
        }
        if self.warm_pool > 64 {
            return invalid("sandbox.warm_pool", "must be at most 64 (sandboxes kept started per worker)");
        }
        Ok(())
    }
}

impl AuditConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.digest_interval_seconds == 0 {
            return invalid("audit.digest_interval_seconds", "must be at least 1");
        }
        if self.max_ship_delay_seconds == 0 {
            return invalid("audit.max_ship_delay_seconds", "must be at least 1");
        }
        if self.durability == AuditDurability::Replica && self.replica_timeout_ms == 0 {
            return invalid("audit.replica_timeout_ms", "must be at least 1 (0 would wait for ever)");
        }
        if self.prefix.trim_matches('/').is_empty() {
            return invalid("audit.prefix", "must not be empty");
        }
        let (audit, export) = (self.prefix.trim_matches('/'), self.export_prefix.trim_matches('/'));
        // Prefixes as folders: `audit` and `audit-exports` do not overlap.
        let within = |inner: &str, outer: &str| inner == outer || inner.starts_with(&format!("{outer}/"));
        if export.is_empty() || within(export, audit) || within(audit, export) || within(export, "runs") {
            return invalid("audit.export_prefix", "must not be empty nor overlap audit.prefix or runs/");
        }
        Ok(())
    }
}

impl GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for name in &self.allowed_providers {
            if !self.providers.contains_key(name) {
                return invalid(
                    "gateway.allowed_providers",
                    format!("names `{name}`, which is not in gateway.providers"),
                );
            }
        }
        for (name, provider) in &self.providers {
            provider.validate(name)?;
        }
        for (key, value) in [
            ("gateway.run_cost_budget_usd", self.run_cost_budget_usd),
            ("gateway.tenant_daily_cost_budget_usd", self.tenant_daily_cost_budget_usd),
        ] {
            if !(value >= 0.0 && value.is_finite()) {
                return invalid(key, "must be a non-negative number of dollars");
            }
        }
        if let Some(remote) = &self.remote
            && remote.parse::<std::net::SocketAddr>().is_err()
        {
            return invalid("gateway.remote", "must be host:port with an IP address, e.g. 10.0.0.5:8089");
        }
        if self.remote_server_name.is_some() && !self.remote_tls {
            return invalid("gateway.remote_server_name", "is only used with gateway.remote_tls = true");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid("gateway.tls_cert_file", "and gateway.tls_key_file must be set together");
        }
        Ok(())
    }
}

impl ProviderConfig {
    /// `name` is the provider's key in `gateway.providers`.
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let vertex = self.kind == ProviderKind::Vertex;
        let bedrock = self.kind == ProviderKind::Bedrock;
        if !vertex && !bedrock && self.api_key.expose_secret().is_empty() {
            return invalid("gateway.providers", format!("`{name}` needs an api_key"));
        }
        if !bedrock && self.base_url.is_empty() {
            return invalid("gateway.providers", format!("`{name}` needs a base_url"));
        }
        if bedrock {
            if self.region.as_deref().is_none_or(str::is_empty) {
                return invalid("gateway.providers", format!("`{name}` (bedrock) needs a region, e.g. us-east-1"));
            }
            let aws = &self.aws;
            if aws.access_key_id.is_some() != aws.secret_access_key.is_some() {
                return invalid(
                    "gateway.providers",
                    format!("`{name}`: aws.access_key_id and aws.secret_access_key must be set together"),
                );
            }
            if aws.role_arn.is_some() != aws.web_identity_token_file.is_some() {
                return invalid(
                    "gateway.providers",
                    format!("`{name}`: aws.role_arn and aws.web_identity_token_file must be set together"),
                );
            }
            if !self.api_key.expose_secret().is_empty() {
                return invalid(
                    "gateway.providers",
                    format!(
                        "`{name}` (bedrock) signs with AWS credentials: set aws.access_key_id and aws.secret_access_key, or leave both for the instance or pod role, instead of api_key"
                    ),
                );
            }
        }
        if vertex && (self.project.is_none() || self.region.is_none() || self.credentials_file.is_none()) {
            return invalid(
                "gateway.providers",
                format!("`{name}` (vertex) needs project, region and credentials_file"),
            );
        }
        for (model, price) in &self.prices {
            if !(price.input_usd_per_mtok >= 0.0 && price.output_usd_per_mtok >= 0.0) {
                return invalid("gateway.providers", format!("`{name}` has a negative or invalid price for `{model}`"));
            }
        }
        Ok(())
    }
}

impl IdentityConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let Some(oidc) = &self.oidc else { return Ok(()) };
        if oidc.leeway_seconds > 300 {
            return invalid("identity.oidc.leeway_seconds", "must be at most 300");
        }
        let known = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384", "PS512", "EdDSA"];
        if oidc.algorithms.is_empty() || oidc.algorithms.iter().any(|a| !known.contains(&a.as_str())) {
            return invalid(
                "identity.oidc.algorithms",
                "must list asymmetric algorithms such as RS256 (never none or HS*)",
            );
        }
        Ok(())
    }
}

impl GitHubConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.app_id.is_some() && self.private_key_file.is_none() {
            return invalid("github.private_key_file", "must be set when github.app_id is");
        }
        if self.tenant.is_some() {
            return invalid(
                "github.tenant",
                "is no longer read: a webhook run belongs to the tenant owning its repository; \
                 declare `[tenants.<name>] repositories = [...]` instead",
            );
        }
        Ok(())
    }
}

impl SecretsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(key) = &self.encryption_key
            && crate::sealed::SecretBox::new(key.expose_secret()).is_err()
        {
            return invalid("secrets.encryption_key", "must be 32 bytes, base64-encoded (openssl rand -base64 32)");
        }
        Ok(())
    }
}

impl OutboundConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(proxy) = &self.https_proxy {
            let proxy = proxy.expose_secret();
            let rest = proxy.strip_prefix("http://").or_else(|| proxy.strip_prefix("https://"));
            let host = rest.map(|r| r.rsplit_once('@').map_or(r, |(_, h)| h)).unwrap_or_default();
            if host.trim_end_matches('/').is_empty() {
                return invalid("outbound.https_proxy", "must be an http:// or https:// URL with a host");
            }
        }
        Ok(())
    }
}

fn serialize_secret<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    use secrecy::ExposeSecret;
    s.serialize_str(secret.expose_secret())
}
