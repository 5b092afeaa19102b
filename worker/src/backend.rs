//! apalis `Backend` over [`RunQueue`]: the worker runtime asks for a task only
//! when a concurrency slot is free, and the backend claims no more runs than
//! slots are free, so a claim is never buffered behind a busy slot (the
//! apalis-redis heartbeat gap cannot happen here).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::RandomId;
use apalis_core::worker::context::WorkerContext;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_layer::Identity;

use store::{ClaimedRun, Outcome, RunQueue};

type Claim = Pin<Box<dyn Future<Output = Vec<ClaimedRun>> + Send>>;
type Release = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Yields claimed runs to an apalis worker, claiming as many at once as the
/// worker has free slots (apalis asks only when one is free, and again at
/// once while more are), so a claimed run waits for no busy slot.
pub struct RunBackend {
    queue: RunQueue,
    worker: String,
    lease: Duration,
    poll_interval: Duration,
    concurrency: usize,
    wake: Arc<Notify>,
    /// Fires the moment shutdown is asked for: no claim starts after it,
    /// even one a wake-up arriving with the signal would start before the
    /// monitor has stopped the worker.
    stopping: CancellationToken,
    claim: Option<Claim>,
    claimed: VecDeque<ClaimedRun>,
    release: Option<Release>,
}

/// Never returned: Redis errors are retried with backoff inside the claim
/// loop, because any backend error stops an apalis worker for good.
#[derive(Debug, thiserror::Error)]
#[error("run backend error")]
pub struct RunBackendError;

impl RunBackend {
    /// `wake` is notified when work may have become claimable
    /// ([`listen_for_wakes`]); without a notification an idle worker
    /// claims again after `poll_interval`.
    pub fn new(
        queue: RunQueue,
        worker: String,
        lease: Duration,
        poll_interval: Duration,
        concurrency: usize,
        wake: Arc<Notify>,
        stopping: CancellationToken,
    ) -> Self {
        Self {
            queue,
            worker,
            lease,
            poll_interval,
            concurrency,
            wake,
            stopping,
            claim: None,
            claimed: VecDeque::new(),
            release: None,
        }
    }

    /// Claims until runs come, `n` at most: an empty claim waits for a wake
    /// or `poll_interval`, errors back off.
    fn claim_loop(&self, n: usize) -> Claim {
        let (queue, worker, lease, idle, wake) =
            (self.queue.clone(), self.worker.clone(), self.lease, self.poll_interval, self.wake.clone());
        let stopping = self.stopping.clone();
        Box::pin(async move {
            let mut backoff = idle;
            loop {
                if stopping.is_cancelled() {
                    // The monitor closes this backend next; nothing more is claimed.
                    return std::future::pending().await;
                }
                // Registered before the claim, so a wake sent while it runs
                // is not lost.
                let woken = wake.notified();
                let mut woken = std::pin::pin!(woken);
                woken.as_mut().enable();
                match queue.claim_many(&worker, lease, n).await {
                    Ok(runs) if !runs.is_empty() => return runs,
                    Ok(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(idle) => {}
                            _ = woken => {}
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?backoff, "claim failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        })
    }
}

/// Wakes idle backends whenever the queue says a band became claimable,
/// until `stop`. Pub/Sub is best effort: a lost message costs one poll
/// interval.
pub async fn listen_for_wakes(queue: RunQueue, wake: Arc<Notify>, stop: CancellationToken) {
    crate::pubsub::listen(|| queue.wake_messages(), |()| wake.notify_waiters(), "idle workers poll", stop).await;
}

fn task(run: ClaimedRun) -> Task<ClaimedRun> {
    let attempt = run.attempt as usize;
    TaskBuilder::new(run).attempt(attempt).build()
}

impl Backend for RunBackend {
    type Task = Task<ClaimedRun>;
    type Error = RunBackendError;

    fn poll_ready(&mut self, _: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if let Some(run) = self.claimed.pop_front() {
            return Poll::Ready(Some(Ok(task(run))));
        }
        if self.claim.is_none() {
            // Called only with a slot free; the tasks apalis tracks are the
            // busy ones.
            let free = self.concurrency.saturating_sub(worker.task_count()).max(1);
            self.claim = Some(self.claim_loop(free));
        }
        let Some(claim) = self.claim.as_mut() else { return Poll::Pending };
        match claim.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(runs) => {
                self.claim = None;
                self.claimed.extend(runs);
                self.poll_next(cx, worker)
            }
        }
    }

    /// Runs claimed but not yet handed out (shutdown came between) go back
    /// to their queue at once, their attempt not counted.
    fn poll_close(&mut self, cx: &mut Context<'_>, _: &WorkerContext) -> Poll<Result<(), Self::Error>> {
        self.claim = None;
        if self.release.is_none() && !self.claimed.is_empty() {
            let (queue, runs) = (self.queue.clone(), std::mem::take(&mut self.claimed));
            self.release = Some(Box::pin(async move {
                for run in runs {
                    if let Err(error) = queue.finish(&run, &Outcome::Release).await {
                        tracing::warn!(run_id = %run.id, %error, "releasing an unstarted run failed; the reaper will");
                    }
                }
            }));
        }
        if let Some(release) = self.release.as_mut() {
            if release.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.release = None;
        }
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
