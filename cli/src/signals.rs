//! The signals `lockmgr run` handles, read from a `signalfd` so that each
//! comes with who sent it.
//!
//! A Ctrl-C on a terminal goes from the kernel to the whole foreground
//! process group: to `lockmgr` and to its command alike. Forwarding it as
//! well would make the command see it twice. A `kill` aimed at `lockmgr`
//! alone reaches only `lockmgr`, and must be passed on. The `signalfd`
//! tells the two apart (`ssi_code` is `SI_KERNEL` for the terminal's).

use std::sync::OnceLock;

use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{raise, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::unix::AsyncFd;

/// The signals `lockmgr` passes on to its command, or dies of while it
/// waits for the lock. SIGUSR1 and SIGUSR2 are among them: a service
/// manager or a log rotation that knows `lockmgr`'s pid sends its "reopen
/// your logs" there, and their default action would end `lockmgr` and
/// leave the command running unsupervised.
const HANDLED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// `si_code` of a signal the kernel sent itself (a terminal's Ctrl-C,
/// Ctrl-\ or hang-up).
const SI_KERNEL: i32 = 0x80;

/// The handled signals this process was not started with ignored. One
/// that was (`nohup`, `trap '' HUP`, a shell's background job) stays
/// ignored, as it does for `flock(1)`: it neither ends the wait nor is
/// passed on (the command inherits it ignored).
fn handled() -> SigSet {
    static HANDLED_HERE: OnceLock<SigSet> = OnceLock::new();
    *HANDLED_HERE.get_or_init(|| {
        let mut set = SigSet::empty();
        for sig in HANDLED {
            if !crate::sys::is_ignored(sig) {
                set.add(sig);
            }
        }
        set
    })
}

/// Blocks the handled signals in the calling thread, and so in every thread
/// started after it (call it first thing in `main`), so that they queue for
/// [`Signals`] instead of acting. The command starts with an empty mask:
/// the standard library resets it in the child.
///
/// Also gives SIGCHLD its default action if it was inherited ignored (the
/// kernel would reap the command and its exit status be lost); the command
/// gets it ignored again (see [`sigchld_was_ignored`]).
pub(crate) fn block() -> nix::Result<()> {
    SIGCHLD_IGNORED.get_or_init(crate::sys::default_sigchld);
    handled().thread_block()
}

static SIGCHLD_IGNORED: OnceLock<bool> = OnceLock::new();

/// Whether `lockmgr` was started with SIGCHLD ignored.
pub(crate) fn sigchld_was_ignored() -> bool {
    SIGCHLD_IGNORED.get().copied().unwrap_or(false)
}

/// A signal that came in, and whether it came from the terminal (and so
/// reached the command too).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    pub(crate) signal: Signal,
    pub(crate) from_terminal: bool,
    /// The process that sent it (0 for the kernel's own).
    pub(crate) sender: u32,
}

/// The queue of handled signals.
pub(crate) struct Signals(AsyncFd<SignalFd>);

impl Signals {
    /// Must be made inside the runtime, after [`block`].
    pub(crate) fn new() -> std::io::Result<Signals> {
        let fd = SignalFd::with_flags(&handled(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals(crate::sys::async_signalfd(fd)?))
    }

    /// A signal already queued, without waiting for one.
    pub(crate) fn queued(&self) -> Option<Received> {
        loop {
            let info = self.0.get_ref().read_signal().ok()??;
            if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                return Some(Received {
                    signal,
                    from_terminal: info.ssi_code == SI_KERNEL,
                    sender: info.ssi_pid,
                });
            }
        }
    }

    /// The next signal.
    pub(crate) async fn recv(&self) -> std::io::Result<Received> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.get_inner().read_signal() {
                Ok(Some(info)) => {
                    let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                        continue;
                    };
                    return Ok(Received {
                        signal,
                        from_terminal: info.ssi_code == SI_KERNEL,
                        sender: info.ssi_pid,
                    });
                }
                Ok(None) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Ends this process by signal number `signo`, as the command it ran was
/// ended, so that a shell (or a loop in a script) reacts to `lockmgr` as to
/// the plain command: a Ctrl-C stops the loop. Falls back to the shell's
/// convention, status 128 + N, when the signal does not end the process
/// (it is ignored here, as in a background job).
pub(crate) fn die_by(signo: i32) -> u8 {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // A signal that dumps core would leave a core of lockmgr's, not of the
    // command's: none.
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    match Signal::try_from(signo) {
        Ok(signal) => {
            // Rust's runtime ignores SIGPIPE and handles these two itself
            // (to report a stack overflow): the raised signal would be
            // dropped or swallowed. A disposition inherited (SIGINT
            // ignored in a background job) is kept.
            if matches!(signal, Signal::SIGSEGV | Signal::SIGBUS | Signal::SIGPIPE) {
                crate::sys::default_action(signal);
            }
            if raise(signal).is_ok() {
                let mut one = SigSet::empty();
                one.add(signal);
                // Pending now; delivered (with its default action) once
                // unblocked.
                let _ = one.thread_unblock();
            }
        }
        // A realtime signal: never blocked or handled here, so it acts at
        // once (by default, it ends the process).
        Err(_) => {
            crate::sys::raise_number(signo);
        }
    }
    (128 + signo).clamp(0, 255) as u8
}
