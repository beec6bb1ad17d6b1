//! The process-wide inotify watcher that wakes waiters when a lock file is
//! closed, changed or removed.
//!
//! Why one instance for the whole process: inotify instances are limited per
//! user (`fs.inotify.max_user_instances`, 128 by default), so one instance per
//! waiter fails at the 129th waiter, and other programs of the same user
//! suffer too. All waiters of all locks share this one.
//!
//! Why a plain thread reads it: a tokio `AsyncFd` belongs to the runtime that
//! registered it and stops working when that runtime shuts down, while a
//! process may run several runtimes at once or one after another. A thread of
//! our own that blocks in `read(2)` belongs to no runtime; it wakes waiters
//! through [`tokio::sync::Notify`], which works across runtimes.
//!
//! Watches are reference-counted per watch descriptor: adding the same inode
//! twice returns the same descriptor, and removing it would remove it for
//! every waiter of that inode.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::sync::Notify;

/// The process-wide watcher. Created on first use, lives until the process
/// exits.
pub(crate) struct Watcher {
    registry: Mutex<Registry>,
    next_waiter: AtomicU64,
    /// True while the reader thread runs: without it no event is delivered,
    /// and waiters must poll instead.
    reading: AtomicBool,
}

struct Registry {
    api: Watches,
    by_wd: HashMap<i32, Arc<Entry>>,
}

/// One inotify watch (one inode) and the waiters sleeping on it.
struct Entry {
    wd: WatchDescriptor,
    waiters: Mutex<HashMap<u64, Arc<Notify>>>,
    /// Set when the kernel dropped the watch (`IN_IGNORED`) or the reader
    /// thread died: no event will come any more.
    dead: AtomicBool,
}

impl Entry {
    fn wake_all(&self) {
        for n in lock(&self.waiters).values() {
            // `notify_one` stores a permit when the waiter is not parked at
            // this moment (it may be busy trying the lock), so no wake-up is
            // lost between its try and its next sleep.
            n.notify_one();
        }
    }
}

/// A waiter's registration. Dropping it unregisters the waiter and removes
/// the inotify watch when it was the last one on that inode.
pub(crate) struct Watch {
    watcher: &'static Watcher,
    entry: Arc<Entry>,
    id: u64,
    notify: Arc<Notify>,
}

/// The events that can mean "the lock may be free now": a close (the kernel
/// drops OFD and flock locks on the last close of the open file description),
/// or a change to the file's identity (unlinked, renamed, attributes).
fn mask() -> WatchMask {
    // Never WatchMask::all(): it carries ONESHOT, ONLYDIR and MASK_CREATE.
    WatchMask::CLOSE_WRITE
        | WatchMask::CLOSE_NOWRITE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the maps in a
    // state worse than "a waiter too many", so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

static WATCHER: OnceLock<Watcher> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

impl Watcher {
    /// The process-wide watcher, created on the first call that succeeds.
    ///
    /// A failure (typically `EMFILE` at the per-user instance limit) is not
    /// remembered: a later call tries again, since the limit is shared with
    /// other programs that may have given instances back.
    pub(crate) fn global() -> io::Result<&'static Watcher> {
        if let Some(w) = WATCHER.get() {
            return Ok(w);
        }
        let _init = lock(&INIT);
        if let Some(w) = WATCHER.get() {
            return Ok(w);
        }
        Watcher::start_in(&WATCHER)
    }

    /// Makes a watcher in `slot` (empty) and starts its reader thread.
    fn start_in(slot: &'static OnceLock<Watcher>) -> io::Result<&'static Watcher> {
        let inotify = Inotify::init()?;
        let watcher = Watcher {
            registry: Mutex::new(Registry {
                api: inotify.watches(),
                by_wd: HashMap::new(),
            }),
            next_waiter: AtomicU64::new(0),
            reading: AtomicBool::new(true),
        };
        let w: &'static Watcher = slot.get_or_init(|| watcher);
        if let Err(e) = std::thread::Builder::new()
            .name("lockmgr-inotify".into())
            .spawn(move || w.run(inotify))
        {
            w.reading.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(w)
    }

    /// Starts watching the file open at `fd` for this waiter.
    ///
    /// The watch goes through `/proc/self/fd/N`, which names the very inode
    /// the waiter has open even if the path was since replaced or removed.
    /// Without `/proc`, `path` is watched instead (the inode now at that
    /// path, which is the one opened unless the file was just replaced).
    pub(crate) fn watch(&'static self, fd: BorrowedFd<'_>, path: &Path) -> io::Result<Watch> {
        if !self.reading.load(Ordering::Acquire) {
            return Err(io::Error::other("the inotify reader thread is not running"));
        }
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let notify = Arc::new(Notify::new());
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        let mut reg = lock(&self.registry);
        let wd = match reg.api.add(&proc_path, mask()) {
            Ok(wd) => wd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => reg.api.add(path, mask())?,
            Err(e) => return Err(e),
        };
        let key = wd.get_watch_descriptor_id();
        let entry = reg
            .by_wd
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Entry {
                    wd,
                    waiters: Mutex::new(HashMap::new()),
                    dead: AtomicBool::new(false),
                })
            })
            .clone();
        lock(&entry.waiters).insert(id, notify.clone());
        Ok(Watch {
            watcher: self,
            entry,
            id,
            notify,
        })
    }

    /// The reader thread: blocks in `read(2)` and wakes the waiters of every
    /// inode an event names.
    fn run(&'static self, mut inotify: Inotify) {
        let mut buf = [0u8; 4096];
        loop {
            let events = match inotify.read_events_blocking(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "lockmgr: inotify reader failed; waiters fall back to polling");
                    self.reading.store(false, Ordering::Release);
                    self.kill_all();
                    return;
                }
            };
            for event in events {
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    // Events were dropped: anyone may have missed theirs.
                    tracing::debug!("lockmgr: inotify queue overflow, waking every waiter");
                    let reg = lock(&self.registry);
                    for entry in reg.by_wd.values() {
                        entry.wake_all();
                    }
                    continue;
                }
                let key = event.wd.get_watch_descriptor_id();
                let mut reg = lock(&self.registry);
                let Some(entry) = reg.by_wd.get(&key).cloned() else {
                    continue;
                };
                if event.mask.contains(EventMask::IGNORED) {
                    // The kernel dropped the watch (inode gone, fs unmounted):
                    // the descriptor may be reused for another inode.
                    entry.dead.store(true, Ordering::Release);
                    reg.by_wd.remove(&key);
                }
                drop(reg);
                entry.wake_all();
            }
        }
    }

    fn kill_all(&self) {
        let mut reg = lock(&self.registry);
        for (_, entry) in reg.by_wd.drain() {
            entry.dead.store(true, Ordering::Release);
            entry.wake_all();
        }
    }
}

impl Watch {
    /// Resolves on the next event for this inode since the last call (an
    /// event that came in between is kept, not lost).
    pub(crate) async fn changed(&self) {
        self.notify.notified().await
    }

    /// False once no more events can come for this watch; the waiter must
    /// then poll.
    pub(crate) fn is_live(&self) -> bool {
        !self.entry.dead.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut reg = lock(&self.watcher.registry);
        let last = {
            let mut waiters = lock(&self.entry.waiters);
            waiters.remove(&self.id);
            waiters.is_empty()
        };
        if !last {
            return;
        }
        let key = self.entry.wd.get_watch_descriptor_id();
        // Only remove the watch if the map still holds *this* entry: after
        // IN_IGNORED the descriptor may already name another inode.
        if reg
            .by_wd
            .get(&key)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            reg.by_wd.remove(&key);
            // EINVAL means the kernel already dropped it: nothing to undo.
            let _ = reg.api.remove(self.entry.wd.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsFd;
    use std::time::Duration;

    fn is_watched(w: &Watch) -> bool {
        let key = w.entry.wd.get_watch_descriptor_id();
        lock(&w.watcher.registry)
            .by_wd
            .get(&key)
            .is_some_and(|e| Arc::ptr_eq(e, &w.entry))
    }

    async fn fires(w: &Watch) -> bool {
        tokio::time::timeout(Duration::from_secs(30), w.changed())
            .await
            .is_ok()
    }

    #[test]
    fn watches_are_refcounted_per_inode_and_survive_runtimes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let a = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        let b = File::open(&path).unwrap();
        let w = Watcher::global().unwrap();

        // The first runtime registers both waiters and then goes away.
        let (wa, wb) = {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let wa = w.watch(a.as_fd(), &path).unwrap();
                let wb = w.watch(b.as_fd(), &path).unwrap();
                assert!(Arc::ptr_eq(&wa.entry, &wb.entry), "one inode, one entry");
                drop(File::open(&path).unwrap());
                assert!(fires(&wa).await && fires(&wb).await);
                (wa, wb)
            })
        };

        // A second runtime still gets events through the same watcher.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            drop(wa);
            assert!(is_watched(&wb), "the other waiter keeps the watch");
            // An event that comes while nobody is parked is kept.
            drop(File::open(&path).unwrap());
            assert!(fires(&wb).await);
            let entry = wb.entry.clone();
            drop(wb);
            let key = entry.wd.get_watch_descriptor_id();
            assert!(
                !lock(&w.registry)
                    .by_wd
                    .get(&key)
                    .is_some_and(|e| Arc::ptr_eq(e, &entry)),
                "last waiter removes the watch"
            );
        });
    }

    /// Events dropped by a full inotify queue (`IN_Q_OVERFLOW`) wake every
    /// waiter, whose own event may be among the dropped. The watcher here
    /// has a queue of one event (`fs.inotify.max_queued_events` is read when
    /// an instance is made), and its reader is held up (by the test holding
    /// its registry) while the events come, so the waiter's own close event
    /// is certainly dropped.
    #[test]
    fn a_queue_overflow_wakes_every_waiter() {
        const KNOB: &str = "/proc/sys/fs/inotify/max_queued_events";
        static SMALL: OnceLock<Watcher> = OnceLock::new();
        let old = std::fs::read_to_string(KNOB).unwrap();
        std::fs::write(KNOB, "1").expect("setting fs.inotify.max_queued_events needs root");
        let started = Watcher::start_in(&SMALL);
        std::fs::write(KNOB, old.trim()).unwrap();
        let w = started.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (a, c) = (dir.path().join("a"), dir.path().join("c"));
        std::fs::write(&a, b"").unwrap();
        std::fs::write(&c, b"").unwrap();
        let (fa, fc) = (File::open(&a).unwrap(), File::open(&c).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let wa = w.watch(fa.as_fd(), &a).unwrap();
            let wc = w.watch(fc.as_fd(), &c).unwrap();
            {
                let _stalled = lock(&w.registry);
                for _ in 0..10 {
                    drop(File::open(&c).unwrap());
                }
                // The waiter's own event: dropped, the queue is full.
                drop(File::open(&a).unwrap());
            }
            assert!(fires(&wa).await, "the overflow did not wake the waiter");
            drop((wa, wc));
        });
    }
}
