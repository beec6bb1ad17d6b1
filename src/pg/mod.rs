//! Locks across machines, on PostgreSQL session-level advisory locks
//! (feature `postgres`).
//!
//! A lock file reaches the processes of one host. When a service runs on
//! several hosts that share a PostgreSQL database, [`PgLockMgr`] gives the
//! same contract as [`LockMgr`](crate::LockMgr) with the database server
//! doing the locking:
//!
//! - **Connections are few and shared.** The locks of every `PgLockMgr` of
//!   a process for one server are session-level advisory locks held by a
//!   few shared sessions: 1,000 held names cost two server connections
//!   (one holding them, one for reads), not 1,000. A try is made on a
//!   shared session; an acquire that has to wait does so on a session of
//!   its own (a waiting session can run nothing else), which joins the
//!   shared ones once it holds the lock, or once its wait ended on the
//!   server's own bound without it. Shared sessions that hold no lock
//!   are closed beyond
//!   [`max_idle_sessions`](PgLockMgrBuilder::max_idle_sessions). Reads
//!   (status, holder lookups, fencing tokens, listings) run on one more
//!   session, which never takes a lock and stays open: a read the server
//!   holds up past the request timeout closes it, and no lock with it.
//!   Where no second connection can be had (a role's `CONNECTION LIMIT`),
//!   reads run on a shared session. The tasks
//!   of one process take a name in turn, in FIFO order, before they ask the
//!   server (a session that holds a lock is granted it again, so two tasks
//!   must never ask on one session): a thousand tasks waiting for one name
//!   cost one waiting session, shared or exclusive (behind a transaction
//!   pooler, where a lock is held in a transaction, each waits in one). Shared acquires of the process pass together
//!   whenever no exclusive one of it is through, even past one waiting for
//!   the process's own readers to leave, which it would otherwise wait for
//!   while they waited for it (so a process's own readers can keep its
//!   writer out). On the server, a shared request queues behind a waiting
//!   exclusive one, of any process. A lock whose session is lost lets the next
//!   task of the process in at once. Sessions run on a thread of their own
//!   (`lockmgr-pg`), so that they serve every runtime of the process and
//!   outlive the one that made them.
//! - **The server releases a lock** when it is released, and when its
//!   session ends for any reason: the process killed, the connection lost,
//!   the backend terminated. [`PgLockGuard::lost`] then resolves (for every
//!   lock of that session).
//! - **Waiting happens on the server**: `pg_advisory_lock` under a
//!   per-attempt `lock_timeout`. The server's own wait queue wakes the next
//!   waiter the moment the lock is free. Nothing polls. A dropped acquire
//!   leaves no wait behind: its session is cancelled and closed, and the
//!   server checks every 250 ms that the client of a running query is still
//!   there (`client_connection_check_interval`, PostgreSQL 14 and later), so
//!   a cancel that came before the query is followed up.
//! - **Every step is bounded**: a connection by the wait (or
//!   [`connect_timeout`](PgLockMgrBuilder::connect_timeout)), a lock wait by
//!   its attempt, any other request by
//!   [`request_timeout`](PgLockMgrBuilder::request_timeout) (10 s); a silent
//!   network is given up by both ends within
//!   [`dead_session_after`](PgLockMgrBuilder::dead_session_after) (30 s):
//!   TCP keepalives and `tcp_user_timeout` on this process's sockets, and
//!   the same settings for the server's end of each session; and a session
//!   holding locks answers a trivial query every quarter of that time, which
//!   sees a pooler's connection to the server fall silent (and, for
//!   session-level locks, asks whether it still runs on its own backend).
//! - **Poolers.** Behind PgBouncer in session mode, locks work as on a
//!   direct connection. Behind a transaction-pooling proxy (PgBouncer's
//!   `pool_mode = transaction`), a session-level lock would stay with a
//!   pooled backend that other clients use; so each lock is then taken and
//!   held by `pg_advisory_xact_lock` in an open transaction of a connection
//!   of its own, which the pooler keeps on one backend until the transaction
//!   ends (the transaction sets `idle_in_transaction_session_timeout = 0`
//!   for itself, as it is idle on purpose; each held lock then occupies one
//!   of the pool's server connections). Which way the server is reached is
//!   found out before the first lock: two sessions of this process that land
//!   on one backend can only be pooled per transaction. It can also be set
//!   with [`transaction_pooling`](PgLockMgrBuilder::transaction_pooling).
//!   Either way, a session-level lock's statements act only on the backend
//!   its session marked as its own when it started, and a transaction on a
//!   marked backend never takes a lock that backend already holds: a wrong
//!   guess is found at a session's start or its next statement (README
//!   says what this does not cover).
//!   Statement pooling is not supported (it allows no transactions).
//! - **TLS** with rustls, to libpq's `sslmode` meanings: `disable`; `allow`
//!   and `prefer` (the default: TLS whenever the server offers it);
//!   `require` (which checks the chain as `verify-ca` does when a root
//!   certificate is at hand: `sslrootcert`, or an existing
//!   `~/.postgresql/root.crt`); `verify-ca` and `verify-full` against `sslrootcert` (a PEM
//!   file, `system` for the system's roots, or `~/.postgresql/root.crt`).
//!   A client certificate (`sslcert`, `sslkey`) is presented when given.
//!   Over TLS, SCRAM logins bind the channel when the server offers it.
//! - **Connection settings** are read as libpq reads them: a `key=value`
//!   string or a `postgres://` URL, completed from the `PG*` environment
//!   (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`,
//!   `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGAPPNAME`,
//!   `PGCONNECT_TIMEOUT`) and the password file (`PGPASSFILE` or
//!   `~/.pgpass`, ignored when others may read it). An empty string takes
//!   everything from there.
//! - A lock's name maps to a 64-bit advisory key by [`advisory_key`], in a
//!   namespace of its own.
//! - Each guard carries a [fencing token](PgLockGuard::fencing_token),
//!   strictly increasing over all holders of one name, drawn in an
//!   autocommit statement right after the lock was won, and only while the
//!   winning session still holds it (as long as the token table keeps its
//!   rows: a dropped, truncated or restored table, or a failover to a
//!   standby that missed the last draws, starts tokens again). Pass it to the
//!   systems you write to and let them refuse tokens older than the newest
//!   they have seen: a lock is only as good as its session, and a holder
//!   that stalls (a long GC pause, a network partition) can lose its
//!   session without knowing it before its next write.
//!
//! The tokens and the holders' start times live in a table,
//! `public.lockmgr_fence (name text primary key, token bigint, holder_pid
//! integer, since timestamptz)` (another with
//! [`fence_table`](PgLockMgrBuilder::fence_table)). It is looked up first
//! and created only when missing: a role without `CREATE` can use one a DBA
//! created once with the SQL of [`fence_table_sql`]; the role then needs
//! `SELECT`, `INSERT` and `UPDATE` on it. Contention errors name the holder
//! from `pg_locks` and `pg_stat_activity` (a role without
//! `pg_read_all_stats` sees no client address for other roles' sessions).
//!
//! Errors say what the server said: its SQLSTATE and message (and detail
//! and hint) are in the error's `Display`, and a refused login says so.
//! No error, `Debug` or event shows a password.
//!
//! # Layout
//!
//! [`PgLockMgr`] and its builder are in `manager`, [`PgLockGuard`] in
//! `guard`; `gate` is the in-process line of each name; `config` reads
//! connection settings the libpq way, `tls` makes the TLS connector,
//! `session` the sessions (shared, waiting, bounded) and the pooler probe;
//! `sql` holds every statement, `fence` the fencing-token table.
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

mod cancel;
mod config;
mod fence;
mod gate;
mod guard;
mod leader;
mod listing;
mod manager;
mod semaphore;
mod session;
mod sql;
mod tls;

pub use guard::PgLockGuard;
pub use leader::Led;
pub use listing::ServerLock;
pub use manager::{PgLockMgr, PgLockMgrBuilder};
pub use semaphore::{PgPermit, PgSemaphore};

/// The SQL that creates the fencing-token table `table` (`schema.table`):
/// for a DBA to run once, so that the role the locks use needs no `CREATE`
/// (only `SELECT`, `INSERT` and `UPDATE` on the table).
///
/// ```
/// let sql = lockmgr::pg::fence_table_sql("public.lockmgr_fence");
/// assert!(sql.starts_with("CREATE TABLE IF NOT EXISTS \"public\".\"lockmgr_fence\""));
/// ```
pub fn fence_table_sql(table: &str) -> String {
    fence::create_sql(table)
}

/// Whether the connection string `config` itself carries a password (in a
/// URL's user information or `password` parameter, or a `password` key),
/// as opposed to leaving it to `PGPASSWORD` or the password file. For
/// tools that take a connection string on their command line, where every
/// local user can read it, to warn.
///
/// ```
/// use lockmgr::pg::carries_password;
/// assert!(carries_password("postgres://app:secret@db/app"));
/// assert!(carries_password("host=db password='s e c'"));
/// assert!(!carries_password("postgres://app@db/app"));
/// ```
pub fn carries_password(config: &str) -> bool {
    config::carries_password(config)
}

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
}
