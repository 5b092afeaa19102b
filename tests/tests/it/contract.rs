//! The API answers exactly as its committed OpenAPI document says:
//! schemathesis (installed by `cargo xtask setup`) fuzzes a live API from
//! `openapi/openapi.json` with every check, valid and invalid requests
//! alike, a bounded number of examples per operation and a fixed seed
//! (timing is not checked: these machines are shared and noisy).

use std::path::Path;

use tests::spawn_app;

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
    response_headers_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance,\
    missing_required_header,unsupported_method,allow_header_conformance,use_after_free,\
    ensure_resource_availability,ignored_auth,object_level_authorization";

#[tokio::test]
async fn a_live_api_answers_every_request_as_the_committed_document_says() {
    let app = spawn_app(&[("PADDOCK_GITHUB__WEBHOOK_SECRET", "contract-test-webhook-secret")]).await;
    let st = tests::services::home().join("bin/st");
    assert!(st.exists(), "{} is missing: run `cargo xtask setup`", st.display());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(root.join("openapi/schemathesis.toml"))
        .arg("run")
        .arg(root.join("openapi/openapi.json"))
        .args(["--url", &app.url(""), "-H", &format!("Authorization: Bearer {}", app.token)])
        // Every check but the response-time limit `all` would add: timings on
        // a shared machine are noise, not a contract.
        .args(["--checks", CHECKS, "--max-examples", "10", "--seed", "1", "--workers", "1"])
        .args(["--continue-on-failure", "--request-timeout", "60", "--max-time", "90", "--no-color"])
        .output()
        .await
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the API and its document disagree:\n{report}\n{errors}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("openapi/openapi.json")).expect("the document")).expect("JSON");
    let operations: usize =
        doc["paths"].as_object().into_iter().flatten().map(|(_, item)| item.as_object().map_or(0, |m| m.len())).sum();
    assert!(
        report.contains(&format!("Tested: {operations}")),
        "not every one of {operations} operations was tested:\n{report}"
    );
}
