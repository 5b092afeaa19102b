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
use std::sync::{Arc, OnceLock};

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::Sha256;

/// Compiled once per worker (rules) and per run (known secrets).
pub struct Redactor {
    known: Option<AhoCorasick>,
    /// The secret each pattern of `known` is a form of (itself, or its
    /// JSON-escaped or URL-encoded form), so every form gets one marker.
    canonical: Vec<String>,
    rules: &'static [Rule],
    /// Too prone to false positives to replace: counted, left in place.
    flag_only: &'static [Rule],
    key: Vec<u8>,
    /// The longest known secret that contains a stream delimiter: a stream
    /// always carries over at least this much.
    hold: usize,
    /// The longest known secret that spans lines.
    hold_lines: usize,
}

/// What a redaction pass found, by rule (flag-only rules as `flagged:<rule>`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Redactions(pub BTreeMap<&'static str, u32>);

impl Redactions {
    pub fn total(&self) -> u32 {
        self.0.values().sum()
    }

    pub fn add(&mut self, other: &Redactions) {
        for (rule, n) in &other.0 {
            *self.0.entry(rule).or_default() += n;
        }
    }
}

/// Redacts a response as it streams. A chunk is passed on up to its last
/// delimiter that no credential format contains (`"`, `,` or an SSE event's
/// blank line); the rest is carried over to the next chunk, so a secret
/// split between chunks is still whole when it is scanned. An SSE event is
/// therefore never held back once it is complete.
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    pending: Vec<u8>,
    counts: Redactions,
}

/// The most a stream carries over without a delimiter before it is cut.
const MAX_CARRY: usize = 256 << 10;

impl StreamRedactor {
    pub fn new(redactor: Arc<Redactor>) -> Self {
        Self { redactor, pending: Vec::new(), counts: Redactions::default() }
    }

    /// What of the stream so far can be passed on, redacted.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let limit = self.pending.len().saturating_sub(self.redactor.hold);
        let mut cut = if self.pending.len() > MAX_CARRY { limit } else { last_delimiter_end(&self.pending[..limit]) };
        while cut > 0 && cut < self.pending.len() && (self.pending[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        if cut == 0 {
            return Bytes::new();
        }
        let rest = self.pending.split_off(cut);
        let head = std::mem::replace(&mut self.pending, rest);
        self.scrub(&head)
    }

    /// The rest of the stream, at its end.
    pub fn finish(&mut self) -> Bytes {
        let head = std::mem::take(&mut self.pending);
        self.scrub(&head)
    }

    pub fn counts(&self) -> &Redactions {
        &self.counts
    }

    fn scrub(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.is_empty() {
            return Bytes::new();
        }
        let (out, counts) = self.redactor.redact(&String::from_utf8_lossy(bytes));
        self.counts.add(&counts);
        Bytes::from(out)
    }
}

/// `secret` as it is written, JSON-escaped, and URL-encoded (upper- and
/// lowercase hex, `+` or `%20` for a space).
fn encodings(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json[1..json.len().saturating_sub(1).max(1)].to_owned();
    let percent = |upper: bool, plus: bool| {
        secret
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                b' ' if plus => "+".to_owned(),
                _ if upper => format!("%{b:02X}"),
                _ => format!("%{b:02x}"),
            })
            .collect::<String>()
    };
    vec![secret.to_owned(), json, percent(true, false), percent(false, false), percent(true, true)]
}

fn last_delimiter_end(bytes: &[u8]) -> usize {
    let quote = bytes.iter().rposition(|b| matches!(b, b'"' | b',')).map_or(0, |i| i + 1);
    let blank = bytes.windows(2).rposition(|w| w == b"\n\n").map_or(0, |i| i + 2);
    quote.max(blank)
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
    /// Each secret is also matched JSON-escaped and URL-encoded, as it
    /// appears inside a request body or a query string.
    pub fn new(known: &[String], hmac_key: &[u8]) -> Self {
        let mut patterns: Vec<String> = Vec::new();
        let mut canonical = Vec::new();
        for secret in known.iter().filter(|s| s.len() >= 8) {
            for form in encodings(secret) {
                if !patterns.contains(&form) {
                    patterns.push(form);
                    canonical.push(secret.clone());
                }
            }
        }
        let longest = |delimiters: &[char]| {
            patterns.iter().filter(|s| s.contains(delimiters)).map(|s| s.len()).max().unwrap_or(0)
        };
        let (hold, hold_lines) = (longest(&['"', ',']), longest(&['\n']));
        let known = (!patterns.is_empty()).then(|| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .expect("literal patterns always build")
        });
        let (rules, flag_only) = compiled_rules();
        Self { known, canonical, rules, flag_only, key: hmac_key.to_vec(), hold, hold_lines }
    }

    /// How much text a line-by-line stream must hold back so that no known
    /// secret spanning lines is cut in two.
    pub fn hold_across_lines(&self) -> usize {
        self.hold_lines
    }

    /// The marker for one secret; computed once per distinct secret a pass.
    fn marker(&self, memo: &RefCell<HashMap<String, String>>, rule: &str, secret: &str) -> String {
        if let Some(marker) = memo.borrow().get(secret) {
            return marker.clone();
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(secret.as_bytes());
        let digest = mac.finalize().into_bytes();
        let short = common::hash::hex(&digest[..4]);
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
                    result.push_str(&self.marker(&memo, "known-secret", &self.canonical[m.pattern().as_usize()]));
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
    fn a_stream_is_redacted_even_when_secrets_straddle_chunks() {
        let r = Arc::new(Redactor::new(&["known,secret-value".to_owned()], b"k"));
        let events: String = canaries()
            .iter()
            .map(|(_, secret)| format!("data: {}\n\n", serde_json::json!({"delta": {"content": secret}})))
            .chain(std::iter::once("data: {\"x\": \"known,secret-value\"}\n\n".to_owned()))
            .collect();
        for size in [1, 3, 7, 64, 1000] {
            let mut stream = StreamRedactor::new(r.clone());
            let mut out = Vec::new();
            for chunk in events.as_bytes().chunks(size) {
                out.extend_from_slice(&stream.push(chunk));
            }
            out.extend_from_slice(&stream.finish());
            let out = String::from_utf8(out).unwrap();
            for (rule, secret) in canaries() {
                let escaped = serde_json::to_string(&secret).unwrap();
                assert!(!out.contains(escaped.trim_matches('"')), "{rule} leaked with {size}-byte chunks: {out}");
            }
            assert!(!out.contains("known,secret-value"), "{out}");
            assert_eq!(stream.counts().total(), canaries().len() as u32 + 1, "{size}: {:?}", stream.counts());
            assert_eq!(out.matches("\n\n").count(), canaries().len() + 1, "events stay whole");
        }
    }

    #[test]
    fn a_complete_event_is_passed_on_at_once() {
        let mut stream = StreamRedactor::new(Arc::new(Redactor::new(&[], b"k")));
        let event = "event: x\ndata: {\"a\": 1}\n\n";
        assert_eq!(&stream.push(event.as_bytes())[..], event.as_bytes());
        assert!(stream.push(b"data: {\"b\"").len() < 14, "an incomplete event is held back");
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
    fn known_secrets_are_redacted_in_their_json_and_url_forms_with_one_marker() {
        let secret = r#"s3cr3t/"quoted" value+x"#;
        let r = Redactor::new(&[secret.to_owned()], b"k");
        let forms = [
            secret.to_owned(),
            r#"s3cr3t/\"quoted\" value+x"#.to_owned(),
            "s3cr3t%2F%22quoted%22%20value%2Bx".to_owned(),
            "s3cr3t%2f%22quoted%22%20value%2bx".to_owned(),
            "s3cr3t%2F%22quoted%22+value%2Bx".to_owned(),
        ];
        let mut markers = Vec::new();
        for form in &forms {
            let (out, counts) = r.redact(&format!("<{form}>"));
            assert!(out.starts_with("<[REDACTED:known-secret:") && out.ends_with("]>"), "{form}: {out}");
            assert_eq!(counts.total(), 1, "{form}");
            markers.push(out);
        }
        assert!(markers.windows(2).all(|w| w[0] == w[1]), "one secret, one marker: {markers:?}");
        let body = serde_json::json!({"messages": [{"content": format!("the key is {secret}")}]}).to_string();
        assert!(!r.redact(&body).0.contains("quoted"), "inside a JSON body");
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
