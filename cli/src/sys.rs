//! The command-line tool's uses of `unsafe`, each a call whose promise the
//! compiler cannot check: preparing the child between `fork` and `exec`
//! (its signal mask; its death with `lockmgr`), registering the signal
//! descriptor with the runtime, and dying of SIGPIPE.

use std::io;

use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{raise, signal, SigHandler, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::{getppid, Pid};
use tokio::io::unix::AsyncFd;

/// Registers the signal descriptor with the current runtime's reactor.
pub(crate) fn async_signalfd(fd: SignalFd) -> io::Result<AsyncFd<SignalFd>> {
    // SAFETY: `SignalFd` owns its descriptor (an `OwnedFd`), which stays
    // open, and names the same signalfd, until the `AsyncFd` that now owns
    // the `SignalFd` is dropped; its `as_raw_fd` always returns it.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Prepares the child for `exec`: it starts with no signal blocked (this
/// process blocks the ones it reads from its `signalfd`, and a child
/// inherits the mask), and, with `end_with_parent`, the kernel sends it
/// SIGKILL if `lockmgr` (the thread that spawns it) dies first: for a lock
/// that lives in `lockmgr`'s own session (PostgreSQL), whose death frees the
/// lock at once.
pub(crate) fn prepare_child(cmd: &mut tokio::process::Command, end_with_parent: bool) {
    let parent = Pid::this();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes three system calls
    // (rt_sigprocmask, prctl, getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            SigSet::empty().thread_set_mask()?;
            if end_with_parent {
                set_pdeathsig(Signal::SIGKILL)?;
                // If lockmgr died before the request took hold, nothing
                // would ever send the signal: do not run the command at all.
                if getppid() != parent {
                    return Err(io::Error::other("lockmgr died before the command started"));
                }
            }
            Ok(())
        });
    }
}

/// Gives `sig` its default action back, in place of a disposition Rust's
/// runtime set (it ignores SIGPIPE and handles SIGSEGV and SIGBUS to
/// report stack overflows), just before `lockmgr` ends by that signal.
pub(crate) fn default_action(sig: Signal) {
    // SAFETY: SIG_DFL installs no handler of ours, so no code of this
    // process runs in a signal's context; and nothing relies on the old
    // disposition any more: the process ends by this signal now.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
}

/// Ends `lockmgr` by SIGPIPE, as a write to a pipe nobody reads ends a
/// program that does not ignore the signal (Rust's runtime ignores it, so
/// that such a write fails instead: this is where `lockmgr` gives up).
pub(crate) fn die_of_sigpipe() -> ! {
    default_action(Signal::SIGPIPE);
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    let _ = pipe.thread_unblock();
    let _ = raise(Signal::SIGPIPE);
    std::process::exit(128 + Signal::SIGPIPE as i32)
}
