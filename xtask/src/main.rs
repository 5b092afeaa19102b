//! Project automation: `cargo xtask <command>`.
//!
//! - `setup`: install and start what Paddock needs on a Debian 12 machine
//!   (packages, dockerd, Redis, Garage, the sandbox image); idempotent
//! - `test`: setup, then the whole test suite
//! - `demo`: setup, then one issue-to-diff run end to end on local defaults
//!   (`PADDOCK_DEMO_AGENT=<name>` picks the agent)
//! - `images [agent...]`: build the agent images of `infra/agents/agents.toml`
//!   that are missing (setup builds them all)
//! - `bench [--debug] [names]`: the benchmarks in `loadtests/`, on release
//!   builds (debug with `--debug`), each against a baseline
//! - `dist [--debug] [--images [--base IMAGE]]`: release binaries and a
//!   Debian package per role (`paddock-api`, `paddock-worker`,
//!   `paddock-gateway`, `paddock-cli`) with hardened systemd units, into
//!   `<target>/release/dist/`; with `--images`, `paddock/<role>:<version>`
//!   container images from them
//! - `openapi`: regenerate `openapi/openapi.json`
//! - `tidy`: the workspace's crates and the dependency rules of ARCHITECTURE.md
//!
//! Everything it installs or keeps lives under `$PADDOCK_HOME` (default
//! `~/.cache/paddock`), outside the clone, so a fresh clone reuses it.

mod dist;
mod images;
mod peers;
mod services;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("test") => test(&args[1..]),
        Some("demo") => demo(),
        Some("images") => images(&args[1..]),
        Some("openapi") => openapi(),
        Some("bench") => bench(&args[1..]),
        Some("tidy") => tidy(),
        Some("dist") => dist_command(&args[1..]),
        _ => Err("usage: cargo xtask <setup|test|demo|images|bench|dist|openapi|tidy>".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

pub type Result<T> = std::result::Result<T, String>;

/// Where installs, builds and service state live, outside the clone.
pub fn home() -> PathBuf {
    std::env::var_os("PADDOCK_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned())).join(".cache/paddock")
    })
}

/// The checkout this command was run in: the nearest directory upwards that
/// holds `xtask/Cargo.toml`. Found at run time, not baked in at build time,
/// because one xtask binary may serve several clones through a shared target
/// directory.
pub fn workspace_root() -> PathBuf {
    let start = std::env::current_dir().unwrap_or_default();
    start.ancestors().find(|dir| dir.join("xtask/Cargo.toml").is_file()).map(Path::to_path_buf).unwrap_or(start)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| home().join("target"))
}

/// Runs a command inheriting stdio; fails with its status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed with {status}")) }
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.args(args).current_dir(workspace_root()).env("CARGO_TARGET_DIR", target_dir()).env("PADDOCK_HOME", home());
    cmd
}

/// Prints what each workspace crate depends on inside the workspace and
/// fails when a rule of ARCHITECTURE.md is broken.
fn tidy() -> Result<()> {
    let workspace = tidy::workspace()?;
    for line in tidy::workspace_lines(&workspace) {
        println!("{line}");
    }
    let broken = tidy::violations(&workspace.graph, tidy::RULES);
    if broken.is_empty() {
        println!("all {} dependency rules hold", tidy::RULES.len());
        return Ok(());
    }
    Err(format!("dependency rules broken:\n{}", broken.join("\n")))
}

fn setup() -> Result<()> {
    let started = Instant::now();
    services::ensure_all(&home())?;
    eprintln!("xtask: services ready in {:.1} s (state in {})", started.elapsed().as_secs_f64(), home().display());
    // The command line people use with it (`cargo install --path cli` puts
    // it on the PATH).
    run(&mut cargo(&["build", "--quiet", "--package", "paddock-cli", "--bin", "paddock"]))?;
    eprintln!("xtask: the CLI is {}", target_dir().join("debug/paddock").display());
    Ok(())
}

/// `dist [--debug] [--images [--base IMAGE]]`.
fn dist_command(args: &[String]) -> Result<()> {
    let debug = args.iter().any(|a| a == "--debug");
    dist::build(&workspace_root(), &target_dir(), debug)?;
    if args.iter().any(|a| a == "--images") {
        let base = args.iter().position(|a| a == "--base").and_then(|i| args.get(i + 1)).cloned();
        dist::images(&workspace_root(), &target_dir(), debug, &base.unwrap_or_else(sandbox_base))?;
    }
    Ok(())
}

/// A Debian 12 image this machine has without a registry: the sandbox
/// image `setup` builds with debootstrap (deployments use their own base,
/// e.g. debian:bookworm-slim).
fn sandbox_base() -> String {
    let version = std::fs::read_to_string(workspace_root().join("infra/sandbox/VERSION")).unwrap_or_default();
    format!("paddock/sandbox:{}", version.trim())
}

fn images(only: &[String]) -> Result<()> {
    services::ensure_docker(&home())?;
    images::build(&home(), only)
}

fn test(extra: &[String]) -> Result<()> {
    let started = Instant::now();
    tidy()?;
    setup()?;
    services::remove_test_leftovers();
    run(&mut cargo(&["build", "--workspace", "--bins"]))?;
    // The packages and images of the debug build, which the deployment
    // tests install and run.
    dist::build(&workspace_root(), &target_dir(), true)?;
    dist::images(&workspace_root(), &target_dir(), true, &sandbox_base())?;
    let mut cmd = cargo(&["test", "--workspace", "--no-fail-fast"]);
    cmd.args(extra);
    let (passed, failed, result) = run_counting_tests(&mut cmd);
    println!("xtask: {passed} passed, {failed} failed");
    result?;
    if passed == 0 {
        return Err("the test suite ran no test".to_owned());
    }
    eprintln!("xtask: test suite passed in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up the per-binary
/// `test result:` lines so the run ends on one total.
fn run_counting_tests(cmd: &mut Command) -> (u64, u64, Result<()>) {
    use std::io::{BufRead, BufReader};
    let mut child = match cmd.stdout(std::process::Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => return (0, 0, Err(format!("cannot run {cmd:?}: {e}"))),
    };
    let (mut passed, mut failed) = (0, 0);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                passed += count(rest, " passed");
                failed += count(rest, " failed");
            }
        }
    }
    let result = match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(format!("{cmd:?} failed with {status}")),
        Err(e) => Err(format!("cannot wait for {cmd:?}: {e}")),
    };
    (passed, failed, result)
}

/// The number before `label` in `ok. 7 passed; 0 failed; ...`.
fn count(summary: &str, label: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim().trim_start_matches("ok. ").trim_start_matches("FAILED. ").strip_suffix(label.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn demo() -> Result<()> {
    setup()?;
    run(&mut cargo(&["build", "--workspace", "--bins"]))?;
    run(Command::new(target_dir().join("debug/demo")).env("PADDOCK_BIN_DIR", target_dir().join("debug")))
}

/// The benchmarks measure what is deployed: release binaries (the
/// `--debug` argument, first, measures a debug build instead).
fn bench(which: &[String]) -> Result<()> {
    setup()?;
    let (profile, which) = match which.first().map(String::as_str) {
        Some("--debug") => ("debug", &which[1..]),
        _ => ("release", which),
    };
    let mut build = vec!["build", "--workspace", "--bins"];
    if profile == "release" {
        build.push("--release");
    }
    run(&mut cargo(&build))?;
    peers::ensure(&home())?;
    let bin = target_dir().join(profile);
    let mut cmd = Command::new(bin.join("loadtests"));
    cmd.args(which).env("PADDOCK_BIN_DIR", &bin).env("PADDOCK_HOME", home());
    cmd.env("PADDOCK_BENCH_BULLMQ", peers::dir(&home(), "bullmq", peers::BULLMQ_VERSION));
    cmd.env("PADDOCK_BENCH_LITELLM", peers::dir(&home(), "litellm", peers::LITELLM_VERSION));
    run(&mut cmd)
}

fn openapi() -> Result<()> {
    let output = cargo(&["run", "--quiet", "--package", "api", "--", "openapi"])
        .output()
        .map_err(|e| format!("cannot run the api binary: {e}"))?;
    if !output.status.success() {
        return Err(format!("`api openapi` failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let path = workspace_root().join("openapi/openapi.json");
    std::fs::write(&path, output.stdout).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    let output = cargo(&["run", "--quiet", "--package", "api", "--", "permission-matrix"])
        .output()
        .map_err(|e| format!("cannot run the api binary: {e}"))?;
    if !output.status.success() {
        return Err(format!("`api permission-matrix` failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let readme = workspace_root().join("README.md");
    let text = std::fs::read_to_string(&readme).map_err(|e| format!("cannot read {}: {e}", readme.display()))?;
    let (start, end) = ("<!-- permission-matrix:start -->\n", "<!-- permission-matrix:end -->");
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        return Err(format!("{} lacks the permission-matrix markers", readme.display()));
    };
    let matrix = String::from_utf8_lossy(&output.stdout);
    let updated = format!("{}{start}{matrix}{}", &text[..a], &text[b..]);
    std::fs::write(&readme, updated).map_err(|e| format!("cannot write {}: {e}", readme.display()))?;
    eprintln!("xtask: wrote the permission matrix into {}", readme.display());
    Ok(())
}
