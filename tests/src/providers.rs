//! Emulated model providers for tests: an OpenAI-compatible and an
//! Anthropic-compatible server with the real paths, auth headers, error
//! shapes and SSE streams, recording every request body they receive; and
//! Claude on Vertex AI behind a Google OAuth token endpoint that accepts
//! only service-account assertions signed with a registered key; and the
//! AWS Bedrock runtime with STS and instance metadata ([`bedrock`]).

mod bedrock;

pub use bedrock::{EmulatedImds, REGION as BEDROCK_REGION};

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::scripted::{self, Step};

#[derive(Clone)]
struct State {
    key: String,
    received: Arc<Mutex<Vec<String>>>,
    /// The `anthropic-beta` header of each Messages request ("" without one).
    betas: Arc<Mutex<Vec<String>>>,
    /// Streams the client abandoned before their end.
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
    google: Arc<Mutex<Google>>,
    /// Answers of the `gpt-scripted` model, by turn.
    script: Arc<Mutex<Vec<String>>>,
    /// The scripted models' plan, through the client's own tools (used
    /// instead of `script` when set).
    plan: Arc<Mutex<Vec<Step>>>,
    /// Requests refused for a wrong key.
    refused: Arc<std::sync::atomic::AtomicUsize>,
    aws: Arc<Mutex<bedrock::Aws>>,
}

/// The emulated Google identity side: service accounts (email → public key
/// PEM) and the access tokens issued (token → expiry).
#[derive(Default)]
struct Google {
    accounts: std::collections::HashMap<String, Vec<u8>>,
    tokens: std::collections::HashMap<String, std::time::Instant>,
    /// How long issued tokens live.
    lifetime_secs: u64,
}

pub struct EmulatedProviders {
    /// Base URL for both kinds: `<base>/chat/completions`, `<base>/messages`.
    pub base_url: String,
    pub key: String,
    received: Arc<Mutex<Vec<String>>>,
    betas: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
    google: Arc<Mutex<Google>>,
    script: Arc<Mutex<Vec<String>>>,
    plan: Arc<Mutex<Vec<Step>>>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    aws: Arc<Mutex<bedrock::Aws>>,
    /// `https://127.0.0.1:<port>`: the Vertex base URL and the token host.
    pub root_url: String,
    server: actix_web::dev::ServerHandle,
}

impl EmulatedProviders {
    pub async fn start() -> Self {
        let key = format!("provider-key-{}", ulid::Ulid::new());
        let received = Arc::new(Mutex::new(Vec::new()));
        let betas = Arc::new(Mutex::new(Vec::new()));
        let abandoned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let google = Arc::new(Mutex::new(Google { lifetime_secs: 3599, ..Google::default() }));
        let script = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let aws = Arc::new(Mutex::new(bedrock::Aws::default()));
        let state = web::Data::new(State {
            aws: aws.clone(),
            plan: plan.clone(),
            refused: refused.clone(),
            key: key.clone(),
            received: received.clone(),
            betas: betas.clone(),
            abandoned: abandoned.clone(),
            google: google.clone(),
            script: script.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // Real providers take requests of tens of MiB (Anthropic: 32 MB).
                .app_data(web::PayloadConfig::new(32 << 20))
                .route("/v1/chat/completions", web::post().to(openai))
                .route("/v1/responses", web::post().to(responses))
                .route("/openai/deployments/{deployment}/chat/completions", web::post().to(azure))
                .route("/v1/messages", web::post().to(anthropic))
                .route("/token", web::post().to(google_token))
                .route("/v1beta/models/{call}", web::post().to(gemini))
                .route(
                    "/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{call}",
                    web::post().to(vertex),
                )
                .route("/model/{model}/{operation}", web::post().to(bedrock::runtime))
                .route("/sts", web::post().to(bedrock::sts))
        })
        .workers(1)
        .bind_rustls_0_23(("127.0.0.1", 0), crate::tls::server_config())
        .expect("bind emulated provider");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            base_url: format!("https://127.0.0.1:{port}/v1"),
            root_url: format!("https://127.0.0.1:{port}"),
            key,
            received,
            betas,
            abandoned,
            google,
            script,
            plan,
            refused,
            aws,
            server: handle,
        }
    }

    /// New long-lived AWS keys the emulated Bedrock accepts: (access key
    /// id, secret access key).
    pub fn bedrock_keys(&self) -> (String, String) {
        self.aws.lock().unwrap().new_keys()
    }

    /// A web identity STS trusts for a new role: (role ARN, token file in
    /// `dir`), as EKS projects a service account's token.
    pub fn bedrock_web_identity(&self, dir: &std::path::Path) -> (String, std::path::PathBuf) {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let role = format!("arn:aws:iam::123456789012:role/paddock-gateway-{id}");
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{id}.sig");
        self.aws.lock().unwrap().trust_identity(&token, &role);
        let file = dir.join(format!("token-{id}"));
        std::fs::write(&file, format!("{token}\n")).unwrap();
        (role, file)
    }

    /// `https://127.0.0.1:<port>/sts`: the emulated STS endpoint.
    pub fn sts_url(&self) -> String {
        format!("{}/sts", self.root_url)
    }

    /// An instance metadata service handing out keys this Bedrock accepts.
    pub async fn start_imds(&self) -> EmulatedImds {
        EmulatedImds::start(self.aws.clone(), None).await
    }

    /// An instance metadata service whose role has the keys `fixed`.
    pub async fn start_imds_with(&self, fixed: (String, String)) -> EmulatedImds {
        EmulatedImds::start(self.aws.clone(), Some(fixed)).await
    }

    /// The next `requests` Bedrock calls get a ThrottlingException.
    pub fn bedrock_throttle(&self, requests: usize) {
        self.aws.lock().unwrap().throttle(requests);
    }

    /// Bedrock requests refused for their signature or credentials.
    pub fn bedrock_refused(&self) -> usize {
        self.aws.lock().unwrap().refused
    }

    /// Temporary keys issued by STS and the metadata service.
    pub fn aws_keys_issued(&self) -> usize {
        self.aws.lock().unwrap().issued
    }

    /// Every SigV4 `authorization` and `x-amz-security-token` presented.
    pub fn aws_presented(&self) -> Vec<String> {
        self.aws.lock().unwrap().presented.clone()
    }

    /// What the `gpt-scripted` model answers: turn `n` of a conversation
    /// (counted by the assistant messages it already holds) gets `steps[n]`,
    /// and `PADDOCK_DONE` after the last.
    pub fn script(&self, steps: &[&str]) {
        *self.script.lock().unwrap() = steps.iter().map(|s| (*s).to_owned()).collect();
    }

    /// What the scripted models (`gpt-scripted`, `claude-scripted`) do,
    /// turn by turn, through the tools each client offers; after the last
    /// step they say they are done.
    pub fn plan(&self, steps: &[Step]) {
        *self.plan.lock().unwrap() = steps.to_vec();
    }

    /// Requests refused because they did not carry the provider's key.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A new service account whose key the token endpoint trusts, written
    /// as a Google key file in `dir`; `registered: false` writes a key the
    /// endpoint does not know.
    pub fn vertex_credentials(&self, dir: &std::path::Path, registered: bool) -> std::path::PathBuf {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let private = dir.join(format!("sa-{id}.pem"));
        let public = crate::rsa_key_pair(&private);
        let email = format!("paddock-{id}@acme-ai.iam.gserviceaccount.com");
        if registered {
            self.google.lock().unwrap().accounts.insert(email.clone(), public);
        }
        let key = json!({
            "type": "service_account", "project_id": "acme-ai", "private_key_id": id,
            "private_key": std::fs::read_to_string(&private).unwrap(), "client_email": email,
            "token_uri": format!("{}/token", self.root_url),
        });
        let path = dir.join(format!("sa-{id}.json"));
        std::fs::write(&path, key.to_string()).unwrap();
        path
    }

    /// How many access tokens the token endpoint issued.
    pub fn google_tokens_issued(&self) -> usize {
        self.google.lock().unwrap().tokens.len()
    }

    /// How many slow streams (model `gpt-slow`) the far side abandoned.
    pub fn abandoned_streams(&self) -> usize {
        self.abandoned.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The `anthropic-beta` header of every Messages request ("" for none).
    pub fn received_betas(&self) -> Vec<String> {
        self.betas.lock().unwrap().clone()
    }

    /// Every request body received so far.
    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}

fn sse(events: Vec<String>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/event-stream").body(events.concat())
}

/// Checks the OpenAI bearer key, records the body and parses it.
fn openai_request(req: &HttpRequest, body: &[u8], state: &State) -> Result<Value, Box<HttpResponse>> {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if auth != format!("Bearer {}", state.key) {
        state.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return Err(Box::new(HttpResponse::Unauthorized().json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}))));
    }
    let text = String::from_utf8_lossy(body).into_owned();
    state.received.lock().unwrap().push(text.clone());
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

async fn openai(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let request = match openai_request(&req, &body, &state) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    if model == "gpt-slow" {
        return slow_stream(state.abandoned.clone());
    }
    if model == "gpt-leaky" {
        return leaky_answer(request["stream"] == true);
    }
    if model.ends_with("-scripted") && !state.plan.lock().unwrap().is_empty() {
        let turn = scripted::messages_turn(&request);
        let answer = scripted::answer(&planned(&state, turn), &scripted::chat_tools(&request));
        let usage = request["stream_options"]["include_usage"] == true;
        return reply(scripted::chat(&answer, &json!(model), turn, request["stream"] == true, usage));
    }
    if model == "gpt-scripted" {
        return scripted_answer(&request, &state.script.lock().unwrap());
    }
    if request["stream"] == true {
        let chunks = ["Hel", "lo from ", "the emulated provider"]
            .iter()
            .map(|piece| {
                let chunk = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                format!("data: {chunk}\n\n")
            })
            .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
            .collect();
        return sse(chunks);
    }
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the emulated provider"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    }))
}

async fn anthropic(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let key = req.headers().get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if key != state.key {
        state.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return HttpResponse::Unauthorized()
            .json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}));
    }
    if req.headers().get("anthropic-version").is_none() {
        return HttpResponse::BadRequest().json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version header is required"}}));
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    state.received.lock().unwrap().push(text.clone());
    let beta = req.headers().get("anthropic-beta").and_then(|v| v.to_str().ok()).unwrap_or_default();
    state.betas.lock().unwrap().push(beta.to_owned());
    let request: Value = serde_json::from_str(&text).unwrap_or_default();
    let model = request["model"].clone();
    if model.as_str().is_some_and(|m| m.ends_with("-scripted")) {
        let turn = scripted::messages_turn(&request);
        let answer = scripted::answer(&planned(&state, turn), &scripted::messages_tools(&request));
        return reply(scripted::messages(&answer, &model, turn, request["stream"] == true));
    }
    messages_answer(&request, model)
}

/// The plan's step for `turn`, or the closing words after its last.
fn planned(state: &State, turn: usize) -> Step {
    let plan = state.plan.lock().unwrap();
    plan.get(turn).cloned().unwrap_or_else(|| Step::Say("Done: every step of the plan ran.".to_owned()))
}

fn reply((body, content_type): (String, &'static str)) -> HttpResponse {
    HttpResponse::Ok().content_type(content_type).body(body)
}

/// An Anthropic Messages answer, streamed or whole.
fn messages_answer(request: &Value, model: Value) -> HttpResponse {
    if request["stream"] == true {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [], "usage": {"input_tokens": 12, "output_tokens": 1}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello from the emulated provider"}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        return sse(events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect());
    }
    HttpResponse::Ok().json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello from the emulated provider"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 5}
    }))
}

async fn responses(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let request = match openai_request(&req, &body, &state) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    if request["model"].as_str().is_some_and(|m| m.ends_with("-scripted")) {
        let turn = scripted::responses_turn(&request);
        let answer = scripted::answer(&planned(&state, turn), &scripted::responses_tools(&request));
        return reply(scripted::responses(&answer, &request["model"], turn, request["stream"] == true));
    }
    let output_text = "Hello from the emulated provider";
    let response = json!({
        "id": "resp_1", "object": "response", "created_at": 1, "model": request["model"], "status": "completed",
        "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": output_text, "annotations": []}]}],
        "usage": {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": []
    });
    if request["stream"] == true {
        let mut created = response.clone();
        created["status"] = json!("in_progress");
        created["output"] = json!([]);
        let events = [
            ("response.created", json!({"type": "response.created", "sequence_number": 0, "response": created})),
            (
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hello from ", "logprobs": []}),
            ),
            (
                "response.output_text.delta",
                json!({"type": "response.output_text.delta", "sequence_number": 2, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "the emulated provider", "logprobs": []}),
            ),
            ("response.completed", json!({"type": "response.completed", "sequence_number": 3, "response": response})),
        ];
        return sse(events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect());
    }
    HttpResponse::Ok().json(response)
}

/// An error in Google's shape (Gemini and Vertex AI).
fn google_error(status: u16, message: &str, kind: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({"error": {"code": status, "message": message, "status": kind}}))
}

/// Google's Gemini API: `models/<model>:generateContent` or
/// `:streamGenerateContent?alt=sse`, the key in `x-goog-api-key`, Google's
/// error shape.
async fn gemini(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let key = req.headers().get("x-goog-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if key != state.key {
        state.refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return google_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT");
    }
    let call = req.match_info().query("call").to_owned();
    let Some((model, method)) = call.split_once(':') else {
        return google_error(404, "Requested entity was not found.", "NOT_FOUND");
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    state.received.lock().unwrap().push(text.clone());
    let request: Value = serde_json::from_str(&text).unwrap_or_default();
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" if req.query_string().contains("alt=sse") => true,
        "countTokens" => return HttpResponse::Ok().json(json!({"totalTokens": 40})),
        _ => return google_error(404, "Requested entity was not found.", "NOT_FOUND"),
    };
    let turn = scripted::gemini_turn(&request);
    let step = match model.ends_with("-scripted") {
        true => planned(&state, turn),
        false => Step::Say("Hello from the emulated provider".to_owned()),
    };
    let answer = scripted::answer(&step, &scripted::gemini_tools(&request));
    reply(scripted::gemini(&answer, model, turn, stream))
}

/// Azure OpenAI: deployment path, `api-key` header, `api-version` query.
async fn azure(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let key = req.headers().get("api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if key != state.key {
        return HttpResponse::Unauthorized().json(json!({"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}}));
    }
    if !req.query_string().starts_with("api-version=") {
        return HttpResponse::NotFound().json(json!({"error": {"code": "404", "message": "Resource not found"}}));
    }
    let deployment = req.match_info().query("deployment").to_owned();
    state.received.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-az", "object": "chat.completion", "model": deployment,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("Hello from deployment {deployment}")}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    }))
}

/// Counts a stream as abandoned unless it reached its end (which takes the
/// counter out first).
struct Abandon(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// Fifty chunks, 100 ms apart: long enough for a client to give up.
fn slow_stream(abandoned: Arc<std::sync::atomic::AtomicUsize>) -> HttpResponse {
    let stream = futures::stream::unfold((0u32, Abandon(Some(abandoned))), |(i, mut guard)| async move {
        if i == 50 {
            guard.0.take();
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let chunk = json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "x"}}]});
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(format!("data: {chunk}\n\n"))), (i + 1, guard)))
    });
    HttpResponse::Ok().content_type("text/event-stream").streaming(stream)
}

/// An answer that repeats a credential the model should not have known,
/// streamed with the credential split between two network writes.
fn leaky_answer(stream: bool) -> HttpResponse {
    let secret = format!("AKIA{}", "L".repeat(16));
    if !stream {
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-2", "object": "chat.completion", "model": "gpt-leaky",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("use {secret} here")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        }));
    }
    let event = format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": format!("use {secret} here")}}]})
    );
    let (first, second) = event.split_at(event.find(&secret).unwrap() + 9);
    let pieces = vec![first.to_owned(), second.to_owned(), "data: [DONE]\n\n".to_owned()];
    let stream = futures::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        Ok::<_, actix_web::Error>(web::Bytes::from(piece))
    });
    HttpResponse::Ok().content_type("text/event-stream").streaming(stream)
}

/// Google's OAuth token endpoint for the JWT-bearer grant: the assertion
/// must be RS256-signed by a registered service account, for this endpoint,
/// with the cloud-platform scope and at most an hour of life.
async fn google_token(
    form: web::Form<std::collections::HashMap<String, String>>,
    state: web::Data<State>,
) -> HttpResponse {
    let invalid = |description: &str| {
        HttpResponse::BadRequest().json(json!({"error": "invalid_grant", "error_description": description}))
    };
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return HttpResponse::BadRequest()
            .json(json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}));
    }
    let Some(assertion) = form.get("assertion") else { return invalid("Missing assertion") };
    // Read the issuer first, to know whose key must have signed it.
    let Ok(unverified) = jsonwebtoken::dangerous::insecure_decode::<Value>(assertion) else {
        return invalid("Invalid JWT: malformed");
    };
    let email = unverified.claims["iss"].as_str().unwrap_or_default().to_owned();
    let Some(public) = state.google.lock().unwrap().accounts.get(&email).cloned() else {
        return invalid("Invalid JWT Signature.");
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(&public) else { return invalid("Invalid key") };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[unverified.claims["aud"].as_str().unwrap_or_default()]);
    let Ok(verified) = jsonwebtoken::decode::<Value>(assertion, &key, &validation) else {
        return invalid("Invalid JWT Signature.");
    };
    let claims = verified.claims;
    let aud_ok = claims["aud"].as_str().is_some_and(|a| a.ends_with("/token"));
    let life = claims["exp"].as_u64().unwrap_or(0).saturating_sub(claims["iat"].as_u64().unwrap_or(0));
    if !aud_ok || life > 3600 || claims["scope"] != "https://www.googleapis.com/auth/cloud-platform" {
        return invalid("Invalid JWT: audience, scope or lifetime");
    }
    let token = format!("ya29.{}", ulid::Ulid::new());
    let mut google = state.google.lock().unwrap();
    let lifetime = google.lifetime_secs;
    google.tokens.insert(token.clone(), std::time::Instant::now() + std::time::Duration::from_secs(lifetime));
    HttpResponse::Ok().json(json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}))
}

/// Claude on Vertex AI: `<model>@<version>:rawPredict` or
/// `:streamRawPredict` (and `count-tokens:rawPredict`), an OAuth bearer
/// token, no `model` in the body and `anthropic_version` in it.
async fn vertex(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let live = auth
        .strip_prefix("Bearer ")
        .and_then(|t| state.google.lock().unwrap().tokens.get(t).copied())
        .is_some_and(|until| std::time::Instant::now() < until);
    if !live {
        return google_error(
            401,
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            "UNAUTHENTICATED",
        );
    }
    let call = req.match_info().query("call").to_owned();
    let Some((model, method)) = call.split_once(':') else {
        return google_error(404, "The requested URL was not found on this server.", "NOT_FOUND");
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let request: Value = serde_json::from_str(&text).unwrap_or_default();
    if request["anthropic_version"] != "vertex-2023-10-16" {
        return google_error(400, "anthropic_version: vertex-2023-10-16 is required", "INVALID_ARGUMENT");
    }
    state.received.lock().unwrap().push(text.clone());
    if model == "count-tokens" {
        return HttpResponse::Ok().json(json!({"input_tokens": 9}));
    }
    if request.get("model").is_some() {
        return google_error(400, "model: Extra inputs are not permitted", "INVALID_ARGUMENT");
    }
    let streaming = request["stream"] == true;
    if (method == "streamRawPredict") != streaming || !matches!(method, "rawPredict" | "streamRawPredict") {
        return google_error(400, "stream must match the method", "INVALID_ARGUMENT");
    }
    messages_answer(&request, json!(model))
}

/// The scripted model's turn: the step for the number of assistant
/// messages so far. Asked with a `bash` tool (as mini-swe-agent asks), it
/// answers with a tool call running the step's ```bash block, and
/// `echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT` for `PADDOCK_DONE`.
fn scripted_answer(request: &Value, script: &[String]) -> HttpResponse {
    let turn = request["messages"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count());
    let answer = script.get(turn).cloned().unwrap_or_else(|| "PADDOCK_DONE".to_owned());
    let has_bash_tool =
        request["tools"].as_array().is_some_and(|tools| tools.iter().any(|t| t["function"]["name"] == "bash"));
    let message = if has_bash_tool {
        let command = match answer.split_once("```bash\n") {
            Some((_, rest)) => rest.split("```").next().unwrap_or_default().trim().to_owned(),
            None => "echo COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT".to_owned(),
        };
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": format!("call_{turn}"), "type": "function",
            "function": {"name": "bash", "arguments": json!({"command": command}).to_string()},
        }]})
    } else {
        json!({"role": "assistant", "content": answer})
    };
    let finish = if has_bash_tool { "tool_calls" } else { "stop" };
    HttpResponse::Ok().json(json!({
        "id": format!("chatcmpl-s{turn}"), "object": "chat.completion", "created": 1, "model": "gpt-scripted",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50}
    }))
}
