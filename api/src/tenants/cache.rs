//! This process's copy of the declared tenants and sandbox policies, so
//! that accepting a run does not read them from Redis each time.
//!
//! A run decided on the copy carries the copy's `tenancy:version` into the
//! enqueue script, which writes nothing for it when tenants or policies
//! changed since (any API process counts each change in that version, in
//! the script that makes the change). The run is then decided again on a fresh
//! read, and so is any refusal before it is answered: a stale copy can
//! delay a run by one read, never decide one.

use std::sync::{Arc, Mutex, PoisonError};

use store::{QueueError, RunQueue, TenancySnapshot};

#[derive(Default)]
pub struct TenancyCache {
    held: Mutex<Option<Arc<TenancySnapshot>>>,
}

impl TenancyCache {
    /// The copy, read first if there is none.
    pub async fn current(&self, queue: &RunQueue) -> Result<Arc<TenancySnapshot>, QueueError> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match held {
            Some(snapshot) => Ok(snapshot),
            None => self.reload(queue).await,
        }
    }

    /// Reads tenants and policies again and keeps what was read.
    pub async fn reload(&self, queue: &RunQueue) -> Result<Arc<TenancySnapshot>, QueueError> {
        let snapshot = Arc::new(queue.tenancy_snapshot().await?);
        // The latest read stays, even at a lower version (Redis restored
        // from a backup): an older copy left by two reads racing costs one
        // more read when the enqueue script finds it stale.
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(snapshot.clone());
        Ok(snapshot)
    }
}
