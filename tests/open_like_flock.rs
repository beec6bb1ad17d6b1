//! The lock file is opened as util-linux `flock(1)` opens it: a `flock(2)`
//! lock needs no write access, so a file that may only be read is locked
//! through a read-only descriptor (an OFD exclusive lock cannot be, and says
//! so); an existing file is opened without `O_CREAT`, so that
//! `fs.protected_regular` does not refuse another user's lock file in a
//! sticky directory such as `/tmp`; and a file that merely starts like a
//! holder record is not one, so it is never overwritten.
//!
//! The tests run as root, as CI does: the unprivileged side is the helper
//! process started as `nobody`, and `fs.protected_regular` is set for the
//! duration of its test (and put back).
#![deny(unsafe_code)]

mod common;

use std::io::BufReader;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use lockmgr::{LockKind, LockMgr};

const NOBODY: u32 = 65534;

/// A directory `nobody` can enter, and in it a lock file owned by root that
/// only root may write.
fn read_only_lock_file(dir: &Path) -> std::path::PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("shared.lock");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// The first line the helper says when started as `nobody` with `try`.
fn try_as_nobody(path: &Path, opts: &[&str]) -> (String, std::process::Child) {
    let mut args = vec![path.to_str().unwrap()];
    args.extend_from_slice(opts);
    let mut child = common::helper_command("try", args)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = common::role_lines(BufReader::new(child.stdout.take().unwrap()))
        .next()
        .expect("the helper said nothing");
    (line, child)
}

#[test]
fn flock_locks_a_file_it_may_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = read_only_lock_file(dir.path());
    let (said, mut child) = try_as_nobody(&path, &["--flock"]);
    assert!(said.starts_with("locked"), "{said}");
    // It really holds it: flock(2) users are kept out.
    let ours = LockMgr::builder(&path).kind(LockKind::Flock).build();
    assert!(ours.try_acquire().unwrap_err().is_contended());
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    drop(ours.try_acquire().unwrap());
}

#[test]
fn ofd_exclusive_on_a_file_it_may_only_read_says_it_needs_write_access() {
    let dir = tempfile::tempdir().unwrap();
    let path = read_only_lock_file(dir.path());
    let (said, mut child) = try_as_nobody(&path, &[]);
    child.wait().unwrap();
    assert!(said.starts_with("error: "), "{said}");
    assert!(said.contains(&*path.to_string_lossy()), "{said}");
    assert!(said.contains("write"), "{said}");
    assert!(said.contains("LockKind::Flock"), "{said}");
    // A shared OFD lock needs only read access.
    let (said, mut child) = try_as_nobody(&path, &["--shared"]);
    assert!(said.starts_with("locked"), "{said}");
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// Sets `fs.protected_regular` for as long as it lives.
struct ProtectedRegular(String);

impl ProtectedRegular {
    fn set(value: &str) -> ProtectedRegular {
        const KNOB: &str = "/proc/sys/fs/protected_regular";
        let old = std::fs::read_to_string(KNOB).expect("fs.protected_regular is readable");
        std::fs::write(KNOB, value).expect("setting fs.protected_regular needs root");
        ProtectedRegular(old.trim().to_owned())
    }
}

impl Drop for ProtectedRegular {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/fs/protected_regular", &self.0);
    }
}

#[test]
fn another_users_lock_file_in_a_sticky_directory_under_protected_regular() {
    let dir = tempfile::tempdir().unwrap();
    let sticky = dir.path().join("tmp");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let path = sticky.join("app.lock");
    std::fs::write(&path, b"").unwrap();
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();

    let _knob = ProtectedRegular::set("1");
    for kind in [LockKind::Ofd, LockKind::Flock] {
        let lock = LockMgr::builder(&path).kind(kind).build();
        let guard = lock.try_acquire().unwrap_or_else(|e| panic!("{kind}: {e}"));
        drop(guard);
    }
    // A missing file is still created.
    let fresh = LockMgr::new(sticky.join("new.lock"));
    drop(fresh.try_acquire().unwrap());
    assert!(sticky.join("new.lock").is_file());
}

#[test]
fn content_that_only_starts_like_a_record_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let many_lines: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    let record = "lockmgr-holder/1 pid=1 host=vm since=1 label=x\n";
    for content in [
        "l".to_owned(),
        "lock".to_owned(),
        "lockmgr-holder".to_owned(),
        "lockmgr-holder/".to_owned(),
        // A line that starts with the tag, in somebody's notes.
        "lockmgr-holder/ records look like this\n".to_owned(),
        format!("lockmgr-holder/ records look like this\n{many_lines}"),
        // A whole record, and more after it: not a lock file's record.
        format!("{record}IMPORTANT DATA\n"),
        format!("{record}{many_lines}"),
        // A record line longer than a reader reads.
        format!("lockmgr-holder/1 pid=1 label={}\n", "x".repeat(1100)),
    ] {
        let path = dir.path().join(format!("data-{}", content.len()));
        std::fs::write(&path, &content).unwrap();
        for kind in [LockKind::Ofd, LockKind::Flock] {
            let guard = LockMgr::builder(&path)
                .kind(kind)
                .build()
                .try_acquire()
                .unwrap();
            drop(guard);
            let now = std::fs::read_to_string(&path).unwrap();
            assert!(now == content, "{kind:?} changed {content:?} into {now:?}");
        }
    }
}

/// Sets file attributes with `chattr` for as long as it lives.
struct Attributes<'a>(&'a Path);

impl<'a> Attributes<'a> {
    fn set(path: &'a Path, flags: &str) -> Attributes<'a> {
        let done = std::process::Command::new("chattr")
            .arg(format!("+{flags}"))
            .arg(path)
            .status()
            .expect("chattr (e2fsprogs) runs");
        assert!(done.success(), "chattr +{flags} needs root and ext4");
        Attributes(path)
    }
}

impl Drop for Attributes<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .args(["-i", "-a"])
            .arg(self.0)
            .status();
    }
}

/// An immutable or append-only lock file (`chattr +i`, `+a`), which may be
/// opened for reading only, even by root: `flock` locks and shared OFD
/// locks take it, as `flock(1)` does; an exclusive OFD lock says why it
/// cannot. Nothing is written. (Before: "Operation not permitted" for all.)
#[test]
fn immutable_and_append_only_lock_files_lock_like_read_only_ones() {
    let dir = tempfile::tempdir().unwrap();
    for flags in ["i", "a"] {
        let path = dir.path().join(format!("attr-{flags}.lock"));
        std::fs::write(&path, b"").unwrap();
        let _attrs = Attributes::set(&path, flags);
        let flock = LockMgr::builder(&path).kind(LockKind::Flock).build();
        drop(flock.try_acquire().unwrap());
        drop(flock.try_acquire_shared().unwrap());
        let ofd = LockMgr::new(&path);
        drop(ofd.try_acquire_shared().unwrap());
        let refused = ofd.try_acquire().unwrap_err();
        assert!(
            matches!(refused, lockmgr::LockError::ReadOnly { .. }),
            "+{flags}: {refused}"
        );
        // A semaphore's permit needs write access too, and its error says
        // so (before: it offered only `LockKind::Flock`, which a semaphore
        // has not).
        let refused = lockmgr::Semaphore::new(&path, 2).try_acquire().unwrap_err();
        assert!(
            matches!(refused, lockmgr::LockError::ReadOnly { .. })
                && refused.to_string().contains("every semaphore permit"),
            "+{flags}: {refused}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
