//! Prometheus metrics: one catalogue of names ([`names`]), one registry per
//! process ([`global`]), rendered in the text exposition format by the
//! API's `GET /metrics` and by [`serve`] on workers and the standalone
//! gateway (`telemetry.metrics_listen`).
//!
//! Labels stay low-cardinality: tenant, provider, state, reason, route,
//! step, never a run id, a repository or a person.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric's name, as scraped (counters gain `_total`).
pub mod names {
    pub const RUNS_ACCEPTED: &str = "paddock_runs_accepted_total";
    pub const RUNS_FINISHED: &str = "paddock_runs_finished_total";
    pub const QUEUE_RUNS: &str = "paddock_queue_runs";
    pub const QUEUE_BAND_RUNS: &str = "paddock_queue_band_runs";
    pub const QUEUE_DISPATCHABLE: &str = "paddock_queue_dispatchable";
    pub const QUEUE_OLDEST_AGE: &str = "paddock_queue_oldest_queued_age_seconds";
    pub const QUEUE_DEAD_LETTERS: &str = "paddock_queue_dead_letters";
    pub const CLAIMS: &str = "paddock_claims_total";
    pub const LEASE_REAPS: &str = "paddock_lease_reaps_total";
    pub const RETRIES: &str = "paddock_run_retries_total";
    pub const DEAD_LETTERED: &str = "paddock_runs_dead_lettered_total";
    pub const SANDBOX_START: &str = "paddock_sandbox_start_step_seconds";
    pub const RUNS_RUNNING: &str = "paddock_worker_runs_running";
    pub const SLOTS_FREE: &str = "paddock_worker_slots_free";
    pub const SANDBOXES_WARM: &str = "paddock_worker_sandboxes_warm";
    pub const GATEWAY_CALLS: &str = "paddock_gateway_calls_total";
    pub const GATEWAY_DURATION: &str = "paddock_gateway_call_seconds";
    pub const GATEWAY_TOKENS: &str = "paddock_gateway_tokens_total";
    pub const GATEWAY_COST: &str = "paddock_gateway_cost_usd_total";
    pub const GATEWAY_REFUSALS: &str = "paddock_gateway_refusals_total";
    pub const REDACTIONS: &str = "paddock_redactions_total";
    pub const EGRESS: &str = "paddock_egress_decisions_total";
    pub const AUDIT_WRITE: &str = "paddock_audit_write_seconds";
    pub const AUDIT_FAILURES: &str = "paddock_audit_write_failures_total";
    pub const AUDIT_UNDIGESTED: &str = "paddock_audit_undigested_segments";
    pub const AUDIT_PENDING_AGE: &str = "paddock_audit_pending_oldest_seconds";
    pub const HTTP_REQUESTS: &str = "paddock_http_request_seconds";
}

/// A metric's labels, in order.
pub type Labels = Vec<(&'static str, String)>;

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// This process's metrics.
pub struct Metrics {
    registry: Registry,
    /// tenant, source (`api`, `webhook`), state (`queued`, `waiting`, `awaiting_approval`).
    pub runs_accepted: Family<Labels, Counter>,
    /// tenant, state, reason (the stop reason's kind).
    pub runs_finished: Family<Labels, Counter>,
    /// state, tenant; read from Redis when scraped (API).
    pub queue_runs: Family<Labels, Gauge>,
    /// band, state, tenant; read from Redis when scraped (API).
    pub queue_band_runs: Family<Labels, Gauge>,
    /// tenant (`*` for all): queued runs a claim could take now.
    pub queue_dispatchable: Family<Labels, Gauge>,
    pub queue_oldest_age: Gauge<f64, AtomicU64>,
    pub queue_dead_letters: Gauge,
    /// tenant.
    pub claims: Family<Labels, Counter>,
    pub lease_reaps: Counter,
    /// tenant: attempts sent back to the queue after an infrastructure failure.
    pub retries: Family<Labels, Counter>,
    /// tenant: runs failed for good after their last attempt.
    pub dead_lettered: Family<Labels, Counter>,
    /// step (`clone`, `volume`, `network`, `container`, `verify`, `start`, ...).
    pub sandbox_start: Histograms,
    pub runs_running: Gauge,
    pub slots_free: Gauge,
    /// Started sandboxes in this worker's warm pool, waiting for a run.
    pub sandboxes_warm: Gauge,
    /// tenant, provider, status (HTTP status class: `2xx`, `4xx`, `5xx`).
    pub gateway_calls: Family<Labels, Counter>,
    /// provider, part (`total`, `upstream`, `overhead`).
    pub gateway_duration: Histograms,
    /// tenant, provider, direction (`in`, `out`).
    pub gateway_tokens: Family<Labels, Counter>,
    /// tenant, provider.
    pub gateway_cost: Family<Labels, Counter<f64, AtomicU64>>,
    /// tenant, reason.
    pub gateway_refusals: Family<Labels, Counter>,
    /// rule.
    pub redactions: Family<Labels, Counter>,
    /// preset, decision (`allow`, `deny`).
    pub egress: Family<Labels, Counter>,
    /// writer (`api`, `worker`).
    pub audit_write: Histograms,
    /// writer.
    pub audit_failures: Family<Labels, Counter>,
    /// writer: segments written and not yet covered by a signed digest.
    pub audit_undigested: Family<Labels, Gauge>,
    /// How long the oldest audit event in Redis's pending log has waited
    /// to be shipped to the bucket (set by the shipper); runs are refused
    /// past `audit.max_ship_delay_seconds`.
    pub audit_pending_age: Gauge<f64, AtomicU64>,
    /// route (the pattern, not the path), method, status.
    pub http_requests: Histograms,
}

/// 1 ms to about 16 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// 10 ms to about 5 min (sandbox steps, upstream calls).
fn slow() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        // `Registry::register` takes the name without the suffix the
        // encoder adds to counters.
        let bare = |name: &'static str| name.strip_suffix("_total").unwrap_or(name);
        macro_rules! metric {
            ($name:expr, $help:expr, $metric:expr) => {{
                let metric = $metric;
                registry.register(bare($name), $help, metric.clone());
                metric
            }};
        }
        use names::*;
        Self {
            runs_accepted: metric!(RUNS_ACCEPTED, "Runs accepted, by tenant, source and state", Family::default()),
            runs_finished: metric!(RUNS_FINISHED, "Runs finished, by tenant, state and stop reason", Family::default()),
            queue_runs: metric!(
                QUEUE_RUNS,
                "Runs in each state, by tenant (read from Redis when scraped)",
                Family::default()
            ),
            queue_band_runs: metric!(
                QUEUE_BAND_RUNS,
                "Runs in each state, by priority band and tenant (read from Redis when scraped)",
                Family::default()
            ),
            queue_dispatchable: metric!(
                QUEUE_DISPATCHABLE,
                "Queued runs a claim could take now, by tenant (`*`: all)",
                Family::default()
            ),
            queue_oldest_age: metric!(QUEUE_OLDEST_AGE, "Age of the oldest queued run", Gauge::default()),
            queue_dead_letters: metric!(QUEUE_DEAD_LETTERS, "Runs kept in the dead-letter set", Gauge::default()),
            claims: metric!(CLAIMS, "Runs claimed by this worker, by tenant", Family::default()),
            lease_reaps: metric!(LEASE_REAPS, "Expired leases this process reaped", Counter::default()),
            retries: metric!(
                RETRIES,
                "Attempts sent back after an infrastructure failure, by tenant",
                Family::default()
            ),
            dead_lettered: metric!(DEAD_LETTERED, "Runs failed after their last attempt, by tenant", Family::default()),
            sandbox_start: metric!(
                SANDBOX_START,
                "Time of each start-up step of a run, by step",
                Histograms::new_with_constructor(slow)
            ),
            runs_running: metric!(RUNS_RUNNING, "Runs this worker is running", Gauge::default()),
            slots_free: metric!(SLOTS_FREE, "Run slots free on this worker", Gauge::default()),
            sandboxes_warm: metric!(
                SANDBOXES_WARM,
                "Started, verified sandboxes in this worker's warm pool, waiting for a run",
                Gauge::default()
            ),
            gateway_calls: metric!(
                GATEWAY_CALLS,
                "Model calls through the gateway, by tenant, provider and status class",
                Family::default()
            ),
            gateway_duration: metric!(
                GATEWAY_DURATION,
                "Model call time, by provider and part (total, upstream, overhead)",
                Histograms::new_with_constructor(slow)
            ),
            gateway_tokens: metric!(GATEWAY_TOKENS, "Tokens, by tenant, provider and direction", Family::default()),
            gateway_cost: metric!(GATEWAY_COST, "Cost in US dollars, by tenant and provider", Family::default()),
            gateway_refusals: metric!(
                GATEWAY_REFUSALS,
                "Calls the gateway refused, by tenant and reason",
                Family::default()
            ),
            redactions: metric!(REDACTIONS, "Secrets redacted, by rule", Family::default()),
            egress: metric!(EGRESS, "Sandbox egress decisions, by policy preset and decision", Family::default()),
            audit_write: metric!(
                AUDIT_WRITE,
                "Time to store an audit event, by writer",
                Histograms::new_with_constructor(latency)
            ),
            audit_failures: metric!(
                AUDIT_FAILURES,
                "Audit events that could not be stored, by writer",
                Family::default()
            ),
            audit_undigested: metric!(
                AUDIT_UNDIGESTED,
                "Audit segments not yet covered by a signed digest, by writer",
                Family::default()
            ),
            audit_pending_age: metric!(
                AUDIT_PENDING_AGE,
                "Age of the oldest audit event not yet shipped to the bucket (seconds)",
                Gauge::default()
            ),
            http_requests: metric!(
                HTTP_REQUESTS,
                "API request time, by route pattern, method and status",
                Histograms::new_with_constructor(latency)
            ),
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// This process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Labels from pairs.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// Serves `GET /metrics` on `listener` until `stop` (workers and the
/// standalone gateway; the API serves it on its own port).
pub fn serve(listener: tokio::net::TcpListener, stop: tokio_util::sync::CancellationToken) {
    use http_body_util::BodyExt;
    let bound = crate::listener::Bound::new("metrics", 16);
    crate::listener::accept_until(listener, stop, bound, |stream| async move {
        let service = hyper::service::service_fn(|request: hyper::Request<hyper::body::Incoming>| async move {
            let (status, body) = if request.uri().path() == "/metrics" {
                (200, global().render())
            } else {
                (404, "only /metrics here\n".to_owned())
            };
            let body = http_body_util::Full::new(bytes::Bytes::from(body)).map_err(|never| match never {}).boxed();
            let response = hyper::Response::builder()
                .status(status)
                .header("content-type", CONTENT_TYPE)
                .body(body)
                .unwrap_or_default();
            Ok::<_, std::convert::Infallible>(response)
        });
        crate::listener::serve_http(stream, service).await;
    });
}

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
