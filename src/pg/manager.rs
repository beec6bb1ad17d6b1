//! [`PgLockMgr`] and its builder: a lock on a PostgreSQL server, and how
//! acquiring one goes.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

use super::advisory_key;
use super::fence;
use super::guard::PgLockGuard;
use super::session::{CancelOnDrop, Session};
use super::sql;
use crate::error::{LockError, LockId, Operation};
use crate::holder::Holder;
use crate::vocab::{LockMode, Status};
use crate::wait::Policy;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A lock shared by every process that can reach one PostgreSQL database.
///
/// Cheap to clone; clones share one configuration. Holds no connection by
/// itself: each acquire opens one, and the [`PgLockGuard`] keeps it.
///
/// The errors are the crate's [`LockError`]. For these locks,
/// [`LockError::lock`] is a PostgreSQL [`LockId`], shown as
/// `postgres://HOST:PORT/DATABASE/NAME` (never with a password), and a
/// [`Holder`] is the holding session: its backend pid, its client address
/// as `host` (`"local"` over a Unix socket), its `application_name` as
/// `label`, and the time it won the lock.
#[derive(Clone)]
pub struct PgLockMgr {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    config: Config,
    pub(super) name: String,
    pub(super) key: i64,
    max_attempts: u32,
    connect_timeout: Duration,
    /// The lock, for errors and logs (never with a password).
    pub(super) id: LockId,
    /// Set once the fence table is known to exist.
    table_ready: AtomicBool,
}

/// Options for a [`PgLockMgr`], from [`PgLockMgr::builder`].
///
/// Its `Debug` form never shows the connection string, which may carry a
/// password.
#[derive(Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PgLockMgrBuilder {
    config: String,
    name: String,
    max_attempts: u32,
    label: Option<String>,
    connect_timeout: Duration,
}

impl PgLockMgrBuilder {
    /// How many timed attempts an acquire makes before it gives up with
    /// [`LockError::TimedOut`]. Default 10; 0 is taken as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// A label for this process's sessions, sent as `application_name`, so
    /// that contention errors (and `pg_stat_activity`) say who holds the
    /// lock. Default: the connection string's `application_name`, or
    /// `lockmgr`.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The longest a connection may take to be made when the caller does
    /// not wait (or waits without a bound). Default 10 s. A waiting acquire
    /// with a bounded wait connects within what is left of its wait, but
    /// within no less than 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Builds the lock. Parses the connection string; connects to nothing.
    ///
    /// # Errors
    ///
    /// [`LockError::Invalid`] when the connection string does not parse.
    pub fn build(self) -> Result<PgLockMgr, LockError> {
        let mut config = Config::from_str(&self.config).map_err(|e| LockError::Invalid {
            lock: LockId::postgres("", "", &self.name),
            reason: format!("the connection string does not parse: {e}"),
        })?;
        match self.label {
            Some(label) => {
                config.application_name(label);
            }
            None if config.get_application_name().is_none() => {
                config.application_name("lockmgr");
            }
            None => {}
        }
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let db = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("postgres")
            .to_string();
        Ok(PgLockMgr {
            inner: Arc::new(Inner {
                key: advisory_key(&self.name),
                id: LockId::postgres(format!("{host}:{port}"), db, &self.name),
                config,
                name: self.name,
                max_attempts: self.max_attempts,
                connect_timeout: self.connect_timeout,
                table_ready: AtomicBool::new(false),
            }),
        })
    }
}

impl PgLockMgr {
    /// A lock named `name` in the database that `config` (a libpq-style
    /// connection string, `host=db user=app dbname=app`, or a URL,
    /// `postgres://app@db/app`) names, with default options.
    ///
    /// # Errors
    ///
    /// [`LockError::Invalid`] when the connection string does not parse.
    /// Nothing is connected to yet.
    pub fn new(config: &str, name: impl Into<String>) -> Result<Self, LockError> {
        Self::builder(config, name).build()
    }

    /// A [`PgLockMgrBuilder`] for the lock named `name` in the database of
    /// `config`.
    pub fn builder(config: &str, name: impl Into<String>) -> PgLockMgrBuilder {
        PgLockMgrBuilder {
            config: config.to_string(),
            name: name.into(),
            max_attempts: 10,
            label: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The advisory key the name maps to (see [`advisory_key`]).
    pub fn key(&self) -> i64 {
        self.inner.key
    }

    /// How many timed attempts an acquire makes.
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// Takes the lock exclusively, waiting for it if `wait` is true: the
    /// same contract as [`LockMgr::acquire`](crate::LockMgr::acquire).
    ///
    /// Opens a connection, tries `pg_try_advisory_lock`, and if the lock is
    /// held and `wait` is true (and `timeout` is not zero), waits on the
    /// server in up to `max_attempts` attempts of `pg_advisory_lock` under a
    /// `lock_timeout` of `timeout` each. A timeout too large for
    /// `lock_timeout` (about 24 days) means no limit. Once won, a fencing
    /// token is drawn in the same session.
    ///
    /// # Errors
    ///
    /// - [`LockError::WouldBlock`]: held and not waiting; names the holder.
    /// - [`LockError::TimedOut`]: still held after every attempt.
    /// - [`LockError::Connect`]: the server cannot be reached, refuses the
    ///   login, or does not answer within the connect bound (the rest of the
    ///   wait but at least 2 s, or [`PgLockMgrBuilder::connect_timeout`]).
    /// - [`LockError::Server`]: the server failed a request.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any await point leaves no lock behind: a
    /// request waiting on the server is cancelled (a cancel request is sent
    /// on a connection of its own, from a task spawned on the current
    /// runtime) and the session is closed, which releases anything it won.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// use std::time::Duration;
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "migrations")?;
    /// let guard = lock.acquire(true, Duration::from_secs(60)).await?;
    /// println!("migrating with fencing token {}", guard.fencing_token());
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, wait: bool, timeout: Duration) -> Result<PgLockGuard, LockError> {
        self.lock(LockMode::Exclusive, wait, timeout).await
    }

    /// Takes the lock shared, waiting for it if `wait` is true. Any number
    /// of shared holders hold it together; an exclusive holder excludes
    /// them all.
    ///
    /// # Errors
    ///
    /// As [`acquire`](PgLockMgr::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](PgLockMgr::acquire).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// use std::time::Duration;
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "catalog")?;
    /// let reader = lock.acquire_shared(true, Duration::from_secs(5)).await?;
    /// # drop(reader);
    /// # Ok(()) }
    /// ```
    pub async fn acquire_shared(
        &self,
        wait: bool,
        timeout: Duration,
    ) -> Result<PgLockGuard, LockError> {
        self.lock(LockMode::Shared, wait, timeout).await
    }

    /// Takes the lock exclusively if it is free, without waiting for it.
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] when it is held; otherwise as
    /// [`acquire`](PgLockMgr::acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](PgLockMgr::acquire).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "cron")?;
    /// match lock.try_acquire().await {
    ///     Ok(guard) => { /* run the job */ drop(guard) }
    ///     Err(e) if e.is_contended() => eprintln!("skipped: {e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<PgLockGuard, LockError> {
        self.lock(LockMode::Exclusive, false, Duration::ZERO).await
    }

    /// Takes the lock shared if no exclusive holder has it, without waiting.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](PgLockMgr::try_acquire).
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](PgLockMgr::acquire).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "catalog")?;
    /// let reader = lock.try_acquire_shared().await?;
    /// # drop(reader);
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire_shared(&self) -> Result<PgLockGuard, LockError> {
        self.lock(LockMode::Shared, false, Duration::ZERO).await
    }

    /// Who holds the lock exclusively: the holding session's backend pid,
    /// client address, `application_name` and the time it won the lock.
    /// `Ok(None)` when it is free or held shared.
    ///
    /// # Errors
    ///
    /// [`LockError::Connect`] and [`LockError::Server`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "deploy")?;
    /// if let Some(h) = lock.holder().await? {
    ///     println!("held by backend {} from {} ({:?})", h.pid, h.host, h.label);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn holder(&self) -> Result<Option<Holder>, LockError> {
        Ok(match self.status().await? {
            Status::Exclusive { holder } => holder,
            _ => None,
        })
    }

    /// Whether the lock is free, held exclusively (and by which session)
    /// or held shared, as the server's lock table says at this moment.
    /// Never [`Status::Missing`].
    ///
    /// # Errors
    ///
    /// [`LockError::Connect`] and [`LockError::Server`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// use lockmgr::Status;
    /// let lock = lockmgr::pg::PgLockMgr::new("host=db user=app", "deploy")?;
    /// if lock.status().await? == Status::Free {
    ///     println!("nobody deploys right now");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<Status, LockError> {
        let session = self.connect(None).await?;
        self.ensure_table(&session.client).await?;
        let client = &session.client;
        let (hi, lo) = self.key_halves();
        let row = client
            .query_one(sql::STATE, &[&hi, &lo])
            .await
            .map_err(|e| self.server_error(Operation::Read, e))?;
        let (exclusive, holders): (bool, i64) = (row.get(0), row.get(1));
        Ok(if exclusive {
            Status::Exclusive {
                holder: self
                    .holder_on(client)
                    .await
                    .map_err(|e| self.server_error(Operation::Read, e))?,
            }
        } else if holders > 0 {
            Status::Shared
        } else {
            Status::Free
        })
    }

    /// The key as `pg_locks` shows it: (`classid`, `objid`).
    fn key_halves(&self) -> (i64, i64) {
        let key = self.inner.key as u64;
        ((key >> 32) as i64, (key & 0xFFFF_FFFF) as i64)
    }

    async fn lock(
        &self,
        mode: LockMode,
        wait: bool,
        timeout: Duration,
    ) -> Result<PgLockGuard, LockError> {
        let started = Instant::now();
        let policy = Policy::new(wait, timeout, self.inner.max_attempts);
        let deadline = if policy.waits {
            policy.deadline(started)
        } else {
            None
        };
        let session = self.connect(deadline).await?;
        self.ensure_table(&session.client).await?;
        let key = self.inner.key;
        let id = &self.inner.id;
        let client = &session.client;
        let won: bool = client
            .query_one(sql::try_lock(mode), &[&key])
            .await
            .map_err(|e| self.server_error(Operation::Lock, e))?
            .get(0);
        tracing::debug!(lock = %id, attempt = 1, won, mode = %mode, "lock try");
        if won {
            return self.won(session, mode).await;
        }
        let holder = self.holder_on(client).await.ok().flatten();
        if !policy.waits {
            return Err(LockError::WouldBlock {
                lock: id.clone(),
                holder,
            });
        }
        policy.announce(id, holder.as_ref(), "");
        client
            .batch_execute(&sql::set_lock_timeout(policy.timeout))
            .await
            .map_err(|e| self.server_error(Operation::Lock, e))?;
        let mut cancel = CancelOnDrop(Some(client.cancel_token()));
        for attempt in 1..=policy.max_attempts {
            match client.execute(sql::wait_lock(mode), &[&key]).await {
                Ok(_) => {
                    tracing::debug!(lock = %id, attempt, won = true, mode = %mode, "lock wait");
                    cancel.disarm();
                    return self.won(session, mode).await;
                }
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    tracing::debug!(lock = %id, attempt, won = false, mode = %mode, "lock wait");
                }
                Err(e) => {
                    cancel.disarm();
                    return Err(self.server_error(Operation::Lock, e));
                }
            }
        }
        cancel.disarm();
        Err(LockError::TimedOut {
            lock: id.clone(),
            attempts: policy.max_attempts,
            waited: started.elapsed(),
            holder: self.holder_on(client).await.ok().flatten(),
        })
    }

    /// Draws the fencing token in the winning session and makes the guard.
    /// If that fails, the session (and with it the lock) is dropped.
    async fn won(&self, session: Session, mode: LockMode) -> Result<PgLockGuard, LockError> {
        let token = fence::next_token(&session.client, &self.inner.name)
            .await
            .map_err(|e| self.server_error(Operation::Fence, e))?;
        Ok(PgLockGuard::new(session, token, mode, self.clone()))
    }

    async fn connect(&self, deadline: Option<Instant>) -> Result<Session, LockError> {
        Session::connect(
            &self.inner.config,
            &self.inner.id,
            deadline,
            self.inner.connect_timeout,
        )
        .await
    }

    async fn ensure_table(&self, client: &Client) -> Result<(), LockError> {
        if self.inner.table_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        fence::ensure_table(client)
            .await
            .map_err(|e| self.server_error(Operation::Fence, e))?;
        self.inner.table_ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn holder_on(&self, client: &Client) -> Result<Option<Holder>, tokio_postgres::Error> {
        let (hi, lo) = self.key_halves();
        let row = client
            .query_opt(sql::HOLDER, &[&hi, &lo, &self.inner.name])
            .await?;
        Ok(row.map(|row| {
            let pid: i32 = row.get(0);
            let addr: Option<String> = row.get(1);
            let app: Option<String> = row.get(2);
            let since: Option<f64> = row.get(3);
            Holder {
                pid: pid as u32,
                host: addr.unwrap_or_else(|| "local".into()),
                since: since
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .map_or(UNIX_EPOCH, |d| UNIX_EPOCH + d),
                label: app.filter(|a| !a.is_empty()),
                stale: false,
            }
        }))
    }

    pub(super) fn server_error(&self, op: Operation, e: tokio_postgres::Error) -> LockError {
        if e.is_closed() {
            return LockError::Connect {
                lock: self.inner.id.clone(),
                source: Box::new(e),
            };
        }
        LockError::Server {
            lock: self.inner.id.clone(),
            op,
            source: Box::new(e),
        }
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.inner
    }
}

impl fmt::Debug for PgLockMgr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection string: it may carry a password.
        f.debug_struct("PgLockMgr")
            .field("lock", &self.inner.id)
            .field("key", &format_args!("{:#x}", self.inner.key))
            .field("max_attempts", &self.inner.max_attempts)
            .finish()
    }
}

impl fmt::Debug for PgLockMgrBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection string: it may carry a password.
        f.debug_struct("PgLockMgrBuilder")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("label", &self.label)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_is_named_without_the_password() {
        let builder = PgLockMgr::builder("postgres://u:secret@db.example:6543/app", "jobs");
        assert!(!format!("{builder:?}").contains("secret"));
        let lock = builder.build().unwrap();
        assert_eq!(
            lock.inner.id.to_string(),
            "postgres://db.example:6543/app/jobs"
        );
        assert!(!format!("{lock:?}").contains("secret"));
        let err = PgLockMgr::new("postgres://u:secret@db:notaport/app", "jobs").unwrap_err();
        assert!(matches!(err, LockError::Invalid { .. }), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!format!("{err:?}").contains("secret"), "{err:?}");
    }

    #[test]
    fn guards_and_locks_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PgLockMgr>();
        send_sync::<PgLockGuard>();
    }
}
