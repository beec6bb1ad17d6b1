//! A release that sends no close event still reaches every waiter: foreign
//! holders that unlock and keep their descriptor open (as SQLite,
//! `portalocker.unlock`, Python's `fcntl.flock(fd, LOCK_UN)` and
//! `fcntl.lockf(fd, LOCK_UN)`, and std's `File::unlock` do), and an unlock
//! while a forked child still holds the descriptor. The waiters here have no
//! deadline at all: without a way to notice such a release they would wait
//! for ever; the liveness bound of the test is what fails then.
#![deny(unsafe_code)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Foreign;
use lockmgr::{LockKind, LockMgr};

/// `family` holds the lock at `path`; a `kind` waiter with no deadline
/// waits; the holder unlocks (after `before`, if given) without closing.
async fn waiter_notices_unlock_without_close(family: &str, kind: LockKind, before: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let mut holder = Foreign::start(family, "ex", &path);
    let lock = LockMgr::builder(&path).kind(kind).max_attempts(1).build();
    assert!(lock.try_acquire().unwrap_err().is_contended());
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::MAX).await }
    });
    common::until_waiting(&path).await;
    if let Some(command) = before {
        assert!(holder.command(command).starts_with("child "));
    }
    let unlocked = Instant::now();
    assert_eq!(holder.command("unlock"), "unlocked");
    let guard = common::won(waiter, "the waiter missed a release without a close").await;
    eprintln!(
        "{family} unlock without close: the waiter held the lock {:?} later",
        unlocked.elapsed()
    );
    // Ours now: the foreign holder cannot take it back.
    assert_eq!(guard.path(), path);
    drop(guard);
    holder.finish();
    assert!(Path::new(&path).exists());
}

#[tokio::test(flavor = "current_thread")]
async fn ofd_holder_unlocks_without_closing() {
    waiter_notices_unlock_without_close("ofd", LockKind::Ofd, None).await;
}

/// `lockf(F_ULOCK)`, Python's `fcntl.lockf(fd, LOCK_UN)`, SQLite: POSIX
/// record locks, which OFD locks conflict with.
#[tokio::test(flavor = "current_thread")]
async fn posix_holder_unlocks_without_closing() {
    waiter_notices_unlock_without_close("posix", LockKind::Ofd, None).await;
}

/// `flock(fd, LOCK_UN)`: Python's `fcntl.flock`, `portalocker.unlock`,
/// std's `File::unlock`.
#[tokio::test(flavor = "current_thread")]
async fn flock_holder_unlocks_without_closing() {
    waiter_notices_unlock_without_close("flock", LockKind::Flock, None).await;
}

/// The holder forks; its child keeps the descriptor open while the parent
/// unlocks: the lock is free, yet no close happens.
#[tokio::test(flavor = "current_thread")]
async fn unlock_while_a_forked_child_keeps_the_descriptor() {
    waiter_notices_unlock_without_close("ofd", LockKind::Ofd, Some("fork")).await;
    waiter_notices_unlock_without_close("flock", LockKind::Flock, Some("fork")).await;
}

/// A wait whose kernel helper cannot get a descriptor of its own (the
/// process at its descriptor limit) goes on waiting on the file's events
/// and rechecks: a release without a close still reaches it. Before, the
/// helper's failure (`EMFILE`) went unheard (a wait with no deadline then
/// waited for ever on a free lock), or failed the acquire.
#[tokio::test(flavor = "current_thread")]
async fn a_settled_wait_whose_helper_gets_no_descriptor_still_notices_a_release() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let mut holder = Foreign::start("ofd", "ex", &path);
    let mut waiter = common::helper_command("wait-few-fds", [path.to_str().unwrap(), FREE])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = waiter.id();
    let mut said = common::role_lines(std::io::BufReader::new(waiter.stdout.take().unwrap()));
    assert_eq!(said.next().as_deref(), Some("waiting"));
    // The wait settles after 500 ms: its helper thread starts, and finds
    // no descriptor for its copy.
    let until = Instant::now() + common::LIVENESS;
    while !common::has_thread(pid, "lockmgr-wait") {
        assert!(Instant::now() < until, "the wait never settled");
        std::thread::yield_now();
    }
    assert_eq!(holder.command("unlock"), "unlocked");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(said.next());
    });
    let outcome = rx.recv_timeout(common::LIVENESS);
    let _ = waiter.kill();
    let _ = waiter.wait();
    let outcome = outcome.ok().flatten();
    assert_eq!(
        outcome.as_deref(),
        Some("locked"),
        "the waiter missed the release: {outcome:?}"
    );
    holder.finish();
}

/// Descriptors left to the waiter once it waits: none. As its wait
/// settles, it closes the timer of its first stage, and that descriptor
/// goes to the kernel wait's own copy: none is left for the helper's.
/// (Were none freed, the wait would not settle, and the test would say so.)
const FREE: &str = "0";
