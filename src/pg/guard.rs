//! [`PgLockGuard`]: proof that a PostgreSQL lock is held by the guard's own
//! session.

use std::fmt;

use tokio::sync::watch;
use tokio_postgres::Client;

use super::manager::PgLockMgr;
use super::session::Session;
use super::sql;
use crate::error::{LockError, Operation};
use crate::vocab::LockMode;

/// Proof that a [`PgLockMgr`] lock is held, by this guard's own session.
///
/// Dropping the guard closes its connection, and the server releases the
/// lock as the session ends; [`release`](PgLockGuard::release) unlocks
/// explicitly first and reports errors. If the session ends while the
/// guard is alive (the backend terminated, the connection lost), the lock
/// is gone: [`lost`](PgLockGuard::lost) resolves, and the holder must stop
/// what it does under the lock. Use the
/// [fencing token](PgLockGuard::fencing_token) for writes that must not
/// come from a holder that lost its lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct PgLockGuard {
    client: Option<Client>,
    ended: watch::Receiver<bool>,
    token: u64,
    mode: LockMode,
    lock: PgLockMgr,
}

impl PgLockGuard {
    pub(super) fn new(session: Session, token: u64, mode: LockMode, lock: PgLockMgr) -> Self {
        PgLockGuard {
            client: Some(session.client),
            ended: session.ended,
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

    /// Resolves when the guard's session ends while the guard is alive: the
    /// lock is then no longer held. A connection that dies silently (a
    /// network partition) is only noticed by TCP keepalives
    /// (`keepalives_idle` in the connection string) or the next request.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn lost(&self) {
        let mut ended = self.ended.clone();
        // An error means the watcher task is gone, so the session is too.
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Unlocks and closes the session, reporting what went wrong.
    ///
    /// # Errors
    ///
    /// [`LockError::Connect`] when the session had already ended (the lock
    /// was lost before this call), [`LockError::Server`] when the unlock
    /// failed or found the lock not held. The session is closed in every
    /// case, and with it the lock.
    pub async fn release(mut self) -> Result<(), LockError> {
        let Some(client) = self.client.take() else {
            return Ok(());
        };
        let lock = &self.lock;
        let inner = lock.inner();
        let result = client
            .query_one(sql::unlock(self.mode), &[&inner.key])
            .await;
        drop(client);
        tracing::debug!(lock = %inner.id, mode = %self.mode, "released lock");
        match result {
            Ok(row) if row.get::<_, bool>(0) => Ok(()),
            Ok(_) => Err(LockError::Server {
                lock: inner.id.clone(),
                op: Operation::Unlock,
                source: "the session did not hold the lock".into(),
            }),
            Err(e) => Err(lock.server_error(Operation::Unlock, e)),
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
