//! Live logs over Server-Sent Events: a client that joins mid-run and
//! reconnects with `Last-Event-ID` reads every line once, in order, and
//! then the run's final state.

use std::time::Duration;

use serde_json::Value;

/// Sixteen numbered lines over about six seconds.
const COUNT: &str = "for i in $(seq 1 16); do echo line-$i; sleep 0.4; done";

#[derive(Debug)]
struct Event {
    id: Option<String>,
    kind: String,
    data: String,
}

/// Reads events from `response` until one satisfies `stop` (or the stream
/// ends); keep-alive comments are skipped.
async fn read_events(response: &mut reqwest::Response, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    loop {
        while let Some(at) = buffer.find("\n\n") {
            let block: String = buffer.drain(..at + 2).collect();
            let mut event = Event { id: None, kind: "message".to_owned(), data: String::new() };
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(id) = line.strip_prefix("id: ") {
                    event.id = Some(id.to_owned());
                } else if let Some(kind) = line.strip_prefix("event: ") {
                    event.kind = kind.to_owned();
                } else if let Some(line) = line.strip_prefix("data: ") {
                    data.push(line);
                }
            }
            if data.is_empty() {
                continue;
            }
            event.data = data.join("\n");
            let done = stop(&event);
            events.push(event);
            if done {
                return events;
            }
        }
        let chunk = tokio::time::timeout(Duration::from_secs(60), response.chunk()).await.expect("an event in time");
        match chunk.expect("the stream") {
            Some(bytes) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            None => return events,
        }
    }
}

async fn subscribe(app: &tests::TestApp, id: &str, after: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&format!("/v1/runs/{id}/logs")))
        .bearer_auth(&app.token)
        .header("accept", "text/event-stream");
    if let Some(after) = after {
        request = request.header("last-event-id", after);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

/// The log text the events carry, in order.
fn text(events: &[Event]) -> String {
    events.iter().filter(|e| e.kind == "log").map(|e| e.data.as_str()).collect()
}

#[tokio::test]
async fn a_client_joining_mid_run_gets_every_line_after_its_last_event_once_then_the_final_state() {
    let app = tests::spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", COUNT)]).await;
    let repo = app.repo(&[("README.md", b"# Count\n")]);
    let worker = app.spawn_worker().await;
    let id = app.create_run(&repo, "count").await;
    tests::eventually(Duration::from_secs(120), "the run printed its third line", || async {
        let logs = app.get(&format!("/v1/runs/{id}/logs")).await.text().await.unwrap();
        if logs.contains("line-3\n") { Ok(()) } else { Err(logs) }
    })
    .await;

    // Joins mid-run, reads to line 8, leaves.
    let mut first = subscribe(&app, &id, None).await;
    let seen = read_events(&mut first, |e| e.data.contains("line-8\n")).await;
    drop(first);
    let last = seen.last().and_then(|e| e.id.clone()).expect("log events carry ids");
    // Comes back after what it saw: the rest, then the end.
    let mut second = subscribe(&app, &id, Some(&last)).await;
    let rest = read_events(&mut second, |e| e.kind == "end").await;
    worker.shutdown().await;

    let end = rest.last().expect("events");
    assert_eq!(end.kind, "end", "{rest:?}");
    let end: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!((end["state"].as_str(), end["stop_reason"]["kind"].as_str()), (Some("succeeded"), Some("completed")));
    let all = format!("{}{}", text(&seen), text(&rest));
    let mut at = 0;
    for n in 1..=16 {
        let line = format!("line-{n}\n");
        assert_eq!(all.matches(&line).count(), 1, "line {n} is not there exactly once:\n{all}");
        let found = all.find(&line).unwrap();
        assert!(found >= at, "line {n} is out of order:\n{all}");
        at = found;
    }
    // Ids only go forward, and the second stream started after the first.
    let ids: Vec<(u64, u64)> = seen
        .iter()
        .chain(rest.iter())
        .filter_map(|e| e.id.as_deref()?.split_once('-').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // A finished run's stream is its whole tail, then the end, at once.
    let mut again = subscribe(&app, &id, None).await;
    let replay = read_events(&mut again, |e| e.kind == "end").await;
    assert_eq!(text(&replay), all);
    // A resume point the stream never sent is refused, saying which header.
    let bad = app
        .client
        .get(app.url(&format!("/v1/runs/{id}/logs")))
        .bearer_auth(&app.token)
        .header("accept", "text/event-stream")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let problem: Value = bad.json().await.unwrap();
    assert!(problem.to_string().contains("Last-Event-ID"), "{problem}");
}

/// A worker started the way a service manager starts it (stderr a file)
/// logs JSON lines, and every line about a run names the run, and inside
/// the run's span its tenant too.
#[tokio::test]
async fn a_worker_process_logs_json_lines_that_name_the_run_and_its_tenant() {
    let app = tests::spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo hello")]).await;
    let repo = app.repo(&[("README.md", b"# Hello\n")]);
    let worker = app.spawn_worker_process();
    let id = app.create_run(&repo, "hello").await;
    let (run, _) = app.wait_for_success(&id).await;
    let text = worker.log_text();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let about: Vec<&Value> = lines.iter().filter(|l| l.to_string().contains(&id)).collect();
    // At least its claim (inside the run's span) and its end (a field).
    assert!(about.len() >= 2, "{text}");
    for line in &about {
        let named = line["run_id"] == id.as_str() || line["span"]["run_id"] == id.as_str();
        assert!(named, "a line about the run does not name it: {line}");
    }
    let in_run: Vec<&&Value> = about.iter().filter(|l| l["span"]["name"] == "run").collect();
    assert!(!in_run.is_empty(), "{text}");
    for line in in_run {
        assert_eq!(line["span"]["tenant"], run["tenant"], "{line}");
    }
}

/// A run that stops before its agent prints anything (its base ref is not
/// there) has only its steps in the live tail: the stream still ends with
/// the stored log, which says why.
#[tokio::test]
async fn a_run_stopped_before_its_agent_streams_its_steps_then_its_stored_log() {
    let app = tests::spawn_app(&[("PADDOCK_AGENTS__DEFAULT__COMMAND", "echo never")]).await;
    let repo = app.repo(&[("README.md", b"# Gone\n")]);
    let worker = app.spawn_worker().await;
    let body = serde_json::json!({"repository": repo, "base_ref": "no-such-branch", "task": {"title": "t"}});
    let response = app.post_run(&body).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mut stream = subscribe(&app, &id, None).await;
    let events = read_events(&mut stream, |e| e.kind == "end").await;
    worker.shutdown().await;
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(events.iter().any(|e| e.kind == "phase" && e.data.contains("checkout")), "{kinds:?}");
    let stored = events.iter().find(|e| e.kind == "stored").unwrap_or_else(|| panic!("no stored log: {events:?}"));
    assert!(stored.data.contains("checkout failed"), "{}", stored.data);
    assert!(stored.id.is_none(), "nothing to resume at");
    let end: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(end["stop_reason"]["kind"], "checkout_failed", "{end}");
}
