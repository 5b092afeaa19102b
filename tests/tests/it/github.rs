//! Issue to pull request against the GitHub emulator: webhooks start runs,
//! the reference agent (driven by a scripted model through the gateway)
//! edits the repository in its sandbox, and the worker pushes a branch and
//! opens a draft pull request with a token for that one repository, revoked
//! when the run ends.

use std::time::Duration;

use serde_json::{Value, json};
use tests::github::GitHub;
use tests::providers::EmulatedProviders;
use tests::{TestApp, spawn_app};

/// The model's turns: look, fix, check, done.
const FIX: &[&str] = &[
    "Let me look first.\n```bash\ncat README.md\n```",
    "```bash\nsed -i 's/wrold/world/' README.md && python3 -m pytest -q 2>/dev/null || echo 'no tests here'\n```",
    "```bash\ngit diff --stat\n```",
    "The greeting is fixed.\nPADDOCK_DONE",
];

pub(crate) struct Forge {
    pub(crate) github: GitHub,
    pub(crate) providers: EmulatedProviders,
    pub(crate) app: TestApp,
    pub(crate) repo: String,
}

/// The emulator, a scripted model and an app wired to both, with a fresh
/// repository where alice may write and mallory may only read.
async fn forge(agent: &str, script: &[&str]) -> Forge {
    forge_with(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", agent)], script).await
}

/// Like [`forge`], with any settings.
pub(crate) async fn forge_with(settings: &[(&str, &str)], script: &[&str]) -> Forge {
    forge_on(EmulatedProviders::start().await, settings, script).await
}

/// Like [`forge_with`], on providers the caller started.
async fn forge_on(providers: EmulatedProviders, settings: &[(&str, &str)], script: &[&str]) -> Forge {
    let github = GitHub::start().await;
    providers.script(script);
    let provider = json!({"scripted": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-scripted"]}}).to_string();
    let app_id = github.app_id.to_string();
    let key_file = github.private_key_file.display().to_string();
    let mut vars = vec![
        ("PADDOCK_GATEWAY__PROVIDERS", provider.as_str()),
        ("PADDOCK_GATEWAY__ALLOWED_PROVIDERS", r#"["scripted"]"#),
        ("PADDOCK_GIT__BASE_URL", github.git_url.as_str()),
        ("PADDOCK_GITHUB__API_URL", github.api_url.as_str()),
        ("PADDOCK_GITHUB__APP_ID", app_id.as_str()),
        ("PADDOCK_GITHUB__PRIVATE_KEY_FILE", key_file.as_str()),
        ("PADDOCK_GITHUB__WEBHOOK_SECRET", github.webhook_secret.as_str()),
        ("PADDOCK_GITHUB__BOT_LOGIN", github.bot_login.as_str()),
        ("PADDOCK_IDENTITY__GITHUB_LOGINS", r#"{"alice": "alice@example.com", "mallory": "mallory@example.com"}"#),
    ];
    // The test's own settings win.
    vars.extend(settings);
    let app = spawn_app(&vars).await;
    let repo = format!("repo-{}", ulid::Ulid::new().to_string().to_lowercase());
    let files: &[(&str, &[u8])] = &[("README.md", b"# Widgets\n\nhello wrold\n"), ("src/app.py", b"print('hi')\n")];
    // bob may write but is linked to no person.
    github.create_repo("acme", &repo, files, &[("alice", "write"), ("mallory", "read"), ("bob", "write")]);
    Forge { github, providers, app, repo: format!("acme/{repo}") }
}

pub(crate) const REFERENCE_AGENT: &str = "PADDOCK_MODEL=gpt-scripted paddock-agent";

impl Forge {
    pub(crate) fn hook(&self) -> String {
        self.app.url("/v1/webhooks/github")
    }

    /// Labels a new issue as `sender` and returns the webhook's answer.
    async fn label_new_issue(&self, sender: &str) -> (u64, u16, Value) {
        let issue = self.github.open_issue(&self.repo, "Fix the greeting", "The README says `hello wrold`.");
        let (status, body) = self.github.label_issue(&self.hook(), &self.repo, issue, "paddock", sender).await;
        (issue, status, body)
    }
}

/// The webhook and `POST /v1/runs` accept runs through one service: a run
/// its policy holds is reported `awaiting_approval` either way.
#[tokio::test]
async fn a_webhook_run_its_policy_holds_for_approval_says_so() {
    let forge = forge(REFERENCE_AGENT, FIX).await;
    // The test repositories are the default tenant's.
    let tenant = "default";
    let (status, _) =
        forge.app.admin_call("PUT", &format!("/v1/policies/tenants/{tenant}"), json!({"approval": "always"})).await;
    assert_eq!(status, 200);
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!((status, accepted["state"].as_str()), (202, Some("awaiting_approval")), "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(forge.app.run(id).await["state"], "awaiting_approval");
    assert_eq!(accepted["url"], format!("/v1/runs/{id}"));
}

#[tokio::test]
async fn a_labelled_issue_becomes_a_draft_pull_request_with_a_full_record() {
    let forge = forge(REFERENCE_AGENT, FIX).await;
    let worker = forge.app.spawn_worker().await;
    let (issue, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let (run, logs) = forge.app.wait_for_success(&id).await;

    // Who, which issue and repository, why it stopped.
    assert_eq!(run["requested_by"], "alice@example.com");
    assert_eq!(run["via"], "github:alice");
    assert_eq!((run["repository"].as_str(), run["issue"].as_u64()), (Some(forge.repo.as_str()), Some(issue)));
    assert_eq!(run["stop_reason"]["kind"], "completed", "{run:#}");
    let facts = &run["facts"];
    // Which model and provider, which commands, which files.
    // Four calls of 40 tokens in and 10 out each, at no price.
    let usage = json!({"tokens_in": 160, "tokens_out": 40, "cost_micro_usd": 0});
    let models = json!([{"provider": "scripted", "model": "gpt-scripted", "calls": 4, "usage": usage}]);
    assert_eq!(facts["models"], models, "{facts:#}");
    assert_eq!(facts["usage"], usage);
    let commands: Vec<&str> = facts["commands"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(commands[0], REFERENCE_AGENT);
    assert_eq!(commands[1], "cat README.md");
    assert!(commands[2].starts_with("sed -i"), "{commands:?}");
    assert_eq!(facts["files_changed"], json!(["README.md"]));
    // Which credentials: the run's token, and the one that commented.
    let credentials = facts["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 2, "{facts:#}");
    assert_eq!(
        credentials[0]["permissions"],
        json!({"contents": "write", "issues": "read", "metadata": "read", "pull_requests": "write"})
    );
    assert_eq!(credentials[0]["repositories"], json!([forge.repo]));
    assert_eq!(credentials[1]["permissions"], json!({"issues": "write", "metadata": "read"}));
    for grant in credentials {
        assert!(grant["revoked_at_ms"].as_u64().is_some(), "a token was not revoked: {grant}");
        assert_eq!(grant["fingerprint"].as_str().unwrap().len(), 44, "SHA-256, base64");
        assert!(grant["expires_at"].as_str().is_some());
    }
    // Where the pull request is.
    let pull = &facts["pull_request"];
    assert_eq!(pull["draft"], true);
    let branch = facts["branch"].as_str().unwrap();
    assert!(branch.starts_with(&format!("paddock/{issue}-")), "{branch}");
    let pulls = forge.github.pulls(&forge.repo);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(
        (pulls[0]["number"].clone(), pulls[0]["html_url"].clone()),
        (pull["number"].clone(), pull["url"].clone())
    );
    assert_eq!(pulls[0]["draft"], true);
    let body = pulls[0]["body"].as_str().unwrap();
    tests::assert_contains_all(
        body,
        &[
            &format!("Fixes #{issue}"),
            "alice@example.com",
            "via `github:alice`",
            "gpt-scripted via scripted",
            "`README.md`",
            "python3 -m pytest",
        ],
    );
    assert_eq!(forge.github.file_on_branch(&forge.repo, branch, "README.md").unwrap(), "# Widgets\n\nhello world\n");
    let message = forge.github.commit_message(&forge.repo, branch).unwrap();
    tests::assert_contains_all(
        &message,
        &[
            "Paddock <paddock[bot]@users.noreply.github.com>",
            &format!("Paddock-Run: {id}"),
            "Requested-by: alice@example.com",
            "Requested-via: github:alice",
        ],
    );
    assert_eq!(forge.github.file_on_branch(&forge.repo, "main", "README.md").unwrap(), "# Widgets\n\nhello wrold\n");
    let comments = forge.github.comments(&forge.repo, issue);
    assert_eq!(comments.len(), 1);
    assert!(comments[0]["body"].as_str().unwrap().contains(&format!("draft pull request #{}", pull["number"])));

    // Every token minted asked for one repository and no workflow or
    // administration rights, and none works any more.
    let minted = forge.github.minted_tokens();
    assert!(minted.len() >= 3, "{minted:?}");
    for (token, asked) in &minted {
        assert_eq!(asked["repositories"], json!([forge.repo.split('/').nth(1).unwrap()]));
        let permissions = asked["permissions"].as_object().unwrap();
        assert!(!permissions.contains_key("workflows") && !permissions.contains_key("administration"));
        assert!(!forge.github.token_alive(token), "a token outlived the run");
        let reuse = tests::tls::TestCa::get()
            .client()
            .get(format!("{}/repos/{}", forge.github.api_url, forge.repo))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(reuse.status().as_u16(), 401, "a revoked token still works");
    }
    assert!(!logs.contains("ghs_"), "a token reached the log");

    // One document answers the eight questions an auditor asks about the run.
    let record: Value = forge.app.get(&format!("/v1/runs/{id}/record")).await.json().await.unwrap();
    assert_eq!(record["requested"]["by"], "alice@example.com", "{record:#}");
    assert_eq!(record["requested"]["via"], "github:alice");
    assert_eq!(record["requested"]["request_event"]["method"], "github-webhook");
    let place = &record["issue_and_repository"];
    assert_eq!((place["repository"].as_str(), place["issue"].as_u64()), (Some(forge.repo.as_str()), Some(issue)));
    assert_eq!(place["base_commit"], facts["base_commit"]);
    assert_eq!(record["models"], facts["models"]);
    assert_eq!(record["credentials"], facts["credentials"]);
    assert_eq!(record["commands"], facts["commands"]);
    assert_eq!(record["files_changed"], json!(["README.md"]));
    assert_eq!(record["pull_request"]["pull_request"]["url"], pull["url"]);
    assert_eq!(record["stop"]["reason"]["kind"], "completed");
    assert_eq!(record["sandbox"]["policy"]["egress"], "none");
    // No token value reached the audit trail.
    let trail = forge.app.audit_trail_text().await;
    for action in [
        "run.request",
        "run.claim",
        "sandbox.create",
        "command.run",
        "model.call",
        "files.change",
        "credential.grant",
        "credential.revoke",
        "branch.push",
        "pull_request.open",
        "run.stop",
    ] {
        assert!(trail.contains(&format!("\"action\":\"{action}\"")), "no {action} event in the trail");
    }
    // The events API answers for the whole run, worker events included.
    let events: Value = forge.app.get(&format!("/v1/audit/events?object={id}")).await.json().await.unwrap();
    let actions: Vec<&str> = events.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!((actions.first(), actions.last()), (Some(&"run.request"), Some(&"run.stop")), "{actions:?}");
    assert!(actions.contains(&"pull_request.open") && actions.contains(&"credential.revoke"), "{actions:?}");
    // Claims are written before the sandbox starts, what it did after.
    let stage = |action: &str| {
        let line = trail.lines().find(|l| l.contains(&format!("\"action\":\"{action}\""))).unwrap();
        serde_json::from_str::<Value>(line).unwrap()["event"]["stage"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        (stage("run.claim"), stage("command.run"), stage("run.stop")),
        ("intent".into(), "outcome".into(), "outcome".into())
    );
    for (token, _) in &minted {
        assert!(!trail.contains(token.as_str()) && !record.to_string().contains(token.as_str()));
    }
    worker.shutdown().await;
    forge.providers.stop().await;
}

#[tokio::test]
async fn a_label_from_someone_without_write_access_starts_nothing_and_says_so() {
    let forge = forge(REFERENCE_AGENT, FIX).await;
    let (issue, status, answer) = forge.label_new_issue("mallory").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "refused");
    let runs: Value = forge.app.get("/v1/runs").await.json().await.unwrap();
    assert!(runs["runs"].as_array().unwrap().is_empty(), "{runs}");
    let comments = forge.github.comments(&forge.repo, issue);
    assert_eq!(comments.len(), 1);
    assert!(comments[0]["body"].as_str().unwrap().contains("@mallory"), "{comments:?}");
    assert!(forge.github.pulls(&forge.repo).is_empty());
}

#[tokio::test]
async fn a_label_from_a_login_not_linked_to_a_person_starts_nothing_and_says_so() {
    let forge = forge(REFERENCE_AGENT, FIX).await;
    let (issue, status, answer) = forge.label_new_issue("eve").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "refused");
    assert_eq!(answer["reason"], "the GitHub login is not linked to a person");
    let runs: Value = forge.app.get("/v1/runs").await.json().await.unwrap();
    assert!(runs["runs"].as_array().unwrap().is_empty(), "{runs}");
    let comments = forge.github.comments(&forge.repo, issue);
    assert!(comments[0]["body"].as_str().unwrap().contains("identity.github_logins"), "{comments:?}");
}

/// A webhook run's tenant is the one owning its repository, as for the API;
/// an issue on a repository nobody owns gets a comment and no run.
#[tokio::test]
async fn a_webhook_run_belongs_to_the_tenant_owning_its_repository() {
    let forge = forge_with(&[("PADDOCK_TENANTS__DEFAULT__REPOSITORIES", r#"["acme/other"]"#)], FIX).await;
    let (issue, status, refused) = forge.label_new_issue("alice").await;
    assert_eq!((status, refused["status"].as_str()), (200, Some("refused")), "{refused}");
    let comments = forge.github.comments(&forge.repo, issue);
    assert!(comments.iter().any(|c| c["body"].as_str().unwrap().contains("no tenant owns")), "{comments:?}");

    let (status, _) =
        forge.app.admin_call("PUT", "/v1/tenants/widgets", json!({"repositories": [forge.repo.clone()]})).await;
    assert_eq!(status, 200);
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(forge.app.run(accepted["id"].as_str().unwrap()).await["tenant"], "widgets");
}

#[tokio::test]
async fn forged_replayed_and_unrelated_deliveries_start_nothing() {
    let forge = forge(REFERENCE_AGENT, FIX).await;
    let issue = forge.github.open_issue(&forge.repo, "Fix the greeting", "");
    let payload = json!({
        "action": "labeled", "label": {"name": "paddock"}, "sender": {"login": "alice"},
        "issue": {"number": issue, "title": "Fix the greeting", "body": ""},
        "repository": {"full_name": forge.repo, "default_branch": "main"},
    });
    let hook = forge.hook();
    let forged = forge.github.deliver(&hook, "issues", "d-forged", &payload, Some("sha256=00ff")).await;
    assert_eq!(forged.0, 401, "{:?}", forged.1);
    let unsigned = reqwest::Client::new().post(&hook).header("x-github-event", "issues").json(&payload).send().await;
    assert_eq!(unsigned.unwrap().status().as_u16(), 401);
    let (status, first) = forge.github.deliver(&hook, "issues", "d-1", &payload, None).await;
    assert_eq!(status, 202, "{first}");
    let (status, replay) = forge.github.deliver(&hook, "issues", "d-1", &payload, None).await;
    assert_eq!(status, 409, "a replayed delivery was accepted: {replay}");
    assert_eq!(replay["type"], "https://paddock.dev/problems/replayed-delivery");
    let mut other = payload.clone();
    other["label"]["name"] = json!("bug");
    let (status, ignored) = forge.github.deliver(&hook, "issues", "d-2", &other, None).await;
    assert_eq!((status, ignored["status"].as_str()), (200, Some("ignored")));
    let runs: Value = forge.app.get("/v1/runs").await.json().await.unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "only the genuine delivery started a run");
}

#[tokio::test]
async fn assigning_the_issue_to_the_app_starts_a_run() {
    let forge = forge(REFERENCE_AGENT, FIX).await;
    let issue = forge.github.open_issue(&forge.repo, "Fix the greeting", "");
    let (status, body) =
        forge.github.assign_issue(&forge.hook(), &forge.repo, issue, &forge.github.bot_login, "alice").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = forge.github.assign_issue(&forge.hook(), &forge.repo, issue, "bob", "alice").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ignored")));
}

#[tokio::test]
async fn a_branch_a_ruleset_protects_is_never_pushed() {
    let forge = forge(REFERENCE_AGENT, FIX).await;
    forge.github.protect(&forge.repo, "paddock/*", true);
    let worker = forge.app.spawn_worker().await;
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202);
    let run = forge.app.wait_until_finished(accepted["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(run["stop_reason"]["kind"], "protected_branch_refused", "{run:#}");
    assert!(run["facts"]["pull_request"].is_null());
    assert!(forge.github.pulls(&forge.repo).is_empty());
    let branch = run["stop_reason"]["branch"].as_str().unwrap();
    assert!(forge.github.file_on_branch(&forge.repo, branch, "README.md").is_none(), "the branch was pushed");
    assert!(run["facts"]["credentials"][0]["revoked_at_ms"].as_u64().is_some());
    worker.shutdown().await;
}

/// The reference agent, publishing to forks under `acme-forks`.
const FORK_MODE: &[(&str, &str)] = &[
    ("PADDOCK_AGENTS__DEFAULT__COMMAND", REFERENCE_AGENT),
    ("PADDOCK_PUBLISH__MODE", "fork"),
    ("PADDOCK_PUBLISH__FORK_OWNER", "acme-forks"),
];

/// With `publish.mode = "fork"` the agent's branch never enters the
/// repository (whose CI would run it with the repository's secrets): it goes
/// to the App's fork, and the pull request comes from there.
#[tokio::test]
async fn in_fork_mode_the_branch_goes_to_the_fork_and_the_repository_never_holds_it() {
    let forge = forge_with(FORK_MODE, FIX).await;
    let fork = forge.github.fork_repo(&forge.repo, "acme-forks");
    let worker = forge.app.spawn_worker().await;
    let (issue, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let (run, logs) = forge.app.wait_for_success(id).await;
    worker.shutdown().await;
    let facts = &run["facts"];
    let branch = facts["branch"].as_str().unwrap();
    assert!(branch.starts_with(&format!("paddock/{issue}-")), "{branch}");
    let trail = forge.app.audit_trail_text().await;
    let push = trail.lines().find(|l| l.contains(id) && l.contains("\"branch.push\"")).expect("branch.push");
    assert!(push.contains(&format!("\"repository\":\"{fork}\"")), "{push}");

    // The change is on the fork's branch; the repository has only main.
    assert_eq!(forge.github.branches(&forge.repo), ["main"], "the repository holds the agent's branch");
    let readme = forge.github.file_on_branch(&fork, branch, "README.md").expect("the branch is on the fork");
    assert!(readme.contains("hello world"), "{readme}");
    assert!(logs.contains(&format!("paddock: pushed {fork}:{branch}; draft pull request")), "{logs}");

    // The draft is on the repository, from the fork.
    let pulls = forge.github.pulls(&forge.repo);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0]["head"]["label"], format!("acme-forks:{branch}"));
    assert_eq!(pulls[0]["head"]["repo"]["full_name"], fork);
    assert_eq!(pulls[0]["draft"], true);
    assert_eq!(facts["pull_request"]["head_repository"], fork);
    assert_eq!(facts["pull_request"]["number"], pulls[0]["number"]);

    // The run's token for the repository could not push; the fork's token
    // opened the fork alone; both were revoked.
    let credentials = facts["credentials"].as_array().unwrap();
    assert_eq!(credentials.len(), 3, "run, fork and comment tokens: {facts:#}");
    let by_purpose = |purpose: &str| {
        credentials.iter().find(|c| c["purpose"] == purpose).unwrap_or_else(|| panic!("{purpose}: {facts:#}"))
    };
    let run_token = by_purpose("clone and pull request (the branch goes to the fork)");
    assert_eq!(
        run_token["permissions"],
        json!({"contents": "read", "issues": "read", "metadata": "read", "pull_requests": "write"})
    );
    assert_eq!(run_token["repositories"], json!([forge.repo]));
    let fork_token = by_purpose("push to the fork");
    assert_eq!(fork_token["permissions"], json!({"contents": "write", "metadata": "read"}));
    assert_eq!(fork_token["repositories"], json!([fork]));
    assert!(credentials.iter().all(|c| c["revoked_at_ms"].as_u64().is_some()), "{credentials:?}");
}

/// Fork mode with no fork, or with a repository there that is not a fork
/// of this one, pushes nothing anywhere and says what to do.
#[tokio::test]
async fn in_fork_mode_a_missing_or_unrelated_fork_stops_the_run_and_nothing_is_pushed() {
    let missing = forge_with(FORK_MODE, FIX).await;
    let worker = missing.app.spawn_worker().await;
    let (_, status, accepted) = missing.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    let run = missing.app.wait_until_finished(accepted["id"].as_str().unwrap()).await;
    worker.shutdown().await;
    let name = missing.repo.split_once('/').unwrap().1;
    assert_eq!(run["stop_reason"]["kind"], "credential_error", "{run:#}");
    let message = run["stop_reason"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("the fork acme-forks/{name} (publish.fork_owner)")), "{message}");
    assert_eq!(missing.github.branches(&missing.repo), ["main"]);
    assert!(missing.github.pulls(&missing.repo).is_empty());

    // A repository of the same name under the fork account, not a fork.
    let unrelated = forge_with(FORK_MODE, FIX).await;
    let name = unrelated.repo.split_once('/').unwrap().1.to_owned();
    let elsewhere = unrelated.github.fork_repo(&unrelated.repo, "acme-forks-other");
    unrelated.github.fork_repo(&elsewhere, "acme-forks");
    let worker = unrelated.app.spawn_worker().await;
    let (_, _, accepted) = unrelated.label_new_issue("alice").await;
    let run = unrelated.app.wait_until_finished(accepted["id"].as_str().unwrap()).await;
    worker.shutdown().await;
    assert_eq!(run["stop_reason"]["kind"], "credential_error", "{run:#}");
    let message = run["stop_reason"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("acme-forks/{name} (publish.fork_owner) is a fork of {elsewhere}, not a fork of")),
        "{message}"
    );
    assert_eq!(unrelated.github.branches(&format!("acme-forks/{name}")), ["main"], "nothing pushed to it");
    assert!(unrelated.github.pulls(&unrelated.repo).is_empty());
}

#[tokio::test]
async fn a_run_that_changes_nothing_opens_no_pull_request_and_says_so() {
    let forge = forge(REFERENCE_AGENT, &["```bash\ncat README.md\n```"]).await;
    let worker = forge.app.spawn_worker().await;
    let (issue, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202);
    let run = forge.app.wait_until_finished(accepted["id"].as_str().unwrap()).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert!(run["facts"]["pull_request"].is_null() && run["facts"]["branch"].is_null());
    assert!(forge.github.pulls(&forge.repo).is_empty());
    let comments = forge.github.comments(&forge.repo, issue);
    assert!(comments[0]["body"].as_str().unwrap().contains("without changing anything"), "{comments:?}");
    worker.shutdown().await;
}

/// The agent plants hooks and config in its `.git` that would run on any
/// host git that honoured them, changes a file and commits it.
const PLANTER: &str = r#"MARK=/tmp/paddock-pwned-$PADDOCK_RUN_ID
printf '#!/bin/sh\ntouch %s\n' "$MARK" > .git/hooks/post-commit
cp .git/hooks/post-commit .git/hooks/pre-push
cp .git/hooks/post-commit .git/hooks/pre-commit
chmod +x .git/hooks/*
git config core.fsmonitor "touch $MARK"
git config core.hooksPath .git/hooks
git config diff.external "touch $MARK"
git config diff.noprefix true
echo planted >> README.md
git -c user.name=agent -c user.email=agent@example.com commit -qam "the agent commits its own work""#;

#[tokio::test]
async fn nothing_the_agent_writes_in_git_runs_on_the_worker() {
    let forge = forge(PLANTER, &[]).await;
    let worker = forge.app.spawn_worker().await;
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap().to_owned();
    let (run, _) = forge.app.wait_for_success(&id).await;
    assert!(run["facts"]["pull_request"]["number"].as_u64().is_some(), "{run:#}");
    // The agent's own `git commit` ran its fsmonitor in the sandbox, which
    // created files in its tree: those are its output. Nothing under .git is.
    let files: Vec<&str> = run["facts"]["files_changed"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(files.contains(&"README.md"), "the committed change was lost: {files:?}");
    assert!(files.iter().all(|f| !f.starts_with(".git")), "{files:?}");
    let mark = std::path::PathBuf::from(format!("/tmp/paddock-pwned-{id}"));
    assert!(!mark.exists(), "a hook or config the agent wrote ran on the worker");
    let branch = run["facts"]["branch"].as_str().unwrap();
    assert!(forge.github.file_on_branch(&forge.repo, branch, ".git/hooks/post-commit").is_none());
    worker.shutdown().await;
}

#[tokio::test]
async fn a_retried_publication_updates_its_pull_request_and_main_stays_protected() {
    use forge::publish::{Destination, Published, RunStory, publish};
    use forge::{GitHubApp, RUN_PERMISSIONS};
    let forge = forge(REFERENCE_AGENT, FIX).await;
    let app = GitHubApp::from_config(&forge.app.config.github, &tests::tls::trusting_outbound()).unwrap().unwrap();
    let repo: common::RepoName = forge.repo.parse().unwrap();
    let url = forge::git::clone_url(&forge.github.git_url, &repo);
    let run = common::RunId::new();
    let mut spec = tests::fixtures::run_spec("default", &forge.repo, common::Priority::Normal);
    spec.issue = Some(forge.github.open_issue(&forge.repo, "t", ""));
    let diff = b"diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -3 +3 @@\n-hello wrold\n+hello world\n";
    let mut numbers = Vec::new();
    for attempt in 0..2 {
        let credential = app.credential(&repo, "test", RUN_PERMISSIONS).await.unwrap();
        let dir = std::env::temp_dir().join(format!("paddock-publish-{run}-{attempt}"));
        let limits = forge::git::CheckoutLimits { max_bytes: 1 << 30, max_files: 1000 };
        forge::git::checkout(&url, "main", &dir, &credential.git_env(), limits).await.unwrap();
        let story = RunStory {
            run,
            spec: &spec,
            command: "agent",
            agent: None,
            models: &[],
            usage: common::Usage::default(),
            commands: &[],
            link: "http://x".to_owned(),
        };
        match publish(&app, &credential, &dir, &url, diff, &story, &Destination::Repository).await.unwrap() {
            Published::PullRequest(pushed) => numbers.push(pushed.pull_request.number),
            Published::NoChanges => panic!("the diff changed nothing"),
        }
        // The protected default branch refuses even a valid token.
        let pushed = forge::git::push(&dir, &url, "main", forge::git::PushMode::Replace, &credential.git_env()).await;
        assert!(matches!(pushed, Err(forge::git::PushError::Protected(_))), "{pushed:?}");
        credential.revoke().await;
        std::fs::remove_dir_all(&dir).ok();
    }
    assert_eq!(numbers[0], numbers[1], "a retry opened a second pull request");
    assert_eq!(forge.github.pulls(&forge.repo).len(), 1);
}

#[tokio::test]
async fn mini_swe_agent_as_shipped_turns_an_issue_into_a_pull_request() {
    // The shipped profile, with the scripted model (which answers mini's
    // `bash` tool calls).
    let mut profile = serde_json::to_value(common::config::AgentConfig::mini_swe_agent()).unwrap();
    profile["env"]["PADDOCK_MODEL"] = json!("gpt-scripted");
    let profile = profile.to_string();
    let settings = [
        ("PADDOCK_AGENTS__MINI", profile.as_str()),
        ("PADDOCK_GITHUB__AGENT_PROFILE", "mini"),
        ("PADDOCK_SANDBOX__MEMORY_BYTES", "1073741824"),
    ];
    let forge = forge_with(&settings, FIX).await;
    let worker = forge.app.spawn_worker().await;
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    let (run, logs) = forge.app.wait_for_success(accepted["id"].as_str().unwrap()).await;
    assert_eq!(run["agent_profile"], "mini");
    let facts = &run["facts"];
    assert_eq!(facts["files_changed"], json!(["README.md"]), "{facts:#}\n{logs}");
    let commands: Vec<&str> = facts["commands"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(commands[0].starts_with("mini -y"), "{commands:?}");
    assert!(commands.contains(&"cat README.md"), "the model's tool calls are the commands: {commands:?}");
    let branch = facts["branch"].as_str().unwrap();
    assert_eq!(forge.github.file_on_branch(&forge.repo, branch, "README.md").unwrap(), "# Widgets\n\nhello world\n");
    assert_eq!(forge.github.pulls(&forge.repo).len(), 1);
    worker.shutdown().await;
    forge.providers.stop().await;
}

#[tokio::test]
async fn claude_code_as_shipped_turns_an_issue_into_a_pull_request() {
    // The shipped profile in its image, the model scripted through Claude
    // Code's own Write and Bash tools.
    let providers = EmulatedProviders::start().await;
    providers.plan(&[
        tests::scripted::Step::write("README.md", "# Widgets\n\nhello world\n"),
        tests::scripted::Step::run("git diff --stat"),
    ]);
    let settings = tests::agents::agent_settings("claude-code", &providers);
    let mut vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    vars.push(("PADDOCK_GITHUB__AGENT_PROFILE", "claude-code"));
    let forge = forge_on(providers, &vars, &[]).await;
    let worker = forge.app.spawn_worker().await;
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    let (run, logs) = forge.app.wait_for_success(accepted["id"].as_str().unwrap()).await;
    assert_eq!(run["agent_profile"], "claude-code");
    let facts = &run["facts"];
    assert_eq!(facts["agent"]["name"], "claude-code", "{facts:#}");
    assert_eq!(facts["files_changed"], json!(["README.md"]), "{facts:#}\n{logs}");
    let commands: Vec<&str> = facts["commands"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(commands.contains(&"git diff --stat"), "{commands:?}");
    let branch = facts["branch"].as_str().unwrap();
    assert_eq!(forge.github.file_on_branch(&forge.repo, branch, "README.md").unwrap(), "# Widgets\n\nhello world\n");
    let pulls = forge.github.pulls(&forge.repo);
    assert_eq!(pulls.len(), 1);
    let version = tests::agents::pinned_agents()["claude-code"]["version"].as_str().unwrap().to_owned();
    let body = pulls[0]["body"].as_str().unwrap();
    assert!(body.contains(&format!("- **Agent:** `claude-code` `{version}` (profile `claude-code`")), "{body}");
    worker.shutdown().await;
    forge.providers.stop().await;
}

/// A new ed25519 key pair in `dir`: (private key file, public key line).
pub(crate) fn ssh_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(name);
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public.trim().to_owned())
}

#[tokio::test]
async fn commits_are_signed_by_the_worker_with_its_key_and_verify() {
    let dir = std::env::temp_dir().join(format!("paddock-signing-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, public) = ssh_key(&dir, "signing");
    let key_file = key.display().to_string();
    let forge = forge_with(
        &[
            ("PADDOCK_AGENTS__DEFAULT__COMMAND", REFERENCE_AGENT),
            ("PADDOCK_GITHUB__COMMIT_SIGNING_KEY_FILE", &key_file),
        ],
        FIX,
    )
    .await;
    let worker = forge.app.spawn_worker().await;
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    let (run, _) = forge.app.wait_for_success(accepted["id"].as_str().unwrap()).await;
    worker.shutdown().await;
    let printed = std::process::Command::new("ssh-keygen").arg("-lf").arg(&key).output().unwrap();
    let fingerprint = String::from_utf8_lossy(&printed.stdout).split_whitespace().nth(1).unwrap().to_owned();
    let facts = &run["facts"];
    // GitHub does not know the key yet, and the run says so.
    let expected = json!({"format": "ssh", "fingerprint": fingerprint, "github_verification": "unknown_key"});
    assert_eq!(facts["commit_signature"], expected, "{facts:#}");
    let record = forge.app.get(&format!("/v1/runs/{}/record", run["id"].as_str().unwrap())).await;
    let record: Value = record.json().await.unwrap();
    assert_eq!(record["pull_request"]["commit_signature"]["fingerprint"], fingerprint.as_str());
    // Verified against the key as an allowed signer for the commit's
    // author; refused against any other key, so the check can fail.
    let branch = facts["branch"].as_str().unwrap();
    let verify = |public: &str| {
        let signers = dir.join("allowed_signers");
        std::fs::write(&signers, format!("paddock[bot]@users.noreply.github.com {public}\n")).unwrap();
        let allowed = format!("gpg.ssh.allowedSignersFile={}", signers.display());
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(forge.github.repo_dir(&forge.repo))
            .args(["-c", &allowed, "verify-commit", "--raw", branch])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (verified, said) = verify(&public);
    assert!(verified, "the commit does not verify with the worker's key: {said}");
    let (_, other) = ssh_key(&dir, "other");
    let (verified, said) = verify(&other);
    assert!(!verified, "the commit verified against a key that did not sign it: {said}");
    // A key others can read is refused before anything is signed with it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut config = forge.app.config.github.clone();
    config.commit_signing_key_file = Some(key.clone());
    let refused = forge::GitHubApp::from_config(&config, &tests::tls::trusting_outbound()).err().unwrap().to_string();
    assert!(refused.contains("github.commit_signing_key_file") && refused.contains("chmod 600"), "{refused}");
    std::fs::remove_dir_all(&dir).ok();
    forge.providers.stop().await;
}

#[tokio::test]
async fn tokens_open_only_their_repository_and_only_until_they_expire() {
    use forge::{GitHubApp, RUN_PERMISSIONS};
    let forge = forge(REFERENCE_AGENT, FIX).await;
    forge.github.create_repo("acme", "other", &[("README.md", b"other\n")], &[]);
    let app = GitHubApp::from_config(&forge.app.config.github, &tests::tls::trusting_outbound()).unwrap().unwrap();
    let repo: common::RepoName = forge.repo.parse().unwrap();
    let credential = app.credential(&repo, "test", RUN_PERMISSIONS).await.unwrap();
    let grant = credential.grant();
    assert_eq!(grant.repositories, std::slice::from_ref(&forge.repo));
    let ls_remote = |repo: &str| {
        let url = forge::git::clone_url(&forge.github.git_url, &repo.parse().unwrap());
        std::process::Command::new("git")
            .args(["ls-remote", &url])
            .envs(credential.git_env())
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(ls_remote(&forge.repo), "the token cannot read its own repository");
    assert!(!ls_remote("acme/other"), "the token reads another repository");
    let other = credential.get_optional("/repos/acme/other").await.unwrap();
    assert!(other.is_none(), "the REST API showed another repository");
    forge.github.expire_tokens();
    assert!(!ls_remote(&forge.repo), "an expired token still reads the repository");
    let expired = credential.get(&format!("/repos/{}", forge.repo)).await;
    assert!(matches!(expired, Err(forge::ForgeError::Refused(ref m)) if m.starts_with("401")), "{expired:?}");
}

#[tokio::test]
async fn revoking_the_requester_cancels_the_run_and_kills_its_git_and_run_tokens() {
    let forge = forge("echo working; sleep 600", &[]).await;
    let worker = forge.app.spawn_worker().await;
    let (_, status, accepted) = forge.label_new_issue("alice").await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    forge.app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "running").await;
    // The agent runs once its sandbox, git token and run token are in place.
    tests::eventually(Duration::from_secs(60), "the agent started", || async {
        let logs = forge.app.get(&format!("/v1/runs/{id}/logs")).await.text().await.map_err(|e| e.to_string())?;
        if logs.contains("working") { Ok(()) } else { Err(logs) }
    })
    .await;
    let git_tokens: Vec<String> = forge
        .github
        .minted_tokens()
        .into_iter()
        .filter(|(_, asked)| asked["permissions"]["contents"] == "write")
        .map(|(token, _)| token)
        .collect();
    assert_eq!(git_tokens.len(), 1, "one git token for the run");
    assert!(forge.github.token_alive(&git_tokens[0]));

    let report: Value = forge
        .app
        .client
        .post(forge.app.url("/v1/security/revoke"))
        .bearer_auth(&forge.app.token)
        .json(&json!({"user": "alice@example.com", "reason": "account compromised"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(report["cancelled_runs"], json!([id]), "{report}");
    assert_eq!(report["run_tokens_revoked"], 1, "{report}");
    // Within seconds: the run ends cancelled by the revoker, its sandbox is gone and its git token is dead.
    let run = forge.app.wait_for(&id, Duration::from_secs(10), |r| r["state"] == "cancelled").await;
    assert_eq!(run["stop_reason"], json!({"kind": "cancelled", "by": "bootstrap-admin"}));
    assert!(forge.app.sandboxes_of(&id).await.is_empty(), "the sandbox outlived the revocation");
    assert!(!forge.github.token_alive(&git_tokens[0]), "the git token outlived the revocation");
    let credentials = run["facts"]["credentials"].as_array().cloned().unwrap_or_default();
    assert!(credentials.iter().all(|c| !c["revoked_at_ms"].is_null()), "{credentials:?}");
    assert!(forge.github.pulls(&forge.repo).is_empty(), "a revoked run published");
    worker.shutdown().await;
}
