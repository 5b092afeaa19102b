//! Models on AWS Bedrock. Anthropic Messages go to Claude through
//! `InvokeModel` / `InvokeModelWithResponseStream` (the model in the path,
//! `anthropic_version` and the allowed betas in the body); Chat Completions
//! go to any Converse-capable model through `Converse` / `ConverseStream`.
//! Requests are signed with SigV4 by the AWS SDK's signer (`aws-sigv4`),
//! with credentials from the provider's `aws` settings or the standard
//! chain ([`platform::aws_credentials`]). Bedrock streams answers in its binary event
//! stream; [`answer::Translator`] turns them back into the SSE stream the
//! client's wire speaks as they arrive, before redaction, so redaction,
//! usage, budgets and cost work as for every other provider.

mod answer;
mod converse;

use std::time::SystemTime;

use common::config::ProviderConfig;
use serde_json::Value;

pub(super) use answer::{Plan, Translator};
pub(super) use platform::aws_credentials::Keys;

use crate::server::Wire;

/// Claude's Messages dialect on Bedrock.
const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
/// SigV4's name for the Bedrock runtime.
const SERVICE: &str = "bedrock";

/// Why a call cannot go to Bedrock: the caller asked for something the
/// mapping does not carry (answered 400), or the gateway could not sign
/// (answered 502).
#[derive(Debug)]
pub(super) enum Refusal {
    Unmapped(String),
    SignIn(String),
}

/// One call to the Bedrock runtime: where it goes, what it carries and how
/// its answer comes back.
pub(super) struct Call {
    pub url: String,
    pub body: String,
    /// `accept` and, for streams, `x-amzn-bedrock-accept`.
    headers: Vec<(&'static str, &'static str)>,
    pub answer: answer::Plan,
}

impl Call {
    /// The Bedrock request for a call on `wire` to `suffix` (the gateway's
    /// provider path) of `model`, whose body is already redacted; `betas`
    /// are the `anthropic-beta` flags the provider allows.
    pub(super) fn new(
        provider: &ProviderConfig,
        wire: Wire,
        suffix: &str,
        model: &str,
        body: &str,
        betas: &[String],
    ) -> Result<Self, Refusal> {
        let upstream_model = provider.deployments.get(model).map_or(model, String::as_str);
        let mut json: Value =
            serde_json::from_str(body).map_err(|e| Refusal::Unmapped(format!("the request body is not JSON: {e}")))?;
        let stream = json.get("stream") == Some(&Value::Bool(true));
        let model_path = format!("{}/model/{}", endpoint(provider), path_segment(upstream_model));
        let json_only = vec![("accept", "application/json")];
        let stream_headers =
            vec![("accept", "application/vnd.amazon.eventstream"), ("x-amzn-bedrock-accept", "application/json")];
        match (wire, suffix) {
            (Wire::Anthropic, "messages" | "messages/count_tokens") => {
                if !is_claude(upstream_model) {
                    return Err(Refusal::Unmapped(format!(
                        "{model} on Bedrock ({upstream_model}) is not a Claude model: Anthropic Messages reach only Claude; use Chat Completions for it"
                    )));
                }
                let Some(fields) = json.as_object_mut() else {
                    return Err(Refusal::Unmapped("the request body is not a JSON object".to_owned()));
                };
                fields.remove("model");
                fields.remove("stream");
                fields.entry("anthropic_version").or_insert_with(|| BEDROCK_ANTHROPIC_VERSION.into());
                fields.remove("anthropic_beta");
                if !betas.is_empty() {
                    fields.insert("anthropic_beta".to_owned(), betas.into());
                }
                if suffix == "messages/count_tokens" {
                    // CountTokens takes the InvokeModel body it would count,
                    // which needs an output cap though nothing is generated.
                    fields.entry("max_tokens").or_insert_with(|| 1.into());
                    let invoke = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, json.to_string());
                    let body = serde_json::json!({"input": {"invokeModel": {"body": invoke}}}).to_string();
                    // CountTokens takes the foundation model, not an
                    // inference profile.
                    let foundation = foundation_model(upstream_model);
                    return Ok(Self {
                        url: format!("{}/model/{}/count-tokens", endpoint(provider), path_segment(foundation)),
                        body,
                        headers: json_only,
                        answer: answer::Plan::CountTokens,
                    });
                }
                let (operation, headers, plan) = if stream {
                    ("invoke-with-response-stream", stream_headers, answer::Plan::MessagesStream)
                } else {
                    ("invoke", json_only, answer::Plan::Messages)
                };
                Ok(Self { url: format!("{model_path}/{operation}"), body: json.to_string(), headers, answer: plan })
            }
            (Wire::OpenAi, "chat/completions") => {
                let include_usage = json.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
                let body = converse::request(&json, upstream_model).map_err(Refusal::Unmapped)?;
                let chat =
                    answer::Chat { model: model.to_owned(), include_usage, created: common::audit::now_ms() / 1000 };
                let (operation, headers, plan) = if stream {
                    ("converse-stream", stream_headers, answer::Plan::ChatStream(chat))
                } else {
                    ("converse", json_only, answer::Plan::Chat(chat))
                };
                Ok(Self { url: format!("{model_path}/{operation}"), body: body.to_string(), headers, answer: plan })
            }
            (Wire::OpenAi, _) => Err(Refusal::Unmapped(format!(
                "/v1/{suffix} is not offered for Bedrock models: use /v1/chat/completions (mapped to Bedrock's Converse API)"
            ))),
            _ => Err(Refusal::Unmapped(format!("/{suffix} has no Bedrock mapping"))),
        }
    }

    /// The request, signed for the provider's region with `keys`.
    pub(super) fn signed(
        self,
        http: &reqwest::Client,
        provider: &ProviderConfig,
        keys: &Keys,
    ) -> Result<(reqwest::RequestBuilder, answer::Plan), Refusal> {
        let region = provider.region.as_deref().unwrap_or_default();
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(self.headers.iter().copied());
        let signature = sign(&self.url, &headers, self.body.as_bytes(), region, keys, SystemTime::now())
            .map_err(Refusal::SignIn)?;
        let mut request = http.post(&self.url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        for (name, value) in signature {
            request = request.header(name, value);
        }
        Ok((request.body(self.body), self.answer))
    }
}

/// The SigV4 headers (`x-amz-date`, `authorization` and, with temporary
/// credentials, `x-amz-security-token`) for a POST of `body` to `url`
/// (already percent-encoded) with `headers`.
pub(super) fn sign(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    region: &str,
    keys: &Keys,
    at: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity: aws_smithy_runtime_api::client::identity::Identity = keys.credentials().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| format!("SigV4 signing parameters: {e}"))?
        .into();
    let request = SignableRequest::new("POST", url, headers.iter().copied(), SignableBody::Bytes(body))
        .map_err(|e| format!("the Bedrock request cannot be signed: {e}"))?;
    let (instructions, _) = sign(request, &params).map_err(|e| format!("SigV4 signing failed: {e}"))?.into_parts();
    Ok(instructions.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect())
}

/// The runtime's base URL: the configured VPC endpoint, or the region's.
fn endpoint(provider: &ProviderConfig) -> String {
    match provider.base_url.trim_end_matches('/') {
        "" => format!("https://bedrock-runtime.{}.amazonaws.com", provider.region.as_deref().unwrap_or_default()),
        base => base.to_owned(),
    }
}

/// A model id, inference profile id or ARN as one path segment, encoded
/// as the AWS SDKs encode it (`:` and `/` included).
fn path_segment(id: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
    percent_encoding::utf8_percent_encode(id, KEEP).to_string()
}

/// Whether a Bedrock model id, inference profile (`us.`, `eu.`, `apac.`,
/// `global.` prefixes) or ARN names a Claude model.
fn is_claude(id: &str) -> bool {
    id.contains("anthropic.")
}

/// The foundation model of a cross-region inference profile
/// (`us.anthropic.claude-…` → `anthropic.claude-…`); other ids as they are.
fn foundation_model(id: &str) -> &str {
    match id.split_once('.') {
        Some((geo, rest)) if ["us", "eu", "apac", "global", "jp", "au", "ca", "us-gov"].contains(&geo) => rest,
        _ => id,
    }
}

/// The provider's signing credentials (see [`platform::aws_credentials`]).
pub(super) async fn keys(provider: &ProviderConfig, http: &reqwest::Client) -> Result<Keys, Refusal> {
    let region = provider.region.as_deref().unwrap_or_default();
    platform::aws_credentials::keys(&provider.aws, region, http).await.map_err(Refusal::SignIn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bedrock() -> ProviderConfig {
        serde_json::from_value(serde_json::json!({
            "kind": "bedrock", "region": "us-east-1", "models": ["claude-sonnet-4", "nova-pro"],
            "deployments": {"claude-sonnet-4": "us.anthropic.claude-sonnet-4-20250514-v1:0", "nova-pro": "amazon.nova-pro-v1:0"},
            "aws": {"access_key_id": "AKIDEXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
        }))
        .unwrap()
    }

    #[test]
    fn messages_go_to_invoke_with_the_model_in_the_path_and_the_version_and_betas_in_the_body() {
        let body = r#"{"model":"claude-sonnet-4","max_tokens":10,"stream":true,"messages":[],"anthropic_beta":["x"]}"#;
        let call = Call::new(&bedrock(), Wire::Anthropic, "messages", "claude-sonnet-4", body, &["b1".into()]).unwrap();
        assert_eq!(
            call.url,
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke-with-response-stream"
        );
        let sent: Value = serde_json::from_str(&call.body).unwrap();
        assert!(sent.get("model").is_none() && sent.get("stream").is_none(), "{sent}");
        assert_eq!(sent["anthropic_version"], "bedrock-2023-05-31");
        assert_eq!(sent["anthropic_beta"], serde_json::json!(["b1"]), "only the allowed betas");
        assert!(matches!(call.answer, answer::Plan::MessagesStream));

        let whole = r#"{"model":"claude-sonnet-4","max_tokens":10,"messages":[]}"#;
        let call = Call::new(&bedrock(), Wire::Anthropic, "messages", "claude-sonnet-4", whole, &[]).unwrap();
        assert!(call.url.ends_with("%3A0/invoke"), "{}", call.url);
        assert!(!call.body.contains("anthropic_beta"), "{}", call.body);
        let refused = Call::new(&bedrock(), Wire::Anthropic, "messages", "nova-pro", whole, &[]);
        assert!(matches!(refused, Err(Refusal::Unmapped(m)) if m.contains("not a Claude model")));
    }

    #[test]
    fn a_vpc_endpoint_replaces_the_regional_host() {
        let mut provider = bedrock();
        provider.base_url = "https://vpce-0abc.bedrock-runtime.us-east-1.vpce.amazonaws.com/".to_owned();
        let body = r#"{"model":"nova-pro","messages":[{"role":"user","content":"hi"}]}"#;
        let call = Call::new(&provider, Wire::OpenAi, "chat/completions", "nova-pro", body, &[]).unwrap();
        assert_eq!(
            call.url,
            "https://vpce-0abc.bedrock-runtime.us-east-1.vpce.amazonaws.com/model/amazon.nova-pro-v1%3A0/converse"
        );
        let refused = Call::new(&provider, Wire::OpenAi, "responses", "nova-pro", body, &[]);
        assert!(matches!(refused, Err(Refusal::Unmapped(m)) if m.contains("/v1/chat/completions")));
    }

    #[test]
    fn the_signature_matches_botocores_for_the_same_request() {
        // Computed with botocore 1.43's SigV4Auth (an implementation of its
        // own) for this request at 2027-01-15T08:00:00Z.
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let url =
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke";
        let body = br#"{"max_tokens":8}"#;
        let secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
        let headers = [("content-type", "application/json")];
        for (token, signature) in [
            (None, "d22e7d527c4efc040c4d59a1f7b6ef0a06e213b997f74e76993d4fbd881d7e0c"),
            (Some("session-token".to_owned()), "be47c1db8c1cfd42c25af7761bcedf337c273a3eeb710d4695e0624081c1144d"),
        ] {
            let keys = Keys::fixed("AKIDEXAMPLE", secret, token);
            let signed = sign(url, &headers, body, "us-east-1", &keys, at).unwrap();
            let auth = &signed.iter().find(|(n, _)| n == "authorization").unwrap().1;
            assert!(auth.ends_with(&format!("Signature={signature}")), "{auth}");
            assert!(signed.iter().any(|(n, v)| n == "x-amz-date" && v == "20270115T080000Z"));
        }
    }

    #[test]
    fn count_tokens_names_the_foundation_model_of_an_inference_profile() {
        let body = r#"{"model":"claude-sonnet-4","messages":[]}"#;
        let call =
            Call::new(&bedrock(), Wire::Anthropic, "messages/count_tokens", "claude-sonnet-4", body, &[]).unwrap();
        assert!(call.url.ends_with("/model/anthropic.claude-sonnet-4-20250514-v1%3A0/count-tokens"), "{}", call.url);
        assert_eq!(foundation_model("anthropic.claude-x"), "anthropic.claude-x");
        assert_eq!(foundation_model("global.anthropic.claude-x"), "anthropic.claude-x");
    }

    #[test]
    fn the_signature_is_sigv4_for_bedrock_in_the_region() {
        let keys = Keys::fixed("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None);
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let url = "https://bedrock-runtime.us-east-1.amazonaws.com/model/a%3A0/invoke";
        let headers = sign(url, &[("content-type", "application/json")], b"{}", "us-east-1", &keys, at).unwrap();
        let auth = &headers.iter().find(|(n, _)| n == "authorization").unwrap().1;
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20270115/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature="
            ),
            "{auth}"
        );
        assert!(!auth.contains("wJalr"), "the secret is not in the header");
        assert!(headers.iter().all(|(n, _)| n != "x-amz-security-token"));
        let temporary = Keys::fixed("ASIAEXAMPLE", "secret", Some("session".into()));
        let headers = sign(url, &[], b"{}", "us-east-1", &temporary, at).unwrap();
        assert!(headers.iter().any(|(n, v)| n == "x-amz-security-token" && v == "session"), "{headers:?}");
        // Another body is another signature.
        let other = sign(url, &[("content-type", "application/json")], b"{ }", "us-east-1", &keys, at).unwrap();
        assert_ne!(other.iter().find(|(n, _)| n == "authorization").unwrap().1, *auth);
    }
}
