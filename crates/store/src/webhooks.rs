//! GitHub webhook deliveries seen, so a replay is refused.

use redis::AsyncCommands;

use super::{QueueError, RunQueue};

impl RunQueue {
    /// Records a webhook delivery id; `false` when it was seen before
    /// (within a week).
    pub async fn first_delivery(&self, delivery: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(self.keys.delivery(delivery))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(7 * 86400)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Forgets a delivery whose processing failed, so a redelivery works.
    pub async fn forget_delivery(&self, delivery: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(self.keys.delivery(delivery)).await?;
        Ok(())
    }
}
