//! The `metrics` feature: what a recorder receives for file locks (and,
//! with `postgres`, PostgreSQL locks), read back through an in-memory
//! recorder. Each test uses a metrics label of its own.
#![deny(unsafe_code)]

mod common;
#[cfg(feature = "postgres")]
#[path = "common/pg.rs"]
mod pg_common;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::LIVENESS;
use lockmgr::LockMgr;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// Everything recorded so far, by (metric name, its labels as
/// `k=v,k=v`): counters summed, histogram values gathered. A snapshot
/// drains the recorder, so every test adds what it takes to one store.
#[derive(Default)]
struct Seen {
    counters: HashMap<(String, String), u64>,
    histograms: HashMap<(String, String), Vec<f64>>,
}

fn seen() -> std::sync::MutexGuard<'static, Seen> {
    static RECORDER: OnceLock<Snapshotter> = OnceLock::new();
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    let snapshotter = RECORDER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    });
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = (key.name().to_string(), labels.join(","));
        match value {
            DebugValue::Counter(n) => *seen.counters.entry(id).or_default() += n,
            DebugValue::Histogram(v) => seen
                .histograms
                .entry(id)
                .or_default()
                .extend(v.iter().map(|f| f.0)),
            DebugValue::Gauge(_) => {}
        }
    }
    seen
}

fn counter(name: &str, labels: &str) -> u64 {
    seen()
        .counters
        .get(&(name.to_string(), labels.to_string()))
        .copied()
        .unwrap_or(0)
}

fn histogram(name: &str, labels: &str) -> Vec<f64> {
    seen()
        .histograms
        .get(&(name.to_string(), labels.to_string()))
        .cloned()
        .unwrap_or_default()
}

/// A try, a contended acquire, a timeout and two releases, on file locks:
/// each number where it belongs, labelled by kind, mode and label only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_locks_count_acquisitions_contention_timeouts_and_time_held() {
    drop(seen()); // The recorder, in place before the first lock.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metered.lock");
    let lock = LockMgr::builder(&path).metrics_label("jobs").build();
    let acquired = "kind=ofd,label=jobs,mode=exclusive";
    let timing = "kind=ofd,label=jobs";

    let first = lock.try_acquire().unwrap();
    assert_eq!(counter("lockmgr_acquisitions_total", acquired), 1);
    assert_eq!(counter("lockmgr_contended_acquisitions_total", acquired), 0);

    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, LIVENESS).await }
    });
    common::until_waiting(&path).await;
    // A short wait that runs out while the lock is held.
    let e = lock
        .acquire(true, Duration::from_millis(20))
        .await
        .unwrap_err();
    assert!(matches!(e, lockmgr::LockError::TimedOut { .. }), "{e:?}");
    assert_eq!(counter("lockmgr_timeouts_total", timing), 1);

    drop(first);
    let second = waiter.await.unwrap().unwrap();
    assert_eq!(counter("lockmgr_acquisitions_total", acquired), 2);
    assert_eq!(counter("lockmgr_contended_acquisitions_total", acquired), 1);
    let waits = histogram("lockmgr_wait_seconds", timing);
    assert_eq!(waits.len(), 1, "only the waiting acquire: {waits:?}");
    assert!(waits[0] > 0.0 && waits[0] < LIVENESS.as_secs_f64());
    second.release().unwrap();
    assert_eq!(histogram("lockmgr_held_seconds", timing).len(), 2);

    // Shared locks are counted apart; no path appears in any label.
    drop(lock.try_acquire_shared().unwrap());
    assert_eq!(
        counter(
            "lockmgr_acquisitions_total",
            "kind=ofd,label=jobs,mode=shared"
        ),
        1
    );
    let seen = seen();
    let labels = seen.counters.keys().chain(seen.histograms.keys());
    assert!(labels
        .clone()
        .all(|(_, l)| !l.contains(dir.path().to_str().unwrap())));
}

/// A lock without a metrics label, and a flock one: the label is empty,
/// the kind says which family.
#[test]
fn unlabelled_and_flock_locks() {
    drop(seen());
    let dir = tempfile::tempdir().unwrap();
    let lock = LockMgr::builder(dir.path().join("f.lock"))
        .kind(lockmgr::LockKind::Flock)
        .build();
    let before = counter(
        "lockmgr_acquisitions_total",
        "kind=flock,label=,mode=exclusive",
    );
    drop(lock.try_acquire().unwrap());
    assert_eq!(
        counter(
            "lockmgr_acquisitions_total",
            "kind=flock,label=,mode=exclusive"
        ),
        before + 1
    );
}

/// PostgreSQL locks: acquisitions, and a lock lost while held (its session
/// terminated by an administrator).
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locks_count_acquisitions_and_losses() {
    use lockmgr::pg::PgLockMgr;
    drop(seen());
    let Some(url) = common::pg_url() else { return };
    let name = format!("metrics-{}", std::process::id());
    // Sessions of their own: this test terminates one.
    let lock = PgLockMgr::builder(&url, &name)
        .label("metrics-test")
        .metrics_label("reports")
        .build()
        .unwrap();
    let guard = lock.acquire(true, LIVENESS).await.unwrap();
    assert_eq!(
        counter(
            "lockmgr_acquisitions_total",
            "kind=postgres,label=reports,mode=exclusive"
        ),
        1
    );
    let backend = lock.holder().await.unwrap().expect("held").pid as i32;
    pg_common::admin(&url)
        .await
        .query_one("SELECT pg_terminate_backend($1)", &[&backend])
        .await
        .unwrap();
    tokio::time::timeout(LIVENESS, guard.lost())
        .await
        .expect("the loss was not noticed");
    tokio::time::timeout(LIVENESS, async {
        while counter("lockmgr_lost_total", "kind=postgres,label=reports") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the loss was not counted");
    drop(guard);
    assert_eq!(
        histogram("lockmgr_held_seconds", "kind=postgres,label=reports").len(),
        1
    );
}
