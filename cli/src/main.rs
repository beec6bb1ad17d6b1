//! `lockmgr`: run a command under a lock, or show who holds one.
//!
//! ```text
//! lockmgr run [--shared | --permits N] [--kind ofd|flock] [--nonblock | --wait SECS] [--attempts N]
//!             [--label TEXT | --no-record] [--conflict-exit-code N] [--quiet] [PG] LOCKFILE -- COMMAND [ARGS...]
//! lockmgr status [--kind ofd|flock] [--json] [PG] LOCKFILE
//! lockmgr list [--json] [PG | DIR]
//!
//! PG: --postgres-env | --postgres-url-var VAR | --postgres URL
//! ```
//!
//! Built with the `postgres` feature, both take one of `--postgres-env`,
//! `--postgres-url-var VAR` or `--postgres URL`, and then a lock name in
//! place of LOCKFILE: the lock is a PostgreSQL advisory lock
//! (`lockmgr::pg`). The connection is completed as libpq does: what the
//! connection string leaves out comes from `PGHOST`, `PGPORT`, `PGUSER`,
//! `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, ... and the password file
//! (`PGPASSFILE`, or `~/.pgpass`, used only when others cannot read it).
//! `--postgres-env` takes the connection from that environment alone,
//! `--postgres-url-var VAR` takes a URL or connection string from the
//! environment variable VAR, and `--postgres URL` from the command line,
//! where every local user can read it (`ps`): a password there draws a
//! warning. `run` then passes the fencing token to the command as
//! `LOCKMGR_FENCING_TOKEN`, and sends it SIGTERM if the lock's session is
//! lost while it runs.
//!
//! `run` ends as its command ended: with its exit status, or by the signal
//! that ended it (after releasing the lock). Otherwise: the conflict exit
//! code (default 1) when the lock was not obtained; 2 for errors (bad
//! arguments, a lock file that cannot be used); 126/127 when the command
//! cannot be started / is not found. The command inherits a file lock (so
//! it keeps the lock if `lockmgr` dies); with `--postgres` it is killed if
//! `lockmgr` dies.
//!
//! Exit status of `status`: 0 free (for a semaphore: a permit free), 1 held
//! (all permits taken), 2 error.
//!
//! The library's warnings are shown on stderr; `LOCKMGR_LOG` (`off`,
//! `error`, `warn`, `info`, `debug`, `trace`) sets how much.
//!
//! The tool is a user of the library's public API only.
//!
//! Modules: `run` takes the lock and supervises the command, `signals`
//! reads the signals it passes on (and tells the terminal's apart),
//! `progress` shows a wait, `status` answers who holds a lock (text or
//! JSON), `list` lists the host's locked files, `remote` runs and answers
//! on a `lockmgr::pg` lock, `output` writes lockmgr's own lines without
//! panicking when nobody reads them, and `sys` holds the tool's only
//! `unsafe` (the child's set-up between fork and exec, a death by SIGPIPE).

#![deny(missing_docs)]
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod output;

mod list;
mod progress;
#[cfg(feature = "postgres")]
mod remote;
mod run;
mod signals;
mod status;
#[allow(unsafe_code)]
mod sys;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use lockmgr::LockKind;

#[derive(Parser)]
#[command(
    name = "lockmgr",
    version,
    arg_required_else_help = true,
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
    /// List every locked file of this host, or the lock files under DIR
    /// (free ones too), with the processes that hold them.
    List(ListArgs),
}

#[derive(clap::Args)]
pub(crate) struct ListArgs {
    /// Print a JSON array instead of lines.
    #[arg(long)]
    pub(crate) json: bool,
    /// The PostgreSQL server whose lockmgr locks to list, instead of this
    /// host's files.
    #[cfg(feature = "postgres")]
    #[command(flatten)]
    pub(crate) pg: PgArgs,
    /// A directory: list the lock files under it (locked now, named
    /// *.lock or *.lck, or holding a lockmgr record), free ones included.
    pub(crate) dir: Option<PathBuf>,
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
    /// The lock family: must match the other users of LOCKFILE (a lock
    /// file's; not with a PostgreSQL lock).
    #[arg(long, value_enum, default_value = "ofd")]
    #[cfg_attr(feature = "postgres", arg(conflicts_with = "pg"))]
    pub(crate) kind: Kind,
    /// Fail at once if the lock is held.
    #[arg(long, short = 'n', conflicts_with = "wait")]
    pub(crate) nonblock: bool,
    /// Wait at most SECS seconds in all (a decimal number, 0 or more; `inf`
    /// and anything too large to count: as long as it takes, the default).
    #[arg(long, short = 'w', value_name = "SECS", value_parser = parse_wait, allow_negative_numbers = true)]
    pub(crate) wait: Option<Duration>,
    /// Split the wait into N attempts (the library's max_attempts; 0 is
    /// taken as 1).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        allow_negative_numbers = true
    )]
    pub(crate) attempts: u32,
    /// A label for the holder record (default: the command's name).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Write no holder record into the file (for a file whose content is
    /// another program's, such as an empty `lockmgr` journal, which would
    /// otherwise get the record as its first line). The command then gets
    /// no fencing token.
    #[arg(long, conflicts_with_all = ["label", "permits"])]
    #[cfg_attr(feature = "postgres", arg(conflicts_with = "pg"))]
    pub(crate) no_record: bool,
    /// Take one of N permits of a semaphore file (at most N commands at
    /// once; every user must give the same N) instead of the lock; the
    /// command learns its slot in LOCKMGR_PERMIT_SLOT.
    #[arg(long, value_name = "N", conflicts_with = "shared")]
    pub(crate) permits: Option<u32>,
    /// Exit status when the lock is not obtained.
    #[arg(long, short = 'E', value_name = "N", default_value_t = 1)]
    pub(crate) conflict_exit_code: u8,
    /// No waiting message, and no line when the lock is held (the exit
    /// status says so); errors are still said.
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// When a PostgreSQL lock is lost while the command runs, the command
    /// gets SIGTERM, and SIGKILL if it still runs SECS seconds later (a
    /// decimal number; `inf`: never). Both go to the command's own process
    /// (a script that starts others should `exec` its last one, or pass
    /// the signal on).
    #[cfg(feature = "postgres")]
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_grace, requires = "pg")]
    pub(crate) kill_after: Duration,
    /// Where the PostgreSQL lock is, if it is one.
    #[cfg(feature = "postgres")]
    #[command(flatten)]
    pub(crate) pg: PgArgs,
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
    /// Where the PostgreSQL lock is, if it is one.
    #[cfg(feature = "postgres")]
    #[command(flatten)]
    pub(crate) pg: PgArgs,
    /// The lock file (must exist).
    pub(crate) lockfile: PathBuf,
}

/// The PostgreSQL server of `run` and `status`: at most one of the three
/// ways. With any of them the lock is a PostgreSQL advisory lock and
/// LOCKFILE its name; what the connection string leaves out comes from the
/// libpq environment (`remote::connection` decides the string).
#[cfg(feature = "postgres")]
#[derive(clap::Args)]
#[group(id = "pg", multiple = false)]
pub(crate) struct PgArgs {
    /// Use a PostgreSQL lock, connecting from the libpq environment alone
    /// (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGPASSFILE, PGSSLMODE, ...).
    ///
    /// As libpq with an empty connection string: PGHOST, PGPORT, PGUSER,
    /// PGPASSWORD, PGDATABASE, PGSSLMODE, PGSSLROOTCERT, PGAPPNAME, ... and
    /// the password file (PGPASSFILE, or ~/.pgpass; used only when others
    /// cannot read it). LOCKFILE is then the lock's name.
    #[arg(long)]
    pub(crate) postgres_env: bool,
    /// Use a PostgreSQL lock, with the URL or connection string in the
    /// environment variable VAR (e.g. DATABASE_URL).
    ///
    /// A URL or libpq connection string; what it leaves out comes from the
    /// PG* variables and the password file, as with --postgres-env.
    /// LOCKFILE is then the lock's name.
    #[arg(long, value_name = "VAR")]
    pub(crate) postgres_url_var: Option<String>,
    /// Use a PostgreSQL lock on this server (a URL or libpq connection
    /// string; better without a password: see --help).
    ///
    /// What it leaves out comes from the PG* variables and the password
    /// file, as with --postgres-env. Every local user can read a command
    /// line (ps): give the password with PGPASSWORD, PGPASSFILE or
    /// ~/.pgpass, or the whole URL with --postgres-url-var, not here (a
    /// password here draws a warning). LOCKFILE is then the lock's name.
    #[arg(long, value_name = "URL")]
    pub(crate) postgres: Option<String>,
}

/// `--wait SECS`: a number of seconds, 0 or more. Anything too large for
/// a `Duration` (`inf`, `1e20`) means as long as it takes.
fn parse_wait(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| "not a number of seconds".to_owned())?;
    if secs.is_nan() || secs < 0.0 {
        return Err("the wait must be 0 or more seconds (inf: as long as it takes)".into());
    }
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// `--kill-after SECS`: as [`parse_wait`], with its own message.
#[cfg(feature = "postgres")]
fn parse_grace(s: &str) -> Result<Duration, String> {
    parse_wait(s).map_err(|_| "the grace must be 0 or more seconds (inf: never killed)".into())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        // No arguments at all: the whole usage, on stderr, status 2.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            // One line, as for every other error: clap's message, without
            // its own prefix and usage hint; what it lists on the lines
            // after the first (the missing arguments) is kept, on that line.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = message.join(" ");
            let line = line.trim_start_matches("error: ");
            return fail(if line.is_empty() {
                "invalid arguments"
            } else {
                line
            });
        }
    };
    show_events();
    match cli.command {
        Command::Run(args) => run_command(args),
        #[cfg(feature = "postgres")]
        Command::Status(args) if args.pg.source().is_some() => match runtime() {
            Ok(rt) => rt.block_on(remote::status(args)),
            Err(code) => code,
        },
        Command::Status(args) => status::status(args),
        #[cfg(feature = "postgres")]
        Command::List(args) if args.pg.source().is_some() => match runtime() {
            Ok(rt) => rt.block_on(remote::list(args)),
            Err(code) => code,
        },
        Command::List(args) => list::list(args),
    }
}

/// Shows the library's events on stderr, one line each: its warnings (a
/// fallback taken, a record that cannot be written, fencing tokens at their
/// end), or as much as `LOCKMGR_LOG` says (`off`, `error`, `warn`, `info`,
/// `debug`, `trace`, or `0` to `5`; empty or anything else is `warn`). A
/// formatter of the tracing project's own, not one written here. Like
/// `run`'s own lines, these are news: one that cannot be written is lost.
fn show_events() {
    use tracing_subscriber::filter::LevelFilter;
    let level = std::env::var("LOCKMGR_LOG")
        .ok()
        // An empty variable means unset here (tracing would parse an
        // empty level as `error`, hiding the default warnings).
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    if level == LevelFilter::OFF {
        return;
    }
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let shown = tracing_subscriber::fmt::layer()
        .with_writer(|| crate::output::PatientStderr)
        .with_target(false)
        .without_time()
        .with_ansi(false)
        // Its report of a failed write goes through `eprintln!`, which
        // panics when stderr cannot be written either.
        .log_internal_errors(false)
        .with_filter(level)
        // `run` asks for a fencing token on every lock file, and gets none
        // where the file cannot hold a record (read-only, a script's own
        // text): the README says so, and the library's warning to those
        // who asked for tokens would be noise on every such run.
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.fields().field("unfenced").is_none()
        }));
    let _ = tracing_subscriber::registry().with(shown).try_init();
}

/// `run`, the one command that handles signals: it passes them on to its
/// command. The others keep their default actions, so Ctrl-C ends them
/// (while they connect to a server, say).
fn run_command(args: RunArgs) -> ExitCode {
    // A file semaphore's permits are OFD locks on bytes of their own (a
    // PostgreSQL one's, the server's): `flock` has no byte to lock, and
    // `--kind ofd` beside `--permits` says no more than the default.
    if args.permits.is_some() && matches!(args.kind, Kind::Flock) {
        return fail("--permits cannot be used with --kind flock: a semaphore's permits are not flock(2) locks");
    }
    // Before any thread exists, so that every thread blocks them: they
    // queue for `signals::Signals` instead of ending lockmgr.
    if let Err(e) = signals::block() {
        return fail(&format!("cannot set up signal handling: {e}"));
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let signals = match rt.block_on(async { signals::Signals::new() }) {
        Ok(signals) => signals,
        Err(e) => return fail(&format!("cannot set up signal handling: {e}")),
    };
    #[cfg(feature = "postgres")]
    if args.pg.source().is_some() {
        return rt.block_on(remote::run(args, signals));
    }
    rt.block_on(run::run(args, signals))
}

/// The runtime, or the line that says why there is none.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    // Tokio panics, rather than failing, when its signal driver cannot get
    // the two descriptors of its socket pair; so first make sure that the
    // runtime's descriptors (epoll, its waker, that pair and a copy of one)
    // can be had. Nothing else opens any in between: no other thread runs.
    let spare = (0..3)
        .map(|_| nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC))
        .collect::<Result<Vec<_>, _>>();
    if let Err(e) = spare {
        let e = std::io::Error::from(e);
        return Err(fail(&format!("cannot start the runtime: {e}")));
    }
    drop(spare);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| fail(&format!("cannot start the runtime: {e}")))
}

/// One clear line on stderr, exit status 2.
pub(crate) fn fail(msg: &str) -> ExitCode {
    say!("lockmgr: {msg}");
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
