//! Bedrock's answers in the client's dialect, as they arrive: the binary
//! event stream (`application/vnd.amazon.eventstream`: framed messages
//! with headers and a CRC each) decoded frame by frame into Anthropic's
//! Messages SSE events or OpenAI's chat completion chunks; whole Converse
//! answers as chat completions; Bedrock's errors (`{"message"}` with the
//! exception in `x-amzn-errortype`, or an exception frame mid-stream) in
//! the error shape the client's SDK reads, so it retries a throttling
//! answer as it would its own provider's.

use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_types::event_stream::{HeaderValue, Message};
use bytes::BytesMut;
use serde_json::{Value, json};

use crate::server::Wire;

/// The chat completion a Converse answer becomes.
pub(crate) struct Chat {
    /// The model as the client named it.
    pub model: String,
    /// `stream_options.include_usage`: usage in a last chunk of its own.
    pub include_usage: bool,
    pub created: u64,
}

/// What kind of answer a call gets.
pub(crate) enum Plan {
    Messages,
    MessagesStream,
    CountTokens,
    Chat(Chat),
    ChatStream(Chat),
}

impl Plan {
    /// The translator for an answer with `status` and `headers`, or `None`
    /// when its bytes go to the client as they are (a whole Messages answer
    /// is already Anthropic's).
    pub(crate) fn translator(
        self,
        wire: Wire,
        status: u16,
        headers: &reqwest::header::HeaderMap,
    ) -> Option<Translator> {
        let mode = if !(200..300).contains(&status) {
            let exception = headers
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(':').next().unwrap_or(v).to_owned());
            Mode::Error { status, exception }
        } else {
            match self {
                Plan::Messages => return None,
                Plan::MessagesStream => Mode::MessagesStream,
                Plan::CountTokens => Mode::CountTokens,
                Plan::Chat(chat) => Mode::Chat(chat),
                Plan::ChatStream(chat) => Mode::ChatStream(ChatStream::new(chat)),
            }
        };
        let decoder = MessageFrameDecoder::new();
        Some(Translator { wire, mode, buffer: BytesMut::new(), decoder, broken: false, stopped: false })
    }
}

/// Turns one answer's bytes into the client's dialect.
pub(crate) struct Translator {
    wire: Wire,
    mode: Mode,
    buffer: BytesMut,
    decoder: MessageFrameDecoder,
    /// A frame failed to decode: the rest of the stream is dropped.
    broken: bool,
    /// The Messages stream's `message_stop` came.
    stopped: bool,
}

enum Mode {
    Error { status: u16, exception: Option<String> },
    MessagesStream,
    CountTokens,
    Chat(Chat),
    ChatStream(ChatStream),
}

impl Translator {
    pub(crate) fn content_type(&self) -> &'static str {
        match self.mode {
            Mode::MessagesStream | Mode::ChatStream(_) => "text/event-stream",
            _ => "application/json",
        }
    }

    /// What of the client's answer `chunk` completes.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.buffer.extend_from_slice(chunk);
        if !matches!(self.mode, Mode::MessagesStream | Mode::ChatStream(_)) || self.broken {
            return Vec::new();
        }
        let mut out = Vec::new();
        loop {
            match self.decoder.decode_frame(&mut self.buffer) {
                Ok(DecodedFrame::Complete(message)) => self.frame(&message, &mut out),
                Ok(DecodedFrame::Incomplete) => break,
                Err(e) => {
                    self.broken = true;
                    self.buffer.clear();
                    let message = format!("the Bedrock event stream is corrupt: {e}");
                    out.extend(self.stream_error("InternalServerException", &message));
                    break;
                }
            }
        }
        out
    }

    /// The rest of the client's answer once Bedrock's has ended.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        // A stream cut short (no closing event) ends with an error, so the
        // client does not take a partial answer for a whole one.
        let cut_short = match &self.mode {
            Mode::ChatStream(stream) => stream.finish.is_none().then_some("messageStop"),
            Mode::MessagesStream => (!self.stopped).then_some("message_stop"),
            _ => None,
        };
        if let Some(closing) = cut_short.filter(|_| !self.broken) {
            let message = format!("the Bedrock stream ended before {closing}");
            return self.stream_error("InternalServerException", &message);
        }
        let body: Value = serde_json::from_slice(&self.buffer).unwrap_or(Value::Null);
        match &mut self.mode {
            Mode::Error { status, exception } => {
                let message =
                    body["message"].as_str().or(body["Message"].as_str()).unwrap_or("Bedrock refused the call");
                let exception = exception.clone().or_else(|| body["__type"].as_str().map(str::to_owned));
                error_body(self.wire, *status, exception.as_deref().unwrap_or("BedrockError"), message)
            }
            Mode::CountTokens => json!({"input_tokens": body["inputTokens"]}).to_string().into_bytes(),
            Mode::Chat(chat) => whole_chat(chat, &body).to_string().into_bytes(),
            // After an error event the stream ends there, without `[DONE]`.
            Mode::ChatStream(_) if self.broken => Vec::new(),
            Mode::ChatStream(stream) => {
                let mut out = stream.close();
                out.extend_from_slice(b"data: [DONE]\n\n");
                out
            }
            Mode::MessagesStream => Vec::new(),
        }
    }

    fn frame(&mut self, message: &Message, out: &mut Vec<u8>) {
        let header = |name: &str| {
            message.headers().iter().find(|h| h.name().as_str() == name).and_then(|h| match h.value() {
                HeaderValue::String(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
        };
        let payload: Value = serde_json::from_slice(message.payload()).unwrap_or(Value::Null);
        match header(":message-type").as_deref() {
            Some("event") => {}
            Some("exception") => {
                self.broken = true;
                let exception = header(":exception-type").unwrap_or_else(|| "InternalServerException".to_owned());
                let text = payload["message"].as_str().unwrap_or("Bedrock ended the stream with an exception");
                out.extend(self.stream_error(&exception, text));
                return;
            }
            _ => {
                self.broken = true;
                let code = header(":error-code").unwrap_or_else(|| "InternalServerException".to_owned());
                let text =
                    header(":error-message").unwrap_or_else(|| "Bedrock ended the stream with an error".to_owned());
                out.extend(self.stream_error(&code, &text));
                return;
            }
        }
        let event = header(":event-type").unwrap_or_default();
        match &mut self.mode {
            Mode::MessagesStream => {
                // `chunk` events carry one Messages event, base64 in `bytes`.
                let Some(encoded) = payload["bytes"].as_str() else { return };
                let Ok(decoded) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded) else {
                    return;
                };
                let Ok(text) = String::from_utf8(decoded) else { return };
                let kind = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|e| e["type"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "message".to_owned());
                self.stopped |= kind == "message_stop";
                out.extend_from_slice(format!("event: {kind}\ndata: {}\n\n", text.trim()).as_bytes());
            }
            Mode::ChatStream(stream) => out.extend(stream.event(&event, &payload)),
            _ => {}
        }
    }

    /// An error met mid-stream, as the client's stream carries one.
    fn stream_error(&self, exception: &str, message: &str) -> Vec<u8> {
        let body =
            String::from_utf8(error_body(self.wire, status_of(exception), exception, message)).unwrap_or_default();
        match self.wire {
            Wire::Anthropic => format!("event: error\ndata: {body}\n\n").into_bytes(),
            _ => format!("data: {body}\n\n").into_bytes(),
        }
    }
}

/// The HTTP status Bedrock gives an exception.
fn status_of(exception: &str) -> u16 {
    match exception.to_ascii_lowercase().as_str() {
        "throttlingexception" | "modelnotreadyexception" | "servicequotaexceededexception" => 429,
        "validationexception" => 400,
        "accessdeniedexception" => 403,
        "resourcenotfoundexception" => 404,
        "modeltimeoutexception" => 408,
        "serviceunavailableexception" => 503,
        _ => 500,
    }
}

/// Bedrock's error as the client's SDK reads errors. Only the message's
/// first paragraph is kept: AWS appends the canonical request it expected
/// to a signature mismatch, and that names the signed session token.
fn error_body(wire: Wire, status: u16, exception: &str, message: &str) -> Vec<u8> {
    let first = message.split("\n\n").next().unwrap_or_default().trim();
    let message = format!("{first} (Bedrock {exception})");
    let body = match wire {
        Wire::Anthropic => {
            let kind = match status {
                400 => "invalid_request_error",
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                429 => "rate_limit_error",
                503 => "overloaded_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
        _ => {
            let code = match status {
                400 => "invalid_request",
                403 => "permission_denied",
                404 => "model_not_found",
                429 => "rate_limit_exceeded",
                503 => "service_unavailable",
                _ => "upstream_error",
            };
            json!({"error": {"message": message, "type": exception, "code": code}})
        }
    };
    body.to_string().into_bytes()
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "tool_use" => "tool_calls",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

fn chat_usage(usage: &Value) -> Value {
    let (input, output) = (usage["inputTokens"].as_u64().unwrap_or(0), usage["outputTokens"].as_u64().unwrap_or(0));
    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output})
}

fn completion_id() -> String {
    format!("chatcmpl-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A whole Converse answer as a chat completion.
fn whole_chat(chat: &Chat, answer: &Value) -> Value {
    let blocks = answer.pointer("/output/message/content").and_then(Value::as_array).cloned().unwrap_or_default();
    let text: String = blocks.iter().filter_map(|b| b["text"].as_str()).collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter_map(|b| b.get("toolUse"))
        .map(|t| {
            json!({"id": t["toolUseId"], "type": "function",
                   "function": {"name": t["name"], "arguments": t["input"].to_string()}})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { text.into() }});
    if !calls.is_empty() {
        message["tool_calls"] = calls.into();
    }
    json!({
        "id": completion_id(), "object": "chat.completion", "created": chat.created, "model": chat.model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": finish_reason(answer["stopReason"].as_str().unwrap_or_default())}],
        "usage": chat_usage(&answer["usage"]),
    })
}

/// A ConverseStream becoming chat completion chunks.
struct ChatStream {
    chat: Chat,
    id: String,
    /// Content block index → tool call index, for tool-use blocks.
    tools: Vec<(u64, usize)>,
    /// The finish reason, held until the usage that follows it.
    finish: Option<&'static str>,
    closed: bool,
}

impl ChatStream {
    fn new(chat: Chat) -> Self {
        Self { chat, id: completion_id(), tools: Vec::new(), finish: None, closed: false }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Vec<u8> {
        let mut chunk = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.chat.created,
                               "model": self.chat.model, "choices": choices});
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        format!("data: {chunk}\n\n").into_bytes()
    }

    fn delta(&self, delta: Value) -> Vec<u8> {
        self.chunk(json!([{"index": 0, "delta": delta, "finish_reason": null}]), None)
    }

    fn event(&mut self, event: &str, payload: &Value) -> Vec<u8> {
        let block = payload["contentBlockIndex"].as_u64().unwrap_or(0);
        match event {
            "messageStart" => self.delta(json!({"role": "assistant", "content": ""})),
            "contentBlockStart" => {
                let Some(tool) = payload.pointer("/start/toolUse") else { return Vec::new() };
                let index = self.tools.len();
                self.tools.push((block, index));
                self.delta(json!({"tool_calls": [{"index": index, "id": tool["toolUseId"], "type": "function",
                                                   "function": {"name": tool["name"], "arguments": ""}}]}))
            }
            "contentBlockDelta" => {
                let delta = &payload["delta"];
                if let Some(text) = delta["text"].as_str() {
                    self.delta(json!({"content": text}))
                } else if let Some(input) = delta.pointer("/toolUse/input").and_then(Value::as_str) {
                    let index = self.tools.iter().find(|(b, _)| *b == block).map_or(0, |(_, i)| *i);
                    self.delta(json!({"tool_calls": [{"index": index, "function": {"arguments": input}}]}))
                } else if let Some(text) = delta.pointer("/reasoningContent/text").and_then(Value::as_str) {
                    self.delta(json!({"reasoning_content": text}))
                } else {
                    Vec::new()
                }
            }
            "messageStop" => {
                self.finish = Some(finish_reason(payload["stopReason"].as_str().unwrap_or_default()));
                Vec::new()
            }
            "metadata" => self.end(Some(chat_usage(&payload["usage"]))),
            _ => Vec::new(),
        }
    }

    /// The finish chunk, with the usage: in a chunk of its own after it
    /// when `include_usage` is asked (as OpenAI does), else on the finish
    /// chunk itself (OpenAI sends none then; the SDKs read the field as
    /// optional, and the gateway books the call's usage from it).
    fn end(&mut self, usage: Option<Value>) -> Vec<u8> {
        if std::mem::replace(&mut self.closed, true) {
            return Vec::new();
        }
        let finish = json!([{"index": 0, "delta": {}, "finish_reason": self.finish.unwrap_or("stop")}]);
        if self.chat.include_usage {
            let mut out = self.chunk(finish, None);
            if let Some(usage) = usage {
                out.extend(self.chunk(json!([]), Some(usage)));
            }
            out
        } else {
            self.chunk(finish, usage)
        }
    }

    /// At the stream's end: the finish chunk if no usage came to carry it.
    fn close(&mut self) -> Vec<u8> {
        if self.finish.is_some() { self.end(None) } else { Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::event_stream::Header;

    fn frame(headers: &[(&str, &str)], payload: &Value) -> Vec<u8> {
        let message = headers.iter().fold(Message::new(payload.to_string()), |m, (name, value)| {
            m.add_header(Header::new(name.to_string(), HeaderValue::String(value.to_string().into())))
        });
        let mut out = Vec::new();
        aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
        out
    }

    fn chunk(event: &Value) -> Vec<u8> {
        let bytes = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, event.to_string());
        frame(&[(":message-type", "event"), (":event-type", "chunk")], &json!({"bytes": bytes, "p": "abc"}))
    }

    fn headers() -> reqwest::header::HeaderMap {
        reqwest::header::HeaderMap::new()
    }

    #[test]
    fn the_invoke_stream_becomes_messages_events_whatever_the_network_splits() {
        let events = [
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 12, "output_tokens": 1}}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}}),
        ];
        let mut wire: Vec<u8> = events.iter().flat_map(chunk).collect();
        wire.extend(frame(
            &[(":message-type", "exception"), (":exception-type", "throttlingException")],
            &json!({"message": "Too many tokens"}),
        ));
        // One byte at a time: frames complete across network reads.
        let mut t = Plan::MessagesStream.translator(Wire::Anthropic, 200, &headers()).unwrap();
        assert_eq!(t.content_type(), "text/event-stream");
        let mut out: Vec<u8> = wire.iter().flat_map(|b| t.push(std::slice::from_ref(b))).collect();
        out.extend(t.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("event: message_start\ndata: {"), "{text}");
        assert!(text.contains("event: content_block_delta\ndata: "), "{text}");
        assert_eq!(crate::server::usage(text.as_bytes()), Some((12, 5)));
        assert!(
            text.ends_with("event: error\ndata: {\"error\":{\"message\":\"Too many tokens (Bedrock throttlingException)\",\"type\":\"rate_limit_error\"},\"type\":\"error\"}\n\n"),
            "{text}"
        );
        // A corrupt frame ends the stream with an error, not garbage.
        let mut t = Plan::MessagesStream.translator(Wire::Anthropic, 200, &headers()).unwrap();
        let mut bad = chunk(&events[0]);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let text = String::from_utf8(t.push(&bad)).unwrap();
        assert!(text.starts_with("event: error\n") && text.contains("corrupt"), "{text}");
        assert!(t.push(&chunk(&events[1])).is_empty());
    }

    #[test]
    fn bedrock_errors_take_the_clients_shape() {
        let mut headers = headers();
        headers.insert(
            "x-amzn-errortype",
            "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/".parse().unwrap(),
        );
        let mut t = Plan::MessagesStream.translator(Wire::Anthropic, 429, &headers).unwrap();
        assert_eq!(t.content_type(), "application/json");
        assert!(t.push(br#"{"message":"Too many requests, please wait before trying again."}"#).is_empty());
        let body: Value = serde_json::from_slice(&t.finish()).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert!(body["error"]["message"].as_str().unwrap().contains("ThrottlingException"));
        let chat = Chat { model: "nova".into(), include_usage: false, created: 1 };
        let mut t = Plan::Chat(chat).translator(Wire::OpenAi, 403, &reqwest::header::HeaderMap::new()).unwrap();
        t.push(br#"{"message":"no access","__type":"AccessDeniedException"}"#);
        let body: Value = serde_json::from_slice(&t.finish()).unwrap();
        assert_eq!(body["error"]["type"], "AccessDeniedException");
        assert_eq!(body["error"]["code"], "permission_denied");
        assert!(Plan::Messages.translator(Wire::Anthropic, 200, &reqwest::header::HeaderMap::new()).is_none());
        // AWS's signature mismatch names the canonical request it expected,
        // signed session token included: only the first paragraph is kept.
        let mut t = Plan::MessagesStream.translator(Wire::Anthropic, 403, &reqwest::header::HeaderMap::new()).unwrap();
        t.push(json!({"message": "The request signature we calculated does not match.\n\nThe Canonical String for this request should have been\n'POST\nx-amz-security-token:IQoJsecret'", "__type": "InvalidSignatureException"}).to_string().as_bytes());
        let body = String::from_utf8(t.finish()).unwrap();
        assert!(
            body.contains("does not match. (Bedrock InvalidSignatureException)") && !body.contains("IQoJ"),
            "{body}"
        );
    }

    #[test]
    fn a_stream_cut_short_ends_with_an_error_not_a_normal_end() {
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 1, "output_tokens": 1}}});
        let mut t = Plan::MessagesStream.translator(Wire::Anthropic, 200, &headers()).unwrap();
        let mut out = t.push(&chunk(&start));
        let whole = chunk(&json!({"type": "message_stop"}));
        out.extend(t.push(&whole[..whole.len() / 2]));
        out.extend(t.finish());
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("ended before message_stop (Bedrock InternalServerException)\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n"), "{text}");
        let mut t = Plan::MessagesStream.translator(Wire::Anthropic, 200, &headers()).unwrap();
        t.push(&chunk(&start));
        t.push(&whole);
        assert!(t.finish().is_empty(), "a complete stream ends as it is");

        let chat = Chat { model: "nova".into(), include_usage: false, created: 1 };
        let mut t = Plan::ChatStream(chat).translator(Wire::OpenAi, 200, &headers()).unwrap();
        t.push(&frame(&[(":message-type", "event"), (":event-type", "messageStart")], &json!({"role": "assistant"})));
        let text = String::from_utf8(t.finish()).unwrap();
        assert!(text.contains("ended before messageStop") && !text.contains("[DONE]"), "{text}");
    }

    #[test]
    fn converse_answers_become_chat_completions() {
        let chat = Chat { model: "nova".into(), include_usage: false, created: 7 };
        let mut t = Plan::Chat(chat).translator(Wire::OpenAi, 200, &headers()).unwrap();
        t.push(json!({"output": {"message": {"role": "assistant", "content": [{"text": "ok"}, {"toolUse": {"toolUseId": "t1", "name": "bash", "input": {"command": "ls"}}}]}},
                      "stopReason": "tool_use", "usage": {"inputTokens": 10, "outputTokens": 4, "totalTokens": 14}}).to_string().as_bytes());
        let body: Value = serde_json::from_slice(&t.finish()).unwrap();
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["model"], "nova");
        assert_eq!(body["choices"][0]["message"]["content"], "ok");
        assert_eq!(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], r#"{"command":"ls"}"#);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(body["usage"], json!({"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}));

        for include_usage in [false, true] {
            let chat = Chat { model: "nova".into(), include_usage, created: 7 };
            let mut t = Plan::ChatStream(chat).translator(Wire::OpenAi, 200, &headers()).unwrap();
            let event =
                |name: &str, payload: Value| frame(&[(":message-type", "event"), (":event-type", name)], &payload);
            let wire = [
                event("messageStart", json!({"role": "assistant"})),
                event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}})),
                event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "lo"}})),
                event(
                    "contentBlockStart",
                    json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t9", "name": "bash"}}}),
                ),
                event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"command\":"}}}),
                ),
                event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"ls\"}"}}})),
                event("messageStop", json!({"stopReason": "tool_use"})),
                event(
                    "metadata",
                    json!({"usage": {"inputTokens": 20, "outputTokens": 6}, "metrics": {"latencyMs": 5}}),
                ),
            ]
            .concat();
            let mut out = t.push(&wire);
            out.extend(t.finish());
            let text = String::from_utf8(out).unwrap();
            let chunks: Vec<Value> = text
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
            let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
            assert_eq!(content, "Hello");
            let arguments: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
                .collect();
            assert_eq!(arguments, r#"{"command":"ls"}"#);
            assert!(chunks.iter().any(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"] == "t9"));
            assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
            let with_usage: Vec<&Value> = chunks.iter().filter(|c| c.get("usage").is_some()).collect();
            assert_eq!(with_usage.len(), 1, "{text}");
            assert_eq!(with_usage[0]["choices"].as_array().unwrap().is_empty(), include_usage, "{text}");
            assert_eq!(crate::server::usage(text.as_bytes()), Some((20, 6)));
        }
    }
}
