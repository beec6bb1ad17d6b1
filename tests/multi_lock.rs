//! `LockMgr::acquire_all`: several lock files as one, in one order every
//! caller shares (so overlapping sets never deadlock), all or nothing.

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
