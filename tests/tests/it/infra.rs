//! The deployment code in `infra/`, checked offline: the Terraform module
//! by checkov (zero failed checks, every skip justified where it is) and
//! by `infra/terraform/check.py` (python-hcl2: no Terraform binary or AWS
//! provider can be downloaded here, so `terraform validate` cannot run),
//! and the Paddock configuration the module writes accepted by Paddock's
//! own loader. The tools are installed by `cargo xtask setup`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `python3` with the checks `cargo xtask setup` installed on its path.
fn python(args: &[&str]) -> (bool, String) {
    let lib = tests::services::home().join("infra-checks/lib");
    assert!(lib.join("checkov").is_dir(), "{} is missing: run `cargo xtask setup`", lib.display());
    let out = Command::new("python3").args(args).env("PYTHONPATH", &lib).current_dir(repo()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn checkov_passes_the_terraform_module_with_every_skip_justified() {
    let (ok, text) = python(&[
        "-m",
        "checkov.main",
        "--directory",
        "infra/terraform",
        "--framework",
        "terraform",
        "--compact",
        "--quiet",
        "--skip-download",
    ]);
    assert!(ok, "checkov found failures:\n{text}");
    let passed: u32 = text
        .split("Passed checks: ")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(passed > 100, "checkov ran its checks: {text}");
    assert!(text.contains("Failed checks: 0,"), "{text}");
    // A skip says why, where it is.
    for entry in std::fs::read_dir(repo().join("infra/terraform/aws")).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for skip in text.lines().filter_map(|l| l.split("checkov:skip=").nth(1)) {
            let reason = skip.split_once(':').map(|(_, r)| r.trim()).unwrap_or_default();
            assert!(reason.len() > 40, "{}: a skip without its reason: {skip}", path.display());
        }
    }
}

#[test]
fn the_terraform_module_is_structurally_sound() {
    let (ok, text) = python(&["infra/terraform/check.py", "infra/terraform"]);
    assert!(ok, "{text}");
    assert!(text.contains(" 0 findings"), "{text}");
}

#[test]
fn the_configuration_the_module_writes_is_one_paddock_accepts() {
    let dir = repo().join("infra/terraform/aws/templates");
    for role in ["api", "worker"] {
        let template = std::fs::read_to_string(dir.join(format!("{role}.toml.tftpl"))).unwrap();
        // As templatefile renders it with the module's defaults.
        let rendered = [
            ("${region}", "eu-west-1"),
            ("${bucket}", "acme-paddock-evidence"),
            ("${audit_prefix}", "audit/v1"),
            ("${export_prefix}", "audit-exports/v1"),
            ("${concurrency}", "6"),
            ("${runtime}", "runsc"),
            ("${retention.artifacts}", "90"),
            ("${retention.logs}", "90"),
            ("${retention.transcripts}", "30"),
            ("${retention.gateway_metadata}", "400"),
            ("${retention.audit}", "400"),
            ("${retention.exports}", "30"),
        ]
        .iter()
        .fold(template, |text, (from, to)| text.replace(from, to));
        assert!(!rendered.contains("${"), "{role}: a template variable the test does not know:\n{rendered}");
        let file = std::env::temp_dir().join(format!("paddock-{role}-{}.toml", ulid::Ulid::new()));
        std::fs::write(&file, &rendered).unwrap();
        let config = platform::config::load(Some(&file), Vec::<(String, String)>::new());
        std::fs::remove_file(&file).ok();
        let config = config.unwrap_or_else(|e| panic!("{role}.toml.tftpl is refused: {e}\n{rendered}"));
        assert_eq!(config.audit.durability, common::config::AuditDurability::Replica, "ElastiCache has no fsync");
        assert!(config.s3.access_key_id.is_empty(), "S3 is signed with the instance role");
        assert_eq!(config.retention.transcripts_days, 30);
    }
}

/// The chart rendered by `$PADDOCK_HOME/bin/helm-render` (Helm's engine and
/// functions, built by `cargo xtask setup`) with `args` on top of its
/// values.
fn render(args: &[&str]) -> String {
    let render = tests::services::home().join("bin/helm-render");
    assert!(render.is_file(), "{} is missing: run `cargo xtask setup`", render.display());
    let out = Command::new(render)
        .args(args)
        .args(["--namespace", "paddock", "paddock", "infra/helm/paddock"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "rendering failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `infra/helm/crd-check.mjs` over `manifests`, beside the schemas
/// `cargo xtask setup` installed.
fn crd_check(manifests: &str) -> (bool, String) {
    let dir = tests::services::home().join("crd-schemas");
    assert!(
        dir.join("node_modules/@kubernetes-models/keda").is_dir(),
        "{} is missing: run `cargo xtask setup`",
        dir.display()
    );
    let id = ulid::Ulid::new();
    let (script, file) = (dir.join(format!("crd-check-{id}.mjs")), dir.join(format!("manifests-{id}.yaml")));
    std::fs::copy(repo().join("infra/helm/crd-check.mjs"), &script).unwrap();
    std::fs::write(&file, manifests).unwrap();
    let out = Command::new("node").arg(&script).arg(&file).output().unwrap();
    std::fs::remove_file(&script).ok();
    std::fs::remove_file(&file).ok();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The Kubernetes version the chart targets (Chart.yaml: >=1.28).
const KUBERNETES: &str = "1.31.0";

#[test]
fn every_manifest_the_chart_renders_is_valid_kubernetes() {
    for (mode, args) in [("node engine", vec![]), ("docker-in-docker", vec!["--set", "worker.docker.mode=dind"])] {
        let manifests = render(&args);
        let file = std::env::temp_dir().join(format!("paddock-chart-{}.yaml", ulid::Ulid::new()));
        std::fs::write(&file, &manifests).unwrap();
        let (ok, text) = python(&["-m", "kubernetes_validate", "-k", KUBERNETES, "--strict", file.to_str().unwrap()]);
        std::fs::remove_file(&file).ok();
        assert!(ok, "{mode}: {text}\n{manifests}");
        let passed = text.lines().filter(|l| l.contains(" passed for resource ")).count();
        let kinds: Vec<&str> = manifests.lines().filter_map(|l| l.strip_prefix("kind: ")).collect();
        // Every built-in kind is checked against its schema by
        // kubernetes-validate; the two custom resources (KEDA's
        // ScaledObject, the Prometheus operator's ServiceMonitor) against
        // their CRDs' schemas.
        let custom = kinds.iter().filter(|k| matches!(**k, "ScaledObject" | "ServiceMonitor")).count();
        assert_eq!(passed, kinds.len() - custom, "{mode}: {text}");
        assert_eq!(custom, 2, "{mode}: {kinds:?}");
        let (ok, text) = crd_check(&manifests);
        assert!(ok, "{mode}: {text}");
        assert!(text.contains("checked 2"), "{mode}: {text}");
        for kind in ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "Service"] {
            assert!(kinds.contains(&kind), "{mode}: no {kind} in {kinds:?}");
        }
        let dind = manifests.contains("privileged: true");
        assert_eq!(dind, mode == "docker-in-docker", "{mode}: only the DinD sidecar is privileged");
        assert_eq!(manifests.contains("hostNetwork: true"), mode == "node engine", "{mode}");
    }
}

#[tokio::test]
async fn the_keda_trigger_reads_a_metric_paddock_really_exports() {
    let manifests = render(&[]);
    let query = manifests
        .lines()
        .find_map(|l| l.trim().strip_prefix("query: "))
        .unwrap_or_else(|| panic!("no KEDA query in:\n{manifests}"));
    let names: Vec<&str> =
        query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("paddock_")).collect();
    assert!(!names.is_empty(), "{query}");
    // The API's /metrics, as Prometheus scrapes it, after a run is queued.
    let app = tests::spawn_app(&[]).await;
    let repo = app.repo(&[("README.md", b"# x\n")]);
    app.create_run(&repo, "queued for the metric").await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in &names {
        assert!(metrics.contains(&format!("# TYPE {name} gauge")), "{name} is not exported:\n{metrics}");
    }
    assert!(names.contains(&"paddock_queue_runs") && names.contains(&"paddock_queue_dispatchable"), "{query}");
    let sample = metrics.lines().find(|l| l.starts_with("paddock_queue_dispatchable{tenant=\"*\"}"));
    let value: f64 = sample
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fleet-wide dispatchable sample:\n{metrics}"));
    assert!(value >= 1.0, "the queued run is dispatchable: {value}");
    assert!(query.contains("paddock_queue_runs{state=\"running\"}"), "running runs are part of the demand: {query}");
}
