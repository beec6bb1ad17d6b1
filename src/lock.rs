//! The lock itself: [`LockMgr`] and its [`Builder`].

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{LockError, Operation};
use crate::guard::LockGuard;
use crate::os::{self, OpenError, RecordLock};
use crate::wait::{self, Contender, Failed, Policy, Signal};

/// An inter-process lock guarded by a lock file.
///
/// Cheap to clone: clones share one configuration, so the tasks of a worker
/// pool can each hold one. A `LockMgr` holds no file descriptor and no lock
/// by itself; each [`acquire`](LockMgr::acquire) opens the lock file and
/// each [`LockGuard`] holds it. Locks are not re-entrant: a second
/// `acquire` through the same (or a cloned) `LockMgr` while a guard is alive
/// waits like any other caller.
///
/// See the [crate documentation](crate) for the semantics and an example.
#[derive(Clone)]
pub struct LockMgr {
    inner: Arc<Config>,
}

struct Config {
    path: Arc<Path>,
    max_attempts: u32,
    create_dirs: bool,
    mode: u32,
}

/// Options for a [`LockMgr`], from [`LockMgr::builder`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let lock = lockmgr::LockMgr::builder(dir.path().join("locks/app.lock"))
///     .max_attempts(3)
///     .create_dirs(true)
///     .mode(0o600)
///     .build();
/// let guard = lock.try_acquire()?;
/// # drop(guard);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct Builder {
    path: PathBuf,
    max_attempts: u32,
    create_dirs: bool,
    mode: u32,
}

impl Builder {
    /// How many timed attempts [`LockMgr::acquire`] makes before it gives up
    /// with [`LockError::TimedOut`]. Default 10; 0 is taken as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Whether to create the lock file's missing parent directories.
    /// Default false: a missing directory gives
    /// [`LockError::MissingParent`].
    pub fn create_dirs(mut self, create: bool) -> Self {
        self.create_dirs = create;
        self
    }

    /// Permission bits for a newly created lock file (the process umask
    /// applies). Default `0o644`. An existing file keeps its permissions.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o7777;
        self
    }

    /// Builds the [`LockMgr`]. Touches no file: problems with the path show
    /// up on the first acquire.
    pub fn build(self) -> LockMgr {
        LockMgr {
            inner: Arc::new(Config {
                path: self.path.into(),
                max_attempts: self.max_attempts,
                create_dirs: self.create_dirs,
                mode: self.mode,
            }),
        }
    }
}

/// One caller's contention for the lock: its own open file description,
/// kept open across tries so that a waiter's retries do not wake the other
/// waiters (every close of the file is an event to them).
struct FileContender<'a> {
    config: &'a Config,
    fd: OwnedFd,
}

impl Contender for FileContender<'_> {
    type Error = LockError;

    fn try_once(&mut self, attempt: u32) -> Result<bool, LockError> {
        let won = os::ofd_setlk(&self.fd, RecordLock::Write)
            .map_err(|e| LockError::io(&self.config.path, Operation::Lock, e))?;
        tracing::debug!(path = %self.config.path.display(), attempt, won, "lock try");
        Ok(won)
    }
}

impl<'a> FileContender<'a> {
    fn open(config: &'a Config) -> Result<Self, LockError> {
        let path = &config.path;
        if path.as_os_str().is_empty() {
            return Err(LockError::InvalidPath {
                path: path.to_path_buf(),
                reason: "the path is empty",
            });
        }
        let fd = match os::open_lock_file(path, config.mode) {
            Err(OpenError::Io(e))
                if e.kind() == io::ErrorKind::NotFound && !parent_exists(path) =>
            {
                if !config.create_dirs {
                    return Err(LockError::MissingParent {
                        path: path.to_path_buf(),
                    });
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| LockError::io(path, Operation::CreateDir, e))?;
                }
                os::open_lock_file(path, config.mode)
            }
            other => other,
        };
        let fd = fd.map_err(|e| match e {
            OpenError::NotRegular(kind) => LockError::NotAFile {
                path: path.to_path_buf(),
                kind,
            },
            OpenError::Io(e) => LockError::io(path, Operation::Open, e),
        })?;
        Ok(FileContender { config, fd })
    }

    fn into_guard(self) -> LockGuard {
        LockGuard::new(File::from(self.fd), self.config.path.clone())
    }
}

/// Whether the directory that would hold `path` exists (so that `ENOENT`
/// from an `O_CREAT` open means something else, e.g. a pseudo file system).
fn parent_exists(path: &Path) -> bool {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.is_dir(),
        _ => true,
    }
}

impl LockMgr {
    /// A lock on the file at `path`, with default options.
    ///
    /// Same as `LockMgr::builder(path).build()`. Touches no file.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = lockmgr::LockMgr::new("/run/myapp/jobs.lock");
    /// assert_eq!(lock.path(), std::path::Path::new("/run/myapp/jobs.lock"));
    /// assert_eq!(lock.max_attempts(), 10);
    /// ```
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::builder(path).build()
    }

    /// A [`Builder`] for a lock on the file at `path`.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = lockmgr::LockMgr::builder("/run/myapp/jobs.lock")
    ///     .max_attempts(3)
    ///     .build();
    /// assert_eq!(lock.max_attempts(), 3);
    /// ```
    pub fn builder(path: impl Into<PathBuf>) -> Builder {
        Builder {
            path: path.into(),
            max_attempts: 10,
            create_dirs: false,
            mode: 0o644,
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many timed attempts [`acquire`](LockMgr::acquire) makes.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// Takes the lock, waiting for it if `wait` is true.
    ///
    /// The lock file is opened (created if missing, never truncated) and
    /// locked with a non-blocking `F_OFD_SETLK` write lock on the whole
    /// file. If another owner (another process, or another task of this
    /// process) holds it:
    ///
    /// - `wait == false`, or `timeout` is zero: fails at once with
    ///   [`LockError::WouldBlock`].
    /// - `wait == true`: waits in up to [`max_attempts`](Builder::max_attempts)
    ///   attempts of up to `timeout` each. The task sleeps on inotify events
    ///   for the lock file (closes, removal) shared with every other waiter
    ///   of the process; it does not poll, and it never blocks a runtime
    ///   thread. An event that does not lead to the lock (another waiter
    ///   won, someone opened and closed the file) does not use up an
    ///   attempt; only the attempt's deadline does. The total wait is
    ///   bounded by `timeout * max_attempts`; a product past what
    ///   [`Instant`](std::time::Instant) can hold (e.g. `Duration::MAX`)
    ///   means "as long as it takes".
    ///
    /// The runtime must have its time driver enabled (`enable_all` or
    /// `enable_time`).
    ///
    /// # Errors
    ///
    /// - [`LockError::WouldBlock`]: held elsewhere and not waiting.
    /// - [`LockError::TimedOut`]: still held when every attempt expired.
    /// - [`LockError::NotAFile`], [`LockError::MissingParent`],
    ///   [`LockError::InvalidPath`]: the path cannot be a lock file;
    ///   nothing was touched.
    /// - [`LockError::Io`]: a system call failed; the error names it.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe in the sense that matters for a lock:
    /// dropping the future at any await point leaves no lock held, no file
    /// descriptor open and no inotify watch behind. A lock that was won is
    /// only ever won together with the guard that is returned. The caller's
    /// place among the waiters is not kept (there is no queue to keep it
    /// in: the kernel decides who wins each release).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockmgr::{LockError, LockMgr};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = LockMgr::new(dir.path().join("jobs.lock"));
    /// let guard = lock.acquire(true, Duration::from_secs(30)).await?;
    ///
    /// // Held: a second caller that does not wait is turned away.
    /// let err = lock.acquire(false, Duration::ZERO).await.unwrap_err();
    /// assert!(matches!(err, LockError::WouldBlock { .. }));
    ///
    /// drop(guard);
    /// let again = lock.acquire(false, Duration::ZERO).await?;
    /// # drop(again);
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, wait: bool, timeout: Duration) -> Result<LockGuard, LockError> {
        let started = Instant::now();
        let mut contender = FileContender::open(&self.inner)?;
        if contender.try_once(1)? {
            return Ok(contender.into_guard());
        }
        if !wait || timeout.is_zero() {
            return Err(self.would_block());
        }
        tracing::info!(path = %self.inner.path.display(), "waiting for lock on {}", self.inner.path.display());
        // The watch goes in before the next try: a release between that try
        // and the sleep is then an event, not a lost wake-up.
        let mut signal = Signal::watch(contender.fd.as_fd());
        let policy = Policy {
            timeout,
            max_attempts: self.inner.max_attempts,
        };
        match wait::wait(&mut contender, &mut signal, policy, started).await {
            Ok(()) => Ok(contender.into_guard()),
            Err(Failed::Error(e)) => Err(e),
            Err(Failed::TimedOut { attempts, waited }) => Err(LockError::TimedOut {
                path: self.inner.path.to_path_buf(),
                attempts,
                waited,
            }),
        }
    }

    /// Takes the lock if it is free, without waiting and without needing a
    /// runtime.
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] when it is held elsewhere; otherwise as
    /// [`acquire`](LockMgr::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = lockmgr::LockMgr::new(dir.path().join("cron.lock"));
    /// let guard = lock.try_acquire()?;
    /// assert!(lock.try_acquire().unwrap_err().is_contended());
    /// guard.release()?;
    /// # Ok(()) }
    /// ```
    pub fn try_acquire(&self) -> Result<LockGuard, LockError> {
        let mut contender = FileContender::open(&self.inner)?;
        if contender.try_once(1)? {
            Ok(contender.into_guard())
        } else {
            Err(self.would_block())
        }
    }

    fn would_block(&self) -> LockError {
        LockError::WouldBlock {
            path: self.inner.path.to_path_buf(),
        }
    }
}

impl fmt::Debug for LockMgr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockMgr")
            .field("path", &self.inner.path)
            .field("max_attempts", &self.inner.max_attempts)
            .field("create_dirs", &self.inner.create_dirs)
            .field("mode", &format_args!("{:#o}", self.inner.mode))
            .finish()
    }
}
