//! Retention: the sweeper deletes each class of object once it is past its
//! retention, never what a legal hold covers, records what it deletes in
//! the audit trail first, and leaves a trail that still verifies.

use std::sync::Arc;
use std::time::Duration;

use audit_trail::{AuditTrail, signing_key, verify};
use common::RunId;
use common::audit::{Actor, AuditEvent, ObjectRef, now_ms};
use common::retention::RetentionClass;
use objstore::ObjectStore;
use serde_json::json;
use tests::services::ISOLATED_BUCKET;
use tests::{TEST_AUDIT_KEY, TestApp, spawn_app};
use worker::retention::Sweeper;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Every kind of object of a run of `tenant`, as the worker writes them.
async fn stored_run(app: &TestApp, tenant: &str) -> (RunId, Vec<String>) {
    let id = RunId::new();
    let mut keys = Vec::new();
    for kind in common::ArtifactKind::ALL {
        let key = id.artifact_key(kind);
        let metadata = [("tenant", tenant), ("retention-class", kind.class().as_str())];
        app.store.put_with_metadata(&key, "evidence".into(), "text/plain", &metadata).await.unwrap();
        keys.push(key);
    }
    (id, keys)
}

/// One stream of the trail with a digest per object (an event about each).
async fn digested_stream(app: &TestApp, writer: &str, objects: &[ObjectRef]) -> Vec<String> {
    let trail = AuditTrail::new(
        app.store.clone(),
        &app.config.audit.prefix,
        writer,
        signing_key(TEST_AUDIT_KEY).unwrap(),
        Duration::from_secs(3600),
    );
    let actor = Actor { principal: "alice@example.com".into(), method: "oidc".into(), via: None };
    for object in objects {
        trail.record(&[AuditEvent::new("run.claim", actor.clone(), object.clone())]).await.unwrap();
        trail.flush().await.unwrap();
    }
    let keys = app.store.list(&format!("{}/", app.config.audit.prefix)).await.unwrap();
    keys.into_iter().map(|(k, _)| k).filter(|k| k.contains(&format!("/{writer}-"))).collect()
}

async fn exists(app: &TestApp, key: &str) -> bool {
    app.store.get(key).await.unwrap().is_some()
}

#[tokio::test]
async fn the_sweeper_deletes_what_is_past_retention_and_keeps_what_a_legal_hold_covers() {
    let app = spawn_app(&[("PADDOCK_S3__BUCKET", ISOLATED_BUCKET)]).await;
    // Tenants of this test only: the bucket may hold objects of earlier runs.
    let unique = RunId::new().to_string();
    let (payments, search) = (format!("payments-{unique}"), format!("search-{unique}"));
    let (held_run, held_run_keys) = stored_run(&app, &payments).await;
    let (_, held_tenant_keys) = stored_run(&app, &search).await;
    let (free_run, free_keys) = stored_run(&app, &payments).await;
    let export = format!("{}/e-{free_run}/manifest.json", app.config.audit.export_prefix);
    app.store.put(&export, "{}".into(), "application/json").await.unwrap();
    let free_stream = digested_stream(&app, "old", &[ObjectRef::new("run", free_run.to_string())]).await;
    // A stream whose first digest is about the free run, its second about the held one.
    let objects = [ObjectRef::new("run", free_run.to_string()), ObjectRef::new("run", held_run.to_string())];
    let mixed_stream = digested_stream(&app, "older", &objects).await;
    assert_eq!((free_stream.len(), mixed_stream.len()), (2, 4), "a segment and a digest each");
    let (mixed_first, held_stream): (Vec<String>, Vec<String>) =
        mixed_stream.iter().cloned().partition(|k| k.ends_with("-000000000001.jsonl") || k.ends_with("-00000001.json"));
    assert_eq!((mixed_first.len(), held_stream.len()), (2, 2), "{mixed_stream:?}");

    // Holds: one run, and every run of the tenant `search`.
    let (status, run_hold) =
        app.admin_call("POST", "/v1/legal-holds", json!({"target": {"run": held_run}, "reason": "Matter 114"})).await;
    assert_eq!(status, 201, "{run_hold}");
    let (status, tenant_hold) =
        app.admin_call("POST", "/v1/legal-holds", json!({"target": {"tenant": search}, "reason": "Matter 115"})).await;
    assert_eq!(status, 201, "{tenant_hold}");
    assert_eq!(tenant_hold["placed_by"], "bootstrap-admin");
    let (status, problem) =
        app.admin_call("POST", "/v1/legal-holds", json!({"target": {"run": RunId::new()}, "reason": "x"})).await;
    assert_eq!((status, problem["status"].as_u64()), (404, Some(404)), "an unknown run cannot be held");
    let (status, problem) = app.admin_call("POST", "/v1/legal-holds", json!({"target": {"tenant": search}})).await;
    assert_eq!(status, 400, "a hold needs a reason: {problem}");

    let sweeper = Sweeper {
        store: app.store.clone(),
        queue: app.queue.clone(),
        trail: Arc::new(AuditTrail::new(
            app.store.clone(),
            &app.config.audit.prefix,
            "sweeper",
            signing_key(TEST_AUDIT_KEY).unwrap(),
            Duration::from_secs(3600),
        )),
        retention: app.config.retention.clone(),
        audit_prefix: app.config.audit.prefix.clone(),
        export_prefix: app.config.audit.export_prefix.clone(),
        by: "test-sweeper".into(),
    };
    // Nothing is past retention yet.
    let report = sweeper.sweep(now_ms()).await.unwrap();
    assert!(report.runs.is_empty(), "{report:?}");
    assert!(exists(&app, &free_keys[0]).await);

    // 91 days on: logs, artifacts, transcripts (90/90/30 days) and exports
    // (30) go; model-call metadata and the audit trail (400) stay; holds keep
    // everything of their run and tenant.
    let report = sweeper.sweep(now_ms() + 91 * DAY_MS).await.unwrap();
    assert!(report.runs.contains(&free_run) && !report.runs.contains(&held_run), "{report:?}");
    assert_eq!(report.held, 2 * (free_keys.len() - 1), "{report:?}");
    for key in &free_keys {
        let gateway_metadata = key.ends_with("model-calls.jsonl");
        assert_eq!(exists(&app, key).await, gateway_metadata, "{key}");
    }
    for key in held_run_keys.iter().chain(&held_tenant_keys).chain(&free_stream).chain(&held_stream) {
        assert!(exists(&app, key).await, "{key} is held or within retention");
    }
    assert!(!exists(&app, &export).await, "the export is past its 30 days");
    // The sweep is in the audit trail, with what it deleted.
    let trail = app.audit_trail_text().await;
    let sweep_line = trail.lines().find(|l| l.contains("\"retention.sweep\"")).expect("the sweep is audited");
    assert!(sweep_line.contains(&free_run.to_string()), "{sweep_line}");

    // 401 days on: the free stream's digest and segment go too, and the
    // mixed stream's first; its digest about the held run stays, and what
    // remains still verifies (signed trim records account for what went).
    let at = now_ms() + 401 * DAY_MS;
    let report = sweeper.sweep(at).await.unwrap();
    assert!(report.deleted.get(&RetentionClass::GatewayMetadata) >= Some(&1), "{report:?}");
    for key in free_stream.iter().chain(&mixed_first) {
        assert!(!exists(&app, key).await, "{key} is past audit retention");
    }
    for key in held_run_keys.iter().chain(&held_tenant_keys).chain(&held_stream) {
        assert!(exists(&app, key).await, "{key} is held");
    }
    let public = signing_key(TEST_AUDIT_KEY).unwrap().verifying_key();
    let verified = verify(&app.store, &app.config.audit.prefix, &[public], 0, u64::MAX).await.unwrap();
    assert!(verified.ok(), "{verified:?}");
    // Evidence under hold that goes missing is found, old as it is.
    let held_segment = held_stream.iter().find(|k| k.ends_with(".jsonl")).unwrap();
    let kept = app.store.get(held_segment).await.unwrap().unwrap();
    app.store.delete(held_segment).await.unwrap();
    let tampered = verify(&app.store, &app.config.audit.prefix, &[public], 0, u64::MAX).await.unwrap();
    assert_eq!(
        tampered.findings.iter().map(|f| (f.kind, f.key.as_str())).collect::<Vec<_>>(),
        [(audit_trail::FindingKind::Missing, held_segment.as_str())]
    );
    app.store.put(held_segment, kept, "application/x-ndjson").await.unwrap();

    // Released holds are kept on record, cannot be released twice, and the
    // next sweep deletes what they kept.
    for hold in [&run_hold, &tenant_hold] {
        let path = format!("/v1/legal-holds/{}/release", hold["id"].as_str().unwrap());
        let (status, released) = app.admin_call("POST", &path, json!({"reason": "Matter closed"})).await;
        assert_eq!((status, released["released_by"].as_str()), (200, Some("bootstrap-admin")), "{released}");
        assert_eq!(app.admin_call("POST", &path, json!({"reason": "again"})).await.0, 409);
    }
    let report = sweeper.sweep(at).await.unwrap();
    assert_eq!(report.held, 0, "{report:?}");
    for key in held_run_keys.iter().chain(&held_tenant_keys).chain(&held_stream) {
        assert!(!exists(&app, key).await, "{key} is no longer held");
    }
    let (status, retention) = app.admin_call("GET", "/v1/retention", json!(null)).await;
    assert_eq!(status, 200);
    assert_eq!(retention["active_holds"], 0);
    assert_eq!(retention["last_sweep"]["at_ms"], at);
    let rule = &retention["lifecycle_rules"][0];
    assert_eq!((rule["rule"].as_str(), rule["installed"].as_bool()), (Some("paddock-exports"), Some(true)), "{rule}");
    assert_eq!(app.store.expiration_rule("paddock-exports").await.unwrap(), Some(30), "Garage keeps the rule");
    let logs = retention["classes"].as_array().unwrap().iter().find(|c| c["class"] == "logs").unwrap();
    assert_eq!(logs["days"], 90);
    let trail = app.audit_trail_text().await;
    for action in ["legal_hold.place", "legal_hold.release"] {
        assert_eq!(trail.matches(&format!("\"{action}\"")).count(), 2, "{action}");
    }
}
