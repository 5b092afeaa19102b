//! Latency the model gateway adds: Paddock's gateway in this process (as a
//! worker runs it), Paddock's standalone gateway (`paddock-gateway`, the
//! binary a deployment runs apart from workers) and LiteLLM's proxy, each
//! of the last two in its own process pinned to a core of its own while
//! this process (the load and the provider) keeps to the other, before the
//! same emulated provider, each beside the provider called directly under
//! the same pinning in the same run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gateway::{GatewayServer, Redactor, RunGateway, mint_token, token_hash};
use serde_json::json;

use crate::load;
use crate::{Report, Row, realistic_transcript};

/// The rate the gateway's goal is set at: on 2 cores the load, the TLS
/// provider and the gateway together saturate the machine there.
const RATE: u32 = 1000;
const REQUESTS: u32 = 5000;
/// A rate the machine has room for.
const MID_RATE: u32 = 100;
const MID_REQUESTS: u32 = 1000;
/// LiteLLM spends about 30 ms of CPU a call here, so a core of its own
/// sustains about 30 calls a second: all three are also measured at 20.
const PEER_RATE: u32 = 20;
const PEER_REQUESTS: u32 = 300;

pub async fn run() -> Report {
    let providers = tests::providers::EmulatedProviders::start().await;
    let queue = tests::fixtures::fresh_queue(None, false).await;
    let run = common::RunId::new();
    let token = mint_token().unwrap();
    let grant = store::GatewayGrant { run, tenant: "bench".to_owned(), trace_parent: None };
    queue.put_gateway_token(&token_hash(&token), &grant, Duration::from_secs(600)).await.unwrap();
    let mut config = common::config::GatewayConfig::default();
    let provider: common::config::ProviderConfig = serde_json::from_value(json!({
        "kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-test"]
    }))
    .unwrap();
    config.providers.insert("emulated".to_owned(), provider);
    config.allowed_providers = vec!["emulated".to_owned()];
    let redactor = Redactor::new(&[providers.key.clone(), token.clone()], b"bench");
    config.run_requests_per_minute = 0;
    let http = tests::tls::trusting_outbound().http().build().unwrap();
    let gateway =
        Arc::new(RunGateway::new(run, "bench".to_owned(), token_hash(&token), config, queue.clone(), redactor, http));
    let server = GatewayServer::start("127.0.0.1:0".parse().unwrap(), gateway).await.unwrap();

    let transcript = realistic_transcript(64 << 10);
    let prompt = &transcript[..4096];
    let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}).to_string();
    // The emulated provider speaks HTTPS (test CA), as real ones do; the
    // direct calls trust the same CA and reuse connections like the gateway.
    // A client of its own per phase, letting go of idle connections before
    // the gateway does (at 10 s): a POST sent on a connection as the server
    // closes it fails without a retry.
    let ca = std::fs::read(tests::tls::TestCa::get().ca_file()).unwrap();
    let client = move || {
        let ca = reqwest::Certificate::from_pem(&ca).unwrap();
        reqwest::Client::builder().tls_certs_merge([ca]).pool_idle_timeout(Duration::from_secs(4)).build().unwrap()
    };
    // Each call gives the provider's part of its time, as Paddock's
    // gateway reports it (`server-timing: upstream`; none for a direct call
    // or a peer), or `None` when it failed.
    let call = |url: String, key: String| {
        let (client, body) = (client(), body.clone());
        move |_| {
            let (client, url, key, body) = (client.clone(), url.clone(), key.clone(), body.clone());
            async move {
                let sent = client.post(&url).bearer_auth(&key).header("content-type", "application/json").body(body);
                match sent.send().await {
                    Ok(r) if r.status().is_success() => {
                        let upstream = upstream_time(r.headers());
                        r.bytes().await.is_ok().then_some(upstream)
                    }
                    Ok(r) => {
                        eprintln!("loadtests: {url} answered {}: {}", r.status(), r.text().await.unwrap_or_default());
                        None
                    }
                    Err(e) => {
                        eprintln!("loadtests: {url} failed: {e:?}");
                        None
                    }
                }
            }
        }
    };
    let direct_url = format!("{}/chat/completions", providers.base_url);
    let ours_url = format!("http://{}/v1/chat/completions", server.address);
    let (direct, ours) = (call(direct_url.clone(), providers.key.clone()), call(ours_url.clone(), token.clone()));
    // Warm both paths, then measure them in turn.
    load::fixed_rate_less(RATE, 200, direct.clone()).await;
    load::fixed_rate_less(RATE, 200, ours.clone()).await;
    let direct_fast = load::fixed_rate_less(RATE, REQUESTS, direct.clone()).await.0;
    let (ours_fast, ours_fast_own) = load::fixed_rate_less(RATE, REQUESTS, ours.clone()).await;
    let (direct, ours) = (call(direct_url.clone(), providers.key.clone()), call(ours_url.clone(), token.clone()));
    let direct_mid = load::fixed_rate_less(MID_RATE, MID_REQUESTS, direct).await.0;
    let (ours_mid, ours_mid_own) = load::fixed_rate_less(MID_RATE, MID_REQUESTS, ours).await;
    let (direct, ours) = (call(direct_url.clone(), providers.key.clone()), call(ours_url, token.clone()));
    let direct_slow = load::fixed_rate_less(PEER_RATE, PEER_REQUESTS, direct).await.0;
    let (ours_slow, ours_slow_own) = load::fixed_rate_less(PEER_RATE, PEER_REQUESTS, ours).await;
    // At the saturating rate a stall can put more than a run's 64
    // connections in flight: those are refused, and counted in the row.
    assert_eq!(direct_mid.errors + ours_mid.errors + direct_slow.errors + ours_slow.errors, 0, "requests failed");

    let standalone = Standalone::start(&queue, &providers.base_url, &providers.key).await;
    let litellm = Litellm::start(&providers.base_url, &providers.key).await;
    let (alone_url, theirs_url) =
        (format!("{}/v1/chat/completions", standalone.url), format!("{}/v1/chat/completions", litellm.url));
    load::fixed_rate_less(RATE, 200, call(alone_url.clone(), token.clone())).await;
    load::fixed_rate_less(PEER_RATE, 20, call(theirs_url.clone(), litellm.key.clone())).await;
    let pinned = pin_self(Some(0));
    let (alone_fast, alone_fast_own) =
        load::fixed_rate_less(RATE, REQUESTS, call(alone_url.clone(), token.clone())).await;
    let direct_pinned_fast =
        load::fixed_rate_less(RATE, REQUESTS, call(direct_url.clone(), providers.key.clone())).await.0;
    let (alone_slow, alone_slow_own) =
        load::fixed_rate_less(PEER_RATE, PEER_REQUESTS, call(alone_url, token.clone())).await;
    let theirs_slow = load::fixed_rate_less(PEER_RATE, PEER_REQUESTS, call(theirs_url, litellm.key.clone())).await.0;
    let direct_beside =
        load::fixed_rate_less(PEER_RATE, PEER_REQUESTS, call(direct_url, providers.key.clone())).await.0;
    if pinned {
        pin_self(None);
    }
    assert_eq!(theirs_slow.errors, 0, "requests through LiteLLM failed");
    assert_eq!(alone_slow.errors, 0, "requests through the standalone gateway failed");
    drop(standalone);
    let version = litellm.version.clone();
    drop(litellm);
    drop(server);
    providers.stop().await;

    let added = |what: &str, ours: f64, ours_base: f64, theirs: f64, theirs_base: f64| Row {
        what: what.to_owned(),
        paddock: format!("{:+.2} ms", ours - ours_base),
        baseline: format!("LiteLLM {version}: {:+.2} ms", theirs - theirs_base),
        ratio: format!("{:.3}×", (ours - ours_base) / (theirs - theirs_base)),
    };
    let fast = format!("at {RATE} req/s, 4 KiB prompts, redaction on");
    let refused = format!(
        " ({} of {REQUESTS} refused over the run's connection bound; direct: {})",
        ours_fast.errors, direct_fast.errors
    );
    let mid = format!("at {MID_RATE} req/s, 4 KiB prompts");
    let slow = format!("added at {PEER_RATE} req/s (LiteLLM's own core)");
    let own_core = format!("at {RATE} req/s, own core (as LiteLLM), redaction on");
    let alone_refused =
        format!(" ({} of {REQUESTS} refused; direct: {})", alone_fast.errors, direct_pinned_fast.errors);
    // The gateway's own time per request: what the client waited less the
    // provider's time to its answer's head, as the gateway measured it.
    let own = |what: &str, own: &load::Latency, total: f64, direct: f64, p99: bool| Row {
        what: format!("{what} (client total − provider time, per request)"),
        paddock: format!("{:.2} ms", if p99 { own.p99 } else { own.p50 }),
        baseline: format!("goal ≤ 1 ms; total {total:.2} ms, direct {direct:.2} ms"),
        ratio: format!("{:+.2} ms by difference", total - direct),
    };
    let own_fast = format!("at {RATE} req/s, redaction on");
    Report {
        name: "gateway",
        rows: vec![
            own(&format!("gateway own time p50 {own_fast}"), &ours_fast_own, ours_fast.p50, direct_fast.p50, false),
            own(&format!("gateway own time p99 {own_fast}"), &ours_fast_own, ours_fast.p99, direct_fast.p99, true),
            own(
                &format!("standalone gateway own time p50 {own_fast}, own core"),
                &alone_fast_own,
                alone_fast.p50,
                direct_pinned_fast.p50,
                false,
            ),
            own(
                &format!("standalone gateway own time p99 {own_fast}, own core"),
                &alone_fast_own,
                alone_fast.p99,
                direct_pinned_fast.p99,
                true,
            ),
            own(
                &format!("gateway own time p99 at {MID_RATE} req/s"),
                &ours_mid_own,
                ours_mid.p99,
                direct_mid.p99,
                true,
            ),
            own(
                &format!("gateway own time p99 at {PEER_RATE} req/s"),
                &ours_slow_own,
                ours_slow.p99,
                direct_slow.p99,
                true,
            ),
            Row::ms(&format!("gateway p50 {fast}"), ours_fast.p50, "provider direct", direct_fast.p50),
            Row::ms(&format!("gateway p99 {fast}{refused}"), ours_fast.p99, "provider direct", direct_fast.p99),
            Row::ms(&format!("gateway p50 {mid}"), ours_mid.p50, "provider direct", direct_mid.p50),
            Row::ms(&format!("gateway p99 {mid}"), ours_mid.p99, "provider direct", direct_mid.p99),
            added(&format!("gateway p50 {slow}"), ours_slow.p50, direct_slow.p50, theirs_slow.p50, direct_beside.p50),
            added(&format!("gateway p99 {slow}"), ours_slow.p99, direct_slow.p99, theirs_slow.p99, direct_beside.p99),
            Row::ms(
                &format!("standalone gateway p50 {own_core}"),
                alone_fast.p50,
                "provider direct",
                direct_pinned_fast.p50,
            ),
            Row::ms(
                &format!("standalone gateway p99 {own_core}{alone_refused}"),
                alone_fast.p99,
                "provider direct",
                direct_pinned_fast.p99,
            ),
            added(
                &format!("standalone gateway p50 {slow}"),
                alone_slow.p50,
                direct_beside.p50,
                theirs_slow.p50,
                direct_beside.p50,
            ),
            added(
                &format!("standalone gateway p99 {slow}"),
                alone_slow.p99,
                direct_beside.p99,
                theirs_slow.p99,
                direct_beside.p99,
            ),
        ],
        data: json!({
            "rate_per_s": RATE, "requests": REQUESTS, "peer_rate_per_s": PEER_RATE, "peer_requests": PEER_REQUESTS,
            "direct": direct_fast.json(), "gateway": ours_fast.json(),
            "mid_rate_per_s": MID_RATE, "direct_mid": direct_mid.json(), "gateway_mid": ours_mid.json(),
            "direct_at_peer_rate": direct_slow.json(), "gateway_at_peer_rate": ours_slow.json(),
            "litellm": theirs_slow.json(), "direct_beside_litellm": direct_beside.json(),
            "standalone": alone_fast.json(), "direct_pinned": direct_pinned_fast.json(),
            "standalone_at_peer_rate": alone_slow.json(),
            "own_time": {"gateway": ours_fast_own.json(), "gateway_mid": ours_mid_own.json(),
                "gateway_at_peer_rate": ours_slow_own.json(), "standalone": alone_fast_own.json(),
                "standalone_at_peer_rate": alone_slow_own.json()},
            "litellm_version": version, "litellm_pinned": pinned,
        }),
    }
}

/// Pins every thread of this process to `core` (`None`: to every core
/// again); false where the machine has a single core.
fn pin_self(core: Option<usize>) -> bool {
    // The machine's cores, counted before any pinning narrows the view.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    if cores < 2 && core.is_some() {
        return false;
    }
    let list = core.map_or_else(|| format!("0-{}", cores - 1), |core| core.to_string());
    let pid = std::process::id().to_string();
    Command::new("taskset").args(["-a", "-cp", &list, &pid]).stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `program` on core 1, where the machine has two cores or more (the
/// benchmark then keeps itself to core 0).
fn on_core_one(program: &Path) -> Command {
    if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) < 2 {
        return Command::new(program);
    }
    let mut command = Command::new("taskset");
    command.args(["-c", "1"]).arg(program);
    command
}

/// Paddock's standalone gateway before the emulated provider: the release
/// binary with the environment a deployment would give it (this machine's
/// Redis under the benchmark's namespace, the provider, the test CA).
struct Standalone {
    url: String,
    /// Held for its `Drop`, which stops the gateway.
    _process: tests::apps::WorkerProcess,
    dir: PathBuf,
}

impl Standalone {
    async fn start(queue: &store::RunQueue, base_url: &str, provider_key: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("paddock-gateway-{}", common::RunId::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let listen = format!("127.0.0.1:{}", tests::free_port());
        let providers = json!({"emulated": {
            "kind": "openai", "base_url": base_url, "api_key": provider_key, "models": ["gpt-test"]
        }});
        let ca = json!([tests::tls::TestCa::get().ca_file()]);
        let log = dir.join("gateway.log");
        let file = std::fs::File::create(&log).unwrap();
        // Only what it needs: this machine's Redis and the settings below
        // (the benchmark's own variables are no configuration of Paddock's).
        let redis = std::env::vars().filter(|(k, _)| k.starts_with("PADDOCK_REDIS__") || k == "PATH");
        let child = on_core_one(&tests::services::bin_dir().join("paddock-gateway"))
            .env_clear()
            .envs(redis)
            .env("PADDOCK_REDIS__NAMESPACE", queue.namespace())
            .env("PADDOCK_GATEWAY__LISTEN", &listen)
            .env("PADDOCK_GATEWAY__PROVIDERS", providers.to_string())
            .env("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", r#"["emulated"]"#)
            .env("PADDOCK_GATEWAY__RUN_REQUESTS_PER_MINUTE", "0")
            .env("PADDOCK_TLS__EXTRA_CA_FILES", ca.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("paddock-gateway starts");
        let mut process = tests::apps::WorkerProcess { child, log };
        let url = format!("http://{listen}");
        let health = format!("{url}/healthz");
        let client = reqwest::Client::new();
        tests::apps::started_within(&mut process, "paddock-gateway", &client, &health, Duration::from_secs(30)).await;
        Self { url, _process: process, dir }
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// LiteLLM's proxy before the emulated provider, configured to do as little
/// as it can: no database, no retries, no callbacks, no price-map download,
/// no model refresh, warnings only.
struct Litellm {
    url: String,
    key: String,
    version: String,
    /// Held for its `Drop`, which stops LiteLLM.
    _process: tests::apps::WorkerProcess,
    dir: PathBuf,
}

impl Litellm {
    async fn start(base_url: &str, provider_key: &str) -> Self {
        let install = PathBuf::from(
            std::env::var("PADDOCK_BENCH_LITELLM")
                .expect("PADDOCK_BENCH_LITELLM names LiteLLM's install (cargo xtask bench sets it)"),
        );
        let dir = std::env::temp_dir().join(format!("paddock-litellm-{}", common::RunId::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = format!("sk-bench-{}", common::RunId::new());
        let ca = tests::tls::TestCa::get().ca_file();
        let config = format!(
            "model_list:\n  - model_name: gpt-test\n    litellm_params:\n      model: openai/gpt-test\n      \
             api_base: {base_url}\n      api_key: {provider_key}\n      num_retries: 0\n\
             litellm_settings:\n  ssl_verify: {ca}\n  num_retries: 0\n  request_timeout: 30\n  callbacks: []\n  \
             success_callback: []\n  failure_callback: []\n  turn_off_message_logging: true\n\
             router_settings:\n  num_retries: 0\n  disable_cooldowns: true\n\
             general_settings:\n  master_key: {key}\n  disable_spend_logs: true\n  disable_error_logs: true\n  \
             background_health_checks: false\n  disable_model_info_refresh: true\n",
            ca = ca.display()
        );
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let port = tests::free_port();
        let log = dir.join("litellm.log");
        let file = std::fs::File::create(&log).unwrap();
        // A core of its own where there are two.
        let mut command = on_core_one(&install.join("bin/litellm"));
        command
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--num_workers", "1"])
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .env("LITELLM_TELEMETRY_DISABLED", "true")
            .env("LITELLM_LOG", "WARNING")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let child = command.spawn().expect("LiteLLM starts");
        let mut process = tests::apps::WorkerProcess { child, log };
        let url = format!("http://127.0.0.1:{port}");
        // It takes LiteLLM 8 to 17 s here.
        let health = format!("{url}/health/liveliness");
        tests::apps::started_within(
            &mut process,
            "LiteLLM",
            &reqwest::Client::new(),
            &health,
            Duration::from_secs(120),
        )
        .await;
        Self { url, key, version: Self::version(&install), _process: process, dir }
    }

    fn version(install: &Path) -> String {
        let out = Command::new(install.join("bin/python"))
            .args(["-c", "import importlib.metadata as m; print(m.version('litellm'))"])
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default()
    }
}

impl Drop for Litellm {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// The provider's part of a call's time, from Paddock's
/// `server-timing: upstream;dur=<ms>` (zero without it).
fn upstream_time(headers: &reqwest::header::HeaderMap) -> Duration {
    let timing = headers.get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let ms = timing
        .split(',')
        .find_map(|metric| metric.trim().strip_prefix("upstream;dur="))
        .and_then(|ms| ms.parse::<f64>().ok())
        .unwrap_or(0.0);
    Duration::from_secs_f64(ms / 1000.0)
}
