//! A relative path names one file: the one it named when the `LockMgr`,
//! `Semaphore` or `Journal` was made, whatever the process's current
//! directory is later (a daemon's `chdir("/")`). A binary of its own, its
//! tests one at a time: the current directory is the whole process's.
#![deny(unsafe_code)]

use lockmgr::journal::Journal;
use lockmgr::{LockMgr, Semaphore};

/// The current directory is the process's: one test at a time moves it.
static CWD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Made in directory A, used from directory B: the files in A are the
/// ones locked, written and named, and nothing appears in B. (Before: each
/// call looked the path up again, so the lock was taken on B's file, and
/// two tasks using one `LockMgr` before and after the move each held "the"
/// lock at once.)
#[tokio::test(flavor = "current_thread")]
async fn a_relative_path_keeps_naming_the_file_it_named_when_made() {
    let _cwd = CWD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("A"), dir.path().join("B"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();

    std::env::set_current_dir(&a).unwrap();
    let lock = LockMgr::new("x.lock");
    let before = lock.try_acquire().unwrap();
    let sem = Semaphore::new("x.sem", 1);
    let journal = Journal::builder("x.journal").open().await.unwrap();

    std::env::set_current_dir(&b).unwrap();
    let err = lock.try_acquire().unwrap_err();
    assert!(err.is_contended(), "{err}");
    assert_eq!(
        err.lock().to_string(),
        a.join("x.lock").display().to_string()
    );
    drop(before);
    let guard = lock.try_acquire().unwrap();
    assert_eq!(guard.path(), a.join("x.lock"));
    assert!(LockMgr::new(a.join("x.lock"))
        .try_acquire()
        .unwrap_err()
        .is_contended());
    let permit = sem.try_acquire().unwrap();
    assert_eq!(permit.path(), a.join("x.sem"));
    assert!(Semaphore::new(a.join("x.sem"), 1)
        .try_acquire()
        .unwrap_err()
        .is_contended());
    journal.append(b"one").await.unwrap();
    assert_eq!(std::fs::read(a.join("x.journal")).unwrap(), b"one\n");

    let left_in_b: Vec<_> = std::fs::read_dir(&b)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left_in_b.is_empty(), "{left_in_b:?}");
}

/// A current directory whose absolute path is longer than the kernel takes
/// (`PATH_MAX`, 4,096 bytes) still has its relative lock files locked, as
/// `flock(1)` locks them there: such a path is kept relative. (Before, once
/// relative paths were made absolute: "File name too long".)
#[tokio::test(flavor = "current_thread")]
async fn a_relative_path_under_a_very_deep_directory_still_works() {
    let _cwd = CWD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let step = "d".repeat(200);
    for _ in 0..25 {
        std::fs::create_dir(&step).unwrap();
        std::env::set_current_dir(&step).unwrap();
    }
    let guard = LockMgr::new("y.lock").try_acquire().unwrap();
    assert!(LockMgr::new("y.lock")
        .try_acquire()
        .unwrap_err()
        .is_contended());
    drop(guard);
    drop(Semaphore::new("y.sem", 2).try_acquire().unwrap());
    let journal = Journal::builder("y.journal").open().await.unwrap();
    journal.append(b"deep").await.unwrap();
    assert_eq!(std::fs::read("y.journal").unwrap(), b"deep\n");
    std::env::set_current_dir(dir.path()).unwrap();
}

/// A relative path is made absolute as written, `.` and all: `new/.` and
/// `file/.` can only name directories, and are refused as the same paths
/// written absolute are, creating nothing. Before, the `.` was dropped:
/// `new/.` created and locked a regular file `new`, and `file/.` locked
/// `file`.
#[tokio::test(flavor = "current_thread")]
async fn a_relative_path_ending_in_a_dot_is_no_lock_file() {
    let _cwd = CWD.lock().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "data").unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    for path in ["new/.", "file/."] {
        let err = LockMgr::new(path).try_acquire().unwrap_err();
        assert!(!err.is_contended(), "{path}: {err}");
        let absolute = LockMgr::new(dir.path().join(path))
            .try_acquire()
            .unwrap_err();
        assert_eq!(
            std::mem::discriminant(&err),
            std::mem::discriminant(&absolute),
            "{err:?} vs {absolute:?}"
        );
    }
    assert!(!dir.path().join("new").exists());
    // A leading `./` is dropped (it says nothing once the directory is
    // written out); the file is the same.
    let lock = LockMgr::new(".//./x.lock");
    assert_eq!(lock.path(), dir.path().join("x.lock"));
    // From `/`, one slash (compared as bytes: `Path` equality would not
    // tell `//tmp` from `/tmp`).
    std::env::set_current_dir("/").unwrap();
    let lock = LockMgr::new("tmp/x.lock");
    assert_eq!(lock.path().as_os_str(), "/tmp/x.lock");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("file")).unwrap(),
        "data"
    );
}
