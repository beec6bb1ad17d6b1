//! The in-process queue: the tasks of one process that wait for the same lock
//! file wait in line here, first come first served, so that only one of them
//! at a time (the head) holds a descriptor and an inotify watch and contends
//! at the OS level.
//!
//! Lines are keyed by the file's identity (device and inode), so two paths to
//! one file share a line. The head waits in the kernel's own lock queue (see
//! `kernel_wait`), beside the waiters of other processes: the kernel, not
//! this process, decides who gets a released lock, so a busy process cannot
//! keep it to itself. A head that gives up leaves its wait *parked* in the
//! line ([`park`]) for the next head to take over, so the line keeps one
//! blocked wait however many of its tasks give up in turn.
//!
//! A head whose future is kept but no longer polled (its runtime stalled, a
//! `select!` that stopped polling it) would keep everyone behind it from a
//! free lock. So the head promises, each time its waiting loop runs, when it
//! will run again at the latest ([`Ticket::alive_until`]); the second in
//! line watches that promise and, once it is broken by more than
//! [`GRACE`], takes the head's place. The passed-over task stays in line
//! and keeps contending if it ever runs again, so nothing is lost, and the
//! lock itself still decides who holds it.
//!
//! This module knows nothing of files, errors or guards: it orders waiters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::time::Instant as TokioInstant;

use crate::board;
use crate::clock::{sleep_here, until_here};
use crate::forkable::Forkable;
use crate::os::FileId;

/// How late past its promise a head may be before the next in line takes
/// its place: room for a busy runtime to get round to it.
pub(crate) const GRACE: Duration = Duration::from_millis(250);

/// The promise a head makes when it joins, before its waiting loop runs:
/// opening the file and trying take no longer than this on a healthy
/// runtime.
const FIRST_PROMISE: Duration = Duration::from_secs(1);

struct Slot {
    id: u64,
    /// Wakes this waiter when it has become the head or the second in line.
    wake: Notify,
    /// While this waiter is the head: when it will next run at the latest,
    /// in nanoseconds after [`epoch`].
    alive_until: AtomicU64,
    /// When it joined, in Unix milliseconds (for the waiting board).
    joined_ms: u64,
}

/// Tells the waiting board how many wait in `line`, and since when: the
/// front joined first (the line only grows at its back). O(1): it runs at
/// every join and leave.
fn publish(file: FileId, line: &Line) {
    let since = line.slots.front().map_or(0, |s| s.joined_ms);
    board::publish(file, line.slots.len(), since);
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
}

/// The number of non-empty lines, read without the lock so that a process
/// with no waiters pays nothing on acquire and release.
static LINES_IN_USE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The lines of this process. After `fork`, the child starts with none: the
/// waiters it inherited do not run there.
struct Lines(MutexGuard<'static, Forkable<HashMap<FileId, Line>>>);

impl std::ops::Deref for Lines {
    type Target = HashMap<FileId, Line>;
    fn deref(&self) -> &Self::Target {
        // `get` needs `&mut`: a child's first look, through `DerefMut` or
        // here, forgets what it inherited.
        self.0.peek()
    }
}

impl std::ops::DerefMut for Lines {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.get()
    }
}

fn lines() -> Lines {
    static LINES: OnceLock<Mutex<Forkable<HashMap<FileId, Line>>>> = OnceLock::new();
    // A panic while holding this lock can only come from an allocation
    // failure; the map is still consistent then, so keep using it.
    let mut guard = LINES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    guard.get();
    Lines(guard)
}

/// Whether any task of this process is waiting in any line.
pub(crate) fn anyone_waiting() -> bool {
    LINES_IN_USE.load(Ordering::Acquire) > 0
}

/// Where a ticket stands in its line.
enum Place {
    Head,
    /// Second, behind a head that promised to run by this time (if it
    /// promised a time).
    Second(Option<Instant>),
    Further,
}

/// A promise read back: when, if the head named a time.
fn promised(alive_until: &AtomicU64) -> Option<Instant> {
    match alive_until.load(Ordering::Acquire) {
        u64::MAX => None,
        nanos => Some(epoch() + Duration::from_nanos(nanos)),
    }
}

/// A place in the line for one file. Dropping it leaves the line; if it was
/// the head, the next waiter becomes the head and is woken.
pub(crate) struct Ticket {
    file: FileId,
    slot: Arc<Slot>,
}

impl Ticket {
    /// Takes a place at the back of the line for `file`.
    pub(crate) fn join(file: FileId) -> Ticket {
        let mut lines = lines();
        let line = lines.entry(file).or_insert_with(|| {
            LINES_IN_USE.fetch_add(1, Ordering::AcqRel);
            Line::default()
        });
        Ticket::push(line, file)
    }

    /// Takes a place at the back of the line for `file` only if tasks are
    /// already waiting in it.
    pub(crate) fn join_if_waiting(file: FileId) -> Option<Ticket> {
        if !anyone_waiting() {
            return None;
        }
        lines().get_mut(&file).map(|line| Ticket::push(line, file))
    }

    fn push(line: &mut Line, file: FileId) -> Ticket {
        let slot = Arc::new(Slot {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            wake: Notify::new(),
            alive_until: AtomicU64::new(nanos_since_epoch(Instant::now() + FIRST_PROMISE)),
            joined_ms: unix_ms(),
        });
        line.slots.push_back(slot.clone());
        publish(file, line);
        Ticket { file, slot }
    }

    /// The file this ticket waits for.
    pub(crate) fn file(&self) -> FileId {
        self.file
    }

    /// Whether this ticket is at the front of its line.
    pub(crate) fn is_head(&self) -> bool {
        lines()
            .get(&self.file)
            .and_then(|line| line.slots.front())
            .is_some_and(|front| front.id == self.slot.id)
    }

    /// Resolves once this ticket is at the front of its line, or has taken
    /// the place of a head that broke its promise to run.
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
    /// [`until_head_by`](Ticket::until_head_by), with no deadline).
    pub(crate) async fn until_head(&self) {
        loop {
            let head_due = match self.place() {
                Place::Head => {
                    // A new head needs a moment to open the file and try:
                    // its promise runs from now, not from when it joined.
                    self.promise().keep_until(Instant::now() + FIRST_PROMISE);
                    return;
                }
                Place::Second(due) => due,
                Place::Further => None,
            };
            match head_due {
                None => self.slot.wake.notified().await,
                Some(due) => {
                    tokio::select! {
                        _ = self.slot.wake.notified() => {}
                        // Moved to another runtime: the place is looked at
                        // again, and the timer made anew.
                        here = sleep_here(TokioInstant::from_std(due + GRACE)) => {
                            if here && self.take_over_stalled_head() {
                                self.promise().keep_until(Instant::now() + FIRST_PROMISE);
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Where this ticket stands, and, when second, when the head promised
    /// to run again at the latest (`None`: when woken, and whoever wakes it
    /// will wake the second too when it makes a new promise).
    fn place(&self) -> Place {
        let lines = lines();
        let Some(line) = lines.get(&self.file) else {
            return Place::Further;
        };
        match (line.slots.front(), line.slots.get(1)) {
            (Some(front), _) if front.id == self.slot.id => Place::Head,
            (Some(front), Some(second)) if second.id == self.slot.id => {
                Place::Second(promised(&front.alive_until))
            }
            _ => Place::Further,
        }
    }

    /// If this ticket is second and the head is past its promise (and the
    /// grace), swaps places with it. Returns whether this ticket is now the
    /// head.
    fn take_over_stalled_head(&self) -> bool {
        let mut lines = lines();
        let Some(line) = lines.get_mut(&self.file) else {
            return false;
        };
        let (Some(front), Some(second)) = (line.slots.front(), line.slots.get(1)) else {
            return false;
        };
        if second.id != self.slot.id {
            return front.id == self.slot.id;
        }
        let Some(due) = promised(&front.alive_until) else {
            return false;
        };
        if Instant::now() < due + GRACE {
            return false;
        }
        tracing::warn!(
            late = ?Instant::now().saturating_duration_since(due),
            "lockmgr: the first task waiting in line for a lock has not run when it \
             promised to (its future is no longer polled, or its runtime is stalled); \
             the next task takes its place"
        );
        // The passed-over task goes to the back (it keeps contending if it
        // ever runs again); the new second starts watching the new head.
        if let Some(passed_over) = line.slots.pop_front() {
            line.slots.push_back(passed_over);
        }
        if let Some(second) = line.slots.get(1) {
            second.wake.notify_one();
        }
        true
    }

    /// The head's promise: it will run again by `at` (its waiting loop's
    /// next timer). Only heads are watched; others' promises are ignored.
    pub(crate) fn alive_until(&self, at: TokioInstant) {
        self.slot
            .alive_until
            .store(nanos_since_epoch(at.into_std()), Ordering::Release);
    }

    /// The promise this ticket makes while it is the head, for others to
    /// keep on its behalf (the kernel wait of its head keeps it).
    pub(crate) fn promise(&self) -> Promise {
        Promise {
            file: self.file,
            slot: self.slot.clone(),
        }
    }
}

/// A head's promise to run again by some time, kept by whoever knows: the
/// head's own waiting loop, or the kernel wait that will wake it.
#[derive(Clone)]
pub(crate) struct Promise {
    file: FileId,
    slot: Arc<Slot>,
}

impl Promise {
    /// The head will run by `at`. The second in line, which may be asleep
    /// until the head names a time, is told.
    pub(crate) fn keep_until(&self, at: Instant) {
        self.slot
            .alive_until
            .store(nanos_since_epoch(at), Ordering::Release);
        let lines = lines();
        if let Some(line) = lines.get(&self.file) {
            if line.slots.front().is_some_and(|f| f.id == self.slot.id) {
                if let Some(second) = line.slots.get(1) {
                    second.wake.notify_one();
                }
            }
        }
    }

    /// The head will run when woken, and whoever wakes it will name a time
    /// (with [`keep_until`](Promise::keep_until)) first.
    pub(crate) fn keep_forever(&self) {
        self.slot.alive_until.store(u64::MAX, Ordering::Release);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut lines = lines();
        let Some(line) = lines.get_mut(&self.file) else {
            return;
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
            return;
        };
        publish(self.file, line);
        if line.slots.is_empty() {
            lines.remove(&self.file);
            LINES_IN_USE.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        // Those who moved into the first two places learn of it: a new head
        // starts contending (its promise runs from now, not from when it
        // joined), a new second starts watching the head's promise.
        if at == 0 {
            if let Some(head) = line.slots.front() {
                head.alive_until.store(
                    nanos_since_epoch(Instant::now() + FIRST_PROMISE),
                    Ordering::Release,
                );
            }
        }
        for slot in line.slots.range(at.min(2)..2.min(line.slots.len())) {
            slot.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn some_file(dir: &Path, name: &str) -> FileId {
        let path = dir.join(name);
        std::fs::write(&path, b"").unwrap();
        crate::os::file_id_at(&path).unwrap()
    }

    #[tokio::test]
    async fn first_come_first_served_and_leaving_wakes_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let file = some_file(dir.path(), "a");
        assert!(Ticket::join_if_waiting(file).is_none(), "no line yet");
        let first = Ticket::join(file);
        let second = Ticket::join(file);
        let third = Ticket::join_if_waiting(file).expect("a line exists");
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
        assert!(Ticket::join_if_waiting(file).is_none(), "the line is gone");
    }

    #[test]
    fn lines_of_different_files_are_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = Ticket::join(some_file(dir.path(), "c"));
        let b = Ticket::join(some_file(dir.path(), "d"));
        assert!(a.is_head() && b.is_head());
        assert_ne!(a.file(), b.file());
    }
}
