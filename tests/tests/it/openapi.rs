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
fn openapi_document_describes_the_run_routes() {
    let doc: serde_json::Value = serde_json::from_str(&api::openapi::document_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in
        [("/v1/runs", "post"), ("/v1/runs", "get"), ("/v1/runs/{id}", "get"), ("/v1/runs/{id}/logs", "get")]
    {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} missing");
        assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{method} {path} is not behind auth");
    }
    assert!(paths["/v1/runs"]["post"]["responses"]["202"].is_object());
}
