//! [`PgLockMgr`] and its builder: a lock on a PostgreSQL server, and how
//! acquiring one goes.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::advisory_key;
use super::fence;
use super::gate::{Pass, Shut, Turn};
use super::guard::{Ending, Hold, PgLockGuard};
use super::session::{
    code, first_row, session_gone, unreadable, with_op, Failure, Pooling, Server, Session, Timeouts,
};
use super::sql;
use crate::error::{LockError, LockId, Operation};
use crate::holder::Holder;
use crate::telemetry::Meter;
use crate::vocab::{LockMode, Status};
use crate::wait::Policy;

const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(30);

/// A lock shared by every process that can reach one PostgreSQL database.
///
/// Cheap to clone; clones share one configuration. Holds no connection by
/// itself: the locks of every `PgLockMgr` of this process for one server
/// are held through a few shared sessions (see the [module docs](super)).
///
/// The errors are the crate's [`LockError`]. For these locks,
/// [`LockError::lock`] is a PostgreSQL [`LockId`], shown as
/// `postgres://HOST:PORT/DATABASE/NAME` (never with a password), and a
/// [`Holder`] is the holding session: its backend pid, its client address
/// as `host` (`"local"` over a Unix socket), its `application_name` as
/// `label`, and the time it won the lock.
///
/// # Fairness
///
/// Within a process, exclusive callers of one lock go to the server one at
/// a time, first come, first served; a shared caller never waits behind
/// an exclusive one of its own process. Between sessions the server's lock
/// queue decides: it grants in the order requests arrived, and queues a
/// shared request behind an exclusive one already waiting.
///
/// # Drop
///
/// Dropping the [`PgLockGuard`] releases the lock (without waiting for the
/// server; [`PgLockGuard::release`] waits and reports errors). The locks
/// of a process go with its session: at once when the process is killed
/// (its connection closes), within
/// [`dead_session_after`](PgLockMgrBuilder::dead_session_after) when its
/// host or network is lost. A guard whose session is lost is told through
/// [`lost`](PgLockGuard::lost).
#[derive(Clone)]
pub struct PgLockMgr {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) server: Arc<Server>,
    pub(super) name: String,
    pub(super) key: i64,
    max_attempts: u32,
    /// The fence table, `schema.table`.
    pub(super) fence: String,
    /// The lock, for errors and logs (never with a password).
    pub(super) id: LockId,
    /// Set once the fence table is known to exist.
    table_ready: AtomicBool,
    /// Where this lock's metrics go.
    pub(super) meter: Meter,
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
    metrics_label: Option<String>,
    connect_timeout: Option<Duration>,
    request_timeout: Duration,
    dead_after: Duration,
    max_idle: usize,
    fence: String,
    transaction_pooling: Option<bool>,
}

impl PgLockMgrBuilder {
    /// The `label` of this lock's metrics (with the `metrics` feature; see
    /// the crate's [Metrics](crate#metrics) section): a name for a group of
    /// locks. Keep the set of values small: never a lock name, a user or a
    /// request id. Empty when not set.
    pub fn metrics_label(mut self, label: impl Into<String>) -> Self {
        self.metrics_label = Some(label.into());
        self
    }

    /// How many timed attempts an acquire makes before it gives up with
    /// [`LockError::TimedOut`]. Default 10; 0 is taken as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// A label for this process's sessions, sent as `application_name`, so
    /// that contention errors (and `pg_stat_activity`) say who holds the
    /// lock. Default: the connection's `application_name` (or
    /// `PGAPPNAME`), or `lockmgr`.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// The longest a connection may take to be made when the caller does
    /// not wait (or waits without a bound); the connection string's
    /// `connect_timeout` (or `PGCONNECT_TIMEOUT`), when shorter, still
    /// bounds it. Default: that `connect_timeout`, as libpq takes it (per
    /// host, at least 2 s each), or else 10 s. A waiting acquire with a
    /// bounded wait connects within what is left of its wait, but within
    /// no less than 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// The longest any one request may take that is not a lock wait (a
    /// try, a release, a fencing token, a status): a server that does not
    /// answer within it has its session closed, and the call fails with
    /// [`LockError::Connect`]. Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How long a silent network (no answer, not even a reset) may last
    /// before a session is given up, on both sides: TCP keepalives and
    /// `tcp_user_timeout` on this process's socket, and the same settings
    /// for the server's end of the session (`SET tcp_keepalives_*`,
    /// `tcp_user_timeout`). A session holding locks is also asked a
    /// `SELECT 1` every quarter of this time (within the request timeout),
    /// and closed if it does not answer in as long: behind a pooler, the
    /// connection from the pooler to the server may fall silent while this
    /// process's socket to the pooler stays healthy. So after a partition,
    /// a guard's [`lost`](PgLockGuard::lost) resolves, and the server frees
    /// the lock, within about this time. Default 30 s; at least 3 s, at
    /// most 24 h (TCP takes a keepalive time of at most 32,767 s, and this
    /// process's is a third of this).
    ///
    /// Behind a pooler, a partition between this process and the pooler is
    /// the exception: the server's connection is the pooler's, which stays
    /// healthy, so the server frees the lock only once the pooler gives
    /// this client up, by its own keepalives. Set them to about this time
    /// (PgBouncer: `tcp_keepalive = 1`, `tcp_keepidle`, `tcp_keepintvl`,
    /// `tcp_keepcnt`, `tcp_user_timeout`); with the kernel's defaults that
    /// takes over two hours, while `lost` still resolves in time here.
    pub fn dead_session_after(mut self, after: Duration) -> Self {
        self.dead_after = after.clamp(Duration::from_secs(3), Duration::from_secs(24 * 3600));
        self
    }

    /// How many shared sessions that hold no lock are kept open for the
    /// next locks. Default 1. (Sessions holding locks stay open while they
    /// do; one more is opened for each acquire that has to wait.)
    pub fn max_idle_sessions(mut self, sessions: usize) -> Self {
        self.max_idle = sessions;
        self
    }

    /// The fencing-token table, `schema.table`. Default
    /// `public.lockmgr_fence`. It is created on first use when missing
    /// (the role then needs `CREATE` on the schema); a DBA can create it
    /// once instead with [`fence_table_sql`](super::fence_table_sql), and the
    /// role then needs only `SELECT`, `INSERT` and `UPDATE` on it.
    pub fn fence_table(mut self, table: impl Into<String>) -> Self {
        self.fence = table.into();
        self
    }

    /// Whether the server is reached through a transaction-pooling proxy
    /// (PgBouncer with `pool_mode = transaction`): `Some(true)` holds each
    /// lock in an open transaction of a connection of its own,
    /// `Some(false)` shares session-level locks on a few sessions. Default
    /// `None`: found out by a probe before the first lock (two sessions of
    /// this process that land on one server backend can only be pooled per
    /// transaction). Evidence of a transaction pooler found later (a
    /// session that starts on a backend another session of lockmgr marked,
    /// or a statement of a session that ran on another backend than its
    /// own) overrides `Some(false)`. Do not force `Some(false)` behind a
    /// transaction pooler: a lock statement then acts only on its session's
    /// own backend, and no transaction of ours takes a lock its backend
    /// holds, but any client of the pool that leaves in the middle of a
    /// transaction on that backend makes PgBouncer close it, and the lock
    /// goes with it (the guard learns it at the next liveness probe).
    pub fn transaction_pooling(mut self, pooled: Option<bool>) -> Self {
        self.transaction_pooling = pooled;
        self
    }

    /// The name of the lock this builder builds.
    pub(super) fn lock_name(&self) -> &str {
        &self.name
    }

    /// The attempts set with [`max_attempts`](Self::max_attempts).
    pub(super) fn attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The same options, for the lock named `name`.
    pub(super) fn renamed(mut self, name: String) -> Self {
        self.name = name;
        self
    }

    /// Builds the lock. Parses the connection string (completing it from
    /// the `PG*` environment and the password file, as libpq does) and
    /// reads the TLS files it names; connects to nothing.
    ///
    /// # Errors
    ///
    /// [`LockError::Invalid`] when the connection string does not parse, or
    /// names TLS files that cannot be used, or when the name holds a NUL
    /// byte, is longer than 2,000 bytes (the token table keeps no more), or
    /// ends in `/permits` (the row of a [`PgSemaphore`](super::PgSemaphore)'s
    /// count).
    pub fn build(self) -> Result<PgLockMgr, LockError> {
        let invalid = |reason: String| LockError::Invalid {
            lock: LockId::postgres("", "", &self.name),
            reason,
        };
        let mut config = self.config.clone();
        let app = self.label.clone().or_else(|| {
            (!config.contains("application_name") && std::env::var_os("PGAPPNAME").is_none())
                .then(|| "lockmgr".to_string())
        });
        if let Some(app) = app {
            config = with_application_name(&config, &app);
        }
        let timeouts = Timeouts {
            connect: self.connect_timeout,
            request: self.request_timeout,
            dead_after: self.dead_after,
        };
        let server = Server::get(&config, timeouts, self.max_idle, self.transaction_pooling)
            .map_err(invalid)?;
        if self.fence.is_empty() || self.fence.split('.').count() > 2 {
            return Err(invalid(
                "the fence table must be `table` or `schema.table`".into(),
            ));
        }
        let (host, db) = server.names();
        // Refused now, rather than after the lock was won on the server
        // and its token could not be drawn.
        let bad_name = if self.name.contains('\0') {
            Some("the name holds a NUL byte, which PostgreSQL text cannot".to_string())
        } else if self.name.ends_with(COUNT_ROW) {
            Some(format!(
                "names ending in \"{COUNT_ROW}\" are kept for the counts of semaphores (the \
                 count of semaphore \"{}\" is in that row of the token table)",
                shortened(&self.name[..self.name.len() - COUNT_ROW.len()])
            ))
        } else if self.name.len() > MAX_NAME {
            Some(format!(
                "the name is {} bytes long; the token table keeps names of at most {MAX_NAME}",
                self.name.len()
            ))
        } else {
            None
        };
        if let Some(reason) = bad_name {
            return Err(LockError::Invalid {
                lock: LockId::postgres(host, db, shortened(&self.name)),
                reason,
            });
        }
        Ok(PgLockMgr {
            inner: Arc::new(Inner {
                key: advisory_key(&self.name),
                id: LockId::postgres(host, db, &self.name),
                server,
                name: self.name,
                max_attempts: self.max_attempts,
                fence: self.fence,
                table_ready: AtomicBool::new(false),
                meter: Meter::new("postgres", self.metrics_label.as_deref()),
            }),
        })
    }
}

/// The end of the token table's row that keeps a semaphore's count of
/// permits (`NAME/permits`): no lock may have such a name, or its tokens
/// would be read as the count.
pub(super) const COUNT_ROW: &str = "/permits";

/// The longest lock name, in bytes: a key of the token table's index
/// (PostgreSQL's B-tree takes entries of up to about 2,700 bytes).
const MAX_NAME: usize = 2000;

/// `name` as an error about it shows it: whole if short, else its start.
fn shortened(name: &str) -> String {
    const SHOWN: usize = 64;
    if name.len() <= SHOWN {
        return name.to_string();
    }
    let end = (0..=SHOWN)
        .rev()
        .find(|&i| name.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}... ({} bytes)", &name[..end], name.len())
}

/// `config` with `application_name` set to `app`, in its own syntax.
fn with_application_name(config: &str, app: &str) -> String {
    let trimmed = config.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let sep = if trimmed.contains('?') { '&' } else { '?' };
        let app = percent_encoding::utf8_percent_encode(app, percent_encoding::NON_ALPHANUMERIC);
        format!("{trimmed}{sep}application_name={app}")
    } else if !super::config::reads_as_key_values(trimmed) {
        // Left as it is, so that the error names the user's mistake, not
        // what an unclosed quote made of the pair added here.
        trimmed.to_string()
    } else {
        let app = app.replace('\\', "\\\\").replace('\'', "\\'");
        format!("{trimmed} application_name='{app}'")
    }
}

impl PgLockMgr {
    /// A lock named `name` in the database that `config` (a libpq-style
    /// connection string, `host=db user=app dbname=app`, or a URL,
    /// `postgres://app@db/app`) names, with default options. What the
    /// string leaves out is taken from the `PG*` environment and the
    /// password file, as libpq does; TLS follows `sslmode` (see the
    /// [module docs](super)).
    ///
    /// # Errors
    ///
    /// [`LockError::Invalid`] when the connection string does not parse.
    /// Nothing is connected to yet.
    pub fn new(config: &str, name: impl Into<String>) -> Result<Self, LockError> {
        Self::builder(config, name).build()
    }

    /// A [`PgLockMgrBuilder`] for the lock named `name` in the database of
    /// `config`. An empty `config` takes everything from the environment
    /// (`PGHOST`, `PGUSER`, `PGPASSWORD` or the password file, `PGSSLMODE`,
    /// ...).
    pub fn builder(config: &str, name: impl Into<String>) -> PgLockMgrBuilder {
        PgLockMgrBuilder {
            config: config.to_string(),
            name: name.into(),
            max_attempts: 10,
            label: None,
            metrics_label: None,
            connect_timeout: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            dead_after: DEFAULT_DEAD_AFTER,
            max_idle: 1,
            fence: fence::DEFAULT_TABLE.to_string(),
            transaction_pooling: None,
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
    /// Tries `pg_try_advisory_lock` on one of this process's shared
    /// sessions with the server; if the lock is held and `wait` is true (and
    /// `timeout` is not zero), waits on the server, on a session of its own,
    /// in up to `max_attempts` attempts of `pg_advisory_lock` under a
    /// `lock_timeout` of `timeout` each (a timeout too large for
    /// `lock_timeout`, about 24 days, means no limit); the session that won
    /// then joins the shared ones. Behind a transaction-pooling proxy, the
    /// lock is taken and held in an open transaction of a connection of its
    /// own instead (see the [module docs](super)). Once won, a fencing token
    /// is drawn.
    ///
    /// # Errors
    ///
    /// - [`LockError::WouldBlock`]: held and not waiting; names the holder.
    /// - [`LockError::TimedOut`]: still held after every attempt.
    /// - [`LockError::Connect`]: the server cannot be reached, refuses the
    ///   login, or does not answer within the connect bound (the rest of the
    ///   wait but at least 2 s, or [`PgLockMgrBuilder::connect_timeout`]),
    ///   or a request within [`PgLockMgrBuilder::request_timeout`].
    /// - [`LockError::Server`]: the server failed a request.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future at any await point leaves no lock and no lock
    /// request behind: a wait on the server is cancelled (a cancel request,
    /// on a connection of its own) and its session is closed at once, which
    /// releases anything it won; a cancel that reached the server before
    /// the wait did is followed up by the server itself, which checks every
    /// 250 ms that the client of a running query is still there
    /// (`client_connection_check_interval`, PostgreSQL 14 and later).
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
    /// Never [`Status::Missing`]. Asked of a [`PgSemaphore`](super::PgSemaphore)'s
    /// name (one whose count of permits the token table keeps), and no lock
    /// of that very name held: [`Status::Semaphore`], with the permits held
    /// now by any session.
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
        // Only reads: the token table is not made for it (a role may not
        // be allowed to, a standby cannot).
        let session = self.read_session(None).await?;
        let (hi, lo) = self.key_halves();
        let rows = session
            .simple(&sql::state(hi, lo), self.request(), self.id())
            .await
            .map_err(|e| with_op(e, Operation::Read))?;
        let row = first_row(&rows).ok_or_else(|| self.odd(Operation::Read, "no lock state"))?;
        let exclusive = row.get(0) == Some("t");
        let holders: i64 = row.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(if exclusive {
            Status::Exclusive {
                holder: self.holder_via(&session).await?,
            }
        } else if holders > 0 {
            Status::Shared
        } else {
            super::semaphore::status(self, &session, &self.inner.name)
                .await?
                .unwrap_or(Status::Free)
        })
    }

    /// Takes every lock of `locks` exclusively, as one: all of them, or
    /// none. They are taken in one order that every caller shares (by
    /// server, database and advisory key, whatever order `locks` gives), so
    /// two callers that ask for overlapping sets never wait for each other
    /// in a circle. Each lock waits as [`acquire`](PgLockMgr::acquire)
    /// does with `wait` and `timeout`; when one cannot be had, the ones
    /// already taken are released before the error is returned. The guards
    /// come back in the order of `locks`.
    ///
    /// # Errors
    ///
    /// As [`acquire`](PgLockMgr::acquire), for the first lock that could
    /// not be had; [`LockError::Invalid`] when two of `locks` are one lock.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future lets go of the locks taken so far, as dropping
    /// their guards does.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// use lockmgr::pg::PgLockMgr;
    /// let from = PgLockMgr::new("host=db user=app", "account-17")?;
    /// let to = PgLockMgr::new("host=db user=app", "account-42")?;
    /// let guards = PgLockMgr::acquire_all(&[from, to], true, std::time::Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire_all(
        locks: &[PgLockMgr],
        wait: bool,
        timeout: Duration,
    ) -> Result<Vec<PgLockGuard>, LockError> {
        let mut order: Vec<((String, String, i64), usize)> = locks
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let id = &l.inner.id;
                let server = id.server().unwrap_or_default().to_owned();
                let db = id.database().unwrap_or_default().to_owned();
                ((server, db, l.inner.key), i)
            })
            .collect();
        order.sort();
        if let Some(pair) = order.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(LockError::Invalid {
                lock: locks[pair[1].1].inner.id.clone(),
                reason: "it is listed twice: one call cannot take a lock twice".into(),
            });
        }
        let mut guards: Vec<Option<PgLockGuard>> = locks.iter().map(|_| None).collect();
        for (_, i) in order {
            match locks[i].acquire(wait, timeout).await {
                Ok(guard) => guards[i] = Some(guard),
                Err(e) => {
                    // All or none: the ones taken are let go, and the
                    // server has confirmed it, before the error returns.
                    for guard in guards.into_iter().flatten() {
                        let _ = guard.release().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(guards.into_iter().flatten().collect())
    }

    /// The session reads run on (the fence table not looked at): the
    /// reader, or a shared session where no second connection is to be had.
    async fn read_session(&self, deadline: Option<Instant>) -> Result<Arc<Session>, LockError> {
        let server = self.server()?;
        match server.reader(self.id(), deadline).await {
            Ok(session) => Ok(session),
            // No second connection to be had (a role's `CONNECTION LIMIT`,
            // the server's or the pooler's maximum: the server said so):
            // read on a shared session, as before there was a reader. A
            // server that did not answer at all would not answer a second
            // connect either: that is the error (before, a read took twice
            // the connect timeout to fail).
            Err(e) if code(&e).is_some() => {
                tracing::debug!(lock = %self.id(), error = %e, "lockmgr: no reading session; reading on a shared one");
                let shared = server.shared(self.id(), deadline).await?;
                server.bound_reads(&shared, self.id()).await?;
                Ok(shared)
            }
            Err(e) => Err(e),
        }
    }

    /// The session for a quick read (without making sure of the fence
    /// table), and the bound of a request.
    pub(super) async fn quick_session(&self) -> Result<(Arc<Session>, Duration), LockError> {
        let server = self.server()?;
        Ok((server.reader(self.id(), None).await?, self.request()))
    }

    /// The key as `pg_locks` shows it: (`classid`, `objid`).
    /// The lock's server as this process reaches it: in a forked child,
    /// the child's own (see `Server::here`).
    pub(super) fn server(&self) -> Result<Arc<Server>, LockError> {
        self.inner.server.here().map_err(|e| LockError::Connect {
            lock: self.id().clone(),
            source: Box::new(Failure::plain(format!(
                "a forked child cannot reach the lock server its parent did: {e}"
            ))),
        })
    }

    fn key_halves(&self) -> (i64, i64) {
        sql::halves(self.inner.key)
    }

    fn id(&self) -> &LockId {
        &self.inner.id
    }

    pub(super) fn request(&self) -> Duration {
        self.inner.server.timeouts.request
    }

    fn odd(&self, op: Operation, what: &str) -> LockError {
        LockError::Server {
            lock: self.id().clone(),
            op,
            source: format!("unexpected answer from the server: {what}").into(),
        }
    }

    /// The session for reads and fencing tokens (see `Server::reader`: it
    /// holds no lock, so a read the server holds up costs none), with the
    /// fence table known to exist.
    pub(super) async fn reads(&self, deadline: Option<Instant>) -> Result<Arc<Session>, LockError> {
        let mut again = true;
        loop {
            let session = self.read_session(deadline).await?;
            if !self.inner.table_ready.load(Ordering::Acquire) {
                match fence::ensure(&session, &self.inner.fence, self.request(), self.id()).await {
                    Ok(()) => self.inner.table_ready.store(true, Ordering::Release),
                    // The session ended under the request: once more on
                    // another.
                    Err(e) if again && session_gone(&e) => {
                        session.end();
                        again = false;
                        continue;
                    }
                    Err(e) => return Err(with_op(e, Operation::Fence)),
                }
            }
            return Ok(session);
        }
    }

    async fn lock(
        &self,
        mode: LockMode,
        wait: bool,
        timeout: Duration,
    ) -> Result<PgLockGuard, LockError> {
        let started = Instant::now();
        let mut contended = false;
        let result = self
            .lock_counted(mode, wait, timeout, started, &mut contended)
            .await;
        let meter = &self.inner.meter;
        match &result {
            Ok(_) => meter.acquired(mode, contended, wait.then_some(started)),
            Err(LockError::TimedOut { .. }) => meter.timed_out(),
            Err(_) => {}
        }
        result
    }

    /// [`lock`](Self::lock); `contended` is set once the call has waited (for
    /// another task of this process, or on the server).
    async fn lock_counted(
        &self,
        mode: LockMode,
        wait: bool,
        timeout: Duration,
        started: Instant,
        contended: &mut bool,
    ) -> Result<PgLockGuard, LockError> {
        let policy = Policy::new(wait, timeout, self.inner.max_attempts);
        let deadline = if policy.waits {
            policy.deadline(started)
        } else {
            None
        };
        let server = self.server()?;
        // Other tasks of this process that hold or take this key go first.
        let pass = match server
            .gates
            .enter(self.inner.key, mode, policy.waits, deadline)
            .await
        {
            Ok(pass) => {
                *contended = pass.waited;
                pass
            }
            Err(shut) => {
                let holder = self.holder_on().await.ok().flatten();
                return Err(match shut {
                    Shut::Busy => LockError::WouldBlock {
                        lock: self.id().clone(),
                        holder,
                    },
                    Shut::TimedOut => LockError::TimedOut {
                        lock: self.id().clone(),
                        // Timed out behind this process's other tasks: no
                        // attempt reached the server.
                        attempts: 0,
                        waited: started.elapsed(),
                        holder,
                    },
                });
            }
        };
        let mut pass = pass;
        let mut tries_left = 2;
        // A shared waiter's turn to wait on the server, once it has one
        // (see `lock_shared`), and the session to try on next, where
        // another shared waiter of this process won.
        let mut turn = None;
        let mut next: Option<Arc<Session>> = None;
        // Whether the call said it waits (once per call).
        let mut announced = false;
        loop {
            // Behind a transaction pooler, no shared session is needed (the
            // lock is held in a connection of its own; reads have theirs).
            if server.pooling(self.id(), deadline).await? == Pooling::Transaction {
                drop(turn.take());
                return self
                    .lock_in_transaction(&server, mode, policy, started, deadline, pass, contended)
                    .await;
            }
            // A session picked after the gate: the one the last holder used
            // may have ended.
            // Only while it still holds a lock: an idle one may be another
            // key's waiting session by now, whose wait a try would stall.
            let shared = match next
                .take()
                .filter(|s| !s.is_ended() && s.held.load(Ordering::Acquire) > 0)
            {
                Some(session) => session,
                None => server.shared(self.id(), deadline).await?,
            };
            tries_left -= 1;
            match self
                .lock_shared(
                    &server,
                    &shared,
                    mode,
                    policy,
                    started,
                    deadline,
                    pass,
                    tries_left > 0,
                    (contended, &mut announced, &mut turn),
                )
                .await
            {
                Shared::Done(result) => return result,
                // Its turn to wait came after another shared waiter's,
                // which may hold the lock now: a try first, on the session
                // it won on. The turn goes on at once, so that the waiters
                // behind try too, together; one whose try loses takes a
                // turn again.
                Shared::Again(back) => {
                    pass = back;
                    tries_left += 1;
                    next = turn.take().and_then(|t| t.as_ref()?.upgrade());
                }
                // The shared session ended under the try (terminated,
                // or its network lost): nothing was taken; once more on
                // another.
                Shared::Ended(back) => pass = back,
                // Statements hopped between backends: a transaction
                // pooler after all, found before any lock was won.
                Shared::Pooled(back) => {
                    // Behind a transaction pooler each waiter waits in a
                    // connection of its own: the turn is not needed.
                    drop(turn.take());
                    server.found_transaction_pooling();
                    tracing::warn!(
                        lock = %self.id(),
                        "lockmgr: a session's lock statement ran on another backend than the one \
                         it marked as its own: the server is behind a transaction pooler; \
                         holding locks in transactions"
                    );
                    return self
                        .lock_in_transaction(
                            &server, mode, policy, started, deadline, back, contended,
                        )
                        .await;
                }
            }
        }
    }

    /// Session-level locks on shared sessions: a try on a shared one, then a
    /// wait on a session of its own, which joins the shared ones once it
    /// holds the lock, or once its attempts ended on the server's bound.
    #[allow(clippy::too_many_arguments)]
    async fn lock_shared(
        &self,
        server: &Arc<Server>,
        shared: &Arc<Session>,
        mode: LockMode,
        policy: Policy,
        started: Instant,
        deadline: Option<Instant>,
        pass: Pass,
        may_retry: bool,
        (contended, announced, turn): (&mut bool, &mut bool, &mut Option<Turn>),
    ) -> Shared {
        let id = self.id();
        let key = self.inner.key;
        let tried = Tried {
            server: server.clone(),
            session: shared.clone(),
            mode,
            key,
            id: id.clone(),
        };
        let (rows, pass) = match SharedTry::start(tried, pass).answer(may_retry).await {
            Answer::Rows(rows, pass) => (rows, pass),
            Answer::Ended(pass) => return Shared::Ended(pass),
            Answer::Failed(e) => return Shared::Done(Err(e)),
        };
        let (won, ours) = match lock_answer(&rows) {
            Some(answer) => answer,
            None => return Shared::Done(Err(self.odd(Operation::Lock, "no lock result"))),
        };
        if !ours {
            // Nothing was taken: the statement makes sure of that.
            return Shared::Pooled(pass);
        }
        tracing::debug!(lock = %id, attempt = 1, won, mode = %mode, woke = "first", "lock try");
        if won {
            shared.held.fetch_add(1, Ordering::AcqRel);
            return Shared::Done(
                self.won(
                    Hold::shared(server, shared.clone(), mode, pass, &self.inner.meter),
                    mode,
                )
                .await,
            );
        }
        if !policy.waits {
            return Shared::Done(Err(LockError::WouldBlock {
                lock: id.clone(),
                holder: self.holder_on().await.ok().flatten(),
            }));
        }
        // Once per call (a shared waiter may come here again, after its
        // turn). Every round trip before the wait is queued on the server
        // is time in which the releaser, asking again, can win the lock
        // back: the holder is only looked up for an operator who reads the
        // event.
        *contended = true;
        if !std::mem::replace(announced, true) && tracing::enabled!(tracing::Level::INFO) {
            let holder = self.holder_on().await.ok().flatten();
            policy.announce(id, holder.as_ref(), "");
        }
        // Shared waiters of this process wait on the server one at a time,
        // so that a thousand cost one waiting session: once the first holds
        // the lock, the others try again on the session it won on.
        if mode == LockMode::Shared && turn.is_none() {
            let timed_out = match pass.server_turn(deadline).await {
                Ok((first, true)) => {
                    *turn = Some(first);
                    return Shared::Again(pass);
                }
                Ok((first, false)) => {
                    *turn = Some(first);
                    deadline.is_some_and(|d| Instant::now() >= d)
                }
                Err(_) => true,
            };
            if timed_out {
                return Shared::Done(Err(LockError::TimedOut {
                    lock: id.clone(),
                    attempts: 0,
                    waited: started.elapsed(),
                    holder: self.holder_on().await.ok().flatten(),
                }));
            }
        }
        let waiter = match server.waiting_session(id, deadline, shared).await {
            Ok(w) => w,
            Err(e) => return Shared::Done(Err(e)),
        };
        // Dropped mid-wait, this cancels the wait and ends its session.
        let mut armed = Armed::new(server, waiter.clone());
        let mut made = 0;
        for attempt in 1..=policy.max_attempts {
            if spent(attempt, deadline) {
                break;
            }
            made = attempt;
            // The server bounds each attempt; the client allows it a margin.
            let length = attempt_length(policy, deadline);
            let bound = length.saturating_add(self.request());
            // The attempt's bound goes with the wait, in one message, for
            // that message only (`SET LOCAL`).
            let statement = format!(
                "{}; {}",
                sql::set_lock_timeout(length),
                sql::wait_lock(mode, key, waiter.pid(), waiter.claim())
            );
            let answer = match waiter.simple(&statement, bound, id).await {
                Ok(rows) => lock_answer(&rows),
                Err(e) if code(&e).as_deref() == Some(SqlState::LOCK_NOT_AVAILABLE.code()) => {
                    // The server may have granted the lock as the timeout
                    // fired: a session-level lock outlives the statement.
                    // The session is this wait's alone and held nothing
                    // (see `waiting_session`): if it holds the lock now,
                    // it won it, once.
                    let (hi, lo) = self.key_halves();
                    let holds = sql::holds(mode, hi, lo, waiter.pid(), waiter.claim());
                    match waiter.simple(&holds, self.request(), id).await {
                        Ok(rows) => match lock_answer(&rows) {
                            Some((false, true)) => {
                                tracing::debug!(lock = %id, attempt, won = false, mode = %mode, "lock wait");
                                continue;
                            }
                            answer => answer,
                        },
                        Err(e) => return Shared::Done(Err(with_op(e, Operation::Lock))),
                    }
                }
                Err(e) => return Shared::Done(Err(with_op(e, Operation::Lock))),
            };
            let Some((_, ours)) = answer else {
                return Shared::Done(Err(self.odd(Operation::Lock, "no lock result")));
            };
            if !ours {
                return Shared::Pooled(pass);
            }
            tracing::debug!(lock = %id, attempt, won = true, mode = %mode, woke = "server", "lock wait");
            armed.disarm();
            waiter.held.fetch_add(1, Ordering::AcqRel);
            server.share(&waiter);
            // The shared waiters behind try again on this session, where
            // the server grants them the lock again at once.
            if let Some(mut first) = turn.take() {
                *first = Some(Arc::downgrade(&waiter));
            }
            return Shared::Done(
                self.won(
                    Hold::shared(server, waiter, mode, pass, &self.inner.meter),
                    mode,
                )
                .await,
            );
        }
        // Every attempt ended on the server's own bound (or none began):
        // no statement runs, and the session holds nothing. It is kept for
        // the next wait (a semaphore's next round, a retry) rather than
        // closed, which would cost that wait a new login.
        armed.disarm();
        server.share_idle(&waiter);
        Shared::Done(Err(LockError::TimedOut {
            lock: id.clone(),
            attempts: made,
            waited: started.elapsed(),
            holder: self.holder_on().await.ok().flatten(),
        }))
    }

    /// Behind a transaction pooler: the lock is taken and held in an open
    /// transaction of a connection of its own (a session-level lock would
    /// stay with a pooled backend that others use).
    #[allow(clippy::too_many_arguments)]
    async fn lock_in_transaction(
        &self,
        server: &Arc<Server>,
        mode: LockMode,
        policy: Policy,
        started: Instant,
        deadline: Option<Instant>,
        pass: Pass,
        contended: &mut bool,
    ) -> Result<PgLockGuard, LockError> {
        let own = server.connect(self.id(), deadline).await?;
        let mut armed = Armed::new(server, own.clone());
        // The acquire's own steps; whatever error ends them, the
        // transaction won nothing.
        let result: Result<PgLockGuard, LockError> = async {
            let id = self.id();
            let key = self.inner.key;
            let begin = sql::begin_holding(server.timeouts.dead_after);
            // The transaction's backend, and whether a session of ours marked
            // it (see `sql::begin_holding`).
            let begun = |rows: &[tokio_postgres::SimpleQueryMessage]| {
                let row = first_row(rows)?;
                Some((row.get(0)?.parse::<i32>().ok()?, row.get(2)? == "t"))
            };
            let rows = own.simple(&begin, self.request(), id).await?;
            let (mut pid, mut marked) =
                begun(&rows).ok_or_else(|| self.odd(Operation::Lock, "no backend pid"))?;
            let rows = own
                .simple(&sql::try_xact_lock(mode, key, marked), self.request(), id)
                .await?;
            let won = first_row(&rows).and_then(|r| r.get(0)) == Some("t");
            tracing::debug!(lock = %id, attempt = 1, won, mode = %mode, woke = "first", "lock try");
            if won {
                armed.disarm();
                return self
                    .won(
                        Hold::transaction(server, own.clone(), pid, pass, &self.inner.meter),
                        mode,
                    )
                    .await;
            }
            if !policy.waits {
                let holder = self.holder_in_transaction(&own, false).await.ok().flatten();
                self.end_transaction(&own, &mut armed).await;
                return Err(LockError::WouldBlock {
                    lock: id.clone(),
                    holder,
                });
            }
            *contended = true;
            // As in session mode: every round trip before the wait is queued is
            // time in which the releaser can win the lock back, so the holder
            // is looked up only for an operator who reads the event. A lookup
            // that failed is no holder's name; only a session gone ends the
            // wait here.
            if tracing::enabled!(tracing::Level::INFO) {
                let holder = self.holder_in_transaction(&own, true).await?;
                policy.announce(id, holder.as_ref(), "");
            }
            let mut made = 0;
            for attempt in 1..=policy.max_attempts {
                if spent(attempt, deadline) {
                    break;
                }
                made = attempt;
                let length = attempt_length(policy, deadline);
                let bound = length.saturating_add(self.request());
                match own
                    .simple(
                        &sql::wait_xact_lock(mode, key, length, marked),
                        bound,
                        id,
                    )
                    .await
                {
                    Ok(rows) if first_row(&rows).and_then(|r| r.get(0)) != Some("t") => {
                        // No wait on a backend that holds the lock: it would be
                        // granted at once (see `sql::held_here`).
                        self.end_transaction(&own, &mut armed).await;
                        return Err(LockError::Server {
                            lock: id.clone(),
                            op: Operation::Lock,
                            source: format!(
                                "the transaction runs on backend {pid}, which already holds the \
                                 lock as a session-level lock (another client holds locks the \
                                 session way behind this transaction pooler); waiting there would \
                                 make a second holder"
                            )
                            .into(),
                        });
                    }
                    Ok(_) => {
                        tracing::debug!(lock = %id, attempt, won = true, mode = %mode, woke = "server", "lock wait");
                        armed.disarm();
                        return self
                            .won(
                                Hold::transaction(server, own.clone(), pid, pass, &self.inner.meter),
                                mode,
                            )
                            .await;
                    }
                    Err(e) if code(&e).as_deref() == Some(SqlState::LOCK_NOT_AVAILABLE.code()) => {
                        tracing::debug!(lock = %id, attempt, won = false, mode = %mode, "lock wait");
                        // The failed wait aborted the transaction: a new one.
                        let rows = own
                            .simple(&format!("ROLLBACK; {begin}"), self.request(), id)
                            .await?;
                        (pid, marked) =
                            begun(&rows).ok_or_else(|| self.odd(Operation::Lock, "no backend pid"))?;
                    }
                    Err(e) => return Err(with_op(e, Operation::Lock)),
                }
            }
            let holder = self.holder_in_transaction(&own, false).await.ok().flatten();
            self.end_transaction(&own, &mut armed).await;
            Err(LockError::TimedOut {
                lock: id.clone(),
                attempts: made,
                waited: started.elapsed(),
                holder,
            })
        }
        .await;
        if result.is_err() {
            self.end_transaction(&own, &mut armed).await;
        }
        result
    }

    /// Ends a transaction that won no lock, and its session (see
    /// `Session::roll_back_and_end`); if it was not rolled back, `armed`
    /// cancels what may still run.
    async fn end_transaction(&self, own: &Session, armed: &mut Armed<'_>) {
        if own.roll_back_and_end(self.request(), self.id()).await {
            armed.disarm();
        }
    }

    /// The exclusive holder, asked in the open transaction of `own` (a
    /// try's or a wait's, in transaction mode). Bounded on the server,
    /// within half the request timeout, so that it fails as a statement
    /// rather than ending the session. With `keep`, in a savepoint rolled
    /// back after it: the locks the lookup takes (on the fence table, the
    /// catalogs) go with it, rather than being kept for as long as the
    /// transaction goes on to hold the lock, and a failed lookup leaves the
    /// transaction as it was (a transaction about to end needs neither).
    /// `Err` when the session cannot be used any more (or, in theory, the
    /// server refuses a savepoint).
    async fn holder_in_transaction(
        &self,
        own: &Session,
        keep: bool,
    ) -> Result<Option<Holder>, LockError> {
        let id = self.id();
        let bound = (self.request().as_millis() / 2).clamp(1, i32::MAX as u128);
        let savepoint = if keep {
            "SAVEPOINT lockmgr_holder; "
        } else {
            ""
        };
        own.simple(
            &format!(
                "{savepoint}SET LOCAL statement_timeout = {bound}; SET LOCAL lock_timeout = {bound}"
            ),
            self.request(),
            id,
        )
        .await?;
        let holder = self.holder_via(own).await;
        if keep {
            own.simple(
                "ROLLBACK TO SAVEPOINT lockmgr_holder; RELEASE SAVEPOINT lockmgr_holder",
                self.request(),
                id,
            )
            .await?;
        }
        Ok(holder.ok().flatten())
    }

    /// Draws the fencing token for a lock just won (in an autocommit
    /// statement, so that it is kept whatever becomes of the holding) and
    /// makes the guard. If that fails, the lock is let go.
    async fn won(&self, hold: Hold, mode: LockMode) -> Result<PgLockGuard, LockError> {
        let pid = hold.backend_pid();
        // Dropped while the token is drawn, the lock is let go, as a
        // dropped guard's is.
        let mut unclaimed = Unclaimed {
            hold: Some(hold),
            lock: self,
        };
        let token = self.fence_token(pid).await;
        let hold = unclaimed.hold.take().expect("taken only here and in drop");
        match token {
            Ok(token) => Ok(PgLockGuard::new(hold, token, mode, self.clone())),
            Err(e) => {
                self.let_go(hold).await;
                Err(e)
            }
        }
    }

    /// Draws the token on the reading session, and once more on another if
    /// that session ends under the request (terminated, its network lost):
    /// a token drawn by a request whose answer was lost is only a gap, as
    /// tokens increase but need not follow each other.
    async fn fence_token(&self, pid: i32) -> Result<u64, LockError> {
        let mut again = true;
        loop {
            let utility = self.reads(None).await?;
            match fence::next_token(
                &utility,
                &self.inner.fence,
                &self.inner.name,
                pid,
                self.key_halves(),
                self.request(),
                self.id(),
            )
            .await
            {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => {
                    tracing::warn!(
                        lock = %self.id(),
                        "lockmgr: the session that won lock {} ended before its fencing token \
                         was drawn; the lock is lost",
                        self.id()
                    );
                    return Err(LockError::Connect {
                        lock: self.id().clone(),
                        source: "the session that won the lock ended before its fencing token \
                                 could be drawn: the lock is lost"
                            .into(),
                    });
                }
                Err(e) if again && session_gone(&e) => {
                    utility.end();
                    again = false;
                }
                // Dropped since this lock made or found it: made again, as
                // a process starting now would.
                Err(e)
                    if again && code(&e).as_deref() == Some(SqlState::UNDEFINED_TABLE.code()) =>
                {
                    tracing::warn!(
                        lock = %self.id(),
                        "lockmgr: the fencing token table {} is gone; it is made again, and the \
                         tokens of lock {} start again at 1",
                        self.inner.fence,
                        self.id()
                    );
                    self.inner.table_ready.store(false, Ordering::Release);
                    again = false;
                }
                Err(e) => return Err(with_op(e, Operation::Fence)),
            }
        }
    }

    /// Lets go of a lock that was won but cannot be handed out, before the
    /// error is returned: the next try of this process finds it free.
    /// Dropped midway, the unlock still goes out.
    async fn let_go(&self, hold: Hold) {
        let unlocking = hold.end(self.inner.key, self.id(), Ending::GiveUp);
        let _ = unlocking.await;
    }

    /// The recorded exclusive holder, from the server's lock table.
    async fn holder_on(&self) -> Result<Option<Holder>, LockError> {
        self.holder_via(&*self.reads(None).await?).await
    }

    /// The exclusive holder, asked on `session`: in transaction mode, a
    /// try's own session, whose open transaction already has a server
    /// connection. Asked on another session, it would need a second one
    /// from the pooler, which may have none left: each of the others may
    /// be a try that waits for one too.
    async fn holder_via(&self, session: &Session) -> Result<Option<Holder>, LockError> {
        let (hi, lo) = self.key_halves();
        let fence = fence::quoted(&self.inner.fence);
        let name: &(dyn tokio_postgres::types::ToSql + Sync) = &self.inner.name;
        let mut rows = session
            .typed(
                &sql::holder(Some(&fence), hi, lo),
                &[(name, Type::TEXT)],
                self.request(),
                self.id(),
            )
            .await;
        // No token table (yet), and none made by a read, or one this role
        // may not read: the holder's start is its backend's.
        if matches!(&rows, Err(e) if unreadable(e)) {
            rows = session
                .typed(
                    &sql::holder(None, hi, lo),
                    &[(name, Type::TEXT)],
                    self.request(),
                    self.id(),
                )
                .await;
        }
        let rows = rows.map_err(|e| with_op(e, Operation::Read))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let read = |e: tokio_postgres::Error| self.odd(Operation::Read, &e.to_string());
        let pid: i32 = row.try_get(0).map_err(read)?;
        let addr: Option<String> = row.try_get(1).map_err(read)?;
        let app: Option<String> = row.try_get(2).map_err(read)?;
        let since: Option<f64> = row.try_get(3).map_err(read)?;
        Ok(Some(session_holder(pid, addr, app, since)))
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.inner
    }
}

/// A server session as a [`Holder`]: its backend pid, its client address
/// as the host (`local` for a Unix socket), its `application_name` as the
/// label, and `since` (Unix seconds) if known.
pub(super) fn session_holder(
    pid: i32,
    addr: Option<String>,
    app: Option<String>,
    since: Option<f64>,
) -> Holder {
    Holder {
        pid: pid as u32,
        other_pid_namespace: false,
        host: addr.unwrap_or_else(|| "local".into()),
        since: since
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .map_or(UNIX_EPOCH, |d| UNIX_EPOCH + d),
        label: app.filter(|a| !a.is_empty()),
        stale: false,
        token: None,
    }
}

/// How long the server may wait in one attempt: the policy's attempt, but
/// no longer than what is left of the call's budget (a call that waited
/// behind another task of its process first still ends within it), and at
/// least 1 ms.
fn attempt_length(policy: Policy, deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => policy
            .timeout
            .min(d.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1)),
        None => policy.timeout,
    }
}

/// Whether a wait's whole budget is spent before its `attempt`: an attempt
/// is a round trip to the server, and one shorter than that (a wait of
/// 1 ms cut into 1,000 attempts) would otherwise make the call last
/// attempts x round trips. The first attempt is always made.
fn spent(attempt: u32, deadline: Option<Instant>) -> bool {
    attempt > 1 && deadline.is_some_and(|d| Instant::now() >= d)
}

/// A session-level lock statement's answer: whether it won, and whether it
/// ran on the session's own backend (see `sql::try_lock`).
fn lock_answer(rows: &[tokio_postgres::SimpleQueryMessage]) -> Option<(bool, bool)> {
    let row = first_row(rows)?;
    Some((row.get(0) == Some("t"), row.get(1)? == "t"))
}

/// How a try on a shared session ended.
enum Shared {
    /// Won, failed or timed out: the acquire's answer.
    Done(Result<PgLockGuard, LockError>),
    /// The shared session ended under the first try: nothing was taken.
    Ended(Pass),
    /// Statements ran on different backends: a transaction pooler.
    Pooled(Pass),
    /// A shared waiter's turn to wait came after another's: try again.
    Again(Pass),
}

/// The first try on a shared session, run in a task of its own. Its
/// statement, once sent, runs on the server whatever becomes of the
/// future that sent it, and only its answer tells whether it won: dropped
/// before the answer came, the task waits for it and gives a lock it won
/// back (one unlock for the one grant, so that other holds of this
/// process on the same session are untouched). It keeps the try's pass
/// through the key's gate until then, so that no other task of this
/// process takes the key meanwhile.
struct SharedTry {
    task:
        Option<tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, LockError>>>,
    pass: Option<Pass>,
    of: Tried,
}

/// What a try was made on, and for: what giving back what it won needs.
#[derive(Clone)]
struct Tried {
    server: Arc<Server>,
    session: Arc<Session>,
    mode: LockMode,
    key: i64,
    id: LockId,
}

/// What a [`SharedTry`] came to.
enum Answer {
    /// The statement's answer, and the pass.
    Rows(Vec<tokio_postgres::SimpleQueryMessage>, Pass),
    /// The session ended under the try, which took nothing: the pass, for
    /// a try on another session.
    Ended(Pass),
    /// The try failed; whatever it may have won is given back.
    Failed(LockError),
}

/// Whether a try may have won before it failed.
#[derive(Clone, Copy)]
enum Won {
    Yes,
    Maybe,
    No,
}

impl SharedTry {
    fn start(of: Tried, pass: Pass) -> Self {
        let bound = of.server.timeouts.request;
        let task = of.session.runtime.spawn({
            let (session, id) = (of.session.clone(), of.id.clone());
            let statement = sql::try_lock(of.mode, of.key, session.pid(), session.claim());
            async move { session.simple(&statement, bound, &id).await }
        });
        SharedTry {
            task: Some(task),
            pass: Some(pass),
            of,
        }
    }

    /// The try's answer. A failed try that may have won first (see
    /// [`may_have_won`]) has it given back, by a task that keeps the pass
    /// until it is done, whatever becomes of this future.
    async fn answer(mut self, may_retry: bool) -> Answer {
        let answer = match self.task.as_mut() {
            Some(task) => task.await,
            None => return Answer::Failed(self.lost_task("the try was answered already")),
        };
        // Answered: whatever it says is the caller's now.
        self.task = None;
        let Some(pass) = self.pass.take() else {
            return Answer::Failed(self.lost_task("the try's pass was given up"));
        };
        match answer.unwrap_or_else(|e| Err(self.lost_task(&e.to_string()))) {
            Ok(rows) => Answer::Rows(rows, pass),
            Err(e) if may_retry && session_gone(&e) => {
                self.of.session.end();
                Answer::Ended(pass)
            }
            Err(e) => {
                let won = if may_have_won(&e) {
                    Won::Maybe
                } else {
                    Won::No
                };
                // In a task of its own, which holds the pass until it is
                // done, whatever becomes of this future.
                let of = self.of.clone();
                let settling = self.of.session.runtime.spawn(async move {
                    of.give_back(won).await;
                    drop(pass);
                });
                let _ = settling.await;
                Answer::Failed(e)
            }
        }
    }

    fn lost_task(&self, what: &str) -> LockError {
        LockError::Connect {
            lock: self.of.id.clone(),
            source: format!("the lock try did not finish: {what}").into(),
        }
    }
}

impl Drop for SharedTry {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let (of, pass) = (self.of.clone(), self.pass.take());
        self.of.session.runtime.spawn(async move {
            let won = match task.await {
                Ok(Ok(rows)) if lock_answer(&rows) == Some((true, true)) => Won::Yes,
                Ok(Ok(_)) => Won::No,
                Ok(Err(e)) if may_have_won(&e) => Won::Maybe,
                Ok(Err(_)) => Won::No,
                Err(_) => Won::Maybe,
            };
            of.give_back(won).await;
            drop(pass);
        });
    }
}

/// Whether a try that failed with `e` may have been granted first: a
/// session-level lock outlives the statement that took it, and the server
/// can fail a statement after the grant (a cancel, looked for again
/// then). A failure with no SQLSTATE (the connection, a timeout) or of
/// class 57 (operator intervention: a cancel, `statement_timeout`, a
/// shutdown) may come after it; any other error is raised before the
/// lock function runs, or by it, granting nothing.
fn may_have_won(e: &LockError) -> bool {
    code(e).is_none_or(|c| c.starts_with("57"))
}

impl Tried {
    /// Gives back what the try on `session` won (or may have), while its pass
    /// is held. An exclusive try's key has no other hold of this process
    /// meanwhile (the pass excludes them, and is kept until what they won is
    /// given back), so one unlock gives back exactly what it won, and finds
    /// nothing if it won nothing. A shared try's key may have other holds of
    /// this process on the same session, which one unlock of a grant that may
    /// not have been made could take away: the session is ended, and its locks
    /// with it (their guards are told, through `lost`). So is any session
    /// whose unlock fails.
    async fn give_back(&self, won: Won) {
        let Tried {
            server,
            session,
            mode,
            key,
            id,
        } = self;
        let (mode, key) = (*mode, *key);
        let unlock = match (won, mode) {
            (Won::No, _) => return,
            (Won::Yes, _) | (Won::Maybe, LockMode::Exclusive) => true,
            (Won::Maybe, LockMode::Shared) => false,
        };
        if unlock {
            match server.unlock(session, mode, key, id).await {
                Ok(true) => {
                    tracing::debug!(lock = %id, "lockmgr: giving back a lock won by a try that did not return it");
                    return;
                }
                Ok(false) => return,
                Err(_) => {}
            }
        }
        tracing::debug!(lock = %id, "lockmgr: a try that may have won its lock ended in doubt: its session is ended");
        session.end();
    }
}

/// A lock won but not yet handed out in a guard: dropped so (its acquire
/// dropped), it is let go from a task of its own.
struct Unclaimed<'a> {
    hold: Option<Hold>,
    lock: &'a PgLockMgr,
}

impl Drop for Unclaimed<'_> {
    fn drop(&mut self) {
        if let Some(hold) = self.hold.take() {
            let inner = self.lock.inner();
            drop(hold.end(inner.key, &inner.id, Ending::GiveUp));
        }
    }
}

/// A session whose wait must not outlive the future that waits: dropped
/// while armed, it ends the session at once, after sending a cancel request
/// if a request of it may still be running.
struct Armed<'a> {
    server: &'a Server,
    session: Option<Arc<Session>>,
}

impl<'a> Armed<'a> {
    fn new(server: &'a Server, session: Arc<Session>) -> Self {
        Armed {
            server,
            session: Some(session),
        }
    }

    fn disarm(&mut self) {
        self.session = None;
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            self.server.cancel(&session);
            session.end();
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

impl fmt::Debug for PgLockMgrBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the connection string: it may carry a password.
        f.debug_struct("PgLockMgrBuilder")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("label", &self.label)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("dead_session_after", &self.dead_after)
            .field("fence_table", &self.fence)
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
    fn the_label_goes_into_either_syntax() {
        assert_eq!(
            with_application_name("postgres://db/app", "a b"),
            "postgres://db/app?application_name=a%20b"
        );
        assert_eq!(
            with_application_name("postgres://db/app?sslmode=require", "x"),
            "postgres://db/app?sslmode=require&application_name=x"
        );
        assert_eq!(
            with_application_name("host=db", "it's"),
            "host=db application_name='it\\'s'"
        );
        // An unclosed quote would take the added pair in, and the error
        // would be about it: nothing is added.
        assert_eq!(
            with_application_name("host=db password='unclosed", "lockmgr"),
            "host=db password='unclosed"
        );
        let err = PgLockMgr::builder("host=db password='unclosed", "x")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`password` has no closing quote"), "{err}");
    }

    #[test]
    fn guards_and_locks_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<PgLockMgr>();
        send_sync::<PgLockGuard>();
    }
}
