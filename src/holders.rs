//! Who holds a lock file on this host, whatever program took the lock, and
//! who has it open: [`Holders`], as the kernel tells it through `/proc`
//! (from [`LockMgr::holders`](crate::LockMgr::holders)).
//!
//! Not to be confused with [`Holder`], the record a `lockmgr` holder writes
//! into the lock file: a [`HoldingProcess`] carries that record when the
//! file has one for it.

use std::fmt;
use std::time::SystemTime;

use crate::holder::{Holder, Shown};
use crate::vocab::{LockFamily, LockKind, LockMode, Status};

/// A process of this host that holds a lock on the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HoldingProcess {
    /// Its process id.
    pub pid: u32,
    /// Its name as the kernel keeps it (`/proc/PID/comm`, at most 15
    /// bytes), when it could be read. Never its command line, which may
    /// carry secrets.
    pub command: Option<String>,
    /// The lock family of its lock.
    pub family: LockFamily,
    /// Whether it holds the lock exclusively or shared.
    pub mode: LockMode,
    /// The holder record in the lock file, when it names this process.
    pub record: Option<Holder>,
    /// Its `lockmgr` tasks that wait for the lock meanwhile, if any.
    pub waiting: Option<Waiting>,
}

/// The `lockmgr` tasks of one process that wait for a lock, as that process
/// publishes them (in shared memory, read through `/proc/PID/fd`: readable
/// by the process's user and root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Waiting {
    /// How many tasks wait.
    pub tasks: u64,
    /// When the one that has waited longest began.
    pub since: SystemTime,
}

impl Waiting {
    /// [`since`](Waiting::since) as `YYYY-MM-DDTHH:MM:SSZ` (UTC), or, for a
    /// time the format cannot write (another process publishes it, so it
    /// may be anything), `@` and its seconds since the epoch.
    pub fn since_utc(&self) -> String {
        crate::holder::utc(self.since)
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tasks == 1 { "" } else { "s" };
        write!(
            f,
            "{} task{s} waiting since {}",
            self.tasks,
            self.since_utc()
        )
    }
}

impl fmt::Display for HoldingProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command {
            Some(command) => write!(f, "{} pid {}", Shown(command), self.pid)?,
            None => write!(f, "pid {}", self.pid)?,
        }
        write!(f, ", {} {} lock", self.mode, self.family)?;
        if let Some(record) = &self.record {
            write!(f, " (since {}", record.since_utc())?;
            if let Some(label) = &record.label {
                write!(f, ", label {}", Shown(label))?;
            }
            f.write_str(")")?;
        }
        if let Some(waiting) = &self.waiting {
            write!(f, "; {waiting}")?;
        }
        Ok(())
    }
}

/// A process of this host that has the lock file open and holds no lock
/// through it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenProcess {
    /// Its process id.
    pub pid: u32,
    /// Its name (`/proc/PID/comm`), when it could be read.
    pub command: Option<String>,
    /// Its `lockmgr` tasks that wait for the lock, if it publishes them.
    pub waiting: Option<Waiting>,
}

impl fmt::Display for OpenProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.command {
            Some(command) => write!(f, "{} pid {}", Shown(command), self.pid)?,
            None => write!(f, "pid {}", self.pid)?,
        }
        match &self.waiting {
            Some(waiting) => write!(f, ", {waiting}"),
            None => Ok(()),
        }
    }
}

/// What the kernel says about a lock file: the processes of this host that
/// hold a lock on it, in every lock family, and those that wait for it.
///
/// Found without taking or disturbing any lock. A file nobody locks costs
/// an `lstat` and one read of `/proc/locks`, and is not opened; otherwise
/// every process's open descriptors are looked at (a `readlink` each, and
/// a read of the fdinfo of each open file), as util-linux `lslocks` does.
/// Only a descriptor of the file's inode number, and not on a network or
/// FUSE mount of another device, is `stat`ed: a file open on a stalled
/// mount elsewhere does not hold the look up. (Where fdinfo shows no inode
/// number, `ino:`, as 5.2's did not and 6.1's does, every open file on a
/// local file system is `stat`ed.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holders {
    /// The holding processes, by pid. Several for a shared lock, and for a
    /// lock whose open file description several processes share (a forked
    /// child, `flock(1)` and its command).
    pub holding: Vec<HoldingProcess>,
    /// Locks on the file whose process could not be named: it belongs to
    /// another user (whose descriptors only a privileged caller can read),
    /// or to another host of a network file system.
    pub unseen: usize,
    /// How many of the [`unseen`](Holders::unseen) locks are exclusive:
    /// the file is then held exclusively although no holder is named.
    pub unseen_exclusive: usize,
    /// Requests blocked in the kernel for this file (`F_SETLKW`,
    /// `F_OFD_SETLKW`, a blocking `flock`): `lockmgr` waiters (one helper
    /// thread per waiting process, file and mode), `flock(1)` without `-n`.
    pub blocked_requests: usize,
    /// Processes that have the file open without holding a lock through it:
    /// waiters (a `lockmgr` waiter keeps the file open while it waits), and
    /// processes between their open and their lock, or done with the lock.
    /// Listed only while the file is locked.
    pub open_without_lock: Vec<OpenProcess>,
}

impl Holders {
    /// Whether no lock of any family is held on the file.
    pub fn is_free(&self) -> bool {
        self.holding.is_empty() && self.unseen == 0
    }

    /// Whether an exclusive lock of either family is held on the file, by
    /// a process named or [`unseen`](Holders::unseen).
    pub fn held_exclusively(&self) -> bool {
        self.unseen_exclusive > 0 || self.holding.iter().any(|p| p.mode == LockMode::Exclusive)
    }

    /// The holders whose lock keeps out a lock of `kind`.
    pub fn excluding(&self, kind: LockKind) -> impl Iterator<Item = &HoldingProcess> {
        self.holding.iter().filter(move |h| h.family.excludes(kind))
    }

    /// The holders whose lock does not see a lock of `kind` (the other
    /// family): a program that locks this file the other way.
    pub fn other_family(&self, kind: LockKind) -> impl Iterator<Item = &HoldingProcess> {
        self.holding
            .iter()
            .filter(move |h| !h.family.excludes(kind))
    }
}

/// A file of this host that is locked (or that a request waits for), as
/// `lockmgr::locked_files()` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockedFile {
    /// The file's path, as a descriptor of a process that has it open names
    /// it; `None` when no process this caller can see has it open, or it
    /// was deleted.
    pub path: Option<std::path::PathBuf>,
    /// Its device number (`st_dev`).
    pub device: u64,
    /// Its inode number.
    pub inode: u64,
    /// Who holds it and who waits.
    pub holders: Holders,
    /// For a [`Semaphore`](crate::Semaphore)'s file (its head gives the
    /// permit count): [`Status::Semaphore`], its permits and how many are
    /// taken, as [`LockMgr::status`](crate::LockMgr::status) tells them.
    /// `None` for any other file, and when the file could not be read
    /// through its path.
    pub semaphore: Option<Status>,
}

impl LockedFile {
    /// Whether `meta` (of a path) describes this file.
    pub fn is(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        meta.dev() == self.device && meta.ino() == self.inode
    }
}
