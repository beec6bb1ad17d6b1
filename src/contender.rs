//! The file lock engine under [`LockMgr`](crate::LockMgr) and
//! [`LockGuard`](crate::LockGuard): one caller's contention for a lock file
//! (open, try, wait in line and on events, write the holder record), the
//! held lock and its release, and the status query.
//!
//! It uses the OS layer ([`crate::os`]), the in-process line
//! ([`crate::queue`]) and the waiting loop ([`crate::wait`]); it knows
//! nothing of the public types built on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::clock;
use crate::error::{LockError, LockId, Operation};
use crate::holder::{is_whole_record, record_line, recorded_token, Holder, MAX_RECORD};
use crate::holders::{Holders, HoldingProcess, LockedFile, OpenProcess, Waiting};
use crate::kernel_wait::KernelWait;
use crate::os::{self, FileId, OpenError, Probe};
use crate::proc_locks;
use crate::queue::{self, Promise, Ticket};
use crate::telemetry::Meter;
use crate::vocab::{LockFamily, LockKind, LockMode, Status};
use crate::wait::{self, Cause, Contender, Failed, Policy, Signal, Try};

/// What a file lock is: its path and options, shared by the clones of one
/// `LockMgr`.
#[derive(Debug)]
pub(crate) struct LockConfig {
    pub(crate) path: Arc<Path>,
    /// Where this lock's metrics go.
    pub(crate) meter: Meter,
    /// `path`, as errors name it.
    pub(crate) id: LockId,
    pub(crate) max_attempts: u32,
    pub(crate) create_dirs: bool,
    /// Whether a missing lock file is created (else it is `NotFound`).
    pub(crate) create_file: bool,
    pub(crate) mode: u32,
    pub(crate) kind: LockKind,
    pub(crate) label: Option<String>,
    pub(crate) record_holder: bool,
    /// Draw a fencing token with each exclusive holding (kept in the record).
    pub(crate) fencing: bool,
    pub(crate) remove_on_release: bool,
    /// Set once this lock has warned that its file system needs polling.
    pub(crate) network_warned: AtomicBool,
    /// Whether this lock has warned that it cannot draw fencing tokens.
    pub(crate) unfenced_warned: AtomicBool,
    /// Whether this semaphore has warned that its file was emptied while
    /// permits were held.
    pub(crate) emptied_warned: AtomicBool,
    /// What file system the lock file is on, learnt at its first open:
    /// [`FS_UNKNOWN`], [`FS_LOCAL`] or [`FS_NETWORK`].
    pub(crate) fs: AtomicU8,
    /// On a network file system, the tasks of this lock poll one at a time,
    /// first come first served (the in-process line needs the file's
    /// identity, which would take a call into the file system).
    pub(crate) network_turn: tokio::sync::Mutex<()>,
    /// The holder record this lock last left in its file, so that winning
    /// it again within the same second costs a comparison of the file's
    /// head with it instead of parsing and formatting a record (half of an
    /// uncontended acquire's own time, measured).
    pub(crate) last_record: std::sync::Mutex<Option<LastRecord>>,
}

/// A holder record as written (or found already there) by this lock.
#[derive(Debug)]
pub(crate) struct LastRecord {
    /// Which process wrote it: a forked child writes its own.
    pid: u32,
    /// In which pid namespace: a child made in a new one may have its
    /// parent's pid (1).
    pid_namespace: Option<NonZeroU32>,
    /// The second it says the holding began.
    since: u64,
    bytes: Box<[u8]>,
}

pub(crate) const FS_UNKNOWN: u8 = 0;
const FS_LOCAL: u8 = 1;
const FS_NETWORK: u8 = 2;

impl LockConfig {
    /// Whether the lock file is known to be on a network (or FUSE) file
    /// system, where any call into it may stall for seconds.
    pub(crate) fn on_network(&self) -> bool {
        self.fs.load(Ordering::Relaxed) == FS_NETWORK
    }

    /// Learns, once, what file system the file open at `fd` is on.
    fn learn_fs(&self, fd: impl AsFd) {
        if self.fs.load(Ordering::Relaxed) == FS_UNKNOWN {
            let class = match os::file_system(fd) {
                Ok((_, true)) => FS_NETWORK,
                _ => FS_LOCAL,
            };
            self.fs.store(class, Ordering::Relaxed);
        }
    }

    /// Warns, once per lock, that fencing tokens were asked for and cannot
    /// be drawn, and `why`: its holders go without.
    fn warn_unfenced(&self, why: &str) {
        if self.fencing && !self.unfenced_warned.swap(true, Ordering::Relaxed) {
            // `unfenced` marks the event for subscribers that expect no
            // token there (the `lockmgr` command, which asks for tokens on
            // every file and documents when there are none).
            tracing::warn!(
                lock = %self.path.display(),
                unfenced = true,
                "lockmgr: no fencing token can be drawn for lock {}: {why}; its holders go \
                 without one",
                self.id
            );
        }
    }

    /// Warns, once per semaphore, that its file was found emptied while
    /// permits are held (its users then wait for them to be given back).
    pub(crate) fn warn_emptied(&self) {
        if !self.emptied_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                lock = %self.path.display(),
                "semaphore file emptied while permits are held: every permit counts as taken \
                 until they are given back, and the next user writes the count again"
            );
        }
    }

    /// Warns, once per lock, that waiting polls here.
    fn warn_network(&self, fs: &str) {
        if !self.network_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                lock = %self.path.display(),
                fs,
                "lock file is on a network file system ({fs}): inotify cannot see \
                 releases made on other machines, waiting by polling"
            );
        }
    }
}

/// One caller's contention for the lock: its own open file description,
/// kept open across tries so that a waiter's retries do not wake the other
/// waiters (every close of the file is an event to them).
struct FileContender<'a> {
    config: &'a LockConfig,
    mode: LockMode,
    /// The descriptor; `None` only once handed on to a guard.
    fd: Option<OwnedFd>,
    /// The identity of the file open at `fd`, once checked to be a regular
    /// file (see [`FileContender::file`]).
    file: Option<FileId>,
    /// Whether `fd` may be written (a holder record needs it).
    writable: bool,
    /// The kernel's wait for the lock on `fd`, when one was started. Shared
    /// with the waiting loop's [`Signal`] (and, once won by a try while its
    /// helper is still in the kernel, with the [`Held`]); the wait is
    /// abandoned (for a next wait to revive) when the last of them goes
    /// unclaimed.
    kernel: Option<Arc<KernelWait>>,
    /// The fencing token drawn when the lock was won.
    token: Option<u64>,
    /// Whether a try on `fd` lost: the file was waited for.
    lost: bool,
}

/// Says, once per process, that waits fall back to the kernel's own wait
/// on a helper thread because inotify cannot be had (the per-user limit of
/// instances or watches reached).
fn warn_no_inotify(e: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            error = %e,
            "lockmgr: inotify unavailable; waiting for locks in the kernel, on a helper thread"
        );
    }
}

/// Says, once per process, that waits fall back to polling because neither
/// inotify nor a helper thread could be had.
fn warn_no_helper(e: &io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            error = %e,
            "lockmgr: cannot start a helper thread to wait in the kernel either; \
             waiting for locks by polling (up to every 50 ms)"
        );
    }
}

impl Contender for FileContender<'_> {
    type Error = LockError;

    fn try_once(&mut self, attempt: u32, cause: Cause) -> Result<Try, LockError> {
        let path = &self.config.path;
        let mut moved = false;
        loop {
            let won = match os::try_lock(self.fd(), self.config.kind, self.mode) {
                Ok(won) => won,
                Err(e) => {
                    // Refused as what it is, when the path is no file.
                    self.file()?;
                    return Err(self.lock_error(e));
                }
            };
            tracing::debug!(
                lock = %path.display(),
                attempt,
                won,
                mode = %self.mode,
                woke = cause.as_str(),
                "lock try"
            );
            if !won {
                // A loser waits in line for this file: it must be one.
                self.file()?;
                self.lost = true;
                return Ok(if moved { Try::Moved } else { Try::Held });
            }
            // A file opened just now is the one at the path (a rename in
            // between is no different from one just after the win, which no
            // check can see); one that was waited for may have been renamed
            // away or replaced meanwhile, and anyone opening the path now
            // gets the new file.
            let here = if self.lost || self.config.remove_on_release {
                self.still_at_path()
            } else {
                Ok(true)
            };
            let here = match here {
                Ok(here) => here,
                Err(e) => {
                    self.let_go();
                    return Err(e);
                }
            };
            if !here {
                // Won a file that no longer has the lock's name: it guards
                // nothing. Let it go and contend for the file at the path.
                if self.config.remove_on_release {
                    tracing::debug!(lock = %path.display(), "lock file was replaced; reopening");
                } else {
                    tracing::warn!(
                        lock = %path.display(),
                        "lock file was renamed or replaced while waited for; \
                         waiting for the file now at the path"
                    );
                }
                self.let_go();
                let opened = open_unchecked(self.config, self.mode)?;
                (self.fd, self.file, self.writable, self.lost) =
                    (Some(opened.fd), opened.file, opened.writable, false);
                moved = true;
                continue;
            }
            let kept =
                if self.mode == LockMode::Exclusive && self.config.record_holder && self.writable {
                    self.write_record().map(|token| self.token = token)
                } else {
                    if self.mode == LockMode::Exclusive && !self.config.record_holder {
                        self.config.warn_unfenced(
                            "holder records are turned off (record_holder(false)), and the \
                             tokens are kept in the record",
                        );
                    } else if self.mode == LockMode::Exclusive && !self.writable {
                        self.config.warn_unfenced(
                            "the file may only be read here (no record can be written)",
                        );
                    }
                    self.file().map(drop)
                };
            if let Err(e) = kept {
                self.let_go();
                return Err(e);
            }
            return Ok(Try::Won);
        }
    }

    fn signal(&mut self, promise: Option<Promise>) -> Signal {
        match os::file_system(self.fd()) {
            Ok((fs, true)) => {
                self.config.warn_network(fs);
                Signal::poll()
            }
            // Close events read by this task's own runtime: the fastest
            // wake-up for the usual release (one thread woken, the one that
            // runs this task), with a try every RECHECK for the releases
            // that close nothing, until the wait settles in the kernel.
            _ => match Signal::try_watch(self.fd(), &self.config.path) {
                Ok(signal) => signal,
                Err(e) => {
                    warn_no_inotify(&e);
                    self.wait_in_kernel(promise).unwrap_or_else(|e| {
                        warn_no_helper(&e);
                        Signal::poll()
                    })
                }
            },
        }
    }

    fn settle(&mut self, promise: Option<Promise>) -> Option<Signal> {
        // Without a helper thread, the events and the periodic tries go on.
        self.wait_in_kernel(promise).ok()
    }

    fn unsettle(&mut self, _promise: Option<Promise>) -> Signal {
        // The kernel wait is over (it failed): nothing of it to claim or
        // tell at the release. Back to the events (which settle again
        // later), or to polling: not straight into another kernel wait,
        // which would fail as this one did, at once, again and again.
        self.kernel = None;
        Signal::try_watch(self.fd(), &self.config.path).unwrap_or_else(|_| Signal::poll())
    }

    fn fail(&self, e: io::Error) -> LockError {
        self.lock_error(e)
    }
}

/// Opens (creating it if allowed) the lock file for a contender, and checks
/// that it is a regular file: its descriptor, identity and whether it could
/// be opened for writing.
pub(crate) fn open_fd(
    config: &LockConfig,
    mode: LockMode,
) -> Result<(OwnedFd, FileId, bool), LockError> {
    let opened = open_unchecked(config, mode)?;
    config.learn_fs(&opened.fd);
    let file = match opened.file {
        Some(file) => file,
        None => os::identify(opened.fd.as_fd())
            .map_err(|e| open_error(&config.path, e, Operation::Open))?,
    };
    Ok((opened.fd, file, opened.writable))
}

/// [`open_fd`], leaving the check of the kind of file to the caller (see
/// [`os::open_lock_file`]).
fn open_unchecked(config: &LockConfig, mode: LockMode) -> Result<os::Opened, LockError> {
    let path = &config.path;
    check_path(path)?;
    // A flock(2) lock of either mode, and a shared OFD lock, need only read
    // access: a file that may only be read will do, as for flock(1). An OFD
    // write lock needs a descriptor open for writing.
    let read_only_ok = mode == LockMode::Shared || config.kind == LockKind::Flock;
    let create = config.create_file.then_some(config.mode);
    let opened = with_parent(path, config.create_dirs, || {
        os::open_lock_file(path, create, read_only_ok)
    })?;
    opened.map_err(|e| open_error(path, e, Operation::Open))
}

/// The identity of the lock file, opened (and created) as an exclusive
/// acquire would open it: the order in which several locks are taken.
/// The file stays open while the descriptor returned with it is kept, so
/// that its inode number is not handed to another file meanwhile (a file
/// removed and another created can get it at once): identities taken one
/// after the other then compare as the files do.
pub(crate) fn identity(config: &LockConfig) -> Result<(OwnedFd, FileId), LockError> {
    let (fd, file, _) = open_fd(config, LockMode::Exclusive)?;
    Ok((fd, file))
}

/// The identity of the regular file at the lock's path now, without
/// opening it (`None` when there is none).
pub(crate) fn identity_at(config: &LockConfig) -> Option<FileId> {
    os::file_id_at(&config.path)
}

/// The identity of the file a guard holds (`None` if the kernel will not
/// say, which a regular file open here never does).
pub(crate) fn held_identity(fd: impl AsFd) -> Option<FileId> {
    os::identify(fd.as_fd()).ok()
}

/// Refuses a path that cannot name a file at all.
fn check_path(path: &Path) -> Result<(), LockError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(LockError::Invalid {
            lock: path.into(),
            reason: "the path is empty".into(),
        });
    }
    // The kernel says "is a directory" for a missing one (`EISDIR` from
    // `O_CREAT`) and "not a directory" for a file; a directory that is
    // there is left to the open, which refuses it as one.
    if bytes.ends_with(b"/") && !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(LockError::Invalid {
            lock: path.into(),
            reason: "the path ends in '/', so it can only name a directory, not a lock file".into(),
        });
    }
    Ok(())
}

/// Runs `open`; if it fails because a directory on the way is missing,
/// creates the directories (with `create_dirs`) and runs it again, or says
/// what is missing.
fn with_parent<T>(
    path: &Path,
    create_dirs: bool,
    open: impl Fn() -> Result<T, OpenError>,
) -> Result<Result<T, OpenError>, LockError> {
    match open() {
        Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound && !parent_exists(path) => {
            if !create_dirs {
                return Err(LockError::MissingParent { lock: path.into() });
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| LockError::io(path, Operation::CreateDir, e))?;
            }
            Ok(open())
        }
        other => Ok(other),
    }
}

fn open_error(path: &Path, e: OpenError, op: Operation) -> LockError {
    match e {
        OpenError::NotRegular(kind) => LockError::NotAFile {
            lock: path.into(),
            kind,
        },
        OpenError::ReadOnly(source) => LockError::ReadOnly {
            lock: path.into(),
            source,
        },
        OpenError::Io(e) => LockError::io(path, op, e),
    }
}

/// Opens (creating it if missing, never truncating) a data file for
/// appending, with the lock file's refusals: no symlink, FIFO, device or
/// directory, and a typed error naming the path.
pub(crate) fn open_for_append(path: &Path, mode: u32) -> Result<File, LockError> {
    check_path(path)?;
    with_parent(path, false, || os::open_for_append(path, mode))?
        .map(|(fd, _)| File::from(fd))
        .map_err(|e| open_error(path, e, Operation::Open))
}

/// Whether an open for writing failed only because the file may not be
/// written here (see [`os::is_write_refused`]).
pub(crate) fn is_write_refused(e: &io::Error) -> bool {
    os::is_write_refused(e)
}

/// Opens an existing data file for reading only (where it may not be
/// written), with the refusals and errors of [`open_for_append`]; never
/// creates it.
pub(crate) fn open_for_reading(path: &Path) -> Result<File, LockError> {
    check_path(path)?;
    with_parent(path, false, || os::open_for_reading(path))?
        .map(|(fd, _)| File::from(fd))
        .map_err(|e| open_error(path, e, Operation::Open))
}

/// The file open at `file`, opened anew for appending (see
/// [`os::reopen`]), or at `path`, the name it was opened by, when it is
/// still there and `/proc` cannot be had; an error naming `path` when
/// neither gives that very file.
pub(crate) fn reopen_for_append(file: &File, path: &Path) -> Result<File, LockError> {
    reopen(file, path, true)
}

/// As [`reopen_for_append`], for reading only: a descriptor of its own
/// (never a duplicate of `file`'s, whose close must stay the last of its
/// open file description, for the waiters that watch for it).
pub(crate) fn reopen_for_reading(file: &File, path: &Path) -> Result<File, LockError> {
    reopen(file, path, false)
}

fn reopen(file: &File, path: &Path, append: bool) -> Result<File, LockError> {
    let wanted = os::identify(file.as_fd()).map_err(|e| open_error(path, e, Operation::Open))?;
    let is_wanted = |f: &File| os::identify(f.as_fd()).is_ok_and(|id| id == wanted);
    // The file the lock is on may not be opened so by this process (a
    // journal rotated to a file it may not write): that, not /proc, is
    // then the error.
    let mut refused = None;
    match os::reopen(file.as_fd(), append).map(File::from) {
        Ok(reopened) if is_wanted(&reopened) => return Ok(reopened),
        Err(e) if os::is_write_refused(&e) => refused = Some(e),
        Ok(_) | Err(_) => {}
    }
    let at_path = if append {
        os::open_existing_for_append(path)
    } else {
        os::open_existing_for_reading(path)
    };
    match at_path {
        Ok(at_path) if is_wanted(&at_path) => return Ok(at_path),
        Err(e) if refused.is_none() && os::is_write_refused(&e) => refused = Some(e),
        Ok(_) | Err(_) => {}
    }
    Err(LockError::io(
        path,
        Operation::Open,
        refused.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "the file locked is no longer at this path, and /proc/thread-self/fd cannot \
                 reopen it (is /proc mounted?); nothing was done",
            )
        }),
    ))
}

/// A holder record, with the pid namespace it names.
struct Recorded {
    holder: Holder,
    pid_namespace: Option<NonZeroU32>,
}

impl Recorded {
    /// Whether the record is process `pid`'s, as this process sees it: the
    /// same pid, or, for a record of another pid namespace (a container's),
    /// the process of that namespace whose own pid it is. Where that
    /// namespace cannot be read (another user's process, for a caller
    /// without privilege), a process of a namespace nested below this
    /// one's, whose own pid it is, is taken for it.
    fn names_process(&self, pid: u32) -> bool {
        let record = &self.holder;
        if !record.in_other_pid_namespace() {
            return record.pid == pid;
        }
        if proc_locks::nested_pid(pid) != Some(record.pid) {
            return false;
        }
        match proc_locks::pid_namespace(pid) {
            Some(ns) => Some(ns) == self.pid_namespace,
            None => true,
        }
    }
}

/// The recorded exclusive holder of the file open at `fd`, if readable.
fn read_record(fd: impl AsFd) -> Option<Recorded> {
    let mut buf = [0u8; MAX_RECORD];
    let n = os::read_head(fd, &mut buf).ok()?;
    let (holder, pid_namespace) =
        Holder::parse_with_namespace(&buf[..n], proc_locks::own_pid_namespace())?;
    Some(Recorded {
        holder: holder.checked(os::hostname(), os::pid_alive),
        pid_namespace,
    })
}

/// The record at the head of the file, when it may name the exclusive
/// holder of now. Records stay after a release (erasing one would cost
/// every release a write), so a holder that writes none leaves the last one
/// in place. Where the kernel names the holder itself (a POSIX lock, which
/// `F_OFD_GETLK` reports with its process), a record of another process is
/// an old one, and names nobody. (An OFD or `flock` holder is not named by
/// the kernel: its record is taken at its word.)
fn current_record(fd: impl AsFd, kind: LockKind) -> Option<Holder> {
    let fd = fd.as_fd();
    let record = read_record(fd)?;
    let posix = match kind {
        LockKind::Ofd => os::posix_holder(fd).ok().flatten(),
        LockKind::Flock => None,
    };
    let holder = &record.holder;
    match posix {
        // Stale or not: a record of a process that has ended is as old.
        Some(pid) if holder.host == os::hostname() && !record.names_process(pid) => None,
        _ => Some(record.holder),
    }
}

impl<'a> FileContender<'a> {
    fn open(config: &'a LockConfig, mode: LockMode) -> Result<Self, LockError> {
        let opened = open_unchecked(config, mode)?;
        config.learn_fs(&opened.fd);
        Ok(FileContender {
            config,
            mode,
            fd: Some(opened.fd),
            file: opened.file,
            writable: opened.writable,
            kernel: None,
            token: None,
            lost: false,
        })
    }

    /// The identity of the file open at `fd`, checked (once) to be a
    /// regular file: before the contender waits for it in line, reads or
    /// writes it, or hands it to a guard (except after finding its own
    /// record, see [`FileContender::write_record`]). Until then a FIFO or a
    /// device at the path has only been opened (harmlessly, see
    /// `os::safe_flags`) and perhaps locked for an instant.
    fn file(&mut self) -> Result<FileId, LockError> {
        if let Some(file) = self.file {
            return Ok(file);
        }
        let file = os::identify(self.fd())
            .map_err(|e| open_error(&self.config.path, e, Operation::Open))?;
        self.file = Some(file);
        Ok(file)
    }

    /// Whether the file open at `fd` is still the one at the lock's path.
    fn still_at_path(&self) -> Result<bool, LockError> {
        let path = &self.config.path;
        // One `lstat` on the path of a handoff; the slow way, which tells
        // a missing file from an error, only when that is not enough.
        if let Some(here) = self
            .file
            .and_then(|file| Some(file == os::file_id_at(path)?))
        {
            return Ok(here);
        }
        os::is_file_at(self.fd(), path).map_err(|e| LockError::io(path, Operation::Stat, e))
    }

    /// Starts the kernel's own wait for the lock, on a helper thread.
    fn wait_in_kernel(&mut self, promise: Option<Promise>) -> io::Result<Signal> {
        let file = self.file().map_err(io::Error::other)?;
        let kernel = KernelWait::start(self.fd(), file, self.config.kind, self.mode, promise)?;
        // A revived wait is for a descriptor of its own: the lock will be
        // granted to that one.
        if kernel.is_revived() {
            self.fd = Some(kernel.dup_fd()?);
        }
        let kernel = Arc::new(kernel);
        self.kernel = Some(kernel.clone());
        Ok(Signal::Kernel(kernel, None))
    }

    /// Lets go of a lock a try won but will not keep (its file renamed
    /// away, or an error after the win), as a release does; the kernel wait,
    /// if any, is over (claimed, or its lock taken by a try).
    fn let_go(&mut self) {
        let kernel = self.kernel.take();
        let _ = unlock(self.fd(), self.config.kind, kernel.as_deref());
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("a contender has its descriptor until it is handed on")
            .as_fd()
    }

    fn into_held(mut self) -> Result<Held, LockError> {
        // Won (through a claimed kernel wait, or a try): the lock is held
        // through this descriptor; a helper's duplicate closes at once,
        // unless the helper has yet to return (the lock taken by a try
        // beside its wait): the release must then tell it.
        let kernel = self.kernel.take().filter(|k| k.helper_pending());
        let fd = self
            .fd
            .take()
            .expect("a contender has its descriptor until it is handed on");
        Ok(Held {
            off_runtime: self.config.on_network(),
            file: Some(File::from(fd)),
            path: self.config.path.clone(),
            owner_pid: os::current_pid(),
            kind: self.config.kind,
            mode: self.mode,
            remove: self.config.remove_on_release && self.mode == LockMode::Exclusive,
            token: self.token,
            kernel,
            #[cfg(feature = "metrics")]
            held_since: Some((self.config.meter.clone(), Instant::now())),
        })
    }

    fn lock_error(&self, e: io::Error) -> LockError {
        let lock = self.config.id.clone();
        match e.raw_os_error() {
            Some(nix::libc::ENOLCK | nix::libc::EOPNOTSUPP | nix::libc::ENOSYS) => {
                let fs = os::file_system(self.fd()).map_or("unknown", |(name, _)| name);
                LockError::Unsupported {
                    lock,
                    fs,
                    source: e,
                }
            }
            _ => LockError::Io {
                lock,
                op: Operation::Lock,
                source: e,
            },
        }
    }

    /// Writes this process's holder record, after winning, and draws the
    /// next fencing token if asked to (the record keeps the latest one
    /// either way, so the sequence never restarts). A record that cannot be
    /// written is not fatal (without one, there is no token); a file that
    /// turns out not to be a regular one is (see [`FileContender::file`]).
    fn write_record(&mut self) -> Result<Option<u64>, LockError> {
        let config = self.config;
        let pid = os::current_pid();
        let pid_namespace = proc_locks::own_pid_namespace();
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Never waited for: a fork while another thread held it would leave
        // it locked for ever in the child. Busy, the record is done in full
        // and not remembered.
        let mut scratch = None;
        let mut held = config.last_record.try_lock().ok();
        let cached = held.as_deref_mut().unwrap_or(&mut scratch);
        // Won before by this lock of this process within the same second:
        // if nobody wrote since, the record already says exactly what we
        // would write (a token drawn each time never repeats, so fencing
        // always writes).
        let recent = cached.as_ref().filter(|last| {
            !config.fencing
                && last.pid == pid
                && last.pid_namespace == pid_namespace
                && last.since == since
        });
        // Nothing is read from a file not known to be a regular one, except
        // just after this lock wrote its record there: a device put in its
        // place within that second is the only thing read before the check.
        if recent.is_none() {
            self.file()?;
        }
        // One byte more than a record may have: a file that fills it is
        // more than a record.
        let mut head = [0u8; MAX_RECORD + 1];
        let read = os::read_head(self.fd(), &mut head);
        // Those bytes at the head also show the file to be the regular file
        // they were written to: no stat is needed.
        if let (Some(last), Ok(n)) = (recent, &read) {
            if *last.bytes == head[..*n] {
                return Ok(None);
            }
        }
        self.file()?;
        Ok(self.replace_record(&head, read, (pid, pid_namespace), since, cached))
    }

    /// [`FileContender::write_record`] past the checks: replaces the record
    /// at the file's `head` (as `read`), if the content is ours to replace,
    /// and remembers it in `cached`.
    fn replace_record(
        &self,
        head: &[u8],
        read: io::Result<usize>,
        (pid, pid_namespace): (u32, Option<NonZeroU32>),
        since: u64,
        cached: &mut Option<LastRecord>,
    ) -> Option<u64> {
        // One read tells both whether the content is ours to replace (empty,
        // or a record) and how long the old record is: the file is only
        // truncated when the new record is shorter, since truncating costs a
        // file-system transaction on every acquire otherwise.
        let old_len = match read {
            // Only an empty file or a record, alone in the file, is ours to
            // replace: content that merely starts like one ("l",
            // "lockmgr-holder/ ..."), or a record followed by more, is
            // somebody's data.
            Ok(n) if n == 0 || is_whole_record(&head[..n]) => n,
            Ok(_) => {
                tracing::debug!(lock = %self.config.path.display(), "lock file holds other data; no holder record written");
                self.config.warn_unfenced(
                    "the file holds other data than a holder record, which is never overwritten",
                );
                return None;
            }
            Err(_) => return None,
        };
        let Ok(last) = recorded_token(&head[..old_len]) else {
            // Replaced, it would lose where the sequence stands.
            tracing::warn!(
                "lockmgr: the record in lock {} holds a fencing token that cannot be read; \
                 the record is left as it is and no token is drawn, so that tokens never go \
                 back (remove the record to start again at 1)",
                self.config.id
            );
            return None;
        };
        let mut drawn = self.config.fencing;
        let token = match last.unwrap_or(0).checked_add(1) {
            Some(next) if drawn => Some(next),
            None if drawn => {
                // Never back to a smaller one: this holder goes without,
                // and its record keeps the largest, so no later one draws
                // a token that an earlier holder's could outrank.
                drawn = false;
                tracing::warn!(
                    "lockmgr: the fencing token of lock {} is at its largest ({}): no token is \
                     drawn for this holder or any later one; to start again at 1, remove the \
                     lock file's record once every fenced resource accepts that",
                    self.config.id,
                    u64::MAX
                );
                last
            }
            _ => last,
        };
        let record = padded(
            record_line(
                pid,
                pid_namespace,
                os::hostname(),
                since,
                self.config.label.as_deref(),
                token,
            ),
            old_len,
        );
        let remember = |cached: &mut Option<LastRecord>| {
            *cached = Some(LastRecord {
                pid,
                pid_namespace,
                since,
                bytes: record.as_bytes().into(),
            });
        };
        if head[..old_len] == *record.as_bytes() {
            // Another lock of this process won it before within the same
            // second (and draws no token): the record already says this.
            remember(cached);
            return None;
        }
        match os::replace_head(self.fd(), record.as_bytes(), &head[..old_len]) {
            Ok(()) => {
                remember(cached);
                token.filter(|_| drawn)
            }
            Err(e) => {
                tracing::warn!(lock = %self.config.path.display(), error = %e, "could not write the holder record");
                None
            }
        }
    }

    /// Who is in the way, for a contention message: the record of an
    /// exclusive holder, when there is one and it reads well.
    fn holder(&self) -> Option<Holder> {
        let exclusive_holder = match self.mode {
            // A shared try only fails against an exclusive holder.
            LockMode::Shared => true,
            LockMode::Exclusive => matches!(
                os::probe(self.fd(), self.config.kind),
                Ok(Probe::Held(LockMode::Exclusive))
            ),
        };
        exclusive_holder
            .then(|| current_record(self.fd(), self.config.kind))
            .flatten()
    }

    fn would_block(&self) -> LockError {
        LockError::WouldBlock {
            lock: self.config.id.clone(),
            holder: self.holder(),
        }
    }
}

/// `record`, made at least `old_len` bytes long with a `pad=` field (which
/// readers skip), so that it replaces the old record in one write and the
/// file is never cut: a holder killed between a shorter record's write and
/// the cut would leave the new record with the old one's tail after it,
/// which is no longer a lone record, and so never written to again (no
/// holder named, no fencing token). Only a record within 5 bytes of the
/// largest is still cut to length.
fn padded(mut record: String, old_len: usize) -> String {
    const PAD: &str = " pad=";
    if old_len > record.len() && record.len() + PAD.len() <= MAX_RECORD {
        let fill = old_len.saturating_sub(record.len() + PAD.len());
        record.pop();
        record.push_str(PAD);
        record.extend(std::iter::repeat_n('.', fill));
        record.push('\n');
    }
    record
}

/// Whether the directory that would hold `path` exists (so that `ENOENT`
/// from an `O_CREAT` open means something else, e.g. a pseudo file system).
fn parent_exists(path: &Path) -> bool {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.is_dir(),
        _ => true,
    }
}

/// One non-blocking try, outside the line: the lock, or `WouldBlock`.
pub(crate) fn try_lock(config: &LockConfig, mode: LockMode) -> Result<Held, LockError> {
    let held = try_lock_for(config, mode, Cause::First)?;
    config.meter.acquired(mode, false, None);
    Ok(held)
}

fn try_lock_for(config: &LockConfig, mode: LockMode, cause: Cause) -> Result<Held, LockError> {
    let mut contender = FileContender::open(config, mode)?;
    match contender.try_once(1, cause)? {
        Try::Won => contender.into_held(),
        Try::Held | Try::Moved => Err(contender.would_block()),
    }
}

/// Takes the lock per `policy`: one try, then (if the policy waits) a place
/// in this process's line for the file and a wait on events until the lock
/// is won or the budget is spent.
pub(crate) async fn lock(
    config: &Arc<LockConfig>,
    mode: LockMode,
    policy: Policy,
) -> Result<Held, LockError> {
    let started = Instant::now();
    let mut contended = false;
    let result = if config.on_network() {
        lock_off_runtime(config, mode, policy, &mut contended).await
    } else {
        lock_here(config, mode, policy, started, &mut contended).await
    };
    match &result {
        Ok(_) => config
            .meter
            .acquired(mode, contended, policy.waits.then_some(started)),
        Err(LockError::TimedOut { .. }) => config.meter.timed_out(),
        Err(_) => {}
    }
    result
}

/// [`lock`] on a local file system; `contended` is set once a try has
/// lost or the call has waited in line.
async fn lock_here(
    config: &Arc<LockConfig>,
    mode: LockMode,
    policy: Policy,
    started: Instant,
    contended: &mut bool,
) -> Result<Held, LockError> {
    let lock_id = &config.id;
    // Tasks of this process already waiting for this file: get in line
    // behind them without opening it, so that a queued task holds no
    // descriptor and no watch, and the head is not woken by our close.
    let mut ticket = None;
    if policy.waits && queue::anyone_waiting() {
        ticket = os::file_id_at(&config.path)
            .and_then(|file| Ticket::join_if_waiting(file, config.kind, mode));
        if ticket.is_some() {
            policy.announce(lock_id, None, ", behind other tasks of this process");
        }
    }
    let mut announced = ticket.is_some();
    loop {
        if let Some(t) = &ticket {
            *contended = true;
            wait_turn(config, t, policy, started, || match status(config) {
                Ok(Status::Exclusive { holder }) => holder,
                _ => None,
            })
            .await?;
        }
        let mut contender = FileContender::open(config, mode)?;
        if contender.try_once(1, Cause::First)? == Try::Won {
            // Dropping the ticket after this makes the next in line the head.
            return contender.into_held();
        }
        if !policy.waits {
            return Err(contender.would_block());
        }
        *contended = true;
        if !announced {
            announced = true;
            policy.announce(lock_id, contender.holder().as_ref(), "");
        }
        let file = contender.file()?;
        let t = match ticket.take() {
            Some(t) if t.file() == file => t,
            // First wait, or the file was replaced while queued: line up for
            // the file now at the path. Someone else of this process may
            // have got to the front first; then wait behind them (the
            // contender's descriptor is closed meanwhile).
            _ => {
                let t = Ticket::join(file, config.kind, mode);
                if !t.is_head() {
                    ticket = Some(t);
                    continue;
                }
                t
            }
        };
        // The wait is set up before the next try: a release between that
        // try and the sleep is then seen, not lost.
        let mut signal = contender.signal(Some(t.promise()));
        return wait_for(&mut contender, &mut signal, &t, policy, started).await;
    }
}

/// Waits as the head of its line (`ticket`) until `contender` wins or the
/// budget is spent.
async fn wait_for(
    contender: &mut FileContender<'_>,
    signal: &mut Signal,
    ticket: &Ticket,
    policy: Policy,
    started: Instant,
) -> Result<Held, LockError> {
    match wait::wait(contender, signal, Some(ticket), policy, started).await {
        Ok(()) => {
            // Any kernel wait is over: the signal's share of it goes first.
            std::mem::replace(signal, Signal::poll()).retire();
            take(contender).into_held()
        }
        Err(Failed::Error(e)) => Err(e),
        Err(Failed::TimedOut { attempts, waited }) => Err(LockError::TimedOut {
            lock: contender.config.id.clone(),
            attempts,
            waited,
            holder: contender.holder(),
        }),
    }
}

/// Moves the contender out from behind a `&mut` (which is left empty).
fn take<'a>(contender: &mut FileContender<'a>) -> FileContender<'a> {
    FileContender {
        config: contender.config,
        mode: contender.mode,
        fd: contender.fd.take(),
        file: contender.file,
        writable: contender.writable,
        kernel: contender.kernel.take(),
        token: contender.token,
        lost: contender.lost,
    }
}

/// Takes the lock on a file system known to stall (network, FUSE) without
/// ever calling into it on the runtime's threads: each try (open, lock,
/// record, and the close of a loser) runs on a blocking thread, polled on a
/// capped backoff, and the budget bounds the whole call even while a try is
/// stuck. A stuck try that wins after its caller gave up releases at once,
/// on its own thread.
async fn lock_off_runtime(
    config: &Arc<LockConfig>,
    mode: LockMode,
    policy: Policy,
    contended: &mut bool,
) -> Result<Held, LockError> {
    let attempt = move |config: &LockConfig, cause| try_lock_for(config, mode, cause);
    off_runtime(config, policy, contended, "", attempt).await
}

/// [`lock_off_runtime`]'s loop for any kind of try: `attempt` runs on a
/// blocking thread, and `WouldBlock` means "try again"; `note` ends the
/// waiting message. What a try that finishes after its caller gave up
/// returns is dropped on that thread (a lock or permit won late is given
/// back there).
pub(crate) async fn off_runtime<T, F>(
    config: &Arc<LockConfig>,
    policy: Policy,
    contended: &mut bool,
    note: &str,
    attempt: F,
) -> Result<T, LockError>
where
    T: Send + 'static,
    F: Fn(&LockConfig, Cause) -> Result<T, LockError> + Clone + Send + 'static,
{
    let started = Instant::now();
    let deadline = policy.deadline(started);
    let stalled = || {
        LockError::io(
            &config.path,
            Operation::Open,
            io::Error::new(
                io::ErrorKind::TimedOut,
                "the file system did not answer within the wait",
            ),
        )
    };
    // A call that does not wait, or has no time to, makes one try, as on a
    // local file system (`WouldBlock` if it loses): it takes no turn, which
    // a waiting task of this lock keeps for its whole wait.
    let waits = policy.waits && deadline.is_none_or(|d| d > started);
    // One task of this lock polls at a time; the others wait their turn.
    let _turn = match deadline {
        _ if !waits => None,
        Some(d) => match clock::until_here(d, config.network_turn.lock()).await {
            Some(turn) => Some(turn),
            None => return Err(timed_out(config, policy, started, None)),
        },
        None => Some(config.network_turn.lock().await),
    };
    // The first try is given time to be answered even past a shorter
    // budget (a zero one too): the mount is not known to stall before it.
    // A call that does not wait has no budget (`acquire(false, _)`): that
    // time bounds its one try.
    let first_bound = Instant::now() + wait::FIRST_TRY_OFF_RUNTIME;
    let mut bound = match deadline {
        _ if !waits => Some(first_bound),
        Some(d) => Some(d.max(first_bound)),
        None => None,
    };
    let mut poll = wait::POLL_FIRST;
    let mut announced = false;
    let mut cause = Cause::First;
    loop {
        let try_config = config.clone();
        let try_once = attempt.clone();
        let attempt = tokio::task::spawn_blocking(move || try_once(&try_config, cause));
        cause = Cause::Poll;
        let tried = match bound {
            Some(d) => match clock::until_here(d, attempt).await {
                Some(tried) => tried,
                None => return Err(stalled()),
            },
            None => attempt.await,
        };
        let err = match tried {
            Ok(Ok(held)) => return Ok(held),
            Ok(Err(e)) => e,
            Err(join) => {
                return Err(LockError::io(
                    &config.path,
                    Operation::Lock,
                    io::Error::other(join),
                ))
            }
        };
        if !waits || !err.is_contended() {
            return Err(err);
        }
        bound = deadline;
        *contended = true;
        if !announced {
            announced = true;
            config.warn_network("network");
            policy.announce(&config.id, err.holder(), note);
        }
        let next = Instant::now() + poll;
        if deadline.is_some_and(|d| next >= d) {
            let holder = match err {
                LockError::WouldBlock { holder, .. } => holder,
                _ => None,
            };
            return Err(timed_out(config, policy, started, holder));
        }
        clock::sleep_until_here(next).await;
        poll = (poll * 2).min(wait::POLL_CAP);
    }
}

fn timed_out(
    config: &LockConfig,
    policy: Policy,
    started: Instant,
    holder: Option<Holder>,
) -> LockError {
    LockError::TimedOut {
        lock: config.id.clone(),
        attempts: policy.max_attempts,
        waited: started.elapsed(),
        holder,
    }
}

/// Waits until `ticket` is at the front of its line, within the whole
/// waiting budget (a queued task has no descriptor to try with, so its
/// attempts simply run out). On time-out, `holder` names who held the lock
/// then, if anyone can be named.
pub(crate) async fn wait_turn(
    config: &LockConfig,
    ticket: &Ticket,
    policy: Policy,
    started: Instant,
    holder: impl FnOnce() -> Option<Holder>,
) -> Result<(), LockError> {
    if ticket.until_head_by(policy.deadline(started)).await {
        return Ok(());
    }
    Err(timed_out(config, policy, started, holder()))
}

/// Whether the lock is free, held exclusively (and by whom, if recorded) or
/// held shared, found out without holding it: OFD locks are queried
/// (`F_OFD_GETLK`), `flock` locks probed for an instant. A missing lock file
/// is [`Status::Missing`] and is not created.
pub(crate) fn status(config: &LockConfig) -> Result<Status, LockError> {
    match open_for_status(config)? {
        Some(fd) => status_at(config, &fd),
        None => Ok(Status::Missing),
    }
}

/// The lock file opened for a status query (`None`: missing), with the
/// error that names it.
pub(crate) fn open_for_status(config: &LockConfig) -> Result<Option<OwnedFd>, LockError> {
    os::open_existing(&config.path).map_err(|e| open_error(&config.path, e, Operation::Read))
}

/// [`status`] of the lock file open at `fd`.
pub(crate) fn status_at(config: &LockConfig, fd: &OwnedFd) -> Result<Status, LockError> {
    let path = &config.path;
    let state = os::probe(fd, config.kind).map_err(|e| LockError::io(path, Operation::Read, e))?;
    Ok(match state {
        Probe::Held(LockMode::Exclusive) => Status::Exclusive {
            holder: current_record(fd, config.kind),
        },
        Probe::Held(LockMode::Shared) => Status::Shared,
        Probe::Free => Status::Free,
    })
}

/// The processes of this host that hold the lock file, or have it open,
/// from `/proc`. A missing file has none.
pub(crate) fn holders(config: &LockConfig) -> Result<Holders, LockError> {
    let path = &config.path;
    let read_error = |e: io::Error| LockError::io(path, Operation::Read, e);
    // A regular file is looked at without opening it: no close event for
    // the waiters watching it, and nothing more than /proc/locks when it is
    // free. Anything else is opened, for the error that names it.
    // (By inode number: btrfs lists a file under its file system's device,
    // where `stat` gives its subvolume's.)
    if let Some(id) = os::file_id_at(path) {
        let file = proc_locks::Inode::from_numbers(id.numbers());
        if !proc_locks::any_of_inode(file.inode()).map_err(read_error)? {
            return Ok(Holders::default());
        }
    }
    let (file, record) = {
        let fd = match os::open_existing(path) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(Holders::default()),
            Err(e) => return Err(open_error(path, e, Operation::Read)),
        };
        (
            proc_locks::Inode::of(&fd).map_err(read_error)?,
            read_record(&fd),
        )
        // The descriptor closes here: it is not one of the open ones.
    };
    // One read of the lock list, for every question asked of it.
    let all = proc_locks::all_entries().map_err(read_error)?;
    if !all.iter().any(|(i, _)| i.inode() == file.inode()) {
        return Ok(Holders::default());
    }
    let mut seen = proc_locks::descriptors(&[file]).map_err(read_error)?;
    let seen = seen.remove(&file);
    // The file as the lock list names it, which a descriptor's locks show:
    // on btrfs, under another device than `stat`'s. Without such a
    // descriptor (on btrfs), only the holders seen are known.
    let listed_as = seen.as_ref().and_then(|s| s.listed_as).unwrap_or(file);
    let entries: Vec<_> = all
        .into_iter()
        .filter(|(i, _)| *i == listed_as)
        .map(|(_, e)| e)
        .collect();
    Ok(assemble(file, &entries, seen, record.as_ref()))
}

/// Every file of this host that is locked, or has a request blocked on it;
/// with `among`, only those of these (device, inode) pairs, and no other is
/// opened.
pub(crate) fn locked_files(
    among: Option<&BTreeSet<(u64, u64)>>,
    semaphore: impl Fn(&OwnedFd) -> Option<Status>,
) -> io::Result<Vec<LockedFile>> {
    // The lock lists name a file on btrfs by its file system's device, not
    // by the one `stat` gives (which `among` has): a line of an inode asked
    // about is kept, and must then be tied to it by a descriptor.
    let inos: BTreeSet<u64> = among
        .map(|a| a.iter().map(|&(_, ino)| ino).collect())
        .unwrap_or_default();
    let mut by_file: BTreeMap<proc_locks::Inode, Vec<proc_locks::Entry>> = BTreeMap::new();
    for (file, entry) in proc_locks::all_entries()? {
        if among.is_some() && !inos.contains(&file.inode()) {
            continue;
        }
        by_file.entry(file).or_default().push(entry);
    }
    let files: Vec<_> = by_file.keys().copied().collect();
    let mut seen = proc_locks::descriptors(&files)?;
    Ok(by_file
        .into_iter()
        .filter_map(|(file, entries)| {
            let seen = seen.remove(&file);
            // The file as `stat` names it: a descriptor's, else the lock
            // lists' own name (the same, but on btrfs).
            let stat_as = seen.as_ref().and_then(|s| s.stat_as).unwrap_or(file);
            if among.is_some_and(|a| !a.contains(&(stat_as.device(), stat_as.inode()))) {
                return None;
            }
            let path = seen.as_ref().and_then(|s| s.path.clone());
            // The record (or a semaphore's count), read through the path
            // only when it is still the locked file.
            let fd = path.as_deref().and_then(|p| {
                let fd = os::open_existing(p).ok()??;
                (proc_locks::Inode::of(&fd).ok()? == stat_as).then_some(fd)
            });
            let record = fd.as_ref().and_then(read_record);
            // A file with a holder record is no semaphore's: one read of
            // the head is enough for it.
            let semaphore = match record {
                None => fd.as_ref().and_then(&semaphore),
                Some(_) => None,
            };
            Some(LockedFile {
                path,
                device: stat_as.device(),
                inode: stat_as.inode(),
                holders: assemble(stat_as, &entries, seen, record.as_ref()),
                semaphore,
            })
        })
        .collect())
}

/// The holders of one file, from its `/proc/locks` lines and what the
/// descriptors that have it open show.
fn assemble(
    file: proc_locks::Inode,
    entries: &[proc_locks::Entry],
    seen: Option<proc_locks::Descriptors>,
    record: Option<&Recorded>,
) -> Holders {
    let mut found = Holders {
        blocked_requests: entries.iter().filter(|e| e.blocked).count(),
        ..Holders::default()
    };
    let waiting = |pid: u32| {
        proc_locks::waiting(pid, file).map(|(tasks, since_ms)| Waiting {
            tasks,
            since: UNIX_EPOCH + std::time::Duration::from_millis(since_ms),
        })
    };
    let holding = |pid: u32, family, mode| HoldingProcess {
        pid,
        command: proc_locks::command(pid),
        family,
        mode,
        record: record
            .filter(|r| !r.holder.stale && mode == LockMode::Exclusive && r.names_process(pid))
            .map(|r| r.holder.clone()),
        waiting: waiting(pid),
    };
    let (by_pid, uncertain) = seen.map(|s| (s.by_pid, s.uncertain)).unwrap_or_default();
    for (pid, held) in by_pid {
        if held.is_empty() {
            found.open_without_lock.push(OpenProcess {
                pid,
                command: proc_locks::command(pid),
                waiting: waiting(pid),
            });
        }
        for lock in held {
            found.holding.push(holding(pid, lock.family, lock.mode));
        }
    }
    // Each lock of /proc/locks is matched with a process whose descriptor
    // showed it: first by the kernel's pid, then, for what is left, by
    // family and mode. A lock left over is named by the kernel's pid when
    // that process lives and owns it, or counted unseen.
    let mut pool: Vec<(u32, LockFamily, LockMode)> = found
        .holding
        .iter()
        .map(|h| (h.pid, h.family, h.mode))
        .collect();
    let mut maybe = uncertain;
    let mut left = Vec::new();
    for lock in entries.iter().filter(|e| !e.blocked) {
        let by_pid = lock.pid.and_then(|pid| {
            pool.iter()
                .position(|&p| p == (pid, lock.family, lock.mode))
        });
        match by_pid {
            Some(i) => drop(pool.swap_remove(i)),
            None => left.push(lock),
        }
    }
    for lock in left {
        let same = |&(_, family, mode): &(u32, LockFamily, LockMode)| {
            family == lock.family && mode == lock.mode
        };
        // The kernel's pid owns a POSIX lock. A `flock` lock belongs to its
        // open file description, and the pid is only who called `flock()`:
        // it may have handed its descriptor on and closed its own, or died
        // and had its pid reused. So a process whose descriptors hold such
        // a lock is preferred; the caller is named when nothing better can
        // be known (its descriptors cannot be read) or when it still maps
        // the file (a mapping keeps the description, and the lock, alive).
        let owner = |posix_only: bool| {
            lock.pid.filter(|&pid| {
                proc_locks::alive(pid)
                    && (lock.family == LockFamily::Posix
                        || !posix_only
                            && (!proc_locks::descriptors_readable(pid)
                                || proc_locks::maps(pid, file)))
            })
        };
        if let Some(pid) = owner(true) {
            found.holding.push(holding(pid, lock.family, lock.mode));
        } else if let Some(i) = pool.iter().position(same) {
            pool.swap_remove(i);
        } else if let Some(pid) = owner(false) {
            found.holding.push(holding(pid, lock.family, lock.mode));
        } else if let Some(i) = maybe
            .iter()
            .position(|&(_, e)| same(&(0, e.family, e.mode)))
        {
            // A further description of a process already named.
            maybe.swap_remove(i);
        } else {
            found.unseen += 1;
            found.unseen_exclusive += usize::from(lock.mode == LockMode::Exclusive);
        }
    }
    found
        .holding
        .sort_by_key(|h| (h.pid, h.family, h.mode == LockMode::Shared));
    found
        .holding
        .dedup_by(|a, b| (a.pid, a.family, a.mode) == (b.pid, b.family, b.mode));
    found
}

/// Unlocks the lock held through `fd`, before the descriptor is closed:
/// the waiters that watch the file wake at its close event, which the kernel
/// sends before it drops the lock, so a close alone would wake them too
/// soon. `kernel` is the wait whose try took the lock, if any: it is told
/// first, so that its helper gives back what its call returns with after
/// this; and while that helper still holds a copy of the descriptor, the
/// caller's close will not be the open file description's last, so a
/// descriptor of its own is opened and closed here, after the unlock, for
/// the close event.
fn unlock(fd: BorrowedFd<'_>, kind: LockKind, kernel: Option<&KernelWait>) -> io::Result<()> {
    let pending = kernel.is_some_and(KernelWait::releasing);
    let unlocked = os::unlock(fd, kind);
    if pending {
        // Best effort: without it, the waiters hear of the release when the
        // helper's copy closes (or, should that not come, at a RECHECK).
        drop(os::reopen(fd, false));
    }
    unlocked
}

/// A held file lock: the open file description that holds it, and what
/// releasing it takes.
#[derive(Debug)]
pub(crate) struct Held {
    /// On a file system known to stall: release on a blocking thread when
    /// dropped in a runtime.
    off_runtime: bool,
    file: Option<File>,
    path: Arc<Path>,
    owner_pid: u32,
    kind: LockKind,
    mode: LockMode,
    /// Unlink the path on release (exclusive holders only).
    remove: bool,
    /// The fencing token drawn when the lock was won.
    pub(crate) token: Option<u64>,
    /// The kernel wait whose lock a try took while its helper was still in
    /// the kernel: told when the lock is let go, so that the helper gives
    /// back what its call returns with after that.
    kernel: Option<Arc<KernelWait>>,
    /// Where the time held goes, and since when.
    #[cfg(feature = "metrics")]
    held_since: Option<(Meter, Instant)>,
}

impl Held {
    pub(crate) fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("the file is only taken by release")
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn kind(&self) -> LockKind {
        self.kind
    }

    pub(crate) fn mode(&self) -> LockMode {
        self.mode
    }

    pub(crate) fn owner_pid(&self) -> u32 {
        self.owner_pid
    }

    /// Releases the lock (once; later calls do nothing). Release closes the
    /// descriptor; in the process that took the lock it first unlocks
    /// explicitly, so that a waiter woken by the close finds the lock free.
    pub(crate) fn release(&mut self) -> Result<(), LockError> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let mut result = Ok(());
        let owner = os::current_pid() == self.owner_pid;
        let kernel = self.kernel.take();
        // A forked child shares the open file description: unlocking (or
        // removing the file) there would pull the lock from under the parent.
        // Closing the child's copy does neither.
        if owner {
            if self.remove {
                // Unlinked while still held, so nobody can lock the old file
                // and believe it is the current one (see remove_on_release).
                result = os::unlink_if_same(&file, &self.path)
                    .map_err(|e| LockError::io(&self.path, Operation::Remove, e));
            }
            let unlocked = unlock(file.as_fd(), self.kind, kernel.as_deref())
                .map_err(|e| LockError::io(&self.path, Operation::Unlock, e));
            result = result.and(unlocked);
        } else if let Some(kernel) = kernel {
            // A forked child's copy of the wait: its helper is the parent's,
            // and its mutexes may have been held by a parent thread at the
            // fork. Not touched.
            std::mem::forget(kernel);
        }
        let closed = nix::unistd::close(file)
            .map_err(|e| LockError::io(&self.path, Operation::Close, e.into()));
        #[cfg(feature = "metrics")]
        if let Some((meter, since)) = self.held_since.take().filter(|_| owner) {
            meter.released(since.elapsed());
        }
        tracing::debug!(lock = %self.path.display(), mode = %self.mode, "released lock");
        result.and(closed)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.off_runtime && self.file.is_some() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut moved = Held {
                    off_runtime: false,
                    file: self.file.take(),
                    path: self.path.clone(),
                    owner_pid: self.owner_pid,
                    kind: self.kind,
                    mode: self.mode,
                    remove: self.remove,
                    token: self.token,
                    kernel: self.kernel.take(),
                    #[cfg(feature = "metrics")]
                    held_since: self.held_since.take(),
                };
                rt.spawn_blocking(move || {
                    if let Err(e) = moved.release() {
                        tracing::warn!(error = %e, "lockmgr: error while releasing a lock");
                    }
                });
                return;
            }
        }
        if let Err(e) = self.release() {
            tracing::warn!(error = %e, "lockmgr: error while releasing a lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &Path) -> LockConfig {
        LockConfig {
            path: path.into(),
            id: LockId::file(path),
            max_attempts: 10,
            create_dirs: false,
            create_file: true,
            mode: 0o644,
            kind: LockKind::Ofd,
            label: None,
            meter: Meter::new("ofd", None),
            record_holder: true,
            fencing: false,
            remove_on_release: false,
            network_warned: AtomicBool::new(false),
            unfenced_warned: AtomicBool::new(false),
            emptied_warned: AtomicBool::new(false),
            fs: AtomicU8::new(FS_UNKNOWN),
            network_turn: tokio::sync::Mutex::new(()),
            last_record: std::sync::Mutex::new(None),
        }
    }

    /// No file system on a test machine refuses locks, so the mapping of
    /// the refusals is checked on its own.
    #[test]
    fn lock_refusals_become_unsupported_naming_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let config = config(&path);
        let c = FileContender::open(&config, LockMode::Exclusive).unwrap();
        let (fs, _) = os::file_system(c.fd()).unwrap();
        for errno in [
            nix::libc::ENOLCK,
            nix::libc::EOPNOTSUPP,
            nix::libc::ENOTSUP,
            nix::libc::ENOSYS,
        ] {
            match c.lock_error(io::Error::from_raw_os_error(errno)) {
                LockError::Unsupported {
                    lock, fs: named, ..
                } => {
                    assert_eq!(lock.path(), Some(path.as_path()));
                    assert_eq!(named, fs);
                }
                other => panic!("errno {errno}: {other:?}"),
            }
        }
        let other = c.lock_error(io::Error::from_raw_os_error(nix::libc::EBADF));
        assert!(matches!(
            other,
            LockError::Io {
                op: Operation::Lock,
                ..
            }
        ));
        assert!(other.to_string().starts_with("cannot lock /"), "{other}");
    }
}
