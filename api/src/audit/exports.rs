//! `/v1/audit/exports`: compliance export jobs. A request is audited before
//! the job starts (refused with 503 when it cannot be); the job runs in this
//! API process and writes a bundle that verifies on its own
//! (`audit_trail::export`); its completion is audited with the manifest's
//! SHA-256.

use actix_web::http::header;
use actix_web::{HttpResponse, get, post, web};
use audit_trail::VerifyReport;
use audit_trail::export::{ExportRequest, ExportState, ExportStatus, export, verify_export};
use common::audit::{ObjectRef, now_ms};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::audit::handlers::trusted_keys;
use crate::auth::{Authorized, Caller, need};
use crate::contract::instant;
use crate::problem::Problem;
use crate::startup::AppState;

/// What to export: a time range, a run, or a run within a range.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"since_ms": 1796000000000u64, "until_ms": 1796086400000u64}))]
pub struct NewExport {
    /// From this instant (ms since the epoch); default the epoch, or a
    /// minute before the run was requested when `run` is given.
    pub since_ms: Option<u64>,
    /// Until this instant, exclusive; default now.
    pub until_ms: Option<u64>,
    /// Only the events about this run.
    pub run: Option<String>,
}

/// Start a compliance export: the audit events of a time range or of one
/// run, as gzip JSON Lines in GitHub's audit-log streaming layout
/// (`events/YYYY/MM/HH/MM/<uuid>.json.gz`), with copies of the signed
/// digests and segments that prove them and a signed manifest, under
/// `audit.export_prefix`. Poll `GET /v1/audit/exports/{id}`.
#[utoipa::path(
    tag = "audit",
    request_body = NewExport,
    responses(
        (status = 202, body = ExportStatus),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[post("/v1/audit/exports")]
pub async fn create_export(
    caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
    body: crate::json::Json<NewExport>,
) -> Result<HttpResponse, Problem> {
    let body = body.into_inner();
    let run = body
        .run
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: common::ValidationError| Problem::bad_request(e.to_string()).field("run"))?;
    // A run's events start with its request: its id says when that was.
    let (since, until) = (instant("since_ms", body.since_ms)?, instant("until_ms", body.until_ms)?);
    let since = since.unwrap_or_else(|| run.map_or(0, |r: common::RunId| r.created_ms().saturating_sub(60_000)));
    let request = ExportRequest { since_ms: since, until_ms: until.unwrap_or_else(now_ms), run };
    if request.since_ms >= request.until_ms {
        return Err(Problem::bad_request("`since_ms` must be before `until_ms`").field("since_ms"));
    }
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let status = ExportStatus {
        id: id.clone(),
        state: ExportState::Running,
        requested_by: caller.principal.clone(),
        request,
        bundle: format!("{}/{id}/", state.config.audit.export_prefix.trim_end_matches('/')),
        created_at_ms: now_ms(),
        heartbeat_ms: None,
        finished_at_ms: None,
        events: None,
        pending_events: None,
        manifest_sha256: None,
        error: None,
    };
    let identity = state.identity();
    let event = caller.event("audit.export", ObjectRef::new("export", &id)).change(None::<&()>, Some(&status.request));
    identity.append_audit(&event).await?;
    identity.save_export(&status).await?;
    tokio::spawn(run_export(state.clone(), (*caller).clone(), status.clone()));
    Ok(HttpResponse::Accepted().insert_header((header::LOCATION, format!("/v1/audit/exports/{id}"))).json(status))
}

/// How often a running export says it is alive; one silent for
/// [`ABANDONED_MS`] died with its API process.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);
const ABANDONED_MS: u64 = 60_000;

async fn run_export(state: web::Data<AppState>, caller: Caller, mut status: ExportStatus) {
    let heartbeat = {
        let (identity, mut alive) = (state.identity(), status.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                alive.heartbeat_ms = Some(now_ms());
                if let Err(error) = identity.save_export(&alive).await {
                    tracing::warn!(%error, export = %alive.id, "export heartbeat");
                }
            }
        })
    };
    let written = write_bundle(&state, &status).await;
    heartbeat.abort();
    let _ = heartbeat.await;
    status.finished_at_ms = Some(now_ms());
    let identity = state.identity();
    match written {
        Ok((manifest, sha)) => {
            status.state = ExportState::Succeeded;
            status.events = Some(manifest.body.events);
            status.pending_events = Some(manifest.body.pending_events);
            status.manifest_sha256 = Some(sha.clone());
            let event = caller
                .event("audit.export.complete", ObjectRef::new("export", &status.id))
                .after_the_fact()
                .reason(format!("manifest sha256 {sha}"))
                .change(None::<&()>, Some(&status));
            if let Err(error) = identity.append_audit(&event).await {
                tracing::error!(%error, export = %status.id, "the export's completion could not be audited");
            }
        }
        Err(error) => {
            tracing::error!(%error, export = %status.id, "compliance export failed");
            status.state = ExportState::Failed;
            status.error = Some(error.to_string());
        }
    }
    if let Err(error) = identity.save_export(&status).await {
        tracing::error!(%error, export = %status.id, "recording the export's outcome failed");
    }
}

async fn write_bundle(
    state: &AppState,
    status: &ExportStatus,
) -> Result<(audit_trail::export::SignedManifest, String), audit_trail::AuditError> {
    // Run requests accepted before the export are shipped from Redis
    // first, then this process's own events are digested, so they can be
    // proven.
    let ship_delay = std::time::Duration::from_secs(state.config.audit.max_ship_delay_seconds);
    if let Err(error) = crate::audit::pending::wait_shipped(&state.queue, ship_delay).await {
        tracing::warn!(%error, export = %status.id, "events pending in Redis may be missing from the export");
    }
    state.audit.flush().await?;
    let config = &state.config.audit;
    export(
        &state.store,
        &state.audit,
        &config.prefix,
        &config.export_prefix,
        &status.id,
        &status.requested_by,
        &status.request,
        state.object_lock.clone(),
    )
    .await
}

/// The job's status; a running job whose heartbeat stopped is reported
/// failed (its API process died; start another).
async fn status_of(state: &AppState, id: &str) -> Result<ExportStatus, Problem> {
    let mut status = state.identity().export(id).await?.ok_or_else(|| Problem::not_found(format!("no export {id}")))?;
    let alive_at = status.heartbeat_ms.unwrap_or(status.created_at_ms);
    if status.state == ExportState::Running && now_ms().saturating_sub(alive_at) > ABANDONED_MS {
        status.state = ExportState::Failed;
        status.error = Some("abandoned: the API process running it stopped; start a new export".to_owned());
    }
    Ok(status)
}

/// The job, if it succeeded: a bundle to read (409 otherwise).
async fn succeeded(state: &AppState, id: &str) -> Result<ExportStatus, Problem> {
    let status = status_of(state, id).await?;
    if status.state != ExportState::Succeeded {
        return Err(Problem::new(crate::problem::ErrorCode::ExportNotReady)
            .detail(format!("the export is {:?}", status.state).to_lowercase()));
    }
    Ok(status)
}

/// An export job: running, succeeded (with its counts and the manifest's
/// SHA-256) or failed (with why).
#[utoipa::path(
    tag = "audit",
    params(("id" = String, Path, description = "The export's id")),
    responses(
        (status = 200, body = ExportStatus),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/audit/exports/{id}")]
pub async fn get_export(
    _caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<ExportStatus>, Problem> {
    Ok(web::Json(status_of(&state, &id).await?))
}

/// Verify an export bundle from its own contents only: the manifest's
/// signature, every file against the manifest, the copied digests and
/// segments, and each exported event against the signed segments.
#[utoipa::path(
    tag = "audit",
    params(("id" = String, Path, description = "The export's id")),
    responses(
        (status = 200, body = VerifyReport),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/audit/exports/{id}/verify")]
pub async fn verify_bundle(
    _caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<VerifyReport>, Problem> {
    let status = succeeded(&state, &id).await?;
    Ok(web::Json(verify_export(&state.store, &status.bundle, &trusted_keys(&state)?).await?))
}

/// Download an export bundle as one tar archive: every file under the
/// bundle's prefix, in a folder named after the export, so that
/// `paddock audit verify-export <folder>` (or any copy of the bucket's
/// files) checks it offline. Streamed a file at a time.
#[utoipa::path(
    tag = "audit",
    params(("id" = String, Path, description = "The export's id")),
    responses(
        (status = 200, content_type = "application/x-tar", description = "The bundle: `<id>/manifest.json`, `<id>/events/...`, `<id>/trail/...`"),
        (status = 409, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/audit/exports/{id}/bundle")]
pub async fn download_bundle(
    _caller: Authorized<need::AuditRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    use objstore::ObjectStore;
    let status = succeeded(&state, &id).await?;
    let files = state.store.list(&status.bundle).await?;
    let folder = status.id.clone();
    let archive = Archive {
        state,
        bundle: status.bundle,
        folder,
        files: files.into_iter(),
        tar: Some(tar::Builder::new(Vec::new())),
    };
    let body =
        futures::stream::unfold(
            archive,
            |mut archive| async move { archive.next().await.map(|chunk| (chunk, archive)) },
        );
    Ok(HttpResponse::Ok()
        .content_type("application/x-tar")
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"audit-export-{}.tar\"", *id)))
        .streaming(body))
}

/// A bundle on its way out as tar: one file's entry per step, then the
/// archive's end.
struct Archive {
    state: web::Data<AppState>,
    bundle: String,
    folder: String,
    files: std::vec::IntoIter<(String, u64)>,
    tar: Option<tar::Builder<Vec<u8>>>,
}

impl Archive {
    async fn next(&mut self) -> Option<Result<web::Bytes, actix_web::Error>> {
        use objstore::ObjectStore;
        let tar = self.tar.as_mut()?;
        let Some((key, _)) = self.files.next() else {
            let end = self.tar.take()?.into_inner().map_err(actix_web::error::ErrorInternalServerError);
            return Some(end.map(web::Bytes::from));
        };
        let name = format!("{}/{}", self.folder, key.strip_prefix(&self.bundle).unwrap_or(&key));
        let entry = match self.state.store.get(&key).await {
            Ok(Some(data)) => {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_mtime(0);
                tar.append_data(&mut header, &name, data.as_ref())
            }
            // Gone since the listing (a sweep): the manifest check will say so.
            Ok(None) => Ok(()),
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        if let Err(error) = entry {
            // A broken archive, never a truncated one that looks whole.
            tracing::error!(export = %self.folder, %key, %error, "the export bundle could not be streamed");
            self.tar = None;
            return Some(Err(actix_web::error::ErrorInternalServerError(error)));
        }
        Some(Ok(web::Bytes::from(std::mem::take(tar.get_mut()))))
    }
}
