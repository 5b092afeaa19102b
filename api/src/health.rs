//! Liveness, readiness and metrics.

use actix_web::{HttpResponse, get, web};
use objstore::ObjectStore;
use serde::Serialize;
use utoipa::ToSchema;

use crate::problem::Problem;
use crate::startup::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
}

/// The process is up.
#[utoipa::path(tag = "health", responses((status = 200, body = Health)), security(()))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// The process can serve: Redis answers and the artifact bucket is reachable.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, body = Health),
    ),
    security(())
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    if let Err(error) = state.queue.ping().await {
        tracing::warn!(%error, "readiness: redis");
        return Err(Problem::unavailable(format!("redis: {error}")));
    }
    if let Err(error) = state.store.check().await {
        tracing::warn!(%error, "readiness: object storage");
        return Err(Problem::unavailable(format!("object storage: {error}")));
    }
    Ok(HttpResponse::Ok().json(Health { status: "ready" }))
}

/// Prometheus metrics in the text exposition format: this process's
/// counters and histograms, and the queue as Redis holds it now (runs by
/// state and tenant, dispatchable runs, the oldest queued run's age, dead
/// letters). Unauthenticated like the health checks: expose it only to
/// the scraper.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, content_type = "text/plain", body = String, description = "Prometheus text format 0.0.4"),
    ),
    security(())
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    use platform::metrics::{global, labels};
    let metrics = global();
    let depth = state.queue.depth().await?;
    for (tenant, states) in &depth.tenants {
        for (name, n) in states {
            if name == "dispatchable" {
                metrics.queue_dispatchable.get_or_create(&labels([("tenant", tenant)])).set(*n);
            } else {
                metrics.queue_runs.get_or_create(&labels([("state", name), ("tenant", tenant)])).set(*n);
            }
        }
    }
    for ((band, tenant), states) in &depth.bands {
        for (name, n) in states {
            let labels = labels([("band", band), ("state", name), ("tenant", tenant)]);
            metrics.queue_band_runs.get_or_create(&labels).set(*n);
        }
    }
    let all = depth.totals.get("dispatchable").copied().unwrap_or(0);
    metrics.queue_dispatchable.get_or_create(&labels([("tenant", "*")])).set(all);
    metrics.queue_dead_letters.set(i64::try_from(depth.dead_letters).unwrap_or(i64::MAX));
    let oldest = state.queue.oldest_queued().await?;
    let age = oldest.map_or(0.0, |id| common::audit::now_ms().saturating_sub(id.created_ms()) as f64 / 1000.0);
    metrics.queue_oldest_age.set(age);
    Ok(HttpResponse::Ok().content_type(platform::metrics::CONTENT_TYPE).body(metrics.render()))
}
