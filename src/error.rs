//! The crate's error type.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::holder::Holder;
pub use crate::os::FileKind;

/// The operation that failed, carried by [`LockError::Io`].
///
/// ```
/// use lockmgr::{LockError, LockMgr, Operation};
/// // sysfs refuses new files, even to root.
/// let err = LockMgr::new("/sys/app.lock").try_acquire().unwrap_err();
/// assert!(matches!(err, LockError::Io { op: Operation::Open, .. }));
/// assert!(err.to_string().starts_with("cannot open lock file /sys/app.lock: "));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Opening (or creating) the lock file.
    Open,
    /// Creating the lock file's missing parent directories.
    CreateDir,
    /// Reading the lock file's metadata.
    Stat,
    /// Taking the lock.
    Lock,
    /// Dropping the lock.
    Unlock,
    /// Reading the lock file (its holder record, its lock state).
    Read,
    /// Removing the lock file on release.
    Remove,
    /// Writing (a journal record).
    Write,
    /// Syncing data to disk.
    Sync,
    /// Closing the lock file.
    Close,
}

impl Operation {
    fn verb(self) -> &'static str {
        match self {
            Operation::Open => "open",
            Operation::CreateDir => "create the directory of",
            Operation::Stat => "stat",
            Operation::Lock => "lock",
            Operation::Unlock => "unlock",
            Operation::Read => "read",
            Operation::Remove => "remove",
            Operation::Write => "write",
            Operation::Sync => "sync",
            Operation::Close => "close",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.verb())
    }
}

/// Everything that can go wrong while taking or releasing a lock.
///
/// Every variant names the lock file's path (for [`crate::pg`] locks, the
/// lock's URL); [`LockError::path`] returns it.
/// The `Display` form is one line, meant for a log:
///
/// ```
/// # use lockmgr::LockError;
/// let e = LockError::WouldBlock { path: "/run/app/jobs.lock".into(), holder: None };
/// assert_eq!(e.to_string(), "lock /run/app/jobs.lock is held by another owner");
///
/// let holder = "lockmgr-holder/1 pid=4242 host=web-3 since=1763917331\n".parse().ok();
/// let e = LockError::WouldBlock { path: "/run/app/jobs.lock".into(), holder };
/// assert_eq!(
///     e.to_string(),
///     "lock /run/app/jobs.lock is held by pid 4242 on host web-3 since 2025-11-23T17:02:11Z"
/// );
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held elsewhere and the caller asked not to wait
    /// (`wait == false`, a zero timeout, or [`LockMgr::try_acquire`]).
    ///
    /// [`LockMgr::try_acquire`]: crate::LockMgr::try_acquire
    WouldBlock {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, when an exclusive holder left a readable record.
        holder: Option<Holder>,
    },
    /// Every attempt ran out of time while the lock stayed held.
    TimedOut {
        /// The lock file.
        path: PathBuf,
        /// How many attempts were made (the builder's `max_attempts`).
        attempts: u32,
        /// How long the call waited in all.
        waited: Duration,
        /// Who held it at the end, when an exclusive holder left a readable
        /// record.
        holder: Option<Holder>,
    },
    /// The file system does not support this kind of lock (`ENOLCK`,
    /// `ENOTSUP`/`EOPNOTSUPP`, `ENOSYS` from the lock call): an NFS mount
    /// without a lock manager, for example.
    Unsupported {
        /// The lock file.
        path: PathBuf,
        /// The file system's name, from its `statfs` magic (`"unknown"` when
        /// not recognised).
        fs: &'static str,
        /// The error the lock call returned.
        source: io::Error,
    },
    /// The path exists but is not a regular file. Nothing was changed.
    NotAFile {
        /// The lock file's path.
        path: PathBuf,
        /// What the path is instead.
        kind: FileKind,
    },
    /// A directory on the way to the lock file does not exist and the
    /// builder's `create_dirs` is off. Nothing was created.
    MissingParent {
        /// The lock file's path.
        path: PathBuf,
    },
    /// The path cannot name a lock file at all (for example, it is empty).
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A system call failed.
    Io {
        /// The lock file's path.
        path: PathBuf,
        /// What the crate was doing.
        op: Operation,
        /// The underlying error.
        source: io::Error,
    },
    /// The lock server could not be reached, refused the login, did not
    /// answer in time, or the session ended under a request (the
    /// PostgreSQL backend, [`crate::pg`]). Also: its connection string
    /// does not parse.
    Connect {
        /// The lock, as `postgres://HOST:PORT/DATABASE/NAME`.
        path: PathBuf,
        /// The server, as `HOST:PORT`.
        server: String,
        /// What went wrong.
        source: Box<dyn Error + Send + Sync>,
    },
    /// The lock server failed a request ([`crate::pg`]).
    Server {
        /// The lock, as `postgres://HOST:PORT/DATABASE/NAME`.
        path: PathBuf,
        /// The server, as `HOST:PORT`.
        server: String,
        /// What the crate was doing.
        op: Operation,
        /// The server's error.
        source: Box<dyn Error + Send + Sync>,
    },
}

impl LockError {
    /// The lock file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            LockError::WouldBlock { path, .. }
            | LockError::TimedOut { path, .. }
            | LockError::Unsupported { path, .. }
            | LockError::NotAFile { path, .. }
            | LockError::MissingParent { path }
            | LockError::InvalidPath { path, .. }
            | LockError::Io { path, .. }
            | LockError::Connect { path, .. }
            | LockError::Server { path, .. } => path,
        }
    }

    /// True when the lock exists and someone else holds it
    /// ([`WouldBlock`](LockError::WouldBlock) or
    /// [`TimedOut`](LockError::TimedOut)), as opposed to a failure to use the
    /// lock file at all.
    pub fn is_contended(&self) -> bool {
        matches!(
            self,
            LockError::WouldBlock { .. } | LockError::TimedOut { .. }
        )
    }

    /// The recorded holder of a contended lock, when known.
    pub fn holder(&self) -> Option<&Holder> {
        match self {
            LockError::WouldBlock { holder, .. } | LockError::TimedOut { holder, .. } => {
                holder.as_ref()
            }
            _ => None,
        }
    }

    pub(crate) fn io(path: &Path, op: Operation, source: io::Error) -> Self {
        LockError::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::WouldBlock { path, holder } => {
                write!(f, "lock {} is held by ", path.display())?;
                by(f, holder)
            }
            LockError::TimedOut {
                path,
                attempts,
                waited,
                holder,
            } => {
                write!(
                    f,
                    "timed out waiting for lock {} after {} attempt{} ({:.3}s); held by ",
                    path.display(),
                    attempts,
                    if *attempts == 1 { "" } else { "s" },
                    waited.as_secs_f64()
                )?;
                by(f, holder)
            }
            LockError::Unsupported { path, fs, source } => write!(
                f,
                "cannot lock {}: the {} file system does not support this lock kind ({})",
                path.display(),
                fs,
                source
            ),
            LockError::NotAFile { path, kind } => write!(
                f,
                "cannot use {} as a lock file: it is {}",
                path.display(),
                kind
            ),
            LockError::MissingParent { path } => write!(
                f,
                "cannot create lock file {}: its directory does not exist \
                 (the builder's create_dirs(true) creates it)",
                path.display()
            ),
            LockError::InvalidPath { path, reason } => {
                write!(f, "invalid lock file path {:?}: {}", path, reason)
            }
            LockError::Io { path, op, source } => {
                // "cannot lock lock file" would stutter.
                let noun = match op {
                    Operation::Lock | Operation::Unlock => "",
                    _ => "lock file ",
                };
                write!(f, "cannot {} {}{}: {}", op, noun, path.display(), source)
            }
            LockError::Connect {
                path,
                server,
                source,
            } => write!(
                f,
                "cannot reach lock server {} for lock {}: {}",
                server,
                path.display(),
                source
            ),
            LockError::Server {
                path,
                server,
                op,
                source,
            } => write!(
                f,
                "lock server {} failed to {} {}: {}",
                server,
                op,
                path.display(),
                source
            ),
        }
    }
}

fn by(f: &mut fmt::Formatter<'_>, holder: &Option<Holder>) -> fmt::Result {
    match holder {
        Some(h) => write!(f, "{h}"),
        None => f.write_str("another owner"),
    }
}

impl Error for LockError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            LockError::Io { source, .. } | LockError::Unsupported { source, .. } => Some(source),
            LockError::Connect { source, .. } | LockError::Server { source, .. } => {
                Some(source.as_ref())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_error_bounds<T: Error + Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_sync_static() {
        assert_error_bounds::<LockError>();
    }

    #[test]
    fn display_names_path_and_operation() {
        let e = LockError::io(
            Path::new("/x/y.lock"),
            Operation::Open,
            io::Error::from_raw_os_error(13),
        );
        let s = e.to_string();
        assert!(s.starts_with("cannot open lock file /x/y.lock: "), "{s}");
        assert!(e.source().is_some());
        let t = LockError::TimedOut {
            path: "/a".into(),
            attempts: 3,
            waited: Duration::from_millis(1500),
            holder: None,
        };
        assert_eq!(
            t.to_string(),
            "timed out waiting for lock /a after 3 attempts (1.500s); held by another owner"
        );
        assert!(t.is_contended());
    }
}
