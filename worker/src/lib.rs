//! Everything that executes a run: the queue backend, the sandbox driver,
//! git, artifact storage and the run itself.

pub mod app;
pub mod artifacts;
pub mod audit;
pub mod egress;
pub mod forge;
pub mod gateway;
pub mod git;
pub mod listener;
pub mod outbound;
pub mod publish;
pub mod queue;
pub mod retention;
pub mod runner;
pub mod sandbox;

pub use app::Application;
