//! The warm sandbox pool, against the real Docker engine and firewall:
//! members made and hardened before any run, each handed to one run under
//! that run's limits and removed with it, refused when tampered with, and
//! swept with a dead worker's sandboxes. (The attack suite runs every
//! attack in a pool member.)

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tests::{TestApp, spawn_app};

/// The agent prints the container it runs in and the memory cap it is under.
const WHOAMI: &str = "echo host=$(cat /etc/hostname); \
    echo memory=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max)";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// This app's pool members that no run has taken yet: (id, name).
fn members(app: &TestApp) -> Vec<(String, String)> {
    let namespace = format!("label=paddock.namespace={}", app.config.redis.namespace);
    let listed = docker(&[
        "ps",
        "-a",
        "--filter",
        &namespace,
        "--filter",
        "label=paddock.warm",
        "--format",
        "{{.ID}} {{.Names}}",
    ]);
    let prefix = format!("paddock-{}-warm-", app.config.redis.namespace);
    listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, name)| name.starts_with(&prefix))
        .map(|(id, name)| (id.to_owned(), name.to_owned()))
        .collect()
}

async fn wait_for_members(app: &TestApp, count: usize) -> Vec<(String, String)> {
    let what = format!("{count} warm sandboxes ready");
    tests::eventually(Duration::from_secs(60), &what, || async {
        let found = members(app);
        if found.len() == count { Ok(found) } else { Err(format!("{found:?}")) }
    })
    .await
}

/// What of member `name` (container `id`) is on the host: its container,
/// network, volume and firewall rules (a taken member is renamed after its
/// run; its network and volume keep the member's name, its rules its tag).
fn remains_of(id: &str, name: &str) -> Vec<String> {
    let exists = |args: &[&str]| Command::new("docker").args(args).output().unwrap().status.success();
    let mut left = Vec::new();
    if exists(&["container", "inspect", id]) {
        left.push(format!("container {id}"));
    }
    if exists(&["network", "inspect", name]) {
        left.push(format!("network {name}"));
    }
    if exists(&["volume", "inspect", &format!("{name}-ws")]) {
        left.push(format!("volume {name}-ws"));
    }
    left.extend((0..firewall_rules_of(name)).map(|_| format!("a firewall rule of {name}")));
    left
}

fn firewall_rules_of(name: &str) -> usize {
    let tag = format!("warm-{}", name.rsplit('-').next().unwrap_or_default());
    let rules = Command::new("iptables").args(["-w", "-S", "PADDOCK-INPUT"]).output().unwrap();
    String::from_utf8_lossy(&rules.stdout).lines().filter(|l| l.contains(&tag)).count()
}

async fn assert_gone((id, name): &(String, String)) {
    tests::eventually(Duration::from_secs(60), &format!("{name} removed"), || async {
        let left = remains_of(id, name);
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await
}

/// A finished run's steps (from its summary) and what its agent printed.
async fn run_and_read(app: &TestApp, repo: &str, title: &str) -> (Vec<String>, String, String) {
    run_as_and_read(app, repo, title, "default").await
}

async fn run_as_and_read(app: &TestApp, repo: &str, title: &str, profile: &str) -> (Vec<String>, String, String) {
    let id = app.create_run_as(repo, title, profile).await;
    let run = app.wait_until_finished(&id).await;
    let logs = app.logs_of(&run).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    let summary: Value = serde_json::from_slice(&app.artifact(&format!("runs/{id}/summary.json")).await).unwrap();
    let steps = summary["phases_ms"].as_array().into_iter().flatten().filter_map(|p| p[0].as_str()).map(String::from);
    let printed = |key: &str| {
        logs.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_else(|| panic!("no {key}:\n{logs}"))
    };
    (steps.collect(), printed("host").trim().to_owned(), printed("memory").trim().to_owned())
}

/// Reads a member back from the engine, as the worker does before it
/// starts one and again before a run takes it.
fn assert_hardened(app: &TestApp, id: &str, name: &str) {
    let inspected: Value = serde_json::from_str(&docker(&["inspect", id])).unwrap();
    let c = &inspected[0];
    let host = &c["HostConfig"];
    let sandbox = &app.config.sandbox;
    assert_eq!(c["State"]["Running"], true, "{name} is started");
    assert_eq!(c["Config"]["User"], format!("{}:{}", sandbox.uid, sandbox.gid));
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges=true"]));
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["NetworkMode"], name, "its own network");
    assert_eq!(host["Dns"], json!(["127.0.0.1"]));
    assert_eq!(host["Memory"], sandbox.memory_bytes);
    assert_eq!(host["MemorySwap"], sandbox.memory_bytes);
    assert_eq!(host["PidsLimit"], sandbox.pids_limit);
    assert_eq!(host["Init"], true);
    assert_eq!(host["OomScoreAdj"], 500);
    assert!(c["Config"]["Labels"].get("paddock.run-id").is_none(), "a member has no run yet");
    assert!(!c["Config"]["Env"].to_string().contains("PADDOCK_RUN_ID"), "nor a run's environment");
    let network: Value = serde_json::from_str(&docker(&["network", "inspect", name])).unwrap();
    assert_eq!(network[0]["Internal"], true, "no route out");
    assert_eq!(network[0]["EnableIPv6"], false);
    assert!(firewall_rules_of(name) > 0, "its firewall rules are installed before any run");
}

#[tokio::test]
async fn pool_members_are_hardened_before_any_run_and_each_serves_one_run_under_its_limits() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", WHOAMI), ("PADDOCK_SANDBOX__WARM_POOL", "2")]).await;
    let repo = app.repo(&[("README.md", b"# warm\n")]);
    let worker = app.spawn_worker().await;
    let before = wait_for_members(&app, 2).await;
    for (id, name) in &before {
        assert_hardened(&app, id, name);
    }

    // The first run starts in a member, under the default limits.
    let (steps, host, memory) = run_and_read(&app, &repo, "warm one").await;
    assert!(steps.contains(&"sandbox_warm".to_owned()) && !steps.contains(&"sandbox".to_owned()), "{steps:?}");
    let taken = before.iter().find(|(id, _)| id.starts_with(&host)).expect("the run ran in a pool member");
    assert_eq!(memory, app.config.sandbox.memory_bytes.to_string());
    // Used once: removed with the run, with its network, volume and rules;
    // the pool makes another.
    assert_gone(taken).await;
    let after = wait_for_members(&app, 2).await;
    assert!(after.iter().all(|member| member != taken), "{after:?}");

    // A repository whose policy has other memory still starts warm, under
    // its own cap; in another member than the first run's.
    let smaller = 192u64 << 20;
    let path = format!("/v1/policies/tenants/default/repositories/{repo}");
    let (status, body) = app.admin_call("PUT", &path, json!({"memory_bytes": smaller})).await;
    assert_eq!(status, 200, "{body}");
    let (steps, second_host, memory) = run_and_read(&app, &repo, "warm two").await;
    assert!(steps.contains(&"sandbox_warm".to_owned()), "{steps:?}");
    assert_ne!(second_host, host, "a sandbox is never reused");
    assert!(after.iter().any(|(id, _)| id.starts_with(&second_host)), "{second_host} was a member: {after:?}");
    assert_eq!(memory, smaller.to_string(), "the run's memory cap was applied at hand-over");

    // One whose workspace size differs (a tmpfs cannot be resized) starts cold.
    let bigger = app.config.sandbox.workspace_bytes * 2;
    let (status, body) = app.admin_call("PUT", &path, json!({"workspace_bytes": bigger})).await;
    assert_eq!(status, 200, "{body}");
    let (steps, cold_host, _) = run_and_read(&app, &repo, "cold").await;
    assert!(steps.contains(&"sandbox".to_owned()) && !steps.contains(&"sandbox_warm".to_owned()), "{steps:?}");
    assert!(!members(&app).iter().any(|(id, _)| id.starts_with(&cold_host)));

    // A worker that stops removes its pool.
    let last = wait_for_members(&app, 2).await;
    worker.shutdown().await;
    for member in &last {
        assert_gone(member).await;
    }
}

#[tokio::test]
async fn a_member_changed_after_it_was_verified_is_removed_at_hand_over_and_the_run_starts_cold() {
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", WHOAMI), ("PADDOCK_SANDBOX__WARM_POOL", "1")]).await;
    let repo = app.repo(&[("README.md", b"# tampered\n")]);
    let worker = app.spawn_worker().await;
    let member = wait_for_members(&app, 1).await.remove(0);
    // Someone with the engine's socket loosens the member's process cap.
    docker(&["update", "--pids-limit", "100000", &member.0]);
    let (steps, host, _) = run_and_read(&app, &repo, "after tampering").await;
    assert!(steps.contains(&"sandbox".to_owned()), "the run started cold: {steps:?}");
    assert!(!member.0.starts_with(&host), "not in the changed member");
    assert_gone(&member).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_dead_workers_pool_is_swept_by_the_janitor() {
    let app = spawn_app(&[("PADDOCK_SANDBOX__WARM_POOL", "1")]).await;
    let mut dead = app.spawn_worker_process();
    let member = wait_for_members(&app, 1).await.remove(0);
    dead.kill_hard();
    let left = remains_of(&member.0, &member.1);
    assert!(left.len() >= 4, "the killed worker's member stays until swept: {left:?}");
    // Another worker (with no pool of its own) finds it by its worker label.
    let mut config = app.config.clone();
    config.sandbox.warm_pool = 0;
    let janitor = app.spawn_worker_with(config).await;
    assert_gone(&member).await;
    janitor.shutdown().await;
}

#[tokio::test]
async fn an_agent_profile_with_its_own_image_has_warm_sandboxes_of_that_image() {
    let image = tests::agents::shipped_profile("codex")["image"].as_str().unwrap().to_owned();
    let own = json!({"command": WHOAMI, "image": image, "warm_pool": 1}).to_string();
    // The default image keeps none here (the test default), the profile one.
    let app = spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", WHOAMI), ("PADDOCK_AGENTS__OWN", &own)]).await;
    let repo = app.repo(&[("README.md", b"# own image\n")]);
    let worker = app.spawn_worker().await;
    let member = wait_for_members(&app, 1).await.remove(0);
    let inspected: Value = serde_json::from_str(&docker(&["inspect", &member.0])).unwrap();
    assert_eq!(inspected[0]["Config"]["Image"], image.as_str(), "made of the profile's image");

    let (steps, host, _) = run_as_and_read(&app, &repo, "own image", "own").await;
    assert!(steps.contains(&"sandbox_warm".to_owned()), "{steps:?}");
    assert!(member.0.starts_with(&host), "ran in the member of its image");
    // The default profile's image has no shelf: cold.
    let (steps, _, _) = run_and_read(&app, &repo, "default image").await;
    assert!(steps.contains(&"sandbox".to_owned()), "{steps:?}");
    worker.shutdown().await;
    assert_gone(&member).await;
}
