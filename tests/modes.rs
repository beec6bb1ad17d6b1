//! Shared locks, lock families (interop with flock(1) and POSIX locks),
//! holder records and safe removal, across real processes.
#![deny(unsafe_code)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Holder, LIVENESS};
use lockmgr::{LockError, LockKind, LockMgr, LockMode};
use nix::sys::signal::Signal;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn shared_holders_coexist_across_processes_and_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let other = Holder::start_with(&path, "hold", &["--shared"]);
    let lock = LockMgr::new(&path);
    let a = lock.acquire_shared(false, WAIT).await.unwrap();
    let b = lock.try_acquire_shared().unwrap();
    assert_eq!(a.lock_mode(), LockMode::Shared);
    assert_eq!(b.lock_mode(), LockMode::Shared);
    let err = lock.try_acquire().unwrap_err();
    assert!(
        matches!(err, LockError::WouldBlock { holder: None, .. }),
        "{err}"
    );
    assert_eq!(lock.holder().unwrap(), None, "shared holders are not named");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "shared holders write no record"
    );
    drop((a, b));
    other.finish();
    let w = lock.try_acquire().unwrap();
    assert_eq!(w.lock_mode(), LockMode::Exclusive);
}

/// An exclusive waiter wakes only when the last shared holder leaves.
#[tokio::test]
async fn exclusive_waiter_wins_after_the_last_shared_holder_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let remote = Holder::start_with(&path, "hold", &["--shared"]);
    let lock = LockMgr::new(&path);
    let r1 = lock.try_acquire_shared().unwrap();
    let r2 = lock.try_acquire_shared().unwrap();
    let all_gone = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (lock, all_gone) = (lock.clone(), all_gone.clone());
        async move {
            let g = lock.acquire(true, WAIT).await.unwrap();
            assert!(all_gone.load(Ordering::SeqCst), "won while readers held");
            g
        }
    });
    common::until_waiting(&path).await;
    drop(r1);
    tokio::task::yield_now().await;
    drop(r2);
    tokio::task::yield_now().await;
    assert!(!writer.is_finished());
    all_gone.store(true, Ordering::SeqCst);
    remote.finish();
    let g = tokio::time::timeout(LIVENESS, writer)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(g.lock_mode(), LockMode::Exclusive);
}

/// Shared waiters wake when the exclusive holder leaves, and all get in.
#[tokio::test]
async fn shared_waiters_all_win_when_the_exclusive_holder_dies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let holder = Holder::start(&path);
    let lock = LockMgr::new(&path);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let lock = lock.clone();
            tokio::spawn(async move { lock.acquire_shared(true, WAIT).await })
        })
        .collect();
    common::until_waiting(&path).await;
    holder.kill(Signal::SIGKILL);
    let mut guards = Vec::new();
    for r in readers {
        guards.push(common::won(r, "waiter not woken").await);
    }
    assert!(guards.iter().all(|g| g.lock_mode() == LockMode::Shared));
}

/// util-linux flock(1) holding the file, until its stdin closes.
fn flock_cmd_holder(path: &std::path::Path) -> Holder {
    let child = Command::new("flock")
        .arg(path)
        .args(["sh", "-c", "echo locked; exec cat >/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux flock(1) is needed for this test");
    Holder::started(child)
}

fn flock_cmd_can_lock(path: &std::path::Path) -> bool {
    let status = Command::new("flock")
        .args(["-n"])
        .arg(path)
        .arg("true")
        .status()
        .unwrap();
    match status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("flock(1) failed: {other:?}"),
    }
}

#[tokio::test]
async fn flock_kind_and_flock_command_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let flock = LockMgr::builder(&path).kind(LockKind::Flock).build();
    let ofd = LockMgr::new(&path);

    let cmd = flock_cmd_holder(&path);
    assert!(flock.try_acquire().unwrap_err().is_contended());
    assert!(flock.try_acquire_shared().unwrap_err().is_contended());
    // The other family does not see it: that is why the kind matters.
    drop(ofd.try_acquire().expect("OFD and flock(2) are separate"));
    let waiter = tokio::spawn({
        let flock = flock.clone();
        async move { flock.acquire(true, WAIT).await }
    });
    common::until_waiting(&path).await;
    tokio::task::spawn_blocking(move || cmd.finish())
        .await
        .unwrap();
    let g = common::won(waiter, "waiter not woken").await;
    assert_eq!(g.kind(), LockKind::Flock);

    // And the other way round.
    assert!(
        !flock_cmd_can_lock(&path),
        "flock(1) got in past a Flock guard"
    );
    drop(g);
    assert!(flock_cmd_can_lock(&path));
    let o = ofd.try_acquire().unwrap();
    assert!(
        flock_cmd_can_lock(&path),
        "OFD locks do not exclude flock(1)"
    );
    drop(o);
}

#[tokio::test]
async fn posix_record_lock_blocks_the_ofd_kind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let posix = Holder::start_with(&path, "posix-hold", &[]);
    let ofd = LockMgr::new(&path);
    assert!(ofd.try_acquire().unwrap_err().is_contended());
    assert!(ofd.try_acquire_shared().unwrap_err().is_contended());
    let flock = LockMgr::builder(&path).kind(LockKind::Flock).build();
    drop(
        flock
            .try_acquire()
            .expect("flock(2) does not see POSIX locks"),
    );
    let waiter = tokio::spawn({
        let ofd = ofd.clone();
        async move { ofd.acquire(true, WAIT).await }
    });
    common::until_waiting(&path).await;
    posix.finish();
    let g = common::won(waiter, "waiter not woken").await;
    drop(g);
}

/// Winning the lock again within the same second skips rewriting the
/// record only while the file still holds this process's own: a record
/// another process wrote in between is replaced.
#[test]
fn a_record_another_holder_wrote_in_between_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::new(&path);
    let me = std::process::id();
    for _ in 0..3 {
        drop(lock.try_acquire().unwrap());
        let other = Holder::start_with(&path, "hold", &[]);
        let theirs = LockMgr::new(&path).holder().unwrap().expect("recorded");
        assert_eq!(theirs.pid, other.pid() as u32);
        other.finish();
        let _held = lock.try_acquire().unwrap();
        let ours = LockMgr::new(&path).holder().unwrap().expect("recorded");
        assert_eq!(ours.pid, me, "the other holder's record was left: {ours:?}");
    }
}

#[tokio::test]
async fn holder_record_names_the_holder_and_goes_stale_when_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.lock");
    let lock = LockMgr::new(&path);
    let first = Holder::start_with(&path, "hold", &["--label=deploy web"]);
    let pid = first.pid() as u32;

    let h = lock.holder().unwrap().expect("recorded");
    assert_eq!(
        (h.pid, h.label.as_deref(), h.stale),
        (pid, Some("deploy web"), false)
    );
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(h.host, host);
    let age = std::time::SystemTime::now()
        .duration_since(h.since)
        .unwrap();
    assert!(age < Duration::from_secs(3600), "since is now-ish: {age:?}");

    let err = lock.acquire(false, WAIT).await.unwrap_err();
    let msg = err.to_string();
    let expected = format!(
        "lock {} is held by pid {pid} on host {host} since ",
        path.display()
    );
    assert!(msg.starts_with(&expected), "{msg}");
    assert!(msg.ends_with("Z (deploy web)"), "{msg}");
    let err = LockMgr::builder(&path)
        .max_attempts(2)
        .build()
        .acquire(true, Duration::from_millis(5))
        .await
        .unwrap_err();
    assert!(matches!(&err, LockError::TimedOut { holder: Some(h), .. } if h.pid == pid));

    first.kill(Signal::SIGKILL);
    assert_eq!(
        lock.holder().unwrap(),
        None,
        "free: the old record is not a holder"
    );

    // Someone that writes no record now holds the lock: the dead pid's record
    // is all there is, and it is reported as stale.
    let second = Holder::start_with(&path, "hold", &["--no-record"]);
    let h = lock.holder().unwrap().expect("the old record");
    assert!(h.stale && h.pid == pid, "{h:?}");
    let msg = lock.try_acquire().unwrap_err().to_string();
    assert!(msg.contains("(stale record: pid"), "{msg}");
    second.finish();
}

#[tokio::test]
async fn garbled_record_reads_as_unknown_and_never_stops_acquisition() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    std::fs::write(&path, "lockmgr-holder/1 pid=banana host=\n").unwrap();
    let other = Holder::start_with(&path, "hold", &["--no-record"]);
    let lock = LockMgr::new(&path);
    assert_eq!(lock.holder().unwrap(), None);
    let err = lock.try_acquire().unwrap_err();
    assert!(matches!(err, LockError::WouldBlock { holder: None, .. }));
    other.finish();
    let g = lock.try_acquire().unwrap();
    // A (garbled) record of ours is replaced by a good one.
    assert_eq!(lock.holder().unwrap().unwrap().pid, std::process::id());
    drop(g);
}

/// A record dated after the last second RFC 3339 can write (9999-12-31)
/// is garbled like any other: it once made every message that named the
/// holder panic while formatting the date.
#[tokio::test]
async fn record_dated_past_year_9999_reads_as_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let other = Holder::start_with(&path, "hold", &["--no-record"]);
    for since in ["253402300800", "18446744073709551615"] {
        std::fs::write(
            &path,
            format!(
                "lockmgr-holder/1 pid={} host=h since={since}\n",
                other.pid()
            ),
        )
        .unwrap();
        let lock = LockMgr::new(&path);
        assert_eq!(lock.holder().unwrap(), None, "since={since}");
        let err = lock.try_acquire().unwrap_err();
        assert!(matches!(err, LockError::WouldBlock { holder: None, .. }));
        let shown = err.to_string();
        assert!(shown.contains(&*path.to_string_lossy()), "{shown}");
        for process in lock.holders().unwrap().holding {
            let _ = process.to_string();
        }
    }
    // The last second that can be written is still a record.
    std::fs::write(
        &path,
        format!(
            "lockmgr-holder/1 pid={} host=h since=253402300799\n",
            other.pid()
        ),
    )
    .unwrap();
    let h = LockMgr::new(&path).holder().unwrap().expect("a record");
    assert_eq!(h.since_utc(), "9999-12-31T23:59:59Z");
    other.finish();
}

#[test]
fn foreign_content_is_never_overwritten_by_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.json");
    std::fs::write(&path, "{\"precious\": true}\n").unwrap();
    drop(LockMgr::new(&path).try_acquire().unwrap());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"precious\": true}\n"
    );

    let quiet = dir.path().join("quiet.lock");
    drop(
        LockMgr::builder(&quiet)
            .record_holder(false)
            .build()
            .try_acquire()
            .unwrap(),
    );
    assert_eq!(std::fs::metadata(&quiet).unwrap().len(), 0);
}

#[tokio::test]
async fn remove_on_release_removes_while_held_and_waiters_follow_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let lock = LockMgr::builder(&path).remove_on_release(true).build();
    let g = lock.try_acquire().unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let (lock, path) = (lock.clone(), path.clone());
            tokio::spawn(async move {
                let g = lock.acquire(true, WAIT).await.unwrap();
                // The winner holds the file that is at the path now.
                let held = nix::sys::stat::fstat(&g).unwrap().st_ino;
                assert_eq!(held, std::fs::metadata(&path).unwrap().ino());
                drop(g);
                assert!(!path.exists(), "removed on release");
            })
        })
        .collect();
    common::until_waiting(&path).await;
    g.release().unwrap();
    assert!(!path.exists(), "removed on release");
    for w in waiters {
        // (Inode numbers are not compared with the removed file's: a file
        // system may hand a freed number out again.)
        tokio::time::timeout(LIVENESS, w).await.unwrap().unwrap();
    }
}

/// The removal protocol under stress: 4 processes x 2 tasks, each removing
/// the lock file on every release, never overlap and lose no increment.
#[test]
fn removal_keeps_mutual_exclusion_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("l.lock");
    let n = common::count_in_processes(&lock, 4, 2, 60, &["--remove"]);
    assert_eq!(n, 4 * 2 * 60);
    assert!(!lock.exists(), "the last holder removed the lock file");
}
