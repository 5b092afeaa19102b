//! A local OIDC issuer for tests: discovery document and JWKS over HTTPS (test CA),
//! and RS256 tokens signed with its key (or with a key it never published,
//! to test unknown key ids).

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{App, HttpResponse, HttpServer, web};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub struct OidcIssuer {
    /// The `iss` of its tokens and the base of its discovery document.
    pub issuer: String,
    pub audience: String,
    key: EncodingKey,
    kid: String,
    stray: EncodingKey,
    server: actix_web::dev::ServerHandle,
    dir: std::path::PathBuf,
}

impl OidcIssuer {
    pub async fn start() -> Self {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let dir = std::env::temp_dir().join(format!("paddock-oidc-{id}"));
        std::fs::create_dir_all(&dir).expect("oidc dir");
        let load = |name: &str| {
            let path = dir.join(name);
            crate::rsa_key_pair(&path);
            EncodingKey::from_rsa_pem(&std::fs::read(&path).expect("key")).expect("rsa key")
        };
        let (key, stray) = (load("signing.pem"), load("stray.pem"));
        let kid = format!("k-{id}");
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
        jwk.common.key_id = Some(kid.clone());
        let jwks = serde_json::to_value(JwkSet { keys: vec![jwk] }).expect("jwks json");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind issuer");
        let issuer = format!("https://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let discovery = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/jwks"), "id_token_signing_alg_values_supported": ["RS256"]});
        let server = HttpServer::new(move || {
            let (discovery, jwks) = (discovery.clone(), jwks.clone());
            App::new()
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(move || {
                        let d = discovery.clone();
                        async move { HttpResponse::Ok().json(d) }
                    }),
                )
                .route(
                    "/jwks",
                    web::get().to(move || {
                        let k = jwks.clone();
                        async move { HttpResponse::Ok().json(k) }
                    }),
                )
        })
        .workers(1)
        .listen_rustls_0_23(listener, crate::tls::server_config())
        .expect("listen")
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { issuer, audience: "paddock-api".to_owned(), key, kid, stray, server: handle, dir }
    }

    /// `identity.oidc` settings for this issuer, with `bindings` (group →
    /// roles) as JSON.
    pub fn config_json(&self, bindings: &Value) -> String {
        json!({"issuer": self.issuer, "audience": self.audience, "role_bindings": bindings}).to_string()
    }

    /// A valid token for `sub` in `groups`, an hour long.
    pub fn token(&self, sub: &str, groups: &[&str]) -> String {
        self.sign(&self.claims(sub, groups), false)
    }

    /// The standard claims, to tamper with.
    pub fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        json!({"iss": self.issuer, "aud": self.audience, "sub": sub, "email": format!("{sub}@example.com"),
            "email_verified": true, "groups": groups, "iat": now, "exp": now + 3600})
    }

    /// Signs `claims` with the published key, or with one never published.
    pub fn sign(&self, claims: &Value, stray: bool) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(if stray { format!("{}-stray", self.kid) } else { self.kid.clone() });
        let key = if stray { &self.stray } else { &self.key };
        jsonwebtoken::encode(&header, claims, key).expect("sign")
    }

    /// An unsigned token (`alg: none`) with these claims.
    pub fn unsigned(&self, claims: &Value) -> String {
        use base64::Engine;
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": self.kid})), b64(claims))
    }

    pub async fn stop(&self) {
        self.server.stop(false).await;
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
