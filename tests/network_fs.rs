//! On a file system where inotify cannot see other machines (detected by
//! `statfs` magic), waiting polls instead of watching and still wins; and
//! once the crate knows a lock is on such a file system, a stalled mount
//! does not freeze the runtime: its open, lock and close calls run off it.
//!
//! The tests mount a FUSE file system (`bindfs`, which `scripts/test`
//! installs) over a temporary directory: FUSE is in the same class as NFS
//! and CIFS, since a network FUSE mount (sshfs, s3fs) gets no events for
//! remote changes. A stall is made for real by stopping the `bindfs`
//! process (SIGSTOP): every call into the mount then blocks in the kernel
//! until it is continued. Needs root (or FUSE rights) and /dev/fuse.
#![deny(unsafe_code)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Holder, LIVENESS};
use lockmgr::{LockError, LockMgr};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The tests take turns: one records the crate's `lock try` events through
/// a thread-local subscriber, and tracing's per-call-site interest cache
/// can keep a stale "nobody listens" when another thread reaches the call
/// site while that subscriber is being installed (seen once in CI: the
/// winning try of the polling test went unrecorded).
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `bindfs` mount, run in the foreground so that the test owns its
/// process (to stop it) and unmounts it when dropped.
struct Mount {
    dir: PathBuf,
    daemon: Child,
}

impl Mount {
    fn bindfs(src: &Path, dst: &Path) -> Mount {
        Mount::bindfs_with(src, dst, &[])
    }

    /// [`Mount::bindfs`] with more options for `bindfs`.
    fn bindfs_with(src: &Path, dst: &Path, options: &[&str]) -> Mount {
        let daemon = Command::new("bindfs")
            .arg("-f")
            .args(options)
            .arg(src)
            .arg(dst)
            .stdout(Stdio::null())
            .spawn()
            .expect("bindfs is needed for this test (apt-get install bindfs)");
        let mount = Mount {
            dir: dst.to_path_buf(),
            daemon,
        };
        // Mounted once the directory is on a file system of its own.
        let deadline = std::time::Instant::now() + LIVENESS;
        while !is_mount_point(dst) {
            assert!(std::time::Instant::now() < deadline, "bindfs did not mount");
            std::thread::yield_now();
        }
        mount
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.daemon.id() as i32)
    }

    /// Every call into the mount blocks until [`Stall::drop`].
    fn stall(&self) -> Stall {
        kill(self.pid(), Signal::SIGSTOP).unwrap();
        Stall(self.pid())
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let target = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*target))
}

/// A stopped mount, continued when dropped.
struct Stall(Pid);

impl Drop for Stall {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

fn mounted() -> (tempfile::TempDir, Mount, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mount = Mount::bindfs(&src, &mnt);
    let path = mnt.join("l.lock");
    (dir, mount, path)
}

/// The holder is another process, so that only polling can wake the
/// waiter: no in-process handoff, and no inotify.
#[tokio::test(flavor = "current_thread")]
// Held across awaits on purpose: the other test only takes it whole.
#[allow(clippy::await_holding_lock)]
async fn waiting_on_a_network_class_file_system_polls() {
    let _alone = alone();
    let (_dir, _mount, path) = mounted();
    let holder = Holder::start(&path);
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    let tries = common::TryLog::default();
    let _log = tries.install();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    // On a current-thread runtime one yield runs the waiter to its sleep.
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    assert_eq!(common::watches_on(&path), 0, "watched instead of polling");
    assert_eq!(
        common::blocked_on(&path),
        0,
        "waited in the kernel instead of polling"
    );
    holder.finish();
    let g = common::won(waiter, "the polling waiter missed the release").await;
    assert_eq!(tries.winner_woken_by(), "poll", "{:?}", tries.tries());
    drop(g);
}

/// On such a file system too, a call that does not wait (`acquire(false,
/// _)`, or a budget of zero) makes one try and says `WouldBlock`: it does
/// not wait behind a task of its process that waits for the lock, and a
/// zero budget leaves its try time to be answered. On the old code the
/// first waited for the waiting task's turn until its own budget ran out
/// (`TimedOut`), and the others raced a deadline already past ("the file
/// system did not answer within the wait", even with the lock free).
#[tokio::test(flavor = "current_thread")]
#[allow(clippy::await_holding_lock)]
async fn a_call_that_does_not_wait_tries_once_on_a_network_class_file_system() {
    let _alone = alone();
    let (_dir, _mount, path) = mounted();
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    // A first use, on a healthy mount, tells the crate what file system
    // the lock is on.
    drop(lock.try_acquire().unwrap());
    drop(lock.acquire(true, Duration::ZERO).await.unwrap());
    drop(lock.acquire(false, Duration::ZERO).await.unwrap());
    let holder = Holder::start(&path);
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    // On a current-thread runtime one yield runs the waiter into its wait,
    // which holds the process's turn at polling this lock.
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    for (wait, budget) in [
        (false, Duration::from_secs(10)),
        (false, Duration::ZERO),
        (true, Duration::ZERO),
    ] {
        let err = lock.acquire(wait, budget).await.unwrap_err();
        assert!(
            matches!(err, LockError::WouldBlock { .. }),
            "acquire({wait}, {budget:?}): {err}"
        );
    }
    holder.finish();
    drop(common::won(waiter, "the polling waiter missed the release").await);
}

/// Counts the ticks of a 10 ms interval on the test's runtime, which only
/// tick while nothing blocks that runtime's one thread.
fn ticker() -> Arc<AtomicUsize> {
    let ticks = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let ticks = ticks.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    ticks
}

/// Continues a stalled mount after `after`, whatever the test does: without
/// it, a runtime blocked in the mount would stay blocked for ever.
fn watchdog(pid: Pid, after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let _ = kill(pid, Signal::SIGCONT);
    });
}

/// With `mount` stalled (and continued 10 s later whatever happens), drops
/// what `release` holds, then awaits `acquire`, which must fail: it checks
/// that the runtime ran on meanwhile and that the call's own bound ended
/// it (300 ms, but 1 s for a first try), with `Io` of kind `TimedOut`, and
/// returns that error.
async fn bounded_while_stalled<T, F>(mount: &Mount, release: T, acquire: F) -> LockError
where
    F: std::future::Future<Output = Result<T, LockError>>,
    T: std::fmt::Debug,
{
    let ticks = ticker();
    let stall = mount.stall();
    watchdog(mount.pid(), Duration::from_secs(10));
    // Releasing on the stalled mount: the close must not block the runtime.
    drop(release);
    // Acquiring on it: the open blocks off the runtime, and the caller's own
    // bound still ends the call.
    let started = tokio::time::Instant::now();
    let before = ticks.load(Ordering::SeqCst);
    let err = acquire.await.unwrap_err();
    let took = started.elapsed();
    let ticked = ticks.load(Ordering::SeqCst) - before;
    drop(stall);
    assert!(
        matches!(&err, LockError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the acquire ran {took:?}: its bound did not end it while the mount was stalled"
    );
    assert!(
        ticked >= 10,
        "the runtime stood still while the mount was stalled ({ticked} ticks in {took:?})"
    );
    err
}

#[tokio::test(flavor = "current_thread")]
#[allow(clippy::await_holding_lock)]
async fn a_stalled_mount_does_not_block_the_runtime() {
    let _alone = alone();
    let (_dir, mount, path) = mounted();
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    // A first use, on a healthy mount, tells the crate what file system
    // the lock is on.
    drop(lock.try_acquire().unwrap());
    let guard = lock.acquire(true, Duration::from_secs(5)).await.unwrap();
    let bounded = lock.acquire(true, Duration::from_millis(300));
    let err = bounded_while_stalled(&mount, guard, bounded).await;
    assert!(err.to_string().contains("did not answer"), "{err}");
    // Once the mount is back, the lock works as before.
    drop(lock.acquire(true, LIVENESS).await.unwrap());
}

/// A call that does not wait has no budget to end it on a stalled mount:
/// its one try is given 1 s, whatever timeout it was passed
/// (`acquire(false, _)`), `Duration::MAX` too. On the old code it waited
/// `timeout * max_attempts`, for ever with `Duration::MAX` (until the
/// test's watchdog continued the mount).
#[tokio::test(flavor = "current_thread")]
#[allow(clippy::await_holding_lock)]
async fn a_call_that_does_not_wait_is_not_held_up_by_a_stalled_mount() {
    let _alone = alone();
    let (_dir, mount, path) = mounted();
    let lock = LockMgr::new(&path);
    drop(lock.try_acquire().unwrap());
    let guard = lock.acquire(true, Duration::from_secs(5)).await.unwrap();
    let once = lock.acquire(false, Duration::MAX);
    let err = bounded_while_stalled(&mount, guard, once).await;
    assert!(err.to_string().contains("did not answer"), "{err}");
}

/// The same for a semaphore's permits: once the crate knows the file is on
/// such a file system, a stalled mount blocks neither the release of a
/// permit nor the wait for one, and the caller's bound ends the wait.
#[tokio::test(flavor = "current_thread")]
#[allow(clippy::await_holding_lock)]
async fn a_stalled_mount_does_not_block_a_semaphores_runtime() {
    let _alone = alone();
    let (_dir, mount, path) = mounted();
    let sem = lockmgr::Semaphore::builder(&path, 1)
        .max_attempts(1)
        .build();
    drop(sem.try_acquire().unwrap());
    let permit = sem.acquire(true, Duration::from_secs(5)).await.unwrap();
    let bounded = sem.acquire(true, Duration::from_millis(300));
    bounded_while_stalled(&mount, permit, bounded).await;
    drop(sem.acquire(true, LIVENESS).await.unwrap());
}

/// A leader that steps down on a stalled mount does not block its runtime:
/// the release after its work (here with the file's removal, which goes to
/// the mount's daemon) runs off the runtime, as a dropped guard's does.
/// (The work stalls the mount and returns the stall, which continues the
/// mount when dropped, after the check.)
#[tokio::test(flavor = "current_thread")]
#[allow(clippy::await_holding_lock)]
async fn a_leader_stepping_down_on_a_stalled_mount_does_not_block_the_runtime() {
    let _alone = alone();
    let (_dir, mount, path) = mounted();
    let lock = LockMgr::builder(&path)
        .max_attempts(1)
        .remove_on_release(true)
        .build();
    // A first use, on a healthy mount, tells the crate what file system
    // the lock is on.
    drop(lock.try_acquire().unwrap());
    watchdog(mount.pid(), Duration::from_secs(10));
    let started = tokio::time::Instant::now();
    let stall = lock.lead(|_| std::future::ready(mount.stall())).await;
    let took = started.elapsed();
    drop(stall);
    assert!(
        took < Duration::from_secs(5),
        "stepping down took {took:?}: the release blocked the runtime on the stalled mount"
    );
    drop(lock.acquire(true, LIVENESS).await.unwrap());
}

/// `holders()` of a lock file on a healthy file system does not hang while
/// a process has a file open on a stalled mount: a descriptor is sorted
/// out by its link, its fdinfo and its process's mount list, which ask no
/// file system, before any is `stat`ed. (Before: every descriptor of the
/// host was `stat`ed, and the one on the stalled mount blocked the call
/// until the mount came back.) The mount is a passthrough view of the lock
/// file's own directory, so that a file open there has the lock file's very
/// inode number (the first version of this fix, which went by that number
/// alone, still hung there: found by an adversarial test). It keeps no
/// attributes (`attr_timeout=0`), so that every `stat` there asks its
/// daemon.
#[test]
fn holders_pass_over_a_descriptor_of_a_stalled_mount() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let path = src.join("l");
    let holder = Holder::start(&path);
    let mount = Mount::bindfs_with(&src, &mnt, &["-o", "attr_timeout=0"]);
    // Held open by this very process, one of those `holders()` looks at:
    // the lock file seen through the mount, and another file there.
    let open_there = [
        std::fs::File::open(mnt.join("l")).unwrap(),
        std::fs::File::create(mnt.join("open")).unwrap(),
    ];
    let lock = LockMgr::new(&path);
    watchdog(mount.pid(), Duration::from_secs(10));
    let stall = mount.stall();
    let started = std::time::Instant::now();
    let holders = lock.holders();
    let took = started.elapsed();
    drop(stall);
    // Closed once the mount is back: its close asks the daemon too.
    drop(open_there);
    let holders = holders.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "holders() took {took:?}: it waited for the stalled mount"
    );
    let pids: Vec<i32> = holders.holding.iter().map(|h| h.pid as i32).collect();
    assert_eq!(pids, [holder.pid()], "{holders:?}");
    holder.finish();
}
