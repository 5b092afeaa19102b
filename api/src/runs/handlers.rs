//! Handlers for `/v1/runs`.

use actix_web::http::header;
use actix_web::{HttpResponse, get, post, web};
use common::{AgentProfile, ArtifactKind, RepoName, RunId, RunSpec, RunState};
use worker::artifacts::ObjectStore;

use super::dto::{CreateRun, ListQuery, RunAccepted, RunList, RunView};
use crate::auth::Admin;
use crate::problem::Problem;
use crate::startup::AppState;

/// Request an agent run. The run is stored in Redis before the answer, so an
/// accepted run is never lost.
#[utoipa::path(
    tag = "runs",
    request_body = CreateRun,
    responses(
        (status = 202, body = RunAccepted, headers(("Location" = String, description = "URL of the new run"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/runs")]
pub async fn create_run(
    caller: Admin,
    state: web::Data<AppState>,
    body: web::Json<CreateRun>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let repository: RepoName = body.repository.parse()?;
    let agent_profile = match body.agent_profile {
        Some(name) => name.parse()?,
        None => AgentProfile::default(),
    };
    let spec = RunSpec {
        tenant: body.tenant.unwrap_or_else(|| state.config.api.default_tenant.clone()),
        repository,
        base_ref: body.base_ref,
        task_title: body.task.title,
        task_body: body.task.body,
        agent_profile,
        requested_by: caller.principal,
    };
    spec.validate()?;
    let id = RunId::new();
    state.queue.enqueue(id, &spec, state.config.api.max_attempts).await?;
    tracing::info!(run_id = %id, repository = %spec.repository, tenant = %spec.tenant, requested_by = %spec.requested_by, "run accepted");
    let url = format!("/v1/runs/{id}");
    Ok(HttpResponse::Accepted().insert_header((header::LOCATION, url.clone())).json(RunAccepted {
        id: id.to_string(),
        state: RunState::Queued,
        url,
    }))
}

/// One run: state, timestamps, attempt, stop reason and artifact keys.
#[utoipa::path(
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, body = RunView),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/runs/{id}")]
pub async fn get_run(
    _caller: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<RunView>, Problem> {
    let id: RunId = id.parse()?;
    let record = state.queue.get(id).await?.ok_or_else(|| Problem::not_found(format!("run {id} does not exist")))?;
    Ok(web::Json(record.into()))
}

/// Runs, newest first, optionally in one state, with cursor pagination.
#[utoipa::path(
    tag = "runs",
    params(ListQuery),
    responses(
        (status = 200, body = RunList),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/runs")]
pub async fn list_runs(
    _caller: Admin,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<RunList>, Problem> {
    let query = query.into_inner();
    let filter: Option<RunState> = query.state.as_deref().map(str::parse).transpose()?;
    let cursor: Option<RunId> = query
        .cursor
        .as_deref()
        .map(|c| c.parse().map_err(|_| common::ValidationError::new("cursor", "is not a cursor from a previous page")))
        .transpose()?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Problem::bad_request("`limit` must be between 1 and 100").field("limit"));
    }
    let page = state.queue.list(filter, cursor, limit).await?;
    Ok(web::Json(RunList {
        runs: page.runs.into_iter().map(RunView::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

/// The run's output: the stored log once the run finished, the live tail
/// while it runs.
#[utoipa::path(
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[get("/v1/runs/{id}/logs")]
pub async fn run_logs(
    _caller: Admin,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id: RunId = id.parse()?;
    let record = state.queue.get(id).await?.ok_or_else(|| Problem::not_found(format!("run {id} does not exist")))?;
    let key = id.artifact_key(ArtifactKind::Logs);
    let body = if record.artifacts.contains(&key) {
        state.store.get(&key).await?.map(|b| b.to_vec()).unwrap_or_default()
    } else {
        state.queue.log_tail(id).await?
    };
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(body))
}
