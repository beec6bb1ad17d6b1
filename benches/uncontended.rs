//! Uncontended acquire + release, beside the raw floor measured in the same
//! run: `open` + `F_OFD_SETLK` + `close` with nothing else around it.
//!
//! `cargo bench --bench uncontended` prints criterion's usual report, then
//! the ratio of each variant to the floor.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use lockmgr::LockMgr;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::libc;
use nix::sys::stat::Mode;

const GROUP: &str = "uncontended";
const FLOOR: &str = "floor open+F_OFD_SETLK+close";

fn raw_floor(path: &Path) {
    let fd = open(
        path,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    // Every field set (the struct has no others on x86_64 and aarch64).
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    drop(fd);
}

fn uncontended(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.lock");
    let lock = LockMgr::new(&path);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut g = c.benchmark_group(GROUP);
    g.bench_function(FLOOR, |b| b.iter(|| raw_floor(&path)));
    g.bench_function("try_acquire+drop", |b| {
        b.iter(|| drop(lock.try_acquire().unwrap()))
    });
    g.bench_function("acquire(true)+drop", |b| {
        b.iter(|| {
            rt.block_on(async { drop(lock.acquire(true, Duration::from_secs(1)).await.unwrap()) })
        })
    });
    g.bench_function("acquire(true)+release", |b| {
        b.iter(|| {
            rt.block_on(async {
                lock.acquire(true, Duration::from_secs(1))
                    .await
                    .unwrap()
                    .release()
                    .unwrap()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, uncontended);

#[path = "support/mod.rs"]
mod support;

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    support::print_ratios(
        GROUP,
        (FLOOR, 1.0),
        &[
            ("try_acquire+drop", 1.0),
            ("acquire(true)+drop", 1.0),
            ("acquire(true)+release", 1.0),
        ],
    );
}
