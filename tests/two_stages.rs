//! A wait has two stages. For its first 500 ms the head of the line sleeps
//! on inotify close events that its own runtime reads: a holder's close
//! wakes the waiting task's runtime thread and no other (no helper thread
//! blocked in the kernel, no reader thread), the fastest handoff. After
//! that the wait settles into the kernel's own queue, on a helper thread,
//! where it needs no timer, and keeps its watch. The holders are other
//! processes, so that only the kernel can tell the waiter of the release.
//! The tests take turns (`SERIAL`): two install a thread-local log of the tries, which misses
//! events when another thread meets the same `tracing` call sites first,
//! at the same time.
#![deny(unsafe_code)]

mod common;

use std::time::Duration;

use common::{Foreign, Holder, TryLog, LIVENESS};
use lockmgr::LockMgr;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Names of this process's threads.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// A task of this process waiting for the lock at `path`, which a helper
/// process holds, with its tries logged.
struct Waiting<H = Holder> {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    tries: TryLog,
    _log: tracing::subscriber::DefaultGuard,
    holder: H,
    waiter: tokio::task::JoinHandle<Result<lockmgr::LockGuard, lockmgr::LockError>>,
}

/// Starts a holder process (this crate's, which unlocks and then closes)
/// and a waiting task (on the calling thread's runtime, whose tries are
/// logged), and returns once the task sleeps on the lock.
async fn waiting() -> Waiting {
    waiting_behind(Holder::start).await
}

/// [`waiting`], with the holder process that `start` starts.
async fn waiting_behind<H>(start: impl FnOnce(&std::path::Path) -> H) -> Waiting<H> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let tries = TryLog::default();
    let log = tries.install();
    let holder = start(&path);
    let lock = LockMgr::new(&path);
    let waiter = tokio::spawn(async move { lock.acquire(true, LIVENESS).await });
    common::until_waiting(&path).await;
    Waiting {
        _dir: dir,
        path,
        tries,
        _log: log,
        holder,
        waiter,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_short_wait_is_woken_by_the_close_in_its_own_runtime() {
    let _serial = SERIAL.lock().await;
    // Kept whole: its temporary directory and log live to the end.
    let w = waiting().await;
    let (path, tries) = (&w.path, &w.tries);
    let (holder, waiter) = (w.holder, w.waiter);
    // Watching, with nothing blocked in the kernel and no thread of ours
    // to wake: the release will wake this runtime's thread only.
    assert_eq!(
        common::waiting_on(path),
        (1, 1, 0),
        "(fds, watches, blocked) while a short wait sleeps"
    );
    let ours: Vec<String> = threads()
        .into_iter()
        .filter(|t| t.starts_with("lockmgr"))
        .collect();
    assert!(
        !ours.iter().any(|t| t == "lockmgr-inotify"),
        "an inotify reader thread runs: {ours:?}"
    );
    holder.finish();
    drop(common::won(waiter, "the watching waiter missed the close").await);
    assert_eq!(tries.winner_woken_by(), "event", "{:?}", tries.tries());
}

/// Returns once the wait for `path` has settled into the kernel's queue:
/// its helper's copies of the descriptor (one kept, one in the blocked
/// call) blocked in the kernel, the watch kept.
async fn until_settled(path: &std::path::Path) {
    tokio::time::timeout(LIVENESS, async {
        while common::waiting_on(path) != (3, 1, 1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never settled: {:?}", common::waiting_on(path)));
}

/// Returns once `path` has `n` descriptors of this process open on it.
async fn until_fds_on(path: &std::path::Path, n: usize) {
    tokio::time::timeout(LIVENESS, async {
        while common::fds_on(path) != n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} descriptors, not {n}", common::fds_on(path)));
}

#[tokio::test(flavor = "current_thread")]
async fn a_long_wait_settles_into_the_kernel_queue() {
    let _serial = SERIAL.lock().await;
    // A holder that unlocks and keeps its descriptor: no close event, so
    // only the kernel can tell.
    let w = waiting_behind(|path| Foreign::start("ofd", "ex", path)).await;
    let (path, tries) = (&w.path, &w.tries);
    let (mut holder, waiter) = (w.holder, w.waiter);
    assert_eq!(common::waiting_on(path), (1, 1, 0), "watching first");
    until_settled(path).await;
    assert_eq!(holder.command("unlock"), "unlocked");
    let guard = common::won(waiter, "the settled waiter missed the release").await;
    assert_eq!(tries.winner_woken_by(), "kernel", "{:?}", tries.tries());
    // The helper's copy of the descriptor went with the claim: the guard's
    // release is the last close of the open file description, which the
    // waiters of other processes that watch the file are woken by.
    assert_eq!(
        common::fds_on(path),
        1,
        "descriptors on the file while the guard holds it: {:?}",
        common::fd_targets()
    );
    drop(guard);
}

/// Keeps this process's helper threads (`lockmgr-wait`) from running while
/// it lives: each is bound to one CPU, where a real-time (`SCHED_FIFO`)
/// thread spins, which no thread of the normal class can preempt (the
/// kernel lets them have the CPU again only after the real-time thread has
/// had it for most of a second, longer than any use here). Unbound on drop.
struct Starved {
    helpers: Vec<nix::unistd::Pid>,
    cpus: nix::sched::CpuSet,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    spinner: Option<std::thread::JoinHandle<()>>,
}

impl Starved {
    fn helpers() -> Starved {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        use nix::unistd::Pid;
        let helpers: Vec<Pid> = helper_threads()
            .into_iter()
            .map(|(tid, _)| Pid::from_raw(tid))
            .collect();
        assert!(!helpers.is_empty(), "no helper thread: {:?}", threads());
        let cpus = sched_getaffinity(Pid::from_raw(0)).unwrap();
        let mut allowed = (0..CpuSet::count()).filter(|&c| cpus.is_set(c).unwrap());
        let cpu = allowed.next().unwrap();
        assert!(
            allowed.next().is_some(),
            "two CPUs are needed: one to starve, one to run the test"
        );
        let mut one = CpuSet::new();
        one.set(cpu).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (spinning, started) = std::sync::mpsc::channel();
        let spinner = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                sched_setaffinity(Pid::from_raw(0), &one).unwrap();
                spinning.send(nix::unistd::gettid()).unwrap();
                // Bounded, should a test fail while it spins.
                let until = std::time::Instant::now() + Duration::from_secs(3);
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && std::time::Instant::now() < until
                {
                    std::hint::spin_loop();
                }
            })
        };
        let spinner_tid = started.recv().unwrap();
        for &tid in &helpers {
            // An idle helper may have exited meanwhile.
            let _ = sched_setaffinity(tid, &one);
        }
        let status = std::process::Command::new("chrt")
            .args(["--fifo", "-p", "1", &spinner_tid.to_string()])
            .status();
        let starved = Starved {
            helpers,
            cpus,
            stop,
            spinner: Some(spinner),
        };
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "chrt: {status:?} (util-linux's chrt, and the right to use SCHED_FIFO, are needed)"
        );
        starved
    }
}

/// This process's helper threads, with their state (`R` runnable, `S`
/// asleep, ...).
fn helper_threads() -> Vec<(i32, char)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.trim() == "lockmgr-wait")
        })
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // "tid (comm) S ...": the state follows the command's name.
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some((t.file_name().to_str()?.parse().ok()?, state))
        })
        .collect()
}

/// Asserts that a helper thread was woken and is kept from running (the
/// premise of the tests that starve it; the kernel lets a starved thread
/// run after a second or so).
fn assert_helper_kept_off() {
    assert!(
        helper_threads().iter().any(|&(_, state)| state == 'R'),
        "no helper is kept waiting to run: {:?}",
        helper_threads()
    );
}

impl Drop for Starved {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(spinner) = self.spinner.take() {
            spinner.join().unwrap();
        }
        for &tid in &self.helpers {
            // The thread may have exited meanwhile.
            let _ = nix::sched::sched_setaffinity(tid, &self.cpus);
        }
    }
}

/// Lets `holder` release (an unlock, then a close) while the settled
/// `waiter`'s helper thread is kept from running, and returns the waiter's
/// guard, won by a try on the close event in its own runtime, with the
/// helper still kept.
async fn won_at_the_close(
    tries: &TryLog,
    holder: Holder,
    waiter: tokio::task::JoinHandle<Result<lockmgr::LockGuard, lockmgr::LockError>>,
) -> (lockmgr::LockGuard, Starved) {
    let starved = Starved::helpers();
    // Off this runtime's thread, which must be free to run at the close.
    let finished = tokio::task::spawn_blocking(move || holder.finish());
    let guard = common::won(waiter, "the settled waiter missed the release").await;
    finished.await.unwrap();
    assert_eq!(tries.winner_woken_by(), "event", "{:?}", tries.tries());
    assert_helper_kept_off();
    (guard, starved)
}

/// A settled wait keeps its watch: a holder that unlocks and then closes
/// (this crate's holder) is followed by a try in the waiter's own runtime,
/// woken by the close, without waiting for the helper thread (which the
/// kernel woke at the unlock, and which is kept from running here). The
/// lock so taken stays held when the helper's call returns with it (the
/// same open file description's own lock), and is free after the release.
#[tokio::test(flavor = "current_thread")]
async fn a_settled_wait_is_woken_by_the_close_in_its_own_runtime() {
    let _serial = SERIAL.lock().await;
    let w = waiting().await;
    let (path, tries) = (&w.path, &w.tries);
    let (holder, waiter) = (w.holder, w.waiter);
    until_settled(path).await;
    let (guard, starved) = won_at_the_close(tries, holder, waiter).await;
    // The helper, let run, returns with the lock its open file description
    // already holds, closes its copy and leaves the lock alone.
    drop(starved);
    until_fds_on(path, 1).await;
    assert!(
        matches!(
            LockMgr::new(path).try_acquire(),
            Err(lockmgr::LockError::WouldBlock { .. })
        ),
        "the lock was let go under its holder"
    );
    drop(guard);
    drop(
        LockMgr::new(path)
            .try_acquire()
            .expect("free after the release"),
    );
}

/// As above, with the lock released (and taken by another) before the
/// helper's call returns: the helper's call then waits behind the new
/// holder, and what it is granted after that is given back, its copy
/// closed: the lock is free again, nothing of the wait left.
#[tokio::test(flavor = "current_thread")]
async fn a_lock_taken_beside_a_settled_wait_and_released_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    let w = waiting().await;
    let (path, tries) = (&w.path, &w.tries);
    let (holder, waiter) = (w.holder, w.waiter);
    until_settled(path).await;
    let (guard, starved) = won_at_the_close(tries, holder, waiter).await;
    drop(guard);
    assert_helper_kept_off();
    let next = LockMgr::new(path)
        .try_acquire()
        .expect("free after the release");
    drop(starved);
    // The helper's call, let run, finds the new holder's lock and waits.
    tokio::time::timeout(LIVENESS, async {
        while common::blocked_on(path) != 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the helper's call never waited again");
    drop(next);
    until_fds_on(path, 0).await;
    assert_eq!(common::blocked_on(path), 0);
    drop(LockMgr::new(path).try_acquire().expect("free at the end"));
}

/// A lock taken beside a settled wait and released while the helper's call
/// still holds a copy of the descriptor: the release is not the last close
/// of the open file description, so it sends a close event of its own, and
/// the next waiter (here the next task in line, watching the file) is woken
/// by it, not by its next periodic try.
#[tokio::test(flavor = "current_thread")]
async fn a_release_beside_a_helper_still_in_the_kernel_wakes_the_next_waiter() {
    let _serial = SERIAL.lock().await;
    let w = waiting().await;
    let (path, tries) = (&w.path, &w.tries);
    let (holder, waiter) = (w.holder, w.waiter);
    until_settled(path).await;
    let next = {
        let lock = LockMgr::new(path);
        tokio::spawn(async move { lock.acquire(true, LIVENESS).await })
    };
    let (guard, starved) = won_at_the_close(tries, holder, waiter).await;
    // The next in line is now first: it tries, loses, watches, tries again.
    let won_at = tries.tries().iter().rposition(|(won, _)| *won).unwrap() + 1;
    tokio::time::timeout(LIVENESS, async {
        while tries.tries()[won_at..]
            .iter()
            .filter(|(won, _)| !won)
            .count()
            < 2
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the next in line never tried");
    assert_helper_kept_off();
    drop(guard);
    let next = common::won(next, "the next in line missed the release").await;
    assert_eq!(tries.winner_woken_by(), "event", "{:?}", tries.tries());
    drop(starved);
    drop(next);
}

/// A lock file held by a helper process, and a lock of it whose budget is
/// one attempt.
fn held_elsewhere() -> (tempfile::TempDir, std::path::PathBuf, Holder, LockMgr) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let holder = Holder::start(&path);
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    (dir, path, holder, lock)
}

/// A wait settled in the kernel ends at its deadline, not before, with a
/// last look at the lock.
#[tokio::test(flavor = "current_thread")]
async fn a_settled_wait_ends_at_its_deadline() {
    let _serial = SERIAL.lock().await;
    const BUDGET: Duration = Duration::from_millis(1500);
    let (_dir, path, holder, lock) = held_elsewhere();
    let started = std::time::Instant::now();
    let waiter = tokio::spawn(async move { lock.acquire(true, BUDGET).await });
    // Settled before the deadline (the first stage lasts 500 ms).
    tokio::time::timeout(LIVENESS, async {
        while common::waiting_on(&path) != (3, 1, 1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never settled: {:?}", common::waiting_on(&path)));
    let ended = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the settled wait outlived its deadline")
        .unwrap();
    let waited = started.elapsed();
    match ended {
        Err(lockmgr::LockError::TimedOut { waited: said, .. }) => {
            assert!(said >= BUDGET, "said it waited {said:?}, under {BUDGET:?}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(
        waited >= BUDGET,
        "ended after {waited:?}, before {BUDGET:?}"
    );
    holder.finish();
}

/// Under a paused Tokio clock (`start_paused`) a wait settled in the kernel
/// still ends at its deadline as that clock reads it, auto-advanced: an
/// hour's budget ends at once, not after an hour of real time.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_settled_wait_follows_a_paused_clock() {
    let _serial = SERIAL.lock().await;
    const BUDGET: Duration = Duration::from_secs(3600);
    let (_dir, _path, holder, lock) = held_elsewhere();
    // Real time, which the paused clock does not advance.
    let (tx, watchdog) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(LIVENESS);
        let _ = tx.send(());
    });
    let ended = tokio::select! {
        ended = lock.acquire(true, BUDGET) => ended,
        _ = watchdog => panic!("the wait did not follow the paused clock"),
    };
    assert!(
        matches!(ended, Err(lockmgr::LockError::TimedOut { .. })),
        "{ended:?}"
    );
    holder.finish();
}

/// A wait settled in the kernel, its future then moved to another runtime
/// (the first one shut down), still ends at its deadline, not before: its
/// deadline's timer belonged to the first runtime.
#[test]
fn a_settled_wait_moved_to_another_runtime_ends_at_its_deadline() {
    let _serial = SERIAL.blocking_lock();
    const BUDGET: Duration = Duration::from_millis(2500);
    let (_dir, path, holder, lock) = held_elsewhere();
    let started = std::time::Instant::now();
    let mut wait = Box::pin(lock.acquire(true, BUDGET));
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let settled = async {
            while common::waiting_on(&path) != (3, 1, 1) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            _ = &mut wait => panic!("the wait ended before it settled"),
            _ = settled => {}
        }
    });
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ended = second.block_on(wait);
    let waited = started.elapsed();
    assert!(
        matches!(ended, Err(lockmgr::LockError::TimedOut { .. })),
        "{ended:?}"
    );
    assert!(
        waited >= BUDGET,
        "ended after {waited:?}, before {BUDGET:?}"
    );
    holder.finish();
}

/// Under a paused Tokio clock the first stage ends when that clock says it
/// has lasted its 500 ms, not after 500 ms of real time: the kernel timer
/// that ends it on a running clock is not used on a paused one.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_first_stage_follows_a_paused_clock() {
    let _serial = SERIAL.lock().await;
    let tries = TryLog::default();
    let _log = tries.install();
    let (_dir, path, holder, lock) = held_elsewhere();
    let waiter = tokio::spawn(async move { lock.acquire(true, Duration::from_secs(3600)).await });
    common::until_waiting(&path).await;
    // The runtime idles: the paused clock jumps to the waiter's recheck at
    // the stage's end, which runs before this sleep's end (a second in, on
    // that clock, and at once in real time).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        tries.tries().iter().any(|(_, woke)| woke == "recheck"),
        "no recheck within a second of the paused clock: {:?}",
        tries.tries()
    );
    waiter.abort();
    holder.finish();
}

/// A wait in its first stage, its future then moved to another runtime (the
/// first one shut down, with the driver of the kernel timer that would end
/// the stage), still settles into the kernel's queue, and wins at the
/// release.
#[test]
fn a_first_stage_moved_to_another_runtime_still_settles() {
    first_stage_moved(false, true);
}

/// The same, the first runtime left alive but idle (its `block_on` over):
/// its drivers deliver nothing to the second, where the wait now runs, so
/// the watch and the stage's timer are registered there anew.
#[test]
fn a_first_stage_moved_from_a_runtime_left_idle_still_settles() {
    first_stage_moved(false, false);
}

/// The same, begun on a runtime whose clock is paused, so that the stage
/// runs on Tokio's timers only: those of a runtime that has shut down must
/// not be polled (Tokio panics), the wait makes them anew where it runs.
#[test]
fn a_first_stage_on_tokio_timers_moved_to_another_runtime_still_settles() {
    first_stage_moved(true, true);
}

/// A wait begun on a first runtime (`paused`: with Tokio's clock paused),
/// moved in its first stage to a second runtime (`shut`: the first one shut
/// down; otherwise left alive and idle), settles and wins there.
fn first_stage_moved(paused: bool, shut: bool) {
    let _serial = SERIAL.blocking_lock();
    let (_dir, path, holder, lock) = held_elsewhere();
    let mut wait = Box::pin(lock.acquire(true, LIVENESS));
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .unwrap();
    first.block_on(async {
        // Yields, not sleeps: a paused clock would jump to the stage's end.
        let since = std::time::Instant::now();
        let watching = async {
            while common::waiting_on(&path) != (1, 1, 0) {
                assert!(since.elapsed() < LIVENESS, "never watched");
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            r = &mut wait => panic!("the wait ended in its first stage: {r:?}"),
            () = watching => {}
        }
    });
    let _idle = if shut {
        drop(first);
        None
    } else {
        Some(first)
    };
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let settled = tokio::time::timeout(LIVENESS, async {
            while common::waiting_on(&path) != (3, 1, 1) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        tokio::select! {
            biased;
            r = &mut wait => panic!("the wait ended before it settled: {r:?}"),
            r = settled => r.unwrap_or_else(|_| panic!("never settled: {:?}", common::waiting_on(&path))),
        }
        holder.finish();
        let guard = tokio::time::timeout(LIVENESS, wait)
            .await
            .expect("the settled waiter missed the release")
            .expect("acquire");
        drop(guard);
    });
}

/// A new wait that takes over a wait given up on (still blocked in the
/// kernel) just as the kernel grants it and its helper gives the lock back
/// and leaves: before, the new wait waited for that helper to tell it of a
/// grant, which never came, and timed out on a free lock: 31 of the 3,000
/// re-acquires here on the old code, none now. Run in a helper process as
/// `nobody`, whose inotify instances it takes all of (so that every wait
/// goes to the kernel at once), with debug logging on, which widens the
/// moment (the helper logs the give-back in it).
#[test]
fn a_wait_taken_over_as_its_helper_leaves_is_not_stranded() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("l.lock");
    let out = common::helper_command("revive-rounds", [path.to_str().unwrap(), "500", "6"])
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said: Vec<String> = common::role_lines(&out.stdout[..]).collect();
    assert_eq!(said, ["no inotify", "failed 0"]);
}
