//! apalis `Backend` over [`RunQueue`]: the worker runtime asks for a task only
//! when a concurrency slot is free, so a claim is never buffered behind a busy
//! slot (the apalis-redis heartbeat gap cannot happen here).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use tower_layer::Identity;

use store::{ClaimedRun, RunQueue};

type Claim = Pin<Box<dyn Future<Output = ClaimedRun> + Send>>;

/// Yields claimed runs to an apalis worker.
pub struct RunBackend {
    queue: RunQueue,
    worker: String,
    lease: Duration,
    poll_interval: Duration,
    claim: Option<Claim>,
}

/// Never returned: Redis errors are retried with backoff inside the claim
/// loop, because any backend error stops an apalis worker for good.
#[derive(Debug, thiserror::Error)]
#[error("run backend error")]
pub struct RunBackendError;

impl RunBackend {
    pub fn new(queue: RunQueue, worker: String, lease: Duration, poll_interval: Duration) -> Self {
        Self { queue, worker, lease, poll_interval, claim: None }
    }
}

/// Claims until a run comes: idle polls wait `idle`, errors back off.
fn claim_loop(queue: RunQueue, worker: String, lease: Duration, idle: Duration) -> Claim {
    Box::pin(async move {
        let mut backoff = idle;
        loop {
            match queue.claim(&worker, lease).await {
                Ok(Some(run)) => return run,
                Ok(None) => tokio::time::sleep(idle).await,
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "claim failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    })
}

impl Backend for RunBackend {
    type Task = Task<ClaimedRun>;
    type Error = RunBackendError;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>, _: &WorkerContext) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if self.claim.is_none() {
            self.claim = Some(claim_loop(self.queue.clone(), self.worker.clone(), self.lease, self.poll_interval));
        }
        let Some(claim) = self.claim.as_mut() else { return Poll::Pending };
        match claim.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(run) => {
                self.claim = None;
                let attempt = run.attempt as usize;
                let task = TaskBuilder::new(run).attempt(attempt).build();
                Poll::Ready(Some(Ok(task)))
            }
        }
    }

    fn poll_close(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.claim = None;
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for RunBackend {
    type Args = ClaimedRun;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}
