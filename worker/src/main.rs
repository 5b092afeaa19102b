//! `worker [--config FILE]`: claims runs and executes them in sandboxes.
//! `worker gateway [--config FILE]`: the standalone model gateway, for
//! deployments that keep provider keys off worker hosts.

use std::path::PathBuf;

use common::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let mut args = std::env::args().skip(1).peekable();
    let standalone_gateway = args.next_if(|a| a == "gateway").is_some();
    let config_path = config_path(args)?;
    let config = Config::load(config_path.as_deref(), std::env::vars())?;
    if standalone_gateway {
        return worker::gateway::serve_standalone(config, common::telemetry::shutdown_signal()).await;
    }
    let app = worker::Application::build(config).await?;
    app.run_until_stopped(common::telemetry::shutdown_signal()).await
}

fn config_path(mut args: impl Iterator<Item = String>) -> anyhow::Result<Option<PathBuf>> {
    let from_env = std::env::var_os("PADDOCK_CONFIG").map(PathBuf::from);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(from_env),
        (Some("--config"), Some(path)) => Ok(Some(PathBuf::from(path))),
        _ => anyhow::bail!("usage: worker [gateway] [--config FILE] (or set PADDOCK_CONFIG)"),
    }
}
