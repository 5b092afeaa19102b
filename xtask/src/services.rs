//! Installs and starts the real services Paddock uses, each only when it is
//! missing or stopped, and records how to reach them in
//! `$PADDOCK_HOME/state/services.env` for the tests and the demo.

use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Result, run};

const PACKAGES: &[&str] = &[
    "redis-server",
    "redis-tools",
    "docker.io",
    "runsc",
    "git",
    "debootstrap",
    "iptables",
    "ca-certificates",
    "curl",
    // The Helm chart's renderer (infra/helm/render): Go's text/template with
    // Sprig, as Helm renders (no helm binary can be downloaded here).
    "golang-go",
    "golang-github-masterminds-sprig-dev",
    "golang-gopkg-yaml.v3-dev",
];
/// Where the engine reads its runtimes from, and how gVisor is registered in
/// it: `--network=host` keeps the network namespace Docker made for the
/// container, so the run's internal network and firewall apply as with runc.
const DAEMON_JSON: &str = "/etc/docker/daemon.json";
const RUNSC: &str = "/usr/bin/runsc";
const GARAGE_VERSION: &str = "2.5.0";
const REDIS_PORT: u16 = 6390;
const S3_PORT: u16 = 3900;
const BUCKET: &str = "paddock";
/// For tests that act on a whole bucket (the retention sweeper): nothing
/// else writes there.
const ISOLATED_BUCKET: &str = "paddock-isolated";
const SANDBOX_REPO: &str = "paddock/sandbox";
/// An S3 emulation with Object Lock (Garage has none), for the tests of
/// write-once audit objects only.
const MOTO_VERSION: &str = "5.2.5";
/// The API contract fuzzer the test suite runs against the document
/// (through `$PADDOCK_HOME/bin/st`).
const SCHEMATHESIS_VERSION: &str = "4.32.5";
const MOTO_PORT: u16 = 3950;
/// The offline checks of `infra/` the test suite runs (through
/// `PYTHONPATH=$PADDOCK_HOME/infra-checks/lib`): checkov over the
/// Terraform module, python-hcl2 for its structure (no Terraform binary
/// can be downloaded here), kubernetes-validate for the Helm chart's
/// manifests.
const INFRA_CHECKS: &[&str] = &["checkov==3.3.30", "python-hcl2==8.1.4", "kubernetes-validate==1.37.0"];

pub fn ensure_all(home: &Path) -> Result<()> {
    for dir in ["logs", "state", "redis", "garage"] {
        fs::create_dir_all(home.join(dir)).map_err(|e| format!("cannot create {}: {e}", home.join(dir).display()))?;
    }
    step("packages", packages)?;
    step("docker", || docker(home))?;
    step("redis", || redis(home))?;
    let key = step("garage", || garage(home))?;
    step("sandbox image", || sandbox_image(home, Release::Bookworm).map(drop))?;
    step("agent images", || crate::images::build(home, &[]))?;
    step("moto (S3 Object Lock emulation)", || moto(home))?;
    step("schemathesis (API contract fuzzer)", || schemathesis(home))?;
    step("infra checks (checkov, python-hcl2, kubernetes-validate)", || infra_checks(home))?;
    step("helm renderer", || helm_renderer(home))?;
    step("CRD schemas (KEDA, Prometheus operator)", || crd_schemas(home))?;
    let vars = [
        ("PADDOCK_REDIS__URL".to_owned(), format!("redis://127.0.0.1:{REDIS_PORT}/")),
        ("PADDOCK_S3__ENDPOINT".to_owned(), format!("http://127.0.0.1:{S3_PORT}")),
        ("PADDOCK_S3__REGION".to_owned(), "garage".to_owned()),
        ("PADDOCK_S3__BUCKET".to_owned(), BUCKET.to_owned()),
        ("PADDOCK_S3__ACCESS_KEY_ID".to_owned(), key.0),
        ("PADDOCK_S3__SECRET_ACCESS_KEY".to_owned(), key.1),
    ];
    let env_file: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let path = home.join("state/services.env");
    fs::write(&path, env_file).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let value = f().map_err(|e| format!("{name}: {e}"))?;
    eprintln!("xtask: {name}: ok ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(value)
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("{what} did not become ready within {} s", limit.as_secs()))
}

/// Starts `cmd` in its own session so it outlives this process.
fn spawn_daemon(mut cmd: Command, log: &Path) -> Result<()> {
    let log_file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
    let mut setsid = Command::new("setsid");
    setsid.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            setsid.env(k, v);
        }
    }
    setsid.stdin(Stdio::null()).stdout(log_file).stderr(err_file);
    cmd = setsid;
    cmd.spawn().map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    Ok(())
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).map_err(|e| e.to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads `name` from a small state file, creating it with `make` once.
fn persistent(path: &Path, make: impl FnOnce() -> Result<String>) -> Result<String> {
    if let Ok(value) = fs::read_to_string(path) {
        return Ok(value.trim().to_owned());
    }
    let value = make()?;
    fs::write(path, &value).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(value)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

/// Packages and a running engine: what building images needs.
pub fn ensure_docker(home: &Path) -> Result<()> {
    fs::create_dir_all(home.join("logs")).map_err(|e| e.to_string())?;
    step("packages", packages)?;
    step("docker", || docker(home))
}

fn docker_up() -> bool {
    succeeds(Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]))
}

fn docker(home: &Path) -> Result<()> {
    let registered = register_runsc()?;
    if docker_up() {
        if registered {
            reload_dockerd()?;
        }
        return Ok(());
    }
    spawn_daemon(Command::new("dockerd"), &home.join("logs/dockerd.log"))?;
    wait_until("dockerd", Duration::from_secs(60), docker_up)
        .map_err(|e| format!("{e}; see {}", home.join("logs/dockerd.log").display()))
}

/// Adds gVisor's `runsc` to the engine's runtimes, keeping whatever else
/// daemon.json holds. Returns whether the file changed.
fn register_runsc() -> Result<bool> {
    let path = Path::new(DAEMON_JSON);
    let mut daemon: serde_json::Value = match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            serde_json::from_str(&text).map_err(|e| format!("{DAEMON_JSON} is not JSON: {e}"))?
        }
        _ => serde_json::json!({}),
    };
    let wanted = serde_json::json!({"path": RUNSC, "runtimeArgs": ["--network=host"]});
    if daemon.pointer("/runtimes/runsc") == Some(&wanted) {
        return Ok(false);
    }
    let Some(object) = daemon.as_object_mut() else {
        return Err(format!("{DAEMON_JSON} is not a JSON object"));
    };
    let runtimes = object.entry("runtimes").or_insert_with(|| serde_json::json!({}));
    let Some(runtimes) = runtimes.as_object_mut() else {
        return Err(format!("`runtimes` in {DAEMON_JSON} is not an object"));
    };
    runtimes.insert("runsc".to_owned(), wanted);
    fs::create_dir_all("/etc/docker").map_err(|e| format!("cannot create /etc/docker: {e}"))?;
    let text = serde_json::to_string_pretty(&daemon).map_err(|e| e.to_string())?;
    fs::write(path, text + "\n").map_err(|e| format!("cannot write {DAEMON_JSON}: {e}"))?;
    eprintln!("xtask: registered gVisor (runsc) in {DAEMON_JSON}");
    Ok(true)
}

/// A running engine rereads its runtimes on SIGHUP.
fn reload_dockerd() -> Result<()> {
    run(Command::new("pkill").args(["-HUP", "-x", "dockerd"]))?;
    wait_until("dockerd to register runsc", Duration::from_secs(20), || {
        Command::new("docker")
            .args(["info", "--format", "{{json .Runtimes}}"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("runsc"))
    })
}

fn redis_up() -> bool {
    Command::new("redis-cli")
        .args(["-p", &REDIS_PORT.to_string(), "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

/// Redis with AOF fsynced before every reply (`appendfsync always`): the
/// API's `audit.durability = "fsync"` refuses to start on anything less.
fn redis(home: &Path) -> Result<()> {
    if redis_up() {
        // Started by an older setup with `everysec`: made durable in place.
        return run(Command::new("redis-cli").args([
            "-p",
            &REDIS_PORT.to_string(),
            "config",
            "set",
            "appendfsync",
            "always",
        ]));
    }
    if port_open(REDIS_PORT) {
        return Err(format!("port {REDIS_PORT} is taken by something that is not Redis"));
    }
    let dir = home.join("redis");
    run(Command::new("redis-server")
        .args(["--port", &REDIS_PORT.to_string(), "--bind", "127.0.0.1", "--daemonize", "yes", "--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .arg("--dir")
        .arg(&dir)
        .arg("--logfile")
        .arg(home.join("logs/redis.log"))
        .arg("--pidfile")
        .arg(dir.join("redis.pid")))?;
    wait_until("redis", Duration::from_secs(20), redis_up)
}

/// Installs schemathesis from PyPI under `$PADDOCK_HOME`, with an `st`
/// launcher; the contract test runs it.
fn schemathesis(home: &Path) -> Result<()> {
    let dir = home.join(format!("schemathesis-{SCHEMATHESIS_VERSION}"));
    if !dir.join("st").exists() {
        install_schemathesis(home, &dir)?;
    }
    let link = home.join("bin/st");
    fs::create_dir_all(home.join("bin")).map_err(|e| format!("cannot create {}: {e}", home.join("bin").display()))?;
    fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(dir.join("st"), &link).map_err(|e| format!("cannot link {}: {e}", link.display()))
}

fn install_schemathesis(home: &Path, dir: &Path) -> Result<()> {
    eprintln!("xtask: installing schemathesis {SCHEMATHESIS_VERSION} from PyPI (about 10 s, once per machine)");
    let partial = home.join("schemathesis-partial");
    fs::remove_dir_all(&partial).ok();
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore"])
        .arg("--target")
        .arg(partial.join("lib"))
        .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}"))
        .stdout(Stdio::null()))?;
    let launcher = format!(
        "#!/bin/sh\nPYTHONPATH=\"{}/lib\" exec python3 -c 'import sys; from schemathesis.cli import schemathesis; sys.argv[0] = \"st\"; sys.exit(schemathesis())' \"$@\"\n",
        dir.display()
    );
    let st = partial.join("st");
    fs::write(&st, launcher).map_err(|e| format!("cannot write {}: {e}", st.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&st, fs::Permissions::from_mode(0o755)).map_err(|e| format!("{}: {e}", st.display()))?;
    fs::rename(&partial, dir).map_err(|e| format!("cannot move schemathesis into {}: {e}", dir.display()))
}

/// Installs [`INFRA_CHECKS`] from PyPI under `$PADDOCK_HOME/infra-checks`
/// (a directory per set of versions, linked).
fn infra_checks(home: &Path) -> Result<()> {
    let versions: String = INFRA_CHECKS.iter().map(|p| p.replace("==", "-")).collect::<Vec<_>>().join("_");
    let dir = home.join(format!("infra-checks_{versions}"));
    if !dir.join("lib/checkov").is_dir() {
        eprintln!("xtask: installing {} from PyPI (about 30 s, once per machine)", INFRA_CHECKS.join(", "));
        let partial = home.join("infra-checks-partial");
        fs::remove_dir_all(&partial).ok();
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore"])
            .arg("--target")
            .arg(partial.join("lib"))
            .args(INFRA_CHECKS)
            .stdout(Stdio::null())
            .stderr(Stdio::null()))?;
        fs::remove_dir_all(&dir).ok();
        fs::rename(&partial, &dir).map_err(|e| format!("cannot move the checks into {}: {e}", dir.display()))?;
    }
    let link = home.join("infra-checks");
    fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(&dir, &link).map_err(|e| format!("cannot link {}: {e}", link.display()))
}

/// The custom resources' schemas `infra/helm/crd-check.mjs` validates
/// with, from npm.
const CRD_SCHEMAS: &[&str] =
    &["@kubernetes-models/keda@2.0.0", "@kubernetes-models/prometheus-operator@6.0.0", "js-yaml@4.1.0"];

fn crd_schemas(home: &Path) -> Result<()> {
    if !succeeds(Command::new("node").arg("--version")) || !succeeds(Command::new("npm").arg("--version")) {
        run(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "nodejs",
            "npm",
        ]))?;
    }
    let versions: String = CRD_SCHEMAS.iter().map(|p| p.replace(['/', '@'], "-")).collect::<Vec<_>>().join("_");
    let dir = home.join(format!("crd-schemas{versions}"));
    if !dir.join("installed").exists() {
        eprintln!("xtask: installing {} from npm (seconds, once per machine)", CRD_SCHEMAS.join(", "));
        fs::remove_dir_all(&dir).ok();
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .args(CRD_SCHEMAS)
            .stdout(Stdio::null()))?;
        fs::write(dir.join("installed"), "").map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let link = home.join("crd-schemas");
    fs::remove_file(&link).ok();
    std::os::unix::fs::symlink(&dir, &link).map_err(|e| format!("cannot link {}: {e}", link.display()))
}

/// Builds `infra/helm/render` (Go, GOPATH mode on Debian's Go packages: no
/// module proxy is reachable) into `$PADDOCK_HOME/bin/helm-render`.
fn helm_renderer(home: &Path) -> Result<()> {
    let source = crate::workspace_root().join("infra/helm/render");
    let bin = home.join("bin/helm-render");
    fs::create_dir_all(home.join("bin")).map_err(|e| format!("cannot create {}: {e}", home.join("bin").display()))?;
    run(Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&source)
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .env("GOCACHE", home.join("go-build"))
        .env("GOFLAGS", ""))
}

fn moto(home: &Path) -> Result<()> {
    let dir = home.join(format!("moto-{MOTO_VERSION}"));
    if !dir.join("moto").exists() {
        eprintln!("xtask: installing moto {MOTO_VERSION} from PyPI (about 20 s, once per machine)");
        let partial = home.join("moto-partial");
        fs::remove_dir_all(&partial).ok();
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore"])
            .arg("--target")
            .arg(&partial)
            .args([&format!("moto[s3]=={MOTO_VERSION}"), "flask", "flask-cors"])
            .stdout(Stdio::null()))?;
        fs::rename(&partial, &dir).map_err(|e| format!("cannot move moto into {}: {e}", dir.display()))?;
    }
    if port_open(MOTO_PORT) {
        return Ok(());
    }
    let mut server = Command::new("python3");
    server.env("PYTHONPATH", &dir).args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &MOTO_PORT.to_string()]);
    spawn_daemon(server, &home.join("logs/moto.log"))?;
    wait_until("moto", Duration::from_secs(30), || port_open(MOTO_PORT))
}

fn garage_bin(home: &Path) -> PathBuf {
    home.join(format!("garage-{GARAGE_VERSION}/bin/garage"))
}

fn install_garage(home: &Path) -> Result<()> {
    let bin = garage_bin(home);
    if bin.exists() {
        return Ok(());
    }
    eprintln!("xtask: building garage {GARAGE_VERSION} from crates.io (about 10 minutes, once per machine)");
    let build_dir = home.join("garage-build");
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["install", "--locked", "garage", "--version", GARAGE_VERSION, "--root"])
        .arg(home.join(format!("garage-{GARAGE_VERSION}")))
        .env("CARGO_TARGET_DIR", &build_dir))?;
    fs::remove_dir_all(&build_dir).ok();
    Ok(())
}

fn garage(home: &Path) -> Result<(String, String)> {
    install_garage(home)?;
    let dir = home.join("garage");
    let config = dir.join("garage.toml");
    let rpc_secret = persistent(&dir.join("rpc_secret"), || random_hex(32))?;
    let admin_token = persistent(&dir.join("admin_token"), || random_hex(24))?;
    let toml = format!(
        r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{S3_PORT}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:3903"
admin_token = "{admin_token}"
"#,
        dir = dir.display()
    );
    fs::write(&config, toml).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let bin = garage_bin(home);
    let cli = || {
        let mut cmd = Command::new(&bin);
        cmd.arg("-c").arg(&config);
        cmd
    };
    if !succeeds(cli().arg("status")) {
        if port_open(S3_PORT) {
            return Err(format!("port {S3_PORT} is taken by something that is not this Garage"));
        }
        let mut server = cli();
        server.arg("server");
        spawn_daemon(server, &home.join("logs/garage.log"))?;
        wait_until("garage", Duration::from_secs(30), || succeeds(cli().arg("status")))?;
    }
    let layout = output(cli().args(["layout", "show"]))?;
    if !layout.contains("dc1") {
        let node = output(cli().args(["node", "id", "-q"]))?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        run(cli().args(["layout", "assign", "-z", "dc1", "-c", "1G", &node]).stdout(Stdio::null()))?;
        run(cli().args(["layout", "apply", "--version", "1"]).stdout(Stdio::null()))?;
    }
    let key_id = persistent(&dir.join("key_id"), || Ok(format!("GK{}", random_hex(12)?)))?;
    let secret = persistent(&dir.join("key_secret"), || random_hex(32))?;
    if !succeeds(cli().args(["key", "info", &key_id])) {
        run(cli().args(["key", "import", "--yes", "-n", "paddock", &key_id, &secret]).stdout(Stdio::null()))?;
    }
    for bucket in [BUCKET, ISOLATED_BUCKET] {
        if !succeeds(cli().args(["bucket", "info", bucket])) {
            run(cli().args(["bucket", "create", bucket]).stdout(Stdio::null()))?;
        }
        run(cli()
            .args(["bucket", "allow", "--read", "--write", "--owner", bucket, "--key", &key_id])
            .stdout(Stdio::null()))?;
    }
    wait_until("garage s3 api", Duration::from_secs(10), || port_open(S3_PORT))?;
    Ok((key_id, secret))
}

/// The Debian release a sandbox image is built from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Release {
    /// Debian 12: the sandbox image agents run in by default.
    Bookworm,
    /// Debian 13, for agents that need newer runtimes than Debian 12 has
    /// (Node.js 20, Python 3.12). Same packages and tools, but not the
    /// PyPI packages, which are built for Debian 12's Python.
    Trixie,
}

impl Release {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "bookworm" => Ok(Self::Bookworm),
            "trixie" => Ok(Self::Trixie),
            other => Err(format!("base must be \"bookworm\" or \"trixie\", not {other:?}")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Bookworm => "bookworm",
            Self::Trixie => "trixie",
        }
    }
}

/// `infra/sandbox/VERSION`.
pub fn sandbox_version() -> Result<String> {
    let path = crate::workspace_root().join("infra/sandbox/VERSION");
    Ok(fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?.trim().to_owned())
}

/// The sandbox image of `release`, built when missing; its name.
pub fn sandbox_image(home: &Path, release: Release) -> Result<String> {
    let root = crate::workspace_root().join("infra/sandbox");
    let image = match release {
        Release::Bookworm => format!("{SANDBOX_REPO}:{}", sandbox_version()?),
        Release::Trixie => format!("{SANDBOX_REPO}:{}-trixie", sandbox_version()?),
    };
    if succeeds(Command::new("docker").args(["image", "inspect", &image])) {
        return Ok(image);
    }
    let packages = fs::read_to_string(root.join("packages")).map_err(|e| e.to_string())?;
    let include: Vec<&str> = packages.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let rootfs = home.join(format!("sandbox-rootfs-{}", release.name()));
    fs::remove_dir_all(&rootfs).ok();
    eprintln!("xtask: building {image} with debootstrap (about a minute)");
    run(Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={}", include.join(",")), release.name()])
        .arg(&rootfs)
        .arg("http://deb.debian.org/debian")
        .stdout(Stdio::null()))?;
    let python = fs::read_to_string(root.join("python-packages")).unwrap_or_default();
    let wanted: Vec<&str> = python.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    if !wanted.is_empty() && release == Release::Bookworm {
        // Wheels for CPython 3.11 on glibc: the image's python3 is 3.11 too.
        run(Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--no-compile", "--disable-pip-version-check", "--target"])
            .arg(rootfs.join("usr/lib/python3/dist-packages"))
            .args(&wanted)
            .stdout(Stdio::null()))?;
        // `--target` puts console scripts (`mini`) beside the packages.
        let scripts = rootfs.join("usr/lib/python3/dist-packages/bin");
        if scripts.is_dir() {
            for entry in fs::read_dir(&scripts).map_err(|e| e.to_string())? {
                let entry = entry.map_err(|e| e.to_string())?;
                // pip wrote the host interpreter into the shebang.
                let text = fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
                let body = text.split_once('\n').map_or("", |(_, rest)| rest);
                let target = rootfs.join("usr/local/bin").join(entry.file_name());
                fs::write(&target, format!("#!/usr/bin/python3\n{body}")).map_err(|e| e.to_string())?;
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
            }
            fs::remove_dir_all(&scripts).ok();
        }
    }
    // Paddock's own tools (the reference agent) from infra/sandbox/bin.
    let bin = rootfs.join("usr/local/bin");
    for entry in fs::read_dir(root.join("bin")).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = bin.join(entry.file_name());
        fs::copy(entry.path(), &target).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    }
    // The agent's user: numeric ids match the sandbox config, so tools that
    // look up the current user (git, python) find it.
    append(&rootfs.join("etc/passwd"), "paddock:x:1000:1000:paddock agent:/tmp:/bin/bash\n")?;
    append(&rootfs.join("etc/group"), "paddock:x:1000:\n")?;
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let path = rootfs.join(dir);
        fs::remove_dir_all(&path).ok();
        fs::create_dir_all(&path).ok();
    }
    let script = format!(
        "tar -C {} -c . | docker import --change 'USER 1000:1000' --change 'WORKDIR /workspace' --change 'ENV HOME=/tmp' - {image}",
        rootfs.display()
    );
    run(Command::new("bash").args(["-o", "pipefail", "-c", &script]).stdout(Stdio::null()))?;
    fs::remove_dir_all(&rootfs).ok();
    Ok(image)
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot append to {}: {e}", path.display()))
}

/// Test namespaces start with these; only `cargo xtask test` creates them.
const TEST_NAMESPACES: &[&str] = &["t-", "q-", "s-"];

/// Removes what earlier, interrupted test runs left behind (sandboxes,
/// networks, volumes, firewall rules, Redis keys of test namespaces), so
/// they do not pile up across CI runs. Best effort: nothing here can fail
/// the suite.
pub fn remove_test_leftovers() {
    let is_test = |ns: &str| TEST_NAMESPACES.iter().any(|p| ns.starts_with(p));
    for (kind, list_args) in [
        ("container", vec!["ps", "-a", "--format", "{{.ID}} {{.Label \"paddock.namespace\"}}"]),
        ("network", vec!["network", "ls", "--format", "{{.ID}} {{.Label \"paddock.namespace\"}}"]),
        ("volume", vec!["volume", "ls", "--format", "{{.Name}} {{.Label \"paddock.namespace\"}}"]),
    ] {
        let Ok(out) =
            Command::new("docker").args(&list_args).args(["--filter", "label=paddock.managed-by=paddock"]).output()
        else {
            continue;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, ns)| is_test(ns))
            .map(|(id, _)| id.to_owned())
            .collect();
        if !ids.is_empty() {
            let remove: &[&str] = match kind {
                "container" => &["rm", "-f", "-v"],
                "network" => &["network", "rm"],
                _ => &["volume", "rm", "-f"],
            };
            let _ = Command::new("docker").args(remove).args(&ids).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
    if let Ok(out) = Command::new("iptables").args(["-w", "-S", "PADDOCK-INPUT"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.starts_with("-A ") && TEST_NAMESPACES.iter().any(|p| line.contains(&format!("pd:{p}"))) {
                let args: Vec<String> = std::iter::once("-w".to_owned())
                    .chain(std::iter::once("-D".to_owned()))
                    .chain(line.split_whitespace().skip(1).map(|w| w.trim_matches('"').to_owned()))
                    .collect();
                let _ = Command::new("iptables").args(&args).stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
    }
    for prefix in TEST_NAMESPACES {
        let script = format!(
            "redis-cli -p {REDIS_PORT} --scan --pattern '{{{prefix}*' | xargs -r -n 500 redis-cli -p {REDIS_PORT} unlink > /dev/null"
        );
        let _ = Command::new("bash").args(["-c", &script]).status();
    }
}
