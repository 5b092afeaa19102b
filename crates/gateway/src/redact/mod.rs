//! Secret redaction in one pass over the bytes: an exact match of every
//! secret Paddock knows (provider keys, run tokens, storage keys, configured
//! secrets), and rules for well-known credential formats. The rules are
//! written for Paddock after the formats documented by gitleaks (MIT);
//! credit to its authors for cataloguing them.
//!
//! A match becomes `[REDACTED:<rule>:<hmac>]`, where the short HMAC of the
//! secret lets an auditor tell two redactions of the same secret apart
//! without learning it.
//!
//! How it stays fast: the text is scanned by literal automata only (Teddy,
//! many GB/s): the known secrets, one anchor literal per rule (`AKIA`,
//! `ghs_`, `-----BEGIN`, ...) and the generic-key keywords. A rule's regex
//! runs, anchored, only where its literal was found; matches are resolved
//! by priority (known secrets, then the rules in order, as the sequential
//! passes this replaced did); the output is written once, and when nothing
//! matched the input itself is returned.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use aho_corasick::{AhoCorasick, MatchKind, packed};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use regex_automata::dfa::{Automaton, StartKind, dense};
use regex_automata::{Anchored, Input};
use sha2::Sha256;

#[cfg(test)]
mod before;

/// Compiled once per worker (rules) and per run (known secrets).
pub struct Redactor {
    known: Option<Literals>,
    /// The secret each pattern of `known` is a form of (itself, or its
    /// JSON-escaped or URL-encoded form), so every form gets one marker.
    canonical: Vec<String>,
    rules: &'static Rules,
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
        let (out, counts) = self.redactor.redact_bytes(bytes);
        self.counts.add(&counts);
        Bytes::from(out.into_owned())
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

/// Every form of each secret (8 bytes or longer), and the secret each
/// form is of.
fn known_forms(known: &[String]) -> (Vec<String>, Vec<String>) {
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
    (patterns, canonical)
}

fn last_delimiter_end(bytes: &[u8]) -> usize {
    let quote = bytes.iter().rposition(|b| matches!(b, b'"' | b',')).map_or(0, |i| i + 1);
    let blank = bytes.windows(2).rposition(|w| w == b"\n\n").map_or(0, |i| i + 2);
    quote.max(blank)
}

/// A credential format: the literals that start a look at it, where its
/// match begins relative to a literal, and the regex that decides.
struct RuleDef {
    name: &'static str,
    /// Replaced, or only counted (too prone to false positives to replace).
    replace: bool,
    anchors: &'static [&'static str],
    /// Where the match begins, from where its literal was found.
    back: Back,
    /// The match must begin at a word boundary: checked before the regex
    /// runs, since most literals sit inside ordinary words.
    boundary: bool,
    regex: &'static str,
}

#[derive(Clone, Copy)]
enum Back {
    /// At the literal.
    None,
    /// This many bytes before it.
    Bytes(usize),
    /// Where the run of ASCII letters and digits that ends at the literal
    /// begins: a match can begin only there, at a word boundary.
    Alphanumerics,
}

/// In priority order: where two matches overlap, the earlier rule wins.
/// ASCII word boundaries and classes throughout, so non-ASCII text never
/// slows the scan down.
const RULES: &[RuleDef] = &[
    RuleDef {
        name: "private-key",
        replace: true,
        anchors: &["-----BEGIN"],
        back: Back::None,
        boundary: false,
        // The block's end is found by `private_key_end`.
        regex: r"(?-u)-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----",
    },
    RuleDef {
        name: "aws-access-key-id",
        replace: true,
        anchors: &["AKIA", "ASIA", "ABIA", "ACCA", "A3T"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}\b",
    },
    RuleDef {
        name: "github-token",
        replace: true,
        anchors: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\b(?:ghp|gho|ghu|ghs|ghr)_[0-9A-Za-z]{36,255}\b",
    },
    RuleDef {
        name: "github-fine-grained-pat",
        replace: true,
        anchors: &["github_pat_"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\bgithub_pat_[0-9A-Za-z_]{82}\b",
    },
    RuleDef {
        name: "gitlab-token",
        replace: true,
        anchors: &["glpat-"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\bglpat-[0-9A-Za-z_-]{20,}\b",
    },
    RuleDef {
        name: "slack-token",
        replace: true,
        anchors: &["xox"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\bxox[abeprs]-[0-9A-Za-z-]{10,}",
    },
    RuleDef {
        name: "anthropic-api-key",
        replace: true,
        anchors: &["sk-"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\bsk-ant-(?:api|admin)[0-9]{2}-[0-9A-Za-z_-]{20,}",
    },
    RuleDef {
        name: "openai-api-key",
        replace: true,
        anchors: &["sk-"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\bsk-(?:proj-|svcacct-|admin-)?[0-9A-Za-z_-]{20,}T3BlbkFJ[0-9A-Za-z_-]{20,}",
    },
    RuleDef {
        name: "gcp-api-key",
        replace: true,
        anchors: &["AIza"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\bAIza[0-9A-Za-z_-]{35}\b",
    },
    RuleDef {
        name: "azure-client-secret",
        replace: true,
        anchors: &["0Q~", "1Q~", "2Q~", "3Q~", "4Q~", "5Q~", "6Q~", "7Q~", "8Q~", "9Q~"],
        // Three characters come before the digit; the first of them may be
        // `~` or `.`, so the regex checks the boundary.
        back: Back::Bytes(3),
        boundary: false,
        regex: r"(?-u)\b[0-9A-Za-z_~.]{3}[0-9]Q~[0-9A-Za-z_~.-]{31,34}\b",
    },
    RuleDef {
        name: "paddock-run-token",
        replace: true,
        anchors: &["pdk_run_"],
        back: Back::None,
        boundary: true,
        regex: r"(?-u)\bpdk_run_[0-9A-Za-z_-]{20,}",
    },
    RuleDef {
        name: "flagged:jwt",
        replace: false,
        // `ey` alone is in every other English word; `.ey` is where the
        // token's payload begins.
        anchors: &[".ey"],
        back: Back::Alphanumerics,
        boundary: true,
        regex: r"(?-u)\bey[0-9A-Za-z]{17}[0-9A-Za-z]*\.ey[0-9A-Za-z/_-]{17}",
    },
    RuleDef {
        name: "flagged:generic-api-key",
        replace: false,
        // The keywords' first letters as they are written (lower, upper,
        // capitalised); the regex then reads them ignoring case.
        anchors: &[
            "api", "API", "Api", "secr", "SECR", "Secr", "toke", "TOKE", "Toke", "pass", "PASS", "Pass", "acce",
            "ACCE", "Acce", "auth", "AUTH", "Auth", "cred", "CRED", "Cred",
        ],
        back: Back::None,
        boundary: true,
        regex: r#"(?i-u)\b(?:api[_-]?key|secret|token|passw(?:or)?d|access[_-]?key|auth[_-]?token|credentials?|authorization)\b\s*[:=]\s*["']?[\w.=-]{10}"#,
    },
];

/// The private-key rule, whose block's end is found by a literal search.
const PRIVATE_KEY: usize = 0;

/// How far after its BEGIN line a private key's END line may start.
const MAX_KEY_BODY: usize = 8192;

/// The rules compiled, once per process: a redactor is built per run and per
/// stored log, and only its known secrets differ.
struct Rules {
    /// Every rule's literals, in one automaton.
    anchors: Literals,
    /// The rules each pattern of `anchors` leads to.
    leads_to: Vec<Vec<usize>>,
    regexes: Vec<AnchoredRegex>,
    key_end: AnchoredRegex,
}

fn rules() -> &'static Rules {
    static COMPILED: OnceLock<Rules> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let mut literals: Vec<&str> = Vec::new();
        let mut leads_to: Vec<Vec<usize>> = Vec::new();
        for (i, rule) in RULES.iter().enumerate() {
            for anchor in rule.anchors {
                match literals.iter().position(|l| l == anchor) {
                    Some(at) => leads_to[at].push(i),
                    None => {
                        literals.push(anchor);
                        leads_to.push(vec![i]);
                    }
                }
            }
        }
        Rules {
            anchors: Literals::new(&literals, MatchKind::LeftmostFirst),
            leads_to,
            regexes: RULES.iter().map(|rule| AnchoredRegex::new(rule.regex)).collect(),
            key_end: AnchoredRegex::new(r"(?-u)-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----"),
        }
    })
}

/// A literal search. Teddy (SIMD, many GB/s) whenever the patterns allow
/// it: the general automaton picks its own prefilter, and for two known
/// secrets that begin with common letters it picked one that scanned this
/// transcript at 0.4 GB/s instead of 9.
enum Literals {
    Teddy(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Literals {
    fn new<P: AsRef<[u8]>>(patterns: &[P], kind: MatchKind) -> Self {
        let packed_kind = if kind == MatchKind::LeftmostLongest {
            packed::MatchKind::LeftmostLongest
        } else {
            packed::MatchKind::LeftmostFirst
        };
        match packed::Config::new().match_kind(packed_kind).builder().extend(patterns).build() {
            Some(teddy) => Self::Teddy(teddy),
            None => Self::Automaton(
                AhoCorasick::builder().match_kind(kind).build(patterns).expect("literal patterns always build"),
            ),
        }
    }

    /// The first match at or after `from`: its start, end and pattern.
    fn find(&self, hay: &[u8], from: usize) -> Option<(usize, usize, usize)> {
        let found = match self {
            Self::Teddy(teddy) => teddy.find_in(hay, aho_corasick::Span::from(from..hay.len())),
            Self::Automaton(ac) => ac.find(aho_corasick::Input::new(hay).span(from..hay.len())),
        }?;
        Some((found.start(), found.end(), found.pattern().as_usize()))
    }
}

/// A rule's regex as a fully compiled DFA that only ever runs from a given
/// position: a lookup per byte, no cache, nothing shared between threads.
struct AnchoredRegex(dense::DFA<Vec<u32>>);

impl AnchoredRegex {
    fn new(pattern: &str) -> Self {
        let config = dense::Config::new().start_kind(StartKind::Anchored);
        Self(dense::Builder::new().configure(config).build(pattern).expect("rules are valid"))
    }

    /// Where the match that begins at `at` ends. ASCII-only rules never
    /// make the DFA give up, and if one did its match would not be lost:
    /// a search that fails counts as a match to the end of `hay`.
    fn end(&self, hay: &[u8], at: usize) -> Option<usize> {
        let input = Input::new(hay).range(at..).anchored(Anchored::Yes);
        match self.0.try_search_fwd(&input) {
            Ok(found) => found.map(|m| m.offset()),
            Err(_) => Some(hay.len()),
        }
    }
}

/// Who a replaced span of the text belongs to.
#[derive(Clone, Copy)]
enum Owner {
    /// A known secret: the index of its canonical form.
    Known(usize),
    Rule(usize),
}

#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    owner: Owner,
}

/// The replaced spans, in order and apart from one another. The rules are
/// applied in priority order, each to the text as the ones before it left
/// it: a replaced span reads as its marker, which no rule's match can run
/// into (no rule's characters include `[` or `]`) and which is a word
/// boundary on either side. So a rule looks only inside the gaps.
#[derive(Default)]
struct Spans(Vec<Span>);

impl Spans {
    /// The gap between replaced spans that `at` is in, if it is in one.
    fn gap(&self, at: usize, len: usize) -> Option<(usize, usize)> {
        let next = self.0.partition_point(|s| s.start <= at);
        let before = next.checked_sub(1).map(|i| self.0[i]);
        if before.is_some_and(|s| s.end > at) {
            return None;
        }
        Some((before.map_or(0, |s| s.end), self.0.get(next).map_or(len, |s| s.start)))
    }

    /// Whether a span ends right at `at`.
    fn ends_at(&self, at: usize) -> bool {
        let next = self.0.partition_point(|s| s.start < at);
        next.checked_sub(1).is_some_and(|i| self.0[i].end == at)
    }

    /// The spans that begin in `from..to`.
    fn within(&self, from: usize, to: usize) -> &[Span] {
        let first = self.0.partition_point(|s| s.start < from);
        let after = first + self.0[first..].partition_point(|s| s.start < to);
        &self.0[first..after]
    }

    /// Adds one rule's matches (in order, each in a gap); the spans a match
    /// covers (known secrets inside a private key's block) go to `covered`.
    fn add(&mut self, found: Vec<Span>, covered: &mut Spans) {
        let mut merged = Vec::with_capacity(self.0.len() + found.len());
        let mut old = std::mem::take(&mut self.0).into_iter().peekable();
        for span in found {
            while let Some(s) = old.next_if(|s| s.start < span.end) {
                if s.start >= span.start { covered.0.push(s) } else { merged.push(s) }
            }
            merged.push(span);
        }
        merged.extend(old);
        self.0 = merged;
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// How long a rule's marker is (the HMAC is 8 hex digits).
fn marker_len(rule: &str) -> usize {
    "[REDACTED:".len() + rule.len() + ":".len() + 8 + "]".len()
}

impl Rules {
    /// Where each rule's literals are in `hay`, by rule, in order.
    fn hits(&self, hay: &[u8]) -> Vec<Vec<usize>> {
        let mut hits = vec![Vec::new(); RULES.len()];
        let mut at = 0;
        while let Some((start, _, pattern)) = self.anchors.find(hay, at) {
            // Literals may overlap (`-----BEGIN` right after `glpat-`), so
            // the next look starts one byte on, not after this literal.
            at = start + 1;
            for &rule in &self.leads_to[pattern] {
                hits[rule].push(start);
            }
        }
        hits
    }

    /// Where `rule` matches when it starts at `start`, inside the gap
    /// `lo..hi`.
    fn matches_at(
        &self,
        hay: &[u8],
        spans: &Spans,
        rule: usize,
        start: usize,
        (lo, hi): (usize, usize),
    ) -> Option<usize> {
        let end = lo + self.regexes[rule].end(&hay[lo..hi], start - lo)?;
        if rule == PRIVATE_KEY { self.private_key_end(hay, spans, end) } else { Some(end) }
    }

    /// Where the first END line within reach of a BEGIN line ending at
    /// `body` ends. The body may hold known secrets already replaced: they
    /// count at their marker's length, as the block is read with them.
    fn private_key_end(&self, hay: &[u8], spans: &Spans, body: usize) -> Option<usize> {
        let mut reach = body + MAX_KEY_BODY;
        for span in spans.within(body, hay.len()) {
            if span.start > reach {
                break;
            }
            reach = (reach + (span.end - span.start)).saturating_sub(marker_len("known-secret"));
        }
        let reach = hay.len().min(reach + 1);
        memchr::memmem::find_iter(&hay[body..reach], b"-----END").find_map(|i| {
            let at = body + i;
            let (lo, hi) = spans.gap(at, hay.len())?;
            self.key_end.end(&hay[lo..hi], at - lo).map(|end| lo + end)
        })
    }
}

impl Redactor {
    /// `known` are the exact secrets of this context; empty ones are ignored.
    /// Each secret is also matched JSON-escaped and URL-encoded, as it
    /// appears inside a request body or a query string.
    pub fn new(known: &[String], hmac_key: &[u8]) -> Self {
        let (patterns, canonical) = known_forms(known);
        let longest = |delimiters: &[char]| {
            patterns.iter().filter(|s| s.contains(delimiters)).map(|s| s.len()).max().unwrap_or(0)
        };
        let (hold, hold_lines) = (longest(&['"', ',']), longest(&['\n']));
        let known = (!patterns.is_empty()).then(|| Literals::new(&patterns, MatchKind::LeftmostLongest));
        Self { known, canonical, rules: rules(), key: hmac_key.to_vec(), hold, hold_lines }
    }

    /// How much text a line-by-line stream must hold back so that no known
    /// secret spanning lines is cut in two.
    pub fn hold_across_lines(&self) -> usize {
        self.hold_lines
    }

    /// The marker for one secret.
    fn marker(&self, rule: &str, secret: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length works");
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        format!("[REDACTED:{rule}:{}]", common::hash::hex(&digest[..4]))
    }

    /// Returns `text` with every secret replaced, and the counts.
    pub fn redact(&self, text: &str) -> (String, Redactions) {
        let (out, counts) = self.redact_bytes(text.as_bytes());
        let out = match out {
            Cow::Borrowed(_) => text.to_owned(),
            // Every replaced span begins and ends at an ASCII byte or is a
            // whole UTF-8 secret, so valid text stays valid.
            Cow::Owned(bytes) => {
                String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
            }
        };
        (out, counts)
    }

    /// [`Redactor::redact`] over bytes, which need not be UTF-8; the bytes
    /// themselves when nothing was replaced.
    pub fn redact_bytes<'t>(&self, hay: &'t [u8]) -> (Cow<'t, [u8]>, Redactions) {
        let mut counts = Redactions::default();
        let mut spans = Spans::default();
        if let Some(known) = &self.known {
            let mut at = 0;
            while let Some((start, end, pattern)) = known.find(hay, at) {
                spans.0.push(Span { start, end, owner: Owner::Known(pattern) });
                at = end;
            }
            if !spans.0.is_empty() {
                counts.0.insert("known-secret", spans.0.len() as u32);
            }
        }
        // Known secrets a private key's block took in: the block's marker
        // is the HMAC of the block as it read with their markers.
        let mut inside_keys = Spans::default();
        let hits = self.rules.hits(hay);
        for (rule, def) in RULES.iter().enumerate() {
            let mut found = Vec::new();
            let mut last_end = 0;
            for &literal in &hits[rule] {
                // Most literals sit inside a word, which rules them out
                // unless a replaced span ends right there.
                let word_before = literal > 0 && is_word(hay[literal - 1]);
                if def.boundary && matches!(def.back, Back::None) && word_before && !spans.ends_at(literal) {
                    continue;
                }
                let Some(gap) = spans.gap(literal, hay.len()) else { continue };
                let start = match def.back {
                    Back::None => literal,
                    Back::Bytes(n) => match literal.checked_sub(n) {
                        Some(start) if start >= gap.0 => start,
                        _ => continue,
                    },
                    Back::Alphanumerics => {
                        literal - hay[gap.0..literal].iter().rev().take_while(|b| b.is_ascii_alphanumeric()).count()
                    }
                };
                if start < last_end {
                    continue;
                }
                if def.boundary && start > gap.0 && is_word(hay[start - 1]) {
                    continue;
                }
                if let Some(end) = self.rules.matches_at(hay, &spans, rule, start, gap) {
                    last_end = end;
                    found.push(Span { start, end, owner: Owner::Rule(rule) });
                }
            }
            if !found.is_empty() {
                *counts.0.entry(def.name).or_default() += found.len() as u32;
            }
            // A rule's own matches are apart; it does not see them replaced.
            if def.replace && !found.is_empty() {
                spans.add(found, &mut inside_keys);
            }
        }
        if spans.0.is_empty() {
            return (Cow::Borrowed(hay), counts);
        }
        (Cow::Owned(self.write(hay, &spans, &inside_keys)), counts)
    }

    /// `hay` with each span replaced by its marker: one marker per distinct
    /// secret, whichever rule found it first.
    fn write(&self, hay: &[u8], spans: &Spans, inside_keys: &Spans) -> Vec<u8> {
        let mut markers: HashMap<Cow<'_, [u8]>, String> = HashMap::new();
        let mut out = Vec::with_capacity(hay.len());
        let mut last = 0;
        for span in &spans.0 {
            let (rule, secret) = match span.owner {
                Owner::Known(i) => ("known-secret", Cow::Borrowed(self.canonical[i].as_bytes())),
                Owner::Rule(rule) if !inside_keys.within(span.start, span.end).is_empty() => {
                    (RULES[rule].name, Cow::Owned(self.block_as_read(hay, span, inside_keys)))
                }
                Owner::Rule(rule) => (RULES[rule].name, Cow::Borrowed(&hay[span.start..span.end])),
            };
            out.extend_from_slice(&hay[last..span.start]);
            let marker = markers.entry(secret).or_insert_with_key(|secret| self.marker(rule, secret));
            out.extend_from_slice(marker.as_bytes());
            last = span.end;
        }
        out.extend_from_slice(&hay[last..]);
        out
    }

    /// A private key's block `start..end` with the known secrets inside it
    /// replaced.
    fn block_as_read(&self, hay: &[u8], block: &Span, inside_keys: &Spans) -> Vec<u8> {
        let mut read = Vec::with_capacity(block.end - block.start);
        let mut last = block.start;
        for span in inside_keys.within(block.start, block.end) {
            read.extend_from_slice(&hay[last..span.start]);
            if let Owner::Known(i) = span.owner {
                read.extend_from_slice(self.marker("known-secret", self.canonical[i].as_bytes()).as_bytes());
            }
            last = span.end;
        }
        read.extend_from_slice(&hay[last..block.end]);
        read
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

    /// Pieces of text a transcript is made of: every canary, near misses
    /// (cut short, inside a word, lower case), flag-only shapes, literals
    /// that start a look but are no credential, and non-ASCII text.
    fn corpus_pieces() -> Vec<String> {
        let mut pieces: Vec<String> = Vec::new();
        for (_, secret) in canaries() {
            pieces.push(secret.clone());
            pieces.push(secret[..secret.len() - 1].to_owned());
            pieces.push(format!("x{secret}"));
            pieces.push(format!("{secret}x"));
            pieces.push(secret.to_lowercase());
            pieces.push(serde_json::to_string(&secret).unwrap());
        }
        let jwt = format!("ey{}.ey{}.{}", "J".repeat(20), "p".repeat(20), "s".repeat(12));
        pieces.extend([
            jwt.clone(),
            format!("Bearer {jwt}"),
            format!("api_key = \"{}\"", "v".repeat(16)),
            "Authorization: Basic dXNlcjpwYXNzd29yZA==".to_owned(),
            "PASSWORD=hunter2hunter2".to_owned(),
            "secret_token: abcdefghijklmnop".to_owned(),
            "oauth_token=short".to_owned(),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----".to_owned(),
            "-----END RSA PRIVATE KEY-----".to_owned(),
            format!("-----BEGIN EC PRIVATE KEY-----\n{}", "Z".repeat(40)),
            // Private keys with known secrets inside: the block's marker is
            // the HMAC of the block as the known secrets' markers left it.
            "-----BEGIN PRIVATE KEY-----\nAAAA s3cr3t-value-123 BBBB\n-----END PRIVATE KEY-----".to_owned(),
            format!("-----BEGIN OPENSSH PRIVATE KEY-----\\n{}\\n-----END OPENSSH PRIVATE KEY-----", "b".repeat(70)),
            format!("ghp_{}", "A".repeat(300)),
            format!("sk-ant-admin01-{}", "w".repeat(25)),
            format!("sk-{}T3BlbkFJ{}", "q".repeat(24), "r".repeat(24)),
            format!("A3TX{}", "B".repeat(16)),
            format!("ASIA{}", "8".repeat(16)),
            format!("pdk_run_{}", "t".repeat(30)),
            "task-runner sk- they key eye Q~ ~.x1Q~ AKIA xox xoxz- glpat- github_pat_".to_owned(),
            " héllo wörld ünïcode — ✓ 日本語 ".to_owned(),
            "fn ship(order: &Order) -> Result<Receipt, Error> { Ok(order.total()) }".to_owned(),
            "$ cargo test --workspace\n    Finished test in 3.2s".to_owned(),
        ]);
        pieces
    }

    /// Same output, same markers, same counts as the passes it replaced, over
    /// thousands of pieces joined in every way (including with nothing in
    /// between, which tests the word boundaries and rules that meet).
    #[test]
    fn the_one_pass_scan_agrees_with_the_passes_it_replaced() {
        let known =
            vec!["s3cr3t-value-123".to_owned(), r#"pw/"quoted" v+x"#.to_owned(), "line\nbreak-secret".to_owned()];
        let known_forms: Vec<String> = known.iter().flat_map(|s| encodings(s)).collect();
        let pieces = corpus_pieces();
        let separators = ["", " ", "\n", "\"", ",", ":", "=", "/", "\n\n", "\\n", "-", "."];
        let (now, then) = (Redactor::new(&known, b"k"), before::Before::new(&known, b"k"));
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..1 + next(8) {
                let piece =
                    if next(6) == 0 { &known_forms[next(known_forms.len())] } else { &pieces[next(pieces.len())] };
                text.push_str(separators[next(separators.len())]);
                text.push_str(piece);
            }
            let (out, counts) = now.redact(&text);
            let (expected, expected_counts) = then.redact(&text);
            assert_eq!(out, expected, "output differs for {text:?}");
            assert_eq!(counts, expected_counts, "counts differ for {text:?}");
            checked += counts.total();
        }
        assert!(checked > 20_000, "the corpus finds secrets: {checked}");
        let transcript = pieces.join("\n").repeat(50);
        assert_eq!(now.redact(&transcript), then.redact(&transcript));
    }

    #[test]
    fn clean_text_comes_back_untouched_and_bytes_need_not_be_utf8() {
        let r = Redactor::new(&["s3cr3t-value-123".to_owned()], b"k");
        let text = "nothing to see here, just code: fn main() {}";
        assert!(matches!(r.redact_bytes(text.as_bytes()).0, Cow::Borrowed(t) if std::ptr::eq(t, text.as_bytes())));
        let mut bytes = b"\xff\xfe bad utf-8 ".to_vec();
        bytes.extend_from_slice(canaries()[0].1.as_bytes());
        bytes.extend_from_slice(b" \xc3 s3cr3t-value-123\x80");
        let (out, counts) = r.redact_bytes(&bytes);
        assert_eq!(counts.total(), 2, "{counts:?}");
        assert!(out.starts_with(b"\xff\xfe bad utf-8 [REDACTED:aws-access-key-id:"));
        assert!(
            out.ends_with(b" \xc3 [REDACTED:known-secret:") || out.ends_with(b"]\x80"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(!out.windows(16).any(|w| w == b"s3cr3t-value-123"));
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
