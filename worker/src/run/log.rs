//! A run's output as it is kept (capped, with Paddock's own lines always
//! in) and the timing of its start-up steps.

use std::time::Instant;

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

    pub(super) fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::RunLog;

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
