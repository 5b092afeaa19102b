//! The AWS credentials Paddock signs with (Bedrock calls, and S3 when no
//! static keys are configured): keys in the `aws` settings when an
//! operator put them there (a last resort), else the
//! standard chain: a web identity role set on the provider, the
//! environment's keys, web identity from the environment (an OIDC token
//! file exchanged at STS for a role's temporary keys: EKS IRSA), the
//! container credentials endpoint (ECS task roles, EKS Pod Identity), the
//! instance role (IMDSv2). Temporary keys are kept until five minutes
//! before they expire. No secret is ever logged: errors name the source
//! and its answer's status, never a key.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use common::config::AwsCredentialsConfig;
use secrecy::{ExposeSecret, SecretString};

/// Signing keys, with their expiry when temporary.
#[derive(Clone)]
pub struct Keys {
    access_key_id: String,
    secret_access_key: SecretString,
    session_token: Option<SecretString>,
    expires: Option<SystemTime>,
    /// Where they came from, for logs and errors.
    source: &'static str,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("access_key_id", &self.access_key_id).field("source", &self.source).finish()
    }
}

impl Keys {
    /// Keys given outright (tests and known-answer checks).
    pub fn fixed(access_key_id: &str, secret: &str, session_token: Option<String>) -> Self {
        Self {
            access_key_id: access_key_id.to_owned(),
            secret_access_key: secret.to_owned().into(),
            session_token: session_token.map(SecretString::from),
            expires: None,
            source: "test",
        }
    }

    /// As the AWS SDKs' credentials (their signer takes these as an
    /// identity).
    pub fn credentials(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            &self.access_key_id,
            self.secret_access_key.expose_secret(),
            self.session_token.as_ref().map(|t| t.expose_secret().to_owned()),
            self.expires,
            "paddock",
        )
    }

    /// Still good for at least five minutes.
    fn fresh(&self) -> bool {
        self.expires.is_none_or(|at| at > SystemTime::now() + Duration::from_secs(300))
    }
}

/// Temporary keys (or the last sign-in's failure, until when it stands) by
/// the settings they came from, shared by every run in the process.
type Cache = tokio::sync::Mutex<HashMap<String, Result<Keys, (String, Instant)>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Keys from `aws` or the chain; `region` names the regional STS endpoint.
pub async fn keys(aws: &AwsCredentialsConfig, region: &str, http: &reqwest::Client) -> Result<Keys, String> {
    if let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) {
        return Ok(Keys {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
            session_token: None,
            expires: None,
            source: "the provider's aws settings",
        });
    }
    // A role set on the provider comes before anything the environment has.
    let configured_role = aws.role_arn.clone().zip(aws.web_identity_token_file.clone());
    if configured_role.is_none()
        && let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Keys {
            access_key_id: id,
            secret_access_key: secret.into(),
            session_token: env("AWS_SESSION_TOKEN").map(SecretString::from),
            expires: None,
            source: "the environment",
        });
    }
    let role = configured_role.or_else(|| env("AWS_ROLE_ARN").zip(env("AWS_WEB_IDENTITY_TOKEN_FILE").map(Into::into)));
    let source = match role {
        Some((role, file)) => {
            let sts = aws
                .sts_endpoint
                .clone()
                .or_else(|| env("AWS_ENDPOINT_URL_STS"))
                .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
            Source::WebIdentity { role, file, sts }
        }
        _ => match (env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"), env("AWS_CONTAINER_CREDENTIALS_FULL_URI")) {
            (Some(relative), _) => Source::Container { url: format!("http://169.254.170.2{relative}") },
            (None, Some(url)) => Source::Container { url },
            (None, None) => {
                if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
                    return Err("no AWS credentials: set aws keys or a role (web identity, container or instance), and AWS_EC2_METADATA_DISABLED is true".to_owned());
                }
                let endpoint = aws
                    .imds_endpoint
                    .clone()
                    .or_else(|| env("AWS_EC2_METADATA_SERVICE_ENDPOINT"))
                    .unwrap_or_else(|| "http://169.254.169.254".to_owned());
                Source::Instance { endpoint: endpoint.trim_end_matches('/').to_owned() }
            }
        },
    };
    let key = format!("{source:?}");
    // One sign-in at a time per process: callers queue for fresh keys. A
    // failed sign-in is remembered for a few seconds, so calls fail fast
    // instead of each waiting out an unreachable endpoint.
    let mut cache = cache().lock().await;
    match cache.get(&key) {
        Some(Ok(keys)) if keys.fresh() => return Ok(keys.clone()),
        Some(Err((message, until))) if Instant::now() < *until => return Err(message.clone()),
        _ => {}
    }
    match source.fetch(http).await {
        Ok(mut keys) => {
            // Keys that name no expiry are asked for again after a while.
            keys.expires = keys.expires.or_else(|| Some(SystemTime::now() + Duration::from_secs(900)));
            tracing::info!(source = keys.source, expires = ?keys.expires, "AWS credentials obtained");
            cache.insert(key, Ok(keys.clone()));
            Ok(keys)
        }
        Err(message) => {
            cache.insert(key, Err((message.clone(), Instant::now() + Duration::from_secs(5))));
            Err(message)
        }
    }
}

#[derive(Debug)]
enum Source {
    WebIdentity { role: String, file: std::path::PathBuf, sts: String },
    Container { url: String },
    Instance { endpoint: String },
}

impl Source {
    async fn fetch(&self, http: &reqwest::Client) -> Result<Keys, String> {
        match self {
            Source::WebIdentity { role, file, sts } => {
                let token = tokio::fs::read_to_string(file)
                    .await
                    .map_err(|e| format!("reading the web identity token file {} failed: {e}", file.display()))?;
                let session = env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "paddock-gateway".to_owned());
                let form = [
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role.as_str()),
                    ("RoleSessionName", session.as_str()),
                    ("WebIdentityToken", token.trim()),
                    ("DurationSeconds", "3600"),
                ];
                let answer = http
                    .post(sts.as_str())
                    .timeout(Duration::from_secs(10))
                    .form(&form)
                    .send()
                    .await
                    .map_err(|e| format!("STS at {sts} failed: {}", crate::outbound::describe(&e)))?;
                let status = answer.status();
                let text = answer.text().await.unwrap_or_default();
                if !status.is_success() {
                    let code = xml_value(&text, "Code").unwrap_or_default();
                    let message = xml_value(&text, "Message").unwrap_or_default();
                    return Err(format!(
                        "STS refused AssumeRoleWithWebIdentity for {role} ({status} {code}): {message}"
                    ));
                }
                let field = |name: &str| {
                    xml_value(&text, name).ok_or_else(|| format!("STS answered without {name} for {role}"))
                };
                Ok(Keys {
                    access_key_id: field("AccessKeyId")?,
                    secret_access_key: field("SecretAccessKey")?.into(),
                    session_token: Some(field("SessionToken")?.into()),
                    expires: Some(parse_time(&field("Expiration")?)?),
                    source: "web identity",
                })
            }
            Source::Container { url } => {
                let mut request = http.get(url.as_str()).timeout(Duration::from_secs(5));
                let token = match env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
                    Some(file) => tokio::fs::read_to_string(&file).await.ok().map(|t| t.trim().to_owned()),
                    None => env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
                };
                if let Some(token) = token {
                    request = request.header("authorization", token);
                }
                let answer = request.send().await.map_err(|e| {
                    format!("the container credentials endpoint failed: {}", crate::outbound::describe(&e))
                })?;
                json_keys(answer, "the container credentials endpoint", "container role").await
            }
            Source::Instance { endpoint } => {
                let unreachable = |e: reqwest::Error| {
                    format!(
                        "no AWS credentials: no aws keys, no role in the environment, and the instance metadata service at {endpoint} failed: {}",
                        crate::outbound::describe(&e)
                    )
                };
                let token = http
                    .put(format!("{endpoint}/latest/api/token"))
                    .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .map_err(unreachable)?;
                if !token.status().is_success() {
                    return Err(format!("the instance metadata service refused a session token ({})", token.status()));
                }
                let token = token.text().await.map_err(unreachable)?;
                let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
                let get = |url: String| {
                    http.get(url)
                        .header("x-aws-ec2-metadata-token", token.as_str())
                        .timeout(Duration::from_secs(2))
                        .send()
                };
                let roles = get(base.clone()).await.map_err(unreachable)?;
                if !roles.status().is_success() {
                    return Err(format!(
                        "this instance has no IAM role ({} from the metadata service)",
                        roles.status()
                    ));
                }
                let roles = roles.text().await.map_err(unreachable)?;
                let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
                    return Err("this instance has no IAM role".to_owned());
                };
                let answer = get(format!("{base}{role}")).await.map_err(unreachable)?;
                json_keys(answer, "the instance metadata service", "instance role").await
            }
        }
    }
}

/// Keys in the JSON shape the container endpoint and IMDS share.
async fn json_keys(answer: reqwest::Response, from: &str, source: &'static str) -> Result<Keys, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
        expiration: Option<String>,
    }
    let status = answer.status();
    if !status.is_success() {
        return Err(format!("{from} refused credentials ({status})"));
    }
    let answer: Answer = answer.json().await.map_err(|e| format!("{from} answered unexpectedly: {e}"))?;
    Ok(Keys {
        access_key_id: answer.access_key_id,
        secret_access_key: answer.secret_access_key.into(),
        session_token: answer.token.map(SecretString::from),
        expires: answer.expiration.as_deref().map(parse_time).transpose()?,
        source,
    })
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    let at = time::OffsetDateTime::parse(text.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("an AWS credential expiry {text:?} is not RFC 3339: {e}"))?;
    Ok(SystemTime::from(at))
}

/// The text of the first `<name>` element, unescaped (STS answers XML).
fn xml_value(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let text = &xml[start..end];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_answers_are_read_and_keys_never_print_their_secret() {
        let xml = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
            <AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>s&amp;cret</SecretAccessKey>\
            <SessionToken>tok</SessionToken><Expiration>2026-12-04T22:00:00Z</Expiration>\
            </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_value(xml, "SecretAccessKey").as_deref(), Some("s&cret"));
        assert_eq!(xml_value(xml, "Missing"), None);
        let at = parse_time(&xml_value(xml, "Expiration").unwrap()).unwrap();
        assert_eq!(at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(), 1_796_421_600);
        assert!(parse_time("yesterday").is_err());
        let keys = Keys::fixed("ASIAX", "very-secret", Some("session-secret".into()));
        let shown = format!("{keys:?}");
        assert!(shown.contains("ASIAX") && !shown.contains("very-secret") && !shown.contains("session-secret"));
        assert!(keys.fresh());
        let expiring = Keys { expires: Some(SystemTime::now() + Duration::from_secs(60)), ..keys };
        assert!(!expiring.fresh(), "keys within five minutes of expiry are renewed");
    }
}
