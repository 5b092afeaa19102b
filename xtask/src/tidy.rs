//! The dependency rules of ARCHITECTURE.md ("Architecture Invariant"),
//! checked against `cargo metadata`: what each workspace crate links,
//! directly or through other crates (normal dependencies only; tests and
//! build scripts may use more).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// A crate that must not link any of `forbidden`, and why.
pub struct Rule {
    pub krate: &'static str,
    pub forbidden: &'static [&'static str],
    pub why: &'static str,
}

/// Crates that do I/O: a client or server of the network, Docker or the
/// file formats only a process loads, or a runtime.
const IO_CRATES: &[&str] =
    &["tokio", "redis", "aws-sdk-s3", "bollard", "actix-web", "hyper", "reqwest", "figment", "octocrab", "apalis"];

pub const RULES: &[Rule] = &[
    Rule {
        krate: "api",
        forbidden: &["worker", "sandbox", "gateway"],
        why: "the API accepts and reports runs; it never executes one",
    },
    Rule { krate: "store", forbidden: &["audit-trail"], why: "the trail is written by the callers of the store" },
    Rule { krate: "common", forbidden: IO_CRATES, why: "common is the shared vocabulary, with no I/O" },
    Rule {
        krate: "paddock-cli",
        forbidden: &["store", "redis", "forge", "sandbox", "gateway", "worker", "api", "bollard", "octocrab"],
        why: "the CLI reaches a deployment only through its REST API",
    },
    Rule {
        krate: "gateway",
        forbidden: &["sandbox", "forge"],
        why: "the gateway holds provider keys and must not reach sandboxes or repository credentials",
    },
];

/// Every package's normal dependencies, by name.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The resolved graph and the workspace's own crates, from `cargo metadata`.
pub struct Workspace {
    pub graph: Graph,
    /// Libraries first: ordered by how many workspace crates each links.
    pub members: Vec<String>,
}

pub fn workspace() -> Result<Workspace, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata output: {e}"))?;
    let graph = graph_of(&metadata)?;
    let ids: BTreeSet<&str> =
        metadata["workspace_members"].as_array().into_iter().flatten().filter_map(|id| id.as_str()).collect();
    let mut members: Vec<String> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_str().is_some_and(|id| ids.contains(id)))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let linked = |m: &String| closure(&graph, m).iter().filter(|d| members.contains(d)).count();
    let mut ranked: Vec<(usize, String)> = members.iter().map(|m| (linked(m), m.clone())).collect();
    ranked.sort();
    members = ranked.into_iter().map(|(_, m)| m).collect();
    Ok(Workspace { graph, members })
}

fn graph_of(metadata: &serde_json::Value) -> Result<Graph, String> {
    let name_of: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .ok_or("no packages in cargo metadata")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let nodes = metadata["resolve"]["nodes"].as_array().ok_or("no resolve graph in cargo metadata")?;
    let mut graph = Graph::new();
    for node in nodes {
        let Some(name) = node["id"].as_str().and_then(|id| name_of.get(id)) else { continue };
        let deps = graph.entry((*name).to_owned()).or_default();
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].is_null());
            if let Some(dep_name) = dep["pkg"].as_str().and_then(|id| name_of.get(id))
                && normal
            {
                deps.insert((*dep_name).to_owned());
            }
        }
    }
    Ok(graph)
}

/// Everything `krate` links, directly or not.
pub fn closure(graph: &Graph, krate: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![krate.to_owned()];
    while let Some(next) = todo.pop() {
        for dep in graph.get(&next).into_iter().flatten() {
            if seen.insert(dep.clone()) {
                todo.push(dep.clone());
            }
        }
    }
    seen
}

/// One line per broken rule, naming the path that breaks it.
pub fn violations(graph: &Graph, rules: &[Rule]) -> Vec<String> {
    let mut found = Vec::new();
    for rule in rules {
        if !graph.contains_key(rule.krate) {
            found.push(format!("`{}` is not in the workspace: the rule cannot be checked", rule.krate));
            continue;
        }
        let linked = closure(graph, rule.krate);
        for forbidden in rule.forbidden.iter().filter(|f| linked.contains(**f)) {
            let path = path_to(graph, rule.krate, forbidden).join(" -> ");
            found.push(format!("`{}` must not depend on `{forbidden}` ({}): {path}", rule.krate, rule.why));
        }
    }
    found
}

/// The shortest chain of dependencies from `from` to `to`.
fn path_to(graph: &Graph, from: &str, to: &str) -> Vec<String> {
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([from.to_owned()]);
    while let Some(next) = queue.pop_front() {
        if next == to {
            let mut path = vec![next];
            while let Some(p) = parent.get(path.last().map(String::as_str).unwrap_or_default()) {
                path.push(p.clone());
            }
            path.reverse();
            return path;
        }
        for dep in graph.get(&next).into_iter().flatten() {
            if dep != from && !parent.contains_key(dep) {
                parent.insert(dep.clone(), next.clone());
                queue.push_back(dep.clone());
            }
        }
    }
    vec![from.to_owned(), to.to_owned()]
}

/// The workspace crates and what each depends on inside the workspace, one
/// line per crate (for notes and ARCHITECTURE.md).
pub fn workspace_lines(workspace: &Workspace) -> Vec<String> {
    let Workspace { graph, members } = workspace;
    members
        .iter()
        .map(|m| {
            let deps: Vec<&str> = graph
                .get(m)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .filter(|d| members.contains(&d.to_string()))
                .collect();
            format!("{m} -> {}", if deps.is_empty() { "(none)".to_owned() } else { deps.join(", ") })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)]) -> Graph {
        let mut graph = Graph::new();
        for (from, to) in edges {
            graph.entry((*from).to_owned()).or_default().insert((*to).to_owned());
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    }

    #[test]
    fn the_workspace_keeps_every_architecture_invariant() {
        let workspace = workspace().expect("cargo metadata");
        assert!(workspace.members.first().is_some_and(|m| m == "common"), "{:?}", workspace.members);
        let broken = violations(&workspace.graph, RULES);
        assert!(broken.is_empty(), "ARCHITECTURE.md's invariants are broken:\n{}", broken.join("\n"));
    }

    #[test]
    fn a_dependency_through_another_crate_breaks_a_rule_and_the_path_is_named() {
        let edges =
            [("api", "store"), ("store", "platform"), ("api", "forge"), ("forge", "worker"), ("common", "serde")];
        let broken = violations(&graph(&edges), RULES);
        let through_forge = broken.iter().find(|b| b.contains("`api` must not depend on `worker`"));
        assert!(through_forge.is_some_and(|b| b.ends_with("api -> forge -> worker")), "{broken:?}");
        let io = [("common", "sealed"), ("sealed", "tokio")];
        let broken = violations(&graph(&io), RULES);
        assert!(broken.iter().any(|b| b.contains("`common` must not depend on `tokio`")), "{broken:?}");
        assert!(broken.iter().any(|b| b.contains("`gateway` is not in the workspace")), "a missing crate is reported");
    }

    #[test]
    fn dev_dependencies_do_not_count() {
        let metadata = serde_json::json!({
            "packages": [{"id": "a", "name": "store"}, {"id": "b", "name": "audit-trail"}],
            "resolve": {"nodes": [
                {"id": "a", "deps": [{"pkg": "b", "dep_kinds": [{"kind": "dev"}]}]},
                {"id": "b", "deps": []}
            ]}
        });
        let graph = graph_of(&metadata).expect("a graph");
        assert!(closure(&graph, "store").is_empty());
    }
}
