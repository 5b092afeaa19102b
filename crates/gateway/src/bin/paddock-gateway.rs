//! `paddock-gateway [--config FILE]`: the standalone model gateway, for
//! deployments that keep provider keys off worker hosts. Workers reach it
//! with `gateway.remote`; it serves each live run token's calls.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config_path = platform::config::file_from_args(
        std::env::args().skip(1),
        "usage: paddock-gateway [--config FILE] (or set PADDOCK_CONFIG)",
    )?;
    let config = platform::config::load(config_path.as_deref(), std::env::vars())?;
    let telemetry = platform::telemetry::init_for("paddock-gateway", &config)?;
    let served = gateway::serve_standalone(config, platform::telemetry::shutdown_signal()).await;
    telemetry.shutdown().await;
    served
}
