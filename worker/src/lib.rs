//! The worker process: claims runs from the store through apalis, keeps
//! their leases, executes each one (sandbox, gateway, publishing, evidence)
//! and sweeps what retention allows. The libraries it is built from live
//! under `crates/`.

pub mod app;
pub mod audit_events;
pub mod backend;
pub mod leases;
pub mod pubsub;
pub mod retention;
pub mod run;

pub use app::Application;

/// How the worker ranks for the kernel's OOM killer: far below its
/// sandboxes (500; under runsc gVisor's own processes carry 1), so under
/// memory pressure the kernel picks a sandbox, never the worker.
pub const WORKER_OOM_SCORE_ADJ: i32 = -900;

/// Lowers this process's `oom_score_adj` to [`WORKER_OOM_SCORE_ADJ`]
/// (needs root or `CAP_SYS_RESOURCE`; without, a warning says the worker
/// competes with its sandboxes).
pub fn protect_from_oom() {
    match std::fs::write("/proc/self/oom_score_adj", WORKER_OOM_SCORE_ADJ.to_string()) {
        Ok(()) => tracing::debug!(adj = WORKER_OOM_SCORE_ADJ, "oom_score_adj lowered"),
        Err(error) => tracing::warn!(
            %error,
            "cannot lower the worker's oom_score_adj (needs CAP_SYS_RESOURCE): under memory pressure the kernel \
             may pick the worker instead of a sandbox"
        ),
    }
}
