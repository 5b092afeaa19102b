//! `spawn_app()`: the API in-process on port 0, plus workers in-process or
//! as real child processes (for crash tests), all on one unique namespace.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::config::Config;
use objstore::S3Store;
use platform::outbound::Outbound;
use serde_json::Value;
use store::RunQueue;

use crate::git_server::GitServer;
use crate::services;

/// One isolated Paddock: its own Redis namespace, git server and API.
pub struct TestApp {
    pub address: String,
    pub token: String,
    /// The configuration every worker of this app gets, as `PADDOCK_*` vars.
    pub vars: Vec<(String, String)>,
    pub config: Config,
    pub queue: RunQueue,
    pub store: S3Store,
    pub git: GitServer,
    pub client: reqwest::Client,
    pub scratch: PathBuf,
}

/// Starts the API with test defaults; `overrides` are extra `PADDOCK_*`
/// variables (for example an agent command or a short timeout).
/// The audit signing key of test deployments (32 bytes, base64).
pub const TEST_AUDIT_KEY: &str = "cGFkZG9jay10ZXN0LWF1ZGl0LXNpZ25pbmcta2V5ISE=";

pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    // Readable in a test's output; binaries the tests start log JSON.
    platform::telemetry::init_with(platform::telemetry::Format::Text, "info");
    let git = GitServer::start().await;
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let scratch = std::env::temp_dir().join(format!("paddock-test-{id}"));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let token = format!("test-admin-token-{id}");
    let mut vars = services::endpoint_vars();
    let defaults = [
        ("PADDOCK_REDIS__NAMESPACE", format!("t-{id}")),
        ("PADDOCK_API__LISTEN", "127.0.0.1:0".to_owned()),
        ("PADDOCK_API__BOOTSTRAP_ADMIN_TOKEN", token.clone()),
        ("PADDOCK_AUDIT__SIGNING_KEY", TEST_AUDIT_KEY.to_owned()),
        ("PADDOCK_AUDIT__PREFIX", format!("audit-t-{id}")),
        // Tests share a bucket; the one retention test sweeps its own.
        ("PADDOCK_RETENTION__SWEEP_INTERVAL_SECONDS", "0".to_owned()),
        ("PADDOCK_GIT__BASE_URL", git.base_url.clone()),
        ("PADDOCK_WORKER__NAME", "test-worker".to_owned()),
        ("PADDOCK_WORKER__WORK_DIR", scratch.join("work").display().to_string()),
        ("PADDOCK_WORKER__LEASE_SECONDS", "4".to_owned()),
        ("PADDOCK_WORKER__HEARTBEAT_SECONDS", "1".to_owned()),
        ("PADDOCK_WORKER__POLL_INTERVAL_MS", "100".to_owned()),
        ("PADDOCK_WORKER__SHUTDOWN_GRACE_SECONDS", "10".to_owned()),
        ("PADDOCK_WORKER__RETRY_BASE_SECONDS", "1".to_owned()),
        ("PADDOCK_SANDBOX__MEMORY_BYTES", (256u64 << 20).to_string()),
        ("PADDOCK_SANDBOX__WORKSPACE_BYTES", (64u64 << 20).to_string()),
        ("PADDOCK_SANDBOX__TIMEOUT_SECONDS", "120".to_owned()),
        // Runs start cold here, each test's sandboxes its own; the warm
        // pool's tests and the attack suite (every attack in a pool
        // member) turn the pool on.
        ("PADDOCK_SANDBOX__WARM_POOL", "0".to_owned()),
        // Tenants own repositories: `payments` owns the ledger and its
        // payments-* repositories, `search` the search-* ones, and the
        // default tenant every other repository.
        ("PADDOCK_TENANTS__DEFAULT__REPOSITORIES", r#"["*"]"#.to_owned()),
        ("PADDOCK_TENANTS__PAYMENTS__REPOSITORIES", r#"["acme/ledger", "acme/payments-*"]"#.to_owned()),
        ("PADDOCK_TENANTS__SEARCH__REPOSITORIES", r#"["acme/search-*"]"#.to_owned()),
    ];
    vars.extend(defaults.into_iter().map(|(k, v)| (k.to_owned(), v)));
    // The emulated providers, identity provider and GitHub speak HTTPS with
    // certificates of the test CA, which deployments trust as a company
    // trusts its internal CA.
    vars.push(crate::tls::TestCa::get().trust_var());
    vars.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let config = platform::config::load(None, vars.clone()).expect("test config is valid");
    let outbound = Outbound::new(&config.tls, &config.outbound).expect("test trust and proxy are valid");
    let queue = RunQueue::connect(&config.redis, &outbound).await.expect("redis is up (run `cargo xtask setup`)");
    let store = S3Store::new(&config.s3, &outbound);
    let app = api::Application::build(config.clone()).await.expect("api builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp { address, token, vars, config, queue, store, git, client: reqwest::Client::new(), scratch }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A repository with one commit on `main`, unique to this test (owned
    /// by the default tenant).
    pub fn repo(&self, files: &[(&str, &[u8])]) -> String {
        self.repo_named("repo-", files)
    }

    /// Like [`TestApp::repo`], named `acme/<prefix><unique>` so that a
    /// tenant's pattern (`acme/payments-*`) owns it.
    pub fn repo_named(&self, prefix: &str, files: &[(&str, &[u8])]) -> String {
        let name = format!("{prefix}{}", ulid::Ulid::new().to_string().to_lowercase());
        self.git.create_repo("acme", &name, files);
        format!("acme/{name}")
    }

    /// Declares `email` a known person (as an administrator would before
    /// they sign in), so that service accounts may be theirs.
    pub async fn declare_person(&self, email: &str) {
        let (status, body) = self.admin_call("POST", "/v1/people", serde_json::json!({"email": email})).await;
        assert!(status == 201 || status == 409, "declaring {email}: {status} {body}");
    }

    pub async fn post_run(&self, body: &Value) -> reqwest::Response {
        self.client.post(self.url("/v1/runs")).bearer_auth(&self.token).json(body).send().await.expect("POST /v1/runs")
    }

    /// Requests a run and returns its id, asserting the 202 contract.
    pub async fn create_run(&self, repository: &str, title: &str) -> String {
        let body = serde_json::json!({
            "repository": repository,
            "base_ref": "main",
            "task": {"title": title, "body": "Details of the task."},
        });
        let response = self.post_run(&body).await;
        assert_eq!(response.status().as_u16(), 202, "{:?}", response.text().await);
        let location = response.headers().get("location").expect("Location header").to_str().unwrap().to_owned();
        let accepted: Value = response.json().await.unwrap();
        let id = accepted["id"].as_str().expect("id").to_owned();
        assert_eq!(location, format!("/v1/runs/{id}"));
        assert_eq!(accepted["state"], "queued");
        id
    }

    /// A request with the bootstrap admin token: (status, JSON body or null).
    pub async fn admin_call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .request(method.parse().expect("an HTTP method"), self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (response.status().as_u16(), response.json().await.unwrap_or_default())
    }

    /// Starts a compliance export with `request` and returns its status once
    /// it is no longer running.
    pub async fn finished_export(&self, request: Value) -> Value {
        let (status, started) = self.admin_call("POST", "/v1/audit/exports", request).await;
        assert_eq!(status, 202, "{started}");
        let path = format!("/v1/audit/exports/{}", started["id"].as_str().expect("an export id"));
        crate::eventually(Duration::from_secs(10), &format!("the export {path} finished"), || async {
            let (_, export) = self.admin_call("GET", &path, Value::Null).await;
            if export["state"] != "running" { Ok(export) } else { Err(export) }
        })
        .await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(&self.token).send().await.expect("GET")
    }

    pub async fn run(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.unwrap()
    }

    /// Requests a run with a named agent profile and returns its id.
    pub async fn create_run_as(&self, repository: &str, title: &str, profile: &str) -> String {
        let body = serde_json::json!({
            "repository": repository,
            "base_ref": "main",
            "task": {"title": title},
            "agent_profile": profile,
        });
        let response = self.post_run(&body).await;
        assert_eq!(response.status().as_u16(), 202, "{:?}", response.text().await);
        let accepted: Value = response.json().await.unwrap();
        accepted["id"].as_str().expect("id").to_owned()
    }

    /// The stored log of a finished run.
    pub async fn logs_of(&self, run: &Value) -> String {
        let key = format!("runs/{}/logs.txt", run["id"].as_str().expect("id"));
        String::from_utf8_lossy(&self.artifact(&key).await).into_owned()
    }

    /// Polls until `done` holds for the run; panics after `limit`.
    pub async fn wait_for(&self, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        crate::eventually(limit, &format!("run {id} got there"), || async {
            let run = self.run(id).await;
            if done(&run) { Ok(run) } else { Err(format!("{run:#}")) }
        })
        .await
    }

    /// Waits for the run to finish, asserts it succeeded (showing the run
    /// and its log otherwise), and returns both.
    pub async fn wait_for_success(&self, id: &str) -> (Value, String) {
        let run = self.wait_until_finished(id).await;
        let logs = self.logs_of(&run).await;
        assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
        (run, logs)
    }

    pub async fn wait_until_finished(&self, id: &str) -> Value {
        self.wait_for(id, Duration::from_secs(180), |r| r["state"] == "succeeded" || r["state"] == "failed").await
    }

    /// Every object of this deployment's audit trail, as one text, once
    /// the events pending in Redis have been shipped to it.
    pub async fn audit_trail_text(&self) -> String {
        use objstore::ObjectStore;
        self.shipped().await;
        let mut trail = String::new();
        for (key, _) in self.store.list(&format!("{}/", self.config.audit.prefix)).await.expect("list the trail") {
            let bytes = self.store.get(&key).await.expect("read the trail").unwrap_or_default();
            trail.push_str(&String::from_utf8_lossy(&bytes));
        }
        trail
    }

    /// Waits until the API's shipper has moved every pending audit event
    /// into the trail.
    pub async fn shipped(&self) {
        crate::eventually(Duration::from_secs(20), "pending audit events shipped", || async {
            let log = self.queue.pending_audit(1).await.map_err(|e| e.to_string())?;
            if log.entries.is_empty() { Ok(()) } else { Err(format!("{:?} waiting", log.marks)) }
        })
        .await;
    }

    /// An artifact's bytes from object storage.
    pub async fn artifact(&self, key: &str) -> bytes::Bytes {
        use objstore::ObjectStore;
        self.store.get(key).await.expect("s3 get").unwrap_or_else(|| panic!("artifact {key} missing"))
    }

    /// Containers of this run that still exist.
    pub async fn sandboxes_of(&self, id: &str) -> Vec<String> {
        let driver =
            sandbox::SandboxDriver::connect(&self.config.sandbox, &[], &self.config.redis.namespace, "observer")
                .await
                .unwrap();
        driver.list_run_containers(id.parse().unwrap()).await.unwrap()
    }

    /// Everything of the run's sandbox still on the host: containers,
    /// networks, volumes (by label) and firewall rules (by tag).
    pub async fn leftovers_of(&self, id: &str) -> Vec<String> {
        let mut left: Vec<String> = self.sandboxes_of(id).await.into_iter().map(|c| format!("container {c}")).collect();
        let label = format!("label=paddock.run-id={id}");
        for kind in ["network", "volume"] {
            let out =
                std::process::Command::new("docker").args([kind, "ls", "-q", "--filter", &label]).output().unwrap();
            left.extend(String::from_utf8_lossy(&out.stdout).lines().map(|l| format!("{kind} {l}")));
        }
        let rules = std::process::Command::new("iptables").args(["-w", "-S", "PADDOCK-INPUT"]).output().unwrap();
        left.extend(
            String::from_utf8_lossy(&rules.stdout).lines().filter(|l| l.contains(id)).map(|l| format!("rule {l}")),
        );
        left
    }

    /// Waits (up to a minute) until nothing of the run's sandbox is left.
    pub async fn assert_cleaned_up(&self, id: &str) {
        crate::eventually(Duration::from_secs(60), &format!("run {id} left nothing behind"), || async {
            let left = self.leftovers_of(id).await;
            if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
        })
        .await
    }

    /// Waits (up to a minute) until the run has a sandbox, or has none.
    pub async fn wait_for_sandboxes(&self, id: &str, present: bool) {
        let what = format!("run {id}: sandbox present is {present}");
        crate::eventually(Duration::from_secs(60), &what, || async {
            let sandboxes = self.sandboxes_of(id).await;
            if sandboxes.is_empty() != present { Ok(()) } else { Err(format!("{sandboxes:?}")) }
        })
        .await
    }

    /// Starts a worker inside this process.
    pub async fn spawn_worker(&self) -> WorkerHandle {
        self.spawn_worker_with(self.config.clone()).await
    }

    /// An in-process worker with its own configuration.
    pub async fn spawn_worker_with(&self, config: Config) -> WorkerHandle {
        let app = worker::Application::build(config).await.expect("worker builds");
        let name = app.name().to_owned();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        WorkerHandle { name, stop: Some(stop), task }
    }

    /// Starts the real `worker` binary as a child process.
    pub fn spawn_worker_process(&self) -> WorkerProcess {
        self.spawn_worker_process_with_env(&[])
    }

    /// Like [`Self::spawn_worker_process`], with extra environment variables
    /// (for example canary secrets that must never reach a sandbox).
    pub fn spawn_worker_process_with_env(&self, extra: &[(&str, &str)]) -> WorkerProcess {
        self.spawn_binary("worker", "worker", &[], extra)
    }

    /// Starts the standalone gateway (`paddock-gateway`) as a child process
    /// with this app's settings plus `extra`, and waits until it answers.
    pub async fn spawn_gateway_process(&self, listen: &str, extra: &[(&str, &str)]) -> WorkerProcess {
        let mut env = vec![("PADDOCK_GATEWAY__LISTEN", listen), ("PADDOCK_GATEWAY__REMOTE", "")];
        env.extend_from_slice(extra);
        let mut process = self.spawn_binary("gateway", "paddock-gateway", &[], &env);
        let tls = extra.iter().any(|(k, _)| *k == "PADDOCK_GATEWAY__TLS_CERT_FILE");
        let (client, scheme) =
            if tls { (crate::tls::TestCa::get().client(), "https") } else { (self.client.clone(), "http") };
        started(&mut process, "the gateway", &client, &format!("{scheme}://{listen}/healthz")).await;
        process
    }

    /// This app's API as its own process (the binary a deployment runs),
    /// on a port of its own: returns it and its base URL once it answers.
    pub async fn spawn_api_process(&self, extra: &[(&str, &str)]) -> (WorkerProcess, String) {
        let listen = format!("127.0.0.1:{}", crate::free_port());
        let mut env = vec![("PADDOCK_API__LISTEN", listen.as_str())];
        env.extend_from_slice(extra);
        let mut process = self.spawn_binary("api", "api", &[], &env);
        let base = format!("http://{listen}");
        started(&mut process, "the api", &self.client, &format!("{base}/healthz")).await;
        (process, base)
    }

    /// The binary `name` with `args`, this app's settings and `extra`
    /// (an empty value removes a setting), logging to the scratch dir.
    fn spawn_binary(&self, label: &str, name: &str, args: &[&str], extra: &[(&str, &str)]) -> WorkerProcess {
        let bin = services::bin_dir().join(name);
        assert!(bin.exists(), "{} is missing: build with `cargo build --bins`", bin.display());
        let log = self.scratch.join(format!("{label}-{}.log", ulid::Ulid::new()));
        let file = std::fs::File::create(&log).expect("process log");
        let mut command = std::process::Command::new(bin);
        command.args(args).envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))).env("RUST_LOG", "info");
        for (key, value) in extra {
            if value.is_empty() {
                command.env_remove(key);
            } else {
                command.env(key, value);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .expect("start the worker binary");
        WorkerProcess { child, log }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.scratch).ok();
    }
}

pub struct WorkerHandle {
    pub name: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl WorkerHandle {
    /// Like SIGTERM: stop claiming, let running runs finish, return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("worker task").expect("worker stops cleanly");
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct WorkerProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn kill_hard(&mut self) {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until `process` answers `health` while still running: one that
/// could not bind its port exits, and something else may be answering.
async fn started(process: &mut WorkerProcess, what: &str, client: &reqwest::Client, health: &str) {
    started_within(process, what, client, health, Duration::from_secs(30)).await
}

/// [`started`] for a process that takes up to `limit` to answer.
pub async fn started_within(
    process: &mut WorkerProcess,
    what: &str,
    client: &reqwest::Client,
    health: &str,
    limit: Duration,
) {
    let since = std::time::Instant::now();
    loop {
        let answered = client.get(health).send().await.is_ok();
        let exited = process.child.try_wait().expect("the process's status");
        assert!(exited.is_none(), "{what} exited ({exited:?}):\n{}", process.log_text());
        if answered {
            return;
        }
        assert!(since.elapsed() < limit, "{what} did not start:\n{}", process.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
