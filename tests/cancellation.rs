//! Cancellation: dropped `acquire` futures leak nothing. Alone in its test
//! binary, because it counts the whole process's file descriptors.

mod common;

use std::time::Duration;

use lockmgr::LockMgr;

/// A tiny deterministic generator: the test must be reproducible.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Thousands of acquires dropped at random points (before the first poll,
/// while asleep, right after a wake-up) leave no fd and no watch behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::new(dir.path().join("l"));

    // A wait that surely happens (the lock is held; it can only time out)
    // creates the process-wide watcher before the baseline is taken.
    {
        let _held = lock.try_acquire().unwrap();
        let err = lock
            .acquire(true, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert!(matches!(err, lockmgr::LockError::TimedOut { .. }), "{err}");
    }
    let fds = common::open_fds();
    let before = common::fd_targets();
    let watches = common::inotify_watches();

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut held = Some(lock.try_acquire().unwrap());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..3000u32 {
        let task_lock = lock.clone();
        let budget = Duration::from_micros(rng.next() % 3000);
        set.spawn(async move {
            let r = tokio::time::timeout(budget, task_lock.acquire(true, Duration::from_secs(60)))
                .await;
            // Won or not: anything won is dropped here.
            drop(r);
        });
        if i % 8 == 0 {
            tokio::task::yield_now().await;
        }
        // Now and then the lock changes hands, so some futures are dropped
        // right after a wake-up, and some even after winning.
        if i % 97 == 0 {
            held = match held.take() {
                Some(g) => {
                    drop(g);
                    None
                }
                None => lock.try_acquire().ok(),
            };
        }
    }
    // Also drop futures that were never polled.
    for _ in 0..1000 {
        drop(lock.acquire(true, Duration::from_secs(60)));
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    drop(held);
    assert_eq!(
        common::open_fds(),
        fds,
        "file descriptors leaked: before {before:#?} after {:#?}",
        common::fd_targets()
    );
    assert_eq!(common::inotify_watches(), watches, "inotify watches leaked");
    drop(lock.try_acquire().expect("lock still takeable"));
}
