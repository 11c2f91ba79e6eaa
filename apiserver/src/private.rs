//! Files only their owner reads: the store, the TLS key, the token and the kubeconfig give whoever
//! reads them the whole API. Directories are 0700 and files 0600, whatever the umask, and modes a
//! directory already had (an older version, a hand-made one) are tightened when it is opened.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::Error;

/// The mode of every directory the server keeps data in.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file the server keeps data in.
pub const FILE_MODE: u32 = 0o600;
const STICKY: u32 = 0o1000;

fn set_mode(path: &Path, current: u32, mode: u32) -> Result<(), Error> {
    if current & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|e| Error::io(path, e))
}

/// Creates `dir` (and missing parents) 0700, or tightens an existing one to 0700. What is below
/// it is left alone (see [`ensure_tree`]). A shared directory (sticky bit, like /tmp) is refused
/// rather than closed to its other users.
pub fn ensure_dir(dir: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    let meta = fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if meta.permissions().mode() & STICKY != 0 {
        return Err(Error::io(
            dir,
            std::io::Error::other(
                "a shared directory (sticky bit, like /tmp): give Pier a directory of its own",
            ),
        ));
    }
    set_mode(dir, meta.permissions().mode(), DIR_MODE)
}

/// [`ensure_dir`], then every directory below 0700 and every file 0600. Symbolic links are not
/// followed (their targets are not the server's).
pub fn ensure_tree(dir: &Path) -> Result<(), Error> {
    ensure_dir(dir)?;
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            ensure_tree(&path)?;
        } else if meta.is_file() {
            set_mode(&path, meta.permissions().mode(), FILE_MODE)?;
        }
    }
    Ok(())
}

/// Opens `path` for writing, emptied, mode 0600 (also when it existed with another mode).
pub fn create_file(path: &Path) -> Result<File, Error> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.permissions().mode() & 0o7777 != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(file)
}

/// Writes a 0600 file atomically (temporary file, fsync, rename).
pub fn write_file(path: &Path, content: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut f = create_file(&tmp)?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p)
            .expect("exists")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn an_existing_open_tree_is_tightened() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("data");
        fs::create_dir_all(dir.join("sub")).expect("dirs");
        fs::write(dir.join("a"), "x").expect("file");
        fs::write(dir.join("sub/b"), "x").expect("file");
        for (p, m) in [
            (dir.clone(), 0o755),
            (dir.join("sub"), 0o777),
            (dir.join("a"), 0o644),
            (dir.join("sub/b"), 0o666),
        ] {
            fs::set_permissions(&p, Permissions::from_mode(m)).expect("chmod");
        }
        let outside = root.path().join("outside");
        fs::write(&outside, "x").expect("file");
        fs::set_permissions(&outside, Permissions::from_mode(0o644)).expect("chmod");
        std::os::unix::fs::symlink(&outside, dir.join("link")).expect("symlink");

        ensure_tree(&dir).expect("tightened");
        assert_eq!(mode(&dir), DIR_MODE);
        assert_eq!(mode(&dir.join("sub")), DIR_MODE);
        assert_eq!(mode(&dir.join("a")), FILE_MODE);
        assert_eq!(mode(&dir.join("sub/b")), FILE_MODE);
        assert_eq!(mode(&outside), 0o644, "a link's target is not ours");
    }

    #[test]
    fn new_directories_and_files_are_private() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("x/y");
        ensure_dir(&dir).expect("created");
        assert_eq!(mode(&dir), DIR_MODE);
        let f = dir.join("f");
        fs::write(&f, "old").expect("file");
        fs::set_permissions(&f, Permissions::from_mode(0o644)).expect("chmod");
        write_file(&f, "new").expect("written");
        assert_eq!(mode(&f), FILE_MODE);
        assert_eq!(fs::read_to_string(&f).expect("read"), "new");
        let tmp = dir.join("g.tmp");
        fs::write(&tmp, "stale").expect("file");
        fs::set_permissions(&tmp, Permissions::from_mode(0o666)).expect("chmod");
        create_file(&tmp).expect("reopened");
        assert_eq!(mode(&tmp), FILE_MODE);
    }

    #[test]
    fn a_shared_directory_is_refused_not_closed() {
        let root = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(root.path(), Permissions::from_mode(0o1777)).expect("chmod");
        let e = ensure_dir(root.path()).expect_err("refused");
        assert!(e.to_string().contains("sticky bit"), "{e}");
        assert_eq!(mode(root.path()), 0o1777);
    }
}
