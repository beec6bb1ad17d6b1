//! Every `lockmgr::pg` lock on a server, held or waited for, with the
//! sessions that hold it and those in its queue, as the server's lock
//! table shows them: what `lockmgr list --postgres` prints.

use std::collections::HashMap;

use tokio_postgres::types::Type;

use super::manager::{session_holder, PgLockMgr};
use super::session::with_op;
use super::{advisory_key, fence, NAMESPACE};
use crate::error::{LockError, Operation};
use crate::holder::Holder;
use crate::vocab::LockMode;

/// One `lockmgr::pg` lock on the server: held, or waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerLock {
    /// Its name, when the fence table knows it (every name that was ever
    /// won has a row there).
    pub name: Option<String>,
    /// Its advisory key ([`advisory_key`](super::advisory_key) of the name).
    pub key: i64,
    /// Exclusive when an exclusive holder (or, with none, an exclusive
    /// waiter) is there, shared otherwise.
    pub mode: LockMode,
    /// The sessions that hold it: backend pid, client address as `host`,
    /// `application_name` as `label`, and since when (the fence table's
    /// time for its last holder, or the session's start).
    pub holding: Vec<Holder>,
    /// The sessions in its queue, first come first, `since` their wait
    /// began.
    pub waiting: Vec<Holder>,
}

impl PgLockMgr {
    /// Every `lockmgr::pg` lock on this lock's server (any name), held or
    /// waited for, with its holders and its queue, named through this
    /// lock's fence table. Creates nothing on the server.
    ///
    /// # Errors
    ///
    /// [`LockError::Connect`] and [`LockError::Server`] (with
    /// [`Operation::Read`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let any = lockmgr::pg::PgLockMgr::new("host=db user=app", "any")?;
    /// for lock in any.server_locks().await? {
    ///     println!("{:?}: {} holder(s), {} waiting", lock.name, lock.holding.len(), lock.waiting.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn server_locks(&self) -> Result<Vec<ServerLock>, LockError> {
        let (session, bound) = self.quick_session().await?;
        let id = &self.inner().id;
        let read = |e| with_op(e, Operation::Read);
        let rows = session
            .typed(&locks_sql(), &[], bound, id)
            .await
            .map_err(read)?;
        // Names (and their last holders) from the fence table, if there is one.
        let table = fence::quoted(&self.inner().fence);
        let exists = session
            .typed(
                "SELECT to_regclass($1) IS NOT NULL",
                &[(&table, Type::TEXT)],
                bound,
                id,
            )
            .await
            .map_err(read)?;
        let mut names: HashMap<i64, (String, Option<i64>, Option<f64>)> = HashMap::new();
        if exists.first().and_then(|r| r.try_get::<_, bool>(0).ok()) == Some(true) {
            let sql = format!(
                "SELECT name::text, holder_pid::int8, extract(epoch FROM since)::float8 FROM {table}"
            );
            for row in session.typed(&sql, &[], bound, id).await.map_err(read)? {
                if let Ok(name) = row.try_get::<_, String>(0) {
                    let pid = row.try_get(1).ok().flatten();
                    let since = row.try_get(2).ok().flatten();
                    names.insert(advisory_key(&name), (name, pid, since));
                }
            }
        }
        let mut locks: Vec<ServerLock> = Vec::new();
        for row in rows {
            let odd = |e: tokio_postgres::Error| LockError::Server {
                lock: id.clone(),
                op: Operation::Read,
                source: format!("unexpected answer from the server: {e}").into(),
            };
            let hi: i64 = row.try_get(0).map_err(odd)?;
            let lo: i64 = row.try_get(1).map_err(odd)?;
            let exclusive: bool = row.try_get(2).map_err(odd)?;
            let granted: bool = row.try_get(3).map_err(odd)?;
            let pid: i32 = row.try_get(4).map_err(odd)?;
            let addr: Option<String> = row.try_get(5).map_err(odd)?;
            let app: Option<String> = row.try_get(6).map_err(odd)?;
            let started: Option<f64> = row.try_get(7).map_err(odd)?;
            let key = ((hi as u64) << 32 | (lo as u64 & 0xFFFF_FFFF)) as i64;
            let known = names.get(&key);
            let since = match known {
                Some((_, Some(holder), Some(since))) if granted && *holder == i64::from(pid) => {
                    Some(*since)
                }
                _ => started,
            };
            let holder = session_holder(pid, addr, app, since);
            if locks.last().is_none_or(|l| l.key != key) {
                // Rows come holders first, then waiters in order: the first
                // row's mode is the holders' (or, with none, the head's).
                locks.push(ServerLock {
                    name: known.map(|(n, _, _)| n.clone()),
                    key,
                    mode: if exclusive {
                        LockMode::Exclusive
                    } else {
                        LockMode::Shared
                    },
                    holding: Vec::new(),
                    waiting: Vec::new(),
                });
            }
            let lock = locks.last_mut().expect("pushed");
            if granted {
                lock.holding.push(holder);
            } else {
                lock.waiting.push(holder);
            }
        }
        Ok(locks)
    }
}

/// Every advisory lock in our key range, holders before waiters, waiters in
/// the order they began to wait.
fn locks_sql() -> String {
    let prefix = (NAMESPACE >> 48) as i64;
    format!(
        "SELECT l.classid::int8, l.objid::int8, l.mode = 'ExclusiveLock', l.granted, a.pid, \
         host(a.client_addr), a.application_name::text, \
         extract(epoch FROM CASE WHEN l.granted THEN a.backend_start ELSE a.query_start END)::float8 \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND (l.classid::int8 >> 16) = {prefix} \
         ORDER BY 1, 2, 4 DESC, 8, 5"
    )
}
