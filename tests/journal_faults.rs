//! The journal loses nothing and leaves nothing half-done under faults: a
//! journal renamed away (logrotate) or replaced, a full disk, writers that
//! disagree on the lock, and a journal too large to hold in memory.
#![deny(unsafe_code)]

mod common;

use std::io::BufReader;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lockmgr::journal::{Journal, JournalError, JournalOp};
use lockmgr::{LockError, LockKind, LockMgr};

/// Every record in the journal at `path`, read with a fresh journal.
async fn read_all(path: &Path) -> Vec<String> {
    let records = Journal::open(path).await.unwrap().records().await.unwrap();
    records
        .map(|r| String::from_utf8(r.unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn appends_follow_the_file_at_the_path_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.journal");
    let rotated = dir.path().join("app.journal.1");
    let journal = Journal::open(&path).await.unwrap();
    journal.append("before").await.unwrap();

    // logrotate's default: rename, and let the writer create a new file.
    std::fs::rename(&path, &rotated).unwrap();
    journal.append("after rename").await.unwrap();
    assert_eq!(read_all(&rotated).await, ["before"]);
    assert_eq!(read_all(&path).await, ["after rename"]);

    // Another tool puts a new file in place.
    let fresh = dir.path().join("fresh");
    std::fs::write(&fresh, "from elsewhere\n").unwrap();
    std::fs::rename(&fresh, &path).unwrap();
    journal.append("after replace").await.unwrap();
    assert_eq!(read_all(&path).await, ["from elsewhere", "after replace"]);
    // And reading through the old journal sees the file now at the path.
    let read: Vec<_> = journal
        .records()
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        read,
        [b"from elsewhere".to_vec(), b"after replace".to_vec()]
    );
}

#[tokio::test]
async fn a_full_disk_leaves_none_of_a_failed_append_behind() {
    let dir = tempfile::tempdir().unwrap();
    let fs = common::SmallFs::mount(&dir.path().join("small"), "256k");
    let path = fs.0.join("app.journal");
    let journal = Journal::builder(&path)
        .max_record_len(100_000)
        .open()
        .await
        .unwrap();
    journal.append("kept").await.unwrap();
    let before = std::fs::read(&path).unwrap();

    // Fill the file system but for a little room: the batch below starts
    // to be written, then the disk is full.
    let filler = fs.0.join("filler");
    let mut left = 200 * 1024;
    let mut chunk = vec![b'x'; 4096];
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        while left > 0 {
            chunk.truncate(left.min(4096));
            if f.write_all(&chunk).is_err() {
                break;
            }
            left -= chunk.len();
        }
    }
    let record = vec![b'r'; 90_000];
    let err = journal
        .append_batch([&record, &record, &record])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JournalError::Io { op: JournalOp::Write, source, .. }
            if source.raw_os_error() == Some(nix::libc::ENOSPC)),
        "{err}"
    );
    let after = std::fs::read(&path).unwrap();
    assert!(
        after == before,
        "part of the batch was left: {} bytes instead of {}",
        after.len(),
        before.len()
    );
    // With room again, appends work, and nothing failed is in between.
    std::fs::remove_file(&filler).unwrap();
    journal.append("next").await.unwrap();
    assert_eq!(read_all(&path).await, ["kept", "next"]);
}

/// A writer whose journal uses another lock family, or another lock file,
/// still excludes the others: it cannot append while they do.
#[tokio::test]
async fn writers_that_disagree_on_the_lock_still_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.journal");
    // The default journal's lock: an OFD lock on the journal file, held
    // here as a default writer would hold it while appending.
    let default_writer = LockMgr::builder(&path).record_holder(false).build();
    let held = default_writer.try_acquire().unwrap();
    for journal in [
        Journal::builder(&path).kind(LockKind::Flock),
        Journal::builder(&path).lock_file(dir.path().join("app.lock")),
    ] {
        let journal = journal
            .timeout(Duration::from_millis(50))
            .max_attempts(1)
            .open()
            .await
            .unwrap();
        let err = journal.append("cut in").await.unwrap_err();
        assert!(
            matches!(err, JournalError::Lock(LockError::TimedOut { .. })),
            "{err}"
        );
    }
    drop(held);
    assert!(read_all(&path).await.is_empty());
}

/// A journal far larger than the memory the reader may use is read record
/// by record: a helper process reads 256 MiB of records and reports its
/// peak resident memory.
#[test]
fn a_large_journal_is_read_record_by_record() {
    const RECORD: &str = "an entry of a few dozen bytes, the usual size of a record";
    const SIZE: usize = 256 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.journal");
    let line = format!("{RECORD}\n");
    let records = SIZE / line.len();
    {
        use std::io::Write;
        let mut f =
            std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        for _ in 0..records {
            f.write_all(line.as_bytes()).unwrap();
        }
        f.flush().unwrap();
    }
    let out = common::helper_command("journal-read", [&path])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    let said = common::role_lines(BufReader::new(&out.stdout[..]))
        .next()
        .expect("the reader's report");
    // "records N bytes B peak_kib P"
    let fields: Vec<&str> = said.split(' ').collect();
    assert_eq!(fields[0], "records", "{said}");
    assert_eq!(fields[1].parse::<usize>().unwrap(), records, "{said}");
    let peak_kib: usize = fields[5].parse().unwrap();
    assert!(
        peak_kib < 64 * 1024,
        "reading a {} MiB journal peaked at {} MiB of memory",
        SIZE >> 20,
        peak_kib >> 10
    );
}

/// A file that no journal writer could have left (more than 1 MiB, the
/// longest append, without a line end: another program's data, or damage)
/// is refused with `NotAJournal`, and nothing of it is cut, by an append
/// or a read. (Before: an append took its end for a torn record and cut
/// it off, 1.5 MiB of it here, and a read loaded it whole into memory.)
#[tokio::test]
async fn what_no_writer_could_have_left_is_refused_and_never_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not.journal");
    let mut content = b"a line\n".to_vec();
    content.extend(std::iter::repeat_n(b'x', 3 << 19));
    std::fs::write(&path, &content).unwrap();
    let journal = Journal::open(&path).await.unwrap();
    let appended = journal.append("record").await;
    assert!(
        matches!(appended, Err(JournalError::NotAJournal { .. })),
        "{appended:?}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        content,
        "the file was changed"
    );
    let read = journal.records().await;
    assert!(
        matches!(read, Err(JournalError::NotAJournal { .. })),
        "{:?}",
        read.map(|_| "records")
    );

    // A line longer than any append writes, in the middle of a journal:
    // the records before it, then the refusal, then nothing.
    let path = dir.path().join("damaged.journal");
    let mut content = b"first\n".to_vec();
    content.extend(std::iter::repeat_n(b'y', 3 << 19));
    content.extend(b"\nlast\n");
    std::fs::write(&path, &content).unwrap();
    let journal = Journal::open(&path).await.unwrap();
    let mut records = journal.records().await.unwrap();
    assert_eq!(records.next().unwrap().unwrap(), b"first");
    let refused = records.next().unwrap();
    assert!(
        matches!(refused, Err(JournalError::NotAJournal { .. })),
        "{:?}",
        refused.map(|r| r.len())
    );
    assert!(records.next().is_none());
}

/// The bounds of `NotAJournal` are those of the appends: the longest
/// record (1 MiB less its line end) is read back, even across the reader's
/// chunks, and the longest torn tail is cut as one; a run one byte longer
/// than either is refused.
#[tokio::test]
async fn the_longest_record_and_torn_tail_are_still_a_journal() {
    use std::io::Write;
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.journal");
    let journal = Journal::builder(&path)
        .max_record_len(usize::MAX)
        .open()
        .await
        .unwrap();
    let longest = vec![b'r'; MIB - 1];
    journal.append(&longest).await.unwrap();
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    torn.write_all(&vec![b't'; MIB - 1]).unwrap();
    let records = journal.records().await.unwrap();
    assert_eq!(records.torn_tail().map(<[u8]>::len), Some(MIB - 1));
    let read: Vec<Vec<u8>> = records.collect::<Result<_, _>>().unwrap();
    assert_eq!(read, std::slice::from_ref(&longest));
    journal.append("after").await.unwrap();
    let read: Vec<Vec<u8>> = journal
        .records()
        .await
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(read, [longest, b"after".to_vec()]);

    let path = dir.path().join("one-more.journal");
    std::fs::write(&path, vec![b'z'; MIB]).unwrap();
    let journal = Journal::open(&path).await.unwrap();
    let appended = journal.append("record").await;
    assert!(
        matches!(appended, Err(JournalError::NotAJournal { offset: 0, .. })),
        "{appended:?}"
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), MIB as u64);
}

/// Starts `cmd`, a `journal-lines` helper (or a wrapper that execs one),
/// and returns it with a function that appends one record through it and
/// returns what it said (`ack`, or the error). Dropping the function closes
/// the helper's input, which ends it.
fn journal_lines(
    mut cmd: std::process::Command,
) -> (std::process::Child, impl FnMut(&str) -> String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut said = common::role_lines(BufReader::new(child.stdout.take().unwrap()));
    let append = move |record: &str| {
        writeln!(stdin, "{record}").unwrap();
        stdin.flush().unwrap();
        said.next().expect("the writer ended")
    };
    (child, append)
}

/// Without `/proc` (a chroot, a container that does not mount it), a
/// journal rotated since its last append still appends: the file it holds
/// locked, which it cannot reopen through `/proc`, is opened at the path,
/// where it still is (checked to be that very file). The writer runs in a
/// mount namespace of its own with `/proc` unmounted (needs root).
#[test]
fn a_rotated_journal_appends_without_proc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-proc.journal");
    let helper = common::helper_command("journal-lines", [path.to_str().unwrap()]);
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("umount -l /proc && exec \"$0\" \"$@\"")
        .arg(helper.get_program())
        .args(helper.get_args())
        .envs(helper.get_envs().filter_map(|(k, v)| Some((k, v?))));
    let (mut child, mut append) = journal_lines(cmd);
    assert_eq!(append("first"), "ack");
    std::fs::rename(&path, dir.path().join("no-proc.journal.1")).unwrap();
    std::fs::write(&path, "other\n").unwrap();
    assert_eq!(append("second"), "ack");
    drop(append);
    assert!(child.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("no-proc.journal.1")).unwrap(),
        "first\n"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "other\nsecond\n");
}

/// An unlock that fails once the records are written (an NFS server's EIO
/// or ENOLCK) does not make the append say "nothing was written"
/// (`JournalError::Lock`), which a caller would retry, writing the records
/// twice: the close that follows drops the lock, and the append returns
/// `Ok`. A read is likewise not failed after it was done. The journal's
/// user runs with a preloaded library that fails every OFD unlock.
#[test]
fn an_unlock_that_fails_after_the_work_is_done_fails_neither_append_nor_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("unlock.journal");
    let shim = common::preload_lib("failunlock");
    let mut writer = common::helper_command("journal-lines", [path.to_str().unwrap()]);
    writer.env("LD_PRELOAD", &shim);
    let (mut child, mut append) = journal_lines(writer);
    assert_eq!(append("first"), "ack");
    assert_eq!(append("second"), "ack", "the first append's lock was kept");
    drop(append);
    assert!(child.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");

    let out = common::helper_command("journal-look", [path.to_str().unwrap()])
        .env("LD_PRELOAD", &shim)
        .output()
        .unwrap();
    let said: Vec<String> = common::role_lines(BufReader::new(&out.stdout[..])).collect();
    assert_eq!(
        said,
        ["first", "second", "ack"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
