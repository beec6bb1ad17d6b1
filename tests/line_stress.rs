//! A long randomized run of the in-process line and the watcher's
//! registrations, with the invariants asserted throughout: tasks join and
//! leave lines, time out, are cancelled at random await points, leave the
//! head of a line unpolled for a while, take shared and exclusive locks,
//! reach one file by two paths, and remove the lock file on release. Never
//! two exclusive holders (nor a shared and an exclusive one), never a
//! waiter with a generous budget left waiting, and no descriptor or watch
//! left behind at the end.
//!
//! Why not a model checker (loom, shuttle): the line and the watcher are
//! built on the kernel's locks, descriptors and inotify, and on Tokio's
//! timers and `Notify`; a model checker runs neither the kernel's side nor
//! Tokio's real timers, so it would check a model of the code rather than
//! the code. This runs the real thing, many interleavings per run, with the
//! seed printed (and `LOCKMGR_TEST_SEED` replaying it).
#![deny(unsafe_code)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::LIVENESS;
use lockmgr::LockMgr;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Who is inside one file's lock: exclusive holders and shared holders.
#[derive(Default)]
struct Inside {
    exclusive: AtomicUsize,
    shared: AtomicUsize,
}

impl Inside {
    fn enter_exclusive(&self) {
        assert_eq!(
            self.exclusive.fetch_add(1, Ordering::SeqCst),
            0,
            "two exclusive holders"
        );
        assert_eq!(
            self.shared.load(Ordering::SeqCst),
            0,
            "exclusive beside shared"
        );
    }
    fn leave_exclusive(&self) {
        self.exclusive.fetch_sub(1, Ordering::SeqCst);
    }
    fn enter_shared(&self) {
        self.shared.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            self.exclusive.load(Ordering::SeqCst),
            0,
            "shared beside exclusive"
        );
    }
    fn leave_shared(&self) {
        self.shared.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Target {
    lock: LockMgr,
    inside: Arc<Inside>,
    /// Whether shared locks are taken on it too.
    shared_too: bool,
}

async fn hold_for(rng: &mut Rng) {
    for _ in 0..rng.below(4) {
        tokio::task::yield_now().await;
    }
}

async fn round(t: &Target, rng: &mut Rng) {
    match rng.below(10) {
        // Wait with a generous budget: must always win.
        0..=3 => {
            let g = t
                .lock
                .acquire(true, LIVENESS)
                .await
                .unwrap_or_else(|e| panic!("a waiter with a {LIVENESS:?} budget gave up: {e}"));
            t.inside.enter_exclusive();
            hold_for(rng).await;
            t.inside.leave_exclusive();
            drop(g);
        }
        // A tiny budget: may time out, but never holds wrongly.
        4 => {
            let tiny = Duration::from_micros(rng.below(3000));
            match t.lock.acquire(true, tiny).await {
                Ok(g) => {
                    t.inside.enter_exclusive();
                    t.inside.leave_exclusive();
                    drop(g);
                }
                Err(e) => assert!(e.is_contended(), "{e}"),
            }
        }
        // Cancelled at a random await point.
        5 | 6 => {
            let wait = Duration::from_micros(rng.below(2000));
            tokio::select! {
                r = t.lock.acquire(true, LIVENESS) => {
                    let g = r.unwrap();
                    t.inside.enter_exclusive();
                    t.inside.leave_exclusive();
                    drop(g);
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // One try, past the line.
        7 => match t.lock.try_acquire() {
            Ok(g) => {
                t.inside.enter_exclusive();
                t.inside.leave_exclusive();
                drop(g);
            }
            Err(e) => assert!(e.is_contended(), "{e}"),
        },
        // Shared, where the file is used that way.
        8 if t.shared_too => {
            let g = t.lock.acquire_shared(true, LIVENESS).await.unwrap();
            t.inside.enter_shared();
            hold_for(rng).await;
            t.inside.leave_shared();
            drop(g);
        }
        // A future polled once (so it may be the head of the line) and then
        // left unpolled for a while before it is dropped: the line must
        // pass it over rather than wait for it.
        _ => {
            let mut f = Box::pin(t.lock.acquire(true, LIVENESS));
            tokio::select! {
                biased;
                r = &mut f => {
                    let g = r.unwrap();
                    t.inside.enter_exclusive();
                    t.inside.leave_exclusive();
                    drop(g);
                    return;
                }
                _ = tokio::task::yield_now() => {}
            }
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
            drop(f);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_line_keeps_every_invariant() {
    const TASKS: u64 = 32;
    const ROUNDS: u64 = 40;
    let seed: u64 = std::env::var("LOCKMGR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("seed: LOCKMGR_TEST_SEED={seed}");

    let dir = tempfile::tempdir().unwrap();
    let a: PathBuf = dir.path().join("a");
    let a_too = dir.path().join("a-link");
    let c = dir.path().join("c");
    let removed = dir.path().join("removed");
    std::fs::write(&a, b"").unwrap();
    std::fs::hard_link(&a, &a_too).unwrap();
    let a_inside = Arc::new(Inside::default());
    let targets = Arc::new(vec![
        Target {
            lock: LockMgr::new(&a),
            inside: a_inside.clone(),
            shared_too: false,
        },
        // The same file by another path: one line, one lock.
        Target {
            lock: LockMgr::new(&a_too),
            inside: a_inside,
            shared_too: false,
        },
        Target {
            lock: LockMgr::new(&c),
            inside: Arc::default(),
            shared_too: true,
        },
        Target {
            lock: LockMgr::builder(&removed).remove_on_release(true).build(),
            inside: Arc::default(),
            shared_too: false,
        },
    ]);
    // The helper threads start on the first wait: before the baseline is
    // taken.
    {
        let held = targets[2].lock.try_acquire().unwrap();
        let err = targets[2]
            .lock
            .acquire(true, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert!(err.is_contended());
        drop(held);
        // The wait given up on ends once the lock is free.
        drop(targets[2].lock.acquire(true, LIVENESS).await.unwrap());
        common::until_no_fds_on(&c).await;
    }
    let fds_before = common::open_fds();

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let targets = targets.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (task + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for _ in 0..ROUNDS {
                let t = &targets[rng.below(targets.len() as u64) as usize];
                round(t, &mut rng).await;
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(LIVENESS * 4, t)
            .await
            .expect("the run did not finish: a waiter was left waiting")
            .unwrap();
    }

    // Nothing left behind once the locks are free: every lock can be had,
    // and no descriptor or kernel wait remains (a wait given up on ends
    // when its lock is next free).
    for t in targets.iter() {
        match t.lock.acquire(true, LIVENESS).await {
            Ok(g) => drop(g),
            Err(e) => panic!("{} stayed held: {e}", t.lock.path().display()),
        }
    }
    common::until_open_fds(fds_before).await;
    for path in [&a, &c] {
        assert_eq!(common::blocked_on(path), 0);
        assert_eq!(common::fds_on(path), 0);
    }
}
