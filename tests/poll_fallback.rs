//! Without its usual means, waiting falls back and stays correct. The usual
//! means is inotify read by the waiter's own runtime (which needs an
//! instance and a duplicate of its descriptor, but no thread), and, for a
//! long wait, the kernel's own wait on a helper thread (which needs a
//! duplicate descriptor and a thread); the last resort is polling. The
//! tests take them away the ways they fail in the field: no descriptor
//! left (`EMFILE`: also what a user gets at its 128 inotify instances)
//! takes both, and waiting polls; no thread to be had (a user at its
//! process limit) leaves the close events, which need none.
//!
//! The holder is another process, so that only a poll tick can wake the
//! waiter, and the try that wins must have been woken by one: the periodic
//! recheck would also find the lock free, later, but a working poll never
//! lets it come due. Alone in its test binary, because it exhausts the
//! process's file descriptors; its two tests take turns (`SERIAL`), so that
//! one does not free or take the descriptors the other counts on.
#![deny(unsafe_code)]

mod common;

use std::fs::File;
use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use lockmgr::LockMgr;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[tokio::test(flavor = "current_thread")]
// Held across awaits on purpose: the other test only takes it whole.
#[allow(clippy::await_holding_lock)]
async fn waiting_without_inotify_polls_and_wins() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    // One attempt of 60 s: an event-less waiter that did not poll would
    // still be asleep when the liveness bound runs out.
    let lock = LockMgr::builder(&path).max_attempts(1).build();
    let tries = common::TryLog::default();
    let _log = tries.install();
    // Started while descriptors are still to be had (it needs pipes).
    let held = common::Holder::start(&path);

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(soft), hard).unwrap();
    let mut filler = Vec::new();
    while let Ok(f) = File::open("/dev/null") {
        filler.push(f);
    }
    // One slot free: the waiter's own lock-file fd takes it, so neither the
    // helper's duplicate nor an inotify instance can be had.
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
    drop(guard);
    drop(filler);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    assert_eq!(
        common::inotify_instances(),
        0,
        "inotify was available after all"
    );

    // With descriptors back, a later wait watches the file again.
    let held = lock.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    common::until_waiting(&path).await;
    assert_eq!(common::watches_on(&path), 1);
    drop(held);
    drop(common::won(waiter, "the watching waiter missed the release").await);
}

/// With no thread to be had, a waiter still sleeps on close events (its
/// own runtime reads them) and is woken by the release, not by a poll.
#[test]
fn waiting_with_no_thread_to_be_had_wakes_on_the_close_event() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("l.lock");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The holder: this process (another process, to the waiter).
    let held = LockMgr::new(&path).try_acquire().unwrap();
    let mut waiter = common::helper_command("wait-without-threads", [&path])
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = common::role_lines(BufReader::new(waiter.stdout.take().unwrap()));
    assert_eq!(said.next().as_deref(), Some("waiting"));
    assert_eq!(
        common::blocked_on(&path),
        0,
        "waited in the kernel after all"
    );
    drop(held);
    assert_eq!(said.next().as_deref(), Some("locked event"));
    assert!(waiter.wait().unwrap().success());
}
