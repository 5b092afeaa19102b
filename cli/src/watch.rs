//! Following a run's live log (`GET /v1/runs/{id}/logs` as Server-Sent
//! Events): its output as the worker writes it, a line per step it begins,
//! and its end. A dropped connection resumes where it broke
//! (`Last-Event-ID`), so nothing is shown twice or lost.

use std::io::Write;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Api, Exit, Failure, Result, segment};

/// The steps a run's log names as it begins them, in order.
const STEPS: &[&str] = &["checkout", "sandbox", "agent", "diff", "publish", "upload"];

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub kind: String,
    pub data: String,
}

/// Splits a byte stream into events as they complete (the SSE format:
/// `field: value` lines, a blank line ends an event, `:` lines are comments).
#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
    current: Event,
    data: Vec<String>,
}

impl Parser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        // Lines are read in place; what they took is dropped once, at the end.
        let mut start = 0;
        while let Some(length) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.buffer[start..start + length]).into_owned();
            start += length + 1;
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() || !self.current.kind.is_empty() {
                    let mut event = std::mem::take(&mut self.current);
                    event.data = std::mem::take(&mut self.data).join("\n");
                    if event.kind.is_empty() {
                        event.kind = "message".to_owned();
                    }
                    events.push(event);
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.kind = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                "id" => self.current.id = Some(value.to_owned()),
                _ => {}
            }
        }
        self.buffer.drain(..start);
        events
    }
}

/// How the followed output is shown.
#[derive(Clone, Copy)]
pub struct Show {
    /// JSON lines on stdout instead of the log's text.
    pub json: bool,
    /// A line on stderr for each step the run begins.
    pub progress: bool,
}

/// Follows run `id` until it ends; returns the `end` event's data (its
/// state and stop reason).
pub async fn follow(api: &Api, id: &str, show: Show) -> Result<Value> {
    let path = format!("/v1/runs/{}/logs", segment("run", id)?);
    let started = Instant::now();
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    let mut stdout = std::io::stdout();
    loop {
        let mut request = api.request(Method::GET, &path).header("accept", "text/event-stream");
        if let Some(last) = &last_id {
            request = request.header("last-event-id", last);
        }
        let broke = match api.send(&Method::GET, &path, request).await {
            Ok(response) => {
                let mut parser = Parser::default();
                let mut body = response.bytes_stream();
                let mut broke = "the stream ended before the run did".to_owned();
                let connected = Instant::now();
                while let Some(chunk) = body.next().await {
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(error) => {
                            broke = platform::outbound::describe(&error);
                            break;
                        }
                    };
                    // A stream that lasted (keep-alives through a proxy that
                    // drops idle connections) was no failure.
                    if connected.elapsed() > Duration::from_secs(20) {
                        failures = 0;
                    }
                    for event in parser.feed(&chunk) {
                        // Only progress counts as the stream working: an
                        // `error` event then an end is a failure each time.
                        if matches!(event.kind.as_str(), "log" | "phase" | "end") {
                            failures = 0;
                        }
                        if let Some(id) = event.id.as_ref().filter(|id| resumable(id)) {
                            last_id = Some(id.clone());
                        }
                        if let Some(end) = shown(&event, show, started, &mut stdout) {
                            return Ok(end);
                        }
                        if event.kind == "error" {
                            broke = event.data.clone();
                        }
                    }
                }
                broke
            }
            // Refusals are final; only being away is retried.
            Err(failure) if failure.exit != Exit::Unavailable => return Err(failure),
            Err(failure) => failure.message,
        };
        failures += 1;
        if failures > 30 {
            return Err(Failure::new(Exit::Unavailable, format!("following run {id}: {broke}")));
        }
        eprintln!("paddock: {broke}; reconnecting");
        tokio::time::sleep(Duration::from_millis(500 * u64::from(failures.min(6)))).await;
    }
}

/// Whether `id` is a stream entry's (`<ms>-<seq>`), which the API resumes
/// after; any other is not sent back.
fn resumable(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq].iter().all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Shows one event; the `end` event's data is returned.
fn shown(event: &Event, show: Show, started: Instant, out: &mut impl Write) -> Option<Value> {
    let parsed = || serde_json::from_str::<Value>(&event.data).unwrap_or(Value::Null);
    match event.kind.as_str() {
        "log" | "stored" => {
            if show.json {
                let _ = writeln!(out, "{}", json!({"event": "log", "id": event.id, "text": event.data}));
            } else {
                let _ = out.write_all(event.data.as_bytes());
            }
            let _ = out.flush();
        }
        "phase" => {
            let phase = parsed()["phase"].as_str().unwrap_or_default().to_owned();
            if show.json {
                let _ = writeln!(out, "{}", json!({"event": "phase", "id": event.id, "phase": phase}));
            }
            if show.progress {
                let step = STEPS.iter().position(|s| *s == phase).map(|i| format!("[{}/{}] ", i + 1, STEPS.len()));
                eprintln!("paddock: {}{phase} ({:.1} s)", step.unwrap_or_default(), started.elapsed().as_secs_f64());
            }
        }
        "end" => return Some(parsed()),
        _ => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_across_chunk_boundaries_and_comments_are_skipped() {
        let mut parser = Parser::default();
        assert!(parser.feed(b": keep-alive\n\nid: 1-0\nevent: log\ndata: a").is_empty());
        let events = parser.feed(b"\ndata: b\ndata: \n\nevent: end\r\ndata: {\"state\":\"succeeded\"}\r\n\r\n");
        assert_eq!(
            events,
            vec![
                Event { id: Some("1-0".into()), kind: "log".into(), data: "a\nb\n".into() },
                Event { id: None, kind: "end".into(), data: r#"{"state":"succeeded"}"#.into() },
            ]
        );
    }

    #[test]
    fn only_stream_entry_ids_are_resumed_after() {
        assert!(resumable("1796283701234-0"));
        assert!(!resumable("stored") && !resumable("1-") && !resumable("-1") && !resumable("a-1"));
    }

    #[test]
    fn a_log_event_prints_its_text_as_written_and_json_mode_prints_lines() {
        let event = Event { id: Some("7-0".into()), kind: "log".into(), data: "one\ntwo\n".into() };
        let mut text = Vec::new();
        assert!(shown(&event, Show { json: false, progress: false }, Instant::now(), &mut text).is_none());
        assert_eq!(text, b"one\ntwo\n");
        let mut lines = Vec::new();
        shown(&event, Show { json: true, progress: false }, Instant::now(), &mut lines);
        let line: Value = serde_json::from_slice(&lines).unwrap();
        assert_eq!(line, json!({"event": "log", "id": "7-0", "text": "one\ntwo\n"}));
        let end = Event { id: None, kind: "end".into(), data: r#"{"state":"failed"}"#.into() };
        assert_eq!(
            shown(&end, Show { json: true, progress: false }, Instant::now(), &mut lines).unwrap()["state"],
            "failed"
        );
    }
}
