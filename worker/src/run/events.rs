//! The commands an agent ran, read from its own event stream (JSON lines
//! on its stdout) rather than from its terminal text: each agent's format
//! names the shell commands it executed in its own terms.
//!
//! The stream is the agent's word, as its transcript would be: a process
//! the agent runs could write a line of its own to the agent's stdout, so
//! the record says these commands were reported by the agent, and the
//! gateway's transcript (which no sandbox process can touch) shows what
//! the model asked for.

use std::collections::HashSet;

use common::config::AgentEvents;
use serde_json::Value;

/// Reads one agent's event stream, line by line.
pub(super) struct EventReader {
    format: AgentEvents,
    /// Items already counted (Codex reports an item started, then done).
    seen: HashSet<String>,
}

impl EventReader {
    pub(super) fn new(format: AgentEvents) -> Self {
        Self { format, seen: HashSet::new() }
    }

    /// The commands one line of the stream reports (none for a line that
    /// is not a JSON event of the format).
    pub(super) fn commands(&mut self, line: &str) -> Vec<String> {
        let trimmed = line.trim();
        if !trimmed.starts_with('{') {
            return Vec::new();
        }
        let Ok(event) = serde_json::from_str::<Value>(trimmed) else { return Vec::new() };
        match self.format {
            AgentEvents::ClaudeStreamJson => claude(&event),
            AgentEvents::CodexJson => self.codex(&event),
            AgentEvents::GeminiStreamJson => gemini(&event),
            AgentEvents::OpencodeJson => self.opencode(&event),
            AgentEvents::OpenhandsJson => self.openhands(&event),
            AgentEvents::AiderInputHistory => Vec::new(),
        }
    }

    /// The commands an events file reports (aider's input history: entries
    /// of `+`-prefixed lines after a `# <timestamp>` line; `/run <command>`
    /// entries are the shell commands it ran).
    pub(super) fn file_commands(&mut self, text: &str) -> Vec<String> {
        if self.format != AgentEvents::AiderInputHistory {
            return text.lines().flat_map(|line| self.commands(line)).collect();
        }
        let mut entries: Vec<String> = Vec::new();
        let mut open = false;
        for line in text.lines() {
            if line.starts_with("# ") {
                open = false;
            } else if let Some(rest) = line.strip_prefix('+') {
                match (open, entries.last_mut()) {
                    (true, Some(entry)) => {
                        entry.push('\n');
                        entry.push_str(rest);
                    }
                    _ => entries.push(rest.to_owned()),
                }
                open = true;
            }
        }
        entries
            .iter()
            .filter_map(|e| e.strip_prefix("/run "))
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// `item.started` / `item.completed` of a `command_execution` item,
    /// counted once per item.
    fn codex(&mut self, event: &Value) -> Vec<String> {
        if !matches!(event["type"].as_str(), Some("item.started" | "item.completed")) {
            return Vec::new();
        }
        let item = &event["item"];
        if item["type"] != "command_execution" {
            return Vec::new();
        }
        self.once(item["id"].as_str(), item["command"].as_str())
    }

    /// A `tool_use` event of the `bash` tool (reported once it has its
    /// input, which may be after it started).
    fn opencode(&mut self, event: &Value) -> Vec<String> {
        let part = &event["part"];
        if event["type"] != "tool_use" || part["tool"] != "bash" {
            return Vec::new();
        }
        self.once(part["callID"].as_str().or(part["id"].as_str()), part["state"]["input"]["command"].as_str())
    }

    /// An action event of OpenHands' terminal tool.
    fn openhands(&mut self, event: &Value) -> Vec<String> {
        let action = if event["action"].is_object() { &event["action"] } else { event };
        let is_terminal = matches!(event["tool_name"].as_str(), Some("terminal" | "execute_bash" | "bash"))
            || matches!(action["kind"].as_str(), Some("TerminalAction" | "ExecuteBashAction" | "CmdRunAction"));
        if !is_terminal {
            return Vec::new();
        }
        let id = event["id"].as_str().or(event["tool_call_id"].as_str());
        self.once(id, action["command"].as_str())
    }

    fn once(&mut self, id: Option<&str>, command: Option<&str>) -> Vec<String> {
        let Some(command) = command.filter(|c| !c.is_empty()) else { return Vec::new() };
        if let Some(id) = id
            && !self.seen.insert(id.to_owned())
        {
            return Vec::new();
        }
        vec![command.to_owned()]
    }
}

/// `Bash` tool uses in an `assistant` message.
fn claude(event: &Value) -> Vec<String> {
    if event["type"] != "assistant" {
        return Vec::new();
    }
    let content = event["message"]["content"].as_array().into_iter().flatten();
    content
        .filter(|block| block["type"] == "tool_use" && block["name"] == "Bash")
        .filter_map(|block| block["input"]["command"].as_str().map(str::to_owned))
        .collect()
}

/// A `tool_use` event of `run_shell_command`.
fn gemini(event: &Value) -> Vec<String> {
    if event["type"] != "tool_use" || event["tool_name"] != "run_shell_command" {
        return Vec::new();
    }
    event["parameters"]["command"].as_str().map(str::to_owned).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(format: AgentEvents, lines: &[Value]) -> Vec<String> {
        let mut reader = EventReader::new(format);
        lines.iter().flat_map(|line| reader.commands(&line.to_string())).collect()
    }

    #[test]
    fn each_agents_shell_commands_are_read_from_its_own_events() {
        let claude = [
            json!({"type": "system", "subtype": "init", "tools": ["Bash"]}),
            json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "ls"},
                {"type": "tool_use", "name": "Write", "input": {"file_path": "/workspace/a", "content": "x"}},
                {"type": "tool_use", "name": "Bash", "input": {"command": "cat a"}}]}}),
            json!({"type": "user", "message": {"content": [{"type": "tool_result", "content": "{\"type\": \"assistant\"}"}]}}),
        ];
        assert_eq!(read(AgentEvents::ClaudeStreamJson, &claude), ["cat a"]);
        let item =
            json!({"id": "item_1", "type": "command_execution", "command": "bash -lc ls", "status": "in_progress"});
        let codex = [
            json!({"type": "thread.started"}),
            json!({"type": "item.started", "item": item}),
            json!({"type": "item.completed", "item": item}),
            json!({"type": "item.completed", "item": {"id": "item_2", "type": "file_change", "changes": []}}),
            json!({"type": "item.completed", "item": {"id": "item_3", "type": "command_execution", "command": "true"}}),
        ];
        assert_eq!(read(AgentEvents::CodexJson, &codex), ["bash -lc ls", "true"]);
        let gemini = [
            json!({"type": "tool_use", "tool_name": "write_file", "parameters": {"file_path": "a"}}),
            json!({"type": "tool_use", "tool_name": "run_shell_command", "parameters": {"command": "make test"}}),
        ];
        assert_eq!(read(AgentEvents::GeminiStreamJson, &gemini), ["make test"]);
        let bash = |status: &str| json!({"type": "tool_use", "part": {"callID": "c1", "tool": "bash", "state": {"status": status, "input": {"command": "ls -la"}}}});
        assert_eq!(read(AgentEvents::OpencodeJson, &[bash("running"), bash("completed")]), ["ls -la"]);
    }

    #[test]
    fn aiders_run_entries_of_its_input_history_are_its_commands() {
        let history = "\n# 2026-12-02 16:23:24.337263\n+Add a greeting file\n+\n+with two lines\n\
                       \n# 2026-12-02 16:23:30.000001\n+/run ls -la && cat hello.txt\n\
                       \n# 2026-12-02 16:23:31.000001\n+/add README.md\n";
        let mut reader = EventReader::new(AgentEvents::AiderInputHistory);
        assert_eq!(reader.file_commands(history), ["ls -la && cat hello.txt"]);
        assert!(reader.commands("+/run rm -rf /").is_empty(), "stdout is not aider's history");
    }

    #[test]
    fn terminal_text_and_foreign_lines_are_not_commands() {
        let mut reader = EventReader::new(AgentEvents::ClaudeStreamJson);
        assert!(reader.commands("$ rm -rf /").is_empty());
        assert!(reader.commands("{not json").is_empty());
        assert!(reader.commands(r#"{"type": "assistant", "message": {}}"#).is_empty());
    }
}
