//! The process-wide inotify watcher that wakes waiters when a lock file is
//! closed, changed or removed.
//!
//! Why one instance for the whole process: inotify instances are limited per
//! user (`fs.inotify.max_user_instances`, 128 by default), so one instance per
//! waiter fails at the 129th waiter, and other programs of the same user
//! suffer too. All waiters of all locks share this one.
//!
//! Who reads it: the waiters themselves, each in its own task. Every
//! [`Watch`] registers a duplicate of the instance's descriptor with the I/O
//! driver of the runtime that polls it, so an event wakes that runtime's
//! thread directly, and the woken task reads the queue and wakes the waiters
//! of every inode the events name (through [`tokio::sync::Notify`], which
//! works across runtimes). No thread of ours is woken on the way: measured
//! on two cores, a reader thread of our own (or a helper thread blocked in
//! the kernel's lock wait) woken beside the waiter's runtime made a handoff
//! about twice as slow. The price: an event wakes the runtime of every
//! watching waiter of the process (one per file waited for), and those it
//! is not for read nothing and sleep again. A waiter whose runtime has gone
//! reads through the runtime it is polled in next.
//!
//! Watches are reference-counted per watch descriptor: adding the same inode
//! twice returns the same descriptor, and removing it would remove it for
//! every waiter of that inode.
//!
//! After `fork`, the child makes an instance of its own at its first wait:
//! reading the inherited one would take the parent's events.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::forkable::Forkable;
use crate::os;

/// The process-wide watcher. Created on first use, lives until the process
/// exits.
pub(crate) struct Watcher {
    registry: Mutex<Registry>,
    /// The instance, read by whichever waiter's task finds it ready first;
    /// the lock also makes a reader that comes second wait until the first
    /// has woken everyone its events name.
    source: Mutex<Inotify>,
    next_waiter: AtomicU64,
}

struct Registry {
    api: Watches,
    by_wd: HashMap<i32, Arc<Entry>>,
}

/// One inotify watch (one inode) and the waiters sleeping on it.
struct Entry {
    wd: WatchDescriptor,
    waiters: Mutex<HashMap<u64, Arc<Notify>>>,
    /// Set when the kernel dropped the watch (`IN_IGNORED`) or the instance
    /// could not be read: no event will come any more.
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
    /// The instance's readiness, in the runtime this watch was last polled
    /// in; `None` once no runtime would have it (events then come only
    /// through other waiters' reads, and the waiter's own periodic tries).
    ready: Option<AsyncFd<OwnedFd>>,
    /// The runtime `ready` is registered with.
    home: Option<tokio::runtime::Id>,
    /// The instance was found ready and left unread: the next call reads.
    unread: bool,
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

/// This process's watcher, once made (a forked child forgets its parent's).
static WATCHER: Forkable<Option<&'static Watcher>> = Forkable::new();

impl Watcher {
    /// The process-wide watcher, created on the first call that succeeds.
    ///
    /// A failure (typically `EMFILE` at the per-user instance limit) is not
    /// remembered: a later call tries again, since the limit is shared with
    /// other programs that may have given instances back.
    pub(crate) fn global() -> io::Result<&'static Watcher> {
        let mut slot = WATCHER.lock();
        if let Some(w) = *slot {
            return Ok(w);
        }
        let w = Watcher::new()?;
        // Lives as long as the process: watches borrow it.
        let w: &'static Watcher = Box::leak(Box::new(w));
        *slot = Some(w);
        Ok(w)
    }

    fn new() -> io::Result<Watcher> {
        let inotify = Inotify::init()?;
        Ok(Watcher {
            registry: Mutex::new(Registry {
                api: inotify.watches(),
                by_wd: HashMap::new(),
            }),
            source: Mutex::new(inotify),
            next_waiter: AtomicU64::new(0),
        })
    }

    /// Starts watching the file open at `fd` for this waiter, whose task's
    /// runtime will read the instance when it is ready. Must be called from
    /// within a Tokio runtime with its I/O driver enabled.
    ///
    /// The watch goes through `/proc/self/fd/N`, which names the very inode
    /// the waiter has open even if the path was since replaced or removed.
    /// Without `/proc`, `path` is watched instead (the inode now at that
    /// path, which is the one opened unless the file was just replaced).
    pub(crate) fn watch(&'static self, fd: BorrowedFd<'_>, path: &Path) -> io::Result<Watch> {
        let ready = self.readable_here()?;
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
            ready: Some(ready),
            home: os::runtime_id(),
            unread: false,
        })
    }

    /// The instance's readiness, registered with the calling task's runtime.
    fn readable_here(&self) -> io::Result<AsyncFd<OwnedFd>> {
        let source = lock(&self.source);
        os::readable_here(source.as_fd())
    }

    /// Reads every queued event, without blocking, and wakes the waiters of
    /// every inode they name. An error other than "nothing more to read"
    /// ends every watch: waiters then fall back to polling.
    fn read_and_wake(&self) -> io::Result<()> {
        let mut source = lock(&self.source);
        let mut buf = [0u8; 4096];
        loop {
            let events = match source.read_events(&mut buf) {
                Ok(events) => events,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(error = %e, "lockmgr: cannot read inotify events; waiters fall back to polling");
                    self.kill_all();
                    return Err(e);
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
    /// event that came in between is kept, not lost), or when the instance
    /// has events not read yet, which may be this inode's: the caller tries
    /// at once, and the events are read (and their waiters woken) at the
    /// next call. Measured, reading first made a handoff slower by the two
    /// reads; a wake-up for another inode costs a try.
    ///
    /// Cancel safe: an event read here for this waiter is kept as a permit,
    /// and one not read yet stays in the queue.
    ///
    /// True for an event of this inode, false for events not read yet.
    pub(crate) async fn changed(&mut self) -> bool {
        loop {
            if self.ready.is_some() && os::runtime_id() != self.home {
                // Moved to another runtime, which the first one's driver
                // does not wake (it may be alive and idle).
                self.register_here();
            }
            let notified = self.notify.notified();
            let Some(ready) = &self.ready else {
                notified.await;
                return true;
            };
            let unread = &mut self.unread;
            let read = tokio::select! {
                biased;
                () = notified => return true,
                ready = ready.readable() => ready.map(|mut guard| {
                    if !*unread {
                        // Left ready: the next call reads.
                        *unread = true;
                        return None;
                    }
                    *unread = false;
                    // Read until the queue is empty, then clear: an event
                    // after the read is a new readiness, which tokio keeps.
                    let read = self.watcher.read_and_wake();
                    guard.clear_ready();
                    Some(read)
                }),
            };
            match read {
                Ok(None) => return false,
                // This waiter's own event, if among those read, is a permit
                // for the next round now.
                Ok(Some(Ok(()))) => {}
                // Nothing more will come: the caller finds the watch dead.
                Ok(Some(Err(_))) => return true,
                // The runtime the readiness was registered with is gone:
                // register with the one polling now.
                Err(_) => self.register_here(),
            }
        }
    }

    /// Registers the instance's readiness with the runtime polling now.
    fn register_here(&mut self) {
        self.ready = self.watcher.readable_here().ok();
        self.home = os::runtime_id();
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

    /// Whether an event of `w`'s inode comes within 30 s (events of the
    /// instance not read yet may come first).
    async fn fires(w: &mut Watch) -> bool {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !w.changed().await {}
        })
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
                let mut wa = w.watch(a.as_fd(), &path).unwrap();
                let mut wb = w.watch(b.as_fd(), &path).unwrap();
                assert!(Arc::ptr_eq(&wa.entry, &wb.entry), "one inode, one entry");
                drop(File::open(&path).unwrap());
                assert!(fires(&mut wa).await && fires(&mut wb).await);
                (wa, wb)
            })
        };

        // A second runtime still gets events through the same watcher.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut wb = wb;
        rt.block_on(async {
            drop(wa);
            assert!(is_watched(&wb), "the other waiter keeps the watch");
            // An event that comes while nobody is parked is kept.
            drop(File::open(&path).unwrap());
            assert!(fires(&mut wb).await);
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
    /// an instance is made), and nobody reads it while the events come (its
    /// only reader is the test's own task, busy making them), so the
    /// waiter's own close event is certainly dropped.
    #[test]
    fn a_queue_overflow_wakes_every_waiter() {
        const KNOB: &str = "/proc/sys/fs/inotify/max_queued_events";
        let old = std::fs::read_to_string(KNOB).unwrap();
        std::fs::write(KNOB, "1").expect("setting fs.inotify.max_queued_events needs root");
        let made = Watcher::new();
        std::fs::write(KNOB, old.trim()).unwrap();
        let w: &'static Watcher = Box::leak(Box::new(made.unwrap()));

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
            let mut wa = w.watch(fa.as_fd(), &a).unwrap();
            let wc = w.watch(fc.as_fd(), &c).unwrap();
            for _ in 0..10 {
                drop(File::open(&c).unwrap());
            }
            // The waiter's own event: dropped, the queue is full.
            drop(File::open(&a).unwrap());
            assert!(fires(&mut wa).await, "the overflow did not wake the waiter");
            drop((wa, wc));
        });
    }
}
