//! People are who the identity provider says: a person is their issuer
//! and `sub`, an address counts only once verified, a deactivated person
//! is refused under every name (and so are their service accounts), and a
//! run is attributed only to a known person who may request it there.

use std::time::Duration;

use serde_json::{Value, json};
use tests::TestApp;
use tests::oidc::OidcIssuer;

use crate::identity::{admin, app_with, bind, call};

/// A service account owned by `owner`, bound as requester globally, and a
/// token for it.
async fn service_account(app: &TestApp, name: &str, owner: &str) -> String {
    app.declare_person(owner).await;
    let account = json!({"name": name, "owner": owner});
    assert_eq!(admin(app, "POST", "/v1/service-accounts", Some(account)).await.0, 201);
    bind(app, &format!("service-account:{name}"), "requester", "global").await;
    let body = json!({"scopes": ["runs.create"], "expires_in_days": 1});
    let (status, issued) = admin(app, "POST", &format!("/v1/service-accounts/{name}/tokens"), Some(body)).await;
    assert_eq!(status, 201, "{issued}");
    issued["token"].as_str().unwrap().to_owned()
}

fn run_on(repo: &str, for_whom: &str) -> Value {
    json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}, "on_behalf_of": for_whom})
}

#[tokio::test]
async fn a_deactivated_person_is_refused_whatever_their_token_says_and_so_are_their_service_accounts() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    // Mallory signs in once; her service account works.
    assert_eq!(call(&app, "GET", "/v1/runs", &issuer.token("mallory", &["devs"]), None).await.0, 200);
    let robot = service_account(&app, "mallorys-robot", "mallory@example.com").await;
    assert_eq!(call(&app, "GET", "/v1/runs", &robot, None).await.0, 200);
    // Her robot starts a run for Victor: it is hers to answer for too.
    assert_eq!(call(&app, "GET", "/v1/runs", &issuer.token("victor", &["devs"]), None).await.0, 200);
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let for_victor =
        json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}, "on_behalf_of": "victor@example.com"});
    let (status, queued) = call(&app, "POST", "/v1/runs", &robot, Some(for_victor)).await;
    assert_eq!(status, 202, "{queued}");

    // Deactivated by her address however it is written.
    let deactivate = json!({"reason": "left the company"});
    let (status, report) = admin(&app, "POST", "/v1/users/Mallory@Example.COM/deactivate", Some(deactivate)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["cancelled_runs"], json!([queued["id"]]), "the run through her account was cancelled");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let without_email = |issuer: &OidcIssuer| {
        let mut claims = issuer.claims("mallory", &["devs"]);
        claims.as_object_mut().unwrap().remove("email");
        issuer.sign(&claims, false)
    };
    let unverified = |issuer: &OidcIssuer| {
        let mut claims = issuer.claims("mallory", &["devs"]);
        claims["email_verified"] = json!(false);
        issuer.sign(&claims, false)
    };
    let tokens = [
        ("a fresh token", issuer.token("mallory", &["devs"])),
        ("no email claim", without_email(&issuer)),
        ("an unverified email", unverified(&issuer)),
        ("her service account", robot.clone()),
    ];
    for (what, token) in &tokens {
        let (status, problem) = call(&app, "GET", "/v1/runs", token, None).await;
        assert_eq!(status, 401, "{what} passed: {problem}");
        assert!(problem["detail"].as_str().unwrap().contains("deactivated"), "{what}: {problem}");
    }
    let (_, status) = admin(&app, "GET", "/v1/users/mallory@example.com", None).await;
    assert_eq!(status["deactivated"], true);

    // Activated: new tokens of every kind work again, the account too.
    let activate = json!({"reason": "rehired"});
    assert_eq!(admin(&app, "POST", "/v1/users/mallory@example.com/activate", Some(activate)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = [
        ("a fresh token", issuer.token("mallory", &["devs"])),
        ("no email claim", without_email(&issuer)),
        ("an unverified email", unverified(&issuer)),
        ("her service account", robot),
    ];
    for (what, token) in &again {
        assert_eq!(call(&app, "GET", "/v1/runs", token, None).await.0, 200, "{what} after activation");
    }
    issuer.stop().await;
}

#[tokio::test]
async fn an_unverified_address_names_nobody() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    bind(&app, "user:victor@example.com", "requester", "global").await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let run = json!({"repository": repo, "base_ref": "main", "task": {"title": "t"}});
    // Eve's identity provider account claims Victor's address, unverified.
    let mut claims = issuer.claims("eve", &[]);
    claims["email"] = json!("victor@example.com");
    claims["email_verified"] = json!(false);
    let eve = issuer.sign(&claims, false);
    let (status, problem) = call(&app, "POST", "/v1/runs", &eve, Some(run.clone())).await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().starts_with("eve "), "known by her subject only: {problem}");
    let (status, accepted) = call(&app, "POST", "/v1/runs", &issuer.token("victor", &[]), Some(run)).await;
    assert_eq!(status, 202, "{accepted}");
    let (_, people) = admin(&app, "GET", "/v1/people", None).await;
    let eve = people.as_array().unwrap().iter().find(|p| p["subject"] == "eve").expect("eve was seen");
    assert_eq!((eve["email"].clone(), eve["emails"].clone()), (Value::Null, json!([])), "{eve}");
    issuer.stop().await;
}

#[tokio::test]
async fn runs_are_attributed_only_to_known_people_who_may_request_them_and_nobody_approves_their_own() {
    let issuer = OidcIssuer::start().await;
    let app = app_with(&issuer).await;
    let portal = service_account(&app, "portal", "olivia@example.com").await;
    // An account is accountable to a known person only.
    let ghost = json!({"name": "ghost-bot", "owner": "ghost@example.com"});
    let (status, problem) = admin(&app, "POST", "/v1/service-accounts", Some(ghost)).await;
    assert_eq!((status, problem["field"].as_str()), (404, Some("owner")), "{problem}");

    // Unknown, malformed (Markdown, mentions, line breaks), or without runs.create there: refused.
    let (status, problem) =
        call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/ledger", "nobody@example.com"))).await;
    assert_eq!((status, problem["field"].as_str()), (403, Some("on_behalf_of")), "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("not a known person"), "{problem}");
    for forged in ["[bob](https://evil.example)", "bob@example.com\n\n**Approved**", "@security-team", "<b>bob</b>"] {
        let (status, problem) = call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/ledger", forged))).await;
        assert_eq!((status, problem["field"].as_str()), (400, Some("on_behalf_of")), "{forged:?}: {problem}");
    }
    assert_eq!(call(&app, "GET", "/v1/queue", &issuer.token("bob", &[]), None).await.0, 403, "bob signs in");
    let (status, problem) =
        call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/ledger", "bob@example.com"))).await;
    assert_eq!(status, 403, "bob may not request runs anywhere: {problem}");
    assert!(problem["detail"].as_str().unwrap().contains("runs.create"), "{problem}");
    bind(&app, "user:bob@example.com", "requester", "repo:acme/ledger").await;
    let (status, _) = call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/widgets", "bob@example.com"))).await;
    assert_eq!(status, 403, "bob may request runs on the ledger only");
    let (status, accepted) =
        call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/ledger", "Bob@Example.com"))).await;
    assert_eq!(status, 202, "{accepted}");
    let run = app.run(accepted["id"].as_str().unwrap()).await;
    assert_eq!(
        (run["requested_by"].as_str(), run["via"].as_str(), run["submitted_by"].as_str()),
        (Some("bob@example.com"), Some("service-account:portal"), Some("olivia@example.com"))
    );

    // Someone who never signed in is declared by an administrator first.
    let (status, carol) = admin(&app, "POST", "/v1/people", Some(json!({"email": "carol@example.com"}))).await;
    assert_eq!((status, carol["id"].as_str()), (201, Some("declared#carol@example.com")), "{carol}");
    assert_eq!(admin(&app, "POST", "/v1/people", Some(json!({"email": "carol@example.com"}))).await.0, 409);
    assert_eq!(admin(&app, "POST", "/v1/people", Some(json!({"email": "**carol**"}))).await.0, 400);
    bind(&app, "user:carol@example.com", "requester", "tenant:payments").await;
    let (status, _) = call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/ledger", "carol@example.com"))).await;
    assert_eq!(status, 202);

    // Lina approves, and owns a service account: a run requested through it
    // for Bob is still hers to keep her hands off.
    let (status, _) = admin(&app, "PUT", "/v1/policies/tenants/payments", Some(json!({"approval": "always"}))).await;
    assert_eq!(status, 200);
    let linas_bot = service_account(&app, "lina-bot", "lina@example.com").await;
    let (status, held) =
        call(&app, "POST", "/v1/runs", &linas_bot, Some(run_on("acme/ledger", "bob@example.com"))).await;
    assert_eq!((status, held["state"].as_str()), (202, Some("awaiting_approval")), "{held}");
    let approve = format!("/v1/runs/{}/approve", held["id"].as_str().unwrap());
    let (status, problem) = call(&app, "POST", &approve, &issuer.token("lina", &["leads"]), None).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["type"], "https://paddock.dev/problems/self-approval");
    // Nor with a token that carries no address, naming her by subject only.
    let mut claims = issuer.claims("lina", &["leads"]);
    claims.as_object_mut().unwrap().remove("email");
    let (status, problem) = call(&app, "POST", &approve, &issuer.sign(&claims, false), None).await;
    assert_eq!((status, problem["type"].as_str()), (403, Some("https://paddock.dev/problems/self-approval")));
    let (status, problem) = call(&app, "POST", &approve, &issuer.token("bob", &["leads"]), None).await;
    assert_eq!(status, 403, "the person it is for cannot approve it either: {problem}");
    let (status, approved) = call(&app, "POST", &approve, &issuer.token("lee", &["leads"]), None).await;
    assert_eq!((status, approved["state"].as_str()), (200, Some("queued")), "{approved}");
    issuer.stop().await;
}

#[tokio::test]
async fn groups_count_for_attribution_only_while_the_identity_provider_recently_vouched_for_them() {
    let issuer = OidcIssuer::start().await;
    let mut oidc: Value = serde_json::from_str(&issuer.config_json(&json!({"devs": ["requester"]}))).unwrap();
    oidc["groups_trusted_seconds"] = json!(0);
    let oidc = oidc.to_string();
    let app = tests::spawn_app(&[("PADDOCK_IDENTITY__OIDC", oidc.as_str())]).await;
    let portal = service_account(&app, "portal", "olivia@example.com").await;
    // Bob signed in as a developer a moment ago; he may have left the group since.
    assert_eq!(call(&app, "GET", "/v1/runs", &issuer.token("bob", &["devs"]), None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, problem) =
        call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/widgets", "bob@example.com"))).await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("runs.create"), "{problem}");
    // A binding to him counts whenever.
    bind(&app, "user:bob@example.com", "requester", "global").await;
    let (status, _) = call(&app, "POST", "/v1/runs", &portal, Some(run_on("acme/widgets", "bob@example.com"))).await;
    assert_eq!(status, 202);
    issuer.stop().await;
}
