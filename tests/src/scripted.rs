//! The scripted model's answers in each wire API, through the tools the
//! client offers, as a real model would use them: a `Write` step calls the
//! client's file-writing tool (or its shell, when it has none) and a `Run`
//! step its shell tool, with arguments built from the tool's own schema.
//! Anthropic Messages (Claude Code), OpenAI Responses (Codex), Chat
//! Completions (aider, opencode, OpenHands, mini-swe-agent), streamed or
//! whole.

use serde_json::{Map, Value, json};

/// One turn of the scripted model.
#[derive(Clone, Debug)]
pub enum Step {
    /// Plain text (the reference agent reads ```bash blocks from it).
    Say(String),
    /// Run a shell command through the client's shell tool.
    Run(String),
    /// Create a file (path relative to the workspace) through the client's
    /// file tool.
    Write { path: String, content: String },
}

impl Step {
    pub fn run(command: &str) -> Self {
        Self::Run(command.to_owned())
    }

    pub fn write(path: &str, content: &str) -> Self {
        Self::Write { path: path.to_owned(), content: content.to_owned() }
    }
}

/// Where the agent's checkout is inside the sandbox.
const WORKSPACE: &str = "/workspace";

/// A tool as the client declared it.
pub struct Tool {
    pub name: String,
    pub schema: Value,
}

/// Shell tools, in the order they are preferred.
const SHELL_TOOLS: &[&str] =
    &["Bash", "bash", "exec_command", "shell", "run_shell_command", "terminal", "execute_bash", "execute_command"];

/// File-writing tools, in the order they are preferred.
const WRITE_TOOLS: &[&str] = &["Write", "write_file", "write", "file_editor", "str_replace_editor", "create_file"];

/// A tool call: the tool's name and its arguments.
pub struct Call {
    pub name: String,
    pub arguments: Value,
}

/// What the model says in this turn: a tool call, or text.
pub enum Answer {
    Text(String),
    Call(Call),
}

/// The answer for `step` given the client's tools; `None` for a step the
/// client has no tool for (then it is said as text).
pub fn answer(step: &Step, tools: &[Tool]) -> Answer {
    let find = |names: &[&str]| names.iter().find_map(|n| tools.iter().find(|t| t.name == *n));
    match step {
        Step::Say(text) => Answer::Text(text.clone()),
        Step::Run(command) => match find(SHELL_TOOLS) {
            Some(tool) => Answer::Call(shell_call(tool, command)),
            None => Answer::Text(format!("```bash\n{command}\n```")),
        },
        Step::Write { path, content } => {
            let absolute = format!("{WORKSPACE}/{path}");
            if let Some(tool) = find(WRITE_TOOLS) {
                return Answer::Call(write_call(tool, &absolute, content));
            }
            // Then the shell (which overwrites a file a patch could only
            // add), then a patch tool, then the file listing of aider's
            // `whole` edit format for a client without tools.
            let command = format!("cat > {absolute} <<'PADDOCK_EOF'\n{content}PADDOCK_EOF");
            if let Some(tool) = find(SHELL_TOOLS) {
                return Answer::Call(shell_call(tool, &command));
            }
            match find(&["apply_patch"]) {
                Some(tool) => Answer::Call(write_call(tool, &absolute, content)),
                None => Answer::Text(format!("{path}\n```\n{content}```\n")),
            }
        }
    }
}

fn properties(schema: &Value) -> Map<String, Value> {
    schema["properties"].as_object().cloned().unwrap_or_default()
}

/// Arguments for a shell tool: the command in its `command` or `cmd`
/// property (an argv array where the schema wants one), and whatever else
/// the schema requires.
fn shell_call(tool: &Tool, command: &str) -> Call {
    let props = properties(&tool.schema);
    let key = ["command", "cmd"].into_iter().find(|k| props.contains_key(*k)).unwrap_or("command");
    let value = if props.get(key).is_some_and(|p| p["type"] == "array") {
        json!(["bash", "-lc", command])
    } else {
        json!(command)
    };
    let mut arguments = Map::new();
    arguments.insert(key.to_owned(), value);
    fill_required(&tool.schema, &mut arguments);
    Call { name: tool.name.clone(), arguments: Value::Object(arguments) }
}

fn write_call(tool: &Tool, path: &str, content: &str) -> Call {
    let props = properties(&tool.schema);
    if tool.name == "apply_patch" {
        // The patch format of Codex and opencode: an added file's lines, `+` each.
        let relative = path.strip_prefix(&format!("{WORKSPACE}/")).unwrap_or(path);
        let lines: String = content.lines().map(|l| format!("+{l}\n")).collect();
        let patch = format!("*** Begin Patch\n*** Add File: {relative}\n{lines}*** End Patch\n");
        let key = ["patchText", "patch", "input"].into_iter().find(|k| props.contains_key(*k)).unwrap_or("input");
        return Call { name: tool.name.clone(), arguments: json!({ key: patch }) };
    }
    let pick = |names: &[&'static str]| names.iter().copied().find(|k| props.contains_key(*k));
    let mut arguments = Map::new();
    arguments.insert(
        pick(&["file_path", "filePath", "absolute_path", "path"]).unwrap_or("file_path").to_owned(),
        json!(path),
    );
    arguments.insert(pick(&["content", "file_text", "text"]).unwrap_or("content").to_owned(), json!(content));
    if props.contains_key("command") {
        // OpenHands' file_editor: `create` writes a new file.
        arguments.insert("command".to_owned(), json!("create"));
    }
    fill_required(&tool.schema, &mut arguments);
    Call { name: tool.name.clone(), arguments: Value::Object(arguments) }
}

/// Required properties not yet set, with what a model would put there.
fn fill_required(schema: &Value, arguments: &mut Map<String, Value>) {
    let props = properties(schema);
    for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if arguments.contains_key(name) {
            continue;
        }
        let prop = &props.get(name).cloned().unwrap_or_default();
        let value = match name {
            "security_risk" => json!("LOW"),
            "description" | "justification" | "summary" | "reason" => json!("Step of the scripted plan"),
            _ => match (prop["enum"].as_array().and_then(|e| e.first()), prop["type"].as_str()) {
                (Some(first), _) => first.clone(),
                (None, Some("boolean")) => json!(false),
                (None, Some("integer" | "number")) => json!(0),
                (None, Some("array")) => json!([]),
                (None, Some("object")) => json!({}),
                _ => json!(""),
            },
        };
        arguments.insert(name.to_owned(), value);
    }
}

/// The tools of a Chat Completions request.
pub fn chat_tools(request: &Value) -> Vec<Tool> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(Tool { name: t["function"]["name"].as_str()?.to_owned(), schema: t["function"]["parameters"].clone() })
        })
        .collect()
}

/// The tools of a Messages request.
pub fn messages_tools(request: &Value) -> Vec<Tool> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some(Tool { name: t["name"].as_str()?.to_owned(), schema: t["input_schema"].clone() }))
        .collect()
}

/// The function tools of a Responses request.
pub fn responses_tools(request: &Value) -> Vec<Tool> {
    request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["type"] == "function")
        .filter_map(|t| Some(Tool { name: t["name"].as_str()?.to_owned(), schema: t["parameters"].clone() }))
        .collect()
}

/// The turns taken among `items` since the last one in which the user
/// spoke (not one that only hands back tool results): some agents (aider)
/// send example conversations before the task.
fn turns_since_task(
    items: Option<&Vec<Value>>,
    user_spoke: impl Fn(&Value) -> bool,
    taken: impl Fn(&Value) -> bool,
) -> usize {
    let items = items.map(Vec::as_slice).unwrap_or_default();
    let start = items.iter().rposition(user_spoke).unwrap_or(0);
    items[start..].iter().filter(|i| taken(i)).count()
}

/// A message of the user's own (not tool results in the user's role).
fn user_text(message: &Value, role_key: &str, parts_key: &str, result_kinds: &[&str]) -> bool {
    if message[role_key] != "user" {
        return false;
    }
    match message[parts_key].as_array() {
        Some(parts) => !parts.iter().any(|p| result_kinds.iter().any(|k| p["type"] == *k || p.get(*k).is_some())),
        None => true,
    }
}

/// Turns the model already took in a Responses request: its tool calls
/// and messages in `input`.
pub fn responses_turn(request: &Value) -> usize {
    let user = |item: &Value| item["type"] == "message" && item["role"] == "user";
    turns_since_task(request["input"].as_array(), user, |item| {
        matches!(item["type"].as_str(), Some("function_call" | "custom_tool_call" | "local_shell_call"))
            || (item["type"] == "message" && item["role"] == "assistant")
    })
}

/// Turns in a Messages or Chat Completions request: its assistant messages.
pub fn messages_turn(request: &Value) -> usize {
    let user = |m: &Value| user_text(m, "role", "content", &["tool_result"]);
    turns_since_task(request["messages"].as_array(), user, |m| m["role"] == "assistant")
}

/// Turns in a Bedrock Converse request: its assistant messages since the
/// user's last own message (tool results come in the user's role).
pub fn converse_turn(request: &Value) -> usize {
    let user = |m: &Value| user_text(m, "role", "content", &["toolResult"]);
    turns_since_task(request["messages"].as_array(), user, |m| m["role"] == "assistant")
}

fn sse<'a>(events: impl IntoIterator<Item = (Option<&'a str>, Value)>) -> String {
    events
        .into_iter()
        .map(|(name, data)| match name {
            Some(name) => format!("event: {name}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        })
        .collect()
}

/// A Messages answer: JSON, or its SSE stream when `stream`.
pub fn messages(answer: &Answer, model: &Value, turn: usize, stream: bool) -> (String, &'static str) {
    let (block, stop) = match answer {
        Answer::Text(text) => (json!({"type": "text", "text": text}), "end_turn"),
        Answer::Call(call) => (
            json!({"type": "tool_use", "id": format!("toolu_{turn:04}"), "name": call.name, "input": call.arguments}),
            "tool_use",
        ),
    };
    let usage = json!({"input_tokens": 40, "output_tokens": 10});
    if !stream {
        let message = json!({"id": format!("msg_{turn}"), "type": "message", "role": "assistant", "model": model,
            "content": [block], "stop_reason": stop, "stop_sequence": null, "usage": usage});
        return (message.to_string(), "application/json");
    }
    let (start, delta) = match answer {
        Answer::Text(text) => (json!({"type": "text", "text": ""}), json!({"type": "text_delta", "text": text})),
        Answer::Call(call) => (
            json!({"type": "tool_use", "id": format!("toolu_{turn:04}"), "name": call.name, "input": {}}),
            json!({"type": "input_json_delta", "partial_json": call.arguments.to_string()}),
        ),
    };
    let events = [
        (
            Some("message_start"),
            json!({"type": "message_start", "message": {"id": format!("msg_{turn}"), "type": "message", "role": "assistant",
                "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 40, "output_tokens": 1}}}),
        ),
        (Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": start})),
        (Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": delta})),
        (Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})),
        (
            Some("message_delta"),
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 10}}),
        ),
        (Some("message_stop"), json!({"type": "message_stop"})),
    ];
    (sse(events), "text/event-stream")
}

/// A Responses answer: JSON, or its SSE stream when `stream`.
pub fn responses(answer: &Answer, model: &Value, turn: usize, stream: bool) -> (String, &'static str) {
    let item = match answer {
        Answer::Text(text) => json!({"type": "message", "id": format!("msg_{turn}"), "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}),
        Answer::Call(call) => json!({"type": "function_call", "id": format!("fc_{turn}"), "status": "completed",
            "call_id": format!("call_{turn}"), "name": call.name, "arguments": call.arguments.to_string()}),
    };
    let response = json!({
        "id": format!("resp_{turn}"), "object": "response", "created_at": 1, "model": model, "status": "completed",
        "output": [item],
        "usage": {"input_tokens": 40, "output_tokens": 10, "total_tokens": 50,
                  "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}},
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": []
    });
    if !stream {
        return (response.to_string(), "application/json");
    }
    let mut created = response.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let mut added = item.clone();
    added["status"] = json!("in_progress");
    let mut events = vec![
        ("response.created", json!({"type": "response.created", "response": created})),
        ("response.output_item.added", json!({"type": "response.output_item.added", "output_index": 0, "item": added})),
    ];
    match answer {
        Answer::Text(text) => {
            let id = format!("msg_{turn}");
            events.extend([
                (
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "item_id": id, "output_index": 0, "content_index": 0, "delta": text}),
                ),
                (
                    "response.output_text.done",
                    json!({"type": "response.output_text.done", "item_id": id, "output_index": 0, "content_index": 0, "text": text}),
                ),
            ]);
        }
        Answer::Call(call) => {
            let id = format!("fc_{turn}");
            let arguments = call.arguments.to_string();
            events.extend([
                (
                    "response.function_call_arguments.delta",
                    json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": 0, "delta": arguments}),
                ),
                (
                    "response.function_call_arguments.done",
                    json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": 0, "arguments": arguments}),
                ),
            ]);
        }
    }
    events.push((
        "response.output_item.done",
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
    ));
    events.push(("response.completed", json!({"type": "response.completed", "response": response})));
    let numbered = events.into_iter().enumerate().map(|(n, (name, mut data))| {
        data["sequence_number"] = json!(n);
        (Some(name), data)
    });
    (sse(numbered), "text/event-stream")
}

/// A Chat Completions answer: JSON, or its SSE stream when `stream`
/// (with a usage chunk when the client asked for one).
pub fn chat(answer: &Answer, model: &Value, turn: usize, stream: bool, usage_chunk: bool) -> (String, &'static str) {
    let id = format!("chatcmpl-s{turn}");
    let usage = json!({"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50});
    let (message, finish) = match answer {
        Answer::Text(text) => (json!({"role": "assistant", "content": text}), "stop"),
        Answer::Call(call) => (
            json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_{turn}"), "type": "function",
                "function": {"name": call.name, "arguments": call.arguments.to_string()},
            }]}),
            "tool_calls",
        ),
    };
    if !stream {
        let body = json!({"id": id, "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage});
        return (body.to_string(), "application/json");
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    match answer {
        Answer::Text(text) => chunks.push(chunk(json!({"content": text}), Value::Null)),
        Answer::Call(call) => chunks.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": format!("call_{turn}"), "type": "function",
                "function": {"name": call.name, "arguments": call.arguments.to_string()}}]}),
            Value::Null,
        )),
    }
    chunks.push(chunk(json!({}), json!(finish)));
    if usage_chunk {
        chunks.push(json!({"id": id, "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [], "usage": usage}));
    }
    let mut body = sse(chunks.into_iter().map(|c| (None, c)));
    body.push_str("data: [DONE]\n\n");
    (body, "text/event-stream")
}

/// The function declarations of a Gemini request.
pub fn gemini_tools(request: &Value) -> Vec<Tool> {
    let declarations = request["tools"].as_array().into_iter().flatten().flat_map(|tool| {
        tool["functionDeclarations"].as_array().or(tool["function_declarations"].as_array()).into_iter().flatten()
    });
    declarations
        .filter_map(|d| {
            let schema =
                if d["parametersJsonSchema"].is_object() { &d["parametersJsonSchema"] } else { &d["parameters"] };
            Some(Tool { name: d["name"].as_str()?.to_owned(), schema: schema.clone() })
        })
        .collect()
}

/// Turns in a Gemini request: its `model` contents.
pub fn gemini_turn(request: &Value) -> usize {
    let user = |c: &Value| user_text(c, "role", "parts", &["functionResponse"]);
    turns_since_task(request["contents"].as_array(), user, |c| c["role"] == "model")
}

/// A Gemini `generateContent` answer, or the one chunk of its SSE stream
/// (`alt=sse`) when `stream`.
pub fn gemini(answer: &Answer, model: &str, turn: usize, stream: bool) -> (String, &'static str) {
    let part = match answer {
        Answer::Text(text) => json!({"text": text}),
        Answer::Call(call) => json!({"functionCall": {"name": call.name, "args": call.arguments}}),
    };
    let body = json!({
        "candidates": [{"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 10, "totalTokenCount": 50},
        "modelVersion": model, "responseId": format!("resp-{turn}"),
    });
    match stream {
        true => (format!("data: {body}\r\n\r\n"), "text/event-stream"),
        false => (body.to_string(), "application/json"),
    }
}
