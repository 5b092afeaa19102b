//! Claude on Google Vertex AI: Anthropic Messages bodies posted to the
//! model's `rawPredict` / `streamRawPredict` method, with the model in the
//! path (not the body) and `anthropic_version` in the body. The gateway
//! signs in as a service account: it signs a JWT assertion with the key
//! file's private key and exchanges it at the key's `token_uri` for a
//! short-lived access token, cached until shortly before it expires.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::config::ProviderConfig;
use serde::{Deserialize, Serialize};

const VERTEX_ANTHROPIC_VERSION: &str = "vertex-2023-10-16";
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The URL and body for a call, in Vertex's dialect.
pub(super) fn request(
    provider: &ProviderConfig,
    suffix: &str,
    model: &str,
    body: &str,
) -> Result<(String, String), String> {
    let (Some(project), Some(region)) = (&provider.project, &provider.region) else {
        return Err("the Vertex provider has no project or region".to_owned());
    };
    let upstream_model = provider.deployments.get(model).map_or(model, String::as_str);
    let mut json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("the request body is not JSON: {e}"))?;
    let Some(fields) = json.as_object_mut() else { return Err("the request body is not a JSON object".to_owned()) };
    let base = provider.base_url.trim_end_matches('/');
    let models = format!("{base}/v1/projects/{project}/locations/{region}/publishers/anthropic/models");
    let url = if suffix.ends_with("count_tokens") {
        fields.insert("model".to_owned(), upstream_model.into());
        format!("{models}/count-tokens:rawPredict")
    } else {
        fields.remove("model");
        let method = if fields.get("stream") == Some(&serde_json::Value::Bool(true)) {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        format!("{models}/{upstream_model}:{method}")
    };
    fields.entry("anthropic_version").or_insert_with(|| VERTEX_ANTHROPIC_VERSION.into());
    Ok((url, json.to_string()))
}

/// The fields of a service-account key file the gateway uses.
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key_id: Option<String>,
    private_key: String,
    token_uri: String,
}

#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

/// Access tokens by key file, shared by every run in the process.
type Cache = tokio::sync::Mutex<HashMap<PathBuf, (String, Instant)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// A live access token for the provider's service account.
pub(super) async fn access_token(provider: &ProviderConfig, http: &reqwest::Client) -> Result<String, String> {
    let Some(path) = &provider.credentials_file else {
        return Err("the Vertex provider has no credentials_file".to_owned());
    };
    // One sign-in at a time per process: callers queue for the fresh token.
    let mut cache = cache().lock().await;
    if let Some((token, until)) = cache.get(path)
        && Instant::now() < *until
    {
        return Ok(token.clone());
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("reading the Vertex credentials file {} failed: {e}", path.display()))?;
    let key: ServiceAccountKey =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a service-account key: {e}", path.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let claims = Assertion { iss: &key.client_email, scope: SCOPE, aud: &key.token_uri, iat: now, exp: now + 3600 };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let signing_key = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
        .map_err(|e| format!("the Vertex service-account private key is unusable: {e}"))?;
    let assertion = jsonwebtoken::encode(&header, &claims, &signing_key)
        .map_err(|e| format!("signing the assertion failed: {e}"))?;
    let answer = http
        .post(&key.token_uri)
        .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())])
        .send()
        .await
        .map_err(|e| format!("the Google token endpoint failed: {}", platform::outbound::describe(&e)))?;
    let status = answer.status();
    if !status.is_success() {
        let body = answer.text().await.unwrap_or_default();
        return Err(format!("the Google token endpoint refused the service account ({status}): {body}"));
    }
    let token: TokenAnswer =
        answer.json().await.map_err(|e| format!("the Google token endpoint answered unexpectedly: {e}"))?;
    // Renew a minute early so no call carries a token about to expire.
    let until = Instant::now() + Duration::from_secs(token.expires_in.saturating_sub(60));
    cache.insert(path.clone(), (token.access_token.clone(), until));
    Ok(token.access_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex() -> ProviderConfig {
        serde_json::from_value(serde_json::json!({
            "kind": "vertex", "base_url": "https://us-east5-aiplatform.googleapis.com/", "models": ["claude-sonnet-4"],
            "project": "acme-ai", "region": "us-east5", "credentials_file": "/dev/null",
            "deployments": {"claude-sonnet-4": "claude-sonnet-4@20250514"}
        }))
        .unwrap()
    }

    #[test]
    fn the_model_moves_to_the_path_and_the_version_into_the_body() {
        let body = r#"{"model":"claude-sonnet-4","max_tokens":10,"stream":true,"messages":[]}"#;
        let (url, body) = request(&vertex(), "messages", "claude-sonnet-4", body).unwrap();
        assert_eq!(
            url,
            "https://us-east5-aiplatform.googleapis.com/v1/projects/acme-ai/locations/us-east5/publishers/anthropic/models/claude-sonnet-4@20250514:streamRawPredict"
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(body.get("model").is_none(), "{body}");
        assert_eq!(body["anthropic_version"], "vertex-2023-10-16");

        let (url, _) = request(&vertex(), "messages", "claude-sonnet-4", r#"{"model":"x","messages":[]}"#).unwrap();
        assert!(url.ends_with(":rawPredict"), "{url}");
        let (url, body) = request(&vertex(), "messages/count_tokens", "claude-sonnet-4", r#"{"messages":[]}"#).unwrap();
        assert!(url.ends_with("/models/count-tokens:rawPredict"), "{url}");
        assert!(body.contains("claude-sonnet-4@20250514"), "{body}");
        assert!(request(&vertex(), "messages", "m", "not json").is_err());
    }
}
