//! `LockMgr::holders`: every process of this host that holds a lock file
//! is named, whatever program took the lock and with which family, next to
//! real foreign holders: a C program with an OFD, a POSIX or a `flock`
//! lock (and its forked child), util-linux `flock(1)` and its command,
//! Python `filelock`, and `lockmgr` in another process, with its record.
//! Waiters are seen too.
#![deny(unsafe_code)]

mod common;

use std::io::BufReader;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Foreign, LIVENESS};
use lockmgr::{HoldingProcess, LockFamily, LockKind, LockMgr, LockMode, Status};

/// The holders as (pid, family, mode), in pid order.
fn held(lock: &LockMgr) -> Vec<(u32, LockFamily, LockMode)> {
    lock.holders()
        .unwrap()
        .holding
        .iter()
        .map(|h| (h.pid, h.family, h.mode))
        .collect()
}

/// Checks that `pid` is listed as having the file open without a lock.
fn assert_open_without_lock(holders: &lockmgr::Holders, pid: u32) {
    assert!(
        holders.open_without_lock.iter().any(|p| p.pid == pid),
        "{holders:?}"
    );
}

fn find(lock: &LockMgr, pid: u32) -> HoldingProcess {
    let holders = lock.holders().unwrap();
    holders
        .holding
        .iter()
        .find(|h| h.pid == pid)
        .unwrap_or_else(|| panic!("pid {pid} not among {holders:?}"))
        .clone()
}

#[test]
fn a_foreign_holder_of_each_family_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (family, mode, want_family, want_mode) in [
        ("ofd", "ex", LockFamily::Ofd, LockMode::Exclusive),
        ("ofd", "sh", LockFamily::Ofd, LockMode::Shared),
        ("posix", "ex", LockFamily::Posix, LockMode::Exclusive),
        ("posix", "sh", LockFamily::Posix, LockMode::Shared),
        ("flock", "ex", LockFamily::Flock, LockMode::Exclusive),
        ("flock", "sh", LockFamily::Flock, LockMode::Shared),
    ] {
        let path = dir.path().join(format!("{family}-{mode}.lock"));
        let lock = LockMgr::new(&path);
        let holder = Foreign::start(family, mode, &path);
        assert_eq!(
            held(&lock),
            [(holder.pid(), want_family, want_mode)],
            "{family} {mode}"
        );
        let named = find(&lock, holder.pid());
        assert_eq!(named.command.as_deref(), Some("foreign-holder"));
        assert_eq!(named.record, None, "a foreign holder writes no record");
        holder.finish();
        let after = lock.holders().unwrap();
        assert!(after.is_free(), "{family} {mode}: {after:?}");
    }
}

#[test]
fn every_shared_holder_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.lock");
    let lock = LockMgr::new(&path);
    let a = Foreign::start("ofd", "sh", &path);
    let b = Foreign::start("ofd", "sh", &path);
    let c = Foreign::start("posix", "sh", &path);
    let mine = lock.try_acquire_shared().unwrap();
    let mut want = vec![
        (a.pid(), LockFamily::Ofd, LockMode::Shared),
        (b.pid(), LockFamily::Ofd, LockMode::Shared),
        (c.pid(), LockFamily::Posix, LockMode::Shared),
        (std::process::id(), LockFamily::Ofd, LockMode::Shared),
    ];
    want.sort_by_key(|&(pid, family, mode)| (pid, family, mode == LockMode::Shared));
    assert_eq!(held(&lock), want);
    drop(mine);
    a.finish();
    b.finish();
    c.finish();
}

/// A forked child that keeps the descriptor keeps the lock with its
/// parent (`flock` and OFD locks belong to the open file description):
/// both are named.
#[test]
fn a_forked_child_sharing_the_lock_is_named_with_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    for family in [("flock", LockFamily::Flock), ("ofd", LockFamily::Ofd)] {
        let path = dir.path().join(format!("{}.lock", family.0));
        let lock = LockMgr::new(&path);
        let mut parent = Foreign::start(family.0, "ex", &path);
        let child: u32 = parent
            .command("fork")
            .strip_prefix("child ")
            .expect("child <pid>")
            .parse()
            .unwrap();
        let mut want = vec![
            (parent.pid(), family.1, LockMode::Exclusive),
            (child, family.1, LockMode::Exclusive),
        ];
        want.sort_by_key(|&(pid, family, mode)| (pid, family, mode == LockMode::Shared));
        assert_eq!(held(&lock), want, "{}", family.0);
        parent.finish();
    }
}

/// util-linux `flock(1)` holds the lock for its command, which inherits the
/// descriptor: both are named, with the `flock` family. Asked about OFD
/// locks, the file is free (the families do not see each other), and
/// `other_family` says who locks it the other way.
#[test]
fn flock_1_and_its_command_are_named_and_the_wrong_family_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flock1.lock");
    std::fs::write(&path, b"").unwrap();
    // `flock` prints nothing; its command says when it runs under the lock.
    let mut flock = Command::new("flock")
        .arg("-x")
        .arg(&path)
        // No `exec` after the line: the command's name must not change
        // between the looks below.
        .args(["sh", "-c", "echo locked $$; read line || true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("flock(1) from util-linux");
    let mut said = common::role_lines(BufReader::new(flock.stdout.take().unwrap()));
    let line = said.next().expect("the command ran");
    let command: u32 = line.strip_prefix("locked ").unwrap().parse().unwrap();

    let ofd = LockMgr::new(&path);
    let flock_kind = LockMgr::builder(&path).kind(LockKind::Flock).build();
    assert_eq!(
        flock_kind.holders().unwrap(),
        ofd.holders().unwrap(),
        "the same processes, whatever family is asked about"
    );
    let mut want = vec![
        (flock.id(), LockFamily::Flock, LockMode::Exclusive),
        (command, LockFamily::Flock, LockMode::Exclusive),
    ];
    want.sort_by_key(|&(pid, family, mode)| (pid, family, mode == LockMode::Shared));
    assert_eq!(held(&ofd), want);
    assert_eq!(find(&ofd, flock.id()).command.as_deref(), Some("flock"));
    assert_eq!(find(&ofd, command).command.as_deref(), Some("sh"));

    assert_eq!(
        ofd.status().unwrap(),
        Status::Free,
        "OFD locks do not see it"
    );
    let holders = ofd.holders().unwrap();
    assert_eq!(holders.excluding(LockKind::Ofd).count(), 0);
    assert_eq!(holders.other_family(LockKind::Ofd).count(), 2);
    assert_eq!(holders.excluding(LockKind::Flock).count(), 2);

    drop(flock.stdin.take());
    assert!(flock.wait().unwrap().success());
    assert!(ofd.holders().unwrap().is_free());
}

/// Python `filelock` (`fcntl.flock` under the hood) is named as a `flock`
/// holder: the family a `LockKind::Ofd` lock does not see.
#[test]
fn a_python_filelock_holder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.lock");
    let script = "import filelock, os, sys\n\
                  with filelock.FileLock(sys.argv[1]):\n    \
                  print('locked', os.getpid(), flush=True)\n    \
                  sys.stdin.read()\n";
    // The system's Python, where scripts/test installs python3-filelock.
    let mut python = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3");
    let mut said = common::role_lines(BufReader::new(python.stdout.take().unwrap()));
    let line = said.next();
    assert!(
        line.as_deref().is_some_and(|l| l.starts_with("locked")),
        "Python filelock said {line:?} (scripts/test installs python3-filelock)"
    );
    let lock = LockMgr::new(&path);
    assert_eq!(
        held(&lock),
        [(python.id(), LockFamily::Flock, LockMode::Exclusive)]
    );
    assert_eq!(find(&lock, python.id()).command.as_deref(), Some("python3"));
    assert_eq!(
        lock.holders().unwrap().other_family(LockKind::Ofd).count(),
        1
    );
    drop(python.stdin.take());
    assert!(python.wait().unwrap().success());
    assert!(lock.holders().unwrap().is_free());
}

/// A `lockmgr` holder in another process is named with its record; a
/// waiter in a third is seen blocked in the kernel, with the file open and
/// no lock through it.
#[tokio::test]
async fn a_lockmgr_holder_has_its_record_and_its_waiter_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockmgr.lock");
    let lock = LockMgr::new(&path);
    let holder = common::Holder::start_with(&path, "hold", &["--label=nightly"]);
    let named = find(&lock, holder.pid() as u32);
    assert_eq!(named.command.as_deref().map(|c| c.is_empty()), Some(false));
    assert_eq!(
        (named.family, named.mode),
        (LockFamily::Ofd, LockMode::Exclusive)
    );
    let record = named.record.expect("the holder's record");
    assert_eq!(record.pid, holder.pid() as u32);
    assert_eq!(record.label.as_deref(), Some("nightly"));

    let mut waiter = common::helper_command("hold", [path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(LIVENESS, async {
        while common::blocked_on(&path) == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the waiter never blocked in the kernel");
    let holders = lock.holders().unwrap();
    assert_eq!(holders.blocked_requests, 1, "{holders:?}");
    assert_open_without_lock(&holders, waiter.id());
    assert_eq!(holders.holding.len(), 1, "{holders:?}");
    drop(holder);
    drop(waiter.stdin.take());
    let _ = waiter.kill();
    let _ = waiter.wait();
}

/// Another user's holders, seen by an unprivileged caller: a POSIX lock is
/// named by the pid `/proc/locks` gives; an OFD lock, whose process only
/// its descriptors tell, is counted as unseen, not left out.
#[test]
fn locks_of_processes_the_caller_cannot_see_are_counted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (family, named) in [("ofd", false), ("posix", true)] {
        let path = dir.path().join(format!("{family}.lock"));
        let holder = Foreign::start(family, "ex", &path);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = common::helper_command("holders", [&path])
            .uid(65534)
            .gid(65534)
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success());
        let said = common::role_lines(BufReader::new(&out.stdout[..]))
            .next()
            .unwrap_or_default();
        let want = if named {
            format!("holding {} unseen 0", holder.pid())
        } else {
            "holding  unseen 1".to_owned()
        };
        assert_eq!(said, want, "{family}");
        holder.finish();
    }
}

/// A `lockmgr` process with three tasks waiting publishes them: `holders`
/// tells how many wait in that process, and since when; once they have
/// won, nothing is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lockmgr_process_tells_how_many_of_its_tasks_wait_and_since_when() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crowded.lock");
    let lock = LockMgr::new(&path);
    let held = lock.try_acquire().unwrap();
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let mut crowd = common::helper_command("crowd", [path.to_str().unwrap(), "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let waiting = tokio::time::timeout(LIVENESS, async {
        loop {
            let holders = lock.holders().unwrap();
            let seen = holders
                .open_without_lock
                .iter()
                .find(|p| p.pid == crowd.id())
                .and_then(|p| p.waiting);
            if let Some(w) = seen.filter(|w| w.tasks == 3) {
                return w;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the three waiting tasks were never published");
    assert!(waiting.since >= started && waiting.since <= std::time::SystemTime::now());
    let said = lock.holders().unwrap().open_without_lock[0].to_string();
    assert!(said.contains("3 tasks waiting since "), "{said}");
    drop(held);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut crowd.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains("all won"), "{out}");
    assert!(crowd.wait().unwrap().success());
    assert!(lock.holders().unwrap().open_without_lock.is_empty());
}

/// Looking takes nothing: no file is made, and a free file costs no scan.
#[test]
fn looking_creates_nothing_and_takes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.lock");
    let lock = LockMgr::new(&path);
    let holders = lock.holders().unwrap();
    assert!(holders.is_free() && holders.open_without_lock.is_empty());
    assert!(!Path::new(&path).exists());
    let guard = lock.try_acquire().unwrap();
    assert_eq!(held(&lock).len(), 1);
    assert!(lock.try_acquire().unwrap_err().is_contended());
    drop(guard);
    assert!(lock.holders().unwrap().is_free());
}

/// Bad paths get the errors the other calls give.
#[test]
fn a_directory_is_not_a_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = LockMgr::new(dir.path()).holders().unwrap_err();
    assert!(matches!(e, lockmgr::LockError::NotAFile { .. }), "{e:?}");
}

/// A process that holds a lock through two open file descriptions (two
/// shared guards, two permits of a semaphore) is named once, and none of
/// its locks is counted as unseen: the old code kept one lock per process,
/// family and mode, and counted the second as another user's. A copy of a
/// guard's descriptor is still one lock.
#[tokio::test]
async fn two_locks_of_one_process_are_both_its_own() {
    use std::os::fd::AsFd;
    let dir = tempfile::tempdir().unwrap();
    let me = std::process::id();

    let path = dir.path().join("twice.lock");
    let lock = LockMgr::new(&path);
    let first = lock.try_acquire_shared().unwrap();
    let copy = first.as_fd().try_clone_to_owned().unwrap();
    let second = lock.try_acquire_shared().unwrap();
    let holders = lock.holders().unwrap();
    assert_eq!(held(&lock), [(me, LockFamily::Ofd, LockMode::Shared)]);
    assert_eq!(holders.unseen, 0, "{holders:?}");
    drop((first, second, copy));
    assert!(lock.holders().unwrap().is_free());

    let path = dir.path().join("permits.sem");
    let semaphore = lockmgr::Semaphore::new(&path, 3);
    let permits = [
        semaphore.try_acquire().unwrap(),
        semaphore.try_acquire().unwrap(),
    ];
    let holders = LockMgr::new(&path).holders().unwrap();
    assert_eq!(holders.unseen, 0, "{holders:?}");
    assert!(holders.holding.iter().all(|h| h.pid == me), "{holders:?}");
    drop(permits);
}

/// A `flock` lock is listed under the pid that called `flock()`, which may
/// have given the lock's descriptor away (to a forked child) and closed its
/// own, or died and had its pid handed to an unrelated process: such a
/// process is not named, only the ones whose descriptors (or mappings)
/// keep the lock. On the old code the parent was named beside its child.
#[test]
fn a_process_that_gave_its_descriptor_away_is_not_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("given.lock");
    let lock = LockMgr::builder(&path).kind(LockKind::Flock).build();
    let mut parent = Foreign::start("flock", "ex", &path);
    let child: u32 = parent
        .command("fork")
        .strip_prefix("child ")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(parent.command("close"), "closed");
    assert_eq!(
        held(&lock),
        [(child, LockFamily::Flock, LockMode::Exclusive)]
    );
    assert_eq!(lock.holders().unwrap().unseen, 0);
    // A mapping of the file through another description of its own holds
    // no lock: the parent is still not named (it was, in the first version
    // of the mapping check, which took any mapping for the lock's).
    assert_eq!(parent.command("mapother"), "mapped");
    assert_eq!(
        held(&lock),
        [(child, LockFamily::Flock, LockMode::Exclusive)]
    );
    parent.finish();

    // A mapping keeps the open file description, and so the lock: its
    // process holds it with no descriptor.
    let path = dir.path().join("mapped.lock");
    let lock = LockMgr::builder(&path).kind(LockKind::Flock).build();
    let mut mapper = Foreign::start("flock", "ex", &path);
    assert_eq!(mapper.command("map"), "mapped");
    assert_eq!(mapper.command("close"), "closed");
    assert_eq!(
        held(&lock),
        [(mapper.pid(), LockFamily::Flock, LockMode::Exclusive)]
    );
    mapper.finish();
}

/// A process waiting for a permit of a semaphore marks itself as waiting
/// with a shared lock on one byte of the file, and a first user locks
/// another byte for an instant to write the count: neither is a permit.
/// The holder of the one permit is the only holder; the waiter has the
/// file open without holding anything.
#[test]
fn a_semaphore_waiter_is_no_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.sem");
    let holder = common::Holder::start_with(&path, "permit-hold", &["1"]);
    let mut waiter = common::helper_command("permit-hold", [path.to_str().unwrap(), "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    common::until_watched_by(waiter.id(), &path);
    let lock = LockMgr::new(&path);
    let holders = lock.holders().unwrap();
    let holding: Vec<u32> = holders.holding.iter().map(|h| h.pid).collect();
    assert_eq!(holding, [holder.pid() as u32], "{holders:?}");
    assert_open_without_lock(&holders, waiter.id());
    holder.finish();
    drop(waiter.stdin.take());
    assert!(waiter.wait().unwrap().success());
}

/// A record left by a process that let the lock go, and runs on, names no
/// holder once a POSIX lock holds the file (Python's `fcntl.lockf`,
/// SQLite, a C program's `F_SETLK`), which the kernel names itself:
/// `holder()`, `status()` and a try's `WouldBlock` say nobody known, not the
/// old record's process. Before, they named this very process, which held
/// nothing. (An OFD or `flock` holder is not named by the kernel; its
/// record, or an old one, is taken at its word.)
#[test]
fn an_old_record_names_no_holder_where_the_kernel_names_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posix.lock");
    let lock = LockMgr::new(&path);
    // This process's record stays in the file after its release.
    drop(lock.try_acquire().unwrap());
    let holder = Foreign::start("posix", "ex", &path);
    assert_eq!(lock.holder().unwrap(), None);
    assert_eq!(lock.status().unwrap(), Status::Exclusive { holder: None });
    match lock.try_acquire() {
        Err(lockmgr::LockError::WouldBlock { holder, .. }) => assert_eq!(holder, None),
        other => panic!("{other:?}"),
    }
    holder.finish();
    // The record of a process that does hold the lock still names it.
    let held = lock.try_acquire().unwrap();
    let named = LockMgr::new(&path).holder().unwrap().expect("a record");
    assert_eq!(named.pid, std::process::id());
    drop(held);
}

/// The same for the record of a process that has ended since (the usual
/// old record: a `lockmgr run` that is over): it names no holder once a
/// POSIX lock of another process holds the file. Before, a record whose
/// process was gone was taken at its word, so `holder()` and a try's
/// `WouldBlock` named the dead process ("stale record"), not nobody.
#[test]
fn an_old_record_of_an_ended_process_names_no_holder_where_the_kernel_names_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("posix.lock");
    common::Holder::start(&path).finish();
    let lock = LockMgr::new(&path);
    let holder = Foreign::start("posix", "ex", &path);
    assert_eq!(lock.holder().unwrap(), None);
    match lock.try_acquire() {
        Err(lockmgr::LockError::WouldBlock { holder, .. }) => assert_eq!(holder, None),
        other => panic!("{other:?}"),
    }
    holder.finish();
}

/// On btrfs the kernel's lock lists (`/proc/locks`, fdinfo) name a file by
/// its file system's device, where `stat` gives its subvolume's: a holder
/// there is still named, and the file listed. Before, the file was found in
/// no lock list: `holders()` said it was free while `flock(1)` held it, and
/// `locked_files_among` left it out. (A loop-mounted
/// btrfs; `scripts/test` installs `btrfs-progs`.)
#[test]
fn a_holder_on_btrfs_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("btrfs.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let made = Command::new("mkfs.btrfs").arg("-q").arg(&image).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "mkfs.btrfs (btrfs-progs) is needed"
    );
    let mounted = Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&image)
        .arg(&mnt)
        .status();
    assert!(
        mounted.is_ok_and(|s| s.success()),
        "cannot loop-mount btrfs"
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&mnt);
    for (family, kind, want) in [
        ("flock", LockKind::Flock, LockFamily::Flock),
        ("ofd", LockKind::Ofd, LockFamily::Ofd),
    ] {
        let path = mnt.join(format!("{family}.lock"));
        let lock = LockMgr::builder(&path).kind(kind).build();
        let holder = Foreign::start(family, "ex", &path);
        assert_eq!(
            held(&lock),
            [(holder.pid(), want, LockMode::Exclusive)],
            "{family} on btrfs"
        );
        // Listed too, with its path, and found among the files asked about.
        let meta = std::fs::metadata(&path).unwrap();
        let listed = lockmgr::locked_files_among([&meta]).unwrap();
        assert_eq!(listed.len(), 1, "{family}: {listed:?}");
        assert!(listed[0].is(&meta), "{family}: {listed:?}");
        assert_eq!(listed[0].path.as_deref(), Some(path.as_path()), "{family}");
        let pids: Vec<u32> = listed[0].holders.holding.iter().map(|h| h.pid).collect();
        assert_eq!(pids, [holder.pid()], "{family}");
        assert!(
            lockmgr::locked_files()
                .unwrap()
                .iter()
                .any(|f| f.path.as_deref() == Some(path.as_path())),
            "{family}"
        );
        holder.finish();
        assert!(lock.holders().unwrap().is_free(), "{family}");
    }
}

/// A holder whose descriptor's path is too long to be read back (past
/// PATH_MAX: `/proc/PID/fd/N` cannot be read as a link) is still named: its
/// fdinfo tells the file. Python opens the lock file under a hard link deep
/// in a tree it walks into one directory at a time, and holds an OFD lock.
#[test]
fn a_holder_whose_path_is_too_long_to_read_is_named() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    std::fs::write(&path, b"").unwrap();
    let script = r#"
import fcntl, os, struct, sys
os.chdir(sys.argv[1])
for _ in range(24):
    os.mkdir("d" * 200)
    os.chdir("d" * 200)
os.link(sys.argv[2], "l")
fd = os.open("l", os.O_RDWR)
fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0))  # F_OFD_SETLK
print("locked", flush=True)
sys.stdin.read()
"#;
    let mut python = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path())
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(python.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n");
    let fd_link = std::fs::read_dir(format!("/proc/{}/fd", python.id()))
        .unwrap()
        .flatten()
        .map(|fd| std::fs::read_link(fd.path()))
        .find(|l| l.is_err());
    assert!(fd_link.is_some(), "no descriptor link too long to read");
    let holders = LockMgr::new(&path).holders().unwrap();
    let pids: Vec<u32> = holders.holding.iter().map(|h| h.pid).collect();
    assert_eq!(pids, [python.id()], "{holders:?}");
    drop(python.stdin.take());
    assert!(python.wait().unwrap().success());
}
