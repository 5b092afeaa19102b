//! Domain types shared by the api and the worker: the run record and its
//! state machine, stop reasons, artifact keys and configuration.
//!
//! This crate depends on no HTTP server, Docker, Redis, GitHub or S3 client.

pub mod audit;
pub mod config;
pub mod hash;
pub mod identity;
pub mod policy;
pub mod records;
pub mod retention;
pub mod run;
pub mod sealed;
pub mod tenancy;

pub use run::{
    AgentIdentity, AgentProfile, ArtifactKind, CommitSignature, CredentialGrant, FollowUp, ModelUse, Priority,
    PullRequestRef, RepoName, RunFacts, RunId, RunRecord, RunSpec, RunState, StopReason, Usage, ValidationError,
    validate_tenant,
};
