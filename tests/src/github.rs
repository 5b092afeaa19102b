//! An emulated GitHub for tests and the demo: the REST paths Paddock uses,
//! with GitHub's authentication, status codes and error bodies, and real git
//! smart HTTP (`git http-backend`) that accepts only a live installation
//! token scoped to the repository and refuses pushes to protected branches.
//! It delivers signed webhooks as GitHub does.
//!
//! - App JWTs (RS256, `iss` = app id, at most ten minutes) open `/app/...`
//!   and `GET /repos/{o}/{r}/installation`.
//! - Installation tokens (`ghs_...`, one hour) carry the repositories and
//!   permissions asked for (a subset of the App's) and die when revoked.
//! - REST lives under `/api/v3` (the GitHub Enterprise Server layout),
//!   GraphQL at `/api/graphql` (review threads and whether they are
//!   resolved), git under `/git/{owner}/{name}.git`.
//! - Pull requests are issues too (comments on the conversation); reviews
//!   and review comments carry `path`, `line`, `side` and the `diff_hunk`
//!   GitHub cuts from the pull request's diff, and a line outside the diff
//!   is refused as GitHub refuses it.
//! - A commit's `verification` is reported as GitHub reports it, against
//!   the SSH signing keys registered for the committer's email.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::git_server::{git, http_backend};

/// An answer the emulator gives instead of going on (boxed: responses are
/// large).
type Refusal = Box<HttpResponse>;

/// Permissions the emulated App was granted by the installation.
const APP_PERMISSIONS: &[(&str, &str)] =
    &[("contents", "write"), ("pull_requests", "write"), ("issues", "write"), ("metadata", "read")];

#[derive(Default)]
struct Repo {
    id: u64,
    default_branch: String,
    protected: BTreeSet<String>,
    /// Branch pattern (`*` matches anything) → rules for matching branches
    /// (`GET rules/branches/{b}`).
    rules: BTreeMap<String, Vec<Value>>,
    /// Login → `admin`, `write`, `read` or `none`.
    collaborators: BTreeMap<String, String>,
    issues: BTreeMap<u64, Issue>,
    pulls: Vec<Value>,
    reviews: Vec<Value>,
    review_comments: Vec<Value>,
    /// First comments of the review threads someone resolved.
    resolved: BTreeSet<u64>,
    next_number: u64,
    /// The repository this one is a fork of.
    parent: Option<String>,
}

#[derive(Clone)]
struct Issue {
    title: String,
    body: String,
    labels: Vec<String>,
    comments: Vec<Value>,
}

struct Token {
    repos: Vec<String>,
    permissions: BTreeMap<String, String>,
    expires: Instant,
    revoked: bool,
}

struct State {
    app_id: u64,
    installation_id: u64,
    /// Accounts the App is installed on separately (owner → installation
    /// id); every other account is in `installation_id`.
    installations: BTreeMap<String, u64>,
    public_key: Vec<u8>,
    repos: BTreeMap<String, Repo>,
    tokens: HashMap<String, Token>,
    /// Every token minted, in order, with the permissions asked for.
    minted: Vec<(String, Value)>,
    next_comment: u64,
    /// SSH signing keys of accounts, by the account's verified email.
    signing_keys: Vec<(String, String)>,
    root: PathBuf,
    base_url: String,
}

impl State {
    fn installation_of(&self, owner: &str) -> u64 {
        self.installations.get(owner).copied().unwrap_or(self.installation_id)
    }
}

/// A review: who, `state` (`CHANGES_REQUESTED`, `COMMENTED` or
/// `APPROVED`), its text, and comments on lines of the head's files (path,
/// line on the new side, text).
pub struct Review<'a> {
    pub by: &'a str,
    pub state: &'a str,
    pub body: &'a str,
    pub comments: &'a [(&'a str, u64, &'a str)],
}

pub struct GitHub {
    /// REST base URL (`.../api/v3`), as configured for Enterprise Server.
    pub api_url: String,
    /// Git base URL: `<git_url>/<owner>/<name>.git`.
    pub git_url: String,
    pub app_id: u64,
    /// The App's private key, as a PEM file.
    pub private_key_file: PathBuf,
    pub webhook_secret: String,
    pub bot_login: String,
    state: Arc<Mutex<State>>,
    server: actix_web::dev::ServerHandle,
    client: reqwest::Client,
    root: PathBuf,
}

type Shared = web::Data<Arc<Mutex<State>>>;

impl GitHub {
    pub async fn start() -> Self {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let root = std::env::temp_dir().join(format!("paddock-github-{id}"));
        std::fs::create_dir_all(&root).expect("github root");
        let private_key_file = root.join("app.pem");
        let public_key = crate::rsa_key_pair(&private_key_file);
        let state = Arc::new(Mutex::new(State {
            app_id: 4242,
            installation_id: 777,
            installations: BTreeMap::new(),
            public_key,
            repos: BTreeMap::new(),
            tokens: HashMap::new(),
            minted: Vec::new(),
            next_comment: 1,
            signing_keys: Vec::new(),
            root: root.join("repos"),
            base_url: String::new(),
        }));
        std::fs::create_dir_all(root.join("repos")).expect("repos dir");
        let data: Shared = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .route("/git/{path:.*}", web::to(git_http))
                .route("/api/v3/repos/{o}/{r}/installation", web::get().to(repo_installation))
                .route("/api/v3/app/installations/{id}/access_tokens", web::post().to(create_token))
                .route("/api/v3/installation/token", web::delete().to(revoke_token))
                .route("/api/v3/repos/{o}/{r}", web::get().to(get_repo))
                .route("/api/v3/repos/{o}/{r}/branches/{b:.*}", web::get().to(get_branch))
                .route("/api/v3/repos/{o}/{r}/rules/branches/{b:.*}", web::get().to(branch_rules))
                .route("/api/v3/repos/{o}/{r}/collaborators/{u}/permission", web::get().to(permission))
                .route("/api/v3/repos/{o}/{r}/issues/{n}", web::get().to(get_issue))
                .route("/api/v3/repos/{o}/{r}/issues/{n}/comments", web::get().to(list_comments))
                .route("/api/v3/repos/{o}/{r}/issues/{n}/comments", web::post().to(add_comment))
                .route("/api/v3/repos/{o}/{r}/issues/comments/{id}", web::patch().to(edit_comment))
                .route("/api/v3/repos/{o}/{r}/pulls", web::get().to(list_pulls))
                .route("/api/v3/repos/{o}/{r}/pulls", web::post().to(create_pull))
                .route("/api/v3/repos/{o}/{r}/pulls/{n}", web::patch().to(update_pull))
                .route("/api/v3/repos/{o}/{r}/pulls/{n}", web::get().to(get_pull))
                .route("/api/v3/repos/{o}/{r}/pulls/{n}/reviews", web::get().to(list_reviews))
                .route("/api/v3/repos/{o}/{r}/pulls/{n}/comments", web::get().to(list_review_comments))
                .route("/api/v3/repos/{o}/{r}/pulls/comments/{id}", web::get().to(get_review_comment))
                .route("/api/v3/repos/{o}/{r}/pulls/{n}/comments/{id}/replies", web::post().to(reply_review_comment))
                .route("/api/v3/repos/{o}/{r}/commits/{sha}", web::get().to(get_commit))
                .route("/api/graphql", web::post().to(graphql))
                .default_service(web::to(|| async { not_found() }))
        })
        .workers(2)
        .bind_rustls_0_23(("127.0.0.1", 0), crate::tls::server_config())
        .expect("bind github emulator");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        let base = format!("https://127.0.0.1:{port}");
        state.lock().unwrap().base_url = base.clone();
        let app_id = state.lock().unwrap().app_id;
        Self {
            api_url: format!("{base}/api/v3"),
            git_url: format!("{base}/git"),
            app_id,
            private_key_file,
            webhook_secret: format!("whsec-{id}"),
            bot_login: "paddock-app[bot]".to_owned(),
            state,
            server: handle,
            client: reqwest::Client::new(),
            root,
        }
    }

    /// Creates `owner/name` (one commit on `main` holding `files`) in the
    /// App's installation, with `collaborators` (login → permission).
    pub fn create_repo(&self, owner: &str, name: &str, files: &[(&str, &[u8])], collaborators: &[(&str, &str)]) {
        let root = self.state.lock().unwrap().root.clone();
        crate::git_server::create_bare_repo(&root, owner, name, files);
        let mut state = self.state.lock().unwrap();
        let id = 1000 + state.repos.len() as u64;
        let repo = Repo {
            id,
            default_branch: "main".to_owned(),
            protected: BTreeSet::from(["main".to_owned()]),
            collaborators: collaborators.iter().map(|(u, p)| ((*u).to_owned(), (*p).to_owned())).collect(),
            next_number: 1,
            ..Repo::default()
        };
        state.repos.insert(format!("{owner}/{name}"), repo);
        write_protection_hook(&root, &state);
    }

    /// Forks `repo` into `owner`, an account with its own installation of
    /// the App (as an organization holding Paddock's forks would be), and
    /// returns the fork's full name.
    pub fn fork_repo(&self, repo: &str, owner: &str) -> String {
        let (root, name) = {
            let mut state = self.state.lock().unwrap();
            let next = 900 + state.installations.len() as u64;
            state.installations.entry(owner.to_owned()).or_insert(next);
            (state.root.clone(), repo.split_once('/').expect("owner/name").1.to_owned())
        };
        let fork = format!("{owner}/{name}");
        std::fs::create_dir_all(root.join(owner)).expect("fork owner dir");
        git(&root, &["clone", "-q", "--bare", &format!("{repo}.git"), &format!("{fork}.git")]);
        let mut state = self.state.lock().unwrap();
        let id = 1000 + state.repos.len() as u64;
        let forked = Repo {
            id,
            default_branch: "main".to_owned(),
            protected: BTreeSet::from(["main".to_owned()]),
            next_number: 1,
            parent: Some(repo.to_owned()),
            ..Repo::default()
        };
        state.repos.insert(fork.clone(), forked);
        write_protection_hook(&root, &state);
        fork
    }

    /// The branches of `repo`.
    pub fn branches(&self, repo: &str) -> Vec<String> {
        let dir = self.state.lock().unwrap().root.join(format!("{repo}.git"));
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["for-each-ref", "--format=%(refname:short)", "refs/heads"])
            .output()
            .expect("git for-each-ref");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    /// Opens an issue and returns its number.
    pub fn open_issue(&self, repo: &str, title: &str, body: &str) -> u64 {
        let mut state = self.state.lock().unwrap();
        let repo = state.repos.get_mut(repo).expect("repo exists");
        let number = repo.next_number;
        repo.next_number += 1;
        let issue = Issue { title: title.to_owned(), body: body.to_owned(), labels: Vec::new(), comments: Vec::new() };
        repo.issues.insert(number, issue);
        number
    }

    /// Marks `branch` protected, or gives branches matching it (`*` is a
    /// wildcard) a ruleset rule.
    pub fn protect(&self, repo: &str, branch: &str, by_ruleset: bool) {
        let mut state = self.state.lock().unwrap();
        let repo = state.repos.get_mut(repo).expect("repo exists");
        if by_ruleset {
            let rule = json!({"type": "update", "ruleset_source_type": "Repository", "ruleset_source": repo.id.to_string(), "ruleset_id": 1});
            repo.rules.insert(branch.to_owned(), vec![rule]);
        } else {
            repo.protected.insert(branch.to_owned());
        }
        let root = state.root.clone();
        write_protection_hook(&root, &state);
    }

    /// Adds `label` to the issue as `sender` and delivers the `issues`
    /// webhook to `target`, signed. Returns the delivery's HTTP status.
    pub async fn label_issue(&self, target: &str, repo: &str, number: u64, label: &str, sender: &str) -> (u16, Value) {
        let payload = {
            let mut state = self.state.lock().unwrap();
            let base = state.base_url.clone();
            let entry = state.repos.get_mut(repo).expect("repo exists");
            let repo_id = entry.id;
            let issue = entry.issues.get_mut(&number).expect("issue exists");
            issue.labels.push(label.to_owned());
            issue_event("labeled", &base, repo, repo_id, number, issue, json!({"label": {"name": label}}), sender)
        };
        self.deliver(target, "issues", &ulid::Ulid::new().to_string(), &payload, None).await
    }

    /// Assigns the issue to `assignee` as `sender` and delivers the webhook.
    pub async fn assign_issue(
        &self,
        target: &str,
        repo: &str,
        number: u64,
        assignee: &str,
        sender: &str,
    ) -> (u16, Value) {
        let payload = {
            let state = self.state.lock().unwrap();
            let entry = state.repos.get(repo).expect("repo exists");
            let issue = entry.issues.get(&number).expect("issue exists");
            let extra = json!({"assignee": {"login": assignee, "type": if assignee.ends_with("[bot]") { "Bot" } else { "User" }}});
            issue_event("assigned", &state.base_url, repo, entry.id, number, issue, extra, sender)
        };
        self.deliver(target, "issues", &ulid::Ulid::new().to_string(), &payload, None).await
    }

    /// Posts `payload` as GitHub would: `X-GitHub-Event`, `X-GitHub-Delivery`
    /// and `X-Hub-Signature-256` over the exact body (or `signature`, to
    /// forge one).
    pub async fn deliver(
        &self,
        target: &str,
        event: &str,
        delivery: &str,
        payload: &Value,
        signature: Option<&str>,
    ) -> (u16, Value) {
        let body = payload.to_string();
        let signature = signature.map(str::to_owned).unwrap_or_else(|| sign(&self.webhook_secret, body.as_bytes()));
        let response = self
            .client
            .post(target)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/emulated")
            .header("x-github-event", event)
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .body(body)
            .send()
            .await
            .expect("deliver webhook");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The pull requests of `repo`, as the REST API shows them.
    pub fn pulls(&self, repo: &str) -> Vec<Value> {
        self.state.lock().unwrap().repos.get(repo).map(|r| r.pulls.clone()).unwrap_or_default()
    }

    /// The comments on an issue.
    pub fn comments(&self, repo: &str, number: u64) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state.repos.get(repo).and_then(|r| r.issues.get(&number)).map(|i| i.comments.clone()).unwrap_or_default()
    }

    /// Installation tokens minted so far, with what each asked for.
    pub fn minted_tokens(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().minted.clone()
    }

    /// Moves every token's expiry to now, as if an hour had passed.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for token in self.state.lock().unwrap().tokens.values_mut() {
            token.expires = now;
        }
    }

    /// Whether a token still works (not revoked, not expired).
    pub fn token_alive(&self, token: &str) -> bool {
        let state = self.state.lock().unwrap();
        state.tokens.get(token).is_some_and(|t| !t.revoked && Instant::now() < t.expires)
    }

    /// The file at `path` on `branch`, read from the bare repository.
    pub fn file_on_branch(&self, repo: &str, branch: &str, path: &str) -> Option<String> {
        let dir = self.state.lock().unwrap().root.join(format!("{repo}.git"));
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["show", &format!("{branch}:{path}")])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The bare repository behind `repo`, as git stores it.
    pub fn repo_dir(&self, repo: &str) -> std::path::PathBuf {
        self.state.lock().unwrap().root.join(format!("{repo}.git"))
    }

    /// The last commit message on `branch`.
    pub fn commit_message(&self, repo: &str, branch: &str) -> Option<String> {
        let dir = self.state.lock().unwrap().root.join(format!("{repo}.git"));
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(["log", "-1", "--format=%an <%ae>%n%B", branch])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A review of pull request `number` (see [`Review`]), and GitHub's
    /// deliveries after it: `pull_request_review_comment.created` for each
    /// comment, then `pull_request_review.submitted`, whose answer is
    /// returned.
    pub async fn review_pull(&self, target: &str, repo: &str, number: u64, review: Review<'_>) -> (u16, Value) {
        let Review { by: reviewer, state, body, comments } = review;
        let (review, created, payload_base) = {
            let mut locked = self.state.lock().unwrap();
            let review_id = next_id(&mut locked);
            let mut created = Vec::new();
            for (path, line, text) in comments {
                let hunk = diff_hunk(&locked, repo, number, path, *line).unwrap_or_else(|| {
                    panic!("pull_request_review_thread.line {line} of {path} must be part of the diff")
                });
                let id = next_id(&mut locked);
                let comment = review_comment_json(
                    &locked,
                    repo,
                    number,
                    id,
                    Some(review_id),
                    None,
                    path,
                    *line,
                    &hunk,
                    text,
                    reviewer,
                );
                created.push(comment);
            }
            let head = pull_head_sha(&locked, repo, number);
            let review = json!({"id": review_id, "user": {"login": reviewer, "type": "User"}, "body": body, "state": state,
                "commit_id": head, "submitted_at": time_string(SystemTime::now()),
                "html_url": format!("{}/{repo}/pull/{number}#pullrequestreview-{review_id}", locked.base_url)});
            let entry = locked.repos.get_mut(repo).expect("repo exists");
            entry.reviews.push(json!({"pull": number, "review": review.clone()}));
            entry.review_comments.extend(created.iter().cloned());
            (review, created, pull_event_base(&locked, repo, number, reviewer))
        };
        for comment in &created {
            let mut payload = payload_base.clone();
            payload["action"] = json!("created");
            payload["comment"] = comment.clone();
            self.deliver(target, "pull_request_review_comment", &ulid::Ulid::new().to_string(), &payload, None).await;
        }
        let mut payload = payload_base;
        payload["action"] = json!("submitted");
        // Webhooks spell the review state in lowercase, REST in uppercase.
        let mut shown = review.clone();
        shown["state"] = json!(state.to_lowercase());
        payload["review"] = shown;
        self.deliver(target, "pull_request_review", &ulid::Ulid::new().to_string(), &payload, None).await
    }

    /// `user` answers review comment `to` (a thread's first comment) and
    /// GitHub delivers `pull_request_review_comment.created`.
    pub async fn reply_in_thread(
        &self,
        target: &str,
        repo: &str,
        number: u64,
        to: u64,
        user: &str,
        body: &str,
    ) -> (u16, Value) {
        let (comment, payload) = {
            let mut locked = self.state.lock().unwrap();
            let id = next_id(&mut locked);
            let root =
                locked.repos[repo].review_comments.iter().find(|c| c["id"] == to).cloned().expect("comment exists");
            let comment = reply_json(&locked, repo, number, id, &root, body, user);
            locked.repos.get_mut(repo).expect("repo exists").review_comments.push(comment.clone());
            (comment, pull_event_base(&locked, repo, number, user))
        };
        let mut payload = payload;
        payload["action"] = json!("created");
        payload["comment"] = comment;
        self.deliver(target, "pull_request_review_comment", &ulid::Ulid::new().to_string(), &payload, None).await
    }

    /// `user` comments on pull request `number`'s conversation and GitHub
    /// delivers `issue_comment.created`.
    pub async fn comment_on_pull(&self, target: &str, repo: &str, number: u64, user: &str, body: &str) -> (u16, Value) {
        let payload = {
            let mut locked = self.state.lock().unwrap();
            let id = next_id(&mut locked);
            let base = locked.base_url.clone();
            let entry = locked.repos.get_mut(repo).expect("repo exists");
            let repo_id = entry.id;
            let issue = entry.issues.get_mut(&number).expect("the pull request is an issue");
            let comment = json!({"id": id, "body": body, "user": {"login": user, "type": "User"},
                "created_at": time_string(SystemTime::now()),
                "html_url": format!("{base}/{repo}/pull/{number}#issuecomment-{id}")});
            issue.comments.push(comment.clone());
            let pull = json!({"url": format!("{base}/api/v3/repos/{repo}/pulls/{number}"), "html_url": format!("{base}/{repo}/pull/{number}")});
            let mut payload =
                issue_event("created", &base, repo, repo_id, number, issue, json!({"comment": comment}), user);
            payload["issue"]["pull_request"] = pull;
            payload
        };
        self.deliver(target, "issue_comment", &ulid::Ulid::new().to_string(), &payload, None).await
    }

    /// Adds `public_key` (an OpenSSH public key line) as an SSH signing key
    /// of the account whose verified email is `email`, as a person does in
    /// Settings → SSH and GPG keys: commits signed with it by that email
    /// show Verified.
    pub fn add_signing_key(&self, email: &str, public_key: &str) {
        self.state.lock().unwrap().signing_keys.push((email.to_owned(), public_key.trim().to_owned()));
    }

    /// Marks the thread that review comment `root` starts resolved.
    pub fn resolve_thread(&self, repo: &str, root: u64) {
        self.state.lock().unwrap().repos.get_mut(repo).expect("repo exists").resolved.insert(root);
    }

    /// The review comments on pull request `number`, replies included.
    pub fn review_comments(&self, repo: &str, number: u64) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state.repos[repo].review_comments.iter().filter(|c| c["pull"] == number).cloned().collect()
    }

    /// A person's commit on `branch` (`path` set to `content`), pushed
    /// straight into the repository. Returns the new head.
    pub fn push_as_person(&self, repo: &str, branch: &str, path: &str, content: &str, author: &str) -> String {
        let dir = self.repo_dir(repo);
        let work = std::env::temp_dir().join(format!("paddock-person-{}", ulid::Ulid::new()));
        let run = |args: &[&str], cwd: &std::path::Path| {
            let out = std::process::Command::new("git")
                .current_dir(cwd)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .args(["-c", &format!("user.name={author}"), "-c", &format!("user.email={author}@example.com")])
                .args(args)
                .output()
                .expect("git");
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        run(&["clone", "-q", "--branch", branch, dir.to_str().unwrap(), work.to_str().unwrap()], &std::env::temp_dir());
        std::fs::write(work.join(path), content).expect("write file");
        run(&["add", path], &work);
        run(&["commit", "-q", "--no-gpg-sign", "-m", &format!("{author} edits {path}")], &work);
        run(&["push", "-q", "origin", &format!("HEAD:refs/heads/{branch}")], &work);
        let head = run(&["rev-parse", "HEAD"], &work);
        std::fs::remove_dir_all(&work).ok();
        head
    }

    /// The commit `branch` points at.
    pub fn head_of(&self, repo: &str, branch: &str) -> Option<String> {
        branch_head(&self.repo_dir(repo), branch)
    }

    /// The commits on `branch` that are not on `base`, newest first.
    pub fn commits_between(&self, repo: &str, base: &str, branch: &str) -> Vec<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(self.repo_dir(repo))
            .args(["rev-list", &format!("{base}..{branch}")])
            .output()
            .expect("git rev-list");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

fn next_id(state: &mut State) -> u64 {
    let id = state.next_comment;
    state.next_comment += 1;
    id
}

fn branch_head(bare: &std::path::Path, branch: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(bare)
        .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn pull_of<'a>(state: &'a State, repo: &str, number: u64) -> Option<&'a Value> {
    state.repos.get(repo)?.pulls.iter().find(|p| p["number"] == number)
}

fn pull_head_sha(state: &State, repo: &str, number: u64) -> Option<String> {
    let pull = pull_of(state, repo, number)?;
    let head_repo = pull["head"]["repo"]["full_name"].as_str().unwrap_or(repo);
    branch_head(&state.root.join(format!("{head_repo}.git")), pull["head"]["ref"].as_str()?)
}

/// The pull request as REST shows it, its head where its branch is now.
fn pull_json(state: &State, repo: &str, number: u64) -> Option<Value> {
    let mut pull = pull_of(state, repo, number)?.clone();
    pull["head"]["sha"] = json!(pull_head_sha(state, repo, number));
    Some(pull)
}

/// What every pull request event carries: the pull request, the repository
/// and who acted.
fn pull_event_base(state: &State, repo: &str, number: u64, sender: &str) -> Value {
    let (owner, name) = repo.split_once('/').expect("owner/name");
    let id = state.repos[repo].id;
    json!({
        "pull_request": pull_json(state, repo, number).expect("pull request exists"),
        "repository": {"id": id, "name": name, "full_name": repo, "owner": {"login": owner}, "default_branch": "main"},
        "sender": {"login": sender, "type": "User"},
        "installation": {"id": state.installation_of(owner)},
    })
}

#[allow(clippy::too_many_arguments)]
fn review_comment_json(
    state: &State,
    repo: &str,
    number: u64,
    id: u64,
    review: Option<u64>,
    in_reply_to: Option<u64>,
    path: &str,
    line: u64,
    hunk: &str,
    body: &str,
    user: &str,
) -> Value {
    let mut comment = json!({
        "id": id, "pull": number, "pull_request_review_id": review, "path": path, "line": line, "original_line": line,
        "side": "RIGHT", "diff_hunk": hunk, "body": body, "user": {"login": user, "type": if user.ends_with("[bot]") { "Bot" } else { "User" }},
        "commit_id": pull_head_sha(state, repo, number), "created_at": time_string(SystemTime::now()),
        "html_url": format!("{}/{repo}/pull/{number}#discussion_r{id}", state.base_url),
    });
    if let Some(to) = in_reply_to {
        comment["in_reply_to_id"] = json!(to);
    }
    comment
}

/// A reply in the thread `root` starts: same file, line and hunk.
fn reply_json(state: &State, repo: &str, number: u64, id: u64, root: &Value, body: &str, user: &str) -> Value {
    let (path, hunk) = (root["path"].as_str().unwrap_or_default(), root["diff_hunk"].as_str().unwrap_or_default());
    let line = root["line"].as_u64().unwrap_or_default();
    review_comment_json(state, repo, number, id, None, root["id"].as_u64(), path, line, hunk, body, user)
}

/// The hunk of the pull request's diff for `path` up to `line` on the new
/// side, as GitHub gives a review comment's `diff_hunk`; `None` when the
/// line is not in the diff.
fn diff_hunk(state: &State, repo: &str, number: u64, path: &str, line: u64) -> Option<String> {
    let pull = pull_of(state, repo, number)?;
    let (base, head) = (pull["base"]["ref"].as_str()?, pull["head"]["ref"].as_str()?);
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(state.root.join(format!("{repo}.git")))
        .args(["diff", &format!("{base}...{head}"), "--", path])
        .output()
        .ok()?;
    let diff = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut hunk: Vec<&str> = Vec::new();
    let mut new_line = 0u64;
    for text in diff.lines() {
        if let Some(header) = text.strip_prefix("@@ ") {
            // `@@ -a,b +c,d @@`: the new side starts at c.
            let start = header.split(' ').find_map(|f| f.strip_prefix('+'))?.split(',').next()?.parse::<u64>().ok()?;
            hunk = vec![text];
            new_line = start;
            continue;
        }
        if hunk.is_empty() {
            continue;
        }
        hunk.push(text);
        if text.starts_with('-') {
            continue;
        }
        if new_line == line {
            return Some(hunk.join("\n"));
        }
        new_line += 1;
    }
    None
}

impl Drop for GitHub {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.root).ok();
    }
}

/// `sha256=` and the hex HMAC of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[allow(clippy::too_many_arguments)]
fn issue_event(
    action: &str,
    base: &str,
    repo: &str,
    repo_id: u64,
    number: u64,
    issue: &Issue,
    extra: Value,
    sender: &str,
) -> Value {
    let (owner, name) = repo.split_once('/').expect("owner/name");
    let mut payload = json!({
        "action": action,
        "issue": {
            "number": number, "title": issue.title, "body": issue.body, "state": "open",
            "html_url": format!("{base}/{repo}/issues/{number}"),
            "labels": issue.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
            "user": {"login": "octo-reporter"},
        },
        "repository": {"id": repo_id, "name": name, "full_name": repo, "owner": {"login": owner}, "default_branch": "main"},
        "sender": {"login": sender, "type": "User"},
        "installation": {"id": 777},
    });
    if let (Some(target), Some(extra)) = (payload.as_object_mut(), extra.as_object()) {
        target.extend(extra.clone());
    }
    payload
}

fn github_error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .json(json!({"message": message, "documentation_url": "https://docs.github.com/rest", "status": status.as_u16().to_string()}))
}

fn not_found() -> HttpResponse {
    github_error(StatusCode::NOT_FOUND, "Not Found")
}

fn bad_credentials() -> HttpResponse {
    github_error(StatusCode::UNAUTHORIZED, "Bad credentials")
}

fn forbidden() -> HttpResponse {
    github_error(StatusCode::FORBIDDEN, "Resource not accessible by integration")
}

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("token ")).map(str::to_owned)
}

/// Checks an App JWT: RS256 with the App's key, `iss` the App id, at most
/// ten minutes long, not expired.
fn app_authenticated(req: &HttpRequest, state: &State) -> Result<(), Refusal> {
    let jwt = bearer(req).ok_or_else(bad_credentials)?;
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&state.public_key).map_err(|_| bad_credentials())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // `iss` is the App id, a number: checked below, not by the library.
    validation.set_required_spec_claims(&["exp"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(&jwt, &key, &validation)
        .map_err(|_| github_error(StatusCode::UNAUTHORIZED, "A JSON web token could not be decoded"))?;
    let claims = data.claims;
    let iss = claims["iss"].as_u64().or_else(|| claims["iss"].as_str().and_then(|s| s.parse().ok()));
    let life = claims["exp"].as_u64().unwrap_or(0).saturating_sub(claims["iat"].as_u64().unwrap_or(0));
    if iss != Some(state.app_id) {
        return Err(github_error(StatusCode::UNAUTHORIZED, "'Issuer' claim ('iss') must be an Integer").into());
    }
    if life > 660 {
        return Err(
            github_error(StatusCode::UNAUTHORIZED, "'Expiration time' claim ('exp') is too far in the future").into()
        );
    }
    Ok(())
}

/// The live installation token on the request, if it may act on `repo`
/// with `permission` at `level` (`read` or `write`).
fn token_allows(req: &HttpRequest, state: &State, repo: &str, permission: &str, level: &str) -> Result<(), Refusal> {
    let token = bearer(req).ok_or_else(bad_credentials)?;
    let Some(entry) = state.tokens.get(&token) else { return Err(bad_credentials().into()) };
    if entry.revoked || Instant::now() >= entry.expires {
        return Err(bad_credentials().into());
    }
    if !entry.repos.iter().any(|r| r == repo) {
        return Err(not_found().into());
    }
    let granted = entry.permissions.get(permission).map(String::as_str);
    let enough = match level {
        "read" => matches!(granted, Some("read" | "write")),
        _ => granted == Some("write"),
    };
    if enough { Ok(()) } else { Err(forbidden().into()) }
}

/// Locks the state and checks the request's token for `permission` at
/// `level` on the repository of the path; returns the lock and the name.
fn authorize<'a>(
    req: &HttpRequest,
    state: &'a Shared,
    permission: &str,
    level: &str,
) -> Result<(std::sync::MutexGuard<'a, State>, String), Refusal> {
    let locked = state.lock().unwrap();
    let name = full_name(req);
    token_allows(req, &locked, &name, permission, level)?;
    Ok((locked, name))
}

fn full_name(req: &HttpRequest) -> String {
    format!("{}/{}", req.match_info().query("o"), req.match_info().query("r"))
}

async fn repo_installation(req: HttpRequest, state: Shared) -> HttpResponse {
    let state = state.lock().unwrap();
    if let Err(refusal) = app_authenticated(&req, &state) {
        return *refusal;
    }
    if !state.repos.contains_key(&full_name(&req)) {
        return not_found();
    }
    let owner = req.match_info().query("o");
    HttpResponse::Ok().json(json!({
        "id": state.installation_of(owner), "app_id": state.app_id, "target_type": "Organization",
        "account": {"login": owner}, "repository_selection": "selected",
        "permissions": APP_PERMISSIONS.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    }))
}

async fn create_token(req: HttpRequest, body: web::Json<Value>, state: Shared) -> HttpResponse {
    let mut state = state.lock().unwrap();
    if let Err(refusal) = app_authenticated(&req, &state) {
        return *refusal;
    }
    let installation: u64 = req.match_info().query("id").parse().unwrap_or(0);
    if installation != state.installation_id && !state.installations.values().any(|id| *id == installation) {
        return not_found();
    }
    // An installation sees the repositories of its account only.
    let owner_repos: Vec<String> = state
        .repos
        .keys()
        .filter(|full| state.installation_of(full.split('/').next().unwrap_or_default()) == installation)
        .cloned()
        .collect();
    let asked: Vec<String> = body["repositories"]
        .as_array()
        .map(|names| names.iter().filter_map(|n| n.as_str()).map(str::to_owned).collect())
        .unwrap_or_default();
    let repos: Vec<String> = if asked.is_empty() {
        owner_repos.clone()
    } else {
        let mut found = Vec::new();
        for name in &asked {
            match owner_repos.iter().find(|full| full.split('/').nth(1) == Some(name.as_str())) {
                Some(full) => found.push(full.clone()),
                None => {
                    return github_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "There is at least one repository that does not exist or is not accessible to the parent installation.",
                    );
                }
            }
        }
        found
    };
    let app: BTreeMap<&str, &str> = APP_PERMISSIONS.iter().copied().collect();
    let mut permissions = BTreeMap::new();
    match body["permissions"].as_object() {
        Some(asked) => {
            for (name, level) in asked {
                let level = level.as_str().unwrap_or_default();
                let allowed = match app.get(name.as_str()) {
                    Some(&"write") => matches!(level, "read" | "write"),
                    Some(&"read") => level == "read",
                    _ => false,
                };
                if !allowed {
                    return github_error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &format!("The permissions requested are not granted to this installation: {name}={level}"),
                    );
                }
                permissions.insert(name.clone(), level.to_owned());
            }
        }
        None => permissions.extend(app.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))),
    }
    permissions.insert("metadata".to_owned(), "read".to_owned());
    let token = format!("ghs_{}", ulid::Ulid::new().to_string().to_lowercase().replace(['-'], "") + "0123456789");
    let expires_at = SystemTime::now() + Duration::from_secs(3600);
    let expires_at = time_string(expires_at);
    let repositories: Vec<Value> = repos
        .iter()
        .map(|full| {
            let (owner, name) = full.split_once('/').unwrap_or_default();
            json!({"id": state.repos[full].id, "name": name, "full_name": full, "owner": {"login": owner}})
        })
        .collect();
    state.tokens.insert(
        token.clone(),
        Token {
            repos,
            permissions: permissions.clone(),
            expires: Instant::now() + Duration::from_secs(3600),
            revoked: false,
        },
    );
    state.minted.push((token.clone(), body.into_inner()));
    HttpResponse::Created().json(json!({
        "token": token, "expires_at": expires_at, "permissions": permissions,
        "repository_selection": "selected", "repositories": repositories,
    }))
}

async fn revoke_token(req: HttpRequest, state: Shared) -> HttpResponse {
    let mut state = state.lock().unwrap();
    let Some(token) = bearer(&req) else { return bad_credentials() };
    match state.tokens.get_mut(&token) {
        Some(entry) if !entry.revoked && Instant::now() < entry.expires => {
            entry.revoked = true;
            HttpResponse::NoContent().finish()
        }
        _ => bad_credentials(),
    }
}

async fn get_repo(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "metadata", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let Some(repo) = state.repos.get(&name) else { return not_found() };
    let mut answer = json!({"id": repo.id, "full_name": name, "default_branch": repo.default_branch, "private": true,
        "fork": repo.parent.is_some()});
    if let Some(parent) = &repo.parent {
        answer["parent"] = json!({"full_name": parent, "id": state.repos.get(parent).map(|p| p.id)});
    }
    HttpResponse::Ok().json(answer)
}

async fn get_branch(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "metadata", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let Some(repo) = state.repos.get(&name) else { return not_found() };
    let branch = req.match_info().query("b").to_owned();
    let dir = state.root.join(format!("{name}.git"));
    let exists = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        return github_error(StatusCode::NOT_FOUND, "Branch not found");
    }
    HttpResponse::Ok().json(json!({"name": branch, "protected": repo.protected.contains(&branch)}))
}

async fn branch_rules(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "metadata", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let Some(repo) = state.repos.get(&name) else { return not_found() };
    let branch = req.match_info().query("b");
    let rules: Vec<Value> = repo
        .rules
        .iter()
        .filter(|(pattern, _)| matches_pattern(pattern, branch))
        .flat_map(|(_, r)| r.clone())
        .collect();
    HttpResponse::Ok().json(rules)
}

async fn permission(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "metadata", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let Some(repo) = state.repos.get(&name) else { return not_found() };
    let user = req.match_info().query("u");
    let Some(level) = repo.collaborators.get(user) else {
        return github_error(StatusCode::NOT_FOUND, &format!("{user} is not a user"));
    };
    let role = if level == "admin" { "admin" } else { level.as_str() };
    HttpResponse::Ok().json(json!({"permission": level, "role_name": role, "user": {"login": user}}))
}

async fn get_issue(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "issues", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let number: u64 = req.match_info().query("n").parse().unwrap_or(0);
    let Some(issue) = state.repos.get(&name).and_then(|r| r.issues.get(&number)) else { return not_found() };
    HttpResponse::Ok().json(json!({
        "number": number, "title": issue.title, "body": issue.body, "state": "open",
        "labels": issue.labels.iter().map(|l| json!({"name": l})).collect::<Vec<_>>(),
        "html_url": format!("{}/{name}/issues/{number}", state.base_url),
    }))
}

async fn list_comments(req: HttpRequest, query: web::Query<HashMap<String, String>>, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "issues", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let number: u64 = req.match_info().query("n").parse().unwrap_or(0);
    let Some(issue) = state.repos.get(&name).and_then(|r| r.issues.get(&number)) else { return not_found() };
    page(issue.comments.clone(), &query)
}

async fn add_comment(req: HttpRequest, body: web::Json<Value>, state: Shared) -> HttpResponse {
    let (mut state, name) = match authorize(&req, &state, "issues", "write") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let Some(text) = body["body"].as_str() else {
        return github_error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    let id = state.next_comment;
    state.next_comment += 1;
    let number: u64 = req.match_info().query("n").parse().unwrap_or(0);
    let base = state.base_url.clone();
    let Some(issue) = state.repos.get_mut(&name).and_then(|r| r.issues.get_mut(&number)) else { return not_found() };
    let comment = json!({"id": id, "body": text, "user": {"login": "paddock-app[bot]", "type": "Bot"},
        "created_at": time_string(SystemTime::now()),
        "html_url": format!("{base}/{name}/issues/{number}#issuecomment-{id}")});
    issue.comments.push(comment.clone());
    HttpResponse::Created().json(comment)
}

async fn edit_comment(req: HttpRequest, body: web::Json<Value>, state: Shared) -> HttpResponse {
    let (mut state, name) = match authorize(&req, &state, "issues", "write") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let id: u64 = req.match_info().query("id").parse().unwrap_or(0);
    let Some(repo) = state.repos.get_mut(&name) else { return not_found() };
    for issue in repo.issues.values_mut() {
        if let Some(comment) = issue.comments.iter_mut().find(|c| c["id"] == id) {
            comment["body"] = body["body"].clone();
            return HttpResponse::Ok().json(comment.clone());
        }
    }
    not_found()
}

async fn list_pulls(req: HttpRequest, query: web::Query<HashMap<String, String>>, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "pull_requests", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let Some(repo) = state.repos.get(&name) else { return not_found() };
    // GitHub filters by `user:ref`: the head's account and branch.
    let head = query.get("head");
    let wanted_state = query.get("state").cloned().unwrap_or_else(|| "open".to_owned());
    let pulls: Vec<&Value> = repo
        .pulls
        .iter()
        .filter(|p| {
            head.is_none_or(|h| match h.split_once(':') {
                Some(_) => p["head"]["label"] == h.as_str(),
                None => p["head"]["ref"] == h.as_str(),
            })
        })
        .filter(|p| wanted_state == "all" || p["state"] == wanted_state.as_str())
        .collect();
    HttpResponse::Ok().json(pulls)
}

async fn create_pull(req: HttpRequest, body: web::Json<Value>, state: Shared) -> HttpResponse {
    let (mut state, name) = match authorize(&req, &state, "pull_requests", "write") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let (Some(head), Some(base), Some(title)) = (body["head"].as_str(), body["base"].as_str(), body["title"].as_str())
    else {
        return github_error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    // `user:ref` names a branch of a fork in the same network; a bare ref
    // one of the repository itself.
    let owner = name.split('/').next().unwrap_or_default().to_owned();
    let (head_owner, head) = head.split_once(':').map_or((owner.as_str(), head), |(o, b)| (o, b));
    let head_repo = if head_owner == owner {
        Some(name.clone())
    } else {
        state
            .repos
            .iter()
            .find(|(full, r)| full.starts_with(&format!("{head_owner}/")) && r.parent.as_deref() == Some(name.as_str()))
            .map(|(full, _)| full.clone())
    };
    let head = head.to_owned();
    let exists = head_repo.as_ref().is_some_and(|head_repo| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(state.root.join(format!("{head_repo}.git")))
            .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{head}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !exists {
        return HttpResponse::UnprocessableEntity().json(json!({"message": "Validation Failed",
            "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
            "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"}));
    }
    let label = format!("{head_owner}:{head}");
    let base_url = state.base_url.clone();
    let Some(repo) = state.repos.get_mut(&name) else { return not_found() };
    if repo.pulls.iter().any(|p| p["head"]["label"] == label.as_str() && p["state"] == "open") {
        return HttpResponse::UnprocessableEntity().json(json!({"message": "Validation Failed",
            "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for {head}.")}],
            "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request"}));
    }
    let number = repo.next_number;
    repo.next_number += 1;
    let pull = json!({
        "number": number, "state": "open", "title": title, "body": body["body"], "draft": body["draft"] == true,
        "head": {"ref": head, "label": label, "repo": {"full_name": head_repo}}, "base": {"ref": base},
        "user": {"login": "paddock-app[bot]", "type": "Bot"},
        "html_url": format!("{base_url}/{name}/pull/{number}"),
    });
    repo.pulls.push(pull.clone());
    // Every pull request is an issue: its conversation is the issue's comments.
    let issue = Issue {
        title: title.to_owned(),
        body: body["body"].as_str().unwrap_or_default().to_owned(),
        labels: Vec::new(),
        comments: Vec::new(),
    };
    repo.issues.insert(number, issue);
    let pull = pull_json(&state, &name, number).unwrap_or(pull);
    HttpResponse::Created().json(pull)
}

async fn update_pull(req: HttpRequest, body: web::Json<Value>, state: Shared) -> HttpResponse {
    let (mut state, name) = match authorize(&req, &state, "pull_requests", "write") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let number: u64 = req.match_info().query("n").parse().unwrap_or(0);
    let Some(pull) = state.repos.get_mut(&name).and_then(|r| r.pulls.iter_mut().find(|p| p["number"] == number)) else {
        return not_found();
    };
    for field in ["title", "body"] {
        if let Some(value) = body.get(field) {
            pull[field] = value.clone();
        }
    }
    HttpResponse::Ok().json(pull.clone())
}

async fn get_pull(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "pull_requests", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let number: u64 = req.match_info().query("n").parse().unwrap_or(0);
    match pull_json(&state, &name, number) {
        Some(pull) => HttpResponse::Ok().json(pull),
        None => not_found(),
    }
}

/// GitHub's paging: `per_page` (at most 100, default 30) and `page`.
fn page(items: Vec<Value>, query: &HashMap<String, String>) -> HttpResponse {
    let per_page = query.get("per_page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(30).clamp(1, 100);
    let page = query.get("page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(1).max(1);
    let shown: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    HttpResponse::Ok().json(shown)
}

/// A pull request's list (`pick` chooses it from the repository), paged.
fn pull_list(
    req: &HttpRequest,
    query: &HashMap<String, String>,
    state: &Shared,
    pick: impl Fn(&Repo, u64) -> Vec<Value>,
) -> HttpResponse {
    let (state, name) = match authorize(req, state, "pull_requests", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let number: u64 = req.match_info().query("n").parse().unwrap_or(0);
    if pull_of(&state, &name, number).is_none() {
        return not_found();
    }
    page(pick(&state.repos[&name], number), query)
}

async fn list_reviews(req: HttpRequest, query: web::Query<HashMap<String, String>>, state: Shared) -> HttpResponse {
    pull_list(&req, &query, &state, |repo, number| {
        repo.reviews.iter().filter(|r| r["pull"] == number).map(|r| r["review"].clone()).collect()
    })
}

async fn list_review_comments(
    req: HttpRequest,
    query: web::Query<HashMap<String, String>>,
    state: Shared,
) -> HttpResponse {
    pull_list(&req, &query, &state, |repo, number| {
        repo.review_comments.iter().filter(|c| c["pull"] == number).cloned().collect()
    })
}

async fn get_review_comment(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "pull_requests", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let id: u64 = req.match_info().query("id").parse().unwrap_or(0);
    match state.repos.get(&name).and_then(|r| r.review_comments.iter().find(|c| c["id"] == id)) {
        Some(comment) => HttpResponse::Ok().json(comment),
        None => not_found(),
    }
}

/// `POST .../pulls/{n}/comments/{id}/replies`: only to a thread's first
/// comment, as GitHub allows.
async fn reply_review_comment(req: HttpRequest, body: web::Json<Value>, state: Shared) -> HttpResponse {
    let (mut state, name) = match authorize(&req, &state, "pull_requests", "write") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let number: u64 = req.match_info().query("n").parse().unwrap_or(0);
    let to: u64 = req.match_info().query("id").parse().unwrap_or(0);
    let Some(text) = body["body"].as_str() else {
        return github_error(StatusCode::UNPROCESSABLE_ENTITY, "Validation Failed");
    };
    let Some(root) = state
        .repos
        .get(&name)
        .and_then(|r| r.review_comments.iter().find(|c| c["id"] == to && c["pull"] == number))
        .cloned()
    else {
        return not_found();
    };
    if !root["in_reply_to_id"].is_null() {
        return github_error(StatusCode::UNPROCESSABLE_ENTITY, "Replies to replies are not supported.");
    }
    let id = next_id(&mut state);
    let comment = reply_json(&state, &name, number, id, &root, text, "paddock-app[bot]");
    state.repos.get_mut(&name).expect("repo exists").review_comments.push(comment.clone());
    HttpResponse::Created().json(comment)
}

/// `GET .../commits/{sha}` with `commit.verification` as GitHub reports it:
/// `unsigned` without a signature, `unknown_key` when no account with the
/// committer's email has a signing key that made it, `invalid` when the
/// signature does not verify, `valid` otherwise.
async fn get_commit(req: HttpRequest, state: Shared) -> HttpResponse {
    let (state, name) = match authorize(&req, &state, "contents", "read") {
        Ok(granted) => granted,
        Err(refusal) => return *refusal,
    };
    let sha = req.match_info().query("sha").to_owned();
    let dir = state.root.join(format!("{name}.git"));
    let git_out = |args: &[&str]| {
        std::process::Command::new("git").arg("-C").arg(&dir).args(args).output().ok().filter(|o| o.status.success())
    };
    let Some(raw) = git_out(&["cat-file", "commit", &sha]) else {
        return github_error(StatusCode::UNPROCESSABLE_ENTITY, &format!("No commit found for SHA: {sha}"));
    };
    let raw = String::from_utf8_lossy(&raw.stdout).into_owned();
    let email = git_out(&["log", "-1", "--format=%ce", &sha])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let signature: String = raw
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .skip_while(|l| !l.starts_with("gpgsig "))
        .take_while(|l| l.starts_with("gpgsig ") || l.starts_with(' '))
        .map(|l| l.trim_start_matches("gpgsig ").trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    let keys: Vec<&(String, String)> =
        state.signing_keys.iter().filter(|(e, _)| e.eq_ignore_ascii_case(&email)).collect();
    let reason = if signature.is_empty() {
        "unsigned"
    } else if keys.is_empty() {
        "unknown_key"
    } else {
        let signers = std::env::temp_dir().join(format!("paddock-signers-{}", ulid::Ulid::new()));
        let lines: String = keys.iter().map(|(e, k)| format!("{e} {k}\n")).collect();
        std::fs::write(&signers, lines).expect("write allowed signers");
        let allowed = format!("gpg.ssh.allowedSignersFile={}", signers.display());
        let verified = git_out(&["-c", &allowed, "verify-commit", &sha]).is_some();
        std::fs::remove_file(&signers).ok();
        if verified { "valid" } else { "invalid" }
    };
    let message = git_out(&["log", "-1", "--format=%B", &sha]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    HttpResponse::Ok().json(json!({
        "sha": sha,
        "commit": {
            "message": message,
            "committer": {"email": email},
            "verification": {
                "verified": reason == "valid", "reason": reason,
                "signature": if signature.is_empty() { Value::Null } else { json!(signature) },
                "verified_at": if reason == "valid" { json!(time_string(SystemTime::now())) } else { Value::Null },
            },
        },
        "html_url": format!("{}/{name}/commit/{sha}", state.base_url),
    }))
}

/// The one GraphQL query Paddock makes: a pull request's review threads,
/// whether each is resolved, and their comments' database ids. Anything
/// else is answered as GitHub answers a query it cannot resolve.
async fn graphql(req: HttpRequest, body: web::Json<Value>, state: Shared) -> HttpResponse {
    let state = state.lock().unwrap();
    let query = body["query"].as_str().unwrap_or_default();
    let vars = &body["variables"];
    let repo = format!("{}/{}", vars["owner"].as_str().unwrap_or_default(), vars["name"].as_str().unwrap_or_default());
    if bearer(&req).is_none() {
        return HttpResponse::Unauthorized().json(json!({"message": "This endpoint requires you to be authenticated.",
            "documentation_url": "https://docs.github.com/graphql/guides/forming-calls-with-graphql#authenticating-with-graphql"}));
    }
    if let Err(refusal) = token_allows(&req, &state, &repo, "pull_requests", "read") {
        if refusal.status() == StatusCode::UNAUTHORIZED {
            return *refusal;
        }
        return HttpResponse::Ok().json(json!({"data": {"repository": null}, "errors": [{"type": "NOT_FOUND",
            "path": ["repository"], "message": format!("Could not resolve to a Repository with the name '{repo}'.")}]}));
    }
    if !query.contains("reviewThreads") || !query.contains("isResolved") {
        return HttpResponse::Ok()
            .json(json!({"errors": [{"message": "the emulator answers only the review threads query"}]}));
    }
    let number = vars["number"].as_u64().unwrap_or(0);
    let comments: Vec<&Value> = state.repos[&repo].review_comments.iter().filter(|c| c["pull"] == number).collect();
    let resolved = &state.repos[&repo].resolved;
    let nodes: Vec<Value> = comments
        .iter()
        .filter(|c| c["in_reply_to_id"].is_null())
        .map(|root| {
            let id = root["id"].as_u64().unwrap_or_default();
            let members: Vec<Value> = comments
                .iter()
                .filter(|c| c["id"] == id || c["in_reply_to_id"] == id)
                .map(|c| json!({"databaseId": c["id"]}))
                .collect();
            json!({"isResolved": resolved.contains(&id), "comments": {"nodes": members}})
        })
        .collect();
    HttpResponse::Ok().json(json!({"data": {"repository": {"pullRequest": {"reviewThreads": {"nodes": nodes}}}}}))
}

/// Git smart HTTP with GitHub's rules: Basic auth whose password is a live
/// installation token for this repository (`contents: read` to fetch,
/// `contents: write` to push).
async fn git_http(req: HttpRequest, body: web::Bytes, state: Shared) -> HttpResponse {
    let path = req.match_info().query("path").to_owned();
    let Some((repo, _)) = path.split_once(".git") else { return not_found() };
    let repo = repo.to_owned();
    let push = req.query_string().contains("git-receive-pack") || path.ends_with("git-receive-pack");
    let root = {
        let state = state.lock().unwrap();
        let password = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(base64_decode)
            .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned()));
        let Some(password) = password else {
            return HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Basic realm=\"GitHub\"")).finish();
        };
        let entry = state.tokens.get(&password);
        let alive = entry.is_some_and(|t| !t.revoked && Instant::now() < t.expires && t.repos.contains(&repo));
        if !alive {
            return HttpResponse::Unauthorized().insert_header(("WWW-Authenticate", "Basic realm=\"GitHub\"")).finish();
        }
        let level = entry.and_then(|t| t.permissions.get("contents")).map(String::as_str);
        let enough = if push { level == Some("write") } else { matches!(level, Some("read" | "write")) };
        if !enough {
            return github_error(StatusCode::FORBIDDEN, "Permission to push denied to the integration.");
        }
        state.root.clone()
    };
    http_backend(&root, &format!("/{path}"), &req, body).await
}

/// `*` matches any run of characters.
fn matches_pattern(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => name.len() >= head.len() + tail.len() && name.starts_with(head) && name.ends_with(tail),
    }
}

fn base64_decode(text: &str) -> Option<String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
    String::from_utf8(bytes).ok()
}

/// A `pre-receive` hook in every repository refusing updates to protected
/// branches and branches with rules, as GitHub's branch protection does.
fn write_protection_hook(root: &std::path::Path, state: &State) {
    for (name, repo) in &state.repos {
        let blocked: Vec<String> = repo.protected.iter().chain(repo.rules.keys()).cloned().collect();
        let hooks = root.join(format!("{name}.git")).join("hooks");
        std::fs::create_dir_all(&hooks).expect("hooks dir");
        let script = format!(
            "#!/bin/sh\nwhile read old new ref; do\n  case \"$ref\" in\n{}  esac\ndone\nexit 0\n",
            blocked
                .iter()
                .map(|b| format!(
                    "    refs/heads/{b}) echo \"error: GH006: Protected branch update failed for refs/heads/{b}.\" >&2; exit 1;;\n"
                ))
                .collect::<String>()
        );
        let hook = hooks.join("pre-receive");
        std::fs::write(&hook, script).expect("write hook");
        git(
            root,
            &["config", "--file", hooks.parent().unwrap().join("config").to_str().unwrap(), "http.receivepack", "true"],
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod hook");
        }
    }
}

fn time_string(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .map(|t| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())
        .unwrap_or_default()
}
