//! The journal: crash-safe record appends from many processes and tasks,
//! on the crate's locks. See [`Journal`].
//!
//! The journal is a user of the public face ([`LockMgr`]); it opens its file
//! through the face's safe open, with the lock file's refusals.

mod error;
mod records;

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock::{
    open_data_file, open_data_file_for_reading, reopen_locked_for_append,
    reopen_locked_for_reading, write_refused,
};
use crate::{LockGuard, LockKind, LockMgr, LockMode};

pub use error::{JournalError, JournalOp};
pub use records::Records;

/// The default largest record, in bytes (newline not counted).
pub const DEFAULT_MAX_RECORD: usize = 64 * 1024;

/// How many times in a row a writer whose two locks are both on the
/// journal file takes them anew when a rotation put them on two files.
const MAX_ROTATIONS: u32 = 16;

/// Batches are written in pieces of at most this many bytes (whole records
/// each), one `write(2)` per piece.
pub(crate) const MAX_WRITE: usize = 1024 * 1024;

/// Whether an append waits for its record to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// No sync: the record is in the file (the page cache) when `append`
    /// returns, and survives the death of any process, not a power cut.
    #[default]
    None,
    /// `fdatasync` after each append (or batch), before the lock is
    /// released: the record is on disk when `append` returns. The first
    /// append to a file this journal opened (or created, or found anew
    /// after a rotation) also syncs its directory (`fsync`), so that a
    /// crash cannot lose the new file whole; a directory this process may
    /// not read cannot be synced, and is not.
    Data,
}

/// Options for a [`Journal`], from [`Journal::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until open() is called"]
pub struct JournalBuilder {
    path: PathBuf,
    lock_path: Option<PathBuf>,
    sync: SyncPolicy,
    max_attempts: u32,
    kind: LockKind,
    timeout: Duration,
    max_record: usize,
}

impl JournalBuilder {
    /// Lock this file instead of the journal itself (it gets the usual
    /// holder record; the journal never does). A path that names the
    /// journal file itself, by this name or another, is the same as none.
    pub fn lock_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.lock_path = Some(path.into());
        self
    }

    /// When records reach the disk. Default [`SyncPolicy::None`].
    pub fn sync(mut self, sync: SyncPolicy) -> Self {
        self.sync = sync;
        self
    }

    /// Attempts per append, as [`LockMgrBuilder::max_attempts`](crate::LockMgrBuilder::max_attempts).
    /// Default 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The lock family, as [`LockMgrBuilder::kind`](crate::LockMgrBuilder::kind). Default
    /// [`LockKind::Ofd`]; [`LockKind::Flock`] interoperates with the seed's
    /// Python writers (`fcntl.flock`).
    pub fn kind(mut self, kind: LockKind) -> Self {
        self.kind = kind;
        self
    }

    /// How long each lock attempt of an append waits. Default 10 s (so an
    /// append gives up after `10 s * max_attempts`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest record accepted, in bytes without the newline. Default
    /// [`DEFAULT_MAX_RECORD`] (64 KiB); at most 1 MiB.
    pub fn max_record_len(mut self, max: usize) -> Self {
        self.max_record = max.min(MAX_WRITE - 1);
        self
    }

    /// Opens (creating if missing) the journal file. Relative paths (the
    /// journal's, the lock file's) are taken against the current directory
    /// now, and keep naming those files if the process changes directory.
    ///
    /// A journal this process may read but not write (another user's file,
    /// a read-only mount, an immutable file) is opened for reading:
    /// [`records`](Journal::records) works, under the shared lock, and every
    /// append is refused with [`JournalError::ReadOnly`]. Such a reader
    /// never creates a file: the journal rotated away with no new file yet,
    /// or a separate [`lock_file`](JournalBuilder::lock_file) that is
    /// missing (cleared from `/run/lock` at boot, say), makes `records` fail
    /// ([`JournalError::Lock`], `NotFound`) until a writer makes it.
    ///
    /// # Errors
    ///
    /// [`JournalError::Open`] carrying [`LockError::NotAFile`] when the
    /// path is a directory, symlink, FIFO or device,
    /// [`LockError::MissingParent`] when its directory is missing, and
    /// [`LockError::Io`] for other failures. Nothing is created or changed
    /// then.
    ///
    /// [`LockError::NotAFile`]: crate::LockError::NotAFile
    /// [`LockError::MissingParent`]: crate::LockError::MissingParent
    /// [`LockError::Io`]: crate::LockError::Io
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it holds no lock, and an abandoned open leaves only
    /// (possibly) the created, empty journal file.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// use lockmgr::journal::{Journal, SyncPolicy};
    /// let journal = Journal::builder(dir.path().join("jobs.journal"))
    ///     .sync(SyncPolicy::Data)
    ///     .open()
    ///     .await?;
    /// journal.append("job 17 done").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(mut self) -> Result<Journal, JournalError> {
        // Relative paths name the files they name now (see
        // `LockMgrBuilder::build`).
        self.path = crate::lock::absolute(self.path);
        self.lock_path = self.lock_path.map(crate::lock::absolute);
        let (file, read_only) = match open_data_file(&self.path, 0o644) {
            Ok(file) => (file, None),
            // Another user's journal, a read-only mount: still readable
            // (under the shared lock, which needs no write access).
            Err(refused) => match write_refused(&refused) {
                Some(errno) => match open_data_file_for_reading(&self.path) {
                    Ok(file) => {
                        tracing::info!(
                            path = %self.path.display(),
                            error = %refused,
                            "journal may only be read here: opened for reading"
                        );
                        (file, Some(errno))
                    }
                    Err(_) => return Err(JournalError::Open(refused)),
                },
                None => return Err(JournalError::Open(refused)),
            },
        };
        // A lock file that is the journal itself (by this name or another)
        // is the default lock: locked a second time, through another
        // descriptor, it would wait for itself, and get a holder record.
        if let Some(lock_path) = &self.lock_path {
            use std::os::unix::fs::MetadataExt;
            let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
                (a.dev(), a.ino()) == (b.dev(), b.ino())
            };
            if let (Ok(journal), Ok(lock)) = (file.metadata(), std::fs::metadata(lock_path)) {
                if same(&journal, &lock) {
                    self.lock_path = None;
                }
            }
        }
        let lock_path = self.lock_path.clone().unwrap_or_else(|| self.path.clone());
        let lock = LockMgr::builder(lock_path)
            .kind(self.kind)
            .max_attempts(self.max_attempts)
            // Nothing but records goes into the journal file.
            .record_holder(self.lock_path.is_some())
            // A reader that may not write the journal never makes one
            // (after a rotation, before the writers' new file is there).
            .create_file(read_only.is_none())
            .build();
        // Writers configured with another lock (family or file) must still
        // exclude the default ones, and each other: every writer also takes
        // the default lock, an OFD lock on the journal file itself, last (so
        // no two writers can wait for each other in a cycle).
        let is_default_lock = self.lock_path.is_none() && self.kind == LockKind::Ofd;
        let file_lock = (!is_default_lock).then(|| {
            LockMgr::builder(&self.path)
                .max_attempts(self.max_attempts)
                .record_holder(false)
                .create_file(read_only.is_none())
                .build()
        });
        Ok(Journal {
            inner: Arc::new(Inner {
                path: self.path,
                file: Mutex::new(Arc::new(file)),
                both_on_journal: file_lock.is_some() && self.lock_path.is_none(),
                lock,
                file_lock,
                sync: self.sync,
                entry_synced: AtomicBool::new(false),
                read_only,
                timeout: self.timeout,
                max_record: self.max_record,
            }),
        })
    }
}

/// A journal: one file that many processes and tasks append records to,
/// safely under a lock, even when writers are killed at any moment.
///
/// Each [`append`](Journal::append) takes the exclusive lock, writes the
/// record and its newline with **one** `write(2)` on a descriptor opened
/// with `O_APPEND` (so the kernel puts it at the end of the file, whatever
/// other writers did), optionally `fdatasync`s, and releases the lock.
///
/// What a killed writer can leave behind: nothing, or its whole record, or
/// (only if it died inside a large write) the first part of its record
/// without the newline, a *torn tail*. A torn tail was never acknowledged:
/// [`records`](Journal::records) reports it apart from the records, and the
/// next append cuts it off (under the lock) before writing, so it never
/// merges with another record. No append writes more than 1 MiB at once,
/// its line end included, so a run of 1 MiB or more without a line end is
/// no torn tail but another program's data or damage: it is never cut,
/// and appends and reads stop there with [`JournalError::NotAJournal`].
///
/// The journal file holds nothing but records. By default the lock is an
/// OFD lock on the journal file itself (with no holder record); another
/// family ([`JournalBuilder::kind`]) or a separate lock file
/// ([`JournalBuilder::lock_file`]) may be named, for other programs that
/// lock the journal their way (`lockmgr run --no-record JOURNAL -- ...`
/// locks it as appends do, and writes no holder record into it). Such a writer takes the default lock too, so
/// writers that disagree on the lock still never write at the same time.
///
/// # What an append's result means
///
/// - `Ok(())`: the records are in the journal file (on disk, with
///   [`SyncPolicy::Data`]).
/// - `Err(`[`JournalError::Lock`]`)`, `Err(`[`JournalError::NewlineInRecord`]`)`,
///   `Err(`[`JournalError::RecordTooLong`]`)`, `Err(`[`JournalError::ReadOnly`]`)`
///   (a journal this process may only read): nothing was written.
/// - `Err(`[`JournalError::Io`]`)` with [`JournalOp::Write`] (a full disk,
///   a file too large, an I/O error part-way): none of the records is in
///   the journal. What was written was cut off again under the lock, before
///   the error was returned (unless that cut failed too, which is logged
///   at error level). Retrying is safe. A file-size limit
///   (`RLIMIT_FSIZE`) gives this error only where SIGXFSZ is ignored; by
///   default that signal ends the process, as any kill does.
/// - `Err(`[`JournalError::Io`]`)` with [`JournalOp::Sync`]: the records
///   are in the file, but whether they reached the disk is unknown. A retry
///   would write them twice.
/// - Other `Err(`[`JournalError::Io`]`)`s (stat, read, truncate of a torn
///   tail before writing), `Err(`[`JournalError::NotAJournal`]`)`, and
///   `Err(`[`JournalError::Open`]`)` (the file locked, rotated since this
///   journal last wrote, could not be opened again): nothing was written.
///
/// # Rotation
///
/// Each append (and [`records`](Journal::records)) writes to the journal
/// file it holds locked, the one at the journal's path when the lock was
/// won: after `logrotate` renames the journal away (or something replaces
/// it), records go to the file now at the path, and the renamed file keeps
/// what it had. An append whose lock was won just before a rename writes
/// to the renamed file (never beside another writer, to a file it does not
/// hold locked).
///
/// ```
/// use lockmgr::journal::{Journal, SyncPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let journal = Journal::builder(dir.path().join("jobs.journal"))
///     .sync(SyncPolicy::Data)
///     .open()
///     .await?;
/// journal.append("job 1 started").await?;
/// journal.append_batch(["job 2 started", "job 3 started"]).await?;
///
/// let read = journal.records().await?;
/// assert!(read.torn_tail().is_none());
/// let records: Vec<Vec<u8>> = read.collect::<Result<_, _>>()?;
/// assert_eq!(records.len(), 3);
/// assert_eq!(records[0], b"job 1 started");
/// # Ok(()) }
/// ```
///
/// A `Journal` is cheap to clone: clones share one open descriptor.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `O_RDWR | O_APPEND`: every write lands at the end; reads (of the tail,
    /// to cut a torn one, and of records) use `pread`. Replaced when the
    /// journal was rotated; readers keep the one they started with.
    file: Mutex<Arc<File>>,
    lock: LockMgr,
    /// The default lock (an OFD lock on the journal file), taken after
    /// `lock` when `lock` is another one.
    file_lock: Option<LockMgr>,
    /// Whether `lock` is on the journal file too (another lock family):
    /// both locks must then be had on one file.
    both_on_journal: bool,
    sync: SyncPolicy,
    /// With [`SyncPolicy::Data`]: whether the directory entry of the file
    /// open now is known to be on disk (its directory synced since it was
    /// opened). A file just created is in its directory only in memory:
    /// `fdatasync` of the file does not write the entry.
    entry_synced: AtomicBool,
    /// Why the journal could not be opened for writing (an error number),
    /// when it was opened for reading instead: appends are refused.
    read_only: Option<i32>,
    timeout: Duration,
    max_record: usize,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.inner.path)
            .field("lock", &self.inner.lock)
            .field("sync", &self.inner.sync)
            .field("timeout", &self.inner.timeout)
            .field("max_record", &self.inner.max_record)
            .field("read_only", &self.is_read_only())
            .finish()
    }
}

/// The locks an append or a read holds, released in reverse order when
/// dropped, as their guards' drops release them: off the runtime on a
/// network file system, so that a stalled mount does not freeze it, and a
/// release that fails (an unlock or close refused by such a file system)
/// is logged, not returned: the descriptor is closed even then, and the
/// lock with it, and the caller must not be told that records it wrote
/// were not, or be made to read again what it read.
struct Held {
    _file_lock: Option<LockGuard>,
    lock: LockGuard,
}

impl Journal {
    /// Opens (creating if missing) the journal at `path` with default
    /// options: the lock is an OFD lock on the journal file itself, no sync.
    ///
    /// # Errors
    ///
    /// As [`JournalBuilder::open`].
    ///
    /// # Cancel safety
    ///
    /// As [`JournalBuilder::open`].
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let journal = lockmgr::journal::Journal::open(dir.path().join("journal")).await?;
    /// journal.append("line one").await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(path: impl Into<PathBuf>) -> Result<Journal, JournalError> {
        Journal::builder(path).open().await
    }

    /// A [`JournalBuilder`] for the journal at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> JournalBuilder {
        JournalBuilder {
            path: path.into(),
            lock_path: None,
            sync: SyncPolicy::None,
            max_attempts: 10,
            kind: LockKind::Ofd,
            timeout: Duration::from_secs(10),
            max_record: DEFAULT_MAX_RECORD,
        }
    }

    /// Whether this process may only read the journal (see
    /// [`JournalBuilder::open`]): every append is then refused with
    /// [`JournalError::ReadOnly`].
    pub fn is_read_only(&self) -> bool {
        self.inner.read_only.is_some()
    }

    /// The journal file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends one record (a newline is added).
    ///
    /// Takes the exclusive lock (waiting per the journal's timeout and
    /// attempts), cuts off a torn tail a killed writer may have left, writes
    /// the record and its newline with one `write(2)`, syncs per the
    /// [`SyncPolicy`], and releases the lock. When it returns `Ok`, the
    /// record is in the file (on disk with [`SyncPolicy::Data`]).
    ///
    /// # Errors
    ///
    /// [`JournalError::NewlineInRecord`] and
    /// [`JournalError::RecordTooLong`] before anything is locked or written;
    /// [`JournalError::ReadOnly`], likewise, for a journal this process may
    /// only read (see [`JournalBuilder::open`]);
    /// [`JournalError::Lock`] when the lock cannot be had;
    /// [`JournalError::NotAJournal`] when the file ends with more bytes
    /// without a line end than an append could leave (nothing is cut or
    /// written);
    /// [`JournalError::Io`] when the write or sync fails.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the write leaves the file unchanged;
    /// the write itself is never interrupted (it is not an await point), so
    /// a record is either wholly in the file or not at all. Dropped during
    /// a [`SyncPolicy::Data`] sync, the record is in the file but its sync
    /// is not awaited.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let journal = lockmgr::journal::Journal::open(dir.path().join("journal")).await?;
    /// journal.append("worker 3: done").await?;
    /// assert!(journal.append("two\nlines").await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn append(&self, record: impl AsRef<[u8]>) -> Result<(), JournalError> {
        self.append_batch([record]).await
    }

    /// Appends many records under one hold of the lock, in one `write(2)`
    /// where they fit (pieces of up to 1 MiB of whole records otherwise),
    /// and one sync.
    ///
    /// # Errors
    ///
    /// As [`append`](Journal::append); if any record is invalid, none is
    /// written.
    ///
    /// A batch is all or nothing against errors, not against a kill: a
    /// writer killed inside its write (the kernel stops a write between
    /// pages for a fatal signal) may leave the batch's first records
    /// whole, which [`records`](Journal::records) then returns, and the
    /// part of the next one as a torn tail. Records that must stand or
    /// fall together belong in one record.
    ///
    /// # Cancel safety
    ///
    /// As [`append`](Journal::append), per piece: every piece is whole.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let journal = lockmgr::journal::Journal::open(dir.path().join("journal")).await?;
    /// journal.append_batch((0..100).map(|i| format!("entry {i}"))).await?;
    /// assert_eq!(journal.records().await?.count(), 100);
    /// # Ok(()) }
    /// ```
    pub async fn append_batch<I>(&self, records: I) -> Result<(), JournalError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let pieces = self.encode(records)?;
        if pieces.is_empty() {
            return Ok(());
        }
        if let Some(errno) = self.inner.read_only {
            return Err(JournalError::ReadOnly {
                path: self.inner.path.clone(),
                source: io::Error::from_raw_os_error(errno),
            });
        }
        let held = self.lock(LockMode::Exclusive).await?;
        let file = self.current_file(&held)?;
        let start = self.cut_torn_tail(&file)?;
        for piece in &pieces {
            if let Err(e) = write_once(&file, piece) {
                // None of this append may stay: cut the file back to where
                // it began, still under the lock.
                if let Err(undo) = file.set_len(start) {
                    tracing::error!(
                        path = %self.inner.path.display(),
                        error = %undo,
                        "journal: cannot cut a failed append back off; its start stays as a torn tail"
                    );
                }
                return Err(self.io(JournalOp::Write, e));
            }
        }
        if self.inner.sync == SyncPolicy::Data {
            let syncing = file.clone();
            // The first sync of a file opened (maybe created) by this
            // journal also syncs its directory: until then a crash may
            // lose the file whole, records and all.
            let directory = (!self.inner.entry_synced.load(Ordering::Acquire))
                .then(|| self.inner.path.parent().map(Path::to_path_buf))
                .flatten();
            // fdatasync takes milliseconds: off the runtime's threads.
            tokio::task::spawn_blocking(move || {
                syncing.sync_data()?;
                match directory.map(File::open) {
                    Some(Ok(dir)) => dir.sync_all(),
                    // A directory that may not be read cannot be synced by
                    // this process (nor listed): the file's own sync is all
                    // it can do.
                    Some(Err(e)) if e.kind() == io::ErrorKind::PermissionDenied => Ok(()),
                    Some(Err(e)) => Err(e),
                    None => Ok(()),
                }
            })
            .await
            .map_err(|e| self.io(JournalOp::Sync, io::Error::other(e)))?
            .map_err(|e| self.io(JournalOp::Sync, e))?;
            self.inner.entry_synced.store(true, Ordering::Release);
        }
        drop(held);
        Ok(())
    }

    /// Reads the journal back: its complete records, one by one (see
    /// [`Records`]), and apart from them a torn tail if a writer died inside
    /// its write. The lock is taken shared only to find where the finished
    /// appends end, so that no append is seen half-done and a long read
    /// does not hold writers up; the records are then read as the iterator
    /// advances.
    ///
    /// # Errors
    ///
    /// [`JournalError::Lock`] when the shared lock cannot be had;
    /// [`JournalError::NotAJournal`] when the file ends with more bytes
    /// without a line end than an append could leave (a line that long
    /// further in ends the iterator with the same error);
    /// [`JournalError::Io`] when the file cannot be read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let journal = lockmgr::journal::Journal::open(dir.path().join("journal")).await?;
    /// journal.append("a").await?;
    /// let read: Vec<Vec<u8>> = journal.records().await?.collect::<Result<_, _>>()?;
    /// assert_eq!(read, vec![b"a".to_vec()]);
    /// # Ok(()) }
    /// ```
    pub async fn records(&self) -> Result<Records, JournalError> {
        let held = self.lock(LockMode::Shared).await?;
        let file = self.current_file(&held)?;
        let len = file
            .metadata()
            .map_err(|e| self.io(JournalOp::Stat, e))?
            .len();
        let end = self.last_newline_end(&file, len)?;
        let mut tail = vec![0u8; (len - end) as usize];
        file.read_exact_at(&mut tail, end)
            .map_err(|e| self.io(JournalOp::Read, e))?;
        drop(held);
        // Everything before `end` was written by appends that finished
        // before the shared lock was had; later appends only add after it
        // (or cut back to at most `len`), so it is read without the lock.
        Ok(Records::new(
            file,
            self.inner.path.clone(),
            end,
            (!tail.is_empty()).then_some(tail),
        ))
    }

    /// Takes the journal's lock, and the default lock after it when the
    /// journal's is another one.
    async fn lock(&self, mode: LockMode) -> Result<Held, JournalError> {
        let inner = &self.inner;
        let take = |lock: &LockMgr| {
            let lock = lock.clone();
            async move {
                match mode {
                    LockMode::Exclusive => lock.acquire(true, inner.timeout).await,
                    LockMode::Shared => lock.acquire_shared(true, inner.timeout).await,
                }
            }
        };
        let mut rotated = 0;
        loop {
            let lock = take(&inner.lock).await?;
            let file_lock = match &inner.file_lock {
                Some(l) => Some(take(l).await?),
                None => None,
            };
            // The journal rotated between the two (each lock is taken on the
            // file at the path when it is opened): holding one lock on each
            // file, this writer would write to one whose other lock it does
            // not hold, beside a writer that takes only that one (`flock`).
            if inner.both_on_journal {
                let same = file_lock.as_ref().is_some_and(|f| {
                    let ids = |g: &LockGuard| g.file().metadata().map(|m| (m.dev(), m.ino())).ok();
                    ids(f).is_some() && ids(f) == ids(&lock)
                });
                if !same {
                    rotated += 1;
                    if rotated == MAX_ROTATIONS {
                        return Err(self.io(
                            JournalOp::Stat,
                            io::Error::other(
                                "the journal file was replaced between its two locks too many \
                                 times in a row; nothing was done",
                            ),
                        ));
                    }
                    continue;
                }
            }
            return Ok(Held {
                _file_lock: file_lock,
                lock,
            });
        }
    }

    /// Under the lock: the journal file this writer holds locked, which is
    /// the one at the path when the lock was won. The journal's descriptor
    /// is opened anew when it is another (the file was rotated away or
    /// replaced since the last append): on that very file, not on the path,
    /// which may name a newer file by now, which another writer may be
    /// writing to under its own lock (and would cut a record of ours, half
    /// written, as a torn tail).
    fn current_file(&self, held: &Held) -> Result<Arc<File>, JournalError> {
        let inner = &self.inner;
        let mut file = inner.file.lock().unwrap_or_else(|e| e.into_inner());
        let ours = file.metadata().map_err(|e| self.io(JournalOp::Stat, e))?;
        // The default lock, an OFD lock on the journal file itself, which
        // a writer with another lock also takes (last).
        let locked = held._file_lock.as_ref().unwrap_or(&held.lock);
        let theirs = locked
            .file()
            .metadata()
            .map_err(|e| self.io(JournalOp::Stat, e))?;
        if theirs.nlink() == 0 {
            // Removed since the lock was won: records written there would
            // be in no file anyone can read. The next append opens (and
            // creates) the file at the path.
            return Err(self.io(
                JournalOp::Stat,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "the journal file was removed just after it was locked; nothing was done",
                ),
            ));
        }
        if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
            tracing::info!(
                path = %inner.path.display(),
                "journal file was rotated or replaced; appending to the file now at its path"
            );
            let reopened = if inner.read_only.is_some() {
                reopen_locked_for_reading(locked)
            } else {
                reopen_locked_for_append(locked)
            };
            let reopened = reopened.map_err(JournalError::Open)?;
            *file = Arc::new(reopened);
            inner.entry_synced.store(false, Ordering::Release);
        }
        Ok(file.clone())
    }

    /// Checks and frames the records: newline-terminated pieces of at most
    /// `MAX_WRITE` bytes, each of whole records.
    fn encode<I>(&self, records: I) -> Result<Vec<Vec<u8>>, JournalError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let path = || self.inner.path.clone();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let mut piece = Vec::new();
        for (index, record) in records.into_iter().enumerate() {
            let record = record.as_ref();
            if record.contains(&b'\n') {
                return Err(JournalError::NewlineInRecord {
                    path: path(),
                    index,
                });
            }
            if record.len() > self.inner.max_record {
                return Err(JournalError::RecordTooLong {
                    path: path(),
                    index,
                    len: record.len(),
                    max: self.inner.max_record,
                });
            }
            if !piece.is_empty() && piece.len() + record.len() + 1 > MAX_WRITE {
                pieces.push(std::mem::take(&mut piece));
            }
            piece.extend_from_slice(record);
            piece.push(b'\n');
        }
        if !piece.is_empty() {
            pieces.push(piece);
        }
        Ok(pieces)
    }

    /// Under the lock: if the file does not end with a newline, a writer
    /// died inside its write; cut its partial record off so that it cannot
    /// merge with the next one. It was never acknowledged. Returns the
    /// file's length after that: where this append starts.
    fn cut_torn_tail(&self, file: &File) -> Result<u64, JournalError> {
        let len = file
            .metadata()
            .map_err(|e| self.io(JournalOp::Stat, e))?
            .len();
        let keep = self.last_newline_end(file, len)?;
        if keep == len {
            return Ok(len);
        }
        tracing::warn!(
            path = %self.inner.path.display(),
            torn_bytes = len - keep,
            "journal ends with a torn record (a writer died inside its write); cutting it off"
        );
        file.set_len(keep)
            .map_err(|e| self.io(JournalOp::Truncate, e))?;
        Ok(keep)
    }

    fn io(&self, op: JournalOp, source: io::Error) -> JournalError {
        JournalError::Io {
            path: self.inner.path.clone(),
            op,
            source,
        }
    }
}

impl Journal {
    /// The offset just past the last newline before `len` (0 if none):
    /// `len` itself when the file ends with one, which one byte tells.
    /// [`MAX_WRITE`] bytes or more without one is no torn append (each
    /// append's `write` is at most that long, its newline included):
    /// `NotAJournal`.
    fn last_newline_end(&self, file: &File, len: u64) -> Result<u64, JournalError> {
        let read = |buf: &mut [u8], at| {
            file.read_exact_at(buf, at)
                .map_err(|e| self.io(JournalOp::Read, e))
        };
        if len == 0 {
            return Ok(0);
        }
        let mut last = [0u8; 1];
        read(&mut last, len - 1)?;
        if last[0] == b'\n' {
            return Ok(len);
        }
        let floor = len.saturating_sub(MAX_WRITE as u64);
        let mut buf = vec![0u8; 64 * 1024];
        let mut end = len;
        while end > floor {
            let start = end.saturating_sub(buf.len() as u64).max(floor);
            let chunk = &mut buf[..(end - start) as usize];
            read(chunk, start)?;
            if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
                return Ok(start + i as u64 + 1);
            }
            end = start;
        }
        if len >= MAX_WRITE as u64 {
            return Err(JournalError::NotAJournal {
                path: self.inner.path.clone(),
                offset: floor,
            });
        }
        Ok(0)
    }
}

/// One `write(2)` for the whole buffer; a short write (a full disk, a
/// signal) continues with the rest, still under the lock.
fn write_once(mut file: &File, buf: &[u8]) -> io::Result<()> {
    file.write_all(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_torn_tail_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        std::fs::write(&path, "whole\nhalf a rec").unwrap();
        let j = Journal::open(&path).await.unwrap();
        let before = j.records().await.unwrap();
        assert_eq!(before.torn_tail(), Some(&b"half a rec"[..]));
        j.append("next").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "whole\nnext\n");
    }

    #[tokio::test]
    async fn big_batches_are_split_at_record_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::builder(dir.path().join("j"))
            .max_record_len(MAX_WRITE)
            .open()
            .await
            .unwrap();
        let rec = vec![b'x'; 300 * 1024];
        let pieces = j.encode([&rec, &rec, &rec, &rec]).unwrap();
        assert_eq!(pieces.len(), 2, "three records fit in 1 MiB, four do not");
        assert!(pieces
            .iter()
            .all(|p| p.len() <= MAX_WRITE && p.ends_with(b"\n")));
        j.append_batch([&rec, &rec, &rec, &rec]).await.unwrap();
        let read = j.records().await.unwrap();
        let read: Vec<Vec<u8>> = read.map(Result::unwrap).collect();
        assert_eq!(read.len(), 4);
        assert!(read.iter().all(|r| r == &rec));
    }
}
