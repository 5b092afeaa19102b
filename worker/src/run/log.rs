//! A run's output as it is kept (capped, with Paddock's own lines always
//! in) and the timing of its start-up steps.

use std::sync::Arc;
use std::time::Instant;

use gateway::Redactor;

/// How long each step of a run's start took, in order (ms since the
/// previous mark): where start-up time goes.
pub(super) struct Phases(std::sync::Mutex<(Instant, Vec<(&'static str, u64)>)>);

impl Phases {
    pub(super) fn new() -> Self {
        Self(std::sync::Mutex::new((Instant::now(), Vec::new())))
    }

    pub(super) fn mark(&self, phase: &'static str) {
        let mut inner = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let took = inner.0.elapsed().as_millis() as u64;
        inner.1.push((phase, took));
        inner.0 = Instant::now();
    }

    pub(super) fn take(&self) -> Vec<(&'static str, u64)> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1)
    }
}

/// A run's output, capped; `pending` is what the Redis tail has not seen.
#[derive(Default)]
pub(super) struct RunLog {
    pub(super) data: Vec<u8>,
    pending: Vec<u8>,
    cap: usize,
    pub(super) truncated: bool,
    /// Redacts what goes to the live tail (the stored log is redacted whole
    /// at upload).
    tail: Option<TailRedactor>,
}

/// Redacts the live tail as it grows: whole lines only, holding back an
/// unfinished private-key block and any known secret that spans lines.
pub(super) struct TailRedactor {
    redactor: Arc<Redactor>,
    held: Vec<u8>,
}

/// The most the tail holds back waiting for a line's end.
const MAX_HELD: usize = 64 * 1024;

impl TailRedactor {
    pub(super) fn new(redactor: Arc<Redactor>) -> Self {
        Self { redactor, held: Vec::new() }
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(bytes);
        let safe = self.held.len().saturating_sub(self.redactor.hold_across_lines());
        let mut cut = self.held[..safe].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if let Some(begin) = unfinished_key(&self.held[..cut]) {
            cut = begin;
        }
        if cut == 0 && self.held.len() > MAX_HELD {
            cut = safe;
            while cut > 0 && (self.held[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
        }
        let rest = self.held.split_off(cut);
        let ready = std::mem::replace(&mut self.held, rest);
        self.scrub(&ready)
    }

    fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.held);
        self.scrub(&rest)
    }

    fn scrub(&self, bytes: &[u8]) -> Vec<u8> {
        if bytes.is_empty() {
            return Vec::new();
        }
        self.redactor.redact(&String::from_utf8_lossy(bytes)).0.into_bytes()
    }
}

/// Where a private-key block begins that has not ended in `text`.
fn unfinished_key(text: &[u8]) -> Option<usize> {
    let find =
        |needle: &[u8], from: usize| text[from..].windows(needle.len()).position(|w| w == needle).map(|i| i + from);
    let mut from = 0;
    while let Some(begin) = find(b"-----BEGIN", from) {
        match find(b"-----END", begin) {
            Some(end) => from = end + 1,
            None => return Some(begin),
        }
    }
    None
}

impl RunLog {
    pub(super) fn new(cap: usize) -> Self {
        Self { cap, ..Self::default() }
    }

    pub(super) fn with_line(line: &str) -> Self {
        let mut log = Self::new(line.len() + 1);
        log.line(line);
        log
    }

    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.truncated {
            return;
        }
        let room = self.cap.saturating_sub(self.data.len());
        let kept = &bytes[..bytes.len().min(room)];
        self.data.extend_from_slice(kept);
        self.pending.extend_from_slice(kept);
        if kept.len() < bytes.len() {
            self.truncated = true;
            let marker = b"\n[paddock: log truncated at the configured cap]\n";
            self.data.extend_from_slice(marker);
            self.pending.extend_from_slice(marker);
        }
    }

    pub(super) fn line(&mut self, line: &str) {
        // Paddock's own lines are never dropped by the cap.
        let text = format!("{line}\n");
        self.data.extend_from_slice(text.as_bytes());
        self.pending.extend_from_slice(text.as_bytes());
    }

    /// From now on the live tail is redacted with `redactor`.
    pub(super) fn redact_tail(&mut self, redactor: Arc<Redactor>) {
        self.tail = Some(TailRedactor::new(redactor));
    }

    /// What the live tail has not seen, redacted when a redactor is set
    /// (part of the last line may wait for the next call).
    pub(super) fn take_pending(&mut self) -> Vec<u8> {
        let pending = std::mem::take(&mut self.pending);
        match &mut self.tail {
            Some(tail) => tail.push(&pending),
            None => pending,
        }
    }

    /// Everything the live tail has not seen, at the end of the output.
    pub(super) fn take_all_pending(&mut self) -> Vec<u8> {
        let mut out = self.take_pending();
        if let Some(tail) = &mut self.tail {
            out.extend(tail.finish());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_tail_is_redacted_line_by_line_even_when_a_secret_spans_flushes() {
        let secret = "tail-secret-0123456789";
        let redactor = Arc::new(Redactor::new(&[secret.to_owned()], b"k"));
        let key = gateway::canaries().into_iter().find(|(rule, _)| *rule == "private-key").unwrap().1;
        let output = format!("one {secret} two\n{key}\nthree AKIA{}\n", "Q".repeat(16));
        for size in [1, 5, 17, 100] {
            let mut log = RunLog::new(1 << 20);
            log.redact_tail(redactor.clone());
            let mut tail = Vec::new();
            for chunk in output.as_bytes().chunks(size) {
                log.push(chunk);
                tail.extend(log.take_pending());
            }
            tail.extend(log.take_all_pending());
            let tail = String::from_utf8(tail).unwrap();
            assert!(
                !tail.contains(secret) && !tail.contains("PRIVATE KEY-----\nMMMM") && !tail.contains("AKIAQ"),
                "{size}: {tail}"
            );
            assert_eq!(tail.matches("[REDACTED:").count(), 3, "{size}: {tail}");
            assert!(tail.starts_with("one [REDACTED:known-secret:") && tail.ends_with("\n"), "{tail}");
        }
    }

    #[test]
    fn the_log_stops_at_its_cap_and_says_so() {
        let mut log = RunLog::new(10);
        log.push(b"0123456789abcdef");
        log.push(b"more");
        assert!(log.truncated);
        assert!(log.data.starts_with(b"0123456789\n[paddock: log truncated"));
        assert!(!log.data.windows(4).any(|w| w == b"more"));
        assert_eq!(log.take_pending(), log.data);
        assert!(log.take_pending().is_empty());
    }
}
