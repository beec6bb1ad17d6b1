//! Cross-process behaviour, with real helper processes.
#![deny(unsafe_code)]

mod common;

use std::time::Duration;

use common::Holder;
use lockmgr::{LockError, LockMgr};
use nix::sys::signal::Signal;

/// A holder in another process turns away non-waiting callers; when it dies
/// by `sig`, a waiter with a single 60 s attempt gets the lock long before
/// that attempt would end: the kernel's close on death is the wake-up.
async fn waiter_wins_when_holder_dies(sig: Signal) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let holder = Holder::start(&path);
    let lock = LockMgr::builder(&path).max_attempts(1).build();

    let err = lock
        .acquire(false, Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::WouldBlock { .. }), "{err}");
    assert!(lock.try_acquire().unwrap_err().is_contended());

    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    common::until_waiting(&path).await;
    holder.kill(sig);
    let guard = common::won(waiter, "waiter still waiting long after the holder died").await;
    assert_eq!(guard.path(), path);
}

#[tokio::test(flavor = "current_thread")]
async fn sigkill_of_holder_frees_lock() {
    waiter_wins_when_holder_dies(Signal::SIGKILL).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sigint_of_holder_frees_lock() {
    waiter_wins_when_holder_dies(Signal::SIGINT).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sigterm_of_holder_frees_lock() {
    waiter_wins_when_holder_dies(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "current_thread")]
async fn orderly_release_in_other_process_wakes_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let holder = Holder::start(&path);
    let lock = LockMgr::new(&path);
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    common::until_waiting(&path).await;
    holder.finish();
    let guard = common::won(waiter, "waiter missed the release").await;
    drop(guard);
}

#[test]
fn waiter_in_other_process_gets_lock_after_ours_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let guard = LockMgr::new(&path).try_acquire().unwrap();
    // The helper's `hold` waits for the lock: it can only say "locked" after
    // our guard is gone.
    let child = std::thread::spawn({
        let path = path.clone();
        move || Holder::start(&path)
    });
    drop(guard);
    let holder = child.join().unwrap();
    assert!(LockMgr::new(&path)
        .try_acquire()
        .unwrap_err()
        .is_contended());
    holder.finish();
    drop(LockMgr::new(&path).try_acquire().unwrap());
}

/// 4 processes x 4 tasks x 60 increments of a counter under the lock: the
/// count is exact and the overlap marker never collides.
#[test]
fn mutual_exclusion_across_processes_and_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let n = common::count_in_processes(&dir.path().join("l.lock"), 4, 4, 60, &[]);
    assert_eq!(n, 4 * 4 * 60);
}
