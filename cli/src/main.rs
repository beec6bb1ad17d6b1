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
//!
//! Modules: `run` takes the lock and supervises the command, `progress`
//! shows a wait, `status` answers who holds a lock (text or JSON), `remote`
//! does both on a `lockmgr::pg` lock.

mod progress;
#[cfg(feature = "postgres")]
mod remote;
mod run;
mod status;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use lockmgr::LockKind;

#[derive(Parser)]
#[command(
    name = "lockmgr",
    version,
    about = "Run commands under inter-process locks, and see who holds them"
)]
struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Take the lock, run COMMAND while holding it, release when it exits.
    Run(RunArgs),
    /// Tell whether the lock is free, held exclusive or held shared, and by whom.
    Status(StatusArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
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
pub(crate) struct RunArgs {
    /// Take a shared lock instead of an exclusive one.
    #[arg(long)]
    pub(crate) shared: bool,
    /// The lock family: must match the other users of LOCKFILE.
    #[arg(long, value_enum, default_value = "ofd")]
    pub(crate) kind: Kind,
    /// Fail at once if the lock is held.
    #[arg(long, short = 'n', conflicts_with = "wait")]
    pub(crate) nonblock: bool,
    /// Wait at most SECS seconds in all (default: as long as it takes).
    #[arg(long, short = 'w', value_name = "SECS")]
    pub(crate) wait: Option<f64>,
    /// Split the wait into N attempts (the library's max_attempts).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) attempts: u32,
    /// A label for the holder record (default: the command's name).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Exit status when the lock is not obtained.
    #[arg(long, short = 'E', value_name = "N", default_value_t = 1)]
    pub(crate) conflict_exit_code: u8,
    /// No waiting message.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Lock on this PostgreSQL server (a URL or libpq connection string)
    /// instead of a file: LOCKFILE is then the lock's name.
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "URL")]
    pub(crate) postgres: Option<String>,
    /// The lock file (created if missing).
    pub(crate) lockfile: PathBuf,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub(crate) command: Vec<OsString>,
}

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// The lock family to ask about.
    #[arg(long, value_enum, default_value = "ofd")]
    pub(crate) kind: Kind,
    /// Print a JSON object instead of a sentence.
    #[arg(long)]
    pub(crate) json: bool,
    /// Ask this PostgreSQL server (a URL or libpq connection string)
    /// instead of a file: LOCKFILE is then the lock's name.
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "URL")]
    pub(crate) postgres: Option<String>,
    /// The lock file (must exist).
    pub(crate) lockfile: PathBuf,
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
        Command::Run(args) => rt.block_on(run::run(args)),
        Command::Status(args) => status::status(args),
    }
}

/// One clear line on stderr, exit status 2.
pub(crate) fn fail(msg: &str) -> ExitCode {
    eprintln!("lockmgr: {msg}");
    ExitCode::from(2)
}

impl Kind {
    /// The name `status --json` reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Ofd => "ofd",
            Kind::Flock => "flock",
        }
    }
}
