//! Runs end to end: API → Redis → worker → Docker sandbox → S3.

use std::time::Duration;

use serde_json::Value;
use tests::git_server::git;
use tests::spawn_app;

const README: &[u8] = b"# Widgets\n\nTeh quick brown fox.\n";

/// An agent that fixes a typo, adds a file, writes a binary file and deletes one.
const FIXER: &str = "sed -i 's/Teh/The/' README.md && printf 'title: %s\\n' \"$PADDOCK_TASK_TITLE\" > NOTES.md \
    && printf '\\000\\001\\002\\377binary' > blob.bin && git rm -q old.txt && echo \"agent says: fixed $PADDOCK_TASK_TITLE\"";

fn assert_artifact_keys(run: &Value) -> [String; 3] {
    let id = run["id"].as_str().unwrap();
    let keys: Vec<String> =
        run["artifacts"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect();
    let expected = [format!("runs/{id}/logs.txt"), format!("runs/{id}/diff.patch"), format!("runs/{id}/summary.json")];
    assert_eq!(keys, expected);
    expected
}

#[tokio::test]
async fn a_run_goes_from_the_api_through_a_sandbox_to_s3() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", FIXER)]).await;
    let repo = app.repo(&[("README.md", README), ("old.txt", b"remove me\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "Fix the typo").await;
    let run = app.wait_until_finished(&id).await;

    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["stop_reason"]["kind"], "completed");
    assert_eq!(run["attempt"], 1);
    assert_eq!(run["worker"], worker.name.as_str());
    assert!(run["started_at"].is_string() && run["finished_at"].is_string());
    let [logs_key, diff_key, summary_key] = assert_artifact_keys(&run);

    let diff = app.artifact(&diff_key).await;
    let diff_text = String::from_utf8_lossy(&diff);
    assert!(diff_text.contains("-Teh quick brown fox.\n+The quick brown fox."), "{diff_text}");
    assert!(diff_text.contains("+title: Fix the typo"), "{diff_text}");
    assert!(diff_text.contains("GIT binary patch"), "binary file not in the diff: {diff_text}");
    assert!(diff_text.contains("deleted file mode"), "{diff_text}");

    // The diff is binary-safe: it applies to a clean checkout and reproduces the bytes.
    let check = app.scratch.join("apply");
    let url = format!("{}/{repo}.git", app.git.base_url);
    git(&app.scratch, &["clone", "-q", &url, check.to_str().unwrap()]);
    std::fs::write(app.scratch.join("run.patch"), &diff).unwrap();
    git(&check, &["apply", "--index", app.scratch.join("run.patch").to_str().unwrap()]);
    assert_eq!(std::fs::read(check.join("blob.bin")).unwrap(), b"\x00\x01\x02\xffbinary");
    assert!(!check.join("old.txt").exists());

    let logs = String::from_utf8(app.artifact(&logs_key).await.to_vec()).unwrap();
    assert!(logs.contains("agent says: fixed Fix the typo"), "{logs}");
    let api_logs = app.get(&format!("/v1/runs/{id}/logs")).await.text().await.unwrap();
    assert_eq!(api_logs, logs);

    let summary: Value = serde_json::from_slice(&app.artifact(&summary_key).await).unwrap();
    assert_eq!(summary["run_id"], id.as_str());
    assert_eq!(summary["repository"], repo.as_str());
    assert_eq!(summary["stop_reason"]["kind"], "completed");
    assert_eq!(summary["files_changed"], serde_json::json!(["NOTES.md", "README.md", "blob.bin", "old.txt"]));
    assert_eq!(summary["base_commit"].as_str().unwrap().len(), 40);

    let succeeded: Value = app.get("/v1/runs?state=succeeded").await.json().await.unwrap();
    assert_eq!(succeeded["runs"][0]["id"], id.as_str());
    app.assert_cleaned_up(&id).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_failing_agent_ends_failed_with_its_exit_code() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo 'something broke' >&2; exit 3")]).await;
    let repo = app.repo(&[("README.md", README)]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "Break it").await;
    let run = app.wait_until_finished(&id).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(run["stop_reason"], serde_json::json!({"kind": "agent_failed", "exit_code": 3}));
    assert_eq!(run["attempt"], 1, "an agent failure must not be retried");
    let [logs_key, diff_key, _] = assert_artifact_keys(&run);
    let logs = String::from_utf8(app.artifact(&logs_key).await.to_vec()).unwrap();
    assert!(logs.contains("something broke"), "{logs}");
    assert!(app.artifact(&diff_key).await.is_empty());
    app.assert_cleaned_up(&id).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn the_wall_clock_cap_ends_the_run_and_removes_the_sandbox() {
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo started; sleep 600"),
        ("PADDOCK_SANDBOX__TIMEOUT_SECONDS", "3"),
    ])
    .await;
    let repo = app.repo(&[("README.md", README)]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "Take forever").await;
    let run = app.wait_until_finished(&id).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(run["stop_reason"], serde_json::json!({"kind": "timeout", "limit_seconds": 3}));
    let [logs_key, _, _] = assert_artifact_keys(&run);
    let logs = String::from_utf8(app.artifact(&logs_key).await.to_vec()).unwrap();
    assert!(logs.contains("started") && logs.contains("wall-clock cap"), "{logs}");
    assert_eq!(app.leftovers_of(&id).await, Vec::<String>::new(), "the timed-out sandbox was left behind");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_missing_branch_fails_the_run_without_retrying() {
    let app = spawn_app(&[]).await;
    let repo = app.repo(&[("README.md", README)]);
    let worker = app.spawn_worker().await;
    let body = serde_json::json!({"repository": repo, "base_ref": "no-such-branch", "task": {"title": "t"}});
    let accepted: Value = app.post_run(&body).await.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap();
    let run = app.wait_until_finished(id).await;
    assert_eq!(run["state"], "failed", "{run:#}");
    assert_eq!(run["stop_reason"]["kind"], "checkout_failed");
    assert!(run["stop_reason"]["message"].as_str().unwrap().contains("no-such-branch"), "{run:#}");
    assert_eq!(run["attempt"], 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_killed_worker_loses_its_run_to_another_after_the_lease_expires() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "sleep 5; echo finished > DONE.txt")]).await;
    let repo = app.repo(&[("README.md", README)]);
    let mut first = app.spawn_worker_process();
    let id = app.create_run(&repo, "Survive a crash").await;
    let running = app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "running").await;
    let first_name = running["worker"].as_str().unwrap().to_owned();
    // Let the sandbox start, then kill the worker without a chance to clean up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.kill_hard();
    let orphans = app.sandboxes_of(&id).await;

    // Start the second worker once the first one's lease is surely over, so
    // its start-up sweep sees the first as dead.
    tokio::time::sleep(Duration::from_secs(app.config.worker.lease_seconds + 1)).await;
    let second = app.spawn_worker().await;
    let run = app.wait_until_finished(&id).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\nfirst worker log:\n{}", first.log_text());
    assert_eq!(run["attempt"], 2, "the crashed attempt must count");
    assert_eq!(run["worker"], second.name.as_str());
    assert_ne!(first_name, second.name);
    assert!(run["last_error"].as_str().unwrap().contains(&first_name), "{run:#}");
    let [_, diff_key, _] = assert_artifact_keys(&run);
    assert!(String::from_utf8_lossy(&app.artifact(&diff_key).await).contains("+finished"));
    let remaining = app.sandboxes_of(&id).await;
    for orphan in orphans {
        assert!(!remaining.contains(&orphan), "the crashed worker's sandbox {orphan} was not swept");
    }
    app.assert_cleaned_up(&id).await;
    second.shutdown().await;
}

#[tokio::test]
async fn sigterm_stops_claiming_and_lets_the_running_run_finish() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "sleep 3; echo done > DONE.txt")]).await;
    let repo = app.repo(&[("README.md", README)]);
    let mut worker = app.spawn_worker_process();
    let first = app.create_run(&repo, "Finish me").await;
    app.wait_for(&first, Duration::from_secs(60), |r| r["state"] == "running").await;
    let pid = worker.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // Once the worker has taken the signal. (A run enqueued in the same
    // instant can be claimed first: the signal and the queue's wake-up
    // reach the worker's runtime together, in either order; seen in CI.)
    tests::eventually(Duration::from_secs(10), "the worker took the signal", || {
        let log = worker.log_text();
        async move { if log.contains("shutting down: no new claims") { Ok(()) } else { Err("not yet") } }
    })
    .await;
    let second = app.create_run(&repo, "Nobody should claim me").await;

    let run = app.wait_until_finished(&first).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\nworker log:\n{}", worker.log_text());
    let status = tokio::task::spawn_blocking(move || {
        let status = worker.child.wait().unwrap();
        (status, worker)
    });
    let (status, worker) = tokio::time::timeout(Duration::from_secs(60), status).await.expect("worker exits").unwrap();
    assert!(status.success(), "worker exited with {status}\n{}", worker.log_text());
    let waiting = app.run(&second).await;
    assert_eq!(waiting["state"], "queued", "a stopping worker claimed new work: {waiting:#}");
    assert_eq!(waiting["attempt"], 0);
}

#[tokio::test]
async fn runs_still_going_when_the_grace_period_ends_go_back_to_the_queue() {
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", "sleep 600"),
        ("PADDOCK_WORKER__SHUTDOWN_GRACE_SECONDS", "1"),
    ])
    .await;
    let repo = app.repo(&[("README.md", README)]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "Too slow to finish").await;
    app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "running").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    worker.shutdown().await;
    let run = app.run(&id).await;
    assert_eq!(run["state"], "queued", "{run:#}");
    assert_eq!(run["attempt"], 0, "a released run must not use up an attempt");
    assert_eq!(app.leftovers_of(&id).await, Vec::<String>::new(), "the released run's sandbox was left behind");
}

#[tokio::test]
async fn cancelling_a_running_run_kills_its_sandbox_within_seconds() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo working; sleep 600")]).await;
    let repo = app.repo(&[("README.md", README)]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "Stop me").await;
    app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "running").await;
    // Wait for the sandbox to exist, so the cancel has something to kill.
    app.wait_for_sandboxes(&id, true).await;
    let response =
        app.client.post(app.url(&format!("/v1/runs/{id}/cancel"))).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let run = app.wait_for(&id, Duration::from_secs(5), |r| r["state"] == "cancelled").await;
    assert!(app.sandboxes_of(&id).await.is_empty(), "the sandbox outlived the cancel");
    app.assert_cleaned_up(&id).await;
    assert_eq!(run["stop_reason"], serde_json::json!({"kind": "cancelled", "by": "bootstrap-admin"}));
    let [logs_key, _, _] = assert_artifact_keys(&run);
    let logs = String::from_utf8(app.artifact(&logs_key).await.to_vec()).unwrap();
    assert!(logs.contains("working") && logs.contains("cancelled by bootstrap-admin"), "{logs}");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_repository_cap_holds_under_four_workers_while_other_repositories_flow() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "sleep 1"), ("PADDOCK_WORKER__CONCURRENCY", "1")]).await;
    let capped = app.repo(&[("README.md", README)]);
    let other = app.repo(&[("README.md", README)]);
    app.queue.set_repo_limit("default", &capped, Some(2)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.create_run(&capped, &format!("capped {i}")).await);
        ids.push(app.create_run(&other, &format!("other {i}")).await);
    }
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(app.spawn_worker().await);
    }
    let mut max_capped = 0;
    let mut max_other = 0;
    let started = std::time::Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(180), "the runs did not finish");
        let depth = app.queue.depth().await.unwrap();
        let running = |repo: &str| {
            depth.repositories.get(&("default".to_owned(), repo.to_owned())).and_then(|s| s.get("running")).copied()
        };
        max_capped = max_capped.max(running(&capped).unwrap_or(0));
        max_other = max_other.max(running(&other).unwrap_or(0));
        assert!(max_capped <= 2, "the capped repository ran {max_capped} at once");
        let finished = depth.totals.get("succeeded").copied().unwrap_or(0);
        if finished == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(max_capped, 2, "the cap was never reached, so it was not tested");
    assert!(max_other >= 2, "the other repository did not get the free workers (max {max_other})");
    for worker in workers {
        worker.shutdown().await;
    }
}

#[tokio::test]
async fn cancelling_a_run_whose_worker_was_killed_ends_it_cancelled_not_retried() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "sleep 600")]).await;
    let repo = app.repo(&[("README.md", README)]);
    let mut first = app.spawn_worker_process();
    let id = app.create_run(&repo, "Orphaned").await;
    app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "running").await;
    first.kill_hard();
    let response =
        app.client.post(app.url(&format!("/v1/runs/{id}/cancel"))).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(app.run(&id).await["state"], "cancelling");

    // Another worker's reaper finds the expired lease and finalises the cancel.
    let second = app.spawn_worker().await;
    let run = app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "cancelled").await;
    assert_eq!(run["attempt"], 1, "a cancelled run must not be retried");
    assert_eq!(run["stop_reason"], serde_json::json!({"kind": "cancelled", "by": "bootstrap-admin"}));
    // The surviving worker's janitor removes the dead worker's sandbox,
    // network, volume and firewall rules.
    app.assert_cleaned_up(&id).await;
    second.shutdown().await;
}

#[tokio::test]
async fn the_worker_enforces_the_policy_recorded_on_the_run() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo started; sleep 600")]).await;
    let repo = app.repo(&[("README.md", README)]);
    let (owner, name) = repo.split_once('/').unwrap();
    let response = app
        .client
        .put(app.url(&format!("/v1/policies/tenants/default/repositories/{owner}/{name}")))
        .bearer_auth(&app.token)
        .json(&serde_json::json!({"timeout_seconds": 2, "memory_bytes": 100663296, "pids_limit": 40}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "Short leash").await;
    let run = app.wait_until_finished(&id).await;
    assert_eq!(run["stop_reason"], serde_json::json!({"kind": "timeout", "limit_seconds": 2}));
    let [logs_key, _, summary_key] = assert_artifact_keys(&run);
    let logs = String::from_utf8(app.artifact(&logs_key).await.to_vec()).unwrap();
    assert!(logs.contains("memory 100663296 B") && logs.contains("pids 40"), "{logs}");
    let summary: Value = serde_json::from_slice(&app.artifact(&summary_key).await).unwrap();
    assert_eq!(summary["policy"]["memory_bytes"], 100663296);
    assert_eq!(summary["policy"]["timeout_seconds"], 2);
    app.assert_cleaned_up(&id).await;
    worker.shutdown().await;
}

/// A worker bug that panics in the middle of a run (with its sandbox,
/// network, firewall rules, egress proxy and gateway up) leaves none of them
/// behind, and the run is retried like any infrastructure failure.
#[tokio::test]
async fn a_run_that_panics_with_its_sandbox_up_leaves_nothing_behind_and_is_retried() {
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__ENV", r#"{"PADDOCK_FAULT": "panic-in-sandbox"}"#),
        ("PADDOCK_API__MAX_ATTEMPTS", "2"),
    ])
    .await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "a worker bug").await;
    let run = app.wait_for(&id, Duration::from_secs(60), |r| r["state"] == "failed").await;
    assert_eq!(run["attempt"], 2, "the panicked attempt was not retried: {run:#}");
    let reason = run["stop_reason"]["message"].as_str().unwrap_or_default();
    assert!(reason.contains("the worker panicked: fault injected"), "{run:#}");
    app.assert_cleaned_up(&id).await;
    worker.shutdown().await;
}

/// Once Redis has forgotten a finished run, its record is read from the
/// typed `summary.json`, with the same facts.
#[tokio::test]
async fn the_record_of_a_run_redis_forgot_comes_from_its_summary() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", FIXER)]).await;
    let repo = app.repo(&[("README.md", README), ("old.txt", b"remove me\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "Fix the typo").await;
    assert_eq!(app.wait_until_finished(&id).await["state"], "succeeded");
    let live: Value = app.get(&format!("/v1/runs/{id}/record")).await.json().await.unwrap();
    assert_eq!(live["state"], "succeeded", "{live:#}");

    let key = format!("{{{}}}:job:{id}", app.config.redis.namespace);
    let deleted = std::process::Command::new("redis-cli").args(["-p", "6390", "DEL", &key]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&deleted.stdout).trim(), "1", "the run record was not in Redis");
    let answer = app.get(&format!("/v1/runs/{id}/record")).await;
    assert_eq!(answer.status().as_u16(), 200);
    let kept: Value = answer.json().await.unwrap();
    assert!(kept["state"].is_null(), "{kept:#}");
    for field in ["commands", "files_changed", "credentials", "models"] {
        assert_eq!(kept[field], live[field], "{field}");
    }
    assert_eq!(kept["requested"]["by"], live["requested"]["by"]);
    assert_eq!(kept["issue_and_repository"], live["issue_and_repository"]);
    assert_eq!(kept["stop"]["reason"]["kind"], "completed");
    assert_eq!(kept["evidence"]["artifacts"], live["evidence"]["artifacts"]);
    assert_eq!(kept["sandbox"]["policy"], live["sandbox"]["policy"]);
    worker.shutdown().await;
}

/// A checkout the sandbox's own `tar` cannot unpack (here: small in bytes,
/// but more files than the workspace's tmpfs has pages for) stops before
/// the agent runs and is retried as an infrastructure failure, as a failed
/// archive upload is, never recorded as the agent's own failure.
#[tokio::test]
async fn a_checkout_the_sandbox_cannot_unpack_is_retried_not_blamed_on_the_agent() {
    let app = spawn_app(&[
        ("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo the agent ran"),
        ("PADDOCK_SANDBOX__WORKSPACE_BYTES", "1048576"),
        ("PADDOCK_API__MAX_ATTEMPTS", "2"),
    ])
    .await;
    let names: Vec<String> = (0..400).map(|i| format!("f/{i:03}.txt")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"x\n" as &[u8])).collect();
    let repo = app.repo(&files);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "too many files for the workspace").await;
    let run = app.wait_for(&id, Duration::from_secs(120), |r| r["state"] == "failed").await;
    assert_eq!(run["attempt"], 2, "not retried: {run:#}");
    assert_eq!(run["stop_reason"]["kind"], "infrastructure_error", "{run:#}");
    let message = run["stop_reason"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("unpacking the checkout in the sandbox"), "{run:#}");
    worker.shutdown().await;
}
