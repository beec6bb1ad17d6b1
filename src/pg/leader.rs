//! Leadership on a PostgreSQL lock: the replicas may run on any host. A
//! leader's term also ends when its lock is lost (its session ended: the
//! backend terminated, the network silent for longer than
//! `dead_session_after`); the work is then stopped.

use std::future::Future;
use std::time::Duration;

use super::manager::PgLockMgr;
use crate::error::LockError;
use crate::Term;

/// How a term of leadership on a PostgreSQL lock ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Led<T> {
    /// The work finished while leading; the lock was released after it.
    Finished(T),
    /// The lock was lost while the work ran: the work was stopped (its
    /// future dropped) and another replica may lead already. Campaign
    /// again to lead again.
    Lost,
}

impl PgLockMgr {
    /// Campaigns for leadership and runs `work` while leading: waits for
    /// the lock exclusively, for as long as it takes, then runs `work`
    /// until it ends ([`Led::Finished`], and the lock is released) or the
    /// lock is lost ([`Led::Lost`], and the work is dropped at its next
    /// poll: work that blocks its thread runs on until it yields).
    ///
    /// The term's fencing token (always drawn here) is greater than every
    /// earlier leader's: pass it with the leader's writes, so that a leader
    /// that lost its lock without noticing yet cannot overwrite its
    /// successor's.
    ///
    /// # Errors
    ///
    /// The errors of [`acquire`](PgLockMgr::acquire) other than a timeout
    /// (the campaign has no deadline), and of the release after the work.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future steps down: while campaigning, as a dropped
    /// `acquire`; while leading, the work is dropped and the lock let go.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lockmgr::pg::{Led, PgLockMgr};
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let lock = PgLockMgr::new("host=db user=app", "scheduler")?;
    /// loop {
    ///     match lock.lead(|term| async move { /* schedule, stamping term.fencing_token */ }).await? {
    ///         Led::Finished(()) => break,
    ///         // Lost (the session ended): campaign again.
    ///         _ => continue,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lead<F, Fut>(&self, work: F) -> Result<Led<Fut::Output>, LockError>
    where
        F: FnOnce(Term) -> Fut,
        Fut: Future,
    {
        let guard = self.acquire(true, Duration::MAX).await?;
        let id = &self.inner().id;
        tracing::info!(lock = %id, fencing_token = guard.fencing_token(), "leading");
        let term = Term {
            fencing_token: Some(guard.fencing_token()),
        };
        let finished = {
            let lost = guard.lost();
            tokio::pin!(lost);
            tokio::select! {
                biased;
                () = &mut lost => None,
                out = work(term) => Some(out),
            }
        };
        match finished {
            Some(out) => {
                guard.release().await?;
                tracing::info!(lock = %id, "stepped down");
                Ok(Led::Finished(out))
            }
            None => {
                tracing::warn!(lock = %id, "leadership lost: the lock's session ended");
                drop(guard);
                Ok(Led::Lost)
            }
        }
    }
}
