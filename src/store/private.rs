//! The database directory is private to the user that runs liveuser.
//!
//! Whoever can read the sled files can read the generated signing key and every session
//! id beside it, and so mint access tokens for any live session; whoever can write them
//! can change anything. So liveuser keeps the directory 0700 and every file in it 0600,
//! and refuses to open a database that other users can reach:
//!
//! - The process umask is set to 0077 before the database is opened (and first thing in
//!   `main`, before any thread starts), and left so: sled creates files long after it
//!   opens (snapshots, blobs), from its own threads, with the default mode 0666 less the
//!   umask. The export file and the admin token file are created 0600 explicitly anyway.
//! - A missing database directory, and any missing parent of it (the quick start's
//!   `./data`), is created 0700. An existing parent is left as the operator made it: it
//!   shows only the names of the database directory and of the admin token file, and
//!   that file is 0600.
//! - Before sled opens it, the directory and everything in it is checked: a mode with
//!   any group or other bit refuses the open, naming the path and the fix. Both the
//!   server and the CLI open the database through [`SledStore::open`](super::SledStore::open),
//!   so both refuse, even when the CLI would then go through the running server's admin
//!   API.

use std::path::Path;

use super::{StoreError, StoreResult};

/// Makes every file and directory this process creates from now on private to its user
/// (umask 0077). Call it before starting threads; calling it again is harmless.
pub fn restrict_umask() {
    #[cfg(unix)]
    // SAFETY: umask only changes the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates `path` for writing, mode 0600 from its first byte, failing with
/// `AlreadyExists` if anything is there: the one way liveuser creates a file outside
/// sled (an export, an import's upload, the admin endpoint file). Such a file may be
/// made in a directory other users can write (a shared backup directory): a file someone
/// else created there would stay theirs and readable by them, and a link would make
/// liveuser write wherever it points, so nothing found at the name is reused, opened
/// through a link, or removed.
pub(crate) fn create_new(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    // O_CREAT | O_EXCL: fails on any existing entry, a dangling link included.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Gets `path`, the database directory, ready to open: the umask restricted, the
/// directory and its missing parents created 0700, and nothing in it open to group or
/// others.
pub(super) fn prepare(path: &Path) -> StoreResult<()> {
    restrict_umask();
    let io = |e: std::io::Error| StoreError::Io(format!("cannot create {}: {e}", path.display()));
    if !path.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(path).map_err(io)?;
    }
    check(path)
}

/// Refuses `root` if it, or any file or directory under it, has a group or other bit.
#[cfg(unix)]
fn check(root: &Path) -> StoreResult<()> {
    use std::os::unix::fs::PermissionsExt;

    let unreadable = |path: &Path, e: std::io::Error| {
        StoreError::Io(format!("cannot read {}: {e}", path.display()))
    };
    // The root may be a symbolic link the operator made; its target is what counts.
    let meta = std::fs::metadata(root).map_err(|e| unreadable(root, e))?;
    let mut pending = vec![(root.to_path_buf(), meta.permissions().mode(), meta.is_dir())];
    while let Some((path, mode, descend)) = pending.pop() {
        if mode & 0o077 != 0 {
            return Err(StoreError::Exposed {
                path: path.display().to_string(),
                mode: mode & 0o777,
                root: root.display().to_string(),
            });
        }
        if !descend {
            continue;
        }
        for entry in std::fs::read_dir(&path).map_err(|e| unreadable(&path, e))? {
            let child = entry.map_err(|e| unreadable(&path, e))?.path();
            // sled makes no links. A link's own mode means nothing: for one, its
            // target's mode counts, and it is not descended into.
            let meta = std::fs::symlink_metadata(&child).and_then(|m| {
                if m.file_type().is_symlink() {
                    std::fs::metadata(&child).map(|t| (t.permissions().mode(), false))
                } else {
                    Ok((m.permissions().mode(), m.is_dir()))
                }
            });
            match meta {
                Ok((mode, descend)) => pending.push((child, mode, descend)),
                // A running server removes old snapshots while a CLI looks.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(unreadable(&child, e)),
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn check(_root: &Path) -> StoreResult<()> {
    Ok(())
}
