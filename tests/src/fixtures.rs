//! Small builders shared by the queue-level tests.

use common::{AgentProfile, Priority, RunSpec};
use store::RunQueue;

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
