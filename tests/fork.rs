//! A guard dropped in a forked child must not release the parent's lock;
//! the parent's release frees the lock although a forked child still holds
//! the descriptor; and a program spawned while the lock is held must not
//! keep it. Alone in its test binary: it forks, so it should have few
//! threads.

mod common;

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::sync::mpsc;

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

/// The owner's release is an explicit unlock of the open file description,
/// which a forked child shares: the lock is free at once for everyone,
/// although the child keeps the descriptor open (so no close event goes
/// out). A waiter in another process, asleep before the release, gets it.
#[test]
fn parents_release_frees_the_lock_while_a_forked_child_keeps_the_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let guard = LockMgr::new(&path).try_acquire().unwrap();
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();

    // SAFETY: the child only reads a pipe and exits with `_exit`, touching
    // no lock or allocator state another thread could hold.
    let child = match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(alive_w);
            let mut byte = [0u8; 1];
            // Keeps the inherited lock descriptor until the parent closes
            // its end of the pipe.
            while nix::unistd::read(&alive_r, &mut byte).is_ok_and(|n| n > 0) {}
            // SAFETY: `_exit` is async-signal-safe and ends the child at once.
            unsafe { nix::libc::_exit(0) };
        }
        ForkResult::Parent { child } => child,
    };
    drop(alive_r);

    let mut waiter = common::helper_command("hold", [&path])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = waiter.id();
    let stdout = waiter.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let first = common::role_lines(BufReader::new(stdout)).next();
        let _ = tx.send(first);
    });
    common::until_watched_by(pid, &path);

    drop(guard);
    let said = rx.recv_timeout(common::LIVENESS);
    drop(alive_w);
    assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
    let _ = waiter.kill();
    let _ = waiter.wait();
    let said = said.expect("the waiter in another process never got the freed lock");
    assert!(said.is_some_and(|l| l.starts_with("locked")));
}
