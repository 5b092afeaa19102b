//! The worker process: claims runs from the store through apalis, keeps
//! their leases, executes each one (sandbox, gateway, publishing, evidence)
//! and sweeps what retention allows. The libraries it is built from live
//! under `crates/`.

pub mod app;
pub mod audit_events;
pub mod backend;
pub mod leases;
pub mod retention;
pub mod run;

pub use app::Application;
