//! The command-line tool's uses of `unsafe`, each a call whose promise the
//! compiler cannot check: preparing the child between `fork` and `exec`
//! (its signal mask and dispositions; its death with `lockmgr`),
//! registering the signal descriptor with the runtime, reading and
//! resetting signal dispositions (one read before `main`), dying of a
//! signal, and asking a terminal its width.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

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
/// With `ignore_sigchld`, the command gets SIGCHLD ignored, as `lockmgr`
/// was started with it (see [`default_sigchld`]); SIGPIPE likewise (see
/// [`sigpipe_was_ignored`]).
pub(crate) fn prepare_child(
    cmd: &mut tokio::process::Command,
    end_with_parent: bool,
    ignore_sigchld: bool,
) {
    let parent = Pid::this();
    let ignore_sigpipe = sigpipe_was_ignored();
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe calls are allowed: it makes at most five
    // system calls (rt_sigprocmask, rt_sigaction twice, prctl, getppid) and
    // allocates nothing (its error is a bare errno). SIG_IGN installs no
    // handler.
    unsafe {
        cmd.pre_exec(move || {
            SigSet::empty().thread_set_mask()?;
            if ignore_sigchld {
                signal(Signal::SIGCHLD, SigHandler::SigIgn)?;
            }
            if ignore_sigpipe {
                signal(Signal::SIGPIPE, SigHandler::SigIgn)?;
            }
            if end_with_parent {
                set_pdeathsig(Signal::SIGKILL)?;
                // If lockmgr died before the request took hold, nothing
                // would ever send the signal: do not run the command at
                // all ("no such process": its parent is gone).
                if getppid() != parent {
                    return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
                }
            }
            Ok(())
        });
    }
}

/// Whether `lockmgr` was started with SIGPIPE ignored (systemd starts
/// services so), read before Rust's runtime ignores it for its own sake
/// (see [`note_sigpipe`]).
static SIGPIPE_IGNORED_AT_START: AtomicBool = AtomicBool::new(false);

/// Notes whether SIGPIPE came ignored. Rust's runtime sets it ignored in
/// `main`'s preamble, after the program's constructors, of which this is
/// one: the disposition it reads is still the inherited one.
extern "C" fn note_sigpipe() {
    SIGPIPE_IGNORED_AT_START.store(is_ignored(Signal::SIGPIPE), Ordering::Relaxed);
}

// SAFETY (of the attribute): the entry is a plain `extern "C" fn()` with
// no arguments read, which the C library calls once, before `main`, on
// the one thread there is; it only reads a disposition and stores a flag.
#[used]
#[link_section = ".init_array"]
static NOTE_SIGPIPE: extern "C" fn() = note_sigpipe;

/// Whether `lockmgr` was started with SIGPIPE ignored: its command gets it
/// ignored too, as under `flock(1)` (Rust's runtime would give it the
/// default).
pub(crate) fn sigpipe_was_ignored() -> bool {
    SIGPIPE_IGNORED_AT_START.load(Ordering::Relaxed)
}

/// Whether `sig` is ignored (`SIG_IGN`) in this process: inherited from
/// the parent (`nohup`, `trap '' HUP`, a script's background job).
pub(crate) fn is_ignored(sig: Signal) -> bool {
    let mut old = std::mem::MaybeUninit::<nix::libc::sigaction>::zeroed();
    // SAFETY: with a null new action, `sigaction` only reads the current
    // one into `old`, a valid, writable `struct sigaction`; it changes
    // nothing.
    let read = unsafe { nix::libc::sigaction(sig as i32, std::ptr::null(), old.as_mut_ptr()) };
    // SAFETY: zeroed is a valid `sigaction` (plain integers and a mask),
    // and on success the kernel filled it in.
    read == 0 && unsafe { old.assume_init() }.sa_sigaction == nix::libc::SIG_IGN
}

/// Gives SIGCHLD its default action if it was inherited ignored, and says
/// whether it was: while SIGCHLD is ignored, the kernel reaps children
/// itself and their exit status is lost to `lockmgr`.
pub(crate) fn default_sigchld() -> bool {
    let ignored = is_ignored(Signal::SIGCHLD);
    if ignored {
        default_action(Signal::SIGCHLD);
    }
    ignored
}

/// Gives `sig` its default action back, in place of a disposition Rust's
/// runtime set (it ignores SIGPIPE and handles SIGSEGV and SIGBUS to
/// report stack overflows) just before `lockmgr` ends by that signal, or
/// in place of an inherited ignored SIGCHLD at start.
pub(crate) fn default_action(sig: Signal) {
    // SAFETY: SIG_DFL installs no handler of ours, so no code of this
    // process runs in a signal's context; and nothing relies on the old
    // disposition any more: the process ends by this signal now, or (for
    // SIGCHLD, at start) no child exists yet.
    let _ = unsafe { signal(sig, SigHandler::SigDfl) };
}

/// Sends signal number `signo` to this process: for the ones that have
/// no name in `nix` (realtime signals).
pub(crate) fn raise_number(signo: i32) -> bool {
    // SAFETY: `raise` takes a plain number and touches no memory of ours;
    // an invalid number is an error return.
    unsafe { nix::libc::raise(signo) == 0 }
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

/// The width, in columns, of the terminal on stderr, if stderr is one that
/// knows it (a terminal emulator does; a bare serial line may say 0).
pub(crate) fn stderr_columns() -> Option<usize> {
    use nix::libc;
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct it is given,
    // which outlives the call; on a descriptor that is no terminal (or not
    // open) it fails without writing.
    let r = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) };
    (r == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}
