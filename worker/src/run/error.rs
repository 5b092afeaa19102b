//! How a step of a run fails: the run is retried, it stops for good, or the
//! worker lost the right to finish it.

use common::StopReason;
use sandbox::SandboxError;

/// Why a run stopped before it could report an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// Another worker owns the run now: its result is discarded.
    LeaseLost,
    /// The shutdown grace period ended: the run goes back to its queue.
    Shutdown,
}

/// A step that did not succeed.
#[derive(Debug)]
pub enum RunError {
    /// An infrastructure failure: the attempt counts and the run is retried
    /// with backoff while attempts remain.
    Retry(String),
    /// The run ends here, for good, before its agent ran; `line` goes to its
    /// log. Its evidence is still stored.
    Stop {
        reason: StopReason,
        line: String,
    },
    Interrupted(Interrupt),
}

impl RunError {
    /// A retry whose message says what was being done.
    pub fn retry(doing: &str, error: impl std::fmt::Display) -> Self {
        RunError::Retry(format!("{doing} failed: {error}"))
    }
}

impl From<SandboxError> for RunError {
    fn from(error: SandboxError) -> Self {
        RunError::Retry(format!("sandbox: {error}"))
    }
}
