//! `api [--config FILE]` serves the admin API; `api openapi` prints the spec.

use std::path::PathBuf;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config_path = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["openapi"] => {
            print!("{}", api::openapi::document_json());
            return Ok(());
        }
        ["permission-matrix"] => {
            print!("{}", api::openapi::permission_matrix_markdown());
            return Ok(());
        }
        [] => std::env::var_os("PADDOCK_CONFIG").map(PathBuf::from),
        ["--config", path] => Some(PathBuf::from(path)),
        _ => anyhow::bail!("usage: api [--config FILE] | api openapi"),
    };
    let config = platform::config::load(config_path.as_deref(), std::env::vars())?;
    let telemetry = platform::telemetry::init_for("paddock-api", &config)?;
    let app = api::Application::build(config).await?;
    tracing::info!(port = app.port(), "api listening");
    let served = app.run_until_stopped().await;
    telemetry.shutdown().await;
    Ok(served?)
}
