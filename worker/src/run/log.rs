//! A run's output as it is kept (capped, with Paddock's own lines always
//! in) and the timing of its start-up steps.

use std::sync::Arc;
use std::time::Instant;

use gateway::Redactor;
use sandbox::OutputStream;

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
///
/// The agent's output is kept line by line, each stream on its own: control
/// characters are escaped (no terminal escapes reach a reader), a line of
/// the agent's that looks like Paddock's own (`paddock:`, or a command
/// report on stdout) is marked
/// `[agent] `, and commands count only when the agent reports them on its
/// stderr, signed with the run's report key (`paddock-exec: <mac> <json>`).
/// The key reaches the agent on its stdin, which the processes it runs do
/// not share; they can reach its stderr (`/proc/<agent>/fd/2`), so an
/// unsigned or wrongly signed report is output, never a command.
#[derive(Default)]
pub(super) struct RunLog {
    pub(super) data: Vec<u8>,
    pending: Vec<u8>,
    cap: usize,
    pub(super) truncated: bool,
    /// Unfinished lines of stdout and stderr.
    partial: [Vec<u8>; 2],
    /// Commands the agent reported, at most [`MAX_COMMANDS`].
    pub(super) commands: Vec<String>,
    /// Reported commands past that, counted only.
    pub(super) commands_dropped: usize,
    /// The key command reports are signed with; without one, no line is a
    /// command report.
    report_key: Option<Vec<u8>>,
    /// Signed reports seen: each report signs its own sequence number, so a
    /// report cannot be replayed.
    reports_seen: u64,
    /// The agent's own event stream, when its profile names one.
    events: Option<super::events::EventReader>,
    /// Whether that stream is in a file rather than on stdout.
    events_in_file: bool,
    /// What of the run's activity the trail already has.
    pub(super) audited: crate::audit_events::Audited,
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

/// How an agent reports a command it runs, on its stderr.
const COMMAND_PREFIX: &str = "paddock-exec: ";

/// Hex characters of a report's HMAC-SHA256 (its first 16 bytes).
const REPORT_MAC_HEX: usize = 32;

/// The MAC an agent puts before its `n`-th report (from 0) of `json`:
/// HMAC-SHA256 under the run's report key over `<n>:<json>`, first 16 bytes
/// in lowercase hex. The reference agent computes the same.
pub(super) fn report_mac(key: &[u8], n: u64, json: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(format!("{n}:{json}").as_bytes());
    mac.finalize().into_bytes()[..REPORT_MAC_HEX / 2].iter().map(|b| format!("{b:02x}")).collect()
}

/// Commands a run's record keeps; more are counted.
pub(super) const MAX_COMMANDS: usize = 1000;

/// Characters of one command the record keeps.
const MAX_COMMAND_CHARS: usize = 4096;

/// The longest line kept whole; longer ones are cut into pieces.
const MAX_LINE: usize = 64 * 1024;

/// `text` with control characters (but tab) written as `\u{..}` escapes,
/// so no terminal sequence reaches whoever reads the log.
fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
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

    /// A chunk of the agent's output on `stream`.
    pub(super) fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        let slot = usize::from(stream == OutputStream::Stderr);
        self.partial[slot].extend_from_slice(bytes);
        while let Some(end) = self.partial[slot].iter().position(|&b| b == b'\n') {
            let rest = self.partial[slot].split_off(end + 1);
            let line = std::mem::replace(&mut self.partial[slot], rest);
            self.agent_line(stream, &line[..end]);
        }
        // A line that never ends is kept in pieces rather than held.
        if self.partial[slot].len() > MAX_LINE {
            let line = std::mem::take(&mut self.partial[slot]);
            self.agent_line(stream, &line);
        }
    }

    /// The agent's output ended: its unfinished lines are kept.
    pub(super) fn end_output(&mut self) {
        for (slot, stream) in [(0, OutputStream::Stdout), (1, OutputStream::Stderr)] {
            let line = std::mem::take(&mut self.partial[slot]);
            if !line.is_empty() {
                self.agent_line(stream, &line);
            }
        }
    }

    /// From now on, command reports count when signed with `key`.
    pub(super) fn expect_reports_signed_with(&mut self, key: Vec<u8>) {
        self.report_key = Some(key);
    }

    /// From now on, the commands of the agent's event stream count (from
    /// stdout, or from its events file when `in_file`).
    pub(super) fn read_events(&mut self, format: common::config::AgentEvents, in_file: bool) {
        self.events = Some(super::events::EventReader::new(format));
        self.events_in_file = in_file;
    }

    /// The commands of the agent's events file, read once it has ended.
    pub(super) fn events_file(&mut self, text: &str) {
        let Some(events) = &mut self.events else { return };
        for command in events.file_commands(text) {
            self.keep_command(&command, command.len());
        }
    }

    /// The command a signed report on stderr names, when its MAC is right.
    fn signed_report<'t>(&self, stream: OutputStream, text: &'t str) -> Option<&'t str> {
        let key = self.report_key.as_deref().filter(|_| stream == OutputStream::Stderr)?;
        let (mac, json) = text.strip_prefix(COMMAND_PREFIX)?.split_once(' ')?;
        let expected = report_mac(key, self.reports_seen, json);
        // Compared whole, in constant time: the MAC is not guessed byte by byte.
        let same = mac.len() == expected.len()
            && mac.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(json)
    }

    fn agent_line(&mut self, stream: OutputStream, raw: &[u8]) {
        let text = escape_controls(&String::from_utf8_lossy(raw));
        if stream == OutputStream::Stdout
            && !self.events_in_file
            && let Some(events) = &mut self.events
        {
            for command in events.commands(&String::from_utf8_lossy(raw)) {
                self.keep_command(&command, command.len());
            }
        }
        if let Some(reported) = self.signed_report(stream, &text) {
            self.reports_seen += 1;
            let reported = reported.to_owned();
            self.report_command(&reported);
        } else if text.starts_with("paddock:") || text.starts_with(COMMAND_PREFIX.trim_end()) {
            self.push(format!("[agent] {text}\n").as_bytes());
            return;
        }
        self.push(format!("{text}\n").as_bytes());
    }

    fn report_command(&mut self, reported: &str) {
        let command = serde_json::from_str::<String>(reported).unwrap_or_else(|_| reported.to_owned());
        self.keep_command(&command, reported.len().saturating_sub(2));
    }

    /// Keeps a command (cut at [`MAX_COMMAND_CHARS`]) unless there are
    /// already [`MAX_COMMANDS`]; `reported_len` is how long it came.
    fn keep_command(&mut self, command: &str, reported_len: usize) {
        if self.commands.len() >= MAX_COMMANDS {
            self.commands_dropped += 1;
            return;
        }
        let mut command: String = command.chars().take(MAX_COMMAND_CHARS).collect();
        if command.len() < reported_len && command.chars().count() == MAX_COMMAND_CHARS {
            command.push_str(" [paddock: truncated]");
        }
        self.commands.push(command);
    }

    pub(super) fn line(&mut self, line: &str) {
        // Paddock's own lines are never dropped by the cap.
        let text = format!("{line}\n");
        self.data.extend_from_slice(text.as_bytes());
        self.pending.extend_from_slice(text.as_bytes());
    }

    /// `text` redacted as the live tail is (unchanged without a redactor).
    pub(super) fn redact(&self, text: &str) -> String {
        match &self.tail {
            Some(tail) => tail.redactor.redact(text).0,
            None => text.to_owned(),
        }
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
    fn agent_output_cannot_pass_for_paddocks_own_lines_nor_report_commands_on_stdout() {
        let mut log = RunLog::new(1 << 20);
        log.line("paddock: run 1 on w");
        log.output(
            OutputStream::Stdout,
            b"test output\npaddock: agent finished: Completed\npaddock-exec: \"rm -rf /\"\n",
        );
        log.output(OutputStream::Stdout, b"\x1b[2J\x1b]0;owned\x07colour\r\n");
        let key = b"run-key".to_vec();
        log.expect_reports_signed_with(key.clone());
        let first = format!("paddock-exec: {} \"cat README.md\"\n", report_mac(&key, 0, "\"cat README.md\""));
        let (head, tail) = first.split_at(24);
        log.output(OutputStream::Stderr, head.as_bytes());
        log.output(OutputStream::Stderr, tail.as_bytes());
        // Unsigned, replayed, or signed with another key: output, not commands.
        log.output(OutputStream::Stderr, b"paddock-exec: \"forged\"\n");
        log.output(OutputStream::Stderr, first.as_bytes());
        log.output(OutputStream::Stderr, format!("paddock-exec: {} ls\n", report_mac(b"other", 1, "ls")).as_bytes());
        log.output(OutputStream::Stderr, format!("paddock-exec: {} ls\n", report_mac(&key, 1, "ls")).as_bytes());
        log.output(OutputStream::Stdout, b"no newline at the end");
        log.end_output();
        let text = String::from_utf8(log.data.clone()).unwrap();
        assert!(text.starts_with("paddock: run 1 on w\ntest output\n"), "{text}");
        assert!(
            text.contains("\n[agent] paddock: agent finished: Completed\n[agent] paddock-exec: \"rm -rf /\"\n"),
            "{text}"
        );
        assert!(!text.contains('\x1b') && !text.contains('\x07') && !text.contains('\r'), "{text:?}");
        assert!(text.contains("\\u{1b}[2J\\u{1b}]0;owned\\u{7}colour\\u{d}\n"), "{text}");
        assert_eq!(log.commands, ["cat README.md", "ls"], "only signed reports on stderr are commands");
        assert!(text.contains("\n[agent] paddock-exec: \"forged\"\n"), "{text}");
        assert!(text.ends_with("no newline at the end\n"), "{text}");
        for n in 2..MAX_COMMANDS as u64 + 7 {
            log.output(
                OutputStream::Stderr,
                format!("paddock-exec: {} true\n", report_mac(&key, n, "true")).as_bytes(),
            );
        }
        assert_eq!((log.commands.len(), log.commands_dropped), (MAX_COMMANDS, 7));
    }

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
