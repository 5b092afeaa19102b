//! GitHub as Paddock's forge, through octocrab: the App signs a JWT with its
//! private key; for each purpose of a run the worker mints an installation
//! token limited to the one repository and to the permissions that purpose
//! needs, records its fingerprint, permissions and expiry, and revokes it
//! when the run ends. Tokens live only in this process: git receives them in
//! an `http.extraHeader` passed through the environment, never in a URL, a
//! file or the sandbox.

use common::audit::now_ms;
use std::collections::BTreeMap;
use std::sync::Mutex;

use base64::Engine;
use common::config::GitHubConfig;
use common::{CredentialGrant, RepoName};
use octocrab::Octocrab;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use platform::outbound::Outbound;

/// What a run's git work and pull request need, and nothing else: never
/// `workflows` or `administration`.
pub const RUN_PERMISSIONS: &[(&str, &str)] =
    &[("contents", "write"), ("pull_requests", "write"), ("issues", "read"), ("metadata", "read")];

/// The run's token for the repository when it publishes to a fork: it
/// clones and opens the pull request, and cannot push at all.
pub const FORK_MODE_RUN_PERMISSIONS: &[(&str, &str)] =
    &[("contents", "read"), ("pull_requests", "write"), ("issues", "read"), ("metadata", "read")];

/// What pushing the run's branch to the fork needs (a token for the fork
/// alone, minted when the run publishes).
pub const FORK_PUSH_PERMISSIONS: &[(&str, &str)] = &[("contents", "write"), ("metadata", "read")];

/// What commenting on an issue needs (a separate, short-lived token).
pub const COMMENT_PERMISSIONS: &[(&str, &str)] = &[("issues", "write"), ("metadata", "read")];

/// What checking a requester's permission needs.
pub const READ_PERMISSIONS: &[(&str, &str)] = &[("metadata", "read")];

/// What reading a pull request's conversation for a follow-up needs.
pub const CONVERSATION_PERMISSIONS: &[(&str, &str)] =
    &[("pull_requests", "read"), ("issues", "read"), ("metadata", "read")];

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// GitHub answered, and retrying will not change its answer (404, 401,
    /// 403, 422).
    #[error("GitHub refused: {0}")]
    Refused(String),
    /// GitHub or the network failed: worth a retry.
    #[error("GitHub is unavailable: {0}")]
    Unavailable(String),
    #[error("GitHub App configuration: {0}")]
    Config(String),
}

impl From<octocrab::Error> for ForgeError {
    fn from(error: octocrab::Error) -> Self {
        match &error {
            octocrab::Error::GitHub { source, .. } => {
                let status = source.status_code.as_u16();
                let message = format!("{status} {}", source.message);
                if status >= 500 || status == 429 {
                    ForgeError::Unavailable(message)
                } else {
                    ForgeError::Refused(message)
                }
            }
            // A transport failure: say which, a certificate this process
            // does not trust above all.
            _ => ForgeError::Unavailable(platform::outbound::describe_failure(&error, "GitHub")),
        }
    }
}

/// The fingerprint of the SSH private key at `path`, checked to be one
/// `ssh-keygen` can sign with (a private key, not readable by others).
fn ssh_key_fingerprint(path: &std::path::Path) -> Result<common::CommitSignature, ForgeError> {
    let refuse = |why: String| ForgeError::Config(format!("github.commit_signing_key_file {}: {why}", path.display()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "is readable by others (mode {:o}); ssh-keygen will not sign with it: chmod 600",
            mode & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| refuse(e.to_string()))?;
    if !text.contains("PRIVATE KEY-----") {
        return Err(refuse("is not an SSH private key".to_owned()));
    }
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path)
        .output()
        .map_err(|e| refuse(format!("cannot run ssh-keygen (openssh-client): {e}")))?;
    let printed = String::from_utf8_lossy(&out.stdout);
    match printed.split_whitespace().nth(1) {
        Some(fingerprint) if out.status.success() => Ok(common::CommitSignature {
            format: "ssh".to_owned(),
            fingerprint: fingerprint.to_owned(),
            github_verification: None,
        }),
        _ => Err(refuse(format!("ssh-keygen cannot read it: {}", String::from_utf8_lossy(&out.stderr).trim()))),
    }
}

/// The App, authenticated with its JWT.
pub struct GitHubApp {
    app: Octocrab,
    pub config: GitHubConfig,
    /// Paddock's HTTP client (trust and proxy of `[tls]`, `[outbound]`),
    /// which every installation token's client shares.
    http: reqwest::Client,
    /// How git reaches GitHub the same way (it keeps git's trust bundle).
    outbound: Outbound,
    /// The key Paddock's commits are signed with, and its fingerprint.
    signing: Option<(std::path::PathBuf, common::CommitSignature)>,
}

impl GitHubApp {
    /// `None` when no App is configured.
    pub fn from_config(config: &GitHubConfig, outbound: &Outbound) -> Result<Option<Self>, ForgeError> {
        let (Some(app_id), Some(key_file)) = (config.app_id, &config.private_key_file) else { return Ok(None) };
        let pem = std::fs::read(key_file)
            .map_err(|e| ForgeError::Config(format!("github.private_key_file {}: {e}", key_file.display())))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem)
            .map_err(|e| ForgeError::Config(format!("github.private_key_file is not an RSA private key: {e}")))?;
        let http = outbound
            .http()
            .read_timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| ForgeError::Config(format!("the HTTP client for GitHub: {e}")))?;
        let app = Octocrab::builder()
            .base_uri(config.api_url.as_str())
            .map_err(|e| ForgeError::Config(format!("github.api_url: {e}")))?
            .app(app_id.into(), key)
            .build_with_reqwest(http.clone())
            .map_err(|e| ForgeError::Config(e.to_string()))?;
        let signing = match &config.commit_signing_key_file {
            Some(path) => Some((path.clone(), ssh_key_fingerprint(path)?)),
            None => None,
        };
        Ok(Some(Self { app, config: config.clone(), http, outbound: outbound.clone(), signing }))
    }

    /// The key commits are signed with (its file) and what the record says
    /// of it, when commits are signed.
    pub fn signing(&self) -> Option<(&std::path::Path, &common::CommitSignature)> {
        self.signing.as_ref().map(|(path, signature)| (path.as_path(), signature))
    }

    /// A token for `repo` alone with `permissions`, for `purpose`.
    pub async fn credential(
        &self,
        repo: &RepoName,
        purpose: &str,
        permissions: &[(&str, &str)],
    ) -> Result<RepoCredential, ForgeError> {
        let installation: Value =
            self.app.get(format!("/repos/{}/{}/installation", repo.owner(), repo.name()), None::<&()>).await?;
        let Some(installation_id) = installation["id"].as_u64() else {
            return Err(ForgeError::Refused("the installation has no id".to_owned()));
        };
        let asked: serde_json::Map<String, Value> =
            permissions.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let body = json!({"repositories": [repo.name()], "permissions": asked});
        let minted: Value =
            self.app.post(format!("/app/installations/{installation_id}/access_tokens"), Some(&body)).await?;
        let Some(token) = minted["token"].as_str().map(str::to_owned) else {
            return Err(ForgeError::Refused("the token answer has no token".to_owned()));
        };
        let granted: BTreeMap<String, String> = minted["permissions"]
            .as_object()
            .map(|p| p.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
            .unwrap_or_default();
        let repositories: Vec<String> = minted["repositories"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["full_name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        // Trust the answer, not the request: refuse a token broader than asked.
        let broader =
            granted.iter().any(|(k, v)| !permissions.iter().any(|(a, l)| a == k && (*l == v || *v == "read")))
                || repositories.iter().any(|r| r != &repo.to_string());
        let grant = CredentialGrant {
            kind: "github_installation_token".to_owned(),
            purpose: purpose.to_owned(),
            installation_id,
            repositories,
            permissions: granted,
            expires_at: minted["expires_at"].as_str().map(str::to_owned),
            fingerprint: fingerprint(&token),
            minted_at_ms: now_ms(),
            revoked_at_ms: None,
        };
        let credential = RepoCredential::new(self, SecretString::from(token), grant)?;
        if broader {
            credential.revoke().await;
            return Err(ForgeError::Refused("GitHub granted a token broader than asked; it was revoked".to_owned()));
        }
        Ok(credential)
    }
}

/// SHA-256 of a token, base64: GitHub's `hashed_token` format, so a grant
/// can be matched with GitHub's own audit log.
pub fn fingerprint(token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(token.as_bytes()))
}

/// One installation token and a client that uses it.
pub struct RepoCredential {
    token: SecretString,
    client: Octocrab,
    grant: Mutex<CredentialGrant>,
    outbound: Outbound,
    http: reqwest::Client,
    /// GitHub's GraphQL endpoint beside `github.api_url`.
    graphql_url: String,
}

impl RepoCredential {
    fn new(app: &GitHubApp, token: SecretString, grant: CredentialGrant) -> Result<Self, ForgeError> {
        let client = Octocrab::builder()
            .base_uri(app.config.api_url.as_str())
            .map_err(|e| ForgeError::Config(format!("github.api_url: {e}")))?
            .personal_token(token.expose_secret().to_owned())
            .build_with_reqwest(app.http.clone())
            .map_err(|e| ForgeError::Config(e.to_string()))?;
        Ok(Self {
            token,
            client,
            grant: Mutex::new(grant),
            outbound: app.outbound.clone(),
            http: app.http.clone(),
            graphql_url: graphql_url(&app.config.api_url),
        })
    }

    pub fn grant(&self) -> CredentialGrant {
        self.grant.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The token, for redaction.
    pub fn secret(&self) -> &str {
        self.token.expose_secret()
    }

    /// Environment that makes git send the token as HTTP Basic auth
    /// (`x-access-token:<token>`), without it appearing in a URL or argv,
    /// and reach GitHub with Paddock's trust and proxy.
    pub fn git_env(&self) -> Vec<(String, String)> {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{}", self.token.expose_secret()));
        let mut env = vec![
            ("GIT_CONFIG_COUNT".to_owned(), "1".to_owned()),
            ("GIT_CONFIG_KEY_0".to_owned(), "http.extraHeader".to_owned()),
            ("GIT_CONFIG_VALUE_0".to_owned(), format!("Authorization: Basic {basic}")),
        ];
        env.extend(self.outbound.git_env());
        env
    }

    /// Revokes the token (`DELETE /installation/token`, authenticated with
    /// it); records when. Idempotent; a failure is logged (the token still
    /// expires within the hour).
    pub async fn revoke(&self) {
        if self.grant().revoked_at_ms.is_some() {
            return;
        }
        let result = self.client._delete("/installation/token", None::<&()>).await;
        let fingerprint = self.grant().fingerprint;
        match result {
            Ok(response) if response.status().is_success() || response.status().as_u16() == 401 => {
                self.grant.lock().unwrap_or_else(std::sync::PoisonError::into_inner).revoked_at_ms = Some(now_ms());
                tracing::info!(%fingerprint, "installation token revoked");
            }
            Ok(response) => tracing::warn!(%fingerprint, status = %response.status(), "revoking a token failed"),
            Err(error) => tracing::warn!(%fingerprint, %error, "revoking a token failed"),
        }
    }

    pub async fn get(&self, route: &str) -> Result<Value, ForgeError> {
        Ok(self.client.get(route, None::<&()>).await?)
    }

    /// `Ok(None)` on 404.
    pub async fn get_optional(&self, route: &str) -> Result<Option<Value>, ForgeError> {
        match self.client.get::<Value, _, _>(route, None::<&()>).await {
            Ok(value) => Ok(Some(value)),
            Err(octocrab::Error::GitHub { source, .. }) if source.status_code.as_u16() == 404 => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn post(&self, route: &str, body: &Value) -> Result<Value, ForgeError> {
        Ok(self.client.post(route, Some(body)).await?)
    }

    pub async fn patch(&self, route: &str, body: &Value) -> Result<Value, ForgeError> {
        Ok(self.client.patch(route, Some(body)).await?)
    }

    /// Every page of a REST list (`per_page=100`, at most `pages` pages).
    pub async fn get_all(&self, route: &str, pages: u32) -> Result<Vec<Value>, ForgeError> {
        let mut all = Vec::new();
        let join = if route.contains('?') { '&' } else { '?' };
        for page in 1..=pages {
            let answer = self.get(&format!("{route}{join}per_page=100&page={page}")).await?;
            let items = answer.as_array().cloned().unwrap_or_default();
            let last = items.len() < 100;
            all.extend(items);
            if last {
                break;
            }
        }
        Ok(all)
    }

    /// A GraphQL query (what REST does not show, such as whether a review
    /// thread is resolved). GraphQL reports errors in a 200 answer's
    /// `errors`; they are refusals here.
    pub async fn graphql(&self, query: &str, variables: &Value) -> Result<Value, ForgeError> {
        let response = self
            .http
            .post(&self.graphql_url)
            .bearer_auth(self.token.expose_secret())
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "paddock")
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .map_err(|e| ForgeError::Unavailable(platform::outbound::describe_failure(&e, "GitHub")))?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(ForgeError::Unavailable(format!("GraphQL {status}")));
        }
        if !status.is_success() || answer.get("errors").is_some_and(|e| !e.is_null()) {
            let message = answer["message"].as_str().map(str::to_owned).unwrap_or_else(|| answer["errors"].to_string());
            return Err(ForgeError::Refused(format!("GraphQL {status}: {message}")));
        }
        Ok(answer["data"].clone())
    }
}

/// `https://api.github.com/graphql`, or `https://<host>/api/graphql` beside
/// Enterprise Server's `https://<host>/api/v3`.
pub fn graphql_url(api_url: &str) -> String {
    let base = api_url.trim_end_matches('/');
    match base.strip_suffix("/api/v3") {
        Some(host) => format!("{host}/api/graphql"),
        None => format!("{base}/graphql"),
    }
}
