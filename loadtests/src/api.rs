//! API latency and throughput: `POST /v1/runs` (auth, validation, policy
//! lookup, the sealed audit event and the enqueue script, durable before
//! 202 by Redis's fsync) and `GET /v1/runs/{id}` on the real API, against a
//! bare actix-web handler on the same machine (the framework's ceiling),
//! beside one Redis write fsynced before its reply (the durability floor).

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;

use crate::load::{fixed_rate, saturate};
use crate::{Report, Row};

const RATE: u32 = 1000;
const REQUESTS: u32 = 5000;
const CLIENTS: u32 = 64;
const SATURATION: Duration = Duration::from_secs(5);

pub async fn run() -> Report {
    let app = Arc::new(tests::spawn_app(&[]).await);
    let repo = "acme/bench".to_owned();
    let baseline = bare_handler().await;
    let client = reqwest::Client::new();

    let post = {
        let (app, client, repo) = (app.clone(), client.clone(), repo.clone());
        move |i: u32| {
            let (app, client, repo) = (app.clone(), client.clone(), repo.clone());
            async move {
                let body = json!({"repository": repo, "base_ref": "main", "task": {"title": format!("bench {i}")}});
                let sent = client.post(app.url("/v1/runs")).bearer_auth(&app.token).json(&body).send().await;
                sent.is_ok_and(|r| r.status().as_u16() == 202)
            }
        }
    };
    let bare_post = {
        let (client, url) = (client.clone(), format!("{baseline}/v1/runs"));
        move |i: u32| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let body =
                    json!({"repository": "acme/bench", "base_ref": "main", "task": {"title": format!("bench {i}")}});
                client.post(&url).bearer_auth("t").json(&body).send().await.is_ok_and(|r| r.status().as_u16() == 202)
            }
        }
    };
    // Warm both, then measure in turn.
    fixed_rate(RATE, 1000, post.clone()).await;
    fixed_rate(RATE, 1000, bare_post.clone()).await;
    let before = crate::scheduling::command_calls();
    let ours = fixed_rate(RATE, REQUESTS, post.clone()).await;
    // What Redis did per accepted run (the shipper's work included).
    let by_command = crate::scheduling::per_run(&before, REQUESTS);
    let commands: f64 = by_command.iter().map(|(_, n)| n).sum();
    let bare = fixed_rate(RATE, REQUESTS, bare_post.clone()).await;
    // The same load while /metrics is scraped every second (Prometheus
    // usually comes every 15 to 60 s): what being watched costs runs.
    let scraping = scrape(app.url("/metrics"), Duration::from_secs(1));
    let scraped = fixed_rate(RATE, REQUESTS, post.clone()).await;
    let (scrapes, scrape_took) = scraping.stop().await;
    let scrape_ms = scrape_took.as_secs_f64() * 1000.0;
    let ours_saturated = saturate(CLIENTS, SATURATION, post).await;
    let bare_saturated = saturate(CLIENTS, SATURATION, bare_post).await;

    let id = app.create_run(&repo, "read me").await;
    let get = {
        let (app, client, id) = (app.clone(), client.clone(), id.clone());
        move |_| {
            let (app, client, id) = (app.clone(), client.clone(), id.clone());
            async move {
                let got = client.get(app.url(&format!("/v1/runs/{id}"))).bearer_auth(&app.token).send().await;
                got.is_ok_and(|r| r.status().is_success())
            }
        }
    };
    let bare_get = {
        let (client, url) = (client.clone(), format!("{baseline}/v1/runs/{id}"));
        move |_| {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).bearer_auth("t").send().await.is_ok_and(|r| r.status().is_success()) }
        }
    };
    let ours_get = fixed_rate(RATE, REQUESTS, get).await;
    let bare_get = fixed_rate(RATE, REQUESTS, bare_get).await;
    let errors = ours.errors + ours_saturated.errors + ours_get.errors;
    assert_eq!(errors, 0, "the API failed requests under load");
    let fsync = fsynced_write();

    let rate = format!("{RATE} req/s");
    Report {
        name: "api",
        rows: vec![
            Row::ms(&format!("POST /v1/runs p50 at {rate}"), ours.p50, "bare actix handler", bare.p50),
            Row::ms(&format!("POST /v1/runs p99 at {rate}"), ours.p99, "bare actix handler", bare.p99),
            Row::ms(&format!("POST /v1/runs p99.9 at {rate}"), ours.p999, "bare actix handler", bare.p999),
            Row::ms(
                "one Redis write fsynced before its reply (appendfsync always, redis-benchmark SET, 1 client) p50",
                fsync.p50,
                "POST /v1/runs p50",
                ours.p50,
            ),
            Row::ms("one Redis write fsynced before its reply, p99", fsync.p99, "POST /v1/runs p99", ours.p99),
            Row::ms(
                &format!(
                    "POST /v1/runs p50 at {rate}, /metrics scraped every second ({scrapes} scrapes, {scrape_ms:.1} ms each)"
                ),
                scraped.p50,
                "not scraped",
                ours.p50,
            ),
            Row::ms(
                &format!("POST /v1/runs p99 at {rate}, /metrics scraped every second"),
                scraped.p99,
                "not scraped",
                ours.p99,
            ),
            Row::plain(
                "Redis commands per POST /v1/runs (scripts' inner commands and the shipper's included; by name in the JSON)",
                format!("{commands:.1}"),
            ),
            Row::per_second(
                &format!("POST /v1/runs throughput, {CLIENTS} clients"),
                ours_saturated.throughput(),
                "bare actix handler",
                bare_saturated.throughput(),
            ),
            Row::ms(&format!("GET /v1/runs/{{id}} p50 at {rate}"), ours_get.p50, "bare actix handler", bare_get.p50),
            Row::ms(&format!("GET /v1/runs/{{id}} p99 at {rate}"), ours_get.p99, "bare actix handler", bare_get.p99),
        ],
        data: json!({
            "post_fixed_rate": ours.json(), "bare_post_fixed_rate": bare.json(),
            "post_fixed_rate_scraped": scraped.json(), "scrapes": scrapes, "scrape_ms": scrape_ms,
            "post_saturated": ours_saturated.json(), "bare_post_saturated": bare_saturated.json(),
            "get_fixed_rate": ours_get.json(), "bare_get_fixed_rate": bare_get.json(),
            "fsynced_write_ms": {"p50": fsync.p50, "p99": fsync.p99},
            "redis_commands_per_post": commands,
            "redis_commands_per_post_by_name": by_command.iter().map(|(n, c)| json!([n, (c * 100.0).round() / 100.0])).collect::<Vec<_>>(),
        }),
    }
}

struct Fsync {
    p50: f64,
    p99: f64,
}

/// One client writing to the test Redis (`appendfsync always`): what one
/// fsynced write costs on this disk, the floor under a durable 202.
fn fsynced_write() -> Fsync {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-p", "6390", "-n", "500", "-c", "1", "--csv", "-t", "set"])
        .output()
        .expect("redis-benchmark (from the redis-tools package) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    // "SET","250.00","3.970","2.104","3.927","5.231","7.983","9.111":
    // test, rps, avg, min, p50, p95, p99, max (ms).
    let fields: Vec<f64> = text
        .lines()
        .find(|l| l.starts_with("\"SET\""))
        .unwrap_or_else(|| panic!("unexpected redis-benchmark output: {text}"))
        .split(',')
        .skip(1)
        .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
        .collect();
    Fsync { p50: fields[3], p99: fields[5] }
}

/// A scraper of `url` every `every`, until stopped.
struct Scraper {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(u64, Duration)>,
}

fn scrape(url: String, every: Duration) -> Scraper {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let (mut scrapes, mut took) = (0, Duration::ZERO);
        loop {
            let started = std::time::Instant::now();
            let got = client.get(&url).send().await;
            let text = match got {
                Ok(answer) if answer.status().is_success() => answer.text().await.unwrap_or_default(),
                other => panic!("scraping {url} failed: {other:?}"),
            };
            assert!(text.contains("paddock_"), "{url} serves no Paddock metric");
            took += started.elapsed();
            scrapes += 1;
            tokio::select! {
                _ = &mut stopped => return (scrapes, took / scrapes.max(1) as u32),
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
    Scraper { stop, task }
}

impl Scraper {
    /// How many scrapes there were, and their mean time.
    async fn stop(self) -> (u64, Duration) {
        let _ = self.stop.send(());
        self.task.await.expect("the scraper")
    }
}

/// The framework's ceiling: the same routes answering at once.
async fn bare_handler() -> String {
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/v1/runs",
                web::post().to(|body: web::Json<serde_json::Value>| async move {
                    let _ = body.into_inner();
                    HttpResponse::Accepted().json(json!({"id": "01m8fd2cj1x31jpkk0spht2y3j", "state": "queued"}))
                }),
            )
            .route(
                "/v1/runs/{id}",
                web::get().to(|| async { HttpResponse::Ok().json(json!({"id": "x", "state": "queued"})) }),
            )
    })
    .workers(2)
    .bind(("127.0.0.1", 0))
    .expect("bind the bare handler");
    let port = server.addrs()[0].port();
    tokio::spawn(server.run());
    format!("http://127.0.0.1:{port}")
}
