//! The in-process queue: the tasks of one process that wait for the same lock
//! file wait in line here, first come first served, so that only one of them
//! at a time (the head) holds a descriptor and an inotify watch and contends
//! at the OS level.
//!
//! Lines are keyed by the file's identity (device and inode), so two paths to
//! one file share a line, by the lock family and by the mode: OFD and
//! `flock` locks do not see each other, and a shared lock may be free for a
//! reader while a writer waits, so a task never waits behind one whose lock
//! may be held while its own is free (a reader is granted the lock beside
//! other readers while this process's writer waits, as the kernel grants
//! it to a reader of another process). The head waits in the
//! kernel's own lock queue (see `kernel_wait`), beside the waiters of other
//! processes: the kernel, not this process, decides who gets a released
//! lock, so a busy process cannot keep it to itself. A head that gives up
//! leaves its wait *parked* in the line ([`park`]) for the next head to take
//! over, so the line keeps one blocked wait however many of its tasks give
//! up in turn.
//!
//! A head whose future is kept but no longer polled (its runtime stalled, a
//! `select!` that stopped polling it) would keep everyone behind it from a
//! free lock. So the head promises, each time its waiting loop runs, when it
//! will run again at the latest ([`Ticket::alive_until`]); while anyone
//! waits behind it, one thread of the process (the line watch) holds it to
//! that and, once the promise is broken by more than [`GRACE`], puts the
//! next task in its place. The passed-over task stays in line and keeps
//! contending if it ever runs again, so nothing is lost, and the lock
//! itself still decides who holds it; until it runs again it is never made
//! the head again while a task that runs waits behind it, and a newcomer
//! to a line made only of such tasks goes first.
//!
//! The watch is a thread, not the second task in line, because the second
//! changes at every handoff: a second that watched had to be woken each
//! time to start its timer, which cost every in-process handoff with two or
//! more tasks waiting about as much as the handoff itself (measured: 14 us
//! against 7 us). The thread sleeps until the earliest promise of a
//! followed head (plus the grace) and is woken early only when a head
//! promises less than that; it looks at most every [`MIN_GAP`], however
//! many lines there are.
//!
//! This module knows nothing of files, errors or guards: it orders waiters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::time::Instant as TokioInstant;

use crate::board;
use crate::clock::until_here;
use crate::forkable::Forkable;
use crate::os::FileId;
use crate::vocab::{LockKind, LockMode};

/// What a line is for: one file, in one lock family and mode.
type Key = (FileId, LockKind, LockMode);

/// How late past its promise a head may be before the next in line takes
/// its place: room for a busy runtime to get round to it.
pub(crate) const GRACE: Duration = Duration::from_millis(250);

/// The least time between two looks of the line watch: each look goes
/// through every line, and heads that keep promising at different times
/// would otherwise have it look once for each. Small against [`GRACE`].
const MIN_GAP: Duration = Duration::from_millis(20);

/// The promise a head makes when it joins, before its waiting loop runs:
/// opening the file and trying take no longer than this on a healthy
/// runtime.
const FIRST_PROMISE: Duration = Duration::from_secs(1);

struct Slot {
    id: u64,
    /// Wakes this waiter when it has become the head.
    wake: Notify,
    /// While this waiter is the head: when it will next run at the latest,
    /// in nanoseconds after [`epoch`] (`u64::MAX`: when woken, by whoever
    /// wakes it).
    alive_until: AtomicU64,
    /// While this waiter is the head: someone waits behind it. The watch
    /// holds every head with someone behind it to its promises whatever
    /// this says; it decides whether a new promise must tell the watch, so
    /// that a head alone in its line (the common case) never wakes it.
    followed: AtomicBool,
    /// The watch passed this waiter over, and it has not run since. Only
    /// changed with the lines locked (see [`Line::passed_over`]).
    passed_over: AtomicBool,
    /// When it joined, in Unix milliseconds (for the waiting board).
    joined_ms: u64,
}

/// Tells the waiting board how many wait for `file`, in all its lines
/// (both families, both modes), and since when: as the earlier front joined (a line only grows
/// at its back, so its front joined first, unless the watch passed over a
/// head, which then waits at the back). O(1): it runs at every join and
/// leave.
fn publish(lines: &HashMap<Key, Line>, file: FileId) {
    let (mut tasks, mut since) = (0, u64::MAX);
    let modes = [LockMode::Exclusive, LockMode::Shared];
    let keys = [LockKind::Ofd, LockKind::Flock].map(|kind| modes.map(|mode| (file, kind, mode)));
    for key in keys.as_flattened() {
        if let Some(line) = lines.get(key) {
            tasks += line.slots.len();
            if let Some(front) = line.slots.front() {
                since = since.min(front.joined_ms);
            }
        }
    }
    board::publish(file, tasks, if tasks == 0 { 0 } else { since });
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The zero of `alive_until`.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Default)]
struct Line {
    slots: VecDeque<Arc<Slot>>,
    /// How many of `slots` are passed over.
    passed_over: usize,
}

impl Line {
    /// Whether every waiter left was passed over by the watch: none of them
    /// is known to run.
    fn all_passed_over(&self) -> bool {
        !self.slots.is_empty() && self.passed_over == self.slots.len()
    }

    /// Puts the first waiter that was not passed over at the front (those
    /// ahead of it go to the back, in order), unless every one was. Returns
    /// whether the front is now one that runs.
    fn live_first(&mut self) -> bool {
        if self.all_passed_over() {
            return false;
        }
        // At most once round: the count says one is not passed over, but
        // a bound costs nothing should it ever be wrong.
        for _ in 0..self.slots.len() {
            if !self
                .slots
                .front()
                .is_some_and(|s| s.passed_over.load(Ordering::SeqCst))
            {
                break;
            }
            self.slots.rotate_left(1);
        }
        true
    }
}

/// The number of non-empty lines, read without the lock so that a process
/// with no waiters pays nothing on acquire and release.
static LINES_IN_USE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The lines of this process. After `fork`, the child starts with none: the
/// waiters it inherited do not run there.
type Lines = MutexGuard<'static, HashMap<Key, Line>>;

fn lines() -> Lines {
    static LINES: Forkable<HashMap<Key, Line>> = Forkable::new();
    LINES.lock()
}

/// Whether any task of this process is waiting in any line.
pub(crate) fn anyone_waiting() -> bool {
    LINES_IN_USE.load(Ordering::Acquire) > 0
}

/// A promise read back: when, if the head named a time.
fn promised(alive_until: &AtomicU64) -> Option<Instant> {
    match alive_until.load(Ordering::SeqCst) {
        u64::MAX => None,
        nanos => Some(epoch() + Duration::from_nanos(nanos)),
    }
}

impl Slot {
    /// Records the promise to run by `at` (nanoseconds after [`epoch`]),
    /// for the line watch to hold this slot to if anyone waits behind it.
    fn promise(&self, at: u64) {
        // SeqCst on both sides (here, and `follow`, called with the lines
        // locked when the line behind this head changes): either this
        // promise is seen by `follow`, or its mark is seen here.
        self.alive_until.store(at, Ordering::SeqCst);
        if at != u64::MAX && self.followed.load(Ordering::SeqCst) {
            watch::look_by(at.saturating_add(nanos(GRACE)));
        }
    }

    /// Marks whether anyone waits behind this head; from then on its
    /// promises are watched.
    fn follow(&self, followed: bool) {
        self.followed.store(followed, Ordering::SeqCst);
        if followed {
            if let Some(due) = promised(&self.alive_until) {
                watch::look_by(nanos_since_epoch(due).saturating_add(nanos(GRACE)));
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A place in the line for one file, lock family and mode. Dropping it leaves the
/// line; if it was the head, the next waiter becomes the head and is woken.
pub(crate) struct Ticket {
    key: Key,
    slot: Arc<Slot>,
}

impl Ticket {
    /// Takes a place at the back of the line for `file` in `kind` and
    /// `mode`.
    pub(crate) fn join(file: FileId, kind: LockKind, mode: LockMode) -> Ticket {
        let mut lines = lines();
        let key = (file, kind, mode);
        let line = lines.entry(key).or_insert_with(|| {
            LINES_IN_USE.fetch_add(1, Ordering::AcqRel);
            Line::default()
        });
        let ticket = Ticket::push(line, key);
        publish(&lines, file);
        ticket
    }

    /// Takes a place at the back of the line for `file` in `kind` and
    /// `mode` only if tasks are already waiting in it.
    pub(crate) fn join_if_waiting(file: FileId, kind: LockKind, mode: LockMode) -> Option<Ticket> {
        if !anyone_waiting() {
            return None;
        }
        let mut lines = lines();
        let key = (file, kind, mode);
        let ticket = Ticket::push(lines.get_mut(&key)?, key);
        publish(&lines, file);
        Some(ticket)
    }

    fn push(line: &mut Line, key: Key) -> Ticket {
        let slot = Arc::new(Slot {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            wake: Notify::new(),
            alive_until: AtomicU64::new(nanos_since_epoch(Instant::now() + FIRST_PROMISE)),
            followed: AtomicBool::new(false),
            passed_over: AtomicBool::new(false),
            joined_ms: unix_ms(),
        });
        if line.all_passed_over() {
            // Nobody ahead is known to run: waiting behind them would cost
            // a pass-over (1.25 s) each.
            if let Some(old) = line.slots.front() {
                old.followed.store(false, Ordering::SeqCst);
            }
            line.slots.push_front(slot.clone());
            watch::ensure_running();
            slot.follow(true);
        } else {
            line.slots.push_back(slot.clone());
            if line.slots.len() == 2 {
                watch::ensure_running();
                line.slots[0].follow(true);
            }
        }
        Ticket { key, slot }
    }

    /// The file this ticket waits for.
    pub(crate) fn file(&self) -> FileId {
        self.key.0
    }

    /// Whether this ticket is at the front of its line.
    pub(crate) fn is_head(&self) -> bool {
        lines()
            .get(&self.key)
            .and_then(|line| line.slots.front())
            .is_some_and(|front| front.id == self.slot.id)
    }

    /// Resolves once this ticket is at the front of its line: when those
    /// ahead have left, or the line watch has put it in place of a head
    /// that broke its promise to run.
    ///
    /// Cancel safe: a wake-up that arrives while no one awaits is kept as a
    /// permit by the [`Notify`], so checking and then sleeping loses nothing.
    /// Whether the front was reached before `deadline`.
    pub(crate) async fn until_head_by(&self, deadline: Option<TokioInstant>) -> bool {
        match deadline {
            None => {
                self.until_head().await;
                true
            }
            Some(d) => until_here(d, self.until_head()).await.is_some(),
        }
    }

    /// Waits until this ticket is at the front of its line (see
    /// [`until_head_by`](Ticket::until_head_by), with no deadline). Only a
    /// waiter that becomes the head is woken: the others sleep however the
    /// line moves.
    pub(crate) async fn until_head(&self) {
        // Each time it wakes it runs: a wait passed over before it was
        // polled again must be known to run before the line moves on.
        loop {
            self.runs();
            if self.is_head() {
                break;
            }
            self.slot.wake.notified().await;
        }
        // A new head needs a moment to open the file and try: its promise
        // runs from now, not from when it joined.
        self.promise().keep_until(Instant::now() + FIRST_PROMISE);
    }

    /// The head's promise: it will run again by `at` (its waiting loop's
    /// next timer). Only heads are watched; others' promises are ignored.
    pub(crate) fn alive_until(&self, at: TokioInstant) {
        self.runs();
        self.slot.promise(nanos_since_epoch(at.into_std()));
    }

    /// This ticket's task runs: if the watch passed it over, it may be made
    /// the head again, and is made the head now if every other waiter was
    /// passed over too (nobody else would make it the head).
    fn runs(&self) {
        if !self.slot.passed_over.load(Ordering::SeqCst) {
            return;
        }
        let mut lines = lines();
        let Some(line) = lines.get_mut(&self.key) else {
            return;
        };
        // Only a slot of this line is counted in it (a ticket inherited
        // across `fork` is not in the child's line for the file).
        if !line.slots.iter().any(|s| Arc::ptr_eq(s, &self.slot)) {
            return;
        }
        // Looked at before this one's mark goes: when it is itself the
        // front, its cleared mark would hide that nobody watches it.
        let all_were = line.all_passed_over();
        if !self.slot.passed_over.swap(false, Ordering::SeqCst) {
            return;
        }
        line.passed_over -= 1;
        if all_were {
            if let Some(old) = line.slots.front() {
                old.followed.store(false, Ordering::SeqCst);
            }
            line.live_first();
            let followed = line.slots.len() >= 2;
            if let Some(head) = line.slots.front() {
                head.promise(nanos_since_epoch(Instant::now() + FIRST_PROMISE));
                head.follow(followed);
                head.wake.notify_one();
            }
            publish(&lines, self.key.0);
        }
    }

    /// The promise this ticket makes while it is the head, for others to
    /// keep on its behalf (the kernel wait of its head keeps it).
    pub(crate) fn promise(&self) -> Promise {
        Promise {
            slot: self.slot.clone(),
        }
    }
}

/// A head's promise to run again by some time, kept by whoever knows: the
/// head's own waiting loop, or the kernel wait that will wake it.
#[derive(Clone)]
pub(crate) struct Promise {
    slot: Arc<Slot>,
}

impl Promise {
    /// The head will run by `at`.
    pub(crate) fn keep_until(&self, at: Instant) {
        self.slot.promise(nanos_since_epoch(at));
    }

    /// The head will run when woken, and whoever wakes it will name a time
    /// (with [`keep_until`](Promise::keep_until)) first.
    pub(crate) fn keep_forever(&self) {
        self.slot.promise(u64::MAX);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut lines = lines();
        if self.leave(&mut lines) {
            publish(&lines, self.key.0);
        }
    }
}

impl Ticket {
    /// Takes this ticket out of its line, and wakes the next head if it
    /// was the head. Whether the line changed.
    fn leave(&self, lines: &mut HashMap<Key, Line>) -> bool {
        let Some(line) = lines.get_mut(&self.key) else {
            return false;
        };
        let at = if line
            .slots
            .front()
            .is_some_and(|front| front.id == self.slot.id)
        {
            // The common case, a winner leaving: no walk along the line.
            line.slots.pop_front();
            0
        } else if let Some(at) = line.slots.iter().rposition(|s| s.id == self.slot.id) {
            line.slots.remove(at);
            at
        } else {
            return false;
        };
        if self.slot.passed_over.swap(false, Ordering::SeqCst) {
            line.passed_over -= 1;
        }
        if line.slots.is_empty() {
            lines.remove(&self.key);
            LINES_IN_USE.fetch_sub(1, Ordering::AcqRel);
            return true;
        }
        let followed = line.slots.len() >= 2;
        if at == 0 && !line.live_first() {
            // Nobody left is known to run: none is woken or watched until
            // one runs again or a newcomer goes first.
            if let Some(head) = line.slots.front() {
                head.followed.store(false, Ordering::SeqCst);
            }
            return true;
        }
        let Some(head) = line.slots.front() else {
            return true;
        };
        if at == 0 {
            // A new head starts contending: its promise runs from now, not
            // from when it joined.
            head.promise(nanos_since_epoch(Instant::now() + FIRST_PROMISE));
            head.follow(followed);
            head.wake.notify_one();
        } else if !followed {
            head.follow(false);
        }
        true
    }
}

/// The line watch: one thread that holds the heads of lines with someone
/// behind them to their promises, and passes over a head that broke its
/// promise by more than [`GRACE`].
mod watch {
    use super::*;

    /// When the watch looks next, in nanoseconds after [`epoch`]
    /// (`u64::MAX`: when told). Only lowered by others; the watch itself
    /// resets it before each look.
    static NEXT_LOOK: AtomicU64 = AtomicU64::new(u64::MAX);
    static THREAD: Forkable<Option<std::thread::Thread>> = Forkable::new();
    /// Whether the warning that the thread cannot start was given.
    static WARNED: AtomicBool = AtomicBool::new(false);

    fn thread() -> MutexGuard<'static, Option<std::thread::Thread>> {
        THREAD.lock()
    }

    /// The watch looks by `at` (nanoseconds after [`epoch`]) at the latest.
    /// Free when it means to look by then anyway: no thread is woken.
    pub(super) fn look_by(at: u64) {
        if NEXT_LOOK.fetch_min(at, Ordering::SeqCst) > at {
            match &mut *thread() {
                Some(t) => t.unpark(),
                // It could not start before: try again.
                none => start(none),
            }
        }
    }

    /// Starts the watch in this process if it is not running (a forked
    /// child has none of its parent's threads, and its inherited NEXT_LOOK
    /// may be too early for `look_by` to start one). Called when a line
    /// first has someone behind its head.
    pub(super) fn ensure_running() {
        let mut thread = thread();
        if thread.is_none() {
            start(&mut thread);
        }
    }

    fn start(thread: &mut Option<std::thread::Thread>) {
        // It looks at once when it starts.
        match std::thread::Builder::new()
            .name("lockmgr-line".into())
            .spawn(run)
        {
            Ok(handle) => *thread = Some(handle.thread().clone()),
            Err(e) => {
                if !WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "lockmgr: cannot start the thread that watches the first task waiting \
                         in line for a lock; until it starts (it is tried again at each \
                         promise of a first task), a first task that is no longer polled is \
                         not passed over"
                    );
                }
            }
        }
    }

    fn run() {
        loop {
            NEXT_LOOK.store(u64::MAX, Ordering::SeqCst);
            let looked = Instant::now();
            // A panic (a tracing subscriber's, say) must not end the watch
            // for good: the lines it left are consistent, and it looks
            // again after the gap.
            let next = std::panic::catch_unwind(look).unwrap_or(0);
            NEXT_LOOK.fetch_min(next, Ordering::SeqCst);
            let earliest = nanos_since_epoch(looked + MIN_GAP);
            loop {
                let at = NEXT_LOOK.load(Ordering::SeqCst).max(earliest);
                let now = nanos_since_epoch(Instant::now());
                if at <= now {
                    break;
                }
                if at == u64::MAX {
                    std::thread::park();
                } else {
                    std::thread::park_timeout(Duration::from_nanos(at - now));
                }
            }
        }
    }

    /// Passes over every head with someone behind it that is past its
    /// promise and the grace; returns when to look next.
    fn look() -> u64 {
        let now = Instant::now();
        let mut next = u64::MAX;
        // Logged once the lines are free: a slow subscriber must not hold
        // up every join and leave of the process.
        let mut passed: Vec<Duration> = Vec::new();
        let mut changed: Vec<FileId> = Vec::new();
        let mut lines = lines();
        for (&(file, _, _), line) in lines.iter_mut() {
            if line.slots.len() < 2 {
                continue;
            }
            // A front passed over means all were: nobody runs to pass it to.
            if line.all_passed_over() {
                continue;
            }
            let Some(due) = line.slots.front().and_then(|h| promised(&h.alive_until)) else {
                continue;
            };
            if now < due + GRACE {
                next = next.min(nanos_since_epoch(due + GRACE));
                continue;
            }
            passed.push(now.saturating_duration_since(due));
            // The passed-over task goes to the back: it keeps contending if
            // it ever runs again, and is not made the head again until then.
            if let Some(passed_over) = line.slots.pop_front() {
                passed_over.followed.store(false, Ordering::SeqCst);
                if !passed_over.passed_over.swap(true, Ordering::SeqCst) {
                    line.passed_over += 1;
                }
                // A task that runs after all, between its own look at its
                // mark and its look at the line, must not sleep marked: woken,
                // it sees the mark and clears it. A stalled one keeps a
                // permit it may never use.
                passed_over.wake.notify_one();
                line.slots.push_back(passed_over);
            }
            changed.push(file);
            if !line.live_first() {
                continue;
            }
            if let Some(head) = line.slots.front() {
                let due = now + FIRST_PROMISE;
                head.alive_until
                    .store(nanos_since_epoch(due), Ordering::SeqCst);
                head.followed.store(true, Ordering::SeqCst);
                head.wake.notify_one();
                next = next.min(nanos_since_epoch(due + GRACE));
            }
        }
        for file in changed {
            publish(&lines, file);
        }
        drop(lines);
        for late in passed {
            tracing::warn!(
                ?late,
                "lockmgr: the first task waiting in line for a lock has not run when it \
                 promised to (its future is no longer polled, or its runtime is stalled); \
                 the next task takes its place"
            );
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const EX: LockMode = LockMode::Exclusive;

    fn some_file(dir: &Path, name: &str) -> FileId {
        let path = dir.join(name);
        std::fs::write(&path, b"").unwrap();
        crate::os::file_id_at(&path).unwrap()
    }

    #[tokio::test]
    async fn first_come_first_served_and_leaving_wakes_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let file = some_file(dir.path(), "a");
        assert!(
            Ticket::join_if_waiting(file, LockKind::Ofd, EX).is_none(),
            "no line yet"
        );
        let first = Ticket::join(file, LockKind::Ofd, EX);
        let second = Ticket::join(file, LockKind::Ofd, EX);
        let third = Ticket::join_if_waiting(file, LockKind::Ofd, EX).expect("a line exists");
        assert!(first.is_head());
        assert!(!second.is_head() && !third.is_head());

        // A waiter behind the head leaves: nobody moves up.
        drop(second);
        assert!(first.is_head() && !third.is_head());

        let waiter = tokio::spawn(async move {
            third.until_head().await;
            third
        });
        drop(first);
        let third = waiter.await.unwrap();
        assert!(third.is_head());
        drop(third);
        assert!(
            Ticket::join_if_waiting(file, LockKind::Ofd, EX).is_none(),
            "the line is gone"
        );
    }

    #[test]
    fn lines_of_different_files_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ticket::join(some_file(dir.path(), "c"), LockKind::Ofd, EX);
        let b = Ticket::join(some_file(dir.path(), "d"), LockKind::Ofd, EX);
        assert!(a.is_head() && b.is_head());
        assert_ne!(a.file(), b.file());
    }

    #[test]
    fn lines_of_different_lock_families_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = some_file(dir.path(), "e");
        let ofd = Ticket::join(file, LockKind::Ofd, EX);
        assert!(Ticket::join_if_waiting(file, LockKind::Flock, EX).is_none());
        let flock = Ticket::join(file, LockKind::Flock, EX);
        assert!(ofd.is_head() && flock.is_head());
        let second = Ticket::join_if_waiting(file, LockKind::Flock, EX).expect("a flock line");
        assert!(!second.is_head());
        drop(flock);
        assert!(second.is_head() && ofd.is_head());
    }

    #[test]
    fn lines_of_different_modes_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = some_file(dir.path(), "f");
        let writer = Ticket::join(file, LockKind::Ofd, EX);
        let shared = LockMode::Shared;
        assert!(Ticket::join_if_waiting(file, LockKind::Ofd, shared).is_none());
        let reader = Ticket::join(file, LockKind::Ofd, shared);
        assert!(writer.is_head() && reader.is_head());
    }
}
