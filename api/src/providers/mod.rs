//! `/v1/llm-policy`: which model providers runs may use.

pub mod handlers;
