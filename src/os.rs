//! The Linux calls under the lock: open the lock file safely, take and drop an
//! OFD record lock, and tell what kind of file a path is.
//!
//! This module knows nothing of [`LockMgr`](crate::LockMgr) or its errors: it
//! speaks `io::Error`, so that other lock kinds can reuse it. It is the only
//! module of the crate with `unsafe` code.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::libc;
use nix::sys::stat::{fstat, lstat, FileStat, Mode, SFlag};

/// What a path turned out to be, when it is not a regular file a lock can
/// live in. Carried by [`LockError::NotAFile`](crate::LockError::NotAFile).
///
/// ```
/// use lockmgr::{FileKind, LockError, LockMgr};
/// let err = LockMgr::new("/dev/null").try_acquire().unwrap_err();
/// assert!(matches!(err, LockError::NotAFile { kind: FileKind::CharDevice, .. }));
/// assert_eq!(err.to_string(), "cannot use /dev/null as a lock file: it is a character device");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A symbolic link (never followed for lock files).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A Unix domain socket.
    Socket,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Symlink => "a symbolic link",
            FileKind::Fifo => "a FIFO",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Socket => "a socket",
        })
    }
}

/// Why [`open_lock_file`] failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The path names something that is not a regular file.
    NotRegular(FileKind),
    /// The `open(2)` or `fstat(2)` call failed.
    Io(io::Error),
}

fn kind_of(st: &FileStat) -> Option<FileKind> {
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => None,
        SFlag::S_IFDIR => Some(FileKind::Directory),
        SFlag::S_IFLNK => Some(FileKind::Symlink),
        SFlag::S_IFIFO => Some(FileKind::Fifo),
        SFlag::S_IFCHR => Some(FileKind::CharDevice),
        SFlag::S_IFBLK => Some(FileKind::BlockDevice),
        // S_IFSOCK and anything unknown: refuse rather than guess.
        _ => Some(FileKind::Socket),
    }
}

/// Opens (creating if needed, never truncating) the lock file at `path`.
///
/// `O_NOFOLLOW` refuses a symlink planted at the path; `O_NONBLOCK` keeps a
/// FIFO from blocking the open and `O_NOCTTY` keeps a terminal from becoming
/// ours, so that refusing such a path leaves it as it was. The file kind is
/// checked on the opened fd, not the path, so there is no window between the
/// check and the use.
pub(crate) fn open_lock_file(path: &Path, mode: u32) -> Result<OwnedFd, OpenError> {
    let flags = OFlag::O_RDWR
        | OFlag::O_CREAT
        | OFlag::O_CLOEXEC
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY;
    let fd = loop {
        match open(path, flags, Mode::from_bits_truncate(mode & 0o7777)) {
            Ok(fd) => break fd,
            Err(Errno::EINTR) => continue,
            Err(Errno::EISDIR) => return Err(OpenError::NotRegular(FileKind::Directory)),
            Err(Errno::ELOOP) => {
                // ELOOP is also "too many symlinks in a parent"; only call it
                // a symlink when the last component is one.
                return Err(match lstat(path) {
                    Ok(st) => match kind_of(&st) {
                        Some(kind) => OpenError::NotRegular(kind),
                        None => OpenError::Io(io::Error::from(Errno::ELOOP)),
                    },
                    Err(_) => OpenError::Io(io::Error::from(Errno::ELOOP)),
                });
            }
            Err(e) => return Err(OpenError::Io(e.into())),
        }
    };
    let st = fstat(&fd).map_err(|e| OpenError::Io(e.into()))?;
    match kind_of(&st) {
        None => Ok(fd),
        Some(kind) => Err(OpenError::NotRegular(kind)),
    }
}

/// The two OFD lock types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordLock {
    /// `F_WRLCK`: excludes everyone.
    Write,
    /// `F_UNLCK`: drop what this open file description holds.
    Unlock,
}

fn whole_file(kind: RecordLock) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct of integers, for which all
    // zero bytes is a valid value. Zeroing (rather than a struct literal)
    // also clears padding and any platform-specific extra fields, which the
    // kernel copies in whole.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        RecordLock::Write => libc::F_WRLCK,
        RecordLock::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however it grows.
    // l_pid = 0: required for OFD locks (EINVAL otherwise).
    fl
}

/// One non-blocking `F_OFD_SETLK` on the whole file.
///
/// Returns `Ok(true)` when the lock was taken (or, for
/// [`RecordLock::Unlock`], dropped), `Ok(false)` when someone else holds a
/// conflicting lock. `EINTR` is retried.
pub(crate) fn ofd_setlk(fd: impl AsFd, kind: RecordLock) -> io::Result<bool> {
    let fl = whole_file(kind);
    loop {
        match fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            // POSIX allows either for "held by someone else".
            Err(Errno::EAGAIN) | Err(Errno::EACCES) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The id of the calling process, to tell a guard's owner from a forked child.
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_file_lock_is_zeroed_apart_from_type() {
        let fl = whole_file(RecordLock::Write);
        assert_eq!(fl.l_type, libc::F_WRLCK as libc::c_short);
        assert_eq!((fl.l_start, fl.l_len, fl.l_pid), (0, 0, 0));
    }

    #[test]
    fn two_open_file_descriptions_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let a = open_lock_file(&path, 0o644).unwrap();
        let b = open_lock_file(&path, 0o644).unwrap();
        assert!(ofd_setlk(&a, RecordLock::Write).unwrap());
        assert!(!ofd_setlk(&b, RecordLock::Write).unwrap());
        assert!(ofd_setlk(&a, RecordLock::Unlock).unwrap());
        assert!(ofd_setlk(&b, RecordLock::Write).unwrap());
    }
}
