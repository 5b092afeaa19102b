//! A run's request event is written by the script that creates the run,
//! into the pending log in Redis, and shipped from there to the signed
//! trail in the bucket: never a run without its event, runs refused while
//! an event waits longer than the ship delay, and a pending event edited
//! or deleted in Redis found before and after it is shipped.

use std::time::Duration;

use audit_trail::{FindingKind, VerifyReport};
use common::config::AuditDurability;
use common::{Priority, RunId};
use serde_json::{Value, json};
use store::audit::AuditWrites;
use store::{Enqueued, Idempotency, QueueError};
use tests::fixtures::{enqueue, fresh_queue, run_spec};
use tests::outage::Outage;
use tests::redis_server::PrivateRedis;
use tests::spawn_app;

/// `redis-cli` against the shared test Redis.
fn cli(args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli").args(["-p", "6390"]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn key(ns: &str, name: &str) -> String {
    format!("{{{ns}}}:{name}")
}

#[tokio::test]
async fn a_run_and_its_request_event_are_written_together_and_a_repeat_writes_neither() {
    let q = fresh_queue(None, false).await;
    let spec = run_spec("t", "a/b", Priority::Normal);
    let idem = Idempotency { key: "caller:k1".to_owned(), fingerprint: "f".to_owned(), ttl: Duration::from_secs(60) };
    let first = RunId::new();
    assert!(matches!(enqueue(&q, first, &spec, 3, Some(&idem)).await.unwrap(), Enqueued::Created { .. }));
    // A repeat of the request (same key), and the same run id again: no
    // second run, no second event.
    let again = enqueue(&q, RunId::new(), &spec, 3, Some(&idem)).await.unwrap();
    assert_eq!(again, Enqueued::Existing { id: first, same_request: true });
    assert!(enqueue(&q, first, &spec, 3, None).await.is_err(), "a second run with the same id");
    let log = q.pending_audit(100).await.unwrap();
    assert_eq!((log.entries.len(), log.marks.last_seq, log.marks.shipped_through), (1, 1, 0), "{log:?}");
    let event = log.entries[0].as_ref().unwrap();
    assert!(event.json.contains(&format!("\"id\":\"{first}\"")) && event.json.contains("run.request"), "{event:?}");

    // Runs accepted at once (batched into few script calls) each bring
    // their event, numbered without gaps in the order Redis wrote them.
    let ids: Vec<RunId> = (0..40).map(|_| RunId::new()).collect();
    let (q_ref, spec) = (&q, &spec);
    futures::future::join_all(ids.iter().map(|id| async move { enqueue(q_ref, *id, spec, 3, None).await.unwrap() }))
        .await;
    let log = q.pending_audit(100).await.unwrap();
    let seqs: Vec<u64> = log.entries.iter().map(|e| e.as_ref().unwrap().seq).collect();
    assert_eq!(seqs, (1..=41).collect::<Vec<u64>>());
    for id in &ids {
        let mentions = log.entries.iter().filter(|e| e.as_ref().unwrap().json.contains(&id.to_string())).count();
        assert_eq!(mentions, 1, "run {id}'s event");
        assert!(q.get(*id).await.unwrap().is_some(), "run {id} without its record");
    }
    // The queryable index has them too.
    let indexed: u64 = cli(&["llen", &key(q.namespace(), "audit:events")]).parse().unwrap();
    assert_eq!(indexed, 41);
}

#[tokio::test]
async fn runs_are_refused_while_the_oldest_unshipped_event_is_older_than_the_ship_delay() {
    let writes = AuditWrites { max_ship_delay: Duration::from_secs(1), ..AuditWrites::default() };
    let q = fresh_queue(None, false).await.with_audit_writes(writes);
    let spec = run_spec("t", "a/b", Priority::Normal);
    enqueue(&q, RunId::new(), &spec, 3, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let refused = RunId::new();
    match enqueue(&q, refused, &spec, 3, None).await {
        Err(QueueError::AuditBacklog { age_ms }) => assert!(age_ms >= 1000, "{age_ms}"),
        other => panic!("accepted with an event waiting for over a second: {other:?}"),
    }
    assert!(q.get(refused).await.unwrap().is_none(), "the refused run was written");
    assert_eq!(q.pending_audit(10).await.unwrap().entries.len(), 1, "the refused run's event was written");
    // Shipped (what the API's shipper does once the bucket has it): runs
    // are accepted again.
    assert!(q.audit_ship_lease("test-shipper", Duration::from_secs(5)).await.unwrap());
    let log = q.pending_audit(10).await.unwrap();
    assert!(q.trim_shipped("test-shipper", 1, log.last_line.as_deref().unwrap(), 1).await.unwrap());
    assert!(matches!(enqueue(&q, RunId::new(), &spec, 3, None).await.unwrap(), Enqueued::Created { .. }));
    // Another holder cannot trim.
    assert!(!q.audit_ship_lease("another", Duration::from_secs(5)).await.unwrap());
    let log = q.pending_audit(10).await.unwrap();
    assert!(!q.trim_shipped("another", 1, log.last_line.as_deref().unwrap(), 2).await.unwrap());
    assert_eq!(q.pending_audit(10).await.unwrap().entries.len(), 1);
}

#[tokio::test]
async fn with_the_bucket_down_runs_wait_in_redis_until_the_ship_delay_then_are_refused_and_all_reach_the_trail() {
    let vars = tests::services::endpoint_vars();
    let s3 = vars.iter().find(|(k, _)| k == "PADDOCK_S3__ENDPOINT").map(|(_, v)| v.clone()).unwrap();
    let outage = Outage::proxy(s3.trim_start_matches("http://")).await;
    let app = spawn_app(&[
        ("PADDOCK_S3__ENDPOINT", outage.url.as_str()),
        ("PADDOCK_AUDIT__MAX_SHIP_DELAY_SECONDS", "2"),
        ("PADDOCK_AUDIT__DIGEST_INTERVAL_SECONDS", "1"),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    outage.down().await;
    // Durable in Redis, not yet in the bucket: accepted.
    let during = app.create_run(&repo, "During the outage").await;
    let body = json!({"repository": repo, "base_ref": "main", "task": {"title": "Too late"}});
    let keyed =
        || app.client.post(app.url("/v1/runs")).bearer_auth(&app.token).header("Idempotency-Key", "late-1").json(&body);
    // Its event has waited longer than the ship delay: refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused = keyed().send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["type"], "https://paddock.dev/problems/audit-unavailable", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("audit.max_ship_delay_seconds"), "{problem}");
    let runs: Value = app.get("/v1/runs").await.json().await.unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "a refused run was created: {runs}");

    outage.up();
    // Shipped once the bucket is back; the refused key is free again.
    app.shipped().await;
    let retried: Value = keyed().send().await.unwrap().json().await.unwrap();
    let id = retried["id"].as_str().expect("accepted once the backlog was shipped").to_owned();
    let trail = app.audit_trail_text().await;
    for run in [&during, &id] {
        assert!(trail.contains(&format!("\"id\":\"{run}\"")), "run {run}'s request is not in the trail");
    }
    let report = tests::eventually(Duration::from_secs(20), "the trail digested", || async {
        let report: VerifyReport = app.get("/v1/audit/verify").await.json().await.map_err(|e| e.to_string())?;
        if report.undigested.is_empty() { Ok(report) } else { Err(format!("{report:?}")) }
    })
    .await;
    assert!(report.ok(), "{report:?}");
}

#[tokio::test]
async fn a_pending_event_edited_or_deleted_in_redis_is_found_before_and_after_it_is_shipped() {
    let app = spawn_app(&[("PADDOCK_AUDIT__DIGEST_INTERVAL_SECONDS", "1")]).await;
    let ns = app.config.redis.namespace.clone();
    // Someone else holds the shipper's lease: events stay pending.
    app.shipped().await;
    cli(&["set", &key(&ns, "lock:audit-shipper"), "the-test", "PX", "60000"]);
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let mut runs = Vec::new();
    for title in ["one", "two", "three", "four"] {
        runs.push(app.create_run(&repo, title).await);
    }
    let verify = || async {
        let report: VerifyReport = app.get("/v1/audit/verify").await.json().await.unwrap();
        report
    };
    let clean = verify().await;
    assert!(clean.ok() && clean.pending_checked == 4, "{clean:?}");

    // An administrator edits the first event (who asked) and deletes the
    // second and the last one (the counter still says four).
    let pending = key(&ns, "audit:pending");
    let first = cli(&["lindex", &pending, "0"]);
    assert!(first.contains(&runs[0]), "{first}");
    let edited = first.replace("\"requested_by\":\"", "\"requested_by\":\"someone-else-");
    assert_ne!(first, edited);
    cli(&["lset", &pending, "0", &edited]);
    let second = cli(&["lindex", &pending, "1"]);
    cli(&["lrem", &pending, "1", &second]);
    cli(&["rpop", &pending]);
    let found = verify().await;
    let kinds: Vec<(FindingKind, &str)> = found.findings.iter().map(|f| (f.kind, f.detail.as_str())).collect();
    assert!(kinds.contains(&(FindingKind::PendingModified, "event 1: its seal does not verify (edited)")), "{kinds:?}");
    assert!(kinds.contains(&(FindingKind::PendingMissing, "event 2 is missing (deleted)")), "{kinds:?}");
    assert!(kinds.contains(&(FindingKind::PendingMissing, "event 4 is missing (deleted)")), "{kinds:?}");
    assert_eq!(found.findings.len(), 3, "{found:?}");

    // The shipper takes over: the intact event reaches the trail, and so
    // do the findings, which every verification reports from then on.
    cli(&["del", &key(&ns, "lock:audit-shipper")]);
    app.shipped().await;
    let report = tests::eventually(Duration::from_secs(20), "the trail digested", || async {
        let report: VerifyReport = app.get("/v1/audit/verify").await.json().await.map_err(|e| e.to_string())?;
        if report.undigested.is_empty() { Ok(report) } else { Err(format!("{report:?}")) }
    })
    .await;
    assert_eq!(report.pending_checked, 0);
    let shipped: Vec<FindingKind> = report.findings.iter().map(|f| f.kind).collect();
    assert_eq!(
        shipped,
        [FindingKind::PendingModified, FindingKind::PendingMissing, FindingKind::PendingMissing],
        "{report:?}"
    );
    assert!(report.findings.iter().all(|f| f.key.contains("/segments/")), "{report:?}");
    let trail = app.audit_trail_text().await;
    assert!(trail.contains(&runs[2]), "the intact event was not shipped");
    assert!(!trail.contains("someone-else-"), "the edited event was shipped as if it were sound");
}

#[tokio::test]
async fn each_durability_mode_is_checked_at_start_and_replica_mode_waits_for_a_replica() {
    // AOF without fsync before each reply: `fsync` refuses, naming the key.
    let primary = PrivateRedis::start(&["--appendfsync", "everysec"]);
    let fsync = fresh_queue(Some(&primary.url()), false).await;
    let refused = fsync.check_audit_durability().await.expect_err("everysec is not fsync before each reply");
    assert!(
        refused.to_string().contains("`audit.durability`") && refused.to_string().contains("everysec"),
        "{refused}"
    );

    let writes =
        |durability| AuditWrites { durability, replica_timeout: Duration::from_millis(300), ..AuditWrites::default() };
    let q = fresh_queue(Some(&primary.url()), false).await.with_audit_writes(writes(AuditDurability::Replica));
    let alone = q.check_audit_durability().await.expect_err("no replica");
    assert!(alone.to_string().contains("needs a replica"), "{alone}");

    let port = primary.port.to_string();
    let mut replica = PrivateRedis::start(&["--replicaof", "127.0.0.1", &port]);
    let linked = || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &replica.port.to_string(), "info", "replication"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).contains("master_link_status:up")
    };
    let started = std::time::Instant::now();
    while !linked() {
        assert!(started.elapsed() < Duration::from_secs(20), "the replica never linked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    q.check_audit_durability().await.expect("a replica is connected");
    let spec = run_spec("t", "a/b", Priority::Normal);
    assert!(matches!(enqueue(&q, RunId::new(), &spec, 3, None).await.unwrap(), Enqueued::Created { .. }));

    // The replica is gone: the run was written, but nobody acknowledged
    // it in time, so the request is answered with an error.
    replica.kill();
    let unacknowledged = RunId::new();
    match enqueue(&q, unacknowledged, &spec, 3, None).await {
        Err(QueueError::Audit(why)) => assert!(why.contains("no replica acknowledged"), "{why}"),
        other => panic!("acknowledged without a replica: {other:?}"),
    }
}

/// Managed Redis (ElastiCache, Memorystore) refuses CONFIG: `fsync` cannot
/// be confirmed there, so start is refused, pointing at `replica`.
#[tokio::test]
async fn without_config_access_fsync_durability_is_refused_and_replica_named() {
    let user = format!("paddock-noconfig-{}", ulid::Ulid::new());
    cli(&["ACL", "SETUSER", &user, "on", "nopass", "~*", "&*", "+@all", "-config"]);
    let q = fresh_queue(Some(&format!("redis://{user}:x@127.0.0.1:6390/")), false).await;
    let checked = q.check_audit_durability().await;
    cli(&["ACL", "DELUSER", &user]);
    let refused = checked.expect_err("fsync durability confirmed without CONFIG");
    let said = refused.to_string();
    assert!(said.contains("`audit.durability` = \"fsync\"") && said.contains("\"replica\""), "{said}");
    assert!(said.contains("refused"), "{said}");
}
