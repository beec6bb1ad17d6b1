//! [`PgLockGuard`]: proof that a PostgreSQL lock is held, and how it is
//! let go.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use super::gate::Pass;
use super::manager::PgLockMgr;
use super::session::{with_op, Server, Session};
use crate::error::{LockError, LockId, Operation};
use crate::telemetry::Meter;
use crate::vocab::LockMode;

/// How a lock is held: on which session, in what way, and the pass through
/// the key's in-process gate, given back once the lock is let go or lost.
pub(super) struct Hold {
    how: How,
    /// The server whose session holds the lock.
    server: Arc<Server>,
    session: Arc<Session>,
    /// Taken by whoever comes first: the letting go, or the loss watcher.
    pass: Arc<Mutex<Option<Pass>>>,
    /// Gives the pass back when the session ends while the lock is held, so
    /// that the other tasks of this process are not kept from a lock the
    /// server has already freed.
    watcher: Option<AbortHandle>,
}

enum How {
    /// A session-level lock on one of this process's shared sessions.
    Shared { mode: LockMode },
    /// A transaction-level lock, in the open transaction of a session of its
    /// own (behind a transaction pooler), on backend `pid`.
    Transaction { pid: i32 },
}

impl Hold {
    pub(super) fn shared(
        server: &Arc<Server>,
        session: Arc<Session>,
        mode: LockMode,
        pass: Pass,
        meter: &Meter,
    ) -> Hold {
        Hold::new(How::Shared { mode }, server, session, pass, meter)
    }

    pub(super) fn transaction(
        server: &Arc<Server>,
        session: Arc<Session>,
        pid: i32,
        pass: Pass,
        meter: &Meter,
    ) -> Hold {
        // Counted, so that the session is watched as one holding a lock
        // (it is never shared, and ends with the lock).
        session
            .held
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Hold::new(How::Transaction { pid }, server, session, pass, meter)
    }

    fn new(
        how: How,
        server: &Arc<Server>,
        session: Arc<Session>,
        pass: Pass,
        meter: &Meter,
    ) -> Hold {
        let pass = Arc::new(Mutex::new(Some(pass)));
        let mut ended = session.ended.clone();
        let slot = pass.clone();
        let meter = meter.clone();
        let watcher = session.runtime.spawn(async move {
            let _ = ended.wait_for(|ended| *ended).await;
            // Still held: lost, not let go.
            if take(&slot).is_some() {
                meter.lost();
            }
        });
        Hold {
            how,
            server: server.clone(),
            session,
            pass,
            watcher: Some(watcher.abort_handle()),
        }
    }

    /// The backend that holds the lock.
    pub(super) fn backend_pid(&self) -> i32 {
        match self.how {
            How::Shared { .. } => self.session.pid(),
            How::Transaction { pid } => pid,
        }
    }

    /// Stops watching for the session's end; the pass, if still there.
    fn settle(&mut self) -> Option<Pass> {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        take(&self.pass)
    }

    /// Lets the lock go from a task of the session's runtime, so that it
    /// goes out once and whole whether or not the returned handle is
    /// awaited: an unlock sent on the shared session, or the holding
    /// transaction ended (committed for a [`Ending::Release`], rolled back
    /// otherwise) and its session closed. The pass goes back once the
    /// server has answered. The handle tells what the server said.
    pub(super) fn end(
        mut self,
        key: i64,
        id: &LockId,
        ending: Ending,
    ) -> JoinHandle<Result<(), LockError>> {
        let pass = self.settle();
        // Moved, not copied: once the task gives its hand up (with the
        // hold's count), only the list's is left, which lets
        // `Server::trim` close an idle session.
        let Hold {
            how,
            server,
            session,
            ..
        } = self;
        let id = id.clone();
        match how {
            How::Shared { mode } => session.runtime.clone().spawn(async move {
                let answer = server.unlock(&session, mode, key, &id).await;
                if let Err(e) = &answer {
                    if let Ending::GiveUp = ending {
                        tracing::debug!(error = %e, "lockmgr: unlock after a dropped guard failed");
                    }
                    // The lock may still be held there: the session goes,
                    // and the lock with it.
                    session.end();
                }
                server.released_one(session);
                drop(pass);
                match answer {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(LockError::Server {
                        lock: id,
                        op: Operation::Unlock,
                        source: "the session did not hold the lock".into(),
                    }),
                    Err(e) => Err(with_op(e, Operation::Unlock)),
                }
            }),
            How::Transaction { .. } => session.runtime.clone().spawn(async move {
                let bound = server.timeouts.request;
                let result = match ending {
                    // A COMMIT of a transaction an error aborted rolls back
                    // without a word: the statement before it fails there
                    // ("current transaction is aborted"), and tells that the
                    // lock had gone with it.
                    Ending::Release => session
                        .simple("SELECT 1; COMMIT", bound, &id)
                        .await
                        .map(drop)
                        .map_err(|e| with_op(e, Operation::Unlock)),
                    Ending::GiveUp => {
                        session.roll_back_and_end(bound, &id).await;
                        Ok(())
                    }
                };
                session.end();
                drop(pass);
                result
            }),
        }
    }
}

/// How a hold ends.
pub(super) enum Ending {
    /// [`PgLockGuard::release`]: a holding transaction is committed, and
    /// what goes wrong is told.
    Release,
    /// A guard dropped, or a lock won that cannot be handed out: a holding
    /// transaction is rolled back, and what goes wrong is logged (an unlock
    /// that failed closes its session, as for a release).
    GiveUp,
}

fn take(slot: &Mutex<Option<Pass>>) -> Option<Pass> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Proof that a [`PgLockMgr`] lock is held.
///
/// Dropping the guard lets the lock go at once without waiting for an
/// answer (an unlock sent on its session; behind a transaction pooler, its
/// transaction rolled back and its session closed);
/// [`release`](PgLockGuard::release) waits for the server and reports
/// errors. If the lock's session ends while the guard is alive (the backend
/// terminated, the connection lost, a network silent for longer than
/// [`dead_session_after`](super::PgLockMgrBuilder::dead_session_after)), the
/// lock is gone: [`lost`](PgLockGuard::lost) resolves, and the holder must
/// stop what it does under the lock. Use the
/// [fencing token](PgLockGuard::fencing_token) for writes that must not
/// come from a holder that lost its lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct PgLockGuard {
    hold: Option<Hold>,
    /// When the lock was won (for the time-held metric).
    won_at: std::time::Instant,
    ended: watch::Receiver<bool>,
    token: u64,
    mode: LockMode,
    lock: PgLockMgr,
}

impl PgLockGuard {
    pub(super) fn new(hold: Hold, token: u64, mode: LockMode, lock: PgLockMgr) -> Self {
        PgLockGuard {
            ended: hold.session.ended.clone(),
            won_at: std::time::Instant::now(),
            hold: Some(hold),
            token,
            mode,
            lock,
        }
    }

    /// This holding's fencing token: greater than the token of every
    /// earlier holding of this lock name (exclusive or shared), by any
    /// process on any host.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// Whether this guard holds the lock exclusively or shared.
    pub fn lock_mode(&self) -> LockMode {
        self.mode
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.lock.inner().name
    }

    /// Whether the session has already ended (see [`lost`](PgLockGuard::lost)).
    pub fn is_lost(&self) -> bool {
        *self.ended.borrow()
    }

    /// Resolves when the lock's session ends while the guard is alive: the
    /// lock is then no longer held. A network that falls silent (also the
    /// one between a pooler and the server) is noticed within
    /// [`dead_session_after`](super::PgLockMgrBuilder::dead_session_after)
    /// (30 s by default), by TCP keepalives and `tcp_user_timeout`, and by
    /// a trivial query the session answers every quarter of that time.
    /// Behind a transaction pooler, a session-level lock whose backend the
    /// pooler closed or no longer serves the session on is lost too, and
    /// told by the same query.
    ///
    /// # Errors
    ///
    /// None: it returns once the lock is lost, and never if it is not.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    ///
    /// # Examples
    ///
    /// Stop the work when the lock is lost:
    ///
    /// ```no_run
    /// # async fn work() {}
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "nightly-report")?;
    /// let guard = lock.acquire(true, std::time::Duration::from_secs(60)).await?;
    /// tokio::select! {
    ///     () = work() => guard.release().await?,
    ///     () = guard.lost() => eprintln!("lock lost; the report stops half done"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        let mut ended = self.ended.clone();
        // An error means the watcher task is gone, so the session is too.
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Lets the lock go and waits for the server to confirm, reporting what
    /// went wrong.
    ///
    /// # Errors
    ///
    /// [`LockError::Connect`] when the session had already ended (the lock
    /// was lost before this call) or does not answer within the request
    /// timeout, [`LockError::Server`] when the unlock failed or found the
    /// lock not held. The lock is let go in every case: a session that fails
    /// here is closed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future lets the lock go as dropping the guard does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "deploy")?;
    /// let guard = lock.acquire(true, std::time::Duration::from_secs(60)).await?;
    /// // ... the work ...
    /// guard.release().await?; // an error here: the lock may have been lost during the work
    /// # Ok(()) }
    /// ```
    pub async fn release(mut self) -> Result<(), LockError> {
        let Some(hold) = self.hold.take() else {
            return Ok(());
        };
        let inner = self.lock.inner();
        if !hold.server.is_here() {
            // The hold came over a fork: its session is the parent's, driven
            // by a thread this process does not have. It is the parent's to
            // let go; nothing here may touch it.
            std::mem::forget(hold);
            return Err(LockError::Server {
                lock: inner.id.clone(),
                op: Operation::Unlock,
                source: "the lock was taken before this process was forked: only the process \
                         that took it can let it go"
                    .into(),
            });
        }
        inner.meter.released(self.won_at.elapsed());
        // The unlock runs in a task of its own: this future dropped before
        // the answer, it still goes out, once (a second unlock on a session
        // where this process holds the lock twice, shared, would let the
        // other hold go too).
        let result = match hold.end(inner.key, &inner.id, Ending::Release).await {
            Ok(result) => result,
            Err(e) => Err(LockError::Server {
                lock: inner.id.clone(),
                op: Operation::Unlock,
                source: format!("the unlock did not finish: {e}").into(),
            }),
        };
        tracing::debug!(lock = %inner.id, mode = %self.mode, "released lock");
        result
    }
}

impl Drop for PgLockGuard {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            if !hold.server.is_here() {
                // Came over a fork: the parent's to let go (see `release`).
                std::mem::forget(hold);
                return;
            }
            let inner = self.lock.inner();
            inner.meter.released(self.won_at.elapsed());
            // The unlock goes out from a task of its own.
            drop(hold.end(inner.key, &inner.id, Ending::GiveUp));
        }
    }
}

impl fmt::Debug for PgLockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLockGuard")
            .field("lock", &self.lock.inner().id)
            .field("mode", &self.mode)
            .field("fencing_token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}
