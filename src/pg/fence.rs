//! The fencing-token table: one row per lock name, its token raised by
//! every holding. Schema-qualified (`public.lockmgr_fence` unless the
//! builder names another), created on first use only when it is missing,
//! so a role without `CREATE` can use one a DBA made with [`create_sql`].

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use super::session::{code, Session};
use crate::error::{LockError, LockId};

/// The default table.
pub(super) const DEFAULT_TABLE: &str = "public.lockmgr_fence";

/// A table name as written in SQL: each part of `schema.table` quoted as
/// an identifier.
pub(super) fn quoted(table: &str) -> String {
    table
        .split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// The statement that makes the table, for a DBA to run once.
pub(crate) fn create_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, token bigint NOT NULL, \
         holder_pid integer, since timestamptz)",
        quoted(table)
    )
}

/// Makes sure the table exists: looked up first, created only if missing
/// (a create race counts as success).
pub(super) async fn ensure(
    session: &Session,
    table: &str,
    bound: std::time::Duration,
    lock: &LockId,
) -> Result<(), LockError> {
    let rows = session
        .typed(
            "SELECT to_regclass($1) IS NOT NULL",
            // As the table is made: each part quoted, capitals kept.
            &[(&quoted(table), Type::TEXT)],
            bound,
            lock,
        )
        .await?;
    let exists = rows
        .first()
        .and_then(|r| r.try_get::<_, bool>(0).ok())
        .unwrap_or(false);
    if exists {
        return Ok(());
    }
    match session.simple(&create_sql(table), bound, lock).await {
        Ok(_) => Ok(()),
        Err(e)
            if code(&e).as_deref() == Some(SqlState::UNIQUE_VIOLATION.code())
                || code(&e).as_deref() == Some(SqlState::DUPLICATE_TABLE.code()) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Draws the next token for `name` in `session` (autocommit), recording
/// `holder_pid` as its holder, if that backend holds the advisory lock
/// `key` (its two halves, as `pg_locks` shows them) when the token's row
/// is locked: `None` when it does not (its session ended after the win).
///
/// Why the check: the token is drawn on another session than the one
/// holding the lock, after the win. A holder whose session ended in
/// between would otherwise draw a token after the next holder's, larger
/// than it, and a fenced store would refuse the holder of now. Checked
/// under the row's lock, it orders every draw with the holdings: a
/// successor can only win once the lock is gone, and its draw waits for
/// the row.
pub(super) async fn next_token(
    session: &Session,
    table: &str,
    name: &str,
    holder_pid: i32,
    (hi, lo): (i64, i64),
    bound: std::time::Duration,
    lock: &LockId,
) -> Result<Option<u64>, LockError> {
    // The second check refers to the row, so that it is made once the row
    // is locked (a correlated subquery), not before.
    let sql = format!(
        "INSERT INTO {t} AS f (name, token, holder_pid, since) \
         SELECT $1, 1, $2, clock_timestamp() WHERE EXISTS (SELECT 1 FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.pid = $2 AND l.objsubid = 1 \
         AND l.classid::int8 = $3 AND l.objid::int8 = $4) \
         ON CONFLICT (name) DO UPDATE SET token = f.token + 1, \
         holder_pid = EXCLUDED.holder_pid, since = EXCLUDED.since \
         WHERE EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
         AND l.pid = $2 AND l.objsubid = 1 AND l.classid::int8 = $3 AND l.objid::int8 = $4 \
         AND f.name IS NOT NULL) \
         RETURNING token::int8",
        t = quoted(table)
    );
    let rows = session
        .typed(
            &sql,
            &[
                (&name, Type::TEXT),
                (&holder_pid, Type::INT4),
                (&hi, Type::INT8),
                (&lo, Type::INT8),
            ],
            bound,
            lock,
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let token: i64 = row
        .try_get(0)
        .map_err(|e| protocol(lock, &format!("the token is not a bigint: {e}")))?;
    Ok(Some(token as u64))
}

fn protocol(lock: &LockId, what: &str) -> LockError {
    LockError::Server {
        lock: lock.clone(),
        op: crate::error::Operation::Fence,
        source: what.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted_per_part() {
        assert_eq!(
            quoted("public.lockmgr_fence"),
            "\"public\".\"lockmgr_fence\""
        );
        assert_eq!(quoted("we\"ird.t"), "\"we\"\"ird\".\"t\"");
        assert!(create_sql("ops.fence").starts_with("CREATE TABLE IF NOT EXISTS \"ops\".\"fence\""));
    }
}
