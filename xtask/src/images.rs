//! The agent images of `infra/agents/agents.toml`: each built once with
//! `docker build` (infra/agents/Dockerfile) on top of the sandbox image of
//! its Debian release, checked by running the agent's `--version`, and kept
//! until its tag changes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Deserialize;

use crate::Result;
use crate::services::{Release, sandbox_image, sandbox_version};

/// One agent of `agents.toml`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub installer: String,
    pub package: String,
    pub version: String,
    /// Run in each new image: the image is usable only if it answers.
    pub check: Vec<String>,
    #[serde(default = "bookworm")]
    pub base: String,
    /// The Python its dependencies are resolved for, when the agent
    /// declares a narrower one than its base has.
    #[serde(default)]
    pub resolve_python: Option<String>,
}

fn bookworm() -> String {
    "bookworm".to_owned()
}

/// The agents file's path.
fn agents_file() -> PathBuf {
    crate::workspace_root().join("infra/agents/agents.toml")
}

pub fn agents() -> Result<BTreeMap<String, Agent>> {
    let path = agents_file();
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Agent {
    /// `paddock/agent-<name>:<version>-<sandbox version>[-<base>]`.
    pub fn image(&self, name: &str, sandbox_version: &str) -> String {
        let suffix = if self.base == "bookworm" { String::new() } else { format!("-{}", self.base) };
        format!("paddock/agent-{name}:{}-{sandbox_version}{suffix}", self.version)
    }

    /// What the installer is given.
    fn spec(&self) -> Result<String> {
        match self.installer.as_str() {
            "npm" => Ok(format!("{}@{}", self.package, self.version)),
            "pip" => Ok(format!("{}=={}", self.package, self.version)),
            other => Err(format!("installer must be \"npm\" or \"pip\", not {other:?}")),
        }
    }
}

/// Builds the images of `only` (every agent when empty) that are missing.
pub fn build(home: &Path, only: &[String]) -> Result<()> {
    let agents = agents()?;
    for name in only {
        if !agents.contains_key(name) {
            let known: Vec<&str> = agents.keys().map(String::as_str).collect();
            return Err(format!("no agent {name:?} in {} (known: {})", agents_file().display(), known.join(", ")));
        }
    }
    let version = sandbox_version()?;
    for (name, agent) in agents.iter().filter(|(name, _)| only.is_empty() || only.contains(name)) {
        let image = agent.image(name, &version);
        if image_exists(&image) {
            continue;
        }
        let started = Instant::now();
        let base = sandbox_image(home, Release::parse(&agent.base).map_err(|e| format!("[{name}]: {e}"))?)?;
        eprintln!("xtask: building {image} on {base} ({} {})", agent.installer, agent.spec()?);
        build_one(home, name, agent, &base, &image)?;
        let printed = crate::services::output(Command::new("docker").args(["run", "--rm", &image]).args(&agent.check))
            .map_err(|e| format!("{image} does not run its agent: {e}"))?;
        eprintln!("xtask: {image}: `{}` printed {}", agent.check.join(" "), printed.trim());
        eprintln!("xtask: built {image} in {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn build_one(home: &Path, name: &str, agent: &Agent, base: &str, image: &str) -> Result<()> {
    let context = home.join("agent-build").join(name);
    fs::remove_dir_all(&context).ok();
    fs::create_dir_all(&context).map_err(|e| format!("cannot create {}: {e}", context.display()))?;
    let dockerfile = crate::workspace_root().join("infra/agents/Dockerfile");
    fs::copy(&dockerfile, context.join("Dockerfile"))
        .map_err(|e| format!("cannot copy {}: {e}", dockerfile.display()))?;
    // What the build trusts for TLS: the host's bundle, which holds a
    // TLS-inspecting proxy's root when there is one.
    let bundle =
        std::env::var("PADDOCK_BUILD_CA_BUNDLE").unwrap_or_else(|_| "/etc/ssl/certs/ca-certificates.crt".into());
    fs::copy(&bundle, context.join("ca-bundle.crt"))
        .map_err(|e| format!("cannot copy the CA bundle {bundle} (PADDOCK_BUILD_CA_BUNDLE): {e}"))?;
    let mut cmd = Command::new("docker");
    cmd.args(["build", "--quiet", "--tag", image])
        .args(["--build-arg", &format!("base={base}")])
        .args(["--build-arg", &format!("installer={}", agent.installer)])
        .args(["--build-arg", &format!("packages={}", agent.spec()?)])
        .args(["--build-arg", &format!("agent_name={name}")])
        .args(["--build-arg", &format!("agent_version={}", agent.version)]);
    if let Some(python) = &agent.resolve_python {
        cmd.args(["--build-arg", &format!("resolve_python={python}")]);
    }
    for (variable, arg) in [("PADDOCK_NPM_REGISTRY", "npm_registry"), ("PADDOCK_PIP_INDEX_URL", "pip_index_url")] {
        if let Ok(value) = std::env::var(variable) {
            cmd.args(["--build-arg", &format!("{arg}={value}")]);
        }
    }
    cmd.arg(&context).stdout(Stdio::null());
    let result = crate::run(&mut cmd);
    fs::remove_dir_all(&context).ok();
    result
}
