//! Tenants own repositories: a run's tenant is derived from its
//! repository, a caller naming another is refused (and the refusal is
//! audited), and tenants declared through the API never overlap.

use serde_json::json;
use tests::oidc::OidcIssuer;

use crate::identity::{admin, app_with, app_with_env, audit, bind, call};

fn run_on(repo: &str, tenant: Option<&str>) -> serde_json::Value {
    let mut body = json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}});
    if let Some(tenant) = tenant {
        body["tenant"] = json!(tenant);
    }
    body
}

#[tokio::test]
async fn a_tenant_scoped_requester_cannot_reach_another_tenants_repository_nor_shed_its_own_tenant() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    bind(&app, "user:dave@example.com", "requester", "tenant:payments").await;
    bind(&app, "user:rita@example.com", "requester", "repo:acme/ledger").await;
    let (dave, rita) = (issuer.token("dave", &[]), issuer.token("rita", &[]));

    // Their own repository: the tenant is derived, named or not.
    let (status, accepted) = call(&app, "POST", "/v1/runs", &dave, Some(run_on("acme/payments-api", None))).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(app.run(accepted["id"].as_str().unwrap()).await["tenant"], "payments");

    // Another tenant's repository, by naming their own tenant or none.
    for named in [Some("payments"), None] {
        let (status, problem) = call(&app, "POST", "/v1/runs", &dave, Some(run_on("acme/widgets", named))).await;
        assert_eq!(status, 403, "{named:?}: {problem}");
    }
    // Someone who may not act on the repository learns nothing of its owner.
    let (_, problem) = call(&app, "POST", "/v1/runs", &dave, Some(run_on("acme/widgets", Some("payments")))).await;
    assert_eq!(problem["type"], "https://paddock.dev/problems/forbidden", "{problem}");
    assert!(!problem["detail"].as_str().unwrap().contains("default"), "{problem}");

    // Nor name another tenant for their own repository.
    let (status, problem) =
        call(&app, "POST", "/v1/runs", &dave, Some(run_on("acme/payments-api", Some("search")))).await;
    assert_eq!((status, problem["field"].as_str()), (403, Some("tenant")), "{problem}");

    // A repository-scoped requester cannot shed its repository's tenant
    // (policy, secrets, budgets, caps) by naming an unused one.
    let (status, problem) = call(&app, "POST", "/v1/runs", &rita, Some(run_on("acme/ledger", Some("unused")))).await;
    assert_eq!((status, problem["field"].as_str()), (403, Some("tenant")), "{problem}");
    assert_eq!(problem["type"], "https://paddock.dev/problems/wrong-tenant", "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("payments") && detail.contains("unused"), "names both tenants: {detail}");
    let (status, accepted) = call(&app, "POST", "/v1/runs", &rita, Some(run_on("acme/ledger", None))).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(app.run(accepted["id"].as_str().unwrap()).await["tenant"], "payments");
    // The repository's own policy holds however its name is written.
    let held = json!({"approval": "always"});
    assert_eq!(admin(&app, "PUT", "/v1/policies/tenants/payments/repositories/acme/ledger", Some(held)).await.0, 200);
    let (status, accepted) = call(&app, "POST", "/v1/runs", &rita, Some(run_on("ACME/Ledger", None))).await;
    assert_eq!((status, accepted["state"].as_str()), (202, Some("awaiting_approval")), "{accepted}");

    // Every refusal is in the audit trail, with who and why.
    let refusals = audit(&app, &app.token, "action=run.refuse").await;
    assert_eq!(refusals.len(), 5, "{refusals:#?}");
    let by_rita: Vec<_> = refusals.iter().filter(|e| e["actor"]["principal"] == "rita@example.com").collect();
    assert_eq!(by_rita.len(), 1);
    assert_eq!(by_rita[0]["object"]["tenant"], "payments");
    assert!(by_rita[0]["reason"].as_str().unwrap().contains("unused"), "{:#}", by_rita[0]);
    assert_eq!(by_rita[0]["outcome"], "failure");
    let trail = app.audit_trail_text().await;
    assert_eq!(trail.matches("\"run.refuse\"").count(), 5, "the refusals reached the signed trail");

    // Overrides for a tenant that does not own the repository are refused too.
    let (status, _) = admin(&app, "PUT", "/v1/policies/tenants/search/repositories/acme/ledger", Some(json!({}))).await;
    assert_eq!(status, 403);
    let (status, _) =
        admin(&app, "PUT", "/v1/limits/tenants/search/repositories/acme/ledger", Some(json!({"max_running": 1}))).await;
    assert_eq!(status, 403);
    issuer.stop().await;
}

#[tokio::test]
async fn tenants_declared_through_the_api_own_repositories_without_overlap_and_are_audited() {
    let issuer = OidcIssuer::start().await;
    // No catch-all here: the default tenant owns one repository only.
    let app = app_with_env(&issuer, &[("PADDOCK_TENANTS__DEFAULT__REPOSITORIES", r#"["acme/sandbox"]"#)]).await;
    let (status, problem) = admin(&app, "POST", "/v1/runs", Some(run_on("acme/widgets", None))).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["type"], "https://paddock.dev/problems/unowned-repository");

    let (status, tenant) =
        admin(&app, "PUT", "/v1/tenants/web", Some(json!({"repositories": ["acme/widgets", "Acme/web-*"]}))).await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["repositories"], json!(["acme/web-*", "acme/widgets"]));
    assert_eq!((tenant["source"].as_str(), tenant["changed_by"].as_str()), (Some("api"), Some("bootstrap-admin")));
    let (status, accepted) = admin(&app, "POST", "/v1/runs", Some(run_on("acme/widgets", None))).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(app.run(accepted["id"].as_str().unwrap()).await["tenant"], "web");

    // Overlaps with another tenant, in configuration or the API, are refused.
    for (name, patterns) in [("ui", json!(["acme/web-ui"])), ("money", json!(["acme/led*"])), ("all", json!(["*"]))] {
        let (status, problem) =
            admin(&app, "PUT", &format!("/v1/tenants/{name}"), Some(json!({"repositories": patterns}))).await;
        assert_eq!((status, problem["field"].as_str()), (409, Some("repositories")), "{name}: {problem}");
    }
    let (status, problem) = admin(&app, "PUT", "/v1/tenants/payments", Some(json!({"repositories": ["x/y"]}))).await;
    assert_eq!(status, 409, "configuration's tenants change there: {problem}");
    let (status, problem) = admin(&app, "PUT", "/v1/tenants/web", Some(json!({"repositories": ["acme"]}))).await;
    assert_eq!(status, 400, "{problem}");

    let (status, listed) = admin(&app, "GET", "/v1/tenants", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default", "payments", "search", "web"]);

    // Managing tenants is its own permission: an approver cannot.
    let lee = issuer.token("lee", &["leads"]);
    let (status, _) = call(&app, "PUT", "/v1/tenants/lee", &lee, Some(json!({"repositories": ["lee/*"]}))).await;
    assert_eq!(status, 403);

    // An override stored for a tenant that no longer owns the repository is
    // shown as not applying.
    let path = "/v1/limits/tenants/web/repositories/acme/widgets";
    assert_eq!(admin(&app, "PUT", path, Some(json!({"max_running": 1}))).await.0, 200);

    // Removed: its repositories get no new runs; the accepted one keeps its tenant.
    assert_eq!(admin(&app, "DELETE", "/v1/tenants/web", None).await.0, 204);
    assert_eq!(admin(&app, "POST", "/v1/runs", Some(run_on("acme/widgets", None))).await.0, 403);
    assert_eq!(app.run(accepted["id"].as_str().unwrap()).await["tenant"], "web");
    assert_eq!(admin(&app, "DELETE", "/v1/tenants/payments", None).await.0, 409);
    let (_, limits) = admin(&app, "GET", "/v1/limits", None).await;
    assert_eq!(limits["repositories"][0]["applies"], false, "{limits}");

    let changes: Vec<String> = audit(&app, &app.token, "object=web")
        .await
        .into_iter()
        .filter(|e| e["object"]["kind"] == "tenant")
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(changes, ["tenant.set", "tenant.delete"]);
    issuer.stop().await;
}

#[tokio::test]
async fn cursors_and_idempotency_keys_reveal_nothing_across_callers() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    bind(&app, "user:rita@example.com", "requester", "repo:acme/ledger").await;
    let rita = issuer.token("rita", &[]);
    let mut theirs = Vec::new();
    let mut hers = Vec::new();
    for _ in 0..3 {
        let (_, run) = admin(&app, "POST", "/v1/runs", Some(run_on("acme/widgets", None))).await;
        theirs.push(run["id"].as_str().unwrap().to_owned());
        let (_, run) = call(&app, "POST", "/v1/runs", &rita, Some(run_on("acme/ledger", None))).await;
        hers.push(run["id"].as_str().unwrap().to_owned());
        let (_, run) = admin(&app, "POST", "/v1/runs", Some(run_on("acme/widgets", None))).await;
        theirs.push(run["id"].as_str().unwrap().to_owned());
    }
    // Page by page she sees exactly her runs; no cursor names any run.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?limit=1&cursor={c}"),
            None => "/v1/runs?limit=1".to_owned(),
        };
        let (status, page) = call(&app, "GET", &path, &rita, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert!(theirs.iter().chain(&hers).all(|id| !next.contains(id.as_str())), "{next}");
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    hers.reverse();
    assert_eq!(seen, hers, "newest first, hers only");
    // A run id, or an edited cursor, is no cursor.
    assert_eq!(call(&app, "GET", &format!("/v1/runs?cursor={}", theirs[0]), &rita, None).await.0, 400);

    // A person's key and their service account's key are different keys.
    bind(&app, "user:olivia@example.com", "requester", "global").await;
    let olivia = issuer.token("olivia", &[]);
    call(&app, "GET", "/v1/runs", &olivia, None).await;
    let account = json!({"name": "olivias-portal", "owner": "olivia@example.com"});
    assert_eq!(admin(&app, "POST", "/v1/service-accounts", Some(account)).await.0, 201);
    bind(&app, "service-account:olivias-portal", "requester", "global").await;
    let body = json!({"scopes": ["runs.create"], "expires_in_days": 1});
    let (_, issued) = admin(&app, "POST", "/v1/service-accounts/olivias-portal/tokens", Some(body)).await;
    let portal = issued["token"].as_str().unwrap().to_owned();
    let post = |token: &str, body: serde_json::Value| {
        app.client
            .post(app.url("/v1/runs"))
            .bearer_auth(token)
            .header("Idempotency-Key", "portal-7f3a")
            .json(&body)
            .send()
    };
    let by_person: serde_json::Value = post(&olivia, run_on("acme/widgets", None)).await.unwrap().json().await.unwrap();
    let mut for_olivia = run_on("acme/widgets", None);
    for_olivia["on_behalf_of"] = json!("olivia@example.com");
    let response = post(&portal, for_olivia.clone()).await.unwrap();
    assert_eq!(response.status().as_u16(), 202, "the account's key is its own");
    let by_account: serde_json::Value = response.json().await.unwrap();
    assert_ne!(by_person["id"], by_account["id"]);
    // Repeated, it is the same run, and no audit event names a run that was never created.
    let again: serde_json::Value = post(&portal, for_olivia).await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], by_account["id"]);
    let requests = audit(&app, &app.token, "action=run.request").await;
    assert_eq!(requests.len(), 9 + 2, "one event per run created: {requests:#?}");
    for event in &requests {
        let id = event["object"]["id"].as_str().unwrap();
        assert_eq!(admin(&app, "GET", &format!("/v1/runs/{id}"), None).await.0, 200, "{id} was never created");
    }
    issuer.stop().await;
}

/// An API process decides runs on its own copy of tenants and policies;
/// a change made through another process reaches its next run at once
/// (the enqueue script refuses a run decided on an outdated copy, and the
/// process decides it again on a fresh read).
#[tokio::test]
async fn a_change_of_tenants_or_policies_through_one_api_process_holds_for_the_next_run_of_another() {
    let app = tests::spawn_app(&[]).await;
    let (mut other, base) = app.spawn_api_process(&[]).await;
    let repo = app.repo_named("moved-", &[("README.md", b"# moved\n")]);
    let post = || async {
        let response = app.client.post(format!("{base}/v1/runs")).bearer_auth(&app.token).json(&run_on(&repo, None));
        let response = response.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let id = response.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
        app.run(&id).await
    };
    // The other process reads tenants and policies for its first run.
    assert_eq!(post().await["tenant"], "default");

    // Through this process: a tenant now owns the repository, with a policy.
    let (status, body) = app.admin_call("PUT", "/v1/tenants/movers", json!({"repositories": ["acme/moved-*"]})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.admin_call("PUT", "/v1/policies/tenants/movers", json!({"memory_bytes": 402653184})).await;
    assert_eq!(status, 200, "{body}");
    let run = post().await;
    assert_eq!((run["tenant"].as_str(), run["policy"]["memory_bytes"].as_i64()), (Some("movers"), Some(402653184)));

    // A policy change alone.
    let path = format!("/v1/policies/tenants/movers/repositories/{repo}");
    let (status, body) = app.admin_call("PUT", &path, json!({"timeout_seconds": 77})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(post().await["policy"]["timeout_seconds"], 77);

    // And the tenant's removal: the default tenant owns the repository again.
    let (status, body) = app.admin_call("DELETE", "/v1/tenants/movers", json!({})).await;
    assert!(status == 204 || status == 200, "{status} {body}");
    let run = post().await;
    assert_eq!((run["tenant"].as_str(), run["policy"]["timeout_seconds"].as_u64()), (Some("default"), Some(120)));
    other.kill_hard();
}
