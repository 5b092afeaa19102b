//! Compliance export bundles: the audit events of a time range (or of one
//! run) and the evidence to verify them without Paddock.
//!
//! A bundle under `<audit.export_prefix>/<id>/` holds
//! - `events/YYYY/MM/HH/MM/<uuid>.json.gz`: the events, gzip JSON Lines in
//!   the file layout of GitHub's audit log streaming, one file per minute of
//!   event time; each line is the trail's line byte for byte (the event with
//!   its stream, sequence number and chain hash), so consumers deduplicate
//!   on `event.id` and a verifier finds each line in a signed segment;
//! - `trail/<audit key>`: copies of the segments that hold those events and
//!   of every digest of their streams from the first to the last one needed,
//!   so signatures and the digest chain check as in the live trail;
//! - `manifest.json`: what was asked, by whom, the counts, the bucket's
//!   Object Lock status, and every file's SHA-256, signed with the audit key.
//!
//! Events still waiting for their stream's next digest cannot be proven yet;
//! they are counted in `pending_events` and left for a later export.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};

use bytes::Bytes;
pub use common::records::{ExportRequest, ExportState, ExportStatus};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::verify::{list_window, signed_by_trusted, verify_copy};
use super::{
    AuditError, AuditTrail, ChainedEvent, FindingKind, SignedDigest, VerifyReport, public_key_b64, sha256_hex,
};
use objstore::{ObjectLockStatus, ObjectStore, S3Store, StoreError};

/// Events arrive in a segment shortly after their time; digests whose span
/// starts this much after the range's end may still hold some of them.
const LATE_MS: u64 = 60_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExportFile {
    /// Relative to the bundle.
    pub key: String,
    pub sha256: String,
    pub bytes: u64,
}

/// What the manifest signs.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ManifestBody {
    pub version: u32,
    pub id: String,
    pub requested_by: String,
    pub created_at_ms: u64,
    pub request: ExportRequest,
    /// The audit prefix the digests' segment keys start with.
    pub source_prefix: String,
    /// Events in `events/`.
    pub events: usize,
    /// Matching events not yet covered by a digest, so not exported.
    pub pending_events: usize,
    pub object_lock: ObjectLockStatus,
    /// The Ed25519 public key (base64) that signed this manifest.
    pub public_key: String,
    pub files: Vec<ExportFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedManifest {
    #[serde(flatten)]
    pub body: ManifestBody,
    /// Ed25519 signature (base64) over the JSON of the body.
    pub signature: String,
}

/// A UUID-formatted unique name, as GitHub names its streamed files.
fn uuid_name() -> String {
    let hex = common::hash::hex(&ulid::Ulid::new().to_bytes());
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// `YYYY/MM/HH/MM` of an event time (UTC), GitHub's streaming layout.
fn minute_path(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}/{:02}/{:02}/{:02}", t.year(), u8::from(t.month()), t.hour(), t.minute())
}

fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

fn store_error(e: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(StoreError::new(e))
}

/// Writes the bundle `id` for `request` from the trail under `source_prefix`
/// to `<export_prefix>/<id>/`, signs its manifest with `trail`'s key, and
/// returns the manifest and the SHA-256 of its stored bytes.
#[allow(clippy::too_many_arguments)]
pub async fn export(
    store: &S3Store,
    trail: &AuditTrail,
    source_prefix: &str,
    export_prefix: &str,
    id: &str,
    requested_by: &str,
    request: &ExportRequest,
    object_lock: ObjectLockStatus,
) -> Result<(SignedManifest, String), AuditError> {
    let source = source_prefix.trim_end_matches('/');
    let bundle = format!("{}/{id}", export_prefix.trim_end_matches('/'));
    // Digests by stream and number.
    let mut streams: BTreeMap<String, BTreeMap<u64, (String, Bytes, SignedDigest)>> = BTreeMap::new();
    let (since, late_until) = (request.since_ms, request.until_ms.saturating_add(LATE_MS));
    for (key, _) in list_window(store, source, "digests", since, late_until).await?.0 {
        let Some(bytes) = store.get(&key).await? else { continue };
        let Ok(digest) = serde_json::from_slice::<SignedDigest>(&bytes) else { continue };
        streams.entry(digest.body.stream.clone()).or_default().insert(digest.body.digest_seq, (key, bytes, digest));
    }
    let mut digested: HashSet<String> = HashSet::new();
    let mut files: Vec<(String, Bytes)> = Vec::new();
    let mut events: Vec<(u64, Vec<u8>)> = Vec::new();
    for digests in streams.values() {
        let mut needed: Vec<u64> = Vec::new();
        for (n, (_, _, digest)) in digests {
            digested.extend(digest.body.segments.iter().map(|s| s.key.clone()));
            if digest.body.end_ms < since || digest.body.start_ms >= late_until {
                continue;
            }
            for segment in &digest.body.segments {
                let Some(bytes) = store.get(&segment.key).await? else { continue };
                let before = events.len();
                for line in lines(&bytes) {
                    if let Ok(chained) = serde_json::from_slice::<ChainedEvent>(line)
                        && request.wants(&chained.event)
                    {
                        events.push((chained.event.time_ms, line.to_vec()));
                    }
                }
                if events.len() > before {
                    needed.push(*n);
                    files.push((format!("trail/{}", segment.key), bytes));
                }
            }
        }
        // Every digest from the first needed to the last, so the chain checks.
        if let (Some(first), Some(last)) = (needed.first(), needed.last()) {
            for (key, bytes, _) in digests.range(first..=last).map(|(_, d)| d) {
                files.push((format!("trail/{key}"), bytes.clone()));
            }
        }
    }
    let mut pending_events = 0;
    for (key, _) in list_window(store, source, "segments", since, late_until).await?.0 {
        if digested.contains(&key) {
            continue;
        }
        let Some(bytes) = store.get(&key).await? else { continue };
        pending_events += lines(&bytes)
            .filter_map(|l| serde_json::from_slice::<ChainedEvent>(l).ok())
            .filter(|c| request.wants(&c.event))
            .count();
    }
    events.sort();
    // One file per minute of event time (GitHub's path has no day: files of
    // the same minute on different days share a folder, not a file).
    let mut by_minute: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (time_ms, line) in &events {
        let file = by_minute.entry(time_ms / 60_000).or_default();
        file.extend_from_slice(line);
        file.push(b'\n');
    }
    for (minute, jsonl) in by_minute {
        let minute = minute_path(minute * 60_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&jsonl).map_err(store_error)?;
        files
            .push((format!("events/{minute}/{}.json.gz", uuid_name()), Bytes::from(gz.finish().map_err(store_error)?)));
    }
    let mut listed = Vec::new();
    for (key, bytes) in &files {
        let content_type = if key.ends_with(".gz") { "application/gzip" } else { "application/json" };
        store.put(&format!("{bundle}/{key}"), bytes.clone(), content_type).await?;
        listed.push(ExportFile { key: key.clone(), sha256: sha256_hex(bytes), bytes: bytes.len() as u64 });
    }
    let body = ManifestBody {
        version: 1,
        id: id.to_owned(),
        requested_by: requested_by.to_owned(),
        created_at_ms: common::audit::now_ms(),
        request: request.clone(),
        source_prefix: source.to_owned(),
        events: events.len(),
        pending_events,
        object_lock,
        public_key: public_key_b64(&trail.public_key()),
        files: listed,
    };
    let signature = trail.sign(&serde_json::to_vec(&body).map_err(store_error)?);
    let manifest = SignedManifest { body, signature };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(store_error)?;
    let sha256 = sha256_hex(&bytes);
    store.put(&format!("{bundle}/manifest.json"), Bytes::from(bytes), "application/json").await?;
    Ok((manifest, sha256))
}

/// Verifies the bundle under `bundle` on its own: the manifest's signature,
/// every file against the manifest, the copied digests and segments as the
/// live trail is verified, and every exported event against the signed
/// segments. `events_checked` counts the exported events.
pub async fn verify_export(
    store: &impl ObjectStore,
    bundle: &str,
    trusted: &[VerifyingKey],
) -> Result<VerifyReport, StoreError> {
    let bundle = bundle.trim_end_matches('/');
    let manifest_key = format!("{bundle}/manifest.json");
    let mut report = VerifyReport::default();
    let Some(bytes) = store.get(&manifest_key).await? else {
        report.find(FindingKind::Missing, &manifest_key, "the bundle has no manifest");
        return Ok(report);
    };
    let Ok(manifest) = serde_json::from_slice::<SignedManifest>(&bytes) else {
        report.find(FindingKind::BadSignature, &manifest_key, "the manifest is not readable");
        return Ok(report);
    };
    if !signed_by(&manifest, trusted) {
        report.find(
            FindingKind::BadSignature,
            &manifest_key,
            "the manifest's signature does not verify with a trusted key",
        );
    }
    let stored: BTreeMap<String, u64> = store.list(&format!("{bundle}/")).await?.into_iter().collect();
    let expected: BTreeMap<&str, &ExportFile> = manifest.body.files.iter().map(|f| (f.key.as_str(), f)).collect();
    for key in stored.keys().filter(|k| **k != manifest_key) {
        let relative = key.strip_prefix(&format!("{bundle}/")).unwrap_or(key);
        if !expected.contains_key(relative) {
            report.find(FindingKind::Inserted, key, "not listed in the manifest");
        }
    }
    let mut segment_lines: HashSet<String> = HashSet::new();
    let mut exported = Vec::new();
    for file in &manifest.body.files {
        let key = format!("{bundle}/{}", file.key);
        let Some(bytes) = store.get(&key).await? else {
            report.find(FindingKind::Missing, &key, "listed in the manifest, not in the store");
            continue;
        };
        if sha256_hex(&bytes) != file.sha256 {
            report.find(FindingKind::Modified, &key, "its SHA-256 differs from the manifest's");
            continue;
        }
        if file.key.starts_with("trail/") && file.key.contains("/segments/") {
            segment_lines.extend(lines(&bytes).map(sha256_hex));
        } else if file.key.starts_with("events/") {
            exported.push((key, bytes));
        }
    }
    let trail =
        verify_copy(store, &format!("{bundle}/trail/"), &manifest.body.source_prefix, trusted, 0, u64::MAX, true)
            .await?;
    report.streams = trail.streams;
    report.digests_checked = trail.digests_checked;
    report.segments_checked = trail.segments_checked;
    report.findings.extend(trail.findings);
    for (key, gz) in exported {
        let mut jsonl = Vec::new();
        if flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut jsonl).is_err() {
            report.find(FindingKind::Modified, &key, "not gzip");
            continue;
        }
        for line in lines(&jsonl) {
            report.events_checked += 1;
            if !segment_lines.contains(&sha256_hex(line)) {
                report.find(FindingKind::Modified, &key, "holds an event that no signed segment holds");
            }
        }
    }
    if report.events_checked != manifest.body.events {
        let detail = format!("{} events exported, the manifest says {}", report.events_checked, manifest.body.events);
        report.find(FindingKind::Missing, &manifest_key, detail);
    }
    Ok(report)
}

fn signed_by(manifest: &SignedManifest, trusted: &[VerifyingKey]) -> bool {
    let trusted: Vec<String> = trusted.iter().map(public_key_b64).collect();
    signed_by_trusted(&manifest.body, &manifest.body.public_key, &manifest.signature, &trusted)
}
