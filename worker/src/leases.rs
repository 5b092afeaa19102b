//! The leases this worker holds, kept alive by one heartbeat per interval for
//! all of them, and the reaper that reclaims leases other workers lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::RunId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use store::{ClaimedRun, LeaseStatus, RunQueue};

/// The runs this worker process holds, with the epoch each was claimed under.
#[derive(Clone, Default)]
pub struct Leases {
    held: Arc<Mutex<HashMap<RunId, Held>>>,
    /// Wakes the heartbeat loop early (a cancel nudge arrived).
    beat_now: Arc<Notify>,
}

struct Held {
    epoch: u64,
    lost: CancellationToken,
    cancel: CancellationToken,
}

/// Held while a run executes; dropping it stops heartbeating for the run.
pub struct LeaseGuard {
    id: RunId,
    lost: CancellationToken,
    cancel: CancellationToken,
    leases: Leases,
}

impl LeaseGuard {
    /// Cancelled when a heartbeat finds the lease gone (expired and reaped,
    /// or the epoch moved on). The run must then stop its sandbox.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Cancelled when someone cancelled the run through the API.
    pub fn cancel_requested(&self) -> &CancellationToken {
        &self.cancel
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.id);
    }
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, Held>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn hold(&self, run: &ClaimedRun) -> LeaseGuard {
        let (lost, cancel) = (CancellationToken::new(), CancellationToken::new());
        self.lock().insert(run.id, Held { epoch: run.epoch, lost: lost.clone(), cancel: cancel.clone() });
        LeaseGuard { id: run.id, lost, cancel, leases: self.clone() }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renews every held lease each `interval` until `stop` fires. A failed
    /// heartbeat is logged and retried on the next tick, never fatal.
    pub async fn keep_alive(
        self,
        queue: RunQueue,
        worker: String,
        lease: Duration,
        interval: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.beat_now.notified() => {}
            }
            let held: Vec<(RunId, u64)> = self.lock().iter().map(|(id, h)| (*id, h.epoch)).collect();
            match queue.heartbeat(&worker, lease, &held).await {
                Ok(statuses) => {
                    let map = self.lock();
                    for ((id, _), status) in held.iter().zip(statuses) {
                        let Some(h) = map.get(id) else { continue };
                        match status {
                            LeaseStatus::Held => {}
                            LeaseStatus::CancelRequested if !h.cancel.is_cancelled() => {
                                tracing::info!(run_id = %id, "run cancelled; stopping it");
                                h.cancel.cancel();
                            }
                            LeaseStatus::CancelRequested => {}
                            LeaseStatus::Lost => {
                                tracing::warn!(run_id = %id, "lease lost; stopping the run");
                                h.lost.cancel();
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "heartbeat failed; retrying next interval"),
            }
        }
    }
}

/// Listens on the worker's control channel and triggers a heartbeat at once
/// for every nudge, so a cancel reaches the run in well under one heartbeat
/// interval. Pub/Sub is best effort: the heartbeat reply carries the cancel
/// anyway, so a lost subscription only delays it.
pub async fn listen_for_nudges(leases: Leases, queue: RunQueue, worker: String, stop: CancellationToken) {
    let nudged = |run: String| {
        tracing::debug!(run_id = %run, "cancel nudge");
        leases.beat_now.notify_one();
    };
    crate::pubsub::listen(|| queue.control_messages(&worker), nudged, "cancels arrive with heartbeats", stop).await;
}

/// Reclaims expired leases every `interval` (with jitter, so a fleet does not
/// reap in lockstep) until `stop` fires. The reap script is idempotent, so
/// every worker may run this.
pub async fn reap_expired(queue: RunQueue, interval: Duration, stop: CancellationToken) {
    loop {
        let jitter = Duration::from_millis(fastrand::u64(0..=interval.as_millis() as u64 / 2));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval + jitter) => {}
        }
        match queue.reap(100).await {
            Ok(ids) if !ids.is_empty() => {
                platform::metrics::global().lease_reaps.inc_by(ids.len() as u64);
                tracing::info!(count = ids.len(), ?ids, "reclaimed runs with expired leases")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "reaping expired leases failed; retrying"),
        }
    }
}
