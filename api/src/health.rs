//! Liveness and readiness.

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
