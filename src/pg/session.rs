//! One connection to the lock server, and the cancelling of a wait its
//! owner abandoned.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::{CancelToken, Client, Config, NoTls};

use crate::error::{LockError, LockId};

/// The least time a waiting acquire gives its connection, however little
/// of its wait is left: a short wait on a loaded machine must end in
/// `TimedOut` (the lock was held), not in a connection error.
pub(super) const CONNECT_FLOOR: Duration = Duration::from_secs(2);

/// One session: a connection whose driver runs on its own task.
pub(super) struct Session {
    pub(super) client: Client,
    /// Turns true when the connection has ended.
    pub(super) ended: watch::Receiver<bool>,
}

impl Session {
    /// Connects within the rest of a wait ending at `deadline` (but no less
    /// than [`CONNECT_FLOOR`]), or within `connect_timeout` without one.
    pub(super) async fn connect(
        config: &Config,
        lock: &LockId,
        deadline: Option<Instant>,
        connect_timeout: Duration,
    ) -> Result<Session, LockError> {
        let bound = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .max(CONNECT_FLOOR),
            None => connect_timeout,
        };
        let connect_error = |source: Box<dyn std::error::Error + Send + Sync>| LockError::Connect {
            lock: lock.clone(),
            source,
        };
        let (client, connection) = match tokio::time::timeout(bound, config.connect(NoTls)).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(connect_error(Box::new(e))),
            Err(_) => {
                return Err(connect_error(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {bound:?}"),
                ))))
            }
        };
        let (ended_tx, ended) = watch::channel(false);
        let id = lock.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(lock = %id, error = %e, "lock session ended");
            }
            let _ = ended_tx.send(true);
        });
        Ok(Session { client, ended })
    }
}

/// Cancels the running query of a session if dropped while armed: a dropped
/// acquire future must not leave its lock request queued on the server.
pub(super) struct CancelOnDrop(pub(super) Option<CancelToken>);

impl CancelOnDrop {
    /// The wait ended by itself: nothing to cancel.
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.0.take() else { return };
        // The cancel request goes over a connection of its own; without a
        // runtime, closing the session (which follows) ends the wait when
        // the server next looks at the socket.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = token.cancel_query(NoTls).await;
            });
        }
    }
}
