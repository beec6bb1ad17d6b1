//! The two-terminal journal test of the seed study, with `lockmgr`.
//!
//! ```text
//! T1 $ cargo run --example two_terminal -- line one
//! T2 $ cargo run --example two_terminal -- line two
//! ```
//!
//! Each run prints `opened and ready to lock >` and waits for Enter, prints
//! `locking...`, takes the lock (waiting as long as it takes), prints
//! `locked and waiting >`, waits for Enter, appends its words and a newline to
//! `journal` in the current directory, and exits. End the first terminal with
//! Ctrl-C, `kill` or `kill -9` while it holds the lock: it writes nothing, and
//! the second proceeds at once.
//!
//! The lock is an OFD lock on `journal` itself, with holder records off, so
//! nothing but journal lines ever goes into it. The line is written through a second descriptor opened
//! with `O_APPEND` (one `write(2)`, at the end of the file whatever others
//! did); closing that descriptor does not drop the lock, which belongs to the
//! guard's own open file description.

use std::io::Write;
use std::time::Duration;

use lockmgr::LockMgr;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let line = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let lock = LockMgr::builder("journal").record_holder(false).build();

    prompt("opened and ready to lock > ")?;
    stdin.next_line().await?;
    println!("locking...");
    let guard = lock.acquire(true, Duration::MAX).await?;
    prompt("locked and waiting > ")?;
    stdin.next_line().await?;

    let mut journal = std::fs::OpenOptions::new().append(true).open("journal")?;
    journal.write_all(format!("{line}\n").as_bytes())?;
    drop(journal);
    guard.release()?;
    Ok(())
}

fn prompt(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout();
    out.write_all(text.as_bytes())?;
    out.flush()
}
