//! A run's transcript while the run goes: each call's line is appended to
//! an unlinked temporary file as the call finishes, so the gateway does not
//! hold the run's prompts and answers in memory until its end.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use serde_json::Value;

/// Transcript lines on disk (JSON lines), or in memory where no file could
/// be made or written (the evidence is kept either way).
#[derive(Default)]
pub(super) struct SpilledTranscript {
    file: Option<File>,
    /// Bytes written to `file`.
    written: u64,
    /// Lines that could not go to the file, in order after those that did.
    in_memory: Vec<Value>,
    /// Making or writing the file failed once: memory from then on.
    unavailable: bool,
}

impl SpilledTranscript {
    pub(super) fn push(&mut self, line: &Value) {
        if self.file.is_none() && !self.unavailable {
            match spill_file() {
                Ok(file) => self.file = Some(file),
                Err(error) => {
                    tracing::warn!(%error, "the transcript cannot go to a temporary file; it is kept in memory");
                    self.unavailable = true;
                }
            }
        }
        if let Some(file) = &mut self.file
            && !self.unavailable
        {
            let mut text = line.to_string().into_bytes();
            text.push(b'\n');
            match file.write_all(&text) {
                Ok(()) => {
                    self.written += text.len() as u64;
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "writing the transcript's temporary file failed; it is kept in memory");
                    self.unavailable = true;
                }
            }
        }
        self.in_memory.push(line.clone());
    }

    /// Every line so far, in order.
    pub(super) fn lines(&self) -> Vec<Value> {
        let mut lines = Vec::new();
        if let Some(file) = &self.file {
            let mut text = vec![0u8; usize::try_from(self.written).unwrap_or(0)];
            match file.read_exact_at(&mut text, 0) {
                Ok(()) => lines.extend(
                    text.split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty())
                        .filter_map(|l| serde_json::from_slice(l).ok()),
                ),
                Err(error) => tracing::warn!(%error, "reading the transcript's temporary file failed"),
            }
        }
        lines.extend(self.in_memory.iter().cloned());
        lines
    }
}

/// A new file in the temporary directory, removed from it at once: only
/// this process can reach it, and it is gone when the transcript is.
fn spill_file() -> std::io::Result<File> {
    let path = std::env::temp_dir().join(format!("paddock-transcript-{}", ulid::Ulid::new()));
    let file = std::fs::OpenOptions::new().read(true).append(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_back_in_order_from_the_file() {
        let mut transcript = SpilledTranscript::default();
        let big = "x".repeat(1 << 20);
        for i in 0..5 {
            transcript.push(&serde_json::json!({"n": i, "request": big}));
        }
        assert!(transcript.in_memory.is_empty(), "the lines went to the file");
        let lines = transcript.lines();
        assert_eq!(lines.iter().map(|l| l["n"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2, 3, 4]);
        assert_eq!(lines[4]["request"].as_str().unwrap().len(), 1 << 20);
    }
}
