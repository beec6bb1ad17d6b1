//! The Linux calls under the lock: open the lock file safely, take, drop and
//! probe OFD and `flock(2)` locks, read and write the file's head, compare
//! identities (of files and of open file descriptions), and tell what kind
//! of file and file system a path is on.
//!
//! This module knows nothing of [`LockMgr`](crate::LockMgr) or its errors: it
//! speaks `io::Error` and the crate's vocabulary ([`LockKind`],
//! [`LockMode`], [`FileKind`]). It is the only module of the crate allowed
//! `unsafe` code (the crate root denies it everywhere else), and every
//! `unsafe` block here says why it is sound.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU8, Ordering};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::libc;
use nix::sys::signal::kill;
use nix::sys::stat::{fstat, lstat, FileStat, Mode, SFlag};
use nix::sys::statfs::fstatfs;
use nix::sys::uio::{pread, pwrite};
use nix::unistd::{ftruncate, gethostname, unlink, Pid};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::vocab::{FileKind, LockKind, LockMode};

/// Why [`open_lock_file`] failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The path names something that is not a regular file.
    NotRegular(FileKind),
    /// The file exists and may be read, but not written, and a read-only
    /// descriptor will not do: the error the writable open gave.
    ReadOnly(io::Error),
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

/// A descriptor opened by [`open_lock_file`].
pub(crate) struct Opened {
    pub(crate) fd: OwnedFd,
    /// The file's identity, when the open already checked (with
    /// [`identify`]) that it is a regular file; `None` leaves that to the
    /// caller, before it relies on either.
    pub(crate) file: Option<FileId>,
    /// False when only a read-only descriptor could be had.
    pub(crate) writable: bool,
}

/// The flags every open of a lock or data file carries. `O_NOFOLLOW`
/// refuses a symlink planted at the path; `O_NONBLOCK` keeps a FIFO from
/// blocking the open and `O_NOCTTY` keeps a terminal from becoming ours, so
/// that refusing such a path leaves it as it was.
fn safe_flags() -> OFlag {
    OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY
}

/// How often an open that finds no file, and then a file when it creates
/// one, starts over (someone else created and removed it in between)
/// before giving up.
const OPEN_RACES: u32 = 64;

/// Opens the file at `path` with `flags`, creating it (`mode`) if there is
/// none. An existing file is opened without `O_CREAT`, as util-linux
/// `flock(1)` does: with `fs.protected_regular` (1 or 2 on systemd
/// distributions) `O_CREAT` on another user's file in a sticky
/// world-writable directory such as `/tmp` fails with `EACCES`, even for
/// root. A missing one is created with `O_CREAT | O_EXCL` (which never
/// follows a symlink either); if that finds a file after all, the open
/// starts over. What kind of file was opened is not checked here: see
/// [`identify`].
fn open_or_create(path: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, OpenError> {
    let mut last = Errno::EEXIST;
    for _ in 0..OPEN_RACES {
        match open_path(path, flags, 0) {
            Err(OpenError::Io(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        match open_path(path, flags | OFlag::O_CREAT | OFlag::O_EXCL, mode) {
            Err(OpenError::Io(e)) if e.raw_os_error() == Some(libc::EEXIST) => last = Errno::EEXIST,
            other => return other,
        }
    }
    Err(OpenError::Io(last.into()))
}

/// Opens (creating if needed with `create`'s mode, never truncating) the
/// lock file at `path`, for reading and writing, without checking what kind of file it is
/// (`Opened::file` is `None`): the caller calls [`identify`] before it
/// reads or writes the file, waits for it or keeps it. The opening flags
/// already make opening anything else harmless (see `safe_flags`), and a
/// caller that wins the lock and finds the record it wrote there a moment
/// ago at the file's head knows the file without asking (a system call
/// saved on every repeated acquire).
///
/// A file that exists but may not be written to (`EACCES`, `EROFS`) is
/// opened read-only, as `flock(1)` does: enough for `flock(2)` locks and
/// shared OFD locks (`read_only_ok`); otherwise that is
/// [`OpenError::ReadOnly`]. That fallback checks the kind at once: a path
/// that is no file gives the writable open's error, as it always did.
pub(crate) fn open_lock_file(
    path: &Path,
    create: Option<u32>,
    read_only_ok: bool,
) -> Result<Opened, OpenError> {
    let writable = match create {
        Some(mode) => open_or_create(path, safe_flags() | OFlag::O_RDWR, mode),
        None => open_path(path, safe_flags() | OFlag::O_RDWR, 0),
    };
    match writable {
        Ok(fd) => Ok(Opened {
            fd,
            file: None,
            writable: true,
        }),
        Err(OpenError::Io(e)) if is_write_refused(&e) => {
            match open_checked(path, safe_flags() | OFlag::O_RDONLY) {
                Ok((fd, file)) if read_only_ok => Ok(Opened {
                    fd,
                    file: Some(file),
                    writable: false,
                }),
                Ok(_) => Err(OpenError::ReadOnly(e)),
                Err(_) => Err(OpenError::Io(e)),
            }
        }
        Err(e) => Err(e),
    }
}

/// Whether an open for writing failed only because the file may not be
/// written here: no write access (`EACCES`), a read-only mount (`EROFS`),
/// or an immutable or append-only file (`EPERM`, even for root).
pub(crate) fn is_write_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
    )
}

/// Opens an existing data file for reading only, with the same refusals
/// as [`open_lock_file`], checked at once.
pub(crate) fn open_for_reading(path: &Path) -> Result<(OwnedFd, FileId), OpenError> {
    open_checked(path, safe_flags() | OFlag::O_RDONLY)
}

/// Opens (creating if needed, never truncating) a data file for appending
/// (`O_RDWR | O_APPEND`), with the same refusals as [`open_lock_file`],
/// checked at once.
pub(crate) fn open_for_append(path: &Path, mode: u32) -> Result<(OwnedFd, FileId), OpenError> {
    let fd = open_or_create(path, safe_flags() | OFlag::O_RDWR | OFlag::O_APPEND, mode)?;
    let file = identify(fd.as_fd())?;
    Ok((fd, file))
}

/// Opens the very file open at `fd` anew, for appending (`O_RDWR |
/// O_APPEND`) or for reading only, whatever is at its path now (renamed,
/// replaced): through `/proc/thread-self/fd`, whose links name the open
/// files of the calling thread's descriptor table themselves. The caller
/// checks the result is that file (a `/proc` of another namespace could
/// say otherwise).
pub(crate) fn reopen(fd: BorrowedFd<'_>, append: bool) -> io::Result<OwnedFd> {
    let link = format!("/proc/thread-self/fd/{}", fd.as_raw_fd());
    let access = if append {
        OFlag::O_RDWR | OFlag::O_APPEND
    } else {
        OFlag::O_RDONLY
    };
    let flags = access | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let reopened = loop {
        match open(Path::new(&link), flags, Mode::empty()) {
            Ok(reopened) => break reopened,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // The link is read when opened: it cannot have moved to another file,
    // but a descriptor number reused meanwhile would; the caller's `fd` is
    // borrowed for the whole call, so it was not.
    Ok(reopened)
}

/// Opens the file at `path`, if any, for appending (`O_RDWR | O_APPEND`),
/// never creating it.
pub(crate) fn open_existing_for_append(path: &Path) -> io::Result<std::fs::File> {
    open_existing_with(path, OFlag::O_RDWR | OFlag::O_APPEND)
}

/// Opens the file at `path`, if any, for reading only.
pub(crate) fn open_existing_for_reading(path: &Path) -> io::Result<std::fs::File> {
    open_existing_with(path, OFlag::O_RDONLY)
}

fn open_existing_with(path: &Path, access: OFlag) -> io::Result<std::fs::File> {
    match open_path(path, safe_flags() | access, 0) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(OpenError::Io(e)) => Err(e),
        Err(_) => Err(io::ErrorKind::InvalidInput.into()),
    }
}

/// Opens an existing file and checks that it is a regular one.
fn open_checked(path: &Path, flags: OFlag) -> Result<(OwnedFd, FileId), OpenError> {
    let fd = open_path(path, flags, 0)?;
    let file = identify(fd.as_fd())?;
    Ok((fd, file))
}

fn open_path(path: &Path, flags: OFlag, mode: u32) -> Result<OwnedFd, OpenError> {
    loop {
        match open(path, flags, Mode::from_bits_truncate(mode & 0o7777)) {
            Ok(fd) => return Ok(fd),
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
    }
}

/// The identity of the file open at `fd`, which must be a regular file.
/// The kind is checked on the descriptor, not the path, so there is no
/// window between the check and the use.
pub(crate) fn identify(fd: BorrowedFd<'_>) -> Result<FileId, OpenError> {
    let st = fstat(fd).map_err(|e| OpenError::Io(e.into()))?;
    match kind_of(&st) {
        None => Ok(FileId::of(&st)),
        Some(kind) => Err(OpenError::NotRegular(kind)),
    }
}

/// A file's identity: two paths (or descriptors) name the same file exactly
/// when their device and inode numbers agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(st: &FileStat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    /// The device and inode numbers.
    pub(crate) fn numbers(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }
}

/// The identity of the regular file at `path`, without opening it (and so
/// without an open or close event for anyone watching it). `None` when there
/// is no regular file there, including a symlink: the caller's open then
/// tells what is wrong.
pub(crate) fn file_id_at(path: &Path) -> Option<FileId> {
    let st = lstat(path).ok()?;
    kind_of(&st).is_none().then(|| FileId::of(&st))
}

/// Whether descriptors `a` and `b` of process `pid` name one open file
/// description (`kcmp(2)`, `KCMP_FILE`): a lock held through it shows on
/// both. `None` when the kernel will not tell (another user's process
/// without the privilege to look, a kernel without `kcmp`, a descriptor
/// closed meanwhile).
pub(crate) fn same_description(pid: u32, a: i32, b: i32) -> Option<bool> {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(pid);
    // SAFETY: kcmp compares two kernel objects named by numbers; no memory
    // of this process is passed to it or written by it.
    let order = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a),
            libc::c_long::from(b),
        )
    };
    match order {
        0 => Some(true),
        1..=3 => Some(false),
        _ => None,
    }
}

/// What a probe found on a lock file, without taking its lock for longer
/// than the probe itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Free,
    Held(LockMode),
}

fn record(kind: libc::c_int) -> libc::flock {
    // SAFETY: `libc::flock` is a plain C struct of integers, for which all
    // zero bytes is a valid value. Zeroing (rather than a struct literal)
    // also clears padding and any platform-specific extra fields, which the
    // kernel copies in whole.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0, l_len = 0: the whole file, however it grows.
    // l_pid = 0: required for OFD locks (EINVAL otherwise).
    fl
}

fn ofd(fd: BorrowedFd<'_>, kind: libc::c_int) -> io::Result<bool> {
    ofd_range(fd, kind, 0, 0)
}

/// An OFD record lock (or unlock) of `len` bytes at `start`, without waiting.
fn ofd_range(fd: BorrowedFd<'_>, kind: libc::c_int, start: i64, len: i64) -> io::Result<bool> {
    let mut fl = record(kind);
    fl.l_start = start;
    fl.l_len = len;
    loop {
        match fcntl(fd, FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            // POSIX allows either for "held by someone else".
            Err(Errno::EAGAIN) | Err(Errno::EACCES) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

fn bsd(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: `fd` is a live descriptor borrowed for this call; flock(2)
        // reads nothing from memory.
        let r = unsafe { libc::flock(fd.as_raw_fd(), op) };
        if r == 0 {
            return Ok(true);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EWOULDBLOCK => return Ok(false),
            e => return Err(e.into()),
        }
    }
}

/// One non-blocking try for the whole-file lock: `Ok(true)` when taken,
/// `Ok(false)` when someone else holds a conflicting lock. `EINTR` is
/// retried; any other failure is an error.
pub(crate) fn try_lock(fd: impl AsFd, kind: LockKind, mode: LockMode) -> io::Result<bool> {
    match (kind, mode) {
        (LockKind::Ofd, LockMode::Exclusive) => ofd(fd.as_fd(), libc::F_WRLCK),
        (LockKind::Ofd, LockMode::Shared) => ofd(fd.as_fd(), libc::F_RDLCK),
        (LockKind::Flock, LockMode::Exclusive) => bsd(fd.as_fd(), libc::LOCK_EX | libc::LOCK_NB),
        (LockKind::Flock, LockMode::Shared) => bsd(fd.as_fd(), libc::LOCK_SH | libc::LOCK_NB),
    }
}

/// Waits in the kernel until the whole-file lock can be had, then takes it
/// (`F_OFD_SETLKW`, or `flock` without `LOCK_NB`): the kernel wakes the
/// caller at the release, whatever the releaser did. Blocks the calling
/// thread for as long as the lock is held elsewhere; `EINTR` is retried.
pub(crate) fn lock_blocking(fd: impl AsFd, kind: LockKind, mode: LockMode) -> io::Result<()> {
    let fd = fd.as_fd();
    match kind {
        LockKind::Ofd => {
            let fl = record(match mode {
                LockMode::Exclusive => libc::F_WRLCK,
                LockMode::Shared => libc::F_RDLCK,
            });
            loop {
                match fcntl(fd, FcntlArg::F_OFD_SETLKW(&fl)) {
                    Ok(_) => return Ok(()),
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        LockKind::Flock => {
            let op = match mode {
                LockMode::Exclusive => libc::LOCK_EX,
                LockMode::Shared => libc::LOCK_SH,
            };
            // Blocking: `bsd` retries EINTR and never sees EWOULDBLOCK here.
            bsd(fd, op).map(drop)
        }
    }
}

/// Takes an exclusive OFD lock on the one byte at `offset`, without
/// waiting: a semaphore's permit slot. False when another holds it.
pub(crate) fn try_lock_byte(fd: impl AsFd, offset: i64) -> io::Result<bool> {
    ofd_range(fd.as_fd(), libc::F_WRLCK, offset, 1)
}

/// Takes a shared OFD lock on the byte at `offset`, without waiting: a mark
/// others can see (see [`others_hold_byte`]).
pub(crate) fn share_byte(fd: impl AsFd, offset: i64) -> io::Result<bool> {
    ofd_range(fd.as_fd(), libc::F_RDLCK, offset, 1)
}

/// Whether another open file description holds a lock on the byte at
/// `offset` (`F_OFD_GETLK`: takes nothing).
pub(crate) fn others_hold_byte(fd: impl AsFd, offset: i64) -> io::Result<bool> {
    others_lock_range(fd, offset, 1)
}

/// Whether another open file description locks any of the `len` bytes
/// from `offset` (in either mode).
pub(crate) fn others_lock_range(fd: impl AsFd, offset: i64, len: i64) -> io::Result<bool> {
    let mut fl = record(libc::F_WRLCK);
    fl.l_start = offset;
    fl.l_len = len;
    loop {
        match fcntl(fd.as_fd(), FcntlArg::F_OFD_GETLK(&mut fl)) {
            Ok(_) => return Ok(fl.l_type as libc::c_int != libc::F_UNLCK),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Drops the OFD lock on the byte at `offset`.
pub(crate) fn unlock_byte(fd: impl AsFd, offset: i64) -> io::Result<()> {
    ofd_range(fd.as_fd(), libc::F_UNLCK, offset, 1).map(drop)
}

/// Drops what this open file description holds. Only for the process that
/// took the lock: in a forked child it would drop the parent's lock too.
pub(crate) fn unlock(fd: impl AsFd, kind: LockKind) -> io::Result<()> {
    match kind {
        LockKind::Ofd => ofd(fd.as_fd(), libc::F_UNLCK).map(drop),
        LockKind::Flock => bsd(fd.as_fd(), libc::LOCK_UN).map(drop),
    }
}

/// Finds out whether others hold the lock, and how.
///
/// For OFD locks this asks the kernel (`F_OFD_GETLK`) and takes nothing.
/// `flock(2)` has no such query: the probe takes the lock non-blockingly and
/// drops it again at once, so for that instant another try may fail.
pub(crate) fn probe(fd: impl AsFd, kind: LockKind) -> io::Result<Probe> {
    let fd = fd.as_fd();
    match kind {
        LockKind::Ofd => {
            let fl = in_the_way(fd)?;
            Ok(match fl.l_type as libc::c_int {
                libc::F_UNLCK => Probe::Free,
                libc::F_RDLCK => Probe::Held(LockMode::Shared),
                _ => Probe::Held(LockMode::Exclusive),
            })
        }
        LockKind::Flock => {
            if bsd(fd, libc::LOCK_EX | libc::LOCK_NB)? {
                bsd(fd, libc::LOCK_UN)?;
                Ok(Probe::Free)
            } else if bsd(fd, libc::LOCK_SH | libc::LOCK_NB)? {
                bsd(fd, libc::LOCK_UN)?;
                Ok(Probe::Held(LockMode::Shared))
            } else {
                Ok(Probe::Held(LockMode::Exclusive))
            }
        }
    }
}

/// The process of a POSIX lock that keeps an exclusive lock out of `fd`'s
/// file, as `F_OFD_GETLK` reports it (in this process's pid namespace);
/// `None` when the lock in the way is an OFD lock (which belongs to no
/// process), when nothing is, or when the holder's process is not visible
/// here.
pub(crate) fn posix_holder(fd: impl AsFd) -> io::Result<Option<u32>> {
    let fl = in_the_way(fd.as_fd())?;
    let held = fl.l_type as libc::c_int != libc::F_UNLCK;
    Ok(u32::try_from(fl.l_pid).ok().filter(|&pid| held && pid > 0))
}

/// What keeps an exclusive whole-file OFD lock out of `fd`'s file, as
/// `F_OFD_GETLK` reports it (`F_UNLCK`: nothing).
fn in_the_way(fd: BorrowedFd<'_>) -> io::Result<libc::flock> {
    let mut fl = record(libc::F_WRLCK);
    loop {
        match fcntl(fd, FcntlArg::F_OFD_GETLK(&mut fl)) {
            Ok(_) => return Ok(fl),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// True when `fd` is still the file at `path` (same device and inode).
/// `Ok(false)` when the path is gone or names another file.
pub(crate) fn is_file_at(fd: impl AsFd, path: &Path) -> io::Result<bool> {
    let ours = fstat(fd.as_fd())?;
    match lstat(path) {
        Ok(st) => Ok(st.st_dev == ours.st_dev && st.st_ino == ours.st_ino),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes `path` if it still names the file open at `fd`.
pub(crate) fn unlink_if_same(fd: impl AsFd, path: &Path) -> io::Result<()> {
    if is_file_at(fd, path)? {
        match unlink(path) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes from the start of the file.
pub(crate) fn read_head(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match pread(fd.as_fd(), buf, 0) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes `new` at the start of the file in place of `old` (what the file
/// held, all of it), then cuts the file to `new`'s length when that is
/// shorter. Writing first means a reader never sees an empty file between
/// two records.
///
/// A write the file system cuts short leaves the start of `new` over the
/// end of `old`, which may read as a record of its own (a fencing token cut
/// from 100 to 10, followed by the old record's newline): on failure what
/// was overwritten is put back. And a write that ends past the largest
/// file the process may write (`RLIMIT_FSIZE`, which bounds where a write
/// ends, however long the file already is) is not begun: the kernel would
/// end the process with SIGXFSZ between its two parts, before anything
/// could be put back.
pub(crate) fn replace_head(fd: impl AsFd, new: &[u8], old: &[u8]) -> io::Result<()> {
    let fd = fd.as_fd();
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE)?;
    if soft < new.len() as u64 {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    }
    let (written, result) = write_at_start(fd, new);
    if let Err(e) = result {
        if written > 0 {
            let (_, put_back) = write_at_start(fd, &old[..written.min(old.len())]);
            let put_back = put_back.and_then(|()| {
                if written > old.len() {
                    ftruncate(fd, old.len() as libc::off_t)?;
                }
                Ok(())
            });
            if let Err(again) = put_back {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}; the start of the file, written in part, could not be put back: {again}"),
                ));
            }
        }
        return Err(e);
    }
    if old.len() > new.len() {
        ftruncate(fd, new.len() as libc::off_t)?;
    }
    Ok(())
}

/// Writes `bytes` at the start of the file: how many were written, and
/// whether all were.
fn write_at_start(fd: BorrowedFd<'_>, bytes: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < bytes.len() {
        match pwrite(fd, &bytes[done..], done as libc::off_t) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return (done, Err(e.into())),
        }
    }
    (done, Ok(()))
}

/// Opens an existing lock file read-only to look at it, never creating it.
/// `Ok(None)` when there is nothing at the path.
pub(crate) fn open_existing(path: &Path) -> Result<Option<OwnedFd>, OpenError> {
    // Looked at before it is opened: opening a FIFO for reading lets a
    // writer blocked opening it through, to a pipe nobody will read. (The
    // descriptor is still checked: the path may change in between.) The
    // open of an acquire saves this call; a lock is not asked for a FIFO.
    match lstat(path) {
        Ok(st) => {
            if let Some(kind) = kind_of(&st) {
                return Err(OpenError::NotRegular(kind));
            }
        }
        Err(Errno::ENOENT) => return Ok(None),
        // Let the open say what is wrong (a missing parent, no access).
        Err(_) => {}
    }
    match open_checked(path, safe_flags() | OFlag::O_RDONLY) {
        Err(OpenError::Io(e)) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        other => other.map(|(fd, _)| Some(fd)),
    }
}

/// The file system a descriptor lives on, by `statfs` magic: its name, and
/// whether it is a network file system, where inotify does not see what
/// other machines do.
pub(crate) fn file_system(fd: impl AsFd) -> io::Result<(&'static str, bool)> {
    let magic = fstatfs(fd.as_fd())?.filesystem_type().0 as i64;
    Ok(classify_fs(magic))
}

fn classify_fs(magic: i64) -> (&'static str, bool) {
    // Magic numbers from linux/magic.h and the file systems' sources.
    match magic as u32 {
        0x6969 => ("nfs", true),
        0xFF53_4D42 => ("cifs", true),
        0xFE53_4D42 => ("smb2", true),
        0x517B => ("smb", true),
        0x6573_5546 => ("fuse", true),
        0x00C3_6400 => ("ceph", true),
        0x5346_414F => ("afs", true),
        0x0102_1997 => ("9p", true),
        0x0BD0_0BD0 => ("lustre", true),
        0x0116_1970 => ("gfs2", true),
        0x7461_636F => ("ocfs2", true),
        0xEF53 => ("ext4", false),
        0x5846_5342 => ("xfs", false),
        0x9123_683E => ("btrfs", false),
        0x0102_1994 => ("tmpfs", false),
        0x794C_7630 => ("overlayfs", false),
        0xF2F5_2010 => ("f2fs", false),
        0x2FC1_2FC1 => ("zfs", false),
        0x4D44 => ("vfat", false),
        0x9FA0 => ("proc", false),
        0x6265_6572 => ("sysfs", false),
        _ => ("unknown", false),
    }
}

/// Whether a process with this id exists on this host (`kill(pid, 0)`).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// This machine's host name, read once.
pub(crate) fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into())
    })
}

/// A duplicate of `fd` whose readability wakes the calling task's runtime
/// directly: its I/O driver polls it, so the thread the kernel wakes when
/// `fd` becomes readable is the one that runs the waiting task. Must be
/// called from within a Tokio runtime with its I/O driver enabled.
pub(crate) fn readable_here(fd: BorrowedFd<'_>) -> io::Result<AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("not within a Tokio runtime"));
    }
    register_readable(fd.try_clone_to_owned()?)
}

/// `fd`, registered with the current runtime's I/O driver for readability.
fn register_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` keeps its descriptor open, and the same, for as
    // long as it lives, and the `AsyncFd` owns it until it is dropped.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

/// A one-shot timer of the kernel's (`timerfd`, `CLOCK_MONOTONIC`) whose
/// expiry wakes the calling task's runtime through its I/O driver: one
/// wake-up, at the instant. A Tokio timer seconds ahead wakes its runtime
/// once more at each level of Tokio's timer wheel it moves down through on
/// the way (three wake-ups for a 10 s sleep, measured), each of which costs
/// a thread woken from idle.
pub(crate) struct KernelTimer {
    fd: AsyncFd<OwnedFd>,
    /// The runtime whose I/O driver delivers the expiry.
    home: Option<tokio::runtime::Id>,
}

/// The runtime the caller runs on, if any: a registration with one
/// runtime's I/O driver is not delivered on another.
pub(crate) fn runtime_id() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

impl KernelTimer {
    /// A timer that expires `after` from now. Must be called from within a
    /// Tokio runtime with its I/O driver enabled.
    pub(crate) fn after(after: std::time::Duration) -> io::Result<KernelTimer> {
        use nix::sys::time::TimeSpec;
        use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("not within a Tokio runtime"));
        }
        let fd = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        // A zero expiry would disarm the timer: the shortest one instead.
        let after = TimeSpec::from_duration(after.max(std::time::Duration::from_nanos(1)));
        fd.set(Expiration::OneShot(after), TimerSetTimeFlags::empty())?;
        let fd = register_readable(OwnedFd::from(fd))?;
        Ok(KernelTimer {
            fd,
            home: runtime_id(),
        })
    }

    /// Resolves when the timer has expired (true), or when it cannot tell
    /// (false): polled on another runtime than the one it was registered
    /// with (the waiting future moved; that runtime may be alive and idle),
    /// or that runtime's I/O driver is gone.
    pub(crate) async fn expired(&self) -> bool {
        std::future::poll_fn(|cx| {
            if runtime_id() != self.home {
                return std::task::Poll::Ready(false);
            }
            // A one-shot timer stays readable once expired: nothing to clear.
            self.fd.poll_read_ready(cx).map(|ready| ready.is_ok())
        })
        .await
    }
}

/// Whether `e` says the process is short of a resource (descriptors, the
/// system's file table, memory) rather than anything about a lock.
pub(crate) fn is_shortage(e: &io::Error) -> bool {
    [libc::EMFILE, libc::ENFILE, libc::ENOMEM]
        .iter()
        .any(|&n| e.raw_os_error() == Some(n))
}

/// The id of the calling process: to tell a guard's owner from a child
/// that inherited the guard when it releases (where a wrong answer would
/// drop a lock another process holds), and to name the holder in its
/// record.
///
/// glibc no longer caches `getpid`, and an uncontended acquire and release
/// would ask for it three times, a system call each. So the id is kept in a
/// page that the kernel fills with zeros in every child that does not share
/// this process's memory (`MADV_WIPEONFORK`, Linux 4.14): after `fork`, and
/// after a raw `clone` too, which runs none of the C library's `fork`
/// handlers, the child finds no id there and asks the kernel once. A child
/// that shares the memory (`vfork`, `clone(CLONE_VM)`) shares every object
/// with its parent and must not drop any, guards included. A `fork`
/// handler clears the page too (see [`forget_pid`]). Where the page cannot
/// be had (an older kernel), the kernel is asked every time.
pub(crate) fn current_pid() -> u32 {
    let Some(word) = pid_word() else {
        return std::process::id();
    };
    match word.load(Ordering::Relaxed) {
        0 => {
            let pid = std::process::id();
            word.store(pid, Ordering::Relaxed);
            pid
        }
        pid => pid,
    }
}

/// The word of this process's wipe-on-fork page (see [`current_pid`]) that
/// keeps the number of its pid namespace, 0 until it is known: a child that
/// does not share memory finds 0 there and asks again. By pid alone it
/// could not tell: pid 1 of a container that makes a child in a pid
/// namespace of its own (`unshare(CLONE_NEWPID)` and `fork`, no `exec`)
/// makes another pid 1. `None` where the page cannot be had.
pub(crate) fn pid_namespace_word() -> Option<&'static AtomicU32> {
    pid_word()?;
    let page = PID_WORD.load(Ordering::Acquire);
    // SAFETY: `pid_word` returned a word, so `PID_WORD` holds the start of
    // the page (published, never unmapped); the pointer is the mapping's
    // own, valid for all of its 4096 bytes, so the next word is inside it,
    // aligned as the first is, and, like it, only ever accessed as this
    // atomic.
    Some(unsafe { &*page.add(1) })
}

/// A process-wide mutex that a child made by `fork` (or a raw `clone`)
/// gets afresh: unlocked, holding `T::default()`. A `std` mutex would come
/// over the fork locked if another thread of the parent held it at that
/// moment, and the child, which has no such thread, would wait for it for
/// ever. The parent's mutex and value are left in the child as they were,
/// never touched (never dropped: what they hold belongs to the parent's
/// threads).
pub(crate) struct ProcessMutex<T> {
    /// This process's [`Slot`] (a leaked box), or the parent's, or null
    /// before the first lock.
    slot: AtomicPtr<Slot<T>>,
    /// Sync and Send as a `Mutex<T>` is.
    _holds: std::marker::PhantomData<std::sync::Mutex<T>>,
}

struct Slot<T> {
    /// The process that made it.
    pid: u32,
    mutex: std::sync::Mutex<T>,
}

impl<T: Default> ProcessMutex<T> {
    pub(crate) const fn new() -> Self {
        ProcessMutex {
            slot: AtomicPtr::new(std::ptr::null_mut()),
            _holds: std::marker::PhantomData,
        }
    }

    /// Locks this process's mutex (made on first use). A panic while it
    /// was held can only have come from an allocation failure, which
    /// leaves the value consistent: it is used on.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.slot().mutex.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self) -> &Slot<T> {
        let pid = current_pid();
        let mut seen = self.slot.load(Ordering::Acquire);
        loop {
            // SAFETY: a non-null pointer here was made by `Box::into_raw`
            // below and published by the exchange; it is freed only by
            // `drop`, which has `&mut self`, so it is valid for as long as
            // `&self` is. Its `pid` never changes after it is made.
            if let Some(slot) = unsafe { seen.as_ref() } {
                if slot.pid == pid {
                    return slot;
                }
            }
            let fresh = Box::into_raw(Box::new(Slot {
                pid,
                mutex: std::sync::Mutex::new(T::default()),
            }));
            match self
                .slot
                .compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // The parent's slot, if any, is left to leak.
                Ok(_) => seen = fresh,
                Err(now) => {
                    // SAFETY: `fresh` was made just above and never
                    // published: this is its only owner.
                    drop(unsafe { Box::from_raw(fresh) });
                    seen = now;
                }
            }
        }
    }
}

impl<T> Drop for ProcessMutex<T> {
    fn drop(&mut self) {
        let slot = *self.slot.get_mut();
        // SAFETY: as in `slot`: null, or a box made there and valid until
        // now; `&mut self` shows no one else uses it. Only this process's
        // own is freed: a parent's is the parent's threads'.
        if let Some(own) = unsafe { slot.as_ref() } {
            if own.pid == current_pid() {
                // SAFETY: made by `Box::into_raw`, freed only here.
                drop(unsafe { Box::from_raw(slot) });
            }
        }
    }
}

/// The word of the wipe-on-fork page that keeps [`current_pid`], once made
/// (null before).
static PID_WORD: AtomicPtr<AtomicU32> = AtomicPtr::new(std::ptr::null_mut());

/// The word of the wipe-on-fork page that keeps [`current_pid`]; made the
/// first time, `None` for good if the kernel cannot make one (and for the
/// moment while another thread registers [`forget_pid`]).
fn pid_word() -> Option<&'static AtomicU32> {
    static NO_PAGE: AtomicBool = AtomicBool::new(false);
    let mut word = PID_WORD.load(Ordering::Acquire);
    if word.is_null() {
        if NO_PAGE.load(Ordering::Relaxed) {
            return None;
        }
        match forget_pid_at_fork() {
            AtFork::Registered => {}
            AtFork::Registering => return None,
            AtFork::Failed => {
                NO_PAGE.store(true, Ordering::Relaxed);
                return None;
            }
        }
        let Some(page) = wipe_on_fork_page() else {
            NO_PAGE.store(true, Ordering::Relaxed);
            return None;
        };
        word = match PID_WORD.compare_exchange(
            std::ptr::null_mut(),
            page.as_ptr(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => page.as_ptr(),
            Err(theirs) => {
                // Another thread made one first; this one was never shared.
                // SAFETY: the page was mapped just above, with this length,
                // and no reference to it was made.
                let _ = unsafe { nix::sys::mman::munmap(page.cast(), PID_PAGE.get()) };
                theirs
            }
        };
    }
    // SAFETY: a non-null `PID_WORD` points at the start of a private
    // mapping that is never unmapped (it is mapped again, zeroed, in a
    // child), is aligned to a page, and is only ever accessed as this
    // atomic.
    Some(unsafe { &*word })
}

/// Runs in the child after a `fork(2)` made through the C library: clears
/// the pid word, as the kernel already does for a page advised
/// `MADV_WIPEONFORK`, for where that advice is accepted but not followed
/// (an emulator such as `qemu-user` may take advice and ignore it). Only an
/// atomic store, which is async-signal-safe as a forked child of a
/// threaded process requires.
extern "C" fn forget_pid() {
    let word = PID_WORD.load(Ordering::Acquire);
    if !word.is_null() {
        // SAFETY: as in `pid_word`: a published page is never unmapped,
        // and the child has its copy at the same address.
        unsafe { &*word }.store(0, Ordering::Relaxed);
        // SAFETY: as above, and as in `pid_namespace_word`.
        unsafe { &*word.add(1) }.store(0, Ordering::Relaxed);
    }
}

/// Whether [`forget_pid`] is registered to run in every forked child.
enum AtFork {
    Registered,
    /// Another thread is registering it now.
    Registering,
    Failed,
}

/// Registers [`forget_pid`] the first time. Lock-free, so that a child
/// forked while another thread registers it does not wait for that thread
/// (which the child does not have): it then never caches its id.
fn forget_pid_at_fork() -> AtFork {
    const UNREGISTERED: u8 = 0;
    const REGISTERING: u8 = 1;
    const REGISTERED: u8 = 2;
    const FAILED: u8 = 3;
    static STATE: AtomicU8 = AtomicU8::new(UNREGISTERED);
    let state = match STATE.compare_exchange(
        UNREGISTERED,
        REGISTERING,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        Ok(_) => {
            // SAFETY: `forget_pid` is an `extern "C" fn()` that lives for
            // the whole program and does nothing but an atomic store; no
            // prepare or parent handler is given.
            let ok = unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) == 0 };
            let state = if ok { REGISTERED } else { FAILED };
            STATE.store(state, Ordering::Release);
            state
        }
        Err(state) => state,
    };
    match state {
        REGISTERED => AtFork::Registered,
        FAILED => AtFork::Failed,
        _ => AtFork::Registering,
    }
}

/// The length asked for the pid page (the kernel rounds it up to a page).
const PID_PAGE: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(4096) {
    Some(len) => len,
    None => unreachable!(),
};

/// A new private page, zeroed in every child that does not share memory.
fn wipe_on_fork_page() -> Option<std::ptr::NonNull<AtomicU32>> {
    use nix::sys::mman::{madvise, mmap_anonymous, munmap, MapFlags, MmapAdvise, ProtFlags};
    // SAFETY: a new anonymous private mapping at an address the kernel
    // picks: it aliases no Rust object.
    let page = unsafe {
        mmap_anonymous(
            None,
            PID_PAGE,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }
    .ok()?;
    // SAFETY: the advice applies to the mapping just made, which nothing
    // else uses yet; on failure it is unmapped before anything refers to it.
    if unsafe { madvise(page, PID_PAGE.get(), MmapAdvise::MADV_WIPEONFORK) }.is_err() {
        // SAFETY: as above: mapped here, with this length, never shared.
        let _ = unsafe { munmap(page, PID_PAGE.get()) };
        return None;
    }
    let page = page.cast::<AtomicU32>();
    // Filled before it is published, so that it never reads 0 in the
    // process that made it: a child sharing its memory (`vfork`,
    // `clone(CLONE_VM)`) that asked first would store its own id there.
    // SAFETY: the new page, zeroed, aligned, and not yet shared.
    unsafe { page.as_ref() }.store(std::process::id(), Ordering::Relaxed);
    Some(page)
}

/// Memory this process shares with whoever reads one of its descriptors: a
/// memfd named [`Board::NAME`], mapped, seen as 64-bit atomic words. Other
/// processes read it through `/proc/PID/fd/N` (as the process's user, or
/// root); writing it costs no system call.
pub(crate) struct Board {
    words: std::ptr::NonNull<std::sync::atomic::AtomicU64>,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is shared memory accessed only through atomics, and
// lives (with the descriptor) as long as the `Board`; nothing in it is tied
// to a thread.
unsafe impl Send for Board {}
// SAFETY: as for `Send`: every access is an atomic operation.
unsafe impl Sync for Board {}

impl Board {
    /// The memfd's name (`/proc/PID/fd/N` links to `/memfd:NAME (deleted)`).
    pub(crate) const NAME: &'static str = "lockmgr-waiters";

    /// A zeroed board of `words` 64-bit words.
    pub(crate) fn create(words: usize) -> io::Result<Board> {
        use nix::sys::memfd::{memfd_create, MFdFlags};
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let fd = memfd_create(Board::NAME, MFdFlags::MFD_CLOEXEC)?;
        let bytes = words
            .checked_mul(8)
            .and_then(std::num::NonZeroUsize::new)
            .ok_or(io::ErrorKind::InvalidInput)?;
        ftruncate(&fd, bytes.get() as libc::off_t)?;
        // SAFETY: a new shared mapping of the whole of a file only this
        // process has (its length just set), at an address the kernel
        // picks: it aliases no Rust object. It is unmapped on drop.
        let ptr = unsafe {
            mmap(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )?
        };
        Ok(Board {
            words: ptr.cast(),
            len: words,
            _fd: fd,
        })
    }

    /// The board's words: a header (magic, pid), then [`BOARD_ENTRIES`]
    /// entries of (sequence, device, inode, tasks, since in Unix ms,
    /// sequence).
    pub(crate) const WORDS: usize = 2 + BOARD_ENTRIES * 6;

    /// A new board for this process's waiting lines.
    pub(crate) fn for_waiters() -> io::Result<Board> {
        let board = Board::create(Board::WORDS)?;
        let set = |i, v| board.word(i).map(|w| w.store(v, Ordering::Release));
        set(0, BOARD_MAGIC);
        set(1, u64::from(current_pid()));
        Ok(board)
    }

    /// Says that `tasks` tasks wait for the file `(dev, ino)`, the longest
    /// since `since_ms`; 0 tasks clears its entry. A reader that copies an
    /// entry while it changes sees its two sequence words differ: the
    /// trailing one is written first, the fields, then the leading one.
    pub(crate) fn publish(&self, (dev, ino): (u64, u64), tasks: u64, since_ms: u64) {
        let load = |i| self.word(i).map_or(0, |w| w.load(Ordering::Acquire));
        let mut free = None;
        let mut found = None;
        for e in 0..BOARD_ENTRIES {
            let base = 2 + e * 6;
            if load(base + 3) > 0 && load(base + 1) == dev && load(base + 2) == ino {
                found = Some(base);
                break;
            }
            if load(base + 3) == 0 && free.is_none() {
                free = Some(base);
            }
        }
        let Some(base) = found.or(free.filter(|_| tasks > 0)) else {
            return;
        };
        let seq = load(base).wrapping_add(1);
        let set = |i, v| self.word(i).map(|w| w.store(v, Ordering::Release));
        set(base + 5, seq);
        set(base + 1, dev);
        set(base + 2, ino);
        set(base + 3, tasks);
        set(base + 4, since_ms);
        set(base, seq);
    }

    /// Word `i`, if the board has it.
    pub(crate) fn word(&self, i: usize) -> Option<&std::sync::atomic::AtomicU64> {
        // SAFETY: `i` is within the mapping, which is page aligned (so every
        // word is aligned for `AtomicU64`), zero-initialised by the kernel,
        // alive as long as `self`, and only ever accessed atomically.
        (i < self.len).then(|| unsafe { &*self.words.as_ptr().add(i) })
    }
}

/// The most files a process's board tells of at once.
pub(crate) const BOARD_ENTRIES: usize = 64;
const BOARD_MAGIC: u64 = u64::from_be_bytes(*b"LMWAIT01");

/// What a board copied from process `pid` (its bytes, as read from its
/// descriptor) says of the file `(dev, ino)`: how many tasks wait, and
/// since when (Unix ms). `None` for a board of another process (an
/// inherited descriptor), an entry that changed while it was copied, or no
/// waiter.
pub(crate) fn read_board(bytes: &[u8], pid: u32, (dev, ino): (u64, u64)) -> Option<(u64, u64)> {
    let words: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
        .collect();
    if words.len() < Board::WORDS || words[0] != BOARD_MAGIC || words[1] != u64::from(pid) {
        return None;
    }
    words[2..Board::WORDS]
        .chunks_exact(6)
        .find(|e| e[0] == e[5] && e[3] > 0 && e[1] == dev && e[2] == ino)
        .map(|e| (e[3], e[4]))
}

impl Drop for Board {
    fn drop(&mut self) {
        // SAFETY: the mapping `create` made, of this length; no reference
        // into it outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.words.cast(), self.len * 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child forked while another thread holds a `ProcessMutex` gets it
    /// unlocked, with the default value; the parent's stays as it was.
    #[test]
    fn a_process_mutex_held_at_a_fork_is_free_in_the_child() {
        static SHARED: ProcessMutex<u32> = ProcessMutex::new();
        *SHARED.lock() = 7;
        let (held, release) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let (held_tx, held_rx) = held;
        let (release_tx, release_rx) = release;
        let holder = std::thread::spawn(move || {
            let guard = SHARED.lock();
            held_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(guard);
        });
        held_rx.recv().unwrap();
        // SAFETY: the child only locks the mutex (its first lock allocates,
        // and the C library resets the allocator's locks in a child) and
        // ends with `_exit`.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let value = *SHARED.lock();
                // SAFETY: `_exit` ends the child at once.
                unsafe { libc::_exit(if value == 0 { 0 } else { 1 }) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                let status = loop {
                    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                    match waitpid(child, Some(WaitPidFlag::WNOHANG)).unwrap() {
                        WaitStatus::StillAlive if std::time::Instant::now() < deadline => {
                            std::thread::yield_now()
                        }
                        WaitStatus::StillAlive => {
                            let _ = kill(child, nix::sys::signal::Signal::SIGKILL);
                            break None;
                        }
                        status => break Some(status),
                    }
                };
                release_tx.send(()).unwrap();
                holder.join().unwrap();
                assert_eq!(status, Some(nix::sys::wait::WaitStatus::Exited(child, 0)));
                assert_eq!(*SHARED.lock(), 7);
            }
        }
    }

    /// What a board publishes reads back through its descriptor, as
    /// another process reads it; a cleared entry reads as nothing, and a
    /// board of another pid (an inherited descriptor) is not believed.
    #[test]
    fn a_board_reads_back_through_its_descriptor() {
        let board = Board::for_waiters().unwrap();
        board.publish((7, 42), 3, 1_700_000_000_000);
        board.publish((7, 43), 1, 5);
        let fd = board._fd.as_raw_fd();
        let bytes = std::fs::read(format!("/proc/self/fd/{fd}")).unwrap();
        let me = current_pid();
        assert_eq!(
            read_board(&bytes, me, (7, 42)),
            Some((3, 1_700_000_000_000))
        );
        assert_eq!(read_board(&bytes, me, (7, 43)), Some((1, 5)));
        assert_eq!(read_board(&bytes, me, (7, 44)), None);
        assert_eq!(read_board(&bytes, me + 1, (7, 42)), None);
        board.publish((7, 42), 0, 0);
        let bytes = std::fs::read(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(read_board(&bytes, me, (7, 42)), None);
        // A torn entry (its two sequence words differ) is not believed.
        let mut torn = bytes.clone();
        torn[2 * 8 + 8 * 6 + 5 * 8] ^= 1;
        assert_eq!(read_board(&torn, me, (7, 43)), None);
    }

    #[test]
    fn whole_file_lock_is_zeroed_apart_from_type() {
        let fl = record(libc::F_WRLCK);
        assert_eq!(fl.l_type, libc::F_WRLCK as libc::c_short);
        assert_eq!((fl.l_start, fl.l_len, fl.l_pid), (0, 0, 0));
    }

    fn open(path: &Path) -> OwnedFd {
        open_lock_file(path, Some(0o644), false).unwrap().fd
    }

    #[test]
    fn two_open_file_descriptions_conflict_in_both_families() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        for kind in [LockKind::Ofd, LockKind::Flock] {
            let (a, b) = (open(&path), open(&path));
            assert!(try_lock(&a, kind, LockMode::Exclusive).unwrap());
            assert!(!try_lock(&b, kind, LockMode::Shared).unwrap());
            assert_eq!(probe(&b, kind).unwrap(), Probe::Held(LockMode::Exclusive));
            unlock(&a, kind).unwrap();
            assert_eq!(probe(&b, kind).unwrap(), Probe::Free);
            assert!(try_lock(&a, kind, LockMode::Shared).unwrap());
            assert!(try_lock(&b, kind, LockMode::Shared).unwrap());
            let c = open(&path);
            assert!(!try_lock(&c, kind, LockMode::Exclusive).unwrap());
            assert_eq!(probe(&c, kind).unwrap(), Probe::Held(LockMode::Shared));
        }
    }

    #[test]
    fn ofd_and_flock_do_not_see_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let (a, b) = (open(&path), open(&path));
        assert!(try_lock(&a, LockKind::Flock, LockMode::Exclusive).unwrap());
        assert!(try_lock(&b, LockKind::Ofd, LockMode::Exclusive).unwrap());
    }

    #[test]
    fn content_is_replaced_and_identity_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let fd = open(&path);
        replace_head(&fd, b"a longer first record\n", b"").unwrap();
        replace_head(&fd, b"short\n", b"a longer first record\n").unwrap();
        let mut buf = [0u8; 64];
        let n = read_head(&fd, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"short\n");
        assert!(is_file_at(&fd, &path).unwrap());
        unlink_if_same(&fd, &path).unwrap();
        assert!(!path.exists());
        assert!(!is_file_at(&fd, &path).unwrap());
        let other = open(&path);
        // Not ours any more: left alone.
        unlink_if_same(&fd, &path).unwrap();
        assert!(path.exists());
        drop(other);
    }

    #[test]
    fn network_file_systems_are_recognised() {
        assert_eq!(classify_fs(0x6969), ("nfs", true));
        assert_eq!(classify_fs(0xFF53_4D42), ("cifs", true));
        assert_eq!(classify_fs(0x6573_5546), ("fuse", true));
        assert_eq!(classify_fs(0x0102_1994), ("tmpfs", false));
        let dir = tempfile::tempdir().unwrap();
        let (_, network) = file_system(open(&dir.path().join("l"))).unwrap();
        assert!(!network, "the test's temp dir is local");
    }

    #[test]
    fn liveness_of_pids() {
        assert!(pid_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }
}
