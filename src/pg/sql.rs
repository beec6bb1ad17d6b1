//! Every statement the PostgreSQL backend sends, in one place. Keys are
//! integers written into the text (no prepared statements, so that any
//! pooler passes them on); names travel as parameters of the unnamed
//! statement.

use std::time::Duration;

use crate::vocab::LockMode;

/// The setting a session of ours marks its backend with, at its start
/// (see [`setup`]): a session-level lock is taken and let go only where
/// the mark is the session's own.
const CLAIM: &str = "lockmgr.claim";

/// Whether a statement runs on the backend of the session that made
/// `claim` on backend `pid`: behind a transaction pooler it may run
/// anywhere, on a backend other clients (and other sessions of ours) use.
fn ours(pid: i32, claim: &str) -> String {
    if claim.is_empty() {
        // A session made for transactions marked nothing.
        return "false".to_owned();
    }
    format!("(pg_backend_pid() = {pid} AND coalesce(current_setting('{CLAIM}', true) = '{claim}', false))")
}

/// A session's first statement: its backend pid, the server-side settings
/// (see [`server_side`]), and, with `claim`, whether it marked the backend
/// as its own. A backend already marked by another session of ours is not
/// taken over: two sessions on one backend can only be a transaction
/// pooler's doing. (PgBouncer in session mode resets a server connection's
/// settings, `DISCARD ALL`, before it serves another client.)
///
/// The fourth column, with `claim`: when the backend started (Unix seconds,
/// as text), so that a backend is ended only if it is still the one the
/// session marked (see [`end_backend_holding`]), never another that
/// reused its pid.
///
/// The server-side settings are made only with `settings` (not on a
/// transaction pooler's backend, which other clients of the pool share),
/// and only on a backend the session marked, or, without `claim`, on any.
pub(super) fn setup(dead: Duration, claim: Option<&str>, settings: bool) -> String {
    let (claimed, started) = match claim {
        Some(claim) => (
            format!(
                "set_config('{CLAIM}', CASE WHEN coalesce(current_setting('{CLAIM}', true), '') \
                 = '' THEN '{claim}' ELSE current_setting('{CLAIM}', true) END, false) = '{claim}'"
            ),
            // The function, not the view: one backend's row, without the
            // view's joins (0.05 ms where the view took 0.33).
            format!("(SELECT {STARTED} FROM pg_stat_get_activity(pg_backend_pid()))"),
        ),
        None => ("true".to_owned(), "NULL".to_owned()),
    };
    let applied = if settings {
        server_side(dead, false)
    } else {
        "0".to_owned()
    };
    // `OFFSET 0`: the mark is made once, before the settings ask for it.
    format!(
        "SELECT pg_backend_pid(), CASE WHEN c.ours THEN {applied} END, c.ours, {started} \
         FROM (SELECT {claimed} AS ours OFFSET 0) AS c"
    )
}

/// A backend's start, as [`setup`] reads it and [`end_backend_holding`]
/// compares it.
const STARTED: &str = "extract(epoch FROM backend_start)::text";

/// A liveness probe of a session that holds session-level locks: whether
/// it still runs on its own backend. Behind a transaction pooler its next
/// statement may run anywhere, and its backend may be gone (PgBouncer
/// closes a server connection whose client left in the middle of a
/// transaction), its locks with it.
pub(super) fn still_ours(pid: i32, claim: &str) -> String {
    format!("SELECT {}", ours(pid, claim))
}

/// One non-blocking try of a session-level lock, made only on the backend
/// of the session that made `claim` on `pid`, and whether it ran there: a
/// pooler that moves statements between backends is noticed, and no lock
/// is ever taken on a backend that is not ours.
pub(super) fn try_lock(mode: LockMode, key: i64, pid: i32, claim: &str) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_try_advisory_lock",
        LockMode::Shared => "pg_try_advisory_lock_shared",
    };
    let ours = ours(pid, claim);
    format!("SELECT coalesce(CASE WHEN {ours} THEN {f}({key}) END, false), {ours}")
}

/// One wait for a session-level lock, bounded by the `lock_timeout` set
/// in the same message ([`set_lock_timeout`]), made only on the session's
/// own backend (as [`try_lock`]), and whether it ran there. (The wait
/// function returns `void`, which is not null.)
pub(super) fn wait_lock(mode: LockMode, key: i64, pid: i32, claim: &str) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_advisory_lock",
        LockMode::Shared => "pg_advisory_lock_shared",
    };
    let ours = ours(pid, claim);
    format!("SELECT CASE WHEN {ours} THEN {f}({key}) END IS NOT NULL, {ours}")
}

/// Whether the session's own backend holds key (`hi`, `lo`) in `mode`
/// (granted), asked only there (as [`try_lock`]), and whether it ran there:
/// a wait that the server ended at its `lock_timeout` may have been
/// granted just then.
pub(super) fn holds(mode: LockMode, hi: i64, lo: i64, pid: i32, claim: &str) -> String {
    let held = match mode {
        LockMode::Exclusive => "ExclusiveLock",
        LockMode::Shared => "ShareLock",
    };
    let ours = ours(pid, claim);
    format!(
        "SELECT CASE WHEN {ours} THEN EXISTS (SELECT 1 FROM pg_locks WHERE \
         locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND objsubid = 1 \
         AND classid::int8 = {hi} AND objid::int8 = {lo} AND mode = '{held}') END IS TRUE, \
         {ours}"
    )
}

/// Releases one hold of a session-level lock, only on the session's own
/// backend (as [`try_lock`]): whether it was held (null where the
/// statement ran elsewhere), and whether it ran there.
pub(super) fn unlock(mode: LockMode, key: i64, pid: i32, claim: &str) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_advisory_unlock",
        LockMode::Shared => "pg_advisory_unlock_shared",
    };
    let ours = ours(pid, claim);
    format!("SELECT CASE WHEN {ours} THEN {f}({key}) END, {ours}")
}

/// Ends backend `pid` if it still holds `key` (`None`: any key of
/// lockmgr's, whose top 16 bits are `"LM"`): session-level locks left on a
/// pooled backend after their session's statements moved to others, which
/// only the backend's end lets go. Whatever else that backend serves at
/// the moment (another client's transaction) ends with it.
///
/// `started` (from [`setup`]; digits and a point only) pins the backend to
/// the one that was marked; `None` when unknown.
pub(super) fn end_backend_holding(pid: i32, started: Option<&str>, key: Option<i64>) -> String {
    let which = match key {
        Some(key) => {
            let (hi, lo) = halves(key);
            format!("objsubid = 1 AND classid::int8 = {hi} AND objid::int8 = {lo}")
        }
        None => format!(
            "objsubid = 1 AND classid::int8 >> 16 = {}",
            super::NAMESPACE >> 48
        ),
    };
    let same = match started {
        Some(started)
            if !started.is_empty() && started.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            let activity = format!("pg_stat_get_activity({pid})");
            format!(" AND pid IN (SELECT pid FROM {activity} WHERE {STARTED} = '{started}')")
        }
        _ => String::new(),
    };
    format!(
        "SELECT coalesce(bool_or(pg_terminate_backend(h.pid)), false) FROM \
         (SELECT DISTINCT pid FROM pg_locks WHERE pid = {pid} AND locktype = 'advisory' \
         AND granted AND {which}{same}) AS h"
    )
}

/// `statement_timeout` for the session, set only on its own backend (as
/// [`try_lock`]), and whether it ran there.
pub(super) fn set_session_statement_timeout(ms: u128, pid: i32, claim: &str) -> String {
    format!(
        "SELECT CASE WHEN {ours} THEN set_config('statement_timeout', '{ms}', false) END, {ours}",
        ours = ours(pid, claim)
    )
}

/// Takes a session's mark off the backend the statement runs on, if it is
/// that session's, and puts the settings its start made back as they were
/// (see [`setup`]): best effort, for sessions that will take no
/// session-level lock after all (a probe that found a transaction pooler,
/// where nothing resets a backend's settings), so that transactions on
/// that backend need not read the lock table (see [`held_here`]), and the
/// pool's other clients do not inherit the settings.
pub(super) fn unmark(claim: &str) -> String {
    format!(
        "SELECT CASE WHEN current_setting('{CLAIM}', true) = '{claim}' \
         THEN set_config('{CLAIM}', '', false) || ( \
         SELECT count(set_config(s.name, s.reset_val, false))::text FROM pg_settings s \
         WHERE s.name IN ({SETTINGS})) END"
    )
}

/// The key as `pg_locks` shows it: (`classid`, `objid`).
pub(super) fn halves(key: i64) -> (i64, i64) {
    let key = key as u64;
    ((key >> 32) as i64, (key & 0xFFFF_FFFF) as i64)
}

/// Whether the backend a transaction runs on holds the key already in a
/// mode that conflicts with `mode`. Behind a transaction pooler it may be
/// a backend marked by a session of ours that holds the key as a
/// session-level lock (the session way forced, or a probe that guessed
/// wrong): PostgreSQL grants a backend a lock it holds, and the
/// transaction would be a second holder. (Reading the lock table costs
/// about 0.1 ms a statement, so it is read only on a marked backend: see
/// [`begin_holding`].)
fn held_here(mode: LockMode, key: i64) -> String {
    let (hi, lo) = halves(key);
    let conflicting = match mode {
        LockMode::Exclusive => "",
        LockMode::Shared => " AND mode = 'ExclusiveLock'",
    };
    format!(
        "EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' \
         AND granted AND objsubid = 1 AND classid::int8 = {hi} AND objid::int8 = {lo}{conflicting})"
    )
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
/// The settings [`server_side`] makes, as an SQL list.
const SETTINGS: &str = "'tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', \
     'tcp_user_timeout', 'client_connection_check_interval', 'idle_session_timeout', \
     'transaction_timeout'";

fn server_side(dead: Duration, local: bool) -> String {
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
/// noticed there too, even when its cancel request finds nothing. Its
/// third column says whether a session of ours marked the backend (see
/// [`held_here`]), which serves the transaction to its end.
pub(super) fn begin_holding(dead: Duration) -> String {
    format!(
        "BEGIN; SET LOCAL idle_in_transaction_session_timeout = 0; \
         SELECT pg_backend_pid(), {}, coalesce(current_setting('{CLAIM}', true), '') <> ''",
        server_side(dead, true)
    )
}

/// One non-blocking try of a transaction-level lock; on a `marked`
/// backend, never one the backend already holds (see [`held_here`]).
pub(super) fn try_xact_lock(mode: LockMode, key: i64, marked: bool) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_try_advisory_xact_lock",
        LockMode::Shared => "pg_try_advisory_xact_lock_shared",
    };
    if !marked {
        return format!("SELECT {f}({key})");
    }
    format!(
        "SELECT CASE WHEN {} THEN false ELSE {f}({key}) END",
        held_here(mode, key)
    )
}

/// One wait for a transaction-level lock, bounded by `attempt`: true once
/// won; on a `marked` backend that already holds the key, false at once
/// (see [`held_here`]).
pub(super) fn wait_xact_lock(mode: LockMode, key: i64, attempt: Duration, marked: bool) -> String {
    let f = match mode {
        LockMode::Exclusive => "pg_advisory_xact_lock",
        LockMode::Shared => "pg_advisory_xact_lock_shared",
    };
    let guard = if marked {
        held_here(mode, key)
    } else {
        "false".to_owned()
    };
    // A `statement_timeout` of the role or database would cut the wait
    // short: lifted, for the rest of this transaction only.
    format!(
        "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = {}; \
         SELECT CASE WHEN {guard} THEN false ELSE {f}({key}) IS NOT NULL END",
        lock_timeout_ms(attempt),
    )
}

/// Bounds a session-level wait to one attempt, sent in one message with
/// it (one implicit transaction): `SET LOCAL`, so that nothing stays with
/// the backend (behind a pooler that moved the message, one other clients
/// use), and no later statement of the session is bounded by it. It also
/// lifts, for that message only, a `statement_timeout` the session may
/// have for reads (see `Server::bound_reads`), which would otherwise cut
/// the wait short.
pub(super) fn set_lock_timeout(attempt: Duration) -> String {
    format!(
        "SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = {}",
        lock_timeout_ms(attempt)
    )
}

/// Whether key (`hi` = classid, `lo` = objid) is held exclusively, and by
/// how many sessions.
pub(super) fn state(hi: i64, lo: i64) -> String {
    format!(
        "SELECT coalesce(bool_or(mode = 'ExclusiveLock'), false), count(*) \
         FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND objsubid = 1 AND classid::int8 = {hi} AND objid::int8 = {lo}"
    )
}

/// How many of the keys `$1` (an `int8[]`; every key of lockmgr's has
/// its high bit clear, so the halves join back without overflow) are held
/// now, in any mode, by any session.
pub(super) fn held_among() -> &'static str {
    "SELECT count(DISTINCT (classid, objid))::int8 FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
     AND ((classid::int8 << 32) | objid::int8) = ANY($1)"
}

/// The exclusive holder of key (`hi`, `lo`), with its start from the fence
/// table (`$1`: the lock's name) when there is one (`None`: no table, and
/// the holder's start is its backend's): backend pid, client address,
/// application name, since (Unix seconds), each cast to the type read back.
pub(super) fn holder(fence: Option<&str>, hi: i64, lo: i64) -> String {
    let (since, join) = match fence {
        Some(fence) => (
            "coalesce(f.since, a.backend_start)",
            format!("LEFT JOIN {fence} f ON f.name = $1 AND f.holder_pid = l.pid"),
        ),
        None => ("a.backend_start", "AND $1::text IS NOT NULL".to_owned()),
    };
    format!(
        "SELECT a.pid::int4, host(a.client_addr)::text, a.application_name::text, \
         extract(epoch FROM {since})::float8 \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid {join} \
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
