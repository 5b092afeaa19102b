//! Where the CLI finds Paddock and its token: flags, then `PADDOCK_*`
//! environment variables, then the config file
//! (`--config`, `PADDOCK_CLI_CONFIG`, or `~/.config/paddock/cli.toml` when
//! it exists), then the defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client::{Failure, Result};

/// The config file: every key optional, unknown keys refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub api_url: Option<String>,
    /// A file holding the token (preferred: the file's mode protects it).
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
    /// PEM CA certificates to trust beside the system's (an internal CA).
    pub ca_file: Option<PathBuf>,
}

/// What the command line and environment said.
pub struct Given<'a> {
    pub config: Option<&'a Path>,
    pub api_url: Option<&'a str>,
    /// `--token`, else `PADDOCK_TOKEN` (unless `--token-file` was given).
    pub token: Option<String>,
    /// `--token-file`, else `PADDOCK_TOKEN_FILE` (unless `--token` was).
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<&'a Path>,
}

impl Given<'_> {
    /// The token settings: either flag wins over both variables.
    pub fn token_from(flag: Option<&str>, file_flag: Option<&Path>) -> (Option<String>, Option<PathBuf>) {
        if flag.is_some() || file_flag.is_some() {
            return (flag.map(str::to_owned), file_flag.map(Path::to_path_buf));
        }
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        (var("PADDOCK_TOKEN"), var("PADDOCK_TOKEN_FILE").map(PathBuf::from))
    }
}

/// The settings a command runs with.
pub struct Settings {
    pub api_url: String,
    pub token: String,
    pub ca_file: Option<PathBuf>,
}

pub const DEFAULT_API_URL: &str = "http://127.0.0.1:8080";

pub fn resolve(given: &Given<'_>) -> Result<Settings> {
    let file = read_file(given.config)?;
    let api_url = given.api_url.map(str::to_owned).or(file.api_url).unwrap_or_else(|| DEFAULT_API_URL.to_owned());
    let parsed = reqwest::Url::parse(&api_url)
        .map_err(|e| Failure::usage(format!("api_url {api_url:?} is not a URL: {e} (--api-url, PADDOCK_API_URL)")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Failure::usage(format!("api_url {api_url:?} must be an http:// or https:// URL")));
    }
    let token = match (given.token.clone(), given.token_file.as_deref(), file.token_file, file.token) {
        (Some(token), ..) => token,
        (None, Some(path), ..) => read_token(path, "--token-file (PADDOCK_TOKEN_FILE)")?,
        (None, None, Some(path), _) => read_token(&path, "token_file")?,
        (None, None, None, Some(token)) => token,
        (None, None, None, None) => {
            return Err(Failure::usage(
                "no token: pass --token or --token-file, set PADDOCK_TOKEN or PADDOCK_TOKEN_FILE, \
                 or put token_file in the config file",
            ));
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() || token.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(Failure::usage("the token is empty or holds spaces or control characters"));
    }
    let ca_file = given.ca_file.map(Path::to_path_buf).or(file.ca_file);
    Ok(Settings { api_url, token, ca_file })
}

/// The config file named, or the default one when it exists.
fn read_file(named: Option<&Path>) -> Result<File> {
    let default = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .map(|dir| dir.join("paddock/cli.toml"));
    let path = match (named, default) {
        (Some(path), _) => path.to_path_buf(),
        (None, Some(path)) if path.exists() => path,
        _ => return Ok(File::default()),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::usage(format!("cannot read the config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| Failure::usage(format!("config file {}: {}", path.display(), e.message())))
}

fn read_token(path: &Path, key: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Failure::usage(format!("{key}: cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(config: Option<&Path>) -> Given<'_> {
        Given { config, api_url: None, token: None, token_file: None, ca_file: None }
    }

    #[test]
    fn a_config_file_key_nobody_reads_is_named() {
        let dir = std::env::temp_dir().join(format!("paddock-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cli.toml");
        std::fs::write(&path, "api_url = \"http://paddock.internal\"\ntokn = \"x\"\n").unwrap();
        let failure = resolve(&given(Some(&path))).err().unwrap();
        assert!(failure.message.contains("unknown field `tokn`"), "{}", failure.message);

        std::fs::write(dir.join("token"), "pdk_sa_abc\n").unwrap();
        let text = format!("api_url = \"https://paddock.internal/\"\ntoken_file = {:?}\n", dir.join("token"));
        std::fs::write(&path, text).unwrap();
        let settings = resolve(&given(Some(&path))).unwrap();
        assert_eq!((settings.api_url.as_str(), settings.token.as_str()), ("https://paddock.internal/", "pdk_sa_abc"));

        let flags = Given { api_url: Some("ftp://x"), token: Some("t".to_owned()), ..given(Some(&path)) };
        assert!(resolve(&flags).err().unwrap().message.contains("must be an http:// or https:// URL"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
