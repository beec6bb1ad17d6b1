//! The metrics `lockmgr` reports, printed: a recorder (here the in-memory
//! one of `metrics-util`; in a service, Prometheus or StatsD) is installed,
//! two tasks take one lock in turn, and a third gives up.
//!
//! ```text
//! cargo run --example metrics --features metrics
//! ```

use std::time::Duration;

use lockmgr::LockMgr;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install()?;

    let dir = tempfile::tempdir()?;
    let lock = LockMgr::builder(dir.path().join("report.lock"))
        .metrics_label("report")
        .build();
    let first = lock.acquire(true, Duration::from_secs(5)).await?;
    let second = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(5)).await }
    });
    // Holds while the second waits and a third runs out of time.
    let third = lock.acquire(true, Duration::from_millis(50)).await;
    println!("third: {}", third.unwrap_err());
    drop(first);
    second.await??.release()?;

    let mut lines: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, unit, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
                .collect();
            let value = match value {
                DebugValue::Counter(n) => n.to_string(),
                DebugValue::Gauge(g) => g.to_string(),
                DebugValue::Histogram(v) => {
                    format!("{:?}", v.iter().map(|f| f.0).collect::<Vec<_>>())
                }
            };
            let unit = unit
                .map(|u| format!(" ({})", u.as_str()))
                .unwrap_or_default();
            format!("{}{{{}}} {value}{unit}", key.name(), labels.join(","))
        })
        .collect();
    lines.sort();
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
