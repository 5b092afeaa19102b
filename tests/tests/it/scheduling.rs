//! Scheduling on real Redis: fairness, priorities, caps, cancellation,
//! idempotency, scale, durability across a Redis restart, Redis Cluster.

use std::collections::HashMap;
use std::time::Duration;

use common::{Priority, RunId, RunSpec, RunState, StopReason};
use store::{Enqueued, Idempotency, LeaseStatus, Outcome, RunQueue};
use tests::fixtures::{enqueue, fresh_queue, run_spec};
use tests::redis_server::{PrivateRedis, RedisCluster};

const LEASE: Duration = Duration::from_secs(60);

async fn queue_at(url: &str, cluster: bool) -> RunQueue {
    fresh_queue(Some(url), cluster).await
}

async fn queue() -> RunQueue {
    fresh_queue(None, false).await
}

fn spec(tenant: &str, repo: &str, priority: Priority) -> RunSpec {
    run_spec(tenant, repo, priority)
}

async fn add(q: &RunQueue, tenant: &str, repo: &str) -> RunId {
    add_with(q, tenant, repo, Priority::Normal).await
}

async fn add_with(q: &RunQueue, tenant: &str, repo: &str, priority: Priority) -> RunId {
    let id = RunId::new();
    let created = enqueue(q, id, &spec(tenant, repo, priority), 3, None).await.unwrap();
    assert!(matches!(created, Enqueued::Created { .. }));
    id
}

fn done() -> Outcome {
    Outcome::Done { reason: StopReason::Completed, artifacts: vec![], facts: None }
}

async fn totals(q: &RunQueue) -> HashMap<String, i64> {
    q.depth().await.unwrap().totals.into_iter().collect()
}

#[tokio::test]
async fn weighted_tenants_share_by_weight_and_a_late_tenant_is_served_at_once() {
    let q = queue().await;
    q.set_tenant_limits("light", None, Some(1.0)).await.unwrap();
    q.set_tenant_limits("heavy", None, Some(3.0)).await.unwrap();
    for _ in 0..300 {
        add(&q, "light", "light/repo").await;
        add(&q, "heavy", "heavy/repo").await;
    }
    let mut served: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        let run = q.claim("w", LEASE).await.unwrap().unwrap();
        *served.entry(run.spec.tenant).or_default() += 1;
    }
    let (light, heavy) = (f64::from(served["light"]), f64::from(served["heavy"]));
    assert!((light - 100.0).abs() <= 10.0, "light got {light} of 400, expected 100 ± 10%");
    assert!((heavy - 300.0).abs() <= 30.0, "heavy got {heavy} of 400, expected 300 ± 10%");

    add(&q, "late", "late/repo").await;
    let mut round = Vec::new();
    for _ in 0..3 {
        round.push(q.claim("w", LEASE).await.unwrap().unwrap().spec.tenant);
    }
    assert!(round.contains(&"late".to_owned()), "the late tenant waited past one round: {round:?}");
}

#[tokio::test]
async fn higher_priority_bands_are_served_first_and_each_repository_is_fifo() {
    let q = queue().await;
    let low = add_with(&q, "t", "a/r", Priority::Low).await;
    let normal: Vec<RunId> = vec![add(&q, "t", "a/r").await, add(&q, "t", "a/r").await];
    let high = add_with(&q, "t", "a/r", Priority::High).await;
    let mut order = Vec::new();
    while let Some(run) = q.claim("w", LEASE).await.unwrap() {
        order.push(run.id);
    }
    assert_eq!(order, vec![high, normal[0], normal[1], low]);
}

#[tokio::test]
async fn a_capped_repository_leaves_the_ready_index_until_a_slot_frees() {
    let q = queue().await;
    q.set_repo_limit("t", "busy/repo", Some(2)).await.unwrap();
    let busy: Vec<RunId> = futures_collect(&q, "t", "busy/repo", 5).await;
    let other: Vec<RunId> = futures_collect(&q, "t", "other/repo", 3).await;
    assert_eq!(totals(&q).await["dispatchable"], 8);

    let mut claimed = Vec::new();
    while let Some(run) = q.claim("w", LEASE).await.unwrap() {
        claimed.push(run);
    }
    let busy_running: Vec<_> = claimed.iter().filter(|r| r.spec.repository.to_string() == "busy/repo").collect();
    assert_eq!(busy_running.len(), 2, "the cap let more runs through");
    assert_eq!(claimed.len(), 5, "other repositories must keep flowing");
    let depth = totals(&q).await;
    assert_eq!((depth["queued"], depth["running"], depth["dispatchable"]), (3, 5, 0));

    // A finished run frees its slot: the repository is dispatchable again, FIFO.
    let first = busy_running[0].clone();
    assert_eq!(q.finish(&first, &done()).await.unwrap(), Some(RunState::Succeeded));
    assert_eq!(totals(&q).await["dispatchable"], 3);
    let next = q.claim("w", LEASE).await.unwrap().unwrap();
    assert_eq!(next.id, busy[2]);
    assert!(q.claim("w", LEASE).await.unwrap().is_none());
    assert!(other.iter().all(|id| claimed.iter().any(|r| r.id == *id)));

    // Raising the cap un-parks at once; removing it too.
    q.set_repo_limit("t", "busy/repo", Some(3)).await.unwrap();
    assert_eq!(q.claim("w", LEASE).await.unwrap().unwrap().id, busy[3]);
    q.set_repo_limit("t", "busy/repo", None).await.unwrap();
    assert_eq!(q.claim("w", LEASE).await.unwrap().unwrap().id, busy[4]);
}

#[tokio::test]
async fn a_tenant_cap_holds_across_its_repositories_and_crashes_free_slots() {
    let q = queue().await;
    q.set_tenant_limits("capped", Some(1), None).await.unwrap();
    futures_collect(&q, "capped", "c/one", 2).await;
    futures_collect(&q, "capped", "c/two", 2).await;
    let free = futures_collect(&q, "free", "f/one", 2).await;
    let mut claimed = Vec::new();
    while let Some(run) = q.claim("w", Duration::from_millis(300)).await.unwrap() {
        claimed.push(run);
    }
    assert_eq!(claimed.iter().filter(|r| r.spec.tenant == "capped").count(), 1);
    assert!(free.iter().all(|id| claimed.iter().any(|r| r.id == *id)));
    let depth = q.depth().await.unwrap();
    assert_eq!(depth.tenants["capped"]["dispatchable"], 3);
    assert_eq!(depth.totals["dispatchable"], 0, "a tenant at its cap is not dispatchable");

    // Every lease expires: the reaper frees the slots, so the cap does not leak.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(q.reap(100).await.unwrap().len(), 3);
    assert_eq!(q.depth().await.unwrap().totals["dispatchable"], 6);
    let mut again = Vec::new();
    while let Some(run) = q.claim("w", LEASE).await.unwrap() {
        again.push(run.spec.tenant);
    }
    assert_eq!(again.iter().filter(|t| *t == "capped").count(), 1);
}

async fn futures_collect(q: &RunQueue, tenant: &str, repo: &str, n: usize) -> Vec<RunId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(add(q, tenant, repo).await);
    }
    ids
}

#[tokio::test]
async fn cancelling_queued_delayed_and_running_runs() {
    let q = queue().await;
    let queued = add(&q, "t", "a/r").await;
    assert_eq!(q.cancel(queued, "alice").await.unwrap(), Some((RunState::Cancelled, RunState::Queued)));
    let record = q.get(queued).await.unwrap().unwrap();
    assert_eq!(record.stop_reason, Some(StopReason::Cancelled { by: "alice".to_owned() }));
    assert!(q.claim("w", LEASE).await.unwrap().is_none(), "a cancelled run was claimed");

    let delayed = add(&q, "t", "a/r").await;
    let run = q.claim("w", LEASE).await.unwrap().unwrap();
    let retry = Outcome::Retry {
        reason: StopReason::InfrastructureError { message: "x".to_owned() },
        delay: Duration::from_secs(60),
    };
    assert_eq!(q.finish(&run, &retry).await.unwrap(), Some(RunState::Delayed));
    assert_eq!(q.cancel(delayed, "bob").await.unwrap(), Some((RunState::Cancelled, RunState::Delayed)));

    let running = add(&q, "t", "a/r").await;
    let run = q.claim("w", LEASE).await.unwrap().unwrap();
    assert_eq!(q.cancel(running, "carol").await.unwrap(), Some((RunState::Cancelling, RunState::Running)));
    assert_eq!(q.heartbeat("w", LEASE, &[(run.id, run.epoch)]).await.unwrap(), vec![LeaseStatus::CancelRequested]);
    // A worker that reports a retry for a cancelled run still ends it cancelled.
    assert_eq!(q.finish(&run, &retry).await.unwrap(), Some(RunState::Cancelled));
    let record = q.get(running).await.unwrap().unwrap();
    assert_eq!(record.stop_reason, Some(StopReason::Cancelled { by: "carol".to_owned() }));
    assert_eq!(q.cancel(running, "carol").await.unwrap(), Some((RunState::Cancelled, RunState::Cancelled)));
    assert_eq!(q.cancel(RunId::new(), "x").await.unwrap(), None);
    let depth = totals(&q).await;
    assert_eq!((depth["queued"], depth["delayed"], depth["running"], depth["cancelling"]), (0, 0, 0, 0));
    assert_eq!(depth["cancelled"], 3);
}

#[tokio::test]
async fn a_cancelled_run_whose_worker_died_is_finalised_by_the_reaper() {
    let q = queue().await;
    let id = add(&q, "t", "a/r").await;
    let run = q.claim("dead-worker", Duration::from_millis(200)).await.unwrap().unwrap();
    q.cancel(id, "dave").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(q.reap(100).await.unwrap(), vec![id]);
    let record = q.get(id).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Cancelled, "the reaper retried a cancelled run");
    assert_eq!(record.attempt, 1);
    assert_eq!(q.finish(&run, &done()).await.unwrap(), None);
}

#[tokio::test]
async fn exhausted_infrastructure_retries_land_in_the_dead_letter_set() {
    let q = queue().await;
    let id = RunId::new();
    enqueue(&q, id, &spec("t", "a/r", Priority::Normal), 1, None).await.unwrap();
    let run = q.claim("w", LEASE).await.unwrap().unwrap();
    let reason = StopReason::InfrastructureError { message: "docker is gone".to_owned() };
    let retry = Outcome::Retry { reason: reason.clone(), delay: Duration::from_secs(1) };
    assert_eq!(q.finish(&run, &retry).await.unwrap(), Some(RunState::Failed));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].reason.clone()), (id, Some(reason)));
    assert_eq!(q.depth().await.unwrap().dead_letters, 1);
}

#[tokio::test]
async fn the_same_idempotency_key_creates_one_run() {
    let q = queue().await;
    let key = |fingerprint: &str| Idempotency {
        key: "alice:req-1".to_owned(),
        fingerprint: fingerprint.to_owned(),
        ttl: Duration::from_secs(60),
    };
    let first = RunId::new();
    let s = spec("t", "a/r", Priority::Normal);
    assert!(matches!(enqueue(&q, first, &s, 3, Some(&key("f1"))).await.unwrap(), Enqueued::Created { .. }));
    let again = enqueue(&q, RunId::new(), &s, 3, Some(&key("f1"))).await.unwrap();
    assert_eq!(again, Enqueued::Existing { id: first, same_request: true });
    let different = enqueue(&q, RunId::new(), &s, 3, Some(&key("f2"))).await.unwrap();
    assert_eq!(different, Enqueued::Existing { id: first, same_request: false });
    assert_eq!(totals(&q).await["queued"], 1);
}

#[tokio::test]
async fn ten_thousand_queued_runs_keep_every_script_working_and_counters_exact() {
    let q = queue().await;
    let tenants = ["t1", "t2", "t3", "t4"];
    for i in 0..10_000 {
        let tenant = tenants[i % tenants.len()];
        add(&q, tenant, &format!("{tenant}/repo{}", i % 7)).await;
    }
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.totals["queued"], depth.totals["dispatchable"]), (10_000, 10_000));
    let page = q.list(Some(RunState::Queued), None, 100).await.unwrap();
    assert_eq!(page.runs.len(), 100);

    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(q.claim("w", Duration::from_millis(500)).await.unwrap().unwrap());
    }
    for run in held.drain(..100) {
        assert_eq!(q.finish(&run, &done()).await.unwrap(), Some(RunState::Succeeded));
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut reaped = 0;
    loop {
        let batch = q.reap(100).await.unwrap();
        if batch.is_empty() {
            break;
        }
        reaped += batch.len();
    }
    assert_eq!(reaped, 200);
    let depth = q.depth().await.unwrap();
    assert_eq!(depth.totals["queued"], 10_000 - 100);
    assert_eq!(depth.totals["running"], 0);
    assert_eq!(depth.totals["succeeded"], 100);
    assert_eq!(depth.totals["dispatchable"], 10_000 - 100);
    let per_tenant: i64 = tenants.iter().map(|t| depth.tenants[*t]["queued"]).sum();
    assert_eq!(per_tenant, 10_000 - 100);
    let mut drained = 0;
    while let Some(run) = q.claim("w", LEASE).await.unwrap() {
        q.finish(&run, &done()).await.unwrap();
        drained += 1;
    }
    assert_eq!(drained, 10_000 - 100);
    let depth = q.depth().await.unwrap();
    assert_eq!((depth.totals["queued"], depth.totals["running"], depth.totals["succeeded"]), (0, 0, 10_000));
}

#[tokio::test]
async fn no_accepted_run_is_lost_when_redis_restarts() {
    let mut redis = PrivateRedis::start(&[]);
    let q = queue_at(&redis.url(), false).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(add(&q, "t", &format!("a/r{}", i % 3)).await);
    }
    let mut running = Vec::new();
    for _ in 0..5 {
        running.push(q.claim("w", Duration::from_millis(500)).await.unwrap().unwrap());
    }
    redis.restart();
    // The connection manager reconnects by itself; give it a few tries.
    let mut records = Vec::new();
    for id in &ids {
        let mut tries = 0;
        let record = loop {
            match q.get(*id).await {
                Ok(record) => break record,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("redis did not come back: {e}"),
            }
        };
        records.push(record.unwrap_or_else(|| panic!("run {id} was lost in the restart")));
    }
    assert_eq!(records.iter().filter(|r| r.state == RunState::Running).count(), 5);
    assert_eq!(records.iter().filter(|r| r.state == RunState::Queued).count(), 15);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(q.reap(100).await.unwrap().len(), 5);
    let mut drained = 0;
    while let Some(run) = q.claim("w", LEASE).await.unwrap() {
        q.finish(&run, &done()).await.unwrap();
        drained += 1;
    }
    assert_eq!(drained, 20, "every accepted run runs after the restart");
}

#[tokio::test]
async fn every_script_works_on_a_three_node_redis_cluster() {
    every_script_works_on(&RedisCluster::start()).await;
}

/// ElastiCache with encryption in transit: `rediss://` to every node, the
/// nodes' certificates checked against `tls.extra_ca_files`.
#[tokio::test]
async fn every_script_works_on_a_redis_cluster_that_speaks_only_tls() {
    let cluster = RedisCluster::start_tls();
    assert!(cluster.url().starts_with("rediss://"));
    every_script_works_on(&cluster).await;
}

async fn every_script_works_on(cluster: &RedisCluster) {
    // Several namespaces, so their hash slots land on different nodes.
    for _ in 0..4 {
        let q = queue_at(&cluster.url(), true).await;
        q.set_repo_limit("t", "a/r", Some(1)).await.unwrap();
        q.set_tenant_limits("t", Some(5), Some(2.0)).await.unwrap();
        let a = add(&q, "t", "a/r").await;
        let b = add(&q, "t", "a/r").await;
        let c = add_with(&q, "u", "b/r", Priority::High).await;
        let first = q.claim("w", Duration::from_millis(200)).await.unwrap().unwrap();
        assert_eq!(first.id, c);
        let second = q.claim("w", LEASE).await.unwrap().unwrap();
        assert_eq!(second.id, a);
        assert!(q.claim("w", LEASE).await.unwrap().is_none(), "the repository cap did not hold");
        assert_eq!(q.heartbeat("w", LEASE, &[(second.id, second.epoch)]).await.unwrap(), vec![LeaseStatus::Held]);
        assert_eq!(q.cancel(b, "x").await.unwrap(), Some((RunState::Cancelled, RunState::Queued)));
        assert_eq!(q.finish(&second, &done()).await.unwrap(), Some(RunState::Succeeded));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(q.reap(10).await.unwrap(), vec![c]);
        assert_eq!(q.list(None, None, 10).await.unwrap().runs.len(), 3);
        assert_eq!(q.get(c).await.unwrap().unwrap().state, RunState::Queued);
        let depth = q.depth().await.unwrap();
        assert_eq!(depth.totals["queued"], 1);
        assert_eq!(q.limits().await.unwrap().repositories[&("t".to_owned(), "a/r".to_owned())], 1);
    }
}
