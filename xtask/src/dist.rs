//! `cargo xtask dist`: release binaries and a Debian package per role,
//! from `infra/packaging/` (systemd units, config files, maintainer
//! scripts). Packages are built with `dpkg-deb` into `<target>/<profile>/dist/`;
//! with `--images`, also a container image per role (`infra/container/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Result, run};

/// One package: its name, the binary it installs (built name → installed
/// name), its unit, its config files, what it depends on and what it says.
struct Package {
    name: &'static str,
    binary: (&'static str, &'static str),
    /// The role's unit and config (`None` for the command line).
    role: Option<&'static str>,
    depends: &'static str,
    summary: &'static str,
    description: &'static str,
    /// Extra shell for `postinst configure`.
    postinst: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "paddock-api",
        binary: ("api", "paddock-api"),
        role: Some("api"),
        depends: "adduser, ca-certificates, init-system-helpers",
        summary: "Paddock API: run requests, identity, policy and audit",
        description: "The REST API (OpenAPI-documented, RBAC) that accepts runs from people, service\naccounts and GitHub webhooks into Redis, and serves their records, audit\ntrail and exports. Stateless: run several behind a load balancer.",
        postinst: "",
    },
    Package {
        name: "paddock-worker",
        binary: ("worker", "paddock-worker"),
        role: Some("worker"),
        // openssh-client: ssh-keygen signs commits (github.commit_signing_key_file).
        depends: "adduser, ca-certificates, init-system-helpers, git, iptables, openssh-client, docker.io | docker-ce",
        summary: "Paddock worker: runs coding agents in hardened Docker sandboxes",
        description: "Claims runs from Redis, starts each in a capped, network-restricted Docker\nsandbox with its per-run model gateway and egress proxy, and pushes a branch\nand a draft pull request. Its user is in the docker group: a worker host is\ntrusted as a Docker host is.",
        postinst: "    # The Docker socket is how the worker starts sandboxes.\n    if getent group docker >/dev/null; then\n        adduser --quiet paddock docker\n    fi",
    },
    Package {
        name: "paddock-gateway",
        binary: ("paddock-gateway", "paddock-gateway"),
        role: Some("gateway"),
        depends: "adduser, ca-certificates, init-system-helpers",
        summary: "Paddock standalone model gateway",
        description: "Holds the model providers' credentials so worker hosts need none: redacts,\nmeters and books every model call of every run relayed to it.",
        postinst: "",
    },
    Package {
        name: "paddock-cli",
        binary: ("paddock", "paddock"),
        role: None,
        depends: "ca-certificates",
        summary: "Paddock command line",
        description: "Submit, watch and cancel runs, read their records and costs, verify and\nexport the audit trail.",
        postinst: "",
    },
];

/// Builds the binaries (release, or the debug build with `--debug`) and
/// the packages; returns the packages' paths.
pub fn build(root: &Path, target: &Path, debug: bool) -> Result<Vec<PathBuf>> {
    let profile = if debug { "debug" } else { "release" };
    let mut args = vec!["build".to_owned()];
    if !debug {
        args.push("--release".to_owned());
    }
    for (package, bin) in
        [("api", "api"), ("worker", "worker"), ("gateway", "paddock-gateway"), ("paddock-cli", "paddock")]
    {
        args.extend(["--package".to_owned(), package.to_owned(), "--bin".to_owned(), bin.to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&mut crate::cargo(&args))?;
    let bin = target.join(profile);
    let out = bin.join("dist");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let version = workspace_version(root)?;
    let mut built = Vec::new();
    for package in PACKAGES {
        built.push(package_one(root, &bin, &out, package, &version)?);
    }
    for deb in &built {
        println!("xtask: {}", deb.display());
    }
    Ok(built)
}

/// `[workspace.package] version` of the root Cargo.toml.
fn workspace_version(root: &Path) -> Result<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).map_err(|e| format!("Cargo.toml: {e}"))?;
    let manifest: toml::Table = toml::from_str(&text).map_err(|e| format!("Cargo.toml: {e}"))?;
    manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| "Cargo.toml has no [workspace.package] version".to_owned())
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn package_one(root: &Path, bin: &Path, out: &Path, package: &Package, version: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let sources = root.join("infra/packaging");
    let tree = out.join(format!("{}.tree", package.name));
    if tree.exists() {
        std::fs::remove_dir_all(&tree).map_err(|e| format!("{}: {e}", tree.display()))?;
    }
    let (built, installed) = package.binary;
    let target = tree.join("usr/bin").join(installed);
    std::fs::create_dir_all(target.parent().unwrap_or(&tree)).map_err(|e| format!("{}: {e}", tree.display()))?;
    std::fs::copy(bin.join(built), &target).map_err(|e| format!("{}: {e}", bin.join(built).display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let mut conffiles = Vec::new();
    let unit = package.role.map(|role| format!("paddock-{role}.service"));
    if let (Some(role), Some(unit)) = (package.role, &unit) {
        write(&tree.join("lib/systemd/system").join(unit), &read(&sources.join("systemd").join(unit))?, 0o644)?;
        for file in [format!("{role}.toml"), format!("{role}.env")] {
            write(&tree.join("etc/paddock").join(&file), &read(&sources.join("etc").join(&file))?, 0o640)?;
            conffiles.push(format!("/etc/paddock/{file}"));
        }
    }
    let docs = tree.join("usr/share/doc").join(package.name);
    write(
        &docs.join("copyright"),
        "Paddock\nSee the project's LICENSE for the terms this software is distributed under.\n",
        0o644,
    )?;
    let debian = tree.join("DEBIAN");
    let size_kib = dir_size(&tree) / 1024 + 1;
    let description: String = package.description.lines().map(|line| format!(" {line}\n")).collect();
    let control = format!(
        "Package: {}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Paddock maintainers <paddock@localhost>\nInstalled-Size: {size_kib}\nDepends: {}\nSection: admin\nPriority: optional\nDescription: {}\n{description}",
        package.name, package.depends, package.summary
    );
    write(&debian.join("control"), &control, 0o644)?;
    if !conffiles.is_empty() {
        write(&debian.join("conffiles"), &(conffiles.join("\n") + "\n"), 0o644)?;
    }
    let fill = |text: String| {
        text.replace("@PACKAGE@", package.name)
            .replace("@UNIT@", unit.as_deref().unwrap_or_default())
            .replace("@CONFIG@", &conffiles.join(" "))
            .replace("@EXTRA@", package.postinst)
    };
    if package.role.is_some() {
        for script in ["postinst", "prerm", "postrm"] {
            write(&debian.join(script), &fill(read(&sources.join("debian").join(script))?), 0o755)?;
        }
    }
    let deb = out.join(format!("{}_{version}_amd64.deb", package.name));
    // xz for what ships; the test suite's debug packages only need to be
    // quick to make.
    let compression: &[&str] = if bin.ends_with("release") { &["-Zxz"] } else { &["-Zgzip", "-z1"] };
    run(Command::new("dpkg-deb").arg("--root-owner-group").args(compression).arg("--build").arg(&tree).arg(&deb))?;
    std::fs::remove_dir_all(&tree).map_err(|e| format!("{}: {e}", tree.display()))?;
    Ok(deb)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A container image per server role, `paddock/<role>:<version>`, from the
/// packages `build` made, on `base` (a Debian 12 image).
pub fn images(root: &Path, target: &Path, debug: bool, base: &str) -> Result<Vec<String>> {
    let out = target.join(if debug { "debug" } else { "release" }).join("dist");
    let version = workspace_version(root)?;
    let mut tags = Vec::new();
    for package in PACKAGES.iter().filter(|p| p.role.is_some()) {
        let role = package.role.unwrap_or_default();
        let context = out.join(format!("{role}.image"));
        std::fs::remove_dir_all(&context).ok();
        std::fs::create_dir_all(&context).map_err(|e| format!("{}: {e}", context.display()))?;
        std::fs::copy(root.join("infra/container/Dockerfile"), context.join("Dockerfile"))
            .map_err(|e| e.to_string())?;
        let deb = out.join(format!("{}_{version}_amd64.deb", package.name));
        std::fs::copy(&deb, context.join("paddock.deb")).map_err(|e| format!("{}: {e}", deb.display()))?;
        // The package's dependencies but the Docker engine (the node's or
        // a sidecar's in a cluster) and the tools systemd units need.
        let deps: Vec<&str> = package
            .depends
            .split(',')
            .map(|d| d.split('|').next().unwrap_or_default().trim())
            .filter(|d| !d.starts_with("docker") && *d != "init-system-helpers" && *d != "adduser")
            .collect();
        let tag = format!("paddock/{role}:{version}");
        run(Command::new("docker")
            .args(["build", "--quiet", "--tag", &tag])
            .args(["--build-arg", &format!("base={base}")])
            .args(["--build-arg", &format!("role={role}")])
            .args(["--build-arg", &format!("deps={}", deps.join(" "))])
            .arg(&context)
            .stdout(std::process::Stdio::null()))?;
        std::fs::remove_dir_all(&context).ok();
        println!("xtask: image {tag}");
        tags.push(tag);
    }
    // The images these replaced (untagged now), so rebuilds do not fill the disk.
    run(Command::new("docker")
        .args(["image", "prune", "--force", "--filter", "label=paddock.dist=1"])
        .stdout(std::process::Stdio::null()))?;
    Ok(tags)
}
