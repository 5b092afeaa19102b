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

/// A run-list cursor's shape (whether this API sealed it is known only to it).
pub const CURSOR: Text = Text { pattern: "^[A-Za-z0-9_-]{72}$", check: crate::runs::cursor::shape_ok };

/// A person's email address as `on_behalf_of` and `POST /v1/people` take it.
pub const EMAIL: Text = Text {
    pattern: r"^(?=.{1,254}$)[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?$",
    check: crate::people::email_ok,
};

/// A tenant's repository pattern.
pub const REPO_PATTERN: Text = Text {
    pattern: r"^(\*|(?!.*\*\*)[A-Za-z0-9_.*-]{1,100}/[A-Za-z0-9_.*-]{1,100})$",
    check: |s| s.parse::<common::tenancy::RepoPattern>().is_ok(),
};

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

pub const REPOSITORY: Text = Text {
    pattern: r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}/(?!.*\.git$)[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$",
    check: |s| s.parse::<common::RepoName>().is_ok(),
};

pub const AGENT_PROFILE: Text =
    Text { pattern: "^[a-z0-9_-]{1,64}$", check: |s| s.parse::<common::AgentProfile>().is_ok() };

/// A branch or tag as `git check-ref-format` takes it, nothing that reads
/// as an option (`common::run::validate_ref`).
pub const BASE_REF: Text = Text {
    pattern: r"^(?!-)(?!/)(?!.*(?:\.\.|@\{|//))(?!.*(?:/|\.lock|\.)$)[^\x00-\x1f\x7f ~^:?*\[\\]{1,200}$",
    check: |s| common::run::validate_ref(s).is_ok(),
};

pub const SCOPE: Text = Text {
    pattern: r"^(?:global|tenant:[A-Za-z0-9_-]{1,64}|repo:[A-Za-z0-9_][A-Za-z0-9._-]{0,99}/(?!.*\.git$)[A-Za-z0-9_][A-Za-z0-9._-]{0,99})$",
    check: |s| s.parse::<common::identity::Scope>().is_ok(),
};

pub const SUBJECT: Text = Text {
    pattern: r"^(?:user:[!-~]{1,256}|group:[!-~]{1,256}|service-account:[a-z0-9-]{1,64})$",
    check: |s| s.parse::<common::identity::Subject>().is_ok(),
};

/// A host a sandbox may reach: a name with a dot, or `*.` and one.
pub const EGRESS_HOST: Text = Text {
    pattern: r"^(?:\*\.)?(?=[^*]{1,253}$)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+$",
    check: |s| {
        common::policy::PolicyOverride { egress_allow: Some(vec![s.to_owned()]), ..Default::default() }
            .validate()
            .is_ok()
    },
};

/// Holds a character that is not whitespace as Rust's `str::trim` sees
/// it (Unicode White_Space, which differs from a regex's `\s`).
pub const NON_BLANK: &str = r"[^\t\n\x0B\f\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";

/// Free text a person writes: not blank, at most 1024 characters.
pub const REASON: Chars = Chars { min: 1, max: 1024, non_blank: true };

/// A string's length in characters, and whether it must hold more than
/// whitespace.
pub struct Chars {
    pub min: usize,
    pub max: usize,
    pub non_blank: bool,
}

/// What the document says about one body field.
pub enum Rule {
    Text(&'static Text),
    Chars(Chars),
    /// An integer range.
    Int {
        min: i64,
        max: u64,
    },
    /// A number above `above`, at most `max`.
    Number {
        above: f64,
        max: f64,
    },
    /// A list of at least this many items.
    MinItems(usize),
    /// A list whose items are each this text.
    Items(&'static Text),
}

/// The body fields whose rules the document states: (schema, property,
/// rule); property `""` is the schema itself.
pub fn body_rules() -> Vec<(&'static str, &'static str, Rule)> {
    const MAX_RUNNING: u64 = crate::limits::handlers::MAX_RUNNING as u64;
    let mut rules = vec![
        ("CreateRun", "tenant", Rule::Text(&TENANT)),
        ("CreateRun", "repository", Rule::Text(&REPOSITORY)),
        ("CreateRun", "base_ref", Rule::Text(&BASE_REF)),
        ("CreateRun", "agent_profile", Rule::Text(&AGENT_PROFILE)),
        ("CreateRun", "issue", Rule::Int { min: 1, max: common::RunSpec::MAX_ISSUE }),
        ("CreateRun", "on_behalf_of", Rule::Text(&EMAIL)),
        ("NewPerson", "email", Rule::Text(&EMAIL)),
        ("TenantInput", "repositories", Rule::MinItems(1)),
        ("RepoPattern", "", Rule::Text(&REPO_PATTERN)),
        ("PolicyOverride", "egress_allow", Rule::Items(&EGRESS_HOST)),
        ("TaskInput", "title", Rule::Chars(Chars { min: 1, max: common::RunSpec::MAX_TITLE, non_blank: true })),
        ("TaskInput", "body", Rule::Chars(Chars { min: 0, max: common::RunSpec::MAX_BODY, non_blank: false })),
        ("NewExport", "run", Rule::Text(&RUN_ID)),
        ("NewExport", "since_ms", Rule::Int { min: 0, max: MAX_INSTANT_MS }),
        ("NewExport", "until_ms", Rule::Int { min: 0, max: MAX_INSTANT_MS }),
        ("NewHold", "reason", Rule::Chars(REASON)),
        ("Reason", "reason", Rule::Chars(REASON)),
        ("RevokeRequest", "reason", Rule::Chars(REASON)),
        ("RevokeRequest", "user", Rule::Text(&PERSON)),
        ("NewServiceAccount", "name", Rule::Text(&ACCOUNT_NAME)),
        ("NewServiceAccount", "owner", Rule::Text(&PERSON)),
        ("NewToken", "expires_in_days", Rule::Int { min: 1, max: 365 }),
        ("NewToken", "scopes", Rule::MinItems(1)),
        ("SecretValue", "value", Rule::Chars(Chars { min: 8, max: 4096, non_blank: false })),
        ("TenantLimitsInput", "max_running", Rule::Int { min: 0, max: MAX_RUNNING }),
        ("TenantLimitsInput", "weight", Rule::Number { above: 0.0, max: crate::limits::handlers::MAX_WEIGHT }),
        ("RepoLimitInput", "max_running", Rule::Int { min: 0, max: MAX_RUNNING }),
        ("Scope", "", Rule::Text(&SCOPE)),
        ("Subject", "", Rule::Text(&SUBJECT)),
    ];
    for (field, min, max, _) in common::policy::PolicyOverride::RANGES {
        rules.push(("PolicyOverride", field, Rule::Int { min, max: max as u64 }));
    }
    rules
}

/// Writes the body rules into the document's schemas, and the shapes a
/// plain schema cannot say but a combination can.
pub fn constrain_bodies(doc: &mut serde_json::Value) {
    use serde_json::json;
    let schemas = &mut doc["components"]["schemas"];
    for (schema, property, rule) in body_rules() {
        let target =
            if property.is_empty() { &mut schemas[schema] } else { &mut schemas[schema]["properties"][property] };
        match rule {
            Rule::Text(text) => target["pattern"] = json!(text.pattern),
            Rule::Chars(chars) => {
                target["minLength"] = json!(chars.min);
                target["maxLength"] = json!(chars.max);
                if chars.non_blank {
                    target["pattern"] = json!(NON_BLANK);
                }
            }
            Rule::Int { min, max } => {
                target["minimum"] = json!(min);
                target["maximum"] = json!(max);
            }
            Rule::Number { above, max } => {
                target["exclusiveMinimum"] = json!(above);
                target["maximum"] = json!(max);
            }
            Rule::MinItems(n) => target["minItems"] = json!(n),
            Rule::Items(text) => target["items"]["pattern"] = json!(text.pattern),
        }
    }
    // A hold covers exactly one run or one tenant.
    schemas["HoldTarget"] = json!({
        "description": "What a legal hold covers: one run, or everything of one tenant.",
        "oneOf": [
            {"type": "object", "required": ["run"], "additionalProperties": false,
             "properties": {"run": {"type": "string", "pattern": RUN_ID.pattern}}},
            {"type": "object", "required": ["tenant"], "additionalProperties": false,
             "properties": {"tenant": {"type": "string", "pattern": TENANT.pattern}}}
        ],
        "example": {"run": "01jbd3k6q3x9a7m2c5v8w0z4ty"}
    });
    // Revocation names exactly one of a person and service accounts.
    schemas["RevokeRequest"]["oneOf"] = json!([
        {"required": ["user"], "properties": {"user": {"type": "string"}}},
        {"required": ["service_accounts"], "properties": {"service_accounts": {"type": "string"}}}
    ]);
    // An allowlist means nothing under egress `none` (policies::handlers::validated).
    schemas["PolicyOverride"]["not"] = json!({
        "required": ["egress", "egress_allow"],
        "properties": {"egress": {"const": "none"}, "egress_allow": {"type": "array", "minItems": 1}}
    });
    // Service accounts never approve tools.
    schemas["NewToken"]["properties"]["scopes"]["items"] =
        json!({"allOf": [{"$ref": "#/components/schemas/Permission"}, {"not": {"const": "tools.approve"}}]});
}

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

pub const IDEMPOTENCY_KEY: Text = Text { pattern: "^[!-~]{1,255}$", check: crate::runs::handlers::idempotency_key_ok };

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
    for (path, operation) in crate::openapi::operations_mut(doc) {
        for parameter in operation.parameters.iter_mut().flatten() {
            constrain(path, parameter);
        }
    }
}

fn constrain(path: &str, parameter: &mut Parameter) {
    let name = parameter.name.as_str();
    let schema = match parameter.parameter_in {
        ParameterIn::Path => path_rule(path, name)
            .map(|rule| ObjectBuilder::new().schema_type(Type::String).pattern(Some(rule.pattern)).build()),
        ParameterIn::Header if name == "Idempotency-Key" => {
            Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(IDEMPOTENCY_KEY.pattern)).build())
        }
        ParameterIn::Query if name == "state" => {
            let states = common::RunState::ALL.map(|s| s.as_str());
            Some(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(states)).build())
        }
        ParameterIn::Query if name == "cursor" => {
            Some(ObjectBuilder::new().schema_type(Type::String).pattern(Some(CURSOR.pattern)).build())
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
            "acme/widgets",
            "acme/widgets.git",
            "acme/.x",
            "acme/-x",
            "a/b/c",
            "/x",
            "x/",
            "main",
            "feature/x",
            "release-1.2",
            "x.lock",
            "x.",
            "a..b",
            "a@{b",
            "a@b",
            "a//b",
            "a~b",
            "tag^",
            "a:b",
            "a?b",
            "a*b",
            "a[b",
            "a\\b",
            "emoji😍",
            "ctl\u{1}",
            "global",
            "tenant:payments",
            "tenant:",
            "repo:acme/widgets",
            "repo:acme/widgets.git",
            "user:alice@example.com",
            "user:",
            "group:platform",
            "service-account:portal",
            "service-account:Portal",
            "robot:x",
            "default",
            "mini-swe-agent",
            "Claude",
            "pypi.org",
            "*.corp.example",
            "*.",
            "**.a.b",
            "a.*.b",
            "localhost",
            "a..b.c",
            ".a.b",
            "a.b.",
            "xn--bcher-kva.example",
            "alice@example.com",
            "a.b+tag@sub.example.co",
            "alice@localhost",
            "alice@-x.com",
            "alice@x-.com",
            "alice@x..com",
            "@example.com",
            "a@b@c.com",
            "[x](y)@e.com",
            "*",
            "*/*",
            "acme/*",
            "acme/payments-*",
            "acme/**",
            "*/x",
            "acme",
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
            ("cursor", &CURSOR),
            ("email", &EMAIL),
            ("repository pattern", &REPO_PATTERN),
            ("tenant", &TENANT),
            ("repository part", &REPO_PART),
            ("secret name", &SECRET_NAME),
            ("service account", &ACCOUNT_NAME),
            ("person", &PERSON),
            ("repository", &REPOSITORY),
            ("agent profile", &AGENT_PROFILE),
            ("base ref", &BASE_REF),
            ("scope", &SCOPE),
            ("subject", &SUBJECT),
            ("idempotency key", &IDEMPOTENCY_KEY),
            ("egress host", &EGRESS_HOST),
        ];
        let mut corpus = corpus();
        for n in [199, 200, 201] {
            corpus.push(format!("feature/{}", "x".repeat(n - 8)));
        }
        for (what, rule) in rules {
            let pattern = fancy_regex::Regex::new(rule.pattern).expect("a valid pattern");
            for sample in &corpus {
                let documented = pattern.is_match(sample).expect("the pattern runs");
                assert_eq!(documented, (rule.check)(sample), "{what}: {sample:?} (pattern {})", rule.pattern);
            }
        }
    }

    #[test]
    fn not_blank_means_what_trim_means() {
        let pattern = fancy_regex::Regex::new(NON_BLANK).expect("a valid pattern");
        let spaces = [
            "\t", "\n", "\u{b}", "\u{c}", "\r", " ", "\u{85}", "\u{a0}", "\u{1680}", "\u{2007}", "\u{2028}", "\u{3000}",
        ];
        for sample in
            spaces.iter().map(|s| s.to_string()).chain(["x".into(), " x ".into(), "\u{feff}".into(), "".into()])
        {
            let documented = pattern.is_match(&sample).expect("the pattern runs");
            assert_eq!(documented, !sample.trim().is_empty(), "{sample:?}");
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
