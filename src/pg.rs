//! Locks across machines, on PostgreSQL session-level advisory locks
//! (feature `postgres`).
//!
//! A lock file reaches the processes of one host. When a service runs on
//! several hosts that share a PostgreSQL database, [`PgLockMgr`] gives the
//! same contract as [`LockMgr`](crate::LockMgr) with the database server
//! doing the locking:
//!
//! - Each lock is a session-level advisory lock, held by the connection of
//!   the guard that won it. Every guard owns its own connection (a session
//!   lock cannot live in a pool). The server releases the lock when the guard
//!   releases it or when the session ends for any reason: the guard dropped,
//!   the process killed, the connection lost, the backend terminated.
//! - Waiting happens on the server: `pg_advisory_lock` with a per-attempt
//!   `lock_timeout`. The server's own wait queue wakes the next waiter the
//!   moment the lock is free. Nothing polls.
//! - A lock's name maps to a 64-bit advisory key by [`advisory_key`], in a
//!   namespace of its own.
//! - Each guard carries a [fencing token](PgLockGuard::fencing_token),
//!   strictly increasing over all holders of one name, issued inside the
//!   winning session right after the lock was won. Pass it to the systems
//!   you write to and let them refuse tokens older than the newest they have
//!   seen: a lock is only as good as its session, and a holder that stalls
//!   (a long GC pause, a network partition) can lose its session without
//!   knowing it before its next write.
//!
//! The tokens and the holders' start times live in a table,
//! `lockmgr_fence (name text primary key, token bigint, holder_pid integer,
//! since timestamptz)`, created on first use in the connection's default
//! schema. The connecting role therefore needs `CREATE` on that schema once,
//! and `INSERT`/`UPDATE` on the table. Contention errors name the holder from
//! `pg_locks` and `pg_stat_activity` (a role without `pg_read_all_stats`
//! sees no client address for other roles' sessions).
//!
//! Connections are made without TLS (`NoTls`): use it on a trusted network,
//! or through a local TLS tunnel.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lockmgr::pg::PgLockMgr;
//!
//! # async fn f() -> Result<(), lockmgr::LockError> {
//! let lock = PgLockMgr::builder("postgres://app@db.internal/app", "nightly-report")
//!     .label("report-worker-3")
//!     .max_attempts(3)
//!     .build()?;
//! let guard = lock.acquire(true, Duration::from_secs(20)).await?;
//! let token = guard.fencing_token();
//! tokio::select! {
//!     _ = guard.lost() => eprintln!("lost the lock's session: stop writing"),
//!     _ = async { /* the work, writing with `token` */ } => {}
//! }
//! guard.release().await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, Config, NoTls};

use crate::error::{LockError, Operation};
use crate::holder::Holder;
use crate::lock::Status;
use crate::os::LockMode;

/// The top 16 bits of every key of ours: `"LM"`. Applications that number
/// their advisory locks with small integers, or with PostgreSQL's 32-bit
/// `hashtext`, never reach this range.
const NAMESPACE: u64 = 0x4C4D << 48;

/// The advisory key (the single-`bigint` form) for a lock name.
///
/// It is `0x4C4D` (`"LM"`) in the top 16 bits and, in the low 48 bits, the
/// low 48 bits of the 64-bit FNV-1a hash of the bytes `lockmgr/1:` followed
/// by the name's UTF-8 bytes. The formula is part of the API: it does not
/// change between releases, so processes built from different versions lock
/// the same key. In `pg_locks` the key shows as `classid` (high 32 bits),
/// `objid` (low 32 bits) and `objsubid = 1`.
///
/// ```
/// let key = lockmgr::pg::advisory_key("nightly-report");
/// assert_eq!(key >> 48, 0x4C4D);
/// assert_eq!(key, lockmgr::pg::advisory_key("nightly-report"));
/// assert_ne!(key, lockmgr::pg::advisory_key("nightly-report2"));
/// ```
pub fn advisory_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in b"lockmgr/1:".iter().chain(name.as_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (NAMESPACE | (hash & 0xFFFF_FFFF_FFFF)) as i64
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The least time a waiting acquire gives its connection, however little
/// of its wait is left: a short wait on a loaded machine must end in
/// `TimedOut` (the lock was held), not in a connection error.
const CONNECT_FLOOR: Duration = Duration::from_secs(2);

/// A lock shared by every process that can reach one PostgreSQL database.
///
/// Cheap to clone; clones share one configuration. Holds no connection by
/// itself: each acquire opens one, and the [`PgLockGuard`] keeps it.
///
/// The errors are the crate's [`LockError`]. For these locks,
/// [`LockError::path`] is the lock's name as a URL,
/// `postgres://HOST:PORT/DATABASE/NAME` (never with a password), and a
/// [`Holder`] is the holding session: its backend pid, its client address
/// as `host` (`"local"` over a Unix socket), its `application_name` as
/// `label`, and the time it won the lock.
#[derive(Clone)]
pub struct PgLockMgr {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    name: String,
    key: i64,
    max_attempts: u32,
    connect_timeout: Duration,
    /// The lock as a URL, for errors and logs.
    id: PathBuf,
    /// The server, as `HOST:PORT`, for connection errors.
    server: String,
    /// Set once the fence table is known to exist.
    table_ready: AtomicBool,
}

/// Options for a [`PgLockMgr`], from [`PgLockMgr::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PgBuilder {
    config: String,
    name: String,
    max_attempts: u32,
    label: Option<String>,
    connect_timeout: Duration,
}

impl PgBuilder {
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
    /// [`LockError::Connect`] when the connection string does not parse.
    pub fn build(self) -> Result<PgLockMgr, LockError> {
        let unparsed = || PathBuf::from(format!("postgres:///{}", self.name));
        let mut config = Config::from_str(&self.config).map_err(|e| LockError::Connect {
            path: unparsed(),
            server: "(invalid connection string)".into(),
            source: Box::new(e),
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
        let server = format!("{host}:{port}");
        Ok(PgLockMgr {
            inner: Arc::new(Inner {
                key: advisory_key(&self.name),
                id: PathBuf::from(format!("postgres://{server}/{db}/{}", self.name)),
                server,
                config,
                name: self.name,
                max_attempts: self.max_attempts,
                connect_timeout: self.connect_timeout,
                table_ready: AtomicBool::new(false),
            }),
        })
    }
}

/// One session: a connection whose driver runs on its own task.
struct Session {
    client: Client,
    /// Turns true when the connection has ended.
    ended: watch::Receiver<bool>,
}

/// Cancels the running query of a session if dropped while armed: a dropped
/// acquire future must not leave its lock request queued on the server.
struct CancelOnDrop(Option<CancelToken>);

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

const FENCE_TABLE: &str = "CREATE TABLE IF NOT EXISTS lockmgr_fence (\
     name text PRIMARY KEY, token bigint NOT NULL, holder_pid integer, since timestamptz)";

const NEXT_TOKEN: &str = "INSERT INTO lockmgr_fence AS f (name, token, holder_pid, since) \
     VALUES ($1, 1, pg_backend_pid(), clock_timestamp()) \
     ON CONFLICT (name) DO UPDATE SET token = f.token + 1, \
     holder_pid = pg_backend_pid(), since = clock_timestamp() \
     RETURNING token";

const HOLDER: &str = "SELECT a.pid, host(a.client_addr), a.application_name, \
     extract(epoch FROM coalesce(f.since, a.backend_start))::float8 \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     LEFT JOIN lockmgr_fence f ON f.name = $3 AND f.holder_pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' \
     AND l.objsubid = 1 AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
     LIMIT 1";

const STATE: &str = "SELECT coalesce(bool_or(mode = 'ExclusiveLock'), false), count(*) \
     FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND objsubid = 1 AND classid::int8 = $1 AND objid::int8 = $2";

fn try_sql(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "SELECT pg_try_advisory_lock($1)",
        LockMode::Shared => "SELECT pg_try_advisory_lock_shared($1)",
    }
}

fn wait_sql(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "SELECT pg_advisory_lock($1)",
        LockMode::Shared => "SELECT pg_advisory_lock_shared($1)",
    }
}

fn unlock_sql(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "SELECT pg_advisory_unlock($1)",
        LockMode::Shared => "SELECT pg_advisory_unlock_shared($1)",
    }
}

/// `lock_timeout` for one attempt, in ms; 0 (no limit) when the attempt is
/// longer than the setting can hold.
fn lock_timeout_ms(timeout: Duration) -> u128 {
    match timeout.as_millis().max(1) {
        ms if ms > i32::MAX as u128 => 0,
        ms => ms,
    }
}

impl PgLockMgr {
    /// A lock named `name` in the database that `config` (a libpq-style
    /// connection string, `host=db user=app dbname=app`, or a URL,
    /// `postgres://app@db/app`) names, with default options.
    ///
    /// # Errors
    ///
    /// [`LockError::Connect`] when the connection string does not parse.
    /// Nothing is connected to yet.
    pub fn new(config: &str, name: impl Into<String>) -> Result<Self, LockError> {
        Self::builder(config, name).build()
    }

    /// A [`PgBuilder`] for the lock named `name` in the database of
    /// `config`.
    pub fn builder(config: &str, name: impl Into<String>) -> PgBuilder {
        PgBuilder {
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
    ///   wait but at least 2 s, or [`PgBuilder::connect_timeout`]).
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
            .query_one(STATE, &[&hi, &lo])
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
        let waits = wait && !timeout.is_zero();
        let attempts = self.inner.max_attempts;
        let deadline = if waits {
            timeout
                .checked_mul(attempts)
                .and_then(|total| started.checked_add(total))
        } else {
            None
        };
        let session = self.connect(deadline).await?;
        self.ensure_table(&session.client).await?;
        let key = self.inner.key;
        let client = &session.client;
        let won: bool = client
            .query_one(try_sql(mode), &[&key])
            .await
            .map_err(|e| self.server_error(Operation::Lock, e))?
            .get(0);
        tracing::debug!(lock = %self.inner.id.display(), attempt = 1, won, mode = %mode, "lock try");
        if won {
            return self.won(session, mode).await;
        }
        if !waits {
            return Err(LockError::WouldBlock {
                path: self.inner.id.clone(),
                holder: self.holder_on(client).await.ok().flatten(),
            });
        }
        let holder = self.holder_on(client).await.ok().flatten();
        let id = self.inner.id.display();
        match &holder {
            Some(h) => {
                tracing::info!(lock = %id, holder = %h, "waiting for lock {id}, held by {h}")
            }
            None => tracing::info!(lock = %id, "waiting for lock {id}"),
        }
        client
            .batch_execute(&format!("SET lock_timeout = {}", lock_timeout_ms(timeout)))
            .await
            .map_err(|e| self.server_error(Operation::Lock, e))?;
        let mut cancel = CancelOnDrop(Some(client.cancel_token()));
        for attempt in 1..=attempts {
            match client.execute(wait_sql(mode), &[&key]).await {
                Ok(_) => {
                    tracing::debug!(lock = %id, attempt, won = true, mode = %mode, "lock wait");
                    cancel.0 = None;
                    return self.won(session, mode).await;
                }
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    tracing::debug!(lock = %id, attempt, won = false, mode = %mode, "lock wait");
                }
                Err(e) => {
                    cancel.0 = None;
                    return Err(self.server_error(Operation::Lock, e));
                }
            }
        }
        cancel.0 = None;
        Err(LockError::TimedOut {
            path: self.inner.id.clone(),
            attempts,
            waited: started.elapsed(),
            holder: self.holder_on(client).await.ok().flatten(),
        })
    }

    /// Draws the fencing token in the winning session and makes the guard.
    /// If that fails, the session (and with it the lock) is dropped.
    async fn won(&self, session: Session, mode: LockMode) -> Result<PgLockGuard, LockError> {
        let token: i64 = session
            .client
            .query_one(NEXT_TOKEN, &[&self.inner.name])
            .await
            .map_err(|e| self.server_error(Operation::Write, e))?
            .get(0);
        Ok(PgLockGuard {
            client: Some(session.client),
            ended: session.ended,
            token: token as u64,
            mode,
            lock: self.clone(),
        })
    }

    async fn connect(&self, deadline: Option<Instant>) -> Result<Session, LockError> {
        let bound = match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .max(CONNECT_FLOOR),
            None => self.inner.connect_timeout,
        };
        let connecting = self.inner.config.connect(NoTls);
        let (client, connection) = match tokio::time::timeout(bound, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(self.connect_error(Box::new(e))),
            Err(_) => {
                return Err(self.connect_error(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {bound:?}"),
                ))))
            }
        };
        let (ended_tx, ended) = watch::channel(false);
        let id = self.inner.id.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(lock = %id.display(), error = %e, "lock session ended");
            }
            let _ = ended_tx.send(true);
        });
        Ok(Session { client, ended })
    }

    async fn ensure_table(&self, client: &Client) -> Result<(), LockError> {
        if self.inner.table_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        match client.batch_execute(FENCE_TABLE).await {
            Ok(()) => {}
            // Two sessions creating it at once: the loser sees the winner's
            // type or table. It exists either way.
            Err(e)
                if e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&SqlState::DUPLICATE_TABLE) => {}
            Err(e) => return Err(self.server_error(Operation::Open, e)),
        }
        self.inner.table_ready.store(true, Ordering::Release);
        Ok(())
    }

    async fn holder_on(&self, client: &Client) -> Result<Option<Holder>, tokio_postgres::Error> {
        let (hi, lo) = self.key_halves();
        let row = client
            .query_opt(HOLDER, &[&hi, &lo, &self.inner.name])
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

    fn connect_error(&self, source: Box<dyn std::error::Error + Send + Sync>) -> LockError {
        LockError::Connect {
            path: self.inner.id.clone(),
            server: self.inner.server.clone(),
            source,
        }
    }

    fn server_error(&self, op: Operation, e: tokio_postgres::Error) -> LockError {
        if e.is_closed() {
            return self.connect_error(Box::new(e));
        }
        LockError::Server {
            path: self.inner.id.clone(),
            server: self.inner.server.clone(),
            op,
            source: Box::new(e),
        }
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
        &self.lock.inner.name
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
        let result = client
            .query_one(unlock_sql(self.mode), &[&lock.inner.key])
            .await;
        drop(client);
        tracing::debug!(lock = %lock.inner.id.display(), mode = %self.mode, "released lock");
        match result {
            Ok(row) if row.get::<_, bool>(0) => Ok(()),
            Ok(_) => Err(LockError::Server {
                path: lock.inner.id.clone(),
                server: lock.inner.server.clone(),
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
            .field("lock", &self.lock.inner.id)
            .field("mode", &self.mode)
            .field("fencing_token", &self.token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_namespaced() {
        // Fixed values: changing the formula would split old and new
        // processes onto different locks.
        assert_eq!(advisory_key(""), 0x4C4D_0000_0000_0000 | 0x7b71_ff61_b05e);
        let k = advisory_key("deploy");
        assert_eq!((k as u64) >> 48, 0x4C4D);
        assert!(k > 0);
    }

    #[test]
    fn lock_timeouts_saturate_to_no_limit() {
        assert_eq!(lock_timeout_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(lock_timeout_ms(Duration::from_micros(10)), 1);
        assert_eq!(lock_timeout_ms(Duration::MAX), 0);
    }

    #[test]
    fn the_lock_is_named_without_the_password() {
        let lock = PgLockMgr::new("postgres://u:secret@db.example:6543/app", "jobs").unwrap();
        assert_eq!(
            lock.inner.id,
            PathBuf::from("postgres://db.example:6543/app/jobs")
        );
        assert!(!format!("{lock:?}").contains("secret"));
        let err = PgLockMgr::new("postgres://u@db:notaport/app", "jobs").unwrap_err();
        assert!(matches!(err, LockError::Connect { .. }), "{err}");
    }

    #[test]
    fn guards_and_locks_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PgLockMgr>();
        send_sync::<PgLockGuard>();
    }
}
