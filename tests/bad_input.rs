//! Paths that cannot be lock files: a typed error naming the path, no panic,
//! and nothing created, followed or changed.
#![deny(unsafe_code)]

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use lockmgr::{FileKind, LockError, LockKind, LockMgr};

/// Both entry points give the same error, and the error names the path.
async fn both_refuse(lock: &LockMgr) -> LockError {
    let sync_err = lock.try_acquire().unwrap_err();
    let async_err = lock
        .acquire(true, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(sync_err.to_string(), async_err.to_string());
    assert_eq!(async_err.lock().path(), Some(lock.path()));
    assert!(
        async_err
            .to_string()
            .contains(&*lock.path().to_string_lossy()),
        "{async_err}"
    );
    assert!(!async_err.is_contended());
    async_err
}

fn make_fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// `err` refuses a FIFO as such; `context` says which call gave it.
fn assert_fifo_refused(err: &LockError, context: &str) {
    assert!(
        matches!(
            err,
            LockError::NotAFile {
                kind: FileKind::Fifo,
                ..
            }
        ),
        "{context}: {err:?}"
    );
}

#[tokio::test]
async fn directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = both_refuse(&LockMgr::new(dir.path())).await;
    assert!(
        matches!(
            err,
            LockError::NotAFile {
                kind: FileKind::Directory,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(dir.path().is_dir());
}

#[tokio::test]
async fn missing_parent_without_create_dirs_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/l.lock");
    let err = both_refuse(&LockMgr::new(&path)).await;
    assert!(matches!(err, LockError::MissingParent { .. }), "{err:?}");
    assert!(err.to_string().contains("create_dirs"), "{err}");
    assert!(!dir.path().join("a").exists());
}

#[tokio::test]
async fn missing_parent_with_create_dirs_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/l.lock");
    let lock = LockMgr::builder(&path).create_dirs(true).build();
    let g = lock.acquire(true, Duration::from_secs(5)).await.unwrap();
    assert!(path.is_file());
    drop(g);
}

#[tokio::test]
async fn symlink_is_refused_and_its_target_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    std::fs::write(&target, "do not touch\n").unwrap();
    let before = std::fs::metadata(&target).unwrap();
    let link = dir.path().join("l.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let err = both_refuse(&LockMgr::new(&link)).await;
    assert!(
        matches!(
            err,
            LockError::NotAFile {
                kind: FileKind::Symlink,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "do not touch\n");
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(before.mtime_nsec(), after.mtime_nsec());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[tokio::test]
async fn dangling_symlink_is_refused_and_nothing_created() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("not-there");
    let link = dir.path().join("l.lock");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = both_refuse(&LockMgr::new(&link)).await;
    assert!(
        matches!(
            err,
            LockError::NotAFile {
                kind: FileKind::Symlink,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!target.exists(), "followed the link and created its target");
}

#[tokio::test]
async fn fifo_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("l.lock");
    make_fifo(&fifo);
    let err = both_refuse(&LockMgr::new(&fifo)).await;
    assert_fifo_refused(&err, "try_acquire and acquire");
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

/// The kind of file is checked wherever the acquire goes: either family,
/// either mode, with or without a holder record or removal on release.
#[tokio::test]
async fn fifo_is_refused_in_every_family_mode_and_option() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("l.lock");
    make_fifo(&fifo);
    let wait = Duration::from_secs(5);
    for kind in [LockKind::Ofd, LockKind::Flock] {
        for record in [true, false] {
            for remove in [false, true] {
                let lock = LockMgr::builder(&fifo)
                    .kind(kind)
                    .record_holder(record)
                    .remove_on_release(remove)
                    .build();
                let errors = [
                    lock.try_acquire().unwrap_err(),
                    lock.try_acquire_shared().unwrap_err(),
                    lock.acquire(true, wait).await.unwrap_err(),
                    lock.acquire_shared(true, wait).await.unwrap_err(),
                ];
                for err in errors {
                    assert_fifo_refused(&err, &format!("{kind:?} record {record} remove {remove}"));
                }
            }
        }
    }
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
}

/// A lock just held, whose own record is at the file's head, skips the
/// stat of the file on the next acquire (issue 14): a FIFO put in the
/// file's place meanwhile must still be refused, by either entry point.
#[tokio::test]
async fn fifo_put_in_place_of_a_lock_file_just_held_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    let lock = LockMgr::new(&path);
    for _ in 0..2 {
        drop(lock.try_acquire().unwrap());
        drop(lock.acquire(true, Duration::from_secs(5)).await.unwrap());
    }
    std::fs::remove_file(&path).unwrap();
    make_fifo(&path);
    let err = both_refuse(&lock).await;
    assert_fifo_refused(&err, "try_acquire and acquire");
    assert!(std::fs::metadata(&path).unwrap().file_type().is_fifo());
}

#[tokio::test]
async fn character_device_is_refused() {
    let err = both_refuse(&LockMgr::new("/dev/null")).await;
    assert!(
        matches!(
            err,
            LockError::NotAFile {
                kind: FileKind::CharDevice,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A path ending in `/` can only name a directory: with nothing there, or a
/// file, it is refused as such, and nothing is created. Before: "it is a
/// directory" for a directory that does not exist, `ENOTDIR` for a file.
#[tokio::test]
async fn a_path_ending_in_a_slash_is_refused_as_naming_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "data").unwrap();
    for path in [
        format!("{}/missing/", dir.path().display()),
        format!("{}/", file.display()),
    ] {
        let err = both_refuse(&LockMgr::new(&path)).await;
        assert!(matches!(err, LockError::Invalid { .. }), "{err:?}");
        assert!(err.to_string().contains("ends in '/'"), "{err}");
    }
    assert!(!dir.path().join("missing").exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
    // A directory that is there is still called one.
    let err = both_refuse(&LockMgr::new(format!("{}/", dir.path().display()))).await;
    assert!(
        matches!(
            err,
            LockError::NotAFile {
                kind: FileKind::Directory,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn empty_path_is_refused() {
    let err = both_refuse(&LockMgr::new("")).await;
    assert!(matches!(err, LockError::Invalid { .. }), "{err:?}");
    // The message shows the empty name (before: "invalid lock : the path
    // is empty").
    assert_eq!(err.to_string(), r#"invalid lock "": the path is empty"#);
}

#[tokio::test]
async fn existing_content_is_never_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.lock");
    std::fs::write(&path, "someone's data\n").unwrap();
    drop(
        LockMgr::new(&path)
            .acquire(false, Duration::ZERO)
            .await
            .unwrap(),
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "someone's data\n");
}

#[tokio::test]
async fn unwritable_location_gives_an_io_error_naming_open() {
    // sysfs refuses to create files, even for root (who passes every
    // permission check elsewhere).
    let path = Path::new("/sys/lockmgr-test.lock");
    let err = both_refuse(&LockMgr::new(path)).await;
    assert!(
        matches!(
            err,
            LockError::Io {
                op: lockmgr::Operation::Open,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("cannot open lock file /sys/lockmgr-test.lock: "),
        "{err}"
    );
}

#[tokio::test]
async fn enoent_from_an_existing_directory_is_not_called_a_missing_parent() {
    // /proc/self exists, but refuses new files with ENOENT.
    let err = both_refuse(&LockMgr::new("/proc/self/lockmgr-test.lock")).await;
    assert!(
        matches!(
            err,
            LockError::Io {
                op: lockmgr::Operation::Open,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A file name that is not UTF-8 (any byte string is a Linux file name) is
/// shown with its bytes escaped, so two such names are told apart and a
/// person can see which file is meant. (Before: every byte that was not
/// UTF-8 became U+FFFD, so `bad\xff\xfe.lock` and `bad\xfe\xff.lock`
/// read the same.)
#[test]
fn names_that_are_not_utf8_are_shown_escaped() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let one = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe.lock"));
    let two = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"bad\xfe\xff.lock"));
    let (shown_one, shown_two) = (
        lockmgr::LockId::file(&one).to_string(),
        lockmgr::LockId::file(&two).to_string(),
    );
    assert_ne!(shown_one, shown_two);
    assert!(shown_one.contains(r"bad\xFF\xFE.lock"), "{shown_one}");
    assert!(!shown_one.contains('\u{fffd}'), "{shown_one}");
    let held = LockMgr::new(&one).try_acquire().unwrap();
    let err = LockMgr::new(&one).try_acquire().unwrap_err();
    assert!(err.to_string().contains(r"bad\xFF\xFE.lock"), "{err}");
    drop(held);
}

/// Asking about a FIFO (`status`, `holder`, `lockmgr status`) does not
/// open it: an open for reading lets a program blocked opening its other
/// end through, to write into a pipe nobody reads (its line is lost). The
/// file's open events tell: the old code opened it, then refused it.
#[test]
fn a_query_about_a_fifo_does_not_open_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("q");
    make_fifo(&fifo);
    let mut opens = inotify::Inotify::init().unwrap();
    opens
        .watches()
        .add(&fifo, inotify::WatchMask::OPEN)
        .unwrap();
    let lock = LockMgr::new(&fifo);
    assert_fifo_refused(&lock.status().unwrap_err(), "status");
    assert_fifo_refused(&lock.holder().unwrap_err(), "holder");
    let mut buffer = [0u8; 1024];
    let seen = match opens.read_events(&mut buffer) {
        Ok(events) => events.count(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(seen, 0, "the FIFO was opened");
}
