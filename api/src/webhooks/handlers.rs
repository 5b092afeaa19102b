//! GitHub webhooks. A delivery is accepted only with a valid
//! `X-Hub-Signature-256` over its exact body and a delivery id never seen
//! before.
//!
//! - `issues.labeled` with the configured label, or `issues.assigned` to the
//!   App's bot user, starts a run for the issue.
//! - On a pull request Paddock opened: a review requesting changes (or one
//!   whose text mentions the App), or a review comment or comment that
//!   mentions it (`@paddock` or the bot login without `[bot]`), starts a
//!   follow-up run on the pull request's branch, its task holding the whole
//!   conversation.
//!
//! The run is requested by the GitHub user who asked, and only if that user
//! is linked to a person and may write to the repository; otherwise the
//! issue or pull request gets a comment saying why nothing started.

use actix_web::{HttpRequest, HttpResponse, post, web};
use common::{AgentProfile, Priority, RepoName, RunId, RunSpec};
use forge::{follow_up, publish};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::problem::{ErrorCode, Problem};
use crate::startup::AppState;

/// What a delivery asked for.
enum Trigger {
    Ask { repo: RepoName, sender: String, what: What },
    Ignore(String),
}

enum What {
    /// A run for an issue.
    Issue { issue: u64, title: String, body: String, base_ref: String },
    /// A follow-up on pull request `pull`.
    FollowUp { pull: u64, asked: follow_up::Trigger },
}

/// A request for a run, with what it needs read from GitHub.
struct Request {
    repo: RepoName,
    sender: String,
    /// Where Paddock answers: the issue, or the pull request.
    thread: u64,
    asked: Asked,
}

enum Asked {
    Issue { title: String, body: String, base_ref: String },
    FollowUp { asked: follow_up::Trigger, conversation: Box<follow_up::Conversation> },
}

/// Receive a GitHub webhook delivery (signed with the App's webhook secret).
#[utoipa::path(
    tag = "webhooks",
    request_body(content = Object, description = "A GitHub webhook payload, signed in `X-Hub-Signature-256`"),
    params(
        ("X-GitHub-Event" = String, Header, description = "`issues`, `pull_request_review`, `pull_request_review_comment`, `issue_comment` or `ping`"),
        ("X-GitHub-Delivery" = String, Header, description = "Unique id of the delivery; a replay is refused"),
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` HMAC of the body under the webhook secret"),
    ),
    responses(
        (status = 202, description = "A run was started", body = crate::runs::dto::RunAccepted),
        (status = 200, description = "Understood, nothing to do (or the requester may not write)"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "Missing or wrong signature"),
        (status = 409, body = Problem, content_type = "application/problem+json", description = "A delivery seen before"),
    ),
    security(("github_signature" = []))
)]
#[post("/v1/webhooks/github")]
pub async fn github_webhook(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let Some(secret) = &state.config.github.webhook_secret else {
        return Err(
            Problem::new(ErrorCode::NotConfigured).detail("set github.webhook_secret (and the App) to receive them")
        );
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    if !signature_valid(secret.expose_secret(), &body, &header("x-hub-signature-256")) {
        return Err(Problem::new(ErrorCode::BadSignature)
            .detail("X-Hub-Signature-256 must be the HMAC-SHA256 of the body under the App's webhook secret"));
    }
    let delivery = header("x-github-delivery");
    if delivery.is_empty() || delivery.len() > 100 {
        return Err(Problem::bad_request("X-GitHub-Delivery is required").field("X-GitHub-Delivery"));
    }
    if !state.queue.first_delivery(&delivery).await? {
        return Err(
            Problem::new(ErrorCode::ReplayedDelivery).detail(format!("delivery {delivery} was processed before"))
        );
    }
    let result = handle(&state, &header("x-github-event"), &body, crate::request_id::of(&req)).await;
    if result.is_err() {
        // Let GitHub's redelivery through once the cause is gone.
        let _ = state.queue.forget_delivery(&delivery).await;
    }
    result
}

/// `sha256=<hex>` over `body`, compared in constant time.
fn signature_valid(secret: &str, body: &[u8], presented: &str) -> bool {
    let Some(hex) = presented.strip_prefix("sha256=") else { return false };
    let Some(expected) = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn handle(
    state: &AppState,
    event: &str,
    body: &[u8],
    request_id: Option<String>,
) -> Result<HttpResponse, Problem> {
    let payload: Value =
        serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("the payload is not JSON: {e}")))?;
    let github = &state.config.github;
    let trigger = match event {
        "ping" => Trigger::Ignore("pong".to_owned()),
        "issues" => trigger(github, &payload)?,
        "pull_request_review" | "pull_request_review_comment" | "issue_comment" => {
            follow_up_trigger(github, event, &payload)?
        }
        other => Trigger::Ignore(format!("event `{other}` does not start runs")),
    };
    let ignored = |reason: String| Ok(HttpResponse::Ok().json(json!({"status": "ignored", "reason": reason})));
    let (repo, sender, what) = match trigger {
        Trigger::Ignore(reason) => return ignored(reason),
        Trigger::Ask { repo, sender, what } => (repo, sender, what),
    };
    let Some(app) = &state.github else {
        return Err(Problem::unavailable("the GitHub App is not configured (github.app_id)"));
    };
    let forge = |e: forge::ForgeError| Problem::unavailable(format!("GitHub: {e}"));
    let wanted = match what {
        What::Issue { issue, title, body, base_ref } => {
            Request { repo, sender, thread: issue, asked: Asked::Issue { title, body, base_ref } }
        }
        What::FollowUp { pull, asked } => {
            // Only a pull request Paddock opened gets a follow-up.
            let conversation = follow_up::read(app, &repo, pull, &sender).await.map_err(forge)?;
            if let Some(reason) = not_ours(github, &conversation.pull) {
                return ignored(reason);
            }
            let asked = Asked::FollowUp { asked, conversation: Box::new(conversation) };
            Request { repo, sender, thread: pull, asked }
        }
    };
    let Request { repo, sender, thread, .. } = &wanted;
    let thread = *thread;
    let refuse = async |text: String, reason: &str| {
        publish::comment_on_issue(app, repo, thread, RunId::new(), &text).await.map_err(forge)?;
        tracing::info!(%repo, thread, %sender, reason, "webhook run refused");
        Ok(HttpResponse::Ok().json(json!({"status": "refused", "reason": reason})))
    };
    let person = state.config.identity.github_logins.iter().find(|(login, _)| login.eq_ignore_ascii_case(sender));
    let Some((_, person)) = person else {
        let text = format!(
            "@{sender}, your GitHub login is not linked to a person in Paddock (`identity.github_logins`), so no run can be tied to you; nothing was started."
        );
        return refuse(text, "the GitHub login is not linked to a person").await;
    };
    if state.identity().status_named(person, state.issuer()).await?.deactivated {
        let text = format!("@{sender}, your Paddock account is deactivated; nothing was started.");
        return refuse(text, "the person is deactivated").await;
    }
    let owned = match crate::tenants::owner(state, repo).await {
        Ok(owned) => owned,
        Err(problem) if problem.status == 403 => {
            let why = problem.detail.unwrap_or_default();
            let text = format!(
                "@{sender}, Paddock runs agents only on repositories a tenant owns: {why}. Nothing was started."
            );
            return refuse(text, "no tenant owns the repository").await;
        }
        Err(problem) => return Err(problem),
    };
    // A follow-up's conversation already says whether the asker may write.
    let may_write = match &wanted.asked {
        Asked::FollowUp { conversation, .. } => conversation.may_write(sender),
        Asked::Issue { .. } => publish::can_write(app, repo, sender).await.map_err(forge)?,
    };
    if !may_write {
        let text =
            format!("@{sender}, Paddock starts runs only for people with write access to {repo}; nothing was started.");
        return refuse(text, "the requester may not write to the repository").await;
    }
    if let Asked::FollowUp { conversation, .. } = &wanted.asked
        && !conversation.pull.head_repository.eq_ignore_ascii_case(&repo.to_string())
    {
        let text = format!(
            "@{sender}, this pull request's branch is in {}; Paddock follows up only on branches in {repo}. Nothing was started.",
            conversation.pull.head_repository
        );
        return refuse(text, "follow-ups on a fork's branch are not supported").await;
    }
    let spec = spec_for(state, owned.tenant(), person, wanted).await?;
    let request = crate::runs::service::Request {
        actor: common::audit::Actor {
            principal: spec.requested_by.clone(),
            method: "github-webhook".to_owned(),
            via: spec.via.clone(),
        },
        source_ip: None,
        // No idempotency key: replays are refused by delivery id above.
        idempotency: None,
        request_id,
    };
    let run = crate::runs::service::submit(state, &owned, spec, request, None).await?;
    tracing::info!(run_id = %run.id, thread, state = ?run.state, "run accepted from a GitHub webhook");
    Ok(crate::runs::handlers::accepted(run))
}

/// Why pull request `pull` gets no follow-up, if it gets none: Paddock did
/// not open it, it is closed, or it names no Paddock run.
fn not_ours(github: &common::config::GitHubConfig, pull: &follow_up::PullRequest) -> Option<String> {
    let number = pull.number;
    let ours = pull.author.eq_ignore_ascii_case(&github.bot_login) && pull.head_ref.starts_with("paddock/");
    if !ours {
        Some(format!("#{number} is not a pull request Paddock opened"))
    } else if pull.state != "open" {
        Some(format!("#{number} is {}", pull.state))
    } else if pull.last_run().is_none() {
        Some(format!("#{number} names no Paddock run"))
    } else {
        None
    }
}

/// The run `request` asks for, tied to `person` in `tenant`. A follow-up
/// continues the run the pull request names last: its profile and issue
/// while its record is kept, the pull request's own `Fixes #N` and the
/// webhook profile otherwise.
async fn spec_for(state: &AppState, tenant: &str, person: &str, request: Request) -> Result<RunSpec, Problem> {
    let github = &state.config.github;
    let Request { repo, sender, thread, asked } = request;
    let spec = RunSpec {
        tenant: tenant.to_owned(),
        priority: Priority::Normal,
        repository: repo,
        base_ref: String::new(),
        task_title: String::new(),
        task_body: String::new(),
        agent_profile: github.agent_profile.parse::<AgentProfile>()?,
        requested_by: person.to_owned(),
        via: Some(format!("github:{sender}")),
        policy: None,
        issue: None,
        submitted_by: None,
        trace_parent: None,
        parent_run: None,
        follow_up: None,
    };
    let spec = match asked {
        Asked::Issue { title, body, base_ref } => RunSpec {
            base_ref,
            task_title: title.chars().take(RunSpec::MAX_TITLE).collect(),
            task_body: body.chars().take(RunSpec::MAX_BODY).collect(),
            issue: Some(thread),
            ..spec
        },
        Asked::FollowUp { asked, conversation } => {
            let parent = conversation.pull.last_run();
            let parent_record = match parent {
                Some(id) => state.queue.get(id).await?,
                None => None,
            };
            let (task_title, task_body) = conversation.task(asked, RunSpec::MAX_BODY);
            let pull = &conversation.pull;
            let follow_up = common::FollowUp {
                pull_request: pull.number,
                branch: pull.head_ref.clone(),
                base: pull.base_ref.clone(),
                head_sha: pull.head_sha.clone(),
                trigger: asked.to_string(),
                requested_by_login: sender,
                answer_review_comments: conversation.to_answer(asked),
            };
            RunSpec {
                base_ref: pull.head_ref.clone(),
                task_title,
                task_body,
                agent_profile: parent_record
                    .as_ref()
                    .map_or(spec.agent_profile.clone(), |r| r.spec.agent_profile.clone()),
                issue: parent_record.as_ref().and_then(|r| r.spec.issue).or(pull.fixes()),
                parent_run: parent,
                follow_up: Some(follow_up),
                ..spec
            }
        }
    };
    Ok(if spec.task_title.trim().is_empty() {
        RunSpec { task_title: format!("Issue #{thread}"), ..spec }
    } else {
        spec
    })
}

/// The names a comment mentions the App by: `@paddock` and the bot login
/// without `[bot]`.
fn mention_names(github: &common::config::GitHubConfig) -> Vec<String> {
    let stem = github.bot_login.trim_end_matches("[bot]").to_owned();
    let mut names = vec!["paddock".to_owned()];
    if !stem.is_empty() && !stem.eq_ignore_ascii_case("paddock") {
        names.push(stem);
    }
    names
}

/// A review requesting changes (or mentioning the App), or a review
/// comment or pull request comment mentioning it.
fn follow_up_trigger(github: &common::config::GitHubConfig, event: &str, payload: &Value) -> Result<Trigger, Problem> {
    let action = payload["action"].as_str().unwrap_or_default();
    let names = mention_names(github);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let sender = payload["sender"]["login"].as_str().unwrap_or_default().to_owned();
    // Never a follow-up on the App's own words (its replies quote reviews).
    if sender.eq_ignore_ascii_case(&github.bot_login) || payload["sender"]["type"] == "Bot" {
        return Ok(Trigger::Ignore(format!("{event} from a bot")));
    }
    let (text, pull, asked) = match (event, action) {
        ("pull_request_review", "submitted") => {
            let review = &payload["review"];
            let body = review["body"].as_str().unwrap_or_default();
            let changes = review["state"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("changes_requested"));
            if !changes && !follow_up::mentions(body, &names) {
                return Ok(Trigger::Ignore("a review that neither requests changes nor mentions the App".to_owned()));
            }
            let id = review["id"].as_u64().ok_or_else(|| missing("review.id"))?;
            ("review", payload["pull_request"]["number"].as_u64(), follow_up::Trigger::Review(id))
        }
        ("pull_request_review_comment", "created") => {
            let comment = &payload["comment"];
            if !follow_up::mentions(comment["body"].as_str().unwrap_or_default(), &names) {
                return Ok(Trigger::Ignore("a review comment that does not mention the App".to_owned()));
            }
            let id = comment["id"].as_u64().ok_or_else(|| missing("comment.id"))?;
            ("review comment", payload["pull_request"]["number"].as_u64(), follow_up::Trigger::ReviewComment(id))
        }
        ("issue_comment", "created") => {
            if payload["issue"]["pull_request"].is_null() {
                return Ok(Trigger::Ignore("a comment on an issue, not a pull request".to_owned()));
            }
            let comment = &payload["comment"];
            if !follow_up::mentions(comment["body"].as_str().unwrap_or_default(), &names) {
                return Ok(Trigger::Ignore("a comment that does not mention the App".to_owned()));
            }
            let id = comment["id"].as_u64().ok_or_else(|| missing("comment.id"))?;
            ("comment", payload["issue"]["number"].as_u64(), follow_up::Trigger::IssueComment(id))
        }
        _ => return Ok(Trigger::Ignore(format!("{event}.{action} does not start a run here"))),
    };
    let pull =
        pull.ok_or_else(|| missing(if event == "issue_comment" { "issue.number" } else { "pull_request.number" }))?;
    let repo: RepoName =
        payload["repository"]["full_name"].as_str().ok_or_else(|| missing("repository.full_name"))?.parse()?;
    if sender.is_empty() {
        return Err(missing("sender.login"));
    }
    tracing::debug!(%repo, pull, text, "follow-up asked for");
    Ok(Trigger::Ask { repo, sender, what: What::FollowUp { pull, asked } })
}

fn missing(field: &str) -> Problem {
    Problem::bad_request(format!("the payload has no {field}")).field(field.to_owned())
}

fn trigger(github: &common::config::GitHubConfig, payload: &Value) -> Result<Trigger, Problem> {
    let action = payload["action"].as_str().unwrap_or_default();
    let starts = match action {
        "labeled" => payload["label"]["name"].as_str() == Some(github.trigger_label.as_str()),
        "assigned" => payload["assignee"]["login"].as_str() == Some(github.bot_login.as_str()),
        _ => false,
    };
    if !starts {
        return Ok(Trigger::Ignore(format!("issues.{action} does not start a run here")));
    }
    let repo: RepoName =
        payload["repository"]["full_name"].as_str().ok_or_else(|| missing("repository.full_name"))?.parse()?;
    let issue = payload["issue"]["number"].as_u64().ok_or_else(|| missing("issue.number"))?;
    let sender = payload["sender"]["login"].as_str().ok_or_else(|| missing("sender.login"))?.to_owned();
    let base_ref = payload["repository"]["default_branch"].as_str().unwrap_or("main").to_owned();
    let title = payload["issue"]["title"].as_str().unwrap_or_default().to_owned();
    let body = payload["issue"]["body"].as_str().unwrap_or_default().to_owned();
    Ok(Trigger::Ask { repo, sender, what: What::Issue { issue, title, body, base_ref } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_signature_of_the_exact_body_passes() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(b"{\"a\":1}");
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert!(signature_valid("s3cret", b"{\"a\":1}", &format!("sha256={hex}")));
        assert!(!signature_valid("s3cret", b"{\"a\":2}", &format!("sha256={hex}")));
        assert!(!signature_valid("other", b"{\"a\":1}", &format!("sha256={hex}")));
        assert!(!signature_valid("s3cret", b"{\"a\":1}", &hex));
        assert!(!signature_valid("s3cret", b"{\"a\":1}", "sha256=zz"));
    }
}
