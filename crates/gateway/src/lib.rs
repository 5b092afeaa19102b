//! The LLM gateway a sandbox calls models through. One listener per run on
//! the run network's gateway address, authenticated by a per-run token
//! (stored hashed in Redis, revoked when the run ends); it forwards OpenAI
//! Chat Completions / Responses, Anthropic Messages and the Gemini API to
//! an allowed provider with the provider's credentials added here (keys,
//! Vertex service-account tokens, Bedrock SigV4 signatures), redacts
//! secrets from the request first, and streams the answer back as it
//! arrives (Bedrock's binary event stream translated to the client's SSE).

mod bedrock;
mod hub;
mod redact;
mod request_policy;
mod server;
mod transcript;
mod vertex;

pub use hub::{GatewayHub, Relay, RemoteGateway};
pub use redact::{Redactions, Redactor, StreamRedactor, canaries};
pub use server::{CallRecord, GatewayServer, RunGateway};

use std::future::Future;
use std::io::Read;
use std::sync::Arc;

/// Every secret a run's redaction must know: provider keys, configured
/// secrets, the storage key, the tenant's registered secrets (opened with
/// `secrets.encryption_key`) and, when given, the run token. Fails when the
/// tenant's secrets cannot be read: redacting without them would leak them.
pub async fn known_secrets(
    config: &common::config::Config,
    queue: &store::RunQueue,
    tenant: &str,
    run_token: Option<&str>,
) -> Result<Vec<String>, String> {
    use secrecy::ExposeSecret;
    let gateway = &config.gateway;
    let mut known: Vec<String> = gateway.providers.values().map(|p| p.api_key.expose_secret().to_owned()).collect();
    // Bedrock's keys in config; temporary keys from a role never leave
    // the gateway's process.
    known.extend(
        gateway
            .providers
            .values()
            .filter_map(|p| p.aws.secret_access_key.as_ref())
            .map(|s| s.expose_secret().to_owned()),
    );
    known.extend(gateway.redact.iter().map(|s| s.expose_secret().to_owned()));
    known.push(config.s3.secret_access_key.expose_secret().to_owned());
    known.extend(run_token.map(str::to_owned));
    let registered =
        queue.tenant_secrets(tenant).await.map_err(|e| format!("reading the tenant's secrets failed: {e}"))?;
    if registered.is_empty() {
        return Ok(known);
    }
    let Some(key) = &config.secrets.encryption_key else {
        return Err("the tenant has registered secrets but secrets.encryption_key is not configured here".to_owned());
    };
    let vault = common::sealed::SecretBox::new(key.expose_secret()).map_err(|e| e.to_string())?;
    for (name, secret) in registered {
        known.push(vault.open(&secret.sealed).map_err(|e| format!("tenant secret `{name}`: {e}"))?);
    }
    Ok(known)
}

/// Runs the standalone gateway on `gateway.listen` until `shutdown`.
pub async fn serve_standalone(
    config: common::config::Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listen: std::net::SocketAddr = config
        .gateway
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("gateway.listen: {e} (expected an address such as 0.0.0.0:8089)"))?;
    if config.gateway.allowed_providers.is_empty() {
        tracing::warn!(
            "gateway.allowed_providers is empty: every model call will be refused until a policy allows one"
        );
    }
    let outbound = platform::outbound::Outbound::new(&config.tls, &config.outbound)?;
    let queue = store::RunQueue::connect(&config.redis, &outbound).await?;
    queue.check_server().await?;
    let http = outbound.http().build()?;
    let tls = match (&config.gateway.tls_cert_file, &config.gateway.tls_key_file) {
        (Some(cert), Some(key)) => {
            let server = platform::outbound::server_config("gateway.tls_cert_file", cert, key)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
        }
        _ => {
            tracing::warn!("gateway.tls_cert_file is not set: workers' relays reach this gateway in plain text");
            None
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "standalone model gateway listening");
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(listen) = &config.telemetry.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("telemetry.metrics_listen {listen}: {e}"))?;
        tracing::info!(%listen, "serving /metrics");
        platform::metrics::serve(metrics, stop.clone());
    }
    let hub = Arc::new(GatewayHub::new(config, queue, http, tls)?);
    let serving = tokio::spawn(hub.serve(listener, stop.clone()));
    shutdown.await;
    stop.cancel();
    let _ = serving.await;
    Ok(())
}

/// A new run token: `pdk_run_` and 32 random bytes, base64url.
pub fn mint_token() -> std::io::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(format!("pdk_run_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// How a token is stored and compared: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    common::hash::sha256_hex(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_prefixed_and_stored_hashed() {
        let (a, b) = (mint_token().unwrap(), mint_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("pdk_run_") && a.len() >= 50, "{a}");
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), a);
    }
}
