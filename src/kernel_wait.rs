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
//! which *claims* the grant. Waiting costs no CPU at all: no timer, no
//! poll; just a thread asleep in the kernel.
//!
//! A blocked system call cannot be called off. So:
//! - a waiter that gives up (its budget spent, its future dropped) leaves
//!   the wait with its line ([`KernelWait::park`]), for the next task in
//!   line to take over: one blocked thread per file, however many tasks
//!   give up in turn;
//! - when nobody is left to take it, the wait is *abandoned*: when the
//!   kernel grants it, the thread gives the lock back at once (an unlock and
//!   a close), having held it for an instant nobody could use;
//! - a grant that is not claimed within [`CLAIM_WITHIN`] (the waiter's
//!   future is kept but no longer polled, its runtime stalled) is given
//!   back, so a stalled waiter never sits on a free lock; its line's next
//!   task takes its place meanwhile (see `queue`), and the helper waits for
//!   its waiter to run again before it waits in the kernel again (so that
//!   it does not take the free lock straight back).
//!
//! Threads are pooled: a few idle ones are kept for a while, so that a
//! stream of handoffs does not pay a thread start each.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::os;
use crate::queue::Promise;
use crate::vocab::{LockKind, LockMode};

/// How long a grant waits for its waiter to claim it before it is given
/// back: a healthy runtime gets round to a woken task far sooner.
pub(crate) const CLAIM_WITHIN: Duration = Duration::from_millis(250);

/// A blocked lock request on a helper thread. Dropping it abandons the
/// request (see the module docs), unless the lock was claimed.
pub(crate) struct KernelWait {
    job: Arc<Job>,
}

struct Job {
    /// The helper's own duplicate of the waiter's descriptor: the same open
    /// file description, kept open for as long as the helper may use it
    /// (the waiter's own may be closed meanwhile).
    fd: OwnedFd,
    kind: LockKind,
    mode: LockMode,
    state: Mutex<State>,
    /// Wakes the helper when a grant is claimed or abandoned.
    decided: Condvar,
    /// Wakes the waiter when the kernel granted the lock or the wait failed.
    done: Notify,
    /// The promise of the line's head, kept for it while it waits.
    promise: Mutex<Option<Promise>>,
}

enum State {
    /// The helper is (or is about to be) blocked in the kernel's wait.
    Waiting,
    /// The kernel granted the lock, at this instant; not yet claimed.
    Granted(Instant),
    /// The waiter took the lock; the helper is done with it.
    Claimed,
    /// A grant went unclaimed and was given back: the helper waits for its
    /// waiter to run again (and ask anew) before it waits in the kernel.
    Stalled,
    /// The wait failed; the error is the lock call's.
    Failed(Option<io::Error>),
    /// Nobody wants the lock any more: give it back as soon as it is had.
    Abandoned,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here can leave the state torn by a panic: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KernelWait {
    /// Starts waiting, on a helper thread, for `mode` of the `kind` lock on
    /// the open file description of `fd` (a grant is a grant to it).
    /// `promise` is kept for the line's head while the wait lasts (see
    /// `queue`). Fails when no descriptor (for the helper's duplicate) or
    /// no thread can be had.
    pub(crate) fn start(
        fd: BorrowedFd<'_>,
        kind: LockKind,
        mode: LockMode,
        promise: Option<Promise>,
    ) -> io::Result<KernelWait> {
        let job = Arc::new(Job {
            fd: fd.try_clone_to_owned()?,
            kind,
            mode,
            state: Mutex::new(State::Waiting),
            decided: Condvar::new(),
            done: Notify::new(),
            promise: Mutex::new(None),
        });
        pool().submit(job.clone())?;
        let wait = KernelWait { job };
        wait.keep(promise);
        Ok(wait)
    }

    /// The mode this wait is for.
    pub(crate) fn mode(&self) -> LockMode {
        self.job.mode
    }

    /// Keeps `promise` for its head from now on: a wait is alive for as long
    /// as the kernel has not granted it (its helper will say when), and a
    /// grant is due to be claimed within [`CLAIM_WITHIN`].
    pub(crate) fn keep(&self, promise: Option<Promise>) {
        if let Some(p) = &promise {
            match *lock(&self.job.state) {
                State::Granted(at) => p.keep_until(at + CLAIM_WITHIN),
                _ => p.keep_forever(),
            }
        }
        *lock(&self.job.promise) = promise;
    }

    /// Resolves once the kernel has granted the lock, which is then claimed
    /// for the caller (its open file description holds it), or the wait
    /// failed.
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
}

impl KernelWait {
    /// Claims a grant that is already there, without waiting: `None` while
    /// the kernel has not granted the lock.
    pub(crate) fn try_claim(&self) -> Option<io::Result<()>> {
        let mut state = lock(&self.job.state);
        match &mut *state {
            State::Granted(_) => {
                *state = State::Claimed;
                self.job.decided.notify_all();
                Some(Ok(()))
            }
            State::Failed(e) => Some(Err(e
                .take()
                .unwrap_or_else(|| io::Error::other("the lock wait failed")))),
            State::Claimed => Some(Ok(())),
            // The waiter runs again after a grant it missed: wait again.
            State::Stalled => {
                *state = State::Waiting;
                self.job.decided.notify_all();
                None
            }
            State::Waiting | State::Abandoned => None,
        }
    }

    /// Whether the wait is still under way (not claimed, failed or
    /// abandoned): worth handing on to the next in line.
    pub(crate) fn is_pending(&self) -> bool {
        matches!(
            *lock(&self.job.state),
            State::Waiting | State::Granted(_) | State::Stalled
        )
    }
}

impl Drop for KernelWait {
    fn drop(&mut self) {
        let mut state = lock(&self.job.state);
        if matches!(*state, State::Waiting | State::Granted(_) | State::Stalled) {
            *state = State::Abandoned;
            self.job.decided.notify_all();
        }
    }
}

impl Job {
    /// The helper's side: wait in the kernel, hand the grant over (or give
    /// it back), until the waiter claims it, gives up, or the wait fails.
    fn run(&self) {
        loop {
            let waited = os::lock_blocking(&self.fd, self.kind, self.mode);
            let mut state = lock(&self.state);
            if matches!(*state, State::Abandoned) {
                drop(state);
                if waited.is_ok() {
                    self.give_back("nobody waits for it any more");
                }
                return;
            }
            if let Err(e) = waited {
                *state = State::Failed(Some(e));
                drop(state);
                self.done.notify_one();
                return;
            }
            let at = Instant::now();
            *state = State::Granted(at);
            if let Some(p) = &*lock(&self.promise) {
                p.keep_until(at + CLAIM_WITHIN);
            }
            self.done.notify_one();
            let deadline = at + CLAIM_WITHIN;
            loop {
                match *state {
                    State::Claimed => return,
                    State::Abandoned => {
                        drop(state);
                        self.give_back("its waiter gave up");
                        return;
                    }
                    _ => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                state = self
                    .decided
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            // Not claimed in time: the waiter is not running. Give the lock
            // back for others (its line's next task takes its place), and
            // wait in the kernel again only once the waiter asks again.
            *state = State::Stalled;
            drop(state);
            self.give_back("its waiter did not claim it in time");
            let mut state = lock(&self.state);
            loop {
                match *state {
                    State::Stalled => {}
                    State::Abandoned => return,
                    _ => break,
                }
                state = self.decided.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if let Some(p) = &*lock(&self.promise) {
                p.keep_forever();
            }
        }
    }

    fn give_back(&self, why: &str) {
        tracing::debug!(why, "lockmgr: giving a granted lock back");
        if let Err(e) = os::unlock(&self.fd, self.kind) {
            tracing::warn!(error = %e, "lockmgr: cannot give a granted lock back; it goes with its descriptor");
        }
    }
}

/// The helper threads: a few idle ones are kept for a while.
struct Pool {
    state: Mutex<PoolState>,
    ready: Condvar,
}

struct PoolState {
    jobs: VecDeque<Arc<Job>>,
    /// Threads waiting for a job.
    idle: usize,
}

/// Idle helpers kept at most, and for how long.
const MAX_IDLE: usize = 4;
const IDLE_FOR: Duration = Duration::from_secs(30);

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(PoolState {
            jobs: VecDeque::new(),
            idle: 0,
        }),
        ready: Condvar::new(),
    })
}

impl Pool {
    /// Runs `job` on an idle helper, or on a new one: every queued job has
    /// a thread of its own, since a job may block for as long as the lock
    /// is held.
    fn submit(&'static self, job: Arc<Job>) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.jobs.push_back(job.clone());
        if state.jobs.len() <= state.idle {
            self.ready.notify_one();
            return Ok(());
        }
        drop(state);
        let started = std::thread::Builder::new()
            .name("lockmgr-wait".into())
            .stack_size(256 * 1024)
            .spawn(move || self.serve());
        if let Err(e) = started {
            let mut state = lock(&self.state);
            state.jobs.retain(|j| !Arc::ptr_eq(j, &job));
            return Err(e);
        }
        Ok(())
    }

    fn serve(&'static self) {
        loop {
            let job = {
                let mut state = lock(&self.state);
                loop {
                    if let Some(job) = state.jobs.pop_front() {
                        break job;
                    }
                    if state.idle >= MAX_IDLE {
                        return;
                    }
                    state.idle += 1;
                    let (next, waited) = self
                        .ready
                        .wait_timeout(state, IDLE_FOR)
                        .unwrap_or_else(|e| e.into_inner());
                    state = next;
                    state.idle -= 1;
                    if waited.timed_out() && state.jobs.is_empty() {
                        return;
                    }
                }
            };
            job.run();
        }
    }
}
