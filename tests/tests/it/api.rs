//! The HTTP contract: authentication, validation, problem+json, pagination.

use serde_json::{Value, json};
use tests::spawn_app;

async fn assert_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status);
    let content_type = response.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/problem+json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    assert!(body["type"].as_str().unwrap().starts_with("https://"), "{body}");
    assert!(body["title"].is_string(), "{body}");
    body
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let app = spawn_app(&[]).await;
    let anonymous = app.client.get(app.url("/v1/runs")).send().await.unwrap();
    assert_eq!(anonymous.headers().get("www-authenticate").unwrap(), "Bearer realm=\"paddock\"");
    assert_problem(anonymous, 401).await;
    let wrong = app.client.get(app.url("/v1/runs")).bearer_auth("not-the-token").send().await.unwrap();
    assert_problem(wrong, 401).await;
    let basic = app.client.get(app.url("/v1/runs")).basic_auth("admin", Some("x")).send().await.unwrap();
    assert_problem(basic, 401).await;
    let body = json!({"repository": "acme/x", "base_ref": "main", "task": {"title": "t"}});
    let post = app.client.post(app.url("/v1/runs")).json(&body).send().await.unwrap();
    assert_problem(post, 401).await;
    let listed = app.queue.list(None, None, 10).await.unwrap();
    assert!(listed.runs.is_empty(), "an unauthenticated request created a run");
}

#[tokio::test]
async fn malformed_run_requests_get_problem_details() {
    let app = spawn_app(&[]).await;
    let post_raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/v1/runs"))
            .bearer_auth(&app.token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let not_json = assert_problem(post_raw("{not json", "application/json").await.unwrap(), 400).await;
    assert!(not_json["detail"].as_str().unwrap().contains("JSON"), "{not_json}");
    assert_problem(post_raw("{}", "text/plain").await.unwrap(), 415).await;
    let missing = assert_problem(post_raw("{}", "application/json").await.unwrap(), 400).await;
    assert!(missing["detail"].as_str().unwrap().contains("repository"), "{missing}");

    let valid = json!({"repository": "acme/widgets", "base_ref": "main", "task": {"title": "Fix it", "body": ""}});
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body
    };
    let cases = [
        (with("repository", json!("not a repo")), "repository"),
        (with("repository", json!("acme/../etc")), "repository"),
        (with("base_ref", json!("--upload-pack=evil")), "base_ref"),
        (with("base_ref", json!("")), "base_ref"),
        (with("task", json!({"title": "  "})), "task.title"),
        (with("agent_profile", json!("Bad Profile")), "agent_profile"),
        (with("tenant", json!("a tenant with spaces")), "tenant"),
    ];
    for (body, field) in cases {
        let problem = assert_problem(app.post_run(&body).await, 400).await;
        assert_eq!(problem["field"], field, "{body} -> {problem}");
    }
    let unknown = assert_problem(app.post_run(&with("colour", json!("blue"))).await, 400).await;
    assert!(unknown["detail"].as_str().unwrap().contains("colour"), "{unknown}");
    let huge_title = "x".repeat(300);
    assert_problem(app.post_run(&with("task", json!({"title": huge_title}))).await, 400).await;
    // One character over the body's limit is a 400 naming it, even when
    // every character is spelled as a 12-byte surrogate pair...
    let escaped = format!(r#"{{"title": "t", "body": "{}"}}"#, r"\ud83d\ude00".repeat(65_537));
    let request =
        app.client.post(app.url("/v1/runs")).bearer_auth(&app.token).header("content-type", "application/json");
    let text = with("task", json!("PLACEHOLDER")).to_string().replace("\"PLACEHOLDER\"", &escaped);
    let problem = assert_problem(request.body(text).send().await.unwrap(), 400).await;
    assert_eq!(problem["field"], "task.body", "{problem}");
    // ...and a body over a mebibyte is refused before it is read whole.
    let huge = "y".repeat(1100 * 1024);
    assert_problem(app.post_run(&with("task", json!({"title": "t", "body": huge}))).await, 413).await;

    assert!(app.queue.list(None, None, 10).await.unwrap().runs.is_empty(), "a refused request created a run");
}

#[tokio::test]
async fn lookups_of_unknown_things_are_problems() {
    let app = spawn_app(&[]).await;
    assert_problem(app.get("/v1/runs/not-a-run-id").await, 400).await;
    let missing = ulid::Ulid::new().to_string().to_lowercase();
    assert_problem(app.get(&format!("/v1/runs/{missing}")).await, 404).await;
    assert_problem(app.get(&format!("/v1/runs/{missing}/logs")).await, 404).await;
    assert_problem(app.get("/v2/nothing-here").await, 404).await;
    assert_problem(app.get("/v1/runs?state=sleeping").await, 400).await;
    assert_problem(app.get("/v1/runs?limit=0").await, 400).await;
    assert_problem(app.get("/v1/runs?limit=lots").await, 400).await;
    assert_problem(app.get("/v1/runs?cursor=zzz").await, 400).await;
}

#[tokio::test]
async fn a_known_path_asked_with_a_method_it_lacks_answers_405_with_allow() {
    let app = spawn_app(&[]).await;
    let missing = ulid::Ulid::new().to_string().to_lowercase();
    for (method, path, allow) in [
        ("DELETE", "/v1/runs".to_owned(), "GET, POST"),
        ("PUT", format!("/v1/runs/{missing}/cancel"), "POST"),
        ("POST", "/healthz".to_owned(), "GET"),
    ] {
        let response =
            app.client.request(method.parse().unwrap(), app.url(&path)).bearer_auth(&app.token).send().await.unwrap();
        assert_eq!(response.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
        let body = assert_problem(response, 405).await;
        assert!(body["detail"].as_str().unwrap().contains(method), "{body}");
    }
    assert_problem(app.get("/v1/runs/a/b/c/d").await, 404).await;
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app(&[]).await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200, "{:?}", ready.text().await);
}

#[tokio::test]
async fn readiness_fails_when_object_storage_is_unreachable() {
    let app = spawn_app(&[("PADDOCK_S3__ENDPOINT", "http://127.0.0.1:9")]).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    let problem = assert_problem(ready, 503).await;
    assert!(problem["detail"].as_str().unwrap().contains("object storage"), "{problem}");
}

#[tokio::test]
async fn runs_are_listed_newest_first_with_cursor_pages_and_a_state_filter() {
    let app = spawn_app(&[]).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_run("acme/widgets", &format!("task {i}")).await);
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?limit=2&cursor={c}"),
            None => "/v1/runs?limit=2".to_owned(),
        };
        let page: Value = app.get(&path).await.json().await.unwrap();
        let runs = page["runs"].as_array().unwrap();
        assert!(runs.len() <= 2);
        seen.extend(runs.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let queued: Value = app.get("/v1/runs?state=queued&limit=100").await.json().await.unwrap();
    assert_eq!(queued["runs"].as_array().unwrap().len(), 5);
    let running: Value = app.get("/v1/runs?state=running").await.json().await.unwrap();
    assert!(running["runs"].as_array().unwrap().is_empty());
    let one = app.run(&ids[0]).await;
    assert_eq!(one["state"], "queued");
    assert_eq!(one["attempt"], 0);
    assert_eq!(one["requested_by"], "bootstrap-admin");
    assert_eq!(one["tenant"], "default");
    assert!(one["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_original_run() {
    let app = spawn_app(&[]).await;
    let body = json!({"repository": "acme/widgets", "base_ref": "main", "task": {"title": "Once only"}});
    let send = |body: Value, key: &'static str| {
        app.client.post(app.url("/v1/runs")).bearer_auth(&app.token).header("Idempotency-Key", key).json(&body).send()
    };
    let first = send(body.clone(), "portal-42").await.unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let first_location = first.headers().get("location").unwrap().clone();
    let first_body: Value = first.json().await.unwrap();
    let second = send(body.clone(), "portal-42").await.unwrap();
    assert_eq!(second.status().as_u16(), 202);
    assert_eq!(second.headers().get("location").unwrap(), &first_location);
    assert_eq!(second.json::<Value>().await.unwrap(), first_body);
    let listed = app.queue.list(None, None, 10).await.unwrap();
    assert_eq!(listed.runs.len(), 1, "the repeated request created a second run");

    let mut other = body.clone();
    other["task"]["title"] = json!("Something else");
    let reused = assert_problem(send(other, "portal-42").await.unwrap(), 422).await;
    assert_eq!(reused["field"], "Idempotency-Key");
    assert_problem(send(body, "has spaces in it").await.unwrap(), 400).await;
}

#[tokio::test]
async fn cancel_limits_and_queue_endpoints() {
    let app = spawn_app(&[]).await;
    let id = app.create_run("acme/widgets", "Cancel me").await;
    let queue: Value = app.get("/v1/queue").await.json().await.unwrap();
    assert_eq!(queue["totals"]["queued"], 1);
    assert_eq!(queue["totals"]["dispatchable"], 1);
    assert_eq!(queue["tenants"][0]["tenant"], "default");
    assert_eq!(queue["repositories"][0]["repository"], "acme/widgets");

    let cancel = |id: String| app.client.post(app.url(&format!("/v1/runs/{id}/cancel"))).bearer_auth(&app.token).send();
    let cancelled = cancel(id.clone()).await.unwrap();
    assert_eq!(cancelled.status().as_u16(), 200);
    assert_eq!(cancelled.json::<Value>().await.unwrap()["state"], "cancelled");
    let run = app.run(&id).await;
    assert_eq!(run["state"], "cancelled");
    assert_eq!(run["stop_reason"], json!({"kind": "cancelled", "by": "bootstrap-admin"}));
    assert_eq!(run["cancelled_by"], "bootstrap-admin");
    assert_problem(cancel(id).await.unwrap(), 409).await;
    assert_problem(cancel(ulid::Ulid::new().to_string()).await.unwrap(), 404).await;

    let put = |path: &str, body: Value| app.client.put(app.url(path)).bearer_auth(&app.token).json(&body).send();
    let tenant = put("/v1/limits/tenants/payments", json!({"max_running": 4, "weight": 2.5})).await.unwrap();
    assert_eq!(tenant.status().as_u16(), 200);
    assert_eq!(tenant.json::<Value>().await.unwrap(), json!({"tenant": "payments", "max_running": 4, "weight": 2.5}));
    let repo = put("/v1/limits/tenants/payments/repositories/acme/ledger", json!({"max_running": 2})).await.unwrap();
    assert_eq!(repo.status().as_u16(), 200);
    let limits: Value = app.get("/v1/limits").await.json().await.unwrap();
    assert_eq!(limits["tenants"], json!([{"tenant": "payments", "max_running": 4, "weight": 2.5}]));
    let ledger = json!([{"tenant": "payments", "repository": "acme/ledger", "max_running": 2, "applies": true}]);
    assert_eq!(limits["repositories"], ledger);
    assert_problem(put("/v1/limits/tenants/payments", json!({"weight": 0})).await.unwrap(), 400).await;
    assert_problem(put("/v1/limits/tenants/bad%20name", json!({})).await.unwrap(), 400).await;
    assert_problem(put("/v1/limits/tenants/payments/repositories/acme/-bad", json!({})).await.unwrap(), 400).await;
    assert_problem(put("/v1/limits/tenants/payments", json!({"max_running": -1})).await.unwrap(), 400).await;
}

#[tokio::test]
async fn sandbox_policies_are_layered_and_recorded_on_the_run() {
    let app = spawn_app(&[]).await;
    let put = |path: &str, body: Value| app.client.put(app.url(path)).bearer_auth(&app.token).json(&body).send();
    let tenant = put(
        "/v1/policies/tenants/payments",
        json!({"memory_bytes": 1073741824, "egress": "registries", "runtime": "runsc"}),
    )
    .await
    .unwrap();
    assert_eq!(tenant.status().as_u16(), 200);
    let repo = put(
        "/v1/policies/tenants/payments/repositories/acme/ledger",
        json!({"memory_bytes": 536870912, "timeout_seconds": 60, "egress_allow": ["pypi.org"]}),
    )
    .await
    .unwrap();
    assert_eq!(repo.status().as_u16(), 200);
    let policies: Value = app.get("/v1/policies").await.json().await.unwrap();
    assert_eq!(policies["overrides"].as_array().unwrap().len(), 2);
    assert_eq!(policies["defaults"]["egress"], "none");

    let body = json!({"repository": "acme/ledger", "base_ref": "main", "tenant": "payments", "task": {"title": "t"}});
    let accepted: Value = app.post_run(&body).await.json().await.unwrap();
    let run = app.run(accepted["id"].as_str().unwrap()).await;
    let policy = &run["policy"];
    assert_eq!(policy["memory_bytes"], 536870912, "the repository override wins: {policy}");
    assert_eq!(policy["timeout_seconds"], 60);
    assert_eq!(policy["egress"], "registries", "the tenant override applies where the repository is silent");
    assert_eq!(policy["egress_allow"], json!(["pypi.org"]));
    assert_eq!(policy["pids_limit"], app.config.sandbox.pids_limit);
    assert_eq!(policy["runtime"], "runsc", "the tenant's runtime applies: {policy}");

    // A run on a repository of another tenant gets the defaults.
    let other = json!({"repository": "acme/widgets", "base_ref": "main", "task": {"title": "t"}});
    let accepted: Value = app.post_run(&other).await.json().await.unwrap();
    let run = app.run(accepted["id"].as_str().unwrap()).await;
    assert_eq!(run["policy"]["memory_bytes"], app.config.sandbox.memory_bytes);
    assert_eq!(run["policy"]["runtime"], "runc");

    assert_problem(put("/v1/policies/tenants/payments", json!({"memory_bytes": 1})).await.unwrap(), 400).await;
    assert_problem(put("/v1/policies/tenants/payments", json!({"egress": "everything"})).await.unwrap(), 400).await;
    assert_problem(put("/v1/policies/tenants/payments", json!({"cpus": 2})).await.unwrap(), 400).await;
    assert_problem(put("/v1/policies/tenants/payments", json!({"runtime": "kata"})).await.unwrap(), 400).await;
    let contradiction = json!({"egress": "none", "egress_allow": ["pypi.org"]});
    let problem = assert_problem(put("/v1/policies/tenants/payments", contradiction).await.unwrap(), 400).await;
    assert_eq!(problem["field"], "egress_allow");
    let cleared = put("/v1/policies/tenants/payments", json!({})).await.unwrap();
    assert_eq!(cleared.status().as_u16(), 200);
    let policies: Value = app.get("/v1/policies").await.json().await.unwrap();
    assert_eq!(policies["overrides"].as_array().unwrap().len(), 1);
}
