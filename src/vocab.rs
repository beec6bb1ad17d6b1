//! The words the public API speaks, shared by every backend: which lock
//! family, which mode, what a path turned out to be, and what a status
//! query found.

use std::fmt;

use crate::holder::Holder;

/// Which kernel lock family a file lock uses.
///
/// The two families do not see each other on Linux: an OFD lock does not
/// exclude a `flock(2)` holder of the same file, nor the other way round.
/// Pick the one the other programs on that lock file use.
///
/// ```
/// use lockmgr::{LockKind, LockMgr};
/// // Interoperate with util-linux flock(1) and Python filelock:
/// let lock = LockMgr::builder("/run/myapp/deploy.lock").kind(LockKind::Flock).build();
/// assert_eq!(lock.kind(), LockKind::Flock);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum LockKind {
    /// Open file description record locks, `fcntl(F_OFD_SETLK)` on the whole
    /// file (the default). Also conflict with POSIX record locks (`lockf`,
    /// `fcntl(F_SETLK)`, Python `fasteners`, SQLite).
    #[default]
    Ofd,
    /// `flock(2)` locks, as used by util-linux `flock(1)`, Python `filelock`,
    /// `zc.lockfile` and the Python `lockmgr` this crate grew from, Rust's
    /// `File::lock`, `fs4` and cargo.
    Flock,
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockKind::Ofd => "ofd",
            LockKind::Flock => "flock",
        })
    }
}

/// A lock family of the Linux kernel, as `/proc/locks` names them: what
/// [`Holders`](crate::Holders) says a holder uses.
///
/// `flock` locks and record locks (OFD and POSIX) do not see each other;
/// OFD and POSIX locks exclude each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum LockFamily {
    /// `flock(2)`: util-linux `flock(1)`, Python `filelock`, [`LockKind::Flock`].
    Flock,
    /// Open file description record locks (`F_OFD_SETLK`): [`LockKind::Ofd`].
    Ofd,
    /// Process-owned POSIX record locks (`F_SETLK`, `lockf`): SQLite,
    /// Python `fcntl.lockf`. `lockmgr` never takes these.
    Posix,
}

impl From<LockKind> for LockFamily {
    fn from(kind: LockKind) -> LockFamily {
        match kind {
            LockKind::Ofd => LockFamily::Ofd,
            LockKind::Flock => LockFamily::Flock,
        }
    }
}

impl LockFamily {
    /// Whether a lock of this family keeps out a lock of `kind`.
    pub fn excludes(self, kind: LockKind) -> bool {
        matches!(
            (self, kind),
            (LockFamily::Flock, LockKind::Flock)
                | (LockFamily::Ofd | LockFamily::Posix, LockKind::Ofd)
        )
    }
}

impl fmt::Display for LockFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockFamily::Flock => "flock",
            LockFamily::Ofd => "ofd",
            LockFamily::Posix => "posix",
        })
    }
}

/// Exclusive (writer) or shared (reader) ownership.
///
/// ```
/// # fn main() -> Result<(), lockmgr::LockError> {
/// # let dir = tempfile::tempdir().unwrap();
/// let lock = lockmgr::LockMgr::new(dir.path().join("data.lock"));
/// let reader = lock.try_acquire_shared()?;
/// assert_eq!(reader.lock_mode(), lockmgr::LockMode::Shared);
/// # drop(reader);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// One holder, excluding all others.
    Exclusive,
    /// Any number of shared holders together, excluding exclusive ones.
    Shared,
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        })
    }
}

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

/// What a status query ([`LockMgr::status`](crate::LockMgr::status), and
/// `PgLockMgr::status` with the `postgres` feature) found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// There is no lock file (so the lock is free). Files only.
    Missing,
    /// Nobody holds the lock.
    Free,
    /// Someone holds it exclusively; `holder` is their record, if readable.
    Exclusive {
        /// The recorded holder.
        holder: Option<Holder>,
    },
    /// One or more shared holders have it.
    Shared,
    /// The file is a [`Semaphore`](crate::Semaphore)'s, of `permits`
    /// permits, `taken` of which are held now (by any process that shares
    /// the file). Asked with OFD locks only: a semaphore takes no `flock`
    /// locks.
    Semaphore {
        /// How many permits the semaphore has.
        permits: u32,
        /// How many of them are held now.
        taken: u32,
    },
}

/// Where a semaphore's file keeps what is not content: one permit slot per
/// byte from [`SLOT_BASE`], far past any content, each taken with an
/// exclusive OFD lock on its byte; and, just before them, two bytes whose
/// locks are marks, not permits ([`is_semaphore_mark`]).
pub(crate) mod semaphore_bytes {
    /// The first slot's byte.
    pub(crate) const SLOT_BASE: i64 = 1 << 40;
    /// The byte every waiting process marks with a shared lock while it
    /// waits: a newcomer that sees the mark lets those waiters go first.
    pub(crate) const WAITING_BYTE: i64 = SLOT_BASE - 1;
    /// The byte the first users of a new semaphore file lock, one at a
    /// time, to write its count.
    pub(crate) const COUNT_BYTE: i64 = SLOT_BASE - 2;

    /// Whether a lock on the one byte at `start` is one of those marks: a
    /// waiter, or a first user writing the count, holds no permit.
    pub(crate) fn is_semaphore_mark(start: u64, end: u64) -> bool {
        start == end && (start == WAITING_BYTE as u64 || start == COUNT_BYTE as u64)
    }
}
