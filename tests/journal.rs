//! The journal across real processes, with writers killed mid-flight.
#![deny(unsafe_code)]

mod common;

use std::collections::HashSet;
use std::io::{BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use lockmgr::journal::{Journal, JournalError};
use lockmgr::LockError;

/// Checks one journal line: `<id> len=<len> sum=<sum> <payload>` with the
/// payload's length and byte sum as stated. Returns the id.
fn check_line(line: &[u8]) -> String {
    let text = std::str::from_utf8(line).expect("utf-8 line");
    let mut parts = text.splitn(4, ' ');
    let (id, len, sum, payload) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap_or(""),
    );
    let len: usize = len.strip_prefix("len=").expect(text).parse().unwrap();
    let sum: u64 = sum.strip_prefix("sum=").expect(text).parse().unwrap();
    assert_eq!(payload.len(), len, "torn or interleaved line: {id}");
    assert_eq!(
        payload.bytes().map(u64::from).sum::<u64>(),
        sum,
        "garbled line: {id}"
    );
    assert!(id.starts_with('w'), "unknown writer: {id}");
    id.to_owned()
}

/// 8 processes x 4 tasks x 200 appends while 3 of the writers are killed
/// with SIGKILL at different moments: every line is a whole record of a
/// known writer, nothing is duplicated, and every acknowledged append is
/// there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_survive_writers_killed_at_random_moments() {
    const PROCS: u32 = 8;
    const TASKS: u32 = 4;
    const N: u32 = 200;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    // Three writers die by SIGKILL, each after a random number of its acks
    // (the seed is printed, and LOCKMGR_TEST_SEED replays it).
    let seed: u64 = std::env::var("LOCKMGR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill plan seed: LOCKMGR_TEST_SEED={seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut kill_after = [None; PROCS as usize];
    while kill_after.iter().filter(|k| k.is_some()).count() < 3 {
        let victim = (next() % u64::from(PROCS)) as usize;
        kill_after[victim] = Some(1 + (next() % u64::from(TASKS * N - 1)) as usize);
    }
    eprintln!("kill after (acks): {kill_after:?}");

    let readers: Vec<_> = (0..PROCS)
        .map(|id| {
            let args = [
                path.to_str().unwrap().to_owned(),
                id.to_string(),
                TASKS.to_string(),
                N.to_string(),
            ];
            let mut child = common::helper_command("journal-writer", args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let kill_at = kill_after[id as usize];
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for line in common::role_lines(BufReader::new(stdout)) {
                    acked.push(line.strip_prefix("ack ").unwrap().to_owned());
                    if Some(acked.len()) == kill_at {
                        child.kill().unwrap(); // SIGKILL
                    }
                }
                let status = child.wait().unwrap();
                (acked, status, kill_at.is_some())
            })
        })
        .collect();

    let mut acked = Vec::new();
    for r in readers {
        let (ids, status, killed) = r.join().unwrap();
        if killed {
            use std::os::unix::process::ExitStatusExt;
            // Killed, or it had already finished when the signal came.
            let finished_first = status.success() && ids.len() == (TASKS * N) as usize;
            assert!(status.signal() == Some(9) || finished_first, "{status:?}");
        } else {
            assert!(status.success(), "{status:?}");
            assert_eq!(ids.len(), (TASKS * N) as usize);
        }
        acked.extend(ids);
    }

    let read = Journal::open(&path).await.unwrap().records().await.unwrap();
    let torn_tail = read.torn_tail().map(<[u8]>::to_vec);
    let records: Vec<Vec<u8>> = read.map(Result::unwrap).collect();
    let mut seen = HashSet::new();
    for line in &records {
        let id = check_line(line);
        assert!(seen.insert(id.clone()), "record {id} appears twice");
    }
    for id in &acked {
        assert!(seen.contains(id), "acknowledged record {id} is missing");
    }
    // A torn tail can only be the unacknowledged start of a killed
    // writer's last record (appends after it would have cut it off).
    if let Some(tail) = &torn_tail {
        let text = String::from_utf8_lossy(tail);
        let id = text.split(' ').next().unwrap();
        assert!(
            id.starts_with('w') && !acked.iter().any(|a| a == id),
            "{text}"
        );
    }
    assert!(records.len() >= acked.len());
    assert!(records.len() <= (PROCS * TASKS * N) as usize);
}

#[tokio::test]
async fn rejected_records_change_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let journal = Journal::builder(&path)
        .max_record_len(10)
        .open()
        .await
        .unwrap();
    journal.append("fine").await.unwrap();
    let before = std::fs::read(&path).unwrap();

    let err = journal.append("two\nlines").await.unwrap_err();
    assert!(
        matches!(err, JournalError::NewlineInRecord { index: 0, .. }),
        "{err}"
    );
    let err = journal.append("eleven byte").await.unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::RecordTooLong {
                len: 11,
                max: 10,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was written"), "{err}");
    // One bad record spoils the whole batch, before anything is written.
    let err = journal
        .append_batch(["ok", "also ok", "bad\n"])
        .await
        .unwrap_err();
    assert!(
        matches!(err, JournalError::NewlineInRecord { index: 2, .. }),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn journal_file_holds_nothing_but_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let journal = Journal::open(&path).await.unwrap();
    journal.append("one").await.unwrap();
    journal.append_batch(["two", "three"]).await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\nthree\n");

    // With a separate lock file, that file gets the holder record instead.
    let lock = dir.path().join("journal.lock");
    let j2 = Journal::builder(&path)
        .lock_file(&lock)
        .open()
        .await
        .unwrap();
    j2.append("four").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "one\ntwo\nthree\nfour\n"
    );
    assert!(std::fs::read_to_string(&lock)
        .unwrap()
        .starts_with("lockmgr-holder/1 "));
}

/// A "separate" lock file that is the journal file itself (the same path,
/// or another name of it) is its default lock: before, the journal locked
/// its own file twice (two OFD locks of one process conflict), so every
/// append waited for itself until it timed out, and a holder record went
/// into the journal.
#[tokio::test]
async fn a_lock_file_that_is_the_journal_itself_is_its_default_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    std::fs::write(&path, "").unwrap();
    let other_name = dir.path().join("journal.link");
    std::fs::hard_link(&path, &other_name).unwrap();
    for (lock, kind) in [
        (&path, lockmgr::LockKind::Ofd),
        (&other_name, lockmgr::LockKind::Ofd),
        (&path, lockmgr::LockKind::Flock),
    ] {
        let journal = Journal::builder(&path)
            .lock_file(lock)
            .kind(kind)
            .timeout(Duration::from_millis(200))
            .max_attempts(1)
            .open()
            .await
            .unwrap();
        journal.append("x").await.unwrap();
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "x\nx\nx\n");
}

/// `SyncPolicy::Data` appends, to a new file and to one found anew after a
/// rotation, are read back. (That the first append to each also syncs the
/// directory was checked under `strace`: see the CHANGELOG.)
#[tokio::test]
async fn synced_appends_to_a_new_and_a_rotated_file_are_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let journal = Journal::builder(&path)
        .sync(lockmgr::journal::SyncPolicy::Data)
        .open()
        .await
        .unwrap();
    journal.append("one").await.unwrap();
    journal.append("two").await.unwrap();
    std::fs::rename(&path, dir.path().join("journal.1")).unwrap();
    journal.append("three").await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("journal.1")).unwrap(),
        "one\ntwo\n"
    );
}

#[tokio::test]
async fn a_held_lock_times_out_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let journal = Journal::builder(&path)
        .timeout(Duration::from_millis(10))
        .max_attempts(2)
        .open()
        .await
        .unwrap();
    let held = lockmgr::LockMgr::new(&path).try_acquire().unwrap();
    let err = journal.append("x").await.unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Lock(LockError::TimedOut { attempts: 2, .. })
        ),
        "{err}"
    );
    drop(held);
    journal.append("x").await.unwrap();
}

#[tokio::test]
async fn bad_journal_paths_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let err = Journal::open(dir.path()).await.unwrap_err();
    assert!(
        matches!(err, JournalError::Open(LockError::NotAFile { .. })),
        "{err}"
    );
    let fifo = dir.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let err = Journal::open(&fifo).await.unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Open(LockError::NotAFile {
                kind: lockmgr::FileKind::Fifo,
                ..
            })
        ),
        "{err}"
    );
    let target = dir.path().join("target");
    std::fs::write(&target, "keep").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = Journal::open(&link).await.unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Open(LockError::NotAFile {
                kind: lockmgr::FileKind::Symlink,
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    let err = Journal::open(dir.path().join("no/such/dir/j"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JournalError::Open(LockError::MissingParent { .. })),
        "{err}"
    );
    // Said of the journal, with no hint of a lock builder's option (before:
    // "cannot create lock file ...: ... (the builder's create_dirs(true)
    // creates it)", which a journal's builder does not have).
    let said = err.to_string();
    assert!(
        said.contains("cannot create journal") && !said.contains("create_dirs"),
        "{said}"
    );
    let err = Journal::open(dir.path()).await.unwrap_err().to_string();
    assert!(err.contains("as a journal: it is a directory"), "{err}");
}

/// Writers in three processes append (one with 300 KB records, one whose
/// lock is a `flock` lock), while the journal is renamed away every 2 ms
/// (as `logrotate` does, without the lock): every acknowledged record is, whole and once, in one
/// of the files, the renamed ones or the one at the path. An append writes
/// to the file it holds locked; before, a writer that found its own file
/// rotated opened the path, which could name a newer file by then, locked
/// by another writer, who cut the first one's record, half written, off as
/// a torn tail.
#[test]
fn rotation_under_appends_loses_no_acknowledged_record() {
    // (records per task, tasks, their options): the last writer's lock is
    // a `flock` lock, with the default one after it.
    const WRITERS: [(u32, u32, &[&str]); 3] = [
        (150, 2, &["--large"]),
        (2000, 2, &[]),
        (2000, 1, &["--flock"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rotated.journal");
    let rotated = dir.path().join("old");
    std::fs::create_dir(&rotated).unwrap();
    let writers: Vec<_> = (0..)
        .zip(WRITERS)
        .map(|(id, (n, tasks, opts))| {
            let mut args = vec![
                path.to_str().unwrap().to_owned(),
                id.to_string(),
                tasks.to_string(),
                n.to_string(),
            ];
            args.extend(opts.iter().map(|o| o.to_string()));
            let mut child = common::helper_command("journal-writer", args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let acked: Vec<String> = common::role_lines(BufReader::new(stdout))
                    .map(|line| line.strip_prefix("ack ").unwrap().to_owned())
                    .collect();
                (acked, child.wait().unwrap())
            })
        })
        .collect();
    // Every 2 ms: a file stays at the path long enough for a writer to be
    // appending to it when another finds its own rotated away.
    let mut renames = 0;
    while !writers.iter().all(|w| w.is_finished()) {
        if std::fs::rename(&path, rotated.join(renames.to_string())).is_ok() {
            renames += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut acked = Vec::new();
    for w in writers {
        let (ids, status) = w.join().unwrap();
        assert!(status.success(), "{status:?}");
        acked.extend(ids);
    }
    let mut files: Vec<_> = std::fs::read_dir(&rotated)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.push(path.clone());
    let mut seen = HashSet::new();
    for file in files.iter().filter(|f| f.exists()) {
        for line in std::fs::read(file).unwrap().split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let id = check_line(line);
            assert!(seen.insert(id.clone()), "record {id} appears twice");
        }
    }
    let lost: Vec<_> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records lost in {renames} renames: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// A `journal-look --wait` helper as `nobody` on the journal at `path`,
/// once it has opened it, and its lines.
fn reader_as_nobody(path: &std::path::Path) -> (std::process::Child, impl Iterator<Item = String>) {
    use std::os::unix::process::CommandExt;
    let mut child = common::helper_command("journal-look", [path.to_str().unwrap(), "--wait"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = common::role_lines(BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(said.next().as_deref(), Some("opened"));
    (child, said)
}

/// A journal this process may read but not write (another user's, a
/// read-only mount): an operator's tool reads its records, torn tail and
/// all, under the shared lock, and an append is refused with a typed error
/// that changes nothing. Before, it could not even be opened.
#[test]
fn a_journal_only_readable_here_is_read_and_refuses_appends() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("journal");
    // Two records and the start of a third, its writer killed mid-write.
    let written = b"one\ntwo\npartial".to_vec();
    std::fs::write(&path, &written).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_nobody = |path: &std::path::Path| {
        let out = common::helper_command("journal-look", [path])
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        common::role_lines(&out.stdout[..]).collect::<Vec<_>>()
    };
    let said = as_nobody(&path);
    assert_eq!(said.len(), 4, "{said:?}");
    assert_eq!(said[..3], ["torn: 7", "one", "two"], "{said:?}");
    assert!(
        said[3].starts_with("error: ReadOnly") && said[3].contains("journal"),
        "{said:?}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        written,
        "the journal changed"
    );

    // Rotated after the reader opened it: the reader reads the file now at
    // the path (and still may not write it).
    let (mut reader, said) = reader_as_nobody(&path);
    std::fs::rename(&path, dir.path().join("journal.1")).unwrap();
    std::fs::write(&path, b"three\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    writeln!(reader.stdin.take().unwrap()).unwrap();
    let said: Vec<String> = said.collect();
    assert!(reader.wait().unwrap().success());
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(said[0], "three", "{said:?}");
    assert!(said[1].starts_with("error: ReadOnly"), "{said:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"three\n");

    // One that does not exist and may not be made here: no journal to read.
    let said = as_nobody(&dir.path().join("missing"));
    assert!(said[0].starts_with("open error: "), "{said:?}");
    assert!(!dir.path().join("missing").exists());
}

/// A journal this process may only read, rotated after it was opened: with
/// no new file at the path yet, reading fails and makes none (before, the
/// reader's lock created an empty journal there, its own, which the
/// writers, as another user, could then not lock); with the writers' new
/// file there, it is read through a descriptor of the reader's own, so the
/// reader's release is the last close of its lock's open file description
/// and sends the close event writers waiting for the lock watch for
/// (before, a duplicate of the lock's descriptor was kept, and no close
/// event came).
#[test]
fn a_rotated_journal_only_readable_here_is_read_without_a_trace() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The reader may make files here, as in a directory shared with the
    // writers' group.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.path().join("journal");
    let readable = |contents: &[u8]| {
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    readable(b"one\n");
    let reader = || reader_as_nobody(&path);

    // Rotated away, nothing at the path yet.
    let (mut child, mut said) = reader();
    std::fs::rename(&path, dir.path().join("journal.1")).unwrap();
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let read = said.next().unwrap();
    assert!(read.starts_with("records error: "), "{read}");
    assert!(said.next().unwrap().starts_with("error: ReadOnly"));
    assert!(!path.exists(), "the reader made a journal file");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());

    // Rotated, the writers' new file there.
    readable(b"one\n");
    let (mut child, mut said) = reader();
    std::fs::rename(&path, dir.path().join("journal.2")).unwrap();
    readable(b"two\n");
    let mut closes = inotify::Inotify::init().unwrap();
    closes
        .watches()
        .add(&path, inotify::WatchMask::CLOSE_NOWRITE)
        .unwrap();
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    assert_eq!(said.next().as_deref(), Some("two"));
    assert!(said.next().unwrap().starts_with("error: ReadOnly"));
    // The reader still has the journal open, its lock released.
    let mut buf = [0u8; 1024];
    let events = match closes.read_events(&mut buf) {
        Ok(events) => events.count(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("{e}"),
    };
    assert!(events >= 1, "the reader's release sent no close event");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());

    // A journal this process made, so may write, rotated to a file it may
    // not: the error says so (before, it blamed /proc).
    std::fs::remove_file(&path).unwrap();
    let (mut child, mut said) = reader();
    std::fs::rename(&path, dir.path().join("journal.3")).unwrap();
    readable(b"three\n");
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let read = said.next().unwrap();
    assert!(
        read.starts_with("records error: ") && read.contains("Permission denied"),
        "{read}"
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}
