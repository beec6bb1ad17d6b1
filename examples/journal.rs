//! The seed study's journal worker loop, with Tokio tasks in several
//! processes appending to one journal; then the counts read back.
//!
//! ```text
//! cargo run --example journal -- [PROCESSES] [TASKS] [ENTRIES]
//! ```
//!
//! The parent starts PROCESSES copies of itself (default 4); each runs TASKS
//! tasks (default 4) that each take ENTRIES pieces of work (default 100) and
//! append a line per piece, as the seed's worker does with `flock`, `write`
//! and `flush`. The parent then reads the journal back and prints how many
//! entries each worker wrote.

use std::collections::BTreeMap;
use std::process::Command;

use lockmgr::journal::Journal;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return worker(
            &args[1],
            args[2].parse()?,
            args[3].parse()?,
            args[4].parse()?,
        )
        .await;
    }
    let num = |i: usize, default: u32| args.get(i).map_or(Ok(default), |a| a.parse());
    let (procs, tasks, entries) = (num(0, 4)?, num(1, 4)?, num(2, 100)?);

    let dir = std::env::temp_dir().join("lockmgr-journal-example");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("journal");
    let _ = std::fs::remove_file(&path);

    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..procs)
        .map(|p| {
            Command::new(&exe)
                .arg("worker")
                .arg(&path)
                .args([p.to_string(), tasks.to_string(), entries.to_string()])
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("a worker failed: {status}").into());
        }
    }

    let read = Journal::open(&path).await?.records().await?;
    let torn = read.torn_tail().map(<[u8]>::len);
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    let mut entries = 0;
    for record in read {
        let record = record?;
        let line = String::from_utf8_lossy(&record);
        let worker = line.split(' ').next().unwrap_or("?").to_owned();
        *per_worker.entry(worker).or_default() += 1;
        entries += 1;
    }
    println!("{}: {entries} entries", path.display());
    for (worker, n) in per_worker {
        println!("  {worker}: {n}");
    }
    if let Some(torn) = torn {
        println!("  torn tail of {torn} bytes");
    }
    Ok(())
}

/// One worker process: `tasks` Tokio tasks sharing one journal.
async fn worker(
    path: &str,
    proc: u32,
    tasks: u32,
    entries: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    let journal = Journal::open(path).await?;
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let journal = journal.clone();
        set.spawn(async move {
            for work in 0..entries {
                // The description of the work goes in before the work runs.
                journal
                    .append(format!("p{proc}/t{task} starts work {work}"))
                    .await?;
                tokio::task::yield_now().await; // next_work.run()
            }
            Ok::<(), lockmgr::journal::JournalError>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}
