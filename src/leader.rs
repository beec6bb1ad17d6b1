//! Leadership on a lock: one leader among the replicas of a service. A
//! replica campaigns (waits for the lock, as long as it takes), runs its
//! work while it leads, and steps down when the work ends or its future is
//! dropped (cancellation, shutdown). A replica killed while leading, even
//! by `kill -9`, hands leadership on as fast as the lock is handed on.

use std::future::Future;
use std::time::Duration;

use crate::error::LockError;
use crate::lock::LockMgr;

/// What a leader knows of its term, handed to its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Term {
    /// The term's fencing token, when the lock draws them
    /// ([`fencing_tokens`](crate::LockMgrBuilder::fencing_tokens)): greater
    /// than every earlier leader's. Pass it with the writes a leader makes.
    pub fencing_token: Option<u64>,
}

impl LockMgr {
    /// Campaigns for leadership and runs `work` while leading: waits for
    /// the lock exclusively, for as long as it takes, then runs `work` and
    /// steps down (releases the lock) when it ends. On a local file system
    /// a file lock is not lost while the process lives, so the term lasts
    /// as long as the work. (On a network file system the server may give
    /// a lock away after a partition longer than its lease, and a file lock
    /// has no way to tell its holder: there, fence the leader's writes with
    /// its token, or lead through `lockmgr::pg`.)
    ///
    /// To lead again after the work ends, call it again: the replica goes
    /// to the back of the line of candidates of its process.
    ///
    /// # Errors
    ///
    /// The errors of [`acquire`](LockMgr::acquire) other than a timeout
    /// (the campaign has no deadline). The release after the work is the
    /// guard's drop: it runs off the runtime on a network file system (a
    /// stalled mount does not freeze the runtime), and an error there is
    /// logged, not returned (the descriptor is closed even then, and the
    /// lock with it), so the work's output is never lost to it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future steps down: while campaigning, as a dropped
    /// `acquire`; while leading, the work is dropped and the lock released.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lockmgr::LockError> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let lock = lockmgr::LockMgr::builder(dir.path().join("scheduler.lock"))
    ///     .fencing_tokens(true)
    ///     .build();
    /// let ran = lock
    ///     .lead(|term| async move {
    ///         // The scheduler's loop would run here, stamping its writes
    ///         // with term.fencing_token.
    ///         term.fencing_token
    ///     })
    ///     .await?;
    /// assert_eq!(ran, Some(1));
    /// # Ok(()) }
    /// ```
    pub async fn lead<F, Fut>(&self, work: F) -> Result<Fut::Output, LockError>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future,
    {
        let guard = self.acquire(true, Duration::MAX).await?;
        tracing::info!(lock = %self.path().display(), "leading");
        let term = Term {
            fencing_token: guard.fencing_token(),
        };
        let out = work(term).await;
        drop(guard);
        tracing::info!(lock = %self.path().display(), "stepped down");
        Ok(out)
    }
}
