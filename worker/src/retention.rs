//! The retention sweeper: deletes stored objects past their class's
//! retention (`retention.*_days`), except what a legal hold covers.
//!
//! Run objects (`runs/<id>/<file>`) are judged one by one by their class and
//! age; a run is held when a hold names it or its tenant (read from the run's
//! record in Redis, else from the object's `tenant` metadata; a run whose
//! tenant is unknown is kept while any tenant hold is active). The audit
//! trail is trimmed a digest at a time, oldest first, each digest after the
//! segments it lists, so what remains still verifies; a digest whose
//! segments hold an event about a held run or tenant stops its stream's
//! trimming. Export bundles expire whole. The sweep records what it is about
//! to delete in the audit trail first; when it cannot, nothing is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::audit::{Actor, AuditEvent, ObjectRef};
use common::config::RetentionConfig;
pub use common::records::SweepReport;
use common::retention::{LegalHold, RetentionClass, run_object};
use common::{RunId, audit::now_ms};
use tokio_util::sync::CancellationToken;

use audit_trail::{AuditTrail, ChainedEvent, SignedDigest, signs, stream_and_number};
use objstore::{ObjectStore, S3Store, StoreError};
use store::{QueueError, RunQueue};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Runs named in a sweep's audit event; the counts are always complete.
const RUNS_LISTED: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("the sweep could not be audited, so nothing was deleted: {0}")]
    Audit(#[from] audit_trail::AuditError),
    #[error("legal holds changed while the sweep planned; nothing was deleted, the next sweep plans again")]
    HoldsChanged,
}

pub struct Sweeper {
    pub store: S3Store,
    pub queue: RunQueue,
    pub trail: Arc<AuditTrail>,
    pub retention: RetentionConfig,
    pub audit_prefix: String,
    pub export_prefix: String,
    /// Who sweeps (the worker's name), for the audit event.
    pub by: String,
}

struct Holds(Vec<LegalHold>);

impl Holds {
    fn any_tenant(&self) -> bool {
        self.0.iter().any(|h| matches!(h.target, common::retention::HoldTarget::Tenant(_)))
    }

    fn cover(&self, run: Option<&RunId>, tenant: Option<&str>) -> bool {
        self.0.iter().any(|h| h.target.covers(run, tenant))
    }

    /// Whether an audit event is about something held.
    fn cover_event(&self, event: &AuditEvent) -> bool {
        let run = (event.object.kind == "run").then(|| event.object.id.parse::<RunId>().ok()).flatten();
        self.cover(run.as_ref(), event.object.tenant.as_deref())
    }
}

/// Keys to delete, in order, with their class.
#[derive(Default)]
struct Plan {
    keys: Vec<(String, RetentionClass)>,
    held: usize,
    runs: BTreeSet<RunId>,
    /// Per audit stream, the last digest removed (recorded, signed, first).
    trims: Vec<(String, u64)>,
}

fn active_holds(holds: Vec<LegalHold>) -> Holds {
    Holds(holds.into_iter().filter(LegalHold::active).collect())
}

fn expired(retention: &RetentionConfig, class: RetentionClass, modified_ms: u64, now_ms: u64) -> bool {
    retention.days(class).is_some_and(|d| modified_ms.saturating_add(u64::from(d) * DAY_MS) <= now_ms)
}

impl Sweeper {
    /// Deletes what is past retention at `now_ms` and not held.
    pub async fn sweep(&self, now_ms: u64) -> Result<SweepReport, SweepError> {
        let identity = self.queue.identity();
        let holds = active_holds(identity.holds().await?);
        // The provider policy says how long model-call metadata is kept.
        let retention = self.retention.with_policy(self.queue.llm_policy().await?.as_ref());
        let mut plan = Plan::default();
        self.plan_runs(&retention, &holds, now_ms, &mut plan).await?;
        self.plan_audit(&retention, &holds, now_ms, &mut plan).await?;
        for (key, modified) in self.store.list(&format!("{}/", self.export_prefix)).await? {
            if expired(&retention, RetentionClass::Exports, modified, now_ms) {
                plan.keys.push((key, RetentionClass::Exports));
            }
        }
        let mut report = SweepReport { at_ms: now_ms, held: plan.held, ..SweepReport::default() };
        for (_, class) in &plan.keys {
            *report.deleted.entry(*class).or_default() += 1;
        }
        report.runs = plan.runs.iter().take(RUNS_LISTED).copied().collect();
        if plan.keys.is_empty() {
            identity.record_sweep(&report).await?;
            return Ok(report);
        }
        // A hold placed while this sweep planned wins: plan again next time.
        if active_holds(identity.holds().await?).0 != holds.0 {
            return Err(SweepError::HoldsChanged);
        }
        let actor = Actor { principal: "system".into(), method: "worker".into(), via: Some(self.by.clone()) };
        let event = AuditEvent::new("retention.sweep", actor, ObjectRef::new("retention", "sweep"))
            .reason("past the configured retention")
            .change(None::<&()>, Some(&report));
        self.trail.record(std::slice::from_ref(&event)).await?;
        if let Err(error) = identity.index_audit(std::slice::from_ref(&event)).await {
            tracing::warn!(%error, "the sweep's audit event is stored but not indexed");
        }
        // The verifier accounts for removed audit objects by these records.
        for (stream, through) in &plan.trims {
            self.trail.record_trim(stream, *through).await?;
        }
        for (key, _) in &plan.keys {
            self.store.delete(key).await?;
        }
        identity.record_sweep(&report).await?;
        Ok(report)
    }

    async fn plan_runs(
        &self,
        retention: &RetentionConfig,
        holds: &Holds,
        now_ms: u64,
        plan: &mut Plan,
    ) -> Result<(), SweepError> {
        let mut past: BTreeMap<RunId, Vec<(String, RetentionClass)>> = BTreeMap::new();
        for (key, modified) in self.store.list("runs/").await? {
            let Some((run, kind)) = run_object(&key) else { continue };
            if expired(retention, kind.class(), modified, now_ms) {
                past.entry(run).or_default().push((key, kind.class()));
            }
        }
        let tenant_holds = holds.any_tenant();
        for (run, keys) in past {
            let tenant = if tenant_holds { self.tenant_of(run, &keys).await? } else { None };
            let unknown_tenant = tenant.is_none() && tenant_holds;
            if unknown_tenant || holds.cover(Some(&run), tenant.as_deref()) {
                plan.held += keys.len();
                continue;
            }
            plan.runs.insert(run);
            plan.keys.extend(keys);
        }
        Ok(())
    }

    /// The run's tenant: its record in Redis, else the `tenant` metadata
    /// the worker stored with its objects.
    async fn tenant_of(&self, run: RunId, keys: &[(String, RetentionClass)]) -> Result<Option<String>, SweepError> {
        if let Some(record) = self.queue.get(run).await? {
            return Ok(Some(record.spec.tenant));
        }
        for (key, _) in keys {
            if let Some(tenant) = self.store.metadata(key, "tenant").await? {
                return Ok(Some(tenant));
            }
        }
        Ok(None)
    }

    async fn plan_audit(
        &self,
        retention: &RetentionConfig,
        holds: &Holds,
        now_ms: u64,
        plan: &mut Plan,
    ) -> Result<(), SweepError> {
        let mut streams: BTreeMap<String, BTreeMap<u64, (String, u64)>> = BTreeMap::new();
        for (key, modified) in self.store.list(&format!("{}/digests/", self.audit_prefix)).await? {
            if let Some((stream, n)) = stream_and_number(&key) {
                streams.entry(stream).or_default().insert(n, (key, modified));
            }
        }
        let segments = format!("{}/segments/", self.audit_prefix);
        for (stream, digests) in streams {
            let mut through = None;
            for (n, (key, modified)) in digests {
                if !expired(retention, RetentionClass::Audit, modified, now_ms) {
                    break;
                }
                let Some(bytes) = self.store.get(&key).await? else { continue };
                // Only a well-signed digest naming our own segments is trusted
                // with deletions.
                let digest = serde_json::from_slice::<SignedDigest>(&bytes).ok().filter(|d| {
                    d.body.segments.iter().all(|s| s.key.starts_with(&segments))
                        && signs(&d.body, &d.body.public_key, &d.signature)
                });
                let Some(digest) = digest else { break };
                if !holds.0.is_empty() && self.holds_events(holds, &digest).await? {
                    plan.held += digest.body.segments.len() + 1;
                    break;
                }
                plan.keys.extend(digest.body.segments.iter().map(|s| (s.key.clone(), RetentionClass::Audit)));
                plan.keys.push((key, RetentionClass::Audit));
                through = Some(n);
            }
            if let Some(through) = through {
                plan.trims.push((stream, through));
            }
        }
        Ok(())
    }

    /// Whether any segment of `digest` holds an event about something held.
    async fn holds_events(&self, holds: &Holds, digest: &SignedDigest) -> Result<bool, SweepError> {
        for segment in &digest.body.segments {
            let Some(bytes) = self.store.get(&segment.key).await? else { continue };
            let events = bytes.split(|b| *b == b'\n').filter_map(|l| serde_json::from_slice::<ChainedEvent>(l).ok());
            if events.into_iter().any(|e| holds.cover_event(&e.event)) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Sweeps every `interval` while `stop` is not cancelled; a Redis lock makes
/// one worker of the fleet do it per interval.
pub fn spawn(sweeper: Sweeper, interval: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match sweeper.queue.identity().try_lock("retention-sweep", interval).await {
                Ok(true) => match sweeper.sweep(now_ms()).await {
                    Ok(report) => tracing::info!(deleted = ?report.deleted, held = report.held, "retention sweep"),
                    Err(error) => tracing::error!(%error, "retention sweep failed; retrying next interval"),
                },
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "retention sweep lock unavailable"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}
