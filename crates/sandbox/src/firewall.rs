//! Host firewall rules per sandbox network: from a sandbox subnet the host
//! accepts only the run's open ports (the egress proxy) on its gateway
//! address and rejects everything else: other host ports, other sandboxes'
//! gateways, every other host address. Rejected rather than dropped, so a
//! tool fails at once instead of hanging. Rules live in the `PADDOCK-INPUT`
//! chain, tagged with a comment naming namespace, worker and run, so a
//! janitor can remove the rules of crashed workers; at the chain's end one
//! rule rejects the whole sandbox pool, whatever became of a run's rules.

use tokio::process::Command;

use super::SandboxError;

pub const CHAIN: &str = "PADDOCK-INPUT";

/// One run's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRules {
    pub subnet: String,
    pub gateway: String,
    pub ports: Vec<u16>,
    pub tag: String,
}

impl RunRules {
    fn specs(&self) -> Vec<Vec<String>> {
        let mut specs: Vec<Vec<String>> = self
            .ports
            .iter()
            .map(|port| {
                vec![
                    "-s".into(),
                    self.subnet.clone(),
                    "-d".into(),
                    self.gateway.clone(),
                    "-p".into(),
                    "tcp".into(),
                    "--dport".into(),
                    port.to_string(),
                    "-m".into(),
                    "comment".into(),
                    "--comment".into(),
                    self.tag.clone(),
                    "-j".into(),
                    "ACCEPT".into(),
                ]
            })
            .collect();
        specs.push(vec![
            "-s".into(),
            self.subnet.clone(),
            "-m".into(),
            "comment".into(),
            "--comment".into(),
            self.tag.clone(),
            "-j".into(),
            "REJECT".into(),
        ]);
        specs
    }
}

async fn iptables(args: &[String]) -> Result<String, SandboxError> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
        .map_err(|e| SandboxError::Other(format!("cannot run iptables: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(SandboxError::Other(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn strs(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The rule at the chain's end that rejects the whole sandbox pool: a
/// sandbox whose own rules are gone (its removal failed, a worker crashed
/// between steps) still reaches nothing on the host.
fn pool_rule(pool: &str) -> Vec<String> {
    strs(&["-s", pool, "-m", "comment", "--comment", POOL_TAG, "-j", "REJECT"])
}

/// The catch-all rule's tag (not a run's: janitors leave it alone).
const POOL_TAG: &str = "paddock-sandbox-pool";

/// Creates the chain, the jump from INPUT and the pool's catch-all
/// rejection once; idempotent.
pub async fn ensure_chain(pool: &str) -> Result<(), SandboxError> {
    if iptables(&strs(&["-S", CHAIN])).await.is_err() {
        // Another worker may create it at the same moment.
        let _ = iptables(&strs(&["-N", CHAIN])).await;
    }
    if iptables(&strs(&["-C", "INPUT", "-j", CHAIN])).await.is_err() {
        iptables(&strs(&["-I", "INPUT", "1", "-j", CHAIN])).await?;
    }
    let catch_all = pool_rule(pool);
    let check = [vec!["-C".to_owned(), CHAIN.to_owned()], catch_all.clone()].concat();
    if iptables(&check).await.is_err() {
        iptables(&[vec!["-A".to_owned(), CHAIN.to_owned()], catch_all].concat()).await?;
    }
    Ok(())
}

/// Installs the run's rules at the head of the chain, before the pool's
/// catch-all (accepts first, then the run's rejection).
pub async fn install(rules: &RunRules) -> Result<(), SandboxError> {
    for spec in rules.specs().into_iter().rev() {
        let mut args = vec!["-I".to_owned(), CHAIN.to_owned(), "1".to_owned()];
        args.extend(spec);
        iptables(&args).await?;
    }
    Ok(())
}

/// Removes the run's rules; rules already gone are not an error.
pub async fn remove(rules: &RunRules) {
    for spec in rules.specs() {
        let mut args = vec!["-D".to_owned(), CHAIN.to_owned()];
        args.extend(spec);
        if let Err(error) = iptables(&args).await {
            tracing::debug!(%error, "firewall rule already gone");
        }
    }
}

/// Rules in the chain whose tag starts with `prefix`, as `-D` argument lists.
pub async fn tagged(prefix: &str) -> Result<Vec<(String, Vec<String>)>, SandboxError> {
    let listing = iptables(&strs(&["-S", CHAIN])).await?;
    let mut found = Vec::new();
    for line in listing.lines().filter(|l| l.starts_with("-A ")) {
        let words: Vec<String> = line.split_whitespace().map(|w| w.trim_matches('"').to_owned()).collect();
        let Some(i) = words.iter().position(|w| w == "--comment") else { continue };
        let Some(tag) = words.get(i + 1) else { continue };
        if tag.starts_with(prefix) {
            let mut delete = words.clone();
            delete[0] = "-D".to_owned();
            found.push((tag.clone(), delete));
        }
    }
    Ok(found)
}

/// Deletes one rule given as returned by [`tagged`].
pub async fn delete(args: &[String]) {
    if let Err(error) = iptables(args).await {
        tracing::debug!(%error, "firewall rule already gone");
    }
}
