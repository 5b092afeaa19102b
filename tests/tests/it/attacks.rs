//! The attack suite: hostile agent commands, each contained, each visible in
//! the run's record and log. Sandboxes here are small on purpose: 128 MiB of
//! memory, 64 processes, a 32 MiB workspace and a 16 MiB /tmp.

use serde_json::{Value, json};
use tests::{TestApp, spawn_app};

const FORK_BOMB: &str = r#"python3 - <<'PY'
import os, signal, time
children = []
try:
    while True:
        pid = os.fork()
        if pid == 0:
            os.close(1); os.close(2)
            time.sleep(60)
            os._exit(0)
        children.append(pid)
except OSError as e:
    print("fork failed after", len(children), "children:", e)
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
PY"#;

const MEMORY_BOMB: &str = r#"python3 -c 'b = bytearray(1024 * 1024 * 1024); print("allocated", len(b))'"#;

const DISK_FILL: &str = "dd if=/dev/zero of=/workspace/fill bs=1M count=100 2>&1; rm -f /workspace/fill; \
    dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>&1; rm -f /tmp/fill; df -k /workspace /tmp";

const WRITE_OUTSIDE: &str = "for p in /evil /etc/evil /usr/bin/evil /root/evil /var/lib/evil; do \
    touch \"$p\" 2>&1 || echo \"refused: $p\"; done";

const NETWORK: &str = "curl -sS -m 3 http://192.0.2.1/ 2>&1 || echo 'refused: ip'; \
    curl -sS -m 3 http://169.254.169.254/latest/meta-data/ 2>&1 || echo 'refused: metadata'; \
    getent hosts example.com || echo 'refused: dns'; ip -o addr 2>/dev/null; cat /proc/net/route";

const DOCKER_SOCKET: &str = "for s in /var/run/docker.sock /run/docker.sock /run/containerd/containerd.sock; do \
    test -e \"$s\" && echo \"FOUND $s\" || echo \"absent: $s\"; done";

const ESCALATION: &str = "grep -E '^(NoNewPrivs|CapEff|CapPrm|CapBnd)' /proc/self/status; \
    su -c 'id -u' root </dev/null 2>&1 || echo 'refused: su'; \
    mount -t tmpfs none /mnt 2>&1 || echo 'refused: mount'; echo \"uid=$(id -u) euid=$(python3 -c 'import os; print(os.geteuid())')\"";

const SECRETS: &str = "env; tr '\\0' '\\n' < /proc/1/environ; cat /workspace/.git/config; \
    ls -la / /tmp /workspace; cat /etc/hostname /etc/hosts 2>/dev/null";

async fn attack_app(extra: &[(&str, &str)]) -> (TestApp, String) {
    let mut vars = vec![
        ("PADDOCK_SANDBOX__MEMORY_BYTES", "134217728"),
        ("PADDOCK_SANDBOX__PIDS_LIMIT", "64"),
        ("PADDOCK_SANDBOX__WORKSPACE_BYTES", "33554432"),
        ("PADDOCK_SANDBOX__TMP_BYTES", "16777216"),
        ("PADDOCK_SANDBOX__TIMEOUT_SECONDS", "60"),
    ];
    vars.extend_from_slice(extra);
    let app = spawn_app(&vars).await;
    let repo = app.repo(&[("README.md", b"# target\n")]);
    (app, repo)
}

/// Runs `command` as the agent and returns the finished run and its log.
async fn attack(command: &str) -> (Value, String) {
    let (app, repo) = attack_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", command)]).await;
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "attack").await;
    let run = app.wait_until_finished(&id).await;
    let logs = app.logs_of(&run).await;
    worker.shutdown().await;
    (run, logs)
}

#[tokio::test]
async fn a_fork_bomb_hits_the_pids_cap() {
    let (run, logs) = attack(FORK_BOMB).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    let line = logs.lines().find(|l| l.starts_with("fork failed after")).unwrap_or_else(|| panic!("{logs}"));
    let children: u32 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(children < 64, "{children} processes started under a cap of 64");
}

#[tokio::test]
async fn a_memory_bomb_ends_the_run_out_of_memory() {
    let (run, logs) = attack(MEMORY_BOMB).await;
    assert_eq!(run["state"], "failed", "{run:#}\n{logs}");
    assert_eq!(run["stop_reason"], json!({"kind": "out_of_memory", "limit_bytes": 134217728}));
    assert!(!logs.contains("allocated 1073741824"), "{logs}");
}

#[tokio::test]
async fn filling_the_disk_gives_the_agent_enospc_and_never_touches_the_host() {
    let (run, logs) = attack(DISK_FILL).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    assert_eq!(logs.matches("No space left on device").count(), 2, "{logs}");
    // Both writable places are size-capped tmpfs, not the host's disk.
    let df: Vec<&str> = logs.lines().filter(|l| l.starts_with("tmpfs")).collect();
    assert_eq!(df.len(), 2, "{logs}");
    assert!(df.iter().all(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() <= 32 * 1024), "{logs}");
}

#[tokio::test]
async fn writes_outside_the_workspace_are_refused() {
    let (run, logs) = attack(WRITE_OUTSIDE).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    assert_eq!(logs.matches("refused: /").count(), 5, "{logs}");
    assert!(logs.contains("Read-only file system"), "{logs}");
}

#[tokio::test]
async fn the_sandbox_has_no_network_no_dns_and_no_metadata_endpoint() {
    let (run, logs) = attack(NETWORK).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    // Each probe's own failure line (the command text holds them quoted).
    for what in ["\nrefused: ip", "\nrefused: metadata", "\nrefused: dns"] {
        assert!(logs.contains(what), "{what} missing:\n{logs}");
    }
    // No route at all: the routing table has its header line only.
    let routes: Vec<&str> =
        logs.lines().skip_while(|l| !l.starts_with("Iface")).filter(|l| !l.starts_with("paddock:")).collect();
    assert_eq!(routes.len(), 1, "the sandbox has routes: {routes:?}");
}

#[tokio::test]
async fn the_docker_socket_is_not_in_the_sandbox() {
    let (run, logs) = attack(DOCKER_SOCKET).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    assert!(!logs.contains("FOUND /"), "{logs}");
    assert_eq!(logs.matches("absent: /").count(), 3, "{logs}");
}

#[tokio::test]
async fn setuid_binaries_and_capabilities_give_no_privilege() {
    let (run, logs) = attack(ESCALATION).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}");
    assert!(logs.contains("NoNewPrivs:\t1"), "{logs}");
    for cap in ["CapEff:\t0000000000000000", "CapPrm:\t0000000000000000", "CapBnd:\t0000000000000000"] {
        assert!(logs.contains(cap), "{cap} missing:\n{logs}");
    }
    assert!(logs.contains("\nrefused: su") && logs.contains("\nrefused: mount"), "{logs}");
    assert!(logs.contains("uid=1000 euid=1000"), "{logs}");
}

#[tokio::test]
async fn no_secret_the_worker_holds_reaches_the_sandbox() {
    let canary_env = format!("canary-env-{}", ulid::Ulid::new());
    let canary_token = format!("ghs_canary{}", ulid::Ulid::new());
    let (app, repo) = attack_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", SECRETS)]).await;
    let mut worker = app.spawn_worker_process_with_env(&[
        ("AWS_SECRET_ACCESS_KEY", canary_env.as_str()),
        ("GITHUB_TOKEN", canary_token.as_str()),
    ]);
    let id = app.create_run(&repo, "steal").await;
    let run = app.wait_until_finished(&id).await;
    let logs = app.logs_of(&run).await;
    assert_eq!(run["state"], "succeeded", "{run:#}\n{logs}\n{}", worker.log_text());
    assert!(logs.contains("PADDOCK_RUN_ID="), "the dump did not run:\n{logs}");
    let s3_secret =
        app.vars.iter().find(|(k, _)| k == "PADDOCK_S3__SECRET_ACCESS_KEY").map(|(_, v)| v.clone()).unwrap();
    for secret in [canary_env.as_str(), canary_token.as_str(), s3_secret.as_str(), app.token.as_str()] {
        assert!(!logs.contains(secret), "a worker secret reached the sandbox:\n{logs}");
    }
    assert!(!logs.contains("[remote"), "the clone's remote (and any credential in it) reached the sandbox");
    worker.kill_hard();
}

#[tokio::test]
async fn a_ten_minute_sleep_stops_at_a_five_second_cap() {
    let (app, repo) =
        attack_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "sleep 600"), ("PADDOCK_SANDBOX__TIMEOUT_SECONDS", "5")])
            .await;
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "sleep").await;
    let run = app.wait_until_finished(&id).await;
    assert_eq!(run["stop_reason"], json!({"kind": "timeout", "limit_seconds": 5}));
    worker.shutdown().await;
}
