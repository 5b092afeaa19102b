//! What the OpenAPI document says about each path and query parameter,
//! from the rules that check them. Each `Text` rule pairs the documented
//! pattern with the validator the API runs; a test feeds both the same
//! corpus of names and ids and fails when they disagree, so the document
//! cannot drift from the checks.

use utoipa::openapi::path::{Parameter, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, RefOr, Schema};

/// A string input: the pattern the document gives it and the check the API
/// applies.
pub struct Text {
    pub pattern: &'static str,
    pub check: fn(&str) -> bool,
}

pub const RUN_ID: Text =
    Text { pattern: "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$", check: |s| s.parse::<common::RunId>().is_ok() };

pub const TENANT: Text = Text { pattern: "^[A-Za-z0-9_-]{1,64}$", check: |s| common::validate_tenant(s).is_ok() };

/// One part of `owner/name` (the name also may not end in `.git`, which
/// the document does not say).
pub const REPO_PART: Text = Text {
    pattern: "^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$",
    check: |s| format!("{s}/x").parse::<common::RepoName>().is_ok(),
};

pub const SECRET_NAME: Text =
    Text { pattern: "^[A-Za-z0-9._-]{1,64}$", check: |s| crate::secrets::handlers::validate_name(s).is_ok() };

pub const ACCOUNT_NAME: Text =
    Text { pattern: "^[a-z0-9-]{1,64}$", check: |s| common::identity::validate_account_name(s).is_ok() };

pub const PERSON: Text =
    Text { pattern: "^[!-~]{1,256}$", check: |s| crate::identity::revoke::person_ok(s, "user").is_ok() };

/// The latest instant the API takes, in ms since the epoch: the end of the
/// year 9999.
pub const MAX_INSTANT_MS: u64 = 253_402_300_799_999;

/// `value` of the instant `field`, refused beyond [`MAX_INSTANT_MS`].
pub fn instant(field: &str, value: Option<u64>) -> Result<Option<u64>, crate::problem::Problem> {
    match value {
        Some(ms) if ms > MAX_INSTANT_MS => Err(crate::problem::Problem::bad_request(format!(
            "`{field}` must be at most {MAX_INSTANT_MS} (ms since the epoch)"
        ))
        .field(field)),
        _ => Ok(value),
    }
}

/// The rule of path parameter `name` on `path`, if it has one.
fn path_rule(path: &str, name: &str) -> Option<&'static Text> {
    match name {
        "id" if path.starts_with("/v1/runs/") => Some(&RUN_ID),
        "tenant" => Some(&TENANT),
        "owner" => Some(&REPO_PART),
        "name" if path.contains("/repositories/") => Some(&REPO_PART),
        "name" if path.contains("/secrets/") => Some(&SECRET_NAME),
        "name" if path.starts_with("/v1/service-accounts/") => Some(&ACCOUNT_NAME),
        "user" => Some(&PERSON),
        _ => None,
    }
}

/// Bounds of an integer query parameter: `limit` per listing, and the
/// instants (ms since the epoch), which the API reads as `i64`-sized.
fn query_bounds(path: &str, name: &str) -> Option<(f64, f64)> {
    match (path, name) {
        ("/v1/runs", "limit") => Some((1.0, crate::runs::handlers::MAX_PAGE as f64)),
        ("/v1/audit/events", "limit") => Some((1.0, crate::audit::handlers::MAX_EVENTS as f64)),
        (_, "since_ms" | "until_ms") => Some((0.0, MAX_INSTANT_MS as f64)),
        _ => None,
    }
}

/// Writes the rules into every operation's parameters.
pub fn constrain_parameters(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                constrain(path, parameter);
            }
        }
    }
}

fn constrain(path: &str, parameter: &mut Parameter) {
    let name = parameter.name.as_str();
    let schema = match parameter.parameter_in {
        ParameterIn::Path => path_rule(path, name)
            .map(|rule| ObjectBuilder::new().schema_type(Type::String).pattern(Some(rule.pattern)).build()),
        ParameterIn::Query if name == "state" => {
            let states = common::RunState::ALL.map(|s| s.as_str());
            Some(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(states)).build())
        }
        ParameterIn::Query if name == "cursor" => {
            Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(RUN_ID.pattern)).build())
        }
        ParameterIn::Query => query_bounds(path, name).map(|(min, max)| {
            let bounded = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(min)).maximum(Some(max));
            bounded.build()
        }),
        _ => None,
    };
    if let Some(schema) = schema {
        parameter.schema = Some(RefOr::T(Schema::Object(schema)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names and ids at and around every rule's edges.
    fn corpus() -> Vec<String> {
        let mut corpus: Vec<String> = [
            "",
            "a",
            "A",
            "0",
            "z9",
            "payments",
            "team-a_1",
            "acme.io",
            ".hidden",
            "-dash",
            "_under",
            "a b",
            "a/b",
            "x.git",
            "ümlaut",
            "tab\t",
            "semi;colon",
            "user@example.com",
            "Mixed-Case",
            "UPPER",
            "with~tilde",
            "01jbd3k6q3x9a7m2c5v8w0z4ty",
            "01JBD3K6Q3X9A7M2C5V8W0Z4TY",
            "81jbd3k6q3x9a7m2c5v8w0z4ty",
            "01jbd3k6q3x9a7m2c5v8w0z4tu",
            "01jbd3k6q3x9a7m2c5v8w0z4t",
            "01jbd3k6q3x9a7m2c5v8w0z4tyy",
        ]
        .map(str::to_owned)
        .to_vec();
        for n in [63, 64, 65, 99, 100, 101, 255, 256, 257] {
            corpus.push("a".repeat(n));
            corpus.push(format!("a{}", "-".repeat(n - 1)));
        }
        corpus
    }

    #[test]
    fn every_documented_pattern_accepts_exactly_what_its_validator_accepts() {
        let rules = [
            ("run id", &RUN_ID),
            ("tenant", &TENANT),
            ("repository part", &REPO_PART),
            ("secret name", &SECRET_NAME),
            ("service account", &ACCOUNT_NAME),
            ("person", &PERSON),
        ];
        for (what, rule) in rules {
            let pattern = regex::Regex::new(rule.pattern).expect("a valid pattern");
            for sample in corpus() {
                let documented = pattern.is_match(&sample);
                assert_eq!(documented, (rule.check)(&sample), "{what}: {sample:?} (pattern {})", rule.pattern);
            }
        }
    }

    #[test]
    fn path_and_query_parameters_get_their_rules() {
        let doc = crate::openapi::document();
        let json = serde_json::to_value(&doc).expect("json");
        let param = |path: &str, method: &str, name: &str| {
            json["paths"][path][method]["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
                .unwrap_or_default()
        };
        assert_eq!(param("/v1/runs/{id}", "get", "id")["schema"]["pattern"], RUN_ID.pattern);
        assert_eq!(
            param("/v1/tenants/{tenant}/secrets/{name}", "put", "name")["schema"]["pattern"],
            SECRET_NAME.pattern
        );
        assert_eq!(param("/v1/runs", "get", "limit")["schema"]["maximum"], 100);
        assert_eq!(param("/v1/runs", "get", "state")["schema"]["enum"][0], "awaiting_approval");
    }
}
