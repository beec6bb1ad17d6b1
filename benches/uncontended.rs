//! Uncontended acquire + release, beside the raw floor measured in the same
//! run: `open` + `F_OFD_SETLK` + `close` with nothing else around it.
//!
//! `cargo bench --bench uncontended` prints criterion's usual report, then
//! the ratio of each variant to the floor, then the same measured with the
//! variants in turn, one call of each per round (the machine's speed drifts
//! by up to 2x over minutes here, and criterion runs one row after the
//! other): median and p99 of each, and the ratio of the medians.
#![deny(unsafe_code)]

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use lockmgr::LockMgr;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::libc;
use nix::sys::stat::Mode;

const GROUP: &str = "uncontended";
const FLOOR: &str = "floor open+F_OFD_SETLK+close";
/// Only in the interleaved run: `lockmgr`'s own calls, nothing else.
const CALLS: &str = "its calls alone (+pread+unlock)";
/// Only in the interleaved run: the calls of a design that was measured and
/// not built, a descriptor kept open between acquisitions (BENCHMARKS.md).
const KEPT: &str = "a kept descriptor's calls";

fn raw_floor(path: &Path) {
    drop(open_and_lock(path));
}

/// The system calls an uncontended `lockmgr` acquire and release makes,
/// with nothing between them: the floor's, plus the read of the file's head
/// (for the holder record) and the explicit unlock before the close.
fn raw_calls(path: &Path) {
    let (fd, mut fl) = open_and_lock(path);
    let mut head = [0u8; 1024];
    std::hint::black_box(nix::sys::uio::pread(&fd, &mut head, 0).unwrap());
    fl.l_type = libc::F_UNLCK as libc::c_short;
    fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    drop(fd);
}

/// The least a lock that keeps its descriptor open between acquisitions
/// would have to call: the lock, an `lstat` of the path to learn that it
/// still names the locked file (renamed away or replaced, it must be let
/// go), the head's read for the holder record, the unlock, and a one-byte
/// read after it, so that waiters in other processes, who can no longer
/// wake on the close, wake on its `IN_ACCESS` event.
fn kept_calls(path: &Path, fd: &std::os::fd::OwnedFd) {
    let mut fl = support::whole_file(libc::F_WRLCK);
    fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    std::hint::black_box(nix::sys::stat::lstat(path).unwrap());
    let mut head = [0u8; 1024];
    std::hint::black_box(nix::sys::uio::pread(fd, &mut head, 0).unwrap());
    fl.l_type = libc::F_UNLCK as libc::c_short;
    fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    std::hint::black_box(nix::sys::uio::pread(fd, &mut head[..1], 0).unwrap());
}

/// `open(O_CREAT)` and `F_OFD_SETLK` of the whole file: the descriptor, and
/// the lock's description.
fn open_and_lock(path: &Path) -> (std::os::fd::OwnedFd, libc::flock) {
    let fd = open(
        path,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let fl = support::whole_file(libc::F_WRLCK);
    fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    (fd, fl)
}

/// A lock file in a directory of its own, its lock, and a runtime to
/// acquire it in.
fn setup() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    LockMgr,
    tokio::runtime::Runtime,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.lock");
    let lock = LockMgr::new(&path);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (dir, path, lock, rt)
}

fn uncontended(c: &mut Criterion) {
    let (_dir, path, lock, rt) = setup();

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

/// Issue 14's target 3, with the floor and each variant timed in turn, one
/// call each per round, so that every ratio compares calls made under the
/// same conditions of the machine. All of it runs in one task, as a Tokio
/// application's calls would (the criterion rows above pay a `block_on`
/// per call).
fn interleaved(rounds: usize) {
    let (_dir, path, lock, rt) = setup();
    let kept = open(
        &path,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    const NAMES: [&str; 6] = [
        FLOOR,
        CALLS,
        KEPT,
        "try_acquire+drop",
        "acquire(true)+drop",
        "acquire(true)+release",
    ];
    let mut samples = vec![Vec::with_capacity(rounds); NAMES.len()];
    rt.block_on(async {
        for round in 0..rounds {
            // Each in every position in turn: none always follows the same.
            for i in 0..NAMES.len() {
                let at = (round + i) % NAMES.len();
                let t = Instant::now();
                match at {
                    0 => raw_floor(&path),
                    1 => raw_calls(&path),
                    2 => kept_calls(&path, &kept),
                    3 => drop(lock.try_acquire().unwrap()),
                    4 => drop(lock.acquire(true, Duration::from_secs(1)).await.unwrap()),
                    _ => lock
                        .acquire(true, Duration::from_secs(1))
                        .await
                        .unwrap()
                        .release()
                        .unwrap(),
                }
                samples[at].push(t.elapsed().as_nanos() as i64);
            }
        }
    });
    println!("\n{GROUP}: the variants in turn, in one task, {rounds} rounds (us):");
    let stats: Vec<(f64, f64)> = samples.iter_mut().map(|s| support::median_p99(s)).collect();
    for (name, (median, p99)) in NAMES.iter().zip(&stats) {
        println!(
            "  {name:<32} median {median:>7.2}  p99 {p99:>7.2}  median ratio to floor {:.2}x",
            median / stats[0].0
        );
    }
}

fn main() {
    support::begin();
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
    // Only in a measuring run (criterion's --bench), not under `cargo test`.
    if std::env::args().any(|a| a == "--bench") {
        interleaved(200_000);
    }
}
