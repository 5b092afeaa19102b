//! Git on the worker host: the clone happens here, never in the sandbox, and
//! never runs hooks or reads templates from the repository.

use std::path::Path;
use std::process::Stdio;

use common::RepoName;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The repository or ref does not exist: retrying cannot help.
    #[error("{0}")]
    NotFound(String),
    /// The git server or the network failed: worth a retry.
    #[error("git: {0}")]
    Unavailable(String),
}

/// A shallow checkout of one ref.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub commit: String,
}

/// The URL the worker clones `repo` from.
pub fn clone_url(base_url: &str, repo: &RepoName) -> String {
    format!("{}/{}/{}.git", base_url.trim_end_matches('/'), repo.owner(), repo.name())
}

fn git() -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args(["-c", "core.hooksPath=/dev/null", "-c", "init.templateDir=", "-c", "protocol.file.allow=never"])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> Result<(i32, String, String), GitError> {
    let out = cmd.output().await.map_err(|e| GitError::Unavailable(format!("cannot run git: {e}")))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    ))
}

/// Clones `base_ref` of `url` into `dest` (which must not exist) at depth 1.
pub async fn checkout(url: &str, base_ref: &str, dest: &Path) -> Result<Checkout, GitError> {
    let mut probe = git();
    probe.args(["ls-remote", "--exit-code", "--", url, base_ref]);
    match run(probe).await? {
        (0, _, _) => {}
        (2, _, _) => return Err(GitError::NotFound(format!("ref `{base_ref}` does not exist in the repository"))),
        (_, _, err) if looks_missing(&err) => {
            return Err(GitError::NotFound(format!("repository not found: {}", first_line(&err))));
        }
        (code, _, err) => return Err(GitError::Unavailable(format!("ls-remote exited {code}: {}", first_line(&err)))),
    }
    let mut clone = git();
    clone.args(["clone", "--quiet", "--depth", "1", "--single-branch", "--no-tags", "--branch", base_ref, "--", url]);
    clone.arg(dest);
    let (code, _, err) = run(clone).await?;
    if code != 0 {
        return Err(GitError::Unavailable(format!("clone exited {code}: {}", first_line(&err))));
    }
    let mut rev = git();
    rev.arg("-C").arg(dest).args(["rev-parse", "HEAD"]);
    let (code, commit, err) = run(rev).await?;
    if code != 0 {
        return Err(GitError::Unavailable(format!("rev-parse exited {code}: {}", first_line(&err))));
    }
    // The sandbox sees the tree, not where it came from.
    let mut scrub = git();
    scrub.arg("-C").arg(dest).args(["remote", "remove", "origin"]);
    run(scrub).await?;
    Ok(Checkout { commit })
}

fn looks_missing(stderr: &str) -> bool {
    let s = stderr.to_lowercase();
    s.contains("not found") || s.contains("does not appear to be a git repository") || s.contains(" 404")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}
