//! The peers `cargo xtask bench` sets Paddock beside, pinned and installed
//! once per machine into `<PADDOCK_HOME>/peers/` from the package registries:
//! BullMQ (npm) on the same Redis for the queue, LiteLLM's proxy (PyPI)
//! before the same emulated provider for the gateway.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Result, run};

pub const BULLMQ_VERSION: &str = "6.7.6";
/// BullMQ's Redis client, an optional dependency since BullMQ 6.
pub const IOREDIS_VERSION: &str = "6.1.0";
pub const LITELLM_VERSION: &str = "1.108.7";

/// Where a peer is installed; complete once its `installed` marker exists.
pub fn dir(home: &Path, peer: &str, version: &str) -> PathBuf {
    home.join(format!("peers/{peer}-{version}"))
}

pub fn ensure(home: &Path) -> Result<()> {
    for (command, package) in [("node", "nodejs"), ("npm", "npm"), ("python3", "python3-venv")] {
        if !have(command) || (package == "python3-venv" && !venv_works()) {
            eprintln!("xtask: installing {package} for the benchmarks' peers");
            run(Command::new("apt-get").env("DEBIAN_FRONTEND", "noninteractive").args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                package,
            ]))?;
        }
    }
    let bullmq = dir(home, "bullmq", BULLMQ_VERSION);
    if !bullmq.join("installed").exists() {
        eprintln!("xtask: installing bullmq {BULLMQ_VERSION} from npm (seconds, once per machine)");
        fs::remove_dir_all(&bullmq).ok();
        fs::create_dir_all(&bullmq).map_err(|e| format!("cannot create {}: {e}", bullmq.display()))?;
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&bullmq)
            .args([format!("bullmq@{BULLMQ_VERSION}"), format!("ioredis@{IOREDIS_VERSION}")])
            .stdout(Stdio::null()))?;
        mark(&bullmq)?;
    }
    let litellm = dir(home, "litellm", LITELLM_VERSION);
    if !litellm.join("installed").exists() {
        eprintln!("xtask: installing litellm[proxy] {LITELLM_VERSION} from PyPI (about a minute, once per machine)");
        fs::remove_dir_all(&litellm).ok();
        // A virtual environment is not relocatable: it is made in place and
        // counts only once it is marked complete.
        run(Command::new("python3").args(["-m", "venv"]).arg(&litellm))?;
        run(Command::new(litellm.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("litellm[proxy]=={LITELLM_VERSION}"))
            .stdout(Stdio::null()))?;
        mark(&litellm)?;
    }
    Ok(())
}

fn mark(dir: &Path) -> Result<()> {
    fs::write(dir.join("installed"), "").map_err(|e| format!("cannot mark {} installed: {e}", dir.display()))
}

fn have(command: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn venv_works() -> bool {
    Command::new("python3")
        .args(["-c", "import ensurepip, venv"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
