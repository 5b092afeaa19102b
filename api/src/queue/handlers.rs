//! Depth, straight from the counters every transition script maintains.

use std::collections::BTreeMap;

use actix_web::{get, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Authorized, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// Runs by state. `dispatchable` counts queued runs whose repository and
/// tenant are below their caps (a claim could take them now).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[schema(example = json!({"queued": 120, "delayed": 3, "running": 40, "cancelling": 1, "dispatchable": 95}))]
pub struct Counts {
    pub queued: i64,
    pub delayed: i64,
    pub running: i64,
    pub cancelling: i64,
    /// Absent per repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatchable: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TenantDepth {
    pub tenant: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct RepoDepth {
    pub tenant: String,
    pub repository: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct QueueView {
    pub totals: Counts,
    /// Tenants with any queued, delayed, running or cancelling run.
    pub tenants: Vec<TenantDepth>,
    /// Repositories with any queued, delayed, running or cancelling run.
    pub repositories: Vec<RepoDepth>,
    /// Runs that failed for infrastructure reasons after their last attempt
    /// and are kept in the dead-letter set.
    pub dead_letters: u64,
}

fn counts(states: &BTreeMap<String, i64>, dispatchable: Option<i64>) -> Counts {
    let get = |s: &str| states.get(s).copied().unwrap_or(0);
    Counts {
        queued: get("queued"),
        delayed: get("delayed"),
        running: get("running"),
        cancelling: get("cancelling"),
        dispatchable,
    }
}

fn busy(c: &Counts) -> bool {
    c.queued != 0 || c.delayed != 0 || c.running != 0 || c.cancelling != 0
}

/// Queue depth: totals, per tenant and per repository.
#[utoipa::path(
    tag = "queue",
    responses(
        (status = 200, body = QueueView, example = json!({
            "totals": {"queued": 120, "delayed": 3, "running": 40, "cancelling": 1, "dispatchable": 95},
            "tenants": [{"tenant": "payments", "queued": 100, "delayed": 3, "running": 30, "cancelling": 1, "dispatchable": 75}],
            "repositories": [{"tenant": "payments", "repository": "acme/ledger", "queued": 25, "delayed": 0, "running": 2, "cancelling": 0}],
            "dead_letters": 4
        })),
    ),
    security(("bearer" = ["limits.manage"]))
)]
#[get("/v1/queue")]
pub async fn get_queue(
    _caller: Authorized<need::LimitsManage>,
    state: web::Data<AppState>,
) -> Result<web::Json<QueueView>, Problem> {
    let depth = state.queue.depth().await?;
    let totals = counts(&depth.totals, Some(depth.totals.get("dispatchable").copied().unwrap_or(0)));
    let tenants = depth
        .tenants
        .iter()
        .map(|(tenant, states)| TenantDepth {
            tenant: tenant.clone(),
            counts: counts(states, Some(states.get("dispatchable").copied().unwrap_or(0))),
        })
        .filter(|t| busy(&t.counts))
        .collect();
    let repositories = depth
        .repositories
        .iter()
        .map(|((tenant, repository), states)| RepoDepth {
            tenant: tenant.clone(),
            repository: repository.clone(),
            counts: counts(states, None),
        })
        .filter(|r| busy(&r.counts))
        .collect();
    Ok(web::Json(QueueView { totals, tenants, repositories, dead_letters: depth.dead_letters }))
}
