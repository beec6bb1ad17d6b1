//! An async inter-process lock manager for Tokio applications on Linux.
//!
//! A [`LockMgr`] guards a lock file. [`acquire`](LockMgr::acquire) takes a
//! non-blocking OFD lock (`fcntl(F_OFD_SETLK)`) on it; if another owner holds
//! it and the caller chose to wait, the task sleeps, within a bounded budget
//! of timed attempts, and returns a [`LockGuard`]. A release that closes the
//! file (the usual one, and a holder killed even by `kill -9`) wakes the
//! waiting task's own runtime thread through inotify, and no helper thread; a
//! release that closes nothing (an unlock that keeps the descriptor) is
//! seen within 500 ms. A wait that lasts longer settles into the kernel's
//! own lock queue (`F_OFD_SETLKW`, on a helper thread), which sees every
//! release at once with no timer and no poll, while the close events still
//! wake the task. Dropping the guard releases the lock.
//!
//! # Semantics
//!
//! - **Exclusion** is between open file descriptions: two processes, or two
//!   tasks of one process, or two `acquire` calls on one [`LockMgr`], all
//!   exclude each other. Locks are not re-entrant.
//! - **Waiting**: `acquire(wait, timeout)` with `wait == false` (or a zero
//!   `timeout`) tries once and fails with [`LockError::WouldBlock`]. With
//!   `wait == true` it makes up to [`LockMgrBuilder::max_attempts`] attempts
//!   (default 10) of up to `timeout` each: the attempts state the budget,
//!   and the wait ends early when the lock is won. When the budget is
//!   spent: [`LockError::TimedOut`].
//! - **Release** closes the file descriptor, after an explicit unlock in the
//!   process that took the lock. A guard dropped in a forked child does not
//!   release the parent's lock.
//! - **Lock families**: OFD locks conflict with POSIX record locks (`lockf`,
//!   `fcntl(F_SETLK)`, Python `fasteners`) but *not* with `flock(2)` locks
//!   (Python `filelock`, util-linux `flock(1)`). Do not mix those on one file.
//! - **The lock file** is created if missing (permissions from
//!   [`LockMgrBuilder::mode`]), never truncated before its lock is won (a
//!   holder record replaces an older one in place), never followed if it is a symlink,
//!   and left in place on release. Paths that are not regular files are
//!   refused with [`LockError::NotAFile`] and left untouched. The lock is
//!   the file at the path: a waiter whose file another program renamed
//!   away or replaced meanwhile lets that file go, once its holder does,
//!   and waits for the file at the path instead.
//! - **Network file systems** (NFS, CIFS, FUSE), recognised by their
//!   `statfs` magic: waiting polls there, off the runtime's threads. Keep
//!   lock files on local file systems.
//! - **The runtime** must have its time and I/O drivers enabled
//!   (`enable_all`, as `#[tokio::main]` and `#[tokio::test]` do): a waiter's
//!   runtime reads the inotify events itself.
//! - **Without inotify** (the per-user instance or watch limit reached),
//!   waiting goes straight to the kernel's queue on a helper thread, and
//!   without a helper thread either (a thread limit reached) to polling on a
//!   capped backoff; each logs one warning.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use lockmgr::LockMgr;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), lockmgr::LockError> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("app.lock");
//! let lock = LockMgr::builder(&path).max_attempts(3).build();
//!
//! let guard = lock.acquire(true, Duration::from_secs(10)).await?;
//!
//! // Another task waits until the guard is dropped.
//! let other = lock.clone();
//! let waiter = tokio::spawn(async move {
//!     other.acquire(true, Duration::from_secs(10)).await.map(drop)
//! });
//! drop(guard);
//! waiter.await.unwrap()?;
//! # Ok(()) }
//! ```
//!
//! # Tracing
//!
//! The crate emits `tracing` events: `debug` for every try and release,
//! `info` (`waiting for lock on <lock>`, with a `lock` field and, when
//! known, a `holder` field) the first time a call has to wait, and `warn`
//! where an operator should look: waiting falls back (no helper thread, no
//! inotify, a network file system), the file waited for was renamed or
//! replaced, a first in line is passed over, a holder record cannot be
//! written or a release fails, fencing tokens cannot be drawn, the journal
//! cuts a torn record, or (on PostgreSQL) a session holding locks is lost.
//! The README's Tracing section lists them all.
//!
//! # Metrics
//!
//! With the `metrics` feature, every lock reports through the
//! [`metrics`](https://docs.rs/metrics) facade, so any exporter the program
//! installs (Prometheus, StatsD, ...) receives:
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `lockmgr_acquisitions_total` | counter | `kind`, `mode`, `label` | locks won (by `acquire` or a try) |
//! | `lockmgr_contended_acquisitions_total` | counter | `kind`, `mode`, `label` | of those, the ones that had to wait |
//! | `lockmgr_wait_seconds` | histogram | `kind`, `label` | how long each winning `acquire` took, from call to guard |
//! | `lockmgr_held_seconds` | histogram | `kind`, `label` | how long each lock was held, from guard to release |
//! | `lockmgr_timeouts_total` | counter | `kind`, `label` | `acquire` calls that ended in `TimedOut` |
//! | `lockmgr_lost_total` | counter | `kind`, `label` | PostgreSQL locks lost while held (their session ended) |
//!
//! `kind` is `ofd`, `flock` or `postgres`, `mode` `exclusive` or `shared`,
//! and `label` the lock's [`metrics_label`](LockMgrBuilder::metrics_label)
//! (empty when not set). No metric is labelled with a path, a lock name or
//! a process id. `cargo run --example metrics --features metrics` prints
//! them.
//!
//! # Module map
//!
//! Each module has one job; calls go down this list, never up:
//!
//! | layer | module | its one job |
//! | --- | --- | --- |
//! | face | `lock` | [`LockMgr`] and [`LockMgrBuilder`]: what a file lock is, and its documented calls |
//! | face | `guard` | [`LockGuard`]: a held file lock |
//! | face | `semaphore`, `permit` | [`Semaphore`]: at most N holders of one file; [`Permit`]: one of them |
//! | face | `leader` | [`LockMgr::lead`]: leadership among replicas, and its [`Term`] |
//! | face | `pg` | the same contract on PostgreSQL advisory locks (feature `postgres`) |
//! | user of the face | [`journal`] | crash-safe appends, on [`LockMgr`] |
//! | engine | `contender` | one caller's contention for a lock file: open, try, wait in line, record, release, status |
//! | engine | `slots` | a semaphore's contention: its permit count, one byte-range lock per slot, the wait for a free one; the status of a semaphore's file |
//! | engine | `wait` | the waiting policy shared by every backend, and the file locks' waiting loop |
//! | engine | `clock` | Tokio's clock as the waits use it: timers that survive a move to another runtime, and whether the clock is the real one |
//! | engine | `board` | this process's lines of waiters, published in shared memory for others to read |
//! | engine | `queue` | the in-process first-come-first-served line of waiters per file |
//! | engine | `kernel_wait` | the kernel's own wait for a lock, on a pooled helper thread, for the first in line of a long wait |
//! | OS | `watcher` | the process-wide inotify instance, read by the waiters' own runtimes |
//! | OS | `os` | the Linux calls; the only module allowed `unsafe` |
//! | OS | `forkable` | process-wide state that a forked child starts without |
//! | OS | `proc_locks` | what `/proc` says about the locks on a file and who holds them |
//! | words | `vocab`, `error`, `holder`, `holders` | [`LockKind`], [`LockFamily`], [`LockMode`], [`FileKind`], [`Status`]; [`LockError`], [`LockId`], [`Operation`]; the [`Holder`] record format; [`Holders`] of a file on this host |
//! | words | `telemetry` | what the crate reports through the `metrics` facade (feature `metrics`) |
//!
//! The words are used by every layer and use none. The face drives the
//! engine; the engine uses the OS layer; neither the engine nor the OS
//! layer knows the face. The `lockmgr` command (package `lockmgr-cli`)
//! uses only the public API; the journal uses the face (its public types,
//! and two crate-private rules of `lock`: the safe open of a data file,
//! and a relative path made absolute) and the words, never the engine or
//! the OS layer. `tests/architecture.rs` checks these directions on every
//! test run.

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "lockmgr supports Linux only: it relies on OFD locks (F_OFD_SETLK) and inotify, \
     which other systems do not have."
);

mod board;
mod clock;
mod contender;
mod error;
mod forkable;
mod guard;
mod holder;
mod holders;
pub mod journal;
mod kernel_wait;
mod leader;
mod lock;
#[allow(unsafe_code)]
mod os;
mod permit;
#[cfg(feature = "postgres")]
pub mod pg;
mod proc_locks;
mod queue;
mod semaphore;
mod slots;
mod telemetry;
mod vocab;
mod wait;
mod watcher;

pub use error::{LockError, LockId, Operation};
pub use guard::LockGuard;
pub use holder::{Holder, InvalidRecord};
pub use holders::{Holders, HoldingProcess, LockedFile, OpenProcess, Waiting};
pub use leader::Term;
pub use lock::{locked_files, locked_files_among, LockMgr, LockMgrBuilder};
pub use permit::Permit;
pub use semaphore::{Semaphore, SemaphoreBuilder};
pub use vocab::{FileKind, LockFamily, LockKind, LockMode, Status};

/// The README's examples, compiled (and run, where they can be) as doctests
/// (one of them is `lockmgr::pg`'s).
#[cfg(all(doctest, feature = "postgres"))]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
