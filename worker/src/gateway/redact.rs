//! Secret redaction: first an exact match of every secret Paddock knows
//! (provider keys, run tokens, storage keys, configured secrets), then
//! prefix-anchored rules for well-known credential formats. The rules are
//! written for Paddock after the formats documented by gitleaks (MIT);
//! credit to its authors for cataloguing them.
//!
//! A match becomes `[REDACTED:<rule>:<hmac>]`, where the short HMAC of the
//! secret lets an auditor tell two redactions of the same secret apart
//! without learning it.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::Sha256;

/// Compiled once per worker (rules) and per run (known secrets).
pub struct Redactor {
    known: Option<AhoCorasick>,
    rules: &'static [Rule],
    /// Too prone to false positives to replace: counted, left in place.
    flag_only: &'static [Rule],
    key: Vec<u8>,
}

/// What a redaction pass found, by rule (flag-only rules as `flagged:<rule>`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redactions(pub BTreeMap<&'static str, u32>);

impl Redactions {
    pub fn total(&self) -> u32 {
        self.0.values().sum()
    }
}

const RULES: &[(&str, &str)] = &[
    (
        "private-key",
        r"(?s)-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----.{0,8192}?-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----",
    ),
    ("aws-access-key-id", r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b"),
    ("github-token", r"\b(?:ghp|gho|ghu|ghs|ghr)_[0-9A-Za-z]{36,255}\b"),
    ("github-fine-grained-pat", r"\bgithub_pat_[0-9A-Za-z_]{82}\b"),
    ("gitlab-token", r"\bglpat-[0-9A-Za-z_-]{20,}\b"),
    ("slack-token", r"\bxox[abeprs]-[0-9A-Za-z-]{10,}"),
    ("anthropic-api-key", r"\bsk-ant-(?:api|admin)[0-9]{2}-[0-9A-Za-z_-]{20,}"),
    ("openai-api-key", r"\bsk-(?:proj-|svcacct-|admin-)?[0-9A-Za-z_-]{20,}T3BlbkFJ[0-9A-Za-z_-]{20,}"),
    ("gcp-api-key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
    ("azure-client-secret", r"\b[0-9A-Za-z_~.]{3}\dQ~[0-9A-Za-z_~.-]{31,34}\b"),
    ("paddock-run-token", r"\bpdk_run_[0-9A-Za-z_-]{20,}"),
];

const FLAG_ONLY: &[(&str, &str)] = &[
    ("flagged:jwt", r"(?-u:\b)ey[0-9A-Za-z]{17}[0-9A-Za-z]*\.ey[0-9A-Za-z/_-]{17}"),
    (
        "flagged:generic-api-key",
        r#"(?i-u)\b(?:api[_-]?key|secret|token|passw(?:or)?d|access[_-]?key|auth[_-]?token|credentials?|authorization)\b\s*[:=]\s*["']?[\w.=-]{10}"#,
    ),
];

/// A named, compiled rule.
type Rule = (&'static str, Regex);

/// The rules, compiled once per process: a redactor is built per run and
/// per stored log, and only its known secrets differ.
fn compiled_rules() -> (&'static [Rule], &'static [Rule]) {
    static COMPILED: OnceLock<(Vec<Rule>, Vec<Rule>)> = OnceLock::new();
    let (rules, flag_only) = COMPILED.get_or_init(|| {
        let compile = |set: &[(&'static str, &str)]| {
            set.iter().map(|(name, re)| (*name, Regex::new(re).expect("rules are valid"))).collect()
        };
        (compile(RULES), compile(FLAG_ONLY))
    });
    (rules, flag_only)
}

impl Redactor {
    /// `known` are the exact secrets of this context; empty ones are ignored.
    pub fn new(known: &[String], hmac_key: &[u8]) -> Self {
        let known: Vec<&String> = known.iter().filter(|s| s.len() >= 8).collect();
        let known = (!known.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&known)
                .expect("literal patterns always build")
        });
        let (rules, flag_only) = compiled_rules();
        Self { known, rules, flag_only, key: hmac_key.to_vec() }
    }

    /// The marker for one secret; computed once per distinct secret a pass.
    fn marker(&self, memo: &RefCell<HashMap<String, String>>, rule: &str, secret: &str) -> String {
        if let Some(marker) = memo.borrow().get(secret) {
            return marker.clone();
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(secret.as_bytes());
        let digest = mac.finalize().into_bytes();
        let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let marker = format!("[REDACTED:{rule}:{short}]");
        memo.borrow_mut().insert(secret.to_owned(), marker.clone());
        marker
    }

    /// Returns `text` with every secret replaced, and the counts.
    pub fn redact(&self, text: &str) -> (String, Redactions) {
        let memo = RefCell::new(HashMap::new());
        let mut counts = Redactions::default();
        let mut out = match &self.known {
            Some(ac) => {
                let mut result = String::with_capacity(text.len());
                let mut last = 0;
                for m in ac.find_iter(text) {
                    result.push_str(&text[last..m.start()]);
                    result.push_str(&self.marker(&memo, "known-secret", &text[m.start()..m.end()]));
                    *counts.0.entry("known-secret").or_default() += 1;
                    last = m.end();
                }
                result.push_str(&text[last..]);
                result
            }
            None => text.to_owned(),
        };
        for (name, re) in self.rules {
            // Each rule starts with a literal, so this check is a fast scan.
            if !re.is_match(&out) {
                continue;
            }
            let mut n = 0;
            out = re
                .replace_all(&out, |caps: &regex::Captures<'_>| {
                    n += 1;
                    self.marker(&memo, name, &caps[0])
                })
                .into_owned();
            if n > 0 {
                *counts.0.entry(name).or_default() += n;
            }
        }
        for (name, re) in self.flag_only {
            let n = re.find_iter(&out).count() as u32;
            if n > 0 {
                *counts.0.entry(name).or_default() += n;
            }
        }
        (out, counts)
    }
}

/// One credential-shaped sample per replacing rule, by rule name, for tests
/// and benchmarks; built at run time so no secret scanner flags the source.
pub fn canaries() -> Vec<(&'static str, String)> {
    let a = |s: &str, n: usize| s.repeat(n);
    vec![
        ("aws-access-key-id", format!("AKIA{}", a("Q", 16))),
        ("github-token", format!("ghs_{}", a("x1", 18))),
        ("github-fine-grained-pat", format!("github_pat_{}", a("a", 82))),
        ("gitlab-token", format!("glpat-{}", a("z", 20))),
        ("slack-token", format!("xoxb-{}-{}", a("1", 12), a("b", 24))),
        ("anthropic-api-key", format!("sk-ant-api03-{}", a("k", 40))),
        ("openai-api-key", format!("sk-proj-{}T3BlbkFJ{}", a("o", 30), a("p", 30))),
        ("gcp-api-key", format!("AIza{}", a("g", 35))),
        ("azure-client-secret", format!("abc1Q~{}", a("d", 32))),
        ("private-key", format!("-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----", a("M", 64))),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_redacted_and_counted() {
        let r = Redactor::new(&[], b"k");
        for (rule, secret) in canaries() {
            let (out, counts) = r.redact(&format!("before {secret} after"));
            assert!(!out.contains(&secret), "{rule} leaked: {out}");
            assert!(out.starts_with("before [REDACTED:") && out.ends_with(" after"), "{out}");
            assert_eq!(counts.0.get(rule), Some(&1), "{rule}: {counts:?}");
        }
    }

    #[test]
    fn jwts_and_generic_keys_are_flagged_not_replaced() {
        let r = Redactor::new(&[], b"k");
        let jwt = format!("ey{}.ey{}.{}", "J".repeat(20), "p".repeat(20), "s".repeat(12));
        let text = format!("Authorization: {jwt}\nconfig: api_key = \"{}\"", "v".repeat(16));
        let (out, counts) = r.redact(&text);
        assert_eq!(out, text, "flag-only rules must not change the text");
        assert_eq!(counts.0.get("flagged:jwt"), Some(&1));
        // Both the `Authorization:` line and the `api_key =` line look like keys.
        assert_eq!(counts.0.get("flagged:generic-api-key"), Some(&2));
    }

    #[test]
    fn known_secrets_are_redacted_exactly_and_the_marker_is_stable() {
        let r = Redactor::new(&["s3cr3t-value-123".to_owned()], b"k");
        let (out, counts) = r.redact("a s3cr3t-value-123 b s3cr3t-value-123");
        assert!(!out.contains("s3cr3t-value-123"));
        assert_eq!(counts.total(), 2);
        let markers: Vec<&str> = out.split_whitespace().filter(|w| w.starts_with("[REDACTED")).collect();
        assert_eq!(markers.len(), 2);
        assert_eq!(markers[0], markers[1], "the same secret gets the same marker");
        assert_eq!(r.redact("nothing here").0, "nothing here");
    }
}
