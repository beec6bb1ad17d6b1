//! Every statement the PostgreSQL backend sends, in one place. Keys are
//! integers written into the text (no prepared statements, so that any
//! pooler passes them on); names travel as parameters of the unnamed
//! statement.

use std::time::Duration;

use crate::vocab::LockMode;

/// One non-blocking try of a session-level lock, made only on backend
/// `pid` (the session's own), and the backend that ran the statement: a
/// pooler that moves statements between backends is noticed, and no lock is
/// ever taken on a backend that is not ours.
pub(super) fn try_lock(mode: LockMode, key: i64, pid: i32) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_try_advisory_lock",
        LockMode::Shared => "pg_try_advisory_lock_shared",
    };
    format!(
        "SELECT coalesce(CASE WHEN pg_backend_pid() = {pid} THEN {f}({key}) END, false), \
         pg_backend_pid()"
    )
}

/// One wait for a session-level lock, bounded by the session's
/// `lock_timeout`, made only on backend `pid`, and the backend that ran the
/// statement. (The wait function returns `void`, which is not null.)
pub(super) fn wait_lock(mode: LockMode, key: i64, pid: i32) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_advisory_lock",
        LockMode::Shared => "pg_advisory_lock_shared",
    };
    format!(
        "SELECT CASE WHEN pg_backend_pid() = {pid} THEN {f}({key}) END IS NOT NULL, \
         pg_backend_pid()"
    )
}

/// Releases one hold of a session-level lock.
pub(super) fn unlock(mode: LockMode, key: i64) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_advisory_unlock",
        LockMode::Shared => "pg_advisory_unlock_shared",
    };
    format!("SELECT {f}({key})")
}

/// The server side of a session: give a silent client up as the client
/// gives a silent server up (keepalives, `tcp_user_timeout`), notice a
/// client gone in the middle of a wait (`client_connection_check_interval`,
/// PostgreSQL 14 and later), and never end a session or transaction for
/// being idle or long (`idle_session_timeout`, 14 and later;
/// `transaction_timeout`, 17 and later): one that holds a lock is idle and
/// long-lived on purpose, and a role's or database's policy for idle
/// connections would take the lock away with it. Settings the server lacks
/// are skipped. A subquery counting what it set; `local` for the current
/// transaction only.
pub(super) fn server_side(dead: Duration, local: bool) -> String {
    let ms = |d: Duration| d.as_millis().max(1);
    let secs = |d: Duration| d.as_secs().max(1);
    format!(
        "(SELECT count(*) FROM (SELECT set_config(v.name, v.value, {local}) \
         FROM (VALUES ('tcp_keepalives_idle', '{}'), ('tcp_keepalives_interval', '{}'), \
         ('tcp_keepalives_count', '3'), ('tcp_user_timeout', '{}'), \
         ('client_connection_check_interval', '250'), ('idle_session_timeout', '0'), \
         ('transaction_timeout', '0')) AS v(name, value) \
         JOIN pg_settings s ON s.name = v.name) AS applied)",
        secs(dead / 3),
        secs(dead / 9),
        ms(dead),
    )
}

/// Opens the transaction a lock is held in behind a transaction pooler, and
/// answers with its backend's pid. The server must not end it for being
/// idle (it is idle on purpose), and the backend serving it, which is not
/// the one that set up the session, gets the session's server-side
/// settings for the transaction: a client gone in the middle of a wait is
/// noticed there too, even when its cancel request finds nothing.
pub(super) fn begin_holding(dead: Duration) -> String {
    format!(
        "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; \
         SELECT pg_backend_pid(), {}",
        server_side(dead, true)
    )
}

/// One non-blocking try of a transaction-level lock.
pub(super) fn try_xact_lock(mode: LockMode, key: i64) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_try_advisory_xact_lock",
        LockMode::Shared => "pg_try_advisory_xact_lock_shared",
    };
    format!("SELECT {f}({key})")
}

/// One wait for a transaction-level lock, bounded by `attempt`.
pub(super) fn wait_xact_lock(mode: LockMode, key: i64, attempt: Duration) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_advisory_xact_lock",
        LockMode::Shared => "pg_advisory_xact_lock_shared",
    };
    format!(
        "SET LOCAL lock_timeout = {}; SELECT {f}({key})",
        lock_timeout_ms(attempt)
    )
}

/// Bounds each later wait of the session to one attempt. Sent in one
/// message with the wait: its `SET LOCAL` lifts, for that message only, a
/// `statement_timeout` the session may have for reads (see
/// `Server::bound_reads`), which would otherwise cut the wait short.
pub(super) fn set_lock_timeout(attempt: Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = 0; SET lock_timeout = {}",
        lock_timeout_ms(attempt)
    )
}

/// After a wait: later statements of the session, which joins the shared
/// ones, are not bounded by it.
pub(super) const RESET_LOCK_TIMEOUT: &str = "RESET lock_timeout";

/// Whether key (`hi` = classid, `lo` = objid) is held exclusively, and by
/// how many sessions.
pub(super) fn state(hi: i64, lo: i64) -> String {
    format!(
        "SELECT coalesce(bool_or(mode = 'ExclusiveLock'), false), count(*) \
         FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND objsubid = 1 AND classid::int8 = {hi} AND objid::int8 = {lo}"
    )
}

/// The exclusive holder of key (`hi`, `lo`), with its start from the fence
/// table (`$1`: the lock's name): backend pid, client address, application
/// name, since (Unix seconds), each cast to the type read back.
pub(super) fn holder(fence: &str, hi: i64, lo: i64) -> String {
    format!(
        "SELECT a.pid::int4, host(a.client_addr)::text, a.application_name::text, \
         extract(epoch FROM coalesce(f.since, a.backend_start))::float8 \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         LEFT JOIN {fence} f ON f.name = $1 AND f.holder_pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' \
         AND l.objsubid = 1 AND l.classid::int8 = {hi} AND l.objid::int8 = {lo} \
         LIMIT 1"
    )
}

/// `lock_timeout` for one attempt, in ms; 0 (no limit) when the attempt is
/// longer than the setting can hold.
fn lock_timeout_ms(timeout: Duration) -> u128 {
    match timeout.as_millis().max(1) {
        ms if ms > i32::MAX as u128 => 0,
        ms => ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_timeouts_saturate_to_no_limit() {
        assert_eq!(lock_timeout_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(lock_timeout_ms(Duration::from_micros(10)), 1);
        assert_eq!(lock_timeout_ms(Duration::MAX), 0);
    }
}
