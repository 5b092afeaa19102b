//! Metering shared by every gateway: GCRA rate limits (requests and
//! tokens per minute) and token and cost budgets per run and tenant day.

use std::time::Duration;

use common::RunId;
use redis::AsyncCommands;

use super::scripts::{MeterArgs, RateArg, ReserveArg};
use super::{QueueError, RunQueue};

/// Tokens and cost (micro-dollars): an amount, a reservation or a limit
/// (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub tokens: u64,
    pub micro_usd: u64,
}

/// A shared rate a call is taken from: `cells` of `name`, which allows
/// `per_minute` (with a burst of as many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub name: String,
    pub per_minute: u64,
    pub cells: u64,
}

/// A call's worst case, to reserve against its run's and its tenant's
/// budgets (limits 0: none).
#[derive(Debug, Clone, Copy)]
pub struct Reservation<'a> {
    pub run: RunId,
    pub tenant: &'a str,
    pub amount: Spend,
    pub run_limit: Spend,
    pub tenant_limit: Spend,
}

/// Whether a call may go, from one atomic look at every limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Taken from every rate and, when asked, reserved on `day` (the UTC
    /// day, days since the epoch, whose tenant budget holds it).
    Admitted { day: u64 },
    /// The `index`-th rate does not allow the call for `wait`.
    RateLimited { index: usize, wait: Duration },
    /// The budget named (`run`, `tenant`, `run cost`, `tenant cost`) does
    /// not cover the call.
    OverBudget(String),
}

impl RunQueue {
    /// Admits a call in one round trip: takes its cells from every rate and
    /// reserves its worst case, or, when one of them refuses, takes
    /// nothing from any.
    pub async fn admit(&self, rates: &[Rate], reservation: Option<&Reservation<'_>>) -> Result<Admission, QueueError> {
        let run = reservation.map(|r| r.run.to_string());
        let reserve = reservation.zip(run.as_deref()).map(|(r, run)| ReserveArg {
            run,
            tenant: r.tenant,
            tokens: [r.amount.tokens, r.run_limit.tokens, r.tenant_limit.tokens],
            cost: [r.amount.micro_usd, r.run_limit.micro_usd, r.tenant_limit.micro_usd],
        });
        let rate_args = rate_args(rates);
        let (ok, what, a, b): (u8, String, u64, u64) =
            self.run_script(&MeterArgs::Admit { rates: &rate_args, reserve }).await?;
        Ok(match (ok, what.as_str()) {
            (1, _) => Admission::Admitted { day: a },
            (_, "rate") => {
                Admission::RateLimited { index: (a as usize).saturating_sub(1), wait: Duration::from_millis(b) }
            }
            _ => Admission::OverBudget(what),
        })
    }

    /// Gives back cells taken from shared rates but not used (each rate's
    /// `cells`).
    pub async fn rate_refund(&self, rates: &[Rate]) -> Result<(), QueueError> {
        let rate_args = rate_args(rates);
        let _: (u8, String, u64, u64) = self.run_script(&MeterArgs::Refund { rates: &rate_args }).await?;
        Ok(())
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
        let run = run.to_string();
        let args = MeterArgs::Settle {
            run: &run,
            tenant,
            day,
            tokens: [reserved.tokens, actual.tokens],
            cost: [reserved.micro_usd, actual.micro_usd],
        };
        let _: (u8, String, u64, u64) = self.run_script(&args).await?;
        Ok(())
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
}

/// The rates as the script takes them; GCRA's emission interval is a
/// minute over the rate.
fn rate_args(rates: &[Rate]) -> Vec<RateArg<'_>> {
    rates
        .iter()
        .map(|r| RateArg {
            name: &r.name,
            interval_ms: 60_000.0 / r.per_minute.max(1) as f64,
            burst: r.per_minute,
            cells: r.cells,
        })
        .collect()
}
