//! With a GitHub App: a completed run's diff becomes a pushed branch and a
//! draft pull request, and the issue is told what happened.

use common::{RunFacts, StopReason};
use forge::publish::{self, Destination, PublishError, Published, RunStory};
use forge::{FORK_PUSH_PERMISSIONS, ForgeError, GitHubApp, RepoCredential};
use store::ClaimedRun;

use super::Runtime;
use super::error::RunError;
use super::log::RunLog;

/// What publishing needs: the App and the run's token (when GitHub is
/// configured), the host checkout and where it came from.
pub(super) struct Forge<'a> {
    pub(super) app: Option<&'a GitHubApp>,
    pub(super) credential: Option<&'a RepoCredential>,
    pub(super) checkout: &'a std::path::Path,
    pub(super) clone_url: &'a str,
}

impl Runtime {
    /// Publishes a completed run, then revokes the run's token and comments
    /// on the issue. Returns the final stop reason; a forge failure worth
    /// another attempt is a retry.
    pub(super) async fn publish(
        &self,
        run: &ClaimedRun,
        reason: StopReason,
        diff: &[u8],
        forge: &Forge<'_>,
        record: &mut RunFacts,
        log: &mut RunLog,
    ) -> Result<StopReason, RunError> {
        let (Some(app), Some(credential)) = (forge.app, forge.credential) else { return Ok(reason) };
        let (reason, note) = match reason {
            StopReason::Completed => self.push_and_open(run, app, credential, forge, diff, record, log).await?,
            other => (other, None),
        };
        credential.revoke().await;
        record.credentials.push(credential.grant());
        // A follow-up tells its pull request; a first run its issue.
        let told = run.spec.follow_up.as_ref().map(|f| f.pull_request).or(run.spec.issue);
        if let (Some(issue), Some(note)) = (told, note) {
            match publish::comment_on_issue(app, &run.spec.repository, issue, run.id, &note).await {
                Ok(grant) => record.credentials.push(grant),
                Err(error) => log.line(&format!("paddock: commenting on #{issue} failed: {error}")),
            }
        }
        Ok(reason)
    }

    /// Pushes the branch (to the repository, or with `publish.mode = "fork"`
    /// to its fork with a token for the fork alone, revoked at once) and
    /// opens (or updates) the draft pull request.
    #[allow(clippy::too_many_arguments)]
    async fn push_and_open(
        &self,
        run: &ClaimedRun,
        app: &GitHubApp,
        credential: &RepoCredential,
        forge: &Forge<'_>,
        diff: &[u8],
        record: &mut RunFacts,
        log: &mut RunLog,
    ) -> Result<(StopReason, Option<String>), RunError> {
        let Some(fork) = self.config.publish.fork_of(&run.spec.repository) else {
            return push_and_open(run, app, credential, forge, diff, &Destination::Repository, record, log).await;
        };
        let fork_credential = match app.credential(&fork, "push to the fork", FORK_PUSH_PERMISSIONS).await {
            Ok(fork_credential) => fork_credential,
            Err(ForgeError::Unavailable(message)) => {
                return Err(RunError::Retry(format!("minting the fork's token failed: {message}")));
            }
            Err(e) => {
                let message = format!("the fork {fork} (publish.fork_owner): {e}");
                log.line(&format!("paddock: no credential for {message}"));
                return Ok((StopReason::CredentialError { message }, None));
            }
        };
        let clone_url = forge::git::clone_url(&self.config.git.base_url, &fork);
        let destination = Destination::Fork { repo: &fork, credential: &fork_credential, clone_url: &clone_url };
        let ended = push_and_open(run, app, credential, forge, diff, &destination, record, log).await;
        fork_credential.revoke().await;
        record.credentials.push(fork_credential.grant());
        ended
    }
}

/// Pushes the branch to `destination` and opens (or updates) the draft pull
/// request. Returns the stop reason and the note for the issue, if any.
#[allow(clippy::too_many_arguments)]
async fn push_and_open(
    run: &ClaimedRun,
    app: &GitHubApp,
    credential: &RepoCredential,
    forge: &Forge<'_>,
    diff: &[u8],
    destination: &Destination<'_>,
    record: &mut RunFacts,
    log: &mut RunLog,
) -> Result<(StopReason, Option<String>), RunError> {
    let command = record.commands.first().cloned().unwrap_or_default();
    let story = RunStory {
        run: run.id,
        spec: &run.spec,
        command: &command,
        agent: record.agent.as_ref(),
        models: &record.models,
        usage: record.usage,
        commands: &record.commands[1.min(record.commands.len())..],
        link: format!("{}/v1/runs/{}", app.config.run_link_base.trim_end_matches('/'), run.id),
    };
    let published = match &run.spec.follow_up {
        None => publish::publish(app, credential, forge.checkout, forge.clone_url, diff, &story, destination).await,
        Some(follow_up) => {
            publish::publish_follow_up(app, credential, forge.checkout, forge.clone_url, diff, &story, follow_up).await
        }
    };
    let ended = match published {
        Ok(Published::NoChanges) => {
            log.line("paddock: the agent changed nothing; no branch, no pull request");
            let note = format!(
                "Paddock run [`{}`]({}) finished without changing anything, so no pull request was opened.",
                run.id, story.link
            );
            (StopReason::Completed, Some(note))
        }
        Ok(Published::PullRequest(pushed)) => {
            let publish::Pushed { branch, pull_request, files, commit, answered, verification } = *pushed;
            let pushed = match &pull_request.head_repository {
                Some(fork) => format!("{fork}:{branch}"),
                None => branch.clone(),
            };
            log.line(&format!("paddock: pushed {pushed}; draft pull request {} (commit {commit})", pull_request.url));
            let requester = forge::publish::code_span(&run.spec.requested_by);
            let note = match &run.spec.follow_up {
                None => format!(
                    "Paddock opened draft pull request #{} for this issue (run [`{}`]({}), requested by {requester}; \
                     models cost {}).",
                    pull_request.number,
                    run.id,
                    story.link,
                    forge::publish::cost_text(&record.usage),
                ),
                Some(follow_up) => format!(
                    "Paddock pushed `{}` to `{branch}` for {} (run [`{}`]({}), requested by {requester}); \
                     it answered {} review comment(s). The pull request stays a draft.",
                    &commit[..commit.len().min(12)],
                    forge::publish::code_span(&format!("@{}", follow_up.requested_by_login)),
                    run.id,
                    story.link,
                    answered.len(),
                ),
            };
            record.files_changed = files;
            record.branch = Some(branch);
            record.pull_request = Some(pull_request);
            record.pushed_commit = Some(commit);
            record.answered_comments = answered;
            record.commit_signature = app.signing().map(|(_, signature)| common::CommitSignature {
                github_verification: verification,
                ..signature.clone()
            });
            (StopReason::Completed, Some(note))
        }
        Err(PublishError::BranchMoved { branch, at }) => {
            log.line(&format!(
                "paddock: {branch} moved after the run checked it out at {at}; nothing was pushed (no rebase, no force-push)"
            ));
            let note = format!(
                "Paddock run [`{}`]({}) did not push: someone pushed to `{branch}` after the run checked it out at \
                 `{}`, and Paddock never rebases or force-pushes a branch a person touched. Ask again (mention the \
                 App) to start a follow-up from the new head.",
                run.id,
                story.link,
                &at[..at.len().min(12)],
            );
            (StopReason::BranchMoved { branch }, Some(note))
        }
        Err(PublishError::Protected(branch)) => {
            log.line(&format!("paddock: refusing to push {branch}: default or protected branch"));
            (StopReason::ProtectedBranchRefused { branch }, None)
        }
        Err(PublishError::Patch(e)) => {
            log.line(&format!("paddock: {e}"));
            record.files_changed.clear();
            (StopReason::AgentFailed { exit_code: -1 }, None)
        }
        Err(PublishError::NotAFork(message)) => {
            log.line(&format!("paddock: {message}"));
            (StopReason::CredentialError { message }, None)
        }
        Err(PublishError::Forge(ForgeError::Refused(message))) => {
            log.line(&format!("paddock: GitHub refused: {message}"));
            (StopReason::CredentialError { message }, None)
        }
        Err(e) => return Err(RunError::retry("publishing", e)),
    };
    Ok(ended)
}
