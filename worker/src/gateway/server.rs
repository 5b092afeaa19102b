//! The per-run gateway listener (hyper, HTTP/1.1).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::RunId;
use common::config::{GatewayConfig, ProviderConfig, ProviderKind};
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::redact::Redactor;
use super::token_hash;
use crate::queue::RunQueue;

type Body = BoxBody<Bytes, std::io::Error>;

const MAX_REQUEST_BYTES: usize = 32 << 20;

/// Metadata of one model call, as kept in the run's record.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub at_ms: u64,
    pub wire: &'static str,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub status: u16,
    pub latency_ms: u64,
    pub redactions: std::collections::BTreeMap<&'static str, u32>,
}

/// One model call as the run's transcript keeps it. Content is redacted
/// when the transcript is written (or omitted, by policy).
#[derive(Debug, Clone, Default)]
pub struct TranscriptEntry {
    pub at_ms: u64,
    pub provider: String,
    pub model: Option<String>,
    pub status: u16,
    pub request: String,
    pub response: Vec<u8>,
    pub response_truncated: bool,
}

/// How much of one response the transcript keeps.
const MAX_TRANSCRIPT_RESPONSE: usize = 1 << 20;

/// Everything the gateway of one run needs.
pub struct RunGateway {
    pub run: RunId,
    pub tenant: String,
    pub token_hash: String,
    pub config: GatewayConfig,
    pub queue: RunQueue,
    pub redactor: Redactor,
    pub http: reqwest::Client,
    run_limit: Option<governor::DefaultDirectRateLimiter>,
    calls: Mutex<Vec<CallRecord>>,
    transcript: Arc<Mutex<Vec<TranscriptEntry>>>,
}

/// The wire API a request speaks, which decides its error shape.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
}

impl RunGateway {
    pub fn new(
        run: RunId,
        tenant: String,
        token_hash: String,
        config: GatewayConfig,
        queue: RunQueue,
        redactor: Redactor,
    ) -> Self {
        let run_limit = std::num::NonZeroU32::new(config.run_requests_per_minute)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n)));
        Self {
            run,
            tenant,
            token_hash,
            config,
            queue,
            redactor,
            http: reqwest::Client::new(),
            run_limit,
            calls: Mutex::new(Vec::new()),
            transcript: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The calls so far, as the transcript will keep them.
    pub fn transcript(&self) -> Vec<TranscriptEntry> {
        self.transcript.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The run's own limit (in this process), then the tenant's and the
    /// provider's (shared through Redis by every gateway). Fails closed:
    /// when Redis cannot answer, the call is refused.
    async fn admit(&self, provider: &str) -> Result<(), (StatusCode, Option<std::time::Duration>, String)> {
        if let Some(limit) = &self.run_limit
            && let Err(not_until) = limit.check()
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                Some(wait),
                "the run's request rate limit is reached".to_owned(),
            ));
        }
        let shared = [
            (format!("tenant:{}", self.tenant), self.config.tenant_requests_per_minute, "tenant"),
            (format!("provider:{provider}"), self.config.provider_requests_per_minute, "provider"),
        ];
        for (name, per_minute, what) in shared {
            if per_minute == 0 {
                continue;
            }
            match self.queue.rate_limit(&name, per_minute).await {
                Ok(None) => {}
                Ok(Some(wait)) => {
                    return Err((
                        StatusCode::TOO_MANY_REQUESTS,
                        Some(wait),
                        format!("the {what}'s request rate limit is reached"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(run_id = %self.run, error = %e, "rate limit store unavailable; refusing");
                    return Err((StatusCode::SERVICE_UNAVAILABLE, None, "rate limits cannot be checked".to_owned()));
                }
            }
        }
        Ok(())
    }

    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record(&self, record: CallRecord) {
        tracing::info!(run_id = %self.run, wire = record.wire, provider = ?record.provider, model = ?record.model, status = record.status, latency_ms = record.latency_ms, redactions = ?record.redactions, "model call");
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(record);
    }

    /// Allowed providers in policy order (the default provider first).
    fn allowed(&self) -> impl Iterator<Item = (&String, &ProviderConfig)> {
        self.config.allowed_providers.iter().filter_map(|name| self.config.providers.get_key_value(name))
    }

    async fn authenticated(&self, req: &Request<Incoming>) -> bool {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let presented = header("authorization").and_then(|v| v.strip_prefix("Bearer ")).or_else(|| header("x-api-key"));
        let Some(token) = presented else { return false };
        let hash = token_hash(token);
        let same = hash.len() == self.token_hash.len()
            && hash.bytes().zip(self.token_hash.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        // Redis is the authority on revocation and expiry.
        same && matches!(self.queue.gateway_token(&hash).await, Ok(Some(run)) if run == self.run)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let (wire, suffix) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/v1/models") => (Wire::OpenAi, None),
            (&Method::POST, "/v1/chat/completions") => (Wire::OpenAi, Some("chat/completions")),
            (&Method::POST, "/v1/responses") => (Wire::OpenAi, Some("responses")),
            (&Method::POST, "/v1/messages") => (Wire::Anthropic, Some("messages")),
            (&Method::POST, "/v1/messages/count_tokens") => (Wire::Anthropic, Some("messages/count_tokens")),
            _ => {
                return error(
                    Wire::OpenAi,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such endpoint on the Paddock gateway",
                );
            }
        };
        if !self.authenticated(&req).await {
            return error(wire, StatusCode::UNAUTHORIZED, "invalid_api_key", "invalid or revoked run token");
        }
        let Some(suffix) = suffix else { return self.models() };
        let anthropic_version = req.headers().get("anthropic-version").cloned();
        let anthropic_beta = req.headers().get("anthropic-beta").cloned();
        let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => return error(wire, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", "request body too large"),
        };
        let text = String::from_utf8_lossy(&body).into_owned();
        let model = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("model").and_then(|m| m.as_str()).map(str::to_owned));
        let speaks = |kind: ProviderKind| match wire {
            Wire::Anthropic => kind == ProviderKind::Anthropic,
            Wire::OpenAi => matches!(kind, ProviderKind::Openai | ProviderKind::AzureOpenai),
        };
        let provider = model
            .as_deref()
            .and_then(|m| self.allowed().find(|(_, p)| speaks(p.kind) && p.models.iter().any(|x| x == m)));
        let Some((provider_name, provider)) = provider else {
            let message =
                format!("model {:?} is not offered by any provider this run may use", model.unwrap_or_default());
            self.record(CallRecord {
                at_ms: now_ms(),
                wire: wire.name(),
                provider: None,
                model: None,
                status: 403,
                latency_ms: 0,
                redactions: Default::default(),
            });
            return error(wire, StatusCode::FORBIDDEN, "model_not_allowed", &message);
        };
        if let Err((status, wait, message)) = self.admit(provider_name).await {
            self.record(CallRecord {
                at_ms: now_ms(),
                wire: wire.name(),
                provider: Some(provider_name.clone()),
                model: model.clone(),
                status: status.as_u16(),
                latency_ms: started.elapsed().as_millis() as u64,
                redactions: Default::default(),
            });
            let mut response = error(wire, status, "rate_limit_exceeded", &message);
            if let Some(wait) = wait {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response.headers_mut().insert("retry-after", HeaderValue::from(seconds.max(1)));
            }
            return response;
        }
        let reserved = if suffix.ends_with("count_tokens") { 0 } else { worst_case_tokens(&text) };
        if let Err(response) = self.reserve(wire, reserved).await {
            return response;
        }
        let (redacted, counts) = self.redactor.redact(&text);
        let redacted_request = redacted.clone();
        let url = upstream_url(provider, suffix, model.as_deref().unwrap_or_default());
        let mut upstream = self.http.post(url).header("content-type", "application/json").body(redacted);
        upstream = match provider.kind {
            ProviderKind::Openai => upstream.bearer_auth(provider.api_key.expose_secret()),
            ProviderKind::AzureOpenai => upstream.header("api-key", provider.api_key.expose_secret()),
            ProviderKind::Anthropic => {
                let version = anthropic_version.unwrap_or(HeaderValue::from_static("2023-06-01"));
                let mut u =
                    upstream.header("x-api-key", provider.api_key.expose_secret()).header("anthropic-version", version);
                if let Some(beta) = anthropic_beta {
                    u = u.header("anthropic-beta", beta);
                }
                u
            }
        };
        let response = match upstream.send().await {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(run_id = %self.run, error = %e, "provider unreachable");
                self.settlement(reserved, None).settle_now(0);
                return error(
                    wire,
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the model provider is unreachable",
                );
            }
        };
        let status = response.status().as_u16();
        self.record(CallRecord {
            at_ms: now_ms(),
            wire: wire.name(),
            provider: Some(provider_name.clone()),
            model: model.clone(),
            status,
            latency_ms: started.elapsed().as_millis() as u64,
            redactions: counts.0,
        });
        // The answer, errors included, goes back as the provider sent it,
        // streamed as it arrives (SSE included); a copy goes to the transcript.
        let mut builder = Response::builder().status(status);
        if let Some(content_type) = response.headers().get(CONTENT_TYPE) {
            builder = builder.header(CONTENT_TYPE, content_type.clone());
        }
        let index = {
            let mut transcript = self.transcript.lock().unwrap_or_else(PoisonError::into_inner);
            transcript.push(TranscriptEntry {
                at_ms: now_ms(),
                provider: provider_name.clone(),
                model,
                status,
                request: redacted_request,
                ..Default::default()
            });
            transcript.len() - 1
        };
        let transcript = self.transcript.clone();
        // Settled when the stream ends or the client goes away (the guard
        // lives in the closure, which the stream drops then).
        let settle = self.settlement(reserved, Some((self.transcript.clone(), index, status)));
        let stream = response
            .bytes_stream()
            .map_err(std::io::Error::other)
            .inspect_ok(move |chunk| {
                let _keep = &settle;
                let mut entries = transcript.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(entry) = entries.get_mut(index) {
                    let room = MAX_TRANSCRIPT_RESPONSE.saturating_sub(entry.response.len());
                    entry.response.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    entry.response_truncated |= chunk.len() > room;
                }
            })
            .map_ok(Frame::data);
        builder.body(BodyExt::boxed(StreamBody::new(stream))).unwrap_or_else(|_| internal())
    }

    fn budgets_on(&self) -> bool {
        self.config.run_token_budget > 0 || self.config.tenant_daily_token_budget > 0
    }

    /// Reserves the call's worst case against the run's and tenant's token
    /// budgets, before anything reaches the provider. Fails closed.
    async fn reserve(&self, wire: Wire, amount: u64) -> Result<(), Response<Body>> {
        if !self.budgets_on() || amount == 0 {
            return Ok(());
        }
        let (run_limit, tenant_limit) = (self.config.run_token_budget, self.config.tenant_daily_token_budget);
        match self.queue.reserve_tokens(self.run, &self.tenant, amount, run_limit, tenant_limit).await {
            Ok(None) => Ok(()),
            Ok(Some(which)) => {
                let message = format!("the {which}'s token budget does not cover this call ({amount} tokens at most)");
                Err(error(wire, StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", &message))
            }
            Err(e) => {
                tracing::warn!(run_id = %self.run, error = %e, "budget store unavailable; refusing");
                Err(error(
                    wire,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "budget_unavailable",
                    "token budgets cannot be checked",
                ))
            }
        }
    }

    fn settlement(&self, reserved: u64, source: Option<AnswerSource>) -> Settlement {
        Settlement {
            queue: self.queue.clone(),
            run: self.run,
            tenant: self.tenant.clone(),
            reserved: if self.budgets_on() { reserved } else { 0 },
            source,
            done: false,
        }
    }

    fn models(&self) -> Response<Body> {
        let data: Vec<serde_json::Value> = self
            .allowed()
            .flat_map(|(name, p)| {
                p.models.iter().map(move |m| serde_json::json!({"id": m, "object": "model", "owned_by": name}))
            })
            .collect();
        json_response(StatusCode::OK, &serde_json::json!({"object": "list", "data": data}))
    }
}

/// Where a call's answer is kept (transcript, entry, status), to read its
/// reported usage from.
type AnswerSource = (Arc<Mutex<Vec<TranscriptEntry>>>, usize, u16);

/// Books a call's real token use against its reservation, once.
struct Settlement {
    queue: RunQueue,
    run: RunId,
    tenant: String,
    reserved: u64,
    source: Option<AnswerSource>,
    done: bool,
}

impl Settlement {
    fn settle_now(mut self, actual: u64) {
        self.book(actual);
    }

    fn book(&mut self, actual: u64) {
        if self.done || self.reserved == 0 {
            self.done = true;
            return;
        }
        self.done = true;
        let (queue, run, tenant, reserved) = (self.queue.clone(), self.run, self.tenant.clone(), self.reserved);
        tokio::spawn(async move {
            if let Err(error) = queue.settle_tokens(run, &tenant, reserved, actual).await {
                tracing::warn!(run_id = %run, %error, "settling a token reservation failed; it stays reserved");
            }
        });
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let actual = match &self.source {
            Some((transcript, index, status)) => {
                let entries = transcript.lock().unwrap_or_else(PoisonError::into_inner);
                let body = entries.get(*index).map(|e| e.response.clone()).unwrap_or_default();
                // Without reported usage: nothing for a refusal, the whole
                // reservation otherwise.
                usage_tokens(&body).unwrap_or(if *status >= 400 { 0 } else { self.reserved })
            }
            None => 0,
        };
        self.book(actual);
    }
}

/// Where a call goes: `<base>/<suffix>`, or for Azure OpenAI the model's
/// deployment path with its `api-version`.
fn upstream_url(provider: &ProviderConfig, suffix: &str, model: &str) -> String {
    let base = provider.base_url.trim_end_matches('/');
    match provider.kind {
        ProviderKind::AzureOpenai => {
            let deployment = provider.deployments.get(model).map_or(model, String::as_str);
            let version = provider.api_version.as_deref().unwrap_or("2024-10-21");
            format!("{base}/openai/deployments/{deployment}/{suffix}?api-version={version}")
        }
        _ => format!("{base}/{suffix}"),
    }
}

/// The most a call can cost: its output cap (or 4096) plus its prompt at
/// four bytes a token.
fn worst_case_tokens(request: &str) -> u64 {
    let json: serde_json::Value = serde_json::from_str(request).unwrap_or_default();
    let output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| json.get(*k).and_then(serde_json::Value::as_u64))
        .unwrap_or(4096);
    output + request.len() as u64 / 4 + 1
}

/// Tokens a provider reported in a JSON answer or an SSE stream (OpenAI
/// `usage.total_tokens`; Anthropic `input_tokens` + `output_tokens`).
fn usage_tokens(body: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(body);
    let documents: Vec<serde_json::Value> = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).ok().into_iter().collect()
    } else {
        text.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect()
    };
    let mut total = None;
    for doc in documents {
        for usage in [doc.get("usage"), doc.get("message").and_then(|m| m.get("usage"))].into_iter().flatten() {
            let n = usage.get("total_tokens").and_then(serde_json::Value::as_u64).unwrap_or_else(|| {
                ["input_tokens", "output_tokens"]
                    .iter()
                    .filter_map(|k| usage.get(*k).and_then(serde_json::Value::as_u64))
                    .sum()
            });
            total = Some(total.unwrap_or(0) + n);
        }
    }
    total
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string())).map_err(|never| match never {}).boxed();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| internal())
}

fn internal() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// An error in the shape the client's SDK expects.
fn error(wire: Wire, status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = match wire {
        Wire::OpenAi => {
            serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})
        }
        Wire::Anthropic => {
            let kind = match status {
                StatusCode::UNAUTHORIZED => "authentication_error",
                StatusCode::FORBIDDEN => "permission_error",
                StatusCode::NOT_FOUND => "not_found_error",
                StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
                StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
                StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
                _ => "api_error",
            };
            serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    };
    json_response(status, &body)
}

/// A running gateway listener; dropping it stops it.
pub struct GatewayServer {
    pub address: SocketAddr,
    stop: CancellationToken,
}

impl Drop for GatewayServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl GatewayServer {
    pub async fn start(bind: SocketAddr, gateway: Arc<RunGateway>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let address = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = task_stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else { continue };
                let (gateway, stop) = (gateway.clone(), task_stop.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let gateway = gateway.clone();
                        async move { Ok::<_, Infallible>(gateway.handle(req).await) }
                    });
                    let connection =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = connection => {}
                    }
                });
            }
        });
        Ok(Self { address, stop })
    }
}
