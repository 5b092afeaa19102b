//! Small builders shared by the queue-level tests.

use common::audit::{Actor, AuditEvent, ObjectRef, SealedEvent};
use common::{AgentProfile, Priority, RunId, RunSpec};
use store::{Enqueued, Idempotency, QueueError, RunQueue};

use crate::services;

/// A queue client on a fresh namespace of the Redis at `url` (the shared
/// server when `None`).
pub async fn fresh_queue(url: Option<&str>, cluster: bool) -> RunQueue {
    let mut vars = services::endpoint_vars();
    if let Some(url) = url {
        vars.push(("PADDOCK_REDIS__URL".to_owned(), url.to_owned()));
    }
    vars.push(("PADDOCK_REDIS__CLUSTER".to_owned(), cluster.to_string()));
    vars.push(("PADDOCK_REDIS__NAMESPACE".to_owned(), format!("q-{}", ulid::Ulid::new())));
    vars.push(crate::tls::TestCa::get().trust_var());
    let config = platform::config::load(None, vars).expect("test config");
    let outbound = platform::outbound::Outbound::new(&config.tls, &config.outbound).expect("test trust");
    RunQueue::connect(&config.redis, &outbound).await.expect("redis is up (run `cargo xtask setup`)")
}

pub fn run_spec(tenant: &str, repo: &str, priority: Priority) -> RunSpec {
    RunSpec {
        tenant: tenant.to_owned(),
        priority,
        repository: repo.parse().expect("repository name"),
        base_ref: "main".to_owned(),
        task_title: "t".to_owned(),
        task_body: String::new(),
        agent_profile: AgentProfile::default(),
        requested_by: "tester".to_owned(),
        via: None,
        policy: None,
        issue: None,
        submitted_by: None,
        trace_parent: None,
        parent_run: None,
        follow_up: None,
    }
}

/// Run `id`'s request event for `spec`, sealed with the test audit key as
/// the API seals it: what `RunQueue::enqueue` writes with the run.
pub fn sealed(id: RunId, spec: &RunSpec) -> SealedEvent {
    let key = audit_trail::signing_key(crate::TEST_AUDIT_KEY).expect("the test key");
    let actor = Actor { principal: spec.requested_by.clone(), method: "test".to_owned(), via: None };
    let mut object = ObjectRef::new("run", id.to_string());
    object.tenant = Some(spec.tenant.clone());
    object.repository = Some(spec.repository.to_string());
    audit_trail::Sealer::new(&key).seal(&AuditEvent::new("run.request", actor, object)).expect("sealed")
}

/// `q.enqueue` with the run request's event sealed as the API seals it.
pub async fn enqueue(
    q: &RunQueue,
    id: RunId,
    spec: &RunSpec,
    max_attempts: u32,
    idempotency: Option<&Idempotency>,
) -> Result<Enqueued, QueueError> {
    q.enqueue(id, spec, max_attempts, idempotency, sealed(id, spec), None).await
}
