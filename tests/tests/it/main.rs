//! Integration tests against real Redis, Docker and Garage (S3), started by
//! `cargo xtask setup`. One binary; each test isolates itself by namespace,
//! repository and worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod api;
mod attacks;
mod audit;
mod audit_pending;
mod bedrock;
mod cli;
mod contract;
mod costs;
mod deploy;
mod follow_ups;
mod gateway;
mod github;
mod identity;
mod infra;
mod live;
mod matrix;
mod metrics;
mod openapi;
mod outbound;
mod people;
mod queue;
mod retention;
mod runs;
mod scheduling;
mod tenancy;
mod traces;
mod warm_pool;
