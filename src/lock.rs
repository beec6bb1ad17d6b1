//! The public face of file locks: [`LockMgr`] and its [`LockMgrBuilder`].
//! The work is done by the engine in [`crate::contender`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::sync::Arc;
use std::time::Duration;

use crate::contender::{self, LockConfig};
use crate::error::{LockError, LockId};
use crate::guard::LockGuard;
use crate::holder::Holder;
use crate::holders::{Holders, LockedFile};
use crate::slots;
use crate::telemetry::Meter;
use crate::vocab::{LockKind, LockMode, Status};
use crate::wait::Policy;

/// An inter-process lock guarded by a lock file.
///
/// Cheap to clone: clones share one configuration, so the tasks of a worker
/// pool can each hold one. A `LockMgr` holds no file descriptor and no lock
/// by itself; each [`acquire`](LockMgr::acquire) opens the lock file and
/// each [`LockGuard`] holds it. Locks are not re-entrant: a second
/// `acquire` through the same (or a cloned) `LockMgr` while a guard is alive
/// waits like any other caller.
///
/// # Fairness
///
/// The waiting tasks of one process are served first come, first served,
/// in one line per lock file; between processes, whoever tries first once
/// the lock is free wins (the kernel keeps no order among OFD lock tries),
/// and a release always goes through the kernel: a busy process cannot
/// keep the lock to itself by handing it from task to task.
///
/// # Drop
///
/// Dropping the [`LockGuard`] (or ending the task that owns it) releases
/// the lock; so does the death of the process, even by `kill -9`. Waiters
/// in other processes learn of a release that closes the file at once.
///
/// See the [crate documentation](crate) for the semantics and an example.
#[derive(Clone)]
pub struct LockMgr {
    inner: Arc<LockConfig>,
}

/// Options for a [`LockMgr`], from [`LockMgr::builder`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// use lockmgr::{LockKind, LockMgr};
/// let lock = LockMgr::builder(dir.path().join("locks/app.lock"))
///     .max_attempts(3)
///     .create_dirs(true)
///     .mode(0o600)
///     .kind(LockKind::Ofd)
///     .label("nightly backup")
///     .build();
/// let guard = lock.try_acquire()?;
/// # drop(guard);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct LockMgrBuilder {
    path: PathBuf,
    max_attempts: u32,
    create_dirs: bool,
    mode: u32,
    kind: LockKind,
    label: Option<String>,
    metrics_label: Option<String>,
    fencing: bool,
    record_holder: bool,
    remove_on_release: bool,
    create_file: bool,
}

impl LockMgrBuilder {
    /// Whether a missing lock file is created (the default) or is an error
    /// (`NotFound`): for a reader that must never leave a file where
    /// another program's would be (the journal opened read-only).
    pub(crate) fn create_file(mut self, create: bool) -> Self {
        self.create_file = create;
        self
    }

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

    /// The lock family: [`LockKind::Ofd`] (default) or [`LockKind::Flock`]
    /// to exclude (and be excluded by) `flock(1)`, Python `filelock` and
    /// other `flock(2)` users. See the README's interop table.
    pub fn kind(mut self, kind: LockKind) -> Self {
        self.kind = kind;
        self
    }

    /// A label for the holder record (e.g. the job's name), shown in
    /// contention messages. Default none. The record is one line of at
    /// most 1,024 bytes, which a reader reads whole: a label longer than
    /// the room left (about 850 bytes as recorded with a short host name,
    /// less with a fencing token, where a space, `%`, `=`,
    /// a control character or any non-ASCII byte takes three) is cut, at a
    /// character, to fit.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Whether an exclusive holder writes its [holder record](crate::Holder)
    /// into the lock file. Default true.
    ///
    /// The record is written only after the lock is won, and only into a
    /// file that is empty or already holds a record: a file with other
    /// content is never overwritten. Turn it off when the lock file is a
    /// data file of yours.
    pub fn record_holder(mut self, record: bool) -> Self {
        self.record_holder = record;
        self
    }

    /// Whether an exclusive holder removes the lock file when it releases
    /// the lock. Default false: keeping the file is the safe choice.
    ///
    /// Removal is done without breaking mutual exclusion: the holder unlinks
    /// the path *while still holding* the lock, and every acquirer, after
    /// winning, checks that its file is still the one at the path (same
    /// device and inode); if not, it lets go, opens the path anew and tries
    /// again. This only works if **every** process using the lock file
    /// follows it: set it on every `LockMgr` of that path, and let no other
    /// tool delete the file.
    pub fn remove_on_release(mut self, remove: bool) -> Self {
        self.remove_on_release = remove;
        self
    }

    /// Whether each exclusive holding draws a fencing token
    /// ([`LockGuard::fencing_token`]): a number greater than that of every
    /// earlier exclusive holding of this lock file, by any process that
    /// locks it in the same family ([`LockKind`]: holders of two families
    /// do not exclude each other on most file systems), kept in the holder
    /// record under the lock. Default off (drawing one writes
    /// the record on every acquire).
    ///
    /// The sequence survives holders killed while holding (the record is
    /// written under the lock, before the guard is returned) and process
    /// restarts; holders that draw no token keep the latest one in their
    /// record. It does not survive the lock file: with
    /// [`remove_on_release`](LockMgrBuilder::remove_on_release), or a file
    /// deleted or rewritten by anything else, a new file starts again at 1.
    /// The record is written without `fsync`: a machine that loses power
    /// may lose the latest tokens. No token is drawn when no record can be
    /// written: [`record_holder(false)`](LockMgrBuilder::record_holder), a
    /// file opened read-only, a file holding other data; a `warn` event
    /// names the lock and why, once per `LockMgr`.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = lockmgr::LockMgr::builder(dir.path().join("ledger.lock"))
    ///     .fencing_tokens(true)
    ///     .build();
    /// let first = lock.try_acquire()?.fencing_token().expect("drawn");
    /// let second = lock.try_acquire()?.fencing_token().expect("drawn");
    /// assert!(second > first);
    /// # Ok(()) }
    /// ```
    pub fn fencing_tokens(mut self, draw: bool) -> Self {
        self.fencing = draw;
        self
    }

    /// The `label` of this lock's metrics (with the `metrics` feature; see
    /// the crate's [Metrics](crate#metrics) section): a name for a group of
    /// locks, such as the job or the resource type. Keep the set of values
    /// small: never a path, a user or a request id. Empty when not set.
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.metrics_label = Some(label.into());
        self
    }

    /// Builds the [`LockMgr`]. Touches no file: problems with the path show
    /// up on the first acquire. A relative path is taken against the current
    /// directory now: the lock stays on that file if the process changes
    /// its directory later (a daemon's `chdir("/")`), and is named by its
    /// absolute path (in [`path`](LockMgr::path) and errors).
    pub fn build(self) -> LockMgr {
        let path = absolute(self.path);
        let kind = match self.kind {
            LockKind::Flock => "flock",
            _ => "ofd",
        };
        LockMgr {
            inner: Arc::new(LockConfig {
                meter: Meter::new(kind, self.metrics_label.as_deref()),
                id: LockId::file(&path),
                path: path.into(),
                max_attempts: self.max_attempts,
                create_dirs: self.create_dirs,
                create_file: self.create_file,
                mode: self.mode,
                kind: self.kind,
                label: self.label,
                record_holder: self.record_holder,
                fencing: self.fencing,
                remove_on_release: self.remove_on_release,
                network_warned: AtomicBool::new(false),
                unfenced_warned: AtomicBool::new(false),
                emptied_warned: AtomicBool::new(false),
                fs: AtomicU8::new(contender::FS_UNKNOWN),
                network_turn: tokio::sync::Mutex::new(()),
                last_record: std::sync::Mutex::new(None),
            }),
        }
    }
}

/// `path`, made absolute against the current directory: a lock's file must
/// not change with the directory the process is in. Kept as it is when no
/// current directory can be had, for the empty path (refused when used),
/// and when the absolute path would be longer than the kernel takes
/// (`PATH_MAX`: a directory nested that deep is still usable by relative
/// paths, as `flock(1)` uses it). Symbolic links and `..` are left for each
/// use to resolve, and the path is joined as written (`std::path::absolute`
/// would drop a final `.`, and `new/.`, which names no file, would name
/// the file `new`).
pub(crate) fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() || path.as_os_str().is_empty() {
        return path;
    }
    // A leading `./` says nothing once the directory is written out.
    use std::os::unix::ffi::OsStrExt;
    let mut rel = path.as_os_str().as_bytes();
    while let Some(rest) = rel.strip_prefix(b"./").filter(|r| !r.is_empty()) {
        rel = rest;
        while rel.len() > 1 && rel[0] == b'/' {
            rel = &rel[1..];
        }
    }
    match std::env::current_dir() {
        Ok(cwd) => {
            let mut full = cwd.into_os_string();
            // `/` as the current directory (a service's) ends in one.
            if !full.as_bytes().ends_with(b"/") {
                full.push("/");
            }
            full.push(std::ffi::OsStr::from_bytes(rel));
            if full.len() < nix::libc::PATH_MAX as usize {
                PathBuf::from(full)
            } else {
                path
            }
        }
        Err(_) => path,
    }
}

/// How many times [`LockMgr::acquire_all`] starts over in a new order
/// before it goes on in the one it has: each start over follows a lock
/// file replaced under it, so more than a few means files are replaced
/// without end, and each round costs every lock's budget again.
const MAX_REORDERS: u32 = 16;

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

    /// A [`LockMgrBuilder`] for a lock on the file at `path`.
    ///
    /// # Examples
    ///
    /// ```
    /// let lock = lockmgr::LockMgr::builder("/run/myapp/jobs.lock")
    ///     .max_attempts(3)
    ///     .build();
    /// assert_eq!(lock.max_attempts(), 3);
    /// ```
    pub fn builder(path: impl Into<PathBuf>) -> LockMgrBuilder {
        LockMgrBuilder {
            path: path.into(),
            max_attempts: 10,
            create_dirs: false,
            mode: 0o644,
            kind: LockKind::Ofd,
            label: None,
            metrics_label: None,
            fencing: false,
            record_holder: true,
            remove_on_release: false,
            create_file: true,
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

    /// The lock family this lock uses.
    pub fn kind(&self) -> LockKind {
        self.inner.kind
    }

    /// Takes the lock exclusively, waiting for it if `wait` is true.
    ///
    /// The lock file is opened (created if missing, never truncated) and
    /// locked with a non-blocking whole-file write lock (`F_OFD_SETLK`, or
    /// `flock(LOCK_EX | LOCK_NB)` for [`LockKind::Flock`]). Once won, the
    /// holder record is written (see [`LockMgrBuilder::record_holder`]). If another
    /// owner (another process, or another task of this process) holds it:
    ///
    /// - `wait == false`, or `timeout` is zero: fails at once with
    ///   [`LockError::WouldBlock`].
    /// - `wait == true`: waits in up to [`max_attempts`](LockMgrBuilder::max_attempts)
    ///   attempts of up to `timeout` each. For its first 500 ms the task
    ///   sleeps on inotify close events for the file, read by its own
    ///   runtime, so that a release that closes the file (or a holder's
    ///   death) wakes this task's runtime thread and no other; it also
    ///   tries every 500 ms, for releases that close nothing. After that
    ///   the wait settles into the kernel's own lock queue (`F_OFD_SETLKW`,
    ///   or a blocking `flock`, on a helper thread), which wakes it, with
    ///   the lock granted, the moment the lock can be had, however it was
    ///   released, with no timer and no poll meanwhile; a release that
    ///   closes the file also wakes this task's runtime thread directly,
    ///   and whichever of the two comes first hands the lock over. It polls only on network
    ///   file systems (and when neither inotify nor a helper thread can be
    ///   had). The attempts state the budget, not a schedule of tries: the
    ///   total wait is bounded by `timeout * max_attempts` (on a network
    ///   file system, by at least the 1 s its first try is given), and a product
    ///   past what [`Instant`](std::time::Instant) can hold (e.g.
    ///   `Duration::MAX`) means "as long as it takes".
    ///
    /// The calls into the file system (open, lock, stat, record, close) are
    /// system calls made on the calling thread, which on a local file system
    /// take microseconds. Once a lock is known to be on a network or FUSE
    /// file system (from its first open), where any call may stall for
    /// seconds, they run on blocking threads instead, so a stalled mount
    /// never blocks a runtime thread and the wait's budget still bounds the
    /// call (the error is then [`LockError::Io`] with `TimedOut`), though
    /// the first try is given 1 s to be answered whatever the budget.
    ///
    /// Waiters of one process line up first come, first served (per file,
    /// whatever path names it). Only the first in line opens the file and
    /// waits, beside the waiters of other processes (the kernel decides who
    /// gets a released lock); the others hold no descriptor, so thousands
    /// of waiting tasks cost no more than one.
    ///
    /// The runtime must have its time and I/O drivers enabled
    /// (`enable_all`, as `#[tokio::main]` and `#[tokio::test]` do). The
    /// budget follows Tokio's clock, paused or advanced by
    /// `tokio::time::pause` included, with one exception: a wait that
    /// settles in the kernel (after 500 ms) while Tokio's clock runs with
    /// the real one has its deadline timed by a kernel timer from then on
    /// (it wakes the runtime once, at the deadline), which a later pause
    /// does not move. Likewise the end of those first 500 ms, when the wait
    /// began on a running clock. A waiting future may move to another
    /// runtime: its timers and registrations are made anew there.
    ///
    /// # Errors
    ///
    /// - [`LockError::WouldBlock`]: held elsewhere and not waiting; names
    ///   the holder when its record is readable.
    /// - [`LockError::TimedOut`]: still held when every attempt expired.
    /// - [`LockError::NotAFile`], [`LockError::MissingParent`],
    ///   [`LockError::Invalid`]: the path cannot be a lock file;
    ///   nothing was touched.
    /// - [`LockError::ReadOnly`]: an exclusive OFD lock on a file this
    ///   process may only read (shared locks and `flock` locks need no
    ///   write access).
    /// - [`LockError::Unsupported`]: the file system refuses this lock kind.
    /// - [`LockError::Io`]: a system call failed; the error names it.
    ///
    /// # Cancel safety
    ///
    /// This method is cancel safe in the sense that matters for a lock:
    /// dropping the future at any await point leaves no lock held. A lock
    /// that was won is only ever won together with the guard that is
    /// returned. The caller's place in this process's line of waiters is
    /// given up, and the next task in line moves up. A wait that had
    /// settled in the kernel is taken over by that task (a blocked system
    /// call cannot be called off); with no task left to take it over, it
    /// ends, with its helper thread and descriptor, when the lock is next
    /// free: the helper then holds the lock for an instant and gives it
    /// back at once. A new call joins at the back.
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
    /// // Held: a second caller that does not wait is turned away, and told
    /// // who holds the lock.
    /// let err = lock.acquire(false, Duration::ZERO).await.unwrap_err();
    /// assert!(matches!(err, LockError::WouldBlock { .. }));
    /// assert_eq!(err.holder().unwrap().pid, std::process::id());
    ///
    /// drop(guard);
    /// let again = lock.acquire(false, Duration::ZERO).await?;
    /// # drop(again);
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, wait: bool, timeout: Duration) -> Result<LockGuard, LockError> {
        self.lock(LockMode::Exclusive, wait, timeout).await
    }

    /// Takes the lock shared, waiting for it if `wait` is true.
    ///
    /// Any number of shared holders, in any processes and tasks, hold the
    /// lock together; an exclusive holder excludes them all, and they
    /// exclude it. A shared waiter wakes when the exclusive holder leaves;
    /// an exclusive waiter wakes when the last shared holder leaves. Shared
    /// holders write no holder record, and may use a lock file they can
    /// only read.
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockMgr::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](LockMgr::acquire): dropping the future leaves nothing
    /// behind.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockmgr::{LockMgr, LockMode};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = LockMgr::new(dir.path().join("catalog.lock"));
    /// let r1 = lock.acquire_shared(true, Duration::from_secs(5)).await?;
    /// let r2 = lock.acquire_shared(true, Duration::from_secs(5)).await?;
    /// assert_eq!(r2.lock_mode(), LockMode::Shared);
    /// // A writer has to wait for both readers.
    /// assert!(lock.try_acquire().unwrap_err().is_contended());
    /// drop((r1, r2));
    /// let writer = lock.try_acquire()?;
    /// # drop(writer);
    /// # Ok(()) }
    /// ```
    pub async fn acquire_shared(
        &self,
        wait: bool,
        timeout: Duration,
    ) -> Result<LockGuard, LockError> {
        self.lock(LockMode::Shared, wait, timeout).await
    }

    /// Takes the lock exclusively if it is free, without waiting and without
    /// needing a runtime.
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
        self.try_lock(LockMode::Exclusive)
    }

    /// Takes every lock of `locks` exclusively, as one: all of them, or
    /// none. They are taken in one order that every caller shares (by the
    /// lock files' device and inode numbers, whatever order `locks` gives
    /// and whatever paths name the files), so two callers that ask for
    /// overlapping sets never wait for each other in a circle. Each lock
    /// waits as [`acquire`](LockMgr::acquire) does with `wait` and
    /// `timeout` (and its own attempts); when one cannot be had, the ones
    /// already taken are released before the error is returned. The guards
    /// come back in the order of `locks`.
    ///
    /// The order is of the files at the paths when the call starts. A file
    /// may be replaced meanwhile (`remove_on_release`, another program's
    /// rename), and the file now at the next path may sort before a lock
    /// already taken: then, before it is waited for, every lock taken is
    /// let go and the call starts over in the new order, each lock with its
    /// whole budget again (at most 16 times; after that it goes on in the
    /// order it has, but for two paths that now name one file, which are
    /// refused as `Invalid`). One case is not caught: a file replaced
    /// *during* the wait for it (or created by that wait) by one that sorts
    /// before a lock already held, whose holder waits for that lock; the two
    /// then wait for each other until one's budget ends.
    ///
    /// # Errors
    ///
    /// As [`acquire`](LockMgr::acquire), for the first lock that could not
    /// be had; [`LockError::Invalid`] when two of `locks` are one file
    /// (a second open file description of it could never be granted).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future releases the locks taken so far; see
    /// [`acquire`](LockMgr::acquire) for the one being waited for.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockmgr::LockMgr;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let from = LockMgr::new(dir.path().join("account-17.lock"));
    /// let to = LockMgr::new(dir.path().join("account-42.lock"));
    /// // Another task may ask for [to, from]: neither waits for the other forever.
    /// let guards = LockMgr::acquire_all(&[from, to], true, Duration::from_secs(5)).await?;
    /// assert_eq!(guards.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn acquire_all(
        locks: &[LockMgr],
        wait: bool,
        timeout: Duration,
    ) -> Result<Vec<LockGuard>, LockError> {
        let mut reorders = 0;
        'order: loop {
            let mut order = Vec::with_capacity(locks.len());
            // Kept open until the order is known (see `identity`).
            let mut open = Vec::with_capacity(locks.len());
            for (i, lock) in locks.iter().enumerate() {
                let (fd, file) = contender::identity(&lock.inner)?;
                open.push(fd);
                order.push((file, i));
            }
            order.sort();
            if let Some(pair) = order.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(LockError::Invalid {
                    lock: locks[pair[1].1].inner.id.clone(),
                    reason: format!(
                        "it is the same file as {}: one call cannot take a lock file twice",
                        locks[pair[0].1].inner.id
                    ),
                });
            }
            drop(open);
            let mut guards: Vec<Option<LockGuard>> = locks.iter().map(|_| None).collect();
            // The files taken in this round, in the order.
            let mut taken = Vec::with_capacity(order.len());
            for &(_, i) in &order {
                // The file at the path may have been replaced since the
                // order was taken (`remove_on_release`, a rename), by one
                // that sorts before a lock already held: waiting for it
                // then could close a circle with a caller that ordered
                // after the change. Let everything go and start over in
                // the new order (a bounded number of times; always for a
                // file held already, two paths to one file now, which the
                // new order refuses where waiting would wait for itself).
                let now = contender::identity_at(&locks[i].inner);
                if let (Some(now), Some(&held)) = (now, taken.last()) {
                    if taken.contains(&now) || (now < held && reorders < MAX_REORDERS) {
                        reorders += 1;
                        tracing::debug!(
                            lock = %locks[i].inner.id,
                            "lock file was replaced and now sorts before a lock held; \
                             taking the set again in the new order"
                        );
                        drop(guards);
                        continue 'order;
                    }
                }
                // On an error, the guards taken so far drop here: all or none.
                let guard = locks[i].acquire(wait, timeout).await?;
                if let Some(file) = contender::held_identity(&guard) {
                    taken.push(file);
                    taken.sort();
                }
                guards[i] = Some(guard);
            }
            return Ok(guards.into_iter().flatten().collect());
        }
    }

    /// Takes the lock shared if no exclusive holder has it, without waiting
    /// and without needing a runtime.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](LockMgr::try_acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = lockmgr::LockMgr::new(dir.path().join("catalog.lock"));
    /// let reader = lock.try_acquire_shared()?;
    /// let another = lock.try_acquire_shared()?;
    /// # drop((reader, another));
    /// # Ok(()) }
    /// ```
    pub fn try_acquire_shared(&self) -> Result<LockGuard, LockError> {
        self.try_lock(LockMode::Shared)
    }

    /// Who holds the lock exclusively, as recorded in the lock file.
    ///
    /// `Ok(None)` when the lock is free, held shared, or held by someone who
    /// wrote no readable record (another tool, `record_holder(false)`, a
    /// garbled record). The record is for reporting only; whether the lock
    /// is held is asked of the kernel. When the recorded process is of this
    /// host and no longer running, the holder is marked
    /// [`stale`](Holder::stale). The lock file is not created if missing.
    ///
    /// For [`LockKind::Ofd`] this takes no lock (`F_OFD_GETLK`). For
    /// [`LockKind::Flock`], which has no query, it takes the lock
    /// non-blockingly and drops it at once, so a try elsewhere at that very
    /// instant may fail.
    ///
    /// # Errors
    ///
    /// [`LockError::NotAFile`] for a path that is not a regular file, and
    /// [`LockError::Io`] (with [`Operation::Read`](crate::Operation::Read)) when the file cannot be
    /// opened or probed.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = lockmgr::LockMgr::builder(dir.path().join("jobs.lock"))
    ///     .label("reindex")
    ///     .build();
    /// assert!(lock.holder()?.is_none());
    /// let guard = lock.try_acquire()?;
    /// let holder = lock.holder()?.expect("held and recorded");
    /// assert_eq!(holder.pid, std::process::id());
    /// assert_eq!(holder.label.as_deref(), Some("reindex"));
    /// drop(guard);
    /// assert!(lock.holder()?.is_none());
    /// # Ok(()) }
    /// ```
    pub fn holder(&self) -> Result<Option<Holder>, LockError> {
        Ok(match self.status()? {
            Status::Exclusive { holder } => holder,
            Status::Free | Status::Missing | Status::Shared | Status::Semaphore { .. } => None,
        })
    }

    /// Whether the lock is free, held exclusively (and by whom, if
    /// recorded) or held shared, found out without holding it: as for
    /// [`holder`](LockMgr::holder), OFD locks are queried (`F_OFD_GETLK`)
    /// and `flock` locks probed for an instant. A missing lock file is
    /// [`Status::Missing`] and is not created; the file of a
    /// [`Semaphore`](crate::Semaphore) is [`Status::Semaphore`], with how
    /// many of its permits are taken (OFD locks only).
    ///
    /// # Errors
    ///
    /// As [`holder`](LockMgr::holder).
    ///
    /// # Examples
    ///
    /// ```
    /// use lockmgr::{LockMgr, Status};
    /// # fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = LockMgr::new(dir.path().join("jobs.lock"));
    /// assert_eq!(lock.status()?, Status::Missing);
    /// let reader = lock.try_acquire_shared()?;
    /// assert_eq!(lock.status()?, Status::Shared);
    /// drop(reader);
    /// assert_eq!(lock.status()?, Status::Free);
    /// # Ok(()) }
    /// ```
    pub fn status(&self) -> Result<Status, LockError> {
        slots::status(&self.inner)
    }

    /// The processes of this host that hold the lock file, in any lock
    /// family and whatever program they run (`flock(1)`, Python
    /// `filelock`, SQLite, C programs, `lockmgr`), and those that have it
    /// open without holding it, as the kernel tells it through `/proc`.
    /// Takes no lock, and creates no file: a missing file has none.
    ///
    /// Use it to answer "who holds it?" when the holder wrote no record, and
    /// to find a program that locks the file with the other family (see
    /// [`Holders::other_family`]): `flock` and OFD locks do not see each
    /// other.
    ///
    /// # Errors
    ///
    /// [`LockError::NotAFile`] for a path that is not a regular file, and
    /// [`LockError::Io`] (with [`Operation::Read`](crate::Operation::Read))
    /// when the file or `/proc/locks` cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// use lockmgr::{LockFamily, LockMgr};
    /// let lock = LockMgr::new(dir.path().join("jobs.lock"));
    /// let guard = lock.try_acquire()?;
    /// let holders = lock.holders()?;
    /// assert_eq!(holders.holding.len(), 1);
    /// assert_eq!(holders.holding[0].pid, std::process::id());
    /// assert_eq!(holders.holding[0].family, LockFamily::Ofd);
    /// drop(guard);
    /// assert!(lock.holders()?.is_free());
    /// # Ok(()) }
    /// ```
    pub fn holders(&self) -> Result<Holders, LockError> {
        contender::holders(&self.inner)
    }

    /// The configuration the engine works from (for the other public types
    /// built on a lock file).
    pub(crate) fn config(&self) -> &Arc<LockConfig> {
        &self.inner
    }

    fn try_lock(&self, mode: LockMode) -> Result<LockGuard, LockError> {
        contender::try_lock(&self.inner, mode).map(LockGuard::new)
    }

    async fn lock(
        &self,
        mode: LockMode,
        wait: bool,
        timeout: Duration,
    ) -> Result<LockGuard, LockError> {
        let policy = Policy::new(wait, timeout, self.inner.max_attempts);
        contender::lock(&self.inner, mode, policy)
            .await
            .map(LockGuard::new)
    }
}

impl fmt::Debug for LockMgr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockMgr")
            .field("path", &self.inner.path)
            .field("max_attempts", &self.inner.max_attempts)
            .field("create_dirs", &self.inner.create_dirs)
            .field("mode", &format_args!("{:#o}", self.inner.mode))
            .field("kind", &self.inner.kind)
            .field("label", &self.inner.label)
            .field("record_holder", &self.inner.record_holder)
            .field("fencing_tokens", &self.inner.fencing)
            .field("remove_on_release", &self.inner.remove_on_release)
            .finish()
    }
}

/// Every file of this host that is locked now, in any lock family, or that
/// a request is blocked on, with its holders as
/// [`LockMgr::holders`] finds them: what `lockmgr list` prints. Takes no
/// lock. Paths come from the descriptors of the processes that have the
/// files open (`None` when none this caller can see has it open).
///
/// Each locked file is opened for an instant to read its holder record,
/// which wakes the waiters of every lock file of the host once (an open
/// and close is what they watch for). To look at some files only, use
/// [`locked_files_among`].
///
/// # Errors
///
/// When `/proc/locks` or `/proc` cannot be read.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("jobs.lock");
/// let guard = lockmgr::LockMgr::new(&path).try_acquire()?;
/// let meta = std::fs::metadata(&path)?;
/// let listed = lockmgr::locked_files()?;
/// let jobs = listed.iter().find(|f| f.is(&meta)).expect("listed");
/// assert_eq!(jobs.holders.holding[0].pid, std::process::id());
/// # drop(guard);
/// # Ok(()) }
/// ```
pub fn locked_files() -> std::io::Result<Vec<LockedFile>> {
    contender::locked_files(None, slots::semaphore_at)
}

/// [`locked_files`], among `files` only (matched by device and inode, as
/// [`LockedFile::is`] matches): only these are opened to read their
/// records, so the waiters of the host's other lock files are not woken,
/// and only their holders are looked for. What `lockmgr list DIR` asks for
/// the files under DIR.
///
/// # Errors
///
/// When `/proc/locks` or `/proc` cannot be read.
///
/// # Examples
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("jobs.lock");
/// let guard = lockmgr::LockMgr::new(&path).try_acquire()?;
/// let meta = std::fs::metadata(&path)?;
/// let listed = lockmgr::locked_files_among([&meta])?;
/// assert_eq!(listed.len(), 1);
/// assert!(listed[0].is(&meta));
/// # drop(guard);
/// # Ok(()) }
/// ```
pub fn locked_files_among<'a>(
    files: impl IntoIterator<Item = &'a std::fs::Metadata>,
) -> std::io::Result<Vec<LockedFile>> {
    use std::os::unix::fs::MetadataExt;
    let among = files.into_iter().map(|m| (m.dev(), m.ino())).collect();
    contender::locked_files(Some(&among), slots::semaphore_at)
}

/// Opens (creating it if missing, never truncating) a data file for
/// appending, with the lock file's refusals and errors: how the journal
/// opens its file, so that it needs nothing below this face.
pub(crate) fn open_data_file(path: &Path, mode: u32) -> Result<std::fs::File, LockError> {
    contender::open_for_append(path, mode)
}

/// Opens an existing data file for reading only, refusing what
/// [`open_data_file`] refuses.
pub(crate) fn open_data_file_for_reading(path: &Path) -> Result<std::fs::File, LockError> {
    contender::open_for_reading(path)
}

/// The error number of `e`, from [`open_data_file`], when it says only that
/// the file may not be written by this process.
pub(crate) fn write_refused(e: &LockError) -> Option<i32> {
    match e {
        LockError::Io { source, .. } if contender::is_write_refused(source) => {
            source.raw_os_error()
        }
        _ => None,
    }
}

/// The file a guard holds locked, opened anew for appending, whatever is at
/// its path now: a writer appends to the file it holds the lock of, never
/// to one another writer may be writing to (the journal's rotation).
pub(crate) fn reopen_locked_for_append(guard: &LockGuard) -> Result<std::fs::File, LockError> {
    contender::reopen_for_append(guard.file(), guard.path())
}

/// The file a guard holds locked, opened anew for reading only, through a
/// descriptor of its own (see [`reopen_locked_for_append`]).
pub(crate) fn reopen_locked_for_reading(guard: &LockGuard) -> Result<std::fs::File, LockError> {
    contender::reopen_for_reading(guard.file(), guard.path())
}
