//! The worker process: apalis `Monitor` + `WorkerBuilder` over [`RunBackend`],
//! plus the heartbeat and reaper loops.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis_core::monitor::Monitor;
use apalis_core::worker::builder::WorkerBuilder;
use common::config::Config;
use tokio_util::sync::CancellationToken;

use crate::backend::RunBackend;
use crate::leases::{self, Leases};
use crate::run::{self, Runtime};
use objstore::S3Store;
use platform::outbound::Outbound;
use sandbox::SandboxDriver;
use sandbox::egress::EgressPolicy;
use store::RunQueue;

pub struct Application {
    runtime: Arc<Runtime>,
}

impl Application {
    /// Connects to Redis, S3 and Docker, checks the sandbox image, and sweeps
    /// sandboxes that crashed workers left behind.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let worker = format!("{}-{}", config.worker.name, ulid::Ulid::new().to_string().to_lowercase());
        let outbound = Outbound::new(&config.tls, &config.outbound)?;
        let queue = RunQueue::connect(&config.redis, &outbound)
            .await?
            .with_audit_writes(store::audit::AuditWrites::from_config(&config.audit));
        queue.check_server().await?;
        // A run's audit events go to the pending log in Redis, durable there.
        queue.check_audit_durability().await?;
        let store = S3Store::new(&config.s3, &outbound);
        // Refuse a contradictory egress configuration at start, naming the key.
        EgressPolicy::from_config(&config.egress)?;
        let sandboxes = SandboxDriver::connect(
            &config.sandbox,
            &[config.egress.proxy_port, config.gateway.port],
            &config.redis.namespace,
            &worker,
        )
        .await?;
        sandboxes.check_image().await?;
        sandboxes.check_runtime().await?;
        sandboxes.prepare_firewall().await?;
        tokio::fs::create_dir_all(&config.worker.work_dir).await?;

        sweep_dead_workers(&queue, &sandboxes, Duration::from_secs(config.worker.lease_seconds)).await?;
        let config_github = config.github.clone();
        let config_gateway = config.gateway.clone();
        let (audit, object_lock) = audit_trail::open(&config, store.clone(), &worker).await?;
        if !object_lock.enforced {
            tracing::warn!(detail = %object_lock.detail, "audit bucket: Object Lock not enforced");
        }
        let audit = Arc::new(audit.in_role("worker"));
        let interval = Duration::from_secs(config.audit.digest_interval_seconds);
        audit_trail::spawn_digests(Arc::downgrade(&audit), interval);
        let sealer = audit_trail::Sealer::from_config(&config)?;
        // A shelf of warm sandboxes for each agent profile's own image.
        let images: Vec<(String, u32)> = config
            .agents
            .values()
            .filter_map(|a| a.image.clone().map(|image| (image, a.warm_pool.unwrap_or(config.sandbox.warm_pool))))
            .collect();
        let warm = sandbox::WarmPool::new(&sandboxes, &images);
        let runtime = Runtime {
            warm,
            sealer,
            config,
            worker,
            queue,
            store,
            sandboxes,
            leases: Leases::default(),
            redaction_key: gateway::mint_token()?.into_bytes(),
            grace_over: CancellationToken::new(),
            github: forge::GitHubApp::from_config(&config_github, &outbound)?.map(Arc::new),
            audit,
            http: outbound.http().build()?,
            remote_gateway: gateway::RemoteGateway::from_config(&config_gateway, &outbound)?,
            outbound,
        };
        Ok(Self { runtime: Arc::new(runtime) })
    }

    pub fn name(&self) -> &str {
        &self.runtime.worker
    }

    /// Claims and executes runs until `shutdown` resolves; then claims no
    /// more, lets running runs finish within the grace period, and hands
    /// back (without counting the attempt) whatever is still running.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let runtime = self.runtime;
        let cfg = &runtime.config.worker;
        let lease = Duration::from_secs(cfg.lease_seconds);
        let grace = Duration::from_secs(cfg.shutdown_grace_seconds);
        let background = CancellationToken::new();
        let heartbeats = tokio::spawn(runtime.leases.clone().keep_alive(
            runtime.queue.clone(),
            runtime.worker.clone(),
            lease,
            Duration::from_secs(cfg.heartbeat_seconds),
            background.clone(),
        ));
        let nudges = tokio::spawn(leases::listen_for_nudges(
            runtime.leases.clone(),
            runtime.queue.clone(),
            runtime.worker.clone(),
            background.clone(),
        ));
        let wake = Arc::new(tokio::sync::Notify::new());
        let wakes =
            tokio::spawn(crate::backend::listen_for_wakes(runtime.queue.clone(), wake.clone(), background.clone()));
        let reaper = tokio::spawn(leases::reap_expired(
            runtime.queue.clone(),
            Duration::from_secs(cfg.heartbeat_seconds),
            background.clone(),
        ));

        let janitor = tokio::spawn(janitor(runtime.clone(), background.clone()));
        // The pool is made once this worker is seen alive (its heartbeat),
        // so no other worker's janitor takes its members for a dead
        // worker's; claims begin once it is full, or failed to fill.
        let warm = runtime.warm.status().size;
        if warm > 0 {
            runtime.queue.heartbeat(&runtime.worker, lease, &[]).await?;
            if let Err(error) = runtime.warm.fill().await {
                tracing::warn!(%error, "the warm sandbox pool could not be filled; runs start cold until it is");
            }
        }
        let refill = (warm > 0).then(|| runtime.warm.spawn_refill(background.clone()));
        let retention = runtime.config.retention.sweep_interval_seconds;
        let sweeper = (retention > 0).then(|| {
            let sweeper = crate::retention::Sweeper {
                store: runtime.store.clone(),
                queue: runtime.queue.clone(),
                trail: runtime.audit.clone(),
                retention: runtime.config.retention.clone(),
                audit_prefix: runtime.config.audit.prefix.trim_end_matches('/').to_owned(),
                export_prefix: runtime.config.audit.export_prefix.trim_end_matches('/').to_owned(),
                by: runtime.worker.clone(),
            };
            crate::retention::spawn(sweeper, Duration::from_secs(retention), background.clone())
        });
        let grace_over = runtime.grace_over.clone();
        let stopping = CancellationToken::new();
        let stop_claims = stopping.clone();
        let signal = async move {
            shutdown.await;
            stop_claims.cancel();
            tracing::info!(?grace, "shutting down: no new claims; running runs may finish");
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                grace_over.cancel();
            });
            Ok(())
        };
        let factory_runtime = runtime.clone();
        let poll = Duration::from_millis(cfg.poll_interval_ms);
        let concurrency = cfg.concurrency;
        platform::metrics::global().slots_free.set(i64::try_from(concurrency).unwrap_or(i64::MAX));
        if let Some(listen) = &runtime.config.telemetry.metrics_listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("telemetry.metrics_listen {listen}: {e}"))?;
            tracing::info!(%listen, "serving /metrics");
            platform::metrics::serve(listener, background.clone());
        }
        tracing::info!(worker = %runtime.worker, concurrency, "worker started");
        Monitor::new()
            .register(move |_restarts| {
                let rt = factory_runtime.clone();
                let (queue, name, wake, stopping) =
                    (rt.queue.clone(), rt.worker.clone(), wake.clone(), stopping.clone());
                let backend = RunBackend::new(queue, name, lease, poll, concurrency, wake, stopping);
                WorkerBuilder::new(rt.worker.clone())
                    .backend(backend)
                    .data(rt)
                    .catch_panic()
                    .concurrency(concurrency)
                    .build(run::execute)
            })
            .should_restart(|_ctx, error| {
                tracing::error!(%error, "worker stopped with an error; restarting");
                true
            })
            // Past the grace period runs are interrupted and released, which
            // takes seconds; the monitor waits for that too.
            .shutdown_timeout(grace + Duration::from_secs(60))
            .run_with_signal(signal)
            .await?;

        background.cancel();
        let _ = tokio::join!(heartbeats, nudges, wakes, reaper, janitor);
        // The refill removes the pool's members once it is told to stop.
        if let Some(refill) = refill {
            let _ = refill.await;
        }
        if let Some(sweeper) = sweeper {
            let _ = sweeper.await;
        }
        // The stream's last segments get their digest, so it ends verifiable.
        if let Err(error) = runtime.audit.flush().await {
            tracing::error!(%error, "the last audit digest could not be written");
        }
        tracing::info!(worker = %runtime.worker, "worker stopped");
        Ok(())
    }
}

/// Removes sandboxes whose worker has not been seen for a lease period (it
/// crashed or lost its host), and their workspace volumes.
async fn sweep_dead_workers(queue: &RunQueue, sandboxes: &SandboxDriver, lease: Duration) -> anyhow::Result<()> {
    let alive = queue.live_workers(lease).await?;
    let swept = sandboxes.sweep(|w| alive.contains(w)).await?;
    if !swept.is_empty() {
        tracing::info!(count = swept.len(), "removed sandboxes left by crashed workers");
    }
    Ok(())
}

/// Sweeps on start (in `build`) and then once per lease period, so a worker
/// that dies while others keep running does not leave its sandboxes behind.
async fn janitor(runtime: Arc<Runtime>, stop: CancellationToken) {
    let lease = Duration::from_secs(runtime.config.worker.lease_seconds);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(lease) => {}
        }
        if let Err(error) = sweep_dead_workers(&runtime.queue, &runtime.sandboxes, lease).await {
            tracing::warn!(%error, "sandbox sweep failed; retrying next period");
        }
    }
}
