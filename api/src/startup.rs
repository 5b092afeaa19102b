//! Builds the HTTP server: `Application::build(config)` binds (port 0 in
//! tests), `run_until_stopped()` serves.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use audit_trail::AuditTrail;
use common::config::Config;
use objstore::S3Store;
use secrecy::ExposeSecret;
use store::RunQueue;
use store::identity::IdentityStore;

use crate::auth::token_digest;
use crate::openapi;
use crate::problem;

/// Shared by every request.
pub struct AppState {
    pub config: Config,
    pub queue: RunQueue,
    pub store: S3Store,
    pub admin_token_digest: [u8; 32],
    /// Verifies OIDC bearer tokens, when an identity provider is configured.
    pub oidc: Option<std::sync::Arc<crate::oidc::OidcVerifier>>,
    /// The GitHub App, when configured (webhooks check requesters with it).
    pub github: Option<std::sync::Arc<forge::GitHubApp>>,
    /// This process's stream of the audit trail.
    pub audit: std::sync::Arc<AuditTrail>,
    /// Seals the events written to Redis with their change (a run's
    /// request) under a key Redis never holds.
    pub sealer: audit_trail::Sealer,
    /// Whether the bucket enforces write-once retention, probed at start.
    pub object_lock: objstore::ObjectLockStatus,
    /// The bucket lifecycle rules installed at start (or why not).
    pub lifecycle: Vec<crate::audit::holds::LifecycleRule>,
    /// The tenants configuration declares (checked against each other).
    pub tenants: Vec<common::tenancy::Tenant>,
    /// Seals run-list cursors (under a key derived from the bootstrap token).
    pub cursors: crate::runs::cursor::Cursors,
    /// Declared tenants and sandbox policies as last read, for accepting runs.
    pub tenancy_cache: std::sync::Arc<crate::tenants::cache::TenancyCache>,
}

impl AppState {
    /// Identity records whose every change is written with its sealed audit
    /// event to the pending log, in one script (refused with 503 while the
    /// log's shipping is behind).
    pub fn identity(&self) -> IdentityStore {
        self.queue.identity().with_sealer(std::sync::Arc::new(self.sealer.clone()))
    }

    /// The identity provider's issuer, which makes a bare `sub` a person.
    pub fn issuer(&self) -> Option<&str> {
        self.config.identity.oidc.as_ref().map(|o| o.issuer.as_str())
    }
}

pub struct Application {
    port: u16,
    server: Server,
    audit: std::sync::Arc<AuditTrail>,
}

/// Request bodies larger than this are refused with 413. A run's task
/// body may hold 65,536 characters, each of which JSON may spell as a
/// 12-byte surrogate pair (`\ud83d\ude00`): such a request, valid by the
/// document, must reach the validation that answers 400 for one character
/// more (the contract fuzzer once got a 413 for a 65,537-character body).
const MAX_BODY_BYTES: usize = 1024 * 1024;

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let token = config.api.bootstrap_admin_token.expose_secret();
        if token.len() < 16 {
            anyhow::bail!(
                "invalid configuration: `api.bootstrap_admin_token` must be set to at least 16 characters (the API never runs open)"
            );
        }
        let admin_token_digest = token_digest(token);
        let cursors = crate::runs::cursor::Cursors::new(token.as_bytes());
        let outbound = platform::outbound::Outbound::new(&config.tls, &config.outbound)?;
        let queue = RunQueue::connect(&config.redis, &outbound)
            .await?
            .with_audit_writes(store::audit::AuditWrites::from_config(&config.audit));
        queue.check_server().await?;
        // A run's request event is written with the run, in Redis: the API
        // answers 202 only once Redis has made it durable.
        queue.check_audit_durability().await?;
        let store = S3Store::new(&config.s3, &outbound);
        let listener = TcpListener::bind(&config.api.listen)
            .map_err(|e| anyhow::anyhow!("cannot listen on `api.listen` = {}: {e}", config.api.listen))?;
        let port = listener.local_addr()?.port();
        let github = forge::GitHubApp::from_config(&config.github, &outbound)?.map(std::sync::Arc::new);
        let oidc = match config.identity.oidc.clone() {
            Some(oidc) => Some(std::sync::Arc::new(crate::oidc::OidcVerifier::new(oidc, &outbound)?)),
            None => None,
        };
        let (audit, object_lock) = audit_trail::open(&config, store.clone(), "api").await?;
        let audit = std::sync::Arc::new(audit);
        let trail = audit.clone();
        let interval = std::time::Duration::from_secs(config.audit.digest_interval_seconds);
        audit_trail::spawn_digests(std::sync::Arc::downgrade(&audit), interval);
        let sealer = audit_trail::Sealer::from_config(&config)?;
        crate::audit::pending::spawn(queue.clone(), audit.clone(), sealer.clone());
        if object_lock.enforced {
            tracing::info!(mode = ?object_lock.mode, days = ?object_lock.default_retention_days, "audit bucket: Object Lock enforced");
        } else {
            tracing::warn!(detail = %object_lock.detail, "audit bucket: Object Lock NOT enforced; the trail is tamper-evident (signed digests), not tamper-proof");
        }
        let lifecycle = crate::audit::holds::install_lifecycle_rules(&config, &store).await;
        let tenants = config.tenancy()?.tenants().to_vec();
        let state = web::Data::new(AppState {
            config,
            queue,
            store,
            admin_token_digest,
            oidc,
            github,
            audit,
            sealer,
            object_lock,
            lifecycle,
            tenants,
            cursors,
            tenancy_cache: Default::default(),
        });
        let server = HttpServer::new(move || {
            openapi::routes(App::new().app_data(state.clone())).0.wrap_fn(|req, service| {
                let id = crate::request_id::assign(&req);
                // The route's pattern, never the path: one series per route.
                let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
                let method = req.method().to_string();
                let started = std::time::Instant::now();
                // Every line logged while serving the request names it; its
                // span continues the caller's trace (`traceparent`).
                let span = tracing::info_span!(
                    "request",
                    request_id = %id.to_str().unwrap_or_default(),
                    otel.name = %format!("{} {route}", req.method()),
                    http.request.method = %req.method(),
                    http.route = %route
                );
                if let Some(parent) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
                    platform::telemetry::follow(&span, parent);
                }
                let answer = tracing::Instrument::instrument(actix_web::dev::Service::call(service, req), span);
                async move {
                    let mut answer = answer.await?;
                    answer.headers_mut().insert(crate::request_id::HEADER, id);
                    let status = answer.status().as_u16().to_string();
                    let labels = vec![("route", route), ("method", method), ("status", status)];
                    platform::metrics::global()
                        .http_requests
                        .get_or_create(&labels)
                        .observe(started.elapsed().as_secs_f64());
                    Ok(answer)
                }
            })
        })
        .listen(listener)?
        .shutdown_timeout(30)
        .run();
        Ok(Self { port, server, audit: trail })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until stopped, then digests this process's last segments so
    /// its stream ends verifiable.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        if let Err(error) = self.audit.flush().await {
            tracing::error!(%error, "the last audit digest could not be written");
        }
        served
    }
}

/// Extractor configuration that turns every extractor failure into problem+json.
pub fn extractor_config(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(MAX_BODY_BYTES).error_handler(problem::json_error))
        .app_data(web::QueryConfig::default().error_handler(problem::query_error))
        .app_data(web::PathConfig::default().error_handler(problem::path_error));
}
