//! `LockMgr::acquire_all`: several lock files as one, in one order every
//! caller shares (so overlapping sets never deadlock), all or nothing.
#![deny(unsafe_code)]

mod common;

use std::time::Duration;

use common::LIVENESS;
use lockmgr::{LockError, LockMgr};

/// Two tasks ask, 200 times each, for the same three locks in opposite
/// orders (and one by another path to the same file): taken one by one in
/// the given order, they would soon each hold what the other waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sets_in_opposite_orders_never_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let a = LockMgr::new(dir.path().join("a.lock"));
    let b = LockMgr::new(dir.path().join("b.lock"));
    let c = LockMgr::new(dir.path().join("sub/c.lock"));
    let c_again = LockMgr::new(dir.path().join("sub/../sub/c.lock"));
    let forward = vec![a.clone(), b.clone(), c];
    let backward = vec![c_again, b, a];
    let run = |set: Vec<LockMgr>| {
        tokio::spawn(async move {
            for _ in 0..200 {
                let guards = LockMgr::acquire_all(&set, true, LIVENESS).await.unwrap();
                assert_eq!(guards.len(), 3);
                tokio::task::yield_now().await;
            }
        })
    };
    let (one, two) = (run(forward), run(backward));
    tokio::time::timeout(LIVENESS, async {
        one.await.unwrap();
        two.await.unwrap();
    })
    .await
    .expect("deadlocked");
}

/// One lock of the set is held by another process: the call times out,
/// and none of the others is left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.lock")))
        .collect();
    let locks: Vec<LockMgr> = paths.iter().map(LockMgr::new).collect();
    let held = common::Holder::start(&paths[1]);
    let e = LockMgr::acquire_all(&locks, true, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::TimedOut { .. }), "{e:?}");
    assert_eq!(e.lock().path(), Some(paths[1].as_path()));
    drop(locks[0].try_acquire().expect("a was let go"));
    drop(locks[2].try_acquire().expect("c was let go"));
    held.finish();
    let guards = LockMgr::acquire_all(&locks, false, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        guards
            .iter()
            .map(|g| g.path().to_path_buf())
            .collect::<Vec<_>>(),
        paths,
        "in the order given"
    );
}

/// One file twice in a set is refused (it could never be granted).
#[tokio::test]
async fn the_same_file_twice_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = LockMgr::new(dir.path().join("a.lock"));
    let same = LockMgr::new(dir.path().join("./a.lock"));
    let e = LockMgr::acquire_all(&[a, same], true, LIVENESS)
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Invalid { .. }), "{e:?}");
    assert!(e.to_string().contains("same file"), "{e}");
}

/// The order is of the files at the paths when the call starts; a file
/// replaced meanwhile (`remove_on_release`, `logrotate`, another program's
/// rename) may sort elsewhere. A caller that finds it took a file sorting
/// after a lock it still has to wait for lets go and starts over in the
/// new order, so it never waits in a circle with a caller that ordered
/// after the change. On the old code the first caller held the new file
/// and waited for the second's lock, which waited for the new file, until
/// the first caller's budget ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_while_waited_for_never_makes_a_circle() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    // Three files in inode order: the old file at `f`, then `s`, then the
    // one that will replace the old file.
    let mut made: Vec<_> = (0..3)
        .map(|n| {
            let path = dir.path().join(format!("x{n}"));
            std::fs::write(&path, b"").unwrap();
            (std::fs::metadata(&path).unwrap().ino(), path)
        })
        .collect();
    made.sort();
    let (f, s, f2) = (
        dir.path().join("f"),
        dir.path().join("s"),
        dir.path().join("f2"),
    );
    for ((_, from), to) in made.iter().zip([&f, &s, &f2]) {
        std::fs::rename(from, to).unwrap();
    }
    let (lock_f, lock_s) = (LockMgr::new(&f), LockMgr::new(&s));
    let budget = Duration::from_secs(5);
    let set = |a: &LockMgr, b: &LockMgr| {
        vec![
            LockMgr::builder(a.path()).max_attempts(1).build(),
            LockMgr::builder(b.path()).max_attempts(1).build(),
        ]
    };
    let until_blocked_on = |path: &std::path::Path| {
        let path = path.to_owned();
        async move {
            tokio::time::timeout(LIVENESS, async {
                while common::blocked_on(&path) == 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("the first caller never settled into the kernel's wait")
        }
    };

    let old_f = lock_f.try_acquire().unwrap();
    let new_f = LockMgr::new(&f2).try_acquire().unwrap();
    let first_set = set(&lock_f, &lock_s);
    let first = tokio::spawn(async move { LockMgr::acquire_all(&first_set, true, budget).await });
    // The first caller, ordered [f, s], waits for the old file in the
    // kernel's queue, which grants a release to it ahead of any waiter on
    // inotify events.
    until_blocked_on(&f).await;
    // The file at `f` is replaced by one that sorts after `s`; the first
    // caller follows the path once the old file is free.
    std::fs::rename(&f2, &f).unwrap();
    drop(old_f);
    until_blocked_on(&f).await;
    // The second caller orders [s, f]: it takes `s`, then waits for `f`.
    let second_set = set(&lock_s, &lock_f);
    let second = tokio::spawn(async move { LockMgr::acquire_all(&second_set, true, budget).await });
    tokio::time::timeout(LIVENESS, async {
        loop {
            let waiting = lock_f
                .holders()
                .unwrap()
                .holding
                .iter()
                .find_map(|h| h.waiting);
            if waiting.is_some() && !lock_s.holders().unwrap().is_free() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the second caller never took s and waited for the new file");
    drop(new_f);
    // Each caller's guards drop as soon as it has shown it got both.
    assert_eq!(second.await.unwrap().map(|g| g.len()).unwrap(), 2);
    assert_eq!(first.await.unwrap().map(|g| g.len()).unwrap(), 2);
}

/// A file of the set replaced, while waited for, by another of the set
/// (`ln -f s f`): the call would hold `s` by one path and wait for it by
/// the other, for ever against itself. It finds the two are one file
/// before it waits, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_by_another_of_the_set_is_refused_not_waited_for() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let (f, s) = (dir.path().join("f"), dir.path().join("s"));
    // Made in an order that sorts `f` first, so that `s` is the lock
    // still to be waited for when `f` is won.
    std::fs::write(&f, b"").unwrap();
    std::fs::write(&s, b"").unwrap();
    if std::fs::metadata(&f).unwrap().ino() > std::fs::metadata(&s).unwrap().ino() {
        let tmp = dir.path().join("tmp");
        std::fs::rename(&f, &tmp).unwrap();
        std::fs::rename(&s, &f).unwrap();
        std::fs::rename(&tmp, &s).unwrap();
    }
    let lock_f = LockMgr::new(&f);
    let old_f = lock_f.try_acquire().unwrap();
    let set = vec![
        LockMgr::builder(&f).max_attempts(1).build(),
        LockMgr::builder(&s).max_attempts(1).build(),
    ];
    let call =
        tokio::spawn(async move { LockMgr::acquire_all(&set, true, Duration::from_secs(5)).await });
    common::until_waiting(&f).await;
    let link = dir.path().join("link");
    std::fs::hard_link(&s, &link).unwrap();
    std::fs::rename(&link, &f).unwrap();
    drop(old_f);
    let err = tokio::time::timeout(LIVENESS, call)
        .await
        .expect("waited for itself")
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, LockError::Invalid { .. }), "{err:?}");
}
