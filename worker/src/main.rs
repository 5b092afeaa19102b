//! `worker [--config FILE]`: claims runs and executes them in sandboxes.
//! `worker gateway [--config FILE]`: an alias of `paddock-gateway`, the
//! standalone model gateway, kept for one release.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    platform::telemetry::init();
    let mut args = std::env::args().skip(1).peekable();
    let standalone_gateway = args.next_if(|a| a == "gateway").is_some();
    let config_path =
        platform::config::file_from_args(args, "usage: worker [gateway] [--config FILE] (or set PADDOCK_CONFIG)")?;
    let config = platform::config::load(config_path.as_deref(), std::env::vars())?;
    if standalone_gateway {
        return gateway::serve_standalone(config, platform::telemetry::shutdown_signal()).await;
    }
    worker::protect_from_oom();
    let app = worker::Application::build(config).await?;
    app.run_until_stopped(platform::telemetry::shutdown_signal()).await
}
