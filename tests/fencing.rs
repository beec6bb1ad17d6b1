//! Fencing tokens on file locks: strictly increasing across every
//! exclusive holder of a lock file, across processes, a holder killed
//! with SIGKILL while holding, holders that draw none, and restarts.

mod common;

use std::path::Path;

use lockmgr::LockMgr;

fn tokens_in(file: &Path) -> Vec<u64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// Three processes take the lock in turn, 40 times each, appending their
/// token under the lock: in the order of the holdings, the tokens go
/// 1, 2, 3, ... without a repeat or a step back.
#[test]
fn tokens_strictly_increase_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("fenced.lock");
    let out = dir.path().join("tokens");
    let procs = common::helpers(
        3,
        "fence",
        &[
            lock.to_str().unwrap(),
            "40",
            out.to_str().unwrap(),
            "--fencing",
        ],
    );
    assert!(common::all_succeed(procs));
    let tokens = tokens_in(&out);
    assert_eq!(tokens, (1..=120).collect::<Vec<u64>>());
}

/// A holder killed with SIGKILL while holding drew its token before its
/// guard was returned: the next holder's is greater. A holder that draws
/// no token keeps the latest in its record, and a process started later
/// goes on from there.
#[test]
fn a_killed_holder_a_holder_without_tokens_and_a_restart_keep_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fenced.lock");
    let fenced = LockMgr::builder(&path).fencing_tokens(true).build();
    let first = fenced.try_acquire().unwrap().fencing_token().unwrap();

    let mut holder = common::helper_command("hold", [path.to_str().unwrap(), "--fencing"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let said = common::role_lines(std::io::BufReader::new(holder.stdout.take().unwrap()))
        .next()
        .unwrap();
    let killed: u64 = said
        .split("token=")
        .nth(1)
        .unwrap_or_else(|| panic!("no token in {said:?}"))
        .parse()
        .unwrap();
    assert!(killed > first);
    holder.kill().unwrap();
    holder.wait().unwrap();

    let after_kill = fenced.try_acquire().unwrap();
    let after = after_kill.fencing_token().unwrap();
    assert!(after > killed, "{after} after the killed holder's {killed}");
    drop(after_kill);

    // A holder that draws none leaves the sequence where it was.
    let plain = LockMgr::new(&path);
    let guard = plain.try_acquire().unwrap();
    assert_eq!(guard.fencing_token(), None);
    drop(guard);
    assert_eq!(plain.holder().unwrap(), None, "free");

    // A process started later (here: the helper) goes on from there.
    let out = dir.path().join("tokens");
    let status = common::helper_command(
        "fence",
        [
            path.to_str().unwrap(),
            "1",
            out.to_str().unwrap(),
            "--fencing",
        ],
    )
    .status()
    .unwrap();
    assert!(status.success());
    assert_eq!(tokens_in(&out), [after + 1]);
}

/// Shared holders draw none; without a record there is none either.
#[test]
fn no_token_for_shared_holders_or_without_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fenced.lock");
    let lock = LockMgr::builder(&path).fencing_tokens(true).build();
    assert_eq!(lock.try_acquire_shared().unwrap().fencing_token(), None);
    let unrecorded = LockMgr::builder(&path)
        .fencing_tokens(true)
        .record_holder(false)
        .build();
    assert_eq!(unrecorded.try_acquire().unwrap().fencing_token(), None);
    assert_eq!(lock.try_acquire().unwrap().fencing_token(), Some(1));
}
