//! Emulated model providers for tests: an OpenAI-compatible and an
//! Anthropic-compatible server with the real paths, auth headers, error
//! shapes and SSE streams, recording every request body they receive.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

#[derive(Clone)]
struct State {
    key: String,
    received: Arc<Mutex<Vec<String>>>,
    /// Streams the client abandoned before their end.
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct EmulatedProviders {
    /// Base URL for both kinds: `<base>/chat/completions`, `<base>/messages`.
    pub base_url: String,
    pub key: String,
    received: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<std::sync::atomic::AtomicUsize>,
    server: actix_web::dev::ServerHandle,
}

impl EmulatedProviders {
    pub async fn start() -> Self {
        let key = format!("provider-key-{}", ulid::Ulid::new());
        let received = Arc::new(Mutex::new(Vec::new()));
        let abandoned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let state =
            web::Data::new(State { key: key.clone(), received: received.clone(), abandoned: abandoned.clone() });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/v1/chat/completions", web::post().to(openai))
                .route("/v1/responses", web::post().to(responses))
                .route("/openai/deployments/{deployment}/chat/completions", web::post().to(azure))
                .route("/v1/messages", web::post().to(anthropic))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind emulated provider");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { base_url: format!("http://127.0.0.1:{port}/v1"), key, received, abandoned, server: handle }
    }

    /// How many slow streams (model `gpt-slow`) the far side abandoned.
    pub fn abandoned_streams(&self) -> usize {
        self.abandoned.load(std::sync::atomic::Ordering::SeqCst)
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
        return HttpResponse::Unauthorized()
            .json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}));
    }
    if req.headers().get("anthropic-version").is_none() {
        return HttpResponse::BadRequest().json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version header is required"}}));
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    state.received.lock().unwrap().push(text.clone());
    let request: Value = serde_json::from_str(&text).unwrap_or_default();
    if request["stream"] == true {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": []}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello from the emulated provider"}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        return sse(events.iter().map(|(name, data)| format!("event: {name}\ndata: {data}\n\n")).collect());
    }
    HttpResponse::Ok().json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": request["model"],
        "content": [{"type": "text", "text": "Hello from the emulated provider"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 12, "output_tokens": 5}
    }))
}

async fn responses(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let request = match openai_request(&req, &body, &state) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
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
