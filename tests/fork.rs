//! A guard dropped in a forked child must not release the parent's lock;
//! the parent's release frees the lock although a forked child still holds
//! the descriptor; and a program spawned while the lock is held must not
//! keep it; and a child forked while the parent's threads use the crate
//! can lock. Alone in its test binary: it forks, and its children may use
//! only what a fork leaves usable.
#![deny(unsafe_code)]

mod common;

use common::sys::{exit_child, fork};

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::sync::mpsc;

use lockmgr::LockMgr;
use nix::sys::wait::{waitpid, WaitStatus};

#[test]
fn guard_dropped_in_forked_child_keeps_parents_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let lock = LockMgr::new(&path);
    let guard = lock.try_acquire().unwrap();

    // The child only drops the guard (getpid, close), touching no lock or
    // allocator state another thread could hold.
    let Some(child) = fork() else {
        drop(guard);
        exit_child(0)
    };
    assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
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

    // The child only reads a pipe, touching no lock or allocator state
    // another thread could hold.
    let Some(child) = fork() else {
        drop(alive_w);
        let mut byte = [0u8; 1];
        // Keeps the inherited lock descriptor until the parent closes its
        // end of the pipe.
        while nix::unistd::read(&alive_r, &mut byte).is_ok_and(|n| n > 0) {}
        exit_child(0)
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

/// A forked child starts with none of the parent's waiting machinery: not
/// its line for the file (whose head waits in the kernel, on a thread the
/// child does not have), not its idle helper threads. It waits for the lock
/// on its own, and gets it once it is freed.
#[test]
fn a_forked_child_waits_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Waits that end leave their helper threads idle in the pool: three of
    // them at once, so that some are idle when the parent forks.
    let warm: Vec<_> = (0..3)
        .map(|i| dir.path().join(format!("warm{i}")))
        .collect();
    let held: Vec<_> = warm
        .iter()
        .map(|w| LockMgr::new(w).try_acquire().unwrap())
        .collect();
    let waiters: Vec<_> = warm
        .iter()
        .map(|w| {
            let lock = LockMgr::new(w);
            rt.spawn(async move { lock.acquire(true, common::LIVENESS).await.map(drop) })
        })
        .collect();
    for w in &warm {
        until(|| common::blocked_on(w) == 1, "a warm-up waiter");
    }
    drop(held);
    for w in waiters {
        rt.block_on(w).unwrap().unwrap();
    }
    // A task of the parent waits for `path` in the kernel when it forks.
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();
    let parent_waiter = rt.spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, common::LIVENESS).await.map(drop) }
    });
    until(|| common::blocked_on(&path) == 1, "the parent's waiter");

    // The child makes a runtime and waits for the lock: it takes no lock
    // another thread of the parent could have held at the fork but the
    // allocator's, which the C library resets in the child.
    let Some(child) = fork() else {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(LockMgr::new(&path).acquire(true, common::LIVENESS));
        exit_child(i32::from(got.is_err()))
    };
    // The child waits too before the lock is freed.
    until(|| common::blocked_on(&path) == 2, "the child's waiter");
    drop(held);
    rt.block_on(parent_waiter).unwrap().unwrap();
    assert_eq!(
        waitpid(child, None).unwrap(),
        WaitStatus::Exited(child, 0),
        "the child did not get the freed lock"
    );
}

/// A child forked while other threads of the parent use the crate (tasks
/// that wait for a lock and give up at random, so that the crate's
/// process-wide mutexes are held now and then) can use locks: a 50 ms
/// wait ends in `TimedOut`, never hangs. (Before: about one child in a
/// hundred inherited a mutex locked by a thread it does not have, and
/// waited for it for ever, whatever its budget.)
#[test]
fn a_child_forked_while_the_parents_threads_wait_can_lock() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    // Held for good, through a description of its own: every wait here
    // waits, in the parent and in the children.
    let _held = LockMgr::new(&path).try_acquire().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut seed = std::process::id() as u64 | 1;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below
    };
    for _ in 0..8 {
        let (lock, give_up) = (LockMgr::new(&path), random(5) + 1);
        rt.spawn(async move {
            loop {
                let budget = Duration::from_millis(give_up);
                let _ = tokio::time::timeout(budget, lock.acquire(true, Duration::MAX)).await;
            }
        });
    }
    let mut children = Vec::new();
    for _ in 0..300 {
        // Load, not synchronisation: forks fall at random moments of the
        // waiters' churn.
        std::thread::sleep(Duration::from_micros(random(2000)));
        // The child makes a runtime and waits: it takes no lock of the
        // parent's threads but the allocator's (reset by the C library)
        // and, before the fix, the crate's.
        let Some(child) = fork() else {
            // A panic here must not return into the harness (which would
            // end this child with status 0): it ends the child with 101.
            let timed_out = std::panic::catch_unwind(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let got = rt.block_on(LockMgr::new(&path).acquire(true, Duration::from_millis(50)));
                matches!(got, Err(lockmgr::LockError::TimedOut { .. }))
            });
            exit_child(match timed_out {
                Ok(true) => 0,
                Ok(false) => 3,
                Err(_) => 101,
            })
        };
        children.push(child);
    }
    let deadline = Instant::now() + common::LIVENESS;
    let mut hung = 0;
    for child in children {
        loop {
            match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).unwrap() {
                WaitStatus::StillAlive if Instant::now() < deadline => std::thread::yield_now(),
                WaitStatus::StillAlive => {
                    hung += 1;
                    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    break;
                }
                status => {
                    assert_eq!(status, WaitStatus::Exited(child, 0));
                    break;
                }
            }
        }
    }
    rt.shutdown_background();
    assert_eq!(
        hung,
        0,
        "children still waiting after {:?}",
        common::LIVENESS
    );
}

/// A child made by a raw `clone(2)` system call (no `fork` handlers run)
/// that drops the parent's guard must not release the parent's lock. (In a
/// helper process with no other thread: a raw clone resets no lock that
/// another thread may hold, the allocator's included.)
#[test]
fn guard_dropped_in_a_raw_clone_child_keeps_parents_lock() {
    assert_eq!(raw_clone_helper("raw-clone-drop"), "ok");
}

/// A child made by a raw `clone(2)` that wins a lock records itself, not
/// its parent, as the holder.
#[test]
fn a_raw_clone_child_records_itself_as_the_holder() {
    assert_eq!(raw_clone_helper("raw-clone-record"), "ok");
}

/// pid 1 of a pid namespace (a container's first process) that makes a
/// child in a pid namespace of its own, pid 1 there too, without `exec`:
/// the child's record names its own namespace, not the one its parent
/// remembered (needs root, for `unshare --pid`). Before, the namespace was
/// remembered by pid, and both are pid 1.
#[test]
fn a_child_in_a_new_pid_namespace_records_its_own_namespace() {
    let said = helper_said("nested-pid-namespace-record", |helper| {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork"])
            .arg(helper.get_program())
            .args(helper.get_args())
            .envs(helper.get_envs().filter_map(|(k, v)| Some((k, v?))));
        cmd
    });
    assert_eq!(said, "ok");
}

/// What the helper process in `role` says of its raw clone child.
fn raw_clone_helper(role: &str) -> String {
    helper_said(role, |helper| helper)
}

/// What the helper process in `role`, started by `start` from the plain
/// helper command, says of its child.
fn helper_said(role: &str, start: impl FnOnce(Command) -> Command) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let out = start(common::helper_command(role, [&path]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = common::role_lines(&out.stdout[..]).next();
    said.unwrap_or_default()
}

/// Spins (yielding) until `done`, within the liveness bound.
fn until(done: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + common::LIVENESS;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never went to sleep"
        );
        std::thread::yield_now();
    }
}
