//! Accepting a run, whoever asks for it: `POST /v1/runs` and the GitHub
//! webhook both hand a [`RunSpec`] to [`submit`], which knows no HTTP.

use common::audit::{Actor, AuditEvent, ObjectRef};
use common::{RunId, RunSpec, RunState, ValidationError};
use store::{Enqueued, Idempotency, KeyHolder, QueueError, TenancySnapshot};

use platform::metrics;

use crate::startup::AppState;
use crate::tenants::Owned;

/// Who asked, and how to tell a repeated request apart.
pub struct Request {
    pub actor: Actor,
    pub source_ip: Option<String>,
    pub request_id: Option<String>,
    pub idempotency: Option<Idempotency>,
}

/// A run the queue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub id: RunId,
    /// `awaiting_approval` when its policy holds it, else `queued`.
    pub state: RunState,
    /// Whether this request created it (not a repeat of an earlier one).
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The idempotency key already created `existing` from another request.
    #[error("this key already created run {existing} from a different request body")]
    KeyReused { existing: RunId },
    /// Another request with this key is being accepted right now.
    #[error("a request with this key (run {holder}) is still being accepted; retry in a moment")]
    KeyInUse { holder: RunId },
    /// Redis, or the audit trail behind it: nothing was accepted.
    #[error(transparent)]
    Store(#[from] QueueError),
}

/// Validates `spec`, gives it the tenant owning its repository (whatever
/// it held), fixes its sandbox policy (defaults < tenant < repository, as
/// in force now), records the request in the audit trail (fail-closed:
/// without that record nothing is accepted) and enqueues it.
///
/// With `decided_on` (the tenants and policies `owned` was decided on),
/// the policy comes from it and the enqueue refuses the run with
/// `TenancyChanged` if either changed since; without, the policy is read
/// now.
pub async fn submit(
    state: &AppState,
    owned: &Owned,
    spec: RunSpec,
    request: Request,
    decided_on: Option<&TenancySnapshot>,
) -> Result<Accepted, SubmitError> {
    let spec = owned.apply(spec);
    spec.validate()?;
    let (defaults, repository) = (state.config.default_policy(), spec.repository.to_string());
    let policy = match decided_on {
        Some(snapshot) => snapshot.effective_policy(defaults, &spec.tenant, &repository),
        None => state.queue.effective_policy(defaults, &spec.tenant, &repository).await?,
    };
    let tenancy = decided_on.map(|s| s.version);
    let held = policy.needs_approval();
    let trace_parent = platform::telemetry::traceparent(&tracing::Span::current());
    let spec = RunSpec { policy: Some(policy), trace_parent, ..spec };
    let id = RunId::new();
    let source = if request.actor.method == "github-webhook" { "webhook" } else { "api" };
    let state_now = if held { RunState::AwaitingApproval } else { RunState::Queued };
    // A repeated request is answered before anything is written about it:
    // no audit event names a run that is never created.
    if let Some(idempotency) = &request.idempotency
        && let Some(holder) = state.queue.reserve_idempotency(id, idempotency).await?
    {
        return repeated(holder, state_now);
    }
    // The run enters the queue (its audit event, then enqueue.lua): a span
    // of its own in the run's trace.
    let enqueue = tracing::info_span!("enqueue", otel.name = "enqueue", run_id = %id, tenant = %spec.tenant);
    let accepted =
        accept(state, id, &spec, request.actor, request.source_ip, request.request_id, &request.idempotency, tenancy);
    let accepted = tracing::Instrument::instrument(accepted, enqueue).await;
    if accepted.is_err()
        && let Some(idempotency) = &request.idempotency
    {
        // Nothing was created: the key is free for a retry at once.
        let _ = state.queue.release_idempotency(id, idempotency).await;
    }
    match accepted? {
        Enqueued::Created { state: now, .. } => {
            let labels = metrics::labels([("tenant", &spec.tenant), ("source", source), ("state", now.as_str())]);
            metrics::global().runs_accepted.get_or_create(&labels).inc();
            tracing::info!(
                run_id = %id, repository = %spec.repository, tenant = %spec.tenant,
                requested_by = %spec.requested_by, via = ?spec.via, state = %now, "run accepted"
            );
            Ok(Accepted { id, state: now, created: true })
        }
        Enqueued::Existing { id, same_request } => {
            repeated(KeyHolder { run: id, same_request, pending: false }, state_now)
        }
    }
}

/// Enqueues the run with its request's audit event, sealed: one script
/// writes both (`enqueue.lua`), so neither exists without the other.
#[allow(clippy::too_many_arguments)]
async fn accept(
    state: &AppState,
    id: RunId,
    spec: &RunSpec,
    actor: Actor,
    source_ip: Option<String>,
    request_id: Option<String>,
    idempotency: &Option<Idempotency>,
    tenancy: Option<u64>,
) -> Result<Enqueued, SubmitError> {
    let event = run_requested(id, spec, actor).source_ip(source_ip).request_id(request_id);
    let sealed = state.sealer.seal(&event).map_err(|e| store::QueueError::Audit(e.to_string()))?;
    let max_attempts = state.config.api.max_attempts;
    Ok(state.queue.enqueue(id, spec, max_attempts, idempotency.as_ref(), sealed, tenancy).await?)
}

/// The answer to a request whose idempotency key `holder` holds.
fn repeated(holder: KeyHolder, state_now: RunState) -> Result<Accepted, SubmitError> {
    match holder {
        KeyHolder { pending: true, run, .. } => Err(SubmitError::KeyInUse { holder: run }),
        KeyHolder { same_request: true, run, .. } => Ok(Accepted { id: run, state: state_now, created: false }),
        KeyHolder { run, .. } => Err(SubmitError::KeyReused { existing: run }),
    }
}

/// The audit event of a run request: what was asked, under which policy.
pub fn run_requested(id: RunId, spec: &RunSpec, actor: Actor) -> AuditEvent {
    let mut object = ObjectRef::new("run", id.to_string());
    object.tenant = Some(spec.tenant.clone());
    object.repository = Some(spec.repository.to_string());
    let after = serde_json::json!({
        "repository": spec.repository.to_string(), "base_ref": spec.base_ref, "task_title": spec.task_title,
        "agent_profile": spec.agent_profile.as_str(), "priority": spec.priority, "issue": spec.issue,
        "requested_by": spec.requested_by, "via": spec.via, "submitted_by": spec.submitted_by, "policy": spec.policy,
    });
    AuditEvent::new("run.request", actor, object).change(None::<&()>, Some(&after))
}
