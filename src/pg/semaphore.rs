//! [`PgSemaphore`]: at most N holders of a named resource, across hosts,
//! on N advisory keys (one per permit slot).

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::Type;

use super::fence;
use super::guard::PgLockGuard;
use super::manager::{PgLockMgr, PgLockMgrBuilder};
use super::session::{unreadable, with_op, Session};
use super::sql;
use crate::error::{LockError, LockId, Operation};
use crate::wait::Policy;
use crate::Status;

/// The most permits a PostgreSQL semaphore may have.
const MAX_PERMITS: u32 = 1024;
/// How long a waiter waits on the server for one slot before it looks at
/// every slot again: a permit given back in another slot is noticed
/// within this, one in the slot waited for at once.
const ROUND: Duration = Duration::from_secs(1);

/// A counting semaphore on PostgreSQL: at most `permits` holders of a
/// [`PgPermit`] at a time, across every process on every host that uses
/// the name on that server.
///
/// Each permit slot is an advisory lock on a key of its own, derived from
/// the name (`NAME/permit/I`); a holder whose session ends (killed, its
/// connection lost) gives its permit back at once, and its
/// [`lost`](PgPermit::lost) resolves. A waiter tries every slot, then
/// waits on the server for one slot (the server wakes it the moment that
/// slot is given back) for up to a second at a time, trying every slot
/// between waits: a permit given back in another slot is noticed within a
/// second. The number of permits is kept in the fence table (row
/// `NAME/permits`); users that disagree on it get [`LockError::Invalid`].
///
/// # Fairness
///
/// None is promised: a waiter that waits on the server for one slot moves
/// to the next after each round, and a permit given back goes to whoever
/// tries its slot first.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> Result<(), lockmgr::LockError> {
/// let exports = lockmgr::pg::PgSemaphore::new("host=db user=app", "exports", 3)?;
/// let permit = exports.acquire(true, std::time::Duration::from_secs(600)).await?;
/// println!("export slot {} (token {})", permit.slot(), permit.fencing_token());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgSemaphore {
    name: String,
    /// The semaphore, on the server its slots reach: what its errors name.
    id: LockId,
    slots: Vec<PgLockMgr>,
    max_attempts: u32,
}

/// One permit of a [`PgSemaphore`], held. Dropping it gives the permit
/// back (without waiting for the server; [`release`](PgPermit::release)
/// waits and reports errors).
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct PgPermit {
    guard: PgLockGuard,
    slot: u32,
}

impl PgSemaphore {
    /// A semaphore of `permits` permits named `name` on the server that
    /// `config` (a libpq connection string) reaches, with the default
    /// options of a [`PgLockMgr`]. Connects to nothing.
    ///
    /// # Errors
    ///
    /// [`LockError::Invalid`] for 0 or more than 1024 permits, or a
    /// connection string that does not parse.
    pub fn new(config: &str, name: impl Into<String>, permits: u32) -> Result<Self, LockError> {
        Self::from_builder(PgLockMgr::builder(config, name), permits)
    }

    /// A semaphore of `permits` permits named as `builder`'s lock, with its
    /// options: the label its sessions show as `application_name`, its
    /// timeouts, fence table and pooling, and its
    /// [`max_attempts`](PgLockMgrBuilder::max_attempts) as the semaphore's.
    /// Connects to nothing.
    ///
    /// # Errors
    ///
    /// As [`new`](PgSemaphore::new), and those of
    /// [`PgLockMgrBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f() -> Result<(), lockmgr::LockError> {
    /// use lockmgr::pg::{PgLockMgr, PgSemaphore};
    /// let options = PgLockMgr::builder("host=db user=app", "exports").label("export-worker-2");
    /// let exports = PgSemaphore::from_builder(options, 3)?;
    /// # Ok(()) }
    /// ```
    pub fn from_builder(builder: PgLockMgrBuilder, permits: u32) -> Result<Self, LockError> {
        let name = builder.lock_name().to_string();
        let max_attempts = builder.attempts();
        // A lock of the semaphore's own name is never taken; building it
        // checks the options and gives the semaphore its identity.
        let id = builder.clone().build()?.inner().id.clone();
        if permits == 0 || permits > MAX_PERMITS {
            return Err(LockError::Invalid {
                lock: id,
                reason: format!("a semaphore has 1 to {MAX_PERMITS} permits, not {permits}"),
            });
        }
        let slots = (0..permits)
            .map(|i| {
                builder
                    .clone()
                    .renamed(slot_name(&name, i))
                    .max_attempts(1)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PgSemaphore {
            name,
            id,
            slots,
            max_attempts,
        })
    }

    /// How many timed attempts [`acquire`](PgSemaphore::acquire) makes
    /// before it gives up with [`LockError::TimedOut`], as for
    /// [`PgLockMgr`]. Default 10; 0 is taken as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The number of permits.
    pub fn permits(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Takes a permit: at once if one is free, else (with `wait`) as soon
    /// as one is given back, within [`max_attempts`](PgSemaphore::max_attempts)
    /// attempts of `timeout` each, as [`PgLockMgr::acquire`] waits.
    ///
    /// # Errors
    ///
    /// [`LockError::WouldBlock`] (every permit taken, not waiting),
    /// [`LockError::TimedOut`], [`LockError::Invalid`] (the fence table
    /// keeps another number of permits for this name), and the errors of
    /// [`PgLockMgr::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves no permit taken and no wait on the
    /// server, as for [`PgLockMgr::acquire`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let uploads = lockmgr::pg::PgSemaphore::new("host=db user=app", "uploads", 4)?;
    /// let permit = uploads.acquire(true, std::time::Duration::from_secs(30)).await?;
    /// println!("uploading in slot {}", permit.slot());
    /// permit.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, wait: bool, timeout: Duration) -> Result<PgPermit, LockError> {
        self.check_permits().await?;
        let started = Instant::now();
        let policy = Policy::new(wait, timeout, self.max_attempts);
        let deadline = policy.deadline(started);
        let n = self.slots.len();
        // Waiters of different processes start at different slots.
        let mut waited_on = std::process::id() as usize % n;
        loop {
            for k in 0..n {
                let slot = (waited_on + k) % n;
                match self.slots[slot].try_acquire().await {
                    Ok(guard) => return Ok(PgPermit::new(guard, slot)),
                    Err(e) if e.is_contended() => {}
                    Err(e) => return Err(e),
                }
            }
            let id = self.id.clone();
            if !policy.waits {
                return Err(LockError::WouldBlock {
                    lock: id,
                    holder: None,
                });
            }
            let round = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(ROUND),
                None => ROUND,
            };
            if round.is_zero() {
                return Err(LockError::TimedOut {
                    lock: id,
                    attempts: policy.max_attempts,
                    waited: started.elapsed(),
                    holder: None,
                });
            }
            match self.slots[waited_on].acquire(true, round).await {
                Ok(guard) => return Ok(PgPermit::new(guard, waited_on)),
                Err(LockError::TimedOut { .. }) => waited_on = (waited_on + 1) % n,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes a free permit without waiting.
    ///
    /// # Errors
    ///
    /// As [`acquire`](PgSemaphore::acquire) with `wait == false`.
    ///
    /// # Cancel safety
    ///
    /// As [`acquire`](PgSemaphore::acquire).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let uploads = lockmgr::pg::PgSemaphore::new("host=db user=app", "uploads", 4)?;
    /// match uploads.try_acquire().await {
    ///     Ok(permit) => println!("slot {}", permit.slot()),
    ///     Err(e) if e.is_contended() => println!("all four busy; try later"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_acquire(&self) -> Result<PgPermit, LockError> {
        self.acquire(false, Duration::ZERO).await
    }

    /// Makes sure every user of the name agrees on the number of permits:
    /// the first one records it in the fence table.
    async fn check_permits(&self) -> Result<(), LockError> {
        let first = &self.slots[0];
        let session = first.reads(None).await?;
        let inner = first.inner();
        let table = fence::quoted(&inner.fence);
        let key = format!("{}{}", self.name, super::manager::COUNT_ROW);
        let permits = i64::from(self.permits());
        let read = |e| with_op(e, Operation::Fence);
        session
            .typed(
                &format!(
                    "INSERT INTO {table} (name, token) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
                ),
                &[(&key, Type::TEXT), (&permits, Type::INT8)],
                first.request(),
                &self.id,
            )
            .await
            .map_err(read)?;
        let recorded = recorded_count(first, &session, &self.name, &self.id)
            .await
            .map_err(read)?;
        match recorded {
            Some(n) if n == permits => Ok(()),
            Some(n) => Err(LockError::Invalid {
                lock: self.id.clone(),
                reason: format!(
                    "the semaphore {} has {n} permits, and this one asks for {permits}: every \
                     user of a semaphore must give the same number",
                    self.name
                ),
            }),
            None => Err(LockError::Server {
                lock: self.id.clone(),
                op: Operation::Fence,
                source: "the permit count was not recorded".into(),
            }),
        }
    }
}

/// The name of a semaphore's permit slot `slot`: the lock taken for it.
pub(super) fn slot_name(semaphore: &str, slot: u32) -> String {
    format!("{semaphore}/permit/{slot}")
}

/// The count of permits the token table keeps for the semaphore named
/// `name` (its row `NAME/permits`), read on `session`.
async fn recorded_count(
    lock: &PgLockMgr,
    session: &Session,
    name: &str,
    id: &LockId,
) -> Result<Option<i64>, LockError> {
    let table = fence::quoted(&lock.inner().fence);
    let row = format!("{name}{}", super::manager::COUNT_ROW);
    let rows = session
        .typed(
            &format!("SELECT token::int8 FROM {table} WHERE name = $1"),
            &[(&row, Type::TEXT)],
            lock.request(),
            id,
        )
        .await?;
    Ok(rows.first().and_then(|r| r.try_get(0).ok()))
}

/// The status of the semaphore named `name`, read on `session`, if the
/// token table keeps a count of permits for that name: how many of its
/// slots are held now, by any session on the server.
pub(super) async fn status(
    lock: &PgLockMgr,
    session: &Session,
    name: &str,
) -> Result<Option<Status>, LockError> {
    let inner = lock.inner();
    let read = |e| with_op(e, Operation::Read);
    let recorded = match recorded_count(lock, session, name, &inner.id).await {
        // No token table (no semaphore has been used with it), or one this
        // role may not read: no semaphore it can tell of.
        Err(e) if unreadable(&e) => return Ok(None),
        counted => counted.map_err(read)?,
    };
    let Some(recorded) = recorded else {
        return Ok(None);
    };
    // A count this crate never writes (another program's row): no
    // semaphore to speak of, rather than a thousand slots read for it.
    let Some(permits) = u32::try_from(recorded)
        .ok()
        .filter(|n| (1..=MAX_PERMITS).contains(n))
    else {
        return Ok(None);
    };
    let keys: Vec<i64> = (0..permits)
        .map(|slot| super::advisory_key(&slot_name(name, slot)))
        .collect();
    let rows = session
        .typed(
            sql::held_among(),
            &[(&keys, Type::INT8_ARRAY)],
            lock.request(),
            &inner.id,
        )
        .await
        .map_err(read)?;
    let taken: i64 = rows.first().and_then(|r| r.try_get(0).ok()).unwrap_or(0);
    Ok(Some(Status::Semaphore {
        permits,
        taken: u32::try_from(taken).unwrap_or(permits).min(permits),
    }))
}

impl PgPermit {
    fn new(guard: PgLockGuard, slot: usize) -> PgPermit {
        PgPermit {
            guard,
            slot: slot as u32,
        }
    }

    /// Which permit this is: below the semaphore's permits, held by no one
    /// else meanwhile.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// This holding's fencing token, for its slot: greater than every
    /// earlier holding of the same slot's.
    pub fn fencing_token(&self) -> u64 {
        self.guard.fencing_token()
    }

    /// Resolves when the permit's session ends while it is held: the
    /// permit is then no longer held (see [`PgLockGuard::lost`]).
    ///
    /// # Errors
    ///
    /// None: it returns once the permit is lost, and never if it is not.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn upload() {}
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let uploads = lockmgr::pg::PgSemaphore::new("host=db user=app", "uploads", 4)?;
    /// let permit = uploads.acquire(true, std::time::Duration::from_secs(30)).await?;
    /// tokio::select! {
    ///     () = upload() => permit.release().await?,
    ///     () = permit.lost() => eprintln!("permit lost; upload stopped"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        self.guard.lost().await
    }

    /// Gives the permit back and waits for the server to confirm.
    ///
    /// # Errors
    ///
    /// As [`PgLockGuard::release`].
    ///
    /// # Cancel safety
    ///
    /// As [`PgLockGuard::release`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), lockmgr::LockError> {
    /// let uploads = lockmgr::pg::PgSemaphore::new("host=db user=app", "uploads", 4)?;
    /// let permit = uploads.acquire(true, std::time::Duration::from_secs(30)).await?;
    /// permit.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<(), LockError> {
        self.guard.release().await
    }
}

impl fmt::Debug for PgSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSemaphore")
            .field("name", &self.name)
            .field("permits", &self.permits())
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl fmt::Debug for PgPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgPermit")
            .field("slot", &self.slot)
            .field("fencing_token", &self.fencing_token())
            .finish()
    }
}
