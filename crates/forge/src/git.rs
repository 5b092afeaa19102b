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
    /// The checkout would be over a bound (`what`, at most `limit`); nothing
    /// was written out.
    #[error("{what} is over its bound of {limit}")]
    TooLarge { what: &'static str, limit: u64 },
}

/// How large a checkout may be once written out: its files' bytes (with
/// the repository's `.git`) and their number.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutLimits {
    pub max_bytes: u64,
    pub max_files: u64,
}

/// A shallow checkout of one ref.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub commit: String,
    /// The tree's bytes plus the clone's `.git`, as checked against the bound.
    pub bytes: u64,
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

/// Sets `env` on `cmd`; an empty value removes the variable (so a proxy the
/// worker was started with does not leak into git).
fn with_env(cmd: &mut Command, env: &[(String, String)]) {
    for (key, value) in env {
        if value.is_empty() {
            cmd.env_remove(key);
        } else {
            cmd.env(key, value);
        }
    }
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
/// `auth` is environment for git: a credential header and the outbound
/// network settings ([`platform::outbound::Outbound::git_env`]).
pub async fn checkout(
    url: &str,
    base_ref: &str,
    dest: &Path,
    auth: &[(String, String)],
    limits: CheckoutLimits,
) -> Result<Checkout, GitError> {
    // One round trip: a missing repository or ref is told apart from a
    // failing server by what the clone says (no `ls-remote` probe first;
    // it cost a process and a request on every run's start). Nothing is
    // written out until the tree is known to fit.
    let mut clone = git();
    with_env(&mut clone, auth);
    clone.args(["clone", "--quiet", "--no-checkout", "--depth", "1", "--single-branch", "--no-tags"]);
    clone.args(["--branch", base_ref, "--", url]);
    clone.arg(dest);
    let (code, _, err) = run(clone).await?;
    if code != 0 {
        let lower = err.to_lowercase();
        if lower.contains("remote branch") && lower.contains("not found") {
            return Err(GitError::NotFound(format!("ref `{base_ref}` does not exist in the repository")));
        }
        if looks_missing(&err) {
            return Err(GitError::NotFound(format!("repository not found: {}", first_line(&err))));
        }
        return Err(GitError::Unavailable(format!("clone exited {code}: {}", first_line(&err))));
    }
    let packed = dir_bytes(dest.join(".git")).await;
    let bytes = check_tree_fits(dest, limits, packed).await?;
    let mut write_out = git();
    write_out.arg("-C").arg(dest).args(["reset", "--quiet", "--hard", "HEAD"]);
    let (code, _, err) = run(write_out).await?;
    if code != 0 {
        return Err(GitError::Unavailable(format!("checkout exited {code}: {}", first_line(&err))));
    }
    let commit = head(dest).await?;
    // The sandbox sees the tree, not where it came from.
    let mut scrub = git();
    scrub.arg("-C").arg(dest).args(["remote", "remove", "origin"]);
    run(scrub).await?;
    Ok(Checkout { commit, bytes })
}

/// Reads the commit's tree listing as it comes (a tree can name millions of
/// entries while its pack is tiny) and stops at the first bound crossed;
/// returns the bytes counted (`packed` and the tree's files).
async fn check_tree_fits(dest: &Path, limits: CheckoutLimits, packed: u64) -> Result<u64, GitError> {
    use tokio::io::AsyncBufReadExt;
    let mut list = git();
    list.arg("-C").arg(dest).args(["ls-tree", "-r", "-l", "-z", "--full-tree", "HEAD"]);
    list.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = list.spawn().map_err(|e| GitError::Unavailable(format!("cannot run git: {e}")))?;
    let stdout = child.stdout.take().ok_or_else(|| GitError::Unavailable("git ls-tree has no output".to_owned()))?;
    let mut reader = tokio::io::BufReader::new(stdout);
    let (mut bytes, mut files) = (packed, 0u64);
    let mut entry = Vec::new();
    loop {
        entry.clear();
        let read = reader
            .read_until(0, &mut entry)
            .await
            .map_err(|e| GitError::Unavailable(format!("reading the tree failed: {e}")))?;
        if read == 0 {
            break;
        }
        // `<mode> <type> <object> <size>\t<path>`: size is `-` for a submodule.
        let meta = entry.split(|b| *b == b'\t').next().unwrap_or_default();
        let size = meta.split(|b| *b == b' ').filter(|f| !f.is_empty()).nth(3).unwrap_or_default();
        bytes = bytes.saturating_add(std::str::from_utf8(size).ok().and_then(|s| s.parse().ok()).unwrap_or(0));
        files += 1;
        let over = if files > limits.max_files {
            Some(("the checkout's file count", limits.max_files))
        } else if bytes > limits.max_bytes {
            Some(("the checkout", limits.max_bytes))
        } else {
            None
        };
        if let Some((what, limit)) = over {
            let _ = child.kill().await;
            return Err(GitError::TooLarge { what, limit });
        }
    }
    let status = child.wait().await.map_err(|e| GitError::Unavailable(format!("git ls-tree: {e}")))?;
    if !status.success() {
        return Err(GitError::Unavailable(format!("git ls-tree exited {status}")));
    }
    Ok(bytes)
}

/// The bytes of the files under `dir` (the clone's `.git`: its pack).
async fn dir_bytes(dir: std::path::PathBuf) -> u64 {
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        let mut pending = vec![dir];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                match entry.metadata() {
                    Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                    Ok(meta) => total += meta.len(),
                    Err(_) => {}
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}

fn looks_missing(stderr: &str) -> bool {
    let s = stderr.to_lowercase();
    s.contains("not found") || s.contains("does not appear to be a git repository") || s.contains(" 404")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The commit checked out in `dir`.
pub async fn head(dir: &Path) -> Result<String, GitError> {
    let mut rev = git();
    rev.arg("-C").arg(dir).args(["rev-parse", "HEAD"]);
    let (code, commit, err) = run(rev).await?;
    if code != 0 {
        return Err(GitError::Unavailable(format!("rev-parse exited {code}: {}", first_line(&err))));
    }
    Ok(commit)
}

/// Why a diff could not become a commit.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The diff touches a path Paddock never writes (inside `.git`, absolute,
    /// or escaping the tree): the agent's output is refused.
    #[error("the diff is refused: {0}")]
    Unsafe(String),
    #[error("the diff does not apply: {0}")]
    DoesNotApply(String),
    #[error(transparent)]
    Git(#[from] GitError),
}

/// The sizes a diff's binary patches inflate to, from their `literal <n>`
/// and `delta <n>` headers: the largest one and their sum. (Text hunks are
/// as large as they look.)
pub fn inflated_sizes(diff: &[u8]) -> (u64, u64) {
    let mut in_binary = false;
    let (mut largest, mut total) = (0u64, 0u64);
    for line in diff.split(|b| *b == b'\n') {
        if line == b"GIT binary patch" {
            in_binary = true;
            continue;
        }
        if line.starts_with(b"diff --git ") {
            in_binary = false;
        }
        if !in_binary {
            continue;
        }
        let size = line
            .strip_prefix(b"literal ")
            .or_else(|| line.strip_prefix(b"delta "))
            .and_then(|n| std::str::from_utf8(n).ok())
            .and_then(|n| n.trim().parse::<u64>().ok());
        if let Some(size) = size {
            largest = largest.max(size);
            total = total.saturating_add(size);
        }
    }
    (largest, total)
}

/// Every path a git diff names, from its headers.
pub fn diff_paths(diff: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(diff);
    let mut paths = Vec::new();
    for line in text.lines() {
        let named = if let Some(rest) = line.strip_prefix("diff --git ") {
            rest.split(' ').map(|p| p.trim_start_matches("a/").trim_start_matches("b/").to_owned()).collect()
        } else if let Some(rest) = line.strip_prefix("+++ ").or_else(|| line.strip_prefix("--- ")) {
            vec![rest.trim_start_matches("a/").trim_start_matches("b/").to_owned()]
        } else if let Some(rest) =
            ["rename from ", "rename to ", "copy from ", "copy to "].iter().find_map(|p| line.strip_prefix(p))
        {
            vec![rest.to_owned()]
        } else {
            Vec::new()
        };
        paths.extend(named.into_iter().filter(|p| p != "/dev/null"));
    }
    paths
}

/// Refuses a diff that names a path inside `.git` (in any case), an
/// absolute path or one that climbs out of the tree.
pub fn check_diff_paths(diff: &[u8]) -> Result<(), PatchError> {
    for path in diff_paths(diff) {
        let path = path.trim_matches('"');
        // `.git` also in the spellings some filesystems fold to it
        // (`.GIT`, `.git.`, `.git `).
        let unsafe_component =
            path.split(['/', '\\']).any(|c| c == ".." || c.trim_end_matches(['.', ' ']).eq_ignore_ascii_case(".git"));
        if path.starts_with('/') || unsafe_component {
            return Err(PatchError::Unsafe(format!("it writes `{path}`")));
        }
    }
    Ok(())
}

/// Applies the agent's diff to the clean checkout in `dir` as data (hooks
/// and the repository's config never run) and commits it, signed with the
/// SSH key at `signing_key` when there is one. Returns the files the commit
/// changes; empty when the diff changes nothing.
pub async fn commit_diff(
    dir: &Path,
    diff: &[u8],
    author: (&str, &str),
    message: &str,
    signing_key: Option<&Path>,
) -> Result<Vec<String>, PatchError> {
    check_diff_paths(diff)?;
    let mut apply = git();
    apply.arg("-C").arg(dir).args(["apply", "--index", "--whitespace=nowarn", "-"]);
    apply.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = apply.spawn().map_err(|e| GitError::Unavailable(format!("cannot run git: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(diff).await.map_err(|e| GitError::Unavailable(format!("git apply: {e}")))?;
    }
    let out = child.wait_with_output().await.map_err(|e| GitError::Unavailable(format!("git apply: {e}")))?;
    if !out.status.success() {
        return Err(PatchError::DoesNotApply(first_line(&String::from_utf8_lossy(&out.stderr)).to_owned()));
    }
    let mut names = git();
    names.arg("-C").arg(dir).args(["diff", "--cached", "--name-only", "-z"]);
    let (_, listed, _) = run(names).await?;
    let files: Vec<String> = listed.split('\0').filter(|n| !n.is_empty()).map(str::to_owned).collect();
    if files.is_empty() {
        return Ok(files);
    }
    let (name, email) = author;
    let mut commit = git();
    commit.arg("-C").arg(dir).args(["-c", &format!("user.name={name}"), "-c", &format!("user.email={email}")]);
    match signing_key {
        Some(key) => {
            let key = format!("user.signingkey={}", key.display());
            commit.args(["-c", "gpg.format=ssh", "-c", &key, "-c", "gpg.ssh.program=ssh-keygen"]);
            commit.args(["commit", "--quiet", "--no-verify", "--gpg-sign", "-F", "-"]);
        }
        None => {
            commit.args(["commit", "--quiet", "--no-verify", "--no-gpg-sign", "-F", "-"]);
        }
    }
    commit
        .env("GIT_AUTHOR_NAME", name)
        .env("GIT_AUTHOR_EMAIL", email)
        .env("GIT_COMMITTER_NAME", name)
        .env("GIT_COMMITTER_EMAIL", email)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = commit.spawn().map_err(|e| GitError::Unavailable(format!("cannot run git: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(message.as_bytes()).await.map_err(|e| GitError::Unavailable(format!("git commit: {e}")))?;
    }
    let out = child.wait_with_output().await.map_err(|e| GitError::Unavailable(format!("git commit: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(GitError::Unavailable(format!("git commit: {}", first_line(&err))).into());
    }
    Ok(files)
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The server refused the branch as protected.
    #[error("the branch is protected: {0}")]
    Protected(String),
    /// The branch moved past what was checked out (someone pushed to it):
    /// a fast-forward-only push was refused.
    #[error("the branch has commits this checkout does not: {0}")]
    Moved(String),
    #[error(transparent)]
    Git(#[from] GitError),
}

/// How a push may move the branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushMode {
    /// The run's own new branch: a retried run replaces what an earlier
    /// attempt pushed.
    Replace,
    /// A follow-up on a branch people can push to: only a fast-forward.
    FastForward,
}

/// Pushes `HEAD` of `dir` to `branch` of `url`.
pub async fn push(
    dir: &Path,
    url: &str,
    branch: &str,
    mode: PushMode,
    auth: &[(String, String)],
) -> Result<(), PushError> {
    let mut push = git();
    with_env(&mut push, auth);
    push.arg("-C").arg(dir).args(["push", "--quiet", "--no-verify"]);
    if mode == PushMode::Replace {
        push.arg("--force");
    }
    push.args(["--", url]).arg(format!("HEAD:refs/heads/{branch}"));
    let (code, _, err) = run(push).await?;
    if code == 0 {
        return Ok(());
    }
    let lower = err.to_lowercase();
    if lower.contains("protected branch") || lower.contains("gh006") || lower.contains("gh013") {
        return Err(PushError::Protected(first_line(&err).to_owned()));
    }
    if lower.contains("[rejected]") && (lower.contains("fetch first") || lower.contains("non-fast-forward")) {
        return Err(PushError::Moved(first_line(&err).to_owned()));
    }
    Err(GitError::Unavailable(format!("push exited {code}: {}", err.lines().last().unwrap_or_default())).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_patches_declare_what_they_inflate_to() {
        let diff = b"diff --git a/big.bin b/big.bin\nnew file mode 100644\nindex 0000000..1234567\nGIT binary patch\nliteral 104857600\nzcmeIuF#!#Z\n\nliteral 0\nHcmV?d00001\n\ndiff --git a/x.txt b/x.txt\n--- a/x.txt\n+++ b/x.txt\n@@ -1 +1 @@\n-literal 999999999999\n+b\ndiff --git a/d.bin b/d.bin\nGIT binary patch\ndelta 2048\nzcmV\n";
        assert_eq!(inflated_sizes(diff), (104_857_600, 104_857_600 + 2048));
        assert_eq!(inflated_sizes(b"diff --git a/a b/a\n+literal 5\n"), (0, 0), "text is not a binary patch");
    }

    #[test]
    fn diffs_that_write_into_git_or_outside_the_tree_are_refused() {
        let ok = b"diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-a\n+b\n";
        assert!(check_diff_paths(ok).is_ok());
        for bad in [
            "diff --git a/.git/hooks/post-commit b/.git/hooks/post-commit\nnew file mode 100755\n",
            "diff --git a/x/.GIT/config b/x/.GIT/config\n",
            "diff --git a/x b/y\nrename from x\nrename to .git./hooks/pre-push\n",
            "--- /dev/null\n+++ b/../../etc/passwd\n",
            "--- /dev/null\n+++ /etc/passwd\n",
        ] {
            assert!(check_diff_paths(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
