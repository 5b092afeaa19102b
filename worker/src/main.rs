//! `worker [--config FILE]`: claims runs and executes them in sandboxes.
//! `worker gateway [--config FILE]`: an alias of `paddock-gateway`, the
//! standalone model gateway, kept for one release.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let standalone_gateway = args.next_if(|a| a == "gateway").is_some();
    let config_path =
        platform::config::file_from_args(args, "usage: worker [gateway] [--config FILE] (or set PADDOCK_CONFIG)")?;
    let config = platform::config::load(config_path.as_deref(), std::env::vars())?;
    let service = if standalone_gateway { "paddock-gateway" } else { "paddock-worker" };
    let telemetry = platform::telemetry::init_for(service, &config)?;
    let served = if standalone_gateway {
        gateway::serve_standalone(config, platform::telemetry::shutdown_signal()).await
    } else {
        worker::protect_from_oom();
        match worker::Application::build(config).await {
            Ok(app) => app.run_until_stopped(platform::telemetry::shutdown_signal()).await,
            Err(e) => Err(e),
        }
    };
    telemetry.shutdown().await;
    served
}
