//! A local directory as an object store: keys are paths under it. For
//! checking a downloaded export bundle (`aws s3 sync`) without Paddock or
//! the bucket (`paddock audit verify-export`).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{ObjectStore, StoreError};

pub struct DirStore {
    root: PathBuf,
}

impl DirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key.trim_start_matches('/'))
    }
}

/// Every file under `dir`, as `/`-separated keys relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, u64)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(relative) = path.strip_prefix(root) {
            let key: Vec<String> =
                relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let modified = entry.metadata()?.modified()?;
            let ms = modified.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default();
            out.push((key.join("/"), ms));
        }
    }
    Ok(())
}

impl ObjectStore for DirStore {
    async fn put(&self, key: &str, body: Bytes, _content_type: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(StoreError::new)?;
        }
        std::fs::write(path, body).map_err(StoreError::new)
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        match std::fs::read(self.path(key)) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::new(e)),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        std::fs::metadata(&self.root).map(|_| ()).map_err(StoreError::new)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut keys = Vec::new();
        // Only the folder the prefix names is walked, not all of the root
        // (a bundle downloaded into a home directory).
        let folder = self.path(prefix.rsplit_once('/').map_or("", |(folder, _)| folder));
        if folder.is_dir() {
            walk(&self.root, &folder, &mut keys).map_err(StoreError::new)?;
        }
        keys.retain(|(k, _)| k.starts_with(prefix));
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::new(e)),
            _ => Ok(()),
        }
    }
}

impl crate::RetainingStore for DirStore {
    /// A directory cannot hold an object under retention: refused, never
    /// written without it.
    async fn put_retained(&self, key: &str, _: Bytes, _: &str, mode: &str, _: u64) -> Result<(), StoreError> {
        Err(StoreError::new(format!("{key}: a directory store cannot keep objects under {mode} retention")))
    }
}
