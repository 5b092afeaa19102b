//! The pending audit log's two readers: the shipper, which moves events
//! from Redis into this process's stream of the signed trail and trims
//! them once the bucket has them, and the check that finds an edited or
//! deleted pending event (`GET /v1/audit/verify`, and the shipper before
//! it ships).
//!
//! Whichever API process holds the lease `lock:audit-shipper` ships; the
//! others try for it every second. A shipper that dies holding it is
//! replaced when the lease runs out ([`LEASE`]); what it wrote to the
//! bucket but did not trim is shipped again (at least once, like any audit
//! stream: consumers deduplicate on the event id).

use std::sync::Arc;
use std::time::Duration;

use audit_trail::{AuditTrail, Finding, FindingKind, PENDING_TAMPERED, Sealer};
use common::audit::{Actor, AuditEvent, ObjectRef};
use store::RunQueue;
use store::audit::{PendingLog, Unreadable};

/// How long the shipper's lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(10);
/// The most events one segment carries.
const BATCH: usize = 1000;
/// How often the holder looks for events when it found none.
const IDLE: Duration = Duration::from_millis(200);
/// How often a process without the lease asks for it, and how long the
/// holder waits after a failed write to the bucket.
const RETRY: Duration = Duration::from_secs(1);

/// What the key `Finding`s about the pending log name.
pub const PENDING_KEY: &str = "redis:audit:pending";

/// The pending log read against its seal and numbering: the events that
/// can be shipped, with their numbers, and what is wrong.
#[derive(Debug, Default)]
pub struct Checked {
    pub events: Vec<(Option<u64>, AuditEvent)>,
    pub findings: Vec<Finding>,
    /// How many entries were read.
    pub entries: usize,
    /// The last number the read accounts for: shipped, or found missing.
    pub through: u64,
}

/// Checks `log`: every entry sealed by `sealer` and readable, numbered on
/// from `marks.shipped_through` without a gap, and, when the whole log was
/// read, its last number the last one Redis gave.
pub fn check(log: &PendingLog, sealer: &Sealer) -> Checked {
    let mut checked = Checked { entries: log.entries.len(), ..Checked::default() };
    let mut next = log.marks.shipped_through + 1;
    let mut find = |kind: FindingKind, detail: String| {
        checked.findings.push(Finding { kind, key: PENDING_KEY.to_owned(), detail });
    };
    for entry in &log.entries {
        let event = match entry {
            Err(Unreadable(line)) => {
                let shown: String = line.chars().take(200).collect();
                find(FindingKind::PendingModified, format!("an entry that is no sealed event: {shown:?}"));
                continue;
            }
            Ok(event) => event,
        };
        if event.seq > next {
            find(FindingKind::PendingMissing, missing(next, event.seq - 1));
        } else if event.seq < next {
            find(FindingKind::PendingModified, format!("event {} is out of order (after {})", event.seq, next - 1));
        }
        next = next.max(event.seq + 1);
        if !sealer.verifies(&event.json, &event.mac) {
            find(FindingKind::PendingModified, format!("event {}: its seal does not verify (edited)", event.seq));
            continue;
        }
        match serde_json::from_str::<AuditEvent>(&event.json) {
            Ok(parsed) => checked.events.push((Some(event.seq), parsed)),
            Err(error) => {
                find(FindingKind::PendingModified, format!("event {}: sealed but unreadable: {error}", event.seq))
            }
        }
    }
    if log.complete && log.marks.last_seq >= next {
        find(FindingKind::PendingMissing, missing(next, log.marks.last_seq));
        next = log.marks.last_seq + 1;
    }
    checked.through = next - 1;
    checked
}

fn missing(from: u64, to: u64) -> String {
    if from == to {
        format!("event {from} is missing (deleted)")
    } else {
        format!("events {from} to {to} are missing (deleted)")
    }
}

/// The event a shipper writes for a finding, so the bucket keeps it.
fn tampered(finding: &Finding) -> AuditEvent {
    let actor = Actor { principal: "system".to_owned(), method: "audit-shipper".to_owned(), via: None };
    let name = match finding.kind {
        FindingKind::PendingMissing => "pending_missing",
        _ => "pending_modified",
    };
    AuditEvent::new(PENDING_TAMPERED, actor, ObjectRef::new("audit-log", PENDING_KEY))
        .change(None::<&()>, Some(&serde_json::json!({ "finding": name })))
        .reason(finding.detail.clone())
        .after_the_fact()
}

/// Ships pending events while this process runs.
pub fn spawn(queue: RunQueue, trail: Arc<AuditTrail>, sealer: Sealer) {
    tokio::spawn(async move {
        let holder = trail.stream().to_owned();
        loop {
            let wait = match ship_once(&queue, &trail, &sealer, &holder).await {
                // A full batch: more is waiting. Otherwise let the next
                // segment gather events (they are durable in Redis
                // meanwhile): a few bucket writes a second at 1,000 runs a
                // second, not one per handful of events.
                Ok(Shipped::Some { full: true }) => Duration::ZERO,
                Ok(Shipped::Some { full: false }) => IDLE,
                Ok(Shipped::Nothing) => IDLE,
                Ok(Shipped::NotHolder) => RETRY,
                Err(error) => {
                    tracing::error!(%error, "shipping pending audit events failed; retrying");
                    RETRY
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
}

enum Shipped {
    /// `full`: a whole batch was shipped.
    Some {
        full: bool,
    },
    Nothing,
    NotHolder,
}

async fn ship_once(queue: &RunQueue, trail: &AuditTrail, sealer: &Sealer, holder: &str) -> anyhow::Result<Shipped> {
    if !queue.audit_ship_lease(holder, LEASE).await? {
        return Ok(Shipped::NotHolder);
    }
    let log = queue.pending_audit(BATCH).await?;
    let oldest = log.entries.iter().find_map(|e| e.as_ref().ok()).map(|e| e.at_ms);
    let age = oldest.map_or(0, |at| common::audit::now_ms().saturating_sub(at));
    platform::metrics::global().audit_pending_age.set(age as f64 / 1000.0);
    let Some(last_line) = log.last_line.clone() else {
        return Ok(Shipped::Nothing);
    };
    let checked = check(&log, sealer);
    let mut events = checked.events;
    for finding in &checked.findings {
        tracing::error!(detail = %finding.detail, "the pending audit log was tampered with; recorded in the trail");
        events.push((None, tampered(finding)));
    }
    trail.record_shipped(&events).await?;
    if !queue.trim_shipped(holder, checked.entries, &last_line, checked.through).await? {
        return Ok(Shipped::NotHolder);
    }
    Ok(Shipped::Some { full: checked.entries >= BATCH })
}

/// Findings about the pending log now, for `GET /v1/audit/verify`, and how
/// many entries were read.
pub async fn verify(queue: &RunQueue, sealer: &Sealer) -> Result<(usize, Vec<Finding>), store::QueueError> {
    // The log holds at most what arrives within the ship delay.
    let log = queue.pending_audit(usize::MAX / 2).await?;
    let checked = check(&log, sealer);
    Ok((checked.entries, checked.findings))
}

/// Waits, up to `limit`, until every event numbered now has been shipped.
pub async fn wait_shipped(queue: &RunQueue, limit: Duration) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let target = queue.pending_marks().await?.last_seq;
    loop {
        let marks = queue.pending_marks().await?;
        if marks.shipped_through >= target {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "events {} to {target} were not shipped within {limit:?}",
            marks.shipped_through + 1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
