//! The per-run gateway listener (hyper, HTTP/1.1).

use common::audit::now_ms;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::RunId;
use common::config::{GatewayConfig, ModelPrice, PromptContent, ProviderConfig, ProviderKind};
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use secrecy::ExposeSecret;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::bedrock::{self, Refusal, Translator};
use super::redact::{Redactor, StreamRedactor};
use super::token_hash;
use store::{Admission, QueueError, Rate, Reservation, RunQueue, Spend};

pub(super) type Body = BoxBody<Bytes, std::io::Error>;

const MAX_REQUEST_BYTES: usize = 32 << 20;

pub use common::records::CallRecord;

/// One model call as the run's transcript keeps it: redacted request and
/// answer, or only the metadata, as policy says.
#[derive(Debug, Clone, Default)]
struct TranscriptEntry {
    request_id: String,
    at_ms: u64,
    provider: String,
    model: Option<String>,
    request: String,
    response: Vec<u8>,
    response_truncated: bool,
}

impl TranscriptEntry {
    fn line(&self, status: u16, content: PromptContent) -> serde_json::Value {
        let keep = content == PromptContent::Redacted;
        serde_json::json!({
            "request_id": self.request_id,
            "at_ms": self.at_ms,
            "provider": self.provider,
            "model": self.model,
            "status": status,
            "request": keep.then_some(&self.request),
            "response": keep.then(|| String::from_utf8_lossy(&self.response)),
            "response_truncated": self.response_truncated,
        })
    }
}

/// How much of one answer the transcript keeps.
const MAX_TRANSCRIPT_RESPONSE: usize = 1 << 20;

/// Everything the gateway of one run needs.
pub struct RunGateway {
    pub run: RunId,
    pub tenant: String,
    pub token_hash: String,
    pub config: GatewayConfig,
    pub queue: RunQueue,
    pub redactor: Arc<Redactor>,
    pub http: reqwest::Client,
    run_limit: Option<governor::DefaultDirectRateLimiter>,
    record: Mutex<RunRecord>,
    /// A standalone gateway also hands each finished call to the run's
    /// worker through Redis.
    publish: bool,
    /// The run's span (`traceparent`), which each call's span joins.
    trace_parent: Option<String>,
    /// Finished calls not yet booked (see [`RunGateway::settled`]).
    bookings: tokio::sync::watch::Sender<usize>,
}

/// What the run's record keeps of its calls: every call's metadata, and
/// prompts and answers up to [`MAX_TRANSCRIPT_BYTES`] in all (past that,
/// a call's transcript line keeps its metadata only), on disk until the
/// run's end.
#[derive(Default)]
struct RunRecord {
    calls: Vec<CallRecord>,
    transcript: super::transcript::SpilledTranscript,
    transcript_bytes: usize,
}

/// How much prompt and answer text one run's gateway holds for its
/// transcript.
const MAX_TRANSCRIPT_BYTES: usize = 64 << 20;

/// The wire API a request speaks, which decides its error shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Wire {
    OpenAi,
    Anthropic,
    /// Google's Gemini API: the model and method in the path
    /// (`/v1beta/models/<model>:<method>`), the key in `x-goog-api-key`.
    Gemini,
}

impl RunGateway {
    pub fn new(
        run: RunId,
        tenant: String,
        token_hash: String,
        config: GatewayConfig,
        queue: RunQueue,
        redactor: Redactor,
        http: reqwest::Client,
    ) -> Self {
        let run_limit = std::num::NonZeroU32::new(config.run_requests_per_minute)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n)));
        Self {
            run,
            tenant,
            token_hash,
            config,
            queue,
            redactor: Arc::new(redactor),
            http,
            run_limit,
            record: Mutex::new(RunRecord::default()),
            publish: false,
            trace_parent: None,
            bookings: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Each call's span becomes a child of the run's span `traceparent`.
    pub fn with_trace_parent(mut self, traceparent: Option<String>) -> Self {
        self.trace_parent = traceparent;
        self
    }

    /// For a standalone gateway: finished calls also go to Redis.
    pub(super) fn publishing(mut self) -> Self {
        self.publish = true;
        self
    }

    /// Metadata of the calls so far.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner).calls.clone()
    }

    /// The transcript so far, one JSON document per call.
    pub fn transcript(&self) -> Vec<serde_json::Value> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner).transcript.lines()
    }

    /// Waits until every call whose answer has gone out is booked in
    /// [`Self::calls`] and [`Self::transcript`].
    pub async fn settled(&self) {
        let mut pending = self.bookings.subscribe();
        // The sender lives as long as `self`: this cannot fail.
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// Books a call after its answer has gone out: the caller does not
    /// wait for its usage to be read, its record and log line, its metrics
    /// or its transcript write (a file write and up to 1 MiB parsed: on a
    /// blocking thread, off the runtime's workers).
    fn finish_later(self: &Arc<Self>, booking: impl FnOnce(&RunGateway) + Send + 'static) {
        self.bookings.send_modify(|n| *n += 1);
        let pending = PendingBooking(self.clone());
        let book = move || booking(&pending.0);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(book)),
            // Only as a process ends, outside its runtime: booked here (what
            // it would spawn, settling a budget, is then lost).
            Err(_) => book(),
        }
    }

    /// The shared rates (through Redis, for every gateway) a call to
    /// `provider` with a worst case of `tokens` is taken from, with what to
    /// call each in a refusal: the tenant's and the provider's requests and
    /// tokens per minute, those configured.
    fn rates(&self, provider: &str, tokens: u64) -> Vec<(Rate, &'static str)> {
        let (tenant, config) = (&self.tenant, &self.config);
        [
            (format!("tenant:{tenant}"), u64::from(config.tenant_requests_per_minute), 1, "tenant's request"),
            (format!("provider:{provider}"), u64::from(config.provider_requests_per_minute), 1, "provider's request"),
            (format!("tokens:tenant:{tenant}"), config.tenant_tokens_per_minute, tokens, "tenant's token"),
            (format!("tokens:provider:{provider}"), config.provider_tokens_per_minute, tokens, "provider's token"),
        ]
        .into_iter()
        .filter(|(_, per_minute, cells, _)| *per_minute > 0 && *cells > 0)
        .map(|(name, per_minute, cells, what)| (Rate { name, per_minute, cells }, what))
        .collect()
    }

    /// Books a finished call: in the run's record and, for a standalone
    /// gateway, in Redis for the run's worker.
    fn finish(&self, record: CallRecord, entry: Option<TranscriptEntry>) {
        count_call(&record);
        tracing::info!(
            run_id = %self.run, request_id = %record.request_id, wire = %record.wire, provider = ?record.provider,
            model = ?record.model, status = record.status, tokens_in = record.tokens_in, tokens_out = record.tokens_out,
            cost_usd = record.cost_usd, latency_ms = record.latency_ms, redactions = ?record.redactions, "model call"
        );
        let line = entry.map(|e| e.line(record.status, self.config.prompt_content));
        if self.publish {
            let (queue, run) = (self.queue.clone(), self.run);
            let published = serde_json::json!({"call": &record, "transcript": &line}).to_string();
            tokio::spawn(async move {
                if let Err(error) = queue.gateway_call_finished(run, &published).await {
                    tracing::warn!(run_id = %run, %error, "handing a call to the run's worker failed");
                }
            });
        }
        let mut kept = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        kept.calls.push(record);
        if let Some(mut line) = line {
            let size = line["request"].as_str().map_or(0, str::len) + line["response"].as_str().map_or(0, str::len);
            if kept.transcript_bytes + size > MAX_TRANSCRIPT_BYTES {
                line["request"] = serde_json::Value::Null;
                line["response"] = serde_json::Value::Null;
                line["omitted"] = serde_json::json!("over the run's transcript bound");
            } else {
                kept.transcript_bytes += size;
            }
            kept.transcript.push(&line);
        }
    }

    /// Allowed providers in policy order (the default provider first).
    fn allowed(&self) -> impl Iterator<Item = (&String, &ProviderConfig)> {
        allowed(&self.config)
    }

    /// Whether the request presents this run's token (compared in
    /// constant time, without asking Redis).
    fn presents_own_token(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = presented_token(req) else { return false };
        let hash = token_hash(token);
        hash.len() == self.token_hash.len() && common::hash::ct_eq(hash.as_bytes(), self.token_hash.as_bytes())
    }

    /// Whether the run's token is still live: Redis is the authority on
    /// revocation and expiry.
    async fn token_live(&self) -> Result<bool, QueueError> {
        Ok(matches!(self.queue.gateway_token(&self.token_hash).await?, Some(grant) if grant.run == self.run))
    }

    /// Serves one request; every answer carries `x-paddock-request-id`.
    /// `authenticated`: its token is known live (the standalone gateway's
    /// hub looked it up); `counted`: the hub counted the call in flight for
    /// the run's worker in the same round trip.
    pub(super) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        authenticated: bool,
        counted: Option<CountedCall>,
    ) -> Response<Body> {
        let request_id = format!("req_{}", ulid::Ulid::new().to_string().to_lowercase());
        let span =
            tracing::info_span!("model_call", otel.name = "model call", run_id = %self.run, request_id = %request_id);
        if let Some(parent) = &self.trace_parent {
            platform::telemetry::follow(&span, parent);
        }
        let served = self.serve(req, &request_id, authenticated, counted);
        let mut response = tracing::Instrument::instrument(served, span).await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-paddock-request-id", value);
        }
        response
    }

    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
        request_id: &str,
        authenticated: bool,
        counted: Option<CountedCall>,
    ) -> Response<Body> {
        let started = Instant::now();
        let Some((wire, suffix)) = route(&req) else {
            return error(Wire::OpenAi, StatusCode::NOT_FOUND, "not_found", "no such endpoint on the Paddock gateway");
        };
        // A token that is not this run's is refused before anything is read.
        if !(authenticated || self.presents_own_token(&req)) {
            return unauthorized(wire);
        }
        // Redis answers whether it is still live while the body arrives.
        let live = async { if authenticated { Ok(true) } else { self.token_live().await } };
        let Some(suffix) = suffix else {
            return match live.await {
                Ok(true) => self.models(),
                Ok(false) => unauthorized(wire),
                Err(e) => tokens_unavailable(wire, &e),
            };
        };
        let (head, body) = req.into_parts();
        let (live, body) = tokio::join!(live, read_body(body));
        let mut record = CallRecord {
            request_id: request_id.to_owned(),
            upstream_request_id: None,
            run_id: self.run,
            tenant: self.tenant.clone(),
            at_ms: now_ms(),
            wire: wire.name().to_owned(),
            provider: None,
            model: None,
            status: 0,
            refusal: None,
            tokens_in: 0,
            tokens_out: 0,
            usage_reported: false,
            cost_usd: 0.0,
            latency_ms: 0,
            duration_ms: 0,
            upstream_ms: 0,
            redactions: BTreeMap::new(),
            dropped_betas: Vec::new(),
        };
        let answer = match (live, body) {
            (Err(e), _) => {
                record.refusal = Some("run tokens cannot be checked".to_owned());
                Err(tokens_unavailable(wire, &e))
            }
            (Ok(false), _) => {
                record.refusal = Some("the run token is revoked or expired".to_owned());
                Err(unauthorized(wire))
            }
            (Ok(true), Some(body)) => self.clone().forward(&head, &body, wire, suffix, &mut record, started).await,
            (Ok(true), None) => {
                record.refusal = Some("request body too large".to_owned());
                Err(error(wire, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", "request body too large"))
            }
        };
        // From here the call is booked: by its answer's stream as it ends,
        // or just below.
        if let Some(counted) = counted {
            counted.booked();
        }
        answer.unwrap_or_else(|response| {
            record.status = response.status().as_u16();
            record.latency_ms = started.elapsed().as_millis() as u64;
            record.duration_ms = record.latency_ms;
            self.finish_later(move |gateway| gateway.finish(record, None));
            response
        })
    }

    /// Sends an authenticated call on to its provider. `Err` is an answer
    /// the gateway gives itself (the call is then booked by the caller).
    async fn forward(
        self: Arc<Self>,
        head: &hyper::http::request::Parts,
        body: &[u8],
        wire: Wire,
        suffix: &'static str,
        record: &mut CallRecord,
        started: Instant,
    ) -> Result<Response<Body>, Response<Body>> {
        let headers = &head.headers;
        let path_model = gemini_call(head.uri.path()).map(|(model, _)| model.to_owned());
        // Parsed once. What is checked is what is sent: the body as parsed,
        // written again (a duplicate key cannot mean one thing here and
        // another upstream).
        let request: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            let message = format!("the request body is not JSON: {e}");
            record.refusal = Some(message.clone());
            error(wire, StatusCode::BAD_REQUEST, "invalid_request_error", &message)
        })?;
        let text = serde_json::to_string(&request).unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
        let model = match wire {
            Wire::Gemini => path_model,
            Wire::OpenAi | Wire::Anthropic => request.get("model").and_then(|m| m.as_str()).map(str::to_owned),
        };
        record.model = model.clone();
        let (provider_name, provider) = self.provider_for(wire, model.as_deref(), record).map_err(|message| {
            tracing::warn!(run_id = %self.run, tenant = %self.tenant, %message, "model call refused by provider policy");
            error(wire, StatusCode::FORBIDDEN, "model_not_allowed", &message)
        })?;
        if let Err(super::request_policy::Refused(message)) = super::request_policy::check(wire, provider, &request) {
            tracing::warn!(run_id = %self.run, provider = %provider_name, %message, "model call refused by request policy");
            record.refusal = Some(message.clone());
            return Err(error(wire, StatusCode::FORBIDDEN, "request_not_allowed", &message));
        }
        let asked_betas = headers.get("anthropic-beta").and_then(|v| v.to_str().ok());
        record.dropped_betas = super::request_policy::betas(provider, asked_betas).1;
        let price = model.as_deref().and_then(|m| provider.prices.get(m)).copied();
        let counting = suffix.ends_with("count_tokens") || suffix == "countTokens";
        let worst = if counting { Spend::default() } else { worst_case(&request, text.len(), price) };
        // From here on, whatever happens, the reservation and the tokens
        // taken from the rate limits are settled exactly once.
        let settlement = self.limit(wire, provider_name, worst, record).await?;
        let (redacted, counts) = self.redactor.redact(&text);
        for (rule, n) in &counts.0 {
            record.redactions.insert((*rule).to_owned(), *n);
        }
        let call = Call { provider_name, provider, suffix, model: model.as_deref().unwrap_or_default() };
        // A call that gets no answer used nothing: dropping the settlement
        // on the way out books that.
        let sent = Instant::now();
        let (response, translator) = self.send(wire, &call, &redacted, headers, record).await?;
        let upstream = sent.elapsed();
        record.upstream_ms = upstream.as_millis() as u64;
        record.status = response.status().as_u16();
        record.latency_ms = started.elapsed().as_millis() as u64;
        record.upstream_request_id = ["x-request-id", "request-id", "x-amzn-requestid"]
            .iter()
            .find_map(|h| response.headers().get(*h).and_then(|v| v.to_str().ok()).map(str::to_owned));
        let entry = TranscriptEntry {
            request_id: record.request_id.clone(),
            at_ms: record.at_ms,
            provider: provider_name.clone(),
            model,
            request: redacted,
            ..Default::default()
        };
        let booking = Booking { record: record.clone(), settlement, price, started, upstream };
        Ok(self.clone().relay(response, translator, entry, booking))
    }

    /// The provider this run may use that serves `model` on this wire, or
    /// why there is none.
    fn provider_for(
        &self,
        wire: Wire,
        model: Option<&str>,
        record: &mut CallRecord,
    ) -> Result<(&String, &ProviderConfig), String> {
        let Some((name, provider)) = provider_of(&self.config, wire, model) else {
            let message =
                format!("model {:?} is not offered by any provider this run may use", model.unwrap_or_default());
            record.refusal = Some(message.clone());
            return Err(message);
        };
        record.provider = Some(name.clone());
        Ok((name, provider))
    }

    /// Takes the call's worst case from the rate limits and the budgets, or
    /// answers why not (with `retry-after` when waiting would help): the
    /// run's own limit in this process, then every shared rate and budget
    /// in one atomic round trip to Redis, which takes nothing when any of
    /// them refuses. Fails closed: when Redis cannot answer, the call is
    /// refused.
    async fn limit(
        &self,
        wire: Wire,
        provider: &str,
        worst: Spend,
        record: &mut CallRecord,
    ) -> Result<Settlement, Response<Body>> {
        let refuse = |record: &mut CallRecord, status, code: &str, message: String, wait: Option<Duration>| {
            record.refusal = Some(message.clone());
            let mut response = error(wire, status, code, &message);
            if let Some(wait) = wait {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response.headers_mut().insert("retry-after", HeaderValue::from(seconds.max(1)));
            }
            response
        };
        if let Some(limit) = &self.run_limit
            && let Err(not_until) = limit.check()
        {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            let message = "the run's request rate limit is reached".to_owned();
            return Err(refuse(record, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", message, Some(wait)));
        }
        let (rates, what): (Vec<Rate>, Vec<&str>) = self.rates(provider, worst.tokens).into_iter().unzip();
        let (run_limit, tenant_limit) = self.budgets();
        let budgeted = self.budgets_on() && worst != Spend::default();
        let reservation = budgeted.then_some(Reservation {
            run: self.run,
            tenant: &self.tenant,
            amount: worst,
            run_limit,
            tenant_limit,
        });
        let mut settlement = Settlement {
            queue: self.queue.clone(),
            run: self.run,
            tenant: self.tenant.clone(),
            worst,
            budgeted: None,
            token_rates: rates.iter().filter(|r| r.name.starts_with("tokens:")).cloned().collect(),
            done: false,
        };
        if rates.is_empty() && reservation.is_none() {
            return Ok(settlement);
        }
        match self.queue.admit(&rates, reservation.as_ref()).await {
            Ok(Admission::Admitted { day }) => {
                settlement.budgeted = budgeted.then_some(day);
                Ok(settlement)
            }
            Ok(Admission::RateLimited { index, wait }) => {
                // Nothing was taken: there is nothing to settle.
                settlement.done = true;
                let message = format!("the {} rate limit is reached", what.get(index).copied().unwrap_or("shared"));
                Err(refuse(record, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", message, Some(wait)))
            }
            Ok(Admission::OverBudget(which)) => {
                settlement.done = true;
                let message = if which.ends_with("cost") {
                    format!("the {which} budget does not cover this call (up to ${:.4})", worst.micro_usd as f64 / 1e6)
                } else {
                    format!("the {which}'s token budget does not cover this call ({} tokens at most)", worst.tokens)
                };
                Err(refuse(record, StatusCode::TOO_MANY_REQUESTS, "insufficient_quota", message, None))
            }
            Err(e) => {
                settlement.done = true;
                tracing::warn!(run_id = %self.run, error = %e, "rate limit and budget store unavailable; refusing");
                let message = "rate limits and budgets cannot be checked".to_owned();
                Err(refuse(record, StatusCode::SERVICE_UNAVAILABLE, "gateway_unavailable", message, None))
            }
        }
    }

    /// The provider's answer to the redacted request; when there is none
    /// the call used nothing and the caller gets a 502 saying why.
    async fn send(
        &self,
        wire: Wire,
        call: &Call<'_>,
        redacted: &str,
        headers: &hyper::HeaderMap,
        record: &mut CallRecord,
    ) -> Result<(reqwest::Response, Option<Translator>), Response<Body>> {
        let (provider_name, provider) = (call.provider_name, call.provider);
        let failed = |record: &mut CallRecord, code: &str, message: String| {
            record.refusal = Some(message.clone());
            error(wire, StatusCode::BAD_GATEWAY, code, &message)
        };
        let (upstream, plan) = match self.upstream(wire, provider, call.suffix, call.model, redacted, headers).await {
            Ok(upstream) => upstream,
            Err(Refusal::SignIn(message)) => {
                tracing::warn!(run_id = %self.run, provider = %provider_name, %message, "provider sign-in failed");
                return Err(failed(record, "upstream_auth_failed", message));
            }
            Err(Refusal::Unmapped(message)) => {
                record.refusal = Some(message.clone());
                return Err(error(wire, StatusCode::BAD_REQUEST, "invalid_request_error", &message));
            }
        };
        let response = upstream.send().await.map_err(|e| {
            // Names the host and, for a certificate this process does not
            // trust, says so: the handshake failed before the body left.
            let message = platform::outbound::describe(&e);
            tracing::warn!(run_id = %self.run, provider = %provider_name, %message, "provider unreachable");
            failed(record, "upstream_unreachable", message)
        })?;
        let translator = plan.and_then(|plan| plan.translator(wire, response.status().as_u16(), response.headers()));
        Ok((response, translator))
    }

    /// The answer, errors included, goes back as the provider sent it,
    /// redacted and streamed as it arrives (SSE included); a copy goes to
    /// the transcript. The call is booked when the stream ends or the
    /// client goes away (the guard lives in the stream, dropped then).
    /// A `translator` turns an answer in another dialect (Bedrock's) into
    /// the client's first.
    fn relay(
        self: Arc<Self>,
        response: reqwest::Response,
        translator: Option<Translator>,
        entry: TranscriptEntry,
        booking: Booking,
    ) -> Response<Body> {
        let mut builder = Response::builder().status(booking.record.status);
        if let Some(translator) = &translator {
            builder = builder.header(CONTENT_TYPE, translator.content_type());
        } else if let Some(content_type) = response.headers().get(CONTENT_TYPE) {
            builder = builder.header(CONTENT_TYPE, content_type.clone());
        }
        // How long the provider took to its answer's head, so a client can
        // tell the gateway's own time from the provider's.
        let upstream_ms = booking.upstream.as_secs_f64() * 1000.0;
        builder = builder.header("server-timing", format!("upstream;dur={upstream_ms:.3}"));
        let scrubber = StreamRedactor::new(self.redactor.clone());
        let call = Arc::new(Mutex::new(InFlight { scrubber, entry, translator }));
        let guard = CallGuard {
            gateway: self,
            call: call.clone(),
            record: Some(booking.record),
            settlement: Some(booking.settlement),
            price: booking.price,
            started: booking.started,
        };
        let tail = call.clone();
        let stream = response
            .bytes_stream()
            .map_err(std::io::Error::other)
            .map_ok(move |chunk| lock(&call).absorb(&chunk))
            .chain(futures::stream::once(async move { Ok(lock(&tail).flush()) }))
            .inspect(move |_| {
                let _keep = &guard;
            })
            .try_filter(|bytes| std::future::ready(!bytes.is_empty()))
            .map_ok(Frame::data);
        builder.body(BodyExt::boxed(StreamBody::new(stream))).unwrap_or_else(|_| internal())
    }

    /// The provider's request: its URL, its credentials, and the body in
    /// its dialect.
    /// Bedrock's also comes with the plan for translating its answer.
    async fn upstream(
        &self,
        wire: Wire,
        provider: &ProviderConfig,
        suffix: &str,
        model: &str,
        body: &str,
        headers: &hyper::HeaderMap,
    ) -> Result<(reqwest::RequestBuilder, Option<bedrock::Plan>), Refusal> {
        let header = |name: &str| headers.get(name).cloned();
        let base = provider.base_url.trim_end_matches('/');
        let post =
            |url: String, body: String| self.http.post(url).header("content-type", "application/json").body(body);
        let request = match provider.kind {
            ProviderKind::Openai => {
                post(format!("{base}/{suffix}"), body.to_owned()).bearer_auth(provider.api_key.expose_secret())
            }
            ProviderKind::AzureOpenai => {
                let deployment = provider.deployments.get(model).map_or(model, String::as_str);
                let version = provider.api_version.as_deref().unwrap_or("2024-10-21");
                let url = format!("{base}/openai/deployments/{deployment}/{suffix}?api-version={version}");
                post(url, body.to_owned()).header("api-key", provider.api_key.expose_secret())
            }
            ProviderKind::Anthropic => {
                let version = header("anthropic-version").unwrap_or(HeaderValue::from_static("2023-06-01"));
                let u = post(format!("{base}/{suffix}"), body.to_owned())
                    .header("x-api-key", provider.api_key.expose_secret())
                    .header("anthropic-version", version);
                with_betas(u, provider, headers)
            }
            ProviderKind::Vertex => {
                let (url, body) = super::vertex::request(provider, suffix, model, body).map_err(Refusal::Unmapped)?;
                let token = super::vertex::access_token(provider, &self.http).await.map_err(Refusal::SignIn)?;
                with_betas(post(url, body).bearer_auth(token), provider, headers)
            }
            ProviderKind::Gemini => {
                let upstream_model = provider.deployments.get(model).map_or(model, String::as_str);
                let stream = if suffix == "streamGenerateContent" { "?alt=sse" } else { "" };
                post(format!("{base}/models/{upstream_model}:{suffix}{stream}"), body.to_owned())
                    .header("x-goog-api-key", provider.api_key.expose_secret())
            }
            ProviderKind::Bedrock => {
                let asked = headers.get("anthropic-beta").and_then(|v| v.to_str().ok());
                let (betas, _) = super::request_policy::betas(provider, asked);
                let call = bedrock::Call::new(provider, wire, suffix, model, body, &betas)?;
                let keys = bedrock::keys(provider, &self.http).await?;
                let (request, plan) = call.signed(&self.http, provider, &keys)?;
                return Ok((request, Some(plan)));
            }
        };
        Ok((request, None))
    }

    fn budgets(&self) -> (Spend, Spend) {
        let micro = |usd: f64| (usd * 1e6).round() as u64;
        (
            Spend { tokens: self.config.run_token_budget, micro_usd: micro(self.config.run_cost_budget_usd) },
            Spend {
                tokens: self.config.tenant_daily_token_budget,
                micro_usd: micro(self.config.tenant_daily_cost_budget_usd),
            },
        )
    }

    fn budgets_on(&self) -> bool {
        self.budgets() != (Spend::default(), Spend::default())
    }

    /// The allowed models, in a shape both SDKs read: OpenAI's list
    /// (`object`, `data[].id`, `owned_by`) and Anthropic's (`type`,
    /// `display_name`, `has_more`, `first_id`, `last_id`).
    fn models(&self) -> Response<Body> {
        let data: Vec<serde_json::Value> = self
            .allowed()
            .flat_map(|(name, p)| {
                p.models.iter().map(move |m| {
                    serde_json::json!({"id": m, "object": "model", "type": "model", "display_name": m,
                        "created_at": "1970-01-01T00:00:00Z", "created": 0, "owned_by": name})
                })
            })
            .collect();
        let first = data.first().map(|m| m["id"].clone());
        let last = data.last().map(|m| m["id"].clone());
        json_response(
            StatusCode::OK,
            &serde_json::json!({"object": "list", "data": data, "has_more": false, "first_id": first, "last_id": last}),
        )
    }
}

/// `upstream` with the caller's `anthropic-beta` flags that `provider`
/// allows (none by default).
fn with_betas(
    upstream: reqwest::RequestBuilder,
    provider: &ProviderConfig,
    headers: &hyper::HeaderMap,
) -> reqwest::RequestBuilder {
    let asked = headers.get("anthropic-beta").and_then(|v| v.to_str().ok());
    let (kept, _) = super::request_policy::betas(provider, asked);
    if kept.is_empty() { upstream } else { upstream.header("anthropic-beta", kept.join(",")) }
}

/// The run token a request presents, as `Authorization: Bearer`,
/// `x-api-key`, `x-goog-api-key` or (Gemini's SDKs) a `key` query parameter.
pub(super) fn presented_token(req: &Request<Incoming>) -> Option<&str> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let query_key =
        || req.uri().query().into_iter().flat_map(|q| q.split('&')).find_map(|pair| pair.strip_prefix("key="));
    header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| header("x-api-key"))
        .or_else(|| header("x-goog-api-key"))
        .or_else(query_key)
}

/// The model and method of a Gemini API path,
/// `/v1beta/models/<model>:<method>`.
fn gemini_call(path: &str) -> Option<(&str, &'static str)> {
    let (model, method) = path.strip_prefix("/v1beta/models/")?.split_once(':')?;
    let method = match method {
        "generateContent" => "generateContent",
        "streamGenerateContent" => "streamGenerateContent",
        "countTokens" => "countTokens",
        _ => return None,
    };
    let plain = !model.is_empty() && model.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
    plain.then_some((model, method))
}

/// The wire API of a gateway endpoint and the provider path it maps to
/// (`None` for the model list, which the gateway answers itself).
pub(super) fn route(req: &Request<Incoming>) -> Option<(Wire, Option<&'static str>)> {
    Some(match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/models") => (Wire::OpenAi, None),
        (&Method::POST, "/v1/chat/completions") => (Wire::OpenAi, Some("chat/completions")),
        (&Method::POST, "/v1/responses") => (Wire::OpenAi, Some("responses")),
        (&Method::POST, "/v1/messages") => (Wire::Anthropic, Some("messages")),
        (&Method::POST, "/v1/messages/count_tokens") => (Wire::Anthropic, Some("messages/count_tokens")),
        (&Method::POST, path) => (Wire::Gemini, Some(gemini_call(path)?.1)),
        _ => return None,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call whose answer is streaming back.
struct InFlight {
    scrubber: StreamRedactor,
    entry: TranscriptEntry,
    /// Turns the provider's dialect into the client's, before redaction.
    translator: Option<Translator>,
}

impl InFlight {
    /// Redacts a chunk of the answer, keeps a copy, and returns what may go
    /// to the caller now.
    fn absorb(&mut self, chunk: &[u8]) -> Bytes {
        let out = match &mut self.translator {
            Some(translator) => self.scrubber.push(&translator.push(chunk)),
            None => self.scrubber.push(chunk),
        };
        self.keep(&out);
        out
    }

    fn flush(&mut self) -> Bytes {
        let mut out = match self.translator.take() {
            Some(mut translator) => self.scrubber.push(&translator.finish()).to_vec(),
            None => Vec::new(),
        };
        out.extend_from_slice(&self.scrubber.finish());
        self.keep(&out);
        Bytes::from(out)
    }

    fn keep(&mut self, bytes: &[u8]) {
        let entry = &mut self.entry;
        let room = MAX_TRANSCRIPT_RESPONSE.saturating_sub(entry.response.len());
        entry.response.extend_from_slice(&bytes[..bytes.len().min(room)]);
        entry.response_truncated |= bytes.len() > room;
    }
}

/// Books a streamed call when its stream ends or is abandoned: usage, cost,
/// budget settlement, redaction counts, transcript.
struct CallGuard {
    gateway: Arc<RunGateway>,
    call: Arc<Mutex<InFlight>>,
    record: Option<CallRecord>,
    settlement: Option<Settlement>,
    price: Option<ModelPrice>,
    started: Instant,
}

impl Drop for CallGuard {
    /// Runs as the stream ends, before the answer's last bytes go out: the
    /// booking itself is left to [`RunGateway::finish_later`].
    fn drop(&mut self) {
        let Some(mut record) = self.record.take() else { return };
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        let (call, settlement, price) = (self.call.clone(), self.settlement.take(), self.price);
        self.gateway.finish_later(move |gateway| {
            let (entry, counts) = {
                let mut call = lock(&call);
                let _ = call.flush();
                (std::mem::take(&mut call.entry), call.scrubber.counts().clone())
            };
            let usage = if entry.response_truncated { None } else { usage(&entry.response) };
            let worst = settlement.as_ref().map(|s| s.worst).unwrap_or_default();
            let actual = match usage {
                Some((tokens_in, tokens_out)) => {
                    record.tokens_in = tokens_in;
                    record.tokens_out = tokens_out;
                    record.usage_reported = true;
                    // Dollars per million tokens times tokens is micro-dollars.
                    let micro_usd = price.map_or(0.0, |p| {
                        tokens_in as f64 * p.input_usd_per_mtok + tokens_out as f64 * p.output_usd_per_mtok
                    });
                    record.cost_usd = micro_usd / 1e6;
                    Spend { tokens: tokens_in + tokens_out, micro_usd: micro_usd.ceil() as u64 }
                }
                // Without reported usage: nothing for a refusal, the worst
                // case otherwise (and the record says usage was not reported).
                None if record.status >= 400 => Spend::default(),
                None => {
                    record.cost_usd = worst.micro_usd as f64 / 1e6;
                    worst
                }
            };
            if let Some(settlement) = settlement {
                settlement.settle(actual);
            }
            for (rule, n) in &counts.0 {
                *record.redactions.entry((*rule).to_owned()).or_default() += n;
            }
            gateway.finish(record, Some(entry));
        });
    }
}

/// The first allowed provider, in the order the policy allows them, that
/// speaks `wire` and offers `model`.
fn provider_of<'c>(
    config: &'c GatewayConfig,
    wire: Wire,
    model: Option<&str>,
) -> Option<(&'c String, &'c ProviderConfig)> {
    let speaks = |kind: ProviderKind| match wire {
        Wire::Anthropic => matches!(kind, ProviderKind::Anthropic | ProviderKind::Vertex | ProviderKind::Bedrock),
        Wire::OpenAi => matches!(kind, ProviderKind::Openai | ProviderKind::AzureOpenai | ProviderKind::Bedrock),
        Wire::Gemini => kind == ProviderKind::Gemini,
    };
    let model = model?;
    allowed(config).find(|(_, p)| speaks(p.kind) && p.models.iter().any(|m| m == model))
}

/// The providers the policy allows, in its order.
fn allowed(config: &GatewayConfig) -> impl Iterator<Item = (&String, &ProviderConfig)> {
    config.allowed_providers.iter().filter_map(|name| config.providers.get_key_value(name))
}

/// Where one call goes.
struct Call<'a> {
    provider_name: &'a String,
    provider: &'a ProviderConfig,
    suffix: &'static str,
    model: &'a str,
}

/// What booking a call needs once its answer has streamed.
struct Booking {
    record: CallRecord,
    settlement: Settlement,
    price: Option<ModelPrice>,
    started: Instant,
    /// The provider's time to its answer's head.
    upstream: Duration,
}

/// The request body; `None` over `MAX_REQUEST_BYTES` (or when the client
/// goes away before it is all sent).
async fn read_body(body: Incoming) -> Option<Bytes> {
    Limited::new(body, MAX_REQUEST_BYTES).collect().await.ok().map(http_body_util::Collected::to_bytes)
}

pub(super) fn unauthorized(wire: Wire) -> Response<Body> {
    error(wire, StatusCode::UNAUTHORIZED, "invalid_api_key", "invalid or revoked run token")
}

/// Fails closed: when Redis cannot say whether a token is live, the call is
/// refused (a run's gateway logs it in the call's span, which names the run).
pub(super) fn tokens_unavailable(wire: Wire, e: &QueueError) -> Response<Body> {
    tracing::warn!(error = %e, "token store unavailable; refusing");
    error(wire, StatusCode::SERVICE_UNAVAILABLE, "gateway_unavailable", "run tokens cannot be checked")
}

/// A call the standalone gateway's hub counted in flight for the run's
/// worker: taken off the count if it ends unbooked (its client went away
/// before an answer); a booked call's record takes it off instead.
pub(super) struct CountedCall(Option<(RunQueue, RunId)>);

impl CountedCall {
    pub(super) fn new(queue: RunQueue, run: RunId) -> Self {
        Self(Some((queue, run)))
    }

    fn booked(mut self) {
        self.0 = None;
    }
}

impl Drop for CountedCall {
    fn drop(&mut self) {
        let Some((queue, run)) = self.0.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = queue.gateway_call_dropped(run).await {
                    tracing::warn!(run_id = %run, %error, "an abandoned call stays counted in flight until it expires");
                }
            });
        }
    }
}

/// Counts a booking in flight until it is done (or its task is dropped).
struct PendingBooking(Arc<RunGateway>);

impl Drop for PendingBooking {
    fn drop(&mut self) {
        self.0.bookings.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Books a call's real use, once: settles its budget reservation and gives
/// the unused part of its worst case back to the token rate limits.
struct Settlement {
    queue: RunQueue,
    run: RunId,
    tenant: String,
    worst: Spend,
    /// The UTC day `worst` was reserved on against budgets, if it was.
    budgeted: Option<u64>,
    /// Token-per-minute rates the worst case was taken from.
    token_rates: Vec<Rate>,
    /// Booked already (or nothing was taken).
    done: bool,
}

impl Settlement {
    fn settle(mut self, actual: Spend) {
        self.book(actual);
    }

    fn book(&mut self, actual: Spend) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        // A rate took at most its burst of the worst case: what goes back
        // is what it took less what the call used of that.
        let mut rates: Vec<Rate> = std::mem::take(&mut self.token_rates)
            .into_iter()
            .map(|rate| {
                let taken = self.worst.tokens.min(rate.per_minute);
                Rate { cells: taken.saturating_sub(actual.tokens.min(rate.per_minute)), ..rate }
            })
            .collect();
        rates.retain(|rate| rate.cells > 0);
        if self.budgeted.is_none() && rates.is_empty() {
            return;
        }
        let (queue, run, tenant, worst, budgeted) =
            (self.queue.clone(), self.run, self.tenant.clone(), self.worst, self.budgeted);
        tokio::spawn(async move {
            if let Some(day) = budgeted
                && let Err(error) = queue.settle_budget(run, &tenant, day, worst, actual).await
            {
                tracing::warn!(run_id = %run, %error, "settling a budget reservation failed; it stays reserved");
            }
            if !rates.is_empty()
                && let Err(error) = queue.rate_refund(&rates).await
            {
                tracing::warn!(run_id = %run, %error, "returning unused tokens to the rate limits failed");
            }
        });
    }
}

impl Drop for Settlement {
    /// A call that never reached the provider uses nothing.
    fn drop(&mut self) {
        self.book(Spend::default());
    }
}

/// The most a call can use: its output cap (or 4096) plus its prompt of
/// `bytes` at four bytes a token, and what that costs at the model's price.
fn worst_case(json: &serde_json::Value, bytes: usize, price: Option<ModelPrice>) -> Spend {
    let output = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| json.get(*k).and_then(serde_json::Value::as_u64))
        .or_else(|| json.pointer("/generationConfig/maxOutputTokens").and_then(serde_json::Value::as_u64))
        .unwrap_or(4096);
    let input = bytes as u64 / 4 + 1;
    let micro_usd = price
        .map_or(0, |p| (input as f64 * p.input_usd_per_mtok + output as f64 * p.output_usd_per_mtok).ceil() as u64);
    Spend { tokens: input + output, micro_usd }
}

/// Input and output tokens a provider reported in a JSON answer or an SSE
/// stream: OpenAI `prompt_tokens`/`completion_tokens`, Responses and
/// Anthropic `input_tokens`/`output_tokens` (Anthropic streams report them
/// in `message_start` and, cumulatively, in `message_delta`), Gemini
/// `usageMetadata` (output is candidates plus thoughts; cumulative in
/// streams).
pub(crate) fn usage(body: &[u8]) -> Option<(u64, u64)> {
    let text = String::from_utf8_lossy(body);
    let documents: Vec<serde_json::Value> = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).ok().into_iter().collect()
    } else {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str(d.trim()).ok())
            .collect()
    };
    let mut found = None;
    for doc in &documents {
        if let Some(meta) = doc.get("usageMetadata") {
            let get = |k: &str| meta.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            let (seen_in, seen_out) = found.unwrap_or((0, 0));
            let output = get("candidatesTokenCount") + get("thoughtsTokenCount");
            found = Some((seen_in.max(get("promptTokenCount")), seen_out.max(output)));
        }
        let places = [doc.get("usage"), doc.pointer("/message/usage"), doc.pointer("/response/usage")];
        for usage in places.into_iter().flatten() {
            let get = |keys: &[&str]| keys.iter().find_map(|k| usage.get(*k).and_then(serde_json::Value::as_u64));
            let (seen_in, seen_out) = found.unwrap_or((0, 0));
            let input = get(&["prompt_tokens", "input_tokens"]).unwrap_or(0);
            let output = get(&["completion_tokens", "output_tokens"]).unwrap_or(0);
            found = Some((seen_in.max(input), seen_out.max(output)));
        }
    }
    found
}

impl Wire {
    fn name(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
        }
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let body = Full::new(Bytes::from(value.to_string())).map_err(|never| match never {}).boxed();
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_else(|_| internal())
}

pub(super) fn json_ok(value: &serde_json::Value) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

fn internal() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// An error in the shape the client's SDK expects.
pub(super) fn error(wire: Wire, status: StatusCode, code: &str, message: &str) -> Response<Body> {
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
        // Google's shape: the HTTP code, a message, the canonical status.
        Wire::Gemini => {
            let kind = match status {
                StatusCode::BAD_REQUEST => "INVALID_ARGUMENT",
                StatusCode::UNAUTHORIZED => "UNAUTHENTICATED",
                StatusCode::FORBIDDEN => "PERMISSION_DENIED",
                StatusCode::NOT_FOUND => "NOT_FOUND",
                StatusCode::TOO_MANY_REQUESTS => "RESOURCE_EXHAUSTED",
                StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            serde_json::json!({"error": {"code": status.as_u16(), "message": message, "status": kind}})
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
        let bound = platform::listener::Bound::new("run gateway", platform::listener::RUN_CONNECTIONS);
        platform::listener::accept_until(listener, stop.clone(), bound, move |stream| {
            let gateway = gateway.clone();
            let service = hyper::service::service_fn(move |req| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(req, false, None).await) }
            });
            platform::listener::serve_http(stream, service)
        });
        Ok(Self { address, stop })
    }
}

/// A finished call in the metrics: calls, time (total, waiting upstream,
/// the gateway's own), tokens, cost, refusals and redactions.
fn count_call(record: &CallRecord) {
    use platform::metrics::{global, labels};
    let metrics = global();
    let provider = record.provider.as_deref().unwrap_or("none");
    let tenant = record.tenant.as_str();
    let class = format!("{}xx", record.status / 100);
    metrics
        .gateway_calls
        .get_or_create(&labels([("tenant", tenant), ("provider", provider), ("status", &class)]))
        .inc();
    let seconds = |ms: u64| ms as f64 / 1000.0;
    let part = |name: &str| labels([("provider", provider), ("part", name)]);
    metrics.gateway_duration.get_or_create(&part("total")).observe(seconds(record.duration_ms));
    if record.upstream_ms > 0 || record.status < 400 {
        metrics.gateway_duration.get_or_create(&part("upstream")).observe(seconds(record.upstream_ms));
        let own = record.latency_ms.saturating_sub(record.upstream_ms);
        metrics.gateway_duration.get_or_create(&part("overhead")).observe(seconds(own));
    } else {
        // Never sent on: the gateway answered itself.
        let reason = match record.status {
            400 => "invalid_request",
            401 => "unauthenticated",

            403 => "not_allowed",
            404 => "not_found",
            413 => "too_large",
            429 if record.refusal.as_deref().is_some_and(|r| r.contains("budget")) => "budget",
            429 => "rate_limited",
            502..=504 => "upstream_unavailable",
            _ => "other",
        };
        metrics.gateway_refusals.get_or_create(&labels([("tenant", tenant), ("reason", reason)])).inc();
    }
    for (direction, tokens) in [("in", record.tokens_in), ("out", record.tokens_out)] {
        let key = labels([("tenant", tenant), ("provider", provider), ("direction", direction)]);
        metrics.gateway_tokens.get_or_create(&key).inc_by(tokens);
    }
    if record.cost_usd > 0.0 {
        metrics
            .gateway_cost
            .get_or_create(&labels([("tenant", tenant), ("provider", provider)]))
            .inc_by(record.cost_usd);
    }
    for (rule, n) in &record.redactions {
        metrics.redactions.get_or_create(&labels([("rule", rule)])).inc_by(u64::from(*n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_goes_to_the_first_allowed_provider_that_speaks_its_wire_and_offers_its_model() {
        let provider = |kind: &str, models: &[&str]| serde_json::json!({"kind": kind, "base_url": "https://p.example", "api_key": "k", "models": models});
        let config: GatewayConfig = serde_json::from_value(serde_json::json!({
            "providers": {
                "azure": provider("azure_openai", &["gpt-4.1"]),
                "openai": provider("openai", &["gpt-4.1", "o3"]),
                "anthropic": provider("anthropic", &["claude-sonnet-4"]),
                "vertex": provider("vertex", &["claude-sonnet-4"]),
                "unlisted": provider("openai", &["secret-model"]),
            },
            "allowed_providers": ["azure", "openai", "vertex", "anthropic"],
        }))
        .expect("a gateway config");
        let to = |wire, model| provider_of(&config, wire, model).map(|(name, _)| name.as_str());
        assert_eq!(to(Wire::OpenAi, Some("gpt-4.1")), Some("azure"), "the first allowed that offers it");
        assert_eq!(to(Wire::OpenAi, Some("o3")), Some("openai"));
        assert_eq!(to(Wire::Anthropic, Some("claude-sonnet-4")), Some("vertex"), "allowed order, not name order");
        assert_eq!(to(Wire::Anthropic, Some("gpt-4.1")), None, "no Anthropic-speaking provider offers it");
        assert_eq!(to(Wire::OpenAi, Some("secret-model")), None, "a provider the policy does not allow");
        assert_eq!(to(Wire::OpenAi, None), None, "a request without a model");
    }

    #[test]
    fn gemini_paths_name_their_model_and_method() {
        assert_eq!(
            gemini_call("/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
            Some(("gemini-2.5-pro", "streamGenerateContent"))
        );
        assert_eq!(
            gemini_call("/v1beta/models/gemini-2.5-flash:countTokens"),
            Some(("gemini-2.5-flash", "countTokens"))
        );
        assert_eq!(gemini_call("/v1beta/models/gemini-2.5-pro:batchGenerateContent"), None, "a method not served");
        assert_eq!(gemini_call("/v1beta/models/../x:generateContent"), None);
        assert_eq!(gemini_call("/v1/models/gemini:generateContent"), None);
        let request = serde_json::json!({"generationConfig": {"maxOutputTokens": 50}});
        assert_eq!(worst_case(&request, 40, None).tokens, 50 + 40 / 4 + 1);
    }

    #[test]
    fn the_worst_case_takes_the_asked_output_limit_or_4096_and_prices_both_sides() {
        let price = ModelPrice { input_usd_per_mtok: 3.0, output_usd_per_mtok: 15.0 };
        let cases = [
            (r#"{"max_tokens":100}"#, 100),
            (r#"{"max_completion_tokens":200}"#, 200),
            (r#"{"max_output_tokens":300}"#, 300),
            (r#"{"messages":[]}"#, 4096),
            (r#"["not an object"]"#, 4096),
        ];
        for (request, output) in cases {
            let input = request.len() as u64 / 4 + 1;
            let json: serde_json::Value = serde_json::from_str(request).expect("JSON");
            let spend = worst_case(&json, request.len(), Some(price));
            assert_eq!(spend.tokens, input + output, "{request}");
            let micro = (input as f64 * 3.0 + output as f64 * 15.0).ceil() as u64;
            assert_eq!(spend.micro_usd, micro, "{request}");
            assert_eq!(worst_case(&json, request.len(), None).micro_usd, 0, "no price, no cost");
        }
    }

    #[test]
    fn usage_is_read_from_every_wire_and_from_streams() {
        let cases: [(&str, Option<(u64, u64)>); 7] = [
            (r#"{"usage":{"prompt_tokens":12,"completion_tokens":5}}"#, Some((12, 5))),
            (r#"{"usage":{"input_tokens":7,"output_tokens":3}}"#, Some((7, 3))),
            (
                "event: response.completed\ndata: {\"response\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":4}}}\n\n",
                Some((9, 4)),
            ),
            // Anthropic: input in message_start, output (cumulative) in message_delta.
            (
                "data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\
                 data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n",
                Some((12, 5)),
            ),
            ("data: {\"choices\":[]}\ndata: [DONE]\n", None),
            // Gemini: cumulative usageMetadata in each chunk; thoughts are output.
            (
                "data: {\"usageMetadata\":{\"promptTokenCount\":30,\"candidatesTokenCount\":2}}\r\n\r\n\
                 data: {\"usageMetadata\":{\"promptTokenCount\":30,\"candidatesTokenCount\":8,\"thoughtsTokenCount\":4}}\r\n\r\n",
                Some((30, 12)),
            ),
            ("", None),
        ];
        for (body, expected) in cases {
            assert_eq!(usage(body.as_bytes()), expected, "{body}");
        }
    }
}
