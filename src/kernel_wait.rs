//! The kernel's own wait for a lock, made on a helper thread for an async
//! waiter.
//!
//! The head of a process's line for a file hands a duplicate of its
//! descriptor (the same open file description) to a helper thread, which
//! blocks in `F_OFD_SETLKW` (or a blocking `flock`). The kernel wakes it the
//! moment the lock can be had, whatever released it: a close, an unlock
//! that closes nothing, a holder killed, any family that conflicts; and it
//! grants the lock to the open file description in the same step, so there
//! is no race to lose after the wake-up. The thread then tells the waiter,
//! which *claims* the grant. Waiting needs no timer and no poll: a thread
//! asleep in the kernel (and the waiter's watch, which wakes it only when
//! the file is closed or changed).
//!
//! A settled wait also keeps its inotify watch, and on an event of the file
//! *tries* for the lock itself ([`KernelWait::try_now`]), on the same open
//! file description: a holder that unlocks and then closes (as this crate
//! and most programs do) is then followed by the waiter's own runtime
//! thread, woken by the close, rather than by the helper and then, in
//! series, the runtime. Both ways end in the same lock, held by the same
//! open file description; the helper's call, woken by the unlock, retries
//! and returns with the lock the waiter took (a request never conflicts
//! with its own open file description's lock), and the helper leaves it
//! alone (see [`Phase::Won`]). A holder that closes without unlocking (a
//! process that dies) is still followed by the helper: the kernel sends the
//! close event before it drops the lock, so the event's try loses.
//!
//! A blocked system call cannot be called off. So:
//! - a waiter that gives up (its budget spent, its future dropped)
//!   *abandons* its wait: when the kernel grants it, the helper gives the
//!   lock back at once (an unlock and a close), having held it for an
//!   instant nobody could use;
//! - until then, the next wait for the same file, family and mode in this
//!   process *revives* the abandoned one rather than starting another: at
//!   most one blocked helper per file, family and mode, however many waits
//!   give up in turn (a wait won by a try is never revived: see
//!   [`KernelWait::releasing`]);
//! - a grant that is not claimed within [`CLAIM_WITHIN`] (the waiter's
//!   future is kept but no longer polled, its runtime stalled) is given
//!   back, so a stalled waiter never sits on a free lock; its line's next
//!   task takes its place meanwhile (see `queue`), and the helper waits for
//!   its waiter to run again before it waits in the kernel again (so that
//!   it does not take the free lock straight back).
//!
//! Threads are pooled: a few idle ones are kept for a while, so that a
//! stream of handoffs does not pay a thread start each.
//!
//! After `fork`, the child starts with none of this: no helper runs there,
//! so the pool and the abandoned waits it inherited are forgotten (see
//! [`Forkable`](crate::forkable::Forkable)).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::forkable::Forkable;
use crate::os::{self, FileId};
use crate::queue::Promise;
use crate::vocab::{LockKind, LockMode};

/// How long a grant waits for its waiter to claim it before it is given
/// back: a healthy runtime gets round to a woken task far sooner.
pub(crate) const CLAIM_WITHIN: Duration = Duration::from_millis(250);

/// A blocked lock request on a helper thread. Dropping it abandons the
/// request (see the module docs), unless the lock was claimed or taken by
/// a try ([`KernelWait::try_now`]); a lock so taken and never handed to a
/// holder is given back by the helper.
pub(crate) struct KernelWait {
    job: Arc<Job>,
    revived: bool,
}

struct Job {
    /// The helper's own duplicate of the waiter's descriptor: the same open
    /// file description, kept open for as long as the helper may use it
    /// (the waiter's own may be closed meanwhile), and closed when the
    /// grant is claimed, or the lock taken by the waiter's try: the
    /// holder's release must be the last close of the open file
    /// description, or the waiters that watch for the close would not hear
    /// of it. (A helper still in its call when that holder lets go keeps a
    /// copy open: the release then sends the close event itself.)
    fd: Mutex<Option<OwnedFd>>,
    file: FileId,
    kind: LockKind,
    mode: LockMode,
    state: Mutex<State>,
    /// Wakes the helper when a grant is claimed or abandoned, or a stalled
    /// waiter runs again.
    decided: Condvar,
    /// Wakes the waiter when the kernel granted the lock or the wait failed.
    done: Notify,
}

struct State {
    phase: Phase,
    /// The promise of the line's head, kept for it while it waits.
    promise: Option<Promise>,
}

enum Phase {
    /// The helper is (or is about to be) blocked in the kernel's wait.
    Waiting,
    /// The kernel granted the lock, at this instant; not yet claimed.
    Granted(Instant),
    /// The waiter took the lock with a try of its own on the same open
    /// file description while the helper was in (or on its way into) the
    /// kernel's wait. The helper's call, once woken, returns with the lock
    /// (the owner's own), which the helper must leave alone: the waiter
    /// holds it. (A helper that had not made its copy yet makes no call.)
    Won,
    /// As [`Phase::Won`], and the waiter has since let the lock go: what
    /// the helper's call returns with is a lock nobody holds (granted
    /// after the waiter's unlock), to be given back.
    WonThenReleased,
    /// The waiter took the lock; the helper is done with it.
    Claimed,
    /// A grant went unclaimed and was given back: the helper waits for its
    /// waiter to run again (and ask anew) before it waits in the kernel.
    Stalled,
    /// The wait failed; the error is the lock call's.
    Failed(Option<io::Error>),
    /// Nobody wants the lock any more: give it back as soon as it is had
    /// (unless a new wait revives this one first).
    Abandoned,
    /// The helper is gone: nothing can be revived.
    Finished,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave the state torn by a panic: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits given up on whose helper is still blocked, by file, family and
/// mode.
type Abandoned = HashMap<(FileId, LockKind, LockMode), Arc<Job>>;

/// The waits given up on, for a new wait to revive.
fn abandoned() -> MutexGuard<'static, Abandoned> {
    static ABANDONED: Forkable<Abandoned> = Forkable::new();
    ABANDONED.lock()
}

impl KernelWait {
    /// Starts waiting, on a helper thread, for `mode` of the `kind` lock on
    /// the file `file`, open at `fd`. A wait for the same file, family and
    /// mode that was given up on and whose helper is still blocked is
    /// revived instead:
    /// its descriptor is then the one the lock will be granted to, and
    /// [`KernelWait::fd`] lends it (the caller's own is not needed). Fails
    /// when no descriptor (for the helper's duplicate) or no thread can be
    /// had. `promise` is kept for the line's head while the wait lasts (see
    /// `queue`).
    pub(crate) fn start(
        fd: BorrowedFd<'_>,
        file: FileId,
        kind: LockKind,
        mode: LockMode,
        promise: Option<Promise>,
    ) -> io::Result<KernelWait> {
        if let Some(wait) = KernelWait::revive(file, kind, mode) {
            wait.keep(promise);
            return Ok(wait);
        }
        let job = Arc::new(Job {
            fd: Mutex::new(Some(fd.try_clone_to_owned()?)),
            file,
            kind,
            mode,
            state: Mutex::new(State {
                phase: Phase::Waiting,
                promise: None,
            }),
            decided: Condvar::new(),
            done: Notify::new(),
        });
        pool().submit(job.clone())?;
        let wait = KernelWait {
            job,
            revived: false,
        };
        wait.keep(promise);
        Ok(wait)
    }

    /// A wait given up on for this file, family and mode, taken back while
    /// its helper is still blocked.
    fn revive(file: FileId, kind: LockKind, mode: LockMode) -> Option<KernelWait> {
        let job = abandoned().remove(&(file, kind, mode))?;
        let mut state = lock(&job.state);
        if !matches!(state.phase, Phase::Abandoned) {
            return None;
        }
        state.phase = Phase::Waiting;
        drop(state);
        tracing::debug!("lockmgr: taking over a wait in the kernel that was given up on");
        Some(KernelWait { job, revived: true })
    }

    /// A duplicate of the descriptor the lock is granted to. Once the wait
    /// is claimed, the lock is held through it, and through any duplicate
    /// of it.
    pub(crate) fn dup_fd(&self) -> io::Result<OwnedFd> {
        self.job.dup_fd()
    }

    /// Whether this wait was taken over from one given up on (its
    /// descriptor is then not the caller's).
    pub(crate) fn is_revived(&self) -> bool {
        self.revived
    }

    /// Keeps `promise` for its head from now on: a wait is alive for as long
    /// as the kernel has not granted it (its helper will say when), and a
    /// grant is due to be claimed within [`CLAIM_WITHIN`].
    fn keep(&self, promise: Option<Promise>) {
        let mut state = lock(&self.job.state);
        if let Some(p) = &promise {
            match state.phase {
                Phase::Granted(at) => p.keep_until(at + CLAIM_WITHIN),
                _ => p.keep_forever(),
            }
        }
        state.promise = promise;
    }

    /// Resolves once the kernel has granted the lock, which is then claimed
    /// for the caller (the wait's open file description holds it), or the
    /// wait failed.
    ///
    /// Cancel safe: a grant is only claimed in the poll that returns it.
    pub(crate) async fn granted(&self) -> io::Result<()> {
        loop {
            let notified = self.job.done.notified();
            tokio::pin!(notified);
            // Registered before the look, so a grant between the two is not
            // missed.
            notified.as_mut().enable();
            if let Some(granted) = self.try_claim() {
                return granted;
            }
            notified.await;
        }
    }

    /// Claims a grant that is already there, without waiting: `None` while
    /// the kernel has not granted the lock.
    pub(crate) fn try_claim(&self) -> Option<io::Result<()>> {
        let mut state = lock(&self.job.state);
        match &mut state.phase {
            Phase::Granted(_) => {
                // The helper is not woken for this: the wake-up, measured,
                // cost the claiming task about 30 us of a 55 us handoff (the
                // woken helper ran first). It sees the claim when the pool
                // next needs a thread, or at CLAIM_WITHIN; it no longer
                // needs its descriptor, which goes now.
                state.phase = Phase::Claimed;
                drop(lock(&self.job.fd).take());
                Some(Ok(()))
            }
            Phase::Failed(e) => Some(Err(e
                .take()
                .unwrap_or_else(|| io::Error::other("the lock wait failed")))),
            Phase::Claimed => Some(Ok(())),
            // The waiter runs again after a grant it missed: wait again.
            Phase::Stalled => {
                state.phase = Phase::Waiting;
                self.job.decided.notify_all();
                None
            }
            Phase::Won => Some(Ok(())),
            Phase::Waiting | Phase::Abandoned | Phase::WonThenReleased | Phase::Finished => None,
        }
    }

    /// Tries for the lock now, on the wait's open file description, without
    /// waiting for the helper (an event said it may be free): `true` when
    /// this try took the lock, which is then held through that open file
    /// description; `false` while someone else holds it, when the try
    /// failed (the helper's wait goes on), and whenever the helper is not
    /// waiting (a grant there is claimed through [`KernelWait::granted`]).
    ///
    /// The try is made under the wait's mutex and only while the helper is
    /// waiting: a helper that gives a grant back does so under the same
    /// mutex, so a try can never succeed on a grant that is about to be
    /// given back (it would succeed at once, on the same owner's lock).
    pub(crate) fn try_now(&self) -> bool {
        let mut state = lock(&self.job.state);
        if !matches!(state.phase, Phase::Waiting) {
            return false;
        }
        let mut fd = lock(&self.job.fd);
        let Some(own) = fd.as_ref() else {
            return false;
        };
        let won = os::try_lock(own, self.job.kind, self.job.mode);
        match won {
            Ok(true) => {
                state.phase = Phase::Won;
                // The waiter's descriptor holds the lock from now; the
                // helper's copy in its call goes when the call returns.
                // Not revivable once given up (see `releasing`).
                drop(fd.take());
                true
            }
            Ok(false) => false,
            // The helper's wait goes on, and will say whether the lock can
            // be had: a try beside it is only a shortcut.
            Err(e) => {
                tracing::debug!(error = %e, "lockmgr: a try beside a wait in the kernel failed");
                false
            }
        }
    }

    /// Whether the lock was taken by [`KernelWait::try_now`] and the helper
    /// has not returned yet: the holder must then say when it lets the lock
    /// go ([`KernelWait::releasing`]).
    pub(crate) fn helper_pending(&self) -> bool {
        matches!(lock(&self.job.state).phase, Phase::Won)
    }

    /// Says that the lock taken by [`KernelWait::try_now`] is being let go
    /// (the holder's critical section is over): whatever the helper's call
    /// returns with from now on is given back. Returns whether the helper
    /// has yet to return: its copy of the descriptor is then still open, so
    /// the holder's close will not be the last close of the open file
    /// description, and the waiters that watch for a close must be told
    /// otherwise.
    ///
    /// Such a wait is not revived by the next wait for the file: what its
    /// call returns with may be the lock this holder held, and let go.
    pub(crate) fn releasing(&self) -> bool {
        let mut state = lock(&self.job.state);
        let pending = matches!(state.phase, Phase::Won);
        if pending {
            state.phase = Phase::WonThenReleased;
        }
        pending
    }
}

impl std::fmt::Debug for KernelWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelWait")
            .field("file", &self.job.file)
            .field("kind", &self.job.kind)
            .field("mode", &self.job.mode)
            .finish_non_exhaustive()
    }
}

impl Drop for KernelWait {
    fn drop(&mut self) {
        // The map first (as `revive` takes them): the wait is put there in
        // the same step as it is abandoned, so its helper, which removes it
        // once done, cannot be done before it is there (it would stay, its
        // descriptor open, until the next wait for that file).
        let mut map = abandoned();
        let mut state = lock(&self.job.state);
        match state.phase {
            Phase::Waiting => {
                state.phase = Phase::Abandoned;
                state.promise = None;
                drop(state);
                // Revivable until its helper is done with it.
                let key = (self.job.file, self.job.kind, self.job.mode);
                map.insert(key, self.job.clone());
            }
            Phase::Granted(_) | Phase::Stalled => {
                state.phase = Phase::Abandoned;
                state.promise = None;
                self.job.decided.notify_all();
            }
            // Taken by a try and not handed to a holder (the try's win was
            // not kept): nobody will hold it.
            Phase::Won => state.phase = Phase::WonThenReleased,
            Phase::Claimed
            | Phase::Failed(_)
            | Phase::Abandoned
            | Phase::WonThenReleased
            | Phase::Finished => {}
        }
    }
}

impl Job {
    fn dup_fd(&self) -> io::Result<OwnedFd> {
        match lock(&self.fd).as_ref() {
            Some(fd) => fd.try_clone(),
            None => Err(io::Error::other("the wait was claimed")),
        }
    }

    /// The helper's side: wait in the kernel, hand the grant over (or give
    /// it back), until the waiter claims it, gives up, or the wait fails.
    fn run(self: &Arc<Self>) {
        self.serve();
        // A failure stays for its waiter to read: overwritten, the waiter
        // would wait on for a grant that cannot come (and no longer try on
        // events, which only a waiting helper allows).
        let mut state = lock(&self.state);
        if !matches!(state.phase, Phase::Failed(_)) {
            state.phase = Phase::Finished;
        }
        drop(state);
        let mut map = abandoned();
        if map
            .get(&(self.file, self.kind, self.mode))
            .is_some_and(|j| Arc::ptr_eq(j, self))
        {
            map.remove(&(self.file, self.kind, self.mode));
        }
    }

    fn serve(self: &Arc<Self>) {
        loop {
            // A duplicate of its own for the blocking call, so that the
            // descriptor's lock is never held across it; kept until the
            // outcome is settled, to give back through. (None to be had once
            // the waiter took the lock with a try: nothing to wait for.)
            let own = self.dup_fd();
            let waited = match &own {
                Ok(fd) => os::lock_blocking(fd, self.kind, self.mode),
                Err(_) => Ok(()),
            };
            let mut state = lock(&self.state);
            match state.phase {
                // The waiter's try took the lock first: it holds it through
                // the same open file description, which this call's grant
                // (the owner's own lock) changed nothing of.
                Phase::Won => {
                    state.phase = Phase::Finished;
                    return;
                }
                // ... and has let it go since: this grant came after the
                // waiter's unlock, or is the same lock being let go. Given
                // back before this copy closes, so that the close event
                // comes after the unlock.
                Phase::WonThenReleased => {
                    state.phase = Phase::Finished;
                    drop(state);
                    if let (Ok(fd), Ok(())) = (&own, &waited) {
                        if let Err(e) = os::unlock(fd, self.kind) {
                            tracing::warn!(error = %e, "lockmgr: cannot give a granted lock back; it goes with its descriptor");
                        }
                    }
                    return;
                }
                _ => {}
            }
            let waited = own.and(waited);
            if matches!(state.phase, Phase::Abandoned) {
                // Done with, before the mutex goes: a new wait must not
                // revive a helper that is about to give its grant back and
                // leave (it would wait for a grant that never comes).
                state.phase = Phase::Finished;
                drop(state);
                if waited.is_ok() {
                    self.give_back("nobody waits for it any more");
                }
                return;
            }
            let now = Instant::now();
            if let Err(e) = waited {
                state.phase = Phase::Failed(Some(e));
                if let Some(p) = &state.promise {
                    // The head will be told now; it runs by then if alive.
                    p.keep_until(now + CLAIM_WITHIN);
                }
                drop(state);
                self.done.notify_one();
                return;
            }
            state.phase = Phase::Granted(now);
            if let Some(p) = &state.promise {
                p.keep_until(now + CLAIM_WITHIN);
            }
            // The waiter is told with the mutex free: woken, it takes it at
            // once to claim the grant.
            drop(state);
            self.done.notify_one();
            let deadline = now + CLAIM_WITHIN;
            // Until then this helper lingers: the pool wakes it for a new
            // job once its grant is claimed.
            pool().linger(self);
            let mut state = lock(&self.state);
            let outcome = loop {
                match state.phase {
                    Phase::Claimed => break Some(None),
                    Phase::Abandoned => break Some(Some("its waiter gave up")),
                    _ => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    break None;
                }
                state = self
                    .decided
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            };
            if outcome.is_none() {
                // Not claimed in time: the waiter is not running. Give the
                // lock back for others (its line's next task takes its
                // place), and wait in the kernel again only once the waiter
                // asks again. Given back under the mutex: a waiter that runs
                // again meanwhile must not try (see `try_now`) on a grant
                // not yet given back.
                state.phase = Phase::Stalled;
                self.give_back("its waiter did not claim it in time");
            }
            drop(state);
            pool().unlinger(self);
            if let Some(gave_up) = outcome {
                if let Some(why) = gave_up {
                    self.give_back(why);
                }
                return;
            }
            let mut state = lock(&self.state);
            loop {
                match state.phase {
                    Phase::Stalled => {}
                    Phase::Abandoned => return,
                    _ => break,
                }
                state = self.decided.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(p) = &state.promise {
                p.keep_forever();
            }
        }
    }

    fn give_back(&self, why: &str) {
        tracing::debug!(why, "lockmgr: giving a granted lock back");
        let fd = lock(&self.fd);
        let Some(fd) = fd.as_ref() else {
            return;
        };
        if let Err(e) = os::unlock(fd, self.kind) {
            tracing::warn!(error = %e, "lockmgr: cannot give a granted lock back; it goes with its descriptor");
        }
    }
}

/// The helper threads: a few idle ones are kept for a while.
struct Pool {
    state: Forkable<PoolState>,
    ready: Condvar,
}

#[derive(Default)]
struct PoolState {
    jobs: VecDeque<Arc<Job>>,
    /// Threads waiting for a job.
    idle: usize,
    /// Jobs whose helper waits for a grant to be claimed (which does not
    /// wake it): once claimed, such a helper is woken to take a new job
    /// rather than a thread being started.
    lingering: Vec<Arc<Job>>,
}

/// Idle helpers kept at most, and for how long.
const MAX_IDLE: usize = 4;
const IDLE_FOR: Duration = Duration::from_secs(30);

fn pool() -> &'static Pool {
    // Made at compile time: a lazy one could be mid-initialisation in
    // another thread at a fork, and the child would wait for it for ever.
    static POOL: Pool = Pool {
        state: Forkable::new(),
        ready: Condvar::new(),
    };
    &POOL
}

impl Pool {
    /// Runs `job` on an idle helper, or on a new one: every queued job has
    /// a thread of its own, since a job may block for as long as the lock
    /// is held.
    fn submit(&'static self, job: Arc<Job>) -> io::Result<()> {
        let mut state = self.state.lock();
        state.jobs.push_back(job.clone());
        if state.jobs.len() <= state.idle {
            self.ready.notify_one();
            return Ok(());
        }
        // A helper whose grant was claimed is free: wake it for this job.
        if let Some(at) = state
            .lingering
            .iter()
            .position(|j| matches!(lock(&j.state).phase, Phase::Claimed))
        {
            let done = state.lingering.swap_remove(at);
            done.decided.notify_all();
            return Ok(());
        }
        // Started under the pool's lock, so that no helper can take the job
        // meanwhile: on failure it is still there to take back.
        let started = std::thread::Builder::new()
            .name("lockmgr-wait".into())
            .stack_size(256 * 1024)
            .spawn(move || self.serve());
        if let Err(e) = started {
            state.jobs.retain(|j| !Arc::ptr_eq(j, &job));
            return Err(e);
        }
        Ok(())
    }

    fn linger(&self, job: &Arc<Job>) {
        self.state.lock().lingering.push(job.clone());
    }

    fn unlinger(&self, job: &Arc<Job>) {
        self.state.lock().lingering.retain(|j| !Arc::ptr_eq(j, job));
    }

    fn serve(&'static self) {
        loop {
            let job = {
                let mut guard = self.state.lock();
                loop {
                    if let Some(job) = guard.jobs.pop_front() {
                        break job;
                    }
                    if guard.idle >= MAX_IDLE {
                        return;
                    }
                    guard.idle += 1;
                    let (next, waited) = self
                        .ready
                        .wait_timeout(guard, IDLE_FOR)
                        .unwrap_or_else(|e| e.into_inner());
                    guard = next;
                    guard.idle -= 1;
                    if waited.timed_out() && guard.jobs.is_empty() {
                        return;
                    }
                }
            };
            job.run();
        }
    }
}
