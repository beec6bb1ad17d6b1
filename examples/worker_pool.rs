//! A pool of Tokio tasks sharing one `LockMgr`: each job updates a shared
//! counter file under the lock. Run it in several terminals at once (or with
//! `&` in one shell) and the counter is still exact, because the lock excludes
//! tasks of one process and of other processes alike.
//!
//! ```text
//! cargo run --example worker_pool -- [WORKERS] [JOBS]
//! ```

use std::time::Duration;

use lockmgr::{LockError, LockMgr};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let workers: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let jobs: usize = args.next().map_or(Ok(100), |a| a.parse())?;

    let dir = std::env::temp_dir().join("lockmgr-worker-pool");
    let counter = dir.join("counter");
    // One LockMgr, cloned into every worker: clones share its configuration.
    let lock = LockMgr::builder(dir.join("counter.lock"))
        .create_dirs(true)
        .max_attempts(6)
        .build();

    let (tx, rx) = tokio::sync::mpsc::channel::<usize>(jobs.max(1));
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
    let mut pool = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let (lock, rx, counter) = (lock.clone(), rx.clone(), counter.clone());
        pool.spawn(async move {
            let mut done = 0usize;
            while let Some(_job) = { rx.lock().await.recv().await } {
                // Ten attempts of five seconds: a holder that hangs for a
                // minute makes this worker give up instead of hanging too.
                let guard = match lock.acquire(true, Duration::from_secs(5)).await {
                    Ok(guard) => guard,
                    Err(e @ LockError::TimedOut { .. }) => {
                        eprintln!("worker {worker}: {e}");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let n: u64 = match tokio::fs::read_to_string(&counter).await {
                    Ok(s) => s.trim().parse().unwrap_or(0),
                    Err(_) => 0,
                };
                tokio::fs::write(&counter, format!("{}\n", n + 1)).await?;
                drop(guard);
                done += 1;
            }
            Ok::<usize, Box<dyn std::error::Error + Send + Sync>>(done)
        });
    }
    for job in 0..jobs {
        tx.send(job).await?;
    }
    drop(tx);

    let mut total = 0;
    while let Some(done) = pool.join_next().await {
        total += done?.map_err(|e| e.to_string())?;
    }
    let value = tokio::fs::read_to_string(&counter).await?;
    println!(
        "{workers} workers did {total} jobs; counter {} is now {}",
        counter.display(),
        value.trim()
    );
    Ok(())
}
