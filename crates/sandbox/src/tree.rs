//! Packs a checked-out tree into a tar archive for the sandbox workspace,
//! as a stream: the worker holds a few chunks of it at a time, never the
//! whole checkout.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

/// How much of the archive is sent at once, and how many such chunks wait.
const CHUNK: usize = 256 << 10;
const CHUNKS_IN_FLIGHT: usize = 4;

/// Tars `root` (including `.git`) with every entry owned by `uid:gid`, so
/// the non-root agent can modify what it is given. Symlinks stay symlinks;
/// nothing outside `root` is followed.
pub fn tar_tree(root: &Path, uid: u32, gid: u32) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    write_tree(root, uid, gid, &mut out)?;
    Ok(out)
}

/// [`tar_tree`] as a stream of chunks, written on a blocking thread while
/// the stream is read; at most about 1 MiB of it is in memory at once. The
/// stream ends with an error when packing fails.
pub fn stream_tree(root: PathBuf, uid: u32, gid: u32) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter { buffer: Vec::with_capacity(CHUNK), tx: tx.clone() };
        let packed = write_tree(&root, uid, gid, &mut writer).and_then(|()| writer.flush());
        if let Err(error) = packed {
            // The reader is gone (the upload failed) or packing failed.
            let _ = tx.blocking_send(Err(error));
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// Sends what is written in chunks of [`CHUNK`] bytes, waiting while the
/// reader is behind.
struct ChunkWriter {
    buffer: Vec<u8>,
    tx: mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let taken = data.len().min(room);
        self.buffer.extend_from_slice(&data[..taken]);
        if self.buffer.len() == CHUNK {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() { Ok(()) } else { self.send() }
    }
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let chunk = Bytes::from(std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

fn write_tree(root: &Path, uid: u32, gid: u32, out: &mut impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    append_dir(&mut builder, root, Path::new(""), uid, gid)?;
    builder.finish()
}

fn append_dir<W: Write>(builder: &mut tar::Builder<W>, root: &Path, rel: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let mut entries = std::fs::read_dir(root.join(rel))?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel_path = rel.join(entry.file_name());
        let meta = entry.path().symlink_metadata()?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        header.set_uid(u64::from(uid));
        header.set_gid(u64::from(gid));
        header.set_mtime(0);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path())?;
            header.set_size(0);
            builder.append_link(&mut header, &rel_path, target)?;
        } else if meta.is_dir() {
            header.set_size(0);
            builder.append_data(&mut header, &rel_path, io::empty())?;
            append_dir(builder, root, &rel_path, uid, gid)?;
        } else if meta.is_file() {
            let file = std::fs::File::open(entry.path())?;
            builder.append_data(&mut header, &rel_path, file)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_owned_by_the_sandbox_user() {
        let dir = std::env::temp_dir().join(format!("paddock-tree-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(dir.join("src")).expect("mkdir");
        std::fs::write(dir.join("src/main.rs"), b"fn main() {}\n").expect("write");
        std::os::unix::fs::symlink("src/main.rs", dir.join("link")).expect("symlink");
        let bytes = tar_tree(&dir, 1000, 1001).expect("tar");
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            let header = entry.header();
            assert_eq!((header.uid().ok(), header.gid().ok()), (Some(1000), Some(1001)));
            seen.push((entry.path().expect("path").display().to_string(), header.entry_type()));
        }
        assert_eq!(
            seen,
            vec![
                ("link".to_owned(), tar::EntryType::Symlink),
                ("src".to_owned(), tar::EntryType::Directory),
                ("src/main.rs".to_owned(), tar::EntryType::Regular),
            ]
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn the_stream_is_the_same_archive_in_bounded_chunks() {
        use futures::StreamExt;
        let dir = std::env::temp_dir().join(format!("paddock-tree-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("big.bin"), vec![7u8; 3 * CHUNK + 123]).expect("write");
        std::fs::write(dir.join("small.txt"), b"hi\n").expect("write");
        let whole = tar_tree(&dir, 1000, 1000).expect("tar");
        let chunks: Vec<Bytes> =
            stream_tree(dir.clone(), 1000, 1000).map(|c| c.expect("chunk")).collect::<Vec<_>>().await;
        assert!(chunks.iter().all(|c| c.len() <= CHUNK), "a chunk over {CHUNK} bytes");
        assert_eq!(chunks.concat(), whole);
        std::fs::remove_dir_all(dir).ok();
    }
}
