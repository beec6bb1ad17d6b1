//! The lock file renamed away or replaced by another program while a
//! `lockmgr` waiter waits for it (an operator's `mv`, a deploy that swaps
//! files in place, a cleanup job). The lock is the file at the path: a
//! waiter that wins the old file, which no longer has that name, must not
//! think it holds the lock, since anyone who opens the path now gets the
//! new file. It lets the old file go and contends for the file at the
//! path, after the holder of the old one released it, so that it never
//! runs beside that holder either. The lock holders are foreign C programs
//! (`tests/foreign/holder.c`), the semaphore's permit holders `lockmgr`
//! helper processes; each in a process of its own.
#![deny(unsafe_code)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::Foreign;
use lockmgr::{LockError, LockGuard, LockKind, LockMgr};
use tokio::task::JoinHandle;

/// Starts a `kind` waiter with no deadline for the lock at `path`, held
/// by another process, and returns once it sleeps on the file: on inotify
/// events (its first stage) or, with `settled`, in the kernel's queue.
async fn waiter(
    path: &Path,
    kind: LockKind,
    settled: bool,
) -> JoinHandle<Result<LockGuard, LockError>> {
    let lock = LockMgr::builder(path).kind(kind).max_attempts(1).build();
    let waiter = tokio::spawn(async move { lock.acquire(true, Duration::MAX).await });
    common::until_waiting(path).await;
    if settled {
        tokio::time::timeout(common::LIVENESS, async {
            while common::blocked_on(path) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the wait never settled in the kernel's queue");
    }
    waiter
}

/// Asserts that the lock at `path` is held: another lock of `kind` on the
/// path, a descriptor of its own, cannot have it.
fn assert_held(path: &Path, kind: LockKind) {
    let other = LockMgr::builder(path).kind(kind).build();
    match other.try_acquire() {
        Err(e) if e.is_contended() => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!(
            "the lock at {} is free while the waiter thinks it holds it",
            path.display()
        ),
    }
}

/// The holder renames the file away and exits: the waiter holds the lock
/// at the path (a new file there), not the renamed file.
async fn renamed_away(family: &str, kind: LockKind, settled: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let holder = Foreign::start(family, "ex", &path);
    let waiter = waiter(&path, kind, settled).await;
    std::fs::rename(&path, dir.path().join("l.lock.old")).unwrap();
    holder.finish();
    let guard = common::won(waiter, "the waiter never took the lock after the rename").await;
    assert_eq!(guard.path(), path);
    assert!(path.exists(), "no file at the lock's path");
    assert_held(&path, kind);
    drop(guard);
    assert!(LockMgr::builder(&path)
        .kind(kind)
        .build()
        .try_acquire()
        .is_ok());
}

#[tokio::test(flavor = "current_thread")]
async fn ofd_file_renamed_away_during_the_first_stage() {
    renamed_away("ofd", LockKind::Ofd, false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn ofd_file_renamed_away_during_a_settled_wait() {
    renamed_away("ofd", LockKind::Ofd, true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn flock_file_renamed_away_during_a_settled_wait() {
    renamed_away("flock", LockKind::Flock, true).await;
}

/// The lock file's directory is renamed away and made anew while a waiter
/// waits: the path now names a file in the new directory, which the
/// waiter takes once the old file's holder exits.
#[tokio::test(flavor = "current_thread")]
async fn directory_renamed_away_and_made_anew() {
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("locks");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join("l.lock");
    let holder = Foreign::start("ofd", "ex", &path);
    let waiter = waiter(&path, LockKind::Ofd, false).await;
    std::fs::rename(&dir, top.path().join("locks.old")).unwrap();
    std::fs::create_dir(&dir).unwrap();
    holder.finish();
    let guard = common::won(waiter, "the waiter never took the lock after the rename").await;
    assert!(path.exists(), "no file at the lock's path");
    assert_held(&path, LockKind::Ofd);
    drop(guard);
}

/// The file is replaced by a new one (written aside, renamed over the
/// path) while its holder holds it, and a second program takes the new
/// file. When the first holder exits, the waiter must go on waiting, now
/// for the new file, and take it when the second program lets it go.
async fn replaced(family: &str, kind: LockKind, settled: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let first = Foreign::start(family, "ex", &path);
    let mut waiter = waiter(&path, kind, settled).await;
    let fresh = dir.path().join("l.lock.new");
    std::fs::write(&fresh, b"").unwrap();
    std::fs::rename(&fresh, &path).unwrap();
    let second = Foreign::start(family, "ex", &path);
    first.finish();
    // Now waiting for the new file (or, wrongly, holding the old one).
    tokio::select! {
        () = common::until_waiting(&path) => {}
        out = &mut waiter => panic!(
            "the waiter took the replaced file while another program holds the one at the path: {:?}",
            out.unwrap().map(|g| g.path().to_owned())
        ),
    }
    assert!(!waiter.is_finished());
    second.finish();
    let guard = common::won(waiter, "the waiter never took the new file").await;
    assert_held(&path, kind);
    drop(guard);
}

#[tokio::test(flavor = "current_thread")]
async fn ofd_file_replaced_during_the_first_stage() {
    replaced("ofd", LockKind::Ofd, false).await;
}

#[tokio::test(flavor = "current_thread")]
async fn ofd_file_replaced_during_a_settled_wait() {
    replaced("ofd", LockKind::Ofd, true).await;
}

#[tokio::test(flavor = "current_thread")]
async fn flock_file_replaced_during_the_first_stage() {
    replaced("flock", LockKind::Flock, false).await;
}

/// A semaphore's file replaced while a waiter waits for a permit, and a
/// permit of the new file taken by another process: when the old file's
/// holder gives its permit back, the waiter must wait on for the new file.
#[tokio::test(flavor = "current_thread")]
async fn semaphore_file_replaced() {
    use lockmgr::Semaphore;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sem");
    let first = common::Holder::start_with(&path, "permit-hold", &["1"]);
    let semaphore = Semaphore::builder(&path, 1).max_attempts(1).build();
    assert!(semaphore.try_acquire().unwrap_err().is_contended());
    let mut waiter = tokio::spawn(async move { semaphore.acquire(true, Duration::MAX).await });
    common::until_waiting(&path).await;
    let fresh = dir.path().join("s.sem.new");
    std::fs::write(&fresh, b"").unwrap();
    std::fs::rename(&fresh, &path).unwrap();
    let second = common::Holder::start_with(&path, "permit-hold", &["1"]);
    first.finish();
    tokio::select! {
        () = common::until_waiting(&path) => {}
        out = &mut waiter => panic!(
            "the waiter took a permit of the replaced file while another process holds the one at the path: slot {:?}",
            out.unwrap().map(|p| p.slot())
        ),
    }
    second.finish();
    let permit = tokio::time::timeout(common::LIVENESS, waiter)
        .await
        .expect("the waiter never took the new file's permit")
        .unwrap()
        .expect("permit");
    assert!(Semaphore::new(&path, 1)
        .try_acquire()
        .unwrap_err()
        .is_contended());
    drop(permit);
}

/// The file is replaced by a symlink to another file (or by a FIFO) while
/// a waiter waits: when the holder lets go, the waiter fails with a typed
/// error naming the lock and what is at the path, and neither follows the
/// link nor touches what it points to.
#[tokio::test(flavor = "current_thread")]
async fn file_replaced_by_a_symlink_or_a_fifo_is_refused_untouched() {
    use lockmgr::FileKind;
    for kind in [FileKind::Symlink, FileKind::Fifo] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.lock");
        let victim = dir.path().join("precious");
        std::fs::write(&victim, b"keep me\n").unwrap();
        let holder = Foreign::start("ofd", "ex", &path);
        let waiter = waiter(&path, LockKind::Ofd, false).await;
        let fresh = dir.path().join("l.lock.new");
        match kind {
            FileKind::Symlink => std::os::unix::fs::symlink(&victim, &fresh).unwrap(),
            _ => nix::unistd::mkfifo(&fresh, nix::sys::stat::Mode::from_bits_truncate(0o644))
                .unwrap(),
        }
        std::fs::rename(&fresh, &path).unwrap();
        holder.finish();
        let out = tokio::time::timeout(common::LIVENESS, waiter)
            .await
            .expect("the waiter neither failed nor won")
            .unwrap();
        match out {
            Err(LockError::NotAFile { lock, kind: found }) => {
                assert_eq!(lock, lockmgr::LockId::file(&path));
                assert_eq!(found, kind);
            }
            other => panic!(
                "{kind:?} at the path: {:?}",
                other.map(|g| g.path().to_owned())
            ),
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me\n");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        match kind {
            FileKind::Symlink => assert!(meta.file_type().is_symlink()),
            _ => assert_eq!(meta.len(), 0),
        }
    }
}
