//! Chat Completions requests as Bedrock Converse requests. What has a
//! Converse equivalent is mapped: system and developer messages, text and
//! inline images, assistant tool calls and tool results, function tools and
//! `tool_choice`, the output cap, temperature, `top_p`, stop sequences and
//! (for Nova and gpt-oss) `reasoning_effort`.
//! Whatever would change the answer and has no equivalent (several choices,
//! log probabilities, penalties, seeds, structured output, audio) is refused
//! by name rather than dropped.

use serde_json::{Map, Value, json};

/// Fields passed over without a Converse counterpart because they do not
/// change the answer (or are mapped below).
const MAPPED: &[&str] = &[
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "user",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "store",
    "metadata",
    // Caching and abuse-tracking hints to OpenAI (LiteLLM sends the first).
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "reasoning_effort",
];

/// The Converse body for a Chat Completions request to `upstream` (the
/// Bedrock model id), or what cannot be mapped.
pub(super) fn request(chat: &Value, upstream: &str) -> Result<Value, String> {
    let Some(fields) = chat.as_object() else { return Err("the request body is not a JSON object".to_owned()) };
    if let Some(field) = fields.keys().find(|k| !MAPPED.contains(&k.as_str())) {
        return Err(format!("`{field}` has no equivalent in Bedrock's Converse API; leave it out"));
    }
    if fields.get("n").and_then(Value::as_u64).is_some_and(|n| n != 1) {
        return Err("`n` other than 1 has no equivalent in Bedrock's Converse API".to_owned());
    }
    for penalty in ["presence_penalty", "frequency_penalty"] {
        if fields.get(penalty).and_then(Value::as_f64).is_some_and(|p| p != 0.0) {
            return Err(format!("`{penalty}` has no equivalent in Bedrock's Converse API"));
        }
    }
    if fields.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        return Err("`parallel_tool_calls: false` has no equivalent in Bedrock's Converse API".to_owned());
    }
    if let Some(format) = fields.get("response_format")
        && format["type"] != "text"
    {
        return Err("`response_format` other than text has no equivalent in Bedrock's Converse API".to_owned());
    }
    // Converse refuses tool blocks in a request that offers no tools (a
    // summarizing call over a history with tool use): the history's calls
    // and results then go as text.
    let tools_offered = fields.get("tools").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let Some(chat_messages) = fields.get("messages").and_then(Value::as_array) else {
        return Err("`messages` must be an array".to_owned());
    };
    for (i, message) in chat_messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        let (role, content) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(&message["content"]).map_err(|e| format!("messages[{i}]: {e}"))?);
                continue;
            }
            "user" => ("user", user_content(&message["content"]).map_err(|e| format!("messages[{i}]: {e}"))?),
            "assistant" => {
                ("assistant", assistant_content(message, tools_offered).map_err(|e| format!("messages[{i}]: {e}"))?)
            }
            "tool" => {
                let Some(id) = message["tool_call_id"].as_str() else {
                    return Err(format!("messages[{i}]: a tool message needs tool_call_id"));
                };
                let text = flat_text(&message["content"]).map_err(|e| format!("messages[{i}]: {e}"))?;
                let text = if text.trim().is_empty() { "(no output)".to_owned() } else { text };
                let block = match tools_offered {
                    true => json!({"toolResult": {"toolUseId": id, "content": [{"text": text}]}}),
                    false => json!({"text": format!("[result of tool call {id}]\n{text}")}),
                };
                ("user", vec![block])
            }
            other => return Err(format!("messages[{i}]: role {other:?} has no equivalent in Bedrock's Converse API")),
        };
        if content.is_empty() {
            continue;
        }
        // Converse wants turns to alternate: consecutive messages of one
        // role (several tool results, a result and a note) become one.
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(blocks) = last["content"].as_array_mut() {
                    blocks.extend(content);
                }
            }
            _ => messages.push(json!({"role": role, "content": content})),
        }
    }
    let mut body = Map::new();
    body.insert("messages".to_owned(), messages.into());
    if !system.is_empty() {
        body.insert("system".to_owned(), system.into());
    }
    let mut inference = Map::new();
    if let Some(cap) = fields.get("max_completion_tokens").or_else(|| fields.get("max_tokens")).filter(|v| !v.is_null())
    {
        inference.insert("maxTokens".to_owned(), cap.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(value) = fields.get(from).filter(|v| !v.is_null()) {
            inference.insert(to.to_owned(), value.clone());
        }
    }
    match fields.get("stop") {
        Some(Value::String(stop)) => drop(inference.insert("stopSequences".to_owned(), json!([stop]))),
        Some(Value::Array(stops)) if !stops.is_empty() => {
            drop(inference.insert("stopSequences".to_owned(), stops.clone().into()))
        }
        _ => {}
    }
    if !inference.is_empty() {
        body.insert("inferenceConfig".to_owned(), inference.into());
    }
    if let Some(config) = tool_config(fields)? {
        body.insert("toolConfig".to_owned(), config);
    }
    if let Some(effort) = fields.get("reasoning_effort").and_then(Value::as_str)
        && let Some((field, value)) = reasoning(effort, upstream)?
    {
        body.insert("additionalModelRequestFields".to_owned(), json!({field: value}));
    }
    Ok(body.into())
}

/// `reasoning_effort` as the model family's own request field: Nova's
/// `reasoningConfig`, gpt-oss's `reasoning_effort`; `none` and `minimal`
/// ask for no reasoning.
fn reasoning(effort: &str, upstream: &str) -> Result<Option<(&'static str, Value)>, String> {
    match effort {
        "none" | "minimal" => return Ok(None),
        "low" | "medium" | "high" => {}
        other => return Err(format!("`reasoning_effort` {other:?} is not low, medium or high")),
    }
    Ok(Some(if upstream.contains("amazon.nova") {
        ("reasoningConfig", json!({"type": "enabled", "maxReasoningEffort": effort}))
    } else if upstream.contains("anthropic.") {
        // Claude's thinking blocks must go back with each later turn,
        // signed, and Chat Completions has nowhere to carry them.
        return Err("`reasoning_effort` on Claude is not offered through Chat Completions on Bedrock: use /v1/messages with `thinking`".to_owned());
    } else if upstream.contains("openai.gpt-oss") {
        ("reasoning_effort", json!(effort))
    } else {
        return Err(format!("`reasoning_effort` has no known equivalent for {upstream} on Bedrock; leave it out"));
    }))
}

/// `[{"text": ..}]` for a string or an array of text parts; blank text is
/// left out (Converse refuses a text block with nothing but whitespace).
fn text_blocks(content: &Value) -> Result<Vec<Value>, String> {
    let text = |t: &str| (!t.trim().is_empty()).then(|| json!({"text": t}));
    Ok(match content {
        Value::String(t) => text(t).into_iter().collect(),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part["type"].as_str() {
                Some("text") => Ok(text(part["text"].as_str().unwrap_or_default())),
                other => Err(format!("content part {other:?} is not text")),
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect(),
        Value::Null => Vec::new(),
        _ => return Err("content must be a string or an array of parts".to_owned()),
    })
}

/// A tool result's text: Converse takes text blocks; parts are joined.
fn flat_text(content: &Value) -> Result<String, String> {
    let blocks = text_blocks(content)?;
    Ok(blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"))
}

/// A user message: text and inline (`data:`) images.
fn user_content(content: &Value) -> Result<Vec<Value>, String> {
    let Value::Array(parts) = content else { return text_blocks(content) };
    let blocks = parts
        .iter()
        .map(|part| match part["type"].as_str() {
            Some("text") => Ok(text_blocks(&part["text"])?.pop()),
            Some("image_url") => image(part["image_url"]["url"].as_str().unwrap_or_default()).map(Some),
            other => Err(format!("content part {other:?} has no equivalent in Bedrock's Converse API")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(blocks.into_iter().flatten().collect())
}

/// An inline image as a Converse image block; a URL the provider would
/// fetch is refused (Bedrock fetches none).
fn image(url: &str) -> Result<Value, String> {
    let Some((meta, data)) = url.strip_prefix("data:").and_then(|rest| rest.split_once(',')) else {
        return Err("an image must be inline (a data: URL): Bedrock fetches no URLs".to_owned());
    };
    let Some(format) = meta.strip_suffix(";base64").and_then(|m| m.strip_prefix("image/")) else {
        return Err("an inline image must be base64 image/png, jpeg, gif or webp".to_owned());
    };
    let format = if format == "jpg" { "jpeg" } else { format };
    if !["png", "jpeg", "gif", "webp"].contains(&format) {
        return Err(format!("image/{format} is not an image format Bedrock takes"));
    }
    Ok(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

/// An assistant message: its text and its tool calls as `toolUse` blocks
/// (as text when the request offers no tools).
fn assistant_content(message: &Value, tools_offered: bool) -> Result<Vec<Value>, String> {
    let mut blocks = text_blocks(&message["content"])?;
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let (id, name) = (&call["id"], &call["function"]["name"]);
        if !tools_offered {
            blocks.push(json!({"text": format!("[tool call {} {}: {arguments}]", id.as_str().unwrap_or_default(), name.as_str().unwrap_or_default())}));
            continue;
        }
        let input: Value = match arguments.trim() {
            "" => json!({}),
            text => serde_json::from_str(text).map_err(|e| format!("tool call arguments are not JSON: {e}"))?,
        };
        blocks.push(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}));
    }
    Ok(blocks)
}

/// `tools` and `tool_choice` as Converse's `toolConfig`.
fn tool_config(fields: &Map<String, Value>) -> Result<Option<Value>, String> {
    let Some(tools) = fields.get("tools").and_then(Value::as_array).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let specs = tools
        .iter()
        .map(|tool| {
            if tool["type"] != "function" {
                return Err(format!("tool type {} has no equivalent in Bedrock's Converse API", tool["type"]));
            }
            let function = &tool["function"];
            let schema = match &function["parameters"] {
                Value::Null => json!({"type": "object", "properties": {}}),
                schema => schema.clone(),
            };
            let mut spec = json!({"name": function["name"], "inputSchema": {"json": schema}});
            if let Some(description) = function["description"].as_str() {
                spec["description"] = description.into();
            }
            Ok(json!({"toolSpec": spec}))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut config = json!({"tools": specs});
    match fields.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(choice)) if choice == "auto" => config["toolChoice"] = json!({"auto": {}}),
        Some(Value::String(choice)) if choice == "required" => config["toolChoice"] = json!({"any": {}}),
        Some(Value::String(choice)) if choice == "none" => {
            return Err(
                "`tool_choice: none` has no equivalent in Bedrock's Converse API: leave the tools out".to_owned()
            );
        }
        Some(choice) if choice["type"] == "function" => {
            config["toolChoice"] = json!({"tool": {"name": choice["function"]["name"]}});
        }
        Some(choice) => return Err(format!("`tool_choice` {choice} has no equivalent in Bedrock's Converse API")),
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_with_tools_maps_to_converse() {
        let chat = json!({
            "model": "nova-pro", "max_tokens": 100, "temperature": 0, "top_p": 0.9, "stop": "END", "stream": true,
            "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "bash", "description": "run", "parameters": {"type": "object", "properties": {"command": {"type": "string"}}}}}],
            "tool_choice": "auto",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "list"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}},
                                                                      {"id": "t2", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"pwd\"}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": "a.txt"},
                {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "/w"}]},
                {"role": "user", "content": "thanks"}
            ]
        });
        let body = request(&chat, "amazon.nova-pro-v1:0").unwrap();
        assert_eq!(body["system"], json!([{"text": "be brief"}]));
        assert_eq!(
            body["inferenceConfig"],
            json!({"maxTokens": 100, "temperature": 0, "topP": 0.9, "stopSequences": ["END"]})
        );
        assert_eq!(body["toolConfig"]["toolChoice"], json!({"auto": {}}));
        assert_eq!(
            body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["command"]["type"],
            "string"
        );
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3, "the tool results and the note are one user turn: {body:#}");
        assert_eq!(messages[0]["content"][1]["image"], json!({"format": "png", "source": {"bytes": "iVBO"}}));
        assert_eq!(
            messages[1]["content"][0]["toolUse"],
            json!({"toolUseId": "t1", "name": "bash", "input": {"command": "ls"}})
        );
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(messages[2]["content"][1]["toolResult"], json!({"toolUseId": "t2", "content": [{"text": "/w"}]}));
        assert_eq!(messages[2]["content"][2], json!({"text": "thanks"}));
    }

    #[test]
    fn blank_text_is_left_out_and_tool_history_without_tools_goes_as_text() {
        let chat = json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "list"}, {"type": "text", "text": " \n"}]},
            {"role": "assistant", "content": "\n", "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "a.txt"},
            {"role": "user", "content": "summarize"}
        ]});
        let body = request(&chat, "m").unwrap();
        assert!(body.get("toolConfig").is_none());
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(messages[0]["content"], json!([{"text": "list"}]));
        assert_eq!(messages[1]["content"], json!([{"text": "[tool call t1 bash: {\"command\":\"ls\"}]"}]));
        assert_eq!(messages[2]["content"], json!([{"text": "[result of tool call t1]\na.txt"}, {"text": "summarize"}]));
        assert!(!body.to_string().contains("toolUse") && !body.to_string().contains("toolResult"));
    }

    #[test]
    fn what_converse_cannot_carry_is_refused_by_name() {
        let base = |extra: Value| {
            let mut chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                chat[k] = v.clone();
            }
            request(&chat, "us.amazon.nova-pro-v1:0")
        };
        assert!(base(json!({"n": 1, "presence_penalty": 0, "response_format": {"type": "text"}})).is_ok());
        for (extra, named) in [
            (json!({"n": 2}), "`n`"),
            (json!({"logprobs": true}), "`logprobs`"),
            (json!({"seed": 1}), "`seed`"),
            (json!({"frequency_penalty": 0.5}), "`frequency_penalty`"),
            (json!({"response_format": {"type": "json_object"}}), "`response_format`"),
            (json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "none"}), "tool_choice"),
        ] {
            let refused = base(extra.clone()).unwrap_err();
            assert!(refused.contains(named), "{extra}: {refused}");
        }
        let remote = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/p.png"}}]}]});
        assert!(request(&remote, "m").unwrap_err().contains("inline"));
        let effort = |effort: &str, model: &str| {
            let chat =
                json!({"model": "m", "reasoning_effort": effort, "messages": [{"role": "user", "content": "hi"}]});
            request(&chat, model).map(|b| b["additionalModelRequestFields"].clone())
        };
        assert_eq!(
            effort("high", "us.amazon.nova-2-lite-v1:0").unwrap(),
            json!({"reasoningConfig": {"type": "enabled", "maxReasoningEffort": "high"}})
        );
        assert!(effort("low", "us.anthropic.claude-sonnet-4-v1:0").unwrap_err().contains("/v1/messages"));
        assert_eq!(effort("medium", "openai.gpt-oss-120b-1:0").unwrap(), json!({"reasoning_effort": "medium"}));
        assert_eq!(effort("minimal", "meta.llama4-maverick-17b-instruct-v1:0").unwrap(), Value::Null);
        assert!(effort("high", "meta.llama4-maverick-17b-instruct-v1:0").unwrap_err().contains("no known equivalent"));
    }
}
