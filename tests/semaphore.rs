//! `Semaphore`: at most N holders across processes and tasks, on one file.
#![deny(unsafe_code)]

mod common;

use common::LIVENESS;
use lockmgr::{LockError, LockKind, LockMgr, Semaphore, Status};

/// Five processes of two tasks each take one of three permits 20 times:
/// no slot is ever held twice (an `O_EXCL` marker per slot), every slot is
/// below 3, and everyone gets through.
#[test]
fn never_more_than_n_holders_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let procs = common::helpers(
        5,
        "permits",
        &[
            path.to_str().unwrap(),
            "3",
            "20",
            "2",
            dir.path().to_str().unwrap(),
        ],
    );
    assert!(common::all_succeed(procs), "a slot was held twice");
}

/// A status query on a semaphore's file says how many of its permits are
/// taken (this process's, and another process's until that process is
/// killed), instead of taking the slot locks for one exclusive holder.
#[test]
fn status_counts_the_permits_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let sem = Semaphore::new(&path, 3);
    let lock = LockMgr::new(&path);
    drop(sem.try_acquire().unwrap());
    assert_eq!(
        lock.status().unwrap(),
        Status::Semaphore {
            permits: 3,
            taken: 0
        }
    );
    let one = sem.try_acquire().unwrap();
    assert_eq!(
        lock.status().unwrap(),
        Status::Semaphore {
            permits: 3,
            taken: 1
        }
    );
    assert_eq!(lock.holder().unwrap(), None);

    // A permit of another process, which is then killed.
    let other = common::Holder::start_with(&path, "permit-hold", &["3"]);
    assert_eq!(
        lock.status().unwrap(),
        Status::Semaphore {
            permits: 3,
            taken: 2
        }
    );
    other.kill(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        lock.status().unwrap(),
        Status::Semaphore {
            permits: 3,
            taken: 1
        }
    );
    drop(one);
    assert_eq!(
        lock.status().unwrap(),
        Status::Semaphore {
            permits: 3,
            taken: 0
        }
    );

    // `flock` locks know nothing of permits.
    let flock = LockMgr::builder(&path).kind(LockKind::Flock).build();
    assert_eq!(flock.status().unwrap(), Status::Free);
}

/// All N permits can be held at once, in N different slots, and not N+1.
#[test]
fn n_at_once_and_not_more() {
    let dir = tempfile::tempdir().unwrap();
    let sem = Semaphore::new(dir.path().join("pool.sem"), 4);
    let permits: Vec<_> = (0..4).map(|_| sem.try_acquire().unwrap()).collect();
    let mut slots: Vec<u32> = permits.iter().map(|p| p.slot()).collect();
    slots.sort();
    assert_eq!(slots, [0, 1, 2, 3]);
    assert!(sem.try_acquire().unwrap_err().is_contended());
    drop(permits);
    assert!(sem.try_acquire().is_ok());
}

/// Both permits are held by other processes; one is killed with SIGKILL:
/// the waiter gets its permit (its slot) at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_gives_its_permit_to_a_waiter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let a = common::Holder::start_with(&path, "permit-hold", &["2"]);
    let b = common::Holder::start_with(&path, "permit-hold", &["2"]);
    let sem = Semaphore::new(&path, 2);
    assert!(sem.try_acquire().unwrap_err().is_contended());
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire(true, LIVENESS).await }
    });
    common::until_waiting(&path).await;
    a.kill(nix::sys::signal::Signal::SIGKILL);
    let permit = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in")
        .unwrap()
        .unwrap();
    assert!(permit.slot() < 2);
    drop(b);
}

/// Ten thousand tasks of one process wait for one permit: they cost one
/// descriptor and one watch between them, and each gets it in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_waiting_tasks_cost_one_descriptor() {
    const TASKS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let sem = Semaphore::new(&path, 1);
    let held = sem.try_acquire().unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let (sem, done) = (sem.clone(), done.clone());
        tasks.spawn(async move {
            drop(sem.acquire(true, LIVENESS).await.unwrap());
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    common::until_waiting(&path).await;
    // The holder's descriptor and the head's.
    assert!(
        common::fds_on(&path) <= 2,
        "{} descriptors",
        common::fds_on(&path)
    );
    assert!(common::watches_on(&path) <= 1);
    drop(held);
    tokio::time::timeout(LIVENESS, async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("not every task got the permit in turn");
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), TASKS);
    assert_eq!(common::fds_on(&path), 0);
}

/// A waiting acquire dropped leaves no descriptor and no permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_waiter_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let sem = Semaphore::new(&path, 1);
    let held = sem.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire(true, LIVENESS).await }
    });
    common::until_waiting(&path).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    drop(held);
    assert_eq!(common::fds_on(&path), 0);
    drop(sem.try_acquire().unwrap());
}

/// Users that disagree on N, absurd numbers and a file that is not a
/// semaphore's get a clear error, and nothing is overwritten.
#[test]
fn disagreement_and_bad_input_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let two = Semaphore::new(&path, 2).try_acquire().unwrap();
    let e = Semaphore::new(&path, 3).try_acquire().unwrap_err();
    assert!(matches!(e, LockError::Invalid { .. }), "{e:?}");
    let said = e.to_string();
    assert!(
        said.contains("has 2 permits") && said.contains("asks for 3"),
        "{said}"
    );
    drop(two);
    for n in [0, 5000] {
        let absurd = dir.path().join(format!("{n}.sem"));
        let e = Semaphore::new(&absurd, n).try_acquire().unwrap_err();
        assert!(matches!(e, LockError::Invalid { .. }), "{n}: {e:?}");
        // Refused before anything is made (before: an empty file was left).
        assert!(!absurd.exists(), "{n}: {} was created", absurd.display());
    }
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "precious").unwrap();
    let e = Semaphore::new(&data, 2).try_acquire().unwrap_err();
    assert!(matches!(e, LockError::Invalid { .. }), "{e:?}");
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "precious");
    let e = Semaphore::new(dir.path(), 2).try_acquire().unwrap_err();
    assert!(matches!(e, LockError::NotAFile { .. }), "{e:?}");
}

/// Two first users of a new semaphore file that disagree on N, starting
/// together: never both get a permit; the one that did not write the
/// count learns of the disagreement. (Before: each could write its count
/// and read its own back, and both went in: 28 times in 100 with two
/// `lockmgr run --permits` processes.)
#[test]
fn first_users_that_disagree_never_both_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut both = 0;
    for round in 0..300 {
        let path = dir.path().join(format!("{round}.sem"));
        let start = std::sync::Barrier::new(2);
        let (one, three) = std::thread::scope(|s| {
            let take = |n: u32| {
                let (path, start) = (&path, &start);
                s.spawn(move || {
                    start.wait();
                    Semaphore::new(path, n).try_acquire()
                })
            };
            let (one, three) = (take(1), take(3));
            (one.join().unwrap(), three.join().unwrap())
        });
        if one.is_ok() && three.is_ok() {
            both += 1;
        }
        // The other is refused for the count, or finds the one permit taken.
        for refused in [&one, &three].into_iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(refused, LockError::Invalid { .. }) || refused.is_contended(),
                "{refused:?}"
            );
        }
    }
    assert_eq!(both, 0, "rounds in which both got a permit");
}

/// `try_acquire` in a thread of its own, so that a call that blocks fails
/// the test instead of hanging it.
fn try_within_liveness(sem: &Semaphore) -> Result<lockmgr::Permit, LockError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let sem = sem.clone();
    std::thread::spawn(move || {
        let _ = tx.send(sem.try_acquire());
    });
    rx.recv_timeout(LIVENESS)
        .expect("try_acquire blocked: it waited for the lock on the whole file")
}

/// A semaphore's file that is still empty (no count written yet) and is
/// locked whole by a program that is no semaphore user (a POSIX `lockf`
/// holder here; a shared `LockMgr` holder of this very process below): a
/// try says every permit is taken at once, and a wait gets its permit,
/// writing the count, once that program lets go. (Before: the count's
/// write waited for the whole-file lock in the kernel, with no time limit,
/// on the runtime's thread: `try_acquire` blocked until the holder left,
/// and forever when the holder was this process.)
#[tokio::test(flavor = "current_thread")]
async fn an_empty_file_locked_whole_is_waited_for_not_blocked_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let sem = Semaphore::new(&path, 2);

    let foreign = common::Foreign::start("posix", "sh", &path);
    let err = try_within_liveness(&sem).unwrap_err();
    assert!(matches!(err, LockError::WouldBlock { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"", "nothing written");
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire(true, LIVENESS).await }
    });
    common::until_waiting(&path).await;
    foreign.finish();
    let permit = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter was not let in when the whole-file lock went")
        .unwrap()
        .unwrap();
    assert!(permit.slot() < 2);
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .starts_with("lockmgr-semaphore/1 permits=2\n"));
    drop(permit);

    // The same with the holder in this process.
    let path = dir.path().join("mine.sem");
    let sem = Semaphore::new(&path, 2);
    let shared = LockMgr::new(&path).try_acquire_shared().unwrap();
    let err = try_within_liveness(&sem).unwrap_err();
    assert!(matches!(err, LockError::WouldBlock { .. }), "{err}");
    drop(shared);
    assert!(try_within_liveness(&sem).unwrap().slot() < 2);
}

/// A new semaphore's count that cannot be written (a full disk) is an
/// error of writing the file, naming it, not of locking it.
#[test]
fn a_count_that_cannot_be_written_is_a_write_error() {
    let dir = tempfile::tempdir().unwrap();
    let fs = common::SmallFs::mount(&dir.path().join("small"), "64k");
    let filler = dir.path().join("small/filler");
    let _ = std::fs::write(&filler, vec![0u8; 1 << 20]);
    let path = dir.path().join("small/pool.sem");
    let err = Semaphore::new(&path, 2).try_acquire().unwrap_err();
    match &err {
        LockError::Io { op, source, .. } => {
            assert_eq!(*op, lockmgr::Operation::Write, "{err}");
            assert_eq!(source.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
        }
        other => panic!("{other}"),
    }
    assert!(
        err.to_string().starts_with("cannot write lock file "),
        "{err}"
    );
    drop(fs);
}

/// Another first user of a new semaphore's file holds the byte the count
/// is written under (here a Python program with a POSIX lock on that byte
/// alone), so a waiter finds the file empty and uncounted; the other then
/// writes a count of 2 and keeps the byte. The waiter reads the count it
/// finds (its write sends no event: at the latest on the wait's next
/// recheck) and takes a free permit; a user that asks for another count is
/// refused.
#[tokio::test(flavor = "current_thread")]
async fn a_count_written_under_anothers_lock_is_read_not_waited_for() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    std::fs::write(&path, b"").unwrap();
    // The byte just below the first permit slot's (1 << 40).
    let script = "import fcntl, os, sys\n\
                  f = open(sys.argv[1], 'r+')\n\
                  fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, (1 << 40) - 2, 0)\n\
                  print('locked', flush=True)\n\
                  sys.stdin.readline()\n\
                  f.write('lockmgr-semaphore/1 permits=2\\n'); f.flush()\n\
                  print('written', flush=True)\n\
                  sys.stdin.read()\n";
    let mut first = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(first.stdout.take().unwrap()).lines();
    assert_eq!(said.next().unwrap().unwrap(), "locked");

    let sem = Semaphore::new(&path, 2);
    let err = try_within_liveness(&sem).unwrap_err();
    assert!(matches!(err, LockError::WouldBlock { .. }), "{err}");
    let waiter = tokio::spawn({
        let sem = sem.clone();
        async move { sem.acquire(true, LIVENESS).await }
    });
    common::until_waiting(&path).await;
    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(b"write\n").unwrap();
    stdin.flush().unwrap();
    assert_eq!(said.next().unwrap().unwrap(), "written");
    let permit = tokio::time::timeout(LIVENESS, waiter)
        .await
        .expect("the waiter never read the count written under another's lock")
        .unwrap()
        .unwrap();
    assert!(permit.slot() < 2);
    // The count it read is checked like any other.
    let err = try_within_liveness(&Semaphore::new(&path, 3)).unwrap_err();
    assert!(matches!(err, LockError::Invalid { .. }), "{err}");

    drop(stdin);
    first.wait().unwrap();
}

/// The host's listing of locked files says which is a semaphore's, with its
/// permits taken (here one of three, of this process).
#[test]
fn locked_files_tell_a_semaphore_and_its_permits_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let permit = Semaphore::new(&path, 3).try_acquire().unwrap();
    let lock = dir.path().join("plain.lock");
    let guard = LockMgr::new(&lock).try_acquire().unwrap();
    let metas = [
        std::fs::metadata(&path).unwrap(),
        std::fs::metadata(&lock).unwrap(),
    ];
    let listed = lockmgr::locked_files_among(&metas).unwrap();
    let of = |meta: &std::fs::Metadata| listed.iter().find(|f| f.is(meta)).unwrap();
    assert_eq!(
        of(&metas[0]).semaphore,
        Some(Status::Semaphore {
            permits: 3,
            taken: 1
        })
    );
    assert_eq!(of(&metas[1]).semaphore, None);
    drop((permit, guard));
}

/// A semaphore's file emptied while permits are held (a cleanup script, a
/// hand edit) gives no one a new count to go by: a user of another count
/// finds every permit taken until the holders have given theirs back (and
/// then writes its own), instead of holding one of "its" permits beside
/// them.
#[test]
fn a_file_emptied_while_permits_are_held_lets_no_other_count_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let two = Semaphore::new(&path, 2);
    let mine = two.try_acquire().unwrap();
    let other = common::Holder::start_with(&path, "permit-hold", &["2"]);
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let five = Semaphore::new(&path, 5);
    let refused = five.try_acquire().unwrap_err();
    assert!(refused.is_contended(), "{refused}");
    drop(mine);
    other.finish();
    let first = five.try_acquire().unwrap();
    assert!(matches!(two.try_acquire(), Err(LockError::Invalid { .. })));
    drop(first);
}

/// First users of a new semaphore file who start at once, with a permit
/// each to be had, all get one: one writes the count, and the others,
/// seeing the count's byte taken, take a slot and wait the few system
/// calls for it, without holding that slot meanwhile (a first user that
/// found another's slot held while it was about to write the count would
/// take it for a permit of a file emptied under its holder, and write
/// nothing: both would give up, every permit free).
#[test]
fn first_users_starting_together_all_get_a_permit() {
    let dir = tempfile::tempdir().unwrap();
    const USERS: usize = 6;
    for round in 0..300 {
        let path = dir.path().join(format!("pool-{round}.sem"));
        let start = std::sync::Barrier::new(USERS);
        let refused = std::thread::scope(|s| {
            let users: Vec<_> = (0..USERS)
                .map(|_| {
                    s.spawn(|| {
                        let sem = Semaphore::new(&path, USERS as u32);
                        start.wait();
                        sem.try_acquire().map(drop).err()
                    })
                })
                .collect();
            users
                .into_iter()
                .filter_map(|u| u.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert!(refused.is_empty(), "round {round}: {refused:?}");
    }
}
