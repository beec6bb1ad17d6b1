//! Fencing tokens on file locks: strictly increasing across every
//! exclusive holder of a lock file, across processes, a holder killed
//! with SIGKILL while holding, holders that draw none, and restarts.
#![deny(unsafe_code)]

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

/// A label too long for a record (the record would pass the 1,024 bytes a
/// reader looks at) is cut so that the record fits: the holder is still
/// named, with the label's beginning, and the holders after it still
/// record themselves and draw the next token. (Before: the overlong record
/// was unreadable, so it was never replaced: "holder unknown" and no token
/// for every later holder of that file.)
#[test]
fn an_overlong_label_is_cut_and_the_record_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.lock");
    let looker = LockMgr::new(&path);
    for label in ["x".repeat(3000), "é%= ".repeat(400)] {
        let long = LockMgr::builder(&path)
            .label(label.clone())
            .fencing_tokens(true)
            .build();
        let guard = long.try_acquire().unwrap();
        let first = guard.fencing_token().expect("a token");
        let holder = looker.holder().unwrap().expect("the holder is named");
        assert_eq!(holder.pid, std::process::id());
        let shown = holder.label.expect("a label");
        assert!(
            shown.len() > 100 && label.starts_with(&shown),
            "{shown:?} is not the beginning of the label"
        );
        assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
        drop(guard);

        let next = LockMgr::builder(&path)
            .label("next")
            .fencing_tokens(true)
            .build();
        let guard = next.try_acquire().unwrap();
        assert_eq!(guard.fencing_token(), Some(first + 1));
        let holder = looker.holder().unwrap().expect("the next holder is named");
        assert_eq!(holder.label.as_deref(), Some("next"));
        drop(guard);
    }
}

/// A shorter record replaces a longer one in one write, padded to the old
/// length, and the file is not cut: a holder killed between a write and a
/// cut would have left the new record with the old one's tail, which is
/// no record, and so the file would never have been written to again (no
/// holder named, no token; found by killing a holder at its `ftruncate`
/// with `strace -e inject=ftruncate:signal=KILL`). (Before: the file was
/// cut to the shorter record.)
#[test]
fn a_shorter_record_replaces_a_longer_one_without_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shrink.lock");
    let looker = LockMgr::new(&path);
    let long = LockMgr::builder(&path)
        .label("a long label for the first holder ".repeat(4))
        .fencing_tokens(true)
        .build();
    let first = long.try_acquire().unwrap().fencing_token().unwrap();
    let longest = std::fs::metadata(&path).unwrap().len();
    for (label, step) in [("short", 1), ("shorter!", 2), ("x", 3)] {
        let lock = LockMgr::builder(&path)
            .label(label)
            .fencing_tokens(true)
            .build();
        let guard = lock.try_acquire().unwrap();
        assert_eq!(guard.fencing_token(), Some(first + step));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), longest, "{label}");
        let holder = looker.holder().unwrap().expect("the holder is named");
        assert_eq!(holder.label.as_deref(), Some(label));
    }
}

/// A record that is a whole record line but does not read as a holder (no
/// host, a host that does not decode, a doubled space) still carries its
/// token: the next token follows it, and never goes back to 1. A token
/// that cannot be read at all (past the largest) leaves the record as it
/// is and draws none.
#[test]
fn a_garbled_record_never_sends_tokens_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fenced.lock");
    let lock = LockMgr::builder(&path).fencing_tokens(true).build();
    let max = u64::MAX;
    for (record, drawn) in [
        (format!("lockmgr-holder/1 pid=1 token={max}\n"), None),
        (
            "lockmgr-holder/1 pid=1 host=%zz since=1 token=41\n".to_owned(),
            Some(42),
        ),
        (
            "lockmgr-holder/1 pid=1  host=h since=1 token=41\n".to_owned(),
            Some(42),
        ),
        (
            "lockmgr-holder/1 pid=1 host=h since=1\ttoken=41\n".to_owned(),
            Some(42),
        ),
        (
            "lockmgr-holder/1 pid=1 host=h since=1 token=41\r\n".to_owned(),
            Some(42),
        ),
        (
            "lockmgr-holder/1 pid=1 host=h since=99999999999999999999 token=41\n".to_owned(),
            Some(42),
        ),
        (
            format!("lockmgr-holder/1 pid=1 host=h since=1 token={max}0\n"),
            None,
        ),
        (
            "lockmgr-holder/1 pid=1 host=h since=1 token=4x1\n".to_owned(),
            None,
        ),
    ] {
        std::fs::write(&path, &record).unwrap();
        let guard = lock.try_acquire().unwrap();
        assert_eq!(guard.fencing_token(), drawn, "after {record:?}");
        drop(guard);
        let after = std::fs::read_to_string(&path).unwrap();
        if drawn.is_none() {
            assert!(
                !after.contains(" token=1\n") && !after.contains(" token=1 "),
                "{record:?} became {after:?}"
            );
        }
    }
}

/// Writes `record`, a record of token 99 by a holder that is gone, and
/// returns its length.
fn record_99(path: &Path, record: &str) -> u64 {
    assert!(record.ends_with(" token=99\n"));
    std::fs::write(path, record).unwrap();
    record.len() as u64
}

/// What a helper that tried the lock (fenced, with `opts`, set up by
/// `configure`) said (`locked <pid>`, with ` token=N` if it drew one), and
/// how it ended.
fn try_fenced(
    path: &Path,
    opts: &[&str],
    configure: impl FnOnce(&mut std::process::Command),
) -> (String, std::process::ExitStatus) {
    let mut args = vec![path.to_str().unwrap(), "--fencing", "--label=x"];
    args.extend_from_slice(opts);
    let mut cmd = common::helper_command("try", args);
    configure(&mut cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    let said = common::role_lines(out.stdout.as_slice())
        .collect::<Vec<_>>()
        .join("; ");
    (said, out.status)
}

/// Checks that the helper held the lock without a token (`said`, and how
/// it ended) and that the next holder draws 100.
fn held_without_a_token_then_100(path: &Path, said: &str, status: std::process::ExitStatus) {
    assert!(status.success(), "{said}: {status:?}");
    assert!(
        said.starts_with("locked ") && !said.contains("token="),
        "{said}"
    );
    let found = std::fs::read_to_string(path).unwrap();
    let lock = LockMgr::builder(path).fencing_tokens(true).build();
    let next = lock.try_acquire().unwrap().fencing_token();
    assert_eq!(next, Some(100), "the file held {found:?}");
}

/// A record write that the file system cuts short leaves a new record's
/// start over the old one's end, which may read as a record with a smaller
/// token ("token=10" + the old "\n" where 99 was): the old record is put
/// back, the holder goes without a token, and the next one draws 100.
#[test]
fn a_record_write_cut_short_never_sends_tokens_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fenced.lock");
    // Shorter than any record of the helper's: its new record's start,
    // cut at the old one's last byte, lies over all but that newline.
    record_99(
        &path,
        "lockmgr-holder/1 pid=1 host=h since=1 label=x token=99\n",
    );
    let shim = common::preload_lib("shortwrite");
    let (said, status) = try_fenced(&path, &[], |cmd| {
        cmd.env("LD_PRELOAD", &shim);
    });
    held_without_a_token_then_100(&path, &said, status);
}

/// The same cut by the largest file the holder may write (`RLIMIT_FSIZE`,
/// smaller than its new record, which is padded to the old one's length):
/// the kernel would end the holder with SIGXFSZ between the two parts of
/// the write, where nothing could be put back. Such a record is not written
/// at all.
#[test]
fn a_record_longer_than_the_file_size_limit_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fenced.lock");
    // Longer than the helper's record, which is padded to its length: the
    // write would not grow the file, and still end past the limit.
    let label = "x".repeat(80);
    let old = format!("lockmgr-holder/1 pid=1 host=h since=1 label={label} token=99\n");
    let fsize = format!("--fsize={}", record_99(&path, &old) - 1);
    let (said, status) = try_fenced(&path, &[&fsize], |_| {});
    held_without_a_token_then_100(&path, &said, status);
}
