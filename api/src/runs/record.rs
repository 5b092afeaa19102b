//! `GET /v1/runs/{id}/record`: the facts an auditor asks about one run, in
//! one document: who requested it (and through what), which issue and
//! repository, which models and providers, which credentials were granted,
//! which commands ran, which files changed, where the pull request was
//! opened, and why the run stopped; with the sandbox it ran in, its egress
//! decisions and its evidence in object storage. Built from the run record
//! while Redis keeps it, and from the run's `summary.json` afterwards.

use actix_web::{get, web};
use common::{ArtifactKind, RunId};
use objstore::ObjectStore;
use serde_json::{Value, json};
use store::identity::AuditFilter;

use crate::auth::{Scoped, need};
use crate::problem::Problem;
use crate::startup::AppState;

/// The eight facts of a run, its sandbox and its evidence.
#[utoipa::path(
    tag = "audit",
    params(("id" = String, Path, description = "Run id", example = "01m8fd2cj1x31jpkk0spht2y3j")),
    responses(
        (status = 200, content_type = "application/json", body = Object, example = json!({
            "run": "01m8fd2cj1x31jpkk0spht2y3j", "state": "succeeded",
            "requested": {"by": "alice@example.com", "via": "github:alice", "approved_by": null,
                "request_event": {"id": "01m8fd2c…", "source_ip": "10.0.4.17", "method": "github-webhook"}},
            "issue_and_repository": {"tenant": "payments", "repository": "acme/ledger", "issue": 42, "base_ref": "main", "base_commit": "7ecef10…"},
            "models": [{"provider": "azure-openai-prod", "model": "gpt-4.1", "calls": 12}],
            "credentials": [{"kind": "github_installation_token", "permissions": {"contents": "write"}, "fingerprint": "PFzT…", "revoked_at_ms": 1795832834804_u64}],
            "commands": ["paddock-agent", "python3 -m pytest -q"],
            "files_changed": ["README.md"],
            "pull_request": {"branch": "paddock/42-ht2y3j", "pull_request": {"number": 7, "url": "https://github.com/acme/ledger/pull/7", "draft": true}},
            "stop": {"reason": {"kind": "completed"}, "cancelled_by": null},
        })),
    ),
    security(("bearer" = ["audit.read"]))
)]
#[get("/v1/runs/{id}/record")]
pub async fn run_record(
    caller: Scoped<need::AuditRead>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<web::Json<Value>, Problem> {
    let id: RunId = id.parse()?;
    let summary_key = id.artifact_key(ArtifactKind::Summary);
    let summary: Option<Value> =
        state.store.get(&summary_key).await?.and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let summary = summary.unwrap_or(Value::Null);
    let record = state.queue.get(id).await?;
    let (tenant, repository) = match (&record, &summary) {
        (Some(r), _) => (r.spec.tenant.clone(), r.spec.repository.to_string()),
        (None, Value::Object(_)) => (
            summary["tenant"].as_str().unwrap_or_default().to_owned(),
            summary["repository"].as_str().unwrap_or_default().to_owned(),
        ),
        (None, _) => return Err(Problem::not_found(format!("run {id} does not exist"))),
    };
    caller.on(&tenant, &repository)?;
    let filter = AuditFilter { object_id: Some(id.to_string()), ..Default::default() };
    let events = state.identity().audit_events(&filter, 100).await?;
    let request = events.iter().find(|e| e.action == "run.request");
    let request_event =
        request.map(|e| json!({"id": e.id, "time_ms": e.time_ms, "source_ip": e.source_ip, "method": e.actor.method}));
    let facts = record.as_ref().and_then(|r| r.facts.clone());
    let from_facts = |field: &str| {
        facts.as_ref().and_then(|f| serde_json::to_value(f).ok()).map(|f| f[field].clone()).unwrap_or(Value::Null)
    };
    let either = |field: &str| match from_facts(field) {
        Value::Null => summary[field].clone(),
        value => value,
    };
    let models = match from_facts("models") {
        Value::Null => summary["model_calls"].clone(),
        value => value,
    };
    let document = match &record {
        Some(r) => json!({
            "run": id.to_string(),
            "state": r.state,
            "requested": {"by": r.spec.requested_by, "via": r.spec.via, "approved_by": r.approved_by,
                "requested_at_ms": r.created_at_ms, "request_event": request_event},
            "issue_and_repository": {"tenant": tenant, "repository": repository, "issue": r.spec.issue,
                "base_ref": r.spec.base_ref, "base_commit": either("base_commit")},
            "models": models,
            "credentials": either("credentials"),
            "commands": either("commands"),
            "files_changed": either("files_changed"),
            "pull_request": {"branch": either("branch"), "pull_request": either("pull_request")},
            "stop": {"reason": r.stop_reason, "cancelled_by": r.cancelled_by, "finished_at_ms": r.finished_at_ms},
            "sandbox": {"policy": r.spec.policy, "egress": summary["egress"]},
            "evidence": {"artifacts": r.artifacts, "audit_events": events.len()},
        }),
        None => json!({
            "run": id.to_string(),
            "state": null,
            "requested": {"by": summary["requested_by"], "via": summary["via"], "request_event": request_event},
            "issue_and_repository": {"tenant": tenant, "repository": repository, "issue": summary["issue"],
                "base_ref": summary["base_ref"], "base_commit": summary["base_commit"]},
            "models": summary["model_calls"],
            "credentials": summary["credentials"],
            "commands": summary["commands"],
            "files_changed": summary["files_changed"],
            "pull_request": {"branch": summary["branch"], "pull_request": summary["pull_request"]},
            "stop": {"reason": summary["stop_reason"]},
            "sandbox": {"policy": summary["policy"], "egress": summary["egress"]},
            "evidence": {"artifacts": summary["artifacts"], "audit_events": events.len()},
        }),
    };
    Ok(web::Json(document))
}
