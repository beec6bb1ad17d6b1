//! The guard that holds a lock until it is dropped.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use crate::error::{LockError, Operation};
use crate::os::{self, FileId, LockKind, LockMode};
use crate::queue;

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
    file: Option<File>,
    /// The identity of `file`, which names its in-process line.
    file_id: FileId,
    path: Arc<Path>,
    owner_pid: u32,
    kind: LockKind,
    mode: LockMode,
    remove: bool,
}

impl LockGuard {
    /// `remove`: unlink the path on release (exclusive holders only).
    pub(crate) fn new(
        file: File,
        file_id: FileId,
        path: Arc<Path>,
        kind: LockKind,
        mode: LockMode,
        remove: bool,
    ) -> Self {
        LockGuard {
            file: Some(file),
            file_id,
            path,
            owner_pid: os::current_pid(),
            kind,
            mode,
            remove: remove && mode == LockMode::Exclusive,
        }
    }

    /// Whether this guard holds the lock exclusively or shared.
    pub fn lock_mode(&self) -> LockMode {
        self.mode
    }

    /// The lock family held.
    pub fn kind(&self) -> LockKind {
        self.kind
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
        &self.path
    }

    /// The locked file, open for reading and writing (never truncated by the
    /// crate). Writes go through `&File`.
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
        self.file
            .as_ref()
            .expect("the file is only taken by release")
    }

    /// Releases the lock now and reports what went wrong, if anything.
    /// Dropping the guard does the same and logs errors instead.
    ///
    /// # Errors
    ///
    /// [`LockError::Io`] with [`Operation::Unlock`] or [`Operation::Close`].
    /// Even then the descriptor is closed, and with it the lock.
    pub fn release(mut self) -> Result<(), LockError> {
        self.release_inner()
    }

    fn release_inner(&mut self) -> Result<(), LockError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        let owner = os::current_pid() == self.owner_pid;
        // A forked child shares the open file description: unlocking (or
        // removing the file) there would pull the lock from under the parent.
        // Closing the child's copy does neither.
        if owner {
            if self.remove {
                // Unlinked while still held, so nobody can lock the old file
                // and believe it is the current one (see Builder::remove_on_release).
                result = os::unlink_if_same(&file, &self.path)
                    .map_err(|e| LockError::io(&self.path, Operation::Remove, e));
            }
            let unlocked = os::unlock(&file, self.kind)
                .map_err(|e| LockError::io(&self.path, Operation::Unlock, e));
            result = result.and(unlocked);
        }
        let closed = nix::unistd::close(file)
            .map_err(|e| LockError::io(&self.path, Operation::Close, e.into()));
        tracing::debug!(path = %self.path.display(), mode = %self.mode, "released lock");
        if owner {
            // Only now is the lock free for the next task of this process.
            queue::released(self.file_id);
        }
        result.and(closed)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release_inner() {
            tracing::warn!(error = %e, "lockmgr: error while releasing a lock");
        }
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
            .field("path", &self.path)
            .field("fd", &self.file.as_ref().map(|f| f.as_raw_fd()))
            .field("kind", &self.kind)
            .field("mode", &self.mode)
            .field("owner_pid", &self.owner_pid)
            .finish()
    }
}
