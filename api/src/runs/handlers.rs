//! Handlers for `/v1/runs`.

use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use common::{AgentProfile, ArtifactKind, RepoName, RunId, RunSpec, RunState};
use sha2::{Digest, Sha256};
use worker::artifacts::ObjectStore;
use worker::queue::{Enqueued, Idempotency};

use super::dto::{CreateRun, ListQuery, RunAccepted, RunList, RunView};
use crate::auth::{Authorized, Caller, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// Request an agent run. The run is stored in Redis before the answer, so an
/// accepted run is never lost. With an `Idempotency-Key`, a repeated request
/// from the same caller within the retention window returns the run the key
/// first created, with the same status and body.
#[utoipa::path(
    tag = "runs",
    request_body = CreateRun,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 255 printable characters; scoped to the caller", example = "portal-request-7f3a9c"),
    ),
    responses(
        (status = 202, body = RunAccepted, headers(("Location" = String, description = "URL of the run"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "The Idempotency-Key was used for a different request"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/runs")]
pub async fn create_run(
    caller: Authorized<need::RunsCreate>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CreateRun>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let idempotency = idempotency(&req, &caller, &body, &state)?;
    let repository: RepoName = body.repository.parse()?;
    let agent_profile = match body.agent_profile {
        Some(name) => name.parse()?,
        None => AgentProfile::default(),
    };
    let spec = RunSpec {
        tenant: body.tenant.unwrap_or_else(|| state.config.api.default_tenant.clone()),
        priority: body.priority.unwrap_or_default(),
        repository,
        base_ref: body.base_ref,
        task_title: body.task.title,
        task_body: body.task.body,
        agent_profile,
        requested_by: caller.principal.clone(),
        policy: None,
        issue: body.issue,
    };
    spec.validate()?;
    let policy =
        state.queue.effective_policy(state.config.default_policy(), &spec.tenant, &spec.repository.to_string()).await?;
    let spec = RunSpec { policy: Some(policy), ..spec };
    let id = RunId::new();
    let id = match state.queue.enqueue(id, &spec, state.config.api.max_attempts, idempotency.as_ref()).await? {
        Enqueued::Created { .. } => {
            tracing::info!(run_id = %id, repository = %spec.repository, tenant = %spec.tenant, requested_by = %spec.requested_by, "run accepted");
            id
        }
        Enqueued::Existing { id, same_request: true } => id,
        Enqueued::Existing { id, same_request: false } => {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused for a different request",
            )
            .detail(format!("this key already created run {id} from a different request body"))
            .field("Idempotency-Key"));
        }
    };
    let url = format!("/v1/runs/{id}");
    Ok(HttpResponse::Accepted().insert_header((header::LOCATION, url.clone())).json(RunAccepted {
        id: id.to_string(),
        state: RunState::Queued,
        url,
    }))
}

fn idempotency(
    req: &HttpRequest,
    caller: &Caller,
    body: &CreateRun,
    state: &AppState,
) -> Result<Option<Idempotency>, Problem> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.chars().all(|c| c.is_ascii_graphic()))
        .ok_or_else(|| {
            Problem::bad_request("`Idempotency-Key` must be 1-255 printable characters without spaces")
                .field("Idempotency-Key")
        })?;
    let canonical = serde_json::to_vec(body).map_err(|_| Problem::internal())?;
    let fingerprint: String = Sha256::digest(&canonical).iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(Idempotency {
        key: format!("{}:{key}", caller.principal),
        fingerprint,
        ttl: Duration::from_secs(state.config.api.idempotency_ttl_seconds),
    }))
}

/// Cancel a run. A queued or delayed run is cancelled at once (200); a
/// running one is stopped by its worker within seconds (202, `cancelling`).
#[utoipa::path(
    tag = "runs",
    params(("id" = String, Path, description = "Run id", example = "01m8fd2cj1x31jpkk0spht2y3j")),
    responses(
        (status = 200, body = RunAccepted, description = "Cancelled", example = json!({"id": "01m8fd2cj1x31jpkk0spht2y3j", "state": "cancelled", "url": "/v1/runs/01m8fd2cj1x31jpkk0spht2y3j"})),
        (status = 202, body = RunAccepted, description = "The worker is stopping the run", example = json!({"id": "01m8fd2cj1x31jpkk0spht2y3j", "state": "cancelling", "url": "/v1/runs/01m8fd2cj1x31jpkk0spht2y3j"})),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The run already finished"),
    ),
    security(("bearer" = []))
)]
#[post("/v1/runs/{id}/cancel")]
pub async fn cancel_run(
    caller: Authorized<need::RunsCreate>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id: RunId = id.parse()?;
    let (after, before) = state
        .queue
        .cancel(id, &caller.principal)
        .await?
        .ok_or_else(|| Problem::not_found(format!("run {id} does not exist")))?;
    let url = format!("/v1/runs/{id}");
    let body = RunAccepted { id: id.to_string(), state: after, url };
    match after {
        RunState::Cancelled if before != RunState::Cancelled => {
            tracing::info!(run_id = %id, by = %caller.principal, "run cancelled");
            Ok(HttpResponse::Ok().json(body))
        }
        RunState::Cancelling => {
            tracing::info!(run_id = %id, by = %caller.principal, "run cancelling");
            Ok(HttpResponse::Accepted().json(body))
        }
        finished => Err(Problem::new(StatusCode::CONFLICT, "run-finished", "The run already finished")
            .detail(format!("run {id} is {finished}; there is nothing to cancel"))),
    }
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
    _caller: Authorized<need::RunsRead>,
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
    _caller: Authorized<need::RunsRead>,
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
    _caller: Authorized<need::LogsRead>,
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
