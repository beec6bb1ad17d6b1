//! One leader among replicas: this example starts three replicas of itself
//! (processes) that campaign for one lock file, kills the leader with
//! SIGKILL, and shows how soon another leads.
//!
//! ```text
//! cargo run --example leader
//! ```
//!
//! Run a replica by hand in a few terminals, and stop the leader with
//! Ctrl-C or `kill -9`, to watch leadership move:
//!
//! ```text
//! cargo run --example leader -- replica /tmp/leader.lock
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lockmgr::LockMgr;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, role, path] = args.as_slice() {
        if role == "replica" {
            return replica(path);
        }
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("leader.lock");
    let (tx, said) = mpsc::channel();
    let mut replicas = Vec::new();
    for i in 0..3 {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["replica", path.to_str().ok_or("path")?])
            .stdout(Stdio::piped())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().ok_or("stdout")?);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send((i, line));
            }
        });
        replicas.push(child);
    }
    let leader = |said: &mpsc::Receiver<(usize, String)>| loop {
        let (i, line) = said.recv_timeout(Duration::from_secs(30))?;
        println!("replica {i}: {line}");
        if line.starts_with("leading") {
            return Ok::<usize, mpsc::RecvTimeoutError>(i);
        }
    };
    let first = leader(&said)?;
    println!(
        "killing replica {first} (pid {}) with SIGKILL",
        replicas[first].id()
    );
    let killed = Instant::now();
    replicas[first].kill()?;
    let second = leader(&said)?;
    println!(
        "replica {second} leads {:?} after the kill",
        killed.elapsed()
    );
    for mut r in replicas {
        let _ = r.kill();
        let _ = r.wait();
    }
    Ok(())
}

/// A replica: campaigns, and leads until it is stopped.
#[tokio::main(flavor = "current_thread")]
async fn replica(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let lock = LockMgr::builder(path).fencing_tokens(true).build();
    println!("campaigning (pid {})", std::process::id());
    lock.lead(|term| async move {
        println!("leading (term {})", term.fencing_token.unwrap_or_default());
        // The leader's work: here, lead until stopped.
        std::future::pending::<()>().await
    })
    .await?;
    Ok(())
}
