//! Run tokens (by SHA-256) and what they grant, and the hand-over of a
//! standalone gateway's calls to the run's worker.

use std::time::Duration;

use common::RunId;
use redis::AsyncCommands;

use super::scripts::GatewayCallArgs;
use super::{QueueError, RunQueue, corrupt};

/// What a run token opens: the run and its tenant.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GatewayGrant {
    pub run: RunId,
    pub tenant: String,
    /// The run's span (`traceparent`): a standalone gateway's call spans
    /// join the run's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl RunQueue {
    /// Stores a run's gateway token (its hash) until `ttl` passes or it is
    /// revoked, with what a gateway needs to serve it.
    pub async fn put_gateway_token(&self, hash: &str, grant: &GatewayGrant, ttl: Duration) -> Result<(), QueueError> {
        let json = serde_json::to_string(grant).map_err(|e| corrupt("gateway grant", e))?;
        let mut conn = self.conn.clone();
        let ttl_ms = ttl.as_millis() as u64;
        let _: () = redis::pipe()
            .pset_ex(self.keys.gateway_token(hash), json, ttl_ms)
            .pset_ex(self.keys.run_gateway_token(grant.run), hash, ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// What a live gateway token grants.
    pub async fn gateway_token(&self, hash: &str) -> Result<Option<GatewayGrant>, QueueError> {
        let mut conn = self.conn.clone();
        let json: Option<String> = conn.get(self.keys.gateway_token(hash)).await?;
        json.as_deref().map(grant).transpose()
    }

    /// For a call to the standalone gateway, in one round trip: what the
    /// live token `hash` grants, and the call counted in flight for the
    /// run's worker until [`Self::gateway_call_finished`] or
    /// [`Self::gateway_call_dropped`]. `None` (nothing counted) when the
    /// token is not live.
    pub async fn open_gateway_call(&self, hash: &str) -> Result<Option<GatewayGrant>, QueueError> {
        let json: Option<String> = self.run_script(&GatewayCallArgs::Open { token_hash: hash }).await?;
        json.as_deref().map(grant).transpose()
    }

    /// A counted call that ends without being booked (refused before it
    /// was served, or its client went away).
    pub async fn gateway_call_dropped(&self, run: RunId) -> Result<(), QueueError> {
        let run = run.to_string();
        let _: i64 = self.run_script(&GatewayCallArgs::Done { run: &run, call: None }).await?;
        Ok(())
    }

    /// A standalone gateway hands each finished call of a run to the run's
    /// worker through a list, and takes it off the count of calls in
    /// flight (nothing once the run's end has taken its calls).
    pub async fn gateway_call_finished(&self, run: RunId, call: &str) -> Result<(), QueueError> {
        let run = run.to_string();
        let _: i64 = self.run_script(&GatewayCallArgs::Done { run: &run, call: Some(call) }).await?;
        Ok(())
    }

    /// The calls a standalone gateway reported for a run, waiting up to
    /// `wait` for those still in flight; removes them.
    pub async fn take_gateway_calls(&self, run: RunId, wait: Duration) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let (list, open) = (self.keys.gateway_calls(run), self.keys.gateway_calls_open(run));
        let until = std::time::Instant::now() + wait;
        loop {
            let in_flight: Option<i64> = conn.get(&open).await?;
            if in_flight.unwrap_or(0) <= 0 || std::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (calls, _, _): (Vec<String>, i64, i64) =
            redis::pipe().lrange(&list, 0, -1).del(&list).del(&open).query_async(&mut conn).await?;
        Ok(calls)
    }

    /// What the standalone gateway has handed over for `run` so far, from
    /// the `from`-th item on, left in place (the run's end takes them).
    pub async fn gateway_calls_from(&self, run: RunId, from: usize) -> Result<Vec<String>, QueueError> {
        let mut conn = self.conn.clone();
        let from = isize::try_from(from).unwrap_or(isize::MAX);
        Ok(conn.lrange(self.keys.gateway_calls(run), from, -1).await?)
    }

    /// Revokes the gateway token of `run`, if it has a live one; whether it had.
    pub async fn revoke_run_gateway_token(&self, run: RunId) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let index = self.keys.run_gateway_token(run);
        let hash: Option<String> = conn.get(&index).await?;
        let Some(hash) = hash else { return Ok(false) };
        let (removed, _): (i64, i64) =
            redis::pipe().del(self.keys.gateway_token(hash)).del(&index).query_async(&mut conn).await?;
        Ok(removed > 0)
    }

    pub async fn revoke_gateway_token(&self, run: RunId, hash: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(&[self.keys.gateway_token(hash), self.keys.run_gateway_token(run)]).await?;
        Ok(())
    }
}

fn grant(json: &str) -> Result<GatewayGrant, QueueError> {
    serde_json::from_str(json).map_err(|e| corrupt("gateway grant", e))
}
