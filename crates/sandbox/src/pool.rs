//! The warm pool: sandboxes made, hardened, verified and started before a
//! run needs one, for the worker's default policy class: a shelf for the
//! default image and one for each agent profile's own image.
//!
//! A member is exactly what [`SandboxDriver::create`] makes (its own
//! workspace volume, its own internal network with its firewall rules, the
//! hardened container started idle), under a pool id instead of a run id.
//! A run takes one only when the parts that cannot change after creation
//! match its policy (image, runtime, workspace and /tmp sizes, and under
//! runsc the process cap, which is also a ulimit); memory, CPU and the
//! pids cgroup are then set to the run's policy, the container is read
//! back and verified again, and renamed after the run. A member is used by
//! one run and removed with it, never returned: the pool refills itself in
//! the background. Members carry the worker's label, so the janitor sweeps
//! them with the rest of a dead worker's sandboxes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::ContainerUpdateBody;
use bollard::query_parameters::RenameContainerOptionsBuilder;
use common::RunId;
use common::config::{EgressPreset, SandboxRuntime};
use common::policy::SandboxPolicy;
use tokio_util::sync::CancellationToken;

use super::{Owner, ProcessLimits, Sandbox, SandboxDriver, SandboxError, hardening, processes_of};

/// How long the refill waits after a failed creation before it tries again.
const RETRY: Duration = Duration::from_secs(5);

/// One worker's warm sandboxes. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct WarmPool {
    inner: Arc<Inner>,
}

struct Inner {
    driver: SandboxDriver,
    /// The class members are made under: the worker's defaults.
    class: SandboxPolicy,
    /// One per image, each kept at its size.
    shelves: Vec<Shelf>,
    /// Woken when a member is taken (or the pool should be looked at).
    taken: tokio::sync::Notify,
}

struct Shelf {
    image: String,
    size: usize,
    ready: Mutex<VecDeque<Sandbox>>,
}

impl Shelf {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sandbox>> {
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the pool holds now, across its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmStatus {
    pub ready: usize,
    pub size: usize,
}

impl WarmPool {
    /// A pool of `sandbox.warm_pool` members of the driver's default image
    /// and, for each `(image, size)` of `images` (agent profiles' own
    /// images), `size` members of that image (the largest size where an
    /// image is named twice); empty until [`Self::fill`] or
    /// [`Self::spawn_refill`].
    pub fn new(driver: &SandboxDriver, images: &[(String, u32)]) -> Self {
        let config = driver.config();
        let class = SandboxPolicy::defaults(config, EgressPreset::None, &[]);
        let mut sizes: Vec<(String, usize)> = vec![(config.image.clone(), config.warm_pool as usize)];
        for (image, size) in images {
            match sizes.iter_mut().find(|(i, _)| i == image) {
                Some((_, kept)) => *kept = (*kept).max(*size as usize),
                None => sizes.push((image.clone(), *size as usize)),
            }
        }
        let shelves = sizes
            .into_iter()
            .filter(|(_, size)| *size > 0)
            .map(|(image, size)| Shelf { image, size, ready: Mutex::new(VecDeque::new()) })
            .collect();
        let inner = Inner { driver: driver.clone(), class, shelves, taken: tokio::sync::Notify::new() };
        Self { inner: Arc::new(inner) }
    }

    pub fn status(&self) -> WarmStatus {
        let shelves = &self.inner.shelves;
        WarmStatus { ready: shelves.iter().map(|s| s.lock().len()).sum(), size: shelves.iter().map(|s| s.size).sum() }
    }

    fn publish(&self) {
        let ready = self.status().ready;
        platform::metrics::global().sandboxes_warm.set(i64::try_from(ready).unwrap_or(i64::MAX));
    }

    /// Makes members until the pool is full; the first failure is returned
    /// (a worker that cannot make a sandbox should say so at start).
    pub async fn fill(&self) -> Result<(), SandboxError> {
        self.fill_unless(&CancellationToken::new()).await
    }

    /// [`Self::fill`], stopping between members once `stop` fires (a
    /// member half made is never left to the janitor).
    /// Fills every shelf, each in turn: one whose image keeps failing does
    /// not keep the others empty. The first failure is returned.
    async fn fill_unless(&self, stop: &CancellationToken) -> Result<(), SandboxError> {
        let mut failed = None;
        for shelf in &self.inner.shelves {
            while shelf.lock().len() < shelf.size && !stop.is_cancelled() {
                match self.make(&shelf.image).await {
                    Ok(member) => {
                        shelf.lock().push_back(member);
                        self.publish();
                    }
                    Err(error) => {
                        failed.get_or_insert(error);
                        break;
                    }
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn make(&self, image: &str) -> Result<Sandbox, SandboxError> {
        let id = fastrand::u64(..);
        let driver = &self.inner.driver;
        let owner = Owner::Warm(id);
        driver.build(&format!("paddock-{}-{owner}", driver.namespace), owner, &self.inner.class, Some(image)).await
    }

    /// Keeps the pool full until `stop`, then removes what it holds.
    pub fn spawn_refill(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let pool = self.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                // Registered before filling: a take during the fill is not missed.
                let taken = pool.inner.taken.notified();
                let failed = match pool.fill_unless(&stop).await {
                    Ok(()) => false,
                    Err(error) => {
                        tracing::warn!(%error, "making a warm sandbox failed; runs start cold until it works");
                        true
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = taken, if !failed => {}
                    _ = tokio::time::sleep(RETRY), if failed => {}
                }
            }
            pool.drain().await;
        })
    }

    /// Removes every member (on shutdown).
    pub async fn drain(&self) {
        let members: Vec<Sandbox> =
            self.inner.shelves.iter().flat_map(|s| s.lock().drain(..).collect::<Vec<_>>()).collect();
        self.publish();
        for member in members {
            self.inner.driver.remove(&member).await;
        }
    }

    /// The shelf a run under `policy` with `image` (the agent profile's,
    /// if it has its own) can start from: what cannot change once the
    /// container exists must be what its members were made with.
    fn shelf_for(&self, policy: &SandboxPolicy, image: Option<&str>) -> Option<&Shelf> {
        let class = &self.inner.class;
        let image = image.unwrap_or(&self.inner.driver.config().image);
        let fits = policy.runtime == class.runtime
            && policy.workspace_bytes == class.workspace_bytes
            && policy.tmp_bytes == class.tmp_bytes
            && (policy.runtime == SandboxRuntime::Runc || policy.pids_limit == class.pids_limit);
        fits.then(|| self.inner.shelves.iter().find(|s| s.image == image)).flatten()
    }

    /// A member for attempt `attempt` of `run`, under `policy`'s limits and
    /// verified again, or `None` when the pool has none that fits (the run
    /// then starts cold, and is verified there as always). A member that
    /// fails its checks is removed, and said so in the worker's log.
    pub async fn take(&self, run: RunId, attempt: u32, policy: &SandboxPolicy, image: Option<&str>) -> Option<Sandbox> {
        let mut member = self.shelf_for(policy, image)?.lock().pop_front()?;
        self.publish();
        self.inner.taken.notify_one();
        match self.hand_over(&mut member, run, attempt, policy).await {
            Ok(()) => Some(member),
            Err(error) => {
                tracing::warn!(%error, run_id = %run, container = %member.container,
                    "a warm sandbox failed its checks at hand-over; removed, the run starts cold");
                self.inner.driver.remove(&member).await;
                None
            }
        }
    }

    /// Applies the run's limits, reads the container back, verifies every
    /// hardening setting against the run's policy and that it still runs,
    /// and renames it after the run.
    async fn hand_over(
        &self,
        member: &mut Sandbox,
        run: RunId,
        attempt: u32,
        policy: &SandboxPolicy,
    ) -> Result<(), SandboxError> {
        let driver = &self.inner.driver;
        let class = &self.inner.class;
        let docker = &driver.docker;
        if (policy.memory_bytes, policy.nano_cpus, policy.pids_limit)
            != (class.memory_bytes, class.nano_cpus, class.pids_limit)
        {
            let update = ContainerUpdateBody {
                memory: Some(policy.memory_bytes),
                memory_swap: Some(policy.memory_bytes),
                nano_cpus: Some(policy.nano_cpus),
                pids_limit: Some(ProcessLimits::of(policy).host_tasks),
                ..Default::default()
            };
            docker.update_container(&member.container, update).await?;
        }
        let inspected = docker.inspect_container(&member.container, None).await?;
        hardening::verify(&inspected, driver.config(), policy, &member.volume, &member.network.name)?;
        let state = inspected.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(SandboxError::Other(format!(
                "warm sandbox {} is no longer running ({:?})",
                member.container, state.status
            )));
        }
        let name = driver.run_container_name(run, attempt);
        docker.rename_container(&member.container, RenameContainerOptionsBuilder::new().name(&name).build()).await?;
        member.processes = state.pid.filter(|pid| *pid > 0).and_then(processes_of);
        Ok(())
    }
}
