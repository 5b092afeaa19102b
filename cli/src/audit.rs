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

/// Streams the bundle's tar into `parent/<id>`. The archive comes from a
/// deployment the bundle is meant to be checked against, so it is trusted
/// with nothing: only plain files and folders under `<id>/` are unpacked,
/// into a fresh folder that becomes `<id>` once whole; an existing `<id>`
/// is never written into.
async fn download(api: &Api, id: &str, parent: &Path) -> Result<PathBuf> {
    let path = format!("/v1/audit/exports/{}/bundle", segment("export", id)?);
    let folder = parent.join(id);
    if folder.exists() {
        return Err(Failure::usage(format!("{} exists: remove it or pass another --out", folder.display())));
    }
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
    let staging = parent.join(format!(".audit-export-{id}.partial"));
    let (from, into, name) = (archive.clone(), staging.clone(), id.to_owned());
    let unpacked = tokio::task::spawn_blocking(move || unpack(&from, &into, &name)).await;
    let _ = std::fs::remove_file(&archive);
    let unpacked = unpacked.map_err(|e| Failure::new(Exit::Unavailable, format!("unpacking the bundle: {e}")))?;
    if let Err(error) = unpacked.and_then(|()| std::fs::rename(staging.join(id), &folder)) {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(Failure::new(Exit::No, format!("the bundle of export {id} is not a valid archive: {error}")));
    }
    let _ = std::fs::remove_dir_all(&staging);
    Ok(folder)
}

/// Unpacks `archive` into `into`, which must hold only `<id>/...` plain
/// files and folders.
fn unpack(archive: &Path, into: &Path, id: &str) -> std::io::Result<()> {
    use std::path::Component;
    std::fs::create_dir_all(into)?;
    let mut tar = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let name = entry.path()?.into_owned();
        let mut parts = name.components();
        let first = parts.next();
        let inside = first == Some(Component::Normal(id.as_ref())) && parts.all(|c| matches!(c, Component::Normal(_)));
        if !inside || !(kind.is_file() || kind.is_dir()) {
            return Err(std::io::Error::other(format!("refusing {} ({kind:?})", name.display())));
        }
        entry.unpack_in(into)?;
    }
    Ok(())
}

/// Verifies a bundle folder from its files alone.
pub async fn verify_folder(folder: &Path, keys: &[audit_trail::VerifyingKey]) -> Result<VerifyReport> {
    let (Some(parent), Some(name)) = (folder.parent(), folder.file_name().and_then(|n| n.to_str())) else {
        return Err(Failure::usage(format!("{} is not a bundle folder", folder.display())));
    };
    if !folder.is_dir() {
        return Err(Failure::usage(format!("{} is not a folder", folder.display())));
    }
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    verify_export(&DirStore::new(parent.to_path_buf()), name, keys)
        .await
        .map_err(|e| Failure::usage(format!("cannot read the bundle {}: {e}", folder.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path, entries: &[(&str, tar::EntryType)]) -> PathBuf {
        let path = dir.join("bundle.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, kind) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(if kind.is_file() { 2 } else { 0 });
            header.set_mode(0o644);
            if kind.is_symlink() {
                header.set_link_name("/etc/passwd").unwrap();
            }
            let data: &[u8] = if kind.is_file() { b"{}" } else { b"" };
            builder.append_data(&mut header, name, data).unwrap();
        }
        builder.finish().unwrap();
        path
    }

    #[test]
    fn only_plain_files_under_the_exports_folder_are_unpacked() {
        let dir = std::env::temp_dir().join(format!("paddock-cli-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = "01jbd3k6q3x9a7m2c5v8w0z4ty";
        let regular = tar::EntryType::Regular;
        let good = archive(&dir, &[(&format!("{id}/manifest.json"), regular)]);
        unpack(&good, &dir.join("good"), id).unwrap();
        assert!(dir.join("good").join(id).join("manifest.json").is_file());
        for (name, kind) in [
            (".bashrc".to_owned(), regular),
            ("elsewhere/manifest.json".to_owned(), regular),
            (format!("{id}/link"), tar::EntryType::Symlink),
        ] {
            let bad = archive(&dir, &[(&name, kind)]);
            let error = unpack(&bad, &dir.join("bad"), id).unwrap_err();
            assert!(error.to_string().contains("refusing"), "{name}: {error}");
        }
        assert!(!dir.join("bad/.bashrc").exists() && !dir.join("bad/elsewhere").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
