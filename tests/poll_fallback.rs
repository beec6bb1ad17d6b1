//! Without inotify, waiting falls back to polling and stays correct. The
//! holder is another process, so that no in-process handoff can wake the
//! waiter, and the try that wins must have been woken by a polling tick: the
//! periodic recheck would also find the lock free, later, but a working poll
//! never lets it come due.
//!
//! inotify is made unavailable the way it fails in the field: `inotify_init1`
//! returns `EMFILE` (here because the process has no descriptor left, in the
//! field usually because the user's 128 instances are taken). Alone in its
//! test binary, because it exhausts the process's file descriptors.

mod common;

use std::fs::File;
use std::time::Duration;

use lockmgr::LockMgr;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

#[tokio::test(flavor = "current_thread")]
async fn waiting_without_inotify_polls_and_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    // One attempt of 60 s: an event-less waiter that did not poll would
    // still be asleep when the liveness bound runs out.
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    let tries = common::TryLog::default();
    let _log = tracing::subscriber::set_default(tries.clone());
    // Started while descriptors are still to be had (it needs pipes).
    let held = common::Holder::start(&path);

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(soft), hard).unwrap();
    let mut filler = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        filler.push(f);
    }
    // One slot free: the waiter's own lock-file fd takes it, so the inotify
    // instance it then asks for cannot be had.
    filler.pop();

    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    held.finish();
    let guard = common::won(waiter, "polling waiter never noticed the release").await;
    assert_eq!(tries.winner_woken_by(), "poll", "{:?}", tries.tries());
    assert_eq!(
        common::inotify_instances(),
        0,
        "inotify was available after all"
    );
    drop(guard);

    // With descriptors back, a later wait gets the shared watcher.
    drop(filler);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    let held = lock.try_acquire().unwrap();
    let err = lock
        .acquire(true, Duration::from_millis(1))
        .await
        .unwrap_err();
    assert!(err.is_contended());
    assert_eq!(common::inotify_instances(), 1);
    drop(held);
}
