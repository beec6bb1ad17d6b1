//! A guard dropped in a forked child must not release the parent's lock,
//! and a program spawned while the lock is held must not keep it.
//! Alone in its test binary: it forks, so it should have few threads.

use std::process::Command;

use lockmgr::LockMgr;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

#[test]
fn guard_dropped_in_forked_child_keeps_parents_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let lock = LockMgr::new(&path);
    let guard = lock.try_acquire().unwrap();

    // SAFETY: the child only drops the guard (getpid, close) and exits with
    // `_exit`, touching no lock or allocator state another thread could hold.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(guard);
            // SAFETY: `_exit` is async-signal-safe and ends the child at once.
            unsafe { nix::libc::_exit(0) };
        }
        ForkResult::Parent { child } => {
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
        }
    }
    assert!(
        LockMgr::new(&path)
            .try_acquire()
            .unwrap_err()
            .is_contended(),
        "the child's drop released the parent's lock"
    );
    drop(guard);
    drop(LockMgr::new(&path).try_acquire().unwrap());
}

#[test]
fn spawned_program_does_not_inherit_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let lock = LockMgr::new(&path);
    let guard = lock.try_acquire().unwrap();
    // A program that is still running when the guard is dropped.
    let mut child = Command::new("sleep")
        .arg("60")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(guard);
    let free = LockMgr::new(&path).try_acquire();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(free.expect("the spawned program kept the lock"));
}
