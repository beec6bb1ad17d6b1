//! [`JournalError`] and the operations it names.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::error::{LockError, ShownPath};

/// What a journal was doing when a system call failed, carried by
/// [`JournalError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JournalOp {
    /// Reading the journal file's metadata.
    Stat,
    /// Reading records.
    Read,
    /// Writing records.
    Write,
    /// Cutting off a torn tail.
    Truncate,
    /// Syncing records to disk.
    Sync,
}

impl fmt::Display for JournalOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JournalOp::Stat => "stat",
            JournalOp::Read => "read",
            JournalOp::Write => "write",
            JournalOp::Truncate => "truncate",
            JournalOp::Sync => "sync",
        })
    }
}

/// Everything that can go wrong with a journal.
#[derive(Debug)]
#[non_exhaustive]
pub enum JournalError {
    /// The journal file cannot be opened: not a regular file, a missing
    /// directory, no permission. Nothing was created or changed.
    Open(LockError),
    /// Taking the lock failed (timed out, for example); nothing was done.
    /// (A release that fails once the work is done is logged instead: the
    /// descriptor is closed even then, and the lock with it.)
    Lock(LockError),
    /// A record contains a newline; nothing was written.
    NewlineInRecord {
        /// The journal file.
        path: PathBuf,
        /// The record's position in the batch (0 for a single append).
        index: usize,
    },
    /// A record is longer than the journal's maximum; nothing was written.
    RecordTooLong {
        /// The journal file.
        path: PathBuf,
        /// The record's position in the batch (0 for a single append).
        index: usize,
        /// Its length in bytes.
        len: usize,
        /// The maximum ([`JournalBuilder::max_record_len`](super::JournalBuilder::max_record_len)).
        max: usize,
    },
    /// The file holds what no journal writer could have left: 1 MiB (the
    /// longest append, its line end included) or more without a line end,
    /// at its end or in a line. It is another program's data, or damaged:
    /// nothing was cut or written, and reading stops there.
    NotAJournal {
        /// The journal file.
        path: PathBuf,
        /// Where the bytes without a line end begin (at the latest).
        offset: u64,
    },
    /// The journal may only be read by this process (no write permission,
    /// a read-only mount, an immutable file): it was opened for reading,
    /// and this append was refused. Nothing was written.
    ReadOnly {
        /// The journal file.
        path: PathBuf,
        /// Why the journal could not be opened for writing.
        source: io::Error,
    },
    /// A system call on the journal file failed.
    Io {
        /// The journal file.
        path: PathBuf,
        /// What the journal was doing.
        op: JournalOp,
        /// The underlying error.
        source: io::Error,
    },
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Said of the journal: the lock file's wording, and its
            // builder's hints, would mislead here.
            JournalError::Open(e) => match e {
                LockError::MissingParent { lock } => write!(
                    f,
                    "cannot create journal {lock}: its directory does not exist"
                ),
                LockError::NotAFile { lock, kind } => {
                    write!(f, "cannot use {lock} as a journal: it is {kind}")
                }
                LockError::Io { lock, op, source } => {
                    write!(f, "cannot {op} journal {lock}: {source}")
                }
                _ => write!(f, "journal: {e}"),
            },
            JournalError::Lock(e) => write!(f, "journal lock: {e}"),
            JournalError::NewlineInRecord { path, index } => write!(
                f,
                "record {index} for journal {} contains a newline; nothing was written",
                ShownPath(path)
            ),
            JournalError::RecordTooLong {
                path,
                index,
                len,
                max,
            } => write!(
                f,
                "record {index} for journal {} is {len} bytes, over the maximum of {max}; \
                 nothing was written",
                ShownPath(path)
            ),
            JournalError::NotAJournal { path, offset } => write!(
                f,
                "{} is not a journal, or is damaged: 1 MiB or more without a line end from \
                 byte {offset}, which no append leaves; nothing was cut or written",
                ShownPath(path)
            ),
            JournalError::ReadOnly { path, source } => write!(
                f,
                "cannot append to journal {}: this process may only read it ({source}); \
                 nothing was written",
                ShownPath(path)
            ),
            JournalError::Io { path, op, source } => {
                write!(f, "cannot {op} journal {}: {source}", ShownPath(path))
            }
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Open(e) | JournalError::Lock(e) => Some(e),
            JournalError::Io { source, .. } | JournalError::ReadOnly { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<LockError> for JournalError {
    fn from(e: LockError) -> Self {
        JournalError::Lock(e)
    }
}
