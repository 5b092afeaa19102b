//! The load generator: an open model at a fixed offered rate (each request
//! leaves at its scheduled time whatever the others do, and its latency is
//! counted from that time, so queueing shows instead of hiding), latencies
//! in an HDR histogram; and a closed loop for saturation throughput.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Latency percentiles in ms, and what was achieved.
#[derive(Debug, Clone)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub count: u64,
    pub errors: u64,
    pub seconds: f64,
}

impl Latency {
    pub fn throughput(&self) -> f64 {
        self.count as f64 / self.seconds
    }

    pub fn json(&self) -> Value {
        json!({"p50_ms": self.p50, "p99_ms": self.p99, "p999_ms": self.p999, "max_ms": self.max,
            "requests": self.count, "errors": self.errors, "seconds": self.seconds, "per_second": self.throughput()})
    }
}

fn summarise(histogram: &Histogram<u64>, errors: u64, seconds: f64) -> Latency {
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        p50: ms(0.5),
        p99: ms(0.99),
        p999: ms(0.999),
        max: histogram.max() as f64 / 1000.0,
        count: histogram.len(),
        errors,
        seconds,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// `total` requests at `rate` per second; `request(i)` performs request
/// `i` and says whether it succeeded.
pub async fn fixed_rate<F, Fut>(rate: u32, total: u32, request: F) -> Latency
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let timed = move |i| {
        let sent = request(i);
        async move { sent.await.then_some(Duration::ZERO) }
    };
    fixed_rate_less(rate, total, timed).await.0
}

/// As [`fixed_rate`], where each request also reports the part of its
/// time spent elsewhere (a provider behind the server measured):
/// `request(i)` gives that part, or `None` when it failed. Returns the
/// latencies and, per request, the time from its sending to its answer
/// less that part.
pub async fn fixed_rate_less<F, Fut>(rate: u32, total: u32, request: F) -> (Latency, Latency)
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Duration>> + Send + 'static,
{
    let request = Arc::new(request);
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval * i;
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(scheduled).await;
            let sent = tokio::time::Instant::now();
            let elsewhere = request(i).await;
            (elsewhere, scheduled.elapsed(), sent.elapsed())
        }));
    }
    let (mut latencies, mut own) = (histogram(), histogram());
    let mut errors = 0;
    for task in tasks {
        let (elsewhere, took, from_send) = task.await.expect("request task");
        errors += u64::from(elsewhere.is_none());
        latencies.saturating_record(took.as_micros() as u64);
        // From when it was sent: the timer's lateness in waking the
        // request (up to its 1 ms tick) is the load generator's, not the
        // server's.
        own.saturating_record(from_send.saturating_sub(elsewhere.unwrap_or_default()).as_micros() as u64);
    }
    let seconds = start.elapsed().as_secs_f64();
    (summarise(&latencies, errors, seconds), summarise(&own, errors, seconds))
}

/// `concurrency` clients each sending requests back to back for `duration`:
/// the most the server does with that many connections.
pub async fn saturate<F, Fut>(concurrency: u32, duration: Duration, request: F) -> Latency
where
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let request = Arc::new(request);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..concurrency {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut errors = 0;
            let mut i = client;
            while started.elapsed() < duration {
                let sent = Instant::now();
                errors += u64::from(!request(i).await);
                latencies.saturating_record(sent.elapsed().as_micros() as u64);
                i += concurrency;
            }
            (latencies, errors)
        }));
    }
    let mut all = histogram();
    let mut errors = 0;
    for task in tasks {
        let (latencies, failed) = task.await.expect("client task");
        all.add(&latencies).expect("same bounds");
        errors += failed;
    }
    summarise(&all, errors, started.elapsed().as_secs_f64())
}
