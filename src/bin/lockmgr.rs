//! `lockmgr`: run a command under a lock, or show who holds one.
//!
//! ```text
//! lockmgr run [--shared] [--kind ofd|flock] [--nonblock | --wait SECS] [--attempts N]
//!             [--label TEXT] [--conflict-exit-code N] [--quiet] LOCKFILE -- COMMAND [ARGS...]
//! lockmgr status [--kind ofd|flock] [--json] LOCKFILE
//! ```
//!
//! Built with the `postgres` feature, both take `--postgres URL`, and then a
//! lock name in place of LOCKFILE: the lock is a PostgreSQL advisory lock
//! (`lockmgr::pg`). `run` then passes the fencing token to the command as
//! `LOCKMGR_FENCING_TOKEN`, and sends it SIGTERM if the lock's session is
//! lost while it runs.
//!
//! Exit status of `run`: the command's (128 + N if a signal N ended it); the
//! conflict exit code (default 1) when the lock was not obtained; 2 for
//! errors (bad arguments, a lock file that cannot be used); 126/127 when the
//! command cannot be started / is not found.
//!
//! Exit status of `status`: 0 free, 1 held, 2 error.
//!
//! The tool is a user of the library's public API only.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use lockmgr::{Holder, LockError, LockGuard, LockKind, LockMgr, LockMode, Status};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "lockmgr",
    version,
    about = "Run commands under inter-process locks, and see who holds them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take the lock, run COMMAND while holding it, release when it exits.
    Run(RunArgs),
    /// Tell whether the lock is free, held exclusive or held shared, and by whom.
    Status(StatusArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    /// OFD record locks (fcntl F_OFD_SETLK); also excludes lockf/POSIX users.
    Ofd,
    /// flock(2) locks, as flock(1), Python filelock and cargo use.
    Flock,
}

impl From<Kind> for LockKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Ofd => LockKind::Ofd,
            Kind::Flock => LockKind::Flock,
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Take a shared lock instead of an exclusive one.
    #[arg(long)]
    shared: bool,
    /// The lock family: must match the other users of LOCKFILE.
    #[arg(long, value_enum, default_value = "ofd")]
    kind: Kind,
    /// Fail at once if the lock is held.
    #[arg(long, short = 'n', conflicts_with = "wait")]
    nonblock: bool,
    /// Wait at most SECS seconds in all (default: as long as it takes).
    #[arg(long, short = 'w', value_name = "SECS")]
    wait: Option<f64>,
    /// Split the wait into N attempts (the library's max_attempts).
    #[arg(long, value_name = "N", default_value_t = 10)]
    attempts: u32,
    /// A label for the holder record (default: the command's name).
    #[arg(long)]
    label: Option<String>,
    /// Exit status when the lock is not obtained.
    #[arg(long, short = 'E', value_name = "N", default_value_t = 1)]
    conflict_exit_code: u8,
    /// No waiting message.
    #[arg(long, short)]
    quiet: bool,
    /// Lock on this PostgreSQL server (a URL or libpq connection string)
    /// instead of a file: LOCKFILE is then the lock's name.
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The lock file (created if missing).
    lockfile: PathBuf,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

#[derive(clap::Args)]
struct StatusArgs {
    /// The lock family to ask about.
    #[arg(long, value_enum, default_value = "ofd")]
    kind: Kind,
    /// Print a JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
    /// Ask this PostgreSQL server (a URL or libpq connection string)
    /// instead of a file: LOCKFILE is then the lock's name.
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// The lock file (must exist).
    lockfile: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        #[cfg(feature = "postgres")]
        Command::Run(args) if args.postgres.is_some() => rt.block_on(remote::run(args)),
        #[cfg(feature = "postgres")]
        Command::Status(args) if args.postgres.is_some() => rt.block_on(remote::status(args)),
        Command::Run(args) => rt.block_on(run(args)),
        Command::Status(args) => status(args),
    }
}

/// One clear line on stderr, exit status 2.
fn fail(msg: &str) -> ExitCode {
    eprintln!("lockmgr: {msg}");
    ExitCode::from(2)
}

/// The holder label: `--label`, or the command's name.
fn label(args: &RunArgs) -> String {
    args.label.clone().unwrap_or_else(|| {
        Path::new(&args.command[0])
            .file_name()
            .unwrap_or(args.command[0].as_os_str())
            .to_string_lossy()
            .into_owned()
    })
}

fn mode(args: &RunArgs) -> LockMode {
    if args.shared {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    }
}

/// The exit status for a lock that was not obtained.
fn not_obtained(e: LockError, args: &RunArgs) -> ExitCode {
    if e.is_contended() {
        eprintln!("lockmgr: {e}");
        ExitCode::from(args.conflict_exit_code)
    } else {
        fail(&e.to_string())
    }
}

async fn run(args: RunArgs) -> ExitCode {
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
async fn take<G, F>(
    acquire: impl Fn(bool, Duration) -> F,
    refresh: impl Fn() -> Option<Holder>,
    args: &RunArgs,
) -> Result<G, LockError>
where
    F: std::future::Future<Output = Result<G, LockError>>,
{
    let first = acquire(false, Duration::ZERO).await;
    let (lock, holder) = match &first {
        Err(LockError::WouldBlock { path, holder }) if !args.nonblock => {
            (path.clone(), holder.clone())
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

/// The waiting message: one updating line on a terminal, one line otherwise.
struct Progress {
    path: PathBuf,
    holder: Option<Holder>,
    tty: bool,
    quiet: bool,
    started: Instant,
    per_attempt: Duration,
    attempts: u32,
    shown: bool,
}

impl Progress {
    fn new(path: &Path, holder: Option<Holder>, args: &RunArgs, per_attempt: Duration) -> Self {
        Progress {
            path: path.to_path_buf(),
            holder,
            tty: std::io::stderr().is_terminal(),
            quiet: args.quiet,
            started: Instant::now(),
            per_attempt,
            attempts: args.attempts.max(1),
            shown: false,
        }
    }

    fn held_by(&self) -> String {
        match &self.holder {
            Some(h) => format!("held by {h}"),
            None => "held by another owner".into(),
        }
    }

    fn show(&mut self, refresh: &impl Fn() -> Option<Holder>) {
        if self.quiet || (self.shown && !self.tty) {
            return;
        }
        if self.shown {
            // The holder may have changed hands meanwhile.
            self.holder = refresh().or(self.holder.take());
        }
        let waited = self.started.elapsed();
        let attempt = if self.per_attempt.is_zero() || self.per_attempt == Duration::MAX {
            1
        } else {
            (waited.as_secs_f64() / self.per_attempt.as_secs_f64()) as u32 + 1
        }
        .min(self.attempts);
        let line = format!(
            "lockmgr: waiting for lock {} ({}): {:.0}s, attempt {}/{}",
            self.path.display(),
            self.held_by(),
            waited.as_secs_f64(),
            attempt,
            self.attempts
        );
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.shown = true;
    }

    fn done(&self) {
        if self.shown && self.tty {
            eprintln!();
        }
    }
}

/// Runs the command, forwarding SIGINT, SIGTERM and SIGHUP to it, and
/// returns its exit status the way a shell reports it. `env` is set in its
/// environment. If `lost` resolves (the lock is gone while the command
/// runs), the command gets SIGTERM.
async fn supervise(
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

fn status(args: StatusArgs) -> ExitCode {
    let path = &args.lockfile;
    if let Err(e) = std::fs::symlink_metadata(path) {
        return fail(&format!("cannot read lock file {}: {e}", path.display()));
    }
    let lock = LockMgr::builder(path).kind(args.kind.into()).build();
    let status = match lock.status() {
        Ok(s) => s,
        Err(e) => return fail(&e.to_string()),
    };
    let kind = match args.kind {
        Kind::Ofd => "ofd",
        Kind::Flock => "flock",
    };
    report(path, kind, status, args.json)
}

/// Prints a status and returns its exit code: 0 free, 1 held.
fn report(path: &Path, kind: &str, status: Status, json: bool) -> ExitCode {
    if json {
        println!("{}", status_json(path, kind, &status));
    } else {
        let what = match &status {
            Status::Missing | Status::Free => "free".to_owned(),
            Status::Shared => "held shared".to_owned(),
            Status::Exclusive { holder: Some(h) } => format!("held exclusive by {h}"),
            Status::Exclusive { holder: None } => "held exclusive (holder unknown)".to_owned(),
            _ => "in an unknown state".to_owned(),
        };
        println!("{}: {what}", path.display());
    }
    match status {
        Status::Missing | Status::Free => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

/// The `status --json` object (stable; documented in the README):
/// `{"lock": str, "kind": "ofd"|"flock"|"postgres", "state": "free"|"exclusive"|"shared",
///   "holder": null | {"pid": int, "host": str, "since": int, "since_utc": str,
///                     "label": str|null, "stale": bool}}`
fn status_json(path: &Path, kind: &str, status: &Status) -> String {
    let state = match status {
        Status::Missing | Status::Free => "free",
        Status::Shared => "shared",
        _ => "exclusive",
    };
    let holder = match status {
        Status::Exclusive { holder: Some(h) } => {
            let since = h
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!(
                "{{\"pid\":{},\"host\":{},\"since\":{},\"since_utc\":{},\"label\":{},\"stale\":{}}}",
                h.pid,
                json_str(&h.host),
                since,
                json_str(&h.since_utc()),
                h.label.as_deref().map_or("null".into(), json_str),
                h.stale
            )
        }
        _ => "null".into(),
    };
    format!(
        "{{\"lock\":{},\"kind\":\"{kind}\",\"state\":\"{state}\",\"holder\":{holder}}}",
        json_str(&path.to_string_lossy())
    )
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `--postgres`: the same commands on a `lockmgr::pg` lock.
#[cfg(feature = "postgres")]
mod remote {
    use super::*;
    use lockmgr::pg::{PgLockGuard, PgLockMgr};

    pub(super) async fn run(args: RunArgs) -> ExitCode {
        let url = args.postgres.as_deref().unwrap_or_default();
        let name = args.lockfile.to_string_lossy();
        let lock = match PgLockMgr::builder(url, name)
            .max_attempts(args.attempts.max(1))
            .label(label(&args))
            .build()
        {
            Ok(lock) => lock,
            Err(e) => return fail(&e.to_string()),
        };
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
        // Asking the server means a connection each time: keep the holder
        // named by the first try.
        let guard: PgLockGuard = match take(acquire, || None, &args).await {
            Ok(guard) => guard,
            Err(e) => return not_obtained(e, &args),
        };
        let token = ("LOCKMGR_FENCING_TOKEN", guard.fencing_token().to_string());
        let code = supervise(&args.command, Some(token), guard.lost()).await;
        if let Err(e) = guard.release().await {
            eprintln!("lockmgr: {e}");
        }
        code
    }

    pub(super) async fn status(args: StatusArgs) -> ExitCode {
        let url = args.postgres.as_deref().unwrap_or_default();
        let lock = match PgLockMgr::new(url, args.lockfile.to_string_lossy()) {
            Ok(lock) => lock,
            Err(e) => return fail(&e.to_string()),
        };
        match lock.status().await {
            Ok(status) => report(&args.lockfile, "postgres", status, args.json),
            Err(e) => fail(&e.to_string()),
        }
    }
}
