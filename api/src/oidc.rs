//! OIDC bearer tokens from the company's identity provider: signature by a
//! key from the provider's JWKS (fetched, cached, refreshed when a token
//! names a key id not seen yet, at most every ten seconds), algorithm
//! pinned by configuration, `iss`, `aud`, `exp` (and `nbf`) checked with a
//! bounded clock skew.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::config::OidcConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use platform::outbound::Outbound;
use serde_json::Value;

/// Who a valid token says the caller is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `iss` and `sub`: together they name the person for good.
    pub issuer: String,
    pub subject: String,
    /// The address, only when the identity provider says it verified it.
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// `iat`, in seconds since the epoch, when the token carries it.
    pub issued_at: Option<u64>,
}

pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    keys: tokio::sync::RwLock<HashMap<String, DecodingKey>>,
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

const MIN_REFRESH: Duration = Duration::from_secs(10);

impl OidcVerifier {
    /// Fetches go through Paddock's outbound trust and proxy.
    pub fn new(config: OidcConfig, outbound: &Outbound) -> Result<Self, reqwest::Error> {
        let http = outbound.http().timeout(Duration::from_secs(5)).build()?;
        Ok(Self { config, http, keys: Default::default(), refreshed: Default::default() })
    }

    /// Checks `token` and returns the identity it carries, or why not.
    pub async fn verify(&self, token: &str) -> Result<Identity, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("the token is malformed: {e}"))?;
        let algorithm = format!("{:?}", header.alg);
        if !self.config.algorithms.contains(&algorithm) {
            return Err(format!("tokens signed with {algorithm} are not accepted"));
        }
        let kid = header.kid.ok_or("the token names no key id (kid)")?;
        // Not in the `match`: its read guard would live through the refresh.
        let cached = self.keys.read().await.get(&kid).cloned();
        let key = match cached {
            Some(key) => key,
            None => self.refresh_for(&kid).await?,
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = self.config.algorithms.iter().filter_map(|a| a.parse::<Algorithm>().ok()).collect();
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.config.leeway_seconds;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| format!("the token is not valid: {e}"))?;
        let claims = data.claims;
        let groups = match &claims[self.config.groups_claim.as_str()] {
            Value::Array(values) => values.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Value::String(one) => vec![one.clone()],
            _ => Vec::new(),
        };
        let verified = self.config.email_always_verified
            || match &claims[self.config.email_verified_claim.as_str()] {
                Value::Bool(verified) => *verified,
                // Some providers send the flag as a string.
                Value::String(flag) => flag == "true",
                _ => false,
            };
        let email = claims[self.config.email_claim.as_str()]
            .as_str()
            .filter(|e| verified && crate::people::email_ok(e))
            .map(str::to_lowercase);
        Ok(Identity {
            issuer: self.config.issuer.clone(),
            subject: claims["sub"].as_str().unwrap_or_default().to_owned(),
            email,
            groups,
            issued_at: claims["iat"].as_u64(),
        })
    }

    /// Fetches the JWKS again (not more often than every ten seconds) and
    /// returns the key `kid`.
    async fn refresh_for(&self, kid: &str) -> Result<DecodingKey, String> {
        let mut refreshed = self.refreshed.lock().await;
        let cached = self.keys.read().await.get(kid).cloned();
        if let Some(key) = cached {
            return Ok(key);
        }
        if refreshed.is_some_and(|at| at.elapsed() < MIN_REFRESH) {
            return Err(format!("no key {kid} in the identity provider's JWKS"));
        }
        *refreshed = Some(Instant::now());
        let keys = self.fetch_keys().await?;
        let found = keys.get(kid).cloned();
        *self.keys.write().await = keys;
        found.ok_or_else(|| format!("no key {kid} in the identity provider's JWKS"))
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let unreachable =
            |e: reqwest::Error| format!("the identity provider is unreachable: {}", platform::outbound::describe(&e));
        let jwks_uri = match &self.config.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let discovery =
                    format!("{}/.well-known/openid-configuration", self.config.issuer.trim_end_matches('/'));
                let document: Value =
                    self.http.get(&discovery).send().await.map_err(unreachable)?.json().await.map_err(unreachable)?;
                document["jwks_uri"].as_str().ok_or("the discovery document has no jwks_uri")?.to_owned()
            }
        };
        let set: JwkSet =
            self.http.get(&jwks_uri).send().await.map_err(unreachable)?.json().await.map_err(unreachable)?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect())
    }
}
