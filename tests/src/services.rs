//! Where the services are: `$PADDOCK_HOME/state/services.env`, written by
//! `cargo xtask setup`.

use std::path::PathBuf;

pub fn home() -> PathBuf {
    std::env::var_os("PADDOCK_HOME").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned())).join(".cache/paddock")
    })
}

/// The `PADDOCK_*` variables that point at the running services.
pub fn endpoint_vars() -> Vec<(String, String)> {
    let path = home().join("state/services.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read {} ({e}): run `cargo xtask setup` first (or `cargo xtask test`)", path.display())
    });
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

/// A bucket `cargo xtask setup` makes for tests that act on a whole bucket
/// (the retention sweeper); nothing else writes there.
pub const ISOLATED_BUCKET: &str = "paddock-isolated";

/// Directory of the built `api` and `worker` binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PADDOCK_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}
