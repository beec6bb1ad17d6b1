//! `lockmgr run`: take the lock (showing the wait), run the command under
//! it, pass its exit status on.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lockmgr::{Holder, LockError, LockGuard, LockMgr, LockMode};
use tokio::signal::unix::{signal, SignalKind};

use crate::progress::Progress;
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
    if e.is_contended() {
        eprintln!("lockmgr: {e}");
        ExitCode::from(args.conflict_exit_code)
    } else {
        fail(&e.to_string())
    }
}

pub(crate) async fn run(args: RunArgs) -> ExitCode {
    let lock = LockMgr::builder(&args.lockfile)
        .kind(args.kind.into())
        .max_attempts(args.attempts.max(1))
        .label(label(&args))
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
    let refresh = || lock.holder().ok().flatten();
    let guard: LockGuard = match take(acquire, refresh, &args).await {
        Ok(guard) => guard,
        Err(e) => return not_obtained(e, &args),
    };
    let code = supervise(&args.command, None, std::future::pending()).await;
    if let Err(e) = guard.release() {
        eprintln!("lockmgr: {e}");
    }
    code
}

/// Takes the lock with the library's waiting, showing the wait on stderr:
/// one try, then, unless `--nonblock`, a wait split into attempts, with
/// `refresh` asked now and then who holds the lock.
pub(crate) async fn take<G, F>(
    acquire: impl Fn(bool, Duration) -> F,
    refresh: impl Fn() -> Option<Holder>,
    args: &RunArgs,
) -> Result<G, LockError>
where
    F: std::future::Future<Output = Result<G, LockError>>,
{
    let first = acquire(false, Duration::ZERO).await;
    let (lock, holder) = match &first {
        Err(LockError::WouldBlock { lock, holder }) if !args.nonblock => {
            (lock.clone(), holder.clone())
        }
        _ => return first,
    };
    // The wait in all, split into attempts; no --wait: as long as it takes.
    let per_attempt = match args.wait {
        None => Duration::MAX,
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::from_secs_f64(secs) / args.attempts.max(1)
        }
        Some(_) => Duration::ZERO,
    };
    let mut progress = Progress::new(&lock, holder, args, per_attempt);
    let acquired = acquire(true, per_attempt);
    tokio::pin!(acquired);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            r = &mut acquired => break r,
            _ = tick.tick() => progress.show(&refresh),
        }
    };
    progress.done();
    result
}

/// Runs the command, forwarding SIGINT, SIGTERM and SIGHUP to it, and
/// returns its exit status the way a shell reports it. `env` is set in its
/// environment. If `lost` resolves (the lock is gone while the command
/// runs), the command gets SIGTERM.
pub(crate) async fn supervise(
    command: &[OsString],
    env: Option<(&str, String)>,
    lost: impl std::future::Future<Output = ()>,
) -> ExitCode {
    // Handlers first: a signal that comes the moment the command starts
    // must be forwarded, not kill us and orphan the command.
    let streams = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    );
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = streams else {
        return fail("cannot set up signal forwarding");
    };
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    if let Some((key, value)) = env {
        cmd.env(key, value);
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("lockmgr: cannot run {}: {e}", command[0].to_string_lossy());
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return ExitCode::from(code);
        }
    };
    let Some(pid) = child.id() else {
        return fail("the command vanished before it could be supervised");
    };
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    let forward = |sig| {
        let _ = nix::sys::signal::kill(pid, sig);
    };
    use nix::sys::signal::Signal::{SIGHUP, SIGINT, SIGTERM};
    tokio::pin!(lost);
    let mut was_lost = false;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(()) = int.recv() => forward(SIGINT),
            Some(()) = term.recv() => forward(SIGTERM),
            Some(()) = hup.recv() => forward(SIGHUP),
            () = &mut lost, if !was_lost => {
                was_lost = true;
                eprintln!("lockmgr: the lock was lost (its session ended); stopping the command");
                forward(SIGTERM);
            }
        }
    };
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            let code = s
                .code()
                .or_else(|| s.signal().map(|sig| 128 + sig))
                .unwrap_or(1);
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => fail(&format!("cannot wait for the command: {e}")),
    }
}
