//! The redactor as it was before the one-pass scan (a pass per rule over a
//! new `String` each time), kept as the reference the scan must agree with.

use std::cell::RefCell;
use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::Sha256;

use super::{Redactions, known_forms};

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

pub struct Before {
    known: Option<AhoCorasick>,
    canonical: Vec<String>,
    rules: Vec<(&'static str, Regex)>,
    flag_only: Vec<(&'static str, Regex)>,
    key: Vec<u8>,
}

impl Before {
    pub fn new(known: &[String], hmac_key: &[u8]) -> Self {
        let (patterns, canonical) = known_forms(known);
        let known = (!patterns.is_empty())
            .then(|| AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns).unwrap());
        let compile = |set: &[(&'static str, &str)]| set.iter().map(|(n, re)| (*n, Regex::new(re).unwrap())).collect();
        Self { known, canonical, rules: compile(RULES), flag_only: compile(FLAG_ONLY), key: hmac_key.to_vec() }
    }

    fn marker(&self, memo: &RefCell<HashMap<String, String>>, rule: &str, secret: &str) -> String {
        if let Some(marker) = memo.borrow().get(secret) {
            return marker.clone();
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap();
        mac.update(secret.as_bytes());
        let marker = format!("[REDACTED:{rule}:{}]", common::hash::hex(&mac.finalize().into_bytes()[..4]));
        memo.borrow_mut().insert(secret.to_owned(), marker.clone());
        marker
    }

    pub fn redact(&self, text: &str) -> (String, Redactions) {
        let memo = RefCell::new(HashMap::new());
        let mut counts = Redactions::default();
        let mut out = match &self.known {
            Some(ac) => {
                let mut result = String::with_capacity(text.len());
                let mut last = 0;
                for m in ac.find_iter(text) {
                    result.push_str(&text[last..m.start()]);
                    result.push_str(&self.marker(&memo, "known-secret", &self.canonical[m.pattern().as_usize()]));
                    *counts.0.entry("known-secret").or_default() += 1;
                    last = m.end();
                }
                result.push_str(&text[last..]);
                result
            }
            None => text.to_owned(),
        };
        for (name, re) in &self.rules {
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
        for (name, re) in &self.flag_only {
            let n = re.find_iter(&out).count() as u32;
            if n > 0 {
                *counts.0.entry(name).or_default() += n;
            }
        }
        (out, counts)
    }
}
