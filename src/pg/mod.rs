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
//! # Layout
//!
//! [`PgLockMgr`] and its builder are in `manager`, [`PgLockGuard`] in
//! `guard`; `session` makes connections and cancels abandoned waits;
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

mod fence;
mod guard;
mod manager;
mod session;
mod sql;

pub use guard::PgLockGuard;
pub use manager::{PgLockMgr, PgLockMgrBuilder};

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
