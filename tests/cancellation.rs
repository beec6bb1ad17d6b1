//! Cancellation: dropped `acquire` futures leak nothing. Alone in its test
//! binary, because it counts the whole process's file descriptors.
#![deny(unsafe_code)]

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
/// while asleep, right after a wake-up) leave nothing behind: the one wait
/// a line may keep in the kernel after its tasks gave up ends as soon as the
/// lock is free, with its descriptor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::new(dir.path().join("l"));

    // A wait that surely happens (the lock is held; it can only time out)
    // starts the helper threads before the baseline is taken; the wait it
    // gave up on ends once the lock is free.
    {
        let _held = lock.try_acquire().unwrap();
        let err = lock
            .acquire(true, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert!(matches!(err, lockmgr::LockError::TimedOut { .. }), "{err}");
    }
    drop(lock.acquire(true, common::LIVENESS).await.unwrap());
    let path = dir.path().join("l");
    tokio::time::timeout(common::LIVENESS, async {
        while common::fds_on(&path) > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the abandoned wait never ended");
    let fds = common::open_fds();

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
    // Once the lock is free, every wait given up on ends, and with it its
    // descriptor and its place in the kernel's queue.
    drop(
        lock.acquire(true, common::LIVENESS)
            .await
            .expect("lock still takeable"),
    );
    common::until_open_fds(fds).await;
    assert_eq!(common::blocked_on(&path), 0, "a wait stayed in the kernel");
}
