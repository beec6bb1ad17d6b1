//! [`Semaphore`]: at most N holders at a time, across processes and tasks.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::LockError;
use crate::lock::{LockMgr, LockMgrBuilder};
use crate::permit::Permit;
use crate::slots;
use crate::wait::Policy;

/// A counting semaphore on one file: at most `permits` holders of a
/// [`Permit`] at a time, across every process and task of the host that
/// uses the file.
///
/// Each permit is an exclusive OFD lock on one byte of the file (far past
/// its first line, which keeps the number of permits): one file, not N. A
/// waiter tries every slot, and then sleeps on the file's close events (a
/// permit is given back by closing its descriptor; a holder killed by
/// `kill -9` gives it back with its descriptors) and tries again; the
/// tasks of one process wait in one line, first come first served, with
/// only its head at the file, so 10,000 waiting tasks cost one descriptor
/// and one watch. Between processes, waiters mark the file as waited for
/// (a shared lock on one byte); a newcomer that finds the mark lets them
/// try first (a 2 ms head start) and then tries like them, so a process
/// that gives a permit back and asks again at once does not keep it from
/// the others (measured alone on a 2-core machine: no process held the
/// only permit more than twice in a row while three processes took it 100
/// times each; beside other busy tests, once 27 times, as woken waiters
/// then take longer than the head start to try).
///
/// Every user of a semaphore file must give the same number of permits: the
/// first one writes it into the empty file, and a different number is
/// refused with [`LockError::Invalid`]. Do not use the file for anything
/// else (in particular, not as a [`LockMgr`] lock file).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lockmgr::Semaphore;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockmgr::LockError> {
/// # let dir = tempfile::tempdir().unwrap();
/// // At most two encoders at a time on this host.
/// let encoders = Semaphore::new(dir.path().join("encoders.sem"), 2);
/// let a = encoders.acquire(true, Duration::from_secs(60)).await?;
/// let b = encoders.acquire(true, Duration::from_secs(60)).await?;
/// assert_ne!(a.slot(), b.slot());
/// assert!(encoders.try_acquire().unwrap_err().is_contended());
/// drop(a);
/// let c = encoders.try_acquire()?;
/// # drop((b, c));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    lock: LockMgr,
    permits: u32,
}

/// Options for a [`Semaphore`], from [`Semaphore::builder`].
#[must_use = "a builder does nothing until build() is called"]
pub struct SemaphoreBuilder {
    lock: LockMgrBuilder,
    permits: u32,
}

impl SemaphoreBuilder {
    /// How many timed attempts [`Semaphore::acquire`] makes before it gives
    /// up with [`LockError::TimedOut`]. Default 10; 0 is taken as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.lock = self.lock.max_attempts(attempts);
        self
    }

    /// Create missing parent directories of the file. Default false.
    pub fn create_dirs(mut self, create: bool) -> Self {
        self.lock = self.lock.create_dirs(create);
        self
    }

    /// The permission bits a new file gets (before the umask). Default 0o644.
    pub fn mode(mut self, mode: u32) -> Self {
        self.lock = self.lock.mode(mode);
        self
    }

    /// Builds the [`Semaphore`]. Touches no file.
    pub fn build(self) -> Semaphore {
        Semaphore {
            lock: self.lock.record_holder(false).build(),
            permits: self.permits,
        }
    }
}

impl Semaphore {
    /// A semaphore of `permits` permits on the file at `path`, with default
    /// options. Touches no file.
    pub fn new(path: impl Into<PathBuf>, permits: u32) -> Semaphore {
        Semaphore::builder(path, permits).build()
    }

    /// A [`SemaphoreBuilder`] for a semaphore of `permits` permits on the
    /// file at `path`.
    pub fn builder(path: impl Into<PathBuf>, permits: u32) -> SemaphoreBuilder {
        SemaphoreBuilder {
            lock: LockMgr::builder(path),
            permits,
        }
    }

    /// The number of permits.
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The semaphore's file.
    pub fn path(&self) -> &Path {
        self.lock.path()
    }

    /// Takes a permit: at once if one is free, else (with `wait`) as soon
    /// as one is given back, within `max_attempts` attempts of `timeout`
    /// each, as [`LockMgr::acquire`] waits.
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] (every permit taken, not waiting),
    /// [`LockError::TimedOut`], [`LockError::Invalid`] (1 to 4096 permits;
    /// a file that holds another number of permits, or other data), and
    /// the errors of opening the file, as for [`LockMgr::acquire`]. On a
    /// network or FUSE file system (known from the semaphore's first
    /// open), where the calls run off the runtime, a mount that does not
    /// answer within the budget (but no less than 1 s for the first try)
    /// gives [`LockError::Io`] of kind `TimedOut`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves no permit taken, and gives up its place
    /// in this process's line.
    ///
    /// # Examples
    ///
    /// See [`Semaphore`].
    pub async fn acquire(&self, wait: bool, timeout: Duration) -> Result<Permit, LockError> {
        let policy = Policy::new(wait, timeout, self.lock.max_attempts());
        slots::acquire(self.lock.config(), self.permits, policy)
            .await
            .map(Permit::new)
    }

    /// Takes a free permit, without waiting and without needing a runtime.
    ///
    /// # Errors
    ///
    /// As [`acquire`](Semaphore::acquire) with `wait == false`.
    ///
    /// # Examples
    ///
    /// See [`Semaphore`].
    pub fn try_acquire(&self) -> Result<Permit, LockError> {
        slots::try_acquire(self.lock.config(), self.permits).map(Permit::new)
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("path", &self.path())
            .field("permits", &self.permits)
            .finish()
    }
}
