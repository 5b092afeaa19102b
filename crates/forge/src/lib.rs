//! The forge: the GitHub App and its one-repository credentials, host-side
//! git, and publishing a run's change as a draft pull request.

pub mod follow_up;
pub mod git;
pub mod github;
pub mod publish;

pub use github::*;
