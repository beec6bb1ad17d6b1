//! `--postgres`, `--postgres-env`, `--postgres-url-var`: `run` and
//! `status` on a `lockmgr::pg` lock, and `list` of a server's locks.

use std::process::ExitCode;
use std::time::Duration;

use lockmgr::pg::{PgLockGuard, PgLockMgr, PgLockMgrBuilder, PgPermit, PgSemaphore};
use lockmgr::LockMode;

use crate::run::{budget, label, mode, not_obtained, supervise, take, Tie};
use crate::signals::Signals;
use crate::status::{report, HolderJson};
use crate::{fail, ListArgs, PgArgs, RunArgs, StatusArgs};

/// Where the connection string comes from.
pub(crate) enum PgSource<'a> {
    /// `--postgres URL`: from the command line.
    Given(&'a str),
    /// `--postgres-env`: none; everything from the libpq environment.
    Env,
    /// `--postgres-url-var VAR`: from the environment variable VAR.
    UrlVar(&'a str),
}

impl PgArgs {
    /// The way given, if any (clap lets through at most one).
    pub(crate) fn source(&self) -> Option<PgSource<'_>> {
        if let Some(url) = &self.postgres {
            Some(PgSource::Given(url))
        } else if let Some(var) = &self.postgres_url_var {
            Some(PgSource::UrlVar(var))
        } else if self.postgres_env {
            Some(PgSource::Env)
        } else {
            None
        }
    }
}

/// The warning for a password on the command line (never the password).
const PASSWORD_ON_COMMAND_LINE: &str = "lockmgr: warning: the connection string on the command \
    line carries a password, which every local user can read (ps); use PGPASSWORD, a password \
    file (~/.pgpass) or --postgres-url-var";

/// The connection string for `lockmgr::pg`, which completes it from the
/// libpq environment (an empty one: everything from there). Warns, on
/// stderr, of a password given on the command line; an error names a
/// variable, never its value.
pub(crate) fn connection(source: PgSource<'_>) -> Result<String, String> {
    match source {
        PgSource::Env => Ok(String::new()),
        PgSource::Given(s) => {
            if lockmgr::pg::carries_password(s) {
                say!("{PASSWORD_ON_COMMAND_LINE}");
            }
            Ok(s.to_owned())
        }
        // A connection string given for the name (`:`, `@`, `/` and `=`
        // are in every URL and keyword string, and in no variable's name)
        // would be shown in the message, password and all.
        PgSource::UrlVar(var)
            if var.contains(['=', ':', '/', '@']) || var.contains(char::is_whitespace) =>
        {
            Err(
                "--postgres-url-var takes the name of an environment variable, not a connection \
             string (what was given is not shown)"
                    .into(),
            )
        }
        PgSource::UrlVar(var) => match std::env::var(var) {
            Ok(s) if !s.trim().is_empty() => Ok(s),
            Ok(_) => Err(format!(
                "--postgres-url-var: the environment variable {var} is empty"
            )),
            Err(std::env::VarError::NotPresent) => Err(format!(
                "--postgres-url-var: the environment variable {var} is not set"
            )),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!(
                "--postgres-url-var: the environment variable {var} is not UTF-8"
            )),
        },
    }
}

/// Refuses a lock name that is a connection string carrying a password
/// (`--postgres-env URL ...` takes the URL for the name), without showing
/// it: the name goes into every message.
fn check_name(name: &std::ffi::OsStr) -> Result<(), String> {
    let name = name.to_string_lossy();
    // Only what can be a connection string: a URL, or `key=value` pairs (a
    // plain name that merely says "password", `password-rotation`, is one).
    let connection_like = name.contains("://") || name.contains('=');
    if connection_like && lockmgr::pg::carries_password(&name) {
        return Err(
            "the lock name is a connection string that carries a password (not shown): \
             give the server with --postgres, --postgres-env or --postgres-url-var, then the \
             lock's name"
                .into(),
        );
    }
    Ok(())
}

/// The library's connect timeout when nothing else says, and the least it
/// gives a waiting acquire's connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_FLOOR: Duration = Duration::from_secs(2);

pub(crate) async fn run(args: RunArgs, signals: Signals) -> ExitCode {
    let Some(source) = args.pg.source() else {
        return fail("no PostgreSQL server given");
    };
    if let Err(e) = check_name(args.lockfile.as_os_str()) {
        return fail(&e);
    }
    let url = match connection(source) {
        Ok(url) => url,
        Err(e) => return fail(&e),
    };
    let name = args.lockfile.to_string_lossy();
    let (per_attempt, attempts) = budget(args.wait, args.attempts);
    let mut options = PgLockMgr::builder(&url, name)
        .max_attempts(attempts)
        .label(label(&args));
    // `--wait` bounds the whole run, the first try's connect included,
    // which does not wait and so would take the connect timeout (10 s, or
    // the string's `connect_timeout`, which still wins when shorter); a
    // connect still gets 2 s, as a waiting one does.
    if let Some(wait) = args.wait.filter(|w| *w != Duration::MAX) {
        options = options.connect_timeout(wait.min(CONNECT_TIMEOUT).max(CONNECT_FLOOR));
    }
    if let Some(permits) = args.permits {
        return run_with_permit(&args, options, permits, (per_attempt, attempts), signals).await;
    }
    let lock = match options.build() {
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
    let guard: PgLockGuard = match take(acquire, &args, (per_attempt, attempts), &signals).await {
        Ok(guard) => guard,
        Err(e) => return not_obtained(e, &args),
    };
    let token = ("LOCKMGR_FENCING_TOKEN", guard.fencing_token().to_string());
    let outcome = supervise(
        &args.command,
        &crate::output::shown_path(&args.lockfile),
        &[token],
        Tie::EndWithParent,
        (guard.lost(), args.kill_after),
        &signals,
    )
    .await;
    if let Err(e) = guard.release().await {
        say!("lockmgr: {e}");
    }
    outcome.finish()
}

/// `run --permits N` on PostgreSQL: the command runs holding one of N
/// permits of the semaphore named LOCKFILE, and is sent SIGTERM if the
/// permit's session is lost.
async fn run_with_permit(
    args: &RunArgs,
    options: PgLockMgrBuilder,
    permits: u32,
    (per_attempt, attempts): (Duration, u32),
    signals: Signals,
) -> ExitCode {
    let sem = match PgSemaphore::from_builder(options, permits) {
        Ok(sem) => sem,
        Err(e) => return fail(&e.to_string()),
    };
    let acquire = |wait: bool, timeout: Duration| {
        let sem = sem.clone();
        async move { sem.acquire(wait, timeout).await }
    };
    let permit: PgPermit = match take(acquire, args, (per_attempt, attempts), &signals).await {
        Ok(permit) => permit,
        Err(e) => return not_obtained(e, args),
    };
    let outcome = supervise(
        &args.command,
        &crate::output::shown_path(&args.lockfile),
        &[
            ("LOCKMGR_PERMIT_SLOT", permit.slot().to_string()),
            ("LOCKMGR_FENCING_TOKEN", permit.fencing_token().to_string()),
        ],
        Tie::EndWithParent,
        (permit.lost(), args.kill_after),
        &signals,
    )
    .await;
    if let Err(e) = permit.release().await {
        say!("lockmgr: {e}");
    }
    outcome.finish()
}

/// `status` of a PostgreSQL lock.
pub(crate) async fn status(args: StatusArgs) -> ExitCode {
    let Some(source) = args.pg.source() else {
        return fail("no PostgreSQL server given");
    };
    if let Err(e) = check_name(args.lockfile.as_os_str()) {
        return fail(&e);
    }
    let url = match connection(source) {
        Ok(url) => url,
        Err(e) => return fail(&e),
    };
    let lock = match PgLockMgr::new(&url, args.lockfile.to_string_lossy()) {
        Ok(lock) => lock,
        Err(e) => return fail(&e.to_string()),
    };
    match lock.status().await {
        Ok(status) => report(&args.lockfile, "postgres", status, None, args.json),
        Err(e) => fail(&e.to_string()),
    }
}

/// `list --postgres`: every `lockmgr::pg` lock on the server, with its
/// holders and its queue.
pub(crate) async fn list(args: ListArgs) -> ExitCode {
    if args.dir.is_some() {
        return fail("list takes a directory or a PostgreSQL server, not both");
    }
    let Some(source) = args.pg.source() else {
        return fail("no PostgreSQL server given");
    };
    let url = match connection(source) {
        Ok(url) => url,
        Err(e) => return fail(&e),
    };
    let any = match PgLockMgr::builder(&url, "lockmgr list").build() {
        Ok(lock) => lock,
        Err(e) => return fail(&e.to_string()),
    };
    let locks = match any.server_locks().await {
        Ok(locks) => locks,
        Err(e) => return fail(&e.to_string()),
    };
    if args.json {
        let objects: Vec<ServerLockJson<'_>> = locks.iter().map(ServerLockJson::new).collect();
        match serde_json::to_string(&objects) {
            Ok(line) => answer!("{line}"),
            Err(e) => return fail(&format!("cannot write JSON: {e}")),
        }
    } else {
        for lock in &locks {
            let name = match &lock.name {
                Some(name) => crate::output::shown_path(std::path::Path::new(name)),
                None => format!("(unknown name, key {:#x})", lock.key),
            };
            let state = match (lock.holding.is_empty(), lock.mode) {
                (true, _) => "free, with sessions waiting",
                (false, LockMode::Exclusive) => "held exclusive",
                (false, _) => "held shared",
            };
            answer!("{name}: {state}");
            for h in &lock.holding {
                answer!("  held by {h}");
            }
            for h in &lock.waiting {
                answer!("  waiting: {h}");
            }
        }
    }
    ExitCode::SUCCESS
}

/// One object of `list --postgres --json` (stable, documented in the
/// README): `{"name": str|null, "key": int, "state": "exclusive"|"shared"|"waited-for",
/// "holders": [holder], "waiting": [holder]}`, each holder as `status`'s.
#[derive(serde::Serialize)]
struct ServerLockJson<'a> {
    name: Option<&'a str>,
    key: i64,
    state: &'static str,
    holders: Vec<HolderJson<'a>>,
    waiting: Vec<HolderJson<'a>>,
}

impl<'a> ServerLockJson<'a> {
    fn new(lock: &'a lockmgr::pg::ServerLock) -> Self {
        ServerLockJson {
            name: lock.name.as_deref(),
            key: lock.key,
            state: match (lock.holding.is_empty(), lock.mode) {
                (true, _) => "waited-for",
                (false, LockMode::Exclusive) => "exclusive",
                (false, _) => "shared",
            },
            holders: lock.holding.iter().map(HolderJson::new).collect(),
            waiting: lock.waiting.iter().map(HolderJson::new).collect(),
        }
    }
}
