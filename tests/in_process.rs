//! Behaviour within one process: tasks, timeouts, cancellation, many waiters.
#![deny(unsafe_code)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::LIVENESS;
use lockmgr::{LockError, LockGuard, LockMgr};

fn assert_send<T: Send>(_: &T) {}
fn assert_send_sync<T: Send + Sync>() {}
fn assert_clone<T: Clone>() {}

#[test]
fn public_types_have_the_promised_traits() {
    assert_send_sync::<LockMgr>();
    assert_clone::<LockMgr>();
    assert_send_sync::<LockGuard>();
    assert_send_sync::<LockError>();
    let lock = LockMgr::new("/nonexistent/never-touched");
    assert_send(&lock.acquire(true, Duration::from_secs(1)));
}

async fn two_tasks_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let guard = lock.acquire(true, Duration::from_secs(60)).await.unwrap();
    let inside = Arc::new(AtomicBool::new(true));
    let waiter = tokio::spawn({
        let (lock, inside) = (lock.clone(), inside.clone());
        async move {
            let g = lock.acquire(true, Duration::from_secs(60)).await.unwrap();
            assert!(!inside.load(Ordering::SeqCst), "got the lock while held");
            g
        }
    });
    common::until_waiting(&path).await;
    assert!(!waiter.is_finished());
    inside.store(false, Ordering::SeqCst);
    drop(guard);
    let g = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("waiter not woken by the release")
        .unwrap();
    assert!(lock.try_acquire().unwrap_err().is_contended());
    drop(g);
}

#[tokio::test(flavor = "current_thread")]
async fn two_tasks_exclude_each_other_current_thread() {
    two_tasks_exclude_each_other().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_exclude_each_other_multi_thread() {
    two_tasks_exclude_each_other().await;
}

#[tokio::test]
async fn not_reentrant_through_the_same_or_a_cloned_lockmgr() {
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::new(dir.path().join("l"));
    let g = lock.try_acquire().unwrap();
    assert!(matches!(
        lock.acquire(false, Duration::from_secs(5)).await,
        Err(LockError::WouldBlock { .. })
    ));
    assert!(lock.clone().try_acquire().unwrap_err().is_contended());
    // Another LockMgr for the same file, too.
    assert!(LockMgr::new(lock.path()).try_acquire().is_err());
    g.release().unwrap();
    drop(lock.try_acquire().unwrap());
}

#[tokio::test]
async fn times_out_after_max_attempts_with_the_time_waited() {
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::builder(dir.path().join("l"))
        .max_attempts(3)
        .build();
    let _held = lock.try_acquire().unwrap();
    let started = std::time::Instant::now();
    let err = lock
        .acquire(true, Duration::from_millis(40))
        .await
        .unwrap_err();
    match &err {
        LockError::TimedOut {
            lock: id,
            attempts,
            waited,
            holder,
        } => {
            assert_eq!(id.path(), Some(lock.path()));
            // The holder is this very process, recorded when it won.
            assert_eq!(holder.as_ref().unwrap().pid, std::process::id());
            assert_eq!(*attempts, 3);
            // All three attempts ran to their end.
            assert!(*waited >= Duration::from_millis(120), "{waited:?}");
            assert!(started.elapsed() >= *waited);
        }
        other => panic!("expected TimedOut, got {other}"),
    }
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
}

#[tokio::test]
async fn zero_timeout_is_one_try() {
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::new(dir.path().join("l"));
    let _held = lock.try_acquire().unwrap();
    let err = lock.acquire(true, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, LockError::WouldBlock { .. }), "{err}");
}

#[tokio::test]
async fn huge_timeout_saturates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::builder(&path).max_attempts(u32::MAX).build();
    let held = lock.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::MAX).await }
    });
    common::until_waiting(&path).await;
    drop(held);
    let guard = common::won(waiter, "waiter not woken by the release").await;
    drop(guard);
}

/// Wake-ups that do not lead to the lock (someone opens and closes the file)
/// do not use up attempts: with one attempt of 60 s, a storm of unrelated
/// closes does not end the wait; only the release does.
#[tokio::test]
async fn spurious_wakeups_do_not_use_up_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    let held = lock.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    common::until_waiting(&path).await;
    for _ in 0..200 {
        drop(std::fs::File::open(&path).unwrap());
        tokio::task::yield_now().await;
    }
    assert!(
        !waiter.is_finished(),
        "a close that frees nothing ended the wait"
    );
    drop(held);
    let guard = common::won(waiter, "waiter not woken by the release").await;
    drop(guard);
}

#[tokio::test]
async fn guard_exposes_path_and_file_for_writing() {
    use std::io::{Read, Seek, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    std::fs::write(&path, "keep\n").unwrap();
    let lock = LockMgr::new(&path);
    let guard = lock.acquire(false, Duration::ZERO).await.unwrap();
    assert_eq!(guard.path(), path);
    let mut f = guard.file();
    f.seek(std::io::SeekFrom::End(0)).unwrap();
    f.write_all(b"more\n").unwrap();
    let mut s = String::new();
    f.seek(std::io::SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "keep\nmore\n", "the lock file is never truncated");
    assert!(format!("{guard:?}").contains("LockGuard"));
    guard.release().unwrap();
}

#[test]
fn try_acquire_needs_no_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::new(dir.path().join("l"));
    let g = lock.try_acquire().unwrap();
    assert!(matches!(
        lock.try_acquire(),
        Err(LockError::WouldBlock { .. })
    ));
    drop(g);
    drop(lock.try_acquire().unwrap());
}

#[tokio::test]
async fn new_lock_file_gets_the_requested_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    drop(
        LockMgr::builder(&path)
            .mode(0o600)
            .build()
            .try_acquire()
            .unwrap(),
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
