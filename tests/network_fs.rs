//! On a file system where inotify cannot see other machines (detected by
//! `statfs` magic), waiting polls instead of watching, and still wins.
//!
//! The test mounts a FUSE file system (`bindfs`, which `.ci/run` installs)
//! over a temporary directory: FUSE is in the same class as NFS and CIFS,
//! since a network FUSE mount (sshfs, s3fs) gets no events for remote
//! changes. Needs root (or FUSE rights) and /dev/fuse.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lockmgr::LockMgr;

struct Mount(PathBuf);

impl Mount {
    fn bindfs(src: &Path, dst: &Path) -> Mount {
        let status = Command::new("bindfs")
            .arg(src)
            .arg(dst)
            .status()
            .expect("bindfs is needed for this test (apt-get install bindfs)");
        assert!(status.success(), "bindfs failed: {status:?}");
        Mount(dst.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn waiting_on_a_network_class_file_system_polls() {
    let dir = tempfile::tempdir().unwrap();
    let (src, mnt) = (dir.path().join("src"), dir.path().join("mnt"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = Mount::bindfs(&src, &mnt);
    let path = mnt.join("l.lock");

    let lock = LockMgr::builder(&path).max_attempts(1).build();
    let held = lock.try_acquire().unwrap();
    let waiter = tokio::spawn({
        let lock = lock.clone();
        async move { lock.acquire(true, Duration::from_secs(60)).await }
    });
    // On a current-thread runtime one yield runs the waiter to its sleep.
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    assert_eq!(common::watches_on(&path), 0, "watched instead of polling");
    drop(held);
    let g = common::won(waiter, "the polling waiter missed the release").await;
    drop(g);
}
