//! The text people read. Scripts use `--output json`, which prints the
//! API's answers as they are.

use audit_trail::VerifyReport;
use serde_json::Value;

/// `value` as JSON when asked for, else through `text`.
pub fn value_or(value: &Value, json: bool, text: impl FnOnce(&Value)) {
    if json {
        println!("{value}");
    } else {
        text(value);
    }
}

/// A count as text (`-` when absent): JSON values ignore column widths.
fn number(value: &Value) -> String {
    value.as_i64().map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("-")
}

/// `stop_reason` in a few words: its kind and its details.
pub fn stop_reason(reason: &Value) -> String {
    let Some(kind) = reason["kind"].as_str() else { return "-".to_owned() };
    let details: Vec<String> = reason
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(key, _)| *key != "kind")
        .map(|(key, value)| match value {
            Value::String(text) => format!("{key}: {text}"),
            other => format!("{key}: {other}"),
        })
        .collect();
    if details.is_empty() { kind.to_owned() } else { format!("{kind} ({})", details.join(", ")) }
}

/// Dollars from micro-dollars, to the hundredth of a cent.
pub fn dollars(micro: u64) -> String {
    format!("${:.4}", micro as f64 / 1_000_000.0)
}

/// The usage line of a run: `$0.0123 (1200 tokens in, 340 out)`.
pub fn usage(usage: &Value) -> Option<String> {
    let (micro, tokens_in, tokens_out) =
        (usage["cost_micro_usd"].as_u64()?, usage["tokens_in"].as_u64()?, usage["tokens_out"].as_u64()?);
    Some(format!("{} ({tokens_in} tokens in, {tokens_out} out)", dollars(micro)))
}

pub fn run(run: &Value) {
    let mut rows: Vec<(&str, String)> = vec![
        ("run", str_of(run, "id").to_owned()),
        ("state", str_of(run, "state").to_owned()),
        ("repository", format!("{} @ {}", str_of(run, "repository"), str_of(run, "base_ref"))),
        ("tenant", str_of(run, "tenant").to_owned()),
        ("task", str_of(&run["task"], "title").to_owned()),
    ];
    let via = run["via"].as_str().map(|v| format!(" (via {v})")).unwrap_or_default();
    rows.push(("requested by", format!("{}{via}", str_of(run, "requested_by"))));
    if !run["stop_reason"].is_null() {
        rows.push(("stopped", stop_reason(&run["stop_reason"])));
    }
    rows.push(("attempt", format!("{}/{}", run["attempt"], run["max_attempts"])));
    rows.push(("created", str_of(run, "created_at").to_owned()));
    for (label, key) in [("started", "started_at"), ("finished", "finished_at")] {
        if let Some(at) = run[key].as_str() {
            rows.push((label, at.to_owned()));
        }
    }
    if let Some(parent) = run["parent_run"].as_str() {
        rows.push(("follows up", parent.to_owned()));
    }
    let facts = &run["facts"];
    if let Some(url) = facts["pull_request"]["url"].as_str() {
        rows.push(("pull request", url.to_owned()));
    }
    if let Some(files) = facts["files_changed"].as_array() {
        rows.push(("files changed", files.len().to_string()));
    }
    if let Some(cost) = usage(&facts["usage"]) {
        rows.push(("cost", cost));
    }
    if let Some(error) = run["last_error"].as_str() {
        rows.push(("last error", error.to_owned()));
    }
    for (label, value) in rows {
        println!("{label:<15}{value}");
    }
}

pub fn run_table(runs: &Value) {
    println!("{:<27}{:<19}{:<30}{:<12}TASK", "ID", "STATE", "REPOSITORY", "TENANT");
    for run in runs.as_array().into_iter().flatten() {
        println!(
            "{:<27}{:<19}{:<30}{:<12}{}",
            str_of(run, "id"),
            str_of(run, "state"),
            str_of(run, "repository"),
            str_of(run, "tenant"),
            str_of(&run["task"], "title")
        );
    }
}

/// The end of a followed run, on stderr (stdout holds the log).
pub fn ending(run: &Value, end: &Value) {
    let state = run["state"].as_str().or(end["state"].as_str()).unwrap_or("unknown");
    let reason = if run["stop_reason"].is_null() { &end["stop_reason"] } else { &run["stop_reason"] };
    eprintln!("paddock: run {} {state}: {}", str_of(run, "id"), stop_reason(reason));
    if let Some(url) = run["facts"]["pull_request"]["url"].as_str() {
        eprintln!("paddock: draft pull request {url}");
    }
    if let Some(cost) = usage(&run["facts"]["usage"]) {
        eprintln!("paddock: models cost {cost}");
    }
}

pub fn costs(report: &Value) {
    println!(
        "{} {} .. {} by {}",
        str_of(report, "tenant"),
        str_of(report, "since"),
        str_of(report, "until"),
        str_of(report, "group_by")
    );
    println!("{:<32}{:>6}{:>12}{:>12}{:>12}  BUDGET", "KEY", "RUNS", "TOKENS IN", "TOKENS OUT", "COST");
    let line = |key: &str, line: &Value| {
        let budget = match (line["budget_usd"].as_f64(), line["budget_tokens"].as_u64()) {
            (Some(usd), Some(tokens)) => format!("${usd:.2}, {tokens} tokens"),
            (Some(usd), None) => format!("${usd:.2}"),
            (None, Some(tokens)) => format!("{tokens} tokens"),
            (None, None) => String::new(),
        };
        println!(
            "{key:<32}{:>6}{:>12}{:>12}{:>12}  {budget}",
            number(&line["runs"]),
            number(&line["tokens_in"]),
            number(&line["tokens_out"]),
            format!("${:.4}", line["cost_usd"].as_f64().unwrap_or(0.0))
        );
    };
    for group in report["groups"].as_array().into_iter().flatten() {
        line(str_of(group, "key"), group);
    }
    line("TOTAL", &report["total"]);
}

pub fn queue(queue: &Value) {
    let counts = |c: &Value| {
        format!(
            "{:>8}{:>14}{:>9}{:>9}{:>12}",
            number(&c["queued"]),
            number(&c["dispatchable"]),
            number(&c["delayed"]),
            number(&c["running"]),
            number(&c["cancelling"])
        )
    };
    println!(
        "{:<32}{:>8}{:>14}{:>9}{:>9}{:>12}",
        "TENANT", "QUEUED", "DISPATCHABLE", "DELAYED", "RUNNING", "CANCELLING"
    );
    for tenant in queue["tenants"].as_array().into_iter().flatten() {
        println!("{:<32}{}", str_of(tenant, "tenant"), counts(tenant));
    }
    println!("{:<32}{}", "TOTAL", counts(&queue["totals"]));
    println!("dead letters: {}", number(&queue["dead_letters"]));
}

pub fn verify_report(report: &VerifyReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    let verdict = if report.ok() { "verified" } else { "NOT verified" };
    println!(
        "{verdict}: {} event(s), {} segment(s), {} digest(s), {} stream(s); {} finding(s), {} undigested segment(s)",
        report.events_checked,
        report.segments_checked,
        report.digests_checked,
        report.streams,
        report.findings.len(),
        report.undigested.len()
    );
    for finding in &report.findings {
        println!("  {}", serde_json::to_string(finding).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stop_reason_reads_as_its_kind_and_details() {
        assert_eq!(stop_reason(&json!({"kind": "completed"})), "completed");
        assert_eq!(stop_reason(&json!({"kind": "agent_failed", "exit_code": 3})), "agent_failed (exit_code: 3)");
        assert_eq!(stop_reason(&Value::Null), "-");
        assert_eq!(
            usage(&json!({"cost_micro_usd": 12345, "tokens_in": 1200, "tokens_out": 34})).unwrap(),
            "$0.0123 (1200 tokens in, 34 out)"
        );
    }
}
