//! `GET /v1/runs/{id}/logs` as Server-Sent Events: the run's (redacted)
//! output as the worker writes it, one `log` event per chunk and one
//! `phase` event (`{"phase": "agent"}`) per step the run begins, each with
//! its entry in the run's log stream as `id`, then one `end` event with the
//! run's final state and stop reason. A client that reconnects with
//! `Last-Event-ID` gets every chunk after that one, exactly once.

use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use common::{ArtifactKind, RunId, RunRecord};
use objstore::ObjectStore;
use serde_json::json;

use crate::problem::Problem;
use crate::startup::AppState;

/// How often a quiet run is looked at again.
const POLL: Duration = Duration::from_millis(250);
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Chunks sent in one write at most.
const BATCH: usize = 200;

/// Whether the client asked for an event stream.
pub fn wanted(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("accept")
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with("text/event-stream")))
}

/// Where the client resumes: `Last-Event-ID`, an entry id (`<ms>-<seq>`).
pub fn resume_from(req: &HttpRequest) -> Result<Option<String>, Problem> {
    let Some(value) = req.headers().get("last-event-id") else { return Ok(None) };
    let text = value.to_str().unwrap_or_default().trim();
    let valid = text.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq].iter().all(|part| !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit()))
    });
    if !valid {
        return Err(Problem::bad_request("Last-Event-ID must be the id of an event this stream sent (`<ms>-<seq>`)")
            .field("Last-Event-ID"));
    }
    Ok(Some(text.to_owned()))
}

/// The event stream of run `id`, after entry `after`.
pub fn respond(state: web::Data<AppState>, id: RunId, after: Option<String>) -> HttpResponse {
    let live = Live { sent_any: after.is_some(), state, id, after, done: false, quiet: Instant::now() };
    let events = futures::stream::unfold(live, |mut live| async move {
        if live.done {
            return None;
        }
        let bytes = live.next().await;
        Some((Ok::<_, actix_web::Error>(bytes), live))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        // nginx and its kin buffer responses unless told not to.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(events)
}

struct Live {
    state: web::Data<AppState>,
    id: RunId,
    after: Option<String>,
    sent_any: bool,
    done: bool,
    quiet: Instant,
}

impl Live {
    /// The next write: chunks, a keep-alive, or the end.
    async fn next(&mut self) -> Bytes {
        loop {
            match self.state.queue.log_since(self.id, self.after.as_deref(), BATCH).await {
                Ok(chunks) if !chunks.is_empty() => return self.chunks(chunks),
                Ok(_) => {}
                Err(error) => return self.fail(&error.to_string()),
            }
            let record = match self.state.queue.get(self.id).await {
                Ok(record) => record,
                Err(error) => return self.fail(&error.to_string()),
            };
            if record.as_ref().is_some_and(|r| !r.state.is_terminal()) {
                if self.quiet.elapsed() >= KEEP_ALIVE {
                    self.quiet = Instant::now();
                    return Bytes::from_static(b": the run is still going\n\n");
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            // The run ended: what the worker wrote last, then the end.
            match self.state.queue.log_since(self.id, self.after.as_deref(), BATCH).await {
                Ok(chunks) if !chunks.is_empty() => return self.chunks(chunks),
                _ => {}
            }
            let mut out = Vec::new();
            if !self.sent_any {
                // The tail expired with the run's live record, or held no
                // output (a run stopped before its agent): the stored log,
                // as a `stored` event without an id (nothing to resume at).
                let key = self.id.artifact_key(ArtifactKind::Logs);
                if let Ok(Some(stored)) = self.state.store.get(&key).await {
                    out.extend(event("", "stored", &String::from_utf8_lossy(&stored)));
                }
            }
            out.extend(end(record.as_ref()));
            self.done = true;
            return Bytes::from(out);
        }
    }

    fn chunks(&mut self, entries: Vec<store::LogEntry>) -> Bytes {
        let mut out = Vec::new();
        for entry in entries {
            if let Some(chunk) = &entry.chunk {
                out.extend(event(&entry.id, "log", &String::from_utf8_lossy(chunk)));
                // Steps alone are no log: a run that stopped before any
                // output still gets its stored log at the end.
                self.sent_any = true;
            }
            if let Some(phase) = &entry.phase {
                out.extend(event(&entry.id, "phase", &json!({"phase": phase}).to_string()));
            }
            self.after = Some(entry.id);
        }
        self.quiet = Instant::now();
        Bytes::from(out)
    }

    fn fail(&mut self, message: &str) -> Bytes {
        tracing::warn!(run_id = %self.id, message, "live log stream stopped");
        self.done = true;
        Bytes::from(event("", "error", &json!({"detail": "the log store is unavailable; reconnect"}).to_string()))
    }
}

/// One event; each line of `data` a `data:` line (carriage returns
/// dropped: they would end a line for the client).
fn event(id: &str, kind: &str, data: &str) -> Vec<u8> {
    let mut out = String::new();
    if !id.is_empty() {
        out.push_str(&format!("id: {id}\n"));
    }
    out.push_str(&format!("event: {kind}\n"));
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(&line.replace('\r', ""));
        out.push('\n');
    }
    out.push('\n');
    out.into_bytes()
}

/// The `end` event: the run's final state and why it stopped.
fn end(record: Option<&RunRecord>) -> Vec<u8> {
    let data = match record {
        Some(r) => json!({"state": r.state, "stop_reason": r.stop_reason}),
        None => json!({"state": null, "detail": "the run's live record expired; GET /v1/runs/{id}/record has it"}),
    };
    event("", "end", &data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_chunk_is_a_data_line_and_carriage_returns_cannot_end_one() {
        let text = String::from_utf8(event("17-0", "log", "a\r\nb\n")).unwrap();
        assert_eq!(text, "id: 17-0\nevent: log\ndata: a\ndata: b\ndata: \n\n");
    }
}
