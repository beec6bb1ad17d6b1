//! In-process handoff: N tasks wait in line for one lock while one holds
//! it; each task, once it has the lock, releases it and lines up again. The
//! time per handoff (release to the next task holding the lock) for N = 1,
//! 10, 100, 1,000 and 10,000, as a ratio to N = 1, measured in the same run.
//!
//! `cargo bench --bench inprocess`. Runs on a two-worker multi-thread
//! runtime with the default `LockMgr` options. Setting the tasks up and
//! winding them down is not timed: the clock starts at the first release,
//! with every task in line, and stops at the last acquisition of the batch.
//! Criterion's figures are per batch of 5,000 handoffs; the ratio table
//! printed at the end is per handoff.
#![deny(unsafe_code)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use lockmgr::LockMgr;

const WAITERS: [usize; 5] = [1, 10, 100, 1_000, 10_000];
/// Handoffs per criterion iteration: enough that start-up (the first head
/// opening and watching the file) is a small part of each.
const BATCH: u64 = 5_000;

/// `iters` handoffs among `waiters + 1` tasks; returns the time they took.
async fn handoffs(lock: &LockMgr, waiters: usize, iters: u64) -> Duration {
    let held = lock.try_acquire().unwrap();
    let joined = Arc::new(AtomicUsize::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(Mutex::new(None));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(waiters + 1);
    for _ in 0..=waiters {
        let (lock, joined, count, stop, finished, done) = (
            lock.clone(),
            joined.clone(),
            count.clone(),
            stop.clone(),
            finished.clone(),
            done.clone(),
        );
        tasks.push(tokio::spawn(async move {
            joined.fetch_add(1, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                let g = lock.acquire(true, Duration::MAX).await.unwrap();
                if count.fetch_add(1, Ordering::SeqCst) + 1 == iters {
                    *finished.lock().unwrap() = Some(Instant::now());
                    stop.store(true, Ordering::SeqCst);
                    done.notify_one();
                }
                drop(g);
            }
        }));
    }
    while joined.load(Ordering::SeqCst) <= waiters {
        tokio::task::yield_now().await;
    }
    // Let the last joiners reach the line (they joined in the same poll
    // that counted them; this only lets their threads finish that poll).
    tokio::task::yield_now().await;
    let start = Instant::now();
    drop(held);
    done.notified().await;
    let end = finished.lock().unwrap().expect("set before the notify");
    for t in tasks {
        t.await.unwrap();
    }
    end - start
}

fn id(waiters: usize) -> String {
    format!("{waiters} waiting")
}

fn in_process(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::new(dir.path().join("bench.lock"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("in-process handoff");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for waiters in WAITERS {
        g.bench_function(id(waiters), |b| {
            b.iter_custom(|iters| rt.block_on(handoffs(&lock, waiters, iters * BATCH)))
        });
    }
    g.finish();
}

criterion_group!(benches, in_process);

fn main() {
    support::begin();
    benches();
    Criterion::default().configure_from_args().final_summary();
    let ids: Vec<String> = WAITERS.iter().map(|&n| id(n)).collect();
    let per = BATCH as f64;
    let ids: Vec<(&str, f64)> = ids.iter().map(|id| (id.as_str(), per)).collect();
    support::print_ratios("in-process handoff", (&id(1), per), &ids);
}
