//! The `paddock` CLI against a live API and worker: what a person or a
//! script sees, and the exit codes scripts branch on.

use std::process::Output;

use serde_json::{Value, json};
use tests::TestApp;

/// Succeeds, unless the task's title is `fail`.
const AGENT: &str = r#"echo "working on: $PADDOCK_TASK_TITLE"
if [ "$PADDOCK_TASK_TITLE" = fail ]; then echo giving up; exit 3; fi
echo fixed > FIXED.md"#;

/// Runs the CLI against `app` with `args` (and `env`), without blocking the
/// runtime that serves the API.
async fn paddock_with(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(tests::services::bin_dir().join("paddock"));
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &app.scratch)
        .env("PADDOCK_API_URL", &app.address)
        .env("PADDOCK_TOKEN", &app.token);
    for (key, value) in env {
        if value.is_empty() {
            command.env_remove(key);
        } else {
            command.env(key, value);
        }
    }
    command.output().await.expect("the paddock binary runs (cargo build --bins)")
}

async fn paddock(app: &TestApp, args: &[&str]) -> Output {
    paddock_with(app, args, &[]).await
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("an exit code")
}

#[tokio::test]
async fn a_watched_run_streams_its_log_and_steps_and_exits_by_how_it_ended() {
    let app = tests::spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", AGENT)]).await;
    let repo = app.repo(&[("README.md", b"# cli\n")]);
    let worker = app.spawn_worker().await;

    let watched = paddock(&app, &["run", "--repo", &repo, "--title", "Fix it", "--body", "Details.", "--watch"]).await;
    let (out, err) = (stdout(&watched), stderr(&watched));
    assert_eq!(code(&watched), 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("working on: Fix it\n"), "the agent's output is on stdout:\n{out}");
    // A line per step, in order, on stderr, and how it ended.
    let steps: Vec<&str> = err.lines().filter_map(|l| l.split_once("] ").map(|(_, rest)| rest)).collect();
    let names: Vec<&str> = steps.iter().filter_map(|s| s.split(' ').next()).collect();
    assert_eq!(names, ["checkout", "sandbox", "agent", "diff", "publish", "upload"], "{err}");
    assert!(err.contains("succeeded: completed"), "{err}");
    let id = err
        .lines()
        .find_map(|l| l.strip_prefix("paddock: run ")?.split(' ').next())
        .expect("the run's id on stderr")
        .to_owned();

    // A failing run: --watch exits 1; as JSON lines, the last is the run.
    let failed = paddock(&app, &["run", "--repo", &repo, "--title", "fail", "--watch", "--output", "json"]).await;
    assert_eq!(code(&failed), 1, "{}", stderr(&failed));
    let lines: Vec<Value> = stdout(&failed).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["event"] == "log" && l["text"].as_str().unwrap().contains("giving up")));
    assert!(lines.iter().any(|l| l["event"] == "phase" && l["phase"] == "agent"), "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!((last["event"].as_str(), last["run"]["state"].as_str()), (Some("end"), Some("failed")));
    assert_eq!(last["run"]["stop_reason"]["exit_code"], 3);

    // status, list, logs and record read the same run.
    let status = paddock(&app, &["status", &id, "-o", "json"]).await;
    assert_eq!((code(&status), json(&status)["state"].as_str()), (0, Some("succeeded")));
    let text = stdout(&paddock(&app, &["status", &id]).await);
    assert!(text.contains("succeeded") && text.contains(&repo) && text.contains("Fix it"), "{text}");
    let listed = json(&paddock(&app, &["list", "--state", "succeeded", "-o", "json"]).await);
    assert!(listed.as_array().unwrap().iter().any(|r| r["id"] == id.as_str()), "{listed}");
    let logs = paddock(&app, &["logs", &id]).await;
    assert!(stdout(&logs).contains("working on: Fix it"), "{}", stdout(&logs));
    let followed = paddock(&app, &["logs", "-f", &id]).await;
    assert_eq!(code(&followed), 0, "a finished run's stream replays and ends: {}", stderr(&followed));
    assert!(stdout(&followed).contains("working on: Fix it"));
    let record = json(&paddock(&app, &["record", &id]).await);
    assert_eq!(record["run"], id.as_str(), "{record}");
    let cost = json(&paddock(&app, &["cost", "--group-by", "repository", "-o", "json"]).await);
    assert_eq!((cost["tenant"].as_str(), cost["group_by"].as_str()), (Some("default"), Some("repository")), "{cost}");
    assert!(stdout(&paddock(&app, &["cost"]).await).contains("TOTAL"));
    let queue = json(&paddock(&app, &["queue", "-o", "json"]).await);
    assert!(queue["totals"]["queued"].is_i64(), "{queue}");
    worker.shutdown().await;
}

#[tokio::test]
async fn each_kind_of_refusal_has_its_own_exit_code_and_says_why() {
    let app = tests::spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", AGENT)]).await;
    let missing = "01m8fd2cj1x31jpkk0spht2y3j";

    let not_found = paddock(&app, &["status", missing]).await;
    assert_eq!(code(&not_found), 4, "{}", stderr(&not_found));
    let denied = paddock_with(&app, &["queue"], &[("PADDOCK_TOKEN", "pdk_sa_not-a-token")]).await;
    assert_eq!(code(&denied), 3, "{}", stderr(&denied));
    assert!(stderr(&denied).contains("401"), "{}", stderr(&denied));
    let invalid = paddock(&app, &["run", "--repo", "not a repository", "--title", "x"]).await;
    assert_eq!(code(&invalid), 5, "{}", stderr(&invalid));
    assert!(stderr(&invalid).contains("field `repository`"), "the field at fault is named: {}", stderr(&invalid));
    let away = paddock_with(&app, &["queue"], &[("PADDOCK_API_URL", "http://127.0.0.1:9")]).await;
    assert_eq!(code(&away), 6, "{}", stderr(&away));
    // A token file given as a flag beats a token in the environment.
    let file = app.scratch.join("token");
    std::fs::write(&file, format!("{}\n", app.token)).unwrap();
    let flagged =
        paddock_with(&app, &["queue", "--token-file", file.to_str().unwrap()], &[("PADDOCK_TOKEN", "stale")]).await;
    assert_eq!(code(&flagged), 0, "{}", stderr(&flagged));
    // Over HTTPS (behind a company's load balancer), an internal CA is
    // trusted only when given; without it the certificate is refused.
    let https = tests::otlp::Collector::start().await;
    let ca = tests::tls::TestCa::get().ca_file();
    let at = [("PADDOCK_API_URL", https.endpoint.as_str())];
    let trusted = paddock_with(&app, &["queue", "--ca-file", ca.to_str().unwrap()], &at).await;
    assert_eq!(code(&trusted), 4, "TLS held; that server has no /v1/queue: {}", stderr(&trusted));
    let untrusted = paddock_with(&app, &["queue"], &at).await;
    assert_eq!(code(&untrusted), 6, "{}", stderr(&untrusted));
    assert!(stderr(&untrusted).to_lowercase().contains("certificate"), "{}", stderr(&untrusted));
    https.stop().await;
    let no_token = paddock_with(&app, &["queue"], &[("PADDOCK_TOKEN", "")]).await;
    assert_eq!(code(&no_token), 2, "{}", stderr(&no_token));
    assert!(stderr(&no_token).contains("PADDOCK_TOKEN"), "{}", stderr(&no_token));
    let usage = paddock(&app, &["run", "--title", "no repository"]).await;
    assert_eq!(code(&usage), 2, "{}", stderr(&usage));

    // A run cancelled before any worker claims it; cancelling again is refused.
    let repo = app.repo(&[("README.md", b"# cli\n")]);
    let submitted = paddock(&app, &["run", "--repo", &repo, "--title", "never mind"]).await;
    assert_eq!(code(&submitted), 0, "{}", stderr(&submitted));
    let id = stdout(&submitted).trim().to_owned();
    assert_eq!(id.len(), 26, "run prints the id alone, for scripts: {id:?}");
    let cancelled = paddock(&app, &["cancel", &id, "-o", "json"]).await;
    assert_eq!((code(&cancelled), json(&cancelled)["state"].as_str()), (0, Some("cancelled")));
    let again = paddock(&app, &["cancel", &id]).await;
    assert_eq!(code(&again), 5, "{}", stderr(&again));
    let watched = paddock(&app, &["logs", "-f", &id]).await;
    assert_eq!(code(&watched), 1, "a cancelled run is not a success: {}", stderr(&watched));

    // A config file key the CLI does not know is named.
    let config = app.scratch.join("cli.toml");
    std::fs::write(&config, "api_url = \"http://127.0.0.1:9\"\ntoken_fil = \"/x\"\n").unwrap();
    let bad_config =
        paddock_with(&app, &["queue"], &[("PADDOCK_CLI_CONFIG", config.to_str().unwrap()), ("PADDOCK_TOKEN", "")])
            .await;
    assert_eq!(code(&bad_config), 2);
    assert!(stderr(&bad_config).contains("token_fil"), "{}", stderr(&bad_config));
}

#[tokio::test]
async fn an_audit_export_downloads_and_verifies_offline_and_a_changed_file_fails_it() {
    let app = tests::spawn_app(&[]).await;
    let repo = app.repo(&[("README.md", b"# audit\n")]);
    let run = app.create_run(&repo, "Exported by the CLI").await;
    let out = app.scratch.join("exports");
    let exported =
        paddock(&app, &["audit", "export", "--run", &run, "--out", out.to_str().unwrap(), "-o", "json"]).await;
    assert_eq!(code(&exported), 0, "{}", stderr(&exported));
    let answer = json(&exported);
    let verification = &answer["verification"];
    assert_eq!(verification["findings"].as_array().map(Vec::len), Some(0), "{answer}");
    assert!(verification["events_checked"].as_u64().unwrap() >= 1, "{answer}");
    let folder = std::path::PathBuf::from(answer["folder"].as_str().unwrap());
    assert!(folder.join("manifest.json").is_file(), "{}", folder.display());

    // Offline, with the deployment's key; then with one file changed.
    let status = app.admin_call("GET", "/v1/audit/status", Value::Null).await.1;
    let key = status["public_key"].as_str().unwrap();
    let args = ["audit", "verify-export", folder.to_str().unwrap(), "--public-key", key];
    let offline = paddock_with(&app, &args, &[("PADDOCK_TOKEN", ""), ("PADDOCK_API_URL", "")]).await;
    assert_eq!(code(&offline), 0, "offline, no token or API is needed: {}", stderr(&offline));
    assert!(stdout(&offline).starts_with("verified: "), "{}", stdout(&offline));
    let events = walk(&folder).into_iter().find(|p| p.to_string_lossy().ends_with(".json.gz")).expect("an events file");
    let mut bytes = std::fs::read(&events).unwrap();
    bytes.push(0);
    std::fs::write(&events, bytes).unwrap();
    let changed = paddock_with(&app, &args, &[("PADDOCK_TOKEN", "")]).await;
    assert_eq!(code(&changed), 1, "{}", stdout(&changed));
    assert!(stdout(&changed).starts_with("NOT verified"), "{}", stdout(&changed));

    let verified = paddock(&app, &["audit", "verify", "-o", "json"]).await;
    assert_eq!(code(&verified), 0, "{}", stdout(&verified));
}

#[tokio::test]
async fn a_run_held_for_approval_is_approved_by_someone_else_through_the_cli() {
    let issuer = tests::oidc::OidcIssuer::start().await;
    let app = crate::identity::app_with_env(&issuer, &[("PADDOCK_AGENTS__DEFAULT__COMMAND", AGENT)]).await;
    let (status, _) = app.admin_call("PUT", "/v1/policies/tenants/default", json!({"approval": "always"})).await;
    assert_eq!(status, 200);
    let worker = app.spawn_worker().await;
    let repo = app.repo(&[("README.md", b"# cli\n")]);
    // Lee requests (and leads, so he could approve anyone's run but his own).
    let lee = issuer.token("lee", &["devs", "leads"]);
    let as_lee = [("PADDOCK_TOKEN", lee.as_str())];
    let submitted = paddock_with(&app, &["run", "--repo", &repo, "--title", "Needs a second person"], &as_lee).await;
    assert_eq!(code(&submitted), 0, "{}", stderr(&submitted));
    assert!(stderr(&submitted).contains("awaiting_approval"), "{}", stderr(&submitted));
    let id = stdout(&submitted).trim().to_owned();
    let own = paddock_with(&app, &["approve", &id], &as_lee).await;
    assert_eq!(code(&own), 3, "self-approval is a permission refusal: {}", stderr(&own));
    assert!(stderr(&own).to_lowercase().contains("approv"), "{}", stderr(&own));
    let lina = issuer.token("lina", &["leads"]);
    let as_lina = [("PADDOCK_TOKEN", lina.as_str())];
    let approved = paddock_with(&app, &["approve", &id, "-o", "json"], &as_lina).await;
    assert_eq!((code(&approved), json(&approved)["state"].as_str()), (0, Some("queued")), "{}", stderr(&approved));
    // An approver may not read logs; an administrator follows the run.
    assert_eq!(code(&paddock_with(&app, &["logs", &id], &as_lina).await), 3);
    let followed = paddock(&app, &["logs", "-f", &id]).await;
    assert_eq!(code(&followed), 0, "{}", stderr(&followed));
    assert!(stdout(&followed).contains("working on: Needs a second person"), "{}", stdout(&followed));
    let status = json(&paddock(&app, &["status", &id, "-o", "json"]).await);
    assert_eq!(status["approved_by"], "lina@example.com", "{status}");
    worker.shutdown().await;
    issuer.stop().await;
}

#[tokio::test]
async fn completions_are_valid_shell() {
    let app = tests::spawn_app(&[]).await;
    let bash = paddock_with(&app, &["completions", "bash"], &[("PADDOCK_TOKEN", "")]).await;
    assert_eq!(code(&bash), 0);
    let script = app.scratch.join("paddock.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let checked = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stderr));
    let text = stdout(&bash);
    for command in ["run", "status", "logs", "cancel", "approve", "cost", "audit", "verify-export"] {
        assert!(text.contains(command), "the completion knows `{command}`");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
