//! Packs a checked-out tree into a tar archive for the sandbox workspace.

use std::io;
use std::path::Path;

/// Tars `root` (including `.git`) with every entry owned by `uid:gid`, so
/// the non-root agent can modify what it is given. Symlinks stay symlinks;
/// nothing outside `root` is followed.
pub fn tar_tree(root: &Path, uid: u32, gid: u32) -> io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    append_dir(&mut builder, root, Path::new(""), uid, gid)?;
    builder.into_inner()
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path, uid: u32, gid: u32) -> io::Result<()> {
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
}
