//! The waiting policy shared by every backend, and the waiting loop of the
//! local ones.
//!
//! [`Policy`] is the one place that turns a caller's `(wait, timeout)` and a
//! builder's `max_attempts` into a budget (whether to wait at all, the
//! attempts, the overall deadline) and says, once, that a call waits: the
//! file locks and `lockmgr::pg` both use it, so they agree on what a zero
//! timeout, an overflowing one and zero attempts mean, and operators see one
//! `waiting for lock` event with the same fields whichever backend waits.
//!
//! [`wait`] is the loop of the file locks: try, sleep until something may
//! have changed, try again. It knows nothing of files or of
//! [`LockMgr`](crate::LockMgr): a [`Contender`] says how to try once, a
//! [`Signal`] says when to try again, and the contender's place in the
//! in-process line ([`Ticket`]) brings direct handoffs from holders of this
//! process. (PostgreSQL waits on the server, one query per attempt, so it
//! shares the policy but not this loop.)

use std::future::Future;
use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use std::sync::Arc;

use crate::clock::{follows_real_clock, sleep_here, until_here};
use crate::error::LockId;
use crate::holder::Holder;
use crate::kernel_wait::KernelWait;
use crate::os;
use crate::queue::{Promise, Ticket};
use crate::watcher::{Watch, Watcher};

/// The outcome of one try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Try {
    /// The lock is now held.
    Won,
    /// Someone else holds it.
    Held,
    /// Someone else holds it, and the contender now contends for a different
    /// object than before (the lock file was removed and recreated): the
    /// signal must be set up anew before the next try.
    Moved,
}

/// Why a try is made, for its log event: operators (and the tests) can see
/// what woke a waiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The call's first try, or the try right after setting up the signal.
    First,
    /// An inotify event on the lock file.
    Event,
    /// The kernel granted the lock to the waiter's descriptor.
    Kernel,
    /// A polling tick (no events to be had).
    Poll,
    /// The short retry series after a wake-up whose try lost.
    Retry,
    /// The periodic try that notices releases without a close.
    Recheck,
    /// The last try, when the budget ran out.
    Deadline,
}

impl Cause {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Cause::First => "first",
            Cause::Event => "event",
            Cause::Kernel => "kernel",
            Cause::Poll => "poll",
            Cause::Retry => "retry",
            Cause::Recheck => "recheck",
            Cause::Deadline => "deadline",
        }
    }
}

/// One party trying to take a lock.
pub(crate) trait Contender {
    /// The error a try can fail with.
    type Error;
    /// One non-blocking try. `attempt` is the 1-based attempt it belongs to
    /// and `cause` what prompted it (both for logging).
    fn try_once(&mut self, attempt: u32, cause: Cause) -> Result<Try, Self::Error>;
    /// Where to learn that the object now contended for may be free. Called
    /// before the try it is meant to cover. `promise` is the head's, to be
    /// kept while the signal waits (see `queue`).
    fn signal(&mut self, promise: Option<Promise>) -> Signal;
    /// The error for a failed wait in the kernel.
    fn fail(&self, e: std::io::Error) -> Self::Error;
    /// The signal a wait on events settles into once it has lasted
    /// [`SETTLE_AFTER`]: the kernel's own wait, where one can be had.
    /// `None` keeps the events and the periodic tries.
    fn settle(&mut self, _promise: Option<Promise>) -> Option<Signal> {
        None
    }
    /// The signal a settled wait goes back to when its kernel wait could
    /// not go on for want of resources (see [`Done::Unsettled`]).
    fn unsettle(&mut self, promise: Option<Promise>) -> Signal {
        self.signal(promise)
    }
}

/// The waiting budget of one call: whether it waits at all, and if so up to
/// `max_attempts` periods of `timeout` each.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// False for `wait == false` and for a zero timeout: one try, then
    /// `WouldBlock`.
    pub(crate) waits: bool,
    pub(crate) timeout: Duration,
    /// At least 1.
    pub(crate) max_attempts: u32,
}

impl Policy {
    /// The policy of a call `acquire(wait, timeout)` on a lock built with
    /// `max_attempts` (0 is taken as 1).
    pub(crate) fn new(wait: bool, timeout: Duration, max_attempts: u32) -> Policy {
        Policy {
            waits: wait && !timeout.is_zero(),
            timeout,
            max_attempts: max_attempts.max(1),
        }
    }

    /// When the whole budget of a wait begun at `started` runs out; `None`
    /// when that lies beyond what an [`Instant`] can hold (no deadline).
    pub(crate) fn deadline(&self, started: Instant) -> Option<Instant> {
        let total = self.timeout.checked_mul(self.max_attempts)?;
        started.checked_add(total)
    }

    /// The 1-based attempt that `elapsed` (since the call began) falls in,
    /// for logs.
    pub(crate) fn attempt_at(&self, elapsed: Duration) -> u32 {
        let n = elapsed.as_nanos() / self.timeout.as_nanos().max(1) + 1;
        u32::try_from(n).map_or(self.max_attempts, |n| n.min(self.max_attempts))
    }

    /// Says, once per call, that it waits for `lock` and who is in the way.
    pub(crate) fn announce(&self, lock: &LockId, holder: Option<&Holder>, note: &str) {
        match holder {
            Some(h) => tracing::info!(
                lock = %lock,
                holder = %h,
                "waiting for lock on {lock}{note}, held by {h}"
            ),
            None => tracing::info!(lock = %lock, "waiting for lock on {lock}{note}"),
        }
    }
}

/// How a wait ended without the lock.
#[derive(Debug)]
pub(crate) enum Failed<E> {
    /// The contender's try failed outright.
    Error(E),
    /// Every attempt expired.
    TimedOut { attempts: u32, waited: Duration },
}

/// After a wake-up whose try still failed, retry on these delays as well as on
/// the next event: the kernel sends the close event *before* it drops the
/// lock (`__fput` runs `fsnotify_close` before `locks_remove_file`), so the
/// try right after the event can lose by microseconds. The series is short:
/// once it is spent the waiter is back to events and [`RECHECK`].
const RETRY_AFTER_WAKE: [Duration; 5] = [
    Duration::from_millis(1),
    Duration::from_millis(4),
    Duration::from_millis(16),
    Duration::from_millis(64),
    Duration::from_millis(256),
];

/// While waiting, a try at least this often, whatever the events say.
///
/// Events only come with a close, and many releases close nothing: a holder
/// that unlocks and keeps its descriptor (SQLite, `portalocker.unlock`,
/// Python's `fcntl.flock(fd, LOCK_UN)`, std's `File::unlock`), an owner
/// whose forked child still has the descriptor, a network file system this
/// crate does not recognise. Such a release is noticed within this time.
/// Two tries a second cost a few microseconds of CPU each; the head of a
/// line that runs this loop also proves with each pass that it is alive
/// (see `queue`).
pub(crate) const RECHECK: Duration = Duration::from_millis(500);

/// How long a wait is served by close events read in the waiter's own
/// runtime before it settles into the kernel's queue (see [`Contender::settle`]).
///
/// Why two stages: a close event wakes the waiting task's own runtime
/// thread and no thread of ours, the fastest handoff there is from a holder
/// that closes; but releases that close nothing are then only seen by a try every
/// [`RECHECK`], and on a virtual machine each timer wake-up costs 50 to
/// 150 us of CPU. The kernel's wait sees every release at once and costs
/// nothing while it lasts, but its helper thread is woken at every release,
/// beside the task's runtime, which made a short wait's handoff about twice
/// as slow (measured, `benches/handoff.rs`). Short waits, the common case
/// of a contended lock, get the watch alone; long ones cost no CPU. A
/// settled wait keeps its watch, so a holder that closes still wakes the
/// task's runtime directly (see [`Signal::Kernel`]). Both stages see a
/// release without a close within [`RECHECK`].
pub(crate) const SETTLE_AFTER: Duration = RECHECK;

/// Polling when no event source is available: start fast, back off to a cap
/// (the interval Python `filelock` uses by default).
pub(crate) const POLL_FIRST: Duration = Duration::from_millis(1);
pub(crate) const POLL_CAP: Duration = Duration::from_millis(50);
/// How long the first try of a call on a file system that may stall
/// (network, FUSE) is given to be answered, whatever the call's budget:
/// one round trip to a healthy server, and more.
pub(crate) const FIRST_TRY_OFF_RUNTIME: Duration = Duration::from_secs(1);

/// Where a waiter learns that the lock may have been released.
pub(crate) enum Signal {
    /// The kernel's own wait, on a helper thread: it resolves with the lock
    /// already granted (see `kernel_wait`). A long wait's second stage,
    /// which keeps the first stage's watch: a close of the file is then
    /// followed by a try in the waiter's own runtime (see
    /// [`KernelWait::try_now`]), which takes the lock from a holder that
    /// unlocked before closing as the first stage does; the kernel's grant
    /// catches every other release (a close without an unlock sends its
    /// event before the lock goes). Without a watch, the whole wait when
    /// inotify cannot be had.
    Kernel(Arc<KernelWait>, Option<Watch>),
    /// inotify events on the lock file's inode, with a try every
    /// [`RECHECK`]: a wait's first stage, and the whole wait when no helper
    /// thread could be had. The kernel timer, when one is set, is the first
    /// stage's end (see [`Signal::time_settling`]).
    Watch(Watch, Option<os::KernelTimer>),
    /// No events: poll on a capped backoff.
    Poll { next: Duration },
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl Signal {
    /// Watches the file open at `fd`; falls back to polling (with a warning,
    /// once per process) when inotify cannot be had.
    ///
    /// Must be called before the try that follows it, so that a release
    /// between that try and the sleep is not missed.
    pub(crate) fn watch(fd: BorrowedFd<'_>, path: &Path) -> Signal {
        match Signal::try_watch(fd, path) {
            Ok(watch) => watch,
            Err(e) => {
                if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "lockmgr: inotify unavailable, waiting for locks by polling (up to every {:?})",
                        POLL_CAP
                    );
                }
                Signal::poll()
            }
        }
    }

    /// Watches the file open at `fd`, or says why inotify cannot be had
    /// (the caller picks the fallback).
    pub(crate) fn try_watch(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<Signal> {
        Watcher::global()
            .and_then(|w| w.watch(fd, path))
            .map(|watch| Signal::Watch(watch, None))
    }

    /// Lets go of a signal whose wait is over. An inotify watch is let go
    /// of on this runtime once the caller has resumed with its lock:
    /// removing the watch and its registration takes the kernel tens of
    /// microseconds (it frees the watch's mark), measured as a third of a
    /// handoff, which the new holder need not wait for (a settled wait's
    /// watch too). The rest goes at once: a kernel wait's share here ends
    /// with its claim (a lock its try took lives on with the holder, see
    /// `contender::Held`).
    pub(crate) fn retire(self) {
        match (self, tokio::runtime::Handle::try_current()) {
            (Signal::Watch(watch, timer), Ok(rt)) => {
                drop(rt.spawn(async move { drop((watch, timer)) }))
            }
            (Signal::Kernel(kernel, Some(watch)), Ok(rt)) => {
                drop(kernel);
                drop(rt.spawn(async move { drop(watch) }))
            }
            (other, _) => drop(other),
        }
    }

    /// Times the end of a watch's first stage, at `at`, with a kernel
    /// timer, when Tokio's clock runs with the real one (as for
    /// [`before`]). The stage's one recheck is then one wake-up of the
    /// runtime's thread; on Tokio's timer, 500 ms ahead, it is two (the
    /// wheel wakes the runtime when it moves the entry down a level). The
    /// timer goes with the watch, retired off the handoff's path. Without
    /// a timer, Tokio's times the stage, as every other signal's tries.
    fn time_settling(&mut self, at: Instant) {
        if let Signal::Watch(_, timer) = self {
            let now = Instant::now();
            *timer = follows_real_clock(now)
                .then(|| os::KernelTimer::after(at.saturating_duration_since(now)).ok())
                .flatten();
        }
    }

    /// Whether the wait's tries are timed by the first stage's kernel
    /// timer rather than Tokio's.
    fn times_settling(&self) -> bool {
        matches!(self, Signal::Watch(_, Some(_)))
    }

    /// The polling signal.
    pub(crate) fn poll() -> Signal {
        Signal::Poll { next: POLL_FIRST }
    }

    /// Resolves when the lock may have changed hands: an event of the
    /// lock file (which earns the post-wake retries), events of the
    /// process's watches not read yet (which may be the lock file's), or a
    /// poll tick.
    async fn changed(&mut self) -> Woke {
        match self {
            // Not used for the kernel's wait, which has a loop of its own.
            Signal::Kernel(..) => std::future::pending().await,
            Signal::Watch(w, timer) if w.is_live() => {
                tokio::select! {
                    biased;
                    changed = w.changed() => if changed { Woke::Event } else { Woke::Unread },
                    expired = settling(timer.as_ref()) => {
                        // Spent (a one-shot timer stays readable), or lost.
                        *timer = None;
                        if expired {
                            Woke::Settle
                        } else {
                            // Moved to another runtime, or its driver is
                            // gone: a try now, and a timer made anew.
                            Woke::Moved
                        }
                    }
                }
            }
            Signal::Watch(..) => {
                *self = Signal::poll();
                Woke::Tick
            }
            Signal::Poll { next } => {
                sleep_here(Instant::now() + *next).await;
                *next = (*next * 2).min(POLL_CAP);
                Woke::Tick
            }
        }
    }
}

/// What woke the waiter.
enum Woke {
    Event,
    /// Events not read yet, perhaps of the lock file.
    Unread,
    Tick,
    Retry,
    Recheck,
    /// The first stage's kernel timer: the recheck that settles the wait.
    Settle,
    Expired,
    /// The wait is polled on another runtime than the one its timers
    /// belong to.
    Moved,
}

/// Resolves when the first stage's kernel timer expires (true) or cannot
/// tell (false, its driver is gone); never without a timer.
async fn settling(timer: Option<&os::KernelTimer>) -> bool {
    match timer {
        Some(timer) => timer.expired().await,
        None => std::future::pending().await,
    }
}

/// Waits until the contender wins or the budget is spent: in the kernel's
/// own wait when the signal is [`Signal::Kernel`], and otherwise trying on
/// events (or poll ticks), the post-wake retries and every [`RECHECK`].
/// `started` is when the caller began (its first try counts; time it spent
/// queued counts too).
///
/// Attempts are a way to state the budget (`timeout * max_attempts`,
/// saturating: an overflowing deadline means "no deadline"), not a schedule
/// of tries: tries follow the signal, and one last look is taken when the
/// budget runs out. So a budget of millions of 1 ns attempts costs a
/// handful of lock calls, not millions.
///
/// Cancel safety: this future owns nothing but timers; dropping it at any
/// await point leaves the contender and the signal to their owner.
pub(crate) async fn wait<C: Contender>(
    contender: &mut C,
    signal: &mut Signal,
    ticket: Option<&Ticket>,
    policy: Policy,
    started: Instant,
) -> Result<(), Failed<C::Error>> {
    let mut told = false;
    loop {
        let done = match signal {
            Signal::Kernel(kernel, watch) => {
                let kernel = kernel.clone();
                in_kernel(contender, &kernel, watch.as_mut(), policy, started).await
            }
            _ => on_events(contender, signal, ticket, policy, started).await,
        };
        match done {
            Done::Finished(result) => return result,
            // The lock file was replaced: wait for the new one, set up
            // before the try that covers it.
            Done::Moved => *signal = contender.signal(ticket.map(Ticket::promise)),
            Done::Settled => {}
            Done::Unsettled(e) => {
                if told {
                    tracing::debug!(error = %e, "lockmgr: a kernel wait could not go on; waiting on events");
                } else {
                    tracing::warn!(
                        error = %e,
                        "lockmgr: the kernel wait for a lock could not go on (the process is short of \
                         descriptors or memory); the wait goes on with the lock file's events and \
                         its periodic tries (or polls, without inotify), and tries the kernel wait \
                         again later where it can"
                    );
                    told = true;
                }
                *signal = contender.unsettle(ticket.map(Ticket::promise));
            }
        }
    }
}

/// How one wait on one signal ended.
enum Done<E> {
    Finished(Result<(), Failed<E>>),
    /// The contender moved to another file; its signal must be set up anew.
    Moved,
    /// The wait goes on with the signal it settled into.
    Settled,
    /// The kernel wait's helper could not go on for want of resources (no
    /// descriptor for its copy, no memory): not the lock's failure. The wait
    /// goes back to the events it settled from (and settles again later),
    /// rather than failing, or waiting for a grant that cannot come.
    Unsettled(std::io::Error),
}

/// The wait in the kernel: sleeps until the helper thread has the lock
/// granted, or a close of the file (`watch`) let a try on the same open
/// file description take it first (the contender's try then confirms it:
/// the open file description already holds it), or the budget is spent.
/// No timers but the deadline: waiting costs no CPU but a try at each event
/// of the file.
async fn in_kernel<C: Contender>(
    contender: &mut C,
    kernel: &KernelWait,
    watch: Option<&mut Watch>,
    policy: Policy,
    started: Instant,
) -> Done<C::Error> {
    let deadline = policy.deadline(started);
    let mut cause = Cause::Kernel;
    let granted = match deadline {
        Some(d) => before(d, held_in_kernel(kernel, watch, &mut cause)).await,
        None => Some(held_in_kernel(kernel, watch, &mut cause).await),
    };
    let granted = match granted {
        Some(granted) => granted,
        // The budget ran out; a grant in the same instant still counts.
        None => match kernel.try_claim() {
            Some(granted) => granted,
            None => {
                return Done::Finished(Err(Failed::TimedOut {
                    attempts: policy.max_attempts,
                    waited: started.elapsed(),
                }))
            }
        },
    };
    if let Err(e) = granted {
        if os::is_shortage(&e) {
            return Done::Unsettled(e);
        }
        return Done::Finished(Err(Failed::Error(contender.fail(e))));
    }
    let attempt = policy.attempt_at(started.elapsed());
    match contender.try_once(attempt, cause) {
        Ok(Try::Won) => Done::Finished(Ok(())),
        Ok(Try::Moved) => Done::Moved,
        // The descriptor holds the lock, so its own try cannot lose; if it
        // ever did, waiting again is the safe answer.
        Ok(Try::Held) => Done::Moved,
        Err(e) => Done::Finished(Err(Failed::Error(e))),
    }
}

/// Resolves once the lock is held through the kernel wait's open file
/// description: granted by the kernel, or taken by a try on a close of the
/// file, whichever comes first (`cause` says which); or the wait failed.
/// A close wakes this task's runtime thread directly, where the grant wakes
/// the helper first and the runtime after it.
///
/// Cancel safe, as [`KernelWait::granted`]: a try's win is returned in the
/// poll that makes it.
async fn held_in_kernel(
    kernel: &KernelWait,
    watch: Option<&mut Watch>,
    cause: &mut Cause,
) -> std::io::Result<()> {
    let Some(watch) = watch else {
        return kernel.granted().await;
    };
    while watch.is_live() {
        tokio::select! {
            biased;
            granted = kernel.granted() => return granted,
            // Read or not, an event may be the lock file's: try.
            _ = watch.changed() => if kernel.try_now() {
                *cause = Cause::Event;
                return Ok(());
            },
        }
    }
    // The file went (removed, or its watch dropped): the grant still comes.
    kernel.granted().await
}

/// `fut`'s output, or `None` once `deadline` has passed. A wait in the
/// kernel is a long one: its deadline is timed by a kernel timer, which
/// wakes the runtime once, at the deadline, where a Tokio timer seconds
/// ahead wakes it again at each level of Tokio's timer wheel (two or three
/// of the five or six wake-ups of a 10 s wait, measured, each a thread
/// woken from idle).
/// Tokio's timer is used instead when Tokio's clock is not running with
/// the real one (paused or advanced with `tokio::time::pause`, which a
/// kernel timer would not follow), when no kernel timer can be had, and
/// when the kernel timer's driver is gone (the future moved runtimes).
async fn before<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    let now = Instant::now();
    let timer = follows_real_clock(now)
        .then(|| os::KernelTimer::after(deadline.saturating_duration_since(now)).ok())
        .flatten();
    tokio::pin!(fut);
    if let Some(timer) = timer {
        tokio::select! {
            biased;
            out = &mut fut => return Some(out),
            expired = timer.expired() => if expired {
                return None;
            },
        }
    }
    until_here(deadline, fut).await
}

/// The wait on events (inotify, or poll ticks): tries, and while the lock
/// is held sleeps on the signal, the post-wake retry timer, the
/// [`RECHECK`] timer (for a watch on a running clock, the kernel timer that
/// ends the first stage, which comes sooner) and the deadline of the whole
/// budget.
async fn on_events<C: Contender>(
    contender: &mut C,
    signal: &mut Signal,
    ticket: Option<&Ticket>,
    policy: Policy,
    started: Instant,
) -> Done<C::Error> {
    let deadline = policy.deadline(started);
    let settle_at = Instant::now() + SETTLE_AFTER;
    let mut retries = RETRY_AFTER_WAKE.iter();
    let mut retry: Option<Duration> = None;
    let mut expired = false;
    let mut settle_due = false;
    let mut timed = false;
    let mut cause = Cause::First;
    loop {
        let attempt = policy.attempt_at(started.elapsed());
        match contender.try_once(attempt, cause) {
            Ok(Try::Won) => return Done::Finished(Ok(())),
            Ok(Try::Held) => {}
            Ok(Try::Moved) => return Done::Moved,
            Err(e) => return Done::Finished(Err(Failed::Error(e))),
        }
        if expired {
            return Done::Finished(Err(Failed::TimedOut {
                attempts: policy.max_attempts,
                waited: started.elapsed(),
            }));
        }
        // Set up before the try that covers it, as every signal: the try
        // just made came before the kernel's wait started, and the kernel
        // grants a lock that is free by then at once.
        if matches!(signal, Signal::Watch(..)) && (settle_due || Instant::now() >= settle_at) {
            if let Some(mut settled) = contender.settle(ticket.map(Ticket::promise)) {
                tracing::debug!("lockmgr: a long wait settles into the kernel's queue");
                // The watch stays (its settling timer goes): see Signal::Kernel.
                if let (Signal::Kernel(_, kept), Signal::Watch(watch, _timer)) =
                    (&mut settled, std::mem::replace(signal, Signal::poll()))
                {
                    *kept = Some(watch);
                }
                *signal = settled;
                return Done::Settled;
            }
        }
        if !timed {
            // Not before the first sleep: a lock won at once needs no timer.
            timed = true;
            signal.time_settling(settle_at);
        }
        let recheck = Instant::now() + RECHECK;
        if let Some(t) = ticket {
            // This loop wakes at least every RECHECK while it is polled (a
            // settling timer comes sooner).
            t.alive_until(recheck);
        }
        let on_tokio = !signal.times_settling();
        let woke = tokio::select! {
            biased;
            woke = signal.changed() => woke,
            here = sleep_here(Instant::now() + retry.unwrap_or_default()), if retry.is_some() => {
                if here { Woke::Retry } else { Woke::Moved }
            }
            here = sleep_here(recheck), if on_tokio => if here { Woke::Recheck } else { Woke::Moved },
            here = sleep_here(deadline.unwrap_or(recheck)), if deadline.is_some() => {
                if here { Woke::Expired } else { Woke::Moved }
            }
        };
        cause = match woke {
            Woke::Event => {
                retries = RETRY_AFTER_WAKE.iter();
                retry = retries.next().copied();
                Cause::Event
            }
            Woke::Retry => {
                retry = retries.next().copied();
                Cause::Retry
            }
            // Tried at once; the events are read at the next sleep, and
            // the lock file's, if among them, earns the retries then.
            Woke::Unread => Cause::Event,
            Woke::Tick => Cause::Poll,
            Woke::Recheck => Cause::Recheck,
            // Tried at once, and the timers made anew on this runtime.
            Woke::Moved => {
                if !settle_due && !signal.times_settling() && Instant::now() < settle_at {
                    signal.time_settling(settle_at);
                }
                Cause::Recheck
            }
            Woke::Settle => {
                settle_due = true;
                Cause::Recheck
            }
            // One last try: a wait ends with a look, not a guess.
            Woke::Expired => {
                expired = true;
                Cause::Deadline
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held for a fixed number of tries, then free.
    struct FreeAfter {
        tries: u32,
        free_at: u32,
        last_attempt: u32,
    }

    impl Contender for FreeAfter {
        type Error = ();
        fn try_once(&mut self, attempt: u32, _: Cause) -> Result<Try, ()> {
            self.tries += 1;
            self.last_attempt = attempt;
            Ok(if self.tries >= self.free_at {
                Try::Won
            } else {
                Try::Held
            })
        }
        fn signal(&mut self, _: Option<Promise>) -> Signal {
            Signal::poll()
        }
        fn fail(&self, _: std::io::Error) {}
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_after_all_attempts() {
        let mut c = FreeAfter {
            tries: 0,
            free_at: u32::MAX,
            last_attempt: 0,
        };
        let started = Instant::now();
        let policy = Policy::new(true, Duration::from_secs(2), 3);
        // Polling in paused time: virtual time advances only when idle.
        let r = wait(&mut c, &mut Signal::poll(), None, policy, started).await;
        match r {
            Err(Failed::TimedOut { attempts, waited }) => {
                assert_eq!(attempts, 3);
                assert_eq!(waited, Duration::from_secs(6));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.last_attempt, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_timeout_saturates_and_still_wins() {
        let mut c = FreeAfter {
            tries: 0,
            free_at: 50,
            last_attempt: 0,
        };
        let policy = Policy::new(true, Duration::MAX, 10);
        wait(&mut c, &mut Signal::poll(), None, policy, Instant::now())
            .await
            .unwrap();
        assert_eq!(c.tries, 50);
        assert_eq!(c.last_attempt, 1);
    }
}
