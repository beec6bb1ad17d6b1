//! `--postgres`: `run` and `status` on a `lockmgr::pg` lock.

use std::process::ExitCode;
use std::time::Duration;

use lockmgr::pg::{PgLockGuard, PgLockMgr};
use lockmgr::LockMode;

use crate::run::{label, mode, not_obtained, supervise, take};
use crate::status::report;
use crate::{fail, RunArgs, StatusArgs};

pub(crate) async fn run(args: RunArgs) -> ExitCode {
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

pub(crate) async fn status(args: StatusArgs) -> ExitCode {
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
