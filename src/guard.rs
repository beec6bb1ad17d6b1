//! [`LockGuard`]: the guard that holds a file lock until it is dropped.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use crate::contender::Held;
use crate::error::LockError;
use crate::vocab::{LockKind, LockMode};

/// Proof that the lock is held. Dropping it releases the lock.
///
/// Release closes the lock file's descriptor: the kernel drops the lock, and
/// the close is what wakes waiters in other processes (a bare `F_UNLCK`
/// without a close sends no inotify event). In the process that took the
/// lock the guard first unlocks explicitly, so that a waiter woken by the
/// close finds the lock already free. A guard dropped in a forked child only
/// closes its copy and leaves the parent's lock alone.
///
/// The guard gives access to the locked file ([`LockGuard::file`],
/// [`AsFd`]), so a data file can serve as its own lock. Do not keep a
/// duplicate of the descriptor (`try_clone`, `dup`) beyond the guard: the
/// lock belongs to the open file description and lives as long as any copy.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let lock = lockmgr::LockMgr::new(dir.path().join("app.lock"));
/// {
///     let guard = lock.try_acquire()?;
///     assert!(lock.try_acquire().is_err());
/// } // dropped: released
/// let guard = lock.try_acquire()?;
/// guard.release()?; // released, with errors reported
/// # Ok(()) }
/// ```
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    held: Held,
}

impl LockGuard {
    pub(crate) fn new(held: Held) -> Self {
        LockGuard { held }
    }

    /// Whether this guard holds the lock exclusively or shared.
    pub fn lock_mode(&self) -> LockMode {
        self.held.mode()
    }

    /// The lock family held.
    pub fn kind(&self) -> LockKind {
        self.held.kind()
    }

    /// The lock file's path.
    ///
    /// ```
    /// # fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.lock");
    /// let guard = lockmgr::LockMgr::new(&path).try_acquire()?;
    /// assert_eq!(guard.path(), path);
    /// # Ok(()) }
    /// ```
    pub fn path(&self) -> &Path {
        self.held.path()
    }

    /// The locked file (never truncated by the crate). Writes go through
    /// `&File`. It is open for reading and writing, except where this
    /// process may only read the file and the lock needs no more: a shared
    /// lock, or any `flock` lock (writes then fail with `EBADF`).
    ///
    /// # Examples
    ///
    /// A data file that is its own lock (so no holder record goes into it):
    ///
    /// ```
    /// use std::io::{Seek, SeekFrom, Write};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("state.txt");
    /// let lock = lockmgr::LockMgr::builder(&path).record_holder(false).build();
    /// let guard = lock.try_acquire()?;
    /// let mut f = guard.file();
    /// f.set_len(0)?;
    /// f.seek(SeekFrom::Start(0))?;
    /// f.write_all(b"generation 2\n")?;
    /// drop(guard);
    /// assert_eq!(std::fs::read_to_string(&path)?, "generation 2\n");
    /// # Ok(()) }
    /// ```
    pub fn file(&self) -> &File {
        self.held.file()
    }

    /// This holding's fencing token, when the lock was built with
    /// [`fencing_tokens(true)`](crate::LockMgrBuilder::fencing_tokens) and
    /// held exclusively: greater than the token of every earlier exclusive
    /// holding of the lock file. Pass it along with every write the lock
    /// protects, and have the store refuse writes with a token lower than
    /// one it has seen: a holder that was paused past its turn cannot then
    /// overwrite its successor's work. `None` when no token was drawn.
    pub fn fencing_token(&self) -> Option<u64> {
        self.held.token
    }

    /// Releases the lock now and reports what went wrong, if anything.
    /// Dropping the guard does the same and logs errors instead.
    ///
    /// # Errors
    ///
    /// [`LockError::Io`] with [`Operation::Unlock`](crate::Operation::Unlock)
    /// or [`Operation::Close`](crate::Operation::Close) (or
    /// [`Operation::Remove`](crate::Operation::Remove) with
    /// `remove_on_release`). Even then the descriptor is closed, and with it
    /// the lock.
    pub fn release(mut self) -> Result<(), LockError> {
        self.held.release()
    }
}

impl AsFd for LockGuard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file().as_fd()
    }
}

impl AsRawFd for LockGuard {
    fn as_raw_fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.path())
            .field("fd", &self.file().as_raw_fd())
            .field("kind", &self.kind())
            .field("mode", &self.lock_mode())
            .field("owner_pid", &self.held.owner_pid())
            .field("fencing_token", &self.held.token)
            .finish()
    }
}
