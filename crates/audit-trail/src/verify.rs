//! Walks the audit trail of a time range: every digest's signature and its
//! link to the previous digest, every listed segment's presence and SHA-256,
//! the numbering and hash chain of the events inside, and segments that no
//! digest lists.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{ChainedEvent, SignedDigest, public_key_b64, sha256_hex};
use objstore::{ObjectStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A segment's bytes differ from what its digest recorded.
    Modified,
    /// A segment a digest lists is gone.
    Missing,
    /// A segment holds another listed segment's bytes (segments swapped or moved).
    Reordered,
    /// A segment no digest lists, inside the digested part of its stream.
    Inserted,
    /// A digest whose signature does not verify, or signed by an untrusted key.
    BadSignature,
    /// A digest that does not link to the one before it, or a gap between digests.
    BrokenDigestChain,
    /// Events out of sequence or whose hash chain is broken inside segments.
    BrokenEventChain,
    /// An event of the pending log in Redis (not yet shipped, or found by
    /// its shipper) whose seal does not verify, or an entry that is no event.
    PendingModified,
    /// A number missing from the pending log in Redis: a deleted event.
    PendingMissing,
}

impl FindingKind {
    /// The kind a shipper named in an [`super::PENDING_TAMPERED`] event.
    pub fn pending(name: &str) -> Self {
        match name {
            "pending_missing" => FindingKind::PendingMissing,
            _ => FindingKind::PendingModified,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub kind: FindingKind,
    pub key: String,
    pub detail: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub streams: usize,
    pub digests_checked: usize,
    pub segments_checked: usize,
    pub events_checked: usize,
    /// Events in the pending log in Redis, not yet shipped, checked.
    #[serde(default)]
    pub pending_checked: usize,
    /// Empty when the range verified.
    pub findings: Vec<Finding>,
    /// Segments written after their stream's last digest (not yet covered).
    pub undigested: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    pub(crate) fn find(&mut self, kind: FindingKind, key: &str, detail: impl Into<String>) {
        self.findings.push(Finding { kind, key: key.to_owned(), detail: detail.into() });
    }
}

/// `<stream>-<number>.<ext>` → (stream, number).
pub fn stream_and_number(key: &str) -> Option<(String, u64)> {
    let file = key.rsplit('/').next()?;
    let stem = file.split('.').next()?;
    let (stream, number) = stem.rsplit_once('-')?;
    Some((stream.to_owned(), number.parse().ok()?))
}

const HOUR_MS: u64 = 60 * 60 * 1000;
/// Ranges up to this long are listed by day or hour prefix; longer ones whole.
const WINDOW_MS: u64 = 31 * 24 * HOUR_MS;

/// The keys under `<prefix>/<dir>/` (`digests`, dated by day; `segments`, by
/// hour) that can concern `[since_ms, until_ms)`, with a margin of a day or an
/// hour each side, and the prefixes listed; `None` when the whole directory
/// was (an open or long range).
pub(crate) async fn list_window(
    store: &impl ObjectStore,
    prefix: &str,
    dir: &str,
    since_ms: u64,
    until_ms: u64,
) -> Result<(Vec<(String, u64)>, Option<Vec<String>>), StoreError> {
    let until_ms = until_ms.min(common::audit::now_ms());
    if since_ms == 0 || until_ms.saturating_sub(since_ms) > WINDOW_MS {
        return Ok((store.list(&format!("{prefix}/{dir}/")).await?, None));
    }
    let (step, len) = if dir == "digests" { (24 * HOUR_MS, 10) } else { (HOUR_MS, 13) };
    let mut prefixes: Vec<String> = Vec::new();
    // Unix days and hours are aligned to multiples of their length (UTC).
    let mut t = since_ms.saturating_sub(step) / step * step;
    while t <= until_ms.saturating_add(step) {
        let listed = format!("{prefix}/{dir}/{}/", &super::hour_path(t)[..len]);
        if prefixes.last() != Some(&listed) {
            prefixes.push(listed);
        }
        t += step;
    }
    let mut keys = Vec::new();
    for listed in &prefixes {
        keys.extend(store.list(listed).await?);
    }
    Ok((keys, Some(prefixes)))
}

/// Verifies every digest whose span overlaps `[since_ms, until_ms)` and the
/// segments they list, trusting only `trusted` keys. Digests and segments
/// the retention sweeper removed are accounted for by its signed trim
/// records (`<prefix>/trims/`); nothing else may be missing.
pub async fn verify(
    store: &impl ObjectStore,
    prefix: &str,
    trusted: &[VerifyingKey],
    since_ms: u64,
    until_ms: u64,
) -> Result<VerifyReport, StoreError> {
    verify_copy(store, "", prefix, trusted, since_ms, until_ms, false).await
}

/// Per stream, the last digest retention removed, from trim records signed
/// by a trusted key (others are findings).
async fn trims(
    store: &impl ObjectStore,
    prefix: &str,
    trusted: &[String],
    report: &mut VerifyReport,
) -> Result<HashMap<String, u64>, StoreError> {
    let mut trims = HashMap::new();
    for (key, _) in store.list(&format!("{prefix}/trims/")).await? {
        let Some(bytes) = store.get(&key).await? else { continue };
        let signed = serde_json::from_slice::<super::SignedTrim>(&bytes)
            .ok()
            .filter(|t| signed_by_trusted(&t.body, &t.body.public_key, &t.signature, trusted));
        match signed {
            Some(trim) => {
                trims.insert(trim.body.stream, trim.body.through_digest_seq);
            }
            None => report.find(FindingKind::BadSignature, &key, "a trim record that does not verify"),
        }
    }
    Ok(trims)
}

/// [`verify`] for a copy of the trail stored under `root` (an export
/// bundle): every key, the ones digests name included, is read under it.
/// A `partial` copy may start a stream's chain anywhere and hold only some
/// of a digest's segments (its manifest accounts for its files).
pub(crate) async fn verify_copy(
    store: &impl ObjectStore,
    root: &str,
    prefix: &str,
    trusted: &[VerifyingKey],
    since_ms: u64,
    until_ms: u64,
    partial: bool,
) -> Result<VerifyReport, StoreError> {
    let prefix = format!("{root}{}", prefix.trim_end_matches('/'));
    let trusted: Vec<String> = trusted.iter().map(public_key_b64).collect();
    let mut report = VerifyReport::default();
    let trims = trims(store, &prefix, &trusted, &mut report).await?;
    // Every digest, by stream and number, with its bytes' hash.
    let mut streams: BTreeMap<String, BTreeMap<u64, (String, String, SignedDigest)>> = BTreeMap::new();
    let (digest_keys, window) = list_window(store, &prefix, "digests", since_ms, until_ms).await?;
    // A digest whose predecessor lies before the listed days starts the chain.
    let before_window =
        |key: &str| window.as_ref().is_some_and(|w| !w.iter().any(|p| format!("{root}{key}").starts_with(p)));
    for (stored, _) in digest_keys {
        let Some(bytes) = store.get(&stored).await? else { continue };
        let key = stored.strip_prefix(root).unwrap_or(&stored).to_owned();
        let Ok(digest) = serde_json::from_slice::<SignedDigest>(&bytes) else {
            report.find(FindingKind::BadSignature, &key, "the digest is not readable");
            continue;
        };
        let entry = (key, sha256_hex(&bytes), digest);
        streams.entry(entry.2.body.stream.clone()).or_default().insert(entry.2.body.digest_seq, entry);
    }
    report.streams = streams.len();
    let mut digested: HashMap<String, (u64, std::collections::HashSet<String>)> = HashMap::new();
    for (stream, digests) in &streams {
        let listed = digested.entry(stream.clone()).or_default();
        let mut previous: Option<&(String, String, SignedDigest)> = None;
        let trimmed_through = trims.get(stream).copied().unwrap_or(0);
        for (n, entry) in digests {
            let (key, _, digest) = entry;
            // The oldest digest left after retention removed its predecessors.
            let trimmed = previous.is_none() && (partial || n - 1 <= trimmed_through);
            for segment in &digest.body.segments {
                listed.0 = listed.0.max(segment.last_seq);
                listed.1.insert(segment.key.clone());
            }
            let expected_previous = n.checked_sub(1).filter(|p| *p > 0);
            match (expected_previous, previous, &digest.body.previous) {
                (None, _, None) => {}
                (Some(_), None, Some(link)) if trimmed || before_window(&link.key) => {}
                (Some(p), Some((pkey, psha, pdigest)), Some(link))
                    if pdigest.body.digest_seq == p
                        && &link.key == pkey
                        && &link.sha256 == psha
                        && link.signature == pdigest.signature => {}
                _ => report.find(
                    FindingKind::BrokenDigestChain,
                    key,
                    format!("digest {n} does not link to digest {}", n - 1),
                ),
            }
            previous = Some(entry);
            let overlaps = digest.body.end_ms >= since_ms && digest.body.start_ms < until_ms;
            if !overlaps {
                continue;
            }
            report.digests_checked += 1;
            check_signature(&mut report, key, digest, &trusted);
            // A sweep stopped midway leaves a digest whose segments are gone.
            let may_be_missing = partial || *n <= trimmed_through;
            check_segments(store, root, &mut report, digest, may_be_missing).await?;
        }
    }
    for (key, _) in list_window(store, &prefix, "segments", since_ms, until_ms).await?.0 {
        let key = key.strip_prefix(root).unwrap_or(&key).to_owned();
        let Some((stream, first_seq)) = stream_and_number(&key) else { continue };
        match digested.get(&stream) {
            Some((_, keys)) if keys.contains(&key) => {}
            Some((last, _)) if first_seq <= *last => {
                report.find(FindingKind::Inserted, &key, "no digest lists this segment")
            }
            _ => report.undigested.push(key),
        }
    }
    Ok(report)
}

/// Whether `signature` (Ed25519, base64) of the JSON of `body` verifies
/// with `public_key` (base64).
pub fn signs(body: &impl Serialize, public_key: &str, signature: &str) -> bool {
    let verified = (|| {
        let message = serde_json::to_vec(body).ok()?;
        let public: [u8; 32] = B64.decode(public_key).ok()?.try_into().ok()?;
        let public = VerifyingKey::from_bytes(&public).ok()?;
        let signature: [u8; 64] = B64.decode(signature).ok()?.try_into().ok()?;
        public.verify(&message, &Signature::from_bytes(&signature)).ok()
    })();
    verified.is_some()
}

/// [`signs`], by a key in `trusted` (base64).
pub(crate) fn signed_by_trusted(body: &impl Serialize, public_key: &str, signature: &str, trusted: &[String]) -> bool {
    trusted.iter().any(|k| k == public_key) && signs(body, public_key, signature)
}

fn check_signature(report: &mut VerifyReport, key: &str, digest: &SignedDigest, trusted: &[String]) {
    if !trusted.contains(&digest.body.public_key) {
        report.find(FindingKind::BadSignature, key, "signed by a key that is not trusted");
        return;
    }
    if !signs(&digest.body, &digest.body.public_key, &digest.signature) {
        report.find(FindingKind::BadSignature, key, "the signature does not verify: the digest was altered");
    }
}

async fn check_segments(
    store: &impl ObjectStore,
    root: &str,
    report: &mut VerifyReport,
    digest: &SignedDigest,
    may_be_missing: bool,
) -> Result<(), StoreError> {
    let by_hash: HashMap<&str, &str> =
        digest.body.segments.iter().map(|s| (s.sha256.as_str(), s.key.as_str())).collect();
    for segment in &digest.body.segments {
        report.segments_checked += 1;
        let Some(bytes) = store.get(&format!("{root}{}", segment.key)).await? else {
            if !may_be_missing {
                report.find(FindingKind::Missing, &segment.key, "listed by a digest, not in the store");
            }
            continue;
        };
        let sha = sha256_hex(&bytes);
        if sha != segment.sha256 {
            match by_hash.get(sha.as_str()) {
                Some(other) => report.find(FindingKind::Reordered, &segment.key, format!("holds the bytes of {other}")),
                None => report.find(FindingKind::Modified, &segment.key, "its SHA-256 differs from the digest's"),
            }
            continue;
        }
        let mut prev: Option<String> = None;
        let mut last = segment.first_seq.saturating_sub(1);
        let lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
        for (expected, line) in (segment.first_seq..).zip(lines) {
            let Ok(event) = serde_json::from_slice::<ChainedEvent>(line) else {
                report.find(FindingKind::BrokenEventChain, &segment.key, "a line is not an audit event");
                break;
            };
            let chained = prev.as_ref().is_none_or(|p| *p == event.prev_hash);
            if event.seq != expected || event.stream != digest.body.stream || !chained {
                report.find(
                    FindingKind::BrokenEventChain,
                    &segment.key,
                    format!("event {} breaks the chain", event.seq),
                );
                break;
            }
            report.events_checked += 1;
            if event.event.action == super::PENDING_TAMPERED {
                let kind = event.event.after.as_ref().and_then(|a| a["finding"].as_str()).unwrap_or_default();
                let detail = event.event.reason.clone().unwrap_or_default();
                report.find(FindingKind::pending(kind), &segment.key, format!("its shipper found: {detail}"));
            }
            prev = Some(sha256_hex(line));
            last = expected;
        }
        if last != segment.last_seq {
            report.find(
                FindingKind::BrokenEventChain,
                &segment.key,
                format!("ends at event {last}, not {}", segment.last_seq),
            );
        }
    }
    Ok(())
}
