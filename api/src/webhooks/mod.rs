//! `/v1/webhooks/github`: issues labelled or assigned on GitHub start runs.

pub mod handlers;
