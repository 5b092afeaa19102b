//! `paddock audit export` and `paddock audit verify-export`: a compliance
//! bundle downloaded through the API and checked offline, trusting only
//! the public keys given (or the deployment's, from `GET /v1/audit/status`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audit_trail::export::verify_export;
use audit_trail::{VerifyReport, verifying_key};
use futures::StreamExt;
use objstore::DirStore;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::client::{Api, Exit, Failure, Result, segment, unreachable};

/// How long an export job may take before the CLI stops waiting.
const EXPORT_WAIT: Duration = Duration::from_secs(600);

/// What `audit export` was asked for.
pub struct ExportArgs {
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub run: Option<String>,
    pub out: Option<PathBuf>,
    pub public_keys: Vec<String>,
}

/// Starts an export, waits for it, downloads the bundle into a folder and
/// verifies it there. Returns the job, the folder and the report.
pub async fn export(api: &Api, args: ExportArgs) -> Result<(Value, PathBuf, VerifyReport)> {
    let keys = trusted(api, &args.public_keys).await?;
    let request = json!({"since_ms": args.since_ms, "until_ms": args.until_ms, "run": args.run});
    let job = api.post("/v1/audit/exports", Some(&request)).await?;
    let id = job["id"].as_str().ok_or_else(|| Failure::new(Exit::Unavailable, "the export has no id"))?.to_owned();
    let status_path = format!("/v1/audit/exports/{}", segment("export", &id)?);
    let started = Instant::now();
    let job = loop {
        let job = api.get(&status_path).await?;
        match job["state"].as_str() {
            Some("succeeded") => break job,
            Some("failed") => {
                let why = job["error"].as_str().unwrap_or("no reason given");
                return Err(Failure::new(Exit::Unavailable, format!("export {id} failed: {why}")));
            }
            _ if started.elapsed() > EXPORT_WAIT => {
                return Err(Failure::new(Exit::Unavailable, format!("export {id} still runs after {EXPORT_WAIT:?}")));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let parent = args.out.unwrap_or_else(|| PathBuf::from("."));
    let folder = download(api, &id, &parent).await?;
    let report = verify_folder(&folder, &keys).await?;
    Ok((job, folder, report))
}

/// The keys to trust: those given, else the deployment's current one.
async fn trusted(api: &Api, given: &[String]) -> Result<Vec<audit_trail::VerifyingKey>> {
    if !given.is_empty() {
        return parse_keys(given);
    }
    let status = api.get("/v1/audit/status").await?;
    let key = status["public_key"]
        .as_str()
        .ok_or_else(|| Failure::new(Exit::Unavailable, "no public_key in /v1/audit/status"))?;
    parse_keys(&[key.to_owned()])
}

pub fn parse_keys(given: &[String]) -> Result<Vec<audit_trail::VerifyingKey>> {
    given.iter().map(|key| verifying_key(key).map_err(|e| Failure::usage(format!("--public-key {key}: {e}")))).collect()
}

/// Streams the bundle's tar into `parent/<id>` (unpacked), refusing any
/// entry that would land outside it.
async fn download(api: &Api, id: &str, parent: &Path) -> Result<PathBuf> {
    let path = format!("/v1/audit/exports/{}/bundle", segment("export", id)?);
    let response = api.send(&Method::GET, &path, api.request(Method::GET, &path)).await?;
    let local = |e: std::io::Error, what: &Path| Failure::usage(format!("cannot write {}: {e}", what.display()));
    tokio::fs::create_dir_all(parent).await.map_err(|e| local(e, parent))?;
    let archive = parent.join(format!(".audit-export-{id}.tar"));
    let mut file = tokio::fs::File::create(&archive).await.map_err(|e| local(e, &archive))?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| unreachable(&path, &e))?;
        file.write_all(&chunk).await.map_err(|e| local(e, &archive))?;
    }
    file.flush().await.map_err(|e| local(e, &archive))?;
    drop(file);
    let folder = parent.join(id);
    let (unpack_from, unpack_into) = (archive.clone(), parent.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut tar = tar::Archive::new(std::fs::File::open(&unpack_from)?);
        for entry in tar.entries()? {
            // `unpack_in` refuses paths that climb out of the folder.
            if !entry?.unpack_in(&unpack_into)? {
                return Err(std::io::Error::other("the archive names a path outside its folder"));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| Failure::new(Exit::Unavailable, format!("unpacking the bundle: {e}")))?;
    let _ = std::fs::remove_file(&archive);
    unpacked.map_err(|e| {
        Failure::new(Exit::Unavailable, format!("the bundle of export {id} is not a valid archive: {e}"))
    })?;
    Ok(folder)
}

/// Verifies a bundle folder from its files alone.
pub async fn verify_folder(folder: &Path, keys: &[audit_trail::VerifyingKey]) -> Result<VerifyReport> {
    let (Some(parent), Some(name)) = (folder.parent(), folder.file_name().and_then(|n| n.to_str())) else {
        return Err(Failure::usage(format!("{} is not a bundle folder", folder.display())));
    };
    if !folder.join("manifest.json").is_file() {
        return Err(Failure::usage(format!("{} holds no manifest.json: not an export bundle", folder.display())));
    }
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    verify_export(&DirStore::new(parent.to_path_buf()), name, keys)
        .await
        .map_err(|e| Failure::usage(format!("cannot read the bundle {}: {e}", folder.display())))
}
