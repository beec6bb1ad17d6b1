//! Sessions with the lock server: connecting (TLS, keepalives on both
//! sides, a bound on every step), the few shared sessions that hold the
//! locks of every `PgLockMgr` of this process for one server, the sessions
//! a wait gets of its own, and how a session that is given up ends at once.

use std::collections::HashMap;
use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{CancelToken, Client, NoTls, SimpleQueryMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::cancel::{self, Target};
use super::config::{Connection, Env};
use super::gate::Gates;
use super::sql;
use super::tls;
use crate::error::{LockError, LockId, Operation};
use crate::forkable::Forkable;
use crate::vocab::LockMode;

/// The least time a waiting acquire gives its connection, however little
/// of its wait is left: a short wait on a loaded machine must end in
/// `TimedOut` (the lock was held), not in a connection error.
pub(super) const CONNECT_FLOOR: Duration = Duration::from_secs(2);

/// The bounds of a server's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Timeouts {
    /// Making a connection, when no wait bounds it; `None`: the connection
    /// string's `connect_timeout`, or [`DEFAULT_CONNECT_TIMEOUT`].
    pub(super) connect: Option<Duration>,
    /// Any one request that is not a lock wait.
    pub(super) request: Duration,
    /// How long a silent network may last before both ends give a session
    /// up (TCP keepalives and `tcp_user_timeout`, client and server).
    pub(super) dead_after: Duration,
}

/// How long a connection may take to be made when nothing else says.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server is reached: straight, or through a pooler that hands a
/// server session to a client only for a transaction at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pooling {
    /// Not known yet: found out by a probe before the first lock.
    Unknown,
    /// Sessions are the client's own (a direct connection, or a pooler in
    /// session mode): session-level locks, shared sessions.
    Session,
    /// Transaction pooling (PgBouncer's `pool_mode=transaction`): each lock
    /// held in an open transaction of a connection of its own.
    Transaction,
}

/// One lock server, as this process reaches it: shared by every
/// `PgLockMgr` with the same connection settings.
pub(super) struct Server {
    conn: Connection,
    connector: Option<MakeRustlsConnect>,
    /// Where cancel requests go.
    cancel_target: Target,
    pub(super) timeouts: Timeouts,
    max_idle: usize,
    state: Mutex<State>,
    /// One probe or shared connect at a time.
    probing: tokio::sync::Mutex<()>,
    /// One connect of the reading session at a time (apart from the
    /// others: a read waits behind no lock's connect, nor one behind it).
    reader_connect: tokio::sync::Mutex<()>,
    /// The in-process gate of each key.
    pub(super) gates: Arc<Gates>,
    /// This server, for the liveness probes of its sessions.
    me: Weak<Server>,
    /// The process whose server this is (its sessions run on that
    /// process's `lockmgr-pg` thread), and the settings it was made with,
    /// from which a forked child makes its own (see [`Server::here`]).
    pid: u32,
    settings: Key,
    /// In a forked child: the child's own server for these settings, kept
    /// for the child's later calls.
    forked: Forkable<Option<Arc<Server>>>,
}

struct State {
    pooling: Pooling,
    /// Sessions shared by this process's locks.
    shared: Vec<Arc<Session>>,
    /// The session for reads and fencing tokens (see [`Server::reader`]).
    reader: Option<Arc<Session>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This process's servers, by their settings.
type Servers = HashMap<Key, Weak<Server>>;

/// The settings that make two `PgLockMgr`s share a server.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    config: String,
    timeouts: Timeouts,
    max_idle: usize,
    pooling: Option<bool>,
}

impl Server {
    /// The server for these settings: the one this process already has, or
    /// a new one. Connects to nothing.
    pub(super) fn get(
        config: &str,
        timeouts: Timeouts,
        max_idle: usize,
        transaction_pooling: Option<bool>,
    ) -> Result<Arc<Server>, String> {
        // A forked child forgets the parent's servers (see `Server::here`).
        static SERVERS: Forkable<Option<Servers>> = Forkable::new();
        let key = Key {
            config: config.to_owned(),
            timeouts,
            max_idle,
            pooling: transaction_pooling,
        };
        let mut servers = SERVERS.lock();
        let servers = servers.get_or_insert_with(HashMap::new);
        servers.retain(|_, s| s.strong_count() > 0);
        if let Some(server) = servers.get(&key).and_then(Weak::upgrade) {
            return Ok(server);
        }
        let env = Env::process();
        let conn = Connection::parse(config, &env).map_err(|e| e.0)?;
        let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
        let connector = tls::connector(&conn.tls, home.as_deref()).map_err(|e| e.0)?;
        let server = Arc::new_cyclic(|me| Server {
            me: me.clone(),
            cancel_target: Target::of(&conn.config),
            conn,
            connector,
            timeouts,
            max_idle,
            state: Mutex::new(State {
                pooling: match transaction_pooling {
                    None => Pooling::Unknown,
                    Some(true) => Pooling::Transaction,
                    Some(false) => Pooling::Session,
                },
                shared: Vec::new(),
                reader: None,
            }),
            probing: tokio::sync::Mutex::new(()),
            reader_connect: tokio::sync::Mutex::new(()),
            gates: Arc::default(),
            pid: crate::os::current_pid(),
            settings: key.clone(),
            forked: Forkable::new(),
        });
        servers.insert(key, Arc::downgrade(&server));
        Ok(server)
    }

    /// This server as the calling process reaches it: itself, or, in a
    /// forked child, the child's own, with the same settings. The parent's
    /// sessions are driven by a thread the child does not have: a statement
    /// sent on one would wait forever for its answer.
    pub(super) fn here(self: &Arc<Self>) -> Result<Arc<Server>, String> {
        if self.is_here() {
            return Ok(self.clone());
        }
        let mut slot = self.forked.lock();
        if let Some(server) = &*slot {
            return Ok(server.clone());
        }
        let k = &self.settings;
        let server = Server::get(&k.config, k.timeouts, k.max_idle, k.pooling)?;
        *slot = Some(server.clone());
        Ok(server)
    }

    /// Whether this server is the calling process's (not inherited over a
    /// fork).
    pub(super) fn is_here(&self) -> bool {
        self.pid == crate::os::current_pid()
    }

    /// The server as `HOST:PORT`, and the database.
    pub(super) fn names(&self) -> (String, String) {
        (self.conn.server(), self.conn.database())
    }

    /// How the server is reached, probed once: two sessions of ours that see
    /// the same backend can only be behind a transaction-pooling proxy.
    /// Each session marks its backend when it starts (see `sql::setup`), so
    /// a second one landing there is seen at once; then both ask for their
    /// backend in turn, in one order and then the other, for several
    /// rounds. A pooler that reuses its most recent backend (PgBouncer's
    /// default) serves the second asker on the first one's backend, and one
    /// that goes round moves both; only a pooler that kept each session on
    /// its own backend through every round, while other clients took and
    /// gave back backends between the rounds, could pass for sessions. Such
    /// a guess is found at the next statement of a session-level lock,
    /// which runs only on its session's marked backend, and a transaction
    /// on a marked backend never takes a lock that backend holds (see
    /// `sql`; README says what this does not cover).
    pub(super) async fn pooling(
        &self,
        lock: &LockId,
        deadline: Option<Instant>,
    ) -> Result<Pooling, LockError> {
        if let p @ (Pooling::Session | Pooling::Transaction) = lock_state(&self.state).pooling {
            return Ok(p);
        }
        let (_probing, until) = self.turn(&self.probing, lock, deadline).await?;
        if let p @ (Pooling::Session | Pooling::Transaction) = lock_state(&self.state).pooling {
            return Ok(p);
        }
        let a = self.connect_until(lock, until, deadline).await?;
        let b = self.connect_until(lock, until, deadline).await?;
        let mut pooling = Pooling::Session;
        // (A session's start may have found the pooler: no rounds then.)
        let rounds = if lock_state(&self.state).pooling == Pooling::Transaction {
            0
        } else {
            PROBE_ROUNDS
        };
        for round in 0..rounds {
            let (first, second) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
            let p1 = first.backend_pid(self, lock).await?;
            let p2 = second.backend_pid(self, lock).await?;
            if p1 == p2 || p1 != first.pid() || p2 != second.pid() {
                pooling = Pooling::Transaction;
                break;
            }
        }
        {
            let mut state = lock_state(&self.state);
            // A session's start may have found the pooler already.
            if state.pooling == Pooling::Transaction {
                pooling = Pooling::Transaction;
            }
            state.pooling = pooling;
            if pooling == Pooling::Session {
                // Not pooled per transaction: real sessions, to share.
                state.shared.push(a.clone());
            }
        }
        if pooling == Pooling::Transaction {
            tracing::info!(
                lock = %lock,
                "lockmgr: the lock server is behind a transaction-pooling proxy: each lock is \
                 held in an open transaction of a connection of its own"
            );
            for probe in [&a, &b] {
                let _ = probe
                    .simple(&sql::unmark(probe.claim()), self.timeouts.request, lock)
                    .await;
            }
        }
        Ok(pooling)
    }

    /// Lets one hold of a session-level lock on `session` go, and reports
    /// whether the server found it held.
    ///
    /// The unlock runs only on the session's own backend. Where it ran on
    /// another, the server is behind a transaction pooler after all, and
    /// the lock sits on a pooled backend that other clients use, out of
    /// the session's reach: the session is ended (its other locks are lost
    /// with it), that backend is ended if it still holds the lock (which
    /// lets go of every lock on it), later locks are held in transactions,
    /// and the answer is an error that says so.
    pub(super) async fn unlock(
        &self,
        session: &Session,
        mode: LockMode,
        key: i64,
        lock: &LockId,
    ) -> Result<bool, LockError> {
        let statement = sql::unlock(mode, key, session.pid(), session.claim());
        let rows = session
            .simple(&statement, self.timeouts.request, lock)
            .await?;
        let row = first_row(&rows).ok_or_else(|| protocol_error(lock, "no unlock result"))?;
        if row.get(1) == Some("t") {
            return Ok(row.get(0) == Some("t"));
        }
        session.end();
        self.found_transaction_pooling();
        let backend = session.pid();
        let ended = self
            .end_backend_holding(backend, session.started(), Some(key), lock)
            .await;
        tracing::warn!(
            lock = %lock,
            backend,
            ended = ended.as_ref().is_ok_and(|e| *e),
            "lockmgr: an unlock ran on another backend than the lock's: the server is behind \
             a transaction pooler; the lock's backend is ended to let it go, and later locks \
             are held in transactions"
        );
        let what = match ended {
            Ok(true) => format!("backend {backend} was ended to let the lock go"),
            Ok(false) => {
                format!("backend {backend} no longer held the lock (or was ended already)")
            }
            Err(e) => {
                format!("the lock may still be held by backend {backend}: ending it failed: {e}")
            }
        };
        Err(LockError::Server {
            lock: lock.clone(),
            op: Operation::Unlock,
            source: format!(
                "the unlock ran on another backend than the lock's (the server is behind a \
                 transaction pooler; later locks are held in transactions): {what}"
            )
            .into(),
        })
    }

    /// Ends backend `pid`, started at `started`, if it holds `key` (`None`:
    /// any key of lockmgr's), from the reader session: once more on a new
    /// one if that session was gone (behind a pooler it may have run on
    /// that very backend). The backend lets its locks go as it exits, a
    /// moment later.
    pub(super) async fn end_backend_holding(
        &self,
        pid: i32,
        started: Option<&str>,
        key: Option<i64>,
        lock: &LockId,
    ) -> Result<bool, LockError> {
        let statement = sql::end_backend_holding(pid, started, key);
        let mut tries = 2;
        loop {
            tries -= 1;
            let reader = self.reader(lock, None).await?;
            match reader.simple(&statement, self.timeouts.request, lock).await {
                Ok(rows) => return Ok(first_value(&rows) == Some("t")),
                Err(e) if tries > 0 && session_gone(&e) => {
                    tracing::debug!(lock = %lock, error = %e, "lockmgr: ending a backend, once more");
                    reader.end();
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Statements hopped between backends on one session of ours: a
    /// transaction pooler after all. Later locks are taken the
    /// transaction-pooling way.
    pub(super) fn found_transaction_pooling(&self) {
        let mut state = lock_state(&self.state);
        state.pooling = Pooling::Transaction;
        state.shared.clear();
    }

    /// A session shared by this process's locks (reads have their own,
    /// [`Server::reader`]): the least busy live one, or a new one.
    pub(super) async fn shared(
        &self,
        lock: &LockId,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, LockError> {
        if let Some(s) = self.pick_shared() {
            return Ok(s);
        }
        let (_connecting, until) = self.turn(&self.probing, lock, deadline).await?;
        if let Some(s) = self.pick_shared() {
            return Ok(s);
        }
        let session = self.connect_until(lock, until, deadline).await?;
        let mut state = lock_state(&self.state);
        // Its start may have found a transaction pooler: then it is used
        // once (its try finds the same), and not shared.
        if state.pooling != Pooling::Transaction {
            state.shared.push(session.clone());
        }
        drop(state);
        Ok(session)
    }

    /// The session this process reads the server's lock table on and
    /// draws fencing tokens on: one of its own, that never takes a lock.
    /// A request the server holds up past the request timeout (a DBA's
    /// `LOCK TABLE` on the token table) ends its session; ended here, it
    /// costs no lock (on a shared session, every lock on it would be lost).
    pub(super) async fn reader(
        &self,
        lock: &LockId,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, LockError> {
        if let Some(s) = self.live_reader() {
            return Ok(s);
        }
        let (_connecting, until) = self.turn(&self.reader_connect, lock, deadline).await?;
        if let Some(s) = self.live_reader() {
            return Ok(s);
        }
        // It takes no lock: it marks no backend.
        let session = self
            .connect_as(lock, Self::bound_until(until, deadline), false)
            .await?;
        lock_state(&self.state).reader = Some(session.clone());
        Ok(session)
    }

    /// The caller's turn to connect (`connecting`: one connect of a kind at
    /// a time), and when its connect must be done by: the turn and the
    /// connect both within the bound the caller's connect has (see
    /// [`connect_bound`](Server::connect_bound)), so that tasks queued
    /// behind a connect to a server that does not answer fail within their
    /// own bound, not one bound after another.
    async fn turn<'a>(
        &self,
        connecting: &'a tokio::sync::Mutex<()>,
        lock: &LockId,
        deadline: Option<Instant>,
    ) -> Result<(tokio::sync::MutexGuard<'a, ()>, Instant), LockError> {
        let bound = self.connect_bound(deadline);
        // A bound past what an `Instant` can hold (`Duration::MAX`, for no
        // bound) is one that never comes.
        let now = Instant::now();
        let until = now
            .checked_add(bound)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600));
        match tokio::time::timeout_at(until, connecting.lock()).await {
            Ok(turn) => Ok((turn, until)),
            Err(_) => Err(LockError::Connect {
                lock: lock.clone(),
                source: Box::new(Failure::plain(format!(
                    "timed out after {bound:?} behind another connect of this process to the \
                     server, which has not finished"
                ))),
            }),
        }
    }

    /// How long a connect may take: what is left of the caller's wait, but
    /// no less than [`CONNECT_FLOOR`]; without a wait, the connect timeout.
    fn connect_bound(&self, deadline: Option<Instant>) -> Duration {
        match deadline {
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .max(CONNECT_FLOOR),
            None => {
                // The string's bound is libpq's: per host, and no less
                // than 2 s each (tokio-postgres applies it to each host's
                // TCP connect; this bounds the whole, handshakes included).
                let hosts = self.conn.config.get_hosts().len().max(1) as u32;
                let string = self
                    .conn
                    .config
                    .get_connect_timeout()
                    .map(|t| t.max(&CONNECT_FLOOR).saturating_mul(hosts));
                match (self.timeouts.connect, string) {
                    (Some(set), Some(string)) => set.min(string),
                    (set, string) => set.or(string).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                }
            }
        }
    }

    fn live_reader(&self) -> Option<Arc<Session>> {
        let state = lock_state(&self.state);
        state.reader.as_ref().filter(|s| !s.is_ended()).cloned()
    }

    fn pick_shared(&self) -> Option<Arc<Session>> {
        let mut state = lock_state(&self.state);
        state.shared.retain(|s| !s.is_ended());
        state
            .shared
            .iter()
            .min_by_key(|s| s.held.load(Ordering::Relaxed))
            .cloned()
    }

    /// A session of its own for a wait: a shared one that holds no lock and
    /// that nobody uses (`busy`, the caller's, counts as unused), taken out
    /// of the shared ones, or else a new one. Reusing an idle session keeps a
    /// waiter from spending a login (a TCP and TLS handshake, SCRAM) before
    /// it joins the server's queue, where a process that just let the lock
    /// go would otherwise win it back every time.
    pub(super) async fn waiting_session(
        &self,
        lock: &LockId,
        deadline: Option<Instant>,
        busy: &Arc<Session>,
    ) -> Result<Arc<Session>, LockError> {
        let idle = {
            let mut state = lock_state(&self.state);
            // Holding nothing, and in nobody's hands but the list's (and,
            // for `busy`, the caller's, who is done with it).
            let free = |s: &Arc<Session>| {
                let users = if Arc::ptr_eq(s, busy) { 2 } else { 1 };
                !s.is_ended()
                    && s.held.load(Ordering::Acquire) == 0
                    && Arc::strong_count(s) == users
            };
            let at = state
                .shared
                .iter()
                .position(|s| free(s) && !Arc::ptr_eq(s, busy))
                .or_else(|| state.shared.iter().position(free));
            at.map(|i| state.shared.swap_remove(i))
        };
        match idle {
            Some(session) => Ok(session),
            None => self.connect(lock, deadline).await,
        }
    }

    /// Makes `session`, a shared one that reads fall back to, end a
    /// statement the server holds up (a DBA's lock on the token table)
    /// itself, before the request timeout, or the liveness probe queued
    /// behind it, would close the session and lose every lock held on it:
    /// `statement_timeout` at half the probe's bound (and at most three
    /// quarters of the request timeout), set once. Its other statements,
    /// tries and unlocks, are short; a wait on it lifts the bound for
    /// itself (`sql::set_lock_timeout`). Only where sessions are known to
    /// be the client's own: through a transaction pooler a session's
    /// settings would reach other clients (and before the pooling is
    /// known, no lock is held to lose).
    pub(super) async fn bound_reads(
        &self,
        session: &Session,
        lock: &LockId,
    ) -> Result<(), LockError> {
        if lock_state(&self.state).pooling != Pooling::Session
            || session.reads_bounded.swap(true, Ordering::AcqRel)
        {
            return Ok(());
        }
        let ms = (self.timeouts.request.as_millis() * 3 / 4)
            .min(probe_every(self.timeouts).as_millis() / 2)
            .max(1);
        // A bound too large for the setting (a request timeout of weeks) is
        // no bound worth setting.
        if ms > i32::MAX as u128 {
            return Ok(());
        }
        // Only on its own backend: elsewhere the setting would stay with a
        // pooled backend that other clients use.
        let set = sql::set_session_statement_timeout(ms, session.pid(), session.claim());
        match session.simple(&set, self.timeouts.request, lock).await {
            // Ran elsewhere: nothing was set (the next lock statement finds
            // the pooler).
            Ok(rows) if first_row(&rows).and_then(|r| r.get(1)) != Some("t") => {
                session.reads_bounded.store(false, Ordering::Release);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                session.reads_bounded.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// A session that won a lock after waiting joins the shared ones (see
    /// also [`Server::share_idle`]).
    pub(super) fn share(&self, session: &Arc<Session>) {
        let mut state = lock_state(&self.state);
        if state.pooling == Pooling::Session
            && !state.shared.iter().any(|s| Arc::ptr_eq(s, session))
        {
            state.shared.push(session.clone());
        }
    }

    /// A shared session holds one lock fewer (the caller's hand on it given
    /// up with it): idle sessions beyond `max_idle` are closed (see
    /// [`trim`](Server::trim)).
    pub(super) fn released_one(&self, session: Arc<Session>) {
        let left = session
            .held
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        drop(session);
        if left == 0 {
            self.trim();
        }
    }

    /// A waiting session whose wait ended without the lock (and with no
    /// statement running) joins the shared ones for the next wait; idle
    /// sessions beyond `max_idle` are closed (see [`trim`](Server::trim)).
    pub(super) fn share_idle(&self, session: &Arc<Session>) {
        self.share(session);
        self.trim();
    }

    /// Closes shared sessions that hold nothing, beyond `max_idle` of them,
    /// among those in nobody's hands but the list's: a task may have picked
    /// one that holds nothing for its try, which would fail, or win on a
    /// session about to end. One still in hand stays open (idle ones are
    /// picked first) until a later release finds it unused.
    fn trim(&self) {
        let mut state = lock_state(&self.state);
        let mut idle = state
            .shared
            .iter()
            .filter(|s| s.held.load(Ordering::Relaxed) == 0)
            .count();
        state.shared.retain(|s| {
            let unused = s.held.load(Ordering::Relaxed) == 0 && Arc::strong_count(s) == 1;
            if idle > self.max_idle && unused {
                idle -= 1;
                s.end();
                return false;
            }
            true
        });
    }

    /// A new session, within the rest of the wait ending at `deadline` (but
    /// no less than [`CONNECT_FLOOR`]), or within the connect timeout. Until
    /// the server is known to be behind a transaction pooler, it marks its
    /// backend (see `sql::setup`), for the session-level locks it may take.
    pub(super) async fn connect(
        &self,
        lock: &LockId,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, LockError> {
        let claim = lock_state(&self.state).pooling != Pooling::Transaction;
        self.connect_as(lock, self.connect_bound(deadline), claim)
            .await
    }

    /// [`Server::connect`] after a turn: done by the turn's `until` (see
    /// [`bound_until`](Server::bound_until)).
    async fn connect_until(
        &self,
        lock: &LockId,
        until: Instant,
        deadline: Option<Instant>,
    ) -> Result<Arc<Session>, LockError> {
        let claim = lock_state(&self.state).pooling != Pooling::Transaction;
        self.connect_as(lock, Self::bound_until(until, deadline), claim)
            .await
    }

    /// The bound of a connect made after a turn that ends at `until`: what
    /// is left of it, but for a caller that waits (`deadline`), no less
    /// than [`CONNECT_FLOOR`], as any of its connects.
    fn bound_until(until: Instant, deadline: Option<Instant>) -> Duration {
        let left = until.saturating_duration_since(Instant::now());
        match deadline {
            Some(_) => left.max(CONNECT_FLOOR),
            None => left,
        }
    }

    /// A new session within `bound`, marking its backend only with `claim`.
    async fn connect_as(
        &self,
        lock: &LockId,
        bound: Duration,
        claim: bool,
    ) -> Result<Arc<Session>, LockError> {
        let mut config = self.conn.config.clone();
        let dead = self.timeouts.dead_after;
        config
            .keepalives(true)
            .keepalives_idle((dead / 3).max(Duration::from_secs(1)))
            .keepalives_interval((dead / 9).max(Duration::from_secs(1)))
            .keepalives_retries(3)
            .tcp_user_timeout(dead);
        // Made, and driven, on the sessions' own runtime: a session serves
        // the tasks of every runtime of the process, and must outlive the
        // one of the task that made it.
        let home = home(lock)?;
        let tls = self.connector.clone();
        let connecting = home.spawn(async move {
            match tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls).await?;
                    Ok::<_, tokio_postgres::Error>((client, tokio::spawn(drive(connection))))
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await?;
                    Ok((client, tokio::spawn(drive(connection))))
                }
            }
        });
        // A connect given up (timed out, or its acquire dropped) stops.
        let _stop = AbortOnDrop(connecting.abort_handle());
        let (client, driver) = match tokio::time::timeout(bound, connecting).await {
            Ok(Ok(Ok(pair))) => pair,
            Ok(Ok(Err(e))) => return Err(connect_error(lock, Failure::from_pg(&e, true), e)),
            Ok(Err(stopped)) => {
                return Err(LockError::Connect {
                    lock: lock.clone(),
                    source: Box::new(Failure::plain(format!("the connect stopped: {stopped}"))),
                })
            }
            Err(_) => {
                return Err(LockError::Connect {
                    lock: lock.clone(),
                    source: Box::new(Failure::plain(format!("no connection within {bound:?}"))),
                })
            }
        };
        let (ended_tx, ended) = watch::channel(false);
        let task = driver.abort_handle();
        let id = lock.clone();
        home.spawn(async move {
            if let Ok(Err(e)) = driver.await {
                tracing::debug!(lock = %id, error = %e, "lock session ended");
            }
            let _ = ended_tx.send(true);
        });
        let claim = if claim { new_claim() } else { String::new() };
        let session = Arc::new(Session {
            cancel: client.cancel_token(),
            client,
            pid: 0.into(),
            claim,
            started: OnceLock::new(),
            ended,
            task,
            held: AtomicUsize::new(0),
            in_flight: AtomicBool::new(false),
            reads_bounded: AtomicBool::new(false),
            given_up: AtomicBool::new(false),
            runtime: home,
        });
        // Server side: give a silent client up as the client gives a silent
        // server up, notice a client gone in the middle of a wait, and do
        // not end a session for being idle (see `sql::server_side`).
        let claim = Some(session.claim.as_str()).filter(|c| !c.is_empty());
        // Not on a backend a transaction pooler may give other clients: a
        // session that marks one (it may take session-level locks there, and
        // is the only client there until found otherwise), or any session
        // once the server is known to be reached straight.
        let settings = claim.is_some() || lock_state(&self.state).pooling == Pooling::Session;
        let setup = sql::setup(dead, claim, settings);
        let rows = session.simple(&setup, self.timeouts.request, lock).await?;
        let row = first_row(&rows);
        let pid = row
            .and_then(|r| r.get(0))
            .and_then(|v| v.parse::<i32>().ok())
            .ok_or_else(|| protocol_error(lock, "no backend pid"))?;
        session.pid.store(pid as usize, Ordering::Relaxed);
        if let Some(started) = row.and_then(|r| r.get(3)) {
            let _ = session.started.set(started.to_owned());
        }
        if row.and_then(|r| r.get(2)) != Some("t") {
            // The backend is marked by another session of ours: it serves
            // more than one client.
            self.found_transaction_pooling();
            tracing::info!(
                lock = %lock,
                backend = pid,
                "lockmgr: a new session started on a backend that another session of lockmgr \
                 marked as its own: the server is behind a transaction pooler (or a session \
                 pooler that does not reset its connections); holding locks in transactions"
            );
        }
        session.runtime.spawn(watcher(
            self.me.clone(),
            Arc::downgrade(&session),
            probe_every(self.timeouts),
            lock.clone(),
        ));
        Ok(session)
    }

    /// Cancels what `session` runs, from a connection of its own (the cancel
    /// request protocol), if a request of it may still be running: a session
    /// that is idle has nothing to cancel, and ending it is enough.
    pub(super) fn cancel(&self, session: &Session) {
        if !session.in_flight.load(Ordering::Acquire) {
            return;
        }
        let token = session.cancel.clone();
        let tls = self.connector.clone();
        let target = self.cancel_target.clone();
        let bound = self.timeouts.request;
        session.runtime.spawn(async move {
            if let Err(e) = cancel::send(&token, &target, tls, bound).await {
                tracing::debug!(error = %e, "lockmgr: a cancel request failed");
            }
        });
    }
}

/// Rounds of the pooling probe (see [`Server::pooling`]): two round trips
/// each, once per server and process.
const PROBE_ROUNDS: usize = 8;

/// A mark for a session's backend, unique to the session: a number drawn
/// once per process (std's hasher keys, from the OS's randomness, mixed
/// with the time: a forked child, which inherits those keys, draws its own
/// at its first mark), the process id, and a count.
fn new_claim() -> String {
    use std::hash::{BuildHasher, Hasher};
    static PROCESS: Forkable<Option<u64>> = Forkable::new();
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let pid = std::process::id();
    let drawn = {
        let mut process = PROCESS.lock();
        match *process {
            Some(drawn) => drawn,
            None => {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(pid);
                if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
                {
                    h.write_u128(now.as_nanos());
                }
                let drawn = h.finish();
                *process = Some(drawn);
                drawn
            }
        }
    };
    format!(
        "{drawn:016x}.{pid}.{}",
        COUNT.fetch_add(1, Ordering::Relaxed)
    )
}

/// How often a session that holds locks is asked whether it still lives,
/// and how long it has to answer: both a quarter of `dead_session_after`
/// (within `request_timeout`), so that a holder learns of a dead server
/// connection within half of it, before the server's own keepalives give
/// that connection up (about two thirds of it) and free the lock.
fn probe_every(timeouts: Timeouts) -> Duration {
    (timeouts.dead_after / 4)
        .min(timeouts.request)
        .max(Duration::from_millis(250))
}

/// [`watch_while_holding`], boxed: it may connect (to end a backend), and
/// a connect starts a watcher, so the future's type names itself.
fn watcher(
    server: Weak<Server>,
    session: Weak<Session>,
    every: Duration,
    id: LockId,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(watch_while_holding(server, session, every, id))
}

/// Asks a session that holds locks, every `every`, to answer a trivial
/// query within `every`; one that does not is ended, which its holders'
/// `lost()` tell them. A pooler (PgBouncer) keeps this process's socket
/// alive while the connection behind it is dead: no keepalive of ours
/// sees that, and without a request nothing would, while the server frees
/// the locks. A session that holds session-level locks is asked whether it
/// still runs on the backend it marked (see `sql::still_ours`): behind a
/// transaction pooler that closed that backend, or serves the session
/// elsewhere, it is ended too, the process turns to transactions, and the
/// backend is ended if it still holds locks of ours. A session that holds
/// nothing is left alone. (A holding session runs no lock wait, only
/// tries, unlocks and, where reads fall back to it, reads the server
/// bounds at half the probe's bound: see `Server::bound_reads`. So the
/// probe never waits behind a long request.)
async fn watch_while_holding(
    server: Weak<Server>,
    session: Weak<Session>,
    every: Duration,
    id: LockId,
) {
    loop {
        tokio::time::sleep(every).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        if session.is_ended() {
            return;
        }
        if session.held.load(Ordering::Acquire) == 0 {
            continue;
        }
        let probe = match session.claim() {
            "" => "SELECT 1".to_owned(),
            claim => sql::still_ours(session.pid(), claim),
        };
        match session.simple(&probe, every, &id).await {
            Ok(rows) if first_value(&rows) == Some("f") => {
                tracing::warn!(
                    opened_for = %id,
                    backend = session.pid(),
                    "lockmgr: a session that holds locks found its statement on another backend \
                     than its own (a transaction pooler; its backend may be gone, or serve \
                     others): it was closed and its locks are lost; its backend is ended if it \
                     still holds them"
                );
                session.end();
                if let Some(server) = server.upgrade() {
                    server.found_transaction_pooling();
                    let ended = server
                        .end_backend_holding(session.pid(), session.started(), None, &id)
                        .await;
                    if let Err(e) = ended {
                        tracing::warn!(opened_for = %id, error = %e, "lockmgr: ending the backend failed");
                    }
                }
                return;
            }
            Ok(_) => {}
            // Not answered in time (the request was given up and the
            // session ended), or the session is gone.
            Err(e) if session.is_ended() || session_gone(&e) => {
                tracing::warn!(
                    opened_for = %id,
                    error = %e,
                    "lockmgr: a session with the lock server that holds locks did not answer \
                     its liveness probe; it was closed and its locks are lost"
                );
                session.end();
                return;
            }
            // Behind a transaction pooler the locks are the holding
            // transaction's, and any error in it (a cancel, a timeout)
            // aborts it, which let them go at once while the connection
            // stays: lost.
            Err(e) if session.claim().is_empty() => {
                tracing::warn!(
                    opened_for = %id,
                    error = %e,
                    "lockmgr: the transaction that holds a lock behind a transaction pooler \
                     failed its liveness probe, which aborted it: its lock is lost, and its \
                     session closed"
                );
                session.end();
                return;
            }
            // The server answered, if with an error (a stray cancel): a
            // session-level lock outlives it. Alive.
            Err(e) => tracing::debug!(error = %e, "lockmgr: liveness probe answered with an error"),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The runtime every session of this process runs on: a thread of its own
/// (`lockmgr-pg`), started with the first session. A session is shared by
/// the tasks of every runtime of the process, so it cannot live on any one
/// of theirs: when that runtime shut down (a test's, a short-lived
/// `block_on`), every lock held on the session would go with it. A forked
/// child, which has no such thread, starts its own.
fn home(lock: &LockId) -> Result<tokio::runtime::Handle, LockError> {
    // Held while the thread starts, so that one thread is started; a
    // child forked meanwhile gets this mutex afresh (see `Forkable`).
    static HOME: Forkable<Option<tokio::runtime::Handle>> = Forkable::new();
    let mut home = HOME.lock();
    if let Some(handle) = home.as_ref() {
        return Ok(handle.clone());
    }
    let failed = |e: String| LockError::Connect {
        lock: lock.clone(),
        source: Box::new(Failure::plain(format!(
            "cannot start the thread that runs the lock server's sessions: {e}"
        ))),
    };
    // The runtime is made on its thread, so that a failure drops nothing
    // here (a runtime may not be dropped inside another).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lockmgr-pg".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => {
                    let _ = tx.send(Ok(rt.handle().clone()));
                    rt.block_on(std::future::pending::<()>());
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        })
        .map_err(|e| failed(e.to_string()))?;
    let handle = rx
        .recv()
        .map_err(|e| failed(e.to_string()))?
        .map_err(failed)?;
    *home = Some(handle.clone());
    Ok(handle)
}

fn lock_state(m: &Mutex<State>) -> MutexGuard<'_, State> {
    lock(m)
}

async fn drive<S, T>(
    connection: tokio_postgres::Connection<S, T>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    connection.await
}

/// One session: a connection whose driver runs on a task of its own.
pub(super) struct Session {
    client: Client,
    /// The backend pid when the session was made.
    pid: AtomicUsize,
    /// The mark the session set on that backend (see `sql::setup`); empty
    /// for a session made to hold locks in transactions.
    claim: String,
    /// When that backend started, as the server tells it (marked sessions
    /// only).
    started: OnceLock<String>,
    /// Turns true when the connection has ended.
    pub(super) ended: watch::Receiver<bool>,
    /// The connection's driver: aborting it closes the socket at once, which
    /// dropping the client does not while a request is under way.
    task: AbortHandle,
    cancel: CancelToken,
    /// Locks held through this session.
    pub(super) held: AtomicUsize,
    /// A request was sent and its answer has not come: set while one is
    /// awaited, and left set if it is given up or its future dropped.
    in_flight: AtomicBool,
    /// Ended by this process: no longer picked, even before its driver
    /// has stopped.
    given_up: AtomicBool,
    /// Reads fell back to this shared session, which bounds its statements
    /// on the server (see [`Server::bound_reads`]; a wait lifts the bound
    /// for itself).
    reads_bounded: AtomicBool,
    /// The runtime the session lives on (see [`home`]; also for the work a
    /// guard's drop leaves).
    pub(super) runtime: tokio::runtime::Handle,
}

impl Session {
    pub(super) fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed) as i32
    }

    /// The mark the session set on its backend (see `sql::setup`).
    pub(super) fn claim(&self) -> &str {
        &self.claim
    }

    /// When the session's backend started (see `sql::setup`).
    pub(super) fn started(&self) -> Option<&str> {
        self.started.get().map(String::as_str)
    }

    pub(super) fn is_ended(&self) -> bool {
        self.given_up.load(Ordering::Acquire) || *self.ended.borrow() || self.client.is_closed()
    }

    /// Rolls the session's open transaction back, then ends the session;
    /// whether the rollback was answered. A client that leaves in the
    /// middle of a transaction makes PgBouncer close that server connection
    /// (with any session-level lock another client holds on it), and the
    /// next client pays for a new one. A session already ended, or one
    /// whose rollback fails, is ended as it is.
    pub(super) async fn roll_back_and_end(&self, bound: Duration, lock: &LockId) -> bool {
        let rolled_back = !self.is_ended() && self.simple("ROLLBACK", bound, lock).await.is_ok();
        self.end();
        rolled_back
    }

    /// Ends the session now: the socket closes, and the server drops its
    /// locks (and, with `client_connection_check_interval`, any wait).
    pub(super) fn end(&self) {
        self.given_up.store(true, Ordering::Release);
        self.task.abort();
    }

    /// A simple query (no prepared statement: fine behind any pooler),
    /// within `bound`. A session that does not answer in time is ended.
    pub(super) async fn simple(
        &self,
        sql: &str,
        bound: Duration,
        lock: &LockId,
    ) -> Result<Vec<SimpleQueryMessage>, LockError> {
        self.bounded(bound, lock, self.client.simple_query(sql))
            .await
    }

    /// `pg_backend_pid()` now.
    async fn backend_pid(&self, server: &Server, lock: &LockId) -> Result<i32, LockError> {
        let rows = self
            .simple("SELECT pg_backend_pid()", server.timeouts.request, lock)
            .await?;
        first_value(&rows)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| protocol_error(lock, "no backend pid"))
    }

    /// A typed query (the unnamed statement: fine behind any pooler),
    /// within `bound`.
    pub(super) async fn typed(
        &self,
        sql: &str,
        params: &[(
            &(dyn tokio_postgres::types::ToSql + Sync),
            tokio_postgres::types::Type,
        )],
        bound: Duration,
        lock: &LockId,
    ) -> Result<Vec<tokio_postgres::Row>, LockError> {
        self.bounded(bound, lock, self.client.query_typed(sql, params))
            .await
    }

    /// A request's answer within `bound`; a session that does not answer in
    /// time is ended.
    async fn bounded<T>(
        &self,
        bound: Duration,
        lock: &LockId,
        request: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, LockError> {
        self.in_flight.store(true, Ordering::Release);
        let answer = tokio::time::timeout(bound, request).await;
        if answer.is_ok() {
            self.in_flight.store(false, Ordering::Release);
        }
        match answer {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(request_error(lock, e)),
            Err(_) => {
                self.end();
                Err(LockError::Connect {
                    lock: lock.clone(),
                    source: Box::new(Failure::plain(format!(
                        "the lock server did not answer within {bound:?}; the session was closed"
                    ))),
                })
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // In a forked child the sessions are the parent's: their tasks
        // belong to the runtime of a thread the child does not have, so they
        // are forgotten rather than ended from here.
        if !self.is_here() {
            let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            std::mem::forget(std::mem::take(&mut state.shared));
            std::mem::forget(state.reader.take());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The values of the first row of a simple query's result.
pub(super) fn first_row(rows: &[SimpleQueryMessage]) -> Option<&tokio_postgres::SimpleQueryRow> {
    rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    })
}

fn first_value(rows: &[SimpleQueryMessage]) -> Option<&str> {
    first_row(rows).and_then(|r| r.get(0))
}

/// What went wrong with the lock server, in words an operator can act on:
/// the server's own SQLSTATE and message when it gave one. The underlying
/// `tokio-postgres` error, if any, is the source.
#[derive(Debug)]
pub(crate) struct Failure {
    text: String,
    source: Option<tokio_postgres::Error>,
}

impl Failure {
    pub(super) fn plain(text: impl Into<String>) -> Failure {
        Failure {
            text: text.into(),
            source: None,
        }
    }

    /// Words for `e`; `connecting` marks a failure while logging in.
    fn from_pg(e: &tokio_postgres::Error, connecting: bool) -> String {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let mut text = format!("{} {code}: {}", db.severity(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" (hint: {hint})"));
            }
            let refused = matches!(
                db.code(),
                &SqlState::INVALID_PASSWORD | &SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            ) || (connecting && code.starts_with("28"));
            if refused {
                return format!("the server refused the login: {text}");
            }
            return text;
        }
        if e.is_closed() {
            return "the session ended".into();
        }
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if connecting && text.ends_with("password missing") {
            return "the server refused the login: it asks for a password and none was given \
                    (not in the connection string, nor in PGPASSWORD, nor in a password file \
                    that only its owner can read)"
                .into();
        }
        text
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_ref().map(|e| e as &(dyn Error + 'static))
    }
}

fn connect_error(lock: &LockId, text: String, e: tokio_postgres::Error) -> LockError {
    LockError::Connect {
        lock: lock.clone(),
        source: Box::new(Failure {
            text,
            source: Some(e),
        }),
    }
}

/// A failed request: the session is gone (`Connect`), or the server said
/// no (`Server`, with the operation filled in by the caller).
pub(super) fn request_error(lock: &LockId, e: tokio_postgres::Error) -> LockError {
    let text = Failure::from_pg(&e, false);
    if e.is_closed() || e.as_db_error().is_none() && e.code().is_none() && is_io(&e) {
        return connect_error(lock, text, e);
    }
    LockError::Server {
        lock: lock.clone(),
        op: crate::error::Operation::Lock,
        source: Box::new(Failure {
            text,
            source: Some(e),
        }),
    }
}

fn is_io(e: &tokio_postgres::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn protocol_error(lock: &LockId, what: &str) -> LockError {
    LockError::Server {
        lock: lock.clone(),
        op: crate::error::Operation::Lock,
        source: Box::new(Failure::plain(format!(
            "unexpected answer from the server: {what}"
        ))),
    }
}

/// Whether a request's failure means its session is gone: the connection
/// ended, or the server ended it (a `FATAL` error: terminated by an
/// administrator, a server shutting down).
pub(super) fn session_gone(e: &LockError) -> bool {
    match e {
        LockError::Connect { .. } => true,
        LockError::Server { source, .. } => source
            .downcast_ref::<Failure>()
            .and_then(|f| f.source.as_ref())
            .and_then(|pg| pg.as_db_error())
            .is_some_and(|db| matches!(db.severity(), "FATAL" | "PANIC")),
        _ => false,
    }
}

/// The SQLSTATE of a request's failure, if the server gave one.
/// Whether `e` says the token table cannot be read here: it is not there,
/// or this role may not read it (or its schema).
pub(super) fn unreadable(e: &LockError) -> bool {
    let c = code(e);
    [SqlState::UNDEFINED_TABLE, SqlState::INSUFFICIENT_PRIVILEGE]
        .iter()
        .any(|s| c.as_deref() == Some(s.code()))
}

pub(super) fn code(e: &LockError) -> Option<String> {
    let source = match e {
        LockError::Server { source, .. } | LockError::Connect { source, .. } => source,
        _ => return None,
    };
    source
        .downcast_ref::<Failure>()
        .and_then(|f| f.source.as_ref())
        .and_then(|pg| pg.code())
        .map(|c| c.code().to_owned())
}

/// Sets the operation of a `Server` error.
pub(super) fn with_op(e: LockError, op: crate::error::Operation) -> LockError {
    match e {
        LockError::Server { lock, source, .. } => LockError::Server { lock, op, source },
        other => other,
    }
}
