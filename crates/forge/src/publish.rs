//! From the agent's diff to a draft pull request, on the worker: the diff is
//! applied to a clean checkout as data and committed by the Paddock App with
//! trailers naming the run and its requester; the branch `paddock/...` is
//! checked against the default branch, branch protection and rulesets before
//! anything is pushed; the pull request is a draft that links the issue, and
//! a retried run updates its pull request instead of opening another.

use std::path::Path;

use common::{PullRequestRef, RepoName, RunId, RunSpec};
use serde_json::{Value, json};

use crate::git::{self, PatchError, PushError};
use crate::github::{COMMENT_PERMISSIONS, ForgeError, GitHubApp, RepoCredential};

/// What the pull request body says about the run.
pub struct RunStory<'a> {
    pub run: RunId,
    pub spec: &'a RunSpec,
    pub command: &'a str,
    /// The agent and version, as its image names them.
    pub agent: Option<&'a common::AgentIdentity>,
    pub models: &'a [common::ModelUse],
    /// Tokens and cost of the run's model calls.
    pub usage: common::Usage,
    pub commands: &'a [String],
    pub link: String,
}

pub enum Published {
    /// The agent changed nothing: no branch, no pull request.
    NoChanges,
    PullRequest(Box<Pushed>),
}

/// A branch pushed and its pull request opened or updated.
pub struct Pushed {
    pub branch: String,
    pub pull_request: PullRequestRef,
    pub files: Vec<String>,
    /// The commit pushed.
    pub commit: String,
    /// A follow-up's replies (the review comments answered).
    pub answered: Vec<u64>,
    /// What GitHub says of the commit's signature, when Paddock signs.
    pub verification: Option<String>,
}

/// Where the run's branch is pushed.
pub enum Destination<'a> {
    /// A branch of the repository itself, with the run's token.
    Repository,
    /// A branch of the repository's fork, with a token for the fork alone;
    /// the pull request is opened on the repository from the fork.
    Fork { repo: &'a RepoName, credential: &'a RepoCredential, clone_url: &'a str },
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("refusing to push `{0}`: it is the default branch or protected")]
    Protected(String),
    /// A follow-up's branch moved after it was checked out (`branch`,
    /// checked out at `at`): nothing was pushed.
    #[error("`{branch}` has commits pushed after the run checked it out at {at}")]
    BranchMoved { branch: String, at: String },
    /// `publish.mode = "fork"`, and the fork is not one of the repository.
    #[error("{0}")]
    NotAFork(String),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Forge(#[from] ForgeError),
    #[error(transparent)]
    Git(#[from] git::GitError),
}

/// The run's branch: `paddock/<issue>-<short run id>` (or `run-` without
/// an issue). The short id is the end of the ULID, its random part.
pub fn branch_name(run: RunId, issue: Option<u64>) -> String {
    let id = run.to_string();
    let short = &id[id.len() - 8..];
    match issue {
        Some(number) => format!("paddock/{number}-{short}"),
        None => format!("paddock/run-{short}"),
    }
}

/// A marker that finds the run's own comment again.
fn marker(run: RunId) -> String {
    format!("<!-- paddock-run:{run} -->")
}

/// Commits the diff in `checkout`, pushes the run's branch to
/// `destination` and opens (or updates) the draft pull request.
pub async fn publish(
    app: &GitHubApp,
    credential: &RepoCredential,
    checkout: &Path,
    clone_url: &str,
    diff: &[u8],
    story: &RunStory<'_>,
    destination: &Destination<'_>,
) -> Result<Published, PublishError> {
    let spec = story.spec;
    let repo = &spec.repository;
    let Some(files) = commit(app, checkout, diff, story).await? else { return Ok(Published::NoChanges) };
    let branch = branch_name(story.run, spec.issue);
    let (push_repo, push_credential, push_url) = match destination {
        Destination::Repository => (repo, credential, clone_url),
        Destination::Fork { repo: fork, credential: fork_credential, clone_url: fork_url } => {
            check_fork(fork_credential, fork, repo).await?;
            (*fork, *fork_credential, *fork_url)
        }
    };
    refuse_protected(push_credential, push_repo, &branch).await?;
    match git::push(checkout, push_url, &branch, git::PushMode::Replace, &push_credential.git_env()).await {
        Ok(()) => {}
        Err(PushError::Protected(_)) => return Err(PublishError::Protected(branch)),
        Err(PushError::Moved(e)) => return Err(git::GitError::Unavailable(e).into()),
        Err(PushError::Git(e)) => return Err(e.into()),
    }
    let fork = match destination {
        Destination::Repository => None,
        Destination::Fork { repo: fork, .. } => Some(*fork),
    };
    let pull_request = upsert_pull_request(credential, repo, &branch, fork, story, &files).await?;
    let commit = git::head(checkout).await?;
    let verification = verification(app, push_credential, push_repo, &commit).await;
    let answered = Vec::new();
    Ok(Published::PullRequest(Box::new(Pushed { branch, pull_request, files, commit, answered, verification })))
}

/// A follow-up: commits the diff on top of the pull request's branch as
/// checked out, pushes it fast-forward only (never over a person's
/// commits), answers each review comment it was asked about, and adds the
/// run to the pull request's description. It never force-pushes, marks
/// the draft ready or merges.
pub async fn publish_follow_up(
    app: &GitHubApp,
    credential: &RepoCredential,
    checkout: &Path,
    clone_url: &str,
    diff: &[u8],
    story: &RunStory<'_>,
    follow_up: &common::FollowUp,
) -> Result<Published, PublishError> {
    let repo = &story.spec.repository;
    let checked_out = git::head(checkout).await?;
    let Some(files) = commit(app, checkout, diff, story).await? else { return Ok(Published::NoChanges) };
    let branch = follow_up.branch.clone();
    refuse_protected(credential, repo, &branch).await?;
    match git::push(checkout, clone_url, &branch, git::PushMode::FastForward, &credential.git_env()).await {
        Ok(()) => {}
        Err(PushError::Protected(_)) => return Err(PublishError::Protected(branch)),
        Err(PushError::Moved(_)) => return Err(PublishError::BranchMoved { branch, at: checked_out }),
        Err(PushError::Git(e)) => return Err(e.into()),
    }
    let commit = git::head(checkout).await?;
    let verification = verification(app, credential, repo, &commit).await;
    let (owner, name) = (repo.owner(), repo.name());
    let number = follow_up.pull_request;
    let pull = credential.get(&format!("/repos/{owner}/{name}/pulls/{number}")).await?;
    let line = follow_up_line(story, follow_up, &commit, &files);
    let body = with_follow_up(pull["body"].as_str().unwrap_or_default(), &line);
    let pull = credential.patch(&format!("/repos/{owner}/{name}/pulls/{number}"), &json!({"body": body})).await?;
    let mut answered = Vec::new();
    for &comment in &follow_up.answer_review_comments {
        let Some(original) =
            credential.get_optional(&format!("/repos/{owner}/{name}/pulls/comments/{comment}")).await?
        else {
            continue;
        };
        let path = original["path"].as_str().unwrap_or_default();
        let reply = reply_text(story, &commit, path, &files);
        credential
            .post(&format!("/repos/{owner}/{name}/pulls/{number}/comments/{comment}/replies"), &json!({"body": reply}))
            .await?;
        answered.push(comment);
    }
    let pull_request = PullRequestRef {
        number,
        url: pull["html_url"].as_str().unwrap_or_default().to_owned(),
        head: branch.clone(),
        base: follow_up.base.clone(),
        draft: pull["draft"] == true,
        head_repository: None,
    };
    Ok(Published::PullRequest(Box::new(Pushed { branch, pull_request, files, commit, answered, verification })))
}

/// A follow-up's line in the pull request's description, with the marker
/// that makes it the run the next follow-up continues.
fn follow_up_line(story: &RunStory<'_>, follow_up: &common::FollowUp, commit: &str, files: &[String]) -> String {
    let listed: Vec<String> = files.iter().take(10).map(|f| code_span(f)).collect();
    let more = if files.len() > 10 { format!(" and {} more", files.len() - 10) } else { String::new() };
    format!(
        "- Run [`{}`]({}) for {} (requested by {}): commit `{}`, changing {}{more} {}",
        story.run,
        story.link,
        code_span(&format!("@{}", follow_up.requested_by_login)),
        code_span(&story.spec.requested_by),
        &commit[..commit.len().min(12)],
        listed.join(", "),
        marker(story.run)
    )
}

/// `body` with `line` added under its "Follow-ups" heading.
fn with_follow_up(body: &str, line: &str) -> String {
    const HEADING: &str = "### Follow-ups";
    let mut body = body.trim_end().to_owned();
    if !body.contains(HEADING) {
        body.push_str(&format!("\n\n{HEADING}\n"));
    }
    body.push_str(&format!("\n{line}\n"));
    body
}

/// What a reply to a review comment on `path` says the commit did.
fn reply_text(story: &RunStory<'_>, commit: &str, path: &str, files: &[String]) -> String {
    let short = &commit[..commit.len().min(12)];
    let run = format!("run [`{}`]({})", story.run, story.link);
    if files.iter().any(|f| f == path) {
        let others: Vec<String> = files.iter().filter(|f| *f != path).take(5).map(|f| code_span(f)).collect();
        let also = if others.is_empty() { String::new() } else { format!(" It also changes {}.", others.join(", ")) };
        format!("Paddock changed {} in `{short}` ({run}) to address this.{also}", code_span(path))
    } else {
        let listed: Vec<String> = files.iter().take(5).map(|f| code_span(f)).collect();
        format!(
            "Paddock's `{short}` ({run}) does not change {}; it changes {}. Please check whether that addresses this.",
            code_span(path),
            listed.join(", ")
        )
    }
}

/// GitHub's verdict on a signed commit's signature (`commit.verification`
/// of `GET /repos/{o}/{r}/commits/{sha}`): `valid`, or why not. `None`
/// when Paddock does not sign or GitHub could not be asked (logged: the
/// commit is pushed either way).
async fn verification(app: &GitHubApp, credential: &RepoCredential, repo: &RepoName, sha: &str) -> Option<String> {
    app.signing()?;
    let route = format!("/repos/{}/{}/commits/{sha}", repo.owner(), repo.name());
    match credential.get(&route).await {
        Ok(commit) => commit["commit"]["verification"]["reason"].as_str().map(str::to_owned),
        Err(error) => {
            tracing::warn!(%repo, sha, %error, "reading the commit's verification failed");
            None
        }
    }
}

/// Commits the diff in `checkout` as the App (signed when it has a key);
/// the files it changes, or `None` when it changes nothing.
async fn commit(
    app: &GitHubApp,
    checkout: &Path,
    diff: &[u8],
    story: &RunStory<'_>,
) -> Result<Option<Vec<String>>, PublishError> {
    if diff.is_empty() {
        return Ok(None);
    }
    let author = (app.config.commit_author_name.as_str(), app.config.commit_author_email.as_str());
    let signing_key = app.signing().map(|(key, _)| key);
    let files = git::commit_diff(checkout, diff, author, &commit_message(story), signing_key).await?;
    Ok((!files.is_empty()).then_some(files))
}

/// The fork must be a fork of the repository (GitHub then opens a pull
/// request from it on the repository, and its CI treats it as outside).
async fn check_fork(credential: &RepoCredential, fork: &RepoName, repo: &RepoName) -> Result<(), PublishError> {
    let info = credential.get(&format!("/repos/{}/{}", fork.owner(), fork.name())).await?;
    let parent = info["parent"]["full_name"].as_str().unwrap_or_default();
    if info["fork"] == true && parent.eq_ignore_ascii_case(&repo.to_string()) {
        return Ok(());
    }
    let is = if info["fork"] == true { format!("a fork of {parent}") } else { "not a fork".to_owned() };
    Err(PublishError::NotAFork(format!(
        "{fork} (publish.fork_owner) is {is}, not a fork of {repo}: fork {repo} into {} once",
        fork.owner()
    )))
}

/// Never the default branch, a protected branch or one a ruleset covers.
async fn refuse_protected(credential: &RepoCredential, repo: &RepoName, branch: &str) -> Result<(), PublishError> {
    let (owner, name) = (repo.owner(), repo.name());
    let info = credential.get(&format!("/repos/{owner}/{name}")).await?;
    if info["default_branch"].as_str() == Some(branch) {
        return Err(PublishError::Protected(branch.to_owned()));
    }
    if let Some(existing) = credential.get_optional(&format!("/repos/{owner}/{name}/branches/{branch}")).await?
        && existing["protected"] == true
    {
        return Err(PublishError::Protected(branch.to_owned()));
    }
    let rules = credential.get(&format!("/repos/{owner}/{name}/rules/branches/{branch}")).await?;
    if rules.as_array().is_some_and(|r| !r.is_empty()) {
        return Err(PublishError::Protected(branch.to_owned()));
    }
    Ok(())
}

async fn upsert_pull_request(
    credential: &RepoCredential,
    repo: &RepoName,
    branch: &str,
    fork: Option<&RepoName>,
    story: &RunStory<'_>,
    files: &[String],
) -> Result<PullRequestRef, ForgeError> {
    let (owner, name) = (repo.owner(), repo.name());
    let body = pull_request_body(story, files);
    let title = story.spec.task_title.clone();
    // `owner:branch` names the head in the repository or in its fork.
    let head = format!("{}:{branch}", fork.map_or(owner, RepoName::owner));
    let open = credential.get(&format!("/repos/{owner}/{name}/pulls?head={head}&state=open")).await?;
    let pull = match open.as_array().and_then(|p| p.first()) {
        Some(existing) => {
            let number = existing["number"].as_u64().unwrap_or_default();
            credential
                .patch(&format!("/repos/{owner}/{name}/pulls/{number}"), &json!({"title": title, "body": body}))
                .await?
        }
        None => {
            let head = if fork.is_some() { head.as_str() } else { branch };
            let create =
                json!({"title": title, "head": head, "base": story.spec.base_ref, "body": body, "draft": true});
            credential.post(&format!("/repos/{owner}/{name}/pulls"), &create).await?
        }
    };
    Ok(PullRequestRef {
        number: pull["number"].as_u64().unwrap_or_default(),
        url: pull["html_url"].as_str().unwrap_or_default().to_owned(),
        head: branch.to_owned(),
        base: story.spec.base_ref.clone(),
        draft: pull["draft"] == true,
        head_repository: fork.map(ToString::to_string),
    })
}

/// `text` as a Markdown code span: never a link, emphasis, HTML or an
/// @-mention, whatever it holds (backticks and line breaks are dropped).
pub fn code_span(text: &str) -> String {
    let inner: String = text.chars().filter(|c| *c != '`' && !c.is_control()).collect();
    format!("`{inner}`")
}

fn commit_message(story: &RunStory<'_>) -> String {
    let spec = story.spec;
    let mut message = format!("{}\n\n", spec.task_title.trim());
    if let Some(issue) = spec.issue {
        message.push_str(&format!("Refs #{issue}\n\n"));
    }
    message.push_str(&format!("Paddock-Run: {}\n", story.run));
    if let Some(parent) = spec.parent_run {
        message.push_str(&format!("Paddock-Parent-Run: {parent}\n"));
    }
    message.push_str(&format!("Requested-by: {}\n", spec.requested_by));
    if let Some(via) = &spec.via {
        message.push_str(&format!("Requested-via: {via}\n"));
    }
    message
}

fn pull_request_body(story: &RunStory<'_>, files: &[String]) -> String {
    let spec = story.spec;
    let mut body = String::new();
    if let Some(issue) = spec.issue {
        body.push_str(&format!("Fixes #{issue}\n\n"));
    }
    let via = spec.via.as_ref().map(|v| format!(" (via {})", code_span(v))).unwrap_or_default();
    body.push_str(&format!(
        "Draft opened by Paddock for run [`{}`]({}), requested by {}{via}. Review it like any other \
         contribution: CI, CODEOWNERS and branch protection decide.\n\n",
        story.run,
        story.link,
        code_span(&spec.requested_by)
    ));
    let profile = spec.agent_profile.as_str();
    let agent = match story.agent {
        Some(common::AgentIdentity { name, version: Some(version), image }) => {
            format!("{} {} (profile `{profile}`, image {})", code_span(name), code_span(version), code_span(image))
        }
        _ => format!("`{profile}` (`{}`)", one_line(story.command)),
    };
    body.push_str(&format!("- **Agent:** {agent}\n"));
    let models: Vec<String> =
        story.models.iter().map(|m| format!("{} via {} ({} calls)", m.model, m.provider, m.calls)).collect();
    body.push_str(&format!(
        "- **Models:** {}\n",
        if models.is_empty() { "none".to_owned() } else { models.join(", ") }
    ));
    body.push_str(&format!("- **Cost:** {}\n", cost_text(&story.usage)));
    let tests: Vec<&String> = story.commands.iter().filter(|c| looks_like_tests(c)).collect();
    if !tests.is_empty() {
        let listed: Vec<String> = tests.iter().map(|c| format!("`{}`", one_line(c))).collect();
        body.push_str(&format!("- **Tests the agent ran:** {}\n", listed.join(", ")));
    }
    body.push_str(&format!("- **Files changed ({}):**\n", files.len()));
    for file in files.iter().take(50) {
        body.push_str(&format!("  - `{file}`\n"));
    }
    if files.len() > 50 {
        body.push_str(&format!("  - and {} more\n", files.len() - 50));
    }
    body.push_str(&format!("\n{}\n", marker(story.run)));
    body
}

/// `$0.0123 (1,234 tokens in, 567 out)`.
pub fn cost_text(usage: &common::Usage) -> String {
    let grouped = |n: u64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    format!("${:.4} ({} tokens in, {} out)", usage.cost_usd(), grouped(usage.tokens_in), grouped(usage.tokens_out))
}

fn looks_like_tests(command: &str) -> bool {
    ["pytest", "cargo test", "npm test", "go test", "make test", "unittest", "tox", "yarn test", "mvn test"]
        .iter()
        .any(|t| command.contains(t))
}

fn one_line(command: &str) -> String {
    let first = command.lines().next().unwrap_or_default();
    let mut line: String = first.chars().take(80).collect();
    if line.len() < command.len() {
        line.push('…');
    }
    line
}

/// Posts (or, for a retried run, updates) the run's comment on its issue,
/// with a token minted only for that and revoked at once. Returns the grant.
pub async fn comment_on_issue(
    app: &GitHubApp,
    repo: &RepoName,
    issue: u64,
    run: RunId,
    text: &str,
) -> Result<common::CredentialGrant, ForgeError> {
    let credential = app.credential(repo, "comment on the issue", COMMENT_PERMISSIONS).await?;
    let result = upsert_comment(&credential, repo, issue, run, text).await;
    credential.revoke().await;
    result.map(|()| credential.grant())
}

async fn upsert_comment(
    credential: &RepoCredential,
    repo: &RepoName,
    issue: u64,
    run: RunId,
    text: &str,
) -> Result<(), ForgeError> {
    let (owner, name) = (repo.owner(), repo.name());
    let body = format!("{text}\n\n{}", marker(run));
    let comments = credential.get(&format!("/repos/{owner}/{name}/issues/{issue}/comments?per_page=100")).await?;
    let mine = comments
        .as_array()
        .and_then(|all| all.iter().find(|c| c["body"].as_str().is_some_and(|b| b.contains(&marker(run)))))
        .and_then(|c| c["id"].as_u64());
    match mine {
        Some(id) => {
            credential.patch(&format!("/repos/{owner}/{name}/issues/comments/{id}"), &json!({"body": body})).await?
        }
        None => {
            credential.post(&format!("/repos/{owner}/{name}/issues/{issue}/comments"), &json!({"body": body})).await?
        }
    };
    Ok(())
}

/// Whether `user` may write to `repo` (admin, maintain or write).
pub async fn can_write(app: &GitHubApp, repo: &RepoName, user: &str) -> Result<bool, ForgeError> {
    let credential = app.credential(repo, "check the requester's permission", crate::github::READ_PERMISSIONS).await?;
    let (owner, name) = (repo.owner(), repo.name());
    let answer = credential.get_optional(&format!("/repos/{owner}/{name}/collaborators/{user}/permission")).await;
    credential.revoke().await;
    let permission: Option<Value> = answer?;
    Ok(permission.is_some_and(|p| matches!(p["permission"].as_str(), Some("admin" | "maintain" | "write"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_are_paddock_namespaced_and_name_the_issue() {
        let run: RunId = "01m8fn84p0rpjzfrb855faw0qp".parse().unwrap();
        assert_eq!(branch_name(run, Some(42)), "paddock/42-55faw0qp");
        assert_eq!(branch_name(run, None), "paddock/run-55faw0qp");
    }

    #[test]
    fn the_requester_is_shown_as_code_never_as_markdown() {
        let spec: RunSpec = serde_json::from_value(serde_json::json!({
            "tenant": "t", "repository": "acme/w", "base_ref": "main", "task_title": "t", "task_body": "",
            "agent_profile": "default", "requested_by": "[x](https://evil)\n# Approved `@org/all`",
            "via": "service-account:portal"
        }))
        .unwrap();
        let story = RunStory {
            agent: None,
            run: RunId::new(),
            spec: &spec,
            command: "agent",
            models: &[],
            usage: common::Usage { tokens_in: 1234, tokens_out: 5, cost_micro_usd: 12_300 },
            commands: &[],
            link: "https://paddock.example/v1/runs/x".to_owned(),
        };
        let body = pull_request_body(&story, &[]);
        assert!(
            body.contains("requested by `[x](https://evil)# Approved @org/all` (via `service-account:portal`)"),
            "{body}"
        );
        assert_eq!(code_span("alice@example.com"), "`alice@example.com`");
        assert!(body.contains("- **Cost:** $0.0123 (1,234 tokens in, 5 out)"), "{body}");
    }
}
