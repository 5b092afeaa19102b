//! The Debian packages `cargo xtask dist` builds, installed on this machine
//! with `dpkg -i`: their units verified and scored by `systemd-analyze`,
//! then the API and the worker started from their installed units the way
//! systemd would (`tests::units`; systemd is not PID 1 here), one run
//! submitted with the installed `paddock` command line, and both stopped
//! with their unit's kill signal. `cargo xtask test` builds the packages of
//! the debug build first (`cargo xtask dist --debug`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tests::units::Unit;

const PACKAGES: [&str; 4] = ["paddock-api", "paddock-worker", "paddock-gateway", "paddock-cli"];

fn debs() -> Vec<PathBuf> {
    let dir = tests::services::bin_dir().join("dist");
    let version = env!("CARGO_PKG_VERSION");
    PACKAGES
        .iter()
        .map(|name| dir.join(format!("{name}_{version}_amd64.deb")))
        .inspect(|deb| assert!(deb.is_file(), "{} is missing: run `cargo xtask dist --debug`", deb.display()))
        .collect()
}

fn output(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `systemd-analyze security --offline`'s overall exposure for a unit
/// (0 is the most locked down, 10 the least).
fn exposure(unit: &str) -> f64 {
    let (_, text) = output("systemd-analyze", &["security", "--offline=true", "--no-pager", unit]);
    let line = text.lines().find(|l| l.contains("Overall exposure level")).unwrap_or_else(|| panic!("{text}"));
    let score = line.split(':').nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_default();
    score.parse().unwrap_or_else(|_| panic!("{line}"))
}

#[tokio::test]
async fn the_packages_install_and_their_units_run_a_run_and_stop_gracefully() {
    // Installed (or reinstalled over a previous run's) as an operator would.
    let debs = debs();
    let mut install = vec!["-i"];
    install.extend(debs.iter().map(|d| d.to_str().unwrap()));
    let (ok, text) = output("dpkg", &install);
    assert!(ok, "dpkg -i failed:\n{text}");
    for name in PACKAGES {
        let (ok, status) = output("dpkg-query", &["-W", "-f=${Status}", name]);
        assert!(ok && status == "install ok installed", "{name}: {status}");
    }
    let (_, groups) = output("id", &["-nG", "paddock"]);
    assert!(groups.split_whitespace().any(|g| g == "docker"), "the worker's user is in the docker group: {groups}");
    for role in ["api", "worker", "gateway"] {
        for file in [format!("/etc/paddock/{role}.env"), format!("/etc/paddock/{role}.toml")] {
            let (_, mode) = output("stat", &["-c", "%a %U:%G", &file]);
            assert_eq!(mode.trim(), "640 root:paddock", "{file}");
        }
        // Enabled by the package (the link systemd would start it from).
        let link = format!("/etc/systemd/system/multi-user.target.wants/paddock-{role}.service");
        assert!(std::path::Path::new(&link).exists(), "{link}");
    }

    // The installed units are valid and locked down.
    let units = ["paddock-api.service", "paddock-worker.service", "paddock-gateway.service"];
    for unit in units {
        let path = format!("/lib/systemd/system/{unit}");
        let (ok, text) = output("systemd-analyze", &["verify", "--man=no", &path]);
        let complaints: Vec<&str> = text.lines().filter(|l| l.contains(unit)).collect();
        assert!(ok && complaints.is_empty(), "systemd-analyze verify {unit}:\n{text}");
    }
    let scores: Vec<(&str, f64)> = units.iter().map(|u| (*u, exposure(&format!("/lib/systemd/system/{u}")))).collect();
    println!("systemd-analyze security exposure: {scores:?}");
    for (unit, score) in &scores {
        // The worker keeps CAP_NET_ADMIN and the docker group, so it scores
        // worse than the API and the gateway, which keep nothing.
        let bound = if unit.contains("worker") { 2.0 } else { 1.2 };
        assert!(*score <= bound, "{unit} exposure {score} over {bound}");
    }

    // A run through the installed API and worker, submitted with the
    // installed command line.
    let agent = "echo deployed > DEPLOYED.md";
    let app = tests::spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", agent)]).await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    let port = tests::free_port();
    // What a drop-in would set: this test's Redis namespace, bucket, git
    // server and bootstrap token. The work directory stays the package's
    // (/var/lib/paddock/worker, the unit's StateDirectory) and no test CA
    // is needed (no provider is called).
    let mut env: Vec<(String, String)> = app
        .vars
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "PADDOCK_WORKER__WORK_DIR" | "PADDOCK_TLS__EXTRA_CA_FILES" | "PADDOCK_API__LISTEN")
        })
        .cloned()
        .collect();
    env.push(("PADDOCK_API__LISTEN".to_owned(), format!("127.0.0.1:{port}")));
    env.push(("PADDOCK_WORKER__NAME".to_owned(), format!("packaged-{}", ulid::Ulid::new())));
    let api_unit = Unit::read("/lib/systemd/system/paddock-api.service".as_ref());
    let worker_unit = Unit::read("/lib/systemd/system/paddock-worker.service".as_ref());
    let (api_log, worker_log) = (app.scratch.join("api.log"), app.scratch.join("worker.log"));
    let mut api = api_unit.start(&env, &api_log);
    let mut worker = worker_unit.start(&env, &worker_log);
    let api_url = format!("http://127.0.0.1:{port}");
    let log = |path: &PathBuf| std::fs::read_to_string(path).unwrap_or_default();
    tests::eventually(Duration::from_secs(30), "the packaged API answers", || async {
        match app.client.get(format!("{api_url}/healthz")).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            other => Err(format!("{other:?}\n{}", log(&api_log))),
        }
    })
    .await;
    let (_, user) = output("ps", &["-o", "user=", "-p", &worker.id().to_string()]);
    assert_eq!(user.trim(), "paddock", "the worker runs as the unit's user");
    let (_, status) = output("grep", &["-E", "^(CapAmb|NoNewPrivs)", &format!("/proc/{}/status", worker.id())]);
    assert!(status.contains("CapAmb:\t0000000000001000"), "the worker keeps CAP_NET_ADMIN only: {status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    let cli = tokio::process::Command::new("/usr/bin/paddock")
        .args(["run", "--repo", &repo, "--title", "deploy check", "--watch"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &app.scratch)
        .env("PADDOCK_API_URL", &api_url)
        .env("PADDOCK_TOKEN", &app.token)
        .output();
    let cli = tokio::time::timeout(Duration::from_secs(180), cli).await.expect("the run ends").unwrap();
    let watched = String::from_utf8_lossy(&cli.stdout).into_owned() + &String::from_utf8_lossy(&cli.stderr);
    assert!(
        cli.status.success(),
        "the run did not succeed:\n{watched}\napi:\n{}\nworker:\n{}",
        log(&api_log),
        log(&worker_log)
    );
    println!("{watched}");
    assert!(watched.contains("DEPLOYED.md") || watched.contains("succeeded"), "{watched}");

    // Stopped as systemd stops them: the kill signal, a clean exit.
    let worker_status = worker_unit.stop(&mut worker);
    let api_status = api_unit.stop(&mut api);
    assert!(worker_status.is_some_and(|s| s.success()), "worker: {worker_status:?}\n{}", log(&worker_log));
    assert!(api_status.is_some_and(|s| s.success()), "api: {api_status:?}\n{}", log(&api_log));
    assert!(log(&worker_log).contains("shutting down: no new claims"), "{}", log(&worker_log));
}

#[tokio::test]
async fn without_s3_keys_the_api_reads_the_bucket_with_the_instance_roles_keys() {
    // The instance role's keys are the object store's (what IAM would give
    // the role, here Garage's key), served by an IMDSv2 emulator.
    let app = tests::spawn_app(&[]).await;
    let providers = tests::providers::EmulatedProviders::start().await;
    let var = |name: &str| app.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap();
    let (id, secret) = (var("PADDOCK_S3__ACCESS_KEY_ID"), var("PADDOCK_S3__SECRET_ACCESS_KEY"));
    let imds = providers.start_imds_with((id, secret)).await;
    let without_keys = [("PADDOCK_S3__ACCESS_KEY_ID", ""), ("PADDOCK_S3__SECRET_ACCESS_KEY", "")];
    let mut env = without_keys.to_vec();
    env.push(("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.url.as_str()));
    let (mut api, url) = app.spawn_api_process(&env).await;
    let ready = app.client.get(format!("{url}/readyz")).send().await.unwrap();
    let status = ready.status().as_u16();
    assert_eq!(status, 200, "{}\n{}", ready.text().await.unwrap(), api.log_text());
    assert!(providers.aws_keys_issued() >= 1, "the keys came from the metadata service");
    api.kill_hard();

    // No keys and no role: the bucket is refused, and readiness says why.
    let mut env = without_keys.to_vec();
    env.push(("AWS_EC2_METADATA_DISABLED", "true"));
    let (mut api, url) = app.spawn_api_process(&env).await;
    let ready = app.client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("object storage"), "{body}");
    api.kill_hard();
    imds.stop().await;
    providers.stop().await;
}

fn docker(args: &[&str]) -> (bool, String) {
    output("docker", args)
}

#[tokio::test]
async fn the_role_images_run_as_the_chart_runs_them() {
    // `cargo xtask test` builds them from the packages (`dist --images`).
    let version = env!("CARGO_PKG_VERSION");
    for role in ["api", "worker", "gateway"] {
        let (ok, text) =
            docker(&["image", "inspect", "--format", "{{.Config.User}}", &format!("paddock/{role}:{version}")]);
        assert!(ok, "paddock/{role}:{version} is missing: run `cargo xtask dist --debug --images`: {text}");
        assert_eq!(text.trim(), "10001:10001", "{role}: the chart's runAsUser");
    }
    // The worker's tools are in its image; its Docker engine is not.
    let (ok, tools) = docker(&[
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        &format!("paddock/worker:{version}"),
        "-c",
        "for t in git iptables ssh-keygen paddock-worker; do command -v $t; done; command -v dockerd || echo no-engine",
    ]);
    assert!(
        ok && tools.contains("/usr/bin/git") && tools.contains("iptables") && tools.contains("no-engine"),
        "{tools}"
    );

    // The API image as the chart runs it: read-only root, /tmp a tmpfs, no
    // capability, no privilege escalation, its config from /etc/paddock.
    let app = tests::spawn_app(&[]).await;
    let port = tests::free_port();
    let name = format!("paddock-api-image-{}", ulid::Ulid::new().to_string().to_lowercase());
    let listen = format!("PADDOCK_API__LISTEN=127.0.0.1:{port}");
    let mut args: Vec<String> = ["run", "-d", "--name", &name, "--network", "host", "--read-only", "--tmpfs", "/tmp"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(["--cap-drop", "ALL", "--security-opt", "no-new-privileges"].map(str::to_owned));
    for (key, value) in
        app.vars.iter().filter(|(k, _)| !matches!(k.as_str(), "PADDOCK_API__LISTEN" | "PADDOCK_TLS__EXTRA_CA_FILES"))
    {
        args.extend(["-e".to_owned(), format!("{key}={value}")]);
    }
    args.extend([
        "-e".to_owned(),
        listen,
        format!("paddock/api:{version}"),
        "--config".to_owned(),
        "/etc/paddock/api.toml".to_owned(),
    ]);
    let (ok, text) = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{text}");
    let url = format!("http://127.0.0.1:{port}/readyz");
    tests::eventually(Duration::from_secs(30), "the API image is ready", || async {
        match app.client.get(&url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            other => Err(format!("{other:?}\n{}", docker(&["logs", &name]).1)),
        }
    })
    .await;
    // SIGTERM (docker stop, as the kubelet stops a pod): a clean exit.
    let (ok, text) = docker(&["stop", "--time", "30", &name]);
    assert!(ok, "{text}");
    let (_, code) = docker(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    let logs = docker(&["logs", &name]).1;
    docker(&["rm", "-f", &name]);
    assert_eq!(code.trim(), "0", "{logs}");
}
