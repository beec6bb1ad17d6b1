//! `lockmgr run`: take the lock (showing the wait), run the command under
//! it, pass its exit status on.
//!
//! The command never runs without the lock. A file lock is inherited by the
//! command (a copy of the lock's descriptor, as `flock(1)` gives its
//! command): if `lockmgr` dies, by SIGKILL or the OOM killer, the command
//! and whatever it started still hold the lock until they end. When the
//! command exits, `lockmgr` unlocks explicitly, which frees the lock even
//! if a process the command left behind still has the copy; when a signal
//! ends it, the lock is left with the copies (see [`leave_or_release`]). A
//! PostgreSQL lock lives in `lockmgr`'s own session and dies with it, so
//! there the kernel kills the command if `lockmgr` dies.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lockmgr::{LockError, LockGuard, LockMgr, LockMode, Permit, Semaphore};
use nix::sys::signal::Signal;

use crate::progress::Progress;
use crate::signals::{die_by, Signals};
use crate::{fail, RunArgs};

/// The holder label: `--label`, or the command's name.
pub(crate) fn label(args: &RunArgs) -> String {
    args.label.clone().unwrap_or_else(|| {
        Path::new(&args.command[0])
            .file_name()
            .unwrap_or(args.command[0].as_os_str())
            .to_string_lossy()
            .into_owned()
    })
}

pub(crate) fn mode(args: &RunArgs) -> LockMode {
    if args.shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

/// The exit status for a lock that was not obtained.
pub(crate) fn not_obtained(e: LockError, args: &RunArgs) -> ExitCode {
    // `--quiet` (a cron job's `--nonblock`): the exit status says that the
    // lock is held; only errors are said.
    if args.quiet && e.is_contended() {
        return ExitCode::from(args.conflict_exit_code);
    }
    match e {
        // A semaphore has no one holder: the library's "held by another
        // owner" would mislead.
        LockError::TimedOut {
            lock,
            attempts,
            waited,
            ..
        } if args.permits.is_some() => {
            let s = if attempts == 1 { "" } else { "s" };
            say!(
                "lockmgr: timed out waiting for a permit of {lock} after {attempts} attempt{s} \
                 ({:.3}s); every permit taken",
                waited.as_secs_f64()
            );
            ExitCode::from(args.conflict_exit_code)
        }
        LockError::WouldBlock { lock, .. } if args.permits.is_some() => {
            say!("lockmgr: every permit of {lock} is taken");
            ExitCode::from(args.conflict_exit_code)
        }
        e if e.is_contended() => {
            say!("lockmgr: {e}");
            // A record of a process that is gone does not make the lock
            // abandoned (a command killed by a signal leaves its lock to
            // what it started): name who holds it, as `status` does.
            let stale = matches!(
                &e,
                LockError::WouldBlock { holder: Some(h), .. }
                    | LockError::TimedOut { holder: Some(h), .. } if h.stale
            );
            if stale && e.lock().path().is_some() {
                let kind = args.kind.into();
                if let Ok(holders) = LockMgr::builder(&args.lockfile)
                    .kind(kind)
                    .build()
                    .holders()
                {
                    for line in crate::status::host_lines(&holders, Some(kind)) {
                        say!("{line}");
                    }
                }
            }
            ExitCode::from(args.conflict_exit_code)
        }
        // The library's hint names its builder, which a user of the
        // command has not got.
        LockError::MissingParent { lock } => fail(&format!(
            "cannot create lock file {lock}: its directory does not exist"
        )),
        // Its hint for a file that may only be read names the builder's
        // `LockKind::Flock`; the user of the command has `--kind flock`, and
        // for a permit no kind helps.
        LockError::ReadOnly { lock, source } if args.permits.is_none() => fail(&format!(
            "cannot lock {lock} exclusively with an OFD lock: the file may only be read here \
             ({source}), and an OFD write lock needs it open for writing (--kind flock needs \
             only read access, as flock(1) does)"
        )),
        LockError::ReadOnly { lock, source } => fail(&format!(
            "cannot take a permit of {lock}: the file may only be read here ({source}), and a \
             semaphore's locks need it open for writing"
        )),
        e => fail(&e.to_string()),
    }
}

/// What becomes of the command: how `lockmgr` should end once the lock is
/// released.
pub(crate) enum Outcome {
    /// It exited with this status, or could not be started (126, 127) or
    /// supervised (2).
    Code(ExitCode),
    /// A signal (its number) ended it: `lockmgr` ends the same way.
    Signaled(i32),
}

impl Outcome {
    pub(crate) fn finish(self) -> ExitCode {
        match self {
            Outcome::Code(code) => code,
            Outcome::Signaled(signal) => ExitCode::from(die_by(signal)),
        }
    }
}

/// How the command is tied to the lock.
pub(crate) enum Tie<'a> {
    /// It inherits this descriptor of the file lock (or permit) at this
    /// path.
    Inherit(BorrowedFd<'a>, &'a Path),
    /// It is killed if `lockmgr` dies (a lock held by `lockmgr`'s session).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    EndWithParent,
}

pub(crate) async fn run(args: RunArgs, signals: Signals) -> ExitCode {
    let (per_attempt, attempts) = budget(args.wait, args.attempts);
    if let Some(permits) = args.permits {
        return run_with_permit(args, permits, (per_attempt, attempts), signals).await;
    }
    let lock = LockMgr::builder(&args.lockfile)
        .kind(args.kind.into())
        .max_attempts(attempts)
        .label(label(&args))
        .record_holder(!args.no_record)
        // The command gets its token in LOCKMGR_FENCING_TOKEN (none
        // without a record, which keeps it).
        .fencing_tokens(true)
        .build();
    let lock_mode = mode(&args);
    let acquire = |wait: bool, timeout: Duration| {
        let lock = lock.clone();
        async move {
            match lock_mode {
                LockMode::Shared => lock.acquire_shared(wait, timeout).await,
                LockMode::Exclusive => lock.acquire(wait, timeout).await,
            }
        }
    };
    let guard: LockGuard = match take(acquire, &args, (per_attempt, attempts), &signals).await {
        Ok(guard) => guard,
        Err(e) => return not_obtained(e, &args),
    };
    let token = guard
        .fencing_token()
        .map(|t| ("LOCKMGR_FENCING_TOKEN", t.to_string()));
    let outcome = supervise(
        &args.command,
        &crate::output::shown_path(guard.path()),
        token.as_slice(),
        Tie::Inherit(guard.as_fd(), &args.lockfile),
        (std::future::pending(), Duration::MAX),
        &signals,
    )
    .await;
    leave_or_release(guard, &outcome, |guard| guard.release());
    outcome.finish()
}

/// `run --permits N`: the command runs holding one of N permits.
async fn run_with_permit(
    args: RunArgs,
    permits: u32,
    (per_attempt, attempts): (Duration, u32),
    signals: Signals,
) -> ExitCode {
    let sem = Semaphore::builder(&args.lockfile, permits)
        .max_attempts(attempts)
        .build();
    let acquire = |wait: bool, timeout: Duration| {
        let sem = sem.clone();
        async move { sem.acquire(wait, timeout).await }
    };
    let permit: Permit = match take(acquire, &args, (per_attempt, attempts), &signals).await {
        Ok(permit) => permit,
        Err(e) => return not_obtained(e, &args),
    };
    let outcome = supervise(
        &args.command,
        &crate::output::shown_path(permit.path()),
        &[("LOCKMGR_PERMIT_SLOT", permit.slot().to_string())],
        Tie::Inherit(permit.as_fd(), &args.lockfile),
        (std::future::pending(), Duration::MAX),
        &signals,
    )
    .await;
    leave_or_release(permit, &outcome, |permit| permit.release());
    outcome.finish()
}

/// Ends `lockmgr`'s hold on the lock once the command is gone. A command
/// that exited is done: the lock is unlocked explicitly, so that a process
/// it left behind in the background does not keep it. One that a signal
/// ended may have been stopped in the middle of its work, with processes it
/// started still at it (a shell's current step) and holding the copy of the
/// descriptor they inherited: the lock is left to them, as `flock(1)`
/// leaves it, and is free when the last of them ends (`lockmgr` itself ends
/// now, and its exit only closes its own copy).
fn leave_or_release<G>(
    held: G,
    outcome: &Outcome,
    release: impl FnOnce(G) -> Result<(), LockError>,
) {
    if matches!(outcome, Outcome::Signaled(_)) {
        // No unlock: a close of this copy leaves the others' lock alone.
        std::mem::forget(held);
    } else if let Err(e) = release(held) {
        say!("lockmgr: {e}");
    }
}

/// The library's budget for `--wait` and `--attempts`: the attempt's length
/// and the number of attempts. No `--wait`: as long as it takes. Attempts
/// are made at least 1 us long (fewer of them, where the wait is too short
/// for so many; the library makes no more tries for more attempts): what
/// the division drops, under 1 ns per attempt, is then under a thousandth
/// of the wait (with 1 ns attempts, `--wait 1.9` lost 0.9 s).
pub(crate) fn budget(wait: Option<Duration>, attempts: u32) -> (Duration, u32) {
    let attempts = attempts.max(1);
    let Some(total) = wait else {
        return (Duration::MAX, attempts);
    };
    let most = u32::try_from(total.as_nanos() / 1_000).unwrap_or(u32::MAX);
    let attempts = attempts.min(most.max(1));
    (total / attempts, attempts)
}

/// Takes the lock with the library's waiting, showing the wait on stderr:
/// one try, then, unless `--nonblock`, a wait split into attempts. A
/// signal it would pass on to the command (see `signals::HANDLED`) that
/// comes while it tries or waits (connecting to a server, say) ends
/// `lockmgr` by that signal, as it would end `flock(1)`.
pub(crate) async fn take<G, F>(
    acquire: impl Fn(bool, Duration) -> F,
    args: &RunArgs,
    (per_attempt, attempts): (Duration, u32),
    signals: &Signals,
) -> Result<G, LockError>
where
    F: std::future::Future<Output = Result<G, LockError>>,
{
    let first = tokio::select! {
        r = acquire(false, Duration::ZERO) => r,
        sig = signals.recv() => end_by(sig),
    };
    let (lock, holder) = match &first {
        Err(LockError::WouldBlock { lock, holder }) if !args.nonblock => {
            (lock.clone(), holder.clone())
        }
        _ => return first,
    };
    let mut progress = Progress::new(
        &lock,
        holder,
        args.permits.is_some(),
        args.quiet,
        per_attempt,
        attempts,
    );
    let acquired = acquire(true, per_attempt);
    tokio::pin!(acquired);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            r = &mut acquired => break r,
            _ = tick.tick() => progress.show(),
            sig = signals.recv() => {
                progress.done();
                end_by(sig)
            }
        }
    };
    progress.done();
    result
}

/// Ends `lockmgr` by the signal that came in before it held the lock.
fn end_by(sig: std::io::Result<crate::signals::Received>) -> ! {
    match sig {
        Ok(received) => std::process::exit(die_by(received.signal as i32).into()),
        Err(e) => {
            say!("lockmgr: cannot read signals: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs the command and waits for it, passing on the signals meant for it,
/// and returns what became of it. `lock` names the lock in a message.
/// `env` is set in its environment, and no other token or slot `lockmgr`
/// was started with. If `lost.0` resolves (the lock is gone while the
/// command runs), the command gets SIGTERM, and SIGKILL if it still runs
/// `lost.1` later: another holder may be at work by then.
pub(crate) async fn supervise(
    command: &[OsString],
    lock: &str,
    env: &[(&str, String)],
    tie: Tie<'_>,
    (lost, kill_after): (impl std::future::Future<Output = ()>, Duration),
    signals: &Signals,
) -> Outcome {
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // What `lockmgr` was started with (an outer `run`'s, or set by hand)
    // is not the command's: it gets only what this run gives it.
    cmd.env_remove("LOCKMGR_FENCING_TOKEN")
        .env_remove("LOCKMGR_PERMIT_SLOT");
    for (key, value) in env {
        cmd.env(key, value);
    }
    // The inherited copy of the lock: a duplicate has no close-on-exec
    // flag, so the command gets it; this process closes its own copy once
    // the command runs.
    let inherited: Option<OwnedFd> = match tie {
        Tie::Inherit(fd, path) => match fd.try_clone_to_owned() {
            Ok(dup) => Some(without_cloexec(dup)),
            Err(e) => {
                let lock = crate::output::shown_path(path);
                return Outcome::Code(fail(&format!(
                    "cannot hand the lock on {lock} to the command: {e}"
                )));
            }
        },
        Tie::EndWithParent => None,
    };
    // A signal that came in after the lock was won and before the command
    // exists (a Ctrl-C reached `lockmgr` alone) ends `lockmgr` as it would
    // have a moment earlier: the command never started.
    if let Some(received) = signals.queued() {
        return Outcome::Signaled(received.signal as i32);
    }
    crate::sys::prepare_child(
        &mut cmd,
        matches!(tie, Tie::EndWithParent),
        crate::signals::sigchld_was_ignored(),
    );
    let spawned = cmd.spawn();
    drop(inherited);
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            say!(
                "lockmgr: cannot run {} (lock {lock}): {e}",
                command[0].to_string_lossy()
            );
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Outcome::Code(ExitCode::from(code));
        }
    };
    let Some(pid) = child.id() else {
        return Outcome::Code(fail(&format!(
            "{} (lock {lock}) ended before it could be supervised",
            command[0].to_string_lossy()
        )));
    };
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    // A terminal's hang-up goes to the session's leader alone (the group
    // in the foreground gets one only once the leader exits), where its
    // Ctrl-C goes to that whole group: `lockmgr` leads its session when a
    // shell execs it (`ssh -t host 'lockmgr run ...'`, a tmux pane), and
    // must then pass a hang-up on like a `kill`.
    let leads_session = nix::unistd::getsid(None).is_ok_and(|sid| sid == nix::unistd::getpid());
    tokio::pin!(lost);
    let mut was_lost = false;
    let mut kill_at = None;
    let mut hearing = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            sig = signals.recv(), if hearing => match sig {
                // The terminal's own signal reached the command too, if
                // the command is in this process's group (the one the
                // terminal signalled); one that left it (`setsid`, GNU
                // `timeout`) must be passed it.
                Ok(received)
                    if received.from_terminal
                        && !(leads_session && received.signal == Signal::SIGHUP)
                        && same_process_group(pid) => {}
                // The command's own, to its parent (a readiness ping):
                // not meant for the command, which would die of its own
                // SIGUSR1, or ping-pong with a handler that signals back.
                Ok(received) if i32::try_from(received.sender) == Ok(pid.as_raw()) => {}
                Ok(received) => {
                    let _ = nix::sys::signal::kill(pid, received.signal);
                }
                // Said once, not in a loop: the command runs on, and
                // signals sent to `lockmgr` stay queued.
                Err(e) => {
                    say!("lockmgr: cannot read signals any more ({e}); none is passed on to {} (lock {lock})",
                        command[0].to_string_lossy());
                    hearing = false;
                }
            },
            () = &mut lost, if !was_lost => {
                was_lost = true;
                say!("lockmgr: the lock was lost (its session ended); stopping the command");
                let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
                kill_at = tokio::time::Instant::now().checked_add(kill_after);
            }
            () = sleep_until(kill_at) => {
                kill_at = None;
                say!(
                    "lockmgr: {} (lock {lock}) still runs {:.3}s after its lock was lost; sending SIGKILL",
                    command[0].to_string_lossy(),
                    kill_after.as_secs_f64()
                );
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
        }
    };
    match status {
        // Its work ran on past the lock's end: not a success, even where
        // it took the SIGTERM for a graceful shutdown.
        Ok(s) if was_lost && s.success() => {
            say!(
                "lockmgr: {} exited 0, but its lock was lost while it ran; exit status 2",
                command[0].to_string_lossy()
            );
            Outcome::Code(ExitCode::from(2))
        }
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(code), _) => Outcome::Code(ExitCode::from(code.clamp(0, 255) as u8)),
                (None, Some(signo)) => Outcome::Signaled(signo),
                (None, None) => Outcome::Code(ExitCode::from(1)),
            }
        }
        Err(e) => Outcome::Code(fail(&format!(
            "cannot wait for {} (lock {lock}): {e}",
            command[0].to_string_lossy()
        ))),
    }
}

/// Whether process `pid` is in this process's group. A process that can
/// no longer be asked (it has just ended) counts as in it: there is
/// nothing to pass a signal to.
fn same_process_group(pid: nix::unistd::Pid) -> bool {
    use nix::unistd::getpgid;
    match (getpgid(Some(pid)), getpgid(None)) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => true,
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `try_clone_to_owned` sets close-on-exec on the copy; the command must
/// inherit it, so clear it.
fn without_cloexec(fd: OwnedFd) -> OwnedFd {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _ = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::empty()));
    fd
}

#[cfg(test)]
mod tests {
    use super::budget;
    use std::time::Duration;

    /// However many attempts, the wait is split without losing more than a
    /// thousandth of it, and never made longer.
    #[test]
    fn the_wait_is_kept_whole_whatever_the_attempts() {
        for secs in [0.0, 1e-9, 5e-7, 1e-3, 1.9, 3600.0, 1e9] {
            let total = Duration::from_secs_f64(secs);
            for attempts in [0, 1, 3, 1_000, 1_000_000_000, u32::MAX] {
                let (per, n) = budget(Some(total), attempts);
                let whole = per * n;
                assert!(
                    whole <= total && total - whole <= total / 1_000,
                    "--wait {secs} --attempts {attempts}: {n} of {per:?}, {whole:?} in all"
                );
            }
        }
    }
}
