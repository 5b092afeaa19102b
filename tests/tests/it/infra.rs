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
