//! A helper process for the cross-process tests (built with the
//! `test-helpers` feature). It uses only the public API.
//!
//! - `hold PATH`: take the lock (waiting as long as needed), print
//!   `locked <pid>`, hold it until stdin closes, then release it.
//! - `count PATH COUNTER MARKER ITERS TASKS`: TASKS tasks each increment the
//!   number in COUNTER ITERS times under the lock. Inside the critical section
//!   the marker file is created with O_EXCL and removed before leaving: if it
//!   already exists, two owners overlapped, and the helper exits with 3.

use std::io::{BufRead, ErrorKind, Write};
use std::path::PathBuf;
use std::time::Duration;

use lockmgr::LockMgr;

fn usage() -> ! {
    eprintln!("usage: lockmgr-test-helper hold PATH | count PATH COUNTER MARKER ITERS TASKS");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["hold", path] => rt.block_on(hold(PathBuf::from(path))),
        ["count", path, counter, marker, iters, tasks] => rt.block_on(count(
            PathBuf::from(path),
            PathBuf::from(counter),
            PathBuf::from(marker),
            iters.parse().unwrap_or_else(|_| usage()),
            tasks.parse().unwrap_or_else(|_| usage()),
        )),
        _ => usage(),
    }
}

async fn hold(path: PathBuf) {
    let lock = LockMgr::new(path);
    let guard = lock.acquire(true, Duration::MAX).await.expect("acquire");
    println!("locked {}", std::process::id());
    std::io::stdout().flush().expect("flush");
    // Block (on a blocking thread) until the test closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut line)
            .is_ok_and(|n| n > 0)
        {
            line.clear();
        }
    })
    .await
    .expect("stdin reader");
    guard.release().expect("release");
}

async fn count(path: PathBuf, counter: PathBuf, marker: PathBuf, iters: u32, tasks: u32) {
    let lock = LockMgr::new(path);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (lock, counter, marker) = (lock.clone(), counter.clone(), marker.clone());
        set.spawn(async move {
            for _ in 0..iters {
                let guard = lock
                    .acquire(true, Duration::from_secs(60))
                    .await
                    .expect("acquire");
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&marker)
                {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        println!("OVERLAP");
                        std::process::exit(3);
                    }
                    Err(e) => panic!("marker: {e}"),
                }
                let n: u64 = std::fs::read_to_string(&counter)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                // Give every other task and process the chance to break in.
                tokio::task::yield_now().await;
                std::fs::write(&counter, format!("{}\n", n + 1)).expect("write counter");
                std::fs::remove_file(&marker).expect("remove marker");
                drop(guard);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
}
