//! Paddock's REST API as the CLI calls it: a base URL, a bearer token, and
//! every refusal turned into the exit code scripts read.

use reqwest::{Method, StatusCode};
use serde_json::Value;

/// What the process exits with. Stable: scripts depend on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done, and the answer is yes (a watched run succeeded, a bundle verified).
    Ok = 0,
    /// Done, and the answer is no: the run ended without succeeding, or
    /// verification found problems.
    No = 1,
    /// The command line or the CLI's configuration is wrong.
    Usage = 2,
    /// The API refused the token (401) or its permissions (403).
    Denied = 3,
    /// What was named does not exist (404).
    NotFound = 4,
    /// The API refused the request otherwise (400, 409, 413, 422, ...).
    Refused = 5,
    /// Paddock could not be reached or could not answer now (connection,
    /// timeout, 429, 5xx): worth retrying.
    Unavailable = 6,
}

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// An answer that is not success, read as problem+json where it is one.
    fn from_answer(method: &Method, path: &str, status: StatusCode, body: &[u8]) -> Self {
        let exit = match status.as_u16() {
            401 | 403 => Exit::Denied,
            404 => Exit::NotFound,
            429 | 500..=599 => Exit::Unavailable,
            _ => Exit::Refused,
        };
        let problem: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut message = format!("{method} {path}: {status}");
        match (problem["title"].as_str(), problem["detail"].as_str()) {
            (Some(title), Some(detail)) => message.push_str(&format!(": {title}: {detail}")),
            (Some(title), None) => message.push_str(&format!(": {title}")),
            (None, Some(detail)) => message.push_str(&format!(": {detail}")),
            (None, None) if !body.is_empty() => {
                message.push_str(&format!(": {}", String::from_utf8_lossy(body).trim()))
            }
            (None, None) => {}
        }
        if let Some(field) = problem["field"].as_str() {
            message.push_str(&format!(" (field `{field}`)"));
        }
        Self { exit, message }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub type Result<T> = std::result::Result<T, Failure>;

/// One deployment's API, with the caller's token.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: String, http: reqwest::Client) -> Self {
        Self { base: base.trim_end_matches('/').to_owned(), token, http }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }

    /// Sends `request`; a non-success answer is a [`Failure`].
    pub async fn send(
        &self,
        method: &Method,
        path: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| unreachable(&self.base, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(Failure::from_answer(method, path, status, &body))
    }

    /// A JSON call: `body` sent when given, the answer's JSON returned.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let mut request = self.request(method.clone(), path);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.answer(&method, path, request).await
    }

    /// `GET path?query`, the answer's JSON returned.
    pub async fn get_with(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.answer(&Method::GET, path, self.request(Method::GET, path).query(query)).await
    }

    async fn answer(&self, method: &Method, path: &str, request: reqwest::RequestBuilder) -> Result<Value> {
        let response = self.send(method, path, request).await?;
        let bytes = response.bytes().await.map_err(|e| unreachable(&self.base, &e))?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::new(Exit::Unavailable, format!("{method} {path}: the answer is not JSON: {e}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call(Method::POST, path, body).await
    }
}

pub fn unreachable(base: &str, error: &reqwest::Error) -> Failure {
    Failure::new(Exit::Unavailable, format!("cannot reach Paddock at {base}: {}", platform::outbound::describe(error)))
}

/// `value` made safe for one path segment (`what` names it in the error).
pub fn segment(what: &str, value: &str) -> Result<String> {
    // URLs resolve `.` and `..` (even percent-encoded) rather than send them.
    if value.is_empty() || value.bytes().all(|b| b == b'.') {
        return Err(Failure::usage(format!("{what} {value:?} is not a name")));
    }
    let mut out = String::new();
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(byte as char),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_exit_code_and_says_what_the_api_said() {
        let problem = br#"{"type":"https://paddock.dev/problems/invalid-request","title":"Invalid request","status":400,"detail":"must be owner/name","field":"repository"}"#;
        let failure = Failure::from_answer(&Method::POST, "/v1/runs", StatusCode::BAD_REQUEST, problem);
        assert_eq!(failure.exit, Exit::Refused);
        assert_eq!(
            failure.message,
            "POST /v1/runs: 400 Bad Request: Invalid request: must be owner/name (field `repository`)"
        );
        let code =
            |status: u16| Failure::from_answer(&Method::GET, "/", StatusCode::from_u16(status).unwrap(), b"").exit;
        assert_eq!(
            [401, 403, 404, 409, 422, 429, 500, 503].map(code),
            [
                Exit::Denied,
                Exit::Denied,
                Exit::NotFound,
                Exit::Refused,
                Exit::Refused,
                Exit::Unavailable,
                Exit::Unavailable,
                Exit::Unavailable
            ]
        );
    }

    #[test]
    fn a_path_segment_cannot_leave_its_segment() {
        assert_eq!(segment("run", "../v1/queue?x").unwrap(), "..%2Fv1%2Fqueue%3Fx");
        assert_eq!(segment("run", "01m8fd2cj1x31jpkk0spht2y3j").unwrap(), "01m8fd2cj1x31jpkk0spht2y3j");
        assert_eq!(segment("run", "..").unwrap_err().exit, Exit::Usage);
    }
}
