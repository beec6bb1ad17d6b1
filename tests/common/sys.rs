//! The tests' only `unsafe` code: making processes the way the crate's
//! users do (`fork`, the bare `clone(2)`), ending them without the
//! parent's destructors, and one system call that nix does not wrap. Every
//! test crate denies `unsafe_code`; this module alone is allowed it
//! (`tests/architecture.rs` checks both).
#![allow(unsafe_code)]

use nix::libc;
use nix::unistd::Pid;

/// Forks: the child's id in the parent, `None` in the child, which must
/// end with [`exit_child`] (its output flushed first).
///
/// The caller keeps to what makes a `fork` sound: the child takes no lock
/// that another thread of this process could hold at the fork (the
/// allocator's, which the C library resets, excepted), and a comment at
/// the call says why.
pub fn fork() -> Option<Pid> {
    // SAFETY: the child runs only what the caller vouches for (above), and
    // ends with `_exit`, never returning into the parent's code.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => None,
        nix::unistd::ForkResult::Parent { child } => Some(child),
    }
}

/// Makes a process with the bare `clone(2)` system call, as `fork` does but
/// without the C library's `fork` handlers: the child's id in the parent,
/// `None` in the child, which must end with [`exit_child`]. Call it only
/// while this process has one thread that could hold a lock.
pub fn raw_clone() -> Option<Pid> {
    // SAFETY: without CLONE_VM the child has a copy of this process's
    // memory and stack (a null stack means the current one), as after
    // `fork`. The caller has no other thread that could hold a lock at the
    // clone (above), and the child ends with `_exit`.
    let ret = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) };
    assert!(ret >= 0, "clone: {}", std::io::Error::last_os_error());
    (ret != 0).then(|| Pid::from_raw(ret as libc::pid_t))
}

/// Ends a child at once, without the parent's destructors.
pub fn exit_child(status: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and never returns.
    unsafe { libc::_exit(status) }
}

/// Whether descriptors `a` and `b` of process `pid` name the same open
/// file description (`kcmp(2)`, `KCMP_FILE`).
pub fn same_description(pid: i32, a: i32, b: i32) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp compares two kernel objects by their identifiers; no
    // memory of this process is passed to it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            libc::c_long::from(pid),
            libc::c_long::from(pid),
            KCMP_FILE,
            libc::c_long::from(a),
            libc::c_long::from(b),
        )
    };
    r == 0
}
