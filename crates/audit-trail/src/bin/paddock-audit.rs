//! `paddock-audit verify-export <bundle dir> --public-key <base64>...`:
//! checks a downloaded compliance export bundle from its files alone (the
//! manifest's signature, every file, the digests and segments, each
//! exported event), trusting only the public keys given (`GET
//! /v1/audit/status` names the deployment's). Prints the report as JSON;
//! exits 0 when it verifies, 1 with findings, 2 on a usage or read error.

use std::path::PathBuf;
use std::process::ExitCode;

use audit_trail::export::verify_export;
use audit_trail::verifying_key;
use objstore::DirStore;

const USAGE: &str = "usage: paddock-audit verify-export <bundle dir> --public-key <base64> [--public-key <base64>...]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some("verify-export"), Some(dir)) = (args.first().map(String::as_str), args.get(1)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut keys = Vec::new();
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let (true, Some(value)) = (flag == "--public-key", rest.next()) else {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        };
        match verifying_key(value) {
            Ok(key) => keys.push(key),
            Err(e) => {
                eprintln!("paddock-audit: --public-key {value}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if keys.is_empty() {
        eprintln!("paddock-audit: name at least one trusted --public-key\n{USAGE}");
        return ExitCode::from(2);
    }
    // The bundle is the directory itself: keys are read relative to its parent.
    let dir = PathBuf::from(dir);
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str())) else {
        eprintln!("paddock-audit: {} is not a bundle directory", dir.display());
        return ExitCode::from(2);
    };
    let parent = if parent.as_os_str().is_empty() { PathBuf::from(".") } else { parent.to_path_buf() };
    match verify_export(&DirStore::new(parent), name, &keys).await {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("paddock-audit: {e}");
            ExitCode::from(2)
        }
    }
}
