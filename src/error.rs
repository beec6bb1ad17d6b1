//! The crate's error type, and [`LockId`], which names the lock an error
//! is about.

use std::error::Error;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::holder::{Holder, Shown};
use crate::vocab::FileKind;

/// Which lock an error is about: a lock file, or a lock on a PostgreSQL
/// server. Never carries a password. Cheap to clone.
///
/// Its `Display` is meant for a person and a log line: a path or name is
/// shown as it is, or quoted and escaped as `{:?}` shows it when it holds a
/// control character, a bidirectional override or (a path) bytes that are
/// not UTF-8, so that it can neither forge a line nor drive a terminal, and
/// two names never read the same.
///
/// ```
/// use lockmgr::{LockId, LockMgr};
/// let err = LockMgr::new("/sys/app.lock").try_acquire().unwrap_err();
/// assert_eq!(err.lock(), &LockId::file("/sys/app.lock"));
/// assert_eq!(err.lock().path(), Some(std::path::Path::new("/sys/app.lock")));
/// assert_eq!(err.lock().to_string(), "/sys/app.lock");
///
/// let pg = LockId::postgres("db:5432", "app", "nightly-report");
/// assert_eq!(pg.to_string(), "postgres://db:5432/app/nightly-report");
/// assert_eq!(pg.server(), Some("db:5432"));
/// assert_eq!(pg.name(), Some("nightly-report"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LockId(Arc<Target>);

#[derive(PartialEq, Eq, Hash)]
enum Target {
    File(PathBuf),
    Postgres {
        server: String,
        database: String,
        name: String,
    },
}

impl LockId {
    /// The lock file at `path`, by that path. (A [`LockMgr`](crate::LockMgr)
    /// names its lock by the absolute path it made of a relative one.)
    pub fn file(path: impl Into<PathBuf>) -> LockId {
        LockId(Arc::new(Target::File(path.into())))
    }

    /// The lock `name` in `database` on `server` (`HOST:PORT`).
    pub fn postgres(
        server: impl Into<String>,
        database: impl Into<String>,
        name: impl Into<String>,
    ) -> LockId {
        LockId(Arc::new(Target::Postgres {
            server: server.into(),
            database: database.into(),
            name: name.into(),
        }))
    }

    /// The lock file's path, for a file lock.
    pub fn path(&self) -> Option<&Path> {
        match &*self.0 {
            Target::File(path) => Some(path),
            Target::Postgres { .. } => None,
        }
    }

    /// The server (`HOST:PORT`), for a PostgreSQL lock.
    pub fn server(&self) -> Option<&str> {
        match &*self.0 {
            Target::File(_) => None,
            Target::Postgres { server, .. } => Some(server),
        }
    }

    /// The database, for a PostgreSQL lock.
    pub fn database(&self) -> Option<&str> {
        match &*self.0 {
            Target::File(_) => None,
            Target::Postgres { database, .. } => Some(database),
        }
    }

    /// The lock's name, for a PostgreSQL lock.
    pub fn name(&self) -> Option<&str> {
        match &*self.0 {
            Target::File(_) => None,
            Target::Postgres { name, .. } => Some(name),
        }
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.0 {
            Target::File(path) => write!(f, "{}", ShownPath(path)),
            Target::Postgres {
                server,
                database,
                name,
            } => write!(f, "postgres://{server}/{database}/{}", Shown(name)),
        }
    }
}

/// A path shown to a person (a lock's, a journal's): as it is, or quoted and
/// escaped as `{:?}` does when it holds a character that could forge a line
/// or drive the terminal, or bytes that are not UTF-8 (`\xFF`: two such
/// names are told apart, where U+FFFD would make them read the same).
pub(crate) struct ShownPath<'a>(pub(crate) &'a Path);

impl fmt::Display for ShownPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.to_str() {
            Some(text) => write!(f, "{}", Shown(text)),
            None => write!(f, "{:?}", self.0),
        }
    }
}

impl fmt::Debug for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockId({self})")
    }
}

impl From<&Path> for LockId {
    fn from(path: &Path) -> Self {
        LockId::file(path)
    }
}

/// The operation that failed, carried by [`LockError::Io`] and
/// [`LockError::Server`].
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
    /// Reading the lock's state or its holder.
    Read,
    /// Writing the lock file (a semaphore's permit count).
    Write,
    /// Removing the lock file on release.
    Remove,
    /// Closing the lock file.
    Close,
    /// Drawing a fencing token.
    Fence,
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
            Operation::Write => "write",
            Operation::Remove => "remove",
            Operation::Close => "close",
            Operation::Fence => "draw a fencing token for",
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
/// Every variant names the lock with a [`LockId`]; [`LockError::lock`]
/// returns it. The `Display` form is one line, meant for a log:
///
/// ```
/// # use lockmgr::{LockError, LockId};
/// let lock = LockId::file("/run/app/jobs.lock");
/// let e = LockError::WouldBlock { lock: lock.clone(), holder: None };
/// assert_eq!(e.to_string(), "lock /run/app/jobs.lock is held by another owner");
///
/// let holder = "lockmgr-holder/1 pid=4242 host=web-3 since=1763917331\n".parse().ok();
/// let e = LockError::WouldBlock { lock, holder };
/// assert_eq!(
///     e.to_string(),
///     "lock /run/app/jobs.lock is held by pid 4242 on host web-3 since 2025-11-23T17:02:11Z"
/// );
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum LockError {
    /// The lock is held elsewhere and the caller asked not to wait
    /// (`wait == false`, a zero timeout, or a `try_acquire`).
    WouldBlock {
        /// The lock.
        lock: LockId,
        /// Who holds it, when an exclusive holder left a readable record.
        holder: Option<Holder>,
    },
    /// Every attempt ran out of time while the lock stayed held.
    TimedOut {
        /// The lock.
        lock: LockId,
        /// How many attempts were made: the builder's `max_attempts` for a
        /// lock file; for a `lockmgr::pg` lock, those begun on the server
        /// before the deadline (fewer when connecting took part of the
        /// budget, 0 when the call timed out behind other tasks of its
        /// process). A semaphore, which waits in rounds of its own, says its
        /// `max_attempts`: its budget ran out.
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
        /// The lock.
        lock: LockId,
        /// The file system's name, from its `statfs` magic (`"unknown"` when
        /// not recognised).
        fs: &'static str,
        /// The error the lock call returned.
        source: io::Error,
    },
    /// The path exists but is not a regular file. Nothing was changed.
    NotAFile {
        /// The lock.
        lock: LockId,
        /// What the path is instead.
        kind: FileKind,
    },
    /// The lock file may be read but not written by this process, and an
    /// exclusive OFD lock needs a descriptor open for writing: an exclusive
    /// [`LockMgr`](crate::LockMgr) lock of the default kind, or any permit
    /// of a [`Semaphore`](crate::Semaphore). (A
    /// [`LockKind::Flock`](crate::LockKind::Flock) lock, of either mode, and
    /// a shared OFD lock need only read access.) Nothing was changed.
    ReadOnly {
        /// The lock.
        lock: LockId,
        /// The error the writable open gave (`EACCES`, `EROFS`, or `EPERM`
        /// for an immutable or append-only file).
        source: io::Error,
    },
    /// A directory on the way to the lock file does not exist and the
    /// builder's `create_dirs` is off. Nothing was created.
    MissingParent {
        /// The lock.
        lock: LockId,
    },
    /// The lock cannot be named or used as given: an empty path or one
    /// ending in `/`; one file (or name) twice in an `acquire_all` set; a
    /// semaphore count out of range, or other than the one its file (or
    /// fence table) keeps; a PostgreSQL connection string that does not
    /// parse, a lock name too long, holding a NUL or ending in `/permits`,
    /// or a bad fence table name. `reason` says which.
    Invalid {
        /// The lock, as far as it could be named.
        lock: LockId,
        /// What is wrong.
        reason: String,
    },
    /// A system call failed.
    Io {
        /// The lock.
        lock: LockId,
        /// What the crate was doing.
        op: Operation,
        /// The underlying error.
        source: io::Error,
    },
    /// The lock server could not be reached, refused the login, did not
    /// answer in time, or the session ended under a request (the
    /// PostgreSQL backend, `lockmgr::pg`).
    Connect {
        /// The lock; [`LockId::server`] names the server.
        lock: LockId,
        /// What went wrong.
        source: Box<dyn Error + Send + Sync>,
    },
    /// The lock server failed a request (`lockmgr::pg`).
    Server {
        /// The lock; [`LockId::server`] names the server.
        lock: LockId,
        /// What the crate was doing.
        op: Operation,
        /// The server's error.
        source: Box<dyn Error + Send + Sync>,
    },
}

impl LockError {
    /// The lock this error is about.
    pub fn lock(&self) -> &LockId {
        match self {
            LockError::WouldBlock { lock, .. }
            | LockError::TimedOut { lock, .. }
            | LockError::Unsupported { lock, .. }
            | LockError::NotAFile { lock, .. }
            | LockError::MissingParent { lock }
            | LockError::ReadOnly { lock, .. }
            | LockError::Invalid { lock, .. }
            | LockError::Io { lock, .. }
            | LockError::Connect { lock, .. }
            | LockError::Server { lock, .. } => lock,
        }
    }

    /// True when the lock exists and someone else holds it
    /// ([`WouldBlock`](LockError::WouldBlock) or
    /// [`TimedOut`](LockError::TimedOut)), as opposed to a failure to use the
    /// lock at all.
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

    pub(crate) fn io(lock: &Path, op: Operation, source: io::Error) -> Self {
        LockError::Io {
            lock: lock.into(),
            op,
            source,
        }
    }
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::WouldBlock { lock, holder } => {
                write!(f, "lock {lock} is held by ")?;
                by(f, holder)
            }
            LockError::TimedOut {
                lock,
                attempts,
                waited,
                holder,
            } => {
                write!(
                    f,
                    "timed out waiting for lock {lock} after {attempts} attempt{} ({:.3}s); held by ",
                    if *attempts == 1 { "" } else { "s" },
                    waited.as_secs_f64()
                )?;
                by(f, holder)
            }
            LockError::Unsupported { lock, fs, source } => write!(
                f,
                "cannot lock {lock}: the {fs} file system does not support this lock kind ({source})"
            ),
            LockError::NotAFile { lock, kind } => {
                write!(f, "cannot use {lock} as a lock file: it is {kind}")
            }
            // Also a semaphore's error, whose permits are exclusive OFD
            // locks: the hint must not suggest only a lock's options.
            LockError::ReadOnly { lock, source } => write!(
                f,
                "cannot lock {lock} exclusively with an OFD lock: the file may only be read \
                 here ({source}), and an OFD write lock (as a lock's exclusive mode and every \
                 semaphore permit take) needs it open for writing; a shared lock, or one of \
                 kind LockKind::Flock, needs only read access, as flock(1) does"
            ),
            LockError::MissingParent { lock } => write!(
                f,
                "cannot create lock file {lock}: its directory does not exist \
                 (the builder's create_dirs(true) creates it)"
            ),
            LockError::Invalid { lock, reason } => write!(f, "invalid lock {lock}: {reason}"),
            LockError::Io { lock, op, source } => {
                // "cannot lock lock file" would stutter.
                let noun = match op {
                    Operation::Lock | Operation::Unlock => "",
                    _ if lock.path().is_none() => "",
                    _ => "lock file ",
                };
                write!(f, "cannot {op} {noun}{lock}: {source}")
            }
            LockError::Connect { lock, source } => {
                write!(f, "cannot reach lock server for {lock}: {source}")
            }
            LockError::Server { lock, op, source } => {
                write!(f, "lock server failed to {op} {lock}: {source}")
            }
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
            LockError::Io { source, .. }
            | LockError::Unsupported { source, .. }
            | LockError::ReadOnly { source, .. } => Some(source),
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
    fn display_names_lock_and_operation() {
        let e = LockError::io(
            Path::new("/x/y.lock"),
            Operation::Open,
            io::Error::from_raw_os_error(13),
        );
        let s = e.to_string();
        assert!(s.starts_with("cannot open lock file /x/y.lock: "), "{s}");
        assert!(e.source().is_some());
        let t = LockError::TimedOut {
            lock: LockId::file("/a"),
            attempts: 3,
            waited: Duration::from_millis(1500),
            holder: None,
        };
        assert_eq!(
            t.to_string(),
            "timed out waiting for lock /a after 3 attempts (1.500s); held by another owner"
        );
        assert!(t.is_contended());
        let pg = LockId::postgres("db:5432", "app", "jobs");
        assert_eq!(pg.to_string(), "postgres://db:5432/app/jobs");
        assert_eq!(pg.server(), Some("db:5432"));
        assert_eq!(pg.path(), None);
    }
}
