//! The committed OpenAPI document matches the routes.

use std::path::Path;

#[test]
fn openapi_document_is_up_to_date() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = api::openapi::document_json();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date with the routes: run `cargo xtask openapi` and commit the result"
    );
}

#[test]
fn the_readme_carries_the_current_permission_matrix() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let section = format!(
        "<!-- permission-matrix:start -->\n{}<!-- permission-matrix:end -->",
        api::openapi::permission_matrix_markdown()
    );
    assert!(readme.contains(&section), "README.md's permission matrix is out of date: run `cargo xtask openapi`");
}

/// Every operation declares its security: the permissions it needs (as
/// bearer scopes, any one of the listed requirements), the webhook
/// signature, or explicitly none (health probes and the metrics scrape
/// only).
#[test]
fn every_operation_declares_its_security() {
    let doc: serde_json::Value = serde_json::from_str(&api::openapi::document_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let known: Vec<&str> = common::identity::Permission::ALL.iter().map(|p| p.as_str()).collect();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let security = op["security"].as_array().unwrap_or_else(|| panic!("{method} {path} declares no security"));
            assert!(!security.is_empty(), "{method} {path}");
            for requirement in security {
                let requirement = requirement.as_object().unwrap();
                if requirement.is_empty() {
                    assert!(["/healthz", "/readyz", "/metrics"].contains(&path.as_str()), "{method} {path} is open");
                } else if let Some(scopes) = requirement.get("bearer") {
                    let scopes = scopes.as_array().unwrap();
                    assert!(!scopes.is_empty(), "{method} {path} names no permission");
                    assert!(scopes.iter().all(|s| known.contains(&s.as_str().unwrap())), "{method} {path}: {scopes:?}");
                } else {
                    assert_eq!(path, "/v1/webhooks/github", "{method} {path}");
                    assert!(requirement.contains_key("github_signature"));
                }
            }
        }
    }
    assert!(operations >= 30, "{operations}");
}
