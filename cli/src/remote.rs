//! `--postgres`: `run` and `status` on a `lockmgr::pg` lock.

use std::process::ExitCode;
use std::time::Duration;

use lockmgr::pg::{PgLockGuard, PgLockMgr};
use lockmgr::LockMode;

use crate::run::{budget, label, mode, not_obtained, supervise, take, Tie};
use crate::signals::Signals;
use crate::status::report;
use crate::{fail, RunArgs, StatusArgs};

pub(crate) async fn run(args: RunArgs, signals: Signals) -> ExitCode {
    let url = args.postgres.as_deref().unwrap_or_default();
    let name = args.lockfile.to_string_lossy();
    let (per_attempt, attempts) = budget(args.wait, args.attempts);
    let lock = match PgLockMgr::builder(url, name)
        .max_attempts(attempts)
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
    let guard: PgLockGuard = match take(acquire, &args, (per_attempt, attempts), &signals).await {
        Ok(guard) => guard,
        Err(e) => return not_obtained(e, &args),
    };
    let token = ("LOCKMGR_FENCING_TOKEN", guard.fencing_token().to_string());
    let outcome = supervise(
        &args.command,
        Some(token),
        Tie::EndWithParent,
        guard.lost(),
        &signals,
    )
    .await;
    if let Err(e) = guard.release().await {
        eprintln!("lockmgr: {e}");
    }
    outcome.finish()
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
