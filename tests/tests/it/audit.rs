//! The audit trail in object storage: every action's event is stored before
//! the action proceeds (refused with 503 otherwise), and any change to the
//! stored trail is found by the verifier.

use std::time::Duration;

use audit_trail::{AuditTrail, FindingKind, VerifyReport, signing_key, verify};
use common::audit::{Actor, AuditEvent, ObjectRef};
use objstore::ObjectStore;
use serde_json::{Value, json};
use tests::outage::Outage;
use tests::{TEST_AUDIT_KEY, TestApp, spawn_app};

fn event(i: u32) -> AuditEvent {
    let actor = Actor { principal: "alice@example.com".to_owned(), method: "oidc".to_owned(), via: None };
    AuditEvent::new("binding.create", actor, ObjectRef::new("binding", format!("b{i}")))
}

/// A trail of four digested segments (two events each) and one segment
/// written after the digest, under its own prefix.
async fn written_trail(app: &TestApp) -> (String, Vec<String>) {
    let prefix = format!("audit-tamper-{}", ulid::Ulid::new().to_string().to_lowercase());
    let key = signing_key(TEST_AUDIT_KEY).unwrap();
    let trail = AuditTrail::new(app.store.clone(), &prefix, "test", key, Duration::from_secs(3600));
    for i in 0..4 {
        trail.record(&[event(2 * i), event(2 * i + 1)]).await.unwrap();
    }
    trail.flush().await.unwrap();
    trail.record(&[event(99)]).await.unwrap();
    let segments: Vec<String> =
        app.store.list(&format!("{prefix}/segments/")).await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(segments.len(), 5, "{segments:?}");
    (prefix, segments)
}

async fn verified(app: &TestApp, prefix: &str) -> VerifyReport {
    let public = signing_key(TEST_AUDIT_KEY).unwrap().verifying_key();
    verify(&app.store, prefix, &[public], 0, u64::MAX).await.unwrap()
}

fn kinds(report: &VerifyReport) -> Vec<(FindingKind, String)> {
    report.findings.iter().map(|f| (f.kind, f.key.clone())).collect()
}

#[tokio::test]
async fn an_untouched_trail_verifies_and_its_tail_is_reported_as_undigested() {
    let app = spawn_app(&[]).await;
    let (prefix, segments) = written_trail(&app).await;
    let report = verified(&app, &prefix).await;
    assert!(report.ok(), "{report:?}");
    assert_eq!((report.digests_checked, report.segments_checked, report.events_checked), (1, 4, 8));
    assert_eq!(report.undigested, vec![segments[4].clone()]);
    // A range of the last hour lists only its days and hours, to the same end.
    let public = signing_key(TEST_AUDIT_KEY).unwrap().verifying_key();
    let hour_ago = common::audit::now_ms() - 3_600_000;
    let ranged = verify(&app.store, &prefix, &[public], hour_ago, u64::MAX).await.unwrap();
    assert!(ranged.ok(), "{ranged:?}");
    assert_eq!((ranged.digests_checked, ranged.segments_checked, ranged.undigested.len()), (1, 4, 1));
    // Another key's signature is not trusted.
    let stranger = signing_key("c3RyYW5nZXItc3RyYW5nZXItc3RyYW5nZXItc3RyYW4=").unwrap().verifying_key();
    let report = verify(&app.store, &prefix, &[stranger], 0, u64::MAX).await.unwrap();
    assert_eq!(report.findings[0].kind, FindingKind::BadSignature, "{report:?}");
}

#[tokio::test]
async fn one_edited_byte_is_found() {
    let app = spawn_app(&[]).await;
    let (prefix, segments) = written_trail(&app).await;
    let mut bytes = app.store.get(&segments[1]).await.unwrap().unwrap().to_vec();
    let at = bytes.iter().position(|b| *b == b'b').unwrap();
    bytes[at] = b'c';
    app.store.put(&segments[1], bytes.into(), "application/x-ndjson").await.unwrap();
    assert_eq!(kinds(&verified(&app, &prefix).await), [(FindingKind::Modified, segments[1].clone())]);
}

#[tokio::test]
async fn a_deleted_segment_is_found() {
    let app = spawn_app(&[]).await;
    let (prefix, segments) = written_trail(&app).await;
    app.store.delete(&segments[2]).await.unwrap();
    assert_eq!(kinds(&verified(&app, &prefix).await), [(FindingKind::Missing, segments[2].clone())]);
    let public = signing_key(TEST_AUDIT_KEY).unwrap().verifying_key();
    let ranged = verify(&app.store, &prefix, &[public], common::audit::now_ms() - 60_000, u64::MAX).await.unwrap();
    assert_eq!(kinds(&ranged), [(FindingKind::Missing, segments[2].clone())]);
}

#[tokio::test]
async fn two_swapped_segments_are_found() {
    let app = spawn_app(&[]).await;
    let (prefix, segments) = written_trail(&app).await;
    let (a, b) =
        (app.store.get(&segments[0]).await.unwrap().unwrap(), app.store.get(&segments[3]).await.unwrap().unwrap());
    app.store.put(&segments[0], b, "application/x-ndjson").await.unwrap();
    app.store.put(&segments[3], a, "application/x-ndjson").await.unwrap();
    let found = kinds(&verified(&app, &prefix).await);
    assert_eq!(found, [(FindingKind::Reordered, segments[0].clone()), (FindingKind::Reordered, segments[3].clone())]);
}

#[tokio::test]
async fn an_inserted_segment_and_an_altered_digest_are_found() {
    let app = spawn_app(&[]).await;
    let (prefix, segments) = written_trail(&app).await;
    // A forged segment in the middle of the digested part of the stream.
    let forged = segments[1].replace("-000000000003.jsonl", "-000000000004.jsonl");
    app.store.put(&forged, app.store.get(&segments[1]).await.unwrap().unwrap(), "application/x-ndjson").await.unwrap();
    assert_eq!(kinds(&verified(&app, &prefix).await), [(FindingKind::Inserted, forged.clone())]);
    app.store.delete(&forged).await.unwrap();
    // A digest edited to hide a segment no longer verifies.
    let digests = app.store.list(&format!("{prefix}/digests/")).await.unwrap();
    let (digest_key, _) = &digests[0];
    let mut digest: Value = serde_json::from_slice(&app.store.get(digest_key).await.unwrap().unwrap()).unwrap();
    digest["segments"].as_array_mut().unwrap().remove(2);
    app.store.put(digest_key, serde_json::to_vec(&digest).unwrap().into(), "application/json").await.unwrap();
    app.store.delete(&segments[2]).await.unwrap();
    let found = kinds(&verified(&app, &prefix).await);
    assert!(found.contains(&(FindingKind::BadSignature, digest_key.clone())), "{found:?}");
}

#[tokio::test]
async fn actions_through_the_api_land_in_a_trail_that_verifies_without_secrets() {
    let app = spawn_app(&[("PADDOCK_AUDIT__DIGEST_INTERVAL_SECONDS", "1")]).await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let run = app.create_run(&repo, "Audited").await;
    let call = |method: &str, path: &str, body: Value| {
        app.client.request(method.parse().unwrap(), app.url(path)).bearer_auth(&app.token).json(&body).send()
    };
    app.declare_person("olivia@example.com").await;
    call("POST", "/v1/service-accounts", json!({"name": "portal", "owner": "olivia@example.com"})).await.unwrap();
    let issued: Value =
        call("POST", "/v1/service-accounts/portal/tokens", json!({"scopes": ["runs.create"], "expires_in_days": 1}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let sa_token = issued["token"].as_str().unwrap().to_owned();
    // The background digest runs every second: wait until it covered everything.
    let report = tests::eventually(Duration::from_secs(20), "every segment digested", || async {
        let report: VerifyReport = app.get("/v1/audit/verify").await.json().await.map_err(|e| e.to_string())?;
        if report.events_checked >= 3 && report.undigested.is_empty() { Ok(report) } else { Err(format!("{report:?}")) }
    })
    .await;
    assert!(report.ok(), "{report:?}");
    // The run request is in it, tied to who asked; no token value is.
    let trail = app.audit_trail_text().await;
    assert!(trail.contains(&format!("\"id\":\"{run}\"")) && trail.contains("\"run.request\""), "{trail}");
    for secret in [&app.token, &sa_token] {
        assert!(!trail.contains(secret.as_str()), "a token reached the audit trail");
    }
}

/// Identity changes, like runs, write their sealed event to Redis's
/// pending log in the script that makes them: an object-store outage does
/// not stop them until the oldest unshipped event is older than the ship
/// delay; then they are refused, nothing half-done, and once the store is
/// back every accepted event reaches the trail.
#[tokio::test]
async fn without_the_object_store_identity_changes_wait_in_the_pending_log_until_the_ship_delay() {
    let vars = tests::services::endpoint_vars();
    let s3 = vars.iter().find(|(k, _)| k == "PADDOCK_S3__ENDPOINT").map(|(_, v)| v.clone()).unwrap();
    let outage = Outage::proxy(s3.trim_start_matches("http://")).await;
    let app =
        spawn_app(&[("PADDOCK_S3__ENDPOINT", outage.url.as_str()), ("PADDOCK_AUDIT__MAX_SHIP_DELAY_SECONDS", "2")])
            .await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let accepted = app.create_run(&repo, "Before the outage").await;
    app.declare_person("o@example.com").await;
    app.shipped().await;

    outage.down().await;
    let create = |name: &str| {
        app.client
            .post(app.url("/v1/service-accounts"))
            .bearer_auth(&app.token)
            .json(&json!({"name": name, "owner": "o@example.com"}))
    };
    assert_eq!(
        create("during-outage").send().await.unwrap().status().as_u16(),
        201,
        "the bucket is on no change's path"
    );
    let pending = app.queue.pending_audit(10).await.unwrap();
    assert_eq!(pending.entries.len(), 1, "the change's event waits in the pending log");
    let event = pending.entries[0].as_ref().unwrap();
    assert!(event.json.contains("\"service_account.create\"") && event.json.contains("during-outage"), "{event:?}");
    assert_eq!(event.mac.len(), 64, "sealed (HMAC-SHA256)");

    // Past the ship delay, with nothing shipped, changes are refused.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let response = create("after-the-delay").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 503, "an identity change went through past the ship delay");
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "https://paddock.dev/problems/audit-unavailable", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("max_ship_delay_seconds"), "{problem}");
    // What was accepted is still there, and nothing refused was half-done.
    assert_eq!(app.run(&accepted).await["state"], "queued");
    let accounts: Value = app.get("/v1/service-accounts").await.json().await.unwrap();
    let names: Vec<&str> = accounts.as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["during-outage"]);

    outage.up();
    let trail = app.audit_trail_text().await;
    assert!(trail.contains("during-outage"), "the change accepted during the outage never reached the trail");
    assert_eq!(create("after-the-delay").send().await.unwrap().status().as_u16(), 201);
}

/// A worker's events go to the pending log in Redis; when it cannot take
/// them (the oldest waits longer than the ship delay: nobody ships), the
/// run stops before any credential or sandbox.
#[tokio::test]
async fn a_worker_that_cannot_write_its_audit_events_stops_the_run_and_does_nothing() {
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo the agent ran"),
        ("PADDOCK_AUDIT__MAX_SHIP_DELAY_SECONDS", "1"),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    app.shipped().await;
    // Someone else holds the shipper's lease and ships nothing.
    let lease = format!("{{{}}}:lock:audit-shipper", app.config.redis.namespace);
    let held = std::process::Command::new("redis-cli")
        .args(["-p", "6390", "set", &lease, "a-stuck-shipper", "PX", "120000"])
        .output()
        .unwrap();
    assert!(held.status.success());
    let id = app.create_run(&repo, "Audit me").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let worker = app.spawn_worker().await;
    let run = app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "failed").await;
    assert_eq!(run["stop_reason"]["kind"], "audit_unavailable", "{run:#}");
    assert!(run["stop_reason"]["message"].as_str().unwrap().contains("max_ship_delay_seconds"), "{run:#}");
    assert_eq!(run["attempt"], 1, "an audit outage must not be retried into a run without audit");
    assert!(app.sandboxes_of(&id).await.is_empty(), "a sandbox was started without its audit event");
    assert_eq!(run["artifacts"], json!([]));
    worker.shutdown().await;
}

#[tokio::test]
async fn the_status_names_the_signing_key_and_says_whether_the_bucket_enforces_retention() {
    let app = spawn_app(&[]).await;
    let status: Value = app.get("/v1/audit/status").await.json().await.unwrap();
    let public = audit_trail::public_key_b64(&signing_key(TEST_AUDIT_KEY).unwrap().verifying_key());
    assert_eq!(status["public_key"], public.as_str(), "{status:#}");
    assert!(status["stream"].as_str().unwrap().starts_with("api-"));
    // Garage has no Object Lock: the probe says so instead of claiming WORM.
    assert_eq!(status["object_lock"]["enforced"], false, "{status:#}");
    assert!(!status["object_lock"]["detail"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn administrative_changes_are_audited_with_what_changed_and_never_a_secret_value() {
    let app = spawn_app(&[("PADDOCK_SECRETS__ENCRYPTION_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")]).await;
    let secret = "planted-canary-7f3a9c0d1e";
    let changes = [
        ("PUT", "/v1/limits/tenants/payments", json!({"max_running": 7})),
        ("PUT", "/v1/limits/tenants/payments/repositories/acme/ledger", json!({"max_running": 2})),
        ("PUT", "/v1/policies/tenants/payments", json!({"approval": "egress"})),
        ("PUT", "/v1/policies/tenants/payments/repositories/acme/ledger", json!({"timeout_seconds": 600})),
        (
            "PUT",
            "/v1/llm-policy",
            json!({"allowed_providers": [], "logging": {"prompt_content": "redacted", "metadata": "retained_30_days"}}),
        ),
        ("PUT", "/v1/tenants/payments/secrets/deploy-key", json!({"value": secret})),
        ("DELETE", "/v1/tenants/payments/secrets/deploy-key", json!({})),
    ];
    for (method, path, body) in changes {
        let (status, answer) = app.admin_call(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {answer}");
    }
    let events = app.queue.identity().audit_events(&Default::default(), 1000).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["limits.set", "limits.set", "policy.set", "policy.set", "llm_policy.set", "secret.put", "secret.delete"]
    );
    assert!(events.iter().all(|e| e.actor.principal == "bootstrap-admin" && e.source_ip.is_some()));
    assert_eq!(events[2].after.as_ref().unwrap()["approval"], "egress");
    assert_eq!(events[1].object.repository.as_deref(), Some("acme/ledger"));
    let trail = serde_json::to_string(&events).unwrap() + &app.audit_trail_text().await;
    assert!(trail.contains("secret.put") && !trail.contains(secret), "the secret's value reached the audit trail");
}

/// Starts an export and waits for it to finish.
async fn finished_export(app: &TestApp, request: Value) -> Value {
    let export = app.finished_export(request).await;
    assert_eq!(export["state"], "succeeded", "{export}");
    export
}

fn gunzip(bytes: &[u8]) -> String {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(bytes).read_to_string(&mut text).unwrap();
    text
}

#[tokio::test]
async fn an_export_for_a_time_range_verifies_on_its_own_and_any_change_to_it_is_found() {
    use audit_trail::export::verify_export;
    let app = spawn_app(&[]).await;
    let since = common::audit::now_ms() - 1000;
    let repo = app.repo(&[("README.md", b"# export\n")]);
    let run = app.create_run(&repo, "Exported").await;
    // A portal's request id is echoed and recorded on the event it causes.
    let response = app
        .client
        .post(app.url("/v1/runs"))
        .bearer_auth(&app.token)
        .header("x-request-id", "portal-req-42")
        .json(&json!({"repository": repo, "base_ref": "main", "task": {"title": "Another"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "portal-req-42");
    let other = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (status, _) = app.admin_call("PUT", "/v1/limits/tenants/default", json!({"max_running": 7})).await;
    assert_eq!(status, 200);
    // Run requests reach the bucket through the shipper.
    app.shipped().await;

    let export = finished_export(&app, json!({"since_ms": since})).await;
    assert_eq!(export["events"], 3, "two run requests and a limit change: {export}");
    let bundle = export["bundle"].as_str().unwrap().to_owned();
    let public = signing_key(TEST_AUDIT_KEY).unwrap().verifying_key();
    let report = verify_export(&app.store, &bundle, &[public]).await.unwrap();
    assert!(report.ok() && report.events_checked == 3 && report.digests_checked >= 1, "{report:?}");
    let id = export["id"].as_str().unwrap();
    let (status, api_report) = app.admin_call("GET", &format!("/v1/audit/exports/{id}/verify"), json!(null)).await;
    assert_eq!((status, api_report["findings"].as_array().map(Vec::len)), (200, Some(0)), "{api_report}");

    // Downloaded, the bundle verifies offline with the CLI and the public key.
    let local = app.scratch.join("bundle").join(id);
    for (key, _) in app.store.list(&bundle).await.unwrap() {
        let path = local.join(key.strip_prefix(&bundle).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, app.store.get(&key).await.unwrap().unwrap()).unwrap();
    }
    let cli = |key: String| {
        std::process::Command::new(tests::services::bin_dir().join("paddock"))
            .args(["--output", "json", "audit", "verify-export"])
            .arg(&local)
            .args(["--public-key", &key])
            .output()
            .unwrap()
    };
    let offline = cli(audit_trail::public_key_b64(&public));
    assert!(offline.status.success(), "{}", String::from_utf8_lossy(&offline.stderr));
    let offline: Value = serde_json::from_slice(&offline.stdout).unwrap();
    assert_eq!((offline["events_checked"].as_u64(), offline["findings"].as_array().map(Vec::len)), (Some(3), Some(0)));
    let stranger = signing_key("c3RyYW5nZXItc3RyYW5nZXItc3RyYW5nZXItc3RyYW4=").unwrap().verifying_key();
    assert_eq!(cli(audit_trail::public_key_b64(&stranger)).status.code(), Some(1), "an untrusted key fails");

    // GitHub's streaming layout: YYYY/MM/HH/MM/<uuid>.json.gz, JSON Lines inside.
    let files: Vec<String> = app.store.list(&bundle).await.unwrap().into_iter().map(|(k, _)| k).collect();
    let layout =
        regex::Regex::new(r"/events/\d{4}/\d{2}/\d{2}/\d{2}/[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}\.json\.gz$")
            .unwrap();
    let events: Vec<&String> = files.iter().filter(|k| k.contains("/events/")).collect();
    assert!(!events.is_empty() && events.iter().all(|k| layout.is_match(k)), "{files:?}");
    let text = gunzip(&app.store.get(events[0]).await.unwrap().unwrap());
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["event"]["action"].as_str(), first["event"]["object"]["id"].as_str()),
        (Some("run.request"), Some(run.as_str()))
    );

    // One run only.
    let only = finished_export(&app, json!({"run": other})).await;
    assert_eq!(only["events"], 1, "{only}");
    let trail = app.audit_trail_text().await;
    let request = trail.lines().find(|l| l.contains(&other) && l.contains("run.request")).unwrap();
    let request: Value = serde_json::from_str(request).unwrap();
    assert_eq!(
        (request["event"]["request_id"].as_str(), request["event"]["stage"].as_str()),
        (Some("portal-req-42"), Some("intent"))
    );
    let only_bundle = only["bundle"].as_str().unwrap();
    assert!(verify_export(&app.store, only_bundle, &[public]).await.unwrap().ok());

    // An exported event edited (and re-compressed) is found, as is a copied
    // segment removed, or a file added.
    let forged = text.replacen("run.request", "run.rejects", 1);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, forged.as_bytes()).unwrap();
    app.store.put(events[0], gz.finish().unwrap().into(), "application/gzip").await.unwrap();
    let segment = files.iter().find(|k| k.contains("/segments/")).unwrap();
    app.store.delete(segment).await.unwrap();
    app.store.put(&format!("{bundle}events/extra.json.gz"), "{}".into(), "application/gzip").await.unwrap();
    let report = verify_export(&app.store, &bundle, &[public]).await.unwrap();
    let found: Vec<(FindingKind, bool)> =
        report.findings.iter().map(|f| (f.kind, f.key == *events[0] || f.key == *segment)).collect();
    assert!(found.contains(&(FindingKind::Modified, true)), "{report:?}");
    assert!(found.contains(&(FindingKind::Missing, true)), "{report:?}");
    assert!(report.findings.iter().any(|f| f.kind == FindingKind::Inserted && f.key.ends_with("extra.json.gz")));

    // Exports are audited, the finished one with its manifest's hash; bad
    // requests are refused.
    let trail = app.audit_trail_text().await;
    assert_eq!(trail.matches("\"audit.export\"").count(), 2);
    assert!(trail.contains(export["manifest_sha256"].as_str().unwrap()));
    let (status, _) = app.admin_call("POST", "/v1/audit/exports", json!({"since_ms": 5, "until_ms": 5})).await;
    assert_eq!(status, 400);
    let (status, problem) = app.admin_call("POST", "/v1/audit/exports", json!({"run": "nope"})).await;
    assert_eq!((status, problem["field"].as_str()), (400, Some("run")), "{problem}");

    // A job whose API process died (no heartbeat for a minute) is reported failed.
    let mut orphan: audit_trail::export::ExportStatus = serde_json::from_value(only.clone()).unwrap();
    orphan.id = "orphaned-export".into();
    orphan.state = audit_trail::export::ExportState::Running;
    orphan.created_at_ms -= 120_000;
    orphan.heartbeat_ms = None;
    app.queue.identity().save_export(&orphan).await.unwrap();
    let (_, seen) = app.admin_call("GET", "/v1/audit/exports/orphaned-export", json!(null)).await;
    assert_eq!(seen["state"], "failed", "{seen}");
    assert!(seen["error"].as_str().unwrap().starts_with("abandoned"), "{seen}");
}

/// The moto S3 emulation `cargo xtask setup` starts: Garage has no Object Lock.
const MOTO_ENDPOINT: &str = "http://127.0.0.1:3950";

#[tokio::test]
async fn on_a_bucket_with_object_lock_every_audit_object_is_written_with_retention_and_cannot_be_deleted() {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let bucket = format!("lock-{}", ulid::Ulid::new().to_string().to_lowercase());
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("moto", "moto-secret", None, None, "test"))
            .endpoint_url(MOTO_ENDPOINT)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(&bucket).object_lock_enabled_for_bucket(true).send().await.unwrap();
    let app = spawn_app(&[
        ("PADDOCK_S3__ENDPOINT", MOTO_ENDPOINT),
        ("PADDOCK_S3__REGION", "us-east-1"),
        ("PADDOCK_S3__BUCKET", bucket.as_str()),
        ("PADDOCK_S3__ACCESS_KEY_ID", "moto"),
        ("PADDOCK_S3__SECRET_ACCESS_KEY", "moto-secret"),
    ])
    .await;
    let (_, status) = app.admin_call("GET", "/v1/audit/status", json!(null)).await;
    let lock = &status["object_lock"];
    assert_eq!((lock["enabled"].as_bool(), lock["enforced"].as_bool()), (Some(true), Some(true)), "{status:#}");
    assert_eq!(
        (lock["audit_object_mode"].as_str(), lock["audit_object_days"].as_u64()),
        (Some("COMPLIANCE"), Some(400))
    );

    let (status, accepted) = app.admin_call("PUT", "/v1/limits/tenants/locked", json!({"max_running": 3})).await;
    assert_eq!(status, 200, "{accepted}");
    // The change's event reaches the bucket through the shipper.
    app.shipped().await;
    let segments = app.store.list(&format!("{}/segments/", app.config.audit.prefix)).await.unwrap();
    assert!(!segments.is_empty());
    let year = common::audit::now_ms() + 399 * 24 * 60 * 60 * 1000;
    for (key, _) in segments {
        let head = s3.head_object().bucket(&bucket).key(&key).send().await.unwrap();
        assert_eq!(head.object_lock_mode().map(|m| m.as_str()), Some("COMPLIANCE"), "{key}");
        let until = head.object_lock_retain_until_date().unwrap().to_millis().unwrap();
        assert!(until as u64 > year, "{key} is retained until {until}");
        let version = head.version_id().unwrap().to_owned();
        let deleted = s3.delete_object().bucket(&bucket).key(&key).version_id(version).send().await;
        assert!(deleted.is_err(), "{key}: a retained version cannot be deleted");
        assert!(app.store.get(&key).await.unwrap().is_some());
    }
}
