//! Handlers for `/v1/runs`.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use common::{AgentProfile, ArtifactKind, RepoName, RunId, RunRecord, RunSpec, RunState};
use objstore::ObjectStore;
use store::Idempotency;

use super::dto::{CreateRun, ListQuery, RunAccepted, RunList, RunView};
use super::service;
use common::audit::{Actor, ObjectRef};

use crate::auth::{Caller, CallerKind, Scoped, need};
use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

/// The most runs one page of `GET /v1/runs` holds.
pub const MAX_PAGE: usize = 100;

/// Request an agent run. The run is stored in Redis before the answer, so an
/// accepted run is never lost. With an `Idempotency-Key`, a repeated request
/// from the same caller within the retention window returns the run the key
/// first created, with the same status and body.
#[utoipa::path(
    tag = "runs",
    request_body = CreateRun,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Up to 255 printable characters, such as `portal-request-7f3a9c`; scoped to the caller"),
    ),
    responses(
        (status = 202, body = RunAccepted, headers(("Location" = String, description = "URL of the run"))),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "A request with the same Idempotency-Key is still being accepted"),
        (status = 422, body = Problem, content_type = "application/problem+json", description = "The Idempotency-Key was used for a different request"),
    ),
    security(("bearer" = ["runs.create"]))
)]
#[post("/v1/runs")]
pub async fn create_run(
    caller: Scoped<need::RunsCreate>,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: crate::json::Json<CreateRun>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let repository: RepoName = body.repository.parse()?;
    if let Some(named) = &body.tenant {
        common::validate_tenant(named)?;
    }
    // Decided on this process's copy of tenants and policies: the enqueue
    // script refuses the run if either changed since, and it is decided
    // again on a fresh read; a refusal is only ever answered from one.
    let mut fresh = false;
    for _ in 0..3 {
        let snapshot = match fresh {
            false => state.tenancy_cache.current(&state.queue).await?,
            true => state.tenancy_cache.reload(&state.queue).await?,
        };
        let tenancy = crate::tenants::tenancy_with(&state, snapshot.tenants.clone());
        let owned = crate::tenants::owner_in(&tenancy, &repository);
        let owner = owned.as_ref().ok().map(|o| o.tenant().to_owned());
        // Scope first: only a caller who may act on the repository learns
        // which tenant owns it (from a refusal naming both).
        let checked = owned.and_then(|o| {
            let caller = caller.on_repository(o.tenant(), &repository.to_string())?;
            crate::tenants::check_named(&o, body.tenant.as_deref())?;
            Ok((caller, o))
        });
        let (scoped, owned) = match checked {
            Ok(found) => found,
            Err(_) if !fresh => {
                fresh = true;
                continue;
            }
            Err(refused) => return Err(refuse(caller.refused(), &state, &repository, owner.as_deref(), refused).await),
        };
        // Whom the run is attributed to is checked against the tenant too:
        // a refusal here is answered only from a fresh read as well.
        let (requested_by, via) = match requester(scoped, body.on_behalf_of.as_deref(), &owned, &state).await {
            Ok(found) => found,
            Err(_) if !fresh => {
                fresh = true;
                continue;
            }
            Err(refused) => return Err(refused),
        };
        let idempotency = idempotency(&req, scoped, &body, &state)?;
        let agent_profile = match &body.agent_profile {
            Some(name) => name.parse()?,
            None => AgentProfile::default(),
        };
        let spec = RunSpec {
            tenant: owned.tenant().to_owned(),
            priority: body.priority.unwrap_or_default(),
            repository: repository.clone(),
            base_ref: body.base_ref.clone(),
            task_title: body.task.title.clone(),
            task_body: body.task.body.clone(),
            agent_profile,
            via: via.clone(),
            requested_by: requested_by.clone(),
            policy: None,
            issue: body.issue,
            submitted_by: (scoped.principal != requested_by).then(|| scoped.principal.clone()),
            trace_parent: None,
            parent_run: None,
            follow_up: None,
        };
        let request = service::Request {
            actor: Actor { principal: requested_by, via, ..scoped.actor() },
            source_ip: scoped.source_ip.clone(),
            request_id: scoped.request_id.clone(),
            idempotency,
        };
        match service::submit(&state, &owned, spec, request, Some(&snapshot)).await {
            Err(service::SubmitError::Store(store::QueueError::TenancyChanged)) => fresh = true,
            submitted => return Ok(accepted(submitted?)),
        }
    }
    Err(store::QueueError::TenancyChanged.into())
}

/// Records in the audit log that `caller` was refused a run on
/// `repository` of tenant `owner` (its tenant, the tenant it named or its
/// scope), then answers with the refusal (or 503 when the event cannot be
/// written: the pending log is past its ship delay or Redis is down).
async fn refuse(
    caller: &Caller,
    state: &AppState,
    repository: &RepoName,
    owner: Option<&str>,
    why: Problem,
) -> Problem {
    let event = crate::tenants::refusal(caller.actor(), repository, owner, &why)
        .source_ip(caller.source_ip.clone())
        .request_id(caller.request_id.clone());
    match state.identity().append_audit(&event).await {
        Ok(()) => why,
        Err(error) => error.into(),
    }
}

/// `202 Accepted` with the run's URL: what every entry point answers.
pub fn accepted(run: service::Accepted) -> HttpResponse {
    let url = format!("/v1/runs/{}", run.id);
    HttpResponse::Accepted().insert_header((header::LOCATION, url.clone())).json(RunAccepted {
        id: run.id.to_string(),
        state: run.state,
        url,
    })
}

/// Approve a run its policy holds for approval (network access for the
/// sandbox, or every run): it then joins its queue where it was accepted.
/// Nobody approves a run they requested; service accounts never approve.
#[utoipa::path(
    tag = "runs",
    params(("id" = String, Path, description = "Run id", example = "01m8fd2cj1x31jpkk0spht2y3j")),
    responses(
        (status = 200, body = RunAccepted, description = "Approved; the run is queued", example = json!({"id": "01m8fd2cj1x31jpkk0spht2y3j", "state": "queued", "url": "/v1/runs/01m8fd2cj1x31jpkk0spht2y3j"})),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "No tools.approve here, or the caller requested the run"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The run is not awaiting approval"),
    ),
    security(("bearer" = ["tools.approve"]))
)]
#[post("/v1/runs/{id}/approve")]
pub async fn approve_run(
    caller: Scoped<need::ToolsApprove>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let (caller, record) = run_for(&caller, &state, &id).await?;
    let id = record.id;
    if requested_by_person(&state, &record, &caller.names).await? {
        return Err(Problem::new(ErrorCode::SelfApproval).detail(format!(
            "{} requested run {id} (or it was requested for them or through their service account); someone else must approve it",
            caller.principal
        )));
    }
    if record.state != RunState::AwaitingApproval {
        return Err(Problem::new(ErrorCode::NotAwaitingApproval).detail(format!("run {id} is {}", record.state)));
    }
    let mut object = ObjectRef::new("run", id.to_string());
    object.tenant = Some(record.spec.tenant.clone());
    object.repository = Some(record.spec.repository.to_string());
    let event = caller.event("run.approve", object).reason(format!("requested by {}", record.spec.requested_by));
    state.identity().append_audit(&event).await?;
    match state.queue.approve(id, &caller.principal).await? {
        Some(RunState::Queued) => {
            tracing::info!(run_id = %id, by = %caller.principal, "run approved");
            let url = format!("/v1/runs/{id}");
            Ok(HttpResponse::Ok().json(RunAccepted { id: id.to_string(), state: RunState::Queued, url }))
        }
        Some(other) => Err(Problem::new(ErrorCode::NotAwaitingApproval).detail(format!("run {id} is {other}"))),
        None => Err(Problem::not_found(format!("run {id} does not exist"))),
    }
}

/// The run `id`, if the caller's bindings cover it (404, 403 otherwise).
async fn run_for<'a, R: crate::auth::Requirement>(
    caller: &'a Scoped<R>,
    state: &AppState,
    id: &str,
) -> Result<(&'a Caller, RunRecord), Problem> {
    let id: RunId = id.parse()?;
    let record = state.queue.get(id).await?.ok_or_else(|| Problem::not_found(format!("run {id} does not exist")))?;
    let caller = caller.on(&record.spec.tenant, &record.spec.repository.to_string())?;
    Ok((caller, record))
}

/// The person a run is tied to, and the service acting for them. A service
/// account (or the break-glass token) must name a known, active person who
/// may request runs there; people cannot name someone else.
async fn requester(
    caller: &Caller,
    on_behalf_of: Option<&str>,
    owned: &crate::tenants::Owned,
    state: &AppState,
) -> Result<(String, Option<String>), Problem> {
    let repository = owned.repository().to_string();
    match (&caller.kind, on_behalf_of) {
        (CallerKind::ServiceAccount(account), Some(person)) => {
            let person = crate::people::attributable(state, person, owned.tenant(), &repository).await?;
            Ok((person, Some(common::identity::Subject::ServiceAccount(account.clone()).to_string())))
        }
        (CallerKind::ServiceAccount(account), None) => Err(Problem::bad_request(format!(
            "service account {account} must name the person it acts for in `on_behalf_of`"
        ))
        .field("on_behalf_of")),
        (CallerKind::Bootstrap, Some(person)) => {
            let person = crate::people::attributable(state, person, owned.tenant(), &repository).await?;
            Ok((person, Some(crate::auth::BOOTSTRAP_PRINCIPAL.to_owned())))
        }
        (_, None) => Ok((caller.principal.clone(), None)),
        (CallerKind::User, Some(_)) => Err(Problem::bad_request(
            "only service accounts act on behalf of someone; people request runs as themselves",
        )
        .field("on_behalf_of")),
    }
}

/// Whether the person behind `names` asked for the run: it is theirs, or
/// was requested through a credential of theirs (a service account they
/// own), under any of their names. Compares people, not tokens.
async fn requested_by_person(state: &AppState, record: &RunRecord, names: &[String]) -> Result<bool, Problem> {
    let store = state.identity();
    let mut theirs = vec![record.spec.requested_by.clone()];
    theirs.extend(record.spec.submitted_by.clone());
    // Runs accepted before `submitted_by` was recorded: the account's owner.
    let account = record.spec.via.as_deref().and_then(|v| v.strip_prefix("service-account:"));
    if let Some(account) = account
        && let Some(account) = store.service_account(account).await?
    {
        theirs.push(account.owner);
    }
    for name in theirs {
        let known = store.names_of(&name, state.issuer()).await?;
        if known.iter().any(|k| names.iter().any(|n| n.eq_ignore_ascii_case(k))) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// 1-255 printable characters, no spaces.
pub(crate) fn idempotency_key_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.chars().all(|c| c.is_ascii_graphic())
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
    let key = value.to_str().ok().filter(|k| idempotency_key_ok(k)).ok_or_else(|| {
        Problem::bad_request("`Idempotency-Key` must be 1-255 printable characters without spaces")
            .field("Idempotency-Key")
    })?;
    let canonical = serde_json::to_vec(body).map_err(|_| Problem::internal())?;
    let fingerprint = common::hash::sha256_hex(&canonical);
    Ok(Some(Idempotency {
        key: format!("{}:{key}", caller.holder()),
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
        (status = 409, body = Problem, content_type = "application/problem+json", description = "The run already finished"),
    ),
    security(("bearer" = ["runs.create"]))
)]
#[post("/v1/runs/{id}/cancel")]
pub async fn cancel_run(
    caller: Scoped<need::RunsCreate>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let (caller, record) = run_for(&caller, &state, &id).await?;
    let id = record.id;
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
        finished => {
            Err(Problem::new(ErrorCode::RunFinished)
                .detail(format!("run {id} is {finished}; there is nothing to cancel")))
        }
    }
}

/// One run: state, timestamps, attempt, stop reason and artifact keys.
#[utoipa::path(
    tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, body = RunView),
    ),
    security(("bearer" = ["runs.create"]), ("bearer" = ["logs.read"]), ("bearer" = ["tools.approve"]))
)]
#[get("/v1/runs/{id}")]
pub async fn get_run(
    caller: Scoped<need::RunsRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<RunView>, Problem> {
    let (_, record) = run_for(&caller, &state, &id).await?;
    Ok(web::Json(record.into()))
}

/// Runs, newest first, optionally in one state, with cursor pagination.
#[utoipa::path(
    tag = "runs",
    params(ListQuery),
    responses(
        (status = 200, body = RunList),
    ),
    security(("bearer" = ["runs.create"]), ("bearer" = ["logs.read"]), ("bearer" = ["tools.approve"]))
)]
#[get("/v1/runs")]
pub async fn list_runs(
    caller: Scoped<need::RunsRead>,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<web::Json<RunList>, Problem> {
    let query = query.into_inner();
    let filter: Option<RunState> = query.state.as_deref().map(str::parse).transpose()?;
    let not_a_cursor = || common::ValidationError::new("cursor", "is not a cursor from a previous page");
    let mut position: Option<RunId> =
        query.cursor.as_deref().map(|c| state.cursors.open(c).ok_or_else(not_a_cursor)).transpose()?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Problem::bad_request("`limit` must be between 1 and 100").field("limit"));
    }
    // Read on past runs the caller may not see, so a page is full when it
    // can be; the cursor is sealed, so it reveals nothing of those runs.
    let mut runs = Vec::new();
    for _ in 0..SCAN_PAGES {
        let page = state.queue.list(filter, position, MAX_PAGE).await?;
        let mut read_all = true;
        for run in page.runs {
            position = Some(run.id);
            if caller.allows(&run.spec.tenant, &run.spec.repository.to_string()) {
                runs.push(RunView::from(run));
                if runs.len() == limit {
                    read_all = false;
                    break;
                }
            }
        }
        if page.next_cursor.is_none() && read_all {
            position = None;
            break;
        }
        if runs.len() == limit {
            break;
        }
        position = page.next_cursor.or(position);
    }
    Ok(web::Json(RunList { runs, next_cursor: position.map(|p| state.cursors.seal(p)) }))
}

/// How many store pages one `GET /v1/runs` reads at most looking for runs
/// the caller may see; past that it answers a shorter page and a cursor.
const SCAN_PAGES: usize = 10;

/// The run's output: the stored log once the run finished, the live tail
/// while it runs. With `Accept: text/event-stream`, Server-Sent Events: a
/// `log` event per chunk as the worker writes it (its `id` is where
/// `Last-Event-ID` resumes, without loss or repeat), then an `end` event
/// with the run's state and stop reason.
#[utoipa::path(
    tag = "runs",
    params(
        ("id" = String, Path, description = "Run id"),
        ("Last-Event-ID" = Option<String>, Header, description = "With an event stream: resume after this event (`<ms>-<seq>`)"),
    ),
    responses(
        (status = 200, description = "The log as text; as an event stream, `log` events (`id`, `data`: the chunk's lines), then one `end` event (`data`: `{\"state\", \"stop_reason\"}`)", content(
            (String = "text/plain"),
            (String = "text/event-stream"),
        )),
    ),
    security(("bearer" = ["logs.read"]))
)]
#[get("/v1/runs/{id}/logs")]
pub async fn run_logs(
    req: actix_web::HttpRequest,
    caller: Scoped<need::LogsRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let (_, record) = run_for(&caller, &state, &id).await?;
    let id = record.id;
    if super::live::wanted(&req) {
        let after = super::live::resume_from(&req)?;
        return Ok(super::live::respond(state, id, after));
    }
    let key = id.artifact_key(ArtifactKind::Logs);
    let body = if record.artifacts.contains(&key) {
        state.store.get(&key).await?.map(|b| b.to_vec()).unwrap_or_default()
    } else {
        state.queue.log_tail(id).await?
    };
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body(body))
}
