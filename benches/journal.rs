//! The seed study's question: is it worth keeping the journal open? Appends
//! per second keeping one `Journal` open (a lock per append), reopening the
//! journal for every append, and batches of 100, each without sync and with
//! `fdatasync` (`SyncPolicy::Data`). Ratios are against "open, no sync",
//! measured in the same run.
//!
//! `cargo bench --bench journal`
#![deny(unsafe_code)]

use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use lockmgr::journal::{Journal, SyncPolicy};

#[path = "support/mod.rs"]
mod support;

const GROUP: &str = "journal";
const RECORD: &str = "worker 3 starts job 1234: resize image 0042.png to 640x480";

fn id(what: &str, sync: SyncPolicy) -> String {
    format!("{what} {sync:?}")
}

fn journal(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Under target/, on the disk the crate is built on (not a tmpfs), so
    // that fdatasync means something.
    let dir = tempfile::tempdir_in("target").unwrap();
    let mut g = c.benchmark_group(GROUP);
    g.warm_up_time(Duration::from_millis(500));
    for sync in [SyncPolicy::None, SyncPolicy::Data] {
        if sync == SyncPolicy::Data {
            // fdatasync takes milliseconds: fewer, longer samples.
            g.sample_size(10).measurement_time(Duration::from_secs(4));
        } else {
            g.sample_size(50).measurement_time(Duration::from_secs(3));
        }
        let path = dir.path().join(format!("journal-{sync:?}"));
        let j = rt
            .block_on(Journal::builder(&path).sync(sync).open())
            .unwrap();

        g.throughput(Throughput::Elements(1));
        g.bench_function(id("keep open, lock per append", sync), |b| {
            b.iter(|| rt.block_on(j.append(RECORD)).unwrap())
        });
        g.bench_function(id("reopen per append", sync), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let j = Journal::builder(&path).sync(sync).open().await.unwrap();
                    j.append(RECORD).await.unwrap()
                })
            })
        });
        g.throughput(Throughput::Elements(100));
        g.bench_function(id("batch of 100", sync), |b| {
            b.iter(|| rt.block_on(j.append_batch([RECORD; 100])).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, journal);

fn main() {
    support::begin();
    benches();
    Criterion::default().configure_from_args().final_summary();
    let base = id("keep open, lock per append", SyncPolicy::None);
    let ids: Vec<(String, f64)> = [SyncPolicy::None, SyncPolicy::Data]
        .into_iter()
        .flat_map(|s| {
            [
                (id("keep open, lock per append", s), 1.0),
                (id("reopen per append", s), 1.0),
                (id("batch of 100", s), 100.0),
            ]
        })
        .collect();
    let ids: Vec<(&str, f64)> = ids.iter().map(|(i, n)| (i.as_str(), *n)).collect();
    support::print_ratios(GROUP, (&base, 1.0), &ids);
}
