//! The Docker sandbox a run executes in, driven through bollard.
//!
//! One container, one internal network (with host firewall rules) and one
//! size-capped workspace volume per run. The container idles under an init
//! process; the agent and the diff are `exec`s into it, so the worker
//! controls timing and can kill it at any point.

pub mod egress;
pub mod firewall;
mod hardening;
mod pool;
mod tree;

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::Docker;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, HostConfig, Ipam, IpamConfig, Mount, MountType, NetworkCreateRequest, ResourcesUlimits,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptions,
    ListVolumesOptions, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, UploadToContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bytes::Bytes;
use common::RunId;
use common::config::{SandboxConfig, SandboxRuntime};
use common::policy::SandboxPolicy;
use futures::{Stream, StreamExt};

pub use pool::{WarmPool, WarmStatus};
pub use tree::{stream_tree, tar_tree};

pub const LABEL_MANAGED_BY: &str = "paddock.managed-by";
pub const LABEL_NAMESPACE: &str = "paddock.namespace";
pub const LABEL_RUN_ID: &str = "paddock.run-id";
pub const LABEL_WORKER: &str = "paddock.worker";
pub const LABEL_VOLUME: &str = "paddock.volume";
pub const LABEL_NETWORK: &str = "paddock.network";
/// On a warm pool member: its pool id (it has no run until one takes it).
pub const LABEL_WARM: &str = "paddock.warm";
const MANAGED_BY: &str = "paddock";

/// The workspace mount point inside every sandbox.
pub const WORKSPACE: &str = "/workspace";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error("sandbox image {image} is missing: run `cargo xtask setup` to build it")]
    ImageMissing { image: String },
    /// The engine did not apply a hardening setting (an older engine drops
    /// fields it does not know, silently); the container was not started.
    #[error("the docker engine did not apply `{field}`: expected {expected}, found {found}")]
    NotHardened { field: &'static str, expected: String, found: String },
    /// The policy asks for a runtime the engine has not registered.
    #[error(
        "the docker engine has no `{runtime}` runtime (it has: {available}); register it in the engine's daemon.json \
         (`cargo xtask setup` registers runsc) or set the policy's `runtime` to one it has"
    )]
    RuntimeMissing { runtime: String, available: String },
    /// What the command wrote went over a bound.
    #[error("{what} is larger than {limit} bytes")]
    OverLimit { what: &'static str, limit: u64 },
    #[error("sandbox: {0}")]
    Other(String),
}

/// Creates, drives and removes sandboxes for one worker process.
#[derive(Clone)]
pub struct SandboxDriver {
    docker: Docker,
    config: SandboxConfig,
    /// Host ports a sandbox may reach on its gateway address.
    open_ports: Vec<u16>,
    pool: (Ipv4Addr, u8),
    namespace: String,
    worker: String,
}

/// Removal is idempotent: what another cleanup path removed first is gone,
/// not a failure.
fn already_gone(error: &bollard::errors::Error) -> bool {
    matches!(error, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

/// A started sandbox. Remove it with [`SandboxDriver::remove`].
#[derive(Debug)]
pub struct Sandbox {
    pub container: String,
    pub volume: String,
    pub network: SandboxNetwork,
    /// The host's list of the container's processes (its pids cgroup), for
    /// [`SandboxDriver::rank_for_oom`]; `None` where it cannot be found.
    processes: Option<std::path::PathBuf>,
}

/// What every host process of a sandbox carries for the OOM killer.
pub const SANDBOX_OOM_SCORE_ADJ: i64 = 500;

/// The run's own internal network: no route out, no DNS; the host answers
/// only on `gateway` at the allowed ports.
#[derive(Debug, Clone)]
pub struct SandboxNetwork {
    pub name: String,
    pub subnet: String,
    pub gateway: Ipv4Addr,
    rules: firewall::RunRules,
}

/// Which of a command's streams a chunk of its output came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// What a command's stdin is written from.
type InputChunks = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Chunks of a command's output, each with the stream it came on.
pub type OutputChunks = std::pin::Pin<Box<dyn Stream<Item = Result<(OutputStream, Bytes), SandboxError>> + Send>>;

/// How a sandbox's container stopped on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    pub oom_killed: bool,
    pub exit_code: Option<i64>,
}

/// A running command's output; read it to the end, then ask for the code.
pub struct Exec {
    pub id: String,
    pub output: OutputChunks,
    /// Writes the command's stdin while it runs (from [`SandboxDriver::start_in_tree`]).
    feeding: Option<tokio::task::JoinHandle<Result<(), SandboxError>>>,
}

impl Exec {
    /// Once the output has ended: whether everything meant for the
    /// command's stdin was sent (a checkout that could not be packed or
    /// sent is the worker's failure, not the agent's).
    pub async fn input_sent(&mut self) -> Result<(), SandboxError> {
        match self.feeding.take() {
            None => Ok(()),
            Some(task) => task.await.map_err(|e| SandboxError::Other(format!("sending the command's input: {e}")))?,
        }
    }
}

/// What starts an agent in a pool member or a fresh sandbox: unpack the
/// checkout from stdin into the workspace (the sandbox's own `tar`, as the
/// sandbox user), then replace itself with the agent's command (`$1`),
/// whose stdin is the report key (read first, when `$2` is 1) or nothing.
/// One exec instead of an archive upload and an exec: each costs a
/// container-runtime round (about 50 ms here). Exits [`UNPACK_FAILED`]
/// with a line saying so when the tree cannot be unpacked.
const UNPACK_THEN_RUN: &str = r#"if [ "$2" = 1 ]; then IFS= read -r key || exit 213; fi
if ! tar -x -f - -C /workspace; then
  echo "paddock: the checkout could not be unpacked in the sandbox" >&2
  exit 213
fi
if [ "$2" = 1 ]; then exec bash -c "$1" bash <<< "$key"; fi
exec bash -c "$1" bash < /dev/null"#;

/// The exit code of [`UNPACK_THEN_RUN`] when the tree could not be
/// unpacked: one neither shells (126, 127, 128 + signal) nor container
/// runtimes (125) use, so an agent's own failure is not taken for it.
pub const UNPACK_FAILED: i64 = 213;

/// Whether a checkout of `bytes` is unpacked by the agent's own exec
/// ([`SandboxDriver::start_in_tree`]) rather than the archive API: what the
/// sandbox's `tar` writes into its tmpfs workspace is charged to the
/// sandbox's memory, so only a checkout that is small beside it (at most
/// 16 MiB and an eighth of the memory cap) goes that way. Larger ones take
/// the slower archive API, as before, written (and charged) by the engine.
pub fn unpacks_in_exec(bytes: u64, policy: &SandboxPolicy) -> bool {
    let memory = u64::try_from(policy.memory_bytes).unwrap_or(0);
    bytes <= (16u64 << 20).min(memory / 8)
}

impl SandboxDriver {
    /// Connects to the engine. `open_ports` are the host ports a sandbox
    /// may reach on its gateway (the egress proxy, later the model gateway).
    pub async fn connect(
        config: &SandboxConfig,
        open_ports: &[u16],
        namespace: &str,
        worker: &str,
    ) -> Result<Self, SandboxError> {
        let pool = parse_pool(&config.subnet_pool).ok_or_else(|| {
            SandboxError::Other(format!(
                "invalid configuration: `sandbox.subnet_pool` = {} must be an IPv4 CIDR of /8 to /26",
                config.subnet_pool
            ))
        })?;
        let docker = if let Some(path) = config.docker_host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 600, bollard::API_DEFAULT_VERSION)?
        } else {
            Docker::connect_with_http(&config.docker_host, 600, bollard::API_DEFAULT_VERSION)?
        };
        docker.ping().await?;
        Ok(Self {
            docker,
            config: config.clone(),
            open_ports: open_ports.to_vec(),
            pool,
            namespace: namespace.to_owned(),
            worker: worker.to_owned(),
        })
    }

    /// Makes sure the host firewall chain exists; a worker that cannot
    /// install firewall rules must not run sandboxes.
    pub async fn prepare_firewall(&self) -> Result<(), SandboxError> {
        let (base, bits) = self.pool;
        firewall::ensure_chain(&format!("{base}/{bits}")).await
    }

    /// The tag of a sandbox network's firewall rules: namespace, worker,
    /// then the run (or `warm-<id>` for a pool member).
    fn firewall_tag(&self, owner: Owner) -> String {
        format!("pd:{}:{}:{owner}", self.namespace, self.worker)
    }

    /// Creates the run's internal network on a free /28 of the pool and
    /// installs its firewall rules.
    async fn create_network(
        &self,
        name: &str,
        owner: Owner,
        labels: &HashMap<String, String>,
    ) -> Result<SandboxNetwork, SandboxError> {
        let (base, bits) = self.pool;
        let blocks = 1u32 << (28 - u32::from(bits));
        let mut last_error = None;
        for _ in 0..20 {
            let block = u32::from(base) + fastrand::u32(0..blocks) * 16;
            let (subnet, gateway) = (format!("{}/28", Ipv4Addr::from(block)), Ipv4Addr::from(block + 1));
            let request = NetworkCreateRequest {
                name: name.to_owned(),
                driver: Some("bridge".to_owned()),
                internal: Some(true),
                // IPv4 only: no address a sandbox could route around the rules with.
                enable_ipv6: Some(false),
                ipam: Some(Ipam {
                    driver: Some("default".to_owned()),
                    config: Some(vec![IpamConfig {
                        subnet: Some(subnet.clone()),
                        gateway: Some(gateway.to_string()),
                        ..Default::default()
                    }]),
                    options: None,
                }),
                labels: Some(labels.clone()),
                options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".to_owned(), "false".to_owned())])),
                ..Default::default()
            };
            match self.docker.create_network(request).await {
                Ok(_) => {
                    let rules = firewall::RunRules {
                        subnet: subnet.clone(),
                        gateway: gateway.to_string(),
                        ports: self.open_ports.clone(),
                        tag: self.firewall_tag(owner),
                    };
                    if let Err(e) = firewall::install(&rules).await {
                        firewall::remove(&rules).await;
                        let _ = self.docker.remove_network(name).await;
                        return Err(e);
                    }
                    return Ok(SandboxNetwork { name: name.to_owned(), subnet, gateway, rules });
                }
                // Another run (on this or another worker) holds that block.
                Err(e) if e.to_string().contains("overlap") => last_error = Some(e),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last_error.map_or_else(|| SandboxError::Other("no free sandbox subnet".to_owned()), SandboxError::from))
    }

    async fn remove_network(&self, network: &SandboxNetwork) {
        firewall::remove(&network.rules).await;
        if let Err(error) = self.docker.remove_network(&network.name).await
            && !already_gone(&error)
        {
            tracing::warn!(%error, network = %network.name, "removing sandbox network failed");
        }
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Fails with a clear message when the sandbox image was never built.
    pub async fn check_image(&self) -> Result<(), SandboxError> {
        match self.docker.inspect_image(&self.config.image).await {
            Ok(_) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Err(SandboxError::ImageMissing { image: self.config.image.clone() })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The agent an image says it holds: its `io.paddock.agent.name` and
    /// `io.paddock.agent.version` labels, when it has them.
    pub async fn agent_labels(&self, image: &str) -> Result<(Option<String>, Option<String>), SandboxError> {
        let inspected = self.docker.inspect_image(image).await?;
        let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
        Ok((labels.get("io.paddock.agent.name").cloned(), labels.get("io.paddock.agent.version").cloned()))
    }

    fn labels(&self, owner: Owner, volume: &str) -> HashMap<String, String> {
        let (key, value) = match owner {
            Owner::Run(run) => (LABEL_RUN_ID, run.to_string()),
            Owner::Warm(id) => (LABEL_WARM, id.to_string()),
        };
        HashMap::from([
            (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
            (LABEL_NAMESPACE.to_owned(), self.namespace.clone()),
            (key.to_owned(), value),
            (LABEL_WORKER.to_owned(), self.worker.clone()),
            (LABEL_VOLUME.to_owned(), volume.to_owned()),
        ])
    }

    /// The container name of a run's sandbox (a pool member taken by the
    /// run is renamed to it).
    fn run_container_name(&self, run: RunId, attempt: u32) -> String {
        format!("paddock-{}-{run}-{attempt}", self.namespace)
    }

    /// Creates the run's sandbox under `policy`'s caps and starts it idle.
    /// `image` is the agent profile's, when it has its own.
    pub async fn create(
        &self,
        run: RunId,
        attempt: u32,
        policy: &SandboxPolicy,
        image: Option<&str>,
    ) -> Result<Sandbox, SandboxError> {
        self.build(&self.run_container_name(run, attempt), Owner::Run(run), policy, image).await
    }

    /// Creates the workspace volume, the network with its firewall rules
    /// and the container named `name`, verifies the container's hardening
    /// and starts it idle.
    async fn build(
        &self,
        name: &str,
        owner: Owner,
        policy: &SandboxPolicy,
        image: Option<&str>,
    ) -> Result<Sandbox, SandboxError> {
        let c = &self.config;
        let name = name.to_owned();
        let volume = format!("{name}-ws");
        let mut labels = self.labels(owner, &volume);
        labels.insert(LABEL_NETWORK.to_owned(), name.clone());
        // The volume and the network do not depend on each other: make them
        // at once (the network, with its firewall rules, is the slow one).
        let volume_created = self.docker.create_volume(VolumeCreateRequest {
            name: Some(volume.clone()),
            driver: Some("local".to_owned()),
            // tmpfs with a size: the workspace can never fill the host disk.
            driver_opts: Some(HashMap::from([
                ("type".to_owned(), "tmpfs".to_owned()),
                ("device".to_owned(), "tmpfs".to_owned()),
                ("o".to_owned(), format!("size={},uid={},gid={},mode=0755", policy.workspace_bytes, c.uid, c.gid)),
            ])),
            labels: Some(labels.clone()),
            ..Default::default()
        });
        let (volume_created, network) = tokio::join!(volume_created, self.create_network(&name, owner, &labels));
        let network = match (volume_created, network) {
            (Ok(_), Ok(network)) => network,
            (Err(e), network) => {
                if let Ok(network) = &network {
                    self.remove_network(network).await;
                }
                self.remove_volume(&volume).await;
                return Err(e.into());
            }
            (Ok(_), Err(e)) => {
                self.remove_volume(&volume).await;
                return Err(e);
            }
        };
        let limits = ProcessLimits::of(policy);
        let host_config = HostConfig {
            memory: Some(policy.memory_bytes),
            memory_swap: Some(policy.memory_bytes),
            nano_cpus: Some(policy.nano_cpus),
            pids_limit: Some(limits.host_tasks),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges=true".to_owned()]),
            readonly_rootfs: Some(true),
            network_mode: Some(network.name.clone()),
            // No resolver: names are resolved by the egress proxy only.
            dns: Some(vec!["127.0.0.1".to_owned()]),
            init: Some(true),
            privileged: Some(false),
            oom_score_adj: Some(SANDBOX_OOM_SCORE_ADJ),
            runtime: Some(policy.runtime.name().to_owned()),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                format!("rw,nosuid,nodev,size={},uid={},gid={},mode=1777", policy.tmp_bytes, c.uid, c.gid),
            )])),
            mounts: Some(vec![Mount {
                target: Some(WORKSPACE.to_owned()),
                source: Some(volume.clone()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            ulimits: Some(limits.ulimits()),
            log_config: Some(bollard::models::HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "1m".to_owned()),
                    ("max-file".to_owned(), "1".to_owned()),
                ])),
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.unwrap_or(&c.image).to_owned()),
            user: Some(format!("{}:{}", c.uid, c.gid)),
            cmd: Some(vec!["sleep".to_owned(), "infinity".to_owned()]),
            working_dir: Some(WORKSPACE.to_owned()),
            // The run's id and everything else an agent needs come with
            // each exec: a pool member is made before it has a run.
            env: Some(vec!["HOME=/tmp".to_owned()]),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) => {
                self.remove_network(&network).await;
                self.remove_volume(&volume).await;
                return Err(self.explain_create_error(e, policy).await);
            }
        };
        let mut sandbox = Sandbox { container: created.id, volume, network, processes: None };
        let started = async {
            let inspected = self.docker.inspect_container(&sandbox.container, None).await?;
            hardening::verify(&inspected, &self.config, policy, &sandbox.volume, &sandbox.network.name)?;
            self.docker.start_container(&sandbox.container, None).await?;
            let running = self.docker.inspect_container(&sandbox.container, None).await?;
            Ok::<_, SandboxError>(running.state.and_then(|s| s.pid).filter(|pid| *pid > 0))
        };
        match started.await {
            Ok(pid) => sandbox.processes = pid.and_then(processes_of),
            Err(e) => {
                self.remove(&sandbox).await;
                return Err(e);
            }
        }
        Ok(sandbox)
    }

    /// Raises every host process of the sandbox to [`SANDBOX_OOM_SCORE_ADJ`]
    /// where it is lower. Docker sets it on the container's init, and what
    /// `exec` starts inherits it under runc; under runsc gVisor's own
    /// processes (which hold the agent's memory) carry 1, and new ones
    /// appear as the agent starts processes, so the worker calls this as
    /// the run goes. Raising needs no privilege beyond the worker's.
    pub fn rank_for_oom(&self, sandbox: &Sandbox) {
        let Some(list) = &sandbox.processes else { return };
        let Ok(pids) = std::fs::read_to_string(list) else { return };
        for pid in pids.lines().map(str::trim).filter(|p| !p.is_empty()) {
            let path = format!("/proc/{pid}/oom_score_adj");
            let lower = std::fs::read_to_string(&path)
                .ok()
                .and_then(|adj| adj.trim().parse::<i64>().ok())
                .is_some_and(|adj| adj < SANDBOX_OOM_SCORE_ADJ);
            if lower && let Err(error) = std::fs::write(&path, SANDBOX_OOM_SCORE_ADJ.to_string()) {
                tracing::debug!(%error, pid, "raising a sandbox process's oom_score_adj failed");
            }
        }
    }

    /// Refuses to start a worker whose configured `sandbox.runtime` the
    /// engine does not have; a policy that names another runtime is checked
    /// when its sandbox is created.
    pub async fn check_runtime(&self) -> Result<(), SandboxError> {
        let runtimes = self.runtimes().await?;
        let wanted = self.config.runtime.name();
        if runtimes.iter().any(|r| r == wanted) {
            return Ok(());
        }
        Err(SandboxError::Other(format!(
            "invalid configuration: `sandbox.runtime` = {wanted}, but the docker engine has only {}; register it \
             (`cargo xtask setup` registers runsc) or choose one of those",
            runtimes.join(", ")
        )))
    }

    /// The runtimes the engine has registered, by name.
    pub async fn runtimes(&self) -> Result<Vec<String>, SandboxError> {
        let info = self.docker.info().await?;
        let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.sort();
        Ok(names)
    }

    /// An engine that does not know the policy's runtime says so in a 400;
    /// that becomes an error naming the runtime and what the engine has.
    async fn explain_create_error(&self, error: bollard::errors::Error, policy: &SandboxPolicy) -> SandboxError {
        let unknown_runtime = matches!(
            &error,
            bollard::errors::Error::DockerResponseServerError { status_code: 400, message }
                if message.to_ascii_lowercase().contains("runtime")
        );
        if !unknown_runtime {
            return error.into();
        }
        let available = self.runtimes().await.map(|r| r.join(", ")).unwrap_or_else(|e| format!("unknown: {e}"));
        SandboxError::RuntimeMissing { runtime: policy.runtime.name().to_owned(), available }
    }

    /// Unpacks a tar archive, read from `tar` as it comes, into the
    /// workspace through the engine's archive API: the engine writes it, so
    /// its pages are not charged to the sandbox's memory (a checkout too
    /// large for [`Self::start_in_tree`]).
    pub async fn upload(
        &self,
        sandbox: &Sandbox,
        tar: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    ) -> Result<(), SandboxError> {
        let options = UploadToContainerOptionsBuilder::new().path(WORKSPACE).build();
        self.docker.upload_to_container(&sandbox.container, Some(options), bollard::body_try_stream(tar)).await?;
        Ok(())
    }

    /// Starts `command` (run by bash) as the sandbox user in the workspace,
    /// once `tree` (a tar archive, sent as it is read) is unpacked there;
    /// `key`, when given, is the command's whole stdin. See
    /// [`UNPACK_THEN_RUN`]: the exit code is [`UNPACK_FAILED`] when the tree
    /// could not be unpacked, and [`Exec::input_sent`] says whether it was
    /// all sent.
    pub async fn start_in_tree(
        &self,
        sandbox: &Sandbox,
        tree: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
        command: &str,
        env: Vec<String>,
        key: Option<Bytes>,
    ) -> Result<Exec, SandboxError> {
        let with_key = if key.is_some() { "1" } else { "0" };
        let cmd = ["bash", "-c", UNPACK_THEN_RUN, "paddock-start", command, with_key].map(str::to_owned).to_vec();
        let key = key.map(|mut k| {
            if !k.ends_with(b"\n") {
                k = [k.as_ref(), b"\n"].concat().into();
            }
            Ok(k)
        });
        let input = futures::stream::iter(key).chain(tree);
        self.start_exec(sandbox, cmd, env, Some(Box::pin(input))).await
    }

    /// Starts `cmd` as the sandbox user in the workspace; stdout and stderr
    /// come back interleaved, as raw bytes, each chunk saying which it is.
    pub async fn exec(&self, sandbox: &Sandbox, cmd: Vec<String>, env: Vec<String>) -> Result<Exec, SandboxError> {
        self.start_exec(sandbox, cmd, env, None).await
    }

    /// Like [`Self::exec`]; the command's stdin is `input` and then ends
    /// (with `None`, stdin is closed from the start).
    pub async fn exec_with_input(
        &self,
        sandbox: &Sandbox,
        cmd: Vec<String>,
        env: Vec<String>,
        input: Option<Bytes>,
    ) -> Result<Exec, SandboxError> {
        let input = input.map(|bytes| Box::pin(futures::stream::iter([Ok(bytes)])) as InputChunks);
        self.start_exec(sandbox, cmd, env, input).await
    }

    /// Starts `cmd`; its stdin is `input`, written while it runs, and then
    /// ends (with `None`, stdin is closed from the start).
    async fn start_exec(
        &self,
        sandbox: &Sandbox,
        cmd: Vec<String>,
        env: Vec<String>,
        input: Option<InputChunks>,
    ) -> Result<Exec, SandboxError> {
        use tokio::io::AsyncWriteExt;
        let user = format!("{}:{}", self.config.uid, self.config.gid);
        let created = self
            .docker
            .create_exec(
                &sandbox.container,
                CreateExecOptions {
                    cmd: Some(cmd),
                    env: Some(env),
                    user: Some(user),
                    working_dir: Some(WORKSPACE.to_owned()),
                    attach_stdin: Some(input.is_some()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        match self.docker.start_exec(&created.id, None).await? {
            StartExecResults::Attached { output, input: mut stdin } => {
                let feeding = input.map(|mut chunks| {
                    tokio::spawn(async move {
                        let sent = async {
                            while let Some(chunk) = chunks.next().await {
                                let chunk =
                                    chunk.map_err(|e| SandboxError::Other(format!("reading the input: {e}")))?;
                                stdin
                                    .write_all(&chunk)
                                    .await
                                    .map_err(|e| SandboxError::Other(format!("stdin: {e}")))?;
                            }
                            Ok::<_, SandboxError>(())
                        }
                        .await;
                        // Ends stdin either way: on a failure the command sees
                        // its input cut short.
                        let _ = stdin.shutdown().await;
                        sent
                    })
                });
                Ok(Exec {
                    id: created.id,
                    output: Box::pin(output.map(|item| {
                        item.map(|o| {
                            let stream = match &o {
                                bollard::container::LogOutput::StdErr { .. } => OutputStream::Stderr,
                                _ => OutputStream::Stdout,
                            };
                            (stream, o.into_bytes())
                        })
                        .map_err(SandboxError::from)
                    })),
                    feeding,
                })
            }
            StartExecResults::Detached => Err(SandboxError::Other("exec started detached".to_owned())),
        }
    }

    /// The exit code of a finished exec.
    pub async fn exit_code(&self, exec_id: &str) -> Result<i64, SandboxError> {
        let inspected = self.docker.inspect_exec(exec_id).await?;
        inspected.exit_code.ok_or_else(|| SandboxError::Other("exec has no exit code".to_owned()))
    }

    /// Whether the kernel's OOM killer fired in this sandbox. Docker's
    /// `State.OOMKilled` only covers the container's main process, not an
    /// `exec`, so the sandbox's own memory cgroup is read too (read-only to
    /// the agent: `oom_kill` in memory.events on cgroup v2,
    /// memory.oom_control on v1).
    pub async fn oom_killed(&self, sandbox: &Sandbox) -> Result<bool, SandboxError> {
        let inspected = self.docker.inspect_container(&sandbox.container, None).await?;
        if inspected.state.and_then(|s| s.oom_killed).unwrap_or(false) {
            return Ok(true);
        }
        let cmd = vec![
            "cat".to_owned(),
            "/sys/fs/cgroup/memory.events".to_owned(),
            "/sys/fs/cgroup/memory/memory.oom_control".to_owned(),
        ];
        let mut exec = self.exec(sandbox, cmd, Vec::new()).await?;
        let mut out = Vec::new();
        while let Some(chunk) = exec.output.next().await {
            out.extend_from_slice(&chunk?.1);
        }
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("oom_kill "))
            .any(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0)))
    }

    /// Resolves once the sandbox's container has stopped on its own: its
    /// init died, or under runsc gVisor's kernel was OOM-killed or crashed.
    /// An exec's output stream may then never end (the engine waits on a
    /// process that no longer exists), so the worker watches this too.
    /// Says whether the kernel's OOM killer stopped it, and its exit code.
    pub async fn stopped(&self, sandbox: &Sandbox) -> Stopped {
        loop {
            let options = WaitContainerOptionsBuilder::new().condition("not-running").build();
            let _ = self.docker.wait_container(&sandbox.container, Some(options)).next().await;
            // The wait also ends when the engine's connection times out or
            // breaks: only a container the engine says is down has stopped.
            match self.docker.inspect_container(&sandbox.container, None).await {
                Ok(inspected) => {
                    let state = inspected.state.unwrap_or_default();
                    if state.running != Some(true) {
                        return Stopped { oom_killed: state.oom_killed.unwrap_or(false), exit_code: state.exit_code };
                    }
                }
                Err(error) if already_gone(&error) => return Stopped { oom_killed: false, exit_code: None },
                Err(error) => tracing::debug!(%error, container = %sandbox.container, "inspecting the sandbox failed"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// Kills the container at once (timeouts, lost leases, shutdown).
    pub async fn kill(&self, sandbox: &Sandbox) {
        let options = KillContainerOptionsBuilder::new().signal("KILL").build();
        if let Err(error) = self.docker.kill_container(&sandbox.container, Some(options)).await {
            tracing::debug!(%error, container = %sandbox.container, "kill failed (probably already stopped)");
        }
    }

    /// Removes the container, its network and firewall rules, and its
    /// workspace volume. Never fails: what it cannot remove now, the janitor
    /// removes later.
    pub async fn remove(&self, sandbox: &Sandbox) {
        self.remove_container(&sandbox.container).await;
        self.remove_network(&sandbox.network).await;
        self.remove_volume(&sandbox.volume).await;
    }

    async fn remove_container(&self, container: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        if let Err(error) = self.docker.remove_container(container, Some(options)).await
            && !already_gone(&error)
        {
            tracing::warn!(%error, %container, "removing sandbox failed");
        }
    }

    async fn remove_volume(&self, volume: &str) {
        let options = RemoveVolumeOptionsBuilder::new().force(true).build();
        if let Err(error) = self.docker.remove_volume(volume, Some(options)).await
            && !already_gone(&error)
        {
            tracing::warn!(%error, %volume, "removing workspace volume failed");
        }
    }

    /// Removes this namespace's sandboxes whose worker `is_alive` says is
    /// gone, and workspace volumes no container uses. Run on worker start so
    /// a crash leaves nothing behind for long. Returns the containers removed.
    pub async fn sweep(&self, is_alive: impl Fn(&str) -> bool) -> Result<Vec<String>, SandboxError> {
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_MANAGED_BY}={MANAGED_BY}"), format!("{LABEL_NAMESPACE}={}", self.namespace)],
        )]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let mut removed = Vec::new();
        for container in self.docker.list_containers(Some(options)).await? {
            let labels = container.labels.unwrap_or_default();
            let worker = labels.get(LABEL_WORKER).map(String::as_str).unwrap_or_default();
            if is_alive(worker) {
                continue;
            }
            let Some(id) = container.id else { continue };
            tracing::info!(container = %id, %worker, run_id = ?labels.get(LABEL_RUN_ID), "removing sandbox left by a dead worker");
            self.remove_container(&id).await;
            removed.push(id);
        }
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()),
            }))
            .await?;
        for network in networks {
            let worker =
                network.labels.as_ref().and_then(|l| l.get(LABEL_WORKER)).map(String::as_str).unwrap_or_default();
            if !is_alive(worker)
                && let Some(name) = &network.name
                && let Err(error) = self.docker.remove_network(name).await
            {
                tracing::warn!(%error, network = %name, "removing a dead worker's sandbox network failed");
            }
        }
        for (tag, rule) in firewall::tagged(&format!("pd:{}:", self.namespace)).await? {
            let worker = tag.split(':').nth(2).unwrap_or_default();
            if !is_alive(worker) {
                firewall::delete(&rule).await;
            }
        }
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
            }))
            .await?;
        for volume in volumes.volumes.unwrap_or_default() {
            let worker = volume.labels.get(LABEL_WORKER).map(String::as_str).unwrap_or_default();
            if !is_alive(worker) {
                self.remove_volume(&volume.name).await;
            }
        }
        Ok(removed)
    }

    /// Removes everything of `run` this worker made: its containers,
    /// networks and their firewall rules, and workspace volumes, found by
    /// their labels and tags (a pool member the run took, by its name and
    /// the names its labels give). For a run whose own cleanup never ran
    /// (its task panicked). Never fails: what stays, the janitor removes
    /// later.
    pub async fn remove_run(&self, run: RunId) {
        let mut owners = vec![Owner::Run(run)];
        let mut networks = Vec::new();
        let mut volumes = Vec::new();
        for container in self.run_containers(run).await.unwrap_or_default() {
            let labels = container.labels.unwrap_or_default();
            if let Some(id) = labels.get(LABEL_WARM).and_then(|id| id.parse().ok()) {
                owners.push(Owner::Warm(id));
                networks.extend(labels.get(LABEL_NETWORK).cloned());
                volumes.extend(labels.get(LABEL_VOLUME).cloned());
            }
            if let Some(id) = &container.id {
                self.remove_container(id).await;
            }
        }
        for owner in owners {
            match firewall::tagged(&self.firewall_tag(owner)).await {
                Ok(rules) => {
                    for (_, rule) in rules {
                        firewall::delete(&rule).await;
                    }
                }
                Err(error) => tracing::warn!(%error, run_id = %run, "listing the run's firewall rules failed"),
            }
        }
        let filters = HashMap::from([(
            "label",
            vec![format!("{LABEL_NAMESPACE}={}", self.namespace), format!("{LABEL_RUN_ID}={run}")],
        )]);
        let labelled =
            ListNetworksOptions { filters: Some(filters.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()) };
        let labelled = self.docker.list_networks(Some(labelled)).await.unwrap_or_default();
        networks.extend(labelled.into_iter().filter_map(|n| n.name));
        for name in networks {
            if let Err(error) = self.docker.remove_network(&name).await
                && !already_gone(&error)
            {
                tracing::warn!(%error, network = %name, "removing the run's network failed");
            }
        }
        let labelled =
            ListVolumesOptions { filters: Some(filters.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()) };
        let labelled = self.docker.list_volumes(Some(labelled)).await.map(|v| v.volumes.unwrap_or_default());
        volumes.extend(labelled.unwrap_or_default().into_iter().map(|v| v.name));
        for volume in volumes {
            self.remove_volume(&volume).await;
        }
    }

    /// This namespace's containers of `run`: made for it (its label) or
    /// taken by it from the warm pool (its name).
    async fn run_containers(&self, run: RunId) -> Result<Vec<bollard::models::ContainerSummary>, SandboxError> {
        let namespace = HashMap::from([("label", vec![format!("{LABEL_NAMESPACE}={}", self.namespace)])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&namespace).build();
        let prefix = format!("/paddock-{}-{run}-", self.namespace);
        let run_label = run.to_string();
        Ok(self
            .docker
            .list_containers(Some(options))
            .await?
            .into_iter()
            .filter(|c| {
                let labelled = c.labels.as_ref().and_then(|l| l.get(LABEL_RUN_ID)) == Some(&run_label);
                let named = c.names.iter().flatten().any(|n| n.starts_with(&prefix));
                labelled || named
            })
            .collect())
    }

    /// Containers of `run` still present (for tests and operators).
    pub async fn list_run_containers(&self, run: RunId) -> Result<Vec<String>, SandboxError> {
        Ok(self.run_containers(run).await?.into_iter().filter_map(|c| c.id).collect())
    }
}

/// Whom a sandbox is made for: a run, or the warm pool (until a run takes
/// it; its labels and firewall tag keep the pool id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Run(RunId),
    Warm(u64),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Run(run) => write!(f, "{run}"),
            Self::Warm(id) => write!(f, "warm-{id:016x}"),
        }
    }
}

/// How a policy's process cap is enforced under each runtime. Under runc
/// the container's pids cgroup counts the agent's own tasks. Under runsc it
/// counts gVisor's: its kernel takes about 60 host tasks and each process
/// the agent starts about 11 more (measured with Debian's runsc, ptrace
/// platform), so there the cap is gVisor's own per-user `RLIMIT_NPROC`
/// (its kernel counts the sandbox's tasks only, where the host kernel's
/// would count every sandbox's uid 1000 together) and the host cgroup keeps
/// a backstop sized for gVisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessLimits {
    pub host_tasks: i64,
    pub nproc: Option<i64>,
}

impl ProcessLimits {
    pub(crate) fn of(policy: &SandboxPolicy) -> Self {
        match policy.runtime {
            SandboxRuntime::Runc => Self { host_tasks: policy.pids_limit, nproc: None },
            SandboxRuntime::Runsc => Self { host_tasks: 128 + 16 * policy.pids_limit, nproc: Some(policy.pids_limit) },
        }
    }

    pub(crate) fn ulimits(&self) -> Vec<ResourcesUlimits> {
        let limit = |name: &str, value: i64| ResourcesUlimits {
            name: Some(name.to_owned()),
            soft: Some(value),
            hard: Some(value),
        };
        let mut ulimits = vec![limit("nofile", 4096), limit("core", 0)];
        if let Some(nproc) = self.nproc {
            ulimits.push(limit("nproc", nproc));
        }
        ulimits
    }
}

/// The host's list of the processes in `pid`'s pids cgroup: cgroup v1
/// (`N:pids:/path`) or v2 (`0::/path`).
fn processes_of(pid: i64) -> Option<std::path::PathBuf> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v1 = cgroups.lines().find_map(|l| l.split_once(":pids:").map(|(_, path)| format!("pids{path}")));
    let v2 = || cgroups.lines().find_map(|l| l.strip_prefix("0::").map(|path| path.trim_start_matches('/').to_owned()));
    let path =
        std::path::Path::new("/sys/fs/cgroup").join(v1.or_else(v2)?.trim_start_matches('/')).join("cgroup.procs");
    path.exists().then_some(path)
}

/// `a.b.c.d/n` with room for at least four /28 blocks.
fn parse_pool(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, bits) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    if !(8..=26).contains(&bits) {
        return None;
    }
    let mask = u32::MAX << (32 - u32::from(bits));
    Some((Ipv4Addr::from(u32::from(ip) & mask), bits))
}

#[cfg(test)]
mod tests {
    use common::config::{EgressPreset, SandboxConfig};

    use super::*;

    #[test]
    fn only_a_checkout_small_beside_the_memory_cap_is_unpacked_by_the_agents_exec() {
        let mut policy = SandboxPolicy::defaults(&SandboxConfig::default(), EgressPreset::None, &[]);
        policy.memory_bytes = 2 << 30;
        assert!(unpacks_in_exec(16 << 20, &policy));
        assert!(!unpacks_in_exec((16 << 20) + 1, &policy), "16 MiB at most");
        policy.memory_bytes = 64 << 20;
        assert!(unpacks_in_exec(8 << 20, &policy));
        assert!(!unpacks_in_exec((8 << 20) + 1, &policy), "an eighth of the memory at most");
    }

    #[test]
    fn a_pool_members_firewall_tag_names_no_run_and_keeps_the_worker_where_the_janitor_reads_it() {
        let run = RunId::new();
        assert_eq!(Owner::Run(run).to_string(), run.to_string());
        let tag = format!("pd:ns:w1:{}", Owner::Warm(0xab));
        assert_eq!(tag, "pd:ns:w1:warm-00000000000000ab");
        assert_eq!(tag.split(':').nth(2), Some("w1"));
    }
}
