//! The tamper-evident audit trail in object storage, in the manner of
//! CloudTrail's log file validation.
//!
//! Each writer (an API or worker process) is one *stream*: its events are
//! numbered (`seq`) and chained (`prev_hash` is the SHA-256 of the previous
//! line), and written as JSON Lines *segments* at
//! `<prefix>/segments/<yyyy>/<mm>/<dd>/<hh>/<stream>-<first seq>.jsonl`.
//! A segment is written before the action it records proceeds: when it
//! cannot be written, the caller refuses the action (fail-closed).
//! Every `digest_interval_seconds` (and on demand) a *digest* lists the
//! segments written since the previous digest with their SHA-256, links the
//! previous digest by hash and signature, and is signed with Ed25519
//! (`audit.signing_key`): `<prefix>/digests/<yyyy>/<mm>/<dd>/<stream>-<n>.json`.
//! [`verify`] walks a time range and reports modified, missing, reordered
//! or inserted segments and broken digest chains.

pub mod export;
mod seal;
mod verify;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use common::audit::{AuditEvent, now_ms};
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};

use objstore::{ObjectLockStatus, RetainingStore, S3Store, StoreError};

pub use ed25519_dalek::VerifyingKey;
pub use seal::Sealer;
pub use verify::signs;
pub use verify::{Finding, FindingKind, VerifyReport, stream_and_number, verify};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail cannot be written: {0}")]
    Unavailable(#[from] StoreError),
    #[error("invalid configuration: `audit.signing_key` {0}")]
    Key(String),
}

/// One line of a segment: an event, numbered and chained within its stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainedEvent {
    pub stream: String,
    pub seq: u64,
    /// SHA-256 (hex) of the previous line's bytes; zeros for the first.
    pub prev_hash: String,
    pub event: AuditEvent,
    /// For an event shipped from the pending log in Redis: its number
    /// there (the log's numbers have no gaps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_seq: Option<u64>,
}

/// What a shipper writes when the pending log was tampered with: an event
/// with this action, its finding in `after`, so the evidence reaches the
/// bucket and every later verification reports it.
pub const PENDING_TAMPERED: &str = "audit.pending_tampered";

/// A segment as a digest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub key: String,
    pub sha256: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// The previous digest, as the next one links it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestLink {
    pub key: String,
    pub sha256: String,
    pub signature: String,
}

/// What a digest signs: everything but the signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DigestBody {
    pub version: u32,
    pub stream: String,
    pub digest_seq: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub segments: Vec<SegmentRef>,
    pub previous: Option<DigestLink>,
    /// The Ed25519 public key (base64) that signed this digest.
    pub public_key: String,
    /// The number of the last event from the pending log in Redis this
    /// stream has shipped: outside Redis, what a deleted tail is found by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_through: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedDigest {
    #[serde(flatten)]
    pub body: DigestBody,
    /// Ed25519 signature (base64) over the JSON of `body`.
    pub signature: String,
}

/// What the retention sweeper removed from the start of a stream: its
/// digests up to `through_digest_seq` and the segments they list. Signed
/// like a digest, so only the audit key's holder can account for missing
/// evidence; `<prefix>/trims/<stream>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrimBody {
    pub version: u32,
    pub stream: String,
    pub through_digest_seq: u64,
    pub at_ms: u64,
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedTrim {
    #[serde(flatten)]
    pub body: TrimBody,
    pub signature: String,
}

pub fn trim_key(prefix: &str, stream: &str) -> String {
    format!("{}/trims/{stream}.json", prefix.trim_end_matches('/'))
}

struct Chain {
    seq: u64,
    prev_hash: String,
    pending: Vec<SegmentRef>,
    pending_since_ms: u64,
    digest_seq: u64,
    previous: Option<DigestLink>,
    last_digest: Instant,
    queue_through: Option<u64>,
}

/// Events waiting for the next segment, with who waits for them.
type Waiting = Vec<(Vec<AuditEvent>, tokio::sync::oneshot::Sender<Result<(), String>>)>;

/// The writer of one stream, into S3 in production (a directory in tests).
pub struct AuditTrail<S = S3Store> {
    store: S,
    prefix: String,
    stream: String,
    key: SigningKey,
    interval: Duration,
    chain: tokio::sync::Mutex<Chain>,
    waiting: std::sync::Mutex<Waiting>,
    /// S3 Object Lock retention written on every object: (mode, days).
    retention: Option<(&'static str, u32)>,
    /// The writer's role (`api`, `worker`), the metrics' label.
    writer: platform::metrics::Labels,
}

pub use common::hash::sha256_hex;

/// The Ed25519 key from `audit.signing_key` (32 bytes, base64).
pub fn signing_key(encoded: &str) -> Result<SigningKey, AuditError> {
    let bytes = B64.decode(encoded.trim()).map_err(|_| AuditError::Key("is not base64".to_owned()))?;
    let seed: [u8; 32] =
        bytes.try_into().map_err(|_| AuditError::Key("must be 32 bytes (`openssl rand -base64 32`)".to_owned()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key (32 bytes, base64), as `audit.trusted_public_keys` lists them.
pub fn verifying_key(encoded: &str) -> Result<VerifyingKey, AuditError> {
    let bytes: [u8; 32] = B64
        .decode(encoded.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| AuditError::Key("names a public key that is not 32 bytes of base64".to_owned()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| AuditError::Key("names an invalid public key".to_owned()))
}

pub fn public_key_b64(key: &VerifyingKey) -> String {
    B64.encode(key.as_bytes())
}

/// Writes a digest every `interval` while `trail` lives, so no segment
/// waits longer than that for one.
pub fn spawn_digests<S: RetainingStore + 'static>(trail: std::sync::Weak<AuditTrail<S>>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let Some(trail) = trail.upgrade() else { return };
            if let Err(error) = trail.flush().await {
                tracing::error!(%error, "writing an audit digest failed; retrying at the next interval");
            }
        }
    });
}

/// The trail of a process named `writer`, from configuration; `Err` names
/// the missing or invalid key.
pub fn from_config(config: &common::config::Config, store: S3Store, writer: &str) -> Result<AuditTrail, AuditError> {
    let key = configured_key(config)?;
    let interval = Duration::from_secs(config.audit.digest_interval_seconds);
    Ok(AuditTrail::new(store, &config.audit.prefix, writer, key, interval))
}

/// The key `audit.signing_key` holds; `Err` names the key when it is
/// missing or invalid.
pub(crate) fn configured_key(config: &common::config::Config) -> Result<SigningKey, AuditError> {
    use secrecy::ExposeSecret;
    let encoded = config.audit.signing_key.as_ref().ok_or_else(|| {
        AuditError::Key(
            "must be set (32 bytes, base64: `openssl rand -base64 32`); Paddock does not act without an audit trail"
                .to_owned(),
        )
    })?;
    signing_key(encoded.expose_secret())
}

/// The trail of a process named `writer` (as [`from_config`]), after
/// probing the bucket's S3 Object Lock: when it is enabled and
/// `audit.object_lock_mode` is not `off`, every object is written with a
/// retention of `retention.audit_days`. Returns what the probe found.
pub async fn open(
    config: &common::config::Config,
    store: S3Store,
    writer: &str,
) -> Result<(AuditTrail, ObjectLockStatus), AuditError> {
    let mut trail = from_config(config, store.clone(), writer)?;
    let mut lock = store.object_lock().await;
    let days = config.retention.days(common::retention::RetentionClass::Audit);
    if let (true, Some(mode), Some(days)) = (lock.enabled, config.audit.object_lock_mode.s3_name(), days) {
        trail = trail.with_retention(mode, days);
        lock.enforced = true;
        lock.audit_object_mode = Some(mode.to_owned());
        lock.audit_object_days = Some(days);
        lock.detail =
            format!("Object Lock is enabled; every audit object is written with {mode} retention for {days} days");
    }
    Ok((trail, lock))
}

/// `yyyy/mm/dd/hh` of a time in ms since the epoch (UTC).
pub(crate) fn hour_path(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}/{:02}/{:02}/{:02}", t.year(), u8::from(t.month()), t.day(), t.hour())
}

impl<S: RetainingStore> AuditTrail<S> {
    /// A new stream named after `writer` (e.g. `api`, `worker-3`).
    pub fn new(store: S, prefix: &str, writer: &str, key: SigningKey, interval: Duration) -> Self {
        let stream = format!("{writer}-{}", ulid::Ulid::new().to_string().to_lowercase());
        let chain = Chain {
            seq: 0,
            prev_hash: "0".repeat(64),
            pending: Vec::new(),
            pending_since_ms: 0,
            digest_seq: 0,
            previous: None,
            last_digest: Instant::now(),
            queue_through: None,
        };
        Self {
            store,
            prefix: prefix.trim_end_matches('/').to_owned(),
            stream,
            key,
            interval,
            chain: tokio::sync::Mutex::new(chain),
            waiting: std::sync::Mutex::new(Vec::new()),
            retention: None,
            writer: platform::metrics::labels([("writer", writer)]),
        }
    }

    /// Reports this trail's metrics under `role` (`worker`: every worker's
    /// stream is named after the worker, its metrics after what it is).
    pub fn in_role(mut self, role: &str) -> Self {
        self.writer = platform::metrics::labels([("writer", role)]);
        self
    }

    /// Writes every object with S3 Object Lock retention `mode` for `days`.
    pub fn with_retention(mut self, mode: &'static str, days: u32) -> Self {
        self.retention = Some((mode, days));
        self
    }

    async fn store_object(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        match self.retention {
            Some((mode, days)) => {
                let until = now_ms() + u64::from(days) * 24 * 60 * 60 * 1000;
                self.store.put_retained(key, body, content_type, mode, until).await
            }
            None => self.store.put(key, body, content_type).await,
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Records, signed, that retention removes `stream`'s digests up to
    /// `through` (and their segments); written before they are deleted.
    pub async fn record_trim(&self, stream: &str, through: u64) -> Result<(), AuditError> {
        let body = TrimBody {
            version: 1,
            stream: stream.to_owned(),
            through_digest_seq: through,
            at_ms: now_ms(),
            public_key: public_key_b64(&self.public_key()),
        };
        let message = serde_json::to_vec(&body).map_err(|e| AuditError::Unavailable(StoreError::new(e)))?;
        let trim = SignedTrim { signature: self.sign(&message), body };
        let bytes = serde_json::to_vec_pretty(&trim).map_err(|e| AuditError::Unavailable(StoreError::new(e)))?;
        self.store.put(&trim_key(&self.prefix, stream), Bytes::from(bytes), "application/json").await?;
        Ok(())
    }

    /// An Ed25519 signature (base64) of `message` with the audit key.
    pub fn sign(&self, message: &[u8]) -> String {
        B64.encode(self.key.sign(message).to_bytes())
    }

    /// Stores `events` durably before returning; a digest follows when the
    /// interval has passed. An error means nothing was recorded and the
    /// action must not proceed.
    ///
    /// Group commit: callers queue their events, and whoever next holds the
    /// chain writes everything queued as one segment, so concurrent callers
    /// share one object-store write instead of queueing for one each.
    pub async fn record(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let metrics = platform::metrics::global();
        let started = std::time::Instant::now();
        let (done, written) = tokio::sync::oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).push((events.to_vec(), done));
        {
            let mut chain = self.chain.lock().await;
            let batch = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
            if !batch.is_empty() {
                let all: Vec<(Option<u64>, &AuditEvent)> =
                    batch.iter().flat_map(|(events, _)| events.iter().map(|e| (None, e))).collect();
                let result = self.write_segment(&mut chain, &all).await.map_err(|e| e.to_string());
                for (_, done) in batch {
                    let _ = done.send(result.clone());
                }
            }
        }
        let result = match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(AuditError::Unavailable(StoreError::new(message))),
            Err(_) => Err(AuditError::Unavailable(StoreError::new("the audit writer stopped"))),
        };
        metrics.audit_write.get_or_create(&self.writer).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics.audit_failures.get_or_create(&self.writer).inc();
        }
        result
    }

    /// Segments not yet covered by a digest, in the metrics.
    fn count_undigested(&self, chain: &Chain) {
        let pending = i64::try_from(chain.pending.len()).unwrap_or(i64::MAX);
        platform::metrics::global().audit_undigested.get_or_create(&self.writer).set(pending);
    }

    /// Writes events shipped from the pending log in Redis (each with its
    /// number there, in order; `None` for what the shipper adds) as one
    /// segment of this stream, before returning; the next digest records
    /// the last number.
    pub async fn record_shipped(&self, events: &[(Option<u64>, AuditEvent)]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let metrics = platform::metrics::global();
        let started = std::time::Instant::now();
        let mut chain = self.chain.lock().await;
        let lines: Vec<(Option<u64>, &AuditEvent)> = events.iter().map(|(seq, e)| (*seq, e)).collect();
        let result = self.write_segment(&mut chain, &lines).await;
        // The bucket write the shipper waited for: this writer's audit writes.
        metrics.audit_write.get_or_create(&self.writer).observe(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics.audit_failures.get_or_create(&self.writer).inc();
        }
        result
    }

    async fn write_segment(&self, chain: &mut Chain, events: &[(Option<u64>, &AuditEvent)]) -> Result<(), AuditError> {
        let mut body = Vec::new();
        let (mut seq, mut prev_hash) = (chain.seq, chain.prev_hash.clone());
        let mut queue_through = chain.queue_through;
        for (queue_seq, event) in events {
            seq += 1;
            let line = ChainedEvent {
                stream: self.stream.clone(),
                seq,
                prev_hash: prev_hash.clone(),
                event: (*event).clone(),
                queue_seq: *queue_seq,
            };
            queue_through = queue_seq.or(queue_through);
            let bytes = serde_json::to_vec(&line).map_err(|e| AuditError::Unavailable(StoreError::new(e)))?;
            prev_hash = sha256_hex(&bytes);
            body.extend_from_slice(&bytes);
            body.push(b'\n');
        }
        let first_seq = chain.seq + 1;
        let now = now_ms();
        let key = format!("{}/segments/{}/{}-{first_seq:012}.jsonl", self.prefix, hour_path(now), self.stream);
        let sha256 = sha256_hex(&body);
        self.store_object(&key, Bytes::from(body), "application/x-ndjson").await?;
        // Only a written segment advances the chain.
        chain.seq = seq;
        chain.prev_hash = prev_hash;
        chain.queue_through = queue_through;
        if chain.pending.is_empty() {
            chain.pending_since_ms = now;
        }
        chain.pending.push(SegmentRef { key, sha256, first_seq, last_seq: seq });
        // The events are stored; a failed digest is retried with the next one.
        if chain.last_digest.elapsed() >= self.interval
            && let Err(error) = self.write_digest(chain).await
        {
            tracing::error!(%error, "writing an audit digest failed; the next digest will list these segments");
        }
        self.count_undigested(chain);
        Ok(())
    }

    /// Writes a digest of the segments not digested yet, if there are any.
    pub async fn flush(&self) -> Result<(), AuditError> {
        let mut chain = self.chain.lock().await;
        self.write_digest(&mut chain).await
    }

    async fn write_digest(&self, chain: &mut Chain) -> Result<(), AuditError> {
        if chain.pending.is_empty() {
            chain.last_digest = Instant::now();
            return Ok(());
        }
        let end_ms = now_ms();
        let body = DigestBody {
            version: 1,
            stream: self.stream.clone(),
            digest_seq: chain.digest_seq + 1,
            start_ms: chain.pending_since_ms,
            end_ms,
            segments: chain.pending.clone(),
            previous: chain.previous.clone(),
            public_key: public_key_b64(&self.public_key()),
            queue_through: chain.queue_through,
        };
        let signed_bytes = serde_json::to_vec(&body).map_err(|e| AuditError::Unavailable(StoreError::new(e)))?;
        let signature = self.sign(&signed_bytes);
        let digest = SignedDigest { body, signature: signature.clone() };
        let bytes = serde_json::to_vec_pretty(&digest).map_err(|e| AuditError::Unavailable(StoreError::new(e)))?;
        let hour = hour_path(end_ms);
        let day = &hour[..10];
        let key = format!("{}/digests/{day}/{}-{:08}.json", self.prefix, self.stream, digest.body.digest_seq);
        let sha256 = sha256_hex(&bytes);
        self.store_object(&key, Bytes::from(bytes), "application/json").await?;
        chain.digest_seq += 1;
        chain.previous = Some(DigestLink { key, sha256, signature });
        chain.pending.clear();
        chain.last_digest = Instant::now();
        self.count_undigested(chain);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::audit::{Actor, ObjectRef};
    use objstore::{DirStore, ObjectStore};

    fn event(n: u32) -> AuditEvent {
        let actor = Actor { principal: "alice@example.com".to_owned(), method: "oidc".to_owned(), via: None };
        AuditEvent::new("run.request", actor, ObjectRef::new("run", format!("run-{n}")))
    }

    async fn verified(dir: &std::path::Path, trusted: &[VerifyingKey]) -> VerifyReport {
        verify(&DirStore::new(dir), "audit", trusted, 0, u64::MAX).await.expect("the directory reads")
    }

    #[tokio::test]
    async fn a_trail_in_a_directory_verifies_and_a_changed_byte_or_a_lost_segment_is_found() {
        let dir = std::env::temp_dir().join(format!("paddock-trail-{}", ulid::Ulid::new()));
        let key = SigningKey::from_bytes(&[7; 32]);
        let trail = AuditTrail::new(DirStore::new(&dir), "audit", "test", key, Duration::from_secs(3600));
        for n in 0..3 {
            trail.record(&[event(n)]).await.expect("recorded");
        }
        trail.flush().await.expect("digested");
        let trusted = [trail.public_key()];
        let clean = verified(&dir, &trusted).await;
        assert!(clean.ok() && clean.undigested.is_empty(), "{clean:?}");
        assert_eq!((clean.segments_checked, clean.events_checked, clean.digests_checked), (3, 3, 1));
        let stranger = [SigningKey::from_bytes(&[8; 32]).verifying_key()];
        let untrusted = verified(&dir, &stranger).await;
        assert!(untrusted.findings.iter().any(|f| f.kind == FindingKind::BadSignature), "{untrusted:?}");

        let mut segments: Vec<String> = DirStore::new(&dir)
            .list("audit/segments/")
            .await
            .expect("listed")
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        segments.sort();
        let edited = dir.join(&segments[0]);
        let text = std::fs::read_to_string(&edited).expect("a segment").replace("alice@", "mallory@");
        std::fs::write(&edited, text).expect("edited");
        std::fs::remove_file(dir.join(&segments[1])).expect("deleted");
        let tampered = verified(&dir, &trusted).await;
        let found = |kind: FindingKind, key: &str| tampered.findings.iter().any(|f| f.kind == kind && f.key == key);
        assert!(found(FindingKind::Modified, &segments[0]), "{tampered:?}");
        assert!(found(FindingKind::Missing, &segments[1]), "{tampered:?}");
        assert!(!tampered.ok());
        std::fs::remove_dir_all(dir).ok();
    }
}
