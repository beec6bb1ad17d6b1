//! The in-process line of waiters: first come first served, one descriptor
//! and one kernel wait for the whole line, shared waiters woken together, timeouts
//! and cancellation that leave the others alone, and no starvation of other
//! processes. This binary lowers its own soft descriptor limit to 1024.
#![deny(unsafe_code)]

mod common;

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Holder, LIVENESS};
use lockmgr::{LockError, LockKind, LockMgr};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use tokio::sync::Barrier;

/// The tests below count this process's descriptors and watches, so they
/// run one at a time.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A task waiting for `lock` within `budget`.
fn waiter(
    lock: &LockMgr,
    budget: Duration,
) -> tokio::task::JoinHandle<Result<lockmgr::LockGuard, LockError>> {
    let lock = lock.clone();
    tokio::spawn(async move { lock.acquire(true, budget).await })
}

/// Polls a wait once, so that it takes its place in line, and leaves it
/// pending (the lock is held).
async fn poll_once<F: Future + Unpin>(wait: &mut F)
where
    F::Output: std::fmt::Debug,
{
    tokio::select! {
        biased;
        r = wait => panic!("a wait won a held lock: {r:?}"),
        () = tokio::task::yield_now() => {}
    }
}

/// 10,000 tasks wait for one lock with a soft limit of 1,024 descriptors:
/// the whole line costs two descriptors (the head's, and its helper's copy)
/// and one wait in the kernel, and they get the lock
/// in the order they asked for it, one at a time.
#[tokio::test(flavor = "current_thread")]
async fn ten_thousand_waiters_fit_in_a_thousand_descriptors_and_go_in_order() {
    let _serial = serial().await;
    const WAITERS: usize = 10_000;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 1024, hard).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();

    let queued = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::with_capacity(WAITERS)));
    let mut tasks = Vec::with_capacity(WAITERS);
    for i in 0..WAITERS {
        let (lock, queued, inside, order) =
            (lock.clone(), queued.clone(), inside.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            // Counted in the same poll that puts the task in line: the
            // acquire below does not yield before it has joined.
            queued.fetch_add(1, Ordering::SeqCst);
            let g = lock.acquire(true, Duration::from_secs(300)).await?;
            assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
            order.lock().unwrap().push(i);
            tokio::task::yield_now().await;
            inside.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            Ok::<_, LockError>(())
        }));
    }
    tokio::time::timeout(LIVENESS, async {
        while queued.load(Ordering::SeqCst) < WAITERS {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("waiters did not all start");
    // The holder's descriptor and the head's (and, once its wait settled in
    // the kernel, its helper's copy of it); one wait, the head's.
    assert!(
        common::one_wait_on(&path, 1),
        "(fds, watches, blocked) = {:?}: {:?}",
        common::waiting_on(&path),
        common::fd_targets()
    );

    drop(held);
    for t in tasks {
        tokio::time::timeout(LIVENESS, t)
            .await
            .expect("a waiter never got the lock")
            .unwrap()
            .expect("acquire");
    }
    let order = std::mem::take(&mut *order.lock().unwrap());
    assert_eq!(order.len(), WAITERS);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "not first come first served"
    );
    common::until_no_fds_on(&path).await;
    assert_eq!(common::blocked_on(&path), 0);
}

/// A queued task that times out, and one that is dropped, leave the line;
/// the others keep their places and still get the lock in order.
#[tokio::test(flavor = "current_thread")]
async fn queued_tasks_time_out_and_cancel_without_disturbing_the_line() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::builder(&path).max_attempts(2).build();
    let held = lock.try_acquire().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));

    let waiter = |name: &'static str, timeout: Duration| {
        let (lock, order) = (lock.clone(), order.clone());
        tokio::spawn(async move {
            let g = lock.acquire(true, timeout).await?;
            order.lock().unwrap().push(name);
            drop(g);
            Ok::<_, LockError>(())
        })
    };
    let first = waiter("first", LIVENESS);
    common::until_waiting(&path).await;
    let impatient = waiter("impatient", Duration::from_millis(20));
    let cancelled = waiter("cancelled", LIVENESS);
    let last = waiter("last", LIVENESS);
    // Let every waiter take its place in line.
    tokio::task::yield_now().await;

    match impatient.await.unwrap() {
        Err(LockError::TimedOut {
            attempts, holder, ..
        }) => {
            assert_eq!(attempts, 2);
            assert_eq!(holder.expect("holder named").pid, std::process::id());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    cancelled.abort();
    assert!(cancelled.await.unwrap_err().is_cancelled());

    drop(held);
    for t in [first, last] {
        tokio::time::timeout(LIVENESS, t)
            .await
            .expect("a waiter was stranded")
            .unwrap()
            .unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["first", "last"]);
    common::until_no_fds_on(&path).await;
    assert_eq!(common::blocked_on(&path), 0);
}

/// Dropping the head of the line hands headship on: the next waiter opens
/// the file and gets the lock when it is released.
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_head_passes_its_place_on() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();
    let spawn_waiter = || {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire(true, LIVENESS).await })
    };
    let head = spawn_waiter();
    common::until_waiting(&path).await;
    let next = spawn_waiter();
    tokio::task::yield_now().await;
    head.abort();
    assert!(head.await.unwrap_err().is_cancelled());
    // The next one is now the head: it takes over the wait the cancelled
    // head left in the line.
    common::until_waiting(&path).await;
    drop(held);
    drop(common::won(next, "the next waiter never moved up").await);
}

/// Two paths to one file (here, hard links) share one line.
#[tokio::test(flavor = "current_thread")]
async fn two_paths_to_one_file_share_a_line() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    std::fs::write(&a, b"").unwrap();
    std::fs::hard_link(&a, &b).unwrap();
    let (la, lb) = (LockMgr::new(&a), LockMgr::new(&b));
    let held = la.try_acquire().unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let lock = if i % 2 == 0 { la.clone() } else { lb.clone() };
        tasks.push(tokio::spawn(
            async move { lock.acquire(true, LIVENESS).await },
        ));
    }
    common::until_waiting(&a).await;
    tokio::task::yield_now().await;
    // The holder's descriptor and the head's (and, once its wait settled in
    // the kernel, its helper's copy), whichever path each used.
    assert!(
        common::one_wait_on(&a, 1),
        "(fds, watches, blocked) = {:?}: {:?}",
        common::waiting_on(&a),
        common::fd_targets()
    );
    drop(held);
    for t in tasks {
        drop(common::won(t, "a waiter was stranded").await);
    }
}

/// Shared waiters queued behind an exclusive holder in another process all
/// hold the lock together once it is killed: none waits for another to
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_waiters_behind_an_exclusive_holder_wake_together() {
    let _serial = serial().await;
    const READERS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let writer = Holder::start(&path);
    let lock = LockMgr::new(&path);
    let all_in = Arc::new(Barrier::new(READERS + 1));
    let mut tasks = Vec::new();
    for _ in 0..READERS {
        let (lock, all_in) = (lock.clone(), all_in.clone());
        tasks.push(tokio::spawn(async move {
            let g = lock.acquire_shared(true, LIVENESS).await?;
            // Held until every reader holds it too.
            all_in.wait().await;
            drop(g);
            Ok::<_, LockError>(())
        }));
    }
    common::until_waiting(&path).await;
    writer.kill(Signal::SIGKILL);
    tokio::time::timeout(LIVENESS, all_in.wait())
        .await
        .expect("the shared waiters did not all hold the lock at once");
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}

/// Tasks of this process that keep the lock busy, handing it to each other
/// directly, do not starve a waiter in another process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_process_does_not_starve_another() {
    let _serial = serial().await;
    const TASKS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::builder(&path).record_holder(false).build();
    let stop = Arc::new(AtomicBool::new(false));
    let handoffs = Arc::new(AtomicUsize::new(0));
    let mut busy = Vec::new();
    for _ in 0..TASKS {
        let (lock, stop, handoffs) = (lock.clone(), stop.clone(), handoffs.clone());
        busy.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let g = lock.acquire(true, LIVENESS).await?;
                // Work under the lock; the next task is already in line.
                tokio::task::yield_now().await;
                handoffs.fetch_add(1, Ordering::SeqCst);
                drop(g);
            }
            Ok::<_, LockError>(())
        }));
    }
    // The line is busy before the other process arrives.
    tokio::time::timeout(LIVENESS, async {
        while handoffs.load(Ordering::SeqCst) < 100 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the busy tasks did not get going");

    let child = common::helper_command("hold", [path.as_path(), Path::new("--no-record")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let other = tokio::task::spawn_blocking(move || Holder::started(child));
    let got_in = tokio::time::timeout(LIVENESS, other).await;
    let before = handoffs.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let Ok(other) = got_in else {
        // Unblock the reader thread before failing.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        panic!("the other process was starved for {LIVENESS:?} ({before} handoffs here)");
    };
    let other = other.unwrap();
    // While the other process holds the lock, nobody here does.
    assert!(lock.try_acquire().unwrap_err().is_contended());
    other.finish();
    for t in busy {
        tokio::time::timeout(LIVENESS, t)
            .await
            .expect("a busy task hung")
            .unwrap()
            .unwrap();
    }
}

/// A task further back in line sleeps while the line moves: only the task
/// that becomes the head is woken. (Waking the next in line at every
/// handoff, as the watch for stalled heads once did, doubled the cost of an
/// in-process handoff with two or more tasks waiting.)
#[tokio::test(flavor = "current_thread")]
async fn only_the_new_head_is_woken_when_the_line_moves() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();

    // Each task counts how often its acquire is polled, and holds what it
    // wins until told to let go.
    let task = |name: &'static str| {
        let lock = lock.clone();
        let polls = Arc::new(AtomicUsize::new(0));
        let (won_tx, won_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let counted = polls.clone();
        tokio::spawn(async move {
            let mut acquire = Box::pin(lock.acquire(true, Duration::MAX));
            let guard = std::future::poll_fn(|cx| {
                counted.fetch_add(1, Ordering::SeqCst);
                acquire.as_mut().poll(cx)
            })
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            won_tx.send(()).unwrap();
            go_rx.await.unwrap();
            drop(guard);
        });
        (polls, won_rx, go_tx)
    };
    let (_, a_won, a_go) = task("first");
    common::until_waiting(&path).await;
    let (b_polls, b_won, b_go) = task("second");
    let (c_polls, c_won, c_go) = task("third");
    while b_polls.load(Ordering::SeqCst) == 0 || c_polls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        c_polls.load(Ordering::SeqCst),
        1,
        "the third was polled again"
    );

    // The first wins; the second becomes the head and waits on the lock
    // (its task runs again on this thread); the third is not woken.
    drop(held);
    tokio::time::timeout(LIVENESS, a_won)
        .await
        .unwrap()
        .unwrap();
    let b_before = b_polls.load(Ordering::SeqCst);
    while b_polls.load(Ordering::SeqCst) == b_before {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        c_polls.load(Ordering::SeqCst),
        1,
        "the third in line was woken when the second became the head"
    );

    // And the line still goes in turn.
    a_go.send(()).unwrap();
    tokio::time::timeout(LIVENESS, b_won)
        .await
        .unwrap()
        .unwrap();
    b_go.send(()).unwrap();
    tokio::time::timeout(LIVENESS, c_won)
        .await
        .unwrap()
        .unwrap();
    c_go.send(()).unwrap();
}

/// The head of the line whose future is kept but no longer polled (a
/// `select!` that stopped polling it, a stalled runtime) does not keep the
/// rest of the line from a free lock: the next in line passes it over.
#[tokio::test(flavor = "current_thread")]
async fn a_head_that_is_no_longer_polled_is_passed_over() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();
    let mut head = Box::pin(lock.acquire(true, Duration::MAX));
    // Polled until it sleeps on the lock file, as the head of the line;
    // never polled again after this.
    tokio::select! {
        biased;
        r = &mut head => panic!("the head won a held lock: {r:?}"),
        _ = common::until_waiting(&path) => {}
    }
    let next = waiter(&lock, Duration::MAX);
    tokio::task::yield_now().await;
    // The release is handed to the head, which nobody polls.
    drop(held);
    drop(common::won(next, "the next in line waited behind a head nobody polls").await);
    drop(head);
}

/// Heads that were passed over because nobody polls them any more do not
/// hold up later waiters again: once every task left in the line is one
/// the watch passed over, a newcomer goes first. (Before: each such future
/// became the head again whenever the line emptied in front of it, and
/// every later `acquire` of the free lock waited 1.25 s for each of them.)
#[tokio::test(flavor = "current_thread")]
async fn heads_passed_over_do_not_hold_up_later_waiters() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();
    // Two waits polled until they are in line, then never again.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut wait = Box::pin(lock.acquire(true, Duration::MAX));
        tokio::select! {
            biased;
            r = &mut wait => panic!("a wait won a held lock: {r:?}"),
            () = common::until_waiting(&path) => {}
        }
        stalled.push(wait);
    }
    drop(held);
    // The first newcomer waits while the watch passes each of them over.
    drop(
        tokio::time::timeout(LIVENESS, lock.acquire(true, LIVENESS))
            .await
            .expect("the first newcomer waited behind heads nobody polls")
            .unwrap(),
    );
    // Later ones go first: a budget shorter than one pass-over (1.25 s).
    let quick = LockMgr::builder(&path).max_attempts(1).build();
    for _ in 0..3 {
        let got = quick.acquire(true, Duration::from_secs(1)).await;
        drop(got.expect("a newcomer waited again behind heads passed over"));
    }
    drop(stalled);
}

/// A wait passed over while nobody polled it, then polled again while
/// another is the head, is made the head again when that one leaves, and
/// wins the free lock. (Before: it went back to sleep still marked as
/// passed over, and when the head left, nobody was woken: it waited on a
/// free lock for its whole budget.)
#[tokio::test(flavor = "current_thread")]
async fn a_wait_passed_over_that_runs_again_gets_the_lock() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();
    let first = waiter(&lock, Duration::MAX);
    common::until_waiting(&path).await;
    // In line behind the first, counting its polls; not polled for now.
    let polls = Arc::new(AtomicUsize::new(0));
    let mut stalled = {
        let (lock, polls) = (lock.clone(), polls.clone());
        let mut acquire = Box::pin(async move { lock.acquire(true, Duration::MAX).await });
        Box::pin(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            acquire.as_mut().poll(cx)
        }))
    };
    poll_once(&mut stalled).await;
    let third = waiter(&lock, LIVENESS);
    tokio::task::yield_now().await;
    // The first leaves: the stalled wait is the head, never runs, and is
    // passed over; the third becomes the head and opens the file.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    tokio::time::timeout(LIVENESS, async {
        while common::fds_on(&path) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the third never became the head");
    // Polled again now, while the third is the head.
    let before = polls.load(Ordering::SeqCst);
    let stalled = tokio::spawn(stalled);
    while polls.load(Ordering::SeqCst) == before {
        tokio::task::yield_now().await;
    }
    drop(held);
    drop(common::won(third, "the third did not get the free lock").await);
    drop(
        common::won(
            stalled,
            "the wait passed over, running again, was left waiting on a free lock",
        )
        .await,
    );
}

/// How many times this process's line watch has passed a first task over,
/// read from its warnings (the watch runs on a thread of its own, so the
/// counter is the process's default subscriber).
fn passed_over() -> usize {
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    struct Counter;
    struct IsPassOver(bool);
    impl Visit for IsPassOver {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 |= format!("{value:?}").contains("has not run when it promised");
            }
        }
    }
    impl Subscriber for Counter {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut seen = IsPassOver(false);
            event.record(&mut seen);
            if seen.0 {
                COUNT.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| tracing::subscriber::set_global_default(Counter).unwrap());
    COUNT.load(Ordering::SeqCst)
}

/// Every waiter left in line was passed over; the first of them runs again
/// (and is made the first in line), then stops being polled again: it is
/// held to its promise, passed over once more, and the live waiter behind
/// it gets the free lock. (Before: made the first without being watched,
/// it held everyone behind it, and every newcomer, for as long as it was
/// not polled.)
#[tokio::test(flavor = "current_thread")]
async fn a_wait_that_runs_again_when_all_were_passed_over_is_watched_again() {
    let _serial = serial().await;
    let base = passed_over();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();
    let first = waiter(&lock, Duration::MAX);
    common::until_waiting(&path).await;
    // Two waits in line behind it, polled once, then not for now.
    let wait = || {
        let lock = lock.clone();
        Box::pin(async move { lock.acquire(true, Duration::MAX).await })
    };
    let (mut a, mut b) = (wait(), wait());
    poll_once(&mut a).await;
    poll_once(&mut b).await;
    // The first leaves: each of the two is made the first and passed over.
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    tokio::time::timeout(LIVENESS, async {
        while passed_over() < base + 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the two waits were not passed over");
    // The first of them runs once (and is the first in line again), then
    // is not polled again; the other runs from now on.
    poll_once(&mut a).await;
    let b = tokio::spawn(b);
    tokio::task::yield_now().await;
    drop(held);
    drop(
        common::won(
            b,
            "a live waiter waited behind a first in line nobody polls or watches",
        )
        .await,
    );
    drop(a);
}

/// Waits given up on in turn (a retry loop behind a lock held for long)
/// share one blocked helper: each new wait takes over the one given up on,
/// so timed-out acquires that each settled into the kernel (they waited
/// longer than its first 500 ms) leave one wait in the kernel, one kept
/// descriptor and a few threads, not one of each per acquire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_given_up_in_turn_share_one_helper() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    let held = lock.try_acquire().unwrap();
    for _ in 0..6 {
        let err = lock
            .acquire(true, Duration::from_millis(600))
            .await
            .unwrap_err();
        assert!(err.is_contended(), "{err}");
    }
    assert_eq!(
        common::blocked_on(&path),
        1,
        "waits in the kernel after six given up on"
    );
    // The holder's descriptor and the one wait's two (kept, and in the
    // blocked call).
    assert!(common::fds_on(&path) <= 3, "{:?}", common::fd_targets());
    let helpers = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "lockmgr-wait")
        })
        .count();
    assert!(helpers <= 5, "{helpers} helper threads");
    drop(held);
    // Given back the instant it is granted.
    common::until_no_fds_on(&path).await;
    drop(lock.try_acquire().unwrap());
}

/// Two waits for one file, the head and the one queued behind it, their
/// futures moved to a second runtime after the first one shut down (whose
/// timers they were waiting on): both win in turn at the release, and
/// neither panics on a timer of the runtime left behind.
#[test]
fn a_line_moved_to_another_runtime_still_goes_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let holder = Holder::start(&path);
    let lock = LockMgr::new(&path);
    let mut head = Box::pin(lock.acquire(true, LIVENESS));
    let mut behind = Box::pin(lock.acquire(true, LIVENESS));
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let _serial = first.block_on(async {
        let serial = serial().await;
        let since = std::time::Instant::now();
        // Both asleep: the head on the file, the other behind it in line.
        let lined_up = async {
            loop {
                tokio::task::yield_now().await;
                if common::someone_waits(&path) {
                    break;
                }
                assert!(since.elapsed() < LIVENESS, "the head never slept");
            }
        };
        tokio::select! {
            biased;
            r = &mut head => panic!("the head ended while the lock was held: {r:?}"),
            r = &mut behind => panic!("the second ended while the lock was held: {r:?}"),
            () = lined_up => {}
        }
        serial
    });
    drop(first);
    runtime().block_on(async {
        // Polled once here before the release: both sleep on this runtime.
        tokio::select! {
            biased;
            r = &mut head => panic!("the head ended while the lock was held: {r:?}"),
            r = &mut behind => panic!("the second ended while the lock was held: {r:?}"),
            () = tokio::task::yield_now() => {}
        }
        holder.finish();
        let first_guard = tokio::time::timeout(LIVENESS, &mut head)
            .await
            .expect("the moved head missed the release")
            .expect("acquire");
        drop(first_guard);
        let second_guard = tokio::time::timeout(LIVENESS, &mut behind)
            .await
            .expect("the moved second never got its turn")
            .expect("acquire");
        drop(second_guard);
    });
}

/// OFD and `flock` locks do not see each other, so the tasks of one
/// process waiting for the file in one family never make a task of the
/// other family wait: a line is one family's. On the old code the OFD
/// acquire lined up behind the `flock` waiter and waited for `flock(1)`'s
/// holder (here, until its budget ran out), though its own lock was free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_one_lock_family_never_holds_up_the_other() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let foreign = common::Foreign::start("flock", "ex", &path);
    let flock = LockMgr::builder(&path).kind(LockKind::Flock).build();
    let flock_waiter = tokio::spawn(async move { flock.acquire(true, LIVENESS).await });
    common::until_waiting(&path).await;
    for kind in ["ofd-exclusive", "ofd-shared"] {
        let ofd = LockMgr::builder(&path).max_attempts(1).build();
        let budget = Duration::from_secs(3);
        let won = if kind == "ofd-shared" {
            ofd.acquire_shared(true, budget).await.map(drop)
        } else {
            ofd.acquire(true, budget).await.map(drop)
        };
        won.unwrap_or_else(|e| panic!("{kind}: {e}"));
    }
    assert!(!flock_waiter.is_finished(), "flock(1)'s lock is still held");
    foreign.finish();
    drop(flock_waiter.await.unwrap().unwrap());
}

/// A shared acquire is granted while only shared holders hold the lock,
/// even while a task of its own process waits in line to hold it
/// exclusively: as the kernel grants it, and as a reader of another
/// process gets it (README, "Readers can starve a writer"). The line is one
/// per mode. Here the reader's own task holds a shared lock too, so a
/// reader that waited behind the writer would wait for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_acquire_never_waits_behind_an_exclusive_waiter_of_its_process() {
    let _serial = serial().await;
    for (kind, family) in [(LockKind::Ofd, "ofd"), (LockKind::Flock, "flock")] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let other = common::Foreign::start(family, "sh", &path);
        let lock = LockMgr::builder(&path).kind(kind).build();
        let own = lock.acquire_shared(true, LIVENESS).await.unwrap();
        let writer = {
            let lock = lock.clone();
            tokio::spawn(async move { lock.acquire(true, LIVENESS).await })
        };
        common::until_waiting(&path).await;
        let reader = LockMgr::builder(&path).kind(kind).max_attempts(1).build();
        let reader = reader
            .acquire_shared(true, Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("{family}: {e}"));
        assert!(!writer.is_finished(), "{family}: the readers still hold it");
        drop((own, reader));
        other.finish();
        drop(common::won(writer, "the writer was stranded").await);
    }
}
