//! What a request may ask the provider to do on the sandbox's behalf. A
//! provider that runs tools itself (web search and fetch, code execution,
//! remote MCP servers, connectors) or fetches URLs named in the content is
//! a way out of a sandbox whose egress is `none`; so, per provider and by
//! default, no server-side tool, no remote URL and no beta flag passes.
//! Client-side tools (functions the agent runs itself) always pass.

use common::config::ProviderConfig;
use serde_json::Value;

use super::server::Wire;

/// Why a request was refused: the server-side capability it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// `tool` without a trailing `_YYYYMMDD` version (`web_search_20250305`
/// is `web_search`).
fn unversioned(tool: &str) -> &str {
    match tool.rsplit_once('_') {
        Some((name, version)) if version.len() == 8 && version.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => tool,
    }
}

/// Tool types the client runs itself: the provider only describes a call.
fn client_side(wire: Wire, tool: &Value) -> bool {
    let kind = tool.get("type").and_then(Value::as_str);
    match wire {
        // Chat Completions and Responses: functions, custom tools, and the
        // shell, patch and computer tools whose actions the agent performs.
        // A `namespace` (Codex groups its sub-agent functions in one) is
        // the client's when everything in it is.
        Wire::OpenAi => match kind {
            Some("namespace") => tool
                .get("tools")
                .and_then(Value::as_array)
                .is_some_and(|tools| tools.iter().all(|t| client_side(wire, t))),
            _ => matches!(
                kind,
                Some("function" | "custom" | "local_shell" | "shell" | "apply_patch" | "computer_use_preview")
            ),
        },
        // Messages: custom tools (no type, or `custom`), and the versioned
        // bash, text editor, computer and memory tools the agent runs.
        Wire::Anthropic => match kind {
            None | Some("custom") => true,
            Some(kind) => matches!(unversioned(kind), "bash" | "text_editor" | "computer" | "memory"),
        },
        // Gemini: a tool holding only function declarations (the others,
        // `googleSearch`, `codeExecution`, `urlContext`, run at Google).
        Wire::Gemini => tool
            .as_object()
            .is_some_and(|t| t.keys().all(|k| matches!(k.as_str(), "functionDeclarations" | "function_declarations"))),
    }
}

/// The name a Gemini server-side tool is allowed by (`googleSearch` and
/// `google_search` are `google_search`).
fn gemini_tool(tool: &Value) -> String {
    let key = tool.as_object().and_then(|t| t.keys().find(|k| !k.starts_with("function")).cloned());
    let key = key.unwrap_or_else(|| "unknown".to_owned());
    let mut snake = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    snake
}

/// The server-side tools `request` asks for, by unversioned name (`mcp`
/// for remote MCP servers and connectors, `web_search` for Chat
/// Completions' `web_search_options`).
fn server_tools(wire: Wire, request: &Value) -> Vec<String> {
    let mut asked: Vec<String> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|tool| !client_side(wire, tool))
        .map(|tool| {
            if wire == Wire::Gemini {
                return gemini_tool(tool);
            }
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or("unknown");
            match unversioned(kind) {
                "mcp_toolset" | "connector" => "mcp".to_owned(),
                other => other.to_owned(),
            }
        })
        .collect();
    if request.get("mcp_servers").and_then(Value::as_array).is_some_and(|s| !s.is_empty()) {
        asked.push("mcp".to_owned());
    }
    if request.get("web_search_options").is_some_and(|o| !o.is_null()) {
        asked.push("web_search".to_owned());
    }
    asked.sort();
    asked.dedup();
    asked
}

/// A URL the provider would fetch itself (not inline `data:`).
fn remote(url: &str) -> bool {
    !url.trim_start().get(..5).is_some_and(|scheme| scheme.eq_ignore_ascii_case("data:"))
}

/// The first content block that points the provider at a remote URL:
/// Anthropic image and document sources of type `url`, Chat Completions
/// `image_url` parts, Responses `input_image` and `input_file` by URL,
/// Gemini `fileData` parts.
fn first_remote_url(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items.iter().find_map(first_remote_url),
        Value::Object(object) => {
            let kind = object.get("type").and_then(Value::as_str);
            let url = match kind {
                Some("image" | "document") => object
                    .get("source")
                    .filter(|s| s.get("type").and_then(Value::as_str) == Some("url"))
                    .and_then(|s| s.get("url"))
                    .and_then(Value::as_str),
                Some("image_url") => match object.get("image_url") {
                    Some(Value::String(url)) => Some(url.as_str()),
                    Some(inner) => inner.get("url").and_then(Value::as_str),
                    None => None,
                },
                Some("input_image") => object.get("image_url").and_then(Value::as_str),
                Some("input_file") => object.get("file_url").and_then(Value::as_str),
                // Gemini parts: `fileData.fileUri`.
                _ => ["fileData", "file_data"]
                    .iter()
                    .find_map(|k| object.get(*k))
                    .and_then(|f| f.get("fileUri").or_else(|| f.get("file_uri")))
                    .and_then(Value::as_str),
            };
            match url.filter(|u| remote(u)) {
                Some(url) => Some(url.chars().take(200).collect()),
                None => object.values().find_map(first_remote_url),
            }
        }
        _ => None,
    }
}

/// Checks `request` against `provider`'s request policy.
pub fn check(wire: Wire, provider: &ProviderConfig, request: &Value) -> Result<(), Refused> {
    let allowed = |tool: &str| provider.server_tools.iter().any(|a| unversioned(a) == tool);
    if let Some(tool) = server_tools(wire, request).into_iter().find(|t| !allowed(t)) {
        return Err(Refused(format!(
            "the server-side tool `{tool}` is not allowed for this provider: the provider would run it outside the sandbox"
        )));
    }
    if !provider.remote_urls
        && let Some(url) = first_remote_url(request)
    {
        return Err(Refused(format!(
            "content that the provider would fetch from a URL ({url}) is not allowed; send it inline (base64)"
        )));
    }
    Ok(())
}

/// The `anthropic-beta` flags of `asked` (comma-separated) that the
/// provider allows; the rest are dropped, and returned second.
pub fn betas(provider: &ProviderConfig, asked: Option<&str>) -> (Vec<String>, Vec<String>) {
    let flags = asked.into_iter().flat_map(|v| v.split(',')).map(str::trim).filter(|b| !b.is_empty());
    flags.map(str::to_owned).partition(|flag| provider.anthropic_betas.iter().any(|a| a == flag))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn provider(policy: Value) -> ProviderConfig {
        let mut config = json!({"kind": "anthropic", "base_url": "https://p.example/v1", "models": ["m"]});
        config.as_object_mut().unwrap().extend(policy.as_object().unwrap().clone());
        serde_json::from_value(config).unwrap()
    }

    #[test]
    fn server_side_tools_are_refused_unless_allowed_and_client_tools_always_pass() {
        let strict = provider(json!({}));
        let refused = |wire, request: Value| check(wire, &strict, &request).unwrap_err().0;
        let anthropic = [
            json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}),
            json!({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}),
            json!({"mcp_servers": [{"type": "url", "url": "https://evil.example/mcp", "name": "x"}]}),
            json!({"tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]}),
        ];
        for request in anthropic {
            assert!(refused(Wire::Anthropic, request.clone()).contains("server-side tool"), "{request}");
        }
        let openai = [
            json!({"tools": [{"type": "web_search"}]}),
            json!({"tools": [{"type": "web_search_preview"}]}),
            json!({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}),
            json!({"tools": [{"type": "mcp", "server_url": "https://evil.example/sse", "server_label": "x"}]}),
            json!({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}),
            json!({"web_search_options": {}}),
        ];
        for request in openai {
            assert!(refused(Wire::OpenAi, request.clone()).contains("server-side tool"), "{request}");
        }
        let client = [
            (
                Wire::Anthropic,
                json!({"tools": [{"name": "Read", "input_schema": {}}, {"type": "bash_20250124", "name": "bash"}, {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}),
            ),
            (
                Wire::OpenAi,
                json!({"tools": [{"type": "function", "function": {"name": "f"}}, {"type": "custom", "name": "apply"}]}),
            ),
        ];
        for (wire, request) in client {
            assert_eq!(check(wire, &strict, &request), Ok(()), "{request}");
        }
        let searching = provider(json!({"server_tools": ["web_search"]}));
        let search = json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        assert_eq!(check(Wire::Anthropic, &searching, &search), Ok(()));
        let namespace =
            |inner: Value| json!({"tools": [{"type": "namespace", "name": "multi_agent_v1", "tools": [inner]}]});
        let functions = namespace(json!({"type": "function", "name": "spawn_agent", "parameters": {}}));
        assert_eq!(check(Wire::OpenAi, &strict, &functions), Ok(()), "a namespace of functions is the client's");
        assert!(check(Wire::OpenAi, &strict, &namespace(json!({"type": "web_search"}))).is_err());
        let gemini = |tools: Value| json!({"contents": [], "tools": tools});
        let functions = gemini(json!([{"functionDeclarations": [{"name": "run_shell_command"}]}]));
        assert_eq!(check(Wire::Gemini, &strict, &functions), Ok(()), "Gemini functions are the client's");
        for tool in [json!({"googleSearch": {}}), json!({"codeExecution": {}}), json!({"urlContext": {}})] {
            let request = gemini(json!([tool]));
            assert!(refused(Wire::Gemini, request.clone()).contains("server-side tool"), "{request}");
        }
        let google_search = provider(json!({"server_tools": ["google_search"]}));
        assert_eq!(check(Wire::Gemini, &google_search, &gemini(json!([{"googleSearch": {}}]))), Ok(()));
        let remote_file = json!({"contents": [{"parts": [{"fileData": {"fileUri": "https://x.example/a.pdf"}}]}]});
        assert!(check(Wire::Gemini, &strict, &remote_file).is_err(), "Gemini fetches fileUri itself");
        let fetch = json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]});
        assert!(check(Wire::Anthropic, &searching, &fetch).is_err(), "web_search allows search only");
    }

    #[test]
    fn remote_urls_in_content_are_refused_inline_data_passes() {
        let strict = provider(json!({}));
        let remote = [
            json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://evil.example/a.png"}}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "http://evil.example/x.pdf"}}]}]}),
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://evil.example/?q=secret"}}]}]}),
            json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://evil.example/i"}]}]}),
            json!({"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://evil.example/f"}]}]}),
        ];
        for request in remote {
            let why = check(Wire::Anthropic, &strict, &request).unwrap_err().0;
            assert!(why.contains("evil.example"), "{why}");
        }
        let inline = json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            {"type": "text", "text": "see https://example.com, it is only text"},
            {"type": "tool_use", "id": "t", "name": "WebFetch", "input": {"url": "https://example.com"}}
        ]}]});
        assert_eq!(check(Wire::Anthropic, &strict, &inline), Ok(()));
        let open = provider(json!({"remote_urls": true}));
        let image = json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://cdn.example/a.png"}}]}]});
        assert_eq!(check(Wire::Anthropic, &open, &image), Ok(()));
    }

    #[test]
    fn only_allowed_beta_flags_pass() {
        let some = provider(json!({"anthropic_betas": ["interleaved-thinking-2025-05-14"]}));
        let (kept, dropped) =
            betas(&some, Some("interleaved-thinking-2025-05-14, mcp-client-2025-04-04,files-api-2025-04-14"));
        assert_eq!(kept, ["interleaved-thinking-2025-05-14"]);
        assert_eq!(dropped, ["mcp-client-2025-04-04", "files-api-2025-04-14"]);
        assert_eq!(betas(&some, None), (vec![], vec![]));
    }
}
