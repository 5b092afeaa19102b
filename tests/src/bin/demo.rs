//! `cargo xtask demo`: Paddock's main job end to end on local defaults.
//!
//! Starts an emulated GitHub (REST, git over HTTP, signed webhooks) with a
//! sample repository and issue, an emulated model provider that plays a
//! scripted model, and the real `api` and `worker` binaries. Labelling the
//! issue `paddock` delivers a webhook; the run's reference agent works in
//! its sandbox through the gateway; the worker pushes a branch and opens a
//! draft pull request. Then alice reviews it, requesting a change on a
//! line of the diff; the review's webhook starts a follow-up run on the
//! pull request's branch, whose commit lands on the same branch and whose
//! reply answers the comment. Prints the pull request, both runs' records
//! and the audit summary.
//!
//! With `PADDOCK_GITHUB__APP_ID` (and the rest of `[github]`) set, the demo
//! uses that GitHub instead, requesting a run for `PADDOCK_DEMO_REPOSITORY`
//! issue `PADDOCK_DEMO_ISSUE` through the API; with `PADDOCK_GATEWAY__*`
//! providers set, the agent calls them (`PADDOCK_DEMO_MODEL`).
//!
//! `PADDOCK_DEMO_AGENT=<name>` runs a shipped agent instead of the
//! reference one (`claude-code`, `codex`, `aider`, `opencode`, `gemini-cli`,
//! `openhands`: a profile of `infra/agents/profiles.toml`, in the image
//! `cargo xtask images` built), its scripted model answering through the
//! agent's own tools.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::github::GitHub;
use tests::providers::EmulatedProviders;
use tests::services;

/// What the scripted model answers, turn by turn.
const SCRIPT: &[&str] = &[
    "Let me find the misspellings.\n```bash\ngrep -rnE 'teh|recieve' --include='*.md' --include='*.py' .\n```",
    "```bash\nsed -i -E 's/\\bteh\\b/the/g; s/recieve/receive/g' README.md widgets.py\n```",
    "```bash\npython3 -c 'import ast; ast.parse(open(\"widgets.py\").read())' && git diff --stat\n```",
    "Both files are fixed and widgets.py still parses.\nPADDOCK_DONE",
];

/// What the reference agent's model answers in the follow-up run.
const REVIEW_SCRIPT: &[&str] = &[
    "```bash\nsed -i 's/Ship the parts of an order\\./Ship the parts of an order and return it./' widgets.py && git diff --stat\n```",
    "The docstring now says what ship returns.\nPADDOCK_DONE",
];

/// The review comment the demo's reviewer leaves on the docstring (line 2
/// of widgets.py, in the pull request's diff).
const REVIEW_COMMENT: &str = "Say that it returns the order, too.";

const CHECK: &str = "python3 -c 'import ast; ast.parse(open(\"widgets.py\").read())' && git diff --stat";

/// One line of a file changed: the file, the line before and after, and
/// the whole file after.
struct Edit {
    file: &'static str,
    before: &'static str,
    after: &'static str,
    text: &'static str,
}

/// The issue's fix: both typos.
const FIX: &[Edit] = &[
    Edit {
        file: "README.md",
        before: "Widgets recieve orders and ship teh parts.\n",
        after: "Widgets receive orders and ship the parts.\n",
        text: "# Widgets\n\nWidgets receive orders and ship the parts.\n",
    },
    Edit {
        file: "widgets.py",
        before: "    \"\"\"Ship teh parts of an order.\"\"\"\n",
        after: "    \"\"\"Ship the parts of an order.\"\"\"\n",
        text: "def ship(order):\n    \"\"\"Ship the parts of an order.\"\"\"\n    return order\n",
    },
];

/// What the reviewer asked for.
const REVIEWED: &[Edit] = &[Edit {
    file: "widgets.py",
    before: "    \"\"\"Ship the parts of an order.\"\"\"\n",
    after: "    \"\"\"Ship the parts of an order and return it.\"\"\"\n",
    text: "def ship(order):\n    \"\"\"Ship the parts of an order and return it.\"\"\"\n    return order\n",
}];

/// What the scripted model does through a shipped agent's own tools: the
/// files rewritten, then checked; aider gets it as one answer in its
/// SEARCH/REPLACE format, and OpenHands (whose file editor creates files
/// but will not overwrite one) rewrites them in its terminal.
fn demo_plan(agent: &str, edits: &[Edit]) -> Vec<tests::scripted::Step> {
    use tests::scripted::Step;
    if agent == "openhands" {
        let mut steps: Vec<Step> =
            edits.iter().map(|e| Step::run(&format!("cat > {} <<'EOF'\n{}EOF", e.file, e.text))).collect();
        steps.push(Step::run(CHECK));
        return steps;
    }
    if agent == "aider" {
        let blocks: String = edits
            .iter()
            .map(|e| {
                format!("{}\n```\n<<<<<<< SEARCH\n{}=======\n{}>>>>>>> REPLACE\n```\n\n", e.file, e.before, e.after)
            })
            .collect();
        return vec![Step::Say(format!("Making the change.\n\n{blocks}```bash\n{CHECK}\n```\n"))];
    }
    let mut steps: Vec<Step> = edits.iter().map(|e| Step::write(e.file, e.text)).collect();
    steps.push(Step::run(CHECK));
    steps
}

struct Children(Vec<Child>);

impl Drop for Children {
    /// SIGTERM first, as a service manager stops them (the worker removes
    /// its warm sandboxes on the way out), then SIGKILL after 20 s.
    fn drop(&mut self) {
        for child in &self.0 {
            let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for child in &mut self.0 {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the demo's issue lives: the emulator, or a configured GitHub.
enum Forge {
    Emulated(Box<GitHub>),
    Real { repository: String, issue: u64 },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let token = format!("demo-admin-token-{}", ulid::Ulid::new());
    let port = tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut vars = services::endpoint_vars();
    vars.extend([
        // Each demo its own queue and cost ledger: its report counts its runs.
        ("PADDOCK_REDIS__NAMESPACE".to_owned(), format!("demo-{}", ulid::Ulid::new().to_string().to_lowercase())),
        ("PADDOCK_API__LISTEN".to_owned(), format!("127.0.0.1:{port}")),
        ("PADDOCK_API__BOOTSTRAP_ADMIN_TOKEN".to_owned(), token.clone()),
        // A fixed key for the local demo only; deployments set their own.
        ("PADDOCK_AUDIT__SIGNING_KEY".to_owned(), tests::TEST_AUDIT_KEY.to_owned()),
        // Digests every 2 s, so the run's audit events can be exported at once.
        ("PADDOCK_AUDIT__DIGEST_INTERVAL_SECONDS".to_owned(), "2".to_owned()),
        ("PADDOCK_SANDBOX__MEMORY_BYTES".to_owned(), (512u64 << 20).to_string()),
        ("PADDOCK_SANDBOX__TIMEOUT_SECONDS".to_owned(), "300".to_owned()),
        ("PADDOCK_GITHUB__RUN_LINK_BASE".to_owned(), base.clone()),
        // Local defaults: the default tenant owns every repository.
        ("PADDOCK_TENANTS__DEFAULT__REPOSITORIES".to_owned(), r#"["*"]"#.to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
        // Read by a person here: text, not the JSON lines a service manager gets.
        ("PADDOCK_LOG_FORMAT".to_owned(), "text".to_owned()),
    ]);
    let model = std::env::var("PADDOCK_DEMO_MODEL").unwrap_or_else(|_| "gpt-scripted".to_owned());
    vars.push(("PADDOCK_AGENTS__DEFAULT__COMMAND".to_owned(), format!("PADDOCK_MODEL={model} paddock-agent")));

    let providers = EmulatedProviders::start().await;
    // The emulated provider and GitHub speak HTTPS with a test CA, trusted
    // as a company trusts its internal CA.
    vars.push(tests::tls::TestCa::get().trust_var());
    let agent = std::env::var("PADDOCK_DEMO_AGENT").ok().filter(|a| !a.is_empty() && a != "reference");
    if let Some(agent) = &agent {
        let profiles = tests::agents::shipped_profiles();
        anyhow::ensure!(
            profiles.contains_key(agent),
            "PADDOCK_DEMO_AGENT={agent} is not a profile of infra/agents/profiles.toml (known: {})",
            profiles.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        vars.push(("PADDOCK_GITHUB__AGENT_PROFILE".to_owned(), agent.clone()));
        if std::env::var_os("PADDOCK_GATEWAY__PROVIDERS").is_none() {
            providers.plan(&demo_plan(agent, FIX));
            vars.extend(tests::agents::agent_settings(agent, &providers));
            println!("agent: {agent}, its model scripted behind emulated providers (through its own tools)");
        } else {
            let mut profile = tests::agents::shipped_profile(agent);
            profile["env"]["PADDOCK_MODEL"] = json!(model);
            vars.push((format!("PADDOCK_AGENTS__{}", agent.to_uppercase()), profile.to_string()));
            vars.push(("PADDOCK_SANDBOX__MEMORY_BYTES".to_owned(), (2u64 << 30).to_string()));
            println!("agent: {agent} on the configured providers, model {model}");
        }
    } else if std::env::var_os("PADDOCK_GATEWAY__PROVIDERS").is_none() {
        providers.script(SCRIPT);
        // Priced like a mid-range hosted model, so the demo has a cost to show.
        let prices = json!({"gpt-scripted": {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0}});
        let provider = json!({"scripted": {"kind": "openai", "base_url": providers.base_url, "api_key": providers.key, "models": ["gpt-scripted"], "prices": prices}});
        vars.push(("PADDOCK_GATEWAY__PROVIDERS".to_owned(), provider.to_string()));
        vars.push(("PADDOCK_GATEWAY__ALLOWED_PROVIDERS".to_owned(), r#"["scripted"]"#.to_owned()));
        println!("model: a scripted model behind an emulated OpenAI-compatible provider");
    }
    let forge = if std::env::var_os("PADDOCK_GITHUB__APP_ID").is_some() {
        let repository = std::env::var("PADDOCK_DEMO_REPOSITORY")?;
        let issue = std::env::var("PADDOCK_DEMO_ISSUE")?.parse()?;
        println!("forge: the configured GitHub App, {repository} issue #{issue}");
        Forge::Real { repository, issue }
    } else {
        let github = GitHub::start().await;
        github.create_repo(
            "acme",
            "widgets",
            &[
                ("README.md", b"# Widgets\n\nWidgets recieve orders and ship teh parts.\n"),
                ("widgets.py", b"def ship(order):\n    \"\"\"Ship teh parts of an order.\"\"\"\n    return order\n"),
            ],
            &[("alice", "write")],
        );
        vars.extend([
            ("PADDOCK_GIT__BASE_URL".to_owned(), github.git_url.clone()),
            ("PADDOCK_GITHUB__API_URL".to_owned(), github.api_url.clone()),
            ("PADDOCK_GITHUB__APP_ID".to_owned(), github.app_id.to_string()),
            ("PADDOCK_GITHUB__PRIVATE_KEY_FILE".to_owned(), github.private_key_file.display().to_string()),
            ("PADDOCK_GITHUB__WEBHOOK_SECRET".to_owned(), github.webhook_secret.clone()),
            ("PADDOCK_GITHUB__BOT_LOGIN".to_owned(), github.bot_login.clone()),
            ("PADDOCK_IDENTITY__GITHUB_LOGINS".to_owned(), r#"{"alice": "alice@example.com"}"#.to_owned()),
        ]);
        println!("forge: an emulated GitHub at {} (repository acme/widgets)", github.api_url);
        Forge::Emulated(Box::new(github))
    };

    let bin = services::bin_dir();
    // The demo's own settings are not Paddock's (its configuration refuses
    // unknown PADDOCK_* keys).
    let demo_vars: Vec<String> = std::env::vars().map(|(k, _)| k).filter(|k| k.starts_with("PADDOCK_DEMO_")).collect();
    let spawn = |name: &str| {
        let mut command = Command::new(bin.join(name));
        for key in &demo_vars {
            command.env_remove(key);
        }
        command
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.join(name).display()))
    };
    let _children = Children(vec![spawn("api"), spawn("worker")]);
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await?;

    let id = match &forge {
        Forge::Emulated(github) => {
            let issue = github.open_issue(
                "acme/widgets",
                "Fix spelling mistakes",
                "The README and the docstring in widgets.py have typos (`teh`, `recieve`).",
            );
            println!("issue #{issue} opened; alice labels it `paddock`");
            let hook = format!("{base}/v1/webhooks/github");
            let (status, accepted) = github.label_issue(&hook, "acme/widgets", issue, "paddock", "alice").await;
            anyhow::ensure!(status == 202, "the webhook did not start a run ({status}): {accepted}");
            accepted["id"].as_str().unwrap_or_default().to_owned()
        }
        Forge::Real { repository, issue } => {
            let (title, issue) = (format!("Issue #{issue}"), issue.to_string());
            let args = ["run", "--repo", repository, "--issue", &issue, "--title", &title, "--body", "See the issue."];
            let (code, id) = paddock(&base, &token, &args, Output::Echoed).await?;
            anyhow::ensure!(code == 0, "run request refused (exit code {code})");
            id.trim().to_owned()
        }
    };
    println!("run {id} accepted; following it with the CLI\n");

    let started = Instant::now();
    // The live log, with a line per step on stderr; exit 0 once it succeeded.
    let (code, _) = paddock(&base, &token, &["logs", "--follow", &id], Output::Shown).await?;
    let run = finished(&client, &base, &token, &id).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(code == 0, "`paddock logs --follow` says the run did not succeed (exit code {code})");

    let facts = &run["facts"];
    if let (Forge::Emulated(github), Some(branch)) = (&forge, facts["branch"].as_str()) {
        if let Some(pull) = github.pulls("acme/widgets").first() {
            println!("=== draft pull request #{} ===", pull["number"]);
            println!("url:    {}", pull["html_url"].as_str().unwrap_or_default());
            println!("title:  {}", pull["title"].as_str().unwrap_or_default());
            println!("branch: {} -> {} (draft: {})", pull["head"]["ref"], pull["base"]["ref"], pull["draft"]);
            println!("{}", pull["body"].as_str().unwrap_or_default());
        }
        if let Some(message) = github.commit_message("acme/widgets", branch) {
            println!("--- commit on {branch} ---\n{message}");
        }
    }
    println!("=== run record {id} ===");
    println!("state:        {} ({})", run["state"], run["stop_reason"]);
    println!("requested by: {}", run["requested_by"]);
    println!("issue:        #{} in {} @ {}", run["issue"], run["repository"], run["base_ref"]);
    for model in facts["models"].as_array().into_iter().flatten() {
        println!("model:        {} via {} ({} calls)", model["model"], model["provider"], model["calls"]);
    }
    for grant in facts["credentials"].as_array().into_iter().flatten() {
        println!(
            "credential:   {} for {} {} fingerprint {} expires {} revoked at {}",
            grant["kind"],
            grant["purpose"],
            grant["permissions"],
            grant["fingerprint"],
            grant["expires_at"],
            grant["revoked_at_ms"]
        );
    }
    for command in facts["commands"].as_array().into_iter().flatten() {
        println!("command:      {}", command.as_str().unwrap_or_default().lines().next().unwrap_or_default());
    }
    println!("files:        {}", facts["files_changed"]);
    println!("pull request: {}", facts["pull_request"]["url"].as_str().unwrap_or("none"));
    println!("took:         {:.1} s from the label to the pull request", elapsed.as_secs_f64());
    println!("artifacts:    {}", run["artifacts"]);
    anyhow::ensure!(run["state"] == "succeeded", "the demo run did not succeed");
    anyhow::ensure!(!facts["pull_request"].is_null(), "the demo run opened no pull request");
    paddock(&base, &token, &["status", &id], Output::Shown).await?;
    audit_summary(&base, &token, &id).await?;

    if let Forge::Emulated(github) = &forge {
        // The next run's scripted model does what the reviewer asks.
        if std::env::var_os("PADDOCK_GATEWAY__PROVIDERS").is_none() {
            match &agent {
                Some(agent) => providers.plan(&demo_plan(agent, REVIEWED)),
                None => providers.script(REVIEW_SCRIPT),
            }
        }
        let pull = facts["pull_request"]["number"].as_u64().unwrap_or_default();
        let child = review_round(github, &client, &base, &token, pull).await?;
        paddock(&base, &token, &["status", &child], Output::Shown).await?;
        audit_summary(&base, &token, &child).await?;
    } else {
        println!("(the review round runs against the emulated GitHub only: review the pull request to see one)");
    }
    // What the day's runs cost the tenant, by model, with its budgets.
    paddock(&base, &token, &["cost", "--group-by", "model"], Output::Shown).await?;
    providers.stop().await;
    Ok(())
}

/// What the demo does with the CLI's output.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    /// Straight to the terminal, as it comes (a live log).
    Shown,
    /// Captured and shown.
    Echoed,
    /// Captured only (JSON to read).
    Captured,
}

/// Runs the `paddock` CLI against the demo's API, showing the command
/// line; returns its exit code and (unless `Shown`) its stdout.
async fn paddock(base: &str, token: &str, args: &[&str], output: Output) -> anyhow::Result<(i32, String)> {
    println!("\n$ paddock {}", args.join(" "));
    let mut command = tokio::process::Command::new(services::bin_dir().join("paddock"));
    command.args(args).env("PADDOCK_API_URL", base).env("PADDOCK_TOKEN", token).stdin(Stdio::null());
    if output == Output::Shown {
        let status = command.status().await?;
        return Ok((status.code().unwrap_or(-1), String::new()));
    }
    let ran = command.output().await?;
    let stdout = String::from_utf8_lossy(&ran.stdout).into_owned();
    let code = ran.status.code().unwrap_or(-1);
    if output == Output::Echoed || code != 0 {
        eprint!("{}", String::from_utf8_lossy(&ran.stderr));
        print!("{stdout}");
    }
    Ok((code, stdout))
}

/// Polls the run until it finishes (five minutes at most).
async fn finished(client: &reqwest::Client, base: &str, token: &str, id: &str) -> anyhow::Result<Value> {
    let started = Instant::now();
    loop {
        let run: Value = client.get(format!("{base}/v1/runs/{id}")).bearer_auth(token).send().await?.json().await?;
        if matches!(run["state"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            return Ok(run);
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(300), "the run did not finish in 5 minutes: {run}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// alice requests a change on a line of the pull request; the follow-up
/// run it starts pushes a commit to the same branch and answers her.
/// Returns the follow-up's id.
async fn review_round(
    github: &GitHub,
    client: &reqwest::Client,
    base: &str,
    token: &str,
    pull: u64,
) -> anyhow::Result<String> {
    let repo = "acme/widgets";
    println!("\n=== review round ===");
    println!("alice requests changes on widgets.py line 2: {REVIEW_COMMENT:?}");
    let hook = format!("{base}/v1/webhooks/github");
    let review = tests::github::Review {
        by: "alice",
        state: "CHANGES_REQUESTED",
        body: "One more thing before this can go in.",
        comments: &[("widgets.py", 2, REVIEW_COMMENT)],
    };
    let (status, accepted) = github.review_pull(&hook, repo, pull, review).await;
    anyhow::ensure!(status == 202, "the review did not start a follow-up ({status}): {accepted}");
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    let run = finished(client, base, token, &id).await?;
    let facts = &run["facts"];
    println!("follow-up:    run {id}, parent {}, {} ({})", run["parent_run"], run["state"], run["stop_reason"]);
    println!(
        "task:         {} ({} characters: issue, pull request, review, hunk)",
        run["task"]["title"],
        run["task"]["body"].as_str().map_or(0, str::len)
    );
    let branch = facts["branch"].as_str().unwrap_or_default();
    println!("commit:       {} on {branch}, files {}", facts["pushed_commit"], facts["files_changed"]);
    println!("commits on the branch: {}", github.commits_between(repo, "main", branch).len());
    for reply in github.review_comments(repo, pull).iter().filter(|c| !c["in_reply_to_id"].is_null()) {
        println!("reply:        {}: {}", reply["user"]["login"], reply["body"].as_str().unwrap_or_default());
    }
    let description = github.pulls(repo).into_iter().find(|p| p["number"] == pull);
    if let Some(section) =
        description.as_ref().and_then(|p| p["body"].as_str()?.split("### Follow-ups").nth(1).map(str::to_owned))
    {
        println!("--- the pull request's description, under Follow-ups ---{section}");
    }
    if let Some(text) = github.file_on_branch(repo, branch, "widgets.py") {
        println!("--- widgets.py on {branch} ---\n{text}");
    }
    println!("took:         {:.1} s from the review to the follow-up commit", started.elapsed().as_secs_f64());
    anyhow::ensure!(run["state"] == "succeeded", "the follow-up did not succeed");
    anyhow::ensure!(!facts["pushed_commit"].is_null(), "the follow-up pushed nothing");
    anyhow::ensure!(
        !facts["answered_comments"].as_array().is_none_or(Vec::is_empty),
        "the follow-up answered no comment"
    );
    Ok(id)
}

/// Exports the run's audit events and verifies the bundle offline and the
/// trail in the bucket, with the CLI, and prints what an auditor would get.
async fn audit_summary(base: &str, token: &str, id: &str) -> anyhow::Result<()> {
    // The worker's last events wait for its next digest (2 s here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = std::env::temp_dir().join("paddock-demo-evidence");
    let out = out.to_string_lossy();
    let args = ["--output", "json", "audit", "export", "--run", id, "--out", &out];
    let (code, exported) = paddock(base, token, &args, Output::Captured).await?;
    anyhow::ensure!(code == 0, "the audit export did not verify (exit code {code}): {exported}");
    let exported: Value = serde_json::from_str(&exported)?;
    let (code, trail) = paddock(base, token, &["--output", "json", "audit", "verify"], Output::Captured).await?;
    anyhow::ensure!(code == 0, "the audit trail did not verify (exit code {code}): {trail}");
    let trail: Value = serde_json::from_str(&trail)?;
    let (export, bundle) = (&exported["export"], &exported["verification"]);
    println!("=== audit summary ===");
    println!(
        "events:       {} about this run in the signed trail ({} awaiting a digest)",
        export["events"], export["pending_events"]
    );
    println!(
        "export:       {} downloaded to {} (manifest sha256 {})",
        export["bundle"].as_str().unwrap_or_default(),
        exported["folder"].as_str().unwrap_or_default(),
        export["manifest_sha256"].as_str().unwrap_or_default()
    );
    println!(
        "verified:     bundle ok offline ({} events, {} digests); trail ok ({} digests, {} segments)",
        bundle["events_checked"], bundle["digests_checked"], trail["digests_checked"], trail["segments_checked"]
    );
    Ok(())
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(30), "the api did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
