//! Metering shared by every gateway: GCRA rate limits (requests and
//! tokens per minute) and token and cost budgets per run and tenant day.

use std::time::Duration;

use common::RunId;
use redis::AsyncCommands;

use super::scripts::{BudgetArgs, GcraArgs};
use super::{QueueError, RunQueue};

/// Tokens and cost (micro-dollars): an amount, a reservation or a limit
/// (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub tokens: u64,
    pub micro_usd: u64,
}

impl RunQueue {
    /// Takes `cost` from the shared rate `name` (`per_minute`, with a burst
    /// of as many). `Ok(None)` when allowed, `Ok(Some(wait))` when not.
    pub async fn rate_limit(&self, name: &str, per_minute: u64, cost: u64) -> Result<Option<Duration>, QueueError> {
        let (allowed, retry_ms) = self.gcra(name, per_minute, cost as i64).await?;
        Ok((allowed == 0).then(|| Duration::from_millis(retry_ms)))
    }

    /// Gives back `amount` taken from the shared rate `name` but not used.
    pub async fn rate_refund(&self, name: &str, per_minute: u64, amount: u64) -> Result<(), QueueError> {
        self.gcra(name, per_minute, -(amount as i64)).await.map(|_| ())
    }

    async fn gcra(&self, name: &str, per_minute: u64, cost: i64) -> Result<(u8, u64), QueueError> {
        let interval_ms = 60_000.0 / per_minute.max(1) as f64;
        self.run_script(&GcraArgs { name, interval_ms, burst: per_minute, cost }).await
    }

    /// Reserves a call's worst case against the run's and the tenant's
    /// budgets: `Ok(day)`, the UTC day (days since the epoch) whose tenant
    /// budget holds the reservation, or `Err(which)` naming the budget
    /// that does not cover it.
    pub async fn reserve_budget(
        &self,
        run: RunId,
        tenant: &str,
        amount: Spend,
        run_limit: Spend,
        tenant_limit: Spend,
    ) -> Result<Result<u64, String>, QueueError> {
        let args = [amount.tokens, 0, run_limit.tokens, tenant_limit.tokens];
        let cost = [amount.micro_usd, 0, run_limit.micro_usd, tenant_limit.micro_usd];
        let (ok, which, day) = self.budget("reserve", run, tenant, args, cost, None).await?;
        Ok(if ok == 1 { Ok(day) } else { Err(which) })
    }

    /// Releases a reservation made on `day` and books what the call really
    /// used there, even when the call ended on the next day.
    pub async fn settle_budget(
        &self,
        run: RunId,
        tenant: &str,
        day: u64,
        reserved: Spend,
        actual: Spend,
    ) -> Result<(), QueueError> {
        let args = [reserved.tokens, actual.tokens, 0, 0];
        let cost = [reserved.micro_usd, actual.micro_usd, 0, 0];
        self.budget("settle", run, tenant, args, cost, Some(day)).await.map(|_| ())
    }

    /// A tenant's budget on one UTC day: (used, reserved).
    pub async fn tenant_day_spend(&self, tenant: &str, day: u64) -> Result<(Spend, Spend), QueueError> {
        self.spend_at(self.keys.tenant_day_budget(tenant, day)).await
    }

    /// What a run has used and still has reserved.
    pub async fn run_spend(&self, run: RunId) -> Result<(Spend, Spend), QueueError> {
        self.spend_at(self.keys.run_budget(run)).await
    }

    async fn spend_at(&self, key: String) -> Result<(Spend, Spend), QueueError> {
        let mut conn = self.conn.clone();
        let fields = ["used", "reserved", "cost_used", "cost_reserved"];
        let v: Vec<Option<i64>> = conn.hmget(key, &fields).await?;
        // A negative count would be a booking bug; it reads as 0, never wraps.
        let at = |i: usize| v.get(i).copied().flatten().unwrap_or(0).max(0) as u64;
        Ok((Spend { tokens: at(0), micro_usd: at(2) }, Spend { tokens: at(1), micro_usd: at(3) }))
    }

    async fn budget(
        &self,
        op: &str,
        run: RunId,
        tenant: &str,
        tokens: [u64; 4],
        cost: [u64; 4],
        day: Option<u64>,
    ) -> Result<(u8, String, u64), QueueError> {
        self.run_script(&BudgetArgs { op, run: &run.to_string(), tenant, tokens, cost, day }).await
    }
}
