//! Every statement the PostgreSQL backend sends, in one place.

use std::time::Duration;

use crate::vocab::LockMode;

/// Creates the fence table if it is missing.
pub(super) const FENCE_TABLE: &str = "CREATE TABLE IF NOT EXISTS lockmgr_fence (\
     name text PRIMARY KEY, token bigint NOT NULL, holder_pid integer, since timestamptz)";

/// Draws the next fencing token for `$1` (the lock's name) and records this
/// session as its holder.
pub(super) const NEXT_TOKEN: &str =
    "INSERT INTO lockmgr_fence AS f (name, token, holder_pid, since) \
     VALUES ($1, 1, pg_backend_pid(), clock_timestamp()) \
     ON CONFLICT (name) DO UPDATE SET token = f.token + 1, \
     holder_pid = pg_backend_pid(), since = clock_timestamp() \
     RETURNING token";

/// The exclusive holder of key (`$1` = classid, `$2` = objid) named `$3`:
/// backend pid, client address, application name, since (Unix seconds).
pub(super) const HOLDER: &str = "SELECT a.pid, host(a.client_addr), a.application_name, \
     extract(epoch FROM coalesce(f.since, a.backend_start))::float8 \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     LEFT JOIN lockmgr_fence f ON f.name = $3 AND f.holder_pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' \
     AND l.objsubid = 1 AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
     LIMIT 1";

/// Whether key (`$1`, `$2`) is held exclusively, and by how many sessions.
pub(super) const STATE: &str = "SELECT coalesce(bool_or(mode = 'ExclusiveLock'), false), count(*) \
     FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND objsubid = 1 AND classid::int8 = $1 AND objid::int8 = $2";

/// One non-blocking try.
pub(super) fn try_lock(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "SELECT pg_try_advisory_lock($1)",
        LockMode::Shared => "SELECT pg_try_advisory_lock_shared($1)",
    }
}

/// One wait, bounded by the session's `lock_timeout`.
pub(super) fn wait_lock(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "SELECT pg_advisory_lock($1)",
        LockMode::Shared => "SELECT pg_advisory_lock_shared($1)",
    }
}

/// Releases one hold.
pub(super) fn unlock(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Exclusive => "SELECT pg_advisory_unlock($1)",
        LockMode::Shared => "SELECT pg_advisory_unlock_shared($1)",
    }
}

/// Bounds each later wait of the session to one attempt.
pub(super) fn set_lock_timeout(attempt: Duration) -> String {
    format!("SET lock_timeout = {}", lock_timeout_ms(attempt))
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
