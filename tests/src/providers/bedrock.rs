//! An emulated AWS Bedrock runtime, with the STS and instance metadata
//! endpoints its credentials come from. The runtime checks every request's
//! SigV4 signature (recomputed with the SDK's signer from the request as
//! received, with the secret of the access key it names) and answers as
//! Bedrock does: `InvokeModel` with Claude's Messages bodies,
//! `InvokeModelWithResponseStream` and `ConverseStream` in the binary
//! event stream, `Converse`, `CountTokens`, and Bedrock's errors
//! (`x-amzn-errortype`, `{"message"}`): throttling, access denied,
//! validation, signature mismatch, unknown or expired keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{State, planned};
use crate::scripted::{self, Step};

/// The region the emulated runtime serves.
pub const REGION: &str = "us-east-1";

/// Keys the emulated AWS side accepts, and what it was asked.
#[derive(Default)]
pub(super) struct Aws {
    /// Access key id → secret, session token, expiry.
    keys: HashMap<String, (String, Option<String>, Option<Instant>)>,
    /// Web identity tokens STS accepts → the role they may assume.
    identities: HashMap<String, String>,
    /// Requests still to be answered with a ThrottlingException.
    throttle: usize,
    /// Requests refused for their signature or credentials.
    pub(super) refused: usize,
    /// Temporary keys issued by STS and IMDS.
    pub(super) issued: usize,
    /// Every SigV4 `authorization` header and `x-amz-security-token` seen.
    pub(super) presented: Vec<String>,
}

fn ulid() -> String {
    ulid::Ulid::new().to_string()
}

impl Aws {
    /// New long-lived keys, as an IAM user's.
    pub(super) fn new_keys(&mut self) -> (String, String) {
        let id = format!("AKIA{}", &ulid()[..16]);
        let secret = format!("{}/{}", ulid(), ulid());
        self.keys.insert(id.clone(), (secret.clone(), None, None));
        (id, secret)
    }

    /// Temporary keys that live `life`.
    fn temporary(&mut self, life: Duration) -> (String, String, String) {
        let id = format!("ASIA{}", &ulid()[..16]);
        let secret = format!("{}+{}", ulid(), ulid());
        let token = format!("IQoJb3JpZ2luX2Vj{}{}", ulid(), ulid());
        self.keys.insert(id.clone(), (secret.clone(), Some(token.clone()), Some(Instant::now() + life)));
        self.issued += 1;
        (id, secret, token)
    }

    pub(super) fn trust_identity(&mut self, token: &str, role: &str) {
        self.identities.insert(token.to_owned(), role.to_owned());
    }

    pub(super) fn throttle(&mut self, requests: usize) {
        self.throttle = requests;
    }
}

/// An error as Bedrock answers one.
fn aws_error(status: u16, exception: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .insert_header((
            "x-amzn-errortype",
            format!("{exception}:http://internal.amazon.com/coral/com.amazon.bedrock/"),
        ))
        .insert_header(("x-amzn-requestid", ulid().to_lowercase()))
        .json(json!({"message": message}))
}

/// `AWS4-HMAC-SHA256 Credential=<id>/<date>/<region>/<service>/aws4_request,
/// SignedHeaders=<a;b>, Signature=<hex>` as its parts.
fn authorization(value: &str) -> Option<(Vec<String>, Vec<String>, String)> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut scope = None;
    let mut signed = None;
    let mut signature = None;
    for part in rest.split(',').map(str::trim) {
        if let Some(v) = part.strip_prefix("Credential=") {
            scope = Some(v.split('/').map(str::to_owned).collect::<Vec<_>>());
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v.split(';').map(str::to_owned).collect());
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v.to_owned());
        }
    }
    Some((scope?, signed?, signature?))
}

/// Checks a request's SigV4 signature as AWS does: the key must be known
/// (and, when temporary, presented with its session token and unexpired),
/// scoped to this region and to `service`, dated within five minutes, and
/// the signature recomputed over the signed headers, the path as received
/// and the body must match.
pub(super) fn verify(req: &HttpRequest, body: &[u8], aws: &Mutex<Aws>, service: &str) -> Result<(), Box<HttpResponse>> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mismatch = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
    let mut aws = aws.lock().unwrap();
    aws.presented.extend(header("authorization"));
    aws.presented.extend(header("x-amz-security-token"));
    let refuse = |aws: &mut Aws, exception: &str, message: &str| {
        aws.refused += 1;
        Box::new(aws_error(403, exception, message))
    };
    let Some((scope, signed, signature)) = header("authorization").as_deref().and_then(authorization) else {
        return Err(refuse(&mut aws, "MissingAuthenticationTokenException", "Missing Authentication Token"));
    };
    let [id, _date, region, scoped_service, terminator] = scope.as_slice() else {
        return Err(refuse(&mut aws, "IncompleteSignatureException", "Credential is malformed"));
    };
    if terminator != "aws4_request" || scoped_service != service {
        let message = format!("Credential should be scoped to correct service: '{service}'.");
        return Err(refuse(&mut aws, "InvalidSignatureException", &message));
    }
    if region != REGION {
        return Err(refuse(&mut aws, "InvalidSignatureException", "Credential should be scoped to a valid region."));
    }
    let Some((secret, session, expires)) = aws.keys.get(id).cloned() else {
        return Err(refuse(
            &mut aws,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    if session.is_some() && header("x-amz-security-token") != session {
        return Err(refuse(
            &mut aws,
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if expires.is_some_and(|at| Instant::now() > at) {
        return Err(refuse(&mut aws, "ExpiredTokenException", "The security token included in the request is expired"));
    }
    let at = header("x-amz-date")
        .and_then(|d| {
            let format =
                time::format_description::parse_borrowed::<2>("[year][month][day]T[hour][minute][second]Z").ok()?;
            time::PrimitiveDateTime::parse(&d, &format).ok()
        })
        .map(|d| SystemTime::from(d.assume_utc()));
    let Some(at) = at else {
        return Err(refuse(
            &mut aws,
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let skew = SystemTime::now().duration_since(at).unwrap_or_else(|e| e.duration());
    if skew > Duration::from_secs(300) {
        return Err(refuse(
            &mut aws,
            "InvalidSignatureException",
            "Signature expired: the request's date is more than 5 minutes from now.",
        ));
    }
    if !signed.iter().any(|h| h == "host") {
        return Err(refuse(
            &mut aws,
            "InvalidSignatureException",
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    // Recompute over what arrived: the signed headers' values, the raw path.
    let values: Vec<(String, String)> = signed
        .iter()
        .filter(|name| !matches!(name.as_str(), "x-amz-date" | "x-amz-security-token"))
        .map(|name| (name.clone(), header(name).unwrap_or_default()))
        .collect();
    let host = header("host").unwrap_or_default();
    let uri = format!("https://{host}{}", req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let identity = aws_credential_types::Credentials::new(id, secret, session, None, "emulator").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(service)
        .time(at)
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let request = aws_sigv4::http_request::SignableRequest::new(
        req.method().as_str(),
        uri,
        values.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        aws_sigv4::http_request::SignableBody::Bytes(body),
    );
    let expected = request.and_then(|r| aws_sigv4::http_request::sign(r, &params)).map(|o| o.signature().to_owned());
    if expected.ok().as_deref() != Some(signature.as_str()) {
        return Err(refuse(&mut aws, "InvalidSignatureException", mismatch));
    }
    Ok(())
}

/// The model id and operation of `/model/<id>/<operation>`, the id
/// percent-decoded.
fn model_call(path: &str) -> Option<(String, String)> {
    let (model, operation) = path.strip_prefix("/model/")?.rsplit_once('/')?;
    let model = percent_encoding::percent_decode_str(model).decode_utf8().ok()?;
    Some((model.into_owned(), operation.to_owned()))
}

/// One event-stream frame.
fn frame(headers: &[(&str, &str)], payload: &Value) -> Vec<u8> {
    let message = headers.iter().fold(Message::new(payload.to_string()), |m, (name, value)| {
        m.add_header(Header::new(name.to_string(), HeaderValue::String(value.to_string().into())))
    });
    let mut out = Vec::new();
    aws_smithy_eventstream::frame::write_message_to(&message, &mut out).unwrap();
    out
}

fn event(name: &str, payload: &Value) -> Vec<u8> {
    frame(&[(":event-type", name), (":content-type", "application/json"), (":message-type", "event")], payload)
}

/// Frames streamed in separate writes, as the network delivers them.
fn event_stream(frames: Vec<Vec<u8>>) -> HttpResponse {
    let stream = futures::stream::iter(frames).then(|frame| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok::<_, actix_web::Error>(web::Bytes::from(frame))
    });
    HttpResponse::Ok()
        .content_type("application/vnd.amazon.eventstream")
        .insert_header(("x-amzn-requestid", ulid().to_lowercase()))
        .streaming(stream)
}

/// `POST /model/<id>/<operation>` of the Bedrock runtime.
pub(super) async fn runtime(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    if let Err(refusal) = verify(&req, &body, &state.aws, "bedrock") {
        return *refusal;
    }
    {
        let mut aws = state.aws.lock().unwrap();
        if aws.throttle > 0 {
            aws.throttle -= 1;
            return aws_error(429, "ThrottlingException", "Too many requests, please wait before trying again.");
        }
    }
    let Some((model, operation)) = model_call(req.uri().path()) else {
        return aws_error(404, "UnknownOperationException", "Unknown operation");
    };
    // The account was not granted these models.
    if model.contains("denied") {
        return aws_error(
            403,
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
        );
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let Ok(request) = serde_json::from_str::<Value>(&text) else {
        return aws_error(
            400,
            "ValidationException",
            "Malformed input request, please reformat your input and try again.",
        );
    };
    state.received.lock().unwrap().push(text);
    match operation.as_str() {
        "invoke" | "invoke-with-response-stream" => invoke(&state, &model, &request, operation != "invoke"),
        "converse" | "converse-stream" => converse(&state, &model, &request, operation == "converse-stream"),
        "count-tokens" => {
            // CountTokens takes foundation models, not inference profiles.
            if !model.starts_with("anthropic.") {
                return aws_error(400, "ValidationException", "The provided model identifier is invalid.");
            }
            let Some(body) = request.pointer("/input/invokeModel/body").and_then(Value::as_str) else {
                return aws_error(400, "ValidationException", "input: an invokeModel body is required");
            };
            let Ok(decoded) = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body) else {
                return aws_error(400, "ValidationException", "input.invokeModel.body is not base64");
            };
            HttpResponse::Ok().json(json!({"inputTokens": decoded.len() / 4 + 1}))
        }
        _ => aws_error(404, "UnknownOperationException", "Unknown operation"),
    }
}

/// Claude through InvokeModel: Bedrock's Messages dialect (no `model` or
/// `stream` in the body, `anthropic_version` required).
fn invoke(state: &State, model: &str, request: &Value, stream: bool) -> HttpResponse {
    if !model.contains("anthropic.") {
        return aws_error(400, "ValidationException", "The provided model identifier is invalid.");
    }
    if request["anthropic_version"] != "bedrock-2023-05-31" {
        return aws_error(
            400,
            "ValidationException",
            "Malformed input request: #: required key [anthropic_version] not found, please reformat your input and try again.",
        );
    }
    for extraneous in ["model", "stream"] {
        if request.get(extraneous).is_some() {
            let message = format!(
                "Malformed input request: #: extraneous key [{extraneous}] is not permitted, please reformat your input and try again."
            );
            return aws_error(400, "ValidationException", &message);
        }
    }
    if !request["max_tokens"].is_u64() {
        return aws_error(
            400,
            "ValidationException",
            "Malformed input request: #: required key [max_tokens] not found, please reformat your input and try again.",
        );
    }
    let turn = scripted::messages_turn(request);
    let step = match model.contains("scripted") && !state.plan.lock().unwrap().is_empty() {
        true => planned(state, turn),
        false => Step::Say("Hello from Claude on Bedrock".to_owned()),
    };
    let answer = scripted::answer(&step, &scripted::messages_tools(request));
    let (body, _) = scripted::messages(&answer, &json!(model), turn, stream);
    if !stream {
        return HttpResponse::Ok()
            .content_type("application/json")
            .insert_header(("x-amzn-requestid", ulid().to_lowercase()))
            .body(body);
    }
    // Each Messages event in a `chunk` event, base64 in `bytes`, padded.
    let frames = body
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .map(|mut event| {
            if event["type"] == "message_stop" {
                event["amazon-bedrock-invocationMetrics"] =
                    json!({"inputTokenCount": 40, "outputTokenCount": 10, "invocationLatency": 5, "firstByteLatency": 2});
            }
            let bytes = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, event.to_string());
            frame(
                &[(":event-type", "chunk"), (":content-type", "application/json"), (":message-type", "event")],
                &json!({"bytes": bytes, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123"}),
            )
        })
        .collect();
    event_stream(frames)
}

/// Converse and ConverseStream: Bedrock's own message shape, alternating
/// turns. A `scripted` model follows the plan through the tools offered;
/// another says hello, or calls the first tool when tools are offered and
/// no result is in yet.
fn converse(state: &State, model: &str, request: &Value, stream: bool) -> HttpResponse {
    let allowed = ["messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields"];
    if let Some(key) = request.as_object().and_then(|o| o.keys().find(|k| !allowed.contains(&k.as_str())).cloned()) {
        return aws_error(400, "ValidationException", &format!("1 validation error detected: extraneous key [{key}]"));
    }
    let Some(messages) = request["messages"].as_array().filter(|m| !m.is_empty()) else {
        return aws_error(400, "ValidationException", "A conversation must start with a user message.");
    };
    let mut tool_blocks = false;
    for (i, message) in messages.iter().enumerate() {
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if message["role"] != expected {
            return aws_error(
                400,
                "ValidationException",
                "A conversation must alternate between user and assistant roles.",
            );
        }
        for block in message["content"].as_array().into_iter().flatten() {
            let Some(kind) = block.as_object().and_then(|o| o.keys().next()) else {
                return aws_error(400, "ValidationException", "A content block is empty.");
            };
            if !["text", "image", "toolUse", "toolResult"].contains(&kind.as_str()) {
                return aws_error(400, "ValidationException", &format!("Unknown content block {kind}."));
            }
            tool_blocks |= kind == "toolUse" || kind == "toolResult";
        }
    }
    if tool_blocks && request.get("toolConfig").is_none() {
        return aws_error(
            400,
            "ValidationException",
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        );
    }
    let turn = scripted::converse_turn(request);
    let blocks = if model.contains("scripted") {
        let tools: Vec<scripted::Tool> = request["toolConfig"]["tools"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let spec = &t["toolSpec"];
                Some(scripted::Tool {
                    name: spec["name"].as_str()?.to_owned(),
                    schema: spec["inputSchema"]["json"].clone(),
                })
            })
            .collect();
        match scripted::answer(&planned(state, turn), &tools) {
            scripted::Answer::Text(text) => vec![json!({"text": text})],
            scripted::Answer::Call(call) => vec![
                json!({"toolUse": {"toolUseId": format!("tooluse_{turn}"), "name": call.name, "input": call.arguments}}),
            ],
        }
    } else {
        let last = messages.last().unwrap();
        let results_in = last["content"].as_array().is_some_and(|c| c.iter().any(|b| b.get("toolResult").is_some()));
        let text = json!({"text": format!("Hello from {model} on Bedrock")});
        match request.pointer("/toolConfig/tools/0/toolSpec/name").and_then(Value::as_str).filter(|_| !results_in) {
            Some(name) => vec![
                json!({"text": "Running it."}),
                json!({"toolUse": {"toolUseId": "tooluse_1", "name": name, "input": {"command": "ls"}}}),
            ],
            None => vec![text],
        }
    };
    let stop = if blocks.iter().any(|b| b.get("toolUse").is_some()) { "tool_use" } else { "end_turn" };
    let usage = json!({"inputTokens": 21, "outputTokens": 7, "totalTokens": 28});
    if !stream {
        return HttpResponse::Ok().insert_header(("x-amzn-requestid", ulid().to_lowercase())).json(json!({
            "output": {"message": {"role": "assistant", "content": blocks}},
            "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 12}
        }));
    }
    let mut frames = vec![event("messageStart", &json!({"role": "assistant"}))];
    for (index, block) in blocks.iter().enumerate() {
        // Each block's content in two deltas, as a model streams it.
        let (pieces, delta): (Vec<String>, fn(&str) -> Value) = match (block["text"].as_str(), block.get("toolUse")) {
            (Some(text), _) => (halves(text), |piece| json!({"text": piece})),
            (None, Some(tool)) => {
                let start = json!({"toolUse": {"toolUseId": tool["toolUseId"], "name": tool["name"]}});
                frames.push(event("contentBlockStart", &json!({"contentBlockIndex": index, "start": start})));
                (halves(&tool["input"].to_string()), |piece| json!({"toolUse": {"input": piece}}))
            }
            _ => continue,
        };
        for piece in pieces {
            frames.push(event("contentBlockDelta", &json!({"contentBlockIndex": index, "delta": delta(&piece)})));
        }
        frames.push(event("contentBlockStop", &json!({"contentBlockIndex": index})));
    }
    frames.push(event("messageStop", &json!({"stopReason": stop})));
    frames.push(event("metadata", &json!({"usage": usage, "metrics": {"latencyMs": 12}})));
    event_stream(frames)
}

/// `text` in two pieces, split on a character boundary.
fn halves(text: &str) -> Vec<String> {
    let mut middle = text.len() / 2;
    while !text.is_char_boundary(middle) {
        middle += 1;
    }
    let (first, second) = text.split_at(middle);
    [first, second].into_iter().filter(|p| !p.is_empty()).map(str::to_owned).collect()
}

/// STS `AssumeRoleWithWebIdentity` (unsigned, form-encoded, XML answers).
pub(super) async fn sts(form: web::Form<HashMap<String, String>>, state: web::Data<State>) -> HttpResponse {
    let error = |status: u16, code: &str, message: &str| {
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).content_type("text/xml").body(format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
            ulid()
        ))
    };
    if form.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity") || form.get("Version").is_none() {
        return error(400, "InvalidAction", "Could not find operation for this action");
    }
    let mut aws = state.aws.lock().unwrap();
    let token = form.get("WebIdentityToken").cloned().unwrap_or_default();
    let role = form.get("RoleArn").cloned().unwrap_or_default();
    match aws.identities.get(&token) {
        None => {
            return error(
                400,
                "InvalidIdentityToken",
                "Couldn't retrieve verification key from your identity provider",
            );
        }
        Some(allowed) if *allowed != role => {
            return error(403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity");
        }
        Some(_) => {}
    }
    let (id, secret, session) = aws.temporary(Duration::from_secs(3600));
    let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let expires =
        expires.replace_nanosecond(0).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap();
    HttpResponse::Ok().content_type("text/xml").body(format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult>\
         <Credentials><AccessKeyId>{id}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey><SessionToken>{session}</SessionToken>\
         <Expiration>{expires}</Expiration></Credentials><AssumedRoleUser><Arn>{role}/paddock</Arn></AssumedRoleUser>\
         </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
    ))
}

/// The EC2 instance metadata service (IMDSv2 only: a session token first),
/// serving the role `paddock-worker` with keys from the emulated AWS side.
pub struct EmulatedImds {
    pub url: String,
    server: actix_web::dev::ServerHandle,
}

/// The metadata service's state: the AWS side, its session tokens, and
/// fixed keys to hand out instead of minting (another service's, e.g. the
/// test object store's).
type Imds = web::Data<(Arc<Mutex<Aws>>, Arc<Mutex<Vec<String>>>, Option<(String, String)>)>;

impl EmulatedImds {
    /// Serving keys of the role `paddock-worker`: minted by the emulated
    /// AWS side, or `fixed`.
    pub(super) async fn start(aws: Arc<Mutex<Aws>>, fixed: Option<(String, String)>) -> Self {
        let sessions: Arc<Mutex<Vec<String>>> = Arc::default();
        let state = web::Data::new((aws, sessions, fixed));
        async fn token(req: HttpRequest, state: Imds) -> HttpResponse {
            if req.headers().get("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                return HttpResponse::BadRequest().finish();
            }
            let token = format!("AQAEA{}", ulid());
            state.1.lock().unwrap().push(token.clone());
            HttpResponse::Ok().body(token)
        }
        fn session(req: &HttpRequest, state: &Imds) -> bool {
            let token = req.headers().get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok());
            token.is_some_and(|t| state.1.lock().unwrap().iter().any(|s| s == t))
        }
        async fn roles(req: HttpRequest, state: Imds) -> HttpResponse {
            if !session(&req, &state) {
                return HttpResponse::Unauthorized().finish();
            }
            HttpResponse::Ok().body("paddock-worker\n")
        }
        async fn role(req: HttpRequest, path: web::Path<String>, state: Imds) -> HttpResponse {
            if !session(&req, &state) {
                return HttpResponse::Unauthorized().finish();
            }
            if path.as_str() != "paddock-worker" {
                return HttpResponse::NotFound().finish();
            }
            let (id, secret, token) = match &state.2 {
                Some((id, secret)) => {
                    state.0.lock().unwrap().issued += 1;
                    (id.clone(), secret.clone(), format!("IQoJb3JpZ2luX2Vj{}", ulid()))
                }
                None => state.0.lock().unwrap().temporary(Duration::from_secs(6 * 3600)),
            };
            let expires = time::OffsetDateTime::now_utc() + time::Duration::hours(6);
            let expires =
                expires.replace_nanosecond(0).unwrap().format(&time::format_description::well_known::Rfc3339).unwrap();
            HttpResponse::Ok().json(json!({"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": id,
                "SecretAccessKey": secret, "Token": token, "Expiration": expires, "LastUpdated": expires}))
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/latest/api/token", web::put().to(token))
                .route("/latest/meta-data/iam/security-credentials/", web::get().to(roles))
                .route("/latest/meta-data/iam/security-credentials/{role}", web::get().to(role))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .expect("bind emulated IMDS");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url: format!("http://127.0.0.1:{port}"), server: handle }
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
    }
}
